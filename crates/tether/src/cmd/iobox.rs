//! `tether iobox --config box.toml`: an I/O box. Its devices wait in their groups
//! until a host there uses them; it runs until SIGINT/SIGTERM and logs the fabric's
//! events (peers, group changes) on standard error (`crate::log`).

use std::path::Path;
use std::time::{Duration, Instant};

use ::iobox::netback::{PacketBackend, TapBackend, TapConfig};
use ::iobox::{IoBox, Slot};
use anyhow::{bail, Context, Result};
use endpoint::virtio::blk::{BlockBackend, FileBackend};
use wire::BridgeRole;

use crate::config_file::{BoxConfig, DeviceConfig, Model};
use crate::{bridge, print, signals};

/// The backing file of a virtio-blk device, opened as the box uses it and checked: a
/// whole number of 512-byte sectors.
pub fn open_disk(d: &DeviceConfig) -> Result<FileBackend> {
    let path = d.path.as_deref().context("virtio-blk needs a path")?;
    let disk = FileBackend::open(path, d.read_only)
        .with_context(|| format!("slot {}: opening {}", d.slot, path.display()))?;
    if disk.len() % 512 != 0 || disk.is_empty() {
        bail!(
            "slot {}: {} is {} bytes, not a whole number of 512-byte sectors",
            d.slot,
            path.display(),
            disk.len()
        );
    }
    Ok(disk)
}

fn slot(d: &DeviceConfig) -> Result<Slot> {
    Ok(match d.model {
        Model::Memdev => Slot::memdev(d.slot, d.gid, d.buffer_size as usize)?,
        Model::VirtioBlk => {
            let disk = open_disk(d)?;
            let serial = d
                .serial
                .clone()
                .unwrap_or_else(|| format!("tether-{}", d.slot));
            Slot::virtio_blk(d.slot, d.gid, disk, &serial, d.rings())?
        }
        Model::VirtioNet => {
            let mac = d.mac.context("virtio-net needs a mac")?.0;
            // Both backends pass the virtio-net header: offloads are offered.
            match (&d.tap, &d.interface) {
                (Some(tap), _) => {
                    let cfg = TapConfig {
                        name: tap.clone(),
                        bridge: d.bridge.clone(),
                    };
                    let b = TapBackend::open(&cfg)
                        .with_context(|| format!("slot {}: TAP {tap}", d.slot))?;
                    Slot::virtio_net(d.slot, d.gid, b, mac, true, d.rings())?
                }
                (None, Some(interface)) => {
                    let b = PacketBackend::open(interface)
                        .with_context(|| format!("slot {}: interface {interface}", d.slot))?;
                    Slot::virtio_net(d.slot, d.gid, b, mac, true, d.rings())?
                }
                (None, None) => bail!("virtio-net needs a tap or an interface"),
            }
        }
    })
}

/// The configured devices, each in its slot (printed as they are made).
pub fn slots(cfg: &BoxConfig) -> Result<Vec<Slot>> {
    let mut slots = Vec::new();
    for d in &cfg.devices {
        let s = slot(d).with_context(|| format!("device in slot {}", d.slot))?;
        tracing::info!(
            target: "tether::iobox",
            "slot {}: {} ({:04x}:{:04x}) in group {}",
            d.slot,
            model_name(d.model),
            s.info.vendor_id,
            s.info.device_id,
            d.gid
        );
        slots.push(s);
    }
    Ok(slots)
}

pub fn model_name(m: Model) -> &'static str {
    match m {
        Model::Memdev => "memdev",
        Model::VirtioBlk => "virtio-blk",
        Model::VirtioNet => "virtio-net",
    }
}

