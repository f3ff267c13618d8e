//! The TOML configuration of `tether iobox` and `tether host` (docs/cli.md has the
//! reference). Unknown keys are errors, so a typo never silently falls back to a
//! default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use wire::MacAddr;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub use dataplane::open::PortKind;

/// `[port]`: the interface and how frames are moved.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub interface: String,
    #[serde(default)]
    pub kind: PortKind,
}

/// `[bridge]`: settings every bridge has. All optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSettings {
    /// The bridge id announced in INFO (default: the port's MAC address as a number).
    pub id: Option<u64>,
    pub info_interval_ms: u64,
    /// A peer silent for this many intervals is down.
    pub missed_infos: u32,
    /// TLPs per frame at most (1 turns aggregation off).
    pub max_tlps_per_frame: Option<usize>,
    /// A Unix socket for `tether ctl stats` (mode 0600).
    pub control: Option<PathBuf>,
    /// The group that may use the control socket too (mode 0660).
    pub control_group: Option<String>,
    /// Serve the counters in Prometheus's text format at `http://ADDR:PORT/metrics`.
    pub metrics: Option<std::net::SocketAddr>,
    /// Busy-poll this long after the last activity before sleeping.
    pub spin_us: u64,
    /// While busy-polling, yield the core at each empty round from this long after
    /// the last activity on (default: never; the VMM front-ends of `tether host`
    /// and `tether vm`: 50, since QEMU needs the cores too).
    pub yield_after_us: Option<u64>,
    /// Smallest retransmission timeout. Software bridges share cores with other
    /// threads and the kernel's packet work: a peer descheduled for a moment must not
    /// look like a lost frame (measured: 200 µs gave 60-150 spurious timeouts per
    /// second of a two-bridge benchmark on two cores, each halving the rate).
    pub rto_min_us: u64,
    /// Queueing delay the rate control aims for above the base RTT. (A bridge's
    /// wake-up latency is not counted: the echo wait takes it out of the samples.)
    pub target_delay_us: u32,
    /// `[bridge.keys]`: group → key file, for the groups whose frames are
    /// authenticated (docs/wire-format.md, "Authentication"). Relative paths are from
    /// the configuration file's directory.
    pub keys: BTreeMap<String, PathBuf>,
    /// Most peers (bridges) in one group: INFO from more is refused, so that a flood
    /// of strangers cannot fill the bridge.
    pub max_peers_per_group: usize,
    /// Public keys of the managers whose signed SET_GROUP/RESET a box obeys (and no
    /// unsigned one); empty: requests need no signature.
    pub managers: Vec<PathBuf>,
    /// The managers read from those files.
    #[serde(skip)]
    pub trusted_managers: Option<std::sync::Arc<fabric::keys::TrustedManagers>>,
    /// The keys read from those files (when the configuration is loaded).
    #[serde(skip)]
    pub group_keys: fabric::GroupKeys,
}

impl BridgeSettings {
    /// What the bridge's fabric node is set up with.
    pub fn node_settings(&self) -> fabric::port::NodeSettings {
        fabric::port::NodeSettings {
            id: self.id,
            info_interval_ms: self.info_interval_ms,
            missed_infos: self.missed_infos,
            max_tlps_per_frame: self.max_tlps_per_frame,
            rto_min_us: self.rto_min_us,
            target_delay_us: self.target_delay_us,
            keys: self.group_keys.clone(),
            max_peers_per_group: self.max_peers_per_group,
            managers: self.trusted_managers.clone(),
        }
    }
}

impl Default for BridgeSettings {
    fn default() -> Self {
        BridgeSettings {
            id: None,
            info_interval_ms: 100,
            missed_infos: 3,
            max_tlps_per_frame: None,
            control: None,
            control_group: None,
            metrics: None,
            spin_us: 2000,
            yield_after_us: None,
            rto_min_us: 1000,
            target_delay_us: 50,
            keys: BTreeMap::new(),
            max_peers_per_group: 64,
            managers: Vec::new(),
            trusted_managers: None,
            group_keys: fabric::GroupKeys::default(),
        }
    }
}

