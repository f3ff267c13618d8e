//! A management station (`tether ctl`), sans-IO: it listens to the INFO frames of
//! every group on the segment to build an inventory of bridges and devices, and sends
//! CTRL requests (SET_GROUP) to I/O boxes, matching their RESULT answers.
//!
//! Unlike a [`Node`](crate::Node) it is passive: it announces nothing and joins no
//! group, so hosts and boxes never see it as a peer and never make a session with it.
//! Its port must see every VLAN of the segment (a Linux bridge without VLAN filtering
//! or a switch trunk port does). It reads a keyed group's frames, and sends CTRL into
//! it, only with that group's key ([`Manager::with_keys`]): the same rule as a node's.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};

use wire::{BridgeRole, CtrlOp, CtrlStatus, DeviceInfo, Frame, FrameKind, MacAddr};

use crate::keys::ManagerSigner;
use crate::node::{ctrl_frame, set_group_request, Credentials, GroupKeys};
use crate::FabricError;

/// A bridge seen on the segment, in one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenBridge {
    pub gid: u16,
    pub mac: MacAddr,
    pub role: BridgeRole,
    pub bridge_id: u64,
    /// Devices it announces in this group (an I/O box).
    pub devices: Vec<DeviceInfo>,
    pub mtu: u16,
    pub interval_ms: u16,
    /// When its last INFO arrived (µs, the caller's clock).
    pub last_seen: u64,
    pub infos: u64,
}

/// Counters of the manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ManagerStats {
    pub frames_in: u64,
    pub infos_in: u64,
    /// Frames that failed the wire check or did not parse.
    pub bad_frames: u64,
    /// Untagged frames, session frames and other traffic a manager does not read.
    pub ignored: u64,
    pub ctrl_out: u64,
    pub results_in: u64,
    /// Frames refused by the group-key rule (no tag in a keyed group, a bad tag, a
    /// tag in a group we have no key for).
    pub auth_refused: u64,
    /// INFO of (group, bridge) pairs not yet known, dropped because
    /// [`Manager::with_max_bridges`] were known already.
    pub bridges_refused: u64,
}

/// (group, bridge) pairs a manager keeps by default.
pub const MAX_BRIDGES: usize = 4096;

/// What the manager learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagerEvent {
    /// The first INFO of a bridge in a group.
    Seen { gid: u16, mac: MacAddr },
    /// The answer to a request of ours.
    Result {
        from: MacAddr,
        request_id: u32,
        status: CtrlStatus,
    },
}

/// The management station.
pub struct Manager {
    mac: MacAddr,
    epoch: u32,
    bridges: BTreeMap<(u16, MacAddr), SeenBridge>,
    next_request: u32,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<ManagerEvent>,
    stats: ManagerStats,
    keys: GroupKeys,
    /// Wall clock = the caller's clock + this (see `NodeConfig::wall_offset_us`).
    wall_offset_us: u64,
    last_now: u64,
    last_counter: u64,
    signer: Option<std::sync::Arc<ManagerSigner>>,
    max_bridges: usize,
}

impl Manager {
    pub fn new(mac: MacAddr, epoch: u32) -> Manager {
        Manager {
            mac,
            epoch: epoch.max(1),
            bridges: BTreeMap::new(),
            next_request: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: ManagerStats::default(),
            keys: GroupKeys::default(),
            wall_offset_us: 0,
            last_now: 0,
            last_counter: 0,
            signer: None,
            max_bridges: MAX_BRIDGES,
        }
    }

    /// Keeps at most `n` (group, bridge) pairs: INFO of new ones beyond that is
    /// dropped (and counted) until [`Manager::expire`] makes room, so that a flood of
    /// strangers cannot grow a long-running manager without bound.
    pub fn with_max_bridges(mut self, n: usize) -> Manager {
        self.max_bridges = n;
        self
    }

    /// Requests are signed with `signer` (boxes with `[bridge] managers` obey only
    /// signed ones).
    pub fn with_signer(mut self, signer: std::sync::Arc<ManagerSigner>) -> Manager {
        self.signer = Some(signer);
        self
    }

