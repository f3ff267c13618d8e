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
    /// echoed a frame sent before them): their rate decreases were undone and the
    /// timeout's floor raised.
    pub spurious_timeouts: u64,
    pub go_backs: u64,
    /// NAKs that told where their gap ends (`wire::flags::GAP_END`): of the go-backs,
    /// the ones that resent only the gap and went on where they were.
    pub nak_hints: u64,
    /// NAKs with a gap end that was not a frame sent after the gap (a confused or
    /// hostile peer): taken as plain go-backs.
    pub nak_hints_refused: u64,
    /// The oldest frame resent by a sender that the window held back, with no
    /// progress for two smoothed RTTs (NAKs on; once per progress): a NAK, a
    /// retransmission or an acknowledgement was lost.
    pub window_probes: u64,
    pub peer_restarts: u64,
    /// Frames dropped on receive, by reason.
    pub drop_duplicate: u64,
    /// Out of order and beyond the reorder buffer's reach (more than `reorder_frames`
    /// ahead, or larger than a frame's payload; every out-of-order frame when
    /// `reorder_frames` is 0).
    pub drop_out_of_order: u64,
    pub drop_no_room: u64,
    pub drop_stale_epoch: u64,
    pub drop_malformed: u64,
    pub drop_down: u64,
    /// Out-of-order frames within reach of the reorder buffer (`reorder_frames`)
    /// refused because their TLPs would not fit in the receive queue beside the ones
    /// delivered and held (counted here, not in `drop_out_of_order`).
    pub drop_reorder_full: u64,
    /// Copies of frames already held in the reorder buffer (counted here, not in
    /// `drop_duplicate`).
    pub drop_held_duplicate: u64,
    /// Out-of-order frames held in the reorder buffer...
    pub reorder_held: u64,
    /// ...of which delivered once the gap before them filled...
    pub reorder_delivered: u64,
    /// ...or dropped again to make room for a frame in order (their TLPs would not
    /// have fitted beside it in the receive queue). The rest are still held, or were
    /// discarded when the peer or this session restarted.
    pub reorder_evicted: u64,
    /// NAKs held back (`reorder_wait_max_us`) that the gap's frame made unnecessary:
    /// it arrived, reordered, before the wait ran out.
    pub naks_avoided: u64,
    /// TLPs discarded because the session went down or the peer restarted.
    pub tlps_lost: u64,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub rate_bytes_per_s: f64,
}
