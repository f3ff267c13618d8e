//! First/Last DW byte enables: the rules a request must obey, and the conversions
//! between a byte range and (DW address, Length, First BE, Last BE).

use crate::error::ParseError;

/// A byte range expressed as a PCIe request sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DwSpan {
    /// Address of the first DW (the byte address with its low two bits cleared).
    pub dw_address: u64,
    /// Number of DWs touched, 1..=1024 for one request.
    pub length_dw: u16,
    pub first_be: u8,
    pub last_be: u8,
}

impl DwSpan {
    /// The span of `len` (>= 1) bytes at `address`. `len` must keep `length_dw` <= 1024,
    /// which every caller guarantees by splitting at MRRS/MPS first.
    pub fn of(address: u64, len: usize) -> DwSpan {
        debug_assert!(len >= 1);
        let start = address & 3;
        let end = start + len as u64; // exclusive, relative to the DW address
        let length_dw = end.div_ceil(4) as u16;
        let first_mask = (0xf << start) & 0xf;
        let last_bytes = end - (length_dw as u64 - 1) * 4; // 1..=4 bytes in the last DW
        let last_mask = (1u8 << last_bytes) - 1;
        let (first_be, last_be) = if length_dw == 1 {
            (first_mask as u8 & last_mask, 0)
        } else {
            (first_mask as u8, last_mask)
        };
        DwSpan {
            dw_address: address & !3,
            length_dw,
            first_be,
            last_be,
        }
    }

    /// Offset of the first enabled byte within the first DW, and the byte count that a
    /// completer reports for this request (PCIe Base Spec, "Calculating Byte Count from
    /// Length and Byte Enables"). A zero-length read (one DW, BE 0000) counts as 1 byte.
    pub fn enabled_bytes(&self) -> (u8, u32) {
        enabled_bytes(self.length_dw, self.first_be, self.last_be)
    }
}

/// Calls `f(offset, len)` for each run of enabled bytes of a request covering
/// `length_dw` DWs with these byte enables (offsets from the first DW's first byte).
/// Byte enables need not be contiguous within one DW, so a run is not always the
/// whole span.
pub fn enabled_runs(length_dw: u16, first_be: u8, last_be: u8, mut f: impl FnMut(usize, usize)) {
    let n = length_dw as usize;
    // Adjacent pieces merge into one run; a run is reported when a gap ends it.
    let mut run: Option<(usize, usize)> = None;
    let mut piece = |start: usize, len: usize| match &mut run {
        Some((s, l)) if *s + *l == start => *l += len,
        open => {
            if let Some((s, l)) = open.replace((start, len)) {
                f(s, l);
            }
        }
    };
    let bits = |dw: usize, be: u8, piece: &mut dyn FnMut(usize, usize)| {
        for b in 0..4 {
            if be & (1 << b) != 0 {
                piece(dw * 4 + b, 1);
            }
        }
    };
    if n == 0 {
        return;
    }
    bits(0, first_be, &mut piece);
    if n > 2 {
        // Every byte of the middle DWs is enabled: one piece, not one per byte.
        piece(4, (n - 2) * 4);
    }
    if n > 1 {
        bits(n - 1, last_be, &mut piece);
    }
    if let Some((s, l)) = run {
        f(s, l);
    }
}

fn highest_bit(be: u8) -> u32 {
    7 - (be & 0xf).leading_zeros()
}

/// See [`DwSpan::enabled_bytes`].
pub fn enabled_bytes(length_dw: u16, first_be: u8, last_be: u8) -> (u8, u32) {
    let first_be = first_be & 0xf;
    let last_be = last_be & 0xf;
    if length_dw == 1 {
        if first_be == 0 {
            return (0, 1);
        }
        let lo = first_be.trailing_zeros();
        return (lo as u8, highest_bit(first_be) - lo + 1);
    }
    let lo = if first_be == 0 {
        0
    } else {
        first_be.trailing_zeros()
    };
    let trailing_disabled = if last_be == 0 {
        0
    } else {
        3 - highest_bit(last_be)
    };
    (lo as u8, length_dw as u32 * 4 - lo - trailing_disabled)
}

/// Bit n set: BE pattern n enables a run of bytes that reaches the top of the DW
/// (1111, 1110, 1100, 1000).
const CONTIGUOUS_FROM_TOP: u16 = (1 << 0b1111) | (1 << 0b1110) | (1 << 0b1100) | (1 << 0b1000);
/// Bit n set: BE pattern n enables a run that starts at the bottom (1111, 0111, 0011, 0001).
const CONTIGUOUS_FROM_BOTTOM: u16 = (1 << 0b1111) | (1 << 0b0111) | (1 << 0b0011) | (1 << 0b0001);

fn contiguous_from_top(be: u8) -> bool {
    CONTIGUOUS_FROM_TOP >> (be & 0xf) & 1 != 0
}

fn contiguous_from_bottom(be: u8) -> bool {
    CONTIGUOUS_FROM_BOTTOM >> (be & 0xf) & 1 != 0
}

