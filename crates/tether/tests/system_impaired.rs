//! The whole system through the impairment relay: host -- relay -- box, three network
//! namespaces and two veth pairs made by the test. The relay (`tether impair`) loses
//! 1%, duplicates 1%, reorders 5% and corrupts 0.1% of the frames in each direction;
//! every DMA copy through the box must still arrive byte for byte, and the relay's
//! counters show that the faults were real.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dataplane::netns::Rig;
use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
use dataplane::{Mempool, Port};
use fabric::{Node, NodeConfig};
use rootcomplex::{BarWindows, BridgeConfig, Host, MemoryMap};
use runtime::{FabricLink, FabricPort, IoBox, MemDevDriver, Slot};
use tlp::Bdf;
use wire::{BridgeRole, MacAddr};

const SPEC: &str = "loss=0.01,dup=0.01,reorder=0.05,corrupt=0.001";

fn xdp(name: &str) -> Box<dyn Port> {
    let pool = Mempool::new(16384, 2048).unwrap();
    Box::new(AfXdpPort::open(name, &pool, XdpConfig::default()).unwrap())
}

fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Node {
    let mut cfg = NodeConfig::new(MacAddr(port.info().mac), role, id, 1000);
    cfg.info_interval_us = 50_000;
    // Three busy-polling parties (relay, box, host) share two cores here: a thread
    // can be off the CPU for a while, which must not look like a dead peer.
    cfg.missed_infos = 40;
    cfg.session.retry_limit = 40;
    Node::new(cfg).unwrap()
}

#[test]
fn dma_copies_survive_loss_duplication_reordering_and_corruption() {
    let test = "dma_copies_survive_loss_duplication_reordering_and_corruption";
    let mut rig = match Rig::new("tsi") {
        Ok(r) => r,
        Err(e) => return skip(test, &e.to_string()),
    };
    let host = rig.host("h").unwrap();
    let relay = rig.host("r").unwrap();
    let bx = rig.host("x").unwrap();
    rig.veth(host, "tsih", relay, "tsia", 1500).unwrap();
    rig.veth(relay, "tsib", bx, "tsix", 1500).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_tether"));
    let mut relay_proc = rig
        .command(relay, bin)
        .args([
            "impair", "--a", "tsia", "--b", "tsib", "--ab", SPEC, "--ba", SPEC,
        ])
        .args(["--seed", "11", "--duration", "600"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut relay_err = BufReader::new(relay_proc.stderr.take().unwrap());
    let mut line = String::new();
    relay_err.read_line(&mut line).unwrap();
    assert!(line.contains("relaying"), "relay said: {line}");

    let box_port = rig.within(bx, || xdp("tsix"));
    let host_port = rig.within(host, || xdp("tsih"));
    let stop = Arc::new(AtomicBool::new(false));
    let box_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let n = node(&*box_port, BridgeRole::IoBox, 7);
            let slot = Slot::memdev(0, 10, 1 << 20).unwrap();
            let mut b = IoBox::new(FabricPort::new(n, box_port), vec![slot]);
            while !stop.load(Ordering::Relaxed) {
                b.poll(Duration::from_millis(1)).unwrap();
            }
            (b.stats(), b.fabric().node().stats())
        })
    };

    let mut hn = node(&*host_port, BridgeRole::Host, 1);
    hn.join(10).unwrap();
    let mut link = FabricLink::new(FabricPort::new(hn, host_port));
    let (peer, dev) = link
        .wait_for_device(10, Duration::from_secs(10))
        .expect("no device");
    link.set_target(10, peer);
    let mut mem = MemoryMap::new();
    mem.add(0x1_0000_0000, Box::new(vec![0u8; 4 << 20]))
        .unwrap();
    let mut h = Host::new(
        BridgeConfig::default(),
        mem,
        (0x1_0000_0000, 4 << 20),
        BarWindows::default(),
        link,
    );
    let bdf = Bdf::new(1, dev.slot, 0).unwrap();
    h.enumerate(bdf).unwrap();
    let drv = MemDevDriver::probe(&mut h, bdf).unwrap();
    let src = h.alloc_dma((1 << 20) + 64).unwrap();
    let dst = h.alloc_dma((1 << 20) + 64).unwrap();
    let mut rng = netem::Rng::new(5);
    let mut bytes = 0;
    const COPIES: usize = 150;
    for i in 0..COPIES {
        // Log-uniform sizes from 1 B to 64 KiB, random alignment at both ends.
        let len = (2f64.powf(rng.unit() * 16.0) as usize).clamp(1, 1 << 16);
        let (so, d_o) = (rng.next_u64() % 64, rng.next_u64() % 64);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        drv.copy_checked(
            &mut h,
            src.addr + so,
            dst.addr + d_o,
            &data,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| {
            let l = h.link();
            panic!(
                "copy {i} of {len} bytes: {e}\nhost fabric events: {:?}\nhost node: {:?}\nsession: {:?}",
                l.events,
                l.fabric().node().stats(),
                l.fabric().node().session_stats(10, peer)
            )
        });
        bytes += len;
    }
    let session = h.link().fabric().node().session_stats(10, peer).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (box_stats, box_fabric) = box_thread.join().unwrap();
    // SAFETY: kill with a valid pid of our child.
    unsafe { libc::kill(relay_proc.id() as i32, libc::SIGTERM) };
    assert!(relay_proc.wait().unwrap().success());
    let mut report = String::new();
    relay_err.read_to_string(&mut report).unwrap();
    eprintln!("{COPIES} copies, {bytes} bytes, all verified\nhost session: {session:?}\nbox fabric: {box_fabric:?}\n{report}");

    assert_eq!(box_stats.unrouted, 0);
    assert!(
        session.retransmits > 0,
        "no retransmissions: the faults were not real"
    );
    assert!(
        box_fabric.bad_frames + h.link().fabric().node().stats().bad_frames > 0,
        "no corrupted frame was caught"
    );
    for dir in ["tsia -> tsib", "tsib -> tsia"] {
        let l = report
            .lines()
            .find(|l| l.starts_with(dir))
            .expect("relay counters");
        for what in ["lost", "duplicated", "reordered"] {
            let n: u64 = l[l.find(&format!(" {what} ")).unwrap() + what.len() + 2..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(n > 0, "{dir}: nothing {what}: {l}");
        }
    }
}
