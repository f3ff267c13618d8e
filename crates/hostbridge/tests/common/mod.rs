//! The system scenario shared by the in-process and the netns tests: a host (root
//! complex + fabric) and an I/O box (memdev on the endpoint framework + fabric) on two
//! threads, on whatever ports they are given. Everything between them is real tether
//! frames: INFO discovery, efe sessions, TLPs. And [`BoxThread`], a box of memdevs in
//! a thread of its own that can be cut off and come back, for the device-pool tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::Port;
use endpoint::memdev::{self, op, regs};
use fabric::FabricPort;
use fabric::{Node, NodeConfig};
use hostbridge::{FabricLink, MemDevDriver};
use iobox::{IoBox, Slot};
use rootcomplex::{BarWindows, BridgeConfig, Host, MemoryMap};
use tlp::Bdf;
use wire::{BridgeRole, MacAddr};

const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 16 << 20;
const GID: u16 = 10;

fn memdev_slot(slot: u8, gid: u16) -> Slot {
    Slot::memdev(slot, gid, 1 << 20).unwrap()
}

fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Node {
    let mut cfg = NodeConfig::new(MacAddr(port.info().mac), role, id, 1000);
    cfg.info_interval_us = 20_000;
    // Two busy-polling threads share the machine with the test harness: only 0.5 s
    // of silence means a dead peer.
    cfg.missed_infos = 25;
    Node::new(cfg).unwrap()
}

/// The box (memdev in slot 0, group 10) on `box_port` in a thread of its own, the
/// host on `host_port` here: discovery, enumeration, a 1 MiB unaligned DMA copy through
/// the device ending in an MSI-X interrupt, checked byte for byte. Returns the copy's
/// duration.
pub fn memdev_copy(box_port: Box<dyn Port>, host_port: Box<dyn Port>) -> Duration {
    let (a, b) = (box_port, host_port);
    let stop = Arc::new(AtomicBool::new(false));
    let box_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let n = node(&*a, BridgeRole::IoBox, 7);
            let mut iobox = IoBox::new(FabricPort::new(n, a), vec![memdev_slot(0, GID)]);
            while !stop.load(Ordering::Relaxed) {
                iobox.poll(Duration::from_micros(200)).unwrap();
            }
            iobox.stats()
        })
    };

    let mut hn = node(&*b, BridgeRole::Host, 1);
    hn.join(GID).unwrap();
    let mut link = FabricLink::new(FabricPort::new(hn, b));
    // Discovery: the box's INFO lists the memdev in our group.
    let (peer, dev) = link
        .wait_for_device(GID, Duration::from_secs(5))
        .expect("no device announced");
    let slot = dev.slot;
    link.set_target(GID, peer);
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE])).unwrap();
    let mut host = Host::new(
        BridgeConfig::default(),
        mem,
        (RAM, RAM_SIZE as u64),
        BarWindows::default(),
        link,
    );
    let bdf = Bdf::new(1, slot, 0).unwrap();
    let info = host.enumerate(bdf).unwrap();
    assert_eq!(
        (info.vendor, info.device),
        (memdev::VENDOR_ID, memdev::DEVICE_ID)
    );
    assert_eq!(host.bar_read32(bdf, 0, regs::MAGIC).unwrap(), memdev::MAGIC);

    // A 1 MiB copy through the device, unaligned at both ends.
    let len = (1 << 20) - 5;
    let src = host.alloc_dma(1 << 20).unwrap();
    let dst = host.alloc_dma(1 << 20).unwrap();
    let pattern: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    host.write_memory(src.addr + 1, &pattern).unwrap();
    let drv = MemDevDriver::probe(&mut host, bdf).unwrap();
    let t = Instant::now();
    drv.run(
        &mut host,
        op::COPY,
        src.addr + 1,
        dst.addr + 3,
        len as u32,
        Duration::from_secs(30),
    )
    .unwrap();
    let took = t.elapsed();
    let mut got = vec![0u8; len];
    host.read_memory(dst.addr + 3, &mut got).unwrap();
    assert!(got == pattern, "the copy differs");
    eprintln!(
        "host session: {:?}",
        host.link().fabric().node().session_stats(GID, peer)
    );
    let s = host.bridge().stats();
    assert_eq!(
        (s.dma_read_bytes, s.dma_write_bytes),
        (len as u64, len as u64)
    );
    assert_eq!(host.stats().mmio_read_timeouts, 0);
    let copy_stats = host.bridge().stats();

    // Bad requests, each answered as PCIe answers it, and the bridges keep serving.
    // An address no BAR decodes: the box answers UR at once; the read returns all-ones
    // and counts an error (not a 1 s completion timeout).
    let t = Instant::now();
    assert_eq!(host.mem_read(0xdead_0000, 4), vec![0xff; 4]);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "no UR answer: {:?}",
        t.elapsed()
    );
    assert_eq!(host.stats().mmio_read_errors, 1);
    // A config read of an empty slot: UR, so the host sees no device there.
    assert!(host.config_read(Bdf::new(1, 9, 0).unwrap(), 0).is_err());
    // DMA outside the host's memory map: the read is refused with UR (the device
    // reports a DMA error), the write dropped; both counted, no memory touched.
    let outside = RAM + RAM_SIZE as u64 + 0x1000;
    match drv.run(
        &mut host,
        op::READ,
        outside,
        0,
        4096,
        Duration::from_secs(10),
    ) {
        Err(hostbridge::DriverError::Device(..)) => {}
        other => panic!("a DMA read outside the map gave {other:?}"),
    }
    drv.run(
        &mut host,
        op::WRITE,
        0,
        outside,
        4096,
        Duration::from_secs(10),
    )
    .unwrap();
    let s = host.bridge().stats();
    assert!(s.dma_read_refused > copy_stats.dma_read_refused, "{s:?}");
    assert!(s.dma_write_dropped > copy_stats.dma_write_dropped, "{s:?}");
    // Still serving: a verified copy.
    drv.copy_checked(
        &mut host,
        src.addr,
        dst.addr,
        &pattern[..4096],
        Duration::from_secs(10),
    )
    .unwrap();

    stop.store(true, Ordering::Relaxed);
    let box_stats = box_thread.join().unwrap();
    assert_eq!((box_stats.unrouted, box_stats.answered_ur), (2, 2));
    took
}

