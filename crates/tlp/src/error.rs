//! Why a byte string is not an acceptable TLP.

use thiserror::Error;

use crate::repr::UrAnswer;

/// Why `Tlp::parse` refuses a byte string, and why `Tlp::emit` refuses a repr.
///
/// Parsing never panics; every way a buffer can be wrong maps to one of these. All of
/// them but two describe a TLP that a receiver must treat as malformed (PCIe Base
/// Specification §2.3: drop it and report an error); [`ParseError::is_malformed`] tells
/// them apart from the two that the spec makes an Unsupported Request instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("truncated TLP: {needed} bytes needed, {got} present")]
    Truncated { needed: usize, got: usize },
    #[error("TLP length mismatch: header implies {expected} bytes, buffer has {actual}")]
    LengthMismatch { expected: usize, actual: usize },
    #[error("reserved Fmt/Type combination: Fmt={fmt:#05b} Type={type_:#07b}")]
    ReservedType { fmt: u8, type_: u8 },
    #[error("TLP prefixes are not supported (Fmt=100)")]
    UnsupportedPrefix,
    #[error(
        "byte enables first={first:#06b} last={last:#06b} are invalid for a {length_dw} DW request"
    )]
    InvalidByteEnables { first: u8, last: u8, length_dw: u16 },
    #[error("64-bit address format used for address {address:#x} below 4 GiB")]
    Address64Below4G { address: u64 },
    #[error("request at {address:#x} of {length_dw} DW crosses a 4 KiB boundary")]
    CrossesFourKiB { address: u64, length_dw: u16 },
    #[error("length of {length_dw} DW is not allowed for this TLP type")]
    InvalidLength { length_dw: u16 },
    #[error("field {field} must be zero for this TLP type")]
    FieldNotAllowed { field: &'static str },
    #[error("reserved completion status {0:#05b}")]
    ReservedCompletionStatus(u8),
    /// Message routing r[2:0] = 110b or 111b. Not malformed: the spec says such a
    /// message terminates at the receiver, and a routing/code combination the spec
    /// does not define is an Unsupported Request. Messages are posted, so nothing is
    /// answered; the receiver drops it and counts it as unsupported.
    #[error(
        "reserved message routing {0:#05b}: the message terminates at the receiver as an \
         Unsupported Request"
    )]
    ReservedMessageRouting(u8),
    /// AT = 11b (reserved) in a memory request or AtomicOp. Not malformed: the spec has
    /// the receiver handle it as an Unsupported Request, which for a non-posted request
    /// (MRd, MRdLk, AtomicOp) means a UR completion as `transaction` describes it
    /// (requester, tag, Byte Count: see `Tlp::ur_answer`); a MWr (`None`) is dropped.
    #[error("reserved Address Type 11b in a memory request: an Unsupported Request")]
    ReservedAddressType { transaction: Option<UrAnswer> },
    #[error("AtomicOp address {address:#x} is not aligned to its {operand_size}-byte operand")]
    MisalignedAtomic { address: u64, operand_size: u64 },
}

impl ParseError {
    /// Whether a receiver must treat the TLP as malformed. `false` only for
    /// [`ParseError::ReservedMessageRouting`] and [`ParseError::ReservedAddressType`],
    /// which are Unsupported Requests: well-formed TLPs that the receiver does not
    /// serve (it drops them, and answers a non-posted one with a UR completion).
    pub const fn is_malformed(&self) -> bool {
        !matches!(
            self,
            ParseError::ReservedMessageRouting(_) | ParseError::ReservedAddressType { .. }
        )
    }

    /// For an Unsupported Request that is a non-posted request: the UR completion that
    /// answers it. `None` for every other error (a malformed TLP is never answered; a
    /// posted Unsupported Request is dropped).
    pub const fn ur_answer(&self) -> Option<UrAnswer> {
        match *self {
            ParseError::ReservedAddressType { transaction } => transaction,
            _ => None,
        }
    }
}

/// Why a TLP repr cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum EmitError {
    #[error("buffer of {got} bytes is too small for a {needed}-byte TLP")]
    BufferTooSmall { needed: usize, got: usize },
    #[error("the repr is not a valid TLP: {0}")]
    Invalid(#[from] ParseError),
    #[error("payload of {0} bytes is not a whole number of DWs in 4..=4096")]
    BadPayloadLength(usize),
}
