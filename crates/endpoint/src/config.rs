//! A type-0 (endpoint) configuration space of 4 KiB, with the behaviour of hardware
//! registers rather than plain memory: per-bit write masks, write-1-to-clear status
//! bits, BARs that size themselves (write all-ones, read back the size mask), and a
//! capability list (Power Management, MSI, MSI-X, PCI Express).
//!
//! Everything a host can do to config space goes through [`ConfigSpace::write`], byte
//! enables included; what a write means for the device (memory decoding switched,
//! bus mastering, MSI enabled, a function-level reset asked for) comes back as
//! [`ConfigEffects`] for the endpoint to act on.

use pci::{msi, msix, pcie, pm, CapabilityId};
use thiserror::Error;
use tlp::TagWidth;

/// Size of a PCI Express function's configuration space.
pub const CONFIG_SIZE: usize = 4096;

/// Standard header offsets ([`pci::regs`]), as indices into the config image.
pub mod reg {
    use pci::regs;
    pub const VENDOR_ID: usize = regs::VENDOR_ID as usize;
    pub const DEVICE_ID: usize = regs::DEVICE_ID as usize;
    pub const COMMAND: usize = regs::COMMAND as usize;
    pub const STATUS: usize = regs::STATUS as usize;
    pub const REVISION: usize = regs::REVISION as usize;
    pub const CLASS: usize = regs::CLASS as usize;
    pub const CACHE_LINE: usize = regs::CACHE_LINE as usize;
    pub const HEADER_TYPE: usize = regs::HEADER_TYPE as usize;
    pub const BAR0: usize = regs::BAR0 as usize;
    pub const SUBSYSTEM_VENDOR: usize = regs::SUBSYSTEM_VENDOR as usize;
    pub const SUBSYSTEM_ID: usize = regs::SUBSYSTEM_ID as usize;
    pub const CAP_PTR: usize = regs::CAP_PTR as usize;
    pub const INTERRUPT_LINE: usize = regs::INTERRUPT_LINE as usize;
    pub const INTERRUPT_PIN: usize = regs::INTERRUPT_PIN as usize;
}

pub use pci::regs::{command, status};
pub use pci::BarKind;

/// One base address register as the device declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    /// Bytes decoded: a power of two, at least 16 for memory (4 for I/O).
    pub size: u64,
    pub prefetchable: bool,
}

impl Bar {
    pub fn mem32(size: u64) -> Bar {
        Bar {
            kind: BarKind::Memory32,
            size,
            prefetchable: false,
        }
    }

    pub fn mem64(size: u64) -> Bar {
        Bar {
            kind: BarKind::Memory64,
            size,
            prefetchable: false,
        }
    }

    pub fn io(size: u64) -> Bar {
        Bar {
            kind: BarKind::Io,
            size,
            prefetchable: false,
        }
    }

    pub fn prefetchable(self) -> Bar {
        Bar {
            prefetchable: true,
            ..self
        }
    }

    /// The low bits of the BAR register that say what it is.
    fn flags(&self) -> u32 {
        self.kind.flags(self.prefetchable)
    }
}

/// MSI-X table and PBA placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {index}: {why}")]
    Bar { index: usize, why: &'static str },
    #[error("MSI-X: {0}")]
    Msix(&'static str),
    #[error("MSI: {0}")]
    Msi(&'static str),
    #[error("the capabilities do not fit in the 192 bytes after the header")]
    NoRoom,
}

/// Where the capabilities of a function are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapOffsets {
    pub pm: Option<usize>,
    pub msi: Option<usize>,
    pub msix: Option<usize>,
    pub pcie: Option<usize>,
}

/// What a config write changed, for the endpoint to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigEffects {
    /// The command register changed (memory decoding, bus mastering, INTx disable).
    pub command_changed: bool,
    /// A BAR register was written (an address assigned, or a sizing probe).
    pub bar_written: bool,
    /// MSI or MSI-X enable, mask or address/data changed.
    pub interrupts_changed: bool,
    /// Software asked for a function-level reset (PCIe Device Control bit 15).
    pub function_level_reset: bool,
}

/// A function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CONFIG_SIZE]>,
    writable: Box<[u8; CONFIG_SIZE]>,
    w1c: Box<[u8; CONFIG_SIZE]>,
    /// The image after reset, for function-level reset.
    initial: Box<[u8; CONFIG_SIZE]>,
    bars: [Option<Bar>; 6],
    caps: CapOffsets,
    msi_vectors: u8,
    msix: Option<MsixLayout>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field(
                "vendor",
                &format_args!("{:04x}", self.read16(reg::VENDOR_ID)),
            )
            .field(
                "device",
                &format_args!("{:04x}", self.read16(reg::DEVICE_ID)),
            )
            .field("command", &format_args!("{:04x}", self.command()))
            .field("bars", &self.bars)
            .field("caps", &self.caps)
            .finish()
    }
}

