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

use super::{ChainLens, Piece, VirtioDevice};

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

    /// The disk offset of an OUT request's data, checked once (read-only disk, range).
    fn out_start(&mut self, job: &mut BlkJob) -> Result<u64, u8> {
        if let Some(start) = job.out_start {
            return Ok(start);
        }
        if self.backend.read_only() {
            return Err(status::IOERR);
        }
        let data_len = job.lens.readable - HEADER_LEN as u64;
        let start = self.range(job.sector(), data_len).ok_or(status::IOERR)?;
        job.out_start = Some(start);
        Ok(start)
    }

    /// What to send once every readable byte was consumed.
    fn plan(&mut self, job: &mut BlkJob) -> Result<Phase, u8> {
        if job.lens.readable < HEADER_LEN as u64 {
            return Err(status::IOERR);
        }
        if let Some(s) = job.error {
            return Err(s);
        }
        let room = job.room();
        match job.kind() {
            request_type::IN => {
                let start = self.range(job.sector(), room).ok_or(status::IOERR)?;
                Ok(Phase::Data {
                    start,
                    next: 0,
                    end: room,
                })
            }
            request_type::OUT => {
                self.out_start(job)?;
                self.stats.writes += 1;
                self.stats.written_bytes += job.lens.readable - HEADER_LEN as u64;
                Ok(Phase::Status(status::OK))
            }
            request_type::FLUSH => {
                self.backend.flush().map_err(|_| status::IOERR)?;
                self.stats.flushes += 1;
                Ok(Phase::Status(status::OK))
            }
            request_type::GET_ID => {
                self.stats.get_ids += 1;
                Ok(Phase::Id {
                    next: 0,
                    end: room.min(ID_LEN as u64) as usize,
                })
            }
            _ => Err(status::UNSUPP),
        }
    }

    /// The request failed with status `s`: counted, and only the status goes back.
    fn fail(&mut self, s: u8) -> Phase {
        if s == status::UNSUPP {
            self.stats.unsupported += 1;
        } else {
            self.stats.io_errors += 1;
        }
        Phase::Status(s)
    }
}

/// Where a block request's reply stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Readable bytes are still coming.
    Reading,
    /// IN: disk bytes `start + next..start + end` go to writable offsets `next..end`.
    Data {
        start: u64,
        next: u64,
        end: u64,
    },
    /// GET_ID: serial bytes `next..end`.
    Id {
        next: usize,
        end: usize,
    },
    /// Only the status byte (at the end of the writable area) is left.
    Status(u8),
    Done,
}

/// A block request in progress.
#[derive(Clone, Debug)]
pub struct BlkJob {
    lens: ChainLens,
    header: [u8; HEADER_LEN],
    /// An OUT request's data start on the disk, once checked.
    out_start: Option<u64>,
    /// The request already failed (its data is ignored).
    error: Option<u8>,
    phase: Phase,
    used_len: u32,
}

impl BlkJob {
    fn kind(&self) -> u32 {
        u32::from_le_bytes(self.header[0..4].try_into().expect("4 bytes"))
    }

    fn sector(&self) -> u64 {
        u64::from_le_bytes(self.header[8..16].try_into().expect("8 bytes"))
    }

    /// Writable bytes before the status byte (the last one).
    fn room(&self) -> u64 {
        self.lens.writable.saturating_sub(1)
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

    type Job = BlkJob;

    fn begin(&mut self, _queue: u16, lens: ChainLens) -> BlkJob {
        BlkJob {
            lens,
            header: [0; HEADER_LEN],
            out_start: None,
            error: None,
            phase: Phase::Reading,
            used_len: 0,
        }
    }

    fn consume(&mut self, job: &mut BlkJob, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        let h = HEADER_LEN as u64;
        if offset < h {
            let n = (end.min(h) - offset) as usize;
            job.header[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
        }
        // Bytes past the header are an OUT request's data; the header came first.
        if end <= h || job.error.is_some() || job.kind() != request_type::OUT {
            return;
        }
        let from = offset.max(h);
        let payload = &data[(from - offset) as usize..];
        let written = self.out_start(job).and_then(|start| {
            self.backend
                .write_at(start + (from - h), payload)
                .map_err(|_| status::IOERR)
        });
        if let Err(s) = written {
            job.error = Some(s);
        }
    }

    fn produce(&mut self, job: &mut BlkJob, buf: &mut [u8]) -> Option<Piece> {
        if job.phase == Phase::Reading {
            job.phase = if job.lens.writable == 0 {
                // No room even for the status: nothing can be reported.
                self.stats.io_errors += 1;
                Phase::Done
            } else {
                self.plan(job).unwrap_or_else(|s| self.fail(s))
            };
        }
        if buf.is_empty() {
            // Asked whether more is coming.
            return (job.phase != Phase::Done).then_some(Piece { offset: 0, len: 0 });
        }
        let room = job.room();
        match job.phase {
            Phase::Reading | Phase::Done => None,
            Phase::Data { start, next, end } if next < end => {
                let n = (end - next).min(buf.len() as u64) as usize;
                if self.backend.read_at(start + next, &mut buf[..n]).is_err() {
                    job.phase = self.fail(status::IOERR);
                    return self.produce(job, buf);
                }
                job.phase = Phase::Data {
                    start,
                    next: next + n as u64,
                    end,
                };
                Some(Piece {
                    offset: next,
                    len: n,
                })
            }
            Phase::Data { end, .. } => {
                self.stats.reads += 1;
                self.stats.read_bytes += end;
                job.used_len = end as u32;
                job.phase = Phase::Status(status::OK);
                self.produce(job, buf)
            }
            Phase::Id { next, end } if next < end => {
                let n = (end - next).min(buf.len());
                buf[..n].copy_from_slice(&self.serial[next..next + n]);
                job.phase = Phase::Id {
                    next: next + n,
                    end,
                };
                Some(Piece {
                    offset: next as u64,
                    len: n,
                })
            }
            Phase::Id { end, .. } => {
                job.used_len = end as u32;
                job.phase = Phase::Status(status::OK);
                self.produce(job, buf)
            }
            Phase::Status(s) => {
                buf[0] = s;
                if s != status::OK {
                    // A failed request reports the status byte only.
                    job.used_len = 0;
                }
                job.used_len += 1;
                job.phase = Phase::Done;
                Some(Piece {
                    offset: room,
                    len: 1,
                })
            }
        }
    }

    fn finish(&mut self, job: BlkJob) -> u32 {
        job.used_len
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
