//! `tether host --config host.toml`: a host bridge (the virtual root complex) in its
//! group. It enumerates every device that arrives by hot-plug (BARs assigned, MSI-X
//! or MSI set up), forgets it on hot-remove, serves the devices' DMA from its memory,
//! and optionally checks each memdev with verified DMA copies. It runs until
//! SIGINT/SIGTERM and logs what happens on stdout.
//!
//! One box at a time: the bridge follows the box of the first device it gets, and
//! logs (and leaves alone) devices offered by other boxes while it has one.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fabric::FabricEvent;
use hostbridge::{FabricLink, MemDevDriver};
use rootcomplex::Host;
use tlp::Bdf;
use wire::MacAddr;

use crate::config_file::HostConfig;
use crate::{bridge, print, signals, workload};

/// Every counter of the host.
fn stats(h: &Host<FabricLink>, gid: u16) -> serde_json::Value {
    let fp = h.link().fabric();
    let node = fp.node();
    serde_json::json!({
        "role": "host",
        "gid": gid,
        "mac": node.config().mac.to_string(),
        "bridge_id": format!("{:#x}", node.config().bridge_id),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "root_complex": h.bridge().stats(),
        "host": h.stats(),
        "stray_tlps": h.link().stats().stray,
        "link": h.link().stats(),
        "box": h.link().target().map(|(_, m)| m.to_string()),
        "devices": h.devices().iter().map(|d| serde_json::json!({
            "bdf": d.bdf.to_string(),
            "vendor": format!("{:04x}", d.vendor),
            "device": format!("{:04x}", d.device),
            "bars": d.bars.iter().map(|b| serde_json::json!({
                "index": b.index, "address": format!("{:#x}", b.address), "size": b.size,
            })).collect::<Vec<_>>(),
            "irq": format!("{:?}", d.irq),
        })).collect::<Vec<_>>(),
        "sessions": print::sessions_json(node),
    })
}

struct HostBridge {
    cfg: HostConfig,
    h: Host<FabricLink>,
}

impl HostBridge {
    fn bdf(slot: u8) -> Bdf {
        Bdf::new(1, slot, 0).expect("slots are 0..=31")
    }

    /// A device offered in our group: enumerate it (and check it, if asked).
    fn plug(&mut self, peer: MacAddr, device: wire::DeviceInfo) {
        match self.h.link().target() {
            Some((_, m)) if m != peer && !self.h.devices().is_empty() => {
                println!("  left alone: this host bridge serves one box at a time (it has {m})");
                return;
            }
            _ => self.h.link_mut().set_target(self.cfg.gid, peer),
        }
        let bdf = Self::bdf(device.slot);
        // A device that was here before (its box restarted) starts over.
        self.h.remove(bdf);
        match self.h.enumerate(bdf) {
            Ok(d) => println!("  enumerated {}", print::lspci_line(&d)),
            Err(e) => {
                println!("  enumeration of {bdf} failed: {e}");
                return;
            }
        }
        let memdev = (device.vendor_id, device.device_id)
            == (endpoint::memdev::VENDOR_ID, endpoint::memdev::DEVICE_ID);
        if memdev && self.cfg.self_test > 0 {
            let n = self.cfg.self_test as usize;
            let r = MemDevDriver::probe(&mut self.h, bdf)
                .map_err(anyhow::Error::from)
                .and_then(|drv| workload::copies(&mut self.h, &drv, n, 65536, 1, false));
            match r {
                Ok((bytes, took)) => println!(
                    "  self-test: {n} DMA copies verified ({bytes} bytes in {:.3} s)",
                    took.as_secs_f64()
                ),
                Err(e) => println!("  self-test failed: {e:#}"),
            }
        }
    }

    fn unplug(&mut self, slot: u8) {
        let bdf = Self::bdf(slot);
        if self.h.devices().iter().any(|d| d.bdf == bdf) {
            self.h.remove(bdf);
            println!("  {bdf} removed");
        }
    }

    fn handle(&mut self, e: FabricEvent) {
        if let Some(line) = print::describe(&e) {
            println!("{line}");
        }
        let ours =
            |gid: u16, peer: MacAddr, target: Option<(u16, MacAddr)>| target == Some((gid, peer));
        let target = self.h.link().target();
        match e {
            FabricEvent::DeviceAdded { gid, peer, device } if gid == self.cfg.gid => {
                self.plug(peer, device)
            }
            FabricEvent::DeviceRemoved { gid, peer, slot } if ours(gid, peer, target) => {
                self.unplug(slot)
            }
            // A box that restarted before anyone saw it go: its devices were reset by
            // the restart, so they are enumerated again.
            FabricEvent::PeerRestarted { gid, peer, .. } if ours(gid, peer, target) => {
                let devices: Vec<wire::DeviceInfo> = self
                    .h
                    .link()
                    .fabric()
                    .node()
                    .peers()
                    .find(|p| (p.0, p.1) == (gid, peer))
                    .map(|p| p.4.to_vec())
                    .unwrap_or_default();
                for d in devices {
                    self.plug(peer, d);
                }
            }
            _ => {}
        }
    }
}

pub fn run(path: &Path) -> Result<()> {
    let cfg = HostConfig::load(path)?;
    signals::install();
    let (port, what) = bridge::open_port(cfg.port.kind, &cfg.port.interface)
        .with_context(|| format!("opening {}", cfg.port.interface))?;
    let link = bridge::host_link(&cfg, port, &format!("{what}; waiting for devices"))?;
    let control = bridge::control_socket(&cfg.bridge)?;
    let h = workload::root_complex_with(
        hostbridge::settings::root_complex_config(cfg.max_payload),
        link,
        cfg.memory.base,
        cfg.memory.size as usize,
    )?;
    let mut hb = HostBridge { cfg, h };
    let mut served = Instant::now();
    while !signals::stop_requested() {
        hb.h.run_for(Duration::from_millis(5));
        while let Some(e) = hb.h.link_mut().events.pop_front() {
            hb.handle(e);
        }
        if let Some(c) = &control {
            if served.elapsed() >= Duration::from_millis(10) {
                c.serve(|_| stats(&hb.h, hb.cfg.gid));
                served = Instant::now();
            }
        }
    }
    let f = hb.h.link().fabric().node().stats();
    let b = hb.h.bridge().stats();
    println!(
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
