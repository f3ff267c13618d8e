//! The device side of tether: a PCI Express endpoint framework and the device models
//! that run on it.
//!
//! - [`config`]: a type-0 configuration space with hardware register behaviour (write
//!   masks, write-1-to-clear, self-sizing BARs) and the PM, MSI, MSI-X and PCI Express
//!   capabilities.
//! - [`function`]: one PCIe function as a sans-IO state machine around a [`Device`]
//!   model: config requests, BAR decoding, the MSI-X table, DMA with tags and
//!   completion timeouts, MSI/MSI-X/INTx.
//! - [`memdev`]: a DMA engine test device.

pub mod config;
pub mod function;
pub mod memdev;
pub mod virtio;

pub use config::{Bar, BarKind, ConfigEffects, ConfigError, ConfigSpace, MsixLayout};
pub use function::{Device, DeviceIo, DmaError, DmaId, Function, FunctionConfig, FunctionStats};
