//! The transport's ways for devices that are not request/response: chains parked on a
//! queue until the device has data for them (filled later, one fill over several
//! chains taken whole), requests a device is not ready for (stalled in order, asked
//! again on poll, bounded by the queue's buffer), and configuration changes the device
//! reports on its own. Driven by an echo device: what the driver sends on queue 1
//! comes back on queue 0.

mod common;

use std::collections::VecDeque;

use common::{Driver, BUFS};
use endpoint::virtio::pci::{layout, QueueLimits};
use endpoint::virtio::queue::need_event;
use endpoint::virtio::{
    feature, ChainLens, Fill, Parked, Piece, RingFeatures, VirtioDevice, VirtioPci,
};
use endpoint::Device;
use proptest::prelude::*;

#[derive(Default)]
struct Echo {
    /// Frames waiting for receive chains.
    inbox: VecDeque<Vec<u8>>,
    /// Frames the device took from the driver.
    sent: Vec<Vec<u8>>,
    /// The "backend" takes frames.
    accept: bool,
    /// Spread a frame over several chains, else one chain per frame.
    merge: bool,
    dropped: u64,
    /// Fill one chain more than is parked (a device bug the transport refuses).
    overfill: bool,
    changed: bool,
    leaving: bool,
}

impl VirtioDevice for Echo {
    fn device_type(&self) -> u16 {
        0x3f
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max_size(&self) -> u16 {
        64
    }
    fn config_len(&self) -> u32 {
        4
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(self.leaving as u8);
    }
    type Job = Vec<u8>;
    fn begin(&mut self, _queue: u16, _lens: ChainLens) -> Vec<u8> {
        Vec::new()
    }
    fn consume(&mut self, job: &mut Vec<u8>, _offset: u64, data: &[u8]) {
        job.extend_from_slice(data);
    }
    fn produce(&mut self, _job: &mut Vec<u8>, _buf: &mut [u8]) -> Option<Piece> {
        None
    }
    fn ready(&mut self, _queue: u16, job: &mut Vec<u8>) -> bool {
        if self.accept {
            self.sent.push(std::mem::take(job));
        }
        self.accept
    }
    fn finish(&mut self, _job: Vec<u8>) -> u32 {
        0
    }
    fn reset(&mut self) {}
    fn parks(&self, queue: u16) -> bool {
        queue == 0
    }
    fn fill(&mut self, _queue: u16, parked: &Parked<'_>, out: &mut Fill) -> bool {
        loop {
            let Some(frame) = self.inbox.front() else {
                return false;
            };
            let len = frame.len() as u64;
            let mut n = 0;
            let mut room = 0;
            for &c in parked.chains {
                if room >= len || (!self.merge && n == 1) {
                    break;
                }
                room += c;
                n += 1;
            }
            if room < len || n == 0 {
                if parked.walking {
                    return false;
                }
                self.inbox.pop_front();
                self.dropped += 1;
                continue;
            }
            if !parked.fits(len) {
                return false;
            }
            let frame = self.inbox.pop_front().unwrap();
            let mut left = len;
            for &c in &parked.chains[..n] {
                let take = c.min(left);
                out.lens.push(take as u32);
                left -= take;
            }
            if self.overfill {
                out.lens.push(0);
            }
            out.data.extend_from_slice(&frame);
            return true;
        }
    }
    fn poll(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
    fn set_leaving(&mut self, leaving: bool) -> bool {
        self.leaving = leaving;
        true
    }
}

fn driver(packed: bool, merge: bool) -> Driver<Echo> {
    let echo = Echo {
        merge,
        accept: true,
        ..Echo::default()
    };
    let mut d = Driver::new(VirtioPci::new(echo).with_packed_ring(true), 32, packed);
    d.init(feature::VERSION_1 | feature::INDIRECT_DESC)
        .expect("features");
    d
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// Receive chains of 100 bytes each, `per` buffers per chain (the chain's 100 bytes
/// split among them), at BUFS + 0x1000 * k.
fn post_rx(d: &mut Driver<Echo>, k: u64, per: u32, indirect: bool) -> u16 {
    let base = BUFS + 0x1000 * k;
    let part = 100 / per;
    let bufs: Vec<_> = (0..per)
        .map(|i| {
            let len = if i + 1 == per { 100 - part * i } else { part };
            (base + 0x100 * i as u64, len, true)
        })
        .collect();
    d.submit(0, &bufs, indirect)
}

/// The bytes the driver finds in receive chain `k` (of `per` buffers), `len` long.
fn read_rx(d: &Driver<Echo>, k: u64, per: u32, len: u32) -> Vec<u8> {
    let base = BUFS + 0x1000 * k;
    let part = 100 / per;
    let mut out = Vec::new();
    for i in 0..per {
        let blen = if i + 1 == per { 100 - part * i } else { part };
        out.extend(d.get(base + 0x100 * i as u64, blen as usize));
    }
    out.truncate(len as usize);
    out
}

#[test]
fn parked_chains_wait_for_data_and_a_frame_over_several_chains_is_used_at_once() {
    for packed in [false, true] {
        for (per, indirect) in [(1, false), (3, false), (2, true)] {
            let mut d = driver(packed, true);
            let heads: Vec<u16> = (0..6).map(|k| post_rx(&mut d, k, per, indirect)).collect();
            d.notify(0);
            d.run();
            d.poll();
            assert!(d.take_used(0).is_empty(), "no data yet: the chains wait");
            assert_eq!(d.counter("virtio_parked"), 6);
            // 250 bytes: three chains (100 + 100 + 50).
            let f = frame(250, 1);
            d.dev.device_mut().inbox.push_back(f.clone());
            d.poll();
            let used = d.take_used(0);
            assert_eq!(
                used,
                vec![(heads[0], 100), (heads[1], 100), (heads[2], 50)],
                "packed {packed} per {per}"
            );
            let mut got = read_rx(&d, 0, per, 100);
            got.extend(read_rx(&d, 1, per, 100));
            got.extend(read_rx(&d, 2, per, 50));
            assert_eq!(got, f);
            if !packed {
                // One used index write for the three elements: the index moved by 3
                // and one interrupt went out.
                assert_eq!(d.counter("virtio_q0_interrupts"), 1);
            }
            assert_eq!(d.counter("virtio_filled"), 3);
            // The buffer is given back once the writes are known done.
            assert_eq!(d.dev.stats().buffered, 0);
            // Frames too big for what is parked are dropped when no more is coming.
            d.dev.device_mut().inbox.push_back(frame(400, 2));
            d.poll();
            assert_eq!(d.dev.device().dropped, 1);
            assert!(d.take_used(0).is_empty());
        }
    }
}

#[test]
fn data_waits_while_chains_are_being_fetched() {
    let mut d = driver(false, false);
    post_rx(&mut d, 0, 1, false);
    d.notify(0);
    // The ring fetch is out: a frame now waits rather than being dropped.
    d.dev.device_mut().inbox.push_back(frame(60, 3));
    d.dev.poll(&mut d.io);
    assert_eq!(d.dev.device().dropped, 0);
    assert_eq!(d.dev.device().inbox.len(), 1);
    d.run();
    d.poll();
    assert_eq!(d.take_used(0).len(), 1);
    assert_eq!(read_rx(&d, 0, 1, 60), frame(60, 3));
}

#[test]
fn a_fill_naming_more_chains_than_are_parked_is_refused() {
    let mut d = driver(false, false);
    d.dev.device_mut().overfill = true;
    post_rx(&mut d, 0, 1, false);
    d.notify(0);
    d.run();
    d.dev.device_mut().inbox.push_back(frame(60, 3));
    d.poll();
    assert!(d.take_used(0).is_empty());
    assert_eq!(d.counter("virtio_bad_fills"), 1);
    assert!(!d.needs_reset(), "the driver did nothing wrong");
}

#[test]
fn a_device_not_ready_stalls_its_queue_in_order_within_the_buffer() {
    for packed in [false, true] {
        let dev = VirtioPci::new(Echo::default())
            .with_packed_ring(true)
            .with_limits(QueueLimits {
                buffer_bytes: 4096,
                chunk_bytes: 1024,
            });
        let mut d = Driver::new(dev, 32, packed);
        d.init(feature::VERSION_1).expect("features");
        let mut sent = Vec::new();
        for k in 0..12u64 {
            let f = frame(1000, k as u8);
            d.put(BUFS + 0x1000 * k, &f);
            sent.push(f);
            d.submit(1, &[(BUFS + 0x1000 * k, 1000, false)], false);
        }
        d.notify(1);
        d.run();
        for _ in 0..3 {
            d.poll();
        }
        assert!(d.take_used(1).is_empty(), "nothing completes while stalled");
        let s = d.dev.stats();
        assert!(s.stalls >= 1);
        assert!(s.buffered <= 4096 && s.buffered_peak <= 4096);
        // Fewer than all frames were read: the queue stopped taking them.
        assert!(d.dev.device().sent.is_empty());
        d.dev.device_mut().accept = true;
        d.poll();
        let used = d.take_used(1);
        assert_eq!(used.len(), 12, "packed {packed}");
        assert_eq!(d.dev.device().sent, sent, "in order, each whole");
        assert_eq!(d.dev.stats().buffered, 0);
    }
}

#[test]
fn configuration_changes_raise_the_config_interrupt() {
    let mut d = driver(false, false);
    let gen = d.rd(0x15, 1);
    d.dev.device_mut().changed = true;
    d.poll();
    assert_eq!(d.rd(0x15, 1), gen + 1, "a new generation");
    assert_eq!(d.rd(layout::ISR, 1), 2, "configuration-change interrupt");
    // MSI-X: the configuration vector.
    d.io.msix = true;
    d.set_vector(None, 2);
    d.dev.set_leaving(true, &mut d.io);
    assert_eq!(d.io.vectors, vec![2]);
    assert_eq!(d.rd(layout::DEVICE, 1), 1);
    // Told twice, changed once.
    d.dev.set_leaving(true, &mut d.io);
    assert_eq!(d.io.vectors, vec![2]);
    assert_eq!(d.counter("virtio_config_changes"), 2);
}

#[test]
fn indirect_descriptors_are_offered_unless_turned_off() {
    let want = feature::VERSION_1 | feature::INDIRECT_DESC;
    let mut d = Driver::new(VirtioPci::new(Echo::default()), 32, false);
    assert_eq!(d.init(want), Some(want), "offered by default");
    let rings = RingFeatures {
        indirect_desc: false,
        ..RingFeatures::default()
    };
    let mut d = Driver::new(VirtioPci::new(Echo::default()).with_rings(rings), 32, false);
    assert_eq!(
        d.init(want),
        Some(feature::VERSION_1),
        "not offered when off"
    );
}

/// A driver with event indexes and MSI-X (vector q for queue q), as Linux's.
fn event_idx_driver() -> Driver<Echo> {
    let echo = Echo {
        accept: true,
        ..Echo::default()
    };
    let mut d = Driver::new(VirtioPci::new(echo), 32, false);
    d.io.msix = true;
    let f = d
        .init(feature::VERSION_1 | feature::EVENT_IDX)
        .expect("features");
    assert_ne!(f & feature::EVENT_IDX, 0, "offered with split rings");
    d.set_vector(Some(0), 0);
    d.set_vector(Some(1), 1);
    d.run();
    d
}

/// Adds a transmit chain of `len` bytes at BUFS + 0x1000 * `k` on queue 1 and
/// notifies only if `avail_event` asks for it, as Linux's virtqueue_kick_prepare.
/// Returns whether it notified.
fn send_event_idx(d: &mut Driver<Echo>, k: u64, len: u32) -> bool {
    d.put(BUFS + 0x1000 * k, &frame(len as usize, k as u8));
    let old = d.avail_idx(1);
    d.submit(1, &[(BUFS + 0x1000 * k, len, false)], false);
    let kick = need_event(d.avail_event(1), d.avail_idx(1), old);
    if kick {
        d.notify(1);
    }
    kick
}

#[test]
fn with_event_indexes_a_working_device_needs_no_notification_per_chain() {
    let mut d = event_idx_driver();
    assert!(send_event_idx(&mut d, 0, 60), "the first chain notifies");
    // While the device fetches, the driver adds two more: avail_event still says 0,
    // so it does not notify for them; the device finds them on its own.
    assert!(!send_event_idx(&mut d, 1, 60));
    assert!(!send_event_idx(&mut d, 2, 60));
    d.run();
    assert_eq!(d.take_used(1).len(), 3);
    assert_eq!(d.counter("virtio_q1_notifications"), 1);
    assert!(d.counter("virtio_ring_polls") >= 2);
    // Idle again, the device asked for the next notification.
    assert_eq!(d.avail_event(1), 3);
    assert!(send_event_idx(&mut d, 3, 60));
    d.run();
    assert_eq!(d.take_used(1).len(), 1);
    assert!(!d.needs_reset());
}

#[test]
fn with_event_indexes_interrupts_come_only_past_used_event() {
    let mut d = event_idx_driver();
    // used_event 0 (memory as allocated): the first used element interrupts.
    send_event_idx(&mut d, 0, 60);
    d.run();
    assert_eq!(d.io.vectors, vec![1]);
    assert_eq!(d.take_used(1).len(), 1);
    // Linux's enable_cb_delayed: "interrupt me after the 4th more".
    d.set_used_event(1, 1 + 3);
    d.io.vectors.clear();
    for k in 1..=3 {
        send_event_idx(&mut d, k, 60);
        d.run();
    }
    assert!(d.io.vectors.is_empty(), "{:?}", d.io.vectors);
    assert!(d.counter("virtio_interrupts_suppressed") >= 3);
    send_event_idx(&mut d, 4, 60);
    d.run();
    assert_eq!(d.io.vectors, vec![1], "the 4th more passed used_event");
    assert_eq!(d.take_used(1).len(), 4);
    // The driver moved used_event after the device last read it (the device wrote
    // a received frame on its own): the read behind the used writes finds it.
    d.set_used_event(0, 0x8000);
    for k in 0..4 {
        post_rx(&mut d, 10 + k, 1, false);
        d.notify(0);
    }
    d.run();
    d.io.vectors.clear();
    d.dev.device_mut().inbox.push_back(frame(50, 1));
    d.poll();
    assert!(d.io.vectors.is_empty(), "not wanted yet");
    // Linux's NAPI: takes what is there, turns the interrupt on at what it has seen.
    assert_eq!(d.take_used(0).len(), 1);
    d.set_used_event(0, d.used_seen(0));
    d.dev.device_mut().inbox.push_back(frame(50, 2));
    d.poll();
    assert_eq!(d.io.vectors, vec![0], "wanted once the driver said so");
    assert!(!d.needs_reset());
}

#[test]
fn with_event_indexes_used_writes_after_a_used_event_read_are_checked_again() {
    let mut d = event_idx_driver();
    d.io.delay_writes = true;
    d.set_used_event(0, 0x8000);
    for k in 0..2 {
        post_rx(&mut d, k, 1, false);
    }
    d.notify(0);
    d.run();
    d.io.land(u64::MAX);
    d.io.vectors.clear();
    // Frame A's used writes, then a read of used_event behind them; frame B's used
    // writes after that read was sent.
    d.dev.device_mut().inbox.push_back(frame(50, 1));
    d.dev.poll(&mut d.io);
    d.dev.device_mut().inbox.push_back(frame(50, 2));
    d.dev.poll(&mut d.io);
    // The read finds the driver not wanting one; B has not landed yet.
    d.serve(1);
    assert!(d.io.vectors.is_empty());
    // The driver takes A and turns its interrupt on at 1; B lands after.
    assert_eq!(d.take_used(0).len(), 1);
    d.set_used_event(0, d.used_seen(0));
    assert_eq!(d.device_used_idx(0), 1);
    d.io.land(u64::MAX);
    d.run();
    assert_eq!(d.io.vectors, vec![0], "B passed used_event 1");
    assert_eq!(d.take_used(0).len(), 1);
}

/// A request and its reply, as a ping's: the driver turned the receive queue's
/// interrupt back on after the device last read its `used_event`, then notified the
/// transmit queue. The device reads the receive queue's `used_event` along with the
/// transmit ring, so the reply's interrupt goes out at once, with no read behind its
/// used writes (a round trip across the fabric).
#[test]
fn with_event_indexes_a_notification_refreshes_the_receive_queues_used_event() {
    let mut d = event_idx_driver();
    d.set_used_event(0, 0x8000);
    for k in 0..4 {
        post_rx(&mut d, 10 + k, 1, false);
    }
    d.notify(0);
    d.run();
    // NAPI done: the receive interrupt on again, at what the driver has seen.
    d.set_used_event(0, d.used_seen(0));
    assert!(send_event_idx(&mut d, 0, 60));
    d.run();
    assert_eq!(d.counter("virtio_used_event_refreshes"), 1);
    assert_eq!(d.take_used(1).len(), 1);
    d.io.vectors.clear();
    // The reply: its used writes and the interrupt in the device's own round, no
    // ring read (of used_event) among the reads it makes (the fence behind its
    // writes is one).
    let fetches = d.counter("virtio_ring_fetches");
    d.dev.device_mut().inbox.push_back(frame(50, 1));
    d.dev.poll(&mut d.io);
    assert_eq!(d.io.vectors, vec![0], "no read of used_event first");
    assert_eq!(d.counter("virtio_ring_fetches"), fetches);
    d.run();
    assert_eq!(d.take_used(0).len(), 1);
    // A queue whose buffers the device does not hold is not read along: the
    // transmit queue, idle now, when the receive queue is notified.
    post_rx(&mut d, 20, 1, false);
    d.notify(0);
    d.run();
    assert_eq!(d.counter("virtio_used_event_refreshes"), 1);
    assert!(!d.needs_reset());
}

#[derive(Clone, Debug)]
enum Op {
    Send(u32),
    PostRx,
    Inject(usize),
    Serve(usize),
    Poll,
    /// The device's posted writes so far reach memory.
    Land,
    /// The driver's NAPI poll of a queue: takes what is used, then turns its
    /// interrupt on (used_event = what it has seen) and looks once more.
    Napi(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (20u32..200).prop_map(Op::Send),
        Just(Op::PostRx),
        (10usize..100).prop_map(Op::Inject),
        (1usize..6).prop_map(Op::Serve),
        Just(Op::Poll),
        Just(Op::Land),
        (0u16..2).prop_map(Op::Napi),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the interleaving of the driver's work, the device's DMA and its
    /// polls: no chain is stranded by a notification the driver left out, and a
    /// driver that turned its interrupt on and has used elements waiting got an
    /// interrupt after it did so.
    #[test]
    fn event_indexes_strand_no_chain_and_miss_no_interrupt(ops in proptest::collection::vec(op(), 1..120)) {
        let mut d = event_idx_driver();
        d.io.vectors.clear();
        d.io.delay_writes = true;
        let mut sleeping = [true; 2];
        let mut woken = [false; 2];
        let mut sent = 0u16;
        let mut posted = 0u64;
        let note = |d: &mut Driver<Echo>, sleeping: &[bool; 2], woken: &mut [bool; 2]| {
            for v in d.io.vectors.drain(..) {
                if sleeping[v as usize] {
                    woken[v as usize] = true;
                }
            }
        };
        for op in ops {
            match op {
                Op::Send(len) => {
                    if d.has_room(1, 1) {
                        send_event_idx(&mut d, 100 + sent as u64 % 64, len);
                        sent = sent.wrapping_add(1);
                    }
                }
                Op::PostRx => {
                    if d.has_room(0, 1) {
                        let old = d.avail_idx(0);
                        post_rx(&mut d, posted % 64, 1, false);
                        posted += 1;
                        if need_event(d.avail_event(0), d.avail_idx(0), old) {
                            d.notify(0);
                        }
                    }
                }
                Op::Inject(n) => d.dev.device_mut().inbox.push_back(frame(n, n as u8)),
                Op::Serve(n) => d.serve(n),
                Op::Poll => d.dev.poll(&mut d.io),
                Op::Land => d.io.land(u64::MAX),
                Op::Napi(q) => {
                    loop {
                        d.take_used(q);
                        let seen = d.used_seen(q);
                        d.set_used_event(q, seen);
                        if d.device_used_idx(q) == seen {
                            break;
                        }
                    }
                    sleeping[q as usize] = true;
                    woken[q as usize] = false;
                }
            }
            note(&mut d, &sleeping, &mut woken);
        }
        // Quiet: the device's DMA all served, its polls run, until nothing moves.
        for _ in 0..50 {
            d.poll();
        }
        d.io.land(u64::MAX);
        prop_assert!(d.io.reads.is_empty());
        note(&mut d, &sleeping, &mut woken);
        prop_assert!(!d.needs_reset());
        prop_assert_eq!(d.device_used_idx(1), d.avail_idx(1), "every transmit chain used");
        prop_assert_eq!(d.dev.device().sent.len(), sent as usize);
        for q in 0..2u16 {
            if sleeping[q as usize] && d.device_used_idx(q) != d.used_seen(q) {
                prop_assert!(woken[q as usize], "queue {} waits for an interrupt that never came", q);
            }
        }
    }
}
