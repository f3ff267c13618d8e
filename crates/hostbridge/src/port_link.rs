//! The root complex's link over the fabric.
//!
//! It routes in one of two ways:
//! - **switched** ([`FabricLink::switched`]): through the host's virtual switch
//!   ([`crate::route::Router`]), to as many devices of as many boxes as it has ports,
//!   each TLP to the box of the device it is for, and from each box only what its own
//!   devices may send;
//! - **direct** ([`FabricLink::new`], [`FabricLink::set_target`]): every TLP to one box,
//!   and TLPs of any other bridge dropped as stray. The one-device VMM front-ends use
//!   it until they sit on switch ports too.
//!
//! Every queue here is bounded, and what is dropped is counted ([`LinkStats`]):
//! - the outbox of each box (TLPs its session has no room for yet) holds
//!   [`OUTBOX_BYTES`] at most; beyond, [`Link::send`] refuses with [`LinkFull`] and the
//!   host waits (its bridge keeps the TLP and stops answering a device that floods
//!   it, its API callers wait for room). It is cleared, and what it held counted, when
//!   the target changes or its session is lost or restarts. There is one outbox per
//!   box the switch routes to, at most one per port;
//! - the inbox (TLPs from the boxes, and the switch's own answers, the host has not
//!   taken yet) takes TLPs while it holds less than [`INBOX_BYTES`] (so at most that
//!   plus one TLP); beyond, the boxes' TLPs wait in their sessions, whose receive
//!   windows close, and none is dropped;
//! - `events` (fabric events for the program) holds [`MAX_EVENTS`], oldest pushed out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use efe::SendError;
use fabric::{FabricError, FabricEvent};
use rootcomplex::{Link, LinkFull};
use wire::MacAddr;

use fabric::FabricPort;

use crate::route::{Outbound, Router};

/// Bytes of TLPs for the box the link holds beyond what the session has taken.
pub const OUTBOX_BYTES: usize = 1 << 20;
/// Bytes of TLPs from the box the link holds for the host (plus one TLP at most). The
/// host takes them as they come; only a program that runs the fabric without taking
/// TLPs (waiting for a device, say) lets them pile up to this, and then the box's
/// further TLPs wait in the session (back-pressure), not dropped.
pub const INBOX_BYTES: usize = 8 << 20;
/// Fabric events kept for the program.
pub const MAX_EVENTS: usize = 4096;

/// What the link dropped, and how often it was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LinkStats {
    /// TLPs from bridges other than the target, dropped.
    pub stray: u64,
    /// TLPs for the box thrown away unsent: the target changed (or there was none),
    /// or its session was lost or restarted.
    pub outbox_cleared: u64,
    /// TLPs the session refused outright (too large for a frame, empty), dropped.
    pub outbox_refused: u64,
    /// Times `send` refused a TLP because the outbox was full (the host keeps it and
    /// offers it again).
    pub outbox_full: u64,
    /// Fabric events pushed out of `events`, oldest first, because nobody took them.
    pub events_dropped: u64,
}

/// TLPs in order, with their total size.
#[derive(Default)]
struct Queue {
    tlps: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Queue {
    fn push(&mut self, t: Vec<u8>) {
        self.bytes += t.len();
        self.tlps.push_back(t);
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let t = self.tlps.pop_front()?;
        self.bytes -= t.len();
        Some(t)
    }
}

/// How the link routes.
enum Routing {
    /// Every TLP to this box in this group; TLPs of other bridges are stray.
    Direct(Option<(u16, MacAddr)>),
    /// Through the virtual switch.
    Switched(Box<Router>),
}

/// Carries the host's TLPs to the I/O boxes of its devices, and everything the boxes
/// send back. Fabric events other than TLPs (devices added and removed, peers up and
/// down) are kept for the host program in `events`.
pub struct FabricLink {
    fp: FabricPort,
    routing: Routing,
    inbox: Queue,
    /// TLPs for each box (group, MAC) that its session has not taken yet.
    outboxes: BTreeMap<(u16, MacAddr), Queue>,
    pub events: VecDeque<FabricEvent>,
    stats: LinkStats,
}

impl FabricLink {
    /// A direct link, to the one box [`FabricLink::set_target`] names.
    pub fn new(fp: FabricPort) -> FabricLink {
        FabricLink::with_routing(fp, Routing::Direct(None))
    }

