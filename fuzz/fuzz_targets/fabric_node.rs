//! One `fabric::Node` (host, I/O box or manager, fuzz-chosen settings) fed a sequence
//! of received frames interleaved with clock advances, timeouts, polls and the
//! caller's own calls (send a TLP, join, leave, move a device). A received frame is
//! either raw bytes or built with the wire crate's emitters from fuzz-chosen fields
//! (INFO, CTRL, DATA, ACK, NAK; sources, destinations and groups from a few known
//! values or raw), so that it passes the frame check and reaches the node's logic.
//! Session fields (epochs, sequence numbers, acks, timestamps) are picked raw or
//! relative to the last frame the node sent to that peer.
//!
//! The clock never goes backwards (the documented contract of `now`), from any
//! origin.
//!
//! Checked after every step: no panic; the counters never decrease and `frames_in`
//! counts every frame handed in; every frame the node sends parses, comes from its
//! address and is a frame of ours; the events tell a consistent story (a peer is up
//! once before it goes down, a device is added once before it is removed, TLPs come
//! only from peers that are up, a peer's devices are gone before it is), and after the
//! events are drained it matches what `peers()` shows; the peers stay within
//! `max_peers`, and the events waiting grow by a bounded number per step. The caller
//! takes all events, only the control ones (TLPs then stay in their sessions) or none,
//! as the input says.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use fabric::{FabricEvent, FabricStats, Node, NodeConfig};
use libfuzzer_sys::fuzz_target;
use tether_fuzz::{assert_counters_grew, Input};
use wire::{
    emit_ctrl, emit_info, flags, BridgeRole, CtrlOp, CtrlRepr, CtrlStatus, DeviceInfo,
    EthernetRepr, Frame, FrameKind, FrameWriter, InfoRepr, MacAddr, TetherHeader, VlanTag,
    ETHERTYPE,
};

/// Any address.
fn mac(i: &mut Input) -> MacAddr {
    MacAddr([i.u8(), i.u8(), i.u8(), i.u8(), i.u8(), i.u8()])
}

const OURS: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const PEERS: [MacAddr; 4] = [
    MacAddr([2, 0, 0, 0, 0, 0x10]),
    MacAddr([2, 0, 0, 0, 0, 0x11]),
    MacAddr([2, 0, 0, 0, 0, 0x12]),
    MacAddr([2, 0, 0, 0, 0, 0x13]),
];
const GIDS: [u16; 4] = [1, 2, 3, wire::GID_FREE];

fn gid(i: &mut Input) -> u16 {
    let b = i.u8();
    if b < 240 {
        GIDS[b as usize % GIDS.len()]
    } else {
        i.u16()
    }
}

fn peer(i: &mut Input) -> MacAddr {
    match i.u8() % 8 {
        0..=4 => PEERS[i.u8() as usize % PEERS.len()],
        5 => OURS,
        6 => wire::MacAddr::BROADCAST,
        _ => mac(i),
    }
}

fn pick_role(b: u8) -> BridgeRole {
    match b % 3 {
        0 => BridgeRole::Host,
        1 => BridgeRole::IoBox,
        _ => BridgeRole::Manager,
    }
}

fn device(i: &mut Input) -> DeviceInfo {
    DeviceInfo {
        slot: i.u8() % 8,
        flags: i.u8(),
        gid: gid(i),
        vendor_id: i.u16(),
        device_id: i.u16(),
        class_code: i.u32() & 0xff_ffff,
        revision: i.u8(),
        subsystem_vendor_id: i.u16(),
        subsystem_id: i.u16(),
    }
}

fn counters(s: &FabricStats) -> [u64; 24] {
    [
        s.frames_in,
        s.frames_out,
        s.other_group,
        s.bad_frames,
        s.unknown_peer,
        s.own_frames,
        s.session_refused,
        s.infos_in,
        s.infos_out,
        s.ctrl_in,
        s.peers_up,
        s.peers_down,
        s.peers_refused,
        s.stale_infos,
        s.duplicate_devices,
        s.auth_missing,
        s.auth_bad,
        s.auth_unexpected,
        s.replayed_infos,
        s.replayed_ctrl,
        s.ctrl_wrong_group,
        s.stale_run_frames,
        s.ctrl_unsigned,
        s.infos_limited,
    ]
}

/// What the node last sent to a peer (session fields), and what the fuzzed peer sent.
#[derive(Default, Clone, Copy)]
struct Link {
    epoch: u32,
    seq: u32,
    ack: u32,
    tsval: u32,
    their_epoch: u32,
    their_seq: u32,
}

/// What the events said so far.
#[derive(Default)]
struct Story {
    /// Peers up, with the slots of their devices.
    peers: BTreeMap<(u16, MacAddr), BTreeSet<u8>>,
}

