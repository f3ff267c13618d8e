//! Epochs that do not grow: a restarted bridge draws a random epoch, which may be lower
//! than its last one, and what the old session held is counted, not dropped silently.

use efe::{Config, Event, Refused, Session};
use wire::{flags, FrameKind, TetherHeader};

/// One TLP record carrying `body`.
fn record(body: &[u8]) -> Vec<u8> {
    let mut r = (body.len() as u16).to_be_bytes().to_vec();
    r.extend_from_slice(&[1, 0]);
    r.extend_from_slice(body);
    r
}

fn data(epoch: u32, peer_epoch: u32, seq: u32) -> TetherHeader {
    let mut h = TetherHeader::new(FrameKind::Data);
    h.epoch = epoch;
    h.peer_epoch = peer_epoch;
    h.seq = seq;
    h
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn a_peer_restarted_with_a_lower_epoch_is_detected() {
    let mut s = Session::new(Config::default(), 50).unwrap();
    s.handle_frame(1, &data(0x9000_0001, 0, 0), &record(b"old"))
        .unwrap();
    assert_eq!(s.recv().unwrap(), b"old");
    // The restarted peer drew a random epoch below its last one.
    s.handle_frame(2, &data(0x1000_0001, 0, 0), &record(b"new"))
        .unwrap();
    assert_eq!(s.recv().unwrap(), b"new");
    assert_eq!(s.peer_epoch(), 0x1000_0001);
    assert_eq!(s.stats().peer_restarts, 1);
    assert_eq!(events(&mut s), vec![Event::PeerRestarted { lost: 0 }]);
}

#[test]
fn received_tlps_not_taken_are_counted_when_the_peer_restarts() {
    let mut s = Session::new(Config::default(), 50).unwrap();
    let mut two = record(b"a");
    two.extend(record(b"b"));
    s.handle_frame(1, &data(100, 0, 0), &two).unwrap();
    s.send(b"ours").unwrap();
    // Nobody took "a" and "b" before the peer came back with a new epoch.
    s.handle_frame(2, &data(0x7777_0001, 0, 0), &record(b"c"))
        .unwrap();
    assert_eq!(events(&mut s), vec![Event::PeerRestarted { lost: 3 }]);
    assert_eq!(s.stats().tlps_lost, 3);
    assert_eq!(s.recv().unwrap(), b"c");
    assert_eq!(s.recv(), None);
}

#[test]
fn epochs_of_a_peer_before_its_restart_stay_refused() {
    let mut s = Session::new(Config::default(), 50).unwrap();
    s.handle_frame(1, &data(0x9000_0001, 0, 0), &record(b"old"))
        .unwrap();
    s.handle_frame(2, &data(0x1000_0001, 0, 0), &record(b"new"))
        .unwrap();
    // A late frame of the peer's previous run is not a second restart.
    assert_eq!(
        s.handle_frame(3, &data(0x9000_0001, 0, 1), &record(b"late")),
        Err(Refused::StalePeerEpoch)
    );
    // Nor is an older session of its current run (its epochs count up within a run).
    assert_eq!(
        s.handle_frame(4, &data(0x1000_0000, 0, 1), &record(b"older")),
        Err(Refused::StalePeerEpoch)
    );
    assert_eq!(s.stats().peer_restarts, 1);
    assert_eq!(s.peer_epoch(), 0x1000_0001);
    s.recv();
    assert_eq!(s.recv(), None);
}

#[test]
fn a_restart_learned_elsewhere_resets_the_session() {
    let mut s = Session::new(Config::default(), 50).unwrap();
    s.handle_frame(1, &data(0x4000_0001, 0, 0), &record(b"x"))
        .unwrap();
    s.send(b"queued").unwrap();
    // The fabric saw the peer's INFO with a new boot epoch before any of its DATA.
    let lost = s.peer_restart(51);
    assert_eq!(lost, 2, "one TLP not taken, one queued");
    assert_eq!(s.stats().tlps_lost, 2);
    assert_eq!(s.stats().peer_restarts, 1);
    assert_eq!(events(&mut s), vec![Event::PeerRestarted { lost: 2 }]);
    assert_eq!((s.local_epoch(), s.peer_epoch()), (51, 0));
    assert_eq!(s.recv(), None);
    // The old run's frames stay refused; the new run's are taken from sequence 0.
    assert_eq!(
        s.handle_frame(2, &data(0x4000_0001, 50, 1), &record(b"late")),
        Err(Refused::StalePeerEpoch)
    );
    let mut h = data(0x2000_0001, 0, 0);
    h.flags = flags::SYN;
    s.handle_frame(3, &h, &record(b"fresh")).unwrap();
    assert_eq!(s.recv().unwrap(), b"fresh");
    assert_eq!(
        s.stats().peer_restarts,
        1,
        "the first frame is no second restart"
    );
    // What we send now starts at sequence 0 under our new epoch.
    s.send(b"hello").unwrap();
    let t = s.poll_transmit(4).unwrap();
    assert_eq!((t.header.epoch, t.header.seq), (51, 0));
}
