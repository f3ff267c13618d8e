//! The PCIe receiver rules of Base Specification §2.2 (header fields), §2.2.7 (I/O and
//! configuration requests), §2.2.8 (messages) and §2.2.9 (completions), one test per
//! rule, on hand-assembled headers. docs/tlp.md lists the same rules.

use tlp::*;

/// DW0 of a 4DW Msg (no data) with routing `r` and the given byte 1 (T9 TC T8 Attr2 LN TH).
fn msg(routing: u8, byte1: u8, code: u8) -> [u8; 16] {
    [
        0x30 | routing,
        byte1,
        0,
        0,
        0x01,
        0x00,
        0x00,
        code,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

#[test]
fn intx_pm_and_error_messages_need_tc0() {
    use message_code::*;
    // TC sits in bits 6:4 of byte 1.
    for code in [
        ASSERT_INTA,
        0x21,
        0x22,
        ASSERT_INTD,
        DEASSERT_INTA,
        DEASSERT_INTD,
        PM_ACTIVE_STATE_NAK,
        PM_PME,
        PME_TURN_OFF,
        PME_TO_ACK,
        ERR_COR,
        ERR_NONFATAL,
        ERR_FATAL,
    ] {
        let routing = match code {
            0x20..=0x27 | PM_ACTIVE_STATE_NAK => 0b100,
            PME_TURN_OFF => 0b011,
            PME_TO_ACK => 0b101,
            _ => 0b000,
        };
        assert!(
            Tlp::parse(&msg(routing, 0x00, code)).is_ok(),
            "code {code:#x}"
        );
        for tc in 1..8u8 {
            assert_eq!(
                Tlp::parse(&msg(routing, tc << 4, code)),
                Err(ParseError::FieldNotAllowed { field: "TC" }),
                "code {code:#x} TC{tc}"
            );
        }
        // emit refuses the same repr.
        let good = msg(routing, 0x00, code);
        let mut t = Tlp::parse(&good).unwrap();
        t.flags.traffic_class = 2;
        assert_eq!(
            t.to_vec(),
            Err(EmitError::Invalid(ParseError::FieldNotAllowed {
                field: "TC"
            }))
        );
    }
    // Other messages may use any TC: a Vendor_Defined Type 1 message on TC7.
    let vdm = msg(0b010, 0x70, VENDOR_DEFINED_TYPE1);
    let t = Tlp::parse(&vdm).unwrap();
    assert_eq!(t.flags.traffic_class, 7);
}

/// CfgRd0 (Length 1, First BE f) with the given byte 1.
fn cfg_rd(byte1: u8) -> [u8; 12] {
    [
        0x04, byte1, 0x00, 0x01, 0x00, 0x00, 0x01, 0x0f, 0x01, 0x00, 0x00, 0x10,
    ]
}

/// IORd (Length 1, First BE 3) with the given byte 1.
fn io_rd(byte1: u8) -> [u8; 12] {
    [
        0x02, byte1, 0x00, 0x01, 0x00, 0x00, 0x02, 0x03, 0x00, 0x00, 0xc0, 0x00,
    ]
}

#[test]
fn reserved_bits_of_io_config_and_messages_are_ignored() {
    // Byte 1: bit 2 Attr[2] (IDO), bit 1 LN, bit 0 TH.
    let (th, ln, ido) = (0x01u8, 0x02u8, 0x04u8);
    for (plain, with) in [
        (cfg_rd(0).to_vec(), cfg_rd(th).to_vec()),
        (cfg_rd(0).to_vec(), cfg_rd(ln).to_vec()),
        (cfg_rd(0).to_vec(), cfg_rd(ido).to_vec()),
        (cfg_rd(0).to_vec(), cfg_rd(th | ln | ido).to_vec()),
        (io_rd(0).to_vec(), io_rd(th).to_vec()),
        (io_rd(0).to_vec(), io_rd(ln | ido).to_vec()),
        (
            msg(0b100, 0, message_code::ASSERT_INTA).to_vec(),
            msg(0b100, th, message_code::ASSERT_INTA).to_vec(),
        ),
    ] {
        let expected = Tlp::parse(&plain).unwrap();
        let got = Tlp::parse(&with).unwrap_or_else(|e| panic!("{with:02x?}: {e}"));
        assert_eq!(got, expected, "{with:02x?}");
        // Re-emitted with the reserved bits zero.
        assert_eq!(got.to_vec().unwrap(), plain);
    }
    // A configuration write with TH, LN and IDO set: the same.
    let mut wr = vec![
        0x44, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x0f, 0x01, 0x00, 0x00, 0x10,
    ];
    wr.extend_from_slice(&[1, 2, 3, 4]);
    let t = Tlp::parse(&wr).unwrap();
    assert_eq!(t.flags, HeaderFlags::default());
    assert_eq!(t.to_vec().unwrap()[1], 0x00);
}

#[test]
fn io_and_config_attributes_tc_and_at_are_still_checked() {
    // Attr[1:0] (RO, NS) must be 00b, TC 000b: these are fields, not reserved bits.
    let mut ro = cfg_rd(0);
    ro[2] = 0x20;
    assert_eq!(
        Tlp::parse(&ro),
        Err(ParseError::FieldNotAllowed { field: "Attr" })
    );
    assert_eq!(
        Tlp::parse(&io_rd(0x10)),
        Err(ParseError::FieldNotAllowed { field: "TC" })
    );
    let mut at = io_rd(0);
    at[2] = 0x04;
    assert_eq!(
        Tlp::parse(&at),
        Err(ParseError::FieldNotAllowed { field: "AT" })
    );
}

#[test]
fn io_and_config_requests_need_length_one() {
    for (mut bytes, name) in [(cfg_rd(0), "CfgRd"), (io_rd(0), "IORd")] {
        for (length_field, length_dw) in [(2u8, 2u16), (0, 1024), (0x7f, 0x7f)] {
            bytes[3] = length_field;
            assert_eq!(
                Tlp::parse(&bytes),
                Err(ParseError::InvalidLength { length_dw }),
                "{name} Length {length_field}"
            );
        }
    }
    // Writes too: an IOWr of Length 2 with its two DWs.
    let mut iowr = vec![0x42, 0, 0, 2, 0, 0, 2, 0x0f, 0, 0, 0xc0, 0];
    iowr.extend_from_slice(&[0; 8]);
    assert_eq!(
        Tlp::parse(&iowr),
        Err(ParseError::InvalidLength { length_dw: 2 })
    );
}

#[test]
fn four_dw_completions_io_and_config_are_reserved_types() {
    // A 4DW header whose DW2 (the "high address") is 0 must not be reported as a
    // 64-bit address below 4 GiB: these types have no 4DW form at all.
    for (byte0, type_) in [
        (0x2a, 0x0a), // Cpl
        (0x2b, 0x0b), // CplLk
        (0x22, 0x02), // IORd
        (0x24, 0x04), // CfgRd0
        (0x25, 0x05), // CfgRd1
    ] {
        let bytes = [
            byte0, 0, 0, 1, 0x01, 0x00, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0x40,
        ];
        assert_eq!(
            Tlp::parse(&bytes),
            Err(ParseError::ReservedType { fmt: 0b001, type_ }),
            "{byte0:#x}"
        );
    }
    // CplD with a 4DW header.
    let mut cpld = vec![
        0x6a, 0, 0, 1, 0x01, 0x00, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    cpld.extend_from_slice(&[0; 4]);
    assert_eq!(
        Tlp::parse(&cpld),
        Err(ParseError::ReservedType {
            fmt: 0b011,
            type_: 0x0a
        })
    );
    // A real 64-bit memory request below 4 GiB is still that.
    assert_eq!(
        Tlp::parse(&[0x20, 0, 0, 1, 0, 0, 0, 0x0f, 0, 0, 0, 0, 0, 0, 0x10, 0]),
        Err(ParseError::Address64Below4G { address: 0x1000 })
    );
}

#[test]
fn completions_and_messages_with_address_type_are_refused() {
    // AT sits in bits 3:2 of byte 2.
    let cpl = [
        0x0a, 0x00, 0x04, 0x00, 0x01, 0x00, 0x00, 0x04, 0x00, 0x00, 0x05, 0x00,
    ];
    assert_eq!(
        Tlp::parse(&cpl),
        Err(ParseError::FieldNotAllowed { field: "AT" })
    );
    let mut m = msg(0b100, 0, message_code::ASSERT_INTA);
    m[2] = 0x08;
    assert_eq!(
        Tlp::parse(&m),
        Err(ParseError::FieldNotAllowed { field: "AT" })
    );
    // emit refuses them too.
    let mut ok = cpl;
    ok[2] = 0;
    let mut repr = Tlp::parse(&ok).unwrap();
    for at in 1..4 {
        repr.flags.address_type = at;
        assert_eq!(
            repr.to_vec(),
            Err(EmitError::Invalid(ParseError::FieldNotAllowed {
                field: "AT"
            })),
            "Cpl AT {at}"
        );
    }
    let mut repr = Tlp::new(
        Header::Message(Message::intx(Bdf::default(), IntxPin::B, true)),
        &[],
    );
    for at in 1..4 {
        repr.flags.address_type = at;
        assert!(repr.to_vec().is_err(), "Msg AT {at}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// The strategies that the other crates' tests use generate only what a transmitter
    /// may send: no AT = 11b, AT = 00b on completions and messages (and I/O and
    /// configuration requests), TC0 on INTx, power-management and error messages.
    #[test]
    fn strategies_generate_only_transmittable_tlps(t in tlp::strategies::any_tlp()) {
        let f = t.flags;
        proptest::prop_assert!(f.address_type < 3, "{:?}", t);
        match t.header {
            Header::MemRead(_) | Header::MemWrite(_) | Header::Atomic(_) => {}
            Header::Message(m) => {
                proptest::prop_assert_eq!(f.address_type, 0);
                let tc0 = matches!(m.code, 0x14 | 0x18 | 0x19 | 0x1b | 0x20..=0x27 | 0x30 | 0x31 | 0x33);
                proptest::prop_assert!(!tc0 || f.traffic_class == 0, "{:?}", t);
            }
            _ => proptest::prop_assert_eq!(f.address_type, 0),
        }
    }
}

#[test]
fn messages_with_reserved_routing_terminate_as_unsupported_not_malformed() {
    for routing in [0b110u8, 0b111] {
        let e = Tlp::parse(&msg(routing, 0, message_code::ASSERT_INTA)).unwrap_err();
        assert_eq!(e, ParseError::ReservedMessageRouting(routing));
        assert!(!e.is_malformed(), "{e}");
    }
    // The malformed ones stay malformed.
    for bytes in [
        &msg(0b100, 0x10, message_code::ERR_FATAL)[..],
        &cfg_rd(0x10)[..],
        &[0x2a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0][..],
        &[0x00, 0x00][..],
    ] {
        let e = Tlp::parse(bytes).unwrap_err();
        assert!(e.is_malformed(), "{e}");
    }
}

#[test]
fn reserved_address_type_in_memory_requests_is_an_unsupported_request() {
    // MRd, requester 01:00.0, tag 0x2a, AT = 11b (byte 2 bits 3:2).
    let mrd = [
        0x00, 0x00, 0x0c, 0x01, 0x01, 0x00, 0x2a, 0x0f, 0xfe, 0xdc, 0x10, 0x00,
    ];
    let e = Tlp::parse(&mrd).unwrap_err();
    let requester = Bdf::new(1, 0, 0).unwrap();
    assert_eq!(
        e,
        ParseError::ReservedAddressType {
            transaction: Some(UrAnswer {
                requester,
                tag: Tag::new(0x2a).unwrap(),
                byte_count: 4
            })
        }
    );
    assert!(!e.is_malformed());
    // Malformed as well (one DW with Last BE != 0000): malformed first (§2.3.1).
    let mut bad = mrd;
    bad[7] = 0x1f;
    let e = Tlp::parse(&bad).unwrap_err();
    assert!(e.is_malformed(), "{e}");
    assert_eq!(e.ur_answer(), None);
    // A MWr has nobody to answer.
    let mwr = [
        0x40, 0x00, 0x0c, 0x01, 0x01, 0x00, 0x00, 0x0f, 0xfe, 0xdc, 0x10, 0x00, 1, 2, 3, 4,
    ];
    assert_eq!(
        Tlp::parse(&mwr),
        Err(ParseError::ReservedAddressType { transaction: None })
    );
    // AT 01b and 10b stay legal on memory requests, and emit never writes 11b.
    for at in [1u8, 2] {
        let mut b = mrd;
        b[2] = at << 2;
        let t = Tlp::parse(&b).unwrap();
        assert_eq!(t.flags.address_type, at);
        assert_eq!(t.to_vec().unwrap(), b);
    }
    let mut t = Tlp::parse(&[0, 0, 0, 1, 1, 0, 0x2a, 0x0f, 0xfe, 0xdc, 0x10, 0]).unwrap();
    t.flags.address_type = 3;
    assert!(matches!(
        t.to_vec(),
        Err(EmitError::Invalid(ParseError::ReservedAddressType { .. }))
    ));
}
