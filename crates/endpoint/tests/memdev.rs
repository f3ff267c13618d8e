//! memdev on the endpoint framework, driven the way a host drives a real device: TLPs
//! only. The host here is a small test harness (enumeration by config TLPs, MMIO by
//! MRd/MWr, DMA served from a byte array with completions split at the RCB, MSI seen
//! as memory writes to 0xfee0_0000); the real host bridge is the `rootcomplex` crate.

use std::collections::HashMap;

use endpoint::config::{command, reg};
use endpoint::memdev::{self, error, op, regs, status, MemDev};
use endpoint::{Function, FunctionConfig};
use proptest::prelude::*;
use tlp::{
    split_read_completions, Atomic, AtomicOp, Bdf, Completion, CompletionStatus, ConfigRequest,
    Header, IntxPin, MaxSize, MemRead, MemWrite, Message, Rcb, Tag, Tlp,
};

const MEM_BASE: u64 = 0x1000_0000;
const MEM_SIZE: usize = 4 << 20;
const BAR0: u64 = 0xf000_0000;
const BAR2: u64 = 0x80_0000_0000;
const MSI_ADDR: u64 = 0xfee0_0000;

fn root() -> Bdf {
    Bdf::from_u16(0)
}

fn dev() -> Bdf {
    Bdf::new(3, 0, 0).unwrap()
}

struct Host {
    f: Function<MemDev>,
    mem: Vec<u8>,
    now: u64,
    tag: u16,
    completions: HashMap<u16, Vec<(Completion, Vec<u8>)>>,
    msis: Vec<(u64, u32)>,
    intx: Vec<bool>,
    /// Serve device reads (false: drop them, to provoke completion timeouts).
    serve_reads: bool,
    /// Answer device reads with Unsupported Request.
    refuse_reads: bool,
    reads_seen: usize,
}

impl Host {
    fn new() -> Host {
        let f = Function::new(
            memdev::config_space(1 << 20).unwrap(),
            MemDev::new(1 << 20),
            FunctionConfig::default(),
        );
        Host {
            f,
            mem: (0..MEM_SIZE).map(|i| (i * 7 + 3) as u8).collect(),
            now: 0,
            tag: 0,
            completions: HashMap::new(),
            msis: Vec::new(),
            intx: Vec::new(),
            serve_reads: true,
            refuse_reads: false,
            reads_seen: 0,
        }
    }

    fn next_tag(&mut self) -> Tag {
        self.tag = (self.tag + 1) % 256;
        Tag::wrapping(self.tag)
    }

    fn send(&mut self, t: &Tlp) {
        let b = t.to_vec().unwrap();
        self.f.handle_tlp(self.now, &b);
        self.pump();
    }

