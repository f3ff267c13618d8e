//! `tether vm`: starts the host bridge and an unmodified QEMU whose guest uses the
//! group's devices through the bridge, guest RAM as a shared memfd:
//!
//! - vfio-user (the default with a bridge of its own): a q35 machine with PCI Express
//!   root ports; every device of the group, from any box, is hot-added on a root port
//!   as a `vfio-user-pci` device on a socket of its own when it arrives, and
//!   hot-removed when it leaves (QMP `device_add`/`device_del`, native pciehp in the
//!   guest);
//! - the proxy: the group's first device, present from boot as QEMU's
//!   `x-pci-proxy-dev` on one end of a socketpair with the bridge on the other;
//! - `--connect`: one device on a bridge that runs elsewhere.
//!
//! The guest's serial console is this command's standard output (or `--console
//! FILE`), the bridge's log its standard error; the command ends with QEMU's exit
//! status.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmm::proxy::ProxyServer;
use vmm::qemu;
use vmm::qmp::Qmp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::iobox::{IoBox, Slot};
use dataplane::ports::mem::{self, MemPort};
use wire::BridgeRole;

use crate::bridge;
use crate::cmd::iobox;
use crate::cmd::vm_host::{self, End};
use crate::config_file::{BoxConfig, BridgeSettings, HostConfig};
use crate::signals;

