//! The endpoint framework: one PCIe function as a sans-IO state machine. TLPs from the
//! host go in ([`Function::handle_tlp`]), TLPs for the host come out
//! ([`Function::poll_transmit`]), time is passed in. In between, the framework answers
//! configuration requests from its [`ConfigSpace`], decodes memory requests to BARs
//! and hands them to the [`Device`] model, serves the MSI-X table itself, and turns
//! what the model asks for (DMA, interrupts) into TLPs: reads split at Max Read Request
//! Size with a tag each (8-bit tags when Device Control's Extended Tag Field Enable is
//! set as the transfer starts, else 5-bit: PCIe Base Specification §2.2.6.2) and
//! reassembled from their completions, writes split at Max Payload Size, MSI and MSI-X
//! as memory writes, INTx as Assert/Deassert messages.
//!
//! Nothing the host sends can make it panic: malformed TLPs are counted and dropped,
//! requests it cannot serve get an Unsupported Request completion (non-posted) or are
//! dropped and counted (posted).

use std::collections::VecDeque;

use thiserror::Error;
use tlp::{
    enabled_runs, for_each_read_completion, for_each_write, split_requests, Bdf, Completion,
    CompletionStatus, ConfigRequest, Header, IntxPin, MaxSize, MemRead, MemWrite, Message, Rcb,
    ReadReassembly, RequestChunk, Tag, TagTable, TagWidth, Tlp, UrAnswer,
};

use crate::config::{reg, ConfigEffects, ConfigSpace};

/// Identifies a DMA read the device started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DmaError {
    #[error("bus mastering is disabled")]
    BusMasterDisabled,
    #[error("DMA of {0} bytes: at most 1 MiB per request")]
    TooLong(usize),
    #[error("address range overflows")]
    AddressOverflow,
    #[error("the host answered {0:?}")]
    Status(CompletionStatus),
    #[error("malformed completion")]
    BadCompletion,
    #[error("no completion within the timeout")]
    Timeout,
}

/// Largest DMA transfer one call may ask for.
pub const MAX_DMA: usize = 1 << 20;

/// What a device model can ask of the framework while it handles an access.
pub trait DeviceIo {
    /// Starts a DMA read of `len` bytes at host address `addr`; the data arrives later
    /// through [`Device::dma_read_done`].
    fn dma_read(&mut self, addr: u64, len: usize) -> Result<DmaId, DmaError>;
    /// Writes `data` to host address `addr` (posted: nothing comes back; later writes
    /// and interrupts arrive after it, as PCIe orders posted requests).
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaError>;
    /// Signals MSI or MSI-X vector `vector` (whichever is enabled; MSI-X wins), or
    /// INTx when neither is. Returns whether anything was sent now (a masked MSI-X
    /// vector is remembered as pending and sent on unmask).
    fn interrupt(&mut self, vector: u16) -> bool;
    /// Sets the level of the INTx line (sent as Assert/Deassert_INTx on changes).
    fn set_intx(&mut self, asserted: bool);
    /// Whether software enabled MSI-X (then [`DeviceIo::interrupt`] sends MSI-X).
    fn msix_enabled(&self) -> bool;
    /// The time passed to the framework with the event being handled, in µs.
    fn now(&self) -> u64;
}

/// A PCIe device model.
pub trait Device {
    /// Reads `data.len()` bytes at `offset` in BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8], io: &mut dyn DeviceIo);
    /// Writes `data` at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8], io: &mut dyn DeviceIo);
    /// A DMA read started with [`DeviceIo::dma_read`] finished.
    fn dma_read_done(
        &mut self,
        id: DmaId,
        result: Result<Vec<u8>, DmaError>,
        io: &mut dyn DeviceIo,
    );
    /// A function-level reset or a reset from the host: back to the power-on state.
    fn reset(&mut self);
    /// Work the model does on its own rather than for a TLP (timed work, frames its
    /// backend received): called by [`Function::handle_timeout`] and by
    /// [`Function::poll_device`], which the box calls every round of its loop. Must be
    /// cheap when there is nothing to do.
    fn poll(&mut self, _io: &mut dyn DeviceIo) {}
    /// Descriptors whose readiness brings the model work of its own (its backend's
    /// socket): the box's loop sleeps on them along with its port's.
    fn wait_fds(&self, _out: &mut Vec<std::os::fd::RawFd>) {}
    /// Whether the model has work waiting on something no descriptor signals (a
    /// backend that would block on send): the box should poll it again soon rather
    /// than sleep until its descriptors or its port wake it.
    fn poll_soon(&self) -> bool {
        false
    }
    /// The box says the device is leaving its host (or is back): a model whose driver
    /// should hear of it ahead (a NIC's link goes down) tells it now.
    fn set_leaving(&mut self, _leaving: bool, _io: &mut dyn DeviceIo) {}
    /// The model's own counters, by name (for `tether ctl stats`).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Counters of a function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FunctionStats {
    pub config_reads: u64,
    pub config_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Unsupported Requests: non-posted requests answered with an Unsupported Request
    /// completion, and the posted ones the codec refuses as unsupported (a message with
    /// reserved routing, a MWr with AT = 11b), dropped.
    pub unsupported: u64,
    /// Posted writes to no BAR (or with memory decoding off), dropped.
    pub dropped_writes: u64,
    /// Malformed TLPs (`ParseError::is_malformed`), dropped and never answered.
    pub malformed: u64,
    pub dma_reads: u64,
    pub dma_read_bytes: u64,
    pub dma_writes: u64,
    pub dma_write_bytes: u64,
    pub dma_errors: u64,
    /// Completions for no outstanding tag (late after a timeout, or bogus).
    pub unexpected_completions: u64,
    pub completion_timeouts: u64,
    pub interrupts: u64,
    /// Interrupts not sent: masked (MSI-X: kept pending), or all disabled.
    pub interrupts_blocked: u64,
    pub resets: u64,
}

