//! `tether host --config host.toml --proxy-fd N | --vfio-user PATH`: the host bridge
//! under one VMM front-end, and what `tether vm` shares with it: the host bridge
//! under a VMM ([`hostbridge::vm_pool`]), its log lines, its counters and its loop.
//!
//! - `--proxy-fd N`: the remote end of QEMU's `x-pci-proxy-dev` (one end of a
//!   socketpair; QEMU has the other as `fd=`). Ends when QEMU closes it.
//! - `--vfio-user PATH`: a vfio-user server on a Unix socket (QEMU >= 10.1
//!   `vfio-user-pci`). Clients may come and go; it runs until SIGINT/SIGTERM.
//!
//! Either way it first waits for a device in its group, and serves that device (and
//! it again when its box restarts) on the front-end.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::poll::{self, IdlePolicy, Pollable, Stop, Waker};
use hostbridge::host_bridge::{HostBridge, HostBridgeConfig};
use hostbridge::vm::{Note, VMM_YIELD_AFTER_US};
use hostbridge::vm_pool::{VmChange, VmHost, VmPool};
use tracing::{error, info, warn};
use vmm::frontend::{Frontend, FrontendStats};
use vmm::proxy::ProxyServer;
use vmm::vfio_user::VfioUserServer;

use crate::config_file::HostConfig;
use crate::control::Endpoints;
use crate::{bridge, print, signals};

/// The target of the host bridge's log events under a VMM.
const T: &str = "tether::host";

/// How long the bridge waits for its device before giving up (QEMU waits meanwhile).
pub const DEVICE_WAIT: Duration = Duration::from_secs(60);

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

/// How the bridge's notes are printed.
pub fn print_note(n: Note<'_>) {
    match n {
        Note::Enumerated(d) => info!(target: T, "bridge side: {}", print::lspci_line(d)),
        Note::Warning(line) => warn!(target: T, "{line}"),
    }
}

/// Prints a change of the pool that is a log line (the others are the program's to
/// act on); fabric events through `log`.
pub fn print_change(log: &mut print::FabricLog, c: &VmChange) {
    match c {
        VmChange::Fabric(e) => log.log(Instant::now(), e),
        VmChange::Line(l) => info!(target: T, "{l}"),
        VmChange::Warning(l) => warn!(target: T, "{l}"),
        VmChange::MonitorFailed(e) => {
            error!(target: T, "tether vm: QEMU's monitor failed ({e}); stopping QEMU")
        }
        VmChange::Plug { .. } | VmChange::Unplug { .. } | VmChange::Closed => {}
    }
}

/// The host bridge on `link` with `cfg`'s group and payload size, and its devices'
/// time to leave (`leave_timeout_us`).
pub fn host_bridge(
    cfg: &HostConfig,
    link: hostbridge::FabricLink,
    leave_timeout_us: u64,
) -> Result<HostBridge> {
    let host = rootcomplex::Host::new(
        hostbridge::settings::root_complex_config(cfg.max_payload),
        rootcomplex::MemoryMap::new(),
        (0, 0),
        rootcomplex::BarWindows::default(),
        link,
    );
    Ok(HostBridge::new(
        HostBridgeConfig {
            gid: cfg.gid,
            leave_timeout: leave_timeout_us,
        },
        host,
    )?)
}

fn frontend_json(s: &FrontendStats) -> serde_json::Value {
    serde_json::json!(s)
}

/// The closing line's counters of a front-end.
pub fn summary(s: &FrontendStats) -> String {
    match s {
        FrontendStats::Proxy(p) => format!(
            "{} config reads, {} config writes, {} BAR reads, {} BAR writes, {} irqfd sets, {} INTx asserts, {} INTx signals, {} resamples",
            p.config_reads, p.config_writes, p.bar_reads, p.bar_writes, p.irqfd_sets, p.intx_asserts, p.intx_signals, p.resamples
        ),
        FrontendStats::VfioUser(v) => format!(
            "{} connections, {} requests, {} config reads, {} config writes, {} BAR reads, {} BAR writes, {} DMA maps ({} without fd), {} DMA messages, {} INTx signals, {} MSI signals, {} MSI-X signals, {} release requests, {} errors",
            v.connections, v.requests, v.config_reads, v.config_writes, v.bar_reads, v.bar_writes, v.dma_maps, v.dma_maps_without_fd, v.dma_messages, v.intx_signals, v.msi_signals, v.msix_signals, v.release_requests, v.errors
        ),
    }
}

