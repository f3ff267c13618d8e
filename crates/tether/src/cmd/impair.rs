//! `tether impair`: the network's faults, made outside the stack under test. A small
//! poll-mode relay that forwards every frame between two interfaces (normally in a
//! namespace of its own, between two veth pairs) through a seeded impairment model
//! per direction: rate and queue, delay and jitter, loss, duplication, reordering,
//! bit corruption and scheduled outages. This kernel has no netem, so this is ours.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::poll::{self, IdlePolicy, Pollable, Stop, Waker};
use dataplane::ports::socket::SocketPort;
use dataplane::{Mbuf, Mempool, Port, PortError};
use netem::{Link, LinkConfig, LinkStats, Micros, Rng};

use crate::signals;

pub struct Options {
    pub a: String,
    pub b: String,
    pub a_to_b: LinkConfig,
    pub b_to_a: LinkConfig,
    pub seed: u64,
    pub duration: Option<Duration>,
}

/// Parses `key=value,...`: loss, dup, reorder, reorder_us, delay_us, jitter_us, corrupt,
/// rate_mbit, queue_kb, outage=START_MS-END_MS (repeatable; times from relay start).
pub fn parse_spec(spec: &str) -> Result<LinkConfig> {
    let mut c = LinkConfig {
        bandwidth_bps: 100e9,
        delay_us: 0,
        queue_bytes: 4 << 20,
        ..LinkConfig::default()
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("{item:?} is not key=value"))?;
        let prob = |v: &str| -> Result<f64> {
            let p: f64 = v
                .parse()
                .with_context(|| format!("{k}={v}: not a number"))?;
            if !(0.0..=1.0).contains(&p) {
                bail!("{k}={v}: a probability is between 0 and 1");
            }
            Ok(p)
        };
        let num = |v: &str| -> Result<u64> {
            v.parse()
                .with_context(|| format!("{k}={v}: not a whole number"))
        };
        match k {
            "loss" => c.loss = prob(v)?,
            "dup" => c.duplicate = prob(v)?,
            "reorder" => c.reorder = prob(v)?,
            "corrupt" => c.corrupt = prob(v)?,
            "reorder_us" => c.reorder_us = num(v)?,
            "delay_us" => c.delay_us = num(v)?,
            "jitter_us" => c.jitter_us = num(v)?,
            "rate_mbit" => c.bandwidth_bps = num(v)? as f64 * 1e6,
            "queue_kb" => c.queue_bytes = num(v)? as usize * 1024,
            "outage" => {
                let (s, e) = v
                    .split_once('-')
                    .with_context(|| format!("outage={v}: expected START_MS-END_MS"))?;
                let (s, e) = (num(s)?, num(e)?);
                if e <= s {
                    bail!("outage={v}: the end must come after the start");
                }
                c.outages.push((s * 1000, e * 1000));
            }
            _ => bail!("unknown impairment {k:?} (loss, dup, reorder, reorder_us, delay_us, jitter_us, corrupt, rate_mbit, queue_kb, outage)"),
        }
    }
    if c.bandwidth_bps <= 0.0 {
        bail!("rate_mbit must be positive");
    }
    Ok(c)
}

/// One direction: frames from `from` go through `link` and out of `to`.
struct Direction {
    link: Link,
    tx_dropped: u64,
}

fn pull(
    port: &mut SocketPort,
    link: &mut Link,
    now: Micros,
    rng: &mut Rng,
    bufs: &mut Vec<Mbuf>,
) -> Result<usize, PortError> {
    let n = port.rx_burst(bufs, 32)?;
    let pool = port.pool().clone();
    for m in bufs.drain(..) {
        link.send(now, 0, pool.data(&m).to_vec(), rng);
        pool.put(m);
    }
    Ok(n)
}

fn push(
    port: &mut SocketPort,
    dir: &mut Direction,
    now: Micros,
    bufs: &mut Vec<Mbuf>,
) -> Result<usize, PortError> {
    let pool = port.pool().clone();
    while let Some((_, frame)) = dir.link.pop_arrived(now) {
        let Some(mut m) = pool.get() else {
            dir.tx_dropped += 1;
            continue;
        };
        pool.fill(&mut m, &frame);
        bufs.push(m);
    }
    let n = bufs.len();
    port.tx_burst(bufs)?;
    dir.tx_dropped += bufs.len() as u64;
    for m in bufs.drain(..) {
        pool.put(m);
    }
    Ok(n)
}

/// The relay as a poll loop: both directions, both ports.
struct Relay {
    a: SocketPort,
    b: SocketPort,
    ab: Direction,
    ba: Direction,
    rng: Rng,
    bufs: Vec<Mbuf>,
    start: Instant,
    /// When the relay ends by itself (`--duration`).
    end: Option<Instant>,
    stop: Stop,
}

