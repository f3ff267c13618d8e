//! virtio-blk on the virtio PCI transport, driven by a small virtio driver written
//! here the way Linux's virtio_pci_modern + virtio_blk drive it: feature negotiation,
//! split queue set-up, requests as descriptor chains (direct and indirect), notify,
//! used ring, INTx with the ISR or MSI-X vectors; and the same over packed rings
//! (wrap counters, buffer IDs, event suppression). DMA is served from a byte array by a
//! fake [`DeviceIo`] that answers reads later, in a shuffled order, the way
//! completions of several outstanding reads can come back.

use std::collections::{HashMap, VecDeque};

use endpoint::virtio::blk::{self, request_type, MemBackend, VirtioBlk};
use endpoint::virtio::packed::{self, PackedDescriptor, RingPos};
use endpoint::virtio::pci::{layout, QueueLimits};
use endpoint::virtio::queue::{desc_flags, Descriptor};
use endpoint::virtio::{feature, status, VirtioPci, NO_VECTOR};
use endpoint::{Device, DeviceIo, DmaError, DmaId};
use proptest::prelude::*;

const MEM: usize = 4 << 20;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const INDIRECT: u64 = 0x4_0000;
const BUFS: u64 = 0x10_0000;
const DISK: usize = 1 << 20;

struct FakeIo {
    mem: Vec<u8>,
    reads: VecDeque<(DmaId, u64, usize)>,
    next: u64,
    intx: bool,
    msix: bool,
    vectors: Vec<u16>,
    /// Answer reads with an error.
    refuse: bool,
    /// Deliver outstanding reads newest first (a different order than asked).
    reverse: bool,
    /// Guest addresses from this one on (wrapping past 2^64) are the array's from
    /// DESC on: a ring the driver put at the top of the address space.
    high: Option<u64>,
    /// Reads in this range count as buffered data: their bytes outstanding now,
    /// the peak, and the most allowed (a read beyond it fails the test at once).
    data: Option<DataWatch>,
    /// Writes in this range are checked against these bytes (the range's content).
    expect: Option<(u64, Vec<u8>)>,
    checked_bytes: u64,
    mismatches: u64,
}

struct DataWatch {
    range: std::ops::Range<u64>,
    outstanding: u64,
    peak: u64,
    cap: u64,
}

impl FakeIo {
    /// Where guest address `addr` is in the array.
    fn local(&self, addr: u64) -> u64 {
        match self.high {
            Some(base) if addr.wrapping_sub(base) < 0x1000 => DESC + addr.wrapping_sub(base),
            _ => addr,
        }
    }

    /// Bytes of a read now answered.
    fn answered(&mut self, addr: u64, len: usize) {
        if let Some(w) = self.data.as_mut().filter(|w| w.range.contains(&addr)) {
            w.outstanding -= len as u64;
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
        if let Some(w) = self.data.as_mut().filter(|w| w.range.contains(&addr)) {
            w.outstanding += len as u64;
            w.peak = w.peak.max(w.outstanding);
            assert!(
                w.outstanding <= w.cap,
                "the device asked for {} bytes of data at once (cap {})",
                w.outstanding,
                w.cap
            );
        }
        Ok(id)
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        // Writes outside the array are dropped (a garbage ring can point anywhere).
        let a = self.local(addr) as usize;
        if let Some((base, want)) = &self.expect {
            let at = addr.wrapping_sub(*base) as usize;
            if let Some(w) = want.get(at..at.saturating_add(data.len())) {
                self.checked_bytes += data.len() as u64;
                self.mismatches += (w != data) as u64;
            }
        }
        if let Some(dst) = self.mem.get_mut(a..a.saturating_add(data.len())) {
            dst.copy_from_slice(data);
        }
        Ok(())
    }

    fn interrupt(&mut self, vector: u16) -> bool {
        if self.msix {
            self.vectors.push(vector);
        } else {
            self.intx = true;
        }
        true
    }

    fn set_intx(&mut self, asserted: bool) {
        self.intx = asserted;
    }

    fn msix_enabled(&self) -> bool {
        self.msix
    }

    fn now(&self) -> u64 {
        0
    }
}

type Dev = VirtioPci<VirtioBlk<MemBackend>>;

struct Driver {
    dev: Dev,
    io: FakeIo,
    qsize: u16,
    /// The descriptor table (packed: the ring) as the device is told.
    desc: u64,
    avail_idx: u16,
    used_seen: u16,
    free: VecDeque<u16>,
    /// Packed ring: the driver's positions, free buffer IDs and each ID's ring
    /// descriptors, free ring descriptors.
    packed: Option<PackedDriver>,
}

struct PackedDriver {
    avail: RingPos,
    used: RingPos,
    ids: VecDeque<u16>,
    ring_len: HashMap<u16, u16>,
    ring_free: u16,
}

fn disk_pattern() -> Vec<u8> {
    (0..DISK).map(|i| (i / 512 * 13 + i) as u8).collect()
}

impl Driver {
    fn new(qsize: u16) -> Driver {
        Driver::with_disk(qsize, disk_pattern())
    }

