//! Proptest strategies that generate valid TLPs of every type (feature `strategies`).

use proptest::prelude::*;

use crate::byte_enables::DwSpan;
use crate::repr::{
    implied_byte_enables, Atomic, Completion, ConfigRequest, Header, HeaderFlags, IoRequest,
    MemRead, MemWrite, Message,
};
use crate::types::{
    message_code, AtomicOp, Attributes, Bdf, CompletionStatus, MessageRouting, ProcessingHint, Tag,
};

/// A TLP repr that owns its payload.
#[derive(Clone, Debug)]
pub struct OwnedTlp {
    pub header: Header,
    pub flags: HeaderFlags,
    pub payload: Vec<u8>,
    pub digest: Option<u32>,
}

impl OwnedTlp {
    pub fn as_tlp(&self) -> crate::Tlp<'_> {
        crate::Tlp {
            header: self.header,
            flags: self.flags,
            payload: &self.payload,
            digest: self.digest,
        }
    }
}

pub fn bdf() -> impl Strategy<Value = Bdf> {
    any::<u16>().prop_map(Bdf::from_u16)
}

pub fn tag() -> impl Strategy<Value = Tag> {
    (0u16..=Tag::MAX).prop_map(Tag::wrapping)
}

fn attributes() -> impl Strategy<Value = Attributes> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c)| Attributes {
        relaxed_ordering: a,
        no_snoop: b,
        id_based_ordering: c,
    })
}

/// DW0 flags of a memory request or AtomicOp: any TC and attributes, AT untranslated,
/// translation request or translated (11b is reserved).
fn flags() -> impl Strategy<Value = HeaderFlags> {
    (0u8..8, attributes(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(
        |(traffic_class, attributes, ln, poisoned, address_type)| HeaderFlags {
            traffic_class,
            attributes,
            ln,
            poisoned,
            address_type,
        },
    )
}

/// DW0 flags of a completion or message: AT must be 00b there.
fn untranslated_flags() -> impl Strategy<Value = HeaderFlags> {
    flags().prop_map(|f| HeaderFlags {
        address_type: 0,
        ..f
    })
}

/// DW0 flags of an I/O or configuration request: TC0, Attr 000b, no LN, AT 00b; only
/// EP is free.
fn io_like_flags() -> impl Strategy<Value = HeaderFlags> {
    any::<bool>().prop_map(|poisoned| HeaderFlags {
        poisoned,
        ..HeaderFlags::default()
    })
}

fn hint() -> impl Strategy<Value = Option<ProcessingHint>> {
    proptest::option::weighted(
        0.2,
        (0u8..4, any::<u8>()).prop_map(|(ph, steering_tag)| ProcessingHint { ph, steering_tag }),
    )
}

/// Addresses below and above 4 GiB, so both header sizes appear.
fn address() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>()]
}

/// A DW-aligned address and a byte range inside one 4 KiB page.
fn span(max_dw: u16) -> impl Strategy<Value = DwSpan> {
    (address(), 1usize..=(max_dw as usize * 4)).prop_flat_map(|(base, len)| {
        let page = base & !0xfff;
        let room = 4096 - len as u64;
        (0..=room).prop_map(move |off| DwSpan::of(page + off, len))
    })
}

fn payload(dw: u16) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), dw as usize * 4)
}

fn mem_read() -> impl Strategy<Value = OwnedTlp> {
    (
        bdf(),
        tag(),
        span(1024),
        any::<bool>(),
        hint(),
        flags(),
        any::<bool>(),
    )
        .prop_map(|(requester, tag, span, locked, hint, flags, zero_len)| {
            let (first_be, last_be) = match hint {
                Some(_) => implied_byte_enables(span.length_dw),
                None if zero_len && span.length_dw == 1 => (0, 0),
                None => (span.first_be, span.last_be),
            };
            OwnedTlp {
                header: Header::MemRead(MemRead {
                    requester,
                    tag,
                    address: span.dw_address,
                    length_dw: span.length_dw,
                    first_be,
                    last_be,
                    locked,
                    hint,
                }),
                flags,
                payload: Vec::new(),
                digest: None,
            }
        })
}

fn mem_write() -> impl Strategy<Value = OwnedTlp> {
    (bdf(), tag(), span(64), hint(), flags()).prop_flat_map(
        |(requester, tag, span, hint, flags)| {
            let tag = if hint.is_some() {
                Tag::wrapping(tag.value() & 0x300)
            } else {
                tag
            };
            payload(span.length_dw).prop_map(move |payload| OwnedTlp {
                header: Header::MemWrite(MemWrite {
                    requester,
                    tag,
                    address: span.dw_address,
                    first_be: span.first_be,
                    last_be: span.last_be,
                    hint,
                }),
                flags,
                payload,
                digest: None,
            })
        },
    )
}