    /// Takes everything the device sent and acts on it like a root complex.
    fn pump(&mut self) {
        while let Some(bytes) = self.f.poll_transmit() {
            let t = Tlp::parse(&bytes).expect("the device sent a malformed TLP");
            match t.header {
                Header::Completion(c) => {
                    assert_eq!(c.completer, self.f.bdf());
                    self.completions
                        .entry(c.tag.value())
                        .or_default()
                        .push((c, t.payload.to_vec()))
                }
                Header::MemWrite(w) if w.address & !0xf_ffff == MSI_ADDR => {
                    assert_eq!(t.payload.len(), 4);
                    self.msis
                        .push((w.address, u32::from_le_bytes(t.payload.try_into().unwrap())));
                }
                Header::MemWrite(w) => {
                    assert_eq!(w.requester, dev(), "DMA carries the captured requester ID");
                    let n = t.payload.len();
                    for i in 0..n {
                        let dw = i / 4;
                        let be = if dw == 0 {
                            w.first_be
                        } else if dw + 1 == n / 4 {
                            w.last_be
                        } else {
                            0xf
                        };
                        if be & (1 << (i % 4)) != 0 {
                            let a = (w.address + i as u64 - MEM_BASE) as usize;
                            self.mem[a] = t.payload[i];
                        }
                    }
                }
                Header::MemRead(r) => {
                    self.reads_seen += 1;
                    if !self.serve_reads {
                        continue;
                    }
                    if self.refuse_reads {
                        let cpl = Completion {
                            completer: root(),
                            status: CompletionStatus::UnsupportedRequest,
                            bcm: false,
                            byte_count: 4,
                            requester: r.requester,
                            tag: r.tag,
                            lower_address: 0,
                            locked: false,
                        };
                        let b = Tlp::new(Header::Completion(cpl), &[]).to_vec().unwrap();
                        self.f.handle_tlp(self.now, &b);
                        continue;
                    }
                    let (first, _) = tlp::split::read_extent(&r);
                    for c in split_read_completions(&r, Rcb::B64, MaxSize::B256) {
                        let a = (first - MEM_BASE) as usize + c.offset;
                        let mut payload = vec![0; c.payload_len()];
                        c.fill_payload(&self.mem[a..a + c.len], &mut payload);
                        let cpl = Completion {
                            completer: root(),
                            status: CompletionStatus::Success,
                            bcm: false,
                            byte_count: c.byte_count,
                            requester: r.requester,
                            tag: r.tag,
                            lower_address: c.lower_address,
                            locked: false,
                        };
                        let b = Tlp::new(Header::Completion(cpl), &payload)
                            .to_vec()
                            .unwrap();
                        self.f.handle_tlp(self.now, &b);
                    }
                }
                Header::Message(m) => {
                    let (_, assert) = m.as_intx().expect("only INTx messages");
                    self.intx.push(assert);
                }
                other => panic!("unexpected TLP from the device: {other:?}"),
            }
        }
    }

    fn take_completion(&mut self, tag: Tag) -> (Completion, Vec<u8>) {
        let mut v = self
            .completions
            .remove(&tag.value())
            .expect("no completion");
        assert_eq!(v.len(), 1);
        v.pop().unwrap()
    }

    fn cfg(
        &mut self,
        write: Option<(u32, u8)>,
        register: u16,
        type1: bool,
    ) -> (Completion, Vec<u8>) {
        let tag = self.next_tag();
        let req = ConfigRequest {
            type1,
            requester: root(),
            tag,
            target: dev(),
            register,
            first_be: write.map_or(0xf, |w| w.1),
        };
        match write {
            Some((v, _)) => self.send(&Tlp::new(Header::ConfigWrite(req), &v.to_le_bytes())),
            None => self.send(&Tlp::new(Header::ConfigRead(req), &[])),
        }
        self.take_completion(tag)
    }

    fn cfg_read(&mut self, register: u16) -> u32 {
        let (c, d) = self.cfg(None, register, false);
        assert_eq!(c.status, CompletionStatus::Success);
        u32::from_le_bytes(d.try_into().unwrap())
    }

    fn cfg_write(&mut self, register: u16, v: u32) {
        let (c, d) = self.cfg(Some((v, 0xf)), register, false);
        assert_eq!((c.status, d.len()), (CompletionStatus::Success, 0));
    }

    fn mmio_read(&mut self, addr: u64) -> Result<u32, CompletionStatus> {
        let tag = self.next_tag();
        let r = MemRead {
            requester: root(),
            tag,
            address: addr,
            length_dw: 1,
            first_be: 0xf,
            last_be: 0,
            locked: false,
            hint: None,
        };
        self.send(&Tlp::new(Header::MemRead(r), &[]));
        let (c, d) = self.take_completion(tag);
        if c.status != CompletionStatus::Success {
            return Err(c.status);
        }
        Ok(u32::from_le_bytes(d.try_into().unwrap()))
    }

    fn mmio_write(&mut self, addr: u64, v: u32) {
        let w = MemWrite {
            requester: root(),
            tag: Tag::wrapping(0),
            address: addr,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        };
        self.send(&Tlp::new(Header::MemWrite(w), &v.to_le_bytes()));
    }

    fn reg(&mut self, r: u64) -> u32 {
        self.mmio_read(BAR0 + r).unwrap()
    }

    fn set_reg(&mut self, r: u64, v: u32) {
        self.mmio_write(BAR0 + r, v)
    }

