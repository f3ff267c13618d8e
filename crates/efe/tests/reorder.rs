//! The receive-side reorder buffer: frames that arrive ahead of a gap are held and
//! delivered in order once it fills, exactly once; the buffer's reach and the receive
//! queue bound what it holds, whatever a peer sends; the NAK waits as long as the path
//! has been seen to reorder; and the Go-Back-N sender skips what an acknowledgement
//! shows the receiver already has.

use efe::sim::{LinkConfig, Rng, Sim};
use efe::{Config, Refused, Session};
use wire::{FrameKind, TetherHeader};

mod common;
use common::{ack_with_window, data_with_window, flow_pair, receiver, started_sender, LOCAL, PEER};

/// A DATA frame of the peer with sequence number `seq`, sent at `tsval` (its clock).
fn data(seq: u32, tsval: u32) -> TetherHeader {
    data_with_window(seq, tsval, 64)
}

/// The records of `n` TLPs whose 4 bytes name frame `seq` and the TLP's index in it.
fn records(seq: u32, n: u8) -> Vec<u8> {
    let mut p = Vec::new();
    for k in 0..n {
        p.extend_from_slice(&[0, 4, 1, 0]);
        p.extend_from_slice(&seq.to_be_bytes()[1..]);
        p.push(k);
    }
    p
}

/// What `records(seq, n)` delivers.
fn tlps(seq: u32, n: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let mut t = seq.to_be_bytes()[1..].to_vec();
            t.push(k);
            t
        })
        .collect()
}

fn drain(s: &mut Session) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| s.recv()).collect()
}

/// The control frames the session sends now, as (kind, ack).
fn controls(s: &mut Session, now: u64) -> Vec<(FrameKind, u32)> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit(now) {
        out.push((t.header.kind, t.header.ack));
    }
    out
}

#[test]
fn frames_ahead_of_a_gap_are_held_and_delivered_in_order_once_it_fills() {
    let mut s = receiver(Config::default());
    s.handle_frame(1, &data(0, 1), &records(0, 2)).unwrap();
    assert_eq!(drain(&mut s), tlps(0, 2));
    // 1 is late: 2 and 3 overtake it and are held, not delivered.
    s.handle_frame(2, &data(2, 3), &records(2, 1)).unwrap();
    s.handle_frame(3, &data(3, 4), &records(3, 3)).unwrap();
    assert_eq!(s.held_frames(), 2);
    assert_eq!(s.recv(), None);
    // The path has not shown any reordering yet: the gap is NAKed at once, and
    // nothing acknowledges the held frames.
    let sent = controls(&mut s, 3);
    assert!(sent.contains(&(FrameKind::Nak, 1)), "{sent:?}");
    assert!(sent.iter().all(|&(_, ack)| ack == 1), "{sent:?}");
    // 1 arrives: 1, 2, 3 are delivered in order, and the acknowledgement jumps to 4.
    s.handle_frame(4, &data(1, 2), &records(1, 1)).unwrap();
    let mut want = tlps(1, 1);
    want.extend(tlps(2, 1));
    want.extend(tlps(3, 3));
    assert_eq!(drain(&mut s), want);
    assert_eq!(s.held_frames(), 0);
    assert_eq!(controls(&mut s, 4), vec![(FrameKind::Ack, 4)]);
    // The copies the sender resent after the NAK are duplicates now.
    for seq in 1..4 {
        assert_eq!(
            s.handle_frame(5, &data(seq, 6), &records(seq, 1)),
            Err(Refused::Duplicate)
        );
    }
    assert_eq!(s.recv(), None);
    let st = s.stats();
    assert_eq!((st.reorder_held, st.reorder_delivered), (2, 2));
    assert_eq!(st.tlps_in, 2 + 1 + 1 + 3);
    assert_eq!(st.drop_duplicate, 3);
    assert_eq!(st.drop_out_of_order, 0);
}

