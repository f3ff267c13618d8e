//! The fabric under attack from a bridge on the same segment, with group keys: an I/O
//! box, a host and a manager hold the keys of groups 10 and 4093; an attacker in a
//! namespace of its own on the same Linux bridge holds none (then the wrong ones).
//! Every process is the real `tether` binary; the test makes and removes the network.
//!
//! - the keyed bridges work: the host gets the box's device and verifies DMA copies;
//! - the attacker hears nothing: `ctl list` shows no bridge, `ctl set-group` finds no
//!   device (with no keys and with the wrong keys);
//! - forged frames written with everything an eavesdropper knows (the box's address
//!   and id, the group, a SET_GROUP for its device; INFO announcing a fake box in the
//!   host's group; the sample conversation) are dropped and counted by the bridges,
//!   untagged and tagged under a wrong key: the device stays, no fake device appears;
//! - the manager with the key moves the free device into the host's group.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dataplane::netns::Rig;
use wire::{
    emit_ctrl, emit_info, BridgeRole, CtrlOp, CtrlRepr, CtrlStatus, EthernetRepr, FrameKind,
    InfoRepr, MacAddr, TetherHeader, VlanTag,
};

const BRIDGE: &str = "info_interval_ms = 50\nmissed_infos = 10\n";

fn eth(src: MacAddr, dst: MacAddr, gid: u16) -> EthernetRepr {
    EthernetRepr {
        dst,
        src,
        vlan: Some(VlanTag {
            pcp: 0,
            dei: false,
            vid: gid,
        }),
        ethertype: wire::ETHERTYPE,
    }
}

/// Forged frames from `attacker`: SET_GROUP requests for both of the box's devices
/// (to group 66), and INFO announcing a fake box with a device in group 10, each
/// untagged and tagged under `wrong`.
fn forgeries(
    attacker: MacAddr,
    box_mac: MacAddr,
    box_id: u64,
    wrong: &wire::AuthKey,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    for key in [None, Some(wrong)] {
        for (slot, gid) in [(0u8, 10u16), (1, 4093)] {
            let ctrl = CtrlRepr {
                op: CtrlOp::SetGroup,
                status: CtrlStatus::Ok,
                gid: 66,
                request_id: 7 + slot as u32,
                target: box_id,
                slot,
            };
            let mut h = TetherHeader::new(FrameKind::Ctrl);
            h.epoch = 0x0bad_0001;
            let n = emit_ctrl(&mut buf, &eth(attacker, box_mac, gid), &h, &ctrl, key).unwrap();
            out.push(buf[..n].to_vec());
        }
        let info = InfoRepr {
            role: BridgeRole::IoBox,
            flags: 0,
            bridge_id: 0xbad,
            mtu: 1500,
            max_tlps_per_frame: 32,
            interval_ms: 50,
            max_payload: 256,
            max_read_request: 512,
        };
        let mut h = TetherHeader::new(FrameKind::Info);
        h.epoch = 0x0bad_0002;
        let fake = wire::sample::memdev(3, 10);
        let n = emit_info(
            &mut buf,
            &eth(attacker, MacAddr::BROADCAST, 10),
            &h,
            &info,
            &[fake],
            key,
        )
        .unwrap();
        out.push(buf[..n].to_vec());
    }
    out
}

/// Namespaces `names` on a Linux bridge in a namespace "sw", each joined to it by
/// a veth pair (`PREFIX<name>` inside, `sw<name>` on the bridge, MTU 1500), with
/// learning off on the bridge's ports: it floods every frame to every port, as a hub
/// (or a switch's mirror port) would, so a bridge on it sees unicast CTRL too.
fn star<const N: usize>(rig: &mut Rig, prefix: &str, names: [&str; N]) -> [usize; N] {
    let sw = rig.host("sw").unwrap();
    let mut ports = Vec::new();
    let hosts = names.map(|name| {
        let h = rig.host(name).unwrap();
        let outer = format!("sw{name}");
        rig.veth(h, &format!("{prefix}{name}"), sw, &outer, 1500)
            .unwrap();
        ports.push(outer);
        h
    });
    let refs: Vec<&str> = ports.iter().map(String::as_str).collect();
    rig.bridge(sw, "br0", &refs).unwrap();
    for port in &ports {
        run_ok(rig.command(sw, "ip").args([
            "link",
            "set",
            "dev",
            port,
            "type",
            "bridge_slave",
            "learning",
            "off",
        ]));
    }
    hosts
}

