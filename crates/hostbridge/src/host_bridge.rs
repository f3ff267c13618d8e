//! The host bridge of one host: every device of its group, from any number of boxes,
//! on a port of its virtual switch, each followed by its own hot-plug state machine.
//!
//! It joins four pieces: the fabric link ([`FabricLink`], switched), the virtual
//! switch and its router ([`Router`]), the root complex with its driver API
//! ([`rootcomplex::Host`]), and the hot-plug state machines ([`Hotplug`]). A device
//! offered in the group gets the lowest free port, is enumerated behind it (its BARs
//! in the port's windows), and is handed to its user; a device that leaves (moved to
//! another group, its box lost or restarted) is ghosted at once (nothing more goes to
//! or comes from its box, requests waiting on it fail now), taken from its user, and
//! its port freed for the next device, with the same bus and windows.
//!
//! The user is whatever the program puts devices to: a driver (`tether host`'s memdev
//! self-test), or a VMM's hot-plug slot. The bridge tells it through [`Change::Attach`]
//! and [`Change::Detach`], and it answers with [`HostBridge::attached`] (or
//! [`HostBridge::attach_failed`]) and [`HostBridge::detached`] when it is done. A
//! driver may answer at once; a VMM answers when its guest has let go.
//!
//! Calling order: call [`HostBridge::poll`] in a loop; it runs the fabric and the
//! root complex for one round (serving the devices' DMA), feeds the fabric's events
//! and its device list to the state machines, carries out what they ask that the
//! bridge can do itself, and appends what the program must know or do to `out`.
//! Between rounds the program may use [`HostBridge::host_mut`] to drive a device
//! (config, BAR access, DMA buffers, interrupts): that too serves every device.

use std::collections::BTreeMap;
use std::time::Duration;

use efe::Micros;
use fabric::FabricEvent;
use rootcomplex::{DeviceInfo, Host, HostError};
use tlp::Bdf;

use crate::hotplug::{Action, DeviceKey, DeviceView, Generation, Hotplug, HotplugConfig};
use crate::route::Router;
use crate::switch::PortId;
use crate::FabricLink;

/// How often the bridge checks its devices against the fabric's device list (the
/// fabric's events are edge-triggered and can be lost; the list is the truth).
const RECONCILE_EVERY: Micros = 50_000;

/// What happened, or what the program is to do, in order.
#[derive(Debug)]
pub enum Change {
    /// A fabric event (peers, devices), for the program's log.
    Fabric(FabricEvent),
    /// A device offered in the group that the bridge cannot take: its slot number is
    /// not a device number (0 to 31).
    Unaddressable { key: DeviceKey },
    /// A device was enumerated behind `port`.
    Enumerated {
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        info: DeviceInfo,
    },
    /// A device's enumeration failed; it waits until its box offers it anew.
    EnumerationFailed {
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        error: HostError,
    },
    /// Hand the device at `bdf` to its user, then answer [`HostBridge::attached`] or
    /// [`HostBridge::attach_failed`].
    Attach {
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        bdf: Bdf,
    },
    /// The device is leaving (`surprise`: its box is gone or was reset): take it from
    /// its user, then answer [`HostBridge::detached`]. The bridge has forgotten it
    /// already; accesses to it are answered by the switch without reaching the wire.
    Detach {
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        bdf: Bdf,
        surprise: bool,
    },
    /// The port is free again.
    Freed { port: PortId },
}

/// Counters of the bridge itself (the router, the switch, the state machines and the
/// root complex count the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HostBridgeStats {
    /// Devices offered whose slot number cannot be a device number.
    pub unaddressable: u64,
    /// Fabric events dropped because the link's event queue overflowed are counted by
    /// the link; these are the device-list checks run.
    pub reconciles: u64,
    /// Ports the switch refused to free (a bug if ever non-zero).
    pub free_refused: u64,
}

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBridgeConfig {
    /// The host's group.
    pub gid: u16,
    /// How long a device may take to leave its user before its port is quarantined.
    pub leave_timeout: Micros,
}

/// The host bridge: see the module docs.
pub struct HostBridge {
    gid: u16,
    host: Host<FabricLink>,
    hotplug: Hotplug<PortId>,
    /// What enumeration found, by port.
    found: BTreeMap<PortId, DeviceInfo>,
    last_reconcile: Option<Micros>,
    stats: HostBridgeStats,
}

/// Why a host bridge cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostBridgeError {
    #[error("the host's link must be switched (FabricLink::switched)")]
    NotSwitched,
}

