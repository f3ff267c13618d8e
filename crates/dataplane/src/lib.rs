//! DPDK-style user-space packet I/O for tether: lock-free rings, a buffer pool with
//! per-thread caches, and ports that move frames in bursts.

pub mod ring;
