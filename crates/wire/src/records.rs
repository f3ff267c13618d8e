//! Length-prefixed records in a DATA frame's payload.
//!
//! ```text
//! +------+------+------+------+--------------------+
//! | length (u16)| type | rsvd | body (length bytes) |
//! +------+------+------+------+--------------------+
//! ```

use crate::error::WireError;

/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 4;

/// Record types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RecordType {
    /// One whole TLP (header, data, digest).
    Tlp = 1,
}

impl RecordType {
    pub const fn from_bits(b: u8) -> Option<RecordType> {
        match b {
            1 => Some(RecordType::Tlp),
            _ => None,
        }
    }
}

/// One record: its type and body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Record<'a> {
    pub kind: RecordType,
    pub body: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record as a TLP (only TLP records exist in v1).
    pub fn tlp(&self) -> Result<tlp::Tlp<'a>, WireError> {
        Ok(tlp::Tlp::parse(self.body)?)
    }
}

/// Iterator over the records of a DATA payload. It stops at the first malformed
/// record, yielding the error once.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    pub fn new(payload: &'a [u8]) -> Records<'a> {
        Records {
            rest: payload,
            failed: false,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let fail = |this: &mut Self, e| {
            this.failed = true;
            Some(Err(e))
        };
        if self.rest.len() < RECORD_HEADER_LEN {
            let got = self.rest.len();
            return fail(
                self,
                WireError::Truncated {
                    what: "record header",
                    needed: RECORD_HEADER_LEN,
                    got,
                },
            );
        }
        let len = u16::from_be_bytes([self.rest[0], self.rest[1]]) as usize;
        let type_bits = self.rest[2];
        let Some(kind) = RecordType::from_bits(type_bits) else {
            return fail(self, WireError::UnknownRecord(type_bits));
        };
        let end = RECORD_HEADER_LEN + len;
        if self.rest.len() < end {
            let got = self.rest.len();
            return fail(
                self,
                WireError::Truncated {
                    what: "record body",
                    needed: end,
                    got,
                },
            );
        }
        let body = &self.rest[RECORD_HEADER_LEN..end];
        self.rest = &self.rest[end..];
        Some(Ok(Record { kind, body }))
    }
}

/// Writes a record header for a body of `len` bytes at the start of `buf`.
pub(crate) fn emit_record_header(buf: &mut [u8], kind: RecordType, len: usize) {
    buf[0..2].copy_from_slice(&(len as u16).to_be_bytes());
    buf[2] = kind as u8;
    buf[3] = 0;
}
