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

    /// The device is in our group (the fabric's DeviceAdded, or its INFO list).
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
    /// it was offered again meanwhile).
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
            self.gone(key, returning);
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
