//! `tether host --config host.toml`: a host bridge (the virtual root complex and its
//! virtual switch) in its group. Every device offered in the group, by any number of
//! boxes, gets a port of the switch and is enumerated behind it (BARs in the port's
//! windows, MSI-X or MSI set up); a device that leaves is forgotten and its port
//! reused. It serves the devices' DMA from its memory, optionally checks each memdev
//! with verified DMA copies, and runs until SIGINT/SIGTERM, logging on standard error.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostbridge::host_bridge::{Change, HostBridge, HostBridgeConfig};
use hostbridge::MemDevDriver;
use tracing::{info, warn};

use crate::config_file::HostConfig;
use crate::{bridge, print, signals, workload};

/// How long a device may take to leave before its port is quarantined. A driver here
/// lets go at once; this only bounds a bug.
const LEAVE_TIMEOUT_US: u64 = 5_000_000;

/// The target of the host bridge's own log events.
const T: &str = "tether::host";

/// Every counter of the host.
fn stats(hb: &HostBridge) -> serde_json::Value {
    let h = hb.host();
    let fp = h.link().fabric();
    let node = fp.node();
    let router = hb.router();
    serde_json::json!({
        "role": "host",
        "gid": hb.gid(),
        "mac": node.config().mac.to_string(),
        "bridge_id": format!("{:#x}", node.config().bridge_id),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "root_complex": h.bridge().stats(),
        "host": h.stats(),
        "link": h.link().stats(),
        "switch": {
            "ports": router.switch().capacity(),
            "in_use": router.switch().live_ports().count(),
            "stats": router.switch().stats(),
        },
        "routing": router.stats(),
        "hotplug": hb.hotplug().stats(),
        "host_bridge": hb.stats(),
        "devices": hb.devices().map(|(v, info)| serde_json::json!({
            "box": v.key.mac.to_string(),
            "slot": v.key.slot,
            "generation": v.gen.0,
            "phase": format!("{:?}", v.phase),
            "port": v.port.map(|p| p.index()),
            "bdf": info.map(|d| d.bdf.to_string()),
            "vendor": info.map(|d| format!("{:04x}", d.vendor)),
            "device": info.map(|d| format!("{:04x}", d.device)),
            "bars": info.map(|d| d.bars.iter().map(|b| serde_json::json!({
                "index": b.index, "address": format!("{:#x}", b.address), "size": b.size,
            })).collect::<Vec<_>>()),
            "irq": info.map(|d| format!("{:?}", d.irq)),
        })).collect::<Vec<_>>(),
        "sessions": print::sessions_json(node),
    })
}

/// The self-test's copies go through this many bytes at most.
const SELF_TEST_MAX: usize = 65536;

/// Runs `n` verified DMA copies through the memdev at `bdf`, in the program's one
/// pair of copy buffers (taken from the DMA area at the first self-test and kept:
/// the area is never given back, and a host gets devices again and again).
fn self_test(hb: &mut HostBridge, bufs: &mut Option<workload::CopyBuffers>, bdf: tlp::Bdf, n: u32) {
    let h = hb.host_mut();
    let r = MemDevDriver::probe(h, bdf)
        .map_err(anyhow::Error::from)
        .and_then(|drv| {
            let b = match *bufs {
                Some(b) => b,
                None => *bufs.insert(workload::CopyBuffers::alloc(h, SELF_TEST_MAX)?),
            };
            workload::copies_in(h, &drv, &b, n as usize, 1, false)
        });
    match r {
        Ok((bytes, took)) => info!(
            target: T,
            "self-test: {n} DMA copies verified through {bdf} ({bytes} bytes in {:.3} s)",
            took.as_secs_f64()
        ),
        Err(e) => warn!(target: T, "self-test of {bdf} failed: {e:#}"),
    }
}

/// Logs a change and does what it asks: a device is attached to its driver (the
/// self-test) and let go of at once.
fn handle(
    hb: &mut HostBridge,
    cfg: &HostConfig,
    bufs: &mut Option<workload::CopyBuffers>,
    log: &mut print::FabricLog,
    c: Change,
) {
    match c {
        Change::Fabric(e) => log.log(Instant::now(), &e),
        Change::Unaddressable { key } => {
            warn!(target: T, "left alone: {key}: a slot number above 31 is no device number")
        }
        Change::Enumerated { port, info, .. } => {
            info!(target: T, "enumerated on port {port}: {}", print::lspci_line(&info))
        }
        Change::EnumerationFailed {
            key, port, error, ..
        } => warn!(target: T, "enumeration of {key} on port {port} failed: {error}"),
        Change::Attach { key, gen, bdf, .. } => {
            let memdev = hb.host().devices().iter().any(|d| {
                d.bdf == bdf
                    && (d.vendor, d.device)
                        == (endpoint::memdev::VENDOR_ID, endpoint::memdev::DEVICE_ID)
            });
            if memdev && cfg.self_test > 0 {
                self_test(hb, bufs, bdf, cfg.self_test);
            }
            hb.attached(key, gen);
        }
        Change::Detach {
            key,
            gen,
            bdf,
            surprise,
            ..
        } => {
            let how = if surprise {
                "surprise removal"
            } else {
                "removed"
            };
            info!(target: T, "{bdf} ({key}): {how}");
            hb.detached(key, gen);
        }
        Change::Freed { .. } => {}
    }
}

pub fn run(path: &Path) -> Result<()> {
    let cfg = HostConfig::load(path)?;
    signals::install();
    let (port, what) = bridge::open_port(cfg.port.kind, &cfg.port.interface)
        .with_context(|| format!("opening {}", cfg.port.interface))?;
    let link = bridge::switched_host_link(
        &cfg,
        port,
        &format!(
            "{what}; a switch of {} ports; waiting for devices",
            cfg.max_devices
        ),
    )?;
    let mut endpoints = bridge::endpoints(&cfg.bridge)?;
    let h = workload::root_complex_with(
        hostbridge::settings::root_complex_config(cfg.max_payload),
        link,
        cfg.memory.base,
        cfg.memory.size as usize,
    )?;
    let mut hb = HostBridge::new(
        HostBridgeConfig {
            gid: cfg.gid,
            leave_timeout: LEAVE_TIMEOUT_US,
        },
        h,
    )?;
    let mut changes = Vec::new();
    let mut bufs = None;
    let mut log = print::FabricLog::default();
    while !signals::stop_requested() {
        hb.poll(Duration::from_millis(1), &mut changes);
        for c in changes.drain(..) {
            handle(&mut hb, &cfg, &mut bufs, &mut log, c);
        }
        log.log_summary(Instant::now(), || hb.host().link().fabric().node().stats());
        endpoints.serve(|cmd| match cmd {
            "tree" => serde_json::json!({ "tree": print::switch_tree(&hb) }),
            _ => stats(&hb),
        });
    }
    let f = hb.host().link().fabric().node().stats();
    let b = hb.host().bridge().stats();
    info!(
        target: T,
        "tether host: stopped; {} frames in, {} out; {} requests, {} completion timeouts, {} DMA reads, {} DMA writes, {} refused",
        f.frames_in,
        f.frames_out,
        b.requests,
        b.completion_timeouts,
        b.dma_reads,
        b.dma_writes,
        b.dma_read_refused + b.dma_write_dropped
    );
    Ok(())
}
