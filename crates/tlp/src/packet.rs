//! A zero-copy view of a TLP in a byte buffer, with field accessors (smoltcp style).
//!
//! Bit layout (PCIe Base Specification r4.0 and later, section 2.2):
//!
//! ```text
//! byte 0: Fmt[2:0] | Type[4:0]
//! byte 1: T9 | TC[2:0] | T8 | Attr[2] | LN | TH
//! byte 2: TD | EP | Attr[1:0] | AT[1:0] | Length[9:8]
//! byte 3: Length[7:0]
//! bytes 4..: type-specific (requester/completer ID, tag, byte enables, address, ...)
//! ```

use crate::error::ParseError;
use crate::types::{Attributes, Bdf, Fmt, Tag};

/// Byte offsets of header fields.
pub(crate) mod field {
    pub const FMT_TYPE: usize = 0;
    pub const TC: usize = 1;
    pub const TD_EP: usize = 2;
    pub const LENGTH_HI: usize = 2;
    pub const LENGTH_LO: usize = 3;
    pub const ID: usize = 4;
    pub const TAG: usize = 6;
    pub const BE: usize = 7;
    pub const DW2: usize = 8;
    pub const DW3: usize = 12;
}

/// The Type field value of every decodable TLP type (the message routing bits masked off).
pub(crate) mod type_code {
    pub const MEM: u8 = 0b0_0000;
    pub const MEM_LOCKED: u8 = 0b0_0001;
    pub const IO: u8 = 0b0_0010;
    pub const CFG0: u8 = 0b0_0100;
    pub const CFG1: u8 = 0b0_0101;
    pub const CPL: u8 = 0b0_1010;
    pub const CPL_LOCKED: u8 = 0b0_1011;
    pub const FETCH_ADD: u8 = 0b0_1100;
    pub const SWAP: u8 = 0b0_1101;
    pub const CAS: u8 = 0b0_1110;
    pub const MSG_MASK: u8 = 0b1_1000;
    pub const MSG: u8 = 0b1_0000;
}

/// Decodes the Length field: 1..=1024 DW, where the encoding 0 means 1024.
pub const fn decode_length(raw: u16) -> u16 {
    if raw == 0 {
        1024
    } else {
        raw
    }
}