fn io_like() -> impl Strategy<Value = OwnedTlp> {
    (
        bdf(),
        tag(),
        any::<u32>(),
        0u8..16,
        any::<bool>(),
        payload(1),
        io_like_flags(),
    )
        .prop_map(|(requester, tag, address, first_be, write, data, flags)| {
            let req = IoRequest {
                requester,
                tag,
                address: address & !3,
                first_be,
            };
            OwnedTlp {
                header: if write {
                    Header::IoWrite(req)
                } else {
                    Header::IoRead(req)
                },
                flags,
                payload: if write { data } else { Vec::new() },
                digest: None,
            }
        })
}

fn config() -> impl Strategy<Value = OwnedTlp> {
    (
        bdf(),
        tag(),
        bdf(),
        0u16..1024,
        0u8..16,
        any::<bool>(),
        any::<bool>(),
        payload(1),
        io_like_flags(),
    )
        .prop_map(
            |(requester, tag, target, reg, first_be, type1, write, data, flags)| {
                let req = ConfigRequest {
                    type1,
                    requester,
                    tag,
                    target,
                    register: reg * 4,
                    first_be,
                };
                OwnedTlp {
                    header: if write {
                        Header::ConfigWrite(req)
                    } else {
                        Header::ConfigRead(req)
                    },
                    flags,
                    payload: if write { data } else { Vec::new() },
                    digest: None,
                }
            },
        )
}

fn completion() -> impl Strategy<Value = OwnedTlp> {
    let status = prop_oneof![
        Just(CompletionStatus::Success),
        Just(CompletionStatus::UnsupportedRequest),
        Just(CompletionStatus::RequestRetry),
        Just(CompletionStatus::CompleterAbort),
    ];
    (
        bdf(),
        status,
        any::<bool>(),
        1u16..=4096,
        bdf(),
        tag(),
        0u8..128,
        any::<bool>(),
        0u16..=32,
        untranslated_flags(),
    )
        .prop_flat_map(
            |(completer, status, bcm, byte_count, requester, tag, la, locked, dw, flags)| {
                payload(dw).prop_map(move |payload| OwnedTlp {
                    header: Header::Completion(Completion {
                        completer,
                        status,
                        bcm,
                        byte_count,
                        requester,
                        tag,
                        lower_address: la,
                        locked,
                    }),
                    flags,
                    payload,
                    digest: None,
                })
            },
        )
}

fn message() -> impl Strategy<Value = OwnedTlp> {
    let routing = prop_oneof![
        Just(MessageRouting::ToRootComplex),
        Just(MessageRouting::ByAddress),
        Just(MessageRouting::ById),
        Just(MessageRouting::BroadcastFromRootComplex),
        Just(MessageRouting::Local),
        Just(MessageRouting::GatheredToRootComplex),
    ];
    (
        bdf(),
        tag(),
        any::<u8>(),
        routing,
        any::<[u8; 8]>(),
        0u16..=8,
        untranslated_flags(),
    )
        .prop_flat_map(|(requester, tag, code, routing, body, dw, mut flags)| {
            if message_code::requires_tc0(code) {
                flags.traffic_class = 0;
            }
            payload(dw).prop_map(move |payload| OwnedTlp {
                header: Header::Message(Message {
                    requester,
                    tag,
                    code,
                    routing,
                    body,
                }),
                flags,
                payload,
                digest: None,
            })
        })
}

fn atomic() -> impl Strategy<Value = OwnedTlp> {
    let op_len = prop_oneof![
        (Just(AtomicOp::FetchAdd), prop_oneof![Just(1u16), Just(2)]),
        (Just(AtomicOp::Swap), prop_oneof![Just(1u16), Just(2)]),
        (
            Just(AtomicOp::CompareAndSwap),
            prop_oneof![Just(2u16), Just(4), Just(8)]
        ),
    ];
    (op_len, bdf(), tag(), address(), hint(), flags()).prop_flat_map(
        |((op, dw), requester, tag, address, hint, flags)| {
            let size = op.operand_size(dw);
            let address = address & !(size - 1);
            payload(dw).prop_map(move |payload| OwnedTlp {
                header: Header::Atomic(Atomic {
                    op,
                    requester,
                    tag,
                    address,
                    hint,
                }),
                flags,
                payload,
                digest: None,
            })
        },
    )
}

/// Any valid TLP, sometimes with a digest.
pub fn any_tlp() -> impl Strategy<Value = OwnedTlp> {
    (
        prop_oneof![
            mem_read(),
            mem_write(),
            io_like(),
            config(),
            completion(),
            message(),
            atomic()
        ],
        proptest::option::weighted(0.1, any::<u32>()),
    )
        .prop_map(|(mut t, digest)| {
            t.digest = digest;
            t
        })
}
