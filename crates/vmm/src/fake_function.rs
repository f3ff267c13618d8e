//! A remote function for the front-ends' tests and fuzz targets (feature `fake`): a
//! config space, a 4 KiB memory BAR0 (and, if asked for, a 64-bit BAR2), guest RAM as
//! the server maps it, and a record of what the server did. Accesses outside the BARs
//! read all-ones and write nothing. The BARs stay where they were made (as the bridge
//! assigned them): the front-ends keep the guest's BAR registers to themselves.

use rootcomplex::HostMemory;

use crate::device::{Bar, RemoteFunction};

pub struct FakeFunction {
    pub config: [u8; 256],
    /// Where BAR0 is on the fabric side.
    pub bar_base: u64,
    pub bar: Vec<u8>,
    /// BAR0 is an I/O BAR (its size and place as above).
    pub bar0_io: bool,
    /// Where BAR2 (64-bit, prefetchable) is, and its contents; empty: no BAR2.
    pub bar2_base: u64,
    pub bar2: Vec<u8>,
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
            bar0_io: false,
            bar2_base: 0,
            bar2: Vec::new(),
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

    /// The function with a 64-bit prefetchable BAR2 of `size` bytes (a power of two
    /// from 16) at bus address `base`, its registers (0x18, 0x1c) holding it.
    pub fn with_bar2_64(mut self, base: u64, size: usize) -> FakeFunction {
        self.bar2_base = base;
        self.bar2 = vec![0; size];
        let lo = (base as u32 & !0xf) | 0xc;
        self.config[0x18..0x1c].copy_from_slice(&lo.to_le_bytes());
        self.config[0x1c..0x20].copy_from_slice(&((base >> 32) as u32).to_le_bytes());
        self
    }

    /// The BAR memory that holds all of the `len` bytes at bus address `addr`, and
    /// where they are in it.
    fn bar_range(&mut self, addr: u64, len: usize) -> Option<(&mut [u8], std::ops::Range<usize>)> {
        let bars = [
            (self.bar_base, &mut self.bar),
            (self.bar2_base, &mut self.bar2),
        ];
        bars.into_iter().find_map(|(base, mem)| {
            let start = usize::try_from(addr.checked_sub(base)?).ok()?;
            let end = start.checked_add(len)?;
            (end <= mem.len()).then_some((&mut mem[..], start..end))
        })
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
    }
    fn mem_read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        self.mem_accesses.push((addr, len));
        match self.bar_range(addr, len) {
            Some((mem, r)) => mem[r].to_vec(),
            // Nothing answers there: all-ones, as on PCIe.
            None => vec![0xff; len],
        }
    }
    fn mem_write(&mut self, addr: u64, data: &[u8]) {
        self.mem_accesses.push((addr, data.len()));
        if let Some((mem, r)) = self.bar_range(addr, data.len()) {
            mem[r].copy_from_slice(data);
        }
    }
    fn bar(&self, index: usize) -> Option<Bar> {
        match index {
            0 => Some(Bar {
                address: self.bar_base,
                size: self.bar.len() as u64,
                io: self.bar0_io,
                is_64bit: false,
                prefetchable: false,
            }),
            2 if !self.bar2.is_empty() => Some(Bar {
                address: self.bar2_base,
                size: self.bar2.len() as u64,
                io: false,
                is_64bit: true,
                prefetchable: true,
            }),
            _ => None,
        }
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
