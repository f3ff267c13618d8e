//! A buffer pool in the rte_mempool model: `count` fixed-size buffers in one memory
//! region (2 MiB huge pages when the system has them reserved, normal pages
//! otherwise), free buffers kept as indices in a multi-producer/multi-consumer ring,
//! and per-thread caches in front of it so that the hot path touches the shared ring
//! only once per cache refill or flush. Nothing allocates on the hot path.
//!
//! A buffer is owned through an [`Mbuf`] handle, which is neither `Clone` nor `Copy`:
//! whoever holds the handle is the only one who can reach the bytes, and giving it back
//! (`put`) is explicit, as in DPDK. `available()` shows leaks.

use std::sync::atomic::{AtomicU64, Ordering};
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
    #[error(
        "no buffer numbers left for a pool of {count}: this process has created pools of \
         2^32 buffers in all"
    )]
    OutOfIds { count: usize },
    #[error("mapping {bytes} bytes for the pool failed: {source}")]
    Map {
        bytes: usize,
        source: std::io::Error,
    },
}

/// The largest buffer a pool hands out: a frame length and its offset in the buffer
/// each fit 16 bits.
pub const MAX_BUF_SIZE: usize = 32768;

/// A handle on one pool buffer: which buffer, where the frame starts in it (0 unless a
/// port placed it further in, as AF_XDP does) and the frame's length. Eight bytes, so
/// that bursts of handles move as cheaply as DPDK's object pointers.
///
/// The buffer is named by a number unique in the process: every pool takes its own
/// range of numbers when it is created and never gives it back, so a handle can only
/// ever be accepted by the pool it came from.
#[derive(PartialEq, Eq)]
#[repr(transparent)]
pub struct Mbuf(u64);

/// An `Mbuf` flattened for a ring; see [`Mbuf::into_raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMbuf(u64);

// The handle's bits: the buffer's number, then the frame's offset and length.
const ID_BITS: u64 = 0xffff_ffff;
const OFF_SHIFT: u32 = 32;
const LEN_SHIFT: u32 = 48;

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("id", &self.id())
            .field("off", &self.data_offset())
            .field("len", &self.len())
            .finish()
    }
}

impl Mbuf {
    /// A handle on buffer `id` with no frame in it.
    #[inline(always)]
    fn empty(id: u32) -> Mbuf {
        Mbuf(u64::from(id))
    }

    #[inline(always)]
    fn id(&self) -> u32 {
        self.0 as u32
    }

    #[inline(always)]
    fn set_frame(&mut self, off: usize, len: usize) {
        debug_assert!(off <= MAX_BUF_SIZE && len <= MAX_BUF_SIZE);
        self.0 = self.0 & ID_BITS | (off as u64) << OFF_SHIFT | (len as u64) << LEN_SHIFT;
    }

