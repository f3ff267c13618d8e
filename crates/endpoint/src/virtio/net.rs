//! virtio-net (virtio 1.x, 5.1): the device model and its backend contract.
//!
//! The device moves frames between its virtqueues (over DMA, like every virtio device
//! here) and a [`NetBackend`] of the box: a TAP device, a raw socket on a box
//! interface, or memory ([`MemBackend`], tests). Frames cross the backend with the
//! virtio-net header in front ([`VNET_HDR_LEN`] bytes, the `virtio_net_hdr_v1` layout
//! VERSION_1 devices use), so offloads (checksum, segmentation) pass through unchanged
//! to a backend that takes them (a TAP with `IFF_VNET_HDR`).
//!
//! Queues: receiveq 0 (its chains wait parked in the transport until a frame comes),
//! transmitq 1, controlq 2; no multiqueue. The box builds one with
//! `VirtioPci::new(VirtioNet::new(backend, mac, offloads))` in a function of
//! [`config_space`].
//!
//! | device configuration | |
//! |---|---|
//! | 0x00 mac | the box's, or what the driver set (CTRL_MAC_ADDR) |
//! | 0x06 status | LINK_UP: the backend's carrier, unless the device is leaving |
//! | 0x08 max_virtqueue_pairs | 1 |
//! | 0x0a mtu | 0 (MTU not offered) |

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use crate::config::{ConfigError, ConfigSpace};

use super::{ChainLens, Fill, Parked, Piece, VirtioDevice};

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
    /// The backend's own counters, by name (shown with the device's in `tether ctl
    /// stats`).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// An in-memory backend (tests, fuzzing): frames for the guest wait in `inbox`,
/// frames from the guest land in `sent`; `room` bounds how many `sent` takes before
/// `send` says WouldBlock (`None`: no bound).
#[derive(Debug, Default)]
pub struct MemBackend {
    pub inbox: VecDeque<Vec<u8>>,
    pub sent: Vec<Vec<u8>>,
    pub room: Option<usize>,
    pub carrier: bool,
    pub offloads: Offloads,
    pub offload_calls: u64,
}

impl MemBackend {
    /// A backend with carrier and no bound on what it takes.
    pub fn new() -> MemBackend {
        MemBackend {
            carrier: true,
            ..MemBackend::default()
        }
    }
}

impl NetBackend for MemBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.room.is_some_and(|r| self.sent.len() >= r) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.sent.push(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.inbox.pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.offloads = offloads;
        self.offload_calls += 1;
        Ok(())
    }

    fn link_up(&self) -> bool {
        self.carrier
    }
}

/// The virtio device type of a network device.
pub const DEVICE_TYPE: u16 = 1;
/// Queues: one receive/transmit pair and the control queue (multiqueue is not
/// offered).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const CTRL_QUEUE: u16 = 2;
pub const NUM_QUEUES: u16 = 3;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the device configuration: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: u32 = 12;
/// The largest frame (header included) that crosses the device either way: a 64 KiB
/// segmentation-offload packet with its Ethernet and VLAN headers. Longer transmit
/// chains are dropped and counted; the backend's receive buffer is this long.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;
/// Frames one fill call may drop before it gives the box's round back.
const DROPS_PER_FILL: usize = 256;

/// Feature bits of a network device (virtio 1.x, 5.1.3).
pub mod feature {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    pub const GUEST_UFO: u64 = 1 << 10;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    pub const HOST_UFO: u64 = 1 << 14;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const CTRL_RX: u64 = 1 << 18;
    pub const CTRL_VLAN: u64 = 1 << 19;
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    pub const MQ: u64 = 1 << 22;
    pub const CTRL_MAC_ADDR: u64 = 1 << 23;
    /// Offered always.
    pub const BASE: u64 = MAC | STATUS | MRG_RXBUF | CTRL_VQ | CTRL_RX | CTRL_MAC_ADDR;
    /// Offered when the backend passes the virtio-net header (checksum and
    /// segmentation offloads both ways).
    pub const OFFLOADS: u64 = CSUM
        | GUEST_CSUM
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | GUEST_UFO
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | HOST_UFO;
}

/// Bits of the configuration's status field.
pub const S_LINK_UP: u16 = 1;

/// Control queue classes and commands (virtio 1.x, 5.1.6.5), and the answers.
pub mod ctrl {
    pub const CLASS_RX: u8 = 0;
    pub const RX_PROMISC: u8 = 0;
    pub const RX_ALLMULTI: u8 = 1;
    pub const CLASS_MAC: u8 = 1;
    pub const MAC_TABLE_SET: u8 = 0;
    pub const MAC_ADDR_SET: u8 = 1;
    pub const OK: u8 = 0;
    pub const ERR: u8 = 1;
    /// Bytes of a command the device keeps (class, command, and the largest data it
    /// serves: a MAC table of two lists of at most this many entries each, beyond
    /// which a table is refused).
    pub const MAX_TABLE_ENTRIES: usize = 64;
    pub const MAX_COMMAND: usize = 2 + 2 * (4 + 6 * MAX_TABLE_ENTRIES);
}

