//! Packed virtqueues (virtio 1.1+, 2.8): one ring of 16-byte descriptors that the
//! driver fills and the device writes back, each side keeping a wrap counter so that
//! a descriptor's AVAIL and USED flags say whose turn it is; and the two 4-byte event
//! suppression structures (the driver's at the queue's driver address, the device's
//! at its device address).
//!
//! As for split queues ([`super::queue`]), nothing here touches memory: the transport
//! fetches a window of the ring by DMA and [`scan`] finds the chains the driver made
//! available in it. A chain's descriptors come out as split-style [`Descriptor`]s
//! numbered from 0, so the same [`super::queue::ChainWalk`] checks them.

use super::queue::{desc_flags, ChainError, Descriptor, DESC_SIZE};

/// Descriptor flags of the packed layout, besides NEXT, WRITE and INDIRECT.
pub mod flags {
    pub const AVAIL: u16 = 1 << 7;
    pub const USED: u16 = 1 << 15;
}

/// Event suppression flags (the driver's structure tells the device whether to send
/// used-buffer notifications).
pub mod event {
    pub const ENABLE: u16 = 0;
    pub const DISABLE: u16 = 1;
    /// Only at a given descriptor (needs RING_EVENT_IDX, which is not offered).
    pub const DESC: u16 = 2;
}

/// Bytes of an event suppression structure.
pub const EVENT_SIZE: usize = 4;

/// One descriptor of a packed ring (or of an indirect table of a packed queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedDescriptor {
    pub addr: u64,
    pub len: u32,
    /// The buffer ID (the driver's name for the chain; the device returns it).
    pub id: u16,
    pub flags: u16,
}

impl PackedDescriptor {
    pub fn parse(b: &[u8; DESC_SIZE]) -> PackedDescriptor {
        PackedDescriptor {
            addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            id: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    pub fn emit(&self) -> [u8; DESC_SIZE] {
        let mut b = [0; DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.id.to_le_bytes());
        b[14..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Whether the driver made this descriptor available in the lap where the
    /// device's wrap counter is `wrap`.
    pub fn available(&self, wrap: bool) -> bool {
        (self.flags & flags::AVAIL != 0) == wrap && (self.flags & flags::USED != 0) != wrap
    }

    /// The same buffer as a split descriptor whose chain goes on at `next`.
    fn as_split(&self, next: u16) -> Descriptor {
        Descriptor {
            addr: self.addr,
            len: self.len,
            flags: self.flags & (desc_flags::NEXT | desc_flags::WRITE | desc_flags::INDIRECT),
            next,
        }
    }
}

/// Parses a fetched window of a ring (or an indirect table).
pub fn parse_all(bytes: &[u8]) -> Vec<PackedDescriptor> {
    bytes
        .chunks_exact(DESC_SIZE)
        .map(|c| PackedDescriptor::parse(c.try_into().expect("16 bytes")))
        .collect()
}

/// An indirect table of a packed queue as split descriptors: its entries in order,
/// each but the last going on at the next (the packed layout has no NEXT there).
pub fn indirect_as_split(table: &[PackedDescriptor]) -> Vec<Descriptor> {
    table
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let mut s = d.as_split(k as u16 + 1);
            s.flags &= !desc_flags::NEXT;
            if k + 1 < table.len() {
                s.flags |= desc_flags::NEXT;
            }
            s
        })
        .collect()
}

/// A place in the ring and the lap it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPos {
    pub index: u16,
    pub wrap: bool,
}

impl RingPos {
    /// Where both sides start: index 0, wrap counter 1.
    pub const START: RingPos = RingPos {
        index: 0,
        wrap: true,
    };

    /// `n` descriptors further in a ring of `size`.
    pub fn advance(self, n: u16, size: u16) -> RingPos {
        let i = self.index as u32 + n as u32;
        if i >= size as u32 {
            RingPos {
                index: (i - size as u32) as u16,
                wrap: !self.wrap,
            }
        } else {
            RingPos {
                index: i as u16,
                wrap: self.wrap,
            }
        }
    }
}

/// A chain the driver made available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvailChain {
    /// The buffer ID to return in the used descriptor.
    pub id: u16,
    /// Ring descriptors it takes (an indirect chain takes one).
    pub ring_len: u16,
    /// Its descriptors as split ones: the head is 0, each goes on at the next.
    pub descriptors: Vec<Descriptor>,
}

