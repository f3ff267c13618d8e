//! Frame parser, with the frame check repaired first (when the input asks for it by
//! its first byte) so that mutations reach the header, record, INFO and CTRL decoders,
//! and the authentication tag check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{Body, Frame, VlanTag};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    let mut frame = frame.to_vec();
    let stripped = (mode & 2 != 0).then(|| VlanTag::from_tci(0x000a));
    if mode & 1 != 0 && frame.len() >= 18 + wire::HEADER_LEN {
        let tagged = frame[12..14] == [0x81, 0x00];
        let at = if tagged { 18 } else { 14 };
        let gid = if tagged {
            u16::from_be_bytes([frame[14], frame[15]]) & 0xfff
        } else {
            stripped.map_or(0, |t| t.vid)
        };
        let plen = u16::from_be_bytes([frame[at + 2], frame[at + 3]]) as usize;
        let hlen = frame[at + 30] as usize * 4;
        let end = (at + hlen + plen).min(frame.len());
        if hlen >= wire::HEADER_LEN && end >= at + 36 {
            frame[at + 32..at + 36].fill(0);
            // A frame with the AUTH flag carries 0; others their CRC.
            if frame[at + 1] & wire::flags::AUTH == 0 {
                let c = wire::frame_check(gid, &frame[at..end]);
                frame[at + 32..at + 36].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
    let Ok(f) = Frame::parse(&frame, stripped) else {
        return;
    };
    let _ = f.gid();
    // The tag check on whatever arrived: with a key, without, a tag or none.
    let key = wire::AuthKey::from_secret(&[mode; 32]);
    let _ = f.authenticate(Some(&key));
    let _ = f.authenticate(None);
    // And with a session key kept for the sender, or for someone else.
    let _ = f.authenticate_sealed(&key.session_key(f.ethernet.src));
    let _ = f.authenticate_sealed(&key.session_key(wire::MacAddr([mode; 6])));
    match f.body() {
        Ok(Body::Data(records)) => {
            for r in records.flatten() {
                let _ = r.tlp();
            }
        }
        Ok(Body::Info(info)) => {
            for d in info.devices() {
                let _ = d;
            }
        }
        _ => {}
    }
});