#[test]
fn copies_of_held_frames_are_counted_and_dropped() {
    let mut s = receiver(Config::default());
    s.handle_frame(1, &data(0, 1), &records(0, 1)).unwrap();
    s.handle_frame(2, &data(2, 3), &records(2, 1)).unwrap();
    for _ in 0..3 {
        assert_eq!(
            s.handle_frame(3, &data(2, 3), &records(2, 1)),
            Err(Refused::Duplicate)
        );
    }
    assert_eq!(s.stats().drop_held_duplicate, 3);
    assert_eq!(s.held_frames(), 1);
    s.handle_frame(4, &data(1, 2), &records(1, 1)).unwrap();
    let mut want = tlps(0, 1);
    want.extend(tlps(1, 1));
    want.extend(tlps(2, 1));
    assert_eq!(drain(&mut s), want);
}

#[test]
fn a_shuffled_duplicated_stream_is_delivered_in_order_exactly_once() {
    for seed in 0..50 {
        let mut rng = Rng::new(seed);
        let cfg = Config {
            reorder_frames: 1 + rng.below(32) as u32,
            recv_queue: 4096,
            ..Config::default()
        };
        let reach = cfg.reorder_frames as u64;
        // Each frame is displaced by up to a little over the buffer's reach, some are
        // sent twice.
        let n = 300u32;
        let mut order: Vec<(u64, u32)> = (0..n)
            .map(|i| (i as u64 * 2 + rng.below(2 * reach + 3), i))
            .collect();
        order.sort();
        let mut arrivals: Vec<u32> = order.iter().map(|o| o.1).collect();
        for _ in 0..30 {
            let at = rng.below(arrivals.len() as u64) as usize;
            let copy = arrivals[rng.below(arrivals.len() as u64) as usize];
            arrivals.insert(at, copy);
        }
        let mut s = receiver(cfg);
        let mut got = Vec::new();
        for (t, &seq) in arrivals.iter().enumerate() {
            // tsval: each frame sent at twice its number (the order it left in).
            let _ = s.handle_frame(t as u64, &data(seq, 1 + 2 * seq), &records(seq, 2));
            assert!(s.held_frames() <= cfg.reorder_frames as usize);
            got.extend(drain(&mut s));
            while s.poll_transmit(t as u64).is_some() {}
        }
        // Whatever was dropped out of reach comes again, as the sender would resend it.
        let mut t = arrivals.len() as u64;
        while got.len() < 2 * n as usize {
            let next = (got.len() / 2) as u32;
            t += 1;
            s.handle_frame(t, &data(next, 1_000_000), &records(next, 2))
                .unwrap();
            got.extend(drain(&mut s));
        }
        let want: Vec<Vec<u8>> = (0..n).flat_map(|i| tlps(i, 2)).collect();
        assert_eq!(got, want, "seed {seed}");
        let st = s.stats();
        assert!(st.reorder_held > 0, "seed {seed}: {st:?}");
        assert_eq!(
            st.reorder_held,
            st.reorder_delivered + st.reorder_evicted,
            "seed {seed}"
        );
        assert_eq!(st.tlps_in, 2 * n as u64);
    }
}

