//! `tether host --config host.toml --proxy-fd N | --vfio-user PATH`: the host bridge
//! under a VMM front-end.
//!
//! - `--proxy-fd N`: the remote end of QEMU's `x-pci-proxy-dev` (one end of a
//!   socketpair; QEMU has the other as `fd=`). Ends when QEMU closes it.
//! - `--vfio-user PATH`: a vfio-user server on a Unix socket (QEMU >= 10.1
//!   `vfio-user-pci`). Clients may come and go; it runs until SIGINT/SIGTERM.
//!
//! Either way it first waits for a device in its group.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmm::proxy::{ProxyError, ProxyServer};
use vmm::vfio_user::VfioUserServer;

use crate::config::HostConfig;
use crate::vm_bridge::{DeviceEvent, VmBridge};
use crate::{bridge, print, signals};

/// How long the bridge waits for its device before giving up (QEMU waits meanwhile).
const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// Takes ownership of inherited descriptor `fd`, checking that it is open.
pub fn inherited_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("descriptor {fd} is not an open socket this process inherited");
    }
    // SAFETY: the descriptor is open, and nothing else in this process owns it: it was
    // inherited for this use and is named once on the command line.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The VMM side of the bridge.
pub enum Frontend {
    Proxy(ProxyServer),
    VfioUser(VfioUserServer),
}

impl Frontend {
    fn name(&self) -> &'static str {
        match self {
            Frontend::Proxy(_) => "qemu-proxy",
            Frontend::VfioUser(_) => "vfio-user",
        }
    }

    fn stats_json(&self) -> serde_json::Value {
        match self {
            Frontend::Proxy(p) => serde_json::json!(p.stats()),
            Frontend::VfioUser(v) => serde_json::json!(v.stats()),
        }
    }

    fn wait_fds(&self) -> Vec<RawFd> {
        match self {
            Frontend::Proxy(p) => p.wait_fds(),
            Frontend::VfioUser(v) => v.wait_fds(),
        }
    }

    /// Handles what the VMM sent; `None` when the VMM closed a connection that cannot
    /// come back (the proxy's socketpair).
    fn serve(&mut self, vb: &mut VmBridge) -> Result<Option<usize>> {
        match self {
            Frontend::Proxy(p) => match p.serve(&mut vb.function(), 16) {
                Ok(n) => Ok(Some(n)),
                Err(ProxyError::Closed) => Ok(None),
                Err(e) => bail!("proxy connection: {e} (the connection cannot go on)"),
            },
            Frontend::VfioUser(v) => {
                let was = v.connected();
                let n = v
                    .serve(&mut vb.function(), 16)
                    .context("vfio-user connection")?;
                match (was, v.connected()) {
                    (false, true) => println!("vfio-user: client connected"),
                    (true, false) => println!("vfio-user: client disconnected"),
                    _ => {}
                }
                Ok(Some(n))
            }
        }
    }

    fn device_event(&mut self, e: DeviceEvent, vb: &mut VmBridge) {
        match (self, e) {
            (Frontend::Proxy(p), DeviceEvent::Intx(level)) => p.set_intx(level),
            (Frontend::VfioUser(v), DeviceEvent::Intx(level)) => v.set_intx(level),
            (Frontend::VfioUser(v), DeviceEvent::Vector(n)) => v.vector(n),
            (Frontend::Proxy(_), DeviceEvent::Vector(_)) => {}
            (Frontend::Proxy(p), DeviceEvent::Removed) => {
                p.set_intx(false);
                println!("device removed: the guest reads all-ones until it returns");
            }
            (Frontend::VfioUser(v), DeviceEvent::Removed) => {
                let asked = v.request_release();
                println!(
                    "device removed: the guest reads all-ones{}",
                    if asked {
                        "; asked the VMM to release it (device request)"
                    } else {
                        ""
                    }
                );
            }
            (Frontend::Proxy(p), DeviceEvent::Returned) => {
                p.device_changed();
                println!("device back (reset by its box's restart)");
            }
            (Frontend::VfioUser(v), DeviceEvent::Returned) => {
                v.device_changed();
                match vb.enumerate_device() {
                    Ok(()) => println!("device back (reset by its box's restart), set up again"),
                    Err(e) => println!("device back, but: {e:#}"),
                }
            }
        }
    }

    /// The closing line's counters.
    fn summary(&self) -> String {
        match self {
            Frontend::Proxy(p) => {
                let p = p.stats();
                format!(
                    "{} config reads, {} config writes, {} BAR reads, {} BAR writes, {} irqfd sets, {} INTx asserts, {} INTx signals, {} resamples",
                    p.config_reads, p.config_writes, p.bar_reads, p.bar_writes, p.irqfd_sets, p.intx_asserts, p.intx_signals, p.resamples
                )
            }
            Frontend::VfioUser(v) => {
                let v = v.stats();
                format!(
                    "{} connections, {} requests, {} config reads, {} config writes, {} BAR reads, {} BAR writes, {} DMA maps ({} without fd), {} DMA messages, {} INTx signals, {} MSI signals, {} MSI-X signals, {} release requests, {} errors",
                    v.connections, v.requests, v.config_reads, v.config_writes, v.bar_reads, v.bar_writes, v.dma_maps, v.dma_maps_without_fd, v.dma_messages, v.intx_signals, v.msi_signals, v.msix_signals, v.release_requests, v.errors
                )
            }
        }
    }
}

