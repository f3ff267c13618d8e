//! Spare byte buffers for encoded TLPs (and for frames of them), so that steady
//! traffic allocates nothing per TLP: whoever is done with a TLP's bytes gives the
//! buffer back, and the next TLP is encoded into it. Bounded in the number of buffers
//! kept and in the room of each (a larger one is freed, not kept).
//!
//! ```
//! use tlp::{Bdf, Buffers, Header, MemRead, Tag, Tlp};
//! let mut spare = Buffers::new(4, 4096);
//! let read = Tlp::new(
//!     Header::MemRead(MemRead {
//!         requester: Bdf::from_u16(0x100),
//!         tag: Tag::wrapping(1),
//!         address: 0x1000,
//!         length_dw: 1,
//!         first_be: 0xf,
//!         last_be: 0,
//!         locked: false,
//!         hint: None,
//!     }),
//!     &[],
//! );
//! let bytes = spare.encode(&read).unwrap();
//! assert_eq!(Tlp::parse(&bytes).unwrap(), read);
//! let at = bytes.as_ptr();
//! spare.give(bytes); // sent: the next TLP reuses the buffer
//! assert_eq!(spare.encode(&read).unwrap().as_ptr(), at);
//! ```

use crate::error::EmitError;
use crate::repr::Tlp;

/// A bounded stack of empty byte buffers.
#[derive(Debug, Default)]
pub struct Buffers {
    spare: Vec<Vec<u8>>,
    max_count: usize,
    max_room: usize,
}

impl Buffers {
    /// Keeps at most `max_count` buffers of at most `max_room` bytes of capacity.
    pub const fn new(max_count: usize, max_room: usize) -> Buffers {
        Buffers {
            spare: Vec::new(),
            max_count,
            max_room,
        }
    }

    /// An empty buffer: a spare one (with its room), or a new one.
    pub fn take(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `buf` (emptied) for reuse, unless enough are kept or it is too large.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < self.max_count && buf.capacity() <= self.max_room {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// `tlp` encoded into a spare buffer (or a new one), exactly its size.
    pub fn encode(&mut self, tlp: &Tlp) -> Result<Vec<u8>, EmitError> {
        let len = tlp.buffer_len();
        // A spare with room for it if there is one (the latest given back may be the
        // buffer of a short TLP, which would have to grow), else the latest.
        let mut b = match self.spare.iter().rposition(|b| b.capacity() >= len) {
            Some(i) => self.spare.swap_remove(i),
            None => self.take(),
        };
        b.resize(len, 0);
        match tlp.emit(&mut b) {
            Ok(n) => {
                b.truncate(n);
                Ok(b)
            }
            Err(e) => {
                self.give(b);
                Err(e)
            }
        }
    }

    /// Buffers kept now.
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_buffers_are_bounded_in_number_and_room_and_come_back_empty() {
        let mut b = Buffers::new(2, 100);
        b.give(vec![1; 10]);
        b.give(vec![2; 10]);
        b.give(vec![3; 10]);
        assert_eq!(b.len(), 2);
        b.take();
        b.take();
        assert!(b.is_empty());
        b.give(Vec::with_capacity(101));
        assert!(b.is_empty());
        b.give(vec![9; 50]);
        let t = b.take();
        assert!(t.is_empty() && t.capacity() >= 50);
        // Nothing kept: a new one.
        assert_eq!(b.take().capacity(), 0);
    }

    #[test]
    fn a_tlp_goes_into_a_spare_with_room_for_it() {
        use crate::{Bdf, Header, MemWrite, Tag};
        let write = |n: usize| {
            let h = Header::MemWrite(MemWrite {
                requester: Bdf::from_u16(0x100),
                tag: Tag::wrapping(0),
                address: 0x1000,
                first_be: 0xf,
                last_be: if n > 4 { 0xf } else { 0 },
                hint: None,
            });
            (h, vec![0xab; n])
        };
        let mut b = Buffers::new(4, 16 + 4096 + 4);
        let big = Vec::with_capacity(300);
        let at = big.as_ptr();
        b.give(big);
        // A short TLP's buffer comes back last; a long TLP goes into the one with room.
        b.give(Vec::with_capacity(16));
        let (h, data) = write(256);
        let t = b.encode(&Tlp::new(h, &data)).unwrap();
        assert_eq!((t.as_ptr(), t.len()), (at, 12 + 256));
        // A short one takes the short buffer.
        let (h, data) = write(4);
        let s = b.encode(&Tlp::new(h, &data)).unwrap();
        assert_eq!((s.capacity(), s.len()), (16, 12 + 4));
        // None with room: the latest, grown.
        b.give(s);
        let (h, data) = write(4096);
        let t = b.encode(&Tlp::new(h, &data)).unwrap();
        assert_eq!(t.len(), 12 + 4096);
        assert!(b.is_empty());
    }
}
