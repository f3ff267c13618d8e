//! Our side of bench/dpdk-compare.sh, measured the way DPDK's autotests measure theirs:
//!
//!     perf ring      one core: enqueue+dequeue of a bulk of 8 and 32 (SP/SC and MP/MC),
//!                    nanoseconds per operation pair (ring_perf_autotest's single-core lines)
//!     perf mempool   one core, cache 512: get 32 / put 32 with 32 kept, objects per second
//!                    (mempool_perf_autotest's cache=512 cores=1 n_get_bulk=32 ... line);
//!                    `perf mempool ROUNDS` runs ROUNDS x 1000 instead, for callgrind
//!     perf forward   io-forwarding between two null ports, burst 32, one core, for 5 s:
//!                    frames per second (testpmd io mode over net_null0/net_null1)
//!
//!     perf veth KIND A B SIZE
//!                    ports of KIND (socket: one syscall per frame; af_packet: TPACKET_V3
//!                    and TX rings; af_xdp: XDP socket, UMEM = the pool) on interfaces A
//!                    and B, frames of SIZE bytes, one core, 5 s each:
//!                    txonly: bursts of 32 out of both ports, nothing received, frames/s
//!                    of port A, headers written, payload left as found (testpmd txonly
//!                    on net_af_packet / net_af_xdp, port 0);
//!                    tx/rx: A sends, B receives, frames/s sent and received
//!
//!     perf pingpong KIND A B [ROUNDS]
//!                    one 64-byte frame at a time from A to B and back (a thread per
//!                    port, both busy-polling), ROUNDS (20 000) round trips after a
//!                    tenth more to warm up: median, p90 and p99 in microseconds
//!
//! Output lines are `name value unit`, for the script to parse.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dataplane::engine::{io_forward, Stop};
use dataplane::poll::IdlePolicy;
use dataplane::ports::null::NullPort;
use dataplane::ring::{mpmc, spsc};
use dataplane::Mempool;

fn ns_per<F: FnMut()>(iterations: u64, mut f: F) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iterations {
        f();
    }
    t.elapsed().as_nanos() as f64 / iterations as f64
}

fn ring() {
    const ITER: u64 = 1 << 24;
    for burst in [8usize, 32] {
        let items: Vec<usize> = (0..burst).collect();
        let mut out = vec![0usize; burst];
        let (p, c) = spsc::<usize>(4096);
        let ns = ns_per(ITER, || {
            p.enqueue_bulk(black_box(&items));
            c.dequeue_bulk(black_box(&mut out));
        });
        println!("ring_spsc_bulk_{burst} {ns:.2} ns");
        let (p, c) = mpmc::<usize>(4096);
        let ns = ns_per(ITER, || {
            p.enqueue_bulk(black_box(&items));
            c.dequeue_bulk(black_box(&mut out));
        });
        println!("ring_mpmc_bulk_{burst} {ns:.2} ns");
    }
}

/// `rounds`: a fixed number of rounds of 1000 instead of 3 s, for callgrind.
fn mempool(rounds: Option<u64>) {
    let pool = Mempool::new(16 * 1024, 2048).expect("pool");
    eprintln!("pool backing: {}", pool.backing());
    let mut cache = pool.cache(512);
    let mut held = Vec::with_capacity(32);
    let t = Instant::now();
    let mut objs = 0u64;
    let more = |objs: u64| match rounds {
        Some(r) => objs < r * 32_000,
        None => t.elapsed() < Duration::from_secs(3),
    };
    while more(objs) {
        for _ in 0..1000 {
            cache.get_bulk(&mut held, 32);
            cache.put_all(&mut held);
        }
        objs += 32_000;
    }
    println!(
        "mempool_cache512_bulk32 {:.0} objs/s",
        objs as f64 / t.elapsed().as_secs_f64()
    );
}