    pub fn len(&self) -> usize {
        (self.0 >> LEN_SHIFT) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the frame starts in the buffer.
    pub fn data_offset(&self) -> usize {
        (self.0 >> OFF_SHIFT) as u16 as usize
    }

    /// Flattens the handle for a ring. The buffer stays owned by whoever turns the raw
    /// value back into an `Mbuf`, which must happen exactly once.
    pub fn into_raw(self) -> RawMbuf {
        RawMbuf(self.0)
    }

    /// Rebuilds a handle flattened by `into_raw`.
    ///
    /// # Safety
    /// `raw` must come from `into_raw` and be turned back into an `Mbuf` only once;
    /// otherwise two handles would reach the same bytes.
    pub unsafe fn from_raw(raw: RawMbuf) -> Mbuf {
        Mbuf(raw.0)
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

/// The next free buffer number: pools take consecutive ranges and never give them
/// back (see [`Mbuf`]).
static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(0);

/// Takes the buffer numbers of a pool of `count`: a range of `count.next_power_of_two()`
/// numbers aligned to its size, so that whether a number is in it is one mask and
/// compare (numbers past `count` in the range name no buffer and are never handed
/// out). `None` if the process has used them all up.
fn take_ids(count: usize) -> Option<u32> {
    let mut first = 0;
    NEXT_BUFFER_ID
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            let (f, after) = id_range(next, count)?;
            first = f;
            Some(after)
        })
        .ok()
        .map(|_| first)
}

/// The range `take_ids` takes when `next` is the next free number: its first number and
/// the next free number after it.
fn id_range(next: u64, count: usize) -> Option<(u32, u64)> {
    let span = (count as u64).next_power_of_two();
    let first = next.checked_next_multiple_of(span)?;
    (first + span <= 1 << 32).then_some((first as u32, first + span))
}

#[cold]
#[inline(never)]
fn wrong_pool(id: u32, first: u32, count: usize) -> ! {
    panic!(
        "Mbuf {id} used with the pool of buffers {first}..{}",
        first as u64 + count as u64
    );
}

pub struct Mempool {
    /// The number of the pool's buffer 0; buffer `i` is `first + i`.
    first: u32,
    /// The bits that name the pool's range of numbers (see `take_ids`).
    range_mask: u64,
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
            .field("first", &self.first)
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
        let first = take_ids(count).ok_or(PoolError::OutOfIds { count })?;
        // (A ring has at least two slots.)
        let (free_in, free_out) = mpmc::<u32>(count.next_power_of_two().max(2));
        for i in 0..count as u32 {
            free_in.enqueue(first + i);
        }
        Ok(Arc::new(Mempool {
            first,
            range_mask: ID_BITS & !((count as u64).next_power_of_two() - 1),
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

    /// Where buffer `id` is in this pool, if it is one of this pool's.
    #[inline(always)]
    fn slot(&self, id: u32) -> Option<usize> {
        let i = id.wrapping_sub(self.first) as usize;
        (i < self.count).then_some(i)
    }

    /// Whether `m` is a buffer of this pool.
    pub fn owns(&self, m: &Mbuf) -> bool {
        self.slot(m.id()).is_some()
    }

    /// Index of the buffer in this pool (0 to count - 1).
    pub fn index(&self, m: &Mbuf) -> u32 {
        self.check(m) as u32
    }

    /// The start and length of the buffers' region, for handing it to the kernel
    /// (an AF_XDP UMEM); buffer `i` starts `i * buf_size` bytes in.
    pub(crate) fn region(&self) -> (*mut u8, usize) {
        (self.region.base, self.count * self.buf_size)
    }

    /// Where the frame of `m` starts, counted from the start of the region.
    pub(crate) fn region_offset(&self, m: &Mbuf) -> u64 {
        (self.check(m) * self.buf_size + m.data_offset()) as u64
    }

    /// The handle of buffer `index`, which was given away by forgetting its handle
    /// (to the kernel, as an AF_XDP frame address) and has now come back.
    ///
    /// # Safety
    /// No other handle on buffer `index` may exist, and it is rebuilt once per giving
    /// away.
    pub(crate) unsafe fn reclaim(&self, index: u32) -> Mbuf {
        debug_assert!((index as usize) < self.count);
        Mbuf::empty(self.first + index)
    }

    /// One buffer from the shared ring (prefer a [`PoolCache`] on hot paths).
    pub fn get(&self) -> Option<Mbuf> {
        self.free_out.dequeue().map(Mbuf::empty)
    }

    /// Gives a buffer back.
    pub fn put(&self, m: Mbuf) {
        self.check(&m);
        // The ring has room for every buffer of the pool, so this cannot fail.
        let ok = self.free_in.enqueue(m.id());
        debug_assert!(ok);
    }

    /// The index of `m` in this pool; panics on a buffer of another pool.
    #[inline]
    fn check(&self, m: &Mbuf) -> usize {
        match self.slot(m.id()) {
            Some(i) => i,
            None => wrong_pool(m.id(), self.first, self.count),
        }
    }

    fn buf_ptr(&self, m: &Mbuf) -> *mut u8 {
        let i = self.check(m);
        // SAFETY: i < count, so the offset is inside the mapped region.
        unsafe { self.region.base.add(i * self.buf_size) }
    }

    /// The frame in a buffer (`len` bytes from the data offset).
    pub fn data<'a>(&'a self, m: &'a Mbuf) -> &'a [u8] {
        // SAFETY: the buffer lies inside the region (buf_ptr checks), off + len <=
        // buf_size (set_len and set_data check), and the shared borrow of the unique
        // handle excludes writers.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(m).add(m.data_offset()), m.len()) }
    }

    /// The buffer from the data offset to its end, for writing a frame into; then call
    /// [`Mempool::set_len`].
    pub fn buf_mut<'a>(&'a self, m: &'a mut Mbuf) -> &'a mut [u8] {
        let off = m.data_offset();
        // SAFETY: the buffer lies inside the region, off <= buf_size, and the mutable
        // borrow of its unique handle makes this the only reference to those bytes.
        unsafe { std::slice::from_raw_parts_mut(self.buf_ptr(m).add(off), self.buf_size - off) }
    }

    /// Sets the frame length (at most the room after the data offset).
    pub fn set_len(&self, m: &mut Mbuf, len: usize) {
        assert!(
            m.data_offset() + len <= self.buf_size,
            "frame of {len} bytes at offset {} in a {}-byte buffer",
            m.data_offset(),
            self.buf_size
        );
        m.set_frame(m.data_offset(), len);
    }

    /// Places the frame at `off` bytes into the buffer, `len` bytes long.
    pub fn set_data(&self, m: &mut Mbuf, off: usize, len: usize) {
        assert!(
            off + len <= self.buf_size,
            "frame of {len} bytes at offset {off} in a {}-byte buffer",
            self.buf_size
        );
        m.set_frame(off, len);
    }

    /// Copies `frame` into a buffer and sets its length.
    pub fn fill(&self, m: &mut Mbuf, frame: &[u8]) {
        self.buf_mut(m)[..frame.len()].copy_from_slice(frame);
        self.set_len(m, frame.len());
    }

    /// A per-thread cache of up to `size` free buffers in front of the shared ring.
    pub fn cache(self: &Arc<Self>, size: usize) -> PoolCache {
        let size = size.max(1);
        PoolCache {
            pool: self.clone(),
            objs: Vec::with_capacity(size * 2),
            size,
        }
    }
}

/// A per-thread cache in front of a pool (rte_mempool_cache): gets and puts work on a
/// local stack and touch the shared ring only in bulk.
///
/// The stack holds ready handles (empty frames), so that a get is a copy of handles
/// out of it, as DPDK's is a copy of object pointers; a put checks that every handle
/// is the pool's and copies it back with its frame emptied.
pub struct PoolCache {
    pool: Arc<Mempool>,
    /// Free buffers, each as an empty handle; no two name the same buffer.
    objs: Vec<Mbuf>,
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

    /// Takes up to `n` buffers from the shared ring into the cache.
    #[cold]
    fn refill(&mut self, n: usize) {
        let mut ids = [0u32; 64];
        let mut left = n;
        while left > 0 {
            let got = self.pool.free_out.dequeue_burst(&mut ids[..left.min(64)]);
            self.objs
                .extend(ids[..got].iter().map(|&id| Mbuf::empty(id)));
            if got < left.min(64) {
                break;
            }
            left -= got;
        }
    }

    pub fn get(&mut self) -> Option<Mbuf> {
        if self.objs.is_empty() {
            self.refill(self.size);
        }
        self.objs.pop()
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
        out.reserve(n);
        // SAFETY: `out` has room for n more handles (reserved above); the n handles at
        // the top of the stack are moved, not duplicated: the stack forgets them by
        // shrinking to `from` right after, and `Mbuf` has no drop code to run twice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.objs.as_ptr().add(from),
                out.as_mut_ptr().add(out.len()),
                n,
            );
            out.set_len(out.len() + n);
            self.objs.set_len(from);
        }
        true
    }

    pub fn put(&mut self, m: Mbuf) {
        self.pool.check(&m);
        self.objs.push(Mbuf::empty(m.id()));
        if self.objs.len() >= self.size * 2 {
            self.flush_to(self.size);
        }
    }

    /// Gives every buffer in `bufs` back, leaving it empty.
    pub fn put_all(&mut self, bufs: &mut Vec<Mbuf>) {
        let pool = &*self.pool;
        let (first, count) = (pool.first, pool.count);
        let n = bufs.len();
        self.objs.reserve(n);
        // One pass and one branch for the whole burst: each handle is written past the
        // stack's end with its frame emptied while its pool is checked, and the
        // written handles become part of the stack only if all were this pool's, so a
        // foreign buffer never reaches the free list, even while unwinding. The check
        // is whether the number lies in the pool's aligned range (numbers in the range
        // past `count` are never handed out, so no handle has one): 64-bit masks and no
        // early exit, which vectorises.
        let (first64, mask) = (u64::from(first), pool.range_mask);
        let mut foreign = 0u64;
        for (to, m) in self.objs.spare_capacity_mut().iter_mut().zip(bufs.iter()) {
            foreign |= (m.0 ^ first64) & mask;
            to.write(Mbuf(m.0 & ID_BITS));
        }
        if foreign != 0 {
            let m = bufs
                .iter()
                .find(|m| !pool.owns(m))
                .expect("a foreign buffer");
            wrong_pool(m.id(), first, count);
        }
        // SAFETY: the reserve above left room for all n handles, so the pass above
        // wrote n after the stack's end; the burst's handles are moved, not duplicated:
        // `bufs` forgets them (length 0 without drop code, which `Mbuf` has none of),
        // so each buffer still has exactly one handle.
        unsafe {
            let at = self.objs.len();
            self.objs.set_len(at + n);
            bufs.set_len(0);
        }
        if self.objs.len() >= self.size * 2 {
            self.flush_to(self.size);
        }
    }

    #[cold]
    fn flush_to(&mut self, keep: usize) {
        let mut ids = [0u32; 64];
        while self.objs.len() > keep {
            let k = (self.objs.len() - keep).min(64);
            let from = self.objs.len() - k;
            for (id, m) in ids.iter_mut().zip(&self.objs[from..]) {
                *id = m.id();
            }
            // The ring has room for every buffer of the pool, so this takes all.
            let sent = self.pool.free_in.enqueue_burst(&ids[..k]);
            debug_assert_eq!(sent, k);
            self.objs.truncate(from);
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
        let idx: std::collections::BTreeSet<u32> = all.iter().map(|m| pool.index(m)).collect();
        assert_eq!(idx.len(), 1000, "every buffer handed out once");
        c.put_all(&mut all);
        drop(c);
        assert_eq!(pool.available(), 1000);
    }

    #[test]
    #[should_panic(expected = "used with the pool of buffers")]
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
        let raw = m.into_raw();
        // SAFETY: raw came from into_raw and is rebuilt once.
        let mut m = unsafe { Mbuf::from_raw(raw) };
        assert_eq!((m.len(), m.data_offset()), (100, 0));
        // A frame placed further into the buffer keeps its place through a ring.
        pool.set_data(&mut m, 200, 56);
        pool.buf_mut(&mut m)[..56].copy_from_slice(&[7; 56]);
        assert_eq!(pool.buf_mut(&mut m).len(), 256 - 200);
        // SAFETY: as above.
        let m = unsafe { Mbuf::from_raw(m.into_raw()) };
        assert_eq!((m.data_offset(), pool.data(&m)), (200, &[7u8; 56][..]));
        assert_eq!(pool.region_offset(&m), pool.index(&m) as u64 * 256 + 200);
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

    #[test]
    fn pools_take_aligned_ranges_of_numbers_until_none_are_left() {
        assert_eq!(id_range(0, 1000), Some((0, 1024)));
        assert_eq!(id_range(1024, 5), Some((1024, 1032)));
        assert_eq!(id_range(1030, 5), Some((1032, 1040)));
        assert_eq!(id_range(1030, 4096), Some((4096, 8192)));
        assert_eq!(id_range((1 << 32) - 8, 8), Some((u32::MAX - 7, 1 << 32)));
        assert_eq!(id_range((1 << 32) - 8, 9), None);
        assert_eq!(id_range(1 << 32, 1), None);
        assert_eq!(id_range(u64::MAX - 3, 8), None);
    }

    #[test]
    fn no_pool_takes_a_buffer_of_another() {
        // Sizes that are not powers of two leave numbers in a pool's range that name
        // no buffer; a neighbour's numbers still fall outside.
        let pools: Vec<_> = [5, 3, 8, 1, 700]
            .iter()
            .map(|&n| Mempool::new(n, 64).unwrap())
            .collect();
        for (i, a) in pools.iter().enumerate() {
            let mut mine = Vec::new();
            while let Some(m) = a.get() {
                mine.push(m);
            }
            assert_eq!(mine.len(), a.count());
            for (j, b) in pools.iter().enumerate() {
                for m in &mine {
                    assert_eq!(b.owns(m), i == j, "pool {j} and a buffer of pool {i}");
                }
                if i != j {
                    let mut burst = vec![mine.pop().unwrap()];
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        b.cache(4).put_all(&mut burst);
                    }));
                    assert!(r.is_err(), "pool {j} took a buffer of pool {i}");
                    mine.append(&mut burst);
                }
            }
            a.cache(4).put_all(&mut mine);
            assert_eq!(a.available(), a.count());
        }
    }

    #[test]
    fn a_buffer_comes_back_from_the_cache_empty() {
        let pool = Mempool::new(64, 256).unwrap();
        let mut c = pool.cache(64);
        let mut held = Vec::new();
        assert!(c.get_bulk(&mut held, 8));
        for (k, m) in held.iter_mut().enumerate() {
            pool.set_data(m, 10 + k, 100);
        }
        let ids: Vec<u32> = held.iter().map(|m| pool.index(m)).collect();
        c.put_all(&mut held);
        assert!(held.is_empty());
        assert!(c.get_bulk(&mut held, 8));
        let mut again: Vec<u32> = held.iter().map(|m| pool.index(m)).collect();
        again.sort_unstable();
        let mut ids = ids;
        ids.sort_unstable();
        assert_eq!(again, ids, "the same buffers, from the top of the stack");
        for m in &held {
            assert_eq!((m.data_offset(), m.len()), (0, 0));
        }
        let one = held.pop().unwrap();
        c.put(one);
        let one = c.get().unwrap();
        assert_eq!((one.data_offset(), one.len()), (0, 0));
        held.push(one);
        c.put_all(&mut held);
    }

    #[test]
    fn a_handle_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Mbuf>(), 8);
    }
}
