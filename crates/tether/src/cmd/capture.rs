//! `tether capture` and `tether wire replay`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{pcap, signals};
use dataplane::sys::PacketSocket;

pub struct Options {
    pub interface: String,
    pub output: PathBuf,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub all: bool,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub seen: u64,
    pub filtered: u64,
    pub written: u64,
}

/// The EtherType after an optional 802.1Q tag.
fn ethertype(frame: &[u8]) -> Option<u16> {
    let at = |i: usize| {
        frame
            .get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match at(12)? {
        wire::ethernet::TPID_8021Q => at(16),
        t => Some(t),
    }
}

/// Captures until the count or duration is reached, or SIGINT/SIGTERM.
pub fn run(opts: &Options) -> Result<Stats> {
    // Outgoing frames too, as tcpdump shows them; kernel receive timestamps.
    let sock = PacketSocket::open(&opts.interface, false, true)?;
    let mut out = pcap::Writer::create(&opts.output)?;
    signals::install();
    tracing::info!(
    target: "tether::capture",
           "tether capture: listening on {} ({})",
           opts.interface,
           if opts.all {
               "all frames"
           } else {
               "tether frames"
           }
       );
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536 + 4];
    loop {
        if signals::stop_requested()
            || opts.count.is_some_and(|c| stats.written >= c)
            || opts.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if !sock.wait(Duration::from_millis(100)) {
            continue;
        }
        while let Some(rx) = sock.recv(&mut buf)? {
            stats.seen += 1;
            let frame = &buf[..rx.len];
            if !opts.all && ethertype(frame) != Some(wire::ETHERTYPE) {
                stats.filtered += 1;
                continue;
            }
            out.write(rx.time_ns / 1000, frame)?;
            stats.written += 1;
            if opts.count.is_some_and(|c| stats.written >= c) {
                break;
            }
        }
    }
    out.finish()?;
    Ok(stats)
}

/// Sends every frame of a pcap file out of `interface`, `repeat` times over.
pub fn replay(path: &Path, interface: &str, gap: Duration, repeat: u64) -> Result<u64> {
    let frames = pcap::read(path)?;
    if frames.is_empty() {
        bail!("{} holds no frames", path.display());
    }
    let sock = PacketSocket::open(interface, true, false)?;
    let mut sent = 0;
    for (_, frame) in frames.iter().cycle().take(frames.len() * repeat as usize) {
        // A full kernel queue is back-pressure: wait and try again.
        while !sock.send(frame)? {
            std::thread::sleep(Duration::from_micros(50));
        }
        sent += 1;
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    Ok(sent)
}
