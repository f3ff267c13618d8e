//! The virtual PCIe switch of a host: a root port, a switch's upstream port, and one
//! downstream port (a hot-plug slot) per device the host may hold, numbered as
//! firmware numbers a real switch and served as config images a real switch presents.
//!
//! The host bridge is its own firmware. It numbers the buses once, depth-first as
//! Linux does, and every port exists from the start, an empty slot until a device
//! arrives, so no number ever moves:
//!
//! | function | BDF | primary | secondary | subordinate |
//! |---|---|---|---|---|
//! | root port | 00:00.0 | 0 | 1 | 2+N |
//! | upstream port | 01:00.0 | 1 | 2 | 2+N |
//! | downstream port k | 02:(k>>3).(k&7) | 2 | 3+k | 3+k |
//!
//! Bus 2 is the switch's internal bus. Its ports are multi-function devices without
//! ARI (32 devices × 8 functions), so it holds up to 256 ports, more than the bus
//! numbers allow. The device behind port k is (3+k):00.0.
//!
//! Each port has fixed memory windows, reserved as hot-plug firmware reserves them
//! for an empty slot (see [`Layout`]): a 32-bit non-prefetchable window and a 64-bit
//! prefetchable one, the same for the port's every occupant, so a freed port's
//! windows serve the next device placed on it. The root port's and the upstream
//! port's windows span those of all downstream ports.
//!
//! Routing is a switch's: ID-routed TLPs by bus number ([`VirtualSwitch::route_id`]),
//! address-routed ones by window ([`VirtualSwitch::route_address`]). Both find only
//! ports that are allocated.
//!
//! The config images ([`VirtualSwitch::config_read`], [`VirtualSwitch::config_write`])
//! are type-1 headers with a PCI Express capability (root port, upstream port,
//! downstream port with a slot: Hot-Plug Capable and Surprise, Presence Detect,
//! Data Link Layer Link Active). Registers software may write are stored with their
//! hardware behaviour (write masks, write-1-to-clear events). Bus numbers and windows
//! read as assigned and ignore writes, since the switch routes by them (such writes
//! are counted in [`SwitchStats::fixed_writes`]); a real switch's firmware would
//! lock them the same way with Enhanced Allocation. Link Disable and Secondary Bus
//! Reset are stored but move nothing: whether a device is behind a port is the host
//! bridge's to say ([`VirtualSwitch::set_present`]).
//!
//! This is pure state: no I/O, no clock.

use std::fmt;

use pci::pcie::{self, PortType};
use pci::{bridge, regs};
use tlp::Bdf;

/// The bus of the root port.
pub const ROOT_BUS: u8 = 0;
/// The root port's secondary bus, where the upstream port sits.
pub const UPSTREAM_BUS: u8 = 1;
/// The upstream port's secondary bus: the switch's internal bus, where the downstream
/// ports sit.
pub const INTERNAL_BUS: u8 = 2;
/// The secondary bus of downstream port 0; port k's is `FIRST_PORT_BUS + k`.
pub const FIRST_PORT_BUS: u8 = 3;

/// The most downstream ports (devices) a switch can have: 253.
///
/// Bus numbers are 8 bits, 0 ..= 255, and each port needs a secondary bus of its own
/// for the device behind it. Buses 0, 1 and 2 are taken by the root port, the
/// upstream port and the internal bus, which leaves 3 ..= 255: 253 buses. The 256
/// devices a bus could name need a second PCI segment (domain) with its own bus
/// numbers, a second switch under a second root port of another segment; one segment
/// is what this switch does.
pub const MAX_PORTS: usize = (u8::MAX - FIRST_PORT_BUS) as usize + 1;

/// The downstream ports of a switch unless configured otherwise.
pub const DEFAULT_PORTS: usize = 32;

/// The root port's routing ID, the requester ID of every TLP the host sends.
pub const ROOT_PORT: Bdf = match Bdf::new(ROOT_BUS, 0, 0) {
    Some(b) => b,
    None => unreachable!(),
};

/// The upstream port's routing ID.
pub const UPSTREAM_PORT: Bdf = match Bdf::new(UPSTREAM_BUS, 0, 0) {
    Some(b) => b,
    None => unreachable!(),
};

/// The vendor ID the switch's functions read with (the one the memdev test device
/// reads with), and their device IDs.
pub const VENDOR_ID: u16 = 0x1de5;
pub const ROOT_PORT_DEVICE_ID: u16 = 0x0100;
pub const UPSTREAM_DEVICE_ID: u16 = 0x0101;
pub const DOWNSTREAM_DEVICE_ID: u16 = 0x0102;

/// Where each function's PCI Express capability sits (its only capability).
pub const PCIE_CAP: u16 = regs::HEADER_END;

/// Bytes of a function's config space; the switch's functions have no extended
/// capabilities, so 0x100 .. 0x1000 reads as zero.
const CONFIG_SIZE: u16 = 0x1000;
/// Bytes of the image kept per function: the conventional config space.
const IMAGE: usize = regs::CONVENTIONAL_END as usize;

/// Top of the 32-bit space a window may use: the MSI address window starts here.
const MSI_WINDOW: u64 = 0xfee0_0000;
/// The 4 GiB line the prefetchable windows live above.
const FOUR_GIB: u64 = 1 << 32;

/// A downstream port of a switch: port k, 0 ≤ k < [`MAX_PORTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(u8);

impl PortId {
    /// Port `index`, when a switch can have it (below [`MAX_PORTS`]).
    pub const fn new(index: usize) -> Option<PortId> {
        if index < MAX_PORTS {
            Some(PortId(index as u8))
        } else {
            None
        }
    }

    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The port's secondary (and subordinate) bus: the bus of the device behind it.
    pub const fn bus(self) -> u8 {
        // At most 3 + 252 = 255: `new` keeps the index below MAX_PORTS.
        FIRST_PORT_BUS + self.0
    }

    /// The port whose secondary bus is `bus`.
    pub const fn of_bus(bus: u8) -> Option<PortId> {
        match bus.checked_sub(FIRST_PORT_BUS) {
            Some(k) => Some(PortId(k)),
            None => None,
        }
    }

    /// The downstream port's own routing ID on the internal bus: 02:(k>>3).(k&7).
    pub const fn bridge(self) -> Bdf {
        Bdf::from_u16((INTERNAL_BUS as u16) << 8 | self.0 as u16)
    }

    /// The port a routing ID on the internal bus names.
    pub const fn of_bridge(bdf: Bdf) -> Option<PortId> {
        if bdf.bus() != INTERNAL_BUS {
            return None;
        }
        PortId::new((bdf.to_u16() & 0xff) as usize)
    }

    /// The routing ID of the device behind the port: (3+k):00.0.
    pub const fn device(self) -> Bdf {
        Bdf::from_u16((self.bus() as u16) << 8)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// One memory window: `size` bytes from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

impl Window {
    /// The last address in the window (the switch's windows are never empty; an
    /// empty one says its base, and a window past the end of the address space its
    /// end).
    pub fn last(&self) -> u64 {
        self.base.saturating_add(self.size.saturating_sub(1))
    }

    /// Whether `len` bytes from `addr` (at least the byte at `addr`) lie inside.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len.max(1) - 1) {
            Some(end) => self.size != 0 && addr >= self.base && end <= self.last(),
            None => false,
        }
    }
}

/// Which of a port's windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// 32-bit, non-prefetchable (Memory Base/Limit).
    Mem32,
    /// 64-bit, prefetchable (Prefetchable Memory Base/Limit and their upper dwords).
    Pref64,
}

/// Where the port windows lie: port k's windows are `base + k * per_port`, each
/// `per_port` bytes, naturally aligned.
///
/// The default reserves per port 1 MiB of 32-bit space from 0xC000_0000 (253 ports
/// end at 0xCFD0_0000, clear of the MSI window) and 1 GiB of 64-bit prefetchable
/// space from 1 TiB (the largest memdev BAR fits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub mem32_base: u64,
    pub mem32_per_port: u64,
    pub pref64_base: u64,
    pub pref64_per_port: u64,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            mem32_base: 0xc000_0000,
            mem32_per_port: 1 << 20,
            pref64_base: 1 << 40,
            pref64_per_port: 1 << 30,
        }
    }
}

