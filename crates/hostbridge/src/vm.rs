//! The host bridge under a VMM front-end: one device of the host's group, reached by a
//! guest. The bridge enumerates the device on its side, as `tether host` does (BARs
//! in its own windows, the MSI-X table pointed at itself), when it arrives, after every
//! reset and when its box returns; the guest's firmware and OS enumerate the BAR
//! registers the front-end keeps for them (`vmm::bar_shadow`), and the front-end
//! turns the guest's BAR accesses into accesses at the bridge's addresses. This part
//! follows the device through the fabric (hot-remove when its box goes, back when the
//! box returns), forwards accesses as TLPs, and maps guest RAM for the device's DMA.
//!
//! While the device is away, accesses do not wait for a timeout: config and memory
//! reads return all-ones at once, writes are dropped, as after a surprise removal.
//!
//! This is the one-device bridge of `tether host --proxy-fd | --vfio-user` and
//! `tether vm`, moved here from the binary as it was; the device pool replaces it.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use fabric::FabricEvent;
use rootcomplex::{BarWindows, Host, HostError, HostMemory, Interrupt, MapOwner, MemoryMap};
use thiserror::Error;
use tlp::Bdf;
use vmm::caps::{CAP_MSI, CAP_MSIX};
use vmm::device::{Bar, RemoteFunction};
use vmm::proxy::{ProxyError, ProxyServer};
use vmm::vfio_user::{VfioUserError, VfioUserServer};
use wire::MacAddr;

use crate::FabricLink;

