//! The BAR registers as the guest sees them, kept by the front-end and never written
//! to the device.
//!
//! The host bridge enumerates the device on its own side: the device's real BARs hold
//! addresses in the bridge's windows, which the guest never sees. What the guest (or
//! its VMM) writes to a BAR register in config space is kept here instead, and reads
//! come back as a real BAR would answer: the value written, masked by the BAR's size,
//! with the type bits (I/O; 32- or 64-bit memory; prefetchable). So an all-ones write
//! reads back the size mask and the type bits, which is how firmware, QEMU's proxy and
//! cloud-hypervisor size BARs (libvfio-user answers the same way). A 64-bit BAR is a
//! lo/hi pair of registers; a register without a BAR, and the expansion ROM register,
//! read 0 and ignore writes.
//!
//! The sizes and kinds come from [`RemoteFunction::bar`] at each access (the bridge
//! may enumerate the device again after a reset or a box restart, at new addresses of
//! its own, while the guest's stay). For a front-end that is given guest-physical
//! addresses (QEMU's proxy), [`BarShadow::resolve`] maps one to the BAR that holds it
//! and on to the device's own address; an access that is not wholly inside one of the
//! device's memory BARs as the guest placed them resolves to nothing and must not
//! reach the fabric, where another device may decode that address.

use pci::regs::{self, BAR_COUNT};
use pci::BarKind;

use crate::device::{Bar, RemoteFunction};

/// What a BAR register decodes, from the device's BARs as the bridge assigned them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decode {
    /// No BAR here: reads 0, ignores writes.
    Absent,
    /// A BAR (the low register of a 64-bit one) of `size` bytes whose type bits read
    /// as `flags`.
    Low {
        size: u64,
        kind: BarKind,
        flags: u32,
    },
    /// The high register of the 64-bit BAR of `size` bytes in the register below.
    High { size: u64 },
}

/// Whether `b` is a BAR a register can decode: a power-of-two size, at least the
/// type bits' span and at most what its register width can hold (the bridge's
/// enumeration checks this too; the shadow does not rely on it).
fn decodable(b: &Bar, has_upper: bool) -> bool {
    let (min, max) = if b.io {
        (4, 1 << 31)
    } else if b.is_64bit {
        (16, 1 << 63)
    } else {
        (16, 1 << 31)
    };
    b.size.is_power_of_two() && (min..=max).contains(&b.size) && (!b.is_64bit || has_upper)
}

/// How the six BAR registers of `dev` decode. A 64-bit BAR takes the register above
/// it as its high half (whatever `dev.bar` says of that index); one in the last
/// register, which has no register above, is not decoded.
fn layout(dev: &dyn RemoteFunction) -> [Decode; BAR_COUNT] {
    let mut out = [Decode::Absent; BAR_COUNT];
    let mut i = 0;
    while i < BAR_COUNT {
        let has_upper = i + 1 < BAR_COUNT;
        match dev.bar(i).filter(|b| decodable(b, has_upper)) {
            Some(b) => {
                let kind = match (b.io, b.is_64bit) {
                    (true, _) => BarKind::Io,
                    (false, true) => BarKind::Memory64,
                    (false, false) => BarKind::Memory32,
                };
                let prefetchable = b.prefetchable && kind != BarKind::Io;
                out[i] = Decode::Low {
                    size: b.size,
                    kind,
                    flags: kind.flags(prefetchable),
                };
                if kind == BarKind::Memory64 {
                    out[i + 1] = Decode::High { size: b.size };
                    i += 1;
                }
            }
            None => out[i] = Decode::Absent,
        }
        i += 1;
    }
    out
}

/// The guest-visible BAR registers of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarShadow {
    /// What was last written to each BAR register, all 32 bits (reads mask it by the
    /// BAR's size, so a layout that changes under it never shows bits it lacks).
    written: [u32; BAR_COUNT],
}

impl BarShadow {
    /// The dword the guest reads at `register` (a dword offset), or `None` when the
    /// shadow does not keep that register (the caller forwards the read).
    pub fn read(&self, dev: &dyn RemoteFunction, register: u16) -> Option<u32> {
        if register == regs::ROM {
            return Some(0);
        }
        let i = regs::bar_index(register)?;
        let v = self.written[i];
        Some(match layout(dev)[i] {
            Decode::Absent => 0,
            Decode::Low { size, kind, flags } => {
                // The low 32 bits of the address mask (0 for a BAR of 4 GiB or more).
                let mask = !(size - 1) as u32;
                (v & mask & !kind.flags_mask()) | flags
            }
            Decode::High { size } => v & (!(size - 1) >> 32) as u32,
        })
    }

