//! AF_PACKET with memory-mapped rings: a TPACKET_V3 receive ring (the kernel fills
//! whole blocks of frames; one poll covers many frames) and a PACKET_TX_RING (frames
//! are written into the ring and one `send` call kicks the lot), with
//! PACKET_QDISC_BYPASS. Frames are copied once between the ring and the pool.
//!
//! The kernel strips the 802.1Q tag on receive and reports it in the frame header
//! (`tp_vlan_tci`); the port puts it back, like the socket port.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mempool::{Mbuf, Mempool, PoolCache};
use crate::port::{LinkInfo, Port, PortError, PortStats};
use crate::sys::{setsockopt_int, PacketSocket, SharedMapping};

const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const TPACKET_V2: libc::c_int = 1;
const TPACKET_V3: libc::c_int = 2;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_SENDING: u32 = 2;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// `struct tpacket_req3`.
#[repr(C)]
#[derive(Default)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// `struct tpacket3_hdr` (48 bytes with its trailing padding).
#[repr(C)]
struct Tpacket3Hdr {
    next_offset: u32,
    sec: u32,
    nsec: u32,
    snaplen: u32,
    len: u32,
    status: u32,
    mac: u16,
    net: u16,
    rxhash: u32,
    vlan_tci: u32,
    vlan_tpid: u16,
    padding: u16,
    tp_padding: [u8; 8],
}

/// Offsets in `struct tpacket_block_desc` (version, offset_to_priv, then hdr_v1).
mod block {
    pub const STATUS: usize = 8;
    pub const NUM_PKTS: usize = 12;
    pub const FIRST_PKT: usize = 16;
}

/// Offsets in a frame slot's header (`tpacket2_hdr` / `tpacket3_hdr`): status, length,
/// snap length, and where TX data starts (TPACKET_ALIGN of the header size).
#[derive(Clone, Copy)]
struct SlotLayout {
    status: usize,
    len: usize,
    snaplen: usize,
    tx_data: usize,
}

const V2_SLOT: SlotLayout = SlotLayout {
    status: 0,
    len: 4,
    snaplen: 8,
    tx_data: 32,
};
const V3_SLOT: SlotLayout = SlotLayout {
    status: 20,
    len: 16,
    snaplen: 12,
    tx_data: 48,
};

/// `tpacket2_hdr` fields past the ones in `SlotLayout`.
mod v2 {
    pub const MAC: usize = 12;
    pub const VLAN_TCI: usize = 24;
    pub const VLAN_TPID: usize = 26;
}

/// Copies a received frame into `buf`, putting back the 802.1Q tag the kernel took
/// out (`vlan`: TPID, TCI). Returns the frame length, or `None` if it does not fit.
fn copy_frame(buf: &mut [u8], data: &[u8], vlan: Option<(u16, u16)>) -> Option<usize> {
    match vlan {
        Some((tpid, tci)) if data.len() >= 12 => {
            let len = data.len() + 4;
            if len > buf.len() {
                return None;
            }
            buf[..12].copy_from_slice(&data[..12]);
            buf[12..14].copy_from_slice(&tpid.to_be_bytes());
            buf[14..16].copy_from_slice(&tci.to_be_bytes());
            buf[16..len].copy_from_slice(&data[12..]);
            Some(len)
        }
        _ => {
            buf.get_mut(..data.len())?.copy_from_slice(data);
            Some(data.len())
        }
    }
}

/// The tag of a received frame from its status word and header fields.
fn stripped_tag(status: u32, tci: u16, tpid: u16) -> Option<(u16, u16)> {
    (status & TP_STATUS_VLAN_VALID != 0).then(|| {
        let tpid = if status & TP_STATUS_VLAN_TPID_VALID != 0 {
            tpid
        } else {
            0x8100
        };
        (tpid, tci)
    })
}

/// The receive ring's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingVersion {
    /// TPACKET_V3: the kernel fills blocks of variable-size frames and hands a block
    /// over when it is full or its retire timer fires. The most frames per wake-up,
    /// but a lone frame waits for the timer (1 ms, rounded up to the kernel tick).
    Blocks,
    /// TPACKET_V2: fixed-size frame slots, each handed over as soon as it is written.
    /// What request/response traffic wants (DPDK's net_af_packet uses it too).
    Frames,
}

