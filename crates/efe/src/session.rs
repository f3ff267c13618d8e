//! One EFE session: reliable, in-order, exactly-once delivery of TLP records between
//! two bridges in one group, as a sans-IO state machine (quinn-proto style). It does
//! no I/O and reads no clock: the caller passes `now` (µs) in and moves frames.
//!
//! - Go-Back-N: frames carry sequence numbers; the receiver delivers them in order,
//!   acknowledges cumulatively (piggybacked, or after `ack_every` frames or
//!   `ack_delay_us`), and answers a gap with one NAK naming the frame it needs, and the
//!   first frame after the gap it holds, if any (the gap's end); the sender then goes
//!   back to it, resending only the gap when the NAK says where it ends (a gap end it
//!   checks: one no honest receiver sends makes the NAK a plain go-back), and skips
//!   ahead again when an acknowledgement shows that the receiver has more. A sender the
//!   window holds back probes with its oldest frame after two RTTs without progress; a
//!   retransmission timer (RFC 6298 RTO with exponential backoff) covers lost NAKs and
//!   tails; after `retry_limit` expiries in a row the session goes down.
//! - Reordering: the receiver holds up to `reorder_frames` frames that arrive ahead of
//!   a gap and delivers them when it fills. It learns how long the path reorders (a
//!   gap filled by a frame sent before the ones that overtook it) and waits that long,
//!   at most `reorder_wait_max_us`, before it NAKs a gap, so that a frame merely late
//!   does not cost a go-back.
//! - Epochs: each run of a bridge draws a random boot epoch, and its sessions count
//!   up from it (boot + 1, boot + 2, ...: [`EPOCH_RUN_SPAN`]). Frames carry the
//!   sender's epoch and the epoch it believes the receiver has. A new epoch from the
//!   peer means it restarted (or made a new session): both directions start over at
//!   sequence 0, and every TLP the old session held (queued, in flight, received and
//!   not taken) is counted lost. Epochs the peer used before (remembered, a few) and
//!   older sessions of its current run are refused, as are frames addressed to another
//!   epoch of ours. The layer above may learn of a restart first (the peer's INFO
//!   carries its boot epoch): [`Session::peer_restart`].
//! - Back-pressure: a frame is acknowledged only once its TLPs are queued for the layer
//!   above; the advertised window is the room left in that queue.
//! - Rate: delay-based control (`RateControl`) paces data frames.

use std::collections::VecDeque;

use thiserror::Error;
use wire::records::{RecordType, RECORD_HEADER_LEN};
use wire::{flags, FrameKind, Records, TetherHeader};

use crate::rate::RateControl;
use crate::rtt::RttEstimator;
use crate::seq;
use crate::settings::{Config, ConfigError, MAX_REORDER_FRAMES};
use crate::stats::Stats;

/// Time in microseconds, from any origin the caller keeps, never going back: the `now`
/// of each call is at least that of the call before (and a frame's `since` at most
/// its `now`). Deadlines saturate at `u64::MAX`.
pub type Micros = u64;

/// The session epochs of one run of a bridge are its boot epoch plus 1, 2, ... (one
/// per session it makes), within this span. A peer epoch up to this far behind the
/// current one is taken for an older session of the same run and refused as stale;
/// anything else new is a restart. A session cannot tell a new run from an older
/// session by its epoch alone: a restarted peer's random boot epoch lands in that
/// window with odds 2^-16, and its frames are then refused until the layer above,
/// which sees the new boot epoch in the peer's INFO, calls [`Session::peer_restart`]
/// (fabric does for every new boot epoch unless the session provably follows the new
/// run already).
pub const EPOCH_RUN_SPAN: u32 = 1 << 16;

/// Whether `epoch` is a session epoch of the run that booted with `boot`.
pub const fn epoch_of_run(boot: u32, epoch: u32) -> bool {
    epoch.wrapping_sub(boot) < EPOCH_RUN_SPAN
}

/// Whether the peer's timestamp `a` is no later than `b` (its clock, wrapping).
const fn tsval_le(a: u32, b: u32) -> bool {
    seq::le(a, b)
}

/// How many gaps filled by retransmissions a session remembers, to learn from their
/// originals if they still come.
const FILLED_KEPT: usize = 4;

/// How many earlier epochs of the peer a session remembers (and refuses).
const RETIRED_EPOCHS: usize = 4;

/// Session-level events for the layer above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer acknowledged our epoch: both directions work.
    Up,
    /// The peer restarted (a new epoch); `lost` TLPs were dropped with its old session:
    /// ours queued or in flight, and its own received but not yet taken (`recv`).
    PeerRestarted { lost: u64 },
    /// Retries exhausted: the peer is unreachable. `lost` TLPs were discarded.
    Down { lost: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the peer to acknowledge our epoch.
    Connecting,
    Up,
    /// Retries exhausted. Nothing is sent or accepted until `restart`.
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("send queue full ({0} TLPs)")]
    QueueFull(usize),
    #[error("TLP of {size} bytes does not fit in a frame (at most {max})")]
    TooLarge { size: usize, max: usize },
    #[error("empty TLP")]
    Empty,
    #[error("session is down")]
    Down,
}

/// Why an incoming frame was not taken (it is counted in `Stats` too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Refused {
    #[error("frame from an older epoch of the peer")]
    StalePeerEpoch,
    #[error("frame addressed to an older epoch of ours")]
    StaleLocalEpoch,
    /// A copy of a frame already taken, or already held.
    #[error("duplicate frame")]
    Duplicate,
    #[error("out-of-order frame beyond the reorder buffer's reach")]
    OutOfOrder,
    /// The frame's TLPs do not fit in the receive queue (beside the ones delivered,
    /// and for a frame out of order, the ones held).
    #[error("no room in the receive queue")]
    NoRoom,
    #[error("malformed records")]
    Malformed,
    #[error("session is down")]
    Down,
    #[error("frame kind {0:?} does not belong to a session")]
    NotSessionFrame(FrameKind),
}

/// A frame to send: the tether header and the payload. The caller adds the Ethernet
/// header (with the group's VLAN tag) and the frame check (`wire::FrameWriter`).
#[derive(Debug)]
pub struct Transmit<'a> {
    pub header: TetherHeader,
    pub payload: &'a [u8],
}

