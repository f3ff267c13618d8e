//! `tether demo`: the whole system on one machine. As root: three network namespaces
//! (an I/O box and two hosts) on a Linux bridge over veth, created here and removed at
//! the end. Without root: the same over an in-memory segment, and it says so.
//!
//! The box holds a memdev in group 10. Host A finds it by its INFO, enumerates it,
//! runs verified DMA copies through it with a progress bar, measures MMIO read round
//! trips, prints throughput, latency percentiles and the efe session's counters, then
//! moves the device to group 20, where host B gets it by hot-plug and uses it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::netns::Rig;
use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
use dataplane::ports::mem;
use dataplane::{Mempool, Port};
use endpoint::memdev;
use fabric::{FabricEvent, Node, NodeConfig};
use rootcomplex::{BarWindows, BridgeConfig, Host, MemoryMap};
use runtime::{FabricLink, FabricPort, IoBox, MemDevDriver, Slot};
use tlp::Bdf;
use wire::{BridgeRole, MacAddr};

const GID_A: u16 = 10;
const GID_B: u16 = 20;
const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PortKind {
    /// AF_XDP, falling back to AF_PACKET where it cannot be set up.
    Auto,
    AfXdp,
    AfPacket,
    /// In-memory ports, no kernel network (what runs without root).
    Memory,
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
    #[arg(long, value_enum, default_value_t = PortKind::Auto)]
    pub port: PortKind,
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

fn open_port(kind: PortKind, name: &str) -> Result<(Box<dyn Port>, String)> {
    // Each port has a pool of its own (an AF_XDP port registers its pool as UMEM).
    let pool = Mempool::new(16384, 2048)?;
    if kind != PortKind::AfPacket {
        match AfXdpPort::open(name, &pool, XdpConfig::default()) {
            Ok(p) => {
                let mode = p.mode().to_string();
                return Ok((Box::new(p), format!("AF_XDP ({mode})")));
            }
            Err(e) if kind == PortKind::AfXdp => return Err(e.into()),
            Err(e) => eprintln!("  AF_XDP on {name} not available ({e}); using AF_PACKET"),
        }
    }
    // Frame slots (TPACKET_V2): handed over one by one, as request/response wants.
    let p = AfPacketPort::open(name, &pool, RingConfig::low_latency())?;
    Ok((Box::new(p), "AF_PACKET (TPACKET_V2 frame ring)".into()))
}

fn segment(kind: PortKind) -> Result<Segment> {
    if kind == PortKind::Memory || !is_root() {
        if kind != PortKind::Memory {
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
        let (p, k) = rig.within(*h, move || open_port(kind, inner))?;
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
    let epoch = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as u32)
        .max(1);
    let mut cfg = NodeConfig::new(MacAddr(port.info().mac), role, id, epoch);
    cfg.info_interval_us = 50_000;
    // Three bridges busy-poll on this one machine: a thread can be off the CPU for a
    // while, which must not look like a dead peer (0.5 s of silence does).
    cfg.missed_infos = 10;
    Ok(Node::new(cfg)?)
}

fn host(port: Box<dyn Port>, gid: u16, id: u64) -> Result<FabricLink> {
    let mut n = node(&*port, BridgeRole::Host, id)?;
    n.join(gid)?;
    Ok(FabricLink::new(FabricPort::new(n, port)))
}

fn root_complex(link: FabricLink) -> Result<Host<FabricLink>> {
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE]))?;
    Ok(Host::new(
        BridgeConfig::default(),
        mem,
        (RAM, RAM_SIZE as u64),
        BarWindows::default(),
        link,
    ))
}

/// Finds the device in `gid`, points the link at its box and enumerates it.
fn attach(link: &mut FabricLink, gid: u16) -> Result<(MacAddr, Bdf)> {
    let (peer, dev) = link
        .wait_for_device(gid, Duration::from_secs(10))
        .ok_or_else(|| anyhow!("no device was announced in group {gid} within 10 s"))?;
    link.set_target(gid, peer);
    Ok((peer, Bdf::new(1, dev.slot, 0).expect("slot < 32")))
}

fn lspci_line(d: &rootcomplex::DeviceInfo) -> String {
    let mut s = format!(
        "{} Memory controller [{:02x}{:02x}]: Device {:04x}:{:04x} (rev {:02x})",
        d.bdf, d.class.0, d.class.1, d.vendor, d.device, d.revision
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

/// Random verified copies through the device: `count` of them, sizes 1..=max.
fn copies(
    host: &mut Host<FabricLink>,
    drv: &MemDevDriver,
    count: usize,
    max: usize,
    seed: u64,
    progress: bool,
) -> Result<(u64, Duration)> {
    let mut rng = netem::Rng::new(seed);
    let max = max.clamp(1, drv.buffer_size as usize);
    let src = host.alloc_dma(max + 64)?;
    let dst = host.alloc_dma(max + 64)?;
    let tty = std::io::stderr().is_terminal();
    let (mut bytes, start) = (0u64, Instant::now());
    let mut last_shown = Instant::now();
    for i in 0..count {
        let len = 1 + (rng.next_u64() as usize % max);
        let (so, d_o) = (rng.next_u64() % 64, rng.next_u64() % 64);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        drv.copy_checked(
            host,
            src.addr + so,
            dst.addr + d_o,
            &data,
            Duration::from_secs(10),
        )
        .with_context(|| format!("copy {i} of {len} bytes"))?;
        bytes += 2 * len as u64; // read from the host and written back
        let done = i + 1;
        let step = (count / 10).max(1);
        let show = if tty {
            last_shown.elapsed() > Duration::from_millis(100) || done == count
        } else {
            done % step == 0 || done == count
        };
        if progress && show {
            last_shown = Instant::now();
            let width = 30;
            let filled = done * width / count.max(1);
            let rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
            let line = format!(
                "  [{}{}] {done}/{count} copies verified, {rate:.1} MB/s",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            if tty {
                eprint!("\r{line}");
                if done == count {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
        }
    }
    Ok((bytes, start.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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
            move || -> Result<runtime::iobox::IoBoxStats> {
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
            let t = Instant::now();
            let mut h = root_complex(link)?;
            let d = h.enumerate(bdf)?;
            let drv = MemDevDriver::probe(&mut h, bdf)?;
            let (_, took) = copies(&mut h, &drv, 100, 4096, 99, false)?;
            let _ = t;
            Ok((lspci_line(&d), 100, took))
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
    let mut h = root_complex(link)?;
    let d = h.enumerate(bdf)?;
    println!(
        "host A: enumerated\n  {}",
        lspci_line(&d).replace('\n', "\n  ")
    );
    let drv = MemDevDriver::probe(&mut h, bdf)?;

    println!(
        "\nhost A: {} DMA copies through the device (1 B to {} B, random alignment), each verified",
        args.transfers, args.max_size
    );
    let (bytes, took) = copies(&mut h, &drv, args.transfers, args.max_size, args.seed, true)?;
    println!(
        "  {} bytes moved (host -> device -> host) in {:.2} s: {:.1} MB/s",
        bytes,
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6
    );

    let mut lat = Vec::with_capacity(args.mmio_reads);
    for _ in 0..args.mmio_reads {
        let t = Instant::now();
        let v = h.bar_read32(bdf, 0, endpoint::memdev::regs::MAGIC)?;
        lat.push(t.elapsed());
        if v != memdev::MAGIC {
            bail!("MMIO read returned {v:#x}");
        }
    }
    lat.sort();
    println!(
        "\nhost A: MMIO read round trip over {} reads: median {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.9).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
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
