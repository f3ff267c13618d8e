//! `tether bench`: the end-to-end benchmark. A box with a memdev and a host bridge in
//! two network namespaces joined by one veth pair (made here and removed at the end),
//! for each port kind, TLP size (the Max Payload Size the host programs) and
//! aggregation setting:
//!
//! - MMIO read round trip: median and p99 of reads of a BAR register;
//! - DMA throughput vs transfer size: memdev READ (the device reads host memory: MRd
//!   out, CplD back) and WRITE (the device writes host memory: MWr), each a doorbell,
//!   the transfer and an MSI-X interrupt, repeated for a fixed time per point.
//!
//! With `--load-pair`, a Linux bridge in a fifth namespace joins the box and the host
//! with a second box and host pair (group 11), and the MMIO reads alternate between
//! blocks with the second pair idle and blocks with it running DMA back to back.
//!
//! Reported, never asserted on: numbers on a shared 2-core machine are noisy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::iobox::{IoBox, Slot};
use anyhow::{anyhow, bail, Context, Result};
use dataplane::allocs::{self, Counts};
use dataplane::netns::Rig;
use dataplane::ports::mem;
use dataplane::{Mempool, Port};
use endpoint::memdev;
use fabric::FabricPort;
use hostbridge::{FabricLink, MemDevDriver};
use rootcomplex::{BridgeConfig, Host};
use tlp::{Bdf, MaxSize};
use wire::BridgeRole;

use crate::config_file::{BridgeSettings, PortKind};
use crate::plot::{self, Series};
use crate::{bridge, workload};

const GID: u16 = 10;
/// The second pair's group (`--load-pair`).
const LOAD_GID: u16 = 11;
/// What the second pair runs while it is busy: memdev WRITEs of this size, back to back.
const LOAD_SIZE: usize = 64 << 10;
/// Blocks the MMIO reads are cut into with `--load-pair`, the second pair idle in the
/// even ones and busy in the odd ones.
const LOAD_BLOCKS: usize = 8;
const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 8 << 20;

/// A port to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPort {
    /// AF_XDP, poll mode.
    AfXdp,
    /// AF_PACKET, TPACKET_V2 frame ring, poll mode.
    AfPacket,
    /// One system call per frame, and the bridges sleep in poll(2) when idle: the
    /// conventional kernel path.
    Socket,
    /// In-process memory ports (no kernel network).
    Memory,
}

impl BenchPort {
    fn name(self) -> &'static str {
        match self {
            BenchPort::AfXdp => "af_xdp",
            BenchPort::AfPacket => "af_packet",
            BenchPort::Socket => "socket",
            BenchPort::Memory => "memory",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Ports to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchPort::AfXdp, BenchPort::AfPacket, BenchPort::Socket])]
    pub ports: Vec<BenchPort>,
    /// Transfer sizes in bytes (each 1..=1 MiB).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576])]
    pub sizes: Vec<usize>,
    /// TLP payload sizes (the MPS the host programs): 128, 256, 512.
    #[arg(long, value_delimiter = ',', default_values_t = [128, 256])]
    pub tlp: Vec<u16>,
    /// Measure without aggregation (one TLP per frame) and with it (up to the MTU).
    #[arg(long, value_delimiter = ',', default_values_t = [false, true])]
    pub aggregation: Vec<bool>,
    /// Time spent on each point (at least 3 transfers).
    #[arg(long, default_value_t = 300)]
    pub ms_per_point: u64,
    /// MMIO reads timed per port.
    #[arg(long, default_value_t = 5000)]
    pub mmio_reads: usize,
    /// Link MTU of the veth pair.
    #[arg(long, default_value_t = 1500)]
    pub mtu: usize,
    /// Measure with the group unkeyed (false) and keyed (true: every frame carries
    /// an authentication tag); both (false,true) alternate each configuration and
    /// add a table of what the tags cost.
    #[arg(long, value_delimiter = ',', default_values_t = [false])]
    pub auth: Vec<bool>,
    /// Put the pair on a Linux bridge with a second box and host pair, and time the
    /// MMIO reads in blocks that alternate between the second pair idle and the
    /// second pair running DMA (memdev WRITEs of 64 KiB back to back). Veth ports
    /// only.
    #[arg(long)]
    pub load_pair: bool,
    /// Write the Markdown section and SVG plots into this docs directory
    /// (performance.md between its bench markers, perf-dma-*.svg).
    #[arg(long)]
    pub write_docs: Option<PathBuf>,
}

