//! Whole frames: parse one from bytes, or write one record by record.

use tlp::Tlp;

use crate::auth::{AuthKey, Nonce, SessionKey, AAD_LEN, NONCE_LEN, TAG_LEN};
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
    /// A session frame's nonce, when the AUTH flag is set.
    pub nonce: Option<&'a [u8; NONCE_LEN]>,
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
            nonce,
        } = TetherHeader::parse(&bytes[offset..], gid)?;
        Ok(Frame {
            ethernet,
            header,
            payload,
            covered,
            tag,
            nonce,
        })
    }

    /// Checks the frame against its group's key (`None`: the group has none). A
    /// keyed group takes only frames with a valid tag; a group without a key takes
    /// none with a tag (it cannot check them). Call before the frame changes anything.
    /// A session frame is checked with its sender's session key, derived here; a
    /// receiver that knows the sender passes the key it keeps to
    /// [`Frame::authenticate_sealed`] instead.
    pub fn authenticate(&self, key: Option<&AuthKey>) -> Result<(), AuthRefusal> {
        let (Some(k), Some(tag)) = (key, self.tag_for(key.is_some())?) else {
            return Ok(());
        };
        if self.header.kind.is_session() {
            return self.check_sealed(&k.session_key(self.ethernet.src), tag);
        }
        let aad = self.aad();
        if k.verify(tag, &[&aad, self.covered]) {
            Ok(())
        } else {
            Err(AuthRefusal::Bad)
        }
    }

    /// Checks a session frame (DATA, ACK, NAK) of a keyed group with its sender's
    /// session key, as [`Frame::authenticate`] does. Any other frame, or a key that is
    /// not the frame's sender's, is refused as a bad tag.
    pub fn authenticate_sealed(&self, k: &SessionKey) -> Result<(), AuthRefusal> {
        let Some(tag) = self.tag_for(true)? else {
            return Err(AuthRefusal::Missing);
        };
        if !self.header.kind.is_session() || k.sender() != self.ethernet.src {
            return Err(AuthRefusal::Bad);
        }
        self.check_sealed(k, tag)
    }

    /// The tag, if the frame must have one (`keyed`), or the refusal.
    fn tag_for(&self, keyed: bool) -> Result<Option<&'a [u8; TAG_LEN]>, AuthRefusal> {
        match (keyed, self.tag) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(AuthRefusal::Unexpected),
            (true, None) => Err(AuthRefusal::Missing),
            (true, Some(t)) => Ok(Some(t)),
        }
    }

    fn check_sealed(&self, key: &SessionKey, tag: &[u8; TAG_LEN]) -> Result<(), AuthRefusal> {
        let nonce = self.nonce.ok_or(AuthRefusal::Bad)?;
        if key.verify(tag, &Nonce(*nonce), &self.aad(), self.covered) {
            Ok(())
        } else {
            Err(AuthRefusal::Bad)
        }
    }

    /// What a tag covers before the tether header: the addresses and the Group ID.
    fn aad(&self) -> [u8; AAD_LEN] {
        aad(
            self.ethernet.dst,
            self.ethernet.src,
            self.gid().unwrap_or(0),
        )
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

/// The bytes a tag covers before the tether header: destination and source MAC
/// addresses, the Group ID's 12 bits as two big-endian bytes.
fn aad(dst: MacAddr, src: MacAddr, gid: u16) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[..6].copy_from_slice(&dst.0);
    a[6..12].copy_from_slice(&src.0);
    a[12..].copy_from_slice(&(gid & 0x0fff).to_be_bytes());
    a
}

/// What a session frame is sealed with: its sender's key and a nonce never used
/// before with it ([`crate::auth::NonceSeq`]).
#[derive(Clone, Copy, Debug)]
pub struct Seal<'a> {
    pub key: &'a SessionKey,
    pub nonce: Nonce,
}

