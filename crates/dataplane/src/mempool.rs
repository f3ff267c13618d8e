//! A buffer pool in the rte_mempool model: `count` fixed-size buffers in one memory
//! region (2 MiB huge pages when the system has them reserved, normal pages
//! otherwise), free buffers kept as indices in a multi-producer/multi-consumer ring,
//! and per-thread caches in front of it so that the hot path touches the shared ring
//! only once per cache refill or flush. Nothing allocates on the hot path.
//!
//! A buffer is owned through an [`Mbuf`] handle, which is neither `Clone` nor `Copy`:
//! whoever holds the handle is the only one who can reach the bytes, and giving it back
//! (`put`) is explicit, as in DPDK. `available()` shows leaks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use thiserror::Error;

use crate::ring::{mpmc, McConsumer, MpProducer};

const HUGE_PAGE: usize = 2 << 20;

/// What memory backs a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB huge pages (MAP_HUGETLB): fewer TLB misses.
    HugePages2M,
    /// Ordinary 4 KiB pages: no huge pages were reserved (vm.nr_hugepages).
    NormalPages,
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backing::HugePages2M => "2 MiB huge pages",
            Backing::NormalPages => "normal 4 KiB pages (no huge pages reserved)",
        })
    }
}

#[derive(Debug, Error)]
pub enum PoolError {
    #[error(
        "pool of {count} buffers of {buf_size} bytes is invalid (count 1..2^31, size 64..=32768)"
    )]
    BadSize { count: usize, buf_size: usize },
    #[error("mapping {bytes} bytes for the pool failed: {source}")]
    Map {
        bytes: usize,
        source: std::io::Error,
    },
}

/// The largest buffer a pool hands out: a frame length and its offset in the buffer
/// each fit 16 bits.
pub const MAX_BUF_SIZE: usize = 32768;

/// A handle on one pool buffer: where the frame starts in it (0 unless a port placed
/// it further in, as AF_XDP does), the frame's length, and its VLAN tag as AF_PACKET
/// reports it (`None` when the tag is in the frame or absent).
#[derive(Debug, PartialEq, Eq)]
pub struct Mbuf {
    pool: u32,
    idx: u32,
    len: u16,
    off: u16,
    vlan_tci: Option<u16>,
}

/// An `Mbuf` flattened for a ring; see [`Mbuf::into_raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMbuf {
    pool: u32,
    idx: u32,
    /// Offset in the high half, length in the low half.
    off_len: u32,
    vlan: u32,
}

impl Mbuf {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn vlan_tci(&self) -> Option<u16> {
        self.vlan_tci
    }

    pub fn set_vlan_tci(&mut self, tci: Option<u16>) {
        self.vlan_tci = tci;
    }

    /// Index of the buffer in its pool.
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// Where the frame starts in the buffer.
    pub fn data_offset(&self) -> usize {
        self.off as usize
    }

    /// Flattens the handle for a ring. The buffer stays owned by whoever turns the raw
    /// value back into an `Mbuf`, which must happen exactly once.
    pub fn into_raw(self) -> RawMbuf {
        RawMbuf {
            pool: self.pool,
            idx: self.idx,
            off_len: (self.off as u32) << 16 | self.len as u32,
            vlan: self.vlan_tci.map_or(u32::MAX, u32::from),
        }
    }

    /// Rebuilds a handle flattened by `into_raw`.
    ///
    /// # Safety
    /// `raw` must come from `into_raw` and be turned back into an `Mbuf` only once;
    /// otherwise two handles would reach the same bytes.
    pub unsafe fn from_raw(raw: RawMbuf) -> Mbuf {
        Mbuf {
            pool: raw.pool,
            idx: raw.idx,
            len: raw.off_len as u16,
            off: (raw.off_len >> 16) as u16,
            vlan_tci: (raw.vlan != u32::MAX).then_some(raw.vlan as u16),
        }
    }
}

/// The mapped region of a pool.
struct Region {
    base: *mut u8,
    bytes: usize,
}

// SAFETY: the region is an anonymous mapping owned by its pool (unmapped when the pool
// goes) and tied to no thread. Its bytes are reached only through `Mempool::data` and
// `Mempool::buf_mut`, which borrow the buffer's `Mbuf` handle (shared or mutable), so
// the borrow rules on the handle order the accesses to that buffer. Handles are unique
// per buffer: `Mbuf` is not `Clone`, the free ring holds each index once (`get` takes
// it out, `put` consumes the handle), and the two ways to forge one, `Mbuf::from_raw`
// and `Mempool::reclaim`, are `unsafe` with uniqueness as their contract. A buffer lent
// to the kernel (AF_XDP) has no handle while it is lent.
unsafe impl Send for Region {}
// SAFETY: as above: shared `&Region`s give no access to a buffer's bytes without its
// unique handle.
unsafe impl Sync for Region {}