    /// Sizes and assigns the BARs, enables memory and bus mastering: what firmware and
    /// the OS do on hot-plug.
    fn enumerate(&mut self) {
        assert_eq!(
            self.cfg_read(0),
            (memdev::DEVICE_ID as u32) << 16 | memdev::VENDOR_ID as u32
        );
        let mut sizes = Vec::new();
        for bar in 0..6u16 {
            let r = reg::BAR0 as u16 + 4 * bar;
            let old = self.cfg_read(r);
            self.cfg_write(r, u32::MAX);
            sizes.push(self.cfg_read(r));
            self.cfg_write(r, old);
        }
        assert_eq!(sizes[0], 0xffff_f000, "BAR0: 4 KiB, 32-bit");
        assert_eq!(sizes[2], 0xfff0_000c, "BAR2: 1 MiB, 64-bit prefetchable");
        assert_eq!(sizes[3], 0xffff_ffff, "BAR2 upper dword");
        assert_eq!([sizes[1], sizes[4], sizes[5]], [0, 0, 0]);
        self.cfg_write(reg::BAR0 as u16, BAR0 as u32);
        self.cfg_write(reg::BAR0 as u16 + 8, BAR2 as u32);
        self.cfg_write(reg::BAR0 as u16 + 12, (BAR2 >> 32) as u32);
        self.cfg_write(
            reg::COMMAND as u16,
            (command::MEMORY | command::BUS_MASTER) as u32,
        );
        assert_eq!(self.f.bdf(), dev(), "requester ID captured from CfgWr0");
        // 8-bit tags, which the function supports, as Linux's
        // pci_configure_extended_tags enables them.
        use pci::pcie::{devcap, devctl, DEVICE_CAPABILITIES, DEVICE_CONTROL};
        let pcie = self.f.config().caps().pcie.unwrap() as u16;
        assert_ne!(
            self.cfg_read(pcie + DEVICE_CAPABILITIES) & devcap::EXTENDED_TAG,
            0
        );
        let ctl = self.cfg_read(pcie + DEVICE_CONTROL) & 0xffff;
        self.cfg_write(pcie + DEVICE_CONTROL, ctl | u32::from(devctl::EXTENDED_TAG));
        assert_eq!(self.f.config().tag_width(), tlp::TagWidth::Eight);
    }

    fn enable_msix(&mut self) {
        let cap = self.f.config().caps().msix.unwrap() as u16;
        let t = BAR0 + regs::MSIX_TABLE as u64;
        self.mmio_write(t, MSI_ADDR as u32);
        self.mmio_write(t + 4, 0);
        self.mmio_write(t + 8, 0x4321);
        self.mmio_write(t + 12, 0); // unmask vector 0
        let v = self.cfg_read(cap);
        self.cfg_write(cap, v | 1 << 31);
    }

    /// Runs one memdev operation to its end; returns (STATUS, ERROR).
    fn run(&mut self, cmd: u32, src: u64, dst: u64, len: u32, off: u32) -> (u32, u32) {
        self.set_reg(regs::SRC, src as u32);
        self.set_reg(regs::SRC + 4, (src >> 32) as u32);
        self.set_reg(regs::DST, dst as u32);
        self.set_reg(regs::DST + 4, (dst >> 32) as u32);
        self.set_reg(regs::LEN, len);
        self.set_reg(regs::BUF_OFF, off);
        self.set_reg(regs::DOORBELL, cmd);
        (self.reg(regs::STATUS), self.reg(regs::ERROR))
    }
}

#[test]
fn enumeration_and_registers() {
    let mut h = Host::new();
    // Before memory decoding is on, MMIO gets Unsupported Request.
    assert_eq!(h.mmio_read(BAR0), Err(CompletionStatus::UnsupportedRequest));
    h.enumerate();
    assert_eq!(h.reg(regs::MAGIC), memdev::MAGIC);
    assert_eq!(h.reg(regs::BUF_SIZE), 1 << 20);
    // The buffer BAR above 4 GiB (4DW requests) reads and writes.
    h.mmio_write(BAR2 + 0x100, 0xdead_beef);
    assert_eq!(h.mmio_read(BAR2 + 0x100), Ok(0xdead_beef));
    assert_eq!(
        &h.f.device().buffer()[0x100..0x104],
        &0xdead_beefu32.to_le_bytes()
    );
}

