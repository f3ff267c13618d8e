//! Real VMs through tether with a stock Debian Linux 6.1 guest (its own kernel and
//! virtio modules, busybox; scripts/deps/guest-linux.sh) whose disk is a virtio-blk
//! device in an I/O box in another network namespace, reached over veth through
//! `tether vm` (issue 7):
//!
//! - test b: vfio-user front-end, QEMU 11.1 (`vfio-user-pci`, from a trixie chroot:
//!   scripts/deps/qemu-vfio-user.sh), the guest under TCG;
//! - test c: QEMU's multi-process proxy (Debian's QEMU 7.2), the guest under KVM. It
//!   needs hardware virtualization: where /dev/kvm is missing, or PVM-backed (which
//!   runs firmware but not a Linux kernel), it is skipped with a loud message;
//! - test d: MSI through vfio-user (a memdev, its MSI set up by hand in the guest),
//!   two guests in turn on one bridge;
//! - test e: packed virtqueues (the box offers them, the 6.1 driver takes them).
//!
//! Tests b and c check:
//! - the stock virtio-pci/virtio_blk drivers bind and take interrupts (MSI-X through
//!   vfio-user; INTx through the proxy, which hides MSI-X);
//! - the guest writes a random pattern with dd (O_DIRECT), reads it back, and the
//!   checksums match; the box's backing file holds the same bytes;
//! - the guest's MMIO round trip and block throughput are printed (measurements);
//! - the box is killed: the bridge reports the device gone, `tether vm` has QEMU
//!   unplug it, the guest's next I/O fails, and the bridge neither hangs nor panics
//!   (it keeps answering, and stops cleanly with its counters).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use dataplane::netns::Rig;

/// The guest writes 8 MiB of random data to the disk with O_DIRECT and reads it back
/// (checked by `check_pattern`).
const PATTERN: &str = r#"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
echo "=== pattern $(sha256sum /tmp/pattern | cut -d' ' -f1)"
dd if=/tmp/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null
echo "=== write rc=$?"
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=1M count=8 iflag=direct 2>/dev/null
echo "=== readback $(sha256sum /tmp/back | cut -d' ' -f1)"
"#;

/// Waits (up to 2 minutes) for the disk: through vfio-user, `tether vm` hot-adds it
/// once the guest's machine runs, on a PCI Express root port.
const WAIT_FOR_DISK: &str = r#"
i=0
while [ ! -e /sys/block/vda ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
echo "=== disk after ${i} s"
"#;

/// What the guest of tests b and c runs (busybox sh, between the init's "=== guest
/// up" and "=== guest done") is WAIT_FOR_DISK, GUEST_HEAD, PATTERN, GUEST_TAIL.
const GUEST_HEAD: &str = r#"
dev=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1042 ] && dev=$d
done
echo "=== device ${dev##*/} driver $(basename $(readlink $dev/driver))"
echo "=== vda sectors $(cat /sys/block/vda/size)"
mmio-time $dev/resource0 0x12 2000
"#;

/// After PATTERN: the measurements, then I/O after the box's death.
const GUEST_TAIL: &str = r#"
blkbench /dev/vda seq 131072 256
blkbench /dev/vda rand 4096 1000 67108864
grep virtio /proc/interrupts
echo "=== ready for kill"
sleep 20
dd if=/dev/vda of=/dev/null bs=4k count=1 iflag=direct
echo "=== after kill rc=$?"
"#;

/// The guest wrote its pattern (PATTERN's "=== " lines), read the same back, and
/// the box's file `disk` holds it.
fn check_pattern(text: &str, disk: &Path, dir: &Path) {
    assert_eq!(value(text, "=== write rc="), "0");
    let pattern = value(text, "=== pattern ").to_string();
    assert_eq!(
        value(text, "=== readback "),
        pattern,
        "the guest read back what it wrote"
    );
    assert_eq!(
        sha256_of_prefix(disk, 8 << 20, dir),
        pattern,
        "the box's file holds the guest's pattern"
    );
}

fn sha256_of_prefix(path: &Path, len: usize, dir: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    let prefix = dir.join("prefix.bin");
    std::fs::write(&prefix, &data[..len]).unwrap();
    let out = run_ok(Command::new("sha256sum").arg(&prefix));
    out.split_whitespace().next().unwrap().to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frontend {
    VfioUser,
    Proxy,
}

#[test]
fn linux_guest_uses_the_remote_disk_through_vfio_user() {
    let test = "linux_guest_uses_the_remote_disk_through_vfio_user";
    let Some((root, _vm)) = vfio_user_qemu(test) else {
        return;
    };
    linux_guest(test, Frontend::VfioUser, Some(&root));
}

/// What the guest runs for the MSI test: a memdev with no driver, MSI pointed at an
/// unused vector (0xdf) by hand, one DMA with an interrupt at the end.
const MSI_GUEST: &str = r#"
dev=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1de5 ] && dev=$d
done
echo "=== memdev ${dev##*/}"
memdev-msi $dev 0xdf 0x100000
echo "=== memdev-msi rc=$?"
sleep 1
dmesg | grep "No irq handler"
"#;

