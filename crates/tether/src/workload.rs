//! Workloads on a device through the host API, shared by `demo`, `host` and `bench`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostbridge::MemDevDriver;
use rootcomplex::{BarWindows, BridgeConfig, Host, Link, MemoryMap};

/// A root complex on `link` whose devices may DMA into `size` bytes of RAM at `base`
/// (DMA buffers are handed out of it too).
pub fn root_complex<L: Link>(link: L, base: u64, size: usize) -> Result<Host<L>> {
    root_complex_with(BridgeConfig::default(), link, base, size)
}

/// The same with the bridge's settings (MPS, RCB, completion timeout).
pub fn root_complex_with<L: Link>(
    cfg: BridgeConfig,
    link: L,
    base: u64,
    size: usize,
) -> Result<Host<L>> {
    let mut mem = MemoryMap::new();
    mem.add(base, Box::new(vec![0u8; size]))?;
    Ok(Host::new(
        cfg,
        mem,
        (base, size as u64),
        BarWindows::default(),
        link,
    ))
}

/// `n` MMIO reads of the memdev's MAGIC register, each checked; their round trips,
/// sorted.
pub fn mmio_round_trips<L: Link>(
    host: &mut Host<L>,
    bdf: tlp::Bdf,
    n: usize,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let v = host.bar_read32(bdf, 0, endpoint::memdev::regs::MAGIC)?;
        lat.push(t.elapsed());
        if v != endpoint::memdev::MAGIC {
            anyhow::bail!("MMIO read of {bdf} returned {v:#x}, not the memdev's magic");
        }
    }
    lat.sort();
    Ok(lat)
}

/// Random verified copies through the device: `count` of them, sizes 1..=max.
pub fn copies<L: Link>(
    host: &mut Host<L>,
    drv: &MemDevDriver,
    count: usize,
    max: usize,
    seed: u64,
    progress: bool,
) -> Result<(u64, Duration)> {
    let mut rng = netem::Rng::new(seed);
    let max = max.clamp(1, drv.buffer_size as usize);
    let src = host.alloc_dma(max + 64)?;
    let dst = host.alloc_dma(max + 64)?;
    let tty = std::io::stderr().is_terminal();
    let (mut bytes, start) = (0u64, Instant::now());
    let mut last_shown = Instant::now();
    for i in 0..count {
        let len = 1 + (rng.next_u64() as usize % max);
        let (so, d_o) = (rng.next_u64() % 64, rng.next_u64() % 64);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        drv.copy_checked(
            host,
            src.addr + so,
            dst.addr + d_o,
            &data,
            Duration::from_secs(10),
        )
        .with_context(|| format!("copy {i} of {len} bytes"))?;
        bytes += 2 * len as u64; // read from the host and written back
        let done = i + 1;
        let step = (count / 10).max(1);
        let show = if tty {
            last_shown.elapsed() > Duration::from_millis(100) || done == count
        } else {
            done % step == 0 || done == count
        };
        if progress && show {
            last_shown = Instant::now();
            let width = 30;
            let filled = done * width / count.max(1);
            let rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
            let line = format!(
                "  [{}{}] {done}/{count} copies verified, {rate:.1} MB/s",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            if tty {
                eprint!("\r{line}");
                if done == count {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
        }
    }
    Ok((bytes, start.elapsed()))
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
