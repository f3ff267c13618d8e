//! A vfio-user server for one device: QEMU (`vfio-user-pci`) connects to a Unix socket
//! and drives the device through regions (config space, BARs), DMA mappings and
//! interrupt eventfds. The device is the host bridge's ([`RemoteFunction`]): the
//! bridge assigned its BARs in its own windows and set up its MSI-X table (and points
//! its MSI at itself when MSI is asked for), so BAR accesses by offset become TLPs at
//! those addresses, and the MSI and MSI-X messages the bridge receives become eventfd
//! signals.
//!
//! Config space is forwarded except what a VMM must not change under the bridge: BAR
//! and ROM registers are kept here ([`BarShadow`]: what the client wrote, masked by
//! the BAR's size, with the type bits, so that an all-ones write reads back the size
//! mask as on real hardware and in libvfio-user; cloud-hypervisor sizes BARs that way,
//! QEMU emulates the BARs the guest sees), MSI-X Message Control writes are dropped and
//! writes to the MSI capability too (SET_IRQS switches them on and off; QEMU emulates
//! both for the guest), and MSI offers one vector (Multiple Message Capable reads 0).
//!
//! Capabilities can be hidden from the client ([`VfioUserServer::hide_capabilities`]):
//! unlinked from the list it reads, and for MSI and MSI-X no vectors offered. `tether
//! vm` hides MSI-X from the QEMU versions that abort when a `vfio-user-pci` device
//! with MSI-X is unplugged; the guest's driver then uses MSI or INTx.
//!
//! One connection at a time; when it closes, its DMA mappings and eventfds go and the
//! server waits for the next one.
//!
//! The client is semi-trusted: the device's DMA honours the READ and WRITE flags of
//! each DMA_MAP ([`Permitted`]), a client holds at most [`wire::MAX_DMA_MAPS`]
//! mappings, guest RAM given by descriptor is mapped only when it is sealed against
//! shrinking (a memfd that allows it is sealed here), so that a mapping never raises
//! SIGBUS; a file that cannot be sealed (cloud-hypervisor's guest RAM) is served by
//! pread/pwrite on its descriptor instead, at most [`MAX_FILE_MAPS`] of them,
//! and the socket is non-blocking: messages are read as they come, replies the client
//! does not read wait in a bounded queue ([`MAX_UNREAD`]), and a client that leaves a
//! message half-sent or its replies unread for `sys::STALL_TIMEOUT` is dropped.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pci::regs;
use pci::{msi, msix, CapabilityId};
use rootcomplex::{HostMemory, ReadFault};
use thiserror::Error;

use super::wire::{
    self, errno, vfio, Body, Header, ProtocolError, Request, HEADER_LEN, MAX_DATA_XFER,
    MAX_DMA_MAPS,
};
use crate::bar_shadow::BarShadow;
use crate::caps::{self, CapPatch, NoAnswer};
use crate::device::{byte_enables, Bar, RemoteFunction};
use crate::guest_ram::{
    opened_for_writing, seal_against_shrinking, GuestRam, RamFaults, SealError, Sealed,
};
use crate::payload::PayloadShadow;
use crate::sys;

/// How long a DMA_READ/DMA_WRITE waits for the client's reply.
const DMA_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests of the client kept while the server waits for the reply to its own DMA
/// message (each at most a message's size).
const MAX_QUEUED: usize = 32;
/// Bytes of messages for the client (replies, DMA requests) that may wait for it to
/// read them: a message more and the client is dropped. Four of the largest replies
/// (a REGION_READ of `MAX_DATA_XFER`); QEMU reads its replies as they come, on its
/// own thread.
pub const MAX_UNREAD: usize = 4 * wire::MAX_MESSAGE;

/// Mappings of guest RAM that may shrink (served by pread/pwrite on a descriptor the
/// server keeps) one client may hold: each costs one of the bridge's descriptors. A
/// VMM maps each RAM region once (cloud-hypervisor: one per memory zone's region).
pub const MAX_FILE_MAPS: usize = 64;
/// Config space size offered (conventional PCI).
const CONFIG_SIZE: u64 = regs::CONVENTIONAL_END as u64;
/// Multiple Message Capable, in the MSI capability's first dword.
const MSI_MULTIPLE_CAPABLE: u32 = (msi::control::MULTIPLE_CAPABLE as u32) << 16;

#[derive(Debug, Error)]
pub enum VfioUserError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
}

/// Counters of the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VfioUserStats {
    pub connections: u64,
    pub disconnects: u64,
    pub requests: u64,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    pub dma_maps: u64,
    /// Mappings without a descriptor: the device's DMA there goes through
    /// DMA_READ/DMA_WRITE messages.
    pub dma_maps_without_fd: u64,
    /// Mappings whose memfd was not sealed against shrinking but allowed it: sealed
    /// here (F_SEAL_SHRINK), then mapped. (QEMU's memory-backend-memfd comes sealed.)
    pub dma_maps_sealed_here: u64,
    /// Mappings whose file is not sealed against shrinking and cannot be (a memfd
    /// made without MFD_ALLOW_SEALING, as cloud-hypervisor's guest RAM and QEMU's
    /// `seal=off`; a regular file; a descriptor opened read-only): served by
    /// pread/pwrite on the descriptor, which the server keeps. A shrink under it makes
    /// the device's DMA there fail (`dma_file_faults`), never SIGBUS.
    pub dma_maps_by_file: u64,
    /// The device's DMA into mappings served by file that failed (past the file's
    /// end after a shrink, or a write through a read-only descriptor).
    pub dma_file_faults: u64,
    /// DMA_MAPs of such files refused (ENOSPC) because the client held
    /// [`MAX_FILE_MAPS`] of them already (each holds one of the bridge's descriptors).
    pub dma_maps_unsealable: u64,
    /// DMA_MAPs refused (EINVAL) for their flags (neither READ nor WRITE, or other
    /// bits) or range (empty, or past 2^64).
    pub dma_maps_invalid: u64,
    /// DMA_MAPs refused (ENOSPC) because the client held `MAX_DMA_MAPS` already.
    pub dma_maps_over_limit: u64,
    /// The device's DMA writes into a mapping without WRITE: dropped, as a write to
    /// an unmapped address is (posted, so the device is not told).
    pub dma_write_to_readonly: u64,
    /// The device's DMA reads of a mapping without READ: refused, so the device gets
    /// an Unsupported Request completion, as for an unmapped address.
    pub dma_read_from_writeonly: u64,
    pub dma_unmaps: u64,
    pub dma_messages: u64,
    /// DMA_READ messages the client refused, answered wrongly or never answered: the
    /// device got an error completion (Unsupported Request), not data.
    pub dma_read_failures: u64,
    /// DMA_WRITE messages the client refused or never answered (the write is lost;
    /// posted, so the device is not told).
    pub dma_write_failures: u64,
    /// DMA messages the client did not answer within `DMA_REPLY_TIMEOUT` (counted in
    /// the failures above too).
    pub dma_timeouts: u64,
    /// Clients dropped for sending more than `MAX_QUEUED` requests while the server
    /// waited for the reply to a DMA message.
    pub queue_overflows: u64,
    /// Clients dropped for leaving more than `MAX_UNREAD` bytes of replies unread.
    pub unread_overflows: u64,
    /// Clients dropped for leaving a message half-sent, or their replies unread (the
    /// socket taking nothing), for `sys::STALL_TIMEOUT`.
    pub stalled_clients: u64,
    pub set_irqs: u64,
    pub intx_signals: u64,
    pub msi_signals: u64,
    pub msix_signals: u64,
    /// MSI or MSI-X vectors that arrived masked (delivered on unmask).
    pub vectors_pended: u64,
    pub resets: u64,
    /// Device-request interrupts sent (the device went away).
    pub release_requests: u64,
    /// Device Control writes whose Max Payload Size or Max Read Request Size was
    /// changed on the way to the device ([`crate::payload`]).
    pub devctl_adjusted: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

/// A message read from the client, with its descriptors.
type Message = (Header, Vec<u8>, Vec<OwnedFd>);

/// The connection, shared with the DMA regions that talk to the client. The socket
/// is non-blocking: nothing here waits for the client, except `call`, which waits for
/// the reply to a DMA message at most `DMA_REPLY_TIMEOUT`.
struct Channel {
    sock: OwnedFd,
    /// The message being read: `rx_got` bytes of `rx` so far (`rx` is the header's 16
    /// bytes until the header came, then the whole message), its descriptors, and
    /// when its last bytes came (`None` between messages).
    rx: Vec<u8>,
    rx_got: usize,
    rx_header: Option<Header>,
    rx_fds: Vec<OwnedFd>,
    rx_moved: Option<Instant>,
    /// Messages for the client that the socket has not taken yet: `tx_sent` bytes of
    /// the first went, `tx_bytes` in all are still to go; `tx_moved` is when the
    /// socket last took some (or the first was queued).
    tx: VecDeque<Vec<u8>>,
    tx_sent: usize,
    tx_bytes: usize,
    tx_moved: Instant,
    /// Requests that arrived while the server waited for a reply to its own request.
    queued: VecDeque<Message>,
    next_id: u16,
    closed: bool,
    /// DMA_READ/DMA_WRITE messages sent.
    dma_messages: u64,
    dma_read_failures: u64,
    dma_write_failures: u64,
    dma_timeouts: u64,
    queue_overflows: u64,
    unread_overflows: u64,
}

impl Channel {
    fn new(sock: OwnedFd) -> Channel {
        Channel {
            sock,
            rx: vec![0; HEADER_LEN],
            rx_got: 0,
            rx_header: None,
            rx_fds: Vec::new(),
            rx_moved: None,
            tx: VecDeque::new(),
            tx_sent: 0,
            tx_bytes: 0,
            tx_moved: Instant::now(),
            queued: VecDeque::new(),
            next_id: 0,
            closed: false,
            dma_messages: 0,
            dma_read_failures: 0,
            dma_write_failures: 0,
            dma_timeouts: 0,
            queue_overflows: 0,
            unread_overflows: 0,
        }
    }

    /// Adds this connection's counters to the server's.
    fn add_counters(&self, s: &mut VfioUserStats) {
        s.dma_messages += self.dma_messages;
        s.dma_read_failures += self.dma_read_failures;
        s.dma_write_failures += self.dma_write_failures;
        s.dma_timeouts += self.dma_timeouts;
        s.queue_overflows += self.queue_overflows;
        s.unread_overflows += self.unread_overflows;
    }

    /// Reads what the socket holds, without waiting, up to the end of the message
    /// being read (descriptors come with the first byte of what carried them, so
    /// those read belong to this message; one more than `MAX_FDS` are kept). `Ok(Some)`:
    /// a whole message; `Ok(None)`: not yet, or the client closed the connection
    /// between two messages (`closed` is then set); `Err`: the stream is broken
    /// (closed in the middle of a message, a header that cannot be framed) and the
    /// client must go.
    fn poll_message(&mut self) -> Result<Option<Message>, VfioUserError> {
        let fd = self.sock.as_raw_fd();
        loop {
            // Never empty here: a whole message returns below.
            let n = match sys::recv_with_fds(fd, &mut self.rx[self.rx_got..], &mut self.rx_fds) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            // More than a message may carry: the rest are closed now, and the
            // message, one over, is refused whole (Request::parse) once read.
            self.rx_fds.truncate(wire::MAX_FDS + 1);
            if n == 0 {
                if self.rx_got == 0 && self.rx_header.is_none() {
                    self.closed = true;
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the socket in the middle of a message",
                )
                .into());
            }
            self.rx_moved = Some(Instant::now());
            self.rx_got += n;
            if self.rx_got < self.rx.len() {
                continue;
            }
            if self.rx_header.is_none() {
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&self.rx[..HEADER_LEN]);
                // At most MAX_MESSAGE bytes (Header::parse checks).
                let h = Header::parse(&raw)?;
                self.rx_header = Some(h);
                if h.body_len() > 0 {
                    self.rx.resize(h.size as usize, 0);
                    continue;
                }
            }
            let Some(h) = self.rx_header.take() else {
                continue;
            };
            let body = self.rx.split_off(HEADER_LEN);
            self.rx_got = 0;
            self.rx_moved = None;
            return Ok(Some((h, body, std::mem::take(&mut self.rx_fds))));
        }
    }

    /// Sends what the socket takes now of the messages waiting for the client. Err:
    /// the client is gone.
    fn flush(&mut self) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        while let Some(front) = self.tx.front() {
            let len = front.len();
            let Some(n) = sys::send_now(fd, &front[self.tx_sent..])? else {
                break;
            };
            self.tx_moved = Instant::now();
            self.tx_sent += n;
            self.tx_bytes -= n;
            if self.tx_sent >= len {
                self.tx.pop_front();
                self.tx_sent = 0;
            }
        }
        Ok(())
    }

    /// Queues `msg` for the client and sends what the socket takes of it now. Err:
    /// the client is dropped (`closed`): gone, or it left more than `MAX_UNREAD` bytes
    /// unread.
    fn send(&mut self, msg: Vec<u8>) -> Result<(), VfioUserError> {
        if self.tx_bytes.saturating_add(msg.len()) > MAX_UNREAD {
            self.unread_overflows += 1;
            self.closed = true;
            return Err(io::Error::other("the client leaves its replies unread").into());
        }
        if self.tx.is_empty() {
            self.tx_moved = Instant::now();
        }
        self.tx_bytes += msg.len();
        self.tx.push_back(msg);
        self.flush().map_err(|e| {
            self.closed = true;
            e.into()
        })
    }

    /// Whether the client left a message half-sent (nothing more of it came), or
    /// its messages unread (the socket taking nothing), for longer than
    /// `sys::STALL_TIMEOUT`. Asked right after reading and sending what could be, so
    /// that a loop that was busy elsewhere does not take its own delay for the
    /// client's.
    fn stalled(&self, now: Instant) -> bool {
        let over = |since: Instant| now.saturating_duration_since(since) > sys::STALL_TIMEOUT;
        self.rx_moved.is_some_and(over) || (!self.tx.is_empty() && over(self.tx_moved))
    }

    /// Sends a request of ours and waits for its reply, keeping the client's requests
    /// that come meanwhile.
    fn call(
        &mut self,
        make: impl FnOnce(u16) -> Vec<u8>,
    ) -> Result<(Header, Vec<u8>), VfioUserError> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "client dropped").into());
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.dma_messages += 1;
        self.send(make(id))?;
        let deadline = Instant::now() + DMA_REPLY_TIMEOUT;
        loop {
            let polled = match self.flush() {
                Ok(()) => self.poll_message(),
                Err(e) => Err(e.into()),
            };
            match polled {
                Ok(Some((h, body, fds))) => {
                    if h.is_reply() && h.id == id {
                        return Ok((h, body));
                    }
                    // A late reply is skipped as any stray reply is.
                    if !h.is_reply() {
                        if self.queued.len() >= MAX_QUEUED {
                            // Dropping a request would leave the client waiting for its
                            // reply forever: the client goes instead (the server drops
                            // it next).
                            self.queue_overflows += 1;
                            self.closed = true;
                            return Err(
                                io::Error::other("too many requests while a DMA waited").into()
                            );
                        }
                        self.queued.push_back((h, body, fds));
                    }
                    continue;
                }
                Ok(None) if self.closed => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client gone").into());
                }
                Ok(None) => {}
                Err(e) => {
                    // The stream is out of step (or gone): the server drops the client.
                    self.closed = true;
                    return Err(e);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.dma_timeouts += 1;
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply").into());
            }
            sys::wait_ready(self.sock.as_raw_fd(), !self.tx.is_empty(), left)?;
        }
    }
}