/// Test d: MSI (not -X) through vfio-user, and a VMM that goes and comes back. The
/// host bridge runs on its own (`tether host --vfio-user`), and two QEMUs, one after
/// the other, attach to it (`tether vm --connect`). In each, the guest writes the
/// memdev's MSI capability (as `pci_enable_msi` would, from a guest tool through
/// sysfs), QEMU asks the bridge for MSI (SET_IRQS), the device's message crosses the
/// network to the bridge, becomes an eventfd signal, and QEMU injects it into the
/// guest's local APIC at the vector the guest chose: the guest kernel reports its
/// arrival.
#[test]
fn linux_guests_get_msi_through_vfio_user_one_after_the_other() {
    let test = "linux_guests_get_msi_through_vfio_user_one_after_the_other";
    let Some((root, _vm)) = vfio_user_qemu(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = set_up(
        test,
        dir.path(),
        "vm",
        "model = \"memdev\"\n",
        MSI_GUEST,
        &["memdev-msi"],
    ) else {
        return;
    };
    let socket = dir.path().join("bridge.sock").display().to_string();
    let mut host = Proc::spawn(
        &s.rig,
        s.hs,
        "tether host",
        &["host", "--config", &s.host_toml, "--vfio-user", &socket],
    );
    host.wait_for("bridge side:", 1, Duration::from_secs(20));
    let root = root.display().to_string();
    for round in 1..=2 {
        let mut args = vec!["vm", "--connect", socket.as_str()];
        args.extend(s.guest_args(Frontend::VfioUser, Some(&root)));
        let mut vm = Proc::spawn(&s.rig, s.hs, "tether vm", &args);
        vm.wait_for("=== guest done", 1, Duration::from_secs(300));
        let status = vm.child.wait().unwrap();
        let text = vm.text();
        eprintln!("{text}");
        assert!(status.success(), "guest {round}: {status}\n{text}");
        assert_eq!(
            value(&text, "=== memdev-msi rc="),
            "0",
            "guest {round}: the DMA completed"
        );
        // MSI Message Control as the guest reads it back: 64-bit, per-vector
        // masking, enabled.
        assert_eq!(
            value(&text, "memdev-msi control=").split(' ').next(),
            Some("0x181")
        );
        assert!(
            text.contains(".223 No irq handler for vector"),
            "guest {round}: the MSI reached the guest's APIC at vector 0xdf:\n{text}"
        );
        host.wait_for(
            "vfio-user: client disconnected",
            round,
            Duration::from_secs(10),
        );
    }
    assert_eq!(host.count("vfio-user: client connected"), 2);
    let text = host.stop();
    let stopped = text
        .lines()
        .find(|l| l.contains("tether host: stopped"))
        .unwrap();
    assert_eq!(counter(stopped, "connections"), 2, "{stopped}");
    assert_eq!(counter(stopped, "MSI signals"), 2, "{stopped}");
    assert_eq!(counter(stopped, "INTx signals"), 0, "{stopped}");
    assert_eq!(counter(stopped, "errors;"), 0, "{stopped}");
    drop(s.boxp.stop());
}

/// What the guest of the packed-ring test runs first: the ring layout virtio
/// negotiated (feature bit 34, RING_PACKED); then PATTERN and one sequential read
/// measurement.
const PACKED_GUEST_HEAD: &str = r#"
echo "=== packed $(cut -c35 /sys/bus/virtio/devices/virtio0/features)"
"#;

/// After PATTERN in the packed-ring test.
const PACKED_GUEST_TAIL: &str = r#"
blkbench /dev/vda seq 131072 256
"#;

/// Test e: packed virtqueues. The box offers them (`packed_ring = true`), the stock
/// 6.1 virtio driver takes them, and the disk works as with split rings.
#[test]
fn linux_guest_uses_a_packed_virtqueue() {
    let test = "linux_guest_uses_a_packed_virtqueue";
    let Some((root, _vm)) = vfio_user_qemu(test) else {
        return;
    };
    let root = root.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    let device = format!(
        "model = \"virtio-blk\"\npath = \"{}\"\npacked_ring = true\n",
        disk.display()
    );
    let script = format!("{WAIT_FOR_DISK}{PACKED_GUEST_HEAD}{PATTERN}{PACKED_GUEST_TAIL}");
    let Some(s) = set_up(test, d, "vp", &device, &script, &["blkbench"]) else {
        return;
    };
    let mut args = vec!["vm", "--config", s.host_toml.as_str()];
    args.extend(s.guest_args(Frontend::VfioUser, Some(&root)));
    let mut vm = Proc::spawn(&s.rig, s.hs, "tether vm", &args);
    vm.wait_for("=== guest done", 1, Duration::from_secs(300));
    let text = vm.text();
    eprintln!("{text}");
    assert_eq!(
        value(&text, "=== packed "),
        "1",
        "the driver took RING_PACKED"
    );
    check_pattern(&text, &disk, d);
    eprintln!(
        "measured (TCG guest, vfio-user, remote disk over veth, packed ring): {}",
        value(&text, "blkbench mode=seq")
    );
    assert!(vm.child.wait().unwrap().success(), "{text}");
}

#[test]
fn linux_guest_uses_the_remote_disk_through_the_proxy_under_kvm() {
    let test = "linux_guest_uses_the_remote_disk_through_the_proxy_under_kvm";
    if !is_root() {
        return skip(test, "needs root (network namespaces)");
    }
    if !kvm_usable() {
        return skip_for_hardware(
            test,
            Hardware::Kvm,
            "no usable /dev/kvm: test c needs KVM with hardware virtualization",
        );
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return skip_for_hardware(
            test,
            Hardware::Kvm,
            "this machine's /dev/kvm is PVM-backed: it runs firmware (test a) but not a Linux \
             kernel; test c needs KVM with hardware virtualization",
        );
    }
    if dep(test, "qemu.sh").is_none() {
        return;
    }
    let _vm = vm_lock();
    linux_guest(test, Frontend::Proxy, None);
}

/// A box in a network namespace of its own, joined by veth to the host's, and a guest
/// image to boot.
struct Setup {
    rig: Rig,
    /// The host's namespace.
    hs: usize,
    boxp: Proc,
    host_toml: String,
    kernel: String,
    initrd: String,
}

impl Setup {
    /// `tether vm`'s arguments for the guest (after --config or --connect).
    fn guest_args<'a>(&'a self, frontend: Frontend, qemu_root: Option<&'a str>) -> Vec<&'a str> {
        let mut args = vec![
            "--kernel",
            &self.kernel,
            "--initrd",
            &self.initrd,
            "--append",
            "console=ttyS0 panic=-1 iomem=relaxed",
            "--memory",
            "256",
            "--timeout",
            "400",
        ];
        match frontend {
            Frontend::VfioUser => {
                args.extend(["--frontend", "vfio-user", "--accel", "tcg"]);
                if let Some(r) = qemu_root {
                    args.extend(["--qemu-root", r]);
                }
            }
            Frontend::Proxy => args.extend(["--frontend", "proxy", "--accel", "kvm"]),
        }
        args
    }
}

/// Builds the guest's initramfs (SCRIPT, and the guest TOOLS built from
/// tests/vm/NAME.c), makes the box's and the host's namespaces (interfaces
/// `{tag}box`/`{tag}host`), and starts the box with DEVICE (a `[[device]]` body; slot
/// 0, group 10). `None` when a prerequisite is missing (the test is then skipped,
/// loudly).
fn set_up(
    test: &str,
    d: &Path,
    tag: &str,
    device: &str,
    script: &str,
    tools: &[&str],
) -> Option<Setup> {
    let (kernel, initrd) = guest_image(test, d, script, tools, &[])?;
    let mut rig = Rig::for_test(test, &format!("t{tag}"))?;
    let bx = rig.host("box").unwrap();
    let hs = rig.host("host").unwrap();
    // Names of their own: the tests may run at the same time.
    let (ibox, ihost) = (format!("{tag}box"), format!("{tag}host"));
    rig.veth(bx, &ibox, hs, &ihost, 1500).unwrap();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"{ibox}\"\n[bridge]\ncontrol = \"{}\"\n[[device]]\nslot = 0\ngid = 10\n{device}",
            d.join("box.sock").display()
        ),
    );
    let host_toml = write(
        d,
        "host.toml",
        &format!(
            "gid = 10\n[port]\ninterface = \"{ihost}\"\n[bridge]\ncontrol = \"{}\"\n",
            d.join("host.sock").display()
        ),
    );
    let mut boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &path(&box_toml)]);
    boxp.wait_for("slot 0: ", 1, Duration::from_secs(10));
    Some(Setup {
        rig,
        hs,
        boxp,
        host_toml: path(&host_toml),
        kernel,
        initrd,
    })
}