/// Every counter of the box.
fn stats(b: &IoBox) -> serde_json::Value {
    let fp = b.fabric();
    let node = fp.node();
    serde_json::json!({
        "role": "iobox",
        "mac": node.config().mac.to_string(),
        "bridge_id": format!("{:#x}", node.config().bridge_id),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "iobox": b.stats(),
        "slots": b.slots().iter().map(|s| serde_json::json!({
            "slot": s.info.slot,
            "gid": s.info.gid,
            "vendor": format!("{:04x}", s.info.vendor_id),
            "device": format!("{:04x}", s.info.device_id),
            "function": s.function.stats(),
            "model": s.function.device().counters().into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "sessions": print::sessions_json(node),
    })
}

/// How long a stopping box goes on serving after it told its devices they are
/// leaving (SIGINT/SIGTERM), for their hosts to hear it.
const LEAVE_LINGER: Duration = Duration::from_millis(100);

pub fn run(path: &Path) -> Result<()> {
    let cfg = BoxConfig::load(path)?;
    signals::install();
    let (port, what) = bridge::open_port(cfg.port.kind, &cfg.port.interface)
        .with_context(|| format!("opening {}", cfg.port.interface))?;
    let node = bridge::node(&*port, BridgeRole::IoBox, &cfg.bridge)?;
    tracing::info!(
        target: "tether::iobox",
        "tether iobox: {} (id {:#x}) on {}: {what}",
        node.config().mac,
        node.config().bridge_id,
        cfg.port.interface
    );
    let slots = slots(&cfg)?;
    let mut endpoints = bridge::endpoints(&cfg.bridge)?;
    let fp = bridge::fabric_port(node, port, &cfg.bridge);
    let mut b = IoBox::new(fp, slots);
    let mut log = print::FabricLog::default();
    while !signals::stop_requested() {
        b.poll(Duration::from_millis(1))?;
        let now = Instant::now();
        while let Some(e) = b.events.pop_front() {
            log.log(now, &e);
        }
        log.log_summary(now, || b.fabric().node().stats());
        endpoints.serve(|cmd| match cmd {
            "tree" => serde_json::json!({ "error": "an I/O box has no switch: `tree` is a host bridge's" }),
            _ => stats(&b),
        });
    }
    // The devices' hosts hear of it first (a virtio-net link goes down).
    b.leave(LEAVE_LINGER)?;
    let s = b.stats();
    let f = b.fabric().node().stats();
    tracing::info!(
        target: "tether::iobox",
        "tether iobox: stopped; {} frames in, {} out; {} device resets, {} TLPs unrouted, {} bad frames, {} of other groups",
        f.frames_in, f.frames_out, s.resets, s.unrouted, f.bad_frames, f.other_group
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::netns::Rig;
    use std::process::Command;

    fn config(devices: &str) -> BoxConfig {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let text = format!("[port]\ninterface = \"nbv9\"\n{devices}");
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        BoxConfig::load(f.path()).unwrap()
    }

    fn link(rig: &Rig, i: usize, name: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["-n", rig.ns(i), "link", "show", "dev", name])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// box.toml's virtio-net devices become slots on their backends, in the box's
    /// namespace: a TAP on a bridge, a veth handed over whole.
    #[test]
    fn virtio_net_slots_open_their_backends() {
        let Some(mut rig) = Rig::for_test("virtio_net_slots_open_their_backends", "nbs") else {
            return;
        };
        let (b, p) = (rig.host("box").unwrap(), rig.host("peer").unwrap());
        rig.veth(b, "nbv0", p, "npv0", 1500).unwrap();
        rig.veth(b, "nbv1", p, "npv1", 1500).unwrap();
        rig.bridge(b, "nbbr0", &["nbv0"]).unwrap();
        let cfg = config(
            r#"
[[device]]
slot = 1
model = "virtio-net"
mac = "02:00:00:00:00:01"
tap = "nbtap0"
bridge = "nbbr0"

[[device]]
slot = 2
model = "virtio-net"
mac = "02:00:00:00:00:02"
interface = "nbv1"
packed_ring = true
"#,
        );
        let made = rig
            .within(b, move || slots(&cfg).map_err(|e| format!("{e:#}")))
            .unwrap();
        assert_eq!(made.len(), 2);
        for s in &made {
            assert_eq!((s.info.vendor_id, s.info.device_id), (0x1af4, 0x1041));
            assert_eq!(s.info.class_code, 0x02_0000, "network controller, Ethernet");
        }
        let tap = link(&rig, b, "nbtap0").expect("the slot's TAP");
        assert!(tap.contains("master nbbr0"), "{tap}");
        drop(made);
        assert!(
            link(&rig, b, "nbtap0").is_none(),
            "the TAP went with its slot"
        );

        let cfg = config(
            "[[device]]\nslot = 1\nmodel = \"virtio-net\"\nmac = \"02:00:00:00:00:01\"\ntap = \"nbtap0\"\nbridge = \"nbnone0\"\n",
        );
        let e = rig
            .within(b, move || {
                slots(&cfg).map(|_| ()).map_err(|e| format!("{e:#}"))
            })
            .unwrap_err();
        assert!(
            e.contains("slot 1: TAP nbtap0") && e.contains("no bridge nbnone0"),
            "{e}"
        );
    }
}
