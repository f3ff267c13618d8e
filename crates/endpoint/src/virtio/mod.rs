//! Virtio devices over the modern (1.x) PCI transport.
//!
//! - [`queue`]: split virtqueues: ring layouts and the walk along a descriptor chain.
//! - [`packed`]: packed virtqueues: the ring's layout, wrap counters, and finding the
//!   chains a driver made available (walked then as split ones).
//! - [`pci`]: the transport, a [`crate::Device`] around a [`VirtioDevice`]: the
//!   common, notify, ISR and device-configuration structures in BAR0, the MSI-X table
//!   in BAR1, feature negotiation, and the queue engine that fetches rings and
//!   buffers by DMA in bounded chunks, streams each request through the device and
//!   completes it.
//! - [`blk`]: virtio-blk on a file (or memory) of the box.
//! - [`net`]: virtio-net on a backend of the box (a TAP, a raw socket, memory).
//!
//! Every access to rings and buffers is a DMA through the framework, so over tether it
//! is a TLP to the host's memory.

pub mod blk;
pub mod net;
pub mod packed;
pub mod pci;
pub mod queue;

pub use pci::{RingFeatures, VirtioPci, VirtioStats};

/// "No MSI-X vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// PCI vendor ID of virtio devices.
pub const PCI_VENDOR_ID: u16 = 0x1af4;

/// Modern (non-transitional) PCI device IDs are 0x1040 + the virtio device type.
pub const PCI_DEVICE_ID_BASE: u16 = 0x1040;

/// Feature bits of the transport and the rings (virtio 1.x, 6).
pub mod feature {
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    pub const RING_PACKED: u64 = 1 << 34;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// The sizes of a request's chain: bytes of its device-readable buffers and of its
/// device-writable ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainLens {
    pub readable: u64,
    pub writable: u64,
}

/// A piece of a device's reply: `len` bytes the device put at the start of the buffer
/// it was given, for the writable area (the chain's writable buffers viewed as one)
/// at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: usize,
}

/// The chains parked on a queue as the device sees them when asked to fill them
/// ([`VirtioDevice::fill`]).
#[derive(Clone, Copy, Debug)]
pub struct Parked<'a> {
    /// Writable bytes of each parked chain, oldest first.
    pub chains: &'a [u64],
    /// More chains were made available and are being fetched: data that finds no room
    /// now may find it soon.
    pub walking: bool,
    /// Bytes the queue's buffer may take now, and the rule that charges a fill.
    pub(crate) room: u64,
    pub(crate) buffer_bytes: u64,
}

impl Parked<'_> {
    /// No chains, none coming (the device is not running).
    pub const NONE: Parked<'static> = Parked {
        chains: &[],
        walking: false,
        room: 0,
        buffer_bytes: 0,
    };

    /// Whether a fill of `bytes` may be written now (the queue's buffer bounds what
    /// is written and not yet known done; a fill is charged like a request's step).
    pub fn fits(&self, bytes: u64) -> bool {
        self.buffer_bytes > 0 && pci::charge(bytes, self.buffer_bytes) <= self.room
    }
}

/// What the device writes into parked chains: the first `lens.len()` chains, oldest
/// first, get `data` in turn, chain *i* the next `lens[i]` bytes (at most its writable
/// size), which is also its used length. The chains' used elements go out together,
/// after the data, with one interrupt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    pub data: Vec<u8>,
    pub lens: Vec<u32>,
}

impl Fill {
    pub fn clear(&mut self) {
        self.data.clear();
        self.lens.clear();
    }
}

/// A virtio device type, served by the [`pci`] transport.
pub trait VirtioDevice {
    /// The virtio device type (2 = block).
    fn device_type(&self) -> u16;
    /// Device-specific feature bits offered (the transport adds its own).
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// Largest size of each queue.
    fn queue_max_size(&self) -> u16;
    /// Bytes of the device-specific configuration structure.
    fn config_len(&self) -> u32;
    /// Reads the device-specific configuration.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration (read-only by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver accepted `features` (FEATURES_OK).
    fn set_driver_features(&mut self, _features: u64) {}
    /// Its state for one request between the steps below (the transport keeps it).
    type Job;
    /// A chain of `lens` was made available on `queue`: a request starts.
    fn begin(&mut self, queue: u16, lens: ChainLens) -> Self::Job;
    /// The readable bytes at `offset`: called for consecutive chunks from offset 0 up
    /// to `lens.readable`, in order, each non-empty and at most the transport's chunk
    /// size (so the device never sees a whole large chain at once).
    fn consume(&mut self, job: &mut Self::Job, offset: u64, data: &[u8]);
    /// The next piece of the reply, once every readable byte was consumed: the device
    /// writes at most `buf.len()` bytes at the start of `buf` and says where they go,
    /// or returns `None` when the reply is complete. An empty `buf` asks whether more
    /// is coming (`Some` piece of length 0 if so). Bytes beyond the writable area are
    /// not written. Called only when `lens.writable` > 0.
    fn produce(&mut self, job: &mut Self::Job, buf: &mut [u8]) -> Option<Piece>;
    /// Whether the request on `queue`, every readable byte consumed, may go on to its
    /// reply and completion now. A device whose backend cannot take it yet (a full
    /// transmit queue) says no: the request keeps its place in the ring and what it
    /// holds of the queue's buffer, its queue starts no new step, and the transport
    /// asks again, oldest request first, every [`crate::Device::poll`]. Yes by
    /// default.
    fn ready(&mut self, _queue: u16, _job: &mut Self::Job) -> bool {
        true
    }
    /// The request is done: the length to report in the used ring (bytes written, by
    /// the spec's definition; the transport caps it at `lens.writable`).
    fn finish(&mut self, job: Self::Job) -> u32;
    /// Whether the chains made available on `queue` wait for data (a receive queue)
    /// rather than run as requests at once: the transport walks them and keeps them,
    /// in the order their walks end, until the device fills them
    /// ([`VirtioDevice::fill`]). No queue by default.
    fn parks(&self, _queue: u16) -> bool {
        false
    }
    /// Data for the chains parked on `queue` ([`Parked`] says what they hold and what
    /// may be written now). The device puts what goes to the first chains in `out`
    /// and returns true, or returns false when it has nothing more now. Called every
    /// poll for each parking queue, while the device is running or not (with no
    /// chains then), so a device can drain and drop what its backend received.
    fn fill(&mut self, _queue: u16, _parked: &Parked<'_>, _out: &mut Fill) -> bool {
        false
    }
    /// The device's own work, every round of the box (its backend's state): returns
    /// whether its configuration changed (the transport then raises a
    /// configuration-change interrupt).
    fn poll(&mut self) -> bool {
        false
    }
    /// The box says the device is leaving (or is back): returns whether its
    /// configuration changed (a network device reports its link down).
    fn set_leaving(&mut self, _leaving: bool) -> bool {
        false
    }
    /// A descriptor readable when the device has work of its own (its backend).
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Back to the state after power-on (device reset by the driver, or FLR).
    fn reset(&mut self);
    /// The device's own counters, by name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
