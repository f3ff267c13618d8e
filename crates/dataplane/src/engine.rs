//! Poll engines: run-to-completion (one thread takes a burst from RX to TX) and
//! pipeline (an RX thread, a worker and a TX thread joined by rings, as in software
//! ExpEther's bridge/RX/TX threads), with core pinning, the one poll driver's idle
//! policy ([`crate::poll`]) and clean shutdown.
//!
//! Each loop is a [`crate::poll::Pollable`] run by [`crate::poll::run`]: it busy-polls
//! for the policy's `spin` after the last frame, then sleeps in poll(2) on its ports'
//! descriptors (a loop fed by an in-memory port or a ring, which have none, sleeps at
//! most [`crate::poll::FDLESS_SLEEP`] at a time), so an idle engine does not burn a
//! core; the first frame puts it back into busy polling.

use std::thread::JoinHandle;

use crate::mempool::{Mbuf, Mempool, RawMbuf};
use crate::poll::{self, port_error, IdlePolicy, Waker};
use crate::port::{Port, PortError};
use crate::ring::{spsc, Consumer, Producer};

pub use crate::poll::Stop;

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
    /// Frames sent.
    pub frames: u64,
    /// Rounds of the loop (each tries both directions).
    pub rounds: u64,
    /// Times the idle loop slept.
    pub idle_waits: u64,
    /// Frames dropped because the TX port stayed full.
    pub dropped: u64,
}

/// Run-to-completion io-forwarding (testpmd's `io` mode): frames from `a` go out of
/// `b` and frames from `b` out of `a`, `burst` at a time, until `stop`. Frames a TX
/// port cannot take are dropped (their buffers freed), as testpmd does. Idle, the loop
/// sleeps on both ports as `idle` says.
pub fn io_forward(
    a: &mut dyn Port,
    b: &mut dyn Port,
    burst: usize,
    stop: &Stop,
    idle: IdlePolicy,
) -> Result<ForwardStats, PortError> {
    let mut stats = ForwardStats::default();
    let mut bufs: Vec<Mbuf> = Vec::with_capacity(burst);
    let mut cache_a = a.pool().cache(burst * 2);
    let mut cache_b = b.pool().cache(burst * 2);
    let fds = [a.rx_fd(), b.rx_fd()];
    let name = a.info().name.clone();
    let mut forward = poll::from_fn(
        |_| {
            let mut moved = 0;
            moved += forward_burst(&mut *a, &mut *b, &mut cache_a, &mut bufs, burst, &mut stats)?;
            moved += forward_burst(&mut *b, &mut *a, &mut cache_b, &mut bufs, burst, &mut stats)?;
            Ok(moved > 0)
        },
        |w| wake_on(w, fds),
    );
    let polled = poll::run(&mut forward, idle, stop).map_err(|e| port_error(e, &name))?;
    stats.rounds = polled.rounds;
    stats.idle_waits = polled.sleeps;
    Ok(stats)
}

/// What wakes a loop that receives on ports with these descriptors (`None`: a port
/// without one).
fn wake_on<const N: usize>(w: &mut Waker, fds: [Option<std::os::fd::RawFd>; N]) {
    for fd in fds {
        match fd {
            Some(fd) => w.fd(fd),
            None => w.fdless(),
        }
    }
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
            let (mut bufs, mut raws) = (Vec::with_capacity(burst), Vec::with_capacity(burst));
            let mut count = 0;
            let (fd, name) = (rx.rx_fd(), rx.info().name.clone());
            // Frames held because the ring to the worker is full.
            let held = std::cell::Cell::new(false);
            let mut receive = poll::from_fn(
                |_| {
                    let got = bufs.is_empty() && rx.rx_burst(&mut bufs, burst)? > 0;
                    let gave = give_to(&to_worker, &mut bufs, &mut raws);
                    count += gave as u64;
                    held.set(!bufs.is_empty());
                    Ok(got || gave > 0)
                },
                |w| {
                    wake_on(w, [fd]);
                    if held.get() {
                        // Room in the ring comes without a word.
                        w.fdless();
                    }
                },
            );
            let done = poll::run(&mut receive, idle, &s).map_err(|e| port_error(e, &name));
            for m in bufs.drain(..) {
                pool.put(m);
            }
            done.map(|_| count)
        });
        let s = stop.clone();
        let pool = worker_pool;
        let worker = std::thread::spawn(move || {
            pin_here(pin.worker);
            let (mut bufs, mut raws) = (Vec::with_capacity(burst), Vec::with_capacity(burst));
            let mut out: Vec<Mbuf> = Vec::with_capacity(burst);
            let mut count = 0;
            let mut step = poll::from_fn(
                |_| {
                    let mut worked = false;
                    if out.is_empty() && take_from(&from_rx, &mut raws, &mut bufs, burst) > 0 {
                        worked = true;
                        for mut m in bufs.drain(..) {
                            count += 1;
                            if work(&pool, &mut m) {
                                out.push(m);
                            } else {
                                pool.put(m);
                            }
                        }
                    }
                    worked |= give_to(&to_tx, &mut out, &mut raws) > 0;
                    Ok(worked)
                },
                // Both of its inputs are rings.
                Waker::fdless,
            );
            let done = poll::run(&mut step, idle, &s).map_err(|e| port_error(e, "pipeline worker"));
            for m in out.drain(..) {
                pool.put(m);
            }
            drain_ring(&from_rx, &pool);
            done.map(|_| count)
        });
        let s = stop.clone();
        let tx_thread = std::thread::spawn(move || {
            pin_here(pin.tx);
            let pool = tx.pool().clone();
            let (mut bufs, mut raws) = (Vec::with_capacity(burst), Vec::with_capacity(burst));
            let mut count = 0;
            let name = tx.info().name.clone();
            let mut send = poll::from_fn(
                |_| {
                    let took =
                        bufs.is_empty() && take_from(&from_worker, &mut raws, &mut bufs, burst) > 0;
                    let sent = if bufs.is_empty() {
                        0
                    } else {
                        tx.tx_burst(&mut bufs)?
                    };
                    count += sent as u64;
                    Ok(took || sent > 0)
                },
                // A ring, and room on the port, which has no descriptor for it here.
                Waker::fdless,
            );
            let done = poll::run(&mut send, idle, &s).map_err(|e| port_error(e, &name));
            for m in bufs.drain(..) {
                pool.put(m);
            }
            drain_ring(&from_worker, &pool);
            done.map(|_| count)
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
