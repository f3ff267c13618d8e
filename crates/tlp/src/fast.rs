//! The short path for the TLPs a data path carries: memory reads and writes and
//! completions, without a TLP Processing Hint, digest, LN or Address Type.
//!
//! [`Tlp::parse`] and [`Tlp::emit`] try these first and fall back to the general code in
//! `repr.rs` for everything else, including every TLP the short path refuses. The
//! general code stays the reference: the short path either returns exactly what it would
//! or declines, which the tests below check on random, mutated and valid TLPs.

use crate::byte_enables::byte_enables_valid;
use crate::packet::type_code;
use crate::repr::{Completion, Header, HeaderFlags, MemRead, MemWrite, Tlp, MAX_PAYLOAD};
use crate::types::{CompletionStatus, Fmt, Tag};
use crate::words::{self as w, make_dw0};

/// DW0 bits that send a TLP to the general path: TH, TD, LN and AT.
const UNCOMMON: u32 = (1 << 16) | (1 << 15) | (1 << 17) | (3 << 10);

/// Byte 0 (Fmt and Type) of the TLPs the short path decodes.
mod byte0 {
    use super::{type_code, Fmt};
    const fn of(fmt: Fmt, type_bits: u8) -> u8 {
        ((fmt as u8) << 5) | type_bits
    }
    pub const MRD3: u8 = of(Fmt::ThreeDwNoData, type_code::MEM);
    pub const MRD4: u8 = of(Fmt::FourDwNoData, type_code::MEM);
    pub const MWR3: u8 = of(Fmt::ThreeDwData, type_code::MEM);
    pub const MWR4: u8 = of(Fmt::FourDwData, type_code::MEM);
    pub const CPL: u8 = of(Fmt::ThreeDwNoData, type_code::CPL);
    pub const CPLD: u8 = of(Fmt::ThreeDwData, type_code::CPL);
}

/// Whether a request of `length_dw` DWs at `address` stays within one 4 KiB page.
#[inline(always)]
fn within_page(address: u64, length_dw: u16) -> bool {
    (address & 0xfff) + length_dw as u64 * 4 <= 4096
}

/// Decodes `bytes` when it is a valid TLP of the common kinds; `None` otherwise
/// (another kind, or invalid: the general path then says why).
#[inline(always)]
pub(crate) fn parse(bytes: &[u8]) -> Option<Tlp<'_>> {
    if bytes.len() < 12 {
        return None;
    }
    let (w0, w1, w2) = (w::word(bytes, 0), w::word(bytes, 1), w::word(bytes, 2));
    if w0 & UNCOMMON != 0 {
        return None;
    }
    let flags = HeaderFlags {
        traffic_class: w::traffic_class(w0),
        attributes: w::attributes(w0),
        ln: false,
        poisoned: w::ep(w0),
        address_type: 0,
    };
    let length_dw = w::length_dw(w0);
    let requester = w::id(w1);
    let first_be = w::byte7(w1) & 0xf;
    let last_be = w::byte7(w1) >> 4;
    // A memory request (`data`: with its payload): its address and header size, once
    // its size, byte enables and 4 KiB page are right (a 4DW header must carry an
    // address >= 4 GiB).
    let memory = |four: bool, data: bool| -> Option<(u64, usize)> {
        let (address, len) = if four {
            let address = w::address(true, w2, w::word(bytes.get(..16)?, 3));
            (address >= 1 << 32).then_some((address, 16))?
        } else {
            (w::address(false, w2, 0), 12)
        };
        let data_len = if data { length_dw as usize * 4 } else { 0 };
        (bytes.len() == len + data_len
            && byte_enables_valid(length_dw, first_be, last_be, address)
            && within_page(address, length_dw))
        .then_some((address, len))
    };
    let (header, payload) = match (w0 >> 24) as u8 {
        b @ (byte0::MRD3 | byte0::MRD4) => {
            let (address, len) = memory(b == byte0::MRD4, false)?;
            let read = MemRead {
                requester,
                tag: w::tag(w0, w::byte6(w1)),
                address,
                length_dw,
                first_be,
                last_be,
                locked: false,
                hint: None,
            };
            (Header::MemRead(read), &bytes[len..])
        }
        b @ (byte0::MWR3 | byte0::MWR4) => {
            let (address, len) = memory(b == byte0::MWR4, true)?;
            let write = MemWrite {
                requester,
                tag: w::tag(w0, w::byte6(w1)),
                address,
                first_be,
                last_be,
                hint: None,
            };
            (Header::MemWrite(write), &bytes[len..])
        }
        b @ (byte0::CPL | byte0::CPLD) => {
            let data = if b == byte0::CPLD {
                length_dw as usize * 4
            } else {
                0
            };
            if bytes.len() != 12 + data {
                return None;
            }
            let completion = Completion {
                completer: requester,
                status: CompletionStatus::from_bits(w::completion_status_bits(w1))?,
                bcm: w::bcm(w1),
                byte_count: w::byte_count(w1),
                requester: w::completion_requester(w2),
                tag: w::tag(w0, w::completion_tag_low(w2)),
                lower_address: w::lower_address(w2),
                locked: false,
            };
            (Header::Completion(completion), &bytes[12..])
        }
        _ => return None,
    };
    Some(Tlp {
        header,
        flags,
        payload,
        digest: None,
    })
}

