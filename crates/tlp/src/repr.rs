//! Typed, validated representation of a TLP (`parse` from bytes, `emit` into bytes).

use core::fmt;

use crate::byte_enables::check_byte_enables;
use crate::error::{EmitError, ParseError};
use crate::packet::type_code;
use crate::types::{
    message_code, AtomicOp, Attributes, Bdf, CompletionStatus, Fmt, IntxPin, MessageRouting,
    ProcessingHint, Tag,
};
use crate::words::{self as w, make_dw0, HeaderWords};

/// Largest data payload a TLP can carry (Length = 1024 DW).
pub const MAX_PAYLOAD: usize = 4096;

/// DW0 fields that every TLP type has, apart from Fmt/Type/Length/TD which the repr
/// derives from its header and payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct HeaderFlags {
    /// TC, 0..=7.
    pub traffic_class: u8,
    pub attributes: Attributes,
    /// LN: Lightweight Notification.
    pub ln: bool,
    /// EP: poisoned data.
    pub poisoned: bool,
    /// AT: 0 = untranslated, 1 = translation request, 2 = translated, for memory
    /// requests and AtomicOps only (3 is reserved); 0 on every other TLP.
    pub address_type: u8,
}

/// Memory Read Request (MRd), or the locked variant MRdLk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemRead {
    pub requester: Bdf,
    pub tag: Tag,
    /// DW-aligned address; the 64-bit header is used exactly when it is >= 4 GiB.
    pub address: u64,
    /// 1..=1024.
    pub length_dw: u16,
    pub first_be: u8,
    pub last_be: u8,
    pub locked: bool,
    /// With TH set the Steering Tag occupies the byte-enable byte and all bytes of the
    /// range are read: `first_be` is then 0xf and `last_be` 0xf (0 for one DW).
    pub hint: Option<ProcessingHint>,
}

/// Memory Write Request (MWr). MSI is a MWr to the address/data the host programmed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemWrite {
    pub requester: Bdf,
    /// Posted requests need no tag; with TH set byte 6 is the Steering Tag and only
    /// the tag's T9/T8 bits are carried.
    pub tag: Tag,
    pub address: u64,
    pub first_be: u8,
    pub last_be: u8,
    pub hint: Option<ProcessingHint>,
}

/// I/O Read or Write Request (always 3DW, one DW).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IoRequest {
    pub requester: Bdf,
    pub tag: Tag,
    pub address: u32,
    pub first_be: u8,
}

/// Configuration Read or Write Request, Type 0 or Type 1 (always 3DW, one DW).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConfigRequest {
    pub type1: bool,
    pub requester: Bdf,
    pub tag: Tag,
    pub target: Bdf,
    /// DW-aligned byte offset into the 4 KiB configuration space.
    pub register: u16,
    pub first_be: u8,
}

/// Completion (Cpl/CplD, CplLk/CplDLk): data present exactly when the payload is not empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Completion {
    pub completer: Bdf,
    pub status: CompletionStatus,
    /// Byte Count Modified (set only by PCI-X completers).
    pub bcm: bool,
    /// Remaining byte count including this completion, 1..=4096.
    pub byte_count: u16,
    pub requester: Bdf,
    pub tag: Tag,
    /// Low 7 bits of the byte address of the first byte returned (0 for I/O and config).
    pub lower_address: u8,
    pub locked: bool,
}

/// Message (Msg) or Message with data (MsgD); always a 4DW header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Message {
    pub requester: Bdf,
    pub tag: Tag,
    pub code: u8,
    pub routing: MessageRouting,
    /// Header bytes 8..16: an address, a destination ID and vendor fields, or reserved.
    pub body: [u8; 8],
}

/// AtomicOp Request: FetchAdd, Swap or CAS.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Atomic {
    pub op: AtomicOp,
    pub requester: Bdf,
    pub tag: Tag,
    pub address: u64,
    /// With TH set the Steering Tag occupies byte 7.
    pub hint: Option<ProcessingHint>,
}

/// The type-specific part of a TLP header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Header {
    MemRead(MemRead),
    MemWrite(MemWrite),
    IoRead(IoRequest),
    IoWrite(IoRequest),
    ConfigRead(ConfigRequest),
    ConfigWrite(ConfigRequest),
    Completion(Completion),
    Message(Message),
    Atomic(Atomic),
}