/// DMA refused by a mapping's flags; shared by the server and its mappings.
#[derive(Debug, Default)]
struct Denials {
    writes: AtomicU64,
    reads: AtomicU64,
}

/// A DMA mapping as the client allowed it (DMA_MAP's READ and WRITE flags). A write
/// to a mapping without WRITE is dropped, as a write to an unmapped address is (the
/// root complex drops those; a write is posted, so the device is not told), and no
/// DMA_WRITE message goes to the client; a read of a mapping without READ fails, so
/// the root complex answers the device with an Unsupported Request completion, as
/// for an unmapped address. Both are counted.
struct Permitted {
    mem: Box<dyn HostMemory>,
    read: bool,
    write: bool,
    denials: Arc<Denials>,
}

impl HostMemory for Permitted {
    fn len(&self) -> u64 {
        self.mem.len()
    }

    /// For callers that cannot take an error: a refused read reads all-ones.
    fn read(&self, offset: u64, buf: &mut [u8]) {
        if self.try_read(offset, buf).is_err() {
            buf.fill(0xff);
        }
    }

    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadFault> {
        if !self.read {
            self.denials.reads.fetch_add(1, Ordering::Relaxed);
            return Err(ReadFault);
        }
        self.mem.try_read(offset, buf)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.write {
            self.denials.writes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.mem.write(offset, data)
    }
}

/// Why a DMA_MAP was refused: each is counted and answered with an errno.
#[derive(Debug, Error)]
enum MapRefusal {
    #[error("flags {0:#x}: READ, WRITE or both, and nothing else")]
    Flags(u32),
    #[error("{size:#x} bytes at {iova:#x}: empty, or past 2^64")]
    Range { iova: u64, size: u64 },
    #[error("{MAX_DMA_MAPS} mappings held already")]
    TooMany,
    #[error("guest RAM that may shrink ({0}), and {MAX_FILE_MAPS} such mappings held already")]
    Unsealable(SealError),
    #[error("mapping guest RAM: {0}")]
    Map(io::Error),
    #[error("no client")]
    NoClient,
    #[error("the device's memory map: {0}")]
    Device(String),
}

impl MapRefusal {
    fn errno(&self) -> u32 {
        match self {
            // As the kernel's vfio answers beyond its dma_entry_limit.
            MapRefusal::TooMany | MapRefusal::Unsealable(_) => errno::ENOSPC,
            _ => errno::EINVAL,
        }
    }
}

/// Guest memory that the client shared without a descriptor: every access is a
/// DMA_READ or DMA_WRITE message.
struct MessageDma {
    channel: Arc<Mutex<Channel>>,
    iova: u64,
    len: u64,
}

impl HostMemory for MessageDma {
    fn len(&self) -> u64 {
        self.len
    }

    /// For callers that cannot take an error: a failed read reads all-ones, as a CPU's
    /// read of a failed PCIe request does. The root complex uses `try_read`.
    fn read(&self, offset: u64, buf: &mut [u8]) {
        if self.try_read(offset, buf).is_err() {
            buf.fill(0xff);
        }
    }

    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadFault> {
        let mut ch = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        for (k, chunk) in buf.chunks_mut(MAX_DATA_XFER).enumerate() {
            let addr = self.address(offset, k);
            let n = chunk.len() as u32;
            let data = match ch.call(|id| wire::dma_read(id, addr, n)) {
                Ok((h, body)) if h.flags & wire::flags::ERROR == 0 => {
                    wire::dma_read_data(&body, chunk.len()).map(|d| chunk.copy_from_slice(d))
                }
                // The client refused, answered with the wrong size, or went away.
                _ => None,
            };
            if data.is_none() {
                ch.dma_read_failures += 1;
                return Err(ReadFault);
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut ch = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        for (k, chunk) in data.chunks(MAX_DATA_XFER).enumerate() {
            let addr = self.address(offset, k);
            // Waiting for the reply keeps the write ahead of a later interrupt.
            match ch.call(|id| wire::dma_write(id, addr, chunk)) {
                Ok((h, _)) if h.flags & wire::flags::ERROR == 0 => {}
                _ => ch.dma_write_failures += 1,
            }
        }
    }
}

impl MessageDma {
    /// The client's address of chunk `k` of an access at `offset`. The memory map
    /// checked `iova + len` when it took the region, and accesses stay inside it.
    fn address(&self, offset: u64, k: usize) -> u64 {
        self.iova + offset + (k * MAX_DATA_XFER) as u64
    }
}

#[derive(Default)]
struct Intx {
    fd: Option<OwnedFd>,
    /// Unmask by eventfd (QEMU's resampler under KVM).
    unmask_fd: Option<OwnedFd>,
    masked: bool,
    level: bool,
}

/// MSI or MSI-X, whichever the VMM set up (never both at once, as in the kernel's
/// vfio): an eventfd, a mask and a pending bit per vector.
#[derive(Default)]
struct Vectors {
    /// `vfio::PCI_MSI_IRQ` or `vfio::PCI_MSIX_IRQ`: which the state below is for.
    index: Option<u32>,
    fds: Vec<Option<OwnedFd>>,
    masked: Vec<bool>,
    pending: Vec<bool>,
    /// The device's MSI or MSI-X is on (some vector has an eventfd).
    enabled: bool,
}

/// The server: a listening socket and at most one client.
pub struct VfioUserServer {
    path: PathBuf,
    listener: OwnedFd,
    channel: Option<Arc<Mutex<Channel>>>,
    /// Offset of the MSI-X capability and its vector count, once read (`Some(None)`:
    /// the device has none; guest config reads must not walk the list each time).
    msix_cap: Option<Option<(u16, u16)>>,
    /// Offset of the MSI capability and its length, once read (as `msix_cap`).
    msi_cap: Option<Option<(u16, u16)>>,
    /// Capabilities the client is not shown ([`VfioUserServer::hide_capabilities`]).
    hidden: Vec<CapabilityId>,
    /// The capability list as the client reads it, once the device answered for it
    /// (`None`: not read yet, or read again after a change).
    cap_patch: Option<CapPatch>,
    intx: Intx,
    vectors: Vectors,
    /// The BAR registers as the client sees them (the device's hold the bridge's
    /// addresses); a new client or a reset finds them unassigned.
    bars: BarShadow,
    /// The Max Payload Size the guest sees ([`crate::payload`]).
    payload: PayloadShadow,
    /// The device-request eventfd: signalled to ask the VMM to release the device
    /// (QEMU then unplugs it from the guest).
    req: Option<OwnedFd>,
    /// The client's DMA mappings, (IOVA, size, served by file), as the device's
    /// memory map holds them: at most `MAX_DMA_MAPS`, of which at most
    /// [`MAX_FILE_MAPS`] by file.
    maps: Vec<(u64, u64, bool)>,
    /// Failed accesses of the mappings served by file.
    file_faults: RamFaults,
    /// DMA refused by the mappings' flags, shared with each of them.
    denials: Arc<Denials>,
    /// An eventfd that is always readable: among the descriptors to wait on while
    /// messages wait for the client to read them, so the loop does not sleep on them.
    ready: OwnedFd,
    stats: VfioUserStats,
}

fn listen(path: &Path) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    // SAFETY: a plain socket call; the result is checked and owned.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len as u32) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // Only its owner may connect (the VMM runs as the bridge's user); until now the
    // umask's mode applied, whose usual 022 gives nobody else write permission,
    // which connecting needs.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

impl VfioUserServer {
    /// Listens on `path` (an old socket file there is replaced).
    pub fn bind(path: &Path) -> io::Result<VfioUserServer> {
        Ok(VfioUserServer {
            path: path.to_path_buf(),
            listener: listen(path)?,
            channel: None,
            msix_cap: None,
            msi_cap: None,
            hidden: Vec::new(),
            cap_patch: None,
            intx: Intx::default(),
            vectors: Vectors::default(),
            bars: BarShadow::default(),
            payload: PayloadShadow::default(),
            req: None,
            maps: Vec::new(),
            file_faults: RamFaults::default(),
            denials: Arc::default(),
            ready: {
                let fd = sys::eventfd()?;
                sys::eventfd_signal(&fd)?;
                fd
            },
            stats: VfioUserStats::default(),
        })
    }

    pub fn stats(&self) -> VfioUserStats {
        let mut s = self.stats;
        s.devctl_adjusted = self.payload.adjusted();
        s.dma_write_to_readonly = self.denials.writes.load(Ordering::Relaxed);
        s.dma_read_from_writeonly = self.denials.reads.load(Ordering::Relaxed);
        s.dma_file_faults = self.file_faults.count();
        if let Some(c) = &self.channel {
            c.lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_counters(&mut s);
        }
        s
    }

    pub fn connected(&self) -> bool {
        self.channel.is_some()
    }

    /// Descriptors to wait on: the listener or the client, and an unmask eventfd;
    /// while messages wait for the client to read them, one that is always readable
    /// (the socket's becoming writable is not among what the loop waits for).
    pub fn wait_fds(&self) -> Vec<RawFd> {
        let mut v = match &self.channel {
            Some(c) => {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                let mut v = vec![c.sock.as_raw_fd()];
                if !c.tx.is_empty() {
                    v.push(self.ready.as_raw_fd());
                }
                v
            }
            None => vec![self.listener.as_raw_fd()],
        };
        v.extend(self.intx.unmask_fd.as_ref().map(|f| f.as_raw_fd()));
        v
    }

    /// The device changed (a box restart): its capabilities are read again.
    pub fn device_changed(&mut self) {
        self.msix_cap = None;
        self.msi_cap = None;
        self.cap_patch = None;
        self.payload.device_changed();
    }

    /// Hides the capabilities `ids` from clients (replacing any earlier set; empty:
    /// none hidden). A hidden capability is unlinked from the list a client reads
    /// through config space ([`CapPatch`]: the previous next pointer, or the
    /// Capabilities Pointer, skips it; Status's Capabilities List bit goes when
    /// nothing is left); its registers stay where they are, filtered as before. A
    /// hidden MSI or MSI-X offers 0 vectors in DEVICE_GET_IRQ_INFO and every
    /// DEVICE_SET_IRQS for it is refused (EINVAL), as the kernel's vfio does for a
    /// device without the capability: the guest's driver falls back to what is left
    /// (MSI, then INTx). `tether vm` hides MSI-X from the QEMU versions that abort
    /// when such a device is unplugged
    /// ([`QemuVersion::vfio_user_msix_unplug_aborts`](crate::qemu::QemuVersion::vfio_user_msix_unplug_aborts)).
    ///
    /// Meant to be called before a client connects: a client already connected may
    /// have read the list, or set up vectors, as they were.
    pub fn hide_capabilities(&mut self, ids: &[CapabilityId]) {
        self.hidden = ids.to_vec();
        self.cap_patch = None;
    }

    /// The capabilities hidden from clients.
    pub fn hidden_capabilities(&self) -> &[CapabilityId] {
        &self.hidden
    }

    /// Whether interrupt `index` (`vfio::PCI_MSI_IRQ`, `vfio::PCI_MSIX_IRQ`) is of a
    /// hidden capability.
    fn irq_hidden(&self, index: u32) -> bool {
        let id = match index {
            vfio::PCI_MSI_IRQ => CapabilityId::Msi,
            vfio::PCI_MSIX_IRQ => CapabilityId::MsiX,
            _ => return false,
        };
        self.hidden.contains(&id)
    }

    /// Accepts a client, handles what it sent (up to `max` requests). Returns how many
    /// requests were handled.
    pub fn serve(
        &mut self,
        dev: &mut dyn RemoteFunction,
        max: usize,
    ) -> Result<usize, VfioUserError> {
        if self.channel.is_none() {
            if !sys::wait_readable(&[self.listener.as_raw_fd()], Duration::ZERO)?[0] {
                return Ok(0);
            }
            // SAFETY: accept on our listening socket; the result is checked and owned.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error().into());
            }
            // SAFETY: a fresh descriptor from accept4.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            self.stats.connections += 1;
            self.channel = Some(Arc::new(Mutex::new(Channel::new(sock))));
        }
        self.poll_unmask();
        // What the socket did not take before goes first.
        if let Some(ch) = self.channel.clone() {
            if ch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush()
                .is_err()
            {
                self.disconnect(dev);
                return Ok(0);
            }
        }
        let mut n = 0;
        while n < max {
            let Some(ch) = self.channel.clone() else {
                break;
            };
            let msg = {
                let mut c = ch.lock().unwrap_or_else(|p| p.into_inner());
                match c.queued.pop_front() {
                    // A client dropped while a DMA waited: its queue is not served.
                    _ if c.closed => None,
                    Some(m) => Some(m),
                    None => match c.poll_message() {
                        Ok(Some(m)) => Some(m),
                        // The client closed the connection.
                        Ok(None) if c.closed => None,
                        // Nothing whole yet: the rest comes later.
                        Ok(None) => break,
                        // A message that cannot be framed leaves the stream out of
                        // step: the client is dropped, the server goes on.
                        Err(_) => {
                            self.stats.errors += 1;
                            None
                        }
                    },
                }
            };
            let Some((h, body, fds)) = msg else {
                self.disconnect(dev);
                break;
            };
            n += 1;
            if h.is_reply() {
                continue;
            }
            self.stats.requests += 1;
            let reply = match Request::parse(&h, &body, fds.len()) {
                Ok(r) => self.handle(&h, r, fds, dev),
                Err(_) => {
                    self.stats.errors += 1;
                    wire::error_reply(&h, errno::EINVAL)
                }
            };
            if h.flags & wire::flags::NO_REPLY == 0 {
                // Queued when the socket does not take it whole; a client that leaves
                // too much unread goes.
                let sent = ch.lock().unwrap_or_else(|p| p.into_inner()).send(reply);
                if sent.is_err() {
                    self.disconnect(dev);
                    break;
                }
            }
        }
        // Once read and sent what could be: a client that left a message half-sent,
        // or its replies unread, too long goes.
        if let Some(ch) = self.channel.clone() {
            if ch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stalled(Instant::now())
            {
                self.stats.stalled_clients += 1;
                self.disconnect(dev);
            }
        }
        Ok(n)
    }

    /// The client went away: its mappings and eventfds go; the next client starts
    /// from a clean state.
    fn disconnect(&mut self, dev: &mut dyn RemoteFunction) {
        if let Some(c) = self.channel.take() {
            let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
            c.add_counters(&mut self.stats);
            // A region still held elsewhere (another device of the VM mapped the same
            // guest RAM) fails its DMA messages at once rather than on the socket.
            c.closed = true;
        }
        self.stats.disconnects += 1;
        dev.clear_guest_ram();
        self.maps.clear();
        self.intx = Intx::default();
        self.vectors = Vectors::default();
        self.bars.reset();
        self.payload.reset();
        self.req = None;
        dev.set_msix(false);
        dev.set_msi(false);
    }

    /// The device is gone (its box died): asks the VMM to release it, through the
    /// device-request interrupt, if the VMM set one up. Returns whether it was asked.
    pub fn request_release(&mut self) -> bool {
        self.set_intx(false);
        match &self.req {
            Some(fd) if sys::eventfd_signal(fd).is_ok() => {
                self.stats.release_requests += 1;
                true
            }
            _ => false,
        }
    }

    fn handle(
        &mut self,
        h: &Header,
        r: Request,
        fds: Vec<OwnedFd>,
        dev: &mut dyn RemoteFunction,
    ) -> Vec<u8> {
        match self.handle_inner(r, fds, dev) {
            Ok(body) => wire::reply(h, &body),
            Err(e) => {
                self.stats.errors += 1;
                wire::error_reply(h, e)
            }
        }
    }

    fn handle_inner(
        &mut self,
        r: Request,
        mut fds: Vec<OwnedFd>,
        dev: &mut dyn RemoteFunction,
    ) -> Result<Vec<u8>, u32> {
        match r {
            Request::Version { major, minor, .. } => {
                if major != 0 {
                    return Err(errno::ENOTSUP);
                }
                let caps = format!(
                    "{{\"capabilities\":{{\"max_msg_fds\":{},\"max_data_xfer_size\":{},\"pgsizes\":4096,\"max_dma_maps\":{}}}}}\0",
                    wire::MAX_FDS,
                    MAX_DATA_XFER,
                    MAX_DMA_MAPS
                );
                Ok(Body::default().u16(0).u16(minor).bytes(caps.as_bytes()).0)
            }
            Request::DmaMap {
                flags,
                offset,
                iova,
                size,
            } => {
                self.stats.dma_maps += 1;
                match self.dma_map(flags, offset, iova, size, fds.pop(), dev) {
                    Ok(()) => Ok(Vec::new()),
                    Err(e) => {
                        match e {
                            MapRefusal::Flags(_) | MapRefusal::Range { .. } => {
                                self.stats.dma_maps_invalid += 1
                            }
                            MapRefusal::TooMany => self.stats.dma_maps_over_limit += 1,
                            MapRefusal::Unsealable(_) => self.stats.dma_maps_unsealable += 1,
                            MapRefusal::Map(_) | MapRefusal::NoClient | MapRefusal::Device(_) => {}
                        }
                        Err(e.errno())
                    }
                }
            }
            Request::DmaUnmap { flags, iova, size } => {
                self.stats.dma_unmaps += 1;
                if flags & vfio::DMA_UNMAP_FLAG_ALL != 0 {
                    dev.clear_guest_ram();
                    self.maps.clear();
                } else {
                    dev.unmap_guest_ram(iova, size);
                    // What the device's map lets go: the mappings wholly inside.
                    let end = iova.saturating_add(size);
                    self.maps
                        .retain(|&(b, len, _)| !(b >= iova && b.saturating_add(len) <= end));
                }
                Ok(Body::default().u32(24).u32(flags).u64(iova).u64(size).0)
            }
            Request::DeviceGetInfo => Ok(Body::default()
                .u32(16)
                .u32(vfio::DEVICE_FLAGS_PCI | vfio::DEVICE_FLAGS_RESET)
                .u32(vfio::PCI_NUM_REGIONS)
                .u32(vfio::PCI_NUM_IRQS)
                .0),
            Request::GetRegionInfo { index, .. } => {
                let rw = vfio::REGION_INFO_FLAG_READ | vfio::REGION_INFO_FLAG_WRITE;
                let (flags, size) = match index {
                    0..=5 => dev.bar(index as usize).map_or((0, 0), |b| (rw, b.size)),
                    vfio::PCI_CONFIG_REGION => (rw, CONFIG_SIZE),
                    6 | 8 => (0, 0),
                    _ => return Err(errno::EINVAL),
                };
                Ok(Body::default()
                    .u32(32)
                    .u32(flags)
                    .u32(index)
                    .u32(0)
                    .u64(size)
                    .u64(0)
                    .0)
            }
            Request::GetIrqInfo { index } => {
                let (flags, count) = match index {
                    vfio::PCI_INTX_IRQ => (
                        vfio::IRQ_INFO_EVENTFD
                            | vfio::IRQ_INFO_MASKABLE
                            | vfio::IRQ_INFO_AUTOMASKED,
                        1,
                    ),
                    vfio::PCI_MSI_IRQ | vfio::PCI_MSIX_IRQ => (
                        vfio::IRQ_INFO_EVENTFD | vfio::IRQ_INFO_MASKABLE | vfio::IRQ_INFO_NORESIZE,
                        self.vector_count(index, dev),
                    ),
                    vfio::PCI_REQ_IRQ => (vfio::IRQ_INFO_EVENTFD, 1),
                    i if i < vfio::PCI_NUM_IRQS => (0, 0),
                    _ => return Err(errno::EINVAL),
                };
                Ok(Body::default().u32(16).u32(flags).u32(index).u32(count).0)
            }
            Request::SetIrqs {
                flags,
                index,
                start,
                count,
                data,
            } => {
                self.stats.set_irqs += 1;
                self.set_irqs(flags, index, start, count, &data, fds, dev)?;
                Ok(Vec::new())
            }
            Request::RegionRead {
                offset,
                region,
                count,
            } => {
                let data = self.region_read(region, offset, count as usize, dev)?;
                Ok(Body::default()
                    .u64(offset)
                    .u32(region)
                    .u32(count)
                    .bytes(&data)
                    .0)
            }
            Request::RegionWrite {
                offset,
                region,
                data,
            } => {
                self.region_write(region, offset, &data, dev)?;
                Ok(Body::default()
                    .u64(offset)
                    .u32(region)
                    .u32(data.len() as u32)
                    .0)
            }
            Request::DeviceReset => {
                self.stats.resets += 1;
                self.intx.masked = false;
                self.intx.level = false;
                self.vectors.enabled = false;
                self.vectors.pending.iter_mut().for_each(|p| *p = false);
                dev.reset();
                // Unassigned again, as a real device's BARs after a reset.
                self.bars.reset();
                self.payload.reset();
                self.device_changed();
                Ok(Vec::new())
            }
            Request::Unsupported(_) => Err(errno::ENOTSUP),
        }
    }

    /// DMA_MAP: `size` bytes at `iova`, from `fd` at `offset` (guest RAM, mapped) or,
    /// without one, by DMA_READ/DMA_WRITE messages; the device's DMA there as `flags`
    /// allow. Checked before anything changes: the flags, the range (checked
    /// arithmetic), the number of mappings; then the file must be sealed against
    /// shrinking, or be sealed here (a memfd that allows it), so that the mapping
    /// never loses its pages under the bridge (SIGBUS).
    fn dma_map(
        &mut self,
        flags: u32,
        offset: u64,
        iova: u64,
        size: u64,
        fd: Option<OwnedFd>,
        dev: &mut dyn RemoteFunction,
    ) -> Result<(), MapRefusal> {
        let rw = vfio::DMA_MAP_FLAG_READ | vfio::DMA_MAP_FLAG_WRITE;
        if flags & !rw != 0 || flags & rw == 0 {
            return Err(MapRefusal::Flags(flags));
        }
        if size == 0 || iova.checked_add(size).is_none() {
            return Err(MapRefusal::Range { iova, size });
        }
        if self.maps.len() >= MAX_DMA_MAPS {
            return Err(MapRefusal::TooMany);
        }
        let read = flags & vfio::DMA_MAP_FLAG_READ != 0;
        let write = flags & vfio::DMA_MAP_FLAG_WRITE != 0;
        let mut by_file = false;
        let mem: Box<dyn HostMemory> = match fd {
            Some(fd) => match seal_against_shrinking(&fd) {
                Ok(sealed) => {
                    if sealed == Sealed::Now {
                        self.stats.dma_maps_sealed_here += 1;
                    }
                    // Read-only (PROT_READ) without WRITE. Nothing is counted in the
                    // faults: `Permitted` drops those writes before they get there.
                    let ram = GuestRam::map_sealed(&fd, offset, size, write, &RamFaults::default())
                        .map_err(MapRefusal::Map)?;
                    Box::new(ram)
                }
                Err(e) => {
                    // A file that may shrink is never mapped (a shrink would raise
                    // SIGBUS in the bridge): pread/pwrite on its descriptor, kept
                    // here, for a bounded number of them.
                    if self.maps.iter().filter(|m| m.2).count() >= MAX_FILE_MAPS {
                        return Err(MapRefusal::Unsealable(e));
                    }
                    // As a mapping with PROT_WRITE would be, WRITE on a descriptor
                    // opened read-only is refused, not left to fail at each DMA.
                    if write && !opened_for_writing(&fd).map_err(MapRefusal::Map)? {
                        return Err(MapRefusal::Map(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "WRITE asked of a descriptor opened read-only",
                        )));
                    }
                    let at = i64::try_from(offset).map_err(|_| MapRefusal::Range { iova, size })?;
                    let ram =
                        GuestRam::map(&fd, at, size, &self.file_faults).map_err(MapRefusal::Map)?;
                    by_file = true;
                    Box::new(ram)
                }
            },
            None => {
                let channel = self.channel.clone().ok_or(MapRefusal::NoClient)?;
                self.stats.dma_maps_without_fd += 1;
                Box::new(MessageDma {
                    channel,
                    iova,
                    len: size,
                })
            }
        };
        let mem = Box::new(Permitted {
            mem,
            read,
            write,
            denials: self.denials.clone(),
        });
        dev.map_guest_ram(iova, mem).map_err(MapRefusal::Device)?;
        self.maps.push((iova, size, by_file));
        self.stats.dma_maps_by_file += u64::from(by_file);
        Ok(())
    }