impl Layout {
    /// The whole span of `ports` windows of one kind from `base`, each `per_port`,
    /// or why it is not a window layout a bridge can decode.
    fn span(base: u64, per_port: u64, ports: usize) -> Result<Window, &'static str> {
        if !per_port.is_power_of_two() || per_port < bridge::window::GRANULARITY {
            return Err("a port's window must be a power of two of at least 1 MiB");
        }
        if !base.is_multiple_of(per_port) {
            return Err("windows must start aligned to their size");
        }
        let size = u64::try_from(ports)
            .ok()
            .and_then(|n| n.checked_mul(per_port))
            .ok_or("the windows overflow the address space")?;
        base.checked_add(size - 1)
            .ok_or("the windows overflow the address space")?;
        Ok(Window { base, size })
    }

    /// The spans of both kinds for `ports` ports: the root and upstream ports' windows.
    fn spans(&self, ports: usize) -> Result<(Window, Window), SwitchError> {
        let mem32 = Layout::span(self.mem32_base, self.mem32_per_port, ports)
            .map_err(SwitchError::Layout)?;
        if mem32.last() >= MSI_WINDOW {
            return Err(SwitchError::Layout(
                "the 32-bit windows must end below the MSI window (0xFEE0_0000)",
            ));
        }
        let pref64 = Layout::span(self.pref64_base, self.pref64_per_port, ports)
            .map_err(SwitchError::Layout)?;
        if pref64.base < FOUR_GIB {
            return Err(SwitchError::Layout(
                "the 64-bit prefetchable windows must lie above 4 GiB",
            ));
        }
        Ok((mem32, pref64))
    }
}

/// Why the switch refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error("a switch has 1 to {MAX_PORTS} downstream ports, not {0}")]
    Capacity(usize),
    #[error("window layout: {0}")]
    Layout(&'static str),
    #[error("all {0} ports are in use")]
    Full(usize),
    #[error("port {0} is not in this switch")]
    NoSuchPort(PortId),
    #[error("port {0} is free")]
    NotAllocated(PortId),
    #[error("port {0} still has a device present")]
    Occupied(PortId),
}

/// What the switch counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SwitchStats {
    /// Ports allocated and freed.
    pub allocs: u64,
    pub frees: u64,
    /// Allocations refused because every port was in use.
    pub full: u64,
    /// Config writes that tried to change a bus number or a window, ignored.
    pub fixed_writes: u64,
}

/// An address-routed access, resolved: the port, the window, and the offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRoute {
    pub port: PortId,
    pub kind: WindowKind,
    pub offset: u64,
}

/// One of the switch's own functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    Root,
    Upstream,
    Downstream(PortId),
}

/// The virtual switch: its ports, which are allocated, and its functions' config
/// images.
pub struct VirtualSwitch {
    ports: usize,
    layout: Layout,
    /// Bit k: port k is allocated.
    live: [u64; 4],
    root: Image,
    upstream: Image,
    downstream: Vec<Image>,
    stats: SwitchStats,
}

impl VirtualSwitch {
    /// A switch of `max_ports` downstream ports (1 ..= [`MAX_PORTS`]) with the
    /// default [`Layout`].
    pub fn new(max_ports: usize) -> Result<VirtualSwitch, SwitchError> {
        VirtualSwitch::with_layout(max_ports, Layout::default())
    }

    /// A switch of `max_ports` downstream ports with its windows where `layout` says.
    pub fn with_layout(max_ports: usize, layout: Layout) -> Result<VirtualSwitch, SwitchError> {
        if max_ports == 0 || max_ports > MAX_PORTS {
            return Err(SwitchError::Capacity(max_ports));
        }
        let (mem32, pref64) = layout.spans(max_ports)?;
        let last_bus = last_bus(max_ports);
        let root = Image::bridge(
            Function::Root,
            [ROOT_BUS, UPSTREAM_BUS, last_bus],
            false,
            mem32,
            pref64,
        );
        let upstream = Image::bridge(
            Function::Upstream,
            [UPSTREAM_BUS, INTERNAL_BUS, last_bus],
            false,
            mem32,
            pref64,
        );
        let downstream = (0..max_ports)
            .map(|k| {
                let port = PortId(k as u8);
                // Function 0 of a device on the internal bus is multi-function when
                // the next port exists (it is function 1 of the same device).
                let multi = k % 8 == 0 && k + 1 < max_ports;
                Image::bridge(
                    Function::Downstream(port),
                    [INTERNAL_BUS, port.bus(), port.bus()],
                    multi,
                    port_window(layout.mem32_base, layout.mem32_per_port, port),
                    port_window(layout.pref64_base, layout.pref64_per_port, port),
                )
            })
            .collect();
        Ok(VirtualSwitch {
            ports: max_ports,
            layout,
            live: [0; 4],
            root,
            upstream,
            downstream,
            stats: SwitchStats::default(),
        })
    }

    /// How many downstream ports the switch has.
    pub fn capacity(&self) -> usize {
        self.ports
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn stats(&self) -> SwitchStats {
        self.stats
    }

    /// The switch's last bus number (the root and upstream ports' subordinate).
    pub fn last_bus(&self) -> u8 {
        last_bus(self.ports)
    }

    /// Allocates the lowest free port.
    pub fn alloc_port(&mut self) -> Result<PortId, SwitchError> {
        let Some(k) = (0..self.ports).find(|&k| !self.live_bit(k)) else {
            self.stats.full += 1;
            return Err(SwitchError::Full(self.ports));
        };
        self.live[k / 64] |= 1 << (k % 64);
        self.stats.allocs += 1;
        Ok(PortId(k as u8))
    }

    /// Frees an allocated port. Its device must have left first
    /// ([`set_present`](Self::set_present) with `false`), so software has seen it
    /// go. The port keeps its bus and windows for its next occupant.
    pub fn free_port(&mut self, port: PortId) -> Result<(), SwitchError> {
        self.check_live(port)?;
        if self.present(port) {
            return Err(SwitchError::Occupied(port));
        }
        let k = port.index();
        self.live[k / 64] &= !(1 << (k % 64));
        self.stats.frees += 1;
        Ok(())
    }

    /// Whether `port` is allocated.
    pub fn is_live(&self, port: PortId) -> bool {
        port.index() < self.ports && self.live_bit(port.index())
    }

    /// The allocated ports, in order.
    pub fn live_ports(&self) -> impl Iterator<Item = PortId> + '_ {
        (0..self.ports)
            .filter(|&k| self.live_bit(k))
            .map(|k| PortId(k as u8))
    }

    /// The port's window of `kind`, allocated or not; `None` for a port the switch
    /// does not have.
    pub fn window(&self, port: PortId, kind: WindowKind) -> Option<Window> {
        if port.index() >= self.ports {
            return None;
        }
        Some(match kind {
            WindowKind::Mem32 => {
                port_window(self.layout.mem32_base, self.layout.mem32_per_port, port)
            }
            WindowKind::Pref64 => {
                port_window(self.layout.pref64_base, self.layout.pref64_per_port, port)
            }
        })
    }

    /// ID routing: the allocated port whose secondary bus is `bus`.
    pub fn route_id(&self, bus: u8) -> Option<PortId> {
        PortId::of_bus(bus).filter(|&p| self.is_live(p))
    }

    /// Address routing: the allocated port one of whose windows holds all `len`
    /// bytes from `addr` (a zero-length access is routed by its address alone, as a
    /// zero-length read is). An access that straddles a window's end, or whose end
    /// overflows the address space, is routed nowhere.
    pub fn route_address(&self, addr: u64, len: u64) -> Option<AddressRoute> {
        [
            (
                WindowKind::Mem32,
                self.layout.mem32_base,
                self.layout.mem32_per_port,
            ),
            (
                WindowKind::Pref64,
                self.layout.pref64_base,
                self.layout.pref64_per_port,
            ),
        ]
        .into_iter()
        .find_map(|(kind, base, per_port)| {
            let k = usize::try_from(addr.checked_sub(base)? / per_port).ok()?;
            let port = PortId::new(k).filter(|&p| self.is_live(p))?;
            let w = port_window(base, per_port, port);
            w.contains(addr, len).then(|| AddressRoute {
                port,
                kind,
                offset: addr - w.base,
            })
        })
    }

