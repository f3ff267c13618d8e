//! The host side against a real endpoint (memdev on the endpoint framework) joined in
//! process: every access is a TLP both ways, as it will be over Ethernet.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use endpoint::memdev::{self, error, op, regs, status, MemDev};
use endpoint::{Function, FunctionConfig};
use rootcomplex::driver_api::MAX_QUEUED_INTERRUPTS;
use rootcomplex::{
    Armed, BarWindows, BridgeConfig, Host, HostError, Interrupt, IrqMode, Link, LinkFull, MemoryMap,
};
use tlp::{
    Atomic, AtomicOp, Bdf, Completion, CompletionStatus, Header, IntxPin, MemRead, MemWrite,
    Message, Tag, Tlp,
};

const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 8 << 20;

/// The device side in the same process. `down` drops everything both ways (a dead
/// link or an unplugged box).
struct Loopback {
    f: Function<MemDev>,
    epoch: Instant,
    down: bool,
    /// TLPs a hostile box slips in before the device's own.
    forged: VecDeque<Vec<u8>>,
    /// The link takes nothing (its queue is full).
    full: bool,
    /// Completions the host sent (to the device's requests or to forged ones).
    completions: Vec<Completion>,
}

impl Link for Loopback {
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull> {
        if self.full {
            return Err(LinkFull);
        }
        if let Ok(Tlp {
            header: Header::Completion(c),
            ..
        }) = Tlp::parse(tlp)
        {
            self.completions.push(c);
        }
        if !self.down {
            let now = self.epoch.elapsed().as_micros() as u64;
            self.f.handle_tlp(now, tlp);
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(t) = self.forged.pop_front() {
            return Some(t);
        }
        if self.down {
            std::thread::sleep(timeout.min(Duration::from_micros(200)));
            return None;
        }
        let now = self.epoch.elapsed().as_micros() as u64;
        if self.f.poll_timeout().is_some_and(|t| t <= now) {
            self.f.handle_timeout(now);
        }
        self.f.poll_transmit()
    }
}

fn dev() -> Bdf {
    Bdf::new(1, 0, 0).unwrap()
}

fn host(timeout_us: u64) -> Host<Loopback> {
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE])).unwrap();
    let f = Function::new(
        memdev::config_space(1 << 20).unwrap(),
        MemDev::new(1 << 20),
        FunctionConfig::default(),
    );
    let cfg = BridgeConfig {
        completion_timeout_us: timeout_us,
        ..BridgeConfig::default()
    };
    Host::new(
        cfg,
        mem,
        (RAM, RAM_SIZE as u64),
        BarWindows::default(),
        Loopback {
            f,
            epoch: Instant::now(),
            down: false,
            forged: VecDeque::new(),
            full: false,
            completions: Vec::new(),
        },
    )
}

fn program(h: &mut Host<Loopback>, cmd: u32, src: u64, dst: u64, len: u32) {
    for (r, v) in memdev::start_writes(cmd, src, dst, len, true) {
        h.bar_write32(dev(), 0, r, v).unwrap();
    }
}

#[test]
fn enumerates_memdev_and_sets_up_msix() {
    let mut h = host(50_000);
    let d = h.enumerate(dev()).unwrap();
    assert_eq!((d.vendor, d.device), (memdev::VENDOR_ID, memdev::DEVICE_ID));
    assert_eq!(d.class, (0x05, 0x80, 0x00));
    let b0 = *d.bar(0).unwrap();
    let b2 = *d.bar(2).unwrap();
    assert_eq!(
        (b0.address, b0.size, b0.is_64bit),
        (0xe000_0000, 4096, false)
    );
    assert_eq!(
        (b2.address, b2.size, b2.is_64bit, b2.prefetchable),
        (0x80_0000_0000, 1 << 20, true, true)
    );
    assert_eq!(d.irq, IrqMode::MsiX { vectors: 4 });
    assert_eq!(h.bar_read32(dev(), 0, regs::MAGIC).unwrap(), memdev::MAGIC);
    // The device's view agrees: decoding on, bus master on, INTx off, MPS 256.
    let c = h.link().f.config();
    assert!(c.memory_enabled() && c.bus_master() && c.intx_disabled());
    assert_eq!(c.max_payload_and_read().0, 256);
    assert_eq!(h.devices().len(), 1);
    // Accesses outside a BAR are refused before anything is sent.
    assert!(matches!(
        h.bar_read(dev(), 0, 4094, 4),
        Err(HostError::OutsideBar { .. })
    ));
}

