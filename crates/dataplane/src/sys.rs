//! Linux AF_PACKET plumbing shared by the socket port and by tools (capture, replay):
//! opening a packet socket bound to an interface, receiving one frame with its VLAN
//! tag (which the kernel strips on receive and reports in PACKET_AUXDATA) and its
//! kernel timestamp, sending one frame, waiting for input; and the interface lookups
//! every kernel-backed port needs.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::port::PortError;

/// asm-generic SO_TIMESTAMPNS (SO_TIMESTAMPNS_OLD), x86_64 and aarch64.
const SO_TIMESTAMPNS: libc::c_int = 35;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

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

/// Binds the AF_PACKET socket `fd` to the interface of index `ifindex`, for every
/// protocol (ETH_P_ALL). A failure returns the OS error and leaves it in errno.
pub fn bind_packet(fd: RawFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is an initialised sockaddr_ll and its size is passed.
    let ret = unsafe {
        libc::bind(
            fd,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An AF_PACKET socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    name: String,
}

/// What `recv` learned about a frame besides its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvMeta {
    /// Bytes in the buffer (the re-inserted VLAN tag included).
    pub len: usize,
    /// The frame was longer than the buffer and was cut.
    pub truncated: bool,
    /// Kernel receive time in ns since the Unix epoch (0 when not asked for).
    pub time_ns: u64,
}

pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const SIOCGIFMTU: libc::c_ulong = 0x8921;
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;

/// `struct ifreq`: the name, then a 24-byte union (sockaddr for the hardware address,
/// int for the MTU).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(fd: RawFd, name: &str, request: libc::c_ulong) -> Result<IfReq, PortError> {
    let mut req = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: `req` is a properly sized ifreq for these two requests, alive for the call.
    let r = unsafe { libc::ioctl(fd, request as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(PortError::io("ioctl on the interface", name));
    }
    Ok(req)
}

/// The MAC address and MTU of `interface`, asked through `fd` (any socket of the
/// network namespace the interface is in that passes interface ioctls on: AF_PACKET,
/// AF_INET).
pub fn query_link(fd: RawFd, interface: &str) -> Result<([u8; 6], usize), PortError> {
    let hw = ifreq(fd, interface, SIOCGIFHWADDR)?;
    let mut mac = [0u8; 6];
    // sockaddr: 2 bytes of family, then the address.
    mac.copy_from_slice(&hw.data[2..8]);
    let m = ifreq(fd, interface, SIOCGIFMTU)?;
    let mtu = i32::from_ne_bytes([m.data[0], m.data[1], m.data[2], m.data[3]]);
    Ok((mac, mtu.max(0) as usize))
}

/// The kernel's index of `interface` in the current network namespace.
pub fn interface_index(interface: &str) -> Result<u32, PortError> {
    let name =
        CString::new(interface).map_err(|_| PortError::NoSuchInterface(interface.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(PortError::NoSuchInterface(interface.to_string())),
        i => Ok(i),
    }
}

impl PacketSocket {
    /// The interface's MAC address and MTU (asked through this socket, so they are
    /// those of the socket's network namespace).
    pub fn link_info(&self) -> Result<([u8; 6], usize), PortError> {
        query_link(self.fd(), &self.name)
    }
}

impl PacketSocket {
    /// Opens an AF_PACKET raw socket bound to `interface`, seeing every EtherType, with
    /// PACKET_AUXDATA on. `incoming_only` drops the copies of frames other sockets on
    /// this host send; `timestamps` asks for kernel receive times.
    pub fn open(
        interface: &str,
        incoming_only: bool,
        timestamps: bool,
    ) -> Result<PacketSocket, PortError> {
        let ifindex = interface_index(interface)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        if raw < 0 {
            return Err(PortError::io(
                "opening an AF_PACKET socket (needs CAP_NET_RAW)",
                interface,
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if bind_packet(fd.as_raw_fd(), ifindex).is_err() {
            return Err(PortError::io("binding the AF_PACKET socket", interface));
        }
        setsockopt_int(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)
            .map_err(|_| PortError::io("enabling PACKET_AUXDATA", interface))?;
        if timestamps {
            setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, SO_TIMESTAMPNS, 1)
                .map_err(|_| PortError::io("enabling SO_TIMESTAMPNS", interface))?;
        }
        if incoming_only {
            // Linux 4.20+; older kernels just keep delivering outgoing copies.
            let _ = setsockopt_int(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        }
        Ok(PacketSocket {
            fd,
            ifindex: ifindex as i32,
            name: interface.to_string(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for input; true when some is ready.
    pub fn wait(&self, timeout: Duration) -> bool {
        poll_in(self.fd(), timeout)
    }

    /// Receives one frame into `buf` without blocking (`None` when nothing is queued).
    /// A VLAN tag the kernel stripped is put back into the frame, so `buf` needs 4 bytes
    /// more than the largest frame.
    pub fn recv(&self, buf: &mut [u8]) -> Result<Option<RecvMeta>, PortError> {
        let room = buf.len().saturating_sub(4);
        let mut iov = libc::iovec {
            iov_base: buf[4..].as_mut_ptr() as *mut libc::c_void,
            iov_len: room,
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 32];
        // SAFETY: msghdr is plain data; all-zero is valid; the pointers are set below.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both alive and sized
        // as declared; MSG_TRUNC only changes the returned length.
        let n = unsafe { libc::recvmsg(self.fd(), &mut msg, libc::MSG_TRUNC | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(PortError::Io {
                    op: "recvmsg",
                    port: self.name.clone(),
                    source: e,
                }),
            };
        }
        let truncated = n as usize > room;
        let n = (n as usize).min(room);
        let mut aux = None;
        let mut time_ns = 0;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
        // msg_controllen; each payload is read unaligned into a local copy.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    aux = Some(std::ptr::read_unaligned(data as *const TpacketAuxdata));
                } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(data as *const libc::timespec);
                    time_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        // The frame sits at buf[4..4 + n]: move the MACs forward to open a tag slot.
        let len = match aux {
            Some(a) if a.tp_status & TP_STATUS_VLAN_VALID != 0 && n >= 12 => {
                let tpid = if a.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    a.tp_vlan_tpid
                } else {
                    0x8100
                };
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&a.tp_vlan_tci.to_be_bytes());
                n + 4
            }
            _ => {
                buf.copy_within(4..4 + n, 0);
                n
            }
        };
        Ok(Some(RecvMeta {
            len,
            truncated,
            time_ns,
        }))
    }

    /// Sends one whole Ethernet frame (tags included). `Ok(false)` when the kernel's
    /// queue is full.
    pub fn send(&self, frame: &[u8]) -> Result<bool, PortError> {
        if frame.len() < 14 {
            return Err(PortError::Setup(format!(
                "a {}-byte frame is shorter than an Ethernet header",
                frame.len()
            )));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                libc::MSG_DONTWAIT,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.kind(), io::ErrorKind::WouldBlock)
                || e.raw_os_error() == Some(libc::ENOBUFS)
            {
                return Ok(false);
            }
            return Err(PortError::Io {
                op: "sendto",
                port: self.name.clone(),
                source: e,
            });
        }
        Ok(true)
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn poll_in(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // ppoll, not poll: poll's millisecond timeout would turn every wait shorter than
    // 1 ms into a non-blocking check (a hidden busy loop) and round longer ones down.
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    let ready = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    ready > 0
}

/// A MAP_SHARED mapping of rings a socket shares with the kernel; unmapped on drop.
///
/// Only this crate makes one: its drop unmaps `base`, so a value built from any other
/// pointer would unmap memory it does not own. Outside the crate this does not
/// compile:
///
/// ```compile_fail
/// drop(dataplane::sys::SharedMapping {
///     base: std::ptr::null_mut(),
///     len: 4096,
/// });
/// ```
pub(crate) struct SharedMapping {
    pub(crate) base: *mut u8,
    pub(crate) len: usize,
}

// SAFETY: the mapping belongs to this value alone (made by `new`, unmapped by drop),
// and nothing in it is tied to the thread that made it. The raw pointer keeps the
// value and its owner (a port) `!Sync`, so one thread at a time reaches the memory
// from user space; the kernel's concurrent accesses go through the rings' atomic
// indices.
unsafe impl Send for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` at `offset`, read-write, with `flags` besides MAP_SHARED.
    pub fn new(fd: RawFd, len: usize, offset: u64, flags: libc::c_int) -> io::Result<Self> {
        // SAFETY: a fresh mapping with no address hint; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | flags,
                fd,
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMapping {
            base: base as *mut u8,
            len,
        })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: base/len are what mmap returned, and nothing uses them after drop.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETH_FLAG_TXVLAN: u32 = 1 << 7;
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// A datagram socket for interface ioctls in the current network namespace (AF_XDP
/// sockets do not answer them).
pub fn ioctl_socket(interface: &str) -> Result<OwnedFd, PortError> {
    // SAFETY: plain socket(2); checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(PortError::io(
            "opening a socket for interface ioctls",
            interface,
        ));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ethtool(fd: RawFd, interface: &str, cmd: u32, data: u32) -> Result<u32, PortError> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    let n = interface.len().min(15);
    req.name[..n].copy_from_slice(&interface.as_bytes()[..n]);
    req.data[..8].copy_from_slice(&(&mut value as *mut EthtoolValue as u64).to_ne_bytes());
    // SAFETY: the ifreq carries a pointer to `value`, an ethtool_value that outlives the
    // call, which is what ETHTOOL_GFLAGS/SFLAGS read and write.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(PortError::io("ethtool ioctl", interface));
    }
    Ok(value.data)
}

/// Switches an interface's VLAN offloads: `rx` is the NIC stripping the 802.1Q tag
/// into metadata on receive, `tx` the stack handing the tag to the device as metadata
/// on transmit (`ethtool -K IF rxvlan off txvlan off`). XDP runs before the stack
/// would put such a tag back, so a path to an AF_XDP port needs both off. Returns
/// whether anything changed. `None` leaves that offload as it is.
pub fn set_vlan_offload(
    interface: &str,
    rx: Option<bool>,
    tx: Option<bool>,
) -> Result<bool, PortError> {
    let sock = ioctl_socket(interface)?;
    let fd = sock.as_raw_fd();
    let old = ethtool(fd, interface, ETHTOOL_GFLAGS, 0)?;
    let mut new = old;
    for (want, flag) in [(rx, ETH_FLAG_RXVLAN), (tx, ETH_FLAG_TXVLAN)] {
        match want {
            Some(true) => new |= flag,
            Some(false) => new &= !flag,
            None => {}
        }
    }
    if new == old {
        return Ok(false);
    }
    ethtool(fd, interface, ETHTOOL_SFLAGS, new)?;
    Ok(true)
}
