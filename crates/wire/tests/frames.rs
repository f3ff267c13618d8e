//! Frame format tests: the sample conversation decodes completely; reprs survive bytes
//! and back; no byte string panics the parser; the frame check catches corruption.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tlp::strategies::any_tlp;
use wire::*;

fn parse_all(bytes: &[u8]) -> Result<Vec<String>, WireError> {
    let frame = Frame::parse(bytes, None)?;
    let mut names = Vec::new();
    match frame.body()? {
        Body::Data(records) => {
            for r in records {
                let t = r?.tlp()?;
                names.push(t.header.mnemonic(!t.payload.is_empty()).to_string());
            }
        }
        Body::Info(info) => {
            for d in info.devices() {
                let _ = d;
            }
        }
        Body::Ack | Body::Nak | Body::Ctrl(_) => {}
    }
    Ok(names)
}

#[test]
fn sample_has_every_kind_and_tlp_type() {
    let frames = sample::frames();
    let mut kinds = BTreeSet::new();
    let mut tlps = BTreeSet::new();
    for f in &frames {
        let frame = Frame::parse(&f.bytes, None).unwrap();
        assert_eq!(frame.gid(), Some(sample::SAMPLE_GID));
        kinds.insert(frame.header.kind.name());
        tlps.extend(parse_all(&f.bytes).unwrap());
    }
    assert_eq!(
        kinds,
        ["ACK", "CTRL", "DATA", "INFO", "NAK"].into_iter().collect()
    );
    let expected = [
        "CAS", "CfgRd0", "CfgRd1", "CfgWr0", "CfgWr1", "Cpl", "CplD", "CplDLk", "FetchAdd", "IORd",
        "IOWr", "MRd", "MRdLk", "MWr", "Msg", "MsgD", "Swap",
    ];
    assert_eq!(tlps, expected.iter().map(|s| s.to_string()).collect());
    // Times increase.
    assert!(frames.windows(2).all(|w| w[0].time_us < w[1].time_us));
}

#[test]
fn sample_info_and_ctrl_decode() {
    let frames = sample::frames();
    let frame = Frame::parse(&frames[0].bytes, None).unwrap();
    let Body::Info(info) = frame.body().unwrap() else {
        panic!("first sample frame is INFO")
    };
    assert_eq!(info.repr.role, BridgeRole::IoBox);
    let devs: Vec<_> = info.devices().collect();
    assert_eq!(devs.len(), 2);
    assert_eq!((devs[1].vendor_id, devs[1].device_id), (0x1af4, 0x1042));
    assert_eq!(devs[1].class_code, 0x018000);
    let ctrl = frames.iter().rev().nth(1).unwrap();
    let frame = Frame::parse(&ctrl.bytes, None).unwrap();
    let Body::Ctrl(c) = frame.body().unwrap() else {
        panic!("CTRL expected")
    };
    assert_eq!((c.op, c.gid, c.slot), (CtrlOp::SetGroup, 20, 1));
}

/// The Ethernet part of a test frame: 2:0:0:0:0:1 to 2:0:0:0:0:2, VID 10, `pcp`.
fn eth_vid10(pcp: u8) -> EthernetRepr {
    EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        vlan: Some(VlanTag {
            pcp,
            dei: false,
            vid: 10,
        }),
        ethertype: ETHERTYPE,
    }
}

#[test]
fn exact_header_bytes() {
    let mut buf = [0u8; 64];
    let eth = eth_vid10(5);
    let hdr = TetherHeader {
        kind: FrameKind::Ack,
        flags: flags::ACK,
        epoch: 0x01020304,
        peer_epoch: 0x05060708,
        seq: 9,
        ack: 10,
        tsval: 11,
        tsecr: 12,
        window: 13,
        echo_wait: 14,
    };
    let n = emit_bare(&mut buf, &eth, &hdr, None).unwrap();
    assert_eq!(n, 18 + 36);
    #[rustfmt::skip]
    let expected: [u8; 50] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1,
        0x81, 0x00, 0xa0, 0x0a, 0x88, 0xb5,      // 802.1Q PCP 5 VID 10, EtherType
        0x12, 0x01, 0x00, 0x00,                  // version 1 kind ACK, flags ACK, no payload
        1, 2, 3, 4, 5, 6, 7, 8,                  // epoch, peer epoch
        0, 0, 0, 9, 0, 0, 0, 10,                 // seq, ack
        0, 0, 0, 11, 0, 0, 0, 12,                // tsval, tsecr
        0, 13, 9, 14,                            // window, header length 9 words, echo wait
    ];
    assert_eq!(&buf[..n - 4], &expected[..n - 4]);
    // The check: CRC-32C of the GID, then the header with a zero check field.
    let mut covered = vec![0u8, 10];
    covered.extend_from_slice(&expected[18..50]);
    covered.extend_from_slice(&[0; 4]);
    assert_eq!(&buf[50..54], &crc32c::crc32c(&covered).to_be_bytes());
}

