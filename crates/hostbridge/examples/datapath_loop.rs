//! The whole data path in one thread, for instruction counting: a host and a box with
//! a memdev over in-memory ports, stepped in turn (every call the host makes on its
//! link also polls the box once), so that nothing spins waiting for another thread
//! and callgrind counts the work of both ends and little else:
//!
//!     valgrind --tool=callgrind target/release/examples/datapath_loop 200
//!
//! runs 200 memdev READs and 200 WRITEs of 64 KiB after the set-up and prints the
//! TLPs the host sent and received over them. Instructions per TLP: the total of a
//! run minus the total of a run with 0 transfers (the set-up), over the TLPs.

use std::time::{Duration, Instant};

use dataplane::ports::mem;
use dataplane::{Mempool, Port};
use endpoint::memdev;
use fabric::{FabricPort, Node, NodeConfig};
use hostbridge::{FabricLink, MemDevDriver};
use iobox::{IoBox, Slot};
use rootcomplex::{BarWindows, BridgeConfig, Host, Link, LinkFull, MemoryMap};
use tlp::Bdf;
use wire::{BridgeRole, MacAddr};

const GROUP: u16 = 10;
const SIZE: u32 = 64 << 10;

fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Node {
    Node::new(NodeConfig::new(MacAddr(port.info().mac), role, id, 1)).expect("node settings")
}

/// The host's link, with the box behind it stepped at every call.
struct Stepped {
    link: FabricLink,
    iobox: IoBox,
}

impl Stepped {
    fn step_box(&mut self) {
        self.iobox.poll(Duration::ZERO).expect("box port");
    }
}

impl Link for Stepped {
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull> {
        self.link.send(tlp)
    }

    fn flush(&mut self) {
        self.link.flush();
        self.step_box();
    }

    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(t) = self.link.recv(Duration::ZERO) {
                return Some(t);
            }
            if Instant::now() >= end {
                return None;
            }
            self.step_box();
        }
    }

    fn recycle(&mut self, tlp: Vec<u8>) {
        self.link.recycle(tlp);
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let pool = Mempool::new(8192, 2048).expect("pool");
    let (box_port, host_port) = mem::pair(&pool, 1024, 1500);
    let slot = Slot::memdev(0, GROUP, 1 << 20).expect("memdev config space");
    let bn = node(&box_port, BridgeRole::IoBox, 2);
    let mut box_fp = FabricPort::new(bn, Box::new(box_port));
    box_fp.set_spin(Duration::ZERO);
    let iobox = IoBox::new(box_fp, vec![slot]);

    let mut hn = node(&host_port, BridgeRole::Host, 1);
    hn.join(GROUP).expect("group");
    let mut host_fp = FabricPort::new(hn, Box::new(host_port));
    host_fp.set_spin(Duration::ZERO);
    let mut s = Stepped {
        link: FabricLink::new(host_fp),
        iobox,
    };
    let start = Instant::now();
    let (box_mac, dev) = loop {
        s.step_box();
        s.link.poll(Duration::ZERO);
        if let Some(found) = s.link.wait_for_device(GROUP, Duration::ZERO) {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no device announced"
        );
    };
    s.link.set_target(GROUP, box_mac);

    let ram = 0x1_0000_0000u64;
    let mut map = MemoryMap::new();
    map.add(ram, Box::new(vec![0u8; 4 << 20]))
        .expect("memory map");
    let mut host = Host::new(
        BridgeConfig::default(),
        map,
        (ram, 4 << 20),
        BarWindows::default(),
        s,
    );
    let bdf = Bdf::new(1, dev.slot, 0).expect("slot");
    host.enumerate(bdf).expect("enumeration");
    let drv = MemDevDriver::probe(&mut host, bdf).expect("memdev");
    let tlps = |h: &Host<Stepped>| {
        let st = h
            .link()
            .link
            .fabric()
            .node()
            .session_stats(GROUP, box_mac)
            .unwrap_or_default();
        st.tlps_out + st.tlps_in
    };
    let before = tlps(&host);
    for _ in 0..n {
        for op in [memdev::op::READ, memdev::op::WRITE] {
            drv.run(
                &mut host,
                op,
                ram,
                ram + (2 << 20),
                SIZE,
                Duration::from_secs(30),
            )
            .expect("transfer");
        }
    }
    println!(
        "{n} READs and {n} WRITEs of {SIZE} bytes: {} TLPs sent and received by the host",
        tlps(&host) - before
    );
}
