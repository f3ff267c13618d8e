//! The host bridge under one front-end the VMM reached before any device (what
//! `tether host --vfio-user | --proxy-fd` and `tether vm --frontend proxy` run): the
//! group's first device is served on it through the host bridge's hot-plug state
//! machine, the others are enumerated and left alone; the device's MSI is turned on
//! and off at the VMM's request; while it is gone the VMM reads all-ones at once; when
//! its box returns it is set up again behind the same front-end.

mod common;

use common::BoxThread;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, HubPort};
use dataplane::Mempool;
use endpoint::config::{Bar as CfgBar, ConfigSpace};
use endpoint::memdev::{self, op, regs, status};
use endpoint::{Function, FunctionConfig};
use hostbridge::vm_pool::{VmChange, VmPool};
use iobox::Slot;
use vmm::frontend::{Frontend, FrontendStats};
use vmm::proxy::wire::{cmd as proxy_cmd, Header, Request, HEADER_LEN};
use vmm::proxy::ProxyServer;
use vmm::vfio_user::client::{eventfd_wait, guest_memfd, Client};
use vmm::vfio_user::wire::vfio;
use vmm::vfio_user::VfioUserServer;

const GID: u16 = 10;
/// Guest RAM: 4 MiB at guest-physical 256 MiB.
const RAM: u64 = 0x1000_0000;
const RAM_SIZE: u64 = 4 << 20;

/// The host bridge on `port` under the one front-end `fe`, its device there.
fn pool_one(port: HubPort, fe: Box<dyn Frontend>) -> VmPool {
    let hb = common::host_bridge(port);
    let mut vp = VmPool::one(hb, fe, "tether0", Box::new(|_| {}));
    let mut out = Vec::new();
    vp.wait_for_device(Duration::from_secs(20), &|| false, &mut out)
        .unwrap();
    vp
}

/// Rounds of the pool until `done()`, failing after `secs`; returns what they said.
fn rounds_until(
    vp: &mut VmPool,
    secs: u64,
    mut done: impl FnMut(&VmPool, &[VmChange]) -> bool,
) -> Vec<VmChange> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while !done(vp, &out) {
        assert!(Instant::now() < end, "not within {secs} s: {out:?}");
        vp.round(&mut out);
    }
    out
}

/// Serves a client thread until it ends.
fn serve_until<T>(vp: &mut VmPool, t: JoinHandle<T>) -> T {
    rounds_until(vp, 20, |_, _| t.is_finished());
    t.join().unwrap()
}

fn w32(c: &mut Client, reg: u64, v: u32) {
    c.region_write(0, reg, &v.to_le_bytes()).unwrap();
}

fn r32(c: &mut Client, reg: u64) -> u32 {
    u32::from_le_bytes(c.region_read(0, reg, 4).unwrap().try_into().unwrap())
}

/// A verified DMA copy of guest RAM through the memdev, its completion signalled on
/// `irq` (INTx, unmasked after as QEMU does, when `intx`).
fn copy(c: &mut Client, ram: &std::fs::File, irq: &OwnedFd, intx: bool, round: u8) {
    let len = 4096 + 5;
    let (src, dst) = (RAM + 0x1000, RAM + 0x10_0000);
    let pattern: Vec<u8> = (0..len).map(|j| (j as u8) ^ round).collect();
    ram.write_all_at(&pattern, src - RAM).unwrap();
    for (r, v) in memdev::start_writes(op::COPY, src, dst, len as u32, true) {
        w32(c, r, v);
    }
    // One that finds the copy still busy is a late INTx of the last copy.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        eventfd_wait(irq.as_fd(), left).expect("no interrupt");
        let st = r32(c, regs::STATUS);
        if st == status::DONE {
            break;
        }
        assert!(intx && st == status::BUSY, "copy {round}: status {st}");
        c.mask_irq(vfio::PCI_INTX_IRQ, 0, false).unwrap();
    }
    w32(c, regs::STATUS, 0);
    if intx {
        c.mask_irq(vfio::PCI_INTX_IRQ, 0, false).unwrap();
    }
    let mut got = vec![0u8; len];
    ram.read_exact_at(&mut got, dst - RAM).unwrap();
    assert!(got == pattern, "copy {round} differs");
}