#[test]
fn the_buffer_reaches_reorder_frames_ahead_and_no_further() {
    let cfg = Config {
        reorder_frames: 4,
        ..Config::default()
    };
    let mut s = receiver(cfg);
    // Frames 1..=4 are within reach of the gap at 0; 5 and beyond are not.
    for seq in [4, 1, 3] {
        s.handle_frame(1, &data(seq, 2), &records(seq, 1)).unwrap();
    }
    assert_eq!(
        s.handle_frame(1, &data(5, 2), &records(5, 1)),
        Err(Refused::OutOfOrder)
    );
    assert_eq!(s.held_frames(), 3);
    assert_eq!(s.stats().drop_out_of_order, 1);
    // Once 0 and 2 are in, the reach moves on with the next expected frame.
    s.handle_frame(2, &data(0, 1), &records(0, 1)).unwrap();
    assert_eq!(s.held_frames(), 2);
    s.handle_frame(3, &data(2, 1), &records(2, 1)).unwrap();
    assert_eq!(s.held_frames(), 0);
    assert_eq!(drain(&mut s).len(), 5);
    s.handle_frame(4, &data(9, 3), &records(9, 1)).unwrap();
    assert_eq!(s.held_frames(), 1);
    // 0 disables it: plain Go-Back-N.
    let mut s = receiver(Config {
        reorder_frames: 0,
        ..Config::default()
    });
    assert_eq!(
        s.handle_frame(1, &data(1, 2), &records(1, 1)),
        Err(Refused::OutOfOrder)
    );
    assert_eq!(s.held_frames(), 0);
    assert_eq!(controls(&mut s, 1), vec![(FrameKind::Nak, 0)]);
    // A reach beyond MAX_REORDER_FRAMES is refused.
    assert!(Session::new(
        Config {
            reorder_frames: efe::MAX_REORDER_FRAMES + 1,
            ..Config::default()
        },
        LOCAL
    )
    .is_err());
}

#[test]
fn held_tlps_count_against_the_receive_queue_and_give_way_to_the_frame_in_order() {
    let cfg = Config {
        recv_queue: 8,
        max_tlps_per_frame: 4,
        ..Config::default()
    };
    let mut s = receiver(cfg);
    s.handle_frame(1, &data(1, 2), &records(1, 4)).unwrap();
    s.handle_frame(1, &data(2, 3), &records(2, 4)).unwrap();
    // The queue's room is taken by the held frames: a third is refused and counted.
    assert_eq!(
        s.handle_frame(1, &data(3, 4), &records(3, 1)),
        Err(Refused::NoRoom)
    );
    assert_eq!(s.stats().drop_reorder_full, 1);
    // 0 must still get in: the farthest held frame makes room for it.
    s.handle_frame(2, &data(0, 1), &records(0, 4)).unwrap();
    let st = s.stats();
    assert_eq!((st.reorder_evicted, st.reorder_delivered), (1, 1));
    assert_eq!(s.received(), 8);
    let mut want = tlps(0, 4);
    want.extend(tlps(1, 4));
    assert_eq!(drain(&mut s), want);
    // The evicted frame is taken when it comes again.
    s.handle_frame(3, &data(2, 5), &records(2, 4)).unwrap();
    assert_eq!(drain(&mut s), tlps(2, 4));
    // With the queue full, frames out of order and in order alike are refused.
    s.handle_frame(4, &data(3, 6), &records(3, 4)).unwrap();
    s.handle_frame(4, &data(4, 6), &records(4, 4)).unwrap();
    assert_eq!(s.received(), 8);
    assert_eq!(
        s.handle_frame(4, &data(6, 6), &records(6, 1)),
        Err(Refused::NoRoom)
    );
    assert_eq!(
        s.handle_frame(4, &data(5, 6), &records(5, 1)),
        Err(Refused::NoRoom)
    );
    let st = s.stats();
    assert_eq!((st.drop_reorder_full, st.drop_no_room), (2, 1));
    assert_eq!(s.held_frames(), 0);
}

