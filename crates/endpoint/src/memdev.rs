//! `memdev`: a DMA engine test device. BAR0 holds its registers (and the MSI-X table);
//! BAR2 is its buffer, which the host can also read and write directly. Software sets
//! a source, a destination, a length and an offset in the buffer, rings the doorbell,
//! and gets a completion status and, if asked, an interrupt (MSI-X, MSI or INTx,
//! whichever the host enabled).
//!
//! | BAR0 offset | register | |
//! |---|---|---|
//! | 0x00 | MAGIC | RO `0x74657468` ("teth" little-endian) |
//! | 0x04 | VERSION | RO 1 |
//! | 0x08 | SRC | host address to read from (64-bit, two dwords) |
//! | 0x10 | DST | host address to write to (64-bit) |
//! | 0x18 | LEN | bytes, 1 ..= buffer size |
//! | 0x1c | BUF_OFF | offset in the device buffer |
//! | 0x20 | DOORBELL | write 1 = READ (host SRC -> buffer), 2 = WRITE (buffer -> host DST), 3 = COPY (SRC -> buffer -> DST) |
//! | 0x24 | STATUS | 0 idle, 1 busy, 2 done, 3 error; a write when not busy acknowledges (back to idle, INTx released) |
//! | 0x28 | ERROR | RO 0 none, 1 bad arguments, 2 bus mastering off, 3 DMA failed (status), 4 completion timeout, 5 doorbell while busy |
//! | 0x2c | IRQ | bit 0: interrupt (vector 0) when an operation ends |
//! | 0x30 | DONE | RO operations completed |
//! | 0x34 | BUF_SIZE | RO buffer bytes |

use crate::config::{Bar, ConfigError, ConfigSpace, MsixLayout};
use crate::function::{Device, DeviceIo, DmaError, DmaId};

pub const VENDOR_ID: u16 = 0x1de5;
pub const DEVICE_ID: u16 = 0x0001;
pub const MAGIC: u32 = u32::from_le_bytes(*b"teth");

pub mod regs {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const SRC: u64 = 0x08;
    pub const DST: u64 = 0x10;
    pub const LEN: u64 = 0x18;
    pub const BUF_OFF: u64 = 0x1c;
    pub const DOORBELL: u64 = 0x20;
    pub const STATUS: u64 = 0x24;
    pub const ERROR: u64 = 0x28;
    pub const IRQ: u64 = 0x2c;
    pub const DONE: u64 = 0x30;
    pub const BUF_SIZE: u64 = 0x34;
    /// MSI-X table and PBA, in BAR0.
    pub const MSIX_TABLE: u32 = 0x800;
    pub const MSIX_PBA: u32 = 0xc00;
}

pub mod op {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const COPY: u32 = 3;
}

/// The register writes (offset in BAR 0, value) that start operation `op` (`op::READ`,
/// `WRITE`, `COPY`) on `len` bytes from `src` to `dst`, from the start of the device's
/// buffer, with an interrupt at the end if `irq`: in order, the doorbell last. Every
/// driver of the device, and every test that plays one, writes these.
pub fn start_writes(op: u32, src: u64, dst: u64, len: u32, irq: bool) -> [(u64, u32); 8] {
    [
        (regs::SRC, src as u32),
        (regs::SRC + 4, (src >> 32) as u32),
        (regs::DST, dst as u32),
        (regs::DST + 4, (dst >> 32) as u32),
        (regs::LEN, len),
        (regs::BUF_OFF, 0),
        (regs::IRQ, u32::from(irq)),
        (regs::DOORBELL, op),
    ]
}

pub mod status {
    pub const IDLE: u32 = 0;
    pub const BUSY: u32 = 1;
    pub const DONE: u32 = 2;
    pub const ERROR: u32 = 3;
}

pub mod error {
    pub const NONE: u32 = 0;
    pub const BAD_ARGS: u32 = 1;
    pub const BUS_MASTER: u32 = 2;
    pub const DMA_STATUS: u32 = 3;
    pub const TIMEOUT: u32 = 4;
    pub const BUSY: u32 = 5;
}