/// How a frame being written is authenticated.
#[derive(Clone, Copy)]
enum Auth<'b> {
    /// A group without a key.
    Open,
    /// INFO, CTRL: the group key's tag.
    Tag(&'b AuthKey),
    /// DATA, ACK, NAK: the sender's session key, a nonce and its tag.
    Seal(Seal<'b>),
}

impl Auth<'_> {
    fn trailer_len(&self) -> usize {
        match self {
            Auth::Open => 0,
            Auth::Tag(_) => TAG_LEN,
            Auth::Seal(_) => NONCE_LEN + TAG_LEN,
        }
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
    /// Where the payload must end: the buffer's end, less the trailer's room.
    end: usize,
    /// With a key, the frame gets the AUTH flag and a trailer.
    auth: Auth<'b>,
    dst: MacAddr,
    src: MacAddr,
}

impl<'b> FrameWriter<'b> {
    /// Writes the Ethernet header and reserves room for the tether header, for a
    /// frame of a group without a key.
    pub fn new(buf: &'b mut [u8], ethernet: &EthernetRepr) -> Result<FrameWriter<'b>, WireError> {
        FrameWriter::keyed(buf, ethernet, None)
    }

    /// The same for an INFO or CTRL frame of a group with `key` (if any): the frame
    /// gets the AUTH flag and a tag, and the room for the tag is kept from the payload.
    pub fn keyed(
        buf: &'b mut [u8],
        ethernet: &EthernetRepr,
        key: Option<&'b AuthKey>,
    ) -> Result<FrameWriter<'b>, WireError> {
        FrameWriter::with_auth(buf, ethernet, key.map_or(Auth::Open, Auth::Tag))
    }

    /// The same for a session frame (DATA, ACK, NAK) of a group with a key, `seal`
    /// holding the sender's session key and a fresh nonce: the frame gets the AUTH
    /// flag, the nonce and a tag, and their room is kept from the payload.
    pub fn sealed(
        buf: &'b mut [u8],
        ethernet: &EthernetRepr,
        seal: Option<Seal<'b>>,
    ) -> Result<FrameWriter<'b>, WireError> {
        if let Some(s) = seal {
            if s.key.sender() != ethernet.src {
                return Err(WireError::NotTheSender {
                    key: s.key.sender(),
                    src: ethernet.src,
                });
            }
        }
        FrameWriter::with_auth(buf, ethernet, seal.map_or(Auth::Open, Auth::Seal))
    }

    fn with_auth(
        buf: &'b mut [u8],
        ethernet: &EthernetRepr,
        auth: Auth<'b>,
    ) -> Result<FrameWriter<'b>, WireError> {
        let at = ethernet.emit(buf)?;
        let len = at + HEADER_LEN;
        let trailer = auth.trailer_len();
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
            auth,
            dst: ethernet.dst,
            src: ethernet.src,
        })
    }

    /// Bytes left for payload (the trailer's room already kept).
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
    /// With a key, the AUTH flag is set and the trailer follows the payload. A session
    /// frame takes only a seal ([`FrameWriter::sealed`]) and INFO or CTRL only the
    /// group key ([`FrameWriter::keyed`]).
    pub fn finish(self, header: &TetherHeader) -> Result<usize, WireError> {
        let payload = self.len - self.header_at - HEADER_LEN;
        let wrong = |what| WireError::WrongKind {
            what,
            kind: header.kind.name(),
        };
        match self.auth {
            Auth::Open => {
                header.emit(&mut self.buf[self.header_at..self.len], payload, self.gid)?;
                return Ok(self.len);
            }
            Auth::Tag(_) if header.kind.is_session() => {
                return Err(wrong("a group key's tag (session frames are sealed)"))
            }
            Auth::Seal(_) if !header.kind.is_session() => return Err(wrong("a session seal")),
            _ => {}
        }
        let mut h = *header;
        h.flags |= flags::AUTH;
        h.emit(&mut self.buf[self.header_at..self.len], payload, self.gid)?;
        let aad = aad(self.dst, self.src, self.gid);
        let (covered, trailer) = self.buf[self.header_at..].split_at_mut(self.len - self.header_at);
        let n = match self.auth {
            Auth::Tag(key) => {
                trailer[..TAG_LEN].copy_from_slice(&key.tag(&[&aad, covered]));
                TAG_LEN
            }
            Auth::Seal(Seal { key, nonce }) => {
                trailer[..NONCE_LEN].copy_from_slice(&nonce.0);
                let tag = key.tag(&nonce, &aad, covered);
                trailer[NONCE_LEN..NONCE_LEN + TAG_LEN].copy_from_slice(&tag);
                NONCE_LEN + TAG_LEN
            }
            Auth::Open => 0,
        };
        Ok(self.len + n)
    }
}

/// Writes a frame with no payload (ACK, NAK), sealed if the group has a key.
pub fn emit_bare(
    buf: &mut [u8],
    ethernet: &EthernetRepr,
    header: &TetherHeader,
    seal: Option<Seal<'_>>,
) -> Result<usize, WireError> {
    FrameWriter::sealed(buf, ethernet, seal)?.finish(header)
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
