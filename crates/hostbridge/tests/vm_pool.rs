//! The host bridge under a VMM for a pool of devices, in one process: two boxes each
//! offer a memdev; the pool serves each on a vfio-user socket of its own, and two
//! clients (as QEMU's `vfio-user-pci` would, one per hot-added device) share one
//! guest RAM and run verified DMA copies with INTx through both at once (MSI-X is
//! hidden). Then one box goes silent: its device is to be hot-removed, and until the
//! VMM says it is gone its client is answered by the ghost (config space as it was,
//! BAR reads 0) while the other device keeps working.

mod common;

use common::BoxThread;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::ports::mem::{self, HubPort};
use dataplane::Mempool;
use endpoint::memdev::{self, op, regs, status};
use hostbridge::vm_pool::{VmChange, VmPool, VmPoolConfig};
use vmm::vfio_user::client::{eventfd_wait, guest_memfd, Client};
use vmm::vfio_user::wire::vfio;

/// Guest RAM: 4 MiB at guest-physical 256 MiB.
const RAM: u64 = 0x1000_0000;
const RAM_SIZE: u64 = 4 << 20;

fn pool(port: HubPort, dir: PathBuf) -> VmPool {
    let hb = common::host_bridge(port);
    VmPool::new(
        hb,
        VmPoolConfig {
            dir,
            hide_msix: true,
        },
        Box::new(|_| {}),
    )
}

fn w32(c: &mut Client, reg: u64, v: u32) {
    c.region_write(0, reg, &v.to_le_bytes()).unwrap();
}

fn r32(c: &mut Client, reg: u64) -> u32 {
    u32::from_le_bytes(c.region_read(0, reg, 4).unwrap().try_into().unwrap())
}

/// What QEMU does with a hot-added device, then `copies` verified DMA copies with an
/// INTx each, through guest RAM `ram` (shared by every client, as one VM's are);
/// `lane` keeps the clients' buffers apart. Returns the client, still connected.
fn drive(socket: PathBuf, ram: Arc<OwnedFd>, lane: u64, copies: u32) -> Client {
    let mut c = Client::connect(&socket).unwrap();
    c.negotiate().unwrap();
    c.dma_map(RAM, RAM_SIZE, ram.as_fd(), 0).unwrap();
    assert_eq!(
        u32::from_le_bytes(c.config_read(0, 4).unwrap().try_into().unwrap()),
        u32::from(memdev::VENDOR_ID) | u32::from(memdev::DEVICE_ID) << 16
    );
    // MSI-X is hidden: no vectors.
    assert_eq!(c.irq_info(vfio::PCI_MSIX_IRQ).unwrap().count, 0);
    let intx = vmm::sys::eventfd().unwrap();
    c.set_irq_eventfds(vfio::PCI_INTX_IRQ, 0, &[intx.as_fd()])
        .unwrap();
    // Memory decoding and bus mastering on, as the guest's driver does.
    c.config_write(4, &[0x06, 0x00]).unwrap();
    assert_eq!(r32(&mut c, regs::MAGIC), memdev::MAGIC);
    let len = 8192 - 3;
    let file = std::fs::File::from(ram.try_clone().unwrap());
    for i in 0..copies {
        let src = RAM + lane * 0x10_0000;
        let dst = src + 0x8_0000;
        let pattern: Vec<u8> = (0..len)
            .map(|j| (j as u8) ^ (lane as u8).wrapping_mul(101) ^ i as u8)
            .collect();
        file.write_all_at(&pattern, src - RAM).unwrap();
        for (r, v) in memdev::start_writes(op::COPY, src, dst, len as u32, true) {
            w32(&mut c, r, v);
        }
        // The interrupt, as a driver takes it: one that finds the copy still busy is
        // a late one of the last copy (its line dropped after the unmask), and the
        // wait goes on.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            eventfd_wait(intx.as_fd(), left).expect("no INTx");
            let st = r32(&mut c, regs::STATUS);
            if st == status::DONE {
                break;
            }
            assert_eq!(st, status::BUSY, "lane {lane} copy {i}");
            c.mask_irq(vfio::PCI_INTX_IRQ, 0, false).unwrap();
        }
        // Acknowledged (the line drops), then unmasked, as QEMU does at the EOI.
        w32(&mut c, regs::STATUS, 0);
        c.mask_irq(vfio::PCI_INTX_IRQ, 0, false).unwrap();
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, dst - RAM).unwrap();
        assert!(got == pattern, "lane {lane} copy {i} differs");
    }
    c
}