/// Counters of a network device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NetStats {
    /// Frames and bytes (without the header) to the guest (receive queue 0).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames to the guest dropped: no receive buffer posted (or not enough), a
    /// frame longer than the buffer it would take (without MRG_RXBUF), a frame
    /// shorter than the header, or a backend error.
    pub rx_no_buffer: u64,
    pub rx_too_big: u64,
    pub rx_errors: u64,
    /// Frames and bytes (without the header) from the guest (transmit queue 1).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames from the guest dropped: shorter than the header, longer than
    /// [`MAX_FRAME`], or refused by the backend.
    pub tx_malformed: u64,
    pub tx_too_big: u64,
    pub tx_errors: u64,
    /// Times the backend could not take a frame (the transmit queue stalled).
    pub tx_backpressure: u64,
    pub ctrl_commands: u64,
    /// Commands answered ERR (unknown, not negotiated, malformed).
    pub ctrl_errors: u64,
    pub link_changes: u64,
    /// The backend refused the negotiated offloads.
    pub offload_errors: u64,
}

/// The virtio-net device model: one receive/transmit queue pair and a control
/// queue, frames to and from a [`NetBackend`] with the virtio-net header.
///
/// Receive chains wait parked in the transport until the backend has a frame; with
/// MRG_RXBUF one frame takes as many chains as it needs (num_buffers says how many),
/// without it one chain, and a frame that does not fit is dropped. A frame the
/// backend gives while no buffer is posted (and none is being fetched) is dropped,
/// so the backend is always read. A transmit chain's frame goes to the backend once
/// read; when the backend would block, the transmit queue stalls in order until it
/// takes the frame.
pub struct VirtioNet<B: NetBackend> {
    backend: B,
    /// The MAC the box gave, and the one the driver set (MAC_ADDR_SET).
    box_mac: [u8; 6],
    mac: [u8; 6],
    /// Offer checksum and segmentation offloads (the backend passes the header).
    offloads: bool,
    driver_features: u64,
    /// The link as last reported, and whether the box said the device is leaving.
    link: bool,
    leaving: bool,
    promisc: bool,
    allmulti: bool,
    /// A frame from the backend waiting for receive buffers: `rx_buf[..len]`.
    rx_buf: Vec<u8>,
    rx_len: Option<usize>,
    tx_blocked: bool,
    stats: NetStats,
}

