//! One efe `Session` driven by arbitrary bytes: a fuzz-chosen configuration, then a
//! sequence of steps (clock advances, timeouts, polls, sends, receives, restarts) and
//! hostile DATA/ACK/NAK (and INFO/CTRL) headers with arbitrary epochs, sequence
//! numbers, acks, timestamps, windows and payloads. The field values are picked either
//! raw or relative to what the session has shown (its epochs, the sequence numbers it
//! sent, its last timestamp), so that the fuzzer gets past the epoch and sequence
//! checks as well as into them.
//!
//! The clock follows the session's documented contract: `now` never goes backwards,
//! from any origin (the first value is fuzz-chosen, up to `u64::MAX`), and a frame's
//! `since` is at most `now`.
//!
//! Checked after every step: no panic; the counters never decrease; what `recv`
//! returns is exactly the TLPs of the DATA frames the session accepted, in sequence
//! order 0, 1, 2, ... within one peer epoch, once each: a frame accepted out of order
//! is held (within `reorder_frames` of the next one expected, no larger than a frame's
//! payload, never a copy of one held) until the frames before it are in, and dropped
//! again only to make room for a frame in order, farthest first, as the session counts
//! it; the TLPs received and held never exceed `recv_queue`; each DATA frame
//! the session sends carries the TLPs given to `send` in order, and a retransmission
//! carries the same TLPs as the first transmission; every frame sent acknowledges
//! exactly the frames taken and advertises no more room than is left, and a NAK names
//! the first frame held after its gap (`GAP_END`) exactly when one is held (the NAKs
//! it takes carry gap ends around the frames it sent, honest or not); the TLPs queued
//! or in flight stay within the send queue and the window; a session with TLPs
//! outstanding always has a timer.
#![no_main]

use std::collections::{BTreeMap, VecDeque};

use efe::seq;

use efe::{Config, Event, Refused, Session, State, Stats};
use libfuzzer_sys::fuzz_target;
use tether_fuzz::{assert_counters_grew, Input};
use wire::records::RecordType;
use wire::{flags, FrameKind, Records, TetherHeader};

fn config(i: &mut Input) -> Config {
    let mut c = Config {
        // Up to past the largest payload a header can declare (64 KiB).
        mtu: 128 + i.u16() as usize + if i.u8() & 1 == 0 { 0 } else { 1 << 16 },
        max_tlps_per_frame: 1 + i.u8() as usize % 8,
        window: 1 + i.u8() as u32 % 16,
        recv_queue: 1 + i.u8() as usize % 64,
        send_queue: 1 + i.u8() as usize % 64,
        ack_every: 1 + i.u8() as u32 % 8,
        ack_delay_us: i.u8() as u64 * 4,
        retry_limit: i.u8() as u32 % 8,
        renak_after: 1 + i.u8() as u32 % 8,
        startup_probes: i.u8() as u32 % 8,
        probe_every: i.u8() as u32 % 8,
        ..Config::default()
    };
    // Read last, so that the seeds written before the reorder buffer keep the rest.
    c.reorder_frames = i.u8() as u32 % 24;
    c.reorder_wait_max_us = i.u8() as u64 * 4;
    c.nak = i.u8() & 1 == 0;
    c.rto_min_us = 1 + i.u16() as u64;
    c.rto_initial_us = c.rto_min_us + i.u16() as u64;
    c.rto_max_us = c.rto_initial_us + i.u16() as u64 * 16;
    c
}

/// The counters that only grow.
fn counters(s: &Stats) -> [u64; 31] {
    [
        s.frames_out,
        s.bytes_out,
        s.data_frames_out,
        s.retransmits,
        s.acks_out,
        s.naks_out,
        s.frames_in,
        s.bytes_in,
        s.tlps_in,
        s.tlps_out,
        s.naks_in,
        s.timeouts,
        s.spurious_timeouts,
        s.go_backs,
        s.nak_hints,
        s.nak_hints_refused,
        s.window_probes,
        s.peer_restarts,
        s.drop_duplicate,
        s.drop_out_of_order,
        s.drop_no_room,
        s.drop_stale_epoch,
        s.drop_malformed,
        s.drop_down,
        s.drop_reorder_full,
        s.drop_held_duplicate,
        s.reorder_held,
        s.reorder_delivered,
        s.reorder_evicted,
        s.naks_avoided,
        s.tlps_lost,
    ]
}

