//! tether's VMM front-ends: an unmodified QEMU reaches a device in an I/O box through
//! the host bridge.
//!
//! - [`frontend::Frontend`]: what the host bridge does with any front-end (the two
//!   below implement it).
//! - [`proxy`]: QEMU's multi-process proxy protocol (`x-pci-proxy-dev`, QEMU 7.2+):
//!   config and BAR accesses, guest RAM as memfds, INTx through irqfd/resamplefd.
//! - [`vfio_user`]: a vfio-user server (QEMU >= 10.1 `vfio-user-pci`): regions,
//!   DMA mappings with or without descriptors, INTx, MSI and MSI-X through eventfds,
//!   capabilities hidden on request; with feature `fake`, a client for tests.
//! - [`bar_shadow`]: the BAR registers the guest sees, kept by the front-ends (the
//!   device's own hold the bridge's addresses), and guest addresses resolved to the
//!   device's.
//! - [`payload`]: the Max Payload Size the guest sees, kept apart from the fabric's
//!   (as vfio-pci keeps it for an assigned device).
//! - [`qmp`]: a client of QEMU's machine protocol (commands, replies, events) that
//!   hot-plugs devices into a running guest.
//! - [`qemu`]: QEMU versions and their bugs, the q35 command line with PCIe root ports.
//! - [`guest_ram`]: guest RAM mapped from the VMM's file descriptors, as host memory
//!   for the device's DMA.
//! - [`sys`]: Unix sockets with descriptors, eventfds, readiness waits.
//! - [`caps`]: capabilities found in a device's list, and hidden from the list a
//!   guest reads (one walk for both front-ends).

pub mod bar_shadow;
pub mod caps;
pub mod device;
#[cfg(any(test, feature = "fake"))]
pub mod fake_function;
pub mod frontend;
pub mod guest_ram;
pub mod payload;
pub mod proxy;
pub mod qemu;
pub mod qmp;
pub mod sys;
pub mod vfio_user;
