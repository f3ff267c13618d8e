//! The box serves one host per group: the host-role bridge that reached the device
//! first. Another bridge in the group, whatever it announces, gets none of the
//! device's traffic (completions, DMA, MSI), its TLPs are dropped and counted, and
//! its restarts never reset the device.

#[path = "../../fabric/tests/common/hand.rs"]
mod hand;

use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, HubPort};
use dataplane::{Mempool, Port};
use fabric::FabricPort;
use fabric::{FabricEvent, Node, NodeConfig};
use iobox::{IoBox, Slot};
use tlp::{
    Bdf, Completion, CompletionStatus, ConfigRequest, Header, IntxPin, MemRead, MemWrite, Message,
    Tag, Tlp,
};
use wire::{BridgeRole, Frame, FrameKind, MacAddr};

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
    /// DATA frames that arrive are thrown away: nothing the box sends is
    /// acknowledged (its acknowledgements of our frames still arrive).
    deaf: bool,
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
            deaf: false,
        }
    }

    fn round(&mut self) {
        let now = self.start.elapsed().as_micros() as u64;
        let deaf = self.deaf;
        hand::round(&mut self.node, &mut self.port, now, |node, bytes| {
            let data = Frame::parse(bytes, None).is_ok_and(|f| f.header.kind == FrameKind::Data);
            if !(deaf && data) {
                node.handle_frame(now, bytes, None);
            }
        });
        while let Some(e) = self.node.poll_event() {
            self.events.push(e);
        }
    }

    /// Tags of the completions received.
    fn completions(&mut self) -> Vec<u16> {
        completions_received(self)
            .iter()
            .map(|c| c.tag.value())
            .collect()
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

/// The device's BAR 0 in the tests that program it.
const BAR0: u64 = 0xe000_0000;

impl Hand {
    /// A config write of `value` to the box's slot 0 (register `register`), tagged
    /// `tag`.
    fn write_config(&mut self, box_mac: MacAddr, tag: u16, register: u16, value: u32) {
        let req = ConfigRequest {
            type1: false,
            requester: Bdf::new(0, 0, 0).unwrap(),
            tag: Tag::new(tag).unwrap(),
            target: Bdf::new(1, 0, 0).unwrap(),
            register,
            first_be: 0xf,
        };
        let t = Tlp::new(Header::ConfigWrite(req), &value.to_le_bytes())
            .to_vec()
            .unwrap();
        self.node.send_tlp(GID, box_mac, &t).unwrap();
    }

    /// A posted write of `value` to `address`.
    fn write_memory(&mut self, box_mac: MacAddr, address: u64, value: u32) {
        let w = MemWrite {
            requester: Bdf::new(0, 0, 0).unwrap(),
            tag: Tag::new(0).unwrap(),
            address,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        };
        let t = Tlp::new(Header::MemWrite(w), &value.to_le_bytes())
            .to_vec()
            .unwrap();
        self.node.send_tlp(GID, box_mac, &t).unwrap();
    }

    /// A 4-byte read of `address`, tagged `tag`.
    fn read_memory(&mut self, box_mac: MacAddr, address: u64, tag: u16) {
        let r = MemRead {
            requester: Bdf::new(0, 0, 0).unwrap(),
            tag: Tag::new(tag).unwrap(),
            address,
            length_dw: 1,
            first_be: 0xf,
            last_be: 0,
            locked: false,
            hint: None,
        };
        let t = Tlp::new(Header::MemRead(r), &[]).to_vec().unwrap();
        self.node.send_tlp(GID, box_mac, &t).unwrap();
    }

    /// Tags and payloads of the completions received.
    fn completions_with_data(&mut self) -> Vec<(u16, Vec<u8>)> {
        let got = self
            .events
            .iter()
            .filter_map(|e| match e {
                FabricEvent::Tlp { tlp, .. } => {
                    let t = Tlp::parse(tlp).ok()?;
                    match t.header {
                        Header::Completion(c) => Some((c.tag.value(), t.payload.to_vec())),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        self.events.clear();
        got
    }
}

/// Runs every bridge until `done` holds, for at most `cap` (a bound against hangs);
/// returns whether it held.
fn run_until(
    cap: Duration,
    bx: &mut IoBox,
    hands: &mut [&mut Hand],
    mut done: impl FnMut(&IoBox, &mut [&mut Hand]) -> bool,
) -> bool {
    let end = Instant::now() + cap;
    while Instant::now() < end {
        if done(bx, hands) {
            return true;
        }
        for h in hands.iter_mut() {
            h.round();
        }
        bx.poll(Duration::ZERO).unwrap();
    }
    done(bx, hands)
}

/// The box on `bp` (memdev in slot 0, in the group), its node configured by `config`
/// and then by `tune`; and its MAC.
fn iobox(bp: HubPort, tune: impl FnOnce(&mut NodeConfig)) -> (IoBox, MacAddr) {
    let box_mac = MacAddr(bp.info().mac);
    let mut cfg = config(box_mac, BridgeRole::IoBox, 0x5000_0000);
    tune(&mut cfg);
    let bn = Node::new(cfg).unwrap();
    let slot = Slot::memdev(0, GID, 1 << 16).unwrap();
    (
        IoBox::new(FabricPort::new(bn, Box::new(bp)), vec![slot]),
        box_mac,
    )
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
    let (mut bx, box_mac) = iobox(bp, |_| {});
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

/// A box whose host stops acknowledging: the device's backlog fills to its bound and
/// stays there, the device gets no more requests, [`IoBox::DEFERRED`] requests wait in
/// the box and the rest in the session (whose window closes): a host that floods
/// requests is back-pressured, not buffered without bound. When the host listens
/// again everything arrives, in order; when it restarts instead, what the box held is
/// counted.
#[test]
fn a_full_backlog_holds_the_fabric_back_and_a_reset_counts_what_it_drops() {
    let pool = Mempool::new(8192, 2048).unwrap();
    let mut ports = mem::hub(&pool, 3, 1024, 1500).into_iter();
    let start = Instant::now();
    let (hp, bp, hp2) = (
        ports.next().unwrap(),
        ports.next().unwrap(),
        ports.next().unwrap(),
    );
    // A small session: few frames in flight, a short send queue, a short receive
    // queue (whose room is the window it advertises).
    let (mut bx, box_mac) = iobox(bp, |cfg| {
        cfg.session.window = 2;
        cfg.session.max_tlps_per_frame = 1;
        cfg.session.send_queue = 16;
        cfg.session.recv_queue = 64;
    });
    let mut host = Hand::new(HOST, BridgeRole::Host, 0x1000_0000, hp, start);
    run(Duration::from_millis(30), &mut bx, &mut [&mut host]);
    host.read_config(box_mac, 1000);
    run(Duration::from_millis(10), &mut bx, &mut [&mut host]);
    assert_eq!(host.completions(), vec![1000]);
    let reads = |bx: &IoBox| bx.slots()[0].function.stats().config_reads;
    let before = reads(&bx);

    let taken = |bx: &IoBox| {
        let s = bx.fabric().node().session_stats(GID, HOST).unwrap();
        s.tlps_in
    };
    let full = |bx: &mut IoBox, host: &mut Hand| {
        let (taken_before, reads_before) = (taken(bx), reads(bx));
        host.deaf = true;
        for tag in 0..600 {
            host.read_config(box_mac, tag);
        }
        let deferred_full = bx.stats().deferred_full;
        run(Duration::from_millis(100), bx, &mut [host]);
        assert_eq!(bx.slots()[0].backlog_len(), IoBox::BACKLOG);
        assert!(bx.stats().backlog_full > 0);
        // The box holds what its bound allows, and takes no more from the host.
        assert_eq!(bx.slots()[0].deferred_len(), IoBox::DEFERRED);
        assert!(bx.stats().deferred_full > deferred_full);
        // What the device got, and what waits in the session, came through the
        // session's window; the rest is still with the host.
        let took = taken(bx) - taken_before;
        assert!(took < 600, "the box took {took} requests");
        assert!(reads(bx) - reads_before < 600);
    };
    full(&mut bx, &mut host);
    // The host listens again: every answer arrives, in order.
    host.deaf = false;
    run(Duration::from_millis(300), &mut bx, &mut [&mut host]);
    assert_eq!(host.completions(), (0..600).collect::<Vec<u16>>());
    let st = bx.stats();
    assert_eq!(
        (st.no_host, st.undeliverable, st.dropped_on_reset),
        (0, 0, 0)
    );
    assert_eq!(reads(&bx) - before, 600);
    assert_eq!(bx.slots()[0].deferred_len(), 0);
    assert!(st.deferred >= IoBox::DEFERRED as u64, "{st:?}");

    // Again, and this time the host restarts instead.
    let before = reads(&bx);
    full(&mut bx, &mut host);
    let answered = reads(&bx) - before;
    let mut host = Hand::new(HOST, BridgeRole::Host, 0x7000_0000, hp2, start);
    run(Duration::from_millis(50), &mut bx, &mut [&mut host]);
    let st = bx.stats();
    assert_eq!(st.resets, 1);
    assert!(st.dropped_on_reset >= IoBox::BACKLOG as u64, "{st:?}");
    assert_eq!(
        st.deferred_dropped_on_reset,
        IoBox::DEFERRED as u64,
        "{st:?}"
    );
    assert_eq!(bx.slots()[0].deferred_len(), 0);
    let s = bx.fabric().node().session_stats(GID, HOST).unwrap();
    assert_eq!(s.peer_restarts, 1);
    // Every answer the device gave went out (and was lost with the old session,
    // counted) or was dropped by the reset (counted); requests the box had received
    // and not given to the device were lost with the old session or dropped from the
    // deferred queue by the reset, counted.
    assert!(
        s.tlps_lost + st.dropped_on_reset >= answered,
        "{s:?} {st:?}"
    );
    // Nothing of the old run reaches the new one; the device answers the new one.
    assert_eq!(host.completions(), Vec::<u16>::new());
    assert_eq!(
        reads(&bx) - before,
        answered,
        "stale requests reached the device"
    );
    host.read_config(box_mac, 7);
    run(Duration::from_millis(20), &mut bx, &mut [&mut host]);
    assert_eq!(host.completions(), vec![7]);
}

/// An Unsupported Request answer that the host's session cannot take (its queue is
/// full: the host does not acknowledge) is counted, not dropped silently.
#[test]
fn an_unsupported_request_answer_the_session_refuses_is_counted() {
    let pool = Mempool::new(8192, 2048).unwrap();
    let mut ports = mem::hub(&pool, 2, 1024, 1500).into_iter();
    let start = Instant::now();
    let (hp, bp) = (ports.next().unwrap(), ports.next().unwrap());
    let (mut bx, box_mac) = iobox(bp, |cfg| {
        cfg.session.window = 1;
        cfg.session.max_tlps_per_frame = 1;
        cfg.session.send_queue = 4;
    });
    let mut host = Hand::new(HOST, BridgeRole::Host, 0x1000_0000, hp, start);
    run(Duration::from_millis(30), &mut bx, &mut [&mut host]);
    host.deaf = true;
    // Answers enough to fill the box's session, then a read of an empty slot.
    for tag in 0..8 {
        host.read_config(box_mac, tag);
    }
    run(Duration::from_millis(20), &mut bx, &mut [&mut host]);
    assert!(
        bx.slots()[0].backlog_len() > 0,
        "the session's queue is full"
    );
    let req = ConfigRequest {
        type1: false,
        requester: Bdf::new(0, 0, 0).unwrap(),
        tag: Tag::new(99).unwrap(),
        target: Bdf::new(1, 5, 0).unwrap(),
        register: 0,
        first_be: 0xf,
    };
    let t = Tlp::new(Header::ConfigRead(req), &[]).to_vec().unwrap();
    host.node.send_tlp(GID, box_mac, &t).unwrap();
    run(Duration::from_millis(20), &mut bx, &mut [&mut host]);
    let st = bx.stats();
    assert_eq!(st.unrouted, 1);
    assert_eq!(st.answered_ur + st.undeliverable, 1, "{st:?}");
    assert_eq!(st.undeliverable, 1, "{st:?}");
}

/// What the host's node received from the box: the completions.
fn completions_received(host: &mut Hand) -> Vec<Completion> {
    let cpls = host
        .events
        .iter()
        .filter_map(|e| match e {
            FabricEvent::Tlp { tlp, .. } => match Tlp::parse(tlp).ok()?.header {
                Header::Completion(c) => Some(c),
                _ => None,
            },
            _ => None,
        })
        .collect();
    host.events.clear();
    cpls
}

/// The box tells the codec's Unsupported Requests (PCIe §2.2, §2.3) from malformed
/// TLPs: a MRd with AT = 11b is answered with a UR completion (its requester, tag and
/// byte count), a message with reserved routing is dropped, both counted as
/// unsupported; a malformed TLP is counted as malformed and never answered. A read no
/// device claims gets a UR completion with the read's byte count (§2.2.9).
#[test]
fn unsupported_and_malformed_tlps_are_told_apart() {
    let pool = Mempool::new(4096, 2048).unwrap();
    let mut ports = mem::hub(&pool, 2, 1024, 1500).into_iter();
    let start = Instant::now();
    let (hp, bp) = (ports.next().unwrap(), ports.next().unwrap());
    let (mut bx, box_mac) = iobox(bp, |_| {});
    let mut host = Hand::new(HOST, BridgeRole::Host, 0x1000_0000, hp, start);
    run(Duration::from_millis(30), &mut bx, &mut [&mut host]);
    // The box pins its host on the first TLP.
    host.read_config(box_mac, 1);
    run(Duration::from_millis(20), &mut bx, &mut [&mut host]);
    assert_eq!(host.completions(), vec![1]);
    let before = bx.stats();
    let mrd = |tag: u16| MemRead {
        requester: Bdf::new(0, 0, 0).unwrap(),
        tag: Tag::new(tag).unwrap(),
        // No BAR is programmed: no device claims it.
        address: 0xe000_0010,
        length_dw: 2,
        first_be: 0xf,
        last_be: 0x1,
        locked: false,
        hint: None,
    };
    let send = |host: &mut Hand, t: Vec<u8>| host.node.send_tlp(GID, box_mac, &t).unwrap();
    // AT = 11b (byte 2 bits 3:2).
    let mut b = Tlp::new(Header::MemRead(mrd(40)), &[]).to_vec().unwrap();
    b[2] |= 0x0c;
    send(&mut host, b);
    // Reserved message routing (110b).
    let msg = Message::intx(Bdf::new(0, 0, 0).unwrap(), IntxPin::A, true);
    let mut b = Tlp::new(Header::Message(msg), &[]).to_vec().unwrap();
    b[0] = (b[0] & !7) | 0b110;
    send(&mut host, b);
    // Malformed: 2 DW with Last BE 0000.
    let mut b = Tlp::new(Header::MemRead(mrd(41)), &[]).to_vec().unwrap();
    b[7] &= 0x0f;
    send(&mut host, b);
    // Well formed, for no device.
    send(
        &mut host,
        Tlp::new(Header::MemRead(mrd(42)), &[]).to_vec().unwrap(),
    );
    run(Duration::from_millis(30), &mut bx, &mut [&mut host]);
    let mut cpls = completions_received(&mut host);
    cpls.sort_by_key(|c| c.tag.value());
    let got: Vec<_> = cpls
        .iter()
        .map(|c| (c.tag.value(), c.status, c.requester, c.byte_count))
        .collect();
    let ur = CompletionStatus::UnsupportedRequest;
    let root = Bdf::new(0, 0, 0).unwrap();
    // 2 DW, last BE 0001: 5 bytes.
    assert_eq!(got, vec![(40, ur, root, 5), (42, ur, root, 5)]);
    let st = bx.stats();
    assert_eq!(st.unsupported, before.unsupported + 2, "{st:?}");
    assert_eq!(st.malformed, before.malformed + 1, "{st:?}");
    assert_eq!(st.unrouted, before.unrouted + 1, "{st:?}");
    assert_eq!(st.answered_ur, before.answered_ur + 2, "{st:?}");
}

/// PCIe's ordering rules at the box, for a device whose backlog is full: the host's
/// non-posted requests wait in the box, a posted write reaches the device past them
/// (as PCIe requires, to avoid deadlock), and a read sent after the write waits
/// behind the other requests and sees the write (a request never passes a posted
/// write). When the host takes the box's TLPs again, every request is answered, in
/// the order sent, and nothing is lost.
#[test]
fn a_posted_write_passes_waiting_requests_and_a_later_read_sees_it() {
    let pool = Mempool::new(8192, 2048).unwrap();
    let mut ports = mem::hub(&pool, 2, 1024, 1500).into_iter();
    let start = Instant::now();
    let (hp, bp) = (ports.next().unwrap(), ports.next().unwrap());
    let (mut bx, box_mac) = iobox(bp, |cfg| {
        cfg.session.window = 2;
        cfg.session.max_tlps_per_frame = 1;
        cfg.session.send_queue = 16;
    });
    let mut host = Hand::new(HOST, BridgeRole::Host, 0x1000_0000, hp, start);
    run(Duration::from_millis(30), &mut bx, &mut [&mut host]);
    // BAR 0, then memory decoding on.
    host.write_config(box_mac, 1, 0x10, BAR0 as u32);
    host.write_config(box_mac, 2, 0x04, 0x2);
    let cap = Duration::from_secs(10);
    let set_up = run_until(cap, &mut bx, &mut [&mut host], |_, h| {
        let tlps = h[0].events.iter();
        tlps.filter(|e| matches!(e, FabricEvent::Tlp { .. }))
            .count()
            >= 2
    });
    assert!(set_up, "no answers to the set-up");
    assert_eq!(host.completions(), vec![1, 2]);

    // The host stops taking the box's TLPs; its reads fill the device's backlog and
    // then wait in the box.
    host.deaf = true;
    const READS: u16 = IoBox::BACKLOG as u16 + 100;
    for tag in 0..READS {
        host.read_config(box_mac, tag);
    }
    let waiting = run_until(cap, &mut bx, &mut [&mut host], |bx, _| {
        bx.slots()[0].deferred_len() > 0
    });
    assert!(waiting, "no request waits: {:?}", bx.stats());
    let f = |bx: &IoBox| bx.slots()[0].function.stats();
    let (writes, reads) = (f(&bx).mmio_writes, f(&bx).mmio_reads);

    let src = BAR0 + endpoint::memdev::regs::SRC;
    host.write_memory(box_mac, src, 0x1234_5678);
    host.read_memory(box_mac, src, 900);
    let written = run_until(cap, &mut bx, &mut [&mut host], |bx, _| {
        f(bx).mmio_writes > writes
    });
    assert!(
        written,
        "the write waited behind the requests: {:?}",
        bx.stats()
    );
    // The read waits behind the others.
    assert_eq!(f(&bx).mmio_reads, reads);
    assert!(bx.slots()[0].deferred_len() > 0);
    assert_eq!(bx.slots()[0].backlog_len(), IoBox::BACKLOG);

    // The host listens again: every request is answered, in order.
    host.deaf = false;
    let mut got = Vec::new();
    let all = run_until(cap, &mut bx, &mut [&mut host], |_, h| {
        got.extend(h[0].completions_with_data());
        got.len() > READS as usize
    });
    assert!(all, "{} answers: {:?}", got.len(), bx.stats());
    let tags: Vec<u16> = got.iter().map(|(t, _)| *t).collect();
    let want: Vec<u16> = (0..READS).chain([900]).collect();
    assert_eq!(tags, want);
    assert_eq!(got[READS as usize].1, 0x1234_5678u32.to_le_bytes());
    let st = bx.stats();
    assert!(st.deferred > 0, "{st:?}");
    assert_eq!(
        (
            st.no_host,
            st.undeliverable,
            st.dropped_on_reset,
            st.deferred_full
        ),
        (0, 0, 0, 0),
        "{st:?}"
    );
    assert_eq!(bx.slots()[0].deferred_len(), 0);
}
