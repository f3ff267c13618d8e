//! What every bridge program (`iobox`, `host`, `demo`, `bench`) sets up the same way:
//! its dataplane port, its fabric node, and the lspci-style description of a device.

use std::os::fd::AsRawFd;

use anyhow::{bail, Result};
use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::ports::af_xdp::{AfXdpPort, XdpConfig};
use dataplane::ports::socket::SocketPort;
use dataplane::{Mempool, Port};
use fabric::{Node, NodeConfig};
use wire::{BridgeRole, MacAddr};

use crate::config::{BridgeSettings, PortKind};

/// Bytes in a bridge's pool (each port has its own: AF_XDP registers it as UMEM):
/// 16384 buffers of 2048 bytes, or 8192 of 4096 on a jumbo-frame link.
const POOL_BYTES: usize = 32 << 20;

/// Bytes of a pool buffer that are not frame payload: the headroom AF_XDP keeps in
/// front of a received frame (256), the Ethernet header and 802.1Q tag, and margin.
const FRAME_OVERHEAD: usize = 256 + 64;

/// The pool buffer size for a link of `mtu`: 2048 bytes, or 4096 (the largest UMEM
/// chunk AF_XDP takes) where frames are larger. Frames stay within a buffer, so a
/// jumbo link carries frames of up to 4096 - 320 bytes.
fn buffer_size_for(mtu: usize) -> usize {
    if mtu + FRAME_OVERHEAD <= 2048 {
        2048
    } else {
        4096
    }
}

/// A bridge's buffer pool for a link of `mtu`.
pub fn pool_for(mtu: usize) -> Result<std::sync::Arc<Mempool>> {
    let buf = buffer_size_for(mtu);
    Ok(Mempool::new(POOL_BYTES / buf, buf)?)
}

/// The MTU of `interface` in this network namespace, if it can be asked.
pub fn interface_mtu(interface: &str) -> Option<usize> {
    let fd = dataplane::sys::ioctl_socket(interface).ok()?;
    let (_, mtu) = dataplane::sys::query_link(fd.as_raw_fd(), interface).ok()?;
    Some(mtu)
}

/// Opens `interface` as `kind`; returns the port and a description of what it is.
pub fn open_port(kind: PortKind, interface: &str) -> Result<(Box<dyn Port>, String)> {
    // An interface that cannot be asked is reported by the port's own open below.
    let pool = pool_for(interface_mtu(interface).unwrap_or(1500))?;
    if matches!(kind, PortKind::Auto | PortKind::AfXdp) {
        match AfXdpPort::open(interface, &pool, XdpConfig::default()) {
            Ok(p) => {
                let mode = p.mode().to_string();
                return Ok((Box::new(p), format!("AF_XDP ({mode})")));
            }
            Err(e) if kind == PortKind::AfXdp => return Err(e.into()),
            Err(e) => eprintln!("  AF_XDP on {interface} not available ({e}); using AF_PACKET"),
        }
    }
    if kind == PortKind::Socket {
        let p = SocketPort::open(interface, &pool)?;
        return Ok((
            Box::new(p),
            "AF_PACKET socket, one system call per frame".into(),
        ));
    }
    // Frame slots (TPACKET_V2): handed over one by one, as request/response wants.
    let p = AfPacketPort::open(interface, &pool, RingConfig::low_latency())?;
    Ok((Box::new(p), "AF_PACKET (TPACKET_V2 frame ring)".into()))
}

/// The boot epoch of this run of a bridge: random (from the OS), never 0 and never
/// the one drawn before in this process, so that a bridge restarted within the same
/// second is still seen as restarted (a start time in seconds was not).
pub fn epoch() -> u32 {
    fabric::fresh_epoch()
}

/// A fabric node for a bridge of `role` on `port`, with the `[bridge]` settings.
pub fn node(port: &dyn Port, role: BridgeRole, cfg: &BridgeSettings) -> Result<Node> {
    let mac = MacAddr(port.info().mac);
    let id = cfg.id.unwrap_or_else(|| fabric::manager::mac_value(mac));
    let mut n = NodeConfig::new(mac, role, id, epoch());
    // A frame must fit in one pool buffer: on a link with a larger MTU (jumbo frames)
    // the bridge sends frames no larger than its buffers.
    let room = port.pool().buf_size().saturating_sub(FRAME_OVERHEAD);
    n.mtu = port.info().mtu.min(room).min(u16::MAX as usize) as u16;
    n.info_interval_us = cfg.info_interval_ms * 1000;
    n.missed_infos = cfg.missed_infos;
    n.session.rto_min_us = cfg.rto_min_us;
    n.session.rate.target_queueing_us = cfg.target_delay_us;
    n.session.rto_initial_us = n.session.rto_initial_us.max(2 * cfg.rto_min_us);
    n.session.rto_max_us = n.session.rto_max_us.max(n.session.rto_initial_us);
    if let Some(k) = cfg.max_tlps_per_frame {
        n.session.max_tlps_per_frame = k;
    }
    Ok(Node::new(n)?)
}

