//! The PCI configuration-space vocabulary every tether crate speaks: the endpoint that
//! builds a config space, the root complex that enumerates one over the wire, and the
//! VMM front-ends that show one to a guest.
//!
//! - [`regs`]: named offsets and bits of the type-0 (endpoint) header.
//! - [`bridge`]: the registers of the type-1 (PCI-to-PCI bridge) header, and the
//!   encoding of its memory windows.
//! - [`BarKind`]: what a base address register decodes, read from its low bits.
//! - [`CapabilityId`]: the capability IDs, and [`msi`], [`msix`], [`pcie`], [`pm`]: the
//!   registers inside those capabilities, as offsets from the capability's start.
//! - [`Capabilities`]: a walker over the capability list of any config reader (a
//!   local image, CfgRd round trips, a remote device behind a VMM), safe against a
//!   hostile list: at most [`MAX_CAPABILITIES`] entries, pointers masked to dword
//!   alignment, pointers into the header and cycles end the walk.
//!
//! Offsets are `u16` byte offsets into config space (4 KiB at most).

pub mod bridge;
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
    /// Slot registers: in the capability of a downstream port whose Capabilities
    /// register has [`caps::SLOT_IMPLEMENTED`].
    pub const SLOT_CAPABILITIES: u16 = 0x14;
    pub const SLOT_CONTROL: u16 = 0x18;
    pub const SLOT_STATUS: u16 = 0x1a;
    /// Root registers: in the capability of a root port.
    pub const ROOT_CONTROL: u16 = 0x1c;
    pub const ROOT_CAPABILITIES: u16 = 0x1e;
    pub const ROOT_STATUS: u16 = 0x20;
    pub const DEVICE_CAPABILITIES_2: u16 = 0x24;
    pub const DEVICE_CONTROL_2: u16 = 0x28;
    pub const LINK_CAPABILITIES_2: u16 = 0x2c;
    pub const LINK_CONTROL_2: u16 = 0x30;
    pub const SLOT_CAPABILITIES_2: u16 = 0x34;
    pub const SLOT_CONTROL_2: u16 = 0x38;
    pub const SLOT_STATUS_2: u16 = 0x3a;
    /// Bytes the capability spans (version 2), for an endpoint and a port alike.
    pub const LEN: u16 = 0x3c;

    /// PCI Express Capabilities register fields.
    pub mod caps {
        /// The capability's version (2 since PCIe 2.0).
        pub const VERSION: u16 = 0xf;
        /// The Device/Port Type ([`PortType`](super::PortType)).
        pub const PORT_TYPE: u16 = 0xf << 4;
        pub const PORT_TYPE_SHIFT: u32 = 4;
        /// The port has a slot (a downstream or root port's link goes to a slot).
        pub const SLOT_IMPLEMENTED: u16 = 1 << 8;
    }

    /// The Device/Port Type field of the PCI Express Capabilities register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[repr(u8)]
    pub enum PortType {
        Endpoint = 0x0,
        LegacyEndpoint = 0x1,
        RootPort = 0x4,
        SwitchUpstream = 0x5,
        SwitchDownstream = 0x6,
        PcieToPciBridge = 0x7,
        PciToPcieBridge = 0x8,
        RootComplexEndpoint = 0x9,
        RootComplexEventCollector = 0xa,
    }

    impl PortType {
        /// The type a PCI Express Capabilities register says, when it names one.
        pub fn of(capabilities: u16) -> Option<PortType> {
            use PortType::*;
            Some(
                match (capabilities & caps::PORT_TYPE) >> caps::PORT_TYPE_SHIFT {
                    0x0 => Endpoint,
                    0x1 => LegacyEndpoint,
                    0x4 => RootPort,
                    0x5 => SwitchUpstream,
                    0x6 => SwitchDownstream,
                    0x7 => PcieToPciBridge,
                    0x8 => PciToPcieBridge,
                    0x9 => RootComplexEndpoint,
                    0xa => RootComplexEventCollector,
                    _ => return None,
                },
            )
        }

        /// The field as it sits in the PCI Express Capabilities register.
        pub const fn field(self) -> u16 {
            (self as u16) << caps::PORT_TYPE_SHIFT
        }
    }

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

    /// Link Capabilities fields.
    pub mod lnkcap {
        /// Max Link Speed (1 = 2.5 GT/s, 2 = 5 GT/s, ...).
        pub const MAX_SPEED: u32 = 0xf;
        /// Maximum Link Width (lanes).
        pub const MAX_WIDTH: u32 = 0x3f << 4;
        pub const MAX_WIDTH_SHIFT: u32 = 4;
        /// Data Link Layer Link Active Reporting Capable: Link Status reports
        /// [`lnksta::DLL_LINK_ACTIVE`](super::lnksta::DLL_LINK_ACTIVE). A
        /// downstream port of a hot-plug surprise slot must be capable.
        pub const DLL_ACTIVE_REPORTING: u32 = 1 << 20;
        pub const LINK_BANDWIDTH_NOTIFICATION: u32 = 1 << 21;
        /// Port Number.
        pub const PORT_NUMBER: u32 = 0xff << 24;
        pub const PORT_NUMBER_SHIFT: u32 = 24;
    }

    /// Link Control fields.
    pub mod lnkctl {
        /// ASPM Control.
        pub const ASPM: u16 = 0x3;
        /// Read Completion Boundary (0 = 64 B, 1 = 128 B).
        pub const RCB: u16 = 1 << 3;
        /// Link Disable (downstream ports).
        pub const LINK_DISABLE: u16 = 1 << 4;
        /// Retrain Link (downstream ports; reads as 0).
        pub const RETRAIN: u16 = 1 << 5;
        pub const COMMON_CLOCK: u16 = 1 << 6;
        pub const EXTENDED_SYNCH: u16 = 1 << 7;
    }

    /// Link Status fields.
    pub mod lnksta {
        /// Current Link Speed (encoded as in Link Capabilities).
        pub const SPEED: u16 = 0xf;
        /// Negotiated Link Width (lanes).
        pub const WIDTH: u16 = 0x3f << 4;
        pub const WIDTH_SHIFT: u32 = 4;
        pub const LINK_TRAINING: u16 = 1 << 11;
        pub const SLOT_CLOCK: u16 = 1 << 12;
        /// Data Link Layer Link Active: the link is up (reported where Link
        /// Capabilities has [`lnkcap::DLL_ACTIVE_REPORTING`](super::lnkcap::DLL_ACTIVE_REPORTING)).
        pub const DLL_LINK_ACTIVE: u16 = 1 << 13;
    }

    /// Slot Capabilities fields.
    pub mod sltcap {
        pub const ATTENTION_BUTTON: u32 = 1 << 0;
        pub const POWER_CONTROLLER: u32 = 1 << 1;
        pub const MRL_SENSOR: u32 = 1 << 2;
        pub const ATTENTION_INDICATOR: u32 = 1 << 3;
        pub const POWER_INDICATOR: u32 = 1 << 4;
        /// Hot-Plug Surprise: a device may leave without notice.
        pub const HOT_PLUG_SURPRISE: u32 = 1 << 5;
        /// Hot-Plug Capable: the slot supports hot-plug.
        pub const HOT_PLUG_CAPABLE: u32 = 1 << 6;
        pub const POWER_LIMIT_VALUE: u32 = 0xff << 7;
        pub const POWER_LIMIT_SCALE: u32 = 0x3 << 15;
        pub const ELECTROMECHANICAL_INTERLOCK: u32 = 1 << 17;
        /// No Command Completed Support: a Slot Control write completes at once and
        /// sets no Command Completed.
        pub const NO_COMMAND_COMPLETED: u32 = 1 << 18;
        /// Physical Slot Number.
        pub const PHYSICAL_SLOT: u32 = 0x1fff << 19;
        pub const PHYSICAL_SLOT_SHIFT: u32 = 19;
    }

    /// Slot Control fields.
    pub mod sltctl {
        pub const ATTENTION_BUTTON_ENABLE: u16 = 1 << 0;
        pub const POWER_FAULT_ENABLE: u16 = 1 << 1;
        pub const MRL_SENSOR_ENABLE: u16 = 1 << 2;
        pub const PRESENCE_DETECT_ENABLE: u16 = 1 << 3;
        pub const COMMAND_COMPLETED_ENABLE: u16 = 1 << 4;
        pub const HOT_PLUG_INTERRUPT_ENABLE: u16 = 1 << 5;
        pub const ATTENTION_INDICATOR: u16 = 0x3 << 6;
        pub const POWER_INDICATOR: u16 = 0x3 << 8;
        pub const POWER_CONTROLLER: u16 = 1 << 10;
        pub const INTERLOCK: u16 = 1 << 11;
        pub const DLL_STATE_CHANGED_ENABLE: u16 = 1 << 12;
    }

    /// Slot Status fields.
    pub mod sltsta {
        pub const ATTENTION_BUTTON_PRESSED: u16 = 1 << 0;
        pub const POWER_FAULT: u16 = 1 << 1;
        pub const MRL_SENSOR_CHANGED: u16 = 1 << 2;
        /// Presence Detect Changed: Presence Detect State changed.
        pub const PRESENCE_DETECT_CHANGED: u16 = 1 << 3;
        pub const COMMAND_COMPLETED: u16 = 1 << 4;
        pub const MRL_SENSOR_STATE: u16 = 1 << 5;
        /// Presence Detect State: a device is in the slot.
        pub const PRESENCE_DETECT_STATE: u16 = 1 << 6;
        pub const INTERLOCK_STATUS: u16 = 1 << 7;
        /// Data Link Layer State Changed: Link Status's Data Link Layer Link Active
        /// changed.
        pub const DLL_STATE_CHANGED: u16 = 1 << 8;
        /// The event bits, all write-1-to-clear; the rest is read-only state.
        pub const EVENTS: u16 = ATTENTION_BUTTON_PRESSED
            | POWER_FAULT
            | MRL_SENSOR_CHANGED
            | PRESENCE_DETECT_CHANGED
            | COMMAND_COMPLETED
            | DLL_STATE_CHANGED;
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
