//! Bridges on one simulated Ethernet segment (a learning-free switch: broadcast to
//! all, unicast to the addressee; `down` bridges neither send nor receive), on a
//! virtual clock: discovery, group isolation, TLPs, a device moving between hosts,
//! a box dying and coming back, and bad frames.

mod common;

use common::device;
use fabric::{DownReason, FabricEvent, Node, NodeConfig, BROADCAST};
use proptest::prelude::*;
use wire::{BridgeRole, CtrlStatus, Frame, FrameKind, MacAddr};

struct Segment {
    nodes: Vec<Node>,
    down: Vec<bool>,
    now: u64,
    events: Vec<Vec<FabricEvent>>,
    /// A bridge that takes no TLPs from one session: (bridge, (group, peer)).
    hold: Option<(usize, (u16, MacAddr))>,
    /// Bridges whose INFO frames are lost (and nothing else).
    info_lost: Vec<bool>,
}

fn mac(i: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, i])
}

fn node(i: u8, role: BridgeRole, epoch: u32) -> Node {
    Node::new(NodeConfig::new(mac(i), role, 100 + i as u64, epoch)).unwrap()
}

impl Segment {
    fn new(nodes: Vec<Node>) -> Segment {
        let n = nodes.len();
        Segment {
            nodes,
            down: vec![false; n],
            now: 1,
            events: vec![Vec::new(); n],
            hold: None,
            info_lost: vec![false; n],
        }
    }

