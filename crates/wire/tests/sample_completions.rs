//! Every completion in the sample conversation follows the completion rules of the PCIe
//! Base Specification (§2.2.9) for the request it answers: Byte Count 4 and Lower
//! Address 0 for I/O and configuration requests; Byte Count = operand size and Lower
//! Address 0 (reserved) for AtomicOps; Byte Count and Lower Address as §2.3.1.1 defines
//! them for memory reads (checked by `ReadReassembly`). Every non-posted request is
//! answered.

use std::collections::HashMap;

use tlp::{Bdf, Header, Progress, Rcb, ReadReassembly, Tag};
use wire::{sample, Body, Frame};

/// What a completion must carry, by the request it answers.
enum Expect {
    /// I/O, configuration and AtomicOp requests: exact Byte Count, Lower Address 0.
    Fixed {
        byte_count: u16,
    },
    Read(Box<ReadReassembly>, Vec<u8>),
}

#[test]
fn sample_completions_follow_the_completion_rules() {
    let frames = sample::frames();
    let mut pending: HashMap<(Bdf, Tag), (String, Expect)> = HashMap::new();
    let mut completions = 0;
    for f in &frames {
        let frame = Frame::parse(&f.bytes, None).unwrap();
        let Body::Data(records) = frame.body().unwrap() else {
            continue;
        };
        for r in records {
            let t = r.unwrap().tlp().unwrap();
            let name = t.to_string();
            let expect = match t.header {
                Header::ConfigRead(_)
                | Header::ConfigWrite(_)
                | Header::IoRead(_)
                | Header::IoWrite(_) => Expect::Fixed { byte_count: 4 },
                Header::Atomic(a) => Expect::Fixed {
                    byte_count: a.op.operand_size((t.payload.len() / 4) as u16) as u16,
                },
                Header::MemRead(r) => Expect::Read(
                    Box::new(ReadReassembly::new(&r, Rcb::B64)),
                    vec![0; r.length_dw as usize * 4],
                ),
                Header::Completion(c) => {
                    completions += 1;
                    let (request, expect) = pending
                        .get_mut(&(c.requester, c.tag))
                        .unwrap_or_else(|| panic!("{name}: no request"));
                    let done = match expect {
                        Expect::Fixed { byte_count } => {
                            assert_eq!(c.byte_count, *byte_count, "{name} for {request}");
                            assert_eq!(c.lower_address, 0, "{name} for {request}");
                            true
                        }
                        Expect::Read(reasm, buf) => {
                            match reasm.accept(&c, t.payload, buf) {
                                Ok(p) => p == Progress::Complete,
                                // An error status ends the read; the checks ran first.
                                Err(tlp::ReassemblyError::Status(_)) => true,
                                Err(e) => panic!("{name} for {request}: {e}"),
                            }
                        }
                    };
                    if done {
                        pending.remove(&(c.requester, c.tag));
                    }
                    continue;
                }
                Header::MemWrite(_) | Header::Message(_) => continue,
            };
            let id = t.header.transaction_id().unwrap();
            assert!(pending.insert(id, (name, expect)).is_none(), "tag reused");
        }
    }
    assert!(completions > 0);
    let unanswered: Vec<_> = pending.values().map(|(n, _)| n.clone()).collect();
    assert!(unanswered.is_empty(), "unanswered: {unanswered:?}");
}
