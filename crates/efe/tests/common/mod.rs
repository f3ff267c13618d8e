//! What the session tests share: the two epochs, the peer's DATA header, a session
//! that receives.

#![allow(dead_code)]

use efe::sim::{LinkConfig, Sim};
use efe::{Config, Session};
use wire::{flags, FrameKind, TetherHeader};

/// Our epoch (the session under test) and the peer's.
pub const LOCAL: u32 = 5;
pub const PEER: u32 = 9;

/// A DATA frame of the peer with sequence number `seq`, sent at `tsval` (its clock),
/// advertising `window` frames.
pub fn data_with_window(seq: u32, tsval: u32, window: u16) -> TetherHeader {
    TetherHeader {
        kind: FrameKind::Data,
        flags: flags::ACK,
        epoch: PEER,
        peer_epoch: LOCAL,
        seq,
        ack: 0,
        tsval,
        tsecr: 0,
        window,
        echo_wait: 0,
    }
}

/// The session under test, receiving.
pub fn receiver(cfg: Config) -> Session {
    Session::new(cfg, LOCAL).unwrap()
}

/// Two sessions joined by a link of `link` each way, with one flow of 20 000 TLPs of
/// 256 bytes from the first to the second.
pub fn flow_pair(link: LinkConfig, cfg: Config, seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    let f = sim.add_link(link.clone());
    let r = sim.add_link(link);
    let a = sim.add_node(Session::new(cfg, 1).unwrap(), f);
    let b = sim.add_node(Session::new(cfg, 2).unwrap(), r);
    sim.connect(a, b);
    sim.add_flow(a, b, 20_000, 256);
    sim
}

/// The peer's acknowledgement of everything before `ack`, echoing `tsecr`,
/// advertising `window` frames.
pub fn ack_with_window(ack: u32, tsecr: u32, window: u16) -> TetherHeader {
    TetherHeader {
        kind: FrameKind::Ack,
        ack,
        tsecr,
        seq: 0,
        ..data_with_window(0, 1, window)
    }
}

/// A sender with frames 0..n in flight (as many as its window lets go), 8 bytes each,
/// started up by the peer's acknowledgement advertising `window`, and the time the
/// last one left.
pub fn started_sender(cfg: Config, n: u8, window: u16) -> (Session, u64) {
    let mut s = Session::new(cfg, LOCAL).unwrap();
    s.handle_frame(0, &ack_with_window(0, 0, window), &[])
        .unwrap();
    for i in 0..n {
        s.send(&[i; 8]).unwrap();
    }
    let (mut count, mut now) = (0, 1);
    while count < n.min(cfg.window as u8) as u32 {
        match s.poll_transmit(now) {
            Some(t) => {
                assert_eq!(t.header.seq, count);
                count += 1;
            }
            // The pacer spaces them.
            None => now = s.poll_timeout().unwrap().max(now + 1),
        }
    }
    (s, now)
}
