//! Capability IDs and the walker over a function's capability list.

use std::convert::Infallible;

use crate::regs;

/// The most entries a capability list can have: the dwords between the end of the
/// header (0x40) and the end of conventional config space (0x100). A longer walk
/// has met an entry twice.
pub const MAX_CAPABILITIES: usize = ((regs::CONVENTIONAL_END - regs::HEADER_END) / 4) as usize;

/// Capability IDs (PCI Code and ID Assignment Specification, "Capability IDs").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CapabilityId {
    PowerManagement = 0x01,
    Agp = 0x02,
    Vpd = 0x03,
    SlotId = 0x04,
    Msi = 0x05,
    CompactPciHotSwap = 0x06,
    PciX = 0x07,
    HyperTransport = 0x08,
    VendorSpecific = 0x09,
    DebugPort = 0x0a,
    CompactPciCrc = 0x0b,
    HotPlug = 0x0c,
    BridgeSubsystemVendor = 0x0d,
    Agp8x = 0x0e,
    SecureDevice = 0x0f,
    PciExpress = 0x10,
    MsiX = 0x11,
    SataConfig = 0x12,
    AdvancedFeatures = 0x13,
    EnhancedAllocation = 0x14,
    FlatteningPortalBridge = 0x15,
}

impl CapabilityId {
    /// The ID byte.
    pub const fn raw(self) -> u8 {
        self as u8
    }

    /// The capability an ID byte names, when it names one.
    pub fn from_raw(id: u8) -> Option<CapabilityId> {
        use CapabilityId::*;
        Some(match id {
            0x01 => PowerManagement,
            0x02 => Agp,
            0x03 => Vpd,
            0x04 => SlotId,
            0x05 => Msi,
            0x06 => CompactPciHotSwap,
            0x07 => PciX,
            0x08 => HyperTransport,
            0x09 => VendorSpecific,
            0x0a => DebugPort,
            0x0b => CompactPciCrc,
            0x0c => HotPlug,
            0x0d => BridgeSubsystemVendor,
            0x0e => Agp8x,
            0x0f => SecureDevice,
            0x10 => PciExpress,
            0x11 => MsiX,
            0x12 => SataConfig,
            0x13 => AdvancedFeatures,
            0x14 => EnhancedAllocation,
            0x15 => FlatteningPortalBridge,
            _ => return None,
        })
    }
}

impl From<CapabilityId> for u8 {
    fn from(id: CapabilityId) -> u8 {
        id.raw()
    }
}

/// One entry of a capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// The ID byte as the function has it (it may name no known capability).
    pub id: u8,
    /// Where the capability starts: dword-aligned, in 0x40 ..= 0xfc.
    pub offset: u16,
    /// The first dword: ID, next pointer and the capability's first 16-bit register
    /// (Message Control for MSI and MSI-X), so a caller needs no second read for it.
    pub header: u32,
}

impl Capability {
    pub fn kind(&self) -> Option<CapabilityId> {
        CapabilityId::from_raw(self.id)
    }

    pub fn is(&self, id: CapabilityId) -> bool {
        self.id == id.raw()
    }

    /// The 16-bit register after the ID and next pointer (MSI and MSI-X: Message
    /// Control; PCI Express: its Capabilities register).
    pub fn control(&self) -> u16 {
        (self.header >> 16) as u16
    }
}

/// Why a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// A next pointer of 0: the list is complete.
    Complete,
    /// A pointer (masked to a dword) below 0x40, into the header: a broken list.
    IntoHeader(u16),
    /// A pointer to an entry already walked: a loop.
    Cycle(u16),
    /// The reader failed.
    ReadFailed,
}