/// Device models an I/O box can host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// The DMA engine test device (docs/devices.md).
    Memdev,
    /// virtio-blk on a file of the box (`path`).
    VirtioBlk,
    /// virtio-net on a TAP of the box (`tap`, `bridge`) or a box interface
    /// (`interface`), with its `mac`.
    VirtioNet,
}

/// `[[device]]` of a box.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub slot: u8,
    pub model: Model,
    /// Free devices sit in 4093.
    #[serde(default = "free_group")]
    pub gid: u16,
    /// memdev: the device-side buffer in bytes.
    #[serde(default = "default_buffer")]
    pub buffer_size: u64,
    /// virtio-blk: the backing file (its size is the disk's, whole 512-byte sectors).
    pub path: Option<std::path::PathBuf>,
    /// virtio-blk: offer the disk read-only.
    #[serde(default)]
    pub read_only: bool,
    /// virtio-blk: the serial the driver reads (GET_ID), at most 20 bytes.
    pub serial: Option<String>,
    /// virtio-blk, virtio-net: offer packed virtqueues too (the driver chooses;
    /// split always).
    #[serde(default)]
    pub packed_ring: bool,
    /// virtio-blk, virtio-net: offer VIRTIO_F_EVENT_IDX (default true; as QEMU's
    /// `event_idx=off`, false turns it off). Not offered with `packed_ring`.
    pub event_idx: Option<bool>,
    /// virtio-blk, virtio-net: offer VIRTIO_F_INDIRECT_DESC (default true; as QEMU's
    /// `indirect_desc=off`, false turns it off: one DMA round trip less per request).
    pub indirect_desc: Option<bool>,
    /// virtio-net: the MAC address the guest reads (required: a unicast address,
    /// not all zeros; a locally administered one, 02:..., unless the box owns a range).
    #[serde(default, deserialize_with = "de_mac")]
    pub mac: Option<MacAddr>,
    /// virtio-net: the TAP the frames go through (created if absent, removed when
    /// the box ends unless it existed before). Exclusive with `interface`.
    pub tap: Option<String>,
    /// virtio-net: a Linux bridge of the box to put the TAP on (only with `tap`).
    pub bridge: Option<String>,
    /// virtio-net: a box interface handed to the guest whole, like macvtap
    /// (AF_PACKET). Exclusive with `tap`.
    pub interface: Option<String>,
    /// virtio-net: receive/transmit queue pairs (1: the model has one pair).
    pub queues: Option<u16>,
}

impl DeviceConfig {
    /// The virtio ring features to offer.
    pub fn rings(&self) -> endpoint::virtio::RingFeatures {
        endpoint::virtio::RingFeatures {
            packed: self.packed_ring,
            event_idx: self.event_idx.unwrap_or(true),
            indirect_desc: self.indirect_desc.unwrap_or(true),
        }
    }
}

/// The virtio-net queue pairs the model offers.
pub const VIRTIO_NET_MAX_QUEUES: u16 = 1;

fn de_mac<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<MacAddr>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<MacAddr>()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("mac {s:?}: expected aa:bb:cc:dd:ee:ff")))
}

fn free_group() -> u16 {
    4093
}

fn default_buffer() -> u64 {
    1 << 20
}

/// `tether iobox --config box.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxConfig {
    pub port: PortConfig,
    #[serde(default)]
    pub bridge: BridgeSettings,
    #[serde(rename = "device", default)]
    pub devices: Vec<DeviceConfig>,
}

/// `[memory]` of a host: the RAM its devices may DMA into.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Guest-physical base address.
    pub base: u64,
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            base: 0x1_0000_0000,
            size: 32 << 20,
        }
    }
}