#[test]
fn a_hostile_peer_cannot_grow_the_buffer_or_break_the_session() {
    let cfg = Config {
        reorder_frames: 16,
        recv_queue: 64,
        max_tlps_per_frame: 4,
        ..Config::default()
    };
    let max_payload = cfg.max_payload();
    let mut s = receiver(cfg);
    let mut rng = Rng::new(77);
    let mut next = 0u32;
    for t in 0..100_000u64 {
        // Sequence numbers at the window's edges, around the reach, far ahead and
        // behind, and across the wrap; payloads well formed, malformed, or oversize.
        let seq = match rng.below(8) {
            0 => next,
            1 => next.wrapping_add(cfg.reorder_frames),
            2 => next.wrapping_add(cfg.reorder_frames + 1),
            3 => next.wrapping_add(1 << 31),
            4 => next.wrapping_add((1 << 31) - 1),
            5 => next.wrapping_sub(1),
            6 => rng.next_u64() as u32,
            _ => next.wrapping_add(1 + rng.below(64) as u32),
        };
        let payload = match rng.below(4) {
            0 => vec![0, 9, 1, 0, 1],
            1 => {
                let mut p = records(seq, 1);
                p.resize(max_payload + 1 + rng.below(100) as usize, 0);
                p
            }
            _ => records(seq, 1 + rng.below(6) as u8),
        };
        let tsval = rng.next_u64() as u32;
        if s.handle_frame(t, &data(seq, tsval), &payload).is_ok() && seq == next {
            next = next.wrapping_add(1);
        }
        assert!(s.held_frames() <= cfg.reorder_frames as usize);
        assert!(s.received() <= cfg.recv_queue);
        if s.poll_timeout().is_some_and(|d| d <= t) {
            s.handle_timeout(t);
        }
        while s.poll_transmit(t).is_some() {}
        if rng.below(4) == 0 {
            drain(&mut s);
        }
    }
    let st = s.stats();
    assert!(st.reorder_held > 0 && st.drop_out_of_order > 0 && st.drop_malformed > 0);
}

/// A receiver that has taken frames 0..=`upto` in order.
fn after(cfg: Config, upto: u32) -> Session {
    let mut s = receiver(cfg);
    for seq in 0..=upto {
        s.handle_frame(seq as u64, &data(seq, 1 + seq), &records(seq, 1))
            .unwrap();
    }
    drain(&mut s);
    while s.poll_transmit(upto as u64).is_some() {}
    s
}

#[test]
fn once_the_path_has_reordered_the_nak_waits_for_the_late_frame() {
    let mut s = after(Config::default(), 0);
    // Frame 1 (sent at 2) is overtaken by 2 (sent at 3) and comes 20 µs later: the
    // NAK went out at once, but the gap filled with the frame sent first.
    s.handle_frame(100, &data(2, 3), &records(2, 1)).unwrap();
    assert_eq!(controls(&mut s, 100), vec![(FrameKind::Nak, 1)]);
    s.handle_frame(120, &data(1, 2), &records(1, 1)).unwrap();
    assert_eq!(drain(&mut s).len(), 2);
    controls(&mut s, 120);
    // The next reordering costs no NAK: it is held back, and the late frame comes
    // before the wait (a little over 20 µs) runs out.
    s.handle_frame(200, &data(4, 5), &records(4, 1)).unwrap();
    assert!(controls(&mut s, 200).is_empty());
    let wait = s.poll_timeout().expect("the NAK's deadline") - 200;
    assert!(wait > 20, "wait {wait}");
    s.handle_timeout(215);
    assert!(controls(&mut s, 215).is_empty());
    s.handle_frame(218, &data(3, 4), &records(3, 1)).unwrap();
    assert_eq!(drain(&mut s).len(), 2);
    assert_eq!(controls(&mut s, 218), vec![(FrameKind::Ack, 5)]);
    assert_eq!(s.stats().naks_avoided, 1);
    // A gap that outlasts the wait is NAKed when it runs out: a loss.
    s.handle_frame(300, &data(6, 7), &records(6, 1)).unwrap();
    assert!(controls(&mut s, 300).is_empty());
    let due = s.poll_timeout().unwrap();
    assert_eq!(due - 300, wait);
    s.handle_timeout(due);
    assert_eq!(controls(&mut s, due), vec![(FrameKind::Nak, 5)]);
    assert_eq!(s.stats().naks_out, 2);
}

