//! One hot-plug state machine per device, for every host bridge (plain hosts and VMM
//! front-ends alike): a device offered to our group is given a port of the virtual
//! switch, enumerated, attached to its user (a driver, or a VMM's hot-plug slot), and
//! when it leaves it is ghosted, detached and its port freed.
//!
//! ```text
//!   offered ──► Arriving ──(port)──► Enumerating ──enumerated──► Attaching ──attached──► Ready
//!                  │                     │    │                     │    │                  │
//!                  │ withdrawn      failed│    │withdrawn/lost/  failed│    │withdrawn/lost/   │
//!                  ▼                     ▼    │restarted             ▼    │restarted         │
//!                Gone                 Failed  ▼                   Failed  ▼                  │
//!                                          Leaving ◄──────────────────────┴──────────────────┘
//!                                       detached │ timeout
//!                                          ┌─────┴──────┐
//!                                          ▼            ▼
//!                                  Gone (port freed)  Gone, port in quarantine
//!                                  (re-offered with a new generation if it came back while leaving)
//! ```
//!
//! [`Hotplug`] is sans-IO, in the style of the fabric node and the root complex's
//! bridge: time (µs, the caller's one clock) is passed in, inputs are method calls,
//! and outputs are [`Action`]s the caller takes and carries out. The calling order:
//!
//! 1. Feed inputs as they happen: the fabric's events ([`Hotplug::offered`],
//!    [`Hotplug::withdrawn`], [`Hotplug::box_lost`], [`Hotplug::box_restarted`]) and
//!    the answers to earlier actions ([`Hotplug::enumerated`], [`Hotplug::attached`],
//!    [`Hotplug::detached`], their failures). Every answer carries the [`Generation`]
//!    of the action it answers; an answer of another generation is stale, ignored
//!    and counted.
//! 2. Call [`Hotplug::reconcile`] with the fabric's current device list whenever it
//!    may have changed (at least once per INFO interval): the fabric's events are
//!    edge-triggered and can be lost, and the list is the truth.
//! 3. Call [`Hotplug::handle_timeout`] when [`Hotplug::poll_timeout`] is due.
//! 4. Take [`Hotplug::poll_action`] until it returns `None`, and carry out each action
//!    before taking the next: a [`Action::Free`] returns its port to the switch, so a
//!    device waiting for a port can take it in the same round.
//!
//! Ports come from the caller through [`PortAllocator`] (the virtual switch, or a
//! closure), taken only in [`Hotplug::poll_action`]; this module holds at most one
//! live port per device key and never frees a port it does not hold.
//!
//! Bounds: at most [`HotplugConfig::max_devices`] devices, quarantined ports included
//! (an offer past it is refused and counted), at most that many devices waiting for a
//! port, and a handful of actions per device between two answers of the caller.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use efe::Micros;
use wire::MacAddr;

/// One device as the fabric names it: its group, its box and its slot in that box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub gid: u16,
    pub mac: MacAddr,
    pub slot: u8,
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/slot {}", self.gid, self.mac, self.slot)
    }
}

/// One incarnation of a device: each time a device starts over (offered, back after
/// leaving, reset by its box's restart) it gets a newer generation, and answers about
/// an older one are recognised as stale. Generations come from one counter for all
/// devices, so they only grow, per device and overall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gen {}", self.0)
    }
}

/// Where ports come from: the virtual switch's free downstream ports, or any closure
/// `FnMut() -> Option<P>`. A port handed out stays the caller's to track until this
/// module returns it with [`Action::Free`].
pub trait PortAllocator {
    type Port: Copy + Eq + fmt::Debug;
    /// A free port, or `None` when every port is in use.
    fn allocate(&mut self) -> Option<Self::Port>;
}

impl<P: Copy + Eq + fmt::Debug, F: FnMut() -> Option<P>> PortAllocator for F {
    type Port = P;
    fn allocate(&mut self) -> Option<P> {
        self()
    }
}

/// What the caller is to do, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Enumerate the device behind `port` (configuration reads, BARs, interrupts), then
    /// answer [`Hotplug::enumerated`] or [`Hotplug::enumeration_failed`].
    Enumerate {
        key: DeviceKey,
        gen: Generation,
        port: P,
    },
    /// Hand the enumerated device to its user (a driver, or the VMM's hot-plug slot),
    /// then answer [`Hotplug::attached`] or [`Hotplug::attach_failed`] (the latter only
    /// when nothing holds the port any more).
    Attach {
        key: DeviceKey,
        gen: Generation,
        port: P,
    },
    /// The device has left the fabric while its user may still reach it: answer that
    /// user locally from now on (the ghost), sending nothing to the wire.
    Ghost {
        key: DeviceKey,
        gen: Generation,
        port: P,
    },
    /// Fail at once every request still waiting on the device: no completion will come.
    FailPending {
        key: DeviceKey,
        gen: Generation,
        port: P,
    },
    /// Take the device out of whatever has it (cancel its enumeration, detach it from
    /// its user: `surprise` when its box is gone or was reset, so nothing may be asked
    /// of the device), then answer [`Hotplug::detached`].
    Detach {
        key: DeviceKey,
        gen: Generation,
        port: P,
        surprise: bool,
    },
    /// Nothing uses `port` any more: return it to the switch.
    Free { port: P },
}

/// Where a device stands (a device that is gone has no state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Offered, waiting for a free port.
    Arriving,
    /// [`Action::Enumerate`] given, not answered yet.
    Enumerating,
    /// [`Action::Attach`] given, not answered yet.
    Attaching,
    /// Attached and in use.
    Ready,
    /// [`Action::Detach`] given at `since` (µs), not answered yet; `returning` when the
    /// device is offered again and will start over once it is gone.
    Leaving {
        since: Micros,
        surprise: bool,
        returning: bool,
    },
    /// Its enumeration or attachment failed; it holds no port and waits until it is
    /// withdrawn (and offered anew) or its box restarts.
    Failed,
}

/// One device as [`Hotplug::devices`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceView<P> {
    pub key: DeviceKey,
    pub gen: Generation,
    pub phase: Phase,
    /// The port it holds (in every phase but `Arriving` and `Failed`).
    pub port: Option<P>,
}

