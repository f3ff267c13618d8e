//! The whole system between two network namespaces joined by a veth pair that the
//! test creates and removes: real Ethernet frames through the kernel, on the
//! poll-mode ports (root only; a loud SKIPPED line otherwise).

mod common;

use dataplane::netns::Rig;
use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
use dataplane::{Mempool, Port};

fn over_veth(test: &str, tag: &str, open: fn(&str, &std::sync::Arc<Mempool>) -> Box<dyn Port>) {
    let Some(mut rig) = Rig::for_test(test, tag) else {
        return;
    };
    let (h, b) = (rig.host("host").unwrap(), rig.host("box").unwrap());
    rig.veth(h, "th0", b, "tb0", 1500).unwrap();
    let pool = Mempool::new(16384, 2048).unwrap();
    let (p1, p2) = (pool.clone(), pool.clone());
    let box_port = rig.within(b, move || open("tb0", &p1));
    let host_port = rig.within(h, move || open("th0", &p2));
    let took = common::memdev_copy(box_port, host_port);
    eprintln!("{test}: 1 MiB copy through the box over veth: {took:?}");
}

#[test]
fn memdev_over_veth_af_packet_frame_ring() {
    over_veth("memdev_over_veth_af_packet_frame_ring", "rtp", |i, p| {
        Box::new(AfPacketPort::open(i, p, RingConfig::low_latency()).unwrap())
    });
}

#[test]
fn memdev_over_veth_af_packet_block_ring() {
    over_veth("memdev_over_veth_af_packet_block_ring", "rtb", |i, p| {
        Box::new(AfPacketPort::open(i, p, RingConfig::default()).unwrap())
    });
}

#[test]
fn memdev_over_veth_af_xdp() {
    over_veth("memdev_over_veth_af_xdp", "rtx", |i, p| {
        Box::new(AfXdpPort::open(i, p, XdpConfig::default()).unwrap())
    });
}