/// Enumeration enables 8-bit tags on a function that supports them (Extended Tag
/// Field Enable, off after reset), as Linux's pci_configure_extended_tags does, and
/// leaves the rest of Device Control as it set it.
#[test]
fn enumeration_enables_extended_tags() {
    let mut h = host(50_000);
    assert_eq!(h.link().f.config().tag_width(), tlp::TagWidth::Five);
    h.enumerate(dev()).unwrap();
    let c = h.link().f.config();
    assert_eq!(c.tag_width(), tlp::TagWidth::Eight);
    assert_eq!(c.max_payload_and_read(), (256, 512));
}

#[test]
fn dma_copy_through_the_device_with_an_interrupt() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    let src = h.alloc_dma(300_000).unwrap();
    let dst = h.alloc_dma(300_000).unwrap();
    let pattern: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + 7) as u8).collect();
    h.write_memory(src.addr, &pattern).unwrap();
    program(&mut h, op::COPY, src.addr + 1, dst.addr + 3, 299_000);
    assert_eq!(
        h.wait_interrupt(Duration::from_secs(10)),
        Some(Interrupt::Vector {
            device: dev(),
            vector: 0
        })
    );
    assert_eq!(h.bar_read32(dev(), 0, regs::STATUS).unwrap(), status::DONE);
    let mut got = vec![0u8; 299_000];
    h.read_memory(dst.addr + 3, &mut got).unwrap();
    assert!(got == pattern[1..299_001], "copied data differs");
    let s = h.bridge().stats();
    assert_eq!(s.dma_read_bytes, 299_000);
    assert_eq!(s.dma_write_bytes, 299_000);
    assert_eq!((s.dma_read_refused, s.dma_write_dropped), (0, 0));
}

#[test]
fn dma_outside_the_memory_map_is_refused_and_counted() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    // A read from unmapped memory: UR completions, the device reports the failure.
    program(&mut h, op::READ, 0x2000, 0, 4096);
    assert!(h.wait_interrupt(Duration::from_secs(5)).is_some());
    assert_eq!(
        h.bar_read32(dev(), 0, regs::ERROR).unwrap(),
        error::DMA_STATUS
    );
    assert!(h.bridge().stats().dma_read_refused >= 1);
    // A write running past the end of RAM: the device splits it into TLPs (at MPS
    // and 4 KiB); the one inside RAM is written, every one outside is dropped.
    h.bar_write(dev(), 2, 0, &[0xaa; 4096]).unwrap();
    program(&mut h, op::WRITE, 0, RAM + RAM_SIZE as u64 - 64, 4096);
    assert!(h.wait_interrupt(Duration::from_secs(5)).is_some());
    let mut tail = vec![0u8; 128];
    h.read_memory(RAM + RAM_SIZE as u64 - 128, &mut tail)
        .unwrap();
    assert_eq!(&tail[..64], &[0u8; 64][..]);
    assert_eq!(&tail[64..], &[0xaa; 64][..]);
    // 4032 bytes past the end at MPS 256: 16 TLPs, all dropped.
    assert_eq!(h.bridge().stats().dma_write_dropped, 16);
}