impl Region {
    fn map(bytes: usize) -> Result<(Region, Backing), PoolError> {
        let huge_bytes = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                huge_bytes,
                prot,
                flags | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Ok((
                Region {
                    base: p as *mut u8,
                    bytes: huge_bytes,
                },
                Backing::HugePages2M,
            ));
        }
        // SAFETY: as above, without huge pages.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(PoolError::Map {
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok((
            Region {
                base: p as *mut u8,
                bytes,
            },
            Backing::NormalPages,
        ))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/bytes are exactly what mmap returned; nothing uses the region
        // after the pool (its only owner) is gone.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.bytes);
        }
    }
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

#[cold]
#[inline(never)]
fn wrong_pool(buf_pool: u32, pool: u32) -> ! {
    panic!("Mbuf of pool {buf_pool} used with pool {pool}");
}

pub struct Mempool {
    id: u32,
    region: Region,
    buf_size: usize,
    count: usize,
    backing: Backing,
    free_in: MpProducer<u32>,
    free_out: McConsumer<u32>,
}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool")
            .field("id", &self.id)
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .field("backing", &self.backing)
            .field("available", &self.available())
            .finish()
    }
}

impl Mempool {
    /// A pool of `count` buffers of `buf_size` bytes (rounded up to 64).
    pub fn new(count: usize, buf_size: usize) -> Result<Arc<Mempool>, PoolError> {
        if count == 0 || count >= 1 << 31 || !(64..=MAX_BUF_SIZE).contains(&buf_size) {
            return Err(PoolError::BadSize { count, buf_size });
        }
        let buf_size = buf_size.div_ceil(64) * 64;
        let (region, backing) = Region::map(count * buf_size)?;
        let (free_in, free_out) = mpmc::<u32>(count.next_power_of_two());
        for i in 0..count as u32 {
            free_in.enqueue(i);
        }
        Ok(Arc::new(Mempool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            region,
            buf_size,
            count,
            backing,
            free_in,
            free_out,
        }))
    }

    pub fn backing(&self) -> Backing {
        self.backing
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Buffers in the shared ring (not counting those in per-thread caches).
    pub fn available(&self) -> usize {
        self.free_out.len()
    }

    fn handle(&self, idx: u32) -> Mbuf {
        Mbuf {
            pool: self.id,
            idx,
            len: 0,
            off: 0,
            vlan_tci: None,
        }
    }

    /// Whether `m` is a buffer of this pool.
    pub fn owns(&self, m: &Mbuf) -> bool {
        m.pool == self.id && (m.idx as usize) < self.count
    }

    /// The start and length of the buffers' region, for handing it to the kernel
    /// (an AF_XDP UMEM); buffer `i` starts `i * buf_size` bytes in.
    pub(crate) fn region(&self) -> (*mut u8, usize) {
        (self.region.base, self.count * self.buf_size)
    }

    /// Where the frame of `m` starts, counted from the start of the region.
    pub(crate) fn region_offset(&self, m: &Mbuf) -> u64 {
        self.check(m);
        (m.idx as usize * self.buf_size + m.off as usize) as u64
    }

    /// The handle of buffer `idx`, which was given away by forgetting its handle
    /// (to the kernel, as an AF_XDP frame address) and has now come back.
    ///
    /// # Safety
    /// No other handle on buffer `idx` may exist, and it is rebuilt once per giving away.
    pub(crate) unsafe fn reclaim(&self, idx: u32) -> Mbuf {
        debug_assert!((idx as usize) < self.count);
        self.handle(idx)
    }

    /// One buffer from the shared ring (prefer a [`PoolCache`] on hot paths).
    pub fn get(&self) -> Option<Mbuf> {
        self.free_out.dequeue().map(|i| self.handle(i))
    }

    /// Gives a buffer back.
    pub fn put(&self, m: Mbuf) {
        self.check(&m);
        // The ring has room for every buffer of the pool, so this cannot fail.
        let ok = self.free_in.enqueue(m.idx);
        debug_assert!(ok);
    }

    #[inline]
    fn check(&self, m: &Mbuf) {
        if m.pool != self.id || m.idx as usize >= self.count {
            wrong_pool(m.pool, self.id);
        }
    }

    fn buf_ptr(&self, m: &Mbuf) -> *mut u8 {
        self.check(m);
        // SAFETY: idx < count, so the offset is inside the mapped region.
        unsafe { self.region.base.add(m.idx as usize * self.buf_size) }
    }

    /// The frame in a buffer (`len` bytes from the data offset).
    pub fn data<'a>(&'a self, m: &'a Mbuf) -> &'a [u8] {
        // SAFETY: the buffer lies inside the region (buf_ptr checks), off + len <=
        // buf_size (set_len and set_data check), and the shared borrow of the unique
        // handle excludes writers.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(m).add(m.off as usize), m.len as usize) }
    }

    /// The buffer from the data offset to its end, for writing a frame into; then call
    /// [`Mempool::set_len`].
    pub fn buf_mut<'a>(&'a self, m: &'a mut Mbuf) -> &'a mut [u8] {
        let off = m.off as usize;
        // SAFETY: the buffer lies inside the region, off <= buf_size, and the mutable
        // borrow of its unique handle makes this the only reference to those bytes.
        unsafe { std::slice::from_raw_parts_mut(self.buf_ptr(m).add(off), self.buf_size - off) }
    }

    /// Sets the frame length (at most the room after the data offset).
    pub fn set_len(&self, m: &mut Mbuf, len: usize) {
        assert!(
            m.off as usize + len <= self.buf_size,
            "frame of {len} bytes at offset {} in a {}-byte buffer",
            m.off,
            self.buf_size
        );
        m.len = len as u16;
    }

    /// Places the frame at `off` bytes into the buffer, `len` bytes long.
    pub fn set_data(&self, m: &mut Mbuf, off: usize, len: usize) {
        assert!(
            off + len <= self.buf_size,
            "frame of {len} bytes at offset {off} in a {}-byte buffer",
            self.buf_size
        );
        m.off = off as u16;
        m.len = len as u16;
    }

    /// Copies `frame` into a buffer and sets its length.
    pub fn fill(&self, m: &mut Mbuf, frame: &[u8]) {
        self.buf_mut(m)[..frame.len()].copy_from_slice(frame);
        self.set_len(m, frame.len());
    }

    /// A per-thread cache of up to `size` free buffers in front of the shared ring.
    pub fn cache(self: &Arc<Self>, size: usize) -> PoolCache {
        PoolCache {
            pool: self.clone(),
            objs: Vec::with_capacity(size * 2),
            size: size.max(1),
        }
    }
}