/// Ring sizes.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    pub version: RingVersion,
    pub rx_block_size: u32,
    pub rx_blocks: u32,
    /// Milliseconds after which the kernel hands over a partly filled block.
    pub rx_block_timeout_ms: u32,
    /// Bytes per frame slot: every TX slot, and every RX slot of TPACKET_V2. The port
    /// makes the slots larger where the pool's buffers hold larger frames (a
    /// jumbo-frame link), so that any frame a buffer holds fits a slot.
    pub frame_size: u32,
    pub tx_frames: u32,
}

impl RingConfig {
    /// Frame slots handed over one by one (TPACKET_V2): for latency.
    pub fn low_latency() -> RingConfig {
        RingConfig {
            version: RingVersion::Frames,
            ..RingConfig::default()
        }
    }
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            version: RingVersion::Blocks,
            rx_block_size: 1 << 20,
            rx_blocks: 16,
            rx_block_timeout_ms: 1,
            frame_size: 2048,
            tx_frames: 2048,
        }
    }
}

pub struct AfPacketPort {
    info: LinkInfo,
    sock: PacketSocket,
    map: SharedMapping,
    cfg: RingConfig,
    cache: PoolCache,
    /// Current RX block, and the next frame in it when a block is half consumed.
    rx_block: u32,
    rx_next: Option<(usize, u32)>,
    tx_next: u32,
    stats: PortStats,
}

/// The frame slot for a pool of `buf_size`-byte buffers: the buffer, the ring's
/// per-frame header in front of it (the kernel puts a received frame's MAC header
/// at most 128 bytes into its slot), rounded to the kernel's 16-byte alignment.
fn slot_size_for(buf_size: usize) -> u32 {
    let slot = (buf_size + 128).next_multiple_of(16);
    // A TX block is 64 KiB and must hold at least one slot.
    slot.min(1 << 16) as u32
}

fn req_for(cfg: &RingConfig, rx: bool) -> TpacketReq3 {
    if rx {
        TpacketReq3 {
            block_size: cfg.rx_block_size,
            block_nr: cfg.rx_blocks,
            frame_size: cfg.frame_size,
            frame_nr: cfg.rx_block_size / cfg.frame_size * cfg.rx_blocks,
            retire_blk_tov: cfg.rx_block_timeout_ms,
            ..TpacketReq3::default()
        }
    } else {
        let per_block = (1u32 << 16) / cfg.frame_size;
        TpacketReq3 {
            block_size: 1 << 16,
            block_nr: cfg.tx_frames.div_ceil(per_block),
            frame_size: cfg.frame_size,
            frame_nr: cfg.tx_frames.div_ceil(per_block) * per_block,
            ..TpacketReq3::default()
        }
    }
}

