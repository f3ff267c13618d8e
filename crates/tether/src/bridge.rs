//! What every bridge program (`iobox`, `host`, `demo`, `bench`) sets up the same way
//! from its configuration: its dataplane port, its fabric node, its control socket.

use anyhow::Result;
use dataplane::open::PortKind;
use dataplane::Port;
use fabric::port::node_for;
use fabric::{FabricPort, Node};
use wire::BridgeRole;

use crate::config_file::{BridgeSettings, HostConfig};

pub use dataplane::open::{interface_mtu, pool_for};

/// Opens `interface` as `kind`; returns the port and a description of what it is.
pub fn open_port(kind: PortKind, interface: &str) -> Result<(Box<dyn Port>, String)> {
    let opened = dataplane::open::open_port(kind, interface)?;
    if let Some(e) = &opened.xdp_unavailable {
        tracing::warn!(
            target: "tether::port",
            "AF_XDP on {interface} not available ({e}); using AF_PACKET"
        );
    }
    Ok((opened.port, opened.what))
}

/// A fabric node for a bridge of `role` on `port`, with the `[bridge]` settings.
/// Without `[bridge.keys]` it says so once per process, loudly: the segment is trusted.
pub fn node(port: &dyn Port, role: BridgeRole, cfg: &BridgeSettings) -> Result<Node> {
    if cfg.group_keys.is_empty() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                target: "tether::fabric",
                "no group keys ([bridge.keys]): frames are not \
                 authenticated, and anyone on this Ethernet segment can join the groups, \
                 move devices and reach their DMA; run only on a trusted segment \
                 (docs/wire-format.md, \"Authentication\")"
            )
        });
    }
    if role == BridgeRole::IoBox && cfg.trusted_managers.is_none() {
        tracing::warn!(
            target: "tether::fabric",
            "no [bridge] managers: this box obeys SET_GROUP and RESET \
             from any bridge that can send in its devices' groups; list the managers' \
             public keys to obey only their signed requests (docs/wire-format.md, \
             \"Signed management\")"
        );
    }
    Ok(node_for(port, role, &cfg.node_settings())?)
}

/// A host bridge's link through its virtual switch of `max_devices` ports, to the
/// devices of every box in its group, announced in the log.
pub fn switched_host_link(
    cfg: &HostConfig,
    port: Box<dyn Port>,
    what: &str,
) -> Result<hostbridge::FabricLink> {
    let node = node(&*port, BridgeRole::Host, &cfg.bridge)?;
    let link = hostbridge::settings::switched_host_link(
        fabric_port(node, port, &cfg.bridge),
        &cfg.port.interface,
        &cfg.host_settings(),
        cfg.max_devices,
    )?;
    announce(cfg, &link, what);
    Ok(link)
}

fn announce(cfg: &HostConfig, link: &hostbridge::FabricLink, what: &str) {
    let node = link.fabric().node();
    tracing::info!(
        target: "tether::host",
        "tether host: {} (id {:#x}) in group {} on {}: {what}",
        node.config().mac,
        node.config().bridge_id,
        cfg.gid,
        cfg.port.interface
    );
}

/// The bridge's control socket and metrics endpoint, those its settings name: the
/// socket with mode 0600, or 0660 and owned by `control_group`.
pub fn endpoints(cfg: &BridgeSettings) -> Result<crate::control::Endpoints> {
    let control = match cfg.control.as_deref() {
        None => None,
        Some(path) => {
            let gid = cfg
                .control_group
                .as_deref()
                .map(crate::control::group_id)
                .transpose()?;
            Some(crate::control::ControlServer::bind_for(path, gid)?)
        }
    };
    let metrics = match cfg.metrics {
        None => None,
        Some(addr) => {
            let m = crate::control::MetricsServer::bind(addr)?;
            tracing::info!(
                target: "tether::metrics",
                "metrics: http://{}/metrics",
                m.local_addr()
            );
            Some(m)
        }
    };
    Ok(crate::control::Endpoints::new(control, metrics))
}

/// The node on its port, busy-polling as the settings say.
pub fn fabric_port(node: Node, port: Box<dyn Port>, cfg: &BridgeSettings) -> FabricPort {
    FabricPort::with_policy(
        node,
        port,
        std::time::Duration::from_micros(cfg.spin_us),
        cfg.yield_after_us.map(std::time::Duration::from_micros),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_refuses_tlps_larger_than_its_frames() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut f,
            b"gid = 10\nmax_payload = 2048\n[port]\ninterface = \"mem\"\n",
        )
        .unwrap();
        let cfg = HostConfig::load(f.path()).unwrap();
        let pool = pool_for(1500).unwrap();
        let (port, _) = dataplane::ports::mem::pair(&pool, 64, 1500);
        let e = switched_host_link(&cfg, Box::new(port), "memory")
            .err()
            .unwrap();
        let e = e.to_string();
        assert!(
            e.contains("max_payload = 2048") && e.contains("at most 1444"),
            "{e}"
        );
        let mut cfg = cfg;
        cfg.max_payload = 1024;
        let (port, _) = dataplane::ports::mem::pair(&pool, 64, 1500);
        assert!(switched_host_link(&cfg, Box::new(port), "memory").is_ok());
    }
}
