//! The port interface: DPDK's `rx_burst` / `tx_burst` shape over pooled buffers.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::mempool::{Mbuf, Mempool};

/// What a port is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub mac: [u8; 6],
    /// Ethernet payload size (the 802.1Q tag is extra).
    pub mtu: usize,
}

/// Port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames not received for want of a free buffer.
    pub rx_nombuf: u64,
    /// Frames dropped on receive (too large, truncated, filtered).
    pub rx_dropped: u64,
    /// Frames the port could not take on transmit (queue full), left with the caller.
    pub tx_busy: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

#[derive(Debug, Error)]
pub enum PortError {
    #[error("{op} on {port}: {source}")]
    Io {
        op: &'static str,
        port: String,
        source: std::io::Error,
    },
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    #[error("{0}")]
    Setup(String),
}

impl PortError {
    pub(crate) fn io(op: &'static str, port: &str) -> PortError {
        PortError::Io {
            op,
            port: port.to_string(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// A packet port. Neither burst call blocks; `wait_rx` is how an idle poller sleeps.
pub trait Port: Send {
    fn info(&self) -> &LinkInfo;

    /// The pool receive buffers come from and sent buffers go back to.
    fn pool(&self) -> &Arc<Mempool>;

    /// Receives up to `max` frames, appended to `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError>;

    /// Sends frames from the front of `bufs`; those sent are removed (their buffers go
    /// back to the pool), those the port could not take stay, in order. Returns how
    /// many were sent.
    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError>;

    fn stats(&self) -> PortStats;

    /// Waits up to `timeout` for frames to arrive (ports with a file descriptor use
    /// poll(2); others sleep for the timeout, which the idle policy keeps short).
    fn wait_rx(&self, timeout: Duration) {
        std::thread::sleep(timeout);
    }
    /// The descriptor that becomes readable when frames arrive, for programs that
    /// wait on it together with other inputs (`None`: the port has none).
    fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}