/// One configuration's results.
struct Run {
    port: BenchPort,
    tlp: u16,
    aggregation: bool,
    auth: bool,
    /// MMIO round trips, sorted (measured once per port, on its first run; with a
    /// second pair, those of the blocks it was idle).
    mmio: Vec<Duration>,
    /// With a second pair: the MMIO round trips of the blocks it ran DMA, sorted,
    /// and its DMA rate over those blocks (MB/s).
    loaded: Option<(Vec<Duration>, f64)>,
    /// (size, read MB/s, write MB/s).
    points: Vec<(usize, f64, f64)>,
    /// The host's session over the throughput part, and the box's over its life.
    host: efe::Stats,
    boxs: efe::Stats,
    /// Heap allocations over the throughput part: the host thread's, the box
    /// thread's, and the TLPs the host sent and received meanwhile.
    allocs: (Counts, Counts, u64),
}

/// A box and a host on two ports.
struct Pair {
    stop: Arc<AtomicBool>,
    /// The box thread's allocation counts, as of its last poll.
    box_allocs: Arc<[AtomicU64; 2]>,
    /// Ends with the box's session counters.
    box_thread: Option<std::thread::JoinHandle<Result<efe::Stats>>>,
    host: Host<FabricLink>,
    bdf: Bdf,
    _rig: Option<Rig>,
}

impl Pair {
    /// The box thread's allocation counts as of its last poll.
    fn box_counts(&self) -> Counts {
        Counts {
            allocations: self.box_allocs[0].load(Ordering::Relaxed),
            bytes: self.box_allocs[1].load(Ordering::Relaxed),
        }
    }

    /// Stops the box; its session's counters.
    fn finish(mut self) -> Result<efe::Stats> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.box_thread.take().expect("running");
        t.join().map_err(|_| anyhow!("the box thread panicked"))?
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.box_thread.take() {
            let _ = t.join();
        }
    }
}

fn settings(
    kind: BenchPort,
    aggregation: bool,
    id: u64,
    keys: &fabric::GroupKeys,
) -> BridgeSettings {
    BridgeSettings {
        group_keys: keys.clone(),
        id: Some(id),
        info_interval_ms: 50,
        missed_infos: 20,
        max_tlps_per_frame: (!aggregation).then_some(1),
        // The socket path sleeps whenever it is idle: its wake-up latency (100-400 µs
        // here) is not a queue, and with the default 50 µs target the rate control
        // held it at a few MB/s. It gets the setting a sleeping bridge needs.
        target_delay_us: if kind == BenchPort::Socket { 500 } else { 50 },
        ..BridgeSettings::default()
    }
}

/// A box's port and its host's.
type PortPair = (Box<dyn Port>, Box<dyn Port>);

/// The pair's ports, the second pair's (`--load-pair`), and the namespaces they live
/// in (none in memory).
struct Ports {
    main: PortPair,
    second: Option<PortPair>,
    rig: Option<Rig>,
}

/// With `second`, the four namespaces hang off a Linux bridge in a fifth, the
/// segment both pairs share; without it, one veth pair joins box and host.
fn ports(kind: BenchPort, mtu: usize, second: bool) -> Result<Ports> {
    if kind == BenchPort::Memory {
        if second {
            bail!("--load-pair needs veth ports (af-xdp, af-packet, socket): memory ports share no segment");
        }
        let pool = Mempool::new(32768, 2048)?;
        let (a, b) = mem::pair(&pool, 4096, mtu);
        return Ok(Ports {
            main: (Box::new(a), Box::new(b)),
            second: None,
            rig: None,
        });
    }
    let mut rig = Rig::new("tbn").context("network namespaces (tether bench needs root)")?;
    let pk = match kind {
        BenchPort::AfXdp => PortKind::AfXdp,
        BenchPort::AfPacket => PortKind::AfPacket,
        _ => PortKind::Socket,
    };
    let open = |rig: &Rig, ns: usize, ifname: &'static str| {
        rig.within(ns, move || bridge::open_port(pk, ifname))
            .map(|(p, _)| p)
    };
    let (bx, h) = (rig.host("box")?, rig.host("host")?);
    if !second {
        rig.veth(bx, "tbnbox", h, "tbnhost", mtu)?;
        let main = (open(&rig, bx, "tbnbox")?, open(&rig, h, "tbnhost")?);
        return Ok(Ports {
            main,
            second: None,
            rig: Some(rig),
        });
    }
    let (bx2, h2, sw) = (rig.host("box2")?, rig.host("host2")?, rig.host("sw")?);
    rig.veth(bx, "tbnbox", sw, "tbnsw0", mtu)?;
    rig.veth(h, "tbnhost", sw, "tbnsw1", mtu)?;
    rig.veth(bx2, "tbnbox2", sw, "tbnsw2", mtu)?;
    rig.veth(h2, "tbnhost2", sw, "tbnsw3", mtu)?;
    rig.bridge(sw, "tbnbr", &["tbnsw0", "tbnsw1", "tbnsw2", "tbnsw3"])?;
    let main = (open(&rig, bx, "tbnbox")?, open(&rig, h, "tbnhost")?);
    let second = (open(&rig, bx2, "tbnbox2")?, open(&rig, h2, "tbnhost2")?);
    Ok(Ports {
        main,
        second: Some(second),
        rig: Some(rig),
    })
}