#[test]
fn dma_read_write_copy_with_msix() {
    let mut h = Host::new();
    h.enumerate();
    h.enable_msix();
    h.set_reg(regs::IRQ, 1);
    // Host -> device, unaligned source, odd length.
    let (src, len, off) = (MEM_BASE + 0x1003, 5000u32, 17u32);
    assert_eq!(
        h.run(op::READ, src, 0, len, off),
        (status::DONE, error::NONE)
    );
    let want = h.mem[0x1003..0x1003 + len as usize].to_vec();
    assert_eq!(
        &h.f.device().buffer()[off as usize..(off + len) as usize],
        &want[..]
    );
    assert_eq!(h.msis, vec![(MSI_ADDR, 0x4321)]);
    // Device -> host at another unaligned place.
    let dst = MEM_BASE + 0x20_0001;
    assert_eq!(
        h.run(op::WRITE, 0, dst, len, off),
        (status::DONE, error::NONE)
    );
    assert_eq!(&h.mem[0x20_0001..0x20_0001 + len as usize], &want[..]);
    // Copy host -> host through the device.
    let (src, dst) = (MEM_BASE + 0x30_0000, MEM_BASE + 0x10_0002);
    let want = h.mem[0x30_0000..0x30_0000 + 70_000].to_vec();
    assert_eq!(
        h.run(op::COPY, src, dst, 70_000, 0),
        (status::DONE, error::NONE)
    );
    assert_eq!(&h.mem[0x10_0002..0x10_0002 + 70_000], &want[..]);
    assert_eq!(h.reg(regs::DONE), 3);
    assert_eq!(h.msis.len(), 3);
    let s = h.f.stats();
    assert_eq!((s.dma_reads, s.dma_writes, s.interrupts), (2, 2, 3));
    assert_eq!(s.dma_read_bytes, 75_000);
}

#[test]
fn read_requests_follow_max_read_request_size() {
    let mut h = Host::new();
    h.enumerate();
    let pcie = h.f.config().caps().pcie.unwrap() as u16;
    // MRRS 128 bytes: a 4096-byte aligned read takes 32 requests.
    let ctl = h.cfg_read(pcie + 8);
    h.cfg_write(pcie + 8, ctl & !(7 << 12));
    h.reads_seen = 0;
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 4096, 0),
        (status::DONE, error::NONE)
    );
    assert_eq!(h.reads_seen, 32);
}

#[test]
fn completion_timeout_bus_master_and_masking() {
    let mut h = Host::new();
    h.enumerate();
    h.enable_msix();
    h.set_reg(regs::IRQ, 1);
    // Masked vector: no MSI, but pending in the PBA; unmasking sends it.
    h.mmio_write(BAR0 + regs::MSIX_TABLE as u64 + 12, 1);
    h.serve_reads = false;
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 256, 0),
        (status::BUSY, error::NONE)
    );
    assert_eq!(h.f.poll_timeout(), Some(1_000_000));
    h.f.handle_timeout(1_000_000);
    h.pump();
    assert_eq!(
        (h.reg(regs::STATUS), h.reg(regs::ERROR)),
        (status::ERROR, error::TIMEOUT)
    );
    assert!(h.msis.is_empty());
    assert_eq!(h.mmio_read(BAR0 + regs::MSIX_PBA as u64), Ok(1));
    h.mmio_write(BAR0 + regs::MSIX_TABLE as u64 + 12, 0);
    assert_eq!(h.msis, vec![(MSI_ADDR, 0x4321)]);
    assert_eq!(h.mmio_read(BAR0 + regs::MSIX_PBA as u64), Ok(0));
    assert_eq!(h.f.stats().completion_timeouts, 1);
    // Without bus mastering the device cannot DMA.
    h.serve_reads = true;
    h.cfg_write(reg::COMMAND as u16, command::MEMORY as u32);
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 64, 0),
        (status::ERROR, error::BUS_MASTER)
    );
    // Bad arguments are refused without any DMA.
    h.cfg_write(
        reg::COMMAND as u16,
        (command::MEMORY | command::BUS_MASTER) as u32,
    );
    h.reads_seen = 0;
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 64, (1 << 20) - 8),
        (status::ERROR, error::BAD_ARGS)
    );
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 0, 0),
        (status::ERROR, error::BAD_ARGS)
    );
    assert_eq!(h.reads_seen, 0);
}

