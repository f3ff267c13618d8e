//! Poll engines: run-to-completion (one thread takes a burst from RX to TX) and
//! pipeline (an RX thread, a worker and a TX thread joined by rings, as in software
//! ExpEther's bridge/RX/TX threads), with core pinning, adaptive idle and clean
//! shutdown.
//!
//! Adaptive idle: a loop that finds no work busy-polls for `spin_polls` rounds, then
//! yields, then blocks in the port's `wait_rx` with a timeout that doubles up to
//! `max_sleep`, so an idle bridge does not burn a core; the first frame puts it back
//! into busy polling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::mempool::{Mbuf, Mempool, RawMbuf};
use crate::port::{Port, PortError};
use crate::ring::{spsc, Consumer, Producer};

/// How a poll loop behaves when there is nothing to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdlePolicy {
    /// Empty rounds spent busy-polling before backing off (u32::MAX: never back off,
    /// DPDK's default behaviour).
    pub spin_polls: u32,
    /// Longest single wait once backed off.
    pub max_sleep: Duration,
}

impl Default for IdlePolicy {
    fn default() -> IdlePolicy {
        IdlePolicy {
            spin_polls: 10_000,
            max_sleep: Duration::from_millis(1),
        }
    }
}

impl IdlePolicy {
    /// Pure busy polling.
    pub const BUSY: IdlePolicy = IdlePolicy {
        spin_polls: u32::MAX,
        max_sleep: Duration::ZERO,
    };
}

/// Tracks one loop's idleness.
#[derive(Debug)]
pub struct Idle {
    policy: IdlePolicy,
    empty: u32,
    sleep: Duration,
    /// Times the loop blocked.
    pub waits: u64,
}

impl Idle {
    pub fn new(policy: IdlePolicy) -> Idle {
        Idle {
            policy,
            empty: 0,
            sleep: Duration::from_micros(10),
            waits: 0,
        }
    }

    /// The loop did some work this round.
    pub fn worked(&mut self) {
        self.empty = 0;
        self.sleep = Duration::from_micros(10);
    }

    /// The loop found nothing; `wait` blocks for at most the given time.
    pub fn nothing(&mut self, wait: impl FnOnce(Duration)) {
        self.empty = self.empty.saturating_add(1);
        if self.empty < self.policy.spin_polls {
            std::hint::spin_loop();
        } else if self.empty == self.policy.spin_polls {
            std::thread::yield_now();
        } else {
            self.waits += 1;
            wait(self.sleep.min(self.policy.max_sleep));
            self.sleep = (self.sleep * 2).min(self.policy.max_sleep);
        }
    }
}

/// A shared stop request.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_core(core: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; the set's size
    // is passed to sched_setaffinity for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Counters of a forwarding loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    pub frames: u64,
    pub rounds: u64,
    pub idle_waits: u64,
    /// Frames dropped because the TX port stayed full.
    pub dropped: u64,
}

/// Run-to-completion io-forwarding (testpmd's `io` mode): frames from `a` go out of
/// `b` and frames from `b` out of `a`, `burst` at a time, until `stop`. Frames a TX
/// port cannot take are dropped (their buffers freed), as testpmd does.
pub fn io_forward(
    a: &mut dyn Port,
    b: &mut dyn Port,
    burst: usize,
    stop: &Stop,
    idle: IdlePolicy,
) -> Result<ForwardStats, PortError> {
    let mut stats = ForwardStats::default();
    let mut idle = Idle::new(idle);
    let mut bufs: Vec<Mbuf> = Vec::with_capacity(burst);
    let mut cache_a = a.pool().cache(burst * 2);
    let mut cache_b = b.pool().cache(burst * 2);
    while !stop.requested() {
        stats.rounds += 1;
        let mut moved = 0;
        moved += forward_burst(&mut *a, &mut *b, &mut cache_a, &mut bufs, burst, &mut stats)?;
        moved += forward_burst(&mut *b, &mut *a, &mut cache_b, &mut bufs, burst, &mut stats)?;
        if moved > 0 {
            idle.worked();
        } else {
            idle.nothing(|t| a.wait_rx(t));
        }
    }
    stats.idle_waits = idle.waits;
    Ok(stats)
}

/// One burst from `from` to `to`; what `to` cannot take is dropped.
fn forward_burst(
    from: &mut dyn Port,
    to: &mut dyn Port,
    cache: &mut crate::mempool::PoolCache,
    bufs: &mut Vec<Mbuf>,
    burst: usize,
    stats: &mut ForwardStats,
) -> Result<usize, PortError> {
    let n = from.rx_burst(bufs, burst)?;
    if n > 0 {
        let sent = to.tx_burst(bufs)?;
        stats.frames += sent as u64;
        stats.dropped += bufs.len() as u64;
        cache.put_all(bufs);
    }
    Ok(n)
}

/// What a pipeline's worker does with a frame: `true` forwards it, `false` drops it.
pub type Work = Box<dyn FnMut(&Mempool, &mut Mbuf) -> bool + Send>;

/// Where each pipeline thread runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pinning {
    pub rx: Option<usize>,
    pub worker: Option<usize>,
    pub tx: Option<usize>,
}

/// A running pipeline: RX thread -> ring -> worker thread -> ring -> TX thread.
pub struct Pipeline {
    stop: Stop,
    threads: Vec<JoinHandle<Result<u64, PortError>>>,
}

