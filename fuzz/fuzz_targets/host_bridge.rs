//! The host side (`rootcomplex::Host` over its bridge) under a hostile box: arbitrary
//! bytes script what the box sends (raw bytes, reads and writes anywhere with any
//! length, INTx and MSI messages, completions with any tag, status and size), what the
//! link takes (it fills and empties), and what the program does (writes, reads,
//! removals, waits for armed interrupts). Never panics, and the queues the box can
//! grow stay bounded: the bridge's backlog for the link, the interrupt queue, the link.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rootcomplex::bridge::MAX_TX_BACKLOG;
use rootcomplex::driver_api::MAX_QUEUED_INTERRUPTS;
use rootcomplex::{Armed, BarWindows, BridgeConfig, Host, Link, LinkFull, MemoryMap};
use tether_fuzz::Input;
use tlp::{
    Bdf, Completion, CompletionStatus, Header, IntxPin, MemRead, MemWrite, Message, Tag, Tlp,
};

/// TLPs the link holds before it refuses.
const LINK_CAPACITY: usize = 64;

#[derive(Default)]
struct ScriptedLink {
    from_box: VecDeque<Vec<u8>>,
    to_box: usize,
    /// The box is not acknowledging: nothing queued leaves.
    stalled: bool,
}

impl Link for ScriptedLink {
    fn send(&mut self, _: &[u8]) -> Result<(), LinkFull> {
        if self.to_box >= LINK_CAPACITY {
            return Err(LinkFull);
        }
        self.to_box += 1;
        Ok(())
    }

    fn flush(&mut self) {
        if !self.stalled {
            self.to_box = 0;
        }
    }

    fn recv(&mut self, _: Duration) -> Option<Vec<u8>> {
        self.from_box.pop_front()
    }
}

fn pin(b: u8) -> IntxPin {
    [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D][usize::from(b & 3)]
}

fn emit(t: &Tlp) -> Option<Vec<u8>> {
    t.to_vec().ok()
}

fuzz_target!(|data: &[u8]| {
    let mut s = Input(data);
    let mut mem = MemoryMap::new();
    mem.add(0x1000, Box::new(vec![0u8; 0x2000])).unwrap();
    let cfg = BridgeConfig {
        completion_timeout_us: 1,
        ..BridgeConfig::default()
    };
    let mut h = Host::new(
        cfg,
        mem,
        (0x1000, 0x2000),
        BarWindows::default(),
        ScriptedLink::default(),
    );
    let dev = Bdf::from_u16(0x100);
    while !s.0.is_empty() {
        let op = s.u8();
        let from = if op & 0x80 != 0 {
            Bdf::from_u16(s.u16())
        } else {
            dev
        };
        let tlp = match op & 0x0f {
            0 => {
                let n = usize::from(s.u8());
                Some(s.bytes(n).to_vec())
            }
            1 => {
                let r = MemRead {
                    requester: from,
                    tag: Tag::wrapping(s.u16()),
                    address: s.u64() & !3,
                    length_dw: s.u16() & 0x3ff,
                    first_be: s.u8() & 0xf,
                    last_be: s.u8() & 0xf,
                    locked: false,
                    hint: None,
                };
                // Often the same read many times over: a flood.
                let times = usize::from(s.u8());
                if let Some(b) = emit(&Tlp::new(Header::MemRead(r), &[])) {
                    for _ in 0..times {
                        h.link_mut().from_box.push_back(b.clone());
                    }
                }
                None
            }
            2 => {
                let address = if s.u8() & 1 == 0 {
                    0xfee0_0000
                } else {
                    s.u64() & !3
                };
                let len = usize::from(s.u8() % 64) * 4;
                let payload = s.bytes(len).to_vec();
                let w = MemWrite {
                    requester: from,
                    tag: Tag::wrapping(0),
                    address,
                    first_be: s.u8() & 0xf,
                    last_be: s.u8() & 0xf,
                    hint: None,
                };
                emit(&Tlp::new(Header::MemWrite(w), &payload))
            }
            3 => {
                let b = s.u8();
                emit(&Tlp::new(
                    Header::Message(Message::intx(from, pin(b), b & 4 != 0)),
                    &[],
                ))
            }
            4 => {
                let c = Completion {
                    completer: from,
                    status: if s.u8() & 1 == 0 {
                        CompletionStatus::Success
                    } else {
                        CompletionStatus::UnsupportedRequest
                    },
                    bcm: false,
                    byte_count: s.u16() & 0xfff,
                    requester: Bdf::from_u16(0),
                    tag: Tag::wrapping(u16::from(s.u8())),
                    lower_address: s.u8() & 0x7f,
                    locked: false,
                };
                let len = usize::from(s.u8() % 64) * 4;
                let payload = s.bytes(len).to_vec();
                emit(&Tlp::new(Header::Completion(c), &payload))
            }
            5 => {
                let l = h.link_mut();
                l.stalled = !l.stalled;
                None
            }
            6 => {
                let addr = s.u64();
                let len = usize::from(s.u16() % 8192);
                h.mem_write(addr, &vec![0x5a; len]);
                None
            }
            7 => {
                let addr = s.u64();
                let len = usize::from(s.u16() % 8192);
                let got = h.mem_read(addr, len);
                assert_eq!(got.len(), len);
                None
            }
            8 => {
                h.remove(from);
                None
            }
            9 => {
                let b = s.u8();
                let armed = if b & 1 == 0 {
                    Armed::Vector(u16::from(b >> 1))
                } else {
                    Armed::Intx(pin(b >> 1))
                };
                h.wait_armed(from, armed, Duration::ZERO);
                None
            }
            10 => {
                h.take_interrupt();
                None
            }
            _ => {
                h.poll(Duration::ZERO);
                None
            }
        };
        if let Some(t) = tlp {
            h.link_mut().from_box.push_back(t);
        }
        // The box's TLPs are handled a burst at a time; a few rounds per step.
        for _ in 0..4 {
            h.poll(Duration::ZERO);
        }
        // A device's answers (one 4 KiB read: data and 17 headers) and one write of
        // the program's (4 KiB at MPS 256: 17 TLPs) may pass the backlog bound.
        assert!(h.bridge().tx_backlog() <= MAX_TX_BACKLOG + 2 * (4096 + 17 * 16));
        assert!(h.queued_interrupts() <= MAX_QUEUED_INTERRUPTS);
        assert!(h.link().to_box <= LINK_CAPACITY);
    }
});
