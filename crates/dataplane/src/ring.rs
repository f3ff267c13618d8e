//! Lock-free bounded rings in the rte_ring model: a power-of-two array of slots, a
//! producer head/tail pair and a consumer head/tail pair on separate cache lines, and
//! burst (as many as possible) and bulk (all or nothing) operations.
//!
//! A multi-producer enqueue reserves slots by moving the producer head with a CAS,
//! copies its elements in, waits for earlier producers to finish, then publishes by
//! moving the producer tail; consumers only ever read below the producer tail. The
//! consumer side is the mirror image. Single-producer / single-consumer variants skip
//! the CAS and the wait. The type system decides which is used: [`spsc`] hands out one
//! `Producer` and one `Consumer`, neither `Clone` nor `Sync` (each may move to another
//! thread, but only one thread at a time can use it); [`mpmc`] hands out clonable,
//! shareable ones.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

// Under `--cfg loom` the same code runs on loom's model of atomics, cells and threads,
// which explores every interleaving of a small test (tests/loom.rs).
#[cfg(loom)]
use loom::cell::UnsafeCell;
#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};
#[cfg(not(loom))]
use std::cell::UnsafeCell;
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

/// A value alone on its cache line(s), so producer and consumer state never share one.
#[repr(align(128))]
struct CachePadded<T>(T);

struct HeadTail {
    head: AtomicU32,
    tail: AtomicU32,
}

impl HeadTail {
    fn new() -> CachePadded<HeadTail> {
        CachePadded(HeadTail {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
        })
    }
}

struct Inner<T> {
    prod: CachePadded<HeadTail>,
    cons: CachePadded<HeadTail>,
    mask: u32,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: `Inner` is reached only through the ring ends, and what they ensure together
// makes shared access sound:
// - a slot is written only between a head reservation and the tail publication that
//   covers it, and read only by a consumer whose reservation lies below the producer
//   tail it loaded with Acquire (the tail is stored with Release after the copies);
// - a reservation belongs to one caller: `MpProducer`/`McConsumer` move their head with
//   a CAS, so concurrent callers get disjoint slots; `Producer`/`Consumer` move it with
//   a plain load and store, which is right only while one thread at a time uses each
//   end. The type system holds them to that: `spsc` makes one of each, neither is
//   `Clone`, and both are `!Sync` (`NotSync`), so no two threads can call one at once.
// The slots hold `T: Copy` values moved between threads, for which `T: Send` is enough.
// (`Send` for `Inner<T: Send>` follows from its fields.)
unsafe impl<T: Send> Sync for Inner<T> {}

/// Waits until an earlier reservation has been published. Spins first; a thread that
/// reserved and was then preempted could keep everyone spinning for a whole time slice
/// when threads outnumber cores, so after a while it yields.
///
/// The load is Acquire: the earlier producer's slot writes must happen before our own
/// Release of the tail, or a consumer that acquires our tail could read its slots
/// before they are visible. (loom found this with a Relaxed load here.)
fn wait_for(tail: &AtomicU32, value: u32) {
    let mut spins = 0u32;
    while tail.load(Ordering::Acquire) != value {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        if spins < 256 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        spins = spins.saturating_add(1);
    }
}

/// Whether an operation takes what it can (burst) or all or nothing (bulk).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Amount {
    Burst,
    Bulk,
}

impl<T: Copy> Inner<T> {
    fn new(size: usize) -> Inner<T> {
        assert!(
            size.is_power_of_two() && (2..=1 << 31).contains(&size),
            "ring size must be a power of two in 2..=2^31, not {size}"
        );
        Inner {
            prod: HeadTail::new(),
            cons: HeadTail::new(),
            mask: (size - 1) as u32,
            slots: (0..size)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
        }
    }

    fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// The slot array as the copy loops address it: a plain pointer normally (no
    /// bounds checks in the loops), the array itself under loom, whose cells track
    /// each access.
    #[cfg(not(loom))]
    #[inline(always)]
    fn slot_base(&self) -> *mut T {
        // UnsafeCell<MaybeUninit<T>> has T's layout, so the slot pointer is a *mut T.
        UnsafeCell::raw_get(self.slots.as_ptr()) as *mut T
    }

    #[cfg(loom)]
    fn slot_base(&self) -> &[UnsafeCell<MaybeUninit<T>>] {
        &self.slots
    }

    /// Writes `items` into consecutive slots from `start`.
    ///
    /// # Safety
    /// The caller has reserved those slots for itself (they exist: `split` keeps them
    /// in the array) and publishes them only afterwards.
    #[cfg(not(loom))]
    #[inline(always)]
    unsafe fn write_slots(base: *mut T, start: usize, items: &[T]) {
        // An element loop rather than a memcpy call: bursts are short.
        for (k, item) in items.iter().enumerate() {
            base.add(start + k).write(*item);
        }
    }

    /// Reads a published slot.
    ///
    /// # Safety
    /// The slot is below the producer tail (written and published) and reserved by
    /// the calling consumer.
    #[cfg(not(loom))]
    #[inline(always)]
    unsafe fn read_slot(base: *mut T, i: usize) -> T {
        base.add(i).read()
    }

    #[cfg(loom)]
    unsafe fn write_slots(base: &[UnsafeCell<MaybeUninit<T>>], start: usize, items: &[T]) {
        for (k, item) in items.iter().enumerate() {
            base[start + k].with_mut(|p| (*p).write(*item));
        }
    }

    #[cfg(loom)]
    unsafe fn read_slot(base: &[UnsafeCell<MaybeUninit<T>>], i: usize) -> T {
        base[i].with(|p| (*p).assume_init())
    }

    /// The slots of `n` elements from counter `head`: (start index, count) up to the end
    /// of the array, then a count from index 0.
    fn split(&self, head: u32, n: u32) -> ((usize, usize), usize) {
        let start = (head & self.mask) as usize;
        let first = (n as usize).min(self.slots.len() - start);
        ((start, first), n as usize - first)
    }

    fn want(amount: Amount, asked: u32, available: u32) -> u32 {
        match amount {
            Amount::Burst => asked.min(available),
            Amount::Bulk if asked <= available => asked,
            Amount::Bulk => 0,
        }
    }

    /// Moves `own.head` forward over up to `asked` slots that `available(head)` says
    /// are free (producer) or filled (consumer). Returns the old head and the count, or
    /// None when nothing can be taken.
    fn reserve(
        own: &HeadTail,
        asked: usize,
        amount: Amount,
        multi: bool,
        available: impl Fn(u32) -> u32,
    ) -> Option<(u32, u32)> {
        let asked = asked.min(u32::MAX as usize) as u32;
        loop {
            let head = own.head.load(Ordering::Relaxed);
            let n = Self::want(amount, asked, available(head));
            if n == 0 {
                return None;
            }
            let next = head.wrapping_add(n);
            if !multi {
                own.head.store(next, Ordering::Relaxed);
                return Some((head, n));
            }
            if own
                .head
                .compare_exchange_weak(head, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Some((head, n));
            }
        }
    }

    /// Publishes a reservation: after earlier ones (multi), move the tail over it.
    fn publish(own: &HeadTail, head: u32, n: u32, multi: bool) {
        if multi {
            wait_for(&own.tail, head);
        }
        own.tail.store(head.wrapping_add(n), Ordering::Release);
    }

    fn enqueue(&self, items: &[T], amount: Amount, multi: bool) -> usize {
        let cons = &self.cons.0;
        let capacity = self.capacity();
        let free =
            |head: u32| capacity.wrapping_sub(head.wrapping_sub(cons.tail.load(Ordering::Acquire)));
        let Some((head, n)) = Self::reserve(&self.prod.0, items.len(), amount, multi, free) else {
            return 0;
        };
        let (first, second) = self.split(head, n);
        // SAFETY: slots head..head+n (the two index ranges from `split`, both within
        // the array) were reserved for this producer alone by `reserve`, and no
        // consumer reads them before `publish` moves the producer tail over them.
        unsafe {
            let base = self.slot_base();
            Self::write_slots(base, first.0, &items[..first.1]);
            Self::write_slots(base, 0, &items[first.1..first.1 + second]);
        }
        Self::publish(&self.prod.0, head, n, multi);
        n as usize
    }

