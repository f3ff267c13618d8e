//! The PCI configuration-space vocabulary every tether crate speaks: the endpoint that
//! builds a config space, the root complex that enumerates one over the wire, and the
//! VMM front-ends that show one to a guest.
//!
//! - [`regs`]: named offsets and bits of the type-0 (endpoint) header.
//! - [`BarKind`]: what a base address register decodes, read from its low bits.
//! - [`CapabilityId`]: the capability IDs, and [`msi`], [`msix`], [`pcie`], [`pm`]: the
//!   registers inside those capabilities, as offsets from the capability's start.
//! - [`Capabilities`]: a walker over the capability list of any config reader (a
//!   local image, CfgRd round trips, a remote device behind a VMM), safe against a
//!   hostile list: at most [`MAX_CAPABILITIES`] entries, pointers masked to dword
//!   alignment, pointers into the header and cycles end the walk.
//!
//! Offsets are `u16` byte offsets into config space (4 KiB at most).

mod caps;
pub mod regs;

pub use caps::{list, Capabilities, Capability, CapabilityId, WalkEnd, MAX_CAPABILITIES};
pub use regs::BarKind;

/// MSI capability registers (offsets from the capability) and Message Control bits.
pub mod msi {
    /// Message Control (16 bits).
    pub const CONTROL: u16 = 0x02;
    /// Message Address (low 32 bits).
    pub const ADDRESS_LO: u16 = 0x04;
    /// Message Upper Address (64-bit capable functions).
    pub const ADDRESS_HI: u16 = 0x08;
    /// Message Data of a 32-bit capable function.
    pub const DATA_32: u16 = 0x08;
    /// Message Data of a 64-bit capable function.
    pub const DATA_64: u16 = 0x0c;
    /// Mask Bits of a 32-bit / 64-bit capable function with per-vector masking.
    pub const MASK_32: u16 = 0x0c;
    pub const MASK_64: u16 = 0x10;

    /// Message Control bits.
    pub mod control {
        pub const ENABLE: u16 = 1 << 0;
        /// Multiple Message Capable: log2 of the vectors the function asks for.
        pub const MULTIPLE_CAPABLE: u16 = 0x7 << 1;
        pub const MULTIPLE_CAPABLE_SHIFT: u32 = 1;
        /// Multiple Message Enable: log2 of the vectors software granted.
        pub const MULTIPLE_ENABLE: u16 = 0x7 << 4;
        pub const MULTIPLE_ENABLE_SHIFT: u32 = 4;
        pub const ADDRESS_64: u16 = 1 << 7;
        pub const PER_VECTOR_MASK: u16 = 1 << 8;
    }

    /// Bytes the capability spans, rounded to dwords, by what Message Control says:
    /// 12 (32-bit) or 16 (64-bit), 8 more with per-vector masking.
    pub fn len(control: u16) -> u16 {
        let base = if control & control::ADDRESS_64 != 0 {
            16
        } else {
            12
        };
        base + if control & control::PER_VECTOR_MASK != 0 {
            8
        } else {
            0
        }
    }

    /// Where Message Data is, by what Message Control says.
    pub fn data(control: u16) -> u16 {
        if control & control::ADDRESS_64 != 0 {
            DATA_64
        } else {
            DATA_32
        }
    }
}

/// MSI-X capability registers (offsets from the capability), Message Control bits and
/// the table entry layout.
pub mod msix {
    /// Message Control (16 bits).
    pub const CONTROL: u16 = 0x02;
    /// Table Offset and BIR.
    pub const TABLE: u16 = 0x04;
    /// PBA Offset and BIR.
    pub const PBA: u16 = 0x08;
    /// Bytes the capability spans.
    pub const LEN: u16 = 12;
    /// The BAR indicator in the low bits of TABLE and PBA; the rest is the offset.
    pub const BIR_MASK: u32 = 0x7;
    /// The most vectors a function can have.
    pub const MAX_VECTORS: u16 = 2048;
    /// Bytes of one table entry, and the registers in it.
    pub const ENTRY_SIZE: u64 = 16;
    pub const ENTRY_ADDRESS_LO: u64 = 0x0;
    pub const ENTRY_ADDRESS_HI: u64 = 0x4;
    pub const ENTRY_DATA: u64 = 0x8;
    pub const ENTRY_VECTOR_CONTROL: u64 = 0xc;

