//! AF_XDP: an XDP socket whose UMEM is the port's buffer pool. The kernel writes
//! received frames straight into pool buffers that the port posted on the fill ring,
//! and sends pool buffers named on the TX ring, handing them back on the completion
//! ring; nothing is copied in user space. Zero-copy in the driver where it has it
//! (copy mode otherwise, as on veth), need-wakeup so that a busy port makes no
//! syscalls on receive.
//!
//! The redirect program is this crate's own (see [`crate::bpf`]): an XSKMAP and a
//! dozen eBPF instructions, attached through a BPF link, so the program goes away with
//! the port even when the process dies. It can let only one EtherType through to the
//! socket (behind one 802.1Q tag or none), so ARP, neighbour discovery and the rest
//! still reach the kernel stack.
//!
//! XDP sees the frame as it was on the wire, 802.1Q tag included, unless a device
//! moved the tag into metadata: a NIC stripping tags on receive, or a Linux bridge
//! forwarding out of a veth with tx-vlan-offload on. Such frames would reach the socket
//! without their tag, so the port switches receive VLAN stripping off on its own
//! interface (as a DPDK port leaves it off unless asked), and a bridge on the path
//! needs tx-vlan-offload off on its ports (`Rig::bridge` does that; docs/dataplane.md).
//!
//! Every pool buffer is owned either by a handle or by the kernel (posted on the fill
//! or TX ring). The port keeps a bitmap of the ones the kernel holds and takes them all
//! back when it closes, so none is lost.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bpf::{XdpAttach, XdpRedirect};
use crate::mempool::{Mbuf, Mempool, PoolCache};
use crate::port::{LinkInfo, Port, PortError, PortStats};
use crate::sys::{
    interface_index, ioctl_socket, poll_in, query_link, set_vlan_offload, SharedMapping,
};

const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;

const XDP_PGOFF_RX_RING: u64 = 0;
const XDP_PGOFF_TX_RING: u64 = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: u64 = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: u64 = 0x1_8000_0000;

/// The kernel puts received frames this far into a UMEM chunk.
pub const XDP_PACKET_HEADROOM: usize = 256;