/// A port whose device did not answer [`Action::Detach`] within the leave timeout: it
/// stays ghosted and is never handed out again until a late [`Hotplug::detached`] for
/// that generation arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quarantined<P> {
    pub key: DeviceKey,
    pub gen: Generation,
    pub port: P,
}

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotplugConfig {
    /// The most devices tracked at once, quarantined ports included (the virtual
    /// switch's downstream ports).
    pub max_devices: usize,
    /// How long a device may stay Leaving before its port is quarantined (µs). A VM's
    /// guest takes native pciehp's 5 s attention-button delay on every removal, longer
    /// under TCG.
    pub leave_timeout: Micros,
}

impl Default for HotplugConfig {
    fn default() -> HotplugConfig {
        HotplugConfig {
            max_devices: 32,
            leave_timeout: 30_000_000,
        }
    }
}

/// Counters (for `tether ctl stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HotplugStats {
    /// Devices that started arriving (new devices and new generations).
    pub arrivals: u64,
    /// Offers refused because `max_devices` devices are tracked.
    pub refused_full: u64,
    /// Arrivals that found no free port and had to wait.
    pub waited_for_port: u64,
    /// Ports the allocator handed out that this module already held (refused).
    pub allocator_reused: u64,
    pub enumerated: u64,
    pub enumeration_failures: u64,
    pub attached: u64,
    pub attach_failures: u64,
    /// Devices that started leaving, and of those the surprises (box lost or reset).
    pub departures: u64,
    pub surprises: u64,
    /// Box restarts that reset at least one device.
    pub restarts: u64,
    pub detached: u64,
    /// Leaving devices whose detach timed out: their ports went into quarantine.
    pub quarantined: u64,
    /// Quarantined ports freed by a late detach.
    pub late_detaches: u64,
    /// Answers of a generation that is not the device's current one (or of no device).
    pub stale: u64,
    /// Answers of the right generation in a phase that expects none (late answers to a
    /// device that started leaving meanwhile, or answers never asked for).
    pub unexpected: u64,
    /// Changes made by `reconcile` (an event that was lost).
    pub reconciled: u64,
}

struct Entry<P> {
    gen: Generation,
    phase: Phase,
    port: Option<P>,
    /// It found no port once in this generation (counted once).
    waited: bool,
}

/// The hot-plug state machines of one host bridge's devices.
pub struct Hotplug<P> {
    cfg: HotplugConfig,
    devices: BTreeMap<DeviceKey, Entry<P>>,
    /// Devices in `Arriving`, oldest first (each at most once).
    waiting: VecDeque<DeviceKey>,
    quarantine: Vec<Quarantined<P>>,
    actions: VecDeque<Action<P>>,
    next_gen: u64,
    stats: HotplugStats,
}

/// What an answer of the caller is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Enumerated,
    EnumerationFailed,
    Attached,
    AttachFailed,
}

impl<P: Copy + Eq + fmt::Debug> Hotplug<P> {
    pub fn new(cfg: HotplugConfig) -> Hotplug<P> {
        Hotplug {
            cfg,
            devices: BTreeMap::new(),
            waiting: VecDeque::new(),
            quarantine: Vec::new(),
            actions: VecDeque::new(),
            next_gen: 1,
            stats: HotplugStats::default(),
        }
    }

    pub fn config(&self) -> &HotplugConfig {
        &self.cfg
    }

    pub fn stats(&self) -> HotplugStats {
        self.stats
    }

    /// The device's state, if it is tracked.
    pub fn device(&self, key: DeviceKey) -> Option<DeviceView<P>> {
        self.devices.get(&key).map(|e| view(key, e))
    }

