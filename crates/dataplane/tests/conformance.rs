//! The same conformance checks for every port: burst semantics, VLAN tags preserved,
//! and no buffer leaked after 10^6 frames. The socket port runs between two network
//! namespaces joined by a veth pair that the test creates and removes (root only; a
//! loud SKIPPED line otherwise).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::netns::Rig;
use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
use dataplane::ports::{mem, null::NullPort, socket::SocketPort};
use dataplane::{Mbuf, Mempool, Port};

const MILLION: u64 = 1_000_000;

/// A frame of `len` bytes: broadcast, 802.1Q with VID 10 and PCP 5, tether's EtherType,
/// then `seq` and a pattern.
fn frame(seq: u64, len: usize) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x81, 0x00, 0xa0, 0x0a, 0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u64 ^ seq) as u8);
    }
    f
}

fn seq_of(f: &[u8]) -> u64 {
    u64::from_be_bytes(f[18..26].try_into().unwrap())
}

/// Sends `count` frames from `tx` to `rx` in bursts, checking every received one.
/// Returns how many arrived (a kernel path may drop some under load).
fn stream(tx: &mut dyn Port, rx: &mut dyn Port, count: u64, len: usize, deadline: Duration) -> u64 {
    let pool = tx.pool().clone();
    let mut cache = pool.cache(64);
    let mut out: Vec<Mbuf> = Vec::with_capacity(32);
    let mut got: Vec<Mbuf> = Vec::with_capacity(64);
    let (mut sent, mut received, mut last) = (0u64, 0u64, None::<u64>);
    let start = Instant::now();
    while (sent < count || received < sent) && start.elapsed() < deadline {
        if sent < count && out.is_empty() {
            let n = (count - sent).min(32) as usize;
            assert!(cache.get_bulk(&mut out, n), "pool exhausted: a leak");
            for (k, m) in out.iter_mut().enumerate() {
                pool.fill(m, &frame(sent + k as u64, len));
            }
        }
        let before = out.len();
        let n = tx.tx_burst(&mut out).unwrap();
        assert_eq!(
            out.len(),
            before - n,
            "tx_burst keeps exactly the unsent frames"
        );
        sent += n as u64;
        loop {
            let k = rx.rx_burst(&mut got, 64).unwrap();
            assert!(k <= 64 && got.len() == k, "rx_burst respects max");
            if k == 0 {
                break;
            }
            for m in got.drain(..) {
                let data = rx.pool().data(&m);
                // A kernel link also carries its own traffic (IPv6 neighbour discovery
                // on a fresh veth): only tether-typed frames are ours.
                if data.len() < 26 || data[16..18] != [0x88, 0xb5] {
                    rx.pool().put(m);
                    continue;
                }
                let s = seq_of(data);
                assert_eq!(
                    data,
                    &frame(s, len)[..],
                    "frame {s} changed on the way (VLAN tag included)"
                );
                assert!(
                    last.is_none_or(|l| l < s),
                    "frame {s} after {last:?}: reordered or duplicated"
                );
                last = Some(s);
                received += 1;
                rx.pool().put(m);
            }
        }
        if sent == count && received < sent {
            rx.wait_rx(Duration::from_millis(1));
            if start.elapsed() > deadline / 2 {
                break; // what is missing was dropped by the kernel
            }
        }
    }
    cache.put_all(&mut out);
    received
}

#[test]
fn mem_ports_conform() {
    let pool = Mempool::new(4096, 2048).unwrap();
    let (mut a, mut b) = mem::pair(&pool, 1024, 1500);
    // Burst semantics: a full ring takes only what fits.
    let mut cache = pool.cache(64);
    let mut bufs = Vec::new();
    assert!(cache.get_bulk(&mut bufs, 1500));
    for m in bufs.iter_mut() {
        pool.fill(m, &frame(0, 64));
    }
    assert_eq!(a.tx_burst(&mut bufs).unwrap(), 1024);
    assert_eq!(bufs.len(), 476);
    let mut got = Vec::new();
    assert_eq!(b.rx_burst(&mut got, 100).unwrap(), 100);
    cache.put_all(&mut got);
    while b.rx_burst(&mut got, 512).unwrap() > 0 {
        cache.put_all(&mut got);
    }
    cache.put_all(&mut bufs);
    drop(cache);
    assert_eq!(
        stream(&mut a, &mut b, MILLION, 64, Duration::from_secs(60)),
        MILLION
    );
    assert_eq!(
        stream(&mut b, &mut a, 10_000, 1514, Duration::from_secs(60)),
        10_000
    );
    assert_eq!(a.stats().tx_packets, 1024 + MILLION);
    drop((a, b));
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}

