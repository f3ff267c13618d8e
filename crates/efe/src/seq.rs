//! Sequence numbers and epochs are 32-bit and wrap: compare them in serial-number
//! arithmetic (RFC 1982), valid while the two values are less than 2^31 apart.

/// `a` comes before `b`.
pub const fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a` comes before or is `b`.
pub const fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// How far `b` is ahead of `a` (negative when behind).
pub const fn diff(b: u32, a: u32) -> i32 {
    b.wrapping_sub(a) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps() {
        assert!(lt(1, 2));
        assert!(lt(u32::MAX, 0));
        assert!(!lt(0, u32::MAX));
        assert!(le(5, 5));
        assert_eq!(diff(2, u32::MAX), 3);
        assert_eq!(diff(u32::MAX, 2), -3);
    }
}
