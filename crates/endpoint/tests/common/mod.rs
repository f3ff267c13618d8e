//! A small virtio driver for tests of the transport with several queues (the way
//! Linux's virtio_pci_modern drives it: feature negotiation, queue set-up, chains on
//! split or packed rings, direct or indirect, notify, used ring, INTx with the ISR or
//! MSI-X vectors), over a fake [`DeviceIo`] whose DMA is a byte array and whose reads
//! are answered when the test says (in order or newest first).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};

use endpoint::virtio::packed::{self, PackedDescriptor, RingPos};
use endpoint::virtio::pci::layout;
use endpoint::virtio::queue::{desc_flags, Descriptor};
use endpoint::virtio::{feature, status, VirtioDevice, VirtioPci};
use endpoint::{Device, DeviceIo, DmaError, DmaId};

pub const MEM: usize = 16 << 20;
/// Queue `q`'s rings: descriptors at `RINGS + q * RING_STRIDE`, then the driver
/// area, the device area and the indirect tables at fixed offsets.
pub const RINGS: u64 = 0x1_0000;
pub const RING_STRIDE: u64 = 0x2_0000;
const AVAIL_OFF: u64 = 0x8000;
const USED_OFF: u64 = 0xc000;
const INDIRECT_OFF: u64 = 0x1_0000;
/// Guest buffers start here.
pub const BUFS: u64 = 0x20_0000;

pub struct FakeIo {
    pub mem: Vec<u8>,
    pub reads: VecDeque<(DmaId, u64, usize)>,
    next: u64,
    pub intx: bool,
    pub msix: bool,
    pub vectors: Vec<u16>,
    /// Answer reads newest first.
    pub reverse: bool,
    /// Bytes the device wrote, in total.
    pub written: u64,
    /// Posted writes land late: held until a later read is served, an interrupt is
    /// sent or the test lands them (PCIe: a read or an MSI does not pass the writes
    /// before it). Off: they land at once.
    pub delay_writes: bool,
    pending: VecDeque<(u64, Vec<u8>)>,
    /// Writes issued and landed so far; for each read, the writes issued before it.
    issued: u64,
    landed: u64,
    fences: HashMap<DmaId, u64>,
}

impl FakeIo {
    pub fn new(mem: usize) -> FakeIo {
        FakeIo {
            mem: vec![0; mem],
            reads: VecDeque::new(),
            next: 0,
            intx: false,
            msix: false,
            vectors: Vec::new(),
            reverse: false,
            written: 0,
            delay_writes: false,
            pending: VecDeque::new(),
            issued: 0,
            landed: 0,
            fences: HashMap::new(),
        }
    }

    fn put(&mut self, addr: u64, data: &[u8]) {
        // Writes outside the array are dropped (a garbage ring can point anywhere).
        let a = addr as usize;
        if let Some(dst) = self.mem.get_mut(a..a.saturating_add(data.len())) {
            dst.copy_from_slice(data);
        }
    }

    /// Lands the held writes issued before the `upto`th (all with `u64::MAX`).
    pub fn land(&mut self, upto: u64) {
        while self.landed < upto {
            let Some((addr, data)) = self.pending.pop_front() else {
                return;
            };
            self.put(addr, &data);
            self.landed += 1;
        }
    }

    /// The device's read `id` is answered: the writes before it land first.
    fn answered(&mut self, id: DmaId) {
        if let Some(w) = self.fences.remove(&id) {
            self.land(w);
        }
    }
}

impl DeviceIo for FakeIo {
    fn dma_read(&mut self, addr: u64, len: usize) -> Result<DmaId, DmaError> {
        if len == 0 || len > endpoint::function::MAX_DMA {
            return Err(DmaError::TooLong(len));
        }
        let id = DmaId(self.next);
        self.next += 1;
        self.reads.push_back((id, addr, len));
        if self.delay_writes {
            self.fences.insert(id, self.issued);
        }
        Ok(id)
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        if self.delay_writes {
            self.pending.push_back((addr, data.to_vec()));
            self.issued += 1;
        } else {
            self.put(addr, data);
        }
        self.written += data.len() as u64;
        Ok(())
    }

    fn interrupt(&mut self, vector: u16) -> bool {
        self.land(u64::MAX);
        if self.msix {
            self.vectors.push(vector);
        } else {
            self.intx = true;
        }
        true
    }

    fn set_intx(&mut self, asserted: bool) {
        self.land(u64::MAX);
        self.intx = asserted;
    }

    fn msix_enabled(&self) -> bool {
        self.msix
    }

    fn now(&self) -> u64 {
        0
    }
}

