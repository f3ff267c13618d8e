//! The host side as a program uses it: a blocking API over the [`Bridge`] engine and a
//! [`Link`] that carries TLPs to the devices (in process for tests and single-machine
//! runs; a fabric session over Ethernet otherwise). It enumerates devices (BAR sizing
//! and assignment, MSI/MSI-X set-up), does config and BAR accesses, hands out DMA
//! buffers in host memory, and waits for interrupts, serving device DMA all along.
//!
//! This is also the user-space driver API: think of it as VFIO for a device that sits
//! on the other side of an Ethernet segment.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use pci::regs::{self, command, header_type};
use pci::{msi, msix, pcie, BarKind, Capabilities, CapabilityId};
use thiserror::Error;
use tlp::{Bdf, CompletionStatus, IntxPin};

use crate::bridge::{Bridge, BridgeConfig, Event, RequestError, RequestId, MSI_WINDOW};
use crate::memory::{MapError, MemoryMap};

/// A link that holds as much as it may and takes nothing more until it has sent some.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("the link's queue is full")]
pub struct LinkFull;

/// Carries TLPs between the bridge and the devices.
pub trait Link {
    /// Queues a TLP for the device. A link may hold it until [`Link::flush`], so that
    /// TLPs sent together can share a frame. A link whose queue is full refuses it
    /// (nothing queued); the host keeps it and offers it again later, and meanwhile
    /// holds back what would add to it (see [`Host`]).
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull>;
    /// Sends what `send` queued.
    fn flush(&mut self) {}
    /// The next TLP from a device, waiting up to `timeout` for one.
    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>>;
    /// Takes back the buffer of a TLP [`Link::recv`] returned, once it is used, so that
    /// the link can reuse it instead of allocating per TLP. Optional.
    fn recycle(&mut self, _tlp: Vec<u8>) {}
}

/// TLPs handled in one step before the answers go out together.
const STEP_BURST: usize = 64;

/// Interrupts kept for the program at most. Devices (untrusted, on the other side of
/// the network) choose how many they send: beyond this the oldest of the device that
/// holds the most goes (a flooding device loses its own, not another's), counted in
/// `stats().interrupts_dropped`.
pub const MAX_QUEUED_INTERRUPTS: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HostError {
    #[error("request failed: {0}")]
    Request(#[from] RequestError),
    #[error("no device answers at {0}")]
    NoDevice(Bdf),
    #[error("{0} is not a type-0 (endpoint) function")]
    NotAnEndpoint(Bdf),
    #[error("no room for BAR {bar} ({size:#x} bytes) of {bdf} in the {window} window")]
    WindowFull {
        bdf: Bdf,
        bar: usize,
        size: u64,
        window: &'static str,
    },
    #[error("{0} has not been enumerated")]
    Unknown(Bdf),
    #[error("BAR {bar} of {bdf}: {len} bytes at {offset:#x} are outside it")]
    OutsideBar {
        bdf: Bdf,
        bar: usize,
        offset: u64,
        len: usize,
    },
    #[error("host memory: {0}")]
    Memory(#[from] MapError),
    #[error("the DMA area is full ({0} bytes asked)")]
    DmaFull(usize),
    #[error("every MSI data value is in use ({0} routes)")]
    MsiFull(usize),
}

/// Where BARs get their addresses.
#[derive(Clone, Copy, Debug)]
pub struct BarWindows {
    /// Below 4 GiB, for 32-bit BARs.
    pub mem32: (u64, u64),
    /// For 64-bit BARs.
    pub mem64: (u64, u64),
}

impl Default for BarWindows {
    fn default() -> BarWindows {
        BarWindows {
            mem32: (0xe000_0000, 0xfe00_0000),
            mem64: (0x80_0000_0000, 0x100_0000_0000),
        }
    }
}

/// Where enumeration places the next BARs: bump allocation through a pair of windows.
#[derive(Clone, Copy, Debug)]
struct BarCursor {
    windows: BarWindows,
    next32: u64,
    next64: u64,
}

impl BarCursor {
    fn new(windows: BarWindows) -> BarCursor {
        BarCursor {
            windows,
            next32: windows.mem32.0,
            next64: windows.mem64.0,
        }
    }

    /// The next naturally aligned `size` bytes of the window for a 32- or 64-bit BAR.
    fn assign(
        &mut self,
        bdf: Bdf,
        bar: usize,
        size: u64,
        is_64bit: bool,
    ) -> Result<u64, HostError> {
        let (next, window, name) = if is_64bit {
            (&mut self.next64, self.windows.mem64, "64-bit")
        } else {
            (&mut self.next32, self.windows.mem32, "32-bit")
        };
        let full = || HostError::WindowFull {
            bdf,
            bar,
            size,
            window: name,
        };
        let addr = next.checked_next_multiple_of(size).ok_or_else(full)?;
        match addr.checked_add(size) {
            Some(end) if end <= window.1 => {
                *next = end;
                Ok(addr)
            }
            _ => Err(full()),
        }
    }
}

/// One BAR as enumeration found and assigned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub index: usize,
    pub address: u64,
    pub size: u64,
    pub is_64bit: bool,
    pub prefetchable: bool,
}

/// How the device signals interrupts after enumeration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    MsiX { vectors: u16 },
    Msi { vectors: u8 },
    Intx(IntxPin),
    None,
}