    /// Whether a device sits behind `port` (its slot's Presence Detect State).
    pub fn present(&self, port: PortId) -> bool {
        self.downstream.get(port.index()).is_some_and(|img| {
            img.read16(PCIE_CAP + pcie::SLOT_STATUS) & pcie::sltsta::PRESENCE_DETECT_STATE != 0
        })
    }

    /// A device arrives behind an allocated port (`true`) or leaves it (`false`), as
    /// the slot's hardware sees it: Presence Detect State and the link's Data Link
    /// Layer Link Active follow, and each that changes sets its event bit in Slot
    /// Status (Presence Detect Changed, Data Link Layer State Changed) until software
    /// clears it. Returns whether anything changed.
    pub fn set_present(&mut self, port: PortId, present: bool) -> Result<bool, SwitchError> {
        self.check_live(port)?;
        let img = &mut self.downstream[port.index()];
        let slot = PCIE_CAP + pcie::SLOT_STATUS;
        let link = PCIE_CAP + pcie::LINK_STATUS;
        let status = img.read16(slot);
        let was = status & pcie::sltsta::PRESENCE_DETECT_STATE != 0;
        let link_was = img.read16(link) & pcie::lnksta::DLL_LINK_ACTIVE != 0;
        let mut events = 0;
        if was != present {
            events |= pcie::sltsta::PRESENCE_DETECT_CHANGED;
        }
        if link_was != present {
            events |= pcie::sltsta::DLL_STATE_CHANGED;
        }
        let state = if present {
            pcie::sltsta::PRESENCE_DETECT_STATE
        } else {
            0
        };
        img.set16(
            slot,
            (status & !pcie::sltsta::PRESENCE_DETECT_STATE) | state | events,
        );
        let lnk = img.read16(link) & !pcie::lnksta::DLL_LINK_ACTIVE;
        img.set16(
            link,
            lnk | if present {
                pcie::lnksta::DLL_LINK_ACTIVE
            } else {
                0
            },
        );
        Ok(events != 0)
    }

    /// Which of the switch's functions `bdf` names.
    fn function(&self, bdf: Bdf) -> Option<Function> {
        if bdf == ROOT_PORT {
            Some(Function::Root)
        } else if bdf == UPSTREAM_PORT {
            Some(Function::Upstream)
        } else {
            PortId::of_bridge(bdf)
                .filter(|p| p.index() < self.ports)
                .map(Function::Downstream)
        }
    }

    fn image(&self, f: Function) -> &Image {
        match f {
            Function::Root => &self.root,
            Function::Upstream => &self.upstream,
            Function::Downstream(p) => &self.downstream[p.index()],
        }
    }

    /// Reads the dword holding byte `reg` of the config space of the switch function
    /// at `bdf`. `None` when `bdf` names none of the switch's functions (the devices
    /// behind the ports are not the switch's) or `reg` is past config space (4 KiB).
    pub fn config_read(&self, bdf: Bdf, reg: u16) -> Option<u32> {
        let f = self.function(bdf)?;
        if reg >= CONFIG_SIZE {
            return None;
        }
        Some(self.image(f).read32(regs::dword(reg)))
    }

    /// Writes the bytes of `value` whose bit is set in `byte_enables` (bit 0 = the
    /// lowest address) to the dword holding byte `reg` of the switch function at
    /// `bdf`, as a CfgWr does: writable bits take the value, write-1-to-clear bits
    /// clear where a 1 is written, the rest keep theirs. Returns `false` when `bdf`
    /// names none of the switch's functions or `reg` is past config space.
    pub fn config_write(&mut self, bdf: Bdf, reg: u16, value: u32, byte_enables: u8) -> bool {
        let Some(f) = self.function(bdf) else {
            return false;
        };
        if reg >= CONFIG_SIZE {
            return false;
        }
        let img = match f {
            Function::Root => &mut self.root,
            Function::Upstream => &mut self.upstream,
            Function::Downstream(p) => &mut self.downstream[p.index()],
        };
        if img.write(regs::dword(reg), value, byte_enables) {
            self.stats.fixed_writes += 1;
        }
        true
    }

    fn live_bit(&self, k: usize) -> bool {
        self.live[k / 64] & (1 << (k % 64)) != 0
    }

    fn check_live(&self, port: PortId) -> Result<(), SwitchError> {
        if port.index() >= self.ports {
            Err(SwitchError::NoSuchPort(port))
        } else if !self.live_bit(port.index()) {
            Err(SwitchError::NotAllocated(port))
        } else {
            Ok(())
        }
    }
}

/// The last bus of a switch of `ports` ports (1 ..= MAX_PORTS): 2 + ports ≤ 255.
fn last_bus(ports: usize) -> u8 {
    (usize::from(INTERNAL_BUS) + ports) as u8
}

/// Port `port`'s window of `per_port` bytes from `base`: in range, since
/// [`Layout::spans`] checked the whole span.
fn port_window(base: u64, per_port: u64, port: PortId) -> Window {
    Window {
        base: base + port.index() as u64 * per_port,
        size: per_port,
    }
}

/// The config image of one of the switch's functions: the conventional config space
/// with per-bit write masks and write-1-to-clear bits, as hardware registers behave.
struct Image {
    bytes: [u8; IMAGE],
    writable: [u8; IMAGE],
    w1c: [u8; IMAGE],
    /// Bytes that hold bus numbers and windows: fixed, and a write that would change
    /// one is counted.
    fixed: [bool; regs::HEADER_END as usize],
}

impl Image {
    /// A bridge's header and PCI Express capability: `buses` are primary, secondary
    /// and subordinate; `mem32` and `pref64` the windows it forwards.
    fn bridge(f: Function, buses: [u8; 3], multi: bool, mem32: Window, pref64: Window) -> Image {
        let mut img = Image {
            bytes: [0; IMAGE],
            writable: [0; IMAGE],
            w1c: [0; IMAGE],
            fixed: [false; regs::HEADER_END as usize],
        };
        let device = match f {
            Function::Root => ROOT_PORT_DEVICE_ID,
            Function::Upstream => UPSTREAM_DEVICE_ID,
            Function::Downstream(_) => DOWNSTREAM_DEVICE_ID,
        };
        img.set16(regs::VENDOR_ID, VENDOR_ID);
        img.set16(regs::DEVICE_ID, device);
        // Firmware leaves a bridge forwarding memory and bus mastering. No I/O
        // window: I/O Enable, I/O Base and Limit read as 0.
        img.set16(
            regs::COMMAND,
            regs::command::MEMORY | regs::command::BUS_MASTER,
        );
        img.mask16(
            regs::COMMAND,
            regs::command::MEMORY
                | regs::command::BUS_MASTER
                | regs::command::PARITY
                | regs::command::SERR
                | regs::command::INTX_DISABLE,
        );
        img.set16(regs::STATUS, regs::status::CAP_LIST);
        img.w1c16(regs::STATUS, regs::status::ERRORS);
        img.set32(regs::REVISION, bridge::CLASS_CODE << 8);
        img.writable[usize::from(regs::CACHE_LINE)] = 0xff;
        let multi = if multi {
            regs::header_type::MULTI_FUNCTION
        } else {
            0
        };
        img.bytes[usize::from(regs::HEADER_TYPE)] = regs::header_type::BRIDGE | multi;
        for (at, bus) in [
            bridge::PRIMARY_BUS,
            bridge::SECONDARY_BUS,
            bridge::SUBORDINATE_BUS,
        ]
        .into_iter()
        .zip(buses)
        {
            img.bytes[usize::from(at)] = bus;
        }
        img.set16(bridge::SECONDARY_STATUS, 0);
        img.w1c16(bridge::SECONDARY_STATUS, regs::status::ERRORS);
        img.set16(bridge::MEMORY_BASE, bridge::window::register(mem32.base, 0));
        img.set16(
            bridge::MEMORY_LIMIT,
            bridge::window::register(mem32.last(), 0),
        );
        let pf = bridge::window::PREF_64;
        img.set16(
            bridge::PREF_MEMORY_BASE,
            bridge::window::register(pref64.base, pf),
        );
        img.set16(
            bridge::PREF_MEMORY_LIMIT,
            bridge::window::register(pref64.last(), pf),
        );
        img.set32(bridge::PREF_BASE_UPPER, (pref64.base >> 32) as u32);
        img.set32(bridge::PREF_LIMIT_UPPER, (pref64.last() >> 32) as u32);
        for at in (bridge::PRIMARY_BUS..=bridge::SUBORDINATE_BUS)
            .chain(bridge::MEMORY_BASE..bridge::IO_BASE_UPPER)
        {
            img.fixed[usize::from(at)] = true;
        }
        img.bytes[usize::from(regs::CAP_PTR)] = PCIE_CAP as u8;
        img.writable[usize::from(regs::INTERRUPT_LINE)] = 0xff;
        img.mask16(
            bridge::BRIDGE_CONTROL,
            bridge::control::PARITY_ERROR_RESPONSE
                | bridge::control::SERR
                | bridge::control::SECONDARY_BUS_RESET,
        );
        img.pcie(f);
        img
    }

