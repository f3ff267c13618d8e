//! Software segmentation for [`super::PacketBackend`]: a packet socket cannot tell the
//! kernel what the guest takes, so segmented (GSO) frames a guest did not negotiate
//! are cut into wire-sized frames here, as macvtap's kernel side would (TCP over IPv4
//! or IPv6, UDP GSO); every checksum is whole. UDP fragmentation offload (UFO, IP
//! fragments) is not done: such frames are refused.

use endpoint::virtio::net::VNET_HDR_LEN;

use super::{HDR_GSO_ECN, HDR_GSO_TCPV4, HDR_GSO_TCPV6, HDR_GSO_UDP_L4};

/// Why a frame was not segmented (the caller drops and counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// A GSO type this does not segment (UFO, unknown).
    Unsupported(u8),
    /// Headers that do not hold together (lengths, versions, protocols, extension
    /// headers, fragments, a zero segment size).
    Malformed(&'static str),
    /// More segments than the caller has room for.
    TooMany(usize),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The ones' complement sum of `data` (big-endian 16-bit words, an odd byte padded),
/// added to `sum`, unfolded.
pub(super) fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits and complements it.
pub(super) fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Cuts the GSO `frame` (an Ethernet frame, tags allowed, of GSO type `gso` with
/// `gso_size` payload bytes per segment) into frames behind a zero virtio-net header
/// (num_buffers = 1); at most `max` of them.
pub fn segment(
    gso: u8,
    gso_size: u16,
    frame: &[u8],
    max: usize,
) -> Result<Vec<Vec<u8>>, SegmentError> {
    use SegmentError::Malformed;
    let kind = gso & !HDR_GSO_ECN;
    let (want_proto, v6_only, v4_only) = match kind {
        HDR_GSO_TCPV4 => (6u8, false, true),
        HDR_GSO_TCPV6 => (6u8, true, false),
        HDR_GSO_UDP_L4 => (17u8, false, false),
        other => return Err(SegmentError::Unsupported(other)),
    };
    if gso_size == 0 {
        return Err(Malformed("a zero segment size"));
    }
    // Up to two VLAN tags, then IPv4 or IPv6.
    if frame.len() < 14 {
        return Err(Malformed("a runt"));
    }
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        l3 += 4;
        if frame.len() < l3 {
            return Err(Malformed("a runt"));
        }
        ethertype = be16(frame, l3 - 2);
    }
    let (v6, l4, ip_end) = match ethertype {
        0x0800 if !v6_only => {
            if frame.len() < l3 + 20 || frame[l3] >> 4 != 4 {
                return Err(Malformed("an IPv4 header"));
            }
            let ihl = usize::from(frame[l3] & 0xf) * 4;
            if ihl < 20 || frame[l3 + 9] != want_proto {
                return Err(Malformed("an IPv4 header"));
            }
            if be16(frame, l3 + 6) & 0x3fff != 0 {
                return Err(Malformed("an IPv4 fragment"));
            }
            (false, l3 + ihl, l3 + usize::from(be16(frame, l3 + 2)))
        }
        0x86dd if !v4_only => {
            if frame.len() < l3 + 40 || frame[l3] >> 4 != 6 || frame[l3 + 6] != want_proto {
                return Err(Malformed(
                    "an IPv6 header (extension headers are not segmented)",
                ));
            }
            (true, l3 + 40, l3 + 40 + usize::from(be16(frame, l3 + 4)))
        }
        _ => return Err(Malformed("not IP of the GSO type")),
    };
    if ip_end > frame.len() || l4 > ip_end {
        return Err(Malformed("an IP length beyond the frame"));
    }
    let hdr_end = if want_proto == 6 {
        if l4 + 20 > ip_end {
            return Err(Malformed("a TCP header"));
        }
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        if doff < 20 || l4 + doff > ip_end {
            return Err(Malformed("a TCP header"));
        }
        l4 + doff
    } else {
        if l4 + 8 > ip_end {
            return Err(Malformed("a UDP header"));
        }
        l4 + 8
    };
    let payload = &frame[hdr_end..ip_end];
    let size = usize::from(gso_size);
    let count = payload.len().div_ceil(size).max(1);
    if count > max {
        return Err(SegmentError::TooMany(count));
    }
    // The pseudo-header's addresses and protocol, the same for every segment.
    let addresses = if v6 {
        sum16(&frame[l3 + 8..l3 + 40], 0)
    } else {
        sum16(&frame[l3 + 12..l3 + 20], 0)
    };
    let pseudo = addresses + u64::from(want_proto);
    let seq0 = if want_proto == 6 {
        u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]])
    } else {
        0
    };
    let id0 = if v6 { 0 } else { be16(frame, l3 + 4) };
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(size).collect()
    };
    let mut out = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let mut f = Vec::with_capacity(VNET_HDR_LEN + hdr_end + chunk.len());
        f.extend_from_slice(&[0; VNET_HDR_LEN]);
        f[VNET_HDR_LEN - 2..].copy_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&frame[..hdr_end]);
        f.extend_from_slice(chunk);
        let b = &mut f[VNET_HDR_LEN..];
        let l4_len = hdr_end - l4 + chunk.len();
        // Both fit in 16 bits: a segment is no longer than the frame it came from,
        // whose IP length field held more.
        if v6 {
            put16(b, l3 + 4, (l4 - l3 - 40 + l4_len) as u16);
        } else {
            put16(b, l3 + 2, (l4 - l3 + l4_len) as u16);
            put16(b, l3 + 4, id0.wrapping_add(i as u16));
            put16(b, l3 + 10, 0);
            let c = fold(sum16(&b[l3..l4], 0));
            put16(b, l3 + 10, c);
        }
        let last = i + 1 == chunks.len();
        if want_proto == 6 {
            let seq = seq0.wrapping_add((i * size) as u32);
            b[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                b[l4 + 13] &= !0x09; // FIN, PSH: the last segment's
            }
            if i > 0 {
                b[l4 + 13] &= !0x80; // CWR: the first segment's
            }
            put16(b, l4 + 16, 0);
            let c = fold(sum16(&b[l4..], pseudo + l4_len as u64));
            put16(b, l4 + 16, c);
        } else {
            put16(b, l4 + 4, l4_len as u16);
            put16(b, l4 + 6, 0);
            let c = match fold(sum16(&b[l4..], pseudo + l4_len as u64)) {
                0 => 0xffff,
                c => c,
            };
            put16(b, l4 + 6, c);
        }
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4 or IPv6 header and a TCP or UDP header, then
    /// `payload`; lengths set, checksums left as they are (GSO frames carry partial
    /// ones).
    fn gso_frame(v6: bool, tcp: bool, vlan: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x14]);
        }
        let l4_hdr = if tcp { 20 } else { 8 };
        let l4_len = l4_hdr + payload.len();
        let proto = if tcp { 6 } else { 17 };
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&[0xfd; 16]);
            f.extend_from_slice(&[0xfe; 16]);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
            f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        }
        f.extend_from_slice(&[0x04, 0xd2, 0x16, 0x2e]); // ports 1234 -> 5678
        if tcp {
            f.extend_from_slice(&0xffff_fff0u32.to_be_bytes()); // seq wraps
            f.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x80 | 0x10 | 0x08 | 0x01, 0xff, 0xff]);
            f.extend_from_slice(&[0, 0, 0, 0]);
        } else {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(payload);
        f
    }

    /// The L4 checksum of a segment (header stripped) checks out, and its IPv4 header
    /// checksum too; returns (l3, l4) offsets.
    fn check(seg: &[u8], v6: bool, vlan: bool, tcp: bool) -> (usize, usize) {
        let l3 = if vlan { 18 } else { 14 };
        let (l4, l4_len, addrs) = if v6 {
            (
                l3 + 40,
                usize::from(be16(seg, l3 + 4)),
                sum16(&seg[l3 + 8..l3 + 40], 0),
            )
        } else {
            assert_eq!(fold(sum16(&seg[l3..l3 + 20], 0)), 0, "IPv4 header checksum");
            (
                l3 + 20,
                usize::from(be16(seg, l3 + 2)) - 20,
                sum16(&seg[l3 + 12..l3 + 20], 0),
            )
        };
        assert_eq!(seg.len(), l4 + l4_len, "IP length");
        let proto = if tcp { 6 } else { 17 };
        let sum = sum16(&seg[l4..], addrs + proto + l4_len as u64);
        assert_eq!(fold(sum), 0, "L4 checksum");
        (l3, l4)
    }

    /// The most segments the property test allows.
    const MAX: usize = 256;

    #[test]
    fn tcp_and_udp_segments_carry_the_payload_with_whole_checksums() {
        let payload: Vec<u8> = (0..3001u32).map(|i| (i * 7) as u8).collect();
        for (gso, v6, tcp) in [
            (HDR_GSO_TCPV4, false, true),
            (HDR_GSO_TCPV6 | HDR_GSO_ECN, true, true),
            (HDR_GSO_UDP_L4, false, false),
            (HDR_GSO_UDP_L4, true, false),
        ] {
            for vlan in [false, true] {
                let f = gso_frame(v6, tcp, vlan, &payload);
                let out = segment(gso, 1000, &f, 64).unwrap();
                assert_eq!(out.len(), 4, "3001 bytes in 1000-byte segments");
                let mut joined = Vec::new();
                for (i, s) in out.iter().enumerate() {
                    assert_eq!(&s[..VNET_HDR_LEN], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                    let seg = &s[VNET_HDR_LEN..];
                    let (l3, l4) = check(seg, v6, vlan, tcp);
                    let hdr = l4 + if tcp { 20 } else { 8 };
                    assert_eq!(seg.len() - hdr, if i < 3 { 1000 } else { 1 });
                    joined.extend_from_slice(&seg[hdr..]);
                    if !v6 {
                        assert_eq!(be16(seg, l3 + 4), 0x1234 + i as u16, "IPv4 ID");
                    }
                    if tcp {
                        let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().unwrap());
                        assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1000 * i as u32));
                        let flags = seg[l4 + 13];
                        assert_eq!(flags & 0x10, 0x10, "ACK on every segment");
                        assert_eq!(flags & 0x80 != 0, i == 0, "CWR on the first");
                        assert_eq!(flags & 0x09 == 0x09, i == 3, "FIN and PSH on the last");
                    }
                }
                assert_eq!(joined, payload, "gso {gso:#x} v6 {v6} vlan {vlan}");
            }
        }
    }

    #[test]
    fn what_cannot_be_segmented_is_refused() {
        let f = gso_frame(false, true, false, &[0; 3000]);
        assert_eq!(
            segment(3, 1000, &f, 64),
            Err(SegmentError::Unsupported(3)),
            "UFO"
        );
        assert_eq!(
            segment(HDR_GSO_TCPV4, 1000, &f, 2),
            Err(SegmentError::TooMany(3))
        );
        assert!(matches!(
            segment(HDR_GSO_TCPV4, 0, &f, 64),
            Err(SegmentError::Malformed(_))
        ));
        assert!(matches!(
            segment(HDR_GSO_TCPV6, 1000, &f, 64),
            Err(SegmentError::Malformed(_))
        ));
        assert!(matches!(
            segment(HDR_GSO_UDP_L4, 1000, &f, 64),
            Err(SegmentError::Malformed(_))
        ));
        // Every cut of the frame is refused (its IP length is beyond it), never a
        // panic.
        for n in 0..f.len() {
            assert!(segment(HDR_GSO_TCPV4, 100, &f[..n], 64).is_err());
        }
        // An IP length beyond the frame.
        let mut bad = f.clone();
        bad[16..18].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(matches!(
            segment(HDR_GSO_TCPV4, 1000, &bad, 64),
            Err(SegmentError::Malformed(_))
        ));
    }

    proptest::proptest! {
        /// Any payload in any segment size, over IPv4 or IPv6, TCP or UDP, tagged or
        /// not: the segments are wire-sized, their checksums whole, and together they
        /// carry the payload.
        #[test]
        fn segments_reassemble(
            len in 0usize..9000,
            size in 1u16..2000,
            v6: bool,
            tcp: bool,
            vlan: bool,
            seed: u8,
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let gso = match (tcp, v6) {
                (true, false) => HDR_GSO_TCPV4,
                (true, true) => HDR_GSO_TCPV6,
                (false, _) => HDR_GSO_UDP_L4,
            };
            let f = gso_frame(v6, tcp, vlan, &payload);
            match segment(gso, size, &f, MAX) {
                Ok(out) => {
                    proptest::prop_assert_eq!(out.len(), len.div_ceil(usize::from(size)).max(1));
                    let mut joined = Vec::new();
                    for s in &out {
                        let seg = &s[VNET_HDR_LEN..];
                        let (_, l4) = check(seg, v6, vlan, tcp);
                        let hdr = l4 + if tcp { 20 } else { 8 };
                        proptest::prop_assert!(seg.len() - hdr <= usize::from(size));
                        joined.extend_from_slice(&seg[hdr..]);
                    }
                    proptest::prop_assert_eq!(joined, payload);
                }
                Err(e) => {
                    proptest::prop_assert_eq!(
                        e,
                        SegmentError::TooMany(len.div_ceil(usize::from(size)))
                    );
                }
            }
        }

        /// Garbage of any GSO type, and a good frame with bytes changed, never
        /// panics and never yields more than asked.
        #[test]
        fn garbage_is_refused_or_bounded(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            flips in proptest::collection::vec((0usize..120, proptest::num::u8::ANY), 0..4),
            gso: u8,
            size: u16,
            v6: bool,
            tcp: bool,
        ) {
            if let Ok(out) = segment(gso, size, &bytes, 8) {
                proptest::prop_assert!(out.len() <= 8);
            }
            let mut f = gso_frame(v6, tcp, false, &bytes);
            for (at, b) in flips {
                if let Some(x) = f.get_mut(at) {
                    *x = b;
                }
            }
            for kind in [HDR_GSO_TCPV4, HDR_GSO_TCPV6, HDR_GSO_UDP_L4, gso] {
                if let Ok(out) = segment(kind, size, &f, 8) {
                    proptest::prop_assert!(out.len() <= 8);
                }
            }
        }
    }
}
