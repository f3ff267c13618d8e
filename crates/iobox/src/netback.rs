//! The box side of virtio-net: where a remote NIC's frames go and come from.
//!
//! Two [`NetBackend`]s for the virtio-net device model
//! (`endpoint::virtio::net`), both non-blocking, both passing the virtio-net header
//! ([`VNET_HDR_LEN`] bytes, `virtio_net_hdr_v1`, little-endian) so the guest's
//! checksum and segmentation offloads cross unchanged:
//!
//! - [`TapBackend`]: a TAP device (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), created if
//!   absent, brought up and put on a Linux bridge when the config names one. The
//!   kernel does the rest: what the guest did not negotiate (partial checksums,
//!   TSO/UFO) it resolves before the frame reaches the TAP (`TUNSETOFFLOAD`).
//! - [`PacketBackend`]: an AF_PACKET socket on a box interface, like macvtap: the box
//!   hands a real NIC to the pool. Promiscuous, `PACKET_VNET_HDR`, its own sends not
//!   looped back. The kernel strips 802.1Q tags on receive (docs: design.md); the
//!   backend puts them back, so the guest sees the frame as it was on the wire. What
//!   a TAP's kernel does for a guest without offloads (complete partial checksums,
//!   segment GSO frames: [`segment`]) it does itself.
//!
//! Frames wait in the kernel's bounded queues (the TAP's `txqueuelen`, the socket's
//! receive buffer), which drop and count when full; the backends' only queue is the
//! segments of one frame (at most [`MAX_SEGMENTS`]). What the backends themselves
//! drop or cut is counted in [`NetbackStats`].
//!
//! Every call here is a plain ioctl or socket call: no `ip`, no netlink.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use endpoint::virtio::net::{NetBackend, Offloads, VNET_HDR_LEN};
use thiserror::Error;

pub mod segment;

/// Longest interface name (IFNAMSIZ without its NUL).
pub const MAX_IFNAME: usize = 15;

/// `struct virtio_net_hdr` without `num_buffers`: what PACKET_VNET_HDR carries.
const PACKET_HDR_LEN: usize = 10;
/// Bytes of the 802.1Q tag the kernel strips on receive and the backend puts back.
const TAG_LEN: usize = 4;
/// Ethernet header without a tag.
const ETH_HLEN: usize = 14;

/// virtio-net header flags and GSO types (virtio 1.x, 5.1.6).
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const HDR_F_DATA_VALID: u8 = 2;
pub const HDR_GSO_NONE: u8 = 0;
pub const HDR_GSO_TCPV4: u8 = 1;
pub const HDR_GSO_UDP: u8 = 3;
pub const HDR_GSO_TCPV6: u8 = 4;
pub const HDR_GSO_UDP_L4: u8 = 5;
pub const HDR_GSO_ECN: u8 = 0x80;

/// The most frames one segmented frame becomes in [`PacketBackend`] (a 64 KiB TCP
/// frame at the smallest usual MSS, 536, is 123); more is dropped and counted.
pub const MAX_SEGMENTS: usize = 256;

const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const SIOCDEVPRIVATE: libc::c_ulong = 0x89f0;
/// The bridge's old private ioctl that lists its ports' interface indices.
const BRCTL_GET_PORT_LIST: libc::c_ulong = 7;
/// The most ports a Linux bridge has (BR_MAX_PORTS).
const BR_MAX_PORTS: usize = 1024;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// Why a backend could not be opened.
#[derive(Debug, Error)]
pub enum NetbackError {
    #[error("interface name {name:?} is longer than {MAX_IFNAME} bytes")]
    NameTooLong { name: String },
    #[error("{name:?} is not an interface name (empty, \".\", \"..\", or with '/', ':', whitespace or NUL)")]
    BadName { name: String },
    #[error("/dev/net/tun is missing: no TUN/TAP support in this kernel or container")]
    NoTunDevice,
    #[error("{what}: not permitted (needs root: CAP_NET_ADMIN for a TAP or a bridge, CAP_NET_RAW for a packet socket)")]
    NotPermitted { what: String },
    #[error("{name} exists and is not a TAP device")]
    NotATap { name: String },
    #[error("TAP {name} is already in use by another process")]
    TapBusy { name: String },
    #[error("no bridge {bridge} in this network namespace")]
    NoSuchBridge { bridge: String },
    #[error("{bridge} is not a Linux bridge")]
    NotABridge { bridge: String },
    #[error("{port} already belongs to another bridge or device, cannot join {bridge}")]
    BridgeBusy { port: String, bridge: String },
    #[error("no interface {name} in this network namespace")]
    NoSuchInterface { name: String },
    #[error("{op} on {name}: {source}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

impl NetbackError {
    /// An OS error of `op` on `name`: a permission error says so, the rest as is.
    fn os(op: &'static str, name: &str, source: io::Error) -> NetbackError {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => NetbackError::NotPermitted {
                what: format!("{op} on {name}"),
            },
            _ => NetbackError::Io {
                op,
                name: name.to_string(),
                source,
            },
        }
    }
}