    /// Where the MSI-X capability is and its vector count; `Ok(None)`: the device has
    /// none; `Err`: the device did not answer (nothing is remembered then).
    fn msix_info(&mut self, dev: &mut dyn RemoteFunction) -> Result<Option<(u16, u16)>, NoAnswer> {
        cap_info(&mut self.msix_cap, dev, CapabilityId::MsiX, msix::vectors)
    }

    /// Where the MSI capability is and how many bytes it spans (12 or 16 by address
    /// width, 8 more with per-vector masking); as `msix_info`.
    fn msi_info(&mut self, dev: &mut dyn RemoteFunction) -> Result<Option<(u16, u16)>, NoAnswer> {
        cap_info(&mut self.msi_cap, dev, CapabilityId::Msi, msi::len)
    }

    /// Vectors offered for irq `index` (MSI: one, whatever the device can do; none of
    /// a hidden capability).
    fn vector_count(&mut self, index: u32, dev: &mut dyn RemoteFunction) -> u32 {
        if self.irq_hidden(index) {
            return 0;
        }
        match index {
            // Unknown (the device does not answer): none offered.
            vfio::PCI_MSI_IRQ => self.msi_info(dev).ok().flatten().map_or(0, |_| 1),
            vfio::PCI_MSIX_IRQ => {
                let info = self.msix_info(dev).ok().flatten();
                info.map_or(0, |(_, n)| n as u32)
            }
            _ => 0,
        }
    }

    fn config_dword(&mut self, register: u16, dev: &mut dyn RemoteFunction) -> u32 {
        if let Some(shadowed) = self.bars.read(dev, register) {
            return shadowed;
        }
        let Some(v) = dev.config_read(register) else {
            return u32::MAX;
        };
        let v = if self.hidden.is_empty() {
            v
        } else {
            let patch = match &mut self.cap_patch {
                Some(p) => p,
                slot @ None => match CapPatch::compute(dev, &self.hidden) {
                    Ok(p) => slot.insert(p),
                    // The list could not be read: nothing of it is shown, lest a
                    // hidden capability's link be.
                    Err(NoAnswer) => return u32::MAX,
                },
            };
            patch.apply(register, v)
        };
        let v = self.payload.read(dev, register, v);
        match self.msi_info(dev).ok().flatten() {
            // One vector: the bridge routes one message per device.
            Some((cap, _)) if cap == register => v & !MSI_MULTIPLE_CAPABLE,
            _ => v,
        }
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        count: usize,
        dev: &mut dyn RemoteFunction,
    ) -> Result<Vec<u8>, u32> {
        match region {
            vfio::PCI_CONFIG_REGION => {
                let mut at = region_range(offset, count, CONFIG_SIZE)?.start;
                self.stats.config_reads += 1;
                let mut out = Vec::with_capacity(count);
                while out.len() < count {
                    // Below CONFIG_SIZE (checked above): the u16 holds it.
                    let reg = at as u16 & !3;
                    let d = self.config_dword(reg, dev).to_le_bytes();
                    let lead = (at & 3) as usize;
                    let n = (4 - lead).min(count - out.len());
                    out.extend_from_slice(&d[lead..lead + n]);
                    at += n as u64;
                }
                Ok(out)
            }
            0..=5 => {
                let b = dev.bar(region as usize).ok_or(errno::EINVAL)?;
                let mut at = bar_address(b, region_range(offset, count, b.size)?)?;
                self.stats.bar_reads += 1;
                let mut out = Vec::with_capacity(count);
                while out.len() < count {
                    // One request per 4 KiB page.
                    let n = (4096 - (at & 4095) as usize).min(count - out.len());
                    out.extend_from_slice(&dev.mem_read(at, n));
                    at += n as u64;
                }
                Ok(out)
            }
            _ => Err(errno::EINVAL),
        }
    }

    fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
        dev: &mut dyn RemoteFunction,
    ) -> Result<(), u32> {
        match region {
            vfio::PCI_CONFIG_REGION => {
                let mut at = region_range(offset, data.len(), CONFIG_SIZE)?.start;
                // What must not be written is known only once the device answered:
                // until then nothing is written.
                let msix = self.msix_info(dev).map_err(|NoAnswer| errno::EIO)?;
                let msi = self.msi_info(dev).map_err(|NoAnswer| errno::EIO)?;
                let msix_control = msix.map(|(cap, _)| cap);
                let msi = msi.map(|(cap, len)| cap..cap + len);
                self.stats.config_writes += 1;
                let mut rest = data;
                while !rest.is_empty() {
                    // Below CONFIG_SIZE (checked above): the u16 holds it.
                    let reg = at as u16 & !3;
                    let lead = (at & 3) as usize;
                    let n = (4 - lead).min(rest.len());
                    let mut word = [0u8; 4];
                    word[lead..lead + n].copy_from_slice(&rest[..n]);
                    let mut be = byte_enables(lead, n);
                    if self.bars.write(reg, u32::from_le_bytes(word), be) {
                        // A BAR or ROM register: kept here, never the device's.
                        be = 0;
                    }
                    if Some(reg) == msix_control {
                        // Message Control (bytes 2-3): SET_IRQS decides.
                        be &= 0b0011;
                    }
                    if msi.as_ref().is_some_and(|m| m.contains(&reg)) {
                        // The guest's address and data are QEMU's business; the
                        // device's MSI points at the bridge, on when SET_IRQS says.
                        be = 0;
                    }
                    if be != 0 {
                        // Device Control's Max Payload Size stays the fabric's.
                        let word = u32::from_le_bytes(word);
                        if let Some((v, be)) = self.payload.write(dev, reg, word, be) {
                            dev.config_write(reg, v, be);
                        }
                    }
                    at += n as u64;
                    rest = &rest[n..];
                }
                Ok(())
            }
            0..=5 => {
                let b = dev.bar(region as usize).ok_or(errno::EINVAL)?;
                let mut at = bar_address(b, region_range(offset, data.len(), b.size)?)?;
                self.stats.bar_writes += 1;
                let mut rest = data;
                while !rest.is_empty() {
                    let n = (4096 - (at & 4095) as usize).min(rest.len());
                    dev.mem_write(at, &rest[..n]);
                    at += n as u64;
                    rest = &rest[n..];
                }
                Ok(())
            }
            _ => Err(errno::EINVAL),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn set_irqs(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: Vec<OwnedFd>,
        dev: &mut dyn RemoteFunction,
    ) -> Result<(), u32> {
        let action = flags
            & (vfio::IRQ_SET_ACTION_MASK
                | vfio::IRQ_SET_ACTION_UNMASK
                | vfio::IRQ_SET_ACTION_TRIGGER);
        let eventfds = flags & vfio::IRQ_SET_DATA_EVENTFD != 0;
        let booleans = flags & vfio::IRQ_SET_DATA_BOOL != 0;
        // Every descriptor is an eventfd, or nothing changes.
        let fds = fds
            .into_iter()
            .map(sys::adopt_eventfd)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| errno::EINVAL)?;
        // Which of start..start+count the action applies to.
        let chosen = |i: u32| !booleans || data.get(i as usize).is_some_and(|&b| b != 0);
        match (index, action) {
            (vfio::PCI_INTX_IRQ, vfio::IRQ_SET_ACTION_TRIGGER) => {
                if start != 0 || count > 1 {
                    return Err(errno::EINVAL);
                }
                self.intx.fd = if eventfds {
                    fds.into_iter().next()
                } else {
                    None
                };
                if self.intx.level && !self.intx.masked {
                    self.signal_intx();
                }
            }
            (vfio::PCI_INTX_IRQ, vfio::IRQ_SET_ACTION_UNMASK) => {
                if eventfds {
                    self.intx.unmask_fd = fds.into_iter().next();
                } else if count == 1 && chosen(0) {
                    self.unmask_intx();
                }
            }
            (vfio::PCI_INTX_IRQ, vfio::IRQ_SET_ACTION_MASK) => {
                if count == 1 && chosen(0) {
                    self.intx.masked = true;
                }
            }
            (vfio::PCI_MSI_IRQ | vfio::PCI_MSIX_IRQ, _) if self.irq_hidden(index) => {
                // Not even turning it off: the client was told of no such vectors.
                return Err(errno::EINVAL);
            }
            (vfio::PCI_MSI_IRQ | vfio::PCI_MSIX_IRQ, _) => {
                let vectors = self.vector_count(index, dev);
                if start.checked_add(count).is_none_or(|e| e > vectors) {
                    return Err(errno::EINVAL);
                }
                let v = &mut self.vectors;
                if v.index != Some(index) {
                    if v.enabled {
                        // The other kind is on: turning this one off is all that
                        // makes sense.
                        return match (action, count) {
                            (vfio::IRQ_SET_ACTION_TRIGGER, 0) => Ok(()),
                            _ => Err(errno::EINVAL),
                        };
                    }
                    *v = Vectors {
                        index: Some(index),
                        ..Vectors::default()
                    };
                }
                let n = vectors as usize;
                v.fds.resize_with(n, || None);
                v.masked.resize(n, false);
                v.pending.resize(n, false);
                match action {
                    vfio::IRQ_SET_ACTION_TRIGGER => {
                        if count == 0 && !eventfds {
                            v.fds.iter_mut().for_each(|f| *f = None);
                        } else {
                            let mut given = fds.into_iter();
                            for i in start..start + count {
                                if eventfds {
                                    self.vectors.fds[i as usize] = given.next();
                                } else if chosen(i - start) {
                                    // DATA_NONE/BOOL: fire the vector now (a test).
                                    self.vector(i as u16);
                                }
                            }
                        }
                        let v = &mut self.vectors;
                        let on = v.fds.iter().any(Option::is_some);
                        if on != v.enabled {
                            v.enabled = on;
                            if index == vfio::PCI_MSI_IRQ {
                                dev.set_msi(on);
                            } else {
                                dev.set_msix(on);
                            }
                        }
                    }
                    vfio::IRQ_SET_ACTION_MASK | vfio::IRQ_SET_ACTION_UNMASK => {
                        let mask = action == vfio::IRQ_SET_ACTION_MASK;
                        for i in start..start + count {
                            if chosen(i - start) {
                                self.vectors.masked[i as usize] = mask;
                                if !mask && std::mem::take(&mut self.vectors.pending[i as usize]) {
                                    self.vector(i as u16);
                                }
                            }
                        }
                    }
                    _ => return Err(errno::EINVAL),
                }
            }
            (vfio::PCI_REQ_IRQ, vfio::IRQ_SET_ACTION_TRIGGER) => {
                if start != 0 || count > 1 {
                    return Err(errno::EINVAL);
                }
                self.req = if eventfds {
                    fds.into_iter().next()
                } else {
                    None
                };
            }
            // Error interrupts are not offered: only turning them off is accepted.
            (_, vfio::IRQ_SET_ACTION_TRIGGER) if count == 0 && index < vfio::PCI_NUM_IRQS => {}
            _ => return Err(errno::EINVAL),
        }
        Ok(())
    }

    fn signal_intx(&mut self) {
        if let Some(fd) = &self.intx.fd {
            if sys::eventfd_signal(fd).is_ok() {
                self.stats.intx_signals += 1;
                // Automasked until the client unmasks.
                self.intx.masked = true;
            }
        }
    }

    fn unmask_intx(&mut self) {
        self.intx.masked = false;
        if self.intx.level {
            self.signal_intx();
        }
    }

    fn poll_unmask(&mut self) {
        let taken = self
            .intx
            .unmask_fd
            .as_ref()
            .is_some_and(|fd| sys::eventfd_take(fd).unwrap_or(false));
        if taken {
            self.unmask_intx();
        }
    }

    /// The device's INTx line changed.
    pub fn set_intx(&mut self, asserted: bool) {
        let rising = asserted && !self.intx.level;
        self.intx.level = asserted;
        if rising && !self.intx.masked {
            self.signal_intx();
        }
    }

    /// The device sent vector `v` (of MSI or MSI-X, whichever is on).
    pub fn vector(&mut self, v: u16) {
        let i = v as usize;
        let vs = &mut self.vectors;
        if vs.masked.get(i).copied().unwrap_or(false) {
            vs.pending[i] = true;
            self.stats.vectors_pended += 1;
            return;
        }
        if let Some(Some(fd)) = vs.fds.get(i) {
            if sys::eventfd_signal(fd).is_ok() {
                match vs.index {
                    Some(vfio::PCI_MSI_IRQ) => self.stats.msi_signals += 1,
                    _ => self.stats.msix_signals += 1,
                }
            }
        }
    }
}

/// A capability's place and size from `cache`, or from the device (`size` from its
/// Message Control word), remembered once the device answered, whether it has the
/// capability or not.
fn cap_info(
    cache: &mut Option<Option<(u16, u16)>>,
    dev: &mut dyn RemoteFunction,
    id: CapabilityId,
    size: impl Fn(u16) -> u16,
) -> Result<Option<(u16, u16)>, NoAnswer> {
    if let Some(known) = *cache {
        return Ok(known);
    }
    let found = match caps::locate(dev, id)? {
        Some(cap) => {
            // Message Control: bytes 2-3 of MSI and MSI-X alike.
            let control = regs::word_in(dev.config_read(cap).ok_or(NoAnswer)?, msi::CONTROL);
            Some((cap, size(control)))
        }
        None => None,
    };
    *cache = Some(found);
    Ok(found)
}

/// The bytes `offset..offset + len` of a region of `size` bytes, or EINVAL when any of
/// them lies outside it. The client chooses `offset` (any u64) and `len`: the sum is
/// checked, so no access wraps back into the region from beyond 2^64.
fn region_range(offset: u64, len: usize, size: u64) -> Result<Range<u64>, u32> {
    let end = offset
        .checked_add(len as u64)
        .filter(|&end| end <= size)
        .ok_or(errno::EINVAL)?;
    Ok(offset..end)
}

/// Where `range` of BAR `b` is on the fabric side (checked too: the BAR's address
/// comes from the device's side).
fn bar_address(b: Bar, range: Range<u64>) -> Result<u64, u32> {
    b.address
        .checked_add(range.end)
        .and(b.address.checked_add(range.start))
        .ok_or(errno::EINVAL)
}

impl Drop for VfioUserServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_function::FakeFunction;
    use crate::vfio_user::client::Client;

    /// A device with a 4 KiB BAR0 at 0xe000_0000 and MSI-X (4 vectors) in its list.
    fn fake() -> FakeFunction {
        // MSI at 0x40 (64-bit, 32 vectors) -> MSI-X at 0x50 (4 vectors) -> end.
        FakeFunction::with_msi_and_msix(0xe000_0000, 0x8a)
    }

    /// A client connected to the test server's socket.
    fn connect(path: &Path) -> Client {
        Client::connect(path).unwrap()
    }

