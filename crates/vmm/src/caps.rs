//! Capabilities a front-end cannot deliver, taken out of the list the guest reads, and
//! capabilities found in a remote function's list. Both walk the list with
//! [`pci::Capabilities`], which bounds a hostile one.

use pci::regs::{self, status};
use pci::{Capabilities, CapabilityId};

use crate::device::RemoteFunction;

/// The capability list as the guest sees it, some capabilities unlinked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapPatch {
    /// (config byte offset, bits replaced, their value): the guest reads
    /// `(device's & !bits) | value` there.
    bytes: Vec<(u16, u8, u8)>,
}

/// Status register bit 4 (Capabilities List), as the byte at [`regs::STATUS`] holds it.
pub const STATUS_CAP_LIST: u8 = status::CAP_LIST as u8;
/// ID bytes of the capabilities a front-end looks for ([`CapabilityId`] names them all).
pub const CAP_MSI: u8 = CapabilityId::Msi.raw();
pub const CAP_MSIX: u8 = CapabilityId::MsiX.raw();

/// The device did not answer a config read: nothing is known of what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoAnswer;

/// The capability list of `dev`, read through its config reads.
fn walk(
    dev: &mut dyn RemoteFunction,
) -> Capabilities<impl FnMut(u16) -> Result<u32, NoAnswer> + '_> {
    Capabilities::new(move |off| dev.config_read(off).ok_or(NoAnswer))
}

impl CapPatch {
    /// Walks the device's list and links around the capabilities in `hide`: the
    /// previous capability's next pointer (or the Capabilities Pointer, for the
    /// first) skips each, and when none is left the Status register's Capabilities
    /// List bit reads 0. A loop is cut after its last new entry. A device that stops
    /// answering on the way is `NoAnswer` (nothing is known of the rest of its list:
    /// the caller asks again later rather than keep a patch that hides nothing).
    /// Nothing to hide reads nothing.
    pub fn compute(
        dev: &mut dyn RemoteFunction,
        hide: &[CapabilityId],
    ) -> Result<CapPatch, NoAnswer> {
        if hide.is_empty() {
            return Ok(CapPatch::default());
        }
        let mut kept: Vec<u16> = Vec::new();
        let mut hidden = false;
        for cap in walk(dev) {
            let cap = cap?;
            if hide.iter().any(|&id| cap.is(id)) {
                hidden = true;
            } else {
                kept.push(cap.offset);
            }
        }
        if !hidden {
            return Ok(CapPatch::default());
        }
        // Offsets are dword-aligned in 0x40..=0xfc (the walk checks): a byte each.
        let link = |to: Option<&u16>| to.map_or(0, |&c| c as u8);
        let mut bytes = vec![(regs::CAP_PTR, 0xff, link(kept.first()))];
        for (i, &c) in kept.iter().enumerate() {
            bytes.push((c + 1, 0xff, link(kept.get(i + 1))));
        }
        if kept.is_empty() {
            // Only the Capabilities List bit: the rest of Status (Interrupt Status
            // among them) stays the device's.
            bytes.push((regs::STATUS, STATUS_CAP_LIST, 0));
        }
        Ok(CapPatch { bytes })
    }

    /// `dword`, read at `register`, as the guest sees it.
    pub fn apply(&self, register: u16, dword: u32) -> u32 {
        let mut b = dword.to_le_bytes();
        for &(off, bits, v) in &self.bytes {
            if regs::dword(off) == register {
                let at = usize::from(off & 3);
                b[at] = (b[at] & !bits) | v;
            }
        }
        u32::from_le_bytes(b)
    }
}

/// Where capability `id` (a [`CapabilityId`] or its ID byte) is in the device's list,
/// following the real links: `None` when the list, read to its end, does not have it.
pub fn locate(dev: &mut dyn RemoteFunction, id: impl Into<u8>) -> Result<Option<u16>, NoAnswer> {
    let id = id.into();
    for cap in walk(dev) {
        let cap = cap?;
        if cap.id == id {
            return Ok(Some(cap.offset));
        }
    }
    Ok(None)
}

