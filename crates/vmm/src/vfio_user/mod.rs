//! vfio-user (QEMU >= 10.1 `vfio-user-pci`; cloud-hypervisor `--user-device`): the
//! message codec ([`wire`]), a server for one device ([`server`]) and, for tests
//! (feature `fake`), a client that drives it as QEMU does (`client`).
//!
//! Written here rather than on the `vfio_user` crate (0.1.x): that crate's server
//! answers an unsupported command before reading its body (the rest of the body is
//! then parsed as the next header), has no DMA_READ/DMA_WRITE, serves one blocking
//! connection, and can panic on a malformed VERSION. This one reads every message
//! whole before acting on it, answers what it does not implement with an error,
//! never panics on input, and is polled by the host bridge's loop.

#[cfg(any(test, feature = "fake"))]
pub mod client;
pub mod server;
pub mod wire;

pub use server::{VfioUserError, VfioUserServer, VfioUserStats};
