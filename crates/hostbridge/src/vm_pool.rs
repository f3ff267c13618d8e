//! The host bridge under a VMM: the devices the [`HostBridge`] attaches, served to the
//! VMM through front-ends ([`vmm::frontend::Frontend`]), in one of two ways:
//!
//! - **Per device** ([`VmPool::new`]): each device the host bridge attaches gets a
//!   vfio-user socket of its own, for the VMM to hot-add on a PCIe root port of the
//!   guest, and each device that leaves is answered locally (the ghost) until the VMM
//!   has hot-removed it. What `tether vm --frontend vfio-user` runs.
//! - **One front-end** ([`VmPool::one`]): a front-end the VMM reached before the device
//!   (QEMU's proxy socketpair, a vfio-user socket at a path the user chose) serves the
//!   first device of the group, and that device again when it comes back (a new
//!   generation after its box restarted). While it is gone the front-end reaches
//!   [`Away`]: reads all-ones, writes dropped. Other devices of the group are enumerated
//!   and left alone. What `tether vm --frontend proxy` and `tether host --vfio-user |
//!   --proxy-fd` run.
//!
//! Either way the devices come and go through the host bridge's one hot-plug state
//! machine per device.
//!
//! The program carries out what [`VmChange`] asks of the VMM, through its monitor
//! ([`QemuSlots`] for QEMU): [`VmChange::Plug`] is a `device_add` of a `vfio-user-pci`
//! device with that id and socket, [`VmChange::Unplug`] a `device_del`; when the VMM
//! reports the device deleted (QMP's `DEVICE_DELETED`), the program calls
//! [`VmPool::unplugged`], and the device's port is freed for the next one.
//!
//! The ghost: from the moment a device leaves (moved to another group, its box lost
//! or restarted) nothing more goes to its box. Its guest still has it until the
//! hot-removal completes, and its driver's teardown must not hang on it: config space
//! reads come from a snapshot taken when it was attached (so the guest still finds it
//! present), BAR reads return zeros (so a driver that resets the device and waits for
//! its status to read 0, as Linux's virtio-pci does, goes on), and writes go nowhere.
//! Every such access is counted.
//!
//! Guest RAM: all of a VM's devices map the same guest RAM; each device's VMM
//! connection shares the mappings under an owner of its own ([`MapOwner`]), and a
//! region stays mapped while any device's connection holds it.
//!
//! Calling order: [`VmPool::round`] in a loop, [`VmPool::wake`] for what can end an
//! idle wait, [`VmPool::plugged`], [`VmPool::plug_failed`] and [`VmPool::unplugged`]
//! as the VMM answers. [`VmHost`] is all of that as one [`Pollable`] (the pool, and
//! QEMU's monitor through [`QemuSlots`] when there is one).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dataplane::poll::{Pollable, Waker};
use fabric::FabricEvent;
use rootcomplex::{HostMemory, Interrupt, MapOwner};
use thiserror::Error;
use tlp::Bdf;
use vmm::device::{Bar, RemoteFunction};
use vmm::frontend::{Frontend, FrontendError, FrontendStats};
use vmm::vfio_user::VfioUserServer;

use crate::host_bridge::{Change, HostBridge};
use crate::hotplug::{DeviceKey, Generation};
use crate::switch::PortId;
use crate::vm::{bars_of, Away, HostFunction, Note, Notes};

/// Config dwords of a device kept for its ghost (the 256-byte PCI header and
/// capabilities; extended capabilities read as absent).
const SNAPSHOT_DWORDS: usize = 64;

/// The owner of the one front-end's guest RAM mappings (ports are 0..=252).
const ONE_OWNER: MapOwner = MapOwner(u32::MAX);

/// How many VMM messages a front-end handles in one round.
const SERVE_BUDGET: usize = 16;

/// Settings of the per-device pool.
#[derive(Clone, Debug)]
pub struct VmPoolConfig {
    /// Where the devices' sockets are made (`p<port>g<generation>.sock`).
    pub dir: PathBuf,
    /// Hide MSI-X from the VMM (a QEMU that aborts when a vfio-user device with MSI-X
    /// is hot-removed): the guest's driver uses MSI or INTx.
    pub hide_msix: bool,
}