    /// Moves frames until nobody has anything to send.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(f) = self.nodes[i].poll_transmit(self.now) {
                    moved = true;
                    if self.down[i] {
                        continue;
                    }
                    let info =
                        Frame::parse(&f, None).is_ok_and(|f| f.header.kind == FrameKind::Info);
                    if info && self.info_lost[i] {
                        continue;
                    }
                    let dst = MacAddr(f[..6].try_into().unwrap());
                    for j in 0..self.nodes.len() {
                        if j != i
                            && !self.down[j]
                            && (dst == BROADCAST || dst == self.nodes[j].config().mac)
                        {
                            self.nodes[j].handle_frame(self.now, &f, None);
                        }
                    }
                }
            }
            for (i, n) in self.nodes.iter_mut().enumerate() {
                let held = self.hold.filter(|h| h.0 == i).map(|h| h.1);
                while let Some(e) = n.poll_event_where(|g, p| Some((g, p)) != held) {
                    self.events[i].push(e);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs the clock forward by `us` in 1 ms steps.
    fn run(&mut self, us: u64) {
        let end = self.now + us;
        while self.now < end {
            for n in &mut self.nodes {
                if n.poll_timeout() <= self.now {
                    n.handle_timeout(self.now);
                }
            }
            self.pump();
            self.now += 1000;
        }
    }

    fn take(&mut self, i: usize) -> Vec<FabricEvent> {
        std::mem::take(&mut self.events[i])
    }

    /// The manager asks the box (from group 4093) to move `slot` to `gid`; the frame
    /// is delivered, recorded on the way, and the segment runs 300 ms.
    fn recorded_request(&mut self, slot: u8, gid: u16) -> Vec<u8> {
        self.nodes[MANAGER]
            .set_group(4093, mac(3), 103, slot, gid)
            .unwrap();
        let f = self.nodes[MANAGER].poll_transmit(self.now).unwrap();
        self.nodes[BOX].handle_frame(self.now, &f, None);
        self.run(300_000);
        f
    }

    /// Bridge `from` sends `tlp` to bridge `to` in group `gid`; after `us` of the
    /// clock it has arrived there (the events of `to` are taken).
    fn tlp_arrives(&mut self, from: usize, to: usize, gid: u16, tlp: &[u8], us: u64) {
        let (src, dst) = (self.nodes[from].config().mac, self.nodes[to].config().mac);
        self.nodes[from].send_tlp(gid, dst, tlp).unwrap();
        self.run(us);
        let ev = self.take(to);
        let want = FabricEvent::Tlp {
            gid,
            peer: src,
            tlp: tlp.to_vec(),
        };
        assert!(ev.contains(&want), "{want:?} not among {ev:?}");
    }
}

const HOST_A: usize = 0;
const HOST_B: usize = 1;
const BOX: usize = 2;
const MANAGER: usize = 3;

fn segment() -> Segment {
    let mut a = node(1, BridgeRole::Host, 1000);
    a.join(10).unwrap();
    let mut b = node(2, BridgeRole::Host, 1000);
    b.join(20).unwrap();
    let mut x = node(3, BridgeRole::IoBox, 1000);
    x.add_device(device(0, 10)).unwrap();
    x.add_device(device(1, 4093)).unwrap();
    let mut m = node(4, BridgeRole::Manager, 1000);
    m.join(4093).unwrap();
    Segment::new(vec![a, b, x, m])
}

fn added(ev: &[FabricEvent]) -> Vec<(u16, u8)> {
    ev.iter()
        .filter_map(|e| match e {
            FabricEvent::DeviceAdded { gid, device, .. } => Some((*gid, device.slot)),
            _ => None,
        })
        .collect()
}

fn removed(ev: &[FabricEvent]) -> Vec<(u16, u8)> {
    ev.iter()
        .filter_map(|e| match e {
            FabricEvent::DeviceRemoved { gid, slot, .. } => Some((*gid, *slot)),
            _ => None,
        })
        .collect()
}

#[test]
fn discovery_respects_groups() {
    let mut s = segment();
    s.run(300_000);
    let a = s.take(HOST_A);
    assert!(a.contains(&FabricEvent::PeerUp {
        gid: 10,
        peer: mac(3),
        role: BridgeRole::IoBox,
        bridge_id: 103
    }));
    assert_eq!(
        added(&a),
        vec![(10, 0)],
        "host A sees exactly the device of its group"
    );
    // Host B is in group 20, where nothing lives: it sees no peer at all.
    assert!(s.take(HOST_B).is_empty());
    assert_eq!(
        added(&s.take(MANAGER)),
        vec![(4093, 1)],
        "the free device sits in 4093"
    );
    assert!(
        s.nodes[HOST_B].stats().other_group > 0,
        "other groups' INFO was dropped and counted"
    );
    // Liveness: a minute of INFO keeps everyone up, without repeated events.
    s.run(1_000_000);
    assert!(s.take(HOST_A).is_empty());
}

#[test]
fn tlps_flow_both_ways_in_order() {
    let mut s = segment();
    s.run(300_000);
    for i in 0..500u32 {
        s.nodes[HOST_A]
            .send_tlp(10, mac(3), &i.to_be_bytes().repeat(4))
            .unwrap();
        if i % 50 == 49 {
            s.run(2_000);
        }
    }
    s.run(50_000);
    let got: Vec<Vec<u8>> = s
        .take(BOX)
        .into_iter()
        .filter_map(|e| match e {
            FabricEvent::Tlp { gid: 10, peer, tlp } if peer == mac(1) => Some(tlp),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 500);
    for (i, t) in got.iter().enumerate() {
        assert_eq!(t, &(i as u32).to_be_bytes().repeat(4));
    }
    s.tlp_arrives(BOX, HOST_A, 10, b"answer!!", 5_000);
    // No session to a bridge outside our groups.
    assert!(s.nodes[HOST_B].send_tlp(10, mac(3), b"x").is_err());
}

/// A caller that takes no TLPs from one session leaves them there, and takes the
/// others' (and the events) as before; when it takes them again they come in order.
#[test]
fn tlps_of_one_session_wait_while_the_others_flow() {
    let mut s = segment();
    s.nodes[BOX].add_device(device(2, 20)).unwrap();
    s.run(300_000);
    s.take(BOX);
    s.hold = Some((BOX, (10, mac(1))));
    for i in 0..10u32 {
        s.nodes[HOST_A]
            .send_tlp(10, mac(3), &i.to_be_bytes())
            .unwrap();
        s.nodes[HOST_B]
            .send_tlp(20, mac(3), &i.to_be_bytes())
            .unwrap();
    }
    s.run(20_000);
    let from = |ev: &[FabricEvent], who: MacAddr| -> Vec<Vec<u8>> {
        ev.iter()
            .filter_map(|e| match e {
                FabricEvent::Tlp { peer, tlp, .. } if *peer == who => Some(tlp.clone()),
                _ => None,
            })
            .collect()
    };
    let sent: Vec<Vec<u8>> = (0..10u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let ev = s.take(BOX);
    assert_eq!(from(&ev, mac(2)), sent, "host B's TLPs flow");
    assert!(from(&ev, mac(1)).is_empty(), "host A's were taken");
    assert_eq!(s.nodes[BOX].pending_events(), 10);
    s.hold = None;
    s.run(5_000);
    assert_eq!(from(&s.take(BOX), mac(1)), sent);
}

/// A box that leaves a group quietly stops announcing there at once and keeps its
/// sessions until the peers there have dropped theirs: a device that comes back
/// before then finds the session as both sides left it (no restart, nothing lost);
/// one that does not come back leaves the peers gone on both sides.
#[test]
fn a_box_leaving_quietly_keeps_its_sessions_for_a_device_that_comes_back() {
    let mut s = segment();
    s.run(300_000);
    s.nodes[HOST_A].send_tlp(10, mac(3), b"before").unwrap();
    s.run(5_000);
    let move_to = |s: &mut Segment, gid: u16| {
        s.nodes[MANAGER]
            .set_group(4093, mac(3), 103, 0, gid)
            .unwrap();
    };
    move_to(&mut s, 20);
    // The empty list, announced for a few intervals.
    s.run(300_000);
    s.nodes[BOX].leave_quietly(10, s.now);
    assert!(!s.nodes[BOX].groups().contains(&10));
    let infos = s.nodes[HOST_A].stats().infos_in;
    s.run(150_000);
    assert_eq!(s.nodes[HOST_A].stats().infos_in, infos, "INFO in group 10");
    s.take(HOST_A);
    s.take(BOX);
    move_to(&mut s, 10);
    s.run(20_000);
    s.nodes[HOST_A].send_tlp(10, mac(3), b"after").unwrap();
    s.run(20_000);
    let a = s.take(HOST_A);
    assert_eq!(added(&a), vec![(10, 0)]);
    assert!(
        !a.iter().any(|e| matches!(
            e,
            FabricEvent::PeerRestarted { .. } | FabricEvent::PeerDown { .. }
        )),
        "{a:?}"
    );
    let got: Vec<_> = s
        .take(BOX)
        .into_iter()
        .filter(|e| matches!(e, FabricEvent::Tlp { gid: 10, .. }))
        .collect();
    assert_eq!(
        got,
        vec![FabricEvent::Tlp {
            gid: 10,
            peer: mac(1),
            tlp: b"after".to_vec()
        }]
    );
    for (n, peer) in [(HOST_A, mac(3)), (BOX, mac(1))] {
        let st = s.nodes[n].session_stats(10, peer).unwrap();
        assert_eq!((st.peer_restarts, st.tlps_lost), (0, 0), "{st:?}");
    }
    assert!(s.nodes[BOX].groups().contains(&10));

    // Gone again, for good this time: after the linger both sides have dropped the
    // other, and the box takes nothing more of group 10.
    move_to(&mut s, 20);
    s.run(300_000);
    s.nodes[BOX].leave_quietly(10, s.now);
    s.run(500_000);
    assert!(s.take(BOX).contains(&FabricEvent::PeerDown {
        gid: 10,
        peer: mac(1),
        reason: DownReason::Left
    }));
    assert!(s.take(HOST_A).contains(&FabricEvent::PeerDown {
        gid: 10,
        peer: mac(3),
        reason: DownReason::Silent
    }));
    let other = s.nodes[BOX].stats().other_group;
    s.run(200_000);
    assert!(
        s.nodes[BOX].stats().other_group > other,
        "host A's INFO taken"
    );
    assert_eq!(s.nodes[BOX].peers().filter(|p| p.0 == 10).count(), 0);
}

#[test]
fn a_device_moves_to_another_host() {
    let mut s = segment();
    s.run(300_000);
    s.take(HOST_A);
    s.take(MANAGER);
    // The manager moves slot 0 from group 10 to group 20 (host B).
    let req = s.nodes[MANAGER]
        .set_group(4093, mac(3), 103, 0, 20)
        .unwrap();
    s.run(300_000);
    assert!(s.take(BOX).contains(&FabricEvent::GroupChanged {
        slot: 0,
        from: 10,
        to: 20
    }));
    assert_eq!(
        removed(&s.take(HOST_A)),
        vec![(10, 0)],
        "hot-remove at the old host"
    );
    assert_eq!(
        added(&s.take(HOST_B)),
        vec![(20, 0)],
        "hot-plug at the new host"
    );
    assert!(s.take(MANAGER).contains(&FabricEvent::CtrlResult {
        from: mac(3),
        request_id: req,
        status: CtrlStatus::Ok
    }));
    assert_eq!(s.nodes[BOX].device_group(0), Some(20));
    // TLPs now flow between host B and the box, in group 20.
    s.nodes[HOST_B].send_tlp(20, mac(3), b"hello-20").unwrap();
    s.run(5_000);
    assert!(s
        .take(BOX)
        .iter()
        .any(|e| matches!(e, FabricEvent::Tlp { gid: 20, .. })));
    // A request for a slot that does not exist is refused, and says so.
    let req = s.nodes[MANAGER]
        .set_group(4093, mac(3), 103, 9, 20)
        .unwrap();
    s.run(5_000);
    assert!(s.take(MANAGER).contains(&FabricEvent::CtrlResult {
        from: mac(3),
        request_id: req,
        status: CtrlStatus::NoSuchDevice
    }));
}

#[test]
fn a_dead_box_is_hot_removed_and_comes_back() {
    let mut s = segment();
    s.run(300_000);
    s.take(HOST_A);
    s.down[BOX] = true;
    s.run(400_000);
    let a = s.take(HOST_A);
    assert_eq!(removed(&a), vec![(10, 0)]);
    assert!(a.contains(&FabricEvent::PeerDown {
        gid: 10,
        peer: mac(3),
        reason: DownReason::Silent
    }));
    // The box restarts (a new process: a larger epoch) with the same device.
    let mut x = node(3, BridgeRole::IoBox, 2000);
    x.add_device(device(0, 10)).unwrap();
    x.add_device(device(1, 4093)).unwrap();
    s.nodes[BOX] = x;
    s.down[BOX] = false;
    s.run(300_000);
    assert_eq!(added(&s.take(HOST_A)), vec![(10, 0)], "hot-plug again");
    s.tlp_arrives(HOST_A, BOX, 10, b"again!!!", 5_000);
}

#[test]
fn a_peer_whose_info_is_lost_among_its_data_stays_up_while_the_data_flows() {
    let mut s = segment();
    s.run(300_000);
    s.take(HOST_A);
    // The box's INFO is lost (a per-frame socket overrun by its data, say) for a
    // second, four times the silence limit, while it sends a TLP every 20 ms.
    s.info_lost[BOX] = true;
    for i in 0..50u32 {
        s.nodes[BOX].send_tlp(10, mac(1), &i.to_le_bytes()).unwrap();
        s.run(20_000);
    }
    let a = s.take(HOST_A);
    assert!(
        !a.iter().any(|e| matches!(e, FabricEvent::PeerDown { .. })),
        "{a:?}"
    );
    let tlps = a
        .iter()
        .filter(|e| matches!(e, FabricEvent::Tlp { .. }))
        .count();
    assert_eq!(tlps, 50);
    assert_eq!(
        s.nodes[BOX]
            .session_stats(10, mac(1))
            .unwrap()
            .peer_restarts,
        0
    );
    // Its data stops too: now it is silent.
    s.run(400_000);
    assert!(s.take(HOST_A).contains(&FabricEvent::PeerDown {
        gid: 10,
        peer: mac(3),
        reason: DownReason::Silent
    }));
}

#[test]
fn bad_frames_are_counted_and_ignored() {
    let mut s = segment();
    s.run(300_000);
    s.take(BOX);
    // A real frame with one bit flipped in the payload fails the frame check.
    s.nodes[HOST_A].send_tlp(10, mac(3), b"12345678").unwrap();
    let mut f = s.nodes[HOST_A].poll_transmit(s.now).unwrap();
    let last = f.len() - 1;
    f[last] ^= 1;
    s.nodes[BOX].handle_frame(s.now, &f, None);
    assert_eq!(s.nodes[BOX].stats().bad_frames, 1);
    // Junk, and a non-tether frame.
    s.nodes[BOX].handle_frame(s.now, &[0u8; 5], None);
    s.nodes[BOX].handle_frame(s.now, &[0xffu8; 60], None);
    assert_eq!(s.nodes[BOX].stats().bad_frames, 3);
    assert!(s.take(BOX).is_empty());
    // The session recovers the lost frame by retransmission.
    s.run(200_000);
    assert!(s.take(BOX).contains(&FabricEvent::Tlp {
        gid: 10,
        peer: mac(1),
        tlp: b"12345678".to_vec()
    }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Random bytes, and real frames with random damage, never panic a node.
    #[test]
    fn no_frame_panics_a_node(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..10),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..10),
    ) {
        let mut s = segment();
        s.run(250_000);
        s.nodes[HOST_A].send_tlp(10, mac(3), b"12345678").unwrap();
        let mut f = s.nodes[HOST_A].poll_transmit(s.now).unwrap();
        for (at, x) in flips {
            let n = f.len();
            f[at % n] ^= x;
        }
        s.nodes[BOX].handle_frame(s.now, &f, None);
        for j in &junk {
            s.nodes[BOX].handle_frame(s.now, j, None);
        }
        s.run(10_000);
    }
}

/// The TLPs bridge `i` got from `peer` in group 10, and its PeerRestarted events for
/// that peer, in the order they came.
fn from_peer(ev: &[FabricEvent], peer: MacAddr) -> (Vec<Vec<u8>>, Vec<u64>) {
    let mut tlps = Vec::new();
    let mut restarts = Vec::new();
    for e in ev {
        match e {
            FabricEvent::Tlp {
                gid: 10,
                peer: p,
                tlp,
            } if *p == peer => tlps.push(tlp.clone()),
            FabricEvent::PeerRestarted {
                gid: 10,
                peer: p,
                lost,
            } if *p == peer => restarts.push(*lost),
            _ => {}
        }
    }
    (tlps, restarts)
}

/// The box as a new process, with the epoch its epoch source gave the new run.
fn restarted_box(epoch: u32) -> Node {
    let mut x = node(3, BridgeRole::IoBox, epoch);
    x.add_device(device(0, 10)).unwrap();
    x.add_device(device(1, 4093)).unwrap();
    x
}

#[test]
fn a_box_restarted_within_the_same_second_is_seen_and_nothing_stale_is_delivered() {
    // The epoch source of both runs, driven by hand: the OS gave the same value
    // twice (what a start time in seconds gives within one second).
    let mut epochs = fabric::EpochSource::new(|| 1000);
    let first = epochs.draw();
    let mut s = segment();
    s.nodes[BOX] = restarted_box(first);
    s.run(300_000);
    // The box's first run sends three TLPs, which the host takes.
    for i in 0..3u8 {
        s.nodes[BOX].send_tlp(10, mac(1), &[0xa0 + i; 8]).unwrap();
        s.run(2_000);
    }
    let (old, _) = from_peer(&s.take(HOST_A), mac(3));
    assert_eq!(old.len(), 3);
    // The box dies; the host's next five TLPs go nowhere.
    s.down[BOX] = true;
    for i in 0..5u8 {
        s.nodes[HOST_A]
            .send_tlp(10, mac(3), &[0xb0 + i; 8])
            .unwrap();
    }
    s.run(5_000);
    // Back within the same second, long before the host would miss its INFO.
    let second = epochs.draw();
    s.nodes[BOX] = restarted_box(second);
    s.down[BOX] = false;
    s.run(250_000);
    for i in 0..10u8 {
        s.nodes[BOX].send_tlp(10, mac(1), &[i; 8]).unwrap();
        s.run(2_000);
    }
    s.run(20_000);
    let (tlps, restarts) = from_peer(&s.take(HOST_A), mac(3));
    assert_eq!(
        restarts,
        vec![5],
        "one restart, the five unacknowledged TLPs lost"
    );
    let st = s.nodes[HOST_A].session_stats(10, mac(3)).unwrap();
    assert_eq!((st.peer_restarts, st.tlps_lost), (1, 5));
    let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 8]).collect();
    assert_eq!(tlps, want, "the new run's TLPs 0..9, all of them, in order");
    // Nothing the host had meant for the dead run reaches the new one.
    let (stale, _) = from_peer(&s.take(BOX), mac(1));
    assert!(stale.is_empty(), "stale TLPs delivered: {stale:?}");
}

#[test]
fn a_restart_is_seen_from_info_before_any_data() {
    let mut s = segment();
    s.nodes[BOX] = restarted_box(0x9000_0000);
    s.run(300_000);
    s.nodes[HOST_A].send_tlp(10, mac(3), b"to-old-1").unwrap();
    s.run(2_000);
    s.take(HOST_A);
    s.take(BOX);
    s.down[BOX] = true;
    s.nodes[HOST_A].send_tlp(10, mac(3), b"unacked!").unwrap();
    s.run(2_000);
    // A random epoch may well be lower than the last one.
    s.nodes[BOX] = restarted_box(0x1000_0000);
    s.down[BOX] = false;
    // Only INFO moves: the new box has nothing to send.
    s.run(150_000);
    let a = s.take(HOST_A);
    assert_eq!(from_peer(&a, mac(3)).1, vec![1], "{a:?}");
    assert!(from_peer(&s.take(BOX), mac(1)).0.is_empty());
    // The session works again, both ways, from sequence 0.
    s.nodes[HOST_A].send_tlp(10, mac(3), b"to-new-1").unwrap();
    s.nodes[BOX].send_tlp(10, mac(1), b"from-new").unwrap();
    s.run(20_000);
    assert_eq!(
        from_peer(&s.take(BOX), mac(1)).0,
        vec![b"to-new-1".to_vec()]
    );
    assert_eq!(
        from_peer(&s.take(HOST_A), mac(3)).0,
        vec![b"from-new".to_vec()]
    );
    // A late INFO of the old run is refused, not taken for another restart.
    let st = s.nodes[HOST_A].stats();
    let mut old_run = restarted_box(0x9000_0000);
    old_run.handle_timeout(s.now);
    let old = old_run.poll_transmit(s.now).unwrap(); // its INFO in group 10
    s.nodes[HOST_A].handle_frame(s.now, &old, None);
    assert_eq!(s.nodes[HOST_A].stats().stale_infos, st.stale_infos + 1);
    s.run(10_000);
    assert!(from_peer(&s.take(HOST_A), mac(3)).1.is_empty());
}

/// A restart whose new boot epoch is a little below the session epoch the host
/// follows for the old run: the new run's epochs fall in the window where an older
/// session of the old run would be. The host must still see the restart (from the
/// INFO), drop what it held for the old run, and take the new run's TLPs.
#[test]
fn a_restart_to_an_epoch_just_below_the_old_session_is_seen() {
    const OLD: u32 = 0x9000_0000;
    // The box's sessions of its first run are OLD + 1 and OLD + 2 (host, manager); the
    // new run's are NEW + 1 and NEW + 2, a few hundred behind them.
    const NEW: u32 = OLD - 0x100;
    let mut s = segment();
    s.nodes[BOX] = restarted_box(OLD);
    s.run(300_000);
    s.nodes[BOX].send_tlp(10, mac(1), b"old-run!").unwrap();
    s.run(2_000);
    assert_eq!(
        from_peer(&s.take(HOST_A), mac(3)).0,
        vec![b"old-run!".to_vec()]
    );
    s.take(BOX);
    // The box dies with one TLP of the host's not acknowledged.
    s.down[BOX] = true;
    s.nodes[HOST_A].send_tlp(10, mac(3), b"unacked!").unwrap();
    s.run(2_000);
    s.nodes[BOX] = restarted_box(NEW);
    s.down[BOX] = false;
    s.run(150_000);
    for i in 0..3u8 {
        s.nodes[BOX].send_tlp(10, mac(1), &[i; 8]).unwrap();
    }
    s.nodes[HOST_A].send_tlp(10, mac(3), b"to-new-1").unwrap();
    s.run(50_000);
    let (tlps, restarts) = from_peer(&s.take(HOST_A), mac(3));
    let st = s.nodes[HOST_A].session_stats(10, mac(3)).unwrap();
    assert_eq!(
        (restarts, st.peer_restarts, st.tlps_lost),
        (vec![1], 1, 1),
        "one restart, the unacknowledged TLP lost: {st:?}"
    );
    let want: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 8]).collect();
    assert_eq!(tlps, want, "the new run's TLPs, in order");
    assert_eq!(
        from_peer(&s.take(BOX), mac(1)).0,
        vec![b"to-new-1".to_vec()]
    );
}