impl<B: NetBackend> VirtioNet<B> {
    /// A device with MAC `mac` on `backend`; `offloads`: the backend passes the
    /// virtio-net header through (a TAP with IFF_VNET_HDR), so checksum and
    /// segmentation offloads are offered.
    pub fn new(backend: B, mac: [u8; 6], offloads: bool) -> VirtioNet<B> {
        let link = backend.link_up();
        VirtioNet {
            backend,
            box_mac: mac,
            mac,
            offloads,
            driver_features: 0,
            link,
            leaving: false,
            promisc: false,
            allmulti: false,
            rx_buf: Vec::new(),
            rx_len: None,
            tx_blocked: false,
            stats: NetStats::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The MAC the driver sees now.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Receive modes the driver asked for (promiscuous, all-multicast): recorded,
    /// the backend gets every frame anyway.
    pub fn rx_modes(&self) -> (bool, bool) {
        (self.promisc, self.allmulti)
    }

    /// The link as the driver sees it: the backend's carrier, unless leaving.
    pub fn link_up(&self) -> bool {
        self.link
    }

    fn negotiated(&self, f: u64) -> bool {
        self.driver_features & f != 0
    }

    /// Whether the link changed since last reported.
    fn update_link(&mut self) -> bool {
        let now = self.backend.link_up() && !self.leaving;
        if now == self.link {
            return false;
        }
        self.link = now;
        self.stats.link_changes += 1;
        true
    }

    /// The offloads the driver took for its receive side, as the backend is told.
    fn guest_offloads(&self) -> Offloads {
        if !self.offloads {
            return Offloads::default();
        }
        Offloads {
            csum: self.negotiated(feature::GUEST_CSUM),
            tso4: self.negotiated(feature::GUEST_TSO4),
            tso6: self.negotiated(feature::GUEST_TSO6),
            ecn: self.negotiated(feature::GUEST_ECN),
            ufo: self.negotiated(feature::GUEST_UFO),
        }
    }

    /// Takes the next frame from the backend into `rx_buf` (dropping those shorter
    /// than the header); false when none waits.
    fn next_frame(&mut self) -> bool {
        if self.rx_len.is_some() {
            return true;
        }
        if self.rx_buf.len() < MAX_FRAME {
            self.rx_buf.resize(MAX_FRAME, 0);
        }
        loop {
            match self.backend.recv(&mut self.rx_buf) {
                Ok(Some(n)) if n >= VNET_HDR_LEN && n <= self.rx_buf.len() => {
                    self.rx_len = Some(n);
                    return true;
                }
                Ok(Some(_)) => self.stats.rx_errors += 1,
                Ok(None) => return false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.stats.rx_errors += 1;
                    return false;
                }
            }
        }
    }

    /// A command of the control queue: OK or ERR.
    fn control(&mut self, cmd: &[u8]) -> u8 {
        self.stats.ctrl_commands += 1;
        let answer = match *cmd {
            [ctrl::CLASS_RX, c @ (ctrl::RX_PROMISC | ctrl::RX_ALLMULTI), on, ..]
                if self.negotiated(feature::CTRL_RX) =>
            {
                if c == ctrl::RX_PROMISC {
                    self.promisc = on != 0;
                } else {
                    self.allmulti = on != 0;
                }
                ctrl::OK
            }
            [ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, ref data @ ..] if mac_table_ok(data) => ctrl::OK,
            [ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, a, b, c, d, e, f]
                if self.negotiated(feature::CTRL_MAC_ADDR) =>
            {
                self.mac = [a, b, c, d, e, f];
                ctrl::OK
            }
            _ => ctrl::ERR,
        };
        if answer != ctrl::OK {
            self.stats.ctrl_errors += 1;
        }
        answer
    }
}

/// Whether `data` is a MAC table (two lists: a 32-bit count, then that many 6-byte
/// addresses, unicast then multicast), with nothing after, of at most
/// [`ctrl::MAX_TABLE_ENTRIES`] entries each.
fn mac_table_ok(data: &[u8]) -> bool {
    let mut rest = data;
    for _ in 0..2 {
        let Some((count, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let n = u32::from_le_bytes(*count) as usize;
        if n > ctrl::MAX_TABLE_ENTRIES {
            return false;
        }
        let Some(tail) = tail.get(n * 6..) else {
            return false;
        };
        rest = tail;
    }
    rest.is_empty()
}

/// The configuration space of a virtio-net function (network controller, Ethernet):
/// device 0x1041, three queues, MSI-X with four vectors.
pub fn config_space() -> Result<ConfigSpace, ConfigError> {
    super::pci::config_space(DEVICE_TYPE, (0x02, 0x00, 0x00), NUM_QUEUES, CONFIG_LEN)
}

/// Which queue a request is on, and what it holds.
#[derive(Clone, Debug)]
pub struct NetJob {
    queue: u16,
    lens: ChainLens,
    /// The frame (transmit) or command (control) as read, up to its bound.
    data: Vec<u8>,
    /// More readable bytes came than the bound keeps.
    oversize: bool,
    /// Transmit: the frame went (or was dropped); control: the answer once written.
    done: bool,
    answer: Option<u8>,
}

impl<B: NetBackend> VirtioDevice for VirtioNet<B> {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        if self.offloads {
            feature::BASE | feature::OFFLOADS
        } else {
            feature::BASE
        }
    }

    fn num_queues(&self) -> u16 {
        NUM_QUEUES
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN as usize];
        c[0..6].copy_from_slice(&self.mac);
        let status = if self.link { S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        let o = offset as usize;
        if let Some(src) = o.checked_add(data.len()).and_then(|end| c.get(o..end)) {
            data.copy_from_slice(src);
        }
    }

    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
        if self.backend.set_offloads(self.guest_offloads()).is_err() {
            self.stats.offload_errors += 1;
        }
    }

    type Job = NetJob;

    fn begin(&mut self, queue: u16, lens: ChainLens) -> NetJob {
        NetJob {
            queue,
            lens,
            data: Vec::new(),
            oversize: false,
            done: false,
            answer: None,
        }
    }

    fn consume(&mut self, job: &mut NetJob, _offset: u64, data: &[u8]) {
        let bound = if job.queue == CTRL_QUEUE {
            ctrl::MAX_COMMAND
        } else {
            MAX_FRAME
        };
        let take = data.len().min(bound - job.data.len());
        job.data.extend_from_slice(&data[..take]);
        job.oversize |= take < data.len();
    }

    fn ready(&mut self, queue: u16, job: &mut NetJob) -> bool {
        if queue != TX_QUEUE || job.done {
            return true;
        }
        let frame = &job.data;
        if frame.len() < VNET_HDR_LEN {
            self.stats.tx_malformed += 1;
        } else if job.oversize {
            self.stats.tx_too_big += 1;
        } else {
            match self.backend.send(frame) {
                Ok(()) => {
                    self.tx_blocked = false;
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += (frame.len() - VNET_HDR_LEN) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.tx_blocked {
                        self.tx_blocked = true;
                        self.stats.tx_backpressure += 1;
                    }
                    return false;
                }
                Err(_) => self.stats.tx_errors += 1,
            }
        }
        job.done = true;
        job.data = Vec::new();
        true
    }

    fn produce(&mut self, job: &mut NetJob, buf: &mut [u8]) -> Option<Piece> {
        if job.queue != CTRL_QUEUE || job.answer.is_some() {
            return None;
        }
        if buf.is_empty() {
            return Some(Piece { offset: 0, len: 0 });
        }
        let answer = if job.oversize {
            self.stats.ctrl_commands += 1;
            self.stats.ctrl_errors += 1;
            ctrl::ERR
        } else {
            let cmd = std::mem::take(&mut job.data);
            self.control(&cmd)
        };
        job.answer = Some(answer);
        buf[0] = answer;
        // The answer is the chain's last writable byte.
        Some(Piece {
            offset: job.lens.writable.saturating_sub(1),
            len: 1,
        })
    }

    fn finish(&mut self, job: NetJob) -> u32 {
        job.answer.map_or(0, |_| 1)
    }

    fn reset(&mut self) {
        self.driver_features = 0;
        self.mac = self.box_mac;
        self.promisc = false;
        self.allmulti = false;
        if self.rx_len.take().is_some() {
            self.stats.rx_no_buffer += 1;
        }
        self.tx_blocked = false;
        if self.backend.set_offloads(Offloads::default()).is_err() {
            self.stats.offload_errors += 1;
        }
    }

    fn parks(&self, queue: u16) -> bool {
        queue == RX_QUEUE
    }

    fn fill(&mut self, queue: u16, parked: &Parked<'_>, out: &mut Fill) -> bool {
        if queue != RX_QUEUE {
            return false;
        }
        let mergeable = self.negotiated(feature::MRG_RXBUF);
        for _ in 0..DROPS_PER_FILL {
            if !self.next_frame() {
                return false;
            }
            let len = self.rx_len.unwrap_or(0);
            // The chains the frame takes, and what they hold.
            let (mut n, mut room) = (0usize, 0u64);
            for &c in parked.chains {
                if room >= len as u64 || (!mergeable && n == 1) {
                    break;
                }
                room = room.saturating_add(c);
                n += 1;
            }
            if room < len as u64 {
                if n == 0 || mergeable {
                    if parked.walking {
                        // Buffers are on their way: the frame waits for them.
                        return false;
                    }
                    self.stats.rx_no_buffer += 1;
                } else {
                    self.stats.rx_too_big += 1;
                }
                self.rx_len = None;
                continue;
            }
            if !parked.fits(len as u64) {
                // The queue's buffer is full of writes not known done yet.
                return false;
            }
            self.rx_len = None;
            let plain = !self.negotiated(feature::GUEST_CSUM);
            let frame = &mut self.rx_buf[..len];
            if plain {
                // No partial checksums or segments for a driver that did not ask.
                frame[0] = 0;
                frame[1] = 0;
            }
            frame[10..12].copy_from_slice(&(n as u16).to_le_bytes());
            out.data.extend_from_slice(frame);
            let mut left = len as u64;
            for &c in &parked.chains[..n] {
                let take = c.min(left);
                out.lens.push(take as u32);
                left -= take;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
            return true;
        }
        false
    }

    fn poll(&mut self) -> bool {
        self.update_link()
    }

    fn set_leaving(&mut self, leaving: bool) -> bool {
        self.leaving = leaving;
        self.update_link()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.backend.wait_fd()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        vec![
            ("net_rx_packets", s.rx_packets),
            ("net_rx_bytes", s.rx_bytes),
            ("net_rx_no_buffer", s.rx_no_buffer),
            ("net_rx_too_big", s.rx_too_big),
            ("net_rx_errors", s.rx_errors),
            ("net_tx_packets", s.tx_packets),
            ("net_tx_bytes", s.tx_bytes),
            ("net_tx_malformed", s.tx_malformed),
            ("net_tx_too_big", s.tx_too_big),
            ("net_tx_errors", s.tx_errors),
            ("net_tx_backpressure", s.tx_backpressure),
            ("net_ctrl_commands", s.ctrl_commands),
            ("net_ctrl_errors", s.ctrl_errors),
            ("net_link_changes", s.link_changes),
            ("net_offload_errors", s.offload_errors),
        ]
        .into_iter()
        .chain(self.backend.counters())
        .collect()
    }
}