/// What the program is to do about the VMM, or to log.
#[derive(Debug)]
pub enum VmChange {
    /// A fabric event, for the log.
    Fabric(FabricEvent),
    /// A line for the log.
    Line(String),
    /// A line for the log about something that failed.
    Warning(String),
    /// Hot-add a `vfio-user-pci` device with id `id` on the guest's root port `port`,
    /// its server listening on `socket`.
    Plug {
        id: String,
        port: PortId,
        socket: PathBuf,
    },
    /// Hot-remove the device `id` (`surprise`: its box is gone or was reset).
    Unplug { id: String, surprise: bool },
    /// The VMM closed the one front-end's connection, which cannot come back (the
    /// proxy's socketpair): nothing is left to serve.
    Closed,
    /// The VMM's monitor failed (not closed by a VMM that exits): the VMM can get no
    /// device and lose none.
    MonitorFailed(String),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VmPoolStats {
    pub plugged: u64,
    pub unplugged: u64,
    /// Devices the pool could not serve (no socket, or set-up failed).
    pub attach_failures: u64,
    /// Accesses a leaving device's ghost answered.
    pub ghost_accesses: u64,
    /// Interrupts of devices no VMM connection serves (leaving, or not yet served).
    pub stray_interrupts: u64,
    /// Errors of the VMM connections (each ends its connection).
    pub vmm_errors: u64,
    /// `DEVICE_DELETED`s for ids the pool does not hold.
    pub unknown_unplugs: u64,
    /// Devices the VMM could not add (its `device_add` failed): given up, and their
    /// ports freed, until their box offers them anew.
    pub plug_failures: u64,
    /// Devices the guest let go of while they were still in the group (it ejected
    /// them): hot-added again.
    pub replugs: u64,
    /// One front-end: times its device went away, and came back.
    pub departures: u64,
    pub returns: u64,
    /// One front-end: devices of the group it does not serve (enumerated, left alone).
    pub unserved: u64,
}

/// One device as the VMM is served it, on a front-end of its own.
struct Served {
    key: DeviceKey,
    gen: Generation,
    bdf: Bdf,
    id: String,
    socket: PathBuf,
    server: Box<dyn Frontend>,
    /// Config space when it was attached, kept up to date by the guest's writes while
    /// it is a ghost.
    snapshot: Vec<u32>,
    bars: Vec<Bar>,
    /// Leaving: answered by the ghost, its unplug asked.
    leaving: bool,
    /// The VMM has added it once (the host bridge was told it is attached).
    added: bool,
}

/// The one front-end and the device it serves.
struct One {
    fe: Box<dyn Frontend>,
    /// The id the VMM knows the device by (for [`VmChange::Unplug`]).
    id: String,
    /// The device it serves: the first that arrived.
    key: Option<DeviceKey>,
    /// Where that device is now, while it is there.
    bound: Option<(PortId, Generation, Bdf)>,
    /// Its BARs as the VMM found them (kept while it is away).
    bars: Vec<Bar>,
    /// The VMM closed the connection for good.
    closed: bool,
}

enum Serving {
    PerDevice(VmPoolConfig),
    One(Box<One>),
}

/// No device came.
#[derive(Debug, Error)]
#[error("no device appeared in group {gid} within {timeout:?}")]
pub struct NoDevice {
    pub gid: u16,
    pub timeout: Duration,
}

/// A device served now, for counters.
pub struct ServedView<'a> {
    pub id: &'a str,
    pub port: PortId,
    pub key: DeviceKey,
    pub leaving: bool,
    pub frontend: FrontendStats,
}

/// The host bridge's devices, served to the VMM.
pub struct VmPool {
    hb: HostBridge,
    serving: Serving,
    served: BTreeMap<PortId, Served>,
    notes: Notes,
    changes: Vec<Change>,
    /// What the next round reports first (devices hot-added again).
    pending: Vec<VmChange>,
    stats: VmPoolStats,
}

/// A leaving device as its VMM still reaches it (see the module docs).
struct Ghost<'a> {
    snapshot: &'a mut [u32],
    bars: &'a [Bar],
    accesses: &'a mut u64,
}

