//! vfio-user messages: a header, then a body, with a descriptor count taken from the
//! first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::vfio_user::wire::{Header, Request, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&fds, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < HEADER_LEN {
        return;
    }
    let (h, body) = rest.split_at(HEADER_LEN);
    let Ok(h) = Header::parse(h.try_into().unwrap()) else {
        return;
    };
    let body = &body[..body.len().min(h.body_len())];
    let _ = Request::parse(&h, body, (fds % 10) as usize);
});
