//! One bridge on the Ethernet segment, sans-IO: frames in (`handle_frame`), frames out
//! (`poll_transmit`), TLPs to and from peers, events, time passed in (µs).
//!
//! - Every bridge broadcasts an INFO frame in each of its groups every
//!   `info_interval_us`: its role, its id, and (an I/O box) the devices that are in
//!   that group. A peer is up from its first INFO; it is down after `missed_infos`
//!   intervals of silence (no INFO, and no frame its session took) or when its efe
//!   session gives up. Devices come and go with
//!   the INFO lists: [`FabricEvent::DeviceAdded`] and [`FabricEvent::DeviceRemoved`].
//! - TLPs travel in one efe session per (group, peer). A session is made when the
//!   peer's INFO first arrives; a peer that went down and comes back gets a new one,
//!   under a new epoch, so both sides start clean.
//! - INFO carries its sender's boot epoch (random per run: [`crate::EpochSource`]). A
//!   known peer's INFO with a new one means it restarted, seen even before any DATA
//!   of the new run: the session drops what it held for the old run (counted, and
//!   reported in [`FabricEvent::PeerRestarted`]) and starts over. An INFO with an
//!   epoch the peer had before is refused (`stale_infos`).
//! - Frames of groups this bridge is not in are dropped and counted, and so are frames
//!   that fail the wire check, frames from unknown peers and our own echoes.
//! - A group with a key ([`NodeConfig::keys`]) takes only frames whose authentication
//!   tag is valid under it, checked before the frame changes anything; every frame
//!   sent in it carries a tag. A group without one takes no tagged frame.
//! - An I/O box obeys CTRL SET_GROUP addressed to it: the device moves to the new
//!   group (its INFO entry leaves the old group's list, so the old host sees a
//!   hot-remove, and appears in the new one's), and the box answers with RESULT.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use efe::Session;

use crate::keys::{ManagerSigner, TrustedManagers};
use thiserror::Error;
use wire::{
    emit_ctrl, emit_info, AuthKey, AuthRefusal, BridgeRole, CtrlOp, CtrlRepr, CtrlStatus,
    DeviceInfo, EthernetRepr, Frame, FrameKind, InfoRepr, MacAddr, SessionKey, TetherHeader,
    VlanTag, ETHERTYPE,
};

/// The broadcast address INFO goes to.
pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub mac: MacAddr,
    pub role: BridgeRole,
    pub bridge_id: u64,
    /// Ethernet payload size of the port.
    pub mtu: u16,
    pub info_interval_us: u64,
    /// A peer silent for this many INFO intervals is down.
    pub missed_infos: u32,
    /// Most peers (one per group and address, each with its session) kept at once:
    /// the INFO of a new one beyond that is dropped (`FabricStats::peers_refused`),
    /// since anyone on the segment can send INFO from any address.
    pub max_peers: usize,
    /// Most peers in one group: a new one beyond that is refused (`peers_refused`),
    /// so that strangers filling one group leave the others alone.
    pub max_peers_per_group: usize,
    /// INFO frames from senders that are not peers taken per second at most (a
    /// burst of as many): the rest are dropped (`infos_limited`) before anything is
    /// made for them. Peers' INFO is never limited.
    pub stranger_infos_per_s: u32,
    /// Session settings (its MTU is set from `mtu`).
    pub session: efe::Config,
    /// Boot epoch of this run of the bridge: non-zero, and random per run (tether
    /// draws it: [`crate::fresh_epoch`]), so it may fall anywhere relative to the
    /// previous run's, even within its session epochs' span (peers still see the
    /// restart from INFO). Sessions count up from it.
    pub epoch: u32,
    /// PCIe sizes announced in INFO.
    pub max_payload: u16,
    pub max_read_request: u16,
    /// Keys of the groups that authenticate their frames (docs/wire-format.md,
    /// "Authentication"); a group not named here runs on a trusted segment.
    pub keys: GroupKeys,
    /// Added to the caller's clock (`now`) to give the wall clock in µs since the
    /// Unix epoch: the freshness counter of INFO and CTRL frames counts from it, so
    /// that it keeps going up across restarts. 0: the caller's clock is the wall
    /// clock (tests).
    pub wall_offset_us: u64,
    /// In a keyed group, a CTRL frame whose counter is further than this from our
    /// wall clock (either way) is refused: a captured request cannot be replayed
    /// after the box restarted, when it no longer remembers the last counter.
    pub max_ctrl_age_us: u64,
    /// The managers whose signed SET_GROUP and RESET a box obeys (`[bridge]
    /// managers`); `None`: unsigned requests are obeyed too (trusted management).
    pub managers: Option<Arc<TrustedManagers>>,
    /// The key this node signs its own SET_GROUP requests with (a node acting as a
    /// manager), if any.
    pub signer: Option<Arc<ManagerSigner>>,
}

/// The groups' frame keys, shared by the node and whoever sends on its behalf.
pub type GroupKeys = Arc<BTreeMap<u16, AuthKey>>;

impl NodeConfig {
    pub fn new(mac: MacAddr, role: BridgeRole, bridge_id: u64, epoch: u32) -> NodeConfig {
        NodeConfig {
            mac,
            role,
            bridge_id,
            mtu: 1500,
            info_interval_us: 100_000,
            missed_infos: 3,
            max_peers: 1024,
            max_peers_per_group: 64,
            stranger_infos_per_s: 100,
            session: efe::Config::default(),
            epoch: epoch.max(1),
            max_payload: 256,
            max_read_request: 512,
            keys: GroupKeys::default(),
            wall_offset_us: 0,
            max_ctrl_age_us: 60_000_000,
            managers: None,
            signer: None,
        }
    }
}

/// Why a peer went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// No INFO for `missed_infos` intervals.
    Silent,
    /// Its session ran out of retries; `lost` TLPs were discarded.
    Unreachable { lost: u64 },
    /// We left its group (`Node::leave`).
    Left,
}

