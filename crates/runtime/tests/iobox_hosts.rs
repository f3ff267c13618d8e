//! The box serves one host per group: the host-role bridge that reached the device
//! first. Another bridge in the group, whatever it announces, gets none of the
//! device's traffic (completions, DMA, MSI), its TLPs are dropped and counted, and
//! its restarts never reset the device.

use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, HubPort};
use dataplane::{Mempool, Port};
use fabric::{FabricEvent, Node, NodeConfig};
use runtime::{FabricPort, IoBox, Slot};
use tlp::{Bdf, ConfigRequest, Header, Tag, Tlp};
use wire::{BridgeRole, MacAddr};

const GID: u16 = 10;
const HOST: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const INTRUDER: MacAddr = MacAddr([2, 0, 0, 0, 0, 3]);

fn config(mac: MacAddr, role: BridgeRole, epoch: u32) -> NodeConfig {
    let mut cfg = NodeConfig::new(mac, role, mac.0[5] as u64, epoch);
    cfg.info_interval_us = 5_000;
    cfg.missed_infos = 200;
    cfg
}

/// A bridge driven by hand on a hub port (its MAC is the node's, not the port's).
struct Hand {
    node: Node,
    port: HubPort,
    start: Instant,
    events: Vec<FabricEvent>,
}

impl Hand {
    fn new(mac: MacAddr, role: BridgeRole, epoch: u32, port: HubPort, start: Instant) -> Hand {
        let mut node = Node::new(config(mac, role, epoch)).unwrap();
        node.join(GID).unwrap();
        Hand {
            node,
            port,
            start,
            events: Vec::new(),
        }
    }

    fn round(&mut self) {
        let now = self.start.elapsed().as_micros() as u64;
        if self.node.poll_timeout() <= now {
            self.node.handle_timeout(now);
        }
        let pool = self.port.pool().clone();
        let mut tx = Vec::new();
        while let Some(mut m) = pool.get() {
            match self.node.poll_transmit_into(now, pool.buf_mut(&mut m)) {
                Some(Ok(n)) => {
                    pool.set_len(&mut m, n);
                    tx.push(m);
                }
                _ => {
                    pool.put(m);
                    break;
                }
            }
        }
        while !tx.is_empty() {
            self.port.tx_burst(&mut tx).unwrap();
        }
        let mut rx = Vec::new();
        self.port.rx_burst(&mut rx, 64).unwrap();
        for m in rx {
            self.node.handle_frame(now, pool.data(&m), None);
            pool.put(m);
        }
        while let Some(e) = self.node.poll_event() {
            self.events.push(e);
        }
    }

    /// Tags of the completions received.
    fn completions(&mut self) -> Vec<u16> {
        let tags = self
            .events
            .iter()
            .filter_map(|e| match e {
                FabricEvent::Tlp { tlp, .. } => match Tlp::parse(tlp).ok()?.header {
                    Header::Completion(c) => Some(c.tag.value()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        self.events.clear();
        tags
    }

    /// A config read of the box's slot 0 (vendor and device ID), tagged `tag`.
    fn read_config(&mut self, box_mac: MacAddr, tag: u16) {
        let req = ConfigRequest {
            type1: false,
            requester: Bdf::new(0, 0, 0).unwrap(),
            tag: Tag::new(tag).unwrap(),
            target: Bdf::new(1, 0, 0).unwrap(),
            register: 0,
            first_be: 0xf,
        };
        let t = Tlp::new(Header::ConfigRead(req), &[]).to_vec().unwrap();
        self.node.send_tlp(GID, box_mac, &t).unwrap();
    }
}

/// Runs every bridge for `d`.
fn run(d: Duration, bx: &mut IoBox, hands: &mut [&mut Hand]) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for h in hands.iter_mut() {
            h.round();
        }
        bx.poll(Duration::ZERO).unwrap();
    }
}

#[test]
fn a_second_bridge_in_the_group_never_becomes_the_host() {
    let pool = Mempool::new(8192, 2048).unwrap();
    let mut ports = mem::hub(&pool, 4, 1024, 1500).into_iter();
    let start = Instant::now();
    let (hp, bp, xp, xp2) = (
        ports.next().unwrap(),
        ports.next().unwrap(),
        ports.next().unwrap(),
        ports.next().unwrap(),
    );
    let box_mac = MacAddr(bp.info().mac);
    let bn = Node::new(config(box_mac, BridgeRole::IoBox, 0x5000_0000)).unwrap();
    let slot = Slot::memdev(0, GID, 1 << 16).unwrap();
    let mut bx = IoBox::new(FabricPort::new(bn, Box::new(bp)), vec![slot]);
    let mut host = Hand::new(HOST, BridgeRole::Host, 0x1000_0000, hp, start);
    // A bridge that announces itself as a host too, in the same group.
    let mut intruder = Hand::new(INTRUDER, BridgeRole::Host, 0x2000_0000, xp, start);
    run(
        Duration::from_millis(30),
        &mut bx,
        &mut [&mut host, &mut intruder],
    );
    assert_eq!(bx.fabric().node().peers().count(), 2, "all three met");

    // The host reaches the device first: it is the device's host.
    host.read_config(box_mac, 1);
    run(
        Duration::from_millis(10),
        &mut bx,
        &mut [&mut host, &mut intruder],
    );
    assert_eq!(host.completions(), vec![1]);

    // The intruder's request is dropped, counted, and answered with nothing.
    intruder.read_config(box_mac, 2);
    run(
        Duration::from_millis(10),
        &mut bx,
        &mut [&mut host, &mut intruder],
    );
    assert_eq!(bx.stats().not_host, 1);
    assert_eq!(intruder.completions(), Vec::<u16>::new());

    // The device's traffic still goes to its host.
    host.read_config(box_mac, 3);
    run(
        Duration::from_millis(10),
        &mut bx,
        &mut [&mut host, &mut intruder],
    );
    assert_eq!(host.completions(), vec![3]);
    assert_eq!(intruder.completions(), Vec::<u16>::new());

    // The intruder restarts (a new epoch at the same address): the box sees it, and
    // leaves the device alone.
    let mut intruder = Hand::new(INTRUDER, BridgeRole::IoBox, 0x3000_0000, xp2, start);
    run(
        Duration::from_millis(30),
        &mut bx,
        &mut [&mut host, &mut intruder],
    );
    let restarted = bx
        .events
        .iter()
        .any(|e| matches!(e, FabricEvent::PeerRestarted { peer, .. } if *peer == INTRUDER));
    assert!(restarted, "{:?}", bx.events);
    intruder.read_config(box_mac, 4);
    host.read_config(box_mac, 5);
    run(
        Duration::from_millis(10),
        &mut bx,
        &mut [&mut host, &mut intruder],
    );
    assert_eq!(
        bx.stats().resets,
        0,
        "a stranger's restart reset the device"
    );
    assert_eq!(bx.stats().not_host, 2);
    assert_eq!(host.completions(), vec![5]);
    assert_eq!(intruder.completions(), Vec::<u16>::new());
}