impl HostBridge {
    /// A host bridge over `host`, whose link must be switched; it holds as many
    /// devices as the switch has ports.
    pub fn new(
        cfg: HostBridgeConfig,
        host: Host<FabricLink>,
    ) -> Result<HostBridge, HostBridgeError> {
        let ports = host
            .link()
            .router()
            .ok_or(HostBridgeError::NotSwitched)?
            .switch()
            .capacity();
        Ok(HostBridge {
            gid: cfg.gid,
            host,
            hotplug: Hotplug::new(HotplugConfig {
                max_devices: ports,
                leave_timeout: cfg.leave_timeout,
            }),
            found: BTreeMap::new(),
            last_reconcile: None,
            stats: HostBridgeStats::default(),
        })
    }

    pub fn gid(&self) -> u16 {
        self.gid
    }

    pub fn host(&self) -> &Host<FabricLink> {
        &self.host
    }

    /// The root complex, to drive a device between rounds.
    pub fn host_mut(&mut self) -> &mut Host<FabricLink> {
        &mut self.host
    }

    pub fn router(&self) -> &Router {
        self.host.link().router().expect("checked in new")
    }

    fn router_mut(&mut self) -> &mut Router {
        self.host.link_mut().router_mut().expect("checked in new")
    }

    pub fn hotplug(&self) -> &Hotplug<PortId> {
        &self.hotplug
    }

    pub fn stats(&self) -> HostBridgeStats {
        self.stats
    }

