//! The host bridge's TLP engine, sans-IO: requests go out with tags from an
//! outstanding-tag table and come back as events; device requests are served from
//! the memory map. Time (µs) is passed in.
//!
//! - Config and memory reads/writes from the host side: `config_read`,
//!   `config_write`, `mem_read`, `mem_write` (posted). A request's outcome arrives as
//!   [`Event::Completed`]; on completion timeout it fails with
//!   [`RequestError::Timeout`] and `stats().completion_timeouts` goes up.
//! - Device DMA: MRd inside the memory map is answered with CplD split at the RCB
//!   and MPS; outside it, with an Unsupported Request completion. MWr inside the map
//!   is written; outside, dropped. Both refusals are counted.
//! - Interrupts: a MWr into the MSI window (0xFEE0_0000..0xFEF0_0000) is an
//!   [`Event::Msi`]; Assert/Deassert_INTx messages are [`Event::Intx`].
//! - Bounded output: what the bridge has for the link waits in a queue until the user
//!   takes it ([`Bridge::peek_transmit`], [`Bridge::poll_transmit`]). Device requests
//!   that need an answer (reads, unsupported requests) are not served while that queue
//!   holds [`MAX_TX_BACKLOG`] bytes or more: they are dropped and counted
//!   (`answers_dropped`), and the device sees a completion timeout, so a device cannot
//!   make the host queue answers faster than the link takes them.

use std::collections::VecDeque;

use thiserror::Error;
use tlp::{
    enabled_runs, for_each_read_completion, for_each_write, split_requests, Bdf, Buffers,
    Completion, CompletionStatus, ConfigRequest, Header, IntxPin, MaxSize, MemRead, MemWrite, Rcb,
    ReadReassembly, Tag, TagTable, TagWidth, Tlp, UrAnswer,
};

use crate::memory::MemoryMap;

/// The MSI address window of x86 (Intel SDM: 0xFEEx_xxxx).
pub const MSI_WINDOW: std::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Bytes of TLPs waiting for the link beyond which device requests go unanswered.
/// A device that keeps its reads within its tags (256 reads of 4 KiB at most) never
/// meets it; only one that ignores them does.
pub const MAX_TX_BACKLOG: usize = 4 << 20;

