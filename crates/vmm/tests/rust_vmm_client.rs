//! tether's vfio-user server driven by a client it was not written against: the
//! rust-vmm `vfio_user` crate's `Client`, the one cloud-hypervisor links. The test
//! replays cloud-hypervisor's set-up of a `--user-device` (its `pci/src/vfio.rs` and
//! `pci/src/vfio_user.rs`) in its order:
//!
//! 1. `Client::new`: version negotiation, DEVICE_GET_INFO, and every region's info;
//! 2. a reset when the client finds the device resettable;
//! 3. the capability list read through the config region (index 7), the interrupt
//!    infos of the capabilities found, and INTx's;
//! 4. INTx wired to an eventfd (SET_IRQS, eventfd, trigger);
//! 5. guest RAM mapped for DMA (a memfd made as cloud-hypervisor makes it, which
//!    cannot be sealed, by descriptor);
//! 6. every BAR and the ROM sized by writing all-ones to its register in config space
//!    and reading it back (a 64-bit BAR's upper register too);
//! 7. BAR accesses by region read and write;
//! 8. MSI-X wired to one eventfd per vector, and a vector signalled.
//!
//! The device is the crate's test double (feature `fake`); what reaches it and what
//! the client reads back are checked at each step.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vfio_user::Client;
use vmm::fake_function::FakeFunction;
use vmm::vfio_user::wire::vfio;
use vmm::vfio_user::VfioUserServer;

const BAR0: u64 = 0xe000_0000;
const BAR2: u64 = 0x8_0000_0000;
const BAR2_SIZE: usize = 1 << 16;
/// Where the guest's RAM is mapped for DMA, and how much of it.
const RAM: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 1 << 20;