impl RemoteFunction for Ghost<'_> {
    fn config_read(&mut self, register: u16) -> Option<u32> {
        *self.accesses += 1;
        Some(
            self.snapshot
                .get(usize::from(register / 4))
                .copied()
                .unwrap_or(0),
        )
    }

    fn config_write(&mut self, register: u16, value: u32, byte_enables: u8) {
        *self.accesses += 1;
        if let Some(d) = self.snapshot.get_mut(usize::from(register / 4)) {
            let mask = (0..4)
                .filter(|b| byte_enables & (1 << b) != 0)
                .fold(0u32, |m, b| m | 0xff << (8 * b));
            *d = (*d & !mask) | (value & mask);
        }
    }

    fn mem_read(&mut self, _addr: u64, len: usize) -> Vec<u8> {
        *self.accesses += 1;
        vec![0; len]
    }

    fn mem_write(&mut self, _addr: u64, _data: &[u8]) {
        *self.accesses += 1;
    }

    fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().filter(|b| b.size > 0)
    }

    fn map_guest_ram(&mut self, _base: u64, _mem: Box<dyn HostMemory>) -> Result<(), String> {
        Ok(())
    }

    fn unmap_guest_ram(&mut self, _base: u64, _size: u64) {}

    fn clear_guest_ram(&mut self) {}

    fn reset(&mut self) {}

    fn set_msix(&mut self, _enabled: bool) {}

    fn set_msi(&mut self, _enabled: bool) {}
}

impl VmPool {
    /// Every device on a vfio-user socket of its own, in `cfg.dir`.
    pub fn new(hb: HostBridge, cfg: VmPoolConfig, notes: Notes) -> VmPool {
        VmPool::with(hb, Serving::PerDevice(cfg), notes)
    }

    /// The first device of the group on `fe`, a front-end the VMM knows as device `id`.
    pub fn one(hb: HostBridge, fe: Box<dyn Frontend>, id: &str, notes: Notes) -> VmPool {
        let one = One {
            fe,
            id: id.to_string(),
            key: None,
            bound: None,
            bars: Vec::new(),
            closed: false,
        };
        VmPool::with(hb, Serving::One(Box::new(one)), notes)
    }

    fn with(hb: HostBridge, serving: Serving, notes: Notes) -> VmPool {
        VmPool {
            hb,
            serving,
            served: BTreeMap::new(),
            notes,
            changes: Vec::new(),
            pending: Vec::new(),
            stats: VmPoolStats::default(),
        }
    }

    pub fn bridge(&self) -> &HostBridge {
        &self.hb
    }

    pub fn stats(&self) -> VmPoolStats {
        self.stats
    }

    /// The devices served on front-ends of their own now.
    pub fn served(&self) -> impl Iterator<Item = ServedView<'_>> + '_ {
        self.served.iter().map(|(p, s)| ServedView {
            id: &s.id,
            port: *p,
            key: s.key,
            leaving: s.leaving,
            frontend: s.server.stats(),
        })
    }

    /// The one front-end's kind and counters, and whether its device is there.
    pub fn one_frontend(&self) -> Option<(&'static str, FrontendStats, bool)> {
        match &self.serving {
            Serving::One(o) => Some((o.fe.name(), o.fe.stats(), o.bound.is_some())),
            Serving::PerDevice(_) => None,
        }
    }