    /// Dequeues up to `asked` elements, handing each to `take(index, value)`.
    fn dequeue(
        &self,
        asked: usize,
        amount: Amount,
        multi: bool,
        mut take: impl FnMut(usize, T),
    ) -> usize {
        let prod = &self.prod.0;
        let filled = |head: u32| prod.tail.load(Ordering::Acquire).wrapping_sub(head);
        let Some((head, n)) = Self::reserve(&self.cons.0, asked, amount, multi, filled) else {
            return 0;
        };
        let (first, second) = self.split(head, n);
        // SAFETY: these slots are below the producer tail read with Acquire in
        // `filled`, so they were written and published; this consumer reserved them
        // alone. The indices stay within the array (see `split`).
        unsafe {
            let base = self.slot_base();
            for k in 0..first.1 {
                take(k, Self::read_slot(base, first.0 + k));
            }
            for k in 0..second {
                take(first.1 + k, Self::read_slot(base, k));
            }
        }
        Self::publish(&self.cons.0, head, n, multi);
        n as usize
    }

    fn len(&self) -> usize {
        self.prod
            .0
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.cons.0.tail.load(Ordering::Acquire)) as usize
    }
}

/// Makes a ring end `!Sync` while leaving it `Send`: the single-producer and
/// single-consumer ends move their head without a CAS, so two threads must never call
/// one end at once. (`Cell` is `Send` and `!Sync`.)
type NotSync = PhantomData<Cell<()>>;

/// The producer end of a single-producer ring. It may move to another thread (`Send`)
/// but not be shared (`!Sync`): its enqueue takes no lock and no CAS.
///
/// Sharing one `&Producer` between threads does not compile:
///
/// ```compile_fail
/// let (p, _c) = dataplane::ring::spsc::<u32>(8);
/// std::thread::scope(|s| {
///     s.spawn(|| p.enqueue(1));
///     s.spawn(|| p.enqueue(2));
/// });
/// ```
///
/// while the same code with a multi-producer end does (this checks that the snippet
/// above fails for want of `Sync`, not for another reason):
///
/// ```
/// let (p, _c) = dataplane::ring::mpmc::<u32>(8);
/// std::thread::scope(|s| {
///     s.spawn(|| p.enqueue(1));
///     s.spawn(|| p.enqueue(2));
/// });
/// ```
///
/// Moving each end into its own thread is the intended use:
///
/// ```
/// let (p, c) = dataplane::ring::spsc::<u32>(8);
/// std::thread::scope(|s| {
///     s.spawn(move || assert!(p.enqueue(1)));
/// });
/// assert_eq!(std::thread::spawn(move || c.dequeue()).join().unwrap(), Some(1));
/// ```
pub struct Producer<T> {
    inner: Arc<Inner<T>>,
    _not_sync: NotSync,
}

/// The consumer end of a single-consumer ring: `Send`, `!Sync`, as [`Producer`].
///
/// ```compile_fail
/// let (_p, c) = dataplane::ring::spsc::<u32>(8);
/// std::thread::scope(|s| {
///     s.spawn(|| c.dequeue());
///     s.spawn(|| c.dequeue());
/// });
/// ```
///
/// ```
/// let (_p, c) = dataplane::ring::mpmc::<u32>(8);
/// std::thread::scope(|s| {
///     s.spawn(|| c.dequeue());
///     s.spawn(|| c.dequeue());
/// });
/// ```
pub struct Consumer<T> {
    inner: Arc<Inner<T>>,
    _not_sync: NotSync,
}