/// Counters of a finished pipeline, per thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub received: u64,
    pub worked: u64,
    pub sent: u64,
}

fn drain_ring(ring: &Consumer<RawMbuf>, pool: &Mempool) {
    while let Some(raw) = ring.dequeue() {
        // SAFETY: every value in a pipeline ring came from `into_raw` and is dequeued once.
        pool.put(unsafe { Mbuf::from_raw(raw) });
    }
}

/// Moves up to `max` buffers from a ring into `bufs`.
fn take_from(
    ring: &Consumer<RawMbuf>,
    raws: &mut Vec<RawMbuf>,
    bufs: &mut Vec<Mbuf>,
    max: usize,
) -> usize {
    raws.clear();
    let n = ring.dequeue_into(raws, max);
    // SAFETY: as in drain_ring.
    bufs.extend(raws.drain(..).map(|r| unsafe { Mbuf::from_raw(r) }));
    n
}

/// Moves buffers from the front of `bufs` into a ring, as many as fit.
fn give_to(ring: &Producer<RawMbuf>, bufs: &mut Vec<Mbuf>, raws: &mut Vec<RawMbuf>) -> usize {
    let room = ring.capacity() - ring.len();
    let n = room.min(bufs.len());
    raws.clear();
    raws.extend(bufs.drain(..n).map(Mbuf::into_raw));
    let put = ring.enqueue_burst(raws);
    debug_assert_eq!(put, n, "single producer: the room measured is there");
    n
}

impl Pipeline {
    /// Starts the three threads. Both ports must use the same pool.
    pub fn spawn(
        mut rx: Box<dyn Port>,
        mut tx: Box<dyn Port>,
        mut work: Work,
        ring_size: usize,
        burst: usize,
        idle: IdlePolicy,
        pin: Pinning,
    ) -> Pipeline {
        let stop = Stop::new();
        let (to_worker, from_rx) = spsc::<RawMbuf>(ring_size);
        let (to_tx, from_worker) = spsc::<RawMbuf>(ring_size);
        let pin_here = |core: Option<usize>| {
            if let Some(c) = core {
                let _ = pin_to_core(c);
            }
        };
        let worker_pool = rx.pool().clone();
        let s = stop.clone();
        let rx_thread = std::thread::spawn(move || {
            pin_here(pin.rx);
            let pool = rx.pool().clone();
            let mut idle = Idle::new(idle);
            let (mut bufs, mut raws) = (Vec::with_capacity(burst), Vec::with_capacity(burst));
            let mut count = 0;
            while !s.requested() {
                if bufs.is_empty() && rx.rx_burst(&mut bufs, burst)? == 0 {
                    idle.nothing(|t| rx.wait_rx(t));
                    continue;
                }
                idle.worked();
                count += give_to(&to_worker, &mut bufs, &mut raws) as u64;
            }
            for m in bufs.drain(..) {
                pool.put(m);
            }
            Ok(count)
        });
        let s = stop.clone();
        let pool = worker_pool;
        let worker = std::thread::spawn(move || {
            pin_here(pin.worker);
            let (mut bufs, mut raws) = (Vec::with_capacity(burst), Vec::with_capacity(burst));
            let mut out: Vec<Mbuf> = Vec::with_capacity(burst);
            let mut idle = Idle::new(idle);
            let mut count = 0;
            while !s.requested() {
                if out.is_empty() {
                    if take_from(&from_rx, &mut raws, &mut bufs, burst) == 0 {
                        idle.nothing(std::thread::sleep);
                        continue;
                    }
                    idle.worked();
                    for mut m in bufs.drain(..) {
                        count += 1;
                        if work(&pool, &mut m) {
                            out.push(m);
                        } else {
                            pool.put(m);
                        }
                    }
                }
                give_to(&to_tx, &mut out, &mut raws);
            }
            for m in out.drain(..) {
                pool.put(m);
            }
            drain_ring(&from_rx, &pool);
            Ok(count)
        });
        let s = stop.clone();
        let tx_thread = std::thread::spawn(move || {
            pin_here(pin.tx);
            let pool = tx.pool().clone();
            let (mut bufs, mut raws) = (Vec::with_capacity(burst), Vec::with_capacity(burst));
            let mut idle = Idle::new(idle);
            let mut count = 0;
            while !s.requested() {
                if bufs.is_empty() && take_from(&from_worker, &mut raws, &mut bufs, burst) == 0 {
                    idle.nothing(std::thread::sleep);
                    continue;
                }
                idle.worked();
                count += tx.tx_burst(&mut bufs)? as u64;
            }
            for m in bufs.drain(..) {
                pool.put(m);
            }
            drain_ring(&from_worker, &pool);
            Ok(count)
        });
        Pipeline {
            stop,
            threads: vec![rx_thread, worker, tx_thread],
        }
    }
}

impl Pipeline {
    /// Asks the threads to stop, waits for them, and returns what each moved. Buffers
    /// still in the rings go back to the pool.
    pub fn stop(self) -> Result<PipelineStats, PortError> {
        self.stop.request();
        let mut counts = [0u64; 3];
        for (c, t) in counts.iter_mut().zip(self.threads) {
            *c = t
                .join()
                .map_err(|_| PortError::Setup("a pipeline thread panicked".into()))??;
        }
        Ok(PipelineStats {
            received: counts[0],
            worked: counts[1],
            sent: counts[2],
        })
    }
}