/// The driver's side of one queue.
pub struct Queue {
    pub size: u16,
    avail_idx: u16,
    used_seen: u16,
    free: VecDeque<u16>,
    /// Split ring: descriptors each head's chain took.
    chain_len: HashMap<u16, usize>,
    packed: Option<PackedQueue>,
}

struct PackedQueue {
    avail: RingPos,
    used: RingPos,
    ids: VecDeque<u16>,
    ring_len: HashMap<u16, u16>,
    ring_free: u16,
}

pub struct Driver<D: VirtioDevice> {
    pub dev: VirtioPci<D>,
    pub io: FakeIo,
    pub queues: Vec<Queue>,
    pub packed: bool,
}

pub fn desc(q: u16) -> u64 {
    RINGS + q as u64 * RING_STRIDE
}
pub fn avail(q: u16) -> u64 {
    desc(q) + AVAIL_OFF
}
pub fn used(q: u16) -> u64 {
    desc(q) + USED_OFF
}
fn indirect(q: u16, id: u16) -> u64 {
    desc(q) + INDIRECT_OFF + id as u64 * 0x100
}

impl<D: VirtioDevice> Driver<D> {
    /// A driver of `dev` with queues of `qsize`, on packed rings or split ones.
    pub fn new(dev: VirtioPci<D>, qsize: u16, packed: bool) -> Driver<D> {
        let n = dev.device().num_queues();
        let queues = (0..n)
            .map(|_| Queue {
                size: qsize,
                avail_idx: 0,
                used_seen: 0,
                free: (0..qsize).collect(),
                chain_len: HashMap::new(),
                packed: packed.then(|| PackedQueue {
                    avail: RingPos::START,
                    used: RingPos::START,
                    ids: (0..qsize).collect(),
                    ring_len: HashMap::new(),
                    ring_free: qsize,
                }),
            })
            .collect();
        Driver {
            dev,
            io: FakeIo::new(MEM),
            queues,
            packed,
        }
    }