/// The bench groups' keys when `auth` (fresh random ones), else none.
fn bench_keys(auth: bool) -> Result<fabric::GroupKeys> {
    if !auth {
        return Ok(fabric::GroupKeys::default());
    }
    let mut keys = std::collections::HashMap::new();
    for gid in [GID, LOAD_GID] {
        keys.insert(gid, fabric::keys::random_key()?);
    }
    Ok(Arc::new(keys.into_iter().collect()))
}

/// What one pair is: its group, its bridges' ids, and how it runs.
#[derive(Clone, Copy)]
struct PairSpec {
    kind: BenchPort,
    gid: u16,
    /// The box's bridge id and the host's.
    ids: (u64, u64),
    tlp: u16,
    aggregation: bool,
}

fn pair(
    spec: PairSpec,
    (box_port, host_port): PortPair,
    keys: &fabric::GroupKeys,
    rig: Option<Rig>,
) -> Result<Pair> {
    let PairSpec {
        kind,
        gid,
        ids,
        tlp,
        aggregation,
    } = spec;
    // The conventional path sleeps whenever it is idle; poll mode spins.
    let spin = if kind == BenchPort::Socket {
        Duration::ZERO
    } else {
        Duration::from_millis(2)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let box_allocs: Arc<[AtomicU64; 2]> = Arc::default();
    let box_node = bridge::node(
        &*box_port,
        BridgeRole::IoBox,
        &settings(kind, aggregation, ids.0, keys),
    )?;
    let box_thread = {
        let stop = stop.clone();
        let published = box_allocs.clone();
        std::thread::Builder::new().name("bench-box".into()).spawn(
            move || -> Result<efe::Stats> {
                let mut fp = FabricPort::new(box_node, box_port);
                fp.set_spin(spin);
                let mut b = IoBox::new(fp, vec![Slot::memdev(0, gid, 1 << 20)?]);
                while !stop.load(Ordering::Relaxed) {
                    b.poll(Duration::from_millis(1))?;
                    let c = allocs::thread();
                    published[0].store(c.allocations, Ordering::Relaxed);
                    published[1].store(c.bytes, Ordering::Relaxed);
                }
                let node = b.fabric().node();
                let host = node.peers().find(|p| p.0 == gid).map(|p| p.1);
                Ok(host
                    .and_then(|h| node.session_stats(gid, h))
                    .unwrap_or_default())
            },
        )?
    };
    let mut n = bridge::node(
        &*host_port,
        BridgeRole::Host,
        &settings(kind, aggregation, ids.1, keys),
    )?;
    n.join(gid)?;
    let mut fp = FabricPort::new(n, host_port);
    fp.set_spin(spin);
    let mut link = FabricLink::new(fp);
    let (peer, dev) = link
        .wait_for_device(gid, Duration::from_secs(10))
        .ok_or_else(|| anyhow!("no device announced in group {gid} within 10 s"))?;
    link.set_target(gid, peer);
    let cfg = BridgeConfig {
        max_payload: MaxSize::new(tlp).ok_or_else(|| anyhow!("TLP size {tlp}: not a PCIe size"))?,
        ..BridgeConfig::default()
    };
    let mut host = workload::root_complex_with(cfg, link, RAM, RAM_SIZE)?;
    let bdf = Bdf::new(1, dev.slot, 0).expect("slot < 32");
    host.enumerate(bdf)?;
    Ok(Pair {
        stop,
        box_allocs,
        box_thread: Some(box_thread),
        host,
        bdf,
        _rig: rig,
    })
}

/// MB/s of `op` transfers of `size` bytes, repeated for `time` (at least 3 times).
fn throughput(
    p: &mut Pair,
    drv: &MemDevDriver,
    op: u32,
    size: usize,
    time: Duration,
) -> Result<f64> {
    let (src, dst) = (RAM, RAM + (2 << 20));
    let start = Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < time {
        drv.run(
            &mut p.host,
            op,
            src,
            dst,
            size as u32,
            Duration::from_secs(30),
        )
        .with_context(|| format!("{size}-byte transfer"))?;
        n += 1;
    }
    Ok((n * size as u64) as f64 / start.elapsed().as_secs_f64() / 1e6)
}

fn measure(
    args: &BenchArgs,
    port: BenchPort,
    tlp: u16,
    aggregation: bool,
    auth: bool,
    mmio: bool,
) -> Result<Run> {
    let Ports { main, second, rig } = ports(port, args.mtu, args.load_pair)?;
    let keys = bench_keys(auth)?;
    let spec = |gid, ids| PairSpec {
        kind: port,
        gid,
        ids,
        tlp,
        aggregation,
    };
    let mut p = pair(spec(GID, (0xb0, 0xa)), main, &keys, rig)?;
    let drv = MemDevDriver::probe(&mut p.host, p.bdf)?;
    let (mmio, loaded) = match (mmio, second) {
        (false, _) => (Vec::new(), None),
        (true, None) => (
            workload::mmio_round_trips(&mut p.host, p.bdf, args.mmio_reads)?,
            None,
        ),
        (true, Some(ports)) => {
            let load = Load::start(spec(LOAD_GID, (0xb1, 0xb)), ports, keys.clone())?;
            let (idle, busy) = mmio_under_load(&mut p, args.mmio_reads, &load);
            let rate = load.finish()?;
            (idle?, Some((busy?, rate)))
        }
    };
    let before = session(&p);
    let (host_allocs, box_allocs) = (allocs::thread(), p.box_counts());
    let time = Duration::from_millis(args.ms_per_point);
    let mut points = Vec::new();
    for &size in &args.sizes {
        let r = throughput(&mut p, &drv, memdev::op::READ, size, time)?;
        let w = throughput(&mut p, &drv, memdev::op::WRITE, size, time)?;
        points.push((size, r, w));
    }
    let after = session(&p);
    let allocs = (
        allocs::thread().since(host_allocs),
        p.box_counts().since(box_allocs),
        (after.tlps_out - before.tlps_out) + (after.tlps_in - before.tlps_in),
    );
    let host = efe::Stats {
        data_frames_out: after.data_frames_out - before.data_frames_out,
        tlps_out: after.tlps_out - before.tlps_out,
        retransmits: after.retransmits - before.retransmits,
        timeouts: after.timeouts - before.timeouts,
        ..after
    };
    let boxs = p.finish()?;
    Ok(Run {
        port,
        tlp,
        aggregation,
        auth,
        mmio,
        loaded,
        points,
        host,
        boxs,
        allocs,
    })
}

/// The second pair of `--load-pair`, on its own thread: memdev WRITEs back to back
/// while `busy`, the link kept up otherwise.
struct Load {
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Transfers done so far (the reader waits for the first of a busy block).
    done: Arc<AtomicU64>,
    /// Ends with the bytes moved and the time spent moving them.
    thread: std::thread::JoinHandle<Result<(u64, Duration)>>,
}

impl Load {
    /// Brings the second pair up (its device enumerated and probed) and leaves it idle.
    fn start(spec: PairSpec, ports: PortPair, keys: fabric::GroupKeys) -> Result<Load> {
        let (busy, stop, done) = (
            Arc::<AtomicBool>::default(),
            Arc::<AtomicBool>::default(),
            Arc::<AtomicU64>::default(),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (busy, stop, done) = (busy.clone(), stop.clone(), done.clone());
            std::thread::Builder::new()
                .name("bench-load".into())
                .spawn(move || {
                    let up = pair(spec, ports, &keys, None)
                        .and_then(|mut p| Ok((MemDevDriver::probe(&mut p.host, p.bdf)?, p)));
                    let (drv, mut p) = match up {
                        Ok(v) => {
                            let _ = ready_tx.send(Ok(()));
                            v
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("the second pair: {e:#}")));
                            return Ok((0, Duration::ZERO));
                        }
                    };
                    let (mut bytes, mut time) = (0u64, Duration::ZERO);
                    while !stop.load(Ordering::Relaxed) {
                        if !busy.load(Ordering::Relaxed) {
                            p.host.run_for(Duration::from_millis(1));
                            continue;
                        }
                        let t = Instant::now();
                        drv.run(
                            &mut p.host,
                            memdev::op::WRITE,
                            RAM,
                            RAM + (2 << 20),
                            LOAD_SIZE as u32,
                            Duration::from_secs(30),
                        )
                        .context("the second pair's DMA")?;
                        time += t.elapsed();
                        bytes += LOAD_SIZE as u64;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    p.finish()?;
                    Ok((bytes, time))
                })?
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the second pair's thread ended before it was up"))??;
        Ok(Load {
            busy,
            stop,
            done,
            thread,
        })
    }

    /// Stops it; its DMA rate over the time it was busy, MB/s.
    fn finish(self) -> Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let (bytes, time) = self
            .thread
            .join()
            .map_err(|_| anyhow!("the second pair's thread panicked"))??;
        Ok(bytes as f64 / time.as_secs_f64().max(1e-9) / 1e6)
    }
}