impl Transmit<'_> {
    /// Writes the whole frame into `buf`: `ethernet` (addresses, the group's VLAN tag),
    /// the tether header, the payload and the frame check, and the nonce and tag when
    /// the group has a key (`seal`: the sender's session key and a fresh nonce).
    /// Returns its length.
    pub fn write_frame(
        &self,
        buf: &mut [u8],
        ethernet: &wire::EthernetRepr,
        seal: Option<wire::Seal<'_>>,
    ) -> Result<usize, wire::WireError> {
        let mut w = wire::FrameWriter::sealed(buf, ethernet, seal)?;
        w.append_with(|b| {
            let room = b.len();
            let dst = b
                .get_mut(..self.payload.len())
                .ok_or(wire::WireError::NoRoom {
                    needed: self.payload.len(),
                    got: room,
                })?;
            dst.copy_from_slice(self.payload);
            Ok(self.payload.len())
        })?;
        w.finish(&self.header)
    }
}

#[derive(Debug)]
struct SentFrame {
    seq: u32,
    payload: Vec<u8>,
    tlps: u32,
    /// When it was first sent; a retransmitted frame gives no RTT sample (Karn).
    sent_at: Micros,
    resent: bool,
}

/// An out-of-order frame held until the frames before it arrive: its records, all
/// validated, in a buffer of the session's spares.
#[derive(Debug)]
struct Held {
    payload: Vec<u8>,
    tlps: usize,
    tsval: u32,
}

/// The gap in front of the held frames: `rcv_nxt` is missing and later frames came.
#[derive(Clone, Copy, Debug)]
struct Gap {
    /// When it opened (the first later frame arrived, or it was left over when the
    /// gap before it filled).
    since: Micros,
    /// The peer's tsval of the first later frame: a frame that fills the gap with a
    /// tsval no later than this was sent before it (reordered); one with a later tsval
    /// is a retransmission.
    first_tsval: u32,
}

/// A gap that a retransmission filled: if the frame's original still arrives, the gap
/// was reordering, not loss, and the NAK that caused the retransmission came too soon.
#[derive(Clone, Copy, Debug)]
struct Filled {
    seq: u32,
    gap: Gap,
}

/// What the first timeout of a series changed.
#[derive(Clone, Copy, Debug)]
struct TimeoutUndo {
    /// When it expired.
    at: Micros,
    rate: f64,
    rto: u64,
}

pub struct Session {
    cfg: Config,
    local_epoch: u32,
    peer_epoch: u32,
    /// Epochs the peer had before its latest restarts (0: none), refused.
    retired: [u32; RETIRED_EPOCHS],
    state: State,
    // Sending.
    pending: VecDeque<Vec<u8>>,
    unacked: VecDeque<SentFrame>,
    /// Sequence number of the oldest unacknowledged frame (= unacked.front()).
    snd_una: u32,
    /// Next frame to (re)transmit; below `next_seq` after a go-back.
    snd_nxt: u32,
    /// Sequence number the next new frame gets.
    next_seq: u32,
    peer_window: u32,
    rto_deadline: Option<Micros>,
    backoffs: u32,
    /// Set by the first timeout of a series: the rate and the timeout before it, to
    /// undo if the series proves spurious.
    timeout_undo: Option<TimeoutUndo>,
    /// The NAK we last went back for, and when: duplicates within an RTT are ignored.
    last_go_back: Option<(u32, Micros)>,
    /// After a NAK that told where its gap ends (`flags::GAP_END`): when `snd_nxt`
    /// reaches the first (`.0`), it jumps to the second, where the sender was before it
    /// went back; the frames between were sent and the receiver holds them.
    skip: Option<(u32, u32)>,
    /// When the latest data frame left, and when an acknowledgement last made
    /// progress: a sender held back by the window probes 2 srtt after the later.
    last_sent_at: Micros,
    progress_at: Micros,
    /// The window probe was sent since the last progress.
    probed: bool,
    frames_since_probe: u32,
    /// Round trips from sending a frame to its ack, everything included: the RTO.
    rtt: RttEstimator,
    /// Smallest network round trip (the echo minus the peer's holding time): the
    /// rate control's base.
    net_min: Option<u32>,
    rate: RateControl,
    // Receiving.
    rcv_nxt: u32,
    delivered: VecDeque<Vec<u8>>,
    ts_recent: u32,
    /// When `ts_recent` arrived (our clock): the echo adds the time we held it.
    ts_recent_at: Micros,
    /// How long its frame may have waited before we looked (`echo_wait`).
    ts_recent_wait: u64,
    unacked_rx: u32,
    ack_deadline: Option<Micros>,
    ack_now: bool,
    nak_now: bool,
    /// The gap we already sent a NAK for (until it is filled).
    nak_sent_for: Option<u32>,
    /// Out-of-order frames seen since that NAK.
    out_of_order_since_nak: u32,
    /// The reorder buffer: `held[i]` is frame `rcv_nxt + 1 + i`, if it came. At most
    /// `reorder_frames` long, and its last slot, if any, is occupied.
    held: VecDeque<Option<Held>>,
    /// TLPs in `held`: `delivered.len() + held_tlps <= recv_queue` always.
    held_tlps: usize,
    /// The gap at `rcv_nxt`, while frames after it came.
    gap: Option<Gap>,
    /// The last gaps retransmissions filled, newest first.
    filled: [Option<Filled>; FILLED_KEPT],
    /// When the NAK for the open gap is due (the reordering wait runs out).
    nak_deadline: Option<Micros>,
    /// How long a gap may stay open before it is NAKed: the reordering this path has
    /// shown (0 until it shows any), up to `reorder_wait_max_us`.
    reorder_wait: u64,
    window_was_low: bool,
    events: VecDeque<Event>,
    stats: Stats,
    /// Buffers of TLPs sent, frames acknowledged, held frames delivered and TLPs taken
    /// back by [`Session::recycle`], kept for reuse so that a session in steady state does not
    /// allocate per TLP (at most [`SPARE_BUFFERS`], each of at most twice the MTU).
    spare: tlp::Buffers,
}

/// Buffers a session keeps for reuse, at most (each of at most twice the MTU).
pub const SPARE_BUFFERS: usize = 64;

