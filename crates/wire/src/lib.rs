//! tether's frame format (docs/wire-format.md is the normative description):
//! Ethernet II, an 802.1Q tag whose VLAN ID is the Group ID, the tether header, and a
//! payload of TLP records (DATA), nothing (ACK/NAK), an announcement (INFO) or a
//! management command (CTRL).
//!
//! Parsing never panics on any input; every failure is a [`WireError`].

pub mod auth;
pub mod ctrl;
pub mod error;
pub mod ethernet;
pub mod frame;
pub mod header;
pub mod info;
pub mod records;
pub mod sample;

pub use auth::{AuthKey, Nonce, NonceSeq, SessionKey, NONCE_LEN, SEAL_LEN, TAG_LEN};
pub use ctrl::{CtrlOp, CtrlRepr, CtrlStatus};
pub use error::WireError;
pub use ethernet::{EthernetRepr, MacAddr, VlanTag};
pub use frame::{
    emit_bare, emit_ctrl, emit_info, max_frame_len, AuthRefusal, Body, Frame, FrameWriter, Seal,
};
pub use header::{
    echo_wait_units, flags, frame_check, FrameKind, HeaderView, TetherHeader, ECHO_WAIT_UNIT_US,
    HEADER_LEN, VERSION,
};
pub use info::{BridgeRole, DeviceInfo, Info, InfoRepr, DEVICE_READY};
pub use records::{Record, RecordType, Records};

/// tether's EtherType (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// The group free (unassigned) devices sit in, as in ExpEther.
pub const GID_FREE: u16 = 4093;

/// Whether `gid` can be a Group ID: VLAN IDs 0 (priority tag) and 4095 are reserved.
pub const fn valid_gid(gid: u16) -> bool {
    gid >= 1 && gid <= 4094
}