/// Builds a configuration space: identity, BARs, capabilities.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    vendor: u16,
    device: u16,
    subsystem: (u16, u16),
    class: [u8; 3],
    revision: u8,
    interrupt_pin: u8,
    bars: [Option<Bar>; 6],
    pm: bool,
    /// log2 of the MSI vectors offered, and per-vector masking.
    msi: Option<(u8, bool)>,
    msix: Option<MsixLayout>,
    /// Max payload size supported, as the DevCap encoding (0 = 128 B .. 5 = 4096 B).
    pcie_mps: Option<u8>,
    /// Vendor-specific capabilities: the bytes after the ID and next pointer.
    vendor_caps: Vec<Vec<u8>>,
}

impl ConfigSpace {
    pub fn builder(vendor: u16, device: u16) -> ConfigBuilder {
        ConfigBuilder {
            vendor,
            device,
            subsystem: (vendor, device),
            class: [0xff, 0, 0],
            revision: 0,
            interrupt_pin: 0,
            bars: [None; 6],
            pm: false,
            msi: None,
            msix: None,
            pcie_mps: None,
            vendor_caps: Vec::new(),
        }
    }
}

impl ConfigBuilder {
    /// Base class, subclass, programming interface.
    pub fn class(mut self, base: u8, sub: u8, prog_if: u8) -> Self {
        self.class = [base, sub, prog_if];
        self
    }

