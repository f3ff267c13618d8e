//! Hosts and boxes in one thread, in lockstep over an in-memory hub: a host is a
//! fabric node with one `rootcomplex::Bridge` (its own RAM) per device it was offered,
//! and a memdev driver on each that runs verified DMA copies without blocking, so a
//! test counts what every host got done in a fixed number of rounds.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, HubPort};
use dataplane::{Mempool, Port};
use efe::SendError;
use endpoint::memdev::{self, regs, status};
use fabric::{FabricError, FabricEvent, FabricPort, Node, NodeConfig};
use iobox::{IoBox, Slot};
use rootcomplex::{Bridge, BridgeConfig, Event, MemoryMap, RequestId};
use tlp::{Bdf, ConfigRequest, Header, Tag, Tlp};
use wire::{BridgeRole, Frame, FrameKind, MacAddr};

/// Host RAM of each device's engine.
pub const RAM: u64 = 0x1_0000_0000;
pub const RAM_SIZE: usize = 1 << 16;
/// Bytes of each copy.
pub const COPY_LEN: usize = 2048;
const DST: u64 = RAM + 0x8000;
/// The requester of [`TestHost::flood_config_reads`]: its answers are told from the
/// drivers' (whose bridges request as 00:00.0).
pub const FLOOD_REQUESTER: Bdf = Bdf::from_u16(1);

pub fn config(mac: MacAddr, role: BridgeRole, epoch: u32) -> NodeConfig {
    let mut cfg = NodeConfig::new(mac, role, mac.0[5] as u64, epoch);
    cfg.info_interval_us = 5_000;
    // Nobody goes silent in these tests; a slow round must not take a peer down.
    cfg.missed_infos = 200;
    cfg
}

/// `n` hub ports on one pool.
pub fn hub(n: usize) -> Vec<HubPort> {
    let pool = Mempool::new(16384, 2048).unwrap();
    mem::hub(&pool, n, 4096, 1500)
}

/// A box on `port` with `slots` (memdevs: (slot, group)); `tune` sets its node up.
pub fn iobox(port: HubPort, slots: &[(u8, u16)], tune: impl FnOnce(&mut NodeConfig)) -> IoBox {
    let mac = MacAddr(port.info().mac);
    let mut cfg = config(mac, BridgeRole::IoBox, 0x5000_0000 + mac.0[5] as u32);
    tune(&mut cfg);
    let slots = slots
        .iter()
        .map(|&(s, g)| Slot::memdev(s, g, 1 << 16).unwrap())
        .collect();
    IoBox::new(
        FabricPort::new(Node::new(cfg).unwrap(), Box::new(port)),
        slots,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    /// A copy runs; the STATUS read in flight, if any.
    Polling(Option<RequestId>),
}

/// A memdev of a box, as one host drives it.
pub struct Driver {
    pub gid: u16,
    pub peer: MacAddr,
    pub slot: u8,
    /// Where the host placed it (each device on a bus of its own).
    pub bdf: Bdf,
    bar0: u64,
    bridge: Bridge,
    state: State,
    /// Copies verified byte for byte.
    pub copies: u32,
    /// Copies to run.
    pub want: u32,
}

impl Driver {
    fn pattern(&self) -> Vec<u8> {
        let seed = (self.copies as usize) << 8 | self.bdf.bus() as usize;
        (0..COPY_LEN)
            .map(|i| (i.wrapping_add(seed) as u32).wrapping_mul(2654435761) as u8 | 1)
            .collect()
    }

    fn step(&mut self, now: u64) {
        match self.state {
            State::Idle if self.copies < self.want => {
                let mem = self.bridge.memory_mut();
                mem.write(DST, &[0; COPY_LEN]).unwrap();
                let p = self.pattern();
                self.bridge.memory_mut().write(RAM, &p).unwrap();
                for (r, v) in
                    memdev::start_writes(memdev::op::COPY, RAM, DST, COPY_LEN as u32, false)
                {
                    self.bridge
                        .mem_write(now, self.bar0 + r, &v.to_le_bytes())
                        .unwrap();
                }
                self.state = State::Polling(None);
            }
            State::Polling(None) => {
                let id = self
                    .bridge
                    .mem_read(now, self.bar0 + regs::STATUS, 4)
                    .unwrap();
                self.state = State::Polling(Some(id));
            }
            _ => {}
        }
        while let Some(e) = self.bridge.poll_event() {
            let Event::Completed { id, result } = e else {
                continue;
            };
            if self.state != State::Polling(Some(id)) {
                // Config writes of the set-up.
                result.unwrap_or_else(|e| panic!("{:?}: {e}", self.bdf));
                continue;
            }
            let data = result.unwrap_or_else(|e| panic!("{:?}: STATUS: {e}", self.bdf));
            let st = u32::from_le_bytes(data[..4].try_into().unwrap());
            match st {
                status::DONE => {
                    let mut got = vec![0; COPY_LEN];
                    self.bridge.memory().read(DST, &mut got).unwrap();
                    assert!(got == self.pattern(), "{:?}: the copy differs", self.bdf);
                    self.copies += 1;
                    self.bridge
                        .mem_write(now, self.bar0 + regs::STATUS, &0u32.to_le_bytes())
                        .unwrap();
                    self.state = State::Idle;
                }
                status::ERROR => panic!("{:?}: the device reports an error", self.bdf),
                _ => self.state = State::Polling(None),
            }
        }
    }
}

/// A device's engine with its RAM, and the set-up of the device queued: BAR0, then
/// memory space and bus mastering on (the function takes its bus number from the
/// first).
fn set_up(now: u64, bdf: Bdf, bar0: u64) -> Bridge {
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE])).unwrap();
    let mut bridge = Bridge::new(BridgeConfig::default(), mem);
    bridge
        .config_write(now, bdf, 0x10, bar0 as u32, 0xf)
        .unwrap();
    bridge.config_write(now, bdf, 0x04, 0x6, 0x3).unwrap();
    bridge
}

