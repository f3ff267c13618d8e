//! What the bridge programs print: the lspci-style description of a device, a line
//! per fabric event, and a node's sessions as JSON.

use std::time::{Duration, Instant};

use fabric::Node;

/// The name lspci gives a class (base class, subclass), for the classes tether's
/// devices use and their families.
pub fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "Network controller",
        (0x03, _) => "Display controller",
        (0x05, _) => "Memory controller",
        (0x06, _) => "Bridge",
        (0x0c, _) => "Serial bus controller",
        (0x12, _) => "Processing accelerators",
        _ => "Unclassified device",
    }
}

/// A device as `lspci -v` would show its identity and resources.
pub fn lspci_line(d: &rootcomplex::DeviceInfo) -> String {
    let mut s = format!(
        "{} {} [{:02x}{:02x}]: Device {:04x}:{:04x} (rev {:02x})",
        d.bdf,
        class_name(d.class.0, d.class.1),
        d.class.0,
        d.class.1,
        d.vendor,
        d.device,
        d.revision
    );
    for b in &d.bars {
        s += &format!(
            "\n        BAR{}: memory at {:#x} ({}-bit, {}prefetchable) [size={}K]",
            b.index,
            b.address,
            if b.is_64bit { 64 } else { 32 },
            if b.prefetchable { "" } else { "non-" },
            b.size / 1024
        );
    }
    s + &format!("\n        interrupts: {:?}", d.irq)
}

/// How long one window of the fabric log is: at most [`LINES_PER_WINDOW`] event lines
/// in it, and one line at its end that counts what was left out and what the fabric
/// refused.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Event lines per window; the rest are counted.
pub const LINES_PER_WINDOW: u32 = 100;

/// The fabric's log: event lines, but not one per stranger on the segment. A flood
/// of fake bridges (peer up, peer down, hot-plug of devices that do not answer) and
/// of refused frames gives a few lines per [`LOG_WINDOW`] with counts.
#[derive(Default)]
pub struct FabricLog {
    window_start: Option<Instant>,
    lines: u32,
    left_out: u64,
    /// The refusal counters at the last summary.
    refused: [u64; REFUSALS.len()],
}

