//! What the segment holds, as the API and `tether ctl list` show it: each device of
//! every box with its group and the host there, and each bridge with its groups.

use std::collections::BTreeMap;

use fabric::SeenBridge;
use serde::Serialize;
use wire::BridgeRole;

pub fn role_name(r: BridgeRole) -> &'static str {
    match r {
        BridgeRole::Host => "host",
        BridgeRole::IoBox => "iobox",
        BridgeRole::Manager => "manager",
    }
}

/// A bridge in a device's group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRef {
    pub mac: String,
    pub bridge_id: String,
}

/// One device of a box (`GET /devices`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The box's bridge id, `0x`-hex: with `slot`, the device's name (`BOX/SLOT`).
    #[serde(rename = "box")]
    pub box_id: String,
    pub box_mac: String,
    pub slot: u8,
    /// The group it is in now; 4093 holds free devices.
    pub gid: u16,
    pub vendor: String,
    pub device: String,
    pub class: String,
    pub revision: u8,
    /// Whether the box says it is ready to be used.
    pub ready: bool,
    /// The host bridge of its group (the first by MAC when there are several), or
    /// none: the device is free for a host that joins its group.
    pub host: Option<HostRef>,
    /// Every host bridge of its group.
    pub hosts: Vec<HostRef>,
}

/// One bridge (`GET /bridges`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bridge {
    pub mac: String,
    pub bridge_id: String,
    pub role: &'static str,
    /// The groups it announces itself in.
    pub groups: Vec<u16>,
    /// Devices it announces (a box), over all its groups.
    pub devices: usize,
    pub mtu: u16,
    pub info_interval_ms: u16,
    /// Milliseconds since its last INFO, at the time of the answer.
    pub last_seen_ms_ago: u64,
}

fn hex_id(id: u64) -> String {
    format!("{id:#x}")
}

/// Every device, once: a box that moved a device still has it in the old group's
/// last INFO until that is forgotten, so the latest sighting wins. Sorted by box,
/// then slot.
pub fn devices<'a>(seen: impl Iterator<Item = &'a SeenBridge>) -> Vec<Device> {
    let seen: Vec<&SeenBridge> = seen.collect();
    let mut hosts: BTreeMap<u16, Vec<HostRef>> = BTreeMap::new();
    for b in seen.iter().filter(|b| b.role == BridgeRole::Host) {
        hosts.entry(b.gid).or_default().push(HostRef {
            mac: b.mac.to_string(),
            bridge_id: hex_id(b.bridge_id),
        });
    }
    let mut latest: BTreeMap<(u64, u8), (u64, Device)> = BTreeMap::new();
    for b in seen.iter().filter(|b| b.role == BridgeRole::IoBox) {
        for d in &b.devices {
            let hs = hosts.get(&b.gid).cloned().unwrap_or_default();
            let dev = Device {
                box_id: hex_id(b.bridge_id),
                box_mac: b.mac.to_string(),
                slot: d.slot,
                gid: b.gid,
                vendor: format!("{:04x}", d.vendor_id),
                device: format!("{:04x}", d.device_id),
                class: format!("{:06x}", d.class_code),
                revision: d.revision,
                ready: d.flags & wire::DEVICE_READY != 0,
                host: hs.first().cloned(),
                hosts: hs,
            };
            let key = (b.bridge_id, d.slot);
            if latest.get(&key).is_none_or(|(t, _)| *t <= b.last_seen) {
                latest.insert(key, (b.last_seen, dev));
            }
        }
    }
    latest.into_values().map(|(_, d)| d).collect()
}

/// Every bridge, once, with the groups it is in; sorted by MAC. `now` is the
/// station's clock (µs), as `last_seen` is.
pub fn bridges<'a>(seen: impl Iterator<Item = &'a SeenBridge>, now: u64) -> Vec<Bridge> {
    let mut by_mac: BTreeMap<wire::MacAddr, Bridge> = BTreeMap::new();
    for b in seen {
        let ago = now.saturating_sub(b.last_seen) / 1000;
        let e = by_mac.entry(b.mac).or_insert_with(|| Bridge {
            mac: b.mac.to_string(),
            bridge_id: hex_id(b.bridge_id),
            role: role_name(b.role),
            groups: Vec::new(),
            devices: 0,
            mtu: b.mtu,
            info_interval_ms: b.interval_ms,
            last_seen_ms_ago: ago,
        });
        e.groups.push(b.gid);
        e.devices += b.devices.len();
        e.last_seen_ms_ago = e.last_seen_ms_ago.min(ago);
    }
    by_mac.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::MacAddr;

    fn bridge(gid: u16, n: u8, role: BridgeRole, slots: &[u8], last_seen: u64) -> SeenBridge {
        SeenBridge {
            gid,
            mac: MacAddr([2, 0, 0, 0, 0, n]),
            role,
            bridge_id: n as u64,
            devices: slots
                .iter()
                .map(|&slot| wire::sample::memdev(slot, gid))
                .collect(),
            mtu: 1500,
            interval_ms: 100,
            last_seen,
            infos: 1,
        }
    }

    #[test]
    fn each_device_once_with_the_host_of_its_group() {
        let seen = [
            bridge(10, 1, BridgeRole::IoBox, &[0], 100),
            bridge(4093, 1, BridgeRole::IoBox, &[1], 100),
            // The device in slot 0 moved to group 20; group 10's INFO is older.
            bridge(20, 1, BridgeRole::IoBox, &[0], 200),
            bridge(10, 2, BridgeRole::Host, &[], 150),
            bridge(20, 3, BridgeRole::Host, &[], 150),
        ];
        let d = devices(seen.iter());
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d[0].slot, d[0].gid), (0, 20));
        assert_eq!(d[0].host.as_ref().unwrap().bridge_id, "0x3");
        assert_eq!((d[1].slot, d[1].gid), (1, 4093));
        assert_eq!(d[1].host, None);
        assert!(d[1].hosts.is_empty());
        let b = bridges(seen.iter(), 1_200);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].groups, [10, 4093, 20]);
        assert_eq!(b[0].devices, 3);
        assert_eq!(b[0].last_seen_ms_ago, 1);
        assert_eq!(b[1].role, "host");
    }
}
