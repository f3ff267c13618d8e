//! A device behind the host bridge as a VMM front-end reaches it
//! ([`vmm::device::RemoteFunction`]): [`HostFunction`] turns the front-end's config
//! and BAR accesses into the root complex's requests to the device on its switch port
//! (TLPs across the fabric), maps guest RAM for the device's DMA, and turns MSI and
//! MSI-X on and off at the VMM's request; [`Away`] answers in its place while the
//! device is gone and the VMM keeps the front-end (reads all-ones, writes dropped, as
//! after a surprise removal).
//!
//! The bridge enumerated the device on its side (BARs in its port's windows, the
//! MSI-X table pointed at the root complex) and does so again after every reset; the
//! guest's firmware and OS enumerate the BAR registers the front-end keeps for them
//! (`vmm::bar_shadow`), and the front-end turns the guest's BAR accesses into
//! accesses at the bridge's addresses.

use rootcomplex::{BarWindows, Host, HostError, HostMemory, MapOwner, MemoryMap};
use thiserror::Error;
use tlp::Bdf;
use vmm::caps::{CAP_MSI, CAP_MSIX};
use vmm::device::{Bar, RemoteFunction};

use crate::FabricLink;

#[derive(Debug, Error)]
pub enum FunctionError {
    #[error("setting up the device: {0}")]
    Setup(#[source] HostError),
}

/// What the bridge has to say, for its program's log.
pub enum Note<'a> {
    /// The bridge enumerated a device on its side.
    Enumerated(&'a rootcomplex::DeviceInfo),
    /// A line about something that failed.
    Warning(String),
}

/// Where the bridge's notes go.
pub type Notes = Box<dyn FnMut(Note<'_>) + Send>;

/// The device behind the host bridge, as a front-end reaches it.
pub struct HostFunction<'a> {
    host: &'a mut Host<FabricLink>,
    bdf: Bdf,
    /// Its port's windows: where its BARs go when it is enumerated again (after a
    /// reset).
    windows: BarWindows,
    /// Whose the guest RAM mappings of its VMM connection are (a VM's devices share
    /// them).
    owner: MapOwner,
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
            bdf,
            windows,
            owner,
            notes,
        }
    }
}

