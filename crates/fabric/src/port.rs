//! A fabric node on a dataplane port: frames between the two, timers, events.
//!
//! [`FabricPort`] is a [`dataplane::poll::Pollable`]: [`FabricPort::round`] moves
//! frames and runs due timers, [`FabricPort::wake`] names the port's descriptor and
//! the node's next timer. Its own [`FabricPort::poll`] and loops built around it (the
//! I/O box's) idle as the port's [`IdlePolicy`] says, through the one poll driver.

use std::time::{Duration, Instant};

use dataplane::poll::{Idle, IdlePolicy, Poller, Waker};
use dataplane::{Mbuf, PoolCache, Port, PortError};
use wire::{BridgeRole, MacAddr};

use crate::{FabricError, FabricEvent, Node, NodeConfig};

/// What every bridge sets the same way on its node (a bridge program's `[bridge]`
/// settings).
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// The bridge id announced in INFO (default: the port's MAC address as a number).
    pub id: Option<u64>,
    pub info_interval_ms: u64,
    /// A peer silent for this many intervals is down.
    pub missed_infos: u32,
    /// TLPs per frame at most (1 turns aggregation off).
    pub max_tlps_per_frame: Option<usize>,
    /// Smallest retransmission timeout.
    pub rto_min_us: u64,
    /// Queueing delay the rate control aims for above the base RTT.
    pub target_delay_us: u32,
    /// The keys of the groups that authenticate their frames.
    pub keys: crate::GroupKeys,
    /// Most peers in one group (`NodeConfig::max_peers_per_group`).
    pub max_peers_per_group: usize,
    /// The managers whose signed requests a box obeys (`NodeConfig::managers`).
    pub managers: Option<std::sync::Arc<crate::keys::TrustedManagers>>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            id: None,
            info_interval_ms: 100,
            missed_infos: 3,
            max_tlps_per_frame: None,
            rto_min_us: 1000,
            target_delay_us: 50,
            keys: crate::GroupKeys::default(),
            max_peers_per_group: 64,
            managers: None,
        }
    }
}

/// A fabric node for a bridge of `role` on `port`, with a fresh boot epoch.
pub fn node_for(port: &dyn Port, role: BridgeRole, s: &NodeSettings) -> Result<Node, FabricError> {
    let mac = MacAddr(port.info().mac);
    let id = s.id.unwrap_or_else(|| crate::manager::mac_value(mac));
    let mut n = NodeConfig::new(mac, role, id, crate::fresh_epoch());
    // A frame must fit in one pool buffer: on a link with a larger MTU (jumbo frames)
    // the bridge sends frames no larger than its buffers.
    let room = port
        .pool()
        .buf_size()
        .saturating_sub(dataplane::open::FRAME_OVERHEAD);
    n.mtu = port.info().mtu.min(room).min(u16::MAX as usize) as u16;
    n.info_interval_us = s.info_interval_ms * 1000;
    n.missed_infos = s.missed_infos;
    n.keys = s.keys.clone();
    n.max_peers_per_group = s.max_peers_per_group;
    n.managers = s.managers.clone();
    n.session.rto_min_us = s.rto_min_us;
    n.session.rate.target_queueing_us = s.target_delay_us;
    n.session.rto_initial_us = n.session.rto_initial_us.max(2 * s.rto_min_us);
    n.session.rto_max_us = n.session.rto_max_us.max(n.session.rto_initial_us);
    if let Some(k) = s.max_tlps_per_frame {
        n.session.max_tlps_per_frame = k;
    }
    Node::new(n)
}

/// The wall clock in µs since the Unix epoch (0 if the clock is before it).
pub fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Frames a node received and dropped without acting on them.
fn ignored(s: &crate::FabricStats) -> u64 {
    s.other_group
        + s.own_frames
        + s.bad_frames
        + s.unknown_peer
        + s.auth_missing
        + s.auth_bad
        + s.auth_unexpected
        + s.replayed_infos
        + s.replayed_ctrl
        + s.stale_run_frames
        + s.infos_limited
}