fn forward() {
    let pool = Mempool::new(4096, 2048).expect("pool");
    let mut a = NullPort::new("null0", &pool, &[0u8; 64], false);
    let mut b = NullPort::new("null1", &pool, &[0u8; 64], false);
    let stop = Stop::new();
    let s = stop.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        s.request();
    });
    let _ = dataplane::engine::pin_to_core(0);
    let t = Instant::now();
    let stats = io_forward(&mut a, &mut b, 32, &stop, IdlePolicy::BUSY).expect("forwarding");
    timer.join().expect("timer");
    println!(
        "forward_null_io_burst32 {:.0} frames/s",
        stats.frames as f64 / t.elapsed().as_secs_f64()
    );
}

fn veth(kind: &str, a: &str, b: &str, size: usize) {
    use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
    use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
    use dataplane::ports::socket::SocketPort;
    use dataplane::Port;
    let pool = Mempool::new(16384, 2048).expect("pool");
    let open = |name: &str| -> Box<dyn Port> {
        match kind {
            "socket" => Box::new(SocketPort::open(name, &pool).expect("socket port")),
            "af_packet" => Box::new(
                AfPacketPort::open(name, &pool, RingConfig::default()).expect("af_packet port"),
            ),
            "af_xdp" => {
                let p = AfXdpPort::open(name, &pool, XdpConfig::default()).expect("af_xdp port");
                eprintln!("af_xdp on {name}: {}", p.mode());
                Box::new(p)
            }
            _ => panic!("port kind {kind:?}: socket, af_packet or af_xdp"),
        }
    };
    let mut tx = open(a);
    let mut rx = open(b);
    let mut frame = vec![0u8; size];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut cache = pool.cache(256);
    // `headers_only` writes the first 42 bytes (Ethernet + IPv4 + UDP in testpmd's
    // txonly) and leaves the rest of the buffer as it is, as testpmd does.
    let refill =
        |out: &mut Vec<dataplane::Mbuf>, cache: &mut dataplane::PoolCache, headers_only: bool| {
            if out.is_empty() && cache.get_bulk(out, 32) {
                for m in out.iter_mut() {
                    if headers_only {
                        pool.buf_mut(m)[..42].copy_from_slice(&frame[..42]);
                        pool.set_len(m, frame.len());
                    } else {
                        pool.fill(m, &frame);
                    }
                }
            }
        };
    // 1. testpmd's txonly: one core sends bursts of 32 on both ports and receives
    //    nothing; the rate of port A is what testpmd's port 0 line shows.
    let (mut out_a, mut out_b) = (Vec::with_capacity(32), Vec::with_capacity(32));
    let t = Instant::now();
    let mut sent_a = 0u64;
    while t.elapsed() < Duration::from_secs(5) {
        refill(&mut out_a, &mut cache, true);
        refill(&mut out_b, &mut cache, true);
        sent_a += tx.tx_burst(&mut out_a).expect("tx") as u64;
        rx.tx_burst(&mut out_b).expect("tx");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "veth_{kind}_txonly_{size} {:.0} frames/s",
        sent_a as f64 / secs
    );
    cache.put_all(&mut out_a);
    cache.put_all(&mut out_b);
    let mut got = Vec::with_capacity(64);
    std::thread::sleep(Duration::from_millis(100));
    for port in [&mut tx, &mut rx] {
        while port.rx_burst(&mut got, 64).expect("rx") > 0 {
            cache.put_all(&mut got);
        }
    }
    // 2. One port sends, the other receives, on one core: what arrives is counted.
    let mut out = Vec::with_capacity(32);
    let t = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while t.elapsed() < Duration::from_secs(5) {
        refill(&mut out, &mut cache, false);
        sent += tx.tx_burst(&mut out).expect("tx") as u64;
        while rx.rx_burst(&mut got, 64).expect("rx") > 0 {
            received += got.len() as u64;
            cache.put_all(&mut got);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("veth_{kind}_tx_{size} {:.0} frames/s", sent as f64 / secs);
    println!(
        "veth_{kind}_rx_{size} {:.0} frames/s",
        received as f64 / secs
    );
    cache.put_all(&mut out);
}

/// The data plane's own round trip: a thread on port A sends one 64-byte frame and
/// busy-polls for its return; a thread on port B busy-polls and sends every frame it
/// gets straight back. What `tether bench`'s MMIO read costs without tether: two
/// crossings of the link and two turns of a poll loop.
fn pingpong(kind: &str, a: &str, b: &str, rounds: usize) {
    use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
    use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
    use dataplane::ports::socket::SocketPort;
    use dataplane::Port;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pool = Mempool::new(16384, 2048).expect("pool");
    let open = move |name: &str, pool: &Arc<Mempool>| -> Box<dyn Port> {
        match kind {
            "socket" => Box::new(SocketPort::open(name, pool).expect("socket port")),
            // The frame ring, as tether opens it: a block ring holds frames until a
            // block fills or times out.
            "af_packet" => Box::new(
                AfPacketPort::open(name, pool, RingConfig::low_latency()).expect("af_packet port"),
            ),
            "af_xdp" => {
                Box::new(AfXdpPort::open(name, pool, XdpConfig::default()).expect("af_xdp port"))
            }
            _ => panic!("port kind {kind:?}: socket, af_packet or af_xdp"),
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let echo = {
        let (pool, done, ready, b) = (pool.clone(), done.clone(), ready.clone(), b.to_string());
        let port = open(&b, &pool);
        std::thread::spawn(move || {
            let mut port = port;
            let mut got = Vec::with_capacity(32);
            let mut cache = pool.cache(64);
            ready.store(true, Ordering::Release);
            while !done.load(Ordering::Relaxed) {
                if port.rx_burst(&mut got, 32).expect("rx") > 0 {
                    port.tx_burst(&mut got).expect("tx");
                    cache.put_all(&mut got);
                }
            }
        })
    };
    let mut port = open(a, &pool);
    while !ready.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut cache = pool.cache(64);
    let (mut out, mut got) = (Vec::with_capacity(1), Vec::with_capacity(32));
    let mut rtts = Vec::with_capacity(rounds);
    let mut lost = 0;
    for i in 0..rounds + rounds / 10 {
        let mut m = cache.get().expect("buffer");
        frame[14..22].copy_from_slice(&(i as u64).to_be_bytes());
        pool.fill(&mut m, &frame);
        out.push(m);
        let t = Instant::now();
        while !out.is_empty() {
            port.tx_burst(&mut out).expect("tx");
        }
        let back = loop {
            if port.rx_burst(&mut got, 32).expect("rx") > 0 {
                let mine = got
                    .iter()
                    .any(|m| pool.data(m).get(14..22) == Some(&frame[14..22]));
                cache.put_all(&mut got);
                if mine {
                    break true;
                }
            }
            if t.elapsed() > Duration::from_millis(100) {
                break false;
            }
        };
        // The first tenth warms up caches and rings and is not counted.
        if !back {
            lost += 1;
        } else if i >= rounds / 10 {
            rtts.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    done.store(true, Ordering::Relaxed);
    echo.join().expect("echo thread");
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    println!("pingpong_{kind}_median {:.1} us", at(0.5));
    println!("pingpong_{kind}_p90 {:.1} us", at(0.9));
    println!("pingpong_{kind}_p99 {:.1} us", at(0.99));
    println!("pingpong_{kind}_lost {lost} frames");
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i).unwrap_or_default();
    match std::env::args().nth(1).as_deref() {
        Some("veth") => veth(&arg(2), &arg(3), &arg(4), arg(5).parse().unwrap_or(64)),
        Some("pingpong") => pingpong(&arg(2), &arg(3), &arg(4), arg(5).parse().unwrap_or(20_000)),
        Some("ring") => ring(),
        Some("mempool") => mempool(arg(2).parse().ok()),
        Some("forward") => forward(),
        _ => {
            eprintln!(
                "usage: perf ring|mempool|forward|veth KIND A B SIZE|pingpong KIND A B [ROUNDS]"
            );
            std::process::exit(2);
        }
    }
}