/// `reads` MMIO round trips in [`LOAD_BLOCKS`] blocks, the second pair idle in the
/// even blocks and running DMA in the odd ones (each busy block starts once its first
/// transfer is done): the idle blocks' round trips and the busy blocks', each sorted.
fn mmio_under_load(
    p: &mut Pair,
    reads: usize,
    load: &Load,
) -> (Result<Vec<Duration>>, Result<Vec<Duration>>) {
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    for block in 0..LOAD_BLOCKS {
        let loaded = block % 2 == 1;
        load.busy.store(loaded, Ordering::Relaxed);
        if loaded {
            let from = load.done.load(Ordering::Relaxed);
            let t = Instant::now();
            while load.done.load(Ordering::Relaxed) == from && t.elapsed() < Duration::from_secs(10)
            {
                p.host.run_for(Duration::from_micros(100));
            }
        }
        // The reads shared out: the first blocks take the remainder.
        let n = reads / LOAD_BLOCKS + usize::from(block < reads % LOAD_BLOCKS);
        match workload::mmio_round_trips(&mut p.host, p.bdf, n) {
            Ok(v) if loaded => busy.extend(v),
            Ok(v) => idle.extend(v),
            Err(e) => {
                load.busy.store(false, Ordering::Relaxed);
                return (Err(e), Err(anyhow!("not measured")));
            }
        }
    }
    load.busy.store(false, Ordering::Relaxed);
    idle.sort();
    busy.sort();
    (Ok(idle), Ok(busy))
}

