//! The tether command line: sample, decode and clear errors on bad input.

mod common;

use common::*;

#[test]
fn sample_decodes_with_matched_completions() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("s.pcap");
    run_ok(tether().args(["wire", "sample", "--pcap"]).arg(&pcap));
    let out = run_ok(tether().args(["wire", "decode", "--pcap"]).arg(&pcap));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with(char::is_whitespace)
                && l.trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit()))
            .count(),
        13,
        "{out}"
    );
    assert!(
        out.contains("CfgRd0 00:00.0 tag 1 -> 01:00.0 reg 0x000 BE f"),
        "{out}"
    );
    assert!(
        out.contains(
            "CplD 01:00.0 -> 00:00.0 tag 1 SC bytes 4 la 0x00  [request in frame 3, 23 µs]"
        ),
        "{out}"
    );
    assert!(
        out.contains("Msg 01:00.0 Assert_INTA routing Local"),
        "{out}"
    );
    assert!(
        out.contains("slot 1 GID 10 [1af4:1042] class 018000"),
        "{out}"
    );
    assert!(out.contains("SetGroup request 77"), "{out}");
    // The NAK says where its gap ends.
    assert!(
        out.contains("NAK epoch 0x11110001 seq 8 ack 5 win 64 flags 0x11 gap-end 8 (resend 5..8)"),
        "{out}"
    );
}

#[test]
fn decode_reports_malformed_frames_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("bad.pcap");
    let mut frames = wire::sample::frames();
    frames[2].bytes[40] ^= 1; // breaks the frame check
    frames[3].bytes.truncate(30); // truncated header
    write_pcap(&pcap, &frames);
    let out = run_ok(tether().args(["wire", "decode", "--pcap"]).arg(&pcap));
    assert!(out.contains("frame check failed"), "{out}");
    assert!(out.contains("truncated tether header"), "{out}");
    // The frames after the bad ones are still decoded.
    assert!(out.contains("CTRL"), "{out}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let not_pcap = dir.path().join("x.pcap");
    std::fs::write(&not_pcap, b"hello").unwrap();
    let err = fails(tether().args(["wire", "decode", "--pcap"]).arg(&not_pcap));
    assert!(err.contains("is not a pcap file"), "{err}");

    assert!(
        fails(tether().args(["wire", "decode", "--pcap", "/nonexistent/x.pcap"]))
            .contains("opening /nonexistent/x.pcap")
    );

    let err = fails(
        tether()
            .args(["capture", "--interface", "no-such-if0", "-w"])
            .arg(dir.path().join("c.pcap")),
    );
    assert!(
        err.contains("no interface named \"no-such-if0\"") || err.contains("CAP_NET_RAW"),
        "{err}"
    );
}

