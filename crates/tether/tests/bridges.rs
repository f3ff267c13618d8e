//! The bridges as separate processes, as a user runs them: two `tether iobox`es, two
//! `tether host`s and `tether ctl`, each in a network namespace of its own, joined by
//! veth to a Linux bridge that the test makes and removes.
//!
//! - host A (group 10) gets the box's device by hot-plug, enumerates it behind a port
//!   of its switch and verifies DMA copies through it; host B (group 20) never sees it
//!   while it is in group 10;
//! - a second box offers a device in group 10: host A uses both boxes' devices at once,
//!   each on its own port;
//! - `ctl list` shows every bridge and device of every group; `ctl stats` reads the
//!   hosts' counters over their control sockets;
//! - `ctl set-group` moves the device to group 20 (hot-remove at A, hot-plug and
//!   verified copies at B) and a free device (group 4093) to group 10;
//! - the first box process is killed: host A sees its device go (a surprise removal)
//!   and keeps the second box's; the box starts again: host A gets its device back by
//!   hot-plug and its copies verify again.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dataplane::netns::Rig;

/// Bridge settings for three busy-polling processes sharing two cores: INFO every
/// 50 ms, down after 0.5 s of silence.
const BRIDGE: &str = "info_interval_ms = 50\nmissed_infos = 10\n";