#[test]
fn a_nak_carries_its_gap_end_in_the_sequence_number_field() {
    let mut buf = [0u8; 64];
    let eth = eth_vid10(0);
    let hdr = TetherHeader {
        kind: FrameKind::Nak,
        flags: flags::ACK | flags::GAP_END,
        seq: 0x0102_0308,
        ack: 0x0102_0305,
        ..TetherHeader::new(FrameKind::Nak)
    };
    let n = emit_bare(&mut buf, &eth, &hdr, None).unwrap();
    #[rustfmt::skip]
    let expected: [u8; 32] = [
        0x13, 0x11, 0x00, 0x00,   // version 1 kind NAK, flags ACK and GAP_END, no payload
        0, 0, 0, 0, 0, 0, 0, 0,   // epoch, peer epoch
        0x01, 0x02, 0x03, 0x08,   // sequence number: the gap's end
        0x01, 0x02, 0x03, 0x05,   // acknowledgement: the go-back point
        0, 0, 0, 0, 0, 0, 0, 0,   // tsval, tsecr
        0, 0, 9, 0,               // window, header length 9 words, echo wait
    ];
    assert_eq!(&buf[18..50], &expected);
    let f = Frame::parse(&buf[..n], None).unwrap();
    assert!(f.header.has_flag(flags::GAP_END));
    assert_eq!((f.header.seq, f.header.ack), (0x0102_0308, 0x0102_0305));
    // The sample conversation has one.
    let nak = sample::frames()
        .into_iter()
        .find(|f| f.summary.starts_with("NAK"))
        .unwrap();
    let h = Frame::parse(&nak.bytes, None).unwrap().header;
    assert_eq!(h.kind, FrameKind::Nak);
    assert!(h.has_flag(flags::GAP_END));
    assert_eq!((h.ack, h.seq), (5, 8));
}

#[test]
fn flag_bits_are_distinct_and_the_rest_reserved() {
    let defined = [
        flags::ACK,
        flags::SYN,
        flags::PROBE,
        flags::AUTH,
        flags::GAP_END,
    ];
    let mut all = 0u8;
    for f in defined {
        assert_eq!(f.count_ones(), 1);
        assert_eq!(all & f, 0, "{f:#04x} used twice");
        all |= f;
    }
    assert_eq!(flags::GAP_END, 0x10, "bit 4 (docs/wire-format.md)");
    assert_eq!(all | flags::RESERVED, 0xff);
    assert_eq!(all & flags::RESERVED, 0);
    // Reserved bits are carried, not refused: a later version may use them.
    let mut buf = [0u8; 64];
    let eth = EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        vlan: None,
        ethertype: ETHERTYPE,
    };
    let hdr = TetherHeader {
        flags: flags::ACK | flags::RESERVED,
        ..TetherHeader::new(FrameKind::Ack)
    };
    let n = emit_bare(&mut buf, &eth, &hdr, None).unwrap();
    assert_eq!(Frame::parse(&buf[..n], None).unwrap().header, hdr);
}

#[test]
fn stripped_vlan_tag_supplies_the_gid() {
    let f = &sample::frames()[2].bytes;
    // What AF_PACKET hands over: the tag removed from the frame, reported aside.
    let mut untagged = f[..12].to_vec();
    untagged.extend_from_slice(&f[16..]);
    let tag = VlanTag::from_tci(u16::from_be_bytes([f[14], f[15]]));
    let frame = Frame::parse(&untagged, Some(tag)).unwrap();
    assert_eq!(frame.gid(), Some(sample::SAMPLE_GID));
    assert_eq!(frame.ethernet.vlan.unwrap().pcp, 5);
    // Without the tag the GID is unknown, and the check (which covers it) fails.
    assert!(matches!(
        Frame::parse(&untagged, None),
        Err(WireError::BadCheck { .. })
    ));
    let other_group = VlanTag { vid: 11, ..tag };
    assert!(matches!(
        Frame::parse(&untagged, Some(other_group)),
        Err(WireError::BadCheck { .. })
    ));
}