#[derive(Debug, Error)]
pub enum VmBridgeError {
    #[error("no device appeared in group {gid} within {timeout:?}")]
    NoDevice { gid: u16, timeout: Duration },
    #[error("the device is away")]
    Away,
    #[error("setting up the device: {0}")]
    Setup(#[source] HostError),
    #[error("proxy connection: {0} (the connection cannot go on)")]
    Proxy(#[source] ProxyError),
    #[error("vfio-user connection: {0}")]
    VfioUser(#[source] VfioUserError),
    #[error("waiting for input: {0}")]
    Wait(#[source] std::io::Error),
}

/// What the bridge has to say, for its program's log.
pub enum Note<'a> {
    /// A fabric event (the program prints what it wants of it).
    Fabric(&'a FabricEvent),
    /// The bridge enumerated the device on its side.
    Enumerated(&'a rootcomplex::DeviceInfo),
    /// A line as it is.
    Line(String),
}

/// Where the bridge's notes go.
pub type Notes = Box<dyn FnMut(Note<'_>) + Send>;

/// What happened to the device, for the front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    Intx(bool),
    /// MSI or MSI-X vector (for front-ends that deliver them).
    Vector(u16),
    Removed,
    Returned,
}

pub struct VmBridge {
    /// The host's group.
    pub gid: u16,
    pub host: Host<FabricLink>,
    /// The box and slot of the device this bridge serves.
    device: Option<(MacAddr, u8)>,
    present: bool,
    /// The bridge has enumerated the device (BARs, MSI-X table) and does so again
    /// after every reset.
    enumerate: bool,
    notes: Notes,
}

/// The function address the device gets on this side.
fn bdf_of(slot: u8) -> Bdf {
    Bdf::new(1, slot, 0).expect("slots are 0..=31")
}

impl VmBridge {
    /// The bridge on `link` (in group `gid`, see [`crate::settings::host_link`]), with
    /// a root complex of Max Payload Size `max_payload`; guest RAM is mapped later by
    /// the front-end.
    pub fn new(link: FabricLink, gid: u16, max_payload: u16, notes: Notes) -> VmBridge {
        let host = Host::new(
            crate::settings::root_complex_config(max_payload),
            MemoryMap::new(),
            (0, 0),
            BarWindows::default(),
            link,
        );
        VmBridge {
            gid,
            host,
            device: None,
            present: false,
            enumerate: false,
            notes,
        }
    }

    /// Waits up to `timeout` (or until `stop()`) for a device in the group and takes
    /// it.
    pub fn wait_for_device(
        &mut self,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<wire::DeviceInfo, VmBridgeError> {
        let gid = self.gid;
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || stop() {
                return Err(VmBridgeError::NoDevice { gid, timeout });
            }
            let link = self.host.link_mut();
            if let Some((peer, d)) = link.wait_for_device(gid, left.min(Duration::from_millis(100)))
            {
                link.set_target(gid, peer);
                self.device = Some((peer, d.slot));
                self.present = true;
                (self.notes)(Note::Line(format!(
                    "device {:04x}:{:04x} (class {:06x}) in slot {} of box {peer} -> {}",
                    d.vendor_id,
                    d.device_id,
                    d.class_code,
                    d.slot,
                    bdf_of(d.slot)
                )));
                return Ok(d);
            }
        }
    }

    pub fn present(&self) -> bool {
        self.present
    }

    /// One round of the fabric (waiting up to `wait` for input); returns what happened
    /// to the device.
    pub fn poll(&mut self, wait: Duration, out: &mut Vec<DeviceEvent>) {
        self.host.poll(wait);
        while let Some(e) = self.host.link_mut().events.pop_front() {
            (self.notes)(Note::Fabric(&e));
            self.fabric_event(e, out);
        }
        let Some((_, slot)) = self.device else {
            return;
        };
        while let Some(i) = self.host.take_interrupt() {
            match i {
                Interrupt::Intx {
                    device, asserted, ..
                } if device == bdf_of(slot) => out.push(DeviceEvent::Intx(asserted)),
                Interrupt::Vector { device, vector } if device == bdf_of(slot) => {
                    out.push(DeviceEvent::Vector(vector))
                }
                _ => {}
            }
        }
    }

    fn fabric_event(&mut self, e: FabricEvent, out: &mut Vec<DeviceEvent>) {
        let Some((peer, slot)) = self.device else {
            return;
        };
        let gid = self.gid;
        match e {
            FabricEvent::DeviceRemoved {
                gid: g,
                peer: p,
                slot: s,
            } if (g, p, s) == (gid, peer, slot) && self.present => {
                self.present = false;
                out.push(DeviceEvent::Removed);
            }
            FabricEvent::DeviceAdded {
                gid: g,
                peer: p,
                device,
            } if (g, p, device.slot) == (gid, peer, slot) => {
                self.present = true;
                out.push(DeviceEvent::Returned);
            }
            FabricEvent::PeerRestarted {
                gid: g, peer: p, ..
            } if (g, p) == (gid, peer) => {
                self.present = true;
                out.push(DeviceEvent::Returned);
            }
            _ => {}
        }
    }

    /// The device as the front-end reaches it.
    pub fn function(&mut self) -> HostFunction<'_> {
        let bdf = self
            .device
            .filter(|_| self.present)
            .map(|(_, slot)| bdf_of(slot));
        HostFunction {
            host: &mut self.host,
            bdf,
            assigned: self.device.map(|(_, slot)| bdf_of(slot)),
            enumerate: self.enumerate,
            port: None,
            notes: &mut self.notes,
        }
    }

    /// The bridge assigns the device's BARs in its own windows and sets up its MSI-X
    /// table (left disabled until the VMM asks for MSI-X; the proxy never does), now
    /// and after every reset or return of the device. Every front-end needs this:
    /// vfio-user addresses BARs by index and offset, the proxy resolves the guest's
    /// addresses through the BAR registers it keeps for the guest.
    pub fn enumerate_device(&mut self) -> Result<(), VmBridgeError> {
        self.enumerate = true;
        let mut f = self.function();
        f.setup()
    }
}

/// The device behind the host bridge, as a front-end reaches it.
pub struct HostFunction<'a> {
    host: &'a mut Host<FabricLink>,
    /// `None` while the device is away.
    bdf: Option<Bdf>,
    /// The device's address whether or not it is there (its BARs stay assigned, so
    /// that accesses while it is away read all-ones rather than fail).
    assigned: Option<Bdf>,
    enumerate: bool,
    /// On a switch port: where its BARs go when it is enumerated again (after a
    /// reset), and whose its guest RAM mappings are (a VM's devices share them).
    port: Option<(BarWindows, MapOwner)>,
    notes: &'a mut Notes,
}

impl<'a> HostFunction<'a> {
    /// The device at `bdf` on a switch port whose windows are `windows`; its VMM
    /// connection's guest RAM mappings are shared as `owner`'s. The host bridge has
    /// enumerated it already.
    pub fn on_port(
        host: &'a mut Host<FabricLink>,
        bdf: Bdf,
        windows: BarWindows,
        owner: MapOwner,
        notes: &'a mut Notes,
    ) -> HostFunction<'a> {
        HostFunction {
            host,
            bdf: Some(bdf),
            assigned: Some(bdf),
            enumerate: true,
            port: Some((windows, owner)),
            notes,
        }
    }
}

impl HostFunction<'_> {
    /// Enumerates the device on the fabric side (BARs, MSI-X table) and leaves MSI-X
    /// and MSI off.
    pub fn setup(&mut self) -> Result<(), VmBridgeError> {
        let Some(bdf) = self.bdf else {
            return Err(VmBridgeError::Away);
        };
        self.host.remove(bdf);
        let d = match self.port {
            Some((windows, _)) => self.host.enumerate_in(bdf, windows),
            None => self.host.enumerate(bdf),
        }
        .map_err(VmBridgeError::Setup)?;
        (self.notes)(Note::Enumerated(&d));
        self.hand_to_vmm()
    }

    /// Leaves the enumerated device as a VMM expects to find it: MSI-X and MSI off,
    /// INTx on, until the VMM asks for MSI or MSI-X.
    pub fn hand_to_vmm(&mut self) -> Result<(), VmBridgeError> {
        let Some(bdf) = self.bdf else {
            return Err(VmBridgeError::Away);
        };
        self.set_msix(false);
        self.set_msi(false);
        // INTx until the VMM asks for MSI or MSI-X (enumeration disabled it for them).
        let cmd = self
            .host
            .config_read(bdf, 0x04)
            .map_err(VmBridgeError::Setup)?
            & 0xffff;
        self.host
            .config_write_be(bdf, 0x04, cmd & !(1 << 10), 0b0011)
            .map_err(VmBridgeError::Setup)?;
        Ok(())
    }
}

/// A BAR as enumeration assigned it, as a VMM front-end takes it.
pub fn vmm_bar(b: &rootcomplex::BarInfo) -> Bar {
    Bar {
        address: b.address,
        size: b.size,
        io: false,
        is_64bit: b.is_64bit,
        prefetchable: b.prefetchable,
    }
}

/// PCI Express capability ID, Device Control offset in it, Initiate FLR bit.
const CAP_PCIE: u8 = 0x10;
const DEVCTL: u16 = 0x08;
const DEVCTL_FLR: u32 = 1 << 15;

impl RemoteFunction for HostFunction<'_> {
    fn config_read(&mut self, register: u16) -> Option<u32> {
        self.host.config_read(self.bdf?, register).ok()
    }