impl AfPacketPort {
    pub fn open(
        interface: &str,
        pool: &Arc<Mempool>,
        cfg: RingConfig,
    ) -> Result<AfPacketPort, PortError> {
        let mut cfg = cfg;
        cfg.frame_size = cfg.frame_size.max(slot_size_for(pool.buf_size()));
        let sock = PacketSocket::open(interface, true, false)?;
        let (mac, mtu) = sock.link_info()?;
        let fd = sock.fd();
        let version = match cfg.version {
            RingVersion::Blocks => TPACKET_V3,
            RingVersion::Frames => TPACKET_V2,
        };
        setsockopt_int(fd, libc::SOL_PACKET, PACKET_VERSION, version)
            .map_err(|_| PortError::io("setting the TPACKET version", interface))?;
        let _ = setsockopt_int(fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1);
        let rx = req_for(&cfg, true);
        let tx = req_for(&cfg, false);
        for (opt, req, what) in [
            (PACKET_RX_RING, &rx, "PACKET_RX_RING"),
            (PACKET_TX_RING, &tx, "PACKET_TX_RING"),
        ] {
            // SAFETY: `req` is a tpacket_req3 alive for the call; its size is passed.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_PACKET,
                    opt,
                    req as *const TpacketReq3 as *const libc::c_void,
                    std::mem::size_of::<TpacketReq3>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(PortError::io(what, interface));
            }
        }
        let rx_len = (rx.block_size * rx.block_nr) as usize;
        let tx_len = (tx.block_size * tx.block_nr) as usize;
        // MAP_LOCKED can fail on a low memlock limit; the rings work without it.
        let map = SharedMapping::new(fd, rx_len + tx_len, 0, libc::MAP_LOCKED)
            .or_else(|_| SharedMapping::new(fd, rx_len + tx_len, 0, 0))
            .map_err(|_| PortError::io("mapping the packet rings", interface))?;
        cfg.tx_frames = tx.frame_nr;
        Ok(AfPacketPort {
            info: LinkInfo {
                name: interface.to_string(),
                mac,
                mtu,
            },
            sock,
            map,
            cfg,
            cache: pool.cache(256),
            rx_block: 0,
            rx_next: None,
            tx_next: 0,
            stats: PortStats::default(),
        })
    }

    /// Hands a filled buffer to the caller, or back to the cache when the frame did
    /// not fit (counted as dropped).
    fn deliver(
        &mut self,
        pool: &Mempool,
        mut m: Mbuf,
        copied: Option<usize>,
        out: &mut Vec<Mbuf>,
    ) -> bool {
        match copied {
            Some(len) => {
                pool.set_len(&mut m, len);
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += len as u64;
                out.push(m);
                true
            }
            None => {
                self.stats.rx_dropped += 1;
                self.cache.put(m);
                false
            }
        }
    }

    /// TPACKET_V3: whole blocks of frames.
    fn rx_blocks(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let pool = self.cache.pool().clone();
        let bs = self.cfg.rx_block_size as usize;
        let mut n = 0;
        while n < max {
            let block = self.rx_block as usize * bs;
            if self.load_status(block + block::STATUS) & TP_STATUS_USER == 0 {
                break;
            }
            let num = self.read_u32(block + block::NUM_PKTS);
            let (mut off, mut left) = self
                .rx_next
                .unwrap_or((self.read_u32(block + block::FIRST_PKT) as usize, num));
            while left > 0 && n < max {
                let pkt = block + off;
                // SAFETY: the kernel wrote a tpacket3_hdr at this offset of a block it
                // handed to user space; it lies inside the RX part of the mapping.
                let h = unsafe {
                    std::ptr::read_unaligned(self.map.base.add(pkt) as *const Tpacket3Hdr)
                };
                let Some(mut m) = self.cache.get() else {
                    self.stats.rx_nombuf += 1;
                    self.rx_next = Some((off, left));
                    return n;
                };
                let snap = h.snaplen as usize;
                let vlan = stripped_tag(h.status, h.vlan_tci as u16, h.vlan_tpid);
                // A frame the kernel cut short (longer than the ring takes) is dropped
                // here, not handed up as a damaged one.
                let copied = if h.len != h.snaplen || pkt + h.mac as usize + snap > self.rx_len() {
                    None
                } else {
                    // SAFETY: the frame bytes lie inside the block (checked above).
                    let data = unsafe {
                        std::slice::from_raw_parts(self.map.base.add(pkt + h.mac as usize), snap)
                    };
                    copy_frame(pool.buf_mut(&mut m), data, vlan)
                };
                if self.deliver(&pool, m, copied, out) {
                    n += 1;
                }
                left -= 1;
                off += h.next_offset as usize;
            }
            if left == 0 {
                // Hand the block back to the kernel.
                self.store_status(block + block::STATUS, TP_STATUS_KERNEL);
                self.rx_block = (self.rx_block + 1) % self.cfg.rx_blocks;
                self.rx_next = None;
            } else {
                self.rx_next = Some((off, left));
            }
        }
        n
    }

    /// TPACKET_V2: one frame slot at a time, each visible as soon as it is written.
    fn rx_frames(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let pool = self.cache.pool().clone();
        let (bs, fs) = (
            self.cfg.rx_block_size as usize,
            self.cfg.frame_size as usize,
        );
        let per_block = bs / fs;
        let slots = per_block * self.cfg.rx_blocks as usize;
        let mut n = 0;
        while n < max {
            let i = self.rx_block as usize;
            let slot = (i / per_block) * bs + (i % per_block) * fs;
            let status = self.load_status(slot + V2_SLOT.status);
            if status & TP_STATUS_USER == 0 {
                break;
            }
            let Some(mut m) = self.cache.get() else {
                self.stats.rx_nombuf += 1;
                break;
            };
            let snap = self.read_u32(slot + V2_SLOT.snaplen) as usize;
            let whole = self.read_u32(slot + V2_SLOT.len) as usize == snap;
            let mac = self.read_u16(slot + v2::MAC) as usize;
            let vlan = stripped_tag(
                status,
                self.read_u16(slot + v2::VLAN_TCI),
                self.read_u16(slot + v2::VLAN_TPID),
            );
            // A frame the kernel cut short (longer than a slot) is dropped here.
            let copied = if !whole || mac + snap > fs {
                None
            } else {
                // SAFETY: the frame lies inside its slot (checked above), which the
                // kernel handed to user space (status USER).
                let data =
                    unsafe { std::slice::from_raw_parts(self.map.base.add(slot + mac), snap) };
                copy_frame(pool.buf_mut(&mut m), data, vlan)
            };
            if self.deliver(&pool, m, copied, out) {
                n += 1;
            }
            self.store_status(slot + V2_SLOT.status, TP_STATUS_KERNEL);
            self.rx_block = ((i + 1) % slots) as u32;
        }
        n
    }

    fn rx_len(&self) -> usize {
        (self.cfg.rx_block_size * self.cfg.rx_blocks) as usize
    }

    /// The status word of a shared ring header, read and written atomically.
    fn status_at(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: every caller passes the offset of a 4-byte-aligned status field
        // inside the mapping; the kernel and this port only access it atomically.
        unsafe { &*(self.map.base.add(offset) as *const AtomicU32) }
    }

    fn load_status(&self, offset: usize) -> u32 {
        self.status_at(offset).load(Ordering::Acquire)
    }

    fn store_status(&self, offset: usize, value: u32) {
        self.status_at(offset).store(value, Ordering::Release);
    }

    fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: offset lies inside the mapping (a frame header the kernel wrote).
        unsafe { std::ptr::read_volatile(self.map.base.add(offset) as *const u16) }
    }

    fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: offset lies inside the mapping (block or frame headers the kernel wrote).
        unsafe { std::ptr::read_volatile(self.map.base.add(offset) as *const u32) }
    }
}

