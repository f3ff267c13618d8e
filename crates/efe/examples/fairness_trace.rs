//! Two flows on one 1 Gbit/s bottleneck, the second starting 20 ms after the first:
//! prints each flow's goodput and rate, the RTTs and the bottleneck's queueing delay
//! every 10 ms of simulated time. Arguments: additive increase (bytes/s per RTT) and
//! beta, to explore the rate controller.
//!
//!     cargo run --release -p efe --example fairness_trace [-- 8e6 0.5]

use efe::sim::{LinkConfig, Sim};
use efe::{Config, RateConfig};
fn main() {
    let ai: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(RateConfig::default().additive_increase);
    let beta: f64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(RateConfig::default().beta);
    let cfg = Config {
        rate: RateConfig {
            additive_increase: ai,
            beta,
            ..RateConfig::default()
        },
        ..Config::default()
    };
    let bottleneck = LinkConfig {
        bandwidth_bps: 1e9,
        delay_us: 10,
        queue_bytes: 2_000_000,
        ..LinkConfig::default()
    };
    let (mut sim, bn) = Sim::dumbbell(8, cfg, bottleneck, 2).unwrap();
    let (a1, b1, a2, b2) = (0, 1, 2, 3);
    sim.add_flow(a1, b1, u64::MAX / 2, 256);
    sim.run_while(20_000, |_| true);
    sim.add_flow(a2, b2, u64::MAX / 2, 256);
    let mut prev: Vec<u64> = sim.flows.iter().map(|f| f.bytes_delivered).collect();
    prev.push(0);
    let mut q0 = sim.links[bn].stats.clone();
    for step in 1..=25 {
        sim.run_while(20_000 + step * 10_000, |_| true);
        let got: Vec<f64> = sim
            .flows
            .iter()
            .zip(&prev)
            .map(|(f, p)| (f.bytes_delivered - p) as f64 * 8.0 / 0.01 / 1e6)
            .collect();
        prev = sim.flows.iter().map(|f| f.bytes_delivered).collect();
        let q = sim.links[bn].stats.clone();
        let d = (q.queue_delay_sum_us - q0.queue_delay_sum_us)
            / ((q.offered - q0.offered).max(1)) as f64;
        q0 = q;
        println!("t={:>4}ms flows {:>5.0} {:>5.0} Mbit/s rates {:>5.0} {:>5.0} Mbit/s srtt {} {} minrtt {} {} q {:.1}us", sim.now/1000, got[0], got[1],
            sim.nodes[0].session.stats().rate_bytes_per_s*8e-6, sim.nodes[2].session.stats().rate_bytes_per_s*8e-6,
            sim.nodes[0].session.stats().srtt_us, sim.nodes[2].session.stats().srtt_us, sim.nodes[0].session.stats().min_rtt_us, sim.nodes[2].session.stats().min_rtt_us, d);
    }
}