/// Identifies a request of the host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("no completion within the timeout")]
    Timeout,
    #[error("the device answered {0:?}")]
    Status(CompletionStatus),
    #[error("the completion did not match the request")]
    BadCompletion,
    #[error("all tags are in use")]
    NoTags,
    #[error("a read of {0} bytes: 1 to 4096, within one 4 KiB page")]
    BadLength(usize),
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request ended: read data (config reads: 4 bytes), or empty for a write.
    Completed {
        id: RequestId,
        result: Result<Vec<u8>, RequestError>,
    },
    /// A device signalled MSI/MSI-X.
    Msi {
        source: Bdf,
        address: u64,
        data: u32,
    },
    Intx {
        source: Bdf,
        pin: IntxPin,
        asserted: bool,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BridgeStats {
    pub requests: u64,
    pub completion_timeouts: u64,
    pub error_completions: u64,
    pub unexpected_completions: u64,
    /// Malformed TLPs (`ParseError::is_malformed`): dropped, never answered.
    pub malformed: u64,
    pub dma_reads: u64,
    pub dma_read_bytes: u64,
    pub dma_writes: u64,
    pub dma_write_bytes: u64,
    /// Device reads outside the memory map, answered UR.
    pub dma_read_refused: u64,
    /// Device writes outside the memory map, dropped.
    pub dma_write_dropped: u64,
    pub msis: u64,
    pub intx_messages: u64,
    /// Messages other than INTx (PM, error, vendor messages): not acted on.
    pub other_messages: u64,
    /// Unsupported Requests from a device: requests the bridge does not serve (config,
    /// I/O, atomics, locked reads) and those the codec refuses as unsupported (AT = 11b,
    /// a message with reserved routing). Non-posted ones are answered with a UR
    /// completion (unless `answers_dropped`), posted ones dropped.
    pub unsupported: u64,
    /// Device requests dropped unanswered because [`MAX_TX_BACKLOG`] bytes were
    /// already waiting for the link.
    pub answers_dropped: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct BridgeConfig {
    /// Completion timeout of the host's requests, µs. Default 1 s, long enough for
    /// the transport to recover lost frames (see `endpoint::FunctionConfig`).
    pub completion_timeout_us: u64,
    /// Max Payload Size for completions and writes the bridge sends.
    pub max_payload: MaxSize,
    pub rcb: Rcb,
}

impl Default for BridgeConfig {
    fn default() -> BridgeConfig {
        BridgeConfig {
            completion_timeout_us: 1_000_000,
            max_payload: MaxSize::B256,
            rcb: Rcb::B64,
        }
    }
}

enum Waiting {
    Config,
    Memory {
        reassembly: ReadReassembly,
        data: Vec<u8>,
    },
}

struct Pending {
    id: RequestId,
    waiting: Waiting,
    deadline: u64,
}

/// The host bridge's TLP engine.
pub struct Bridge {
    cfg: BridgeConfig,
    /// Our Requester/Completer ID (the root port, 00:00.0).
    bdf: Bdf,
    memory: MemoryMap,
    /// The host's outstanding requests (8-bit tags).
    tags: TagTable<Pending>,
    next_id: u64,
    now: u64,
    out: TxQueue,
    events: VecDeque<Event>,
    stats: BridgeStats,
    /// What a device's memory read reads into, kept for the next one (at most the
    /// largest read, 4 KiB).
    read_buf: Vec<u8>,
}

/// TLPs for the link, with their total size.
struct TxQueue {
    tlps: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Buffers of TLPs sent, for the next ones ([`Bridge::recycle`]).
    spare: Buffers,
}

impl Default for TxQueue {
    fn default() -> TxQueue {
        TxQueue {
            tlps: VecDeque::new(),
            bytes: 0,
            // 64 of at most the largest TLP (a 4DW header, 4 KiB of data, a digest).
            spare: Buffers::new(64, 16 + 4096 + 4),
        }
    }
}

impl TxQueue {
    fn pop(&mut self) -> Option<Vec<u8>> {
        let t = self.tlps.pop_front()?;
        self.bytes -= t.len();
        Some(t)
    }
}

fn emit(out: &mut TxQueue, t: &Tlp) {
    // Every TLP built here is valid by construction; a failure is a bug.
    match out.spare.encode(t) {
        Ok(b) => {
            out.bytes += b.len();
            out.tlps.push_back(b);
        }
        Err(e) => debug_assert!(false, "emitting {t:?}: {e}"),
    }
}

impl Bridge {
    pub fn new(cfg: BridgeConfig, memory: MemoryMap) -> Bridge {
        Bridge {
            cfg,
            bdf: Bdf::from_u16(0),
            memory,
            tags: TagTable::new(TagWidth::Eight),
            next_id: 0,
            now: 0,
            out: TxQueue::default(),
            events: VecDeque::new(),
            stats: BridgeStats::default(),
            read_buf: Vec::new(),
        }
    }

    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    pub fn config(&self) -> BridgeConfig {
        self.cfg
    }

    pub fn memory(&self) -> &MemoryMap {
        &self.memory
    }

    pub fn memory_mut(&mut self) -> &mut MemoryMap {
        &mut self.memory
    }

    /// Takes the next TLP for the link.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop()
    }

    /// Gives back a buffer [`Bridge::poll_transmit`] returned, once sent, for the next
    /// TLPs (so that steady traffic allocates nothing per TLP). Optional.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.out.spare.give(buf);
    }

    /// The next TLP for the link, left queued (for a link that may refuse it).
    pub fn peek_transmit(&self) -> Option<&[u8]> {
        self.out.tlps.front().map(|t| &t[..])
    }

    /// Bytes of TLPs waiting for the link.
    pub fn tx_backlog(&self) -> usize {
        self.out.bytes
    }

    /// Whether a device request may be answered now; if not, it is counted as dropped.
    fn room_to_answer(&mut self) -> bool {
        if self.out.bytes >= MAX_TX_BACKLOG {
            self.stats.answers_dropped += 1;
            return false;
        }
        true
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` is due (µs), while requests are outstanding.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.tags.iter().map(|(_, p)| p.deadline).min()
    }

    /// Fails, in tag order, the requests whose deadline is `now` or earlier.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = now;
        for (_, p) in self.tags.take_where(|p| p.deadline <= now) {
            self.stats.completion_timeouts += 1;
            self.events.push_back(Event::Completed {
                id: p.id,
                result: Err(RequestError::Timeout),
            });
        }
    }

    /// When a request waiting from now on times out: a completion timeout from now,
    /// or the end of the clock when that is nearer (never a wrapped time in the past).
    fn deadline(&self) -> u64 {
        self.now.saturating_add(self.cfg.completion_timeout_us)
    }

    /// Sends the request whose header `build` makes with a free tag, with `payload`,
    /// and keeps it outstanding until its completion or its timeout.
    fn start(
        &mut self,
        payload: &[u8],
        build: impl FnOnce(Tag) -> (Header, Waiting),
    ) -> Result<RequestId, RequestError> {
        let deadline = self.deadline();
        let slot = self.tags.vacant().map_err(|_| RequestError::NoTags)?;
        let (header, waiting) = build(slot.tag());
        emit(&mut self.out, &Tlp::new(header, payload));
        let id = RequestId(self.next_id);
        self.next_id += 1;
        slot.insert(Pending {
            id,
            waiting,
            deadline,
        });
        self.stats.requests += 1;
        Ok(id)
    }

    fn config_request(
        &mut self,
        now: u64,
        target: Bdf,
        register: u16,
        write: Option<(u32, u8)>,
    ) -> Result<RequestId, RequestError> {
        self.now = now;
        let requester = self.bdf;
        let value = write.map(|(v, _)| v.to_le_bytes());
        self.start(value.as_ref().map_or(&[], |v| &v[..]), |tag| {
            let req = ConfigRequest {
                type1: false,
                requester,
                tag,
                target,
                register: register & 0xffc,
                first_be: write.map_or(0xf, |w| w.1),
            };
            let header = match write {
                Some(_) => Header::ConfigWrite(req),
                None => Header::ConfigRead(req),
            };
            (header, Waiting::Config)
        })
    }

    /// Reads the config dword at `register` (rounded down to a dword) of `target`.
    pub fn config_read(
        &mut self,
        now: u64,
        target: Bdf,
        register: u16,
    ) -> Result<RequestId, RequestError> {
        self.config_request(now, target, register, None)
    }

    /// Writes the bytes of `value` selected by `byte_enables` at dword `register`.
    pub fn config_write(
        &mut self,
        now: u64,
        target: Bdf,
        register: u16,
        value: u32,
        byte_enables: u8,
    ) -> Result<RequestId, RequestError> {
        self.config_request(now, target, register, Some((value, byte_enables & 0xf)))
    }

    /// Reads `len` bytes (1..=4096, not crossing 4 KiB) at bus address `addr`.
    pub fn mem_read(&mut self, now: u64, addr: u64, len: usize) -> Result<RequestId, RequestError> {
        self.now = now;
        let mut chunks =
            split_requests(addr, len, MaxSize::B4096).map_err(|_| RequestError::BadLength(len))?;
        let (Some(c), None) = (chunks.next(), chunks.next()) else {
            return Err(RequestError::BadLength(len));
        };
        let (requester, rcb) = (self.bdf, self.cfg.rcb);
        self.start(&[], |tag| {
            let read = MemRead {
                requester,
                tag,
                address: c.span.dw_address,
                length_dw: c.span.length_dw,
                first_be: c.span.first_be,
                last_be: c.span.last_be,
                locked: false,
                hint: None,
            };
            let reassembly = ReadReassembly::new(&read, rcb);
            let waiting = Waiting::Memory {
                data: vec![0; reassembly.total() as usize],
                reassembly,
            };
            (Header::MemRead(read), waiting)
        })
    }

    /// Writes `data` at bus address `addr` (posted: split at MPS and 4 KiB, no reply).
    pub fn mem_write(&mut self, now: u64, addr: u64, data: &[u8]) -> Result<(), RequestError> {
        self.now = now;
        let out = &mut self.out;
        for_each_write(self.bdf, addr, data, self.cfg.max_payload, |w, payload| {
            emit(out, &Tlp::new(Header::MemWrite(w), payload))
        })
        .map_err(|_| RequestError::BadLength(data.len()))
    }

    /// Takes one TLP from a device at time `now` (µs).
    pub fn handle_tlp(&mut self, now: u64, bytes: &[u8]) {
        self.now = now;
        let t = match Tlp::parse(bytes) {
            Ok(t) => t,
            Err(e) if e.is_malformed() => {
                self.stats.malformed += 1;
                return;
            }
            Err(e) => return self.unsupported(e.ur_answer()),
        };
        match t.header {
            Header::Completion(c) => self.completion(c, t.payload),
            Header::MemRead(r) if !r.locked => self.serve_read(r),
            Header::MemWrite(w) => self.serve_write(w, t.payload),
            Header::Message(m) => match m.as_intx() {
                Some((pin, asserted)) => {
                    self.stats.intx_messages += 1;
                    self.events.push_back(Event::Intx {
                        source: m.requester,
                        pin,
                        asserted,
                    });
                }
                None => self.stats.other_messages += 1,
            },
            // Config, I/O, locked and atomic requests from a device: not served.
            _ => self.unsupported(t.ur_answer()),
        }
    }

    /// Counts an Unsupported Request and answers it with a UR completion when it is
    /// non-posted (`answer` is `Some`) and there is room to answer.
    fn unsupported(&mut self, answer: Option<UrAnswer>) {
        self.stats.unsupported += 1;
        if let Some(a) = answer {
            if self.room_to_answer() {
                self.answer_ur(a);
            }
        }
    }

    fn answer_ur(&mut self, a: UrAnswer) {
        self.answer(
            a.requester,
            a.tag,
            CompletionStatus::UnsupportedRequest,
            a.byte_count,
            0,
            &[],
        );
    }

    fn answer(
        &mut self,
        requester: Bdf,
        tag: Tag,
        status: CompletionStatus,
        byte_count: u16,
        la: u8,
        data: &[u8],
    ) {
        let c = Completion {
            completer: self.bdf,
            status,
            bcm: false,
            byte_count,
            requester,
            tag,
            lower_address: la,
            locked: false,
        };
        emit(&mut self.out, &Tlp::new(Header::Completion(c), data));
    }

    fn serve_read(&mut self, r: MemRead) {
        if !self.room_to_answer() {
            return;
        }
        let (first, count) = tlp::split::read_extent(&r);
        // The bridge's own buffer, not one per request (an allocation per TLP).
        let mut data = std::mem::take(&mut self.read_buf);
        data.clear();
        data.resize(count as usize, 0);
        let read = self.memory.read(first, &mut data).is_ok();
        if !read {
            self.read_buf = data;
            self.stats.dma_read_refused += 1;
            return self.answer_ur(UrAnswer {
                requester: r.requester,
                tag: r.tag,
                byte_count: count as u16,
            });
        }
        self.stats.dma_reads += 1;
        self.stats.dma_read_bytes += count as u64;
        let (rcb, mps) = (self.cfg.rcb, self.cfg.max_payload);
        for_each_read_completion(&r, &data, rcb, mps, |c, payload| {
            self.answer(
                r.requester,
                r.tag,
                CompletionStatus::Success,
                c.byte_count,
                c.lower_address,
                payload,
            )
        });
        self.read_buf = data;
    }

    fn serve_write(&mut self, w: MemWrite, payload: &[u8]) {
        if MSI_WINDOW.contains(&w.address) {
            // An MSI is one DW; the data is its low 16 (or 32) bits.
            let data = payload
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            self.stats.msis += 1;
            self.events.push_back(Event::Msi {
                source: w.requester,
                address: w.address,
                data,
            });
            return;
        }
        // Write the enabled bytes; a write whose bytes are not all inside the map is
        // dropped whole, never partly applied.
        let length_dw = (payload.len() / 4) as u16;
        let mut span: Option<(usize, usize)> = None;
        enabled_runs(length_dw, w.first_be, w.last_be, |at, len| {
            span = Some(span.map_or((at, at + len), |(a, _)| (a, at + len)));
        });
        let Some((first, end)) = span else {
            return; // a zero-length write
        };
        if !self.memory.contains(w.address + first as u64, end - first) {
            self.stats.dma_write_dropped += 1;
            return;
        }
        let memory = &mut self.memory;
        enabled_runs(length_dw, w.first_be, w.last_be, |at, len| {
            let ok = memory.write(w.address + at as u64, &payload[at..at + len]);
            debug_assert!(ok.is_ok(), "checked above");
        });
        self.stats.dma_writes += 1;
        self.stats.dma_write_bytes += (end - first) as u64;
    }

    fn completion(&mut self, c: Completion, payload: &[u8]) {
        let deadline = self.deadline();
        // A tag with nothing outstanding (late after a timeout, or bogus) finds nothing.
        let Some(p) = self.tags.get_mut(c.tag) else {
            self.stats.unexpected_completions += 1;
            return;
        };
        let result = match &mut p.waiting {
            Waiting::Config => Some(if c.status != CompletionStatus::Success {
                Err(RequestError::Status(c.status))
            } else if payload.len() == 4 || payload.is_empty() {
                Ok(payload.to_vec())
            } else {
                Err(RequestError::BadCompletion)
            }),
            Waiting::Memory { reassembly, data } => match reassembly.accept(&c, payload, data) {
                Ok(tlp::Progress::Complete) => Some(Ok(std::mem::take(data))),
                Ok(tlp::Progress::Partial { .. }) => {
                    p.deadline = deadline;
                    None
                }
                Err(tlp::ReassemblyError::Status(s)) => Some(Err(RequestError::Status(s))),
                Err(_) => Some(Err(RequestError::BadCompletion)),
            },
        };
        if let Some(result) = result {
            let id = p.id;
            self.tags.take(c.tag);
            if result.is_err() {
                self.stats.error_completions += 1;
            }
            self.events.push_back(Event::Completed { id, result });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Whatever devices send (valid TLPs of every type, junk), the bridge does not
        /// panic, and after the timeout nothing of its own is left outstanding.
        #[test]
        fn no_device_traffic_panics_or_escapes_the_map(
            tlps in proptest::collection::vec(tlp::strategies::any_tlp(), 1..30),
            junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4),
        ) {
            let mut map = MemoryMap::new();
            map.add(0x1000, Box::new(vec![0u8; 0x2000])).unwrap();
            let mut b = Bridge::new(BridgeConfig::default(), map);
            // Requests of our own outstanding, so completions meet live tags.
            for i in 0..8u16 {
                b.config_read(0, Bdf::from_u16(i), 0).unwrap();
                b.mem_read(0, 0xe000_0000 + i as u64 * 64, 64).unwrap();
            }
            for t in &tlps {
                let tlp = t.as_tlp();
                let mut bytes = vec![0; tlp.buffer_len()];
                let n = tlp.emit(&mut bytes).unwrap();
                b.handle_tlp(1, &bytes[..n]);
            }
            for j in &junk {
                b.handle_tlp(1, j);
            }
            b.handle_timeout(u64::MAX);
            while b.poll_transmit().is_some() {}
            while b.poll_event().is_some() {}
            prop_assert!(b.poll_timeout().is_none());
            let s = b.stats();
            prop_assert_eq!(s.requests, 16);
        }
    }

    fn config_completion(tag: Tag, value: u32) -> Vec<u8> {
        let c = Completion {
            completer: Bdf::new(1, 0, 0).unwrap(),
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: 4,
            requester: Bdf::from_u16(0),
            tag,
            lower_address: 0,
            locked: false,
        };
        Tlp::new(Header::Completion(c), &value.to_le_bytes())
            .to_vec()
            .unwrap()
    }

    /// The tag of the request on the wire.
    fn sent_tag(b: &mut Bridge) -> Tag {
        let t = b.poll_transmit().expect("a request");
        match Tlp::parse(&t).unwrap().header {
            Header::ConfigRead(r) => r.tag,
            h => panic!("sent {h:?}"),
        }
    }

    /// A completion arriving after its request timed out is unexpected: it does not
    /// end the next request, which went out with another tag.
    #[test]
    fn a_late_completion_is_unexpected_and_its_tag_not_reused_at_once() {
        let mut b = Bridge::new(BridgeConfig::default(), MemoryMap::new());
        let dev = Bdf::new(1, 0, 0).unwrap();
        let first = b.config_read(0, dev, 0).unwrap();
        let old = sent_tag(&mut b);
        let timeout = b.poll_timeout().unwrap();
        b.handle_timeout(timeout);
        assert_eq!(
            b.poll_event(),
            Some(Event::Completed {
                id: first,
                result: Err(RequestError::Timeout)
            })
        );
        let second = b.config_read(timeout, dev, 4).unwrap();
        let new = sent_tag(&mut b);
        assert_ne!(old, new);
        b.handle_tlp(timeout + 1, &config_completion(old, 0xdead_beef));
        assert_eq!(b.poll_event(), None);
        assert_eq!(b.stats().unexpected_completions, 1);
        b.handle_tlp(timeout + 2, &config_completion(new, 0x1234_5678));
        assert_eq!(
            b.poll_event(),
            Some(Event::Completed {
                id: second,
                result: Ok(0x1234_5678u32.to_le_bytes().to_vec())
            })
        );
        assert_eq!(b.poll_timeout(), None);
    }

    /// 256 requests take every tag; the next is refused, and a completion frees a tag.
    #[test]
    fn requests_beyond_the_tags_are_refused() {
        let mut b = Bridge::new(BridgeConfig::default(), MemoryMap::new());
        let dev = Bdf::new(1, 0, 0).unwrap();
        for _ in 0..256 {
            b.config_read(0, dev, 0).unwrap();
        }
        assert_eq!(b.config_read(0, dev, 0), Err(RequestError::NoTags));
        assert_eq!(b.mem_read(0, 0x1000, 4), Err(RequestError::NoTags));
        assert_eq!(b.stats().requests, 256);
        let tag = sent_tag(&mut b);
        b.handle_tlp(1, &config_completion(tag, 7));
        assert!(matches!(
            b.poll_event(),
            Some(Event::Completed { result: Ok(_), .. })
        ));
        assert!(b.config_read(1, dev, 0).is_ok());
    }

    /// Requests made at a time near the end of the clock get a deadline at its end
    /// rather than one that wraps around to the past (or an overflow panic): they
    /// time out only at `u64::MAX`, and a partial completion keeps it there.
    #[test]
    fn deadlines_near_the_end_of_time_saturate() {
        let mut b = Bridge::new(BridgeConfig::default(), MemoryMap::new());
        let dev = Bdf::new(1, 0, 0).unwrap();
        let late = u64::MAX - 10;
        let cfg = b.config_read(late, dev, 0).unwrap();
        let tag = sent_tag(&mut b);
        assert_eq!(b.poll_timeout(), Some(u64::MAX));
        b.handle_timeout(late + 1);
        assert_eq!(b.poll_event(), None, "not timed out early");
        b.handle_tlp(late + 2, &config_completion(tag, 5));
        assert_eq!(
            b.poll_event(),
            Some(Event::Completed {
                id: cfg,
                result: Ok(5u32.to_le_bytes().to_vec())
            })
        );

        // A 128-byte read answered in two 64-byte parts (RCB 64): the first part
        // moves the deadline from the same late time.
        let read = b.mem_read(late, 0x1000, 128).unwrap();
        let t = b.poll_transmit().unwrap();
        let Header::MemRead(r) = Tlp::parse(&t).unwrap().header else {
            panic!("not a read");
        };
        let part = Completion {
            completer: dev,
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: 128,
            requester: r.requester,
            tag: r.tag,
            lower_address: 0,
            locked: false,
        };
        let first = Tlp::new(Header::Completion(part), &[7u8; 64])
            .to_vec()
            .unwrap();
        b.handle_tlp(late + 5, &first);
        assert_eq!(b.poll_event(), None, "partial");
        assert_eq!(b.poll_timeout(), Some(u64::MAX));
        b.handle_timeout(u64::MAX);
        assert_eq!(
            b.poll_event(),
            Some(Event::Completed {
                id: read,
                result: Err(RequestError::Timeout)
            })
        );
    }

    fn read_tlp(requester: Bdf, tag: u16, address: u64) -> Vec<u8> {
        let r = MemRead {
            requester,
            tag: Tag::wrapping(tag),
            address,
            length_dw: 1024,
            first_be: 0xf,
            last_be: 0xf,
            locked: false,
            hint: None,
        };
        Tlp::new(Header::MemRead(r), &[]).to_vec().unwrap()
    }

    /// A device that floods 4 KiB reads while the link takes nothing fills the
    /// output queue up to the bound and no further; the rest go unanswered, counted.
    /// Once the link takes the backlog, reads are answered again.
    #[test]
    fn a_read_flood_is_bounded_by_the_backlog() {
        let mut map = MemoryMap::new();
        map.add(0x1_0000, Box::new(vec![0u8; 0x1000])).unwrap();
        let mut b = Bridge::new(BridgeConfig::default(), map);
        let dev = Bdf::new(1, 0, 0).unwrap();
        let flood = 2 * MAX_TX_BACKLOG / 4096;
        for i in 0..flood {
            b.handle_tlp(1, &read_tlp(dev, i as u16, 0x1_0000));
        }
        let s = b.stats();
        // One read's answers (4 KiB of data and their headers) may pass the bound.
        assert!(b.tx_backlog() < MAX_TX_BACKLOG + 4096 + 17 * 16);
        assert!(s.answers_dropped > 0);
        assert_eq!(s.dma_reads + s.answers_dropped, flood as u64);
        let mut n = 0;
        while let Some(t) = b.peek_transmit().map(<[u8]>::to_vec) {
            assert_eq!(b.poll_transmit(), Some(t));
            n += 1;
        }
        assert!(n > 0);
        assert_eq!(b.tx_backlog(), 0);
        b.handle_tlp(2, &read_tlp(dev, 0, 0x1_0000));
        assert_eq!(b.stats().dma_reads, s.dma_reads + 1);
        assert_eq!(b.stats().answers_dropped, s.answers_dropped);
    }
}
