//! A node fed frames a hostile peer on the segment can send (found by the
//! `fabric_node` fuzz target): the node's state stays bounded and its events stay
//! consistent.

mod common;

use fabric::{DownReason, FabricEvent, Node, NodeConfig};
use wire::{
    emit_info, BridgeRole, EthernetRepr, FrameKind, InfoRepr, MacAddr, TetherHeader, VlanTag,
};

const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

fn host() -> Node {
    let mut n = Node::new(NodeConfig::new(OURS, BridgeRole::Host, 1, 7)).unwrap();
    n.join(1).unwrap();
    n
}

/// An INFO frame of an I/O box at `src` in group `gid`.
fn info(src: MacAddr, gid: u16, devices: &[wire::DeviceInfo]) -> Vec<u8> {
    let eth = EthernetRepr {
        dst: MacAddr::BROADCAST,
        src,
        vlan: Some(VlanTag {
            pcp: 0,
            dei: false,
            vid: gid,
        }),
        ethertype: wire::ETHERTYPE,
    };
    let mut h = TetherHeader::new(FrameKind::Info);
    h.epoch = 9;
    let repr = InfoRepr {
        role: BridgeRole::IoBox,
        flags: 0,
        bridge_id: 2,
        mtu: 1500,
        max_tlps_per_frame: 32,
        interval_ms: 100,
        max_payload: 256,
        max_read_request: 512,
    };
    let mut buf = vec![0u8; 9000];
    let n = emit_info(&mut buf, &eth, &h, &repr, devices, None).unwrap();
    buf.truncate(n);
    buf
}

fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([2, 0xee, b[0], b[1], b[2], b[3]])
}

#[test]
fn infos_from_many_addresses_make_a_bounded_number_of_peers() {
    let mut n = host();
    let mut answers = 0;
    for i in 0..5000 {
        n.handle_frame(1, &info(mac(i), 1, &[]), None);
        answers += std::iter::from_fn(|| n.poll_transmit(1)).count();
        while n.poll_event().is_some() {}
    }
    // A burst of strangers' INFO is taken (100), the rest dropped unread; of those
    // taken, a group holds 64 peers.
    let cfg = n.config().clone();
    let peers = n.peers().count();
    assert_eq!(peers, cfg.max_peers_per_group);
    let taken = u64::from(cfg.stranger_infos_per_s);
    assert_eq!(n.stats().infos_limited, 5000 - taken);
    assert_eq!(n.stats().peers_refused, taken - peers as u64);
    // No answer storm: our own first INFO and one answer to the newcomers.
    assert!(answers <= 2, "{answers} frames sent for 5000 strangers");
    // Silent ones time out and make room; the bucket has filled again meanwhile.
    let later = 1 + cfg.info_interval_us * cfg.missed_infos as u64;
    n.handle_timeout(later);
    n.handle_frame(later, &info(mac(9999), 1, &[]), None);
    assert_eq!(n.peers().count(), 1);
}

#[test]
fn peers_are_capped_in_all_and_per_group_and_strangers_by_rate() {
    let mut c = NodeConfig::new(OURS, BridgeRole::Host, 1, 7);
    c.max_peers = 100;
    c.max_peers_per_group = 40;
    c.stranger_infos_per_s = 1000;
    c.info_interval_us = 10_000_000;
    let mut n = Node::new(c).unwrap();
    for g in 1..=4 {
        n.join(g).unwrap();
    }
    // 4 groups x 60 strangers, 60 per second of the caller's clock: no INFO is
    // limited, every group fills to 40, and all together stop at 100.
    let mut now = 1;
    for i in 0..240u32 {
        let g = 1 + (i % 4) as u16;
        n.handle_frame(now, &info(mac(i), g, &[]), None);
        while n.poll_transmit(now).is_some() {}
        while n.poll_event().is_some() {}
        now += 1_000_000 / 60;
    }
    assert_eq!(n.stats().infos_limited, 0);
    assert_eq!(n.peers().count(), 100);
    for g in 1..=4u16 {
        assert!(n.peers().filter(|p| p.0 == g).count() <= 40);
    }
    assert_eq!(n.stats().peers_refused, 140);
    // Known peers are never limited: 10 000 INFO from them at one instant are all
    // taken.
    let known: Vec<(u16, MacAddr)> = n.peers().map(|p| (p.0, p.1)).collect();
    let before = n.stats();
    for k in 0..10_000 {
        let (g, m) = known[k % known.len()];
        n.handle_frame(now, &info(m, g, &[]), None);
    }
    assert_eq!(n.stats().infos_limited, before.infos_limited);
    assert_eq!(n.stats().infos_in, before.infos_in + 10_000);
}

