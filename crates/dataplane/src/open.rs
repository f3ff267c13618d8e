//! Opening a bridge's port by kind: the pool sized for the link's MTU, AF_XDP where it
//! can be set up, else AF_PACKET (or the per-frame socket, on request).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use thiserror::Error;

use crate::ports::af_packet::{AfPacketPort, RingConfig};
use crate::ports::af_xdp::{AfXdpPort, XdpConfig};
use crate::ports::socket::SocketPort;
use crate::{Mempool, PoolError, Port, PortError};

/// Which dataplane port a bridge runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum PortKind {
    /// AF_XDP, falling back to AF_PACKET where it cannot be set up.
    #[default]
    Auto,
    AfXdp,
    /// AF_PACKET with a TPACKET_V2 frame ring (poll mode).
    AfPacket,
    /// One system call per frame (the baseline the poll-mode ports are measured
    /// against).
    Socket,
}

impl PortKind {
    /// The name a configuration file gives it (`[port] kind`).
    pub fn name(self) -> &'static str {
        match self {
            PortKind::Auto => "auto",
            PortKind::AfXdp => "af-xdp",
            PortKind::AfPacket => "af-packet",
            PortKind::Socket => "socket",
        }
    }
}

/// Bytes in a bridge's pool (each port has its own: AF_XDP registers it as UMEM):
/// 16384 buffers of 2048 bytes, or 8192 of 4096 on a jumbo-frame link.
const POOL_BYTES: usize = 32 << 20;

/// Bytes of a pool buffer that are not frame payload: the headroom AF_XDP keeps in
/// front of a received frame (256), the Ethernet header and 802.1Q tag, and margin.
pub const FRAME_OVERHEAD: usize = 256 + 64;

/// The pool buffer size for a link of `mtu`: 2048 bytes, or 4096 (the largest UMEM
/// chunk AF_XDP takes) where frames are larger. Frames stay within a buffer, so a
/// jumbo link carries frames of up to 4096 - 320 bytes.
pub fn buffer_size_for(mtu: usize) -> usize {
    if mtu + FRAME_OVERHEAD <= 2048 {
        2048
    } else {
        4096
    }
}

/// A bridge's buffer pool for a link of `mtu`.
pub fn pool_for(mtu: usize) -> Result<Arc<Mempool>, PoolError> {
    let buf = buffer_size_for(mtu);
    Mempool::new(POOL_BYTES / buf, buf)
}

/// The MTU of `interface` in this network namespace, if it can be asked.
pub fn interface_mtu(interface: &str) -> Option<usize> {
    let fd = crate::sys::ioctl_socket(interface).ok()?;
    let (_, mtu) = crate::sys::query_link(fd.as_raw_fd(), interface).ok()?;
    Some(mtu)
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A port [`open_port`] opened.
pub struct OpenedPort {
    pub port: Box<dyn Port>,
    /// What it is, for the bridge's log.
    pub what: String,
    /// Why AF_XDP was not used where `Auto` tried it first.
    pub xdp_unavailable: Option<PortError>,
}

/// Opens `interface` as `kind`, with a pool for its MTU.
pub fn open_port(kind: PortKind, interface: &str) -> Result<OpenedPort, OpenError> {
    // An interface that cannot be asked is reported by the port's own open below.
    let pool = pool_for(interface_mtu(interface).unwrap_or(1500))?;
    let mut xdp_unavailable = None;
    if matches!(kind, PortKind::Auto | PortKind::AfXdp) {
        match AfXdpPort::open(interface, &pool, XdpConfig::default()) {
            Ok(p) => {
                let what = format!("AF_XDP ({})", p.mode());
                return Ok(OpenedPort {
                    port: Box::new(p),
                    what,
                    xdp_unavailable,
                });
            }
            Err(e) if kind == PortKind::AfXdp => return Err(e.into()),
            Err(e) => xdp_unavailable = Some(e),
        }
    }
    if kind == PortKind::Socket {
        let p = SocketPort::open(interface, &pool)?;
        return Ok(OpenedPort {
            port: Box::new(p),
            what: "AF_PACKET socket, one system call per frame".into(),
            xdp_unavailable,
        });
    }
    // Frame slots (TPACKET_V2): handed over one by one, as request/response wants.
    let p = AfPacketPort::open(interface, &pool, RingConfig::low_latency())?;
    Ok(OpenedPort {
        port: Box::new(p),
        what: "AF_PACKET (TPACKET_V2 frame ring)".into(),
        xdp_unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_follow_the_mtu() {
        assert_eq!(buffer_size_for(1500), 2048);
        assert_eq!(buffer_size_for(2048 - FRAME_OVERHEAD), 2048);
        assert_eq!(buffer_size_for(2048 - FRAME_OVERHEAD + 1), 4096);
        assert_eq!(buffer_size_for(9000), 4096);
        assert_eq!(pool_for(9000).unwrap().buf_size(), 4096);
    }
}