/// A whole TLP: header, DW0 flags, payload (borrowed) and optional digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tlp<'a> {
    pub header: Header,
    pub flags: HeaderFlags,
    /// Data payload, a whole number of DWs; empty for TLPs without data.
    pub payload: &'a [u8],
    /// TLP digest (ECRC). Carried as is; tether protects frames with its own check.
    pub digest: Option<u32>,
}

/// Byte enables implied for a read or AtomicOp whose byte-7 carries a Steering Tag.
pub const fn implied_byte_enables(length_dw: u16) -> (u8, u8) {
    if length_dw == 1 {
        (0xf, 0)
    } else {
        (0xf, 0xf)
    }
}

#[inline]
fn payload_dw(payload: &[u8]) -> Result<u16, EmitError> {
    if payload.is_empty() || !payload.len().is_multiple_of(4) || payload.len() > MAX_PAYLOAD {
        return Err(EmitError::BadPayloadLength(payload.len()));
    }
    Ok((payload.len() / 4) as u16)
}

#[inline(always)]
fn check_four_kib(address: u64, length_dw: u16) -> Result<(), ParseError> {
    if (address & 0xfff) + length_dw as u64 * 4 > 4096 {
        return Err(crosses_four_kib(address, length_dw));
    }
    Ok(())
}

#[cold]
fn crosses_four_kib(address: u64, length_dw: u16) -> ParseError {
    ParseError::CrossesFourKiB { address, length_dw }
}

#[inline]
fn require_zero(cond: bool, field: &'static str) -> Result<(), ParseError> {
    if cond {
        Err(ParseError::FieldNotAllowed { field })
    } else {
        Ok(())
    }
}

/// I/O and configuration requests: TC0 and Attr[1:0] = 00b. LN and Attr[2] (IDO) are
/// reserved in them: `parse` ignores those bits, so a repr that sets them cannot be
/// written. (AT is checked for every type by [`check_address_type`].)
#[inline]
fn check_io_like_flags(flags: &HeaderFlags) -> Result<(), ParseError> {
    require_zero(flags.traffic_class != 0, "TC")?;
    require_zero(!flags.attributes.is_none(), "Attr")?;
    require_zero(flags.ln, "LN")
}

/// AT for every type. On a memory request or AtomicOp: 00b, 01b or 10b; 11b is
/// reserved and an Unsupported Request (the error carries whom to answer, for a
/// non-posted request). Completions, messages, I/O and configuration requests must
/// carry 00b.
#[inline]
fn check_address_type(tlp: &Tlp) -> Result<(), ParseError> {
    let at = tlp.flags.address_type;
    match tlp.header {
        Header::MemRead(_) | Header::MemWrite(_) | Header::Atomic(_) => match at {
            0..=2 => Ok(()),
            3 => Err(ParseError::ReservedAddressType {
                transaction: tlp.ur_answer(),
            }),
            _ => Err(ParseError::FieldNotAllowed { field: "AT" }),
        },
        _ => require_zero(at != 0, "AT"),
    }
}

/// Whom a completion that refuses a request (Unsupported Request, Completer Abort)
/// goes to, and the Byte Count it carries: see [`Tlp::ur_answer`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UrAnswer {
    pub requester: Bdf,
    pub tag: Tag,
    /// 1..=4096.
    pub byte_count: u16,
}

impl UrAnswer {
    /// The Unsupported Request completion (no data) this answer describes, from
    /// `completer`.
    pub fn completion(&self, completer: Bdf) -> Completion {
        Completion {
            completer,
            status: CompletionStatus::UnsupportedRequest,
            bcm: false,
            byte_count: self.byte_count,
            requester: self.requester,
            tag: self.tag,
            lower_address: 0,
            locked: false,
        }
    }
}

