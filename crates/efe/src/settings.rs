//! Session parameters, with defaults for a LAN and validation.

use thiserror::Error;

/// Delay-based rate control parameters (rates in bytes per second, times in µs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateConfig {
    /// Rate before the first RTT sample.
    pub initial: f64,
    pub min: f64,
    pub max: f64,
    /// Queueing delay the controller aims for above the base (minimum) RTT.
    pub target_queueing_us: u32,
    /// Additive increase per RTT while below target.
    pub additive_increase: f64,
    /// Multiplicative decrease factor per unit of relative excess delay (Swift's beta).
    pub beta: f64,
    /// Largest decrease in one step (0.5 halves the rate at most).
    pub max_decrease: f64,
}

impl Default for RateConfig {
    fn default() -> RateConfig {
        RateConfig {
            initial: 50e6,
            min: 100e3,
            max: 12.5e9,
            target_queueing_us: 50,
            additive_increase: 8e6,
            beta: 0.5,
            max_decrease: 0.5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Link MTU (the Ethernet payload size; the 802.1Q tag is extra).
    pub mtu: usize,
    /// Most TLP records aggregated into one frame.
    pub max_tlps_per_frame: usize,
    /// Send window: most frames in flight.
    pub window: u32,
    /// TLPs the receiver buffers for the layer above; the advertised window follows it.
    pub recv_queue: usize,
    /// TLPs `send` accepts before it refuses with `QueueFull`.
    pub send_queue: usize,
    /// Acknowledge after this many in-order frames...
    pub ack_every: u32,
    /// ...or this many µs after the first unacknowledged one.
    pub ack_delay_us: u64,
    pub rto_initial_us: u64,
    pub rto_min_us: u64,
    pub rto_max_us: u64,
    /// Consecutive retransmission timeouts before the session goes down.
    pub retry_limit: u32,
    /// NAK fast path: an out-of-order frame triggers an immediate NAK and a go-back.
    pub nak: bool,
    /// While a gap stays open, NAK again after this many more out-of-order frames (the
    /// first NAK or the retransmission may have been lost too).
    pub renak_after: u32,
    /// Out-of-order frames the receiver holds until the gap before them fills, at most
    /// this many sequence numbers ahead of the next expected one (0: none; every
    /// out-of-order frame is dropped, plain Go-Back-N). Their TLPs count against
    /// `recv_queue`, so they occupy at most `reorder_frames` frames' payloads.
    pub reorder_frames: u32,
    /// Longest the receiver waits, with a gap open and the frames after it held, before
    /// it NAKs the gap: the wait adapts to the reordering it sees on the path, from 0
    /// (NAK at once, as without a reorder buffer) up to this.
    pub reorder_wait_max_us: u64,
    /// Data frames sent as rate probes (acknowledged at once) at session start.
    pub startup_probes: u32,
    /// Then one probe every this many data frames (0: none).
    pub probe_every: u32,
    pub rate: RateConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mtu: 1500,
            max_tlps_per_frame: 32,
            window: 128,
            recv_queue: 8192,
            send_queue: 8192,
            ack_every: 4,
            ack_delay_us: 20,
            rto_initial_us: 1_000,
            rto_min_us: 200,
            rto_max_us: 100_000,
            retry_limit: 10,
            nak: true,
            renak_after: 16,
            reorder_frames: 64,
            reorder_wait_max_us: 100,
            startup_probes: 4,
            probe_every: 16,
            rate: RateConfig::default(),
        }
    }
}

/// Largest `reorder_frames`: a session holds at most that many frames' payloads.
pub const MAX_REORDER_FRAMES: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("MTU {0} leaves no room for a record after the tether header (minimum 128)")]
    MtuTooSmall(usize),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("window {0} exceeds 2^30 frames")]
    WindowTooLarge(u32),
    #[error("reorder_frames {0} exceeds {MAX_REORDER_FRAMES}")]
    ReorderTooLarge(u32),
    #[error("RTO bounds out of order (min <= initial <= max required)")]
    RtoBounds,
    #[error("rate bounds out of order or not positive (0 < min <= initial <= max required)")]
    RateBounds,
    #[error("rate control factors out of range (beta > 0, 0 < max_decrease < 1)")]
    RateFactors,
}

impl Config {
    /// Bytes of records one frame can carry.
    pub fn max_payload(&self) -> usize {
        self.mtu
            .saturating_sub(wire::HEADER_LEN)
            .min(u16::MAX as usize)
    }

    /// Largest TLP a frame can carry (one record).
    pub fn max_tlp_len(&self) -> usize {
        self.max_payload()
            .saturating_sub(wire::records::RECORD_HEADER_LEN)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mtu < 128 {
            return Err(ConfigError::MtuTooSmall(self.mtu));
        }
        for (v, name) in [
            (self.max_tlps_per_frame as u64, "max_tlps_per_frame"),
            (self.window as u64, "window"),
            (self.recv_queue as u64, "recv_queue"),
            (self.send_queue as u64, "send_queue"),
            (self.ack_every as u64, "ack_every"),
            (self.renak_after as u64, "renak_after"),
            (self.rto_min_us, "rto_min_us"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.window > 1 << 30 {
            return Err(ConfigError::WindowTooLarge(self.window));
        }
        if self.reorder_frames > MAX_REORDER_FRAMES {
            return Err(ConfigError::ReorderTooLarge(self.reorder_frames));
        }
        if !(self.rto_min_us <= self.rto_initial_us && self.rto_initial_us <= self.rto_max_us) {
            return Err(ConfigError::RtoBounds);
        }
        let r = &self.rate;
        if !(r.min > 0.0 && r.min <= r.initial && r.initial <= r.max) {
            return Err(ConfigError::RateBounds);
        }
        if !(r.beta > 0.0
            && r.max_decrease > 0.0
            && r.max_decrease < 1.0
            && r.additive_increase >= 0.0)
        {
            return Err(ConfigError::RateFactors);
        }
        Ok(())
    }
}
