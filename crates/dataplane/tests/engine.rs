//! Poll engines: io-forwarding, the three-thread pipeline, adaptive idle, clean
//! shutdown with every buffer returned.

use std::time::{Duration, Instant};

use dataplane::engine::{io_forward, Pinning, Pipeline, Stop};
use dataplane::poll::IdlePolicy;
use dataplane::ports::{mem, null::NullPort};
use dataplane::{Mempool, Port};

#[test]
fn io_forward_between_null_ports_returns_every_buffer() {
    let pool = Mempool::new(2048, 2048).unwrap();
    let mut a = NullPort::new("null0", &pool, &[0u8; 64], false);
    let mut b = NullPort::new("null1", &pool, &[0u8; 64], false);
    let stop = Stop::new();
    let s = stop.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        s.request();
    });
    let stats = io_forward(&mut a, &mut b, 32, &stop, IdlePolicy::BUSY).unwrap();
    timer.join().unwrap();
    assert!(stats.frames > 10_000, "{stats:?}");
    assert_eq!(stats.dropped, 0);
    assert_eq!(a.stats().rx_packets + b.stats().rx_packets, stats.frames);
    drop((a, b));
    assert_eq!(pool.available(), pool.count());
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct for the calling thread.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn an_idle_poller_does_not_burn_a_core() {
    let pool = Mempool::new(256, 2048).unwrap();
    let (mut a, mut b) = mem::pair(&pool, 64, 1500);
    let stop = Stop::new();
    let s = stop.clone();
    let worker = std::thread::spawn(move || {
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        let stats = io_forward(&mut a, &mut b, 32, &s, IdlePolicy::default()).unwrap();
        (thread_cpu() - cpu0, t0.elapsed(), stats)
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.request();
    let (cpu, wall, stats) = worker.join().unwrap();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "idle forwarder: {:.1}% of a core, {} waits",
        share * 100.0,
        stats.idle_waits
    );
    assert!(stats.idle_waits > 100, "{stats:?}");
    assert!(
        share < 0.2,
        "an idle forwarder used {:.0}% of a core",
        share * 100.0
    );
}

#[test]
fn pipeline_moves_frames_in_order_and_shuts_down_clean() {
    const N: u64 = 200_000;
    let pool = Mempool::new(4096, 256).unwrap();
    let (mut src, p_in) = mem::pair(&pool, 512, 1500);
    let (p_out, mut sink) = mem::pair(&pool, 512, 1500);
    // The worker stamps each frame, and drops every 10th.
    let work = Box::new(|pool: &Mempool, m: &mut dataplane::Mbuf| {
        let seq = u64::from_be_bytes(pool.data(m)[..8].try_into().unwrap());
        pool.buf_mut(m)[8] = 0xaa;
        seq % 10 != 9
    });
    let pipe = Pipeline::spawn(
        Box::new(p_in),
        Box::new(p_out),
        work,
        256,
        32,
        IdlePolicy::default(),
        Pinning::default(),
    );
    let mut cache = pool.cache(64);
    let (mut sent, mut got, mut expect) = (0u64, 0u64, 0u64);
    let mut out = Vec::new();
    let mut inbox = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (sent < N || got < N - N / 10) && Instant::now() < deadline {
        if sent < N && out.is_empty() {
            let n = (N - sent).min(32) as usize;
            if cache.get_bulk(&mut out, n) {
                for (k, m) in out.iter_mut().enumerate() {
                    let mut f = [0u8; 64];
                    f[..8].copy_from_slice(&(sent + k as u64).to_be_bytes());
                    pool.fill(m, &f);
                }
            }
        }
        sent += src.tx_burst(&mut out).unwrap() as u64;
        sink.rx_burst(&mut inbox, 64).unwrap();
        for m in inbox.drain(..) {
            let d = pool.data(&m);
            let seq = u64::from_be_bytes(d[..8].try_into().unwrap());
            if expect % 10 == 9 {
                expect += 1;
            }
            assert_eq!(seq, expect, "out of order");
            assert_eq!(d[8], 0xaa, "not worked on");
            expect += 1;
            got += 1;
            cache.put(m);
        }
    }
    assert_eq!(got, N - N / 10);
    let stats = pipe.stop().unwrap();
    assert_eq!(stats.received, N);
    assert_eq!(stats.worked, N);
    assert_eq!(stats.sent, N - N / 10);
    cache.put_all(&mut out);
    drop(cache);
    drop((src, sink));
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}
