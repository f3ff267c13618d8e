//! Delay-based rate control and pacing (in the spirit of ExpEther's EFE, TIMELY and
//! Swift): the minimum RTT seen is the base; above base + target the rate falls in
//! proportion to the excess delay, at most once per RTT; at or below it, the rate
//! rises additively, by `additive_increase` per RTT.
//!
//! The delay compared with the target is the *standing* RTT, the smallest sample of
//! the last quarter smoothed RTT (Copa's idea, over half Copa's window): a queue that
//! persists shows in every sample, while a sample delayed once (a reordered frame, a
//! bridge descheduled for a moment) does not, and is not congestion. Random loss is not a congestion signal
//! either; repeated retransmission timeouts are.

use std::collections::VecDeque;

use crate::settings::RateConfig;

/// How far behind its schedule the pacer may fall and catch up in one burst, µs. A
/// software bridge sends when its loop comes round, every few µs; with no credit at
/// all it could send one frame per round (one system call each) whatever the rate.
/// 16 µs of line rate is a queue of 16 µs at most, well inside the delay target.
pub const PACING_CREDIT_US: f64 = 16.0;

/// Samples kept for the standing RTT.
const WINDOW_SAMPLES: usize = 64;

#[derive(Clone, Debug)]
pub struct RateControl {
    cfg: RateConfig,
    /// Bytes per second.
    rate: f64,
    last_decrease: Option<u64>,
    /// Fractional µs: at 10 Gbit/s a frame takes about a microsecond.
    next_send_at: f64,
    /// (time, RTT) of recent samples, oldest first.
    recent: VecDeque<(u64, u32)>,
}

impl RateControl {
    pub fn new(cfg: RateConfig) -> RateControl {
        RateControl {
            rate: cfg.initial,
            cfg,
            last_decrease: None,
            next_send_at: 0.0,
            recent: VecDeque::with_capacity(WINDOW_SAMPLES),
        }
    }

    /// Current sending rate in bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The queueing delay aimed for, in µs.
    pub fn target_queueing(&self) -> u32 {
        self.cfg.target_queueing_us
    }