/// What a backend moved, cut and dropped. "In" is from the network towards the guest
/// (`recv`), "out" from the guest to the network (`send`); bytes do not count the
/// virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NetbackStats {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Sends refused for now (the kernel's queue was full): the device keeps the
    /// frame and tries again, so these are stalls, not drops.
    pub tx_would_block: u64,
    /// Frames the kernel refused (a bad header or length from the guest, the link
    /// down): dropped.
    pub tx_errors: u64,
    /// Frames longer than the device's buffer, delivered cut.
    pub rx_truncated: u64,
    /// Frames dropped on the way in (PacketBackend): segmented (GSO) frames the guest
    /// did not negotiate and that could not be segmented here (UFO, bad headers, more
    /// than [`MAX_SEGMENTS`]), headers the kernel could not express.
    pub rx_dropped: u64,
    /// Segmented (GSO) frames the guest did not negotiate, cut into wire-sized frames
    /// here (PacketBackend; a TAP's kernel does this itself).
    pub rx_segmented: u64,
    /// Partial checksums the backend completed for a guest without GUEST_CSUM
    /// (PacketBackend; a TAP's kernel does this itself).
    pub rx_csum_completed: u64,
    /// Receive errors other than "nothing waiting".
    pub rx_errors: u64,
}

/// Checks an interface name the way the kernel does (`dev_valid_name`), before any
/// system call sees it.
pub fn check_ifname(name: &str) -> Result<(), NetbackError> {
    if name.len() > MAX_IFNAME {
        return Err(NetbackError::NameTooLong { name: name.into() });
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(NetbackError::BadName { name: name.into() });
    }
    Ok(())
}

/// `struct ifreq`: the name, then a 24-byte union (flags, ifindex, a pointer).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    /// An ifreq for `name` (checked by [`check_ifname`]: at most 15 bytes).
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = name.len().min(MAX_IFNAME);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_ptr(&mut self, p: *mut libc::c_void) {
        let n = mem::size_of::<usize>();
        self.data[..n].copy_from_slice(&(p as usize).to_ne_bytes());
    }
}

