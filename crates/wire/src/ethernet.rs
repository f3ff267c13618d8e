//! Ethernet II with an optional 802.1Q tag (whose VID is the tether Group ID).

use core::fmt;

use crate::error::WireError;

/// 802.1Q Tag Protocol Identifier.
pub const TPID_8021Q: u16 = 0x8100;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl core::str::FromStr for MacAddr {
    type Err = WireError;

    fn from_str(s: &str) -> Result<MacAddr, WireError> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let part = parts.next().ok_or(WireError::BadMacAddress)?;
            if part.len() != 2 {
                return Err(WireError::BadMacAddress);
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| WireError::BadMacAddress)?;
        }
        if parts.next().is_some() {
            return Err(WireError::BadMacAddress);
        }
        Ok(MacAddr(out))
    }
}

/// The 802.1Q Tag Control Information: priority, drop eligibility and VLAN ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct VlanTag {
    /// Priority Code Point, 0..=7.
    pub pcp: u8,
    /// Drop Eligible Indicator.
    pub dei: bool,
    /// VLAN ID, 0..=4095; tether uses 1..=4094 as the Group ID.
    pub vid: u16,
}

impl VlanTag {
    pub const fn from_tci(tci: u16) -> VlanTag {
        VlanTag {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    pub const fn tci(self) -> u16 {
        ((self.pcp as u16 & 7) << 13) | ((self.dei as u16) << 12) | (self.vid & 0x0fff)
    }
}

/// The Ethernet header of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EthernetRepr {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The 802.1Q tag, either in the frame or recovered from the receive metadata.
    pub vlan: Option<VlanTag>,
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Header size on the wire: 14, or 18 with the tag.
    pub const fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }

    /// Parses the header and returns it with the offset of the payload.
    ///
    /// `stripped` is the tag the receive path took off the frame (AF_PACKET reports it
    /// in `tp_vlan_tci`); a tag still in the frame takes precedence.
    pub fn parse(
        frame: &[u8],
        stripped: Option<VlanTag>,
    ) -> Result<(EthernetRepr, usize), WireError> {
        if frame.len() < 14 {
            return Err(WireError::Truncated {
                what: "Ethernet header",
                needed: 14,
                got: frame.len(),
            });
        }
        let mac = |at: usize| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&frame[at..at + 6]);
            MacAddr(m)
        };
        let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        let (vlan, ethertype, offset) = if be16(12) == TPID_8021Q {
            if frame.len() < 18 {
                return Err(WireError::Truncated {
                    what: "802.1Q tag",
                    needed: 18,
                    got: frame.len(),
                });
            }
            (Some(VlanTag::from_tci(be16(14))), be16(16), 18)
        } else {
            (stripped, be16(12), 14)
        };
        Ok((
            EthernetRepr {
                dst: mac(0),
                src: mac(6),
                vlan,
                ethertype,
            },
            offset,
        ))
    }

    /// Writes the header at the start of `buf` and returns its size.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.header_len();
        if buf.len() < len {
            return Err(WireError::NoRoom {
                needed: len,
                got: buf.len(),
            });
        }
        buf[0..6].copy_from_slice(&self.dst.0);
        buf[6..12].copy_from_slice(&self.src.0);
        match self.vlan {
            Some(tag) => {
                buf[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
                buf[14..16].copy_from_slice(&tag.tci().to_be_bytes());
                buf[16..18].copy_from_slice(&self.ethertype.to_be_bytes());
            }
            None => buf[12..14].copy_from_slice(&self.ethertype.to_be_bytes()),
        }
        Ok(len)
    }
}