fn linux_guest(test: &str, frontend: Frontend, qemu_root: Option<&Path>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    let tag = match frontend {
        Frontend::VfioUser => "vu",
        Frontend::Proxy => "vk",
    };
    let device = format!("model = \"virtio-blk\"\npath = \"{}\"\n", disk.display());
    let script = format!("{WAIT_FOR_DISK}{GUEST_HEAD}{PATTERN}{GUEST_TAIL}");
    let Some(s) = set_up(test, d, tag, &device, &script, &["mmio-time", "blkbench"]) else {
        return;
    };
    let root = qemu_root.map(|r| r.display().to_string());
    let mut args = vec!["vm", "--config", s.host_toml.as_str()];
    args.extend(s.guest_args(frontend, root.as_deref()));
    let mut vm = Proc::spawn(&s.rig, s.hs, "tether vm", &args);
    // A guest that is not there within 150 s is stuck: the counters of both
    // bridges (over their control sockets) say where, before the test fails.
    let end = std::time::Instant::now() + Duration::from_secs(150);
    while vm.count("=== ready for kill") == 0 && std::time::Instant::now() < end {
        if let Ok(Some(_)) = vm.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if vm.count("=== ready for kill") == 0 {
        for (who, sock) in [("host bridge", "host.sock"), ("box", "box.sock")] {
            let out = s
                .rig
                .command(s.hs, env!("CARGO_BIN_EXE_tether"))
                .args(["ctl", "stats", "-s"])
                .arg(d.join(sock))
                .output()
                .unwrap();
            eprintln!(
                "{who}'s counters:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        panic!("the guest is not ready within 150 s:\n{}", vm.text());
    }
    let text = vm.text();
    eprintln!("{text}");
    assert_eq!(
        value(&text, "=== device ").split(' ').nth(2),
        Some("virtio-pci")
    );
    assert_eq!(value(&text, "=== vda sectors "), "131072");
    check_pattern(&text, &disk, d);
    match frontend {
        // Hot-added on a root port; QEMU 11.1 aborts when a vfio-user device with
        // MSI-X is hot-removed, so `tether vm` hides MSI-X and the driver takes INTx.
        Frontend::VfioUser => {
            assert!(
                text.contains("MSI-X of hot-plugged devices hidden"),
                "{text}"
            );
            assert!(text.contains("tether vm: hot-adding tether-p0g"), "{text}");
            assert!(
                text.lines()
                    .any(|l| l.contains("IO-APIC") && l.contains("virtio0")),
                "the virtio driver uses its INTx line:\n{text}"
            );
        }
        // The proxy hides MSI-X and has INTx only.
        Frontend::Proxy => assert!(
            text.lines().any(|l| l.contains("virtio0")),
            "the virtio driver takes interrupts:\n{text}"
        ),
    }
    for key in ["mmio-read-ns", "blkbench mode=seq", "blkbench mode=rand"] {
        eprintln!(
            "measured (TCG guest, vfio-user, remote disk over veth): {} {}",
            key,
            value(&text, key)
        );
    }

    // The box dies: the guest must get errors, the bridge must go on.
    drop(s.boxp);
    let removed = match frontend {
        Frontend::VfioUser => "tether vm: hot-removing tether-p0g",
        Frontend::Proxy => "device removed",
    };
    vm.wait_for(removed, 1, Duration::from_secs(10));
    vm.wait_for("=== after kill rc=", 1, Duration::from_secs(120));
    let text = vm.text();
    assert_ne!(
        value(&text, "=== after kill rc="),
        "0",
        "I/O after the box died must fail:\n{text}"
    );
    match frontend {
        Frontend::VfioUser => {
            assert_eq!(vm.count("tether vm: hot-removing"), 1, "{text}");
            // The guest lets the device go (pciehp), answered by the ghost meanwhile.
            vm.wait_for("removed by the guest", 1, Duration::from_secs(60));
        }
        Frontend::Proxy => assert_eq!(vm.count("tether vm: hot-removing tether0"), 1, "{text}"),
    }
    // SIGTERM: QEMU is stopped, the bridge prints its counters and exits.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    vm.wait_for("tether host: stopped", 1, Duration::from_secs(20));
    let status = vm.child.wait().unwrap();
    let text = vm.text();
    let stopped = text
        .lines()
        .find(|l| l.contains("tether host: stopped"))
        .unwrap();
    match frontend {
        Frontend::VfioUser => {
            assert_eq!(counter(stopped, "hot-added,"), 1, "{stopped}");
            assert_eq!(counter(stopped, "hot-removed,"), 1, "{stopped}");
            assert_eq!(counter(stopped, "VMM errors;"), 0, "{stopped}");
        }
        Frontend::Proxy => assert!(counter(stopped, "INTx signals") > 0, "{stopped}"),
    }
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        status.code().is_some(),
        "tether vm ended by a signal: {status}\n{text}"
    );
}

/// What the guest of the device-pool test runs: it waits for two disks (box 1) and a
/// memdev (box 2), all hot-added; writes and reads back a pattern on each disk; then
/// waits while the test kills box 2 (the memdev must leave while the disks go on
/// working), and while it restarts box 2 (the memdev must come back, and its DMA
/// with an MSI must work).
const POOL_GUEST: &str = r#"
i=0
while { [ ! -e /sys/block/vda ] || [ ! -e /sys/block/vdb ]; } && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
memdev() {
  md=""
  for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor)" = 0x1de5 ] && md=$d; done
}
j=0; memdev
while [ -z "$md" ] && [ $j -lt 60 ]; do sleep 1; j=$((j+1)); memdev; done
echo "=== devices after ${i} s and ${j} s: $(ls /sys/bus/pci/devices | wc -l) functions, memdev ${md##*/}"
check() {
  dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null
  dd if=/tmp/p of=/dev/$1 bs=1M oflag=direct 2>/dev/null
  sync
  echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/$1 of=/tmp/b bs=1M count=4 iflag=direct 2>/dev/null
  if cmp -s /tmp/p /tmp/b; then echo "=== $2 $1 same"; else echo "=== $2 $1 differs"; fi
}
check vda first
check vdb first
memdev-msi $md 0xdf 0x100000
echo "=== memdev-msi first rc=$?"
echo "=== ready for kill"
k=0
while [ -e "$md" ] && [ $k -lt 120 ]; do sleep 1; k=$((k+1)); done
echo "=== memdev gone after ${k} s"
check vda during
check vdb during
echo "=== ready for return"
k=0; memdev
while [ -z "$md" ] && [ $k -lt 120 ]; do sleep 1; k=$((k+1)); memdev; done
echo "=== memdev back after ${k} s: ${md##*/}"
memdev-msi $md 0xdf 0x100000
echo "=== memdev-msi again rc=$?"
check vda after
sleep 1
dmesg | grep -c "No irq handler for vector"
"#;

/// One VM, devices of two boxes, in service (issue 16): box 1 serves two virtio-blk
/// disks, box 2 a memdev, all in group 10, each box in a network namespace of its own
/// on a Linux bridge with the host's. `tether vm` (vfio-user, q35) boots the guest
/// with no device and hot-adds the three as they are offered; the guest uses all
/// three. Box 2 is killed: its memdev is hot-removed while the disks keep working;
/// box 2 starts again: the memdev is hot-added again and its DMA and MSI work.
#[test]
fn linux_guest_uses_devices_of_two_boxes_hot_plugged() {
    let test = "linux_guest_uses_devices_of_two_boxes_hot_plugged";
    let Some((root, _vm)) = vfio_user_qemu(test) else {
        return;
    };
    let root = root.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some((kernel, initrd)) = guest_image(test, d, POOL_GUEST, &["memdev-msi"], &[]) else {
        return;
    };
    let Some(mut rig) = Rig::for_test(test, "tpl") else {
        return;
    };
    let sw = rig.host("sw").unwrap();
    let b1 = rig.host("box1").unwrap();
    let b2 = rig.host("box2").unwrap();
    let hs = rig.host("host").unwrap();
    for (h, inner, outer) in [
        (b1, "plb1", "swb1"),
        (b2, "plb2", "swb2"),
        (hs, "plh", "swh"),
    ] {
        rig.veth(h, inner, sw, outer, 1500).unwrap();
    }
    rig.bridge(sw, "br0", &["swb1", "swb2", "swh"]).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let disk = |n: &str| {
        let p = d.join(n);
        std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
        p
    };
    let (da, db) = (disk("a.img"), disk("b.img"));
    let socks: Vec<PathBuf> = ["host", "box1", "box2"]
        .iter()
        .map(|n| d.join(format!("{n}.sock")))
        .collect();
    let box1 = write(
        d,
        "box1.toml",
        &format!(
            "[port]\ninterface = \"plb1\"\n[bridge]\ncontrol = \"{}\"\n\
             [[device]]\nslot = 0\ngid = 10\nmodel = \"virtio-blk\"\npath = \"{}\"\n\
             [[device]]\nslot = 1\ngid = 10\nmodel = \"virtio-blk\"\npath = \"{}\"\n",
            socks[1].display(),
            da.display(),
            db.display()
        ),
    );
    let box2 = write(
        d,
        "box2.toml",
        &format!(
            "[port]\ninterface = \"plb2\"\n[bridge]\ncontrol = \"{}\"\n\
             [[device]]\nslot = 0\ngid = 10\nmodel = \"memdev\"\n",
            socks[2].display()
        ),
    );
    let host = write(
        d,
        "host.toml",
        &format!(
            "gid = 10\n[port]\ninterface = \"plh\"\n[bridge]\ncontrol = \"{}\"\n",
            socks[0].display()
        ),
    );
    let mut p1 = Proc::spawn(&rig, b1, "box 1", &["iobox", "--config", &path(&box1)]);
    let mut p2 = Proc::spawn(&rig, b2, "box 2", &["iobox", "--config", &path(&box2)]);
    p1.wait_for("slot 1: ", 1, Duration::from_secs(10));
    p2.wait_for("slot 0: ", 1, Duration::from_secs(10));
    let host = path(&host);
    let mut vm = Proc::spawn(
        &rig,
        hs,
        "tether vm",
        &[
            "vm",
            "--config",
            &host,
            "--frontend",
            "vfio-user",
            "--accel",
            "tcg",
            "--qemu-root",
            &root,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 panic=-1 iomem=relaxed",
            "--memory",
            "256",
            "--root-ports",
            "4",
            "--timeout",
            "400",
        ],
    );
    let long = Duration::from_secs(300);
    wait_or_dump(&mut vm, "=== ready for kill", 1, long, &socks);
    let text = vm.text();
    assert_eq!(vm.count("tether vm: hot-adding tether-p"), 3, "{text}");
    for line in ["=== first vda same", "=== first vdb same"] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    assert_eq!(value(&text, "=== memdev-msi first rc="), "0", "{text}");

    // Box 2 dies: only its memdev leaves the guest.
    drop(p2);
    wait_or_dump(
        &mut vm,
        "=== ready for return",
        1,
        Duration::from_secs(120),
        &socks[..2],
    );
    let text = vm.text();
    assert!(text.contains("(its box is gone)"), "{text}");
    assert!(text.contains("removed by the guest"), "{text}");
    for line in ["=== during vda same", "=== during vdb same"] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    // It comes back: hot-added again, on a free port, and it works.
    let _p2 = Proc::spawn(&rig, b2, "box 2", &["iobox", "--config", &path(&box2)]);
    wait_or_dump(&mut vm, "=== guest done", 1, long, &socks);
    let text = vm.text();
    eprintln!("{text}");
    assert_eq!(vm.count("tether vm: hot-adding tether-p"), 4, "{text}");
    assert_eq!(value(&text, "=== memdev-msi again rc="), "0", "{text}");
    assert!(text.contains("=== after vda same"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let status = vm.child.wait().unwrap();
    assert!(status.success(), "{status}\n{text}");
    drop(p1);
}

/// What each guest of the moves test runs: in the background, whenever a memdev is
/// there, it lists the PCI functions as lspci would (from sysfs: busybox has no
/// lspci), runs a DMA with an MSI through it, and waits for it to leave; in the
/// foreground, whenever a disk is there, it reads the generation the other guest left
/// in its first block, writes the next one (O_DIRECT), and waits for the disk to
/// leave; again and again. It looks for the disk every 50 ms and for the memdev every
/// 200 ms, with shell builtins (a process started in a TCG guest costs the host's
/// cores, which the bridges being measured share).
const MOVES_GUEST: &str = r#"
(
m=0
while [ $m -lt 10 ]; do
  md=""
  while [ -z "$md" ]; do
    for d in /sys/bus/pci/devices/*; do read v < $d/vendor; [ "$v" = 0x1de5 ] && md=$d; done
    [ -n "$md" ] || usleep 200000
  done
  for d in /sys/bus/pci/devices/*; do
    read v < $d/vendor; read i < $d/device; echo "=== lspci ${d##*/} $v:$i"
  done
  memdev-msi $md 0xdf 0x100000
  echo "=== memdev used rc=$?"
  while [ -e "$md" ]; do usleep 200000; done
  echo "=== memdev gone"
  m=$((m+1))
done
) &
n=0
while [ $n -lt 40 ]; do
  i=0
  while [ ! -e /sys/block/vda ] && [ $i -lt 6000 ]; do usleep 50000; i=$((i+1)); done
  [ -e /sys/block/vda ] || break
  g=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -n 1 | sed -n 's/^gen \([0-9][0-9]*\)$/\1/p')
  [ -n "$g" ] || g=0
  echo "=== have gen $g"
  printf "gen %d\n" $((g+1)) | dd of=/dev/vda bs=512 count=1 conv=sync oflag=direct 2>/dev/null
  rc=$?
  sync
  echo "=== wrote gen $((g+1)) rc=$rc"
  while [ -e /sys/block/vda ]; do usleep 50000; done
  echo "=== lost the disk"
  n=$((n+1))
done
"#;

/// Moves between running VMs (issue 16): two `tether vm`s, A in group 10 and B in
/// group 20, each with its own bridge in a namespace of its own, and one box whose
/// memdev and virtio-blk disk start in the free group (4093), all on a Linux bridge.
/// Both VMs boot with no device. The manager assigns the memdev, then the disk, to A
/// with `tether ctl set-group`, one after the other: each appears in A's guest and is
/// used (a DMA with an MSI through the memdev). The memdev moves to B, is used there,
/// and comes back to A, used again. Then the disk moves between the VMs 20 times; each time, the VM losing it
/// hot-removes it and the other hot-adds it, and its guest reads the generation the
/// other guest wrote and writes the next: no write is lost across a move. At the end
/// no root port is held without a device. Prints, per move, the time from the box's
/// group change to (a) the old owner's bridge taking the disk away from its guest (the ghost) and
/// its guest having let go (pciehp), (b) the new owner's bridge having enumerated it,
/// (c) the new owner's guest having read it: medians and maxima.
#[test]
fn a_disk_moves_between_running_vms() {
    let test = "a_disk_moves_between_running_vms";
    let Some((root, _vm)) = vfio_user_qemu(test) else {
        return;
    };
    let root = root.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some((kernel, initrd)) = guest_image(test, d, MOVES_GUEST, &["memdev-msi"], &[]) else {
        return;
    };
    let Some(mut rig) = Rig::for_test(test, "tmv") else {
        return;
    };
    let [bx, ha, hb, mgr] = star(&mut rig, "mv", &["box", "ha", "hb", "mgr"])[..] else {
        unreachable!()
    };
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"mvbox\"\n[bridge]\nid = 0xd15c\n\
             [[device]]\nslot = 0\nmodel = \"virtio-blk\"\npath = \"{}\"\n\
             [[device]]\nslot = 1\nmodel = \"memdev\"\n",
            disk.display()
        ),
    );
    let mut boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &path(&box_toml)]);
    boxp.wait_for("slot 1: ", 1, Duration::from_secs(10));
    let vm = |ns: usize, name: &'static str, gid: u16, iface: &str| {
        let sock = d.join(format!("{name}.sock").replace(' ', "-"));
        let host = path(&write(
            d,
            &format!("{name}.toml"),
            &format!(
                "gid = {gid}\n[port]\ninterface = \"{iface}\"\n[bridge]\ncontrol = \"{}\"\n",
                sock.display()
            ),
        ));
        let p = Proc::spawn(
            &rig,
            ns,
            name,
            &[
                "vm",
                "--config",
                &host,
                "--frontend",
                "vfio-user",
                "--accel",
                "tcg",
                "--qemu-root",
                &root,
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--append",
                "console=ttyS0 panic=-1 iomem=relaxed",
                "--memory",
                "192",
                "--root-ports",
                "3",
                "--timeout",
                "900",
            ],
        );
        (p, sock)
    };
    let (mut a, sock_a) = vm(ha, "vm A", 10, "mvha");
    let (mut b, sock_b) = vm(hb, "vm B", 20, "mvhb");
    let long = Duration::from_secs(240);
    a.wait_for("=== guest up", 1, long);
    b.wait_for("=== guest up", 1, long);
    assert_eq!(
        a.count("hot-adding") + b.count("hot-adding"),
        0,
        "no device yet"
    );
    let set_group = |slot: u8, gid: u16| {
        let out = run_ok(
            rig.command(mgr, env!("CARGO_BIN_EXE_tether"))
                .args(["ctl", "set-group", "-i", "mvmgr", &format!("0xd15c/{slot}")])
                .arg(gid.to_string()),
        );
        assert!(out.contains(&format!("to group {gid}")), "{out}");
    };
    let ctl = |gid: u16| set_group(0, gid);
    // The free memdev to A, then the free disk: each appears in A's guest and is used.
    set_group(1, 10);
    a.wait_for("=== memdev used rc=", 1, long);
    assert_eq!(value(&a.text(), "=== memdev used rc="), "0", "{}", a.text());
    assert!(a.text().contains("=== lspci 0000:"), "{}", a.text());
    assert!(a.text().contains(" 0x1de5:0x0001"), "{}", a.text());
    ctl(10);
    a.wait_for("=== wrote gen 1 rc=0", 1, long);
    // The memdev to B, used there, and back to A, used again.
    set_group(1, 20);
    b.wait_for("=== memdev used rc=", 1, long);
    a.wait_for("=== memdev gone", 1, long);
    a.wait_for("removed by the guest", 1, long);
    set_group(1, 10);
    a.wait_for("=== memdev used rc=", 2, long);
    b.wait_for("=== memdev gone", 1, long);
    b.wait_for("removed by the guest", 1, long);
    for (p, name) in [(&a, "A"), (&b, "B")] {
        let t = p.text();
        let rcs: Vec<&str> = t
            .lines()
            .filter_map(|l| l.split("=== memdev used rc=").nth(1))
            .collect();
        assert!(rcs.iter().all(|rc| *rc == "0"), "VM {name}: {rcs:?}\n{t}");
    }
    // Each VM's removals before the disk's moves (the memdev's, once each).
    const EARLIER: usize = 1;
    const MOVES: usize = 20;
    let (mut ghosted, mut let_go, mut enumerated, mut read) = (vec![], vec![], vec![], vec![]);
    for m in 1..=MOVES {
        // Odd moves A -> B, even ones B -> A; the last owner wrote generation m.
        let (from, to, gid) = if m % 2 == 1 {
            (&mut a, &mut b, 20)
        } else {
            (&mut b, &mut a, 10)
        };
        let n = m.div_ceil(2); // this move's number for each of the two VMs
        let n = n + EARLIER;
        ctl(gid);
        to.wait_for(&format!("=== wrote gen {} rc=0", m + 1), 1, long);
        from.wait_for("removed by the guest", n, long);
        // Times count from the box's change (its log line), as `ctl set-group`'s own
        // start (a process in a namespace, listening for the box first) is not the
        // fabric's.
        let t = boxp
            .nth_seen_at("group change", m + 4)
            .expect("the box logged the move");
        let since = |at: std::time::Instant| at.saturating_duration_since(t);
        ghosted.push(since(
            from.nth_seen_at("tether vm: hot-removing", n).unwrap(),
        ));
        let_go.push(since(from.nth_seen_at("removed by the guest", n).unwrap()));
        // The new owner's bridge enumerates the device once per arrival (again at
        // each reset QEMU makes, which comes later).
        let arrival = to.count("tether vm: hot-adding");
        let enum_at = (1..=to.count("bridge side: "))
            .filter_map(|k| to.nth_seen_at("bridge side: ", k))
            .find(|at| *at >= t)
            .expect("the new owner's bridge enumerated the disk");
        enumerated.push(since(enum_at));
        read.push(since(to.seen_at(&format!("=== have gen {m}")).unwrap()));
        assert!(arrival >= n, "{arrival} arrivals at move {m}");
    }
    let texts = [a.text(), b.text()];
    for t in &texts {
        assert!(!t.contains("panicked"), "{t}");
        assert!(!t.contains("I/O error"), "the guest saw I/O errors: {t}");
    }
    // A: the memdev twice, the disk once and then at every other move; B: the memdev
    // once, the disk at every other move.
    assert_eq!(
        a.count("tether vm: hot-adding"),
        3 + MOVES / 2,
        "{}",
        texts[0]
    );
    assert_eq!(
        b.count("tether vm: hot-adding"),
        1 + MOVES / 2,
        "{}",
        texts[1]
    );
    // No root port leak: each bridge holds a port only for the devices it has (A the
    // memdev and the disk).
    for (p, sock, holds) in [(&a, &sock_a, 2u64), (&b, &sock_b, 0)] {
        let out = run_ok(tether().args(["ctl", "stats", "--json", "-s"]).arg(sock));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["switch"]["in_use"].as_u64(),
            Some(holds),
            "{out}\n{}",
            p.text()
        );
        assert_eq!(
            v["devices"].as_array().map(|d| d.len() as u64),
            Some(holds),
            "{out}"
        );
    }
    let stats = |name: &str, v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        format!(
            "{name}: median {:?}, max {:?}",
            s[s.len() / 2],
            s[s.len() - 1]
        )
    };
    eprintln!(
        "measured (two TCG guests, vfio-user, q35 pciehp, debug build): {MOVES} moves, from the box's group change to\n  {}\n  {}\n  {}\n  {}",
        stats("(a) the old owner's bridge ghosting it", &ghosted),
        stats("(a) the old owner's guest having let go (pciehp)", &let_go),
        stats("(b) the new owner's bridge having enumerated it", &enumerated),
        stats("(c) the new owner's guest having read it", &read),
    );
    drop(boxp);
}
