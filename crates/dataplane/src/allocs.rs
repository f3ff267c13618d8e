//! Counting heap allocations per thread, to show what the data path allocates in
//! steady state (issue 19's goal: nothing per TLP). A program installs [`Counting`]
//! as its global allocator; each thread then reads its own counts with [`thread`]
//! (no atomics on the allocation path, so the counting costs a thread-local add).
//!
//! ```
//! // Without `Counting` installed (as in this doctest) the counts stay 0.
//! let before = dataplane::allocs::thread();
//! let v = vec![1u8; 100];
//! let after = dataplane::allocs::thread();
//! assert!(after.allocations >= before.allocations);
//! drop(v);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A thread's allocation counts since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `alloc`, `alloc_zeroed` and `realloc` calls (a `realloc` may move the block,
    /// and costs like an allocation when it does).
    pub allocations: u64,
    /// Bytes asked for by them.
    pub bytes: u64,
}

impl Counts {
    /// The counts from `earlier` to `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            allocations: self.allocations.wrapping_sub(earlier.allocations),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }
}

thread_local! {
    // `const` and without a destructor: touching it never allocates, which an
    // allocator's own bookkeeping must not.
    static COUNTS: Cell<Counts> = const {
        Cell::new(Counts {
            allocations: 0,
            bytes: 0,
        })
    };
}

/// This thread's counts (all 0 unless [`Counting`] is the global allocator).
pub fn thread() -> Counts {
    COUNTS.with(Cell::get)
}

fn count(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; those are not counted.
    let _ = COUNTS.try_with(|c| {
        let mut v = c.get();
        v.allocations += 1;
        v.bytes += size as u64;
        c.set(v);
    });
}

/// The system allocator, counting each thread's allocations.
pub struct Counting;

// SAFETY: every method hands the caller's arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; the counting only touches a thread-local `Cell`,
// which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's `layout` obligations pass through to `System`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` and `layout` came from `System` through this allocator; the
        // caller guarantees `new_size` is valid for `layout`'s alignment.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