#[test]
fn a_refused_dma_read_fails_the_transfer_and_sends_no_more_of_it() {
    let mut h = Host::new();
    h.enumerate();
    h.refuse_reads = true;
    // 1 MiB at MRRS 512: 2048 requests, more than the 256 tags; the first refusal
    // stops the rest from being sent.
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 1 << 20, 0),
        (status::ERROR, error::DMA_STATUS)
    );
    assert!(
        h.reads_seen <= 256,
        "{} requests sent after a refusal",
        h.reads_seen
    );
    assert_eq!(h.f.poll_timeout(), None, "nothing left outstanding");
    // The next transfer works.
    h.refuse_reads = false;
    assert_eq!(
        h.run(op::READ, MEM_BASE, 0, 4096, 0),
        (status::DONE, error::NONE)
    );
}

#[test]
fn intx_when_no_msi_is_enabled() {
    let mut h = Host::new();
    h.enumerate();
    h.set_reg(regs::IRQ, 1);
    assert_eq!(
        h.run(op::WRITE, 0, MEM_BASE, 64, 0),
        (status::DONE, error::NONE)
    );
    assert_eq!(h.intx, vec![true]);
    assert_ne!(
        h.cfg_read(reg::COMMAND as u16) >> 16 & 0x8,
        0,
        "Interrupt Status set"
    );
    h.set_reg(regs::STATUS, 0);
    assert_eq!(h.intx, vec![true, false]);
    assert_eq!(h.reg(regs::STATUS), status::IDLE);
    // INTx Disable gates the message.
    h.cfg_write(
        reg::COMMAND as u16,
        (command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE) as u32,
    );
    assert_eq!(
        h.run(op::WRITE, 0, MEM_BASE, 64, 0),
        (status::DONE, error::NONE)
    );
    assert_eq!(h.intx, vec![true, false]);
    assert!(h.f.stats().interrupts_blocked >= 1);
}

#[test]
fn function_level_reset() {
    let mut h = Host::new();
    h.enumerate();
    h.set_reg(regs::LEN, 99);
    let pcie = h.f.config().caps().pcie.unwrap() as u16;
    let ctl = h.cfg_read(pcie + 8);
    h.cfg_write(pcie + 8, ctl | 1 << 15);
    assert_eq!(h.f.stats().resets, 1);
    assert_eq!(h.cfg_read(reg::COMMAND as u16) & 0xffff, 0);
    assert_eq!(h.cfg_read(reg::BAR0 as u16), 0);
    h.enumerate();
    assert_eq!(h.reg(regs::LEN), 0, "the model was reset too");
}

#[test]
fn bad_input_is_counted_and_answered() {
    let mut h = Host::new();
    h.enumerate();
    // Garbage bytes.
    h.f.handle_tlp(0, &[0xff; 3]);
    h.f.handle_tlp(0, &[0x00, 0x00, 0x00, 0x05, 0, 0, 0, 0]);
    assert_eq!(h.f.stats().malformed, 2);
    assert!(h.f.poll_transmit().is_none());
    // Type 1 config: UR.
    let (c, _) = h.cfg(None, 0, true);
    assert_eq!(c.status, CompletionStatus::UnsupportedRequest);
    // MMIO outside the BARs: UR for reads, dropped writes.
    assert_eq!(
        h.mmio_read(0xe000_0000),
        Err(CompletionStatus::UnsupportedRequest)
    );
    h.mmio_write(0xe000_0000, 1);
    assert_eq!(h.f.stats().dropped_writes, 1);
    // A completion nobody asked for.
    let cpl = Completion {
        completer: root(),
        status: CompletionStatus::Success,
        bcm: false,
        byte_count: 4,
        requester: dev(),
        tag: Tag::wrapping(77),
        lower_address: 0,
        locked: false,
    };
    h.send(&Tlp::new(Header::Completion(cpl), &[1, 2, 3, 4]));
    assert_eq!(h.f.stats().unexpected_completions, 1);
    // Still serving.
    assert_eq!(h.reg(regs::MAGIC), memdev::MAGIC);
}