/// A counter of the fabric's, as the summary names it.
type Counter = (&'static str, fn(&fabric::FabricStats) -> u64);

/// The fabric's refusal counters, as the summary names them.
const REFUSALS: [Counter; 10] = [
    ("INFO from strangers over the rate limit", |s| {
        s.infos_limited
    }),
    ("new peers over the cap", |s| s.peers_refused),
    ("frames without a tag", |s| s.auth_missing),
    ("frames with a bad tag", |s| s.auth_bad),
    ("tagged frames of an unkeyed group", |s| s.auth_unexpected),
    ("replayed INFO", |s| s.replayed_infos),
    ("replayed or stale CTRL", |s| s.replayed_ctrl),
    ("CTRL from another group", |s| s.ctrl_wrong_group),
    ("session frames of an earlier run", |s| s.stale_run_frames),
    ("frames that were not tether's or did not parse", |s| {
        s.bad_frames
    }),
];

impl FabricLog {
    /// The line for `e` at `now`, unless this window has had its lines (then it is
    /// counted for the summary). Only the lines that bridges on the segment cause by
    /// being heard (peers up, down, restarted; devices added, removed) are limited:
    /// a group change and a CTRL result are this bridge's own doing, and always told.
    pub fn event(&mut self, now: Instant, e: &fabric::FabricEvent) -> Option<String> {
        let line = describe(e)?;
        if matches!(
            e,
            fabric::FabricEvent::GroupChanged { .. } | fabric::FabricEvent::CtrlResult { .. }
        ) {
            return Some(line);
        }
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= LOG_WINDOW {
            // A new window (the summary of the old one is `summary`'s to print).
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines >= LINES_PER_WINDOW {
            self.left_out += 1;
            return None;
        }
        self.lines += 1;
        Some(line)
    }

    /// Once a window has passed: one line with the event lines left out and what the
    /// fabric refused since the last summary; `None` when there is nothing to say or
    /// the window is not over.
    pub fn summary(
        &mut self,
        now: Instant,
        stats: impl FnOnce() -> fabric::FabricStats,
    ) -> Option<String> {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) < LOG_WINDOW {
            return None;
        }
        let s = &stats();
        self.window_start = Some(now);
        self.lines = 0;
        let mut parts = Vec::new();
        if self.left_out > 0 {
            parts.push(format!("{} event lines left out", self.left_out));
            self.left_out = 0;
        }
        for (i, (name, get)) in REFUSALS.iter().enumerate() {
            let v = get(s);
            let grew = v.saturating_sub(self.refused[i]);
            self.refused[i] = v;
            if grew > 0 {
                parts.push(format!("{grew} {name}"));
            }
        }
        (!parts.is_empty()).then(|| {
            format!(
                "fabric: in the last {} s: {}",
                LOG_WINDOW.as_secs(),
                parts.join(", ")
            )
        })
    }
}

impl FabricLog {
    /// Logs `e` (target `tether::fabric`), unless this window has had its lines.
    pub fn log(&mut self, now: Instant, e: &fabric::FabricEvent) {
        if let Some(line) = self.event(now, e) {
            emit(e, &line);
        }
    }

    /// Logs the window's summary when it is due (a warning: frames were refused or
    /// lines left out).
    pub fn log_summary(&mut self, now: Instant, stats: impl FnOnce() -> fabric::FabricStats) {
        if let Some(line) = self.summary(now, stats) {
            tracing::warn!(target: "tether::fabric", event = "summary", "{line}");
        }
    }
}

/// Logs the line of a fabric event at its level, with its group and peer as fields:
/// what goes wrong (a peer lost, restarted; a CTRL request refused) is a warning, the
/// rest is information.
fn emit(e: &fabric::FabricEvent, line: &str) {
    use fabric::{DownReason, FabricEvent as E};
    use tracing::{info, warn};
    const T: &str = "tether::fabric";
    match e {
        E::PeerUp { gid, peer, .. } => {
            info!(target: T, event = "peer_up", gid, peer = %peer, "{line}")
        }
        E::PeerDown {
            gid,
            peer,
            reason: DownReason::Left,
        } => info!(target: T, event = "peer_down", gid, peer = %peer, "{line}"),
        E::PeerDown { gid, peer, .. } => {
            warn!(target: T, event = "peer_down", gid, peer = %peer, "{line}")
        }
        E::PeerRestarted { gid, peer, .. } => {
            warn!(target: T, event = "peer_restarted", gid, peer = %peer, "{line}")
        }
        E::DeviceAdded { gid, peer, device } => {
            info!(target: T, event = "hot_plug", gid, peer = %peer, slot = device.slot, "{line}")
        }
        E::DeviceRemoved { gid, peer, slot } => {
            info!(target: T, event = "hot_remove", gid, peer = %peer, slot, "{line}")
        }
        E::GroupChanged { slot, from, to } => {
            info!(target: T, event = "group_change", slot, from, to, "{line}")
        }
        E::CtrlResult { from, status, .. } if *status == wire::CtrlStatus::Ok => {
            info!(target: T, event = "ctrl_result", peer = %from, "{line}")
        }
        E::CtrlResult { from, .. } => {
            warn!(target: T, event = "ctrl_result", peer = %from, "{line}")
        }
        E::Tlp { .. } => {}
    }
}

/// One log line for a fabric event (TLPs are not logged).
pub fn describe(e: &fabric::FabricEvent) -> Option<String> {
    use fabric::{DownReason, FabricEvent as E};
    Some(match e {
        E::PeerUp {
            gid,
            peer,
            role,
            bridge_id,
        } => format!(
            "peer up: {peer} ({} {bridge_id:#x}) in group {gid}",
            role_name(*role)
        ),
        E::PeerDown { gid, peer, reason } => format!(
            "peer down: {peer} in group {gid} ({})",
            match reason {
                DownReason::Silent => "silent".to_string(),
                DownReason::Unreachable { lost } => format!("unreachable, {lost} TLPs lost"),
                DownReason::Left => "group left".to_string(),
            }
        ),
        E::PeerRestarted { gid, peer, lost } => {
            format!("peer restarted: {peer} in group {gid} ({lost} TLPs lost)")
        }
        E::DeviceAdded { gid, peer, device } => format!(
            "hot-plug: group {gid}: slot {} device {:04x}:{:04x} class {:06x} at {peer}",
            device.slot, device.vendor_id, device.device_id, device.class_code
        ),
        E::DeviceRemoved { gid, peer, slot } => {
            format!("hot-remove: group {gid}: slot {slot} at {peer}")
        }
        E::GroupChanged { slot, from, to } => {
            format!("group change: slot {slot} moved from group {from} to group {to}")
        }
        E::CtrlResult {
            from,
            request_id,
            status,
        } => format!("ctrl result {request_id} from {from}: {status:?}"),
        E::Tlp { .. } => return None,
    })
}

pub use manager::inventory::role_name;

/// The sessions of a node as JSON: one entry per (group, peer).
pub fn sessions_json(node: &Node) -> serde_json::Value {
    node.peers()
        .map(|(gid, mac, role, id, devices)| {
            serde_json::json!({
                "gid": gid,
                "peer": mac.to_string(),
                "role": role_name(role),
                "bridge_id": format!("{id:#x}"),
                "devices": devices.iter().map(|d| d.slot).collect::<Vec<_>>(),
                "efe": node.session_stats(gid, mac),
            })
        })
        .collect()
}

/// A host bridge's virtual switch as `lspci -tv` would draw it, from the config
/// images the switch presents (IDs, bus numbers) and the devices on its ports: the
/// root port, the upstream port, and each downstream port that holds a device (the
/// empty ones counted on the last line).
pub fn switch_tree(hb: &hostbridge::host_bridge::HostBridge) -> Vec<String> {
    use hostbridge::switch::{ROOT_PORT, UPSTREAM_PORT};
    let sw = hb.router().switch();
    let ids = |bdf| {
        let v = sw.config_read(bdf, 0).unwrap_or(u32::MAX);
        format!("[{:04x}:{:04x}]", v & 0xffff, v >> 16)
    };
    // Secondary and subordinate bus numbers, as the bridge's header holds them.
    let buses = |bdf| {
        let v = sw.config_read(bdf, 0x18).unwrap_or(0);
        let (sec, sub) = ((v >> 8) as u8, (v >> 16) as u8);
        if sec == sub {
            format!("[{sec:02x}]")
        } else {
            format!("[{sec:02x}-{sub:02x}]")
        }
    };
    let fnum = |bdf: tlp::Bdf| format!("{:02x}.{}", bdf.device(), bdf.function());
    let mut out = vec![
        format!(
            "-[0000:00]-{}-{} root port {}",
            fnum(ROOT_PORT),
            buses(ROOT_PORT),
            ids(ROOT_PORT)
        ),
        format!(
            "           \\-[01]-{}-{} switch upstream port {}",
            fnum(UPSTREAM_PORT),
            buses(UPSTREAM_PORT),
            ids(UPSTREAM_PORT)
        ),
    ];
    let live: Vec<_> = sw.live_ports().collect();
    for (i, port) in live.iter().enumerate() {
        let b = port.bridge();
        let branch = if i + 1 == live.len() { "\\" } else { "+" };
        let device = hb
            .devices()
            .find(|(v, _)| v.port == Some(*port))
            .map(|(v, info)| match info {
                Some(d) => format!(
                    "---{} {} [{:04x}:{:04x}] ({}, generation {}, {:?})",
                    d.bdf,
                    class_name(d.class.0, d.class.1),
                    d.vendor,
                    d.device,
                    v.key,
                    v.gen.0,
                    v.phase
                ),
                None => format!(" ({}, generation {}, {:?})", v.key, v.gen.0, v.phase),
            })
            .unwrap_or_else(|| " (held, no device)".into());
        out.push(format!(
            "                  {branch}-[02]-{}-{} downstream port {} {}{device}",
            fnum(b),
            buses(b),
            port.index(),
            ids(b)
        ));
    }
    out.push(format!(
        "{} of {} downstream ports hold a device",
        live.len(),
        sw.capacity()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::BridgeRole;

    #[test]
    fn class_names_follow_lspci() {
        assert_eq!(class_name(0x05, 0x80), "Memory controller");
        assert_eq!(class_name(0x01, 0x00), "SCSI storage controller");
        assert_eq!(class_name(0x01, 0x08), "Non-Volatile memory controller");
        assert_eq!(class_name(0x02, 0x00), "Ethernet controller");
        assert_eq!(class_name(0xff, 0x00), "Unclassified device");
    }

    #[test]
    fn a_flood_of_events_and_refusals_makes_a_few_lines() {
        let mut log = FabricLog::default();
        let t0 = Instant::now();
        let up = |i: u8| fabric::FabricEvent::PeerUp {
            gid: 10,
            peer: wire::MacAddr([2, 0xee, 0, 0, 0, i]),
            role: BridgeRole::IoBox,
            bridge_id: i.into(),
        };
        let printed = (0..250u32)
            .filter(|&i| log.event(t0, &up(i as u8)).is_some())
            .count();
        assert_eq!(printed, LINES_PER_WINDOW as usize);
        let mut s = fabric::FabricStats {
            infos_limited: 9_900,
            auth_missing: 7,
            ..Default::default()
        };
        assert_eq!(
            log.summary(t0 + Duration::from_secs(1), || s),
            None,
            "not yet"
        );
        let line = log.summary(t0 + LOG_WINDOW, || s).unwrap();
        assert_eq!(
            line,
            "fabric: in the last 10 s: 150 event lines left out, \
             9900 INFO from strangers over the rate limit, 7 frames without a tag"
        );
        // A new window: lines again, and the counts from the last summary on.
        assert!(log.event(t0 + LOG_WINDOW, &up(1)).is_some());
        s.infos_limited += 5;
        let line = log.summary(t0 + LOG_WINDOW * 2, || s).unwrap();
        assert_eq!(
            line,
            "fabric: in the last 10 s: 5 INFO from strangers over the rate limit"
        );
        assert_eq!(log.summary(t0 + LOG_WINDOW * 3, || s), None, "nothing new");
        // A group change is always told, however many lines the window had.
        let t1 = t0 + LOG_WINDOW * 3;
        for i in 0..LINES_PER_WINDOW + 5 {
            let moved = fabric::FabricEvent::GroupChanged {
                slot: 0,
                from: 10,
                to: 20 + i as u16,
            };
            assert!(log.event(t1, &up(1)).is_some() || i >= LINES_PER_WINDOW);
            assert!(log.event(t1, &moved).is_some());
        }
    }
}