#[test]
fn a_dead_link_reads_all_ones_and_counts() {
    let mut h = host(20_000);
    h.enumerate(dev()).unwrap();
    h.link_mut().down = true;
    let t = Instant::now();
    assert_eq!(h.bar_read32(dev(), 0, regs::MAGIC).unwrap(), u32::MAX);
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_eq!(h.stats().mmio_read_timeouts, 1);
    assert_eq!(h.bridge().stats().completion_timeouts, 1);
    // An empty slot enumerates as no device.
    assert_eq!(
        h.enumerate(Bdf::new(2, 0, 0).unwrap()),
        Err(HostError::NoDevice(Bdf::new(2, 0, 0).unwrap()))
    );
    // The link comes back: the device serves again.
    h.link_mut().down = false;
    assert_eq!(h.bar_read32(dev(), 0, regs::MAGIC).unwrap(), memdev::MAGIC);
}

/// An Assert_INTx message as `from` would send it (or a box forging it).
fn intx(from: Bdf, pin: IntxPin, assert: bool) -> Vec<u8> {
    Tlp::new(Header::Message(Message::intx(from, pin, assert)), &[])
        .to_vec()
        .unwrap()
}

/// A forged Assert_INTx queued for a device that then leaves is gone with it: a
/// device enumerated at the same address later does not inherit it.
#[test]
fn removing_a_device_clears_its_queued_interrupts() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    let other = Bdf::new(1, 1, 0).unwrap();
    h.link_mut().forged.push_back(intx(dev(), IntxPin::A, true));
    h.link_mut().forged.push_back(intx(other, IntxPin::B, true));
    h.poll(Duration::ZERO);
    h.remove(dev());
    // The other device's interrupt stays; the removed one's is gone.
    assert_eq!(
        h.take_interrupt(),
        Some(Interrupt::Intx {
            device: other,
            pin: IntxPin::B,
            asserted: true
        })
    );
    assert_eq!(h.take_interrupt(), None);
    assert_eq!(h.stats().interrupts_cleared, 1);
}

/// A box that floods interrupt messages nobody takes fills the queue to its bound and
/// no further: repeats are merged, the oldest of the rest pushed out, all counted.
#[test]
fn an_interrupt_flood_is_bounded_and_counted() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    // The same level again and again: merged into one.
    for _ in 0..100 {
        h.link_mut().forged.push_back(intx(dev(), IntxPin::A, true));
    }
    // Levels toggling on lines of many made-up functions: each a change.
    let n = 3 * MAX_QUEUED_INTERRUPTS;
    for k in 0..n {
        let from = Bdf::from_u16(0x100 + (k / 2) as u16);
        h.link_mut()
            .forged
            .push_back(intx(from, IntxPin::D, k % 2 == 0));
    }
    while !h.link().forged.is_empty() {
        h.poll(Duration::ZERO);
    }
    let s = h.stats();
    assert_eq!(s.interrupts_coalesced, 99);
    assert_eq!(s.interrupts_dropped as usize, n + 1 - MAX_QUEUED_INTERRUPTS);
    let mut kept = 0;
    while h.take_interrupt().is_some() {
        kept += 1;
    }
    assert_eq!(kept, MAX_QUEUED_INTERRUPTS);
}

/// One device's flood pushes out its own queued interrupts, not another's: the quiet
/// device's one interrupt, queued first, is still there after the flood (before, the
/// oldest of all went, and that was it).
#[test]
fn a_flooding_device_loses_its_own_interrupts_not_anothers() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    let quiet = Bdf::new(1, 1, 0).unwrap();
    let loud = Bdf::new(1, 2, 0).unwrap();
    h.link_mut().forged.push_back(intx(quiet, IntxPin::A, true));
    let n = 3 * MAX_QUEUED_INTERRUPTS;
    for k in 0..n {
        h.link_mut()
            .forged
            .push_back(intx(loud, IntxPin::B, k % 2 == 0));
    }
    while !h.link().forged.is_empty() {
        h.poll(Duration::ZERO);
    }
    assert_eq!(
        h.stats().interrupts_dropped as usize,
        n + 1 - MAX_QUEUED_INTERRUPTS
    );
    let mut queued = Vec::new();
    while let Some(i) = h.take_interrupt() {
        queued.push(i);
    }
    assert_eq!(queued.len(), MAX_QUEUED_INTERRUPTS);
    assert_eq!(
        queued[0],
        Interrupt::Intx {
            device: quiet,
            pin: IntxPin::A,
            asserted: true
        }
    );
    // The loud device's latest level is the last one queued.
    assert_eq!(
        queued.last(),
        Some(&Interrupt::Intx {
            device: loud,
            pin: IntxPin::B,
            asserted: n % 2 == 1
        })
    );
}