/// The configuration space of a memdev with a buffer of `buf_size` bytes (a power of
/// two, at least 4 KiB).
pub fn config_space(buf_size: u64) -> Result<ConfigSpace, ConfigError> {
    ConfigSpace::builder(VENDOR_ID, DEVICE_ID)
        .class(0x05, 0x80, 0x00) // memory controller, other
        .revision(1)
        .interrupt_pin(1)
        .bar(0, Bar::mem32(4096))
        .bar(2, Bar::mem64(buf_size.max(4096)).prefetchable())
        .pcie(256)
        .power_management()
        .msi(1, true)
        .msix(MsixLayout {
            vectors: 4,
            table_bar: 0,
            table_offset: regs::MSIX_TABLE,
            pba_bar: 0,
            pba_offset: regs::MSIX_PBA,
        })
        .build()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Running {
    Idle,
    /// A read into the buffer; for COPY the write follows.
    Reading {
        id: DmaId,
        copy: bool,
    },
}

/// The memdev model.
#[derive(Debug)]
pub struct MemDev {
    buf: Vec<u8>,
    src: u64,
    dst: u64,
    len: u32,
    off: u32,
    irq: u32,
    status: u32,
    error: u32,
    done: u32,
    running: Running,
    /// Operation window (off, len) of the running operation.
    window: (usize, usize),
}

impl MemDev {
    pub fn new(buf_size: usize) -> MemDev {
        MemDev {
            buf: vec![0; buf_size.max(4096).next_power_of_two()],
            src: 0,
            dst: 0,
            len: 0,
            off: 0,
            irq: 0,
            status: status::IDLE,
            error: error::NONE,
            done: 0,
            running: Running::Idle,
            window: (0, 0),
        }
    }

    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    fn reg_read(&self, reg: u64) -> u32 {
        match reg {
            regs::MAGIC => MAGIC,
            regs::VERSION => 1,
            regs::SRC => self.src as u32,
            0x0c => (self.src >> 32) as u32,
            regs::DST => self.dst as u32,
            0x14 => (self.dst >> 32) as u32,
            regs::LEN => self.len,
            regs::BUF_OFF => self.off,
            regs::STATUS => self.status,
            regs::ERROR => self.error,
            regs::IRQ => self.irq,
            regs::DONE => self.done,
            regs::BUF_SIZE => self.buf.len() as u32,
            _ => 0,
        }
    }

    fn reg_write(&mut self, reg: u64, v: u32, io: &mut dyn DeviceIo) {
        match reg {
            regs::SRC => self.src = self.src & !0xffff_ffff | v as u64,
            0x0c => self.src = self.src & 0xffff_ffff | (v as u64) << 32,
            regs::DST => self.dst = self.dst & !0xffff_ffff | v as u64,
            0x14 => self.dst = self.dst & 0xffff_ffff | (v as u64) << 32,
            regs::LEN => self.len = v,
            regs::BUF_OFF => self.off = v,
            regs::IRQ => self.irq = v & 1,
            regs::DOORBELL => self.doorbell(v, io),
            // Acknowledge: a finished operation's status goes back to idle and the
            // INTx line (if that is how it was signalled) is released.
            regs::STATUS if self.running == Running::Idle => {
                self.status = status::IDLE;
                io.set_intx(false);
            }
            _ => {}
        }
    }

    fn finish(&mut self, error: u32, io: &mut dyn DeviceIo) {
        self.running = Running::Idle;
        if error == error::NONE {
            self.status = status::DONE;
            self.done = self.done.wrapping_add(1);
        } else {
            self.status = status::ERROR;
        }
        self.error = error;
        if self.irq & 1 != 0 {
            io.interrupt(0);
        }
    }

    fn doorbell(&mut self, cmd: u32, io: &mut dyn DeviceIo) {
        if self.running != Running::Idle {
            // The running operation goes on; the refused doorbell is visible.
            self.error = error::BUSY;
            return;
        }
        let (off, len) = (self.off as usize, self.len as usize);
        if len == 0 || off.checked_add(len).is_none_or(|end| end > self.buf.len()) {
            return self.finish(error::BAD_ARGS, io);
        }
        self.window = (off, len);
        self.error = error::NONE;
        match cmd {
            op::READ | op::COPY => match io.dma_read(self.src, len) {
                Ok(id) => {
                    self.status = status::BUSY;
                    self.running = Running::Reading {
                        id,
                        copy: cmd == op::COPY,
                    };
                }
                Err(e) => self.finish(dma_error(e), io),
            },
            op::WRITE => {
                let r = io.dma_write(self.dst, &self.buf[off..off + len]);
                self.finish(r.err().map_or(error::NONE, dma_error), io);
            }
            _ => self.finish(error::BAD_ARGS, io),
        }
    }
}

fn dma_error(e: DmaError) -> u32 {
    match e {
        DmaError::BusMasterDisabled => error::BUS_MASTER,
        DmaError::Timeout => error::TIMEOUT,
        DmaError::TooLong(_) | DmaError::AddressOverflow => error::BAD_ARGS,
        DmaError::Status(_) | DmaError::BadCompletion => error::DMA_STATUS,
    }
}

impl Device for MemDev {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8], _io: &mut dyn DeviceIo) {
        match bar {
            0 => {
                for (k, b) in data.iter_mut().enumerate() {
                    let at = offset + k as u64;
                    *b = self.reg_read(at & !3).to_le_bytes()[(at & 3) as usize];
                }
            }
            2 => {
                let at = offset as usize;
                if let Some(src) = self.buf.get(at..at + data.len()) {
                    data.copy_from_slice(src);
                }
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8], io: &mut dyn DeviceIo) {
        match bar {
            0 => {
                // Registers take whole dwords; partial writes merge into the current value.
                let mut at = offset;
                let mut rest = data;
                while !rest.is_empty() {
                    let reg = at & !3;
                    let lead = (at & 3) as usize;
                    let n = (4 - lead).min(rest.len());
                    let mut word = self.reg_read(reg).to_le_bytes();
                    word[lead..lead + n].copy_from_slice(&rest[..n]);
                    self.reg_write(reg, u32::from_le_bytes(word), io);
                    at += n as u64;
                    rest = &rest[n..];
                }
            }
            2 => {
                let at = offset as usize;
                if let Some(dst) = self.buf.get_mut(at..at + data.len()) {
                    dst.copy_from_slice(data);
                }
            }
            _ => {}
        }
    }

    fn dma_read_done(
        &mut self,
        id: DmaId,
        result: Result<Vec<u8>, DmaError>,
        io: &mut dyn DeviceIo,
    ) {
        let Running::Reading { id: running, copy } = self.running else {
            return;
        };
        if running != id {
            return;
        }
        let (off, len) = self.window;
        match result {
            Err(e) => self.finish(dma_error(e), io),
            Ok(data) => {
                self.buf[off..off + len].copy_from_slice(&data);
                if copy {
                    let r = io.dma_write(self.dst, &self.buf[off..off + len]);
                    self.finish(r.err().map_or(error::NONE, dma_error), io);
                } else {
                    self.finish(error::NONE, io);
                }
            }
        }
    }

    fn reset(&mut self) {
        let size = self.buf.len();
        *self = MemDev::new(size);
    }
}