/// The capability list of a function, walked through `read`, which returns the dword
/// at a dword-aligned byte offset (below 0x100). A reader that fails (a CfgRd that
/// timed out, a device that did not answer) yields its error once and ends the walk.
///
/// The list is the function's to write, so a hostile one is expected: pointers are
/// masked to dword alignment (their low two bits are reserved), a pointer below 0x40
/// ends the walk, as does one to an entry already walked; so at most
/// [`MAX_CAPABILITIES`] entries are yielded and at most one more dword read than that
/// is made, whatever the reader answers.
///
/// ```
/// use pci::{Capabilities, CapabilityId};
/// let mut config = [0u8; 256];
/// config[0x34] = 0x40;
/// config[0x40..0x42].copy_from_slice(&[0x10, 0x50]); // PCI Express -> 0x50
/// config[0x50..0x52].copy_from_slice(&[0x05, 0x00]); // MSI, the end
/// let read = |off: u16| {
///     let o = usize::from(off);
///     Ok::<_, ()>(u32::from_le_bytes(config[o..o + 4].try_into().unwrap()))
/// };
/// let msi = Capabilities::new(read).find(CapabilityId::Msi);
/// assert_eq!(msi, Ok(Some(0x50)));
/// ```
pub struct Capabilities<F> {
    read: F,
    /// The next entry to read; `None` before CAP_PTR was read.
    next: Option<u16>,
    /// Dwords of config space (offset / 4, below 64) walked so far.
    seen: u64,
    steps: usize,
    end: Option<WalkEnd>,
}

impl<F, E> Capabilities<F>
where
    F: FnMut(u16) -> Result<u32, E>,
{
    pub fn new(read: F) -> Capabilities<F> {
        Capabilities {
            read,
            next: None,
            seen: 0,
            steps: 0,
            end: None,
        }
    }

    /// Why the walk ended; `None` while it has not.
    pub fn end(&self) -> Option<WalkEnd> {
        self.end
    }

    /// The offset of the first capability with ID `id`, as a driver finds it:
    /// `Ok(None)` when the list, walked to its end, does not have it.
    pub fn find(self, id: CapabilityId) -> Result<Option<u16>, E> {
        for cap in self {
            let cap = cap?;
            if cap.is(id) {
                return Ok(Some(cap.offset));
            }
        }
        Ok(None)
    }

    /// The entry `pointer` (a raw pointer byte) leads to, or why the walk ends there.
    fn follow(&mut self, pointer: u8) -> Result<u16, WalkEnd> {
        let at = u16::from(pointer) & !3;
        if at == 0 {
            return Err(WalkEnd::Complete);
        }
        if !(regs::HEADER_END..regs::CONVENTIONAL_END).contains(&at) {
            return Err(WalkEnd::IntoHeader(at));
        }
        let bit = 1u64 << (at / 4);
        if self.seen & bit != 0 || self.steps >= MAX_CAPABILITIES {
            return Err(WalkEnd::Cycle(at));
        }
        self.seen |= bit;
        Ok(at)
    }
}

impl<F, E> Iterator for Capabilities<F>
where
    F: FnMut(u16) -> Result<u32, E>,
{
    type Item = Result<Capability, E>;

    fn next(&mut self) -> Option<Result<Capability, E>> {
        if self.end.is_some() {
            return None;
        }
        let pointer = match self.next {
            Some(at) => at,
            None => {
                let ptr = match (self.read)(regs::dword(regs::CAP_PTR)) {
                    Ok(d) => regs::byte_in(d, regs::CAP_PTR),
                    Err(e) => {
                        self.end = Some(WalkEnd::ReadFailed);
                        return Some(Err(e));
                    }
                };
                match self.follow(ptr) {
                    Ok(at) => at,
                    Err(end) => {
                        self.end = Some(end);
                        return None;
                    }
                }
            }
        };
        let header = match (self.read)(pointer) {
            Ok(d) => d,
            Err(e) => {
                self.end = Some(WalkEnd::ReadFailed);
                return Some(Err(e));
            }
        };
        self.steps += 1;
        let [id, next, ..] = header.to_le_bytes();
        match self.follow(next) {
            Ok(at) => self.next = Some(at),
            Err(end) => self.end = Some(end),
        }
        Some(Ok(Capability {
            id,
            offset: pointer,
            header,
        }))
    }
}

