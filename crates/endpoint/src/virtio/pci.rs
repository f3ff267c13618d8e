//! The virtio 1.x PCI transport (virtio 1.x, 4.1) as a [`Device`]: BAR0 holds the
//! common configuration, ISR status, device configuration and notification structures
//! (each named by a vendor-specific capability), BAR1 the MSI-X table and PBA.
//!
//! | BAR0 offset | structure |
//! |---|---|
//! | 0x0000 | common configuration (0x38 bytes) |
//! | 0x1000 | ISR status (1 byte; reading clears it and releases INTx) |
//! | 0x2000 | device configuration |
//! | 0x3000 | notifications: queue *n* at 0x3000 + 4*n |
//!
//! The queue engine: a notification fetches the whole available ring in one DMA read;
//! each new head's descriptors are read four at a time (an indirect table in one read);
//! then the request streams through the [`VirtioDevice`] in chunks
//! ([`QueueLimits::chunk_bytes`]): its readable bytes are read a chunk at a time and
//! handed over, and its reply is written a round at a time, each round followed by a
//! one-byte read that completes only once the round's posted writes are done. A
//! queue holds at most [`QueueLimits::buffer_bytes`] for its requests at once; a
//! request whose next chunk would not fit waits (in order) until room is given back.
//! The used element, the used index and the interrupt go out as posted writes after
//! the reply, which PCIe keeps in that order. Requests of one queue overlap: a new one
//! starts while earlier ones wait for their DMA.
//!
//! Devices that are not request/response: a device may park the chains of a queue
//! ([`VirtioDevice::parks`], a receive queue): they are walked and kept until the
//! device fills them on a poll ([`VirtioDevice::fill`]; one fill may span several
//! chains, whose used elements go out together, charged to the queue's buffer until
//! a read behind the writes completes). A device may also say it is not ready for a
//! request whose readable bytes it consumed ([`VirtioDevice::ready`], a full
//! transmit backend): the request stalls in order, keeping its room, and is asked
//! about again on each poll. Configuration changes the device reports on a poll, or
//! when the box says the device is leaving, raise the configuration interrupt.
//!
//! A ring the driver gets wrong (a bad index, a loop, an oversized chain, a head or
//! buffer ID made available again while it is in flight, more packed descriptors in
//! flight than the ring holds) or DMA the host refuses marks the device
//! DEVICE_NEEDS_RESET, with a configuration-change interrupt, and the queue stops
//! until the driver resets the device.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::config::{Bar, ConfigError, ConfigSpace, MsixLayout};
use crate::function::{Device, DeviceIo, DmaError, DmaId, MAX_DMA};

use super::packed::{self, PackedDescriptor, RingPos};
use super::queue::{
    need_event, scatter, AvailRing, ChainError, ChainWalk, Descriptor, QueueConfig, WalkStep,
    DESC_SIZE,
};
use super::{feature, status, ChainLens, Fill, Parked, VirtioDevice, NO_VECTOR};

/// Where the structures are.
pub mod layout {
    pub const BAR: u8 = 0;
    pub const COMMON: u64 = 0x0000;
    pub const COMMON_LEN: u32 = 0x38;
    pub const ISR: u64 = 0x1000;
    pub const DEVICE: u64 = 0x2000;
    pub const NOTIFY: u64 = 0x3000;
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    pub const BAR_SIZE: u64 = 0x4000;
    pub const MSIX_BAR: u8 = 1;
    pub const MSIX_TABLE: u32 = 0x000;
    pub const MSIX_PBA: u32 = 0x800;
    pub const MSIX_BAR_SIZE: u64 = 0x1000;
}

/// Registers of the common configuration (offset, width).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Every register as (offset, width), in address order.
    pub const FIELDS: [(u64, usize); 16] = [
        (DEVICE_FEATURE_SELECT, 4),
        (DEVICE_FEATURE, 4),
        (DRIVER_FEATURE_SELECT, 4),
        (DRIVER_FEATURE, 4),
        (CONFIG_MSIX_VECTOR, 2),
        (NUM_QUEUES, 2),
        (DEVICE_STATUS, 1),
        (CONFIG_GENERATION, 1),
        (QUEUE_SELECT, 2),
        (QUEUE_SIZE, 2),
        (QUEUE_MSIX_VECTOR, 2),
        (QUEUE_ENABLE, 2),
        (QUEUE_NOTIFY_OFF, 2),
        (QUEUE_DESC, 8),
        (QUEUE_DRIVER, 8),
        (QUEUE_DEVICE, 8),
    ];
}

/// Virtio PCI capability types (cfg_type).
mod cap_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
}

/// ISR status bits.
mod isr {
    pub const QUEUE: u8 = 1;
    pub const CONFIG: u8 = 2;
}

/// Descriptors read at once when a chain is walked in the queue's table.
const DESC_PREFETCH: u16 = 4;

/// Descriptors of a packed ring read at once when the driver notifies.
const PACKED_WINDOW: u16 = 16;

/// Default cap on the bytes a queue buffers for its requests in flight (4 MiB).
pub const DEFAULT_QUEUE_BUFFER: u64 = 4 << 20;

/// Default chunk: a request's data is read, and its reply written, this many bytes at
/// a time (1 MiB, the largest DMA: the requests Linux makes, up to 1.25 MiB, take
/// one or two steps).
pub const DEFAULT_CHUNK: usize = MAX_DMA;

/// The least a step is charged against its queue's buffer, whatever its length: what
/// the engine and the framework keep for it besides the data (a round of a 1-byte
/// status costs more than 1 byte), so small requests are bounded too.
pub const MIN_CHARGE: u64 = 256;

/// Fills of one parking queue per poll at most (the box's round stays short; what is
/// left waits for the next round).
const FILLS_PER_POLL: usize = 64;

/// What a step of `len` bytes is charged against a queue's buffer of `buffer_bytes`:
/// at least [`MIN_CHARGE`], at most the whole buffer (so any step can go once the
/// queue is empty).
pub(crate) fn charge(len: u64, buffer_bytes: u64) -> u64 {
    len.max(MIN_CHARGE).min(buffer_bytes)
}

/// A request's next step: the bytes it moves and what it is charged.
#[derive(Clone, Copy, Debug)]
struct Step {
    len: u64,
    charge: u64,
}

/// How much memory a queue may spend on its requests' data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Bytes a queue may hold at once for its requests in flight (chunks read from
    /// the driver, reply rounds written and not yet flushed). A request that would go
    /// beyond it waits until bytes are released.
    pub buffer_bytes: u64,
    /// Bytes of one chunk (at most [`MAX_DMA`] and at most `buffer_bytes`).
    pub chunk_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            buffer_bytes: DEFAULT_QUEUE_BUFFER,
            chunk_bytes: DEFAULT_CHUNK,
        }
    }
}

impl QueueLimits {
    /// The limits made consistent: a chunk of 1..=[`MAX_DMA`] bytes that fits in the
    /// buffer.
    fn sane(self) -> QueueLimits {
        let buffer_bytes = self.buffer_bytes.max(1);
        let chunk = (self.chunk_bytes as u64).clamp(1, buffer_bytes.min(MAX_DMA as u64));
        QueueLimits {
            buffer_bytes,
            chunk_bytes: chunk as usize,
        }
    }
}