#[test]
fn vm_dry_run_shows_the_qemu_command_for_each_front_end() {
    let out = run_ok(tether().args([
        "vm",
        "--config",
        "unused.toml",
        "--dry-run",
        "--accel",
        "tcg",
        "--memory",
        "128",
        "--kernel",
        "/tmp/k",
        "--initrd",
        "/tmp/i",
        "--",
        "-device",
        "isa-debug-exit",
    ]));
    for want in [
        "-accel tcg",
        "-object memory-backend-memfd,id=tether-ram,size=128M,share=on",
        "-machine pc,memory-backend=tether-ram",
        "-device x-pci-proxy-dev,id=tether0,fd=3",
        "-kernel /tmp/k -initrd /tmp/i",
        "-device isa-debug-exit",
    ] {
        assert!(out.contains(want), "no {want:?} in {out}");
    }
    // vfio-user: a q35 machine with the root ports its devices are hot-added on, and
    // no device at boot.
    let dry_run = |frontend: &str, more: &[&str]| {
        run_ok(
            tether()
                .args([
                    "vm",
                    "--config",
                    "unused.toml",
                    "--dry-run",
                    "--frontend",
                    frontend,
                ])
                .args(more),
        )
    };
    let out = dry_run("vfio-user", &["--accel", "tcg", "--root-ports", "3"]);
    for want in [
        "-machine q35,memory-backend=tether-ram",
        "-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        "-device pcie-root-port,id=tether-rp0,bus=pcie.0,chassis=1,slot=1,addr=2.0,multifunction=on",
        "-device pcie-root-port,id=tether-rp2,",
    ] {
        assert!(out.contains(want), "no {want:?} in {out}");
    }
    assert!(!out.contains("tether-rp3"), "{out}");
    assert!(!out.contains("vfio-user-pci"), "{out}");
    assert!(out.contains("-serial stdio"), "{out}");
    // --console: the guest's serial port into a file, for either front-end.
    for frontend in ["proxy", "vfio-user"] {
        let out = dry_run(frontend, &["--console", "/tmp/guest.log"]);
        assert!(out.contains("-serial file:/tmp/guest.log"), "{out}");
        assert!(!out.contains("-serial stdio"), "{out}");
    }
    // --initrd needs --kernel; an unknown front-end is refused.
    for args in [
        &["vm", "--config", "x.toml", "--initrd", "/tmp/i"][..],
        &["vm", "--config", "x.toml", "--frontend", "vhost"][..],
    ] {
        let out = tether().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    // A missing configuration is named.
    assert!(
        fails(tether().args(["vm", "--config", "/nonexistent/host.toml", "--accel", "tcg"]))
            .contains("/nonexistent/host.toml")
    );
    // --connect: QEMU on a given bridge socket, no configuration; with --config or
    // --local-box it is refused, and a socket that is not there is named.
    let out = run_ok(tether().args([
        "vm",
        "--connect",
        "/tmp/bridge.sock",
        "--dry-run",
        "--accel",
        "tcg",
    ]));
    assert!(
        out.contains(r#""socket":{"path":"/tmp/bridge.sock","type":"unix"}"#),
        "{out}"
    );
    for args in [
        &["vm", "--connect", "/tmp/b.sock", "--config", "x.toml"][..],
        &["vm", "--connect", "/tmp/b.sock", "--local-box", "b.toml"][..],
        &["vm"][..],
    ] {
        let out = tether().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    let err = fails(tether().args([
        "vm",
        "--connect",
        "/nonexistent/bridge.sock",
        "--accel",
        "tcg",
    ]));
    assert!(
        err.contains("/nonexistent/bridge.sock: no socket there (start `tether host --vfio-user"),
        "{err}"
    );
}

/// The `src/` files of every crate in the workspace, as (file name, path).
fn workspace_sources() -> Vec<(String, std::path::PathBuf)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, std::path::PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, p));
            }
        }
    }
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for c in std::fs::read_dir(&crates).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            walk(&src, &mut out);
        }
    }
    out
}

/// A file name that says what the file holds means one thing in the workspace: no two
/// crates' sources are called host.rs, iobox.rs or config.rs (they once meant a root
/// complex's driver API, a fabric link and a command; a box and a command; and three
/// kinds of settings).
#[test]
fn source_file_names_are_not_reused() {
    let sources = workspace_sources();
    assert!(
        sources.iter().any(|(n, _)| n == "lib.rs"),
        "no sources found under the workspace's crates"
    );
    for name in ["host.rs", "iobox.rs", "config.rs"] {
        let same: Vec<_> = sources.iter().filter(|(n, _)| n == name).collect();
        assert!(
            same.len() <= 1,
            "{} files called {name}: {:?}",
            same.len(),
            same.iter().map(|(_, p)| p).collect::<Vec<_>>()
        );
    }
}