/// A driver waiting for the vector it armed takes nothing else of its device as that
/// interrupt (a forged INTx, another vector), counts what it passed over, and leaves
/// other devices' interrupts queued.
#[test]
fn wait_armed_takes_only_the_armed_interrupt() {
    let mut h = host(50_000);
    let d = h.enumerate(dev()).unwrap();
    let armed = d.armed(0).unwrap();
    assert_eq!(armed, Armed::Vector(0));
    assert_eq!(d.armed(4), None);
    let other = Bdf::new(1, 1, 0).unwrap();
    h.link_mut().forged.push_back(intx(dev(), IntxPin::A, true));
    h.link_mut().forged.push_back(intx(other, IntxPin::A, true));
    h.poll(Duration::ZERO);
    assert_eq!(h.wait_armed(dev(), armed, Duration::from_millis(20)), None);
    assert_eq!(h.stats().interrupts_discarded, 1);
    // The real one.
    let src = h.alloc_dma(64).unwrap();
    program(&mut h, op::READ, src.addr, 0, 64);
    assert_eq!(
        h.wait_armed(dev(), armed, Duration::from_secs(5)),
        Some(Interrupt::Vector {
            device: dev(),
            vector: 0
        })
    );
    assert_eq!(
        h.take_interrupt(),
        Some(Interrupt::Intx {
            device: other,
            pin: IntxPin::A,
            asserted: true
        })
    );
}

/// A link that takes nothing: the host keeps what it refused, in order; a posted write
/// waits for room for a completion timeout and is then dropped, counted; once the link
/// takes TLPs again, what was kept goes first.
#[test]
fn a_full_link_holds_writes_back() {
    let mut h = host(30_000);
    h.enumerate(dev()).unwrap();
    h.link_mut().full = true;
    // Taken by the host (nothing was waiting), refused by the link, kept.
    h.bar_write32(dev(), 0, regs::SRC, 1).unwrap();
    assert!(h.bridge().tx_backlog() > 0);
    // Waits for room, and there is none.
    let t = Instant::now();
    h.bar_write32(dev(), 0, regs::SRC, 2).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(h.stats().mmio_writes_dropped, 1);
    h.link_mut().full = false;
    h.bar_write32(dev(), 0, regs::DST, 3).unwrap();
    assert_eq!(h.bridge().tx_backlog(), 0);
    assert_eq!(h.bar_read32(dev(), 0, regs::SRC).unwrap(), 1);
    assert_eq!(h.bar_read32(dev(), 0, regs::DST).unwrap(), 3);
    assert_eq!(h.stats().mmio_writes_dropped, 1);
}

/// Hands `tlp` to the host as if the box sent it, and lets the host answer.
fn forge(h: &mut Host<Loopback>, tlp: Vec<u8>) {
    h.link_mut().forged.push_back(tlp);
    while !h.link().forged.is_empty() {
        h.poll(Duration::ZERO);
    }
    // Whatever the bridge queued goes out.
    h.poll(Duration::ZERO);
}

/// Sets AT = 11b (reserved) in an emitted memory request or AtomicOp.
fn with_reserved_address_type(mut b: Vec<u8>) -> Vec<u8> {
    b[2] |= 0x0c;
    b
}

/// The host's Unsupported Request completions to requests the box sends.
fn ur_completions(h: &mut Host<Loopback>) -> Vec<Completion> {
    let all = std::mem::take(&mut h.link_mut().completions);
    all.into_iter()
        .filter(|c| c.status == CompletionStatus::UnsupportedRequest)
        .collect()
}

