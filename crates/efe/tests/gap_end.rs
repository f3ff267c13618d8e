//! NAKs that tell where their gap ends (`wire::flags::GAP_END`): the receiver names the
//! first frame after the gap that it holds, and the Go-Back-N sender resends the gap
//! alone and goes on where it was; a gap end that no honest receiver could send is
//! refused and the NAK is a plain go-back; a lie within the window costs time, never
//! data. Also the window a receiver with a gap advertises (no further than its reorder
//! buffer reaches), and the probe of a sender that the window holds back.

use efe::sim::{LinkConfig, Sim};
use efe::{Config, Refused, Session, MAX_REORDER_FRAMES};
use wire::{flags, FrameKind, TetherHeader};

mod common;
use common::{ack_with_window, data_with_window, flow_pair, receiver, started_sender, LOCAL};

/// A DATA frame of the peer with sequence number `seq`, sent at `tsval` (its clock).
fn data(seq: u32, tsval: u32) -> TetherHeader {
    data_with_window(seq, tsval, 128)
}

/// One TLP of 4 bytes naming frame `seq`.
fn records(seq: u32) -> Vec<u8> {
    let mut p = vec![0, 4, 1, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// The peer's acknowledgement of everything before `ack`, echoing `tsecr`.
fn ack(ack: u32, tsecr: u32) -> TetherHeader {
    ack_with_window(ack, tsecr, 128)
}

/// The peer's NAK for `expected`, with the gap's end if `end` is given.
fn nak(expected: u32, end: Option<u32>) -> TetherHeader {
    let mut h = ack(expected, 0);
    h.kind = FrameKind::Nak;
    if let Some(end) = end {
        h.flags |= flags::GAP_END;
        h.seq = end;
    }
    h
}

/// The frames the session sends now: (kind, flags, seq, ack, window).
fn sent(s: &mut Session, now: u64) -> Vec<(FrameKind, u8, u32, u32, u16)> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit(now) {
        let h = t.header;
        out.push((h.kind, h.flags, h.seq, h.ack, h.window));
    }
    out
}

/// The NAKs among them: (ack, gap end if flagged, seq field as sent).
fn naks(s: &mut Session, now: u64) -> Vec<(u32, Option<u32>, u32)> {
    sent(s, now)
        .into_iter()
        .filter(|f| f.0 == FrameKind::Nak)
        .map(|(_, fl, seq, ack, _)| (ack, (fl & flags::GAP_END != 0).then_some(seq), seq))
        .collect()
}

fn sender_cfg() -> Config {
    Config {
        max_tlps_per_frame: 1,
        startup_probes: 0,
        probe_every: 0,
        ..Config::default()
    }
}

/// A sender with frames 0..n in flight, one TLP each, started up by the peer, and the
/// time the last one left.
fn sender_with(cfg: Config, n: u8) -> (Session, u64) {
    started_sender(cfg, n, 128)
}

fn sender() -> (Session, u64) {
    sender_with(sender_cfg(), 10)
}

/// The sequence numbers of the DATA frames sent from `now` until the session has
/// nothing more to send before `until`, pacing included (and the time after).
fn data_until(s: &mut Session, mut now: u64, until: u64) -> (Vec<u32>, u64) {
    let mut seqs = Vec::new();
    loop {
        match s.poll_transmit(now) {
            Some(t) if t.header.kind == FrameKind::Data => seqs.push(t.header.seq),
            Some(_) => {}
            None => match s.poll_timeout() {
                Some(d) if d < until => {
                    now = d.max(now + 1);
                    s.handle_timeout(now);
                }
                _ => return (seqs, now),
            },
        }
    }
}

#[test]
fn a_nak_names_the_first_frame_held_after_the_gap() {
    let mut s = receiver(Config::default());
    s.handle_frame(1, &data(0, 1), &records(0)).unwrap();
    sent(&mut s, 1);
    // 1 and 2 are lost; 3 and 5 arrive and are held.
    s.handle_frame(2, &data(3, 4), &records(3)).unwrap();
    s.handle_frame(3, &data(5, 6), &records(5)).unwrap();
    assert_eq!(naks(&mut s, 3), vec![(1, Some(3), 3)]);
    // 1 arrives: the gap at 2 opens, and its NAK ends at 3 again.
    s.handle_frame(4, &data(1, 7), &records(1)).unwrap();
    assert_eq!(naks(&mut s, 4), vec![(2, Some(3), 3)]);
    // 2 arrives: 2 and 3 are delivered; the gap at 4 ends at 5.
    s.handle_frame(5, &data(2, 8), &records(2)).unwrap();
    assert_eq!(naks(&mut s, 5), vec![(4, Some(5), 5)]);
    s.handle_frame(6, &data(4, 9), &records(4)).unwrap();
    assert_eq!(s.held_frames(), 0);
    assert_eq!(std::iter::from_fn(|| s.recv()).count(), 6);
}

#[test]
fn a_nak_with_nothing_held_has_no_gap_end() {
    // The frame after the gap fell beyond the buffer's reach and was dropped.
    let mut s = receiver(Config {
        reorder_frames: 4,
        ..Config::default()
    });
    s.handle_frame(1, &data(0, 1), &records(0)).unwrap();
    sent(&mut s, 1);
    assert_eq!(
        s.handle_frame(2, &data(9, 2), &records(9)),
        Err(Refused::OutOfOrder)
    );
    assert_eq!(naks(&mut s, 2), vec![(1, None, 0)]);
    // No reorder buffer: plain Go-Back-N, never a gap end.
    let mut s = receiver(Config {
        reorder_frames: 0,
        ..Config::default()
    });
    s.handle_frame(1, &data(0, 1), &records(0)).unwrap();
    sent(&mut s, 1);
    assert_eq!(
        s.handle_frame(2, &data(2, 2), &records(2)),
        Err(Refused::OutOfOrder)
    );
    assert_eq!(naks(&mut s, 2), vec![(1, None, 0)]);
}

#[test]
fn with_a_gap_open_the_window_reaches_no_further_than_the_buffer() {
    let cfg = Config {
        reorder_frames: 8,
        ..Config::default()
    };
    let mut s = receiver(cfg);
    s.handle_frame(1, &data(0, 1), &records(0)).unwrap();
    let before = sent(&mut s, 1);
    assert!(before.iter().all(|f| f.4 == 128), "{before:?}");
    s.handle_frame(2, &data(2, 3), &records(2)).unwrap();
    // Frames 1..=9 can be taken: 9 from the acknowledgement.
    let during = sent(&mut s, 2);
    assert!(
        !during.is_empty() && during.iter().all(|f| f.4 == 9),
        "{during:?}"
    );
    s.handle_frame(3, &data(1, 2), &records(1)).unwrap();
    let after = sent(&mut s, 3);
    assert!(
        !after.is_empty() && after.iter().all(|f| f.4 == 128),
        "{after:?}"
    );
    // Without NAKs no sender is told to go on past a gap: the window stays.
    let mut s = receiver(Config { nak: false, ..cfg });
    s.handle_frame(1, &data(0, 1), &records(0)).unwrap();
    s.handle_frame(2, &data(2, 3), &records(2)).unwrap();
    s.handle_frame(2, &data(3, 3), &records(3)).unwrap();
    s.handle_timeout(1_000);
    let during = sent(&mut s, 1_000);
    assert!(
        !during.is_empty() && during.iter().all(|f| f.4 == 128),
        "{during:?}"
    );
}

#[test]
fn the_sender_resends_only_the_gap_and_goes_on_where_it_was() {
    let (mut s, now) = sender();
    s.handle_frame(now, &nak(2, Some(5)), &[]).unwrap();
    let (resent, now) = data_until(&mut s, now, now + 100);
    assert_eq!(resent, [2, 3, 4]);
    let st = s.stats();
    assert_eq!((st.retransmits, st.go_backs, st.nak_hints), (3, 1, 1));
    // The retransmission of 4 filled the gap: the acknowledgement jumps to 10.
    s.handle_frame(now, &ack(10, 1), &[]).unwrap();
    assert_eq!(s.outstanding_tlps(), 0);
    // New TLPs continue at 10.
    s.send(&[10; 8]).unwrap();
    assert_eq!(data_until(&mut s, now, now + 100).0, [10]);
    // The same NAK without its gap end: plain Go-Back-N, everything from 2.
    let (mut s, now) = sender();
    s.handle_frame(now, &nak(2, None), &[]).unwrap();
    assert_eq!(
        data_until(&mut s, now, now + 100).0,
        [2, 3, 4, 5, 6, 7, 8, 9]
    );
    assert_eq!(s.stats().nak_hints, 0);
}

#[test]
fn a_gap_end_ahead_of_a_go_back_resumes_there() {
    // A plain NAK for 1: the sender resends 1 and 2, then a NAK for 5 that ends at 7
    // arrives (it also acknowledges 0..5). The go-back had not reached 7: the sender
    // resends 5 and 6, and its go-back goes on from 7.
    let (mut s, now) = sender();
    s.handle_frame(now, &nak(1, None), &[]).unwrap();
    let mut now = now;
    let mut first = Vec::new();
    while first.len() < 2 {
        match s.poll_transmit(now) {
            Some(t) => first.push(t.header.seq),
            None => now = s.poll_timeout().unwrap().max(now + 1),
        }
    }
    assert_eq!(first, [1, 2]);
    s.handle_frame(now, &nak(5, Some(7)), &[]).unwrap();
    assert_eq!(data_until(&mut s, now, now + 100).0, [5, 6, 7, 8, 9]);
}

#[test]
fn a_second_gap_end_during_a_gap_resend_keeps_where_the_sender_was() {
    // All ten sent; a NAK for 2 ending at 4, and while 2 is resent a NAK for 3 (2
    // arrived) ending at 6: the sender resends 3, 4, 5 and then has nothing more.
    let (mut s, now) = sender();
    s.handle_frame(now, &nak(2, Some(4)), &[]).unwrap();
    let mut now = now;
    let t = loop {
        match s.poll_transmit(now) {
            Some(t) => break t.header.seq,
            None => now = s.poll_timeout().unwrap().max(now + 1),
        }
    };
    assert_eq!(t, 2);
    s.handle_frame(now, &nak(3, Some(6)), &[]).unwrap();
    assert_eq!(data_until(&mut s, now, now + 100).0, [3, 4, 5]);
    assert_eq!(s.stats().retransmits, 4);
}

#[test]
fn a_gap_end_no_honest_receiver_sends_is_refused_and_the_nak_goes_back() {
    // Frames 0..10 sent; a NAK for 2 with gap ends that cannot be frames held after
    // the gap: the go-back point itself, before it, not sent yet, half the number
    // space away, the largest number, past any reorder buffer. Each is a plain go-back.
    let forged = [
        2,
        1,
        0,
        10,
        11,
        2 + (1 << 31),
        2u32.wrapping_add((1 << 31) + 1),
        u32::MAX,
        2 + MAX_REORDER_FRAMES + 1,
    ];
    for end in forged {
        let (mut s, now) = sender();
        s.handle_frame(now, &nak(2, Some(end)), &[]).unwrap();
        let (resent, _) = data_until(&mut s, now, now + 100);
        assert_eq!(resent, [2, 3, 4, 5, 6, 7, 8, 9], "gap end {end}");
        let st = s.stats();
        assert_eq!(
            (st.nak_hints, st.nak_hints_refused),
            (0, 1),
            "gap end {end}"
        );
    }
    // A gap end on a NAK of another epoch, or on an ACK or DATA frame, is no hint.
    let (mut s, now) = sender();
    let mut stale = nak(2, Some(5));
    stale.peer_epoch = LOCAL + 1;
    let _ = s.handle_frame(now, &stale, &[]);
    let mut a = ack(0, 0);
    a.flags |= flags::GAP_END;
    a.seq = 5;
    s.handle_frame(now, &a, &[]).unwrap();
    assert!(data_until(&mut s, now, now + 100).0.is_empty());
    let st = s.stats();
    assert_eq!((st.nak_hints, st.nak_hints_refused, st.go_backs), (0, 0, 0));
}

#[test]
fn a_lying_gap_end_costs_time_not_data() {
    // The receiver lacks 2..10 but says it holds 8: the sender resends 2..8 only...
    let (mut s, now) = sender();
    s.handle_frame(now, &nak(2, Some(8)), &[]).unwrap();
    let (resent, now) = data_until(&mut s, now, now + 100);
    assert_eq!(resent, [2, 3, 4, 5, 6, 7]);
    // ...and when no acknowledgement comes, the timeout goes back to 2 in plain
    // Go-Back-N: 8 and 9 go again too.
    let due = s.poll_timeout().unwrap();
    assert!(due > now);
    s.handle_timeout(due);
    let (resent, now) = data_until(&mut s, due, due + 100);
    assert_eq!(resent, [2, 3, 4, 5, 6, 7, 8, 9]);
    s.handle_frame(now, &ack(10, now as u32), &[]).unwrap();
    assert_eq!(s.outstanding_tlps(), 0);
}

#[test]
fn an_ack_that_covers_a_gap_resend_gives_no_rtt_sample() {
    let (mut s, now) = sender();
    // A clean sample: 0 and 1 acknowledged 10 µs after the last frame left.
    s.handle_frame(now + 10, &ack(2, 0), &[]).unwrap();
    let srtt = s.stats().srtt_us;
    assert!(srtt > 0);
    s.handle_frame(now + 10, &nak(2, Some(5)), &[]).unwrap();
    let (resent, now) = data_until(&mut s, now + 10, now + 100);
    assert_eq!(resent, [2, 3, 4]);
    // The acknowledgement of all ten, 150 µs later, covers a retransmission (Karn).
    s.handle_frame(now + 150, &ack(10, 0), &[]).unwrap();
    assert_eq!(s.stats().srtt_us, srtt);
    // A new frame's acknowledgement is a sample again.
    let now = now + 150;
    s.send(&[10; 8]).unwrap();
    let (sent_new, now) = data_until(&mut s, now, now + 100);
    assert_eq!(sent_new, [10]);
    s.handle_frame(now + 100, &ack(11, 0), &[]).unwrap();
    assert_ne!(s.stats().srtt_us, srtt);
}

/// A sender with a window of 4 frames and 8 TLPs queued, an RTT sample taken: it sent
/// 0..5 (the acknowledgement of 0 let 4 go), and the window holds the rest back.
fn blocked_sender(nak: bool) -> (Session, u64) {
    let cfg = Config {
        window: 4,
        nak,
        ..sender_cfg()
    };
    let (mut s, now) = sender_with(cfg, 8);
    s.handle_frame(now + 10, &ack(1, 0), &[]).unwrap();
    let (more, now) = data_until(&mut s, now + 10, now + 11);
    assert_eq!(more, [4]);
    (s, now)
}

#[test]
fn a_sender_the_window_holds_back_resends_its_oldest_frame_once() {
    // The NAK for 1 was lost, and no more frames go that could make the receiver send
    // another: two RTTs on, the sender resends 1 alone, once.
    let (mut s, now) = blocked_sender(true);
    let srtt = s.stats().srtt_us as u64;
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, now + 2 * srtt);
    let (resent, now) = data_until(&mut s, now, due + 1);
    assert_eq!(resent, [1]);
    let st = s.stats();
    assert_eq!((st.window_probes, st.retransmits, st.timeouts), (1, 1, 0));
    // It filled the gap: the receiver acknowledges up to 5, and 5..8 go.
    s.handle_frame(now + 10, &ack(5, now as u32), &[]).unwrap();
    let (new, _) = data_until(&mut s, now + 10, now + 20);
    assert_eq!(new, [5, 6, 7]);
    assert_eq!(s.stats().spurious_timeouts, 0);
}