    pub fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }

    pub fn subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.subsystem = (vendor, id);
        self
    }

    /// INTx pin: 1 = INTA .. 4 = INTD, 0 = none.
    pub fn interrupt_pin(mut self, pin: u8) -> Self {
        self.interrupt_pin = pin;
        self
    }

    pub fn bar(mut self, index: usize, bar: Bar) -> Self {
        if index < 6 {
            self.bars[index] = Some(bar);
        }
        self
    }

    pub fn power_management(mut self) -> Self {
        self.pm = true;
        self
    }

    /// MSI with `vectors` (1, 2, 4, 8, 16 or 32) and optional per-vector masking.
    pub fn msi(mut self, vectors: u8, per_vector_mask: bool) -> Self {
        self.msi = Some((vectors.max(1).trailing_zeros() as u8, per_vector_mask));
        self
    }

    pub fn msix(mut self, layout: MsixLayout) -> Self {
        self.msix = Some(layout);
        self
    }

    /// The PCI Express capability of an endpoint supporting payloads up to `max_payload`
    /// bytes (128 .. 4096).
    pub fn pcie(mut self, max_payload: u16) -> Self {
        let enc = (max_payload.clamp(128, 4096) / 128).trailing_zeros() as u8;
        self.pcie_mps = Some(enc);
        self
    }

    /// A vendor-specific capability (ID 09h, read-only) whose body, the bytes after the
    /// ID and next pointer, is `body`; its first byte is by convention the capability's
    /// length, which the builder fills in. Added after the standard capabilities, in
    /// call order.
    pub fn vendor_capability(mut self, body: &[u8]) -> Self {
        self.vendor_caps.push(body.to_vec());
        self
    }

    pub fn build(self) -> Result<ConfigSpace, ConfigError> {
        let mut c = ConfigSpace {
            bytes: Box::new([0; CONFIG_SIZE]),
            writable: Box::new([0; CONFIG_SIZE]),
            w1c: Box::new([0; CONFIG_SIZE]),
            initial: Box::new([0; CONFIG_SIZE]),
            bars: [None; 6],
            caps: CapOffsets::default(),
            msi_vectors: 0,
            msix: None,
        };
        c.set16(reg::VENDOR_ID, self.vendor);
        c.set16(reg::DEVICE_ID, self.device);
        c.bytes[reg::REVISION] = self.revision;
        c.bytes[reg::CLASS] = self.class[2];
        c.bytes[reg::CLASS + 1] = self.class[1];
        c.bytes[reg::CLASS + 2] = self.class[0];
        c.bytes[reg::HEADER_TYPE] = 0;
        c.set16(reg::SUBSYSTEM_VENDOR, self.subsystem.0);
        c.set16(reg::SUBSYSTEM_ID, self.subsystem.1);
        c.bytes[reg::INTERRUPT_PIN] = self.interrupt_pin;
        c.writable[reg::INTERRUPT_LINE] = 0xff;
        c.writable[reg::CACHE_LINE] = 0xff;
        let cmd = command::MEMORY
            | command::BUS_MASTER
            | command::PARITY
            | command::SERR
            | if self.interrupt_pin != 0 {
                command::INTX_DISABLE
            } else {
                0
            }
            | if self.bars.iter().flatten().any(|b| b.kind == BarKind::Io) {
                command::IO
            } else {
                0
            };
        c.set_mask16(reg::COMMAND, cmd);
        c.set_w1c16(reg::STATUS, status::ERRORS);
        c.place_bars(&self.bars)?;

        // Capabilities from 0x40, each linked to the next.
        let mut at = usize::from(pci::regs::HEADER_END);
        let mut prev_next: usize = reg::CAP_PTR;
        let mut link =
            |c: &mut ConfigSpace, id: CapabilityId, len: usize| -> Result<usize, ConfigError> {
                if at + len > usize::from(pci::regs::CONVENTIONAL_END) {
                    return Err(ConfigError::NoRoom);
                }
                let off = at;
                c.bytes[prev_next] = off as u8;
                c.bytes[off] = id.raw();
                prev_next = off + 1;
                at = (off + len).div_ceil(4) * 4;
                Ok(off)
            };
        if self.pcie_mps.is_some()
            || self.pm
            || self.msi.is_some()
            || self.msix.is_some()
            || !self.vendor_caps.is_empty()
        {
            c.set16(reg::STATUS, status::CAP_LIST);
        }
        if let Some(mps) = self.pcie_mps {
            let off = link(&mut c, CapabilityId::PciExpress, pcie::LEN.into())?;
            c.caps.pcie = Some(off);
            c.init_pcie(off, mps);
        }
        if self.pm {
            let off = link(&mut c, CapabilityId::PowerManagement, pm::LEN.into())?;
            c.caps.pm = Some(off);
            // PMC: version 3. PMCSR: power state RW, No_Soft_Reset set.
            c.set16(off + usize::from(pm::PMC), 0x0003);
            c.set16(off + usize::from(pm::PMCSR), pm::PMCSR_NO_SOFT_RESET);
            c.set_mask16(off + usize::from(pm::PMCSR), pm::PMCSR_POWER_STATE);
        }
        if let Some((log2, masking)) = self.msi {
            if log2 > 5 {
                return Err(ConfigError::Msi("at most 32 vectors"));
            }
            // Message Control: enable RW, MMC, MME RW, 64-bit capable, masking capable.
            let control = (log2 as u16) << msi::control::MULTIPLE_CAPABLE_SHIFT
                | msi::control::ADDRESS_64
                | if masking {
                    msi::control::PER_VECTOR_MASK
                } else {
                    0
                };
            let off = link(&mut c, CapabilityId::Msi, msi::len(control).into())?;
            c.caps.msi = Some(off);
            c.msi_vectors = 1 << log2;
            let at = |r: u16| off + usize::from(r);
            c.set16(at(msi::CONTROL), control);
            c.set_mask16(
                at(msi::CONTROL),
                msi::control::ENABLE | msi::control::MULTIPLE_ENABLE,
            );
            c.set_mask32(at(msi::ADDRESS_LO), 0xffff_fffc);
            c.set_mask32(at(msi::ADDRESS_HI), 0xffff_ffff);
            c.set_mask16(at(msi::DATA_64), 0xffff);
            if masking {
                let bits = if log2 == 5 {
                    u32::MAX
                } else {
                    (1u32 << (1 << log2)) - 1
                };
                c.set_mask32(at(msi::MASK_64), bits);
            }
        }
        if let Some(m) = self.msix {
            if m.vectors == 0 || m.vectors > msix::MAX_VECTORS {
                return Err(ConfigError::Msix("1 to 2048 vectors"));
            }
            for (bar, offset, bytes) in [
                (
                    m.table_bar,
                    m.table_offset,
                    m.vectors as u64 * msix::ENTRY_SIZE,
                ),
                (m.pba_bar, m.pba_offset, (m.vectors as u64).div_ceil(64) * 8),
            ] {
                let fits = c
                    .bars
                    .get(bar as usize)
                    .copied()
                    .flatten()
                    .is_some_and(|b| b.kind != BarKind::Io && offset as u64 + bytes <= b.size);
                if !fits || !offset.is_multiple_of(8) {
                    return Err(ConfigError::Msix(
                        "table and PBA must lie, 8-byte aligned, inside memory BARs",
                    ));
                }
            }
            let off = link(&mut c, CapabilityId::MsiX, msix::LEN.into())?;
            c.caps.msix = Some(off);
            c.msix = Some(m);
            let at = |r: u16| off + usize::from(r);
            c.set16(at(msix::CONTROL), m.vectors - 1);
            c.set_mask16(
                at(msix::CONTROL),
                msix::control::ENABLE | msix::control::FUNCTION_MASK,
            );
            c.set32(at(msix::TABLE), m.table_offset | m.table_bar as u32);
            c.set32(at(msix::PBA), m.pba_offset | m.pba_bar as u32);
        }
        for body in &self.vendor_caps {
            let len = 2 + body.len();
            let off = link(&mut c, CapabilityId::VendorSpecific, len)?;
            c.bytes[off + 2..off + len].copy_from_slice(body);
            if !body.is_empty() {
                c.bytes[off + 2] = len as u8;
            }
        }
        c.initial.copy_from_slice(&c.bytes[..]);
        Ok(c)
    }
}

