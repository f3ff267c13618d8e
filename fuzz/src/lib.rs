//! What the fuzz targets share: the input read as a stream of values, the clock step
//! of the targets that drive a timer, the check that counters only grow, and the host
//! side of a virtio function ([`virtio_host`]).

pub mod virtio_host;

/// The fuzz input, read front to back; past its end every number reads 0 and every
/// byte string is empty.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }

    /// The next `n` bytes, or as many as are left.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }

    pub fn done(&self) -> bool {
        self.0.is_empty()
    }

    /// A clock step from `now`: forward by a byte's, a u16's or a u32's worth of
    /// microseconds (saturating at the end of time), or to `timer` when it is due
    /// later (with no timer, or one already due, the clock stays). The clock never
    /// goes backwards.
    pub fn advance(&mut self, now: u64, timer: Option<u64>) -> u64 {
        match self.u8() % 4 {
            0 => now.saturating_add(self.u8() as u64),
            1 => now.saturating_add(self.u16() as u64),
            2 => now.saturating_add(self.u32() as u64),
            _ => timer.map_or(now, |t| t.max(now)),
        }
    }
}

/// Asserts that no counter in `after` is below the same one in `before`, then makes
/// `after` the new `before`.
pub fn assert_counters_grew<const N: usize>(before: &mut [u64; N], after: [u64; N]) {
    for (a, b) in after.iter().zip(before.iter()) {
        assert!(a >= b, "a counter went down: {before:?} -> {after:?}");
    }
    *before = after;
}