/// An enumerated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Base class, subclass, programming interface.
    pub class: (u8, u8, u8),
    pub revision: u8,
    pub bars: Vec<BarInfo>,
    pub irq: IrqMode,
}

impl DeviceInfo {
    pub fn bar(&self, index: usize) -> Option<&BarInfo> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// How the device's interrupt `vector` reaches the host in the mode enumeration
    /// set up: that vector under MSI-X or MSI (if the device has it), its pin under
    /// INTx (every vector shares the line); `None` if it cannot arrive at all.
    pub fn armed(&self, vector: u16) -> Option<Armed> {
        match self.irq {
            IrqMode::MsiX { vectors } if vector < vectors => Some(Armed::Vector(vector)),
            IrqMode::Msi { vectors } if vector < u16::from(vectors) => Some(Armed::Vector(vector)),
            IrqMode::Intx(pin) => Some(Armed::Intx(pin)),
            _ => None,
        }
    }
}

/// The interrupt a driver armed on its device and waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Armed {
    /// This MSI or MSI-X vector.
    Vector(u16),
    /// This INTx line, asserted.
    Intx(IntxPin),
}

impl Armed {
    /// Whether `i` (from the driver's device) is the armed interrupt.
    pub fn matches(self, i: &Interrupt) -> bool {
        match (self, *i) {
            (Armed::Vector(v), Interrupt::Vector { vector, .. }) => v == vector,
            (
                Armed::Intx(p),
                Interrupt::Intx {
                    pin,
                    asserted: true,
                    ..
                },
            ) => p == pin,
            _ => false,
        }
    }
}

/// An interrupt from a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// MSI or MSI-X vector `vector` of `device`.
    Vector { device: Bdf, vector: u16 },
    Intx {
        device: Bdf,
        pin: IntxPin,
        asserted: bool,
    },
}

impl Interrupt {
    /// The device it came from (as the message names it).
    pub fn device(&self) -> Bdf {
        match *self {
            Interrupt::Vector { device, .. } | Interrupt::Intx { device, .. } => device,
        }
    }
}

/// Counters besides the bridge's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HostStats {
    /// MMIO reads that timed out and returned all-ones.
    pub mmio_read_timeouts: u64,
    /// MMIO reads answered with an error status (also all-ones).
    pub mmio_read_errors: u64,
    /// MMIO writes dropped: a bad length, or a link that took nothing for a whole
    /// completion timeout (posted writes have no answer to carry the failure).
    pub mmio_writes_dropped: u64,
    /// MSIs whose data no enumerated device was given, or that came from another
    /// device than the one it was given to.
    pub stray_msis: u64,
    /// Interrupts that added nothing to what was queued (an MSI vector already
    /// pending, an INTx line already at that level), merged into it.
    pub interrupts_coalesced: u64,
    /// Queued interrupts pushed out by more than [`MAX_QUEUED_INTERRUPTS`] arriving
    /// before the program took them: each time the oldest of the device that holds
    /// the most.
    pub interrupts_dropped: u64,
    /// Queued interrupts of a device thrown away when it was removed.
    pub interrupts_cleared: u64,
    /// Interrupts of its device a driver waiting in [`Host::wait_armed`] passed over:
    /// another vector or line than it armed, or a deassert.
    pub interrupts_discarded: u64,
    /// Armed interrupts a driver found its device had no cause for
    /// ([`Host::note_spurious_interrupt`]).
    pub spurious_interrupts: u64,
}

/// A DMA buffer in host memory: `len` bytes at bus address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuffer {
    pub addr: u64,
    pub len: usize,
}

/// The first MSI data value the host hands out (below it, x86 vectors are reserved).
const FIRST_MSI_DATA: u32 = 0x20;

/// The MSI address the host gives devices (x86's fixed window, destination 0).
pub const MSI_ADDRESS: u64 = MSI_WINDOW.start;

/// The interrupts queued for the program, with how many each device holds (so that
/// a full queue finds the device that holds the most at the cost of one pass over
/// the devices, not over the queue).
#[derive(Default)]
struct InterruptQueue {
    queue: VecDeque<Interrupt>,
    held: HashMap<Bdf, usize>,
}