    /// Message Control bits.
    pub mod control {
        /// Table Size, encoded as N - 1.
        pub const TABLE_SIZE: u16 = 0x7ff;
        pub const FUNCTION_MASK: u16 = 1 << 14;
        pub const ENABLE: u16 = 1 << 15;
    }

    /// Vectors in the table, by what Message Control says (1 ..= 2048).
    pub fn vectors(control: u16) -> u16 {
        (control & control::TABLE_SIZE) + 1
    }
}

/// PCI Express capability registers (offsets from the capability) and their fields.
pub mod pcie {
    /// PCI Express Capabilities (16 bits).
    pub const CAPABILITIES: u16 = 0x02;
    pub const DEVICE_CAPABILITIES: u16 = 0x04;
    pub const DEVICE_CONTROL: u16 = 0x08;
    pub const DEVICE_STATUS: u16 = 0x0a;
    pub const LINK_CAPABILITIES: u16 = 0x0c;
    pub const LINK_CONTROL: u16 = 0x10;
    pub const LINK_STATUS: u16 = 0x12;
    pub const DEVICE_CAPABILITIES_2: u16 = 0x24;
    pub const DEVICE_CONTROL_2: u16 = 0x28;
    pub const LINK_CAPABILITIES_2: u16 = 0x2c;
    pub const LINK_CONTROL_2: u16 = 0x30;
    /// Bytes the capability of an endpoint spans (version 2).
    pub const LEN: u16 = 0x3c;

    /// Device Capabilities fields.
    pub mod devcap {
        /// Max Payload Size Supported (0 = 128 B .. 5 = 4096 B).
        pub const MAX_PAYLOAD: u32 = 0x7;
        /// Extended Tag Field Supported: the function can use 8-bit tags as a
        /// requester (when Device Control's Extended Tag Field Enable is set).
        pub const EXTENDED_TAG: u32 = 1 << 5;
        pub const ROLE_BASED_ERRORS: u32 = 1 << 15;
        pub const FLR: u32 = 1 << 28;
    }

    /// Device Control fields.
    pub mod devctl {
        pub const RELAXED_ORDERING: u16 = 1 << 4;
        /// Max Payload Size (encoded as in Device Capabilities).
        pub const MAX_PAYLOAD: u16 = 0x7 << 5;
        pub const MAX_PAYLOAD_SHIFT: u32 = 5;
        /// Extended Tag Field Enable: set, the function may use 8-bit tags as a
        /// requester; clear, only 5-bit tags (0..=31) (PCIe Base Specification
        /// §2.2.6.2).
        pub const EXTENDED_TAG: u16 = 1 << 8;
        pub const NO_SNOOP: u16 = 1 << 11;
        /// Max Read Request Size (0 = 128 B .. 5 = 4096 B).
        pub const MAX_READ_REQUEST: u16 = 0x7 << 12;
        pub const MAX_READ_REQUEST_SHIFT: u32 = 12;
        /// Initiate Function Level Reset (reads as 0).
        pub const INITIATE_FLR: u16 = 1 << 15;
    }
}

/// Power Management capability registers (offsets from the capability).
pub mod pm {
    /// Power Management Capabilities (16 bits).
    pub const PMC: u16 = 0x02;
    /// Power Management Control/Status (16 bits).
    pub const PMCSR: u16 = 0x04;
    /// Bytes the capability spans.
    pub const LEN: u16 = 8;
    /// PMCSR: the power state field (D0 .. D3hot) and No_Soft_Reset.
    pub const PMCSR_POWER_STATE: u16 = 0x3;
    pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
}
