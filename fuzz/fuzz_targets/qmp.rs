//! The QMP client's protocol core (`vmm::qmp::Session`): what QEMU sends is the
//! input's bytes, cut anywhere; between pieces the client sends commands (with or
//! without arguments), takes replies by any id (known or not), takes or drops
//! events, forgets commands. Replies that arrive are also read as `query-pci` and
//! version objects, and raw input as `--version` output.
//!
//! Checked after every step: no panic; memory bounded (an unfinished message ≤
//! MAX_MESSAGE bytes, ≤ MAX_EVENTS queued events of ≤ MAX_EVENT_BYTES, ≤ MAX_PENDING
//! commands and untaken replies together); every command's bytes are one JSON line
//! with its id; an error breaks the session for good; counters never go down.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_fuzz::{assert_counters_grew, Input};
use vmm::qemu::QemuVersion;
use vmm::qmp::serde_json::{self, json, Value};
use vmm::qmp::{
    parse_query_pci, CommandId, QmpError, QmpStats, Reply, Session, MAX_EVENTS, MAX_EVENT_BYTES,
    MAX_MESSAGE, MAX_PENDING,
};

const COMMANDS: [&str; 6] = [
    "qmp_capabilities",
    "query-version",
    "query-pci",
    "device_add",
    "device_del",
    "quit",
];

fn counters(s: &QmpStats) -> [u64; 7] {
    [
        s.messages,
        s.events,
        s.events_dropped,
        s.replies,
        s.error_replies,
        s.unmatched_replies,
        s.ignored,
    ]
}

fn check(s: &Session) {
    assert!(s.buffered() <= MAX_MESSAGE);
    let (n, bytes) = s.queued_events();
    assert!(
        n <= MAX_EVENTS && bytes <= MAX_EVENT_BYTES,
        "{n} events, {bytes} bytes"
    );
    let (pending, replies) = s.waiting();
    assert!(pending + replies <= MAX_PENDING);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut s = Session::new();
    let mut ids: Vec<CommandId> = Vec::new();
    let mut before = [0u64; 7];
    while !input.done() {
        match input.u8() % 8 {
            0..=3 => {
                let n = input.u16() as usize;
                let bytes = input.bytes(n);
                let was_broken = s.is_broken();
                let r = s.receive(bytes);
                if was_broken {
                    assert!(matches!(r, Err(QmpError::Broken)));
                }
                if r.is_err() {
                    assert!(s.is_broken());
                    assert_eq!(s.buffered(), 0);
                }
                if input.u8() & 1 == 1 {
                    let _ = QemuVersion::from_version_output(&String::from_utf8_lossy(bytes));
                }
            }
            4 => {
                let name = COMMANDS[input.u8() as usize % COMMANDS.len()];
                let args = match input.u8() % 3 {
                    0 => None,
                    1 => Some(json!({ "id": String::from_utf8_lossy(input.bytes(16)) })),
                    _ => Some(Value::from(input.u64())),
                };
                let waiting = s.waiting();
                match s.command(name, args) {
                    Ok((id, bytes)) => {
                        assert_eq!(bytes.last(), Some(&b'\n'));
                        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
                        let v: Value = serde_json::from_slice(&bytes).unwrap();
                        assert_eq!(v["id"].as_u64(), Some(id.0));
                        assert_eq!(v["execute"].as_str(), Some(name));
                        assert!(!ids.contains(&id), "an id used twice");
                        ids.push(id);
                        assert_eq!(s.waiting().0, waiting.0 + 1);
                    }
                    Err(QmpError::Broken) => assert!(s.is_broken()),
                    Err(QmpError::TooManyPending) => {
                        assert_eq!(waiting.0 + waiting.1, MAX_PENDING)
                    }
                    Err(e) => panic!("command: {e}"),
                }
            }
            5 => {
                let id = match ids.get(input.u8() as usize) {
                    Some(&id) => id,
                    None => CommandId(input.u64()),
                };
                match s.take_reply(id) {
                    Some(Reply::Return(v)) => {
                        let _ = parse_query_pci(&v);
                        let _ = QemuVersion::from_qmp(&v);
                        assert!(s.take_reply(id).is_none(), "a reply taken twice");
                    }
                    Some(Reply::Error { .. }) | None => {}
                }
            }
            6 => {
                if input.u8() & 1 == 0 {
                    let _ = s.pop_event();
                } else {
                    let want = String::from_utf8_lossy(input.bytes(8)).into_owned();
                    if let Some(e) = s.take_event(|e| e.device() == Some(want.as_str())) {
                        assert_eq!(e.device(), Some(want.as_str()));
                    }
                }
            }
            _ => {
                if let Some(&id) = ids.get(input.u8() as usize) {
                    s.forget(id);
                    assert!(s.take_reply(id).is_none());
                }
            }
        }
        check(&s);
        assert_counters_grew(&mut before, counters(&s.stats()));
    }
});