    fn with_disk(qsize: u16, disk: Vec<u8>) -> Driver {
        let dev = VirtioPci::new(VirtioBlk::new(MemBackend(disk), "tether-test-disk"));
        Driver {
            dev,
            io: FakeIo {
                mem: vec![0; MEM],
                reads: VecDeque::new(),
                next: 0,
                intx: false,
                msix: false,
                vectors: Vec::new(),
                refuse: false,
                reverse: false,
                high: None,
                data: None,
                expect: None,
                checked_bytes: 0,
                mismatches: 0,
            },
            qsize,
            desc: DESC,
            avail_idx: 0,
            used_seen: 0,
            free: (0..qsize).collect(),
            packed: None,
        }
    }

    /// A driver that takes packed rings (the device offers them).
    fn new_packed(qsize: u16) -> Driver {
        let mut d = Driver::new(qsize);
        d.dev = VirtioPci::new(VirtioBlk::new(
            MemBackend(disk_pattern()),
            "tether-test-disk",
        ))
        .with_packed_ring(true);
        d.packed = Some(PackedDriver {
            avail: RingPos::START,
            used: RingPos::START,
            ids: (0..qsize).collect(),
            ring_len: HashMap::new(),
            ring_free: qsize,
        });
        d
    }

    fn rd(&mut self, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b[..n], &mut self.io);
        u64::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, n: usize, v: u64) {
        self.dev
            .bar_write(0, off, &v.to_le_bytes()[..n], &mut self.io);
    }

    fn features(&mut self) -> u64 {
        self.wr(0x00, 4, 0);
        let lo = self.rd(0x04, 4);
        self.wr(0x00, 4, 1);
        lo | self.rd(0x04, 4) << 32
    }

    /// Feature negotiation and queue set-up; returns whether FEATURES_OK stuck.
    fn init(&mut self, accept: u64) -> bool {
        self.wr(0x14, 1, 0);
        self.wr(0x14, 1, (status::ACKNOWLEDGE | status::DRIVER) as u64);
        let offered = self.features();
        let accept = match self.packed {
            Some(_) => accept | feature::RING_PACKED,
            None => accept,
        };
        let f = offered & accept;
        self.wr(0x08, 4, 0);
        self.wr(0x0c, 4, f & 0xffff_ffff);
        self.wr(0x08, 4, 1);
        self.wr(0x0c, 4, f >> 32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(0x14, 1, s as u64);
        if self.rd(0x14, 1) as u8 & status::FEATURES_OK == 0 {
            return false;
        }
        assert_eq!(self.rd(0x12, 2), 1, "num_queues");
        self.wr(0x16, 2, 0);
        assert_eq!(self.rd(0x18, 2), blk::QUEUE_SIZE as u64);
        self.wr(0x18, 2, self.qsize as u64);
        assert_eq!(self.rd(0x18, 2), self.qsize as u64);
        // 64-bit registers written as two halves, as Linux does.
        for (reg, addr) in [(0x20, self.desc), (0x28, AVAIL), (0x30, USED)] {
            self.wr(reg, 4, addr & 0xffff_ffff);
            self.wr(reg + 4, 4, addr >> 32);
        }
        self.wr(0x1c, 2, 1);
        assert_eq!(self.rd(0x1c, 2), 1);
        assert_eq!(self.rd(0x1e, 2), 0, "queue_notify_off");
        self.wr(0x14, 1, (s | status::DRIVER_OK) as u64);
        true
    }

    fn put(&mut self, addr: u64, data: &[u8]) {
        self.io.mem[addr as usize..addr as usize + data.len()].copy_from_slice(data);
    }

    fn get(&self, addr: u64, n: usize) -> Vec<u8> {
        self.io.mem[addr as usize..addr as usize + n].to_vec()
    }

    fn u16_at(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.get(addr, 2).try_into().unwrap())
    }

