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
use crate::words as w;

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

    /// Big-endian header word `i` (0..=3). Panics when the buffer is too short, which
    /// `new_checked` rules out for the words the header has.
    fn dw(&self, i: usize) -> u32 {
        w::word(self.buffer.as_ref(), i)
    }

    fn four_dw(&self) -> bool {
        self.fmt().is_some_and(Fmt::is_four_dw)
    }

    /// DW2 and DW3 (DW3 is 0 in a 3DW header).
    fn dw23(&self) -> (u32, u32) {
        let four = self.four_dw();
        (self.dw(2), if four { self.dw(3) } else { 0 })
    }

    /// Raw Fmt bits.
    pub fn fmt_bits(&self) -> u8 {
        w::fmt_bits(self.dw(0))
    }

    pub fn fmt(&self) -> Option<Fmt> {
        Fmt::from_bits(self.fmt_bits())
    }

    /// Raw Type field (5 bits).
    pub fn type_bits(&self) -> u8 {
        w::type_bits(self.dw(0))
    }

    pub fn traffic_class(&self) -> u8 {
        w::traffic_class(self.dw(0))
    }

    pub fn attributes(&self) -> Attributes {
        w::attributes(self.dw(0))
    }

    /// LN: Lightweight Notification.
    pub fn ln(&self) -> bool {
        w::ln(self.dw(0))
    }

    /// TH: TLP Processing Hints present.
    pub fn th(&self) -> bool {
        w::th(self.dw(0))
    }

    /// TD: a TLP digest (ECRC) follows the data.
    pub fn td(&self) -> bool {
        w::td(self.dw(0))
    }

    /// EP: the data is poisoned.
    pub fn ep(&self) -> bool {
        w::ep(self.dw(0))
    }

    /// AT: Address Type.
    pub fn address_type(&self) -> u8 {
        w::address_type(self.dw(0))
    }

    /// The raw 10-bit Length field.
    pub fn length_field(&self) -> u16 {
        w::length_field(self.dw(0))
    }

    /// Length in DW, with 0 decoded as 1024.
    pub fn length_dw(&self) -> u16 {
        w::length_dw(self.dw(0))
    }

    /// Requester ID of a request, completer ID of a completion.
    pub fn id(&self) -> Bdf {
        w::id(self.dw(1))
    }

    /// Tag of a request (byte 6 plus T9/T8).
    pub fn request_tag(&self) -> Tag {
        w::tag(self.dw(0), self.byte6())
    }

    /// The raw byte 6: the tag, or a Memory Write's Steering Tag when TH is set.
    pub fn byte6(&self) -> u8 {
        w::byte6(self.dw(1))
    }

    /// The raw byte 7: byte enables, message code, or a Steering Tag.
    pub fn byte7(&self) -> u8 {
        w::byte7(self.dw(1))
    }

    pub fn first_be(&self) -> u8 {
        self.byte7() & 0xf
    }

    pub fn last_be(&self) -> u8 {
        self.byte7() >> 4
    }

    /// Message code of a message.
    pub fn message_code(&self) -> u8 {
        self.byte7()
    }

    /// The address of a memory, I/O or AtomicOp request, with its low two bits
    /// (PH when TH is set) cleared.
    pub fn address(&self) -> u64 {
        let (w2, w3) = self.dw23();
        w::address(self.four_dw(), w2, w3)
    }

    /// The two low bits of the address DW: PH when TH is set.
    pub fn ph(&self) -> u8 {
        let (w2, w3) = self.dw23();
        w::ph(self.four_dw(), w2, w3)
    }

    /// Target of a configuration request.
    pub fn config_target(&self) -> Bdf {
        w::config_target(self.dw(2))
    }

    /// Register byte offset (Extended Register Number and Register Number) of a
    /// configuration request: a DW-aligned offset in 0..4096.
    pub fn config_register(&self) -> u16 {
        w::config_register(self.dw(2))
    }

    /// Completion status bits.
    pub fn completion_status_bits(&self) -> u8 {
        w::completion_status_bits(self.dw(1))
    }

    /// BCM: Byte Count Modified.
    pub fn bcm(&self) -> bool {
        w::bcm(self.dw(1))
    }

    /// The raw 12-bit Byte Count field (0 means 4096).
    pub fn byte_count_field(&self) -> u16 {
        w::byte_count_field(self.dw(1))
    }

    /// Byte Count with 0 decoded as 4096.
    pub fn byte_count(&self) -> u16 {
        w::byte_count(self.dw(1))
    }

    /// Requester ID of a completion.
    pub fn completion_requester(&self) -> Bdf {
        w::completion_requester(self.dw(2))
    }

    /// Tag of a completion (byte 10 plus T9/T8).
    pub fn completion_tag(&self) -> Tag {
        w::tag(self.dw(0), w::completion_tag_low(self.dw(2)))
    }

    /// Lower Address (7 bits) of a completion.
    pub fn lower_address(&self) -> u8 {
        w::lower_address(self.dw(2))
    }

    /// Bytes 8..16 of a message header (routing-specific).
    pub fn message_body(&self) -> [u8; 8] {
        let (w2, w3) = self.dw23();
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&w2.to_be_bytes());
        out[4..].copy_from_slice(&w3.to_be_bytes());
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
            let d = &data[data.len() - 4..];
            Some(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
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
