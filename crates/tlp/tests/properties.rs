//! Property tests: every valid repr survives bytes and back; no byte string panics the
//! parser; splitting and reassembly agree for every (address, length).

use proptest::prelude::*;
use tlp::strategies::any_tlp;
use tlp::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn repr_bytes_repr(t in any_tlp()) {
        let tlp = t.as_tlp();
        let mut buf = vec![0u8; tlp.buffer_len()];
        let n = tlp.emit(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        let back = Tlp::parse(&buf).unwrap();
        prop_assert_eq!(back, tlp);
        // The view agrees with the repr on the common fields.
        let view = TlpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(view.payload(), tlp.payload);
        prop_assert_eq!(view.digest(), tlp.digest);
        prop_assert_eq!(view.ep(), tlp.flags.poisoned);
        prop_assert_eq!(view.traffic_class(), tlp.flags.traffic_class);
        prop_assert_eq!(view.attributes(), tlp.flags.attributes);
        match tlp.header {
            Header::MemRead(r) => {
                prop_assert_eq!((view.id(), view.request_tag(), view.address(), view.length_dw()), (r.requester, r.tag, r.address, r.length_dw));
            }
            Header::MemWrite(w) => {
                prop_assert_eq!((view.id(), view.address()), (w.requester, w.address));
                prop_assert_eq!(view.length_dw() as usize * 4, tlp.payload.len());
            }
            Header::ConfigRead(c) | Header::ConfigWrite(c) => {
                prop_assert_eq!((view.config_target(), view.config_register(), view.first_be()), (c.target, c.register, c.first_be));
            }
            Header::Completion(c) => {
                prop_assert_eq!((view.id(), view.completion_requester(), view.completion_tag()), (c.completer, c.requester, c.tag));
                prop_assert_eq!((view.byte_count(), view.lower_address(), view.bcm()), (c.byte_count, c.lower_address, c.bcm));
            }
            Header::Message(m) => {
                prop_assert_eq!((view.message_code(), view.message_body(), view.request_tag()), (m.code, m.body, m.tag));
            }
            Header::IoRead(r) | Header::IoWrite(r) => {
                prop_assert_eq!((view.address(), view.request_tag()), (r.address as u64, r.tag));
            }
            Header::Atomic(a) => {
                prop_assert_eq!((view.address(), view.request_tag()), (a.address, a.tag));
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Tlp::parse(&bytes);
        if let Ok(view) = TlpPacket::new_checked(&bytes[..]) {
            let _ = (view.payload(), view.digest(), view.address(), view.byte_count());
        }
    }

    #[test]
    fn mutated_tlps_never_panic(t in any_tlp(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let tlp = t.as_tlp();
        let mut buf = vec![0u8; tlp.buffer_len()];
        tlp.emit(&mut buf).unwrap();
        for (at, x) in flips {
            let i = at % buf.len();
            buf[i] ^= x;
        }
        if let Ok(parsed) = Tlp::parse(&buf) {
            // Whatever still parses must re-encode to the same bytes, except for
            // reserved bits, which the emitter writes as zero.
            let mut again = vec![0u8; parsed.buffer_len()];
            parsed.emit(&mut again).unwrap();
            prop_assert_eq!(Tlp::parse(&again).unwrap(), parsed);
        }
        let cut = cut % (buf.len() + 1);
        let _ = Tlp::parse(&buf[..cut]);
    }

    #[test]
    fn dma_read_split_and_reassemble(
        address in prop_oneof![0u64..0x10000, any::<u64>().prop_map(|a| a >> 1)],
        len in 1usize..20000,
        mrrs in prop_oneof![Just(MaxSize::B128), Just(MaxSize::B256), Just(MaxSize::B512), Just(MaxSize::B4096)],
        mps in prop_oneof![Just(MaxSize::B128), Just(MaxSize::B256)],
        rcb in prop_oneof![Just(Rcb::B64), Just(Rcb::B128)],
    ) {
        // "Memory": byte i of the address space is (address + i) as u8.
        let mem = |a: u64| a as u8;
        let mut out = vec![0u8; len];
        let mut covered = 0;
        for chunk in split_requests(address, len, mrrs).unwrap() {
            prop_assert_eq!(chunk.offset, covered);
            covered += chunk.len;
            let s = chunk.span;
            prop_assert!(s.length_dw as usize * 4 <= mrrs.bytes());
            let read = MemRead {
                requester: Bdf::default(), tag: Tag::default(), address: s.dw_address,
                length_dw: s.length_dw, first_be: s.first_be, last_be: s.last_be,
                locked: false, hint: None,
            };
            // The request itself is a valid TLP.
            let req = Tlp::new(Header::MemRead(read), &[]);
            let mut rbuf = [0u8; 16];
            let n = req.emit(&mut rbuf).unwrap();
            prop_assert_eq!(Tlp::parse(&rbuf[..n]).unwrap(), req);

            let mut reasm = ReadReassembly::new(&read, rcb);
            prop_assert_eq!(reasm.total() as usize, chunk.len);
            let first = address + chunk.offset as u64;
            let completions: Vec<_> = split_read_completions(&read, rcb, mps).collect();
            for (i, c) in completions.iter().enumerate() {
                prop_assert!(c.payload_len() <= mps.bytes());
                let data: Vec<u8> = (0..c.len).map(|k| mem(first + (c.offset + k) as u64)).collect();
                let mut payload = vec![0u8; c.payload_len()];
                c.fill_payload(&data, &mut payload);
                let cpl = Completion {
                    completer: Bdf::default(), status: CompletionStatus::Success, bcm: false,
                    byte_count: c.byte_count, requester: Bdf::default(), tag: Tag::default(),
                    lower_address: c.lower_address, locked: false,
                };
                // Each completion is a valid TLP too.
                let t = Tlp::new(Header::Completion(cpl), &payload);
                let mut cbuf = vec![0u8; t.buffer_len()];
                t.emit(&mut cbuf).unwrap();
                let parsed = Tlp::parse(&cbuf).unwrap();
                let Header::Completion(pc) = parsed.header else { unreachable!() };
                let progress = reasm.accept(&pc, parsed.payload, &mut out[chunk.offset..chunk.offset + chunk.len]).unwrap();
                prop_assert_eq!(progress == Progress::Complete, i + 1 == completions.len());
            }
            reasm.finish().unwrap();
        }
        prop_assert_eq!(covered, len);
        for (i, b) in out.iter().enumerate() {
            prop_assert_eq!(*b, mem(address + i as u64));
        }
    }

    #[test]
    fn dma_write_split(address in any::<u64>().prop_map(|a| a >> 2), len in 1usize..20000,
                       mps in prop_oneof![Just(MaxSize::B128), Just(MaxSize::B256)]) {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut total = 0;
        for chunk in split_requests(address, len, mps).unwrap() {
            let s = chunk.span;
            let lead = (address + chunk.offset as u64 - s.dw_address) as usize;
            let mut payload = vec![0u8; s.length_dw as usize * 4];
            payload[lead..lead + chunk.len].copy_from_slice(&data[chunk.offset..chunk.offset + chunk.len]);
            let w = Tlp::new(Header::MemWrite(MemWrite {
                requester: Bdf::default(), tag: Tag::default(), address: s.dw_address,
                first_be: s.first_be, last_be: s.last_be, hint: None,
            }), &payload);
            let mut buf = vec![0u8; w.buffer_len()];
            w.emit(&mut buf).unwrap();
            prop_assert_eq!(Tlp::parse(&buf).unwrap(), w);
            prop_assert_eq!(s.enabled_bytes().1 as usize, chunk.len);
            total += chunk.len;
        }
        prop_assert_eq!(total, len);
    }
}

#[test]
fn reassembly_detects_missing_extra_and_wrong_data() {
    let read = MemRead {
        requester: Bdf::default(),
        tag: Tag::default(),
        address: 0x1000,
        length_dw: 64,
        first_be: 0xf,
        last_be: 0xf,
        locked: false,
        hint: None,
    };
    let chunks: Vec<_> = split_read_completions(&read, Rcb::B64, MaxSize::B128).collect();
    assert_eq!(chunks.len(), 2);
    let cpl = |c: &CompletionChunk| Completion {
        completer: Bdf::default(),
        status: CompletionStatus::Success,
        bcm: false,
        byte_count: c.byte_count,
        requester: Bdf::default(),
        tag: Tag::default(),
        lower_address: c.lower_address,
        locked: false,
    };
    let payload = vec![7u8; 128];
    let mut out = vec![0u8; 256];

    // Missing: only the first completion arrives.
    let mut r = ReadReassembly::new(&read, Rcb::B64);
    r.accept(&cpl(&chunks[0]), &payload, &mut out).unwrap();
    assert_eq!(
        r.finish(),
        Err(ReassemblyError::Missing {
            received: 128,
            total: 256
        })
    );
    // Repeated: the first completion twice.
    assert!(matches!(
        r.accept(&cpl(&chunks[0]), &payload, &mut out),
        Err(ReassemblyError::ByteCountMismatch { .. })
    ));
    // Extra: a completion after the read is complete.
    r.accept(&cpl(&chunks[1]), &payload, &mut out).unwrap();
    assert_eq!(
        r.accept(&cpl(&chunks[1]), &payload, &mut out),
        Err(ReassemblyError::AlreadyComplete)
    );
    // Too much data in the final completion.
    let mut r = ReadReassembly::new(&read, Rcb::B64);
    r.accept(&cpl(&chunks[0]), &payload, &mut out).unwrap();
    assert!(matches!(
        r.accept(&cpl(&chunks[1]), &[0u8; 132], &mut out),
        Err(ReassemblyError::PayloadLength { .. })
    ));
    // A partial completion that does not end on the RCB.
    let mut r = ReadReassembly::new(&read, Rcb::B64);
    assert!(matches!(
        r.accept(&cpl(&chunks[0]), &payload[..96], &mut out),
        Err(ReassemblyError::RcbViolation { .. })
    ));
    // Wrong lower address.
    let mut bad = cpl(&chunks[0]);
    bad.lower_address = 4;
    assert!(matches!(
        r.accept(&bad, &payload, &mut out),
        Err(ReassemblyError::LowerAddressMismatch { .. })
    ));
    // An error status ends the read.
    let mut ur = cpl(&chunks[0]);
    ur.status = CompletionStatus::UnsupportedRequest;
    assert_eq!(
        r.accept(&ur, &[], &mut out),
        Err(ReassemblyError::Status(
            CompletionStatus::UnsupportedRequest
        ))
    );
    assert!(r.is_complete());
}
