//! What the `efe_session` fuzz target found, one test each.

use efe::{Config, Refused, Session, State};
use wire::{flags, FrameKind, TetherHeader};

/// A peer's frame acknowledging everything the session sent (`ack`), from epoch 9.
fn ack(local_epoch: u32, ack: u32, tsval: u32) -> TetherHeader {
    TetherHeader {
        kind: FrameKind::Ack,
        flags: flags::ACK,
        epoch: 9,
        peer_epoch: local_epoch,
        seq: 0,
        ack,
        tsval,
        tsecr: 0,
        window: 64,
        echo_wait: 0,
    }
}

/// The clock a session is given: µs from any origin the caller keeps, never going
/// back. A clock near the end of `u64` overflowed the deadlines (`now + rto`).
#[test]
fn a_clock_near_the_end_of_u64_saturates_the_deadlines() {
    let mut s = Session::new(Config::default(), 5).unwrap();
    let mut now = u64::MAX - 10;
    s.send(&[1; 12]).unwrap();
    let t = s.poll_transmit(now).expect("the TLP leaves");
    assert_eq!(t.header.kind, FrameKind::Data);
    // The timer is set, at the end of time at the latest.
    let rto = s.poll_timeout().expect("a frame in flight has a timer");
    assert!(rto > now);
    // The peer's data starts the ack timer; its ack the RTO again.
    let mut data = ack(5, 0, 1);
    data.kind = FrameKind::Data;
    s.handle_frame(now, &data, &[0, 4, 1, 0, 1, 2, 3, 4])
        .unwrap();
    s.send(&[2; 12]).unwrap();
    now += 1;
    while s.poll_transmit(now).is_some() {}
    s.handle_frame(now, &ack(5, 1, 2), &[]).unwrap();
    assert_eq!(s.state(), State::Up);
    // A NAK for the frame in flight goes back; the timers run out at the end of time.
    let mut nak = ack(5, 1, 3);
    nak.kind = FrameKind::Nak;
    s.handle_frame(now, &nak, &[]).unwrap();
    s.handle_frame(now, &nak, &[]).unwrap();
    now = u64::MAX;
    for _ in 0..20 {
        s.handle_timeout(now);
        while s.poll_transmit(now).is_some() {}
    }
    assert_eq!(s.state(), State::Down);
}

/// Epoch 0 is nobody's: a session that had not heard from its peer yet (its own idea
/// of the peer's epoch 0 too) took a DATA frame of epoch 0 and delivered its TLPs.
#[test]
fn a_frame_of_epoch_0_is_refused_before_the_peer_is_known() {
    let mut s = Session::new(Config::default(), 5).unwrap();
    let mut data = ack(5, 0, 1);
    data.kind = FrameKind::Data;
    data.epoch = 0;
    assert_eq!(
        s.handle_frame(1000, &data, &[0, 4, 1, 0, 1, 2, 3, 4]),
        Err(Refused::StalePeerEpoch)
    );
    assert_eq!(s.recv(), None);
    assert_eq!(s.peer_epoch(), 0);
    assert_eq!(s.stats().drop_stale_epoch, 1);
    // The real peer then starts at sequence 0.
    data.epoch = 9;
    s.handle_frame(1001, &data, &[0, 4, 1, 0, 5, 6, 7, 8])
        .unwrap();
    assert_eq!(s.recv(), Some(vec![5, 6, 7, 8]));
}