#[test]
fn a_vmm_gets_each_device_on_its_own_socket_and_a_ghost_when_it_leaves() {
    let pool_mem = Mempool::new(16384, 2048).unwrap();
    let mut ports = mem::hub(&pool_mem, 3, 1024, 1500).into_iter();
    let b1 = BoxThread::start(ports.next().unwrap(), 7, 1007, &[0]);
    let b2 = BoxThread::start(ports.next().unwrap(), 8, 1008, &[0]);
    let dir = tempfile::tempdir().unwrap();
    let mut vp = pool(ports.next().unwrap(), dir.path().to_path_buf());
    let ram = Arc::new(guest_memfd(RAM_SIZE).unwrap());

    let mut out = Vec::new();
    let mut plugged = Vec::new();
    let mut clients: Vec<JoinHandle<Client>> = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    // Both devices are plugged, and both clients run their copies at once.
    while clients.len() < 2 || !clients.iter().all(|c| c.is_finished()) {
        assert!(Instant::now() < end, "stuck: {out:?}");
        vp.round(&mut out);
        for c in out.drain(..) {
            if let VmChange::Line(l) | VmChange::Warning(l) = &c {
                eprintln!("{l}");
            }
            if let VmChange::Plug { id, port, socket } = c {
                assert!(socket.starts_with(dir.path()));
                // What QEMU's device_add success tells the pool.
                vp.plugged(&id);
                let (ram, lane) = (ram.clone(), clients.len() as u64);
                clients.push(std::thread::spawn(move || drive(socket, ram, lane, 5)));
                plugged.push((id, port));
            }
        }
    }
    let mut clients: Vec<Client> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(plugged.len(), 2);
    assert_ne!(plugged[0].1, plugged[1].1);
    let s = vp.stats();
    assert_eq!((s.plugged, s.vmm_errors), (2, 0), "{s:?}");

    // Box 2 goes silent: its device is to be hot-removed.
    b2.set_paused(true);
    let end = Instant::now() + Duration::from_secs(20);
    let (gone_id, gone_port) = loop {
        assert!(Instant::now() < end, "no unplug: {out:?}");
        vp.round(&mut out);
        if let Some((id, surprise)) = out.iter().find_map(|c| match c {
            VmChange::Unplug { id, surprise } => Some((id.clone(), *surprise)),
            _ => None,
        }) {
            assert!(surprise, "a lost box is a surprise");
            let port = plugged.iter().find(|(i, _)| *i == id).unwrap().1;
            break (id, port);
        }
        out.clear();
    };
    let gone = plugged.iter().position(|(i, _)| *i == gone_id).unwrap();
    let stays = 1 - gone;
    // Its client is answered by the ghost, at once and without the box: config space
    // as it was, BAR reads zero, writes dropped; served from another thread, since
    // the pool answers in its rounds.
    let mut ghost_client = clients.swap_remove(gone);
    let mut other = clients.pop().unwrap();
    let t = std::thread::spawn(move || {
        let vendor = ghost_client.config_read(0, 2).unwrap();
        let status_reg = r32(&mut ghost_client, regs::STATUS);
        w32(&mut ghost_client, regs::DOORBELL, op::COPY);
        let magic = r32(&mut ghost_client, regs::MAGIC);
        (vendor, status_reg, magic, ghost_client)
    });
    let end = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        assert!(Instant::now() < end, "the ghost did not answer");
        vp.round(&mut out);
    }
    let (vendor, status_reg, magic, ghost_client) = t.join().unwrap();
    assert_eq!(vendor, memdev::VENDOR_ID.to_le_bytes());
    assert_eq!((status_reg, magic), (0, 0));
    assert!(vp.stats().ghost_accesses >= 3, "{:?}", vp.stats());
    // The other device keeps working meanwhile.
    let t = std::thread::spawn(move || {
        let mut c = other;
        assert_eq!(r32(&mut c, regs::MAGIC), memdev::MAGIC);
        c
    });
    while !t.is_finished() {
        vp.round(&mut out);
    }
    other = t.join().unwrap();
    // The VMM has deleted it: its socket goes and its port is freed.
    drop(ghost_client);
    vp.unplugged(&gone_id);
    let end = Instant::now() + Duration::from_secs(5);
    while vp.bridge().router().switch().is_live(gone_port) {
        assert!(Instant::now() < end, "the port was not freed");
        vp.round(&mut out);
    }
    assert_eq!(vp.served().count(), 1);
    assert_eq!(vp.served().next().unwrap().port, plugged[stays].1);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "the gone device's socket stays: {left:?}");
    assert!(!left[0].starts_with(&format!("p{}g", gone_port.index())));
    assert_eq!(vp.stats().unplugged, 1);
    // The guest lets go of the other device on its own (it ejected it) while it is
    // still in the group: it is hot-added again, on a fresh socket.
    drop(other);
    let (stay_id, stay_port) = plugged[stays].clone();
    vp.unplugged(&stay_id);
    vp.round(&mut out);
    let again = out.iter().find_map(|c| match c {
        VmChange::Plug { id, port, socket } => Some((id.clone(), *port, socket.clone())),
        _ => None,
    });
    let (again_id, again_port, again_socket) = again.expect("hot-added again");
    assert_eq!(
        (again_id.as_str(), again_port),
        (stay_id.as_str(), stay_port)
    );
    assert!(again_socket.exists());
    assert_eq!(vp.stats().replugs, 1);
    // Box 2 is back: its device is offered again, and this time the VMM cannot add it
    // (its device_add fails): given up, its socket gone and its port freed.
    b2.set_paused(false);
    let end = Instant::now() + Duration::from_secs(20);
    let (back_id, back_port, back_socket) = loop {
        assert!(
            Instant::now() < end,
            "box 2's device did not come back: {out:?}"
        );
        out.clear();
        vp.round(&mut out);
        if let Some(p) = out.iter().find_map(|c| match c {
            VmChange::Plug { id, port, socket } if *id != stay_id => {
                Some((id.clone(), *port, socket.clone()))
            }
            _ => None,
        }) {
            break p;
        }
    };
    vp.plug_failed(&back_id);
    let end = Instant::now() + Duration::from_secs(5);
    while vp.bridge().router().switch().is_live(back_port) {
        assert!(
            Instant::now() < end,
            "the port of a device the VMM refused stays"
        );
        vp.round(&mut out);
    }
    assert!(!back_socket.exists());
    assert_eq!(vp.stats().plug_failures, 1);
    drop(b1);
    drop(b2);
}

