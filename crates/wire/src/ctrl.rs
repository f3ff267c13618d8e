//! CTRL frames: management commands (set a device's group, reset it) and their results.
//!
//! ```text
//!  0: op | status | gid (u16)
//!  4: request id (u32)
//!  8: target bridge id (u64)
//! 16: slot | reserved (3 bytes)
//! 20: signature block, when present (SET_GROUP and RESET of a signing manager):
//!     key id (8 bytes) | Ed25519 signature (64 bytes)
//! ```

use crate::error::WireError;

pub const CTRL_LEN: usize = 20;
/// Bytes of the signature block that may follow the CTRL body: the signing key's id
/// and the Ed25519 signature.
pub const SIGNATURE_BLOCK_LEN: usize = 8 + 64;

/// A CTRL body's signature block (docs/wire-format.md, "Signed management").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CtrlSignature<'a> {
    /// The first 8 bytes of SHA-256 of the signer's public key.
    pub key_id: &'a [u8; 8],
    pub signature: &'a [u8; 64],
}

/// The signature block after the CTRL body in `payload`, if there is one.
pub fn ctrl_signature(payload: &[u8]) -> Option<CtrlSignature<'_>> {
    let block = payload.get(CTRL_LEN..CTRL_LEN + SIGNATURE_BLOCK_LEN)?;
    let (id, sig) = block.split_at(8);
    Some(CtrlSignature {
        key_id: id.try_into().ok()?,
        signature: sig.try_into().ok()?,
    })
}

/// What a manager signs for a CTRL frame: a label, the destination and source MAC
/// addresses, the group the frame travels in, its freshness counter (the header's
/// `seq` and `ack`) and the CTRL body's 20 bytes.
pub fn ctrl_signed_message(
    dst: [u8; 6],
    src: [u8; 6],
    gid: u16,
    counter: u64,
    body: &[u8; CTRL_LEN],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"tether 2026-12-07 signed CTRL v1");
    m.extend_from_slice(&dst);
    m.extend_from_slice(&src);
    m.extend_from_slice(&(gid & 0x0fff).to_be_bytes());
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CtrlOp {
    /// Move the device in `slot` of bridge `target` to group `gid`.
    SetGroup = 1,
    /// Reset the device in `slot` (function-level reset).
    Reset = 2,
    /// The answer to the request with the same `request_id`.
    Result = 3,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CtrlStatus {
    Ok = 0,
    NoSuchDevice = 1,
    BadGroup = 2,
    Refused = 3,
}

impl CtrlOp {
    pub const fn from_bits(b: u8) -> Option<CtrlOp> {
        match b {
            1 => Some(CtrlOp::SetGroup),
            2 => Some(CtrlOp::Reset),
            3 => Some(CtrlOp::Result),
            _ => None,
        }
    }
}

impl CtrlStatus {
    pub const fn from_bits(b: u8) -> Option<CtrlStatus> {
        match b {
            0 => Some(CtrlStatus::Ok),
            1 => Some(CtrlStatus::NoSuchDevice),
            2 => Some(CtrlStatus::BadGroup),
            3 => Some(CtrlStatus::Refused),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CtrlRepr {
    pub op: CtrlOp,
    pub status: CtrlStatus,
    pub gid: u16,
    pub request_id: u32,
    pub target: u64,
    pub slot: u8,
}

impl CtrlRepr {
    pub fn parse(payload: &[u8]) -> Result<CtrlRepr, WireError> {
        if payload.len() < CTRL_LEN {
            return Err(WireError::Truncated {
                what: "CTRL payload",
                needed: CTRL_LEN,
                got: payload.len(),
            });
        }
        let b = payload;
        let op = CtrlOp::from_bits(b[0]).ok_or(WireError::UnknownCtrlOp(b[0]))?;
        let status = CtrlStatus::from_bits(b[1]).ok_or(WireError::UnknownCtrlStatus(b[1]))?;
        let gid = u16::from_be_bytes([b[2], b[3]]);
        if op == CtrlOp::SetGroup && !crate::valid_gid(gid) {
            return Err(WireError::BadGroup(gid));
        }
        let mut target = [0u8; 8];
        target.copy_from_slice(&b[8..16]);
        Ok(CtrlRepr {
            op,
            status,
            gid,
            request_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            target: u64::from_be_bytes(target),
            slot: b[16],
        })
    }

    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        if buf.len() < CTRL_LEN {
            return Err(WireError::NoRoom {
                needed: CTRL_LEN,
                got: buf.len(),
            });
        }
        if self.op == CtrlOp::SetGroup && !crate::valid_gid(self.gid) {
            return Err(WireError::BadGroup(self.gid));
        }
        let b = &mut buf[..CTRL_LEN];
        b[0] = self.op as u8;
        b[1] = self.status as u8;
        b[2..4].copy_from_slice(&self.gid.to_be_bytes());
        b[4..8].copy_from_slice(&self.request_id.to_be_bytes());
        b[8..16].copy_from_slice(&self.target.to_be_bytes());
        b[16] = self.slot;
        b[17..20].fill(0);
        Ok(CTRL_LEN)
    }
}
