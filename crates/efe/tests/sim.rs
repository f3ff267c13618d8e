//! EFE sessions in the deterministic simulator: delivery guarantees under every fault
//! mix, recovery from outages, session-down, peer restarts, and fair sharing.

use efe::sim::{LinkConfig, Rng, Sim};
use efe::{Config, Event, Session, State};

const EPOCH_A: u32 = 1000;
const EPOCH_B: u32 = 2000;

/// A sender (node 0) and a receiver (node 1) joined by a forward and a reverse link.
fn pair(seed: u64, cfg: Config, fwd: LinkConfig, rev: LinkConfig) -> Sim {
    let mut sim = Sim::new(seed);
    let f = sim.add_link(fwd);
    let r = sim.add_link(rev);
    let a = sim.add_node(Session::new(cfg, EPOCH_A).unwrap(), f);
    let b = sim.add_node(Session::new(cfg, EPOCH_B).unwrap(), r);
    sim.connect(a, b);
    sim
}

fn assert_clean(sim: &Sim, what: &str) {
    for f in &sim.flows {
        assert!(
            f.errors.is_empty(),
            "{what}: delivery errors: {:?}",
            f.errors
        );
        assert_eq!(f.received, f.total, "{what}: flow incomplete");
    }
}

#[test]
fn lossless_transfer() {
    let mut sim = pair(
        1,
        Config::default(),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    sim.add_flow(0, 1, 5000, 256);
    assert!(sim.run(1_000_000), "not done by 1 s: {:?}", sim.flows[0]);
    assert_clean(&sim, "lossless");
    let s = sim.nodes[0].session.stats();
    assert_eq!(s.retransmits, 0);
    assert_eq!(s.tlps_out, 5000);
    assert!(sim.events.iter().any(|e| e.1 == 0 && e.2 == Event::Up));
    assert!(s.min_rtt_us > 0 && s.srtt_us >= s.min_rtt_us);
}

/// A random fault mix for one seed.
fn faults(rng: &mut Rng) -> LinkConfig {
    let pick = |rng: &mut Rng, choices: &[f64]| choices[rng.below(choices.len() as u64) as usize];
    LinkConfig {
        bandwidth_bps: pick(rng, &[1e9, 10e9, 25e9]),
        delay_us: 1 + rng.below(50),
        jitter_us: pick(rng, &[0.0, 3.0, 20.0]) as u64,
        queue_bytes: pick(rng, &[16e3, 64e3, 1e6]) as usize,
        loss: pick(rng, &[0.0, 0.001, 0.01, 0.05, 0.2]),
        duplicate: pick(rng, &[0.0, 0.01, 0.05]),
        reorder: pick(rng, &[0.0, 0.01, 0.05, 0.2]),
        reorder_us: 1 + rng.below(100),
        corrupt: pick(rng, &[0.0, 0.001, 0.01, 0.05]),
        outages: Vec::new(),
    }
}

#[test]
fn exactly_once_in_order_for_thousands_of_seeds_and_fault_mixes() {
    let seeds: u64 = std::env::var("EFE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut stats = (0u64, 0u64, 0u64); // retransmits, rejected frames, tlps
    for seed in 0..seeds {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let cfg = Config {
            window: [4, 16, 64, 256][rng.below(4) as usize],
            max_tlps_per_frame: 1 + rng.below(32) as usize,
            nak: rng.below(2) == 0,
            ack_every: 1 + rng.below(8) as u32,
            retry_limit: 50,
            ..Config::default()
        };
        let fwd = faults(&mut rng);
        let rev = faults(&mut rng);
        let desc = format!("seed {seed}: {cfg:?} fwd {fwd:?} rev {rev:?}");
        let mut sim = pair(seed, cfg, fwd, rev);
        let payload = [8, 64, 128, 256][rng.below(4) as usize];
        sim.add_flow(0, 1, 300, payload);
        // And a smaller flow the other way, so acks ride on data too.
        sim.add_flow(1, 0, 50, 64);
        assert!(
            sim.run(20_000_000),
            "{desc}: not done in 20 s simulated: {:?}",
            sim.flows
        );
        assert_clean(&sim, &desc);
        for n in &sim.nodes {
            assert_eq!(n.session.state(), State::Up, "{desc}");
        }
        stats.0 += sim.nodes[0].session.stats().retransmits;
        stats.1 += sim.frames_rejected;
        stats.2 += sim.flows.iter().map(|f| f.received).sum::<u64>();
    }
    // The faults were real: frames were retransmitted and corrupted frames refused.
    assert!(stats.0 > 0 && stats.1 > 0, "{stats:?}");
    eprintln!(
        "{seeds} seeds: {} TLPs delivered, {} retransmits, {} corrupt frames refused",
        stats.2, stats.0, stats.1
    );
}

#[test]
fn recovers_from_an_outage_shorter_than_the_retry_limit() {
    let cfg = Config::default();
    let outage = vec![(2_000, 12_000)];
    let fwd = LinkConfig {
        outages: outage.clone(),
        ..LinkConfig::default()
    };
    let rev = LinkConfig {
        outages: outage,
        ..LinkConfig::default()
    };
    let mut sim = pair(3, cfg, fwd, rev);
    sim.add_flow(0, 1, 20_000, 128);
    assert!(sim.run(5_000_000));
    assert_clean(&sim, "10 ms outage");
    let s = sim.nodes[0].session.stats();
    assert!(s.timeouts > 0, "the outage must have cost timeouts: {s:?}");
    assert_eq!(sim.nodes[0].session.state(), State::Up);
    assert!(!sim.events.iter().any(|e| matches!(e.2, Event::Down { .. })));
}

#[test]
fn a_receiver_that_pauses_costs_few_timeouts_and_no_rate() {
    // The receiver is descheduled for 3 ms every 10 ms (a bridge thread sharing its
    // core): nothing is lost, but acknowledgements come 3 ms late, three times the
    // timeout floor. The first pauses time out; the acknowledgements then cover
    // frames sent only once, so those timeouts are recognised as spurious: their rate
    // decreases are undone and the floor rises above the pauses.
    let cfg = Config {
        rto_min_us: 1_000,
        ..Config::default()
    };
    let link = LinkConfig {
        delay_us: 10,
        ..LinkConfig::default()
    };
    let mut sim = pair(7, cfg, link.clone(), link);
    sim.add_flow(0, 1, 1_000_000, 256);
    let mut timeouts_by_pause = Vec::new();
    for k in 0..20u64 {
        let start = 2_000 + 10_000 * k;
        sim.run_while(start, |_| true);
        sim.pause(1, start + 3_000);
        sim.run_while(start + 10_000, |_| true);
        timeouts_by_pause.push(sim.nodes[0].session.stats().timeouts);
    }
    let s = sim.nodes[0].session.stats();
    assert!(sim.flows[0].errors.is_empty(), "{:?}", sim.flows[0].errors);
    assert!(sim.flows[0].received > 0);
    assert!(s.timeouts > 0, "the pauses never timed out: {s:?}");
    assert_eq!(
        s.spurious_timeouts, s.timeouts,
        "every timeout was spurious here: {s:?}"
    );
    // The last ten pauses cost no timeout at all.
    assert_eq!(
        timeouts_by_pause[9], timeouts_by_pause[19],
        "timeouts after each pause: {timeouts_by_pause:?}"
    );
    // And the rate was not driven down: at least the initial rate.
    assert!(
        s.rate_bytes_per_s >= cfg.rate.initial,
        "rate {} after the pauses: {s:?}",
        s.rate_bytes_per_s
    );
}

/// The sender's rate after a flow to a receiver that is away 400 µs of every 500 µs
/// (a bridge that sleeps between bursts, or shares its core).
fn rate_with_an_absent_receiver(report_waits: bool) -> f64 {
    let link = LinkConfig {
        delay_us: 5,
        ..LinkConfig::default()
    };
    let mut sim = pair(11, Config::default(), link.clone(), link);
    sim.report_waits = report_waits;
    sim.add_flow(0, 1, 1_000_000, 256);
    for k in 0..400u64 {
        let start = 1_000 + 500 * k;
        sim.run_while(start, |_| true);
        sim.pause(1, start + 400);
    }
    assert!(sim.flows[0].errors.is_empty(), "{:?}", sim.flows[0].errors);
    sim.nodes[0].session.stats().rate_bytes_per_s
}

#[test]
fn a_receiver_that_was_away_is_not_a_queue() {
    // Without the echo's wait the sender reads every batch taken after an absence as
    // 400 µs of queueing and cuts its rate; with it, the samples show no queue.
    let told = rate_with_an_absent_receiver(true);
    let not_told = rate_with_an_absent_receiver(false);
    println!("rate with the wait reported {told:.0} B/s, without {not_told:.0} B/s");
    assert!(
        told >= Config::default().rate.initial && told > 4.0 * not_told,
        "told {told}, not told {not_told}"
    );
}

#[test]
fn goes_down_after_a_longer_outage() {
    let cfg = Config {
        retry_limit: 5,
        ..Config::default()
    };
    let fwd = LinkConfig {
        outages: vec![(2_000, u64::MAX)],
        ..LinkConfig::default()
    };
    let mut sim = pair(4, cfg, fwd, LinkConfig::default());
    sim.add_flow(0, 1, 1_000_000, 64);
    assert!(!sim.run(2_000_000));
    let down = sim
        .events
        .iter()
        .find(|e| e.1 == 0 && matches!(e.2, Event::Down { .. }));
    let (at, _, Event::Down { lost }) = *down.expect("sender goes down") else {
        unreachable!()
    };
    assert!(lost > 0);
    assert_eq!(sim.nodes[0].session.state(), State::Down);
    // Down within the backed-off retry schedule: RTOs of at most 200 µs..100 ms.
    assert!(at < 2_000 + 200_000, "down at {at}");
    assert!(sim.nodes[0].session.send(&[0; 16]).is_err());
    // What arrived before the outage arrived in order.
    assert!(sim.flows[0].errors.is_empty());
}

#[test]
fn restarted_peer_is_detected_and_both_sides_resynchronise() {
    let cfg = Config::default();
    let mut sim = pair(5, cfg, LinkConfig::default(), LinkConfig::default());
    sim.add_flow(0, 1, 1_000_000, 64);
    // Run a while, then the receiving bridge restarts with a higher epoch.
    sim.run_while(3_000, |_| true);
    assert!(sim.flows[0].received > 0);
    sim.replace_session(1, Session::new(cfg, EPOCH_B + 1).unwrap());
    // Frames of the old session are still on the wire; the old flow is abandoned.
    sim.flows.clear();
    sim.run_while(10_000, |s| {
        !s.events
            .iter()
            .any(|e| e.1 == 0 && matches!(e.2, Event::PeerRestarted { .. }))
    });
    let restarted = sim
        .events
        .iter()
        .find(|e| e.1 == 0 && matches!(e.2, Event::PeerRestarted { .. }));
    assert!(
        restarted.is_some(),
        "sender never saw the restart: {:?}",
        sim.events
    );
    assert_eq!(sim.nodes[0].session.peer_epoch(), EPOCH_B + 1);
    // A fresh flow gets through on the resynchronised session, in order from 0.
    sim.add_flow(0, 1, 3_000, 256);
    assert!(sim.run(sim.now + 1_000_000));
    assert_clean(&sim, "after restart");
    assert!(
        sim.nodes[1].session.stats().drop_stale_epoch > 0
            || sim.nodes[0].session.stats().drop_stale_epoch > 0
    );
}

#[test]
fn stale_epoch_frames_are_refused() {
    use wire::{flags, FrameKind, TetherHeader};
    let mut s = Session::new(Config::default(), 50).unwrap();
    let mut h = TetherHeader::new(FrameKind::Data);
    h.epoch = 100;
    h.seq = 0;
    let rec = [0u8, 4, 1, 0, 1, 2, 3, 4];
    s.handle_frame(1, &h, &rec).unwrap();
    assert_eq!(s.recv().unwrap(), vec![1, 2, 3, 4]);
    // An older peer epoch is refused.
    h.epoch = 99;
    assert_eq!(
        s.handle_frame(2, &h, &rec),
        Err(efe::Refused::StalePeerEpoch)
    );
    // A frame addressed to an older epoch of ours is refused.
    h.epoch = 100;
    h.peer_epoch = 49;
    h.seq = 1;
    assert_eq!(
        s.handle_frame(3, &h, &rec),
        Err(efe::Refused::StaleLocalEpoch)
    );
    // Duplicates and gaps.
    h.peer_epoch = 50;
    h.seq = 0;
    h.flags = flags::ACK;
    assert_eq!(s.handle_frame(4, &h, &rec), Err(efe::Refused::Duplicate));
    // A frame beyond the reorder buffer's reach is dropped; one within it is held.
    h.seq = 1 + Config::default().reorder_frames + 1;
    assert_eq!(s.handle_frame(5, &h, &rec), Err(efe::Refused::OutOfOrder));
    h.seq = 5;
    assert_eq!(s.handle_frame(5, &h, &rec), Ok(()));
    assert_eq!(s.recv(), None);
    // The gap is answered with one NAK naming seq 1.
    let t = s.poll_transmit(6).unwrap();
    assert_eq!((t.header.kind, t.header.ack), (FrameKind::Nak, 1));
    // Malformed records are refused whole.
    h.seq = 1;
    assert_eq!(
        s.handle_frame(7, &h, &[0, 9, 1, 0, 1]),
        Err(efe::Refused::Malformed)
    );
    assert_eq!(s.stats().drop_malformed, 1);
}

#[test]
fn back_pressure_never_acknowledges_what_cannot_be_delivered() {
    let cfg = Config {
        recv_queue: 64,
        max_tlps_per_frame: 8,
        ..Config::default()
    };
    let mut sim = pair(6, cfg, LinkConfig::default(), LinkConfig::default());
    sim.add_flow(0, 1, 2_000, 64);
    // Take the receiver's flow out so nobody drains it: it fills and stops taking.
    let flow = sim.flows.pop().unwrap();
    for i in 0..flow.total {
        sim.nodes[0]
            .session
            .send(&efe::sim::flow_tlp(i, 64))
            .unwrap();
    }
    sim.run_while(50_000, |_| true);
    let rx = &mut sim.nodes[1].session;
    let mut got = 0;
    while let Some(t) = rx.recv() {
        assert_eq!(t, efe::sim::flow_tlp(got, 64));
        got += 1;
    }
    assert_eq!(got, 64, "exactly the receive queue's worth was taken");
    // Once drained, the rest flows.
    sim.flows.push(efe::sim::Flow {
        received: got,
        sent: flow.total,
        bytes_delivered: 0,
        ..flow
    });
    assert!(sim.run(sim.now + 2_000_000));
    assert_clean(&sim, "after draining");
}

#[test]
fn two_flows_share_a_bottleneck_fairly_near_the_target_delay() {
    let cfg = Config::default();
    let bottleneck_link = LinkConfig {
        bandwidth_bps: 1e9,
        delay_us: 10,
        queue_bytes: 2_000_000,
        ..LinkConfig::default()
    };
    let (mut sim, bottleneck) = Sim::dumbbell(8, cfg, bottleneck_link, 2).unwrap();
    let (a1, b1, a2, b2) = (0, 1, 2, 3);
    sim.add_flow(a1, b1, u64::MAX / 2, 256);
    // The second flow starts 20 ms later, against an established one.
    sim.run_while(20_000, |_| true);
    sim.add_flow(a2, b2, u64::MAX / 2, 256);
    sim.run_while(150_000, |_| true);
    let before: Vec<u64> = sim.flows.iter().map(|f| f.bytes_delivered).collect();
    let q0 = sim.links[bottleneck].stats.clone();
    sim.run_while(250_000, |_| true);
    let got: Vec<f64> = sim
        .flows
        .iter()
        .zip(&before)
        .map(|(f, b)| (f.bytes_delivered - b) as f64 * 8.0 / 0.1)
        .collect();
    for f in &sim.flows {
        assert!(f.errors.is_empty(), "{:?}", f.errors);
    }
    let ratio = got[0].min(got[1]) / got[0].max(got[1]);
    let total = got[0] + got[1];
    let q = &sim.links[bottleneck].stats;
    let queued = (q.offered - q.dropped_queue) - (q0.offered - q0.dropped_queue);
    let mean_delay = (q.queue_delay_sum_us - q0.queue_delay_sum_us) / queued as f64;
    eprintln!(
        "flow goodput {:.0} / {:.0} Mbit/s (ratio {ratio:.2}), total {:.0} Mbit/s, mean queueing delay {mean_delay:.1} us",
        got[0] / 1e6,
        got[1] / 1e6,
        total / 1e6
    );
    assert!(ratio > 0.8, "unfair: {got:?}");
    // The bottleneck is used (TLP payload is ~92% of the wire bytes at 256 B).
    assert!(total > 0.75e9, "under-used: {total}");
    // Queueing delay stays near the 50 us target, not at the 16 ms the queue allows.
    assert!(mean_delay < 100.0, "queueing delay {mean_delay} us");
    assert_eq!(q.dropped_queue, 0);
}

#[test]
fn aggregates_small_tlps_up_to_the_mtu_jumbo_included() {
    for (mtu, expect_per_frame) in [(1500, 5), (9000, 32)] {
        let cfg = Config {
            mtu,
            ..Config::default()
        };
        let mut sim = pair(9, cfg, LinkConfig::default(), LinkConfig::default());
        sim.add_flow(0, 1, 3_200, 256);
        assert!(sim.run(1_000_000));
        assert_clean(&sim, &format!("MTU {mtu}"));
        let s = sim.nodes[0].session.stats();
        // 256-byte MWrs are 268 bytes + a 4-byte record header: five fit in 1500 bytes,
        // and the 32-per-frame limit binds at 9000.
        assert_eq!(
            s.tlps_out / s.data_frames_out,
            expect_per_frame,
            "MTU {mtu}: {s:?}"
        );
        assert!(sim.links[0].stats.bytes_sent / sim.links[0].stats.offered <= mtu as u64 + 18);
    }
}
