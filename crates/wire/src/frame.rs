//! Whole frames: parse one from bytes, or write one record by record.

use tlp::Tlp;

use crate::auth::{AuthKey, TAG_LEN};
use crate::ctrl::CtrlRepr;
use crate::error::WireError;
use crate::ethernet::{EthernetRepr, MacAddr, VlanTag};
use crate::header::{flags, FrameKind, HeaderView, TetherHeader, HEADER_LEN};
use crate::info::{DeviceInfo, Info, InfoRepr};
use crate::records::{emit_record_header, RecordType, Records, RECORD_HEADER_LEN};
use crate::ETHERTYPE;

/// A parsed tether frame: Ethernet header, tether header and payload.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Frame<'a> {
    pub ethernet: EthernetRepr,
    pub header: TetherHeader,
    pub payload: &'a [u8],
    /// The header and payload as received (what the tag covers, after the addresses
    /// and the Group ID).
    covered: &'a [u8],
    /// The authentication tag, when the AUTH flag is set.
    pub tag: Option<&'a [u8; TAG_LEN]>,
}

/// Why a frame failed [`Frame::authenticate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("the group has a key and the frame carries no tag")]
    Missing,
    #[error("the frame carries a tag and the group has no key")]
    Unexpected,
    #[error("the tag does not match the group's key")]
    Bad,
}

/// What a frame's payload holds, by kind.
#[derive(Clone, Debug)]
pub enum Body<'a> {
    Data(Records<'a>),
    Ack,
    Nak,
    Info(Info<'a>),
    Ctrl(CtrlRepr),
}

impl<'a> Frame<'a> {
    /// Parses a frame as received. `stripped` is the VLAN tag the receive path removed
    /// (AF_PACKET's `tp_vlan_tci`), if any. Padding after the payload is ignored.
    pub fn parse(bytes: &'a [u8], stripped: Option<VlanTag>) -> Result<Frame<'a>, WireError> {
        let (ethernet, offset) = EthernetRepr::parse(bytes, stripped)?;
        if ethernet.ethertype != ETHERTYPE {
            return Err(WireError::NotTether(ethernet.ethertype));
        }
        let gid = ethernet.vlan.map_or(0, |t| t.vid);
        let HeaderView {
            header,
            payload,
            covered,
            tag,
        } = TetherHeader::parse(&bytes[offset..], gid)?;
        Ok(Frame {
            ethernet,
            header,
            payload,
            covered,
            tag,
        })
    }

    /// Checks the frame against its group's key (`None`: the group has none). A
    /// keyed group takes only frames with a valid tag; a group without a key takes
    /// none with a tag (it cannot check them). Call before the frame changes anything.
    pub fn authenticate(&self, key: Option<&AuthKey>) -> Result<(), AuthRefusal> {
        match (key, self.tag) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(AuthRefusal::Unexpected),
            (Some(_), None) => Err(AuthRefusal::Missing),
            (Some(k), Some(t)) => {
                let gid = self.gid().unwrap_or(0) & 0x0fff;
                let parts: [&[u8]; 4] = [
                    &self.ethernet.dst.0,
                    &self.ethernet.src.0,
                    &gid.to_be_bytes(),
                    self.covered,
                ];
                if k.verify(t, &parts) {
                    Ok(())
                } else {
                    Err(AuthRefusal::Bad)
                }
            }
        }
    }

    /// The Group ID: the VLAN ID, when the frame is tagged.
    pub fn gid(&self) -> Option<u16> {
        self.ethernet.vlan.map(|t| t.vid)
    }

    /// Decodes the payload according to the frame kind.
    pub fn body(&self) -> Result<Body<'a>, WireError> {
        Ok(match self.header.kind {
            FrameKind::Data => Body::Data(Records::new(self.payload)),
            FrameKind::Ack => Body::Ack,
            FrameKind::Nak => Body::Nak,
            FrameKind::Info => Body::Info(Info::parse(self.payload)?),
            FrameKind::Ctrl => Body::Ctrl(CtrlRepr::parse(self.payload)?),
        })
    }
}

/// Largest frame for an MTU (the MTU counts from after the Ethernet header; the
/// 802.1Q tag is extra, as on Linux).
pub const fn max_frame_len(mtu: usize) -> usize {
    mtu + 18
}

/// Writes one frame into a buffer whose length is the frame size limit.
pub struct FrameWriter<'b> {
    buf: &'b mut [u8],
    header_at: usize,
    len: usize,
    records: usize,
    gid: u16,
    /// Where the payload must end: the buffer's end, less the tag's room.
    end: usize,
    /// The group's key: the frame gets the AUTH flag and a tag.
    key: Option<&'b AuthKey>,
    dst: MacAddr,
    src: MacAddr,
}

impl<'b> FrameWriter<'b> {
    /// Writes the Ethernet header and reserves room for the tether header, for a
    /// frame of a group without a key.
    pub fn new(buf: &'b mut [u8], ethernet: &EthernetRepr) -> Result<FrameWriter<'b>, WireError> {
        FrameWriter::keyed(buf, ethernet, None)
    }

    /// The same for a frame of a group with `key` (if any): the frame gets the AUTH
    /// flag and a tag, and the room for the tag is kept from the payload.
    pub fn keyed(
        buf: &'b mut [u8],
        ethernet: &EthernetRepr,
        key: Option<&'b AuthKey>,
    ) -> Result<FrameWriter<'b>, WireError> {
        let at = ethernet.emit(buf)?;
        let len = at + HEADER_LEN;
        let trailer = if key.is_some() { TAG_LEN } else { 0 };
        if buf.len() < len + trailer {
            return Err(WireError::NoRoom {
                needed: len + trailer,
                got: buf.len(),
            });
        }
        let end = buf.len() - trailer;
        Ok(FrameWriter {
            buf,
            end,
            header_at: at,
            len,
            records: 0,
            gid: ethernet.vlan.map_or(0, |t| t.vid),
            key,
            dst: ethernet.dst,
            src: ethernet.src,
        })
    }

