//! The type-1 (PCI-to-PCI bridge) configuration header: the registers that differ from
//! the type-0 header in [`regs`](crate::regs), their bits, and the encoding of the
//! memory windows. The first 16 bytes (IDs, Command, Status, class, Header Type), the
//! capabilities pointer and the interrupt registers are where [`regs`](crate::regs)
//! names them. A switch's ports and a root port present this header.

/// BAR0 and BAR1 exist in a type-1 header too, before the bus numbers.
pub const BAR0: u16 = 0x10;
pub const BAR1: u16 = 0x14;
pub const PRIMARY_BUS: u16 = 0x18;
pub const SECONDARY_BUS: u16 = 0x19;
pub const SUBORDINATE_BUS: u16 = 0x1a;
pub const SECONDARY_LATENCY_TIMER: u16 = 0x1b;
/// I/O Base and Limit (8 bits each): address bits 15:12 in the high nibble.
pub const IO_BASE: u16 = 0x1c;
pub const IO_LIMIT: u16 = 0x1d;
pub const SECONDARY_STATUS: u16 = 0x1e;
/// Memory Base and Limit (16 bits each): address bits 31:20 in bits 15:4.
pub const MEMORY_BASE: u16 = 0x20;
pub const MEMORY_LIMIT: u16 = 0x22;
/// Prefetchable Memory Base and Limit (16 bits each): address bits 31:20 in bits 15:4,
/// and in bits 3:0 whether the window is 64-bit ([`window::PREF_64`]).
pub const PREF_MEMORY_BASE: u16 = 0x24;
pub const PREF_MEMORY_LIMIT: u16 = 0x26;
/// Address bits 63:32 of the prefetchable window's base and limit.
pub const PREF_BASE_UPPER: u16 = 0x28;
pub const PREF_LIMIT_UPPER: u16 = 0x2c;
pub const IO_BASE_UPPER: u16 = 0x30;
pub const IO_LIMIT_UPPER: u16 = 0x32;
/// The expansion ROM base address moves to 0x38 in a type-1 header.
pub const ROM: u16 = 0x38;
pub const BRIDGE_CONTROL: u16 = 0x3e;

/// Class code of a PCI-to-PCI bridge: base class 0x06 (bridge), subclass 0x04
/// (PCI-to-PCI), programming interface 0x00; as the dword at
/// [`REVISION`](crate::regs::REVISION) holds it, above the revision byte.
pub const CLASS_CODE: u32 = 0x06_04_00;

/// Bridge Control bits.
pub mod control {
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 0;
    pub const SERR: u16 = 1 << 1;
    pub const ISA: u16 = 1 << 2;
    pub const VGA: u16 = 1 << 3;
    pub const VGA_16BIT: u16 = 1 << 4;
    pub const MASTER_ABORT_MODE: u16 = 1 << 5;
    /// Secondary Bus Reset: held set, the bridge holds its secondary side in reset.
    pub const SECONDARY_BUS_RESET: u16 = 1 << 6;
}

/// The encoding of the memory windows.
pub mod window {
    /// Memory windows are aligned to and sized in 1 MiB.
    pub const GRANULARITY: u64 = 1 << 20;
    /// The address bits 31:20 of a Memory Base/Limit register (bits 15:4).
    pub const ADDRESS: u16 = 0xfff0;
    /// The low nibble of the Prefetchable Base/Limit registers: 0 for a 32-bit window,
    /// 1 for a 64-bit window (with the upper dwords).
    pub const PREF_TYPE: u16 = 0x000f;
    pub const PREF_64: u16 = 0x0001;

    /// The base or limit register for address bits 31:20 of `addr`, with `flags` (the
    /// low nibble: 0, or [`PREF_64`] for a prefetchable 64-bit window).
    pub fn register(addr: u64, flags: u16) -> u16 {
        ((addr >> 16) as u16 & ADDRESS) | (flags & PREF_TYPE)
    }

    /// The first address of a window whose base register reads `base` (and, for a
    /// 64-bit prefetchable window, whose upper base dword reads `upper`; 0 otherwise).
    pub fn base(base: u16, upper: u32) -> u64 {
        u64::from(upper) << 32 | u64::from(base & ADDRESS) << 16
    }

    /// The last address of a window whose limit register reads `limit` (and `upper`
    /// as for [`base`]): the limit names a 1 MiB unit, and the window includes all of it.
    pub fn limit(limit: u16, upper: u32) -> u64 {
        base(limit, upper) | (GRANULARITY - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_round_trip_through_their_registers() {
        let (first, last) = (0xc010_0000u64, 0xc01f_ffffu64);
        let b = window::register(first, 0);
        let l = window::register(last, 0);
        assert_eq!((b, l), (0xc010, 0xc010));
        assert_eq!(window::base(b, 0), first);
        assert_eq!(window::limit(l, 0), last);
        let (first, last) = (0x0000_0140_4000_0000u64, 0x0000_0140_7fff_ffffu64);
        let b = window::register(first, window::PREF_64);
        let l = window::register(last, window::PREF_64);
        assert_eq!((b, l), (0x4001, 0x7ff1));
        assert_eq!(window::base(b, (first >> 32) as u32), first);
        assert_eq!(window::limit(l, (last >> 32) as u32), last);
        // An empty window: base above limit.
        assert!(window::base(0xfff0, 0) > window::limit(0x0000, 0));
        assert_eq!(CLASS_CODE >> 16, 0x06);
    }

    #[test]
    fn port_types_round_trip_through_the_capabilities_register() {
        use crate::pcie::{caps, PortType};
        for raw in 0..16u16 {
            let reg = 2 | raw << caps::PORT_TYPE_SHIFT | caps::SLOT_IMPLEMENTED;
            if let Some(t) = PortType::of(reg) {
                assert_eq!(t.field(), raw << caps::PORT_TYPE_SHIFT);
            }
        }
        assert_eq!(PortType::of(0x0062), Some(PortType::SwitchDownstream));
        assert_eq!(PortType::of(0x0142), Some(PortType::RootPort));
        assert_eq!(PortType::of(0x0052), Some(PortType::SwitchUpstream));
        assert_eq!(PortType::of(0x00b2), None);
        assert_eq!(crate::pcie::sltsta::EVENTS, 0x011f);
    }
}