/// The frames of a pcap file.
fn wire_frames(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.unwrap().data.into_owned());
    }
    out
}

fn frames_to_pcap(path: &Path, frames: &[Vec<u8>]) {
    let samples: Vec<wire::sample::SampleFrame> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| wire::sample::SampleFrame {
            time_us: 1_765_000_000_000_000 + i as u64 * 100,
            bytes: f.clone(),
            summary: "forged",
        })
        .collect();
    write_pcap(path, &samples);
}

#[test]
fn a_keyed_fabric_takes_nothing_from_a_stranger_on_its_segment() {
    let test = "a_keyed_fabric_takes_nothing_from_a_stranger_on_its_segment";
    let Some(mut rig) = Rig::for_test(test, "tpk") else {
        return;
    };
    let [bx, ha, mgr, atk] = star(&mut rig, "pk", ["box", "ha", "mgr", "atk"]);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = |p: &PathBuf| p.to_str().unwrap().to_string();
    for k in ["g10.key", "g4093.key", "wrong10.key", "wrong4093.key"] {
        run_ok(tether().args(["key", "generate"]).arg(d.join(k)));
    }
    // The box obeys only requests signed with the manager's key.
    run_ok(
        tether()
            .args(["key", "generate-manager"])
            .arg(d.join("mgr.key")),
    );
    let keys = "[bridge.keys]\n10 = \"g10.key\"\n4093 = \"g4093.key\"\n";
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"pkbox\"\n[bridge]\nid = 0xb0c5\n{BRIDGE}control = \"{}\"\n\
             managers = [\"mgr.key.pub\"]\n\
             {keys}\
             [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n\
             [[device]]\nslot = 1\nmodel = \"memdev\"\nbuffer_size = 65536\n",
            d.join("box.sock").display()
        ),
    );
    let ha_toml = write(
        d,
        "ha.toml",
        &format!(
            "gid = 10\nself_test = 20\n[port]\ninterface = \"pkha\"\n\
             [bridge]\n{BRIDGE}control = \"{}\"\n{keys}",
            d.join("ha.sock").display()
        ),
    );
    let boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &cfg(&box_toml)]);
    let mut a = Proc::spawn(&rig, ha, "host A", &["host", "--config", &cfg(&ha_toml)]);
    let long = Duration::from_secs(30);
    a.wait_for("hot-plug: group 10: slot 0 device 1de5:0001", 1, long);
    a.wait_for("self-test: 20 DMA copies verified", 1, long);

    let in_ns = |ns: usize, args: &[&str]| {
        rig.command(ns, env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .output()
            .unwrap()
    };
    // The attacker sends the frames of a pcap file, `repeat` times over.
    let replay = |pcap: &Path, repeat: u32| {
        let r = repeat.to_string();
        let args = [
            "wire",
            "replay",
            "--pcap",
            &cfg(&pcap.to_path_buf()),
            "-i",
            "pkatk",
            "--repeat",
            &r,
        ];
        let out = in_ns(atk, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key_args = |prefix: &str| {
        vec![
            "--key".to_string(),
            format!("10={}", d.join(format!("{prefix}10.key")).display()),
            "--key".to_string(),
            format!("4093={}", d.join(format!("{prefix}4093.key")).display()),
        ]
    };
    let with = |base: &[&str], extra: &[String]| -> Vec<String> {
        base.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
            .collect()
    };
    let stats = |sock: &str| -> serde_json::Value {
        let out = in_ns(mgr, &["ctl", "stats", "--json", "-s", &cfg(&d.join(sock))]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // The manager with the keys hears both; the attacker, with none or the wrong
    // ones, hears nothing and finds no device to move.
    let mgr_keys = key_args("g");
    let list = in_ns(
        mgr,
        &with(&["ctl", "list", "-i", "pkmgr", "--json"], &mgr_keys)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(list.status.success());
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let box_entry = v
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["role"] == "iobox" && b["gid"] == 10)
        .unwrap_or_else(|| panic!("the manager with the keys sees the box: {v}"))
        .clone();
    let box_mac: MacAddr = box_entry["mac"].as_str().unwrap().parse().unwrap();
    for extra in [vec![], key_args("wrong")] {
        let args = with(&["ctl", "list", "-i", "pkatk"], &extra);
        let out = in_ns(atk, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("no bridge heard"),
            "attacker {extra:?}: {text}"
        );
        let args = with(
            &[
                "ctl",
                "set-group",
                "-i",
                "pkatk",
                "0xb0c5/0",
                "66",
                "--timeout-ms",
                "600",
            ],
            &extra,
        );
        let out = in_ns(atk, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no box announces 0xb0c5/0"), "{err}");
    }

    // Forged CTRL and INFO, with what an eavesdropper knows, untagged and under the
    // wrong keys; and the sample conversation (untagged frames of group 10).
    let box_before = stats("box.sock");
    let a_before = stats("ha.sock");
    let attacker_mac = {
        let out = rig
            .command(atk, "cat")
            .arg("/sys/class/net/pkatk/address")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let wrong10 = fabric::keys::read_key_file(&d.join("wrong10.key")).unwrap();
    let forged = forgeries(attacker_mac, box_mac, 0xb0c5, &wrong10);
    let pcap = d.join("forged.pcap");
    frames_to_pcap(&pcap, &forged);
    write_pcap(&d.join("sample.pcap"), &wire::sample::frames());
    for p in [&pcap, &d.join("sample.pcap")] {
        replay(p, 20);
    }
    std::thread::sleep(Duration::from_millis(500));
    let box_after = stats("box.sock");
    let a_after = stats("ha.sock");
    let grew = |before: &serde_json::Value, after: &serde_json::Value, c: &str| {
        after["fabric"][c].as_u64().unwrap() - before["fabric"][c].as_u64().unwrap()
    };
    // The box got 2 CTRL x 20 untagged and 2 x 20 under the wrong key.
    assert!(
        grew(&box_before, &box_after, "auth_missing") >= 40,
        "{box_after}"
    );
    assert!(
        grew(&box_before, &box_after, "auth_bad") >= 40,
        "{box_after}"
    );
    assert_eq!(grew(&box_before, &box_after, "ctrl_in"), 0, "{box_after}");
    // The host got the fake INFO, both ways, and the sample's frames of group 10.
    assert!(grew(&a_before, &a_after, "auth_missing") >= 20, "{a_after}");
    assert!(grew(&a_before, &a_after, "auth_bad") >= 20, "{a_after}");
    assert!(
        grew(&a_before, &a_after, "infos_in") > 0,
        "the box's INFO go on"
    );
    assert_eq!(a.count("hot-remove"), 0, "{}", a.text());
    assert_eq!(a.count("hot-plug"), 1, "no fake device: {}", a.text());
    assert_eq!(boxp.count("group change"), 0, "{}", boxp.text());

    // The manager with the key moves the free device into the host's group, while
    // the attacker records everything; then back to the free group.
    let sniffed = d.join("sniffed.pcap");
    let mut sniffer = Proc::spawn(
        &rig,
        atk,
        "capture",
        &["capture", "-i", "pkatk", "-w", &cfg(&sniffed), "-d", "30"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let signed_keys: Vec<String> = mgr_keys
        .iter()
        .cloned()
        .chain(["--sign".to_string(), cfg(&d.join("mgr.key"))])
        .collect();
    // A holder of the group keys who is no manager (a host's keys, stolen) finds the
    // device but is not obeyed: its request is unsigned.
    let box_before = stats("box.sock");
    let args = with(
        &[
            "ctl",
            "set-group",
            "-i",
            "pkatk",
            "0xb0c5/1",
            "10",
            "--timeout-ms",
            "800",
        ],
        &mgr_keys,
    );
    let out = in_ns(atk, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not answer") && err.contains("--sign"),
        "{err}"
    );
    assert!(grew(&box_before, &stats("box.sock"), "ctrl_unsigned") >= 1);
    let set_group = |slot_gid: &[&str]| {
        let args = with(
            &[&["ctl", "set-group", "-i", "pkmgr"], slot_gid].concat(),
            &signed_keys,
        );
        let out = in_ns(mgr, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(set_group(&["0xb0c5/1", "10"]).contains("from group 4093 to group 10"));
    a.wait_for("hot-plug: group 10: slot 1", 1, long);
    a.wait_for("self-test: 20 DMA copies verified", 2, long);
    // SIGTERM: capture writes what it has and stops.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(sniffer.child.id() as i32, libc::SIGTERM) };
    assert!(
        sniffer.child.wait().unwrap().success(),
        "{}",
        sniffer.text()
    );
    assert!(set_group(&["0xb0c5/1", "4093"]).contains("from group 10 to group 4093"));
    a.wait_for("hot-remove: group 10: slot 1", 1, long);

    // The attacker replays all it recorded (the manager's SET_GROUP among it, and
    // every bridge's INFO): the device stays free, the host's device list stays.
    let frames = wire_frames(&sniffed);
    let ctrl_sniffed = frames
        .iter()
        .filter(|f| wire::Frame::parse(f, None).is_ok_and(|f| f.header.kind == FrameKind::Ctrl))
        .count();
    assert!(
        ctrl_sniffed >= 1,
        "the SET_GROUP was recorded ({} frames)",
        frames.len()
    );
    let box_before = stats("box.sock");
    replay(&sniffed, 3);
    std::thread::sleep(Duration::from_millis(500));
    let box_after = stats("box.sock");
    assert!(
        grew(&box_before, &box_after, "replayed_ctrl") >= 1,
        "{box_after}"
    );
    assert!(
        grew(&box_before, &box_after, "replayed_infos") >= 1,
        "{box_after}"
    );
    assert_eq!(
        boxp.count("moved from group 4093 to group 10"),
        1,
        "{}",
        boxp.text()
    );
    assert_eq!(a.count("hot-plug: group 10: slot 1"), 1, "{}", a.text());

    // The recorded session frames (the host's DMA with the box), forged as an
    // attacker without the key can: untagged, under a guessed higher epoch (a
    // restart), with the SYN flag, and with acknowledgements moved ahead. Nothing
    // restarts, nothing is delivered: the tags are missing.
    let mut forged = Vec::new();
    for f in frames
        .iter()
        .filter_map(|f| wire::Frame::parse(f, None).ok())
    {
        if !matches!(f.header.kind, FrameKind::Data | FrameKind::Ack) {
            continue;
        }
        for (de, flags, dack) in [(1u32, 0u8, 0u32), (0, wire::flags::SYN, 0), (0, 0, 5)] {
            let mut h = f.header;
            h.epoch = h.epoch.wrapping_add(de);
            h.flags = (h.flags | flags) & !wire::flags::AUTH;
            h.ack = h.ack.wrapping_add(dack);
            let mut buf = vec![0u8; 2048];
            let mut w = wire::FrameWriter::new(&mut buf, &f.ethernet).unwrap();
            w.append_with(|b| {
                b[..f.payload.len()].copy_from_slice(f.payload);
                Ok(f.payload.len())
            })
            .unwrap();
            let n = w.finish(&h).unwrap();
            forged.push(buf[..n].to_vec());
        }
    }
    assert!(forged.len() >= 30, "{} session frames forged", forged.len());
    let forged_pcap = d.join("forged-session.pcap");
    frames_to_pcap(&forged_pcap, &forged);
    let (box_before, a_before) = (stats("box.sock"), stats("ha.sock"));
    replay(&forged_pcap, 5);
    std::thread::sleep(Duration::from_millis(500));
    let (box_after, a_after) = (stats("box.sock"), stats("ha.sock"));
    let missing =
        grew(&box_before, &box_after, "auth_missing") + grew(&a_before, &a_after, "auth_missing");
    assert!(missing >= 5 * forged.len() as u64, "{box_after} {a_after}");
    for (name, p) in [("box", &boxp), ("host", &a)] {
        assert_eq!(p.count("peer restarted"), 0, "{name}: {}", p.text());
        assert_eq!(p.count("peer down"), 0, "{name}: {}", p.text());
    }

    let a_out = a.stop();
    boxp.stop();
    assert!(!a_out.contains("failed"), "{a_out}");
}

/// 10 000 INFO frames of fake I/O boxes in group 10, each from its own address.
fn info_flood(gid: u16) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 512];
    (0..10_000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            let src = MacAddr([0x02, 0xee, b[0], b[1], b[2], b[3]]);
            let mut h = TetherHeader::new(FrameKind::Info);
            h.epoch = 0x0bad_0000 | i;
            let info = InfoRepr {
                role: BridgeRole::IoBox,
                flags: 0,
                bridge_id: 0xbad_0000 + i as u64,
                mtu: 1500,
                max_tlps_per_frame: 32,
                interval_ms: 50,
                max_payload: 256,
                max_read_request: 512,
            };
            let n = emit_info(
                &mut buf,
                &eth(src, MacAddr::BROADCAST, gid),
                &h,
                &info,
                &[],
                None,
            )
            .unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

/// CPU time (user + system) of process `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which ends with the last ')').
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn an_info_flood_from_10000_sources_leaves_the_bridges_bounded_and_serving() {
    let test = "an_info_flood_from_10000_sources_leaves_the_bridges_bounded_and_serving";
    let Some(mut rig) = Rig::for_test(test, "tpf") else {
        return;
    };
    let [bx, ha, atk] = star(&mut rig, "pf", ["box", "ha", "atk"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = |p: &PathBuf| p.to_str().unwrap().to_string();
    run_ok(tether().args(["key", "generate"]).arg(d.join("g10.key")));
    let flood = d.join("flood.pcap");
    frames_to_pcap(&flood, &info_flood(10));

    // Once with the group keyed, once on a trusted segment (no keys): the fake boxes
    // are then taken as peers, up to the cap and the rate limit.
    for keyed in [true, false] {
        let keys = if keyed {
            "[bridge.keys]\n10 = \"g10.key\"\n"
        } else {
            ""
        };
        let name = |n: &str| format!("{n}-{}", if keyed { "keyed" } else { "open" });
        let box_toml = write(
            d,
            &name("box.toml"),
            &format!(
                "[port]\ninterface = \"pfbox\"\n[bridge]\nid = 0xb0c5\n{BRIDGE}{keys}\
                 [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n"
            ),
        );
        let ha_toml = write(
            d,
            &name("ha.toml"),
            &format!(
                "gid = 10\nself_test = 1000\n[port]\ninterface = \"pfha\"\n\
                 [bridge]\n{BRIDGE}control = \"{}\"\n{keys}",
                d.join(name("ha.sock")).display()
            ),
        );
        // The box and the host find each other; once the host has enumerated the
        // device the flood starts, and goes on while the host runs its verified
        // copies. (On a trusted segment a flood that starts first can keep a new box
        // out: the strangers' rate limit and the peer cap bound the bridge's state,
        // but cannot tell a stranger from a newcomer; docs/fabric.md.)
        let boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &cfg(&box_toml)]);
        let mut a = Proc::spawn(&rig, ha, "host A", &["host", "--config", &cfg(&ha_toml)]);
        let long = Duration::from_secs(120);
        a.wait_for("enumerated on port p0", 1, long);
        let mut flooder = Proc::spawn(
            &rig,
            atk,
            "flood",
            &[
                "wire",
                "replay",
                "--pcap",
                &cfg(&flood),
                "-i",
                "pfatk",
                "--repeat",
                "1000",
            ],
        );
        let cpu0 = cpu_seconds(a.child.id());
        a.wait_for("self-test: 1000 DMA copies verified", 1, long);
        let still_flooding = flooder.child.try_wait().unwrap().is_none();
        assert!(
            still_flooding,
            "the flood ended before the copies did: {}",
            flooder.text()
        );
        flooder.child.kill().unwrap();
        flooder.child.wait().unwrap();
        let cpu = cpu_seconds(a.child.id()) - cpu0;
        let out = rig
            .command(atk, env!("CARGO_BIN_EXE_tether"))
            .args([
                "ctl",
                "stats",
                "--json",
                "-s",
                &cfg(&d.join(name("ha.sock"))),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let f = &st["fabric"];
        let (rss_a, rss_box) = (a.rss_bytes(), boxp.rss_bytes());
        eprintln!(
            "keyed {keyed}: copies verified while flooding; host CPU {cpu:.2} s; \
             RSS host {} MiB, box {} MiB; fabric {f}",
            rss_a >> 20,
            rss_box >> 20
        );
        // Bounded: a few peers at most, memory well under what 10 000 peers with
        // their sessions would take, and few log lines.
        let peers = st["sessions"].as_array().unwrap().len();
        assert!(peers <= 65, "{peers} sessions");
        assert!(rss_a < 200 << 20, "host RSS {} MiB", rss_a >> 20);
        assert!(rss_box < 200 << 20, "box RSS {} MiB", rss_box >> 20);
        let a_out = a.stop();
        boxp.stop();
        let lines = a_out.lines().count();
        assert!(lines < 250, "{lines} log lines:\n{a_out}");
        if keyed {
            assert!(f["auth_missing"].as_u64().unwrap() >= 10_000, "{f}");
            assert_eq!(f["peers_up"], 1, "only the box: {f}");
            assert!(!a_out.contains("0xbad"), "{a_out}");
        } else {
            assert!(
                f["infos_limited"].as_u64().unwrap() + f["peers_refused"].as_u64().unwrap()
                    >= 10_000,
                "{f}"
            );
        }
        assert!(!a_out.contains("self-test failed"), "{a_out}");
    }
}
