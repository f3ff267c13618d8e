//! The type-0 (endpoint) configuration header: register offsets and their bits.

use std::ops::Range;

pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION: u16 = 0x08;
/// Class code: programming interface (0x09), subclass (0x0a), base class (0x0b).
pub const CLASS: u16 = 0x09;
pub const CACHE_LINE: u16 = 0x0c;
pub const LATENCY_TIMER: u16 = 0x0d;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BIST: u16 = 0x0f;
pub const BAR0: u16 = 0x10;
pub const BAR1: u16 = 0x14;
pub const BAR2: u16 = 0x18;
pub const BAR3: u16 = 0x1c;
pub const BAR4: u16 = 0x20;
pub const BAR5: u16 = 0x24;
/// How many BARs a type-0 header has.
pub const BAR_COUNT: usize = 6;
/// The six BAR registers.
pub const BARS: Range<u16> = BAR0..BAR5 + 4;
pub const CARDBUS_CIS: u16 = 0x28;
pub const SUBSYSTEM_VENDOR: u16 = 0x2c;
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Expansion ROM base address.
pub const ROM: u16 = 0x30;
/// Capabilities pointer (its low two bits are reserved).
pub const CAP_PTR: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;
/// INTx pin: 1 = INTA .. 4 = INTD, 0 = none.
pub const INTERRUPT_PIN: u16 = 0x3d;
pub const MIN_GNT: u16 = 0x3e;
pub const MAX_LAT: u16 = 0x3f;
/// Where the header ends and capabilities may start.
pub const HEADER_END: u16 = 0x40;
/// The end of conventional (PCI-compatible) config space, where the capability list
/// lives; extended capabilities follow up to 4 KiB.
pub const CONVENTIONAL_END: u16 = 0x100;

/// The offset of BAR `index` (0 ..= 5).
pub fn bar(index: usize) -> Option<u16> {
    (index < BAR_COUNT).then(|| BAR0 + 4 * index as u16)
}

/// The dword-aligned offset holding byte `offset` (what a CfgRd of it reads).
pub fn dword(offset: u16) -> u16 {
    offset & !3
}

/// Byte `offset` of config space, out of the dword read at [`dword`]`(offset)`.
pub fn byte_in(dword: u32, offset: u16) -> u8 {
    dword.to_le_bytes()[usize::from(offset & 3)]
}

/// The 16-bit register at `offset` (2-byte aligned), out of the dword read at
/// [`dword`]`(offset)`.
pub fn word_in(dword: u32, offset: u16) -> u16 {
    (dword >> (8 * u32::from(offset & 2))) as u16
}

/// Which BAR a register offset within [`BARS`] belongs to.
pub fn bar_index(register: u16) -> Option<usize> {
    BARS.contains(&register)
        .then(|| usize::from((register - BAR0) / 4))
}

/// Command register bits.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const PARITY: u16 = 1 << 6;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The three decode and mastering enables, off while BARs move.
    pub const DECODE: u16 = IO | MEMORY | BUS_MASTER;
}

/// Status register bits.
pub mod status {
    pub const INTERRUPT: u16 = 1 << 3;
    /// The function has a capability list at [`CAP_PTR`](super::CAP_PTR).
    pub const CAP_LIST: u16 = 1 << 4;
    /// The error bits, all write-1-to-clear.
    pub const ERRORS: u16 = 0xf900;
}

/// Header Type fields.
pub mod header_type {
    /// The layout: 0 for an endpoint, 1 for a bridge.
    pub const LAYOUT: u8 = 0x7f;
    pub const ENDPOINT: u8 = 0x00;
    /// A PCI-to-PCI bridge ([`bridge`](crate::bridge) names its registers).
    pub const BRIDGE: u8 = 0x01;
    pub const MULTI_FUNCTION: u8 = 0x80;
}

/// The low bits of a BAR register.
pub mod bar {
    /// Set: an I/O BAR; clear: a memory BAR.
    pub const IO_SPACE: u32 = 1 << 0;
    /// Memory BAR type: 00b 32-bit, 10b 64-bit.
    pub const MEM_TYPE: u32 = 0x3 << 1;
    pub const MEM_TYPE_64: u32 = 0x2 << 1;
    pub const PREFETCHABLE: u32 = 1 << 3;
    /// The flag bits of a memory BAR and of an I/O BAR (the rest is the address).
    pub const MEM_FLAGS: u32 = 0xf;
    pub const IO_FLAGS: u32 = 0x3;
}

/// What a base address register decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    Memory32,
    Memory64,
    Io,
}

impl BarKind {
    /// The kind a BAR register's low bits say. The legacy "below 1 MiB" type (01b) and
    /// the reserved type (11b) decode as 32-bit memory, as Linux treats them.
    pub fn of(register: u32) -> BarKind {
        if register & bar::IO_SPACE != 0 {
            BarKind::Io
        } else if register & bar::MEM_TYPE == bar::MEM_TYPE_64 {
            BarKind::Memory64
        } else {
            BarKind::Memory32
        }
    }

    /// The low bits of the register that say what it is (address bits excluded).
    pub fn flags_mask(self) -> u32 {
        match self {
            BarKind::Io => bar::IO_FLAGS,
            BarKind::Memory32 | BarKind::Memory64 => bar::MEM_FLAGS,
        }
    }

    /// The flag bits a BAR of this kind reads with.
    pub fn flags(self, prefetchable: bool) -> u32 {
        let pf = if prefetchable { bar::PREFETCHABLE } else { 0 };
        match self {
            BarKind::Io => bar::IO_SPACE,
            BarKind::Memory32 => pf,
            BarKind::Memory64 => bar::MEM_TYPE_64 | pf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_registers_and_kinds() {
        assert_eq!(dword(HEADER_TYPE), 0x0c);
        assert_eq!(byte_in(0x0080_0010, HEADER_TYPE), 0x80);
        assert_eq!(byte_in(0x0000_0140, CAP_PTR), 0x40);
        assert_eq!(word_in(0x1042_1af4, DEVICE_ID), 0x1042);
        assert_eq!(word_in(0x1042_1af4, VENDOR_ID), 0x1af4);
        assert_eq!(bar(0), Some(0x10));
        assert_eq!(bar(5), Some(0x24));
        assert_eq!(bar(6), None);
        assert_eq!(BARS, 0x10..0x28);
        assert_eq!(bar_index(0x1c), Some(3));
        assert_eq!(bar_index(0x28), None);
        assert_eq!(bar_index(0x0c), None);
        assert_eq!(BarKind::of(0xffff_ffe1), BarKind::Io);
        assert_eq!(BarKind::of(0xffff_f00c), BarKind::Memory64);
        assert_eq!(BarKind::of(0xffff_f008), BarKind::Memory32);
        assert_eq!(BarKind::of(0xffff_f006), BarKind::Memory32, "reserved type");
        for kind in [BarKind::Io, BarKind::Memory32, BarKind::Memory64] {
            for pf in [false, true] {
                let f = kind.flags(pf && kind != BarKind::Io);
                assert_eq!(BarKind::of(f), kind);
                assert_eq!(f & !kind.flags_mask(), 0);
            }
        }
    }
}