impl InterruptQueue {
    fn len(&self) -> usize {
        self.queue.len()
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &Interrupt> {
        self.queue.iter()
    }

    fn push_back(&mut self, i: Interrupt) {
        *self.held.entry(i.device()).or_default() += 1;
        self.queue.push_back(i);
    }

    fn taken(&mut self, i: &Interrupt) {
        if let Some(n) = self.held.get_mut(&i.device()) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&i.device());
            }
        }
    }

    fn pop_front(&mut self) -> Option<Interrupt> {
        let i = self.queue.pop_front()?;
        self.taken(&i);
        Some(i)
    }

    /// Takes out the first interrupt of `device`.
    fn take_of(&mut self, device: Bdf) -> Option<Interrupt> {
        let at = self.queue.iter().position(|i| i.device() == device)?;
        let i = self.queue.remove(at)?;
        self.taken(&i);
        Some(i)
    }

    /// Drops the oldest interrupt of the device that holds the most (ties: any of
    /// them).
    fn drop_from_the_largest(&mut self) {
        let Some((&device, _)) = self.held.iter().max_by_key(|(_, &n)| n) else {
            return;
        };
        self.take_of(device);
    }

    /// Drops every interrupt of `device`; returns how many.
    fn clear(&mut self, device: Bdf) -> usize {
        let before = self.queue.len();
        self.queue.retain(|i| i.device() != device);
        self.held.remove(&device);
        before - self.queue.len()
    }
}

/// The host side: enumeration, config and BAR access, DMA buffers, interrupts.
pub struct Host<L: Link> {
    bridge: Bridge,
    link: L,
    epoch: Instant,
    /// Where [`Host::enumerate`] places BARs (never reused).
    bars: BarCursor,
    devices: Vec<DeviceInfo>,
    /// MSI data value -> (device, vector).
    msi_routes: HashMap<u32, (Bdf, u16)>,
    /// The same routes the other way: (device, vector) -> MSI data.
    msi_data: HashMap<(Bdf, u16), u32>,
    next_msi_data: u32,
    interrupts: InterruptQueue,
    finished: HashMap<RequestId, Result<Vec<u8>, RequestError>>,
    dma_area: (u64, u64),
    dma_next: u64,
    stats: HostStats,
}