    /// Every tracked device, in key order.
    pub fn devices(&self) -> impl Iterator<Item = DeviceView<P>> + '_ {
        self.devices.iter().map(|(k, e)| view(*k, e))
    }

    /// The quarantined ports.
    pub fn quarantined(&self) -> impl Iterator<Item = Quarantined<P>> + '_ {
        self.quarantine.iter().copied()
    }

    /// Devices tracked plus ports quarantined (at most `max_devices`).
    pub fn len(&self) -> usize {
        self.devices.len() + self.quarantine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device is in our group (the fabric's DeviceAdded, or its INFO list). `now`
    /// is taken like every input's, though an arrival has no deadline yet.
    pub fn offered(&mut self, key: DeviceKey, now: Micros) {
        let _ = now;
        self.offer(key);
    }

    /// The device left our group (moved to another group, or gone from its box's list).
    pub fn withdrawn(&mut self, key: DeviceKey, now: Micros) {
        self.withdraw(key, now, false);
    }

    /// The box is down (keepalive lost): each of its devices leaves as a surprise.
    pub fn box_lost(&mut self, mac: MacAddr, now: Micros) {
        for key in self.keys_of(mac) {
            self.withdraw(key, now, true);
        }
    }

    /// The box restarted (a new epoch): its devices were reset under us, so each one
    /// in use leaves as a surprise and starts over as a new generation once it is gone,
    /// and each one that had failed is tried again.
    pub fn box_restarted(&mut self, mac: MacAddr, now: Micros) {
        let mut reset = false;
        for key in self.keys_of(mac) {
            let Some(e) = self.devices.get_mut(&key) else {
                continue;
            };
            match e.phase {
                Phase::Enumerating | Phase::Attaching | Phase::Ready => {
                    reset = true;
                    self.leave(key, now, true, true);
                }
                Phase::Failed => {
                    reset = true;
                    self.restart(key);
                }
                Phase::Arriving | Phase::Leaving { .. } => {}
            }
        }
        if reset {
            self.stats.restarts += 1;
        }
    }

    /// The answer to [`Action::Enumerate`]: the device is enumerated.
    pub fn enumerated(&mut self, key: DeviceKey, gen: Generation) {
        self.answer(key, gen, Answer::Enumerated);
    }

    /// The answer to [`Action::Enumerate`]: the enumeration failed, and nothing holds
    /// the port.
    pub fn enumeration_failed(&mut self, key: DeviceKey, gen: Generation) {
        self.answer(key, gen, Answer::EnumerationFailed);
    }

    /// The answer to [`Action::Attach`]: the device is in use.
    pub fn attached(&mut self, key: DeviceKey, gen: Generation) {
        self.answer(key, gen, Answer::Attached);
    }

    /// The answer to [`Action::Attach`]: the attachment failed, and nothing holds the
    /// port.
    pub fn attach_failed(&mut self, key: DeviceKey, gen: Generation) {
        self.answer(key, gen, Answer::AttachFailed);
    }

    /// The answer to [`Action::Detach`]: nothing holds the device's port any more. Its
    /// port is freed; a device offered again meanwhile starts over as a new generation.
    /// A late answer for a quarantined port frees that port.
    pub fn detached(&mut self, key: DeviceKey, gen: Generation) {
        if let Some(i) = self
            .quarantine
            .iter()
            .position(|q| q.key == key && q.gen == gen)
        {
            let q = self.quarantine.swap_remove(i);
            self.stats.late_detaches += 1;
            self.actions.push_back(Action::Free { port: q.port });
            return;
        }
        let Some(e) = self.devices.get_mut(&key) else {
            self.stats.stale += 1;
            return;
        };
        if e.gen != gen {
            self.stats.stale += 1;
            return;
        }
        let Phase::Leaving { returning, .. } = e.phase else {
            self.stats.unexpected += 1;
            return;
        };
        self.stats.detached += 1;
        if let Some(port) = e.port.take() {
            self.actions.push_back(Action::Free { port });
        }
        self.gone(key, returning);
    }

    /// Makes the devices agree with `current`, the fabric's list of the devices in our
    /// group now (from the node's peer table, which bounds it): a device missing from
    /// it is withdrawn, one not tracked is offered, and a leaving device learns whether
    /// it is coming back. Each change is counted: it stands for an event that was lost.
    pub fn reconcile(&mut self, now: Micros, current: impl Iterator<Item = DeviceKey>) {
        let current: BTreeSet<DeviceKey> = current.collect();
        for &key in &current {
            let changed = match self.devices.get(&key).map(|e| e.phase) {
                None => self.offer(key),
                Some(Phase::Leaving {
                    returning: false, ..
                }) => self.offer(key),
                Some(_) => false,
            };
            if changed {
                self.stats.reconciled += 1;
            }
        }
        let absent: Vec<DeviceKey> = self
            .devices
            .keys()
            .filter(|k| !current.contains(k))
            .copied()
            .collect();
        for key in absent {
            let changed = match self.devices.get(&key).map(|e| e.phase) {
                Some(Phase::Leaving {
                    returning: false, ..
                })
                | None => false,
                Some(_) => self.withdraw(key, now, false),
            };
            if changed {
                self.stats.reconciled += 1;
            }
        }
    }

    /// When [`Hotplug::handle_timeout`] is next due (µs): the earliest leave deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        self.devices
            .values()
            .filter_map(|e| match e.phase {
                Phase::Leaving { since, .. } => Some(self.deadline(since)),
                _ => None,
            })
            .min()
    }

    /// Quarantines the ports of the devices that have been leaving for the leave
    /// timeout or longer; each device is gone (and starts over as a new generation if
    /// it was offered again meanwhile and `max_devices` leaves room beside the
    /// quarantined port; else it is refused, counted, until `reconcile` finds room).
    pub fn handle_timeout(&mut self, now: Micros) {
        let due: Vec<DeviceKey> = self
            .devices
            .iter()
            .filter(|(_, e)| {
                matches!(e.phase, Phase::Leaving { since, .. } if self.deadline(since) <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(e) = self.devices.get_mut(&key) else {
                continue;
            };
            let Phase::Leaving { returning, .. } = e.phase else {
                continue;
            };
            if let Some(port) = e.port.take() {
                self.quarantine.push(Quarantined {
                    key,
                    gen: e.gen,
                    port,
                });
            }
            self.stats.quarantined += 1;
            // The quarantined port takes a place of its own: a device coming back
            // that no longer fits is dropped (counted) until `reconcile` finds room.
            let fits = self.len() <= self.cfg.max_devices;
            if returning && !fits {
                self.stats.refused_full += 1;
            }
            self.gone(key, returning && fits);
        }
    }

    /// The next thing to do. Actions already decided come first; then a device waiting
    /// for a port takes one from `ports` and is to be enumerated.
    #[must_use]
    pub fn poll_action<A: PortAllocator<Port = P>>(&mut self, ports: &mut A) -> Option<Action<P>> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        let key = loop {
            let &key = self.waiting.front()?;
            match self.devices.get(&key) {
                Some(e) if e.phase == Phase::Arriving => break key,
                // Kept out by `withdraw` and `restart`; dropped here all the same.
                _ => {
                    debug_assert!(false, "{key} waits for a port but is not arriving");
                    self.waiting.pop_front();
                }
            }
        };
        let port = match ports.allocate() {
            Some(p) if self.held(p) => {
                self.stats.allocator_reused += 1;
                None
            }
            p => p,
        };
        let e = self.devices.get_mut(&key)?;
        let Some(port) = port else {
            if !e.waited {
                e.waited = true;
                self.stats.waited_for_port += 1;
            }
            return None;
        };
        self.waiting.pop_front();
        e.phase = Phase::Enumerating;
        e.port = Some(port);
        Some(Action::Enumerate {
            key,
            gen: e.gen,
            port,
        })
    }

    fn deadline(&self, since: Micros) -> Micros {
        since.saturating_add(self.cfg.leave_timeout)
    }

    fn held(&self, port: P) -> bool {
        self.devices.values().any(|e| e.port == Some(port))
            || self.quarantine.iter().any(|q| q.port == port)
    }

    fn keys_of(&self, mac: MacAddr) -> Vec<DeviceKey> {
        self.devices
            .keys()
            .filter(|k| k.mac == mac)
            .copied()
            .collect()
    }

    fn new_gen(&mut self) -> Generation {
        let g = Generation(self.next_gen);
        // 2^64 generations are out of reach; saturating keeps this panic-free.
        self.next_gen = self.next_gen.saturating_add(1);
        g
    }

    /// Returns whether anything changed.
    fn offer(&mut self, key: DeviceKey) -> bool {
        match self.devices.get_mut(&key) {
            Some(e) => match &mut e.phase {
                Phase::Leaving { returning, .. } if !*returning => {
                    *returning = true;
                    true
                }
                _ => false,
            },
            None => {
                if self.len() >= self.cfg.max_devices {
                    self.stats.refused_full += 1;
                    return false;
                }
                let gen = self.new_gen();
                self.devices.insert(
                    key,
                    Entry {
                        gen,
                        phase: Phase::Arriving,
                        port: None,
                        waited: false,
                    },
                );
                self.waiting.push_back(key);
                self.stats.arrivals += 1;
                true
            }
        }
    }

    /// Returns whether anything changed.
    fn withdraw(&mut self, key: DeviceKey, now: Micros, surprise: bool) -> bool {
        let Some(e) = self.devices.get_mut(&key) else {
            return false;
        };
        match &mut e.phase {
            Phase::Arriving | Phase::Failed => {
                self.devices.remove(&key);
                self.waiting.retain(|k| *k != key);
                true
            }
            Phase::Leaving { returning, .. } => std::mem::replace(returning, false),
            Phase::Enumerating | Phase::Attaching | Phase::Ready => {
                self.leave(key, now, surprise, false);
                true
            }
        }
    }

    /// A device holding a port starts leaving: ghost (if its user may hold it), fail
    /// what waits on it, detach.
    fn leave(&mut self, key: DeviceKey, now: Micros, surprise: bool, returning: bool) {
        let Some(e) = self.devices.get_mut(&key) else {
            return;
        };
        let Some(port) = e.port else {
            debug_assert!(false, "{key} leaves without a port");
            return;
        };
        let gen = e.gen;
        let user = matches!(e.phase, Phase::Attaching | Phase::Ready);
        e.phase = Phase::Leaving {
            since: now,
            surprise,
            returning,
        };
        self.stats.departures += 1;
        if surprise {
            self.stats.surprises += 1;
        }
        if user {
            self.actions.push_back(Action::Ghost { key, gen, port });
        }
        self.actions
            .push_back(Action::FailPending { key, gen, port });
        self.actions.push_back(Action::Detach {
            key,
            gen,
            port,
            surprise,
        });
    }

    /// The device's port is released (freed or quarantined): it is gone, or, if it
    /// was offered again, arrives as a new generation.
    fn gone(&mut self, key: DeviceKey, returning: bool) {
        if returning {
            self.restart(key);
        } else {
            self.devices.remove(&key);
        }
    }

    /// A device without a port starts over as a new generation.
    fn restart(&mut self, key: DeviceKey) {
        let gen = self.new_gen();
        let Some(e) = self.devices.get_mut(&key) else {
            return;
        };
        debug_assert!(e.port.is_none());
        e.gen = gen;
        e.phase = Phase::Arriving;
        e.waited = false;
        self.waiting.push_back(key);
        self.stats.arrivals += 1;
    }

    fn answer(&mut self, key: DeviceKey, gen: Generation, what: Answer) {
        let Some(e) = self.devices.get_mut(&key) else {
            self.stats.stale += 1;
            return;
        };
        if e.gen != gen {
            self.stats.stale += 1;
            return;
        }
        let (expected, port) = match (e.phase, e.port) {
            (Phase::Enumerating, Some(p)) => (
                matches!(what, Answer::Enumerated | Answer::EnumerationFailed),
                p,
            ),
            (Phase::Attaching, Some(p)) => {
                (matches!(what, Answer::Attached | Answer::AttachFailed), p)
            }
            _ => {
                self.stats.unexpected += 1;
                return;
            }
        };
        if !expected {
            self.stats.unexpected += 1;
            return;
        }
        match what {
            Answer::Enumerated => {
                self.stats.enumerated += 1;
                e.phase = Phase::Attaching;
                self.actions.push_back(Action::Attach { key, gen, port });
            }
            Answer::Attached => {
                self.stats.attached += 1;
                e.phase = Phase::Ready;
            }
            Answer::EnumerationFailed | Answer::AttachFailed => {
                if what == Answer::EnumerationFailed {
                    self.stats.enumeration_failures += 1;
                } else {
                    self.stats.attach_failures += 1;
                }
                e.phase = Phase::Failed;
                e.port = None;
                self.actions.push_back(Action::Free { port });
            }
        }
    }
}

fn view<P: Copy>(key: DeviceKey, e: &Entry<P>) -> DeviceView<P> {
    DeviceView {
        key,
        gen: e.gen,
        phase: e.phase,
        port: e.port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Map;

    /// The virtual switch as the tests see it: ports 0..n, lowest free first; a port
    /// handed out twice or freed when not in use fails the test.
    struct Pool {
        free: BTreeSet<u16>,
        live: BTreeSet<u16>,
    }

    impl Pool {
        fn new(n: u16) -> Pool {
            Pool {
                free: (0..n).collect(),
                live: BTreeSet::new(),
            }
        }
        fn release(&mut self, p: u16) {
            assert!(self.live.remove(&p), "port {p} freed while not in use");
            self.free.insert(p);
        }
    }

    impl PortAllocator for Pool {
        type Port = u16;
        fn allocate(&mut self) -> Option<u16> {
            let p = self.free.pop_first()?;
            assert!(self.live.insert(p), "port {p} handed out twice");
            Some(p)
        }
    }

    const MS: Micros = 1000;

    fn mac(b: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, b])
    }

    fn key(b: u8, slot: u8) -> DeviceKey {
        DeviceKey {
            gid: 10,
            mac: mac(b),
            slot,
        }
    }

    fn hp(max: usize) -> Hotplug<u16> {
        Hotplug::new(HotplugConfig {
            max_devices: max,
            leave_timeout: 100 * MS,
        })
    }

    /// Every action, Free carried out on the pool.
    fn drain(h: &mut Hotplug<u16>, pool: &mut Pool) -> Vec<Action<u16>> {
        let mut out = Vec::new();
        while let Some(a) = h.poll_action(pool) {
            if let Action::Free { port } = a {
                pool.release(port);
            }
            out.push(a);
        }
        out
    }

    fn phase(h: &Hotplug<u16>, k: DeviceKey) -> Option<Phase> {
        h.device(k).map(|d| d.phase)
    }

    /// Offered, enumerated and attached; returns its generation and port.
    fn ready(h: &mut Hotplug<u16>, pool: &mut Pool, k: DeviceKey) -> (Generation, u16) {
        h.offered(k, 0);
        let a = drain(h, pool);
        let [Action::Enumerate { key, gen, port }] = a[..] else {
            panic!("expected one Enumerate, got {a:?}");
        };
        assert_eq!(key, k);
        h.enumerated(k, gen);
        assert_eq!(drain(h, pool), [Action::Attach { key: k, gen, port }]);
        h.attached(k, gen);
        assert_eq!(phase(h, k), Some(Phase::Ready));
        (gen, port)
    }

    #[test]
    fn a_device_arrives_enumerates_attaches_and_is_ready() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let k = key(1, 0);
        h.offered(k, 0);
        assert_eq!(phase(&h, k), Some(Phase::Arriving));
        let (gen, port) = ready(&mut h, &mut pool, k);
        assert_eq!((gen, port), (Generation(1), 0));
        assert_eq!(h.device(k).unwrap().port, Some(0));
        let s = h.stats();
        assert_eq!((s.arrivals, s.enumerated, s.attached), (1, 1, 1));
        // Offering it again (INFO repeats, reconcile) changes nothing.
        h.offered(k, 5);
        assert!(drain(&mut h, &mut pool).is_empty());
        assert_eq!(h.device(k).unwrap().gen, gen);
    }

    #[test]
    fn withdrawn_when_ready_ghosts_fails_pending_detaches_then_frees() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let k = key(1, 0);
        let (gen, port) = ready(&mut h, &mut pool, k);
        h.withdrawn(k, 7);
        assert_eq!(
            drain(&mut h, &mut pool),
            [
                Action::Ghost { key: k, gen, port },
                Action::FailPending { key: k, gen, port },
                Action::Detach {
                    key: k,
                    gen,
                    port,
                    surprise: false
                },
            ]
        );
        assert_eq!(
            phase(&h, k),
            Some(Phase::Leaving {
                since: 7,
                surprise: false,
                returning: false
            })
        );
        assert_eq!(h.poll_timeout(), Some(7 + 100 * MS));
        h.detached(k, gen);
        assert_eq!(drain(&mut h, &mut pool), [Action::Free { port }]);
        assert!(h.is_empty() && pool.live.is_empty());
        assert_eq!(h.poll_timeout(), None);
        assert_eq!(h.stats().detached, 1);
    }

    #[test]
    fn withdrawn_while_enumerating_cancels_without_a_ghost() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let k = key(1, 3);
        h.offered(k, 0);
        let [Action::Enumerate { gen, port, .. }] = drain(&mut h, &mut pool)[..] else {
            panic!()
        };
        h.withdrawn(k, 1);
        assert_eq!(
            drain(&mut h, &mut pool),
            [
                Action::FailPending { key: k, gen, port },
                Action::Detach {
                    key: k,
                    gen,
                    port,
                    surprise: false
                },
            ]
        );
        // The enumeration's late answer does nothing.
        h.enumerated(k, gen);
        assert!(drain(&mut h, &mut pool).is_empty());
        assert_eq!(h.stats().unexpected, 1);
        h.detached(k, gen);
        assert_eq!(drain(&mut h, &mut pool), [Action::Free { port }]);
        assert!(h.is_empty());
    }

    #[test]
    fn withdrawn_while_arriving_is_forgotten() {
        let (mut h, mut pool) = (hp(8), Pool::new(0));
        let k = key(1, 0);
        h.offered(k, 0);
        assert!(drain(&mut h, &mut pool).is_empty());
        h.withdrawn(k, 1);
        assert!(h.is_empty());
        let mut pool = Pool::new(1);
        assert!(
            drain(&mut h, &mut pool).is_empty(),
            "nothing waits any more"
        );
    }

    #[test]
    fn a_lost_box_takes_only_its_devices_as_surprises() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let (a, b, c) = (key(1, 0), key(1, 1), key(2, 0));
        let (ga, pa) = ready(&mut h, &mut pool, a);
        let (gb, pb) = ready(&mut h, &mut pool, b);
        ready(&mut h, &mut pool, c);
        h.box_lost(mac(1), 9);
        let acts = drain(&mut h, &mut pool);
        assert!(acts.contains(&Action::Detach {
            key: a,
            gen: ga,
            port: pa,
            surprise: true
        }));
        assert!(acts.contains(&Action::Detach {
            key: b,
            gen: gb,
            port: pb,
            surprise: true
        }));
        assert_eq!(acts.len(), 6, "ghost, fail, detach for each: {acts:?}");
        assert_eq!(phase(&h, c), Some(Phase::Ready));
        assert_eq!(h.stats().surprises, 2);
    }

    #[test]
    fn a_restarted_box_resets_its_devices_which_come_back_as_a_new_generation() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let k = key(1, 0);
        let (gen, port) = ready(&mut h, &mut pool, k);
        h.box_restarted(mac(1), 3);
        let acts = drain(&mut h, &mut pool);
        assert_eq!(
            acts.last(),
            Some(&Action::Detach {
                key: k,
                gen,
                port,
                surprise: true
            })
        );
        h.detached(k, gen);
        let acts = drain(&mut h, &mut pool);
        assert_eq!(
            acts,
            [
                Action::Free { port },
                Action::Enumerate {
                    key: k,
                    gen: Generation(gen.0 + 1),
                    port
                }
            ]
        );
        assert_eq!(h.stats().restarts, 1);
    }

    #[test]
    fn returning_while_leaving_is_offered_again_after_gone_with_the_next_generation() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let k = key(2, 5);
        let (gen, port) = ready(&mut h, &mut pool, k);
        h.withdrawn(k, 1);
        drain(&mut h, &mut pool);
        h.offered(k, 2);
        assert!(
            matches!(
                phase(&h, k),
                Some(Phase::Leaving {
                    returning: true,
                    ..
                })
            ),
            "it waits for the old generation to be gone"
        );
        assert!(drain(&mut h, &mut pool).is_empty());
        h.detached(k, gen);
        let next = Generation(gen.0 + 1);
        assert_eq!(
            drain(&mut h, &mut pool),
            [
                Action::Free { port },
                Action::Enumerate {
                    key: k,
                    gen: next,
                    port
                }
            ]
        );
        // Left again before it was gone: withdrawn again, it is not re-offered.
        h.enumerated(k, next);
        h.attached(k, next);
        drain(&mut h, &mut pool);
        h.withdrawn(k, 3);
        h.offered(k, 4);
        h.withdrawn(k, 5);
        drain(&mut h, &mut pool);
        h.detached(k, next);
        assert_eq!(drain(&mut h, &mut pool), [Action::Free { port }]);
        assert!(h.is_empty());
    }

    #[test]
    fn a_detach_that_never_comes_quarantines_the_port_after_the_timeout() {
        let (mut h, mut pool) = (hp(8), Pool::new(2));
        let k = key(1, 0);
        let (gen, port) = ready(&mut h, &mut pool, k);
        h.withdrawn(k, 10);
        drain(&mut h, &mut pool);
        h.offered(k, 11);
        let due = h.poll_timeout().unwrap();
        assert_eq!(due, 10 + 100 * MS);
        h.handle_timeout(due - 1);
        assert!(h.device(k).unwrap().gen == gen, "not yet");
        h.handle_timeout(due);
        assert_eq!(
            h.quarantined().collect::<Vec<_>>(),
            [Quarantined { key: k, gen, port }]
        );
        assert_eq!(h.stats().quarantined, 1);
        // It came back meanwhile: a new generation on another port; the quarantined
        // port is not handed out.
        let acts = drain(&mut h, &mut pool);
        let [Action::Enumerate {
            gen: g2, port: p2, ..
        }] = acts[..]
        else {
            panic!("{acts:?}")
        };
        assert!(g2 > gen);
        assert_ne!(p2, port);
        assert_eq!(h.len(), 2);
        // The late answer frees the quarantined port.
        h.detached(k, gen);
        assert_eq!(drain(&mut h, &mut pool), [Action::Free { port }]);
        assert_eq!(h.stats().late_detaches, 1);
        assert_eq!(h.quarantined().count(), 0);
        assert_eq!(h.device(k).unwrap().gen, g2);
    }

    #[test]
    fn without_ports_devices_wait_in_order_and_take_freed_ports() {
        let (mut h, mut pool) = (hp(8), Pool::new(1));
        let (a, b) = (key(1, 0), key(2, 0));
        let (ga, pa) = ready(&mut h, &mut pool, a);
        h.offered(b, 1);
        assert!(drain(&mut h, &mut pool).is_empty());
        assert!(drain(&mut h, &mut pool).is_empty());
        assert_eq!(h.stats().waited_for_port, 1, "counted once per arrival");
        assert_eq!(phase(&h, b), Some(Phase::Arriving));
        h.withdrawn(a, 2);
        drain(&mut h, &mut pool);
        h.detached(a, ga);
        let acts = drain(&mut h, &mut pool);
        assert_eq!(acts[0], Action::Free { port: pa });
        assert!(matches!(acts[1], Action::Enumerate { key, port, .. } if key == b && port == pa));
    }

    #[test]
    fn a_failed_enumeration_frees_the_port_and_waits_for_a_new_offer_or_a_restart() {
        let (mut h, mut pool) = (hp(8), Pool::new(2));
        let k = key(1, 0);
        h.offered(k, 0);
        let [Action::Enumerate { gen, port, .. }] = drain(&mut h, &mut pool)[..] else {
            panic!()
        };
        h.enumeration_failed(k, gen);
        assert_eq!(drain(&mut h, &mut pool), [Action::Free { port }]);
        assert_eq!(phase(&h, k), Some(Phase::Failed));
        h.offered(k, 1);
        assert!(drain(&mut h, &mut pool).is_empty(), "no retry loop");
        h.box_restarted(mac(1), 2);
        let acts = drain(&mut h, &mut pool);
        assert!(matches!(acts[..], [Action::Enumerate { gen: g, .. }] if g > gen));
        assert_eq!(h.stats().enumeration_failures, 1);
        // A failed device that is withdrawn is forgotten.
        let [Action::Enumerate { gen, .. }] = acts[..] else {
            panic!()
        };
        h.enumeration_failed(k, gen);
        drain(&mut h, &mut pool);
        h.withdrawn(k, 3);
        assert!(h.is_empty() && pool.live.is_empty());
    }

    #[test]
    fn a_failed_attach_frees_the_port() {
        let (mut h, mut pool) = (hp(8), Pool::new(2));
        let k = key(1, 0);
        h.offered(k, 0);
        let [Action::Enumerate { gen, port, .. }] = drain(&mut h, &mut pool)[..] else {
            panic!()
        };
        h.enumerated(k, gen);
        drain(&mut h, &mut pool);
        h.attach_failed(k, gen);
        assert_eq!(drain(&mut h, &mut pool), [Action::Free { port }]);
        assert_eq!(phase(&h, k), Some(Phase::Failed));
        assert_eq!(h.stats().attach_failures, 1);
    }

    #[test]
    fn stale_generations_are_ignored_and_counted() {
        let (mut h, mut pool) = (hp(8), Pool::new(2));
        let k = key(1, 0);
        h.offered(k, 0);
        let [Action::Enumerate { gen, .. }] = drain(&mut h, &mut pool)[..] else {
            panic!()
        };
        let old = Generation(gen.0 - 1);
        let other = Generation(gen.0 + 7);
        for g in [old, other] {
            h.enumerated(k, g);
            h.enumeration_failed(k, g);
            h.attached(k, g);
            h.attach_failed(k, g);
            h.detached(k, g);
        }
        h.detached(key(3, 3), gen);
        assert_eq!(h.stats().stale, 11);
        assert_eq!(phase(&h, k), Some(Phase::Enumerating));
        assert!(drain(&mut h, &mut pool).is_empty());
        // Answers of the right generation but never asked for are counted too.
        h.attached(k, gen);
        h.detached(k, gen);
        assert_eq!(h.stats().unexpected, 2);
        assert_eq!(phase(&h, k), Some(Phase::Enumerating));
    }

    #[test]
    fn reconcile_repairs_lost_events() {
        let (mut h, mut pool) = (hp(8), Pool::new(4));
        let (a, b, c) = (key(1, 0), key(1, 1), key(2, 0));
        let (ga, _) = ready(&mut h, &mut pool, a);
        ready(&mut h, &mut pool, b);
        // b's DeviceRemoved and c's DeviceAdded were lost.
        h.reconcile(5, [a, c].into_iter());
        assert!(matches!(phase(&h, b), Some(Phase::Leaving { .. })));
        assert_eq!(phase(&h, c), Some(Phase::Arriving));
        assert_eq!(h.stats().reconciled, 2);
        // The same list again changes nothing.
        h.reconcile(6, [a, c].into_iter());
        assert_eq!(h.stats().reconciled, 2);
        // A leaving device that is listed again is coming back.
        h.withdrawn(a, 7);
        h.reconcile(8, [a, c].into_iter());
        assert!(matches!(
            phase(&h, a),
            Some(Phase::Leaving {
                returning: true,
                ..
            })
        ));
        h.reconcile(9, [c].into_iter());
        assert!(matches!(
            phase(&h, a),
            Some(Phase::Leaving {
                returning: false,
                ..
            })
        ));
        assert_eq!(h.stats().reconciled, 4);
        drain(&mut h, &mut pool);
        h.detached(a, ga);
        assert!(h.device(a).is_none());
    }

    #[test]
    fn at_most_max_devices_are_tracked_quarantine_included() {
        let (mut h, mut pool) = (hp(2), Pool::new(8));
        let (gen, _) = ready(&mut h, &mut pool, key(1, 0));
        h.offered(key(1, 1), 0);
        h.offered(key(1, 2), 0);
        assert_eq!(h.len(), 2);
        assert_eq!(h.stats().refused_full, 1);
        h.withdrawn(key(1, 0), 0);
        h.handle_timeout(100 * MS);
        assert_eq!(h.quarantined().count(), 1);
        h.offered(key(1, 2), 1);
        assert_eq!(h.stats().refused_full, 2, "the quarantined port counts");
        h.detached(key(1, 0), gen);
        h.offered(key(1, 2), 2);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_returning_device_quarantined_when_full_is_dropped_until_room() {
        let (mut h, mut pool) = (hp(2), Pool::new(8));
        let (a, b) = (key(1, 0), key(1, 1));
        let (ga, _) = ready(&mut h, &mut pool, a);
        ready(&mut h, &mut pool, b);
        h.withdrawn(a, 0);
        h.offered(a, 1);
        h.handle_timeout(100 * MS);
        assert_eq!(h.len(), 2, "quarantine and the new generation would make 3");
        assert_eq!(h.quarantined().count(), 1);
        assert!(h.device(a).is_none());
        assert_eq!(h.stats().refused_full, 1);
        // Once the quarantined port is freed, the next reconcile brings it back.
        h.detached(a, ga);
        h.reconcile(2, [a, b].into_iter());
        assert_eq!(phase(&h, a), Some(Phase::Arriving));
        drain(&mut h, &mut pool);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_port_the_allocator_hands_out_twice_is_refused() {
        let mut h = hp(8);
        let mut always_zero = || Some(0u16);
        h.offered(key(1, 0), 0);
        h.offered(key(1, 1), 0);
        assert!(matches!(
            h.poll_action(&mut always_zero),
            Some(Action::Enumerate { port: 0, .. })
        ));
        assert_eq!(h.poll_action(&mut always_zero), None);
        assert_eq!(h.stats().allocator_reused, 1);
        assert_eq!(phase(&h, key(1, 1)), Some(Phase::Arriving));
    }

    // ----- random event sequences -----

    const BOXES: u8 = 3;
    const KEYS: u8 = 40;
    const PORTS: u16 = 24;
    const MAX: usize = 32;

    fn key_of(i: u8) -> DeviceKey {
        key(i % BOXES, i / BOXES)
    }

    #[derive(Clone, Debug)]
    enum GenPick {
        Current,
        Stale(u8),
    }

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Enumerated,
        EnumerationFailed,
        Attached,
        AttachFailed,
        Detached,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Offer(u8),
        Withdraw(u8),
        BoxLost(u8),
        BoxRestarted(u8),
        Answer(u8, Kind, GenPick),
        Tick(u32),
        Reconcile(u64),
        Poll,
        /// The caller answers what the `n`th device waits for (success or failure).
        Step(usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0..KEYS;
        let kind = prop_oneof![
            Just(Kind::Enumerated),
            Just(Kind::EnumerationFailed),
            Just(Kind::Attached),
            Just(Kind::AttachFailed),
            Just(Kind::Detached),
        ];
        let gen = prop_oneof![3 => Just(GenPick::Current), 1 => (1u8..4).prop_map(GenPick::Stale)];
        prop_oneof![
            4 => k.clone().prop_map(Op::Offer),
            2 => k.clone().prop_map(Op::Withdraw),
            1 => (0..BOXES).prop_map(Op::BoxLost),
            1 => (0..BOXES).prop_map(Op::BoxRestarted),
            8 => (k, kind, gen).prop_map(|(k, kind, g)| Op::Answer(k, kind, g)),
            2 => (0u32..60_000).prop_map(Op::Tick),
            1 => any::<u64>().prop_map(Op::Reconcile),
            4 => Just(Op::Poll),
            10 => (any::<usize>(), proptest::bool::weighted(0.85)).prop_map(|(n, ok)| Op::Step(n, ok)),
        ]
    }

    /// What can be compared before and after an input.
    type Snapshot = (
        Vec<DeviceView<u16>>,
        Vec<Quarantined<u16>>,
        Vec<Action<u16>>,
    );

    fn snapshot(h: &Hotplug<u16>) -> Snapshot {
        (
            h.devices().collect(),
            h.quarantined().collect(),
            h.actions.iter().copied().collect(),
        )
    }

    /// The caller's side: the pool, and which key each port was handed to.
    struct World {
        h: Hotplug<u16>,
        pool: Pool,
        owner: Map<u16, DeviceKey>,
        now: Micros,
    }

    impl World {
        fn poll(&mut self) {
            while let Some(a) = self.h.poll_action(&mut self.pool) {
                match a {
                    Action::Enumerate { key, port, .. } => {
                        // A key is in at most one live port (quarantined ones are dead).
                        let q: Vec<u16> = self.h.quarantined().map(|q| q.port).collect();
                        assert!(
                            !self
                                .owner
                                .iter()
                                .any(|(p, k)| *k == key && *p != port && !q.contains(p)),
                            "{key} enumerated on port {port} while it holds another"
                        );
                        assert!(self.owner.insert(port, key).is_none());
                    }
                    Action::Free { port } => {
                        assert!(self.h.held_by_none(port), "port {port} freed while held");
                        self.owner.remove(&port);
                        self.pool.release(port);
                    }
                    _ => {}
                }
            }
        }

        fn check(&self) {
            // Every port held is distinct and was handed out by the pool.
            let mut held: Vec<u16> = self
                .h
                .devices()
                .filter_map(|d| d.port)
                .chain(self.h.quarantined().map(|q| q.port))
                .collect();
            let n = held.len();
            held.sort_unstable();
            held.dedup();
            assert_eq!(held.len(), n, "a port held twice");
            for p in &held {
                assert!(
                    self.pool.live.contains(p),
                    "port {p} held but not handed out"
                );
            }
            assert!(self.h.len() <= MAX);
            for d in self.h.devices() {
                let has_port = !matches!(d.phase, Phase::Arriving | Phase::Failed);
                assert_eq!(d.port.is_some(), has_port, "{d:?}");
            }
            assert!(self.h.waiting.len() <= MAX);
        }
    }

    impl Hotplug<u16> {
        fn held_by_none(&self, port: u16) -> bool {
            !self.held(port)
        }
    }

    fn current_gen(h: &Hotplug<u16>, k: DeviceKey) -> Generation {
        h.device(k).map(|d| d.gen).unwrap_or(Generation(0))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_events_keep_the_invariants(ops in proptest::collection::vec(op(), 1..300)) {
            let mut w = World {
                h: hp(MAX),
                pool: Pool::new(PORTS),
                owner: Map::new(),
                now: 0,
            };
            for op in ops {
                match op {
                    Op::Offer(i) => w.h.offered(key_of(i), w.now),
                    Op::Withdraw(i) => w.h.withdrawn(key_of(i), w.now),
                    Op::BoxLost(b) => w.h.box_lost(mac(b), w.now),
                    Op::BoxRestarted(b) => w.h.box_restarted(mac(b), w.now),
                    Op::Tick(ms) => {
                        w.now += Micros::from(ms) * 10;
                        if w.h.poll_timeout().is_some_and(|t| t <= w.now) {
                            w.h.handle_timeout(w.now);
                        }
                        for d in w.h.devices() {
                            if let Phase::Leaving { since, .. } = d.phase {
                                prop_assert!(since + 100 * MS > w.now, "{d:?} outlived its timeout");
                            }
                        }
                    }
                    Op::Reconcile(bits) => {
                        let cur = (0..KEYS).filter(|i| bits >> (i % 64) & 1 == 1).map(key_of);
                        w.h.reconcile(w.now, cur);
                    }
                    Op::Poll => w.poll(),
                    Op::Step(n, ok) => {
                        let waiting: Vec<(DeviceKey, Generation, Phase)> = w
                            .h
                            .devices()
                            .filter(|d| !matches!(d.phase, Phase::Arriving | Phase::Ready | Phase::Failed))
                            .map(|d| (d.key, d.gen, d.phase))
                            .chain(w.h.quarantined().map(|q| (q.key, q.gen, Phase::Failed)))
                            .collect();
                        if !waiting.is_empty() {
                            let (k, g, p) = waiting[n % waiting.len()];
                            match (p, ok) {
                                (Phase::Enumerating, true) => w.h.enumerated(k, g),
                                (Phase::Enumerating, false) => w.h.enumeration_failed(k, g),
                                (Phase::Attaching, true) => w.h.attached(k, g),
                                (Phase::Attaching, false) => w.h.attach_failed(k, g),
                                // Leaving, or a quarantined port's late answer.
                                _ => w.h.detached(k, g),
                            }
                        }
                    }
                    Op::Answer(i, kind, pick) => {
                        let k = key_of(i);
                        let cur = current_gen(&w.h, k);
                        let g = match pick {
                            GenPick::Current => {
                                // A late detach of a quarantined generation is an answer too.
                                w.h.quarantined().find(|q| q.key == k).map(|q| q.gen).unwrap_or(cur)
                            }
                            GenPick::Stale(d) => Generation(cur.0.saturating_sub(u64::from(d))),
                        };
                        let stale = g != cur && !w.h.quarantined().any(|q| q.key == k && q.gen == g);
                        let before = snapshot(&w.h);
                        let stale_count = w.h.stats().stale;
                        match kind {
                            Kind::Enumerated => w.h.enumerated(k, g),
                            Kind::EnumerationFailed => w.h.enumeration_failed(k, g),
                            Kind::Attached => w.h.attached(k, g),
                            Kind::AttachFailed => w.h.attach_failed(k, g),
                            Kind::Detached => w.h.detached(k, g),
                        }
                        if stale {
                            prop_assert_eq!(snapshot(&w.h), before, "a stale answer changed state");
                            prop_assert_eq!(w.h.stats().stale, stale_count + 1);
                        }
                    }
                }
                w.check();
            }
            // Everything leaves and every detach is answered: no port leaks.
            w.poll();
            w.h.reconcile(w.now, std::iter::empty());
            for _ in 0..4 {
                w.poll();
                let answers: Vec<(DeviceKey, Generation, Phase)> =
                    w.h.devices().map(|d| (d.key, d.gen, d.phase)).collect();
                for (k, g, p) in answers {
                    match p {
                        Phase::Enumerating => w.h.enumeration_failed(k, g),
                        Phase::Attaching => w.h.attach_failed(k, g),
                        Phase::Leaving { .. } => w.h.detached(k, g),
                        _ => {}
                    }
                }
                let q: Vec<Quarantined<u16>> = w.h.quarantined().collect();
                for q in q {
                    w.h.detached(q.key, q.gen);
                }
                w.poll();
                w.h.reconcile(w.now, std::iter::empty());
            }
            w.check();
            prop_assert!(w.h.is_empty(), "{:?}", snapshot(&w.h));
            prop_assert!(w.pool.live.is_empty(), "ports leaked: {:?}", w.pool.live);
            prop_assert!(w.owner.is_empty());
        }
    }
}
