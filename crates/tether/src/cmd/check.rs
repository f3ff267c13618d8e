//! `tether check-config FILE...`: configuration files checked as `tether iobox`,
//! `tether host` and `tether manager` load them (every value, the key and token files
//! they name, a virtio-blk device's disk), without opening a port or touching the
//! network; a summary of each valid file, the reason for each invalid one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::iobox::{model_name, open_disk};
use crate::config_file::{BoxConfig, HostConfig, ManagerConfig, Model};

/// What a file is, from its keys: a box has `[[device]]` tables, a host a `gid`, a
/// manager a `listen` address.
enum Kind {
    Box,
    Host,
    Manager,
}

fn kind(path: &Path) -> Result<Kind> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // A file that does not parse is named by the loader's own message below.
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(if text.contains("[[device]]") {
            Kind::Box
        } else {
            Kind::Host
        });
    };
    let found: Vec<(Kind, &str)> = [
        (Kind::Box, "device", "[[device]] (a box's)"),
        (Kind::Host, "gid", "gid (a host's)"),
        (Kind::Manager, "listen", "listen (a manager's)"),
    ]
    .into_iter()
    .filter(|(_, key, _)| table.contains_key(*key))
    .map(|(k, _, what)| (k, what))
    .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one").0),
        0 => bail!(
            "{}: neither a box's configuration ([[device]] tables) nor a host's (gid = N) \
             nor a manager's (listen = ADDR:PORT)",
            path.display()
        ),
        _ => bail!(
            "{}: {}: which is it?",
            path.display(),
            found
                .iter()
                .map(|(_, w)| *w)
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

/// The one-line summary of a valid file; an error names the file (as the loaders'
/// errors do).
fn check(path: &Path) -> Result<String> {
    match kind(path)? {
        Kind::Box => {
            let c = BoxConfig::load(path)?;
            let mut devices = Vec::new();
            for d in &c.devices {
                let what = match d.model {
                    Model::VirtioBlk => {
                        let disk = open_disk(d).with_context(|| path.display().to_string())?;
                        format!(
                            "{} of {} bytes{}",
                            d.path.as_deref().unwrap_or(Path::new("?")).display(),
                            endpoint::virtio::blk::BlockBackend::len(&disk),
                            if d.read_only { ", read-only" } else { "" }
                        )
                    }
                    Model::VirtioNet => match (&d.tap, &d.interface) {
                        (Some(t), _) => format!("TAP {t}"),
                        (None, Some(i)) => format!("interface {i}"),
                        (None, None) => String::new(),
                    },
                    Model::Memdev => format!("{} bytes", d.buffer_size),
                };
                devices.push(format!(
                    "slot {} {} in group {} ({what})",
                    d.slot,
                    model_name(d.model),
                    d.gid
                ));
            }
            Ok(format!(
                "an I/O box on {} ({}), {} group key(s){}; {}",
                c.port.interface,
                c.port.kind.name(),
                c.bridge.group_keys.len(),
                endpoints(&c.bridge),
                devices.join("; ")
            ))
        }
        Kind::Manager => {
            let c = ManagerConfig::load(path)?;
            Ok(format!(
                "a manager on {}, API on {}, {} group key(s), requests {}",
                c.interface,
                c.listen,
                c.group_keys.len(),
                if c.sign.is_some() {
                    "signed"
                } else {
                    "unsigned"
                }
            ))
        }
        Kind::Host => {
            let c = HostConfig::load(path)?;
            Ok(format!(
                "a host in group {} on {} ({}), {} group key(s){}; memory {:#x}+{:#x}, \
                 max_payload {}, {} switch ports",
                c.gid,
                c.port.interface,
                c.port.kind.name(),
                c.bridge.group_keys.len(),
                endpoints(&c.bridge),
                c.memory.base,
                c.memory.size,
                c.max_payload,
                c.max_devices
            ))
        }
    }
}

/// Checks every file; fails when any is not valid (each said why on stderr).
pub fn run(files: &[PathBuf]) -> Result<()> {
    let mut bad = 0;
    for f in files {
        match check(f) {
            Ok(summary) => println!("{}: valid: {summary}", f.display()),
            Err(e) => {
                eprintln!("tether: {e:#}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} configuration files not valid", files.len());
    }
    Ok(())
}

/// The control socket and metrics address a bridge's settings name, for the summary.
fn endpoints(b: &crate::config_file::BridgeSettings) -> String {
    let mut s = String::new();
    if let Some(c) = &b.control {
        s += &format!(", control {}", c.display());
    }
    if let Some(m) = &b.metrics {
        s += &format!(", metrics {m}");
    }
    s
}
