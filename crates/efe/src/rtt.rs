//! Round-trip time estimation and the retransmission timeout (RFC 6298), with a
//! floor that learns from spurious timeouts (RFC 4015's idea): a peer that was
//! descheduled for a few milliseconds answers late without anything being lost, and
//! samples taken every few frames forget such a pause within a round trip or two, so
//! the estimator alone would time out at every pause.

/// How long a raised floor holds before it halves back towards `rto_min`.
pub const FLOOR_HOLD_US: u64 = 1_000_000;

/// Smoothed RTT, variance and minimum, in µs.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    srtt: Option<f64>,
    rttvar: f64,
    min: Option<u32>,
    latest: u32,
    rto_initial: u64,
    rto_min: u64,
    rto_max: u64,
    /// The smallest timeout now: `rto_min`, or more after spurious timeouts.
    floor: u64,
    /// When the floor was last raised or halved.
    floor_changed_at: u64,
}

impl RttEstimator {
    pub fn new(rto_initial: u64, rto_min: u64, rto_max: u64) -> RttEstimator {
        RttEstimator {
            srtt: None,
            rttvar: 0.0,
            min: None,
            latest: 0,
            rto_initial,
            rto_min,
            rto_max,
            floor: rto_min,
            floor_changed_at: 0,
        }
    }

    /// Takes one sample.
    pub fn sample(&mut self, rtt: u32) {
        let r = rtt as f64;
        self.latest = rtt;
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - r).abs();
                self.srtt = Some(0.875 * s + 0.125 * r);
            }
        }
    }

    pub fn srtt(&self) -> Option<u32> {
        self.srtt.map(|s| s as u32)
    }

    pub fn min(&self) -> Option<u32> {
        self.min
    }

    pub fn latest(&self) -> u32 {
        self.latest
    }

    /// The timeout before backoff: srtt + 4 rttvar, within [floor, max].
    pub fn rto(&self) -> u64 {
        match self.srtt {
            None => self.rto_initial,
            Some(s) => ((s + (4.0 * self.rttvar).max(1.0)) as u64).clamp(self.floor, self.rto_max),
        }
    }

    /// The current floor of the timeout (`rto_min` unless spurious timeouts raised it).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// A timeout of `rto` µs expired although nothing was lost (the acknowledgement
    /// came for frames sent only once): the path's pauses are longer than the timeout,
    /// so the floor becomes twice that timeout (at most `rto_max`).
    pub fn on_spurious_timeout(&mut self, now: u64, rto: u64) {
        self.floor = rto.max(self.floor).saturating_mul(2).min(self.rto_max);
        self.floor_changed_at = now;
    }

    /// Halves a raised floor (not below `rto_min`) once it has held for
    /// [`FLOOR_HOLD_US`] without another spurious timeout.
    pub fn relax_floor(&mut self, now: u64) {
        if self.floor > self.rto_min && now.saturating_sub(self.floor_changed_at) >= FLOOR_HOLD_US {
            self.floor = (self.floor / 2).max(self.rto_min);
            self.floor_changed_at = now;
        }
    }

    /// The timeout after `backoffs` consecutive expiries (doubling, capped at max).
    pub fn rto_backed_off(&self, backoffs: u32) -> u64 {
        self.rto()
            .saturating_mul(1u64 << backoffs.min(20))
            .min(self.rto_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6298() {
        let mut r = RttEstimator::new(1000, 200, 100_000);
        assert_eq!(r.rto(), 1000);
        r.sample(100);
        // srtt 100, rttvar 50: rto = 100 + 200 = 300.
        assert_eq!(r.rto(), 300);
        r.sample(100);
        // rttvar 37.5, srtt 100: 250.
        assert_eq!(r.rto(), 250);
        assert_eq!(r.rto_backed_off(3), 2000);
        assert_eq!(r.rto_backed_off(30), 100_000);
        assert_eq!(r.min(), Some(100));
    }

    #[test]
    fn spurious_timeouts_raise_the_floor_until_it_relaxes() {
        let mut r = RttEstimator::new(1000, 200, 100_000);
        for _ in 0..20 {
            r.sample(50);
        }
        assert_eq!(r.rto(), 200);
        r.on_spurious_timeout(10, r.rto());
        assert_eq!((r.floor(), r.rto()), (400, 400));
        r.on_spurious_timeout(20, r.rto());
        assert_eq!(r.rto(), 800);
        // Held for FLOOR_HOLD_US, then halved step by step, never below rto_min.
        r.relax_floor(20 + FLOOR_HOLD_US - 1);
        assert_eq!(r.rto(), 800);
        r.relax_floor(20 + FLOOR_HOLD_US);
        assert_eq!(r.rto(), 400);
        r.relax_floor(20 + 2 * FLOOR_HOLD_US);
        r.relax_floor(20 + 3 * FLOOR_HOLD_US);
        assert_eq!(r.rto(), 200);
        // Capped at rto_max.
        for i in 0..30 {
            r.on_spurious_timeout(i, r.rto());
        }
        assert_eq!(r.rto(), 100_000);
    }
}