impl<L: Link> Host<L> {
    /// A host whose devices may DMA into `memory` only. DMA buffers are handed out of
    /// the region at `dma_area` (base, length), which must be part of `memory`.
    pub fn new(
        cfg: BridgeConfig,
        memory: MemoryMap,
        dma_area: (u64, u64),
        windows: BarWindows,
        link: L,
    ) -> Host<L> {
        Host {
            bridge: Bridge::new(cfg, memory),
            link,
            epoch: Instant::now(),
            bars: BarCursor::new(windows),
            devices: Vec::new(),
            msi_routes: HashMap::new(),
            msi_data: HashMap::new(),
            next_msi_data: FIRST_MSI_DATA,
            interrupts: InterruptQueue::default(),
            finished: HashMap::new(),
            dma_area,
            dma_next: dma_area.0,
            stats: HostStats::default(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    pub fn link(&self) -> &L {
        &self.link
    }

    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    pub fn stats(&self) -> HostStats {
        self.stats
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Sends what the bridge has, takes what arrives, turns events into results and
    /// interrupts; waits up to `wait` for input. Returns whether it moved anything.
    fn step(&mut self, wait: Duration) -> bool {
        let mut worked = self.transmit();
        if let Some(t) = self.link.recv(wait) {
            worked = true;
            let now = self.now();
            self.bridge.handle_tlp(now, &t);
            self.link.recycle(t);
            // What else has arrived is handled too, so that the answers (completions
            // of device reads) go out together and share frames.
            for _ in 1..STEP_BURST {
                let Some(t) = self.link.recv(Duration::ZERO) else {
                    break;
                };
                self.bridge.handle_tlp(now, &t);
                self.link.recycle(t);
            }
            self.transmit();
        }
        let now = self.now();
        if self.bridge.poll_timeout().is_some_and(|d| d <= now) {
            self.bridge.handle_timeout(now);
        }
        while let Some(e) = self.bridge.poll_event() {
            worked = true;
            match e {
                Event::Completed { id, result } => {
                    self.finished.insert(id, result);
                }
                // A message counts only from the device its data value was given to:
                // one device cannot raise another's vectors by writing their data.
                Event::Msi { source, data, .. } => match self.msi_routes.get(&data) {
                    Some(&(device, vector)) if device == source => {
                        self.queue_interrupt(Interrupt::Vector { device, vector })
                    }
                    _ => self.stats.stray_msis += 1,
                },
                Event::Intx {
                    source,
                    pin,
                    asserted,
                } => self.queue_interrupt(Interrupt::Intx {
                    device: source,
                    pin,
                    asserted,
                }),
            }
        }
        worked
    }

    /// Queues an interrupt for the program, merged into what is queued when it adds
    /// nothing, the oldest pushed out when the queue is full; both counted.
    fn queue_interrupt(&mut self, i: Interrupt) {
        let adds_nothing = match i {
            // Pending already: one delivery serves both (as in the APIC's IRR).
            Interrupt::Vector { .. } => self.interrupts.iter().any(|q| *q == i),
            // The line's latest queued level is this one already.
            Interrupt::Intx { device, pin, .. } => {
                self.interrupts.iter().rev().find(|q| {
                    matches!(q, Interrupt::Intx { device: d, pin: p, .. } if *d == device && *p == pin)
                }) == Some(&i)
            }
        };
        if adds_nothing {
            self.stats.interrupts_coalesced += 1;
            return;
        }
        if self.interrupts.len() >= MAX_QUEUED_INTERRUPTS {
            // The device that holds the most pays: a flood pushes out its own oldest,
            // never another device's.
            self.interrupts.drop_from_the_largest();
            self.stats.interrupts_dropped += 1;
        }
        self.interrupts.push_back(i);
    }

    /// Hands the link every TLP the bridge has, as far as it takes them, then flushes
    /// it. What it refuses stays with the bridge, in order, for the next round.
    /// Returns whether the link took any.
    fn transmit(&mut self) -> bool {
        let mut sent = false;
        while let Some(t) = self.bridge.peek_transmit() {
            if self.link.send(t).is_err() {
                break;
            }
            if let Some(b) = self.bridge.poll_transmit() {
                self.bridge.recycle(b);
            }
            sent = true;
        }
        self.link.flush();
        sent
    }

    fn wait_for(&mut self, id: Result<RequestId, RequestError>) -> Result<Vec<u8>, RequestError> {
        let id = id?;
        loop {
            if let Some(r) = self.finished.remove(&id) {
                return r;
            }
            self.step(Duration::from_millis(1));
        }
    }

    /// One round: sends what is queued, handles what arrived (waiting up to `wait` for
    /// it), runs timers. For programs that wait on other inputs too. Returns whether
    /// it moved anything (a TLP sent or taken, a request finished): a loop that sleeps
    /// when nothing moved must not sleep then, as more may be waiting in the link.
    pub fn poll(&mut self, wait: Duration) -> bool {
        self.step(wait)
    }

    /// The next interrupt that arrived, if any (no waiting).
    pub fn take_interrupt(&mut self) -> Option<Interrupt> {
        self.interrupts.pop_front()
    }

    /// How many interrupts are queued (at most [`MAX_QUEUED_INTERRUPTS`]).
    pub fn queued_interrupts(&self) -> usize {
        self.interrupts.len()
    }

    /// The memory devices may reach (a VMM front-end maps guest RAM here).
    pub fn memory_mut(&mut self) -> &mut MemoryMap {
        self.bridge.memory_mut()
    }

    /// Serves device DMA and collects interrupts for up to `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step(Duration::from_millis(1).min(end - Instant::now()));
        }
    }

    pub fn config_read(&mut self, bdf: Bdf, register: u16) -> Result<u32, HostError> {
        let now = self.now();
        let id = self.bridge.config_read(now, bdf, register);
        let d = self.wait_for(id)?;
        Ok(u32::from_le_bytes(
            d.try_into().map_err(|_| RequestError::BadCompletion)?,
        ))
    }

    pub fn config_write(&mut self, bdf: Bdf, register: u16, value: u32) -> Result<(), HostError> {
        self.config_write_be(bdf, register, value, 0xf)
    }

    /// Writes the bytes of `value` whose bits are set in `be` (byte enables).
    pub fn config_write_be(
        &mut self,
        bdf: Bdf,
        register: u16,
        value: u32,
        be: u8,
    ) -> Result<(), HostError> {
        let now = self.now();
        let id = self.bridge.config_write(now, bdf, register, value, be);
        self.wait_for(id)?;
        Ok(())
    }

    /// Reads `len` bytes (up to 4096, within a page) at bus address `addr`. As on real
    /// PCIe, a read that times out or fails returns all-ones, and a counter goes up.
    pub fn mem_read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let now = self.now();
        let id = self.bridge.mem_read(now, addr, len);
        match self.wait_for(id) {
            Ok(d) => d,
            Err(RequestError::Timeout) => {
                self.stats.mmio_read_timeouts += 1;
                vec![0xff; len]
            }
            Err(_) => {
                self.stats.mmio_read_errors += 1;
                vec![0xff; len]
            }
        }
    }

    /// Writes `data` at bus address `addr` (posted). Back-pressure: it first waits
    /// (serving the devices) until the link has taken everything queued before it, so
    /// that a caller writing faster than the link carries waits rather than piles
    /// TLPs up. A write whose length is bad, or that the link cannot take within the
    /// completion timeout, is dropped and counted (`stats().mmio_writes_dropped`).
    pub fn mem_write(&mut self, addr: u64, data: &[u8]) {
        let patience = Duration::from_micros(self.bridge.config().completion_timeout_us);
        let end = Instant::now() + patience;
        self.transmit();
        while self.bridge.tx_backlog() > 0 {
            let now = Instant::now();
            if now >= end {
                self.stats.mmio_writes_dropped += 1;
                return;
            }
            self.step((end - now).min(Duration::from_millis(1)));
        }
        let now = self.now();
        if self.bridge.mem_write(now, addr, data).is_err() {
            self.stats.mmio_writes_dropped += 1;
        }
        self.step(Duration::ZERO);
    }

    fn bar_addr(&self, bdf: Bdf, bar: usize, offset: u64, len: usize) -> Result<u64, HostError> {
        let d = self
            .devices
            .iter()
            .find(|d| d.bdf == bdf)
            .ok_or(HostError::Unknown(bdf))?;
        let b = d.bar(bar).ok_or(HostError::OutsideBar {
            bdf,
            bar,
            offset,
            len,
        })?;
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > b.size)
        {
            return Err(HostError::OutsideBar {
                bdf,
                bar,
                offset,
                len,
            });
        }
        Ok(b.address + offset)
    }