    fn config_write(&mut self, register: u16, value: u32, byte_enables: u8) {
        if let Some(bdf) = self.bdf {
            let _ = self
                .host
                .config_write_be(bdf, register, value, byte_enables);
        }
    }

    fn mem_read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        match self.bdf {
            Some(_) => self.host.mem_read(addr, len),
            None => vec![0xff; len],
        }
    }

    fn mem_write(&mut self, addr: u64, data: &[u8]) {
        if self.bdf.is_some() {
            self.host.mem_write(addr, data);
        }
    }

    fn bar(&self, index: usize) -> Option<Bar> {
        let bdf = self.assigned?;
        let d = self.host.devices().iter().find(|d| d.bdf == bdf)?;
        d.bar(index).map(vmm_bar)
    }

    fn map_guest_ram(&mut self, base: u64, mem: Box<dyn HostMemory>) -> Result<(), String> {
        let len = mem.len();
        let map = self.host.memory_mut();
        match self.port {
            Some((_, owner)) => map.share(owner, base, mem),
            None => map.add(base, mem),
        }
        .map_err(|e| format!("guest RAM {base:#x}+{len:#x} not mapped: {e}"))
    }

    fn unmap_guest_ram(&mut self, base: u64, size: u64) {
        let map = self.host.memory_mut();
        match self.port {
            Some((_, owner)) => {
                map.unshare_within(owner, base, size);
            }
            None => {
                map.remove_within(base, size);
            }
        }
    }

    fn clear_guest_ram(&mut self) {
        match self.port {
            Some((_, owner)) => {
                self.host.memory_mut().unshare_within(owner, 0, u64::MAX);
            }
            None => self.host.memory_mut().clear(),
        }
    }

    fn set_msix(&mut self, enabled: bool) {
        let Some(bdf) = self.bdf else {
            return;
        };
        if let Some(cap) = vmm::caps::find(self, CAP_MSIX) {
            // Message Control is the upper half of the capability's first dword:
            // bit 15 enable, bit 14 function mask.
            let v = if enabled { 1u32 << 31 } else { 0 };
            let _ = self.host.config_write_be(bdf, cap, v, 0b1000);
        }
    }

    fn set_msi(&mut self, enabled: bool) {
        let Some(bdf) = self.bdf else {
            return;
        };
        if let Some(cap) = vmm::caps::find(self, CAP_MSI) {
            if let Err(e) = self.host.set_msi(bdf, cap, enabled) {
                (self.notes)(Note::Line(format!(
                    "  MSI {}: {e}",
                    if enabled { "on" } else { "off" }
                )));
            }
        }
    }

    /// A function-level reset through the PCI Express capability.
    fn reset(&mut self) {
        let Some(bdf) = self.bdf else {
            return;
        };
        let Some(pcie) = vmm::caps::find(self, CAP_PCIE) else {
            return;
        };
        let _ = self
            .host
            .config_write_be(bdf, pcie + DEVCTL, DEVCTL_FLR, 0b0011);
        // The reset cleared the BARs and the MSI-X table the bridge had set up.
        if self.enumerate {
            if let Err(e) = self.setup() {
                (self.notes)(Note::Line(format!("  after the reset: {e}")));
            }
        }
    }
}

