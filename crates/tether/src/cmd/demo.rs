//! `tether demo`: the whole system on one machine. As root: three network namespaces
//! (an I/O box and two hosts) on a Linux bridge over veth, created here and removed at
//! the end. Without root: the same over an in-memory segment, and it says so.
//!
//! The box holds a memdev in group 10. Host A finds it by its INFO, enumerates it,
//! runs verified DMA copies through it with a progress bar, measures MMIO read round
//! trips, prints throughput, latency percentiles and the efe session's counters, then
//! moves the device to group 20, where host B gets it by hot-plug and uses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::iobox::{IoBox, Slot};
use anyhow::{anyhow, bail, Context, Result};
use dataplane::netns::Rig;
use dataplane::ports::mem;
use dataplane::{Mempool, Port};
use fabric::FabricPort;
use fabric::{FabricEvent, Node};
use hostbridge::{FabricLink, MemDevDriver};
use tlp::Bdf;
use wire::{BridgeRole, MacAddr};

use crate::config_file::{BridgeSettings, PortKind};
use crate::{bridge, print, workload};

const GID_A: u16 = 10;
const GID_B: u16 = 20;
const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoPort {
    /// AF_XDP, falling back to AF_PACKET where it cannot be set up.
    Auto,
    /// AF_XDP zero-copy or copy mode, poll mode; fails where it cannot be set up.
    AfXdp,
    /// AF_PACKET, TPACKET_V2 frame ring, poll mode.
    AfPacket,
    /// In-memory ports, no kernel network (what runs without root).
    Memory,
}

