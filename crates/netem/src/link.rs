//! A one-way link: a transmitter with a rate and a tail-drop queue, then propagation
//! delay, with seeded faults: loss, duplication, reordering, jitter, corruption and
//! scheduled outages.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::rng::Rng;
use crate::Micros;

#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub bandwidth_bps: f64,
    pub delay_us: u64,
    /// Extra random delay, uniform in 0..=jitter_us.
    pub jitter_us: u64,
    /// Queue in front of the transmitter; frames that do not fit are dropped.
    pub queue_bytes: usize,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_us`, letting later ones pass.
    pub reorder: f64,
    pub reorder_us: u64,
    /// Probability that one random bit of the frame is flipped.
    pub corrupt: f64,
    /// Intervals [start, end) during which every frame is lost.
    pub outages: Vec<(Micros, Micros)>,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            bandwidth_bps: 10e9,
            delay_us: 5,
            jitter_us: 0,
            queue_bytes: 256 * 1024,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_us: 20,
            corrupt: 0.0,
            outages: Vec::new(),
        }
    }
}

/// What a link did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkStats {
    pub offered: u64,
    pub delivered: u64,
    pub dropped_queue: u64,
    pub dropped_loss: u64,
    pub dropped_outage: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Frames sent with a flipped bit (a corrupted frame that is duplicated counts
    /// twice: both copies carry it).
    pub corrupted: u64,
    pub bytes_sent: u64,
    /// Sum and maximum of the time frames waited in the queue, in µs.
    pub queue_delay_sum_us: f64,
    pub queue_delay_max_us: f64,
}

impl LinkStats {
    pub fn mean_queue_delay_us(&self) -> f64 {
        let queued = self.offered - self.dropped_queue - self.dropped_loss - self.dropped_outage;
        if queued == 0 {
            0.0
        } else {
            self.queue_delay_sum_us / queued as f64
        }
    }
}

/// One frame on its way, addressed to a receiver the simulator knows by number.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    arrival: Micros,
    order: u64,
    dest: usize,
    frame: Vec<u8>,
}

#[derive(Debug)]
pub struct Link {
    cfg: LinkConfig,
    busy_until: f64,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(cfg: LinkConfig) -> Link {
        Link {
            cfg,
            busy_until: 0.0,
            in_flight: BinaryHeap::new(),
            order: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    fn push(&mut self, arrival: Micros, dest: usize, frame: Vec<u8>) {
        self.order += 1;
        self.in_flight.push(Reverse(InFlight {
            arrival,
            order: self.order,
            dest,
            frame,
        }));
    }

    /// Offers a frame at `now` for receiver `dest`.
    pub fn send(&mut self, now: Micros, dest: usize, mut frame: Vec<u8>, rng: &mut Rng) {
        self.stats.offered += 1;
        if self.cfg.outages.iter().any(|&(s, e)| now >= s && now < e) {
            self.stats.dropped_outage += 1;
            return;
        }
        let now_f = now as f64;
        let bytes_per_us = self.cfg.bandwidth_bps / 8e6;
        let backlog = (self.busy_until - now_f).max(0.0) * bytes_per_us;
        if backlog + frame.len() as f64 > self.cfg.queue_bytes as f64 {
            self.stats.dropped_queue += 1;
            return;
        }
        let start = self.busy_until.max(now_f);
        let wait = start - now_f;
        self.stats.queue_delay_sum_us += wait;
        self.stats.queue_delay_max_us = self.stats.queue_delay_max_us.max(wait);
        self.busy_until = start + frame.len() as f64 / bytes_per_us;
        self.stats.bytes_sent += frame.len() as u64;
        if rng.chance(self.cfg.loss) {
            self.stats.dropped_loss += 1;
            return;
        }
        let mut arrival = self.busy_until.ceil() as Micros + self.cfg.delay_us;
        if self.cfg.jitter_us > 0 {
            arrival += rng.below(self.cfg.jitter_us + 1);
        }
        if rng.chance(self.cfg.reorder) {
            self.stats.reordered += 1;
            arrival += self.cfg.reorder_us;
        }
        let corrupted = rng.chance(self.cfg.corrupt) && !frame.is_empty();
        if corrupted {
            self.stats.corrupted += 1;
            let bit = rng.below(frame.len() as u64 * 8);
            frame[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        if rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            // The copy carries the flipped bit too: another corrupted frame sent.
            self.stats.corrupted += u64::from(corrupted);
            let extra = 1 + rng.below(self.cfg.reorder_us.max(1));
            self.push(arrival + extra, dest, frame.clone());
        }
        self.push(arrival, dest, frame);
    }

    /// When the next frame arrives, if one is on its way.
    pub fn next_arrival(&self) -> Option<Micros> {
        self.in_flight.peek().map(|f| f.0.arrival)
    }

    /// A frame that has arrived by `now`, with its receiver.
    pub fn pop_arrived(&mut self, now: Micros) -> Option<(usize, Vec<u8>)> {
        if self.next_arrival()? > now {
            return None;
        }
        let f = self.in_flight.pop()?.0;
        self.stats.delivered += 1;
        Some((f.dest, f.frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(l: &mut Link, until: Micros) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((_, f)) = l.pop_arrived(until) {
            out.push(f);
        }
        out
    }

    #[test]
    fn rate_delay_and_queue() {
        // 8 Mbit/s = 1 byte/us; 1000-byte frames take 1 ms each; 5 us propagation.
        let mut l = Link::new(LinkConfig {
            bandwidth_bps: 8e6,
            delay_us: 5,
            queue_bytes: 2500,
            ..LinkConfig::default()
        });
        let mut rng = Rng::new(1);
        for i in 0..4u8 {
            l.send(0, 0, vec![i; 1000], &mut rng);
        }
        // 2500 bytes of queue: the first leaves at once, the second waits behind 1000
        // bytes, the third would make 3000 and is dropped, like the fourth.
        assert_eq!(l.stats.dropped_queue, 2);
        assert_eq!(l.next_arrival(), Some(1005));
        assert!(drain(&mut l, 1004).is_empty());
        assert_eq!(drain(&mut l, 2005).len(), 2);
    }

    #[test]
    fn faults_happen_at_their_rates() {
        let mut l = Link::new(LinkConfig {
            loss: 0.1,
            duplicate: 0.05,
            corrupt: 0.02,
            reorder: 0.1,
            ..LinkConfig::default()
        });
        let mut rng = Rng::new(7);
        for i in 0..100_000u32 {
            l.send(i as Micros, 0, i.to_be_bytes().to_vec(), &mut rng);
        }
        let s = l.stats.clone();
        let near = |x: u64, p: f64| (x as f64 - 100_000.0 * p).abs() < 100_000.0 * p * 0.1;
        assert!(near(s.dropped_loss, 0.1), "{s:?}");
        assert!(near(s.duplicated, 0.05 * 0.9), "{s:?}");
        assert!(near(s.corrupted, 0.02 * 0.9), "{s:?}");
        assert!(near(s.reordered, 0.1 * 0.9), "{s:?}");
        let got = drain(&mut l, Micros::MAX);
        assert_eq!(got.len() as u64, 100_000 - s.dropped_loss + s.duplicated);
    }

    #[test]
    fn outages_drop_everything_inside_them() {
        let mut l = Link::new(LinkConfig {
            outages: vec![(100, 200)],
            ..LinkConfig::default()
        });
        let mut rng = Rng::new(3);
        for t in 0..300 {
            l.send(t, 0, vec![1], &mut rng);
        }
        assert_eq!(l.stats.dropped_outage, 100);
    }
}