/// The configuration space of a virtio device of `device_type` with `num_queues`
/// queues and `config_len` bytes of device configuration: vendor 1af4, device
/// 1040 + type, revision 1 (modern only), the transport's capabilities, MSI-X with a
/// vector per queue plus one for configuration changes, and INTA.
pub fn config_space(
    device_type: u16,
    class: (u8, u8, u8),
    num_queues: u16,
    config_len: u32,
) -> Result<ConfigSpace, ConfigError> {
    let cap = |cfg_type: u8, offset: u64, length: u32| {
        // cap_len (filled in), cfg_type, bar, id, padding[2], offset, length.
        let mut b = vec![0, cfg_type, layout::BAR, 0, 0, 0];
        b.extend_from_slice(&(offset as u32).to_le_bytes());
        b.extend_from_slice(&length.to_le_bytes());
        b
    };
    let mut notify = cap(
        cap_type::NOTIFY,
        layout::NOTIFY,
        num_queues as u32 * layout::NOTIFY_MULTIPLIER,
    );
    notify.extend_from_slice(&layout::NOTIFY_MULTIPLIER.to_le_bytes());
    let id = super::PCI_DEVICE_ID_BASE + device_type;
    ConfigSpace::builder(super::PCI_VENDOR_ID, id)
        .class(class.0, class.1, class.2)
        .revision(1)
        .subsystem(super::PCI_VENDOR_ID, 0x1100)
        .interrupt_pin(1)
        .bar(layout::BAR as usize, Bar::mem32(layout::BAR_SIZE))
        .bar(layout::MSIX_BAR as usize, Bar::mem32(layout::MSIX_BAR_SIZE))
        // Any payload size: the host's Max Payload Size decides.
        .pcie(4096)
        .power_management()
        .msix(MsixLayout {
            vectors: num_queues + 1,
            table_bar: layout::MSIX_BAR,
            table_offset: layout::MSIX_TABLE,
            pba_bar: layout::MSIX_BAR,
            pba_offset: layout::MSIX_PBA,
        })
        .vendor_capability(&cap(cap_type::COMMON, layout::COMMON, layout::COMMON_LEN))
        .vendor_capability(&notify)
        .vendor_capability(&cap(cap_type::ISR, layout::ISR, 1))
        .vendor_capability(&cap(cap_type::DEVICE, layout::DEVICE, config_len))
        .build()
}

/// The ring features a transport offers besides split rings, as QEMU's virtio
/// devices name them (`packed=on`, `event_idx=on`, `indirect_desc=on`): by default
/// event indexes and indirect descriptors, no packed rings. Event indexes are offered
/// only without packed rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFeatures {
    pub packed: bool,
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC. A driver that takes it puts a request's descriptors in
    /// a table of their own, which the device reads after the ring's descriptor: one
    /// more DMA round trip per request, which a remote device pays on its link.
    pub indirect_desc: bool,
}

impl Default for RingFeatures {
    fn default() -> RingFeatures {
        RingFeatures {
            packed: false,
            event_idx: true,
            indirect_desc: true,
        }
    }
}

/// Counters of the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VirtioStats {
    pub notifications: u64,
    /// DMA reads of a ring: the available ring (split), a window of the ring and
    /// the driver's event flags (packed).
    pub ring_fetches: u64,
    /// Descriptor fetches (direct groups and indirect tables).
    pub descriptor_fetches: u64,
    pub requests: u64,
    pub used_interrupts: u64,
    /// Chains the driver got wrong (the device then needs a reset).
    pub bad_chains: u64,
    /// DMA the host refused or that timed out (the device then needs a reset).
    pub dma_errors: u64,
    pub resets: u64,
    /// Heads (split) or buffer IDs (packed) made available again while in flight
    /// (counted in `bad_chains` too).
    pub reused_ids: u64,
    /// Times a request waited for its queue's buffer to have room.
    pub buffer_waits: u64,
    /// Bytes the queues buffer now for their requests in flight.
    pub buffered: u64,
    /// The most one queue ever buffered (at most [`QueueLimits::buffer_bytes`]).
    pub buffered_peak: u64,
    /// Times a request waited for its device to be ready ([`VirtioDevice::ready`]):
    /// a backend that could not take it.
    pub stalls: u64,
    /// Chains parked for their device, and parked chains it filled and returned.
    pub parked: u64,
    pub filled: u64,
    /// Fills refused: they named more chains than were parked, more bytes than a
    /// chain holds or than the data has, or more than the queue's buffer had room for.
    pub bad_fills: u64,
    /// Configuration changes the device reported (each with an interrupt once the
    /// driver is ready).
    pub config_changes: u64,
    /// VIRTIO_F_EVENT_IDX: fetches of an available ring the device made on its own
    /// while it kept working (the driver does not notify meanwhile), and used
    /// elements that went out without an interrupt because the driver's `used_event`
    /// said it did not want one yet.
    pub ring_polls: u64,
    pub interrupts_suppressed: u64,
    /// VIRTIO_F_EVENT_IDX: `used_event` of a queue whose buffers the device holds,
    /// read again along with another queue's ring when the driver notified that one.
    pub used_event_refreshes: u64,
}

/// Counters of one queue (kept across resets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueStats {
    pub notifications: u64,
    /// Used-buffer interrupts sent (MSI-X or INTx).
    pub interrupts: u64,
}

/// Counter names of queues 0..8 (notifications, interrupts).
const QUEUE_COUNTER_NAMES: [(&str, &str); 8] = [
    ("virtio_q0_notifications", "virtio_q0_interrupts"),
    ("virtio_q1_notifications", "virtio_q1_interrupts"),
    ("virtio_q2_notifications", "virtio_q2_interrupts"),
    ("virtio_q3_notifications", "virtio_q3_interrupts"),
    ("virtio_q4_notifications", "virtio_q4_interrupts"),
    ("virtio_q5_notifications", "virtio_q5_interrupts"),
    ("virtio_q6_notifications", "virtio_q6_interrupts"),
    ("virtio_q7_notifications", "virtio_q7_interrupts"),
];

/// What a DMA read the engine started was for.
#[derive(Clone, Copy, Debug)]
enum Fetch {
    Avail(u16),
    /// A window of a packed ring.
    PackedWindow(u16),
    /// The driver's event suppression structure of a packed queue.
    DriverEvent(u16),
    /// Descriptors from index `first` of the queue's table, for a request.
    Descriptors {
        request: usize,
        first: u16,
    },
    Indirect(usize),
    /// `len` bytes of the request's current chunk, at `offset` in it.
    Readable {
        request: usize,
        offset: usize,
        len: usize,
    },
    /// A read after a round of reply writes: it completes once they are done.
    Fence(usize),
    /// The driver's interrupt suppression flags of a queue, read again after used
    /// elements the device wrote on its own (see [`VirtioPci::write_used`]).
    Suppression(u16),
    /// The driver's `used_event` of a queue (event indexes), read behind used writes.
    UsedEvent(u16),
    /// The same after a request's last round: `bytes` of `queue`'s buffer come free.
    Drain {
        queue: u16,
        bytes: u64,
    },
}

struct QueueState {
    config: QueueConfig,
    /// The driver's available index up to which heads were taken.
    next_avail: u16,
    used_idx: u16,
    fetching: bool,
    /// A notification came while the ring was being fetched: fetch again after.
    refetch: bool,
    no_interrupt: bool,
    /// Used elements went out without an interrupt while the flags were being read
    /// again (one such read at a time).
    owed: bool,
    checking: bool,
    /// VIRTIO_F_EVENT_IDX: the driver's `used_event` as last read; the used index
    /// up to which the driver has had its interrupt, or was seen not to want one;
    /// the used index when the `used_event` read in flight was sent (it is ordered
    /// behind the used writes before it, not those after).
    used_event: u16,
    signalled: u16,
    checked_upto: u16,
    /// VIRTIO_F_EVENT_IDX: `avail_event` was written with the available index last
    /// seen, so the driver notifies again for the next chain. While it is not, the
    /// device fetches the ring again after each fetch that found chains.
    armed: bool,
    /// Packed ring: where the next available chain starts, where the next used
    /// descriptor goes, and the start of a chain the last window cut.
    packed_avail: RingPos,
    packed_used: RingPos,
    carry: Vec<PackedDescriptor>,
    /// What the requests in flight name (heads or buffer IDs): one may not come again
    /// before it is used.
    in_flight: HashSet<u16>,
    /// Packed ring: descriptors of the ring the requests in flight take.
    ring_slots: u32,
    /// Bytes held by the requests in flight, and the requests waiting for room.
    buffered: u64,
    waiting: VecDeque<usize>,
    /// Requests whose device was not ready for them, oldest first: the queue starts
    /// no new step while there is one.
    stalled: VecDeque<usize>,
    /// A parking queue's walked chains, oldest first: (request, writable bytes).
    parked: VecDeque<(usize, u64)>,
}

impl QueueState {
    fn new(max: u16) -> QueueState {
        QueueState {
            config: QueueConfig::new(max),
            next_avail: 0,
            used_idx: 0,
            fetching: false,
            refetch: false,
            no_interrupt: false,
            owed: false,
            checking: false,
            used_event: 0,
            signalled: 0,
            checked_upto: 0,
            armed: false,
            packed_avail: RingPos::START,
            packed_used: RingPos::START,
            carry: Vec::new(),
            in_flight: HashSet::new(),
            ring_slots: 0,
            buffered: 0,
            waiting: VecDeque::new(),
            stalled: VecDeque::new(),
            parked: VecDeque::new(),
        }
    }
}

