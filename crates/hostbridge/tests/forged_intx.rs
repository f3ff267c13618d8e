//! A box that forges interrupt messages must not break the host's drivers: after a
//! forged Assert_INTx (for a line the driver did not arm, for the line it did, or from
//! a device that then leaves and comes back), memdev self-tests (verified DMA copies
//! through `MemDevDriver`) pass. Before the fix one forged message made the next
//! operation end early, and every later one read the interrupt of the one before.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use endpoint::config::{Bar, ConfigSpace};
use endpoint::memdev::{self, MemDev};
use endpoint::{Function, FunctionConfig};
use hostbridge::MemDevDriver;
use rootcomplex::{BarWindows, BridgeConfig, Host, HostStats, IrqMode, Link, LinkFull, MemoryMap};
use tlp::{Bdf, Header, IntxPin, Message, Tlp};

const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 1 << 20;

/// How long the host's TLPs take to reach the device, as over a network: an
/// operation is still running when the driver starts waiting for its interrupt.
const LATENCY: Duration = Duration::from_micros(300);

/// The device in the same process, and what its box slips in besides.
struct Loopback {
    f: Function<MemDev>,
    epoch: Instant,
    /// The host's TLPs on their way, with when they arrive.
    to_device: VecDeque<(Instant, Vec<u8>)>,
    forged: VecDeque<Vec<u8>>,
}

impl Link for Loopback {
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull> {
        self.to_device
            .push_back((Instant::now() + LATENCY, tlp.to_vec()));
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(t) = self.forged.pop_front() {
            return Some(t);
        }
        let now = self.epoch.elapsed().as_micros() as u64;
        while let Some((_, t)) = self.to_device.pop_front_if(|(at, _)| *at <= Instant::now()) {
            self.f.handle_tlp(now, &t);
        }
        if self.f.poll_timeout().is_some_and(|t| t <= now) {
            self.f.handle_timeout(now);
        }
        let t = self.f.poll_transmit();
        if t.is_none() {
            std::thread::sleep(timeout.min(Duration::from_micros(50)));
        }
        t
    }
}

fn dev() -> Bdf {
    Bdf::new(1, 0, 0).unwrap()
}

/// memdev's registers and buffer, signalling INTx only (no MSI, no MSI-X).
fn intx_only() -> ConfigSpace {
    ConfigSpace::builder(memdev::VENDOR_ID, memdev::DEVICE_ID)
        .class(0x05, 0x80, 0x00)
        .interrupt_pin(1)
        .bar(0, Bar::mem32(4096))
        .bar(2, Bar::mem64(1 << 16).prefetchable())
        .pcie(256)
        .build()
        .unwrap()
}

fn host(config: ConfigSpace) -> Host<Loopback> {
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE])).unwrap();
    let f = Function::new(config, MemDev::new(1 << 16), FunctionConfig::default());
    let link = Loopback {
        f,
        epoch: Instant::now(),
        to_device: VecDeque::new(),
        forged: VecDeque::new(),
    };
    Host::new(
        BridgeConfig::default(),
        mem,
        (RAM, RAM_SIZE as u64),
        BarWindows::default(),
        link,
    )
}

/// What the box slips in next: an Assert_INTA from the device.
fn forge_assert_inta(h: &mut Host<Loopback>) {
    let t = Tlp::new(Header::Message(Message::intx(dev(), IntxPin::A, true)), &[])
        .to_vec()
        .unwrap();
    h.link_mut().forged.push_back(t);
}

/// A host with a device of `config` that enumerates with `irq`, an Assert_INTA forged
/// by the box, then 20 self-test copies: the host's counters.
fn self_test_after_forged_inta(config: ConfigSpace, irq: IrqMode) -> HostStats {
    let mut h = host(config);
    let d = h.enumerate(dev()).unwrap();
    assert_eq!(d.irq, irq);
    forge_assert_inta(&mut h);
    self_test(&mut h, 20);
    h.stats()
}

/// `n` verified copies of different sizes, as `tether host`'s self-test does.
fn self_test(h: &mut Host<Loopback>, n: usize) {
    let drv = MemDevDriver::probe(h, dev()).unwrap();
    let src = h.alloc_dma(4096 + 64).unwrap();
    let dst = h.alloc_dma(4096 + 64).unwrap();
    for i in 0..n {
        let len = 1 + (i * 997) % 4096;
        let data: Vec<u8> = (0..len).map(|k| (k * 7 + i) as u8).collect();
        drv.copy_checked(
            h,
            src.addr + (i % 64) as u64,
            dst.addr + (i * 3 % 64) as u64,
            &data,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("copy {i} of {len} bytes: {e}"));
    }
}

/// A device on MSI-X: a forged Assert_INTx is not the vector the driver armed.
#[test]
fn a_forged_intx_on_a_line_not_armed_is_ignored() {
    let s = self_test_after_forged_inta(
        memdev::config_space(1 << 16).unwrap(),
        IrqMode::MsiX { vectors: 4 },
    );
    assert_eq!(s.interrupts_discarded, 1);
}

/// A device on INTx: a forged Assert on its own line is what the driver armed, but
/// the device has nothing to report, so the driver keeps waiting for the real one.
#[test]
fn a_forged_intx_on_the_armed_line_is_spurious() {
    let s = self_test_after_forged_inta(intx_only(), IrqMode::Intx(IntxPin::A));
    assert_eq!(s.spurious_interrupts, 1);
}

/// A forged interrupt queued for a device that leaves and comes back (as `tether
/// host` re-enumerates a box that restarted) is gone with it.
#[test]
fn a_forged_intx_from_a_removed_device_is_forgotten() {
    let mut h = host(intx_only());
    h.enumerate(dev()).unwrap();
    forge_assert_inta(&mut h);
    h.poll(Duration::ZERO);
    h.remove(dev());
    h.enumerate(dev()).unwrap();
    self_test(&mut h, 20);
    let s = h.stats();
    assert_eq!((s.interrupts_cleared, s.spurious_interrupts), (1, 0));
}
