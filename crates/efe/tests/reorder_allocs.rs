//! A receiver that holds reordered frames allocates nothing per frame in steady state:
//! held frames and the TLPs delivered from them live in the session's spare buffers,
//! which the layer above gives back (`recycle`). Counted with a global allocator that
//! counts this test's thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use efe::{Config, Session};
use wire::{flags, FrameKind, TetherHeader};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Frame `seq`: five 268-byte TLPs (a 256-byte MWr's size), as a sender packs them.
fn payload(seq: u32) -> Vec<u8> {
    let mut p = Vec::new();
    for k in 0..5u8 {
        p.extend_from_slice(&268u16.to_be_bytes());
        p.extend_from_slice(&[1, 0]);
        let mut tlp = vec![k; 268];
        tlp[..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&tlp);
    }
    p
}

/// The arrival order: in every 16 frames, the second comes after the next three, and
/// the fifth twice (the copy while it is held).
fn arrivals(frames: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for base in (0..frames).step_by(16) {
        out.extend([base, base + 2, base + 3, base + 4, base + 4, base + 1]);
        out.extend(base + 5..base + 16);
    }
    out
}

#[test]
fn holding_reordered_frames_allocates_nothing_in_steady_state() {
    let frames = 20_000u32;
    let payloads: Vec<Vec<u8>> = (0..frames).map(payload).collect();
    let order = arrivals(frames);
    let mut s = Session::new(Config::default(), 5).unwrap();
    let mut h = TetherHeader {
        kind: FrameKind::Data,
        flags: flags::ACK,
        epoch: 9,
        peer_epoch: 5,
        seq: 0,
        ack: 0,
        tsval: 1,
        tsecr: 0,
        window: 64,
        echo_wait: 0,
    };
    let warm_up = order.len() / 10;
    let mut next_tlp = 0u64;
    let mut counted = 0;
    for (i, &seq) in order.iter().enumerate() {
        if i == warm_up {
            ALLOCS.store(0, Ordering::Relaxed);
            COUNTING.with(|c| c.set(true));
        }
        let now = i as u64;
        h.seq = seq;
        h.tsval = 1 + seq;
        let _ = s.handle_frame(now, &h, &payloads[seq as usize]);
        while let Some(tlp) = s.recv() {
            assert_eq!(&tlp[..4], &((next_tlp / 5) as u32).to_be_bytes());
            next_tlp += 1;
            s.recycle(tlp);
        }
        while s.poll_transmit(now).is_some() {}
        if s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
        }
        counted += usize::from(i >= warm_up);
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let st = s.stats();
    assert_eq!(next_tlp, 5 * frames as u64, "{st:?}");
    assert!(st.reorder_held >= (frames / 16 * 3) as u64, "{st:?}");
    assert!(st.drop_held_duplicate > 0, "{st:?}");
    assert_eq!(allocs, 0, "{allocs} allocations for {counted} frames");
}