    /// The wall clock is the caller's clock plus `offset` µs (CTRL frames carry a
    /// counter from it, which boxes check: docs/wire-format.md, "Authentication").
    pub fn with_wall_offset(mut self, offset: u64) -> Manager {
        self.wall_offset_us = offset;
        self
    }

    /// The keys of the groups that authenticate their frames.
    pub fn with_keys(mut self, keys: GroupKeys) -> Manager {
        self.keys = keys;
        self
    }

    pub fn stats(&self) -> ManagerStats {
        self.stats
    }

    /// Every (group, bridge) heard from, by group then MAC.
    pub fn bridges(&self) -> impl Iterator<Item = &SeenBridge> {
        self.bridges.values()
    }

    /// The box announcing a device in `slot` with bridge id or MAC `box_id`, and the
    /// group it is in now: (group, MAC, bridge id).
    pub fn find_device(&self, box_id: u64, slot: u8) -> Option<(u16, MacAddr, u64)> {
        self.bridges
            .values()
            .filter(|b| b.role == BridgeRole::IoBox)
            .filter(|b| b.bridge_id == box_id || mac_value(b.mac) == box_id)
            .filter(|b| b.devices.iter().any(|d| d.slot == slot))
            .max_by_key(|b| b.last_seen)
            .map(|b| (b.gid, b.mac, b.bridge_id))
    }

    /// Takes one frame from the port (`stripped_vlan`: a tag the port reported apart).
    pub fn handle_frame(&mut self, now: u64, bytes: &[u8], stripped_vlan: Option<wire::VlanTag>) {
        self.stats.frames_in += 1;
        self.last_now = self.last_now.max(now);
        let Ok(frame) = Frame::parse(bytes, stripped_vlan) else {
            self.stats.bad_frames += 1;
            return;
        };
        let Some(gid) = frame.gid() else {
            self.stats.ignored += 1;
            return;
        };
        if frame.header.kind.is_session() {
            // Sessions are between bridges; a manager reads INFO and CTRL only.
            self.stats.ignored += 1;
            return;
        }
        if frame.authenticate(self.keys.get(&gid)).is_err() {
            self.stats.auth_refused += 1;
            return;
        }
        match (frame.header.kind, frame.body()) {
            (FrameKind::Info, Ok(wire::Body::Info(info))) => {
                self.stats.infos_in += 1;
                let mac = frame.ethernet.src;
                let seen = SeenBridge {
                    gid,
                    mac,
                    role: info.repr.role,
                    bridge_id: info.repr.bridge_id,
                    devices: info.devices().collect(),
                    mtu: info.repr.mtu,
                    interval_ms: info.repr.interval_ms,
                    last_seen: now,
                    infos: 1,
                };
                let full = self.bridges.len() >= self.max_bridges;
                match self.bridges.entry((gid, mac)) {
                    Entry::Vacant(_) if full => self.stats.bridges_refused += 1,
                    Entry::Vacant(v) => {
                        self.events.push_back(ManagerEvent::Seen { gid, mac });
                        v.insert(seen);
                    }
                    Entry::Occupied(mut o) => {
                        let infos = o.get().infos + 1;
                        *o.get_mut() = SeenBridge { infos, ..seen };
                    }
                }
            }
            (FrameKind::Ctrl, Ok(wire::Body::Ctrl(c)))
                if c.op == CtrlOp::Result && frame.ethernet.dst == self.mac =>
            {
                self.stats.results_in += 1;
                self.events.push_back(ManagerEvent::Result {
                    from: frame.ethernet.src,
                    request_id: c.request_id,
                    status: c.status,
                });
            }
            (FrameKind::Info | FrameKind::Ctrl, Err(_)) => self.stats.bad_frames += 1,
            _ => self.stats.ignored += 1,
        }
    }

    /// Forgets bridges not heard from since `before` (µs).
    pub fn expire(&mut self, before: u64) {
        self.bridges.retain(|_, b| b.last_seen >= before);
    }

