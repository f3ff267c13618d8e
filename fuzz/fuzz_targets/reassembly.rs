//! Completion reassembly fed with arbitrary completions: never panics, never writes
//! outside the output buffer, never reports more bytes than the read asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlp::{Bdf, Completion, CompletionStatus, MemRead, Rcb, ReadReassembly, Tag};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let address = u64::from_le_bytes(data[0..8].try_into().unwrap()) & !3;
    let length_dw = (u16::from_le_bytes([data[8], data[9]]) % 1024) + 1;
    let read = MemRead {
        requester: Bdf::default(),
        tag: Tag::default(),
        address,
        length_dw,
        first_be: data[10] & 0xf,
        last_be: if length_dw > 1 { data[10] >> 4 } else { 0 },
        locked: false,
        hint: None,
    };
    let rcb = if data[11] & 1 == 0 { Rcb::B64 } else { Rcb::B128 };
    let mut r = ReadReassembly::new(&read, rcb);
    let mut out = vec![0u8; r.total() as usize];
    let mut rest = &data[12..];
    while rest.len() >= 4 {
        let byte_count = u16::from_le_bytes([rest[0], rest[1]]) % 4097;
        let lower_address = rest[2] & 0x7f;
        let len = (rest[3] as usize % 64) * 4;
        rest = &rest[4..];
        let payload = vec![0xa5u8; len];
        let cpl = Completion {
            completer: Bdf::default(),
            status: CompletionStatus::Success,
            bcm: false,
            byte_count,
            requester: Bdf::default(),
            tag: Tag::default(),
            lower_address,
            locked: false,
        };
        let _ = r.accept(&cpl, &payload, &mut out);
        assert!(r.received() <= r.total());
    }
});
