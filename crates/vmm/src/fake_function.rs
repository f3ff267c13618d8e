//! A remote function for the front-ends' tests and fuzz targets (feature `fake`): a
//! config space, one 4 KiB memory BAR, guest RAM as the server maps it, and a record
//! of what the server did. Accesses outside the BAR read all-ones and write nothing.
//! The BAR0 register decodes as a 32-bit memory BAR of the BAR's size: writes move the
//! BAR (a guest programming it), all-ones reads back the size mask.

use rootcomplex::HostMemory;

use crate::device::{Bar, RemoteFunction};

pub struct FakeFunction {
    pub config: [u8; 256],
    /// Where BAR0 is on the fabric side.
    pub bar_base: u64,
    pub bar: Vec<u8>,
    pub config_writes: Vec<(u16, u32, u8)>,
    /// Memory reads and writes that reached the function (address, length), inside
    /// its BAR or not.
    pub mem_accesses: Vec<(u64, usize)>,
    pub ram: Vec<(u64, Box<dyn HostMemory>)>,
    pub msix_on: Vec<bool>,
    pub msi_on: Vec<bool>,
    pub resets: usize,
    /// While false, config reads get no answer (the device is away).
    pub present: bool,
}

impl FakeFunction {
    /// A function with the IDs 1af4:1042, the rest of its config space zero (the
    /// tests fill in what they need), and BAR0 at `bar_base` (a 32-bit address,
    /// 4 KiB-aligned).
    pub fn new(bar_base: u64) -> FakeFunction {
        let mut config = [0u8; 256];
        config[0..4].copy_from_slice(&0x1042_1af4u32.to_le_bytes());
        config[0x10..0x14].copy_from_slice(&(bar_base as u32).to_le_bytes());
        FakeFunction {
            config,
            bar_base,
            bar: vec![0; 4096],
            config_writes: Vec::new(),
            mem_accesses: Vec::new(),
            ram: Vec::new(),
            msix_on: Vec::new(),
            msi_on: Vec::new(),
            resets: 0,
            present: true,
        }
    }
}

impl FakeFunction {
    /// [`FakeFunction::new`] with a capability list: MSI at 0x40 (64-bit, 16 bytes;
    /// `msi_control` is the low byte of its Message Control) and MSI-X at 0x50
    /// (4 vectors).
    pub fn with_msi_and_msix(bar_base: u64, msi_control: u8) -> FakeFunction {
        let mut dev = FakeFunction::new(bar_base);
        dev.config[6] = 0x10;
        dev.config[0x34] = 0x40;
        dev.config[0x40] = 0x05;
        dev.config[0x41] = 0x50;
        dev.config[0x42] = msi_control;
        dev.config[0x50] = 0x11;
        dev.config[0x52] = 3;
        dev
    }

    /// Where `len` bytes at bus address `addr` are in BAR0, when they all are.
    fn bar_range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(self.bar_base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bar.len()).then_some(start..end)
    }
}

impl RemoteFunction for FakeFunction {
    fn config_read(&mut self, register: u16) -> Option<u32> {
        let r = register as usize;
        self.present
            .then(|| self.config.get(r..r + 4))
            .flatten()
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn config_write(&mut self, register: u16, value: u32, be: u8) {
        self.config_writes.push((register, value, be));
        if register == 0x10 {
            let old = u32::from_le_bytes(self.config[0x10..0x14].try_into().unwrap());
            let enabled = u32::from_le_bytes([be & 1, be >> 1 & 1, be >> 2 & 1, be >> 3 & 1])
                .wrapping_mul(0xff);
            let size_mask = !(self.bar.len() as u32 - 1);
            let new = ((old & !enabled) | (value & enabled)) & size_mask;
            self.config[0x10..0x14].copy_from_slice(&new.to_le_bytes());
            self.bar_base = new as u64;
        }
    }
    fn mem_read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        self.mem_accesses.push((addr, len));
        match self.bar_range(addr, len) {
            Some(r) => self.bar[r].to_vec(),
            // Nothing answers there: all-ones, as on PCIe.
            None => vec![0xff; len],
        }
    }
    fn mem_write(&mut self, addr: u64, data: &[u8]) {
        self.mem_accesses.push((addr, data.len()));
        if let Some(r) = self.bar_range(addr, data.len()) {
            self.bar[r].copy_from_slice(data);
        }
    }
    fn bar(&self, index: usize) -> Option<Bar> {
        (index == 0).then_some(Bar {
            address: self.bar_base,
            size: self.bar.len() as u64,
            io: false,
            is_64bit: false,
        })
    }
    fn map_guest_ram(&mut self, base: u64, mem: Box<dyn HostMemory>) -> Result<(), String> {
        self.ram.push((base, mem));
        Ok(())
    }
    fn unmap_guest_ram(&mut self, base: u64, size: u64) {
        let end = base.saturating_add(size);
        self.ram.retain(|(b, _)| *b < base || *b >= end);
    }
    fn clear_guest_ram(&mut self) {
        self.ram.clear();
    }
    fn reset(&mut self) {
        self.resets += 1;
        // A function-level reset clears MSI Enable and MSI-X Enable.
        for on in [&mut self.msi_on, &mut self.msix_on] {
            if on.last() == Some(&true) {
                on.push(false);
            }
        }
    }
    fn set_msix(&mut self, enabled: bool) {
        self.msix_on.push(enabled);
    }
    fn set_msi(&mut self, enabled: bool) {
        self.msi_on.push(enabled);
    }
}
