//! Why bytes are not an acceptable tether frame.

use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("truncated {what}: {needed} bytes needed, {got} present")]
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("EtherType {0:#06x} is not tether's")]
    NotTether(u16),
    #[error("unsupported tether version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("tether header length {0} words is shorter than the fixed header")]
    BadHeaderLength(u8),
    #[error("frame check failed: carried {carried:#010x}, computed {computed:#010x}")]
    BadCheck { carried: u32, computed: u32 },
    #[error("record of type {0} is not known")]
    UnknownRecord(u8),
    #[error("bad TLP in record: {0}")]
    Tlp(#[from] tlp::ParseError),
    #[error("unknown bridge role {0}")]
    UnknownRole(u8),
    #[error("unknown control operation {0}")]
    UnknownCtrlOp(u8),
    #[error("unknown control status {0}")]
    UnknownCtrlStatus(u8),
    #[error("group ID {0} is outside 1..=4094")]
    BadGroup(u16),
    #[error("{what} does not belong in a {kind} frame")]
    WrongKind {
        what: &'static str,
        kind: &'static str,
    },
    #[error("no room: {needed} bytes needed, {got} left")]
    NoRoom { needed: usize, got: usize },
    #[error("too many devices for one INFO frame: {0}")]
    TooManyDevices(usize),
    #[error("a session key is for its sender's frames only: {key} is not {src}")]
    NotTheSender {
        key: crate::MacAddr,
        src: crate::MacAddr,
    },
    #[error("malformed MAC address (expected aa:bb:cc:dd:ee:ff)")]
    BadMacAddress,
}
