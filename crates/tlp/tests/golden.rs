//! Hand-assembled TLPs, bit by bit from the PCIe Base Specification's header figures,
//! decoded and re-encoded. These pin the exact layout; the property tests pin consistency.

use tlp::*;

fn bdf(b: u8, d: u8, f: u8) -> Bdf {
    Bdf::new(b, d, f).unwrap()
}

fn round_trip(bytes: &[u8]) -> Tlp<'_> {
    let tlp = Tlp::parse(bytes).unwrap_or_else(|e| panic!("parse {bytes:02x?}: {e}"));
    let mut out = vec![0u8; tlp.buffer_len()];
    assert_eq!(tlp.emit(&mut out).unwrap(), bytes.len());
    assert_eq!(out, bytes, "re-encoding differs");
    tlp
}

#[test]
fn mrd32() {
    let bytes = [
        0x00, 0x00, 0x00, 0x01, // Fmt 000 Type 00000, Length 1
        0x01, 0x00, 0x0c, 0x0f, // requester 01:00.0, tag 12, Last BE 0 First BE f
        0xfe, 0xdc, 0x10, 0x00, // address 0xfedc1000
    ];
    let t = round_trip(&bytes);
    assert_eq!(
        t.header,
        Header::MemRead(MemRead {
            requester: bdf(1, 0, 0),
            tag: Tag::new(12).unwrap(),
            address: 0xfedc_1000,
            length_dw: 1,
            first_be: 0xf,
            last_be: 0,
            locked: false,
            hint: None,
        })
    );
    assert_eq!(
        t.to_string(),
        "MRd32 01:00.0 tag 12 addr 0xfedc1000 len 1 BE f/0"
    );
}

