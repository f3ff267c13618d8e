//! DPDK-style user-space packet I/O for tether: lock-free rings, a buffer pool with
//! per-thread caches, and ports that move frames in bursts; the one poll driver of
//! every loop of tether ([`poll`]: busy-poll after work, then sleep in poll(2) on the
//! loop's descriptors and timers) and the engines built on it ([`engine`]).

pub mod allocs;
pub mod mempool;
pub mod ring;

pub use mempool::{Backing, Mbuf, Mempool, PoolCache, PoolError};
pub mod port;
pub mod ports;
pub mod sys;

pub use port::{LinkInfo, Port, PortError, PortStats};
pub mod bpf;
pub mod engine;
pub mod netns;
pub mod open;
pub mod poll;
