//! The host side of tether as one library:
//!
//! - [`port_link::FabricLink`]: the root complex's `Link` over the fabric, so the host
//!   API (`rootcomplex::Host`) reaches devices on the other side of the segment.
//! - [`drivers::memdev::MemDevDriver`]: a host-side driver for the memdev test device.
//! - [`hotplug`]: one hot-plug state machine per device (sans-IO), for every host
//!   bridge; not yet wired into `tether host` or `tether vm`.
//! - [`settings`]: a host link's group and Max Payload Size, checked against its frames.
//! - [`switch`]: the virtual PCIe switch of a host (root port, upstream port, one
//!   hot-plug downstream port per device): bus numbers, windows, routing, config
//!   images; not yet wired into the host bridge.
//! - [`vm`]: the one-device bridge under a VMM front-end (QEMU's proxy, vfio-user).

pub mod drivers;
pub mod hotplug;
pub mod port_link;
pub mod settings;
pub mod switch;
pub mod vm;

pub use drivers::memdev::{DriverError, MemDevDriver};
pub use port_link::{FabricLink, LinkStats};
