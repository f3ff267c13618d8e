//! A fabric node on a dataplane port: frames between the two, timers, events.

use std::time::{Duration, Instant};

use dataplane::{Mbuf, Port, PortError};
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
    n.session.rto_min_us = s.rto_min_us;
    n.session.rate.target_queueing_us = s.target_delay_us;
    n.session.rto_initial_us = n.session.rto_initial_us.max(2 * s.rto_min_us);
    n.session.rto_max_us = n.session.rto_max_us.max(n.session.rto_initial_us);
    if let Some(k) = s.max_tlps_per_frame {
        n.session.max_tlps_per_frame = k;
    }
    Node::new(n)
}

/// Frames a node received and dropped without acting on them.
fn ignored(s: &crate::FabricStats) -> u64 {
    s.other_group + s.own_frames + s.bad_frames + s.unknown_peer
}

/// A node and its port, on one clock.
pub struct FabricPort {
    node: Node,
    port: Box<dyn Port>,
    epoch: Instant,
    rx: Vec<Mbuf>,
    tx: Vec<Mbuf>,
    /// When something last moved: the loop busy-polls for `spin` after that, and
    /// only then sleeps (a sleeping bridge delays acks and completions, which the
    /// peer's delay-based rate control would take for congestion).
    /// µs on this port's clock.
    last_work: u64,
    /// When the loop last found the port with nothing to receive: frames that are
    /// there now may have waited since then.
    looked_at: u64,
    spin: Duration,
    yield_after: Option<Duration>,
    /// Frames the node made that did not fit a pool buffer (never, with a sane MTU).
    pub oversize: u64,
}

/// Frames taken from the port per round.
const RX_BURST: usize = 64;

impl FabricPort {
    pub fn new(node: Node, port: Box<dyn Port>) -> FabricPort {
        FabricPort {
            node,
            port,
            epoch: Instant::now(),
            rx: Vec::with_capacity(64),
            tx: Vec::with_capacity(64),
            last_work: 0,
            looked_at: 0,
            yield_after: None,
            spin: Duration::from_millis(2),
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
        self.spin = spin;
    }

    /// While busy-polling, yield the core at each empty round once `after` has passed
    /// since the last activity (`None`, the default: never). Where the bridge shares
    /// its cores (a VMM, the other bridge), a waiting thread then runs at once rather
    /// than at the end of a time slice; where it has its core, yielding only adds the
    /// system call and now and then a wait behind kernel threads.
    pub fn set_yield_after(&mut self, after: Option<Duration>) {
        self.yield_after = after;
    }

    /// Microseconds since this port started: the clock of its node and sessions.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
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

    /// Sends what the node has, receives what the port has, runs due timers. Returns
    /// whether anything moved. Waits up to `wait` for input when nothing did.
    pub fn poll(&mut self, wait: Duration) -> Result<bool, PortError> {
        // The clock is read once per round, and once more when frames arrived (their
        // timestamps feed the RTT samples).
        let mut worked = false;
        // Events the caller left (it takes them when it can: back-pressure) are not
        // new work; events made this round are.
        let pending = self.node.pending_events();
        let mut now = self.now();
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
            for m in self.rx.drain(..) {
                self.node
                    .handle_frame_since(now, since, pool.data(&m), None);
                pool.put(m);
            }
            worked |= ignored(&self.node.stats()) - before < n as u64;
            self.flush(now)?;
        }
        if n < RX_BURST {
            // Drained: what comes next arrives after this.
            self.looked_at = now;
        }
        worked |= self.node.pending_events() > pending;
        if worked {
            self.last_work = now;
        } else if !wait.is_zero() {
            let idle = now.saturating_sub(self.last_work);
            if idle >= self.spin.as_micros() as u64 {
                let until_timer = self.node.poll_timeout().saturating_sub(now);
                self.port
                    .wait_rx(wait.min(Duration::from_micros(until_timer.max(50))));
            } else if self
                .yield_after
                .is_some_and(|y| idle >= y.as_micros() as u64)
            {
                // A thread waiting for this core (the peer bridge, the VMM) runs now
                // rather than at the end of our time slice.
                std::thread::yield_now();
            }
        }
        Ok(worked)
    }

    /// Hands every frame the node has to the port (what the port cannot take now is
    /// kept and offered again next time).
    fn flush(&mut self, now: u64) -> Result<bool, PortError> {
        let pool = self.port.pool().clone();
        let mut moved = false;
        while self.tx.len() < 64 {
            // A buffer first: with the pool exhausted the frame stays with the node.
            let Some(mut m) = pool.get() else { break };
            // The node writes the frame straight into the pool buffer.
            match self.node.poll_transmit_into(now, pool.buf_mut(&mut m)) {
                Some(Ok(n)) => {
                    pool.set_len(&mut m, n);
                    self.tx.push(m);
                }
                Some(Err(_)) => {
                    self.oversize += 1;
                    pool.put(m);
                }
                None => {
                    pool.put(m);
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

#[cfg(test)]
mod tests {
    use super::*;

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
