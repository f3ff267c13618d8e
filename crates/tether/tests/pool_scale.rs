//! The device pool at scale (issue 16): 4 `tether host`s (groups 10, 20, 30, 40) and 4
//! `tether iobox`es with 8 memdevs each, every bridge a process in a network namespace
//! of its own, on one Linux bridge; a manager in a namespace of its own moves the 32
//! devices between the hosts.
//!
//! - Every host starts with 8 devices from all 4 boxes (box b's slot s in group
//!   10 * (1 + (b + s) % 4)).
//! - 200 seeded random moves: a device drawn among the 32, sent to one of the other 3
//!   hosts' groups, or about 1 in 10 to the free group 4093 (and from there, when drawn
//!   again, back to one of the 4 hosts). The moves go through `fabric::Manager` used as
//!   a library on an AF_PACKET socket in the manager's namespace, 5 of them through
//!   `tether ctl set-group`.
//! - After each move, the 4 hosts' control sockets show every device on the host of
//!   its group and nowhere else, in phase Ready, and the receiving host printed one
//!   more `self-test: 1 DMA copies verified`.
//! - Measured and printed (for docs/performance.md; nothing is asserted on time but
//!   the 150 s cap against hangs): per move, from the box acknowledging the CTRL to
//!   (a) the old host's removal and (b) the new host's verified device, median and
//!   max; host RSS with 0, 8 and 32 devices; INFO bytes per second per device over
//!   10 s idle.
//! - At the end: switch ports in use equal the devices held on every host (no port
//!   leak), nothing misrouted, no foreign completion, no failure, no surprise removal,
//!   and each host verified exactly as many devices as it was given.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use dataplane::netns::Rig;
use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::{Mbuf, Mempool, Port};
use fabric::{Manager, ManagerEvent};
use wire::{BridgeRole, CtrlStatus, MacAddr};

/// Bridge settings for 8 busy processes on 2 cores: INFO every 100 ms (the default), a
/// peer down only after 3 s of silence (a process can be off the CPU for a while),
/// short busy-polling that yields early.
const BRIDGE: &str =
    "info_interval_ms = 100\nmissed_infos = 30\nspin_us = 100\nyield_after_us = 20\n";
/// The hosts' DMA memory: room for 15 pairs of the self-test's 64 KiB copy buffers, so
/// that a host that took new buffers for every device it gets would run out during
/// the moves (each host gets about 50 devices in all).
const HOST_MEMORY: usize = 2 << 20;
const GIDS: [u16; 4] = [10, 20, 30, 40];
const FREE: u16 = 4093;
const BOXES: usize = 4;
const SLOTS: u8 = 8;
const MOVES: usize = 200;
/// The moves made through `tether ctl set-group` instead of the library.
const CLI_MOVES: [usize; 5] = [20, 60, 100, 140, 180];
const SEED: u64 = 16;
/// The whole test, set-up to tear-down, against hangs.
const CAP: Duration = Duration::from_secs(150);
/// One move, against hangs.
const MOVE_LIMIT: Duration = Duration::from_secs(20);
const IDLE: Duration = Duration::from_secs(10);
const VERIFIED: &str = "self-test: 1 DMA copies verified";

fn box_id(b: usize) -> u64 {
    0xb0c0 + b as u64
}

/// The test's clock and its cap.
struct Clock {
    start: Instant,
}

impl Clock {
    fn check(&self, what: &str) {
        assert!(
            self.start.elapsed() < CAP,
            "pool_scale: past its {CAP:?} cap ({:?}) while {what}",
            self.start.elapsed()
        );
    }
}

/// The management station: `fabric::Manager` on an AF_PACKET socket opened in the
/// manager's namespace, pumped by the test. It also counts the INFO frames it hears
/// and their bytes.
struct Station {
    port: AfPacketPort,
    m: Manager,
    start: Instant,
    rx: Vec<Mbuf>,
    info_frames: u64,
    info_bytes: u64,
}

