//! virtio-blk (virtio 1.x, 5.2): a block device on a [`BlockBackend`] of the box, a
//! file or memory. One request queue; read, write, flush and get-id; 512-byte
//! sectors.
//!
//! | device configuration | |
//! |---|---|
//! | 0x00 capacity | 512-byte sectors |
//! | 0x0c seg_max | [`SEG_MAX`] buffers per request |
//! | 0x14 blk_size | 512 |
//! | 0x22 num_queues | 1 |

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::config::{ConfigError, ConfigSpace};

use super::{Reply, Request, VirtioDevice};

/// The virtio device type of a block device.
pub const DEVICE_TYPE: u16 = 2;
pub const SECTOR: u64 = 512;
/// Buffers per request the driver may use (data; the header and status come on top).
pub const SEG_MAX: u32 = 128;
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the device configuration (up to write_zeroes_may_unmap and its padding).
pub const CONFIG_LEN: u32 = 0x3c;
/// Bytes of the request header (type, reserved, sector).
pub const HEADER_LEN: usize = 16;
/// Bytes of the GET_ID answer.
pub const ID_LEN: usize = 20;

pub mod feature {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
}

pub mod request_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Storage behind a block device.
pub trait BlockBackend: Send {
    /// Bytes of storage.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A file (or block device) of the box.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
    read_only: bool,
}

impl FileBackend {
    /// Opens `path` read-write (or read-only); its size is the disk's.
    pub fn open(path: &std::path::Path, read_only: bool) -> io::Result<FileBackend> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(FileBackend {
            file,
            len,
            read_only,
        })
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A disk in memory.
#[derive(Clone, Debug)]
pub struct MemBackend(pub Vec<u8>);

impl BlockBackend for MemBackend {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counters of a block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BlkStats {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub flushes: u64,
    pub get_ids: u64,
    /// Requests answered IOERR: out of range, malformed, or the backend failed.
    pub io_errors: u64,
    /// Requests of a type this device does not serve (UNSUPP).
    pub unsupported: u64,
}

/// The virtio-blk device model.
pub struct VirtioBlk<B: BlockBackend> {
    backend: B,
    serial: [u8; ID_LEN],
    stats: BlkStats,
}

impl<B: BlockBackend> VirtioBlk<B> {
    /// A device on `backend`; `serial` (at most 20 bytes are used) answers GET_ID.
    pub fn new(backend: B, serial: &str) -> VirtioBlk<B> {
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        VirtioBlk {
            backend,
            serial: id,
            stats: BlkStats::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.backend.len() / SECTOR
    }

    /// The byte range of `len` bytes at `sector`, when it is whole sectors on the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (len.is_multiple_of(SECTOR) && end <= self.capacity_sectors() * SECTOR).then_some(start)
    }

    fn serve(&mut self, request: Request<'_>) -> Result<Reply, u8> {
        let r = request.readable;
        if r.len() < HEADER_LEN {
            return Err(status::IOERR);
        }
        let kind = u32::from_le_bytes(r[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
        // The last writable byte is the status; the rest of the writable area is data.
        let room = request.writable_len - 1;
        match kind {
            request_type::IN => {
                let start = self.range(sector, room).ok_or(status::IOERR)?;
                let mut data = vec![0; room as usize];
                self.backend
                    .read_at(start, &mut data)
                    .map_err(|_| status::IOERR)?;
                self.stats.reads += 1;
                self.stats.read_bytes += room;
                Ok(Reply {
                    writes: vec![(0, data), (room, vec![status::OK])],
                    used_len: room as u32 + 1,
                })
            }
            request_type::OUT => {
                let data = &r[HEADER_LEN..];
                if self.backend.read_only() {
                    return Err(status::IOERR);
                }
                let start = self.range(sector, data.len() as u64).ok_or(status::IOERR)?;
                self.backend
                    .write_at(start, data)
                    .map_err(|_| status::IOERR)?;
                self.stats.writes += 1;
                self.stats.written_bytes += data.len() as u64;
                Ok(status_only(room, status::OK))
            }
            request_type::FLUSH => {
                self.backend.flush().map_err(|_| status::IOERR)?;
                self.stats.flushes += 1;
                Ok(status_only(room, status::OK))
            }
            request_type::GET_ID => {
                let n = (room as usize).min(ID_LEN);
                self.stats.get_ids += 1;
                Ok(Reply {
                    writes: vec![(0, self.serial[..n].to_vec()), (room, vec![status::OK])],
                    used_len: n as u32 + 1,
                })
            }
            _ => Err(status::UNSUPP),
        }
    }
}

/// A reply that only sets the status byte at the end of the writable area.
fn status_only(room: u64, s: u8) -> Reply {
    Reply {
        writes: vec![(room, vec![s])],
        used_len: 1,
    }
}

/// The configuration space of a virtio-blk function (mass storage, SCSI class as
/// QEMU's).
pub fn config_space() -> Result<ConfigSpace, ConfigError> {
    super::pci::config_space(DEVICE_TYPE, (0x01, 0x00, 0x00), 1, CONFIG_LEN)
}

impl<B: BlockBackend> VirtioDevice for VirtioBlk<B> {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let ro = if self.backend.read_only() {
            feature::RO
        } else {
            0
        };
        feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH | ro
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN as usize];
        c[0x00..0x08].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        c[0x0c..0x10].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[0x14..0x18].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c[0x22..0x24].copy_from_slice(&1u16.to_le_bytes());
        let o = offset as usize;
        if let Some(src) = c.get(o..o + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn process(&mut self, _queue: u16, request: Request<'_>) -> Reply {
        if request.writable_len == 0 {
            // No room even for the status: nothing can be reported.
            self.stats.io_errors += 1;
            return Reply::default();
        }
        self.serve(request).unwrap_or_else(|s| {
            if s == status::UNSUPP {
                self.stats.unsupported += 1;
            } else {
                self.stats.io_errors += 1;
            }
            status_only(request.writable_len - 1, s)
        })
    }

    fn reset(&mut self) {}

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        vec![
            ("blk_reads", s.reads),
            ("blk_read_bytes", s.read_bytes),
            ("blk_writes", s.writes),
            ("blk_written_bytes", s.written_bytes),
            ("blk_flushes", s.flushes),
            ("blk_get_ids", s.get_ids),
            ("blk_io_errors", s.io_errors),
            ("blk_unsupported", s.unsupported),
        ]
    }
}