    /// Asks the box `box_id` at `box_mac`, reached in its device's group `via_gid`,
    /// to move the device in `slot` to `new_gid`. Returns the request id its
    /// [`ManagerEvent::Result`] will carry.
    pub fn set_group(
        &mut self,
        via_gid: u16,
        box_mac: MacAddr,
        box_id: u64,
        slot: u8,
        new_gid: u16,
    ) -> Result<u32, FabricError> {
        if !wire::valid_gid(via_gid) {
            return Err(FabricError::BadGroup(via_gid));
        }
        let ctrl = set_group_request(&mut self.next_request, box_id, slot, new_gid)?;
        let wall = self.last_now.saturating_add(self.wall_offset_us);
        self.last_counter = wall.max(self.last_counter.saturating_add(1));
        let creds = Credentials {
            key: self.keys.get(&via_gid),
            signer: self.signer.as_deref(),
        };
        self.out.push_back(ctrl_frame(
            self.mac,
            self.epoch,
            self.last_counter,
            via_gid,
            box_mac,
            &ctrl,
            creds,
        ));
        self.stats.ctrl_out += 1;
        Ok(ctrl.request_id)
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ManagerEvent> {
        self.events.pop_front()
    }
}

/// A MAC address as the number a user may type for it (02:00:00:00:00:01 = 0x020000000001).
pub fn mac_value(mac: MacAddr) -> u64 {
    mac.0.iter().fold(0u64, |v, b| (v << 8) | *b as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FabricEvent, Node, NodeConfig};

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn memdev(slot: u8, gid: u16) -> DeviceInfo {
        wire::sample::memdev(slot, gid)
    }

    /// Runs frames between the nodes and the manager (a shared segment) until quiet.
    fn settle(now: u64, nodes: &mut [&mut Node], m: &mut Manager) {
        for _ in 0..20 {
            let mut frames = Vec::new();
            for n in nodes.iter_mut() {
                n.handle_timeout(now);
                while let Some(f) = n.poll_transmit(now) {
                    frames.push(f);
                }
            }
            while let Some(f) = m.poll_transmit() {
                frames.push(f);
            }
            if frames.is_empty() {
                return;
            }
            for f in &frames {
                for n in nodes.iter_mut() {
                    n.handle_frame(now, f, None);
                }
                m.handle_frame(now, f, None);
            }
        }
    }

    #[test]
    fn sees_every_group_and_moves_a_device() {
        let mut boxn = Node::new(NodeConfig::new(mac(1), BridgeRole::IoBox, 0xb0, 1)).unwrap();
        boxn.add_device(memdev(0, 10)).unwrap();
        boxn.add_device(memdev(1, 4093)).unwrap();
        let mut host = Node::new(NodeConfig::new(mac(2), BridgeRole::Host, 0xa, 1)).unwrap();
        host.join(20).unwrap();
        let mut m = Manager::new(mac(9), 1);
        settle(0, &mut [&mut boxn, &mut host], &mut m);

        let seen: Vec<_> = m.bridges().map(|b| (b.gid, b.mac, b.role)).collect();
        assert_eq!(
            seen,
            vec![
                (10, mac(1), BridgeRole::IoBox),
                (20, mac(2), BridgeRole::Host),
                (4093, mac(1), BridgeRole::IoBox)
            ]
        );
        // The manager is nobody's peer.
        assert!(host.peers().all(|p| p.1 != mac(9)));
        assert_eq!(m.find_device(0xb0, 1), Some((4093, mac(1), 0xb0)));
        assert_eq!(
            m.find_device(mac_value(mac(1)), 0),
            Some((10, mac(1), 0xb0))
        );
        assert_eq!(m.find_device(0xb0, 7), None);

        // Move the free device to the host's group: the host gets it by hot-plug.
        let id = m.set_group(4093, mac(1), 0xb0, 1, 20).unwrap();
        settle(1000, &mut [&mut boxn, &mut host], &mut m);
        let mut results = Vec::new();
        while let Some(e) = m.poll_event() {
            if let ManagerEvent::Result {
                request_id,
                status,
                from,
            } = e
            {
                results.push((request_id, status, from));
            }
        }
        assert_eq!(results, vec![(id, CtrlStatus::Ok, mac(1))]);
        let mut plugged = false;
        while let Some(e) = host.poll_event() {
            plugged |=
                matches!(e, FabricEvent::DeviceAdded { gid: 20, device, .. } if device.slot == 1);
        }
        assert!(plugged);
        assert_eq!(m.find_device(0xb0, 1).map(|d| d.0), Some(20));
        let moves = std::iter::from_fn(|| boxn.poll_event())
            .filter(|e| matches!(e, FabricEvent::GroupChanged { .. }))
            .count();
        assert_eq!(moves, 1);

        // The same request again (as after a lost RESULT): Ok, and nothing moves.
        let id = m.set_group(20, mac(1), 0xb0, 1, 20).unwrap();
        settle(1500, &mut [&mut boxn, &mut host], &mut m);
        assert!(std::iter::from_fn(|| m.poll_event()).any(|e| e
            == ManagerEvent::Result {
                from: mac(1),
                request_id: id,
                status: CtrlStatus::Ok
            }));
        assert!(!std::iter::from_fn(|| boxn.poll_event())
            .any(|e| matches!(e, FabricEvent::GroupChanged { .. })));

        // A request for a slot the box does not have is answered NoSuchDevice.
        let id = m.set_group(10, mac(1), 0xb0, 5, 20).unwrap();
        settle(2000, &mut [&mut boxn, &mut host], &mut m);
        let r = std::iter::from_fn(|| m.poll_event())
            .find(|e| matches!(e, ManagerEvent::Result { .. }));
        assert_eq!(
            r,
            Some(ManagerEvent::Result {
                from: mac(1),
                request_id: id,
                status: CtrlStatus::NoSuchDevice
            })
        );
        assert!(m.set_group(10, mac(1), 0xb0, 0, 0).is_err());
        assert!(m.set_group(4095, mac(1), 0xb0, 0, 10).is_err());
    }

    #[test]
    fn junk_is_counted_not_fatal() {
        let mut m = Manager::new(mac(9), 1);
        m.handle_frame(0, &[0u8; 10], None);
        m.handle_frame(0, &[0xffu8; 200], None);
        assert_eq!(m.stats().bad_frames, 2);
        assert_eq!(m.bridges().count(), 0);
        m.expire(10);
        assert_eq!(m.poll_event(), None);
    }

    /// A manager keeps at most its cap of (group, bridge) pairs: a flood of new ones
    /// is counted and dropped, known ones still refresh, and expiry makes room again.
    #[test]
    fn a_flood_of_bridges_stays_within_the_cap() {
        let mut m = Manager::new(mac(9), 1).with_max_bridges(3);
        let mut nodes: Vec<Node> = (1..=5u8)
            .map(|i| {
                let mut n =
                    Node::new(NodeConfig::new(mac(i), BridgeRole::Host, i as u64, 1)).unwrap();
                n.join(10).unwrap();
                n
            })
            .collect();
        let info = |n: &mut Node, now: u64| {
            n.handle_timeout(now);
            let mut v = Vec::new();
            while let Some(f) = n.poll_transmit(now) {
                v.push(f);
            }
            v
        };
        for (i, n) in nodes.iter_mut().enumerate() {
            for f in info(n, i as u64) {
                m.handle_frame(i as u64, &f, None);
            }
        }
        assert_eq!(m.bridges().count(), 3);
        assert_eq!(m.stats().bridges_refused, 2);
        // The first ones were heard again later; the rest expire.
        for n in nodes.iter_mut().take(1) {
            for f in info(n, 1_000_000) {
                m.handle_frame(1_000_000, &f, None);
            }
        }
        m.expire(500_000);
        assert_eq!(m.bridges().count(), 1);
        for f in info(&mut nodes[4], 2_000_000) {
            m.handle_frame(2_000_000, &f, None);
        }
        assert_eq!(m.bridges().count(), 2);
    }
}