fn session(p: &Pair) -> efe::Stats {
    let node = p.host.link().fabric().node();
    let (gid, peer) = p.host.link().target().expect("attached");
    node.session_stats(gid, peer).unwrap_or_default()
}

fn size_label(b: f64) -> String {
    let b = b as usize;
    if b >= 1 << 20 {
        format!("{}M", b >> 20)
    } else if b >= 1024 {
        format!("{}K", b >> 10)
    } else {
        format!("{b}")
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn label(r: &Run) -> String {
    format!(
        "{} {} B TLPs, {}{}",
        r.port.name(),
        r.tlp,
        if r.aggregation {
            "aggregation"
        } else {
            "1 TLP/frame"
        },
        if r.auth { ", keyed" } else { "" }
    )
}

/// The header of a table with a column per transfer size.
fn size_header(s: &mut String, sizes: &[usize]) {
    let _ = write!(s, "| configuration |");
    for &z in sizes {
        let _ = write!(s, " {} |", size_label(z as f64));
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(sizes.len()));
}

/// The report: tables, ratios and the session counters, as Markdown.
fn report(args: &BenchArgs, runs: &[Run]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "MMIO read round trip ({} reads of a BAR register):\n",
        args.mmio_reads
    );
    let _ = writeln!(
        s,
        "| port | median | p90 | p99 | max |\n|---|---|---|---|---|"
    );
    for r in runs.iter().filter(|r| !r.mmio.is_empty()) {
        let _ = writeln!(
            s,
            "| {}{} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            r.port.name(),
            if r.auth { ", keyed" } else { "" },
            us(workload::percentile(&r.mmio, 0.5)),
            us(workload::percentile(&r.mmio, 0.9)),
            us(workload::percentile(&r.mmio, 0.99)),
            us(*r.mmio.last().unwrap_or(&Duration::ZERO)),
        );
    }
    let loaded: Vec<_> = runs
        .iter()
        .filter_map(|r| r.loaded.as_ref().map(|l| (r, l)))
        .collect();
    if !loaded.is_empty() {
        let _ = writeln!(
            s,
            "\nMMIO read round trip with a second box and host pair on the same segment \
             (the reads in {LOAD_BLOCKS} blocks, alternately with the second pair idle \
             and running memdev WRITEs of {} back to back):\n\n\
             | port | second pair | median | p90 | p99 | max |\n|---|---|---|---|---|---|",
            size_label(LOAD_SIZE as f64)
        );
        for (r, (busy, rate)) in loaded {
            let keyed = if r.auth { ", keyed" } else { "" };
            for (what, v) in [
                ("idle".to_string(), &r.mmio),
                (format!("DMA, {rate:.0} MB/s"), busy),
            ] {
                let _ = writeln!(
                    s,
                    "| {}{keyed} | {what} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
                    r.port.name(),
                    us(workload::percentile(v, 0.5)),
                    us(workload::percentile(v, 0.9)),
                    us(workload::percentile(v, 0.99)),
                    us(*v.last().unwrap_or(&Duration::ZERO)),
                );
            }
        }
    }
    for (dir, pick) in [
        ("READ (device reads host memory)", 1usize),
        ("WRITE (device writes host memory)", 2),
    ] {
        let _ = writeln!(s, "\nDMA throughput, MB/s, memdev {dir}:\n");
        size_header(&mut s, &args.sizes);
        for r in runs {
            let _ = write!(s, "| {} |", label(r));
            for p in &r.points {
                let v = if pick == 1 { p.1 } else { p.2 };
                let _ = write!(s, " {v:.1} |");
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "\nThe efe sessions (host: over the throughput points; box: over the run): TLPs per \
         data frame, retransmitted frames, retransmission timeouts, smoothed and minimum RTT, \
         and the rate-control rate at the end:\n"
    );
    let _ = writeln!(
        s,
        "| configuration | side | data frames | TLPs/frame | retransmits | timeouts | srtt | min RTT | rate |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        for (side, st) in [("host", &r.host), ("box", &r.boxs)] {
            let _ = writeln!(
                s,
                "| {} | {side} | {} | {:.2} | {} | {} | {} µs | {} µs | {:.0} MB/s |",
                label(r),
                st.data_frames_out,
                st.tlps_out as f64 / st.data_frames_out.max(1) as f64,
                st.retransmits,
                st.timeouts,
                st.srtt_us,
                st.min_rtt_us,
                st.rate_bytes_per_s / 1e6
            );
        }
    }
    let _ = writeln!(
        s,
        "\nHeap allocations over the throughput points (steady state: the pair was up \
         and had run its MMIO reads before), per TLP the host sent or received; each \
         bridge is one thread, counted by `tether`'s counting global allocator:\n"
    );
    let _ = writeln!(
        s,
        "| configuration | TLPs | host allocations per TLP | host bytes per TLP | box allocations per TLP | box bytes per TLP |\n|---|---|---|---|---|---|"
    );
    for r in runs {
        let (h, b, tlps) = r.allocs;
        let per = |v: u64| v as f64 / tlps.max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {tlps} | {:.2} | {:.0} | {:.2} | {:.0} |",
            label(r),
            per(h.allocations),
            per(h.bytes),
            per(b.allocations),
            per(b.bytes)
        );
    }
    // Poll mode against the per-packet socket path without aggregation, per size:
    // (READ + WRITE) MB/s over the same of the socket path.
    let find = |port, tlp, agg| {
        runs.iter()
            .find(|r| r.port == port && r.tlp == tlp && r.aggregation == agg && !r.auth)
    };
    let mut ratios = String::new();
    for &tlp in &args.tlp {
        let Some(base) = find(BenchPort::Socket, tlp, false) else {
            continue;
        };
        for port in [BenchPort::AfXdp, BenchPort::AfPacket] {
            for agg in [false, true] {
                let Some(r) = find(port, tlp, agg) else {
                    continue;
                };
                let _ = write!(
                    ratios,
                    "| {} {} B TLPs, {} |",
                    port.name(),
                    tlp,
                    if agg { "aggregation" } else { "1 TLP/frame" }
                );
                for (p, b) in r.points.iter().zip(&base.points) {
                    let _ = write!(ratios, " {:.1}x |", (p.1 + p.2) / (b.1 + b.2).max(1e-9));
                }
                let _ = writeln!(ratios);
            }
        }
    }
    s.push_str(&auth_cost(runs));
    if !ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nPoll mode against the per-packet socket path (1 TLP per frame, same TLP \
             size): READ + WRITE throughput over the socket path's, per transfer size:\n"
        );
        size_header(&mut s, &args.sizes);
        s.push_str(&ratios);
    }
    s
}