#[test]
fn padding_after_payload_is_ignored() {
    let mut f = sample::frames()
        .into_iter()
        .find(|f| f.summary == "ACK")
        .unwrap()
        .bytes;
    let before = Frame::parse(&f, None).unwrap().header;
    f.resize(60, 0);
    assert_eq!(Frame::parse(&f, None).unwrap().header, before);
}

#[test]
fn every_single_bit_flip_is_caught() {
    for f in sample::frames() {
        // The VLAN ID (low 12 bits of the TCI at bytes 14..16), header and payload.
        let positions = (14..16)
            .flat_map(|byte| (0..8).map(move |bit| (byte, bit)))
            .filter(|&(byte, bit)| byte == 15 || bit < 4)
            .chain((18..f.bytes.len()).flat_map(|byte| (0..8).map(move |bit| (byte, bit))));
        for (byte, bit) in positions {
            {
                let mut b = f.bytes.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    Frame::parse(&b, None).is_err(),
                    "flip of bit {bit} in byte {byte} of '{}' went unnoticed",
                    f.summary
                );
            }
        }
    }
}

#[test]
fn errors_are_typed() {
    assert!(matches!(
        Frame::parse(&[0; 10], None),
        Err(WireError::Truncated { .. })
    ));
    let mut f = sample::frames()[2].bytes.clone();
    f[16] = 0x08;
    f[17] = 0x00;
    assert_eq!(Frame::parse(&f, None), Err(WireError::NotTether(0x0800)));
    let mut f = sample::frames()[2].bytes.clone();
    f[18] = 0x21;
    assert_eq!(
        Frame::parse(&f, None),
        Err(WireError::UnsupportedVersion(2))
    );
    let mut f = sample::frames()[2].bytes.clone();
    f.truncate(f.len() - 1);
    assert!(matches!(
        Frame::parse(&f, None),
        Err(WireError::Truncated { .. })
    ));
    "aa:bb".parse::<MacAddr>().unwrap_err();
    assert_eq!(
        "02:00:00:00:00:0a".parse::<MacAddr>().unwrap(),
        MacAddr([2, 0, 0, 0, 0, 10])
    );
}

#[test]
fn writer_refuses_what_does_not_fit() {
    let eth = EthernetRepr {
        dst: MacAddr::BROADCAST,
        src: MacAddr::default(),
        vlan: None,
        ethertype: ETHERTYPE,
    };
    let mut buf = [0u8; 14 + 36 + 20];
    let mut w = FrameWriter::new(&mut buf, &eth).unwrap();
    let tlp = [0u8, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0x10, 0];
    w.push_tlp_bytes(&tlp).unwrap();
    assert!(!w.fits(12));
    assert!(matches!(
        w.push_tlp_bytes(&tlp),
        Err(WireError::NoRoom { .. })
    ));
    assert_eq!(w.records(), 1);
    let n = w.finish(&TetherHeader::new(FrameKind::Data)).unwrap();
    assert_eq!(n, 14 + 36 + 16);
}

fn vlan() -> impl Strategy<Value = Option<VlanTag>> {
    proptest::option::of(
        (0u8..8, any::<bool>(), 0u16..4096).prop_map(|(pcp, dei, vid)| VlanTag { pcp, dei, vid }),
    )
}

fn kind() -> impl Strategy<Value = FrameKind> {
    proptest::sample::select(FrameKind::ALL.to_vec())
}

fn header() -> impl Strategy<Value = TetherHeader> {
    (
        kind(),
        any::<u8>(),
        any::<[u32; 6]>(),
        any::<u16>(),
        any::<u8>(),
    )
        .prop_map(|(kind, f, v, window, echo_wait)| TetherHeader {
            kind,
            flags: f & !flags::AUTH,
            epoch: v[0],
            peer_epoch: v[1],
            seq: v[2],
            ack: v[3],
            tsval: v[4],
            tsecr: v[5],
            window,
            echo_wait,
        })
}

