//! Completion reassembly fed with completions derived from a correct split of a
//! random read, then mutated (byte count, lower address, payload size, status, order,
//! repeats): never panics, never accepts more than the read asked for, and reports
//! Complete only when every byte arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlp::{
    split_read_completions, Bdf, Completion, CompletionStatus, MaxSize, MemRead, Progress, Rcb,
    ReadReassembly, Tag,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let address = u64::from_le_bytes(data[0..8].try_into().unwrap()) & !3;
    let length_dw = (u16::from_le_bytes([data[8], data[9]]) % 1024) + 1;
    let length_dw = length_dw
        .min(((4096 - (address & 0xfff)) / 4) as u16)
        .max(1);
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
    let rcb = if data[11] & 1 == 0 {
        Rcb::B64
    } else {
        Rcb::B128
    };
    let mps = if data[11] & 2 == 0 {
        MaxSize::B128
    } else {
        MaxSize::B256
    };
    let chunks: Vec<_> = split_read_completions(&read, rcb, mps).collect();
    let mut r = ReadReassembly::new(&read, rcb);
    let mut out = vec![0u8; r.total() as usize];
    for step in data[12..].chunks(2) {
        let op = step[0];
        let pick = *step.get(1).unwrap_or(&0) as usize % chunks.len();
        let c = chunks[pick];
        let mut cpl = Completion {
            completer: Bdf::default(),
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: c.byte_count,
            requester: Bdf::default(),
            tag: Tag::default(),
            lower_address: c.lower_address,
            locked: false,
        };
        let mut len = c.payload_len();
        match op % 8 {
            0 => cpl.byte_count = cpl.byte_count.wrapping_add(op as u16 >> 3) % 4097,
            1 => cpl.lower_address ^= (op >> 3) & 0x7f,
            2 => len = len.saturating_sub(4 * (op as usize >> 3)),
            3 => len += 4 * (op as usize >> 3),
            4 => cpl.status = CompletionStatus::UnsupportedRequest,
            _ => {}
        }
        let payload = vec![0x5au8; len];
        let before = r.received();
        match r.accept(&cpl, &payload, &mut out) {
            Ok(Progress::Complete) => assert_eq!(r.received(), r.total()),
            Ok(Progress::Partial { received, total }) => {
                assert!(received > before && received < total)
            }
            Err(_) => {}
        }
        assert!(r.received() <= r.total());
    }
});