#[test]
fn group_key_files_are_private_and_a_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("g10.key");
    let made = run_ok(tether().args(["key", "generate"]).arg(&key));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{made}");
    let fp = run_ok(tether().args(["key", "fingerprint"]).arg(&key));
    assert!(
        made.contains(&format!("fingerprint {}", fp.trim())),
        "{made} / {fp}"
    );
    // Never overwritten.
    let again = tether()
        .args(["key", "generate"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    // A box whose key file others can read does not start, and says why.
    let box_toml = write(
        d,
        "box.toml",
        "[port]\ninterface = \"lo\"\n[bridge.keys]\n10 = \"g10.key\"\n\
         [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n",
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(tether().args(["iobox", "--config"]).arg(&box_toml));
    assert!(
        err.contains("g10.key: mode 0644 lets others read the group key")
            && err.contains("chmod 600"),
        "{err}"
    );
    // Nor one that names a group that cannot be.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad = write(
        d,
        "bad.toml",
        "[port]\ninterface = \"lo\"\n[bridge.keys]\nten = \"g10.key\"\n\
         [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n",
    );
    let err = fails(tether().args(["iobox", "--config"]).arg(&bad));
    assert!(err.contains("\"ten\" is not a group number"), "{err}");
}

#[test]
fn decode_checks_the_tags_of_a_keyed_capture() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, wrong) = (d.join("k"), d.join("w"));
    run_ok(tether().args(["key", "generate"]).arg(&key));
    run_ok(tether().args(["key", "generate"]).arg(&wrong));
    let pcap = d.join("keyed.pcap");
    run_ok(
        tether()
            .args(["wire", "sample", "--pcap"])
            .arg(&pcap)
            .arg("--key")
            .arg(&key),
    );
    let n = wire::sample::frames().len();
    let decode = |k: Option<&std::path::Path>| {
        let mut c = tether();
        c.args(["wire", "decode", "--pcap"]).arg(&pcap);
        if let Some(k) = k {
            c.arg("--key").arg(format!("10={}", k.display()));
        }
        run_ok(&mut c)
    };
    let good = decode(Some(&key));
    assert_eq!(
        good.matches("authentication tag: good").count(),
        n,
        "{good}"
    );
    let bad = decode(Some(&wrong));
    assert_eq!(bad.matches("authentication tag: BAD").count(), n, "{bad}");
    let none = decode(None);
    assert_eq!(
        none.matches("authentication tag: not checked (no key for group 10)")
            .count(),
        n,
        "{none}"
    );
    // The TLPs decode as in the untagged capture.
    assert!(
        good.contains("Msg 01:00.0 Assert_INTA routing Local"),
        "{good}"
    );
}

/// The repository's example configurations (examples/), as a new user copies them.
fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn check_config_accepts_the_example_configurations() {
    let out = run_ok(
        tether()
            .arg("check-config")
            .arg(example("box.toml"))
            .arg(example("host.toml")),
    );
    assert!(
        out.contains("box.toml: valid: an I/O box on eth1 (auto), 0 group key(s), control /run/tether/box.sock, metrics 127.0.0.1:9370; slot 0 memdev in group 10 (1048576 bytes)"),
        "{out}"
    );
    assert!(
        out.contains("host.toml: valid: a host in group 10 on eth1 (auto), 0 group key(s), control /run/tether/host.sock, metrics 127.0.0.1:9371;"),
        "{out}"
    );
    // The manager's names a token file, made as its comment says, next to it.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manager.toml");
    std::fs::copy(example("manager.toml"), &m).unwrap();
    let err = fails(tether().arg("check-config").arg(&m));
    assert!(
        err.contains("token_file") && err.contains("manager.token"),
        "{err}"
    );
    run_ok(
        tether()
            .args(["key", "generate"])
            .arg(dir.path().join("manager.token")),
    );
    let out = run_ok(tether().arg("check-config").arg(&m));
    assert!(
        out.contains("manager.toml: valid: a manager on eth2, API on 127.0.0.1:9380, 0 group key(s), requests unsigned"),
        "{out}"
    );
}