/// One chain in progress.
struct InFlight<J> {
    queue: u16,
    /// What the used element names: the head (split) or the buffer ID (packed).
    id: u16,
    /// Packed ring: descriptors the chain takes in the ring.
    ring_len: u16,
    walk: ChainWalk,
    /// The next descriptor the walk wants (index in the current table).
    want: u16,
    /// The device's request, once the chain is walked.
    job: Option<J>,
    /// Readable bytes handed to the device so far.
    consumed: u64,
    /// Bytes of its queue's buffer the request holds for its chunk or reply round
    /// (`step` bytes long).
    held: u64,
    step: u64,
    /// The chunk being read.
    chunk: Vec<u8>,
    reads_left: usize,
    /// The device said it is ready for the request ([`VirtioDevice::ready`]).
    ready: bool,
}

/// The transport around a virtio device model.
pub struct VirtioPci<D: VirtioDevice> {
    device: D,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    config_msix_vector: u16,
    queue_select: u16,
    queues: Vec<QueueState>,
    isr: u8,
    fetches: HashMap<DmaId, Fetch>,
    requests: Vec<Option<InFlight<D::Job>>>,
    /// Offer VIRTIO_F_RING_PACKED.
    offer_packed: bool,
    /// Offer VIRTIO_F_EVENT_IDX (split rings only: not with packed rings).
    offer_event_idx: bool,
    /// Offer VIRTIO_F_INDIRECT_DESC.
    offer_indirect: bool,
    limits: QueueLimits,
    /// Waiting requests are being started (see [`VirtioPci::pump`]).
    pumping: bool,
    stats: VirtioStats,
    queue_stats: Vec<QueueStats>,
    /// Reused for each fill of parked chains.
    fill: Fill,
    /// The device is leaving (the box said so).
    leaving: bool,
    /// The device's own work is running (a poll), not the answer to a notification
    /// or a DMA completion.
    polling: bool,
}

impl<D: VirtioDevice> VirtioPci<D> {
    pub fn new(device: D) -> VirtioPci<D> {
        let max = device.queue_max_size();
        let queues = (0..device.num_queues())
            .map(|_| QueueState::new(max))
            .collect();
        let queue_stats = vec![QueueStats::default(); device.num_queues() as usize];
        VirtioPci {
            device,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            config_msix_vector: NO_VECTOR,
            queue_select: 0,
            queues,
            isr: 0,
            fetches: HashMap::new(),
            requests: Vec::new(),
            offer_packed: false,
            offer_event_idx: true,
            offer_indirect: true,
            limits: QueueLimits::default(),
            pumping: false,
            stats: VirtioStats::default(),
            queue_stats,
            fill: Fill::default(),
            leaving: false,
            polling: false,
        }
    }

