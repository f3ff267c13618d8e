//! The tether header that follows the Ethernet/802.1Q header.
//!
//! ```text
//!  0      1      2      3
//! +------+------+------+------+
//! |ver|kd|flags | payload len | 0
//! +------+------+------+------+
//! |         epoch             | 4
//! |       peer epoch          | 8
//! |          seq              | 12
//! |          ack              | 16
//! |         tsval             | 20
//! |         tsecr             | 24
//! |   window    | hlen | ewt  | 28
//! |   check (CRC-32C)         | 32
//! +------+------+------+------+
//! ```
//!
//! All fields are big-endian. docs/wire-format.md is the normative description.

use crate::auth::{NONCE_LEN, TAG_LEN};
use crate::error::WireError;

/// Version of the frame format written by this code.
pub const VERSION: u8 = 1;
/// Size of the fixed tether header in bytes.
pub const HEADER_LEN: usize = 36;

mod field {
    pub const VER_KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PAYLOAD_LEN: usize = 2;
    pub const EPOCH: usize = 4;
    pub const PEER_EPOCH: usize = 8;
    pub const SEQ: usize = 12;
    pub const ACK: usize = 16;
    pub const TSVAL: usize = 20;
    pub const TSECR: usize = 24;
    pub const WINDOW: usize = 28;
    pub const HLEN: usize = 30;
    pub const ECHO_WAIT: usize = 31;
    pub const CHECK: usize = 32;
}

/// What a frame carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FrameKind {
    /// TLP records, in sequence.
    Data = 1,
    /// A cumulative acknowledgement with no records.
    Ack = 2,
    /// A negative acknowledgement: `ack` names the sequence number expected next; with
    /// [`flags::GAP_END`], `seq` names the first frame after the gap that the receiver
    /// holds.
    Nak = 3,
    /// A bridge announcing itself and its devices.
    Info = 4,
    /// A management command or its result.
    Ctrl = 5,
}

impl FrameKind {
    /// Every kind, in numeric order.
    pub const ALL: [FrameKind; 5] = [
        FrameKind::Data,
        FrameKind::Ack,
        FrameKind::Nak,
        FrameKind::Info,
        FrameKind::Ctrl,
    ];

    pub const fn from_bits(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::Ack),
            3 => Some(FrameKind::Nak),
            4 => Some(FrameKind::Info),
            5 => Some(FrameKind::Ctrl),
            _ => None,
        }
    }

    /// Whether frames of this kind belong to a session (DATA, ACK, NAK): keyed, they
    /// are sealed with the sender's session key (a nonce and a tag), where INFO and
    /// CTRL carry the group key's tag alone.
    pub const fn is_session(self) -> bool {
        matches!(self, FrameKind::Data | FrameKind::Ack | FrameKind::Nak)
    }

    /// Bytes after the payload of a frame of this kind with the AUTH flag.
    pub const fn auth_trailer_len(self) -> usize {
        if self.is_session() {
            NONCE_LEN + TAG_LEN
        } else {
            TAG_LEN
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::Data => "DATA",
            FrameKind::Ack => "ACK",
            FrameKind::Nak => "NAK",
            FrameKind::Info => "INFO",
            FrameKind::Ctrl => "CTRL",
        }
    }
}

/// Header flag bits.
pub mod flags {
    /// The `ack` field is valid.
    pub const ACK: u8 = 0x01;
    /// The sender starts (or restarts) a session: the receiver resynchronises to `epoch`.
    pub const SYN: u8 = 0x02;
    /// A rate-control probe: the receiver acknowledges it at once.
    pub const PROBE: u8 = 0x04;
    /// An authentication tag follows the payload (the frame's group has a key).
    pub const AUTH: u8 = 0x08;
    /// NAK only: the `seq` field carries the end of the gap, the first sequence number
    /// after `ack` that the receiver already holds, so that the sender need resend only
    /// `ack..seq`. Without it (a peer from before 2026-12-07, or nothing held) `seq` is
    /// 0. Ignored on other kinds; docs/wire-format.md, "ACK and NAK".
    pub const GAP_END: u8 = 0x10;
    /// Bits no version-1 sender sets yet: sent as 0, ignored on receipt.
    pub const RESERVED: u8 = 0xe0;
}