    /// The PCI Express capability of a port, the only one in the list.
    fn pcie(&mut self, f: Function) {
        let at = |reg: u16| PCIE_CAP + reg;
        let (kind, slot) = match f {
            Function::Root => (PortType::RootPort, None),
            Function::Upstream => (PortType::SwitchUpstream, None),
            Function::Downstream(p) => (PortType::SwitchDownstream, Some(p)),
        };
        let downstream_facing = kind != PortType::SwitchUpstream;
        self.bytes[usize::from(PCIE_CAP)] = pci::CapabilityId::PciExpress.raw();
        let slot_bit = if slot.is_some() {
            pcie::caps::SLOT_IMPLEMENTED
        } else {
            0
        };
        self.set16(at(pcie::CAPABILITIES), 2 | kind.field() | slot_bit);
        // Device Capabilities: up to 4096-byte payloads (5), so the switch never
        // narrows what a device and the root port agree on; role-based errors.
        self.set32(
            at(pcie::DEVICE_CAPABILITIES),
            5 | pcie::devcap::ROLE_BASED_ERRORS,
        );
        // Device Control: the error reporting enables and Max Payload Size.
        self.mask16(at(pcie::DEVICE_CONTROL), 0x000f | pcie::devctl::MAX_PAYLOAD);
        self.w1c16(at(pcie::DEVICE_STATUS), 0x000f);
        // Link Capabilities: 2.5 GT/s, x1; a downstream-facing port reports Data
        // Link Layer Link Active (which surprise hot-plug needs); the port number.
        let number = slot.map_or(0, |p| p.0);
        let reporting = if downstream_facing {
            pcie::lnkcap::DLL_ACTIVE_REPORTING
        } else {
            0
        };
        self.set32(
            at(pcie::LINK_CAPABILITIES),
            1 | 1 << pcie::lnkcap::MAX_WIDTH_SHIFT
                | reporting
                | u32::from(number) << pcie::lnkcap::PORT_NUMBER_SHIFT,
        );
        let link_disable = if downstream_facing {
            pcie::lnkctl::LINK_DISABLE
        } else {
            0
        };
        self.mask16(
            at(pcie::LINK_CONTROL),
            pcie::lnkctl::ASPM
                | pcie::lnkctl::COMMON_CLOCK
                | pcie::lnkctl::EXTENDED_SYNCH
                | link_disable,
        );
        // Link Status: 2.5 GT/s, x1. The root port's link to the upstream port is
        // always up; a downstream port's is up while a device is present.
        let active = if kind == PortType::RootPort {
            pcie::lnksta::DLL_LINK_ACTIVE
        } else {
            0
        };
        self.set16(
            at(pcie::LINK_STATUS),
            1 | 1 << pcie::lnksta::WIDTH_SHIFT | active,
        );
        if let Some(p) = slot {
            // A surprise hot-plug slot without button, indicators, power controller
            // or MRL; Slot Control writes complete at once. Physical slot k + 1.
            self.set32(
                at(pcie::SLOT_CAPABILITIES),
                pcie::sltcap::HOT_PLUG_SURPRISE
                    | pcie::sltcap::HOT_PLUG_CAPABLE
                    | pcie::sltcap::NO_COMMAND_COMPLETED
                    | (u32::from(p.0) + 1) << pcie::sltcap::PHYSICAL_SLOT_SHIFT,
            );
            self.mask16(
                at(pcie::SLOT_CONTROL),
                pcie::sltctl::ATTENTION_BUTTON_ENABLE
                    | pcie::sltctl::POWER_FAULT_ENABLE
                    | pcie::sltctl::MRL_SENSOR_ENABLE
                    | pcie::sltctl::PRESENCE_DETECT_ENABLE
                    | pcie::sltctl::COMMAND_COMPLETED_ENABLE
                    | pcie::sltctl::HOT_PLUG_INTERRUPT_ENABLE
                    | pcie::sltctl::DLL_STATE_CHANGED_ENABLE,
            );
            self.w1c16(at(pcie::SLOT_STATUS), pcie::sltsta::EVENTS);
        }
        if kind == PortType::RootPort {
            // Root Control: the system error enables and PME interrupt enable;
            // Root Status: PME Status, write-1-to-clear.
            self.mask16(at(pcie::ROOT_CONTROL), 0x000f);
            self.w1c32(at(pcie::ROOT_STATUS), 1 << 16);
        }
    }

