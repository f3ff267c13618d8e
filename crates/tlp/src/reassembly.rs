//! Reassembly of the completions of one Memory Read into the requester's buffer.
//!
//! A completer returns a read's data in address order, possibly split at RCB-aligned
//! addresses into several completions. Each completion says how many bytes remain
//! (Byte Count) and where its data starts (Lower Address). This checks both against
//! what has arrived so far, so missing, repeated or extra data is caught.

use thiserror::Error;

use crate::repr::{Completion, MemRead};
use crate::split::{read_extent, Rcb};
use crate::types::CompletionStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ReassemblyError {
    #[error("completion with status {0:?}")]
    Status(CompletionStatus),
    #[error("completion for a read that is already complete")]
    AlreadyComplete,
    #[error("byte count {got} but {expected} bytes remain")]
    ByteCountMismatch { expected: u32, got: u32 },
    #[error("lower address {got:#x} but the next byte is at {expected:#x}")]
    LowerAddressMismatch { expected: u8, got: u8 },
    #[error("payload of {got} bytes does not fit: expected {expected}")]
    PayloadLength { expected: usize, got: usize },
    #[error("partial completion ends at {end:#x}, not on a read completion boundary")]
    RcbViolation { end: u64 },
    #[error("read incomplete: {received} of {total} bytes arrived")]
    Missing { received: u32, total: u32 },
    #[error("output buffer of {got} bytes is smaller than the {needed}-byte read")]
    OutputTooSmall { needed: usize, got: usize },
}

/// Whether the read has all its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Partial { received: u32, total: u32 },
    Complete,
}

/// Collects the completions of one read.
#[derive(Clone, Debug)]
pub struct ReadReassembly {
    first_byte: u64,
    total: u32,
    received: u32,
    rcb: u64,
    failed: bool,
}

impl ReadReassembly {
    /// Expects the data of `read`; the output buffer must hold [`ReadReassembly::total`] bytes.
    pub fn new(read: &MemRead, rcb: Rcb) -> ReadReassembly {
        let (first_byte, total) = read_extent(read);
        ReadReassembly {
            first_byte,
            total,
            received: 0,
            rcb: rcb.bytes(),
            failed: false,
        }
    }

    /// Bytes the read returns (its byte count; 1 for a zero-length read).
    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.total || self.failed
    }

    /// Takes one completion and copies its data into `out[offset..]`, where offset is
    /// the bytes received so far. After an error status the read is over (no more
    /// completions are expected); other errors leave the state unchanged.
    pub fn accept(
        &mut self,
        cpl: &Completion,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Progress, ReassemblyError> {
        if self.is_complete() {
            return Err(ReassemblyError::AlreadyComplete);
        }
        if out.len() < self.total as usize {
            return Err(ReassemblyError::OutputTooSmall {
                needed: self.total as usize,
                got: out.len(),
            });
        }
        if cpl.status != CompletionStatus::Success {
            self.failed = true;
            return Err(ReassemblyError::Status(cpl.status));
        }
        let remaining = self.total - self.received;
        if cpl.byte_count as u32 != remaining {
            return Err(ReassemblyError::ByteCountMismatch {
                expected: remaining,
                got: cpl.byte_count as u32,
            });
        }
        let address = self.first_byte.wrapping_add(self.received as u64);
        let expected_la = (address & 0x7f) as u8;
        if cpl.lower_address != expected_la {
            return Err(ReassemblyError::LowerAddressMismatch {
                expected: expected_la,
                got: cpl.lower_address,
            });
        }
        let lead = (address & 3) as usize;
        let final_len = (lead + remaining as usize).div_ceil(4) * 4;
        let take = if payload.len() >= final_len {
            if payload.len() != final_len {
                return Err(ReassemblyError::PayloadLength {
                    expected: final_len,
                    got: payload.len(),
                });
            }
            remaining as usize
        } else {
            if payload.len() <= lead || !payload.len().is_multiple_of(4) {
                return Err(ReassemblyError::PayloadLength {
                    expected: final_len,
                    got: payload.len(),
                });
            }
            let take = payload.len() - lead;
            let end = address.wrapping_add(take as u64);
            if !end.is_multiple_of(self.rcb) {
                return Err(ReassemblyError::RcbViolation { end });
            }
            take
        };
        let at = self.received as usize;
        out[at..at + take].copy_from_slice(&payload[lead..lead + take]);
        self.received += take as u32;
        Ok(if self.received == self.total {
            Progress::Complete
        } else {
            Progress::Partial {
                received: self.received,
                total: self.total,
            }
        })
    }

    /// Ok when every byte arrived; `Missing` otherwise (call it on completion timeout).
    pub fn finish(&self) -> Result<(), ReassemblyError> {
        if self.received == self.total {
            Ok(())
        } else {
            Err(ReassemblyError::Missing {
                received: self.received,
                total: self.total,
            })
        }
    }
}
