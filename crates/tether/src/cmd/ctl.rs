//! `tether ctl`: the management station.
//!
//! - `list` and `set-group` work on the segment itself, as ExpEther's manager does:
//!   the station of the `manager` crate (a passive [`fabric::Manager`] on an
//!   AF_PACKET socket) reads the INFO frames of every group, and moves a device by
//!   sending its box a CTRL SET_GROUP frame (sent again until the RESULT comes back;
//!   a repeat is harmless). `tether manager` runs the same station as a service. The
//!   interface must see
//!   every VLAN of the segment and must not be one a bridge has AF_XDP on (its XDP
//!   program takes tether's frames away from sockets).
//! - `stats` asks a running bridge over its control socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use manager::Station;
use wire::CtrlStatus;

use crate::{control, print};

#[derive(clap::Subcommand)]
pub enum CtlCommand {
    /// List the bridges and devices heard on the segment, by group.
    List {
        /// Interface on the segment.
        #[arg(short, long)]
        interface: String,
        /// How long to listen for INFO frames, in milliseconds (at least one INFO
        /// interval of the bridges; theirs is 100 ms by default).
        #[arg(long, default_value_t = 300)]
        listen_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The key file of a group whose frames are authenticated: GID=FILE
        /// (repeatable). A keyed group's bridges are heard only with its key.
        #[arg(long = "key", value_name = "GID=FILE")]
        keys: Vec<String>,
    },
    /// Move a device to another group: its old host sees a hot-remove, the hosts of
    /// the new group a hot-plug.
    SetGroup {
        /// Interface on the segment.
        #[arg(short, long)]
        interface: String,
        /// The device: BOX/SLOT, where BOX is the box's bridge id (0xb0c5) or MAC.
        device: String,
        /// The new group (1..=4094; 4093 holds free devices).
        gid: u16,
        /// How long to look for the device and wait for the box's answer, in ms.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// The key file of a group whose frames are authenticated: GID=FILE
        /// (repeatable): the device's group, to find it and to be obeyed there.
        #[arg(long = "key", value_name = "GID=FILE")]
        keys: Vec<String>,
        /// Sign the request with this manager key (`tether key generate-manager`):
        /// boxes with `[bridge] managers` obey only signed requests.
        #[arg(long, value_name = "FILE")]
        sign: Option<PathBuf>,
    },
    /// Print a running host bridge's virtual switch and its devices, as `lspci -tv`
    /// draws a tree (its `[bridge] control` socket).
    Tree {
        /// The host bridge's control socket.
        #[arg(short, long)]
        socket: PathBuf,
    },
    /// Print the counters of a running bridge (its `[bridge] control` socket), once
    /// or every few seconds with their rates.
    Stats {
        /// The bridge's control socket.
        #[arg(short, long)]
        socket: PathBuf,
        /// Print the JSON document as it came.
        #[arg(long)]
        json: bool,
        /// Print a report every SECS seconds, as testpmd's port statistics: the port's
        /// totals and rates (packets, bits per second), then every other counter
        /// that moved, with its rate per second.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        /// With --watch: stop after this many reports (default: until interrupted).
        #[arg(long, requires = "watch", value_name = "N")]
        count: Option<u64>,
    },
}

/// BOX/SLOT: a bridge id (decimal or 0x-hex) or a MAC, and a slot number.
fn parse_device(s: &str) -> Result<(u64, u8)> {
    Ok(manager::parse_device(s)?)
}

/// `GID=FILE` arguments read into group keys.
pub fn read_keys(args: &[String]) -> Result<fabric::GroupKeys> {
    let mut files = std::collections::BTreeMap::new();
    for a in args {
        let (g, f) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--key {a:?}: expected GID=FILE"))?;
        let gid: u16 = g
            .parse()
            .map_err(|_| anyhow!("--key {a:?}: {g:?} is not a group number"))?;
        files.insert(gid, PathBuf::from(f));
    }
    Ok(fabric::keys::read_group_keys(&files)?)
}

