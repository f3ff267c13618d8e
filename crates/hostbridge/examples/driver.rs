//! The user-space driver API in one page: a host program that finds a device on the
//! fabric, enumerates it, gives it DMA buffers and drives it until its interrupt, the
//! way a VFIO program drives a local device. The device (a memdev in an I/O box) runs
//! on a thread of this same process, joined by in-memory ports, so the example runs
//! anywhere:
//!
//!     cargo run --release -p hostbridge --example driver
//!
//! On two machines the only difference is the port: `AfXdpPort::open("eth0", ...)` on
//! each side instead of `mem::pair`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::ports::mem;
use dataplane::{Mempool, Port};
use endpoint::memdev;
use fabric::FabricPort;
use fabric::{Node, NodeConfig};
use hostbridge::{FabricLink, MemDevDriver};
use iobox::{IoBox, Slot};
use rootcomplex::{BarWindows, BridgeConfig, Host, Interrupt, MemoryMap};
use tlp::Bdf;
use wire::{BridgeRole, MacAddr};

const GROUP: u16 = 10;

fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Node {
    Node::new(NodeConfig::new(MacAddr(port.info().mac), role, id, 1)).expect("node settings")
}

/// The device side: a box with a memdev in slot 0, in group 10.
fn run_box(port: Box<dyn Port>, stop: Arc<AtomicBool>) {
    let slot = Slot::memdev(0, GROUP, 1 << 20).expect("memdev config space");
    let n = node(&*port, BridgeRole::IoBox, 2);
    let mut iobox = IoBox::new(FabricPort::new(n, port), vec![slot]);
    while !stop.load(Ordering::Relaxed) {
        iobox.poll(Duration::from_millis(1)).expect("box port");
    }
}

fn main() {
    let pool = Mempool::new(8192, 2048).expect("pool");
    let (box_port, host_port) = mem::pair(&pool, 1024, 1500);
    let stop = Arc::new(AtomicBool::new(false));
    let device_side = {
        let stop = stop.clone();
        std::thread::spawn(move || run_box(Box::new(box_port), stop))
    };

    // 1. Join the group and wait for a device to be announced in it (hot-plug).
    let mut n = node(&host_port, BridgeRole::Host, 1);
    n.join(GROUP).expect("group");
    let mut link = FabricLink::new(FabricPort::new(n, Box::new(host_port)));
    let (box_mac, dev) = link
        .wait_for_device(GROUP, Duration::from_secs(5))
        .expect("a device in the group");
    link.set_target(GROUP, box_mac);

    // 2. Host memory the device may reach (nothing else is ever touched), then
    //    enumeration: BARs sized and assigned, MSI-X set up, bus mastering on.
    let ram = 0x1_0000_0000u64;
    let mut map = MemoryMap::new();
    map.add(ram, Box::new(vec![0u8; 4 << 20]))
        .expect("memory map");
    let mut host = Host::new(
        BridgeConfig::default(),
        map,
        (ram, 4 << 20),
        BarWindows::default(),
        link,
    );
    let bdf = Bdf::new(1, dev.slot, 0).expect("slot");
    let info = host.enumerate(bdf).expect("enumeration");
    println!(
        "{bdf}: {:04x}:{:04x}, BAR0 at {:#x}, {:?}",
        info.vendor,
        info.device,
        info.bar(0).expect("BAR0").address,
        info.irq
    );

    // 3. Config and BAR access.
    let id = host.config_read(bdf, 0).expect("config read");
    let magic = host
        .bar_read32(bdf, 0, memdev::regs::MAGIC)
        .expect("BAR read");
    println!("config dword 0 = {id:#010x}, BAR0 MAGIC = {magic:#010x}");

    // 4. DMA buffers, the device's registers, and its interrupt: by hand ...
    let src = host.alloc_dma(64 << 10).expect("DMA buffer");
    let dst = host.alloc_dma(64 << 10).expect("DMA buffer");
    let data: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    host.write_memory(src.addr, &data).expect("host memory");
    let t = Instant::now();
    for (reg, v) in [
        (memdev::regs::SRC, src.addr as u32),
        (memdev::regs::SRC + 4, (src.addr >> 32) as u32),
        (memdev::regs::DST, dst.addr as u32),
        (memdev::regs::DST + 4, (dst.addr >> 32) as u32),
        (memdev::regs::LEN, data.len() as u32),
        (memdev::regs::IRQ, 1),
        (memdev::regs::DOORBELL, memdev::op::COPY),
    ] {
        host.bar_write32(bdf, 0, reg, v).expect("BAR write");
    }
    match host.wait_interrupt(Duration::from_secs(5)) {
        Some(Interrupt::Vector { device, vector }) => {
            println!(
                "MSI-X vector {vector} from {device} after {:?}",
                t.elapsed()
            )
        }
        other => panic!("expected the device's interrupt, got {other:?}"),
    }
    let mut back = vec![0u8; data.len()];
    host.read_memory(dst.addr, &mut back).expect("host memory");
    assert_eq!(back, data, "the copy differs");

    // ... or through a driver that wraps the same calls.
    let drv = MemDevDriver::probe(&mut host, bdf).expect("a memdev");
    drv.copy_checked(
        &mut host,
        src.addr + 1,
        dst.addr + 3,
        &data[..1000],
        Duration::from_secs(5),
    )
    .expect("verified copy");
    println!(
        "two copies verified; the bridge served {} DMA reads and {} DMA writes",
        host.bridge().stats().dma_reads,
        host.bridge().stats().dma_writes
    );

    stop.store(true, Ordering::Relaxed);
    device_side.join().expect("box thread");
}