#[test]
fn a_late_original_after_its_retransmission_teaches_the_wait_too() {
    let mut s = after(Config::default(), 0);
    s.handle_frame(100, &data(2, 3), &records(2, 1)).unwrap();
    assert_eq!(controls(&mut s, 100), vec![(FrameKind::Nak, 1)]);
    // The retransmission (sent at 110) fills the gap before the original (sent at 2).
    s.handle_frame(115, &data(1, 110), &records(1, 1)).unwrap();
    controls(&mut s, 115);
    // A retransmission alone teaches nothing: the next gap is NAKed at once.
    s.handle_frame(130, &data(4, 120), &records(4, 1)).unwrap();
    assert_eq!(controls(&mut s, 130), vec![(FrameKind::Nak, 3)]);
    s.handle_frame(131, &data(3, 125), &records(3, 1)).unwrap();
    controls(&mut s, 131);
    // ...but the original of 1, arriving now, shows that the path reorders.
    assert_eq!(
        s.handle_frame(140, &data(1, 2), &records(1, 1)),
        Err(Refused::Duplicate)
    );
    controls(&mut s, 140);
    s.handle_frame(150, &data(6, 130), &records(6, 1)).unwrap();
    assert!(controls(&mut s, 150).is_empty(), "the NAK waits");
    assert!(s.poll_timeout().is_some());
}

#[test]
fn the_wait_is_bounded_by_reorder_wait_max_us() {
    let cfg = Config {
        reorder_wait_max_us: 50,
        ..Config::default()
    };
    let mut s = after(cfg, 0);
    // A frame 10 ms late.
    s.handle_frame(100, &data(2, 3), &records(2, 1)).unwrap();
    s.handle_frame(10_100, &data(1, 2), &records(1, 1)).unwrap();
    controls(&mut s, 10_100);
    s.handle_frame(20_000, &data(4, 5), &records(4, 1)).unwrap();
    assert!(controls(&mut s, 20_000).is_empty());
    assert_eq!(s.poll_timeout(), Some(20_050));
}

#[test]
fn a_restart_drops_what_is_held() {
    let mut s = after(Config::default(), 0);
    s.handle_frame(10, &data(2, 3), &records(2, 1)).unwrap();
    s.handle_frame(10, &data(3, 3), &records(3, 1)).unwrap();
    assert_eq!(s.held_frames(), 2);
    // A new epoch of the peer: the held frames belonged to its old session.
    let mut h = data(0, 20);
    h.epoch = PEER + 1_000_000;
    h.peer_epoch = 0;
    s.handle_frame(20, &h, &records(0, 1)).unwrap();
    assert_eq!(s.held_frames(), 0);
    assert_eq!(drain(&mut s), tlps(0, 1));
    // Its frame 1 is not followed by the old session's frames 2 and 3.
    h.seq = 1;
    s.handle_frame(21, &h, &records(1, 1)).unwrap();
    assert_eq!(drain(&mut s), tlps(1, 1));
}

/// The peer's acknowledgement of everything before `ack`, echoing `tsecr`.
fn ack(ack: u32, tsecr: u32) -> TetherHeader {
    ack_with_window(ack, tsecr, 64)
}

/// A sender with frames 0..10 in flight, one TLP each, started up by the peer, and
/// the time the last one left.
fn sender() -> (Session, u64) {
    let cfg = Config {
        max_tlps_per_frame: 1,
        startup_probes: 0,
        probe_every: 0,
        ..Config::default()
    };
    started_sender(cfg, 10, 64)
}

#[test]
fn an_ack_beyond_the_go_back_skips_what_the_receiver_already_has() {
    let (mut s, now) = sender();
    // A NAK for 2: the sender goes back to it.
    let mut nak = ack(2, 0);
    nak.kind = FrameKind::Nak;
    s.handle_frame(now, &nak, &[]).unwrap();
    let mut now = now;
    let t = loop {
        match s.poll_transmit(now) {
            Some(t) => break t,
            None => now = s.poll_timeout().unwrap().max(now + 1),
        }
    };
    assert_eq!(t.header.seq, 2);
    // The receiver held 3..10: the retransmission of 2 makes it acknowledge all ten.
    let tsval = t.header.tsval;
    s.handle_frame(now + 10, &ack(10, tsval), &[]).unwrap();
    assert!(
        s.poll_transmit(now + 1_000).is_none(),
        "nothing left to resend"
    );
    let st = s.stats();
    assert_eq!((st.retransmits, st.go_backs), (1, 1));
    assert_eq!(s.outstanding_tlps(), 0);
    // New TLPs continue at 10.
    s.send(&[10; 8]).unwrap();
    assert_eq!(s.poll_transmit(now + 1_000).unwrap().header.seq, 10);
}

