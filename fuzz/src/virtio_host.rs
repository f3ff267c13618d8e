//! The host side of a virtio function for the fuzz targets that drive one with TLPs
//! only: guest memory that every address of the 64-bit space mirrors (address `a` is
//! byte `a % MEM`), the device's DMA writes landing there, its reads answered when
//! the input says (whole, in order or reversed, mangled, or with an error status),
//! config and BAR accesses as a root port sends them.

use endpoint::config::{command, reg};
use endpoint::virtio;
use endpoint::virtio::pci::layout;
use endpoint::{Device, Function};

use crate::Input;
use tlp::{
    split_read_completions, Bdf, Completion, CompletionStatus, ConfigRequest, Header, MaxSize,
    MemRead, MemWrite, Rcb, Tag, Tlp,
};

/// Where the targets place BAR0 (the virtio structures) and BAR1 (MSI-X).
pub const BAR0: u64 = 0xf000_0000;
pub const BAR1: u64 = 0xf001_0000;
/// Bytes of guest memory.
pub const MEM: usize = 16 << 10;

/// The root port: the requester of the host's TLPs.
pub fn root() -> Bdf {
    Bdf::from_u16(0)
}

/// The function's address.
pub fn dev() -> Bdf {
    Bdf::from_u16(0x0300)
}

/// A function and the host around it.
pub struct Host<D: Device> {
    pub f: Function<D>,
    /// Guest memory: address `a` is byte `a % MEM`.
    pub mem: Vec<u8>,
    /// The device's reads not answered yet.
    pub pending: Vec<MemRead>,
    pub now: u64,
    pub tag: u16,
}

impl<D: Device> Host<D> {
    /// The host of function `f`, guest memory all zeros.
    pub fn new(f: Function<D>) -> Host<D> {
        Host {
            f,
            mem: vec![0; MEM],
            pending: Vec::new(),
            now: 0,
            tag: 0,
        }
    }

    pub fn send(&mut self, t: &Tlp) {
        let b = t.to_vec().expect("a TLP built here emits");
        self.f.handle_tlp(self.now, &b);
        self.pump();
    }

    /// Takes what the device sent: DMA writes land in guest memory, reads wait.
    pub fn pump(&mut self) {
        while let Some(bytes) = self.f.poll_transmit() {
            let t = Tlp::parse(&bytes).expect("the device sent a malformed TLP");
            match t.header {
                Header::MemWrite(w) => {
                    for (i, &b) in t.payload.iter().enumerate() {
                        let a = w.address.wrapping_add(i as u64) as usize % MEM;
                        self.mem[a] = b;
                    }
                }
                Header::MemRead(r) => self.pending.push(r),
                _ => {}
            }
        }
    }

    pub fn next_tag(&mut self) -> Tag {
        self.tag = (self.tag + 1) % 256;
        Tag::wrapping(self.tag)
    }

    pub fn cfg_write(&mut self, register: u16, v: u32) {
        let req = ConfigRequest {
            type1: false,
            requester: root(),
            tag: self.next_tag(),
            target: dev(),
            register,
            first_be: 0xf,
        };
        self.send(&Tlp::new(Header::ConfigWrite(req), &v.to_le_bytes()));
    }

    /// A write of `len` (1, 2, 4 or 8) bytes of `v` at `addr`.
    pub fn mmio_write(&mut self, addr: u64, len: usize, v: u64) {
        let lead = (addr & 3) as usize;
        let n = lead + len;
        let dws = n.div_ceil(4);
        let mut payload = vec![0u8; dws * 4];
        payload[lead..n].copy_from_slice(&v.to_le_bytes()[..len]);
        let mask = |from: usize| -> u8 {
            (0..4)
                .filter(|k| (lead..n).contains(&(from + k)))
                .fold(0, |m, k| m | 1 << k)
        };
        let w = MemWrite {
            requester: root(),
            tag: Tag::wrapping(0),
            address: addr & !3,
            first_be: mask(0),
            last_be: if dws > 1 { mask((dws - 1) * 4) } else { 0 },
            hint: None,
        };
        self.send(&Tlp::new(Header::MemWrite(w), &payload));
    }

