//! A null port (like DPDK's net_null): receive returns an endless supply of a template
//! frame, transmit frees what it is given. For benchmarks of everything around a port.

use std::sync::Arc;

use crate::mempool::{Mbuf, Mempool, PoolCache};
use crate::port::{LinkInfo, Port, PortError, PortStats};

pub struct NullPort {
    info: LinkInfo,
    cache: PoolCache,
    template: Vec<u8>,
    /// Copy the template into each buffer (net_null's `copy` option); otherwise only the
    /// length is set, as net_null does by default.
    copy: bool,
    stats: PortStats,
}

impl NullPort {
    pub fn new(name: &str, pool: &Arc<Mempool>, template: &[u8], copy: bool) -> NullPort {
        NullPort {
            info: LinkInfo {
                name: name.to_string(),
                mac: [2, 0, 0, 0, 0xaa, 0x01],
                mtu: pool.buf_size().min(9000),
            },
            cache: pool.cache(256),
            template: template.to_vec(),
            copy,
            stats: PortStats::default(),
        }
    }
}

impl Port for NullPort {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn pool(&self) -> &Arc<Mempool> {
        self.cache.pool()
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError> {
        let start = out.len();
        if !self.cache.get_bulk(out, max) {
            self.stats.rx_nombuf += max as u64;
            return Ok(0);
        }
        let pool = self.cache.pool().clone();
        for m in &mut out[start..] {
            if self.copy {
                pool.fill(m, &self.template);
            } else {
                pool.set_len(m, self.template.len());
            }
        }
        self.stats.rx_packets += max as u64;
        self.stats.rx_bytes += (max * self.template.len()) as u64;
        Ok(max)
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError> {
        let n = bufs.len();
        for m in bufs.drain(..) {
            self.stats.tx_bytes += m.len() as u64;
            self.cache.put(m);
        }
        self.stats.tx_packets += n as u64;
        Ok(n)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}
