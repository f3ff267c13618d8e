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
use endpoint::virtio::{feature, ChainLens, Fill, Parked, Piece, VirtioDevice, VirtioPci};
use endpoint::Device;

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