    /// With one front-end: waits up to `timeout` (or until `stop()`) for its device,
    /// taking the pool's rounds' changes into `out`. Per device: returns at once.
    pub fn wait_for_device(
        &mut self,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
        out: &mut Vec<VmChange>,
    ) -> Result<(), NoDevice> {
        let end = Instant::now() + timeout;
        loop {
            match &self.serving {
                Serving::One(o) if o.bound.is_none() => {}
                _ => return Ok(()),
            }
            if Instant::now() >= end || stop() {
                return Err(NoDevice {
                    gid: self.hb.gid(),
                    timeout,
                });
            }
            if !self.round(out) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// One round: the fabric and the host bridge, interrupts to their VMM
    /// connections, what the VMM asked of each device. Appends to `out` what the
    /// program is to do or log; returns whether anything was done.
    pub fn round(&mut self, out: &mut Vec<VmChange>) -> bool {
        let replugs = !self.pending.is_empty();
        out.append(&mut self.pending);
        let mut changes = std::mem::take(&mut self.changes);
        let mut worked = self.hb.poll(Duration::ZERO, &mut changes) || replugs;
        for c in changes.drain(..) {
            self.change(c, out);
        }
        self.changes = changes;
        while let Some(i) = self.hb.host_mut().take_interrupt() {
            worked = true;
            let fe: Option<&mut Box<dyn Frontend>> = match &mut self.serving {
                Serving::One(o) => o
                    .bound
                    .filter(|&(_, _, bdf)| bdf == i.device())
                    .map(|_| &mut o.fe),
                Serving::PerDevice(_) => self
                    .served
                    .values_mut()
                    .find(|s| s.bdf == i.device() && !s.leaving)
                    .map(|s| &mut s.server),
            };
            match (fe, i) {
                (Some(fe), Interrupt::Intx { asserted, .. }) => fe.set_intx(asserted),
                (Some(fe), Interrupt::Vector { vector, .. }) => {
                    if !fe.vector(vector) {
                        self.stats.stray_interrupts += 1;
                    }
                }
                (None, _) => self.stats.stray_interrupts += 1,
            }
        }
        let ports: Vec<PortId> = self.served.keys().copied().collect();
        for port in ports {
            worked |= self.serve(port, out);
        }
        worked |= self.serve_one(out);
        worked
    }

    /// What can end an idle wait: the port, its node's timers, and every VMM
    /// connection.
    pub fn wake(&self, w: &mut Waker) {
        for s in self.served.values() {
            for fd in s.server.wait_fds() {
                w.fd(fd);
            }
        }
        if let Serving::One(o) = &self.serving {
            if !o.closed {
                for fd in o.fe.wait_fds() {
                    w.fd(fd);
                }
            }
        }
        self.hb.host().link().fabric().wake(w);
    }

    /// The port of the device the VMM knows as `id`.
    fn port_of(&self, id: &str) -> Option<PortId> {
        self.served
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(p, _)| *p)
    }

    /// The VMM has added device `id` (its `device_add` succeeded): the host bridge
    /// learns that it is attached.
    pub fn plugged(&mut self, id: &str) {
        let Some(s) = self.port_of(id).and_then(|p| self.served.get_mut(&p)) else {
            return;
        };
        if !s.added && !s.leaving {
            s.added = true;
            self.hb.attached(s.key, s.gen);
        }
    }

    /// The VMM could not add device `id`: its socket goes, and the host bridge gives
    /// it up (its port is freed) until its box offers it anew.
    pub fn plug_failed(&mut self, id: &str) {
        let Some(port) = self.port_of(id) else {
            return;
        };
        self.stats.plug_failures += 1;
        let (key, gen, added, leaving) = match self.served.get(&port) {
            Some(s) => (s.key, s.gen, s.added, s.leaving),
            None => return,
        };
        self.release(port);
        if leaving {
            self.hb.detached(key, gen);
        } else if !added {
            self.hb.attach_failed(key, gen);
        }
    }

    /// The VMM has deleted device `id` (QMP's `DEVICE_DELETED`): its connection, socket
    /// and guest RAM mappings go. A leaving device's port is then freed; a device the
    /// guest let go of on its own while it is still in the group is hot-added again.
    pub fn unplugged(&mut self, id: &str) {
        let Some(port) = self.port_of(id) else {
            self.stats.unknown_unplugs += 1;
            return;
        };
        let Some(s) = self.served.get(&port) else {
            return;
        };
        let (key, gen, bdf, leaving) = (s.key, s.gen, s.bdf, s.leaving);
        self.release(port);
        self.stats.unplugged += 1;
        if leaving {
            self.hb.detached(key, gen);
            return;
        }
        self.stats.replugs += 1;
        match self.attach(key, gen, port, bdf) {
            Ok(plug) => {
                if let Some(s) = self.served.get_mut(&port) {
                    // The host bridge knows it attached already.
                    s.added = true;
                }
                self.pending.push(VmChange::Line(format!(
                    "{id}: the guest let go of {key} while it is in the group: hot-adding it again"
                )));
                self.pending.push(plug);
            }
            Err(e) => {
                self.stats.attach_failures += 1;
                self.pending
                    .push(VmChange::Warning(format!("{key} not served again: {e}")));
            }
        }
    }

    /// Drops what the pool holds for the device on `port`: its connection, socket and
    /// guest RAM mappings.
    fn release(&mut self, port: PortId) {
        let Some(s) = self.served.remove(&port) else {
            return;
        };
        self.hb
            .host_mut()
            .memory_mut()
            .unshare_within(owner(port), 0, u64::MAX);
        let _ = std::fs::remove_file(&s.socket);
    }

    fn change(&mut self, c: Change, out: &mut Vec<VmChange>) {
        match c {
            Change::Fabric(e) => out.push(VmChange::Fabric(e)),
            Change::Unaddressable { key } => out.push(VmChange::Line(format!(
                "left alone: {key}: a slot number above 31 is no device number"
            ))),
            Change::Enumerated { info, .. } => (self.notes)(Note::Enumerated(&info)),
            Change::EnumerationFailed {
                key, port, error, ..
            } => out.push(VmChange::Warning(format!(
                "enumeration of {key} on port {port} failed: {error}"
            ))),
            Change::Attach {
                key,
                gen,
                port,
                bdf,
            } if matches!(self.serving, Serving::One(_)) => self.bind(key, gen, port, bdf, out),
            Change::Attach {
                key,
                gen,
                port,
                bdf,
            } => match self.attach(key, gen, port, bdf) {
                // Attached once the VMM has added it (`plugged`).
                Ok(plug) => {
                    self.stats.plugged += 1;
                    out.push(plug);
                }
                Err(e) => {
                    self.stats.attach_failures += 1;
                    out.push(VmChange::Warning(format!("{key} not served: {e}")));
                    self.hb.attach_failed(key, gen);
                }
            },
            Change::Detach {
                key,
                gen,
                port,
                surprise,
                ..
            } => {
                if let Serving::One(o) = &mut self.serving {
                    if o.bound.is_some_and(|(p, g, _)| (p, g) == (port, gen)) {
                        o.bound = None;
                        self.stats.departures += 1;
                        let asked = o.fe.device_gone();
                        out.push(VmChange::Line(format!(
                            "device removed: the guest reads all-ones until it returns{}",
                            if asked {
                                "; asked the VMM to release it (device request)"
                            } else {
                                ""
                            }
                        )));
                        out.push(VmChange::Unplug {
                            id: o.id.clone(),
                            surprise,
                        });
                    }
                    // Nothing holds it beyond this: the front-end reaches `Away`.
                    self.hb.detached(key, gen);
                    return;
                }
                match self.served.get_mut(&port) {
                    Some(s) if s.key == key && s.gen == gen => {
                        s.leaving = true;
                        s.server.set_intx(false);
                        out.push(VmChange::Unplug {
                            id: s.id.clone(),
                            surprise,
                        });
                    }
                    // Never served: nothing holds it.
                    _ => self.hb.detached(key, gen),
                }
            }
            Change::Freed { .. } => {}
        }
    }

    /// One front-end: the device attached on `port` is its device (the first to come,
    /// or that one back) and is handed to it, or another, left alone.
    fn bind(
        &mut self,
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        bdf: Bdf,
        out: &mut Vec<VmChange>,
    ) {
        let Serving::One(o) = &mut self.serving else {
            return;
        };
        let ours = o.key.is_none_or(|k| k == key) && o.bound.is_none();
        if !ours {
            self.stats.unserved += 1;
            out.push(VmChange::Line(format!(
                "{key}: enumerated and left alone (the front-end serves {})",
                o.key.map_or("another device".into(), |k| k.to_string())
            )));
            self.hb.attached(key, gen);
            return;
        }
        let (Some(windows), Some(info)) = (self.hb.router().windows(port), self.hb.device_on(port))
        else {
            self.stats.attach_failures += 1;
            self.hb.attach_failed(key, gen);
            return;
        };
        let bars = bars_of(info);
        let back = o.key.is_some();
        let mut f =
            HostFunction::on_port(self.hb.host_mut(), bdf, windows, ONE_OWNER, &mut self.notes);
        if let Err(e) = f.hand_to_vmm() {
            self.stats.attach_failures += 1;
            out.push(VmChange::Warning(format!("{key} not served: {e}")));
            self.hb.attach_failed(key, gen);
            return;
        }
        if back {
            o.fe.device_changed();
            self.stats.returns += 1;
            out.push(VmChange::Line(format!(
                "device back ({key}, reset by its box's restart), set up again at {bdf}"
            )));
        } else {
            out.push(VmChange::Line(format!(
                "device {key} -> {bdf}, served on the {} front-end",
                o.fe.name()
            )));
        }
        o.key = Some(key);
        o.bound = Some((port, gen, bdf));
        o.bars = bars;
        self.hb.attached(key, gen);
    }

    /// Sets the device on `port` up for the VMM and opens its socket.
    fn attach(
        &mut self,
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        bdf: Bdf,
    ) -> Result<VmChange, String> {
        let Serving::PerDevice(cfg) = &self.serving else {
            return Err("one front-end serves this VM".into());
        };
        let windows = self
            .hb
            .router()
            .windows(port)
            .ok_or("a port of no window")?;
        let info = self.hb.device_on(port).cloned().ok_or("not enumerated")?;
        let socket = cfg.dir.join(format!("p{}g{}.sock", port.index(), gen.0));
        let hide_msix = cfg.hide_msix;
        let mut f = HostFunction::on_port(
            self.hb.host_mut(),
            bdf,
            windows,
            owner(port),
            &mut self.notes,
        );
        f.hand_to_vmm().map_err(|e| e.to_string())?;
        let mut snapshot = Vec::with_capacity(SNAPSHOT_DWORDS);
        for i in 0..SNAPSHOT_DWORDS {
            snapshot.push(f.config_read((i * 4) as u16).unwrap_or(u32::MAX));
        }
        let _ = std::fs::remove_file(&socket);
        let mut server = VfioUserServer::bind(&socket)
            .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
        if hide_msix {
            server.hide_capabilities(&[pci::CapabilityId::MsiX]);
        }
        let id = format!("tether-p{}g{}", port.index(), gen.0);
        self.served.insert(
            port,
            Served {
                key,
                gen,
                bdf,
                id: id.clone(),
                socket: socket.clone(),
                server: Box::new(server),
                snapshot,
                bars: bars_of(&info),
                leaving: false,
                added: false,
            },
        );
        Ok(VmChange::Plug { id, port, socket })
    }

    /// Serves what the VMM asked of the device on `port`.
    fn serve(&mut self, port: PortId, out: &mut Vec<VmChange>) -> bool {
        let Some(windows) = self.hb.router().windows(port) else {
            return false;
        };
        let Some(s) = self.served.get_mut(&port) else {
            return false;
        };
        let was = s.server.connected();
        let r = if s.leaving {
            let mut g = Ghost {
                snapshot: &mut s.snapshot,
                bars: &s.bars,
                accesses: &mut self.stats.ghost_accesses,
            };
            s.server.serve(&mut g, SERVE_BUDGET)
        } else {
            let mut f = HostFunction::on_port(
                self.hb.host_mut(),
                s.bdf,
                windows,
                owner(port),
                &mut self.notes,
            );
            s.server.serve(&mut f, SERVE_BUDGET)
        };
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                self.stats.vmm_errors += 1;
                out.push(VmChange::Warning(format!(
                    "{} {}: {e}",
                    s.server.name(),
                    s.id
                )));
                0
            }
        };
        let now = s.server.connected();
        if was != now {
            out.push(VmChange::Line(format!(
                "{} {}: client {}",
                s.server.name(),
                s.id,
                if now { "connected" } else { "disconnected" }
            )));
        }
        n > 0 || was != now
    }

    /// Serves what the VMM asked of the one front-end: its device, or `Away` while
    /// it is gone.
    fn serve_one(&mut self, out: &mut Vec<VmChange>) -> bool {
        let Serving::One(o) = &mut self.serving else {
            return false;
        };
        if o.closed {
            return false;
        }
        let was = o.fe.connected();
        let r = match o.bound {
            Some((port, _, bdf)) => match self.hb.router().windows(port) {
                Some(windows) => {
                    let mut f = HostFunction::on_port(
                        self.hb.host_mut(),
                        bdf,
                        windows,
                        ONE_OWNER,
                        &mut self.notes,
                    );
                    o.fe.serve(&mut f, SERVE_BUDGET)
                }
                None => Ok(0),
            },
            None => {
                let mut away = Away {
                    memory: self.hb.host_mut().memory_mut(),
                    owner: ONE_OWNER,
                    bars: &o.bars,
                };
                o.fe.serve(&mut away, SERVE_BUDGET)
            }
        };
        let n = match r {
            Ok(n) => n,
            Err(FrontendError::Closed) => {
                o.closed = true;
                out.push(VmChange::Line("QEMU closed the connection".into()));
                out.push(VmChange::Closed);
                return true;
            }
            Err(e) => {
                self.stats.vmm_errors += 1;
                out.push(VmChange::Warning(format!("{}: {e}", o.fe.name())));
                0
            }
        };
        let now = o.fe.connected();
        if was != now {
            out.push(VmChange::Line(format!(
                "{}: client {}",
                o.fe.name(),
                if now { "connected" } else { "disconnected" }
            )));
        }
        n > 0 || was != now
    }
}

