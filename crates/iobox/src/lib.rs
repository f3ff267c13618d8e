//! The I/O box: device functions in slots, each in its group, behind one port.

pub mod netback;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use dataplane::poll::{Pollable, Waker};
use dataplane::PortError;
use efe::SendError;
use endpoint::config::reg;
use endpoint::memdev::{self, MemDev};
use endpoint::virtio::blk::{self, BlockBackend, VirtioBlk};
use endpoint::virtio::net::{self, NetBackend, VirtioNet};
use endpoint::virtio::{RingFeatures, VirtioPci};
use endpoint::{ConfigError, Device, Function, FunctionConfig};
use fabric::{FabricError, FabricEvent};
use tlp::{Bdf, Header, Tlp, UrAnswer};
use wire::{BridgeRole, DeviceInfo, MacAddr};

use fabric::FabricPort;

/// A device in a slot of the box.
pub struct Slot {
    pub info: DeviceInfo,
    pub function: Function<Box<dyn Device + Send>>,
    /// TLPs for the host that its session could not take yet, at most
    /// [`IoBox::BACKLOG`]: when full, the device is asked for no more, and the host's
    /// non-posted requests for it wait in `deferred` until it drains (completions and
    /// posted writes still reach the device).
    backlog: VecDeque<Vec<u8>>,
    /// The host's non-posted requests for the device (memory, I/O and config reads,
    /// config and I/O writes, AtomicOps: each needs room for an answer) that came
    /// while the backlog was full, or behind one that did, in arrival order; at most
    /// [`IoBox::DEFERRED`]. When full, the box takes no more TLPs from that host in
    /// the group until it drains (other hosts' TLPs keep flowing).
    deferred: VecDeque<Vec<u8>>,
}

impl Slot {
    /// A device in `slot`, group `gid`, announced with the identity its config space
    /// holds (vendor, device, class, revision, subsystem).
    pub fn announced(slot: u8, gid: u16, function: Function<Box<dyn Device + Send>>) -> Slot {
        let c = function.config();
        let info = DeviceInfo {
            slot,
            flags: wire::DEVICE_READY,
            gid,
            vendor_id: c.read16(reg::VENDOR_ID),
            device_id: c.read16(reg::DEVICE_ID),
            class_code: c.read32(reg::REVISION) >> 8,
            revision: c.read8(reg::REVISION),
            subsystem_vendor_id: c.read16(reg::SUBSYSTEM_VENDOR),
            subsystem_id: c.read16(reg::SUBSYSTEM_ID),
        };
        Slot::new(info, function)
    }

    /// A memdev with a buffer of `buf_size` bytes in `slot`, group `gid`.
    pub fn memdev(slot: u8, gid: u16, buf_size: usize) -> Result<Slot, ConfigError> {
        let model: Box<dyn Device + Send> = Box::new(MemDev::new(buf_size));
        let config = memdev::config_space(buf_size as u64)?;
        let f = Function::new(config, model, FunctionConfig::default());
        Ok(Slot::announced(slot, gid, f))
    }

    /// A virtio-blk disk on `backend` in `slot`, group `gid`; `serial` answers GET_ID;
    /// `rings`: the ring features offered besides split rings.
    pub fn virtio_blk<B: BlockBackend + 'static>(
        slot: u8,
        gid: u16,
        backend: B,
        serial: &str,
        rings: RingFeatures,
    ) -> Result<Slot, ConfigError> {
        let model: Box<dyn Device + Send> =
            Box::new(VirtioPci::new(VirtioBlk::new(backend, serial)).with_rings(rings));
        let f = Function::new(blk::config_space()?, model, FunctionConfig::default());
        Ok(Slot::announced(slot, gid, f))
    }

    /// A virtio-net NIC with MAC `mac` on `backend` (one of [`netback`]'s, or any
    /// other) in `slot`, group `gid`; `offloads`: the backend passes the virtio-net
    /// header (both of [`netback`]'s do), so checksum and segmentation offloads are
    /// offered; `rings`: the ring features offered besides split rings.
    pub fn virtio_net<B: NetBackend + 'static>(
        slot: u8,
        gid: u16,
        backend: B,
        mac: [u8; 6],
        offloads: bool,
        rings: RingFeatures,
    ) -> Result<Slot, ConfigError> {
        let model: Box<dyn Device + Send> =
            Box::new(VirtioPci::new(VirtioNet::new(backend, mac, offloads)).with_rings(rings));
        let f = Function::new(net::config_space()?, model, FunctionConfig::default());
        Ok(Slot::announced(slot, gid, f))
    }

    /// Moves the device's output into the backlog, as far as it has room.
    fn pull_output(&mut self) {
        while self.backlog.len() < IoBox::BACKLOG {
            let Some(t) = self.function.poll_transmit() else {
                break;
            };
            self.backlog.push_back(t);
        }
    }

    /// TLPs of the device waiting for its host's session to take them.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Non-posted requests of the host waiting for room in the device's backlog.
    pub fn deferred_len(&self) -> usize {
        self.deferred.len()
    }

    /// Whether the device may be handed a non-posted request now: its answer has room
    /// in the backlog (which is below its bound only when the function holds no more
    /// output, see [`Slot::pull_output`]).
    fn has_room(&self) -> bool {
        self.backlog.len() < IoBox::BACKLOG
    }

    /// Hands the device the deferred requests, in order, while its backlog has room
    /// for their answers. Returns whether it handed any.
    fn drain_deferred(&mut self, now: u64) -> bool {
        let mut handed = false;
        while self.has_room() {
            let Some(t) = self.deferred.pop_front() else {
                break;
            };
            // Parsed and routed when it came; parsed again here.
            self.function.handle_tlp(now, &t);
            self.pull_output();
            handed = true;
        }
        handed
    }

    pub fn new(info: DeviceInfo, function: Function<Box<dyn Device + Send>>) -> Slot {
        Slot {
            info,
            function,
            backlog: VecDeque::new(),
            deferred: VecDeque::new(),
        }
    }
}