    /// Sets how much each queue may buffer and the chunk size (made consistent: see
    /// [`QueueLimits`]).
    pub fn with_limits(mut self, limits: QueueLimits) -> Self {
        self.limits = limits.sane();
        self
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Offers packed virtqueues too (the driver picks; Linux takes them).
    pub fn with_packed_ring(mut self, offer: bool) -> Self {
        self.offer_packed = offer;
        self
    }

    /// Offers the ring features `rings` names.
    pub fn with_rings(self, rings: RingFeatures) -> Self {
        let mut s = self
            .with_packed_ring(rings.packed)
            .with_event_idx(rings.event_idx);
        s.offer_indirect = rings.indirect_desc;
        s
    }

    /// Offers VIRTIO_F_EVENT_IDX (the default; QEMU's `event_idx=off` is `false`).
    /// It is offered only while packed rings are not, whose event structure this
    /// transport does not implement.
    pub fn with_event_idx(mut self, offer: bool) -> Self {
        self.offer_event_idx = offer;
        self
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, to change it from the box (changes that the driver must
    /// hear of go through [`crate::Device`]'s methods, which raise the interrupt).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Counters of queue `q`.
    pub fn queue_stats(&self, q: u16) -> Option<QueueStats> {
        self.queue_stats.get(q as usize).copied()
    }

    pub fn stats(&self) -> VirtioStats {
        VirtioStats {
            buffered: self.queues.iter().map(|q| q.buffered).sum(),
            ..self.stats
        }
    }

    /// The device status byte as the driver sees it.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Features this transport offers: the device's plus version 1 and, as asked for,
    /// indirect descriptors and packed rings or else event indexes.
    pub fn offered_features(&self) -> u64 {
        let ring = if self.offer_packed {
            feature::RING_PACKED
        } else if self.offer_event_idx {
            feature::EVENT_IDX
        } else {
            0
        };
        let indirect = if self.offer_indirect {
            feature::INDIRECT_DESC
        } else {
            0
        };
        self.device.features() | feature::VERSION_1 | indirect | ring
    }

    /// Whether the driver chose packed rings.
    fn packed(&self) -> bool {
        self.driver_features & feature::RING_PACKED != 0
    }

    /// Whether the driver chose event indexes (split rings; see `offered_features`).
    fn event_idx(&self) -> bool {
        self.driver_features & feature::EVENT_IDX != 0
    }

    fn msix_vectors(&self) -> u16 {
        self.device.num_queues() + 1
    }

    fn selected(&mut self) -> Option<&mut QueueState> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset_state(&mut self) {
        let max = self.device.queue_max_size();
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueState::new(max));
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.config_msix_vector = NO_VECTOR;
        self.queue_select = 0;
        self.isr = 0;
        // DMA reads still out come back to no one and are ignored.
        self.fetches.clear();
        self.requests.clear();
        self.stats.resets += 1;
        self.device.reset();
    }

    /// The common configuration as the driver would read it now.
    fn common_image(&self) -> [u8; layout::COMMON_LEN as usize] {
        let mut b = [0u8; layout::COMMON_LEN as usize];
        let mut put =
            |off: u64, v: &[u8]| b[off as usize..off as usize + v.len()].copy_from_slice(v);
        let offered = self.offered_features();
        let feature_word = match self.device_feature_select {
            0 => offered as u32,
            1 => (offered >> 32) as u32,
            _ => 0,
        };
        let driver_word = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(common::DEVICE_FEATURE, &feature_word.to_le_bytes());
        put(
            common::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(common::DRIVER_FEATURE, &driver_word.to_le_bytes());
        put(
            common::CONFIG_MSIX_VECTOR,
            &self.config_msix_vector.to_le_bytes(),
        );
        put(
            common::NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        put(common::DEVICE_STATUS, &[self.status]);
        put(common::CONFIG_GENERATION, &[self.config_generation]);
        put(common::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.queues.get(self.queue_select as usize) {
            let c = &q.config;
            put(common::QUEUE_SIZE, &c.size.to_le_bytes());
            put(common::QUEUE_MSIX_VECTOR, &c.msix_vector.to_le_bytes());
            put(common::QUEUE_ENABLE, &(c.enabled as u16).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(common::QUEUE_DESC, &c.desc.to_le_bytes());
            put(common::QUEUE_DRIVER, &c.driver.to_le_bytes());
            put(common::QUEUE_DEVICE, &c.device.to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, offset: u64, data: &[u8], io: &mut dyn DeviceIo) {
        let mut image = self.common_image();
        let end = offset + data.len() as u64;
        if end > image.len() as u64 {
            return;
        }
        image[offset as usize..end as usize].copy_from_slice(data);
        let field = |off: u64, w: usize| -> u64 {
            let mut v = [0u8; 8];
            v[..w].copy_from_slice(&image[off as usize..off as usize + w]);
            u64::from_le_bytes(v)
        };
        for (off, w) in common::FIELDS {
            if off >= end || off + w as u64 <= offset {
                continue;
            }
            let v = field(off, w);
            self.set_common(off, v, io);
        }
    }

    fn set_common(&mut self, reg: u64, v: u64, io: &mut dyn DeviceIo) {
        let vectors = self.msix_vectors();
        let valid_vector = |v: u16| if v < vectors { v } else { NO_VECTOR };
        match reg {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            common::DRIVER_FEATURE if self.status & status::FEATURES_OK == 0 => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features =
                    self.driver_features & !(0xffff_ffffu64 << shift) | (v & 0xffff_ffff) << shift;
            }
            common::CONFIG_MSIX_VECTOR => self.config_msix_vector = valid_vector(v as u16),
            common::DEVICE_STATUS => self.set_status(v as u8, io),
            common::QUEUE_SELECT => self.queue_select = v as u16,
            common::QUEUE_SIZE => {
                if let Some(q) = self.selected() {
                    let s = v as u16;
                    if !q.config.enabled && s.is_power_of_two() && s <= q.config.max_size {
                        q.config.size = s;
                    }
                }
            }
            common::QUEUE_MSIX_VECTOR => {
                let vector = valid_vector(v as u16);
                if let Some(q) = self.selected() {
                    q.config.msix_vector = vector;
                }
            }
            common::QUEUE_ENABLE => {
                if let Some(q) = self.selected() {
                    // Writing 0 has no effect (a queue is disabled by a reset).
                    if v & 1 == 1 {
                        q.config.enabled = true;
                    }
                }
            }
            common::QUEUE_DESC | common::QUEUE_DRIVER | common::QUEUE_DEVICE => {
                if let Some(q) = self.selected() {
                    if !q.config.enabled {
                        match reg {
                            common::QUEUE_DESC => q.config.desc = v,
                            common::QUEUE_DRIVER => q.config.driver = v,
                            _ => q.config.device = v,
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u8, io: &mut dyn DeviceIo) {
        if v == 0 {
            self.reset_state();
            io.set_intx(false);
            return;
        }
        let mut v = v;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & feature::VERSION_1 != 0;
            if ok {
                self.device.set_driver_features(self.driver_features);
            } else {
                v &= !status::FEATURES_OK;
            }
        }
        // DEVICE_NEEDS_RESET is the device's to set.
        self.status = v & !status::DEVICE_NEEDS_RESET | self.status & status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            for q in 0..self.queues.len() as u16 {
                self.kick(q, io);
            }
        }
    }

    fn running(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The driver notified queue `q` (or the device just became ready).
    fn kick(&mut self, q: u16, io: &mut dyn DeviceIo) {
        if !self.running() {
            return;
        }
        let packed = self.packed();
        let event_idx = self.event_idx();
        let Some(qs) = self.queues.get_mut(q as usize) else {
            return;
        };
        if !qs.config.enabled {
            return;
        }
        if qs.fetching {
            qs.refetch = true;
            return;
        }
        let mut reads = Vec::with_capacity(2);
        if packed {
            let size = qs.config.size;
            let at = qs.packed_avail.advance(qs.carry.len() as u16, size).index;
            let n = PACKED_WINDOW.min(size - at) as usize;
            reads.push((
                qs.config.desc_addr(at),
                n * DESC_SIZE,
                Fetch::PackedWindow(q),
            ));
            reads.push((qs.config.driver, packed::EVENT_SIZE, Fetch::DriverEvent(q)));
        } else {
            // With event indexes, `used_event` just after the entries comes along.
            let len = qs.config.avail_len() + if event_idx { 2 } else { 0 };
            reads.push((qs.config.driver, len, Fetch::Avail(q)));
        }
        qs.fetching = true;
        for (addr, len, fetch) in reads {
            match io.dma_read(addr, len) {
                Ok(id) => {
                    self.stats.ring_fetches += 1;
                    self.fetches.insert(id, fetch);
                }
                Err(e) => return self.fail_dma(e, io),
            }
        }
    }

    /// Event indexes: the driver is at work (it notified queue `kicked`), so it may
    /// have moved the `used_event` of the other queues too since the device last read
    /// them. Those whose buffers the device holds (a receive queue's, which it fills
    /// on its own) have theirs read again now, in the same round as the ring: the next
    /// used element there then finds the driver's wish as it is, rather than one read
    /// before the driver last turned interrupts on, which would cost a round trip
    /// before the interrupt (the read behind the used writes). A request and its
    /// reply, as a ping's, take one round trip less.
    fn refresh_used_events(&mut self, kicked: u16, io: &mut dyn DeviceIo) {
        for p in 0..self.queues.len() as u16 {
            let qs = &self.queues[p as usize];
            if p != kicked && qs.config.enabled && !qs.in_flight.is_empty() && !qs.checking {
                self.stats.used_event_refreshes += 1;
                self.check_used_event(p, io);
            }
        }
    }

    /// The device cannot go on: DEVICE_NEEDS_RESET and a configuration interrupt.
    fn needs_reset(&mut self, io: &mut dyn DeviceIo) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.fetches.clear();
        self.requests.clear();
        for q in &mut self.queues {
            q.in_flight.clear();
            q.ring_slots = 0;
            q.buffered = 0;
            q.waiting.clear();
            q.stalled.clear();
            q.parked.clear();
            q.owed = false;
            q.checking = false;
        }
        self.signal(self.config_msix_vector, isr::CONFIG, io);
    }

    fn fail_chain(&mut self, e: ChainError, io: &mut dyn DeviceIo) {
        self.stats.bad_chains += 1;
        if let ChainError::ReusedId(_) = e {
            self.stats.reused_ids += 1;
        }
        self.needs_reset(io);
    }

    fn fail_dma(&mut self, _e: DmaError, io: &mut dyn DeviceIo) {
        self.stats.dma_errors += 1;
        self.needs_reset(io);
    }

    /// An interrupt on MSI-X `vector`, or INTx with `isr_bit` in the ISR.
    fn signal(&mut self, vector: u16, isr_bit: u8, io: &mut dyn DeviceIo) {
        if io.msix_enabled() {
            if vector != NO_VECTOR {
                io.interrupt(vector);
            }
        } else {
            self.isr |= isr_bit;
            io.set_intx(true);
        }
    }

    /// The available ring of queue `q` arrived: starts the chains made available.
    ///
    /// With event indexes the device does not want a notification for each chain
    /// while it works: a fetch that found chains is followed by another, with no
    /// `avail_event` written (the driver notifies only past the one it last saw).
    /// A fetch that found none writes `avail_event` = the available index and
    /// fetches once more, behind that write: a chain the driver made available
    /// before it saw the write is found then; one after, it notifies for.
    fn avail_fetched(&mut self, q: u16, bytes: &[u8], io: &mut dyn DeviceIo) {
        let event_idx = self.event_idx();
        let Some(qs) = self.queues.get_mut(q as usize) else {
            return;
        };
        qs.fetching = false;
        let size = qs.config.size;
        let ring = match AvailRing::parse(bytes, size) {
            Ok(r) => r,
            Err(e) => return self.fail_chain(e, io),
        };
        if event_idx {
            match AvailRing::used_event(bytes, size) {
                Some(e) => qs.used_event = e,
                None => return self.fail_chain(ChainError::ShortFetch, io),
            }
        } else {
            qs.no_interrupt = ring.flags & super::queue::AVAIL_F_NO_INTERRUPT != 0;
        }
        let new = ring.idx.wrapping_sub(qs.next_avail);
        if new > size {
            return self.fail_chain(ChainError::Loop, io);
        }
        let heads: Vec<u16> = (0..new)
            .map(|i| ring.entry(qs.next_avail.wrapping_add(i)))
            .collect();
        qs.next_avail = ring.idx;
        let mut refetch = std::mem::take(&mut qs.refetch);
        if event_idx {
            if new > 0 {
                qs.armed = false;
                self.stats.ring_polls += 1;
                refetch = true;
            } else if !qs.armed {
                qs.armed = true;
                let at = qs.config.avail_event_addr();
                if let Err(e) = io.dma_write(at, &ring.idx.to_le_bytes()) {
                    return self.fail_dma(e, io);
                }
                self.stats.ring_polls += 1;
                refetch = true;
            }
        }
        for head in heads {
            if !self.running() {
                // A head before this one broke the queue.
                return;
            }
            self.start(q, head, size, io);
        }
        if refetch {
            self.kick(q, io);
        }
    }

    /// A window of packed ring `q` arrived: starts the chains made available in it.
    fn packed_window_fetched(&mut self, q: u16, bytes: &[u8], io: &mut dyn DeviceIo) {
        let Some(qs) = self.queues.get_mut(q as usize) else {
            return;
        };
        qs.fetching = false;
        let size = qs.config.size;
        let mut descs = std::mem::take(&mut qs.carry);
        let carried = descs.len();
        descs.extend(packed::parse_all(bytes));
        let found = match packed::scan(&descs, qs.packed_avail, size) {
            Ok(f) => f,
            Err(e) => return self.fail_chain(e, io),
        };
        qs.packed_avail = found.next;
        // More may be there: a chain the window cut, or a window all taken.
        let more = found.exhausted && (!found.chains.is_empty() || found.carry.len() > carried);
        qs.carry = found.carry;
        let refetch = std::mem::take(&mut qs.refetch) || more;
        for chain in found.chains {
            if !self.running() {
                return;
            }
            match self.new_request(q, chain.id, chain.ring_len, 0, size) {
                Ok(slot) => self.walk_in(slot, 0, &chain.descriptors, io),
                Err(e) => return self.fail_chain(e, io),
            }
        }
        if refetch {
            self.kick(q, io);
        }
    }

    /// A request slot for a chain of queue `queue` whose walk starts at `head`.
    fn new_request(
        &mut self,
        queue: u16,
        id: u16,
        ring_len: u16,
        head: u16,
        size: u16,
    ) -> Result<usize, ChainError> {
        let (walk, _) = ChainWalk::new(head, size)?;
        let qs = &mut self.queues[queue as usize];
        if qs.in_flight.contains(&id) {
            return Err(ChainError::ReusedId(id));
        }
        let slots = qs.ring_slots + ring_len as u32;
        if slots > qs.config.size as u32 {
            return Err(ChainError::RingOverrun);
        }
        qs.in_flight.insert(id);
        qs.ring_slots = slots;
        let slot = match self.requests.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.requests.push(None);
                self.requests.len() - 1
            }
        };
        self.requests[slot] = Some(InFlight {
            queue,
            id,
            ring_len,
            walk,
            want: head,
            job: None,
            consumed: 0,
            held: 0,
            step: 0,
            chunk: Vec::new(),
            reads_left: 0,
            ready: false,
        });
        self.stats.requests += 1;
        Ok(slot)
    }

    fn start(&mut self, queue: u16, head: u16, size: u16, io: &mut dyn DeviceIo) {
        match self.new_request(queue, head, 0, head, size) {
            Ok(slot) => self.follow(slot, WalkStep::Fetch(head), io),
            Err(e) => self.fail_chain(e, io),
        }
    }

    /// Goes on with request `r` after `step`: fetches what it needs, or reads its
    /// buffers once the chain is complete.
    fn follow(&mut self, r: usize, step: WalkStep, io: &mut dyn DeviceIo) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let qc = self.queues[req.queue as usize].config;
        let read = match step {
            WalkStep::Fetch(i) => {
                req.want = i;
                let n = DESC_PREFETCH.min(qc.size - i);
                let fetch = Fetch::Descriptors {
                    request: r,
                    first: i,
                };
                io.dma_read(qc.desc_addr(i), n as usize * DESC_SIZE)
                    .map(|id| (id, fetch))
            }
            WalkStep::FetchIndirect { addr, len } => io
                .dma_read(addr, len as usize)
                .map(|id| (id, Fetch::Indirect(r))),
            WalkStep::Done => return self.walked(r, io),
        };
        match read {
            Ok((id, fetch)) => {
                self.stats.descriptor_fetches += 1;
                self.fetches.insert(id, fetch);
            }
            Err(e) => self.fail_dma(e, io),
        }
    }

    /// Feeds descriptors `table` (whose first is index `first`) to request `r` while
    /// they are the ones it wants, then follows the walk.
    fn walk_in(&mut self, r: usize, first: u16, table: &[Descriptor], io: &mut dyn DeviceIo) {
        let step = loop {
            let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
                return;
            };
            let i = req.want.wrapping_sub(first) as usize;
            let Some(d) = table.get(i).copied() else {
                break WalkStep::Fetch(req.want);
            };
            match req.walk.push(d) {
                Ok(WalkStep::Fetch(next)) => req.want = next,
                Ok(step) => break step,
                Err(e) => return self.fail_chain(e, io),
            }
        };
        self.follow(r, step, io);
    }

    /// Request `r`'s chain is walked: the device begins it.
    fn walked(&mut self, r: usize, io: &mut dyn DeviceIo) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let lens = ChainLens {
            readable: req.walk.readable_len(),
            writable: req.walk.writable_len(),
        };
        if self.device.parks(req.queue) {
            // It waits for the device's data (see `fill_queue`).
            self.queues[req.queue as usize]
                .parked
                .push_back((r, lens.writable));
            self.stats.parked += 1;
            return;
        }
        req.job = Some(self.device.begin(req.queue, lens));
        self.next_step(r, io);
    }

    /// Bytes request `r` needs for its next step: a chunk of readable bytes, else a
    /// round of reply; `None` when it has nothing more to move.
    fn need(&self, r: usize) -> Option<Step> {
        let req = self.requests.get(r)?.as_ref()?;
        let chunk = self.limits.chunk_bytes as u64;
        let readable = req.walk.readable_len();
        let writable = req.walk.writable_len();
        let len = if req.consumed < readable {
            chunk.min(readable - req.consumed)
        } else if writable > 0 {
            chunk.min(writable)
        } else {
            return None;
        };
        Some(Step {
            len,
            charge: charge(len, self.limits.buffer_bytes),
        })
    }

    /// Goes on with request `r`, which holds nothing and waits for no DMA: its next
    /// step now if its queue has room (and nobody waits before it), else it waits.
    fn next_step(&mut self, r: usize, io: &mut dyn DeviceIo) {
        if !self.is_ready(r) {
            return self.stall(r);
        }
        let Some(need) = self.need(r) else {
            return self.complete(r, io);
        };
        let Some(q) = self.requests[r].as_ref().map(|req| req.queue as usize) else {
            return;
        };
        let qs = &mut self.queues[q];
        if qs.waiting.is_empty()
            && qs.stalled.is_empty()
            && qs.buffered + need.charge <= self.limits.buffer_bytes
        {
            self.hold(r, need);
            self.run(r, io);
        } else {
            qs.waiting.push_back(r);
            self.stats.buffer_waits += 1;
        }
    }

    /// Whether request `r` may go on: it still has readable bytes to take, or its
    /// device is ready for it (asked once, when nobody of its queue waits for that
    /// before it).
    fn is_ready(&mut self, r: usize) -> bool {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return true;
        };
        if req.ready || req.consumed < req.walk.readable_len() {
            return true;
        }
        let q = req.queue;
        if !self.queues[q as usize].stalled.is_empty() {
            return false;
        }
        let Some(job) = req.job.as_mut() else {
            return true;
        };
        req.ready = self.device.ready(q, job);
        req.ready
    }

    /// Request `r` waits for its device, keeping what it holds of the queue's buffer
    /// (its last chunk's room: all its data when its readable bytes fit in one
    /// chunk, as a network frame does), so a stalled queue stays within its buffer.
    fn stall(&mut self, r: usize) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        self.queues[req.queue as usize].stalled.push_back(r);
        self.stats.stalls += 1;
    }

    /// Asks the device again about queue `q`'s stalled requests, oldest first; those
    /// it is ready for go on, then whatever waited behind them.
    fn retry_stalled(&mut self, q: u16, io: &mut dyn DeviceIo) {
        while let Some(&r) = self.queues[q as usize].stalled.front() {
            let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
                self.queues[q as usize].stalled.pop_front();
                continue;
            };
            let ready = match req.job.as_mut() {
                Some(job) => self.device.ready(q, job),
                None => true,
            };
            if !ready {
                return;
            }
            req.ready = true;
            let held = std::mem::take(&mut req.held);
            let qs = &mut self.queues[q as usize];
            qs.stalled.pop_front();
            qs.buffered -= held;
            self.next_step(r, io);
        }
        self.pump(q, io);
    }

    /// Lets the device fill the chains parked on queue `q` (or drop what it holds
    /// when there are none and none are coming).
    fn fill_queue(&mut self, q: u16, io: &mut dyn DeviceIo) {
        let mut lens: Vec<u64> = Vec::new();
        for _ in 0..FILLS_PER_POLL {
            let running = self.running();
            let Some(qs) = self.queues.get(q as usize) else {
                return;
            };
            let mut fill = std::mem::take(&mut self.fill);
            fill.clear();
            let wants = if running && qs.config.enabled {
                lens.clear();
                lens.extend(qs.parked.iter().map(|&(_, len)| len));
                let parked = Parked {
                    chains: &lens,
                    walking: qs.fetching || qs.in_flight.len() > qs.parked.len(),
                    room: self.limits.buffer_bytes.saturating_sub(qs.buffered),
                    buffer_bytes: self.limits.buffer_bytes,
                };
                self.device.fill(q, &parked, &mut fill)
            } else {
                self.device.fill(q, &Parked::NONE, &mut fill)
            };
            if wants && running {
                self.apply_fill(q, &fill, io);
            }
            self.fill = fill;
            if !wants {
                return;
            }
        }
    }

    /// Writes `fill` into queue `q`'s oldest parked chains, then their used elements
    /// and the interrupt, then a read behind the writes that gives the buffer back.
    fn apply_fill(&mut self, q: u16, fill: &Fill, io: &mut dyn DeviceIo) {
        let limits = self.limits;
        let qs = &mut self.queues[q as usize];
        let n = fill.lens.len();
        let total: u64 = fill.lens.iter().map(|&l| l as u64).sum();
        let cost = charge(total, limits.buffer_bytes);
        let fits = n > 0
            && n <= qs.parked.len()
            && total == fill.data.len() as u64
            && qs.buffered + cost <= limits.buffer_bytes
            && qs
                .parked
                .iter()
                .zip(&fill.lens)
                .all(|(&(_, room), &len)| len as u64 <= room);
        if !fits {
            self.stats.bad_fills += 1;
            return;
        }
        let mut used = Vec::with_capacity(n);
        let mut last = None;
        let mut at = 0usize;
        for &len in &fill.lens {
            let Some((r, _)) = self.queues[q as usize].parked.pop_front() else {
                break;
            };
            let Some(req) = self.requests.get_mut(r).and_then(Option::take) else {
                continue;
            };
            let data = &fill.data[at..at + len as usize];
            for (addr, from, m) in scatter(req.walk.buffers(), true, 0, len as u64) {
                let piece = &data[from as usize..(from + m) as usize];
                if let Err(e) = io.dma_write(addr, piece) {
                    return self.fail_dma(e, io);
                }
                last = Some(addr);
            }
            at += len as usize;
            let qs = &mut self.queues[q as usize];
            qs.in_flight.remove(&req.id);
            qs.ring_slots -= req.ring_len as u32;
            used.push((req.id, req.ring_len, len));
            self.stats.filled += 1;
        }
        self.write_used(q, &used, io);
        let Some(addr) = last else {
            return;
        };
        if !self.running() {
            return;
        }
        match io.dma_read(addr, 1) {
            Ok(id) => {
                self.fetches.insert(
                    id,
                    Fetch::Drain {
                        queue: q,
                        bytes: cost,
                    },
                );
                let qs = &mut self.queues[q as usize];
                qs.buffered += cost;
                self.stats.buffered_peak = self.stats.buffered_peak.max(qs.buffered);
            }
            Err(e) => self.fail_dma(e, io),
        }
    }

    /// The device's configuration changed: a new generation, and the interrupt once
    /// the driver is ready for it.
    fn config_changed(&mut self, io: &mut dyn DeviceIo) {
        self.stats.config_changes += 1;
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.signal(self.config_msix_vector, isr::CONFIG, io);
        }
    }

    /// Request `r` takes room in its queue's buffer for `step`.
    fn hold(&mut self, r: usize, step: Step) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        req.held = step.charge;
        req.step = step.len;
        let qs = &mut self.queues[req.queue as usize];
        qs.buffered += step.charge;
        self.stats.buffered_peak = self.stats.buffered_peak.max(qs.buffered);
    }