/// What the tags cost: each keyed run against the unkeyed run of the same
/// configuration (measured next to it): MMIO median, and throughput at the largest
/// transfer size.
fn auth_cost(runs: &[Run]) -> String {
    let mut rows = String::new();
    for k in runs.iter().filter(|r| r.auth) {
        let Some(p) = runs.iter().find(|r| {
            !r.auth && r.port == k.port && r.tlp == k.tlp && r.aggregation == k.aggregation
        }) else {
            continue;
        };
        let (Some(kp), Some(pp)) = (k.points.last(), p.points.last()) else {
            continue;
        };
        let mmio = if k.mmio.is_empty() || p.mmio.is_empty() {
            "-".to_string()
        } else {
            let (a, b) = (
                us(workload::percentile(&p.mmio, 0.5)),
                us(workload::percentile(&k.mmio, 0.5)),
            );
            format!("{a:.1} / {b:.1} µs ({:+.1} µs)", b - a)
        };
        let _ = writeln!(
            rows,
            "| {} | {mmio} | {:.1} / {:.1} MB/s ({:+.1} %) | {:.1} / {:.1} MB/s ({:+.1} %) |",
            label(p),
            pp.1,
            kp.1,
            (kp.1 / pp.1.max(1e-9) - 1.0) * 100.0,
            pp.2,
            kp.2,
            (kp.2 / pp.2.max(1e-9) - 1.0) * 100.0,
        );
    }
    if rows.is_empty() {
        return rows;
    }
    let size = runs[0].points.last().map_or(0.0, |p| p.0 as f64);
    format!(
        "\nWhat the authentication tags cost: unkeyed / keyed, measured one after the \
         other (MMIO median; READ and WRITE at {}):\n\n\
         | configuration | MMIO read median | READ | WRITE |\n|---|---|---|---|\n{rows}",
        size_label(size)
    )
}