/// The capability list of a config space that always answers (a local image):
/// `read` returns the dword at a dword-aligned byte offset.
pub fn list(mut read: impl FnMut(u16) -> u32) -> impl Iterator<Item = Capability> {
    Capabilities::new(move |off| Ok::<u32, Infallible>(read(off))).map(|c| match c {
        Ok(c) => c,
        Err(never) => match never {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A 256-byte config space; `links` are (offset, id, next).
    fn space(cap_ptr: u8, links: &[(usize, u8, u8)]) -> [u8; 256] {
        let mut c = [0u8; 256];
        c[regs::CAP_PTR as usize] = cap_ptr;
        for &(at, id, next) in links {
            c[at] = id;
            c[at + 1] = next;
        }
        c
    }

    fn dword(c: &[u8; 256], off: u16) -> u32 {
        let o = usize::from(off);
        assert!(
            o.is_multiple_of(4) && o < 256,
            "unaligned or outside: {o:#x}"
        );
        u32::from_le_bytes(c[o..o + 4].try_into().unwrap())
    }

    fn walk(c: &[u8; 256]) -> (Vec<(u16, u8)>, Option<WalkEnd>) {
        let mut w = Capabilities::new(|off| Ok::<_, ()>(dword(c, off)));
        let found: Result<Vec<_>, ()> = w.by_ref().map(|c| c.map(|c| (c.offset, c.id))).collect();
        (found.unwrap(), w.end())
    }

    #[test]
    fn a_normal_list_is_walked_in_order_to_its_end() {
        let mut c = space(
            0x40,
            &[(0x40, 0x10, 0x7c), (0x7c, 0x01, 0x48), (0x48, 0x11, 0)],
        );
        c[0x4a] = 0x07; // MSI-X Message Control: 8 vectors
        let (found, end) = walk(&c);
        assert_eq!(found, [(0x40, 0x10), (0x7c, 0x01), (0x48, 0x11)]);
        assert_eq!(end, Some(WalkEnd::Complete));
        let caps: Vec<Capability> = list(|off| dword(&c, off)).collect();
        assert_eq!(caps[2].kind(), Some(CapabilityId::MsiX));
        assert_eq!(crate::msix::vectors(caps[2].control()), 8);
        let find = |id| Capabilities::new(|off| Ok::<_, ()>(dword(&c, off))).find(id);
        assert_eq!(find(CapabilityId::PowerManagement), Ok(Some(0x7c)));
        assert_eq!(find(CapabilityId::Msi), Ok(None));
    }

    #[test]
    fn no_list() {
        assert_eq!(walk(&space(0, &[])), (vec![], Some(WalkEnd::Complete)));
    }

    #[test]
    fn pointers_are_masked_to_dwords() {
        // Reserved low bits set in CAP_PTR and in a next pointer.
        let c = space(0x43, &[(0x40, 0x05, 0x52), (0x50, 0x09, 0x01)]);
        let (found, end) = walk(&c);
        assert_eq!(found, [(0x40, 0x05), (0x50, 0x09)]);
        assert_eq!(end, Some(WalkEnd::Complete), "0x01 masks to 0: the end");
    }

    #[test]
    fn a_pointer_into_the_header_ends_the_walk() {
        let c = space(0x40, &[(0x40, 0x05, 0x10)]);
        assert_eq!(
            walk(&c),
            (vec![(0x40, 0x05)], Some(WalkEnd::IntoHeader(0x10)))
        );
        let c = space(0x3c, &[]);
        assert_eq!(walk(&c), (vec![], Some(WalkEnd::IntoHeader(0x3c))));
    }

    #[test]
    fn a_loop_ends_the_walk() {
        let c = space(0x40, &[(0x40, 0x10, 0x50), (0x50, 0x11, 0x40)]);
        assert_eq!(
            walk(&c),
            (vec![(0x40, 0x10), (0x50, 0x11)], Some(WalkEnd::Cycle(0x40)))
        );
        // An entry pointing at itself.
        let c = space(0x40, &[(0x40, 0x10, 0x40)]);
        assert_eq!(walk(&c), (vec![(0x40, 0x10)], Some(WalkEnd::Cycle(0x40))));
    }

    #[test]
    fn a_list_longer_than_48_entries_stops_at_48() {
        // Every dword of 0x40..0x100 linked in a chain whose last entry loops back.
        let links: Vec<(usize, u8, u8)> = (0..48)
            .map(|i| {
                let at = 0x40 + 4 * i;
                let next = if i == 47 { 0x40 } else { at + 4 };
                (at, 0x09, next as u8)
            })
            .collect();
        let (found, end) = walk(&space(0x40, &links));
        assert_eq!(found.len(), MAX_CAPABILITIES);
        assert_eq!(end, Some(WalkEnd::Cycle(0x40)));
        // A reader that answers a new next pointer at every read (a device that is
        // not memory) cannot make it longer either.
        let reads = Cell::new(0u32);
        let n = Capabilities::new(|off| {
            reads.set(reads.get() + 1);
            let next = 0x40 + (reads.get() * 4) % 0xc0;
            Ok::<_, ()>(if off == regs::CAP_PTR {
                0x40
            } else {
                next << 8 | 0x09
            })
        })
        .count();
        assert!(n <= MAX_CAPABILITIES && reads.get() as usize <= MAX_CAPABILITIES + 1);
    }

    #[test]
    fn a_failed_read_is_yielded_once_and_ends_the_walk() {
        let c = space(0x40, &[(0x40, 0x10, 0x50), (0x50, 0x11, 0)]);
        let mut w = Capabilities::new(|off| {
            if off == 0x50 {
                Err("timeout")
            } else {
                Ok(dword(&c, off))
            }
        });
        assert_eq!(w.next().map(|c| c.map(|c| c.offset)), Some(Ok(0x40)));
        assert_eq!(w.next().map(|c| c.map(|c| c.offset)), Some(Err("timeout")));
        assert!(w.next().is_none());
        assert_eq!(w.end(), Some(WalkEnd::ReadFailed));
        let w = Capabilities::new(|_| Err::<u32, _>("gone"));
        assert_eq!(w.find(CapabilityId::Msi), Err("gone"));
    }

    #[test]
    fn ids_round_trip() {
        for raw in 0..=255u8 {
            if let Some(id) = CapabilityId::from_raw(raw) {
                assert_eq!(id.raw(), raw);
                assert_eq!(u8::from(id), raw);
            }
        }
        assert_eq!(CapabilityId::from_raw(0x11), Some(CapabilityId::MsiX));
        assert_eq!(CapabilityId::from_raw(0), None);
        assert_eq!(CapabilityId::from_raw(0x16), None);
    }

    proptest::proptest! {
        /// Whatever the config space holds, and wherever the reader fails, the walk
        /// never panics, yields at most 48 entries, each once, dword-aligned in
        /// 0x40..0x100, reads at most 49 dwords, all aligned and below 0x100, and ends.
        #[test]
        fn never_more_than_48_steps_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 256),
            fail_at in proptest::option::of(0usize..60),
        ) {
            let c: [u8; 256] = bytes.try_into().unwrap();
            let reads = Cell::new(0usize);
            let mut w = Capabilities::new(|off| {
                let n = reads.get();
                reads.set(n + 1);
                if fail_at == Some(n) { Err(()) } else { Ok(dword(&c, off)) }
            });
            let mut offsets = Vec::new();
            let mut errors = 0;
            for cap in w.by_ref() {
                match cap {
                    Ok(cap) => offsets.push(cap.offset),
                    Err(()) => errors += 1,
                }
            }
            proptest::prop_assert!(offsets.len() <= MAX_CAPABILITIES);
            proptest::prop_assert!(errors <= 1);
            proptest::prop_assert!(reads.get() <= MAX_CAPABILITIES + 1);
            proptest::prop_assert!(offsets.iter().all(|&o| o % 4 == 0 && (0x40..0x100).contains(&o)));
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), offsets.len());
            proptest::prop_assert!(w.end().is_some());
            proptest::prop_assert!(w.next().is_none());
        }
    }
}
