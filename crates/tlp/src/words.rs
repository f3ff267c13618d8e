//! A TLP header as four big-endian 32-bit words: the fast path behind `Tlp::parse`
//! and `Tlp::emit`. Bit positions are those of the spec's header figures, DW by DW.

use crate::error::ParseError;
use crate::types::{Attributes, Fmt, Tag};

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

/// The size a TLP must have given its DW0, or why it cannot be one.
#[inline]
pub(crate) fn expected_len(dw0: u32) -> Result<(Fmt, usize), ParseError> {
    let fmt_bits = (dw0 >> dw0::FMT) as u8;
    let fmt = match Fmt::from_bits(fmt_bits) {
        Some(Fmt::Prefix) => return Err(ParseError::UnsupportedPrefix),
        Some(fmt) => fmt,
        None => {
            return Err(ParseError::ReservedType {
                fmt: fmt_bits,
                type_: (dw0 >> dw0::TYPE) as u8 & 0x1f,
            })
        }
    };
    let length = match dw0 & 0x3ff {
        0 => 1024,
        n => n as usize,
    };
    let data = if fmt.has_data() { length * 4 } else { 0 };
    let digest = if dw0 & (1 << dw0::TD) != 0 { 4 } else { 0 };
    Ok((fmt, fmt.header_len() + data + digest))
}

/// Header words read from a buffer whose size has been checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderWords {
    pub dw: [u32; 4],
    pub fmt: Fmt,
    pub four_dw: bool,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
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
        let d0 = be32(bytes, 0);
        let (fmt, total) = expected_len(d0)?;
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
        let d3 = if four_dw { be32(bytes, 12) } else { 0 };
        Ok(HeaderWords {
            dw: [d0, be32(bytes, 4), be32(bytes, 8), d3],
            fmt,
            four_dw,
        })
    }

    fn bit(&self, at: u32) -> bool {
        self.dw[0] & (1 << at) != 0
    }

    pub fn type_bits(&self) -> u8 {
        (self.dw[0] >> dw0::TYPE) as u8 & 0x1f
    }

    pub fn traffic_class(&self) -> u8 {
        (self.dw[0] >> dw0::TC) as u8 & 7
    }

    pub fn attributes(&self) -> Attributes {
        Attributes {
            relaxed_ordering: self.bit(dw0::ATTR1),
            no_snoop: self.bit(dw0::ATTR0),
            id_based_ordering: self.bit(dw0::ATTR2),
        }
    }

    pub fn ln(&self) -> bool {
        self.bit(dw0::LN)
    }

    pub fn th(&self) -> bool {
        self.bit(dw0::TH)
    }

    pub fn td(&self) -> bool {
        self.bit(dw0::TD)
    }

    pub fn ep(&self) -> bool {
        self.bit(dw0::EP)
    }

    pub fn address_type(&self) -> u8 {
        (self.dw[0] >> dw0::AT) as u8 & 3
    }

    pub fn length_dw(&self) -> u16 {
        match self.dw[0] & 0x3ff {
            0 => 1024,
            n => n as u16,
        }
    }

    /// T9/T8 joined with an 8-bit tag field.
    pub fn tag_with(&self, low: u8) -> Tag {
        let t9 = (self.dw[0] >> dw0::T9) as u16 & 1;
        let t8 = (self.dw[0] >> dw0::T8) as u16 & 1;
        Tag::wrapping((t9 << 9) | (t8 << 8) | low as u16)
    }

    pub fn id(&self) -> u16 {
        (self.dw[1] >> 16) as u16
    }

    pub fn byte6(&self) -> u8 {
        (self.dw[1] >> 8) as u8
    }

    pub fn byte7(&self) -> u8 {
        self.dw[1] as u8
    }

    /// Address with the low two (PH) bits cleared.
    pub fn address(&self) -> u64 {
        if self.four_dw {
            ((self.dw[2] as u64) << 32) | (self.dw[3] & !3) as u64
        } else {
            (self.dw[2] & !3) as u64
        }
    }

    pub fn ph(&self) -> u8 {
        let w = if self.four_dw { self.dw[3] } else { self.dw[2] };
        w as u8 & 3
    }
}

/// DW0 from its fields.
#[allow(clippy::too_many_arguments)]
#[inline]
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
