//! Small value types that appear in TLP headers.

use core::fmt;

/// A PCI routing ID: bus, device and function (`bb:dd.f`, as lspci prints it).
///
/// Requester ID, completer ID and the target of configuration requests all use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bdf(u16);

impl Bdf {
    /// Builds a routing ID. Returns `None` when `device > 31` or `function > 7`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Bdf(((bus as u16) << 8)
            | ((device as u16) << 3)
            | function as u16))
    }

    /// The routing ID as it is carried on the wire (bus in the high byte).
    pub const fn from_u16(raw: u16) -> Bdf {
        Bdf(raw)
    }

    pub const fn to_u16(self) -> u16 {
        self.0
    }

    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    pub const fn device(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }

    pub const fn function(self) -> u8 {
        (self.0 & 0x7) as u8
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A transaction tag. With 10-bit tags enabled it is 0..=1023; the two high bits
/// travel as T9 and T8 in the first header DW.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct Tag(u16);

impl Tag {
    pub const MAX: u16 = 0x3ff;

    /// Returns `None` for values that do not fit in 10 bits.
    pub const fn new(value: u16) -> Option<Tag> {
        if value > Self::MAX {
            None
        } else {
            Some(Tag(value))
        }
    }

    /// Keeps the low 10 bits of `value`.
    pub const fn wrapping(value: u16) -> Tag {
        Tag(value & Self::MAX)
    }

    pub const fn value(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `Fmt` field: header size, whether data follows, or a TLP prefix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fmt {
    ThreeDwNoData = 0b000,
    FourDwNoData = 0b001,
    ThreeDwData = 0b010,
    FourDwData = 0b011,
    Prefix = 0b100,
}

impl Fmt {
    pub const fn from_bits(bits: u8) -> Option<Fmt> {
        match bits {
            0b000 => Some(Fmt::ThreeDwNoData),
            0b001 => Some(Fmt::FourDwNoData),
            0b010 => Some(Fmt::ThreeDwData),
            0b011 => Some(Fmt::FourDwData),
            0b100 => Some(Fmt::Prefix),
            _ => None,
        }
    }

    pub const fn new(four_dw: bool, data: bool) -> Fmt {
        match (four_dw, data) {
            (false, false) => Fmt::ThreeDwNoData,
            (true, false) => Fmt::FourDwNoData,
            (false, true) => Fmt::ThreeDwData,
            (true, true) => Fmt::FourDwData,
        }
    }

    pub const fn is_four_dw(self) -> bool {
        matches!(self, Fmt::FourDwNoData | Fmt::FourDwData)
    }

    pub const fn has_data(self) -> bool {
        matches!(self, Fmt::ThreeDwData | Fmt::FourDwData)
    }

    /// Header size in bytes (prefixes are not headers and report 4).
    pub const fn header_len(self) -> usize {
        if self.is_four_dw() {
            16
        } else if matches!(self, Fmt::Prefix) {
            4
        } else {
            12
        }
    }
}

/// The Attr field: Relaxed Ordering, No Snoop and ID-Based Ordering.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Attributes {
    pub relaxed_ordering: bool,
    pub no_snoop: bool,
    pub id_based_ordering: bool,
}

impl Attributes {
    pub const NONE: Attributes = Attributes {
        relaxed_ordering: false,
        no_snoop: false,
        id_based_ordering: false,
    };

    pub const fn is_none(self) -> bool {
        !self.relaxed_ordering && !self.no_snoop && !self.id_based_ordering
    }
}

/// Completion Status.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CompletionStatus {
    /// Successful Completion.
    Success = 0b000,
    /// Unsupported Request.
    UnsupportedRequest = 0b001,
    /// Configuration Request Retry Status.
    RequestRetry = 0b010,
    /// Completer Abort.
    CompleterAbort = 0b100,
}

impl CompletionStatus {
    pub const fn from_bits(bits: u8) -> Option<CompletionStatus> {
        match bits {
            0b000 => Some(CompletionStatus::Success),
            0b001 => Some(CompletionStatus::UnsupportedRequest),
            0b010 => Some(CompletionStatus::RequestRetry),
            0b100 => Some(CompletionStatus::CompleterAbort),
            _ => None,
        }
    }

    /// The short names used by the spec and by lspci: SC, UR, CRS, CA.
    pub const fn abbreviation(self) -> &'static str {
        match self {
            CompletionStatus::Success => "SC",
            CompletionStatus::UnsupportedRequest => "UR",
            CompletionStatus::RequestRetry => "CRS",
            CompletionStatus::CompleterAbort => "CA",
        }
    }
}

/// Message routing subfield `r[2:0]` of the Type field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MessageRouting {
    ToRootComplex = 0b000,
    ByAddress = 0b001,
    ById = 0b010,
    BroadcastFromRootComplex = 0b011,
    Local = 0b100,
    GatheredToRootComplex = 0b101,
}

