//! Two ports joined in memory by a pair of SPSC rings (like DPDK's ring PMD): frames
//! move between them without copies, for tests and single-machine runs.

use std::sync::Arc;

use crate::mempool::{Mbuf, Mempool, RawMbuf};
use crate::port::{LinkInfo, Port, PortError, PortStats};
use crate::ring::{spsc, Consumer, Producer};

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
        let n = self.rx.dequeue_into(&mut self.scratch, max);
        for raw in self.scratch.drain(..) {
            // SAFETY: every value in the ring was produced by `into_raw` in tx_burst of
            // the peer port and the SPSC ring hands each out exactly once.
            let m = unsafe { Mbuf::from_raw(raw) };
            self.stats.rx_bytes += m.len() as u64;
            out.push(m);
        }
        self.stats.rx_packets += n as u64;
        Ok(n)
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
}
