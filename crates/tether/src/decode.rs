//! Human-readable decoding of captured frames (`tether wire decode`), with each
//! completion matched to its request by (GID, requester ID, tag), and the completion
//! latencies of a capture by request type (`--stats`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use tlp::{Bdf, Header, Tag};
use wire::{Body, Frame};

/// A completion matched to its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    /// The request's frame number.
    pub request_frame: usize,
    /// From the request to this completion, µs.
    pub latency_us: u64,
    /// The request's mnemonic (`MRd`, `CfgRd0`, ...).
    pub kind: &'static str,
    /// This completion finished the request (the last of a split read).
    pub last: bool,
}

/// Outstanding non-posted requests: (GID, requester, tag) -> (frame number, time µs,
/// mnemonic). At most [`MAX_OUTSTANDING`]: a capture of requests that never complete
/// forgets the oldest rather than growing.
#[derive(Default)]
pub struct RequestTracker {
    outstanding: HashMap<(u16, Bdf, Tag), (usize, u64, &'static str)>,
    /// Requests seen, by mnemonic.
    pub requests: BTreeMap<&'static str, u64>,
}

/// Requests kept waiting for their completions (a host has at most 256 tags per
/// requester; this is far beyond a real capture's need).
pub const MAX_OUTSTANDING: usize = 1 << 16;

impl RequestTracker {
    /// Records a request, or matches a completion to one. The last completion (byte
    /// count equal to what it carries) retires the request.
    pub fn observe(
        &mut self,
        gid: u16,
        frame_no: usize,
        time_us: u64,
        t: &tlp::Tlp<'_>,
    ) -> Option<Matched> {
        if let Some((req, tag)) = t.header.transaction_id() {
            let kind = t.header.mnemonic(!t.payload.is_empty());
            *self.requests.entry(kind).or_default() += 1;
            if self.outstanding.len() >= MAX_OUTSTANDING {
                if let Some(oldest) = self
                    .outstanding
                    .iter()
                    .min_by_key(|(_, v)| v.0)
                    .map(|(k, _)| *k)
                {
                    self.outstanding.remove(&oldest);
                }
            }
            self.outstanding
                .insert((gid, req, tag), (frame_no, time_us, kind));
            return None;
        }
        let Header::Completion(c) = t.header else {
            return None;
        };
        let key = (gid, c.requester, c.tag);
        let &(no, at, kind) = self.outstanding.get(&key)?;
        let data_bytes = t
            .payload
            .len()
            .saturating_sub((c.lower_address & 3) as usize);
        let last = t.payload.is_empty() || data_bytes >= c.byte_count as usize;
        if last {
            self.outstanding.remove(&key);
        }
        Some(Matched {
            request_frame: no,
            latency_us: time_us.saturating_sub(at),
            kind,
            last,
        })
    }
}

/// Completion latencies by request type: from each request to the completion that
/// finished it.
#[derive(Default)]
pub struct LatencyStats {
    by_kind: BTreeMap<&'static str, Vec<u64>>,
}

impl LatencyStats {
    pub fn add(&mut self, m: Matched) {
        if m.last {
            self.by_kind.entry(m.kind).or_default().push(m.latency_us);
        }
    }