/// Settings of a function.
#[derive(Clone, Copy, Debug)]
pub struct FunctionConfig {
    /// Completion timeout for DMA reads, µs, counted from the last completion of the
    /// transfer. Default 1 s: PCIe's default range (50 µs..50 ms) is for a link that
    /// does not lose packets; over Ethernet a read may wait for the transport's
    /// retransmissions (PCIe's ranges go up to 64 s).
    pub completion_timeout_us: u64,
    /// Read Completion Boundary the host uses.
    pub rcb: Rcb,
}

impl Default for FunctionConfig {
    fn default() -> FunctionConfig {
        FunctionConfig {
            completion_timeout_us: 1_000_000,
            rcb: Rcb::B64,
        }
    }
}

/// One read request on the wire: its tag's reassembly into the DMA's buffer.
struct PendingRead {
    dma: DmaId,
    offset: usize,
    reassembly: ReadReassembly,
}

struct DmaRead {
    id: DmaId,
    data: Vec<u8>,
    outstanding: usize,
    deadline: u64,
    error: Option<DmaError>,
}

/// A read request not sent yet, with the tag width of its transfer.
#[derive(Clone, Copy)]
struct QueuedRead {
    dma: DmaId,
    width: TagWidth,
    chunk: RequestChunk,
}

/// The framework's state besides the model, so the model can borrow it as `DeviceIo`.
struct Core {
    config: ConfigSpace,
    settings: FunctionConfig,
    bdf: Bdf,
    now: u64,
    out: VecDeque<Vec<u8>>,
    /// Buffers of TLPs sent, for the next ones ([`Function::recycle`]).
    spare: tlp::Buffers,
    /// The function's outstanding read requests, on tags of `tag_width`.
    tags: TagTable<PendingRead>,
    /// The width `tags` was made for: the one of the transfers whose requests are out.
    tag_width: TagWidth,
    reads: Vec<DmaRead>,
    /// Read requests waiting for a free tag.
    queue: VecDeque<QueuedRead>,
    next_dma: u64,
    finished: VecDeque<(DmaId, Result<Vec<u8>, DmaError>)>,
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<bool>,
    intx: bool,
    stats: FunctionStats,
}

/// The UR completion for a configuration request (Byte Count 4, PCIe §2.2.9).
fn config_ur(r: &ConfigRequest) -> UrAnswer {
    UrAnswer {
        requester: r.requester,
        tag: r.tag,
        byte_count: 4,
    }
}

/// A PCIe function: the framework around one device model.
pub struct Function<D: Device> {
    core: Core,
    device: D,
}

fn emit(out: &mut VecDeque<Vec<u8>>, spare: &mut tlp::Buffers, tlp: &Tlp) {
    // Every TLP built here is valid by construction; a failure is a bug.
    match spare.encode(tlp) {
        Ok(b) => out.push_back(b),
        Err(e) => debug_assert!(false, "emitting {tlp:?}: {e}"),
    }
}

impl Core {
    fn completion(
        &mut self,
        req: (Bdf, Tag),
        status: CompletionStatus,
        byte_count: u16,
        la: u8,
        data: &[u8],
    ) {
        let cpl = Completion {
            completer: self.bdf,
            status,
            bcm: false,
            byte_count,
            requester: req.0,
            tag: req.1,
            lower_address: la,
            locked: false,
        };
        emit(
            &mut self.out,
            &mut self.spare,
            &Tlp::new(Header::Completion(cpl), data),
        );
    }

    /// Counts an Unsupported Request and answers it with a UR completion, when it is
    /// non-posted (`answer` is `Some`).
    fn unsupported(&mut self, answer: Option<UrAnswer>) {
        self.stats.unsupported += 1;
        if let Some(a) = answer {
            self.completion(
                (a.requester, a.tag),
                CompletionStatus::UnsupportedRequest,
                a.byte_count,
                0,
                &[],
            );
        }
    }

    /// When a transfer waiting from now on times out: a completion timeout from now,
    /// or the end of the clock when that is nearer (never a wrapped time in the past).
    fn deadline(&self) -> u64 {
        self.now.saturating_add(self.settings.completion_timeout_us)
    }

    fn sizes(&self) -> (MaxSize, MaxSize) {
        let (mps, mrrs) = self.config.max_payload_and_read();
        (
            MaxSize::new(mps as u16).unwrap_or(MaxSize::B128),
            MaxSize::new(mrrs as u16).unwrap_or(MaxSize::B512),
        )
    }