impl DemoPort {
    fn config(self) -> PortKind {
        match self {
            DemoPort::AfXdp => PortKind::AfXdp,
            DemoPort::AfPacket => PortKind::AfPacket,
            DemoPort::Auto | DemoPort::Memory => PortKind::Auto,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// DMA copies host A runs through the device, each verified.
    #[arg(long, default_value_t = 2000)]
    pub transfers: usize,
    /// Largest copy in bytes (sizes are random from 1 up to this).
    #[arg(long, default_value_t = 65536)]
    pub max_size: usize,
    /// MMIO reads timed for the latency percentiles.
    #[arg(long, default_value_t = 2000)]
    pub mmio_reads: usize,
    /// Seed of the random sizes and offsets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Ports to use.
    #[arg(long, value_enum, default_value_t = DemoPort::Auto)]
    pub port: DemoPort,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The segment: ports for the box, host A and host B, and what keeps it alive.
struct Segment {
    ports: Vec<Box<dyn Port>>,
    what: String,
    _rig: Option<Rig>,
}

fn segment(kind: DemoPort) -> Result<Segment> {
    if kind == DemoPort::Memory || !is_root() {
        if kind != DemoPort::Memory {
            println!(
                "not running as root: no network namespaces; running over in-memory ports instead"
            );
        }
        let pool = Mempool::new(32768, 2048)?;
        let ports = mem::hub(&pool, 3, 4096, 1500)
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Port>)
            .collect();
        return Ok(Segment {
            ports,
            what: "an in-memory segment (3 ports on a hub)".into(),
            _rig: None,
        });
    }
    let mut rig = Rig::new("tdemo").context("creating network namespaces")?;
    let sw = rig.host("sw")?;
    let hosts = [rig.host("box")?, rig.host("hosta")?, rig.host("hostb")?];
    let names = [("tbox0", "swbox"), ("tha0", "swa"), ("thb0", "swb")];
    for (h, (inner, outer)) in hosts.iter().zip(names) {
        rig.veth(*h, inner, sw, outer, 1500)?;
    }
    rig.bridge(sw, "br0", &["swbox", "swa", "swb"])?;
    let mut ports = Vec::new();
    let mut kinds = Vec::new();
    for (h, (inner, _)) in hosts.iter().zip(names) {
        let (p, k) = rig.within(*h, move || bridge::open_port(kind.config(), inner))?;
        ports.push(p);
        kinds.push(k);
    }
    kinds.dedup();
    Ok(Segment {
        ports,
        what: format!(
            "3 network namespaces (box, host A, host B) on a Linux bridge over veth; ports: {}",
            kinds.join(", ")
        ),
        _rig: Some(rig),
    })
}

fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Result<Node> {
    bridge::node(
        port,
        role,
        &BridgeSettings {
            id: Some(id),
            info_interval_ms: 50,
            // Three bridges busy-poll on this one machine: a thread can be off the CPU
            // for a while, which must not look like a dead peer (0.5 s of silence does).
            missed_infos: 10,
            ..BridgeSettings::default()
        },
    )
}

fn host(port: Box<dyn Port>, gid: u16, id: u64) -> Result<FabricLink> {
    let mut n = node(&*port, BridgeRole::Host, id)?;
    n.join(gid)?;
    Ok(FabricLink::new(FabricPort::new(n, port)))
}

/// Finds the device in `gid`, points the link at its box and enumerates it.
fn attach(link: &mut FabricLink, gid: u16) -> Result<(MacAddr, Bdf)> {
    let (peer, dev) = link
        .wait_for_device(gid, Duration::from_secs(10))
        .ok_or_else(|| anyhow!("no device was announced in group {gid} within 10 s"))?;
    link.set_target(gid, peer);
    Ok((peer, Bdf::new(1, dev.slot, 0).expect("slot < 32")))
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.transfers == 0 || args.max_size == 0 {
        bail!("--transfers and --max-size must be at least 1");
    }
    println!("tether demo: a memdev in an I/O box, used by host A, then moved to host B");
    let mut seg = segment(args.port)?;
    println!("network: {}", seg.what);
    let hb_port = seg.ports.pop().expect("3 ports");
    let ha_port = seg.ports.pop().expect("3 ports");
    let box_port = seg.ports.pop().expect("3 ports");

    // The I/O box.
    let stop = Arc::new(AtomicBool::new(false));
    let box_node = node(&*box_port, BridgeRole::IoBox, 0xb0c5)?;
    let box_thread = {
        let stop = stop.clone();
        std::thread::Builder::new().name("iobox".into()).spawn(
            move || -> Result<::iobox::IoBoxStats> {
                let mut b = IoBox::new(
                    FabricPort::new(box_node, box_port),
                    vec![Slot::memdev(0, GID_A, 1 << 20)?],
                );
                while !stop.load(Ordering::Relaxed) {
                    b.poll(Duration::from_millis(1))?;
                }
                Ok(b.stats())
            },
        )?
    };

    // Host B waits in group 20 for a device to arrive.
    let hb_thread = std::thread::Builder::new().name("host-b".into()).spawn(
        move || -> Result<(String, usize, Duration)> {
            let mut link = host(hb_port, GID_B, 0xb)?;
            let (_, bdf) = attach(&mut link, GID_B).context("host B")?;
            let mut h = workload::root_complex(link, RAM, RAM_SIZE)?;
            let d = h.enumerate(bdf)?;
            let drv = MemDevDriver::probe(&mut h, bdf)?;
            let (_, took) = workload::copies(&mut h, &drv, 100, 4096, 99, false)?;
            Ok((print::lspci_line(&d), 100, took))
        },
    )?;

    // Host A.
    let mut link = host(ha_port, GID_A, 0xa)?;
    let t = Instant::now();
    let (box_mac, bdf) = attach(&mut link, GID_A).context("host A")?;
    println!(
        "\nhost A: device found in group {GID_A} after {:?} (box {box_mac})",
        t.elapsed()
    );
    let mut h = workload::root_complex(link, RAM, RAM_SIZE)?;
    let d = h.enumerate(bdf)?;
    println!(
        "host A: enumerated\n  {}",
        print::lspci_line(&d).replace('\n', "\n  ")
    );
    let drv = MemDevDriver::probe(&mut h, bdf)?;

    println!(
        "\nhost A: {} DMA copies through the device (1 B to {} B, random alignment), each verified",
        args.transfers, args.max_size
    );
    let (bytes, took) =
        workload::copies(&mut h, &drv, args.transfers, args.max_size, args.seed, true)?;
    println!(
        "  {} bytes moved (host -> device -> host) in {:.2} s: {:.1} MB/s",
        bytes,
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6
    );

    let lat = workload::mmio_round_trips(&mut h, bdf, args.mmio_reads)?;
    println!(
        "\nhost A: MMIO read round trip over {} reads: median {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
        lat.len(),
        workload::percentile(&lat, 0.5).as_secs_f64() * 1e6,
        workload::percentile(&lat, 0.9).as_secs_f64() * 1e6,
        workload::percentile(&lat, 0.99).as_secs_f64() * 1e6,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );
    let node = h.link().fabric().node();
    if let Some(s) = node.session_stats(GID_A, box_mac) {
        println!(
            "host A: efe session: {} frames out ({} data, {} acks), {} in; {} TLPs out, {} in; {} retransmits, {} timeouts, {} NAKs in; srtt {} us, min RTT {} us, rate {:.0} MB/s",
            s.frames_out, s.data_frames_out, s.acks_out, s.frames_in, s.tlps_out, s.tlps_in,
            s.retransmits, s.timeouts, s.naks_in, s.srtt_us, s.min_rtt_us, s.rate_bytes_per_s / 1e6
        );
    }
    let bs = h.bridge().stats();
    println!(
        "host A: bridge: {} requests, {} DMA reads ({} B), {} DMA writes ({} B), {} MSIs, {} refused, {} timeouts",
        bs.requests, bs.dma_reads, bs.dma_read_bytes, bs.dma_writes, bs.dma_write_bytes, bs.msis,
        bs.dma_read_refused + bs.dma_write_dropped, bs.completion_timeouts
    );

    // Move the device to group 20: host A's bridge sends the CTRL request itself.
    let box_id = h
        .link()
        .fabric()
        .node()
        .peers()
        .find(|p| p.1 == box_mac)
        .map(|p| p.3)
        .ok_or_else(|| anyhow!("the box is no longer a peer"))?;
    println!("\nmoving the device from group {GID_A} to group {GID_B}");
    let t = Instant::now();
    let link = h.link_mut();
    link.fabric_mut()
        .node_mut()
        .set_group(GID_A, box_mac, box_id, 0, GID_B)?;
    let mut removed = false;
    while !removed && t.elapsed() < Duration::from_secs(10) {
        link.poll(Duration::from_millis(1));
        removed = link.events.iter().any(|e| {
            matches!(
                e,
                FabricEvent::DeviceRemoved {
                    gid: GID_A,
                    slot: 0,
                    ..
                }
            )
        });
    }
    if !removed {
        bail!("host A did not see the device leave");
    }
    println!("host A: hot-remove after {:?}", t.elapsed());
    // Host A keeps its bridge running (it answers INFO) while host B works.
    let hb = loop {
        if hb_thread.is_finished() {
            break hb_thread.join().map_err(|_| anyhow!("host B panicked"))??;
        }
        h.link_mut().poll(Duration::from_millis(1));
    };
    println!(
        "host B: hot-plug, enumerated\n  {}\nhost B: {} copies verified in {:.2} s",
        hb.0.replace('\n', "\n  "),
        hb.1,
        hb.2.as_secs_f64()
    );

    stop.store(true, Ordering::Relaxed);
    let box_stats = box_thread
        .join()
        .map_err(|_| anyhow!("the box panicked"))??;
    println!(
        "\nbox: {} device resets (the device changed hands), {} TLPs unrouted",
        box_stats.resets, box_stats.unrouted
    );
    drop(h);
    drop(seg);
    println!("done: namespaces and veth removed");
    Ok(())
}