impl Header {
    /// The short mnemonic used by the spec and by Wireshark (`MRd`, `CplD`, ...).
    pub fn mnemonic(&self, has_data: bool) -> &'static str {
        match self {
            Header::MemRead(r) if r.locked => "MRdLk",
            Header::MemRead(_) => "MRd",
            Header::MemWrite(_) => "MWr",
            Header::IoRead(_) => "IORd",
            Header::IoWrite(_) => "IOWr",
            Header::ConfigRead(c) if c.type1 => "CfgRd1",
            Header::ConfigRead(_) => "CfgRd0",
            Header::ConfigWrite(c) if c.type1 => "CfgWr1",
            Header::ConfigWrite(_) => "CfgWr0",
            Header::Completion(c) => match (c.locked, has_data) {
                (false, false) => "Cpl",
                (false, true) => "CplD",
                (true, false) => "CplLk",
                (true, true) => "CplDLk",
            },
            Header::Message(_) if has_data => "MsgD",
            Header::Message(_) => "Msg",
            Header::Atomic(a) => match a.op {
                AtomicOp::FetchAdd => "FetchAdd",
                AtomicOp::Swap => "Swap",
                AtomicOp::CompareAndSwap => "CAS",
            },
        }
    }

    /// The requester and tag that a completion to this request will carry; `None` for
    /// posted requests and completions.
    pub fn transaction_id(&self) -> Option<(Bdf, Tag)> {
        match *self {
            Header::MemRead(r) => Some((r.requester, r.tag)),
            Header::IoRead(r) | Header::IoWrite(r) => Some((r.requester, r.tag)),
            Header::ConfigRead(r) | Header::ConfigWrite(r) => Some((r.requester, r.tag)),
            Header::Atomic(r) => Some((r.requester, r.tag)),
            Header::MemWrite(_) | Header::Completion(_) | Header::Message(_) => None,
        }
    }
}

impl Message {
    /// Assert_INTx / Deassert_INTx message (local routing, code 0x20..=0x27).
    pub fn intx(requester: Bdf, pin: IntxPin, assert: bool) -> Message {
        let base = if assert {
            message_code::ASSERT_INTA
        } else {
            message_code::DEASSERT_INTA
        };
        Message {
            requester,
            tag: Tag::default(),
            code: base + pin as u8,
            routing: MessageRouting::Local,
            body: [0; 8],
        }
    }

    /// For an INTx message: the pin and whether it asserts.
    pub fn as_intx(&self) -> Option<(IntxPin, bool)> {
        match self.code {
            message_code::ASSERT_INTA..=message_code::ASSERT_INTD => Some((
                IntxPin::from_index(self.code - message_code::ASSERT_INTA),
                true,
            )),
            message_code::DEASSERT_INTA..=message_code::DEASSERT_INTD => Some((
                IntxPin::from_index(self.code - message_code::DEASSERT_INTA),
                false,
            )),
            _ => None,
        }
    }

    /// Vendor-Defined message (Type 0 or 1), routed by ID to `destination`.
    pub fn vendor_defined(
        requester: Bdf,
        type1: bool,
        destination: Bdf,
        vendor_id: u16,
        vendor_data: u32,
    ) -> Message {
        let mut body = [0u8; 8];
        body[0..2].copy_from_slice(&destination.to_u16().to_be_bytes());
        body[2..4].copy_from_slice(&vendor_id.to_be_bytes());
        body[4..8].copy_from_slice(&vendor_data.to_be_bytes());
        Message {
            requester,
            tag: Tag::default(),
            code: if type1 {
                message_code::VENDOR_DEFINED_TYPE1
            } else {
                message_code::VENDOR_DEFINED_TYPE0
            },
            routing: MessageRouting::ById,
            body,
        }
    }

    /// For a Vendor-Defined message: (type1, destination ID, vendor ID, vendor data).
    pub fn as_vendor_defined(&self) -> Option<(bool, Bdf, u16, u32)> {
        let type1 = match self.code {
            message_code::VENDOR_DEFINED_TYPE0 => false,
            message_code::VENDOR_DEFINED_TYPE1 => true,
            _ => return None,
        };
        let b = &self.body;
        Some((
            type1,
            Bdf::from_u16(u16::from_be_bytes([b[0], b[1]])),
            u16::from_be_bytes([b[2], b[3]]),
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ))
    }

    /// For a message routed by address: the address in bytes 8..16.
    pub fn address(&self) -> Option<u64> {
        (self.routing == MessageRouting::ByAddress).then(|| u64::from_be_bytes(self.body))
    }
}

