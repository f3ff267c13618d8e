//! A TLP header as big-endian 32-bit words, and the one place that knows where each
//! field sits in them (the spec's header figures, DW by DW). The zero-copy view
//! (`TlpPacket`) and the repr (`Tlp`) both read and write fields through these.

use crate::error::ParseError;
use crate::types::{Attributes, Bdf, Fmt, Tag};

/// Bit offsets within DW0.
mod dw0 {
    pub const FMT: u32 = 29;
    pub const TYPE: u32 = 24;
    pub const T9: u32 = 23;
    pub const TC: u32 = 20;
    pub const T8: u32 = 19;
    pub const ATTR2: u32 = 18;
    pub const LN: u32 = 17;
    pub const TH: u32 = 16;
    pub const TD: u32 = 15;
    pub const EP: u32 = 14;
    pub const ATTR1: u32 = 13;
    pub const ATTR0: u32 = 12;
    pub const AT: u32 = 10;
}

const fn bit(w: u32, at: u32) -> bool {
    w & (1 << at) != 0
}

// DW0: format, type and the flags every TLP has.
pub(crate) const fn fmt_bits(w0: u32) -> u8 {
    (w0 >> dw0::FMT) as u8
}
pub(crate) const fn type_bits(w0: u32) -> u8 {
    (w0 >> dw0::TYPE) as u8 & 0x1f
}
pub(crate) const fn traffic_class(w0: u32) -> u8 {
    (w0 >> dw0::TC) as u8 & 7
}
pub(crate) const fn attributes(w0: u32) -> Attributes {
    Attributes {
        relaxed_ordering: bit(w0, dw0::ATTR1),
        no_snoop: bit(w0, dw0::ATTR0),
        id_based_ordering: bit(w0, dw0::ATTR2),
    }
}
pub(crate) const fn ln(w0: u32) -> bool {
    bit(w0, dw0::LN)
}
pub(crate) const fn th(w0: u32) -> bool {
    bit(w0, dw0::TH)
}
pub(crate) const fn td(w0: u32) -> bool {
    bit(w0, dw0::TD)
}
pub(crate) const fn ep(w0: u32) -> bool {
    bit(w0, dw0::EP)
}
pub(crate) const fn address_type(w0: u32) -> u8 {
    (w0 >> dw0::AT) as u8 & 3
}
/// The raw 10-bit Length field.
pub(crate) const fn length_field(w0: u32) -> u16 {
    (w0 & 0x3ff) as u16
}
/// Length in DW, with the encoding 0 meaning 1024.
pub(crate) const fn length_dw(w0: u32) -> u16 {
    match length_field(w0) {
        0 => 1024,
        n => n,
    }
}
/// T9/T8 from DW0 joined with the 8-bit tag field `low`.
pub(crate) const fn tag(w0: u32, low: u8) -> Tag {
    let t9 = (w0 >> dw0::T9) as u16 & 1;
    let t8 = (w0 >> dw0::T8) as u16 & 1;
    Tag::wrapping((t9 << 9) | (t8 << 8) | low as u16)
}

// DW1: requester/completer ID, tag or completion fields, byte enables or message code.
pub(crate) const fn id(w1: u32) -> Bdf {
    Bdf::from_u16((w1 >> 16) as u16)
}
pub(crate) const fn byte6(w1: u32) -> u8 {
    (w1 >> 8) as u8
}
pub(crate) const fn byte7(w1: u32) -> u8 {
    w1 as u8
}
pub(crate) const fn completion_status_bits(w1: u32) -> u8 {
    byte6(w1) >> 5
}
pub(crate) const fn bcm(w1: u32) -> bool {
    byte6(w1) & 0x10 != 0
}
/// The raw 12-bit Byte Count field.
pub(crate) const fn byte_count_field(w1: u32) -> u16 {
    (w1 & 0xfff) as u16
}
/// Byte Count with the encoding 0 meaning 4096.
pub(crate) const fn byte_count(w1: u32) -> u16 {
    match byte_count_field(w1) {
        0 => 4096,
        n => n,
    }
}