#[test]
fn check_config_names_each_invalid_file_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let box_with = |device: &str| format!("[port]\ninterface = \"eth1\"\n[[device]]\n{device}");
    let files = [
        (
            "good-box.toml",
            box_with(&format!(
                "slot = 3\nmodel = \"virtio-blk\"\ngid = 20\npath = {:?}\n",
                disk.display().to_string()
            )),
            None,
        ),
        (
            "typo.toml",
            "gid = 10\n[port]\ninterface = \"eth1\"\nkindd = \"auto\"\n".into(),
            Some("kindd"),
        ),
        (
            "slot.toml",
            box_with("slot = 40\nmodel = \"memdev\"\n"),
            Some("slots are 0..=31"),
        ),
        (
            "nodisk.toml",
            box_with("slot = 1\nmodel = \"virtio-blk\"\npath = \"/nonexistent/disk.img\"\n"),
            Some("opening /nonexistent/disk.img"),
        ),
        (
            "neither.toml",
            "[port]\ninterface = \"eth1\"\n".into(),
            Some("neither a box's configuration"),
        ),
        (
            "badgid.toml",
            "gid = 0\n[port]\ninterface = \"eth1\"\n".into(),
            Some("not a valid GID"),
        ),
        (
            "badmetrics.toml",
            "gid = 10\n[port]\ninterface = \"eth1\"\n[bridge]\nmetrics = \"localhost:9\"\n".into(),
            Some("invalid socket address syntax"),
        ),
    ];
    let mut cmd = tether();
    cmd.arg("check-config");
    for (name, text, _) in &files {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("good-box.toml: valid: an I/O box on eth1 (auto), 0 group key(s); slot 3 virtio-blk in group 20"),
        "{stdout}"
    );
    assert!(stdout.contains("of 4096 bytes)"), "{stdout}");
    // One message per invalid file (a parse error spans lines), each starting
    // with the file's name.
    let messages: Vec<&str> = stderr.split("tether: ").skip(1).collect();
    for (name, _, why) in &files {
        let Some(why) = why else { continue };
        let m = messages
            .iter()
            .find(|m| {
                m.lines()
                    .next()
                    .is_some_and(|l| l.contains(&format!("{name}:")))
            })
            .unwrap_or_else(|| panic!("{name} not named:\n{stderr}"));
        assert!(m.contains(why), "{name}: {m}");
    }
    assert!(
        stderr.contains("6 of 7 configuration files not valid"),
        "{stderr}"
    );
}

/// The log is on standard error, a level and a UTC timestamp on each line; `-q`
/// silences information, `--log-format json` gives one JSON object per line, and
/// RUST_LOG takes the place of -v/-q. Standard output keeps only what was asked for.
#[test]
fn the_log_goes_to_stderr_with_levels_timestamps_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("s.pcap");
    let run = |args: &[&str], rust_log: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        c.args(args).args(["wire", "sample", "--pcap"]).arg(&pcap);
        c.env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            c.env("RUST_LOG", v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let text = run(&[], None);
    let line = text.lines().next().expect("a log line");
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(
        stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{line}"
    );
    let rest = rest.trim_start();
    assert!(
        rest.starts_with("INFO tether: wrote ") && rest.contains("sample frames"),
        "{line}"
    );
    assert_eq!(run(&["-q"], None), "");
    assert_eq!(run(&[], Some("warn")), "");
    // RUST_LOG wins over -q.
    assert!(run(&["-q"], Some("info")).contains("sample frames"));
    // A RUST_LOG that does not parse is said, then -v/-q apply.
    let bad = run(&[], Some("tether=loud"));
    assert!(bad.contains("RUST_LOG=\"tether=loud\" ignored"), "{bad}");
    assert!(bad.contains("sample frames"), "{bad}");

    let json = run(&["--log-format", "json"], None);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["target"], "tether", "{v}");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("sample frames"),
        "{v}"
    );
}