impl<'a> Tlp<'a> {
    /// A TLP with default flags and no digest.
    pub fn new(header: Header, payload: &'a [u8]) -> Tlp<'a> {
        Tlp {
            header,
            flags: HeaderFlags::default(),
            payload,
            digest: None,
        }
    }

    /// The completion that refuses this request, when it is not served: its requester
    /// and tag, and the Byte Count PCIe §2.2.9 gives it: a read's byte count from its
    /// Length and byte enables (§2.3.1.1), an AtomicOp's operand size, 4 for I/O and
    /// configuration requests. `None` for posted requests and completions, which are
    /// never answered. (A repr whose Length or payload no TLP can carry gets a Byte
    /// Count clamped to 1..=4096.)
    pub fn ur_answer(&self) -> Option<UrAnswer> {
        let (requester, tag) = self.header.transaction_id()?;
        let byte_count = match self.header {
            Header::MemRead(r) => {
                u64::from(crate::byte_enables::enabled_bytes(r.length_dw, r.first_be, r.last_be).1)
            }
            Header::Atomic(a) => {
                let data_dw = (self.payload.len() / 4).min(MAX_PAYLOAD / 4) as u16;
                a.op.operand_size(data_dw)
            }
            _ => 4,
        };
        Some(UrAnswer {
            requester,
            tag,
            byte_count: byte_count.clamp(1, MAX_PAYLOAD as u64) as u16,
        })
    }

    /// Decodes and validates one TLP that fills `bytes` exactly.
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Tlp<'a>, ParseError> {
        match crate::fast::parse(bytes) {
            Some(tlp) => Ok(tlp),
            None => Self::parse_general(bytes),
        }
    }

