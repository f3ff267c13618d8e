//! The Max Payload Size the guest sees, apart from the one the device runs at.
//!
//! The device's TLPs never cross the guest's (QEMU's) root port: they end at the host
//! bridge's root complex, which writes guest memory itself. So the Max Payload Size that
//! matters is the fabric's, and the root complex chose it when it enumerated the
//! device (the smaller of its own `max_payload` and what the device supports). A guest
//! sets the field by its own root port (QEMU's advertise 128 bytes), which would cut
//! every DMA write into 128-byte TLPs across the fabric. So, as Linux's vfio-pci does
//! for an assigned device (`vfio_exp_config_write`):
//!
//! - Max Payload Size is kept here: the guest reads back what it wrote, and the
//!   device keeps the value the root complex gave it;
//! - Max Read Request Size reaches the device, but never below its Max Payload Size,
//!   so that reads come back in full-size completions;
//! - every other bit of Device Control reaches the device as written.
//!
//! Both front-ends hold one [`PayloadShadow`] per device and call it on every config
//! access ([`PayloadShadow::read`], [`PayloadShadow::write`]) and on a reset.

use pci::pcie::{self, devctl};
use pci::CapabilityId;

use crate::caps;
use crate::device::RemoteFunction;

/// The guest's view of Device Control's Max Payload Size field (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct PayloadShadow {
    /// The config register (dword) that holds Device Control: `Some(None)`, the device
    /// has no PCI Express capability; `None`, not known yet (the device did not answer
    /// the walk).
    register: Option<Option<u16>>,
    /// The Max Payload Size field as the guest last wrote it (bits 7:5 of Device
    /// Control); `None` until it writes one, when it reads the device's.
    guest_mps: Option<u16>,
    /// Device Control writes whose fields were changed on the way.
    adjusted: u64,
}

const MPS: u32 = devctl::MAX_PAYLOAD as u32;
const MRRS: u32 = devctl::MAX_READ_REQUEST as u32;

impl PayloadShadow {
    /// The register that holds Device Control, found once.
    fn devctl(&mut self, dev: &mut dyn RemoteFunction) -> Option<u16> {
        if let Some(known) = self.register {
            return known;
        }
        let found = caps::locate(dev, CapabilityId::PciExpress)
            .ok()?
            .map(|cap| cap + pcie::DEVICE_CONTROL);
        self.register = Some(found);
        found
    }

    /// `dword`, read from the device at `register`, as the guest sees it.
    pub fn read(&mut self, dev: &mut dyn RemoteFunction, register: u16, dword: u32) -> u32 {
        let Some(mps) = self.guest_mps else {
            return dword;
        };
        if self.devctl(dev) == Some(register) {
            dword & !MPS | u32::from(mps)
        } else {
            dword
        }
    }

    /// What of the guest's write of `value` (bytes `be`) at `register` goes to the
    /// device: the same, or for Device Control the device's own Max Payload Size and a
    /// Max Read Request Size at least that large. `None`: nothing is to be written (the
    /// write was to Device Control and the device did not answer for its own).
    pub fn write(
        &mut self,
        dev: &mut dyn RemoteFunction,
        register: u16,
        value: u32,
        be: u8,
    ) -> Option<(u32, u8)> {
        // Device Control is the low half of its dword: bytes 0 (MPS) and 1 (MRRS).
        if be & 0b0011 == 0 || self.devctl(dev) != Some(register) {
            return Some((value, be));
        }
        let device_mps = dev.config_read(register)? & MPS;
        let mut v = value;
        if be & 0b0001 != 0 {
            self.guest_mps = Some((value & MPS) as u16);
            v = v & !MPS | device_mps;
        }
        if be & 0b0010 != 0 {
            let mps = device_mps >> devctl::MAX_PAYLOAD_SHIFT;
            let mrrs = (v & MRRS) >> devctl::MAX_READ_REQUEST_SHIFT;
            if mrrs < mps {
                v = v & !MRRS | mps << devctl::MAX_READ_REQUEST_SHIFT;
            }
        }
        self.adjusted += u64::from(v != value);
        Some((v, be))
    }

    /// The device was reset: the guest reads its Max Payload Size again until it
    /// writes one, and the capability is looked for again.
    pub fn reset(&mut self) {
        self.register = None;
        self.guest_mps = None;
    }

    /// Another device is behind the front-end (a box restart): its capability is
    /// looked for again; the guest's value stays what it wrote.
    pub fn device_changed(&mut self) {
        self.register = None;
    }