/// The owner of a port's guest RAM mappings.
fn owner(port: PortId) -> MapOwner {
    MapOwner(port.index() as u32)
}

/// A VM's side of the host as one [`Pollable`]: the pool and, when the program
/// drives a QEMU, its monitor. The program takes what each round asks of it or has
/// to log from [`VmHost::changes`].
pub struct VmHost {
    pub pool: VmPool,
    pub qemu: Option<QemuSlots>,
    /// What the rounds so far asked of the program, or logged: it drains them.
    pub changes: Vec<VmChange>,
    /// The monitor failed once: reported, not again.
    monitor_failed: bool,
}

impl VmHost {
    pub fn new(pool: VmPool, qemu: Option<QemuSlots>) -> VmHost {
        VmHost {
            pool,
            qemu,
            changes: Vec::new(),
            monitor_failed: false,
        }
    }
}

impl Pollable for VmHost {
    fn round(&mut self, _now: Instant) -> std::io::Result<bool> {
        let mut worked = self.pool.round(&mut self.changes);
        if let Some(q) = &mut self.qemu {
            match q.round(&mut self.pool, &mut self.changes) {
                Ok(w) => worked |= w,
                // The VMM is going: the program sees it exit.
                Err(vmm::qmp::QmpError::Closed) => {}
                Err(e) if !self.monitor_failed => {
                    self.monitor_failed = true;
                    self.changes.push(VmChange::MonitorFailed(e.to_string()));
                    worked = true;
                }
                Err(_) => {}
            }
        }
        Ok(worked)
    }