#[test]
fn null_port_conforms() {
    let pool = Mempool::new(1024, 2048).unwrap();
    let template = frame(7, 64);
    let mut p = NullPort::new("null0", &pool, &template, true);
    let mut got = Vec::new();
    for _ in 0..(MILLION / 32) {
        assert_eq!(p.rx_burst(&mut got, 32).unwrap(), 32);
        assert_eq!(pool.data(&got[0]), &template[..]);
        assert_eq!(p.tx_burst(&mut got).unwrap(), 32);
        assert!(got.is_empty());
    }
    assert_eq!(p.stats().rx_packets, MILLION);
    drop(p);
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}

/// Opens a port of some kind on an interface of the current namespace.
type Opener = fn(&str, &Arc<Mempool>) -> Box<dyn Port>;

fn kernel_port_conforms(test: &str, tag: &str, open: Opener) {
    let Some(mut rig) = Rig::for_test(test, tag) else {
        return;
    };
    let (h0, h1) = (rig.host("a").unwrap(), rig.host("b").unwrap());
    rig.veth(h0, "dpa", h1, "dpb", 1500).unwrap();
    // Room for what AF_XDP lends the kernel: fill and TX rings of both ports.
    let pool = Mempool::new(16384, 2048).unwrap();
    let p1 = pool.clone();
    let p2 = pool.clone();
    let mut a = rig.within(h0, move || open("dpa", &p1));
    let mut b = rig.within(h1, move || open("dpb", &p2));
    assert_eq!(a.info().mtu, 1500);
    // VLAN-tagged frames cross whole, the tag the kernel strips put back.
    let small = stream(&mut *a, &mut *b, 1000, 60, Duration::from_secs(10));
    assert_eq!(small, 1000);
    let big = stream(&mut *b, &mut *a, 1000, 1518, Duration::from_secs(10));
    assert_eq!(big, 1000);
    let got = stream(&mut *a, &mut *b, MILLION, 64, Duration::from_secs(120));
    eprintln!("{test}: {got} of {MILLION} frames through the veth");
    assert!(
        got as f64 >= 0.9 * MILLION as f64,
        "only {got} of {MILLION} frames arrived"
    );
    drop((a, b));
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}

#[test]
fn socket_port_conforms() {
    kernel_port_conforms("socket_port_conforms", "dps", |i, p| {
        Box::new(SocketPort::open(i, p).unwrap())
    });
}

#[test]
fn af_packet_port_conforms() {
    kernel_port_conforms("af_packet_port_conforms", "dpp", |i, p| {
        Box::new(AfPacketPort::open(i, p, RingConfig::default()).unwrap())
    });
}

#[test]
fn af_packet_frame_ring_port_conforms() {
    kernel_port_conforms("af_packet_frame_ring_port_conforms", "dpv", |i, p| {
        Box::new(AfPacketPort::open(i, p, RingConfig::low_latency()).unwrap())
    });
}

#[test]
fn af_xdp_port_conforms() {
    kernel_port_conforms("af_xdp_port_conforms", "dpx", |i, p| {
        let port = AfXdpPort::open(i, p, XdpConfig::default()).unwrap();
        eprintln!("af_xdp on {i}: {}", port.mode());
        Box::new(port)
    });
}

#[allow(dead_code)]
fn _assert_ports_are_send(p: Arc<Mempool>) -> Box<dyn Port> {
    Box::new(NullPort::new("x", &p, &[], false))
}

