//! `tether host --config host.toml --proxy-fd N`: the host bridge as the remote end of
//! QEMU's `x-pci-proxy-dev` (one end of a socketpair; QEMU has the other as `fd=`).
//! It waits for a device in its group, then serves QEMU until QEMU goes away or
//! SIGINT/SIGTERM.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmm::proxy::{ProxyError, ProxyServer};

use crate::config::HostConfig;
use crate::vm_bridge::{DeviceEvent, VmBridge};
use crate::{bridge, signals};

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

fn stats(vb: &VmBridge, server: &ProxyServer) -> serde_json::Value {
    let fp = vb.host.link().fabric();
    let node = fp.node();
    serde_json::json!({
        "role": "host",
        "frontend": "qemu-proxy",
        "gid": vb.cfg.gid,
        "mac": node.config().mac.to_string(),
        "device_present": vb.present(),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "root_complex": vb.host.bridge().stats(),
        "host": vb.host.stats(),
        "proxy": server.stats(),
        "sessions": bridge::sessions_json(node),
    })
}

pub fn run(path: &Path, fd: RawFd) -> Result<()> {
    let cfg = HostConfig::load(path)?;
    signals::install();
    let sock = inherited_fd(fd)?;
    let mut vb = VmBridge::open(cfg)?;
    vb.wait_for_device(DEVICE_WAIT)?;
    let mut server = ProxyServer::new(sock);
    println!("serving QEMU's proxy on descriptor {fd}");
    serve(&mut vb, &mut server, || false)?;
    report(&vb, &server);
    Ok(())
}

/// Serves QEMU until it closes the connection, `done()` says so, or SIGINT/SIGTERM.
pub fn serve(
    vb: &mut VmBridge,
    server: &mut ProxyServer,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let control = bridge::control_socket(&vb.cfg.bridge)?;
    let spin = Duration::from_micros(vb.cfg.bridge.spin_us);
    let mut events = Vec::new();
    let mut last_work = Instant::now();
    let mut served = Instant::now();
    while !signals::stop_requested() {
        let frames = vb.host.link().fabric().node().stats().frames_in;
        vb.poll(Duration::ZERO, &mut events);
        let mut worked = vb.host.link().fabric().node().stats().frames_in != frames;
        for e in events.drain(..) {
            worked = true;
            match e {
                DeviceEvent::Intx(level) => server.set_intx(level),
                DeviceEvent::Vector(_) => {}
                DeviceEvent::Removed => {
                    server.set_intx(false);
                    println!("device removed: the guest reads all-ones until it returns")
                }
                DeviceEvent::Returned => {
                    server.device_changed();
                    println!("device back (reset by its box's restart)")
                }
            }
        }
        match server.serve(&mut vb.function(), 16) {
            Ok(n) => worked |= n > 0,
            Err(ProxyError::Closed) => {
                println!("QEMU closed the connection");
                break;
            }
            Err(e) => bail!("proxy connection: {e} (the connection cannot go on)"),
        }
        if worked {
            last_work = Instant::now();
        } else if last_work.elapsed() >= spin {
            // Idle: sleep until QEMU, the guest's EOI, a frame or a timer needs us.
            let (port_fd, until_timer) = vb.host.link().fabric().wait_hint();
            let mut fds = server.wait_fds();
            fds.extend(port_fd);
            let cap = if port_fd.is_some() {
                Duration::from_millis(10)
            } else {
                Duration::from_micros(50)
            };
            vmm::sys::wait_readable(&fds, until_timer.min(cap))?;
        }
        if served.elapsed() >= Duration::from_millis(10) {
            if let Some(c) = &control {
                c.serve(|_| stats(vb, server));
            }
            if done() {
                break;
            }
            served = Instant::now();
        }
    }
    Ok(())
}

/// The closing line with the connection's and the bridge's counters.
pub fn report(vb: &VmBridge, server: &ProxyServer) {
    let p = server.stats();
    let b = vb.host.bridge().stats();
    println!(
        "tether host: stopped; {} config reads, {} config writes, {} BAR reads, {} BAR writes, {} irqfd sets, {} INTx asserts, {} INTx signals, {} resamples; {} DMA reads, {} DMA writes, {} refused, {} completion timeouts",
        p.config_reads,
        p.config_writes,
        p.bar_reads,
        p.bar_writes,
        p.irqfd_sets,
        p.intx_asserts,
        p.intx_signals,
        p.resamples,
        b.dma_reads,
        b.dma_writes,
        b.dma_read_refused + b.dma_write_dropped,
        b.completion_timeouts
    );
}
