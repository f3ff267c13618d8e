//! The host bridge under a VMM, for every device of the host's group: each device the
//! [`HostBridge`] attaches is served on a vfio-user socket of its own, for the VMM to
//! hot-add on a PCIe root port of the guest, and each device that leaves is answered
//! locally (the ghost) until the VMM has hot-removed it.
//!
//! The program (`tether vm`) carries out what [`VmChange`] asks of the VMM, through
//! its monitor: [`VmChange::Plug`] is a `device_add` of a `vfio-user-pci` device with
//! that id and socket, [`VmChange::Unplug`] a `device_del`; when the VMM reports the
//! device deleted (QMP's `DEVICE_DELETED`), the program calls [`VmPool::unplugged`],
//! and the device's port is freed for the next one.
//!
//! The ghost: from the moment a device leaves (moved to another group, its box lost
//! or restarted) nothing more goes to its box. Its guest still has it until the
//! hot-removal completes, and its driver's teardown must not hang on it: config space
//! reads come from a snapshot taken when it was attached (so the guest still finds it
//! present), BAR reads return zeros (so a driver that resets the device and waits for
//! its status to read 0, as Linux's virtio-pci does, goes on), and writes go nowhere.
//! Every such access is counted.
//!
//! Guest RAM: all of a VM's devices map the same guest RAM; each device's vfio-user
//! connection shares the mappings under its port's [`MapOwner`], and a region stays
//! mapped while any device's connection holds it.
//!
//! Calling order: [`VmPool::round`] in a loop, [`VmPool::wake`] for what can end an
//! idle wait, [`VmPool::unplugged`] when the VMM reports a device gone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fabric::FabricEvent;
use rootcomplex::{DeviceInfo, HostMemory, Interrupt, MapOwner};
use tlp::Bdf;
use vmm::device::{Bar, RemoteFunction};
use vmm::vfio_user::VfioUserServer;

use crate::host_bridge::{Change, HostBridge};
use crate::hotplug::{DeviceKey, Generation};
use crate::switch::PortId;
use crate::vm::{HostFunction, Note, Notes};

/// Config dwords of a device kept for its ghost (the 256-byte PCI header and
/// capabilities; extended capabilities read as absent).
const SNAPSHOT_DWORDS: usize = 64;

/// Settings.
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
    /// Hot-add a `vfio-user-pci` device with id `id` on the guest's root port `port`,
    /// its server listening on `socket`.
    Plug {
        id: String,
        port: PortId,
        socket: PathBuf,
    },
    /// Hot-remove the device `id` (`surprise`: its box is gone or was reset).
    Unplug { id: String, surprise: bool },
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
}

/// One device as the VMM is served it.
struct Served {
    key: DeviceKey,
    gen: Generation,
    bdf: Bdf,
    id: String,
    socket: PathBuf,
    server: VfioUserServer,
    /// Config space when it was attached, kept up to date by the guest's writes while
    /// it is a ghost.
    snapshot: Vec<u32>,
    bars: Vec<Bar>,
    /// Leaving: answered by the ghost, its unplug asked.
    leaving: bool,
}

/// The host bridge's devices, each served to the VMM on its own socket.
pub struct VmPool {
    hb: HostBridge,
    cfg: VmPoolConfig,
    served: BTreeMap<PortId, Served>,
    notes: Notes,
    changes: Vec<Change>,
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

/// The BARs of an enumerated device, by index (an absent index has size 0).
fn bars_of(d: &DeviceInfo) -> Vec<Bar> {
    let n = d.bars.iter().map(|b| b.index + 1).max().unwrap_or(0);
    (0..n)
        .map(|i| match d.bar(i) {
            Some(b) => Bar {
                address: b.address,
                size: b.size,
                io: false,
                is_64bit: b.is_64bit,
                prefetchable: b.prefetchable,
            },
            None => Bar {
                address: 0,
                size: 0,
                io: false,
                is_64bit: false,
                prefetchable: false,
            },
        })
        .collect()
}

impl VmPool {
    pub fn new(hb: HostBridge, cfg: VmPoolConfig, notes: Notes) -> VmPool {
        VmPool {
            hb,
            cfg,
            served: BTreeMap::new(),
            notes,
            changes: Vec::new(),
            stats: VmPoolStats::default(),
        }
    }

    pub fn bridge(&self) -> &HostBridge {
        &self.hb
    }

    pub fn stats(&self) -> VmPoolStats {
        self.stats
    }

    /// The devices served now: (id, port, key, leaving).
    pub fn served(&self) -> impl Iterator<Item = (&str, PortId, DeviceKey, bool)> + '_ {
        self.served
            .iter()
            .map(|(p, s)| (s.id.as_str(), *p, s.key, s.leaving))
    }