impl ConfigSpace {
    fn place_bars(&mut self, bars: &[Option<Bar>; 6]) -> Result<(), ConfigError> {
        let mut i = 0;
        while i < 6 {
            let Some(b) = bars[i] else {
                i += 1;
                continue;
            };
            let min = if b.kind == BarKind::Io { 4 } else { 16 };
            if !b.size.is_power_of_two() || b.size < min {
                return Err(ConfigError::Bar {
                    index: i,
                    why: "size must be a power of two (at least 16 bytes, 4 for I/O)",
                });
            }
            let off = reg::BAR0 + 4 * i;
            let low_mask = !(b.size - 1) as u32;
            match b.kind {
                BarKind::Memory32 | BarKind::Io => {
                    if b.size > 1 << 31 || (b.kind == BarKind::Io && b.size > 256) {
                        return Err(ConfigError::Bar {
                            index: i,
                            why: "too large for a 32-bit BAR (I/O: at most 256 bytes)",
                        });
                    }
                    self.set32(off, b.flags());
                    self.set_mask32(off, low_mask & !b.kind.flags_mask());
                    self.bars[i] = Some(b);
                    i += 1;
                }
                BarKind::Memory64 => {
                    if i == 5 || bars[i + 1].is_some() {
                        return Err(ConfigError::Bar {
                            index: i,
                            why: "a 64-bit BAR takes this slot and the next, which must be free",
                        });
                    }
                    self.set32(off, b.flags());
                    self.set_mask32(off, low_mask & !b.kind.flags_mask());
                    self.set_mask32(off + 4, (!(b.size - 1) >> 32) as u32);
                    self.bars[i] = Some(b);
                    i += 2;
                }
            }
        }
        Ok(())
    }

