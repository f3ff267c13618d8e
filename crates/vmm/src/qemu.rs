//! What tether needs to know about the QEMU it runs: its version (and the bugs that
//! come with it), the command line every guest shares ([`base_argv`]), that of a q35
//! machine whose PCI Express root ports take hot-plugged devices, and how QEMU runs
//! from a root directory of its own ([`in_root`]).
//!
//! The option names were checked against QEMU's source (`hw/pci-bridge/gen_pcie_root_port.c`
//! for the `*-reserve` properties, `hw/isa/lpc_ich9.c` for
//! `acpi-pci-hotplug-with-bridge-support`) and against `-device pcie-root-port,help` of
//! the QEMU 11.1.3 that `scripts/deps/qemu-vfio-user.sh` installs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use thiserror::Error;

/// A QEMU release, as QMP's greeting and `query-version` report it (`{"major": 11,
/// "minor": 1, "micro": 3}`) or as `qemu-system-x86_64 --version` prints it.
/// Development snapshots count as the release they follow (10.0.50 is after 10.0.0),
/// release candidates as QEMU numbers them (10.0.90 is 10.1.0-rc0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// Why a version could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("no QEMU version in {0:?}")]
    Missing(String),
    #[error("version field {field}: {why}")]
    Field { field: &'static str, why: String },
}

/// The first release with `vfio-user-pci` (hw/vfio-user), and with it the MSI-X
/// unplug abort described at [`QemuVersion::vfio_user_msix_unplug_aborts`].
pub const VFIO_USER_SINCE: QemuVersion = QemuVersion::new(10, 1, 0);

/// Releases known to carry upstream's fix of the MSI-X unplug abort ("vfio-user: Do
/// not delete the subregion", qemu-devel, October 2025). Each entry is the first
/// fixed release of its `major.minor` series. Empty: no release checked on this
/// machine has it (11.1.3 does not). Add a release only once a probe (see
/// docs/vmm.md) has shown `device_del` of a device with MSI-X completing on it.
pub const FIXED_IN: &[QemuVersion] = &[];

impl QemuVersion {
    pub const fn new(major: u32, minor: u32, micro: u32) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    /// From QMP's version object: either `{"qemu": {"major": .., "minor": ..,
    /// "micro": ..}, "package": ..}` (the greeting's `version`, `query-version`'s
    /// return) or the inner `{"major": .., ..}` itself.
    pub fn from_qmp(v: &Value) -> Result<QemuVersion, VersionError> {
        let inner = v.get("qemu").unwrap_or(v);
        let field = |name: &'static str| -> Result<u32, VersionError> {
            let f = inner.get(name).ok_or(VersionError::Field {
                field: name,
                why: "missing".into(),
            })?;
            f.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| VersionError::Field {
                    field: name,
                    why: format!("not a 32-bit unsigned number: {}", clip(&f.to_string())),
                })
        };
        Ok(QemuVersion::new(
            field("major")?,
            field("minor")?,
            field("micro")?,
        ))
    }

    /// From the output of `qemu-system-x86_64 --version`: "QEMU emulator version
    /// 11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1)". A missing micro reads as 0; anything
    /// after a number's digits ("-rc1", "+ds") is ignored.
    pub fn from_version_output(text: &str) -> Result<QemuVersion, VersionError> {
        const MARK: &str = "version ";
        let line = text
            .lines()
            .find(|l| l.contains("QEMU") && l.contains(MARK))
            .ok_or_else(|| VersionError::Missing(clip(text)))?;
        let at = line
            .find(MARK)
            .ok_or_else(|| VersionError::Missing(clip(line)))?;
        let token = line[at + MARK.len()..]
            .split_whitespace()
            .next()
            .ok_or_else(|| VersionError::Missing(clip(line)))?;
        let mut parts = token.split('.');
        let mut number = |field: &'static str, required: bool| -> Result<u32, VersionError> {
            let Some(part) = parts.next() else {
                return if required {
                    Err(VersionError::Field {
                        field,
                        why: format!("missing in {:?}", clip(token)),
                    })
                } else {
                    Ok(0)
                };
            };
            let digits = &part[..part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len())];
            digits.parse::<u32>().map_err(|e| VersionError::Field {
                field,
                why: format!("{:?}: {e}", clip(part)),
            })
        };
        Ok(QemuVersion::new(
            number("major", true)?,
            number("minor", true)?,
            number("micro", false)?,
        ))
    }

    /// Whether `device_del` of a `vfio-user-pci` device with an MSI-X capability
    /// aborts this QEMU once the guest has released the device: true from
    /// [`VFIO_USER_SINCE`] (10.1.0) on, unless [`FIXED_IN`] says otherwise.
    ///
    /// The code path (QEMU 11.1.3, hw/vfio-user/pci.c and QOM): `device_del` → the
    /// guest's pciehp powers the slot off → `qdev_unrealize` → (RCU thread)
    /// `object_finalize` → `object_property_del_all`, which finalizes the device's
    /// child memory regions, among them the MSI-X PBA region → the instance
    /// finalizer `vfio_user_pci_finalize` → its MSI-X teardown calls
    /// `memory_region_del_subregion` on the already finalized PBA region → the
    /// assertion `subregion->container == mr` fails and QEMU aborts. The server's
    /// answers do not matter: it is QEMU's bug. Upstream's fix is "vfio-user: Do not
    /// delete the subregion" (qemu-devel, October 2025); a QEMU built with it can
    /// unplug such devices. A device without an MSI-X capability (MSI or INTx)
    /// unplugs cleanly on every version.
    pub fn vfio_user_msix_unplug_aborts(&self) -> bool {
        self.msix_unplug_aborts_given(FIXED_IN)
    }

    /// [`vfio_user_msix_unplug_aborts`](Self::vfio_user_msix_unplug_aborts) against
    /// a given list of fixed releases: an entry fixes the later releases of its own
    /// `major.minor` series and, when it is a feature release (micro 0), every later
    /// release.
    pub fn msix_unplug_aborts_given(&self, fixed: &[QemuVersion]) -> bool {
        let fixed_here = fixed.iter().any(|f| {
            let same_series = f.major == self.major && f.minor == self.minor;
            (same_series && self.micro >= f.micro) || (f.micro == 0 && *self >= *f)
        });
        *self >= VFIO_USER_SINCE && !fixed_here
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// At most 80 characters of something hostile, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// How QEMU runs the guest's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM with the host's CPU model (without `arch-capabilities`, which QEMU's
    /// "host" model cannot give on PVM-backed KVM and aborts on).
    Kvm,
    /// QEMU's translator, with its most complete CPU model.
    Tcg,
}