    /// Sends queued read requests while tags are free (a transfer larger than the
    /// tags times MRRS goes out as completions come back, like a DMA engine's).
    ///
    /// A transfer uses the tag width in force when it started. One started under the
    /// other width waits until every request of the old width is back, then the
    /// table is remade for its width: tags of two widths are never out together, so
    /// with Extended Tag Field Enable clear at most 32 requests are out, on tags
    /// 0..=31. (Software changing the bit with requests outstanding is undefined
    /// behaviour under the specification; this is what the function does then.)
    fn issue(&mut self) {
        while let Some(&QueuedRead {
            dma: id,
            width,
            chunk: c,
        }) = self.queue.front()
        {
            if width != self.tag_width {
                if !self.tags.is_empty() {
                    return;
                }
                self.tags = TagTable::new(width);
                self.tag_width = width;
            }
            let Ok(slot) = self.tags.vacant() else { return };
            self.queue.pop_front();
            let read = MemRead {
                requester: self.bdf,
                tag: slot.tag(),
                address: c.span.dw_address,
                length_dw: c.span.length_dw,
                first_be: c.span.first_be,
                last_be: c.span.last_be,
                locked: false,
                hint: None,
            };
            slot.insert(PendingRead {
                dma: id,
                offset: c.offset,
                reassembly: ReadReassembly::new(&read, self.settings.rcb),
            });
            emit(
                &mut self.out,
                &mut self.spare,
                &Tlp::new(Header::MemRead(read), &[]),
            );
        }
    }

    fn send_msi(&mut self, addr: u64, data: u32) {
        let payload = data.to_le_bytes();
        let w = MemWrite {
            requester: self.bdf,
            tag: Tag::wrapping(0),
            address: addr,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        };
        emit(
            &mut self.out,
            &mut self.spare,
            &Tlp::new(Header::MemWrite(w), &payload),
        );
        self.stats.interrupts += 1;
    }

    fn msix_vector_masked(&self, v: usize) -> bool {
        self.msix_table.get(v).is_none_or(|e| e[3] & 1 != 0)
    }

    /// Sends pending MSI-X vectors that are no longer masked.
    fn flush_msix_pending(&mut self) {
        let Some((true, false)) = self.config.msix_control() else {
            return;
        };
        for v in 0..self.msix_pending.len() {
            if self.msix_pending[v] && !self.msix_vector_masked(v) {
                self.msix_pending[v] = false;
                let e = self.msix_table[v];
                self.send_msi(e[0] as u64 | (e[1] as u64) << 32, e[2]);
            }
        }
    }

    fn finish_read(&mut self, i: usize) {
        let r = self.reads.swap_remove(i);
        let result = match r.error {
            Some(e) => {
                self.stats.dma_errors += 1;
                Err(e)
            }
            None => Ok(r.data),
        };
        self.finished.push_back((r.id, result));
    }
}

impl DeviceIo for Core {
    fn dma_read(&mut self, addr: u64, len: usize) -> Result<DmaId, DmaError> {
        if !self.config.bus_master() {
            return Err(DmaError::BusMasterDisabled);
        }
        if len == 0 || len > MAX_DMA {
            return Err(DmaError::TooLong(len));
        }
        let (_, mrrs) = self.sizes();
        let chunks = split_requests(addr, len, mrrs).map_err(|_| DmaError::AddressOverflow)?;
        let id = DmaId(self.next_dma);
        self.next_dma += 1;
        let width = self.config.tag_width();
        let before = self.queue.len();
        self.queue.extend(chunks.map(|chunk| QueuedRead {
            dma: id,
            width,
            chunk,
        }));
        self.reads.push(DmaRead {
            id,
            data: vec![0; len],
            outstanding: self.queue.len() - before,
            deadline: self.deadline(),
            error: None,
        });
        self.stats.dma_reads += 1;
        self.issue();
        Ok(id)
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        if !self.config.bus_master() {
            return Err(DmaError::BusMasterDisabled);
        }
        if data.is_empty() || data.len() > MAX_DMA {
            return Err(DmaError::TooLong(data.len()));
        }
        let (mps, _) = self.sizes();
        let (out, spare) = (&mut self.out, &mut self.spare);
        for_each_write(self.bdf, addr, data, mps, |w, payload| {
            emit(out, spare, &Tlp::new(Header::MemWrite(w), payload))
        })
        .map_err(|_| DmaError::AddressOverflow)?;
        self.stats.dma_writes += 1;
        self.stats.dma_write_bytes += data.len() as u64;
        Ok(())
    }

    fn interrupt(&mut self, vector: u16) -> bool {
        let v = vector as usize;
        if let Some((enabled, function_mask)) = self.config.msix_control() {
            if enabled {
                if v >= self.msix_table.len() {
                    self.stats.interrupts_blocked += 1;
                    return false;
                }
                if function_mask || self.msix_vector_masked(v) {
                    self.msix_pending[v] = true;
                    self.stats.interrupts_blocked += 1;
                    return false;
                }
                let e = self.msix_table[v];
                self.send_msi(e[0] as u64 | (e[1] as u64) << 32, e[2]);
                return true;
            }
        }
        if let Some((addr, data, vectors)) = self.config.msi() {
            if v >= vectors as usize || self.config.msi_masked(vector as u8) {
                self.stats.interrupts_blocked += 1;
                return false;
            }
            // Multiple Message: the vector goes in the low bits of the data.
            let data = data & !(vectors as u16 - 1) | vector;
            self.send_msi(addr, data as u32);
            return true;
        }
        if self.config.read8(reg::INTERRUPT_PIN) != 0 && !self.config.intx_disabled() {
            // Edge-like use of a level interrupt: assert; the model deasserts.
            self.set_intx(true);
            return true;
        }
        self.stats.interrupts_blocked += 1;
        false
    }