/// A fake QEMU monitor on `path` that serves one connection: its greeting, then for
/// each command what `answer` gives (the command's id, if any, as JSON). Returns the
/// commands it got.
fn fake_qmp(
    path: &std::path::Path,
    answer: impl Fn(&str, &str) -> String + Send + 'static,
) -> JoinHandle<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let mut w = sock.try_clone().unwrap();
        w.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 11, \"minor\": 1, \"micro\": 3}, \"package\": \"\"}, \"capabilities\": []}}\n",
        )
        .unwrap();
        let mut seen = Vec::new();
        for line in BufReader::new(sock).lines() {
            let Ok(line) = line else { break };
            let cmd: serde_json::Value = serde_json::from_str(&line).unwrap();
            let name = cmd["execute"].as_str().unwrap_or("").to_string();
            let id = cmd.get("id").map_or("null".to_string(), |i| i.to_string());
            if w.write_all(answer(&name, &id).as_bytes()).is_err() {
                break;
            }
            seen.push(name);
        }
        seen
    })
}

/// QEMU's monitor as the pool's VMM: an unplug is a `device_del`; its answer is the
/// reply with the command's id, not an event before it whose data has a "return"
/// key; a device QEMU does not have is nothing the pool holds; a successful
/// `device_add` attaches nothing the pool does not know.
#[test]
fn qemu_slots_send_device_del_and_take_its_reply_not_an_event() {
    let pool_mem = Mempool::new(1024, 2048).unwrap();
    let mut ports = mem::hub(&pool_mem, 1, 64, 1500).into_iter();
    let dir = tempfile::tempdir().unwrap();
    let mut vp = pool(ports.next().unwrap(), dir.path().to_path_buf());
    let path = dir.path().join("qmp");
    let qemu = fake_qmp(&path, |name, id| {
        match name {
        "device_del" => format!(
            "{{\"event\": \"X\", \"data\": {{\"return\": 1}}}}\n\
             {{\"error\": {{\"class\": \"DeviceNotFound\", \"desc\": \"Device 'tether-p0g1' not found\"}}, \"id\": {id}}}\n"
        ),
        _ => format!("{{\"return\": {{}}, \"id\": {id}}}\n"),
    }
    });
    let qmp = vmm::qmp::Qmp::connect(&path, Duration::from_secs(5)).unwrap();
    let mut slots = hostbridge::vm_pool::QemuSlots::new(qmp);
    let mut changes = vec![VmChange::Unplug {
        id: "tether-p0g1".into(),
        surprise: false,
    }];
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("DeviceNotFound")) {
        assert!(Instant::now() < end, "no reply: {lines:?}");
        slots.round(&mut vp, &mut changes).unwrap();
        for c in changes.drain(..) {
            match c {
                VmChange::Line(l) | VmChange::Warning(l) => lines.push(l),
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(lines[0].contains("hot-removing tether-p0g1"), "{lines:?}");
    assert_eq!(vp.stats().unknown_unplugs, 1);
    drop(slots);
    assert_eq!(qemu.join().unwrap(), ["qmp_capabilities", "device_del"]);
}