/// What a [`scan`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub chains: Vec<AvailChain>,
    /// Where the next chain will start.
    pub next: RingPos,
    /// The descriptors of a chain begun but not seen to its end (the window ended):
    /// fetch on from `next` advanced by their number.
    pub carry: Vec<PackedDescriptor>,
    /// The window ended before a descriptor that is not available: there may be more.
    pub exhausted: bool,
}

/// Finds the available chains in `descs`, the ring's descriptors in ring order from
/// `from` on (a carried partial chain, then a fetched window) in a ring of `size`.
pub fn scan(descs: &[PackedDescriptor], from: RingPos, size: u16) -> Result<Scan, ChainError> {
    let mut chains = Vec::new();
    let mut pos = from;
    let mut i = 0;
    loop {
        let Some(head) = descs.get(i) else {
            return Ok(Scan {
                chains,
                next: pos,
                carry: Vec::new(),
                exhausted: true,
            });
        };
        if !head.available(pos.wrap) {
            return Ok(Scan {
                chains,
                next: pos,
                carry: Vec::new(),
                exhausted: false,
            });
        }
        // The chain: up to the first descriptor without NEXT.
        let Some(last) = descs[i..]
            .iter()
            .position(|d| d.flags & desc_flags::NEXT == 0)
        else {
            if descs.len() - i >= size as usize {
                return Err(ChainError::Loop);
            }
            return Ok(Scan {
                chains,
                next: pos,
                carry: descs[i..].to_vec(),
                exhausted: true,
            });
        };
        let chain = &descs[i..=i + last];
        if chain.len() > size as usize {
            return Err(ChainError::Loop);
        }
        chains.push(AvailChain {
            id: chain[last].id,
            ring_len: chain.len() as u16,
            descriptors: chain
                .iter()
                .enumerate()
                .map(|(k, d)| d.as_split(k as u16 + 1))
                .collect(),
        });
        pos = pos.advance(chain.len() as u16, size);
        i += chain.len();
    }
}