fn stats(vb: &VmBridge, fe: &Frontend) -> serde_json::Value {
    let fp = vb.host.link().fabric();
    let node = fp.node();
    serde_json::json!({
        "role": "host",
        "frontend": fe.name(),
        "gid": vb.cfg.gid,
        "mac": node.config().mac.to_string(),
        "device_present": vb.present(),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "root_complex": vb.host.bridge().stats(),
        "host": vb.host.stats(),
        "link": vb.host.link().stats(),
        fe.name(): fe.stats_json(),
        "sessions": print::sessions_json(node),
    })
}

/// The VMM front-ends' default for `[bridge] yield_after_us`: QEMU's threads share
/// the cores with the bridge (measured with a TCG guest on two cores: 4 KiB random
/// reads about twice as fast as with a bridge that spins without yielding).
pub const VMM_YIELD_AFTER_US: u64 = 50;

/// Waits for the device and sets up the front-end the command line asks for.
pub fn start(
    mut vb: VmBridge,
    make: impl FnOnce() -> Result<Frontend>,
) -> Result<(VmBridge, Frontend)> {
    vb.wait_for_device(DEVICE_WAIT)?;
    let fe = make()?;
    if let Frontend::VfioUser(_) = fe {
        vb.enumerate_device()?;
    }
    Ok((vb, fe))
}

pub fn run(path: &Path, proxy_fd: Option<RawFd>, vfio_user: Option<&Path>) -> Result<()> {
    let cfg = HostConfig::load(path)?;
    signals::install();
    let (mut vb, mut fe) = start(VmBridge::open(cfg)?, || match (proxy_fd, vfio_user) {
        (Some(fd), None) => {
            println!("serving QEMU's proxy on descriptor {fd}");
            Ok(Frontend::Proxy(ProxyServer::new(inherited_fd(fd)?)))
        }
        (None, Some(p)) => {
            let s =
                VfioUserServer::bind(p).with_context(|| format!("listening on {}", p.display()))?;
            println!("vfio-user server on {}", p.display());
            Ok(Frontend::VfioUser(s))
        }
        _ => bail!("one front-end: --proxy-fd or --vfio-user"),
    })?;
    serve(&mut vb, &mut fe, || false, || {})?;
    report(&vb, &fe);
    Ok(())
}

/// Serves the VMM until it closes the proxy connection, `done()` says so, or
/// SIGINT/SIGTERM. `removed()` is called when the device goes away (the launcher
/// unplugs it from the guest).
pub fn serve(
    vb: &mut VmBridge,
    fe: &mut Frontend,
    mut done: impl FnMut() -> bool,
    mut removed: impl FnMut(),
) -> Result<()> {
    let control = bridge::control_socket(&vb.cfg.bridge)?;
    let spin = Duration::from_micros(vb.cfg.bridge.spin_us);
    let yield_after =
        Duration::from_micros(vb.cfg.bridge.yield_after_us.unwrap_or(VMM_YIELD_AFTER_US));
    let mut events = Vec::new();
    let mut last_work = Instant::now();
    let mut served = Instant::now();
    while !signals::stop_requested() {
        let frames = vb.host.link().fabric().node().stats().frames_in;
        vb.poll(Duration::ZERO, &mut events);
        let mut worked = vb.host.link().fabric().node().stats().frames_in != frames;
        for e in std::mem::take(&mut events) {
            worked = true;
            if e == DeviceEvent::Removed {
                removed();
            }
            fe.device_event(e, vb);
        }
        match fe.serve(vb)? {
            Some(n) => worked |= n > 0,
            None => {
                println!("QEMU closed the connection");
                break;
            }
        }
        if worked {
            last_work = Instant::now();
        } else if last_work.elapsed() >= spin {
            // Idle: sleep until the VMM, an interrupt acknowledgement, a frame or a
            // timer needs us.
            let (port_fd, until_timer) = vb.host.link().fabric().wait_hint();
            let mut fds = fe.wait_fds();
            fds.extend(port_fd);
            let cap = if port_fd.is_some() {
                Duration::from_millis(10)
            } else {
                Duration::from_micros(50)
            };
            vmm::sys::wait_readable(&fds, until_timer.min(cap))?;
        } else if last_work.elapsed() >= yield_after {
            // Spinning: let a thread that waits for this core run first.
            std::thread::yield_now();
        }
        if served.elapsed() >= Duration::from_millis(10) {
            if let Some(c) = &control {
                c.serve(|_| stats(vb, fe));
            }
            if done() {
                break;
            }
            served = Instant::now();
        }
    }
    Ok(())
}

/// The closing line with the front-end's and the bridge's counters.
pub fn report(vb: &VmBridge, fe: &Frontend) {
    let b = vb.host.bridge().stats();
    println!(
        "tether host: stopped; {}; {} DMA reads, {} DMA writes, {} refused, {} completion timeouts",
        fe.summary(),
        b.dma_reads,
        b.dma_writes,
        b.dma_read_refused + b.dma_write_dropped,
        b.completion_timeouts
    );
}
