//! One host, devices of two boxes, in one process on an in-memory segment: every
//! device gets its own switch port and is driven at once; a box may speak only as its
//! own devices; a box that dies takes only its own devices with it, and a box that
//! comes back gets a freed port again.

mod common;

use common::BoxThread;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, HubPort};
use dataplane::{Mempool, Port};
use fabric::{FabricPort, Node, NodeConfig};
use hostbridge::host_bridge::{Change, HostBridge, HostBridgeConfig};
use hostbridge::hotplug::{DeviceKey, Phase};
use hostbridge::route::Router;
use hostbridge::switch::{PortId, VirtualSwitch};
use hostbridge::{FabricLink, MemDevDriver};
use rootcomplex::{BarWindows, BridgeConfig, Host, MemoryMap};
use tlp::{Bdf, Header, MemWrite, Tag, Tlp};
use wire::{BridgeRole, MacAddr};

const GID: u16 = 10;
const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 8 << 20;

fn node(port: &dyn Port, role: BridgeRole, id: u64, epoch: u32) -> Node {
    let mut cfg = NodeConfig::new(MacAddr(port.info().mac), role, id, epoch);
    cfg.info_interval_us = 20_000;
    // Busy threads share two cores with the harness: 0.3 s of silence is a dead peer.
    cfg.missed_infos = 15;
    Node::new(cfg).unwrap()
}

fn host_bridge(port: HubPort, ports: usize) -> HostBridge {
    let mut n = node(&port, BridgeRole::Host, 1, 1000);
    n.join(GID).unwrap();
    let router = Router::new(GID, VirtualSwitch::new(ports).unwrap());
    let link = FabricLink::switched(FabricPort::new(n, Box::new(port)), router);
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE])).unwrap();
    let host = Host::new(
        BridgeConfig::default(),
        mem,
        (RAM, RAM_SIZE as u64),
        BarWindows::default(),
        link,
    );
    HostBridge::new(
        HostBridgeConfig {
            gid: GID,
            leave_timeout: 5_000_000,
        },
        host,
    )
    .unwrap()
}

/// What the test's "driver" has: each attached device's routing ID and driver.
type Attached = BTreeMap<DeviceKey, (PortId, Bdf, MemDevDriver)>;

/// Polls the bridge, attaching (probing the memdev) and detaching as asked, until
/// `done` or `secs` pass; returns every change seen.
fn run_until(
    hb: &mut HostBridge,
    have: &mut Attached,
    secs: u64,
    mut done: impl FnMut(&HostBridge, &Attached) -> bool,
) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut log = Vec::new();
    let mut changes = Vec::new();
    while !done(hb, have) {
        assert!(
            Instant::now() < end,
            "timed out; changes: {log:#?}\nrouting: {:?}\nhotplug: {:?}",
            hb.router().stats(),
            hb.hotplug().stats()
        );
        hb.poll(Duration::from_millis(1), &mut changes);
        for c in changes.drain(..) {
            log.push(format!("{c:?}"));
            match c {
                Change::Attach {
                    key,
                    gen,
                    port,
                    bdf,
                    ..
                } => match MemDevDriver::probe(hb.host_mut(), bdf) {
                    Ok(d) => {
                        have.insert(key, (port, bdf, d));
                        hb.attached(key, gen);
                    }
                    Err(_) => hb.attach_failed(key, gen),
                },
                Change::Detach { key, gen, .. } => {
                    have.remove(&key);
                    hb.detached(key, gen);
                }
                _ => {}
            }
        }
    }
    log
}

/// One verified copy through every attached device, interleaved: each device's copy
/// is started before any is waited for.
fn copy_on_all(hb: &mut HostBridge, have: &Attached, round: u8) {
    let len = 4096 - 7;
    let h = hb.host_mut();
    let mut jobs = Vec::new();
    for (i, (key, (_, _, drv))) in have.iter().enumerate() {
        let src = h.alloc_dma(len).unwrap();
        let dst = h.alloc_dma(len).unwrap();
        let pattern: Vec<u8> = (0..len)
            .map(|j| (j as u8) ^ (i as u8).wrapping_mul(37) ^ round)
            .collect();
        h.write_memory(src.addr, &pattern).unwrap();
        drv.start(
            h,
            endpoint::memdev::op::COPY,
            src.addr,
            dst.addr,
            len as u32,
        )
        .unwrap();
        jobs.push((*key, drv, dst, pattern));
    }
    for (key, drv, dst, pattern) in jobs {
        drv.wait(h, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("copy on {key}: {e}"));
        let mut got = vec![0u8; len];
        h.read_memory(dst.addr, &mut got).unwrap();
        assert!(got == pattern, "the copy through {key} differs");
    }
}

/// Host memory was written where `addr` says.
fn ram_at(hb: &HostBridge, addr: u64) -> [u8; 4] {
    let mut b = [0u8; 4];
    hb.host().read_memory(addr, &mut b).unwrap();
    b
}