/// A producer end that any number of threads may clone and use at once.
#[derive(Clone)]
pub struct MpProducer<T> {
    inner: Arc<Inner<T>>,
}

/// A consumer end that any number of threads may clone and use at once.
#[derive(Clone)]
pub struct McConsumer<T> {
    inner: Arc<Inner<T>>,
}

/// A single-producer, single-consumer ring of `size` (a power of two) elements.
pub fn spsc<T: Copy + Send>(size: usize) -> (Producer<T>, Consumer<T>) {
    let inner = Arc::new(Inner::new(size));
    (
        Producer {
            inner: inner.clone(),
            _not_sync: PhantomData,
        },
        Consumer {
            inner,
            _not_sync: PhantomData,
        },
    )
}

/// A multi-producer, multi-consumer ring of `size` (a power of two) elements.
pub fn mpmc<T: Copy + Send>(size: usize) -> (MpProducer<T>, McConsumer<T>) {
    let inner = Arc::new(Inner::new(size));
    (
        MpProducer {
            inner: inner.clone(),
        },
        McConsumer { inner },
    )
}

macro_rules! ring_ends {
    ($producer:ident, $consumer:ident, $multi_p:expr, $multi_c:expr) => {
        impl<T: Copy + Send> $producer<T> {
            /// Enqueues as many of `items` as fit; returns how many.
            pub fn enqueue_burst(&self, items: &[T]) -> usize {
                self.inner.enqueue(items, Amount::Burst, $multi_p)
            }

            /// Enqueues all of `items`, or none when they do not all fit.
            pub fn enqueue_bulk(&self, items: &[T]) -> bool {
                items.is_empty() || self.inner.enqueue(items, Amount::Bulk, $multi_p) == items.len()
            }

            pub fn enqueue(&self, item: T) -> bool {
                self.enqueue_bulk(&[item])
            }

            pub fn len(&self) -> usize {
                self.inner.len()
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            pub fn capacity(&self) -> usize {
                self.inner.capacity() as usize
            }
        }

        impl<T: Copy + Send> $consumer<T> {
            /// Dequeues up to `out.len()` elements; returns how many.
            pub fn dequeue_burst(&self, out: &mut [T]) -> usize {
                self.inner
                    .dequeue(out.len(), Amount::Burst, $multi_c, |k, v| out[k] = v)
            }

            /// Fills all of `out`, or takes nothing when fewer are queued.
            pub fn dequeue_bulk(&self, out: &mut [T]) -> bool {
                let n = out.len();
                n == 0
                    || self
                        .inner
                        .dequeue(n, Amount::Bulk, $multi_c, |k, v| out[k] = v)
                        == n
            }

            /// Appends up to `max` elements to `out`; returns how many.
            pub fn dequeue_into(&self, out: &mut Vec<T>, max: usize) -> usize {
                self.inner
                    .dequeue(max, Amount::Burst, $multi_c, |_, v| out.push(v))
            }

            pub fn dequeue(&self) -> Option<T> {
                let mut got = None;
                self.inner
                    .dequeue(1, Amount::Bulk, $multi_c, |_, v| got = Some(v));
                got
            }

            pub fn len(&self) -> usize {
                self.inner.len()
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            pub fn capacity(&self) -> usize {
                self.inner.capacity() as usize
            }
        }
    };
}

ring_ends!(Producer, Consumer, false, false);
ring_ends!(MpProducer, McConsumer, true, true);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::thread;

    /// A ring whose counters start `start` steps before wrapping, to test wrap-around.
    fn spsc_at<T: Copy + Send>(size: usize, start: u32) -> (Producer<T>, Consumer<T>) {
        let inner = Inner::new(size);
        for ht in [&inner.prod.0, &inner.cons.0] {
            ht.head.store(start, Ordering::Relaxed);
            ht.tail.store(start, Ordering::Relaxed);
        }
        let inner = Arc::new(inner);
        (
            Producer {
                inner: inner.clone(),
                _not_sync: PhantomData,
            },
            Consumer {
                inner,
                _not_sync: PhantomData,
            },
        )
    }

    #[test]
    fn burst_and_bulk_semantics() {
        let (p, c) = spsc::<u32>(8);
        assert_eq!(p.capacity(), 8);
        assert!(!p.enqueue_bulk(&[0; 9]));
        assert_eq!(p.len(), 0);
        assert_eq!(p.enqueue_burst(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 8);
        assert!(!p.enqueue(11));
        let mut out = [0u32; 5];
        assert!(!c.dequeue_bulk(&mut [0u32; 9]));
        assert!(c.dequeue_bulk(&mut out));
        assert_eq!(out, [1, 2, 3, 4, 5]);
        assert_eq!(c.dequeue_burst(&mut out), 3);
        assert_eq!(&out[..3], &[6, 7, 8]);
        assert_eq!(c.dequeue(), None);
        assert!(c.is_empty());
    }

    #[test]
    fn wraps_around_the_counters() {
        let (p, c) = spsc_at::<u64>(4, u32::MAX - 5);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..100 {
            let items: Vec<u64> = (next_in..next_in + 1 + round % 4).collect();
            let n = p.enqueue_burst(&items);
            next_in += n as u64;
            let mut got = Vec::new();
            c.dequeue_into(&mut got, 3);
            for v in got {
                assert_eq!(v, next_out);
                next_out += 1;
            }
        }
        while let Some(v) = c.dequeue() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
    }

    #[test]
    fn spsc_threads_keep_order() {
        const N: u64 = 2_000_000;
        let (p, c) = spsc::<u64>(256);
        let t = thread::spawn(move || {
            let mut i = 0;
            let mut buf = [0u64; 32];
            while i < N {
                let n = (N - i).min(32) as usize;
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = i + k as u64;
                }
                i += p.enqueue_burst(&buf[..n]) as u64;
            }
        });
        let mut expect = 0;
        let mut buf = [0u64; 32];
        while expect < N {
            let n = c.dequeue_burst(&mut buf);
            for v in &buf[..n] {
                assert_eq!(*v, expect);
                expect += 1;
            }
        }
        t.join().unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn mpmc_threads_deliver_everything_once_in_per_producer_order() {
        const PRODUCERS: u64 = 3;
        const CONSUMERS: usize = 3;
        const PER: u64 = 200_000;
        let (p, c) = mpmc::<u64>(64);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|id| {
                let p = p.clone();
                thread::spawn(move || {
                    let mut i = 0;
                    while i < PER {
                        let n = (PER - i).min(8);
                        let items: Vec<u64> = (i..i + n).map(|v| (id << 32) | v).collect();
                        let sent = p.enqueue_burst(&items) as u64;
                        if sent == 0 {
                            thread::yield_now();
                        }
                        i += sent;
                    }
                })
            })
            .collect();
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let c = c.clone();
                let total = total.clone();
                thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut last = [None::<u64>; PRODUCERS as usize];
                    let mut buf = [0u64; 16];
                    while total.load(Ordering::Relaxed) < PRODUCERS * PER {
                        let n = c.dequeue_burst(&mut buf);
                        if n == 0 {
                            thread::yield_now();
                        }
                        total.fetch_add(n as u64, Ordering::Relaxed);
                        for v in &buf[..n] {
                            let (id, x) = ((v >> 32) as usize, v & 0xffff_ffff);
                            assert!(last[id].is_none_or(|l| l < x), "producer {id} out of order");
                            last[id] = Some(x);
                            seen.push(*v);
                        }
                    }
                    seen
                })
            })
            .collect();
        for t in producers {
            t.join().unwrap();
        }
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        let expected: Vec<u64> = (0..PRODUCERS)
            .flat_map(|id| (0..PER).map(move |v| (id << 32) | v))
            .collect();
        assert_eq!(all.len(), expected.len());
        assert!(all == expected, "lost or duplicated elements");
    }
}