/// Sets AT = 11b (reserved) in an emitted memory request or AtomicOp.
fn with_reserved_address_type(mut b: Vec<u8>) -> Vec<u8> {
    b[2] |= 0x0c;
    b
}

/// The codec's Unsupported Requests (PCIe §2.2, §2.3) are not malformed TLPs: a MRd with
/// AT = 11b gets a UR completion to its requester and tag, a MWr with AT = 11b and a
/// message with reserved routing are dropped; all three count as unsupported. A
/// malformed TLP counts as malformed and is never answered.
#[test]
fn unsupported_requests_are_answered_and_told_apart_from_malformed_ones() {
    let mut h = Host::new();
    h.enumerate();
    let before = h.f.stats();
    let tag = Tag::wrapping(0x1a5);
    let mrd = MemRead {
        requester: root(),
        tag,
        address: BAR0 + 0x10,
        length_dw: 2,
        first_be: 0xe,
        last_be: 0x7,
        locked: false,
        hint: None,
    };
    let b = with_reserved_address_type(Tlp::new(Header::MemRead(mrd), &[]).to_vec().unwrap());
    h.f.handle_tlp(h.now, &b);
    h.pump();
    let cpls = h.completions.remove(&0x1a5).expect("a UR completion");
    assert_eq!(cpls.len(), 1);
    let (c, data) = &cpls[0];
    assert_eq!(c.status, CompletionStatus::UnsupportedRequest);
    assert_eq!((c.requester, c.tag), (root(), tag));
    // The read's byte count (2 DW, first BE 1110, last BE 0111): 8 - 1 - 1.
    assert_eq!(c.byte_count, 6);
    assert!(data.is_empty());
    assert_eq!(h.f.stats().unsupported, before.unsupported + 1);
    assert_eq!(h.f.stats().malformed, before.malformed);

    // A MWr with AT = 11b: dropped, unsupported.
    let mwr = MemWrite {
        requester: root(),
        tag: Tag::default(),
        address: BAR0,
        first_be: 0xf,
        last_be: 0,
        hint: None,
    };
    let b = with_reserved_address_type(
        Tlp::new(Header::MemWrite(mwr), &[1, 2, 3, 4])
            .to_vec()
            .unwrap(),
    );
    h.f.handle_tlp(h.now, &b);
    assert!(h.f.poll_transmit().is_none());
    assert_eq!(h.f.stats().unsupported, before.unsupported + 2);
    assert_eq!(h.f.stats().mmio_writes, before.mmio_writes);

    // A message with reserved routing (110b): dropped, unsupported.
    let msg = Message::intx(root(), IntxPin::A, true);
    let mut b = Tlp::new(Header::Message(msg), &[]).to_vec().unwrap();
    b[0] = (b[0] & !7) | 0b110;
    h.f.handle_tlp(h.now, &b);
    assert!(h.f.poll_transmit().is_none());
    assert_eq!(h.f.stats().unsupported, before.unsupported + 3);
    assert_eq!(h.f.stats().malformed, before.malformed);

    // A malformed MRd (2 DW with First BE 0000): counted, never answered.
    let bad = MemRead {
        first_be: 0xf,
        ..mrd
    };
    let mut b = Tlp::new(Header::MemRead(bad), &[]).to_vec().unwrap();
    b[7] &= 0xf0;
    h.f.handle_tlp(h.now, &b);
    assert!(h.f.poll_transmit().is_none());
    assert_eq!(h.f.stats().malformed, before.malformed + 1);
    // Malformed with AT = 11b as well: malformed first (PCIe §2.3.1), unanswered.
    h.f.handle_tlp(h.now, &with_reserved_address_type(b));
    assert!(h.f.poll_transmit().is_none());
    assert_eq!(h.f.stats().malformed, before.malformed + 2);
    assert_eq!(h.f.stats().unsupported, before.unsupported + 3);
    // Still serving.
    assert_eq!(h.reg(regs::MAGIC), memdev::MAGIC);
}