impl Station {
    fn open(rig: &Rig, ns: usize, iface: &'static str) -> Station {
        let port = rig.within(ns, move || {
            let pool = Mempool::new(4096, 2048).unwrap();
            AfPacketPort::open(iface, &pool, RingConfig::low_latency()).unwrap()
        });
        let m = Manager::new(MacAddr(port.info().mac), fabric::fresh_epoch());
        Station {
            port,
            m,
            start: Instant::now(),
            rx: Vec::new(),
            info_frames: 0,
            info_bytes: 0,
        }
    }

    /// Sends what the manager has and takes what has arrived.
    fn pump(&mut self) {
        let pool = self.port.pool().clone();
        while let Some(f) = self.m.poll_transmit() {
            let mut b = pool.get().expect("a buffer for the CTRL frame");
            pool.buf_mut(&mut b)[..f.len()].copy_from_slice(&f);
            pool.set_len(&mut b, f.len());
            let mut v = vec![b];
            self.port.tx_burst(&mut v).unwrap();
            for b in v {
                pool.put(b);
            }
        }
        loop {
            let n = self.port.rx_burst(&mut self.rx, 64).unwrap();
            let now = self.start.elapsed().as_micros() as u64;
            for b in self.rx.drain(..) {
                let before = self.m.stats().infos_in;
                let data = pool.data(&b);
                self.m.handle_frame(now, data, None);
                if self.m.stats().infos_in > before {
                    self.info_frames += 1;
                    self.info_bytes += data.len() as u64;
                }
                pool.put(b);
            }
            if n == 0 {
                return;
            }
        }
    }