#[test]
fn a_window_probe_does_not_keep_a_silent_peer_up() {
    let (mut s, _) = blocked_sender(true);
    while s.state() != efe::State::Down {
        let now = s
            .poll_timeout()
            .expect("a timer while frames are outstanding");
        s.handle_timeout(now);
        while s.poll_transmit(now).is_some() {}
    }
    let st = s.stats();
    assert_eq!(st.window_probes, 1);
    assert_eq!(st.timeouts, u64::from(s.config().retry_limit) + 1);
}

#[test]
fn without_naks_the_window_holds_the_sender_until_the_timeout() {
    let (mut s, now) = blocked_sender(false);
    let due = s.poll_timeout().unwrap();
    assert!(due > now + 100, "the retransmission timeout, {due}");
    s.handle_timeout(due);
    assert_eq!(s.stats().window_probes, 0);
    assert_eq!(s.stats().timeouts, 1);
}

/// A default-configured pair over links that lose `loss` of the frames each way.
fn lossy_pair(loss: f64, seed: u64) -> Sim {
    let link = LinkConfig {
        bandwidth_bps: 10e9,
        delay_us: 5,
        loss,
        ..LinkConfig::default()
    };
    let cfg = Config {
        retry_limit: 30,
        ..Config::default()
    };
    flow_pair(link, cfg, seed)
}

#[test]
fn on_a_lossy_path_the_sender_resends_about_what_was_lost() {
    for (loss, seed) in [(0.01, 1), (0.01, 2), (0.05, 3)] {
        let mut sim = lossy_pair(loss, seed);
        assert!(sim.run(10_000_000), "{loss} {seed}");
        let f = &sim.flows[0];
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        let lost = sim.links[0].stats.dropped_loss;
        let (tx, rx) = (sim.nodes[0].session.stats(), sim.nodes[1].session.stats());
        eprintln!(
            "loss {loss}: {lost} frames lost, {} resent ({} NAKs with a gap end, {} probes, \
             {} timeouts), {} duplicates received",
            tx.retransmits, tx.nak_hints, tx.window_probes, tx.timeouts, rx.drop_duplicate
        );
        assert!(lost > 0 && tx.nak_hints > 0);
        // Plain Go-Back-N resent about 17 frames per loss here (docs/transport.md);
        // a gap is resent again when a repeated NAK comes more than an RTT after it.
        assert!(tx.retransmits < 3 * lost, "{loss} {seed}: {tx:?}");
        assert!(rx.drop_duplicate < lost, "{loss} {seed}: {rx:?}");
        assert_eq!(tx.nak_hints_refused, 0);
    }
}