/// Where capability `id` is, when the device answered and has it.
pub fn find(dev: &mut dyn RemoteFunction, id: impl Into<u8>) -> Option<u16> {
    locate(dev, id).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_function::FakeFunction;
    use pci::WalkEnd;

    /// A function whose list is `links`: (offset, id, next).
    fn fake(links: &[(usize, u8, u8)]) -> FakeFunction {
        let mut dev = FakeFunction::new(0xfe00_0000);
        dev.config[regs::STATUS as usize] = STATUS_CAP_LIST;
        dev.config[regs::CAP_PTR as usize] = 0x40;
        for &(at, id, next) in links {
            dev.config[at] = id;
            dev.config[at + 1] = next;
        }
        dev
    }

    /// The list as a guest reading through `patch` walks it.
    fn guest_view(dev: &mut FakeFunction, patch: &CapPatch) -> (Vec<(u16, u8)>, WalkEnd) {
        let mut walk =
            Capabilities::new(|off| Ok::<_, ()>(patch.apply(off, dev.config_read(off).unwrap())));
        let caps = walk
            .by_ref()
            .map(|c| c.map(|c| (c.offset, c.id)).unwrap())
            .collect();
        (caps, walk.end().unwrap())
    }

    #[test]
    fn hidden_capabilities_are_linked_around() {
        let mut dev = fake(&[(0x40, 0x10, 0x50), (0x50, CAP_MSIX, 0x60), (0x60, 0x09, 0)]);
        let patch = CapPatch::compute(&mut dev, &[CapabilityId::MsiX]).unwrap();
        assert_eq!(
            guest_view(&mut dev, &patch),
            (vec![(0x40, 0x10), (0x60, 0x09)], WalkEnd::Complete)
        );
        assert_eq!(locate(&mut dev, CapabilityId::MsiX), Ok(Some(0x50)));
        assert_eq!(find(&mut dev, CAP_MSI), None);
        // Nothing left: the Capabilities List bit goes too.
        let mut dev = fake(&[(0x40, CAP_MSI, 0)]);
        let patch = CapPatch::compute(&mut dev, &[CapabilityId::Msi]).unwrap();
        assert_eq!(guest_view(&mut dev, &patch), (vec![], WalkEnd::Complete));
        let status = patch.apply(4, dev.config_read(4).unwrap());
        assert_eq!(regs::byte_in(status, regs::STATUS) & STATUS_CAP_LIST, 0);
        // The rest of Status is the device's, read live: Interrupt Status (bit 3)
        // comes and goes after the patch was made.
        dev.config[regs::STATUS as usize] |= 1 << 3;
        let status = patch.apply(4, dev.config_read(4).unwrap());
        assert_eq!(regs::byte_in(status, regs::STATUS), 1 << 3);
    }

    /// A device whose list loops: the guest sees the loop cut after its last new
    /// entry, and a capability it does not have is not found.
    #[test]
    fn a_looped_list_reaches_the_guest_finite() {
        let mut dev = fake(&[
            (0x40, 0x10, 0x50),
            (0x50, CAP_MSIX, 0x60),
            (0x60, 0x09, 0x40),
        ]);
        let patch = CapPatch::compute(&mut dev, &[CapabilityId::MsiX]).unwrap();
        assert_eq!(
            guest_view(&mut dev, &patch),
            (vec![(0x40, 0x10), (0x60, 0x09)], WalkEnd::Complete)
        );
        assert_eq!(locate(&mut dev, CapabilityId::Msi), Ok(None));
    }

    #[test]
    fn a_device_that_does_not_answer_is_not_known_to_lack_a_capability() {
        let mut dev = fake(&[(0x40, CAP_MSI, 0)]);
        dev.present = false;
        assert_eq!(locate(&mut dev, CapabilityId::Msi), Err(NoAnswer));
        assert_eq!(find(&mut dev, CapabilityId::Msi), None);
    }
}