/// A ready device in `slot`, in group 1.
fn device(slot: u8) -> wire::DeviceInfo {
    common::device(slot, 1)
}

fn device_events(n: &mut Node) -> (Vec<u8>, Vec<u8>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    while let Some(e) = n.poll_event() {
        match e {
            FabricEvent::DeviceAdded { device, .. } => added.push(device.slot),
            FabricEvent::DeviceRemoved { slot, .. } => removed.push(slot),
            _ => {}
        }
    }
    (added, removed)
}

#[test]
fn a_slot_listed_twice_in_one_info_is_one_device() {
    let mut n = host();
    let boxx = mac(1);
    n.handle_frame(1, &info(boxx, 1, &[device(0), device(3), device(0)]), None);
    assert_eq!(device_events(&mut n), (vec![0, 3], vec![]));
    let shown: Vec<u8> = n.peers().flat_map(|p| p.4.iter().map(|d| d.slot)).collect();
    assert_eq!(shown, [0, 3]);
    n.handle_frame(2, &info(boxx, 1, &[device(3)]), None);
    assert_eq!(device_events(&mut n), (vec![], vec![0]));
    n.handle_frame(3, &info(boxx, 1, &[device(3), device(3), device(3)]), None);
    assert_eq!(device_events(&mut n), (vec![], vec![]));
    assert_eq!(n.stats().duplicate_devices, 3);
}

#[test]
fn a_clock_near_the_end_of_u64_saturates_the_timers() {
    let mut n = host();
    let boxx = mac(1);
    let mut now = u64::MAX - 1000;
    n.handle_timeout(now);
    n.handle_frame(now, &info(boxx, 1, &[device(0)]), None);
    assert!(n.poll_timeout() > now);
    now = u64::MAX;
    n.handle_timeout(now);
    // At the end of time the box has been silent long enough: it is gone.
    assert_eq!(n.peers().count(), 0);
    assert_eq!(n.poll_timeout(), u64::MAX);
}

/// Leaving a group dropped its peers without a word: the layer above kept devices and
/// peers that no longer existed.
#[test]
fn leaving_a_group_reports_its_peers_and_devices_gone() {
    let mut n = host();
    n.join(2).unwrap();
    n.handle_frame(1, &info(mac(1), 1, &[device(0), device(4)]), None);
    n.handle_frame(1, &info(mac(2), 2, &[device(1)]), None);
    while n.poll_event().is_some() {}
    n.leave(1);
    let events: Vec<FabricEvent> = std::iter::from_fn(|| n.poll_event()).collect();
    assert_eq!(
        events,
        [
            FabricEvent::DeviceRemoved {
                gid: 1,
                peer: mac(1),
                slot: 0
            },
            FabricEvent::DeviceRemoved {
                gid: 1,
                peer: mac(1),
                slot: 4
            },
            FabricEvent::PeerDown {
                gid: 1,
                peer: mac(1),
                reason: DownReason::Left
            },
        ]
    );
    assert_eq!(
        n.peers().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        [(2, mac(2))]
    );
}

/// `set_group` checked the new group but not the one the request goes through: a CTRL
/// frame went out tagged with VLAN 4095 (or 0).
#[test]
fn set_group_through_an_invalid_group_is_refused() {
    let mut n = host();
    for via in [0, 4095, 5000] {
        assert_eq!(
            n.set_group(via, mac(1), 2, 0, 1),
            Err(fabric::FabricError::BadGroup(via))
        );
    }
    assert_eq!(n.poll_transmit(1), None);
}
