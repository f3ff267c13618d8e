//! A host's switch router (`hostbridge::route::Router`) under hostile boxes: arbitrary
//! bytes script devices coming and going on ports (three boxes, any slot), the host's
//! TLPs (well-formed requests to the ports' windows and buses, or raw bytes) and what
//! the boxes send (completions with any tag, requests and messages with any requester
//! ID, or raw bytes). Never panics; a TLP from a box is taken only when it comes from
//! the box that holds the port it names; what the switch answers is a well-formed
//! completion; counters only grow.
#![no_main]

use hostbridge::hotplug::DeviceKey;
use hostbridge::route::{Outbound, Router};
use hostbridge::switch::{PortId, VirtualSwitch, ROOT_PORT};
use libfuzzer_sys::fuzz_target;
use tether_fuzz::{assert_counters_grew, Input};
use tlp::{Bdf, Completion, CompletionStatus, ConfigRequest, Header, MemRead, MemWrite, Tag, Tlp};
use wire::MacAddr;

const GID: u16 = 10;
const PORTS: usize = 6;

fn mac(b: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, b % 3])
}

fn counters(r: &Router) -> [u64; 11] {
    let s = r.stats();
    [
        s.to_fabric,
        s.switch_config,
        s.unrouted,
        s.to_ghost,
        s.refused_outbound,
        s.accepted,
        s.misrouted,
        s.foreign_completions,
        s.from_ghost,
        s.unparsable,
        s.failed_pending,
    ]
}

fn is_completion(b: &[u8]) -> bool {
    matches!(Tlp::parse(b).map(|t| t.header), Ok(Header::Completion(_)))
}

/// A TLP the host might send, aimed at `port`'s windows or bus (or anywhere).
fn host_tlp(i: &mut Input, r: &Router) -> Vec<u8> {
    let port = PortId::new(usize::from(i.u8()) % (PORTS + 1)).unwrap_or(PortId::new(0).unwrap());
    let w = r.windows(port);
    let tag = Tag::wrapping(i.u16());
    let h = match i.u8() % 5 {
        0 => Header::ConfigRead(ConfigRequest {
            type1: false,
            requester: ROOT_PORT,
            tag,
            target: Bdf::from_u16(i.u16()),
            register: i.u16() & 0xffc,
            first_be: 0xf,
        }),
        1 => Header::MemRead(MemRead {
            requester: ROOT_PORT,
            tag,
            address: w.map_or(i.u64(), |w| w.mem32.0 + u64::from(i.u16() & !3)),
            length_dw: 1 + i.u16() % 64,
            first_be: 0xf,
            last_be: 0xf,
            locked: false,
            hint: None,
        }),
        2 => Header::MemWrite(MemWrite {
            requester: ROOT_PORT,
            tag,
            address: w.map_or(i.u64(), |w| w.mem64.0 + u64::from(i.u16() & !3)),
            first_be: 0xf,
            last_be: 0,
            hint: None,
        }),
        3 => Header::Completion(Completion {
            completer: ROOT_PORT,
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: 4,
            requester: Bdf::new(port.bus(), i.u8() % 32, 0).unwrap_or_default(),
            tag,
            lower_address: 0,
            locked: false,
        }),
        _ => {
            let n = usize::from(i.u8() % 64);
            return i.bytes(n).to_vec();
        }
    };
    let payload = match h {
        Header::MemWrite(_) | Header::Completion(_) => vec![0u8; 4],
        _ => vec![],
    };
    Tlp::new(h, &payload).to_vec().unwrap_or_default()
}