    fn set_intx(&mut self, asserted: bool) {
        self.config.set_interrupt_status(asserted);
        let pin = match self.config.read8(reg::INTERRUPT_PIN) {
            1 => IntxPin::A,
            2 => IntxPin::B,
            3 => IntxPin::C,
            4 => IntxPin::D,
            _ => return,
        };
        // The message follows the level, gated by INTx Disable (a disabled line that
        // was asserted is deasserted).
        let line = asserted && !self.config.intx_disabled();
        if line != self.intx {
            self.intx = line;
            let m = Message::intx(self.bdf, pin, line);
            emit(
                &mut self.out,
                &mut self.spare,
                &Tlp::new(Header::Message(m), &[]),
            );
            if line {
                self.stats.interrupts += 1;
            }
        }
    }

    fn msix_enabled(&self) -> bool {
        self.config
            .msix_control()
            .is_some_and(|(enabled, _)| enabled)
    }

    fn now(&self) -> u64 {
        self.now
    }
}

impl<D: Device> Function<D> {
    pub fn new(config: ConfigSpace, device: D, settings: FunctionConfig) -> Function<D> {
        let vectors = config.msix_layout().map_or(0, |m| m.vectors as usize);
        let tag_width = config.tag_width();
        Function {
            core: Core {
                config,
                settings,
                bdf: Bdf::from_u16(0),
                now: 0,
                out: VecDeque::new(),
                // 64 of at most the largest TLP (a 4DW header, 4 KiB, a digest).
                spare: tlp::Buffers::new(64, 16 + 4096 + 4),
                tags: TagTable::new(tag_width),
                tag_width,
                reads: Vec::new(),
                queue: VecDeque::new(),
                next_dma: 0,
                finished: VecDeque::new(),
                msix_table: vec![[0, 0, 0, 1]; vectors],
                msix_pending: vec![false; vectors],
                intx: false,
                stats: FunctionStats::default(),
            },
            device,
        }
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.core.config
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The Requester ID the function uses (captured from the host's config writes).
    pub fn bdf(&self) -> Bdf {
        self.core.bdf
    }

    pub fn stats(&self) -> FunctionStats {
        self.core.stats
    }

    /// The next TLP for the host.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.out.pop_front()
    }

    /// Gives back a buffer [`Function::poll_transmit`] returned, once sent, for the
    /// function's next TLPs (so that steady traffic allocates nothing per TLP).
    /// Optional.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.core.spare.give(buf);
    }

    /// Lets the model do work of its own at `now` ([`Device::poll`]): the box calls
    /// this every round.
    pub fn poll_device(&mut self, now: u64) {
        self.core.now = now;
        self.device.poll(&mut self.core);
        self.deliver_finished();
    }

    /// Whether the model wants to be polled again soon ([`Device::poll_soon`]).
    pub fn poll_soon(&self) -> bool {
        self.device.poll_soon()
    }

    /// Tells the model at `now` that its device is leaving its host, or is back
    /// ([`Device::set_leaving`]).
    pub fn set_leaving(&mut self, now: u64, leaving: bool) {
        self.core.now = now;
        self.device.set_leaving(leaving, &mut self.core);
        self.deliver_finished();
    }