    /// [`Tlp::parse`] for every kind of TLP: the reference the short path agrees with.
    #[inline(never)]
    pub(crate) fn parse_general(bytes: &'a [u8]) -> Result<Tlp<'a>, ParseError> {
        let h = HeaderWords::read(bytes)?;
        let tlp = Self::decode(&h, bytes)?;
        tlp.check()?;
        Ok(tlp)
    }

    #[inline(always)]
    fn decode(h: &HeaderWords, bytes: &'a [u8]) -> Result<Tlp<'a>, ParseError> {
        let fmt = h.fmt;
        let [w0, w1, w2, _] = h.dw;
        let type_bits = w::type_bits(w0);
        let reserved = || ParseError::ReservedType {
            fmt: fmt as u8,
            type_: type_bits,
        };
        let four = h.four_dw;
        let data = fmt.has_data();
        let th = w::th(w0);
        let mut flags = HeaderFlags {
            traffic_class: w::traffic_class(w0),
            attributes: w::attributes(w0),
            ln: w::ln(w0),
            poisoned: w::ep(w0),
            address_type: w::address_type(w0),
        };
        let tag = w::tag(w0, w::byte6(w1));
        let requester = w::id(w1);
        let address = h.address();
        let first_be = w::byte7(w1) & 0xf;
        let last_be = w::byte7(w1) >> 4;
        // Memory requests and AtomicOps below 4 GiB must use the 3DW header.
        let address_format = || {
            if four && address < 1 << 32 {
                Err(ParseError::Address64Below4G { address })
            } else {
                Ok(())
            }
        };
        let hint = |steering_tag| {
            th.then(|| ProcessingHint {
                ph: h.ph(),
                steering_tag,
            })
        };
        // I/O and configuration requests: 3DW only, Length 1 (reads too), Last BE 0000.
        // TH is reserved in them and ignored.
        let io_like = || -> Result<(), ParseError> {
            if four {
                return Err(reserved());
            }
            if w::length_field(w0) != 1 {
                return Err(ParseError::InvalidLength {
                    length_dw: w::length_dw(w0),
                });
            }
            if last_be != 0 {
                return Err(ParseError::InvalidByteEnables {
                    first: first_be,
                    last: last_be,
                    length_dw: w::length_dw(w0),
                });
            }
            Ok(())
        };
        let header = match type_bits {
            type_code::MEM | type_code::MEM_LOCKED => {
                let locked = type_bits == type_code::MEM_LOCKED;
                if data && locked {
                    return Err(reserved());
                }
                address_format()?;
                if data {
                    // With TH, byte 6 is the Steering Tag and only T9/T8 remain of the tag.
                    let tag = if th {
                        Tag::wrapping(tag.value() & 0x300)
                    } else {
                        tag
                    };
                    Header::MemWrite(MemWrite {
                        requester,
                        tag,
                        address,
                        first_be,
                        last_be,
                        hint: hint(w::byte6(w1)),
                    })
                } else {
                    let length_dw = w::length_dw(w0);
                    let (first_be, last_be) = if th {
                        implied_byte_enables(length_dw)
                    } else {
                        (first_be, last_be)
                    };
                    Header::MemRead(MemRead {
                        requester,
                        tag,
                        address,
                        length_dw,
                        first_be,
                        last_be,
                        locked,
                        hint: hint(w::byte7(w1)),
                    })
                }
            }
            type_code::IO => {
                io_like()?;
                let req = IoRequest {
                    requester,
                    tag,
                    address: address as u32,
                    first_be,
                };
                if data {
                    Header::IoWrite(req)
                } else {
                    Header::IoRead(req)
                }
            }
            type_code::CFG0 | type_code::CFG1 => {
                io_like()?;
                let req = ConfigRequest {
                    type1: type_bits == type_code::CFG1,
                    requester,
                    tag,
                    target: w::config_target(w2),
                    register: w::config_register(w2),
                    first_be,
                };
                if data {
                    Header::ConfigWrite(req)
                } else {
                    Header::ConfigRead(req)
                }
            }
            type_code::CPL | type_code::CPL_LOCKED => {
                if four {
                    return Err(reserved());
                }
                let bits = w::completion_status_bits(w1);
                let status = CompletionStatus::from_bits(bits)
                    .ok_or(ParseError::ReservedCompletionStatus(bits))?;
                Header::Completion(Completion {
                    completer: requester,
                    status,
                    bcm: w::bcm(w1),
                    byte_count: w::byte_count(w1),
                    requester: w::completion_requester(w2),
                    tag: w::tag(w0, w::completion_tag_low(w2)),
                    lower_address: w::lower_address(w2),
                    locked: type_bits == type_code::CPL_LOCKED,
                })
            }
            type_code::FETCH_ADD | type_code::SWAP | type_code::CAS => {
                if !data {
                    return Err(reserved());
                }
                address_format()?;
                let op = match type_bits {
                    type_code::FETCH_ADD => AtomicOp::FetchAdd,
                    type_code::SWAP => AtomicOp::Swap,
                    _ => AtomicOp::CompareAndSwap,
                };
                Header::Atomic(Atomic {
                    op,
                    requester,
                    tag,
                    address,
                    hint: hint(w::byte7(w1)),
                })
            }
            t if t & type_code::MSG_MASK == type_code::MSG => {
                if !four {
                    return Err(reserved());
                }
                // TH is reserved in messages and ignored.
                let routing_bits = t & 0x7;
                let routing = MessageRouting::from_bits(routing_bits)
                    .ok_or(ParseError::ReservedMessageRouting(routing_bits))?;
                let mut body = [0u8; 8];
                body[..4].copy_from_slice(&h.dw[2].to_be_bytes());
                body[4..].copy_from_slice(&h.dw[3].to_be_bytes());
                Header::Message(Message {
                    requester,
                    tag,
                    code: w::byte7(w1),
                    routing,
                    body,
                })
            }
            _ => return Err(reserved()),
        };
        if matches!(
            header,
            Header::IoRead(_) | Header::IoWrite(_) | Header::ConfigRead(_) | Header::ConfigWrite(_)
        ) {
            // LN and Attr[2] (IDO) are reserved in I/O and configuration requests.
            flags.ln = false;
            flags.attributes.id_based_ordering = false;
        }
        // HeaderWords::read guaranteed header + data + digest == bytes.len().
        let (payload, digest) = if w::td(w0) {
            let at = bytes.len() - 4;
            let d = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            (&bytes[fmt.header_len()..at], Some(d))
        } else {
            (&bytes[fmt.header_len()..], None)
        };
        Ok(Tlp {
            header,
            flags,
            payload,
            digest,
        })
    }

    /// The rules a receiver checks beyond decoding (and that `emit` enforces).
    #[inline(always)]
    pub fn check(&self) -> Result<(), ParseError> {
        self.check_form()?;
        // Last: a request with AT = 11b is an Unsupported Request only when it is
        // otherwise well formed; a malformed one is malformed (PCIe §2.3.1).
        check_address_type(self)
    }

    /// Every rule of [`Tlp::check`] but the Address Type.
    #[inline(always)]
    fn check_form(&self) -> Result<(), ParseError> {
        let data = !self.payload.is_empty();
        let data_dw = (self.payload.len() / 4) as u16;
        if self.flags.traffic_class > 7 {
            return Err(ParseError::FieldNotAllowed { field: "TC" });
        }
        match &self.header {
            Header::MemRead(r) => {
                if data || !(1..=1024).contains(&r.length_dw) {
                    return Err(ParseError::InvalidLength {
                        length_dw: r.length_dw,
                    });
                }
                check_hint(r.hint)?;
                if r.hint.is_some() {
                    let implied = implied_byte_enables(r.length_dw);
                    if (r.first_be, r.last_be) != implied {
                        return Err(ParseError::InvalidByteEnables {
                            first: r.first_be,
                            last: r.last_be,
                            length_dw: r.length_dw,
                        });
                    }
                }
                check_byte_enables(r.length_dw, r.first_be, r.last_be, r.address)?;
                check_four_kib(r.address, r.length_dw)
            }
            Header::MemWrite(w) => {
                if !data {
                    return Err(ParseError::InvalidLength { length_dw: 0 });
                }
                check_hint(w.hint)?;
                if w.hint.is_some() && w.tag.value() & 0xff != 0 {
                    return Err(ParseError::FieldNotAllowed { field: "Tag" });
                }
                check_byte_enables(data_dw, w.first_be, w.last_be, w.address)?;
                check_four_kib(w.address, data_dw)
            }
            Header::IoRead(r) | Header::IoWrite(r) => {
                check_io_like_flags(&self.flags)?;
                let want_data = matches!(self.header, Header::IoWrite(_));
                check_single_dw(want_data, self.payload.len())?;
                check_byte_enables(1, r.first_be, 0, r.address as u64)
            }
            Header::ConfigRead(c) | Header::ConfigWrite(c) => {
                check_io_like_flags(&self.flags)?;
                let want_data = matches!(self.header, Header::ConfigWrite(_));
                check_single_dw(want_data, self.payload.len())?;
                if c.register >= 4096 || c.register % 4 != 0 {
                    return Err(ParseError::FieldNotAllowed { field: "Register" });
                }
                Ok(())
            }
            Header::Completion(c) => {
                if c.byte_count == 0 || c.byte_count > 4096 {
                    return Err(ParseError::FieldNotAllowed {
                        field: "Byte Count",
                    });
                }
                if c.lower_address > 0x7f {
                    return Err(ParseError::FieldNotAllowed {
                        field: "Lower Address",
                    });
                }
                check_payload_len(self.payload.len())
            }
            Header::Message(m) => {
                if self.flags.traffic_class != 0 && message_code::requires_tc0(m.code) {
                    return Err(ParseError::FieldNotAllowed { field: "TC" });
                }
                check_payload_len(self.payload.len())
            }
            Header::Atomic(a) => {
                if !a.op.valid_length(data_dw) || !self.payload.len().is_multiple_of(4) {
                    return Err(ParseError::InvalidLength { length_dw: data_dw });
                }
                check_hint(a.hint)?;
                let operand_size = a.op.operand_size(data_dw);
                if a.address % operand_size != 0 {
                    return Err(ParseError::MisalignedAtomic {
                        address: a.address,
                        operand_size,
                    });
                }
                Ok(())
            }
        }
    }

    #[inline]
    fn uses_four_dw(&self) -> bool {
        match &self.header {
            Header::MemRead(r) => r.address >= 1 << 32,
            Header::MemWrite(w) => w.address >= 1 << 32,
            Header::Atomic(a) => a.address >= 1 << 32,
            Header::Message(_) => true,
            _ => false,
        }
    }

    /// Size of the encoded TLP in bytes.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        let header = if self.uses_four_dw() { 16 } else { 12 };
        header + self.payload.len() + if self.digest.is_some() { 4 } else { 0 }
    }

    /// The TLP's bytes in a new buffer of exactly its size.
    pub fn to_vec(&self) -> Result<Vec<u8>, EmitError> {
        let mut buf = vec![0u8; self.buffer_len()];
        let n = self.emit(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Writes the TLP at the start of `buf` and returns its size. Reserved fields are zero.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        match crate::fast::emit(self, buf) {
            Some(len) => Ok(len),
            None => self.emit_general(buf),
        }
    }

    /// [`Tlp::emit`] for every kind of TLP: the reference the short path agrees with.
    #[inline(never)]
    pub(crate) fn emit_general(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        self.check()?;
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(EmitError::BufferTooSmall {
                needed: len,
                got: buf.len(),
            });
        }
        let has_data = !self.payload.is_empty();
        let four = self.uses_four_dw();
        let fmt = Fmt::new(four, has_data);
        let data_dw = || payload_dw(self.payload);
        let id_tag =
            |id: Bdf, tag: Tag| ((id.to_u16() as u32) << 16) | ((tag.value() as u32 & 0xff) << 8);
        let be = |first: u8, last: u8| ((last as u32 & 0xf) << 4) | (first as u32 & 0xf);
        // Address DW(s) with PH in the low bits: (dw2, dw3).
        let addr = |address: u64, ph: u8| {
            if four {
                (
                    (address >> 32) as u32,
                    (address as u32 & !3) | (ph as u32 & 3),
                )
            } else {
                ((address as u32 & !3) | (ph as u32 & 3), 0)
            }
        };
        // (type, tag for T9/T8, length, TH, dw1, dw2, dw3)
        let (type_bits, tag, length_dw, th, dw1, dw2, dw3) = match &self.header {
            Header::MemRead(r) => {
                let type_bits = if r.locked {
                    type_code::MEM_LOCKED
                } else {
                    type_code::MEM
                };
                let (byte7, ph) = match r.hint {
                    Some(h) => (h.steering_tag as u32, h.ph),
                    None => (be(r.first_be, r.last_be), 0),
                };
                let (a2, a3) = addr(r.address, ph);
                (
                    type_bits,
                    r.tag,
                    r.length_dw,
                    r.hint.is_some(),
                    id_tag(r.requester, r.tag) | byte7,
                    a2,
                    a3,
                )
            }
            Header::MemWrite(w) => {
                let (byte6, ph) = match w.hint {
                    Some(h) => (h.steering_tag as u32, h.ph),
                    None => (w.tag.value() as u32 & 0xff, 0),
                };
                let dw1 = ((w.requester.to_u16() as u32) << 16)
                    | (byte6 << 8)
                    | be(w.first_be, w.last_be);
                let (a2, a3) = addr(w.address, ph);
                (
                    type_code::MEM,
                    w.tag,
                    data_dw()?,
                    w.hint.is_some(),
                    dw1,
                    a2,
                    a3,
                )
            }
            Header::IoRead(r) | Header::IoWrite(r) => (
                type_code::IO,
                r.tag,
                1,
                false,
                id_tag(r.requester, r.tag) | be(r.first_be, 0),
                r.address & !3,
                0,
            ),
            Header::ConfigRead(c) | Header::ConfigWrite(c) => {
                let type_bits = if c.type1 {
                    type_code::CFG1
                } else {
                    type_code::CFG0
                };
                let dw2 = w::config_dw2(c.target, c.register);
                (
                    type_bits,
                    c.tag,
                    1,
                    false,
                    id_tag(c.requester, c.tag) | be(c.first_be, 0),
                    dw2,
                    0,
                )
            }
            Header::Completion(c) => {
                let type_bits = if c.locked {
                    type_code::CPL_LOCKED
                } else {
                    type_code::CPL
                };
                let bc = c.byte_count as u32 & 0xfff; // 4096 encodes as 0
                let dw1 = ((c.completer.to_u16() as u32) << 16)
                    | ((c.status as u32) << 13)
                    | ((c.bcm as u32) << 12)
                    | bc;
                let dw2 = ((c.requester.to_u16() as u32) << 16)
                    | ((c.tag.value() as u32 & 0xff) << 8)
                    | (c.lower_address as u32 & 0x7f);
                let length = if has_data { data_dw()? } else { 0 };
                (type_bits, c.tag, length, false, dw1, dw2, 0)
            }
            Header::Message(m) => {
                let length = if has_data { data_dw()? } else { 0 };
                let b = &m.body;
                (
                    type_code::MSG | m.routing as u8,
                    m.tag,
                    length,
                    false,
                    id_tag(m.requester, m.tag) | m.code as u32,
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                )
            }
            Header::Atomic(a) => {
                let type_bits = match a.op {
                    AtomicOp::FetchAdd => type_code::FETCH_ADD,
                    AtomicOp::Swap => type_code::SWAP,
                    AtomicOp::CompareAndSwap => type_code::CAS,
                };
                let (byte7, ph) = match a.hint {
                    Some(h) => (h.steering_tag as u32, h.ph),
                    None => (0, 0),
                };
                let (a2, a3) = addr(a.address, ph);
                (
                    type_bits,
                    a.tag,
                    data_dw()?,
                    a.hint.is_some(),
                    id_tag(a.requester, a.tag) | byte7,
                    a2,
                    a3,
                )
            }
        };
        let f = &self.flags;
        let dw0 = make_dw0(
            fmt,
            type_bits,
            tag,
            f.traffic_class,
            f.attributes,
            f.ln,
            th,
            self.digest.is_some(),
            f.poisoned,
            f.address_type,
            length_dw,
        );
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&dw0.to_be_bytes());
        header[4..8].copy_from_slice(&dw1.to_be_bytes());
        header[8..12].copy_from_slice(&dw2.to_be_bytes());
        header[12..16].copy_from_slice(&dw3.to_be_bytes());
        let out = &mut buf[..len];
        // Fixed-size copies compile to plain stores.
        let hlen = if four {
            out[..16].copy_from_slice(&header);
            16
        } else {
            out[..12].copy_from_slice(&header[..12]);
            12
        };
        if has_data {
            out[hlen..hlen + self.payload.len()].copy_from_slice(self.payload);
        }
        if let Some(d) = self.digest {
            out[len - 4..].copy_from_slice(&d.to_be_bytes());
        }
        Ok(len)
    }
}