    fn wake(&self, w: &mut Waker) {
        self.pool.wake(w);
        if let Some(q) = &self.qemu {
            q.wake(w);
        }
    }
}

/// The VMM's part for a [`VmPool`] with QEMU, over its monitor (QMP): a
/// [`VmChange::Plug`] becomes a `device_add` of `vfio-user-pci` on the root port of
/// the same number (`tether-rp<port>`), a [`VmChange::Unplug`] a `device_del`, and a
/// `DEVICE_DELETED` of one of the pool's devices goes to [`VmPool::unplugged`].
/// Commands are sent without waiting for their replies: QEMU answers one command at a
/// time, and while it adds a vfio-user device it waits for this program to answer on
/// the device's socket, so the pool must go on serving meanwhile.
pub struct QemuSlots {
    qmp: vmm::qmp::Qmp,
    /// Commands sent, not answered yet: (command, device id, `device_add`?).
    waiting: Vec<(vmm::qmp::CommandId, String, bool)>,
}

impl QemuSlots {
    pub fn new(qmp: vmm::qmp::Qmp) -> QemuSlots {
        QemuSlots {
            qmp,
            waiting: Vec::new(),
        }
    }

    pub fn qmp(&self) -> &vmm::qmp::Qmp {
        &self.qmp
    }