    /// Takes a write of the bytes of `value` enabled in `byte_enables` to `register`
    /// (a dword offset); `false` when the shadow does not keep that register (the
    /// caller forwards the write). Writes to the ROM register are taken and dropped.
    pub fn write(&mut self, register: u16, value: u32, byte_enables: u8) -> bool {
        if register == regs::ROM {
            return true;
        }
        let Some(i) = regs::bar_index(register) else {
            return false;
        };
        let enabled = u32::from_le_bytes([0u8, 1, 2, 3].map(|b| {
            if byte_enables >> b & 1 != 0 {
                0xff
            } else {
                0
            }
        }));
        self.written[i] = (self.written[i] & !enabled) | (value & enabled);
        true
    }

    /// The registers as after a reset: every BAR at 0 (unassigned), as a
    /// function-level reset leaves a real device's.
    pub fn reset(&mut self) {
        *self = BarShadow::default();
    }

    /// Where memory BAR `index` is for the guest, as its registers read; `None` for a
    /// BAR that is absent, I/O, or at address 0 (unassigned).
    fn guest_base(&self, layout: &[Decode; BAR_COUNT], index: usize) -> Option<(u64, u64)> {
        let Decode::Low { size, kind, .. } = layout[index] else {
            return None;
        };
        let lo = self.written[index] & !(size - 1) as u32 & !kind.flags_mask();
        let hi = match kind {
            BarKind::Io => return None,
            BarKind::Memory32 => 0,
            // The layout gave a 64-bit BAR its upper register.
            BarKind::Memory64 => self.written[index + 1] & (!(size - 1) >> 32) as u32,
        };
        let base = u64::from(hi) << 32 | u64::from(lo);
        (base != 0).then_some((base, size))
    }

    /// The memory BAR that holds all of the `len` bytes at guest-physical `addr`, and
    /// the offset of `addr` in it; `None` when no BAR holds them all (checked
    /// arithmetic: the caller's address and length are the guest's).
    pub fn locate(&self, dev: &dyn RemoteFunction, addr: u64, len: u64) -> Option<(usize, u64)> {
        let layout = layout(dev);
        (0..BAR_COUNT).find_map(|i| {
            let (base, size) = self.guest_base(&layout, i)?;
            let offset = addr.checked_sub(base)?;
            let end = offset.checked_add(len)?;
            (end <= size).then_some((i, offset))
        })
    }