    /// Makes a chain of `bufs` (address, length, device-writable) available, direct
    /// or through an indirect table. Returns the head (packed: the buffer ID).
    fn submit(&mut self, bufs: &[(u64, u32, bool)], indirect: bool) -> u16 {
        if self.packed.is_some() {
            return self.submit_packed(bufs, indirect);
        }
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
        if indirect {
            head = self.free.pop_front().expect("a free descriptor");
            let table = INDIRECT + head as u64 * 0x800;
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
            self.put(DESC + 16 * head as u64, &d.emit());
        } else {
            let ids: Vec<u16> = (0..bufs.len())
                .map(|_| self.free.pop_front().expect("a free descriptor"))
                .collect();
            head = ids[0];
            for (k, mut d) in descs.into_iter().enumerate() {
                d.next = ids.get(k + 1).copied().unwrap_or(0);
                self.put(DESC + 16 * ids[k] as u64, &d.emit());
            }
        }
        let slot = AVAIL + 4 + 2 * (self.avail_idx % self.qsize) as u64;
        self.put(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = self.avail_idx.to_le_bytes();
        self.put(AVAIL + 2, &idx);
        head
    }

    /// The packed ring's way, as Linux's virtqueue_add_packed: the chain's
    /// descriptors in ring order with the lap's AVAIL/USED bits (flipping past the
    /// ring's end), the buffer ID in each, the head's flags written last.
    fn submit_packed(&mut self, bufs: &[(u64, u32, bool)], indirect: bool) -> u16 {
        let qsize = self.qsize;
        let p = self.packed.as_mut().unwrap();
        let id = p.ids.pop_front().expect("a free buffer ID");
        let write = |w: bool| if w { desc_flags::WRITE } else { 0 };
        let mut ring: Vec<(u16, u64, u32, u16)> = Vec::new();
        let mut tables = Vec::new();
        if indirect {
            let table = INDIRECT + id as u64 * 0x800;
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let e = PackedDescriptor {
                    addr,
                    len,
                    id: 0,
                    flags: write(w),
                };
                tables.push((table + 16 * i as u64, e.emit()));
            }
            ring.push((desc_flags::INDIRECT, table, 16 * bufs.len() as u32, 0));
        } else {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let next = if i + 1 < bufs.len() {
                    desc_flags::NEXT
                } else {
                    0
                };
                ring.push((write(w) | next, addr, len, 0));
            }
        }
        let n = ring.len() as u16;
        assert!(p.ring_free >= n, "the driver keeps to the free descriptors");
        p.ring_free -= n;
        p.ring_len.insert(id, n);
        let mut at = p.avail;
        let mut descs = Vec::new();
        for (f, addr, len, _) in ring {
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
            descs.push((DESC + 16 * at.index as u64, d.emit()));
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

    /// Packed ring: the used descriptors not seen yet: (buffer ID, len).
    fn take_used_packed(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        loop {
            let p = self.packed.as_ref().unwrap();
            let at = DESC + 16 * p.used.index as u64;
            let d = PackedDescriptor::parse(&self.get(at, 16).try_into().unwrap());
            let avail = d.flags & packed::flags::AVAIL != 0;
            let used = d.flags & packed::flags::USED != 0;
            if avail != used || used != p.used.wrap {
                return out;
            }
            let qsize = self.qsize;
            let p = self.packed.as_mut().unwrap();
            let n = p.ring_len.remove(&d.id).expect("a buffer ID we gave");
            p.used = p.used.advance(n, qsize);
            p.ring_free += n;
            p.ids.push_back(d.id);
            out.push((d.id, d.len));
        }
    }

    fn notify(&mut self) {
        self.wr(layout::NOTIFY, 2, 0);
    }

    /// Serves the device's DMA reads until it has none left.
    fn run(&mut self) {
        loop {
            let next = if self.io.reverse {
                self.io.reads.pop_back()
            } else {
                self.io.reads.pop_front()
            };
            let Some((id, addr, len)) = next else {
                break;
            };
            self.io.answered(addr, len);
            let addr = self.io.local(addr);
            let result = if self.io.refuse {
                Err(DmaError::Status(tlp::CompletionStatus::UnsupportedRequest))
            } else {
                let a = addr as usize;
                Ok(self
                    .io
                    .mem
                    .get(a..a.saturating_add(len))
                    .map_or_else(|| vec![0xff; len], |s| s.to_vec()))
            };
            self.dev.dma_read_done(id, result, &mut self.io);
        }
    }

    /// Used elements not seen yet: (head, len).
    fn take_used(&mut self) -> Vec<(u16, u32)> {
        if self.packed.is_some() {
            return self.take_used_packed();
        }
        let idx = self.u16_at(USED + 2);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.get(USED + 4 + 8 * (self.used_seen % self.qsize) as u64, 8);
            let head = u32::from_le_bytes(e[..4].try_into().unwrap()) as u16;
            let len = u32::from_le_bytes(e[4..].try_into().unwrap());
            out.push((head, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Writes request `n`'s FLUSH header and makes its chain available. Returns the
    /// head (packed: the buffer ID).
    fn submit_flush(&mut self, n: u64) -> u16 {
        let chain = flush_chain(n);
        self.put(chain[0].0, &header(request_type::FLUSH, 0));
        self.submit(&chain, false)
    }

    fn needs_reset(&self) -> bool {
        self.dev.status() & status::DEVICE_NEEDS_RESET != 0
    }

    fn recycle(&mut self, head: u16, indirect: bool, n: usize) {
        if self.packed.is_some() {
            // Buffer IDs and ring descriptors come back with the used descriptor.
            return;
        }
        if indirect {
            self.free.push_back(head);
            return;
        }
        let mut i = head;
        for _ in 0..n {
            self.free.push_back(i);
            let d = self.get(DESC + 16 * i as u64, 16);
            i = u16::from_le_bytes([d[14], d[15]]);
        }
    }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

const ACCEPT: u64 = feature::VERSION_1
    | feature::INDIRECT_DESC
    | blk::feature::FLUSH
    | blk::feature::BLK_SIZE
    | blk::feature::SEG_MAX;

/// Request `n`'s buffers: header, data, status, at fixed spots per request.
fn layout_of(n: u64, data_len: u32) -> (u64, u64, u64) {
    let base = BUFS + n * 0x2_0000;
    (base, base + 0x100, base + 0x100 + data_len as u64)
}

/// Request `n`'s chain as a FLUSH: its header (16 bytes), its status byte.
fn flush_chain(n: u64) -> [(u64, u32, bool); 2] {
    let (h, _, st) = layout_of(n, 0);
    [(h, 16, false), (st, 1, true)]
}

#[test]
fn config_space_names_the_virtio_structures() {
    let c = blk::config_space().unwrap();
    assert_eq!(c.read16(0), 0x1af4);
    assert_eq!(c.read16(2), 0x1042);
    assert_eq!(c.read8(8), 1, "revision 1: modern only");
    assert_eq!(c.read32(8) >> 8, 0x010000, "mass storage class");
    let mut found = Vec::new();
    let vendor_caps = pci::list(|off| c.read32(off.into()))
        .filter(|cap| cap.is(pci::CapabilityId::VendorSpecific))
        .map(|cap| usize::from(cap.offset));
    for p in vendor_caps {
        let bar = c.read8(p + 4);
        let off = c.read32(p + 8);
        let len = c.read32(p + 12);
        assert_eq!(
            c.read8(p + 2) as usize,
            if c.read8(p + 3) == 2 { 20 } else { 16 }
        );
        found.push((c.read8(p + 3), bar, off, len));
        if c.read8(p + 3) == 2 {
            assert_eq!(c.read32(p + 16), layout::NOTIFY_MULTIPLIER);
        }
    }
    assert_eq!(
        found,
        vec![
            (1, 0, 0x0000, 0x38),
            (2, 0, 0x3000, 4),
            (3, 0, 0x1000, 1),
            (4, 0, 0x2000, blk::CONFIG_LEN)
        ]
    );
    let m = c.msix_layout().unwrap();
    assert_eq!((m.vectors, m.table_bar), (2, 1));
}

#[test]
fn device_configuration_reports_capacity_and_block_size() {
    let mut d = Driver::new(8);
    let f = d.features();
    assert_ne!(f & feature::VERSION_1, 0);
    assert_ne!(f & feature::INDIRECT_DESC, 0);
    assert_ne!(f & blk::feature::FLUSH, 0);
    assert_eq!(f & blk::feature::RO, 0);
    assert_eq!(d.rd(layout::DEVICE, 8), (DISK / 512) as u64);
    assert_eq!(d.rd(layout::DEVICE + 0x0c, 4), blk::SEG_MAX as u64);
    assert_eq!(d.rd(layout::DEVICE + 0x14, 4), 512);
    assert_eq!(d.rd(layout::DEVICE + 0x22, 2), 1);
}

#[test]
fn a_driver_without_version_1_is_refused() {
    let mut d = Driver::new(8);
    assert!(!d.init(ACCEPT & !feature::VERSION_1));
    // Asking for a feature not offered is refused too.
    let mut d = Driver::new(8);
    d.wr(0x14, 1, (status::ACKNOWLEDGE | status::DRIVER) as u64);
    d.wr(0x08, 4, 1);
    d.wr(0x0c, 4, (feature::VERSION_1 >> 32) | 1 << 8);
    d.wr(
        0x14,
        1,
        (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK) as u64,
    );
    assert_eq!(d.rd(0x14, 1) as u8 & status::FEATURES_OK, 0);
    assert!(d.init(ACCEPT), "after a reset, a valid set is accepted");
}

/// Writes then reads back, several requests in flight, queue wrapping many times,
/// DMA completions delivered out of order, direct and indirect chains.
fn write_read_round_trip(indirect: bool, reverse: bool) {
    write_read_round_trip_on(Driver::new(8), indirect, reverse);
}

/// Returns the driver, for more checks.
fn write_read_round_trip_on(mut d: Driver, indirect: bool, reverse: bool) -> Driver {
    d.io.reverse = reverse;
    assert!(d.init(ACCEPT));
    let per = if indirect { 1 } else { 3 };
    let batch = (8 / per).min(4);
    let mut expect = disk_pattern();
    let mut n = 0u64;
    for round in 0..12u64 {
        let mut heads = Vec::new();
        for k in 0..batch as u64 {
            // Requests in flight together do not overlap: their order is not defined.
            let sector = (round * 40 + k * 10) % 2000;
            let len = 512 * (1 + (round + k) % 9) as u32;
            let (h, data, st) = layout_of(k, len);
            let payload: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + n) as u8).collect();
            d.put(h, &header(request_type::OUT, sector));
            d.put(data, &payload);
            d.put(st, &[0xee]);
            expect[sector as usize * 512..sector as usize * 512 + len as usize]
                .copy_from_slice(&payload);
            heads.push((
                d.submit(
                    &[(h, 16, false), (data, len, false), (st, 1, true)],
                    indirect,
                ),
                st,
            ));
            n += 1;
        }
        d.notify();
        d.run();
        let used = d.take_used();
        assert_eq!(
            used.len(),
            heads.len(),
            "round {round}: every write completed"
        );
        for (head, len) in used {
            let st = heads
                .iter()
                .find(|x| x.0 == head)
                .expect("a head we gave")
                .1;
            assert_eq!(len, 1, "a write reports the status byte only");
            assert_eq!(d.get(st, 1), [blk::status::OK]);
            d.recycle(head, indirect, per);
        }
    }
    let disk = &d.dev.device().backend().0;
    let diff = disk.iter().zip(&expect).position(|(a, b)| a != b);
    assert_eq!(
        diff, None,
        "the disk holds what was written (first difference)"
    );
    // Read the first 64 KiB back in 8 KiB requests.
    for k in 0..8u64 {
        let (h, data, st) = layout_of(k, 8192);
        d.put(h, &header(request_type::IN, k * 16));
        d.put(st, &[0xee]);
        let head = d.submit(
            &[(h, 16, false), (data, 8192, true), (st, 1, true)],
            indirect,
        );
        if k % 2 == 1 {
            d.notify();
            d.run();
            for (h2, len) in d.take_used() {
                assert_eq!(len, 8193);
                d.recycle(h2, indirect, per);
            }
        }
        let _ = head;
    }
    for k in 0..8u64 {
        let (_, data, st) = layout_of(k, 8192);
        assert_eq!(d.get(st, 1), [blk::status::OK]);
        let at = k as usize * 8192;
        assert!(
            d.get(data, 8192) == expect[at..at + 8192],
            "read {k} returned other data"
        );
    }
    let s = d.dev.stats();
    assert_eq!(s.bad_chains + s.dma_errors, 0);
    assert_eq!(d.dev.device().stats().writes, 12 * batch as u64);
    let counters = d.dev.counters();
    let get = |k: &str| counters.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("blk_writes"), Some(12 * batch as u64));
    assert_eq!(get("virtio_bad_chains"), Some(0));
    assert!(get("virtio_requests").unwrap() >= 12 * batch as u64 + 8);
    assert_eq!(d.dev.device().stats().reads, 8);
    assert!(d.io.intx, "INTx asserted for used buffers");
    assert_eq!(d.rd(layout::ISR, 1), 1, "ISR: queue interrupt");
    assert!(!d.io.intx, "reading the ISR releases INTx");
    assert_eq!(d.rd(layout::ISR, 1), 0, "and clears it");
    d
}

#[test]
fn writes_and_reads_through_direct_chains() {
    write_read_round_trip(false, false);
}

#[test]
fn writes_and_reads_through_indirect_tables_with_reordered_dma() {
    write_read_round_trip(true, true);
}

#[test]
fn packed_ring_writes_and_reads_through_direct_chains_across_laps() {
    let d = Driver::new_packed(8);
    write_read_round_trip_on(d, false, false);
}

#[test]
fn packed_ring_writes_and_reads_through_indirect_tables_with_reordered_dma() {
    write_read_round_trip_on(Driver::new_packed(8), true, true);
}

#[test]
fn odd_chunks_and_a_tiny_queue_buffer_still_move_every_byte() {
    // Chunks of 1 and 7 bytes cut headers, buffers and sectors anywhere; a buffer of
    // one chunk makes every request wait for the one before.
    for (buffer_bytes, chunk_bytes) in [(1, 1), (100, 7), (1000, 512), (3000, 4096)] {
        for packed in [false, true] {
            let mut d = if packed {
                Driver::new_packed(8)
            } else {
                Driver::new(8)
            };
            d.dev = d.dev.with_limits(QueueLimits {
                buffer_bytes,
                chunk_bytes,
            });
            let limits = d.dev.limits();
            assert!(limits.chunk_bytes as u64 <= limits.buffer_bytes);
            let d = write_read_round_trip_on(d, packed, false);
            let s = d.dev.stats();
            assert!(s.buffered_peak <= buffer_bytes, "peak {}", s.buffered_peak);
            assert_eq!(s.buffered, 0);
            if buffer_bytes == 1 {
                assert!(s.buffer_waits > 0, "requests waited for room");
            }
        }
    }
}

#[test]
fn packed_ring_is_offered_only_when_asked_and_split_stays_the_default() {
    let mut d = Driver::new(8);
    assert_eq!(d.features() & feature::RING_PACKED, 0);
    let mut d = Driver::new_packed(8);
    assert_ne!(d.features() & feature::RING_PACKED, 0);
    // Offered but not taken: the split ring works as before.
    d.packed = None;
    assert!(d.init(ACCEPT));
    let head = d.submit_flush(0);
    d.notify();
    d.run();
    assert_eq!(d.take_used(), vec![(head, 1)]);
}

#[test]
fn packed_ring_event_suppression_and_a_window_of_many_chains() {
    let mut d = Driver::new_packed(64);
    assert!(d.init(ACCEPT));
    // The driver disables used-buffer notifications (its structure, at the queue's
    // driver address): requests complete without an interrupt.
    d.put(AVAIL + 2, &packed::event::DISABLE.to_le_bytes());
    let mut ids = Vec::new();
    for k in 0..20u64 {
        ids.push(d.submit_flush(k));
    }
    d.notify();
    d.run();
    let used = d.take_used();
    assert_eq!(used.len(), 20, "40 descriptors: more than one window");
    assert!(!d.io.intx, "notifications disabled");
    // Enabled again: the next completion interrupts.
    d.put(AVAIL + 2, &packed::event::ENABLE.to_le_bytes());
    let id = d.submit(&flush_chain(0), false);
    d.notify();
    d.run();
    assert_eq!(d.take_used(), vec![(id, 1)]);
    assert!(d.io.intx);
    assert_eq!(d.dev.stats().bad_chains, 0);
}

#[test]
fn get_id_flush_unsupported_and_out_of_range() {
    let mut d = Driver::new(16);
    assert!(d.init(ACCEPT));
    let cases: [(u32, u64, u32, u8, u32); 5] = [
        // (type, sector, data bytes, expected status, expected used len)
        (request_type::GET_ID, 0, 20, blk::status::OK, 21),
        (request_type::FLUSH, 0, 0, blk::status::OK, 1),
        (99, 0, 0, blk::status::UNSUPP, 1),
        (
            request_type::IN,
            (DISK / 512) as u64 - 1,
            1024,
            blk::status::IOERR,
            1,
        ),
        (request_type::IN, 0, 100, blk::status::IOERR, 1),
    ];
    for (k, &(kind, sector, len, want, used_len)) in cases.iter().enumerate() {
        let (h, data, st) = layout_of(k as u64, len.max(1));
        d.put(h, &header(kind, sector));
        d.put(st, &[0xee]);
        let mut bufs = vec![(h, 16, false)];
        if len > 0 {
            bufs.push((data, len, true));
        }
        bufs.push((st, 1, true));
        let head = d.submit(&bufs, false);
        d.notify();
        d.run();
        let used = d.take_used();
        assert_eq!(used, vec![(head, used_len)], "case {k}");
        assert_eq!(d.get(st, 1), [want], "case {k}");
        if kind == request_type::GET_ID {
            assert_eq!(&d.get(data, 16), b"tether-test-disk");
        }
        d.recycle(head, false, bufs.len());
    }
    let s = d.dev.device().stats();
    assert_eq!(
        (s.flushes, s.get_ids, s.unsupported, s.io_errors),
        (1, 1, 1, 2)
    );
}

#[test]
fn msix_vectors_signal_the_queue_and_no_vector_stays_silent() {
    let mut d = Driver::new(8);
    assert!(d.init(ACCEPT));
    d.io.msix = true;
    d.wr(0x16, 2, 0);
    d.wr(0x1a, 2, 1);
    assert_eq!(d.rd(0x1a, 2), 1);
    d.wr(0x1a, 2, 7);
    assert_eq!(
        d.rd(0x1a, 2),
        NO_VECTOR as u64,
        "a vector beyond the table reads NO_VECTOR"
    );
    d.wr(0x1a, 2, 1);
    let head = d.submit_flush(0);
    d.notify();
    d.run();
    assert_eq!(d.io.vectors, vec![1]);
    assert!(!d.io.intx);
    d.recycle(head, false, 2);
    d.take_used();
    d.wr(0x1a, 2, NO_VECTOR as u64);
    d.submit(&flush_chain(0), false);
    d.notify();
    d.run();
    assert_eq!(d.take_used().len(), 1);
    assert_eq!(d.io.vectors, vec![1], "NO_VECTOR: no interrupt");
}

#[test]
fn a_bad_chain_makes_the_device_need_a_reset_and_a_reset_recovers() {
    let mut d = Driver::new(8);
    assert!(d.init(ACCEPT));
    // Head 9 is outside an 8-entry table.
    d.put(AVAIL + 4, &9u16.to_le_bytes());
    d.put(AVAIL + 2, &1u16.to_le_bytes());
    d.notify();
    d.run();
    assert_ne!(d.rd(0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.dev.stats().bad_chains, 1);
    assert!(d.io.intx);
    assert_eq!(d.rd(layout::ISR, 1), 2, "configuration-change interrupt");
    // Further notifications do nothing until reset.
    d.notify();
    assert!(d.io.reads.is_empty());
    let mut d2 = Driver::new(8);
    std::mem::swap(&mut d.io.mem, &mut d2.io.mem);
    d2.dev = d.dev;
    assert!(d2.init(ACCEPT));
    assert_eq!(d2.rd(0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
    let head = d2.submit_flush(0);
    d2.notify();
    d2.run();
    assert_eq!(d2.take_used(), vec![(head, 1)]);
}

#[test]
fn refused_dma_makes_the_device_need_a_reset() {
    let mut d = Driver::new(8);
    assert!(d.init(ACCEPT));
    d.io.refuse = true;
    d.submit(&flush_chain(0), false);
    d.notify();
    d.run();
    assert!(d.needs_reset());
    assert_eq!(d.dev.stats().dma_errors, 1);
}

#[test]
fn notifications_while_the_ring_is_fetched_are_not_lost() {
    let mut d = Driver::new(8);
    assert!(d.init(ACCEPT));
    d.submit_flush(0);
    d.notify();
    // Before the ring read is answered, the driver adds another and notifies again.
    d.submit_flush(1);
    d.notify();
    assert_eq!(d.io.reads.len(), 1, "one ring fetch at a time");
    d.run();
    assert_eq!(d.take_used().len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the driver puts in its rings, the device does not panic: it completes
    /// every request made available or says it needs a reset.
    #[test]
    fn garbage_rings_never_panic(
        ring in proptest::collection::vec(any::<u8>(), 0..2048),
        descs in proptest::collection::vec(any::<(u16, u32, u16, u16)>(), 8),
        idx in any::<u16>(),
    ) {
        let mut d = Driver::new(8);
        prop_assert!(d.init(ACCEPT));
        d.put(AVAIL, &ring[..ring.len().min(20)]);
        d.put(AVAIL + 2, &idx.to_le_bytes());
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let desc = Descriptor {
                // Buffers inside memory, so that only chain rules are exercised.
                addr: BUFS + addr as u64 * 16,
                len: len % 0x4000,
                flags: flags & 7,
                next: next % 10,
            };
            d.put(DESC + 16 * i as u64, &desc.emit());
        }
        d.put(INDIRECT, &ring);
        d.notify();
        d.run();
        let used = d.take_used();
        let broken = d.needs_reset();
        prop_assert!(broken || used.len() == idx as usize, "{} used of {idx}", used.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever a packed ring holds, the device does not panic, and what it returns
    /// as used are buffer IDs the ring named.
    #[test]
    fn garbage_packed_rings_never_panic(
        descs in proptest::collection::vec(any::<(u16, u32, u16, u16)>(), 8),
        event in any::<u32>(),
        table in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut d = Driver::new_packed(8);
        prop_assert!(d.init(ACCEPT));
        d.put(AVAIL, &event.to_le_bytes());
        for (i, &(addr, len, id, flags)) in descs.iter().enumerate() {
            let desc = PackedDescriptor {
                addr: BUFS + addr as u64 * 16,
                len: len % 0x4000,
                id,
                flags,
            };
            d.put(DESC + 16 * i as u64, &desc.emit());
        }
        d.put(INDIRECT, &table);
        d.notify();
        d.run();
        let used = PackedDescriptor::parse(&d.get(DESC, 16).try_into().unwrap());
        let named: Vec<u16> = descs.iter().map(|x| x.2).collect();
        if used.flags & (packed::flags::AVAIL | packed::flags::USED)
            == packed::flags::AVAIL | packed::flags::USED
            && !d.needs_reset()
        {
            prop_assert!(named.contains(&used.id));
        }
    }
}

#[test]
fn a_head_made_available_again_while_in_flight_needs_a_reset() {
    let mut d = Driver::new(8);
    assert!(d.init(ACCEPT));
    let head = d.submit_flush(0);
    // The same head once more, before the device used it.
    d.put(AVAIL + 4 + 2, &head.to_le_bytes());
    d.put(AVAIL + 2, &2u16.to_le_bytes());
    d.notify();
    d.run();
    assert!(d.needs_reset(), "a head in flight twice");
    assert_eq!(d.dev.stats().reused_ids, 1);
    assert_eq!(d.dev.stats().bad_chains, 1);
    assert!(d.take_used().is_empty(), "nothing completed");
    assert_eq!(d.dev.stats().buffered, 0);
}

#[test]
fn a_packed_buffer_id_made_available_again_while_in_flight_needs_a_reset() {
    let mut d = Driver::new_packed(8);
    assert!(d.init(ACCEPT));
    let id = d.submit_flush(0);
    // The driver names the next chain with the same buffer ID.
    d.packed.as_mut().unwrap().ids.push_front(id);
    assert_eq!(d.submit_flush(1), id);
    d.notify();
    d.run();
    assert!(d.needs_reset());
    assert_eq!(d.dev.stats().reused_ids, 1);
    assert_eq!(d.dev.stats().bad_chains, 1);
}

#[test]
fn a_packed_ring_at_the_top_of_the_address_space_is_a_dma_error_not_a_panic() {
    let mut d = Driver::new_packed(8);
    // The ring's first slot is the address space's last 8 bytes and 8 past it: the
    // used descriptor's length/ID (slot + 8) and flags (slot + 14) are beyond 2^64.
    d.desc = u64::MAX - 7;
    d.io.high = Some(d.desc);
    assert!(d.init(ACCEPT));
    d.submit_flush(0);
    d.notify();
    d.run();
    assert!(d.needs_reset());
    assert_eq!(d.dev.stats().dma_errors, 1);
}

/// 512 requests whose chains are 64 MiB each (the most a chain may hold), 256 in
/// flight at once: the device never holds more than its queue's buffer (reads it
/// has outstanding are counted by the driver side, everything it holds by its own
/// gauge), and every request completes with the right data.
#[test]
fn requests_of_64_mib_chains_stay_within_the_queue_buffer() {
    const QSIZE: u16 = 256;
    const MIB: u64 = 1 << 20;
    // Guest buffers: G holds what OUT requests write; IN requests land in H. Each
    // 64 MiB chain names its 1 MiB region 64 times.
    const G: u64 = 0x20_0000;
    const H: u64 = 0x30_0000;
    // Headers and status bytes of the requests in flight.
    const HDRS: u64 = BUFS;
    const DATA: u64 = 64 * MIB - blk::SECTOR;
    let pattern: Vec<u8> = (0..MIB as usize)
        .map(|j| (j.wrapping_mul(131) ^ (j >> 12)) as u8)
        .collect();
    let mut d = Driver::with_disk(QSIZE, vec![0; 64 * MIB as usize]);
    let cap = d.dev.limits().buffer_bytes;
    assert!(d.init(ACCEPT));
    d.put(G, &pattern);
    d.io.data = Some(DataWatch {
        range: G..G + MIB,
        outstanding: 0,
        peak: 0,
        cap,
    });
    d.io.expect = Some((H, pattern.clone()));
    let mut heads = Vec::new();
    for kind in [request_type::OUT, request_type::IN] {
        for i in 0..QSIZE as u64 {
            let (h, st) = (HDRS + 32 * i, HDRS + 32 * i + 16);
            d.put(h, &header(kind, 0));
            d.put(st, &[0xff]);
            let region = if kind == request_type::OUT { G } else { H };
            let mut chain = vec![(h, 16, false)];
            let mut left = DATA;
            while left > 0 {
                let n = left.min(MIB);
                chain.push((region, n as u32, kind == request_type::IN));
                left -= n;
            }
            chain.push((st, 1, true));
            heads.push((d.submit(&chain, true), st));
        }
        d.notify();
        d.run();
        let mut used = d.take_used();
        used.sort();
        let want_len = if kind == request_type::IN {
            DATA as u32 + 1
        } else {
            1
        };
        let want: Vec<(u16, u32)> = (0..QSIZE).map(|h| (h, want_len)).collect();
        assert_eq!(used, want, "every request completes");
        for (head, st) in heads.drain(..) {
            assert_eq!(d.get(st, 1), [blk::status::OK], "status of {head}");
            d.recycle(head, true, 0);
        }
        if kind == request_type::OUT {
            let disk = &d.dev.device().backend().0;
            for (k, mib) in disk[..DATA as usize].chunks(MIB as usize).enumerate() {
                assert!(mib == &pattern[..mib.len()], "disk MiB {k}");
            }
        }
    }
    assert_eq!(
        d.io.checked_bytes,
        QSIZE as u64 * DATA,
        "every byte read from the disk reached the guest"
    );
    assert_eq!(d.io.mismatches, 0, "and each was right");
    let w = d.io.data.as_ref().unwrap();
    assert!(
        w.peak > 0 && w.peak <= cap,
        "{} outstanding at most",
        w.peak
    );
    let s = d.dev.stats();
    assert!(
        s.buffered_peak > 0 && s.buffered_peak <= cap,
        "peak {}",
        s.buffered_peak
    );
    assert_eq!(s.buffered, 0, "all given back");
    assert!(s.buffer_waits > 0, "requests waited for room");
    assert_eq!(s.requests, 2 * QSIZE as u64);
}