    /// Serves until the client's requests are all handled.
    fn pump(s: &mut VfioUserServer, dev: &mut FakeFunction) {
        for _ in 0..50 {
            s.serve(dev, 64).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn ask(
        c: &mut Client,
        s: &mut VfioUserServer,
        dev: &mut FakeFunction,
        cmd: u16,
        body: &[u8],
        fds: &[RawFd],
    ) -> (Header, Vec<u8>) {
        let id = c.send(cmd, body, fds).unwrap();
        pump(s, dev);
        c.wait_reply(id).unwrap()
    }

    /// DEVICE_SET_IRQS with (flags, index, start, count) and `fds`: the reply's header.
    fn set_irqs(
        c: &mut Client,
        s: &mut VfioUserServer,
        dev: &mut FakeFunction,
        (flags, index, start, count): (u32, u32, u32, u32),
        fds: &[RawFd],
    ) -> Header {
        let body = Body::default()
            .u32(20)
            .u32(flags)
            .u32(index)
            .u32(start)
            .u32(count)
            .0;
        ask(c, s, dev, wire::cmd::DEVICE_SET_IRQS, &body, fds).0
    }

    fn server() -> (tempfile_dir::Dir, VfioUserServer) {
        let dir = tempfile_dir::Dir::new();
        let s = VfioUserServer::bind(&dir.path.join("vfu.sock")).unwrap();
        let mode = std::fs::metadata(dir.path.join("vfu.sock"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "only the owner may connect"
        );
        (dir, s)
    }

    /// A scratch directory removed on drop (no extra dependency for one test module).
    mod tempfile_dir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "tether-vfu-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    /// A DMA_MAP body: `size` bytes at `iova`, readable and writable, at offset 0 of
    /// the descriptor (if one comes along).
    fn dma_map(iova: u64, size: u64) -> Vec<u8> {
        let read_write = 3;
        Body::default()
            .u32(32)
            .u32(read_write)
            .u64(0)
            .u64(iova)
            .u64(size)
            .0
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn version_info_regions_and_config_virtualisation() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::VERSION,
            &Body::default().u16(0).u16(0).bytes(b"{}\0").0,
            &[],
        );
        let caps = std::str::from_utf8(&b[4..b.len() - 1]).unwrap();
        assert!(caps.contains("\"max_msg_fds\":8"), "{caps}");
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DEVICE_GET_INFO,
            &Body::default().u32(16).u32(0).u32(0).u32(0).0,
            &[],
        );
        assert_eq!((u32_at(&b, 8), u32_at(&b, 12)), (9, 5));
        let info = |index: u32| {
            Body::default()
                .u32(32)
                .u32(0)
                .u32(index)
                .u32(0)
                .u64(0)
                .u64(0)
                .0
        };
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DEVICE_GET_REGION_INFO,
            &info(0),
            &[],
        );
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 4096);
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DEVICE_GET_REGION_INFO,
            &info(7),
            &[],
        );
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 256);
        let read = |off: u64, n: u32| Body::default().u64(off).u32(7).u32(n).0;
        // The whole config space in one read: the BAR shows its type bits only, MSI
        // offers one vector.
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &read(0, 256),
            &[],
        );
        let cfg = &b[16..];
        assert_eq!(u32_at(cfg, 0), 0x1042_1af4);
        assert_eq!(
            u32_at(cfg, 0x10),
            0,
            "BAR0 unassigned: the bridge's address hidden"
        );
        assert_eq!((cfg[0x34], cfg[0x41]), (0x40, 0x50), "the list as it is");
        assert_eq!(cfg[0x42], 0x80, "64-bit MSI, Multiple Message Capable 0");
        // Writes to BARs, MSI-X Message Control and the MSI capability are dropped;
        // the rest forwarded.
        let write = |off: u64, data: &[u8]| {
            Body::default()
                .u64(off)
                .u32(7)
                .u32(data.len() as u32)
                .bytes(data)
                .0
        };
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_WRITE,
            &write(0x10, &[0xff; 4]),
            &[],
        );
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_WRITE,
            &write(0x52, &[0x00, 0x80]),
            &[],
        );
        for (at, data) in [
            (0x40, &[5u8, 0x50, 0x01, 0x00][..]),
            (0x44, &[0, 0, 0xe0, 0xfe]),
        ] {
            ask(
                &mut c,
                &mut s,
                &mut dev,
                wire::cmd::REGION_WRITE,
                &write(at, data),
                &[],
            );
        }
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_WRITE,
            &write(0x04, &[0x06, 0x00]),
            &[],
        );
        assert_eq!(dev.config_writes, vec![(0x04, 0x0006, 0b0011)]);
        // BAR0 by offset, at the address the bridge gave it.
        let bw = Body::default().u64(0x20).u32(0).u32(4).u32(0xdead_beef).0;
        ask(&mut c, &mut s, &mut dev, wire::cmd::REGION_WRITE, &bw, &[]);
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &Body::default().u64(0x20).u32(0).u32(4).0,
            &[],
        );
        assert_eq!(u32_at(&b, 16), 0xdead_beef);
        // Out of range, and an unknown command: errors, and the stream goes on.
        let (h, _) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &Body::default().u64(4094).u32(0).u32(4).0,
            &[],
        );
        assert_eq!(
            (h.flags & wire::flags::ERROR, h.error),
            (wire::flags::ERROR, errno::EINVAL)
        );
        let (h, _) = ask(
            &mut c,
            &mut s,
            &mut dev,
            99,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[],
        );
        assert_eq!(h.error, errno::ENOTSUP);
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &read(0, 2),
            &[],
        );
        assert_eq!(
            &b[16..],
            &[0xf4, 0x1a],
            "still in step after the unsupported command"
        );
    }

    /// A config-space read of `n` bytes at `off`, through the config region.
    fn config_read(
        c: &mut Client,
        s: &mut VfioUserServer,
        dev: &mut FakeFunction,
        off: u64,
        n: u32,
    ) -> Vec<u8> {
        let body = Body::default()
            .u64(off)
            .u32(vfio::PCI_CONFIG_REGION)
            .u32(n)
            .0;
        let (h, b) = ask(c, s, dev, wire::cmd::REGION_READ, &body, &[]);
        assert_eq!(h.flags & wire::flags::ERROR, 0);
        b[16..].to_vec()
    }

    fn config_write(
        c: &mut Client,
        s: &mut VfioUserServer,
        dev: &mut FakeFunction,
        off: u64,
        data: &[u8],
    ) {
        let body = Body::default()
            .u64(off)
            .u32(vfio::PCI_CONFIG_REGION)
            .u32(data.len() as u32)
            .bytes(data)
            .0;
        let (h, _) = ask(c, s, dev, wire::cmd::REGION_WRITE, &body, &[]);
        assert_eq!(h.flags & wire::flags::ERROR, 0);
    }

    /// A guest under QEMU's root port (128-byte Max Payload Size) writes Device
    /// Control: the device keeps the fabric's 1024 bytes and gets an MRRS of 1024,
    /// the guest reads back its 128 (crate::payload), and the write is counted.
    #[test]
    fn the_guest_sets_its_own_max_payload_size_not_the_devices() {
        let (dir, mut s) = server();
        let mut dev = fake();
        // PCI Express at 0x60, after MSI-X; Device Control MPS 1024, MRRS 512.
        dev.config[0x51] = 0x60;
        dev.config[0x60] = 0x10;
        dev.config[0x68..0x6a].copy_from_slice(&(3u16 << 5 | 2 << 12).to_le_bytes());
        let mut c = connect(&dir.path.join("vfu.sock"));
        config_write(&mut c, &mut s, &mut dev, 0x68, &[0x0f, 0x20]);
        assert_eq!(dev.config_writes, vec![(0x68, 0x306f, 0b0011)]);
        dev.config[0x68..0x6a].copy_from_slice(&0x306fu16.to_le_bytes());
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x68, 2), [0x0f, 0x30]);
        assert_eq!(s.stats().devctl_adjusted, 1);
    }

    /// cloud-hypervisor sizes each BAR through config space (all-ones written, read
    /// back, the value put back) and the expansion ROM the same way: it gets the size
    /// mask and the type bits, as from libvfio-user, for the 32-bit BAR0 and both
    /// halves of the 64-bit BAR2; the device's own BAR registers are never written.
    /// Before, BAR writes were dropped and reads gave the type bits only: no BARs.
    #[test]
    fn bars_sized_through_config_space_read_back_their_masks() {
        let (dir, mut s) = server();
        let mut dev = fake().with_bar2_64(0x8_0000_0000, 1 << 16);
        let mut c = connect(&dir.path.join("vfu.sock"));
        let mut sized = Vec::new();
        for reg in [0x10u64, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
            let orig = config_read(&mut c, &mut s, &mut dev, reg, 4);
            config_write(&mut c, &mut s, &mut dev, reg, &[0xff; 4]);
            sized.push(u32_at(&config_read(&mut c, &mut s, &mut dev, reg, 4), 0));
            config_write(&mut c, &mut s, &mut dev, reg, &orig);
            assert_eq!(config_read(&mut c, &mut s, &mut dev, reg, 4), orig);
        }
        assert_eq!(
            sized,
            [0xffff_f000, 0, 0xffff_000c, 0xffff_ffff, 0, 0, 0],
            "BAR0 4 KiB, no BAR1, BAR2 64 KiB 64-bit prefetchable, no ROM"
        );
        // The VMM places BAR2 (one write across both registers): it reads back there.
        config_write(&mut c, &mut s, &mut dev, 0x18, &[0, 0, 0, 0xd0, 1, 0, 0, 0]);
        let placed = config_read(&mut c, &mut s, &mut dev, 0x18, 8);
        assert_eq!(placed, [0x0c, 0, 0, 0xd0, 1, 0, 0, 0]);
        assert!(dev.config_writes.is_empty(), "{:x?}", dev.config_writes);
        // BAR accesses stay by index and offset, at the bridge's address.
        let bw = Body::default().u64(0xfff0).u32(2).u32(4).u32(0x600d_f00d).0;
        ask(&mut c, &mut s, &mut dev, wire::cmd::REGION_WRITE, &bw, &[]);
        assert_eq!(dev.mem_accesses, vec![(0x8_0000_fff0, 4)]);
        // A reset, and a new client, find the BARs unassigned.
        ask(&mut c, &mut s, &mut dev, wire::cmd::DEVICE_RESET, &[], &[]);
        assert_eq!(
            config_read(&mut c, &mut s, &mut dev, 0x18, 8),
            [0x0c, 0, 0, 0, 0, 0, 0, 0]
        );
        config_write(&mut c, &mut s, &mut dev, 0x10, &[0, 0, 0, 0xc0]);
        drop(c);
        pump(&mut s, &mut dev);
        let mut c = connect(&dir.path.join("vfu.sock"));
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x10, 4), [0; 4]);
    }

    /// Config accesses whose offset + count wraps past 2^64: before the check was
    /// checked, a debug build panicked and a release build let the write through, its
    /// registers (kept as u16) running 0x1000.. which the filter does not know but a
    /// config TLP carries as 0x000..: BARs, the ROM BAR and extended config written.
    #[test]
    fn config_accesses_that_wrap_are_refused() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let data = vec![0xffu8; 0xf000 + 0x40];
        let offset = 0u64.wrapping_sub(0xf000);
        let body = Body::default()
            .u64(offset)
            .u32(7)
            .u32(data.len() as u32)
            .bytes(&data)
            .0;
        let (h, _) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_WRITE,
            &body,
            &[],
        );
        assert_eq!(
            (h.flags & wire::flags::ERROR, h.error),
            (wire::flags::ERROR, errno::EINVAL)
        );
        assert_eq!(dev.config_writes, vec![], "nothing reached the device");
        let read = Body::default().u64(u64::MAX - 3).u32(7).u32(8).0;
        let (h, b) = ask(&mut c, &mut s, &mut dev, wire::cmd::REGION_READ, &read, &[]);
        assert_eq!((h.error, b.len()), (errno::EINVAL, 0));
        assert_eq!(s.stats().errors, 2);
        assert_eq!((s.stats().config_reads, s.stats().config_writes), (0, 0));
        // The server goes on with the same client.
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &Body::default().u64(0).u32(7).u32(2).0,
            &[],
        );
        assert_eq!(&b[16..], &[0xf4, 0x1a]);
    }

    /// A DMA_READ the client refuses: the device behind the root complex gets an
    /// Unsupported Request completion, not data, and the failure is counted. (The
    /// refusal used to be served as all-ones in a successful completion.)
    #[test]
    fn a_refused_dma_read_is_an_error_completion() {
        use rootcomplex::{Bridge, BridgeConfig, MemoryMap};
        use tlp::{Bdf, CompletionStatus, Header as TlpHeader, MemRead, MemWrite, Tag, Tlp};
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let map = dma_map(0x20_0000, 4096);
        ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &map, &[]);
        let (base, mem) = dev.ram.pop().unwrap();
        let mut memory = MemoryMap::new();
        memory.add(base, mem).unwrap();
        let mut rc = Bridge::new(BridgeConfig::default(), memory);
        // The client answers the DMA_READ with an error (it has nothing there).
        let client = std::thread::spawn(move || {
            let (h, _) = c.recv().unwrap();
            assert_eq!(h.command, wire::cmd::DMA_READ);
            c.reply_error(&h, errno::EINVAL).unwrap();
            c
        });
        let requester = Bdf::new(1, 0, 0).unwrap();
        let read = MemRead {
            requester,
            tag: Tag::wrapping(5),
            address: 0x20_0040,
            length_dw: 4,
            first_be: 0xf,
            last_be: 0xf,
            locked: false,
            hint: None,
        };
        rc.handle_tlp(
            0,
            &Tlp::new(TlpHeader::MemRead(read), &[]).to_vec().unwrap(),
        );
        let mut c = client.join().unwrap();
        let out = rc.poll_transmit().expect("a completion");
        let t = Tlp::parse(&out).unwrap();
        let TlpHeader::Completion(cpl) = t.header else {
            panic!("not a completion: {:?}", t.header);
        };
        assert_eq!(
            (cpl.status, cpl.requester, t.payload.len()),
            (CompletionStatus::UnsupportedRequest, requester, 0)
        );
        assert_eq!(rc.stats().dma_read_refused, 1);
        assert_eq!(s.stats().dma_read_failures, 1);
        // A refused DMA_WRITE is posted, so the device is not told; it is counted.
        let client = std::thread::spawn(move || {
            let (h, _) = c.recv().unwrap();
            assert_eq!(h.command, wire::cmd::DMA_WRITE);
            c.reply_error(&h, errno::EFAULT).unwrap();
            c
        });
        let write = MemWrite {
            requester,
            tag: Tag::wrapping(0),
            address: 0x20_0040,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        };
        rc.handle_tlp(
            0,
            &Tlp::new(TlpHeader::MemWrite(write), &[1, 2, 3, 4])
                .to_vec()
                .unwrap(),
        );
        client.join().unwrap();
        assert_eq!(s.stats().dma_write_failures, 1);
    }

    /// While the server waits for the reply to its DMA_READ, a client that floods it
    /// with requests is dropped once MAX_QUEUED wait (the queue held every one before),
    /// and a client that never answers fails the read after DMA_REPLY_TIMEOUT (the
    /// server waited forever before). Both reads fail, counted.
    #[test]
    fn dma_waits_are_bounded_in_queue_and_time() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let path = dir.path.join("vfu.sock");
        let map = dma_map(0x20_0000, 4096);
        let mut c = connect(&path);
        ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &map, &[]);
        let flood = std::thread::spawn(move || {
            let (h, body) = c.recv().unwrap();
            assert_eq!(h.command, wire::cmd::DMA_READ);
            let info = Body::default().u32(16).u32(0).u32(0).u32(0).0;
            for _ in 0..MAX_QUEUED + 8 {
                let _ = c.send(wire::cmd::DEVICE_GET_INFO, &info, &[]);
            }
            // The reply, at last (too late for a server that dropped the client).
            let mut reply_body = body[..12].to_vec();
            reply_body.extend_from_slice(&[0; 8]);
            let _ = c.reply(&h, &reply_body);
            c
        });
        let mut buf = [0u8; 8];
        assert!(dev.ram[0].1.try_read(0, &mut buf).is_err());
        let _c = flood.join().unwrap();
        assert_eq!(
            (s.stats().queue_overflows, s.stats().dma_read_failures),
            (1, 1)
        );
        pump(&mut s, &mut dev);
        assert!(!s.connected(), "the flooding client is dropped");
        assert_eq!(s.stats().requests, 1, "only its DMA_MAP was served");
        // A client that never answers.
        let mut c = connect(&path);
        ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &map, &[]);
        let started = Instant::now();
        assert!(dev.ram[0].1.try_read(0, &mut buf).is_err());
        assert!(started.elapsed() >= DMA_REPLY_TIMEOUT);
        let st = s.stats();
        assert_eq!((st.dma_timeouts, st.dma_read_failures), (1, 2));
        assert_eq!(
            c.recv().unwrap().0.command,
            wire::cmd::DMA_READ,
            "it was asked"
        );
    }

    /// Serves until the client is dropped (at most 10 `sys::STALL_TIMEOUT`s);
    /// returns the longest one call to `serve` took: the loop is never held.
    fn serve_until_dropped(s: &mut VfioUserServer, dev: &mut FakeFunction) -> Duration {
        let deadline = Instant::now() + 10 * sys::STALL_TIMEOUT;
        let mut longest = Duration::ZERO;
        loop {
            let t = Instant::now();
            s.serve(dev, 64).unwrap();
            longest = longest.max(t.elapsed());
            if !s.connected() {
                return longest;
            }
            assert!(Instant::now() < deadline, "the client was never dropped");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A client that stops in the middle of a message is dropped after
    /// sys::STALL_TIMEOUT without progress, and no call to `serve` waits for it
    /// meanwhile, not even while the message comes a byte at a time. (The server
    /// held in recv up to a second per byte before, so a trickle of bytes held it for
    /// ever.)
    #[test]
    fn a_client_stalled_mid_message_is_dropped() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        // A 32-byte message of which only 10 bytes come.
        let m = wire::message(1, wire::cmd::DEVICE_GET_INFO, 0, 0, &[0; 16]);
        c.send_bytes(&m[..10], &[]).unwrap();
        let started = Instant::now();
        let longest = serve_until_dropped(&mut s, &mut dev);
        assert!(started.elapsed() >= sys::STALL_TIMEOUT);
        assert!(
            longest < Duration::from_millis(200),
            "serve held {longest:?}"
        );
        let st = s.stats();
        assert_eq!((st.stalled_clients, st.disconnects, st.requests), (1, 1, 0));
        // A byte every 50 ms of a message that announces 1 MiB, for 1.5 s: served
        // meanwhile without waiting, kept (it moves), dropped once it stops.
        let mut c = connect(&dir.path.join("vfu.sock"));
        let big = wire::message(2, wire::cmd::REGION_WRITE, 0, 0, &vec![0; 1 << 20]);
        let trickle = std::thread::spawn(move || {
            for b in big.iter().take(30) {
                c.send_bytes(&[*b], &[]).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            c
        });
        let mut longest = Duration::ZERO;
        while !trickle.is_finished() {
            let t = Instant::now();
            s.serve(&mut dev, 64).unwrap();
            longest = longest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(2));
        }
        let _c = trickle.join().unwrap();
        assert!(s.connected(), "a message that moves is waited for");
        let stopped = Instant::now();
        longest = longest.max(serve_until_dropped(&mut s, &mut dev));
        assert!(stopped.elapsed() >= sys::STALL_TIMEOUT - Duration::from_millis(60));
        assert!(
            longest < Duration::from_millis(200),
            "serve held {longest:?}"
        );
        assert_eq!((s.stats().stalled_clients, s.stats().requests), (2, 0));
    }

    /// Descriptors beyond what a message may carry (`MAX_FDS`), in one piece or in
    /// several: the server keeps one more than that, and refuses the message whole
    /// (EINVAL); the stream stays in step.
    #[test]
    fn a_message_with_too_many_descriptors_is_refused() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let fds: Vec<OwnedFd> = (0..3 * wire::MAX_FDS)
            .map(|_| sys::eventfd().unwrap())
            .collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let info = Body::default().u32(16).u32(0).u32(0).u32(0).0;
        let m = wire::message(7, wire::cmd::DEVICE_GET_INFO, 0, 0, &info);
        c.send_bytes(&m, &raw[..wire::MAX_FDS + 1]).unwrap();
        // Three pieces of 8 each.
        let m = wire::message(8, wire::cmd::DEVICE_GET_INFO, 0, 0, &info);
        for (k, piece) in m.chunks(12).enumerate() {
            let at = k * wire::MAX_FDS;
            c.send_bytes(piece, &raw[at..at + wire::MAX_FDS]).unwrap();
        }
        pump(&mut s, &mut dev);
        for id in [7, 8] {
            let (h, _) = c.wait_reply(id).unwrap();
            assert_eq!(h.error, errno::EINVAL, "message {id}");
        }
        assert!(s.connected());
        assert_eq!(
            config_read(&mut c, &mut s, &mut dev, 0, 2),
            [0xf4, 0x1a],
            "still in step"
        );
    }

    /// A REGION_READ of `n` bytes of BAR0 at 0.
    fn bar0_read(n: u32) -> Vec<u8> {
        Body::default().u64(0).u32(0).u32(n).0
    }

    /// A client that sends requests and never reads the replies: the server reads
    /// on and queues the replies, at most MAX_UNREAD bytes, then drops the client
    /// (counted); no call to `serve` waits for it, and the next client is served.
    #[test]
    fn a_client_that_never_reads_its_replies_is_dropped() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let path = dir.path.join("vfu.sock");
        let mut c = connect(&path);
        s.serve(&mut dev, 64).unwrap();
        // 4 KiB replies: about a thousand fill MAX_UNREAD.
        let reply = HEADER_LEN + 16 + 4096;
        let flood = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 4 * MAX_UNREAD / reply
                && c.send(wire::cmd::REGION_READ, &bar0_read(4096), &[])
                    .is_ok()
            {
                sent += 1;
            }
            (c, sent)
        });
        let longest = serve_until_dropped(&mut s, &mut dev);
        assert!(
            longest < Duration::from_millis(500),
            "serve held {longest:?}"
        );
        let (_c, sent) = flood.join().unwrap();
        let st = s.stats();
        assert_eq!((st.unread_overflows, st.stalled_clients), (1, 0));
        // What was served fits in MAX_UNREAD and the socket's buffers (a few
        // hundred KiB), far fewer than were sent.
        let served = st.requests as usize;
        assert!(
            served > MAX_UNREAD / reply && served < MAX_UNREAD / reply + 256,
            "{served} served"
        );
        assert!(sent > served, "{sent} sent, {served} served");
        let mut c2 = connect(&path);
        assert_eq!(
            config_read(&mut c2, &mut s, &mut dev, 0, 4),
            [0xf4, 0x1a, 0x42, 0x10]
        );
    }

    /// A client that stops reading with fewer than MAX_UNREAD bytes of replies
    /// waiting: while they wait, the server asks the loop not to sleep on them
    /// (`wait_fds` has a descriptor that is always readable); when the socket has
    /// taken nothing for sys::STALL_TIMEOUT the client is dropped.
    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_stall_timeout() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        assert_eq!(s.wait_fds().len(), 1, "the listener");
        // 256 KiB of replies: more than the socket's buffer takes.
        for _ in 0..64 {
            c.send(wire::cmd::REGION_READ, &bar0_read(4096), &[])
                .unwrap();
        }
        let started = Instant::now();
        while s.stats().requests < 64 {
            s.serve(&mut dev, 64).unwrap();
        }
        let fds = s.wait_fds();
        assert_eq!(fds.len(), 2, "the client's socket, and one always ready");
        assert!(sys::wait_readable(&fds[1..], Duration::ZERO).unwrap()[0]);
        let longest = serve_until_dropped(&mut s, &mut dev);
        assert!(started.elapsed() >= sys::STALL_TIMEOUT);
        assert!(
            longest < Duration::from_millis(200),
            "serve held {longest:?}"
        );
        let st = s.stats();
        assert_eq!((st.stalled_clients, st.unread_overflows), (1, 0));
        drop(c);
    }

    /// Found by the vfio_user_server fuzz target: a config access while the device
    /// did not answer made the server remember "no MSI, no MSI-X", and once the
    /// device answered again the guest's writes to the MSI capability and to MSI-X
    /// Message Control reached it. A layout that could not be read is not
    /// remembered, and config writes are refused until it can be.
    #[test]
    fn capabilities_unread_while_the_device_is_away_stay_filtered() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let write = |off: u64, data: &[u8]| {
            Body::default()
                .u64(off)
                .u32(7)
                .u32(data.len() as u32)
                .bytes(data)
                .0
        };
        dev.present = false;
        let (h, _) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::REGION_WRITE,
            &write(0x04, &[0x06, 0x00]),
            &[],
        );
        assert_eq!(h.error, errno::EIO, "refused while the layout is unknown");
        dev.present = true;
        for (at, data) in [(0x44u64, &[0u8, 0, 0xe0, 0xfe][..]), (0x52, &[0x00, 0xc0])] {
            ask(
                &mut c,
                &mut s,
                &mut dev,
                wire::cmd::REGION_WRITE,
                &write(at, data),
                &[],
            );
        }
        assert_eq!(
            dev.config_writes,
            Vec::<(u16, u32, u8)>::new(),
            "neither the MSI address nor MSI-X Message Control reached the device"
        );
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (
                vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER,
                vfio::PCI_MSIX_IRQ,
                0,
                4,
            ),
            &[],
        );
        assert_eq!(h.error, 0, "MSI-X found again: 4 vectors");
    }

    #[test]
    fn msix_and_intx_through_eventfds() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let v0 = sys::eventfd().unwrap();
        let v1 = sys::eventfd().unwrap();
        let trig = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSIX_IRQ, 0, 2),
            &[v0.as_raw_fd(), v1.as_raw_fd()],
        );
        assert_eq!(dev.msix_on, vec![true], "MSI-X switched on for the VMM");
        s.vector(1);
        assert!(sys::eventfd_take(&v1).unwrap() && !sys::eventfd_take(&v0).unwrap());
        // Masked: pending, delivered on unmask.
        let mask = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_MASK;
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (mask, vfio::PCI_MSIX_IRQ, 0, 1),
            &[],
        );
        s.vector(0);
        assert!(!sys::eventfd_take(&v0).unwrap());
        let unmask = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_UNMASK;
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (unmask, vfio::PCI_MSIX_IRQ, 0, 1),
            &[],
        );
        assert!(sys::eventfd_take(&v0).unwrap());
        let off = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER;
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (off, vfio::PCI_MSIX_IRQ, 0, 0),
            &[],
        );
        assert_eq!(dev.msix_on, vec![true, false]);
        // INTx: signalled and automasked; an unmask with the line still high signals
        // again.
        let irq = sys::eventfd().unwrap();
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_INTX_IRQ, 0, 1),
            &[irq.as_raw_fd()],
        );
        s.set_intx(true);
        assert!(sys::eventfd_take(&irq).unwrap());
        s.set_intx(false);
        s.set_intx(true);
        assert!(!sys::eventfd_take(&irq).unwrap(), "automasked");
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (unmask, vfio::PCI_INTX_IRQ, 0, 1),
            &[],
        );
        assert!(sys::eventfd_take(&irq).unwrap());
        assert_eq!(s.stats().intx_signals, 2);
        // A vector beyond the table is refused.
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSIX_IRQ, 3, 2),
            &[v0.as_raw_fd(), v1.as_raw_fd()],
        );
        assert_eq!(h.error, errno::EINVAL);
    }

    /// Found by the vfio_user_server fuzz target (the fake device did not model it): a
    /// DEVICE_RESET is a function-level reset, which turns MSI off, so MSI-X may come
    /// on after it without the two ever being on together.
    #[test]
    fn msi_then_reset_then_msix_are_never_on_together() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let trig = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
        let (msi, x0) = (sys::eventfd().unwrap(), sys::eventfd().unwrap());
        let set = (trig, vfio::PCI_MSI_IRQ, 0, 1);
        set_irqs(&mut c, &mut s, &mut dev, set, &[msi.as_raw_fd()]);
        ask(&mut c, &mut s, &mut dev, wire::cmd::DEVICE_RESET, &[], &[]);
        let set = (trig, vfio::PCI_MSIX_IRQ, 0, 1);
        let h = set_irqs(&mut c, &mut s, &mut dev, set, &[x0.as_raw_fd()]);
        assert_eq!(h.error, 0);
        assert_eq!(
            (dev.msi_on.clone(), dev.msix_on.clone()),
            (vec![true, false], vec![true])
        );
    }

    /// A pipe given as a vector's eventfd: SET_IRQS fails and changes nothing. Before,
    /// it was taken, and a full pipe held the serving thread at the next vector.
    #[test]
    fn a_vector_fd_that_is_not_an_eventfd_is_refused() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let mut p = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors we own.
        let (rd, wr) = unsafe {
            assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
        };
        let v1 = sys::eventfd().unwrap();
        let trig = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSIX_IRQ, 0, 2),
            &[wr.as_raw_fd(), v1.as_raw_fd()],
        );
        assert_eq!(h.error, errno::EINVAL);
        assert!(dev.msix_on.is_empty(), "MSI-X left off");
        s.vector(0);
        s.vector(1);
        assert!(!sys::wait_readable(&[rd.as_raw_fd()], Duration::ZERO).unwrap()[0]);
        assert!(!sys::eventfd_take(&v1).unwrap());
    }

    #[test]
    fn msi_one_vector_never_together_with_msix() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let irq_info = |c: &mut Client, s: &mut VfioUserServer, dev: &mut FakeFunction| {
            let body = Body::default()
                .u32(16)
                .u32(0)
                .u32(vfio::PCI_MSI_IRQ)
                .u32(0)
                .0;
            let (_, b) = ask(c, s, dev, wire::cmd::DEVICE_GET_IRQ_INFO, &body, &[]);
            u32_at(&b, 12)
        };
        assert_eq!(irq_info(&mut c, &mut s, &mut dev), 1, "one MSI vector");
        let trig = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
        let off = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER;
        let (msi, x0) = (sys::eventfd().unwrap(), sys::eventfd().unwrap());
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSI_IRQ, 0, 2),
            &[msi.as_raw_fd(), x0.as_raw_fd()],
        );
        assert_eq!(h.error, errno::EINVAL, "a second MSI vector is refused");
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSI_IRQ, 0, 1),
            &[msi.as_raw_fd()],
        );
        assert_eq!(
            (dev.msi_on.clone(), dev.msix_on.clone()),
            (vec![true], vec![])
        );
        s.vector(0);
        assert!(sys::eventfd_take(&msi).unwrap());
        // MSI-X cannot come on while MSI is; turning it off is harmless.
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSIX_IRQ, 0, 1),
            &[x0.as_raw_fd()],
        );
        assert_eq!(h.error, errno::EINVAL);
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (off, vfio::PCI_MSIX_IRQ, 0, 0),
            &[],
        );
        assert_eq!(h.flags & wire::flags::ERROR, 0);
        s.vector(0);
        assert!(sys::eventfd_take(&msi).unwrap(), "MSI still on");
        assert!(!sys::eventfd_take(&x0).unwrap());
        // MSI off, then MSI-X: vector 0 now reaches the MSI-X eventfd.
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (off, vfio::PCI_MSI_IRQ, 0, 0),
            &[],
        );
        set_irqs(
            &mut c,
            &mut s,
            &mut dev,
            (trig, vfio::PCI_MSIX_IRQ, 0, 1),
            &[x0.as_raw_fd()],
        );
        assert_eq!(
            (dev.msi_on.clone(), dev.msix_on.clone()),
            (vec![true, false], vec![true])
        );
        s.vector(0);
        assert!(sys::eventfd_take(&x0).unwrap() && !sys::eventfd_take(&msi).unwrap());
        let st = s.stats();
        assert_eq!((st.msi_signals, st.msix_signals), (2, 1));
        // A client that goes away leaves both off.
        drop(c);
        pump(&mut s, &mut dev);
        assert_eq!(dev.msi_on.last(), Some(&false));
        assert_eq!(dev.msix_on.last(), Some(&false));
        // A device without MSI offers none.
        let mut plain = FakeFunction::new(0xe000_0000);
        let mut c = connect(&dir.path.join("vfu.sock"));
        s.device_changed();
        assert_eq!(irq_info(&mut c, &mut s, &mut plain), 0);
        let h = set_irqs(
            &mut c,
            &mut s,
            &mut plain,
            (trig, vfio::PCI_MSI_IRQ, 0, 1),
            &[msi.as_raw_fd()],
        );
        assert_eq!(h.error, errno::EINVAL);
    }

    /// A DMA_MAP body with `flags`: `size` bytes at `iova`, at `offset` of the
    /// descriptor (if one comes along).
    fn dma_map_flags(flags: u32, iova: u64, size: u64, offset: u64) -> Vec<u8> {
        Body::default()
            .u32(32)
            .u32(flags)
            .u64(offset)
            .u64(iova)
            .u64(size)
            .0
    }

    /// Guest RAM that can shrink is never mapped (a mapping of it would raise SIGBUS
    /// in the bridge): a memfd sealed against shrinking (QEMU's default) is mapped; a
    /// memfd that allows sealing is sealed here, after which the client cannot
    /// shrink it (EPERM); a memfd made without MFD_ALLOW_SEALING (QEMU's `seal=off`,
    /// cloud-hypervisor's guest RAM) and a regular file are served by pread/pwrite on
    /// the descriptor: after a shrink, the device's DMA past the new end fails,
    /// counted. (Such files used to be refused, which left cloud-hypervisor without
    /// DMA.)
    #[test]
    fn guest_ram_that_may_shrink_is_never_mapped() {
        use crate::guest_ram::{test_memfd, test_memfd_without_sealing, test_regular_file};
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let sealed = test_memfd(
            1 << 16,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        );
        let sealable = test_memfd(1 << 16, 0);
        let seal_off = test_memfd_without_sealing(1 << 16);
        let file = test_regular_file(1 << 16);
        let mut errors = Vec::new();
        for (iova, fd) in [
            (0x10_0000, &sealed),
            (0x20_0000, &sealable),
            (0x30_0000, &seal_off),
            (0x40_0000, &file),
        ] {
            let (h, _) = ask(
                &mut c,
                &mut s,
                &mut dev,
                wire::cmd::DMA_MAP,
                &dma_map(iova, 1 << 16),
                &[fd.as_raw_fd()],
            );
            errors.push(h.error);
        }
        assert_eq!(errors, [0, 0, 0, 0]);
        let st = s.stats();
        assert_eq!(
            (
                st.dma_maps,
                st.dma_maps_sealed_here,
                st.dma_maps_by_file,
                st.dma_maps_unsealable
            ),
            (4, 1, 2, 0)
        );
        assert_eq!(dev.ram.len(), 4);
        // The unsealable memfd shrinks under the device: its DMA past the new end
        // fails and is counted, before it the data is there.
        dev.ram[2].1.write(0x10, b"by file");
        // SAFETY: ftruncate on a descriptor we own; nothing of ours maps it.
        assert_eq!(unsafe { libc::ftruncate(seal_off.as_raw_fd(), 0x1000) }, 0);
        let mut seven = [0u8; 7];
        assert!(dev.ram[2].1.try_read(0x10, &mut seven).is_ok());
        assert_eq!(&seven, b"by file");
        assert!(dev.ram[2].1.try_read(0x8000, &mut seven).is_err());
        dev.ram[2].1.write(0x8000, b"by file");
        assert_eq!(s.stats().dma_file_faults, 2);
        // The client's shrink fails now: no SIGBUS can come of it.
        // SAFETY: ftruncate on a descriptor we own; the seal refuses it.
        let r = unsafe { libc::ftruncate(sealable.as_raw_fd(), 0) };
        assert_eq!(
            (r, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EPERM))
        );
        dev.ram[1].1.write(0x100, &[2; 32]);
        let mut buf = [0u8; 32];
        assert!(dev.ram[1].1.try_read(0x100, &mut buf).is_ok());
        assert_eq!(buf, [2; 32]);
        // SAFETY: pread into a live buffer of its length, on a descriptor we own.
        let n = unsafe { libc::pread(sealable.as_raw_fd(), buf.as_mut_ptr().cast(), 32, 0x100) };
        assert_eq!(
            (n, buf),
            (32, [2; 32]),
            "the device wrote the client's memfd"
        );
    }

    /// Each mapping served by file keeps a descriptor of the bridge's: a client holds
    /// at most `MAX_FILE_MAPS` of them (ENOSPC beyond, counted); unmapping one makes
    /// room for another.
    #[test]
    fn mappings_served_by_file_are_bounded() {
        use crate::guest_ram::test_memfd_without_sealing;
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let fd = test_memfd_without_sealing(1 << 12);
        let map = |c: &mut Client, s: &mut VfioUserServer, dev: &mut FakeFunction, i: u64| {
            let (h, _) = ask(
                c,
                s,
                dev,
                wire::cmd::DMA_MAP,
                &dma_map(0x100_0000 + (i << 12), 1 << 12),
                &[fd.as_raw_fd()],
            );
            h.error
        };
        for i in 0..MAX_FILE_MAPS as u64 {
            assert_eq!(map(&mut c, &mut s, &mut dev, i), 0, "mapping {i}");
        }
        let over = MAX_FILE_MAPS as u64;
        assert_eq!(map(&mut c, &mut s, &mut dev, over), errno::ENOSPC);
        let st = s.stats();
        assert_eq!(
            (st.dma_maps_by_file, st.dma_maps_unsealable),
            (MAX_FILE_MAPS as u64, 1)
        );
        let unmap = Body::default()
            .u32(24)
            .u32(0)
            .u64(0x100_0000)
            .u64(1 << 12)
            .0;
        let (h, _) = ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_UNMAP, &unmap, &[]);
        assert_eq!(h.error, 0);
        assert_eq!(map(&mut c, &mut s, &mut dev, over), 0, "room again");
    }

    /// A file served by pread/pwrite through a descriptor opened read-only: READ is
    /// taken, WRITE refused (as a writable mapping of it would be), counted nowhere
    /// as a fault.
    #[test]
    fn write_is_refused_on_a_read_only_descriptor() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let fd: OwnedFd = exe.into();
        let mut ask_map = |flags: u32, iova: u64| {
            let body = Body::default()
                .u32(32)
                .u32(flags)
                .u64(0)
                .u64(iova)
                .u64(4096)
                .0;
            let (h, _) = ask(
                &mut c,
                &mut s,
                &mut dev,
                wire::cmd::DMA_MAP,
                &body,
                &[fd.as_raw_fd()],
            );
            h.error
        };
        let (r, w) = (vfio::DMA_MAP_FLAG_READ, vfio::DMA_MAP_FLAG_WRITE);
        assert_eq!(ask_map(r | w, 0x10_0000), errno::EINVAL);
        assert_eq!(ask_map(w, 0x20_0000), errno::EINVAL);
        assert_eq!(ask_map(r, 0x30_0000), 0);
        assert_eq!(dev.ram.len(), 1);
        let mut elf = [0u8; 4];
        assert!(dev.ram[0].1.try_read(0, &mut elf).is_ok());
        assert_eq!(&elf, b"\x7fELF");
        assert_eq!(
            (s.stats().dma_maps_by_file, s.stats().dma_file_faults),
            (1, 0)
        );
    }

    /// DMA_MAP's flags are kept, with a descriptor or without: a write into a region
    /// mapped without WRITE is dropped (the memory unchanged, no DMA_WRITE message),
    /// a read of one without READ gets an Unsupported Request completion (no
    /// DMA_READ message), as for an unmapped address; both counted. Neither flag, or
    /// another bit, or an empty or wrapping range: refused.
    #[test]
    fn dma_honours_the_mapping_flags() {
        use rootcomplex::{Bridge, BridgeConfig, MemoryMap};
        use tlp::{Bdf, CompletionStatus, Header as TlpHeader, MemRead, MemWrite, Tag, Tlp};
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let ram = crate::guest_ram::test_memfd(1 << 16, libc::F_SEAL_SHRINK);
        // SAFETY: pwrite of a live buffer on a descriptor we own.
        unsafe { libc::pwrite(ram.as_raw_fd(), b"ROM!".as_ptr().cast(), 4, 0x40) };
        let (r, w) = (vfio::DMA_MAP_FLAG_READ, vfio::DMA_MAP_FLAG_WRITE);
        // Read-only and write-only halves of the memfd; the same without one.
        let maps = [
            (r, 0x10_0000, 0x8000, 0, true),
            (w, 0x20_0000, 0x8000, 0x8000, true),
            (r, 0x30_0000, 0x1000, 0, false),
            (w, 0x40_0000, 0x1000, 0, false),
        ];
        for (flags, iova, size, offset, with_fd) in maps {
            let fds = if with_fd {
                vec![ram.as_raw_fd()]
            } else {
                vec![]
            };
            let body = dma_map_flags(flags, iova, size, offset);
            let (h, _) = ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &body, &fds);
            assert_eq!(h.error, 0);
        }
        for (flags, iova, size) in [
            (0, 0x50_0000, 0x1000),
            (r | w | 4, 0x50_0000, 0x1000),
            (r | w, 0x50_0000, 0),
            (r | w, u64::MAX - 0xfff, 0x2000),
        ] {
            let body = dma_map_flags(flags, iova, size, 0);
            let (h, _) = ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &body, &[]);
            assert_eq!(h.error, errno::EINVAL, "flags {flags:#x} size {size:#x}");
        }
        assert_eq!(s.stats().dma_maps_invalid, 4);
        let mut memory = MemoryMap::new();
        for (base, mem) in dev.ram.drain(..) {
            memory.add(base, mem).unwrap();
        }
        let mut rc = Bridge::new(BridgeConfig::default(), memory);
        let requester = Bdf::new(1, 0, 0).unwrap();
        let write = |rc: &mut Bridge, address: u64| {
            let w = MemWrite {
                requester,
                tag: Tag::wrapping(0),
                address,
                first_be: 0xf,
                last_be: 0,
                hint: None,
            };
            rc.handle_tlp(
                0,
                &Tlp::new(TlpHeader::MemWrite(w), b"dev!").to_vec().unwrap(),
            );
        };
        // Writes into the read-only regions: dropped.
        write(&mut rc, 0x10_0040);
        write(&mut rc, 0x30_0040);
        let mut got = [0u8; 4];
        // SAFETY: pread into a live buffer of its length, on a descriptor we own.
        unsafe { libc::pread(ram.as_raw_fd(), got.as_mut_ptr().cast(), 4, 0x40) };
        assert_eq!(&got, b"ROM!", "the read-only memory is unchanged");
        // Into the write-only one: written.
        write(&mut rc, 0x20_0040);
        // SAFETY: as above.
        unsafe { libc::pread(ram.as_raw_fd(), got.as_mut_ptr().cast(), 4, 0x8040) };
        assert_eq!(&got, b"dev!");
        let read = |rc: &mut Bridge, address: u64| {
            let r = MemRead {
                requester,
                tag: Tag::wrapping(5),
                address,
                length_dw: 1,
                first_be: 0xf,
                last_be: 0,
                locked: false,
                hint: None,
            };
            rc.handle_tlp(0, &Tlp::new(TlpHeader::MemRead(r), &[]).to_vec().unwrap());
            let out = rc.poll_transmit().expect("a completion");
            let t = Tlp::parse(&out).unwrap();
            let TlpHeader::Completion(cpl) = t.header else {
                panic!("not a completion: {:?}", t.header);
            };
            (cpl.status, t.payload.to_vec())
        };
        // Reads of the write-only regions: Unsupported Request, as unmapped.
        for address in [0x20_0040, 0x40_0040, 0x90_0000] {
            assert_eq!(
                read(&mut rc, address),
                (CompletionStatus::UnsupportedRequest, vec![])
            );
        }
        // Of the read-only one: the data.
        assert_eq!(
            read(&mut rc, 0x10_0040),
            (CompletionStatus::Success, b"ROM!".to_vec())
        );
        let st = s.stats();
        assert_eq!(
            (st.dma_write_to_readonly, st.dma_read_from_writeonly),
            (2, 2)
        );
        assert_eq!((st.dma_messages, rc.stats().dma_read_refused), (0, 3));
        assert!(
            !sys::wait_readable(&[c.socket().as_raw_fd()], Duration::ZERO).unwrap()[0],
            "no DMA_READ or DMA_WRITE went to the client"
        );
    }

    /// A client holds at most MAX_DMA_MAPS mappings, as VERSION announces: one more
    /// is refused (ENOSPC, counted) and grows nothing; an unmap makes room again.
    #[test]
    fn dma_mappings_are_bounded() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let mut c = connect(&dir.path.join("vfu.sock"));
        let (_, b) = ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::VERSION,
            &Body::default().u16(0).u16(0).bytes(b"{}\0").0,
            &[],
        );
        let caps = std::str::from_utf8(&b[4..b.len() - 1]).unwrap();
        assert!(
            caps.contains(&format!("\"max_dma_maps\":{MAX_DMA_MAPS}")),
            "{caps}"
        );
        let page = |i: usize| 0x1_0000_0000 + (i as u64) * 0x1000;
        // Each served at once (the request is whole in the socket when served).
        let errors: Vec<u32> = (0..=MAX_DMA_MAPS)
            .map(|i| {
                let id = c
                    .send(wire::cmd::DMA_MAP, &dma_map(page(i), 0x1000), &[])
                    .unwrap();
                assert_eq!(s.serve(&mut dev, 64).unwrap(), 1);
                c.wait_reply(id).unwrap().0.error
            })
            .collect();
        assert!(errors[..MAX_DMA_MAPS].iter().all(|&e| e == 0));
        assert_eq!(errors[MAX_DMA_MAPS], errno::ENOSPC);
        assert_eq!(dev.ram.len(), MAX_DMA_MAPS);
        assert_eq!(s.stats().dma_maps_over_limit, 1);
        // An unmap of one makes room for one.
        let unmap = |iova: u64| Body::default().u32(24).u32(0).u64(iova).u64(0x1000).0;
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DMA_UNMAP,
            &unmap(page(3)),
            &[],
        );
        let next = dma_map(page(MAX_DMA_MAPS), 0x1000);
        let (h, _) = ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &next, &[]);
        assert_eq!(h.error, 0);
        let (h, _) = ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &next, &[]);
        assert_eq!(h.error, errno::ENOSPC);
        assert_eq!(dev.ram.len(), MAX_DMA_MAPS);
        // Unmap all, and a new client, start from none.
        let all = Body::default()
            .u32(24)
            .u32(vfio::DMA_UNMAP_FLAG_ALL)
            .u64(0)
            .u64(0)
            .0;
        ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_UNMAP, &all, &[]);
        let (h, _) = ask(&mut c, &mut s, &mut dev, wire::cmd::DMA_MAP, &next, &[]);
        assert_eq!((h.error, s.stats().dma_maps_over_limit), (0, 2));
    }

    #[test]
    fn dma_with_and_without_descriptors_and_a_second_client() {
        let (dir, mut s) = server();
        let mut dev = fake();
        let path = dir.path.join("vfu.sock");
        let mut c = connect(&path);
        let mfd = crate::guest_ram::test_memfd(1 << 16, 0);
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DMA_MAP,
            &dma_map(0x10_0000, 1 << 16),
            &[mfd.as_raw_fd()],
        );
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DMA_MAP,
            &dma_map(0x20_0000, 4096),
            &[],
        );
        assert_eq!(dev.ram.len(), 2);
        // The device writes through the memfd mapping.
        dev.ram[0].1.write(8, b"fd-backed");
        let mut check = GuestRam::map(&mfd, 0, 1 << 16, &RamFaults::default()).unwrap();
        let mut got = [0u8; 9];
        check.read(8, &mut got);
        assert_eq!(&got, b"fd-backed");
        check.write(0, b"x");
        // Without a descriptor: a DMA_READ to the client, who answers from its memory.
        let client = std::thread::spawn(move || {
            let (h, body) = c.recv().unwrap();
            assert_eq!(h.command, wire::cmd::DMA_READ);
            let addr = u64::from_le_bytes(body[0..8].try_into().unwrap());
            let count = u32_at(&body, 8);
            assert_eq!((addr, count), (0x20_0010, 5));
            let mut reply_body = body[..12].to_vec();
            reply_body.extend_from_slice(&[0; 0]);
            reply_body.extend_from_slice(b"hello");
            reply_body.extend_from_slice(&[0; 4]);
            c.reply(&h, &reply_body).unwrap();
            c
        });
        let mut buf = [0u8; 5];
        dev.ram[1].1.read(0x10, &mut buf);
        assert_eq!(&buf, b"hello");
        let mut c = client.join().unwrap();
        // Unmap one, then the client leaves: everything is unmapped, a new one comes.
        ask(
            &mut c,
            &mut s,
            &mut dev,
            wire::cmd::DMA_UNMAP,
            &Body::default().u32(24).u32(0).u64(0x20_0000).u64(4096).0,
            &[],
        );
        assert_eq!(dev.ram.len(), 1);
        drop(c);
        pump(&mut s, &mut dev);
        assert!(!s.connected() && dev.ram.is_empty());
        let mut c2 = connect(&path);
        let (_, b) = ask(
            &mut c2,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &Body::default().u64(0).u32(7).u32(4).0,
            &[],
        );
        assert_eq!(u32_at(&b, 16), 0x1042_1af4);
        assert_eq!((s.stats().connections, s.stats().disconnects), (2, 1));
        assert_eq!(s.stats().dma_messages, 1);
        ask(&mut c2, &mut s, &mut dev, wire::cmd::DEVICE_RESET, &[], &[]);
        assert_eq!(dev.resets, 1);
        // A header that cannot be framed (size below 16): that client is dropped, the
        // server goes on and takes the next one.
        let bad = Header {
            id: 9,
            command: 9,
            size: 8,
            flags: 0,
            error: 0,
        }
        .emit();
        c2.send_bytes(&bad, &[]).unwrap();
        pump(&mut s, &mut dev);
        assert!(!s.connected());
        let mut c3 = connect(&path);
        let (_, b) = ask(
            &mut c3,
            &mut s,
            &mut dev,
            wire::cmd::REGION_READ,
            &Body::default().u64(0).u32(7).u32(2).0,
            &[],
        );
        assert_eq!(&b[16..], &[0xf4, 0x1a]);
        assert_eq!(s.stats().connections, 3);
    }

    /// A device whose capability list is `links`: (offset, ID, next), MSI 64-bit
    /// and MSI-X with 4 vectors where they are.
    fn with_caps(links: &[(usize, CapabilityId, u8)]) -> FakeFunction {
        let mut dev = FakeFunction::new(0xe000_0000);
        dev.config[regs::STATUS as usize] = caps::STATUS_CAP_LIST;
        dev.config[regs::CAP_PTR as usize] = 0x40;
        for &(at, id, next) in links {
            dev.config[at] = id.raw();
            dev.config[at + 1] = next;
            dev.config[at + 2] = match id {
                CapabilityId::Msi => 0x80,
                CapabilityId::MsiX => 3,
                _ => 0,
            };
        }
        dev
    }

    /// The capability list the client reads: (offset, ID) in the order the links
    /// give, and whether Status says there is a list.
    fn client_list(
        c: &mut Client,
        s: &mut VfioUserServer,
        dev: &mut FakeFunction,
    ) -> (Vec<(u16, u8)>, bool) {
        let cfg = config_read(c, s, dev, 0, 256);
        let status = cfg[regs::STATUS as usize] & caps::STATUS_CAP_LIST != 0;
        let mut walk = pci::Capabilities::new(|off| Ok::<_, ()>(u32_at(&cfg, usize::from(off))));
        let list = walk
            .by_ref()
            .map(|c| c.map(|c| (c.offset, c.id)).unwrap())
            .collect();
        assert_eq!(walk.end(), Some(pci::WalkEnd::Complete));
        (list, status && cfg[regs::CAP_PTR as usize] != 0)
    }

    /// MSI-X first, in the middle and last, with MSI behind or before it or absent:
    /// hidden, it is linked around (the Capabilities Pointer or the previous next
    /// pointer skips it; alone, the Status bit goes too), DEVICE_GET_IRQ_INFO offers
    /// it no vectors and DEVICE_SET_IRQS for it is refused, even to turn it off,
    /// while MSI stays usable. Not hidden, the same devices show it.
    #[test]
    fn hidden_msix_is_linked_around_wherever_it_is() {
        use CapabilityId::{Msi, MsiX, PciExpress, PowerManagement as Pm};
        let layouts: [&[(usize, CapabilityId, u8)]; 6] = [
            &[(0x40, MsiX, 0x50), (0x50, Msi, 0)],
            &[(0x40, MsiX, 0)],
            &[(0x40, PciExpress, 0x50), (0x50, MsiX, 0x60), (0x60, Msi, 0)],
            &[(0x40, PciExpress, 0x50), (0x50, MsiX, 0x60), (0x60, Pm, 0)],
            &[(0x40, Msi, 0x50), (0x50, Pm, 0x60), (0x60, MsiX, 0)],
            &[(0x40, Pm, 0x50), (0x50, MsiX, 0)],
        ];
        let trig = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
        let off = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER;
        for links in layouts {
            let all: Vec<(u16, u8)> = links
                .iter()
                .map(|&(at, id, _)| (at as u16, id.raw()))
                .collect();
            let kept: Vec<(u16, u8)> = all
                .iter()
                .copied()
                .filter(|&(_, id)| id != MsiX.raw())
                .collect();
            let has_msi = links.iter().any(|&(_, id, _)| id == Msi);
            for hide in [false, true] {
                let (dir, mut s) = server();
                if hide {
                    s.hide_capabilities(&[MsiX]);
                }
                let mut dev = with_caps(links);
                let mut c = connect(&dir.path.join("vfu.sock"));
                let want = if hide { &kept } else { &all };
                assert_eq!(
                    client_list(&mut c, &mut s, &mut dev),
                    (want.clone(), !want.is_empty()),
                    "{links:x?} hidden: {hide}"
                );
                let irq_info =
                    |c: &mut Client, s: &mut VfioUserServer, dev: &mut FakeFunction, index| {
                        let body = Body::default().u32(16).u32(0).u32(index).u32(0).0;
                        let (_, b) = ask(c, s, dev, wire::cmd::DEVICE_GET_IRQ_INFO, &body, &[]);
                        u32_at(&b, 12)
                    };
                let msix = irq_info(&mut c, &mut s, &mut dev, vfio::PCI_MSIX_IRQ);
                let msi = irq_info(&mut c, &mut s, &mut dev, vfio::PCI_MSI_IRQ);
                assert_eq!((msix, msi), (if hide { 0 } else { 4 }, u32::from(has_msi)));
                let v = sys::eventfd().unwrap();
                let set = (trig, vfio::PCI_MSIX_IRQ, 0, 1);
                let h = set_irqs(&mut c, &mut s, &mut dev, set, &[v.as_raw_fd()]);
                assert_eq!(h.error, if hide { errno::EINVAL } else { 0 });
                let h = set_irqs(
                    &mut c,
                    &mut s,
                    &mut dev,
                    (off, vfio::PCI_MSIX_IRQ, 0, 0),
                    &[],
                );
                assert_eq!(h.error, if hide { errno::EINVAL } else { 0 });
                let want_msix: &[bool] = if hide { &[] } else { &[true, false] };
                assert_eq!(
                    dev.msix_on, want_msix,
                    "hidden MSI-X never reaches the device"
                );
                if has_msi {
                    let set = (trig, vfio::PCI_MSI_IRQ, 0, 1);
                    let h = set_irqs(&mut c, &mut s, &mut dev, set, &[v.as_raw_fd()]);
                    assert_eq!(h.error, 0, "MSI, the fallback, still works");
                    s.vector(0);
                    assert!(sys::eventfd_take(&v).unwrap());
                }
            }
        }
    }

    /// Byte reads of the links see the patch too; the unlinked MSI-X is still
    /// there (its registers are the device's), its Message Control writes still
    /// filtered; the rest of Status comes live from the device; a reset or a changed
    /// device reads the list again; hiding MSI too leaves no list at all.
    #[test]
    fn hidden_capabilities_in_narrow_reads_and_after_changes() {
        use CapabilityId::{Msi, MsiX, PciExpress};
        let (dir, mut s) = server();
        s.hide_capabilities(&[MsiX]);
        assert_eq!(s.hidden_capabilities(), &[MsiX]);
        let links = [(0x40, PciExpress, 0x50), (0x50, MsiX, 0x60), (0x60, Msi, 0)];
        let mut dev = with_caps(&links);
        let mut c = connect(&dir.path.join("vfu.sock"));
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x41, 1), [0x60]);
        assert_eq!(
            config_read(&mut c, &mut s, &mut dev, 0x50, 3),
            [0x11, 0x60, 3]
        );
        config_write(&mut c, &mut s, &mut dev, 0x52, &[0, 0x80]);
        assert!(dev.config_writes.is_empty(), "{:x?}", dev.config_writes);
        dev.config[regs::STATUS as usize] |= 1 << 3;
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 6, 1), [0x18]);
        // The device changes under the server (a box restart): MSI-X now first.
        dev.config[0x34] = 0x50;
        dev.config[0x51] = 0x40;
        dev.config[0x41] = 0x60;
        assert_eq!(
            config_read(&mut c, &mut s, &mut dev, 0x34, 1),
            [0x40],
            "remembered"
        );
        s.device_changed();
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x34, 1), [0x40]);
        ask(&mut c, &mut s, &mut dev, wire::cmd::DEVICE_RESET, &[], &[]);
        assert_eq!(
            client_list(&mut c, &mut s, &mut dev),
            (vec![(0x40, PciExpress.raw()), (0x60, Msi.raw())], true)
        );
        // MSI and MSI-X both hidden (as the proxy hides them): PCIe alone.
        s.hide_capabilities(&[Msi, MsiX]);
        assert_eq!(
            client_list(&mut c, &mut s, &mut dev),
            (vec![(0x40, PciExpress.raw())], true)
        );
        let set = (
            vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER,
            vfio::PCI_MSI_IRQ,
            0,
            0,
        );
        assert_eq!(
            set_irqs(&mut c, &mut s, &mut dev, set, &[]).error,
            errno::EINVAL
        );
        // A device that does not answer reads all-ones, and no half-read list is kept.
        s.device_changed();
        dev.present = false;
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x34, 1), [0xff]);
        dev.present = true;
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x41, 1), [0]);
        // Nothing hidden: the device's own list.
        s.hide_capabilities(&[]);
        assert_eq!(config_read(&mut c, &mut s, &mut dev, 0x41, 1), [0x60]);
    }

    /// Work for the serving thread of a threaded test, and its answer.
    type Job = Box<dyn FnOnce(&mut VfioUserServer, &mut FakeFunction) -> bool + Send>;

    /// The client's blocking calls, with the server on a thread of its own as the
    /// host bridge runs it: version, info, DMA into a sealed memfd (and unmap),
    /// config space, a BAR by index and offset, MSI-X hidden (no vectors, refused),
    /// MSI and INTx through eventfds, and a close that takes the mappings away.
    #[test]
    fn the_client_drives_a_server_on_another_thread() {
        use crate::vfio_user::client::{eventfd_count, eventfd_wait, guest_memfd, ClientError};
        use std::os::fd::AsFd;
        use std::sync::mpsc;
        let (dir, mut s) = server();
        s.hide_capabilities(&[CapabilityId::MsiX]);
        let (jobs, rx) = mpsc::channel::<Option<Job>>();
        let (answers, answer) = mpsc::channel::<bool>();
        let serving = std::thread::spawn(move || {
            let mut dev = fake();
            loop {
                s.serve(&mut dev, 64).unwrap();
                match rx.try_recv() {
                    Ok(Some(job)) => answers.send(job(&mut s, &mut dev)).unwrap(),
                    Ok(None) => break,
                    Err(_) => {
                        sys::wait_readable(&s.wait_fds(), Duration::from_millis(1)).unwrap();
                    }
                }
            }
            (
                s.stats(),
                dev.ram.len(),
                dev.msi_on.clone(),
                dev.msix_on.clone(),
            )
        });
        // Has the serving thread do `job` between two requests; its answer.
        let run = |job: Job| {
            jobs.send(Some(job)).unwrap();
            answer.recv_timeout(Duration::from_secs(10)).unwrap()
        };
        let mut c = Client::connect(&dir.path.join("vfu.sock")).unwrap();
        assert!(c.negotiate().unwrap().contains("\"max_msg_fds\":8"));
        let info = c.device_info().unwrap();
        assert_eq!((info.regions, info.irqs), (9, 5));
        assert_eq!(c.region_info(0).unwrap().size, 4096);
        assert_eq!(c.region_info(vfio::PCI_CONFIG_REGION).unwrap().size, 256);
        let ram = guest_memfd(1 << 16).unwrap();
        c.dma_map(0x10_0000, 1 << 16, ram.as_fd(), 0).unwrap();
        run(Box::new(|_, dev| {
            dev.ram[0].1.write(0x80, b"from the device");
            true
        }));
        assert_eq!(c.config_dword(0).unwrap(), 0x1042_1af4);
        let mut got = [0u8; 15];
        // SAFETY: pread into a live buffer of its length, on a descriptor we own.
        let n = unsafe { libc::pread(ram.as_raw_fd(), got.as_mut_ptr().cast(), got.len(), 0x80) };
        assert_eq!((n, &got), (15, b"from the device"));
        c.region_write(0, 0x20, &[1, 2, 3, 4]).unwrap();
        assert_eq!(c.region_read(0, 0x20, 4).unwrap(), [1, 2, 3, 4]);
        assert!(matches!(
            c.region_read(0, 4094, 4),
            Err(ClientError::Refused {
                errno: errno::EINVAL,
                ..
            })
        ));
        // MSI-X hidden: no list entry, no vectors, refused; MSI and INTx work.
        assert_eq!(c.config_read(0x41, 1).unwrap(), [0]);
        assert_eq!(c.irq_info(vfio::PCI_MSIX_IRQ).unwrap().count, 0);
        let (x, msi, intx) = (
            sys::eventfd().unwrap(),
            sys::eventfd().unwrap(),
            sys::eventfd().unwrap(),
        );
        assert!(matches!(
            c.set_irq_eventfds(vfio::PCI_MSIX_IRQ, 0, &[x.as_fd()]),
            Err(ClientError::Refused {
                errno: errno::EINVAL,
                ..
            })
        ));
        assert_eq!(c.irq_info(vfio::PCI_MSI_IRQ).unwrap().count, 1);
        c.set_irq_eventfds(vfio::PCI_MSI_IRQ, 0, &[msi.as_fd()])
            .unwrap();
        run(Box::new(|s, _| {
            s.vector(0);
            s.vector(0);
            true
        }));
        assert_eq!(
            eventfd_wait(msi.as_fd(), Duration::from_secs(5)).unwrap(),
            2
        );
        c.set_irq_eventfds(vfio::PCI_INTX_IRQ, 0, &[intx.as_fd()])
            .unwrap();
        run(Box::new(|s, _| {
            s.set_intx(true);
            true
        }));
        assert_eq!(
            eventfd_wait(intx.as_fd(), Duration::from_secs(5)).unwrap(),
            1
        );
        c.mask_irq(vfio::PCI_INTX_IRQ, 0, false).unwrap();
        assert_eq!(
            eventfd_wait(intx.as_fd(), Duration::from_secs(5)).unwrap(),
            1,
            "still high"
        );
        c.disable_irqs(vfio::PCI_MSI_IRQ).unwrap();
        run(Box::new(|s, _| {
            s.vector(0);
            true
        }));
        c.dma_unmap(0x10_0000, 1 << 16).unwrap();
        assert_eq!(eventfd_count(msi.as_fd()).unwrap(), 0, "MSI is off");
        assert_eq!(eventfd_count(x.as_fd()).unwrap(), 0);
        c.dma_map(0x10_0000, 1 << 16, ram.as_fd(), 0).unwrap();
        c.close().unwrap();
        // Served until the server saw the client leave.
        let deadline = Instant::now() + Duration::from_secs(10);
        while run(Box::new(|s, _| s.connected())) {
            assert!(Instant::now() < deadline, "the server never saw the close");
            std::thread::sleep(Duration::from_millis(5));
        }
        jobs.send(None).unwrap();
        let (st, ram_left, msi_on, msix_on) = serving.join().unwrap();
        assert_eq!(ram_left, 0, "the close took the mapping");
        // On, off, and off again as the client left.
        assert_eq!((msi_on, msix_on), (vec![true, false, false], vec![false]));
        assert_eq!(
            (st.dma_maps, st.dma_unmaps, st.msi_signals, st.intx_signals),
            (2, 1, 2, 2)
        );
        assert_eq!(st.disconnects, 1);
    }
}
