//! The runtimes of tether's two kinds of bridge, each one poll loop over a dataplane
//! port and a fabric node:
//!
//! - [`iobox::IoBox`]: device models on the endpoint framework, one per slot, each in
//!   its group; TLPs from the host in a device's group go to that device.
//! - [`host::FabricLink`]: the root complex's `Link` over the fabric, so the host API
//!   (`rootcomplex::Host`) reaches devices on the other side of the segment.
//! - [`memdev_driver::MemDevDriver`]: a host-side driver for the memdev test device.

pub mod host;
pub mod iobox;
pub mod memdev_driver;
pub mod port;

pub use host::{FabricLink, LinkStats};
pub use iobox::{IoBox, Slot};
pub use memdev_driver::{DriverError, MemDevDriver};
pub use port::FabricPort;