/// Counters of the box besides the port's, the node's and the functions'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct IoBoxStats {
    /// Well-formed TLPs in a group that no device of the box claims (config for an
    /// empty slot, an address no BAR decodes, a completion for nobody).
    pub unrouted: u64,
    /// TLPs a device sent while no host was in its group.
    pub no_host: u64,
    /// TLPs for the host that its session refused (gone, down, too large for a
    /// frame; an Unsupported Request answer also when the session's queue is full):
    /// dropped.
    pub undeliverable: u64,
    /// Function-level resets done because the device changed hands.
    pub resets: u64,
    /// Device TLPs a reset discarded (waiting in the backlog or in the function).
    pub dropped_on_reset: u64,
    /// TLPs from a bridge in a device's group that is not the group's host (another
    /// host, a box, anyone who announced itself there): dropped, never answered.
    pub not_host: u64,
    /// Rounds in which a device's backlog was full: the device was not asked for more
    /// and its host's non-posted requests for it waited in the box (`deferred`);
    /// completions and posted writes still reached it (back-pressure, nothing
    /// dropped).
    pub backlog_full: u64,
    /// Non-posted requests of a host that waited in a slot's deferred queue (its
    /// device's backlog was full, or earlier requests waited) instead of reaching the
    /// device at once: completions and posted writes pass them, as PCIe's ordering
    /// rules require to avoid deadlock.
    pub deferred: u64,
    /// Rounds in which a slot's deferred queue was full ([`IoBox::DEFERRED`]): the
    /// box took no TLPs at all from that group's host, which waited in its session
    /// (the last resort against a host that floods requests without taking the
    /// answers; other hosts' TLPs were taken).
    pub deferred_full: u64,
    /// Deferred requests of a host that a reset discarded (the device changed hands:
    /// its group changed, or its host went down or restarted), never answered.
    pub deferred_dropped_on_reset: u64,
    /// Unrouted non-posted requests answered with an Unsupported Request completion
    /// (as a PCIe switch does for an address no port claims), and the non-posted
    /// `unsupported` ones.
    pub answered_ur: u64,
    /// TLPs from the host that the codec refuses as Unsupported Requests (a memory
    /// request or AtomicOp with AT = 11b, a message with reserved routing): routed to
    /// no device; a non-posted one is answered with a UR completion (`answered_ur`).
    pub unsupported: u64,
    /// Malformed TLPs from the host: dropped, never answered.
    pub malformed: u64,
    /// Groups the box left (stopped announcing itself in) after its last device
    /// there moved away.
    pub groups_left: u64,
}

/// The Unsupported Request completion for a non-posted request nobody claims (`None`
/// for posted requests and completions, which get no answer).
fn unsupported_request(t: &Tlp) -> Option<Vec<u8>> {
    let completer = match t.header {
        Header::ConfigRead(c) | Header::ConfigWrite(c) => c.target,
        _ => Bdf::default(),
    };
    ur_completion(t.ur_answer()?, completer)
}

/// The Unsupported Request completion `answer` describes, from `completer`.
fn ur_completion(answer: UrAnswer, completer: Bdf) -> Option<Vec<u8>> {
    Tlp::new(Header::Completion(answer.completion(completer)), &[])
        .to_vec()
        .ok()
}