fn plots(args: &BenchArgs, runs: &[Run], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (name, title, pick) in [
        (
            "perf-dma-read.svg",
            "DMA READ throughput (device reads host memory)",
            1usize,
        ),
        (
            "perf-dma-write.svg",
            "DMA WRITE throughput (device writes host memory)",
            2,
        ),
    ] {
        let series: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                name: label(r),
                color: plot::COLORS[(args.ports.iter().position(|p| *p == r.port).unwrap_or(0)
                    * 2
                    + r.aggregation as usize)
                    % plot::COLORS.len()],
                dashed: r.auth || (args.tlp.len() > 1 && r.tlp == args.tlp[0]),
                points: r
                    .points
                    .iter()
                    .map(|p| (p.0 as f64, if pick == 1 { p.1 } else { p.2 }))
                    .collect(),
            })
            .collect();
        let svg = plot::log_x(title, "transfer size (bytes)", "MB/s", size_label, &series);
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    // The MMIO round trips' distribution: one line per port (and keyed, and with the
    // second pair busy), as the fraction of reads done within each time.
    let mut series = Vec::new();
    for (k, r) in runs.iter().filter(|r| !r.mmio.is_empty()).enumerate() {
        let keyed = if r.auth { ", keyed" } else { "" };
        let color = plot::COLORS[k % plot::COLORS.len()];
        let mut add = |name: String, v: &[Duration], dashed: bool| {
            let micros: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
            series.push(Series {
                name,
                color,
                dashed,
                points: plot::cdf(&micros, 200),
            });
        };
        add(format!("{}{keyed}", r.port.name()), &r.mmio, r.auth);
        if let Some((busy, _)) = &r.loaded {
            add(
                format!("{}{keyed}, second pair busy", r.port.name()),
                busy,
                true,
            );
        }
    }
    if !series.is_empty() {
        let svg = plot::log_x(
            &format!(
                "MMIO read round trip, {} reads per port: cumulative distribution",
                args.mmio_reads
            ),
            "round trip (µs)",
            "fraction of reads",
            |v| format!("{v}"),
            &series,
        );
        let path = dir.join("perf-mmio-cdf.svg");
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

const BEGIN: &str = "<!-- tether bench: begin -->";
const END: &str = "<!-- tether bench: end -->";

fn write_docs(dir: &Path, section: &str) -> Result<()> {
    let path = dir.join("performance.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} lacks the {BEGIN} / {END} markers", path.display());
    };
    let new = format!("{}{BEGIN}\n{section}{}", &text[..a], &text[b..]);
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.sizes.is_empty() || args.sizes.iter().any(|&z| z == 0 || z > 1 << 20) {
        bail!("--sizes: each transfer size must be 1..=1048576 bytes");
    }
    if args.ports.is_empty() || args.tlp.is_empty() || args.aggregation.is_empty() {
        bail!("--ports, --tlp and --aggregation need at least one value each");
    }
    if let Some(t) = args.tlp.iter().find(|t| !matches!(t, 128 | 256 | 512)) {
        bail!("--tlp {t}: TLP payload sizes are 128, 256 or 512");
    }
    if args.mmio_reads == 0 {
        bail!("--mmio-reads must be at least 1");
    }
    if let Some(dir) = &args.write_docs {
        // Before a minute of measuring, not after.
        let path = dir.join("performance.md");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--write-docs: reading {}", path.display()))?;
        if !(text.contains(BEGIN) && text.contains(END)) {
            bail!("{} lacks the {BEGIN} / {END} markers", path.display());
        }
    }
    if args.auth.is_empty() {
        bail!("--auth needs at least one value");
    }
    if args.load_pair && args.ports.contains(&BenchPort::Memory) {
        bail!("--load-pair needs veth ports (af-xdp, af-packet, socket): memory ports share no segment");
    }
    let total = args.ports.len() * args.tlp.len() * args.aggregation.len() * args.auth.len();
    let mut runs = Vec::new();
    let started = Instant::now();
    for &port in &args.ports {
        // MMIO is timed on the first run of each port, keyed and not.
        let mut mmio_done = Vec::new();
        for &tlp in &args.tlp {
            for &agg in &args.aggregation {
                for &auth in &args.auth {
                    tracing::info!(
                    target: "tether::bench",
                                           "[{}/{total}] {} {tlp} B TLPs, {}{} ...",
                                           runs.len() + 1,
                                           port.name(),
                                           if agg { "aggregation" } else { "1 TLP/frame" },
                                           if auth { ", keyed" } else { "" }
                                       );
                    let first = !mmio_done.contains(&auth);
                    let r = measure(&args, port, tlp, agg, auth, first).with_context(|| {
                        format!("{} {tlp} B TLPs aggregation {agg} auth {auth}", port.name())
                    })?;
                    mmio_done.push(auth);
                    let last = r.points.last().expect("sizes");
                    tracing::info!(
                    target: "tether::bench",
                                           "      {} B: READ {:.1} MB/s, WRITE {:.1} MB/s",
                                           last.0, last.1, last.2
                                       );
                    runs.push(r);
                }
            }
        }
    }
    let joined = if args.load_pair {
        "joined by veth pairs to a Linux bridge (MTU {}) that a second box and host \
         pair share (it runs during the MMIO reads)"
    } else {
        "joined by one veth pair (MTU {})"
    }
    .replace("{}", &args.mtu.to_string());
    let mut section = format!(
        "Command: `tether bench{}` (release build, as root; {} s). Box and host in two \
         network namespaces {joined}; one box thread and the host \
         thread, each busy-polling (the socket rows sleep in ppoll(2) when idle, and aim at \
         500 µs of queueing delay instead of 50, as a sleeping bridge must).\n\n",
        command_args(std::env::args().skip(2)),
        started.elapsed().as_secs(),
    );
    section.push_str(&report(&args, &runs));
    println!("{section}");
    if let Some(dir) = &args.write_docs {
        let files = plots(&args, &runs, dir)?;
        let mut with_plots = section.clone();
        for f in &files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let _ = write!(with_plots, "\n![{name}]({name})\n");
        }
        write_docs(dir, &with_plots)?;
        tracing::info!(
        target: "tether::bench",
                   "wrote {} and {} plots",
                   dir.join("performance.md").display(),
                   files.len()
               );
    }
    Ok(())
}

/// The command's arguments as the docs show them: without `--write-docs` and its
/// directory, which say where the section went, not how it was measured.
fn command_args(args: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if a == "--write-docs" {
            skip_value = true;
            continue;
        }
        if a.starts_with("--write-docs=") {
            continue;
        }
        out.push(' ');
        out.push_str(&a);
    }
    out
}

#[cfg(test)]
mod command_args_tests {
    use super::command_args;

    #[test]
    fn the_docs_directory_is_not_an_argument() {
        let args = |s: &str| command_args(s.split(' ').map(String::from));
        assert_eq!(args("--write-docs docs"), "");
        assert_eq!(
            args("--ports memory --write-docs docs --mtu 9000"),
            " --ports memory --mtu 9000"
        );
        assert_eq!(args("--write-docs=docs --tlp 256"), " --tlp 256");
    }
}