/// The codec's Unsupported Requests (PCIe §2.2, §2.3) from a box are not malformed
/// TLPs: a MRd with AT = 11b gets a UR completion to its requester and tag, a MWr with
/// AT = 11b and a message with reserved routing are dropped; all three count as
/// unsupported. A malformed TLP counts as malformed and is never answered.
#[test]
fn unsupported_requests_from_a_box_are_answered_and_told_apart_from_malformed_ones() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    let before = h.bridge().stats();
    let tag = Tag::wrapping(0x2c3);
    let mrd = MemRead {
        requester: dev(),
        tag,
        address: RAM + 0x100,
        length_dw: 3,
        first_be: 0xc,
        last_be: 0x1,
        locked: false,
        hint: None,
    };
    let mrd_bytes = Tlp::new(Header::MemRead(mrd), &[]).to_vec().unwrap();
    forge(&mut h, with_reserved_address_type(mrd_bytes.clone()));
    let urs = ur_completions(&mut h);
    assert_eq!(urs.len(), 1, "{urs:?}");
    assert_eq!((urs[0].requester, urs[0].tag), (dev(), tag));
    // The read's byte count (3 DW, first BE 1100, last BE 0001): 12 - 2 - 3.
    assert_eq!(urs[0].byte_count, 7);
    let s = h.bridge().stats();
    assert_eq!(s.unsupported, before.unsupported + 1);
    assert_eq!(s.malformed, before.malformed);
    assert_eq!(s.dma_reads, before.dma_reads);

    // A MWr with AT = 11b: dropped, unsupported, memory untouched.
    let mwr = MemWrite {
        requester: dev(),
        tag: Tag::default(),
        address: RAM,
        first_be: 0xf,
        last_be: 0,
        hint: None,
    };
    let b = Tlp::new(Header::MemWrite(mwr), &[9, 9, 9, 9])
        .to_vec()
        .unwrap();
    forge(&mut h, with_reserved_address_type(b));
    let mut word = [0u8; 4];
    h.read_memory(RAM, &mut word).unwrap();
    assert_eq!(word, [0; 4]);
    // A message with reserved routing (111b): dropped, unsupported.
    let mut b = intx(dev(), IntxPin::A, true);
    b[0] = (b[0] & !7) | 0b111;
    forge(&mut h, b);
    assert_eq!(h.take_interrupt(), None);
    assert!(ur_completions(&mut h).is_empty());
    let s = h.bridge().stats();
    assert_eq!(s.unsupported, before.unsupported + 3);
    assert_eq!(s.malformed, before.malformed);
    assert_eq!(s.dma_writes, before.dma_writes);
    assert_eq!(s.intx_messages, before.intx_messages);

    // A malformed MRd (3 DW with Last BE 0000): counted, never answered.
    let mut b = mrd_bytes;
    b[7] &= 0x0f;
    forge(&mut h, b);
    assert!(ur_completions(&mut h).is_empty());
    assert!(h.link().completions.is_empty());
    let s = h.bridge().stats();
    assert_eq!(s.malformed, before.malformed + 1);
    assert_eq!(s.unsupported, before.unsupported + 3);
    // The device is still served.
    assert_eq!(h.bar_read32(dev(), 0, regs::MAGIC).unwrap(), memdev::MAGIC);
}

