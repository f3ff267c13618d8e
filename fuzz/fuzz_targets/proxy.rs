//! QEMU multi-process proxy messages: header then payload, with a descriptor count
//! taken from the first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::proxy::wire::{Header, Request, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&fds, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < HEADER_LEN {
        return;
    }
    let (h, payload) = rest.split_at(HEADER_LEN);
    let Ok(h) = Header::parse(h.try_into().unwrap()) else {
        return;
    };
    if let Ok(r) = Request::parse(h, payload, (fds % 10) as usize) {
        // What parses re-encodes to a message that parses the same.
        let b = r.emit();
        let h2 = Header::parse(b[..HEADER_LEN].try_into().unwrap()).unwrap();
        let fds = match &r {
            Request::SyncSysmem(v) => v.len(),
            Request::SetIrqfd => 2,
            _ => 0,
        };
        assert_eq!(Request::parse(h2, &b[HEADER_LEN..], fds).unwrap(), r);
    }
});