/// AF_XDP against AF_PACKET on one veth pair, through a Linux bridge on the way: the
/// tag AF_PACKET's kernel path strips and the bridge carries as metadata must still
/// be in the frame the XDP socket gets.
#[test]
fn af_xdp_meets_af_packet_through_a_bridge() {
    let test = "af_xdp_meets_af_packet_through_a_bridge";
    let Some(mut rig) = Rig::for_test(test, "dpm") else {
        return;
    };
    let (h0, sw, h1) = (
        rig.host("a").unwrap(),
        rig.host("s").unwrap(),
        rig.host("b").unwrap(),
    );
    rig.veth(h0, "dpa", sw, "swa", 1500).unwrap();
    rig.veth(h1, "dpb", sw, "swb", 1500).unwrap();
    rig.bridge(sw, "br0", &["swa", "swb"]).unwrap();
    let pool = Mempool::new(16384, 2048).unwrap();
    let (p1, p2) = (pool.clone(), pool.clone());
    let mut a: Box<dyn Port> = rig.within(h0, move || {
        Box::new(AfPacketPort::open("dpa", &p1, RingConfig::default()).unwrap())
    });
    let mut b: Box<dyn Port> = rig.within(h1, move || {
        Box::new(AfXdpPort::open("dpb", &p2, XdpConfig::default()).unwrap())
    });
    // The bridge learns addresses; the frames are broadcast anyway.
    assert_eq!(
        stream(&mut *a, &mut *b, 1000, 64, Duration::from_secs(10)),
        1000
    );
    assert_eq!(
        stream(&mut *b, &mut *a, 1000, 1518, Duration::from_secs(10)),
        1000
    );
    drop((a, b));
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}