    pub fn rd(&mut self, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b[..n], &mut self.io);
        u64::from_le_bytes(b)
    }

    pub fn wr(&mut self, off: u64, n: usize, v: u64) {
        self.dev
            .bar_write(0, off, &v.to_le_bytes()[..n], &mut self.io);
    }

    pub fn features(&mut self) -> u64 {
        self.wr(0x00, 4, 0);
        let lo = self.rd(0x04, 4);
        self.wr(0x00, 4, 1);
        lo | self.rd(0x04, 4) << 32
    }

    /// Feature negotiation (what is offered of `accept`) and every queue set up;
    /// returns the features taken, or `None` when FEATURES_OK did not stick.
    pub fn init(&mut self, accept: u64) -> Option<u64> {
        self.wr(0x14, 1, 0);
        self.wr(0x14, 1, (status::ACKNOWLEDGE | status::DRIVER) as u64);
        let accept = if self.packed {
            accept | feature::RING_PACKED
        } else {
            accept
        };
        let f = self.features() & accept;
        self.wr(0x08, 4, 0);
        self.wr(0x0c, 4, f & 0xffff_ffff);
        self.wr(0x08, 4, 1);
        self.wr(0x0c, 4, f >> 32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(0x14, 1, s as u64);
        if self.rd(0x14, 1) as u8 & status::FEATURES_OK == 0 {
            return None;
        }
        let n = self.rd(0x12, 2) as u16;
        assert_eq!(n as usize, self.queues.len(), "num_queues");
        for q in 0..n {
            self.wr(0x16, 2, q as u64);
            let size = self.queues[q as usize].size;
            self.wr(0x18, 2, size as u64);
            assert_eq!(self.rd(0x18, 2), size as u64);
            for (reg, addr) in [(0x20, desc(q)), (0x28, avail(q)), (0x30, used(q))] {
                self.wr(reg, 4, addr & 0xffff_ffff);
                self.wr(reg + 4, 4, addr >> 32);
            }
            self.wr(0x1c, 2, 1);
            assert_eq!(self.rd(0x1e, 2), q as u64, "queue_notify_off");
        }
        self.wr(0x14, 1, (s | status::DRIVER_OK) as u64);
        Some(f)
    }

    /// Sets queue `q`'s MSI-X vector (and the configuration's with `q` = `None`).
    pub fn set_vector(&mut self, q: Option<u16>, vector: u16) {
        match q {
            Some(q) => {
                self.wr(0x16, 2, q as u64);
                self.wr(0x1a, 2, vector as u64);
            }
            None => self.wr(0x10, 2, vector as u64),
        }
    }

    pub fn put(&mut self, addr: u64, data: &[u8]) {
        self.io.mem[addr as usize..addr as usize + data.len()].copy_from_slice(data);
    }

    pub fn get(&self, addr: u64, n: usize) -> Vec<u8> {
        self.io.mem[addr as usize..addr as usize + n].to_vec()
    }

    fn u16_at(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.get(addr, 2).try_into().unwrap())
    }

    /// Whether queue `q` has room for a chain of `n` descriptors (direct).
    pub fn has_room(&self, q: u16, n: usize) -> bool {
        let qu = &self.queues[q as usize];
        match &qu.packed {
            Some(p) => !p.ids.is_empty() && p.ring_free as usize >= n,
            None => qu.free.len() >= n,
        }
    }

    /// Makes a chain of `bufs` (address, length, device-writable) available on queue
    /// `q`, direct or through an indirect table. Returns the head (packed: the buffer
    /// ID).
    pub fn submit(&mut self, q: u16, bufs: &[(u64, u32, bool)], indirect_table: bool) -> u16 {
        if self.packed {
            return self.submit_packed(q, bufs, indirect_table);
        }
        let qsize = self.queues[q as usize].size;
        let descs: Vec<Descriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| Descriptor {
                addr,
                len,
                flags: if w { desc_flags::WRITE } else { 0 }
                    | if i + 1 < bufs.len() {
                        desc_flags::NEXT
                    } else {
                        0
                    },
                next: 0,
            })
            .collect();
        let head;
        if indirect_table {
            head = self.queues[q as usize]
                .free
                .pop_front()
                .expect("a free descriptor");
            let table = indirect(q, head);
            for (i, mut d) in descs.into_iter().enumerate() {
                d.next = i as u16 + 1;
                self.put(table + 16 * i as u64, &d.emit());
            }
            let d = Descriptor {
                addr: table,
                len: 16 * bufs.len() as u32,
                flags: desc_flags::INDIRECT,
                next: 0,
            };
            self.put(desc(q) + 16 * head as u64, &d.emit());
            self.queues[q as usize].chain_len.insert(head, 1);
        } else {
            let ids: Vec<u16> = (0..bufs.len())
                .map(|_| {
                    self.queues[q as usize]
                        .free
                        .pop_front()
                        .expect("a free descriptor")
                })
                .collect();
            head = ids[0];
            for (k, mut d) in descs.into_iter().enumerate() {
                d.next = ids.get(k + 1).copied().unwrap_or(0);
                self.put(desc(q) + 16 * ids[k] as u64, &d.emit());
            }
            self.queues[q as usize].chain_len.insert(head, bufs.len());
        }
        let qu = &mut self.queues[q as usize];
        let slot = avail(q) + 4 + 2 * (qu.avail_idx % qsize) as u64;
        qu.avail_idx = qu.avail_idx.wrapping_add(1);
        let idx = qu.avail_idx.to_le_bytes();
        self.put(slot, &head.to_le_bytes());
        self.put(avail(q) + 2, &idx);
        head
    }

    fn submit_packed(&mut self, q: u16, bufs: &[(u64, u32, bool)], indirect_table: bool) -> u16 {
        let qsize = self.queues[q as usize].size;
        let p = self.queues[q as usize].packed.as_mut().unwrap();
        let id = p.ids.pop_front().expect("a free buffer ID");
        let write = |w: bool| if w { desc_flags::WRITE } else { 0 };
        let mut ring: Vec<(u16, u64, u32)> = Vec::new();
        let mut tables = Vec::new();
        if indirect_table {
            let table = indirect(q, id);
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let e = PackedDescriptor {
                    addr,
                    len,
                    id: 0,
                    flags: write(w),
                };
                tables.push((table + 16 * i as u64, e.emit()));
            }
            ring.push((desc_flags::INDIRECT, table, 16 * bufs.len() as u32));
        } else {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let next = if i + 1 < bufs.len() {
                    desc_flags::NEXT
                } else {
                    0
                };
                ring.push((write(w) | next, addr, len));
            }
        }
        let n = ring.len() as u16;
        assert!(p.ring_free >= n, "the driver keeps to the free descriptors");
        p.ring_free -= n;
        p.ring_len.insert(id, n);
        let mut at = p.avail;
        let mut descs = Vec::new();
        for (f, addr, len) in ring {
            let lap = if at.wrap {
                packed::flags::AVAIL
            } else {
                packed::flags::USED
            };
            let d = PackedDescriptor {
                addr,
                len,
                id,
                flags: f | lap,
            };
            descs.push((desc(q) + 16 * at.index as u64, d.emit()));
            at = at.advance(1, qsize);
        }
        p.avail = at;
        for (addr, bytes) in tables {
            self.put(addr, &bytes);
        }
        for (addr, bytes) in descs.iter().skip(1) {
            self.put(*addr, bytes);
        }
        self.put(descs[0].0, &descs[0].1);
        id
    }

    /// Used elements of queue `q` not seen yet: (head or buffer ID, len); their
    /// descriptors are free again.
    pub fn take_used(&mut self, q: u16) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        if self.packed {
            loop {
                let qsize = self.queues[q as usize].size;
                let p = self.queues[q as usize].packed.as_ref().unwrap();
                let at = desc(q) + 16 * p.used.index as u64;
                let d = PackedDescriptor::parse(&self.get(at, 16).try_into().unwrap());
                let avail = d.flags & packed::flags::AVAIL != 0;
                let used = d.flags & packed::flags::USED != 0;
                if avail != used || used != p.used.wrap {
                    return out;
                }
                let p = self.queues[q as usize].packed.as_mut().unwrap();
                let n = p.ring_len.remove(&d.id).expect("a buffer ID we gave");
                p.used = p.used.advance(n, qsize);
                p.ring_free += n;
                p.ids.push_back(d.id);
                out.push((d.id, d.len));
            }
        }
        let idx = self.u16_at(used(q) + 2);
        loop {
            let qu = &self.queues[q as usize];
            if qu.used_seen == idx {
                return out;
            }
            let e = self.get(used(q) + 4 + 8 * (qu.used_seen % qu.size) as u64, 8);
            let head = u32::from_le_bytes(e[..4].try_into().unwrap()) as u16;
            let len = u32::from_le_bytes(e[4..].try_into().unwrap());
            out.push((head, len));
            // Its descriptors are free again.
            let n = self.queues[q as usize]
                .chain_len
                .remove(&head)
                .expect("a head we gave");
            let mut i = head;
            for _ in 0..n {
                self.queues[q as usize].free.push_back(i);
                let d = self.get(desc(q) + 16 * i as u64, 16);
                i = u16::from_le_bytes([d[14], d[15]]);
            }
            let qu = &mut self.queues[q as usize];
            qu.used_seen = qu.used_seen.wrapping_add(1);
        }
    }

    /// Split ring with VIRTIO_F_EVENT_IDX: the driver's available index, the used
    /// index it has seen, the device's `avail_event` and used index as in memory.
    pub fn avail_idx(&self, q: u16) -> u16 {
        self.queues[q as usize].avail_idx
    }
    pub fn used_seen(&self, q: u16) -> u16 {
        self.queues[q as usize].used_seen
    }
    pub fn avail_event(&self, q: u16) -> u16 {
        self.u16_at(used(q) + 4 + 8 * self.queues[q as usize].size as u64)
    }
    pub fn device_used_idx(&self, q: u16) -> u16 {
        self.u16_at(used(q) + 2)
    }

    /// Sets `used_event` of queue `q` (event indexes: an interrupt once the used index
    /// passes it).
    pub fn set_used_event(&mut self, q: u16, v: u16) {
        let at = avail(q) + 4 + 2 * self.queues[q as usize].size as u64;
        self.put(at, &v.to_le_bytes());
    }

    pub fn notify(&mut self, q: u16) {
        self.wr(layout::NOTIFY + 4 * q as u64, 2, q as u64);
    }

    /// Serves the device's DMA reads until it has none left.
    pub fn run(&mut self) {
        loop {
            let next = if self.io.reverse {
                self.io.reads.pop_back()
            } else {
                self.io.reads.pop_front()
            };
            let Some((id, addr, len)) = next else {
                break;
            };
            self.io.answered(id);
            let a = addr as usize;
            let result = Ok(self
                .io
                .mem
                .get(a..a.saturating_add(len))
                .map_or_else(|| vec![0xff; len], |s| s.to_vec()));
            self.dev.dma_read_done(id, result, &mut self.io);
        }
    }

    /// Serves at most `n` of the device's DMA reads, oldest first.
    pub fn serve(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, addr, len)) = self.io.reads.pop_front() else {
                return;
            };
            self.io.answered(id);
            let a = addr as usize;
            let bytes = self.io.mem.get(a..a.saturating_add(len));
            let result = Ok(bytes.map_or_else(|| vec![0xff; len], |s| s.to_vec()));
            self.dev.dma_read_done(id, result, &mut self.io);
        }
    }

    /// A round of the box: the device's own work, then its DMA served.
    pub fn poll(&mut self) {
        self.dev.poll(&mut self.io);
        self.run();
    }

    pub fn needs_reset(&self) -> bool {
        self.dev.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// A counter of the device by name.
    pub fn counter(&self, name: &str) -> u64 {
        self.dev
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }
}
