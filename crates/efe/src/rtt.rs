//! Round-trip time estimation and the retransmission timeout (RFC 6298).

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

    /// The timeout before backoff: srtt + 4 rttvar, within [min, max].
    pub fn rto(&self) -> u64 {
        match self.srtt {
            None => self.rto_initial,
            Some(s) => {
                ((s + (4.0 * self.rttvar).max(1.0)) as u64).clamp(self.rto_min, self.rto_max)
            }
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
}