/// The used descriptor's id, length and flags (bytes 8..16 of its slot): the flags
/// go last, in a write of their own, so the driver never sees them before the rest.
pub fn used_element(id: u16, len: u32, wrap: bool) -> ([u8; 6], [u8; 2]) {
    let mut body = [0u8; 6];
    body[..4].copy_from_slice(&len.to_le_bytes());
    body[4..].copy_from_slice(&id.to_le_bytes());
    let f = if wrap { flags::AVAIL | flags::USED } else { 0 };
    (body, f.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u16 = desc_flags::NEXT;
    const W: u16 = desc_flags::WRITE;

    /// A descriptor made available in the lap `wrap`.
    fn d(addr: u64, len: u32, id: u16, f: u16, wrap: bool) -> PackedDescriptor {
        let lap = if wrap { flags::AVAIL } else { flags::USED };
        PackedDescriptor {
            addr,
            len,
            id,
            flags: f | lap,
        }
    }

    #[test]
    fn descriptor_round_trips_little_endian() {
        let x = d(0x1122_3344_5566_7788, 0x99aa_bbcc, 0xddee, N | W, true);
        let b = x.emit();
        assert_eq!(&b[..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[12..14], &[0xee, 0xdd]);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), N | W | flags::AVAIL);
        assert_eq!(PackedDescriptor::parse(&b), x);
    }

    #[test]
    fn availability_follows_the_wrap_counter() {
        let first_lap = d(0, 0, 0, 0, true);
        assert!(first_lap.available(true) && !first_lap.available(false));
        let second_lap = d(0, 0, 0, 0, false);
        assert!(second_lap.available(false) && !second_lap.available(true));
        // Used by the device in the first lap: both bits set, nobody's turn in it.
        let used = PackedDescriptor {
            flags: flags::AVAIL | flags::USED,
            ..first_lap
        };
        assert!(!used.available(true));
        // A zeroed ring (never written) holds nothing in the first lap.
        assert!(!PackedDescriptor::parse(&[0; 16]).available(true));
    }

    #[test]
    fn scan_finds_chains_and_stops_at_the_first_unavailable() {
        let ring = [
            d(0x100, 16, 7, N, true),
            d(0x200, 512, 7, N | W, true),
            d(0x300, 1, 7, W, true),
            d(0x400, 16, 9, 0, true),
            PackedDescriptor::parse(&[0; 16]),
        ];
        let s = scan(&ring, RingPos::START, 8).unwrap();
        assert!(!s.exhausted && s.carry.is_empty());
        assert_eq!(
            s.next,
            RingPos {
                index: 4,
                wrap: true
            }
        );
        assert_eq!(s.chains.len(), 2);
        assert_eq!((s.chains[0].id, s.chains[0].ring_len), (7, 3));
        let c = &s.chains[0].descriptors;
        assert_eq!((c[0].next, c[0].flags), (1, N));
        assert_eq!((c[1].next, c[1].flags), (2, N | W));
        assert_eq!(c[2].flags, W, "AVAIL/USED do not leak into the split flags");
        assert_eq!((s.chains[1].id, s.chains[1].ring_len), (9, 1));
    }

    #[test]
    fn a_chain_cut_by_the_window_is_carried_and_wraps_the_ring() {
        // Ring of 4: the chain starts at 3 (first lap) and goes on at 0, past the
        // ring's end, where the driver writes the next lap's flags: only the head's
        // count.
        let from = RingPos {
            index: 3,
            wrap: true,
        };
        let window = [d(0x100, 16, 5, N, true)];
        let s = scan(&window, from, 4).unwrap();
        assert!(s.chains.is_empty() && s.exhausted);
        assert_eq!(s.carry, window.to_vec());
        assert_eq!(s.next, from);
        let mut all = s.carry.clone();
        all.push(d(0x200, 4096, 5, W, false));
        let s = scan(&all, from, 4).unwrap();
        assert_eq!(s.chains.len(), 1);
        assert_eq!(s.chains[0].ring_len, 2);
        assert_eq!(
            s.next,
            RingPos {
                index: 1,
                wrap: false
            },
            "wrapped: lap 0"
        );
        // The next chain in lap 0 is recognised by AVAIL clear, USED set.
        let s = scan(&[d(0x300, 16, 6, 0, false)], s.next, 4).unwrap();
        assert_eq!(s.chains[0].id, 6);
    }

    #[test]
    fn a_chain_longer_than_the_ring_is_a_loop() {
        let ring = vec![d(0, 1, 0, N, true); 4];
        assert_eq!(scan(&ring, RingPos::START, 4), Err(ChainError::Loop));
        // Shorter than the ring and still open: carried, not an error.
        assert_eq!(scan(&ring[..3], RingPos::START, 4).unwrap().carry.len(), 3);
    }

    #[test]
    fn indirect_tables_chain_every_entry_in_order() {
        let t = [
            d(0x100, 16, 0, 0, true),
            d(0x200, 512, 0, W | N, true),
            d(0x300, 1, 0, W, true),
        ];
        let s = indirect_as_split(&t);
        assert_eq!(s.iter().map(|x| x.flags).collect::<Vec<_>>(), [N, W | N, W]);
        assert_eq!(s.iter().map(|x| x.next).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn used_elements_carry_the_lap_in_both_bits() {
        let (body, f) = used_element(0x1234, 513, true);
        assert_eq!(body, [1, 2, 0, 0, 0x34, 0x12]);
        assert_eq!(u16::from_le_bytes(f), flags::AVAIL | flags::USED);
        assert_eq!(used_element(1, 0, false).1, [0, 0]);
        let p = RingPos {
            index: 3,
            wrap: true,
        };
        assert_eq!(
            p.advance(1, 4),
            RingPos {
                index: 0,
                wrap: false
            }
        );
        assert_eq!(p.advance(0, 4), p);
    }
}