/// Writes `tlp` at the start of `buf` when it is a valid TLP of the common kinds and
/// fits; `None` otherwise (the general path then writes it or says why not).
#[inline(always)]
pub(crate) fn emit(tlp: &Tlp, buf: &mut [u8]) -> Option<usize> {
    let f = &tlp.flags;
    if f.ln || f.address_type != 0 || f.traffic_class > 7 || tlp.digest.is_some() {
        return None;
    }
    let payload = tlp.payload;
    let data_dw = (payload.len() / 4) as u16;
    let id_tag = |id: crate::Bdf, tag: Tag| {
        ((id.to_u16() as u32) << 16) | ((tag.value() as u32 & 0xff) << 8)
    };
    let be = |first: u8, last: u8| ((last as u32) << 4) | first as u32;
    // (Fmt, Type, tag for T9/T8, Length, DW1, DW2, DW3)
    let (fmt, type_bits, tag, length_dw, w1, w2, w3) = match &tlp.header {
        Header::MemRead(r) if r.hint.is_none() && !r.locked && payload.is_empty() => {
            if !(1..=1024).contains(&r.length_dw)
                || !byte_enables_valid(r.length_dw, r.first_be, r.last_be, r.address)
                || !within_page(r.address, r.length_dw)
            {
                return None;
            }
            let four = r.address >= 1 << 32;
            let (w2, w3) = split_address(r.address, four);
            let fmt = Fmt::new(four, false);
            let w1 = id_tag(r.requester, r.tag) | be(r.first_be, r.last_be);
            (fmt, type_code::MEM, r.tag, r.length_dw, w1, w2, w3)
        }
        Header::MemWrite(m) if m.hint.is_none() => {
            if payload.is_empty()
                || payload.len() > MAX_PAYLOAD
                || !payload.len().is_multiple_of(4)
                || !byte_enables_valid(data_dw, m.first_be, m.last_be, m.address)
                || !within_page(m.address, data_dw)
            {
                return None;
            }
            let four = m.address >= 1 << 32;
            let (w2, w3) = split_address(m.address, four);
            let fmt = Fmt::new(four, true);
            let w1 = id_tag(m.requester, m.tag) | be(m.first_be, m.last_be);
            (fmt, type_code::MEM, m.tag, data_dw, w1, w2, w3)
        }
        Header::Completion(c) if !c.locked => {
            if c.byte_count == 0
                || c.byte_count > 4096
                || c.lower_address > 0x7f
                || payload.len() > MAX_PAYLOAD
                || !payload.len().is_multiple_of(4)
            {
                return None;
            }
            let w1 = ((c.completer.to_u16() as u32) << 16)
                | ((c.status as u32) << 13)
                | ((c.bcm as u32) << 12)
                | (c.byte_count as u32 & 0xfff); // 4096 encodes as 0
            let w2 = id_tag(c.requester, c.tag) | c.lower_address as u32;
            let fmt = Fmt::new(false, !payload.is_empty());
            (fmt, type_code::CPL, c.tag, data_dw, w1, w2, 0)
        }
        _ => return None,
    };
    let w0 = make_dw0(
        fmt,
        type_bits,
        tag,
        f.traffic_class,
        f.attributes,
        false,
        false,
        false,
        f.poisoned,
        0,
        length_dw,
    );
    let header_len = if fmt.is_four_dw() { 16 } else { 12 };
    let len = header_len + payload.len();
    if buf.len() < len {
        return None;
    }
    let (header, data) = buf.split_at_mut(header_len);
    header[0..4].copy_from_slice(&w0.to_be_bytes());
    header[4..8].copy_from_slice(&w1.to_be_bytes());
    header[8..12].copy_from_slice(&w2.to_be_bytes());
    if let Some(dw3) = header.get_mut(12..16) {
        dw3.copy_from_slice(&w3.to_be_bytes());
    }
    if !payload.is_empty() {
        data[..payload.len()].copy_from_slice(payload);
    }
    Some(len)
}