/// How long the bridge waits for its device before giving up (QEMU waits meanwhile).
pub const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// The VMM front-ends' default for `[bridge] yield_after_us`: QEMU's threads share
/// the cores with the bridge (measured with a TCG guest on two cores: 4 KiB random
/// reads about twice as fast as with a bridge that spins without yielding).
pub const VMM_YIELD_AFTER_US: u64 = 50;

impl VmBridge {
    fn note(&mut self, n: Note<'_>) {
        (self.notes)(n)
    }
}

/// The VMM side of the bridge.
pub enum Frontend {
    Proxy(ProxyServer),
    /// Boxed: the server is several times the proxy's size.
    VfioUser(Box<VfioUserServer>),
}

impl Frontend {
    pub fn name(&self) -> &'static str {
        match self {
            Frontend::Proxy(_) => "qemu-proxy",
            Frontend::VfioUser(_) => "vfio-user",
        }
    }

    fn wait_fds(&self) -> Vec<RawFd> {
        match self {
            Frontend::Proxy(p) => p.wait_fds(),
            Frontend::VfioUser(v) => v.wait_fds(),
        }
    }

    /// Handles what the VMM sent; `None` when the VMM closed a connection that cannot
    /// come back (the proxy's socketpair).
    fn serve(&mut self, vb: &mut VmBridge) -> Result<Option<usize>, VmBridgeError> {
        match self {
            Frontend::Proxy(p) => match p.serve(&mut vb.function(), 16) {
                Ok(n) => Ok(Some(n)),
                Err(ProxyError::Closed) => Ok(None),
                Err(e) => Err(VmBridgeError::Proxy(e)),
            },
            Frontend::VfioUser(v) => {
                let was = v.connected();
                let n = v
                    .serve(&mut vb.function(), 16)
                    .map_err(VmBridgeError::VfioUser)?;
                match (was, v.connected()) {
                    (false, true) => vb.note(Note::Line("vfio-user: client connected".into())),
                    (true, false) => vb.note(Note::Line("vfio-user: client disconnected".into())),
                    _ => {}
                }
                Ok(Some(n))
            }
        }
    }

    fn device_event(&mut self, e: DeviceEvent, vb: &mut VmBridge) {
        match (self, e) {
            (Frontend::Proxy(p), DeviceEvent::Intx(level)) => p.set_intx(level),
            (Frontend::VfioUser(v), DeviceEvent::Intx(level)) => v.set_intx(level),
            (Frontend::VfioUser(v), DeviceEvent::Vector(n)) => v.vector(n),
            (Frontend::Proxy(_), DeviceEvent::Vector(_)) => {}
            (Frontend::Proxy(p), DeviceEvent::Removed) => {
                p.set_intx(false);
                vb.note(Note::Line(
                    "device removed: the guest reads all-ones until it returns".into(),
                ));
            }
            (Frontend::VfioUser(v), DeviceEvent::Removed) => {
                let asked = v.request_release();
                vb.note(Note::Line(format!(
                    "device removed: the guest reads all-ones{}",
                    if asked {
                        "; asked the VMM to release it (device request)"
                    } else {
                        ""
                    }
                )));
            }
            (fe, DeviceEvent::Returned) => {
                match fe {
                    Frontend::Proxy(p) => p.device_changed(),
                    Frontend::VfioUser(v) => v.device_changed(),
                }
                let line = match vb.enumerate_device() {
                    Ok(()) => "device back (reset by its box's restart), set up again".into(),
                    Err(e) => format!("device back, but: {e}"),
                };
                vb.note(Note::Line(line));
            }
        }
    }
}

