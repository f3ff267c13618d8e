//! The device's memory BARs where the guest programmed them. QEMU's proxy gives each
//! BAR access as a guest-physical address, which is also the address the device's
//! BAR registers hold (the guest's config writes reach the device); before such an
//! address becomes a memory request on the fabric, where another device may decode
//! it, it must fall inside one of this device's BARs.
//!
//! The sizes are found once per device the way firmware finds them (all-ones written
//! to each BAR register, the size mask read back, the value restored); the addresses
//! are read from the BAR registers again after any config write to them or a reset.

use pci::regs::{self, bar, BAR_COUNT as BARS};
use pci::BarKind;

use crate::caps::NoAnswer;
use crate::device::RemoteFunction;

/// How a BAR register decodes, from sizing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Unimplemented, I/O space, or the upper half of a 64-bit BAR.
    Absent,
    /// A memory BAR of `size` bytes (a power of two).
    Memory { size: u64, is_64bit: bool },
}

/// A memory BAR at guest-physical `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    base: u64,
    size: u64,
}

impl Window {
    /// Whether `len` bytes at `addr` lie inside (checked arithmetic: QEMU chooses
    /// both).
    fn holds(&self, addr: u64, len: u64) -> bool {
        addr.checked_sub(self.base)
            .and_then(|offset| offset.checked_add(len))
            .is_some_and(|end| end <= self.size)
    }
}

/// What the proxy server knows of the device's memory BARs.
#[derive(Debug, Default)]
pub struct GuestBars {
    /// The BARs' sizes; `None` until the device answered the sizing.
    shapes: Option<[Shape; BARS]>,
    /// Where the memory BARs are; `None` until read, and again after a write to a
    /// BAR register or a reset.
    windows: Option<Vec<Window>>,
}

impl GuestBars {
    /// The guest wrote config dword `register`: a BAR there may have moved.
    pub fn config_written(&mut self, register: u16) {
        if regs::BARS.contains(&register) {
            self.windows = None;
        }
    }

    /// The device was reset: its BARs are read again.
    pub fn reset(&mut self) {
        self.windows = None;
    }

    /// Another device (or the same one after its box restarted): sized again.
    pub fn forget(&mut self) {
        *self = GuestBars::default();
    }

    /// Whether `len` bytes at guest-physical `addr` lie inside one of the device's
    /// memory BARs. False while the device does not answer config reads (it would
    /// not answer the access either), and for a BAR at address 0 (unassigned).
    pub fn holds(&mut self, dev: &mut dyn RemoteFunction, addr: u64, len: u64) -> bool {
        self.windows(dev)
            .is_ok_and(|w| w.iter().any(|w| w.holds(addr, len)))
    }

    fn windows(&mut self, dev: &mut dyn RemoteFunction) -> Result<&[Window], NoAnswer> {
        let shapes = match self.shapes {
            Some(s) => s,
            None => *self.shapes.insert(size_bars(dev)?),
        };
        if self.windows.is_none() {
            self.windows = Some(read_windows(dev, &shapes)?);
        }
        Ok(self.windows.as_deref().unwrap_or_default())
    }
}

/// Writes all-ones to BAR register `register`, reads back what sticks, and puts
/// `orig` back.
fn size_register(dev: &mut dyn RemoteFunction, register: u16, orig: u32) -> Result<u32, NoAnswer> {
    dev.config_write(register, u32::MAX, 0xf);
    let mask = dev.config_read(register);
    dev.config_write(register, orig, 0xf);
    mask.ok_or(NoAnswer)
}

/// Sizes the six BAR registers.
fn size_bars(dev: &mut dyn RemoteFunction) -> Result<[Shape; BARS], NoAnswer> {
    let mut shapes = [Shape::Absent; BARS];
    let mut i = 0;
    while let Some(register) = regs::bar(i) {
        let orig = dev.config_read(register).ok_or(NoAnswer)?;
        let kind = BarKind::of(orig);
        if kind == BarKind::Io {
            i += 1;
            continue;
        }
        // A 64-bit BAR in the last register has no upper half: taken as 32-bit.
        let is_64bit = kind == BarKind::Memory64 && i + 1 < BARS;
        let mut mask = u64::from(size_register(dev, register, orig)? & !bar::MEM_FLAGS);
        if is_64bit {
            let upper = register + 4;
            let orig_hi = dev.config_read(upper).ok_or(NoAnswer)?;
            mask |= u64::from(size_register(dev, upper, orig_hi)?) << 32;
        }
        if mask != 0 {
            // The lowest bit that sticks is the size (robust to a device whose
            // mask has holes).
            shapes[i] = Shape::Memory {
                size: 1 << mask.trailing_zeros(),
                is_64bit,
            };
        }
        i += if is_64bit { 2 } else { 1 };
    }
    Ok(shapes)
}

/// Reads where the memory BARs are now.
fn read_windows(
    dev: &mut dyn RemoteFunction,
    shapes: &[Shape; BARS],
) -> Result<Vec<Window>, NoAnswer> {
    let mut windows = Vec::with_capacity(BARS);
    for (i, shape) in shapes.iter().enumerate() {
        let Shape::Memory { size, is_64bit } = *shape else {
            continue;
        };
        let Some(register) = regs::bar(i) else {
            break;
        };
        let lo = dev.config_read(register).ok_or(NoAnswer)?;
        let hi = if is_64bit {
            dev.config_read(register + 4).ok_or(NoAnswer)?
        } else {
            0
        };
        let base = (u64::from(hi) << 32 | u64::from(lo & !bar::MEM_FLAGS)) & !(size - 1);
        if base != 0 {
            windows.push(Window { base, size });
        }
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_function::FakeFunction;

    #[test]
    fn windows_hold_only_whole_accesses_inside() {
        let w = Window {
            base: 0xffff_ffff_ffff_f000,
            size: 0x1000,
        };
        assert!(w.holds(0xffff_ffff_ffff_f000, 8));
        assert!(w.holds(0xffff_ffff_ffff_fff8, 8), "ends at 2^64");
        assert!(!w.holds(0xffff_ffff_ffff_fffc, 8), "wraps");
        assert!(!w.holds(0xffff_ffff_ffff_efff, 1));
    }

    /// BAR0 of the fake is sized and found; the sizing leaves its address and
    /// writes only BAR registers.
    #[test]
    fn the_fakes_bar0_is_sized_and_restored() {
        let mut dev = FakeFunction::new(0xfe00_0000);
        let mut bars = GuestBars::default();
        assert!(bars.holds(&mut dev, 0xfe00_0000, 4));
        assert!(!bars.holds(&mut dev, 0xfe00_1000, 4));
        assert_eq!(dev.bar_base, 0xfe00_0000);
        assert!(dev.config_writes.iter().all(|w| regs::BARS.contains(&w.0)));
        // Read once: no more config traffic until a BAR register is written.
        let writes = dev.config_writes.len();
        assert!(bars.holds(&mut dev, 0xfe00_0ffc, 4));
        assert_eq!(dev.config_writes.len(), writes);
        // A device that does not answer: nothing holds, and nothing is remembered.
        let mut away = FakeFunction::new(0xfe00_0000);
        away.present = false;
        let mut bars = GuestBars::default();
        assert!(!bars.holds(&mut away, 0xfe00_0000, 4));
        away.present = true;
        assert!(bars.holds(&mut away, 0xfe00_0000, 4));
    }
}