/// A node and its port, on one clock.
pub struct FabricPort {
    node: Node,
    port: Box<dyn Port>,
    epoch: Instant,
    rx: Vec<Mbuf>,
    tx: Vec<Mbuf>,
    /// When the loop last found the port with nothing to receive: frames that are
    /// there now may have waited since then. µs on this port's clock.
    looked_at: u64,
    /// The idle decisions of loops on this port: busy-poll for the policy's `spin`
    /// after the last work, and only then sleep (a sleeping bridge delays acks and
    /// completions, which the peer's delay-based rate control would take for
    /// congestion).
    poller: Poller,
    /// Reused by each sleep of [`FabricPort::poll`].
    waker: Waker,
    /// Buffers for the frames the node writes, and where received frames go back:
    /// a per-thread cache, so that a round touches the pool's shared ring only in
    /// bulk (not for the buffer each round takes and, with nothing to send, returns).
    bufs: PoolCache,
    /// Frames the node made that did not fit a pool buffer (never, with a sane MTU).
    pub oversize: u64,
}

/// Frames taken from the port per round.
const RX_BURST: usize = 64;

/// Buffers a port's cache holds (up to twice this before it gives back to the pool).
const BUF_CACHE: usize = 64;

/// The soonest a timer that is due (or overdue: one the round could not act on, such
/// as a paced frame behind a full TX ring) brings a sleeping loop back: it is looked
/// at again after this, not in a busy loop.
pub const TIMER_FLOOR: Duration = Duration::from_micros(50);

impl FabricPort {
    /// A node on its port with the default [`IdlePolicy`] (busy-poll for 2 ms after
    /// the last activity, never yield).
    pub fn new(mut node: Node, port: Box<dyn Port>) -> FabricPort {
        // The port's clock starts at 0 now: the node's wall clock is that plus the
        // time since the Unix epoch.
        node.set_wall_offset(wall_clock_us());
        let bufs = port.pool().cache(BUF_CACHE);
        FabricPort {
            node,
            port,
            bufs,
            epoch: Instant::now(),
            rx: Vec::with_capacity(64),
            tx: Vec::with_capacity(64),
            looked_at: 0,
            poller: Poller::new(IdlePolicy::default()),
            waker: Waker::new(),
            oversize: 0,
        }
    }

    /// A node on its port that busy-polls for `spin` after the last activity and
    /// yields from `yield_after` on (see [`FabricPort::set_spin`],
    /// [`FabricPort::set_yield_after`]).
    pub fn with_policy(
        node: Node,
        port: Box<dyn Port>,
        spin: Duration,
        yield_after: Option<Duration>,
    ) -> FabricPort {
        let mut fp = FabricPort::new(node, port);
        fp.set_spin(spin);
        fp.set_yield_after(yield_after);
        fp
    }

    /// How long the loop keeps busy-polling after the last activity before it sleeps
    /// (default 2 ms; zero sleeps at once, as a mostly idle bridge may prefer).
    pub fn set_spin(&mut self, spin: Duration) {
        let p = self.poller.policy();
        self.poller.set_policy(IdlePolicy { spin, ..p });
    }

    /// While busy-polling, yield the core at each empty round once `after` has passed
    /// since the last activity (`None`, the default: never). Where the bridge shares
    /// its cores (a VMM, the other bridge), a waiting thread then runs at once rather
    /// than at the end of a time slice; where it has its core, yielding only adds the
    /// system call and now and then a wait behind kernel threads.
    pub fn set_yield_after(&mut self, after: Option<Duration>) {
        let p = self.poller.policy();
        self.poller.set_policy(IdlePolicy {
            yield_after: after,
            ..p
        });
    }

    /// How loops on this port idle.
    pub fn idle_policy(&self) -> IdlePolicy {
        self.poller.policy()
    }

    /// Sets spin, yield and the longest sleep at once.
    pub fn set_idle_policy(&mut self, policy: IdlePolicy) {
        self.poller.set_policy(policy);
    }

    /// What the idle decisions of this port's loop have been.
    pub fn poll_stats(&self) -> dataplane::poll::PollStats {
        self.poller.stats()
    }