    /// What can end an idle wait: the monitor's socket.
    pub fn wake(&self, w: &mut dataplane::poll::Waker) {
        use std::os::fd::AsRawFd;
        w.fd(self.qmp.as_raw_fd());
    }

    /// Sends one command, or says why it cannot go.
    fn send(
        &mut self,
        name: &str,
        args: Result<serde_json::Value, vmm::qmp::QmpError>,
        id: &str,
    ) -> Result<(), vmm::qmp::QmpError> {
        let cmd = self.qmp.send_command(name, Some(args?))?;
        self.waiting
            .push((cmd, id.to_string(), name == "device_add"));
        Ok(())
    }

    /// Carries out the [`VmChange::Plug`]s and [`VmChange::Unplug`]s in `changes`
    /// (taking them out and putting lines for the log in their place), takes QEMU's
    /// replies and events, and tells `pool` what became of its devices. Each change
    /// is handled on its own: one that fails is logged and the others go on. Returns
    /// whether anything happened; an error is the monitor's (QEMU gone), after the
    /// changes were handled.
    pub fn round(
        &mut self,
        pool: &mut VmPool,
        changes: &mut Vec<VmChange>,
    ) -> Result<bool, vmm::qmp::QmpError> {
        let mut worked = false;
        for c in std::mem::take(changes) {
            match c {
                VmChange::Plug { id, port, socket } => {
                    worked = true;
                    let bus = vmm::qemu::RootPortIndex(port.index() as u16).id();
                    let args = vmm::qmp::vfio_user_pci(&id, &bus, &socket);
                    match self.send("device_add", args, &id) {
                        Ok(()) => changes.push(VmChange::Line(format!(
                            "tether vm: hot-adding {id} on {bus}"
                        ))),
                        Err(e) => {
                            changes.push(VmChange::Warning(format!(
                                "tether vm: device_add {id}: {e}"
                            )));
                            pool.plug_failed(&id);
                        }
                    }
                }
                VmChange::Unplug { id, surprise } => {
                    worked = true;
                    changes.push(VmChange::Line(format!(
                        "tether vm: hot-removing {id}{}",
                        if surprise { " (its box is gone)" } else { "" }
                    )));
                    let args = Ok(serde_json::json!({ "id": id }));
                    if let Err(e) = self.send("device_del", args, &id) {
                        // The ghost answers until the leave timeout quarantines it.
                        changes.push(VmChange::Warning(format!(
                            "tether vm: device_del {id}: {e}"
                        )));
                    }
                }
                other => changes.push(other),
            }
        }
        let pumped = self.qmp.pump();
        let qmp = &mut self.qmp;
        self.waiting.retain(|(cmd, id, add)| {
            let name = if *add { "device_add" } else { "device_del" };
            let Some(r) = qmp.take_result(*cmd, name) else {
                return true;
            };
            match (r, *add) {
                (Ok(_), true) => {
                    changes.push(VmChange::Line(format!("tether vm: {id} added")));
                    pool.plugged(id);
                }
                // The guest lets go later: DEVICE_DELETED.
                (Ok(_), false) => {}
                (Err(e), true) => {
                    changes.push(VmChange::Warning(format!("tether vm: device_add {id}: {e}")));
                    pool.plug_failed(id);
                }
                (Err(e), false) => {
                    changes.push(VmChange::Warning(format!("tether vm: device_del {id}: {e}")));
                    // Not in the VM (never added, or gone already): nothing holds it.
                    if matches!(&e, vmm::qmp::QmpError::Command { class, .. } if class == "DeviceNotFound")
                    {
                        pool.unplugged(id);
                    }
                }
            }
            false
        });
        while let Some(ev) = self.qmp.pop_event() {
            worked = true;
            if ev.name != "DEVICE_DELETED" {
                continue;
            }
            if let Some(id) = ev.device().filter(|d| d.starts_with("tether-p")) {
                changes.push(VmChange::Line(format!(
                    "tether vm: {id} removed by the guest"
                )));
                pool.unplugged(id);
            }
        }
        Ok(worked | (pumped? > 0))
    }
}