    /// The step request `r` holds bytes for.
    fn run(&mut self, r: usize, io: &mut dyn DeviceIo) {
        let Some(req) = self.requests.get(r).and_then(Option::as_ref) else {
            return;
        };
        if req.consumed < req.walk.readable_len() {
            self.read_chunk(r, io);
        } else {
            self.write_round(r, io);
        }
    }

    /// Request `r` gives back what it holds; waiting requests of its queue go on.
    fn release(&mut self, r: usize, io: &mut dyn DeviceIo) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let held = std::mem::take(&mut req.held);
        req.chunk = Vec::new();
        let q = req.queue;
        self.queues[q as usize].buffered -= held;
        self.pump(q, io);
    }

    /// Starts the requests waiting on queue `q`, in order, while it has room. Not
    /// re-entered: a request finishing inside frees room that this loop then uses.
    fn pump(&mut self, q: u16, io: &mut dyn DeviceIo) {
        if self.pumping {
            return;
        }
        self.pumping = true;
        while let Some(&r) = self.queues[q as usize].waiting.front() {
            if !self.queues[q as usize].stalled.is_empty() {
                break;
            }
            let Some(need) = self.need(r) else {
                self.queues[q as usize].waiting.pop_front();
                self.complete(r, io);
                continue;
            };
            if self.queues[q as usize].buffered + need.charge > self.limits.buffer_bytes {
                break;
            }
            self.queues[q as usize].waiting.pop_front();
            self.hold(r, need);
            self.run(r, io);
        }
        self.pumping = false;
    }

    /// Reads request `r`'s next chunk of readable bytes (it holds room for it).
    fn read_chunk(&mut self, r: usize, io: &mut dyn DeviceIo) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let pieces: Vec<_> = scatter(req.walk.buffers(), false, req.consumed, req.step).collect();
        req.reads_left = pieces.len();
        for (addr, offset, len) in pieces {
            // A piece is at most a chunk, so at most MAX_DMA.
            match io.dma_read(addr, len as usize) {
                Ok(id) => {
                    let fetch = Fetch::Readable {
                        request: r,
                        offset: offset as usize,
                        len: len as usize,
                    };
                    self.fetches.insert(id, fetch);
                }
                Err(e) => return self.fail_dma(e, io),
            }
        }
    }

    /// A piece of request `r`'s chunk arrived; with the last, the device consumes the
    /// chunk and the request goes on.
    fn readable_fetched(
        &mut self,
        r: usize,
        (offset, len): (usize, usize),
        bytes: Vec<u8>,
        io: &mut dyn DeviceIo,
    ) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
            return;
        };
        let step = req.step as usize;
        if bytes.len() != len || offset.checked_add(len).is_none_or(|end| end > step) {
            return self.fail_dma(DmaError::BadCompletion, io);
        }
        if req.chunk.is_empty() && len == step {
            // The chunk in one piece: no copy.
            req.chunk = bytes;
        } else {
            req.chunk.resize(step, 0);
            req.chunk[offset..offset + len].copy_from_slice(&bytes);
        }
        req.reads_left = req.reads_left.saturating_sub(1);
        if req.reads_left > 0 {
            return;
        }
        let chunk = std::mem::take(&mut req.chunk);
        if let Some(job) = req.job.as_mut() {
            self.device.consume(job, req.consumed, &chunk);
        }
        req.consumed += chunk.len() as u64;
        if req.consumed >= req.walk.readable_len() && !self.is_ready(r) {
            return self.stall(r);
        }
        self.release(r, io);
        self.next_step(r, io);
    }

    /// Writes a round of request `r`'s reply (at most the bytes it holds room for)
    /// and reads behind it: the read completes once the writes are done (PCIe keeps
    /// a read behind earlier posted writes), and only then is the room given back,
    /// so a queue never has more than its buffer of reply in flight. The request
    /// goes on with its next round then, or completes now when the device has
    /// nothing more (its used element need not wait for the read).
    fn write_round(&mut self, r: usize, io: &mut dyn DeviceIo) {
        loop {
            let Some(req) = self.requests.get_mut(r).and_then(Option::as_mut) else {
                return;
            };
            let Some(job) = req.job.as_mut() else {
                return;
            };
            let writable = req.walk.writable_len();
            let mut buf = vec![0u8; req.step as usize];
            let mut used = 0;
            // (address, offset in buf, length)
            let mut writes = Vec::new();
            let done = loop {
                let Some(piece) = self.device.produce(job, &mut buf[used..]) else {
                    break true;
                };
                let n = piece.len.min(buf.len() - used);
                if n == 0 {
                    // No room left for the next piece; a device that makes no
                    // progress in an empty round is taken as done.
                    break used == 0;
                }
                let len = (n as u64).min(writable.saturating_sub(piece.offset));
                for (addr, from, m) in scatter(req.walk.buffers(), true, piece.offset, len) {
                    writes.push((addr, used + from as usize, m as usize));
                }
                used += n;
            };
            let (queue, held) = (req.queue, req.held);
            for &(addr, from, len) in &writes {
                if let Err(e) = io.dma_write(addr, &buf[from..from + len]) {
                    return self.fail_dma(e, io);
                }
            }
            let fence = writes.last().map(|&(addr, ..)| addr);
            if !done && fence.is_none() {
                // A round that wrote nothing (all beyond the writable area).
                continue;
            }
            if done {
                if let Some(req) = self.requests[r].as_mut() {
                    req.held = 0;
                }
            }
            let Some(addr) = fence else {
                self.queues[queue as usize].buffered -= held;
                return self.complete(r, io);
            };
            let fetch = if done {
                Fetch::Drain { queue, bytes: held }
            } else {
                Fetch::Fence(r)
            };
            match io.dma_read(addr, 1) {
                Ok(id) => {
                    self.fetches.insert(id, fetch);
                }
                Err(e) => return self.fail_dma(e, io),
            }
            if done {
                self.complete(r, io);
            }
            return;
        }
    }

    /// Request `r` is done: the used element, then waiting requests go on.
    fn complete(&mut self, r: usize, io: &mut dyn DeviceIo) {
        let Some(req) = self.requests.get_mut(r).and_then(Option::take) else {
            return;
        };
        let q = req.queue;
        let writable = req.walk.writable_len();
        let used_len = req.job.map_or(0, |job| self.device.finish(job));
        {
            let qs = &mut self.queues[q as usize];
            qs.buffered -= req.held;
            qs.in_flight.remove(&req.id);
            qs.ring_slots -= req.ring_len as u32;
        }
        let used_len = used_len.min(writable.min(u32::MAX as u64) as u32);
        self.write_used(q, &[(req.id, req.ring_len, used_len)], io);
        self.pump(q, io);
    }

    /// The used elements of requests (head or buffer ID, ring descriptors, used
    /// length), in order, and one interrupt. Split ring: the elements, then the used
    /// index once; packed ring: every descriptor but the first whole, then the
    /// first's flags, so the driver sees all of them or none (a frame over several
    /// chains is taken whole).
    fn write_used(&mut self, q: u16, used: &[(u16, u16, u32)], io: &mut dyn DeviceIo) {
        if used.is_empty() {
            return;
        }
        let packed = self.packed();
        let qs = &mut self.queues[q as usize];
        let mut written = Ok(());
        if packed {
            let mut first_flags = None;
            for (k, &(id, ring_len, used_len)) in used.iter().enumerate() {
                // The used descriptor in the next used slot; its flags last.
                let (body, flags) = packed::used_element(id, used_len, qs.packed_used.wrap);
                let at = qs.config.desc_addr(qs.packed_used.index);
                qs.packed_used = qs.packed_used.advance(ring_len, qs.config.size);
                // The slot's last bytes may lie past 2^64 for a ring the driver put there.
                let (Some(body_at), Some(flags_at)) = (at.checked_add(8), at.checked_add(14))
                else {
                    written = Err(DmaError::AddressOverflow);
                    break;
                };
                written = io.dma_write(body_at, &body);
                if written.is_err() {
                    break;
                }
                if k == 0 {
                    first_flags = Some((flags_at, flags));
                } else {
                    written = io.dma_write(flags_at, &flags);
                    if written.is_err() {
                        break;
                    }
                }
            }
            if let (Ok(()), Some((at, flags))) = (written, first_flags) {
                written = io.dma_write(at, &flags);
            }
        } else {
            for &(id, _, used_len) in used {
                let mut elem = [0u8; 8];
                elem[..4].copy_from_slice(&(id as u32).to_le_bytes());
                elem[4..].copy_from_slice(&used_len.to_le_bytes());
                let elem_addr = qs.config.used_elem_addr(qs.used_idx);
                qs.used_idx = qs.used_idx.wrapping_add(1);
                written = io.dma_write(elem_addr, &elem);
                if written.is_err() {
                    break;
                }
            }
            if written.is_ok() {
                let idx = qs.used_idx.to_le_bytes();
                written = io.dma_write(qs.config.used_idx_addr(), &idx);
            }
        }
        let quiet = qs.no_interrupt;
        if let Err(e) = written {
            return self.fail_dma(e, io);
        }
        if self.event_idx() {
            return self.used_event_decision(q, io);
        }
        if !quiet {
            return self.used_interrupt(q, io);
        }
        if self.polling {
            // Used elements the device wrote on its own (a received frame, a transmit
            // backend that took a frame at last), not soon after a notification: the
            // flags seen then may be stale (Linux turns interrupts back on without
            // notifying). They are read again, behind these writes: still off, the
            // driver will see the elements when it turns them on; on, the interrupt.
            self.recheck_suppression(q, io);
        }
    }

    /// Event indexes: used elements of queue `q` went out. An interrupt if the
    /// `used_event` last read is among them; else `used_event` is read again behind
    /// the writes (it may have moved since; a missed interrupt would leave the driver
    /// waiting, a needless one costs it only a look).
    fn used_event_decision(&mut self, q: u16, io: &mut dyn DeviceIo) {
        let qs = &mut self.queues[q as usize];
        if need_event(qs.used_event, qs.used_idx, qs.signalled) {
            qs.signalled = qs.used_idx;
            return self.used_interrupt(q, io);
        }
        self.stats.interrupts_suppressed += 1;
        self.check_used_event(q, io);
    }

    /// Reads queue `q`'s `used_event` behind the used writes so far (one such read at
    /// a time: the one in flight is followed by another if more went out meanwhile).
    fn check_used_event(&mut self, q: u16, io: &mut dyn DeviceIo) {
        let qs = &mut self.queues[q as usize];
        if !qs.checking {
            qs.checked_upto = qs.used_idx;
        }
        let at = qs.config.used_event_addr();
        self.check_ring(q, at, 2, Fetch::UsedEvent(q), io);
    }

    /// Reads `len` bytes at `at`, a field of queue `q`'s driver area, behind the used
    /// writes so far, as `fetch`: one such read per queue at a time.
    fn check_ring(&mut self, q: u16, at: u64, len: usize, fetch: Fetch, io: &mut dyn DeviceIo) {
        if self.queues[q as usize].checking {
            return;
        }
        match io.dma_read(at, len) {
            Ok(id) => {
                self.queues[q as usize].checking = true;
                self.stats.ring_fetches += 1;
                self.fetches.insert(id, fetch);
            }
            Err(e) => self.fail_dma(e, io),
        }
    }

    /// `used_event` of queue `q` as read behind the used writes up to `checked_upto`.
    fn used_event_fetched(&mut self, q: u16, bytes: &[u8], io: &mut dyn DeviceIo) {
        let Some(qs) = self.queues.get_mut(q as usize) else {
            return;
        };
        qs.checking = false;
        let Some(b) = bytes.get(0..2) else {
            return self.fail_dma(DmaError::BadCompletion, io);
        };
        qs.used_event = u16::from_le_bytes([b[0], b[1]]);
        if need_event(qs.used_event, qs.used_idx, qs.signalled) {
            qs.signalled = qs.used_idx;
            return self.used_interrupt(q, io);
        }
        // The driver did not want one for the elements the read was behind: later
        // decisions start there (unless an interrupt since went further).
        let seen = qs.checked_upto.wrapping_sub(qs.signalled);
        if seen <= qs.used_idx.wrapping_sub(qs.signalled) {
            qs.signalled = qs.checked_upto;
        }
        if qs.used_idx != qs.checked_upto {
            self.check_used_event(q, io);
        }
    }

    /// A used-buffer interrupt for queue `q`.
    fn used_interrupt(&mut self, q: u16, io: &mut dyn DeviceIo) {
        let Some(qs) = self.queues.get(q as usize) else {
            return;
        };
        let vector = qs.config.msix_vector;
        self.stats.used_interrupts += 1;
        if let Some(s) = self.queue_stats.get_mut(q as usize) {
            s.interrupts += 1;
        }
        self.signal(vector, isr::QUEUE, io);
    }

    /// Reads queue `q`'s interrupt suppression flags again; an interrupt is owed
    /// if they now allow it.
    fn recheck_suppression(&mut self, q: u16, io: &mut dyn DeviceIo) {
        let packed = self.packed();
        let qs = &mut self.queues[q as usize];
        qs.owed = true;
        let len = if packed { packed::EVENT_SIZE } else { 2 };
        let at = qs.config.driver;
        self.check_ring(q, at, len, Fetch::Suppression(q), io);
    }

    /// The suppression flags of queue `q` as read again: the owed interrupt now if
    /// they allow it.
    fn suppression_fetched(&mut self, q: u16, bytes: &[u8], io: &mut dyn DeviceIo) {
        let packed = self.packed();
        let Some(qs) = self.queues.get_mut(q as usize) else {
            return;
        };
        qs.checking = false;
        let flags = if packed {
            bytes.get(2..4)
        } else {
            bytes.get(0..2)
        };
        let Some(f) = flags else {
            return self.fail_dma(DmaError::BadCompletion, io);
        };
        let f = u16::from_le_bytes([f[0], f[1]]);
        qs.no_interrupt = if packed {
            f == packed::event::DISABLE
        } else {
            f & super::queue::AVAIL_F_NO_INTERRUPT != 0
        };
        if std::mem::take(&mut qs.owed) && !qs.no_interrupt {
            self.used_interrupt(q, io);
        }
    }
}