    /// Microseconds since this port started: the clock of its node and sessions.
    pub fn now(&self) -> u64 {
        self.micros(Instant::now())
    }

    /// `at` on this port's clock (µs since it started).
    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch)
            .as_micros()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// The moment `us` on this port's clock is (`None`: too far to say, as a timer
    /// that is never due).
    pub fn instant(&self, us: u64) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_micros(us))
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    pub fn port(&self) -> &dyn Port {
        &*self.port
    }

    /// For programs that also wait on other inputs: the port's descriptor (if it has
    /// one) and how long the node's timers let them wait.
    pub fn wait_hint(&self) -> (Option<std::os::fd::RawFd>, Duration) {
        let until_timer = self.node.poll_timeout().saturating_sub(self.now());
        (self.port.rx_fd(), Duration::from_micros(until_timer))
    }

    /// One round at `now`: sends what the node has, receives what the port has, runs
    /// due timers. Returns whether anything moved (frames the node acted on, frames
    /// sent, new events); never waits.
    pub fn round(&mut self, now: Instant) -> Result<bool, PortError> {
        // The clock is read once per round, and once more when frames arrived (their
        // timestamps feed the RTT samples).
        let mut worked = false;
        // Events the caller left (it takes them when it can: back-pressure) are not
        // new work; events made this round are.
        let pending = self.node.pending_events();
        let mut now = self.micros(now);
        if self.node.poll_timeout() <= now {
            self.node.handle_timeout(now);
        }
        worked |= self.flush(now)?;
        let n = self.port.rx_burst(&mut self.rx, RX_BURST)?;
        if n > 0 {
            // Frames the node drops (other groups, our own echoes, damage) are not
            // work: a bridge on a busy segment must not spin on others' traffic.
            let before = ignored(&self.node.stats());
            now = self.now();
            let pool = self.port.pool().clone();
            let since = self.looked_at;
            for m in &self.rx {
                self.node.handle_frame_since(now, since, pool.data(m), None);
            }
            self.bufs.put_all(&mut self.rx);
            worked |= ignored(&self.node.stats()) - before < n as u64;
            self.flush(now)?;
        }
        if n < RX_BURST {
            // Drained: what comes next arrives after this.
            self.looked_at = now;
        }
        worked |= self.node.pending_events() > pending;
        Ok(worked)
    }

    /// What brings new work to a sleeping loop on this port: the port's descriptor
    /// (or, for a port without one, short sleeps) and the node's next timer (at the
    /// soonest [`TIMER_FLOOR`] from now).
    pub fn wake(&self, w: &mut Waker) {
        match self.port.rx_fd() {
            Some(fd) => w.fd(fd),
            None => w.fdless(),
        }
        self.timer(w, self.node.poll_timeout());
    }

    /// A timer at `us` on this port's clock as a deadline of `w`, at the soonest
    /// [`TIMER_FLOOR`] from now.
    pub fn timer(&self, w: &mut Waker, us: u64) {
        let soonest = self.now().saturating_add(TIMER_FLOOR.as_micros() as u64);
        if let Some(at) = self.instant(us.max(soonest)) {
            w.deadline(at);
        }
    }

    /// Whether the idle step at `now` after a round that did work (`worked`) or not,
    /// allowed to wait `wait`, may sleep, so that the caller must collect in a waker
    /// what could wake it before [`FabricPort::settle`]. A spinning loop skips that.
    pub fn needs_waker(&self, now: Instant, worked: bool, wait: Duration) -> bool {
        !worked && !wait.is_zero() && self.poller.would_sleep(now)
    }

    /// The idle step at `now` of a loop built around this port, after a round that did
    /// work (`worked`) or not: as the port's policy says, nothing (spin), a yield, or a
    /// sleep of at most `wait` on what `waker` collected (the caller's
    /// [`FabricPort::wake`] and its own inputs, when [`FabricPort::needs_waker`] said
    /// so for the same `now`). A zero `wait` never yields nor sleeps.
    pub fn settle(
        &mut self,
        now: Instant,
        worked: bool,
        wait: Duration,
        waker: &mut Waker,
    ) -> Result<Idle, PortError> {
        if worked {
            return Ok(self.poller.decide(now, true, None));
        }
        if wait.is_zero() {
            return Ok(Idle::Continue);
        }
        let idle = match self.poller.decide(now, false, waker.until(now)) {
            Idle::Sleep(d) => Idle::Sleep(d.min(wait)),
            other => other,
        };
        waker
            .apply(idle)
            .map_err(|e| dataplane::poll::port_error(e, &self.port.info().name))?;
        Ok(idle)
    }

    /// Sends what the node has, receives what the port has, runs due timers. Returns
    /// whether anything moved. When nothing did, idles as the port's policy says:
    /// busy-polls for its `spin` after the last activity, yields from `yield_after`
    /// on, and after that waits up to `wait` (and no later than the node's next
    /// timer) for the port's descriptor.
    pub fn poll(&mut self, wait: Duration) -> Result<bool, PortError> {
        let worked = self.round(Instant::now())?;
        let mut waker = std::mem::take(&mut self.waker);
        waker.clear();
        let now = Instant::now();
        if self.needs_waker(now, worked, wait) {
            self.wake(&mut waker);
        }
        let settled = self.settle(now, worked, wait, &mut waker);
        self.waker = waker;
        settled?;
        Ok(worked)
    }

    /// Hands every frame the node has to the port (what the port cannot take now is
    /// kept and offered again next time).
    fn flush(&mut self, now: u64) -> Result<bool, PortError> {
        let pool = self.port.pool().clone();
        let mut moved = false;
        while self.tx.len() < 64 {
            // A buffer first: with the pool exhausted the frame stays with the node.
            let Some(mut m) = self.bufs.get() else { break };
            // The node writes the frame straight into the pool buffer.
            match self.node.poll_transmit_into(now, pool.buf_mut(&mut m)) {
                Some(Ok(n)) => {
                    pool.set_len(&mut m, n);
                    self.tx.push(m);
                }
                Some(Err(_)) => {
                    self.oversize += 1;
                    self.bufs.put(m);
                }
                None => {
                    self.bufs.put(m);
                    break;
                }
            }
        }
        if !self.tx.is_empty() {
            moved = self.port.tx_burst(&mut self.tx)? > 0;
        }
        Ok(moved)
    }

    /// The node's next event that is not a TLP.
    pub fn poll_control_event(&mut self) -> Option<FabricEvent> {
        self.node.poll_control_event()
    }

    /// The node's next event (TLPs wait in their sessions until taken here).
    pub fn poll_event(&mut self) -> Option<FabricEvent> {
        self.node.poll_event()
    }

    /// The node's next event, TLPs only from the sessions `take` accepts
    /// ([`Node::poll_event_where`]).
    pub fn poll_event_where(
        &mut self,
        take: impl FnMut(u16, MacAddr) -> bool,
    ) -> Option<FabricEvent> {
        self.node.poll_event_where(take)
    }
}

