//! The host memory a device may reach by DMA: regions registered at bus addresses.
//! Every device access is checked against the map; nothing outside it is touched.

use thiserror::Error;

/// Memory that backs a region: a byte array here, guest RAM (a shared mapping) in a
/// VMM front-end.
pub trait HostMemory: Send {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `buf.len()` bytes at `offset` (the caller checked the range).
    fn read(&self, offset: u64, buf: &mut [u8]);
    /// Reads as `read` does, or reports that the memory behind the region failed to
    /// answer (guest memory a VMM serves by message: the VMM refused or went away), so
    /// that the device gets an error completion rather than made-up data. Memory that
    /// cannot fail keeps this default.
    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadFault> {
        self.read(offset, buf);
        Ok(())
    }
    /// Writes `data` at `offset` (the caller checked the range).
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// The memory behind a region did not answer a read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("the memory did not answer")]
pub struct ReadFault;

impl HostMemory for Vec<u8> {
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        let o = offset as usize;
        buf.copy_from_slice(&self[o..o + buf.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self[o..o + data.len()].copy_from_slice(data);
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapError {
    #[error("region {base:#x}+{len:#x} overlaps one already mapped")]
    Overlap { base: u64, len: u64 },
    #[error("region {base:#x}+{len:#x} is empty or wraps the address space")]
    Bad { base: u64, len: u64 },
    #[error("{len} bytes at {addr:#x} are not inside one mapped region")]
    Outside { addr: u64, len: usize },
    #[error("{len} bytes at {addr:#x}: the memory behind them did not answer")]
    Fault { addr: u64, len: usize },
}

struct Region {
    base: u64,
    mem: Box<dyn HostMemory>,
    /// Who shares it ([`MemoryMap::share`]); empty for a region [`MemoryMap::add`]ed.
    owners: Vec<MapOwner>,
}

/// Who mapped a shared region: one of a VM's devices, each of whose VMM connections
/// maps the same guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapOwner(pub u32);

/// Regions of host memory by bus address.
#[derive(Default)]
pub struct MemoryMap {
    regions: Vec<Region>,
}

impl std::fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.regions.iter().map(|r| (r.base, r.mem.len())))
            .finish()
    }
}

impl MemoryMap {
    pub fn new() -> MemoryMap {
        MemoryMap::default()
    }

    /// Maps `mem` at bus address `base`.
    pub fn add(&mut self, base: u64, mem: Box<dyn HostMemory>) -> Result<(), MapError> {
        let len = mem.len();
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(MapError::Bad { base, len });
        };
        if self
            .regions
            .iter()
            .any(|r| base < r.base + r.mem.len() && r.base < end)
        {
            return Err(MapError::Overlap { base, len });
        }
        self.regions.push(Region {
            base,
            mem,
            owners: Vec::new(),
        });
        self.regions.sort_by_key(|r| r.base);
        Ok(())
    }

    /// Maps `mem` at `base` for `owner`, as [`MemoryMap::add`] does, except that a
    /// region another owner shared at the same base with the same length is taken as
    /// the same memory (the same guest RAM, mapped by each of one VM's devices): it is
    /// kept once, `mem` is dropped, and the region stays until its last owner
    /// unshares it. Any other overlap is refused.
    pub fn share(
        &mut self,
        owner: MapOwner,
        base: u64,
        mem: Box<dyn HostMemory>,
    ) -> Result<(), MapError> {
        let len = mem.len();
        if let Some(r) = self
            .regions
            .iter_mut()
            .find(|r| r.base == base && r.mem.len() == len && !r.owners.is_empty())
        {
            if !r.owners.contains(&owner) {
                r.owners.push(owner);
            }
            return Ok(());
        }
        self.add(base, mem)?;
        if let Some(r) = self.regions.iter_mut().find(|r| r.base == base) {
            r.owners.push(owner);
        }
        Ok(())
    }

    /// `owner` lets go of the regions it shared that lie wholly inside `len` bytes
    /// from `base` (all of them with `len` = `u64::MAX` from 0); a region no owner
    /// holds any more is unmapped. Returns how many were unmapped.
    pub fn unshare_within(&mut self, owner: MapOwner, base: u64, len: u64) -> usize {
        let end = base.saturating_add(len);
        let before = self.regions.len();
        self.regions.retain_mut(|r| {
            let inside = r.base >= base && r.base.saturating_add(r.mem.len()) <= end;
            if inside && !r.owners.is_empty() {
                r.owners.retain(|o| *o != owner);
                return !r.owners.is_empty();
            }
            true
        });
        before - self.regions.len()
    }

    /// Unmaps the region at `base`, returning it.
    pub fn remove(&mut self, base: u64) -> Option<Box<dyn HostMemory>> {
        let i = self.regions.iter().position(|r| r.base == base)?;
        Some(self.regions.remove(i).mem)
    }

    /// Unmaps the regions that lie entirely inside `base..base + len`; returns how many.
    pub fn remove_within(&mut self, base: u64, len: u64) -> usize {
        let end = base.saturating_add(len);
        let before = self.regions.len();
        self.regions
            .retain(|r| !(r.base >= base && r.base.saturating_add(r.mem.len()) <= end));
        before - self.regions.len()
    }

