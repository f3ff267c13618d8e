//! virtio-net (virtio 1.x, 5.1): the device's backend contract.
//!
//! The device model moves frames between its virtqueues (over DMA, like every
//! virtio device here) and a [`NetBackend`] of the box: a TAP device, a raw socket on
//! a box interface, or memory in tests. Frames cross the backend with the
//! virtio-net header in front ([`VNET_HDR_LEN`] bytes, the `virtio_net_hdr_v1` layout
//! VERSION_1 devices use), so offloads (checksum, segmentation) pass through unchanged
//! to a backend that takes them (a TAP with `IFF_VNET_HDR`).

use std::io;
use std::os::fd::RawFd;

/// Bytes of the virtio-net header in front of every frame (`virtio_net_hdr_v1`:
/// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers).
pub const VNET_HDR_LEN: usize = 12;

/// The offloads the driver negotiated that a backend can be told to accept from the
/// guest's side (TUNSETOFFLOAD's TUN_F_* for a TAP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// The guest takes frames with partial checksums (GUEST_CSUM).
    pub csum: bool,
    /// The guest takes TCP segmentation offload frames over IPv4 and IPv6, with ECN.
    pub tso4: bool,
    pub tso6: bool,
    pub ecn: bool,
    /// The guest takes UDP fragmentation offload frames.
    pub ufo: bool,
}

/// Where a virtio-net device's frames go and come from.
///
/// Every frame has the virtio-net header in front ([`VNET_HDR_LEN`] bytes). A backend
/// never blocks: `send` and `recv` return [`io::ErrorKind::WouldBlock`] (or `None`)
/// when they cannot go on now, and the device tries again when
/// [`NetBackend::wait_fd`] is readable or the driver gives it more.
pub trait NetBackend: Send {
    /// Sends one frame (header included). `WouldBlock` when the backend's queue is
    /// full: the device keeps the frame and tries again later.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Receives one frame (header included) into `buf`, returning its length; `None`
    /// when none waits. A frame longer than `buf` is cut to it.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Accepts frames with the offloads the driver negotiated for its receive side.
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;
    /// Whether the backend has carrier (the device reports link up).
    fn link_up(&self) -> bool {
        true
    }
    /// A descriptor that is readable when a frame waits (`None` for backends without
    /// one, which the device polls every round).
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }
}