/// The fields of a tether header. `payload_len` and `check` are computed on emit.
///
/// The check is mandatory: a CRC-32C over the Group ID (as a 2-byte pseudo-header),
/// the tether header with the check field zero, and the payload. veth and AF_PACKET
/// give no Ethernet FCS to rely on, and covering the GID keeps a corrupted tag from
/// delivering a frame into another group. A frame with the AUTH flag carries 0
/// instead: its authentication tag covers the same bytes and more.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TetherHeader {
    pub kind: FrameKind,
    pub flags: u8,
    /// The sender's session epoch (INFO: its boot epoch).
    pub epoch: u32,
    /// The receiver's epoch as last seen by the sender; 0 when not known yet.
    pub peer_epoch: u32,
    pub seq: u32,
    /// Cumulative: the next sequence number the sender expects.
    pub ack: u32,
    /// Sender's clock in microseconds.
    pub tsval: u32,
    /// Echo of the peer's latest tsval.
    pub tsecr: u32,
    /// Receive window in frames.
    pub window: u16,
    /// How long the frame whose tsval `tsecr` echoes may have waited at the receiver
    /// before it looked (its loop asleep or descheduled), in [`ECHO_WAIT_UNIT_US`]
    /// units, saturating at 255. 0: not at all, or not known.
    pub echo_wait: u8,
}

/// A parsed tether header with the bytes around it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HeaderView<'a> {
    pub header: TetherHeader,
    /// The payload (`payload length` bytes after the header).
    pub payload: &'a [u8],
    /// The header and payload as received: what the tag covers after the Ethernet
    /// addresses and the Group ID.
    pub covered: &'a [u8],
    /// The authentication tag, when the AUTH flag is set.
    pub tag: Option<&'a [u8; TAG_LEN]>,
    /// A session frame's nonce (before its tag), when the AUTH flag is set.
    pub nonce: Option<&'a [u8; NONCE_LEN]>,
}

/// Microseconds per unit of [`TetherHeader::echo_wait`].
pub const ECHO_WAIT_UNIT_US: u32 = 8;

/// `us` as an `echo_wait` value: whole units rounded up, at most 255.
pub fn echo_wait_units(us: u64) -> u8 {
    us.div_ceil(ECHO_WAIT_UNIT_US as u64).min(255) as u8
}

impl TetherHeader {
    pub fn new(kind: FrameKind) -> TetherHeader {
        TetherHeader {
            kind,
            flags: 0,
            epoch: 0,
            peer_epoch: 0,
            seq: 0,
            ack: 0,
            tsval: 0,
            tsecr: 0,
            window: 0,
            echo_wait: 0,
        }
    }