/// The most root ports a q35 machine takes here: pcie.0's slots 2 to 30 (0x02 to
/// 0x1e), eight functions each. Slot 0 is the host bridge, slot 31 (0x1f) the ICH9
/// LPC, SATA and SMBus functions.
pub const MAX_ROOT_PORTS: u16 = 29 * 8;

/// The first slot of pcie.0 that holds root ports.
const FIRST_PORT_SLOT: u16 = 2;

/// The index of a root port of the machine (0 ≤ index < root ports), which names it
/// on QEMU's command line and in QMP: `tether-rp<index>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RootPortIndex(pub u16);

impl RootPortIndex {
    /// The port's QEMU device id, which is also the bus name a hot-plugged device
    /// goes on (`device_add ... "bus": "tether-rp3"`).
    pub fn id(self) -> String {
        format!("tether-rp{}", self.0)
    }

    /// The port's address on pcie.0: (slot, function).
    pub fn slot_function(self) -> (u16, u16) {
        (FIRST_PORT_SLOT + self.0 / 8, self.0 % 8)
    }

    /// The port's `-device` option value. The chassis and slot numbers (the slot
    /// number the guest's pciehp shows) are index + 1 and unique per port; `addr`
    /// takes the slot in hexadecimal, as QEMU parses it. The first function of each
    /// slot is multi-function, so the other seven can sit beside it. No I/O window
    /// is reserved (a 64 KiB I/O space runs out at 16 ports, and the devices tether
    /// serves use memory BARs only).
    fn device_option(self, pref64_reserve: ByteSize) -> String {
        let (slot, function) = self.slot_function();
        let n = u32::from(self.0) + 1;
        let multifunction = if function == 0 {
            ",multifunction=on"
        } else {
            ""
        };
        format!(
            "pcie-root-port,id={},bus=pcie.0,chassis={n},slot={n},addr={slot:x}.{function}{multifunction},io-reserve=0,pref64-reserve={}",
            self.id(),
            pref64_reserve
        )
    }
}

