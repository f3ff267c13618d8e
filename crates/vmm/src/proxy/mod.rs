//! QEMU's multi-process proxy (`-device x-pci-proxy-dev,fd=N`): the message codec
//! ([`wire`]) and the remote end of a connection ([`server`]).

pub mod server;
pub mod wire;

pub use crate::device::RemoteFunction;
pub use server::{ProxyError, ProxyServer, ProxyStats};