    fn init_pcie(&mut self, off: usize, mps: u8) {
        use pcie::{devcap, devctl};
        let at = |r: u16| off + usize::from(r);
        // PCI Express Capabilities: version 2, device/port type 0 (endpoint).
        self.set16(at(pcie::CAPABILITIES), 0x0002);
        // Device Capabilities: MPS supported, 8-bit tags (the function's DMA engine
        // uses 256 tags when allowed), role-based error reporting, FLR capable.
        self.set32(
            at(pcie::DEVICE_CAPABILITIES),
            mps as u32 | devcap::EXTENDED_TAG | devcap::ROLE_BASED_ERRORS | devcap::FLR,
        );
        // Device Control: error reporting enables, relaxed ordering, MPS, Extended Tag
        // Field Enable, no snoop, MRRS; defaults RO + NS enabled, MPS 128, MRRS 512,
        // extended tags off (later revisions of the specification leave that default
        // to the implementation, early ones required 0; 0 is right under all of them,
        // and the host sets it on enumeration, as Linux does). Phantom functions and
        // aux power are not implemented (read-only 0). Bit 15 starts an FLR.
        self.set16(
            at(pcie::DEVICE_CONTROL),
            devctl::RELAXED_ORDERING | devctl::NO_SNOOP | 2 << devctl::MAX_READ_REQUEST_SHIFT,
        );
        self.set_mask16(
            at(pcie::DEVICE_CONTROL),
            0x00ff
                | devctl::EXTENDED_TAG
                | devctl::NO_SNOOP
                | devctl::MAX_READ_REQUEST
                | devctl::INITIATE_FLR
                | devctl::MAX_PAYLOAD,
        );
        // Device Status: error bits write-1-to-clear.
        self.set_w1c16(at(pcie::DEVICE_STATUS), 0x000f);
        // Link Capabilities: 2.5 GT/s, x1. Link Status: the same, negotiated.
        self.set32(at(pcie::LINK_CAPABILITIES), 0x0000_0011);
        self.set16(at(pcie::LINK_STATUS), 0x0011);
        // Link Control: ASPM control, RCB, common clock.
        self.set_mask16(at(pcie::LINK_CONTROL), 0x0043);
        // Device Capabilities 2: completion timeout ranges A-D supported. Device
        // Control 2: completion timeout value and disable.
        self.set32(at(pcie::DEVICE_CAPABILITIES_2), 0x0000_001f);
        self.set_mask16(at(pcie::DEVICE_CONTROL_2), 0x001f);
        // Link Capabilities 2: 2.5 GT/s supported.
        self.set32(at(pcie::LINK_CAPABILITIES_2), 0x0000_0002);
        self.set16(at(pcie::LINK_CONTROL_2), 0x0001);
        self.set_mask16(at(pcie::LINK_CONTROL_2), 0x000f);
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_mask16(&mut self, off: usize, m: u16) {
        self.writable[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn set_mask32(&mut self, off: usize, m: u32) {
        self.writable[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }

    fn set_w1c16(&mut self, off: usize, m: u16) {
        self.w1c[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }

    pub fn read8(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }

    pub fn read16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.read8(off), self.read8(off + 1)])
    }

    pub fn read32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.read8(off),
            self.read8(off + 1),
            self.read8(off + 2),
            self.read8(off + 3),
        ])
    }

    /// Reads the dword at `dword * 4`, as a CfgRd of that register does.
    pub fn read_dword(&self, dword: usize) -> u32 {
        self.read32(dword * 4)
    }

    /// Writes the bytes of the dword at `dword * 4` whose bit is set in `byte_enables`
    /// (bit 0 = lowest address), as a CfgWr does. Read-only bits keep their value,
    /// write-1-to-clear bits clear where a 1 is written.
    pub fn write_dword(&mut self, dword: usize, value: u32, byte_enables: u8) -> ConfigEffects {
        let base = dword * 4;
        if base + 4 > CONFIG_SIZE {
            return ConfigEffects::default();
        }
        let before = self.read32(base);
        let data = value.to_le_bytes();
        for (k, &d) in data.iter().enumerate() {
            if byte_enables & (1 << k) == 0 {
                continue;
            }
            let i = base + k;
            let (w, c) = (self.writable[i], self.w1c[i]);
            self.bytes[i] = (self.bytes[i] & !w | d & w) & !(d & c);
        }
        self.effects(base, before, byte_enables)
    }

    /// Writes `data` at byte offset `off` (1, 2 or 4 bytes within one dword).
    pub fn write(&mut self, off: usize, data: &[u8]) -> ConfigEffects {
        let shift = off % 4;
        if data.is_empty() || shift + data.len() > 4 {
            return ConfigEffects::default();
        }
        let mut word = [0u8; 4];
        word[shift..shift + data.len()].copy_from_slice(data);
        let be = (((1u16 << data.len()) - 1) << shift) as u8;
        self.write_dword(off / 4, u32::from_le_bytes(word), be)
    }

    fn effects(&mut self, base: usize, before: u32, be: u8) -> ConfigEffects {
        let mut e = ConfigEffects::default();
        let touches = |start: usize, len: usize| {
            (0..4).any(|k| be & (1 << k) != 0 && (start..start + len).contains(&(base + k)))
        };
        e.command_changed = touches(reg::COMMAND, 2) && before as u16 != self.read16(reg::COMMAND);
        e.bar_written = touches(reg::BAR0, 4 * pci::regs::BAR_COUNT);
        if let Some(cap) = self.caps.msi {
            let len = msi::len(self.read16(cap + usize::from(msi::CONTROL)));
            e.interrupts_changed |= touches(cap, len.into());
        }
        if let Some(cap) = self.caps.msix {
            e.interrupts_changed |= touches(cap, msix::LEN.into());
        }
        if let Some(p) = self.caps.pcie {
            // Initiate FLR reads as 0: act on it and clear it.
            let ctl = p + usize::from(pcie::DEVICE_CONTROL);
            if touches(ctl, 2) && self.read16(ctl) & pcie::devctl::INITIATE_FLR != 0 {
                e.function_level_reset = true;
                let v = self.read16(ctl) & !pcie::devctl::INITIATE_FLR;
                self.set16(ctl, v);
            }
        }
        e
    }

    /// Back to the state after power-on: every register as built.
    pub fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.initial[..]);
    }

    pub fn command(&self) -> u16 {
        self.read16(reg::COMMAND)
    }

    pub fn memory_enabled(&self) -> bool {
        self.command() & command::MEMORY != 0
    }

    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// Sets or clears the Interrupt Status bit (the INTx the function is asserting).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let s = self.read16(reg::STATUS) & !status::INTERRUPT;
        self.set16(
            reg::STATUS,
            s | if asserted { status::INTERRUPT } else { 0 },
        );
    }

    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address software assigned to BAR `index` (the size bits masked off).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let b = self.bar(index)?;
        let off = reg::BAR0 + 4 * index;
        let low = self.read32(off) as u64;
        let flags = u64::from(b.kind.flags_mask());
        let high = if b.kind == BarKind::Memory64 {
            (self.read32(off + 4) as u64) << 32
        } else {
            0
        };
        Some((high | low) & !flags & !(b.size - 1))
    }

    /// The BAR and offset a memory address falls in, when memory decoding is on.
    pub fn decode_memory(&self, addr: u64) -> Option<(usize, u64)> {
        if !self.memory_enabled() {
            return None;
        }
        (0..6).find_map(|i| {
            let b = self.bar(i)?;
            if b.kind == BarKind::Io {
                return None;
            }
            let base = self.bar_address(i)?;
            // An unassigned BAR (0) decodes nothing.
            (base != 0 && addr >= base && addr - base < b.size).then(|| (i, addr - base))
        })
    }

    pub fn caps(&self) -> CapOffsets {
        self.caps
    }

    pub fn msix_layout(&self) -> Option<MsixLayout> {
        self.msix
    }

    /// MSI as software set it up: (address, data, vectors enabled), when enabled.
    pub fn msi(&self) -> Option<(u64, u16, u8)> {
        let off = self.caps.msi?;
        let at = |r: u16| off + usize::from(r);
        let ctl = self.read16(at(msi::CONTROL));
        if ctl & msi::control::ENABLE == 0 {
            return None;
        }
        let addr = self.read32(at(msi::ADDRESS_LO)) as u64
            | (self.read32(at(msi::ADDRESS_HI)) as u64) << 32;
        let mme = (ctl & msi::control::MULTIPLE_ENABLE) >> msi::control::MULTIPLE_ENABLE_SHIFT;
        let enabled = (1u8 << mme).min(self.msi_vectors);
        Some((addr, self.read16(at(msi::DATA_64)), enabled))
    }

    /// Whether MSI vector `v` is masked (per-vector masking).
    pub fn msi_masked(&self, v: u8) -> bool {
        let Some(off) = self.caps.msi else {
            return false;
        };
        self.read16(off + usize::from(msi::CONTROL)) & msi::control::PER_VECTOR_MASK != 0
            && v < 32
            && self.read32(off + usize::from(msi::MASK_64)) & 1 << v != 0
    }

    /// MSI-X enable and function mask bits.
    pub fn msix_control(&self) -> Option<(bool, bool)> {
        let ctl = self.read16(self.caps.msix? + usize::from(msix::CONTROL));
        Some((
            ctl & msix::control::ENABLE != 0,
            ctl & msix::control::FUNCTION_MASK != 0,
        ))
    }

    /// The tags the function may use as a requester (PCIe Base Specification
    /// §2.2.6.2): 8-bit when software set Extended Tag Field Enable, else 5-bit (a
    /// function without the PCI Express capability has no such bit).
    pub fn tag_width(&self) -> TagWidth {
        let enabled = self.caps.pcie.is_some_and(|p| {
            self.read16(p + usize::from(pcie::DEVICE_CONTROL)) & pcie::devctl::EXTENDED_TAG != 0
        });
        if enabled {
            TagWidth::Eight
        } else {
            TagWidth::Five
        }
    }

    /// The Max Payload Size and Max Read Request Size software set, in bytes.
    pub fn max_payload_and_read(&self) -> (usize, usize) {
        match self.caps.pcie {
            Some(p) => {
                use pcie::devctl;
                let ctl = self.read16(p + usize::from(pcie::DEVICE_CONTROL));
                let mps = (ctl & devctl::MAX_PAYLOAD) >> devctl::MAX_PAYLOAD_SHIFT;
                let mrrs = (ctl & devctl::MAX_READ_REQUEST) >> devctl::MAX_READ_REQUEST_SHIFT;
                (128 << mps, 128 << mrrs)
            }
            None => (128, 512),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfigSpace {
        ConfigSpace::builder(0x1af4, 0x10f0)
            .class(0x05, 0x80, 0x00)
            .revision(1)
            .interrupt_pin(1)
            .bar(0, Bar::mem32(4096))
            .bar(2, Bar::mem64(1 << 33).prefetchable())
            .bar(4, Bar::io(32))
            .pcie(256)
            .power_management()
            .msi(4, true)
            .msix(MsixLayout {
                vectors: 8,
                table_bar: 0,
                table_offset: 0x800,
                pba_bar: 0,
                pba_offset: 0xc00,
            })
            .build()
            .unwrap()
    }

    fn probe(c: &mut ConfigSpace, dword: usize) -> u32 {
        c.write_dword(dword, u32::MAX, 0xf);
        c.read_dword(dword)
    }

    #[test]
    fn identity_and_header() {
        let c = sample();
        assert_eq!(c.read_dword(0), 0x10f0_1af4);
        assert_eq!(c.read_dword(2), 0x0580_0001);
        assert_eq!(c.read8(reg::HEADER_TYPE), 0);
        assert_eq!(c.read8(reg::INTERRUPT_PIN), 1);
        assert_eq!(c.read16(reg::STATUS) & status::CAP_LIST, status::CAP_LIST);
        // Identity registers are read-only.
        let mut c = c;
        c.write_dword(0, 0, 0xf);
        assert_eq!(c.read_dword(0), 0x10f0_1af4);
    }

    #[test]
    fn bars_size_themselves_like_hardware() {
        let mut c = sample();
        // 4 KiB 32-bit memory BAR: all-ones reads back the size mask, type bits kept.
        assert_eq!(probe(&mut c, 4), 0xffff_f000);
        // 8 GiB 64-bit prefetchable: low dword has only type bits writable-zero below
        // 4 GiB, high dword masks the size above it.
        assert_eq!(probe(&mut c, 6), 0x0000_000c);
        assert_eq!(probe(&mut c, 7), 0xffff_fffe);
        // 32-byte I/O BAR.
        assert_eq!(probe(&mut c, 8), 0xffff_ffe1);
        // Unimplemented BARs read 0 whatever is written.
        assert_eq!(probe(&mut c, 5), 0);
        assert_eq!(probe(&mut c, 9), 0);
        // Assign and decode.
        c.write_dword(4, 0xfe00_0000, 0xf);
        c.write_dword(6, 0, 0xf);
        c.write_dword(7, 0x4, 0xf);
        assert_eq!(c.bar_address(0), Some(0xfe00_0000));
        assert_eq!(c.bar_address(2), Some(0x4_0000_0000));
        assert_eq!(c.decode_memory(0xfe00_0010), None, "memory decoding is off");
        c.write(reg::COMMAND, &command::MEMORY.to_le_bytes());
        assert_eq!(c.decode_memory(0xfe00_0010), Some((0, 0x10)));
        assert_eq!(c.decode_memory(0x4_0000_0008), Some((2, 8)));
        assert_eq!(c.decode_memory(0xfe00_1000), None);
    }

    #[test]
    fn bad_bars_are_refused() {
        let err = |b: ConfigBuilder| b.build().unwrap_err();
        let base = || ConfigSpace::builder(1, 2);
        assert!(matches!(
            err(base().bar(0, Bar::mem32(3000))),
            ConfigError::Bar { index: 0, .. }
        ));
        assert!(matches!(
            err(base().bar(5, Bar::mem64(4096))),
            ConfigError::Bar { index: 5, .. }
        ));
        assert!(matches!(
            err(base().bar(0, Bar::mem64(4096)).bar(1, Bar::mem32(16))),
            ConfigError::Bar { index: 0, .. }
        ));
        assert!(matches!(
            err(base().bar(0, Bar::mem32(4096)).msix(MsixLayout {
                vectors: 512,
                table_bar: 0,
                table_offset: 0,
                pba_bar: 0,
                pba_offset: 0
            })),
            ConfigError::Msix(_)
        ));
    }

    #[test]
    fn command_status_and_w1c() {
        let mut c = sample();
        let e = c.write(reg::COMMAND, &0xffffu16.to_le_bytes());
        assert!(e.command_changed);
        assert_eq!(
            c.command(),
            command::IO
                | command::MEMORY
                | command::BUS_MASTER
                | command::PARITY
                | command::SERR
                | command::INTX_DISABLE
        );
        // An error bit set by the device clears when software writes 1 to it, and the
        // read-only bits stay.
        let s = c.read16(reg::STATUS);
        c.set16(reg::STATUS, s | 1 << 13);
        c.write(reg::STATUS, &(1u16 << 13).to_le_bytes());
        assert_eq!(c.read16(reg::STATUS), s);
        c.set_interrupt_status(true);
        assert_ne!(c.read16(reg::STATUS) & status::INTERRUPT, 0);
        // Writing status with 0s changes nothing.
        c.write(reg::STATUS, &0u16.to_le_bytes());
        assert_ne!(c.read16(reg::STATUS) & status::INTERRUPT, 0);
    }

    #[test]
    fn capability_list_walks_to_the_end() {
        let c = sample();
        let mut walk = pci::Capabilities::new(|off| Ok::<_, ()>(c.read32(off.into())));
        let seen: Vec<_> = walk.by_ref().map(|cap| cap.unwrap().kind()).collect();
        assert_eq!(walk.end(), Some(pci::WalkEnd::Complete));
        use CapabilityId::*;
        assert_eq!(
            seen,
            [PciExpress, PowerManagement, Msi, MsiX].map(Some),
            "in build order"
        );
        let caps = c.caps();
        let offsets: Vec<_> = pci::list(|off| c.read32(off.into()))
            .map(|cap| Some(usize::from(cap.offset)))
            .collect();
        assert_eq!(offsets, [caps.pcie, caps.pm, caps.msi, caps.msix]);
    }

    #[test]
    fn msi_and_msix_setup_read_back() {
        let mut c = sample();
        let msi = c.caps().msi.unwrap();
        assert_eq!(c.msi(), None);
        c.write_dword(msi / 4 + 1, 0xfee0_0000, 0xf);
        c.write_dword(msi / 4 + 2, 0, 0xf);
        c.write(msi + 0x0c, &0x4041u16.to_le_bytes());
        // Enable with 4 vectors (MME = 2).
        let e = c.write(msi + 2, &(1u16 | 2 << 4).to_le_bytes());
        assert!(e.interrupts_changed);
        assert_eq!(c.msi(), Some((0xfee0_0000, 0x4041, 4)));
        // Message Control's read-only fields survived: 4 vectors offered, 64-bit, masking.
        assert_eq!(c.read16(msi + 2) & 0x018e, 2 << 1 | 1 << 7 | 1 << 8);
        c.write(msi + 0x10, &0xffu32.to_le_bytes());
        assert!(c.msi_masked(3) && !c.msi_masked(4));
        let x = c.caps().msix.unwrap();
        assert_eq!(c.read16(x + 2) & 0x7ff, 7);
        assert_eq!(c.read32(x + 4), 0x800);
        c.write(x + 2, &0xffffu16.to_le_bytes());
        assert_eq!(c.msix_control(), Some((true, true)));
        assert_eq!(c.read16(x + 2) & 0x7ff, 7, "table size is read-only");
    }

    #[test]
    fn only_writes_inside_the_msi_capability_change_interrupts() {
        // 64-bit MSI without masking spans 16 bytes; a vendor capability follows it.
        let mut c = ConfigSpace::builder(1, 2)
            .msi(1, false)
            .vendor_capability(&[0, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
            .build()
            .unwrap();
        let msi = c.caps().msi.unwrap();
        let vendor = pci::list(|off| c.read32(off.into()))
            .find(|cap| cap.is(CapabilityId::VendorSpecific))
            .unwrap()
            .offset as usize;
        assert_eq!(vendor, msi + 0x10);
        assert!(
            c.write(msi + 0x0c, &[0x41]).interrupts_changed,
            "Message Data"
        );
        assert!(
            !c.write(vendor + 4, &[0xff]).interrupts_changed,
            "a write to the vendor capability is not an MSI change"
        );
    }

    #[test]
    fn pcie_sizes_and_function_level_reset() {
        let mut c = sample();
        let p = c.caps().pcie.unwrap();
        assert_eq!(c.read32(p + 4) & 7, 1, "256 B max payload supported");
        assert_eq!(c.max_payload_and_read(), (128, 512));
        // MPS 256, MRRS 1024.
        let ctl = c.read16(p + 8) & !(7 << 5) & !(7 << 12) | 1 << 5 | 3 << 12;
        c.write(p + 8, &ctl.to_le_bytes());
        assert_eq!(c.max_payload_and_read(), (256, 1024));
        c.write(reg::COMMAND, &command::MEMORY.to_le_bytes());
        c.write_dword(4, 0xfe00_0000, 0xf);
        let e = c.write(p + 8, &(ctl | 1 << 15).to_le_bytes());
        assert!(e.function_level_reset);
        assert_eq!(c.read16(p + 8) & 1 << 15, 0, "Initiate FLR reads as 0");
        c.reset();
        assert_eq!(c.command(), 0);
        assert_eq!(c.bar_address(0), Some(0));
        assert_eq!(c.max_payload_and_read(), (128, 512));
    }

    /// The PCI Express capability advertises Extended Tag Field Supported and lets
    /// software set Extended Tag Field Enable; it starts clear (a value every revision
    /// of the specification allows) and a function-level reset clears it again. The
    /// function's tag width follows it; without the capability it is 5 bits.
    #[test]
    fn extended_tags_are_advertised_and_enabled_by_software() {
        use pci::pcie::{devcap, devctl};
        let mut c = sample();
        let p = c.caps().pcie.unwrap();
        let ctl = p + usize::from(pcie::DEVICE_CONTROL);
        let cap = c.read32(p + usize::from(pcie::DEVICE_CAPABILITIES));
        assert_ne!(cap & devcap::EXTENDED_TAG, 0, "supported");
        assert_eq!(c.read16(ctl) & devctl::EXTENDED_TAG, 0, "clear after reset");
        assert_eq!(c.tag_width(), tlp::TagWidth::Five);
        let v = c.read16(ctl) | devctl::EXTENDED_TAG;
        c.write(ctl, &v.to_le_bytes());
        assert_eq!(c.read16(ctl) & devctl::EXTENDED_TAG, devctl::EXTENDED_TAG);
        assert_eq!(c.tag_width(), tlp::TagWidth::Eight);
        c.write(ctl, &(v | devctl::INITIATE_FLR).to_le_bytes());
        c.reset();
        assert_eq!(c.tag_width(), tlp::TagWidth::Five);
        let plain = ConfigSpace::builder(1, 2).build().unwrap();
        assert_eq!(plain.tag_width(), tlp::TagWidth::Five);
    }

    #[test]
    fn partial_and_out_of_range_writes() {
        let mut c = sample();
        // A byte write into the middle of a dword touches only that byte.
        c.write(reg::INTERRUPT_LINE, &[0x0b]);
        assert_eq!(c.read8(reg::INTERRUPT_LINE), 0x0b);
        assert_eq!(c.read8(reg::INTERRUPT_PIN), 1);
        // Writes that straddle a dword or fall outside the space do nothing.
        assert_eq!(c.write(3, &[1, 2]), ConfigEffects::default());
        assert_eq!(c.write_dword(1024, 0, 0xf), ConfigEffects::default());
        assert_eq!(c.read32(4094), 0);
    }

    proptest::proptest! {
        /// Whatever a host writes, in whatever order and with whatever byte enables,
        /// the identity, the header type, the capability chain and the BAR type bits
        /// stay, and a BAR probe still reads back its size mask.
        #[test]
        fn no_write_sequence_breaks_the_read_only_structure(
            writes in proptest::collection::vec((0usize..1024, proptest::num::u32::ANY, 0u8..16), 0..200)
        ) {
            let mut c = sample();
            let pristine = sample();
            let chain = |c: &ConfigSpace| {
                pci::list(|off| c.read32(off.into()))
                    .map(|cap| (cap.offset, cap.id))
                    .collect::<Vec<_>>()
            };
            for (dw, v, be) in writes {
                // A reset request is allowed; it must leave the same structure too.
                if c.write_dword(dw, v, be).function_level_reset {
                    c.reset();
                }
            }
            proptest::prop_assert_eq!(c.read_dword(0), pristine.read_dword(0));
            proptest::prop_assert_eq!(c.read_dword(2), pristine.read_dword(2));
            proptest::prop_assert_eq!(c.read8(reg::HEADER_TYPE), 0);
            proptest::prop_assert_eq!(chain(&c), chain(&pristine));
            for (dw, flags) in [(4, 0x0), (6, 0xc), (8, 0x1)] {
                let mask = if dw == 8 { 3 } else { 15 };
                proptest::prop_assert_eq!(c.read_dword(dw) & mask, flags);
            }
            proptest::prop_assert_eq!(probe(&mut c, 4), 0xffff_f000);
            proptest::prop_assert_eq!(probe(&mut c, 7), 0xffff_fffe);
        }
    }
}