/// `tether host --config host.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's group.
    pub gid: u16,
    pub port: PortConfig,
    #[serde(default)]
    pub bridge: BridgeSettings,
    #[serde(default)]
    pub memory: MemoryConfig,
    /// After enumerating a memdev, run this many verified DMA copies through it.
    #[serde(default)]
    pub self_test: u32,
    /// Max Payload Size of the root complex in bytes (128..=4096, a power of two):
    /// the largest TLP payload the host sends and the most it lets devices send.
    #[serde(default = "default_max_payload")]
    pub max_payload: u16,
    /// The ports of the host's virtual switch: the most devices it holds at once
    /// (1..=253).
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
}

fn default_max_payload() -> u16 {
    256
}

fn default_max_devices() -> usize {
    hostbridge::switch::DEFAULT_PORTS
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message,
    }
}

fn check_gid(path: &Path, what: &str, gid: u16) -> Result<(), ConfigError> {
    if wire::valid_gid(gid) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{what}: group {gid} is not a valid GID (1..=4094)"),
        ))
    }
}

/// The group keys of a `keys` table (`what` names it in errors): group number ->
/// key file, relative to the configuration file's directory.
fn group_keys(
    path: &Path,
    what: &str,
    keys: &BTreeMap<String, PathBuf>,
) -> Result<fabric::GroupKeys, ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = BTreeMap::new();
    for (name, file) in keys {
        let gid: u16 = name
            .parse()
            .map_err(|_| invalid(path, format!("{what}: {name:?} is not a group number")))?;
        check_gid(path, what, gid)?;
        files.insert(gid, dir.join(file));
    }
    fabric::keys::read_group_keys(&files).map_err(|e| invalid(path, format!("{what}: {e}")))
}

/// Reads the key files `[bridge.keys]` names into `group_keys`.
fn read_keys(path: &Path, b: &mut BridgeSettings) -> Result<(), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    b.group_keys = group_keys(path, "bridge.keys", &b.keys)?;
    if !b.managers.is_empty() {
        let files: Vec<PathBuf> = b.managers.iter().map(|f| dir.join(f)).collect();
        let m = fabric::keys::TrustedManagers::read(&files)
            .map_err(|e| invalid(path, format!("bridge.managers: {e}")))?;
        b.trusted_managers = Some(std::sync::Arc::new(m));
    }
    Ok(())
}

fn check_bridge(path: &Path, b: &mut BridgeSettings) -> Result<(), ConfigError> {
    read_keys(path, b)?;
    if b.info_interval_ms == 0 || b.info_interval_ms > u16::MAX as u64 {
        return Err(invalid(
            path,
            "bridge.info_interval_ms must be 1..=65535".into(),
        ));
    }
    if b.missed_infos == 0 {
        return Err(invalid(
            path,
            "bridge.missed_infos must be at least 1".into(),
        ));
    }
    if !(10..=1_000_000).contains(&b.rto_min_us) {
        return Err(invalid(
            path,
            "bridge.rto_min_us must be 10..=1000000".into(),
        ));
    }
    if !(1..=1_000_000).contains(&b.target_delay_us) {
        return Err(invalid(
            path,
            "bridge.target_delay_us must be 1..=1000000".into(),
        ));
    }
    if !(1..=1024).contains(&b.max_peers_per_group) {
        return Err(invalid(
            path,
            "bridge.max_peers_per_group must be 1..=1024".into(),
        ));
    }
    if b.max_tlps_per_frame == Some(0) {
        return Err(invalid(
            path,
            "bridge.max_tlps_per_frame must be at least 1".into(),
        ));
    }
    Ok(())
}