    /// The table: per request type, requests seen, answered, and the latency's
    /// minimum, median, 90th, 99th percentile and maximum (nearest rank), µs.
    pub fn table(&mut self, requests: &BTreeMap<&'static str, u64>) -> String {
        let mut s = format!(
            "{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "TYPE", "REQUESTS", "ANSWERED", "MIN", "P50", "P90", "P99", "MAX"
        );
        for (kind, seen) in requests {
            let v = self.by_kind.entry(kind).or_default();
            v.sort_unstable();
            let rank = |q: f64| -> String {
                if v.is_empty() {
                    return "-".into();
                }
                let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
                v[i].to_string()
            };
            s += &format!(
                "{kind:<9} {seen:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                v.len(),
                rank(0.0),
                rank(0.5),
                rank(0.9),
                rank(0.99),
                rank(1.0)
            );
        }
        s
    }
}

/// Prints every frame of a pcap file; the tags of frames of the groups in `keys` are
/// checked.
pub fn print_pcap(path: &Path, keys: &fabric::GroupKeys, out: &mut impl Write) -> Result<()> {
    decode_pcap(path, keys, false, out)
}

/// Prints the completion-latency table of a pcap file instead of its frames.
pub fn print_stats(path: &Path, keys: &fabric::GroupKeys, out: &mut impl Write) -> Result<()> {
    decode_pcap(path, keys, true, out)
}

fn decode_pcap(
    path: &Path,
    keys: &fabric::GroupKeys,
    stats_only: bool,
    out: &mut impl Write,
) -> Result<()> {
    let frames = crate::pcap::read(path)?;
    let mut tracker = RequestTracker::default();
    let mut stats = LatencyStats::default();
    let start = frames.first().map_or(0, |f| f.0);
    let mut sink = std::io::sink();
    let real: &mut dyn Write = out;
    let out: &mut dyn Write = if stats_only { &mut sink } else { real };
    for (i, (time_us, bytes)) in frames.iter().enumerate() {
        let no = i + 1;
        let rel = (*time_us - start.min(*time_us)) as f64 / 1e6;
        let frame = match Frame::parse(bytes, None) {
            Ok(f) => f,
            Err(e) => {
                writeln!(out, "{no:>4} {rel:>10.6}  {} bytes: {e}", bytes.len())?;
                continue;
            }
        };
        let h = &frame.header;
        let gid = frame.gid().unwrap_or(0);
        writeln!(
            out,
            "{no:>4} {rel:>10.6}  {} > {} GID {gid} {} epoch {:#010x} seq {} ack {} win {} flags {:#04x}{}{}",
            frame.ethernet.src,
            frame.ethernet.dst,
            h.kind.name(),
            h.epoch,
            h.seq,
            h.ack,
            h.window,
            h.flags,
            if h.kind == wire::FrameKind::Nak && h.has_flag(wire::flags::GAP_END) {
                format!(" gap-end {} (resend {}..{})", h.seq, h.ack, h.seq)
            } else {
                String::new()
            },
            if h.echo_wait == 0 {
                String::new()
            } else {
                format!(" echo-wait {} us", h.echo_wait as u32 * wire::ECHO_WAIT_UNIT_US)
            }
        )?;
        if frame.tag.is_some() {
            let status = match keys.get(&gid) {
                None => format!("not checked (no key for group {gid})"),
                Some(k) => match frame.authenticate(Some(k)) {
                    Ok(()) => format!("good (key {:08x})", k.id()),
                    Err(_) => format!("BAD (key {:08x})", k.id()),
                },
            };
            let nonce = frame.nonce.map_or(String::new(), |n| {
                let hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
                format!(", nonce {hex}")
            });
            writeln!(out, "        authentication tag: {status}{nonce}")?;
        }
        match frame.body() {
            Ok(Body::Data(records)) => {
                for r in records {
                    match r.and_then(|r| r.tlp()) {
                        Ok(t) => {
                            write!(out, "        {t}")?;
                            if let Some(m) = tracker.observe(gid, no, *time_us, &t) {
                                write!(
                                    out,
                                    "  [request in frame {}, {} µs]",
                                    m.request_frame, m.latency_us
                                )?;
                                stats.add(m);
                            }
                            writeln!(out)?;
                        }
                        Err(e) => writeln!(out, "        malformed record: {e}")?,
                    }
                }
            }
            Ok(Body::Info(info)) => {
                let r = &info.repr;
                writeln!(
                    out,
                    "        {} bridge {:#018x} MTU {} max TLPs/frame {} interval {} ms MPS {} MRRS {}",
                    r.role.name(),
                    r.bridge_id,
                    r.mtu,
                    r.max_tlps_per_frame,
                    r.interval_ms,
                    r.max_payload,
                    r.max_read_request
                )?;
                for d in info.devices() {
                    writeln!(
                        out,
                        "        slot {} GID {} [{:04x}:{:04x}] class {:06x} rev {:02x} subsystem {:04x}:{:04x}{}",
                        d.slot,
                        d.gid,
                        d.vendor_id,
                        d.device_id,
                        d.class_code,
                        d.revision,
                        d.subsystem_vendor_id,
                        d.subsystem_id,
                        if d.flags & wire::DEVICE_READY != 0 { " ready" } else { "" }
                    )?;
                }
            }
            Ok(Body::Ctrl(c)) => writeln!(
                out,
                "        {:?} request {} target {:#018x} slot {} GID {} status {:?}",
                c.op, c.request_id, c.target, c.slot, c.gid, c.status
            )?,
            Ok(Body::Ack | Body::Nak) => {}
            Err(e) => writeln!(out, "        malformed payload: {e}")?,
        }
    }
    if stats_only {
        let span = frames.last().map_or(0, |f| f.0.saturating_sub(start));
        writeln!(
            real,
            "{}: {} frames in {:.3} s; completion latency by request type \
             (µs, from the request to the completion that finished it):",
            path.display(),
            frames.len(),
            span as f64 / 1e6
        )?;
        write!(real, "{}", stats.table(&tracker.requests))?;
    }
    Ok(())
}