    fn read16(&self, off: u16) -> u16 {
        let o = usize::from(off);
        u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]])
    }

    /// The dword at the dword-aligned `off`; past the image (extended config space)
    /// it reads 0.
    fn read32(&self, off: u16) -> u32 {
        let o = usize::from(off);
        match self.bytes.get(o..o + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    fn set16(&mut self, off: u16, v: u16) {
        let o = usize::from(off);
        self.bytes[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, off: u16, v: u32) {
        let o = usize::from(off);
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn mask16(&mut self, off: u16, m: u16) {
        let o = usize::from(off);
        self.writable[o..o + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn w1c16(&mut self, off: u16, m: u16) {
        let o = usize::from(off);
        self.w1c[o..o + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn w1c32(&mut self, off: u16, m: u32) {
        let o = usize::from(off);
        self.w1c[o..o + 4].copy_from_slice(&m.to_le_bytes());
    }

    /// Writes the enabled bytes of `value` to the dword at the dword-aligned `off`.
    /// Past the image (extended config space, all read-only zero) it does nothing.
    /// Returns whether it tried to change a fixed byte (a bus number or a window).
    fn write(&mut self, off: u16, value: u32, byte_enables: u8) -> bool {
        let base = usize::from(off);
        if base + 4 > IMAGE {
            return false;
        }
        let mut fixed = false;
        for (k, d) in value.to_le_bytes().into_iter().enumerate() {
            if byte_enables & (1 << k) == 0 {
                continue;
            }
            let i = base + k;
            fixed |= self.fixed.get(i).copied().unwrap_or(false) && self.bytes[i] != d;
            let (w, c) = (self.writable[i], self.w1c[i]);
            self.bytes[i] = (self.bytes[i] & !w | d & w) & !(d & c);
        }
        fixed
    }
}

/// The hot-plug state machines take their ports from the switch: the lowest free one.
impl crate::hotplug::PortAllocator for VirtualSwitch {
    type Port = PortId;
    fn allocate(&mut self) -> Option<PortId> {
        self.alloc_port().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::bridge::window;
    use pci::pcie::{lnksta, sltcap, sltctl, sltsta};
    use pci::CapabilityId;
    use proptest::prelude::*;

    fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf::new(bus, dev, func).unwrap()
    }

    fn byte(sw: &VirtualSwitch, at: Bdf, reg: u16) -> u8 {
        regs::byte_in(sw.config_read(at, reg).unwrap(), reg)
    }

    fn word(sw: &VirtualSwitch, at: Bdf, reg: u16) -> u16 {
        regs::word_in(sw.config_read(at, reg).unwrap(), reg)
    }

    /// Primary, secondary and subordinate bus, as an enumerator reads them.
    fn buses(sw: &VirtualSwitch, at: Bdf) -> [u8; 3] {
        let d = sw.config_read(at, bridge::PRIMARY_BUS).unwrap();
        let [p, s, b, _] = d.to_le_bytes();
        [p, s, b]
    }

    /// The memory and prefetchable windows a bridge's registers say.
    fn windows(sw: &VirtualSwitch, at: Bdf) -> (Window, Window) {
        let decode = |lo: u16, hi: u16, upper: Option<(u16, u16)>| {
            let (ub, ul) = upper.map_or((0, 0), |(b, l)| {
                (
                    sw.config_read(at, b).unwrap(),
                    sw.config_read(at, l).unwrap(),
                )
            });
            let base = window::base(word(sw, at, lo), ub);
            let last = window::limit(word(sw, at, hi), ul);
            Window {
                base,
                size: last - base + 1,
            }
        };
        let pf = word(sw, at, bridge::PREF_MEMORY_BASE) & window::PREF_TYPE;
        assert_eq!(pf, window::PREF_64, "{at}: a 64-bit prefetchable window");
        (
            decode(bridge::MEMORY_BASE, bridge::MEMORY_LIMIT, None),
            decode(
                bridge::PREF_MEMORY_BASE,
                bridge::PREF_MEMORY_LIMIT,
                Some((bridge::PREF_BASE_UPPER, bridge::PREF_LIMIT_UPPER)),
            ),
        )
    }

    fn slot_status(sw: &VirtualSwitch, p: PortId) -> u16 {
        word(sw, p.bridge(), PCIE_CAP + pcie::SLOT_STATUS)
    }

    fn link_status(sw: &VirtualSwitch, p: PortId) -> u16 {
        word(sw, p.bridge(), PCIE_CAP + pcie::LINK_STATUS)
    }

    #[test]
    fn the_bus_table() {
        let p = |k| PortId::new(k).unwrap();
        assert_eq!(p(0).bus(), 3);
        assert_eq!(p(0).bridge(), bdf(2, 0, 0));
        assert_eq!(p(0).device(), bdf(3, 0, 0));
        assert_eq!(p(7).bridge(), bdf(2, 0, 7));
        assert_eq!(p(8).bridge(), bdf(2, 1, 0));
        assert_eq!(p(31).bus(), 34);
        assert_eq!(p(252).bus(), 255);
        assert_eq!(p(252).bridge(), bdf(2, 31, 4));
        assert_eq!(p(252).device(), bdf(255, 0, 0));
        assert_eq!(PortId::new(253), None);
        assert_eq!(MAX_PORTS, 253);
        for k in 0..MAX_PORTS {
            assert_eq!(PortId::of_bus(p(k).bus()), Some(p(k)));
            assert_eq!(PortId::of_bridge(p(k).bridge()), Some(p(k)));
        }
        assert_eq!(PortId::of_bus(2), None);
        assert_eq!(PortId::of_bridge(bdf(2, 31, 5)), None);
        assert_eq!(PortId::of_bridge(bdf(3, 0, 0)), None);

        assert_eq!(VirtualSwitch::new(0).err(), Some(SwitchError::Capacity(0)));
        assert_eq!(
            VirtualSwitch::new(254).err(),
            Some(SwitchError::Capacity(254))
        );
        let mut sw = VirtualSwitch::new(MAX_PORTS).unwrap();
        assert_eq!(buses(&sw, ROOT_PORT), [0, 1, 255]);
        assert_eq!(buses(&sw, UPSTREAM_PORT), [1, 2, 255]);
        assert_eq!(sw.last_bus(), 255);
        for k in 0..MAX_PORTS {
            assert_eq!(sw.alloc_port(), Ok(p(k)));
            assert_eq!(buses(&sw, p(k).bridge()), [2, 3 + k as u8, 3 + k as u8]);
        }
        assert_eq!(sw.alloc_port(), Err(SwitchError::Full(MAX_PORTS)));
        assert_eq!(sw.stats().full, 1);
        assert_eq!(sw.route_id(255), Some(p(252)));

        let sw = VirtualSwitch::new(DEFAULT_PORTS).unwrap();
        assert_eq!(buses(&sw, ROOT_PORT), [0, 1, 34]);
        assert_eq!(buses(&sw, UPSTREAM_PORT), [1, 2, 34]);
        assert_eq!(sw.config_read(p(32).bridge(), 0), None, "only 32 ports");
    }

    #[test]
    fn windows_are_distinct_aligned_decoded_and_reused_after_free() {
        let mut sw = VirtualSwitch::new(MAX_PORTS).unwrap();
        let l = Layout::default();
        let mut seen = Vec::new();
        for k in 0..MAX_PORTS {
            let port = sw.alloc_port().unwrap();
            let (m, pf) = windows(&sw, port.bridge());
            assert_eq!(Some(m), sw.window(port, WindowKind::Mem32));
            assert_eq!(Some(pf), sw.window(port, WindowKind::Pref64));
            assert_eq!(m.size, l.mem32_per_port);
            assert_eq!(pf.size, l.pref64_per_port);
            assert!(m.base.is_multiple_of(m.size), "port {k}: mem32 aligned");
            assert!(pf.base.is_multiple_of(pf.size), "port {k}: pref64 aligned");
            assert!(m.last() < MSI_WINDOW && pf.base >= FOUR_GIB);
            seen.push(m);
            seen.push(pf);
        }
        assert_eq!(
            seen[2 * 252].last(),
            0xcfcf_ffff,
            "253 ports end at 0xCFD0_0000"
        );
        // No two windows overlap.
        seen.sort_by_key(|w| w.base);
        for pair in seen.windows(2) {
            assert!(pair[0].last() < pair[1].base, "{pair:?}");
        }
        // The root and upstream ports forward exactly the span of all of them.
        for up in [ROOT_PORT, UPSTREAM_PORT] {
            let (m, pf) = windows(&sw, up);
            assert_eq!(m.base, l.mem32_base);
            assert_eq!(m.size, MAX_PORTS as u64 * l.mem32_per_port);
            assert_eq!(pf.base, l.pref64_base);
            assert_eq!(pf.size, MAX_PORTS as u64 * l.pref64_per_port);
        }
        // A freed port, its buses and windows, go to the next device.
        let p5 = PortId::new(5).unwrap();
        let before = windows(&sw, p5.bridge());
        sw.free_port(p5).unwrap();
        assert_eq!(sw.route_address(before.0.base, 4), None);
        assert_eq!(sw.alloc_port(), Ok(p5));
        assert_eq!(windows(&sw, p5.bridge()), before);
        assert_eq!(sw.route_address(before.0.base, 4).unwrap().port, p5);
        assert_eq!(sw.route_id(p5.bus()), Some(p5));
    }

    #[test]
    fn layouts_a_bridge_cannot_decode_are_refused() {
        let base = Layout::default();
        let bad = [
            Layout {
                mem32_per_port: 3 << 20,
                ..base
            },
            Layout {
                mem32_per_port: 1 << 19,
                ..base
            },
            Layout {
                mem32_base: 0xc008_0000,
                ..base
            },
            // 253 × 16 MiB from 0xC000_0000 runs into the MSI window.
            Layout {
                mem32_per_port: 16 << 20,
                ..base
            },
            Layout {
                pref64_base: 0x8000_0000,
                pref64_per_port: 1 << 20,
                ..base
            },
            // The span's end overflows u64.
            Layout {
                pref64_base: 1 << 63,
                pref64_per_port: 1 << 56,
                ..base
            },
        ];
        for layout in bad {
            assert!(
                matches!(
                    VirtualSwitch::with_layout(MAX_PORTS, layout),
                    Err(SwitchError::Layout(_))
                ),
                "{layout:x?}"
            );
        }
        // The largest that fits: 128 × 2^56 from 2^63 runs to the last address.
        let sw = VirtualSwitch::with_layout(
            128,
            Layout {
                pref64_base: 1 << 63,
                pref64_per_port: 1 << 56,
                ..base
            },
        )
        .unwrap();
        let (_, pf) = windows(&sw, UPSTREAM_PORT);
        assert_eq!(pf.last(), u64::MAX);
    }

    #[test]
    fn windows_at_their_limits() {
        let empty = Window {
            base: 0x1000,
            size: 0,
        };
        assert!(!empty.contains(0x1000, 1) && !empty.contains(0x1000, 0));
        let top = Window {
            base: u64::MAX - 0xfff,
            size: 0x1000,
        };
        assert_eq!(top.last(), u64::MAX);
        assert!(top.contains(u64::MAX, 1) && top.contains(u64::MAX - 0xfff, 0x1000));
        assert!(!top.contains(u64::MAX, 2) && !top.contains(u64::MAX - 0xfff, 0x1001));
        let past = Window {
            base: u64::MAX,
            size: 2,
        };
        assert_eq!(past.last(), u64::MAX, "no wrap");
    }

    #[test]
    fn id_routing_finds_allocated_ports_by_bus() {
        let mut sw = VirtualSwitch::new(DEFAULT_PORTS).unwrap();
        for bus in 0..=255 {
            assert_eq!(sw.route_id(bus), None, "nothing allocated");
        }
        let a = sw.alloc_port().unwrap();
        let b = sw.alloc_port().unwrap();
        assert_eq!((a.index(), b.index()), (0, 1));
        assert_eq!(sw.route_id(3), Some(a));
        assert_eq!(sw.route_id(4), Some(b));
        for bus in [0, 1, 2, 5, 34, 35, 255] {
            assert_eq!(sw.route_id(bus), None, "bus {bus}");
        }
        sw.free_port(a).unwrap();
        assert_eq!(sw.route_id(3), None);
        assert_eq!(sw.free_port(a), Err(SwitchError::NotAllocated(a)));
        let far = PortId::new(40).unwrap();
        assert_eq!(sw.free_port(far), Err(SwitchError::NoSuchPort(far)));
        assert_eq!(sw.alloc_port(), Ok(a), "the lowest free port");
    }

    #[test]
    fn address_routing_at_the_edges() {
        let mut sw = VirtualSwitch::new(4).unwrap();
        let p0 = sw.alloc_port().unwrap();
        let p1 = sw.alloc_port().unwrap();
        let m0 = sw.window(p0, WindowKind::Mem32).unwrap();
        let m1 = sw.window(p1, WindowKind::Mem32).unwrap();
        let f1 = sw.window(p1, WindowKind::Pref64).unwrap();
        let at = |addr, len| {
            sw.route_address(addr, len)
                .map(|r| (r.port, r.kind, r.offset))
        };
        assert_eq!(at(m0.base, 4), Some((p0, WindowKind::Mem32, 0)));
        assert_eq!(at(m0.last(), 1), Some((p0, WindowKind::Mem32, m0.size - 1)));
        assert_eq!(
            at(m0.last() - 3, 4),
            Some((p0, WindowKind::Mem32, m0.size - 4))
        );
        assert_eq!(at(m0.last(), 2), None, "straddles two ports' windows");
        assert_eq!(
            at(m1.base, 0),
            Some((p1, WindowKind::Mem32, 0)),
            "zero-length"
        );
        assert_eq!(at(m0.base - 1, 1), None, "below the windows");
        assert_eq!(at(m0.base - 1, 2), None);
        assert_eq!(at(m0.base, m0.size), Some((p0, WindowKind::Mem32, 0)));
        assert_eq!(at(m0.base, m0.size + 1), None);
        let m2 = sw
            .window(PortId::new(2).unwrap(), WindowKind::Mem32)
            .unwrap();
        assert_eq!(at(m2.base, 4), None, "port 2 is not allocated");
        let past = m0.base + 4 * m0.size;
        assert_eq!(at(past, 4), None, "past the last port");
        assert_eq!(
            at(f1.base + 0x1000, 8),
            Some((p1, WindowKind::Pref64, 0x1000))
        );
        assert_eq!(
            at(f1.last(), 1),
            Some((p1, WindowKind::Pref64, f1.size - 1))
        );
        assert_eq!(at(u64::MAX, 1), None);
        assert_eq!(at(u64::MAX, 2), None, "the end overflows");
        assert_eq!(at(f1.base, u64::MAX), None, "the length overflows");
        assert_eq!(at(0, 4), None);
        // The last address of a layout that reaches the top of the address space.
        let mut top = VirtualSwitch::with_layout(
            2,
            Layout {
                pref64_base: u64::MAX - (2 << 30) + 1,
                pref64_per_port: 1 << 30,
                ..Layout::default()
            },
        )
        .unwrap();
        top.alloc_port().unwrap();
        let q = top.alloc_port().unwrap();
        let r = top.route_address(u64::MAX, 1).unwrap();
        assert_eq!(
            (r.port, r.kind, r.offset),
            (q, WindowKind::Pref64, (1 << 30) - 1)
        );
        assert_eq!(top.route_address(u64::MAX, 2), None);
        assert_eq!(top.route_address(u64::MAX - 7, 8).unwrap().port, q);
    }

    /// What an enumerator finds walking the config images depth-first from bus 0.
    #[derive(Debug, PartialEq, Eq)]
    struct Found {
        bdf: Bdf,
        port_type: PortType,
        buses: [u8; 3],
        slot: bool,
    }

    /// Scans `bus` as Linux does (every device's function 0, the other functions of
    /// a multi-function device; below a downstream-facing port only device 0) and
    /// walks into each bridge's secondary bus.
    fn scan(sw: &VirtualSwitch, bus: u8, below_downstream: bool, found: &mut Vec<Found>) {
        let devices = if below_downstream { 1 } else { 32 };
        for dev in 0..devices {
            for func in 0..8 {
                let at = bdf(bus, dev, func);
                let Some(id) = sw.config_read(at, regs::VENDOR_ID) else {
                    if func == 0 {
                        break;
                    }
                    continue;
                };
                assert_eq!(regs::word_in(id, regs::VENDOR_ID), VENDOR_ID);
                let header = byte(sw, at, regs::HEADER_TYPE);
                assert_eq!(
                    header & regs::header_type::LAYOUT,
                    regs::header_type::BRIDGE
                );
                let class = sw.config_read(at, regs::REVISION).unwrap() >> 8;
                assert_eq!(class, bridge::CLASS_CODE);
                assert_ne!(word(sw, at, regs::STATUS) & regs::status::CAP_LIST, 0);
                let caps: Vec<_> = pci::list(|off| sw.config_read(at, off).unwrap()).collect();
                assert_eq!(caps.len(), 1, "{at}: the PCI Express capability alone");
                assert!(caps[0].is(CapabilityId::PciExpress));
                let port_type = PortType::of(caps[0].control()).unwrap();
                let slot = caps[0].control() & pcie::caps::SLOT_IMPLEMENTED != 0;
                let b = buses(sw, at);
                assert_eq!(b[0], bus, "{at}: primary bus");
                assert!(b[1] > bus && b[2] >= b[1], "{at}: {b:?}");
                found.push(Found {
                    bdf: at,
                    port_type,
                    buses: b,
                    slot,
                });
                let downstream_facing = port_type != PortType::SwitchUpstream;
                scan(sw, b[1], downstream_facing, found);
                if func == 0 && header & regs::header_type::MULTI_FUNCTION == 0 {
                    break;
                }
            }
        }
    }

    #[test]
    fn an_enumerator_walking_the_images_finds_exactly_the_ports() {
        for n in [1, 8, 9, DEFAULT_PORTS, 100, MAX_PORTS] {
            let sw = VirtualSwitch::new(n).unwrap();
            let mut found = Vec::new();
            scan(&sw, 0, false, &mut found);
            let last = sw.last_bus();
            assert_eq!(found.len(), 2 + n, "{n} ports");
            assert_eq!(
                found[0],
                Found {
                    bdf: ROOT_PORT,
                    port_type: PortType::RootPort,
                    buses: [0, 1, last],
                    slot: false
                }
            );
            assert_eq!(
                found[1],
                Found {
                    bdf: UPSTREAM_PORT,
                    port_type: PortType::SwitchUpstream,
                    buses: [1, 2, last],
                    slot: false
                }
            );
            for (k, f) in found[2..].iter().enumerate() {
                let p = PortId::new(k).unwrap();
                assert_eq!(
                    *f,
                    Found {
                        bdf: p.bridge(),
                        port_type: PortType::SwitchDownstream,
                        buses: [2, p.bus(), p.bus()],
                        slot: true
                    }
                );
                // Each port's window lies inside its parents'.
                let (m, pf) = windows(&sw, p.bridge());
                let (um, upf) = windows(&sw, UPSTREAM_PORT);
                assert!(um.contains(m.base, m.size) && upf.contains(pf.base, pf.size));
            }
            // The devices behind the ports are not the switch's to answer.
            assert_eq!(sw.config_read(bdf(3, 0, 0), 0), None);
        }
    }

    #[test]
    fn slots_are_surprise_hot_plug_capable() {
        let sw = VirtualSwitch::new(16).unwrap();
        let p = PortId::new(11).unwrap();
        let cap = sw
            .config_read(p.bridge(), PCIE_CAP + pcie::SLOT_CAPABILITIES)
            .unwrap();
        assert_ne!(cap & sltcap::HOT_PLUG_CAPABLE, 0);
        assert_ne!(cap & sltcap::HOT_PLUG_SURPRISE, 0);
        assert_eq!(cap & sltcap::ATTENTION_BUTTON, 0);
        assert_eq!(cap >> sltcap::PHYSICAL_SLOT_SHIFT, 12);
        let lnkcap = sw
            .config_read(p.bridge(), PCIE_CAP + pcie::LINK_CAPABILITIES)
            .unwrap();
        assert_ne!(lnkcap & pcie::lnkcap::DLL_ACTIVE_REPORTING, 0);
        assert_eq!(lnkcap >> pcie::lnkcap::PORT_NUMBER_SHIFT, 11);
        assert_eq!(slot_status(&sw, p), 0, "an empty slot");
        assert_eq!(link_status(&sw, p) & lnksta::DLL_LINK_ACTIVE, 0);
        assert_ne!(
            word(&sw, ROOT_PORT, PCIE_CAP + pcie::LINK_STATUS) & lnksta::DLL_LINK_ACTIVE,
            0,
            "the root port's link to the switch is up"
        );
    }

    #[test]
    fn presence_changes_show_in_slot_status_as_hardware_sets_them() {
        let mut sw = VirtualSwitch::new(8).unwrap();
        let p = sw.alloc_port().unwrap();
        let free = PortId::new(1).unwrap();
        assert_eq!(
            sw.set_present(free, true),
            Err(SwitchError::NotAllocated(free))
        );
        let events = sltsta::PRESENCE_DETECT_CHANGED | sltsta::DLL_STATE_CHANGED;

        assert_eq!(sw.set_present(p, true), Ok(true));
        assert!(sw.present(p));
        assert_eq!(slot_status(&sw, p), sltsta::PRESENCE_DETECT_STATE | events);
        assert_ne!(link_status(&sw, p) & lnksta::DLL_LINK_ACTIVE, 0);
        assert_eq!(sw.set_present(p, true), Ok(false), "no change, no event");
        assert_eq!(sw.free_port(p), Err(SwitchError::Occupied(p)));

        // Software clears the events by writing 1s to them (a 16-bit write of Slot
        // Status: the upper half of the Slot Control dword); the state stays.
        let reg = PCIE_CAP + pcie::SLOT_STATUS;
        assert!(sw.config_write(p.bridge(), reg, u32::from(events) << 16, 0b1100));
        assert_eq!(slot_status(&sw, p), sltsta::PRESENCE_DETECT_STATE);
        // Writing 0s or the read-only state bit changes nothing.
        let state = u32::from(sltsta::PRESENCE_DETECT_STATE) << 16;
        assert!(sw.config_write(p.bridge(), reg, state, 0b1100));
        assert_eq!(slot_status(&sw, p), sltsta::PRESENCE_DETECT_STATE);

        assert_eq!(sw.set_present(p, false), Ok(true));
        assert!(!sw.present(p));
        assert_eq!(
            slot_status(&sw, p),
            events,
            "gone: both changed, state clear"
        );
        assert_eq!(link_status(&sw, p) & lnksta::DLL_LINK_ACTIVE, 0);
        // A device back before software looked: the events stay set, state is new.
        assert_eq!(sw.set_present(p, true), Ok(true));
        assert_eq!(slot_status(&sw, p), sltsta::PRESENCE_DETECT_STATE | events);
        assert_eq!(sw.set_present(p, false), Ok(true));
        sw.free_port(p).unwrap();
        // Other ports never saw a thing.
        assert_eq!(slot_status(&sw, free), 0);
    }

    #[test]
    fn config_writes_behave_as_a_type1_header() {
        let mut sw = VirtualSwitch::new(8).unwrap();
        let p = PortId::new(3).unwrap().bridge();
        // Command: the memory, mastering and error enables are writable; I/O is not.
        assert!(sw.config_write(p, regs::COMMAND, 0xffff, 0b0011));
        let cmd = word(&sw, p, regs::COMMAND);
        assert_eq!(cmd & regs::command::IO, 0);
        assert_eq!(
            cmd,
            regs::command::MEMORY
                | regs::command::BUS_MASTER
                | regs::command::PARITY
                | regs::command::SERR
                | regs::command::INTX_DISABLE
        );
        // The byte enables say which bytes: Status (the upper half) is untouched.
        assert_eq!(word(&sw, p, regs::STATUS), regs::status::CAP_LIST);
        // Read-only: IDs, class, header type, capabilities pointer.
        assert!(sw.config_write(p, regs::VENDOR_ID, 0, 0xf));
        assert!(sw.config_write(p, regs::dword(regs::HEADER_TYPE), 0, 0xf));
        assert!(sw.config_write(p, regs::CAP_PTR, 0, 0xf));
        assert_eq!(word(&sw, p, regs::VENDOR_ID), VENDOR_ID);
        assert_eq!(byte(&sw, p, regs::HEADER_TYPE), regs::header_type::BRIDGE);
        assert_eq!(byte(&sw, p, regs::CAP_PTR), PCIE_CAP as u8);
        // Scratch registers software may write.
        assert!(sw.config_write(p, regs::INTERRUPT_LINE, 0x0000_0042, 0b0001));
        assert_eq!(byte(&sw, p, regs::INTERRUPT_LINE), 0x42);
        assert!(sw.config_write(p, bridge::BRIDGE_CONTROL, 0xffff_0000, 0b1100));
        assert_eq!(
            word(&sw, p, bridge::BRIDGE_CONTROL),
            bridge::control::PARITY_ERROR_RESPONSE
                | bridge::control::SERR
                | bridge::control::SECONDARY_BUS_RESET
        );
        // Slot Control: the event enables are stored, the absent controls are not.
        let ctl = PCIE_CAP + pcie::SLOT_CONTROL;
        assert!(sw.config_write(p, ctl, 0x0000_ffff, 0b0011));
        assert_eq!(
            word(&sw, p, ctl),
            sltctl::ATTENTION_BUTTON_ENABLE
                | sltctl::POWER_FAULT_ENABLE
                | sltctl::MRL_SENSOR_ENABLE
                | sltctl::PRESENCE_DETECT_ENABLE
                | sltctl::COMMAND_COMPLETED_ENABLE
                | sltctl::HOT_PLUG_INTERRUPT_ENABLE
                | sltctl::DLL_STATE_CHANGED_ENABLE
        );
        assert_eq!(sw.stats().fixed_writes, 0);

        // Bus numbers and windows read as assigned; writes that would change them
        // are counted, rewriting the same value is not.
        let before = (buses(&sw, p), windows(&sw, p));
        assert!(sw.config_write(p, bridge::PRIMARY_BUS, 0x00ff_ff00, 0b0111));
        assert!(sw.config_write(p, bridge::MEMORY_BASE, 0xfff0_0000, 0xf));
        assert!(sw.config_write(p, bridge::PREF_BASE_UPPER, 0, 0xf));
        assert_eq!((buses(&sw, p), windows(&sw, p)), before);
        assert_eq!(sw.stats().fixed_writes, 3);
        let same = sw.config_read(p, bridge::PRIMARY_BUS).unwrap();
        assert!(sw.config_write(p, bridge::PRIMARY_BUS, same, 0xf));
        assert_eq!(sw.stats().fixed_writes, 3);

        // Extended config space reads as zero (no extended capabilities) and ignores
        // writes; past 4 KiB, and at functions that are not the switch's, nothing.
        assert_eq!(sw.config_read(p, 0x100), Some(0));
        assert!(sw.config_write(p, 0xffc, u32::MAX, 0xf));
        assert_eq!(sw.config_read(p, 0xffc), Some(0));
        assert_eq!(sw.config_read(p, 0x1000), None);
        assert!(!sw.config_write(p, 0x1000, 0, 0xf));
        assert_eq!(sw.config_read(bdf(0, 1, 0), 0), None);
        assert_eq!(sw.config_read(bdf(1, 0, 1), 0), None);
        assert_eq!(sw.config_read(bdf(2, 1, 0), 0), None, "port 8 of 8");
        assert!(!sw.config_write(bdf(3, 0, 0), 4, 0xffff, 0xf));
        // An unaligned register reads its dword.
        assert_eq!(
            sw.config_read(p, bridge::SECONDARY_BUS),
            sw.config_read(p, bridge::PRIMARY_BUS)
        );
    }

    #[test]
    fn hot_plug_takes_its_ports_from_the_switch() {
        use crate::hotplug::PortAllocator;
        let mut sw = VirtualSwitch::new(2).unwrap();
        assert_eq!(sw.allocate(), PortId::new(0));
        assert_eq!(sw.allocate(), PortId::new(1));
        assert_eq!(sw.allocate(), None);
        assert_eq!(sw.stats().full, 1);
        assert_eq!(sw.live_ports().count(), 2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        Free(usize),
        Present(usize, bool),
    }

    fn op(ports: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            2 => (0..ports + 2).prop_map(Op::Free),
            2 => (0..ports + 2, any::<bool>()).prop_map(|(k, b)| Op::Present(k, b)),
        ]
    }

    proptest! {
        /// Config writes of any value, with any byte enables, to any register of any
        /// routing ID never panic and never move a bus number, a window, an ID or the
        /// capability list, nor what routes where.
        #[test]
        fn config_writes_never_move_the_switch(
            writes in proptest::collection::vec(
                (any::<u8>(), any::<u16>(), any::<bool>(), any::<u16>(), any::<u32>(), any::<u8>()),
                1..300,
            ),
        ) {
            let mut sw = VirtualSwitch::new(12).unwrap();
            let live = [sw.alloc_port().unwrap(), sw.alloc_port().unwrap()];
            let functions: Vec<Bdf> = [ROOT_PORT, UPSTREAM_PORT]
                .into_iter()
                .chain((0..12).map(|k| PortId::new(k).unwrap().bridge()))
                .collect();
            let snapshot = |sw: &VirtualSwitch| -> Vec<_> {
                functions.iter().map(|&f| (
                    sw.config_read(f, regs::VENDOR_ID),
                    byte(sw, f, regs::HEADER_TYPE),
                    buses(sw, f),
                    windows(sw, f),
                    sw.config_read(f, PCIE_CAP),
                    sw.config_read(f, regs::CAP_PTR),
                )).collect()
            };
            let before = snapshot(&sw);
            for (pick, raw, header, reg, value, be) in writes {
                // Mostly the switch's functions and the header and capability, also
                // any routing ID and any register.
                let at = match functions.get(usize::from(pick)) {
                    Some(&f) => f,
                    None if pick < 64 => functions[usize::from(pick) % functions.len()],
                    None => Bdf::from_u16(raw),
                };
                let reg = if header { reg % 0x100 } else { reg };
                let ours = functions.contains(&at);
                prop_assert_eq!(sw.config_read(at, 0).is_some(), ours);
                prop_assert_eq!(sw.config_write(at, reg, value, be), ours && reg < 0x1000);
            }
            prop_assert_eq!(snapshot(&sw), before);
            for p in live {
                prop_assert_eq!(sw.route_id(p.bus()), Some(p));
                let w = sw.window(p, WindowKind::Mem32).unwrap();
                prop_assert_eq!(sw.route_address(w.base, 4).map(|r| r.port), Some(p));
            }
        }

        /// Whatever the order of allocations, frees and presence changes: the live
        /// ports are the model's, an allocation takes the lowest free port, and no bus
        /// number or window (as the config images say them) is ever given to two live
        /// ports; each live port is what its bus and its windows route to.
        #[test]
        fn no_bus_or_window_is_given_to_two_live_ports(
            ports in 1usize..=40,
            ops in proptest::collection::vec(op(40), 1..200),
        ) {
            let mut sw = VirtualSwitch::new(ports).unwrap();
            let mut live = std::collections::BTreeSet::new();
            let mut present = std::collections::BTreeSet::new();
            for op in ops {
                match op {
                    Op::Alloc => {
                        let lowest = (0..ports).find(|k| !live.contains(k));
                        match sw.alloc_port() {
                            Ok(p) => {
                                prop_assert_eq!(Some(p.index()), lowest);
                                live.insert(p.index());
                            }
                            Err(e) => {
                                prop_assert_eq!(lowest, None);
                                prop_assert_eq!(e, SwitchError::Full(ports));
                            }
                        }
                    }
                    Op::Free(k) => {
                        let Some(p) = PortId::new(k) else { continue };
                        let r = sw.free_port(p);
                        if k >= ports {
                            prop_assert_eq!(r, Err(SwitchError::NoSuchPort(p)));
                        } else if !live.contains(&k) {
                            prop_assert_eq!(r, Err(SwitchError::NotAllocated(p)));
                        } else if present.contains(&k) {
                            prop_assert_eq!(r, Err(SwitchError::Occupied(p)));
                        } else {
                            prop_assert_eq!(r, Ok(()));
                            live.remove(&k);
                        }
                    }
                    Op::Present(k, b) => {
                        let Some(p) = PortId::new(k) else { continue };
                        let r = sw.set_present(p, b);
                        if live.contains(&k) {
                            let changed = present.contains(&k) != b;
                            prop_assert_eq!(r, Ok(changed));
                            if b { present.insert(k); } else { present.remove(&k); }
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                }
                let got: Vec<usize> = sw.live_ports().map(|p| p.index()).collect();
                prop_assert_eq!(&got, &live.iter().copied().collect::<Vec<_>>());
                let mut buses_seen = std::collections::BTreeSet::new();
                let mut spans = Vec::new();
                for p in sw.live_ports() {
                    let [_, sec, sub] = buses(&sw, p.bridge());
                    for bus in sec..=sub {
                        prop_assert!(buses_seen.insert(bus), "bus {} twice", bus);
                        prop_assert_eq!(sw.route_id(bus), Some(p));
                    }
                    let (m, pf) = windows(&sw, p.bridge());
                    for w in [m, pf] {
                        prop_assert_eq!(sw.route_address(w.base, 1).map(|r| r.port), Some(p));
                        prop_assert_eq!(sw.route_address(w.last(), 1).map(|r| r.port), Some(p));
                        spans.push(w);
                    }
                    prop_assert_eq!(sw.present(p), present.contains(&p.index()));
                }
                spans.sort_by_key(|w| w.base);
                for pair in spans.windows(2) {
                    prop_assert!(pair[0].last() < pair[1].base, "{:?}", pair);
                }
            }
        }
    }
}