    /// A link through the virtual switch `router`: each TLP goes to the box of the
    /// device it is for.
    pub fn switched(fp: FabricPort, router: Router) -> FabricLink {
        FabricLink::with_routing(fp, Routing::Switched(Box::new(router)))
    }

    /// This link, switched through `router` from now on; what it queued for a direct
    /// target is thrown away (counted).
    pub fn into_switched(mut self, router: Router) -> FabricLink {
        let target = self.target();
        self.clear_outbox(target);
        self.routing = Routing::Switched(Box::new(router));
        self
    }

    fn with_routing(fp: FabricPort, routing: Routing) -> FabricLink {
        FabricLink {
            fp,
            routing,
            inbox: Queue::default(),
            outboxes: BTreeMap::new(),
            events: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    /// The virtual switch's router, for a switched link.
    pub fn router(&self) -> Option<&Router> {
        match &self.routing {
            Routing::Switched(r) => Some(r),
            Routing::Direct(_) => None,
        }
    }

    pub fn router_mut(&mut self) -> Option<&mut Router> {
        match &mut self.routing {
            Routing::Switched(r) => Some(r),
            Routing::Direct(_) => None,
        }
    }

    /// Hands the root complex TLPs the switch made (completions that fail requests to
    /// a device that left): they go in after what the inbox holds.
    pub fn deliver_local(&mut self, tlps: Vec<Vec<u8>>) {
        for t in tlps {
            self.inbox.push(t);
        }
    }

    pub fn fabric(&self) -> &FabricPort {
        &self.fp
    }

    pub fn fabric_mut(&mut self) -> &mut FabricPort {
        &mut self.fp
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Bytes of TLPs waiting in the outboxes.
    pub fn outbox_bytes(&self) -> usize {
        self.outboxes.values().map(|q| q.bytes).sum()
    }

    /// A direct link sends TLPs to `box_mac` in group `gid` from now on. TLPs still
    /// queued for another target are thrown away (counted). A switched link routes by
    /// itself and ignores this.
    pub fn set_target(&mut self, gid: u16, box_mac: MacAddr) {
        let Routing::Direct(target) = &mut self.routing else {
            return;
        };
        let old = target.replace((gid, box_mac));
        if old.is_some_and(|t| t != (gid, box_mac)) {
            self.clear_outbox(old);
        }
    }

    /// The box of a direct link.
    pub fn target(&self) -> Option<(u16, MacAddr)> {
        match self.routing {
            Routing::Direct(t) => t,
            Routing::Switched(_) => None,
        }
    }

    /// Throws away what is queued for `to` (counted).
    fn clear_outbox(&mut self, to: Option<(u16, MacAddr)>) {
        if let Some(q) = to.and_then(|t| self.outboxes.remove(&t)) {
            self.stats.outbox_cleared += q.tlps.len() as u64;
        }
    }

    /// Waits up to `timeout` for a device to be announced in group `gid` (a hot-plug),
    /// running the fabric meanwhile; the event is taken out of `events`.
    pub fn wait_for_device(
        &mut self,
        gid: u16,
        timeout: Duration,
    ) -> Option<(MacAddr, wire::DeviceInfo)> {
        let end = Instant::now() + timeout;
        loop {
            let at = self
                .events
                .iter()
                .position(|e| matches!(e, FabricEvent::DeviceAdded { gid: g, .. } if *g == gid));
            if let Some(i) = at {
                if let Some(FabricEvent::DeviceAdded { peer, device, .. }) = self.events.remove(i) {
                    return Some((peer, device));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            self.poll(Duration::from_millis(1));
        }
    }

    /// Runs the fabric for a moment: frames, timers, events.
    pub fn poll(&mut self, wait: Duration) {
        let _ = self.fp.poll(wait);
        loop {
            // A full inbox leaves the boxes' TLPs in their sessions, whose receive
            // windows close: the boxes wait instead of their TLPs being dropped. (A
            // direct link takes, and drops as stray, what others send.)
            let full = self.inbox.bytes >= INBOX_BYTES;
            let target = self.target();
            let switched = matches!(self.routing, Routing::Switched(_));
            let Some(e) = self
                .fp
                .poll_event_where(|gid, peer| !full || (!switched && Some((gid, peer)) != target))
            else {
                break;
            };
            match e {
                FabricEvent::Tlp { gid, peer, tlp } => {
                    let accept = match &mut self.routing {
                        Routing::Direct(t) => *t == Some((gid, peer)),
                        Routing::Switched(r) => r.inbound(gid, peer, &tlp),
                    };
                    if accept {
                        self.inbox.push(tlp)
                    } else {
                        self.stats.stray += 1
                    }
                }
                other => {
                    // What was queued for a session that is gone or started over
                    // belongs to it.
                    if let FabricEvent::PeerDown { gid, peer, .. }
                    | FabricEvent::PeerRestarted { gid, peer, .. } = other
                    {
                        self.clear_outbox(Some((gid, peer)));
                    }
                    if self.events.len() >= MAX_EVENTS {
                        self.events.pop_front();
                        self.stats.events_dropped += 1;
                    }
                    self.events.push_back(other);
                }
            }
        }
        self.queue_in_session();
    }

    /// Moves queued TLPs into their sessions (as many as each takes now).
    fn queue_in_session(&mut self) {
        let keys: Vec<(u16, MacAddr)> = self.outboxes.keys().copied().collect();
        for k in keys {
            self.queue_in(k);
        }
    }

    /// Moves the TLPs queued for box `to` into its session (as many as it takes now).
    fn queue_in(&mut self, to: (u16, MacAddr)) {
        let Some(q) = self.outboxes.get_mut(&to) else {
            return;
        };
        while let Some(t) = q.tlps.front() {
            match offer(&mut self.fp, &mut self.stats, to, t) {
                Offer::Taken => {}
                // No room now: later.
                Offer::Full => return,
                // Nothing queued for it will go.
                Offer::Gone => return self.clear_outbox(Some(to)),
            }
            q.pop();
        }
        self.outboxes.remove(&to);
    }
}

/// What became of a TLP offered to a box's session.
enum Offer {
    /// Queued, or refused for good (too large or empty: counted, `outbox_refused`).
    Taken,
    /// No room in the session's send queue now.
    Full,
    /// No session (the peer is gone), or it is down.
    Gone,
}

fn offer(fp: &mut FabricPort, stats: &mut LinkStats, to: (u16, MacAddr), tlp: &[u8]) -> Offer {
    match fp.node_mut().send_tlp(to.0, to.1, tlp) {
        Ok(()) => Offer::Taken,
        Err(FabricError::Send(SendError::QueueFull(_))) => Offer::Full,
        Err(FabricError::Send(SendError::TooLarge { .. } | SendError::Empty)) => {
            stats.outbox_refused += 1;
            Offer::Taken
        }
        Err(_) => Offer::Gone,
    }
}

impl Link for FabricLink {
    /// Queues `tlp` for the box, unless the outbox holds [`OUTBOX_BYTES`] already
    /// (then nothing is queued, and the caller keeps it).
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull> {
        let to = match &mut self.routing {
            Routing::Direct(Some(t)) => *t,
            Routing::Direct(None) => {
                // Nowhere to go: thrown away as a cleared outbox is.
                self.stats.outbox_cleared += 1;
                return Ok(());
            }
            Routing::Switched(r) => match r.outbound(tlp) {
                Outbound::Fabric { gid, mac } => (gid, mac),
                Outbound::Answer(a) => {
                    self.inbox.push(a);
                    return Ok(());
                }
                Outbound::Dropped => return Ok(()),
            },
        };
        let over = |q: Option<&Queue>| {
            q.is_some_and(|q| !q.tlps.is_empty() && q.bytes + tlp.len() > OUTBOX_BYTES)
        };
        if over(self.outboxes.get(&to)) {
            self.queue_in(to);
            if over(self.outboxes.get(&to)) {
                self.stats.outbox_full += 1;
                return Err(LinkFull);
            }
        }
        if !self.outboxes.contains_key(&to) {
            // Nothing waits before it: straight into the session when it has room
            // (the session copies it; no buffer of our own per TLP).
            match offer(&mut self.fp, &mut self.stats, to, tlp) {
                Offer::Taken => return Ok(()),
                Offer::Full => {}
                // Thrown away as a cleared outbox is.
                Offer::Gone => {
                    self.stats.outbox_cleared += 1;
                    return Ok(());
                }
            }
        }
        self.outboxes.entry(to).or_default().push(tlp.to_vec());
        self.queue_in(to);
        Ok(())
    }

    /// The buffer of a TLP `recv` returned, back to the session of its box for reuse.
    fn recycle(&mut self, tlp: Vec<u8>) {
        if let Some((gid, peer)) = self.target() {
            self.fp.node_mut().recycle(gid, peer, tlp);
        }
    }

    fn flush(&mut self) {
        self.queue_in_session();
        let _ = self.fp.poll(Duration::ZERO);
    }

    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(t) = self.inbox.pop() {
                return Some(t);
            }
            let left = end.saturating_duration_since(Instant::now());
            self.poll(left.min(Duration::from_micros(500)));
            if self.inbox.tlps.is_empty() && Instant::now() >= end {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::ports::mem;
    use dataplane::{Mempool, Port};
    use fabric::{Node, NodeConfig};
    use iobox::{IoBox, Slot};
    use wire::BridgeRole;

    const GID: u16 = 10;

    fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Node {
        let mut cfg = NodeConfig::new(MacAddr(port.info().mac), role, id, 1000 + id as u32);
        cfg.info_interval_us = 20_000;
        cfg.session.send_queue = 8;
        Node::new(cfg).unwrap()
    }

    /// A host link whose box was found and then went silent: nothing it is sent is
    /// acknowledged, so the session fills and the link holds the rest.
    fn stalled_link() -> (FabricLink, MacAddr, IoBox) {
        let pool = Mempool::new(8192, 2048).unwrap();
        let (a, b) = mem::pair(&pool, 1024, 1500);
        let n = node(&a, BridgeRole::IoBox, 7);
        let mut iobox = IoBox::new(
            FabricPort::new(n, Box::new(a)),
            vec![Slot::memdev(0, GID, 1 << 16).unwrap()],
        );
        let mut hn = node(&b, BridgeRole::Host, 1);
        hn.join(GID).unwrap();
        let mut link = FabricLink::new(FabricPort::new(hn, Box::new(b)));
        let end = Instant::now() + Duration::from_secs(5);
        let peer = loop {
            iobox.poll(Duration::ZERO).unwrap();
            if let Some((peer, _)) = link.wait_for_device(GID, Duration::from_millis(1)) {
                break peer;
            }
            assert!(Instant::now() < end, "no device announced");
        };
        link.set_target(GID, peer);
        (link, peer, iobox)
    }

    /// Fills the link until it refuses; returns how many TLPs it took.
    fn fill(link: &mut FabricLink, tlp: &[u8]) -> usize {
        let mut taken = 0;
        while link.send(tlp).is_ok() {
            taken += 1;
            assert!(taken < 100_000, "the link never refuses");
        }
        taken
    }

    /// A host program that runs the fabric without taking TLPs while the box sends
    /// more than the inbox holds: the inbox fills, then the box's TLPs wait in the
    /// session (its receive window closes) instead of being dropped, and every one of
    /// them arrives, once and in order, when the host takes them.
    #[test]
    fn a_full_inbox_holds_the_box_back_instead_of_dropping() {
        let pool = Mempool::new(8192, 2048).unwrap();
        let (a, b) = mem::pair(&pool, 1024, 1500);
        let box_mac = MacAddr(a.info().mac);
        let mut bn = node(&a, BridgeRole::Host, 7);
        bn.join(GID).unwrap();
        let mut sender = FabricPort::new(bn, Box::new(a));
        let mut hn = node(&b, BridgeRole::Host, 1);
        hn.join(GID).unwrap();
        let host_mac = hn.config().mac;
        let mut link = FabricLink::new(FabricPort::new(hn, Box::new(b)));
        link.set_target(GID, box_mac);
        let end = Instant::now() + Duration::from_secs(5);
        while sender.node().peer_role(GID, host_mac).is_none()
            || link.fabric().node().peer_role(GID, box_mac).is_none()
        {
            sender.poll(Duration::ZERO).unwrap();
            link.poll(Duration::from_millis(1));
            assert!(Instant::now() < end, "the bridges never met");
        }
        let tlp = |i: usize| {
            let mut t = vec![(i % 251) as u8; 1024];
            t[..4].copy_from_slice(&(i as u32).to_be_bytes());
            t
        };
        let total = INBOX_BYTES / 1024 + 800;
        let mut sent = 0;
        let end = Instant::now() + Duration::from_secs(60);
        // The host runs the fabric but takes no TLP until the box has sent them all.
        while sent < total || sender.node().send_room(GID, host_mac) < 8 {
            while sent < total
                && sender
                    .node_mut()
                    .send_tlp(GID, host_mac, &tlp(sent))
                    .is_ok()
            {
                sent += 1;
            }
            sender.poll(Duration::ZERO).unwrap();
            link.poll(Duration::ZERO);
            assert!(Instant::now() < end, "sent {sent} of {total}");
        }
        for _ in 0..200 {
            sender.poll(Duration::ZERO).unwrap();
            link.poll(Duration::from_micros(100));
        }
        assert!(
            link.inbox.bytes >= INBOX_BYTES && link.inbox.bytes <= INBOX_BYTES + 1024,
            "{}",
            link.inbox.bytes
        );
        let mut got = 0;
        let end = Instant::now() + Duration::from_secs(60);
        while got < total {
            sender.poll(Duration::ZERO).unwrap();
            if let Some(t) = link.recv(Duration::from_millis(1)) {
                assert_eq!(t, tlp(got), "TLP {got}");
                got += 1;
            }
            assert!(Instant::now() < end, "got {got} of {total}");
        }
        for _ in 0..50 {
            sender.poll(Duration::ZERO).unwrap();
            assert_eq!(link.recv(Duration::from_micros(100)), None, "a TLP twice");
        }
    }

    /// A box that stops acknowledging: the outbox fills to its bound and then refuses
    /// (counted); a change of target throws what it held away, counted.
    #[test]
    fn the_outbox_is_bounded_and_a_clear_is_counted() {
        let (mut link, peer, _iobox) = stalled_link();
        let tlp = vec![0x40u8; 1024];
        fill(&mut link, &tlp);
        let held = link.outbox_bytes();
        assert!(held <= OUTBOX_BYTES && held + tlp.len() > OUTBOX_BYTES);
        assert_eq!(link.send(&tlp), Err(LinkFull));
        let s = link.stats();
        assert_eq!(s.outbox_full, 2);
        assert_eq!(s.outbox_cleared, 0);
        link.set_target(GID, MacAddr([2, 0, 0, 0, 0, 0x99]));
        assert_eq!(link.outbox_bytes(), 0);
        assert_eq!(
            link.stats().outbox_cleared,
            (held / tlp.len()) as u64,
            "{:?}",
            link.stats()
        );
        // Back to the box: a target that does not change keeps the queue.
        link.set_target(GID, peer);
        link.send(&tlp).unwrap();
        let queued = link.outbox_bytes();
        link.set_target(GID, peer);
        assert_eq!(link.outbox_bytes(), queued);
    }

    /// The box stays silent until its session is declared lost: what the outbox held
    /// for it is thrown away then, counted, and the link takes TLPs again.
    #[test]
    fn losing_the_session_clears_the_outbox_counted() {
        let (mut link, peer, _iobox) = stalled_link();
        let tlp = vec![0x40u8; 1024];
        let taken = fill(&mut link, &tlp);
        let mut held = (link.outbox_bytes() / tlp.len()) as u64;
        assert!(held > 0 && (held as usize) < taken);
        let end = Instant::now() + Duration::from_secs(10);
        while !link
            .events
            .iter()
            .any(|e| matches!(e, FabricEvent::PeerDown { peer: p, .. } if *p == peer))
        {
            assert!(
                Instant::now() < end,
                "the silent box was never declared down"
            );
            // The session takes a few more as its pacing lets it.
            held = (link.outbox_bytes() / tlp.len()) as u64;
            link.poll(Duration::from_millis(1));
        }
        assert!(held > 0);
        assert_eq!(link.outbox_bytes(), 0);
        assert_eq!(link.stats().outbox_cleared, held);
        assert_eq!(link.send(&tlp), Ok(()));
    }
}