/// The server and its device, served on a thread until dropped.
struct Served {
    shared: Arc<Mutex<(VfioUserServer, FakeFunction)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(path: &Path, dev: FakeFunction) -> Served {
        let server = VfioUserServer::bind(path).expect("bind the socket");
        let shared = Arc::new(Mutex::new((server, dev)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    {
                        let mut g = shared.lock().unwrap();
                        let (s, d) = &mut *g;
                        s.serve(d, 64).expect("serve");
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        Served {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut VfioUserServer, &mut FakeFunction) -> T) -> T {
        let mut g = self.shared.lock().unwrap();
        let (s, d) = &mut *g;
        f(s, d)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) with valid flags; the result is checked before it is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The count an eventfd collected (0 if none), waiting up to a second for it.
fn signals(fd: &OwnedFd) -> u64 {
    let mut f = File::from(fd.try_clone().unwrap());
    let end = Instant::now() + Duration::from_secs(1);
    loop {
        let mut b = [0u8; 8];
        if f.read_exact(&mut b).is_ok() {
            return u64::from_ne_bytes(b);
        }
        if Instant::now() >= end {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn memfd(size: u64) -> File {
    // As cloud-hypervisor makes its guest RAM (`create_anonymous_file` in its memory
    // manager): MFD_CLOEXEC, no MFD_ALLOW_SEALING.
    let name = c"ch_ram";
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

fn config_read(c: &mut Client, offset: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(vfio::PCI_CONFIG_REGION, offset, &mut b[..len])
        .unwrap_or_else(|e| panic!("config read at {offset:#x}: {e:?}"));
    u32::from_le_bytes(b)
}

fn config_write(c: &mut Client, offset: u64, value: u32) {
    c.region_write(vfio::PCI_CONFIG_REGION, offset, &value.to_le_bytes())
        .unwrap_or_else(|e| panic!("config write at {offset:#x}: {e:?}"));
}

/// The size a BAR register pair reports after all-ones writes, as cloud-hypervisor
/// computes it (0: no BAR there), and whether it is a 64-bit memory BAR.
fn size_bar(c: &mut Client, register: u64) -> (u64, bool) {
    let flags = config_read(c, register, 4);
    config_write(c, register, 0xffff_ffff);
    let lower = config_read(c, register, 4);
    let io = flags & 1 == 1;
    let is_64 = !io && (flags >> 1) & 3 == 2;
    let mask = if io { !3u32 } else { !0xfu32 };
    if !is_64 {
        let m = lower & mask;
        return (if m == 0 { 0 } else { u64::from(!m) + 1 }, false);
    }
    config_write(c, register + 4, 0xffff_ffff);
    let upper = config_read(c, register + 4, 4);
    let m = (u64::from(upper) << 32) | u64::from(lower & mask);
    (if m == 0 { 0 } else { (!m).wrapping_add(1) }, true)
}

#[test]
fn cloud_hypervisors_set_up_sequence_through_the_rust_vmm_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfu.sock");
    let mut dev = FakeFunction::with_msi_and_msix(BAR0, 0x8a).with_bar2_64(BAR2, BAR2_SIZE);
    dev.bar[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    let served = Served::start(&path, dev);

    // 1. Version, device info and region infos, all inside `new`.
    let mut c = Client::new(&path).expect("the client connects and negotiates");
    let bar0 = c.region(0).expect("region 0 (BAR0)").size;
    let config = c
        .region(vfio::PCI_CONFIG_REGION)
        .expect("the config region");
    assert_eq!(bar0, 4096);
    assert_eq!(c.region(2).expect("region 2 (BAR2)").size, BAR2_SIZE as u64);
    assert!(config.size >= 256, "config region of {} bytes", config.size);

    // 2. cloud-hypervisor resets the device when the client says it may.
    let resets_before = served.with(|_, d| d.resets);
    if c.resettable() {
        c.reset().expect("reset");
        assert_eq!(served.with(|_, d| d.resets), resets_before + 1);
    }

    // 3. The capability list through config space, then the interrupt infos.
    assert_ne!(config_read(&mut c, 0x06, 2) & 0x10, 0, "a capability list");
    let mut caps = Vec::new();
    let mut at = config_read(&mut c, 0x34, 1) as u64;
    while at != 0 && caps.len() < 48 {
        caps.push((config_read(&mut c, at, 1) as u8, at));
        at = config_read(&mut c, at + 1, 1) as u64 & 0xfc;
    }
    assert_eq!(caps, [(0x05, 0x40), (0x11, 0x50)], "MSI, then MSI-X");
    let msi = c.get_irq_info(vfio::PCI_MSI_IRQ).expect("MSI info");
    let msix = c.get_irq_info(vfio::PCI_MSIX_IRQ).expect("MSI-X info");
    let intx = c.get_irq_info(vfio::PCI_INTX_IRQ).expect("INTx info");
    // One MSI vector is all the server offers (docs/vmm.md), whatever the device's
    // Multiple Message Capable says (32 here).
    assert_eq!((msi.index, msi.count), (vfio::PCI_MSI_IRQ, 1));
    assert_eq!((msix.index, msix.count), (vfio::PCI_MSIX_IRQ, 4));
    assert_eq!((intx.index, intx.count), (vfio::PCI_INTX_IRQ, 1));
    for i in [&msi, &msix, &intx] {
        assert_ne!(i.flags & vfio::IRQ_INFO_EVENTFD, 0, "{i:?}");
    }

    // 4. INTx to an eventfd.
    let intx_fd = eventfd();
    let trigger = vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER;
    c.set_irqs(vfio::PCI_INTX_IRQ, trigger, 0, 1, &[intx_fd.as_raw_fd()])
        .expect("INTx eventfd");
    served.with(|s, _| s.set_intx(true));
    assert_eq!(signals(&intx_fd), 1, "INTx reached its eventfd");
    served.with(|s, _| s.set_intx(false));

    // 5. Guest RAM for DMA, by descriptor: the device reads what the guest wrote.
    let mut ram = memfd(RAM_SIZE);
    ram.write_all(b"written by the guest").unwrap();
    c.dma_map(0, RAM, RAM_SIZE, ram.as_raw_fd())
        .expect("DMA map");
    let seen = served.with(|_, d| {
        let (base, mem) = d.ram.last().expect("a mapping reached the device");
        let mut b = [0u8; 20];
        mem.read(0, &mut b);
        (*base, b)
    });
    assert_eq!(seen, (RAM, *b"written by the guest"));
    // cloud-hypervisor makes its guest RAM without MFD_ALLOW_SEALING: the file may
    // shrink, so the server serves it by pread/pwrite instead of mapping it.
    let st = served.with(|s, _| s.stats());
    assert_eq!((st.dma_maps_by_file, st.dma_maps_unsealable), (1, 0));
    served.with(|_, d| d.ram.last_mut().unwrap().1.write(0x100, b"from the device"));
    let mut back = [0u8; 15];
    ram.read_exact_at(&mut back, 0x100).unwrap();
    assert_eq!(&back, b"from the device");

    // 6. BAR sizing through config space, as cloud-hypervisor does it.
    let mut sizes = Vec::new();
    let mut bar = 0u64;
    while bar < 6 {
        let (size, is_64) = size_bar(&mut c, 0x10 + 4 * bar);
        sizes.push((bar, size));
        bar += if is_64 { 2 } else { 1 };
    }
    assert_eq!(
        sizes,
        [(0, 4096), (1, 0), (2, BAR2_SIZE as u64), (4, 0), (5, 0)],
        "BAR0 32-bit 4 KiB, BAR2 64-bit"
    );
    config_write(&mut c, 0x30, 0xffff_f800);
    assert_eq!(config_read(&mut c, 0x30, 4), 0, "no expansion ROM");
    let reached = served.with(|_, d| {
        d.config_writes
            .iter()
            .filter(|w| (0x10..0x28).contains(&w.0) || w.0 == 0x30)
            .count()
    });
    assert_eq!(reached, 0, "BAR and ROM writes stay in the server's shadow");

    // 7. BAR accesses by region read and write.
    let mut b = [0u8; 4];
    c.region_read(0, 0, &mut b).expect("BAR0 read");
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    c.region_write(2, 0x100, b"bar2").expect("BAR2 write");
    let bar2 = served.with(|_, d| d.bar2[0x100..0x104].to_vec());
    assert_eq!(bar2, b"bar2");

    // 8. MSI-X: one eventfd per vector (cloud-hypervisor disables INTx first), then
    //    the device signals vector 2.
    let none = vfio::IRQ_SET_DATA_NONE | vfio::IRQ_SET_ACTION_TRIGGER;
    c.set_irqs(vfio::PCI_INTX_IRQ, none, 0, 0, &[])
        .expect("INTx off");
    let fds: Vec<OwnedFd> = (0..4).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    c.set_irqs(vfio::PCI_MSIX_IRQ, trigger, 0, 4, &raw)
        .expect("MSI-X eventfds");
    served.with(|s, _| s.vector(2));
    let got: Vec<u64> = fds.iter().map(signals).collect();
    assert_eq!(got, [0, 0, 1, 0], "vector 2 alone");
    let stats = served.with(|s, _| s.stats());
    assert_eq!(stats.msix_signals, 1);

    c.dma_unmap(RAM, RAM_SIZE).expect("DMA unmap");
    c.shutdown().expect("shutdown");
}
