//! Real VMs through tether, QEMU's multi-process proxy front-end (issue 7, test a):
//! an unmodified QEMU (Debian's, installed by scripts/deps/qemu.sh) runs SeaBIOS under
//! KVM; the guest's only disk is a virtio-blk device in an I/O box in another network
//! namespace, reached over veth through `tether vm` (host bridge + QEMU).
//!
//! SeaBIOS's own virtio driver finds the device, reads the boot sector and the second
//! stage (tests/vm/bootdisk.S) and, for the boot program, reads 64 KiB whose checksum
//! must match and writes a sector, which must then be in the box's backing file. The
//! program then times 20 000 MMIO reads of a device register (the guest's MMIO round
//! trip, printed as a measurement) and takes the device's INTx through the guest's
//! interrupt controller (QEMU's irqfd, re-armed through the resamplefd).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dataplane::netns::Rig;

const DATA_LBA: usize = 16;
const DATA_LEN: usize = 64 << 10;
const WRITE_LBA: usize = 200;
const SUM_AT: usize = 0x1b0;
const MMIO_READS: f64 = 20_000.0;
const WRITTEN: &[u8] = b"tether-boot wrote this sector through SeaBIOS and virtio-blk";

/// Assembles the boot program and lays out a 4 MiB disk: the program in sectors 0..8,
/// 64 KiB of pseudo-random data at DATA_LBA, their 32-bit word sum at SUM_AT.
fn boot_disk(dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/bootdisk.S");
    let obj = dir.join("bootdisk.o");
    let bin = dir.join("bootdisk.bin");
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    };
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&src))?;
    run(Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-o",
        ])
        .arg(&bin)
        .arg(&obj))?;
    let code = std::fs::read(&bin).map_err(|e| e.to_string())?;
    assert!(
        code.len() <= DATA_LBA * 512,
        "the boot program overlaps the data"
    );
    let mut disk = vec![0u8; 4 << 20];
    disk[..code.len()].copy_from_slice(&code);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data = &mut disk[DATA_LBA * 512..DATA_LBA * 512 + DATA_LEN];
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    let sum = data.chunks_exact(4).fold(0u32, |s, w| {
        s.wrapping_add(u32::from_le_bytes(w.try_into().unwrap()))
    });
    disk[SUM_AT..SUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
    let path = dir.join("disk.img");
    std::fs::write(&path, &disk).map_err(|e| e.to_string())?;
    Ok(path)
}

#[test]
fn seabios_under_kvm_boots_from_the_remote_disk_through_the_proxy() {
    let test = "seabios_under_kvm_boots_from_the_remote_disk_through_the_proxy";
    if !is_root() {
        return skip(test, "needs root (network namespaces)");
    }
    if dep(test, "qemu.sh").is_none() {
        return;
    }
    if !kvm_usable() {
        return skip_for_hardware(
            test,
            Hardware::Kvm,
            "/dev/kvm is missing or not usable: test a needs KVM",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // The repository's own boot sector: failing to build it is never a skip.
    let disk = boot_disk(dir.path())
        .unwrap_or_else(|why| panic!("{test}: cannot build the boot disk: {why}"));
    let Some(mut rig) = Rig::for_test(test, "tvp") else {
        return;
    };
    let bx = rig.host("box").unwrap();
    let hs = rig.host("host").unwrap();
    rig.veth(bx, "vpbox", hs, "vphost", 1500).unwrap();
    let d = dir.path();
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"vpbox\"\n[[device]]\nslot = 0\nmodel = \"virtio-blk\"\n\
             gid = 10\npath = \"{}\"\n",
            disk.display()
        ),
    );
    let host_toml = write(d, "host.toml", "gid = 10\n[port]\ninterface = \"vphost\"\n");
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let mut boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &path(&box_toml)]);
    boxp.wait_for(
        "slot 0: virtio-blk (1af4:1042) in group 10",
        1,
        Duration::from_secs(10),
    );

    let started = Instant::now();
    let mut vm = Proc::spawn(
        &rig,
        hs,
        "tether vm",
        &[
            "vm",
            "--config",
            &path(&host_toml),
            "--accel",
            "kvm",
            "--memory",
            "128",
            "--timeout",
            "120",
            "--",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ],
    );
    vm.wait_for("tether host: stopped", 1, Duration::from_secs(150));
    let status = vm.child.wait().unwrap();
    let took = started.elapsed();
    let text = vm.text();
    eprintln!("{text}");
    for line in [
        "tether-boot: sector 0 from the remote disk",
        "tether-boot: stage 2 loaded",
        "tether-boot: 64 KiB read, checksum ok",
        "tether-boot: sector written",
        "tether-boot: INTx taken through the PIC",
        "tether-boot: exit 10",
    ] {
        assert_eq!(vm.count(line), 1, "missing {line:?}:\n{text}");
    }
    // isa-debug-exit: (0x10 << 1) | 1.
    assert_eq!(status.code(), Some(33), "QEMU's exit status:\n{text}");

    // The write reached the box's file.
    let image = std::fs::read(&disk).unwrap();
    let sector = &image[WRITE_LBA * 512..WRITE_LBA * 512 + 512];
    assert_eq!(&sector[..WRITTEN.len()], WRITTEN);
    assert!(sector[WRITTEN.len()..].iter().all(|&b| b == 0));

    // INTx went out through the irqfd and came back through the resamplefd; nothing
    // timed out.
    let stopped = text
        .lines()
        .find(|l| l.contains("tether host: stopped"))
        .unwrap()
        .to_string();
    assert_eq!(counter(&stopped, "irqfd sets"), 1, "{stopped}");
    assert!(counter(&stopped, "INTx signals") >= 1, "{stopped}");
    assert!(counter(&stopped, "resamples") >= 1, "{stopped}");
    assert_eq!(counter(&stopped, "completion timeouts"), 0, "{stopped}");
    assert!(
        counter(&stopped, "BAR reads") >= MMIO_READS as u64,
        "{stopped}"
    );

    let (Some(t0), Some(t1)) = (
        vm.seen_at("tether-boot: mmio-start"),
        vm.seen_at("tether-boot: mmio-end"),
    ) else {
        panic!("no MMIO timing lines:\n{text}");
    };
    let per_read = (t1 - t0).as_secs_f64() / MMIO_READS * 1e6;
    eprintln!(
        "measured: guest MMIO read round trip through the proxy, tether and the box: \
         {per_read:.1} µs (mean of {MMIO_READS} reads, SeaBIOS guest under KVM); whole boot {:.1} s",
        took.as_secs_f64()
    );
    drop(boxp);
}