    /// The devices, with what enumeration found of those that got that far.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceView<PortId>, Option<&DeviceInfo>)> + '_ {
        self.hotplug
            .devices()
            .map(|v| (v, v.port.and_then(|p| self.found.get(&p))))
    }

    /// The device on `port`, if it is in use (attached or being attached).
    pub fn device_on(&self, port: PortId) -> Option<&DeviceInfo> {
        self.found.get(&port)
    }

    /// Answer to [`Change::Attach`]: the user has the device.
    pub fn attached(&mut self, key: DeviceKey, gen: Generation) {
        self.hotplug.attached(key, gen);
    }

    /// Answer to [`Change::Attach`]: the user could not take the device, and holds
    /// nothing of it.
    pub fn attach_failed(&mut self, key: DeviceKey, gen: Generation) {
        self.hotplug.attach_failed(key, gen);
    }

    /// Answer to [`Change::Detach`]: the user holds nothing of the device any more.
    pub fn detached(&mut self, key: DeviceKey, gen: Generation) {
        self.hotplug.detached(key, gen);
    }

    fn now(&self) -> Micros {
        self.host.link().fabric().now()
    }

    /// One round (see the module docs): runs the fabric and the root complex, waiting
    /// up to `wait` for a TLP, and appends to `out` what happened. Returns whether it
    /// moved anything (TLPs, changes): a loop must not sleep after a round that did,
    /// since more may be waiting in the link.
    pub fn poll(&mut self, wait: Duration, out: &mut Vec<Change>) -> bool {
        let before = out.len();
        let moved = self.host.poll(wait);
        let now = self.now();
        while let Some(e) = self.host.link_mut().events.pop_front() {
            self.fabric_event(&e, now, out);
            out.push(Change::Fabric(e));
        }
        if self
            .last_reconcile
            .is_none_or(|t| now.saturating_sub(t) >= RECONCILE_EVERY)
        {
            self.reconcile(now);
        }
        if self.hotplug.poll_timeout().is_some_and(|t| t <= now) {
            self.hotplug.handle_timeout(now);
        }
        self.carry_out(out);
        moved || out.len() > before
    }

    fn key(&self, peer: wire::MacAddr, slot: u8) -> DeviceKey {
        DeviceKey {
            gid: self.gid,
            mac: peer,
            slot,
        }
    }

    fn fabric_event(&mut self, e: &FabricEvent, now: Micros, out: &mut Vec<Change>) {
        match *e {
            FabricEvent::DeviceAdded { gid, peer, device } if gid == self.gid => {
                let key = self.key(peer, device.slot);
                if Router::device_bdf(PortId::new(0).expect("port 0"), device.slot).is_none() {
                    self.stats.unaddressable += 1;
                    out.push(Change::Unaddressable { key });
                    return;
                }
                self.hotplug.offered(key, now);
            }
            FabricEvent::DeviceRemoved { gid, peer, slot } if gid == self.gid => {
                // The node says a lost box's devices are removed before it says the box
                // is down; by now it has forgotten the box, and its devices leave as
                // the surprise they are.
                if self
                    .host
                    .link()
                    .fabric()
                    .node()
                    .peer_role(gid, peer)
                    .is_none()
                {
                    self.hotplug.box_lost(peer, now);
                } else {
                    let key = self.key(peer, slot);
                    self.hotplug.withdrawn(key, now);
                }
            }
            FabricEvent::PeerDown { gid, peer, .. } if gid == self.gid => {
                self.hotplug.box_lost(peer, now)
            }
            FabricEvent::PeerRestarted { gid, peer, .. } if gid == self.gid => {
                self.hotplug.box_restarted(peer, now)
            }
            _ => {}
        }
    }

    /// Checks the devices against the fabric's list of the group's devices now.
    fn reconcile(&mut self, now: Micros) {
        self.last_reconcile = Some(now);
        self.stats.reconciles += 1;
        let gid = self.gid;
        let current: Vec<DeviceKey> = self
            .host
            .link()
            .fabric()
            .node()
            .peers()
            .filter(|p| p.0 == gid)
            .flat_map(|(_, mac, _, _, devices)| {
                devices
                    .iter()
                    .filter(|d| d.slot < 32)
                    .map(move |d| DeviceKey {
                        gid,
                        mac,
                        slot: d.slot,
                    })
            })
            .collect();
        self.hotplug.reconcile(now, current.into_iter());
    }

    /// Takes the state machines' actions and carries them out, one at a time.
    fn carry_out(&mut self, out: &mut Vec<Change>) {
        loop {
            let router = self.host.link_mut().router_mut().expect("checked in new");
            let mut alloc = || router.switch_mut().alloc_port().ok();
            let Some(action) = self.hotplug.poll_action(&mut alloc) else {
                return;
            };
            match action {
                Action::Enumerate { key, gen, port } => self.enumerate(key, gen, port, out),
                Action::Attach { key, gen, port } => {
                    if let Some(bdf) = Router::device_bdf(port, key.slot) {
                        out.push(Change::Attach {
                            key,
                            gen,
                            port,
                            bdf,
                        });
                    } else {
                        self.hotplug.attach_failed(key, gen);
                    }
                }
                Action::Ghost { port, .. } => self.router_mut().ghost(port),
                Action::FailPending { port, .. } => {
                    let failed = self.router_mut().fail_pending(port);
                    self.host.link_mut().deliver_local(failed);
                }
                Action::Detach {
                    key,
                    gen,
                    port,
                    surprise,
                } => {
                    self.found.remove(&port);
                    let Some(bdf) = Router::device_bdf(port, key.slot) else {
                        self.hotplug.detached(key, gen);
                        continue;
                    };
                    self.host.remove(bdf);
                    out.push(Change::Detach {
                        key,
                        gen,
                        port,
                        bdf,
                        surprise,
                    });
                }
                Action::Free { port } => {
                    self.found.remove(&port);
                    // What the root complex holds of a device that never reached its
                    // user (enumeration or attachment failed): its routes, interrupts.
                    let held = self.router().occupant(port);
                    if let Some(bdf) = held.and_then(|k| Router::device_bdf(port, k.slot)) {
                        self.host.remove(bdf);
                    }
                    let router = self.router_mut();
                    router.detach(port);
                    if router.switch_mut().free_port(port).is_err() {
                        self.stats.free_refused += 1;
                    }
                    out.push(Change::Freed { port });
                }
            }
        }
    }

    /// Puts the device on its port and enumerates it there.
    fn enumerate(&mut self, key: DeviceKey, gen: Generation, port: PortId, out: &mut Vec<Change>) {
        let placed = self.router_mut().attach(port, key);
        let windows = self.router().windows(port);
        let result = match (placed, windows) {
            (Ok(bdf), Some(w)) => self.host.enumerate_in(bdf, w).inspect_err(|_| {
                self.host.remove(bdf);
            }),
            // The port came from this switch and slots were checked on offer.
            _ => Err(HostError::NoDevice(port.device())),
        };
        match result {
            Ok(info) => {
                self.found.insert(port, info.clone());
                self.hotplug.enumerated(key, gen);
                out.push(Change::Enumerated {
                    key,
                    gen,
                    port,
                    info,
                });
            }
            Err(error) => {
                self.hotplug.enumeration_failed(key, gen);
                out.push(Change::EnumerationFailed {
                    key,
                    gen,
                    port,
                    error,
                });
            }
        }
    }
}
