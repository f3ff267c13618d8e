//! A fabric node driven by hand on an in-memory port, for tests that see or steer
//! every frame a bridge sends and takes (the bridge on the other side runs the real
//! bridge loop).

use dataplane::Port;
use fabric::Node;

/// One round of `node` on `port` at `now` (µs): runs the node's timers if they are
/// due, sends every frame it has (as many as the port's pool has buffers for), and
/// hands every frame that arrived to `rx` with the node, which decides whether the
/// node takes it.
pub fn round(node: &mut Node, port: &mut dyn Port, now: u64, mut rx: impl FnMut(&mut Node, &[u8])) {
    if node.poll_timeout() <= now {
        node.handle_timeout(now);
    }
    let pool = port.pool().clone();
    let mut tx = Vec::new();
    while let Some(mut m) = pool.get() {
        match node.poll_transmit_into(now, pool.buf_mut(&mut m)) {
            Some(Ok(n)) => {
                pool.set_len(&mut m, n);
                tx.push(m);
            }
            _ => {
                pool.put(m);
                break;
            }
        }
    }
    while !tx.is_empty() {
        port.tx_burst(&mut tx).unwrap();
    }
    let mut received = Vec::new();
    port.rx_burst(&mut received, 64).unwrap();
    for m in received {
        rx(node, pool.data(&m));
        pool.put(m);
    }
}