/// A memory request's address as DW2 and DW3 (PH bits zero).
#[inline(always)]
fn split_address(address: u64, four: bool) -> (u32, u32) {
    if four {
        ((address >> 32) as u32, address as u32 & !3)
    } else {
        (address as u32 & !3, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::any_tlp;
    use proptest::prelude::*;

    /// The short path agrees with the general one: same TLP, or it declines.
    fn same_parse(bytes: &[u8]) -> Result<(), TestCaseError> {
        let general = Tlp::parse_general(bytes);
        match parse(bytes) {
            Some(t) => prop_assert_eq!(Ok(t), general, "{:02x?}", bytes),
            None => prop_assert_eq!(Tlp::parse(bytes), general),
        }
        Ok(())
    }

    fn same_emit(t: &Tlp, size: usize) -> Result<(), TestCaseError> {
        let mut general = vec![0u8; size];
        let want = t.emit_general(&mut general);
        let mut short = vec![0u8; size];
        if let Some(n) = emit(t, &mut short) {
            prop_assert_eq!(Ok(n), want, "{:?}", t);
            prop_assert_eq!(&short[..n], &general[..n]);
        }
        let mut public = vec![0u8; size];
        prop_assert_eq!(t.emit(&mut public), want);
        prop_assert_eq!(public, general);
        Ok(())
    }

    /// Whether a valid TLP is of the kinds the short path must take.
    fn common(t: &Tlp) -> bool {
        let f = &t.flags;
        let header = match t.header {
            Header::MemRead(r) => r.hint.is_none() && !r.locked,
            Header::MemWrite(m) => m.hint.is_none(),
            Header::Completion(c) => !c.locked,
            _ => false,
        };
        header && !f.ln && f.address_type == 0 && t.digest.is_none()
    }

    #[test]
    fn takes_the_common_kinds() {
        let payload = [0xa5u8; 64];
        let common = [
            Header::MemRead(MemRead {
                requester: crate::Bdf::from_u16(0x100),
                tag: Tag::wrapping(0x2c7),
                address: 0xfebf_0040,
                length_dw: 16,
                first_be: 0xf,
                last_be: 0xf,
                locked: false,
                hint: None,
            }),
            Header::MemWrite(MemWrite {
                requester: crate::Bdf::from_u16(0x100),
                tag: Tag::default(),
                address: 0x8_0000_0000,
                first_be: 0xe,
                last_be: 0x7,
                hint: None,
            }),
            Header::Completion(Completion {
                completer: crate::Bdf::from_u16(0x100),
                status: CompletionStatus::Success,
                bcm: false,
                byte_count: 4096,
                requester: crate::Bdf::default(),
                tag: Tag::wrapping(0x3ff),
                lower_address: 0x40,
                locked: false,
            }),
        ];
        for header in common {
            let body: &[u8] = match header {
                Header::MemRead(_) => &[],
                _ => &payload,
            };
            let t = Tlp::new(header, body);
            let mut buf = [0u8; 80];
            let n = emit(&t, &mut buf).expect("common kind emitted by the short path");
            assert_eq!(Tlp::parse_general(&buf[..n]), Ok(t));
            assert_eq!(parse(&buf[..n]), Some(t), "short path decodes it");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn parse_agrees_on_valid_tlps(t in any_tlp()) {
            let t = t.as_tlp();
            let bytes = t.to_vec().unwrap();
            same_parse(&bytes)?;
            if common(&t) {
                prop_assert!(parse(&bytes).is_some(), "{:?}", t);
                prop_assert!(emit(&t, &mut vec![0u8; bytes.len()]).is_some(), "{:?}", t);
            }
        }

        #[test]
        fn parse_agrees_on_mutated_tlps(
            t in any_tlp(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = t.as_tlp().to_vec().unwrap();
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            if cut % 4 == 0 {
                bytes.truncate(cut / 4 % (bytes.len() + 1));
            }
            same_parse(&bytes)?;
        }

        #[test]
        fn parse_agrees_on_random_headers(
            head in proptest::array::uniform16(any::<u8>()),
            extra in 0usize..80,
        ) {
            // Random headers with their byte 0 mostly from the common kinds.
            let mut bytes = head.to_vec();
            bytes[0] = [0x00, 0x20, 0x40, 0x60, 0x0a, 0x4a, head[0]][head[1] as usize % 7];
            bytes.resize(12 + extra, 0x5a);
            same_parse(&bytes)?;
            bytes.truncate(12 + (head[3] as usize & 0x3f) * 4);
            same_parse(&bytes)?;
        }

        #[test]
        fn emit_agrees_on_any_field_values(
            kind in 0u8..3,
            a in any::<u64>(),
            n in any::<u16>(),
            b in any::<[u8; 6]>(),
            payload_dw in 0usize..1030,
            room in 0usize..4200,
        ) {
            // Reprs of the common kinds with every field unconstrained, valid or not.
            let payload = vec![0x3cu8; payload_dw * 4 + usize::from(b[5] & 3)];
            let header = match kind {
                0 => Header::MemRead(MemRead {
                    requester: crate::Bdf::from_u16(n),
                    tag: Tag::wrapping(n),
                    address: a,
                    length_dw: n >> (b[4] & 15),
                    first_be: b[0],
                    last_be: b[1],
                    locked: false,
                    hint: None,
                }),
                1 => Header::MemWrite(MemWrite {
                    requester: crate::Bdf::from_u16(n),
                    tag: Tag::wrapping(n),
                    address: a,
                    first_be: b[0],
                    last_be: b[1],
                    hint: None,
                }),
                _ => Header::Completion(Completion {
                    completer: crate::Bdf::from_u16(n),
                    status: CompletionStatus::Success,
                    bcm: b[2] & 1 != 0,
                    byte_count: n >> (b[4] & 15),
                    requester: crate::Bdf::from_u16(!n),
                    tag: Tag::wrapping(!n),
                    lower_address: b[0],
                    locked: false,
                }),
            };
            let flags = HeaderFlags {
                traffic_class: b[3] >> 4,
                attributes: crate::Attributes {
                    relaxed_ordering: b[3] & 1 != 0,
                    no_snoop: b[3] & 2 != 0,
                    id_based_ordering: b[3] & 4 != 0,
                },
                ln: false,
                poisoned: b[2] & 2 != 0,
                address_type: 0,
            };
            let body = if kind == 0 && b[2] & 4 == 0 { &[][..] } else { &payload[..] };
            let t = Tlp { header, flags, payload: body, digest: None };
            same_emit(&t, room)?;
            same_emit(&t, 4200)?;
        }

        #[test]
        fn emit_agrees(t in any_tlp(), room in 0usize..4200, payload_cut in 0usize..8) {
            let t = t.as_tlp();
            same_emit(&t, room)?;
            same_emit(&t, t.buffer_len())?;
            // Payloads no TLP can carry, and reads given one.
            let odd = &t.payload[..t.payload.len().saturating_sub(payload_cut)];
            same_emit(&Tlp { payload: odd, ..t }, 4200)?;
            same_emit(&Tlp { payload: &[1, 2, 3, 4], ..t }, 4200)?;
        }
    }
}