#[test]
fn a_host_uses_devices_of_two_boxes_and_keeps_them_apart() {
    let pool = Mempool::new(16384, 2048).unwrap();
    let mut ports = mem::hub(&pool, 4, 1024, 1500).into_iter();
    let box1 = BoxThread::start(ports.next().unwrap(), 7, 70, &[0, 1]);
    let box2 = BoxThread::start(ports.next().unwrap(), 8, 80, &[0]);
    let rogue_port = ports.next().unwrap();
    let mut hb = host_bridge(ports.next().unwrap(), 8);
    let mut have = Attached::new();

    // All three devices (box 1's slots 0 and 1, box 2's slot 0: the same slot number
    // in two boxes) come up, each on its own port and bus.
    run_until(&mut hb, &mut have, 20, |_, h| h.len() == 3);
    let buses: Vec<u8> = have.values().map(|(_, b, _)| b.bus()).collect();
    let mut unique = buses.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "buses {buses:?}");
    for (key, (port, bdf, _)) in &have {
        assert_eq!(bdf.device(), key.slot);
        let info = hb.device_on(*port).unwrap();
        let windows = hb.router().windows(*port).unwrap();
        for bar in &info.bars {
            let (lo, hi) = if bar.is_64bit {
                windows.mem64
            } else {
                windows.mem32
            };
            assert!(
                bar.address >= lo && bar.address + bar.size <= hi,
                "{key}: BAR {bar:?} outside its port's windows {windows:?}"
            );
        }
    }
    assert_eq!(hb.router().switch().live_ports().count(), 3);

    // Copies on all three at once, several rounds.
    for round in 0..4 {
        copy_on_all(&mut hb, &have, round);
    }

    // A stranger on the segment joins the group and writes into host memory (an MSI
    // and a DMA write) with the requester ID of box 1's device: refused and counted,
    // memory untouched.
    let victim = have
        .iter()
        .find(|(k, _)| k.mac == box1.mac)
        .map(|(_, v)| v.1)
        .unwrap();
    let rogue_mac = MacAddr(rogue_port.info().mac);
    let mut rn = node(&rogue_port, BridgeRole::IoBox, 9, 90);
    rn.join(GID).unwrap();
    let mut rogue = FabricPort::new(rn, Box::new(rogue_port));
    let host_mac = hb.host().link().fabric().node().config().mac;
    let target = RAM + 0x40_0000;
    let before = ram_at(&hb, target);
    let misrouted_before = hb.router().stats().misrouted;
    let forged = Tlp::new(
        Header::MemWrite(MemWrite {
            requester: victim,
            tag: Tag::default(),
            address: target,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        }),
        &[0xde, 0xad, 0xbe, 0xef],
    )
    .to_vec()
    .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while hb.router().stats().misrouted < misrouted_before + 3 {
        assert!(Instant::now() < end, "the forged writes never arrived");
        if sent < 3
            && rogue.node().peer_role(GID, host_mac).is_some()
            && rogue.node_mut().send_tlp(GID, host_mac, &forged).is_ok()
        {
            sent += 1;
        }
        rogue.poll(Duration::ZERO).unwrap();
        let mut changes = Vec::new();
        hb.poll(Duration::from_millis(1), &mut changes);
    }
    assert_eq!(ram_at(&hb, target), before, "a forged DMA write landed");
    assert_ne!(rogue_mac, box1.mac);
    drop(rogue);

    // Box 2 is cut off: its device leaves (surprise) and its port is freed; box 1's
    // two keep copying.
    let box2_mac = box2.mac;
    box2.set_paused(true);
    let freed_before = hb.router().switch().stats().frees;
    run_until(&mut hb, &mut have, 20, |hb, h| {
        h.keys().all(|k| k.mac != box2_mac)
            && hb.router().switch().stats().frees > freed_before
            && hb.devices().all(|(v, _)| v.key.mac != box2_mac)
    });
    assert_eq!(have.len(), 2);
    let hp = hb.hotplug().stats();
    assert_eq!((hp.departures, hp.surprises), (1, 1), "{hp:?}");
    assert_eq!(hb.router().switch().live_ports().count(), 2);
    for round in 4..6 {
        copy_on_all(&mut hb, &have, round);
    }

    // Box 2 comes back: its device is enumerated again, on the freed port (the lowest
    // free one), and copies on all three pass.
    box2.set_paused(false);
    run_until(&mut hb, &mut have, 20, |_, h| h.len() == 3);
    let (port, _, _) = have
        .iter()
        .find(|(k, _)| k.mac == box2.mac)
        .map(|(_, v)| v)
        .unwrap();
    assert!(port.index() < 3, "port {port} was not reused");
    for round in 6..8 {
        copy_on_all(&mut hb, &have, round);
    }
    assert!(hb
        .devices()
        .all(|(v, _)| v.phase == Phase::Ready && v.port.is_some()));
    let s = hb.router().stats();
    eprintln!(
        "routing: {s:?}\nhot-plug: {:?}\nswitch: {:?}",
        hb.hotplug().stats(),
        hb.router().switch().stats()
    );
    assert_eq!(s.foreign_completions, 0, "{s:?}");
    assert_eq!(hb.host().stats().mmio_read_timeouts, 0);
    drop(box1);
    drop(box2);
}