    pub fn mmio_read(&mut self, addr: u64) {
        let r = MemRead {
            requester: root(),
            tag: self.next_tag(),
            address: addr & !3,
            length_dw: 1,
            first_be: 0xf,
            last_be: 0,
            locked: false,
            hint: None,
        };
        self.send(&Tlp::new(Header::MemRead(r), &[]));
    }

    pub fn reg(&mut self, offset: u64, len: usize, v: u64) {
        self.mmio_write(BAR0 + offset, len, v);
    }

    /// Answers pending read `k`: its completions in order or reversed, each one
    /// possibly mangled (`mangle` picks what), or one error completion.
    pub fn answer(&mut self, k: usize, how: u8, mangle: u8) {
        if self.pending.is_empty() {
            return;
        }
        let r = self.pending.swap_remove(k % self.pending.len());
        let cpl = |status, byte_count, lower_address| Completion {
            completer: root(),
            status,
            bcm: false,
            byte_count,
            requester: r.requester,
            tag: r.tag,
            lower_address,
            locked: false,
        };
        if how % 4 == 3 {
            let status = if mangle & 1 == 0 {
                CompletionStatus::UnsupportedRequest
            } else {
                CompletionStatus::CompleterAbort
            };
            let b = Tlp::new(Header::Completion(cpl(status, 4, 0)), &[])
                .to_vec()
                .expect("a TLP built here emits");
            self.f.handle_tlp(self.now, &b);
            return self.pump();
        }
        let (first, _) = tlp::split::read_extent(&r);
        let mut chunks: Vec<_> = split_read_completions(&r, Rcb::B64, MaxSize::B256).collect();
        if how % 4 == 1 {
            chunks.reverse();
        }
        for (i, c) in chunks.iter().enumerate() {
            let data: Vec<u8> = (0..c.len)
                .map(|j| {
                    let a = first.wrapping_add((c.offset + j) as u64) as usize % MEM;
                    self.mem[a]
                })
                .collect();
            let mut payload = vec![0; c.payload_len()];
            c.fill_payload(&data, &mut payload);
            let (mut byte_count, mut lower) = (c.byte_count, c.lower_address);
            if how % 4 == 2 && i == mangle as usize % chunks.len() {
                match mangle >> 1 & 3 {
                    0 => byte_count = byte_count.wrapping_add(mangle as u16 >> 3) % 4097,
                    1 => lower ^= (mangle >> 3) & 0x7f,
                    2 => payload.truncate(payload.len().saturating_sub(4)),
                    _ => payload.extend_from_slice(&[0x5a; 4]),
                }
            }
            let t = Tlp::new(
                Header::Completion(cpl(CompletionStatus::Success, byte_count, lower)),
                &payload,
            );
            // A mangled completion may not even emit (payload beyond its limits).
            if let Ok(b) = t.to_vec() {
                self.f.handle_tlp(self.now, &b);
            }
        }
        self.pump();
    }
}

/// The steps every virtio target takes from its input (see [`Host::step`]).
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A pending DMA read answered: whole, reversed, mangled or with an error.
    Answer,
    /// A pending read never answered: its completion timeout fires.
    Timeout,
    /// Any BAR0 register of the first 0x200 bytes written, 1, 2, 4 or 8 bytes.
    RegWrite,
    /// Any BAR0 byte read.
    MmioRead,
    /// The driver changes guest memory under the device (ring indices, heads,
    /// descriptors).
    MemChange,
    /// Sometimes a function reset, the BARs and decoding set again.
    Reset,
}