/// Records of TLPs as a DATA payload.
fn records(tlps: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Vec::new();
    for t in tlps {
        p.extend_from_slice(&(t.len() as u16).to_be_bytes());
        p.push(RecordType::Tlp as u8);
        p.push(0);
        p.extend_from_slice(t);
    }
    p
}

/// What the harness expects of the session.
struct Model {
    cfg: Config,
    // Receiving.
    peer_epoch: u32,
    rcv_nxt: u32,
    /// TLPs accepted and not yet returned by `recv`, in order.
    delivered: VecDeque<Vec<u8>>,
    /// Frames accepted out of order, by sequence number: their TLPs.
    held: BTreeMap<u32, Vec<Vec<u8>>>,
    /// Held frames dropped again to make room (the session's `reorder_evicted`).
    evicted: u64,
    // Sending.
    /// TLPs given to `send` that no DATA frame carried yet.
    unsent: VecDeque<Vec<u8>>,
    /// Payload of each DATA frame sent (the last `window` sequence numbers).
    frames: BTreeMap<u32, Vec<u8>>,
    /// Sequence number of the next new DATA frame.
    next_seq: u32,
    /// The session's latest tsval.
    last_tsval: u32,
}

impl Model {
    /// The session dropped everything outgoing (peer restart, down, restart).
    fn discard_outgoing(&mut self) {
        self.unsent.clear();
        self.frames.clear();
        self.next_seq = 0;
    }

    /// After any call that may take a frame: follow the session's view of the peer.
    fn follow_peer(&mut self, s: &Session) {
        if s.peer_epoch() != self.peer_epoch {
            if self.peer_epoch != 0 {
                // A restart of the peer: what it sent before is gone.
                self.delivered.clear();
            }
            self.held.clear();
            self.peer_epoch = s.peer_epoch();
            self.rcv_nxt = 0;
        }
    }

