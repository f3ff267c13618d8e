//! vmm::qemu's q35 machine and vmm::qmp against a real QEMU 11.1 (the trixie chroot
//! that scripts/deps/qemu-vfio-user.sh makes), paused before the guest runs (-S): the
//! command line is accepted, QMP greets with the version `--version` prints, and
//! `query-pci` lists every root port where `MachineSpec` put it.
//!
//! As root a missing QEMU is made by the script, and its failure fails the test;
//! without root the test is skipped, loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm::qemu::{in_root, Accel, ByteSize, MachineSpec, QemuVersion, RootPortIndex};
use vmm::qmp::{devices_behind, vfio_user_pci, Qmp, QmpError};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A loud skip notice, straight to the process's stderr (the harness captures the
/// output of passing tests; scripts/test.sh counts these lines).
fn skip(test: &str, why: &str) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED {test}: {why} ***\n\n").as_bytes(),
    );
}

/// The chroot with QEMU >= 10.1, made if missing.
fn qemu_root() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deps/qemu-vfio-user.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let root = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let root = PathBuf::from(root);
    assert!(
        root.join("usr/bin/qemu-system-x86_64").exists(),
        "{}: no QEMU there",
        root.display()
    );
    root
}

/// QEMU, killed when the test ends however it ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qmp_against_qemu_11_1_on_q35_with_root_ports() {
    const TEST: &str = "qmp_against_qemu_11_1_on_q35_with_root_ports";
    if !is_root() {
        skip(
            TEST,
            "needs root (chroot and mount namespace for the trixie QEMU)",
        );
        return;
    }
    let root = qemu_root();
    let out = in_root(&root, &["qemu-system-x86_64".into(), "--version".into()])
        .output()
        .unwrap();
    let printed = QemuVersion::from_version_output(&String::from_utf8_lossy(&out.stdout))
        .expect("qemu-system-x86_64 --version");

    let dir = PathBuf::from(format!("/tmp/vmm-qemu-q35-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 66 ports: slots 2 to 0xa, so addr= is read as hexadecimal (0xa.0, 0xa.1).
    let spec = MachineSpec {
        qemu: "qemu-system-x86_64".into(),
        accel: Accel::Tcg,
        memory_mib: 64,
        root_ports: 66,
        pref64_reserve: ByteSize::mib(64),
        qmp: dir.join("qmp.sock"),
        serial: "none".into(),
        boot: None,
        cold_devices: vec![],
        extra: vec!["-S".into()],
    };
    let argv = spec.argv().unwrap();
    let mut qemu = Qemu(
        in_root(&root, &argv)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );

    let mut q = match Qmp::connect(&spec.qmp, Duration::from_secs(20)) {
        Ok(q) => q,
        Err(e) => {
            let status = qemu.0.try_wait();
            let stderr = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
            panic!("QMP: {e}; QEMU {status:?}: {}\n{stderr}", argv.join(" "));
        }
    };
    let v = q.version();
    assert_eq!((v.major, v.minor), (11, 1), "QEMU {v}");
    assert_eq!(v, printed, "QMP's version and --version's");
    assert_eq!(q.query_version().unwrap(), v);
    assert!(v.vfio_user_msix_unplug_aborts());

    let buses = q.query_pci().unwrap();
    let root_bus = buses.iter().find(|b| b.number == 0).expect("bus 0");
    for port in spec.ports() {
        let d = root_bus
            .devices
            .iter()
            .find(|d| d.qdev_id == port.id())
            .unwrap_or_else(|| panic!("{} not in query-pci", port.id()));
        let (slot, function) = port.slot_function();
        assert_eq!(
            (u16::from(d.slot), u16::from(d.function)),
            (slot, function),
            "{}",
            port.id()
        );
        assert_eq!(d.class, 0x0604, "{} is a PCI bridge", port.id());
        assert_eq!(devices_behind(&buses, &port.id()), Some(&[][..]));
    }
    assert_eq!(RootPortIndex(65).slot_function(), (0xa, 1));

    // The JSON form of device_add reaches the point of connecting to the server.
    let missing = dir.join("no-server.sock");
    let e = q
        .device_add(vfio_user_pci("tether-p5g0", &RootPortIndex(5).id(), &missing).unwrap())
        .unwrap_err();
    match &e {
        QmpError::Command { desc, .. } => assert!(
            desc.contains(missing.to_str().unwrap()),
            "device_add refused for another reason: {e}"
        ),
        _ => panic!("device_add: {e}"),
    }
    assert!(matches!(
        q.device_del("tether-p5g0"),
        Err(QmpError::Command { class, .. }) if class == "DeviceNotFound"
    ));

    q.quit().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "QEMU still runs after quit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "QEMU ended with {status}");
    let _ = std::fs::remove_dir_all(&dir);
    let st = q.stats();
    assert_eq!(st.error_replies, 2, "{st:?}");
}