/// With an EtherType filter, only that type comes to the XDP socket (tagged or not);
/// everything else goes on to the kernel stack, where a packet socket still sees it.
/// Uses the generic XDP path, so both attach modes are covered.
#[test]
fn af_xdp_ethertype_filter_leaves_other_traffic_to_the_kernel() {
    use dataplane::bpf::XdpAttach;
    use dataplane::sys::PacketSocket;
    let test = "af_xdp_ethertype_filter_leaves_other_traffic_to_the_kernel";
    let Some(mut rig) = Rig::for_test(test, "dpf") else {
        return;
    };
    let (h0, h1) = (rig.host("a").unwrap(), rig.host("b").unwrap());
    rig.veth(h0, "dpa", h1, "dpb", 1500).unwrap();
    let pool = Mempool::new(8192, 2048).unwrap();
    let (p1, p2) = (pool.clone(), pool.clone());
    let mut a = rig.within(h0, move || SocketPort::open("dpa", &p1).unwrap());
    let (mut b, watch) = rig.within(h1, move || {
        let cfg = XdpConfig {
            ethertype: Some(0x88b5),
            attach: XdpAttach::Generic,
            ..XdpConfig::default()
        };
        let port = AfXdpPort::open("dpb", &p2, cfg).unwrap();
        assert!(!port.mode().native);
        (port, PacketSocket::open("dpb", true, false).unwrap())
    });
    let ours_tagged = frame(1, 100);
    let mut ours_untagged = frame(2, 100);
    ours_untagged.drain(12..16);
    let mut other_tagged = frame(3, 100);
    other_tagged[16..18].copy_from_slice(&[0x88, 0xb6]);
    let mut other = frame(4, 100);
    other.drain(12..16);
    other[12..14].copy_from_slice(&[0x08, 0x06]);
    let all = [&ours_tagged, &ours_untagged, &other_tagged, &other];
    let mut bufs = Vec::new();
    for f in all {
        let mut m = pool.get().unwrap();
        pool.fill(&mut m, f);
        bufs.push(m);
    }
    assert_eq!(a.tx_burst(&mut bufs).unwrap(), 4);
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 && start.elapsed() < Duration::from_secs(5) {
        b.rx_burst(&mut got, 32).unwrap();
        b.wait_rx(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    b.rx_burst(&mut got, 32).unwrap();
    let seen: Vec<Vec<u8>> = got.iter().map(|m| pool.data(m).to_vec()).collect();
    assert_eq!(seen, vec![ours_tagged.clone(), ours_untagged.clone()]);
    // The kernel got the other two, and not ours (ND traffic of the fresh veth too).
    let mut stack = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(meta) = watch.recv(&mut buf).unwrap() {
        stack.push(buf[..meta.len].to_vec());
    }
    assert!(
        stack.contains(&other_tagged),
        "tagged foreign frame not on the stack"
    );
    assert!(
        stack.contains(&other),
        "untagged foreign frame not on the stack"
    );
    assert!(!stack.contains(&ours_tagged) && !stack.contains(&ours_untagged));
    for m in got {
        pool.put(m);
    }
    drop((a, b));
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}

#[test]
fn af_xdp_refuses_a_pool_it_cannot_use() {
    // Checked before any socket is opened, so no root is needed.
    let pool = Mempool::new(8192, 1024).unwrap();
    let err = AfXdpPort::open("lo", &pool, XdpConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("2048 or 4096"), "{err}");
    let pool = Mempool::new(1000, 2048).unwrap();
    let err = AfXdpPort::open("lo", &pool, XdpConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least 4096"), "{err}");
}

#[test]
fn hub_ports_flood_a_copy_to_every_other_port() {
    let pool = Mempool::new(4096, 2048).unwrap();
    let mut ports = mem::hub(&pool, 3, 256, 1500);
    let mut bufs = Vec::new();
    for s in 0..100 {
        let mut m = pool.get().unwrap();
        pool.fill(&mut m, &frame(s, 64));
        bufs.push(m);
    }
    assert_eq!(ports[0].tx_burst(&mut bufs).unwrap(), 100);
    assert!(
        ports[0].rx_burst(&mut bufs, 64).unwrap() == 0,
        "no echo to the sender"
    );
    for p in &mut ports[1..] {
        let mut got = Vec::new();
        while p.rx_burst(&mut got, 64).unwrap() > 0 {}
        assert_eq!(got.len(), 100);
        for (s, m) in got.iter().enumerate() {
            assert_eq!(pool.data(m), &frame(s as u64, 64)[..]);
        }
        got.into_iter().for_each(|m| pool.put(m));
    }
    // A full receive ring loses frames, counted at the sender; nothing leaks.
    for s in 0..300 {
        let mut m = pool.get().unwrap();
        pool.fill(&mut m, &frame(s, 64));
        bufs.push(m);
    }
    ports[2].tx_burst(&mut bufs).unwrap();
    assert_eq!(ports[2].stats().tx_errors, 2 * (300 - 256));
    drop(ports);
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}

/// On a jumbo-frame link (MTU 9000) a bridge's pool has 4096-byte buffers and its
/// frames are up to 4096 - 320 bytes: they cross between AF_PACKET (both ring kinds)
/// and AF_XDP whole. A frame longer than the ring's slots is dropped and counted at
/// the AF_PACKET port, never handed up cut short.
#[test]
fn jumbo_frames_cross_af_packet_and_af_xdp() {
    let test = "jumbo_frames_cross_af_packet_and_af_xdp";
    let Some(mut rig) = Rig::for_test(test, "dpj") else {
        return;
    };
    let (h0, h1) = (rig.host("a").unwrap(), rig.host("b").unwrap());
    rig.veth(h0, "dpa", h1, "dpb", 9000).unwrap();
    let pool = dataplane::open::pool_for(9000).unwrap();
    assert_eq!(pool.buf_size(), 4096);
    let longest = 4096 - dataplane::open::FRAME_OVERHEAD + 18;
    for ring in [RingConfig::low_latency(), RingConfig::default()] {
        let (p1, p2) = (pool.clone(), pool.clone());
        let mut a: Box<dyn Port> = rig.within(h0, move || {
            Box::new(AfPacketPort::open("dpa", &p1, ring).unwrap())
        });
        let mut b: Box<dyn Port> = rig.within(h1, move || {
            Box::new(AfXdpPort::open("dpb", &p2, XdpConfig::default()).unwrap())
        });
        for len in [64, 1518, longest] {
            let there = stream(&mut *a, &mut *b, 500, len, Duration::from_secs(10));
            let back = stream(&mut *b, &mut *a, 500, len, Duration::from_secs(10));
            assert_eq!(
                (there, back),
                (500, 500),
                "{len}-byte frames, {:?}",
                ring.version
            );
        }
        drop((a, b));
    }
    assert_eq!(pool.available(), pool.count(), "buffers leaked");

    // 6000-byte frames from a port whose buffers hold them, into AF_PACKET rings
    // sized for 4096-byte buffers.
    let big = Arc::new(Mempool::new(512, 8192).unwrap());
    for ring in [RingConfig::low_latency(), RingConfig::default()] {
        let (p1, p2) = (pool.clone(), big.clone());
        let mut a: Box<dyn Port> = rig.within(h0, move || {
            Box::new(AfPacketPort::open("dpa", &p1, ring).unwrap())
        });
        let mut b: Box<dyn Port> =
            rig.within(h1, move || Box::new(SocketPort::open("dpb", &p2).unwrap()));
        let got = stream(&mut *b, &mut *a, 50, 6000, Duration::from_secs(4));
        assert_eq!(got, 0, "no cut frame handed up ({:?})", ring.version);
        assert!(
            a.stats().rx_dropped >= 50,
            "{:?}: {:?}",
            ring.version,
            a.stats()
        );
        drop((a, b));
    }
    assert_eq!(pool.available(), pool.count(), "buffers leaked");
}
