//! Capabilities a front-end cannot deliver, taken out of the list the guest reads.

use crate::device::RemoteFunction;

/// The capability list as the guest sees it, some capabilities unlinked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapPatch {
    /// (config byte offset, value the guest reads there).
    bytes: Vec<(u16, u8)>,
}

pub const CAP_PTR: u16 = 0x34;
pub const STATUS: u16 = 0x06;
pub const STATUS_CAP_LIST: u8 = 1 << 4;
pub const CAP_MSI: u8 = 0x05;
pub const CAP_MSIX: u8 = 0x11;

impl CapPatch {
    /// Walks the device's list and links around the capabilities in `hide`.
    pub fn compute(dev: &mut dyn RemoteFunction, hide: &[u8]) -> CapPatch {
        let byte = |dev: &mut dyn RemoteFunction, off: u16| -> Option<u8> {
            let d = dev.config_read(off & !3)?;
            Some(d.to_le_bytes()[(off & 3) as usize])
        };
        let mut kept: Vec<u16> = Vec::new();
        let mut hidden = false;
        let mut p = byte(dev, CAP_PTR).unwrap_or(0) as u16 & !3;
        // A list longer than the config space holds caps is a loop: stop.
        for _ in 0..48 {
            if p < 0x40 {
                break;
            }
            let (Some(id), Some(next)) = (byte(dev, p), byte(dev, p + 1)) else {
                break;
            };
            if hide.contains(&id) {
                hidden = true;
            } else {
                kept.push(p);
            }
            p = next as u16 & !3;
        }
        if !hidden {
            return CapPatch::default();
        }
        let mut bytes = vec![(CAP_PTR, kept.first().copied().unwrap_or(0) as u8)];
        for (i, &c) in kept.iter().enumerate() {
            bytes.push((c + 1, kept.get(i + 1).copied().unwrap_or(0) as u8));
        }
        if kept.is_empty() {
            let status = byte(dev, STATUS).unwrap_or(0);
            bytes.push((STATUS, status & !STATUS_CAP_LIST));
        }
        CapPatch { bytes }
    }

    /// `dword`, read at `register`, as the guest sees it.
    pub fn apply(&self, register: u16, dword: u32) -> u32 {
        let mut b = dword.to_le_bytes();
        for &(off, v) in &self.bytes {
            if off & !3 == register {
                b[(off & 3) as usize] = v;
            }
        }
        u32::from_le_bytes(b)
    }
}

/// The device did not answer a config read: nothing is known of what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoAnswer;

/// Where capability `id` is in the device's list (following the real links): `None`
/// when the list, read to its end, does not have it.
pub fn locate(dev: &mut dyn RemoteFunction, id: u8) -> Result<Option<u16>, NoAnswer> {
    let mut p = dev.config_read(CAP_PTR & !3).ok_or(NoAnswer)?.to_le_bytes()[0] as u16 & !3;
    for _ in 0..48 {
        if p < 0x40 {
            return Ok(None);
        }
        let head = dev.config_read(p).ok_or(NoAnswer)?;
        if head as u8 == id {
            return Ok(Some(p));
        }
        p = (head >> 8) as u16 & 0xfc;
    }
    Ok(None)
}

/// Where capability `id` is, when the device answered and has it.
pub fn find(dev: &mut dyn RemoteFunction, id: u8) -> Option<u16> {
    locate(dev, id).ok().flatten()
}