impl<D: VirtioDevice> Device for VirtioPci<D> {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8], io: &mut dyn DeviceIo) {
        data.fill(0);
        if bar != layout::BAR as usize {
            return;
        }
        let len = data.len() as u64;
        match offset {
            o if o + len <= layout::COMMON + layout::COMMON_LEN as u64 => {
                let image = self.common_image();
                data.copy_from_slice(&image[o as usize..(o + len) as usize]);
            }
            o if o == layout::ISR => {
                data[0] = std::mem::take(&mut self.isr);
                io.set_intx(false);
            }
            o if (layout::DEVICE..layout::NOTIFY).contains(&o) => {
                let at = o - layout::DEVICE;
                if at + len <= self.device.config_len() as u64 {
                    self.device.read_config(at, data);
                }
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8], io: &mut dyn DeviceIo) {
        if bar != layout::BAR as usize {
            return;
        }
        let len = data.len() as u64;
        match offset {
            o if o + len <= layout::COMMON + layout::COMMON_LEN as u64 => {
                self.common_write(o, data, io)
            }
            o if (layout::DEVICE..layout::NOTIFY).contains(&o) => {
                let at = o - layout::DEVICE;
                if at + len <= self.device.config_len() as u64 {
                    self.device.write_config(at, data);
                }
            }
            o if (layout::NOTIFY..layout::BAR_SIZE).contains(&o) => {
                let rel = o - layout::NOTIFY;
                if rel.is_multiple_of(layout::NOTIFY_MULTIPLIER as u64) {
                    self.stats.notifications += 1;
                    let q = rel / layout::NOTIFY_MULTIPLIER as u64;
                    if let Some(s) = self.queue_stats.get_mut(q as usize) {
                        s.notifications += 1;
                    }
                    self.kick(q as u16, io);
                    if self.running() && self.event_idx() {
                        self.refresh_used_events(q as u16, io);
                    }
                }
            }
            _ => {}
        }
    }