impl Session {
    /// A session with our `local_epoch`, which must be non-zero and must not repeat an
    /// epoch of an earlier run of this bridge (tether draws its boot epoch at random
    /// and counts up from it for each session: [`EPOCH_RUN_SPAN`]).
    pub fn new(cfg: Config, local_epoch: u32) -> Result<Session, ConfigError> {
        cfg.validate()?;
        if local_epoch == 0 {
            return Err(ConfigError::Zero("local_epoch"));
        }
        Ok(Session {
            rtt: RttEstimator::new(cfg.rto_initial_us, cfg.rto_min_us, cfg.rto_max_us),
            net_min: None,
            rate: RateControl::new(cfg.rate),
            cfg,
            local_epoch,
            peer_epoch: 0,
            retired: [0; RETIRED_EPOCHS],
            state: State::Connecting,
            pending: VecDeque::new(),
            unacked: VecDeque::new(),
            snd_una: 0,
            snd_nxt: 0,
            next_seq: 0,
            peer_window: cfg.window,
            rto_deadline: None,
            backoffs: 0,
            timeout_undo: None,
            last_go_back: None,
            skip: None,
            last_sent_at: 0,
            progress_at: 0,
            probed: false,
            frames_since_probe: 0,
            rcv_nxt: 0,
            delivered: VecDeque::new(),
            ts_recent: 0,
            ts_recent_at: 0,
            ts_recent_wait: 0,
            unacked_rx: 0,
            ack_deadline: None,
            ack_now: false,
            nak_now: false,
            nak_sent_for: None,
            out_of_order_since_nak: 0,
            held: VecDeque::new(),
            held_tlps: 0,
            gap: None,
            filled: [None; FILLED_KEPT],
            nak_deadline: None,
            reorder_wait: 0,
            window_was_low: false,
            events: VecDeque::new(),
            stats: Stats::default(),
            spare: tlp::Buffers::new(SPARE_BUFFERS, 2 * cfg.mtu),
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local_epoch(&self) -> u32 {
        self.local_epoch
    }

    pub fn peer_epoch(&self) -> u32 {
        self.peer_epoch
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters, with the current RTT and rate filled in.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.srtt_us = self.rtt.srtt().unwrap_or(0);
        s.min_rtt_us = self.rtt.min().unwrap_or(0);
        s.rate_bytes_per_s = self.rate.rate();
        s
    }

    /// TLPs queued or in flight that the peer has not acknowledged.
    pub fn outstanding_tlps(&self) -> usize {
        self.pending.len() + self.unacked.iter().map(|f| f.tlps as usize).sum::<usize>()
    }

    /// Largest TLP a frame can carry.
    pub fn max_tlp_len(&self) -> usize {
        self.cfg.max_tlp_len()
    }

    /// Queues one encoded TLP for reliable, in-order delivery.
    pub fn send(&mut self, tlp: &[u8]) -> Result<(), SendError> {
        if self.state == State::Down {
            return Err(SendError::Down);
        }
        if tlp.is_empty() {
            return Err(SendError::Empty);
        }
        if tlp.len() > self.max_tlp_len() {
            return Err(SendError::TooLarge {
                size: tlp.len(),
                max: self.max_tlp_len(),
            });
        }
        if self.pending.len() >= self.cfg.send_queue {
            return Err(SendError::QueueFull(self.cfg.send_queue));
        }
        let mut b = self.take_buffer();
        b.extend_from_slice(tlp);
        self.pending.push_back(b);
        Ok(())
    }

    /// Room in the send queue.
    pub fn send_room(&self) -> usize {
        self.cfg.send_queue - self.pending.len()
    }

    /// TLPs received in order and not taken yet (`recv`); at most `recv_queue`.
    pub fn received(&self) -> usize {
        self.delivered.len()
    }

    /// Out-of-order frames held now, waiting for the gap before them to fill; at most
    /// `reorder_frames`.
    pub fn held_frames(&self) -> usize {
        self.held.iter().filter(|f| f.is_some()).count()
    }

    /// The next TLP delivered in order, exactly once.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let tlp = self.delivered.pop_front()?;
        if self.window_was_low && self.queue_window() >= self.cfg.window / 2 {
            // The peer may be waiting on a closed window: tell it.
            self.window_was_low = false;
            self.ack_now = true;
        }
        Some(tlp)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Gives back a buffer (a TLP [`Session::recv`] returned, once its bytes are
    /// used) for the session to reuse: it keeps up to [`SPARE_BUFFERS`], so that the
    /// steady state allocates nothing per TLP. Optional: a buffer not given back is
    /// simply freed.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.spare.give(buf);
    }

    /// An empty buffer: a spare one, or a new one.
    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare.take()
    }

    /// The room left in the receive queue, in frames, counted from the next frame
    /// expected (at most our window).
    fn queue_window(&self) -> u32 {
        let free = self.cfg.recv_queue.saturating_sub(self.delivered.len());
        ((free / self.cfg.max_tlps_per_frame) as u32).min(self.cfg.window)
    }

    /// The window we advertise: the room in the receive queue, and while a gap is open,
    /// no further than the reorder buffer reaches (frames beyond it would be dropped:
    /// a sender that resends only the gap goes on sending new frames meanwhile).
    fn advertised_window(&self) -> u32 {
        let room = self.queue_window();
        if self.gap.is_some() && self.cfg.reorder_frames > 0 && self.cfg.nak {
            room.min(self.cfg.reorder_frames + 1)
        } else {
            room
        }
    }

    /// Takes a frame that arrived from the peer (already parsed, its check verified).
    pub fn handle_frame(
        &mut self,
        now: Micros,
        h: &TetherHeader,
        payload: &[u8],
    ) -> Result<(), Refused> {
        self.handle_frame_since(now, now, h, payload)
    }

    /// The same for a frame that may have arrived as early as `since`: the caller
    /// last found its receive queue empty then and has not looked since (it slept or
    /// was descheduled). The echo tells the peer, whose rate control then does not
    /// take our absence for a queue in the network.
    pub fn handle_frame_since(
        &mut self,
        now: Micros,
        since: Micros,
        h: &TetherHeader,
        payload: &[u8],
    ) -> Result<(), Refused> {
        self.stats.frames_in += 1;
        self.stats.bytes_in += (wire::HEADER_LEN + payload.len()) as u64;
        if !matches!(h.kind, FrameKind::Data | FrameKind::Ack | FrameKind::Nak) {
            return Err(Refused::NotSessionFrame(h.kind));
        }
        if self.state == State::Down {
            self.stats.drop_down += 1;
            return Err(Refused::Down);
        }
        // Whose epoch is this? (0 is nobody's, even before the peer is known.)
        if h.epoch != self.peer_epoch || h.epoch == 0 {
            if self.stale_peer_epoch(h.epoch) {
                self.stats.drop_stale_epoch += 1;
                return Err(Refused::StalePeerEpoch);
            }
            if self.peer_epoch != 0 {
                self.peer_restarted();
            }
            self.peer_epoch = h.epoch;
        }
        if h.peer_epoch != 0 && h.peer_epoch != self.local_epoch {
            // Meant for an older incarnation of us: answer so the peer learns our epoch.
            self.stats.drop_stale_epoch += 1;
            self.ack_now = true;
            return Err(Refused::StaleLocalEpoch);
        }
        if h.peer_epoch == self.local_epoch && self.state == State::Connecting {
            self.state = State::Up;
            self.events.push_back(Event::Up);
        }
        if h.has_flag(flags::ACK) && h.peer_epoch == self.local_epoch {
            self.peer_window = h.window as u32;
            // Both ends may have been away: the peer says how long our frame may have
            // waited for it, and this one may have waited for us since `since`.
            let waited =
                h.echo_wait as u64 * wire::ECHO_WAIT_UNIT_US as u64 + now.saturating_sub(since);
            self.on_ack(now, h.ack, h.tsecr, waited);
        }
        match h.kind {
            FrameKind::Nak => {
                self.stats.naks_in += 1;
                if h.peer_epoch == self.local_epoch {
                    let gap_end = h.has_flag(flags::GAP_END).then_some(h.seq);
                    self.on_nak(now, h.ack, gap_end);
                }
                Ok(())
            }
            FrameKind::Data => self.on_data(now, since, h, payload),
            _ => Ok(()),
        }
    }

    /// An epoch the peer had before (0 is nobody's): one it used before its latest
    /// restarts, or an older session of its current run.
    fn stale_peer_epoch(&self, epoch: u32) -> bool {
        let older_session = self.peer_epoch != 0
            && epoch != self.peer_epoch
            && epoch_of_run(epoch, self.peer_epoch);
        epoch == 0 || older_session || self.retired.contains(&epoch)
    }

    /// Everything of the old peer goes, counted; the next frame of the peer's new
    /// epoch is taken from sequence 0.
    fn peer_restarted(&mut self) -> u64 {
        let lost = self.discard_outgoing() + self.discard_received();
        self.stats.peer_restarts += 1;
        if self.peer_epoch != 0 {
            self.retired.rotate_right(1);
            self.retired[0] = self.peer_epoch;
        }
        self.peer_epoch = 0;
        self.rcv_nxt = 0;
        self.ts_recent = 0;
        self.nak_sent_for = None;
        self.out_of_order_since_nak = 0;
        self.state = State::Connecting;
        self.events.push_back(Event::PeerRestarted { lost });
        lost
    }

    /// The layer above learned that the peer restarted (its INFO came with a new boot
    /// epoch), maybe before any frame of the new run reached this session: what the
    /// old session held is dropped and counted (`tlps_lost`, and in the returned
    /// count and [`Event::PeerRestarted`]), the peer's old epoch is refused from now
    /// on, and we start over under `local_epoch` (a new one, so that a peer that did
    /// not restart resynchronises too). A session that is `Down` comes back up.
    pub fn peer_restart(&mut self, local_epoch: u32) -> u64 {
        let lost = self.peer_restarted();
        self.local_epoch = local_epoch.max(1);
        self.acked_sent();
        self.nak_now = false;
        lost
    }

    /// Drops the TLPs received and not taken; returns their count.
    fn discard_received(&mut self) -> u64 {
        let lost = self.delivered.len() as u64;
        self.stats.tlps_lost += lost;
        self.delivered.clear();
        self.discard_held();
        self.window_was_low = false;
        lost
    }

    /// Drops everything queued or in flight and restarts numbering; returns the TLP count.
    fn discard_outgoing(&mut self) -> u64 {
        let lost = self.outstanding_tlps() as u64;
        self.stats.tlps_lost += lost;
        self.pending.clear();
        self.unacked.clear();
        self.snd_una = 0;
        self.snd_nxt = 0;
        self.next_seq = 0;
        self.rto_deadline = None;
        self.backoffs = 0;
        self.timeout_undo = None;
        self.last_go_back = None;
        self.skip = None;
        self.frames_since_probe = 0;
        self.peer_window = self.cfg.window;
        lost
    }

    /// `waited`: how long, at most, the round trip was spent waiting for either end to
    /// look at its receive queue.
    fn on_ack(&mut self, now: Micros, ack: u32, tsecr: u32, waited: u64) {
        if !seq::lt(self.snd_una, ack) || seq::lt(self.next_seq, ack) {
            return; // Nothing new, or acknowledging what was never sent.
        }
        let mut acked_bytes = 0;
        // The newest frame acknowledged, and whether any of them was resent.
        let mut newest = None;
        let mut resent = false;
        while let Some(f) = self.unacked.front() {
            if !seq::lt(f.seq, ack) {
                break;
            }
            acked_bytes += f.payload.len();
            newest = Some(f.sent_at);
            resent |= f.resent;
            if let Some(f) = self.unacked.pop_front() {
                self.recycle(f.payload);
            }
        }
        self.snd_una = ack;
        if let Some(undo) = self.timeout_undo.take() {
            if Self::spurious(&undo, tsecr) {
                // Every expiry of the series (the timer backs off while the peer is
                // silent).
                self.stats.spurious_timeouts += self.backoffs as u64;
                self.rate.undo_to(undo.rate);
                self.rtt.on_spurious_timeout(now, undo.rto);
            }
        }
        self.rtt.relax_floor(now);
        if seq::lt(self.snd_nxt, ack) {
            self.snd_nxt = ack;
        }
        self.skip_held();
        self.progress_at = now;
        self.probed = false;
        self.backoffs = 0;
        // Karn: an acknowledgement that covers a retransmission gives no sample. The
        // receiver may have held the newer frames until the retransmission of an
        // older one arrived, so not even the newest frame's sample is clean then: its
        // time since it was sent may be the whole retransmission timeout, and the
        // timeout would grow on itself.
        if let Some(sent_at) = newest.filter(|_| !resent) {
            self.rtt.sample(now.saturating_sub(sent_at).max(1) as u32);
        }
        if tsecr != 0 {
            // The network's round trip: the echo's time at the peer is already taken
            // out; so is the time the frames may have waited for either end to look
            // at all (at most), which leaves a sample that may be low but never shows
            // a queue that the network did not have.
            let raw = (now as u32).wrapping_sub(tsecr);
            let waited = waited.min(u32::MAX as u64) as u32;
            if (raw as i32) >= 0 {
                let rtt = raw.saturating_sub(waited).max(1);
                // Such a lower bound is no measure of the base.
                let base = match self.net_min {
                    Some(m) if waited == 0 => m.min(rtt),
                    Some(m) => m,
                    None => rtt,
                };
                self.net_min = Some(base);
                let srtt = self.rtt.srtt().unwrap_or(rtt);
                self.rate
                    .on_rtt(now, rtt, base, srtt, acked_bytes + wire::HEADER_LEN);
            }
        }
        self.rto_deadline = (!self.unacked.is_empty()).then(|| now.saturating_add(self.rtt.rto()));
    }

    /// Whether the first acknowledgement after a timeout shows that nothing was lost
    /// (Eifel's detection, RFC 3522): it echoes the timestamp of a frame sent before
    /// the timeout (the receiver echoes the frame that completed its in-order run, and
    /// a lost frame's successors are not in order until its retransmission arrives).
    /// That it covers frames not resent yet proves nothing: the receiver may have held
    /// them while it waited for the retransmission of the lost one.
    fn spurious(undo: &TimeoutUndo, tsecr: u32) -> bool {
        tsecr != 0 && ((undo.at as u32).wrapping_sub(tsecr) as i32) > 0
    }

    /// A NAK for `expected`; `gap_end`: the first frame after it that the receiver
    /// holds, if the NAK says (`flags::GAP_END`).
    fn on_nak(&mut self, now: Micros, expected: u32, gap_end: Option<u32>) {
        if !self.cfg.nak || !seq::lt(expected, self.next_seq) || seq::lt(expected, self.snd_una) {
            return;
        }
        let srtt = self.rtt.srtt().unwrap_or(0) as u64;
        if let Some((s, at)) = self.last_go_back {
            if s == expected && now < at.saturating_add(srtt.max(1)) {
                return; // Already going back for this gap.
            }
        }
        // Only a frame after the gap that was sent can be held, and no further than a
        // reorder buffer reaches; anything else is a confused or hostile peer, and its
        // NAK is a plain go-back.
        let gap_end = gap_end.and_then(|end| {
            let ahead = seq::diff(end, expected);
            let held =
                ahead > 0 && ahead as u32 <= MAX_REORDER_FRAMES && seq::lt(end, self.next_seq);
            if !held {
                self.stats.nak_hints_refused += 1;
            }
            held.then_some(end)
        });
        // Where the sender is: the frame it would send next, or, if it is resending an
        // earlier gap, the one it goes on with after that.
        let at = self.skip.map_or(self.snd_nxt, |(_, resume)| resume);
        self.go_back(now, expected);
        if let Some(end) = gap_end {
            // Resend the gap only, then go on from where we were (or from its end, if
            // this pass had not got that far).
            self.stats.nak_hints += 1;
            self.skip = Some((end, if seq::lt(at, end) { end } else { at }));
        }
    }

    /// Plain Go-Back-N: the next frame sent is `to`, and everything after it follows
    /// in order.
    fn go_back(&mut self, now: Micros, to: u32) {
        self.stats.go_backs += 1;
        self.snd_nxt = to;
        self.skip = None;
        self.last_go_back = Some((to, now));
    }

    /// When a sender that the window holds back, with nothing to resend, sends its
    /// oldest frame once more (NAKs on): two smoothed RTTs after the latest frame left
    /// or the latest progress, whichever is later, once per progress. A NAK, the
    /// retransmission of a gap or an acknowledgement may have been lost, and no more
    /// frames go that would make the receiver send another; the oldest frame either
    /// fills the gap or, a copy, is acknowledged at once. Before any RTT sample, never
    /// before the retransmission timeout.
    fn probe_deadline(&self) -> Option<Micros> {
        let blocked = !self.pending.is_empty()
            && (seq::diff(self.next_seq, self.snd_una) as u32) >= self.send_window();
        if !self.cfg.nak
            || self.probed
            || self.unacked.is_empty()
            || seq::lt(self.snd_nxt, self.next_seq)
            || !blocked
        {
            return None;
        }
        let srtt = self.rtt.srtt().map_or(self.rtt.rto(), |s| s as u64);
        Some(
            self.last_sent_at
                .max(self.progress_at)
                .saturating_add(2 * srtt.max(1)),
        )
    }

    /// Once `snd_nxt` has reached the end of the gap a NAK named, it jumps past the
    /// frames the receiver holds, to where the sender was before it went back.
    fn skip_held(&mut self) {
        if let Some((end, resume)) = self.skip {
            if !seq::lt(self.snd_nxt, end) {
                if seq::lt(self.snd_nxt, resume) {
                    self.snd_nxt = resume;
                }
                self.skip = None;
            }
        }
    }

    fn on_data(
        &mut self,
        now: Micros,
        since: Micros,
        h: &TetherHeader,
        payload: &[u8],
    ) -> Result<(), Refused> {
        if h.has_flag(flags::PROBE) {
            self.ack_now = true;
        }
        let ahead = seq::diff(h.seq, self.rcv_nxt);
        if ahead < 0 {
            self.stats.drop_duplicate += 1;
            self.ack_now = true;
            self.late_original(now, h);
            return Err(Refused::Duplicate);
        }
        if ahead > 0 {
            return self.out_of_order(now, h, payload, ahead as u32);
        }
        let count = self.validate(payload)?;
        if self.delivered.len() + count > self.cfg.recv_queue {
            self.stats.drop_no_room += 1;
            self.window_was_low = true;
            self.ack_now = true;
            return Err(Refused::NoRoom);
        }
        // Held frames give way to the one in order: they are not acknowledged, and the
        // sender resends them after this one anyway.
        while !self.held.is_empty()
            && self.delivered.len() + self.held_tlps + count > self.cfg.recv_queue
        {
            self.evict_farthest();
        }
        self.take_records(payload, count);
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.ts_recent = h.tsval;
        self.ts_recent_at = now;
        self.ts_recent_wait = now.saturating_sub(since);
        let nak_waiting = self.nak_deadline.take().is_some();
        self.nak_sent_for = None;
        self.unacked_rx += 1;
        if let Some(gap) = self.gap.take() {
            self.gap_filled(now, h, gap, nak_waiting);
            self.ack_now = true;
        }
        // The frames held behind it follow, and the acknowledgement jumps: the sender,
        // if it went back, skips what it need not resend.
        self.deliver_held(now);
        if self.queue_window() < self.cfg.window / 4 {
            self.window_was_low = true;
        }
        if self.unacked_rx >= self.cfg.ack_every {
            self.ack_now = true;
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now.saturating_add(self.cfg.ack_delay_us));
        }
        Ok(())
    }

    /// The number of TLPs in `payload` if its records are all well formed TLPs.
    fn validate(&mut self, payload: &[u8]) -> Result<usize, Refused> {
        let mut count = 0usize;
        for r in Records::new(payload) {
            match r {
                Ok(r) if r.kind == RecordType::Tlp && !r.body.is_empty() => count += 1,
                _ => {
                    self.stats.drop_malformed += 1;
                    return Err(Refused::Malformed);
                }
            }
        }
        Ok(count)
    }

    /// Queues the `count` TLPs of validated records for `recv`.
    fn take_records(&mut self, payload: &[u8], count: usize) {
        for r in Records::new(payload).flatten() {
            let mut b = self.take_buffer();
            b.extend_from_slice(r.body);
            self.delivered.push_back(b);
        }
        self.stats.tlps_in += count as u64;
    }

    /// A frame `ahead` (> 0) sequence numbers after the one expected: held if the
    /// reorder buffer reaches it and the receive queue has room for its TLPs, dropped
    /// otherwise. Either way the gap in front of it is NAKed, at once or when the
    /// reordering wait runs out (a frame within reach with malformed records is
    /// refused and changes nothing else).
    fn out_of_order(
        &mut self,
        now: Micros,
        h: &TetherHeader,
        payload: &[u8],
        ahead: u32,
    ) -> Result<(), Refused> {
        let reach = ahead <= self.cfg.reorder_frames && payload.len() <= self.cfg.max_payload();
        let slot = (ahead - 1) as usize;
        let taken = if !reach {
            self.stats.drop_out_of_order += 1;
            Err(Refused::OutOfOrder)
        } else if self.held.get(slot).is_some_and(Option::is_some) {
            self.stats.drop_held_duplicate += 1;
            Err(Refused::Duplicate)
        } else {
            let count = self.validate(payload)?;
            if self.delivered.len() + self.held_tlps + count > self.cfg.recv_queue {
                self.stats.drop_reorder_full += 1;
                Err(Refused::NoRoom)
            } else {
                self.hold(slot, h.tsval, payload, count);
                Ok(())
            }
        };
        if self.gap.is_none() {
            self.gap = Some(Gap {
                since: now,
                first_tsval: h.tsval,
            });
        }
        self.out_of_order_since_nak += 1;
        if !self.cfg.nak {
            return taken;
        }
        let nak_now = if self.nak_sent_for == Some(self.rcv_nxt) {
            // Again if the gap stays open: the NAK or the retransmission may have been
            // lost too.
            self.out_of_order_since_nak >= self.cfg.renak_after
        } else {
            // A frame dropped must be resent anyway: no reason to wait then.
            let dropped = matches!(taken, Err(Refused::OutOfOrder | Refused::NoRoom));
            dropped || self.reorder_wait == 0
        };
        if nak_now {
            self.send_nak();
        } else if self.nak_sent_for != Some(self.rcv_nxt) && self.nak_deadline.is_none() {
            self.nak_deadline = Some(now.saturating_add(self.reorder_wait));
        }
        taken
    }

    /// NAKs the gap at `rcv_nxt` with the next frame sent.
    fn send_nak(&mut self) {
        self.nak_now = true;
        self.nak_sent_for = Some(self.rcv_nxt);
        self.out_of_order_since_nak = 0;
        self.nak_deadline = None;
    }

    /// The first frame after the gap at `rcv_nxt` that we hold, if any: a NAK tells
    /// it, so that the sender resends only the gap.
    fn gap_end(&self) -> Option<u32> {
        let i = self.held.iter().position(Option::is_some)?;
        Some(self.rcv_nxt.wrapping_add(1).wrapping_add(i as u32))
    }

    /// Keeps a copy of a validated out-of-order frame in `held[slot]`.
    fn hold(&mut self, slot: usize, tsval: u32, payload: &[u8], tlps: usize) {
        let mut b = self.take_buffer();
        b.extend_from_slice(payload);
        if self.held.len() <= slot {
            self.held.resize_with(slot + 1, || None);
        }
        self.held[slot] = Some(Held {
            payload: b,
            tlps,
            tsval,
        });
        self.held_tlps += tlps;
        self.stats.reorder_held += 1;
    }

    /// Drops the held frame farthest ahead.
    fn evict_farthest(&mut self) {
        if let Some(Some(f)) = self.held.pop_back() {
            self.held_tlps -= f.tlps;
            self.stats.reorder_evicted += 1;
            self.recycle(f.payload);
        }
        while matches!(self.held.back(), Some(None)) {
            self.held.pop_back();
        }
    }

    /// Delivers the held frames that are now in order; if frames stay held behind
    /// another gap, that gap opens now.
    fn deliver_held(&mut self, now: Micros) {
        while let Some(slot) = self.held.pop_front() {
            let Some(f) = slot else {
                break;
            };
            self.held_tlps -= f.tlps;
            self.take_records(&f.payload, f.tlps);
            self.recycle(f.payload);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.unacked_rx += 1;
            self.stats.reorder_delivered += 1;
        }
        if let Some(Some(f)) = self.held.iter().find(|f| f.is_some()) {
            self.gap = Some(Gap {
                since: now,
                first_tsval: f.tsval,
            });
            self.nak_deadline = None;
            if self.cfg.nak {
                if self.reorder_wait == 0 {
                    self.send_nak();
                } else {
                    self.nak_deadline = Some(now.saturating_add(self.reorder_wait));
                }
            }
        }
    }

    /// Drops the held frames (the peer or this session restarted).
    fn discard_held(&mut self) {
        while let Some(slot) = self.held.pop_front() {
            if let Some(f) = slot {
                self.recycle(f.payload);
            }
        }
        self.held_tlps = 0;
        self.gap = None;
        self.filled = [None; FILLED_KEPT];
        self.nak_deadline = None;
    }

    /// The frame `h` filled `gap`: learn from it whether the gap was reordering.
    /// `nak_waiting`: its NAK was held back, not sent yet.
    fn gap_filled(&mut self, now: Micros, h: &TetherHeader, gap: Gap, nak_waiting: bool) {
        if tsval_le(h.tsval, gap.first_tsval) {
            // Sent before the frames that overtook it: reordered, not lost.
            if nak_waiting {
                self.stats.naks_avoided += 1;
            }
            self.reordered(now.saturating_sub(gap.since));
        } else {
            // A retransmission: a loss, or a NAK that came too soon (then its original
            // still arrives, `late_original`). Either way, wait a little less.
            self.filled.rotate_right(1);
            self.filled[0] = Some(Filled { seq: h.seq, gap });
            self.reorder_wait -= self.reorder_wait / 8;
        }
    }

    /// A duplicate of a frame already taken: the original of a retransmission that
    /// filled a gap shows the gap was reordering.
    fn late_original(&mut self, now: Micros, h: &TetherHeader) {
        for slot in &mut self.filled {
            if let Some(f) = *slot {
                if f.seq == h.seq && tsval_le(h.tsval, f.gap.first_tsval) {
                    *slot = None;
                    let extent = now.saturating_sub(f.gap.since);
                    self.reordered(extent);
                    return;
                }
            }
        }
    }

    /// The path reordered a frame by `extent` µs: NAK gaps only after that long.
    fn reordered(&mut self, extent: u64) {
        let wait = extent.saturating_add(extent / 4).saturating_add(1);
        self.reorder_wait = self
            .reorder_wait
            .max(wait)
            .min(self.cfg.reorder_wait_max_us);
    }

    /// Frames in flight allowed now: our window and the peer's advertised one, with one
    /// frame always allowed as a window probe.
    fn send_window(&self) -> u32 {
        self.cfg.window.min(self.peer_window).max(1)
    }

    fn can_send_data(&self, now: Micros) -> bool {
        if self.state == State::Down || now < self.rate.next_send_at() {
            return false;
        }
        if seq::lt(self.snd_nxt, self.next_seq) {
            return true; // Retransmission after a go-back or timeout.
        }
        !self.pending.is_empty()
            && (seq::diff(self.next_seq, self.snd_una) as u32) < self.send_window()
    }

    fn base_header(&self, kind: FrameKind, now: Micros) -> TetherHeader {
        let known = self.peer_epoch != 0;
        TetherHeader {
            kind,
            flags: if known { flags::ACK } else { 0 }
                | if self.state == State::Connecting {
                    flags::SYN
                } else {
                    0
                },
            epoch: self.local_epoch,
            peer_epoch: self.peer_epoch,
            seq: 0,
            ack: self.rcv_nxt,
            tsval: (now as u32).max(1),
            tsecr: self.echo(now),
            window: self.advertised_window() as u16,
            echo_wait: if self.ts_recent == 0 {
                0
            } else {
                wire::echo_wait_units(self.ts_recent_wait)
            },
        }
    }

    /// The peer's latest tsval plus the time it waited here (for our acks, pacing or
    /// scheduling), so that the peer's RTT sample is the network's round trip and not
    /// ours (as Swift separates fabric from endpoint delay). Our own load reaches the
    /// peer through the advertised window instead. 0 = nothing to echo.
    fn echo(&self, now: Micros) -> u32 {
        if self.ts_recent == 0 {
            return 0;
        }
        let held = now.saturating_sub(self.ts_recent_at) as u32;
        self.ts_recent.wrapping_add(held).max(1)
    }

    fn acked_sent(&mut self) {
        self.ack_now = false;
        self.ack_deadline = None;
        self.unacked_rx = 0;
    }

    /// The next frame to send now, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Micros) -> Option<Transmit<'_>> {
        if self.state == State::Down {
            return None;
        }
        if self.nak_now {
            self.nak_now = false;
            self.stats.naks_out += 1;
            return Some(self.control(now, FrameKind::Nak));
        }
        if self.can_send_data(now) {
            return Some(self.data_frame(now));
        }
        let ack_due = self.ack_now || self.ack_deadline.is_some_and(|d| now >= d);
        if ack_due && (self.peer_epoch != 0 || self.ack_now) {
            self.stats.acks_out += 1;
            return Some(self.control(now, FrameKind::Ack));
        }
        None
    }