/// Requests the bridge does not serve get a UR completion with the Byte Count PCIe
/// §2.2.9 gives them: an AtomicOp its operand size, a locked read its byte count.
#[test]
fn refused_atomics_and_locked_reads_carry_their_byte_count() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    let before = h.bridge().stats();
    let atomic = |op, tag, len: usize| {
        let a = Atomic {
            op,
            requester: dev(),
            tag: Tag::wrapping(tag),
            address: RAM + 0x40,
            hint: None,
        };
        Tlp::new(Header::Atomic(a), &vec![0x77; len])
            .to_vec()
            .unwrap()
    };
    let locked = MemRead {
        requester: dev(),
        tag: Tag::wrapping(0x33),
        address: RAM + 0x80,
        length_dw: 2,
        first_be: 0xf,
        last_be: 0x3,
        locked: true,
        hint: None,
    };
    // (TLP, tag, Byte Count)
    let cases = [
        (atomic(AtomicOp::CompareAndSwap, 0x30, 16), 0x30, 8),
        (atomic(AtomicOp::FetchAdd, 0x31, 8), 0x31, 8),
        (
            with_reserved_address_type(atomic(AtomicOp::CompareAndSwap, 0x32, 32)),
            0x32,
            16,
        ),
        (
            Tlp::new(Header::MemRead(locked), &[]).to_vec().unwrap(),
            0x33,
            6,
        ),
    ];
    for (n, (tlp, tag, byte_count)) in cases.into_iter().enumerate() {
        forge(&mut h, tlp);
        let urs = ur_completions(&mut h);
        assert_eq!(urs.len(), 1, "{urs:?}");
        assert_eq!((urs[0].requester, urs[0].tag.value()), (dev(), tag));
        assert_eq!(urs[0].byte_count, byte_count, "tag {tag:#x}");
        assert_eq!(
            h.bridge().stats().unsupported,
            before.unsupported + n as u64 + 1
        );
    }
    assert_eq!(h.bridge().stats().malformed, before.malformed);
}

/// `enumerate_in` places the BARs in the windows it is given, from their start, every
/// time (a switch port's windows serve each of its occupants); a BAR that does not fit
/// fails enumeration.
#[test]
fn enumerate_in_places_bars_in_the_given_windows_each_time() {
    let mut h = host(50_000);
    let port = BarWindows {
        mem32: (0xc010_0000, 0xc020_0000),
        mem64: (0x0014_0000_0000, 0x0018_0000_0000),
    };
    let first = h.enumerate_in(dev(), port).unwrap();
    assert!(!first.bars.is_empty());
    for b in &first.bars {
        let (lo, hi) = if b.is_64bit { port.mem64 } else { port.mem32 };
        assert!(b.address >= lo && b.address + b.size <= hi, "{b:?}");
        assert_eq!(b.address % b.size, 0, "{b:?} is not naturally aligned");
    }
    h.remove(dev());
    let again = h.enumerate_in(dev(), port).unwrap();
    assert_eq!(
        again.bars, first.bars,
        "the next occupant gets the same addresses"
    );
    // The device still works where it was put.
    assert_eq!(h.bar_read32(dev(), 0, regs::MAGIC).unwrap(), memdev::MAGIC);
    // Windows too small for its 64-bit BAR 2 (the 1 MiB buffer).
    h.remove(dev());
    let tiny = BarWindows {
        mem32: (0xc000_0000, 0xc000_1000),
        mem64: (0x0010_0000_0000, 0x0010_0001_0000),
    };
    match h.enumerate_in(dev(), tiny) {
        Err(HostError::WindowFull {
            bar: 2,
            window: "64-bit",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// An MSI counts only from the device its data value was given to: a message with
/// another device's requester ID and this device's data is stray, counted, and
/// raises nothing.
#[test]
fn an_msi_from_another_device_with_this_ones_data_is_stray() {
    let mut h = host(50_000);
    h.enumerate(dev()).unwrap();
    let table = u64::from(memdev::regs::MSIX_TABLE);
    let data = h.bar_read32(dev(), 0, table + 8).unwrap();
    let msi = |requester: Bdf| {
        Tlp::new(
            Header::MemWrite(MemWrite {
                requester,
                tag: Tag::default(),
                address: rootcomplex::driver_api::MSI_ADDRESS,
                first_be: 0xf,
                last_be: 0,
                hint: None,
            }),
            &data.to_le_bytes(),
        )
        .to_vec()
        .unwrap()
    };
    forge(&mut h, msi(Bdf::new(1, 5, 0).unwrap()));
    assert_eq!(h.take_interrupt(), None);
    assert_eq!(h.stats().stray_msis, 1);
    forge(&mut h, msi(dev()));
    assert_eq!(
        h.take_interrupt(),
        Some(Interrupt::Vector {
            device: dev(),
            vector: 0
        })
    );
    assert_eq!(h.stats().stray_msis, 1);
}