impl HostFunction<'_> {
    /// Enumerates the device again on the fabric side (BARs, MSI-X table) and leaves
    /// MSI-X and MSI off.
    fn setup(&mut self) -> Result<(), FunctionError> {
        self.host.remove(self.bdf);
        let d = self
            .host
            .enumerate_in(self.bdf, self.windows)
            .map_err(FunctionError::Setup)?;
        (self.notes)(Note::Enumerated(&d));
        self.hand_to_vmm()
    }

    /// Leaves the enumerated device as a VMM expects to find it: MSI-X and MSI off,
    /// INTx on, until the VMM asks for MSI or MSI-X.
    pub fn hand_to_vmm(&mut self) -> Result<(), FunctionError> {
        self.set_msix(false);
        self.set_msi(false);
        // INTx until the VMM asks for MSI or MSI-X (enumeration disabled it for them).
        let cmd = self
            .host
            .config_read(self.bdf, 0x04)
            .map_err(FunctionError::Setup)?
            & 0xffff;
        self.host
            .config_write_be(self.bdf, 0x04, cmd & !(1 << 10), 0b0011)
            .map_err(FunctionError::Setup)?;
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

/// The BARs of an enumerated device, by index (an absent index has size 0).
pub fn bars_of(d: &rootcomplex::DeviceInfo) -> Vec<Bar> {
    let n = d.bars.iter().map(|b| b.index + 1).max().unwrap_or(0);
    let absent = Bar {
        address: 0,
        size: 0,
        io: false,
        is_64bit: false,
        prefetchable: false,
    };
    (0..n).map(|i| d.bar(i).map_or(absent, vmm_bar)).collect()
}

/// PCI Express capability ID, Device Control offset in it, Initiate FLR bit.
const CAP_PCIE: u8 = 0x10;
const DEVCTL: u16 = 0x08;
const DEVCTL_FLR: u32 = 1 << 15;

impl RemoteFunction for HostFunction<'_> {
    fn config_read(&mut self, register: u16) -> Option<u32> {
        self.host.config_read(self.bdf, register).ok()
    }

    fn config_write(&mut self, register: u16, value: u32, byte_enables: u8) {
        let _ = self
            .host
            .config_write_be(self.bdf, register, value, byte_enables);
    }

    fn mem_read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        self.host.mem_read(addr, len)
    }

    fn mem_write(&mut self, addr: u64, data: &[u8]) {
        self.host.mem_write(addr, data);
    }

    fn bar(&self, index: usize) -> Option<Bar> {
        let d = self.host.devices().iter().find(|d| d.bdf == self.bdf)?;
        d.bar(index).map(vmm_bar)
    }

    fn map_guest_ram(&mut self, base: u64, mem: Box<dyn HostMemory>) -> Result<(), String> {
        map_guest_ram(self.host.memory_mut(), self.owner, base, mem)
    }

    fn unmap_guest_ram(&mut self, base: u64, size: u64) {
        self.host
            .memory_mut()
            .unshare_within(self.owner, base, size);
    }

    fn clear_guest_ram(&mut self) {
        self.host
            .memory_mut()
            .unshare_within(self.owner, 0, u64::MAX);
    }

    fn set_msix(&mut self, enabled: bool) {
        if let Some(cap) = vmm::caps::find(self, CAP_MSIX) {
            // Message Control is the upper half of the capability's first dword:
            // bit 15 enable, bit 14 function mask.
            let v = if enabled { 1u32 << 31 } else { 0 };
            let _ = self.host.config_write_be(self.bdf, cap, v, 0b1000);
        }
    }

    fn set_msi(&mut self, enabled: bool) {
        if let Some(cap) = vmm::caps::find(self, CAP_MSI) {
            if let Err(e) = self.host.set_msi(self.bdf, cap, enabled) {
                (self.notes)(Note::Warning(format!(
                    "MSI {}: {e}",
                    if enabled { "on" } else { "off" }
                )));
            }
        }
    }

    /// A function-level reset through the PCI Express capability.
    fn reset(&mut self) {
        let Some(pcie) = vmm::caps::find(self, CAP_PCIE) else {
            return;
        };
        let _ = self
            .host
            .config_write_be(self.bdf, pcie + DEVCTL, DEVCTL_FLR, 0b0011);
        // The reset cleared the BARs and the MSI-X table the bridge had set up.
        if let Err(e) = self.setup() {
            (self.notes)(Note::Warning(format!("after the reset: {e}")));
        }
    }
}

fn map_guest_ram(
    map: &mut MemoryMap,
    owner: MapOwner,
    base: u64,
    mem: Box<dyn HostMemory>,
) -> Result<(), String> {
    let len = mem.len();
    map.share(owner, base, mem)
        .map_err(|e| format!("guest RAM {base:#x}+{len:#x} not mapped: {e}"))
}

/// A device that is gone, as the front-end that kept it reaches it: config and memory
/// reads return all-ones, writes are dropped, as after a surprise removal; its BARs
/// stay as they were (the VMM's view of them does not change), and guest RAM is
/// mapped and unmapped for it as for the device, ready for its return.
pub struct Away<'a> {
    pub memory: &'a mut MemoryMap,
    pub owner: MapOwner,
    pub bars: &'a [Bar],
}

impl RemoteFunction for Away<'_> {
    fn config_read(&mut self, _register: u16) -> Option<u32> {
        None
    }

    fn config_write(&mut self, _register: u16, _value: u32, _byte_enables: u8) {}

    fn mem_read(&mut self, _addr: u64, len: usize) -> Vec<u8> {
        vec![0xff; len]
    }

    fn mem_write(&mut self, _addr: u64, _data: &[u8]) {}

    fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().filter(|b| b.size > 0)
    }

    fn map_guest_ram(&mut self, base: u64, mem: Box<dyn HostMemory>) -> Result<(), String> {
        map_guest_ram(self.memory, self.owner, base, mem)
    }

    fn unmap_guest_ram(&mut self, base: u64, size: u64) {
        self.memory.unshare_within(self.owner, base, size);
    }

    fn clear_guest_ram(&mut self) {
        self.memory.unshare_within(self.owner, 0, u64::MAX);
    }

    fn reset(&mut self) {}

    fn set_msix(&mut self, _enabled: bool) {}

    fn set_msi(&mut self, _enabled: bool) {}
}

/// The VMM front-ends' default for `[bridge] yield_after_us`: QEMU's threads share
/// the cores with the bridge (measured with a TCG guest on two cores: 4 KiB random
/// reads about twice as fast as with a bridge that spins without yielding).
pub const VMM_YIELD_AFTER_US: u64 = 50;