    fn dma_read_done(
        &mut self,
        id: DmaId,
        result: Result<Vec<u8>, DmaError>,
        io: &mut dyn DeviceIo,
    ) {
        let Some(fetch) = self.fetches.remove(&id) else {
            return;
        };
        let bytes = match result {
            Ok(b) => b,
            Err(e) => return self.fail_dma(e, io),
        };
        match fetch {
            Fetch::Avail(q) => self.avail_fetched(q, &bytes, io),
            Fetch::PackedWindow(q) => self.packed_window_fetched(q, &bytes, io),
            Fetch::DriverEvent(q) => {
                if let (Some(qs), Some(f)) = (self.queues.get_mut(q as usize), bytes.get(2..4)) {
                    qs.no_interrupt = u16::from_le_bytes([f[0], f[1]]) == packed::event::DISABLE;
                }
            }
            Fetch::Descriptors { request, first } => {
                let table = parse_descriptors(&bytes);
                self.walk_in(request, first, &table, io);
            }
            Fetch::Indirect(request) => {
                // The chain goes on at entry 0 of the table.
                let table = if self.packed() {
                    packed::indirect_as_split(&packed::parse_all(&bytes))
                } else {
                    parse_descriptors(&bytes)
                };
                if let Some(req) = self.requests.get_mut(request).and_then(Option::as_mut) {
                    req.want = 0;
                    self.walk_in(request, 0, &table, io);
                }
            }
            Fetch::Readable {
                request,
                offset,
                len,
            } => self.readable_fetched(request, (offset, len), bytes, io),
            Fetch::Fence(request) => {
                self.release(request, io);
                self.next_step(request, io);
            }
            Fetch::Suppression(q) => self.suppression_fetched(q, &bytes, io),
            Fetch::UsedEvent(q) => self.used_event_fetched(q, &bytes, io),
            Fetch::Drain { queue, bytes } => {
                if let Some(qs) = self.queues.get_mut(queue as usize) {
                    qs.buffered = qs.buffered.saturating_sub(bytes);
                    self.pump(queue, io);
                }
            }
        }
    }

