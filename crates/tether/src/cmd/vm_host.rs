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
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hostbridge::vm::{self, Frontend, Note, Policy, VmBridge, VMM_YIELD_AFTER_US};
use vmm::proxy::ProxyServer;
use vmm::vfio_user::VfioUserServer;

use crate::config_file::HostConfig;
use crate::{bridge, print, signals};

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

/// How a VMM front-end's bridge notes are printed.
pub fn print_note(n: Note<'_>) {
    match n {
        Note::Fabric(e) => {
            if let Some(line) = print::describe(e) {
                println!("{line}");
            }
        }
        Note::Enumerated(d) => println!("  bridge side: {}", print::lspci_line(d)),
        Note::Line(line) => println!("{line}"),
    }
}

/// Opens the port, joins the group; guest RAM is mapped later by the front-end.
pub fn open(cfg: &HostConfig) -> Result<VmBridge> {
    let (port, what) = bridge::open_port(cfg.port.kind, &cfg.port.interface)
        .with_context(|| format!("opening {}", cfg.port.interface))?;
    on_port(cfg, port, &what)
}

/// The same on a port the caller made (an in-memory one, for a box in this process).
pub fn on_port(cfg: &HostConfig, port: Box<dyn dataplane::Port>, what: &str) -> Result<VmBridge> {
    let link = bridge::host_link(cfg, port, what)?;
    Ok(VmBridge::new(
        link,
        cfg.gid,
        cfg.max_payload,
        Box::new(print_note),
    ))
}

fn frontend_stats(fe: &Frontend) -> serde_json::Value {
    match fe {
        Frontend::Proxy(p) => serde_json::json!(p.stats()),
        Frontend::VfioUser(v) => serde_json::json!(v.stats()),
    }
}

/// The closing line's counters.
fn summary(fe: &Frontend) -> String {
    match fe {
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

fn stats(vb: &VmBridge, fe: &Frontend) -> serde_json::Value {
    let fp = vb.host.link().fabric();
    let node = fp.node();
    serde_json::json!({
        "role": "host",
        "frontend": fe.name(),
        "gid": vb.gid,
        "mac": node.config().mac.to_string(),
        "device_present": vb.present(),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "root_complex": vb.host.bridge().stats(),
        "host": vb.host.stats(),
        "link": vb.host.link().stats(),
        fe.name(): frontend_stats(fe),
        "sessions": print::sessions_json(node),
    })
}

/// Waits for the device and sets up the front-end the command line asks for.
pub fn start(
    vb: VmBridge,
    make: impl FnOnce() -> Result<Frontend>,
) -> Result<(VmBridge, Frontend)> {
    vm::start(vb, make, &signals::stop_requested)
}

pub fn run(path: &Path, proxy_fd: Option<RawFd>, vfio_user: Option<&Path>) -> Result<()> {
    let cfg = HostConfig::load(path)?;
    signals::install();
    let (mut vb, mut fe) = start(open(&cfg)?, || match (proxy_fd, vfio_user) {
        (Some(fd), None) => {
            println!("serving QEMU's proxy on descriptor {fd}");
            Ok(Frontend::Proxy(ProxyServer::new(inherited_fd(fd)?)))
        }
        (None, Some(p)) => {
            let s =
                VfioUserServer::bind(p).with_context(|| format!("listening on {}", p.display()))?;
            println!("vfio-user server on {}", p.display());
            Ok(Frontend::VfioUser(Box::new(s)))
        }
        _ => bail!("one front-end: --proxy-fd or --vfio-user"),
    })?;
    serve(&cfg, &mut vb, &mut fe, || false, || {})?;
    report(&vb, &fe);
    Ok(())
}

/// Serves the VMM until it closes the proxy connection, `done()` says so, or
/// SIGINT/SIGTERM, with the control socket of `cfg`. `removed()` is called when the
/// device goes away (the launcher unplugs it from the guest).
pub fn serve(
    cfg: &HostConfig,
    vb: &mut VmBridge,
    fe: &mut Frontend,
    mut done: impl FnMut() -> bool,
    removed: impl FnMut(),
) -> Result<()> {
    let control = bridge::control_socket(&cfg.bridge)?;
    let policy = Policy {
        spin: Duration::from_micros(cfg.bridge.spin_us),
        yield_after: Duration::from_micros(cfg.bridge.yield_after_us.unwrap_or(VMM_YIELD_AFTER_US)),
    };
    vm::serve(
        vb,
        fe,
        policy,
        &signals::stop_requested,
        |vb, fe| {
            if let Some(c) = &control {
                c.serve(|_| stats(vb, fe));
            }
            done()
        },
        removed,
    )?;
    Ok(())
}

/// The closing line with the front-end's and the bridge's counters.
pub fn report(vb: &VmBridge, fe: &Frontend) {
    let b = vb.host.bridge().stats();
    println!(
        "tether host: stopped; {}; {} DMA reads, {} DMA writes, {} refused, {} completion timeouts",
        summary(fe),
        b.dma_reads,
        b.dma_writes,
        b.dma_read_refused + b.dma_write_dropped,
        b.completion_timeouts
    );
}