    fn control(&mut self, now: Micros, kind: FrameKind) -> Transmit<'_> {
        let mut header = self.base_header(kind, now);
        if kind == FrameKind::Nak {
            if let Some(end) = self.gap_end() {
                header.flags |= flags::GAP_END;
                header.seq = end;
            }
        }
        self.acked_sent();
        self.stats.frames_out += 1;
        self.stats.bytes_out += wire::HEADER_LEN as u64;
        Transmit {
            header,
            payload: &[],
        }
    }

    fn data_frame(&mut self, now: Micros) -> Transmit<'_> {
        let retransmit = seq::lt(self.snd_nxt, self.next_seq);
        if !retransmit {
            self.build_frame();
        }
        let idx = seq::diff(self.snd_nxt, self.snd_una) as usize;
        let seq_no = self.snd_nxt;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.skip_held();
        let mut header = self.base_header(FrameKind::Data, now);
        header.seq = seq_no;
        self.frames_since_probe += 1;
        let startup = self.stats.data_frames_out < self.cfg.startup_probes as u64;
        if startup || (self.cfg.probe_every > 0 && self.frames_since_probe >= self.cfg.probe_every)
        {
            header.flags |= flags::PROBE;
            self.frames_since_probe = 0;
        }
        self.acked_sent();
        let frame = &mut self.unacked[idx];
        if retransmit {
            frame.resent = true;
        } else {
            frame.sent_at = now;
        }
        let bytes = wire::HEADER_LEN + frame.payload.len();
        self.stats.frames_out += 1;
        self.stats.data_frames_out += 1;
        self.stats.bytes_out += bytes as u64;
        if retransmit {
            self.stats.retransmits += 1;
        } else {
            self.stats.tlps_out += frame.tlps as u64;
        }
        self.rate.on_send(now, bytes + 18);
        self.last_sent_at = now;
        // The timer runs from the oldest frame's latest transmission: a retransmission
        // that waited for the pacer must not time out before it has even left.
        if self.rto_deadline.is_none() || (retransmit && seq_no == self.snd_una) {
            self.rto_deadline = Some(now.saturating_add(self.rtt.rto_backed_off(self.backoffs)));
        }
        Transmit {
            header,
            payload: &self.unacked[idx].payload,
        }
    }

    /// Packs pending TLPs into a new frame at the back of `unacked`.
    fn build_frame(&mut self) {
        let max = self.cfg.max_payload();
        let mut payload = self.take_buffer();
        // Once, if it was a TLP's: spare buffers grow to a frame's payload and stay so.
        payload.reserve(max);
        let mut tlps = 0u32;
        while let Some(t) = self.pending.front() {
            if tlps as usize >= self.cfg.max_tlps_per_frame
                || payload.len() + RECORD_HEADER_LEN + t.len() > max
            {
                break;
            }
            let t = self.pending.pop_front().expect("front exists");
            payload.extend_from_slice(&(t.len() as u16).to_be_bytes());
            payload.push(RecordType::Tlp as u8);
            payload.push(0);
            payload.extend_from_slice(&t);
            self.recycle(t);
            tlps += 1;
        }
        self.unacked.push_back(SentFrame {
            seq: self.next_seq,
            payload,
            tlps,
            sent_at: 0,
            resent: false,
        });
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// When `handle_timeout` (or `poll_transmit`) next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Micros> {
        if self.state == State::Down {
            return None;
        }
        let mut t: Option<Micros> = None;
        let mut consider = |x: Option<Micros>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.rto_deadline);
        consider(self.ack_deadline);
        consider(self.nak_deadline);
        consider(self.probe_deadline());
        let data_waiting = seq::lt(self.snd_nxt, self.next_seq)
            || (!self.pending.is_empty()
                && (seq::diff(self.next_seq, self.snd_una) as u32) < self.send_window());
        if data_waiting {
            consider(Some(self.rate.next_send_at()));
        }
        t
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Micros) {
        if self.state == State::Down {
            return;
        }
        if self.ack_deadline.is_some_and(|d| now >= d) {
            self.ack_now = true;
        }
        if self.nak_deadline.is_some_and(|d| now >= d) {
            // The gap outlasted the reordering this path has shown: a loss.
            self.send_nak();
        }
        if self.probe_deadline().is_some_and(|d| now >= d) {
            // The oldest frame alone, then on with new frames when the window opens.
            self.probed = true;
            self.stats.window_probes += 1;
            self.skip = Some((self.snd_una.wrapping_add(1), self.next_seq));
            self.snd_nxt = self.snd_una;
        }
        if let Some(d) = self.rto_deadline {
            if now >= d {
                if self.unacked.is_empty() {
                    self.rto_deadline = None;
                    return;
                }
                self.stats.timeouts += 1;
                if self.backoffs == 0 {
                    self.timeout_undo = Some(TimeoutUndo {
                        at: now,
                        rate: self.rate.rate(),
                        rto: self.rtt.rto(),
                    });
                }
                self.backoffs += 1;
                if self.backoffs > self.cfg.retry_limit {
                    let lost = self.discard_outgoing();
                    self.state = State::Down;
                    self.events.push_back(Event::Down { lost });
                    return;
                }
                if self.backoffs > 1 {
                    self.rate.on_timeout(now);
                }
                // The retransmission leaves at once, whatever the pacer had planned.
                self.rate.resume_now(now);
                let to = self.snd_una;
                self.go_back(now, to);
                self.rto_deadline =
                    Some(now.saturating_add(self.rtt.rto_backed_off(self.backoffs)));
            }
        }
    }

    /// Starts over after `Down`, with a new local epoch. What was still held is
    /// counted in `tlps_lost`.
    pub fn restart(&mut self, local_epoch: u32) {
        self.discard_outgoing();
        self.discard_received();
        self.local_epoch = local_epoch;
        self.peer_epoch = 0;
        self.state = State::Connecting;
        self.rcv_nxt = 0;
        self.ts_recent = 0;
        self.nak_sent_for = None;
        self.acked_sent();
        self.nak_now = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_are_bounded_cleared_and_reused() {
        let mut s = Session::new(Config::default(), 1).unwrap();
        // At most SPARE_BUFFERS are kept; one far larger than a frame is not.
        for _ in 0..SPARE_BUFFERS + 10 {
            s.recycle(vec![0xee; 100]);
        }
        assert_eq!(s.spare.len(), SPARE_BUFFERS);
        while !s.spare.is_empty() {
            s.spare.take();
        }
        s.recycle(Vec::with_capacity(4 * s.cfg.mtu));
        assert!(s.spare.is_empty());
        // A kept buffer comes back empty, with its room, for the next TLP sent.
        let mut b = Vec::with_capacity(512);
        b.extend_from_slice(b"stale bytes");
        let at = b.as_ptr();
        s.recycle(b);
        s.send(b"tlp").unwrap();
        let queued = s.pending.back().unwrap();
        assert_eq!(queued.as_slice(), b"tlp");
        assert_eq!(queued.as_ptr(), at);
    }
}