    pub fn bar_read(
        &mut self,
        bdf: Bdf,
        bar: usize,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        let a = self.bar_addr(bdf, bar, offset, len)?;
        Ok(self.mem_read(a, len))
    }

    pub fn bar_read32(&mut self, bdf: Bdf, bar: usize, offset: u64) -> Result<u32, HostError> {
        let d = self.bar_read(bdf, bar, offset, 4)?;
        Ok(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
    }

    pub fn bar_write(
        &mut self,
        bdf: Bdf,
        bar: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), HostError> {
        let a = self.bar_addr(bdf, bar, offset, data.len())?;
        self.mem_write(a, data);
        Ok(())
    }

    pub fn bar_write32(
        &mut self,
        bdf: Bdf,
        bar: usize,
        offset: u64,
        v: u32,
    ) -> Result<(), HostError> {
        self.bar_write(bdf, bar, offset, &v.to_le_bytes())
    }

    /// A DMA buffer of `len` bytes (64-byte aligned) in the DMA area. Buffers are not
    /// given back; the area is for the life of the host.
    pub fn alloc_dma(&mut self, len: usize) -> Result<DmaBuffer, HostError> {
        let addr = self.dma_next.div_ceil(64) * 64;
        let end = addr
            .checked_add(len as u64)
            .ok_or(HostError::DmaFull(len))?;
        if len == 0 || end > self.dma_area.0 + self.dma_area.1 {
            return Err(HostError::DmaFull(len));
        }
        self.dma_next = end;
        Ok(DmaBuffer { addr, len })
    }

    /// Reads host memory (what a device wrote by DMA).
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), HostError> {
        Ok(self.bridge.memory().read(addr, buf)?)
    }