impl Port for AfPacketPort {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn pool(&self) -> &Arc<Mempool> {
        self.cache.pool()
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError> {
        Ok(match self.cfg.version {
            RingVersion::Blocks => self.rx_blocks(out, max),
            RingVersion::Frames => self.rx_frames(out, max),
        })
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError> {
        let pool = self.cache.pool().clone();
        let fs = self.cfg.frame_size as usize;
        let layout = match self.cfg.version {
            RingVersion::Blocks => V3_SLOT,
            RingVersion::Frames => V2_SLOT,
        };
        let room = fs - layout.tx_data;
        let per_block = (1usize << 16) / fs;
        let (mut sent, mut too_large) = (0, 0);
        for m in bufs.iter() {
            let i = self.tx_next as usize;
            // Frames are laid out per block of 64 KiB.
            let slot = self.rx_len() + (i / per_block) * (1 << 16) + (i % per_block) * fs;
            let st = self.load_status(slot + layout.status);
            if st & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING) != 0 {
                break; // ring full
            }
            if st & TP_STATUS_WRONG_FORMAT != 0 {
                self.stats.tx_errors += 1;
            }
            let data = pool.data(m);
            if data.len() > room {
                // Too large for a ring slot: dropped (and counted), not retried forever.
                self.stats.tx_errors += 1;
                too_large += 1;
                sent += 1;
                continue;
            }
            // SAFETY: the slot is ours (status AVAILABLE) and the copy stays within it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.map.base.add(slot + layout.tx_data),
                    data.len(),
                );
                std::ptr::write_volatile(
                    self.map.base.add(slot + layout.len) as *mut u32,
                    data.len() as u32,
                );
                std::ptr::write_volatile(
                    self.map.base.add(slot + layout.snaplen) as *mut u32,
                    data.len() as u32,
                );
            }
            fence(Ordering::Release);
            self.store_status(slot + layout.status, TP_STATUS_SEND_REQUEST);
            self.tx_next = (self.tx_next + 1) % self.cfg.tx_frames;
            self.stats.tx_bytes += data.len() as u64;
            sent += 1;
        }
        if sent > too_large {
            // SAFETY: a zero-length send on our socket asks the kernel to transmit the ring.
            let r = unsafe { libc::send(self.sock.fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(e.kind(), std::io::ErrorKind::WouldBlock)
                    && e.raw_os_error() != Some(libc::ENOBUFS)
                {
                    self.stats.tx_errors += 1;
                }
            }
        }
        for m in bufs.drain(..sent) {
            self.cache.put(m);
        }
        self.stats.tx_packets += (sent - too_large) as u64;
        self.stats.tx_busy += bufs.len() as u64;
        Ok(sent)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_rx(&self, timeout: Duration) {
        self.sock.wait(timeout);
    }

    fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.sock.fd())
    }
}

#[allow(dead_code)]
const _: () = {
    assert!(std::mem::size_of::<Tpacket3Hdr>() == 48);
    let _ = TP_STATUS_AVAILABLE;
};
