//! TLP parser: any bytes either decode or give a ParseError; what decodes re-encodes
//! to something that decodes to the same repr.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = tlp::TlpPacket::new_checked(data) {
        let _ = (
            view.payload(),
            view.digest(),
            view.address(),
            view.config_register(),
        );
    }
    if let Ok(t) = tlp::Tlp::parse(data) {
        let mut buf = vec![0u8; t.buffer_len()];
        let n = t.emit(&mut buf).expect("a parsed TLP re-encodes");
        assert_eq!(n, data.len());
        assert_eq!(tlp::Tlp::parse(&buf).expect("re-encoded TLP parses"), t);
        let _ = t.to_string();
    }
});