/// An AtomicOp is refused with a UR completion whose Byte Count is the operand size
/// (PCIe §2.2.9), whether it is refused by the endpoint or, with AT = 11b, by the codec.
#[test]
fn atomic_ops_are_refused_with_their_operand_size() {
    let mut h = Host::new();
    h.enumerate();
    let before = h.f.stats();
    // (op, payload bytes, operand size)
    let cases = [
        (AtomicOp::FetchAdd, 4, 4),
        (AtomicOp::FetchAdd, 8, 8),
        (AtomicOp::Swap, 8, 8),
        (AtomicOp::CompareAndSwap, 8, 4),
        (AtomicOp::CompareAndSwap, 32, 16),
    ];
    let mut n = 0;
    for reserved_at in [false, true] {
        for (k, &(op, len, size)) in cases.iter().enumerate() {
            let tag = Tag::wrapping(0x100 + k as u16 + 16 * reserved_at as u16);
            let a = Atomic {
                op,
                requester: root(),
                tag,
                address: BAR0 + 0x40,
                hint: None,
            };
            let mut b = Tlp::new(Header::Atomic(a), &vec![0x5a; len])
                .to_vec()
                .unwrap();
            if reserved_at {
                b = with_reserved_address_type(b);
            }
            h.f.handle_tlp(h.now, &b);
            h.pump();
            n += 1;
            let cpls = h.completions.remove(&tag.value()).expect("a UR completion");
            assert_eq!(cpls.len(), 1);
            let (c, data) = &cpls[0];
            assert_eq!(c.status, CompletionStatus::UnsupportedRequest, "{op:?}");
            assert_eq!((c.requester, c.tag), (root(), tag));
            assert_eq!(
                c.byte_count, size,
                "{op:?} with {len} bytes, AT=11b {reserved_at}"
            );
            assert!(data.is_empty());
            assert_eq!(h.f.stats().unsupported, before.unsupported + n);
        }
    }
    assert_eq!(h.f.stats().malformed, before.malformed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random transfers, any alignment and length up to the buffer: READ then WRITE
    /// moves exactly the bytes asked, and nothing else in host memory changes.
    #[test]
    fn random_transfers_move_exactly_the_bytes_asked(
        src in 0usize..(2 << 20), dst in 0usize..(2 << 20), len in 1u32..70_000, off in 0u32..1000,
        mrrs in 0u32..4, mps in 0u32..2,
    ) {
        let mut h = Host::new();
        h.enumerate();
        let pcie = h.f.config().caps().pcie.unwrap() as u16;
        let ctl = h.cfg_read(pcie + 8) & 0xffff & !(7 << 12) & !(7 << 5);
        h.cfg_write(pcie + 8, ctl | mrrs << 12 | mps << 5);
        let before = h.mem.clone();
        prop_assert_eq!(h.run(op::READ, MEM_BASE + src as u64, 0, len, off), (status::DONE, error::NONE));
        prop_assert_eq!(
            &h.f.device().buffer()[off as usize..(off + len) as usize],
            &before[src..src + len as usize]
        );
        prop_assert_eq!(h.run(op::WRITE, 0, MEM_BASE + dst as u64, len, off), (status::DONE, error::NONE));
        let mut want = before.clone();
        want[dst..dst + len as usize].copy_from_slice(&before[src..src + len as usize]);
        prop_assert!(h.mem == want, "host memory differs outside or inside the target");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    /// Nothing the network can deliver makes the function panic: random bytes and
    /// random valid TLPs of every type, on an enumerated device, in any order.
    #[test]
    fn no_tlp_sequence_panics(
        tlps in proptest::collection::vec(tlp::strategies::any_tlp().prop_map(|t| t.as_tlp().to_vec().unwrap()), 1..20),
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..5),
    ) {
        let mut h = Host::new();
        h.enumerate();
        // Reads outstanding on every tag, so random completions meet live reassemblies.
        h.serve_reads = false;
        h.run(op::READ, MEM_BASE, 0, 1 << 20, 0);
        for b in tlps.iter().chain(junk.iter()) {
            h.f.handle_tlp(h.now, b);
            while h.f.poll_transmit().is_some() {}
        }
        h.f.handle_timeout(1 << 40);
        while h.f.poll_transmit().is_some() {}
    }
}
