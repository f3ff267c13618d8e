//! The host side of tether as one library:
//!
//! - [`host_bridge::HostBridge`]: a host's devices of every box in its group, each on
//!   a port of its virtual switch, each followed by its own hot-plug state machine
//!   (what `tether host` runs).
//! - [`switch`]: the virtual PCIe switch of a host (root port, upstream port, one
//!   hot-plug downstream port per device): bus numbers, windows, config images.
//! - [`route`]: routing through the switch, down by bus and window, up only from the
//!   box that holds the port a TLP names.
//! - [`hotplug`]: one hot-plug state machine per device (sans-IO).
//! - [`port_link::FabricLink`]: the root complex's `Link` over the fabric, switched or
//!   direct to one box, so the host API (`rootcomplex::Host`) reaches devices on the
//!   other side of the segment.
//! - [`drivers::memdev::MemDevDriver`]: a host-side driver for the memdev test device.
//! - [`settings`]: a host link's group and Max Payload Size, checked against its frames.
//! - [`vm_pool`]: a host bridge under a VMM: every device served on a vfio-user socket
//!   of its own for the VMM to hot-add, and answered by a ghost while it is
//!   hot-removed (what `tether vm` runs for vfio-user).
//! - [`vm`]: the one-device bridge under QEMU's proxy and `tether host --vfio-user`,
//!   still direct to one box; its `HostFunction` is how every front-end reaches a
//!   device.

pub mod drivers;
pub mod host_bridge;
pub mod hotplug;
pub mod port_link;
pub mod route;
pub mod settings;
pub mod switch;
pub mod vm;
pub mod vm_pool;

pub use drivers::memdev::{DriverError, MemDevDriver};
pub use port_link::{FabricLink, LinkStats};