#[test]
fn epochs_never_repeat_even_when_the_source_does() {
    let mut same = fabric::EpochSource::new(|| 1000);
    let mut zero = fabric::EpochSource::new(|| 0);
    let (mut a, mut b) = (same.draw(), zero.draw());
    for _ in 0..10 {
        let (a2, b2) = (same.draw(), zero.draw());
        for (x, y) in [(a, a2), (b, b2)] {
            assert!(y != 0 && x != y);
            // Far enough apart that no session epoch of one run is taken for one
            // of the other.
            assert!(!efe::epoch_of_run(x, y) && !efe::epoch_of_run(y, x));
        }
        (a, b) = (a2, b2);
    }
    let mut os = fabric::EpochSource::os();
    let (x, y) = (os.draw(), os.draw());
    assert!(x != 0 && y != 0 && x != y);
}

// --- Groups with keys -------------------------------------------------------------

const ATTACKER: usize = 4;
const WRONG_KEY: usize = 5;

fn keys(list: &[(u16, u8)]) -> fabric::GroupKeys {
    std::sync::Arc::new(
        list.iter()
            .map(|&(gid, k)| (gid, wire::AuthKey::from_secret(&[k; 32])))
            .collect(),
    )
}

fn keyed_node(i: u8, role: BridgeRole, keys: fabric::GroupKeys) -> Node {
    let mut c = NodeConfig::new(mac(i), role, 100 + i as u64, 1000);
    c.keys = keys;
    Node::new(c).unwrap()
}

