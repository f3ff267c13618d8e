//! The Wireshark Lua dissector, run for real in Debian's tshark on the sample capture.
//! tshark is installed by scripts/deps/tshark.sh when missing (root only); without it
//! the test says so loudly and skips.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::*;

fn have_tshark() -> bool {
    Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// tshark, installed by scripts/deps/tshark.sh when missing; `false` when the test
/// must skip (not root). As root a failed install fails the test.
fn ensure_tshark(test: &str) -> bool {
    if have_tshark() {
        return true;
    }
    if dep(test, "tshark.sh").is_none() {
        return false;
    }
    if !have_tshark() {
        missing(
            test,
            "scripts/deps/tshark.sh succeeded but tshark does not run",
        );
        return false;
    }
    true
}

fn lua() -> String {
    format!(
        "lua_script:{}",
        repo_root().join("contrib/wireshark/tether.lua").display()
    )
}

/// tshark -T fields for `fields`, one map per frame (field -> all occurrences).
fn fields(pcap: &Path, fields: &[&str]) -> Vec<HashMap<String, Vec<String>>> {
    fields_with(pcap, &[], fields)
}

/// [`fields`] with preferences `prefs` ("tether.keys:..."), each passed as `-o`.
fn fields_with(
    pcap: &Path,
    prefs: &[String],
    fields: &[&str],
) -> Vec<HashMap<String, Vec<String>>> {
    let mut cmd = Command::new("tshark");
    for p in prefs {
        cmd.args(["-o", p]);
    }
    cmd.arg("-r").arg(pcap).args([
        "-X",
        &lua(),
        "-2",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = run_ok(&mut cmd);
    out.lines()
        .map(|line| {
            line.split('\t')
                .zip(fields)
                .map(|(v, f)| {
                    let vals = if v.is_empty() {
                        Vec::new()
                    } else {
                        v.split('|').map(str::to_string).collect()
                    };
                    (f.to_string(), vals)
                })
                .collect()
        })
        .collect()
}

fn get<'a>(frame: &'a HashMap<String, Vec<String>>, field: &str) -> Vec<&'a str> {
    frame[field].iter().map(String::as_str).collect()
}

#[test]
fn tshark_decodes_the_sample_capture() {
    if !ensure_tshark("tshark_decodes_the_sample_capture") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("sample.pcap");
    run_ok(tether().args(["wire", "sample", "--pcap"]).arg(&pcap));

    let frames = fields(
        &pcap,
        &[
            "tether.kind",
            "tether.gid",
            "tether.seq",
            "tether.ack",
            "tether.flags.gap_end",
            "tether.nak.gap_end",
            "tether.check.status",
            "tether.tlp.name",
            "tether.tlp.tag",
            "tether.tlp.cpl.tag",
            "tether.tlp.request_in",
            "tether.tlp.response_in",
            "tether.tlp.latency_us",
            "tether.tlp.address",
            "tether.tlp.length",
            "tether.tlp.requester",
            "tether.tlp.completer",
            "tether.tlp.cpl.status",
            "tether.tlp.cpl.byte_count",
            "tether.tlp.cpl.lower_address",
            "tether.tlp.first_be",
            "tether.tlp.last_be",
            "tether.tlp.cfg.target",
            "tether.tlp.cfg.register",
            "tether.tlp.msg.code",
            "tether.tlp.msg.routing",
            "tether.tlp.msg.vendor_id",
            "tether.tlp.ep",
            "tether.tlp.digest",
            "tether.tlp.fmt",
            "tether.info.role",
            "tether.info.device.vendor_id",
            "tether.info.device.class",
            "tether.ctrl.op",
            "tether.ctrl.gid",
            "tether.ctrl.slot",
        ],
    );
    let expected_frames = wire::sample::frames().len();
    assert_eq!(frames.len(), expected_frames);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(get(f, "tether.check.status"), ["good"], "frame {}", i + 1);
        assert_eq!(get(f, "tether.gid"), ["10"], "frame {}", i + 1);
    }
    let kinds: Vec<_> = frames
        .iter()
        .map(|f| get(f, "tether.kind").join(""))
        .collect();
    assert_eq!(
        kinds,
        ["4", "4", "1", "1", "1", "1", "1", "1", "1", "2", "3", "5", "5"]
    );

    // INFO: roles and devices.
    assert_eq!(get(&frames[0], "tether.info.role"), ["2"]);
    assert_eq!(
        get(&frames[0], "tether.info.device.vendor_id"),
        ["0x1de5", "0x1af4"]
    );
    assert_eq!(
        get(&frames[0], "tether.info.device.class"),
        ["0xff0000", "0x018000"]
    );
    assert_eq!(get(&frames[1], "tether.info.role"), ["1"]);

    // Config requests and their completions, matched with latency.
    let f = &frames[2];
    assert_eq!(
        get(f, "tether.tlp.name"),
        ["CfgRd0", "CfgWr0", "CfgRd1", "CfgWr1"]
    );
    assert_eq!(get(f, "tether.tlp.tag"), ["1", "2", "3", "4"]);
    assert_eq!(get(f, "tether.tlp.cfg.target"), ["01:00.0"; 4]);
    assert_eq!(
        get(f, "tether.tlp.cfg.register"),
        ["0x0000", "0x0010", "0x0100", "0x0004"]
    );
    assert_eq!(get(f, "tether.tlp.response_in"), ["4"; 4]);
    let f = &frames[3];
    assert_eq!(get(f, "tether.tlp.name"), ["CplD", "Cpl", "Cpl", "Cpl"]);
    assert_eq!(get(f, "tether.tlp.cpl.tag"), ["1", "2", "3", "4"]);
    assert_eq!(get(f, "tether.tlp.cpl.status"), ["0", "0", "1", "2"]);
    assert_eq!(get(f, "tether.tlp.completer"), ["01:00.0"; 4]);
    assert_eq!(get(f, "tether.tlp.request_in"), ["3"; 4]);
    assert_eq!(get(f, "tether.tlp.latency_us"), ["23"; 4]);

    // Memory and I/O requests: both address formats, locked read, poisoned write with digest.
    let f = &frames[4];
    assert_eq!(
        get(f, "tether.tlp.name"),
        ["MRd32", "MRd64", "MRdLk32", "MWr32", "MWr64", "MWr32", "IORd", "IOWr"]
    );
    assert_eq!(
        get(f, "tether.tlp.fmt"),
        ["0", "1", "0", "2", "3", "2", "0", "2"]
    );
    assert_eq!(
        get(f, "tether.tlp.address"),
        [
            "0x00000000febf0000",
            "0x0000000800001000",
            "0x00000000febf0100",
            "0x00000000febf0008",
            "0x0000000800002000",
            "0x00000000febf0010",
            "0x000000000000c000",
            "0x000000000000c004"
        ]
    );
    assert_eq!(
        get(f, "tether.tlp.length"),
        ["32", "2", "1", "2", "2", "1", "1", "1"]
    );
    assert_eq!(
        get(f, "tether.tlp.first_be"),
        ["0x0f", "0x0f", "0x0f", "0x0f", "0x0f", "0x0f", "0x03", "0x0f"]
    );
    assert_eq!(
        get(f, "tether.tlp.ep"),
        ["0", "0", "0", "0", "0", "1", "0", "0"]
    );
    assert_eq!(get(f, "tether.tlp.digest"), ["0x0badc0de"]);
    assert_eq!(get(f, "tether.tlp.requester"), ["00:00.0"; 8]);

    // Read completions split at the RCB: byte counts and lower addresses.
    let f = &frames[5];
    assert_eq!(
        get(f, "tether.tlp.name"),
        ["CplD", "CplD", "CplD", "CplDLk", "CplD", "Cpl"]
    );
    assert_eq!(
        get(f, "tether.tlp.cpl.byte_count"),
        ["128", "64", "8", "4", "4", "4"]
    );
    assert_eq!(
        get(f, "tether.tlp.cpl.lower_address"),
        ["0x00", "0x40", "0x00", "0x00", "0x00", "0x00"]
    );
    assert_eq!(get(f, "tether.tlp.request_in"), ["5"; 6]);
    assert_eq!(get(f, "tether.tlp.latency_us"), ["19"; 6]);

    // MSI, INTx and other messages.
    let f = &frames[6];
    assert_eq!(
        get(f, "tether.tlp.name"),
        ["MWr32", "Msg", "Msg", "MsgD", "Msg"]
    );
    assert_eq!(get(f, "tether.tlp.address"), ["0x00000000fee00000"]);
    assert_eq!(
        get(f, "tether.tlp.msg.code"),
        ["0x20", "0x24", "0x7f", "0x30"]
    );
    assert_eq!(get(f, "tether.tlp.msg.routing"), ["4", "4", "2", "0"]);
    assert_eq!(get(f, "tether.tlp.msg.vendor_id"), ["0x1de5"]);

    // AtomicOps from the device and the host's completions.
    assert_eq!(
        get(&frames[7], "tether.tlp.name"),
        ["FetchAdd", "Swap", "CAS"]
    );
    assert_eq!(get(&frames[7], "tether.tlp.response_in"), ["9"; 3]);
    assert_eq!(get(&frames[8], "tether.tlp.request_in"), ["8"; 3]);
    assert_eq!(get(&frames[8], "tether.tlp.latency_us"), ["31"; 3]);
    assert_eq!(get(&frames[8], "tether.tlp.cpl.status"), ["0", "0", "4"]);

    // ACK/NAK and CTRL.
    assert_eq!(get(&frames[9], "tether.ack"), ["4"]);
    assert_eq!(get(&frames[10], "tether.ack"), ["5"]);
    assert_eq!(get(&frames[10], "tether.flags.gap_end"), ["1"]);
    assert_eq!(get(&frames[10], "tether.nak.gap_end"), ["8"]);
    assert_eq!(get(&frames[9], "tether.flags.gap_end"), ["0"]);
    assert!(get(&frames[9], "tether.nak.gap_end").is_empty());
    assert_eq!(get(&frames[11], "tether.ctrl.op"), ["1"]);
    assert_eq!(get(&frames[11], "tether.ctrl.gid"), ["20"]);
    assert_eq!(get(&frames[11], "tether.ctrl.slot"), ["1"]);
    assert_eq!(get(&frames[12], "tether.ctrl.op"), ["3"]);
}