/// `struct xdp_umem_reg`.
#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RingOffsets {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Default, Debug)]
struct MmapOffsets {
    rx: RingOffsets,
    tx: RingOffsets,
    fill: RingOffsets,
    completion: RingOffsets,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_desc`: a frame on the RX or TX ring.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct XdpDesc {
    addr: u64,
    len: u32,
    options: u32,
}

/// `struct xdp_statistics`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

/// How the socket binds to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpBind {
    /// Zero-copy where the driver supports it, copy mode otherwise.
    Auto,
    /// Always copy mode (the kernel copies between its buffers and the UMEM).
    Copy,
    /// Zero-copy or fail.
    ZeroCopy,
}

#[derive(Clone, Copy, Debug)]
pub struct XdpConfig {
    /// The receive queue of the interface to bind to.
    pub queue: u32,
    /// Entries of each of the four rings (a power of two).
    pub ring_size: u32,
    pub attach: XdpAttach,
    pub bind: XdpBind,
    /// Only frames of this EtherType (directly or behind one 802.1Q tag) come to the
    /// socket; `None` takes every frame.
    pub ethertype: Option<u16>,
}

impl Default for XdpConfig {
    fn default() -> XdpConfig {
        XdpConfig {
            queue: 0,
            ring_size: 2048,
            attach: XdpAttach::Auto,
            bind: XdpBind::Auto,
            ethertype: None,
        }
    }
}

/// How the port ended up set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpMode {
    /// The XDP program runs in the driver, not the generic skb path.
    pub native: bool,
    /// The socket is bound zero-copy.
    pub zero_copy: bool,
    /// The interface stripped VLAN tags on receive, and the port switched that off.
    pub vlan_strip_disabled: bool,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} XDP, {}",
            if self.native { "native" } else { "generic" },
            if self.zero_copy {
                "zero-copy"
            } else {
                "copy mode"
            }
        )?;
        if self.vlan_strip_disabled {
            f.write_str(", VLAN stripping switched off")?;
        }
        Ok(())
    }
}

/// One of the four rings shared with the kernel. `local` is the index this side
/// advances (producer of fill/TX, consumer of RX/completion); `remote` the last value
/// seen of the kernel's index.
struct XskRing<T> {
    _map: SharedMapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    local: u32,
    remote: u32,
}

// SAFETY: the raw pointers point into `_map`, the mapping this value owns and moves with
// it, and nothing in it is tied to a thread. The pointers keep the ring `!Sync`, so
// one thread at a time (its port's) reaches it from user space; the kernel's side
// goes through the atomic producer and consumer indices. The ring is private to this
// module and only `AfXdpPort` holds one.
unsafe impl<T> Send for XskRing<T> {}

impl<T: Copy> XskRing<T> {
    fn map(fd: RawFd, off: &RingOffsets, size: u32, pgoff: u64, produce: bool) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = SharedMapping::new(fd, len, pgoff, libc::MAP_POPULATE)?;
        // SAFETY: the kernel's offsets place the indices, flags and descriptors inside
        // the mapping, 4-byte aligned (8 for the descriptors); they are only accessed
        // atomically (indices, flags) or between the indices' acquire/release.
        let ring = unsafe {
            XskRing {
                producer: map.base.add(off.producer as usize) as *const AtomicU32,
                consumer: map.base.add(off.consumer as usize) as *const AtomicU32,
                flags: map.base.add(off.flags as usize) as *const AtomicU32,
                descs: map.base.add(off.desc as usize) as *mut T,
                mask: size - 1,
                local: 0,
                remote: 0,
                _map: map,
            }
        };
        let (p, c) = (ring.index(ring.producer), ring.index(ring.consumer));
        Ok(XskRing {
            local: if produce { p } else { c },
            remote: if produce { c } else { p },
            ..ring
        })
    }

    fn index(&self, at: *const AtomicU32) -> u32 {
        // SAFETY: `at` is the producer or consumer index inside the live mapping.
        unsafe { &*at }.load(Ordering::Acquire)
    }

    fn publish(&self, at: *const AtomicU32, value: u32) {
        // SAFETY: as in `index`.
        unsafe { &*at }.store(value, Ordering::Release);
    }

    /// Free slots of a ring this side produces into.
    fn room(&mut self) -> u32 {
        self.remote = self.index(self.consumer);
        (self.mask + 1) - self.local.wrapping_sub(self.remote)
    }

    /// Writes the `i`th entry after those already produced (`i < room()`).
    fn write(&mut self, i: u32, value: T) {
        let slot = (self.local.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot <= mask lies in the descriptor array, and the kernel does not
        // read it until `submit` publishes it.
        unsafe { self.descs.add(slot).write(value) }
    }

    fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.publish(self.producer, self.local);
    }

    /// Entries produced here that the kernel has not taken yet.
    fn unconsumed(&mut self) -> u32 {
        self.remote = self.index(self.consumer);
        self.local.wrapping_sub(self.remote)
    }

    /// Entries ready in a ring this side consumes from.
    fn ready(&mut self) -> u32 {
        self.remote = self.index(self.producer);
        self.remote.wrapping_sub(self.local)
    }

    /// The `i`th ready entry (`i < ready()`).
    fn read(&self, i: u32) -> T {
        let slot = (self.local.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot <= mask lies in the array; the acquire load of the producer
        // index in `ready` made the kernel's write of this entry visible.
        unsafe { self.descs.add(slot).read() }
    }

    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.publish(self.consumer, self.local);
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: the flags word lies inside the live mapping.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// Which pool buffers the kernel holds.
struct Lent(Vec<u64>);

impl Lent {
    fn set(&mut self, idx: u32) {
        self.0[idx as usize / 64] |= 1 << (idx % 64);
    }

    /// Clears the bit of `idx`; false when the kernel did not hold that buffer.
    fn take(&mut self, idx: u32) -> bool {
        let (w, b) = (idx as usize / 64, 1u64 << (idx % 64));
        match self.0.get_mut(w) {
            Some(word) if *word & b != 0 => {
                *word &= !b;
                true
            }
            _ => false,
        }
    }
}

pub struct AfXdpPort {
    info: LinkInfo,
    mode: XdpMode,
    // Dropped explicitly, in this order, before the lent buffers are taken back: the
    // program, the rings' mappings (each holds the socket open), then the socket.
    xdp: Option<XdpRedirect>,
    fd: Option<OwnedFd>,
    fill: ManuallyDrop<XskRing<u64>>,
    completion: ManuallyDrop<XskRing<u64>>,
    rx: ManuallyDrop<XskRing<XdpDesc>>,
    tx: ManuallyDrop<XskRing<XdpDesc>>,
    cache: PoolCache,
    lent: Lent,
    buf_size: u64,
    stats: PortStats,
}

fn sockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T whose size is passed; the option reads that many bytes.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt<T: Default>(fd: RawFd, name: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live T and `len` its size; the kernel writes at most len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            name,
            &mut value as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn setup<'a>(op: &'static str, port: &'a str) -> impl FnOnce(io::Error) -> PortError + 'a {
    move |source| PortError::Io {
        op,
        port: port.to_string(),
        source,
    }
}

impl AfXdpPort {
    /// Opens an AF_XDP socket on `interface`, queue `cfg.queue`, with `pool` as its
    /// UMEM. The pool's buffers must be 2048 or 4096 bytes (the chunk sizes the kernel
    /// takes); several ports may share one pool, and a frame received on one can be
    /// sent on another without a copy.
    pub fn open(
        interface: &str,
        pool: &Arc<Mempool>,
        cfg: XdpConfig,
    ) -> Result<AfXdpPort, PortError> {
        let bs = pool.buf_size();
        if bs != 2048 && bs != 4096 {
            return Err(PortError::Setup(format!(
                "AF_XDP on {interface}: pool buffers are {bs} bytes; the UMEM needs 2048 or 4096"
            )));
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 64 {
            return Err(PortError::Setup(format!(
                "AF_XDP on {interface}: ring size {} is not a power of two >= 64",
                cfg.ring_size
            )));
        }
        if pool.count() < 2 * cfg.ring_size as usize {
            return Err(PortError::Setup(format!(
                "AF_XDP on {interface}: a pool of {} buffers cannot fill rings of {} and leave \
                 room for frames in use; give it at least {}",
                pool.count(),
                cfg.ring_size,
                2 * cfg.ring_size
            )));
        }
        let ifindex = interface_index(interface)?;
        // Devices without the offload refuse the request; they do not strip either.
        let vlan_strip_disabled = set_vlan_offload(interface, Some(false), None).unwrap_or(false);
        let (mac, mtu) = query_link(ioctl_socket(interface)?.as_raw_fd(), interface)?;
        // SAFETY: plain socket(2); checked before use.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(PortError::io(
                "opening an AF_XDP socket (needs CAP_NET_RAW and a kernel with XDP sockets)",
                interface,
            ));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        let (base, len) = pool.region();
        let reg = UmemReg {
            addr: base as u64,
            len: len as u64,
            chunk_size: bs as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sockopt(s, XDP_UMEM_REG, &reg).map_err(setup("registering the pool as UMEM", interface))?;
        let size = cfg.ring_size as libc::c_int;
        for (opt, what) in [
            (XDP_UMEM_FILL_RING, "sizing the fill ring"),
            (XDP_UMEM_COMPLETION_RING, "sizing the completion ring"),
            (XDP_RX_RING, "sizing the RX ring"),
            (XDP_TX_RING, "sizing the TX ring"),
        ] {
            sockopt(s, opt, &size).map_err(setup(what, interface))?;
        }
        let off: MmapOffsets =
            getsockopt(s, XDP_MMAP_OFFSETS).map_err(setup("XDP_MMAP_OFFSETS", interface))?;
        let n = cfg.ring_size;
        let fill = XskRing::map(s, &off.fill, n, XDP_UMEM_PGOFF_FILL_RING, true)
            .map_err(setup("mapping the fill ring", interface))?;
        let completion = XskRing::map(s, &off.completion, n, XDP_UMEM_PGOFF_COMPLETION_RING, false)
            .map_err(setup("mapping the completion ring", interface))?;
        let rx = XskRing::map(s, &off.rx, n, XDP_PGOFF_RX_RING, false)
            .map_err(setup("mapping the RX ring", interface))?;
        let tx = XskRing::map(s, &off.tx, n, XDP_PGOFF_TX_RING, true)
            .map_err(setup("mapping the TX ring", interface))?;

        let binds: &[u16] = match cfg.bind {
            XdpBind::Auto => &[XDP_ZEROCOPY, XDP_COPY],
            XdpBind::Copy => &[XDP_COPY],
            XdpBind::ZeroCopy => &[XDP_ZEROCOPY],
        };
        let mut bound = Err(io::Error::from_raw_os_error(libc::EINVAL));
        for &mode in binds {
            let addr = SockaddrXdp {
                family: libc::AF_XDP as u16,
                flags: mode | XDP_USE_NEED_WAKEUP,
                ifindex,
                queue_id: cfg.queue,
                shared_umem_fd: 0,
            };
            // SAFETY: `addr` is a sockaddr_xdp alive for the call; its size is passed.
            let r = unsafe {
                libc::bind(
                    s,
                    &addr as *const SockaddrXdp as *const libc::sockaddr,
                    std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
                )
            };
            bound = if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            };
            if bound.is_ok() {
                break;
            }
        }
        bound.map_err(setup("binding the AF_XDP socket to the queue", interface))?;
        let options: u32 = getsockopt(s, XDP_OPTIONS).unwrap_or(0);

        let xdp = XdpRedirect::attach(ifindex, cfg.queue + 1, cfg.ethertype, cfg.attach)
            .map_err(|e| PortError::Setup(format!("AF_XDP on {interface}: {e}")))?;
        xdp.register(cfg.queue, s)
            .map_err(|e| PortError::Setup(format!("AF_XDP on {interface}: {e}")))?;

        let mut port = AfXdpPort {
            info: LinkInfo {
                name: interface.to_string(),
                mac,
                mtu,
            },
            mode: XdpMode {
                native: xdp.is_native(),
                zero_copy: options & XDP_OPTIONS_ZEROCOPY != 0,
                vlan_strip_disabled,
            },
            xdp: Some(xdp),
            fd: Some(fd),
            fill: ManuallyDrop::new(fill),
            completion: ManuallyDrop::new(completion),
            rx: ManuallyDrop::new(rx),
            tx: ManuallyDrop::new(tx),
            cache: pool.cache(256),
            lent: Lent(vec![0; pool.count().div_ceil(64)]),
            buf_size: bs as u64,
            stats: PortStats::default(),
        };
        port.refill();
        Ok(port)
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    fn fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// Posts free pool buffers on the fill ring for the kernel to receive into.
    fn refill(&mut self) {
        let room = self.fill.room();
        if room < 16 {
            return;
        }
        let pool = self.cache.pool().clone();
        let mut n = 0;
        while n < room {
            let Some(m) = self.cache.get() else { break };
            self.fill.write(n, pool.region_offset(&m));
            self.lent.set(pool.index(&m));
            n += 1;
        }
        self.fill.submit(n);
    }

    /// Takes the buffer at UMEM address `addr` back from the kernel.
    fn reclaim(&mut self, addr: u64) -> Option<Mbuf> {
        let idx = u32::try_from(addr / self.buf_size).ok()?;
        if !self.lent.take(idx) {
            return None;
        }
        // SAFETY: the lent bit was set when the handle was given to the kernel and is
        // now cleared, so this is the one rebuilt handle of that buffer.
        Some(unsafe { self.cache.pool().reclaim(idx) })
    }

    /// Takes back the buffers the kernel finished sending.
    fn reap_completions(&mut self) {
        let ready = self.completion.ready();
        for i in 0..ready {
            let addr = self.completion.read(i);
            match self.reclaim(addr) {
                Some(m) => self.cache.put(m),
                None => self.stats.tx_errors += 1,
            }
        }
        self.completion.release(ready);
    }

    /// Wakes the kernel's transmit path while the TX ring holds frames it has not
    /// taken (and it asks to be woken).
    fn kick_tx_if_needed(&mut self) {
        if self.tx.unconsumed() > 0 && self.tx.needs_wakeup() {
            self.kick(true);
        }
    }

    fn kick(&mut self, tx: bool) {
        let fd = self.fd();
        // SAFETY: zero-length sendto/recvfrom on our own socket only wake the kernel's
        // TX or fill processing; no buffer is passed.
        let r = unsafe {
            if tx {
                libc::sendto(
                    fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            } else {
                libc::recvfrom(
                    fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            let transient = [libc::EAGAIN, libc::EBUSY, libc::ENOBUFS, libc::ENETDOWN];
            if !e.is_some_and(|e| transient.contains(&e)) {
                self.stats.tx_errors += tx as u64;
                self.stats.rx_errors += !tx as u64;
            }
        }
    }

    fn kernel_stats(&self) -> XdpStatistics {
        getsockopt(self.fd(), XDP_STATISTICS).unwrap_or_default()
    }
}

impl Port for AfXdpPort {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn pool(&self) -> &Arc<Mempool> {
        self.cache.pool()
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError> {
        self.refill();
        let ready = self.rx.ready().min(max.min(u32::MAX as usize) as u32);
        let pool = self.cache.pool().clone();
        let mut got = 0;
        for i in 0..ready {
            let d = self.rx.read(i);
            let Some(mut m) = self.reclaim(d.addr) else {
                // Not a buffer we posted: the kernel would never do this; count it.
                self.stats.rx_errors += 1;
                continue;
            };
            let off = (d.addr % self.buf_size) as usize;
            if off + d.len as usize > pool.buf_size() {
                self.stats.rx_errors += 1;
                self.cache.put(m);
                continue;
            }
            pool.set_data(&mut m, off, d.len as usize);
            self.stats.rx_bytes += d.len as u64;
            out.push(m);
            got += 1;
        }
        self.rx.release(ready);
        self.stats.rx_packets += got as u64;
        if ready == 0 && self.fill.needs_wakeup() {
            self.kick(false);
        }
        // Frames left in the TX ring (copy mode sends a bounded batch per kick, and a
        // kick can fail for want of kernel buffers) would otherwise wait for the next
        // transmission, which on a quiet link may be a retransmission timeout away.
        self.kick_tx_if_needed();
        Ok(got)
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError> {
        self.reap_completions();
        let n = (self.tx.room() as usize).min(bufs.len());
        let pool = self.cache.pool().clone();
        let mut queued = 0;
        for m in bufs.drain(..n) {
            let room = pool.buf_size() - m.data_offset();
            if m.len() > room || m.is_empty() {
                self.stats.tx_errors += 1;
                self.cache.put(m);
                continue;
            }
            self.tx.write(
                queued,
                XdpDesc {
                    addr: pool.region_offset(&m),
                    len: m.len() as u32,
                    options: 0,
                },
            );
            self.stats.tx_bytes += m.len() as u64;
            self.lent.set(pool.index(&m));
            queued += 1;
        }
        self.tx.submit(queued);
        self.stats.tx_packets += queued as u64;
        self.stats.tx_busy += bufs.len() as u64;
        self.kick_tx_if_needed();
        Ok(n)
    }

    fn stats(&self) -> PortStats {
        let k = self.kernel_stats();
        let mut s = self.stats;
        s.rx_dropped += k.rx_dropped + k.rx_ring_full;
        s.rx_nombuf += k.rx_fill_ring_empty_descs;
        s.rx_errors += k.rx_invalid_descs;
        s.tx_errors += k.tx_invalid_descs;
        s
    }

    fn wait_rx(&self, timeout: Duration) {
        poll_in(self.fd(), timeout);
    }

    fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        // Detach the program, unmap the rings, close the socket. The rings' mappings
        // hold the socket open, so only once all three are gone does the kernel
        // release it; releasing unbinds it from the queue and waits (synchronize_net)
        // until no receive path can still copy into its UMEM.
        self.xdp.take();
        // SAFETY: each ring is dropped once, here, and not used afterwards: nothing
        // below touches them and drop is the port's last use.
        unsafe {
            ManuallyDrop::drop(&mut self.fill);
            ManuallyDrop::drop(&mut self.completion);
            ManuallyDrop::drop(&mut self.rx);
            ManuallyDrop::drop(&mut self.tx);
        }
        self.fd.take();
        if self.mode.zero_copy {
            // In zero-copy mode the driver holds the chunks of the fill ring until the
            // kernel detaches the buffer pool from the queue, which it does from
            // deferred work after the release: a NIC could still write into them for
            // a while. They stay out of the pool rather than be handed out again.
            return;
        }
        let pool = self.cache.pool().clone();
        for (w, word) in self.lent.0.iter_mut().enumerate() {
            while *word != 0 {
                let b = word.trailing_zeros();
                *word &= !(1 << b);
                // SAFETY: in copy mode the kernel reaches a lent buffer only through
                // this socket, which is released above (no mapping or descriptor of
                // it is left; the release waited out receive paths in flight), so it
                // has let go of the buffer; the lent bitmap holds each index once and
                // no handle on it exists while it is lent.
                pool.put(unsafe { pool.reclaim((w * 64) as u32 + b) });
            }
        }
    }
}

#[allow(dead_code)]
const _: () = {
    assert!(std::mem::size_of::<XdpDesc>() == 16);
    assert!(std::mem::size_of::<MmapOffsets>() == 128);
    assert!(std::mem::size_of::<SockaddrXdp>() == 16);
    assert!(std::mem::size_of::<UmemReg>() == 32);
};