/// The segment of `segment()` with groups 10 and 4093 keyed, plus a bridge with no
/// keys and one with the wrong keys, both in groups 10 and 4093.
fn keyed_segment() -> Segment {
    let k = || keys(&[(10, 0x10), (4093, 0x93)]);
    let mut a = keyed_node(1, BridgeRole::Host, k());
    a.join(10).unwrap();
    let mut b = keyed_node(2, BridgeRole::Host, k());
    b.join(20).unwrap();
    let mut x = keyed_node(3, BridgeRole::IoBox, k());
    x.add_device(device(0, 10)).unwrap();
    x.add_device(device(1, 4093)).unwrap();
    let mut m = keyed_node(4, BridgeRole::Manager, k());
    m.join(4093).unwrap();
    let mut stranger = node(5, BridgeRole::Manager, 1000);
    stranger.join(10).unwrap();
    stranger.join(4093).unwrap();
    let mut wrong = keyed_node(6, BridgeRole::Manager, keys(&[(10, 0x11), (4093, 0x94)]));
    wrong.join(10).unwrap();
    wrong.join(4093).unwrap();
    Segment::new(vec![a, b, x, m, stranger, wrong])
}

/// `frame` written again for `key`'s group (None: untagged), as a bridge that sniffed
/// it could: the same addresses, header fields and payload (a session frame sealed
/// with the session key `key` gives its sender, under a fresh nonce).
fn retag(frame: &[u8], key: Option<&wire::AuthKey>) -> Vec<u8> {
    let f = Frame::parse(frame, None).unwrap();
    let mut buf = vec![0u8; 2048];
    let session_key = key.map(|k| k.session_key(f.ethernet.src));
    let mut w = if f.header.kind.is_session() {
        let seal = session_key.as_ref().map(|key| wire::Seal {
            key,
            nonce: wire::NonceSeq::new(0xf0f0, 1).next(),
        });
        wire::FrameWriter::sealed(&mut buf, &f.ethernet, seal)
    } else {
        wire::FrameWriter::keyed(&mut buf, &f.ethernet, key)
    }
    .unwrap();
    w.append_with(|b| {
        b[..f.payload.len()].copy_from_slice(f.payload);
        Ok(f.payload.len())
    })
    .unwrap();
    let mut h = f.header;
    h.flags &= !wire::flags::AUTH;
    let n = w.finish(&h).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_keyed_group_works_and_takes_nothing_from_strangers() {
    let mut s = keyed_segment();
    s.run(300_000);
    // The keyed bridges find each other and nobody else.
    assert_eq!(added(&s.take(HOST_A)), vec![(10, 0)]);
    let peers_of = |s: &Segment, i: usize| -> Vec<MacAddr> {
        let mut v: Vec<MacAddr> = s.nodes[i].peers().map(|p| p.1).collect();
        v.dedup();
        v
    };
    assert_eq!(peers_of(&s, HOST_A), vec![mac(3)]);
    assert_eq!(peers_of(&s, ATTACKER), Vec::<MacAddr>::new());
    assert_eq!(peers_of(&s, WRONG_KEY), Vec::<MacAddr>::new());
    let a = s.nodes[HOST_A].stats();
    assert!(a.auth_missing > 0, "the stranger's INFO: {a:?}");
    assert!(a.auth_bad > 0, "the wrong key's INFO: {a:?}");
    assert!(s.nodes[ATTACKER].stats().auth_unexpected > 0);
    assert!(s.nodes[WRONG_KEY].stats().auth_bad > 0);
    // TLPs flow both ways in the keyed session.
    s.nodes[HOST_A].send_tlp(10, mac(3), b"keyed-down").unwrap();
    s.nodes[BOX].send_tlp(10, mac(1), b"keyed-up").unwrap();
    s.run(5_000);
    assert!(s.take(BOX).contains(&FabricEvent::Tlp {
        gid: 10,
        peer: mac(1),
        tlp: b"keyed-down".to_vec()
    }));
    assert!(s.take(HOST_A).contains(&FabricEvent::Tlp {
        gid: 10,
        peer: mac(3),
        tlp: b"keyed-up".to_vec()
    }));
}

#[test]
fn forged_ctrl_and_tlps_change_nothing_in_a_keyed_group() {
    let mut s = keyed_segment();
    s.run(300_000);
    s.take(BOX);
    s.take(HOST_A);
    // The stranger and the wrong key ask the box to move slot 0 (group 10) and
    // slot 1 (group 4093) into their group: the device stays.
    for who in [ATTACKER, WRONG_KEY] {
        s.nodes[who].set_group(10, mac(3), 103, 0, 66).unwrap();
        s.nodes[who].set_group(4093, mac(3), 103, 1, 66).unwrap();
    }
    s.run(50_000);
    assert_eq!(s.nodes[BOX].device_group(0), Some(10));
    assert_eq!(s.nodes[BOX].device_group(1), Some(4093));
    assert!(!s
        .take(BOX)
        .iter()
        .any(|e| matches!(e, FabricEvent::GroupChanged { .. })));
    assert!(removed(&s.take(HOST_A)).is_empty());

    // A frame of the live session, sniffed and sent again without its tag or under
    // another key (a forged TLP with the right epochs and sequence number), is
    // dropped and counted; the genuine one is delivered once, its replay never.
    s.nodes[HOST_A].send_tlp(10, mac(3), b"genuine").unwrap();
    let f = s.nodes[HOST_A].poll_transmit(s.now).unwrap();
    let before = s.nodes[BOX].stats();
    s.nodes[BOX].handle_frame(s.now, &retag(&f, None), None);
    let wrong = wire::AuthKey::from_secret(&[0x11; 32]);
    s.nodes[BOX].handle_frame(s.now, &retag(&f, Some(&wrong)), None);
    let after = s.nodes[BOX].stats();
    assert_eq!(after.auth_missing, before.auth_missing + 1);
    assert_eq!(after.auth_bad, before.auth_bad + 1);
    assert_eq!(after.session_refused, before.session_refused);
    s.pump();
    assert!(s.take(BOX).is_empty(), "nothing was delivered");
    s.nodes[BOX].handle_frame(s.now, &f, None);
    s.nodes[BOX].handle_frame(s.now, &f, None);
    s.pump();
    let got: Vec<_> = s
        .take(BOX)
        .into_iter()
        .filter(|e| matches!(e, FabricEvent::Tlp { .. }))
        .collect();
    assert_eq!(got.len(), 1, "delivered once: {got:?}");

    // The manager holding the group's key does move a device (the refusals above are
    // the keys' doing, not a broken CTRL path).
    s.nodes[MANAGER]
        .set_group(4093, mac(3), 103, 1, 10)
        .unwrap();
    s.run(300_000);
    assert_eq!(s.nodes[BOX].device_group(1), Some(10));
    assert!(added(&s.take(HOST_A)).contains(&(10, 1)));
}

#[test]
fn replayed_info_and_ctrl_change_nothing_in_a_keyed_group() {
    let mut s = keyed_segment();
    s.run(300_000);
    s.take(HOST_A);
    s.take(BOX);
    // An INFO of the box, captured now, sent again later: refused as a replay.
    s.now += 100_000;
    s.nodes[BOX].handle_timeout(s.now);
    let info = std::iter::from_fn(|| s.nodes[BOX].poll_transmit(s.now))
        .find(|f| {
            Frame::parse(f, None)
                .is_ok_and(|f| f.header.kind == FrameKind::Info && f.gid() == Some(10))
        })
        .expect("the box announces itself in group 10");
    s.nodes[HOST_A].handle_frame(s.now, &info, None);
    s.run(300_000);
    let before = s.nodes[HOST_A].stats();
    s.nodes[HOST_A].handle_frame(s.now, &info, None);
    assert_eq!(
        s.nodes[HOST_A].stats().replayed_infos,
        before.replayed_infos + 1
    );
    assert_eq!(s.nodes[HOST_A].stats().infos_in, before.infos_in);

    // The box restarts (a new boot epoch): its new run is seen as a restart; the old
    // run's INFO, replayed after that, is refused and restarts nothing.
    s.take(HOST_A);
    let mut c = NodeConfig::new(mac(3), BridgeRole::IoBox, 103, 0x7777_0000);
    c.keys = keys(&[(10, 0x10), (4093, 0x93)]);
    let mut reborn = Node::new(c).unwrap();
    reborn.add_device(device(0, 10)).unwrap();
    reborn.add_device(device(1, 4093)).unwrap();
    s.nodes[BOX] = reborn;
    s.run(300_000);
    let restarts = |ev: &[FabricEvent]| {
        ev.iter()
            .filter(|e| matches!(e, FabricEvent::PeerRestarted { .. }))
            .count()
    };
    assert_eq!(restarts(&s.take(HOST_A)), 1, "the real restart is seen");
    let before = s.nodes[HOST_A].stats();
    for _ in 0..3 {
        s.nodes[HOST_A].handle_frame(s.now, &info, None);
    }
    s.run(100_000);
    let ev = s.take(HOST_A);
    assert_eq!(restarts(&ev), 0, "{ev:?}");
    assert!(removed(&ev).is_empty(), "{ev:?}");
    assert_eq!(
        s.nodes[HOST_A].stats().replayed_infos,
        before.replayed_infos + 3
    );

    // The manager moves the free device into group 10 (request captured on the way),
    // then back: the captured request, replayed, does not move it again.
    let to_10 = s.recorded_request(1, 10);
    assert_eq!(s.nodes[BOX].device_group(1), Some(10));
    s.nodes[MANAGER]
        .set_group(10, mac(3), 103, 1, 4093)
        .unwrap();
    s.run(300_000);
    assert_eq!(s.nodes[BOX].device_group(1), Some(4093));
    let before = s.nodes[BOX].stats();
    s.nodes[BOX].handle_frame(s.now, &to_10, None);
    s.run(10_000);
    assert_eq!(
        s.nodes[BOX].device_group(1),
        Some(4093),
        "the replay moved it"
    );
    assert_eq!(s.nodes[BOX].stats().replayed_ctrl, before.replayed_ctrl + 1);

    // A request held back for longer than max_ctrl_age_us is refused even by a box
    // that never saw it (one that restarted since, say).
    s.nodes[MANAGER]
        .set_group(4093, mac(3), 103, 1, 10)
        .unwrap();
    let late = s.nodes[MANAGER].poll_transmit(s.now).unwrap();
    s.run(61_000_000);
    let before = s.nodes[BOX].stats();
    s.nodes[BOX].handle_frame(s.now, &late, None);
    assert_eq!(s.nodes[BOX].stats().replayed_ctrl, before.replayed_ctrl + 1);
    assert_eq!(s.nodes[BOX].device_group(1), Some(4093));

    // In a keyed group a request is taken only in the device's own group: the
    // manager (holding the key of 4093) cannot move slot 0 (group 10) from there.
    let before = s.nodes[BOX].stats();
    let req = s.nodes[MANAGER]
        .set_group(4093, mac(3), 103, 0, 20)
        .unwrap();
    s.run(10_000);
    assert_eq!(s.nodes[BOX].device_group(0), Some(10));
    assert_eq!(
        s.nodes[BOX].stats().ctrl_wrong_group,
        before.ctrl_wrong_group + 1
    );
    assert!(s.take(MANAGER).contains(&FabricEvent::CtrlResult {
        from: mac(3),
        request_id: req,
        status: CtrlStatus::Refused
    }));
}

#[test]
fn a_session_frame_of_an_earlier_run_restarts_nothing_in_a_keyed_group() {
    let mut s = keyed_segment();
    s.run(300_000);
    // A DATA frame of the box's first run, recorded on its way to host A.
    s.nodes[BOX].send_tlp(10, mac(1), b"old run").unwrap();
    let old = std::iter::from_fn(|| s.nodes[BOX].poll_transmit(s.now))
        .find(|f| Frame::parse(f, None).is_ok_and(|f| f.header.kind == FrameKind::Data))
        .expect("the box sends the TLP");
    s.nodes[HOST_A].handle_frame(s.now, &old, None);
    s.run(100_000);
    // The box restarts five times (more runs than a session remembers epochs of: the
    // first run's epoch is no longer refused as one of the peer's last four).
    for run in 1..=5u32 {
        let mut c = NodeConfig::new(
            mac(3),
            BridgeRole::IoBox,
            103,
            run.wrapping_mul(0x3000_0000),
        );
        c.keys = keys(&[(10, 0x10), (4093, 0x93)]);
        let mut reborn = Node::new(c).unwrap();
        reborn.add_device(device(0, 10)).unwrap();
        reborn.add_device(device(1, 4093)).unwrap();
        s.nodes[BOX] = reborn;
        s.run(300_000);
        // Traffic in each run, so that the host's session follows each run's epoch.
        s.nodes[BOX].send_tlp(10, mac(1), b"a run").unwrap();
        s.run(20_000);
    }
    s.tlp_arrives(HOST_A, BOX, 10, b"to the current run", 50_000);
    s.take(HOST_A);
    let before = s.nodes[HOST_A].stats();
    s.nodes[HOST_A].handle_frame(s.now, &old, None);
    s.run(50_000);
    let ev = s.take(HOST_A);
    assert!(
        !ev.iter().any(|e| matches!(
            e,
            FabricEvent::PeerRestarted { .. } | FabricEvent::Tlp { .. }
        )),
        "{ev:?}"
    );
    assert_eq!(
        s.nodes[HOST_A].stats().stale_run_frames,
        before.stale_run_frames + 1
    );
    // The session goes on.
    s.tlp_arrives(BOX, HOST_A, 10, b"still here", 50_000);
}

#[test]
fn a_box_with_managers_obeys_only_their_signed_fresh_requests() {
    use fabric::keys::{ManagerSigner, TrustedManagers};
    use std::sync::Arc;
    let other = ManagerSigner::from_seed(&[0x52; 32]);
    let public = ed25519_dalek::SigningKey::from_bytes(&[0x51; 32]).verifying_key();
    let mut s = segment();
    // The box obeys the trusted manager only (an unkeyed segment: signatures alone).
    let mut c = NodeConfig::new(mac(3), BridgeRole::IoBox, 103, 1000);
    c.managers = Some(Arc::new(TrustedManagers::new([public])));
    let mut x = Node::new(c).unwrap();
    x.add_device(device(0, 10)).unwrap();
    x.add_device(device(1, 4093)).unwrap();
    s.nodes[BOX] = x;
    let signing = |signer: Option<ManagerSigner>| {
        let mut c = NodeConfig::new(mac(4), BridgeRole::Manager, 104, 1000);
        c.signer = signer.map(Arc::new);
        let mut m = Node::new(c).unwrap();
        m.join(4093).unwrap();
        m
    };
    s.run(300_000);
    // Unsigned, and signed with a key the box does not trust: dropped, counted.
    for signer in [None, Some(other)] {
        s.nodes[MANAGER] = signing(signer);
        let before = s.nodes[BOX].stats().ctrl_unsigned;
        s.nodes[MANAGER]
            .set_group(4093, mac(3), 103, 1, 20)
            .unwrap();
        s.run(50_000);
        assert_eq!(s.nodes[BOX].device_group(1), Some(4093));
        assert_eq!(s.nodes[BOX].stats().ctrl_unsigned, before + 1);
    }
    // Signed by the trusted manager: obeyed.
    s.nodes[MANAGER] = signing(Some(ManagerSigner::from_seed(&[0x51; 32])));
    let signed = s.recorded_request(1, 20);
    assert_eq!(s.nodes[BOX].device_group(1), Some(20));
    assert!(added(&s.take(HOST_B)).contains(&(20, 1)));
    // Back to 4093 (signed, sent in group 20), then the first request replayed as
    // it was, and re-sent in another group (its VLAN changed, the check redone: the
    // signature covers the group): neither moves it.
    s.nodes[MANAGER]
        .set_group(20, mac(3), 103, 1, 4093)
        .unwrap();
    s.run(300_000);
    assert_eq!(s.nodes[BOX].device_group(1), Some(4093));
    let before = s.nodes[BOX].stats();
    s.nodes[BOX].handle_frame(s.now, &signed, None);
    let f = Frame::parse(&signed, None).unwrap();
    let mut eth = f.ethernet;
    eth.vlan = Some(wire::VlanTag {
        pcp: 0,
        dei: false,
        vid: 10,
    });
    let mut buf = vec![0u8; 256];
    let mut w = wire::FrameWriter::new(&mut buf, &eth).unwrap();
    w.append_with(|b| {
        b[..f.payload.len()].copy_from_slice(f.payload);
        Ok(f.payload.len())
    })
    .unwrap();
    let mut h = f.header;
    // A later counter, as if fresh.
    h.ack = h.ack.wrapping_add(1_000);
    let n = w.finish(&h).unwrap();
    s.nodes[BOX].handle_frame(s.now, &buf[..n], None);
    s.run(50_000);
    assert_eq!(s.nodes[BOX].device_group(1), Some(4093));
    let after = s.nodes[BOX].stats();
    assert_eq!(after.replayed_ctrl, before.replayed_ctrl + 1, "the replay");
    assert_eq!(
        after.ctrl_unsigned,
        before.ctrl_unsigned + 1,
        "the re-sent one"
    );
}