    /// Descriptors whose readiness brings the model work ([`Device::wait_fds`]).
    pub fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) {
        self.device.wait_fds(out)
    }

    /// When `handle_timeout` must be called next (µs), if a DMA read is outstanding.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.core.reads.iter().map(|r| r.deadline).min()
    }

    /// Fails DMA reads whose completions did not all arrive in time, and lets the model
    /// do timed work.
    pub fn handle_timeout(&mut self, now: u64) {
        self.core.now = now;
        let mut i = 0;
        while i < self.core.reads.len() {
            if self.core.reads[i].deadline <= now {
                let id = self.core.reads[i].id;
                // The transfer's requests on the wire: their late completions find no
                // tag and are counted as unexpected.
                self.core.tags.take_where(|p| p.dma == id).for_each(drop);
                self.core.queue.retain(|q| q.dma != id);
                self.core.reads[i].error.get_or_insert(DmaError::Timeout);
                self.core.stats.completion_timeouts += 1;
                self.core.finish_read(i);
            } else {
                i += 1;
            }
        }
        // The tags the timeouts freed take what waited for them.
        self.core.issue();
        self.device.poll(&mut self.core);
        self.deliver_finished();
    }

    fn deliver_finished(&mut self) {
        while let Some((id, result)) = self.core.finished.pop_front() {
            if let Ok(d) = &result {
                self.core.stats.dma_read_bytes += d.len() as u64;
            }
            self.device.dma_read_done(id, result, &mut self.core);
        }
    }

    /// Takes one TLP from the host at time `now` (µs).
    pub fn handle_tlp(&mut self, now: u64, bytes: &[u8]) {
        match Tlp::parse(bytes) {
            Ok(tlp) => self.handle_parsed(now, &tlp),
            Err(e) if e.is_malformed() => self.core.stats.malformed += 1,
            Err(e) => self.core.unsupported(e.ur_answer()),
        }
    }

    /// Takes one TLP that the caller already parsed (to route it, say) at time `now`.
    pub fn handle_parsed(&mut self, now: u64, tlp: &Tlp) {
        self.core.now = now;
        match tlp.header {
            Header::ConfigRead(r) => self.config_read(r),
            Header::ConfigWrite(r) => self.config_write(r, tlp.payload),
            Header::MemRead(r) => self.mem_read(r),
            Header::MemWrite(w) => self.mem_write(w, tlp.payload),
            Header::Completion(c) => self.completion(c, tlp.payload),
            Header::IoRead(_) | Header::IoWrite(_) | Header::Atomic(_) => {
                self.core.unsupported(tlp.ur_answer())
            }
            // Messages to an endpoint (e.g. Set_Slot_Power_Limit) need no action here.
            Header::Message(_) => {}
        }
        self.deliver_finished();
    }

    fn config_read(&mut self, r: ConfigRequest) {
        let id = (r.requester, r.tag);
        if r.type1 {
            return self.core.unsupported(Some(config_ur(&r)));
        }
        self.core.stats.config_reads += 1;
        let v = self.core.config.read_dword(r.register as usize / 4);
        // Only the enabled bytes carry data; the rest read as zero.
        let mut mask = 0u32;
        for k in 0..4 {
            if r.first_be & (1 << k) != 0 {
                mask |= 0xff << (8 * k);
            }
        }
        self.core.completion(
            id,
            CompletionStatus::Success,
            4,
            0,
            &(v & mask).to_le_bytes(),
        );
    }

    fn config_write(&mut self, r: ConfigRequest, payload: &[u8]) {
        let id = (r.requester, r.tag);
        if r.type1 || payload.len() != 4 {
            return self.core.unsupported(Some(config_ur(&r)));
        }
        self.core.stats.config_writes += 1;
        // A type-0 configuration write tells the function its bus and device number.
        self.core.bdf = r.target;
        let value = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let effects = self
            .core
            .config
            .write_dword(r.register as usize / 4, value, r.first_be);
        self.apply(effects);
        self.core
            .completion(id, CompletionStatus::Success, 4, 0, &[]);
    }

    fn apply(&mut self, e: ConfigEffects) {
        if e.function_level_reset {
            self.reset();
            return;
        }
        if e.command_changed && self.core.config.intx_disabled() && self.core.intx {
            self.core.set_intx(false);
        }
        if e.interrupts_changed {
            self.core.flush_msix_pending();
        }
    }

    /// A function-level reset: config space, MSI-X table and the model back to their
    /// power-on state; outstanding DMA reads are dropped.
    pub fn reset(&mut self) {
        let c = &mut self.core;
        c.config.reset();
        // Outstanding reads are forgotten: the reset model started none of them, and
        // their late completions are counted as unexpected.
        c.tags.clear();
        c.reads.clear();
        c.queue.clear();
        c.finished.clear();
        c.msix_table.iter_mut().for_each(|e| *e = [0, 0, 0, 1]);
        c.msix_pending.iter_mut().for_each(|p| *p = false);
        c.intx = false;
        c.stats.resets += 1;
        self.device.reset();
    }

    /// The MSI-X table or PBA, when `(bar, offset)` falls in one: (is table, offset in it).
    fn msix_region(&self, bar: usize, offset: u64) -> Option<(bool, u64)> {
        let m = self.core.config.msix_layout()?;
        let table_len = m.vectors as u64 * 16;
        let pba_len = (m.vectors as u64).div_ceil(64) * 8;
        if bar == m.table_bar as usize
            && (m.table_offset as u64..m.table_offset as u64 + table_len).contains(&offset)
        {
            return Some((true, offset - m.table_offset as u64));
        }
        if bar == m.pba_bar as usize
            && (m.pba_offset as u64..m.pba_offset as u64 + pba_len).contains(&offset)
        {
            return Some((false, offset - m.pba_offset as u64));
        }
        None
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match self.msix_region(bar, offset) {
            Some((table, at)) => {
                for (k, b) in data.iter_mut().enumerate() {
                    let i = at as usize + k;
                    *b = if table {
                        self.core
                            .msix_table
                            .get(i / 16)
                            .map_or(0, |e| e[(i % 16) / 4].to_le_bytes()[i % 4])
                    } else {
                        let bit = |v: usize| {
                            self.core.msix_pending.get(v).copied().unwrap_or(false) as u8
                        };
                        (0..8).fold(0u8, |acc, j| acc | bit(i * 8 + j) << j)
                    };
                }
            }
            None => self.device.bar_read(bar, offset, data, &mut self.core),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match self.msix_region(bar, offset) {
            Some((true, at)) => {
                for (k, &b) in data.iter().enumerate() {
                    let i = at as usize + k;
                    if let Some(e) = self.core.msix_table.get_mut(i / 16) {
                        let mut word = e[(i % 16) / 4].to_le_bytes();
                        word[i % 4] = b;
                        e[(i % 16) / 4] = u32::from_le_bytes(word);
                    }
                }
                self.core.flush_msix_pending();
            }
            // The PBA is read-only.
            Some((false, _)) => {}
            None => self.device.bar_write(bar, offset, data, &mut self.core),
        }
    }

    fn mem_read(&mut self, r: MemRead) {
        let id = (r.requester, r.tag);
        let (first, count) = tlp::split::read_extent(&r);
        // Endpoints answer locked reads with UR; unmapped addresses likewise.
        let decoded = if r.locked {
            None
        } else {
            self.core.config.decode_memory(r.address)
        };
        let refuse = UrAnswer {
            requester: r.requester,
            tag: r.tag,
            byte_count: count as u16,
        };
        let Some((bar, offset)) = decoded else {
            return self.core.unsupported(Some(refuse));
        };
        let span = r.length_dw as usize * 4;
        if self.core.config.decode_memory(r.address + span as u64 - 1)
            != Some((bar, offset + span as u64 - 1))
        {
            return self.core.unsupported(Some(refuse));
        }
        self.core.stats.mmio_reads += 1;
        // Read only the enabled bytes (reads can have side effects); the rest are 0.
        let mut data = vec![0u8; span];
        enabled_runs(r.length_dw, r.first_be, r.last_be, |at, len| {
            self.bar_read(bar, offset + at as u64, &mut data[at..at + len]);
        });
        let lead = (first - r.address) as usize;
        let (mps, _) = self.core.sizes();
        let core = &mut self.core;
        for_each_read_completion(&r, &data[lead..], core.settings.rcb, mps, |c, payload| {
            core.completion(
                id,
                CompletionStatus::Success,
                c.byte_count,
                c.lower_address,
                payload,
            )
        });
    }

    fn mem_write(&mut self, w: MemWrite, payload: &[u8]) {
        let Some((bar, offset)) = self.core.config.decode_memory(w.address) else {
            self.core.stats.dropped_writes += 1;
            return;
        };
        let end = w.address + payload.len() as u64 - 1;
        if self.core.config.decode_memory(end) != Some((bar, offset + payload.len() as u64 - 1)) {
            self.core.stats.dropped_writes += 1;
            return;
        }
        self.core.stats.mmio_writes += 1;
        let length_dw = (payload.len() / 4) as u16;
        enabled_runs(length_dw, w.first_be, w.last_be, |at, len| {
            self.bar_write(bar, offset + at as u64, &payload[at..at + len]);
        });
    }

    fn completion(&mut self, c: Completion, payload: &[u8]) {
        let deadline = self.core.deadline();
        // A tag with nothing outstanding (late after a timeout or a reset, or bogus)
        // finds nothing.
        let Some(p) = self.core.tags.get_mut(c.tag) else {
            self.core.stats.unexpected_completions += 1;
            return;
        };
        let dma = p.dma;
        let Some(ri) = self.core.reads.iter().position(|r| r.id == dma) else {
            self.core.tags.take(c.tag);
            self.core.stats.unexpected_completions += 1;
            return;
        };
        let offset = p.offset;
        let r = &mut self.core.reads[ri];
        // The timeout runs from the last sign of progress.
        r.deadline = deadline;
        let total = p.reassembly.total() as usize;
        let out = &mut r.data[offset..offset + total];
        let done = match p.reassembly.accept(&c, payload, out) {
            Ok(tlp::Progress::Complete) => true,
            Ok(tlp::Progress::Partial { .. }) => false,
            Err(tlp::ReassemblyError::Status(s)) => {
                r.error.get_or_insert(DmaError::Status(s));
                true
            }
            Err(_) => {
                // A completion that does not fit its request: the request is over
                // (its remaining data can no longer be trusted).
                r.error.get_or_insert(DmaError::BadCompletion);
                true
            }
        };
        if done {
            self.core.tags.take(c.tag);
            r.outstanding -= 1;
            if r.error.is_some() {
                // A failed request ends the transfer: what is still queued of it is
                // never sent (requests already out still come back and are counted).
                let id = r.id;
                let before = self.core.queue.len();
                self.core.queue.retain(|q| q.dma != id);
                self.core.reads[ri].outstanding -= before - self.core.queue.len();
            }
            if self.core.reads[ri].outstanding == 0 {
                self.core.finish_read(ri);
            }
            self.core.issue();
        }
    }
}