#[test]
fn mwr64_with_data() {
    let bytes = [
        0x60, 0x00, 0x00, 0x02, // Fmt 011 Type 00000, Length 2
        0x00, 0x08, 0x00, 0xff, // requester 00:01.0, Last BE f First BE f
        0x00, 0x00, 0x00, 0x01, // address [63:32]
        0x23, 0x45, 0x67, 0x80, // address [31:2]
        1, 2, 3, 4, 5, 6, 7, 8,
    ];
    let t = round_trip(&bytes);
    match t.header {
        Header::MemWrite(w) => {
            assert_eq!(w.address, 0x1_2345_6780);
            assert_eq!(w.requester, bdf(0, 1, 0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.payload, &[1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn length_zero_means_1024_dw() {
    let mut bytes = vec![
        0x40, 0x00, 0x00, 0x00, 0, 0, 0, 0xff, 0x00, 0x10, 0x00, 0x00,
    ];
    bytes.resize(12 + 4096, 0xab);
    let t = round_trip(&bytes);
    assert_eq!(t.payload.len(), 4096);
}

#[test]
fn completion_with_data() {
    let bytes = [
        0x4a, 0x00, 0x00, 0x01, // Fmt 010 Type 01010 (CplD), Length 1
        0x01, 0x00, 0x00, 0x04, // completer 01:00.0, SC, BCM 0, byte count 4
        0x00, 0x00, 0x0c, 0x00, // requester 00:00.0, tag 12, lower address 0
        0xde, 0xad, 0xbe, 0xef,
    ];
    let t = round_trip(&bytes);
    assert_eq!(
        t.header,
        Header::Completion(Completion {
            completer: bdf(1, 0, 0),
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: 4,
            requester: bdf(0, 0, 0),
            tag: Tag::new(12).unwrap(),
            lower_address: 0,
            locked: false,
        })
    );
    assert_eq!(t.header.mnemonic(true), "CplD");
}

#[test]
fn completion_ur_and_byte_count_4096() {
    let bytes = [
        0x0a, 0x00, 0x00, 0x00, // Cpl, no data
        0x01, 0x00, 0x20, 0x00, // status 001 (UR), byte count 0 = 4096
        0x00, 0x00, 0x05, 0x7f, // tag 5, lower address 0x7f
    ];
    let t = round_trip(&bytes);
    match t.header {
        Header::Completion(c) => {
            assert_eq!(c.status, CompletionStatus::UnsupportedRequest);
            assert_eq!(c.byte_count, 4096);
            assert_eq!(c.lower_address, 0x7f);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_type0_extended_register() {
    let bytes = [
        0x04, 0x00, 0x00, 0x01, // CfgRd0, Length 1
        0x00, 0x00, 0x01, 0x0f, // requester 00:00.0, tag 1, First BE f
        0x01, 0x08, 0x01, 0x04, // target 01:01.0, ext reg 1, reg 1 -> offset 0x104
    ];
    let t = round_trip(&bytes);
    match t.header {
        Header::ConfigRead(c) => {
            assert!(!c.type1);
            assert_eq!(c.target, bdf(1, 1, 0));
            assert_eq!(c.register, 0x104);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_type1_write() {
    let bytes = [
        0x45, 0x00, 0x00, 0x01, 0x00, 0x00, 0x02, 0x03, 0x02, 0x00, 0x00, 0x10, 0x11, 0x22, 0x33,
        0x44,
    ];
    let t = round_trip(&bytes);
    assert_eq!(t.header.mnemonic(true), "CfgWr1");
}

#[test]
fn assert_inta_message() {
    let bytes = [
        0x34, 0x00, 0x00, 0x00, // Fmt 001 Type 10100 (Msg, local)
        0x01, 0x00, 0x00, 0x20, // requester 01:00.0, code Assert_INTA
        0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let t = round_trip(&bytes);
    match t.header {
        Header::Message(m) => {
            assert_eq!(m.as_intx(), Some((IntxPin::A, true)));
            assert_eq!(m, Message::intx(bdf(1, 0, 0), IntxPin::A, true));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn vendor_defined_message_routed_by_id() {
    let m = Message::vendor_defined(bdf(1, 0, 0), true, bdf(0, 0, 0), 0x1af4, 0xdead_beef);
    let data = [9u8; 8];
    let tlp = Tlp::new(Header::Message(m), &data);
    let mut buf = [0u8; 32];
    let n = tlp.emit(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0x72, 0x00, 0x00, 0x02]); // MsgD, routed by ID, 2 DW
    assert_eq!(buf[7], 0x7f);
    let back = Tlp::parse(&buf[..n]).unwrap();
    match back.header {
        Header::Message(m) => assert_eq!(
            m.as_vendor_defined(),
            Some((true, bdf(0, 0, 0), 0x1af4, 0xdead_beef))
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ten_bit_tag_and_attributes() {
    let bytes = [
        0x00, 0xdc, 0x30, 0x01, // T9=1 TC=5 T8=1 IDO=1, RO=1 NS=1
        0x00, 0x00, 0xa5, 0x0f, 0x00, 0x00, 0x10, 0x00,
    ];
    let t = round_trip(&bytes);
    assert_eq!(t.flags.traffic_class, 5);
    assert!(t.flags.attributes.relaxed_ordering);
    assert!(t.flags.attributes.no_snoop);
    assert!(t.flags.attributes.id_based_ordering);
    match t.header {
        Header::MemRead(r) => assert_eq!(r.tag.value(), 0x3a5),
        other => panic!("{other:?}"),
    }
}

#[test]
fn atomics() {
    // FetchAdd 32-bit at 0x1000, CAS 64-bit operands at 0x2_0000_0010.
    let fa = [0x4c, 0, 0, 1, 0, 0, 7, 0, 0, 0, 0x10, 0x00, 0, 0, 0, 1];
    let t = round_trip(&fa);
    assert_eq!(t.header.mnemonic(true), "FetchAdd");
    let mut cas = vec![0x6e, 0, 0, 4, 0, 0, 8, 0, 0, 0, 0, 2, 0, 0, 0, 0x10];
    cas.extend_from_slice(&[0u8; 16]);
    let t = round_trip(&cas);
    assert_eq!(t.header.mnemonic(true), "CAS");
    // A FetchAdd with a 64-bit operand must be 8-byte aligned.
    let bad = [
        0x4c, 0, 0, 2, 0, 0, 7, 0, 0, 0, 0x10, 0x04, 0, 0, 0, 1, 0, 0, 0, 0,
    ];
    assert_eq!(
        Tlp::parse(&bad),
        Err(ParseError::MisalignedAtomic {
            address: 0x1004,
            operand_size: 8
        })
    );
}

#[test]
fn digest_is_carried() {
    let bytes = [
        0x00, 0x00, 0x80, 0x01, 0, 0, 0, 0x0f, 0, 0, 0x10, 0, 0x12, 0x34, 0x56, 0x78,
    ];
    let t = round_trip(&bytes);
    assert_eq!(t.digest, Some(0x1234_5678));
}

#[test]
fn malformed_inputs_are_typed_errors() {
    assert_eq!(
        Tlp::parse(&[0x00, 0x00]),
        Err(ParseError::Truncated { needed: 4, got: 2 })
    );
    // Reserved type.
    assert!(matches!(
        Tlp::parse(&[0x1b, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0, 0]),
        Err(ParseError::ReservedType { .. })
    ));
    // Prefix.
    assert_eq!(
        Tlp::parse(&[0x80, 0, 0, 0]),
        Err(ParseError::UnsupportedPrefix)
    );
    // MWr with Length 2 but 4 bytes of data.
    assert_eq!(
        Tlp::parse(&[0x40, 0, 0, 2, 0, 0, 0, 0xff, 0, 0, 0x10, 0, 1, 2, 3, 4]),
        Err(ParseError::Truncated {
            needed: 20,
            got: 16
        })
    );
    // Trailing garbage.
    assert_eq!(
        Tlp::parse(&[0, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0x10, 0, 9]),
        Err(ParseError::LengthMismatch {
            expected: 12,
            actual: 13
        })
    );
    // Length 1 with a non-zero Last BE.
    assert!(matches!(
        Tlp::parse(&[0, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0x10, 0]),
        Err(ParseError::InvalidByteEnables { .. })
    ));
    // 64-bit header for an address below 4 GiB.
    assert_eq!(
        Tlp::parse(&[0x20, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0, 0, 0, 0, 0x10, 0]),
        Err(ParseError::Address64Below4G { address: 0x1000 })
    );
    // MRd of 2 DW starting 4 bytes before a page boundary.
    assert!(matches!(
        Tlp::parse(&[0, 0, 0, 2, 0, 0, 0, 0xff, 0, 0, 0x1f, 0xfc]),
        Err(ParseError::CrossesFourKiB { .. })
    ));
    // Completion status 011 is reserved.
    assert_eq!(
        Tlp::parse(&[0x0a, 0, 0, 0, 0, 0, 0x60, 4, 0, 0, 0, 0]),
        Err(ParseError::ReservedCompletionStatus(3))
    );
    // Message routing 110 is reserved.
    assert_eq!(
        Tlp::parse(&[0x36, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(ParseError::ReservedMessageRouting(6))
    );
    // Config request with TC 1.
    assert_eq!(
        Tlp::parse(&[0x04, 0x10, 0, 1, 0, 0, 0, 0xf, 0, 0, 0, 0]),
        Err(ParseError::FieldNotAllowed { field: "TC" })
    );
    // IORd with 4DW header is a reserved type.
    assert!(matches!(
        Tlp::parse(&[0x22, 0, 0, 1, 0, 0, 0, 0xf, 0, 0, 0, 1, 0, 0, 0, 0]),
        Err(ParseError::ReservedType { .. })
    ));
}

#[test]
fn emit_picks_address_format() {
    let mut buf = [0u8; 16];
    for (address, size) in [(0xffff_fffc_u64, 12), (0x1_0000_0000, 16)] {
        let t = Tlp::new(
            Header::MemRead(MemRead {
                requester: Bdf::default(),
                tag: Tag::default(),
                address,
                length_dw: 1,
                first_be: 0xf,
                last_be: 0,
                locked: false,
                hint: None,
            }),
            &[],
        );
        assert_eq!(t.emit(&mut buf).unwrap(), size);
    }
}

#[test]
fn emit_rejects_invalid_reprs() {
    let mut buf = [0u8; 64];
    let bad_len = Tlp::new(
        Header::MemWrite(MemWrite {
            requester: Bdf::default(),
            tag: Tag::default(),
            address: 0x1000,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        }),
        &[1, 2, 3],
    );
    assert!(bad_len.emit(&mut buf).is_err());
    let small = Tlp::new(
        Header::MemWrite(MemWrite {
            requester: Bdf::default(),
            tag: Tag::default(),
            address: 0x1000,
            first_be: 0xf,
            last_be: 0,
            hint: None,
        }),
        &[1, 2, 3, 4],
    );
    assert_eq!(
        small.emit(&mut buf[..8]),
        Err(EmitError::BufferTooSmall { needed: 16, got: 8 })
    );
    // A read carries no data: given a payload it would go out as a write.
    let read_with_data = Tlp::new(
        Header::MemRead(MemRead {
            requester: Bdf::default(),
            tag: Tag::default(),
            address: 0x1000,
            length_dw: 1,
            first_be: 0xf,
            last_be: 0,
            locked: false,
            hint: None,
        }),
        &[1, 2, 3, 4],
    );
    assert_eq!(
        read_with_data.emit(&mut buf),
        Err(EmitError::Invalid(ParseError::InvalidLength {
            length_dw: 1
        }))
    );
}