/// A host bridge's link: its node on `port` (described by `what`), in its group,
/// announced on stdout.
pub fn host_link(
    cfg: &crate::config::HostConfig,
    port: Box<dyn Port>,
    what: &str,
) -> Result<hostbridge::FabricLink> {
    let mut node = node(&*port, BridgeRole::Host, &cfg.bridge)?;
    let fits = largest_payload_in_a_frame(&node);
    if cfg.max_payload as usize > fits {
        bail!(
            "max_payload = {}: TLPs that size do not fit a frame on {} (frames of {} bytes after the Ethernet header carry at most {} bytes of TLP payload)",
            cfg.max_payload,
            cfg.port.interface,
            node.config().session.mtu,
            fits
        );
    }
    node.join(cfg.gid)?;
    println!(
        "tether host: {} (id {:#x}) in group {} on {}: {what}",
        node.config().mac,
        node.config().bridge_id,
        cfg.gid,
        cfg.port.interface
    );
    Ok(hostbridge::FabricLink::new(fabric_port(
        node,
        port,
        &cfg.bridge,
    )))
}

/// The largest TLP payload a frame of `node` carries: the largest TLP less a 4-DW
/// header.
pub fn largest_payload_in_a_frame(node: &Node) -> usize {
    node.config().session.max_tlp_len().saturating_sub(16)
}

/// The root complex settings of a host (its Max Payload Size; the rest default).
pub fn root_complex_config(cfg: &crate::config::HostConfig) -> rootcomplex::BridgeConfig {
    rootcomplex::BridgeConfig {
        // Checked when the configuration was loaded.
        max_payload: tlp::MaxSize::new(cfg.max_payload).unwrap_or(tlp::MaxSize::B256),
        ..rootcomplex::BridgeConfig::default()
    }
}

/// The bridge's control socket, if its settings name one.
pub fn control_socket(cfg: &BridgeSettings) -> Result<Option<crate::control::ControlServer>> {
    cfg.control
        .as_deref()
        .map(crate::control::ControlServer::bind)
        .transpose()
}

/// The node on its port, busy-polling as the settings say.
pub fn fabric_port(node: Node, port: Box<dyn Port>, cfg: &BridgeSettings) -> fabric::FabricPort {
    let mut fp = fabric::FabricPort::new(node, port);
    fp.set_spin(std::time::Duration::from_micros(cfg.spin_us));
    fp.set_yield_after(cfg.yield_after_us.map(std::time::Duration::from_micros));
    fp
}

/// The name lspci gives a class (base class, subclass), for the classes tether's
/// devices use and their families.
pub fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "Network controller",
        (0x03, _) => "Display controller",
        (0x05, _) => "Memory controller",
        (0x06, _) => "Bridge",
        (0x0c, _) => "Serial bus controller",
        (0x12, _) => "Processing accelerators",
        _ => "Unclassified device",
    }
}

/// A device as `lspci -v` would show its identity and resources.
pub fn lspci_line(d: &rootcomplex::DeviceInfo) -> String {
    let mut s = format!(
        "{} {} [{:02x}{:02x}]: Device {:04x}:{:04x} (rev {:02x})",
        d.bdf,
        class_name(d.class.0, d.class.1),
        d.class.0,
        d.class.1,
        d.vendor,
        d.device,
        d.revision
    );
    for b in &d.bars {
        s += &format!(
            "\n        BAR{}: memory at {:#x} ({}-bit, {}prefetchable) [size={}K]",
            b.index,
            b.address,
            if b.is_64bit { 64 } else { 32 },
            if b.prefetchable { "" } else { "non-" },
            b.size / 1024
        );
    }
    s + &format!("\n        interrupts: {:?}", d.irq)
}

