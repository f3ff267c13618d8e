//! PCIe's ordering rules between a host and a device of the box: the completions the
//! host answers the device's DMA reads with pass the host's non-posted requests that
//! wait for room in the device's backlog, so a device whose host is slow to take its
//! answers still gets its data (before, the box took nothing from that host, the
//! completions waited behind the requests and the device's read timed out).

mod common;

use std::time::Instant;

use common::{hub, iobox, rounds_until, TestHost, COPY_LEN};
use iobox::IoBox;

/// Config reads the host floods the device with: more than its backlog holds, fewer
/// than the backlog, the box's session and the deferred queue hold together (so the
/// box keeps taking the host's TLPs).
const FLOOD: u16 = 400;

#[test]
fn a_device_with_a_full_backlog_still_gets_its_dma_read_completions() {
    let mut ports = hub(2).into_iter();
    let start = Instant::now();
    let mut bx = iobox(ports.next().unwrap(), &[(0, 10)], |cfg| {
        // Few answers fit in the session (queued, and in flight unacknowledged): the
        // device's backlog fills.
        cfg.session.window = 8;
        cfg.session.max_tlps_per_frame = 8;
        cfg.session.send_queue = 32;
        // The deaf host stays up for the whole test.
        cfg.session.retry_limit = 1000;
    });
    let mut h = TestHost::new(ports.next().unwrap(), 10, start);
    let found = rounds_until(20_000, &mut [&mut bx], &mut [&mut h], |_, hs| {
        hs[0].drivers.len() == 1
    });
    assert!(found.is_some(), "the host did not find its device");

    // A copy starts: the device reads the source from the host's RAM; the host
    // answers the reads and holds the completions back.
    h.hold_completions = true;
    h.copy(1);
    let served = rounds_until(20_000, &mut [&mut bx], &mut [&mut h], |_, hs| {
        hs[0].dma_read_bytes_served() == COPY_LEN as u64
    });
    assert!(
        served.is_some(),
        "the device's reads never reached the host"
    );
    assert!(h.holds_a_completion());

    // The host stops taking the box's TLPs and floods the device with requests: its
    // backlog fills.
    h.deaf = true;
    h.flood_config_reads(FLOOD);
    let stalled = rounds_until(20_000, &mut [&mut bx], &mut [&mut h], |b, _| {
        b[0].slots()[0].backlog_len() == IoBox::BACKLOG
    });
    assert!(
        stalled.is_some(),
        "the backlog never filled: {:?}",
        bx.stats()
    );
    let f = |bx: &IoBox| bx.slots()[0].function.stats();
    assert_eq!(f(&bx).dma_read_bytes, 0);

    // The completions go out behind the requests, and reach the device past them.
    h.hold_completions = false;
    let read = rounds_until(20_000, &mut [&mut bx], &mut [&mut h], |b, _| {
        f(b[0]).dma_read_bytes == COPY_LEN as u64
    });
    assert!(
        read.is_some(),
        "the device never got its reads' completions: {:?} {:?}",
        f(&bx),
        bx.stats()
    );
    // Still stalled: the completions passed the requests that wait in the box.
    let s = &bx.slots()[0];
    assert_eq!(s.backlog_len(), IoBox::BACKLOG);
    assert!(s.deferred_len() > 0);
    assert_eq!(bx.stats().deferred, s.deferred_len() as u64);
    assert_eq!(f(&bx).completion_timeouts, 0);
    assert_eq!(bx.stats().deferred_full, 0, "{:?}", bx.stats());

    // The host listens again: the copy is verified byte for byte, and every request
    // is answered, in order.
    h.deaf = false;
    let done = rounds_until(20_000, &mut [&mut bx], &mut [&mut h], |_, hs| {
        hs[0].drivers[0].copies == 1 && hs[0].flood_answers.len() >= FLOOD as usize
    });
    assert!(
        done.is_some(),
        "copies {:?}, {} answers: {:?}",
        h.copies(),
        h.flood_answers.len(),
        bx.stats()
    );
    let tags: Vec<u16> = (0..FLOOD).map(|i| i % 256).collect();
    assert_eq!(h.flood_answers, tags);
    let st = bx.stats();
    assert!(st.deferred > 0, "{st:?}");
    assert_eq!(
        (st.no_host, st.undeliverable, st.dropped_on_reset),
        (0, 0, 0),
        "{st:?}"
    );
    assert_eq!(bx.slots()[0].deferred_len(), 0);
    assert_eq!(f(&bx).completion_timeouts, 0);
    assert_eq!(h.foreign, 0);
}