/// Every counter of a host bridge under a VMM, for `ctl stats`.
pub fn stats(vp: &VmPool) -> serde_json::Value {
    let hb = vp.bridge();
    let h = hb.host();
    let fp = h.link().fabric();
    let node = fp.node();
    let mut v = serde_json::json!({
        "role": "host",
        "gid": hb.gid(),
        "mac": node.config().mac.to_string(),
        "port": fp.port().stats(),
        "fabric": node.stats(),
        "root_complex": h.bridge().stats(),
        "host": h.stats(),
        "link": h.link().stats(),
        "routing": hb.router().stats(),
        "hotplug": hb.hotplug().stats(),
        "switch": {
            "ports": hb.router().switch().capacity(),
            "in_use": hb.router().switch().live_ports().count(),
            "stats": hb.router().switch().stats(),
        },
        "vm": vp.stats(),
        "devices": vp.served().map(|s| serde_json::json!({
            "id": s.id,
            "port": s.port.index(),
            "box": s.key.mac.to_string(),
            "slot": s.key.slot,
            "leaving": s.leaving,
            "frontend": frontend_json(&s.frontend),
        })).collect::<Vec<_>>(),
        "sessions": print::sessions_json(node),
    });
    match vp.one_frontend() {
        Some((name, s, present)) => {
            v["frontend"] = name.into();
            v["device_present"] = present.into();
            v[name] = frontend_json(&s);
        }
        None => v["frontend"] = "vfio-user pool".into(),
    }
    v
}

/// Why [`serve`] ended.
#[derive(Debug)]
pub enum End {
    /// SIGINT/SIGTERM, or `each` said so.
    Stopped,
    /// The VMM closed the one front-end's connection for good.
    Closed,
    /// The VMM's monitor failed.
    MonitorFailed,
}

/// The host bridge under a VMM as the program runs it: each round's log lines
/// printed, its counters on the control socket and the metrics endpoint, `each` asked every
/// [`CHECK_EVERY`] whether to stop.
struct Served<'a, F> {
    vh: &'a mut VmHost,
    endpoints: Endpoints,
    /// When `each` was last asked.
    checked: Instant,
    log: print::FabricLog,
    each: F,
    stop: Stop,
    end: End,
}

impl<F: FnMut(&mut VmHost) -> bool> Pollable for Served<'_, F> {
    fn round(&mut self, now: Instant) -> std::io::Result<bool> {
        let worked = self.vh.round(now)?;
        for c in std::mem::take(&mut self.vh.changes) {
            print_change(&mut self.log, &c);
            match c {
                VmChange::Closed => {
                    self.end = End::Closed;
                    self.stop.request();
                }
                VmChange::MonitorFailed(_) => {
                    self.end = End::MonitorFailed;
                    self.stop.request();
                }
                _ => {}
            }
        }
        let pool = &self.vh.pool;
        self.log
            .log_summary(now, || pool.bridge().host().link().fabric().node().stats());
        let pool = &self.vh.pool;
        self.endpoints.serve(|cmd| match cmd {
            "tree" => serde_json::json!({ "tree": print::switch_tree(pool.bridge()) }),
            _ => stats(pool),
        });
        if signals::stop_requested() {
            self.stop.request();
        }
        // The program's checks (has QEMU exited: a system call) at most this often,
        // not at every round of a busy-polling loop.
        if now.duration_since(self.checked) >= CHECK_EVERY {
            self.checked = now;
            if (self.each)(self.vh) {
                self.stop.request();
            }
        }
        Ok(worked)
    }

    fn wake(&self, w: &mut Waker) {
        self.vh.wake(w);
        // Stop requests and the program's checks come at least this often.
        w.deadline(Instant::now() + CHECK_EVERY);
    }
}