impl Story {
    fn event(&mut self, e: &FabricEvent) {
        match *e {
            FabricEvent::PeerUp { gid, peer, .. } => {
                assert!(
                    self.peers.insert((gid, peer), BTreeSet::new()).is_none(),
                    "{peer} up twice in {gid}"
                );
            }
            FabricEvent::PeerDown { gid, peer, .. } => {
                let devices = self.peers.remove(&(gid, peer)).expect("down before up");
                assert!(devices.is_empty(), "{peer} down with devices {devices:?}");
            }
            FabricEvent::DeviceAdded { gid, peer, device } => {
                let p = self.peers.get_mut(&(gid, peer)).expect("device of no peer");
                assert!(p.insert(device.slot), "slot {} added twice", device.slot);
            }
            FabricEvent::DeviceRemoved { gid, peer, slot } => {
                let p = self.peers.get_mut(&(gid, peer)).expect("device of no peer");
                assert!(p.remove(&slot), "slot {slot} removed but not there");
            }
            FabricEvent::Tlp { gid, peer, ref tlp } => {
                assert!(self.peers.contains_key(&(gid, peer)), "TLP from no peer");
                assert!(!tlp.is_empty());
            }
            FabricEvent::PeerRestarted { gid, peer, .. } => {
                assert!(self.peers.contains_key(&(gid, peer)));
            }
            FabricEvent::GroupChanged { from, to, .. } => {
                assert!(wire::valid_gid(from) && wire::valid_gid(to) && from != to);
            }
            FabricEvent::CtrlResult { .. } => {}
        }
    }

