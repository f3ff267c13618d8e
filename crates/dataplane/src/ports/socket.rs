//! The conventional path: one recvmsg/sendto system call per frame on an AF_PACKET
//! socket, woken by the kernel. Kept as the baseline the poll-mode ports are measured
//! against.

use std::sync::Arc;
use std::time::Duration;

use crate::mempool::{Mbuf, Mempool, PoolCache};
use crate::port::{LinkInfo, Port, PortError, PortStats};
use crate::sys::PacketSocket;

pub struct SocketPort {
    info: LinkInfo,
    sock: PacketSocket,
    cache: PoolCache,
    stats: PortStats,
}

impl SocketPort {
    pub fn open(interface: &str, pool: &Arc<Mempool>) -> Result<SocketPort, PortError> {
        let sock = PacketSocket::open(interface, true, false)?;
        let (mac, mtu) = sock.link_info()?;
        Ok(SocketPort {
            info: LinkInfo {
                name: interface.to_string(),
                mac,
                mtu,
            },
            sock,
            cache: pool.cache(64),
            stats: PortStats::default(),
        })
    }
}

impl Port for SocketPort {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn pool(&self) -> &Arc<Mempool> {
        self.cache.pool()
    }

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> Result<usize, PortError> {
        let pool = self.cache.pool().clone();
        let mut n = 0;
        while n < max {
            let Some(mut m) = self.cache.get() else {
                self.stats.rx_nombuf += 1;
                break;
            };
            match self.sock.recv(pool.buf_mut(&mut m)) {
                Ok(Some(meta)) if !meta.truncated => {
                    pool.set_len(&mut m, meta.len);
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += meta.len as u64;
                    out.push(m);
                    n += 1;
                }
                Ok(Some(_)) => {
                    self.stats.rx_dropped += 1;
                    self.cache.put(m);
                }
                Ok(None) => {
                    self.cache.put(m);
                    break;
                }
                Err(e) => {
                    self.stats.rx_errors += 1;
                    self.cache.put(m);
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> Result<usize, PortError> {
        let pool = self.cache.pool().clone();
        let mut sent = 0;
        for m in bufs.iter() {
            match self.sock.send(pool.data(m)) {
                Ok(true) => {
                    self.stats.tx_bytes += m.len() as u64;
                    sent += 1;
                }
                Ok(false) => break,
                Err(e) => {
                    self.stats.tx_errors += 1;
                    for m in bufs.drain(..sent) {
                        self.cache.put(m);
                    }
                    return Err(e);
                }
            }
        }
        for m in bufs.drain(..sent) {
            self.cache.put(m);
        }
        self.stats.tx_packets += sent as u64;
        self.stats.tx_busy += bufs.len() as u64;
        Ok(sent)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_rx(&self, timeout: Duration) {
        self.sock.wait(timeout);
    }

    fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.sock.fd())
    }
}
