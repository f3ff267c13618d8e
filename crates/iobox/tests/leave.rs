//! A box that stops tells its devices first that they are leaving their hosts.

mod common;

use std::time::Duration;

use common::{config, hub};
use dataplane::Port;
use endpoint::virtio::net::MemBackend;
use endpoint::Device;
use fabric::{FabricPort, Node};
use iobox::{IoBox, Slot};
use wire::{BridgeRole, MacAddr};

/// The model counter `name` of the device in slot index `i`.
fn counter(bx: &IoBox, i: usize, name: &str) -> Option<u64> {
    bx.slots()[i]
        .function
        .device()
        .counters()
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `IoBox::leave`: a virtio-net device takes its link down (once, counted; its driver
/// gets a configuration interrupt when it has one), and the box goes on serving
/// meanwhile; leaving again changes nothing.
#[test]
fn a_leaving_box_takes_its_nics_links_down() {
    let port = hub(2).into_iter().next().unwrap();
    let mac = MacAddr(port.info().mac);
    let node = Node::new(config(mac, BridgeRole::IoBox, 0x5000_0001)).unwrap();
    let nic = [0x02, 0, 0, 0, 0, 0x01];
    let slots = vec![
        Slot::virtio_net(0, 10, MemBackend::new(), nic, false, Default::default()).unwrap(),
        Slot::memdev(1, 10, 4096).unwrap(),
    ];
    let mut bx = IoBox::new(FabricPort::new(node, Box::new(port)), slots);
    bx.poll(Duration::ZERO).unwrap();
    assert_eq!(counter(&bx, 0, "net_link_changes"), Some(0));
    bx.leave(Duration::from_millis(5)).unwrap();
    assert_eq!(counter(&bx, 0, "net_link_changes"), Some(1));
    bx.leave(Duration::from_millis(1)).unwrap();
    assert_eq!(counter(&bx, 0, "net_link_changes"), Some(1));
}