/// A per-thread cache in front of a pool (rte_mempool_cache): gets and puts work on a
/// local stack and touch the shared ring only in bulk.
pub struct PoolCache {
    pool: Arc<Mempool>,
    objs: Vec<u32>,
    size: usize,
}

impl PoolCache {
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Buffers held in this cache.
    pub fn cached(&self) -> usize {
        self.objs.len()
    }

    /// Takes `n` buffers from the shared ring into the cache (fewer if it runs dry).
    fn refill(&mut self, n: usize) {
        self.pool.free_out.dequeue_into(&mut self.objs, n);
    }

    pub fn get(&mut self) -> Option<Mbuf> {
        if self.objs.is_empty() {
            self.refill(self.size);
        }
        self.objs.pop().map(|i| self.pool.handle(i))
    }

    /// Appends `n` buffers to `out`, or none when the pool cannot supply them all.
    pub fn get_bulk(&mut self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        if self.objs.len() < n {
            self.refill(n - self.objs.len() + self.size);
            if self.objs.len() < n {
                return false;
            }
        }
        let from = self.objs.len() - n;
        let pool = &*self.pool;
        out.extend(self.objs[from..].iter().map(|&i| pool.handle(i)));
        self.objs.truncate(from);
        true
    }

    pub fn put(&mut self, m: Mbuf) {
        self.pool.check(&m);
        self.objs.push(m.idx);
        if self.objs.len() >= self.size * 2 {
            self.flush_to(self.size);
        }
    }

    /// Gives every buffer in `bufs` back, leaving it empty.
    pub fn put_all(&mut self, bufs: &mut Vec<Mbuf>) {
        let pool = &*self.pool;
        let (id, count) = (pool.id, pool.count);
        let before = self.objs.len();
        // One pass, one branch for the whole burst: a foreign buffer is taken out again
        // before the panic, so it never reaches the free list, even while unwinding.
        let mut foreign = false;
        self.objs.extend(bufs.iter().map(|m| {
            foreign |= (m.pool != id) | (m.idx as usize >= count);
            m.idx
        }));
        if foreign {
            self.objs.truncate(before);
            let m = bufs
                .iter()
                .find(|m| !pool.owns(m))
                .expect("a foreign buffer");
            wrong_pool(m.pool, id);
        }
        bufs.clear();
        if self.objs.len() >= self.size * 2 {
            self.flush_to(self.size);
        }
    }