    /// One round: the fabric and the host bridge, interrupts to their VMM
    /// connections, what the VMM asked of each device. Appends to `out` what the
    /// program is to do or log; returns whether anything was done.
    pub fn round(&mut self, out: &mut Vec<VmChange>) -> bool {
        let mut changes = std::mem::take(&mut self.changes);
        let mut worked = self.hb.poll(Duration::ZERO, &mut changes);
        for c in changes.drain(..) {
            self.change(c, out);
        }
        self.changes = changes;
        while let Some(i) = self.hb.host_mut().take_interrupt() {
            worked = true;
            let to = self
                .served
                .values_mut()
                .find(|s| s.bdf == i.device() && !s.leaving);
            match (to, i) {
                (Some(s), Interrupt::Intx { asserted, .. }) => s.server.set_intx(asserted),
                (Some(s), Interrupt::Vector { vector, .. }) => s.server.vector(vector),
                (None, _) => self.stats.stray_interrupts += 1,
            }
        }
        let ports: Vec<PortId> = self.served.keys().copied().collect();
        for port in ports {
            worked |= self.serve(port, out);
        }
        worked
    }

    /// What can end an idle wait: the port, its node's timers, and every VMM
    /// connection.
    pub fn wake(&self, w: &mut dataplane::poll::Waker) {
        for s in self.served.values() {
            for fd in s.server.wait_fds() {
                w.fd(fd);
            }
        }
        self.hb.host().link().fabric().wake(w);
    }

    /// The VMM has deleted device `id` (QMP's `DEVICE_DELETED`): its connection, socket
    /// and guest RAM mappings go, and its port is freed.
    pub fn unplugged(&mut self, id: &str) {
        let Some(port) = self
            .served
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(p, _)| *p)
        else {
            self.stats.unknown_unplugs += 1;
            return;
        };
        self.finish(port);
    }

    fn finish(&mut self, port: PortId) {
        let Some(s) = self.served.remove(&port) else {
            return;
        };
        self.stats.unplugged += 1;
        self.hb
            .host_mut()
            .memory_mut()
            .unshare_within(owner(port), 0, u64::MAX);
        let _ = std::fs::remove_file(&s.socket);
        if s.leaving {
            self.hb.detached(s.key, s.gen);
        }
    }

    fn change(&mut self, c: Change, out: &mut Vec<VmChange>) {
        match c {
            Change::Fabric(e) => out.push(VmChange::Fabric(e)),
            Change::Unaddressable { key } => out.push(VmChange::Line(format!(
                "  left alone: {key}: a slot number above 31 is no device number"
            ))),
            Change::Enumerated { info, .. } => (self.notes)(Note::Enumerated(&info)),
            Change::EnumerationFailed {
                key, port, error, ..
            } => out.push(VmChange::Line(format!(
                "  enumeration of {key} on port {port} failed: {error}"
            ))),
            Change::Attach {
                key,
                gen,
                port,
                bdf,
            } => match self.attach(key, gen, port, bdf) {
                Ok(plug) => {
                    self.stats.plugged += 1;
                    self.hb.attached(key, gen);
                    out.push(plug);
                }
                Err(e) => {
                    self.stats.attach_failures += 1;
                    out.push(VmChange::Line(format!("  {key} not served: {e}")));
                    self.hb.attach_failed(key, gen);
                }
            },
            Change::Detach {
                key,
                gen,
                port,
                surprise,
                ..
            } => match self.served.get_mut(&port) {
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
            },
            Change::Freed { .. } => {}
        }
    }

    /// Sets the device on `port` up for the VMM and opens its socket.
    fn attach(
        &mut self,
        key: DeviceKey,
        gen: Generation,
        port: PortId,
        bdf: Bdf,
    ) -> Result<VmChange, String> {
        let windows = self
            .hb
            .router()
            .windows(port)
            .ok_or("a port of no window")?;
        let info = self.hb.device_on(port).cloned().ok_or("not enumerated")?;
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
        let socket = self
            .cfg
            .dir
            .join(format!("p{}g{}.sock", port.index(), gen.0));
        let _ = std::fs::remove_file(&socket);
        let mut server = VfioUserServer::bind(&socket)
            .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
        if self.cfg.hide_msix {
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
                server,
                snapshot,
                bars: bars_of(&info),
                leaving: false,
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
            s.server.serve(&mut g, 16)
        } else {
            let mut f = HostFunction::on_port(
                self.hb.host_mut(),
                s.bdf,
                windows,
                owner(port),
                &mut self.notes,
            );
            s.server.serve(&mut f, 16)
        };
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                self.stats.vmm_errors += 1;
                out.push(VmChange::Line(format!("  vfio-user {}: {e}", s.id)));
                0
            }
        };
        let now = s.server.connected();
        if was != now {
            out.push(VmChange::Line(format!(
                "  vfio-user {}: client {}",
                s.id,
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
