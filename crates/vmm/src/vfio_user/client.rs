//! A vfio-user client for tests (feature `fake`): it drives a
//! [`VfioUserServer`](super::VfioUserServer) over its socket as QEMU's `vfio-user-pci`
//! does (version, DMA mappings of guest RAM, config space and BARs by region and
//! offset, interrupt eventfds), so that tests of this crate and of others (the host
//! bridge's) reach a device the way a VMM would.
//!
//! Blocking: every call sends one request and waits for its reply, at most the
//! client's timeout ([`DEFAULT_TIMEOUT`] unless [`Client::set_timeout`] says
//! otherwise), so the server must be served by another thread meanwhile. Tests that
//! serve it on their own thread use the parts instead: [`Client::send`], serve, then
//! [`Client::wait_reply`]. Requests of the server (DMA_READ/DMA_WRITE, for mappings
//! without a descriptor) that arrive while a reply is awaited are kept, at most
//! [`MAX_SERVER_REQUESTS`], for [`Client::recv`]; the client never answers them by
//! itself.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::wire::{self, vfio, Body, Header, ProtocolError, HEADER_LEN};
use crate::sys;

/// How long a call waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests of the server kept while a reply is awaited: one more is an error.
pub const MAX_SERVER_REQUESTS: usize = 64;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("no message within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    /// The server answered with an error reply.
    #[error("command {command} refused: errno {errno}")]
    Refused { command: u16, errno: u32 },
    #[error("reply to command {command}: {what}")]
    BadReply { command: u16, what: &'static str },
    #[error("more than {MAX_SERVER_REQUESTS} requests of the server left unread")]
    Backlog,
}

/// DEVICE_GET_INFO's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub flags: u32,
    pub regions: u32,
    pub irqs: u32,
}

/// DEVICE_GET_REGION_INFO's answer (`flags`: `vfio::REGION_INFO_FLAG_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub flags: u32,
    pub size: u64,
}

/// DEVICE_GET_IRQ_INFO's answer (`flags`: `vfio::IRQ_INFO_*`; `count`: vectors
/// offered, 0 when the device has none of that kind or the server hides it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    pub flags: u32,
    pub count: u32,
}

/// One connection to a vfio-user server.
pub struct Client {
    sock: UnixStream,
    next_id: u16,
    timeout: Duration,
    /// Requests of the server that arrived while a reply was awaited.
    server_requests: VecDeque<(Header, Vec<u8>)>,
}

