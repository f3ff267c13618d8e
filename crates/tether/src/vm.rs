//! `tether vm`: starts the host bridge and an unmodified QEMU whose guest uses the
//! group's device through the bridge: guest RAM as a shared memfd, the device as
//! QEMU's `x-pci-proxy-dev` on one end of a socketpair, the bridge on the other.
//! The guest's serial console is this command's standard output; the command ends
//! with QEMU's exit status.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmm::proxy::ProxyServer;

use crate::config::HostConfig;
use crate::proxy_host;
use crate::signals;
use crate::vm_bridge::VmBridge;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm can run the guest, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(clap::Args)]
pub struct VmArgs {
    /// The host bridge's configuration: group, port, bridge settings (docs/cli.md).
    #[arg(short, long)]
    config: PathBuf,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u64,
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// Linux kernel to boot (without it, the firmware boots from the disks, the
    /// remote one included).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    append: String,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Stop the guest after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seconds to wait for the device to appear in the group.
    #[arg(long, default_value_t = 60.0)]
    device_wait: f64,
    /// Print the QEMU command line instead of running it.
    #[arg(long)]
    dry_run: bool,
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

/// The QEMU command line for a guest whose device is on descriptor `fd`.
fn qemu_command(a: &VmArgs, accel: Accel, fd: i32) -> Vec<String> {
    let mem = format!("{}M", a.memory);
    let (accel, cpu) = match accel {
        // -arch-capabilities: QEMU's "host" model aborts on PVM-backed KVM without it.
        Accel::Kvm => ("kvm", "host,-arch-capabilities"),
        _ => ("tcg", "max"),
    };
    let mut v: Vec<String> = [
        a.qemu.as_str(),
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        "1",
        "-m",
        &mem,
        "-object",
        &format!("memory-backend-memfd,id=tether-ram,size={mem},share=on"),
        "-machine",
        "pc,memory-backend=tether-ram",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-device",
        &format!("x-pci-proxy-dev,id=tether0,fd={fd}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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

pub fn run(a: VmArgs) -> Result<ExitStatus> {
    let accel = match a.accel {
        Accel::Auto if kvm_usable(a.kernel.is_some()) => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        x => x,
    };
    if a.dry_run {
        println!("{}", qemu_command(&a, accel, 3).join(" "));
        return Ok(std::os::unix::process::ExitStatusExt::from_raw(0));
    }
    let cfg = HostConfig::load(&a.config)?;
    signals::install();
    let mut vb = VmBridge::open(cfg)?;
    vb.wait_for_device(Duration::from_secs_f64(a.device_wait))?;
    let (ours, theirs) = socketpair()?;
    let child_fd = theirs.as_raw_fd();
    let argv = qemu_command(&a, accel, child_fd);
    eprintln!("tether vm: {}", argv.join(" "));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(child_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))?;
    drop(theirs);
    let mut server = ProxyServer::new(ours);
    let deadline = a
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut status = None;
    let served = proxy_host::serve(&mut vb, &mut server, || {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            return true;
        }
        deadline.is_some_and(|d| Instant::now() >= d)
    });
    let status = match status {
        Some(s) => s,
        None => {
            // QEMU closed the connection (it is exiting), or we stop it.
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(s) = child.try_wait()? {
                    break s;
                }
                if Instant::now() >= end
                    || signals::stop_requested()
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    eprintln!("tether vm: stopping QEMU");
                    let _ = child.kill();
                    break child.wait()?;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    proxy_host::report(&vb, &server);
    served?;
    if status.code().is_none() && !signals::stop_requested() && deadline.is_none() {
        bail!("QEMU died: {status}");
    }
    Ok(status)
}