impl MessageRouting {
    pub const fn from_bits(bits: u8) -> Option<MessageRouting> {
        match bits {
            0b000 => Some(MessageRouting::ToRootComplex),
            0b001 => Some(MessageRouting::ByAddress),
            0b010 => Some(MessageRouting::ById),
            0b011 => Some(MessageRouting::BroadcastFromRootComplex),
            0b100 => Some(MessageRouting::Local),
            0b101 => Some(MessageRouting::GatheredToRootComplex),
            _ => None,
        }
    }
}

/// AtomicOp request kinds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AtomicOp {
    FetchAdd,
    Swap,
    CompareAndSwap,
}

impl AtomicOp {
    /// Whether `length_dw` is a legal payload length for this operation.
    pub const fn valid_length(self, length_dw: u16) -> bool {
        match self {
            AtomicOp::FetchAdd | AtomicOp::Swap => matches!(length_dw, 1 | 2),
            AtomicOp::CompareAndSwap => matches!(length_dw, 2 | 4 | 8),
        }
    }

    /// Operand size in bytes for a payload of `length_dw` DWs (CAS carries two operands).
    pub const fn operand_size(self, length_dw: u16) -> u64 {
        match self {
            AtomicOp::FetchAdd | AtomicOp::Swap => length_dw as u64 * 4,
            AtomicOp::CompareAndSwap => length_dw as u64 * 2,
        }
    }
}

/// TLP Processing Hints, present when the TH bit is set.
///
/// PH rides in the low two address bits. The 8-bit Steering Tag rides in the Tag field
/// of a Memory Write, and in the byte-enable byte of a Memory Read or AtomicOp.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ProcessingHint {
    pub ph: u8,
    pub steering_tag: u8,
}

/// INTx pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum IntxPin {
    A = 0,
    B = 1,
    C = 2,
    D = 3,
}

impl IntxPin {
    pub const fn from_index(i: u8) -> IntxPin {
        match i & 3 {
            0 => IntxPin::A,
            1 => IntxPin::B,
            2 => IntxPin::C,
            _ => IntxPin::D,
        }
    }
}

/// Message codes this codec names; every other code is carried as a number.
pub mod message_code {
    pub const UNLOCK: u8 = 0x00;
    pub const LTR: u8 = 0x10;
    pub const PM_ACTIVE_STATE_NAK: u8 = 0x14;
    pub const PM_PME: u8 = 0x18;
    pub const PME_TURN_OFF: u8 = 0x19;
    pub const PME_TO_ACK: u8 = 0x1b;
    pub const ASSERT_INTA: u8 = 0x20;
    pub const ASSERT_INTD: u8 = 0x23;
    pub const DEASSERT_INTA: u8 = 0x24;
    pub const DEASSERT_INTD: u8 = 0x27;
    pub const ERR_COR: u8 = 0x30;
    pub const ERR_NONFATAL: u8 = 0x31;
    pub const ERR_FATAL: u8 = 0x33;
    pub const SET_SLOT_POWER_LIMIT: u8 = 0x50;
    pub const VENDOR_DEFINED_TYPE0: u8 = 0x7e;
    pub const VENDOR_DEFINED_TYPE1: u8 = 0x7f;

    /// Messages that must travel on TC0: INTx (§2.2.8.1), power management (§2.2.8.2),
    /// error signalling (§2.2.8.3) and Set_Slot_Power_Limit (§2.2.8.5). The spec makes
    /// receivers check this and treat any other TC as a malformed TLP.
    pub const fn requires_tc0(code: u8) -> bool {
        matches!(
            code,
            PM_ACTIVE_STATE_NAK | PM_PME | PME_TURN_OFF | PME_TO_ACK | ASSERT_INTA
                ..=DEASSERT_INTD | ERR_COR | ERR_NONFATAL | ERR_FATAL | SET_SLOT_POWER_LIMIT
        )
    }

    /// The spec's name for a message code, where this codec knows it.
    pub const fn name(code: u8) -> Option<&'static str> {
        Some(match code {
            UNLOCK => "Unlock",
            LTR => "LTR",
            PM_ACTIVE_STATE_NAK => "PM_Active_State_Nak",
            PM_PME => "PM_PME",
            PME_TURN_OFF => "PME_Turn_Off",
            PME_TO_ACK => "PME_TO_Ack",
            0x20 => "Assert_INTA",
            0x21 => "Assert_INTB",
            0x22 => "Assert_INTC",
            0x23 => "Assert_INTD",
            0x24 => "Deassert_INTA",
            0x25 => "Deassert_INTB",
            0x26 => "Deassert_INTC",
            0x27 => "Deassert_INTD",
            ERR_COR => "ERR_COR",
            ERR_NONFATAL => "ERR_NONFATAL",
            ERR_FATAL => "ERR_FATAL",
            SET_SLOT_POWER_LIMIT => "Set_Slot_Power_Limit",
            VENDOR_DEFINED_TYPE0 => "Vendor_Defined_Type0",
            VENDOR_DEFINED_TYPE1 => "Vendor_Defined_Type1",
            _ => return None,
        })
    }
}