/// A size in bytes, written for QEMU with its binary suffixes (K, M, G, T).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = self.0;
        let mut unit = "";
        for u in ["K", "M", "G", "T"] {
            if n == 0 || !n.is_multiple_of(1024) {
                break;
            }
            n /= 1024;
            unit = u;
        }
        write!(f, "{n}{unit}")
    }
}

/// A guest's direct kernel boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// The start of every tether guest's command line, argv[0] first: one CPU of `accel`,
/// `memory_mib` MiB of guest RAM in a shared memfd (which the device's front-end maps)
/// backing a machine of type `machine` ("q35", "pc"), no default devices, no display,
/// no reboot, the serial port on `serial`, QMP on the Unix socket `qmp`.
pub fn base_argv(
    qemu: &str,
    accel: Accel,
    memory_mib: u64,
    machine: &str,
    serial: &str,
    qmp: &Path,
) -> Vec<String> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host,-arch-capabilities"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mem = format!("{memory_mib}M");
    vec![
        qemu.into(),
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=tether-ram,size={mem},share=on"),
        "-machine".into(),
        format!("{machine},memory-backend=tether-ram"),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        serial.into(),
        "-monitor".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]
}

/// `argv` run with `root` as its root directory (a chroot with a QEMU the system
/// does not have), in a mount namespace of its own: /proc, /dev, /sys and the host's
/// /tmp and /var/tmp (where kernels, initrds and sockets lie) are mounted into the
/// root for this process only and vanish with it. Needs root.
pub fn in_root(root: &Path, argv: &[String]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "r=$1; shift; mount -t proc proc \"$r/proc\" && mount --rbind /dev \"$r/dev\" && \
             mount -t sysfs sys \"$r/sys\" && mount --bind /tmp \"$r/tmp\" && \
             mount --bind /var/tmp \"$r/var/tmp\" && exec chroot \"$r\" \"$@\"",
        )
        .arg("tether-qemu")
        .arg(root)
        .args(argv);
    c
}

/// A q35 machine whose devices arrive through hot-plug: guest RAM in a shared memfd
/// (vfio-user's server maps it), `root_ports` PCI Express root ports with native
/// hot-plug (pciehp), QMP on a Unix socket, no default devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSpec {
    /// The QEMU program (argv[0]).
    pub qemu: String,
    pub accel: Accel,
    pub memory_mib: u32,
    /// How many root ports (`tether-rp0` ...), at most [`MAX_ROOT_PORTS`]; each takes
    /// one hot-plugged device.
    pub root_ports: u16,
    /// The 64-bit prefetchable window the firmware reserves behind each root port,
    /// for the BARs of the device hot-plugged there later.
    pub pref64_reserve: ByteSize,
    /// QMP's Unix socket (QEMU listens on it).
    pub qmp: PathBuf,
    /// Where the guest's serial port goes (`-serial`), e.g. "stdio".
    pub serial: String,
    pub boot: Option<KernelBoot>,
    /// `-device` values of devices present from the start, after the root ports
    /// (e.g. the multi-process proxy's `x-pci-proxy-dev,id=tether0,fd=N`).
    pub cold_devices: Vec<String>,
    /// More arguments, last.
    pub extra: Vec<String>,
}

/// A machine that cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{0} root ports: a q35 machine takes at most {MAX_ROOT_PORTS}")]
    TooManyRootPorts(u16),
    #[error("the guest needs some memory")]
    NoMemory,
}

impl MachineSpec {
    /// The root ports of this machine.
    pub fn ports(&self) -> impl Iterator<Item = RootPortIndex> {
        (0..self.root_ports).map(RootPortIndex)
    }