    fn reset(&mut self) {
        self.reset_state();
    }

    /// The device's own work: its configuration (a link that changed), requests its
    /// backend could not take before, and data for parked chains.
    fn poll(&mut self, io: &mut dyn DeviceIo) {
        if self.device.poll() {
            self.config_changed(io);
        }
        self.polling = true;
        for q in 0..self.queues.len() as u16 {
            if self.running() && !self.queues[q as usize].stalled.is_empty() {
                self.retry_stalled(q, io);
            }
            if self.device.parks(q) {
                self.fill_queue(q, io);
            }
        }
        self.polling = false;
    }

    fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) {
        out.extend(self.device.wait_fd());
    }

    /// A queue stalled on its device (a backend that would block) is retried only
    /// on polls: the box should come back soon.
    fn poll_soon(&self) -> bool {
        self.running() && self.queues.iter().any(|q| !q.stalled.is_empty())
    }

    fn set_leaving(&mut self, leaving: bool, io: &mut dyn DeviceIo) {
        if self.leaving != leaving {
            self.leaving = leaving;
            if self.device.set_leaving(leaving) {
                self.config_changed(io);
            }
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        let mut v = vec![
            ("virtio_notifications", s.notifications),
            ("virtio_ring_fetches", s.ring_fetches),
            ("virtio_descriptor_fetches", s.descriptor_fetches),
            ("virtio_requests", s.requests),
            ("virtio_used_interrupts", s.used_interrupts),
            ("virtio_bad_chains", s.bad_chains),
            ("virtio_dma_errors", s.dma_errors),
            ("virtio_resets", s.resets),
            ("virtio_reused_ids", s.reused_ids),
            ("virtio_buffer_waits", s.buffer_waits),
            (
                "virtio_buffered_bytes",
                self.queues.iter().map(|q| q.buffered).sum(),
            ),
            ("virtio_buffered_peak", s.buffered_peak),
            ("virtio_stalls", s.stalls),
            ("virtio_parked", s.parked),
            ("virtio_filled", s.filled),
            ("virtio_bad_fills", s.bad_fills),
            ("virtio_config_changes", s.config_changes),
            ("virtio_ring_polls", s.ring_polls),
            ("virtio_interrupts_suppressed", s.interrupts_suppressed),
            ("virtio_used_event_refreshes", s.used_event_refreshes),
        ];
        for (q, names) in self.queue_stats.iter().zip(QUEUE_COUNTER_NAMES) {
            v.push((names.0, q.notifications));
            v.push((names.1, q.interrupts));
        }
        v.extend(self.device.counters());
        v
    }
}

fn parse_descriptors(bytes: &[u8]) -> Vec<Descriptor> {
    bytes
        .chunks_exact(DESC_SIZE)
        .map(|c| Descriptor::parse(c.try_into().expect("16 bytes")))
        .collect()
}