impl Relay {
    /// The relay's clock at `at`: µs since it started.
    fn micros(&self, at: Instant) -> Micros {
        at.saturating_duration_since(self.start).as_micros() as Micros
    }
}

impl Pollable for Relay {
    fn round(&mut self, at: Instant) -> std::io::Result<bool> {
        if signals::stop_requested() || self.end.is_some_and(|e| at >= e) {
            self.stop.request();
            return Ok(false);
        }
        let now = self.micros(at);
        let mut moved = pull(
            &mut self.a,
            &mut self.ab.link,
            now,
            &mut self.rng,
            &mut self.bufs,
        )?;
        moved += pull(
            &mut self.b,
            &mut self.ba.link,
            now,
            &mut self.rng,
            &mut self.bufs,
        )?;
        moved += push(&mut self.b, &mut self.ab, now, &mut self.bufs)?;
        moved += push(&mut self.a, &mut self.ba, now, &mut self.bufs)?;
        Ok(moved > 0)
    }

    /// Frames on either port, the next frame the impairment delays, the end.
    fn wake(&self, w: &mut Waker) {
        for fd in [self.a.rx_fd(), self.b.rx_fd()] {
            match fd {
                Some(fd) => w.fd(fd),
                None => w.fdless(),
            }
        }
        let due = [self.ab.link.next_arrival(), self.ba.link.next_arrival()]
            .into_iter()
            .flatten()
            .filter_map(|t| self.start.checked_add(Duration::from_micros(t)));
        for at in due.chain(self.end) {
            w.deadline(at);
        }
    }
}

/// Relays until the duration ends or SIGINT/SIGTERM; returns each direction's counters.
pub fn run(opts: Options) -> Result<[(LinkStats, u64); 2]> {
    let pool = Mempool::new(16 * 1024, 9216 + 64)?;
    let a = SocketPort::open(&opts.a, &pool)?;
    let b = SocketPort::open(&opts.b, &pool)?;
    signals::install();
    tracing::info!(
    target: "tether::impair",
           "tether impair: relaying {} <-> {} (seed {})",
           opts.a, opts.b, opts.seed
       );
    let start = Instant::now();
    let mut relay = Relay {
        a,
        b,
        ab: Direction {
            link: Link::new(opts.a_to_b),
            tx_dropped: 0,
        },
        ba: Direction {
            link: Link::new(opts.b_to_a),
            tx_dropped: 0,
        },
        rng: Rng::new(opts.seed),
        bufs: Vec::with_capacity(64),
        start,
        end: opts.duration.and_then(|d| start.checked_add(d)),
        stop: Stop::new(),
    };
    // Spin 2 ms after a frame (delays stay what the model says), then sleep on both
    // ports and the next due frame; a signal ends a sleep at once, and 10 ms bounds it.
    let stop = relay.stop.clone();
    poll::run(&mut relay, IdlePolicy::default(), &stop)?;
    Ok([
        (relay.ab.link.stats.clone(), relay.ab.tx_dropped),
        (relay.ba.link.stats.clone(), relay.ba.tx_dropped),
    ])
}

/// One line of counters for a direction.
pub fn describe(name: &str, s: &LinkStats, tx_dropped: u64) -> String {
    format!(
        "{name}: offered {} delivered {} lost {} outage {} queue-full {} duplicated {} reordered {} corrupted {} tx-dropped {} mean-queue {:.1} us",
        s.offered,
        s.delivered,
        s.dropped_loss,
        s.dropped_outage,
        s.dropped_queue,
        s.duplicated,
        s.reordered,
        s.corrupted,
        tx_dropped,
        s.mean_queue_delay_us()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let c = parse_spec("loss=0.01,dup=0.02,reorder=0.05,reorder_us=80,delay_us=50,jitter_us=5,corrupt=0.001,rate_mbit=100,queue_kb=64,outage=1000-2000,outage=3000-3500").unwrap();
        assert_eq!(
            (c.loss, c.duplicate, c.reorder, c.corrupt),
            (0.01, 0.02, 0.05, 0.001)
        );
        assert_eq!((c.reorder_us, c.delay_us, c.jitter_us), (80, 50, 5));
        assert_eq!(c.bandwidth_bps, 100e6);
        assert_eq!(c.queue_bytes, 65536);
        assert_eq!(
            c.outages,
            vec![(1_000_000, 2_000_000), (3_000_000, 3_500_000)]
        );
        assert_eq!(parse_spec("").unwrap().loss, 0.0);
        for bad in [
            "loss=2",
            "loss",
            "jitter=1",
            "outage=5-1",
            "delay_us=-3",
            "rate_mbit=0",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad} accepted");
        }
    }
}