    /// QEMU's command line, argv[0] first.
    pub fn argv(&self) -> Result<Vec<String>, SpecError> {
        if self.root_ports > MAX_ROOT_PORTS {
            return Err(SpecError::TooManyRootPorts(self.root_ports));
        }
        if self.memory_mib == 0 {
            return Err(SpecError::NoMemory);
        }
        let mut v = base_argv(
            &self.qemu,
            self.accel,
            u64::from(self.memory_mib),
            "q35",
            &self.serial,
            &self.qmp,
        );
        // Native PCI Express hot-plug (pciehp) on the root ports rather than ACPI's:
        // the guest sees the slot events a real switch port raises.
        v.extend([
            "-global".into(),
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into(),
        ]);
        for port in self.ports() {
            v.push("-device".into());
            v.push(port.device_option(self.pref64_reserve));
        }
        for d in &self.cold_devices {
            v.push("-device".into());
            v.push(d.clone());
        }
        if let Some(b) = &self.boot {
            v.extend(["-kernel".into(), b.kernel.display().to_string()]);
            if let Some(i) = &b.initrd {
                v.extend(["-initrd".into(), i.display().to_string()]);
            }
            v.extend(["-append".into(), b.append.clone()]);
        }
        v.extend(self.extra.iter().cloned());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_from_qmp_and_from_the_version_line() {
        let greeting_version = json!({"qemu": {"micro": 3, "minor": 1, "major": 11},
                                      "package": "Debian 1:11.1.3+ds-2~bpo13+1"});
        assert_eq!(
            QemuVersion::from_qmp(&greeting_version),
            Ok(QemuVersion::new(11, 1, 3))
        );
        assert_eq!(
            QemuVersion::from_qmp(&json!({"major": 7, "minor": 2, "micro": 15})),
            Ok(QemuVersion::new(7, 2, 15))
        );
        assert_eq!(
            QemuVersion::from_qmp(&json!({"qemu": {"major": 11, "minor": 1}})),
            Err(VersionError::Field {
                field: "micro",
                why: "missing".into()
            })
        );
        for bad in [json!(-1), json!(1.5), json!("11"), json!(1u64 << 32)] {
            let v = json!({"major": bad, "minor": 1, "micro": 0});
            assert!(
                matches!(
                    QemuVersion::from_qmp(&v),
                    Err(VersionError::Field { field: "major", .. })
                ),
                "{v}"
            );
        }
        for (text, want) in [
            (
                "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1)\nCopyright (c) 2003-2026 Fabrice Bellard and the QEMU Project developers\n",
                QemuVersion::new(11, 1, 3),
            ),
            (
                "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)",
                QemuVersion::new(7, 2, 15),
            ),
            ("QEMU emulator version 10.0.90", QemuVersion::new(10, 0, 90)),
            ("QEMU emulator version 9.2", QemuVersion::new(9, 2, 0)),
            ("QEMU emulator version 10.1.0-rc1", QemuVersion::new(10, 1, 0)),
        ] {
            assert_eq!(QemuVersion::from_version_output(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "qemu-system-x86_64: command not found",
            "QEMU emulator version ",
            "QEMU emulator version x.1.3",
            "QEMU emulator version 11",
            "QEMU emulator version 99999999999.1.0",
        ] {
            assert!(QemuVersion::from_version_output(bad).is_err(), "{bad:?}");
        }
        assert_eq!(QemuVersion::new(11, 1, 3).to_string(), "11.1.3");
    }

    #[test]
    fn the_msix_unplug_abort_by_version() {
        // No fixed release known: every release with vfio-user-pci aborts.
        for (v, aborts) in [
            ((7, 2, 15), false),
            ((10, 0, 0), false),
            ((10, 0, 3), false),
            ((10, 1, 0), true),
            ((10, 2, 1), true),
            ((11, 1, 3), true),
            ((12, 0, 0), true),
        ] {
            let v = QemuVersion::new(v.0, v.1, v.2);
            assert_eq!(v.vfio_user_msix_unplug_aborts(), aborts, "{v}");
        }
        // With fixes in a stable release and a feature release (hypothetical).
        let fixed = [QemuVersion::new(11, 1, 5), QemuVersion::new(11, 2, 0)];
        for (v, aborts) in [
            ((10, 1, 0), true),
            ((11, 0, 9), true),
            ((11, 1, 4), true),
            ((11, 1, 5), false),
            ((11, 1, 9), false),
            ((11, 2, 0), false),
            ((12, 0, 0), false),
        ] {
            let v = QemuVersion::new(v.0, v.1, v.2);
            assert_eq!(v.msix_unplug_aborts_given(&fixed), aborts, "{v}");
        }
    }

    #[test]
    fn sizes_for_qemu() {
        for (n, s) in [
            (0, "0"),
            (1000, "1000"),
            (4096, "4K"),
            (64 << 20, "64M"),
            (3 << 30, "3G"),
            ((1 << 40) + (1 << 20), "1048577M"),
            (1 << 50, "1024T"),
        ] {
            assert_eq!(ByteSize(n).to_string(), s);
        }
    }

    fn spec(root_ports: u16) -> MachineSpec {
        MachineSpec {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            memory_mib: 256,
            root_ports,
            pref64_reserve: ByteSize::mib(64),
            qmp: "/tmp/vm/qmp.sock".into(),
            serial: "stdio".into(),
            boot: Some(KernelBoot {
                kernel: "/k/vmlinuz".into(),
                initrd: Some("/k/initrd".into()),
                append: "console=ttyS0".into(),
            }),
            cold_devices: vec![],
            extra: vec!["-snapshot".into()],
        }
    }

    #[test]
    fn a_q35_machine_with_root_ports_golden() {
        let golden = "qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 256M \
             -object memory-backend-memfd,id=tether-ram,size=256M,share=on \
             -machine q35,memory-backend=tether-ram \
             -nodefaults -display none -no-reboot -serial stdio -monitor none \
             -qmp unix:/tmp/vm/qmp.sock,server=on,wait=off \
             -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off \
             -device pcie-root-port,id=tether-rp0,bus=pcie.0,chassis=1,slot=1,addr=2.0,multifunction=on,io-reserve=0,pref64-reserve=64M \
             -device pcie-root-port,id=tether-rp1,bus=pcie.0,chassis=2,slot=2,addr=2.1,io-reserve=0,pref64-reserve=64M \
             -device pcie-root-port,id=tether-rp2,bus=pcie.0,chassis=3,slot=3,addr=2.2,io-reserve=0,pref64-reserve=64M \
             -kernel /k/vmlinuz -initrd /k/initrd -append console=ttyS0 -snapshot";
        assert_eq!(spec(3).argv().unwrap().join(" "), golden);

        let mut kvm = spec(0);
        kvm.accel = Accel::Kvm;
        kvm.boot = None;
        kvm.extra.clear();
        kvm.cold_devices = vec!["x-pci-proxy-dev,id=tether0,fd=7".into()];
        assert_eq!(
            kvm.argv().unwrap().join(" "),
            "qemu-system-x86_64 -accel kvm -cpu host,-arch-capabilities -smp 1 -m 256M \
             -object memory-backend-memfd,id=tether-ram,size=256M,share=on \
             -machine q35,memory-backend=tether-ram \
             -nodefaults -display none -no-reboot -serial stdio -monitor none \
             -qmp unix:/tmp/vm/qmp.sock,server=on,wait=off \
             -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off \
             -device x-pci-proxy-dev,id=tether0,fd=7"
        );
    }

    #[test]
    fn the_base_command_line_of_a_pc_machine_golden() {
        // As `tether vm` starts its guest (machine type pc).
        assert_eq!(
            base_argv(
                "qemu",
                Accel::Kvm,
                512,
                "pc",
                "stdio",
                Path::new("/tmp/q.qmp")
            )
            .join(" "),
            "qemu -accel kvm -cpu host,-arch-capabilities -smp 1 -m 512M \
             -object memory-backend-memfd,id=tether-ram,size=512M,share=on \
             -machine pc,memory-backend=tether-ram \
             -nodefaults -display none -no-reboot -serial stdio -monitor none \
             -qmp unix:/tmp/q.qmp,server=on,wait=off"
        );
    }

    #[test]
    fn root_ports_fill_slots_two_to_thirty_in_hexadecimal() {
        let argv = spec(MAX_ROOT_PORTS).argv().unwrap();
        let ports: Vec<&String> = argv
            .iter()
            .filter(|a| a.starts_with("pcie-root-port"))
            .collect();
        assert_eq!(ports.len(), 232);
        assert_eq!(
            ports[8].as_str(),
            "pcie-root-port,id=tether-rp8,bus=pcie.0,chassis=9,slot=9,addr=3.0,multifunction=on,io-reserve=0,pref64-reserve=64M"
        );
        assert_eq!(
            ports[65].as_str(),
            "pcie-root-port,id=tether-rp65,bus=pcie.0,chassis=66,slot=66,addr=a.1,io-reserve=0,pref64-reserve=64M"
        );
        assert_eq!(
            ports[231].as_str(),
            "pcie-root-port,id=tether-rp231,bus=pcie.0,chassis=232,slot=232,addr=1e.7,io-reserve=0,pref64-reserve=64M"
        );
        assert_eq!(RootPortIndex(231).slot_function(), (30, 7));
        assert_eq!(
            spec(MAX_ROOT_PORTS + 1).argv(),
            Err(SpecError::TooManyRootPorts(233))
        );
        let mut none = spec(1);
        none.memory_mib = 0;
        assert_eq!(none.argv(), Err(SpecError::NoMemory));
    }
}