    pub fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Parses the tether header and payload that start at `bytes[0]` of a frame in
    /// group `gid` (0 when untagged), and the authentication tag after the payload when
    /// the AUTH flag is set (a session frame's nonce before it). Bytes after them
    /// (Ethernet padding) are ignored. Verifies the check; the tag is the receiver's to
    /// verify (it needs the group's key).
    pub fn parse(bytes: &[u8], gid: u16) -> Result<HeaderView<'_>, WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                what: "tether header",
                needed: HEADER_LEN,
                got: bytes.len(),
            });
        }
        let be16 = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let be32 = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = bytes[field::VER_KIND] >> 4;
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let kind_bits = bytes[field::VER_KIND] & 0xf;
        let kind = FrameKind::from_bits(kind_bits).ok_or(WireError::UnknownKind(kind_bits))?;
        let hlen_words = bytes[field::HLEN];
        let hlen = hlen_words as usize * 4;
        if hlen < HEADER_LEN {
            return Err(WireError::BadHeaderLength(hlen_words));
        }
        let payload_len = be16(field::PAYLOAD_LEN) as usize;
        let total = hlen + payload_len;
        if bytes.len() < total {
            return Err(WireError::Truncated {
                what: "tether payload",
                needed: total,
                got: bytes.len(),
            });
        }
        let flags = bytes[field::FLAGS];
        let (nonce, tag) = if flags & flags::AUTH != 0 {
            let n = kind.auth_trailer_len();
            let t = bytes.get(total..total + n).ok_or(WireError::Truncated {
                what: "authentication tag",
                needed: total + n,
                got: bytes.len(),
            })?;
            let (nonce, tag) = t.split_at(n - TAG_LEN);
            (
                <&[u8; NONCE_LEN]>::try_from(nonce).ok(),
                Some(<&[u8; TAG_LEN]>::try_from(tag).expect("TAG_LEN bytes")),
            )
        } else {
            (None, None)
        };
        // A frame with the AUTH flag carries 0: its tag covers all the check would,
        // and more strongly. (A receiver without the group's key refuses it.)
        let carried = be32(field::CHECK);
        let computed = if flags & flags::AUTH != 0 {
            0
        } else {
            frame_check(gid, &bytes[..total])
        };
        if carried != computed {
            return Err(WireError::BadCheck { carried, computed });
        }
        let header = TetherHeader {
            kind,
            flags,
            epoch: be32(field::EPOCH),
            peer_epoch: be32(field::PEER_EPOCH),
            seq: be32(field::SEQ),
            ack: be32(field::ACK),
            tsval: be32(field::TSVAL),
            tsecr: be32(field::TSECR),
            window: be16(field::WINDOW),
            echo_wait: bytes[field::ECHO_WAIT],
        };
        Ok(HeaderView {
            header,
            payload: &bytes[hlen..total],
            covered: &bytes[..total],
            tag,
            nonce,
        })
    }

    /// Writes the header into `buf[..HEADER_LEN]` for a payload of `payload_len` bytes
    /// that the caller has placed at `buf[HEADER_LEN..]`, then the check for group `gid`.
    pub fn emit(&self, buf: &mut [u8], payload_len: usize, gid: u16) -> Result<usize, WireError> {
        let total = HEADER_LEN + payload_len;
        if buf.len() < total || payload_len > u16::MAX as usize {
            return Err(WireError::NoRoom {
                needed: total,
                got: buf.len(),
            });
        }
        buf[field::VER_KIND] = (VERSION << 4) | self.kind as u8;
        buf[field::FLAGS] = self.flags;
        buf[field::PAYLOAD_LEN..field::PAYLOAD_LEN + 2]
            .copy_from_slice(&(payload_len as u16).to_be_bytes());
        for (at, v) in [
            (field::EPOCH, self.epoch),
            (field::PEER_EPOCH, self.peer_epoch),
            (field::SEQ, self.seq),
            (field::ACK, self.ack),
            (field::TSVAL, self.tsval),
            (field::TSECR, self.tsecr),
        ] {
            buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        buf[field::WINDOW..field::WINDOW + 2].copy_from_slice(&self.window.to_be_bytes());
        buf[field::HLEN] = (HEADER_LEN / 4) as u8;
        buf[field::ECHO_WAIT] = self.echo_wait;
        let check = if self.flags & flags::AUTH != 0 {
            // The tag that follows covers the frame instead.
            0
        } else {
            frame_check(gid, &buf[..total])
        };
        buf[field::CHECK..field::CHECK + 4].copy_from_slice(&check.to_be_bytes());
        Ok(total)
    }
}

/// The frame check: CRC-32C (Castagnoli) of the 12-bit Group ID as two big-endian
/// bytes, then the tether header with its check field taken as zero, then the payload.
pub fn frame_check(gid: u16, header_and_payload: &[u8]) -> u32 {
    let b = header_and_payload;
    let crc = crc32c::crc32c(&(gid & 0x0fff).to_be_bytes());
    let crc = crc32c::crc32c_append(crc, &b[..field::CHECK]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &b[field::CHECK + 4..])
}