    /// After the events are drained: the same peers and devices as the node shows.
    fn matches(&self, n: &Node) {
        let shown: BTreeMap<(u16, MacAddr), BTreeSet<u8>> = n
            .peers()
            .map(|(g, m, _, _, d)| ((g, m), d.iter().map(|d| d.slot).collect()))
            .collect();
        assert_eq!(&shown, &self.peers);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let role = pick_role(i.u8());
    let mut cfg = NodeConfig::new(OURS, role, i.u8() as u64, i.u32());
    cfg.mtu = 128 + i.u16() % (u16::MAX - 127);
    cfg.info_interval_us = 1 + i.u16() as u64 * 16;
    cfg.missed_infos = i.u8() as u32 % 5;
    cfg.max_peers = 1 + i.u8() as usize % 8;
    cfg.session.window = 1 + i.u8() as u32 % 16;
    cfg.session.recv_queue = 1 + i.u8() as usize % 64;
    cfg.session.send_queue = 1 + i.u8() as usize % 64;
    cfg.session.max_tlps_per_frame = 1 + i.u8() as usize % 8;
    cfg.session.ack_every = 1 + i.u8() as u32 % 8;
    cfg.session.retry_limit = i.u8() as u32 % 4;
    cfg.session.rto_min_us = 1 + i.u16() as u64;
    cfg.session.rto_initial_us = cfg.session.rto_min_us + i.u16() as u64;
    cfg.session.rto_max_us = cfg.session.rto_initial_us + i.u16() as u64;
    // Some groups keyed: the fuzzed peers tag their frames with the group's key, the
    // wrong key or none.
    let keys = [
        wire::AuthKey::from_secret(&[1; 32]),
        wire::AuthKey::from_secret(&[2; 32]),
    ];
    let keyed: Vec<u16> = (0..i.u8() % 3).map(|_| gid(&mut i)).collect();
    let mut nonces = wire::NonceSeq::new(0x0f0f, 1);
    cfg.keys = std::sync::Arc::new(keyed.iter().map(|&g| (g, keys[0].clone())).collect());
    // Sometimes a box that obeys signed requests only (of nobody: the fuzzed ones are
    // unsigned, or signed by no one it trusts).
    if i.u8() & 1 == 1 {
        cfg.managers = Some(std::sync::Arc::new(fabric::keys::TrustedManagers::default()));
    }
    let Ok(mut n) = Node::new(cfg.clone()) else {
        return;
    };
    for _ in 0..i.u8() % 5 {
        match role {
            BridgeRole::IoBox => {
                let _ = n.add_device(device(&mut i));
            }
            _ => {
                let _ = n.join(gid(&mut i));
            }
        }
    }
    let mut now = i.u64();
    let mut before = counters(&n.stats());
    let mut handed_in = 0u64;
    let mut links: BTreeMap<(u16, MacAddr), Link> = BTreeMap::new();
    let mut story = Story::default();
    let mut waiting = 0;
    let mut buf = vec![0u8; 9100];
    let mut steps = 0;
    while !i.done() && steps < 1000 {
        steps += 1;
        match i.u8() % 16 {
            0 => {
                now = i.advance(now, Some(n.poll_timeout()));
            }
            1 => n.handle_timeout(now),
            2 => {
                let small = i.u8() & 1 == 0;
                for _ in 0..(1 + i.u8() % 64) {
                    let frame = if small {
                        // A port buffer that may be too small.
                        let mut b = vec![0u8; i.u16() as usize % 2048];
                        match n.poll_transmit_into(now, &mut b) {
                            None => break,
                            Some(Err(len)) => {
                                assert!(len > b.len());
                                continue;
                            }
                            Some(Ok(len)) => {
                                b.truncate(len);
                                b
                            }
                        }
                    } else {
                        let Some(f) = n.poll_transmit(now) else { break };
                        f
                    };
                    let f = Frame::parse(&frame, None).expect("the node sends frames that parse");
                    assert_eq!(f.ethernet.src, OURS);
                    let g = f.gid().expect("the node tags its frames");
                    assert!(wire::valid_gid(g), "sent in group {g}: {:?}", f.header.kind);
                    assert_eq!(
                        f.authenticate(cfg.keys.get(&g)),
                        Ok(()),
                        "a {:?} frame of group {g} not tagged as its key says",
                        f.header.kind
                    );
                    if matches!(
                        f.header.kind,
                        FrameKind::Data | FrameKind::Ack | FrameKind::Nak
                    ) {
                        let l = links.entry((g, f.ethernet.dst)).or_default();
                        l.epoch = f.header.epoch;
                        l.seq = f.header.seq;
                        l.ack = f.header.ack;
                        l.tsval = f.header.tsval;
                    }
                }
            }
            3 => {
                let (g, p) = (gid(&mut i), peer(&mut i));
                let len = i.u16() as usize % 1024;
                let tlp = i.bytes(len);
                let _ = n.send_tlp(g, p, tlp);
            }
            4 => match i.u8() % 4 {
                0 => {
                    let _ = n.join(gid(&mut i));
                }
                1 => n.leave(gid(&mut i)),
                2 => {
                    let _ = n.add_device(device(&mut i));
                }
                _ => {
                    let (g, p) = (gid(&mut i), peer(&mut i));
                    let _ = n.set_group(g, p, i.u8() as u64, i.u8() % 8, gid(&mut i));
                }
            },
            5 | 6 => {
                // Raw bytes, with or without a tag the port stripped.
                let len = i.u16() as usize % 2048;
                let frame = i.bytes(len);
                let stripped = (i.u8() & 1 == 0).then(|| VlanTag::from_tci(gid(&mut i)));
                n.handle_frame(now, frame, stripped);
                handed_in += 1;
            }
            _ => {
                let src = peer(&mut i);
                let dst = match i.u8() % 4 {
                    0 | 1 => OURS,
                    2 => MacAddr::BROADCAST,
                    _ => mac(&mut i),
                };
                let g = gid(&mut i);
                let tag = VlanTag {
                    pcp: 0,
                    dei: false,
                    vid: g & 0xfff,
                };
                let tag_mode = i.u8() % 4;
                let eth = EthernetRepr {
                    dst,
                    src,
                    vlan: (tag_mode < 2).then_some(tag),
                    ethertype: ETHERTYPE,
                };
                let stripped = (tag_mode == 2).then_some(tag);
                let key = match i.u8() % 4 {
                    0 => None,
                    1 => Some(&keys[1]),
                    // Mostly the right one, where the group has one.
                    _ => cfg.keys.get(&(g & 0xfff)),
                };
                let l = links.entry((g & 0xfff, src)).or_default();
                let len = match i.u8() % 8 {
                    0 | 1 => {
                        let mut h = TetherHeader::new(FrameKind::Info);
                        h.epoch = i.u32();
                        // A freshness counter near our clock, mostly rising.
                        let c = now.wrapping_add(i.u8() as u64 * 1000).wrapping_sub(64_000);
                        (h.seq, h.ack) = ((c >> 32) as u32, c as u32);
                        let info = InfoRepr {
                            role: pick_role(i.u8()),
                            flags: i.u16(),
                            bridge_id: i.u8() as u64,
                            mtu: i.u16(),
                            max_tlps_per_frame: i.u16(),
                            interval_ms: i.u16(),
                            max_payload: i.u16(),
                            max_read_request: i.u16(),
                        };
                        let devices: Vec<DeviceInfo> =
                            (0..i.u8() % 6).map(|_| device(&mut i)).collect();
                        emit_info(&mut buf, &eth, &h, &info, &devices, key)
                    }
                    2 => {
                        let mut h = TetherHeader::new(FrameKind::Ctrl);
                        h.epoch = i.u32();
                        let c = now.wrapping_add(i.u8() as u64 * 1000).wrapping_sub(64_000);
                        (h.seq, h.ack) = ((c >> 32) as u32, c as u32);
                        let ctrl = CtrlRepr {
                            op: match i.u8() % 3 {
                                0 => CtrlOp::SetGroup,
                                1 => CtrlOp::Reset,
                                _ => CtrlOp::Result,
                            },
                            status: match i.u8() % 4 {
                                0 => CtrlStatus::Ok,
                                1 => CtrlStatus::NoSuchDevice,
                                2 => CtrlStatus::BadGroup,
                                _ => CtrlStatus::Refused,
                            },
                            gid: gid(&mut i),
                            request_id: i.u32(),
                            target: if i.u8() & 1 == 0 {
                                cfg.bridge_id
                            } else {
                                i.u64()
                            },
                            slot: i.u8() % 8,
                        };
                        emit_ctrl(&mut buf, &eth, &h, &ctrl, key)
                    }
                    k => {
                        let kind = match k {
                            3..=5 => FrameKind::Data,
                            6 => FrameKind::Ack,
                            _ => FrameKind::Nak,
                        };
                        let sel = i.u16();
                        if sel & 3 == 3 {
                            l.their_epoch = l.their_epoch.wrapping_add(1);
                            l.their_seq = 0;
                        } else if sel & 3 == 2 {
                            l.their_epoch = i.u32();
                        }
                        let h = TetherHeader {
                            kind,
                            flags: i.u8() & !flags::AUTH,
                            epoch: l.their_epoch,
                            peer_epoch: match (sel >> 2) & 3 {
                                0 | 1 => l.epoch,
                                2 => 0,
                                _ => i.u32(),
                            },
                            seq: match (sel >> 4) & 3 {
                                0 | 1 => l.their_seq,
                                2 => l.their_seq.wrapping_add(i.u8() as u32).wrapping_sub(128),
                                _ => i.u32(),
                            },
                            ack: match (sel >> 6) & 3 {
                                0 | 1 => l.seq.wrapping_add(1),
                                2 => l.seq.wrapping_add(i.u8() as u32).wrapping_sub(128),
                                _ => i.u32(),
                            },
                            tsval: now as u32,
                            tsecr: if (sel >> 8) & 1 == 0 {
                                l.tsval
                            } else {
                                i.u32()
                            },
                            window: i.u16(),
                            echo_wait: i.u8(),
                        };
                        if kind == FrameKind::Data && h.seq == l.their_seq {
                            l.their_seq = l.their_seq.wrapping_add(1);
                        }
                        // Session frames are sealed with the sender's session key.
                        let session_key = key.map(|k| k.session_key(src));
                        let seal = session_key.as_ref().map(|key| wire::Seal {
                            key,
                            nonce: nonces.next(),
                        });
                        FrameWriter::sealed(&mut buf, &eth, seal).and_then(|mut w| {
                            if kind == FrameKind::Data {
                                for _ in 0..i.u8() % 9 {
                                    let len = i.u8() as usize;
                                    let tlp = i.bytes(len);
                                    if w.push_tlp_bytes(tlp).is_err() {
                                        break;
                                    }
                                }
                            }
                            w.finish(&h)
                        })
                    }
                };
                let Ok(len) = len else { continue };
                let since = now.saturating_sub(i.u8() as u64);
                n.handle_frame_since(now, since, &buf[..len], stripped);
                handed_in += 1;
            }
        }
        // The caller takes every event, only the control ones (TLPs stay in their
        // sessions: back-pressure), or none this time.
        let pending = n.pending_events();
        match i.u8() % 4 {
            0 => {}
            1 => {
                while let Some(e) = n.poll_control_event() {
                    assert!(!matches!(e, FabricEvent::Tlp { .. }));
                    story.event(&e);
                }
            }
            _ => {
                while let Some(e) = n.poll_event() {
                    story.event(&e);
                }
                assert_eq!(
                    n.pending_events(),
                    0,
                    "events left after poll_event said none"
                );
                story.matches(&n);
            }
        }
        // What waits is bounded: a step can take down every peer (each with at most
        // 255 devices), an INFO replace 255 devices with 255 others, and each session
        // holds at most its receive queue of TLPs.
        assert!(
            pending <= waiting + cfg.max_peers * (256 + cfg.session.recv_queue) + 2 * 256 + 8,
            "{pending} events waiting, {waiting} before the step"
        );
        waiting = n.pending_events();
        assert!(n.peers().count() <= cfg.max_peers);
        assert_counters_grew(&mut before, counters(&n.stats()));
        assert_eq!(n.stats().frames_in, handed_in);
    }
});
