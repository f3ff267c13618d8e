//! virtio-net as the box runs it: a virtio-net function on the endpoint framework,
//! driven by TLPs only, against a hostile driver and a backend that does what the
//! input says. The input sets the device up (features, split or packed ring, each
//! queue's size and ring addresses, MSI-X, the queues' buffer and chunk sizes, the
//! backend passing the header or not), fills a guest memory that every address of the
//! 64-bit space mirrors, and runs steps: notifications of any queue, the device's DMA
//! reads answered in any order (whole, with an error status, mangled, or never, then a
//! completion timeout), guest memory changed under the device, any BAR0 register
//! written or read, frames of any length (up to beyond MAX_FRAME) from the backend,
//! the backend full or draining, carrier lost and back, the box saying the device
//! leaves, polls of the box's round, and function resets.
//! The device must never panic, must only send TLPs that parse, must never hold more
//! than its queue buffer for requests in flight, must never hand the backend a frame
//! beyond MAX_FRAME, and must drain the backend (it reads every frame it is given
//! within a bounded number of polls).
#![no_main]

use endpoint::config::{command, reg};
use endpoint::virtio::net::{MemBackend, VirtioNet, MAX_FRAME, VNET_HDR_LEN};
use endpoint::virtio::pci::{layout, QueueLimits};
use endpoint::virtio::{self, VirtioPci};
use endpoint::{Function, FunctionConfig};
use libfuzzer_sys::fuzz_target;
use tether_fuzz::Input;
use tlp::{
    split_read_completions, Bdf, Completion, CompletionStatus, ConfigRequest, Header, MaxSize,
    MemRead, MemWrite, Rcb, Tag, Tlp,
};

const BAR0: u64 = 0xf000_0000;
const BAR1: u64 = 0xf001_0000;
const MEM: usize = 16 << 10;

type Dev = VirtioPci<VirtioNet<MemBackend>>;

fn root() -> Bdf {
    Bdf::from_u16(0)
}

fn dev() -> Bdf {
    Bdf::from_u16(0x0300)
}

struct Host {
    f: Function<Dev>,
    /// Guest memory: address `a` is byte `a % MEM`.
    mem: Vec<u8>,
    /// The device's reads not answered yet.
    pending: Vec<MemRead>,
    now: u64,
    tag: u16,
}

impl Host {
    fn send(&mut self, t: &Tlp) {
        let b = t.to_vec().expect("a TLP built here emits");
        self.f.handle_tlp(self.now, &b);
        self.pump();
    }

