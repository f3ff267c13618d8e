//! A deterministic network simulator for EFE sessions: a virtual clock, links with
//! bandwidth, delay, queues and seeded faults, bridges that exchange real tether
//! frames (Ethernet, 802.1Q GID, header, records, CRC-32C), and flows of real TLPs
//! whose every byte the receiving side checks.
//!
//! The same seed gives the same run on any machine.

pub use netem::{Link, LinkConfig, LinkStats, Rng};

use tlp::{Bdf, Header, MemWrite, Tag, Tlp};
use wire::{EthernetRepr, Frame, MacAddr, VlanTag, ETHERTYPE};

use crate::session::{Event, Micros, Session};
use crate::settings::{Config, ConfigError};

/// The group the simulated bridges share.
pub const SIM_GID: u16 = 10;

/// A bridge: one session to its peer, and the link its frames leave on.
pub struct Node {
    pub session: Session,
    pub mac: MacAddr,
    pub out_link: usize,
    pub peer: usize,
    /// Descheduled until then (as a bridge thread the OS does not run): no timers,
    /// no receiving, no sending. Frames that arrive meanwhile wait in `backlog`.
    pub paused_until: Micros,
    paused_at: Micros,
    backlog: Vec<Vec<u8>>,
}

impl Node {
    fn runs(&self, now: Micros) -> bool {
        now >= self.paused_until
    }
}

/// A one-way stream of `total` memory writes of `payload` bytes each, checked on arrival.
#[derive(Debug, Clone)]
pub struct Flow {
    pub sender: usize,
    pub receiver: usize,
    pub total: u64,
    pub payload: usize,
    pub sent: u64,
    pub received: u64,
    pub bytes_delivered: u64,
    pub first_delivery: Option<Micros>,
    pub last_delivery: Option<Micros>,
    /// What the receiving side found wrong: wrong order, duplicates, corruption.
    pub errors: Vec<String>,
}

impl Flow {
    pub fn complete(&self) -> bool {
        self.received == self.total
    }

    /// TLP payload bytes delivered per second between `from` and `to` (µs).
    pub fn goodput_between(&self, bytes: u64, from: Micros, to: Micros) -> f64 {
        bytes as f64 * 1e6 / (to.saturating_sub(from).max(1)) as f64
    }
}

/// The bytes of the `i`th TLP of a flow: a MWr whose data starts with `i` and continues
/// with a pattern derived from it.
pub fn flow_tlp(i: u64, payload: usize) -> Vec<u8> {
    let mut data = vec![0u8; payload];
    data[..8].copy_from_slice(&i.to_le_bytes());
    for (k, b) in data[8..].iter_mut().enumerate() {
        *b = (i as usize).wrapping_mul(31).wrapping_add(k) as u8;
    }
    let t = Tlp::new(
        Header::MemWrite(MemWrite {
            requester: Bdf::from_u16(0x0100),
            tag: Tag::default(),
            address: 0x1000_0000 + (i % 16) * 256,
            first_be: 0xf,
            last_be: 0xf,
            hint: None,
        }),
        &data,
    );
    let mut out = vec![0u8; t.buffer_len()];
    t.emit(&mut out).expect("flow TLPs are valid");
    out
}

/// Why a delivered TLP is not the one expected next.
fn check_delivery(bytes: &[u8], expected: u64, payload: usize) -> Result<(), String> {
    if bytes != flow_tlp(expected, payload).as_slice() {
        let got = Tlp::parse(bytes).ok().and_then(|t| {
            t.payload
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        });
        return Err(format!(
            "expected TLP {expected}, got {got:?} ({} bytes)",
            bytes.len()
        ));
    }
    Ok(())
}