/// A box in a thread of its own with memdevs (64 KiB buffers) in `slots`, all in group
/// 10, on `port`, until dropped. While paused it is silent and deaf (a box cut off),
/// and its peers declare it down; unpaused, it comes back with the same epoch.
pub struct BoxThread {
    pub mac: MacAddr,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BoxThread {
    /// The box with bridge id `id` and boot epoch `epoch`; INFO every 20 ms, down
    /// after 15 missed (threads share two cores with the harness).
    pub fn start<P: Port + 'static>(port: P, id: u64, epoch: u32, slots: &[u8]) -> BoxThread {
        let slots: Vec<Slot> = slots
            .iter()
            .map(|&s| Slot::memdev(s, GID, 1 << 16).unwrap())
            .collect();
        BoxThread::with_slots(port, id, epoch, slots)
    }

    /// The same with the devices `slots`.
    pub fn with_slots<P: Port + 'static>(
        port: P,
        id: u64,
        epoch: u32,
        slots: Vec<Slot>,
    ) -> BoxThread {
        let mac = MacAddr(port.info().mac);
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, pause) = (stop.clone(), pause.clone());
            std::thread::spawn(move || {
                let mut cfg =
                    NodeConfig::new(MacAddr(port.info().mac), BridgeRole::IoBox, id, epoch);
                cfg.info_interval_us = 20_000;
                cfg.missed_infos = 15;
                let n = Node::new(cfg).unwrap();
                let mut b = IoBox::new(FabricPort::new(n, Box::new(port)), slots);
                while !stop.load(Ordering::Relaxed) {
                    if pause.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    b.poll(Duration::from_micros(200)).unwrap();
                }
            })
        };
        BoxThread {
            mac,
            stop,
            pause,
            thread: Some(thread),
        }
    }

    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::Relaxed);
    }
}

impl Drop for BoxThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A host bridge in group 10 on `port` (bridge id 1, INFO every 20 ms, down after 15
/// missed), with a switch of 4 ports and a leave timeout of 10 s: what the VMM
/// front-end tests put under their pools.
pub fn host_bridge<P: Port + 'static>(port: P) -> hostbridge::host_bridge::HostBridge {
    use hostbridge::host_bridge::{HostBridge, HostBridgeConfig};
    let mut cfg = NodeConfig::new(MacAddr(port.info().mac), BridgeRole::Host, 1, 1001);
    cfg.info_interval_us = 20_000;
    cfg.missed_infos = 15;
    let mut n = Node::new(cfg).unwrap();
    n.join(GID).unwrap();
    let router =
        hostbridge::route::Router::new(GID, hostbridge::switch::VirtualSwitch::new(4).unwrap());
    let link = FabricLink::switched(FabricPort::new(n, Box::new(port)), router);
    let host = Host::new(
        BridgeConfig::default(),
        MemoryMap::new(),
        (0, 0),
        BarWindows::default(),
        link,
    );
    HostBridge::new(
        HostBridgeConfig {
            gid: GID,
            leave_timeout: 10_000_000,
        },
        host,
    )
    .unwrap()
}