/// A TLP a box might send: as the device on some port, or as anyone.
fn box_tlp(i: &mut Input) -> Vec<u8> {
    let bus = 3 + i.u8() % (PORTS as u8 + 1);
    let requester = Bdf::new(bus, i.u8() % 32, 0).unwrap_or_default();
    let tag = Tag::wrapping(i.u16());
    let (h, payload): (Header, Vec<u8>) = match i.u8() % 4 {
        0 => {
            let n = usize::from(i.u8() % 3) * 4;
            (
                Header::Completion(Completion {
                    completer: requester,
                    status: if i.u8().is_multiple_of(4) {
                        CompletionStatus::UnsupportedRequest
                    } else {
                        CompletionStatus::Success
                    },
                    bcm: false,
                    byte_count: 1 + i.u16() % 4096,
                    requester: if i.u8().is_multiple_of(8) {
                        requester
                    } else {
                        ROOT_PORT
                    },
                    tag,
                    lower_address: i.u8() & 0x7f,
                    locked: false,
                }),
                vec![0; n],
            )
        }
        1 => (
            Header::MemWrite(MemWrite {
                requester,
                tag,
                address: u64::from(i.u32() & !3),
                first_be: 0xf,
                last_be: 0,
                hint: None,
            }),
            vec![0; 4],
        ),
        2 => (
            Header::MemRead(MemRead {
                requester,
                tag,
                address: u64::from(i.u32() & !3),
                length_dw: 1,
                first_be: 0xf,
                last_be: 0,
                locked: false,
                hint: None,
            }),
            vec![],
        ),
        _ => {
            let n = usize::from(i.u8() % 64);
            return i.bytes(n).to_vec();
        }
    };
    Tlp::new(h, &payload).to_vec().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input(data);
    let mut r = Router::new(GID, VirtualSwitch::new(PORTS).unwrap());
    let mut before = counters(&r);
    while !i.done() {
        match i.u8() % 7 {
            0 => {
                if let Ok(p) = r.switch_mut().alloc_port() {
                    let key = DeviceKey {
                        gid: GID,
                        mac: mac(i.u8()),
                        slot: i.u8() % 40,
                    };
                    if r.attach(p, key).is_err() {
                        r.switch_mut().free_port(p).unwrap();
                    }
                }
            }
            1 => {
                let Some(p) = PortId::new(usize::from(i.u8()) % PORTS) else {
                    continue;
                };
                match i.u8() % 3 {
                    0 => r.ghost(p),
                    1 => {
                        for c in r.fail_pending(p) {
                            let t = Tlp::parse(&c).expect("a failure the switch makes parses");
                            let Header::Completion(c) = t.header else {
                                panic!("not a completion")
                            };
                            assert_eq!(c.status, CompletionStatus::UnsupportedRequest);
                        }
                    }
                    _ => {
                        r.detach(p);
                        if r.switch().is_live(p) {
                            r.switch_mut().free_port(p).unwrap();
                        }
                    }
                }
            }
            2 | 3 => {
                let t = host_tlp(&mut i, &r);
                match r.outbound(&t) {
                    Outbound::Answer(a) => {
                        assert!(is_completion(&a), "an answer that is no completion")
                    }
                    Outbound::Fabric { gid, mac } => {
                        assert_eq!(gid, GID);
                        assert!(mac.0[5] < 3);
                    }
                    Outbound::Dropped => {}
                }
            }
            _ => {
                let from = mac(i.u8());
                let gid = if i.u8().is_multiple_of(8) {
                    GID + 1
                } else {
                    GID
                };
                let t = box_tlp(&mut i);
                if r.inbound(gid, from, &t) {
                    assert_eq!(gid, GID, "taken from another group");
                    let parsed = Tlp::parse(&t).expect("taken, so it parses");
                    let requester = match parsed.header {
                        Header::MemRead(m) => Some(m.requester),
                        Header::MemWrite(m) => Some(m.requester),
                        Header::Message(m) => Some(m.requester),
                        _ => None,
                    };
                    if let Some(req) = requester {
                        let port = r.switch().route_id(req.bus()).expect("a live port");
                        let holder = r.occupant(port).expect("an occupied port");
                        assert_eq!((holder.mac, holder.slot), (from, req.device()));
                        assert!(!r.is_ghost(port));
                    }
                }
            }
        }
        assert_counters_grew(&mut before, counters(&r));
    }
});