    /// Takes what the device sent: DMA writes land in guest memory, reads wait.
    fn pump(&mut self) {
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

    fn next_tag(&mut self) -> Tag {
        self.tag = (self.tag + 1) % 256;
        Tag::wrapping(self.tag)
    }

    fn cfg_write(&mut self, register: u16, v: u32) {
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
    fn mmio_write(&mut self, addr: u64, len: usize, v: u64) {
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

    fn mmio_read(&mut self, addr: u64) {
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

    fn reg(&mut self, offset: u64, len: usize, v: u64) {
        self.mmio_write(BAR0 + offset, len, v);
    }

    /// Answers pending read `k`: its completions in order or reversed, each one
    /// possibly mangled (`mangle` picks what), or one error completion.
    fn answer(&mut self, k: usize, how: u8, mangle: u8) {
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

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let limits = QueueLimits {
        buffer_bytes: 1 + input.u16() as u64 * 64,
        chunk_bytes: 1 + input.u16() as usize * 16,
    };
    let setup = input.u8();
    let mut backend = MemBackend::new();
    backend.room = Some(input.u8() as usize % 8);
    let mac = [0x52, 0x54, 0, 0, 0, input.u8()];
    let device = VirtioPci::new(VirtioNet::new(backend, mac, setup & 8 != 0))
        .with_packed_ring(true)
        .with_limits(limits);
    let cap = device.limits().buffer_bytes;
    let mut h = Host {
        f: Function::new(
            virtio::net::config_space().expect("virtio-net config space"),
            device,
            FunctionConfig::default(),
        ),
        mem: vec![0; MEM],
        pending: Vec::new(),
        now: 0,
        tag: 0,
    };
    let image = input.u16() as usize;
    let image = input.bytes(image).to_vec();
    h.mem[..image.len().min(MEM)].copy_from_slice(&image[..image.len().min(MEM)]);

    // Enumeration: BARs, memory and bus mastering, maybe MSI-X.
    h.cfg_write(reg::BAR0 as u16, BAR0 as u32);
    h.cfg_write(reg::BAR0 as u16 + 4, BAR1 as u32);
    h.cfg_write(
        reg::COMMAND as u16,
        (command::MEMORY | command::BUS_MASTER) as u32,
    );
    if setup & 1 != 0 {
        for v in 0..4u64 {
            let e = BAR1 + layout::MSIX_TABLE as u64 + 16 * v;
            h.mmio_write(e, 4, 0xfee0_0000);
            h.mmio_write(e + 8, 4, v);
            h.mmio_write(e + 12, 4, 0);
        }
        if let Some(cap) = h.f.config().caps().msix {
            h.cfg_write(cap as u16, 1 << 31);
        }
    }
    // Driver set-up, the way virtio_pci_modern does it, with free values.
    h.reg(0x14, 1, 0);
    h.reg(0x14, 1, 3);
    let features = if setup & 2 != 0 {
        input.u64()
    } else {
        let packed = if setup & 4 != 0 {
            virtio::feature::RING_PACKED
        } else {
            0
        };
        virtio::feature::VERSION_1 | virtio::feature::INDIRECT_DESC | packed | input.u32() as u64
    };
    h.reg(0x08, 4, 0);
    h.reg(0x0c, 4, features & 0xffff_ffff);
    h.reg(0x08, 4, 1);
    h.reg(0x0c, 4, features >> 32);
    h.reg(0x14, 1, 0xb);
    for q in 0..3u64 {
        h.reg(0x16, 2, q);
        h.reg(0x18, 2, input.u16() as u64);
        for r in [0x20, 0x28, 0x30] {
            let a = input.u64();
            h.reg(r, 4, a & 0xffff_ffff);
            h.reg(r + 4, 4, a >> 32);
        }
        h.reg(0x1a, 2, q);
        h.reg(0x1c, 2, 1);
    }
    h.reg(0x14, 1, 0xf);

    // Polls in a row with no DMA outstanding and no frame given since, after which
    // the backend must be empty.
    let mut idle_polls = 0u32;
    while !input.0.is_empty() {
        match input.u8() % 14 {
            0 | 1 => {
                let q = input.u8() as u64 % 4;
                h.reg(layout::NOTIFY + 4 * q, 2, q);
            }
            2..=4 => {
                let (k, how, mangle) = (input.u8() as usize, input.u8(), input.u8());
                h.answer(k, how, mangle);
            }
            5 => {
                // Some reads are never answered: their completion timeout fires.
                let n = input.u8() as usize;
                if !h.pending.is_empty() {
                    h.pending.swap_remove(n % h.pending.len());
                }
                h.now += 2_000_000;
                h.f.handle_timeout(h.now);
                h.pump();
            }
            6 => {
                let at = input.u16() as u64 % 0x200;
                let len = [1, 2, 4, 8][input.u8() as usize % 4];
                let v = input.u64();
                h.reg(at, len, v);
            }
            7 => {
                let at = input.u16() as u64 % layout::BAR_SIZE;
                h.mmio_read(BAR0 + at);
            }
            8 => {
                // The driver changes memory under the device.
                let at = input.u16() as usize % MEM;
                let n = input.u8() as usize % 24;
                let bytes = input.bytes(n).to_vec();
                for (i, b) in bytes.into_iter().enumerate() {
                    h.mem[(at + i) % MEM] = b;
                }
            }
            9 => {
                // Frames from the network: any length, short and oversized too.
                let n = match input.u8() % 4 {
                    0 => input.u8() as usize,
                    1 => VNET_HDR_LEN + input.u16() as usize % 2048,
                    2 => input.u16() as usize,
                    _ => MAX_FRAME + input.u8() as usize,
                };
                let fill = input.u8();
                let b = h.f.device_mut().device_mut().backend_mut();
                b.inbox.push_back(vec![fill; n]);
                idle_polls = 0;
            }
            10 => {
                // The backend: room for more frames, or none; carrier lost or back.
                let v = input.u8();
                let b = h.f.device_mut().device_mut().backend_mut();
                match v % 4 {
                    0 => b.room = None,
                    1 => b.room = Some(b.sent.len() + v as usize / 4 % 4),
                    2 => b.carrier = !b.carrier,
                    _ => b.sent.clear(),
                }
            }
            11 => {
                let leaving = input.u8() & 1 != 0;
                h.f.set_leaving(h.now, leaving);
                h.pump();
            }
            12 => {
                // Polls in a row with no DMA read outstanding as they start.
                if h.pending.is_empty() && h.f.poll_timeout().is_none() {
                    idle_polls += 1;
                } else {
                    idle_polls = 0;
                }
                h.f.poll_device(h.now);
                h.pump();
            }
            _ => {
                if input.u8() % 8 == 0 {
                    h.f.reset();
                    h.pending.clear();
                    h.cfg_write(reg::BAR0 as u16, BAR0 as u32);
                    h.cfg_write(
                        reg::COMMAND as u16,
                        (command::MEMORY | command::BUS_MASTER) as u32,
                    );
                }
            }
        }
        let s = h.f.device().stats();
        assert!(
            s.buffered_peak <= cap,
            "a queue held {} bytes (cap {cap})",
            s.buffered_peak
        );
        let b = h.f.device().device().backend();
        assert!(b.sent.iter().all(|f| f.len() <= MAX_FRAME));
        // A frame waits at most while receive chains are being fetched or the queue's
        // writes drain; with no DMA read outstanding (none asked of the host, none
        // waiting for completions in the framework), a few polls drain the backend.
        if idle_polls >= 4 && h.pending.is_empty() && h.f.poll_timeout().is_none() {
            assert!(
                b.inbox.is_empty(),
                "{} frames left in the backend",
                b.inbox.len()
            );
        }
    }
});
