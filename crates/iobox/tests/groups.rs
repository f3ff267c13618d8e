//! One box, several groups, several hosts at once: each host gets its own devices'
//! traffic, and one host that stops taking what the box sends holds back only its
//! own devices.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{hub, iobox, round, rounds_until, TestHost};
use iobox::IoBox;
use wire::MacAddr;

/// Verified copies each device runs.
const COPIES: u32 = 12;
/// Rounds the copies get: several times what they take.
const ROUNDS: u32 = 3000;

/// Three hosts (groups 10, 20, 30), each with its memdev in one box (slots 0, 1, 2).
/// With `stall`, host 30 first sends more config reads than the box can hold answers
/// for and stops taking anything (its device's backlog is full, and stays full).
/// Then hosts 10 and 20 run `COPIES` verified copies each for `ROUNDS` rounds; returns
/// the copies each got done.
fn copies_beside(stall: bool) -> BTreeMap<u16, u32> {
    let mut ports = hub(4).into_iter();
    let start = Instant::now();
    let mut bx = iobox(ports.next().unwrap(), &[(0, 10), (1, 20), (2, 30)], |cfg| {
        // Few answers fit in the session (queued, and in flight unacknowledged): the
        // device's backlog fills.
        cfg.session.window = 8;
        cfg.session.max_tlps_per_frame = 8;
        cfg.session.send_queue = 32;
        // The stalled host stays up for the whole test.
        cfg.session.retry_limit = 1000;
    });
    let mut hosts: Vec<TestHost> = [10, 20, 30]
        .into_iter()
        .map(|g| TestHost::new(ports.next().unwrap(), g, start))
        .collect();
    let [h10, h20, h30] = &mut hosts[..] else {
        unreachable!()
    };
    let found = rounds_until(20_000, &mut [&mut bx], &mut [h10, h20, h30], |_, hs| {
        hs.iter().all(|h| h.drivers.len() == 1)
    });
    assert!(found.is_some(), "the hosts did not find their devices");
    if stall {
        h30.flood_config_reads(600);
        h30.deaf = true;
        let full = rounds_until(20_000, &mut [&mut bx], &mut [h10, h20, h30], |b, _| {
            b[0].slots()[2].backlog_len() == IoBox::BACKLOG
        });
        assert!(full.is_some(), "host 30's device backlog never filled");
    }
    h10.copy(COPIES);
    h20.copy(COPIES);
    for _ in 0..ROUNDS {
        round(&mut [&mut bx], &mut [h10, h20, h30], None);
    }
    if stall {
        assert_eq!(
            bx.slots()[2].backlog_len(),
            IoBox::BACKLOG,
            "the stall ended: {:?} {:?} {:?}",
            bx.stats(),
            bx.events,
            h30.events
        );
        assert!(bx.stats().backlog_full > 0);
    }
    for h in [&*h10, &*h20] {
        assert_eq!(h.foreign, 0, "a host got TLPs of another's device");
    }
    let box_mac = MacAddr(bx.fabric().port().info().mac);
    [(10, &*h10, 0), (20, &*h20, 1)]
        .into_iter()
        .map(|(g, h, slot)| (g, h.copies().get(&(box_mac, slot)).copied().unwrap_or(0)))
        .collect()
}

/// Head-of-line blocking across hosts: a full backlog of one group's device held back
/// the box's intake for every group.
#[test]
fn a_stalled_host_holds_back_only_its_own_devices() {
    let alone = copies_beside(false);
    assert_eq!(alone, BTreeMap::from([(10, COPIES), (20, COPIES)]));
    let beside_stalled = copies_beside(true);
    assert_eq!(
        beside_stalled, alone,
        "copies in {ROUNDS} rounds beside a stalled host"
    );
}