impl dataplane::poll::Pollable for FabricPort {
    fn round(&mut self, now: Instant) -> std::io::Result<bool> {
        Ok(FabricPort::round(self, now)?)
    }

    fn wake(&self, w: &mut Waker) {
        FabricPort::wake(self, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::poll::{self, Stop};

    const GID: u16 = 10;

    /// A node of `role` in group 10 on `port`, announcing every 20 ms.
    fn joined(port: &dyn Port, role: BridgeRole) -> Node {
        let s = NodeSettings {
            info_interval_ms: 20,
            ..NodeSettings::default()
        };
        let mut n = node_for(port, role, &s).unwrap();
        n.join(GID).unwrap();
        n
    }

    fn pair() -> (FabricPort, FabricPort) {
        let pool = dataplane::open::pool_for(1500).unwrap();
        let (a, b) = dataplane::ports::mem::pair(&pool, 64, 1500);
        let host = FabricPort::new(joined(&a, BridgeRole::Host), Box::new(a));
        let bx = FabricPort::new(joined(&b, BridgeRole::IoBox), Box::new(b));
        (host, bx)
    }

    #[test]
    fn an_in_memory_port_wakes_by_short_sleeps_and_the_nodes_timer() {
        let (mut host, _bx) = pair();
        // The first round announces the node; its next INFO is an interval away.
        assert!(host.round(Instant::now()).unwrap());
        let mut w = Waker::new();
        let before = Instant::now();
        host.wake(&mut w);
        assert!(w.is_fdless(), "an in-memory port has no descriptor");
        assert_eq!(w.fds().count(), 0);
        w.clear();
        host.timer(&mut w, host.node().poll_timeout());
        let due = w.until(before).expect("the node has a timer");
        // The port's clock counts whole µs.
        let floor = TIMER_FLOOR - Duration::from_micros(1);
        assert!(due >= before + floor, "{:?}", due - before);
        assert!(due <= Instant::now() + Duration::from_millis(20));
        // A timer already past is looked at again no sooner than the floor.
        w.clear();
        let now = Instant::now();
        host.timer(&mut w, 0);
        assert!(w.until(now).unwrap() >= now + floor);
    }

    #[test]
    fn poll_sleeps_only_past_the_spin_and_never_with_zero_wait() {
        let (mut host, _bx) = pair();
        host.set_spin(Duration::from_secs(3600));
        host.set_yield_after(Some(Duration::ZERO));
        assert_eq!(host.idle_policy().spin, Duration::from_secs(3600));
        host.poll(Duration::ZERO).unwrap();
        while host.poll(Duration::from_millis(1)).unwrap() {}
        // Spinning, with a yield at each empty round: no sleep.
        let s = host.poll_stats();
        assert_eq!(s.sleeps, 0, "{s:?}");
        assert!(s.yields >= 1, "{s:?}");
        host.set_spin(Duration::ZERO);
        let t = Instant::now();
        let mut sleeps = host.poll_stats().sleeps;
        for _ in 0..5 {
            host.poll(Duration::ZERO).unwrap();
        }
        assert_eq!(host.poll_stats().sleeps, sleeps, "a zero wait slept");
        while host.poll(Duration::from_millis(1)).unwrap() {}
        assert!(host.poll_stats().sleeps > sleeps);
        sleeps = host.poll_stats().sleeps;
        host.poll(Duration::from_millis(1)).unwrap();
        assert_eq!(host.poll_stats().sleeps, sleeps + 1);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn two_ports_run_by_the_poll_driver_find_each_other() {
        let (mut host, mut bx) = pair();
        let policy = IdlePolicy {
            spin: Duration::ZERO,
            ..IdlePolicy::default()
        };
        let stop = Stop::new();
        let s = stop.clone();
        let boxed = std::thread::spawn(move || {
            let stats = poll::run(&mut bx, policy, &s).unwrap();
            (bx, stats)
        });
        let end = Instant::now() + Duration::from_secs(30);
        let mut up = false;
        while !up && Instant::now() < end {
            host.poll(Duration::from_millis(1)).unwrap();
            while let Some(e) = host.poll_event() {
                up |= matches!(e, FabricEvent::PeerUp { gid: GID, .. });
            }
        }
        // A few INFO intervals more, for the box to hear the host and to idle between.
        let more = Instant::now() + Duration::from_millis(200);
        while Instant::now() < more {
            host.poll(Duration::from_millis(1)).unwrap();
        }
        stop.request();
        let (bx, stats) = boxed.join().unwrap();
        assert!(up, "the host never saw the box");
        assert!(stats.worked >= 1 && stats.sleeps >= 1, "{stats:?}");
        assert!(bx.node().peers().any(|p| p.0 == GID));
    }

    #[test]
    fn frames_fit_the_pool_buffers() {
        for (mtu, frame_mtu) in [(1500, 1500), (9000, 3776)] {
            let pool = dataplane::open::pool_for(mtu).unwrap();
            let (port, _) = dataplane::ports::mem::pair(&pool, 64, mtu);
            let n = node_for(&port, BridgeRole::Host, &NodeSettings::default()).unwrap();
            assert_eq!(n.config().mtu as usize, frame_mtu);
            assert_eq!(n.config().session.mtu, frame_mtu);
        }
    }
}
