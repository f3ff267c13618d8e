//! What real requesters and completers must do with lengths: split a DMA transfer into
//! requests that obey Max Read Request Size / Max Payload Size and never cross a 4 KiB
//! boundary, and split a read's data into completions at the Read Completion Boundary.

use core::fmt;

use thiserror::Error;

use crate::byte_enables::DwSpan;
use crate::repr::{MemRead, MemWrite};
use crate::types::{Bdf, Tag};

/// A power-of-two size limit in bytes, 128..=4096: Max Payload Size or Max Read Request Size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MaxSize(u16);

impl MaxSize {
    pub const B128: MaxSize = MaxSize(128);
    pub const B256: MaxSize = MaxSize(256);
    pub const B512: MaxSize = MaxSize(512);
    pub const B4096: MaxSize = MaxSize(4096);

    /// `None` unless `bytes` is 128, 256, 512, 1024, 2048 or 4096.
    pub const fn new(bytes: u16) -> Option<MaxSize> {
        if bytes >= 128 && bytes <= 4096 && bytes.is_power_of_two() {
            Some(MaxSize(bytes))
        } else {
            None
        }
    }

    pub const fn bytes(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for MaxSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Read Completion Boundary: 64 or 128 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rcb {
    B64 = 64,
    B128 = 128,
}

impl Rcb {
    pub const fn bytes(self) -> u64 {
        self as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SplitError {
    #[error(
        "transfer of {len} bytes at {address:#x} runs past the end of the 64-bit address space"
    )]
    AddressOverflow { address: u64, len: usize },
}

/// One request of a split transfer: bytes `offset..offset + len` of the transfer,
/// and the request fields that cover them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RequestChunk {
    pub offset: usize,
    pub len: usize,
    pub span: DwSpan,
}

/// Iterator over the requests of one DMA transfer; see [`split_requests`].
#[derive(Clone, Debug)]
pub struct RequestSplitter {
    address: u64,
    offset: usize,
    len: usize,
    max: u64,
}

/// Splits a transfer of `len` bytes at `address` into requests of at most `max`
/// bytes of DW-aligned span (MRRS for reads, MPS for writes), none crossing 4 KiB.
/// A zero-length transfer yields no requests.
pub fn split_requests(
    address: u64,
    len: usize,
    max: MaxSize,
) -> Result<RequestSplitter, SplitError> {
    if len > 0 && address.checked_add(len as u64 - 1).is_none() {
        return Err(SplitError::AddressOverflow { address, len });
    }
    Ok(RequestSplitter {
        address,
        offset: 0,
        len,
        max: max.bytes() as u64,
    })
}

impl Iterator for RequestSplitter {
    type Item = RequestChunk;

    fn next(&mut self) -> Option<RequestChunk> {
        if self.offset >= self.len {
            return None;
        }
        let start = self.address + self.offset as u64;
        let remaining = (self.len - self.offset) as u64;
        // Room until the 4 KiB boundary and until the DW-aligned size limit.
        let to_boundary = 4096 - (start & 0xfff);
        let to_limit = self.max - (start & 3);
        let len = remaining.min(to_boundary).min(to_limit) as usize;
        let chunk = RequestChunk {
            offset: self.offset,
            len,
            span: DwSpan::of(start, len),
        };
        self.offset += len;
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.offset;
        let min = left.div_ceil(self.max as usize);
        (min, None)
    }
}

/// One completion of a read: bytes `offset..offset + len` of the read data, with the
/// completion header values and payload shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CompletionChunk {
    /// Offset of the first data byte from the read's first enabled byte.
    pub offset: usize,
    /// Number of data bytes this completion returns.
    pub len: usize,
    /// Byte Count: the bytes remaining including this completion.
    pub byte_count: u16,
    /// Lower Address: low 7 bits of the address of this completion's first byte.
    pub lower_address: u8,
    /// Payload length in DW.
    pub length_dw: u16,
}

impl CompletionChunk {
    /// Bytes before the data in the first payload DW (the address's low two bits).
    pub const fn lead(&self) -> usize {
        (self.lower_address & 3) as usize
    }

    /// Payload size in bytes.
    pub const fn payload_len(&self) -> usize {
        self.length_dw as usize * 4
    }

    /// Writes the DW-aligned payload for `data` (this chunk's bytes) into `out`, which
    /// must hold `payload_len()` bytes; the lead and tail padding are zero.
    pub fn fill_payload(&self, data: &[u8], out: &mut [u8]) {
        let out = &mut out[..self.payload_len()];
        out.fill(0);
        out[self.lead()..self.lead() + data.len()].copy_from_slice(data);
    }
}

/// Iterator over the completions of one read; see [`split_completions`].
#[derive(Clone, Debug)]
pub struct CompletionSplitter {
    first_byte: u64,
    total: u64,
    done: u64,
    rcb: u64,
    mps: u64,
}

/// Splits the data of a read of `byte_count` bytes (1..=4096) starting at the byte
/// address `first_byte` into completions of at most `mps` payload bytes; every
/// completion but the last ends on an RCB-aligned address.
pub fn split_completions(
    first_byte: u64,
    byte_count: u32,
    rcb: Rcb,
    mps: MaxSize,
) -> CompletionSplitter {
    CompletionSplitter {
        first_byte,
        total: byte_count.clamp(1, 4096) as u64,
        done: 0,
        rcb: rcb.bytes(),
        mps: mps.bytes() as u64,
    }
}