    /// Device Control writes whose Max Payload or Max Read Request Size was changed on
    /// the way to the device.
    pub fn adjusted(&self) -> u64 {
        self.adjusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_function::FakeFunction;

    /// A function with a PCI Express capability at 0x40 whose Device Control holds
    /// `ctl` (the root complex's choice).
    fn device(ctl: u16) -> FakeFunction {
        let mut dev = FakeFunction::new(0xe000_0000);
        dev.config[6] = 0x10;
        dev.config[0x34] = 0x40;
        dev.config[0x40] = CapabilityId::PciExpress.raw();
        dev.config[0x48..0x4a].copy_from_slice(&ctl.to_le_bytes());
        dev
    }

    const DEVCTL: u16 = 0x48;
    /// MPS 1024 (3), MRRS 512 (2), relaxed ordering: as a root complex with
    /// `max_payload = 1024` leaves a device.
    const FABRIC: u16 = 3 << 5 | 2 << 12 | 1 << 4;

    fn mps(ctl: u32) -> u32 {
        (ctl & MPS) >> devctl::MAX_PAYLOAD_SHIFT
    }

    fn mrrs(ctl: u32) -> u32 {
        (ctl & MRRS) >> devctl::MAX_READ_REQUEST_SHIFT
    }

    #[test]
    fn the_guest_reads_back_its_mps_and_the_device_keeps_the_fabrics() {
        let mut dev = device(FABRIC);
        let mut s = PayloadShadow::default();
        // Before the guest writes, it reads the device's.
        let d = dev.config_read(DEVCTL).unwrap();
        assert_eq!(mps(s.read(&mut dev, DEVCTL, d)), 3);
        // Linux under a root port of 128 bytes: MPS 128, MRRS 512 kept, and it turns
        // on error reporting (bits 0-3) on the way.
        let guest = u32::from(FABRIC) & !MPS | 0xf;
        let (to_dev, be) = s.write(&mut dev, DEVCTL, guest, 0b0011).unwrap();
        assert_eq!(be, 0b0011);
        assert_eq!(mps(to_dev), 3, "the device keeps the fabric's MPS");
        assert_eq!(mrrs(to_dev), 3, "MRRS raised to the MPS");
        assert_eq!(to_dev & 0x1f, 0x1f, "the other bits as written");
        // The guest reads 128 bytes back; the rest of the dword is the device's.
        let d = u32::from(FABRIC) | 0xf | 0x0004_0000;
        let seen = s.read(&mut dev, DEVCTL, d);
        assert_eq!(mps(seen), 0);
        assert_eq!(seen & !MPS, d & !MPS);
        assert_eq!(s.adjusted(), 1);
    }

    #[test]
    fn a_larger_mrrs_and_other_registers_pass_unchanged() {
        let mut dev = device(FABRIC);
        let mut s = PayloadShadow::default();
        // MRRS 4096 in byte 1 alone: above the MPS, as written.
        let v = 5u32 << 12;
        assert_eq!(s.write(&mut dev, DEVCTL, v, 0b0010), Some((v, 0b0010)));
        // Device Status (the upper half) alone: not looked at.
        assert_eq!(
            s.write(&mut dev, DEVCTL, 0x000f_0000, 0b0100),
            Some((0x000f_0000, 0b0100))
        );
        // Another register: as written, and read as the device's.
        assert_eq!(s.write(&mut dev, 0x04, 0x6, 0b0011), Some((0x6, 0b0011)));
        assert_eq!(s.read(&mut dev, 0x04, 0x1234), 0x1234);
        assert_eq!(s.adjusted(), 0);
    }

    #[test]
    fn a_device_without_the_capability_or_an_answer() {
        // No capability list: every write as given.
        let mut plain = FakeFunction::new(0xe000_0000);
        let mut s = PayloadShadow::default();
        assert_eq!(
            s.write(&mut plain, DEVCTL, 0xff, 0b0001),
            Some((0xff, 0b0001))
        );
        // A device that stops answering after the walk: the write to Device Control
        // is not made (its MPS is not known).
        let mut dev = device(FABRIC);
        let mut s = PayloadShadow::default();
        assert!(s.write(&mut dev, DEVCTL, 0, 0b0001).is_some());
        dev.present = false;
        assert_eq!(s.write(&mut dev, DEVCTL, 0, 0b0011), None);
        // A device that never answered: the walk is tried again later.
        let mut s = PayloadShadow::default();
        assert_eq!(s.write(&mut dev, DEVCTL, 0, 0b0011), Some((0, 0b0011)));
        dev.present = true;
        assert!(s.write(&mut dev, DEVCTL, 0, 0b0001).is_some());
        assert_eq!(mps(s.write(&mut dev, DEVCTL, 0, 0b0001).unwrap().0), 3);
    }

    #[test]
    fn a_reset_shows_the_devices_mps_again() {
        let mut dev = device(FABRIC);
        let mut s = PayloadShadow::default();
        s.write(&mut dev, DEVCTL, 0, 0b0001).unwrap();
        assert_eq!(mps(s.read(&mut dev, DEVCTL, u32::from(FABRIC))), 0);
        s.device_changed();
        assert_eq!(mps(s.read(&mut dev, DEVCTL, u32::from(FABRIC))), 0);
        s.reset();
        assert_eq!(mps(s.read(&mut dev, DEVCTL, u32::from(FABRIC))), 3);
    }
}