    /// One RTT sample (µs) that acknowledged `acked_bytes`, with the base and smoothed RTT.
    pub fn on_rtt(&mut self, now: u64, rtt: u32, base: u32, srtt: u32, acked_bytes: usize) {
        // The window: the last quarter RTT (Copa looks at half; a quarter keeps the
        // queue in the two-flow simulation nearer the target).
        let horizon = now.saturating_sub((srtt / 4).max(1) as u64);
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| t < horizon || self.recent.len() >= WINDOW_SAMPLES)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, rtt));
        let rtt = self.recent.iter().map(|s| s.1).min().unwrap_or(rtt);
        let target = base.saturating_add(self.cfg.target_queueing_us);
        if rtt <= target {
            // Spread one RTT's worth of increase over that RTT's acknowledgements.
            let bytes_per_rtt = (self.rate * srtt.max(1) as f64 / 1e6).max(acked_bytes as f64);
            self.rate += self.cfg.additive_increase * acked_bytes as f64 / bytes_per_rtt.max(1.0);
        } else if self
            .last_decrease
            .is_none_or(|t| now.saturating_sub(t) >= srtt.max(1) as u64)
        {
            let excess = (rtt - target) as f64 / rtt as f64;
            let factor = (1.0 - self.cfg.beta * excess).max(1.0 - self.cfg.max_decrease);
            self.rate *= factor;
            self.last_decrease = Some(now);
        }
        self.rate = self.rate.clamp(self.cfg.min, self.cfg.max);
    }

    /// A retransmission timeout that follows another one (a single timeout is most
    /// likely a lost frame at the end of a burst, which says nothing of congestion):
    /// the path may be badly congested.
    pub fn on_timeout(&mut self, now: u64) {
        self.rate = (self.rate * (1.0 - self.cfg.max_decrease)).max(self.cfg.min);
        self.last_decrease = Some(now);
    }

    /// Takes back the decreases of a timeout that proved spurious: the rate goes back
    /// to what it was before (`before`), if it fell since.
    pub fn undo_to(&mut self, before: f64) {
        self.rate = self.rate.max(before).clamp(self.cfg.min, self.cfg.max);
    }

    /// Lets the next frame leave at `now` (after a retransmission timeout: the
    /// retransmission must not wait behind pacing planned for frames that were lost).
    pub fn resume_now(&mut self, now: u64) {
        self.next_send_at = self.next_send_at.min(now as f64);
    }

    /// When the next frame may leave (rounded down to the µs).
    pub fn next_send_at(&self) -> u64 {
        self.next_send_at as u64
    }

    /// Accounts for a frame of `bytes` sent at `now`. A sender that fell behind its
    /// schedule keeps up to [`PACING_CREDIT_US`] of it.
    pub fn on_send(&mut self, now: u64, bytes: usize) {
        let interval = bytes as f64 * 1e6 / self.rate;
        self.next_send_at = self.next_send_at.max(now as f64 - PACING_CREDIT_US) + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_below_target_decreases_above() {
        let mut rc = RateControl::new(RateConfig::default());
        let r0 = rc.rate();
        rc.on_rtt(100, 20, 20, 20, 1500);
        assert!(rc.rate() > r0);
        let r1 = rc.rate();
        // A standing queue: the window's samples are all late.
        rc.on_rtt(200, 200, 20, 40, 1500);
        assert!(rc.rate() < r1);
        let r2 = rc.rate();
        // No second decrease within one RTT.
        rc.on_rtt(210, 200, 20, 40, 1500);
        assert_eq!(rc.rate(), r2);
        // Decrease bounded by max_decrease.
        rc.on_rtt(1000, 1_000_000, 20, 40, 1500);
        assert!(rc.rate() >= r2 * 0.5 - 1.0);
    }

    #[test]
    fn one_late_sample_is_not_a_queue() {
        let mut rc = RateControl::new(RateConfig::default());
        let srtt = 100;
        rc.on_rtt(1000, 20, 20, srtt, 1500);
        let r0 = rc.rate();
        // A sample 500 µs late, with an on-time one still in the window (25 µs).
        rc.on_rtt(1020, 520, 20, srtt, 1500);
        assert!(rc.rate() >= r0, "a lone late sample cut the rate");
        // A standing queue: every sample of the window is late.
        let r1 = rc.rate();
        rc.on_rtt(1200, 520, 20, srtt, 1500);
        rc.on_rtt(1210, 510, 20, srtt, 1500);
        assert!(rc.rate() < r1, "a standing queue did not cut the rate");
    }

    #[test]
    fn a_timeout_lets_the_retransmission_leave_at_once() {
        let mut rc = RateControl::new(RateConfig {
            initial: 1e6,
            ..RateConfig::default()
        });
        rc.on_send(0, 1500);
        assert_eq!(rc.next_send_at(), 1500);
        rc.resume_now(200);
        assert_eq!(rc.next_send_at(), 200);
        rc.resume_now(5000); // never later than planned
        assert_eq!(rc.next_send_at(), 200);
    }

    #[test]
    fn paces() {
        let mut rc = RateControl::new(RateConfig {
            initial: 1e6,
            ..RateConfig::default()
        });
        rc.on_send(0, 1000);
        assert_eq!(rc.next_send_at(), 1000);
        rc.on_send(500, 1000);
        assert_eq!(rc.next_send_at(), 2000);
        // Late by 3000 µs: only PACING_CREDIT_US of that is made up.
        rc.on_send(5000, 1000);
        assert_eq!(rc.next_send_at(), 6000 - PACING_CREDIT_US as u64);
    }

    #[test]
    fn a_late_sender_catches_up_in_a_short_burst() {
        // 100 MB/s, 1000-byte frames: one every 10 µs.
        let mut rc = RateControl::new(RateConfig {
            initial: 100e6,
            ..RateConfig::default()
        });
        rc.on_send(0, 1000);
        // The loop comes back 100 µs later: two frames leave at once, not one and not
        // ten.
        let mut sent = 0;
        while rc.next_send_at() <= 100 {
            rc.on_send(100, 1000);
            sent += 1;
        }
        assert_eq!(sent, 2);
    }
}