impl<D: Device> Host<D> {
    /// Enumeration: BAR0 and BAR1 placed, memory decoding and bus mastering on; with
    /// `msix`, the first `vectors` MSI-X entries pointed at the APIC window and MSI-X on.
    pub fn enumerate(&mut self, msix: bool, vectors: u64) {
        self.cfg_write(reg::BAR0 as u16, BAR0 as u32);
        self.cfg_write(reg::BAR0 as u16 + 4, BAR1 as u32);
        self.cfg_write(
            reg::COMMAND as u16,
            (command::MEMORY | command::BUS_MASTER) as u32,
        );
        if msix {
            for v in 0..vectors {
                let e = BAR1 + layout::MSIX_TABLE as u64 + 16 * v;
                self.mmio_write(e, 4, 0xfee0_0000);
                self.mmio_write(e + 8, 4, v);
                self.mmio_write(e + 12, 4, 0);
            }
            if let Some(cap) = self.f.config().caps().msix {
                self.cfg_write(cap as u16, 1 << 31);
            }
        }
    }

    /// The driver's set-up, the way virtio_pci_modern does it, with values from the
    /// input: reset, ACKNOWLEDGE | DRIVER, the features (`setup` bit 1: any 64 bits;
    /// otherwise VERSION_1, INDIRECT_DESC, RING_PACKED when bit 2 is set, and free low
    /// bits), FEATURES_OK, then each of `queues` queues' size, ring addresses and
    /// MSI-X vector (`vector(q)`), enabled, and DRIVER_OK.
    pub fn virtio_setup(
        &mut self,
        input: &mut Input,
        setup: u8,
        queues: u16,
        vector: impl Fn(u16) -> u64,
    ) {
        self.reg(0x14, 1, 0);
        self.reg(0x14, 1, 3);
        let features = if setup & 2 != 0 {
            input.u64()
        } else {
            let packed = if setup & 4 != 0 {
                virtio::feature::RING_PACKED
            } else {
                0
            };
            virtio::feature::VERSION_1
                | virtio::feature::INDIRECT_DESC
                | packed
                | input.u32() as u64
        };
        self.reg(0x08, 4, 0);
        self.reg(0x0c, 4, features & 0xffff_ffff);
        self.reg(0x08, 4, 1);
        self.reg(0x0c, 4, features >> 32);
        self.reg(0x14, 1, 0xb);
        for q in 0..queues {
            self.reg(0x16, 2, q as u64);
            self.reg(0x18, 2, input.u16() as u64);
            for r in [0x20, 0x28, 0x30] {
                let a = input.u64();
                self.reg(r, 4, a & 0xffff_ffff);
                self.reg(r + 4, 4, a >> 32);
            }
            self.reg(0x1a, 2, vector(q));
            self.reg(0x1c, 2, 1);
        }
        self.reg(0x14, 1, 0xf);
    }

    /// One of the steps every virtio target takes, with its values from the input.
    pub fn step(&mut self, step: Step, input: &mut Input) {
        match step {
            Step::Answer => {
                let (k, how, mangle) = (input.u8() as usize, input.u8(), input.u8());
                self.answer(k, how, mangle);
            }
            Step::Timeout => {
                let n = input.u8() as usize;
                if !self.pending.is_empty() {
                    self.pending.swap_remove(n % self.pending.len());
                }
                self.now += 2_000_000;
                self.f.handle_timeout(self.now);
                self.pump();
            }
            Step::RegWrite => {
                let at = input.u16() as u64 % 0x200;
                let len = [1, 2, 4, 8][input.u8() as usize % 4];
                let v = input.u64();
                self.reg(at, len, v);
            }
            Step::MmioRead => {
                let at = input.u16() as u64 % layout::BAR_SIZE;
                self.mmio_read(BAR0 + at);
            }
            Step::MemChange => {
                let at = input.u16() as usize % MEM;
                let n = input.u8() as usize % 24;
                let bytes = input.bytes(n).to_vec();
                for (i, b) in bytes.into_iter().enumerate() {
                    self.mem[(at + i) % MEM] = b;
                }
            }
            Step::Reset => {
                if input.u8().is_multiple_of(8) {
                    self.f.reset();
                    self.pending.clear();
                    self.cfg_write(reg::BAR0 as u16, BAR0 as u32);
                    self.cfg_write(
                        reg::COMMAND as u16,
                        (command::MEMORY | command::BUS_MASTER) as u32,
                    );
                }
            }
        }
    }
}