impl Client {
    /// Connects to the server listening at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let sock = UnixStream::connect(path)?;
        let mut c = Client {
            sock,
            next_id: 0,
            timeout: DEFAULT_TIMEOUT,
            server_requests: VecDeque::new(),
        };
        c.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(c)
    }

    /// How long a call waits for its reply, and one send or receive may block.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        sys::set_io_timeouts(self.sock.as_raw_fd(), timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// The socket, for tests that watch it or write to it directly.
    pub fn socket(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }

    /// Sends request `command` with `body` and `fds`, without waiting; returns its ID.
    pub fn send(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> Result<u16, ClientError> {
        self.next_id = self.next_id.wrapping_add(1);
        let m = wire::message(self.next_id, command, wire::flags::REQUEST, 0, body);
        sys::send_with_fds(self.sock.as_raw_fd(), &m, fds)?;
        Ok(self.next_id)
    }

    /// Sends `bytes` as they are, with `fds`: a test's malformed or partial message.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<(), ClientError> {
        Ok(sys::send_with_fds(self.sock.as_raw_fd(), bytes, fds)?)
    }

    /// The next message of the server: a request kept by an earlier call, or the next
    /// one off the socket, whatever it is (a reply too), within the timeout.
    pub fn recv(&mut self) -> Result<(Header, Vec<u8>), ClientError> {
        match self.server_requests.pop_front() {
            Some(m) => Ok(m),
            None => self.read_message(Instant::now() + self.timeout),
        }
    }

    /// Waits for the reply to request `id`, error replies included. Requests of the
    /// server that come first are kept for [`Client::recv`]; replies to other IDs
    /// (late ones) are skipped.
    pub fn wait_reply(&mut self, id: u16) -> Result<(Header, Vec<u8>), ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (h, body) = self.read_message(deadline)?;
            if h.is_reply() {
                if h.id == id {
                    return Ok((h, body));
                }
            } else if self.server_requests.len() >= MAX_SERVER_REQUESTS {
                return Err(ClientError::Backlog);
            } else {
                self.server_requests.push_back((h, body));
            }
        }
    }

    /// The next message off the socket, waiting for its start until `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Result<(Header, Vec<u8>), ClientError> {
        let fd = self.sock.as_raw_fd();
        // wait_readable reports nothing when a signal interrupts it: wait again.
        while !sys::wait_readable(&[fd], deadline.saturating_duration_since(Instant::now()))?[0] {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(self.timeout));
            }
        }
        // The server sends no descriptors; any that came are closed with this.
        let mut fds = Vec::new();
        let mut h = [0u8; HEADER_LEN];
        if !sys::recv_exact(fd, &mut h, &mut fds)? {
            return Err(ClientError::Closed);
        }
        let h = Header::parse(&h)?;
        let mut body = vec![0u8; h.body_len()];
        if !body.is_empty() && !sys::recv_exact(fd, &mut body, &mut fds)? {
            return Err(ClientError::Closed);
        }
        Ok((h, body))
    }

    /// Sends a request and waits for its reply; an error reply is
    /// [`ClientError::Refused`]. Returns the reply's body.
    pub fn call(
        &mut self,
        command: u16,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<Vec<u8>, ClientError> {
        let id = self.send(command, body, fds)?;
        let (h, body) = self.wait_reply(id)?;
        if h.flags & wire::flags::ERROR != 0 {
            return Err(ClientError::Refused {
                command,
                errno: h.error,
            });
        }
        Ok(body)
    }

    /// Answers the server's request `to` (a DMA_READ or DMA_WRITE) with `body`.
    pub fn reply(&mut self, to: &Header, body: &[u8]) -> Result<(), ClientError> {
        Ok(sys::send_all(
            self.sock.as_raw_fd(),
            &wire::reply(to, body),
        )?)
    }

    /// Refuses the server's request `to` with `errno`.
    pub fn reply_error(&mut self, to: &Header, errno: u32) -> Result<(), ClientError> {
        let m = wire::error_reply(to, errno);
        Ok(sys::send_all(self.sock.as_raw_fd(), &m)?)
    }

    /// VERSION 0.0, as QEMU offers it; returns the server's capabilities (JSON).
    pub fn negotiate(&mut self) -> Result<String, ClientError> {
        let caps = format!(
            "{{\"capabilities\":{{\"max_msg_fds\":{},\"max_data_xfer_size\":{}}}}}\0",
            wire::MAX_FDS,
            wire::MAX_DATA_XFER
        );
        let body = Body::default().u16(0).u16(0).bytes(caps.as_bytes()).0;
        let b = self.call(wire::cmd::VERSION, &body, &[])?;
        let bad = |what| ClientError::BadReply {
            command: wire::cmd::VERSION,
            what,
        };
        if b.len() < 4 || b[0..2] != [0, 0] {
            return Err(bad("not major version 0"));
        }
        let text = &b[4..];
        let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
        let caps = std::str::from_utf8(&text[..end]).map_err(|_| bad("capabilities not UTF-8"))?;
        Ok(caps.to_string())
    }

    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let body = Body::default().u32(16).u32(0).u32(0).u32(0).0;
        let b = self.call(wire::cmd::DEVICE_GET_INFO, &body, &[])?;
        let [flags, regions, irqs] = [4, 8, 12].map(|at| u32_at(&b, at));
        match (flags, regions, irqs) {
            (Some(flags), Some(regions), Some(irqs)) => Ok(DeviceInfo {
                flags,
                regions,
                irqs,
            }),
            _ => Err(short(wire::cmd::DEVICE_GET_INFO)),
        }
    }

    pub fn region_info(&mut self, index: u32) -> Result<RegionInfo, ClientError> {
        let command = wire::cmd::DEVICE_GET_REGION_INFO;
        let body = Body::default()
            .u32(32)
            .u32(0)
            .u32(index)
            .u32(0)
            .u64(0)
            .u64(0)
            .0;
        let b = self.call(command, &body, &[])?;
        let flags = u32_at(&b, 4).ok_or(short(command))?;
        let size = u64_at(&b, 16).ok_or(short(command))?;
        Ok(RegionInfo { flags, size })
    }

    /// Maps `size` bytes of guest RAM at `iova` from `fd` at `offset` (QEMU's
    /// memory-backend-memfd; see [`guest_memfd`]: the server takes only memfds that
    /// are or can be sealed against shrinking), readable and writable.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), ClientError> {
        let body = dma_map_body(iova, size, offset);
        self.call(wire::cmd::DMA_MAP, &body, &[fd.as_raw_fd()])
            .map(drop)
    }

    /// Maps `size` bytes at `iova` without a descriptor: the device's DMA there comes
    /// as DMA_READ/DMA_WRITE requests, for [`Client::recv`] and [`Client::reply`].
    pub fn dma_map_by_messages(&mut self, iova: u64, size: u64) -> Result<(), ClientError> {
        let body = dma_map_body(iova, size, 0);
        self.call(wire::cmd::DMA_MAP, &body, &[]).map(drop)
    }

    /// Unmaps the mappings inside `iova..iova + size`.
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), ClientError> {
        let body = Body::default().u32(24).u32(0).u64(iova).u64(size).0;
        self.call(wire::cmd::DMA_UNMAP, &body, &[]).map(drop)
    }

    /// Unmaps every mapping.
    pub fn dma_unmap_all(&mut self) -> Result<(), ClientError> {
        let all = vfio::DMA_UNMAP_FLAG_ALL;
        let body = Body::default().u32(24).u32(all).u64(0).u64(0).0;
        self.call(wire::cmd::DMA_UNMAP, &body, &[]).map(drop)
    }

    /// Reads `len` bytes of region `index` (BAR 0-5, config space
    /// `vfio::PCI_CONFIG_REGION`) at `offset`.
    pub fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let command = wire::cmd::REGION_READ;
        let body = Body::default().u64(offset).u32(index).u32(len).0;
        let mut b = self.call(command, &body, &[])?;
        if b.len() != 16 + len as usize {
            return Err(ClientError::BadReply {
                command,
                what: "not the bytes asked for",
            });
        }
        Ok(b.split_off(16))
    }

    /// Writes `data` to region `index` at `offset`.
    pub fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let len = u32::try_from(data.len()).map_err(|_| ProtocolError::TooMuchData(u32::MAX))?;
        let body = Body::default()
            .u64(offset)
            .u32(index)
            .u32(len)
            .bytes(data)
            .0;
        self.call(wire::cmd::REGION_WRITE, &body, &[]).map(drop)
    }

    /// Reads `len` bytes of config space at `offset`.
    pub fn config_read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        self.region_read(vfio::PCI_CONFIG_REGION, offset, len)
    }

    /// The config dword at `offset` (little-endian, as the device holds it).
    pub fn config_dword(&mut self, offset: u64) -> Result<u32, ClientError> {
        let b = self.config_read(offset, 4)?;
        u32_at(&b, 0).ok_or(short(wire::cmd::REGION_READ))
    }

    pub fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.region_write(vfio::PCI_CONFIG_REGION, offset, data)
    }

    /// What the server offers for interrupt `index` (`vfio::PCI_*_IRQ`).
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let command = wire::cmd::DEVICE_GET_IRQ_INFO;
        let body = Body::default().u32(16).u32(0).u32(index).u32(0).0;
        let b = self.call(command, &body, &[])?;
        match (u32_at(&b, 4), u32_at(&b, 12)) {
            (Some(flags), Some(count)) => Ok(IrqInfo { flags, count }),
            _ => Err(short(command)),
        }
    }

    /// DEVICE_SET_IRQS as it is: `flags` (`vfio::IRQ_SET_*`), interrupts
    /// `start..start + count` of `index`, `data` (one byte each with DATA_BOOL) and
    /// `fds` (with DATA_EVENTFD).
    pub fn set_irqs(
        &mut self,
        flags: u32,
        index: u32,
        (start, count): (u32, u32),
        data: &[u8],
        fds: &[RawFd],
    ) -> Result<(), ClientError> {
        let body = Body::default()
            .u32(20)
            .u32(flags)
            .u32(index)
            .u32(start)
            .u32(count)
            .bytes(data)
            .0;
        self.call(wire::cmd::DEVICE_SET_IRQS, &body, fds).map(drop)
    }

    /// Gives `fds` as the eventfds of interrupts `start..` of `index` (INTx: index
    /// `vfio::PCI_INTX_IRQ`, one; MSI, MSI-X), as QEMU does when the guest enables
    /// them. At most `wire::MAX_FDS` in one call.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let flags = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let count = u32::try_from(raw.len()).map_err(|_| ProtocolError::TooMuchData(u32::MAX))?;
        self.set_irqs(flags, index, (start, count), &[], &raw)
    }

    /// Takes every eventfd of `index` away (the device's MSI or MSI-X goes off).
    pub fn disable_irqs(&mut self, index: u32) -> Result<(), ClientError> {
        let flags = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER;
        self.set_irqs(flags, index, (0, 0), &[], &[])
    }

    /// Masks (`mask`) or unmasks interrupt `vector` of `index` (INTx: vector 0; an
    /// unmask is QEMU's end of interrupt without a resampler).
    pub fn mask_irq(&mut self, index: u32, vector: u32, mask: bool) -> Result<(), ClientError> {
        let action = if mask {
            vfio::IRQ_SET_ACTION_MASK
        } else {
            vfio::IRQ_SET_ACTION_UNMASK
        };
        self.set_irqs(
            vfio::IRQ_SET_DATA_NONE | action,
            index,
            (vector, 1),
            &[],
            &[],
        )
    }

    /// DEVICE_RESET (a function-level reset of the device).
    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.call(wire::cmd::DEVICE_RESET, &[], &[]).map(drop)
    }

    /// Closes the connection (the server drops its mappings and eventfds).
    pub fn close(self) -> Result<(), ClientError> {
        Ok(self.sock.shutdown(std::net::Shutdown::Both)?)
    }
}

