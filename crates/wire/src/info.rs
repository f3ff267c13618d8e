//! INFO frames: a bridge announces its role, identity, capabilities and devices.
//!
//! ```text
//!  0: role | device count | flags (u16)
//!  4: bridge id (u64)
//! 12: MTU (u16)            | max TLPs per frame (u16)
//! 16: info interval ms (u16) | max payload size (u16)
//! 20: max read request size (u16) | reserved (u16)
//! 24: device entries, 16 bytes each
//! ```

use crate::error::WireError;

pub const INFO_FIXED_LEN: usize = 24;
pub const DEVICE_ENTRY_LEN: usize = 16;
/// Most device entries one INFO frame carries.
pub const MAX_DEVICES: usize = 255;

/// What a bridge is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BridgeRole {
    /// The host side (virtual root complex).
    Host = 1,
    /// The device side.
    IoBox = 2,
    /// A management station (`tether ctl`).
    Manager = 3,
}

impl BridgeRole {
    pub const fn from_bits(b: u8) -> Option<BridgeRole> {
        match b {
            1 => Some(BridgeRole::Host),
            2 => Some(BridgeRole::IoBox),
            3 => Some(BridgeRole::Manager),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            BridgeRole::Host => "host",
            BridgeRole::IoBox => "iobox",
            BridgeRole::Manager => "manager",
        }
    }
}

/// One device (one slot of an I/O box) in an INFO frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct DeviceInfo {
    pub slot: u8,
    /// Bit 0: the device is ready for enumeration.
    pub flags: u8,
    pub gid: u16,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class code: base class, subclass, programming interface (24 bits).
    pub class_code: u32,
    pub revision: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

/// Device flag: ready.
pub const DEVICE_READY: u8 = 0x01;

impl DeviceInfo {
    fn parse(b: &[u8]) -> DeviceInfo {
        let be16 = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        DeviceInfo {
            slot: b[0],
            flags: b[1],
            gid: be16(2),
            vendor_id: be16(4),
            device_id: be16(6),
            class_code: u32::from_be_bytes([0, b[8], b[9], b[10]]),
            revision: b[11],
            subsystem_vendor_id: be16(12),
            subsystem_id: be16(14),
        }
    }

    fn emit(&self, b: &mut [u8]) {
        b[0] = self.slot;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.gid.to_be_bytes());
        b[4..6].copy_from_slice(&self.vendor_id.to_be_bytes());
        b[6..8].copy_from_slice(&self.device_id.to_be_bytes());
        b[8..11].copy_from_slice(&self.class_code.to_be_bytes()[1..]);
        b[11] = self.revision;
        b[12..14].copy_from_slice(&self.subsystem_vendor_id.to_be_bytes());
        b[14..16].copy_from_slice(&self.subsystem_id.to_be_bytes());
    }
}

/// The fixed part of an INFO payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct InfoRepr {
    pub role: BridgeRole,
    pub flags: u16,
    pub bridge_id: u64,
    pub mtu: u16,
    pub max_tlps_per_frame: u16,
    pub interval_ms: u16,
    pub max_payload: u16,
    pub max_read_request: u16,
}

/// A parsed INFO payload; devices are decoded lazily from the frame's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Info<'a> {
    pub repr: InfoRepr,
    entries: &'a [u8],
}

impl<'a> Info<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Info<'a>, WireError> {
        if payload.len() < INFO_FIXED_LEN {
            return Err(WireError::Truncated {
                what: "INFO payload",
                needed: INFO_FIXED_LEN,
                got: payload.len(),
            });
        }
        let b = payload;
        let be16 = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let role = BridgeRole::from_bits(b[0]).ok_or(WireError::UnknownRole(b[0]))?;
        let count = b[1] as usize;
        let needed = INFO_FIXED_LEN + count * DEVICE_ENTRY_LEN;
        if b.len() < needed {
            return Err(WireError::Truncated {
                what: "INFO device entries",
                needed,
                got: b.len(),
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[4..12]);
        Ok(Info {
            repr: InfoRepr {
                role,
                flags: be16(2),
                bridge_id: u64::from_be_bytes(id),
                mtu: be16(12),
                max_tlps_per_frame: be16(14),
                interval_ms: be16(16),
                max_payload: be16(18),
                max_read_request: be16(20),
            },
            entries: &b[INFO_FIXED_LEN..needed],
        })
    }

    pub fn device_count(&self) -> usize {
        self.entries.len() / DEVICE_ENTRY_LEN
    }

    pub fn devices(&self) -> impl Iterator<Item = DeviceInfo> + 'a {
        self.entries
            .chunks_exact(DEVICE_ENTRY_LEN)
            .map(DeviceInfo::parse)
    }
}

impl InfoRepr {
    pub const fn payload_len(devices: usize) -> usize {
        INFO_FIXED_LEN + devices * DEVICE_ENTRY_LEN
    }

    /// Writes the INFO payload at the start of `buf` and returns its size.
    pub fn emit(&self, devices: &[DeviceInfo], buf: &mut [u8]) -> Result<usize, WireError> {
        if devices.len() > MAX_DEVICES {
            return Err(WireError::TooManyDevices(devices.len()));
        }
        let len = Self::payload_len(devices.len());
        if buf.len() < len {
            return Err(WireError::NoRoom {
                needed: len,
                got: buf.len(),
            });
        }
        let b = &mut buf[..len];
        b[0] = self.role as u8;
        b[1] = devices.len() as u8;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..12].copy_from_slice(&self.bridge_id.to_be_bytes());
        for (at, v) in [
            (12, self.mtu),
            (14, self.max_tlps_per_frame),
            (16, self.interval_ms),
            (18, self.max_payload),
            (20, self.max_read_request),
            (22, 0),
        ] {
            b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        for (d, chunk) in devices
            .iter()
            .zip(b[INFO_FIXED_LEN..].chunks_exact_mut(DEVICE_ENTRY_LEN))
        {
            d.emit(chunk);
        }
        Ok(len)
    }
}