/// `ioctl(fd, request, &mut req)`.
fn ifreq_ioctl(fd: RawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `req` is a whole `struct ifreq` (40 bytes) alive for the call; every
    // request used here reads and writes only within it, or follows a pointer in it
    // that the caller keeps alive (BRCTL_GET_PORT_LIST).
    let r = unsafe { libc::ioctl(fd, request as _, req as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, request, value)` for requests that take an int by pointer.
fn int_ioctl(fd: RawFd, request: libc::c_ulong, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is an int alive for the call; the request reads one int.
    let r = unsafe { libc::ioctl(fd, request as _, &value as *const libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The kernel's index of `name` in the calling thread's network namespace.
fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// A datagram socket for interface ioctls, in the calling thread's namespace (and it
/// stays there, whichever thread uses it later).
fn ioctl_socket(name: &str) -> Result<OwnedFd, NetbackError> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(NetbackError::os(
            "opening a socket for interface ioctls",
            name,
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The interface's flags (SIOCGIFFLAGS; the low 16 bits: IFF_UP, IFF_RUNNING, ...).
fn if_flags(sock: RawFd, name: &str) -> io::Result<i16> {
    let mut req = IfReq::new(name);
    ifreq_ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req)?;
    Ok(req.flags())
}

/// Sets IFF_UP on the interface.
fn set_up(sock: RawFd, name: &str) -> Result<(), NetbackError> {
    let flags = if_flags(sock, name).map_err(|e| NetbackError::os("SIOCGIFFLAGS", name, e))?;
    if flags & libc::IFF_UP as i16 != 0 {
        return Ok(());
    }
    let mut req = IfReq::new(name);
    req.set_flags(flags | libc::IFF_UP as i16);
    ifreq_ioctl(sock, libc::SIOCSIFFLAGS as _, &mut req)
        .map_err(|e| NetbackError::os("bringing the link up", name, e))
}

/// Up and with carrier (IFF_UP and IFF_RUNNING: the kernel's operational state).
fn running(sock: RawFd, name: &str) -> bool {
    let want = (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    if_flags(sock, name).is_ok_and(|f| f & want == want)
}

/// How long a carrier reading stands: the device model asks every round of the box's
/// loop, and an ioctl each time would cost more than the round. Carrier changes reach
/// the kernel's flags later than this anyway (linkwatch).
pub const LINK_REFRESH: Duration = Duration::from_millis(20);

/// An interface's carrier, read through an ioctl socket at most every
/// [`LINK_REFRESH`].
struct Link {
    sock: OwnedFd,
    name: String,
    read_at: Cell<Option<Instant>>,
    up: Cell<bool>,
}

impl Link {
    fn new(sock: OwnedFd, name: &str) -> Link {
        Link {
            sock,
            name: name.into(),
            read_at: Cell::new(None),
            up: Cell::new(false),
        }
    }

    fn up(&self) -> bool {
        let now = Instant::now();
        if self
            .read_at
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= LINK_REFRESH)
        {
            self.up.set(running(self.sock.as_raw_fd(), &self.name));
            self.read_at.set(Some(now));
        }
        self.up.get()
    }
}

/// Whether interface `index` is a port of `bridge` (the bridge's port list).
fn bridge_has_port(sock: RawFd, bridge: &str, index: u32) -> io::Result<bool> {
    let mut ports = vec![0 as libc::c_int; BR_MAX_PORTS];
    let mut args: [libc::c_ulong; 4] = [
        BRCTL_GET_PORT_LIST,
        ports.as_mut_ptr() as libc::c_ulong,
        BR_MAX_PORTS as libc::c_ulong,
        0,
    ];
    let mut req = IfReq::new(bridge);
    req.set_ptr(args.as_mut_ptr() as *mut libc::c_void);
    // `ports` (BR_MAX_PORTS ints, the most the kernel writes) and `args` outlive the
    // call that follows the pointers.
    ifreq_ioctl(sock, SIOCDEVPRIVATE, &mut req)?;
    Ok(ports.iter().any(|&p| p > 0 && p as u32 == index))
}

/// The interface's MTU (SIOCGIFMTU).
fn if_mtu(sock: RawFd, name: &str) -> io::Result<i32> {
    let mut req = IfReq::new(name);
    ifreq_ioctl(sock, libc::SIOCGIFMTU as _, &mut req)?;
    Ok(req.int())
}

/// A TAP this backend made takes its bridge's MTU before it joins it (as libvirt
/// does): at the kernel's default of 1500 it would drop every larger frame the bridge
/// forwards to the guest, and lower the bridge's own MTU. A persistent TAP keeps the
/// MTU its owner gave it.
fn follow_bridge_mtu(sock: RawFd, bridge: &str, tap: &str) -> Result<(), NetbackError> {
    let want = if_mtu(sock, bridge).map_err(|e| NetbackError::os("SIOCGIFMTU", bridge, e))?;
    let have = if_mtu(sock, tap).map_err(|e| NetbackError::os("SIOCGIFMTU", tap, e))?;
    if want != have {
        let mut req = IfReq::new(tap);
        req.set_int(want);
        ifreq_ioctl(sock, libc::SIOCSIFMTU as _, &mut req)
            .map_err(|e| NetbackError::os("setting the TAP's MTU to its bridge's", tap, e))?;
    }
    Ok(())
}

/// Puts interface `port` (index `index`) on Linux bridge `bridge` (SIOCBRADDIF). A port
/// already on that bridge is fine (a persistent TAP from an earlier run).
fn add_to_bridge(sock: RawFd, bridge: &str, port: &str, index: u32) -> Result<(), NetbackError> {
    let mut req = IfReq::new(bridge);
    req.set_int(index as i32);
    match ifreq_ioctl(sock, SIOCBRADDIF, &mut req) {
        Ok(()) => Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENODEV) => Err(NetbackError::NoSuchBridge {
                bridge: bridge.into(),
            }),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Err(NetbackError::NotABridge {
                bridge: bridge.into(),
            }),
            Some(libc::EBUSY) => match bridge_has_port(sock, bridge, index) {
                Ok(true) => Ok(()),
                _ => Err(NetbackError::BridgeBusy {
                    port: port.into(),
                    bridge: bridge.into(),
                }),
            },
            _ => Err(NetbackError::os("adding a port to the bridge", bridge, e)),
        },
    }
}

/// The TUNSETOFFLOAD flags for what the guest takes. The kernel refuses segmentation
/// without checksum offload and ECN without TSO (as virtio does: GUEST_TSO4 needs
/// GUEST_CSUM, GUEST_ECN needs a TSO), so those are left out rather than failing.
pub fn tun_offload_flags(o: Offloads) -> libc::c_uint {
    if !o.csum {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if o.tso4 {
        f |= libc::TUN_F_TSO4;
    }
    if o.tso6 {
        f |= libc::TUN_F_TSO6;
    }
    if o.ecn && (o.tso4 || o.tso6) {
        f |= libc::TUN_F_TSO_ECN;
    }
    if o.ufo {
        f |= libc::TUN_F_UFO;
    }
    f
}

/// Sets `num_buffers` (the last two bytes of the header) to 1: one buffer per frame,
/// what a device without MRG_RXBUF reports; the device model rewrites it when it
/// merges buffers.
fn set_one_buffer(frame: &mut [u8]) {
    frame[PACKET_HDR_LEN..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
}

/// `send` calls have no use for frames shorter than a header and an Ethernet header.
fn check_frame(frame: &[u8]) -> io::Result<()> {
    if frame.len() < VNET_HDR_LEN + ETH_HLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte frame is shorter than the virtio-net and Ethernet headers",
                frame.len()
            ),
        ));
    }
    Ok(())
}

/// What a TAP backend is opened with (`box.toml`: `tap`, `bridge`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// The TAP's name; created if no interface has it.
    pub name: String,
    /// A Linux bridge (in the box's namespace) to put the TAP on.
    pub bridge: Option<String>,
}

/// A TAP device as a virtio-net backend.
///
/// Opening it attaches to the TAP `name`, creating it if absent, with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte little-endian header
/// (TUNSETVNETHDRSZ, TUNSETVNETLE), no offloads until [`NetBackend::set_offloads`],
/// non-blocking; brings it up and puts it on the bridge if one is named.
///
/// Lifetime: the backend never makes a TAP persistent. One it created is removed by
/// the kernel when its descriptor closes (the backend dropped, or the box killed), so
/// no run leaves one behind. A TAP that existed before (`ip tuntap add`, persistent) is
/// left as it was found, up and on its bridge, for the next run.
pub struct TapBackend {
    fd: OwnedFd,
    link: Link,
    name: String,
    index: u32,
    created: bool,
    stats: NetbackStats,
}

impl TapBackend {
    /// Opens (creating if absent) the TAP of `cfg` in the calling thread's network
    /// namespace.
    pub fn open(cfg: &TapConfig) -> Result<TapBackend, NetbackError> {
        let name = cfg.name.as_str();
        check_ifname(name)?;
        if let Some(b) = &cfg.bridge {
            check_ifname(b)?;
        }
        let existed = if_index(name).is_some();
        // SAFETY: a NUL-terminated path literal; the result is checked before use.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    NetbackError::NoTunDevice
                }
                _ => NetbackError::os("opening /dev/net/tun", name, e),
            });
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new(name);
        req.set_flags((libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16);
        if let Err(e) = ifreq_ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) {
            return Err(match e.raw_os_error() {
                Some(libc::EINVAL) if existed => NetbackError::NotATap { name: name.into() },
                Some(libc::EBUSY) => NetbackError::TapBusy { name: name.into() },
                _ => NetbackError::os(
                    if existed {
                        "attaching to the TAP"
                    } else {
                        "creating the TAP"
                    },
                    name,
                    e,
                ),
            });
        }
        int_ioctl(
            fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ as _,
            VNET_HDR_LEN as libc::c_int,
        )
        .map_err(|e| NetbackError::os("TUNSETVNETHDRSZ", name, e))?;
        int_ioctl(fd.as_raw_fd(), libc::TUNSETVNETLE as _, 1)
            .map_err(|e| NetbackError::os("TUNSETVNETLE", name, e))?;
        let sock = ioctl_socket(name)?;
        let index =
            if_index(name).ok_or_else(|| NetbackError::NoSuchInterface { name: name.into() })?;
        if let Some(b) = &cfg.bridge {
            if !existed && if_index(b).is_some() {
                follow_bridge_mtu(sock.as_raw_fd(), b, name)?;
            }
            add_to_bridge(sock.as_raw_fd(), b, name, index)?;
        }
        set_up(sock.as_raw_fd(), name)?;
        let mut tap = TapBackend {
            fd,
            link: Link::new(sock, name),
            name: name.into(),
            index,
            created: !existed,
            stats: NetbackStats::default(),
        };
        tap.set_offloads(Offloads::default())
            .map_err(|e| NetbackError::os("TUNSETOFFLOAD", name, e))?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TAP's interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether this backend created the TAP (and the kernel removes it when the
    /// backend goes).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn stats(&self) -> NetbackStats {
        self.stats
    }
}

impl NetbackStats {
    /// The counters by name, for the device's list (`tether ctl stats`).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("backend_frames_in", self.frames_in),
            ("backend_bytes_in", self.bytes_in),
            ("backend_frames_out", self.frames_out),
            ("backend_bytes_out", self.bytes_out),
            ("backend_tx_would_block", self.tx_would_block),
            ("backend_tx_errors", self.tx_errors),
            ("backend_rx_truncated", self.rx_truncated),
            ("backend_rx_dropped", self.rx_dropped),
            ("backend_rx_segmented", self.rx_segmented),
            ("backend_rx_csum_completed", self.rx_csum_completed),
            ("backend_rx_errors", self.rx_errors),
        ]
    }
}

impl NetBackend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if let Err(e) = check_frame(frame) {
            self.stats.tx_errors += 1;
            return Err(e);
        }
        // SAFETY: `frame` is valid for its length; the descriptor is ours and
        // non-blocking.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                self.stats.tx_would_block += 1;
            } else {
                self.stats.tx_errors += 1;
            }
            return Err(e);
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += (frame.len() - VNET_HDR_LEN) as u64;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if buf.len() < VNET_HDR_LEN + ETH_HLEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a receive buffer needs room for the virtio-net and Ethernet headers",
            ));
        }
        // The kernel returns what it copied, not the frame's length: one byte beyond
        // `buf` tells a frame that did not fit.
        let mut over = [0u8; 1];
        let iov = [
            libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            },
            libc::iovec {
                iov_base: over.as_mut_ptr() as *mut libc::c_void,
                iov_len: over.len(),
            },
        ];
        // SAFETY: both iovecs point at writable memory of their lengths (`buf`,
        // `over`), alive for the call; the descriptor is ours and non-blocking.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as _) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => {
                    self.stats.rx_errors += 1;
                    Err(e)
                }
            };
        }
        let n = n as usize;
        if n < VNET_HDR_LEN {
            self.stats.rx_dropped += 1;
            return Ok(None);
        }
        let len = n.min(buf.len());
        if n > len {
            self.stats.rx_truncated += 1;
        }
        set_one_buffer(buf);
        self.stats.frames_in += 1;
        self.stats.bytes_in += (len - VNET_HDR_LEN) as u64;
        Ok(Some(len))
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        let flags = tun_offload_flags(offloads);
        // SAFETY: TUNSETOFFLOAD takes its flags by value, not through a pointer.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Up with carrier (SIOCGIFFLAGS, read again after [`LINK_REFRESH`]): down when
    /// someone sets the TAP down.
    fn link_up(&self) -> bool {
        self.link.up()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats.counters()
    }
}

/// Mirror of the kernel's `struct tpacket_auxdata`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// An AF_PACKET socket on a box interface as a virtio-net backend, like macvtap: the
/// guest sends and receives on the interface's wire.
///
/// The socket is bound to the interface, promiscuous (a membership that ends with the
/// socket), with `PACKET_VNET_HDR` (the kernel's 10-byte header, widened to the
/// device's 12 here), `PACKET_AUXDATA` (the stripped VLAN tag, put back into the
/// frame) and `PACKET_IGNORE_OUTGOING` (the guest never hears its own frames), and
/// non-blocking.
///
/// A packet socket cannot tell the kernel what the guest accepts, so the backend does
/// what macvtap's kernel side would: a partial checksum for a guest without
/// GUEST_CSUM is completed here (`rx_csum_completed`); a segmented frame of a kind the
/// guest did not negotiate is segmented here ([`segment`]: TCP over IPv4/IPv6, UDP
/// GSO; `rx_segmented`), its segments handed out by the next calls before anything
/// new is read (so the device takes frames until `recv` says `None`, as the contract
/// has it); UFO frames (IP fragmentation) are dropped and counted (`rx_dropped`).
/// Like macvtap, the box's own stack does not reach the guest through the interface.
pub struct PacketBackend {
    fd: OwnedFd,
    link: Link,
    name: String,
    offloads: Offloads,
    stats: NetbackStats,
    /// The rest of a frame segmented here, at most [`MAX_SEGMENTS`], handed out
    /// before anything new is read.
    pending: VecDeque<Vec<u8>>,
}

fn sockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            value as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether a guest with `o` takes a frame of GSO type `gso` (ECN bit included).
pub fn gso_accepted(gso: u8, o: Offloads) -> bool {
    if gso & HDR_GSO_ECN != 0 && !o.ecn {
        return false;
    }
    match gso & !HDR_GSO_ECN {
        HDR_GSO_NONE => true,
        HDR_GSO_TCPV4 => o.tso4,
        HDR_GSO_TCPV6 => o.tso6,
        HDR_GSO_UDP => o.ufo,
        _ => false,
    }
}

/// Completes a partial checksum (CHECKSUM_PARTIAL): the ones' complement sum of
/// `frame[start..]`, whose checksum field at `start + offset` holds the pseudo-header
/// sum, stored at that field. False when the offsets do not fit the frame.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    if start > frame.len() || at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let mut sum: u64 = 0;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // A computed 0 goes out as 0xffff (UDP's "no checksum" is 0), as the kernel does.
    let csum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

impl PacketBackend {
    /// Opens the backend on `interface` in the calling thread's network namespace.
    pub fn open(interface: &str) -> Result<PacketBackend, NetbackError> {
        check_ifname(interface)?;
        let index = if_index(interface).ok_or_else(|| NetbackError::NoSuchInterface {
            name: interface.into(),
        })?;
        // Protocol 0: the socket takes no frames until it is bound, with its options
        // set, to the interface.
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(NetbackError::os(
                "opening an AF_PACKET socket",
                interface,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        let opt = |name: &'static str, opt: libc::c_int| {
            sockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, &one)
                .map_err(|e| NetbackError::os(name, interface, e))
        };
        opt("PACKET_VNET_HDR", PACKET_VNET_HDR)?;
        opt("PACKET_AUXDATA", libc::PACKET_AUXDATA)?;
        opt("PACKET_IGNORE_OUTGOING", PACKET_IGNORE_OUTGOING)?;
        if dataplane::sys::bind_packet(fd.as_raw_fd(), index).is_err() {
            return Err(NetbackError::os(
                "binding the AF_PACKET socket",
                interface,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: packet_mreq is plain data; all-zero is valid.
        let mut mreq: libc::packet_mreq = unsafe { mem::zeroed() };
        mreq.mr_ifindex = index as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        sockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
        )
        .map_err(|e| NetbackError::os("PACKET_MR_PROMISC", interface, e))?;
        Ok(PacketBackend {
            fd,
            link: Link::new(ioctl_socket(interface)?, interface),
            name: interface.into(),
            offloads: Offloads::default(),
            stats: NetbackStats::default(),
            pending: VecDeque::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> NetbackStats {
        self.stats
    }

    /// Copies a frame segmented here into `buf` (cut to it), counted.
    fn deliver(&mut self, frame: &[u8], buf: &mut [u8]) -> usize {
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        if n < frame.len() {
            self.stats.rx_truncated += 1;
        }
        self.stats.frames_in += 1;
        self.stats.bytes_in += n.saturating_sub(VNET_HDR_LEN) as u64;
        n
    }

    /// One recvmsg: the kernel's header into `buf[..10]`, the frame into
    /// `buf[12..]`. Returns the frame's whole length (even when cut) and the tag the
    /// kernel stripped, or `None` when nothing waits.
    fn recv_raw(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Option<[u8; 4]>)>> {
        let (hdr, rest) = buf.split_at_mut(PACKET_HDR_LEN);
        let body = &mut rest[VNET_HDR_LEN - PACKET_HDR_LEN..];
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: body.as_mut_ptr() as *mut libc::c_void,
                iov_len: body.len(),
            },
        ];
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; all-zero is valid; the pointers are set below.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, all alive and sized
        // as declared; MSG_TRUNC only changes the returned length.
        let n = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let mut tag = None;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
        // msg_controllen; the payload is read unaligned into a local copy.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let a = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const TpacketAuxdata);
                    if a.tp_status & TP_STATUS_VLAN_VALID != 0 {
                        let tpid = if a.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                            a.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        let [t0, t1] = tpid.to_be_bytes();
                        let [c0, c1] = a.tp_vlan_tci.to_be_bytes();
                        tag = Some([t0, t1, c0, c1]);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Some(((n as usize).saturating_sub(PACKET_HDR_LEN), tag)))
    }
}

/// Puts a stripped tag back into a received buffer (the frame at `buf[12..]`, `whole`
/// bytes long before it was cut to the buffer): the MACs stay, the tag follows them,
/// the rest moves 4 bytes on (its last 4 bytes falling off a full buffer), and the
/// header's `hdr_len` and `csum_start` move with it. Returns the buffer's length
/// (header included) and whether the frame was cut, or `None` when an offset would
/// overflow.
fn place_frame(buf: &mut [u8], whole: usize, tag: Option<[u8; 4]>) -> Option<(usize, bool)> {
    let room = buf.len() - VNET_HDR_LEN;
    let Some(t) = tag.filter(|_| whole >= 12) else {
        let len = whole.min(room);
        return Some((VNET_HDR_LEN + len, whole > len));
    };
    let tagged = whole.checked_add(TAG_LEN)?;
    let len = tagged.min(room);
    let macs_end = VNET_HDR_LEN + 12;
    if buf[0] & HDR_F_NEEDS_CSUM != 0 {
        // csum_start counts from the frame's start, now 4 bytes longer.
        let v = u16::from_le_bytes([buf[6], buf[7]]).checked_add(TAG_LEN as u16)?;
        buf[6..8].copy_from_slice(&v.to_le_bytes());
    }
    if buf[1] != HDR_GSO_NONE {
        // hdr_len (the headers' length) too.
        let v = u16::from_le_bytes([buf[2], buf[3]]).checked_add(TAG_LEN as u16)?;
        buf[2..4].copy_from_slice(&v.to_le_bytes());
    }
    buf.copy_within(macs_end..VNET_HDR_LEN + len - TAG_LEN, macs_end + TAG_LEN);
    buf[macs_end..macs_end + TAG_LEN].copy_from_slice(&t);
    Some((VNET_HDR_LEN + len, tagged > len))
}

impl NetBackend for PacketBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if let Err(e) = check_frame(frame) {
            self.stats.tx_errors += 1;
            return Err(e);
        }
        // The kernel's 10-byte header, then the frame: num_buffers stays behind.
        let iov = [
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: PACKET_HDR_LEN,
            },
            libc::iovec {
                iov_base: frame[VNET_HDR_LEN..].as_ptr() as *mut libc::c_void,
                iov_len: frame.len() - VNET_HDR_LEN,
            },
        ];
        // SAFETY: msghdr is plain data; all-zero is valid (no address: the socket is
        // bound to its interface).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: `msg` points at `iov`, which points into `frame`; the kernel only
        // reads through them during the call.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) {
                self.stats.tx_would_block += 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.stats.tx_errors += 1;
            return Err(e);
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += (frame.len() - VNET_HDR_LEN) as u64;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if buf.len() < VNET_HDR_LEN + ETH_HLEN + TAG_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a receive buffer needs room for the virtio-net header, an Ethernet header and a VLAN tag",
            ));
        }
        if let Some(next) = self.pending.pop_front() {
            return Ok(Some(self.deliver(&next, buf)));
        }
        // Frames the guest cannot take are skipped, a bounded number per call (the
        // descriptor stays readable for the rest).
        for _ in 0..64 {
            let (whole, tag) = match self.recv_raw(buf) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                // The kernel could not express the frame's offloads in a header: it
                // dropped the frame.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.stats.rx_dropped += 1;
                    continue;
                }
                Err(e) => {
                    self.stats.rx_errors += 1;
                    return Err(e);
                }
            };
            let Some((len, truncated)) = place_frame(buf, whole, tag) else {
                self.stats.rx_dropped += 1;
                continue;
            };
            set_one_buffer(buf);
            if !gso_accepted(buf[1], self.offloads) {
                let size = u16::from_le_bytes([buf[4], buf[5]]);
                match segment::segment(buf[1], size, &buf[VNET_HDR_LEN..len], MAX_SEGMENTS) {
                    Ok(segments) if !truncated => {
                        self.stats.rx_segmented += 1;
                        self.pending.extend(segments);
                        if let Some(first) = self.pending.pop_front() {
                            return Ok(Some(self.deliver(&first, buf)));
                        }
                    }
                    _ => self.stats.rx_dropped += 1,
                }
                continue;
            }
            if buf[0] & HDR_F_NEEDS_CSUM != 0 && !self.offloads.csum && !truncated {
                let cs = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
                let co = usize::from(u16::from_le_bytes([buf[8], buf[9]]));
                if !complete_checksum(&mut buf[VNET_HDR_LEN..len], cs, co) {
                    self.stats.rx_dropped += 1;
                    continue;
                }
                buf[0] &= !HDR_F_NEEDS_CSUM;
                buf[6..10].fill(0);
                self.stats.rx_csum_completed += 1;
            }
            if truncated {
                self.stats.rx_truncated += 1;
            }
            self.stats.frames_in += 1;
            self.stats.bytes_in += (len - VNET_HDR_LEN) as u64;
            return Ok(Some(len));
        }
        Ok(None)
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.offloads = offloads;
        Ok(())
    }

    /// The interface is up with carrier (IFF_RUNNING: operstate up; SIOCGIFFLAGS,
    /// read again after [`LINK_REFRESH`]).
    fn link_up(&self) -> bool {
        self.link.up()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_system_call() {
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname(&"t".repeat(15)).is_ok());
        let e = check_ifname(&"t".repeat(16)).unwrap_err();
        assert!(matches!(e, NetbackError::NameTooLong { .. }), "{e}");
        assert!(e.to_string().contains("longer than 15 bytes"), "{e}");
        for bad in ["", ".", "..", "a/b", "a b", "a:1", "a\0b"] {
            assert!(
                matches!(check_ifname(bad), Err(NetbackError::BadName { .. })),
                "{bad:?}"
            );
        }
        let e = TapBackend::open(&TapConfig {
            name: "x".repeat(16),
            bridge: None,
        })
        .err()
        .unwrap();
        assert!(matches!(e, NetbackError::NameTooLong { .. }));
        let e = TapBackend::open(&TapConfig {
            name: "ok0".into(),
            bridge: Some("br/0".into()),
        })
        .err()
        .unwrap();
        assert!(matches!(e, NetbackError::BadName { .. }));
        let e = PacketBackend::open("eth 0").err().unwrap();
        assert!(matches!(e, NetbackError::BadName { .. }));
    }

    #[test]
    fn offloads_map_to_the_flags_the_kernel_takes() {
        let all = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            ecn: true,
            ufo: true,
        };
        assert_eq!(tun_offload_flags(Offloads::default()), 0);
        assert_eq!(tun_offload_flags(all), 0x1f);
        // No segmentation without checksum offload.
        assert_eq!(tun_offload_flags(Offloads { csum: false, ..all }), 0);
        // ECN only with a TSO.
        let ecn_only = Offloads {
            csum: true,
            ecn: true,
            ..Offloads::default()
        };
        assert_eq!(tun_offload_flags(ecn_only), libc::TUN_F_CSUM);
        let tso6 = Offloads {
            csum: true,
            tso6: true,
            ecn: true,
            ..Offloads::default()
        };
        assert_eq!(
            tun_offload_flags(tso6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
    }

    #[test]
    fn segmented_frames_pass_only_when_negotiated() {
        let none = Offloads::default();
        let tso4 = Offloads {
            csum: true,
            tso4: true,
            ..none
        };
        assert!(gso_accepted(HDR_GSO_NONE, none));
        assert!(!gso_accepted(HDR_GSO_TCPV4, none));
        assert!(gso_accepted(HDR_GSO_TCPV4, tso4));
        assert!(!gso_accepted(HDR_GSO_TCPV6, tso4));
        assert!(!gso_accepted(HDR_GSO_TCPV4 | HDR_GSO_ECN, tso4));
        assert!(gso_accepted(
            HDR_GSO_TCPV4 | HDR_GSO_ECN,
            Offloads { ecn: true, ..tso4 }
        ));
        assert!(!gso_accepted(HDR_GSO_UDP, tso4));
        assert!(!gso_accepted(5, tso4), "UDP_L4 (USO) is never negotiated");
    }

    /// A UDP/IPv4 frame whose UDP checksum field holds the pseudo-header sum, as the
    /// stack leaves it for CHECKSUM_PARTIAL.
    fn partial_udp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        let ip_len = (20 + 8 + payload.len()) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&5678u16.to_be_bytes());
        let udp_len = (8 + payload.len()) as u16;
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(payload);
        let pseudo: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + u32::from(udp_len);
        let folded = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
        f[40..42].copy_from_slice(&folded.to_be_bytes());
        f
    }

    /// The UDP checksum over pseudo-header and datagram sums to 0xffff when right.
    fn udp_checksum_ok(f: &[u8]) -> bool {
        let udp = &f[34..];
        let mut sum: u64 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + udp.len() as u64;
        for w in udp.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn partial_checksums_are_completed_in_software() {
        for payload in [&b"hello, odd"[..], b"even", b""] {
            let mut f = partial_udp(payload);
            assert!(!udp_checksum_ok(&f));
            assert!(complete_checksum(&mut f, 34, 6));
            assert!(udp_checksum_ok(&f), "{payload:?}");
        }
        let mut f = partial_udp(b"x");
        let len = f.len();
        assert!(!complete_checksum(&mut f, len + 1, 0));
        assert!(!complete_checksum(&mut f, 34, len));
        assert!(!complete_checksum(&mut f, usize::MAX, 2));
        assert!(!complete_checksum(&mut f, 34, usize::MAX));
    }

    #[test]
    fn a_stripped_tag_goes_back_and_the_offsets_move_with_it() {
        let frame: Vec<u8> = (0..60u8).collect();
        let received = |room: usize, frame: &[u8]| {
            let mut buf = vec![0u8; 12 + room];
            let n = frame.len().min(room);
            buf[12..12 + n].copy_from_slice(&frame[..n]);
            buf
        };
        let mut buf = received(100, &frame);
        buf[0] = HDR_F_NEEDS_CSUM;
        buf[1] = HDR_GSO_TCPV4;
        buf[2..4].copy_from_slice(&54u16.to_le_bytes());
        buf[6..8].copy_from_slice(&34u16.to_le_bytes());
        let tag = [0x81, 0x00, 0x00, 0x14];
        assert_eq!(place_frame(&mut buf, 60, Some(tag)), Some((12 + 64, false)));
        assert_eq!(&buf[12..24], &frame[..12]);
        assert_eq!(&buf[24..28], &tag);
        assert_eq!(&buf[28..76], &frame[12..]);
        assert_eq!(u16::from_le_bytes([buf[2], buf[3]]), 58);
        assert_eq!(u16::from_le_bytes([buf[6], buf[7]]), 38);
        // Exactly full, then one byte short: the tag's room comes off the end.
        let mut buf = received(64, &frame);
        assert_eq!(place_frame(&mut buf, 60, Some(tag)), Some((76, false)));
        assert_eq!(&buf[28..76], &frame[12..]);
        let mut buf = received(63, &frame);
        assert_eq!(place_frame(&mut buf, 60, Some(tag)), Some((75, true)));
        assert_eq!(&buf[28..75], &frame[12..59]);
        // Untagged: an exact fit is not cut; one byte less is.
        let mut buf = received(60, &frame);
        assert_eq!(place_frame(&mut buf, 60, None), Some((72, false)));
        assert_eq!(&buf[12..72], &frame[..]);
        let mut buf = received(59, &frame);
        assert_eq!(place_frame(&mut buf, 60, None), Some((71, true)));
        // A runt keeps no tag; an offset that would overflow drops the frame.
        let mut buf = received(100, &frame[..10]);
        assert_eq!(place_frame(&mut buf, 10, Some(tag)), Some((22, false)));
        let mut buf = received(100, &frame);
        buf[0] = HDR_F_NEEDS_CSUM;
        buf[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(place_frame(&mut buf, 60, Some(tag)), None);
    }
}