    fn flush_to(&mut self, keep: usize) {
        if self.objs.len() > keep {
            let n = self.pool.free_in.enqueue_burst(&self.objs[keep..]);
            debug_assert_eq!(n, self.objs.len() - keep);
            self.objs.truncate(keep);
        }
    }
}

impl Drop for PoolCache {
    fn drop(&mut self) {
        self.flush_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_put_and_caches_lose_nothing() {
        let pool = Mempool::new(1000, 2048).unwrap();
        assert_eq!(pool.buf_size(), 2048);
        let mut c = pool.cache(64);
        let mut held = Vec::new();
        for round in 0..100 {
            assert!(c.get_bulk(&mut held, 7 + round % 5));
            for m in held.iter_mut() {
                pool.fill(m, &[round as u8; 60]);
            }
            for m in &held {
                assert_eq!(pool.data(m), &[round as u8; 60]);
            }
            c.put_all(&mut held);
        }
        // Exhaustion is reported, not papered over.
        let mut all = Vec::new();
        while let Some(m) = c.get() {
            all.push(m);
        }
        assert_eq!(all.len(), 1000);
        assert!(!c.get_bulk(&mut held, 1));
        let idx: std::collections::BTreeSet<u32> = all.iter().map(Mbuf::index).collect();
        assert_eq!(idx.len(), 1000, "every buffer handed out once");
        c.put_all(&mut all);
        drop(c);
        assert_eq!(pool.available(), 1000);
    }

    #[test]
    #[should_panic(expected = "used with pool")]
    fn a_buffer_of_another_pool_is_refused() {
        let a = Mempool::new(4, 256).unwrap();
        let b = Mempool::new(4, 256).unwrap();
        let m = a.get().unwrap();
        b.put(m);
    }

    #[test]
    fn a_foreign_buffer_in_a_burst_is_refused_before_anything_is_freed() {
        let a = Mempool::new(4, 256).unwrap();
        let b = Mempool::new(4, 256).unwrap();
        let mut burst = vec![b.get().unwrap(), a.get().unwrap()];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut cache = b.cache(1);
            cache.put_all(&mut burst);
        }));
        assert!(r.is_err(), "a buffer of pool a went into pool b's cache");
        // The cache (dropped while unwinding) gave nothing back: not even b's own
        // buffer, which is still in the burst, and certainly not a's.
        assert_eq!(b.available(), 3);
        assert_eq!(burst.len(), 2);
    }

    #[test]
    fn raw_round_trip() {
        let pool = Mempool::new(4, 256).unwrap();
        let mut m = pool.get().unwrap();
        pool.set_len(&mut m, 100);
        m.set_vlan_tci(Some(0xa00a));
        let raw = m.into_raw();
        // SAFETY: raw came from into_raw and is rebuilt once.
        let mut m = unsafe { Mbuf::from_raw(raw) };
        assert_eq!((m.len(), m.vlan_tci()), (100, Some(0xa00a)));
        // A frame placed further into the buffer keeps its place through a ring.
        pool.set_data(&mut m, 200, 56);
        pool.buf_mut(&mut m)[..56].copy_from_slice(&[7; 56]);
        assert_eq!(pool.buf_mut(&mut m).len(), 256 - 200);
        // SAFETY: as above.
        let m = unsafe { Mbuf::from_raw(m.into_raw()) };
        assert_eq!((m.data_offset(), pool.data(&m)), (200, &[7u8; 56][..]));
        assert_eq!(pool.region_offset(&m), m.index() as u64 * 256 + 200);
        pool.put(m);
        // Handed out again, a buffer starts at offset 0.
        let mut again = Vec::new();
        while let Some(m) = pool.get() {
            assert_eq!(m.data_offset(), 0);
            again.push(m);
        }
        again.into_iter().for_each(|m| pool.put(m));
    }

    #[test]
    #[should_panic(expected = "at offset 200")]
    fn a_frame_past_the_buffer_end_is_refused() {
        let pool = Mempool::new(4, 256).unwrap();
        let mut m = pool.get().unwrap();
        pool.set_data(&mut m, 200, 57);
    }
}
