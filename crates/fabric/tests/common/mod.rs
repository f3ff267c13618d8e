//! What the fabric tests share.

use wire::DeviceInfo;

/// A ready device in `slot`, in group `gid`.
pub fn device(slot: u8, gid: u16) -> DeviceInfo {
    DeviceInfo {
        slot,
        flags: wire::DEVICE_READY,
        gid,
        vendor_id: 0x1de5,
        device_id: 1,
        class_code: 0x058000,
        revision: 1,
        subsystem_vendor_id: 0x1de5,
        subsystem_id: 1,
    }
}