#[inline]
fn check_hint(hint: Option<ProcessingHint>) -> Result<(), ParseError> {
    match hint {
        Some(h) if h.ph > 3 => Err(ParseError::FieldNotAllowed { field: "PH" }),
        _ => Ok(()),
    }
}

#[inline]
fn check_single_dw(want_data: bool, payload_len: usize) -> Result<(), ParseError> {
    let expected = if want_data { 4 } else { 0 };
    if payload_len != expected {
        return Err(ParseError::InvalidLength {
            length_dw: (payload_len / 4) as u16,
        });
    }
    Ok(())
}

#[inline]
fn check_payload_len(len: usize) -> Result<(), ParseError> {
    if !len.is_multiple_of(4) || len > MAX_PAYLOAD {
        return Err(ParseError::InvalidLength {
            length_dw: (len / 4) as u16,
        });
    }
    Ok(())
}

impl fmt::Display for Tlp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has_data = !self.payload.is_empty();
        let name = self.header.mnemonic(has_data);
        match &self.header {
            Header::MemRead(r) => write!(
                f,
                "{name}{} {} tag {} addr {:#x} len {} BE {:x}/{:x}",
                if r.address >= 1 << 32 { 64 } else { 32 },
                r.requester,
                r.tag,
                r.address,
                r.length_dw,
                r.first_be,
                r.last_be
            ),
            Header::MemWrite(w) => write!(
                f,
                "{name}{} {} addr {:#x} len {} BE {:x}/{:x}",
                if w.address >= 1 << 32 { 64 } else { 32 },
                w.requester,
                w.address,
                self.payload.len() / 4,
                w.first_be,
                w.last_be
            ),
            Header::IoRead(r) | Header::IoWrite(r) => write!(
                f,
                "{name} {} tag {} port {:#x} BE {:x}",
                r.requester, r.tag, r.address, r.first_be
            ),
            Header::ConfigRead(c) | Header::ConfigWrite(c) => write!(
                f,
                "{name} {} tag {} -> {} reg {:#05x} BE {:x}",
                c.requester, c.tag, c.target, c.register, c.first_be
            ),
            Header::Completion(c) => write!(
                f,
                "{name} {} -> {} tag {} {} bytes {} la {:#04x}",
                c.completer,
                c.requester,
                c.tag,
                c.status.abbreviation(),
                c.byte_count,
                c.lower_address
            ),
            Header::Message(m) => {
                write!(f, "{name} {} ", m.requester)?;
                match message_code::name(m.code) {
                    Some(n) => write!(f, "{n}")?,
                    None => write!(f, "code {:#04x}", m.code)?,
                }
                write!(f, " routing {:?}", m.routing)
            }
            Header::Atomic(a) => write!(
                f,
                "{name} {} tag {} addr {:#x} len {}",
                a.requester,
                a.tag,
                a.address,
                self.payload.len() / 4
            ),
        }
    }
}