impl BoxConfig {
    pub fn load(path: &Path) -> Result<BoxConfig, ConfigError> {
        let mut c: BoxConfig = load(path)?;
        check_bridge(path, &mut c.bridge)?;
        if c.devices.is_empty() {
            return Err(invalid(
                path,
                "no [[device]]: a box needs at least one".into(),
            ));
        }
        for (i, d) in c.devices.iter().enumerate() {
            let what = format!("device {i} (slot {})", d.slot);
            if d.slot >= 32 {
                return Err(invalid(path, format!("{what}: slots are 0..=31")));
            }
            if c.devices[..i].iter().any(|o| o.slot == d.slot) {
                return Err(invalid(path, format!("{what}: slot used twice")));
            }
            check_gid(path, &what, d.gid)?;
            if d.buffer_size == 0 || d.buffer_size > 1 << 30 || !d.buffer_size.is_power_of_two() {
                return Err(invalid(
                    path,
                    format!("{what}: buffer_size must be a power of two up to 1 GiB"),
                ));
            }
            match (d.model, &d.path) {
                (Model::VirtioBlk, None) => {
                    return Err(invalid(path, format!("{what}: virtio-blk needs a path")));
                }
                (Model::Memdev, Some(_)) => {
                    return Err(invalid(path, format!("{what}: memdev takes no path")));
                }
                (Model::VirtioNet, Some(_)) => {
                    return Err(invalid(path, format!("{what}: virtio-net takes no path")));
                }
                (Model::Memdev, None)
                    if d.packed_ring || d.event_idx.is_some() || d.indirect_desc.is_some() =>
                {
                    return Err(invalid(
                        path,
                        format!(
                            "{what}: packed_ring, event_idx and indirect_desc are virtio settings"
                        ),
                    ));
                }
                _ => {}
            }
            if d.serial.as_ref().is_some_and(|s| s.len() > 20) {
                return Err(invalid(path, format!("{what}: serial is at most 20 bytes")));
            }
            check_net(path, &what, d, &c.devices[..i], &c.port.interface)?;
        }
        Ok(c)
    }
}

