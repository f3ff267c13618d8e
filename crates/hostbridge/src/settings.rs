//! A host bridge's link settings: its group and Max Payload Size, checked against
//! what a frame of its port carries.

use fabric::{FabricError, FabricPort, Node};
use thiserror::Error;

use crate::FabricLink;

/// What a host bridge's link is set up with.
#[derive(Clone, Copy, Debug)]
pub struct HostSettings {
    /// The group whose devices the host uses.
    pub gid: u16,
    /// Max Payload Size of the root complex, in bytes.
    pub max_payload: u16,
}

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("max_payload = {max_payload}: TLPs that size do not fit a frame on {interface} (frames of {mtu} bytes after the Ethernet header carry at most {fits} bytes of TLP payload)")]
    PayloadTooLarge {
        max_payload: u16,
        interface: String,
        mtu: usize,
        fits: usize,
    },
    #[error(transparent)]
    Fabric(#[from] FabricError),
    #[error("the host's switch: {0}")]
    Switch(#[from] crate::switch::SwitchError),
}

/// The largest TLP payload a frame of `node` carries: the largest TLP less a 4-DW
/// header.
pub fn largest_payload_in_a_frame(node: &Node) -> usize {
    node.config().session.max_tlp_len().saturating_sub(16)
}

/// The host's link on `fp` (a port on `interface`): checks that TLPs of its Max
/// Payload Size fit a frame and joins its group.
pub fn host_link(
    mut fp: FabricPort,
    interface: &str,
    s: &HostSettings,
) -> Result<FabricLink, SettingsError> {
    let node = fp.node_mut();
    let fits = largest_payload_in_a_frame(node);
    if s.max_payload as usize > fits {
        return Err(SettingsError::PayloadTooLarge {
            max_payload: s.max_payload,
            interface: interface.to_string(),
            mtu: node.config().session.mtu,
            fits,
        });
    }
    node.join(s.gid)?;
    Ok(FabricLink::new(fp))
}

/// The host's link on `fp` as [`host_link`] checks and joins it, switched: through a
/// virtual switch of `max_devices` ports, to the devices of every box in the group.
pub fn switched_host_link(
    fp: FabricPort,
    interface: &str,
    s: &HostSettings,
    max_devices: usize,
) -> Result<FabricLink, SettingsError> {
    let switch = crate::switch::VirtualSwitch::new(max_devices)?;
    let direct = host_link(fp, interface, s)?;
    Ok(direct.into_switched(crate::route::Router::new(s.gid, switch)))
}

/// The root complex settings of a host (its Max Payload Size; the rest default).
pub fn root_complex_config(max_payload: u16) -> rootcomplex::BridgeConfig {
    rootcomplex::BridgeConfig {
        // A size that is not a power of two from 128 to 4096 was refused when the
        // settings were loaded.
        max_payload: tlp::MaxSize::new(max_payload).unwrap_or(tlp::MaxSize::B256),
        ..rootcomplex::BridgeConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::port::{node_for, NodeSettings};
    use wire::BridgeRole;

    fn fabric_port(mtu: usize) -> FabricPort {
        let pool = dataplane::open::pool_for(mtu).unwrap();
        let (port, _) = dataplane::ports::mem::pair(&pool, 64, mtu);
        let node = node_for(&port, BridgeRole::Host, &NodeSettings::default()).unwrap();
        FabricPort::new(node, Box::new(port))
    }

    #[test]
    fn payloads_follow_the_frames() {
        for (mtu, payload) in [(1500, 1444), (9000, 3720)] {
            assert_eq!(largest_payload_in_a_frame(fabric_port(mtu).node()), payload);
        }
    }

    #[test]
    fn a_host_refuses_tlps_larger_than_its_frames() {
        let s = HostSettings {
            gid: 10,
            max_payload: 2048,
        };
        let e = host_link(fabric_port(1500), "mem", &s).err().unwrap();
        let e = e.to_string();
        assert!(
            e.contains("max_payload = 2048") && e.contains("at most 1444"),
            "{e}"
        );
        let s = HostSettings {
            max_payload: 1024,
            ..s
        };
        assert!(host_link(fabric_port(1500), "mem", &s).is_ok());
    }
}