pub struct IoBox {
    fp: FabricPort,
    slots: Vec<Slot>,
    /// The host of each group: the first host-role bridge that sent a TLP there (its
    /// enumeration), until it goes down or restarts. Nobody else gets the devices'
    /// traffic or resets them.
    hosts: HashMap<u16, MacAddr>,
    /// Groups whose last device of the box moved away, with when (µs on the port's
    /// clock): the box leaves them `missed_infos` INFO intervals later. At most one
    /// entry per valid group.
    emptied: BTreeMap<u16, u64>,
    stats: IoBoxStats,
    /// Fabric events other than TLPs (peers up and down, group changes), kept for the
    /// program to log; the oldest are dropped past [`IoBox::EVENT_LOG`].
    pub events: VecDeque<FabricEvent>,
    /// Reused by each sleep of [`IoBox::poll`].
    waker: Waker,
}

impl IoBox {
    /// How many fabric events `events` keeps.
    pub const EVENT_LOG: usize = 1024;
    /// How many TLPs a device's backlog holds.
    pub const BACKLOG: usize = 256;
    /// How many non-posted requests of its host a slot holds while its device's
    /// backlog is full. A real host has at most its tag count of requests
    /// outstanding; a host that sends more without taking the answers is
    /// back-pressured through its session.
    pub const DEFERRED: usize = 256;

    pub fn new(mut fp: FabricPort, slots: Vec<Slot>) -> IoBox {
        for s in &slots {
            // Slot numbers and groups come from configuration that was checked.
            let _ = fp.node_mut().add_device(s.info);
        }
        IoBox {
            fp,
            slots,
            hosts: HashMap::new(),
            emptied: BTreeMap::new(),
            stats: IoBoxStats::default(),
            events: VecDeque::new(),
            waker: Waker::new(),
        }
    }

