//! The device behind the host bridge, as the front-ends reach it.

use rootcomplex::HostMemory;

/// The byte enables of a config access of `len` bytes starting `lead` bytes into its
/// dword (lead + len <= 4).
pub fn byte_enables(lead: usize, len: usize) -> u8 {
    (((1u16 << len) - 1) << lead) as u8
}

/// A BAR as the host bridge assigned it on the fabric side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub address: u64,
    pub size: u64,
    pub io: bool,
    pub is_64bit: bool,
    /// The guest reads it as prefetchable (a memory BAR's type bit 3).
    pub prefetchable: bool,
}

/// What the front-end needs from the device's side (the host bridge).
pub trait RemoteFunction {
    /// Reads the config dword at `register` (a multiple of 4); `None` when the device
    /// does not answer (the guest reads all-ones).
    fn config_read(&mut self, register: u16) -> Option<u32>;
    /// Writes the bytes of `value` enabled in `byte_enables` at dword `register`.
    fn config_write(&mut self, register: u16, value: u32, byte_enables: u8);
    /// Reads `len` bytes of device memory at `addr` (all-ones when it fails).
    fn mem_read(&mut self, addr: u64, len: usize) -> Vec<u8>;
    /// Writes device memory (posted).
    fn mem_write(&mut self, addr: u64, data: &[u8]);
    /// Where BAR `index` of the device is on the fabric side, how large it is and of
    /// what kind, when the host bridge assigned it: the front-ends address BARs by
    /// offset through it, and keep the guest's BAR registers by its sizes and kinds
    /// ([`crate::bar_shadow`]).
    fn bar(&self, index: usize) -> Option<Bar>;
    /// Maps guest RAM `mem` at guest-physical (or IOVA) `base` for the device's DMA.
    fn map_guest_ram(&mut self, base: u64, mem: Box<dyn HostMemory>) -> Result<(), String>;
    /// Unmaps the guest RAM regions that lie inside `base..base + size`.
    fn unmap_guest_ram(&mut self, base: u64, size: u64);
    /// Unmaps all guest RAM.
    fn clear_guest_ram(&mut self);
    /// Resets the device (a function-level reset).
    fn reset(&mut self);
    /// Turns the device's MSI-X on or off (the front-end decides, from what the VMM
    /// asks for; the table holds the host bridge's addresses).
    fn set_msix(&mut self, enabled: bool);
    /// Turns the device's MSI on or off, pointed at the host bridge with one vector
    /// (vector 0); the guest's own MSI address and data never reach the device.
    fn set_msi(&mut self, enabled: bool);
}
