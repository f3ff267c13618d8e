//! What the host bridge does with any VMM front-end: one connection (or listening
//! socket) through which a VMM reaches one device.
//!
//! The host bridge holds front-ends as `Box<dyn Frontend>` and drives them all the
//! same way; QEMU's multi-process proxy ([`ProxyServer`]) and the vfio-user server
//! ([`VfioUserServer`]) implement it. Calling order, in the host bridge's poll loop:
//!
//! 1. [`Frontend::wait_fds`] when the loop is about to sleep: the VMM's input wakes it;
//! 2. [`Frontend::serve`] every round, against the device as the bridge reaches it
//!    ([`RemoteFunction`]: the real device, or whatever answers while it is away);
//! 3. [`Frontend::set_intx`] and [`Frontend::vector`] as the device's interrupts come;
//! 4. [`Frontend::device_gone`] when the device leaves, [`Frontend::device_changed`]
//!    when it (or another generation of it) is back behind the same front-end.

use std::os::fd::RawFd;

use thiserror::Error;

use crate::device::RemoteFunction;
use crate::proxy::{ProxyError, ProxyServer, ProxyStats};
use crate::vfio_user::{VfioUserError, VfioUserServer, VfioUserStats};

/// Why a front-end could not serve.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// The VMM closed a connection that cannot come back (the proxy's socketpair).
    #[error("the VMM closed the connection")]
    Closed,
    #[error("proxy connection: {0}")]
    Proxy(#[source] ProxyError),
    #[error("vfio-user connection: {0}")]
    VfioUser(#[source] VfioUserError),
}

/// A front-end's counters, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(untagged))]
pub enum FrontendStats {
    Proxy(ProxyStats),
    VfioUser(VfioUserStats),
}

/// A VMM's way to one device (see the module docs for the calling order).
pub trait Frontend: Send {
    /// The front-end's kind, for logs and counters (`qemu-proxy`, `vfio-user`).
    fn name(&self) -> &'static str;

    /// Descriptors whose readiness means the VMM has something for [`Frontend::serve`].
    fn wait_fds(&self) -> Vec<RawFd>;

    /// Handles what the VMM sent (at most `max` messages) against `dev`, answering
    /// each; returns how many were handled.
    fn serve(&mut self, dev: &mut dyn RemoteFunction, max: usize) -> Result<usize, FrontendError>;

    /// Whether a VMM is connected now.
    fn connected(&self) -> bool;

    /// The device's INTx line changed.
    fn set_intx(&mut self, asserted: bool);

    /// The device sent MSI or MSI-X vector `v`; `false` when this front-end delivers
    /// no vectors (the proxy: INTx only).
    fn vector(&mut self, v: u16) -> bool;

    /// The device is gone: its INTx line is released and, where the protocol has a
    /// way, the VMM is asked to release the device. Returns whether it was asked.
    fn device_gone(&mut self) -> bool;

    /// The device behind the front-end changed (back after its box restarted): what
    /// the front-end read of it (its capability list) is read again.
    fn device_changed(&mut self);

    fn stats(&self) -> FrontendStats;
}

impl Frontend for ProxyServer {
    fn name(&self) -> &'static str {
        "qemu-proxy"
    }

    fn wait_fds(&self) -> Vec<RawFd> {
        ProxyServer::wait_fds(self)
    }

    fn serve(&mut self, dev: &mut dyn RemoteFunction, max: usize) -> Result<usize, FrontendError> {
        ProxyServer::serve(self, dev, max).map_err(|e| match e {
            ProxyError::Closed => FrontendError::Closed,
            e => FrontendError::Proxy(e),
        })
    }

    /// The proxy's socketpair is made connected, and ends for good when QEMU closes it.
    fn connected(&self) -> bool {
        true
    }

    fn set_intx(&mut self, asserted: bool) {
        ProxyServer::set_intx(self, asserted)
    }

    fn vector(&mut self, _v: u16) -> bool {
        false
    }

    /// The proxy protocol has no way to ask QEMU to let a device go: the launcher
    /// unplugs it through QEMU's monitor.
    fn device_gone(&mut self) -> bool {
        ProxyServer::set_intx(self, false);
        false
    }

    fn device_changed(&mut self) {
        ProxyServer::device_changed(self)
    }

    fn stats(&self) -> FrontendStats {
        FrontendStats::Proxy(ProxyServer::stats(self))
    }
}

impl Frontend for VfioUserServer {
    fn name(&self) -> &'static str {
        "vfio-user"
    }

    fn wait_fds(&self) -> Vec<RawFd> {
        VfioUserServer::wait_fds(self)
    }

    fn serve(&mut self, dev: &mut dyn RemoteFunction, max: usize) -> Result<usize, FrontendError> {
        VfioUserServer::serve(self, dev, max).map_err(FrontendError::VfioUser)
    }

    fn connected(&self) -> bool {
        VfioUserServer::connected(self)
    }

    fn set_intx(&mut self, asserted: bool) {
        VfioUserServer::set_intx(self, asserted)
    }

    fn vector(&mut self, v: u16) -> bool {
        VfioUserServer::vector(self, v);
        true
    }

    /// Through the device-request interrupt, if the VMM set one up.
    fn device_gone(&mut self) -> bool {
        self.request_release()
    }

    fn device_changed(&mut self) {
        VfioUserServer::device_changed(self)
    }

    fn stats(&self) -> FrontendStats {
        FrontendStats::VfioUser(VfioUserServer::stats(self))
    }
}