/// A DMA_MAP body: `size` bytes at `iova`, readable and writable, at `offset` of the
/// descriptor (if one comes along).
fn dma_map_body(iova: u64, size: u64, offset: u64) -> Vec<u8> {
    let rw = vfio::DMA_MAP_FLAG_READ | vfio::DMA_MAP_FLAG_WRITE;
    Body::default()
        .u32(32)
        .u32(rw)
        .u64(offset)
        .u64(iova)
        .u64(size)
        .0
}

fn short(command: u16) -> ClientError {
    ClientError::BadReply {
        command,
        what: "too short",
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// How a memfd of guest RAM is sealed ([`guest_memfd_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seals {
    /// As QEMU's memory-backend-memfd makes it by default (`seal=on`): sealed
    /// against growing, shrinking and further seals.
    Qemu,
    /// Made with MFD_ALLOW_SEALING and no seal yet (the server seals it).
    Sealable,
    /// Made without MFD_ALLOW_SEALING, as QEMU's `seal=off` makes it: it can never be
    /// sealed (the server refuses it).
    Unsealable,
}

/// Guest RAM as QEMU's memory-backend-memfd makes it: a memfd of `len` bytes,
/// sealed against growing, shrinking and further seals (so the server maps it).
pub fn guest_memfd(len: u64) -> io::Result<OwnedFd> {
    guest_memfd_with(len, Seals::Qemu)
}

/// A memfd of `len` bytes of guest RAM, sealed as `seals` says.
pub fn guest_memfd_with(len: u64, seals: Seals) -> io::Result<OwnedFd> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too large"))?;
    let flags = match seals {
        Seals::Unsealable => libc::MFD_CLOEXEC,
        Seals::Qemu | Seals::Sealable => libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
    };
    // SAFETY: a plain system call; a valid result is a new descriptor we own.
    let fd = unsafe { libc::memfd_create(c"tether-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if seals == Seals::Qemu {
        let all = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, all) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Reads and clears an eventfd's count: how many signals it got since the last read
/// (0: none).
pub fn eventfd_count(fd: BorrowedFd<'_>) -> io::Result<u64> {
    if !sys::wait_readable(&[fd.as_raw_fd()], Duration::ZERO)?[0] {
        return Ok(0);
    }
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a live array.
    let r = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    if r == 8 {
        return Ok(u64::from_ne_bytes(v));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(0),
        _ if r >= 0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
        _ => Err(e),
    }
}

/// Waits up to `timeout` for an eventfd to be signalled, then reads and clears its
/// count (0: it was not signalled in time).
pub fn eventfd_wait(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<u64> {
    sys::wait_readable(&[fd.as_raw_fd()], timeout)?;
    eventfd_count(fd)
}