    fn held_tlps(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    /// The session took the DATA frame `seq` with these TLPs.
    fn accepted(&mut self, seq: u32, tlps: Vec<Vec<u8>>) {
        let ahead = seq::diff(seq, self.rcv_nxt);
        assert!(ahead >= 0, "accepted frame {seq} behind {}", self.rcv_nxt);
        let room = self.cfg.recv_queue;
        if ahead > 0 {
            // Held: within reach, not held already, room for it beside the rest.
            assert!(
                ahead as u32 <= self.cfg.reorder_frames,
                "held {seq} beyond reach"
            );
            assert!(!self.held.contains_key(&seq), "held {seq} twice");
            assert!(self.delivered.len() + self.held_tlps() + tlps.len() <= room);
            self.held.insert(seq, tlps);
            return;
        }
        // In order: held frames give way, farthest first, until its TLPs fit.
        while self.delivered.len() + self.held_tlps() + tlps.len() > room {
            let farthest = *self
                .held
                .keys()
                .max_by_key(|&&k| seq::diff(k, self.rcv_nxt))
                .expect("a frame in order is refused, not taken, when it cannot fit");
            self.held.remove(&farthest);
            self.evicted += 1;
        }
        self.delivered.extend(tlps);
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        while let Some(next) = self.held.remove(&self.rcv_nxt) {
            self.delivered.extend(next);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
    }

    fn events(&mut self, s: &mut Session) {
        while let Some(e) = s.poll_event() {
            match e {
                Event::Up => assert_eq!(s.state(), State::Up),
                Event::PeerRestarted { .. } => self.discard_outgoing(),
                Event::Down { .. } => {
                    assert_eq!(s.state(), State::Down);
                    self.discard_outgoing();
                }
            }
        }
    }

    /// A frame the session sent.
    fn transmitted(&mut self, h: &TetherHeader, payload: &[u8], local_epoch: u32) {
        assert_eq!(h.epoch, local_epoch);
        self.last_tsval = h.tsval;
        // What it tells the peer of its receiving side: the peer epoch it follows, and
        // once it has one, the next frame it takes and the room it has.
        assert_eq!(h.peer_epoch, self.peer_epoch);
        assert_eq!(h.has_flag(flags::ACK), self.peer_epoch != 0);
        if self.peer_epoch != 0 {
            assert_eq!(h.ack, self.rcv_nxt, "acknowledges what it took");
        }
        assert!(h.window as u32 <= self.cfg.window);
        let room = self.cfg.recv_queue - self.delivered.len();
        assert!(h.window as usize * self.cfg.max_tlps_per_frame <= room);
        match h.kind {
            FrameKind::Data => {}
            FrameKind::Nak => {
                assert!(payload.is_empty());
                // The gap's end: the first frame held after it, if any is.
                let first_held = self
                    .held
                    .keys()
                    .copied()
                    .min_by_key(|&k| seq::diff(k, self.rcv_nxt));
                assert_eq!(h.has_flag(flags::GAP_END), first_held.is_some());
                assert_eq!(h.seq, first_held.unwrap_or(0));
                return;
            }
            FrameKind::Ack => {
                assert!(payload.is_empty());
                assert!(!h.has_flag(flags::GAP_END));
                assert_eq!(h.seq, 0);
                return;
            }
            k => panic!("a session sent {k:?}"),
        }
        if h.seq == self.next_seq {
            // A new frame: the next TLPs given to `send`, in order.
            let mut n = 0;
            for r in Records::new(payload) {
                let r = r.expect("a sent frame parses");
                assert_eq!(r.kind, RecordType::Tlp);
                let want = self.unsent.pop_front().expect("a TLP that was sent");
                assert_eq!(r.body, &want[..]);
                n += 1;
            }
            assert!(n >= 1 && n <= self.cfg.max_tlps_per_frame);
            assert!(payload.len() <= self.cfg.max_payload());
            self.frames.insert(h.seq, payload.to_vec());
            self.next_seq = self.next_seq.wrapping_add(1);
            let (next, window) = (self.next_seq, self.cfg.window);
            self.frames.retain(|&s, _| next.wrapping_sub(s) <= window);
        } else {
            // A retransmission: within the window, the same TLPs.
            let behind = self.next_seq.wrapping_sub(h.seq);
            assert!(
                behind >= 1 && behind <= self.cfg.window,
                "seq {} sent with next new {}",
                h.seq,
                self.next_seq
            );
            assert_eq!(self.frames.get(&h.seq).map(|p| &p[..]), Some(payload));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let cfg = config(&mut i);
    let Ok(mut s) = Session::new(cfg, i.u32().max(1)) else {
        return;
    };
    let mut now = i.u64();
    let mut m = Model {
        cfg,
        peer_epoch: 0,
        rcv_nxt: 0,
        delivered: VecDeque::new(),
        held: BTreeMap::new(),
        evicted: 0,
        unsent: VecDeque::new(),
        frames: BTreeMap::new(),
        next_seq: 0,
        last_tsval: 0,
    };
    let mut before = counters(&s.stats());
    let mut steps = 0;
    while !i.done() && steps < 2000 {
        steps += 1;
        match i.u8() % 12 {
            0 => {
                now = i.advance(now, s.poll_timeout());
            }
            1 => s.handle_timeout(now),
            2 => {
                for _ in 0..(1 + i.u8() % 64) {
                    let local = s.local_epoch();
                    let Some(t) = s.poll_transmit(now) else { break };
                    let (h, p) = (t.header, t.payload.to_vec());
                    m.transmitted(&h, &p, local);
                }
            }
            3 => {
                let len = i.u16() as usize % (cfg.max_tlp_len() + 2);
                let tlp = i.bytes(len).to_vec();
                if s.send(&tlp).is_ok() {
                    m.unsent.push_back(tlp);
                }
            }
            4 => {
                for _ in 0..(1 + i.u8() % 64) {
                    let got = s.recv();
                    assert_eq!(got, m.delivered.pop_front());
                    if got.is_none() {
                        break;
                    }
                }
            }
            5 => {
                // The layer above starts over: after `Down`, or when it learned that
                // the peer restarted (`peer_restart`, at any time).
                let learned = i.u8() & 1 == 0;
                if s.state() == State::Down || learned {
                    let epoch = s.local_epoch().wrapping_add(1 + i.u8() as u32).max(1);
                    if learned {
                        s.peer_restart(epoch);
                        assert_ne!(s.state(), State::Down);
                    } else {
                        s.restart(epoch);
                    }
                    m.discard_outgoing();
                    m.delivered.clear();
                    m.held.clear();
                    m.peer_epoch = 0;
                    m.rcv_nxt = 0;
                }
            }
            _ => {
                // A frame from the peer, or from someone pretending to be it.
                let kind = match i.u8() % 8 {
                    0..=2 => FrameKind::Data,
                    3 | 4 => FrameKind::Ack,
                    5 => FrameKind::Nak,
                    6 => FrameKind::Info,
                    _ => FrameKind::Ctrl,
                };
                let sel = i.u16();
                let epoch = match sel & 7 {
                    0..=2 => m.peer_epoch.max(1),
                    3 => m.peer_epoch.wrapping_add(1 + i.u8() as u32),
                    4 => m.peer_epoch.wrapping_sub(1 + i.u8() as u32),
                    5 => m.peer_epoch.wrapping_add(i.u32()),
                    _ => i.u32(),
                };
                let peer_epoch = match (sel >> 3) & 3 {
                    0 | 1 => s.local_epoch(),
                    2 => 0,
                    _ => i.u32(),
                };
                let seq = match (sel >> 5) & 3 {
                    // A NAK's gap end (GAP_END among the random flags): around the
                    // frames the session sent.
                    0 | 1 if kind == FrameKind::Nak => m
                        .next_seq
                        .wrapping_sub(i.u8() as u32 % (cfg.window + 2))
                        .wrapping_add(i.u8() as u32 % 3),
                    0 => m.rcv_nxt,
                    // Around the reorder buffer's reach.
                    1 => m
                        .rcv_nxt
                        .wrapping_add(i.u8() as u32 % (cfg.reorder_frames + 3)),
                    2 => m.rcv_nxt.wrapping_add(i.u8() as u32).wrapping_sub(128),
                    _ => i.u32(),
                };
                let ack = match (sel >> 7) & 3 {
                    0 | 1 => m.next_seq.wrapping_sub(i.u8() as u32 % 4),
                    2 => m.next_seq.wrapping_add(i.u8() as u32).wrapping_sub(128),
                    _ => i.u32(),
                };
                let tsecr = match (sel >> 9) & 3 {
                    0 | 1 => m.last_tsval.wrapping_sub(i.u8() as u32),
                    2 => 0,
                    _ => i.u32(),
                };
                let h = TetherHeader {
                    kind,
                    flags: i.u8() & !flags::AUTH,
                    epoch,
                    peer_epoch,
                    seq,
                    ack,
                    tsval: if (sel >> 11) & 1 == 0 {
                        now as u32
                    } else {
                        i.u32()
                    },
                    tsecr,
                    window: if (sel >> 12) & 1 == 0 {
                        i.u8() as u16
                    } else {
                        i.u16()
                    },
                    echo_wait: i.u8(),
                };
                let payload = if (sel >> 13) & 1 == 0 || kind != FrameKind::Data {
                    // Well-formed records (an empty one is malformed).
                    let n = i.u8() as usize % (cfg.max_tlps_per_frame + 2);
                    let tlps: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            let len = i.u8() as usize;
                            i.bytes(len).to_vec()
                        })
                        .collect();
                    if kind == FrameKind::Data {
                        records(&tlps)
                    } else {
                        Vec::new()
                    }
                } else {
                    let len = i.u16() as usize % 2048;
                    i.bytes(len).to_vec()
                };
                let since = now.saturating_sub(if (sel >> 14) & 1 == 0 {
                    0
                } else {
                    i.u16() as u64
                });
                let r = s.handle_frame_since(now, since, &h, &payload);
                m.follow_peer(&s);
                if r == Err(Refused::Duplicate) && seq::diff(h.seq, m.rcv_nxt) > 0 {
                    assert!(m.held.contains_key(&h.seq), "a copy of what is not held");
                }
                if r.is_ok() && kind == FrameKind::Data {
                    if h.seq != m.rcv_nxt {
                        assert!(payload.len() <= cfg.max_payload(), "held an oversize frame");
                    }
                    let tlps = Records::new(&payload)
                        .map(|r| r.expect("accepted records parse").body.to_vec())
                        .collect();
                    m.accepted(h.seq, tlps);
                }
            }
        }
        m.events(&mut s);
        // Invariants.
        assert_counters_grew(&mut before, counters(&s.stats()));
        assert!(m.delivered.len() + m.held_tlps() <= cfg.recv_queue);
        assert_eq!(s.held_frames(), m.held.len());
        assert_eq!(s.stats().reorder_evicted, m.evicted);
        assert!(s.send_room() <= cfg.send_queue);
        let outstanding = s.outstanding_tlps();
        assert!(outstanding >= m.unsent.len());
        assert!(outstanding <= cfg.send_queue + cfg.window as usize * cfg.max_tlps_per_frame);
        if s.state() == State::Down {
            assert_eq!(outstanding, 0);
            assert_eq!(s.poll_timeout(), None);
        } else if outstanding > 0 {
            assert!(s.poll_timeout().is_some(), "TLPs outstanding and no timer");
        }
    }
});
