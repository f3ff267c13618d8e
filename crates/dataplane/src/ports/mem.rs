//! Two ports joined in memory by a pair of SPSC rings (like DPDK's ring PMD): frames
//! move between them without copies, for tests and single-machine runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mempool::{Mbuf, Mempool, RawMbuf};
use crate::port::{LinkInfo, Port, PortError, PortStats};
use crate::ring::{spsc, Consumer, Producer};

/// Sleeps in short steps until `ready()` or the timeout: in-memory ports have no
/// descriptor to block on, and sleeping the whole timeout would add it to every wake-up.
fn wait_until(ready: impl Fn() -> bool, timeout: Duration) {
    let end = Instant::now() + timeout;
    while !ready() {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_micros(20)));
    }
}

/// Turns the raw handles dequeued into `raws` back into buffers for `out`, counting
/// them as received; returns how many.
///
/// # Safety
/// Every value in `raws` came from `Mbuf::into_raw` and is turned back only here.
unsafe fn take_raw(raws: &mut Vec<RawMbuf>, out: &mut Vec<Mbuf>, stats: &mut PortStats) -> usize {
    let n = raws.len();
    for raw in raws.drain(..) {
        // SAFETY: the caller's contract.
        let m = unsafe { Mbuf::from_raw(raw) };
        stats.rx_bytes += m.len() as u64;
        out.push(m);
    }
    stats.rx_packets += n as u64;
    n
}

pub struct MemPort {
    info: LinkInfo,
    pool: Arc<Mempool>,
    tx: Producer<RawMbuf>,
    rx: Consumer<RawMbuf>,
    stats: PortStats,
    scratch: Vec<RawMbuf>,
}

/// Two joined ports; each ring holds `ring_size` (a power of two) frames.
pub fn pair(pool: &Arc<Mempool>, ring_size: usize, mtu: usize) -> (MemPort, MemPort) {
    let (a_tx, b_rx) = spsc(ring_size);
    let (b_tx, a_rx) = spsc(ring_size);
    let port = |name: &str, mac: u8, tx, rx| MemPort {
        info: LinkInfo {
            name: name.to_string(),
            mac: [2, 0, 0, 0, 0xee, mac],
            mtu,
        },
        pool: pool.clone(),
        tx,
        rx,
        stats: PortStats::default(),
        scratch: Vec::with_capacity(ring_size),
    };
    (port("mem0", 1, a_tx, a_rx), port("mem1", 2, b_tx, b_rx))
}

impl Port for MemPort {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError> {
        self.scratch.clear();
        self.rx.dequeue_into(&mut self.scratch, max);
        // SAFETY: every value in the ring was produced by `into_raw` in tx_burst of the
        // peer port and the SPSC ring hands each out exactly once.
        Ok(unsafe { take_raw(&mut self.scratch, out, &mut self.stats) })
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError> {
        let room = self.tx.capacity() - self.tx.len();
        let n = room.min(bufs.len());
        self.scratch.clear();
        for m in bufs.drain(..n) {
            self.stats.tx_bytes += m.len() as u64;
            self.scratch.push(m.into_raw());
        }
        let sent = self.tx.enqueue_burst(&self.scratch);
        // Only this thread produces into the ring, so the room measured above is there.
        debug_assert_eq!(sent, n);
        self.stats.tx_packets += n as u64;
        self.stats.tx_busy += bufs.len() as u64;
        Ok(n)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_rx(&self, timeout: Duration) {
        wait_until(|| !self.rx.is_empty(), timeout);
    }
}

/// A port on an in-memory Ethernet segment made by [`hub`]: what one port sends,
/// every other port receives (a hub floods; bridges filter by address themselves),
/// each receiver getting its own copy. A receiver whose ring is full loses the frame,
/// as on a congested switch port, and the sender counts it.
pub struct HubPort {
    info: LinkInfo,
    pool: Arc<Mempool>,
    /// The other ports' receive rings.
    peers: Vec<crate::ring::MpProducer<RawMbuf>>,
    rx: crate::ring::McConsumer<RawMbuf>,
    stats: PortStats,
    scratch: Vec<RawMbuf>,
}

/// `n` ports joined as one broadcast segment; each receive ring holds `ring_size`
/// frames (a power of two). MACs are 02:00:00:00:ef:01, :02, ...
pub fn hub(pool: &Arc<Mempool>, n: usize, ring_size: usize, mtu: usize) -> Vec<HubPort> {
    let rings: Vec<_> = (0..n)
        .map(|_| crate::ring::mpmc::<RawMbuf>(ring_size))
        .collect();
    (0..n)
        .map(|i| HubPort {
            info: LinkInfo {
                name: format!("hub{i}"),
                mac: [2, 0, 0, 0, 0xef, i as u8 + 1],
                mtu,
            },
            pool: pool.clone(),
            peers: (0..n)
                .filter(|&j| j != i)
                .map(|j| rings[j].0.clone())
                .collect(),
            rx: rings[i].1.clone(),
            stats: PortStats::default(),
            scratch: Vec::with_capacity(ring_size),
        })
        .collect()
}

impl Port for HubPort {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError> {
        self.scratch.clear();
        self.rx.dequeue_into(&mut self.scratch, max);
        // SAFETY: every value in the ring was made by `into_raw` in a peer's tx_burst
        // from a buffer copied for this port alone, and the ring hands each out once.
        Ok(unsafe { take_raw(&mut self.scratch, out, &mut self.stats) })
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError> {
        let n = bufs.len();
        for m in bufs.drain(..) {
            let data = self.pool.data(&m);
            for p in &self.peers {
                let Some(mut copy) = self.pool.get() else {
                    self.stats.tx_errors += 1;
                    continue;
                };
                self.pool.fill(&mut copy, data);
                let raw = copy.into_raw();
                if !p.enqueue(raw) {
                    // SAFETY: the ring refused `raw`, so this is its only handle.
                    self.pool.put(unsafe { Mbuf::from_raw(raw) });
                    self.stats.tx_errors += 1;
                }
            }
            self.stats.tx_bytes += m.len() as u64;
            self.pool.put(m);
        }
        self.stats.tx_packets += n as u64;
        Ok(n)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_rx(&self, timeout: Duration) {
        wait_until(|| !self.rx.is_empty(), timeout);
    }
}

impl Drop for HubPort {
    /// Frames still waiting in this port's ring go back to the pool.
    fn drop(&mut self) {
        let mut got = Vec::new();
        while self.rx_burst(&mut got, 256).unwrap_or(0) > 0 {
            for m in got.drain(..) {
                self.pool.put(m);
            }
        }
    }
}