/// Byte-enable rules for a memory or I/O request of `length_dw` DWs at `address`:
/// one DW: Last BE must be 0000 (any First BE, 0000 being a zero-length access);
/// more: neither may be 0000, and unless the request is 2 DW and QW-aligned the
/// enabled bytes must be contiguous.
#[inline(always)]
pub fn check_byte_enables(
    length_dw: u16,
    first_be: u8,
    last_be: u8,
    address: u64,
) -> Result<(), ParseError> {
    if byte_enables_valid(length_dw, first_be, last_be, address) {
        Ok(())
    } else {
        Err(invalid_byte_enables(first_be, last_be, length_dw))
    }
}

/// The rule of [`check_byte_enables`] as a predicate (the hot path: no error value).
#[inline(always)]
pub fn byte_enables_valid(length_dw: u16, first_be: u8, last_be: u8, address: u64) -> bool {
    if (first_be | last_be) > 0xf {
        return false;
    }
    if length_dw == 1 {
        return last_be == 0;
    }
    if first_be == 0 || last_be == 0 {
        return false;
    }
    let qw_aligned_pair = length_dw == 2 && address.is_multiple_of(8);
    qw_aligned_pair || (contiguous_from_top(first_be) && contiguous_from_bottom(last_be))
}

#[cold]
fn invalid_byte_enables(first: u8, last: u8, length_dw: u16) -> ParseError {
    ParseError::InvalidByteEnables {
        first,
        last,
        length_dw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, byte by byte.
    fn runs_by_byte(length_dw: u16, first_be: u8, last_be: u8) -> Vec<(usize, usize)> {
        let n = length_dw as usize;
        let on = |i: usize| {
            let dw = i / 4;
            let be = if dw == 0 {
                first_be
            } else if dw + 1 == n {
                last_be
            } else {
                0xf
            };
            be & (1 << (i % 4)) != 0
        };
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in (0..n * 4).filter(|&i| on(i)) {
            match out.last_mut() {
                Some((s, l)) if *s + *l == i => *l += 1,
                _ => out.push((i, 1)),
            }
        }
        out
    }

    #[test]
    fn runs_match_the_byte_by_byte_definition() {
        for length_dw in [0u16, 1, 2, 3, 4, 64, 1024] {
            for first_be in 0..16u8 {
                for last_be in 0..16u8 {
                    let mut got = Vec::new();
                    enabled_runs(length_dw, first_be, last_be, |o, l| got.push((o, l)));
                    assert_eq!(
                        got,
                        runs_by_byte(length_dw, first_be, last_be),
                        "{length_dw} DW, BE {first_be:04b}/{last_be:04b}"
                    );
                }
            }
        }
    }

    #[test]
    fn byte_count_table_single_dw() {
        // The spec's table for Length = 1.
        let cases = [
            (0b1001, 4),
            (0b1011, 4),
            (0b1101, 4),
            (0b1111, 4),
            (0b0101, 3),
            (0b0111, 3),
            (0b1010, 3),
            (0b1110, 3),
            (0b0011, 2),
            (0b0110, 2),
            (0b1100, 2),
            (0b0001, 1),
            (0b0010, 1),
            (0b0100, 1),
            (0b1000, 1),
            (0b0000, 1),
        ];
        for (be, count) in cases {
            assert_eq!(enabled_bytes(1, be, 0).1, count, "BE {be:04b}");
        }
    }

    #[test]
    fn byte_count_table_multi_dw() {
        // Length 3: 12 bytes minus disabled leading and trailing bytes.
        assert_eq!(enabled_bytes(3, 0b1111, 0b1111), (0, 12));
        assert_eq!(enabled_bytes(3, 0b1110, 0b1111), (1, 11));
        assert_eq!(enabled_bytes(3, 0b1100, 0b0111), (2, 9));
        assert_eq!(enabled_bytes(3, 0b1000, 0b0001), (3, 6));
        // Non-contiguous QW-aligned 2-DW: count spans from first to last enabled byte.
        assert_eq!(enabled_bytes(2, 0b0101, 0b0010), (0, 6));
    }

    #[test]
    fn span_round_trips_through_byte_count() {
        for addr in 0u64..16 {
            for len in 1usize..40 {
                let s = DwSpan::of(0x1000 + addr, len);
                assert_eq!(s.dw_address, (0x1000 + addr) & !3);
                let (off, count) = s.enabled_bytes();
                assert_eq!(off as u64, addr & 3, "addr {addr} len {len}");
                assert_eq!(count as usize, len, "addr {addr} len {len}");
                check_byte_enables(s.length_dw, s.first_be, s.last_be, s.dw_address).unwrap();
            }
        }
    }

    #[test]
    fn rules() {
        assert!(check_byte_enables(1, 0, 0, 0).is_ok());
        assert!(check_byte_enables(1, 0b1111, 1, 0).is_err());
        assert!(check_byte_enables(2, 0, 0b1111, 0).is_err());
        assert!(check_byte_enables(2, 0b0101, 0b1010, 8).is_ok());
        assert!(check_byte_enables(2, 0b0101, 0b1010, 4).is_err());
        assert!(check_byte_enables(3, 0b0111, 0b1111, 0).is_err());
        assert!(check_byte_enables(3, 0b1111, 0b1110, 0).is_err());
        assert!(check_byte_enables(3, 0b1110, 0b0011, 0).is_ok());
    }
}
