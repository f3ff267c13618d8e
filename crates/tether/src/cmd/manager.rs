//! `tether manager --config manager.toml [--listen ADDR]`: the management service in
//! the style of ExpEther Manager: it watches the segment as `ctl list` does and serves
//! an HTTP JSON API to list the devices and bridges and to move devices between
//! groups (the `manager` crate; docs/manager-openapi.json). Runs until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config_file::ManagerConfig;

#[derive(clap::Args)]
pub struct ManagerArgs {
    /// The manager's configuration: listen, interface, token_file, sign, [keys]
    /// (docs/cli.md, "tether manager").
    #[arg(short, long)]
    config: PathBuf,
    /// Listen on ADDR:PORT instead of the configuration's `listen` (port 0: any free
    /// port; the log says which).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
}

pub fn run(a: ManagerArgs) -> Result<()> {
    let c = ManagerConfig::load(&a.config)?;
    let signer = c
        .sign
        .as_deref()
        .map(fabric::keys::ManagerSigner::read)
        .transpose()?;
    let interface = c.interface.clone();
    let cfg = manager::ServiceConfig {
        interface: c.interface,
        listen: a.listen.unwrap_or(c.listen),
        token: c.token,
        keys: c.group_keys,
        signer,
        stale: Duration::from_millis(c.stale_ms),
        move_timeout: Duration::from_millis(c.move_timeout_ms),
    };
    manager::serve(cfg, |addr| {
        tracing::info!(
            target: "tether::manager",
            "tether manager: listening on http://{addr} (the segment on {interface})"
        )
    })
    .context("tether manager")?;
    tracing::info!(target: "tether::manager", "tether manager: stopped");
    Ok(())
}