fn device() -> impl Strategy<Value = DeviceInfo> {
    (any::<[u8; 3]>(), any::<[u16; 5]>(), 0u32..1 << 24).prop_map(|(b, w, class_code)| DeviceInfo {
        slot: b[0],
        flags: b[1],
        revision: b[2],
        gid: w[0],
        vendor_id: w[1],
        device_id: w[2],
        subsystem_vendor_id: w[3],
        subsystem_id: w[4],
        class_code,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn data_frames_round_trip(v in vlan(), mut hdr in header(), tlps in proptest::collection::vec(any_tlp(), 0..8)) {
        hdr.kind = FrameKind::Data;
        let eth = EthernetRepr { dst: MacAddr([2,0,0,0,0,2]), src: MacAddr([2,0,0,0,0,1]), vlan: v, ethertype: ETHERTYPE };
        let mut buf = vec![0u8; 9018 * 4];
        let mut w = FrameWriter::new(&mut buf, &eth).unwrap();
        for t in &tlps {
            w.push_tlp(&t.as_tlp()).unwrap();
        }
        let n = w.finish(&hdr).unwrap();
        let frame = Frame::parse(&buf[..n], None).unwrap();
        prop_assert_eq!(frame.ethernet, eth);
        prop_assert_eq!(frame.header, hdr);
        let Body::Data(records) = frame.body().unwrap() else { panic!() };
        let back: Vec<_> = records.map(|r| r.unwrap().tlp().unwrap()).collect();
        prop_assert_eq!(back.len(), tlps.len());
        for (a, b) in back.iter().zip(&tlps) {
            prop_assert_eq!(*a, b.as_tlp());
        }
    }

    #[test]
    fn info_round_trips(hdr in header(), devices in proptest::collection::vec(device(), 0..20), vals in any::<[u16; 6]>(), id in any::<u64>(), role in 1u8..=3) {
        let hdr = TetherHeader { kind: FrameKind::Info, ..hdr };
        let eth = EthernetRepr { dst: MacAddr::BROADCAST, src: MacAddr([2,0,0,0,0,1]), vlan: Some(VlanTag { pcp: 0, dei: false, vid: 4093 }), ethertype: ETHERTYPE };
        let info = InfoRepr { role: BridgeRole::from_bits(role).unwrap(), flags: vals[0], bridge_id: id, mtu: vals[1], max_tlps_per_frame: vals[2], interval_ms: vals[3], max_payload: vals[4], max_read_request: vals[5] };
        let mut buf = vec![0u8; 1518];
        let n = emit_info(&mut buf, &eth, &hdr, &info, &devices, None).unwrap();
        let frame = Frame::parse(&buf[..n], None).unwrap();
        let Body::Info(back) = frame.body().unwrap() else { panic!() };
        prop_assert_eq!(back.repr, info);
        prop_assert_eq!(back.devices().collect::<Vec<_>>(), devices);
    }

    #[test]
    fn ctrl_round_trips(op in 1u8..=3, status in 0u8..=3, gid in 1u16..=4094, rid in any::<u32>(), target in any::<u64>(), slot in any::<u8>()) {
        let c = CtrlRepr { op: CtrlOp::from_bits(op).unwrap(), status: CtrlStatus::from_bits(status).unwrap(), gid, request_id: rid, target, slot };
        let eth = EthernetRepr { dst: MacAddr::BROADCAST, src: MacAddr::default(), vlan: None, ethertype: ETHERTYPE };
        let mut buf = [0u8; 128];
        let n = emit_ctrl(&mut buf, &eth, &TetherHeader::new(FrameKind::Ctrl), &c, None).unwrap();
        let Body::Ctrl(back) = Frame::parse(&buf[..n], None).unwrap().body().unwrap() else { panic!() };
        prop_assert_eq!(back, c);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), tci in proptest::option::of(any::<u16>())) {
        let _ = parse_all(&bytes);
        let _ = Frame::parse(&bytes, tci.map(VlanTag::from_tci));
    }

    #[test]
    fn mutated_sample_frames_never_panic(which in any::<usize>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>(), fix_check in any::<bool>()) {
        let frames = sample::frames();
        let mut b = frames[which % frames.len()].bytes.clone();
        for (at, x) in flips {
            let i = 18 + at % (b.len() - 18);
            b[i] ^= x;
        }
        if fix_check {
            // Recompute the check so that mutations reach the payload decoders.
            let end = b.len();
            let gid = u16::from_be_bytes([b[14], b[15]]) & 0xfff;
            b[50..54].fill(0);
            let c = frame_check(gid, &b[18..end]);
            b[50..54].copy_from_slice(&c.to_be_bytes());
        }
        let cut = cut % (b.len() + 1);
        let _ = parse_all(&b);
        let _ = parse_all(&b[..cut]);
    }
}

/// The sample frames again, each written for a group with `key`.
fn keyed_samples(key: &AuthKey) -> Vec<(String, Vec<u8>)> {
    sample::frames_keyed(key)
        .into_iter()
        .map(|f| (f.summary.to_string(), f.bytes))
        .collect()
}

#[test]
fn keyed_frames_carry_a_tag_that_checks_only_under_their_key() {
    let key = AuthKey::from_secret(&[0x11; 32]);
    let other = AuthKey::from_secret(&[0x12; 32]);
    for (summary, bytes) in keyed_samples(&key) {
        let f = Frame::parse(&bytes, None).unwrap();
        assert!(f.header.has_flag(flags::AUTH), "{summary}");
        assert_eq!(
            f.tag.map(|t| t.as_slice()),
            Some(&bytes[bytes.len() - TAG_LEN..])
        );
        // The body reads as without a tag.
        parse_all(&bytes).unwrap();
        assert_eq!(f.authenticate(Some(&key)), Ok(()), "{summary}");
        assert_eq!(f.authenticate(Some(&other)), Err(AuthRefusal::Bad));
        assert_eq!(f.authenticate(None), Err(AuthRefusal::Unexpected));
        // Padding after the tag is ignored.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 40, 0xa5);
        let p = Frame::parse(&padded, None).unwrap();
        assert_eq!(p.authenticate(Some(&key)), Ok(()));
        // The check field is 0 (the tag covers the frame); any other value is refused.
        assert_eq!(bytes[18 + 32..18 + 36], [0; 4], "{summary}");
        let mut checked = bytes.clone();
        let crc = frame_check(
            f.gid().unwrap(),
            &bytes[18..18 + HEADER_LEN + f.payload.len()],
        );
        checked[18 + 32..18 + 36].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            Frame::parse(&checked, None),
            Err(WireError::BadCheck { computed: 0, .. })
        ));
        // A tag cut short is a truncated frame.
        assert!(matches!(
            Frame::parse(&bytes[..bytes.len() - 1], None),
            Err(WireError::Truncated { .. })
        ));
    }
    // An untagged frame in a keyed group is refused as such.
    let plain = &sample::frames()[0].bytes;
    let f = Frame::parse(plain, None).unwrap();
    assert_eq!(f.authenticate(Some(&key)), Err(AuthRefusal::Missing));
    assert_eq!(f.authenticate(None), Ok(()));
}

