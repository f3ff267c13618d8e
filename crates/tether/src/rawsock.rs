//! A minimal AF_PACKET socket for capture and replay: one recvmsg/sendto per frame,
//! with the VLAN tag the kernel stripped put back from PACKET_AUXDATA and kernel
//! receive timestamps from SO_TIMESTAMPNS. (The poll-mode ports of the data plane are
//! a separate, faster path; this one is for tools.)

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// asm-generic SO_TIMESTAMPNS (SO_TIMESTAMPNS_OLD), x86_64 and aarch64.
const SO_TIMESTAMPNS: libc::c_int = 35;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

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

pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

/// One received frame.
pub struct Received {
    /// Frame length in the buffer, the VLAN tag re-inserted when the kernel stripped it.
    pub len: usize,
    /// Kernel receive time in µs since the Unix epoch.
    pub time_us: u64,
}

fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error()).with_context(|| what.to_string())
    } else {
        Ok(ret)
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    what: &str,
) -> Result<()> {
    // SAFETY: `value` lives across the call and its size is passed; the fd is open.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(ret, what).map(|_| ())
}

impl RawSocket {
    /// Opens an AF_PACKET socket bound to `interface` that sees every EtherType.
    pub fn open(interface: &str) -> Result<RawSocket> {
        let name = CString::new(interface).context("interface name contains a NUL byte")?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface named {interface:?}");
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        let raw = check(raw, "opening an AF_PACKET socket (needs CAP_NET_RAW)")?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a properly initialised sockaddr_ll and its size is passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "binding the AF_PACKET socket")?;
        setsockopt_int(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            1,
            "enabling PACKET_AUXDATA",
        )?;
        setsockopt_int(
            &fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS,
            1,
            "enabling SO_TIMESTAMPNS",
        )?;
        Ok(RawSocket {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Waits up to `timeout` for a frame and reads it into `buf` (which must have 4
    /// bytes of room beyond the largest frame for the re-inserted tag).
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<Received>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e).context("poll on the AF_PACKET socket");
        }
        if ready == 0 {
            return Ok(None);
        }
        let room = buf.len().saturating_sub(4);
        let mut iov = libc::iovec {
            iov_base: buf[4..].as_mut_ptr() as *mut libc::c_void,
            iov_len: room,
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 64];
        // SAFETY: msghdr is plain data; all-zero is valid, the pointers are set below.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both alive and
        // sized as declared; MSG_TRUNC only changes the returned length.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("recvmsg on the AF_PACKET socket");
        }
        let n = (n as usize).min(room);
        let mut aux = None;
        let mut time_us = None;
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
                    time_us = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let time_us = time_us.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        });
        // The frame sits at buf[4..4 + n]; move the MACs forward to open a tag slot.
        match aux {
            Some(a) if a.tp_status & TP_STATUS_VLAN_VALID != 0 && n >= 12 => {
                let tpid = if a.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    a.tp_vlan_tpid
                } else {
                    0x8100
                };
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&a.tp_vlan_tci.to_be_bytes());
                Ok(Some(Received {
                    len: n + 4,
                    time_us,
                }))
            }
            _ => {
                buf.copy_within(4..4 + n, 0);
                Ok(Some(Received { len: n, time_us }))
            }
        }
    }

    /// Sends one whole Ethernet frame (tags included) out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        if frame.len() < 14 {
            bail!(
                "a {}-byte frame is shorter than an Ethernet header",
                frame.len()
            );
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sendto on the AF_PACKET socket");
        }
        if n as usize != frame.len() {
            bail!("short send: {n} of {} bytes", frame.len());
        }
        Ok(())
    }
}
