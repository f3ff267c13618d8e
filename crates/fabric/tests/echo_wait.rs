//! The bridge loop tells its sessions how long frames waited for it to look at its
//! port, and its acknowledgements carry that to the peer (the header's echo wait):
//! an absence shows in full, and what is reported is never more than the absence.

#[path = "common/hand.rs"]
mod hand;

use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, MemPort};
use dataplane::Mempool;
use fabric::FabricPort;
use fabric::{Node, NodeConfig};
use wire::{BridgeRole, Frame, FrameKind, MacAddr, ECHO_WAIT_UNIT_US};

const GID: u16 = 10;
const HOST_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const BOX_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

fn node(mac: MacAddr, role: BridgeRole, epoch: u32) -> Node {
    let mut cfg = NodeConfig::new(mac, role, mac.0[5] as u64, epoch);
    // Often enough to meet quickly, rarely enough that a 3 ms absence misses none.
    cfg.info_interval_us = 20_000;
    let mut n = Node::new(cfg).unwrap();
    n.join(GID).unwrap();
    n
}

/// A bridge driven by hand, so that the test sees every frame the other one sends.
struct Manual {
    node: Node,
    port: MemPort,
    start: Instant,
}

impl Manual {
    /// Runs the node's timers, sends what it has, takes what arrived; returns the
    /// frames that arrived.
    fn round(&mut self) -> Vec<Vec<u8>> {
        let now = self.start.elapsed().as_micros() as u64;
        let mut got = Vec::new();
        hand::round(&mut self.node, &mut self.port, now, |node, bytes| {
            node.handle_frame(now, bytes, None);
            got.push(bytes.to_vec());
        });
        got
    }
}

/// The acknowledgement numbers and echo waits of the session frames among `frames`.
fn acks(frames: &[Vec<u8>]) -> Vec<(u32, u8)> {
    frames
        .iter()
        .filter_map(|f| Frame::parse(f, None).ok())
        .filter(|f| matches!(f.header.kind, FrameKind::Ack | FrameKind::Data))
        .filter(|f| f.header.tsecr != 0)
        .map(|f| (f.header.ack, f.header.echo_wait))
        .collect()
}

/// A memory write TLP (any TLP will do: the box has no device to route it to).
fn tlp() -> Vec<u8> {
    tlp::Tlp::new(
        tlp::Header::MemWrite(tlp::MemWrite {
            requester: tlp::Bdf::from_u16(0x0100),
            tag: tlp::Tag::default(),
            address: 0x1000,
            first_be: 0xf,
            last_be: 0xf,
            hint: None,
        }),
        &[1, 2, 3, 4, 5, 6, 7, 8],
    )
    .to_vec()
    .unwrap()
}

/// Sends one TLP from the host to the box, leaves the box alone for `away`, and
/// returns the echo wait of the box's acknowledgement of it and the longest the box
/// can have been away from its port (from the start of its poll before the TLP was
/// sent to the end of the poll after which the acknowledgement was seen).
fn one_exchange(host: &mut Manual, bx: &mut FabricPort, away: Duration) -> (u8, Duration) {
    let acked_before = acks(&host.round()).iter().map(|a| a.0).max().unwrap_or(0);
    let before_last_look = Instant::now();
    bx.poll(Duration::ZERO).unwrap();
    host.node.send_tlp(GID, BOX_MAC, &tlp()).unwrap();
    host.round();
    std::thread::sleep(away);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        bx.poll(Duration::ZERO).unwrap();
        let after = Instant::now();
        let got = host.round();
        if let Some(&(_, wait)) = acks(&got).iter().find(|a| a.0 > acked_before) {
            return (wait, after - before_last_look);
        }
    }
    panic!(
        "the box never acknowledged the TLP: {:?}",
        bx.node().session_stats(GID, HOST_MAC)
    );
}

#[test]
fn an_absence_is_echoed_and_never_overstated() {
    let pool = Mempool::new(4096, 2048).unwrap();
    let (a, b) = mem::pair(&pool, 256, 1500);
    let mut host = Manual {
        node: node(HOST_MAC, BridgeRole::Host, 1000),
        port: a,
        start: Instant::now(),
    };
    let mut bx = FabricPort::new(node(BOX_MAC, BridgeRole::IoBox, 2000), Box::new(b));
    // INFO both ways, then a first exchange so that the session is up.
    let deadline = Instant::now() + Duration::from_secs(2);
    while host.node.peers().count() == 0 || bx.node().peers().count() == 0 {
        assert!(Instant::now() < deadline, "the bridges never met");
        host.round();
        bx.poll(Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    one_exchange(&mut host, &mut bx, Duration::ZERO);

    // Away for 3 ms: more than the field holds (255 units of 8 µs).
    let (wait, _) = one_exchange(&mut host, &mut bx, Duration::from_millis(3));
    assert_eq!(wait, 255, "a 3 ms absence must be echoed in full");

    // Not away: whatever is echoed is at most the time the box can have been away.
    for _ in 0..20 {
        let (wait, bound) = one_exchange(&mut host, &mut bx, Duration::ZERO);
        let reported = Duration::from_micros((wait as u32 * ECHO_WAIT_UNIT_US) as u64);
        // Rounded up to whole units.
        let unit = Duration::from_micros(ECHO_WAIT_UNIT_US as u64);
        assert!(
            reported <= bound + unit,
            "echoed {reported:?}, but the box was away at most {bound:?}"
        );
    }
}