#[test]
fn every_bit_the_tag_covers_is_checked() {
    let key = AuthKey::from_secret(&[0x21; 32]);
    for (summary, bytes) in keyed_samples(&key) {
        // Everything but the PCP and DEI bits (the high 4 bits of byte 14), which a
        // switch may rewrite: addresses, VLAN ID, EtherType, header, payload, tag.
        let positions = (0..bytes.len())
            .flat_map(|byte| (0..8).map(move |bit| (byte, bit)))
            .filter(|&(byte, bit)| !(byte == 14 && bit >= 4));
        for (byte, bit) in positions {
            let mut b = bytes.clone();
            b[byte] ^= 1 << bit;
            let taken = Frame::parse(&b, None).is_ok_and(|f| f.authenticate(Some(&key)).is_ok());
            assert!(
                !taken,
                "flip of bit {bit} in byte {byte} of keyed '{summary}' went unnoticed"
            );
        }
        // The PCP is not covered: a switch rewriting it keeps the frame valid.
        let mut b = bytes.clone();
        b[14] ^= 0xe0;
        let f = Frame::parse(&b, None).unwrap();
        assert_eq!(f.authenticate(Some(&key)), Ok(()));
    }
}

#[test]
fn a_keyed_writer_keeps_room_for_the_trailer() {
    let key = AuthKey::from_secret(&[0x31; 32]);
    let eth = EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        vlan: Some(VlanTag {
            pcp: 0,
            dei: false,
            vid: 7,
        }),
        ethertype: ETHERTYPE,
    };
    let session_key = key.session_key(eth.src);
    let mut nonces = NonceSeq::new(1, 2);
    let limit = max_frame_len(1500);
    let mut buf = vec![0u8; limit];
    let plain_room = FrameWriter::new(&mut buf, &eth).unwrap().room();
    let room = FrameWriter::keyed(&mut buf, &eth, Some(&key))
        .unwrap()
        .room();
    assert_eq!(room + TAG_LEN, plain_room);
    let seal = Seal {
        key: &session_key,
        nonce: nonces.next(),
    };
    let mut w = FrameWriter::sealed(&mut buf, &eth, Some(seal)).unwrap();
    assert_eq!(w.room() + SEAL_LEN, plain_room);
    // Fill the payload to the last byte: nonce and tag still fit.
    let room = w.room();
    w.append_with(|b| {
        b[..room].fill(0x5a);
        Ok(room)
    })
    .unwrap();
    let n = w.finish(&TetherHeader::new(FrameKind::Data)).unwrap();
    assert_eq!(n, limit);
    let f = Frame::parse(&buf[..n], None).unwrap();
    assert_eq!(f.nonce, Some(&seal.nonce.0));
    assert_eq!(f.authenticate(Some(&key)), Ok(()));
    assert_eq!(f.authenticate_sealed(&session_key), Ok(()));
    // Another sender's key (the receiver's own, say) does not check it.
    let theirs = key.session_key(eth.dst);
    assert_eq!(f.authenticate_sealed(&theirs), Err(AuthRefusal::Bad));
    // The same frame with no trailer: refused as untagged.
    let mut plain = vec![0u8; limit];
    let mut w = FrameWriter::new(&mut plain, &eth).unwrap();
    w.append_with(|b| {
        b[..room].fill(0x5a);
        Ok(room)
    })
    .unwrap();
    let pn = w.finish(&TetherHeader::new(FrameKind::Data)).unwrap();
    let p = Frame::parse(&plain[..pn], None).unwrap();
    assert_eq!(
        p.authenticate_sealed(&session_key),
        Err(AuthRefusal::Missing)
    );
    // The same frame sealed again under the next nonce: another tag, also good.
    let again = Seal {
        key: &session_key,
        nonce: nonces.next(),
    };
    let mut buf2 = vec![0u8; limit];
    let mut w = FrameWriter::sealed(&mut buf2, &eth, Some(again)).unwrap();
    w.append_with(|b| {
        b[..room].fill(0x5a);
        Ok(room)
    })
    .unwrap();
    let n2 = w.finish(&TetherHeader::new(FrameKind::Data)).unwrap();
    assert_ne!(buf[n - TAG_LEN..n], buf2[n2 - TAG_LEN..n2]);
    let f2 = Frame::parse(&buf2[..n2], None).unwrap();
    assert_eq!(f2.authenticate_sealed(&session_key), Ok(()));
    // A tag and nonce moved from one onto the other do not check.
    let mut mixed = buf2[..n2].to_vec();
    mixed[n2 - SEAL_LEN..].copy_from_slice(&buf[n - SEAL_LEN..n]);
    mixed[n2 - SEAL_LEN..n2 - TAG_LEN].copy_from_slice(&again.nonce.0);
    let m = Frame::parse(&mixed, None).unwrap();
    assert_eq!(m.authenticate_sealed(&session_key), Err(AuthRefusal::Bad));

    // Each kind takes only its own kind of key.
    let mut w = FrameWriter::keyed(&mut buf, &eth, Some(&key)).unwrap();
    w.append_with(|_| Ok(0)).unwrap();
    assert!(matches!(
        w.finish(&TetherHeader::new(FrameKind::Ack)),
        Err(WireError::WrongKind { .. })
    ));
    let w = FrameWriter::sealed(&mut buf, &eth, Some(seal)).unwrap();
    assert!(matches!(
        w.finish(&TetherHeader::new(FrameKind::Info)),
        Err(WireError::WrongKind { .. })
    ));
    // A session key seals its sender's frames only.
    let back = EthernetRepr {
        dst: eth.src,
        src: eth.dst,
        ..eth
    };
    assert!(matches!(
        FrameWriter::sealed(&mut buf, &back, Some(seal)),
        Err(WireError::NotTheSender { .. })
    ));
    // A buffer with no room for header and trailer is refused.
    let mut small = vec![0u8; 18 + HEADER_LEN + TAG_LEN - 1];
    assert!(FrameWriter::keyed(&mut small, &eth, Some(&key)).is_err());
    let mut small = vec![0u8; 18 + HEADER_LEN + SEAL_LEN - 1];
    assert!(FrameWriter::sealed(&mut small, &eth, Some(seal)).is_err());
}