/// A boxed model is a model, so a box can hold different device kinds side by side.
impl<T: Device + ?Sized> Device for Box<T> {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8], io: &mut dyn DeviceIo) {
        (**self).bar_read(bar, offset, data, io)
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8], io: &mut dyn DeviceIo) {
        (**self).bar_write(bar, offset, data, io)
    }
    fn dma_read_done(
        &mut self,
        id: DmaId,
        result: Result<Vec<u8>, DmaError>,
        io: &mut dyn DeviceIo,
    ) {
        (**self).dma_read_done(id, result, io)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn poll(&mut self, io: &mut dyn DeviceIo) {
        (**self).poll(io)
    }
    fn wait_fds(&self, out: &mut Vec<std::os::fd::RawFd>) {
        (**self).wait_fds(out)
    }
    fn set_leaving(&mut self, leaving: bool, io: &mut dyn DeviceIo) {
        (**self).set_leaving(leaving, io)
    }
    fn poll_soon(&self) -> bool {
        (**self).poll_soon()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        (**self).counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::command;

    /// A model that keeps the outcomes of the DMA reads the test starts.
    #[derive(Default)]
    struct Reader {
        done: Vec<(DmaId, Result<Vec<u8>, DmaError>)>,
    }

    impl Device for Reader {
        fn bar_read(&mut self, _: usize, _: u64, _: &mut [u8], _: &mut dyn DeviceIo) {}
        fn bar_write(&mut self, _: usize, _: u64, _: &[u8], _: &mut dyn DeviceIo) {}
        fn dma_read_done(
            &mut self,
            id: DmaId,
            result: Result<Vec<u8>, DmaError>,
            _: &mut dyn DeviceIo,
        ) {
            self.done.push((id, result));
        }
        fn reset(&mut self) {}
    }

    /// A function with bus mastering on and 8-bit tags enabled, as enumeration leaves
    /// it; MRRS is the default 512 bytes.
    fn function() -> Function<Reader> {
        pcie_function(true)
    }

    /// A function with a PCI Express capability (MRRS 512 bytes), bus mastering on,
    /// and Extended Tag Field Enable set or clear.
    fn pcie_function(extended_tags: bool) -> Function<Reader> {
        let config = ConfigSpace::builder(0x1af4, 0x10f0)
            .pcie(256)
            .build()
            .unwrap();
        let mut f = Function::new(config, Reader::default(), FunctionConfig::default());
        f.core
            .config
            .write(reg::COMMAND, &command::BUS_MASTER.to_le_bytes());
        set_extended_tags(&mut f, extended_tags);
        f
    }

    /// Sets or clears Extended Tag Field Enable with a config write, as a host does.
    fn set_extended_tags(f: &mut Function<Reader>, on: bool) {
        use pci::pcie::devctl::EXTENDED_TAG;
        let ctl = f.core.config.caps().pcie.unwrap() + usize::from(pci::pcie::DEVICE_CONTROL);
        let v = f.core.config.read16(ctl) & !EXTENDED_TAG | if on { EXTENDED_TAG } else { 0 };
        f.core.config.write(ctl, &v.to_le_bytes());
    }

    /// What a transfer looked like on the wire while the host answered it one request
    /// at a time, oldest first.
    #[derive(Debug, Default)]
    struct Drained {
        requests: usize,
        /// The most read requests outstanding at once.
        most_outstanding: usize,
        /// Every tag used.
        tags: std::collections::BTreeSet<u16>,
    }

    /// Answers the function's read requests, oldest first, until none is left.
    fn drain(f: &mut Function<Reader>, now: u64) -> Drained {
        let mut d = Drained::default();
        let mut out: VecDeque<MemRead> = VecDeque::new();
        loop {
            let sent = sent_reads(f);
            d.requests += sent.len();
            d.tags.extend(sent.iter().map(|r| r.tag.value()));
            out.extend(sent);
            d.most_outstanding = d.most_outstanding.max(out.len());
            let Some(r) = out.pop_front() else {
                return d;
            };
            complete(f, now, &r);
        }
    }

    /// Extended Tag Field Enable clear: a requester may use only 5-bit tags (PCIe Base
    /// Specification §2.2.6.2). A 1 MiB read (2048 requests of 512 bytes) then never
    /// has more than 32 requests out, on tags 0..=31, and still arrives whole.
    #[test]
    fn with_extended_tags_off_only_five_bit_tags_are_used() {
        let mut f = pcie_function(false);
        let base = 0x1_0000_0000u64;
        let id = f.core.dma_read(base, MAX_DMA).unwrap();
        let d = drain(&mut f, 1);
        assert_eq!(d.requests, MAX_DMA / 512);
        assert_eq!(d.most_outstanding, 32, "{d:?}");
        assert_eq!(d.tags, (0..32).collect(), "tags 0..=31 only");
        let (done, result) = f.device_mut().done.pop().unwrap();
        assert_eq!(done, id);
        let data = result.unwrap();
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, &b)| b == host_byte(base + i as u64)));
        assert_eq!(f.stats().unexpected_completions, 0);
    }

    /// Extended Tag Field Enable set: all 256 8-bit tags.
    #[test]
    fn with_extended_tags_on_all_eight_bit_tags_are_used() {
        let mut f = pcie_function(true);
        f.core.dma_read(0x1_0000_0000, MAX_DMA).unwrap();
        let d = drain(&mut f, 1);
        assert_eq!(d.requests, MAX_DMA / 512);
        assert_eq!(d.most_outstanding, 256);
        assert_eq!(d.tags, (0..256).collect());
        assert!(f.device_mut().done.pop().unwrap().1.is_ok());
    }

    /// The width is the one in force when a transfer starts. A transfer started after
    /// software cleared the bit goes out with 5-bit tags, once every request of the
    /// transfers before (on 8-bit tags) is back: the two widths never mix on the wire.
    #[test]
    fn a_transfer_takes_the_tag_width_in_force_when_it_starts() {
        let mut f = pcie_function(true);
        let wide = f.core.dma_read(0x1_0000_0000, 256 * 512).unwrap();
        let first = sent_reads(&mut f);
        assert_eq!(first.len(), 256);
        set_extended_tags(&mut f, false);
        let narrow = f.core.dma_read(0x2_0000_0000, 64 << 10).unwrap();
        assert!(sent_reads(&mut f).is_empty(), "8-bit tags still out");
        for (k, r) in first.iter().enumerate() {
            complete(&mut f, 1, r);
            let sent = sent_reads(&mut f);
            if k + 1 < first.len() {
                assert!(sent.is_empty(), "a 5-bit request beside 8-bit ones");
            } else {
                // The last 8-bit request is back: the narrow transfer starts.
                assert_eq!(sent.len(), 32);
                assert!(sent.iter().all(|r| r.tag.value() < 32));
                sent.iter().for_each(|r| complete(&mut f, 2, r));
            }
        }
        let d = drain(&mut f, 3);
        assert!(
            d.most_outstanding <= 32 && d.tags.iter().all(|&t| t < 32),
            "{d:?}"
        );
        let done: Vec<_> = f
            .device()
            .done
            .iter()
            .map(|(id, r)| (*id, r.is_ok()))
            .collect();
        assert_eq!(done, [(wide, true), (narrow, true)]);
    }

    /// The read requests the function sent since the last call.
    fn sent_reads(f: &mut Function<Reader>) -> Vec<MemRead> {
        std::iter::from_fn(|| f.poll_transmit())
            .map(|t| match Tlp::parse(&t).unwrap().header {
                Header::MemRead(r) => r,
                h => panic!("sent {h:?}"),
            })
            .collect()
    }

    /// The byte the host holds at `addr`.
    fn host_byte(addr: u64) -> u8 {
        (addr ^ addr >> 8 ^ addr >> 16) as u8
    }

    /// Answers `r` (one DW-aligned read of whole DWs) with one completion of its data.
    fn complete(f: &mut Function<Reader>, now: u64, r: &MemRead) {
        let len = r.length_dw as usize * 4;
        let data: Vec<u8> = (0..len as u64).map(|i| host_byte(r.address + i)).collect();
        let c = Completion {
            completer: Bdf::from_u16(0),
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: len as u16,
            requester: r.requester,
            tag: r.tag,
            lower_address: (r.address & 0x7f) as u8,
            locked: false,
        };
        let bytes = Tlp::new(Header::Completion(c), &data).to_vec().unwrap();
        f.handle_tlp(now, &bytes);
    }

    /// A 1 MiB read is 2048 requests of 512 bytes: 256 go out at once, one per tag, and
    /// each completion lets the next one out.
    #[test]
    fn a_read_larger_than_the_tags_goes_out_as_tags_come_back() {
        let mut f = function();
        let base = 0x1_0000_0000u64;
        let id = f.core.dma_read(base, MAX_DMA).unwrap();
        let mut out = sent_reads(&mut f);
        assert_eq!(out.len(), 256);
        let mut tags: Vec<u16> = out.iter().map(|r| r.tag.value()).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 256, "one tag each");
        let mut requests = out.len();
        while let Some(r) = out.pop() {
            complete(&mut f, 1, &r);
            // The one free tag is the one just freed: the next request goes out on it.
            let next = sent_reads(&mut f);
            let queued = requests < MAX_DMA / 512;
            assert_eq!(next.len(), queued as usize);
            assert!(next.iter().all(|n| n.tag == r.tag));
            requests += next.len();
            out.extend(next);
        }
        assert_eq!(requests, MAX_DMA / 512);
        let (done, result) = f.device_mut().done.pop().unwrap();
        assert_eq!(done, id);
        let data = result.unwrap();
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, &b)| b == host_byte(base + i as u64)));
        assert_eq!(f.stats().unexpected_completions, 0);
        assert!(f.core.tags.is_empty());
    }

    /// A transfer started near the end of the clock times out at its end, not at a
    /// deadline wrapped into the past (or an overflow panic); a completion that moves
    /// the deadline keeps it there.
    #[test]
    fn dma_deadlines_near_the_end_of_time_saturate() {
        let mut f = function();
        let late = u64::MAX - 10;
        f.handle_timeout(late);
        let id = f.core.dma_read(0x8000, 1024).unwrap();
        assert_eq!(f.poll_timeout(), Some(u64::MAX));
        let out = sent_reads(&mut f);
        assert_eq!(out.len(), 2);
        complete(&mut f, late + 1, &out[0]);
        assert_eq!(f.poll_timeout(), Some(u64::MAX));
        f.handle_timeout(late + 2);
        assert!(f.device().done.is_empty(), "not timed out early");
        f.handle_timeout(u64::MAX);
        assert_eq!(
            f.device_mut().done.pop(),
            Some((id, Err(DmaError::Timeout)))
        );
    }

    /// A transfer waiting for tags behind one that times out goes out when the timeout
    /// frees them, not only at the next completion (none may come: it would then time
    /// out without ever being sent). The same holds across a tag-width change.
    #[test]
    fn a_timeout_that_frees_tags_sends_what_waited_for_them() {
        for second_width_on in [true, false] {
            let mut f = pcie_function(true);
            let first = f.core.dma_read(0x1_0000_0000, 256 * 512).unwrap();
            assert_eq!(sent_reads(&mut f).len(), 256);
            set_extended_tags(&mut f, second_width_on);
            f.handle_timeout(10);
            let second = f.core.dma_read(0x2_0000_0000, 4096).unwrap();
            assert!(sent_reads(&mut f).is_empty(), "every tag is out");
            let deadline = f.poll_timeout().unwrap();
            f.handle_timeout(deadline);
            assert_eq!(
                f.device_mut().done.pop(),
                Some((first, Err(DmaError::Timeout)))
            );
            let out = sent_reads(&mut f);
            assert_eq!(out.len(), 8, "extended tags {second_width_on}");
            out.iter().for_each(|r| complete(&mut f, deadline + 1, r));
            assert_eq!(f.device().done.len(), 1);
            assert_eq!(f.device().done[0].0, second);
            assert!(f.device().done[0].1.is_ok());
        }
    }

    /// After a completion timeout or a reset, completions for the requests that were out
    /// find no tag: counted as unexpected, and the model hears nothing more.
    #[test]
    fn completions_after_a_timeout_or_a_reset_are_unexpected() {
        let mut f = function();
        let id = f.core.dma_read(0x8000, 2048).unwrap();
        let out = sent_reads(&mut f);
        assert_eq!(out.len(), 4);
        complete(&mut f, 10, &out[0]);
        let deadline = f.poll_timeout().unwrap();
        f.handle_timeout(deadline);
        assert_eq!(
            f.device_mut().done.pop(),
            Some((id, Err(DmaError::Timeout)))
        );
        for r in &out[1..] {
            complete(&mut f, deadline + 1, r);
        }
        assert_eq!(f.stats().unexpected_completions, 3);
        assert!(f.device().done.is_empty());
        assert!(f.core.tags.is_empty());

        f.core.dma_read(0x8000, 1024).unwrap();
        let out = sent_reads(&mut f);
        assert_eq!(out.len(), 2);
        f.reset();
        // The reset turned bus mastering off; the completions still arrive.
        for r in &out {
            complete(&mut f, deadline + 2, r);
        }
        assert_eq!(f.stats().unexpected_completions, 5);
        assert!(f.device().done.is_empty());
        assert_eq!(f.poll_timeout(), None);
    }
}