/// One log line for a fabric event (TLPs are not logged).
pub fn describe(e: &fabric::FabricEvent) -> Option<String> {
    use fabric::{DownReason, FabricEvent as E};
    Some(match e {
        E::PeerUp {
            gid,
            peer,
            role,
            bridge_id,
        } => format!(
            "peer up: {peer} ({} {bridge_id:#x}) in group {gid}",
            role_name(*role)
        ),
        E::PeerDown { gid, peer, reason } => format!(
            "peer down: {peer} in group {gid} ({})",
            match reason {
                DownReason::Silent => "silent".to_string(),
                DownReason::Unreachable { lost } => format!("unreachable, {lost} TLPs lost"),
                DownReason::Left => "group left".to_string(),
            }
        ),
        E::PeerRestarted { gid, peer, lost } => {
            format!("peer restarted: {peer} in group {gid} ({lost} TLPs lost)")
        }
        E::DeviceAdded { gid, peer, device } => format!(
            "hot-plug: group {gid}: slot {} device {:04x}:{:04x} class {:06x} at {peer}",
            device.slot, device.vendor_id, device.device_id, device.class_code
        ),
        E::DeviceRemoved { gid, peer, slot } => {
            format!("hot-remove: group {gid}: slot {slot} at {peer}")
        }
        E::GroupChanged { slot, from, to } => {
            format!("group change: slot {slot} moved from group {from} to group {to}")
        }
        E::CtrlResult {
            from,
            request_id,
            status,
        } => format!("ctrl result {request_id} from {from}: {status:?}"),
        E::Tlp { .. } => return None,
    })
}

pub fn role_name(r: BridgeRole) -> &'static str {
    match r {
        BridgeRole::Host => "host",
        BridgeRole::IoBox => "iobox",
        BridgeRole::Manager => "manager",
    }
}

/// The sessions of a node as JSON: one entry per (group, peer).
pub fn sessions_json(node: &Node) -> serde_json::Value {
    node.peers()
        .map(|(gid, mac, role, id, devices)| {
            serde_json::json!({
                "gid": gid,
                "peer": mac.to_string(),
                "role": role_name(role),
                "bridge_id": format!("{id:#x}"),
                "devices": devices.iter().map(|d| d.slot).collect::<Vec<_>>(),
                "efe": node.session_stats(gid, mac),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_follow_lspci() {
        assert_eq!(class_name(0x05, 0x80), "Memory controller");
        assert_eq!(class_name(0x01, 0x00), "SCSI storage controller");
        assert_eq!(class_name(0x01, 0x08), "Non-Volatile memory controller");
        assert_eq!(class_name(0x02, 0x00), "Ethernet controller");
        assert_eq!(class_name(0xff, 0x00), "Unclassified device");
    }

    #[test]
    fn buffers_and_frames_follow_the_mtu() {
        assert_eq!(buffer_size_for(1500), 2048);
        assert_eq!(buffer_size_for(2048 - FRAME_OVERHEAD), 2048);
        assert_eq!(buffer_size_for(2048 - FRAME_OVERHEAD + 1), 4096);
        assert_eq!(buffer_size_for(9000), 4096);
        for (mtu, frame_mtu, payload) in [(1500, 1500, 1444), (9000, 3776, 3720)] {
            let pool = pool_for(mtu).unwrap();
            let (port, _) = dataplane::ports::mem::pair(&pool, 64, mtu);
            let n = node(&port, BridgeRole::Host, &BridgeSettings::default()).unwrap();
            assert_eq!(n.config().mtu as usize, frame_mtu);
            assert_eq!(largest_payload_in_a_frame(&n), payload);
        }
    }

    #[test]
    fn a_host_refuses_tlps_larger_than_its_frames() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut f,
            b"gid = 10\nmax_payload = 2048\n[port]\ninterface = \"mem\"\n",
        )
        .unwrap();
        let cfg = crate::config::HostConfig::load(f.path()).unwrap();
        let pool = pool_for(1500).unwrap();
        let (port, _) = dataplane::ports::mem::pair(&pool, 64, 1500);
        let e = host_link(&cfg, Box::new(port), "memory").err().unwrap();
        let e = e.to_string();
        assert!(
            e.contains("max_payload = 2048") && e.contains("at most 1444"),
            "{e}"
        );
        let mut cfg = cfg;
        cfg.max_payload = 1024;
        let (port, _) = dataplane::ports::mem::pair(&pool, 64, 1500);
        assert!(host_link(&cfg, Box::new(port), "memory").is_ok());
    }
}