/// What happened on the fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FabricEvent {
    PeerUp {
        gid: u16,
        peer: MacAddr,
        role: BridgeRole,
        bridge_id: u64,
    },
    PeerDown {
        gid: u16,
        peer: MacAddr,
        reason: DownReason,
    },
    /// The peer restarted (its INFO or its frames came with a new epoch): the session
    /// started over; `lost` TLPs were dropped with the old one (ours queued or in
    /// flight, and its own received but not yet delivered). Devices behind it were
    /// reset by its restart.
    PeerRestarted { gid: u16, peer: MacAddr, lost: u64 },
    /// A device appeared in a group we are in (hot-plug).
    DeviceAdded {
        gid: u16,
        peer: MacAddr,
        device: DeviceInfo,
    },
    /// A device left (hot-remove): moved to another group, or its box went down.
    DeviceRemoved { gid: u16, peer: MacAddr, slot: u8 },
    /// A TLP from a peer.
    Tlp {
        gid: u16,
        peer: MacAddr,
        tlp: Vec<u8>,
    },
    /// (I/O box) A manager moved the device in `slot` from group `from` to `to`.
    GroupChanged { slot: u8, from: u16, to: u16 },
    /// (Manager) The answer to a CTRL request.
    CtrlResult {
        from: MacAddr,
        request_id: u32,
        status: CtrlStatus,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FabricStats {
    pub frames_in: u64,
    pub frames_out: u64,
    /// Frames of groups we are not in.
    pub other_group: u64,
    /// Frames that failed the wire check or did not parse.
    pub bad_frames: u64,
    /// Session frames from a bridge we have no INFO from.
    pub unknown_peer: u64,
    /// Our own broadcasts coming back.
    pub own_frames: u64,
    /// Frames the session refused (stale epoch, duplicates, ...), counted by efe too.
    pub session_refused: u64,
    /// INFO frames carrying a boot epoch their sender had before its restart.
    pub stale_infos: u64,
    /// TLPs received from a peer that went down before they were taken
    /// (`poll_event`): dropped with its session.
    pub tlps_not_taken: u64,
    pub infos_in: u64,
    pub infos_out: u64,
    pub ctrl_in: u64,
    pub peers_up: u64,
    pub peers_down: u64,
    /// INFO of new peers dropped because `max_peers` (or `max_peers_per_group` in
    /// its group) were known already.
    pub peers_refused: u64,
    /// INFO from senders that are not peers, dropped over `stranger_infos_per_s`.
    pub infos_limited: u64,
    /// INFO device entries dropped for naming a slot listed before in the same INFO.
    pub duplicate_devices: u64,
    /// Frames of a keyed group without a tag: dropped before anything else.
    pub auth_missing: u64,
    /// Frames whose tag is not valid under their group's key (forged, corrupted,
    /// another key): dropped before anything else.
    pub auth_bad: u64,
    /// Tagged frames of a group this bridge has no key for: dropped.
    pub auth_unexpected: u64,
    /// INFO frames of a keyed group whose freshness counter is not above the last
    /// one taken from that sender (replayed, or sent again): dropped.
    pub replayed_infos: u64,
    /// CTRL frames of a keyed group whose counter is not above the last one from
    /// that sender, or too far from our clock (`max_ctrl_age_us`): dropped.
    pub replayed_ctrl: u64,
    /// SET_GROUP/RESET requests sent in another group than the device's: refused.
    pub ctrl_wrong_group: u64,
    /// SET_GROUP/RESET requests without a trusted manager's valid signature, at a
    /// box that has `managers`: dropped.
    pub ctrl_unsigned: u64,
    /// Session frames of a keyed group whose epoch is neither the session's nor one
    /// of the peer's current run (the boot epoch of its last fresh INFO): frames of
    /// an earlier run, replayed, which would otherwise restart the session. Dropped.
    pub stale_run_frames: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FabricError {
    #[error("no session with {peer} in group {gid}")]
    NoPeer { gid: u16, peer: MacAddr },
    #[error("session: {0}")]
    Send(#[from] efe::SendError),
    #[error("group {0} is not a valid GID (1..=4094)")]
    BadGroup(u16),
    #[error("no device in slot {0}")]
    NoSlot(u8),
    #[error("session settings: {0}")]
    Config(#[from] efe::ConfigError),
}

/// How many earlier boot epochs of a peer are remembered (and refused).
const RETIRED_BOOTS: usize = 4;

struct Peer {
    session: Session,
    /// The key its session frames are sealed with, in a keyed group.
    rx_key: Option<SessionKey>,
    role: BridgeRole,
    bridge_id: u64,
    devices: Vec<DeviceInfo>,
    /// Its last INFO, or frame its session took (a peer busy sending is alive, even
    /// when its INFO is late or lost among its data).
    last_heard: u64,
    /// The boot epoch of its INFO.
    boot_epoch: u32,
    /// Its boot epochs before its latest restarts (0: none).
    retired_boots: [u32; RETIRED_BOOTS],
}

impl Peer {
    /// An INFO came with `epoch`: whether it is stale (refused), and otherwise
    /// whether the peer restarted. A new boot epoch is a restart unless the session
    /// provably follows the new run already (its DATA arrived first): the epoch it
    /// follows is a session epoch of the new run and not one of the old run. The
    /// session's epoch alone cannot tell when the two runs' spans overlap (boot epochs
    /// within `EPOCH_RUN_SPAN` of each other): that counts as a restart, since taking
    /// an old run's session for the new run's leaves the new run's DATA refused as an
    /// older session for good, while restarting a session that did follow the new run
    /// (odds 2^-15 per restart, and only if its INFO came after its DATA) drops what
    /// it held (counted) and refuses that session's epoch until the peer's session
    /// runs out of retries and makes a new one.
    fn boot(&mut self, epoch: u32) -> Boot {
        if epoch == self.boot_epoch {
            return Boot::Same;
        }
        if epoch == 0 || self.retired_boots.contains(&epoch) {
            return Boot::Stale;
        }
        let old = self.boot_epoch;
        self.retired_boots.rotate_right(1);
        self.retired_boots[0] = old;
        self.boot_epoch = epoch;
        let followed = self.session.peer_epoch();
        if followed != 0 && efe::epoch_of_run(epoch, followed) && !efe::epoch_of_run(old, followed)
        {
            Boot::Same
        } else {
            Boot::Restarted
        }
    }
}

enum Boot {
    Same,
    Restarted,
    Stale,
}

/// A bridge on the segment.
pub struct Node {
    cfg: NodeConfig,
    /// Groups of a host; an I/O box's groups are those of its devices.
    groups: BTreeSet<u16>,
    /// Groups left quietly ([`Node::leave_quietly`]): no longer announced, their
    /// known peers' frames still taken until the time given, when they are left.
    leaving: BTreeMap<u16, u64>,
    devices: Vec<DeviceInfo>,
    peers: BTreeMap<(u16, MacAddr), Peer>,
    /// Our own session key in each keyed group (our frames are sealed with it).
    tx_keys: BTreeMap<u16, SessionKey>,
    /// The nonces this node seals its session frames with: drawn from the operating
    /// system's random numbers by [`Node::new`], never taken from a config that could
    /// be reused (`wire::NonceSeq` says why they do not repeat).
    nonces: wire::NonceSeq,
    /// Bumped for every new session, so a peer sees each one as a new epoch.
    session_epoch: u32,
    next_info: u64,
    next_request: u32,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<FabricEvent>,
    /// The session the last TLP was taken from: the next comes from the one after.
    next_tlp_from: Option<(u16, MacAddr)>,
    stats: FabricStats,
    buf: Vec<u8>,
    /// The latest `now` the caller gave (for frames made between calls).
    last_now: u64,
    /// The freshness counter of our last INFO or CTRL frame.
    last_counter: u64,
    /// The last freshness counter taken from each sender of INFO, and of CTRL, in
    /// keyed groups (only key holders add entries; bounded, see `remember`).
    info_counters: BTreeMap<(u16, MacAddr), u64>,
    ctrl_counters: BTreeMap<(u16, MacAddr), u64>,
    /// Strangers' INFO the bucket still takes, and when it was last filled.
    stranger_tokens: u64,
    tokens_at: u64,
    /// Per group, when we may next answer a newcomer's INFO at once (our answer is
    /// a broadcast: one serves every newcomer of the moment).
    answer_after: BTreeMap<u16, u64>,
}

/// The freshness counter an INFO or CTRL frame carries in its `seq` (high 32 bits)
/// and `ack` (low 32 bits) fields: µs of the sender's wall clock, strictly rising.
pub fn frame_counter(h: &TetherHeader) -> u64 {
    (u64::from(h.seq) << 32) | u64::from(h.ack)
}

fn set_frame_counter(h: &mut TetherHeader, c: u64) {
    h.seq = (c >> 32) as u32;
    h.ack = c as u32;
}

/// Whether `counter` from `key` is above the last one remembered, remembering it if
/// so. The map keeps at most `cap` senders: when full, those that are not `live`
/// peers go first, then the one with the oldest counter.
fn remember(
    map: &mut BTreeMap<(u16, MacAddr), u64>,
    key: (u16, MacAddr),
    counter: u64,
    cap: usize,
    live: impl Fn(&(u16, MacAddr)) -> bool,
) -> bool {
    if map.get(&key).is_some_and(|&last| counter <= last) {
        return false;
    }
    if !map.contains_key(&key) && map.len() >= cap {
        map.retain(|k, _| live(k));
        if map.len() >= cap {
            if let Some(oldest) = map.iter().min_by_key(|(_, &c)| c).map(|(&k, _)| k) {
                map.remove(&oldest);
            }
        }
    }
    map.insert(key, counter);
    true
}

/// A SET_GROUP request for `slot` of bridge `target`, under the next request id
/// (taken from `next_request`, never 0).
pub(crate) fn set_group_request(
    next_request: &mut u32,
    target: u64,
    slot: u8,
    new_gid: u16,
) -> Result<CtrlRepr, FabricError> {
    if !wire::valid_gid(new_gid) {
        return Err(FabricError::BadGroup(new_gid));
    }
    let request_id = *next_request;
    *next_request = next_request.wrapping_add(1).max(1);
    Ok(CtrlRepr {
        op: CtrlOp::SetGroup,
        status: CtrlStatus::Ok,
        gid: new_gid,
        request_id,
        target,
        slot,
    })
}

/// A CTRL frame from `src` to `dst` in group `gid`, with freshness `counter`.
pub(crate) fn ctrl_frame(
    src: MacAddr,
    epoch: u32,
    counter: u64,
    gid: u16,
    dst: MacAddr,
    ctrl: &CtrlRepr,
    creds: Credentials<'_>,
) -> Vec<u8> {
    let eth = EthernetRepr {
        dst,
        src,
        vlan: tag(gid),
        ethertype: ETHERTYPE,
    };
    let mut h = TetherHeader::new(FrameKind::Ctrl);
    h.epoch = epoch;
    set_frame_counter(&mut h, counter);
    let mut buf = vec![0u8; 256];
    let n = match creds.signer {
        None => emit_ctrl(&mut buf, &eth, &h, ctrl, creds.key),
        Some(signer) => {
            let mut body = [0u8; wire::ctrl::CTRL_LEN];
            ctrl.emit(&mut body).expect("a CTRL body fits its size");
            let message = wire::ctrl::ctrl_signed_message(dst.0, src.0, gid, counter, &body);
            let block = signer.sign(&message);
            wire::FrameWriter::keyed(&mut buf, &eth, creds.key).and_then(|mut w| {
                w.append_with(|b| {
                    let n = body.len() + block.len();
                    let out = b
                        .get_mut(..n)
                        .ok_or(wire::WireError::NoRoom { needed: n, got: 0 })?;
                    out[..body.len()].copy_from_slice(&body);
                    out[body.len()..].copy_from_slice(&block);
                    Ok(n)
                })?;
                w.finish(&h)
            })
        }
    }
    .expect("a CTRL frame fits its own size");
    buf.truncate(n);
    buf
}

/// What a CTRL frame is sent with: the group's key, and for a request the
/// manager's signing key.
#[derive(Clone, Copy, Default)]
pub(crate) struct Credentials<'a> {
    pub key: Option<&'a AuthKey>,
    pub signer: Option<&'a ManagerSigner>,
}

pub(crate) fn tag(gid: u16) -> Option<VlanTag> {
    Some(VlanTag {
        pcp: 0,
        dei: false,
        vid: gid,
    })
}

impl Node {
    pub fn new(mut cfg: NodeConfig) -> Result<Node, FabricError> {
        cfg.session.mtu = cfg.mtu as usize;
        cfg.session.validate()?;
        if !cfg.keys.is_empty() {
            // A keyed group's sessions have the seal's room less.
            let mut keyed = cfg.session;
            keyed.mtu = keyed.mtu.saturating_sub(wire::SEAL_LEN);
            keyed.validate()?;
        }
        let tx_keys = cfg
            .keys
            .iter()
            .map(|(&gid, k)| (gid, k.session_key(cfg.mac)))
            .collect();
        let random64 =
            (u64::from(crate::epoch::os_random()) << 32) | u64::from(crate::epoch::os_random());
        Ok(Node {
            session_epoch: cfg.epoch,
            tx_keys,
            nonces: wire::NonceSeq::new(crate::epoch::os_random(), random64),
            buf: vec![0; cfg.mtu as usize + 64],
            cfg,
            groups: BTreeSet::new(),
            leaving: BTreeMap::new(),
            devices: Vec::new(),
            peers: BTreeMap::new(),
            next_info: 0,
            next_request: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_tlp_from: None,
            stats: FabricStats::default(),
            last_now: 0,
            last_counter: 0,
            info_counters: BTreeMap::new(),
            ctrl_counters: BTreeMap::new(),
            stranger_tokens: u64::MAX,
            tokens_at: 0,
            answer_after: BTreeMap::new(),
        })
    }

    /// Takes one token of the strangers' INFO bucket (`stranger_infos_per_s`, a burst
    /// of as many), if there is one.
    fn stranger_token(&mut self, now: u64) -> bool {
        let rate = u64::from(self.cfg.stranger_infos_per_s.max(1));
        if self.stranger_tokens == u64::MAX {
            // The first call: a full bucket.
            self.stranger_tokens = rate;
            self.tokens_at = now;
        }
        let earned = now.saturating_sub(self.tokens_at).saturating_mul(rate) / 1_000_000;
        if earned > 0 {
            self.stranger_tokens = self.stranger_tokens.saturating_add(earned).min(rate);
            self.tokens_at = now;
        }
        if self.stranger_tokens == 0 {
            return false;
        }
        self.stranger_tokens -= 1;
        true
    }

    /// The next freshness counter: our wall clock in µs, and above the last one.
    fn next_counter(&mut self) -> u64 {
        let wall = self.last_now.saturating_add(self.cfg.wall_offset_us);
        self.last_counter = wall.max(self.last_counter.saturating_add(1));
        self.last_counter
    }

    /// How many senders' counters are remembered per kind.
    fn counter_cap(&self) -> usize {
        self.cfg.max_peers.saturating_mul(2).max(16)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Sets [`NodeConfig::wall_offset_us`]: the wall clock is the caller's clock plus
    /// `offset` µs.
    pub fn set_wall_offset(&mut self, offset: u64) {
        self.cfg.wall_offset_us = offset;
    }

    pub fn stats(&self) -> FabricStats {
        self.stats
    }

    /// (Host, manager) Joins group `gid`.
    pub fn join(&mut self, gid: u16) -> Result<(), FabricError> {
        if !wire::valid_gid(gid) {
            return Err(FabricError::BadGroup(gid));
        }
        self.groups.insert(gid);
        self.leaving.remove(&gid);
        self.next_info = 0; // announce at once
        Ok(())
    }

    /// (I/O box) Adds a device; it is announced in its group.
    pub fn add_device(&mut self, device: DeviceInfo) -> Result<(), FabricError> {
        if !wire::valid_gid(device.gid) {
            return Err(FabricError::BadGroup(device.gid));
        }
        self.devices.retain(|d| d.slot != device.slot);
        self.leaving.remove(&device.gid);
        self.devices.push(device);
        self.next_info = 0;
        Ok(())
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// The group of the device in `slot`.
    pub fn device_group(&self, slot: u8) -> Option<u16> {
        self.devices.iter().find(|d| d.slot == slot).map(|d| d.gid)
    }

    fn in_group(&self, gid: u16) -> bool {
        self.groups.contains(&gid) || self.devices.iter().any(|d| d.gid == gid)
    }

    /// The groups this bridge is in: those it joined (a host, a manager; a box: a
    /// group a device just left, until [`Node::leave`] or [`Node::leave_quietly`])
    /// and those of its devices.
    pub fn groups(&self) -> BTreeSet<u16> {
        self.all_groups()
    }

    fn all_groups(&self) -> BTreeSet<u16> {
        let mut g = self.groups.clone();
        g.extend(self.devices.iter().map(|d| d.gid));
        g
    }

    /// Peers that are up: (group, MAC, role, id, devices they announce).
    pub fn peers(&self) -> impl Iterator<Item = (u16, MacAddr, BridgeRole, u64, &[DeviceInfo])> {
        self.peers
            .iter()
            .map(|(&(g, m), p)| (g, m, p.role, p.bridge_id, p.devices.as_slice()))
    }

    /// The role `peer` announced in group `gid`, if it is up.
    pub fn peer_role(&self, gid: u16, peer: MacAddr) -> Option<BridgeRole> {
        self.peers.get(&(gid, peer)).map(|p| p.role)
    }

    pub fn session_stats(&self, gid: u16, peer: MacAddr) -> Option<efe::Stats> {
        self.peers.get(&(gid, peer)).map(|p| p.session.stats())
    }

    /// Queues a TLP for `peer` in group `gid`.
    pub fn send_tlp(&mut self, gid: u16, peer: MacAddr, tlp: &[u8]) -> Result<(), FabricError> {
        let p = self
            .peers
            .get_mut(&(gid, peer))
            .ok_or(FabricError::NoPeer { gid, peer })?;
        p.session.send(tlp)?;
        Ok(())
    }

    /// Gives back the buffer of a TLP from `peer` ([`FabricEvent::Tlp`]) once it is
    /// used, for its session to reuse (`efe::Session::recycle`); optional.
    pub fn recycle(&mut self, gid: u16, peer: MacAddr, buf: Vec<u8>) {
        if let Some(p) = self.peers.get_mut(&(gid, peer)) {
            p.session.recycle(buf);
        }
    }

    /// Room in the session's send queue for more TLPs to `peer`.
    pub fn send_room(&self, gid: u16, peer: MacAddr) -> usize {
        self.peers
            .get(&(gid, peer))
            .map_or(0, |p| p.session.send_room())
    }

    /// (Manager) Asks the bridge `target` (by id, reached at `target_mac` in group
    /// `via_gid`) to move its device in `slot` to `new_gid`. The answer comes as
    /// [`FabricEvent::CtrlResult`] with the returned request id.
    pub fn set_group(
        &mut self,
        via_gid: u16,
        target_mac: MacAddr,
        target: u64,
        slot: u8,
        new_gid: u16,
    ) -> Result<u32, FabricError> {
        if !wire::valid_gid(via_gid) {
            return Err(FabricError::BadGroup(via_gid));
        }
        let ctrl = set_group_request(&mut self.next_request, target, slot, new_gid)?;
        self.push_ctrl(via_gid, target_mac, &ctrl);
        Ok(ctrl.request_id)
    }

    fn push_ctrl(&mut self, gid: u16, dst: MacAddr, ctrl: &CtrlRepr) {
        let counter = self.next_counter();
        let creds = Credentials {
            key: self.cfg.keys.get(&gid),
            // Requests are signed; answers need not be.
            signer: if ctrl.op == CtrlOp::Result {
                None
            } else {
                self.cfg.signer.as_deref()
            },
        };
        self.out.push_back(ctrl_frame(
            self.cfg.mac,
            self.cfg.epoch,
            counter,
            gid,
            dst,
            ctrl,
            creds,
        ));
    }

    /// The session settings for a peer in group `gid`: a keyed group's frames keep
    /// room for the seal within the MTU.
    fn session_config(&self, gid: u16) -> efe::Config {
        let mut c = self.cfg.session;
        if self.cfg.keys.contains_key(&gid) {
            c.mtu = c.mtu.saturating_sub(wire::SEAL_LEN);
        }
        c
    }

    /// The next event: peers, devices and groups first, then TLPs, taken from the
    /// sessions one at a time in turn. A TLP stays in its session until it is asked
    /// for here, so a caller that stops asking closes the session's receive window
    /// (back-pressure to the peer) instead of filling a queue of the node.
    pub fn poll_event(&mut self) -> Option<FabricEvent> {
        self.poll_event_where(|_, _| true)
    }

    /// The next event, as [`Node::poll_event`], with TLPs taken only from the sessions
    /// (group, peer) that `take` accepts: a caller that cannot take one session's TLPs
    /// now (an I/O box whose device waits for that host) leaves them there, and that
    /// session's receive window closes, while the other sessions' TLPs keep flowing.
    pub fn poll_event_where(
        &mut self,
        mut take: impl FnMut(u16, MacAddr) -> bool,
    ) -> Option<FabricEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.peers.len() == 1 {
            // One session (a box serving one host, a host using one box): no turn to
            // take, and no searches of the map for it.
            let (&key, p) = self.peers.iter_mut().next()?;
            if p.session.received() == 0 || !take(key.0, key.1) {
                return None;
            }
            let tlp = p.session.recv()?;
            self.next_tlp_from = Some(key);
            return Some(FabricEvent::Tlp {
                gid: key.0,
                peer: key.1,
                tlp,
            });
        }
        let after = self.next_tlp_from;
        let key = {
            let mut ready = |(k, p): (&(u16, MacAddr), &Peer)| {
                (p.session.received() > 0 && take(k.0, k.1)).then_some(*k)
            };
            match after {
                Some(a) => self
                    .peers
                    .range((Excluded(a), Unbounded))
                    .chain(self.peers.range(..=a))
                    .find_map(&mut ready),
                None => self.peers.iter().find_map(&mut ready),
            }
        }?;
        let tlp = self.peers.get_mut(&key)?.session.recv()?;
        self.next_tlp_from = Some(key);
        Some(FabricEvent::Tlp {
            gid: key.0,
            peer: key.1,
            tlp,
        })
    }

    /// The next event that is not a TLP (for a caller that cannot take TLPs now).
    pub fn poll_control_event(&mut self) -> Option<FabricEvent> {
        self.events.pop_front()
    }

    /// Events waiting to be taken (`poll_event`), TLPs in the sessions included.
    pub fn pending_events(&self) -> usize {
        self.events.len()
            + self
                .peers
                .values()
                .map(|p| p.session.received())
                .sum::<usize>()
    }

    /// When `handle_timeout` is due next.
    pub fn poll_timeout(&self) -> u64 {
        let sessions = self.peers.values().filter_map(|p| p.session.poll_timeout());
        let liveness = self
            .peers
            .values()
            .map(|p| p.last_heard.saturating_add(self.silence_limit()));
        sessions
            .chain(liveness)
            .chain(self.leaving.values().copied())
            .chain(std::iter::once(self.next_info))
            .min()
            .unwrap_or(self.next_info)
    }

    fn silence_limit(&self) -> u64 {
        self.cfg
            .info_interval_us
            .saturating_mul(self.cfg.missed_infos as u64)
    }

    pub fn handle_timeout(&mut self, now: u64) {
        self.last_now = self.last_now.max(now);
        if now >= self.next_info {
            self.announce();
            self.next_info = now.saturating_add(self.cfg.info_interval_us);
        }
        let limit = self.silence_limit();
        let silent: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| now >= p.last_heard.saturating_add(limit))
            .map(|(&k, _)| k)
            .collect();
        for k in silent {
            self.peer_down(k, DownReason::Silent);
        }
        let done: Vec<u16> = self
            .leaving
            .iter()
            .filter(|&(_, &at)| now >= at)
            .map(|(&g, _)| g)
            .collect();
        for gid in done {
            self.leave(gid);
        }
        for p in self.peers.values_mut() {
            if p.session.poll_timeout().is_some_and(|t| t <= now) {
                p.session.handle_timeout(now);
            }
        }
        self.collect_session_events();
    }

    fn announce(&mut self) {
        for gid in self.all_groups() {
            self.announce_in(gid);
        }
    }

    /// Broadcasts our INFO in group `gid`.
    fn announce_in(&mut self, gid: u16) {
        let devices: Vec<DeviceInfo> = self
            .devices
            .iter()
            .filter(|d| d.gid == gid)
            .copied()
            .collect();
        let info = InfoRepr {
            role: self.cfg.role,
            flags: 0,
            bridge_id: self.cfg.bridge_id,
            mtu: self.cfg.mtu,
            max_tlps_per_frame: self.cfg.session.max_tlps_per_frame as u16,
            interval_ms: (self.cfg.info_interval_us / 1000).min(u16::MAX as u64) as u16,
            max_payload: self.cfg.max_payload,
            max_read_request: self.cfg.max_read_request,
        };
        let eth = EthernetRepr {
            dst: BROADCAST,
            src: self.cfg.mac,
            vlan: tag(gid),
            ethertype: ETHERTYPE,
        };
        let mut h = TetherHeader::new(FrameKind::Info);
        h.epoch = self.cfg.epoch;
        let counter = self.next_counter();
        set_frame_counter(&mut h, counter);
        let key = self.cfg.keys.get(&gid);
        if let Ok(n) = emit_info(&mut self.buf, &eth, &h, &info, &devices, key) {
            self.out.push_back(self.buf[..n].to_vec());
            self.stats.infos_out += 1;
        }
    }

    fn peer_down(&mut self, key: (u16, MacAddr), reason: DownReason) {
        let Some(p) = self.peers.remove(&key) else {
            return;
        };
        self.stats.tlps_not_taken += p.session.received() as u64;
        for d in &p.devices {
            self.events.push_back(FabricEvent::DeviceRemoved {
                gid: key.0,
                peer: key.1,
                slot: d.slot,
            });
        }
        self.stats.peers_down += 1;
        self.events.push_back(FabricEvent::PeerDown {
            gid: key.0,
            peer: key.1,
            reason,
        });
    }

    fn collect_session_events(&mut self) {
        let mut down = Vec::new();
        for (&(gid, peer), p) in self.peers.iter_mut() {
            while let Some(e) = p.session.poll_event() {
                match e {
                    efe::Event::Up => {}
                    efe::Event::PeerRestarted { lost } => self
                        .events
                        .push_back(FabricEvent::PeerRestarted { gid, peer, lost }),
                    efe::Event::Down { lost } => down.push(((gid, peer), lost)),
                }
            }
        }
        for (k, lost) in down {
            self.peer_down(k, DownReason::Unreachable { lost });
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Vec<u8>> {
        let mut frame = vec![0u8; self.buf.len()];
        match self.poll_transmit_into(now, &mut frame)? {
            Ok(n) => {
                frame.truncate(n);
                Some(frame)
            }
            // Our own buffer holds any frame of our MTU.
            Err(_) => None,
        }
    }

    /// The next frame to send, written into `buf` (a port's buffer): `Ok(length)`, or
    /// `Err(length)` when it does not fit and was dropped (a session frame is sent
    /// again by the session's retransmission).
    pub fn poll_transmit_into(&mut self, now: u64, buf: &mut [u8]) -> Option<Result<usize, usize>> {
        self.last_now = self.last_now.max(now);
        if let Some(f) = self.out.pop_front() {
            let Some(dst) = buf.get_mut(..f.len()) else {
                return Some(Err(f.len()));
            };
            dst.copy_from_slice(&f);
            self.stats.frames_out += 1;
            return Some(Ok(f.len()));
        }
        let src = self.cfg.mac;
        for (&(gid, peer), p) in self.peers.iter_mut() {
            if let Some(tx) = p.session.poll_transmit(now) {
                let eth = EthernetRepr {
                    dst: peer,
                    src,
                    vlan: tag(gid),
                    ethertype: ETHERTYPE,
                };
                let seal = self.tx_keys.get(&gid).map(|key| wire::Seal {
                    key,
                    nonce: self.nonces.next(),
                });
                let len = tx.payload.len()
                    + eth.header_len()
                    + wire::HEADER_LEN
                    + seal.map_or(0, |_| wire::SEAL_LEN);
                let written = tx.write_frame(buf, &eth, seal).map_err(|_| len);
                self.stats.frames_out += written.is_ok() as u64;
                return Some(written);
            }
        }
        None
    }

    /// Takes one frame from the port. `stripped_vlan`: the tag the port reported
    /// separately (AF_PACKET), if it is not in the frame.
    pub fn handle_frame(&mut self, now: u64, bytes: &[u8], stripped_vlan: Option<VlanTag>) {
        self.handle_frame_since(now, now, bytes, stripped_vlan);
    }

    /// The same for a frame that may have been waiting since `since` (µs): the caller
    /// last found the port empty then (see `Session::handle_frame_since`).
    pub fn handle_frame_since(
        &mut self,
        now: u64,
        since: u64,
        bytes: &[u8],
        stripped_vlan: Option<VlanTag>,
    ) {
        self.stats.frames_in += 1;
        self.last_now = self.last_now.max(now);
        let frame = match Frame::parse(bytes, stripped_vlan) {
            Ok(f) => f,
            Err(_) => {
                self.stats.bad_frames += 1;
                return;
            }
        };
        let src = frame.ethernet.src;
        if src == self.cfg.mac {
            self.stats.own_frames += 1;
            return;
        }
        let Some(gid) = frame.gid() else {
            self.stats.other_group += 1;
            return;
        };
        // A group being left quietly takes frames from the peers it knows there only.
        let lingering = || self.leaving.contains_key(&gid) && self.peers.contains_key(&(gid, src));
        if !self.in_group(gid) && !lingering() {
            self.stats.other_group += 1;
            return;
        }
        if frame.ethernet.dst != self.cfg.mac && frame.ethernet.dst != BROADCAST {
            // Unicast for someone else (a flooding switch).
            self.stats.other_group += 1;
            return;
        }
        // A session frame from a peer is checked with the key kept for it; anything
        // else with the group's key (a session frame from a stranger derives its
        // sender's key first).
        let group_key = self.cfg.keys.get(&gid);
        let auth = match (group_key, self.peers.get(&(gid, src))) {
            (Some(k), Some(p)) if frame.header.kind.is_session() => match &p.rx_key {
                Some(rx) => frame.authenticate_sealed(rx),
                // A peer of a keyed group always has one (keys never change); if it
                // had none, the frame is checked the slow way.
                None => frame.authenticate(Some(k)),
            },
            _ => frame.authenticate(group_key),
        };
        if let Err(r) = auth {
            *match r {
                AuthRefusal::Missing => &mut self.stats.auth_missing,
                AuthRefusal::Bad => &mut self.stats.auth_bad,
                AuthRefusal::Unexpected => &mut self.stats.auth_unexpected,
            } += 1;
            return;
        }
        match frame.header.kind {
            FrameKind::Info => self.info(now, gid, src, &frame),
            FrameKind::Ctrl => self.ctrl(gid, src, &frame),
            _ => {
                let keyed = self.cfg.keys.contains_key(&gid);
                let Some(p) = self.peers.get_mut(&(gid, src)) else {
                    self.stats.unknown_peer += 1;
                    return;
                };
                // In a keyed group a new session epoch must belong to the run the
                // peer's last fresh INFO announced: INFO cannot be replayed, session
                // frames can.
                let epoch = frame.header.epoch;
                if keyed
                    && epoch != p.session.peer_epoch()
                    && !efe::epoch_of_run(p.boot_epoch, epoch)
                {
                    self.stats.stale_run_frames += 1;
                    return;
                }
                match p
                    .session
                    .handle_frame_since(now, since, &frame.header, frame.payload)
                {
                    Ok(_) => p.last_heard = now,
                    Err(_) => self.stats.session_refused += 1,
                }
                self.collect_session_events();
            }
        }
    }

    fn info(&mut self, now: u64, gid: u16, src: MacAddr, frame: &Frame) {
        let Ok(wire::Body::Info(info)) = frame.body() else {
            self.stats.bad_frames += 1;
            return;
        };
        if !self.peers.contains_key(&(gid, src)) && !self.stranger_token(now) {
            self.stats.infos_limited += 1;
            return;
        }
        if self.cfg.keys.contains_key(&gid) {
            let peers = &self.peers;
            let cap = self.counter_cap();
            let fresh = remember(
                &mut self.info_counters,
                (gid, src),
                frame_counter(&frame.header),
                cap,
                |k| peers.contains_key(k),
            );
            if !fresh {
                self.stats.replayed_infos += 1;
                return;
            }
        }
        self.stats.infos_in += 1;
        // One device per slot: a list naming a slot again keeps its first entry.
        let mut devices: Vec<DeviceInfo> = Vec::with_capacity(info.device_count());
        let mut listed = [false; 256];
        for d in info.devices() {
            let seen = &mut listed[usize::from(d.slot)];
            if *seen {
                self.stats.duplicate_devices += 1;
            } else {
                *seen = true;
                devices.push(d);
            }
        }
        let key = (gid, src);
        let epoch = frame.header.epoch;
        if let Some(p) = self.peers.get_mut(&key) {
            match p.boot(epoch) {
                Boot::Same => {}
                Boot::Stale => {
                    self.stats.stale_infos += 1;
                    return;
                }
                Boot::Restarted => {
                    self.session_epoch = self.session_epoch.wrapping_add(1).max(1);
                    p.session.peer_restart(self.session_epoch);
                    // A new run may announce itself otherwise.
                    p.role = info.repr.role;
                    p.bridge_id = info.repr.bridge_id;
                    self.collect_session_events();
                }
            }
        } else {
            let in_group = self
                .peers
                .range((gid, MacAddr([0; 6]))..=(gid, MacAddr([0xff; 6])))
                .count();
            if self.peers.len() >= self.cfg.max_peers || in_group >= self.cfg.max_peers_per_group {
                self.stats.peers_refused += 1;
                return;
            }
            self.session_epoch = self.session_epoch.wrapping_add(1).max(1);
            let Ok(session) = Session::new(self.session_config(gid), self.session_epoch) else {
                return;
            };
            self.peers.insert(
                key,
                Peer {
                    session,
                    rx_key: self.cfg.keys.get(&gid).map(|k| k.session_key(src)),
                    role: info.repr.role,
                    bridge_id: info.repr.bridge_id,
                    devices: Vec::new(),
                    last_heard: now,
                    boot_epoch: epoch,
                    retired_boots: [0; RETIRED_BOOTS],
                },
            );
            self.stats.peers_up += 1;
            self.events.push_back(FabricEvent::PeerUp {
                gid,
                peer: src,
                role: info.repr.role,
                bridge_id: info.repr.bridge_id,
            });
            // Answer a newcomer at once, so that it knows us (and has a session with
            // us) within one round trip rather than one INFO interval: its first TLPs
            // would otherwise come from a peer we do not know yet. At most once per
            // tenth of an interval per group: the answer is a broadcast, and a flood
            // of newcomers must not become a flood of answers.
            if now >= self.answer_after.get(&gid).copied().unwrap_or(0) {
                self.announce_in(gid);
                let gap = (self.cfg.info_interval_us / 10).max(1);
                self.answer_after.insert(gid, now.saturating_add(gap));
            }
        }
        let p = self.peers.get_mut(&key).expect("present");
        p.last_heard = now;
        let mut had = [false; 256];
        for old in &p.devices {
            had[usize::from(old.slot)] = true;
            if !listed[usize::from(old.slot)] {
                self.events.push_back(FabricEvent::DeviceRemoved {
                    gid,
                    peer: src,
                    slot: old.slot,
                });
            }
        }
        for d in &devices {
            if !had[usize::from(d.slot)] {
                self.events.push_back(FabricEvent::DeviceAdded {
                    gid,
                    peer: src,
                    device: *d,
                });
            }
        }
        p.devices = devices;
    }

    fn ctrl(&mut self, gid: u16, src: MacAddr, frame: &Frame) {
        let Ok(wire::Body::Ctrl(c)) = frame.body() else {
            self.stats.bad_frames += 1;
            return;
        };
        // A request for us at a box that obeys signed requests only.
        let request =
            matches!(c.op, CtrlOp::SetGroup | CtrlOp::Reset) && c.target == self.cfg.bridge_id;
        if let (true, Some(m)) = (request, &self.cfg.managers) {
            let signed = wire::ctrl::ctrl_signature(frame.payload).is_some_and(|s| {
                let mut body = [0u8; wire::ctrl::CTRL_LEN];
                body.copy_from_slice(&frame.payload[..wire::ctrl::CTRL_LEN]);
                let message = wire::ctrl::ctrl_signed_message(
                    frame.ethernet.dst.0,
                    src.0,
                    gid,
                    frame_counter(&frame.header),
                    &body,
                );
                m.verify(s.key_id, s.signature, &message)
            });
            if !signed {
                self.stats.ctrl_unsigned += 1;
                return;
            }
        }
        if self.cfg.keys.contains_key(&gid) || self.cfg.managers.is_some() {
            let counter = frame_counter(&frame.header);
            let wall = self.last_now.saturating_add(self.cfg.wall_offset_us);
            let too_far = counter.abs_diff(wall) > self.cfg.max_ctrl_age_us;
            let peers = &self.peers;
            let cap = self.counter_cap();
            if too_far
                || !remember(&mut self.ctrl_counters, (gid, src), counter, cap, |k| {
                    peers.contains_key(k)
                })
            {
                self.stats.replayed_ctrl += 1;
                return;
            }
        }
        self.stats.ctrl_in += 1;
        match c.op {
            CtrlOp::Result => self.events.push_back(FabricEvent::CtrlResult {
                from: src,
                request_id: c.request_id,
                status: c.status,
            }),
            CtrlOp::SetGroup | CtrlOp::Reset if c.target == self.cfg.bridge_id => {
                let status = match self.devices.iter_mut().find(|d| d.slot == c.slot) {
                    None => CtrlStatus::NoSuchDevice,
                    Some(_) if c.op == CtrlOp::Reset => CtrlStatus::Refused,
                    // Already there (a manager retrying a request whose answer was
                    // lost): nothing changes hands, nothing is reset.
                    Some(d) if d.gid == c.gid => CtrlStatus::Ok,
                    // In a keyed group only a request in the device's own group moves
                    // it: a holder of another group's key has no say over it.
                    Some(d) if d.gid != gid && self.cfg.keys.contains_key(&d.gid) => {
                        self.stats.ctrl_wrong_group += 1;
                        CtrlStatus::Refused
                    }
                    Some(d) => {
                        let from = d.gid;
                        d.gid = c.gid;
                        self.leaving.remove(&c.gid);
                        self.events.push_back(FabricEvent::GroupChanged {
                            slot: c.slot,
                            from,
                            to: c.gid,
                        });
                        // Announce at once, in both groups: the old one's list no
                        // longer has the device.
                        self.groups.insert(from);
                        self.next_info = 0;
                        CtrlStatus::Ok
                    }
                };
                let answer = CtrlRepr {
                    op: CtrlOp::Result,
                    status,
                    ..c
                };
                self.push_ctrl(gid, src, &answer);
            }
            // Requests for another bridge.
            _ => {}
        }
    }

    /// (I/O box) Stops announcing `gid` as a group of its own (after a device left
    /// it and the hosts there have seen the empty list). Its peers in that group are
    /// gone: [`FabricEvent::PeerDown`] with [`DownReason::Left`], after the removal of
    /// their devices.
    pub fn leave(&mut self, gid: u16) {
        self.groups.remove(&gid);
        self.leaving.remove(&gid);
        if !self.devices.iter().any(|d| d.gid == gid) {
            let gone: Vec<_> = self.peers.keys().filter(|k| k.0 == gid).copied().collect();
            for k in gone {
                self.peer_down(k, DownReason::Left);
            }
        }
    }

    /// (I/O box) Leaves `gid` without dropping its sessions there first: stops
    /// announcing it at once (it is no longer in [`Node::groups`]), keeps the peers
    /// it knows there, their sessions, and takes their frames (new peers there are
    /// not taken), and leaves it as [`Node::leave`] does `missed_infos + 1` INFO
    /// intervals from `now`, when those peers, seeing us silent, have dropped their
    /// sessions with us. A device that comes back to the group before then (a move,
    /// `add_device`; or a `join`) cancels it, and finds the sessions as both sides
    /// left them: the peers see no restart, and lose nothing on the way.
    pub fn leave_quietly(&mut self, gid: u16, now: u64) {
        if self.devices.iter().any(|d| d.gid == gid) {
            return;
        }
        self.groups.remove(&gid);
        if !self.peers.keys().any(|k| k.0 == gid) {
            self.leaving.remove(&gid);
            return;
        }
        let linger = self
            .cfg
            .info_interval_us
            .saturating_mul(u64::from(self.cfg.missed_infos).saturating_add(1));
        self.leaving.insert(gid, now.saturating_add(linger));
    }
}