#[test]
fn tshark_flags_a_corrupted_frame() {
    if !ensure_tshark("tshark_flags_a_corrupted_frame") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("corrupt.pcap");
    let mut frames = wire::sample::frames();
    // Flip one payload bit of the first DATA frame.
    let last = frames[2].bytes.len() - 1;
    frames[2].bytes[last] ^= 0x10;
    write_pcap(&pcap, &frames);
    let frames = fields(&pcap, &["tether.check.status", "tether.check.computed"]);
    assert_eq!(get(&frames[2], "tether.check.status"), ["bad"]);
    assert_eq!(get(&frames[2], "tether.check.computed").len(), 1);
    assert_eq!(get(&frames[3], "tether.check.status"), ["good"]);
}

/// A key file (64 hex digits, mode 0600) for `secret` in `dir`; its hex text.
fn key_file(dir: &Path, name: &str, secret: &[u8; 32]) -> (std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tshark_checks_authentication_tags() {
    // A keyed frame's check field is 0: its tag covers the frame instead.
    const NOT_USED: &str = "not used (the authentication tag covers the frame)";
    if !ensure_tshark("tshark_checks_authentication_tags") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
    let (keyfile, key_hex) = key_file(dir.path(), "group.key", &secret);
    let key = wire::AuthKey::from_secret(&secret);
    let pcap = dir.path().join("keyed.pcap");
    run_ok(
        tether()
            .args(["wire", "sample", "--pcap"])
            .arg(&pcap)
            .arg("--key")
            .arg(&keyfile),
    );
    let gid = wire::sample::SAMPLE_GID;
    let keyed = wire::sample::frames_keyed(&key);
    let n = wire::sample::frames().len();
    assert_eq!(keyed.len(), n);
    let auth_fields = [
        "tether.flags.auth",
        "tether.check.status",
        "tether.auth.tag",
        "tether.auth.nonce",
        "tether.auth.status",
        "tether.auth.key",
        "tether.auth.computed",
        "tether.payload_len",
        "_ws.expert.message",
    ];

    // The right key: every tag good, the fingerprint the key's, and the tag shown is the
    // one after the payload (as the wire crate parses it), not payload or padding.
    let frames = fields_with(
        &pcap,
        &[format!("tether.keys:{gid}={key_hex}")],
        &auth_fields,
    );
    assert_eq!(frames.len(), n);
    let fingerprint = format!("{:08x}", key.id());
    for (i, f) in frames.iter().enumerate() {
        let at = format!("frame {}", i + 1);
        let parsed = wire::Frame::parse(&keyed[i].bytes, None).unwrap();
        assert_eq!(get(f, "tether.flags.auth"), ["1"], "{at}");
        assert_eq!(get(f, "tether.check.status"), [NOT_USED], "{at}");
        assert_eq!(get(f, "tether.auth.status"), ["good"], "{at}");
        assert_eq!(get(f, "tether.auth.key"), [fingerprint.as_str()], "{at}");
        assert_eq!(
            get(f, "tether.auth.tag"),
            [hex(parsed.tag.unwrap()).as_str()],
            "{at}"
        );
        // A session frame shows its nonce; INFO and CTRL have none.
        assert_eq!(parsed.nonce.is_some(), parsed.header.kind.is_session());
        let nonce: Vec<String> = parsed.nonce.iter().map(|n| hex(*n)).collect();
        assert_eq!(get(f, "tether.auth.nonce"), nonce, "{at}");
        assert_eq!(
            get(f, "tether.payload_len"),
            [parsed.payload.len().to_string().as_str()],
            "{at}"
        );
        assert!(get(f, "tether.auth.computed").is_empty(), "{at}");
        assert!(get(f, "_ws.expert.message").is_empty(), "{at}: {f:?}");
    }

    // A wrong key (another group secret): every tag bad, with the computed tag and the
    // expert info; the frame check is still good.
    let wrong: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
    let wrong_hex = hex(&wrong);
    let wrong_fp = format!("{:08x}", wire::AuthKey::from_secret(&wrong).id());
    let frames = fields_with(
        &pcap,
        &[format!("tether.keys:{gid}={wrong_hex}")],
        &auth_fields,
    );
    assert_eq!(frames.len(), n);
    for (i, f) in frames.iter().enumerate() {
        let at = format!("frame {}", i + 1);
        assert_eq!(get(f, "tether.check.status"), [NOT_USED], "{at}");
        assert_eq!(get(f, "tether.auth.status"), ["bad"], "{at}");
        assert_eq!(get(f, "tether.auth.key"), [wrong_fp.as_str()], "{at}");
        let computed = get(f, "tether.auth.computed");
        assert_eq!(computed.len(), 1, "{at}");
        assert_eq!(computed[0].len(), 32, "{at}");
        assert_ne!(computed, get(f, "tether.auth.tag"), "{at}");
        assert!(
            get(f, "_ws.expert.message").contains(&"Authentication tag mismatch"),
            "{at}: {f:?}"
        );
    }

    // No key for the group (none at all, or only another group's, and malformed
    // entries, which are ignored): not checked.
    let not_checked = format!("not checked (no key for group {gid})");
    for prefs in [
        vec![],
        vec![format!(
            "tether.keys:{}={key_hex},{gid}=12,x={key_hex},{gid}={key_hex}0",
            gid + 1
        )],
    ] {
        let frames = fields_with(&pcap, &prefs, &auth_fields);
        assert_eq!(frames.len(), n);
        for (i, f) in frames.iter().enumerate() {
            let at = format!("frame {} with {prefs:?}", i + 1);
            assert_eq!(get(f, "tether.auth.status"), [not_checked.as_str()], "{at}");
            assert!(get(f, "tether.auth.key").is_empty(), "{at}");
            assert!(get(f, "tether.auth.computed").is_empty(), "{at}");
        }
    }

    // Frames changed after tagging: the first DATA frame's last payload byte flipped
    // (a keyed frame's check field is 0, so nothing but the tag can catch it), and one
    // bit of the next frame's tag flipped. Only those two are bad.
    let mut changed = keyed.clone();
    {
        let b = &mut changed[2].bytes;
        let eth = 18; // Ethernet header with the 802.1Q tag
        let hlen = b[eth + 30] as usize * 4;
        let plen = u16::from_be_bytes([b[eth + 2], b[eth + 3]]) as usize;
        assert!(plen > 0);
        b[eth + hlen + plen - 1] ^= 0x01;
        assert_eq!(b[eth + 32..eth + 36], [0; 4]);
    }
    {
        let b = &mut changed[3].bytes;
        let eth = 18;
        let hlen = b[eth + 30] as usize * 4;
        let plen = u16::from_be_bytes([b[eth + 2], b[eth + 3]]) as usize;
        // The tag is the trailer's last 16 bytes (after a session frame's nonce).
        let kind = wire::Frame::parse(b, None).unwrap().header.kind;
        b[eth + hlen + plen + kind.auth_trailer_len() - 1] ^= 0x80;
    }
    let tampered = dir.path().join("tampered.pcap");
    write_pcap(&tampered, &changed);
    let frames = fields_with(
        &tampered,
        &[format!("tether.keys:{gid}={key_hex}")],
        &auth_fields,
    );
    assert_eq!(frames.len(), n);
    for (i, f) in frames.iter().enumerate() {
        let at = format!("frame {}", i + 1);
        assert_eq!(get(f, "tether.check.status"), [NOT_USED], "{at}");
        if i == 2 || i == 3 {
            assert_eq!(get(f, "tether.auth.status"), ["bad"], "{at}");
            assert_eq!(get(f, "tether.auth.computed").len(), 1, "{at}");
            assert!(get(f, "_ws.expert.message").contains(&"Authentication tag mismatch"));
        } else {
            assert_eq!(get(f, "tether.auth.status"), ["good"], "{at}");
        }
    }
    // The changed tag's frame: the computed tag is the one that was sent.
    assert_eq!(
        get(&frames[3], "tether.auth.computed"),
        [hex(wire::Frame::parse(&keyed[3].bytes, None)
            .unwrap()
            .tag
            .unwrap())
        .as_str()]
    );
}
