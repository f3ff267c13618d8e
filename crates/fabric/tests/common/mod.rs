//! What the fabric tests share.

use wire::DeviceInfo;

/// A ready device in `slot`, in group `gid`.
pub fn device(slot: u8, gid: u16) -> DeviceInfo {
    wire::sample::memdev(slot, gid)
}