#[test]
fn an_ack_beyond_the_retransmission_after_a_real_timeout_is_not_spurious() {
    // Frame 0 is lost; the receiver holds 1..10. The timeout resends 0, and the
    // acknowledgement of all ten echoes the retransmission: the timeout was real,
    // although the acknowledgement covers frames that were not resent.
    let (mut s, _) = sender();
    let due = s.poll_timeout().unwrap();
    s.handle_timeout(due);
    let t = s.poll_transmit(due).expect("the retransmission");
    assert_eq!(t.header.seq, 0);
    let tsval = t.header.tsval;
    s.handle_frame(due + 10, &ack(10, tsval), &[]).unwrap();
    let st = s.stats();
    assert_eq!((st.timeouts, st.spurious_timeouts), (1, 0));
    // The same acknowledgement echoing an original (sent before the timeout) is.
    let (mut s, _) = sender();
    let due = s.poll_timeout().unwrap();
    s.handle_timeout(due);
    while s.poll_transmit(due).is_some() {}
    s.handle_frame(due + 10, &ack(10, 1), &[]).unwrap();
    assert_eq!(s.stats().spurious_timeouts, 1);
}

/// A sender and receiver over links that reorder `reorder` of the frames by 20 µs.
fn reordering_pair(reorder: f64, loss: f64, nak: bool) -> Sim {
    let link = LinkConfig {
        reorder,
        reorder_us: 20,
        loss,
        ..LinkConfig::default()
    };
    let cfg = Config {
        nak,
        retry_limit: 30,
        ..Config::default()
    };
    flow_pair(link, cfg, 21)
}

#[test]
fn a_reordering_path_costs_few_go_backs() {
    let mut sim = reordering_pair(0.05, 0.0, true);
    assert!(sim.run(10_000_000));
    let f = &sim.flows[0];
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    let reordered = sim.links[0].stats.reordered;
    let (tx, rx) = (sim.nodes[0].session.stats(), sim.nodes[1].session.stats());
    eprintln!(
        "{reordered} frames reordered: {} held, {} NAKs ({} avoided), {} go-backs, {} retransmits",
        rx.reorder_held, rx.naks_out, rx.naks_avoided, tx.go_backs, tx.retransmits
    );
    assert!(rx.reorder_held > 0 && rx.reorder_delivered == rx.reorder_held);
    // Without the buffer each reordered frame costs a NAK and a go-back; with it,
    // only the first few do, before the wait has learned the path.
    assert!(rx.naks_out * 10 < reordered, "{rx:?}");
    assert!(tx.go_backs * 10 < reordered, "{tx:?}");
}

#[test]
fn held_frames_do_not_inflate_the_retransmission_timeout() {
    // No NAKs, 5% loss: every loss is recovered by a timeout, after which the
    // receiver acknowledges the frames it held. Those frames' round trips include the
    // timeout; taken as samples they grew the timeout on itself, to its 100 ms cap.
    let mut sim = reordering_pair(0.0, 0.05, false);
    assert!(sim.run(10_000_000), "{:?}", sim.nodes[0].session.stats());
    assert!(sim.flows[0].errors.is_empty());
    let s = sim.nodes[0].session.stats();
    assert!(s.timeouts > 0);
    assert!(s.srtt_us < 1_000, "srtt {} us: {s:?}", s.srtt_us);
}