#[test]
fn iobox_hosts_and_ctl_as_processes() {
    let test = "iobox_hosts_and_ctl_as_processes";
    let Some(mut rig) = Rig::for_test(test, "tpb") else {
        return;
    };
    let [bx, bx2, ha, hb, mgr] = star(&mut rig, "pb", &["box", "box2", "ha", "hb", "mgr"])[..]
    else {
        unreachable!()
    };

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"pbbox\"\n[bridge]\nid = 0xb0c5\nmetrics = \"127.0.0.1:0\"\n{BRIDGE}\
             [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n\
             [[device]]\nslot = 1\nmodel = \"memdev\"\nbuffer_size = 65536\n"
        ),
    );
    let box2_toml = write(
        d,
        "box2.toml",
        &format!(
            "[port]\ninterface = \"pbbox2\"\n[bridge]\nid = 0xb0c6\n{BRIDGE}\
             [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\nbuffer_size = 65536\n"
        ),
    );
    let host_toml = |name: &str, iface: &str, gid: u16| {
        write(
            d,
            &format!("{name}.toml"),
            &format!(
                "gid = {gid}\nself_test = 20\n[port]\ninterface = \"{iface}\"\n\
                 [bridge]\n{BRIDGE}control = \"{}\"\nmetrics = \"127.0.0.1:0\"\n",
                d.join(format!("{name}.sock")).display()
            ),
        )
    };
    let ha_toml = host_toml("ha", "pbha", 10);
    let hb_toml = host_toml("hb", "pbhb", 20);
    let cfg = |p: &PathBuf| p.to_str().unwrap().to_string();

    let mut boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &cfg(&box_toml)]);
    let mut a = Proc::spawn(&rig, ha, "host A", &["host", "--config", &cfg(&ha_toml)]);
    let mut b = Proc::spawn(&rig, hb, "host B", &["host", "--config", &cfg(&hb_toml)]);
    let long = Duration::from_secs(30);

    // Host A gets its device and checks it.
    a.wait_for("hot-plug: group 10: slot 0 device 1de5:0001", 1, long);
    a.wait_for("enumerated on port p0: 03:00.0", 1, long);
    a.wait_for("self-test: 20 DMA copies verified", 1, long);

    // The manager sees every group.
    let ctl_wire = |args: &[&str]| {
        run_ok(
            rig.command(mgr, env!("CARGO_BIN_EXE_tether"))
                .arg("wire")
                .args(args),
        )
    };
    let stat = |json: &str, counter: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["fabric"][counter].as_u64().unwrap()
    };
    let ctl = |args: &[&str]| {
        run_ok(
            rig.command(mgr, env!("CARGO_BIN_EXE_tether"))
                .arg("ctl")
                .args(args),
        )
    };
    let list = ctl(&["list", "-i", "pbmgr"]);
    eprintln!("{list}");
    let has = |text: &str, words: &[&str]| {
        text.lines().any(|l| {
            words
                .iter()
                .all(|w| l.split_whitespace().any(|x| x.trim_end_matches(',') == *w))
        })
    };
    assert!(has(&list, &["10", "iobox", "0xb0c5", "0xb0c5/0"]), "{list}");
    assert!(
        has(&list, &["4093", "iobox", "0xb0c5", "0xb0c5/1"]),
        "{list}"
    );
    assert!(has(&list, &["10", "host"]), "{list}");
    assert!(has(&list, &["20", "host", "-"]), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&["list", "-i", "pbmgr", "--json"])).unwrap();
    assert!(json.as_array().unwrap().len() >= 4, "{json}");

    // Counters over the control sockets: A has the device, B has nothing.
    let sock = |n: &str| cfg(&d.join(format!("{n}.sock")));
    let sa = ctl(&["stats", "-s", &sock("ha")]);
    assert!(sa.contains("devices.0.bdf: 03:00.0"), "{sa}");
    assert!(sa.contains("role: host"), "{sa}");
    let sa: serde_json::Value =
        serde_json::from_str(&ctl(&["stats", "-s", &sock("ha"), "--json"])).unwrap();
    assert!(
        sa["root_complex"]["dma_reads"].as_u64().unwrap() > 0,
        "{sa}"
    );
    assert!(sa["port"]["rx_packets"].as_u64().unwrap() > 0, "{sa}");
    let sb: serde_json::Value =
        serde_json::from_str(&ctl(&["stats", "-s", &sock("hb"), "--json"])).unwrap();
    assert_eq!(sb["devices"].as_array().unwrap().len(), 0, "{sb}");
    // The same counters for Prometheus, scraped with curl in each bridge's namespace
    // (the port the kernel chose is in the log).
    let metrics_port = |p: &Proc| -> u16 {
        let text = p.text();
        text.split("metrics: http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{text}"))
    };
    let curl = |ns: usize, args: &[&str]| {
        run_ok(
            rig.command(ns, "curl")
                .args(["-sS", "--max-time", "5"])
                .args(args),
        )
    };
    let scrape = |p: &Proc, ns: usize| {
        let url = format!("http://127.0.0.1:{}/metrics", metrics_port(p));
        curl(ns, &["--fail", &url])
    };
    let metric = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let ma = scrape(&a, ha);
    assert!(
        ma.contains("# TYPE tether_root_complex_dma_reads_total counter"),
        "{ma}"
    );
    assert!(
        metric(&ma, "tether_root_complex_dma_reads_total") > 0.0,
        "{ma}"
    );
    assert!(metric(&ma, "tether_port_rx_packets_total") > 0.0, "{ma}");
    assert!(ma.contains("tether_bridge_info{"), "{ma}");
    assert!(ma.contains("role=\"host\""), "{ma}");
    let session = ma
        .lines()
        .find(|l| {
            l.starts_with("tether_session_efe_tlps_in_total{") && l.contains("gid=\"10\",peer=")
        })
        .unwrap_or_else(|| panic!("no per-session series in\n{ma}"));
    assert!(session.contains("role=\"iobox\""), "{session}");
    let mbox = scrape(&boxp, bx);
    let dev0 = "tether_slot_function_dma_reads_total{device=\"0001\",gid=\"10\",slot=\"0\",vendor=\"1de5\"}";
    assert!(metric(&mbox, dev0) > 0.0, "{mbox}");
    assert!(
        mbox.contains(
            "tether_slot_function_dma_reads_total{device=\"0001\",gid=\"4093\",slot=\"1\""
        ),
        "{mbox}"
    );
    // Anything but GET /metrics is refused as HTTP says.
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", metrics_port(&a));
    let code = |args: &[&str]| {
        curl(
            ha,
            &[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat(),
        )
    };
    let refused = code(&[&url("/nothing")]);
    assert_eq!(code(&["-X", "POST", &url("/metrics")]), "405");
    assert_eq!(refused, "404");
    // Rates, in the manner of testpmd: two reports 0.3 s apart while copies run.
    let watched = ctl(&["stats", "-s", &sock("ha"), "--watch", "0.3", "--count", "2"]);
    eprintln!("ctl stats --watch:\n{watched}");
    assert_eq!(
        watched.matches("######## statistics of host").count(),
        2,
        "{watched}"
    );
    assert!(
        watched.contains("Throughput (since last show)"),
        "{watched}"
    );
    assert!(watched.contains("Rx-pps:"), "{watched}");
    // The switch as `lspci -tv` draws it, from the config images it presents: root
    // port, upstream port, and the one downstream port with the device behind it.
    let tree = ctl(&["tree", "-s", &sock("ha")]);
    eprintln!("ctl tree:\n{tree}");
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with("-[0000:00]-00.0-[01-"), "{tree}");
    assert!(lines[0].ends_with("root port [1de5:0100]"), "{tree}");
    assert!(lines[1].contains("\\-[01]-00.0-[02-"), "{tree}");
    assert!(
        lines[2].contains("\\-[02]-00.0-[03] downstream port 0 [1de5:0102]---03:00.0 ")
            && lines[2].contains("[1de5:0001]")
            && lines[2].contains("Ready"),
        "{tree}"
    );
    assert!(lines[3].starts_with("1 of "), "{tree}");
    let tb = ctl(&["tree", "-s", &sock("hb")]);
    assert_eq!(tb.lines().count(), 3, "{tb}");
    // A host in another group never saw the device (nor host A as a peer).
    assert_eq!(b.count("hot-plug"), 0, "{}", b.text());
    assert_eq!(b.count("peer up"), 0, "{}", b.text());

    // Bad input on the segment, from the manager's namespace: every sample frame
    // damaged (one bit flipped) and cut short, junk, and a replay of valid frames from
    // bridges that do not exist (a second "box" announcing devices in group 10). The
    // hosts count and drop what is damaged, leave the stranger's device alone, and
    // keep serving (checked by the copies below). The stranger's two devices are
    // taken for real ones in the group (the segment is trusted until the group has a
    // key): their enumeration fails, as nothing answers, and their ports are freed.
    let bad_before = stat(&ctl(&["stats", "-s", &sock("ha"), "--json"]), "bad_frames");
    let mut rng = netem::Rng::new(3);
    let mut bad = Vec::new();
    for f in wire::sample::frames() {
        let mut flipped = f.clone();
        let at = 18 + rng.next_u64() as usize % (f.bytes.len() - 18);
        flipped.bytes[at] ^= 1 << (rng.next_u64() % 8);
        let mut short = f.clone();
        short.bytes.truncate(30);
        let mut junk = f.clone();
        junk.bytes = (0..60 + rng.next_u64() % 200)
            .map(|_| rng.next_u64() as u8)
            .collect();
        bad.extend([flipped, short, junk]);
    }
    write_pcap(&d.join("bad.pcap"), &bad);
    write_pcap(&d.join("strangers.pcap"), &wire::sample::frames());
    ctl_wire(&[
        "replay",
        "--pcap",
        &cfg(&d.join("bad.pcap")),
        "-i",
        "pbmgr",
        "--repeat",
        "10",
    ]);
    ctl_wire(&[
        "replay",
        "--pcap",
        &cfg(&d.join("strangers.pcap")),
        "-i",
        "pbmgr",
    ]);
    a.wait_for("enumeration of 10/", 2, long);
    assert_eq!(
        a.count("enumeration of 10/"),
        a.count("failed: no device answers")
    );
    let bad_after = stat(&ctl(&["stats", "-s", &sock("ha"), "--json"]), "bad_frames");
    assert!(
        bad_after > bad_before,
        "host A counted no bad frame ({bad_before} -> {bad_after})"
    );

    // A second box offers a device in group 10: host A takes it too, on another port,
    // and checks it while it keeps the first.
    let box2p = Proc::spawn(
        &rig,
        bx2,
        "iobox 2",
        &["iobox", "--config", &cfg(&box2_toml)],
    );
    a.wait_for("self-test: 20 DMA copies verified", 2, long);
    let sa: serde_json::Value =
        serde_json::from_str(&ctl(&["stats", "-s", &sock("ha"), "--json"])).unwrap();
    let held: Vec<(String, String)> = sa["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["phase"] == "Ready")
        .map(|d| {
            (
                d["box"].as_str().unwrap().to_string(),
                d["bdf"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(held.len(), 2, "{sa}");
    assert_ne!(held[0].0, held[1].0, "two boxes: {held:?}");
    assert_ne!(held[0].1, held[1].1, "two routing IDs: {held:?}");
    assert_eq!(sa["switch"]["in_use"], 2, "{sa}");

    // Move the device from A's group to B's.
    let out = ctl(&["set-group", "-i", "pbmgr", "0xb0c5/0", "20"]);
    assert!(out.contains("from group 10 to group 20"), "{out}");
    a.wait_for("hot-remove: group 10: slot 0", 1, long);
    a.wait_for("03:00.0 (10/", 1, long);
    a.wait_for("slot 0): removed", 1, long);
    b.wait_for("hot-plug: group 20: slot 0", 1, long);
    b.wait_for("self-test: 20 DMA copies verified", 1, long);
    boxp.wait_for(
        "group change: slot 0 moved from group 10 to group 20",
        1,
        long,
    );

    // A free device (group 4093) to host A, named by the box's MAC this time.
    let list = ctl(&["list", "-i", "pbmgr", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let box_mac = v
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["role"] == "iobox" && b["bridge_id"] == "0xb0c5")
        .map(|b| b["mac"].as_str().unwrap().to_string())
        .unwrap();
    let out = ctl(&["set-group", "-i", "pbmgr", &format!("{box_mac}/1"), "10"]);
    assert!(out.contains("from group 4093 to group 10"), "{out}");
    a.wait_for("hot-plug: group 10: slot 1", 1, long);
    a.wait_for("self-test: 20 DMA copies verified", 3, long);
    // Asking again is harmless; a slot the box does not have is refused.
    let out = ctl(&["set-group", "-i", "pbmgr", "0xb0c5/1", "10"]);
    assert!(out.contains("in group 10 already"), "{out}");
    let err = rig
        .command(mgr, env!("CARGO_BIN_EXE_tether"))
        .args([
            "ctl",
            "set-group",
            "-i",
            "pbmgr",
            "0xb0c5/7",
            "10",
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no box announces 0xb0c5/7"));

    // The first box dies: both hosts lose its devices, host A keeps the second box's.
    // It comes back (with its configured groups): host A gets slot 0 back and checks
    // it again.
    boxp.child.kill().unwrap();
    boxp.child.wait().unwrap();
    a.wait_for("slot 1): surprise removal", 1, long);
    b.wait_for("slot 0): surprise removal", 1, long);
    let sa: serde_json::Value =
        serde_json::from_str(&ctl(&["stats", "-s", &sock("ha"), "--json"])).unwrap();
    let devices = sa["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{sa}");
    assert_eq!(devices[0]["phase"], "Ready", "{sa}");
    let mut boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &cfg(&box_toml)]);
    a.wait_for("self-test: 20 DMA copies verified", 4, long);
    boxp.wait_for("peer up", 1, long);

    let b_out = b.stop();
    let a_out = a.stop();
    boxp.stop();
    box2p.stop();
    assert!(
        !Path::new(&sock("ha")).exists(),
        "control socket left behind"
    );
    assert!(!a_out.contains("self-test failed"), "{a_out}");
    assert_eq!(
        a_out.matches("failed").count(),
        a_out.matches("failed: no device answers").count(),
        "only the stranger's devices failed: {a_out}"
    );
    assert!(!b_out.contains("failed"), "{b_out}");
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "box.toml",
        "[port]\ninterface = \"x\"\n[[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 4095\n",
    );
    let err = fails(tether().args(["iobox", "--config"]).arg(&p));
    assert!(err.contains("group 4095 is not a valid GID"), "{err}");
    let p = write(
        dir.path(),
        "host.toml",
        "gid = 10\n[port]\ninterface = \"nonexistent0\"\n",
    );
    let err = fails(tether().args(["host", "--config"]).arg(&p));
    assert!(err.contains("nonexistent0"), "{err}");
    assert!(fails(
        tether()
            .args(["ctl", "stats", "--socket"])
            .arg(dir.path().join("none.sock"))
    )
    .contains("is the bridge running?"));
}