    /// Pumps for `d`, sleeping on the socket in between.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            self.pump();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.port.wait_rx(left.min(Duration::from_millis(5)));
        }
    }

    /// Moves the device in `slot` of box `id` at `mac` from group `from` to `to`,
    /// asking again every 200 ms until the box answers; the answer must be Ok.
    fn set_group(&mut self, clock: &Clock, mac: MacAddr, id: u64, slot: u8, from: u16, to: u16) {
        loop {
            clock.check("waiting for a box's answer to SET_GROUP");
            let req = self.m.set_group(from, mac, id, slot, to).unwrap();
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_millis(200) {
                self.run_for(Duration::from_millis(2));
                while let Some(e) = self.m.poll_event() {
                    if let ManagerEvent::Result {
                        from: f,
                        request_id,
                        status,
                    } = e
                    {
                        if f == mac && request_id == req {
                            assert_eq!(status, CtrlStatus::Ok, "{id:#x}/{slot} to {to}");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// One device of the pool and the group it is in.
#[derive(Clone, Debug)]
struct Dev {
    bx: usize,
    slot: u8,
    gid: u16,
}

/// The host index of group `gid` (none for the free group).
fn host_of(gid: u16) -> Option<usize> {
    GIDS.iter().position(|g| *g == gid)
}

/// The (box MAC, slot) of the devices a host lists, whether all are Ready, and how
/// many entries it lists (more than the set holds: one listed twice).
fn held(stats: &serde_json::Value) -> (BTreeSet<(String, u8)>, bool, usize) {
    let devices = stats["devices"].as_array().expect("devices");
    let mut set = BTreeSet::new();
    let mut ready = true;
    for d in devices {
        set.insert((
            d["box"].as_str().unwrap().to_string(),
            d["slot"].as_u64().unwrap() as u8,
        ));
        ready &= d["phase"] == "Ready";
    }
    (set, ready, devices.len())
}

/// Whether the hosts hold exactly the devices of their groups, each once and Ready;
/// otherwise what differs.
fn check_placement(
    stats: &[serde_json::Value],
    devs: &[Dev],
    macs: &[MacAddr],
) -> Result<(), String> {
    for (h, s) in stats.iter().enumerate() {
        let want: BTreeSet<(String, u8)> = devs
            .iter()
            .filter(|d| d.gid == GIDS[h])
            .map(|d| (macs[d.bx].to_string(), d.slot))
            .collect();
        let (got, ready, n) = held(s);
        if got != want || n != want.len() || !ready {
            return Err(format!(
                "host {} (group {}): wants {want:?}, lists {:?}",
                h, GIDS[h], s["devices"]
            ));
        }
    }
    Ok(())
}

fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (v[v.len() / 2], v[v.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn pool_of_32_devices_on_4_hosts_200_moves() {
    let test = "pool_of_32_devices_on_4_hosts_200_moves";
    let Some(mut rig) = Rig::for_test(test, "tps") else {
        return;
    };
    let clock = Clock {
        start: Instant::now(),
    };
    let sw = rig.host("sw").unwrap();
    let boxes: Vec<usize> = (0..BOXES)
        .map(|b| rig.host(&format!("b{b}")).unwrap())
        .collect();
    let hosts: Vec<usize> = (0..GIDS.len())
        .map(|h| rig.host(&format!("h{h}")).unwrap())
        .collect();
    let mgr = rig.host("mgr").unwrap();
    let mut outer = Vec::new();
    for (i, ns) in boxes.iter().enumerate() {
        rig.veth(*ns, &format!("pbb{i}"), sw, &format!("swb{i}"), 1500)
            .unwrap();
        outer.push(format!("swb{i}"));
    }
    for (i, ns) in hosts.iter().enumerate() {
        rig.veth(*ns, &format!("pbh{i}"), sw, &format!("swh{i}"), 1500)
            .unwrap();
        outer.push(format!("swh{i}"));
    }
    rig.veth(mgr, "pbmgr", sw, "swmgr", 1500).unwrap();
    outer.push("swmgr".into());
    let outer: Vec<&str> = outer.iter().map(String::as_str).collect();
    rig.bridge(sw, "br0", &outer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = |p: &PathBuf| p.to_str().unwrap().to_string();
    let host_socks: Vec<PathBuf> = (0..GIDS.len())
        .map(|h| d.join(format!("h{h}.sock")))
        .collect();
    let box_socks: Vec<PathBuf> = (0..BOXES).map(|b| d.join(format!("b{b}.sock"))).collect();

    // The hosts first, to see their memory with no device.
    let mut hp: Vec<Proc> = Vec::new();
    for (h, gid) in GIDS.iter().enumerate() {
        let toml = write(
            d,
            &format!("h{h}.toml"),
            &format!(
                "gid = {gid}\nself_test = 1\n[port]\ninterface = \"pbh{h}\"\n\
                 [memory]\nsize = {HOST_MEMORY}\n[bridge]\n{BRIDGE}control = \"{}\"\n",
                host_socks[h].display()
            ),
        );
        let name: &'static str = ["host 10", "host 20", "host 30", "host 40"][h];
        hp.push(Proc::spawn(
            &rig,
            hosts[h],
            name,
            &["host", "--config", &cfg(&toml)],
        ));
    }
    let mut st = Station::open(&rig, mgr, "pbmgr");
    loop {
        clock.check("waiting for the hosts' control sockets");
        if control_requests(&host_socks, "ping").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let them settle (port set-up, first INFO rounds) before reading their memory.
    st.run_for(Duration::from_millis(500));
    let rss0: Vec<u64> = hp.iter().map(Proc::rss_bytes).collect();

    // The boxes: box b's slot s in group 10 * (1 + (b + s) % 4), so that each host
    // starts with 2 devices of every box.
    let t0 = Instant::now();
    let mut devs = Vec::new();
    let mut bp: Vec<Proc> = Vec::new();
    for b in 0..BOXES {
        let mut toml = format!(
            "[port]\ninterface = \"pbb{b}\"\n[bridge]\nid = {:#x}\n{BRIDGE}control = \"{}\"\n",
            box_id(b),
            box_socks[b].display()
        );
        for s in 0..SLOTS {
            let gid = GIDS[(b + s as usize) % GIDS.len()];
            toml.push_str(&format!(
                "[[device]]\nslot = {s}\nmodel = \"memdev\"\ngid = {gid}\nbuffer_size = 65536\n"
            ));
            devs.push(Dev {
                bx: b,
                slot: s,
                gid,
            });
        }
        let path = write(d, &format!("b{b}.toml"), &toml);
        let name: &'static str = ["box 0", "box 1", "box 2", "box 3"][b];
        bp.push(Proc::spawn(
            &rig,
            boxes[b],
            name,
            &["iobox", "--config", &cfg(&path)],
        ));
    }

    // The boxes' MACs, from their INFO.
    let mut macs: Vec<Option<MacAddr>> = vec![None; BOXES];
    while macs.iter().any(Option::is_none) {
        clock.check("listening for the boxes' INFO");
        st.run_for(Duration::from_millis(20));
        for br in st.m.bridges() {
            if br.role == BridgeRole::IoBox {
                if let Some(b) = (0..BOXES).find(|b| box_id(*b) == br.bridge_id) {
                    macs[b] = Some(br.mac);
                }
            }
        }
    }
    let macs: Vec<MacAddr> = macs.into_iter().map(Option::unwrap).collect();

    // Every host gets its 8 devices.
    let mut last = String::new();
    loop {
        clock.check(&format!("waiting for the first 8 devices per host: {last}"));
        st.run_for(Duration::from_millis(20));
        if let Ok(stats) = control_requests(&host_socks, "stats") {
            match check_placement(&stats, &devs, &macs) {
                Ok(()) => break,
                Err(e) => last = e,
            }
        }
    }
    for p in &mut hp {
        p.wait_for(VERIFIED, 8, Duration::from_secs(5));
    }
    let rss8: Vec<u64> = hp.iter().map(Proc::rss_bytes).collect();
    eprintln!(
        "pool_scale: host 10 runs {:?}",
        hp[0].text().lines().next().unwrap_or_default()
    );
    eprintln!(
        "pool_scale: 32 devices on 4 hosts, all verified, {:.1} s after the boxes started",
        t0.elapsed().as_secs_f64()
    );

    // INFO traffic with nothing moving: what the manager hears (every INFO of every
    // group crosses the bridge to it) and what the bridges count.
    let all_socks: Vec<PathBuf> = host_socks.iter().chain(&box_socks).cloned().collect();
    let infos_out = |socks: &[PathBuf]| -> u64 {
        control_requests(socks, "stats")
            .unwrap()
            .iter()
            .map(|s| s["fabric"]["infos_out"].as_u64().unwrap())
            .sum()
    };
    let (frames0, bytes0, out0) = (st.info_frames, st.info_bytes, infos_out(&all_socks));
    let t = Instant::now();
    st.run_for(IDLE);
    let idle = t.elapsed().as_secs_f64();
    let (frames, bytes, out) = (
        st.info_frames - frames0,
        st.info_bytes - bytes0,
        infos_out(&all_socks) - out0,
    );
    let devices = devs.len() as f64;
    eprintln!(
        "pool_scale: INFO over {idle:.1} s idle: {frames} frames heard ({:.1}/s, the bridges \
         sent {:.1}/s), {bytes} bytes: {:.0} B/s, {:.1} B/s per device, {:.1} B per frame",
        frames as f64 / idle,
        out as f64 / idle,
        bytes as f64 / idle,
        bytes as f64 / idle / devices,
        bytes as f64 / frames.max(1) as f64
    );
    assert!(frames > 0 && out > 0, "no INFO heard while idle");

    // The moves.
    let mut rng = netem::Rng::new(SEED);
    let mut verified: Vec<usize> = vec![8; GIDS.len()];
    let (mut to_remove, mut to_ready) = (Vec::new(), Vec::new());
    let (mut into_free, mut from_free) = (0, 0);
    let moves_start = Instant::now();
    for i in 0..MOVES {
        let k = (rng.next_u64() % devs.len() as u64) as usize;
        let dev = devs[k].clone();
        let to = if dev.gid == FREE {
            GIDS[(rng.next_u64() % GIDS.len() as u64) as usize]
        } else if rng.next_u64().is_multiple_of(10) {
            FREE
        } else {
            let others: Vec<u16> = GIDS.iter().copied().filter(|g| *g != dev.gid).collect();
            others[(rng.next_u64() % others.len() as u64) as usize]
        };
        match (dev.gid, to) {
            (_, FREE) => into_free += 1,
            (FREE, _) => from_free += 1,
            _ => {}
        }
        let (old, new) = (host_of(dev.gid), host_of(to));
        let mac = macs[dev.bx];
        let key = format!("({}/{mac}/slot {}): removed", dev.gid, dev.slot);
        let acked_line = format!(
            "group change: slot {} moved from group {} to group {to}",
            dev.slot, dev.gid
        );
        let removed_before = old.map(|h| hp[h].count(&key));
        let acked_before = bp[dev.bx].count(&acked_line);
        let verified_before = new.map(|h| hp[h].count(VERIFIED));

        if CLI_MOVES.contains(&i) {
            let out = run_ok(rig.command(mgr, env!("CARGO_BIN_EXE_tether")).args([
                "ctl",
                "set-group",
                "-i",
                "pbmgr",
                &format!("{:#x}/{}", box_id(dev.bx), dev.slot),
                &to.to_string(),
            ]));
            assert!(
                out.contains(&format!("from group {} to group {to}", dev.gid)),
                "move {i}: {out}"
            );
        } else {
            st.set_group(&clock, mac, box_id(dev.bx), dev.slot, dev.gid, to);
        }
        devs[k].gid = to;

        // Wait until every device is where its group says, Ready, and the receiving
        // host verified the moved one.
        let began = Instant::now();
        let mut last = String::new();
        loop {
            clock.check(&format!("move {i}: {last}"));
            assert!(
                began.elapsed() < MOVE_LIMIT,
                "move {i} ({:#x}/{} from {} to {to}) not done within {MOVE_LIMIT:?}: {last}",
                box_id(dev.bx),
                dev.slot,
                dev.gid
            );
            for (h, p) in hp.iter().enumerate() {
                assert_eq!(
                    p.count("self-test of"),
                    0,
                    "move {i}: host {h}:\n{}",
                    p.text()
                );
            }
            st.run_for(Duration::from_millis(2));
            let placed = control_requests(&host_socks, "stats")
                .and_then(|s| check_placement(&s, &devs, &macs));
            let done = placed.is_ok()
                && old.is_none_or(|h| hp[h].count(&key) > removed_before.unwrap())
                && new.is_none_or(|h| hp[h].count(VERIFIED) > verified_before.unwrap())
                && bp[dev.bx].count(&acked_line) > acked_before;
            if done {
                break;
            }
            last = placed.err().unwrap_or_else(|| "log lines".into());
        }
        if let Some(h) = new {
            verified[h] += 1;
            assert_eq!(hp[h].count(VERIFIED), verified[h], "host {h} verified");
            // The copies went through the moved device, where the host placed it.
            let stats = control_requests(&host_socks[h..=h], "stats").unwrap();
            let bdf = stats[0]["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["box"] == mac.to_string() && d["slot"] == dev.slot)
                .and_then(|d| d["bdf"].as_str())
                .unwrap_or_else(|| panic!("move {i}: host {h} lost the device: {stats:?}"))
                .to_string();
            let line = hp[h].nth_line(VERIFIED, verified[h]).unwrap();
            assert!(
                line.contains(&format!("through {bdf} (")),
                "move {i}: {line:?} is not {bdf}"
            );
        }
        let acked = bp[dev.bx]
            .nth_seen_at(&acked_line, acked_before + 1)
            .unwrap();
        if let Some(h) = old {
            let t = hp[h]
                .nth_seen_at(&key, removed_before.unwrap() + 1)
                .unwrap();
            to_remove.push(t.saturating_duration_since(acked));
        }
        if let Some(h) = new {
            let t = hp[h]
                .nth_seen_at(VERIFIED, verified_before.unwrap() + 1)
                .unwrap();
            to_ready.push(t.saturating_duration_since(acked));
        }
    }
    let moves_took = moves_start.elapsed();
    let (rm_med, rm_max) = median_max(&mut to_remove);
    let (rd_med, rd_max) = median_max(&mut to_ready);
    eprintln!(
        "pool_scale: {MOVES} moves ({} through tether ctl; {into_free} to group {FREE}, \
         {from_free} back) in {:.1} s; from the box's acknowledgement to (a) the old host's \
         removal: median {:.1} ms, max {:.1} ms over {}; to (b) the new host's device \
         verified and Ready: median {:.1} ms, max {:.1} ms over {}",
        CLI_MOVES.len(),
        moves_took.as_secs_f64(),
        ms(rm_med),
        ms(rm_max),
        to_remove.len(),
        ms(rd_med),
        ms(rd_max),
        to_ready.len()
    );

    // No port leak, nothing misrouted.
    let check_counters = |stats: &[serde_json::Value]| {
        let mut held_total = 0;
        for (h, s) in stats.iter().enumerate() {
            let n = s["devices"].as_array().unwrap().len() as u64;
            assert_eq!(s["switch"]["in_use"].as_u64(), Some(n), "host {h}: {s}");
            held_total += n;
            for c in ["misrouted", "foreign_completions"] {
                assert_eq!(s["routing"][c].as_u64(), Some(0), "host {h} {c}: {s}");
            }
            assert_eq!(s["host_bridge"]["free_refused"].as_u64(), Some(0), "{s}");
        }
        held_total
    };
    let stats = control_requests(&host_socks, "stats").unwrap();
    let held_total = check_counters(&stats);
    let free = devs.iter().filter(|d| d.gid == FREE).count() as u64;
    assert_eq!(held_total + free, devs.len() as u64);
    let rss_moved: Vec<u64> = hp.iter().map(Proc::rss_bytes).collect();

    // One host gets every device: its memory with 32.
    for dev in devs.iter_mut().filter(|d| d.gid != GIDS[0]) {
        st.set_group(
            &clock,
            macs[dev.bx],
            box_id(dev.bx),
            dev.slot,
            dev.gid,
            GIDS[0],
        );
        dev.gid = GIDS[0];
        verified[0] += 1;
    }
    let mut last = String::new();
    loop {
        clock.check(&format!("waiting for 32 devices on host 10: {last}"));
        st.run_for(Duration::from_millis(20));
        if let Ok(stats) = control_requests(&host_socks, "stats") {
            match check_placement(&stats, &devs, &macs) {
                Ok(()) if hp[0].count(VERIFIED) >= verified[0] => break,
                Ok(()) => last = "self-tests".into(),
                Err(e) => last = e,
            }
        }
    }
    assert_eq!(hp[0].count(VERIFIED), verified[0]);
    let rss32 = hp[0].rss_bytes();
    let stats = control_requests(&host_socks, "stats").unwrap();
    assert_eq!(check_counters(&stats), devs.len() as u64);

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per = |a: u64, b: u64, n: u64| (a as f64 - b as f64) / n as f64 / 1024.0;
    eprintln!(
        "pool_scale: host RSS with 0 devices {:?} MiB; with 8 {:?} MiB ({:.1} KiB per device \
         on average); after the moves {:?} MiB; host 10 with 32: {:.1} MiB ({:.1} KiB per \
         device over its start)",
        rss0.iter()
            .map(|b| format!("{:.1}", mib(*b)))
            .collect::<Vec<_>>(),
        rss8.iter()
            .map(|b| format!("{:.1}", mib(*b)))
            .collect::<Vec<_>>(),
        rss8.iter()
            .zip(&rss0)
            .map(|(a, b)| per(*a, *b, 8))
            .sum::<f64>()
            / 4.0,
        rss_moved
            .iter()
            .map(|b| format!("{:.1}", mib(*b)))
            .collect::<Vec<_>>(),
        mib(rss32),
        per(rss32, rss0[0], 32),
    );

    // The hosts first: a box that stops first would leave them with surprise removals.
    for (h, p) in hp.into_iter().enumerate() {
        let out = p.stop();
        for bad in ["failed", "surprise removal"] {
            assert!(!out.contains(bad), "host {h} printed {bad:?}:\n{out}");
        }
    }
    for p in bp {
        p.stop();
    }
    eprintln!(
        "pool_scale: {:.1} s in all",
        clock.start.elapsed().as_secs_f64()
    );
}
