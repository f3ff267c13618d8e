//! Session counters.

/// What a session did, counted since it was created.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    pub frames_out: u64,
    pub bytes_out: u64,
    pub data_frames_out: u64,
    pub retransmits: u64,
    pub acks_out: u64,
    pub naks_out: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub tlps_in: u64,
    pub tlps_out: u64,
    pub naks_in: u64,
    pub timeouts: u64,
    /// Of those, the ones that proved spurious (the first acknowledgement after them
    /// was for frames sent before): their rate decreases were undone and the
    /// timeout's floor raised.
    pub spurious_timeouts: u64,
    pub go_backs: u64,
    pub peer_restarts: u64,
    /// Frames dropped on receive, by reason.
    pub drop_duplicate: u64,
    pub drop_out_of_order: u64,
    pub drop_no_room: u64,
    pub drop_stale_epoch: u64,
    pub drop_malformed: u64,
    pub drop_down: u64,
    /// TLPs discarded because the session went down or the peer restarted.
    pub tlps_lost: u64,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub rate_bytes_per_s: f64,
}