    /// Unmaps every region.
    pub fn clear(&mut self) {
        self.regions.clear();
    }

    fn find(&self, addr: u64, len: usize) -> Option<usize> {
        let end = addr.checked_add(len as u64)?;
        self.regions
            .iter()
            .position(|r| addr >= r.base && end <= r.base + r.mem.len())
    }

    pub fn contains(&self, addr: u64, len: usize) -> bool {
        self.find(addr, len).is_some()
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MapError> {
        let i = self.find(addr, buf.len()).ok_or(MapError::Outside {
            addr,
            len: buf.len(),
        })?;
        let r = &self.regions[i];
        r.mem
            .try_read(addr - r.base, buf)
            .map_err(|ReadFault| MapError::Fault {
                addr,
                len: buf.len(),
            })
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MapError> {
        let i = self.find(addr, data.len()).ok_or(MapError::Outside {
            addr,
            len: data.len(),
        })?;
        let r = &mut self.regions[i];
        r.mem.write(addr - r.base, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One VM's devices each map the same guest RAM: it is kept once, stays while any
    /// of them holds it, and goes with the last; a different overlap is refused.
    #[test]
    fn shared_regions_stay_until_their_last_owner_lets_go() {
        let (a, b) = (MapOwner(1), MapOwner(2));
        let mut m = MemoryMap::new();
        m.share(a, 0x1000, Box::new(vec![1u8; 0x1000])).unwrap();
        // The same region again (from b, and from a twice): kept once, a's memory.
        m.share(b, 0x1000, Box::new(vec![2u8; 0x1000])).unwrap();
        m.share(a, 0x1000, Box::new(vec![3u8; 0x1000])).unwrap();
        let mut x = [0u8; 1];
        m.read(0x1800, &mut x).unwrap();
        assert_eq!(x, [1]);
        // Overlapping differently: refused, for owners and plain adds alike.
        assert!(matches!(
            m.share(b, 0x1800, Box::new(vec![0u8; 0x1000])),
            Err(MapError::Overlap { .. })
        ));
        assert!(m.add(0x1000, Box::new(vec![0u8; 0x1000])).is_err());
        // An exclusive region is never shared.
        m.add(0x4000, Box::new(vec![0u8; 0x1000])).unwrap();
        assert!(m.share(a, 0x4000, Box::new(vec![0u8; 0x1000])).is_err());
        assert_eq!(m.unshare_within(a, 0, u64::MAX), 0, "b still holds it");
        assert!(m.contains(0x1000, 0x1000));
        assert_eq!(m.unshare_within(b, 0, u64::MAX), 1);
        assert!(!m.contains(0x1000, 1));
        // The exclusive one is not an owner's to unshare.
        assert!(m.contains(0x4000, 0x1000));
    }

    #[test]
    fn accesses_stay_inside_one_region() {
        let mut m = MemoryMap::new();
        m.add(0x1000, Box::new(vec![0u8; 0x1000])).unwrap();
        m.add(0x3000, Box::new(vec![0u8; 0x100])).unwrap();
        assert_eq!(
            m.add(0x1800, Box::new(vec![0u8; 0x1000])),
            Err(MapError::Overlap {
                base: 0x1800,
                len: 0x1000
            })
        );
        assert!(m.add(u64::MAX - 4, Box::new(vec![0u8; 16])).is_err());
        assert!(m.add(0x9000, Box::new(Vec::<u8>::new())).is_err());
        m.write(0x1ffc, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read(0x1ffc, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        // Straddling the end, a gap, or two regions: refused.
        assert!(m.write(0x1ffd, &[0; 4]).is_err());
        assert!(m.read(0x2000, &mut b).is_err());
        assert!(m.read(u64::MAX - 1, &mut b).is_err());
        assert!(m.contains(0x30fc, 4) && !m.contains(0x30fd, 4));
        assert_eq!(m.remove_within(0x3000, 0x80), 0, "only whole regions go");
        assert_eq!(m.remove_within(0x3000, 0x100), 1);
        assert!(m.add(0x3000, Box::new(vec![0u8; 0x100])).is_ok());
        assert!(m.remove(0x3000).is_some());
        assert!(!m.contains(0x3000, 1));
    }

    /// Memory whose reads fail (a VMM that refuses a DMA_READ).
    struct Refusing;

    impl HostMemory for Refusing {
        fn len(&self) -> u64 {
            0x1000
        }
        fn read(&self, _: u64, buf: &mut [u8]) {
            buf.fill(0xff);
        }
        fn try_read(&self, _: u64, _: &mut [u8]) -> Result<(), ReadFault> {
            Err(ReadFault)
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn a_failed_read_is_an_error_not_data() {
        let mut m = MemoryMap::new();
        m.add(0x1000, Box::new(Refusing)).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(
            m.read(0x1010, &mut b),
            Err(MapError::Fault {
                addr: 0x1010,
                len: 4
            })
        );
        assert_eq!(b, [0; 4], "nothing made up");
    }
}