/// The offset of capability `id` in the device's list, as a guest walks it.
fn find_cap(c: &mut Client, id: u8) -> Option<u64> {
    let mut at = u64::from(c.config_dword(0x34).unwrap() & 0xfc);
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        let d = c.config_dword(at).unwrap();
        if d as u8 == id {
            return Some(at);
        }
        at = u64::from((d >> 8) & 0xfc);
    }
    None
}

#[test]
fn one_vfio_user_frontend_serves_its_device_msi_on_demand_and_again_after_its_box_returns() {
    let pool_mem = Mempool::new(16384, 2048).unwrap();
    let mut ports = mem::hub(&pool_mem, 2, 1024, 1500).into_iter();
    let b = BoxThread::start(ports.next().unwrap(), 7, 1007, &[0, 1]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("one.sock");
    let fe = Box::new(VfioUserServer::bind(&socket).unwrap());
    let mut vp = pool_one(ports.next().unwrap(), fe);
    // The box's other device is enumerated and left alone.
    rounds_until(&mut vp, 10, |vp, _| vp.stats().unserved == 1);
    assert_eq!(vp.bridge().router().switch().live_ports().count(), 2);
    let present = |vp: &VmPool| vp.one_frontend().unwrap().2;
    assert!(present(&vp));

    let ram = Arc::new(guest_memfd(RAM_SIZE).unwrap());
    let r = ram.clone();
    let t = std::thread::spawn(move || {
        let mut c = Client::connect(&socket).unwrap();
        c.negotiate().unwrap();
        c.dma_map(RAM, RAM_SIZE, r.as_fd(), 0).unwrap();
        let file = std::fs::File::from(r.try_clone().unwrap());
        let intx = vmm::sys::eventfd().unwrap();
        c.set_irq_eventfds(vfio::PCI_INTX_IRQ, 0, &[intx.as_fd()])
            .unwrap();
        c.config_write(4, &[0x06, 0x00]).unwrap();
        let msi = find_cap(&mut c, 0x05).expect("memdev has MSI");
        assert_eq!(
            c.config_dword(msi).unwrap() >> 16 & 1,
            0,
            "MSI off at first"
        );
        copy(&mut c, &file, &intx, true, 1);
        // The VMM asks for MSI: the bridge points the device's MSI at itself, and its
        // message comes back as vector 0 on the VMM's eventfd; INTx stays quiet.
        let vector = vmm::sys::eventfd().unwrap();
        c.set_irq_eventfds(vfio::PCI_MSI_IRQ, 0, &[vector.as_fd()])
            .unwrap();
        copy(&mut c, &file, &vector, false, 2);
        // Off again: INTx.
        c.disable_irqs(vfio::PCI_MSI_IRQ).unwrap();
        copy(&mut c, &file, &intx, true, 3);
        (c, file, intx)
    });
    let (mut c, file, intx) = serve_until(&mut vp, t);
    let stats = |vp: &VmPool| match vp.one_frontend().unwrap().1 {
        FrontendStats::VfioUser(s) => s,
        FrontendStats::Proxy(_) => unreachable!(),
    };
    // (An INTx may be signalled again at an unmask that comes before the line's drop
    // arrives: late ones are possible, missing ones are not.)
    assert_eq!(stats(&vp).msi_signals, 1);
    assert!(stats(&vp).intx_signals >= 2, "{:?}", stats(&vp));

    // The box goes silent: the device leaves, the VMM is asked to let it go, and its
    // reads are all-ones at once, with no box to ask.
    b.set_paused(true);
    let out = rounds_until(&mut vp, 20, |_, o| {
        o.iter().any(|c| matches!(c, VmChange::Unplug { .. }))
    });
    assert!(out
        .iter()
        .any(|c| matches!(c, VmChange::Unplug { id, surprise: true } if id == "tether0")));
    assert!(!present(&vp));
    let t = std::thread::spawn(move || {
        let v = c.config_dword(0).unwrap();
        let m = r32(&mut c, regs::MAGIC);
        (c, v, m)
    });
    let (mut c, vendor, magic) = serve_until(&mut vp, t);
    assert_eq!((vendor, magic), (u32::MAX, u32::MAX));
    // Back: set up again behind the same front-end, and used as before.
    b.set_paused(false);
    rounds_until(&mut vp, 20, |vp, _| present(vp));
    assert_eq!((vp.stats().departures, vp.stats().returns), (1, 1));
    let t = std::thread::spawn(move || {
        c.config_write(4, &[0x06, 0x00]).unwrap();
        copy(&mut c, &file, &intx, true, 4);
        c
    });
    let c = serve_until(&mut vp, t);
    drop(c);
    assert_eq!(vp.stats().vmm_errors, 0);
}

/// A device with MSI and no MSI-X: enumeration turns its MSI on, and the set-up for
/// the VMM turns it off again, so that it interrupts by INTx until the VMM asks for
/// MSI.
#[test]
fn an_msi_only_device_is_left_on_intx() {
    let config = ConfigSpace::builder(memdev::VENDOR_ID, memdev::DEVICE_ID)
        .class(0x05, 0x80, 0x00)
        .interrupt_pin(1)
        .bar(0, CfgBar::mem32(4096))
        .bar(2, CfgBar::mem64(1 << 16).prefetchable())
        .pcie(256)
        .msi(1, true)
        .build()
        .unwrap();
    let model: Box<dyn endpoint::Device + Send> = Box::new(memdev::MemDev::new(1 << 16));
    let function = Function::new(config, model, FunctionConfig::default());
    let pool_mem = Mempool::new(16384, 2048).unwrap();
    let mut ports = mem::hub(&pool_mem, 2, 1024, 1500).into_iter();
    let _b = BoxThread::with_slots(
        ports.next().unwrap(),
        7,
        1007,
        vec![Slot::announced(2, GID, function)],
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("one.sock");
    let fe = Box::new(VfioUserServer::bind(&socket).unwrap());
    let mut vp = pool_one(ports.next().unwrap(), fe);
    let ram = Arc::new(guest_memfd(RAM_SIZE).unwrap());
    let t = std::thread::spawn(move || {
        let mut c = Client::connect(&socket).unwrap();
        c.negotiate().unwrap();
        c.dma_map(RAM, RAM_SIZE, ram.as_fd(), 0).unwrap();
        assert_eq!(find_cap(&mut c, 0x11), None, "no MSI-X");
        let msi = find_cap(&mut c, 0x05).expect("MSI");
        assert_eq!(c.config_dword(msi).unwrap() >> 16 & 1, 0, "MSI off");
        let file = std::fs::File::from(ram.try_clone().unwrap());
        let intx = vmm::sys::eventfd().unwrap();
        c.set_irq_eventfds(vfio::PCI_INTX_IRQ, 0, &[intx.as_fd()])
            .unwrap();
        c.config_write(4, &[0x06, 0x00]).unwrap();
        copy(&mut c, &file, &intx, true, 1);
        c
    });
    drop(serve_until(&mut vp, t));
}

/// QEMU's end of a proxy connection: sends `r`, lets the pool serve it, returns the
/// RET value (0 for an empty RET).
fn ask(q: &mut UnixStream, vp: &mut VmPool, r: Request) -> u64 {
    q.write_all(&r.emit()).unwrap();
    let fd = q.as_raw_fd();
    rounds_until(vp, 10, |_, _| {
        vmm::sys::wait_readable(&[fd], Duration::ZERO).unwrap()[0]
    });
    let mut h = [0u8; HEADER_LEN];
    q.read_exact(&mut h).unwrap();
    let h = Header::parse(&h).unwrap();
    assert_eq!(h.cmd, proxy_cmd::RET);
    let mut v = [0u8; 8];
    q.read_exact(&mut v[..h.size as usize]).unwrap();
    u64::from_le_bytes(v)
}

fn config_write(q: &mut UnixStream, vp: &mut VmPool, addr: u32, value: u32) {
    let w = Request::ConfigWrite {
        addr,
        value,
        len: 4,
    };
    assert_eq!(ask(q, vp, w), 0);
}

/// Requests the root complex has made (each a TLP to the box).
fn requests(vp: &VmPool) -> u64 {
    vp.bridge().host().bridge().stats().requests
}

/// The proxy path with a real memdev behind the bridge: the guest sizes and places
/// its BARs in the proxy's shadow, a BAR access at a guest address inside a BAR
/// reaches the device at the bridge's address, one outside every BAR reads all-ones
/// and sends nothing; while the box is gone every access reads all-ones at once and
/// QEMU is to unplug the device; back, the guest's BARs reach it again; QEMU closing
/// the connection ends the front-end.
#[test]
fn a_proxy_guest_reaches_its_device_only_inside_its_bars_and_across_its_box_leaving() {
    let pool_mem = Mempool::new(16384, 2048).unwrap();
    let mut ports = mem::hub(&pool_mem, 2, 1024, 1500).into_iter();
    let b = BoxThread::start(ports.next().unwrap(), 7, 1007, &[2]);
    let (mut q, ours) = UnixStream::pair().unwrap();
    let mut vp = pool_one(
        ports.next().unwrap(),
        Box::new(ProxyServer::new(ours.into())),
    );
    let cfg = |addr| Request::ConfigRead { addr, len: 4 };
    let mut sized = Vec::new();
    for reg in [0x10, 0x14, 0x18, 0x1c, 0x30] {
        config_write(&mut q, &mut vp, reg, u32::MAX);
        sized.push(ask(&mut q, &mut vp, cfg(reg)));
    }
    assert_eq!(sized, [0xffff_f000, 0, 0xffff_000c, 0xffff_ffff, 0]);
    // The guest places BAR0 at 0xc000_0000 and BAR2 at 0x1_0000_0000.
    for (reg, v) in [(0x10, 0xc000_0000), (0x18, 0), (0x1c, 1)] {
        config_write(&mut q, &mut vp, reg, v);
    }
    let rd = |addr, size| Request::BarRead {
        addr,
        size,
        memory: true,
    };
    let wr = |addr, value| Request::BarWrite {
        addr,
        value,
        size: 8,
        memory: true,
    };
    let magic = u64::from(memdev::MAGIC);
    assert_eq!(ask(&mut q, &mut vp, rd(0xc000_0000, 4)), magic);
    ask(&mut q, &mut vp, wr(0x1_0000_0100, 0x0123_4567_89ab_cdef));
    assert_eq!(
        ask(&mut q, &mut vp, rd(0x1_0000_0100, 8)),
        0x0123_4567_89ab_cdef
    );
    // Outside: past BAR0's end, straddling it, an end that wraps, below BAR2.
    let before = requests(&vp);
    for addr in [0xc000_1000, 0xc000_0ffc, u64::MAX - 3, 0xffff_fff8] {
        assert_eq!(ask(&mut q, &mut vp, rd(addr, 8)), u64::MAX, "{addr:#x}");
        ask(&mut q, &mut vp, wr(addr, 0));
    }
    assert_eq!(requests(&vp), before, "nothing went to the box");
    let FrontendStats::Proxy(p) = vp.one_frontend().unwrap().1 else {
        unreachable!()
    };
    assert_eq!(p.outside_bar, 8);
    // A reset: the guest finds its BARs unassigned and places them again.
    assert_eq!(ask(&mut q, &mut vp, Request::DeviceReset), 0);
    assert_eq!(ask(&mut q, &mut vp, cfg(0x10)), 0);
    config_write(&mut q, &mut vp, 0x10, 0xc000_0000);
    assert_eq!(ask(&mut q, &mut vp, rd(0xc000_0000, 4)), magic);

    // The box goes silent: QEMU is to unplug the device, and until then the guest
    // reads all-ones without a request to anyone.
    b.set_paused(true);
    let out = rounds_until(&mut vp, 20, |_, o| {
        o.iter().any(|c| matches!(c, VmChange::Unplug { .. }))
    });
    assert!(out
        .iter()
        .any(|c| matches!(c, VmChange::Line(l) if l.starts_with("device removed"))));
    let before = requests(&vp);
    assert_eq!(
        ask(&mut q, &mut vp, rd(0xc000_0000, 4)),
        u64::from(u32::MAX)
    );
    assert_eq!(ask(&mut q, &mut vp, cfg(0)), u64::from(u32::MAX));
    assert_eq!(requests(&vp), before);
    // Back: the guest's BARs reach it again.
    b.set_paused(false);
    rounds_until(&mut vp, 20, |vp, _| vp.one_frontend().unwrap().2);
    assert_eq!(ask(&mut q, &mut vp, rd(0xc000_0000, 4)), magic);
    // QEMU goes: the front-end is closed for good.
    drop(q);
    rounds_until(&mut vp, 10, |_, o| {
        o.iter().any(|c| matches!(c, VmChange::Closed))
    });
}
