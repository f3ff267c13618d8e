//! `tether ctl`: the management station.
//!
//! - `list` and `set-group` work on the segment itself, as ExpEther's manager does:
//!   a passive [`fabric::Manager`] on an AF_PACKET socket reads the INFO frames of
//!   every group, and moves a device by sending its box a CTRL SET_GROUP frame (sent
//!   again until the RESULT comes back; a repeat is harmless). The interface must see
//!   every VLAN of the segment and must not be one a bridge has AF_XDP on (its XDP
//!   program takes tether's frames away from sockets).
//! - `stats` asks a running bridge over its control socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::{Mempool, Port};
use fabric::{Manager, ManagerEvent};
use wire::{CtrlStatus, MacAddr};

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
    /// Print the counters of a running bridge (its `[bridge] control` socket).
    Stats {
        /// The bridge's control socket.
        #[arg(short, long)]
        socket: PathBuf,
        /// Print the JSON document as it came.
        #[arg(long)]
        json: bool,
    },
}

/// BOX/SLOT: a bridge id (decimal or 0x-hex) or a MAC, and a slot number.
fn parse_device(s: &str) -> Result<(u64, u8)> {
    let (b, slot) = s
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("device {s:?}: expected BOX/SLOT, e.g. 0xb0c5/0"))?;
    let slot: u8 = slot
        .parse()
        .ok()
        .filter(|n| *n < 32)
        .ok_or_else(|| anyhow!("device {s:?}: slot must be 0..=31"))?;
    let id = if let Some(h) = b.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else if b.contains(':') {
        let bytes: Vec<u8> = b
            .split(':')
            .filter_map(|x| u8::from_str_radix(x, 16).ok())
            .collect();
        (bytes.len() == 6 && b.split(':').count() == 6)
            .then(|| fabric::manager::mac_value(MacAddr(bytes.try_into().expect("6 bytes"))))
    } else {
        b.parse().ok()
    };
    let id = id.ok_or_else(|| {
        anyhow!(
            "device {s:?}: box must be a bridge id (0xb0c5, 45253) or a MAC (02:00:00:00:00:01)"
        )
    })?;
    Ok((id, slot))
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

/// The manager on a socket of its own.
struct Station {
    port: AfPacketPort,
    m: Manager,
    start: Instant,
    rx: Vec<dataplane::Mbuf>,
}

impl Station {
    fn open(
        interface: &str,
        keys: fabric::GroupKeys,
        signer: Option<fabric::keys::ManagerSigner>,
    ) -> Result<Station> {
        let pool = Mempool::new(1024, 2048)?;
        let port = AfPacketPort::open(interface, &pool, RingConfig::low_latency())
            .with_context(|| format!("opening {interface}"))?;
        // Its clock starts at 0 now (`start`).
        let mut m = Manager::new(MacAddr(port.info().mac), fabric::fresh_epoch())
            .with_keys(keys)
            .with_wall_offset(fabric::port::wall_clock_us());
        if let Some(s) = signer {
            m = m.with_signer(std::sync::Arc::new(s));
        }
        Ok(Station {
            port,
            m,
            start: Instant::now(),
            rx: Vec::new(),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Sends what the manager has and reads what arrives for up to `d`.
    fn run_for(&mut self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        loop {
            let pool = self.port.pool().clone();
            while let Some(f) = self.m.poll_transmit() {
                let Some(mut b) = pool.get() else { break };
                pool.buf_mut(&mut b)[..f.len()].copy_from_slice(&f);
                pool.set_len(&mut b, f.len());
                let mut v = vec![b];
                self.port.tx_burst(&mut v)?;
                for b in v {
                    pool.put(b);
                }
            }
            self.port.rx_burst(&mut self.rx, 64)?;
            let now = self.now();
            for b in self.rx.drain(..) {
                self.m.handle_frame(now, pool.data(&b), None);
                pool.put(b);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.port.wait_rx(left.min(Duration::from_millis(5)));
        }
    }
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
    let status = 'ask: loop {
        if Instant::now() >= end {
            bail!(
                "box {mac} did not answer the SET_GROUP request (a box with [bridge] managers \
                 obeys only requests signed with one of their keys: --sign)"
            );
        }
        let request = st.m.set_group(from, mac, id, slot, gid)?;
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_millis(200) {
            st.run_for(Duration::from_millis(10))?;
            while let Some(e) = st.m.poll_event() {
                if let ManagerEvent::Result {
                    from: f,
                    request_id,
                    status,
                } = e
                {
                    if f == mac && request_id == request {
                        break 'ask status;
                    }
                }
            }
        }
    };
    if status != CtrlStatus::Ok {
        bail!("box {mac} refused to move slot {slot}: {status:?}");
    }
    println!("moved {device} (box {mac}) from group {from} to group {gid}");
    Ok(())
}

/// `a.b.c: value` lines, the way `ethtool -S` lists counters.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
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
                flatten(&key(k), x, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&key(&i.to_string()), x, out);
            }
        }
        serde_json::Value::String(s) => out.push(format!("{prefix}: {s}")),
        other => out.push(format!("{prefix}: {other}")),
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
        CtlCommand::Stats { socket, json } => {
            let v = control::request(&socket, "stats")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut lines = Vec::new();
                flatten("", &v, &mut lines);
                for l in lines {
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

    #[test]
    fn device_names() {
        assert_eq!(parse_device("0xb0c5/0").unwrap(), (0xb0c5, 0));
        assert_eq!(parse_device("45253/31").unwrap(), (0xb0c5, 31));
        assert_eq!(
            parse_device("02:00:00:00:00:01/2").unwrap(),
            (0x0200_0000_0001, 2)
        );
        for bad in [
            "0xb0c5",
            "0xb0c5/32",
            "0xzz/1",
            "02:00:00:00:01/0",
            "box/1",
            "/1",
        ] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counters_flatten_like_ethtool() {
        let v = serde_json::json!({"port": {"rx_packets": 3}, "role": "host", "sessions": [{"gid": 10}]});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        assert_eq!(
            out,
            vec!["port.rx_packets: 3", "role: host", "sessions.0.gid: 10"]
        );
    }
}