/// The Memory Write Requests that carry `data` to `address` from `requester`: split
/// at `max` (MPS) and 4 KiB by [`split_requests`], each with its DW-aligned payload
/// (zero where the byte enables leave bytes out). `f` gets each request and payload.
pub fn for_each_write(
    requester: Bdf,
    address: u64,
    data: &[u8],
    max: MaxSize,
    mut f: impl FnMut(MemWrite, &[u8]),
) -> Result<(), SplitError> {
    let mut payload = Vec::with_capacity(max.bytes() + 8);
    for c in split_requests(address, data.len(), max)? {
        let lead = ((address + c.offset as u64) & 3) as usize;
        payload.clear();
        payload.resize(c.span.length_dw as usize * 4, 0);
        payload[lead..lead + c.len].copy_from_slice(&data[c.offset..c.offset + c.len]);
        let w = MemWrite {
            requester,
            tag: Tag::wrapping(0),
            address: c.span.dw_address,
            first_be: c.span.first_be,
            last_be: c.span.last_be,
            hint: None,
        };
        f(w, &payload);
    }
    Ok(())
}

/// The completions that answer `read` with `data` (its bytes from the first enabled
/// one, [`read_extent`]'s byte count of them): split at the RCB and MPS by
/// [`split_read_completions`]; `f` gets each chunk and its DW-aligned payload.
pub fn for_each_read_completion(
    read: &MemRead,
    data: &[u8],
    rcb: Rcb,
    mps: MaxSize,
    mut f: impl FnMut(&CompletionChunk, &[u8]),
) {
    // A completion's payload stays within MPS (room for 8 more bytes, as ever): on
    // the stack for the usual sizes (no allocation per read), on the heap for larger
    // ones (a 4 KiB array would cost a 4 KiB memset per read).
    let room = mps.bytes() + 8;
    let mut small = [0u8; 512 + 8];
    let mut large = Vec::new();
    let buf: &mut [u8] = if room <= small.len() {
        &mut small
    } else {
        large.resize(room, 0);
        &mut large
    };
    for c in split_read_completions(read, rcb, mps) {
        let payload = &mut buf[..c.payload_len()];
        c.fill_payload(&data[c.offset..c.offset + c.len], payload);
        f(&c, payload);
    }
}

/// The byte address of the first enabled byte of a read, and its byte count.
pub fn read_extent(read: &MemRead) -> (u64, u32) {
    let (offset, count) =
        crate::byte_enables::enabled_bytes(read.length_dw, read.first_be, read.last_be);
    (read.address + offset as u64, count)
}

/// [`split_completions`] for a Memory Read Request.
pub fn split_read_completions(read: &MemRead, rcb: Rcb, mps: MaxSize) -> CompletionSplitter {
    let (first, count) = read_extent(read);
    split_completions(first, count, rcb, mps)
}

impl Iterator for CompletionSplitter {
    type Item = CompletionChunk;

    fn next(&mut self) -> Option<CompletionChunk> {
        if self.done >= self.total {
            return None;
        }
        // u128: a read in the top page of the address space ends at 2^64.
        let start = self.first_byte as u128 + self.done as u128;
        let end_all = start + (self.total - self.done) as u128;
        let dw_start = start & !3;
        // The furthest RCB boundary that keeps the payload within MPS.
        let limit = (dw_start + self.mps as u128) & !(self.rcb as u128 - 1);
        let end = end_all.min(limit);
        let len = (end - start) as u64;
        let chunk = CompletionChunk {
            offset: self.done as usize,
            len: len as usize,
            byte_count: (self.total - self.done) as u16,
            lower_address: (start & 0x7f) as u8,
            length_dw: (end - dw_start).div_ceil(4) as u16,
        };
        self.done += len;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_respect_limits() {
        for &(addr, len) in &[
            (0x1ffdu64, 9000usize),
            (0, 4096),
            (0xffc, 8),
            (3, 1),
            (0x1000_0000_0ffe, 300),
        ] {
            let chunks: Vec<_> = split_requests(addr, len, MaxSize::B256).unwrap().collect();
            let mut next = 0;
            for c in &chunks {
                assert_eq!(c.offset, next);
                next += c.len;
                let a = addr + c.offset as u64;
                assert!(c.span.length_dw as usize * 4 <= 256);
                assert_eq!(a / 4096, (a + c.len as u64 - 1) / 4096, "crosses 4 KiB");
            }
            assert_eq!(next, len);
        }
        assert_eq!(split_requests(5, 0, MaxSize::B128).unwrap().count(), 0);
        assert!(split_requests(u64::MAX, 2, MaxSize::B128).is_err());
    }

    #[test]
    fn completions_split_at_rcb() {
        // 512 bytes from 0x1010 with RCB 64 and MPS 128: the first ends at 0x1080.
        let chunks: Vec<_> = split_completions(0x1010, 512, Rcb::B64, MaxSize::B128).collect();
        assert_eq!(chunks[0].len, 0x70);
        assert_eq!(chunks[0].byte_count, 512);
        assert_eq!(chunks[0].lower_address, 0x10);
        assert_eq!(chunks[1].lower_address, 0x00);
        assert_eq!(chunks[1].byte_count, 512 - 0x70);
        let total: usize = chunks.iter().map(|c| c.len).sum();
        assert_eq!(total, 512);
        for c in &chunks[..chunks.len() - 1] {
            assert_eq!((0x1010 + c.offset + c.len) % 64, 0);
            assert!(c.payload_len() <= 128);
        }
    }
}