/// How often the serving loop asks the program's `each` whether to stop.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// Serves the VMM until it closes the one front-end's connection, its monitor fails,
/// `each()` (every [`CHECK_EVERY`]) says to stop, or SIGINT/SIGTERM; with the control
/// socket of `cfg`. Returns why it ended.
pub fn serve(
    cfg: &HostConfig,
    vh: &mut VmHost,
    each: impl FnMut(&mut VmHost) -> bool,
) -> Result<End> {
    let policy = IdlePolicy::from_settings(
        cfg.bridge.spin_us,
        Some(cfg.bridge.yield_after_us.unwrap_or(VMM_YIELD_AFTER_US)),
    );
    let stop = Stop::new();
    let mut s = Served {
        vh,
        endpoints: bridge::endpoints(&cfg.bridge)?,
        checked: Instant::now(),
        log: print::FabricLog::default(),
        each,
        stop: stop.clone(),
        end: End::Stopped,
    };
    poll::run(&mut s, policy, &stop).context("serving the VMM")?;
    Ok(s.end)
}

/// The closing line with the front-ends' and the bridge's counters.
pub fn report(vp: &VmPool) {
    let b = vp.bridge().host().bridge().stats();
    let s = vp.stats();
    let front = match vp.one_frontend() {
        Some((_, f, _)) => summary(&f),
        None => format!(
            "{} hot-added, {} hot-removed, {} ghost accesses, {} VMM errors",
            s.plugged, s.unplugged, s.ghost_accesses, s.vmm_errors
        ),
    };
    info!(
        target: T,
        "tether host: stopped; {front}; {} DMA reads, {} DMA writes, {} refused, {} completion timeouts",
        b.dma_reads,
        b.dma_writes,
        b.dma_read_refused + b.dma_write_dropped,
        b.completion_timeouts
    );
}

/// The pool of one front-end `fe` on `port`, once its device is there (up to
/// `wait`).
pub fn one(
    cfg: &HostConfig,
    port: Box<dyn dataplane::Port>,
    what: &str,
    fe: Box<dyn Frontend>,
    id: &str,
    wait: Duration,
) -> Result<VmPool> {
    let link = bridge::switched_host_link(cfg, port, what)?;
    // A device that leaves is let go of at once: the front-end answers for it.
    let hb = host_bridge(cfg, link, 5_000_000)?;
    let mut vp = VmPool::one(hb, fe, id, Box::new(print_note));
    let mut changes = Vec::new();
    let r = vp.wait_for_device(wait, &signals::stop_requested, &mut changes);
    let mut log = print::FabricLog::default();
    for c in &changes {
        print_change(&mut log, c);
    }
    r?;
    Ok(vp)
}

pub fn run(path: &Path, proxy_fd: Option<RawFd>, vfio_user: Option<&Path>) -> Result<()> {
    let cfg = HostConfig::load(path)?;
    signals::install();
    let fe: Box<dyn Frontend> = match (proxy_fd, vfio_user) {
        (Some(fd), None) => {
            info!(target: T, "serving QEMU's proxy on descriptor {fd}");
            Box::new(ProxyServer::new(inherited_fd(fd)?))
        }
        (None, Some(p)) => {
            let s =
                VfioUserServer::bind(p).with_context(|| format!("listening on {}", p.display()))?;
            info!(target: T, "vfio-user server on {}", p.display());
            Box::new(s)
        }
        _ => bail!("one front-end: --proxy-fd or --vfio-user"),
    };
    let (port, what) = bridge::open_port(cfg.port.kind, &cfg.port.interface)
        .with_context(|| format!("opening {}", cfg.port.interface))?;
    let vp = one(&cfg, port, &what, fe, "tether0", DEVICE_WAIT)?;
    let mut vh = VmHost::new(vp, None);
    serve(&cfg, &mut vh, |_| false)?;
    report(&vh.pool);
    Ok(())
}