pub struct Sim {
    pub now: Micros,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub flows: Vec<Flow>,
    /// Session events as (time, node, event).
    pub events: Vec<(Micros, usize, Event)>,
    /// Frames that failed to parse at a receiver (corruption caught by the frame check).
    pub frames_rejected: u64,
    /// Whether a node that was paused tells its sessions how long the frames it finds
    /// may have waited (`Session::handle_frame_since`), as tether's bridges do.
    pub report_waits: bool,
    rng: Rng,
    buf: Vec<u8>,
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: 0,
            nodes: Vec::new(),
            links: Vec::new(),
            flows: Vec::new(),
            events: Vec::new(),
            frames_rejected: 0,
            report_waits: true,
            rng: Rng::new(seed),
            buf: vec![0u8; 65536],
        }
    }

    pub fn add_link(&mut self, cfg: LinkConfig) -> usize {
        self.links.push(Link::new(cfg));
        self.links.len() - 1
    }

    /// Adds a bridge whose frames leave on `out_link`; `peer` is set by `connect`.
    pub fn add_node(&mut self, session: Session, out_link: usize) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            session,
            mac: MacAddr([2, 0, 0, 0, 0, i as u8 + 1]),
            out_link,
            peer: usize::MAX,
            paused_until: 0,
            paused_at: 0,
            backlog: Vec::new(),
        });
        i
    }

    pub fn connect(&mut self, a: usize, b: usize) {
        self.nodes[a].peer = b;
        self.nodes[b].peer = a;
    }

    pub fn add_flow(
        &mut self,
        sender: usize,
        receiver: usize,
        total: u64,
        payload: usize,
    ) -> usize {
        assert!(
            payload >= 8 && payload.is_multiple_of(4) && payload <= 256,
            "flow TLP payloads are 8..=256 bytes, whole DWs"
        );
        self.flows.push(Flow {
            sender,
            receiver,
            total,
            payload,
            sent: 0,
            received: 0,
            bytes_delivered: 0,
            first_delivery: None,
            last_delivery: None,
            errors: Vec::new(),
        });
        self.flows.len() - 1
    }

    /// `pairs` sender/receiver pairs whose senders share one `bottleneck` link (each
    /// receiver answers on a link of its own, `LinkConfig::default()`). Senders are
    /// nodes 0, 2, 4...; their receivers 1, 3, 5... Returns the simulator and the
    /// bottleneck's link index.
    pub fn dumbbell(
        seed: u64,
        cfg: Config,
        bottleneck: LinkConfig,
        pairs: usize,
    ) -> Result<(Sim, usize), ConfigError> {
        let mut sim = Sim::new(seed);
        let shared = sim.add_link(bottleneck);
        for p in 0..pairs as u32 {
            let back = sim.add_link(LinkConfig::default());
            let a = sim.add_node(Session::new(cfg, 10 * p + 11)?, shared);
            let b = sim.add_node(Session::new(cfg, 10 * p + 12)?, back);
            sim.connect(a, b);
        }
        Ok((sim, shared))
    }

    /// Deschedules `node` from now until `until`.
    pub fn pause(&mut self, node: usize, until: Micros) {
        self.nodes[node].paused_until = until;
        self.nodes[node].paused_at = self.now;
    }

    /// Replaces a node's session, as a restarted bridge would come back.
    pub fn replace_session(&mut self, node: usize, session: Session) {
        self.nodes[node].session = session;
    }

    /// Runs until every flow is complete (true) or `deadline` passes (false).
    pub fn run(&mut self, deadline: Micros) -> bool {
        self.run_while(deadline, |sim| !sim.flows.iter().all(Flow::complete))
    }

    /// Runs while `go_on` holds and the clock is before `deadline`. Returns true when it
    /// stopped because `go_on` turned false.
    pub fn run_while(&mut self, deadline: Micros, mut go_on: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if !go_on(self) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            self.step();
            let next = self.next_event().unwrap_or(deadline).max(self.now + 1);
            self.now = next.min(deadline);
        }
    }

    fn next_event(&self) -> Option<Micros> {
        let links = self.links.iter().filter_map(Link::next_arrival);
        // A paused node's timers run, and its backlog is taken, when it resumes.
        let timers = self.nodes.iter().filter_map(|n| {
            let t = if n.backlog.is_empty() {
                n.session.poll_timeout()?
            } else {
                n.paused_until
            };
            Some(t.max(n.paused_until))
        });
        links.chain(timers).min()
    }

    /// Everything that happens at `self.now`.
    fn step(&mut self) {
        let now = self.now;
        for n in self.nodes.iter_mut().filter(|n| n.runs(now)) {
            if n.session.poll_timeout().is_some_and(|t| t <= now) {
                n.session.handle_timeout(now);
            }
            let since = if self.report_waits { n.paused_at } else { now };
            for frame in std::mem::take(&mut n.backlog) {
                if !deliver(&mut n.session, now, since, &frame) {
                    self.frames_rejected += 1;
                }
            }
        }
        // Sources keep their send queues full.
        for f in &mut self.flows {
            let s = &mut self.nodes[f.sender].session;
            while f.sent < f.total && s.send_room() > 0 {
                if s.send(&flow_tlp(f.sent, f.payload)).is_err() {
                    break;
                }
                f.sent += 1;
            }
        }
        self.transmit_all();
        // Deliveries.
        for l in 0..self.links.len() {
            while let Some((dest, frame)) = self.links[l].pop_arrived(now) {
                if !self.nodes[dest].runs(now) {
                    self.nodes[dest].backlog.push(frame);
                    continue;
                }
                if !deliver(&mut self.nodes[dest].session, now, now, &frame) {
                    self.frames_rejected += 1;
                }
            }
        }
        // Sinks check what arrives.
        for f in &mut self.flows {
            if !self.nodes[f.receiver].runs(now) {
                continue;
            }
            let s = &mut self.nodes[f.receiver].session;
            while let Some(tlp) = s.recv() {
                if let Err(e) = check_delivery(&tlp, f.received, f.payload) {
                    if f.errors.len() < 10 {
                        f.errors.push(format!("t={now}: {e}"));
                    }
                }
                f.received += 1;
                f.bytes_delivered += f.payload as u64;
                f.first_delivery.get_or_insert(now);
                f.last_delivery = Some(now);
                // Its buffer goes back for reuse, as the bridges' do: every later TLP
                // and frame that takes it must come out whole.
                s.recycle(tlp);
            }
        }
        for (i, n) in self.nodes.iter_mut().enumerate() {
            while let Some(e) = n.session.poll_event() {
                self.events.push((now, i, e));
            }
        }
        // Acknowledgements the deliveries asked for leave at once.
        self.transmit_all();
    }

    fn transmit_all(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let (mac, peer, link) = (
                self.nodes[i].mac,
                self.nodes[i].peer,
                self.nodes[i].out_link,
            );
            if peer == usize::MAX || !self.nodes[i].runs(now) {
                continue;
            }
            let peer_mac = self.nodes[peer].mac;
            let eth = EthernetRepr {
                dst: peer_mac,
                src: mac,
                vlan: Some(VlanTag {
                    pcp: 0,
                    dei: false,
                    vid: SIM_GID,
                }),
                ethertype: ETHERTYPE,
            };
            while let Some(tx) = self.nodes[i].session.poll_transmit(now) {
                let n = tx
                    .write_frame(&mut self.buf, &eth, None)
                    .expect("the buffer holds a whole frame");
                let frame = self.buf[..n].to_vec();
                self.links[link].send(now, peer, frame, &mut self.rng);
            }
        }
    }
}

/// Hands `frame`, found at `now` and waiting since `since`, to `session`; false when it
/// does not parse (corruption caught by the frame check).
fn deliver(session: &mut Session, now: Micros, since: Micros, frame: &[u8]) -> bool {
    match Frame::parse(frame, None) {
        Ok(fr) => {
            let _ = session.handle_frame_since(now, since, &fr.header, fr.payload);
            true
        }
        Err(_) => false,
    }
}
