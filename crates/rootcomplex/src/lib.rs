//! The host side of tether: a virtual root complex.
//!
//! - [`memory`]: the host memory devices may reach, by bus address, checked on every
//!   access.
//! - [`bridge`]: the TLP engine, sans-IO: requests with tags and completion timeouts,
//!   device DMA served from the memory map (UR / dropped outside it), MSI and INTx.
//! - [`driver_api`]: the blocking API on top, over a [`Link`]: enumeration (BAR sizing
//!   and assignment, MSI/MSI-X set-up), config and BAR access, DMA buffers, interrupts.
//!   This is the user-space driver API.

pub mod bridge;
pub mod driver_api;
pub mod memory;

pub use bridge::{Bridge, BridgeConfig, BridgeStats, Event, RequestError, RequestId};
pub use driver_api::{
    Armed, BarInfo, BarWindows, DeviceInfo, DmaBuffer, Host, HostError, HostStats, Interrupt,
    IrqMode, Link, LinkFull,
};
pub use memory::{HostMemory, MapError, MapOwner, MemoryMap, ReadFault};