/// Shell completions and manual pages come from the same CLI as --help: bash's script
/// is valid bash that completes the subcommands, and there is a page for the command
/// and every subcommand at every depth.
#[test]
fn completions_and_manual_pages_cover_every_command() {
    let bash = run_ok(tether().args(["completions", "bash"]));
    for word in ["iobox", "check-config", "set-group", "--log-format"] {
        assert!(bash.contains(word), "no {word} in the bash completions");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tether.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    for shell in ["zsh", "fish"] {
        assert!(run_ok(tether().args(["completions", shell])).contains("set-group"));
    }
    assert!(!tether()
        .args(["completions", "tcsh"])
        .output()
        .unwrap()
        .status
        .success());

    let man = dir.path().join("man1");
    let said = run_ok(tether().arg("man").arg(&man));
    let pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        said.contains(&format!("wrote {} manual pages", pages.len())),
        "{said}"
    );
    for want in [
        "tether.1",
        "tether-iobox.1",
        "tether-host.1",
        "tether-ctl.1",
        "tether-ctl-stats.1",
        "tether-wire-decode.1",
        "tether-check-config.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    let stats = std::fs::read_to_string(man.join("tether-ctl-stats.1")).unwrap();
    assert!(stats.contains("\n.TH tether-ctl-stats 1 "), "{stats}");
    assert!(stats.contains("\\-\\-watch"), "{stats}");
}

/// `wire decode --stats`: the completion latency per request type, on the sample and
/// on the committed capture of a real memdev run (bench/capture-memdev.sh): the
/// enumeration's configuration requests and the device's DMA reads, each answered,
/// with ordered percentiles.
#[test]
fn decode_stats_gives_latency_percentiles_per_request_type() {
    let rows = |pcap: &std::path::Path| -> Vec<Vec<String>> {
        let out = run_ok(
            tether()
                .args(["wire", "decode", "--stats", "--pcap"])
                .arg(pcap),
        );
        let mut lines = out.lines();
        let head = lines.next().unwrap_or_default();
        assert!(head.contains("completion latency by request type"), "{out}");
        assert!(
            lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                == ["TYPE", "REQUESTS", "ANSWERED", "MIN", "P50", "P90", "P99", "MAX"],
            "{out}"
        );
        lines
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("s.pcap");
    run_ok(tether().args(["wire", "sample", "--pcap"]).arg(&sample));
    let s = rows(&sample);
    for kind in ["MRd", "CfgRd0", "CfgWr1", "IORd", "FetchAdd", "CAS"] {
        let r = s
            .iter()
            .find(|r| r[0] == kind)
            .unwrap_or_else(|| panic!("{kind}: {s:?}"));
        assert_eq!(r[1], r[2], "{r:?}");
    }
    assert!(
        !s.iter().any(|r| r[0] == "MWr"),
        "posted writes have no completion"
    );

    let capture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/captures/memdev.pcap");
    let c = rows(&capture);
    for kind in ["CfgRd0", "CfgWr0", "MRd"] {
        let r = c
            .iter()
            .find(|r| r[0] == kind)
            .unwrap_or_else(|| panic!("{kind}: {c:?}"));
        let n: Vec<u64> = r[1..].iter().map(|x| x.parse().unwrap()).collect();
        assert!(n[0] > 0 && n[1] == n[0], "every {kind} answered: {r:?}");
        assert!(
            n[2] <= n[3] && n[3] <= n[4] && n[4] <= n[5] && n[5] <= n[6],
            "{r:?}"
        );
    }
    let all = run_ok(tether().args(["wire", "decode", "--pcap"]).arg(&capture));
    assert!(
        !all.contains("malformed") && !all.contains("bytes: "),
        "{all}"
    );
    assert!(
        all.contains(" INFO ") && all.contains("MRd"),
        "a real run's frames"
    );
}

/// `tether manager` refuses to start, naming the reason, on a token file others can
/// read and on an interface that does not exist; it serves nothing then.
#[test]
fn manager_refuses_a_readable_token_and_a_missing_interface() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("api.token");
    run_ok(tether().args(["key", "generate"]).arg(&token));
    let cfg = dir.path().join("manager.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\ninterface = \"tether-none0\"\ntoken_file = \"api.token\"\n",
    )
    .unwrap();
    let err = fails(tether().args(["manager", "--config"]).arg(&cfg));
    assert!(err.contains("tether-none0"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(tether().args(["manager", "--config"]).arg(&cfg));
    assert!(
        err.contains("token_file") && err.contains("chmod 600"),
        "{err}"
    );
}
