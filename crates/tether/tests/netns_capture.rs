//! `tether capture` and `tether wire replay` across two network namespaces joined by a
//! veth pair: the sample frames go out of one namespace and come back from the other's
//! capture byte for byte, VLAN tag (which the kernel strips on receive) included.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::*;
use dataplane::netns::Rig;

#[test]
fn capture_sees_replayed_frames_with_their_vlan_tags() {
    let Some(mut rig) = Rig::for_test("capture_sees_replayed_frames_with_their_vlan_tags", "tc")
    else {
        return;
    };
    let (a, b) = (rig.host("a").unwrap(), rig.host("b").unwrap());
    rig.veth(a, "tta", b, "ttb", 1500).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample.pcap");
    let captured = dir.path().join("captured.pcap");
    run_ok(tether().args(["wire", "sample", "--pcap"]).arg(&sample));
    let expected = wire::sample::frames();

    let bin = Path::new(env!("CARGO_BIN_EXE_tether"));
    let mut cap = rig
        .command(b, bin)
        .args([
            "capture",
            "-i",
            "ttb",
            "-c",
            &expected.len().to_string(),
            "-d",
            "30",
            "-w",
        ])
        .arg(&captured)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(cap.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("listening on ttb"), "capture said: {line}");

    run_ok(
        rig.command(a, bin)
            .args(["wire", "replay", "--pcap"])
            .arg(&sample)
            .args(["-i", "tta", "--gap-us", "200"]),
    );
    let status = cap.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(status.success(), "capture failed: {rest}");
    assert!(
        rest.contains(&format!("{} frames written", expected.len())),
        "{rest}"
    );

    let file = std::fs::File::open(&captured).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut got = Vec::new();
    while let Some(p) = r.next_packet() {
        got.push(p.unwrap().data.into_owned());
    }
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, &e.bytes, "frame '{}' changed on the way", e.summary);
        let frame = wire::Frame::parse(g, None).unwrap();
        assert_eq!(frame.gid(), Some(wire::sample::SAMPLE_GID));
    }
}