/// The virtio-net keys of device `d` (`earlier`: the devices before it in the file).
fn check_net(
    path: &Path,
    what: &str,
    d: &DeviceConfig,
    earlier: &[DeviceConfig],
    port: &str,
) -> Result<(), ConfigError> {
    let net_keys = [
        ("mac", d.mac.is_some()),
        ("tap", d.tap.is_some()),
        ("bridge", d.bridge.is_some()),
        ("interface", d.interface.is_some()),
        ("queues", d.queues.is_some()),
    ];
    if d.model != Model::VirtioNet {
        if let Some((key, _)) = net_keys.iter().find(|(_, set)| *set) {
            return Err(invalid(
                path,
                format!("{what}: {key} is a virtio-net setting"),
            ));
        }
        return Ok(());
    }
    if d.read_only || d.serial.is_some() {
        let key = if d.read_only { "read_only" } else { "serial" };
        return Err(invalid(
            path,
            format!("{what}: {key} is a virtio-blk setting"),
        ));
    }
    let Some(mac) = d.mac else {
        return Err(invalid(
            path,
            format!("{what}: virtio-net needs a mac (the address the guest reads)"),
        ));
    };
    if mac.0 == [0; 6] {
        return Err(invalid(
            path,
            format!("{what}: mac {mac} is all zeros, not an address"),
        ));
    }
    if mac.is_multicast() {
        return Err(invalid(
            path,
            format!("{what}: mac {mac} is a multicast address (a NIC's is unicast: the first byte even)"),
        ));
    }
    if let Some(o) = earlier.iter().find(|o| o.mac == Some(mac)) {
        return Err(invalid(
            path,
            format!("{what}: mac {mac} is slot {}'s too", o.slot),
        ));
    }
    match (&d.tap, &d.interface) {
        (None, None) => {
            return Err(invalid(
                path,
                format!("{what}: virtio-net needs a tap (a TAP device of the box) or an interface (a box NIC handed over)"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                path,
                format!("{what}: tap and interface exclude each other"),
            ));
        }
        (None, Some(_)) if d.bridge.is_some() => {
            return Err(invalid(
                path,
                format!("{what}: bridge goes with tap (an interface is used as it is)"),
            ));
        }
        _ => {}
    }
    for (key, name) in [
        ("tap", &d.tap),
        ("bridge", &d.bridge),
        ("interface", &d.interface),
    ] {
        if let Some(n) = name {
            iobox::netback::check_ifname(n)
                .map_err(|e| invalid(path, format!("{what}: {key}: {e}")))?;
        }
    }
    for (key, name) in [("tap", &d.tap), ("interface", &d.interface)] {
        let Some(n) = name else { continue };
        if n == port {
            // The guest would get the fabric's frames, and the fabric the guest's.
            return Err(invalid(
                path,
                format!("{what}: {key} {n} is the box's fabric port ([port] interface)"),
            ));
        }
        if let Some(o) = earlier
            .iter()
            .find(|o| o.tap.as_ref() == Some(n) || o.interface.as_ref() == Some(n))
        {
            return Err(invalid(
                path,
                format!("{what}: {key} {n} is slot {}'s already", o.slot),
            ));
        }
    }
    match d.queues.unwrap_or(1) {
        0 => Err(invalid(path, format!("{what}: queues must be at least 1"))),
        q if q > VIRTIO_NET_MAX_QUEUES => Err(invalid(
            path,
            format!(
                "{what}: queues = {q}: the virtio-net model has {VIRTIO_NET_MAX_QUEUES} queue pair (no multiqueue yet)"
            ),
        )),
        _ => Ok(()),
    }
}

impl HostConfig {
    /// What the host's link is set up with.
    pub fn host_settings(&self) -> hostbridge::settings::HostSettings {
        hostbridge::settings::HostSettings {
            gid: self.gid,
            max_payload: self.max_payload,
        }
    }

    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let mut c: HostConfig = load(path)?;
        check_bridge(path, &mut c.bridge)?;
        check_gid(path, "gid", c.gid)?;
        if c.memory.size == 0 || c.memory.size > 1 << 32 {
            return Err(invalid(path, "memory.size must be 1 B..=4 GiB".into()));
        }
        if c.memory.base.checked_add(c.memory.size).is_none() {
            return Err(invalid(path, "memory: base + size overflows".into()));
        }
        if c.max_devices == 0 || c.max_devices > hostbridge::switch::MAX_PORTS {
            return Err(invalid(
                path,
                format!(
                    "max_devices = {}: a host's switch has 1 to {} ports",
                    c.max_devices,
                    hostbridge::switch::MAX_PORTS
                ),
            ));
        }
        if tlp::MaxSize::new(c.max_payload).is_none() {
            return Err(invalid(
                path,
                format!(
                    "max_payload = {}: a PCIe size is 128, 256, 512, 1024, 2048 or 4096",
                    c.max_payload
                ),
            ));
        }
        Ok(c)
    }
}

/// `tether manager --config manager.toml`: the management service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Where the HTTP API listens.
    pub listen: std::net::SocketAddr,
    /// The interface on the segment (it must see every VLAN; not one with AF_XDP).
    pub interface: String,
    /// The bearer token requests must carry: a file made by `tether key generate`,
    /// readable by its owner only. Relative to this file's directory.
    pub token_file: PathBuf,
    /// Sign the CTRL requests with this manager key (`tether key generate-manager`).
    #[serde(default)]
    pub sign: Option<PathBuf>,
    /// A bridge not heard from for this long is forgotten.
    #[serde(default = "default_stale_ms")]
    pub stale_ms: u64,
    /// How long a move waits for its box's answer.
    #[serde(default = "default_move_timeout_ms")]
    pub move_timeout_ms: u64,
    /// `[keys]`: group -> key file, for the groups whose frames are authenticated.
    #[serde(default)]
    pub keys: BTreeMap<String, PathBuf>,
    /// The token read from `token_file`.
    #[serde(skip)]
    pub token: String,
    /// The keys read from `keys`.
    #[serde(skip)]
    pub group_keys: fabric::GroupKeys,
}

fn default_stale_ms() -> u64 {
    2000
}

fn default_move_timeout_ms() -> u64 {
    3000
}