/// A host-role bridge driven by hand.
pub struct TestHost {
    pub node: Node,
    port: HubPort,
    start: Instant,
    /// DATA frames that arrive are thrown away: nothing the boxes send is taken or
    /// acknowledged.
    pub deaf: bool,
    pub drivers: Vec<Driver>,
    next_bus: u8,
    /// Events other than TLPs.
    pub events: Vec<FabricEvent>,
    /// TLPs from (group, box) that no device of this host's claims.
    pub foreign: u64,
    /// The drivers' bridges keep the completions they answer the devices' DMA reads
    /// with (and whatever they would send after one) instead of sending them.
    pub hold_completions: bool,
    /// Tags of the answers to [`TestHost::flood_config_reads`], as they came.
    pub flood_answers: Vec<u16>,
}

impl TestHost {
    pub fn new(port: HubPort, gid: u16, start: Instant) -> TestHost {
        let mac = MacAddr(port.info().mac);
        let mut node =
            Node::new(config(mac, BridgeRole::Host, 0x1000_0000 + mac.0[5] as u32)).unwrap();
        node.join(gid).unwrap();
        TestHost {
            node,
            port,
            start,
            deaf: false,
            drivers: Vec::new(),
            next_bus: 1,
            events: Vec::new(),
            foreign: 0,
            hold_completions: false,
            flood_answers: Vec::new(),
        }
    }

    pub fn mac(&self) -> MacAddr {
        MacAddr(self.port.info().mac)
    }

    /// Verified copies of each device, by (box, slot).
    pub fn copies(&self) -> BTreeMap<(MacAddr, u8), u32> {
        self.drivers
            .iter()
            .map(|d| ((d.peer, d.slot), d.copies))
            .collect()
    }

    /// Every device runs `n` copies (in all).
    pub fn copy(&mut self, n: u32) {
        for d in &mut self.drivers {
            d.want = n;
        }
    }

    /// Whether a driver's bridge holds a completion back ([`TestHost::hold_completions`]).
    pub fn holds_a_completion(&self) -> bool {
        self.drivers.iter().any(|d| {
            d.bridge.peek_transmit().is_some_and(|t| {
                matches!(Tlp::parse(t).map(|t| t.header), Ok(Header::Completion(_)))
            })
        })
    }

    /// Bytes the drivers' bridges answered the devices' DMA reads with (sent or held).
    pub fn dma_read_bytes_served(&self) -> u64 {
        self.drivers
            .iter()
            .map(|d| d.bridge.stats().dma_read_bytes)
            .sum()
    }

    /// Sends `n` config reads to its first device at once, as fast as the session
    /// takes them, from [`FLOOD_REQUESTER`], tagged `i % 256`.
    pub fn flood_config_reads(&mut self, n: u16) {
        let d = &self.drivers[0];
        for i in 0..n {
            let req = ConfigRequest {
                type1: false,
                requester: FLOOD_REQUESTER,
                tag: Tag::new(i % 256).unwrap(),
                target: d.bdf,
                register: 0,
                first_be: 0xf,
            };
            let t = Tlp::new(Header::ConfigRead(req), &[]).to_vec().unwrap();
            self.node.send_tlp(d.gid, d.peer, &t).unwrap();
        }
    }

    fn add_device(&mut self, now: u64, gid: u16, peer: MacAddr, slot: u8) {
        let bus = self.next_bus;
        self.next_bus += 1;
        let bdf = Bdf::new(bus, slot, 0).unwrap();
        let bar0 = 0xe000_0000 + ((bus as u64) << 16);
        let bridge = set_up(now, bdf, bar0);
        self.drivers.push(Driver {
            gid,
            peer,
            slot,
            bdf,
            bar0,
            bridge,
            state: State::Idle,
            copies: 0,
            want: 0,
        });
    }