    /// The device's own address of the `len` bytes at guest-physical `addr`: the same
    /// offset in the same BAR where the bridge placed it. `None` when no BAR of the
    /// device holds them all, or the access would run past 2^64 at the bridge's
    /// address of that BAR.
    pub fn resolve(&self, dev: &dyn RemoteFunction, addr: u64, len: u64) -> Option<u64> {
        let (index, offset) = self.locate(dev, addr, len)?;
        let b = dev.bar(index)?;
        let at = b.address.checked_add(offset)?;
        // The last byte must be addressable (an access may end at 2^64).
        at.checked_add(len.saturating_sub(1))?;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_function::FakeFunction;

    /// BAR0: 4 KiB, 32-bit at 0xfe00_0000 on the bridge's side; BAR2/3: 64 KiB,
    /// 64-bit prefetchable at 0x8_0000_0000.
    fn fake() -> FakeFunction {
        FakeFunction::new(0xfe00_0000).with_bar2_64(0x8_0000_0000, 1 << 16)
    }

    fn sized(s: &mut BarShadow, dev: &FakeFunction, register: u16) -> u32 {
        assert!(s.write(register, u32::MAX, 0xf));
        s.read(dev, register).unwrap()
    }

    #[test]
    fn all_ones_reads_back_the_size_mask_and_the_type_bits() {
        let dev = fake();
        let mut s = BarShadow::default();
        // Before anything is written: the type bits only.
        let reads = [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30].map(|r| s.read(&dev, r).unwrap());
        assert_eq!(reads, [0, 0, 0xc, 0, 0, 0, 0]);
        assert_eq!(sized(&mut s, &dev, 0x10), 0xffff_f000, "32-bit 4 KiB");
        assert_eq!(sized(&mut s, &dev, 0x14), 0, "no BAR1");
        assert_eq!(
            sized(&mut s, &dev, 0x18),
            0xffff_000c,
            "64-bit prefetchable lo"
        );
        assert_eq!(sized(&mut s, &dev, 0x1c), 0xffff_ffff, "64-bit hi");
        assert_eq!(sized(&mut s, &dev, 0x30), 0, "no ROM");
        // A register the shadow does not keep is the caller's.
        assert_eq!(s.read(&dev, 0x04), None);
        assert!(!s.write(0x28, 1, 0xf));
        // Byte enables: only the enabled bytes change.
        assert!(s.write(0x10, 0x1234_5678, 0b1000));
        assert_eq!(s.read(&dev, 0x10), Some(0x12ff_f000));
        // A BAR of 4 GiB or more: the low register keeps only the type bits.
        let big = FakeFunction::new(0xfe00_0000).with_bar2_64(1 << 40, 1 << 33);
        let mut s = BarShadow::default();
        assert_eq!(sized(&mut s, &big, 0x18), 0xc);
        assert_eq!(sized(&mut s, &big, 0x1c), 0xffff_fffe);
        s.reset();
        assert_eq!(s.read(&big, 0x1c), Some(0));
    }

    #[test]
    fn guest_addresses_resolve_to_the_bridges_inside_a_bar_only() {
        let dev = fake();
        let mut s = BarShadow::default();
        // Unassigned (0): nothing resolves.
        assert_eq!(s.resolve(&dev, 0, 4), None);
        s.write(0x10, 0xc000_0000, 0xf);
        s.write(0x18, 0xd000_0000, 0xf);
        s.write(0x1c, 0x1, 0xf);
        assert_eq!(s.read(&dev, 0x18), Some(0xd000_000c));
        assert_eq!(s.resolve(&dev, 0xc000_0010, 4), Some(0xfe00_0010));
        assert_eq!(s.resolve(&dev, 0xc000_0ff8, 8), Some(0xfe00_0ff8));
        assert_eq!(s.locate(&dev, 0x1_d000_fffc, 4), Some((2, 0xfffc)));
        assert_eq!(s.resolve(&dev, 0x1_d000_fffc, 4), Some(0x8_0000_fffc));
        for (addr, len) in [
            (0xc000_0ffc, 8),
            (0xbfff_fffc, 8),
            (0xc000_1000, 1),
            (0xd000_0000, 4),
            (0x1_d001_0000, 1),
            (u64::MAX - 3, 8),
            (0xc000_0000, u64::MAX),
        ] {
            assert_eq!(s.resolve(&dev, addr, len), None, "{addr:#x}+{len}");
        }
        // An I/O BAR is never a place for memory accesses.
        let mut io = FakeFunction::new(0xfe00_0000);
        io.bar0_io = true;
        let mut s = BarShadow::default();
        s.write(0x10, 0xc000, 0xf);
        assert_eq!(s.read(&io, 0x10), Some(0xc001));
        assert_eq!(s.resolve(&io, 0xc000, 4), None);
    }

    /// Accesses at the very end of the address space, on either side: one that ends
    /// at 2^64 is inside, one that would wrap is not.
    #[test]
    fn the_end_of_the_address_space_does_not_wrap() {
        let dev = FakeFunction::new(0xfe00_0000).with_bar2_64(0xffff_ffff_ffff_f000, 1 << 12);
        let mut s = BarShadow::default();
        s.write(0x18, 0xffff_f000, 0xf);
        s.write(0x1c, 0xffff_ffff, 0xf);
        assert_eq!(s.locate(&dev, u64::MAX - 7, 8), Some((2, 0xff8)));
        assert_eq!(s.resolve(&dev, u64::MAX - 7, 8), Some(u64::MAX - 7));
        assert_eq!(s.resolve(&dev, u64::MAX - 3, 8), None, "wraps");
        // The guest's BAR elsewhere, the bridge's at the end: the same.
        s.write(0x1c, 0, 0xf);
        assert_eq!(s.resolve(&dev, 0xffff_fff8, 8), Some(u64::MAX - 7));
        assert_eq!(s.resolve(&dev, 0xffff_fffc, 8), None);
        // A bridge address whose BAR would run past 2^64 (no enumeration places one
        // there): the part beyond resolves to nothing.
        let dev = FakeFunction::new(0xfe00_0000).with_bar2_64(0xffff_ffff_ffff_f800, 1 << 12);
        assert_eq!(s.resolve(&dev, 0xffff_f7f8, 8), Some(u64::MAX - 7));
        assert_eq!(s.resolve(&dev, 0xffff_f800, 8), None);
    }
}