    pub fn fabric(&self) -> &FabricPort {
        &self.fp
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn stats(&self) -> IoBoxStats {
        self.stats
    }

    /// The host pinned in group `gid`, if any.
    pub fn host_of(&self, gid: u16) -> Option<MacAddr> {
        self.hosts.get(&gid).copied()
    }

    /// Which slot of group `gid` a TLP from the host is for.
    fn route(&self, gid: u16, t: &Tlp) -> Option<usize> {
        let in_group = |s: &&Slot| s.info.gid == gid;
        let pos = |f: &dyn Fn(&Slot) -> bool| self.slots.iter().position(|s| in_group(&s) && f(s));
        match t.header {
            Header::ConfigRead(c) | Header::ConfigWrite(c) => {
                pos(&|s| s.info.slot == c.target.device())
            }
            Header::MemRead(r) => pos(&|s| s.function.config().decode_memory(r.address).is_some()),
            Header::MemWrite(w) => pos(&|s| s.function.config().decode_memory(w.address).is_some()),
            Header::Completion(c) => pos(&|s| s.function.bdf() == c.requester),
            // Anything else goes to the group's first device, which answers UR.
            _ => pos(&|_| true),
        }
    }

    fn reset_slot(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.function.reset();
        let mut dropped = s.backlog.len() as u64;
        s.backlog.clear();
        while s.function.poll_transmit().is_some() {
            dropped += 1;
        }
        self.stats.dropped_on_reset += dropped;
        self.stats.deferred_dropped_on_reset += s.deferred.len() as u64;
        s.deferred.clear();
        self.stats.resets += 1;
    }

    /// Whether `peer` is the host of group `gid`: the pinned one, or, while there is
    /// none, a bridge that announced itself as a host (which is pinned now).
    fn is_host(&mut self, gid: u16, peer: MacAddr) -> bool {
        match self.hosts.get(&gid) {
            Some(&h) => h == peer,
            None if self.fp.node().peer_role(gid, peer) == Some(BridgeRole::Host) => {
                self.hosts.insert(gid, peer);
                true
            }
            None => false,
        }
    }

    /// Whether the box takes TLPs from `peer` in group `gid` now: not from the host of
    /// a group in which a slot's deferred queue is full (a non-posted request could
    /// wait nowhere). A full backlog alone does not stop the intake: the completions
    /// and posted writes among the host's TLPs must reach the device (the answers to
    /// its own DMA reads are among them), and its non-posted requests wait in the
    /// slot. Everyone else's keep flowing: one host that stops taking what the box
    /// sends holds back its own devices only.
    fn takes_from(slots: &[Slot], hosts: &HashMap<u16, MacAddr>, gid: u16, peer: MacAddr) -> bool {
        hosts.get(&gid) != Some(&peer)
            || !slots
                .iter()
                .any(|s| s.info.gid == gid && s.deferred.len() >= Self::DEFERRED)
    }

    /// Leaves the groups that have had no device of the box for `missed_infos` INFO
    /// intervals. Not at once: the node announces the empty list there (at once, then
    /// every interval), and a host of the group that missed one of those INFOs sees
    /// the device removed at the next; after `missed_infos` intervals every host there
    /// has seen the list or taken the box for silent, and either way the device is
    /// gone from it. The box leaves quietly ([`fabric::Node::leave_quietly`]): it stops
    /// announcing there at once, and drops its sessions in the group
    /// ([`fabric::DownReason::Left`]) only once the hosts there, seeing it silent,
    /// have dropped theirs, so a device that comes back meanwhile finds them
    /// unchanged. Returns whether it left any.
    fn leave_emptied(&mut self, now: u64) -> bool {
        let cfg = self.fp.node().config();
        let linger = cfg
            .info_interval_us
            .saturating_mul(u64::from(cfg.missed_infos));
        let due: Vec<u16> = self
            .emptied
            .iter()
            .filter(|&(_, &since)| now >= since.saturating_add(linger))
            .map(|(&g, _)| g)
            .collect();
        for &gid in &due {
            self.emptied.remove(&gid);
            if !self.slots.iter().any(|s| s.info.gid == gid) {
                self.fp.node_mut().leave_quietly(gid, now);
                self.stats.groups_left += 1;
            }
        }
        !due.is_empty()
    }

    /// One round: port, fabric events, device timers and output. When there was
    /// nothing to do, idles as the fabric port's policy says (spin, yield, or a sleep
    /// of at most `wait` until a frame or a timer of the node or a device). Returns
    /// whether anything happened.
    pub fn poll(&mut self, wait: Duration) -> Result<bool, PortError> {
        let worked = self.round_at(Instant::now())?;
        let mut waker = std::mem::take(&mut self.waker);
        waker.clear();
        let now = Instant::now();
        if self.fp.needs_waker(now, worked, wait) {
            Pollable::wake(self, &mut waker);
        }
        let settled = self.fp.settle(now, worked, wait, &mut waker);
        self.waker = waker;
        settled?;
        Ok(worked)
    }

    /// The box is going: every device is told it is leaving its host (a virtio-net
    /// device takes its link down, with a configuration interrupt to its driver), and
    /// the box goes on serving for `linger`, so that what the devices send about it
    /// reaches their hosts before the box falls silent.
    pub fn leave(&mut self, linger: Duration) -> Result<(), PortError> {
        let now = self.fp.micros(Instant::now());
        for s in &mut self.slots {
            s.function.set_leaving(now, true);
        }
        let end = Instant::now() + linger;
        while Instant::now() < end {
            self.poll(Duration::from_millis(1))?;
        }
        Ok(())
    }

    /// One round at `now` (see [`IoBox::poll`]), never waiting.
    fn round_at(&mut self, now: Instant) -> Result<bool, PortError> {
        let mut worked = self.fp.round(now)?;
        let now = self.fp.micros(now);
        loop {
            // TLPs of a host whose deferred queue is full wait in its session (whose
            // window closes); peers, groups, restarts and the others' TLPs are still
            // taken.
            let (slots, hosts) = (&self.slots, &self.hosts);
            let e = self
                .fp
                .poll_event_where(|gid, peer| Self::takes_from(slots, hosts, gid, peer));
            let Some(e) = e else {
                break;
            };
            worked = true;
            if !matches!(e, FabricEvent::Tlp { .. }) {
                if self.events.len() == Self::EVENT_LOG {
                    self.events.pop_front();
                }
                self.events.push_back(e.clone());
            }
            match e {
                FabricEvent::Tlp { gid, peer, .. } if !self.is_host(gid, peer) => {
                    self.stats.not_host += 1;
                }
                FabricEvent::Tlp { gid, peer, tlp } => {
                    // Parsed once, for routing and for the device.
                    let parsed = Tlp::parse(&tlp);
                    match parsed
                        .as_ref()
                        .ok()
                        .and_then(|t| Some((self.route(gid, t)?, t)))
                    {
                        Some((i, t)) => {
                            let s = &mut self.slots[i];
                            if t.header.transaction_id().is_none() {
                                // A completion or a posted request: at once, in
                                // order with the others of its kinds, past waiting
                                // non-posted requests (PCIe's ordering rules: they
                                // must be able to pass them, or a device that waits
                                // for its DMA reads' completions to make room
                                // deadlocks).
                                s.function.handle_parsed(now, t);
                                s.pull_output();
                                // Its buffer goes back to the session for reuse.
                                self.fp.node_mut().recycle(gid, peer, tlp);
                            } else {
                                // A non-posted request waits for room for its
                                // answer, behind the others that wait (never past a
                                // posted write, which went to the device first).
                                if !s.deferred.is_empty() || !s.has_room() {
                                    self.stats.deferred += 1;
                                }
                                s.deferred.push_back(tlp);
                                // Its answer counts against the bound before the
                                // next TLP is taken.
                                s.drain_deferred(now);
                            }
                        }
                        None => {
                            // A request that waits for an answer gets one: UR.
                            let ur = match &parsed {
                                Ok(t) => {
                                    self.stats.unrouted += 1;
                                    unsupported_request(t)
                                }
                                Err(e) if e.is_malformed() => {
                                    self.stats.malformed += 1;
                                    None
                                }
                                Err(e) => {
                                    self.stats.unsupported += 1;
                                    e.ur_answer().and_then(|a| ur_completion(a, Bdf::default()))
                                }
                            };
                            if let Some(ur) = ur {
                                if self.fp.node_mut().send_tlp(gid, peer, &ur).is_ok() {
                                    self.stats.answered_ur += 1;
                                } else {
                                    self.stats.undeliverable += 1;
                                }
                            }
                        }
                    }
                }
                FabricEvent::GroupChanged { slot, from, to } => {
                    if let Some(i) = self.slots.iter().position(|s| s.info.slot == slot) {
                        self.slots[i].info.gid = to;
                        // A device that changes hands starts clean.
                        self.reset_slot(i);
                    }
                    self.emptied.remove(&to);
                    // A group the box has no device in left has no host here, and
                    // the box leaves it once its hosts have seen the empty list.
                    if !self.slots.iter().any(|s| s.info.gid == from) {
                        self.hosts.remove(&from);
                        self.emptied.insert(from, now);
                    }
                }
                FabricEvent::PeerDown { gid, peer, .. }
                | FabricEvent::PeerRestarted { gid, peer, .. }
                    if self.hosts.get(&gid) == Some(&peer) =>
                {
                    self.hosts.remove(&gid);
                    for i in 0..self.slots.len() {
                        if self.slots[i].info.gid == gid {
                            self.reset_slot(i);
                        }
                    }
                }
                _ => {}
            }
        }
        worked |= self.leave_emptied(now);
        for s in &mut self.slots {
            if s.function.poll_timeout().is_some_and(|t| t <= now) {
                s.function.handle_timeout(now);
            }
            // The model's own work (its backend's input).
            s.function.poll_device(now);
            s.pull_output();
            let gid = s.info.gid;
            let Some(&host) = self.hosts.get(&gid) else {
                self.stats.no_host += s.backlog.len() as u64;
                s.backlog.clear();
                continue;
            };
            loop {
                while let Some(t) = s.backlog.front() {
                    match self.fp.node_mut().send_tlp(gid, host, t) {
                        Ok(()) => {}
                        // The session's queue is full: next round.
                        Err(FabricError::Send(SendError::QueueFull(_))) => break,
                        // No session, a session down, a TLP no frame carries: it
                        // cannot go, and must not hold the backlog.
                        Err(_) => self.stats.undeliverable += 1,
                    }
                    if let Some(t) = s.backlog.pop_front() {
                        s.function.recycle(t);
                    }
                    worked = true;
                }
                // Room made: the requests that waited for it, then their answers.
                if !s.drain_deferred(now) {
                    break;
                }
                worked = true;
            }
            if s.backlog.len() >= Self::BACKLOG {
                self.stats.backlog_full += 1;
            }
            if s.deferred.len() >= Self::DEFERRED {
                self.stats.deferred_full += 1;
            }
        }
        Ok(worked)
    }
}

impl Pollable for IoBox {
    fn round(&mut self, now: Instant) -> std::io::Result<bool> {
        Ok(self.round_at(now)?)
    }

    /// The port and the node's timers, the devices' timers, and their backends'
    /// descriptors.
    fn wake(&self, w: &mut Waker) {
        self.fp.wake(w);
        for t in self.slots.iter().filter_map(|s| s.function.poll_timeout()) {
            self.fp.timer(w, t);
        }
        let mut fds = Vec::new();
        for s in &self.slots {
            s.function.wait_fds(&mut fds);
            // A model waiting on something no descriptor signals (a backend that was
            // full): polled again at the port's shortest timer.
            if s.function.poll_soon() {
                self.fp.timer(w, 0);
            }
        }
        for fd in fds {
            w.fd(fd);
        }
    }
}