/// A read-only or read-write view of one TLP.
#[derive(Debug, Clone, Copy)]
pub struct TlpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TlpPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic on a short buffer;
    /// use [`TlpPacket::new_checked`] for untrusted input.
    pub const fn new_unchecked(buffer: T) -> TlpPacket<T> {
        TlpPacket { buffer }
    }

    /// Wraps a buffer after checking that its size is exactly what the header describes
    /// (header, Length DWs of data when Fmt says so, and the digest when TD is set).
    pub fn new_checked(buffer: T) -> Result<TlpPacket<T>, ParseError> {
        let packet = TlpPacket::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The size check behind [`TlpPacket::new_checked`].
    pub fn check_len(&self) -> Result<(), ParseError> {
        crate::words::HeaderWords::read(self.buffer.as_ref()).map(|_| ())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref()[i]
    }

    fn be16(&self, i: usize) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[i], d[i + 1]])
    }

    fn be32(&self, i: usize) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
    }

    /// Raw Fmt bits.
    pub fn fmt_bits(&self) -> u8 {
        self.byte(field::FMT_TYPE) >> 5
    }

    pub fn fmt(&self) -> Option<Fmt> {
        Fmt::from_bits(self.fmt_bits())
    }

    /// Raw Type field (5 bits).
    pub fn type_bits(&self) -> u8 {
        self.byte(field::FMT_TYPE) & 0x1f
    }

    pub fn traffic_class(&self) -> u8 {
        (self.byte(field::TC) >> 4) & 0x7
    }

    pub fn attributes(&self) -> Attributes {
        Attributes {
            relaxed_ordering: self.byte(field::TD_EP) & 0x20 != 0,
            no_snoop: self.byte(field::TD_EP) & 0x10 != 0,
            id_based_ordering: self.byte(field::TC) & 0x04 != 0,
        }
    }

    /// LN: Lightweight Notification.
    pub fn ln(&self) -> bool {
        self.byte(field::TC) & 0x02 != 0
    }

    /// TH: TLP Processing Hints present.
    pub fn th(&self) -> bool {
        self.byte(field::TC) & 0x01 != 0
    }

    /// TD: a TLP digest (ECRC) follows the data.
    pub fn td(&self) -> bool {
        self.byte(field::TD_EP) & 0x80 != 0
    }

    /// EP: the data is poisoned.
    pub fn ep(&self) -> bool {
        self.byte(field::TD_EP) & 0x40 != 0
    }

    /// AT: Address Type.
    pub fn address_type(&self) -> u8 {
        (self.byte(field::TD_EP) >> 2) & 0x3
    }

    /// The raw 10-bit Length field.
    pub fn length_field(&self) -> u16 {
        (((self.byte(field::LENGTH_HI) & 0x3) as u16) << 8) | self.byte(field::LENGTH_LO) as u16
    }

    /// Length in DW, with 0 decoded as 1024.
    pub fn length_dw(&self) -> u16 {
        decode_length(self.length_field())
    }

    /// Requester ID of a request, completer ID of a completion.
    pub fn id(&self) -> Bdf {
        Bdf::from_u16(self.be16(field::ID))
    }

    /// T9 and T8 from DW0 joined with the 8-bit tag at `at`.
    fn tag_at(&self, at: usize) -> Tag {
        let b1 = self.byte(field::TC);
        let t9 = ((b1 >> 7) & 1) as u16;
        let t8 = ((b1 >> 3) & 1) as u16;
        Tag::wrapping((t9 << 9) | (t8 << 8) | self.byte(at) as u16)
    }

    /// Tag of a request (byte 6 plus T9/T8).
    pub fn request_tag(&self) -> Tag {
        self.tag_at(field::TAG)
    }

    /// The raw byte 6: the tag, or a Memory Write's Steering Tag when TH is set.
    pub fn byte6(&self) -> u8 {
        self.byte(field::TAG)
    }

    /// The raw byte 7: byte enables, message code, or a Steering Tag.
    pub fn byte7(&self) -> u8 {
        self.byte(field::BE)
    }

    pub fn first_be(&self) -> u8 {
        self.byte(field::BE) & 0xf
    }

    pub fn last_be(&self) -> u8 {
        self.byte(field::BE) >> 4
    }

    /// Message code of a message.
    pub fn message_code(&self) -> u8 {
        self.byte(field::BE)
    }

    /// The address of a memory, I/O or AtomicOp request, with its low two bits
    /// (PH when TH is set) cleared.
    pub fn address(&self) -> u64 {
        if self.fmt().is_some_and(Fmt::is_four_dw) {
            ((self.be32(field::DW2) as u64) << 32) | (self.be32(field::DW3) & !3) as u64
        } else {
            (self.be32(field::DW2) & !3) as u64
        }
    }

    /// The two low bits of the address DW: PH when TH is set.
    pub fn ph(&self) -> u8 {
        let at = if self.fmt().is_some_and(Fmt::is_four_dw) {
            field::DW3 + 3
        } else {
            field::DW2 + 3
        };
        self.byte(at) & 0x3
    }

    /// Target of a configuration request.
    pub fn config_target(&self) -> Bdf {
        Bdf::from_u16(self.be16(field::DW2))
    }

    /// Register byte offset (Extended Register Number and Register Number) of a
    /// configuration request: a DW-aligned offset in 0..4096.
    pub fn config_register(&self) -> u16 {
        let ext = (self.byte(field::DW2 + 2) & 0xf) as u16;
        let reg = (self.byte(field::DW2 + 3) >> 2) as u16;
        (ext << 8) | (reg << 2)
    }

    /// Completion status bits.
    pub fn completion_status_bits(&self) -> u8 {
        self.byte(field::TAG) >> 5
    }

    /// BCM: Byte Count Modified.
    pub fn bcm(&self) -> bool {
        self.byte(field::TAG) & 0x10 != 0
    }

    /// The raw 12-bit Byte Count field (0 means 4096).
    pub fn byte_count_field(&self) -> u16 {
        (((self.byte(field::TAG) & 0xf) as u16) << 8) | self.byte(field::BE) as u16
    }

    /// Byte Count with 0 decoded as 4096.
    pub fn byte_count(&self) -> u16 {
        match self.byte_count_field() {
            0 => 4096,
            n => n,
        }
    }

    /// Requester ID of a completion.
    pub fn completion_requester(&self) -> Bdf {
        Bdf::from_u16(self.be16(field::DW2))
    }

    /// Tag of a completion (byte 10 plus T9/T8).
    pub fn completion_tag(&self) -> Tag {
        self.tag_at(field::DW2 + 2)
    }

    /// Lower Address (7 bits) of a completion.
    pub fn lower_address(&self) -> u8 {
        self.byte(field::DW2 + 3) & 0x7f
    }

    /// Bytes 8..16 of a message header (routing-specific).
    pub fn message_body(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.buffer.as_ref()[field::DW2..field::DW2 + 8]);
        out
    }

    /// Header length in bytes (12 or 16).
    pub fn header_len(&self) -> usize {
        self.fmt().map_or(4, Fmt::header_len)
    }

    /// The data payload (empty when Fmt says no data).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let start = self.header_len().min(data.len());
        let end = if self.td() {
            data.len().saturating_sub(4).max(start)
        } else {
            data.len()
        };
        &data[start..end]
    }

    /// The TLP digest (ECRC) when TD is set.
    pub fn digest(&self) -> Option<u32> {
        let data = self.buffer.as_ref();
        if self.td() && data.len() >= self.header_len() + 4 {
            Some(self.be32(data.len() - 4))
        } else {
            None
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TlpPacket<T> {
    /// Mutable payload (between the header and the digest), for filling data in place
    /// after `Tlp::emit` wrote the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let td = self.td();
        let d = self.buffer.as_mut();
        let end = if td {
            d.len().saturating_sub(4)
        } else {
            d.len()
        };
        &mut d[start.min(end)..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for TlpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}
