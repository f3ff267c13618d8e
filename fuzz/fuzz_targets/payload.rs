//! Payload decoders on their own: records (with the TLPs inside), INFO and CTRL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            for r in wire::Records::new(payload).flatten() {
                let _ = r.tlp();
            }
        }
        1 => {
            if let Ok(info) = wire::Info::parse(payload) {
                assert!(info.devices().count() == info.device_count());
            }
        }
        _ => {
            if let Ok(c) = wire::CtrlRepr::parse(payload) {
                let mut buf = [0u8; 32];
                c.emit(&mut buf).expect("a parsed CTRL re-encodes");
                assert_eq!(wire::CtrlRepr::parse(&buf).unwrap(), c);
            }
        }
    }
});
