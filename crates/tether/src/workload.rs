//! Workloads on a device through the host API, shared by `demo`, `host` and `bench`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostbridge::MemDevDriver;
use rootcomplex::{BarWindows, BridgeConfig, DmaBuffer, Host, Link, MemoryMap};

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

/// The two DMA buffers that verified copies go through, taken from the host's DMA
/// area once and used for every run: the root complex never gives DMA memory back,
/// so a program that checks device after device (`tether host`'s self-test, for
/// every device it is given, again and again) would otherwise run out of its area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyBuffers {
    src: DmaBuffer,
    dst: DmaBuffer,
    /// The largest copy they hold (each buffer has 64 bytes more for the random
    /// misalignment of both ends).
    max: usize,
}

impl CopyBuffers {
    /// Buffers for copies of up to `max` bytes (at least 1).
    pub fn alloc<L: Link>(host: &mut Host<L>, max: usize) -> Result<CopyBuffers> {
        let max = max.max(1);
        let len = max
            .checked_add(64)
            .with_context(|| format!("DMA buffers for copies of {max} bytes"))?;
        let src = host.alloc_dma(len)?;
        let dst = host.alloc_dma(len)?;
        Ok(CopyBuffers { src, dst, max })
    }
}

/// The largest copy to make through a memdev whose buffer is `device_buffer` bytes
/// (as the device reports it) with buffers for `max`; a device that reports no
/// buffer at all cannot copy anything.
fn copy_limit(max: usize, device_buffer: u32) -> Result<usize> {
    match usize::try_from(device_buffer) {
        Ok(0) => anyhow::bail!("the device reports a buffer of 0 bytes"),
        Ok(n) => Ok(max.clamp(1, n)),
        Err(_) => Ok(max.max(1)),
    }
}

/// Random verified copies through the device: `count` of them, sizes 1..=max, in
/// buffers taken for this run (a program that runs this more than a few times uses
/// [`copies_in`] with buffers of its own).
pub fn copies<L: Link>(
    host: &mut Host<L>,
    drv: &MemDevDriver,
    count: usize,
    max: usize,
    seed: u64,
    progress: bool,
) -> Result<(u64, Duration)> {
    let bufs = CopyBuffers::alloc(host, copy_limit(max, drv.buffer_size)?)?;
    copies_in(host, drv, &bufs, count, seed, progress)
}

/// Random verified copies through the device in `bufs`: `count` of them, sizes 1 to
/// the smaller of the buffers' and the device's size. Before each copy its target is
/// filled with the complement of the data, so what an earlier run left there (the
/// same seed gives the same copies) can never pass for a copy the device did not make.
pub fn copies_in<L: Link>(
    host: &mut Host<L>,
    drv: &MemDevDriver,
    bufs: &CopyBuffers,
    count: usize,
    seed: u64,
    progress: bool,
) -> Result<(u64, Duration)> {
    let mut rng = netem::Rng::new(seed);
    let max = copy_limit(bufs.max, drv.buffer_size)?;
    let (src, dst) = (bufs.src, bufs.dst);
    let tty = std::io::stderr().is_terminal();
    let (mut bytes, start) = (0u64, Instant::now());
    let mut last_shown = Instant::now();
    for i in 0..count {
        let len = 1 + (rng.next_u64() as usize % max);
        let (so, d_o) = (rng.next_u64() % 64, rng.next_u64() % 64);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let poison: Vec<u8> = data.iter().map(|b| !b).collect();
        host.write_memory(dst.addr + d_o, &poison)?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use dataplane::ports::mem;
    use dataplane::{Mempool, Port};
    use fabric::{FabricPort, Node, NodeConfig};
    use hostbridge::FabricLink;
    use iobox::{IoBox, Slot};
    use wire::{BridgeRole, MacAddr};

    use super::*;

    const GID: u16 = 10;
    const RAM: u64 = 0x1_0000_0000;

    fn node(port: &dyn Port, role: BridgeRole, id: u64) -> Node {
        let mut cfg = NodeConfig::new(MacAddr(port.info().mac), role, id, 1000);
        cfg.info_interval_us = 20_000;
        // Two busy threads and the test harness on a shared machine.
        cfg.missed_infos = 25;
        Node::new(cfg).unwrap()
    }

    #[test]
    fn copy_limit_takes_the_smaller_and_refuses_an_empty_device() {
        assert_eq!(copy_limit(65536, 4096).unwrap(), 4096);
        assert_eq!(copy_limit(4096, 1 << 20).unwrap(), 4096);
        assert_eq!(copy_limit(0, 4096).unwrap(), 1);
        let e = copy_limit(65536, 0).unwrap_err().to_string();
        assert!(e.contains("buffer of 0 bytes"), "{e}");
    }

    /// A host whose DMA area holds one pair of copy buffers and little more runs the
    /// self-test's copies through a memdev many times in the same buffers (as
    /// `tether host` does for every device it gets), where taking new buffers for
    /// each run runs out of the area on the third run.
    #[test]
    fn copies_in_reuses_its_buffers() {
        const MAX: usize = 16384;
        // Room for two pairs of buffers, not three.
        let area = 5 * (MAX + 64);
        let pool = Mempool::new(4096, 2048).unwrap();
        let (a, b) = mem::pair(&pool, 1024, 1500);
        let stop = Arc::new(AtomicBool::new(false));
        let box_thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let n = node(&a, BridgeRole::IoBox, 7);
                let mut iobox = IoBox::new(
                    FabricPort::new(n, Box::new(a)),
                    vec![Slot::memdev(0, GID, 1 << 16).unwrap()],
                );
                while !stop.load(Ordering::Relaxed) {
                    iobox.poll(Duration::from_micros(200)).unwrap();
                }
            })
        };
        let mut hn = node(&b, BridgeRole::Host, 1);
        hn.join(GID).unwrap();
        let mut link = FabricLink::new(FabricPort::new(hn, Box::new(b)));
        let (peer, dev) = link
            .wait_for_device(GID, Duration::from_secs(10))
            .expect("no device announced");
        link.set_target(GID, peer);
        let mut host = root_complex(link, RAM, area).unwrap();
        let bdf = tlp::Bdf::new(1, dev.slot, 0).unwrap();
        host.enumerate(bdf).unwrap();

        let bufs = CopyBuffers::alloc(&mut host, MAX).unwrap();
        for run in 0..6 {
            // A driver probed anew each time, as for a device that came back.
            let drv = MemDevDriver::probe(&mut host, bdf).unwrap();
            let (bytes, _) = copies_in(&mut host, &drv, &bufs, 3, 1, false)
                .unwrap_or_else(|e| panic!("run {run}: {e:#}"));
            assert!(bytes > 0);
        }
        // Buffers taken per run (`copies`) exhaust the area: this one's own pair and
        // one more fit, the next does not.
        let drv = MemDevDriver::probe(&mut host, bdf).unwrap();
        copies(&mut host, &drv, 1, MAX, 2, false).unwrap();
        let e = copies(&mut host, &drv, 1, MAX, 2, false).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<rootcomplex::HostError>(),
                Some(rootcomplex::HostError::DmaFull(_))
            ),
            "{e:#}"
        );
        stop.store(true, Ordering::Relaxed);
        box_thread.join().unwrap();
    }
}