fn list(interface: &str, listen: Duration, json: bool, keys: fabric::GroupKeys) -> Result<()> {
    let mut st = Station::open(interface, keys, None)?;
    st.run_for(listen)?;
    let bridges: Vec<_> = st.m.bridges().cloned().collect();
    if json {
        let v: Vec<_> = bridges
            .iter()
            .map(|b| {
                serde_json::json!({
                    "gid": b.gid,
                    "mac": b.mac.to_string(),
                    "role": print::role_name(b.role),
                    "bridge_id": format!("{:#x}", b.bridge_id),
                    "mtu": b.mtu,
                    "info_interval_ms": b.interval_ms,
                    "devices": b.devices.iter().map(|d| serde_json::json!({
                        "slot": d.slot,
                        "vendor": format!("{:04x}", d.vendor_id),
                        "device": format!("{:04x}", d.device_id),
                        "class": format!("{:06x}", d.class_code),
                        "revision": d.revision,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if bridges.is_empty() {
        println!(
            "no bridge heard on {interface} in {} ms",
            listen.as_millis()
        );
        return Ok(());
    }
    println!(
        "{:<6} {:<8} {:<18} {:<18} DEVICES",
        "GROUP", "ROLE", "BRIDGE ID", "MAC"
    );
    for b in &bridges {
        let devices = b
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{:#x}/{} {:04x}:{:04x}",
                    b.bridge_id, d.slot, d.vendor_id, d.device_id
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<6} {:<8} {:<18} {:<18} {}",
            b.gid,
            print::role_name(b.role),
            format!("{:#x}", b.bridge_id),
            b.mac.to_string(),
            if devices.is_empty() {
                "-".into()
            } else {
                devices
            }
        );
    }
    Ok(())
}

fn set_group(
    interface: &str,
    device: &str,
    gid: u16,
    timeout: Duration,
    keys: fabric::GroupKeys,
    signer: Option<fabric::keys::ManagerSigner>,
) -> Result<()> {
    let (box_id, slot) = parse_device(device)?;
    if !wire::valid_gid(gid) {
        bail!("group {gid} is not a valid GID (1..=4094)");
    }
    let mut st = Station::open(interface, keys, signer)?;
    let end = Instant::now() + timeout;
    let (from, mac, id) = loop {
        if let Some(found) = st.m.find_device(box_id, slot) {
            break found;
        }
        if Instant::now() >= end {
            bail!(
                "no box announces {device} on {interface} (listened {} ms)",
                timeout.as_millis()
            );
        }
        st.run_for(Duration::from_millis(20))?;
    };
    if from == gid {
        println!("{device} is in group {gid} already");
        return Ok(());
    }
    // CTRL frames are not carried by a session: ask again until the box answers.
    let device_now = manager::station::Located {
        gid: from,
        box_mac: mac,
        box_id: id,
        slot,
    };
    let mut mv = manager::PendingMove::new(device_now, gid, end);
    let status = loop {
        if let Some(s) = st.poll_result(&mv) {
            break s;
        }
        st.forget_events();
        if Instant::now() >= end {
            bail!(
                "box {mac} did not answer the SET_GROUP request (a box with [bridge] managers \
                 obeys only requests signed with one of their keys: --sign)"
            );
        }
        mv.poll_resend(&mut st, Instant::now())?;
        st.pump(Duration::from_millis(10))?;
    };
    if status != CtrlStatus::Ok {
        bail!("box {mac} refused to move slot {slot}: {status:?}");
    }
    println!("moved {device} (box {mac}) from group {from} to group {gid}");
    Ok(())
}

/// The leaves of a stats document by path (`a.b.0.c`), the way `ethtool -S` lists
/// counters.
fn leaves<'a>(
    prefix: &str,
    v: &'a serde_json::Value,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                leaves(&key(k), x, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves(&key(&i.to_string()), x, out);
            }
        }
        other => out.push((prefix.to_string(), other)),
    }
}

/// `a.b.c: value` lines.
fn flatten(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    leaves("", v, &mut out);
    out.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect()
}

/// The numbers of a stats document by path.
fn numbers(v: &serde_json::Value) -> std::collections::BTreeMap<String, f64> {
    let mut out = Vec::new();
    leaves("", v, &mut out);
    out.into_iter()
        .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
        .collect()
}

/// One report of `stats --watch`, in the manner of testpmd's `show port stats`: the
/// port's totals, its rates since the last report, then every other number that
/// moved (counters with their rate per second, gauges with their value).
fn watch_report(
    doc: &serde_json::Value,
    now: &std::collections::BTreeMap<String, f64>,
    before: Option<(&std::collections::BTreeMap<String, f64>, f64)>,
) -> String {
    use std::fmt::Write;
    let get = |k: &str| now.get(k).copied().unwrap_or(0.0);
    let rate = |k: &str| {
        before.map(|(b, secs)| (get(k) - b.get(k).copied().unwrap_or(0.0)).max(0.0) / secs)
    };
    let who = format!(
        "{} {} ({})",
        doc["role"].as_str().unwrap_or("bridge"),
        doc["mac"].as_str().unwrap_or("?"),
        doc["bridge_id"].as_str().unwrap_or("?")
    );
    let mut s = String::new();
    let _ = writeln!(s, "  ######## statistics of {who} ########");
    let _ = writeln!(
        s,
        "  RX-packets: {:<12} RX-dropped: {:<12} RX-bytes: {}",
        get("port.rx_packets"),
        get("port.rx_dropped"),
        get("port.rx_bytes")
    );
    let _ = writeln!(
        s,
        "  RX-nombuf:  {:<12} RX-errors:  {}",
        get("port.rx_nombuf"),
        get("port.rx_errors")
    );
    let _ = writeln!(
        s,
        "  TX-packets: {:<12} TX-busy:    {:<12} TX-bytes: {}",
        get("port.tx_packets"),
        get("port.tx_busy"),
        get("port.tx_bytes")
    );
    let _ = writeln!(s, "  TX-errors:  {}", get("port.tx_errors"));
    if let (Some(rx), Some(rxb), Some(tx), Some(txb)) = (
        rate("port.rx_packets"),
        rate("port.rx_bytes"),
        rate("port.tx_packets"),
        rate("port.tx_bytes"),
    ) {
        let _ = writeln!(s, "\n  Throughput (since last show)");
        let _ = writeln!(
            s,
            "  Rx-pps: {:>12.0}          Rx-bps: {:>14.0}",
            rx,
            rxb * 8.0
        );
        let _ = writeln!(
            s,
            "  Tx-pps: {:>12.0}          Tx-bps: {:>14.0}",
            tx,
            txb * 8.0
        );
        let moved: Vec<String> = now
            .iter()
            .filter(|(k, _)| !k.starts_with("port."))
            .filter_map(|(k, v)| {
                let leaf = k.rsplit('.').next().unwrap_or(k);
                let old = before.and_then(|(b, _)| b.get(k).copied());
                if old == Some(*v) {
                    return None;
                }
                Some(if crate::metrics::GAUGES.contains(&leaf) {
                    format!("    {k:<48} {v:>14} (now)")
                } else {
                    format!("    {k:<48} {v:>14} {:>12.1}/s", rate(k).unwrap_or(0.0))
                })
            })
            .collect();
        if !moved.is_empty() {
            let _ = writeln!(s, "\n  Moved since last show (total, per second):");
            for l in moved {
                let _ = writeln!(s, "{l}");
            }
        }
    }
    let _ = writeln!(s, "  ################################################");
    s
}

/// `stats --watch SECS`: a report every `every` (`count` of them, or until the
/// bridge goes away or the command is interrupted).
fn watch(socket: &std::path::Path, every: Duration, count: Option<u64>) -> Result<()> {
    use std::io::Write;
    let mut before: Option<(std::collections::BTreeMap<String, f64>, Instant)> = None;
    let mut n = 0u64;
    loop {
        let doc = control::request(socket, "stats")?;
        let at = Instant::now();
        let now = numbers(&doc);
        let prev = before
            .as_ref()
            .map(|(b, t)| (b, at.duration_since(*t).as_secs_f64().max(1e-6)));
        let mut out = std::io::stdout().lock();
        write!(out, "{}", watch_report(&doc, &now, prev))?;
        out.flush()?;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        before = Some((now, at));
        std::thread::sleep(every.saturating_sub(at.elapsed()));
    }
}

pub fn run(cmd: CtlCommand) -> Result<()> {
    match cmd {
        CtlCommand::List {
            interface,
            listen_ms,
            json,
            keys,
        } => list(
            &interface,
            Duration::from_millis(listen_ms),
            json,
            read_keys(&keys)?,
        ),
        CtlCommand::SetGroup {
            interface,
            device,
            gid,
            timeout_ms,
            keys,
            sign,
        } => set_group(
            &interface,
            &device,
            gid,
            Duration::from_millis(timeout_ms),
            read_keys(&keys)?,
            sign.as_deref()
                .map(fabric::keys::ManagerSigner::read)
                .transpose()?,
        ),
        CtlCommand::Tree { socket } => {
            let v = control::request(&socket, "tree")?;
            for l in v["tree"].as_array().into_iter().flatten() {
                println!("{}", l.as_str().unwrap_or_default());
            }
            Ok(())
        }
        CtlCommand::Stats {
            socket,
            json,
            watch: Some(secs),
            count,
        } => {
            if json {
                bail!("--watch prints reports, not JSON: leave out --json");
            }
            if !(secs.is_finite() && (0.1..=3600.0).contains(&secs)) {
                bail!("--watch {secs}: the period must be 0.1 to 3600 seconds");
            }
            watch(&socket, Duration::from_secs_f64(secs), count)
        }
        CtlCommand::Stats {
            socket,
            json,
            watch: None,
            ..
        } => {
            let v = control::request(&socket, "stats")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for l in flatten(&v) {
                    println!("{l}");
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch report: the port's totals, then rates over the interval; of the
    /// rest only what moved, counters with a rate, gauges with their value.
    #[test]
    fn watch_reports_rates_of_what_moved() {
        let doc = |rx: u64, frames: u64, srtt: u64| {
            serde_json::json!({
                "role": "host", "mac": "02:00:00:00:00:0a", "bridge_id": "0xa",
                "port": { "rx_packets": rx, "rx_bytes": rx * 100, "tx_packets": 3, "tx_bytes": 300 },
                "fabric": { "frames_in": frames, "bad_frames": 0 },
                "sessions": [ { "gid": 10, "efe": { "srtt_us": srtt } } ],
            })
        };
        let (a, b) = (doc(1000, 50, 20), doc(3000, 250, 30));
        let first = watch_report(&a, &numbers(&a), None);
        assert!(
            first.contains("statistics of host 02:00:00:00:00:0a (0xa)"),
            "{first}"
        );
        assert!(first.contains("RX-packets: 1000"), "{first}");
        assert!(!first.contains("Throughput"), "{first}");
        let na = numbers(&a);
        let second = watch_report(&b, &numbers(&b), Some((&na, 2.0)));
        // 2000 packets and 200 000 bytes in 2 s.
        assert!(second.contains("Rx-pps:         1000"), "{second}");
        assert!(second.contains("Rx-bps:         800000"), "{second}");
        assert!(second.contains("Tx-pps:            0"), "{second}");
        let line = |k: &str| {
            second
                .lines()
                .find(|l| l.contains(k))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("fabric.frames_in").ends_with("100.0/s"), "{second}");
        assert!(
            line("sessions.0.efe.srtt_us").ends_with("30 (now)"),
            "{second}"
        );
        assert_eq!(line("fabric.bad_frames"), "", "{second}");
    }

    #[test]
    fn counters_flatten_like_ethtool() {
        let v = serde_json::json!({"port": {"rx_packets": 3}, "role": "host", "sessions": [{"gid": 10}]});
        assert_eq!(
            flatten(&v),
            vec!["port.rx_packets: 3", "role: host", "sessions.0.gid: 10"]
        );
    }
}