/// Waits (up to [`DEVICE_WAIT`], or until `stop()`) for the device, sets up the
/// front-end `make` makes, and enumerates the device on the bridge's side.
pub fn start<E: From<VmBridgeError>>(
    mut vb: VmBridge,
    make: impl FnOnce() -> Result<Frontend, E>,
    stop: &dyn Fn() -> bool,
) -> Result<(VmBridge, Frontend), E> {
    vb.wait_for_device(DEVICE_WAIT, stop)?;
    let fe = make()?;
    vb.enumerate_device()?;
    Ok((vb, fe))
}

/// How the serving loop waits: it busy-polls for `spin` after the last activity,
/// yielding the core from `yield_after` on, then sleeps.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub spin: Duration,
    pub yield_after: Duration,
}

/// Serves the VMM until it closes the proxy connection, `stop()` says so, or
/// `every_10ms` (called about every 10 ms, for a control socket) returns true.
/// `removed()` is called when the device goes away (the launcher unplugs it from the
/// guest).
pub fn serve(
    vb: &mut VmBridge,
    fe: &mut Frontend,
    policy: Policy,
    stop: &dyn Fn() -> bool,
    mut every_10ms: impl FnMut(&VmBridge, &Frontend) -> bool,
    mut removed: impl FnMut(),
) -> Result<(), VmBridgeError> {
    let mut events = Vec::new();
    let mut last_work = Instant::now();
    let mut served = Instant::now();
    while !stop() {
        let frames = vb.host.link().fabric().node().stats().frames_in;
        vb.poll(Duration::ZERO, &mut events);
        let mut worked = vb.host.link().fabric().node().stats().frames_in != frames;
        for e in std::mem::take(&mut events) {
            worked = true;
            if e == DeviceEvent::Removed {
                removed();
            }
            fe.device_event(e, vb);
        }
        match fe.serve(vb)? {
            Some(n) => worked |= n > 0,
            None => {
                vb.note(Note::Line("QEMU closed the connection".into()));
                break;
            }
        }
        if worked {
            last_work = Instant::now();
        } else if last_work.elapsed() >= policy.spin {
            // Idle: sleep until the VMM, an interrupt acknowledgement, a frame or a
            // timer needs us.
            let (port_fd, until_timer) = vb.host.link().fabric().wait_hint();
            let mut fds = fe.wait_fds();
            fds.extend(port_fd);
            let cap = if port_fd.is_some() {
                Duration::from_millis(10)
            } else {
                Duration::from_micros(50)
            };
            vmm::sys::wait_readable(&fds, until_timer.min(cap)).map_err(VmBridgeError::Wait)?;
        } else if last_work.elapsed() >= policy.yield_after {
            // Spinning: let a thread that waits for this core run first.
            std::thread::yield_now();
        }
        if served.elapsed() >= Duration::from_millis(10) {
            if every_10ms(vb, fe) {
                break;
            }
            served = Instant::now();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;

    use dataplane::PortError;
    use endpoint::config::{Bar as CfgBar, ConfigSpace};
    use endpoint::memdev::{self, op, regs};
    use endpoint::{Function, FunctionConfig};
    use fabric::port::{node_for, NodeSettings};
    use fabric::FabricPort;
    use iobox::{IoBox, Slot};
    use vmm::proxy::wire::{cmd as proxy_cmd, Header, Request, HEADER_LEN};
    use wire::BridgeRole;

    use crate::settings::{host_link, HostSettings};

    /// Polls until the device reports something (or 5 s pass).
    fn next_event(vb: &mut VmBridge) -> Option<DeviceEvent> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while out.is_empty() && Instant::now() < end {
            vb.poll(Duration::from_millis(1), &mut out);
        }
        out.first().copied()
    }

    /// A memdev DMA READ of 64 bytes from guest RAM at 0x10_0000, interrupt on.
    fn run_op(vb: &mut VmBridge) -> Option<DeviceEvent> {
        let mut f = vb.function();
        let bar0 = f.bar(0).expect("BAR0 assigned").address;
        for (reg, v) in memdev::start_writes(op::READ, 0x10_0000, 0, 64, true) {
            f.mem_write(bar0 + reg, &v.to_le_bytes());
        }
        let e = next_event(vb);
        // Acknowledge: the status back to idle, INTx released.
        let mut f = vb.function();
        f.mem_write(bar0 + regs::STATUS, &0u32.to_le_bytes());
        e
    }

    /// A bridge whose group holds `slot`, served by a box in a thread over an
    /// in-memory port; the device enumerated as for vfio-user, 4 KiB of guest RAM
    /// mapped at 0x10_0000.
    fn bridge_with(slot: Slot) -> (VmBridge, Arc<AtomicBool>, JoinHandle<Result<(), PortError>>) {
        let pool = dataplane::open::pool_for(1500).unwrap();
        let (ours, theirs) = dataplane::ports::mem::pair(&pool, 4096, 1500);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let boxt = std::thread::spawn(move || {
            let node = node_for(&theirs, BridgeRole::IoBox, &NodeSettings::default()).unwrap();
            let mut b = IoBox::new(FabricPort::new(node, Box::new(theirs)), vec![slot]);
            while !s.load(Ordering::Relaxed) {
                b.poll(Duration::from_millis(1))?;
                b.events.clear();
            }
            Ok(())
        });
        let node = node_for(&ours, BridgeRole::Host, &NodeSettings::default()).unwrap();
        let s = HostSettings {
            gid: 10,
            max_payload: 256,
        };
        let link = host_link(FabricPort::new(node, Box::new(ours)), "memory", &s).unwrap();
        let mut vb = VmBridge::new(link, s.gid, s.max_payload, Box::new(|_| {}));
        vb.wait_for_device(Duration::from_secs(10), &|| false)
            .unwrap();
        vb.enumerate_device().unwrap();
        vb.function()
            .map_guest_ram(0x10_0000, Box::new(vec![0x5au8; 4096]))
            .unwrap();
        (vb, stop, boxt)
    }

    fn msi_enabled(f: &mut HostFunction, cap: u16) -> bool {
        f.config_read(cap).unwrap() & 1 << 16 != 0
    }

    /// The vfio-user front-end asks for MSI on demand: the bridge points the
    /// device's MSI at itself, and its message comes back as vector 0; off again,
    /// the device falls back to INTx. Enumeration leaves both MSI and MSI-X off.
    #[test]
    fn msi_on_demand_arrives_as_vector_0() {
        let (mut vb, stop, boxt) = bridge_with(Slot::memdev(2, 10, 1 << 16).unwrap());
        let mut f = vb.function();
        let msi = vmm::caps::find(&mut f, CAP_MSI).expect("memdev has MSI");
        let msix = vmm::caps::find(&mut f, CAP_MSIX).expect("memdev has MSI-X");
        assert!(!msi_enabled(&mut f, msi), "MSI off after setup");
        assert_eq!(
            f.config_read(msix).unwrap() >> 31,
            0,
            "MSI-X off after setup"
        );

        assert_eq!(run_op(&mut vb), Some(DeviceEvent::Intx(true)));
        assert_eq!(next_event(&mut vb), Some(DeviceEvent::Intx(false)));
        vb.function().set_msi(true);
        assert!(msi_enabled(&mut vb.function(), msi));
        assert_eq!(run_op(&mut vb), Some(DeviceEvent::Vector(0)));
        vb.function().set_msi(false);
        assert!(!msi_enabled(&mut vb.function(), msi));
        assert_eq!(run_op(&mut vb), Some(DeviceEvent::Intx(true)));

        stop.store(true, Ordering::Relaxed);
        boxt.join().unwrap().unwrap();
    }

    /// QEMU's end of a proxy connection: sends `r`, lets the server handle it
    /// against the bridge's device, and returns the RET value (0 for an empty RET).
    fn proxy_ask(q: &mut UnixStream, p: &mut ProxyServer, vb: &mut VmBridge, r: Request) -> u64 {
        q.write_all(&r.emit()).unwrap();
        assert_eq!(p.serve(&mut vb.function(), 8).unwrap(), 1);
        let mut h = [0u8; HEADER_LEN];
        q.read_exact(&mut h).unwrap();
        let h = Header::parse(&h).unwrap();
        assert_eq!(h.cmd, proxy_cmd::RET);
        let mut v = [0u8; 8];
        q.read_exact(&mut v[..h.size as usize]).unwrap();
        u64::from_le_bytes(v)
    }

    /// The guest writes dword `value` at config register `addr` through the proxy.
    fn proxy_config_write(
        q: &mut UnixStream,
        p: &mut ProxyServer,
        vb: &mut VmBridge,
        addr: u32,
        value: u32,
    ) {
        let w = Request::ConfigWrite {
            addr,
            value,
            len: 4,
        };
        assert_eq!(proxy_ask(q, p, vb, w), 0);
    }

    /// TLPs the bridge's session to the device's box has sent, and requests its root
    /// complex has made.
    fn sent(vb: &VmBridge) -> (u64, u64) {
        let (peer, _) = vb.device.unwrap();
        let session = vb.host.link().fabric().node().session_stats(vb.gid, peer);
        (session.unwrap().tlps_out, vb.host.bridge().stats().requests)
    }

    /// The proxy path with a real memdev behind the bridge: the bridge enumerated it
    /// (its BARs hold the bridge's addresses), the guest sizes and places its BARs in
    /// the proxy's shadow (all-ones reads back the mask, the device's registers stay),
    /// a BAR access at a guest address inside a BAR reaches the device at the bridge's
    /// address, and one outside every BAR reads all-ones, writes nothing and sends no
    /// TLP. Before, guest BAR writes reached the device and any address went out.
    #[test]
    fn a_proxy_guest_reaches_the_device_only_inside_its_bars() {
        let (mut vb, stop, boxt) = bridge_with(Slot::memdev(2, 10, 1 << 16).unwrap());
        let (mut q, ours) = UnixStream::pair().unwrap();
        let mut p = ProxyServer::new(ours.into());
        let bar0 = vb.function().bar(0).unwrap().address;
        let bar2 = vb.function().bar(2).unwrap().address;
        let device_regs = |vb: &mut VmBridge| {
            let mut f = vb.function();
            [0x10, 0x18, 0x1c].map(|r| f.config_read(r).unwrap())
        };
        let before = device_regs(&mut vb);
        assert_eq!(u64::from(before[0] & !0xf), bar0);
        let cfg = |addr| Request::ConfigRead { addr, len: 4 };
        let mut sized = Vec::new();
        for reg in [0x10, 0x14, 0x18, 0x1c, 0x30] {
            proxy_config_write(&mut q, &mut p, &mut vb, reg, u32::MAX);
            sized.push(proxy_ask(&mut q, &mut p, &mut vb, cfg(reg)));
        }
        assert_eq!(sized, [0xffff_f000, 0, 0xffff_000c, 0xffff_ffff, 0]);
        assert_eq!(
            device_regs(&mut vb),
            before,
            "the device's BARs stay the bridge's"
        );
        // The guest places BAR0 at 0xc000_0000 and BAR2 at 0x1_0000_0000.
        for (reg, v) in [(0x10, 0xc000_0000), (0x18, 0), (0x1c, 1)] {
            proxy_config_write(&mut q, &mut p, &mut vb, reg, v);
        }
        assert_eq!(proxy_ask(&mut q, &mut p, &mut vb, cfg(0x18)), 0xc);
        let rd = |addr, size| Request::BarRead {
            addr,
            size,
            memory: true,
        };
        let wr = |addr, value| Request::BarWrite {
            addr,
            value,
            size: 8,
            memory: true,
        };
        let magic = u64::from(memdev::MAGIC);
        assert_eq!(
            proxy_ask(&mut q, &mut p, &mut vb, rd(0xc000_0000, 4)),
            magic
        );
        let (tlps, requests) = sent(&vb);
        proxy_ask(
            &mut q,
            &mut p,
            &mut vb,
            wr(0x1_0000_0100, 0x0123_4567_89ab_cdef),
        );
        let mut f = vb.function();
        assert_eq!(
            f.mem_read(bar2 + 0x100, 8),
            0x0123_4567_89ab_cdefu64.to_le_bytes()
        );
        assert_eq!(
            proxy_ask(&mut q, &mut p, &mut vb, rd(0x1_0000_0100, 8)),
            0x0123_4567_89ab_cdef
        );
        let (tlps_after, requests_after) = sent(&vb);
        assert!(tlps_after >= tlps + 3 && requests_after == requests + 2);
        // Outside: the bridge's own addresses, past BAR0's end, straddling it, and an
        // end that wraps.
        let (tlps, requests) = sent(&vb);
        for addr in [bar0, bar2 + 0x100, 0xc000_1000, 0xc000_0ffc, u64::MAX - 3] {
            assert_eq!(
                proxy_ask(&mut q, &mut p, &mut vb, rd(addr, 8)),
                u64::MAX,
                "{addr:#x}"
            );
            proxy_ask(&mut q, &mut p, &mut vb, wr(addr, 0));
        }
        let mut events = Vec::new();
        for _ in 0..20 {
            vb.poll(Duration::from_millis(1), &mut events);
        }
        assert_eq!(sent(&vb), (tlps, requests), "nothing went to the wire");
        assert_eq!(p.stats().outside_bar, 10);
        // A reset: the bridge enumerates the device again at new addresses of its own,
        // the guest finds its BARs unassigned and places them again.
        assert_eq!(proxy_ask(&mut q, &mut p, &mut vb, Request::DeviceReset), 0);
        assert_ne!(vb.function().bar(0).unwrap().address, bar0);
        assert_eq!(proxy_ask(&mut q, &mut p, &mut vb, cfg(0x10)), 0);
        assert_eq!(
            proxy_ask(&mut q, &mut p, &mut vb, rd(0xc000_0000, 4)),
            u64::from(u32::MAX)
        );
        proxy_config_write(&mut q, &mut p, &mut vb, 0x10, 0xc000_0000);
        assert_eq!(
            proxy_ask(&mut q, &mut p, &mut vb, rd(0xc000_0000, 4)),
            magic
        );

        stop.store(true, Ordering::Relaxed);
        boxt.join().unwrap().unwrap();
    }

    /// A device with MSI and no MSI-X: enumeration turns its MSI on, and the set-up
    /// for vfio-user turns it off again, so that it interrupts by INTx until the VMM
    /// asks for MSI.
    #[test]
    fn an_msi_only_device_is_left_on_intx() {
        let config = ConfigSpace::builder(memdev::VENDOR_ID, memdev::DEVICE_ID)
            .class(0x05, 0x80, 0x00)
            .interrupt_pin(1)
            .bar(0, CfgBar::mem32(4096))
            .bar(2, CfgBar::mem64(1 << 16).prefetchable())
            .pcie(256)
            .msi(1, true)
            .build()
            .unwrap();
        let model: Box<dyn endpoint::Device + Send> = Box::new(memdev::MemDev::new(1 << 16));
        let function = Function::new(config, model, FunctionConfig::default());
        let (mut vb, stop, boxt) = bridge_with(Slot::announced(2, 10, function));
        let mut f = vb.function();
        assert!(vmm::caps::find(&mut f, CAP_MSIX).is_none());
        let msi = vmm::caps::find(&mut f, CAP_MSI).expect("MSI");
        assert!(!msi_enabled(&mut f, msi), "MSI off after setup");
        assert_eq!(run_op(&mut vb), Some(DeviceEvent::Intx(true)));
        assert_eq!(next_event(&mut vb), Some(DeviceEvent::Intx(false)));
        vb.function().set_msi(true);
        assert_eq!(run_op(&mut vb), Some(DeviceEvent::Vector(0)));

        stop.store(true, Ordering::Relaxed);
        boxt.join().unwrap().unwrap();
    }
}