impl ManagerConfig {
    /// Reads and checks the file, and the token, key and signing files it names.
    pub fn load(path: &Path) -> Result<ManagerConfig, ConfigError> {
        let mut c: ManagerConfig = load(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        c.token_file = dir.join(&c.token_file);
        c.token = fabric::keys::read_token_file(&c.token_file)
            .map_err(|e| invalid(path, format!("token_file: {e}")))?;
        c.group_keys = group_keys(path, "keys", &c.keys)?;
        if let Some(s) = &mut c.sign {
            *s = dir.join(&*s);
            fabric::keys::ManagerSigner::read(s)
                .map_err(|e| invalid(path, format!("sign: {e}")))?;
        }
        if !(100..=3_600_000).contains(&c.stale_ms) {
            return Err(invalid(path, "stale_ms must be 100..=3600000".into()));
        }
        if !(100..=60_000).contains(&c.move_timeout_ms) {
            return Err(invalid(path, "move_timeout_ms must be 100..=60000".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_full_box_config() {
        let f = write(
            r#"
[port]
interface = "tbox0"
kind = "af-packet"

[bridge]
id = 0xb0c5
info_interval_ms = 50
missed_infos = 10
max_tlps_per_frame = 1
control = "/run/tether/box.sock"
yield_after_us = 50

[[device]]
slot = 0
model = "memdev"
gid = 10

[[device]]
slot = 3
model = "memdev"
buffer_size = 65536
"#,
        );
        let c = BoxConfig::load(f.path()).unwrap();
        assert_eq!(c.port.interface, "tbox0");
        assert_eq!(c.bridge.yield_after_us, Some(50));
        assert_eq!(c.port.kind, PortKind::AfPacket);
        assert_eq!(c.bridge.id, Some(0xb0c5));
        assert_eq!(c.bridge.info_interval_ms, 50);
        assert_eq!(c.bridge.max_tlps_per_frame, Some(1));
        assert_eq!(c.bridge.spin_us, 2000);
        assert_eq!(c.devices.len(), 2);
        assert_eq!((c.devices[0].gid, c.devices[0].buffer_size), (10, 1 << 20));
        assert_eq!((c.devices[1].gid, c.devices[1].buffer_size), (4093, 65536));
    }

    #[test]
    fn virtio_net_devices() {
        let f = write(
            r#"
[port]
interface = "tbox0"

[[device]]
slot = 1
model = "virtio-net"
mac = "02:00:00:aa:bb:01"
tap = "tnet0"
bridge = "br0"
packed_ring = true

[[device]]
slot = 2
model = "virtio-net"
gid = 20
mac = "52:54:00:12:34:56"
interface = "eth2"
queues = 1
"#,
        );
        let c = BoxConfig::load(f.path()).unwrap();
        let (a, b) = (&c.devices[0], &c.devices[1]);
        assert_eq!(a.model, Model::VirtioNet);
        assert_eq!(a.mac, Some(MacAddr([2, 0, 0, 0xaa, 0xbb, 1])));
        assert_eq!(
            (
                a.tap.as_deref(),
                a.bridge.as_deref(),
                a.interface.as_deref()
            ),
            (Some("tnet0"), Some("br0"), None)
        );
        assert!(a.packed_ring);
        assert_eq!(a.queues, None);
        assert_eq!(
            (b.interface.as_deref(), b.tap.as_deref()),
            (Some("eth2"), None)
        );
        assert_eq!((b.gid, b.queues), (20, Some(1)));
        // Ring features: packed asked for, event indexes and indirect tables by default.
        let r = a.rings();
        assert_eq!((r.packed, r.event_idx, r.indirect_desc), (true, true, true));
        let r = b.rings();
        assert_eq!(
            (r.packed, r.event_idx, r.indirect_desc),
            (false, true, true)
        );
    }

    #[test]
    fn indirect_descriptors_can_be_turned_off() {
        let f = write(
            "[port]\ninterface = \"x\"\n[[device]]\nslot = 0\nmodel = \"virtio-blk\"\npath = \"/d\"\nindirect_desc = false\n",
        );
        let c = BoxConfig::load(f.path()).unwrap();
        assert!(!c.devices[0].rings().indirect_desc);
    }

    #[test]
    fn bad_virtio_net_configs_say_what_is_wrong() {
        let port = "[port]\ninterface = \"x\"\n";
        let net = "[[device]]\nslot = 0\nmodel = \"virtio-net\"\n";
        let mac = "mac = \"02:00:00:00:00:01\"\n";
        let cases = [
            (format!("{port}{net}tap = \"t0\"\n"), "virtio-net needs a mac"),
            (
                format!("{port}{net}tap = \"t0\"\nmac = \"02:00:00:00:01\"\n"),
                "expected aa:bb:cc:dd:ee:ff",
            ),
            (
                format!("{port}{net}tap = \"t0\"\nmac = \"00:00:00:00:00:00\"\n"),
                "all zeros",
            ),
            (
                format!("{port}{net}tap = \"t0\"\nmac = \"01:00:5e:00:00:01\"\n"),
                "multicast",
            ),
            (
                format!("{port}{net}tap = \"t0\"\nmac = \"ff:ff:ff:ff:ff:ff\"\n"),
                "multicast",
            ),
            (format!("{port}{net}{mac}"), "needs a tap"),
            (
                format!("{port}{net}{mac}tap = \"t0\"\ninterface = \"eth1\"\n"),
                "tap and interface exclude each other",
            ),
            (
                format!("{port}{net}{mac}interface = \"eth1\"\nbridge = \"br0\"\n"),
                "bridge goes with tap",
            ),
            (
                format!("{port}{net}{mac}tap = \"{}\"\n", "t".repeat(16)),
                "longer than 15 bytes",
            ),
            (
                format!("{port}{net}{mac}tap = \"t0\"\nbridge = \"br 0\"\n"),
                "bridge: \"br 0\" is not an interface name",
            ),
            (
                format!("{port}{net}{mac}tap = \"t0\"\nqueues = 0\n"),
                "queues must be at least 1",
            ),
            (
                format!("{port}{net}{mac}tap = \"t0\"\nqueues = 2\n"),
                "queues = 2: the virtio-net model has 1 queue pair",
            ),
            (
                format!("{port}{net}{mac}tap = \"t0\"\npath = \"/x\"\n"),
                "virtio-net takes no path",
            ),
            (
                format!("{port}{net}{mac}tap = \"t0\"\nserial = \"s\"\n"),
                "serial is a virtio-blk setting",
            ),
            (
                format!("{port}{net}{mac}tap = \"t0\"\nread_only = true\n"),
                "read_only is a virtio-blk setting",
            ),
            (
                format!("{port}[[device]]\nslot = 0\nmodel = \"memdev\"\n{mac}"),
                "mac is a virtio-net setting",
            ),
            (
                format!(
                    "{port}[[device]]\nslot = 0\nmodel = \"virtio-blk\"\npath = \"d\"\ntap = \"t0\"\n"
                ),
                "tap is a virtio-net setting",
            ),
            (
                format!(
                    "{port}{net}{mac}tap = \"t0\"\n[[device]]\nslot = 1\nmodel = \"virtio-net\"\n{mac}tap = \"t1\"\n"
                ),
                "is slot 0's too",
            ),
            (
                format!(
                    "{port}{net}{mac}tap = \"t0\"\n[[device]]\nslot = 1\nmodel = \"virtio-net\"\nmac = \"02:00:00:00:00:02\"\ntap = \"t0\"\n"
                ),
                "tap t0 is slot 0's already",
            ),
            (
                format!("{port}{net}{mac}interface = \"x\"\n"),
                "interface x is the box's fabric port",
            ),
        ];
        for (text, want) in cases {
            let e = box_error(&text);
            assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn a_minimal_host_config() {
        let f = write("gid = 10\n[port]\ninterface = \"tha0\"\n");
        let c = HostConfig::load(f.path()).unwrap();
        assert_eq!(c.gid, 10);
        assert_eq!(c.port.kind, PortKind::Auto);
        assert_eq!(c.memory.size, 32 << 20);
        assert_eq!(c.self_test, 0);
        assert_eq!(c.bridge.missed_infos, 3);
    }

    fn box_error(text: &str) -> String {
        BoxConfig::load(write(text).path()).unwrap_err().to_string()
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let port = "[port]\ninterface = \"x\"\n";
        let dev = "[[device]]\nslot = 0\nmodel = \"memdev\"\n";
        let cases = [
            (
                format!("{port}{dev}[bridge]\nintervall = 3\n"),
                "unknown field `intervall`",
            ),
            (dev.to_string(), "missing field `port`"),
            (port.to_string(), "no [[device]]"),
            (format!("{port}{dev}{dev}"), "slot used twice"),
            (format!("{port}{dev}gid = 4095\n"), "not a valid GID"),
            (format!("{port}{dev}gid = 0\n"), "not a valid GID"),
            (
                format!("{port}[[device]]\nslot = 32\nmodel = \"memdev\"\n"),
                "slots are 0..=31",
            ),
            (
                format!("{port}[[device]]\nslot = 0\nmodel = \"nvme\"\n"),
                "unknown variant `nvme`",
            ),
            (format!("{port}{dev}buffer_size = 1000\n"), "power of two"),
            (format!("{port}{dev}path = \"/x\"\n"), "memdev takes no path"),
            (
                format!("{port}{dev}packed_ring = true\n"),
                "packed_ring, event_idx and indirect_desc are virtio settings",
            ),
            (
                format!("{port}{dev}event_idx = false\n"),
                "packed_ring, event_idx and indirect_desc are virtio settings",
            ),
            (
                format!("{port}{dev}indirect_desc = false\n"),
                "packed_ring, event_idx and indirect_desc are virtio settings",
            ),
            (
                format!("{port}[[device]]\nslot = 1\nmodel = \"virtio-blk\"\n"),
                "virtio-blk needs a path",
            ),
            (
                format!(
                    "{port}[[device]]\nslot = 1\nmodel = \"virtio-blk\"\npath = \"d\"\nserial = \"{}\"\n",
                    "x".repeat(21)
                ),
                "at most 20 bytes",
            ),
            (
                format!("{port}{dev}[bridge]\nmissed_infos = 0\n"),
                "missed_infos",
            ),
            (
                format!("{port}{dev}[bridge]\ninfo_interval_ms = 0\n"),
                "info_interval_ms",
            ),
            ("[port\n".to_string(), "TOML parse error"),
        ];
        for (text, want) in cases {
            let e = box_error(&text);
            assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
        }
        let e = BoxConfig::load(Path::new("/nonexistent/box.toml")).unwrap_err();
        assert!(
            e.to_string().contains("reading /nonexistent/box.toml"),
            "{e}"
        );
        let e =
            HostConfig::load(write("gid = 5000\n[port]\ninterface = \"x\"\n").path()).unwrap_err();
        assert!(e.to_string().contains("not a valid GID"), "{e}");
        let host = "gid = 5\n[port]\ninterface = \"x\"\n";
        let e = HostConfig::load(write(&format!("max_payload = 384\n{host}")).path()).unwrap_err();
        assert!(e.to_string().contains("a PCIe size is 128"), "{e}");
        let c = HostConfig::load(write(&format!("max_payload = 1024\n{host}")).path()).unwrap();
        assert_eq!(c.max_payload, 1024);
        assert_eq!(
            HostConfig::load(write(host).path()).unwrap().max_payload,
            256
        );
        for bad in [0, 254] {
            let e = HostConfig::load(write(&format!("max_devices = {bad}\n{host}")).path())
                .unwrap_err();
            assert!(e.to_string().contains("1 to 253 ports"), "{e}");
        }
        let c = HostConfig::load(write(&format!("max_devices = 253\n{host}")).path()).unwrap();
        assert_eq!(c.max_devices, 253);
        assert_eq!(
            HostConfig::load(write(host).path()).unwrap().max_devices,
            32
        );
    }
}