    /// Writes host memory (for a device to read by DMA).
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), HostError> {
        Ok(self.bridge.memory_mut().write(addr, data)?)
    }

    /// Waits up to `timeout` (serving DMA meanwhile) for `device` to signal what
    /// `armed` names, and takes it. Interrupts of `device` met on the way that are
    /// not the armed one (another vector or line, a deassert, a message forged by its
    /// box) are taken out and counted in `stats().interrupts_discarded`; those of
    /// other devices stay queued, in order.
    pub fn wait_armed(
        &mut self,
        device: Bdf,
        armed: Armed,
        timeout: Duration,
    ) -> Option<Interrupt> {
        let end = Instant::now() + timeout;
        loop {
            while let Some(i) = self.interrupts.take_of(device) {
                if armed.matches(&i) {
                    return Some(i);
                }
                self.stats.interrupts_discarded += 1;
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            self.step((end - now).min(Duration::from_millis(1)));
        }
    }

    /// A driver that took an armed interrupt and found its device had no cause for
    /// it (nothing finished) says so here, for the counters.
    pub fn note_spurious_interrupt(&mut self) {
        self.stats.spurious_interrupts += 1;
    }

    /// The next interrupt, waiting up to `timeout` (serving DMA meanwhile).
    pub fn wait_interrupt(&mut self, timeout: Duration) -> Option<Interrupt> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(i) = self.interrupts.pop_front() {
                return Some(i);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            self.step((end - now).min(Duration::from_millis(1)));
        }
    }

    /// Enumerates the function at `bdf`: identifies it, sizes and assigns its memory
    /// BARs, sets Max Payload Size and enables extended (8-bit) tags where supported,
    /// sets up MSI-X (all vectors) or MSI (one vector) to addresses this host
    /// recognises, or leaves INTx, and enables memory decoding and bus mastering.
    ///
    /// BARs go into the host's windows (given to [`Host::new`]), which this bump
    /// allocator never reuses; a program that frees and reuses windows (a switch port's)
    /// uses [`Host::enumerate_in`].
    pub fn enumerate(&mut self, bdf: Bdf) -> Result<DeviceInfo, HostError> {
        let mut bars = self.bars;
        let r = self.enumerate_with(bdf, &mut bars);
        self.bars = bars;
        r
    }

    /// [`Host::enumerate`], with the device's BARs placed in `windows` only (the
    /// windows of the switch port the device sits behind), from their start.
    pub fn enumerate_in(&mut self, bdf: Bdf, windows: BarWindows) -> Result<DeviceInfo, HostError> {
        self.enumerate_with(bdf, &mut BarCursor::new(windows))
    }

    fn enumerate_with(
        &mut self,
        bdf: Bdf,
        cursor: &mut BarCursor,
    ) -> Result<DeviceInfo, HostError> {
        let id = match self.config_read(bdf, regs::VENDOR_ID) {
            Ok(v) if v != u32::MAX && v != 0 => v,
            Ok(_) | Err(HostError::Request(RequestError::Timeout)) => {
                return Err(HostError::NoDevice(bdf))
            }
            Err(HostError::Request(RequestError::Status(CompletionStatus::UnsupportedRequest))) => {
                return Err(HostError::NoDevice(bdf))
            }
            Err(e) => return Err(e),
        };
        let class = self.config_read(bdf, regs::REVISION)?;
        let header = self.config_read(bdf, regs::dword(regs::HEADER_TYPE))?;
        if regs::byte_in(header, regs::HEADER_TYPE) & header_type::LAYOUT != header_type::ENDPOINT {
            return Err(HostError::NotAnEndpoint(bdf));
        }
        // Decoding off while the BARs move.
        let cmd = self.config_read(bdf, regs::COMMAND)? & 0xffff;
        let decode = u32::from(command::DECODE);
        self.config_write_be(bdf, regs::COMMAND, cmd & !decode, 0x3)?;
        let mut bars = Vec::new();
        let mut i = 0;
        while let Some(reg) = regs::bar(i) {
            let old = self.config_read(bdf, reg)?;
            self.config_write(bdf, reg, u32::MAX)?;
            let probe = self.config_read(bdf, reg)?;
            let kind = BarKind::of(probe);
            if probe == 0 || kind == BarKind::Io {
                // Not implemented, or I/O space (not assigned by this host).
                self.config_write(bdf, reg, old)?;
                i += 1;
                continue;
            }
            let is_64bit = kind == BarKind::Memory64;
            let step = if is_64bit { 2 } else { 1 };
            let mut mask = (probe & !kind.flags_mask()) as u64;
            if is_64bit {
                self.config_write(bdf, reg + 4, u32::MAX)?;
                mask |= (self.config_read(bdf, reg + 4)? as u64) << 32;
            } else {
                mask |= 0xffff_ffff_0000_0000;
            }
            let size = (!mask).wrapping_add(1);
            if size == 0 || !size.is_power_of_two() {
                self.config_write(bdf, reg, old)?;
                i += step;
                continue;
            }
            let addr = match cursor.assign(bdf, i, size, is_64bit) {
                Ok(a) => a,
                Err(e) => {
                    self.config_write(bdf, reg, old)?;
                    return Err(e);
                }
            };
            self.config_write(bdf, reg, addr as u32)?;
            if is_64bit {
                self.config_write(bdf, reg + 4, (addr >> 32) as u32)?;
            }
            bars.push(BarInfo {
                index: i,
                address: addr,
                size,
                is_64bit,
                prefetchable: probe & regs::bar::PREFETCHABLE != 0,
            });
            i += step;
        }
        // Capabilities: the first of each kind, as a driver finds it.
        let (mut msi, mut msix, mut pcie) = (None, None, None);
        for cap in Capabilities::new(|off| self.config_read(bdf, off)) {
            let cap = cap?;
            let slot = match cap.kind() {
                Some(CapabilityId::Msi) => &mut msi,
                Some(CapabilityId::MsiX) => &mut msix,
                Some(CapabilityId::PciExpress) => &mut pcie,
                _ => continue,
            };
            slot.get_or_insert(cap);
        }
        if let Some(pc) = pcie {
            // Max Payload Size: the smaller of ours and the device's. Extended Tag
            // Field Enable where the device supports it, as Linux's
            // pci_configure_extended_tags does (the bridge completes 8-bit tags, as
            // every completer must): without it a requester may use only 32 tags.
            let pc = pc.offset;
            let devcap = self.config_read(bdf, pc + pcie::DEVICE_CAPABILITIES)?;
            let ours = (self.bridge_mps() / 128).trailing_zeros();
            let mps = (devcap & pcie::devcap::MAX_PAYLOAD).min(ours);
            let extended_tags = if devcap & pcie::devcap::EXTENDED_TAG != 0 {
                u32::from(pcie::devctl::EXTENDED_TAG)
            } else {
                0
            };
            let ctl_reg = pc + pcie::DEVICE_CONTROL;
            let ctl = self.config_read(bdf, ctl_reg)? & 0xffff;
            let clear = u32::from(pcie::devctl::MAX_PAYLOAD | pcie::devctl::INITIATE_FLR);
            let ctl = ctl & !clear | mps << pcie::devctl::MAX_PAYLOAD_SHIFT | extended_tags;
            self.config_write_be(bdf, ctl_reg, ctl, 0x3)?;
        }
        let mut info = DeviceInfo {
            bdf,
            vendor: regs::word_in(id, regs::VENDOR_ID),
            device: regs::word_in(id, regs::DEVICE_ID),
            class: ((class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8),
            revision: regs::byte_in(class, regs::REVISION),
            bars,
            irq: IrqMode::None,
        };
        let mut cmd_bits = u32::from(command::MEMORY | command::BUS_MASTER);
        self.devices.retain(|d| d.bdf != bdf);
        self.devices.push(info.clone());
        if let Some(x) = msix {
            let ctl = self.config_read(bdf, x.offset)?;
            let vectors = msix::vectors(regs::word_in(ctl, msix::CONTROL));
            let table = self.config_read(bdf, x.offset + msix::TABLE)?;
            let bir = (table & msix::BIR_MASK) as usize;
            let off = (table & !msix::BIR_MASK) as u64;
            // Decode on to write the table (it lives in a BAR).
            self.config_write_be(bdf, regs::COMMAND, command::MEMORY.into(), 0x3)?;
            for v in 0..vectors {
                let data = self.route(bdf, v)?;
                let e = off + v as u64 * msix::ENTRY_SIZE;
                self.bar_write32(bdf, bir, e + msix::ENTRY_ADDRESS_LO, MSI_ADDRESS as u32)?;
                self.bar_write32(bdf, bir, e + msix::ENTRY_ADDRESS_HI, 0)?;
                self.bar_write32(bdf, bir, e + msix::ENTRY_DATA, data)?;
                self.bar_write32(bdf, bir, e + msix::ENTRY_VECTOR_CONTROL, 0)?;
            }
            let enable = u32::from(msix::control::ENABLE) << 16;
            self.config_write(bdf, x.offset, (ctl & 0xffff) | enable)?;
            info.irq = IrqMode::MsiX { vectors };
            cmd_bits |= u32::from(command::INTX_DISABLE);
        } else if let Some(m) = msi {
            self.set_msi(bdf, m.offset, true)?;
            info.irq = IrqMode::Msi { vectors: 1 };
            cmd_bits |= u32::from(command::INTX_DISABLE);
        } else {
            let line = self.config_read(bdf, regs::dword(regs::INTERRUPT_PIN))?;
            info.irq = match regs::byte_in(line, regs::INTERRUPT_PIN) {
                1 => IrqMode::Intx(IntxPin::A),
                2 => IrqMode::Intx(IntxPin::B),
                3 => IrqMode::Intx(IntxPin::C),
                4 => IrqMode::Intx(IntxPin::D),
                _ => IrqMode::None,
            };
        }
        self.config_write_be(bdf, regs::COMMAND, cmd & !decode | cmd_bits, 0x3)?;
        self.devices.retain(|d| d.bdf != bdf);
        self.devices.push(info.clone());
        Ok(info)
    }

    fn bridge_mps(&self) -> u32 {
        self.bridge.config().max_payload.bytes() as u32
    }

    /// On: points the MSI capability at `cap` of `bdf` at the bridge (one vector,
    /// MME = 0, routed as vector 0) and enables MSI; off: only clears MSI Enable.
    /// Enumeration does this for devices without MSI-X; a front-end that lets its VMM
    /// choose calls it on demand.
    pub fn set_msi(&mut self, bdf: Bdf, cap: u16, enabled: bool) -> Result<(), HostError> {
        // Message Control is the upper half of the capability's first dword.
        let ctl = self.config_read(bdf, cap)?;
        let control = regs::word_in(ctl, msi::CONTROL);
        let enable = u32::from(msi::control::ENABLE) << 16;
        if !enabled {
            // Off: the address and data do not matter.
            return self.config_write(bdf, cap, ctl & !enable);
        }
        let data = self.route(bdf, 0)?;
        self.config_write(bdf, cap + msi::ADDRESS_LO, MSI_ADDRESS as u32)?;
        if control & msi::control::ADDRESS_64 != 0 {
            self.config_write(bdf, cap + msi::ADDRESS_HI, 0)?;
        }
        self.config_write_be(bdf, cap + msi::data(control), data, 0x3)?;
        // Enable, one vector (Multiple Message Enable 0).
        let mme = u32::from(msi::control::MULTIPLE_ENABLE) << 16;
        self.config_write(bdf, cap, ctl & !mme | enable)
    }

    /// The message data that reaches `vector` of `bdf`: the one it already has, or a
    /// new one: the next value from [`FIRST_MSI_DATA`] up that no route holds, so that
    /// after the 16-bit values wrap (devices come and go) no two routes share one.
    fn route(&mut self, bdf: Bdf, vector: u16) -> Result<u32, HostError> {
        if let Some(&data) = self.msi_data.get(&(bdf, vector)) {
            return Ok(data);
        }
        let values = (0x1_0000 - FIRST_MSI_DATA) as usize;
        if self.msi_routes.len() >= values {
            return Err(HostError::MsiFull(self.msi_routes.len()));
        }
        loop {
            let data = self.next_msi_data;
            self.next_msi_data = if data >= 0xffff {
                FIRST_MSI_DATA
            } else {
                data + 1
            };
            if let std::collections::hash_map::Entry::Vacant(e) = self.msi_routes.entry(data) {
                e.insert((bdf, vector));
                self.msi_data.insert((bdf, vector), data);
                return Ok(data);
            }
        }
    }

    /// Forgets a device (hot-remove): its MSI routes, its queued interrupts (counted
    /// in `stats().interrupts_cleared`; a device enumerated at the same address later
    /// must not inherit them) and its BAR space (not reused).
    pub fn remove(&mut self, bdf: Bdf) {
        self.devices.retain(|d| d.bdf != bdf);
        self.msi_routes.retain(|_, (d, _)| *d != bdf);
        self.msi_data.retain(|(d, _), _| *d != bdf);
        self.stats.interrupts_cleared += self.interrupts.clear(bdf) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link that carries nothing (the routes under test need no device).
    struct Nowhere;

    impl Link for Nowhere {
        fn send(&mut self, _: &[u8]) -> Result<(), LinkFull> {
            Ok(())
        }
        fn recv(&mut self, _: Duration) -> Option<Vec<u8>> {
            None
        }
    }

    fn host() -> Host<Nowhere> {
        Host::new(
            BridgeConfig::default(),
            MemoryMap::new(),
            (0, 0),
            BarWindows::default(),
            Nowhere,
        )
    }

    /// A device that stays keeps its MSI data while another comes and goes past the
    /// 16-bit wrap of the values: no value is handed out twice, none below the first.
    #[test]
    fn msi_data_values_are_never_shared_after_they_wrap() {
        let mut h = host();
        let stays = Bdf::new(3, 0, 0).unwrap();
        let churns = Bdf::new(4, 0, 0).unwrap();
        let kept: Vec<u32> = (0..4).map(|v| h.route(stays, v).unwrap()).collect();
        for _ in 0..3 * 0x1_0000 / 8 {
            for v in 0..8 {
                let d = h.route(churns, v).unwrap();
                assert!(!kept.contains(&d), "data {d:#x} given twice");
                assert!((FIRST_MSI_DATA..=0xffff).contains(&d), "{d:#x}");
            }
            h.remove(churns);
        }
        for (v, d) in kept.iter().enumerate() {
            assert_eq!(h.msi_routes.get(d), Some(&(stays, v as u16)));
        }
    }

    /// When every value is taken, a new route is refused rather than shared.
    #[test]
    fn a_full_route_table_refuses() {
        let mut h = host();
        let values = 0x1_0000 - FIRST_MSI_DATA;
        for i in 0..values {
            let bdf = Bdf::from_u16((i / 2048) as u16 + 0x100);
            h.route(bdf, (i % 2048) as u16).unwrap();
        }
        assert_eq!(
            h.route(Bdf::new(9, 9, 0).unwrap(), 0),
            Err(HostError::MsiFull(values as usize))
        );
    }
}