    /// Bytes left for payload (the tag's room already kept).
    pub fn room(&self) -> usize {
        self.end - self.len
    }

    /// Number of records written so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Whether a TLP of `tlp_len` bytes still fits as a record.
    pub fn fits(&self, tlp_len: usize) -> bool {
        RECORD_HEADER_LEN + tlp_len <= self.room()
    }

    /// Appends a TLP record. On `NoRoom` the frame is unchanged.
    pub fn push_tlp(&mut self, tlp: &Tlp<'_>) -> Result<(), WireError> {
        let n = tlp.buffer_len();
        self.reserve(RECORD_HEADER_LEN + n)?;
        let at = self.len;
        tlp.emit(&mut self.buf[at + RECORD_HEADER_LEN..])
            .map_err(|e| match e {
                tlp::EmitError::Invalid(p) => WireError::Tlp(p),
                _ => WireError::NoRoom {
                    needed: n,
                    got: self.end - at,
                },
            })?;
        emit_record_header(&mut self.buf[at..], RecordType::Tlp, n);
        self.len += RECORD_HEADER_LEN + n;
        self.records += 1;
        Ok(())
    }

    /// Appends an already encoded TLP as a record, without re-validating it.
    pub fn push_tlp_bytes(&mut self, tlp: &[u8]) -> Result<(), WireError> {
        self.reserve(RECORD_HEADER_LEN + tlp.len())?;
        let at = self.len;
        emit_record_header(&mut self.buf[at..], RecordType::Tlp, tlp.len());
        self.buf[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + tlp.len()].copy_from_slice(tlp);
        self.len += RECORD_HEADER_LEN + tlp.len();
        self.records += 1;
        Ok(())
    }

    fn reserve(&self, n: usize) -> Result<(), WireError> {
        if n > self.room() || self.len - self.header_at - HEADER_LEN + n > u16::MAX as usize {
            return Err(WireError::NoRoom {
                needed: n,
                got: self.room(),
            });
        }
        Ok(())
    }

    /// Lets `write` fill the payload directly; it returns how many bytes it wrote.
    pub fn append_with(
        &mut self,
        write: impl FnOnce(&mut [u8]) -> Result<usize, WireError>,
    ) -> Result<(), WireError> {
        let at = self.len;
        let n = write(&mut self.buf[at..self.end])?;
        self.reserve(n)?;
        self.len += n;
        Ok(())
    }

    /// Writes the tether header (payload length and check included) and returns the
    /// frame's length.
    /// With a key, the AUTH flag is set and the tag follows the payload.
    pub fn finish(self, header: &TetherHeader) -> Result<usize, WireError> {
        let payload = self.len - self.header_at - HEADER_LEN;
        let Some(key) = self.key else {
            header.emit(&mut self.buf[self.header_at..self.len], payload, self.gid)?;
            return Ok(self.len);
        };
        let mut h = *header;
        h.flags |= flags::AUTH;
        h.emit(&mut self.buf[self.header_at..self.len], payload, self.gid)?;
        let gid = (self.gid & 0x0fff).to_be_bytes();
        let tag = key.tag(&[
            &self.dst.0,
            &self.src.0,
            &gid,
            &self.buf[self.header_at..self.len],
        ]);
        self.buf[self.len..self.len + TAG_LEN].copy_from_slice(&tag);
        Ok(self.len + TAG_LEN)
    }
}

/// Writes a frame with no payload (ACK, NAK), tagged with `key` if the group has one.
pub fn emit_bare(
    buf: &mut [u8],
    ethernet: &EthernetRepr,
    header: &TetherHeader,
    key: Option<&AuthKey>,
) -> Result<usize, WireError> {
    FrameWriter::keyed(buf, ethernet, key)?.finish(header)
}

/// Writes an INFO frame, tagged with `key` if the group has one.
pub fn emit_info(
    buf: &mut [u8],
    ethernet: &EthernetRepr,
    header: &TetherHeader,
    info: &InfoRepr,
    devices: &[DeviceInfo],
    key: Option<&AuthKey>,
) -> Result<usize, WireError> {
    if header.kind != FrameKind::Info {
        return Err(WireError::WrongKind {
            what: "INFO payload",
            kind: header.kind.name(),
        });
    }
    let mut w = FrameWriter::keyed(buf, ethernet, key)?;
    w.append_with(|b| info.emit(devices, b))?;
    w.finish(header)
}

/// Writes a CTRL frame, tagged with `key` if the group has one.
pub fn emit_ctrl(
    buf: &mut [u8],
    ethernet: &EthernetRepr,
    header: &TetherHeader,
    ctrl: &CtrlRepr,
    key: Option<&AuthKey>,
) -> Result<usize, WireError> {
    if header.kind != FrameKind::Ctrl {
        return Err(WireError::WrongKind {
            what: "CTRL payload",
            kind: header.kind.name(),
        });
    }
    let mut w = FrameWriter::keyed(buf, ethernet, key)?;
    w.append_with(|b| ctrl.emit(b))?;
    w.finish(header)
}
