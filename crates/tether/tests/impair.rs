//! `tether impair` between three namespaces: host -- relay -- box over two veth pairs.
//! Frames replayed from the host cross the relay with seeded loss, duplication and
//! corruption; the box's capture and the relay's counters agree with the settings, and
//! the frame check catches every corrupted tether frame.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;

use common::*;
use dataplane::netns::Rig;

#[test]
fn relay_applies_seeded_faults_between_namespaces() {
    let Some(mut rig) = Rig::for_test("relay_applies_seeded_faults_between_namespaces", "ti")
    else {
        return;
    };
    let host = rig.host("h").unwrap();
    let relay = rig.host("r").unwrap();
    let dev = rig.host("x").unwrap();
    rig.veth(host, "tih", relay, "tia", 1500).unwrap();
    rig.veth(relay, "tib", dev, "tix", 1500).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_tether"));
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("s.pcap");
    let captured = dir.path().join("c.pcap");
    run_ok(tether().args(["wire", "sample", "--pcap"]).arg(&sample));

    let mut relay_proc = rig
        .command(relay, bin)
        .args([
            "impair",
            "--a",
            "tia",
            "--b",
            "tib",
            "--ab",
            "loss=0.2,dup=0.1,corrupt=0.05",
            "--seed",
            "7",
            "--duration",
            "60",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut relay_err = BufReader::new(relay_proc.stderr.take().unwrap());
    let mut line = String::new();
    relay_err.read_line(&mut line).unwrap();
    assert!(line.contains("relaying tia <-> tib"), "relay said: {line}");

    let mut cap = rig
        .command(dev, bin)
        .args(["capture", "-i", "tix", "-d", "8", "-w"])
        .arg(&captured)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cap_err = BufReader::new(cap.stderr.take().unwrap());
    line.clear();
    cap_err.read_line(&mut line).unwrap();
    assert!(line.contains("listening on tix"), "capture said: {line}");

    const REPEAT: u64 = 100;
    let frames = wire::sample::frames().len() as u64;
    run_ok(
        rig.command(host, bin)
            .args(["wire", "replay", "--pcap"])
            .arg(&sample)
            .args([
                "-i",
                "tih",
                "--gap-us",
                "100",
                "--repeat",
                &REPEAT.to_string(),
            ]),
    );
    assert!(cap.wait().unwrap().success());
    // SAFETY: kill with a valid pid of our child.
    unsafe { libc::kill(relay_proc.id() as i32, libc::SIGTERM) };
    assert!(relay_proc.wait().unwrap().success());
    let mut report = String::new();
    relay_err.read_to_string(&mut report).unwrap();
    eprintln!("{report}");

    // The relay's counters for host -> box.
    let ab = report
        .lines()
        .find_map(|l| l.find("tia -> tib").map(|i| &l[i..]))
        .expect("A->B counters");
    let field = |name: &str| -> u64 {
        let rest = &ab[ab
            .find(&format!(" {name} "))
            .unwrap_or_else(|| panic!("{name} in {ab}"))
            + name.len()
            + 2..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let offered = field("offered");
    let sent = frames * REPEAT;
    assert!(offered >= sent, "relay saw {offered} of {sent} frames");
    let lost = field("lost") as f64 / offered as f64;
    assert!((0.15..0.25).contains(&lost), "loss {lost}");
    let dup = field("duplicated") as f64 / offered as f64;
    assert!((0.05..0.12).contains(&dup), "duplication {dup}");
    let corrupted = field("corrupted");
    assert!(corrupted > 0);

    // At the box: tether frames that survived, and corrupted ones caught by the check.
    let file = std::fs::File::open(&captured).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    let (mut good, mut bad) = (0u64, 0u64);
    while let Some(p) = r.next_packet() {
        match wire::Frame::parse(&p.unwrap().data, None) {
            Ok(_) => good += 1,
            Err(_) => bad += 1,
        }
    }
    let expect = sent as f64 * 0.8 * 1.1;
    assert!(
        (good + bad) as f64 > expect * 0.85 && ((good + bad) as f64) < expect * 1.15,
        "captured {good} + {bad}, expected about {expect}"
    );
    assert!(
        bad > 0 && bad <= corrupted,
        "{bad} frames failed the check, {corrupted} were corrupted"
    );
}
