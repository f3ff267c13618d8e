//! The virtio-net backends of the box on real interfaces, in network namespaces the
//! tests create and remove (the dataplane rig): a TAP on a Linux bridge with a veth to
//! a "peer" namespace, and an AF_PACKET backend on a veth. Frames cross both ways with
//! the virtio-net header; offloads change what the kernel hands over. Root only (a
//! loud SKIPPED line otherwise); as root a missing prerequisite (no /dev/net/tun)
//! fails.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::netns::Rig;
use dataplane::sys::{poll_in, PacketSocket};
use endpoint::virtio::net::{NetBackend, Offloads, VNET_HDR_LEN};
use iobox::netback::{
    NetbackError, PacketBackend, TapBackend, TapConfig, HDR_F_NEEDS_CSUM, HDR_GSO_NONE,
};

/// Upper bound against hangs only.
const PATIENCE: Duration = Duration::from_secs(10);
const ETHERTYPE: [u8; 2] = [0x88, 0xb6];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A 64-byte frame of our EtherType (optionally 802.1Q-tagged with `vid`) carrying
/// `text`.
fn frame(dst: [u8; 6], src: [u8; 6], vid: Option<u16>, text: &str) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(text.as_bytes());
    f.resize(64, 0);
    f
}

/// `frame` behind an all-zero virtio-net header (no offloads).
fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(frame);
    f
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for the backend's descriptor and takes frames until one `want` accepts.
fn recv_matching(
    b: &mut dyn NetBackend,
    want: impl Fn(&[u8]) -> bool,
    resend: &mut dyn FnMut(),
) -> Vec<u8> {
    let fd = b.wait_fd().expect("a kernel backend has a descriptor");
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN + 4];
    while Instant::now() < deadline {
        resend();
        if !poll_in(fd, Duration::from_millis(100)) {
            continue;
        }
        while let Some(n) = b.recv(&mut buf).unwrap() {
            assert!(n >= VNET_HDR_LEN);
            if want(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    }
    panic!("no matching frame within {PATIENCE:?}");
}

/// Takes frames on the peer's socket until one `want` accepts, calling `resend`
/// between waits (a new bridge port may still be learning).
fn peer_recv(s: &PacketSocket, want: impl Fn(&[u8]) -> bool, resend: &mut dyn FnMut()) -> Vec<u8> {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        resend();
        if !s.wait(Duration::from_millis(100)) {
            continue;
        }
        while let Some(m) = s.recv(&mut buf).unwrap() {
            if want(&buf[..m.len]) {
                return buf[..m.len].to_vec();
            }
        }
    }
    panic!("the peer saw no matching frame within {PATIENCE:?}");
}

/// A frame (header stripped) of ours carrying `text`.
fn carries(text: &'static str) -> impl Fn(&[u8]) -> bool {
    move |f: &[u8]| f.windows(text.len()).any(|w| w == text.as_bytes())
}

