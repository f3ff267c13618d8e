//! Split virtqueues (virtio 1.x, 2.7): the layout of the descriptor table, the driver
//! ("available") ring and the device ("used") ring in host memory, a queue's
//! configuration as the driver set it, and the walk along a descriptor chain.
//!
//! Nothing here touches memory: the transport fetches bytes by DMA and hands them in,
//! so every rule about what the driver may put in a ring is checked in one place and
//! a bad ring is an error value, never a panic.

use thiserror::Error;

/// Descriptor flags.
pub mod desc_flags {
    /// The chain goes on at `next`.
    pub const NEXT: u16 = 1;
    /// The buffer is device-writable (else device-readable).
    pub const WRITE: u16 = 2;
    /// The buffer holds a table of descriptors.
    pub const INDIRECT: u16 = 4;
}

/// Available-ring flag: the driver does not need an interrupt.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;

/// Largest indirect table accepted (entries). The spec bounds chains by the queue
/// size for direct descriptors only; this bounds the memory a driver can make us read.
pub const MAX_INDIRECT: usize = 1024;

/// Largest total of buffer bytes in one chain (data plus headers).
pub const MAX_CHAIN_BYTES: u64 = 64 << 20;

/// One descriptor as stored in the table (little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Descriptor {
    /// Parses the 16 bytes of a descriptor.
    pub fn parse(b: &[u8; DESC_SIZE]) -> Descriptor {
        Descriptor {
            addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    pub fn emit(&self) -> [u8; DESC_SIZE] {
        let mut b = [0; DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    pub fn writable(&self) -> bool {
        self.flags & desc_flags::WRITE != 0
    }
}

/// What is wrong with a chain the driver made available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("descriptor index {0} is outside the table")]
    IndexOutOfRange(u16),
    #[error("the chain is longer than its table (a loop)")]
    Loop,
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("indirect descriptor: bad table length {0}")]
    BadIndirectLength(u32),
    #[error("an indirect table refers to another indirect table")]
    NestedIndirect,
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    #[error("the chain's buffers add up to more than 64 MiB")]
    TooLarge,
    #[error("the ring fetch did not return the bytes asked for")]
    ShortFetch,
    #[error("head (split) or buffer ID (packed) {0} made available while still in flight")]
    ReusedId(u16),
    #[error("more ring descriptors in flight than the ring holds")]
    RingOverrun,
}

/// A queue as the driver configured it through the common configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub size: u16,
    pub max_size: u16,
    pub enabled: bool,
    pub msix_vector: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueConfig {
    pub fn new(max_size: u16) -> QueueConfig {
        QueueConfig {
            size: max_size,
            max_size,
            enabled: false,
            msix_vector: super::NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Address of descriptor `i` in the table.
    pub fn desc_addr(&self, i: u16) -> u64 {
        self.desc.wrapping_add(i as u64 * DESC_SIZE as u64)
    }

    /// Bytes of the available ring up to and including its last entry (flags, idx,
    /// `ring[size]`).
    pub fn avail_len(&self) -> usize {
        4 + 2 * self.size as usize
    }

    /// Address of the used ring's element for used index `idx`.
    pub fn used_elem_addr(&self, idx: u16) -> u64 {
        self.device.wrapping_add(4 + 8 * (idx % self.size) as u64)
    }

    /// Address of the used ring's idx field.
    pub fn used_idx_addr(&self) -> u64 {
        self.device.wrapping_add(2)
    }

    /// Address of `used_event`, after the available ring's entries (VIRTIO_F_EVENT_IDX:
    /// the driver wants an interrupt once the used index passes it).
    pub fn used_event_addr(&self) -> u64 {
        self.driver.wrapping_add(self.avail_len() as u64)
    }

    /// Address of `avail_event`, after the used ring's elements (VIRTIO_F_EVENT_IDX:
    /// the device wants a notification once the available index passes it).
    pub fn avail_event_addr(&self) -> u64 {
        self.device.wrapping_add(4 + 8 * self.size as u64)
    }
}

/// Whether an index that moved from `old` to `new` passed `event` (virtio 1.x,
/// 2.7.10: the event is in `[old, new)`, in 16-bit wrapping arithmetic). Both sides
/// of VIRTIO_F_EVENT_IDX decide with it: the driver whether to notify, the device
/// whether to interrupt.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The available ring as fetched: its flags, idx and entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvailRing<'a> {
    pub flags: u16,
    pub idx: u16,
    ring: &'a [u8],
}

impl<'a> AvailRing<'a> {
    /// A view of `bytes`, the first [`QueueConfig::avail_len`] bytes of the ring.
    pub fn parse(bytes: &'a [u8], size: u16) -> Result<AvailRing<'a>, ChainError> {
        let need = 4 + 2 * size as usize;
        if bytes.len() < need {
            return Err(ChainError::ShortFetch);
        }
        Ok(AvailRing {
            flags: u16::from_le_bytes([bytes[0], bytes[1]]),
            idx: u16::from_le_bytes([bytes[2], bytes[3]]),
            ring: &bytes[4..need],
        })
    }

    /// `used_event` from bytes fetched as [`QueueConfig::avail_len`] + 2 (`None` when
    /// they stop short of it).
    pub fn used_event(bytes: &[u8], size: u16) -> Option<u16> {
        let at = 4 + 2 * size as usize;
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// The head index the driver put at available index `idx`.
    pub fn entry(&self, idx: u16) -> u16 {
        let slots = (self.ring.len() / 2) as u16;
        let at = 2 * (idx % slots) as usize;
        u16::from_le_bytes([self.ring[at], self.ring[at + 1]])
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// Walks a chain as its descriptors arrive: the caller fetches descriptors (from the
/// queue's table, or from an indirect table) and feeds them in; the walk says what
/// to fetch next and collects the buffers.
#[derive(Clone, Debug)]
pub struct ChainWalk {
    pub head: u16,
    buffers: Vec<Buffer>,
    /// Descriptors of the table in use: the queue's (size) or an indirect one.
    table_len: u16,
    indirect: bool,
    seen: usize,
    total: u64,
}

/// What a [`ChainWalk`] needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkStep {
    /// Descriptor `index` of the queue's table.
    Fetch(u16),
    /// The whole indirect table: `len` bytes at `addr`.
    FetchIndirect { addr: u64, len: u32 },
    /// The chain is complete.
    Done,
}

impl ChainWalk {
    /// A walk from `head` in a queue of `size` descriptors.
    pub fn new(head: u16, size: u16) -> Result<(ChainWalk, WalkStep), ChainError> {
        if head >= size {
            return Err(ChainError::IndexOutOfRange(head));
        }
        let walk = ChainWalk {
            head,
            buffers: Vec::new(),
            table_len: size,
            indirect: false,
            seen: 0,
            total: 0,
        };
        Ok((walk, WalkStep::Fetch(head)))
    }

    /// Takes the next descriptor of the chain (from the queue's table, or the next
    /// entry of the indirect table) and says what comes next. In an indirect table,
    /// `Fetch(i)` names an entry of that table, which the caller already holds.
    pub fn push(&mut self, d: Descriptor) -> Result<WalkStep, ChainError> {
        self.seen += 1;
        if self.seen > self.table_len as usize {
            return Err(ChainError::Loop);
        }
        if d.flags & desc_flags::INDIRECT != 0 {
            if self.indirect {
                return Err(ChainError::NestedIndirect);
            }
            if d.flags & desc_flags::NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let n = d.len as usize / DESC_SIZE;
            if d.len == 0 || !(d.len as usize).is_multiple_of(DESC_SIZE) || n > MAX_INDIRECT {
                return Err(ChainError::BadIndirectLength(d.len));
            }
            self.indirect = true;
            self.table_len = n as u16;
            self.seen = 0;
            return Ok(WalkStep::FetchIndirect {
                addr: d.addr,
                len: d.len,
            });
        }
        if !d.writable() && self.buffers.last().is_some_and(|b| b.writable) {
            return Err(ChainError::ReadableAfterWritable);
        }
        self.total += d.len as u64;
        if self.total > MAX_CHAIN_BYTES {
            return Err(ChainError::TooLarge);
        }
        if d.len > 0 {
            self.buffers.push(Buffer {
                addr: d.addr,
                len: d.len,
                writable: d.writable(),
            });
        }
        if d.flags & desc_flags::NEXT == 0 {
            return Ok(WalkStep::Done);
        }
        if d.next >= self.table_len {
            return Err(ChainError::IndexOutOfRange(d.next));
        }
        Ok(WalkStep::Fetch(d.next))
    }

    /// Whether the descriptors now come from an indirect table.
    pub fn in_indirect(&self) -> bool {
        self.indirect
    }

    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// Bytes the device may read (the readable buffers, in order).
    pub fn readable_len(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|b| !b.writable)
            .map(|b| b.len as u64)
            .sum()
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.writable)
            .map(|b| b.len as u64)
            .sum()
    }
}

/// The pieces of the buffers of `kind` (readable or writable) that cover bytes
/// `offset..offset + len` of their concatenation: (address, offset in the data, length).
pub fn scatter(
    buffers: &[Buffer],
    writable: bool,
    offset: u64,
    len: u64,
) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let end = offset.saturating_add(len);
    buffers
        .iter()
        .filter(move |b| b.writable == writable)
        .scan(0u64, |start, b| {
            let s = *start;
            *start += b.len as u64;
            Some((s, b))
        })
        .filter_map(move |(s, b)| {
            let lo = offset.max(s);
            let hi = end.min(s + b.len as u64);
            (lo < hi).then(|| (b.addr.wrapping_add(lo - s), lo - offset, hi - lo))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    #[test]
    fn need_event_is_the_half_open_window_old_to_new_with_wrap() {
        // Moved 3 -> 7: events 3..=6 were passed, 7 not yet, 2 long ago.
        assert!((3..7).all(|e| need_event(e, 7, 3)));
        assert!(!need_event(7, 7, 3));
        assert!(!need_event(2, 7, 3));
        // Across the wrap: 0xfffe -> 2 passed 0xfffe, 0xffff, 0 and 1.
        assert!([0xfffe, 0xffff, 0, 1]
            .iter()
            .all(|&e| need_event(e, 2, 0xfffe)));
        assert!(!need_event(2, 2, 0xfffe));
        assert!(!need_event(0xfffd, 2, 0xfffe));
        // Nothing moved: never.
        assert!(!(0..=u16::MAX).any(|e| need_event(e, 9, 9)));
        // The driver's usual "next one": used_event = old.
        assert!(need_event(41, 42, 41));
    }

    #[test]
    fn the_event_fields_sit_after_each_ring() {
        let q = QueueConfig {
            size: 256,
            desc: 0x1_0000,
            driver: 0x1_1000,
            device: 0x1_2000,
            ..QueueConfig::new(256)
        };
        assert_eq!(q.used_event_addr(), 0x1_1000 + 4 + 2 * 256);
        assert_eq!(q.avail_event_addr(), 0x1_2000 + 4 + 8 * 256);
        let mut ring = vec![0u8; q.avail_len() + 2];
        ring[4 + 2 * 256..].copy_from_slice(&0x1234u16.to_le_bytes());
        assert_eq!(AvailRing::used_event(&ring, 256), Some(0x1234));
        assert_eq!(AvailRing::used_event(&ring[..q.avail_len()], 256), None);
    }

    #[test]
    fn descriptor_round_trips_little_endian() {
        let x = d(0x1122_3344_5566_7788, 0x99aa_bbcc, 0x0003, 0x0102);
        let b = x.emit();
        assert_eq!(b[0], 0x88);
        assert_eq!(b[8], 0xcc);
        assert_eq!(b[12], 0x03);
        assert_eq!(b[14], 0x02);
        assert_eq!(Descriptor::parse(&b), x);
    }

    #[test]
    fn a_three_buffer_chain_walks_to_done() {
        let (mut w, step) = ChainWalk::new(5, 8).unwrap();
        assert_eq!(step, WalkStep::Fetch(5));
        assert_eq!(
            w.push(d(0x1000, 16, desc_flags::NEXT, 2)).unwrap(),
            WalkStep::Fetch(2)
        );
        assert_eq!(
            w.push(d(0x2000, 512, desc_flags::NEXT | desc_flags::WRITE, 7))
                .unwrap(),
            WalkStep::Fetch(7)
        );
        assert_eq!(
            w.push(d(0x3000, 1, desc_flags::WRITE, 0)).unwrap(),
            WalkStep::Done
        );
        assert_eq!(w.readable_len(), 16);
        assert_eq!(w.writable_len(), 513);
        assert_eq!(w.buffers().len(), 3);
    }

    #[test]
    fn bad_chains_are_errors() {
        assert_eq!(
            ChainWalk::new(8, 8).unwrap_err(),
            ChainError::IndexOutOfRange(8)
        );
        // A loop: 0 -> 1 -> 0 ...
        let (mut w, _) = ChainWalk::new(0, 2).unwrap();
        w.push(d(0, 1, desc_flags::NEXT, 1)).unwrap();
        w.push(d(0, 1, desc_flags::NEXT, 0)).unwrap();
        assert_eq!(
            w.push(d(0, 1, desc_flags::NEXT, 1)).unwrap_err(),
            ChainError::Loop
        );
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        w.push(d(0, 1, desc_flags::WRITE | desc_flags::NEXT, 1))
            .unwrap();
        assert_eq!(
            w.push(d(0, 1, 0, 0)).unwrap_err(),
            ChainError::ReadableAfterWritable
        );
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        assert_eq!(
            w.push(d(0, 1, desc_flags::NEXT, 9)).unwrap_err(),
            ChainError::IndexOutOfRange(9)
        );
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        assert_eq!(
            w.push(d(0, 24, desc_flags::INDIRECT, 0)).unwrap_err(),
            ChainError::BadIndirectLength(24)
        );
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        assert_eq!(
            w.push(d(0, 32, desc_flags::INDIRECT | desc_flags::NEXT, 1))
                .unwrap_err(),
            ChainError::IndirectWithNext
        );
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        w.push(d(0x8000, 32, desc_flags::INDIRECT, 0)).unwrap();
        assert_eq!(
            w.push(d(0, 32, desc_flags::INDIRECT, 0)).unwrap_err(),
            ChainError::NestedIndirect
        );
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        w.push(d(0, u32::MAX, desc_flags::NEXT, 1)).unwrap_err();
    }

    #[test]
    fn an_indirect_table_restarts_the_walk_in_the_table() {
        let (mut w, _) = ChainWalk::new(3, 4).unwrap();
        assert_eq!(
            w.push(d(0x8000, 48, desc_flags::INDIRECT, 0)).unwrap(),
            WalkStep::FetchIndirect {
                addr: 0x8000,
                len: 48
            }
        );
        assert!(w.in_indirect());
        assert_eq!(
            w.push(d(0x1000, 16, desc_flags::NEXT, 1)).unwrap(),
            WalkStep::Fetch(1)
        );
        assert_eq!(
            w.push(d(0x2000, 4096, desc_flags::NEXT | desc_flags::WRITE, 2))
                .unwrap(),
            WalkStep::Fetch(2)
        );
        assert_eq!(
            w.push(d(0x3000, 1, desc_flags::WRITE, 0)).unwrap(),
            WalkStep::Done
        );
        assert_eq!((w.readable_len(), w.writable_len()), (16, 4097));
        // Entry 3 is outside a 3-entry table.
        let (mut w, _) = ChainWalk::new(0, 4).unwrap();
        w.push(d(0x8000, 48, desc_flags::INDIRECT, 0)).unwrap();
        assert_eq!(
            w.push(d(0, 1, desc_flags::NEXT, 3)).unwrap_err(),
            ChainError::IndexOutOfRange(3)
        );
    }

    #[test]
    fn scatter_splits_a_range_over_buffers() {
        let bufs = [
            Buffer {
                addr: 0x100,
                len: 16,
                writable: false,
            },
            Buffer {
                addr: 0x1000,
                len: 10,
                writable: true,
            },
            Buffer {
                addr: 0x2000,
                len: 10,
                writable: true,
            },
            Buffer {
                addr: 0x3000,
                len: 1,
                writable: true,
            },
        ];
        let v: Vec<_> = scatter(&bufs, true, 5, 10).collect();
        assert_eq!(v, vec![(0x1005, 0, 5), (0x2000, 5, 5)]);
        let v: Vec<_> = scatter(&bufs, true, 20, 1).collect();
        assert_eq!(v, vec![(0x3000, 0, 1)]);
        let v: Vec<_> = scatter(&bufs, false, 0, 16).collect();
        assert_eq!(v, vec![(0x100, 0, 16)]);
        assert_eq!(scatter(&bufs, true, 21, 5).count(), 0);
    }

    #[test]
    fn avail_ring_entries_wrap_at_the_queue_size() {
        let mut b = vec![1, 0, 6, 0];
        for i in 0..4u16 {
            b.extend_from_slice(&(10 + i).to_le_bytes());
        }
        let r = AvailRing::parse(&b, 4).unwrap();
        assert_eq!((r.flags, r.idx), (1, 6));
        assert_eq!(r.entry(0), 10);
        assert_eq!(r.entry(5), 11);
        assert_eq!(AvailRing::parse(&b[..10], 4), Err(ChainError::ShortFetch));
        let q = QueueConfig {
            device: 0x4000,
            size: 4,
            ..QueueConfig::new(4)
        };
        assert_eq!(q.used_elem_addr(5), 0x4000 + 4 + 8);
        assert_eq!(q.used_idx_addr(), 0x4002);
        assert_eq!(q.avail_len(), 12);
    }
}
