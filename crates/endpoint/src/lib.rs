//! The device side of tether: a PCI Express endpoint framework and the device models
//! that run on it.
//!
//! - [`config`]: a type-0 configuration space with hardware register behaviour (write
//!   masks, write-1-to-clear, self-sizing BARs) and the PM, MSI, MSI-X and PCI Express
//!   capabilities.

pub mod config;

pub use config::{Bar, BarKind, ConfigEffects, ConfigError, ConfigSpace, MsixLayout};