/// The UDP checksum of an untagged IPv4 frame is right (sums to 0xffff with the
/// pseudo-header).
fn udp_checksum_ok(f: &[u8]) -> bool {
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp = &ip[ihl..total];
    let mut sum: u64 = u64::from(ip[9]) + udp.len() as u64;
    for w in ip[12..20].chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    for w in udp.chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Gives the peer's veth an address and a static neighbour at GUEST_MAC, so its UDP
/// datagrams (with partial checksums: veth offloads them) go towards the guest.
fn peer_ip(rig: &Rig, p: usize, dev: &str) {
    ip(&["-n", rig.ns(p), "addr", "add", "10.77.0.1/24", "dev", dev]);
    ip(&[
        "-n",
        rig.ns(p),
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        dev,
    ]);
}

fn peer_udp(rig: &Rig, p: usize, text: &'static str) {
    rig.within(p, move || {
        let s = UdpSocket::bind("10.77.0.1:0").unwrap();
        s.send_to(text.as_bytes(), "10.77.0.2:7777").unwrap();
    });
}

/// A UDP datagram from the peer's stack reaches the backend: with checksum offload
/// negotiated it comes with a partial checksum for the guest to finish; without, whole
/// and right.
fn udp_from_peer(rig: &Rig, p: usize, b: &mut dyn NetBackend, text: &'static str, csum: bool) {
    b.set_offloads(Offloads {
        csum,
        ..Offloads::default()
    })
    .unwrap();
    peer_udp(rig, p, text);
    let f = recv_matching(b, |f| carries(text)(&f[VNET_HDR_LEN..]), &mut || {});
    let eth = &f[VNET_HDR_LEN..];
    assert_eq!(&eth[12..14], &[0x08, 0x00], "an IPv4 frame");
    if csum {
        assert_eq!(f[0] & HDR_F_NEEDS_CSUM, HDR_F_NEEDS_CSUM, "{:?}", &f[..12]);
        assert_eq!(
            u16::from_le_bytes([f[6], f[7]]),
            34,
            "csum_start: the UDP header"
        );
        assert_eq!(
            u16::from_le_bytes([f[8], f[9]]),
            6,
            "csum_offset: UDP's field"
        );
    } else {
        assert_eq!(f[0] & HDR_F_NEEDS_CSUM, 0, "{:?}", &f[..12]);
        assert!(udp_checksum_ok(eth), "the checksum was completed");
    }
}

/// Waits until the backend's carrier is `up` (carrier readings are cached briefly).
fn link_becomes(b: &dyn NetBackend, up: bool) {
    let deadline = Instant::now() + PATIENCE;
    while b.link_up() != up {
        assert!(Instant::now() < deadline, "link never became up={up}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends the backend a 64-byte frame until it arrives cut to a buffer of a header
/// and 20 bytes.
fn cut_frame(b: &mut dyn NetBackend, peer: &PacketSocket) {
    let long = frame(GUEST_MAC, PEER_MAC, None, "cut me");
    let fd = b.wait_fd().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut small = [0u8; VNET_HDR_LEN + 20];
    while Instant::now() < deadline {
        assert!(peer.send(&long).unwrap());
        poll_in(fd, Duration::from_millis(100));
        while let Some(n) = b.recv(&mut small).unwrap() {
            assert!(n <= small.len());
            if n == small.len() && small[VNET_HDR_LEN..] == long[..20] {
                return;
            }
        }
    }
    panic!("no cut frame within {PATIENCE:?}");
}

#[test]
fn a_tap_on_a_bridge_carries_frames_both_ways() {
    let Some(mut rig) = Rig::for_test("a_tap_on_a_bridge_carries_frames_both_ways", "nbt") else {
        return;
    };
    let (b, p) = (rig.host("box").unwrap(), rig.host("peer").unwrap());
    rig.veth(b, "nbv0", p, "npv0", 1500).unwrap();
    rig.bridge(b, "nbbr0", &["nbv0"]).unwrap();
    let mut tap = rig
        .within(b, || {
            TapBackend::open(&TapConfig {
                name: "nbtap0".into(),
                bridge: Some("nbbr0".into()),
            })
        })
        .unwrap();
    assert!(tap.created());
    let link = ip_out(&["-n", rig.ns(b), "link", "show", "dev", "nbtap0"]).unwrap();
    assert!(link.contains("master nbbr0"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    link_becomes(&tap, true);
    let peer = rig
        .within(p, || PacketSocket::open("npv0", true, false))
        .unwrap();

    // Guest to peer: a frame with a zero header arrives as it was sent.
    let out = frame([0xff; 6], GUEST_MAC, None, "tap to peer");
    let got = peer_recv(&peer, carries("tap to peer"), &mut || {
        tap.send(&with_header(&out)).unwrap();
    });
    assert_eq!(got, out);
    assert!(tap.stats().frames_out >= 1);
    assert_eq!(tap.stats().bytes_out, 64 * tap.stats().frames_out);

    // Peer to guest, to its MAC (learnt by the bridge), untagged and tagged: the
    // frame exactly, behind a header without offloads and num_buffers = 1.
    for (vid, text) in [(None, "peer to tap"), (Some(20), "tagged peer to tap")] {
        let sent = frame(GUEST_MAC, PEER_MAC, vid, text);
        let got = recv_matching(&mut tap, |f| carries(text)(&f[VNET_HDR_LEN..]), &mut || {
            assert!(peer.send(&sent).unwrap())
        });
        assert_eq!(&got[VNET_HDR_LEN..], &sent[..], "{text}");
        assert_eq!(got[0], 0, "flags");
        assert_eq!(got[1], HDR_GSO_NONE);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }
    let s = tap.stats();
    assert!(s.frames_in >= 2 && s.bytes_in >= 128, "{s:?}");
    // The same counters as the device lists them (`tether ctl stats`).
    let named = NetBackend::counters(&tap);
    assert!(
        named.contains(&("backend_frames_in", s.frames_in)),
        "{named:?}"
    );
    assert!(
        named.contains(&("backend_bytes_out", s.bytes_out)),
        "{named:?}"
    );
    assert_eq!(
        (s.rx_truncated, s.tx_errors, s.rx_errors),
        (0, 0, 0),
        "{s:?}"
    );

    // Offloads: every flag the virtio-net model can pass is taken, and changes what
    // the kernel hands over.
    let all = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
        ufo: true,
    };
    tap.set_offloads(all).unwrap();
    peer_ip(&rig, p, "npv0");
    udp_from_peer(&rig, p, &mut tap, "udp with csum offload", true);
    udp_from_peer(&rig, p, &mut tap, "udp without csum offload", false);

    // A frame longer than the buffer is cut to it and counted.
    cut_frame(&mut tap, &peer);
    assert!(tap.stats().rx_truncated >= 1);

    // Someone setting the TAP down takes the link down.
    ip(&["-n", rig.ns(b), "link", "set", "nbtap0", "down"]);
    link_becomes(&tap, false);
    ip(&["-n", rig.ns(b), "link", "set", "nbtap0", "up"]);
    link_becomes(&tap, true);

    // The TAP this backend made goes with it.
    drop(tap);
    assert!(ip_out(&["-n", rig.ns(b), "link", "show", "dev", "nbtap0"]).is_none());
}

#[test]
fn a_tap_says_what_is_wrong_and_leaves_a_persistent_one_in_place() {
    let Some(mut rig) = Rig::for_test(
        "a_tap_says_what_is_wrong_and_leaves_a_persistent_one_in_place",
        "nbe",
    ) else {
        return;
    };
    let (b, p) = (rig.host("box").unwrap(), rig.host("peer").unwrap());
    rig.veth(b, "nbv0", p, "npv0", 1500).unwrap();
    rig.bridge(b, "nbbr0", &["nbv0"]).unwrap();
    ip(&["-n", rig.ns(b), "link", "add", "nbbr1", "type", "bridge"]);
    let open = |name: &'static str, bridge: Option<&'static str>| {
        rig.within(b, move || {
            TapBackend::open(&TapConfig {
                name: name.into(),
                bridge: bridge.map(Into::into),
            })
        })
    };
    let e = open("nbtap0", Some("nbnone0")).err().unwrap();
    assert!(matches!(e, NetbackError::NoSuchBridge { .. }), "{e}");
    assert!(e.to_string().contains("no bridge nbnone0"), "{e}");
    // The TAP made for that failed open is gone with it.
    assert!(ip_out(&["-n", rig.ns(b), "link", "show", "dev", "nbtap0"]).is_none());
    let e = open("nbtap0", Some("nbv0")).err().unwrap();
    assert!(matches!(e, NetbackError::NotABridge { .. }), "{e}");
    let e = open("nbv0", None).err().unwrap();
    assert!(matches!(e, NetbackError::NotATap { .. }), "{e}");
    assert!(
        e.to_string().contains("nbv0 exists and is not a TAP"),
        "{e}"
    );

    let first = open("nbtap1", None).unwrap();
    let e = open("nbtap1", None).err().unwrap();
    assert!(matches!(e, NetbackError::TapBusy { .. }), "{e}");
    drop(first);

    // A persistent TAP: attached to, put on the bridge, left there at drop, and
    // attached to again on the next run although it already is a port.
    let persistent_tap =
        |dev: &str| ip(&["-n", rig.ns(b), "tuntap", "add", "dev", dev, "mode", "tap"]);
    persistent_tap("nbkeep0");
    for _ in 0..2 {
        let t = open("nbkeep0", Some("nbbr0")).unwrap();
        assert!(!t.created());
        link_becomes(&t, true);
        drop(t);
        let link = ip_out(&["-n", rig.ns(b), "link", "show", "dev", "nbkeep0"]).unwrap();
        assert!(link.contains("master nbbr0"), "{link}");
    }
    // ... but not onto a second bridge.
    let e = open("nbkeep0", Some("nbbr1")).err().unwrap();
    assert!(matches!(e, NetbackError::BridgeBusy { .. }), "{e}");

    // A TAP it makes takes its bridge's MTU (jumbo frames reach the guest); a
    // persistent one keeps its own.
    let mtu = |dev: &str| {
        let link = ip_out(&["-n", rig.ns(b), "link", "show", "dev", dev]).unwrap();
        let at = link.find(" mtu ").expect("mtu shown") + 5;
        link[at..].split_whitespace().next().unwrap().to_string()
    };
    ip(&["-n", rig.ns(b), "link", "set", "nbbr1", "mtu", "9000"]);
    let t = open("nbtap2", Some("nbbr1")).unwrap();
    assert!(t.created());
    assert_eq!(mtu("nbtap2"), "9000");
    assert_eq!(mtu("nbbr1"), "9000", "the bridge's stays");
    drop(t);
    persistent_tap("nbkeep1");
    let t = open("nbkeep1", Some("nbbr1")).unwrap();
    assert_eq!(mtu("nbkeep1"), "1500");
    drop(t);
}

#[test]
fn a_packet_backend_on_a_veth_carries_frames_both_ways() {
    let Some(mut rig) = Rig::for_test("a_packet_backend_on_a_veth_carries_frames_both_ways", "nbp")
    else {
        return;
    };
    let (b, p) = (rig.host("box").unwrap(), rig.host("peer").unwrap());
    rig.veth(b, "nbv0", p, "npv0", 1500).unwrap();
    let mut pk = rig.within(b, || PacketBackend::open("nbv0")).unwrap();
    let e = rig
        .within(b, || PacketBackend::open("nbnone0"))
        .err()
        .unwrap();
    assert!(matches!(e, NetbackError::NoSuchInterface { .. }), "{e}");
    let peer = rig
        .within(p, || PacketSocket::open("npv0", true, false))
        .unwrap();
    let out = frame(PEER_MAC, GUEST_MAC, None, "packet to peer");
    let got = peer_recv(&peer, carries("packet to peer"), &mut || {
        pk.send(&with_header(&out)).unwrap();
    });
    assert_eq!(got, out);

    // From the peer, to a MAC that is not the interface's (promiscuous), untagged and
    // tagged (the tag the kernel stripped is back in place).
    for (vid, text) in [
        (None, "peer to packet"),
        (Some(20), "tagged peer to packet"),
    ] {
        let sent = frame(GUEST_MAC, PEER_MAC, vid, text);
        let got = recv_matching(&mut pk, |f| carries(text)(&f[VNET_HDR_LEN..]), &mut || {
            assert!(peer.send(&sent).unwrap())
        });
        assert_eq!(&got[VNET_HDR_LEN..], &sent[..], "{text}");
        assert_eq!(&got[..2], &[0, HDR_GSO_NONE]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }
    // Its own sends never come back.
    let mut buf = vec![0u8; 2048];
    while let Some(n) = pk.recv(&mut buf).unwrap() {
        assert!(!carries("packet to peer")(&buf[..n]));
    }

    peer_ip(&rig, p, "npv0");
    udp_from_peer(&rig, p, &mut pk, "udp with csum offload", true);
    udp_from_peer(&rig, p, &mut pk, "udp without csum offload", false);
    // A UDP GSO datagram from the peer (UDP_SEGMENT) reaches a guest without
    // offloads as wire-sized datagrams with whole checksums, segmented here.
    pk.set_offloads(Offloads::default()).unwrap();
    let mut payload = Vec::new();
    for i in 0..3 {
        let mut chunk = format!("segment {i} of a gso datagram").into_bytes();
        chunk.resize(1000, b'0' + i as u8);
        payload.extend_from_slice(&chunk);
    }
    let datagram = payload.clone();
    rig.within(p, move || {
        let s = UdpSocket::bind("10.77.0.1:0").unwrap();
        let size: libc::c_int = 1000;
        // SAFETY: `size` is an int alive for the call (SOL_UDP, UDP_SEGMENT).
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        s.send_to(&datagram, "10.77.0.2:7777").unwrap();
    });
    let mut joined = Vec::new();
    for text in [
        "segment 0 of a gso datagram",
        "segment 1 of a gso datagram",
        "segment 2 of a gso datagram",
    ] {
        let f = recv_matching(&mut pk, |f| carries(text)(&f[VNET_HDR_LEN..]), &mut || {});
        assert_eq!(&f[..2], &[0, HDR_GSO_NONE], "{:?}", &f[..12]);
        let eth = &f[VNET_HDR_LEN..];
        assert_eq!(eth.len(), 14 + 20 + 8 + 1000);
        assert!(udp_checksum_ok(eth), "{text}");
        joined.extend_from_slice(&eth[42..]);
    }
    assert_eq!(joined, payload);
    assert!(pk.stats().rx_segmented >= 1, "{:?}", pk.stats());

    let s = pk.stats();
    assert!(s.rx_csum_completed >= 1, "{s:?}");
    assert!(s.frames_in >= 4 && s.frames_out >= 1, "{s:?}");
    assert_eq!((s.tx_errors, s.rx_errors), (0, 0), "{s:?}");

    // A frame shorter than the headers is refused and counted; a good one still goes.
    let e = pk.send(&[0u8; VNET_HDR_LEN + 13]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(pk.stats().tx_errors, 1);
    pk.send(&with_header(&out)).unwrap();
    cut_frame(&mut pk, &peer);
    assert!(pk.stats().rx_truncated >= 1);

    // Carrier follows the wire: the peer's end down takes the link down.
    link_becomes(&pk, true);
    ip(&["-n", rig.ns(p), "link", "set", "npv0", "down"]);
    link_becomes(&pk, false);
    ip(&["-n", rig.ns(p), "link", "set", "npv0", "up"]);
    link_becomes(&pk, true);
}
