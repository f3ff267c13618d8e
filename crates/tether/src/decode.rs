//! Human-readable decoding of captured frames (`tether wire decode`), with each
//! completion matched to its request by (GID, requester ID, tag).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use tlp::{Bdf, Header, Tag};
use wire::{Body, Frame};

/// Outstanding non-posted requests: (GID, requester, tag) -> (frame number, time µs).
#[derive(Default)]
pub struct RequestTracker {
    outstanding: HashMap<(u16, Bdf, Tag), (usize, u64)>,
}

impl RequestTracker {
    /// Records a request, or matches a completion. For a completion returns the
    /// request's frame number and the latency in µs; the last completion (byte count
    /// equal to what it carries) retires the request.
    pub fn observe(
        &mut self,
        gid: u16,
        frame_no: usize,
        time_us: u64,
        t: &tlp::Tlp<'_>,
    ) -> Option<(usize, u64)> {
        if let Some((req, tag)) = t.header.transaction_id() {
            self.outstanding
                .insert((gid, req, tag), (frame_no, time_us));
            return None;
        }
        let Header::Completion(c) = t.header else {
            return None;
        };
        let key = (gid, c.requester, c.tag);
        let &(no, at) = self.outstanding.get(&key)?;
        let data_bytes = t
            .payload
            .len()
            .saturating_sub((c.lower_address & 3) as usize);
        if t.payload.is_empty() || data_bytes >= c.byte_count as usize {
            self.outstanding.remove(&key);
        }
        Some((no, time_us.saturating_sub(at)))
    }
}

/// Prints every frame of a pcap file; the tags of frames of the groups in `keys` are
/// checked.
pub fn print_pcap(path: &Path, keys: &fabric::GroupKeys, out: &mut impl Write) -> Result<()> {
    let frames = crate::pcap::read(path)?;
    let mut tracker = RequestTracker::default();
    let start = frames.first().map_or(0, |f| f.0);
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
                            if let Some((req_no, lat)) = tracker.observe(gid, no, *time_us, &t) {
                                write!(out, "  [request in frame {req_no}, {lat} µs]")?;
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
    Ok(())
}