    fn dispatch(&mut self, now: u64, gid: u16, peer: MacAddr, tlp: &[u8]) {
        let bdf = match Tlp::parse(tlp).map(|t| t.header) {
            Ok(Header::Completion(c)) if c.requester == FLOOD_REQUESTER => {
                self.flood_answers.push(c.tag.value());
                return;
            }
            Ok(Header::Completion(c)) => c.completer,
            Ok(Header::MemRead(r)) => r.requester,
            Ok(Header::MemWrite(w)) => w.requester,
            Ok(Header::Message(m)) => m.requester,
            _ => {
                self.foreign += 1;
                return;
            }
        };
        match self
            .drivers
            .iter_mut()
            .find(|d| (d.gid, d.peer, d.bdf) == (gid, peer, bdf))
        {
            Some(d) => d.bridge.handle_tlp(now, tlp),
            None => self.foreign += 1,
        }
    }

    pub fn round(&mut self) {
        let now = self.start.elapsed().as_micros() as u64;
        for d in &mut self.drivers {
            if d.bridge.poll_timeout().is_some_and(|t| t <= now) {
                d.bridge.handle_timeout(now);
            }
            d.step(now);
            while let Some(t) = d.bridge.peek_transmit() {
                let cpl = matches!(Tlp::parse(t).map(|t| t.header), Ok(Header::Completion(_)));
                if self.hold_completions && cpl {
                    break;
                }
                match self.node.send_tlp(d.gid, d.peer, t) {
                    Ok(()) => {}
                    Err(FabricError::Send(SendError::QueueFull(_))) => break,
                    Err(e) => panic!("{:?}: {e}", d.bdf),
                }
                d.bridge.poll_transmit();
            }
        }
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
        while self.port.rx_burst(&mut rx, 256).unwrap() > 0 {
            for m in rx.drain(..) {
                let bytes = pool.data(&m);
                let data =
                    Frame::parse(bytes, None).is_ok_and(|f| f.header.kind == FrameKind::Data);
                if !(self.deaf && data) {
                    self.node.handle_frame(now, bytes, None);
                }
                pool.put(m);
            }
        }
        while let Some(e) = self.node.poll_event() {
            match e {
                FabricEvent::Tlp { gid, peer, tlp } => self.dispatch(now, gid, peer, &tlp),
                FabricEvent::DeviceAdded { gid, peer, device } => {
                    self.add_device(now, gid, peer, device.slot);
                    self.events.push(e);
                }
                FabricEvent::DeviceRemoved { gid, peer, slot } => {
                    self.drivers
                        .retain(|d| (d.gid, d.peer, d.slot) != (gid, peer, slot));
                    self.events.push(e);
                }
                FabricEvent::PeerRestarted { gid, peer, .. } => {
                    // Its devices were reset, and what was on the way is lost: each
                    // is set up again, and a copy that ran starts over.
                    for d in &mut self.drivers {
                        if (d.gid, d.peer) == (gid, peer) {
                            d.bridge = set_up(now, d.bdf, d.bar0);
                            d.state = State::Idle;
                        }
                    }
                    self.events.push(e);
                }
                e => self.events.push(e),
            }
        }
    }
}

/// Counts the INFO frames each bridge sends in each group, as a port on the hub sees
/// them.
pub struct Tap {
    port: HubPort,
    /// (sender, group) → INFO frames.
    pub infos: BTreeMap<(MacAddr, u16), u64>,
}

impl Tap {
    pub fn new(port: HubPort) -> Tap {
        Tap {
            port,
            infos: BTreeMap::new(),
        }
    }

    pub fn round(&mut self) {
        let pool = self.port.pool().clone();
        let mut rx = Vec::new();
        while self.port.rx_burst(&mut rx, 256).unwrap() > 0 {
            for m in rx.drain(..) {
                if let Ok(f) = Frame::parse(pool.data(&m), None) {
                    if let (FrameKind::Info, Some(g)) = (f.header.kind, f.gid()) {
                        *self.infos.entry((f.ethernet.src, g)).or_default() += 1;
                    }
                }
                pool.put(m);
            }
        }
    }

    /// INFO frames `from` sent in group `gid` so far.
    pub fn count(&self, from: MacAddr, gid: u16) -> u64 {
        self.infos.get(&(from, gid)).copied().unwrap_or(0)
    }
}

/// One round of everything: each host, each box, the tap.
pub fn round(boxes: &mut [&mut IoBox], hosts: &mut [&mut TestHost], tap: Option<&mut Tap>) {
    for h in hosts.iter_mut() {
        h.round();
    }
    for b in boxes.iter_mut() {
        b.poll(Duration::ZERO).unwrap();
    }
    if let Some(t) = tap {
        t.round();
    }
}

/// Runs rounds until `done` holds, at most `max`; returns how many it took.
pub fn rounds_until(
    max: u32,
    boxes: &mut [&mut IoBox],
    hosts: &mut [&mut TestHost],
    mut done: impl FnMut(&[&mut IoBox], &[&mut TestHost]) -> bool,
) -> Option<u32> {
    for r in 0..max {
        if done(boxes, hosts) {
            return Some(r);
        }
        round(boxes, hosts, None);
    }
    done(boxes, hosts).then_some(max)
}