/// The target of `tether vm`'s own log events.
const T: &str = "tether::vm";
use hostbridge::vm_pool::{QemuSlots, VmHost, VmPool, VmPoolConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm can run the guest, else TCG.
    Auto,
    /// KVM (/dev/kvm).
    Kvm,
    /// QEMU's emulation, no hardware help.
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FrontendKind {
    /// QEMU's multi-process proxy (x-pci-proxy-dev; QEMU >= 7.2): INTx only.
    Proxy,
    /// vfio-user (vfio-user-pci; QEMU >= 10.1): INTx, MSI and MSI-X.
    VfioUser,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MsixPolicy {
    /// Hidden on QEMU versions whose vfio-user hot-removal aborts with MSI-X.
    Auto,
    /// Always hidden: the guest's driver uses MSI or INTx.
    Hide,
    /// Always offered.
    Offer,
}

#[derive(clap::Args)]
pub struct VmArgs {
    /// How QEMU reaches the bridge.
    #[arg(long, value_enum, default_value = "proxy")]
    frontend: FrontendKind,
    /// Run QEMU from this root directory (a chroot, for a QEMU the system does not
    /// have: scripts/deps/qemu-vfio-user.sh makes one). /tmp and /var/tmp are shared
    /// with it, so the kernel, initrd and socket must lie there.
    #[arg(long)]
    qemu_root: Option<PathBuf>,
    /// The host bridge's configuration: group, port, bridge settings (docs/cli.md).
    #[arg(short, long, required_unless_present = "connect")]
    config: Option<PathBuf>,
    /// Start no bridge: attach the guest to the host bridge already serving vfio-user
    /// on this socket (`tether host --vfio-user SOCKET`), which outlives the guest and
    /// serves the next one. Implies --frontend vfio-user.
    #[arg(long, conflicts_with_all = ["config", "local_box"])]
    connect: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u64,
    /// How QEMU runs the guest: KVM where it can run it (this machine's PVM-backed
    /// KVM runs firmware but not a Linux kernel), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// Linux kernel to boot (without it, the firmware boots from the disks, the
    /// remote one included).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial RAM disk for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel's command line (with --kernel).
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    append: String,
    /// The QEMU program (looked up in PATH, or in --qemu-root).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Write the guest's serial console to this file instead of standard output (with
    /// --qemu-root it must lie under /tmp or /var/tmp, which the root shares).
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Stop the guest after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Run this I/O box (its TOML; [port] is not used) in this process, joined to
    /// the bridge by an in-memory port instead of a network: the same device model
    /// without the network, for comparisons.
    #[arg(long)]
    local_box: Option<PathBuf>,
    /// Seconds to wait for the device to appear in the group (the proxy, whose device
    /// is there from boot; at most an hour).
    #[arg(long, default_value_t = 60.0)]
    device_wait: f64,
    /// Print the QEMU command line instead of running it.
    #[arg(long)]
    dry_run: bool,
    /// PCI Express root ports of the guest (vfio-user with a bridge of its own): the
    /// most devices it holds at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=vmm::qemu::MAX_ROOT_PORTS as i64))]
    root_ports: u16,
    /// MSI-X of hot-plugged vfio-user devices: hidden from the guest where the QEMU
    /// aborts when such a device is hot-removed (auto), always hidden, or offered.
    #[arg(long, value_enum, default_value = "auto")]
    msix: MsixPolicy,
    /// More QEMU arguments (after --).
    #[arg(last = true)]
    qemu_args: Vec<String>,
}

/// Whether KVM here can run this guest: this kind of machine's PVM-backed KVM runs
/// firmware and boot sectors but not a Linux kernel.
fn kvm_usable(kernel: bool) -> bool {
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    open && !(kernel && std::path::Path::new("/sys/module/kvm_pvm").exists())
}

/// Where QEMU's serial port goes (`-serial`): standard output, or `--console`'s file.
fn serial(a: &VmArgs) -> String {
    match &a.console {
        Some(f) => format!("file:{}", f.display()),
        None => "stdio".into(),
    }
}

/// How QEMU finds the device.
enum Attach {
    ProxyFd(i32),
    VfioUser(PathBuf),
}

/// The QEMU command line for a guest whose device is reached through `attach`.
fn qemu_command(a: &VmArgs, accel: Accel, attach: &Attach, qmp: &Path) -> Vec<String> {
    let accel = match accel {
        Accel::Kvm => qemu::Accel::Kvm,
        _ => qemu::Accel::Tcg,
    };
    // Machine type pc: the device is present from the start, unplugged through ACPI.
    let mut v = qemu::base_argv(&a.qemu, accel, a.memory, "pc", &serial(a), qmp);
    v.push("-device".into());
    v.push(match attach {
        Attach::ProxyFd(fd) => format!("x-pci-proxy-dev,id=tether0,fd={fd}"),
        // Only the JSON form of this device's options takes a socket address.
        Attach::VfioUser(p) => format!(
            "{{\"driver\":\"vfio-user-pci\",\"id\":\"tether0\",\"socket\":{{\"path\":\"{}\",\"type\":\"unix\"}}}}",
            p.display()
        ),
    });
    if let Some(k) = &a.kernel {
        v.extend(["-kernel".into(), k.display().to_string()]);
        if let Some(i) = &a.initrd {
            v.extend(["-initrd".into(), i.display().to_string()]);
        }
        v.extend(["-append".into(), a.append.clone()]);
    }
    v.extend(a.qemu_args.iter().cloned());
    v
}

/// The I/O box of `--local-box`, on the other end of the bridge's in-memory port,
/// until `stop`.
fn local_box(cfg: BoxConfig, port: MemPort, stop: Arc<AtomicBool>) -> Result<()> {
    tracing::info!(target: T, "tether vm: I/O box in this process on an in-memory port");
    let slots = iobox::slots(&cfg)?;
    box_on_port(&cfg.bridge, slots, port, stop)
}

/// An I/O box with `slots` on `port`, until `stop`.
pub fn box_on_port(
    settings: &BridgeSettings,
    slots: Vec<Slot>,
    port: MemPort,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let node = bridge::node(&port, BridgeRole::IoBox, settings)?;
    let fp = bridge::fabric_port(node, Box::new(port), settings);
    let mut b = IoBox::new(fp, slots);
    while !stop.load(Ordering::Relaxed) && !signals::stop_requested() {
        b.poll(Duration::from_millis(1))?;
        b.events.clear();
    }
    Ok(())
}

/// The bridge's port: the configured interface, or with `--local-box` an in-memory
/// port to that box, run in a thread of this process until `stop`.
struct BridgePort {
    port: Box<dyn dataplane::Port>,
    what: String,
    local: Option<std::thread::JoinHandle<Result<()>>>,
    stop: Arc<AtomicBool>,
}

impl BridgePort {
    fn open(a: &VmArgs, cfg: &HostConfig) -> Result<BridgePort> {
        let stop = Arc::new(AtomicBool::new(false));
        match &a.local_box {
            Some(path) => {
                let box_cfg = BoxConfig::load(path)?;
                // The link the host's configuration names, without the network: its
                // MTU (1500 where it does not exist here), pool buffers to match.
                let mtu = bridge::interface_mtu(&cfg.port.interface).unwrap_or(1500);
                let pool = bridge::pool_for(mtu)?;
                let (ours, theirs) = mem::pair(&pool, 4096, mtu);
                let s = stop.clone();
                let t = std::thread::spawn(move || local_box(box_cfg, theirs, s));
                Ok(BridgePort {
                    port: Box::new(ours),
                    what: "an in-memory port to a box in this process".into(),
                    local: Some(t),
                    stop,
                })
            }
            None => {
                let (port, what) = bridge::open_port(cfg.port.kind, &cfg.port.interface)
                    .with_context(|| format!("opening {}", cfg.port.interface))?;
                Ok(BridgePort {
                    port,
                    what,
                    local: None,
                    stop,
                })
            }
        }
    }
}

/// Stops the in-process box, if any.
fn stop_local(stop: &AtomicBool, local: Option<std::thread::JoinHandle<Result<()>>>) -> Result<()> {
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = local {
        match t.join() {
            Ok(r) => r?,
            Err(_) => bail!("the in-process box panicked"),
        }
    }
    Ok(())
}

/// The q35 machine of the vfio-user pool: `--root-ports` root ports, no device at
/// boot.
fn machine(a: &VmArgs, accel: Accel, qmp: &Path) -> qemu::MachineSpec {
    qemu::MachineSpec {
        qemu: a.qemu.clone(),
        accel: match accel {
            Accel::Kvm => qemu::Accel::Kvm,
            _ => qemu::Accel::Tcg,
        },
        memory_mib: a.memory.min(u64::from(u32::MAX)) as u32,
        root_ports: a.root_ports,
        pref64_reserve: qemu::ByteSize::mib(64),
        qmp: qmp.to_path_buf(),
        serial: serial(a),
        boot: a.kernel.as_ref().map(|k| qemu::KernelBoot {
            kernel: k.clone(),
            initrd: a.initrd.clone(),
            append: a.append.clone(),
        }),
        cold_devices: Vec::new(),
        extra: a.qemu_args.clone(),
    }
}

/// How long a hot-added device's guest may take to let it go (native pciehp waits
/// 5 s for the attention button; a TCG guest is slow) before its port is
/// quarantined.
const LEAVE_TIMEOUT_US: u64 = 60_000_000;

/// QEMU's monitor being connected in a thread of its own: a QEMU that realizes a
/// proxy device reads its config space, and answers its monitor only after.
type MonitorThread = std::thread::JoinHandle<Result<Qmp, vmm::qmp::QmpError>>;

/// Serves the VM (taking the monitor from `connecting` once it is there) until QEMU exits (or the deadline, or SIGINT/SIGTERM, or a failed
/// monitor, which stop it); returns QEMU's exit status.
fn run_vm(
    a: &VmArgs,
    cfg: &HostConfig,
    vh: &mut VmHost,
    child: &mut std::process::Child,
    mut connecting: Option<MonitorThread>,
) -> Result<ExitStatus> {
    let deadline = a
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut status = None;
    let end = vm_host::serve(cfg, vh, |vh| {
        if connecting.as_ref().is_some_and(|t| t.is_finished()) {
            match connecting.take().map(|t| t.join()) {
                Some(Ok(Ok(qmp))) => vh.qemu = Some(QemuSlots::new(qmp)),
                Some(Ok(Err(e))) => {
                    tracing::error!(target: T, "tether vm: QEMU's monitor: {e}; stopping QEMU");
                    return true;
                }
                _ => return true,
            }
        }
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            return true;
        }
        deadline.is_some_and(|d| Instant::now() >= d)
    })?;
    if let Some(s) = status {
        return Ok(s);
    }
    match end {
        // QEMU closed the connection (it is exiting): given a moment.
        End::Closed => {
            let end = Instant::now() + Duration::from_secs(5);
            wait_qemu(child, Some(deadline.map_or(end, |d| d.min(end))))
        }
        End::Stopped | End::MonitorFailed => {
            tracing::info!(target: T, "tether vm: stopping QEMU");
            let _ = child.kill();
            Ok(child.wait()?)
        }
    }
}

/// vfio-user with a bridge of its own: the guest boots with no device; every device
/// of the group is hot-added on a root port of its own when it arrives and
/// hot-removed when it leaves.
fn run_pool(
    a: &VmArgs,
    accel: Accel,
    cfg: &HostConfig,
    qmp_path: &Path,
    port: Box<dyn dataplane::Port>,
    what: &str,
) -> Result<ExitStatus> {
    let link = bridge::switched_host_link(cfg, port, what)?;
    let hb = vm_host::host_bridge(cfg, link, LEAVE_TIMEOUT_US)?;
    // The vfio-user sockets go next to QMP's, in the run's private directory.
    let dir = qmp_path
        .parent()
        .context("the monitor's socket is in a directory")?
        .to_path_buf();
    let argv = machine(a, accel, qmp_path).argv()?;
    let mut child = spawn_qemu(a, &argv, -1)?;
    let qmp = Qmp::connect(qmp_path, Duration::from_secs(10)).context("QEMU's monitor")?;
    let version = qmp.version();
    let hide_msix = match a.msix {
        MsixPolicy::Auto => version.vfio_user_msix_unplug_aborts(),
        MsixPolicy::Hide => true,
        MsixPolicy::Offer => false,
    };
    tracing::info!(
        target: T,
        "tether vm: QEMU {version}, {} root ports; MSI-X of hot-plugged devices {}",
        a.root_ports,
        if hide_msix { "hidden" } else { "offered" }
    );
    let vp = VmPool::new(
        hb,
        VmPoolConfig {
            dir: dir.clone(),
            hide_msix,
        },
        Box::new(vm_host::print_note),
    );
    let mut vh = VmHost::new(vp, Some(QemuSlots::new(qmp)));
    let status = run_vm(a, cfg, &mut vh, &mut child, None);
    vm_host::report(&vh.pool);
    drop(vh);
    status
}

/// QEMU's proxy: the group's first device is waited for, then QEMU starts with it
/// present (x-pci-proxy-dev on a socketpair); when it leaves, QEMU is asked to unplug
/// it (ACPI).
fn run_proxy(
    a: &VmArgs,
    accel: Accel,
    cfg: &HostConfig,
    qmp_path: &Path,
    port: Box<dyn dataplane::Port>,
    what: &str,
) -> Result<ExitStatus> {
    let (ours, theirs) = socketpair()?;
    let vp = vm_host::one(
        cfg,
        port,
        what,
        Box::new(ProxyServer::new(ours)),
        PROXY_ID,
        Duration::from_secs_f64(a.device_wait.clamp(0.0, 3600.0)),
    )?;
    let child_fd = theirs.as_raw_fd();
    let argv = qemu_command(a, accel, &Attach::ProxyFd(child_fd), qmp_path);
    let mut child = spawn_qemu(a, &argv, child_fd)?;
    drop(theirs);
    let path = qmp_path.to_path_buf();
    let connecting = std::thread::spawn(move || Qmp::connect(&path, Duration::from_secs(30)));
    let mut vh = VmHost::new(vp, None);
    let status = run_vm(a, cfg, &mut vh, &mut child, Some(connecting));
    vm_host::report(&vh.pool);
    status
}

/// The id of the proxy's device in QEMU.
const PROXY_ID: &str = "tether0";

fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two descriptors, which we then own. Ours is
    // close-on-exec; QEMU's end is made inheritable in the child only.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: both are fresh descriptors from socketpair.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts QEMU with `argv` (in its root's mount namespace with --qemu-root); the
/// descriptor `child_fd` (if not -1) is left open for it.
fn spawn_qemu(a: &VmArgs, argv: &[String], child_fd: i32) -> Result<std::process::Child> {
    tracing::info!(target: T, "tether vm: {}", argv.join(" "));
    let mut cmd = match &a.qemu_root {
        Some(root) => qemu::in_root(root, argv),
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl and fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // QEMU goes when we go, even if we are killed outright.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if child_fd >= 0 && libc::fcntl(child_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {}", argv[0]))
}

/// `--connect SOCKET`: QEMU alone, its device on a bridge that runs elsewhere; waits
/// for QEMU to end (or the timeout, or SIGINT/SIGTERM, which stop it).
fn run_attached(a: &VmArgs, accel: Accel, socket: &Path, qmp: &Path) -> Result<ExitStatus> {
    if !socket.exists() {
        bail!(
            "{}: no socket there (start `tether host --vfio-user {}` first)",
            socket.display(),
            socket.display()
        );
    }
    signals::install();
    let argv = qemu_command(a, accel, &Attach::VfioUser(socket.to_path_buf()), qmp);
    let mut child = spawn_qemu(a, &argv, -1)?;
    let deadline = a
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    wait_qemu(&mut child, deadline)
}

/// Waits for QEMU to exit; at `until`, or on SIGINT/SIGTERM, stops it.
fn wait_qemu(child: &mut std::process::Child, until: Option<Instant>) -> Result<ExitStatus> {
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if signals::stop_requested() || until.is_some_and(|d| Instant::now() >= d) {
            tracing::info!(target: T, "tether vm: stopping QEMU");
            let _ = child.kill();
            return Ok(child.wait()?);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(a: VmArgs) -> Result<ExitStatus> {
    let accel = match a.accel {
        Accel::Auto if kvm_usable(a.kernel.is_some()) => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        x => x,
    };
    // QMP's socket and the vfio-user sockets, in a directory of this run's own (mode
    // 0700, removed at the end).
    let run_dir = crate::rundir::RunDir::new("tether-vm", a.qemu_root.is_some())?;
    let qmp_path = run_dir.path().join("qmp.sock");
    let pool = a.frontend == FrontendKind::VfioUser && a.connect.is_none();
    if a.dry_run {
        if pool {
            println!("{}", machine(&a, accel, &qmp_path).argv()?.join(" "));
            return Ok(std::os::unix::process::ExitStatusExt::from_raw(0));
        }
        let attach = match &a.connect {
            Some(s) => Attach::VfioUser(s.clone()),
            None => Attach::ProxyFd(3),
        };
        println!("{}", qemu_command(&a, accel, &attach, &qmp_path).join(" "));
        return Ok(std::os::unix::process::ExitStatusExt::from_raw(0));
    }
    let config = match (&a.connect, &a.config) {
        (Some(s), _) => return run_attached(&a, accel, s, &qmp_path),
        (None, Some(c)) => c,
        (None, None) => bail!("--config or --connect is needed"),
    };
    let mut cfg = HostConfig::load(config)?;
    signals::install();
    if pool {
        // The bridge's switch has a port for each of the guest's root ports.
        cfg.max_devices = usize::from(a.root_ports).min(hostbridge::switch::MAX_PORTS);
    }
    let BridgePort {
        port,
        what,
        local,
        stop,
    } = BridgePort::open(&a, &cfg)?;
    let status = if pool {
        run_pool(&a, accel, &cfg, &qmp_path, port, &what)
    } else {
        run_proxy(&a, accel, &cfg, &qmp_path, port, &what)
    };
    stop_local(&stop, local)?;
    let status = status?;
    if status.code().is_none() && !signals::stop_requested() && a.timeout.is_none() {
        bail!("QEMU died: {status}");
    }
    Ok(status)
}