// DW2/DW3: address, configuration target, or completion requester/tag/lower address.
/// Address with the low two (PH) bits cleared.
pub(crate) const fn address(four_dw: bool, w2: u32, w3: u32) -> u64 {
    if four_dw {
        ((w2 as u64) << 32) | (w3 & !3) as u64
    } else {
        (w2 & !3) as u64
    }
}
pub(crate) const fn ph(four_dw: bool, w2: u32, w3: u32) -> u8 {
    (if four_dw { w3 } else { w2 }) as u8 & 3
}
pub(crate) const fn config_target(w2: u32) -> Bdf {
    Bdf::from_u16((w2 >> 16) as u16)
}
/// Extended Register Number and Register Number as a DW-aligned byte offset.
pub(crate) const fn config_register(w2: u32) -> u16 {
    ((((w2 >> 8) & 0xf) << 8) | (w2 & 0xfc)) as u16
}
pub(crate) const fn config_dw2(target: Bdf, register: u16) -> u32 {
    let reg = register as u32;
    ((target.to_u16() as u32) << 16) | (((reg >> 8) & 0xf) << 8) | (reg & 0xfc)
}
pub(crate) const fn completion_requester(w2: u32) -> Bdf {
    Bdf::from_u16((w2 >> 16) as u16)
}
pub(crate) const fn completion_tag_low(w2: u32) -> u8 {
    (w2 >> 8) as u8
}
pub(crate) const fn lower_address(w2: u32) -> u8 {
    w2 as u8 & 0x7f
}

/// The size a TLP must have given its DW0, or why it cannot be one.
pub(crate) fn expected_len(w0: u32) -> Result<(Fmt, usize), ParseError> {
    let bits = fmt_bits(w0);
    let fmt = match Fmt::from_bits(bits) {
        Some(Fmt::Prefix) => return Err(ParseError::UnsupportedPrefix),
        Some(fmt) => fmt,
        None => {
            return Err(ParseError::ReservedType {
                fmt: bits,
                type_: type_bits(w0),
            })
        }
    };
    let data = if fmt.has_data() {
        length_dw(w0) as usize * 4
    } else {
        0
    };
    let digest = if td(w0) { 4 } else { 0 };
    Ok((fmt, fmt.header_len() + data + digest))
}

/// Big-endian word `i` of `b` (the caller guarantees `b.len() >= 4 * i + 4`).
pub(crate) fn word(b: &[u8], i: usize) -> u32 {
    let at = i * 4;
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Header words read from a buffer whose size has been checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderWords {
    pub dw: [u32; 4],
    pub fmt: Fmt,
    pub four_dw: bool,
}

impl HeaderWords {
    /// Reads the header of a TLP that must fill `bytes` exactly.
    #[inline]
    pub fn read(bytes: &[u8]) -> Result<HeaderWords, ParseError> {
        if bytes.len() < 4 {
            return Err(ParseError::Truncated {
                needed: 4,
                got: bytes.len(),
            });
        }
        let w0 = word(bytes, 0);
        let (fmt, total) = expected_len(w0)?;
        let header = fmt.header_len();
        if bytes.len() < header.max(total) {
            return Err(ParseError::Truncated {
                needed: header.max(total),
                got: bytes.len(),
            });
        }
        if bytes.len() != total {
            return Err(ParseError::LengthMismatch {
                expected: total,
                actual: bytes.len(),
            });
        }
        let four_dw = header == 16;
        let w3 = if four_dw { word(bytes, 3) } else { 0 };
        Ok(HeaderWords {
            dw: [w0, word(bytes, 1), word(bytes, 2), w3],
            fmt,
            four_dw,
        })
    }

    pub fn address(&self) -> u64 {
        address(self.four_dw, self.dw[2], self.dw[3])
    }

    pub fn ph(&self) -> u8 {
        ph(self.four_dw, self.dw[2], self.dw[3])
    }
}

/// DW0 from its fields.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn make_dw0(
    fmt: Fmt,
    type_bits: u8,
    tag: Tag,
    traffic_class: u8,
    attributes: Attributes,
    ln: bool,
    th: bool,
    td: bool,
    ep: bool,
    address_type: u8,
    length_dw: u16,
) -> u32 {
    let b = |v: bool, at: u32| (v as u32) << at;
    ((fmt as u32) << dw0::FMT)
        | ((type_bits as u32 & 0x1f) << dw0::TYPE)
        | (((tag.value() as u32 >> 9) & 1) << dw0::T9)
        | ((traffic_class as u32 & 7) << dw0::TC)
        | (((tag.value() as u32 >> 8) & 1) << dw0::T8)
        | b(attributes.id_based_ordering, dw0::ATTR2)
        | b(ln, dw0::LN)
        | b(th, dw0::TH)
        | b(td, dw0::TD)
        | b(ep, dw0::EP)
        | b(attributes.relaxed_ordering, dw0::ATTR1)
        | b(attributes.no_snoop, dw0::ATTR0)
        | ((address_type as u32 & 3) << dw0::AT)
        | (length_dw as u32 & 0x3ff)
}
