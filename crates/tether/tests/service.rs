//! The systemd units of contrib/systemd, as a packager installs them:
//!
//! - `systemd-analyze verify` takes each unit without a word (a misspelt directive or
//!   value is a warning there, so the test wants none);
//! - a box and a host run as an unprivileged user with exactly the capabilities the
//!   units give (setpriv, in network namespaces the test makes): the host gets the
//!   box's device by hot-plug and verifies DMA through it, on AF_XDP (no fallback);
//!   without them the box cannot open its port, so the list is what makes it work.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dataplane::netns::Rig;

const UNITS: [&str; 2] = ["tether-iobox@.service", "tether-host@.service"];

fn unit_text(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/systemd")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The values of `key=` in a unit, split on white space.
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(String::from))
        .collect()
}

/// The capabilities the units give, as setpriv names them (`+net_raw,...`).
fn unit_caps() -> String {
    let mut all = Vec::new();
    for name in UNITS {
        let u = unit_text(name);
        let ambient = directive(&u, "AmbientCapabilities");
        assert!(!ambient.is_empty(), "{name}: no AmbientCapabilities");
        assert_eq!(
            ambient,
            directive(&u, "CapabilityBoundingSet"),
            "{name}: the bounding set is the ambient set"
        );
        assert_eq!(directive(&u, "User"), ["tether"], "{name}: not root");
        assert_eq!(directive(&u, "RuntimeDirectory"), ["tether"], "{name}");
        all.push(ambient);
    }
    assert_eq!(all[0], all[1], "both bridges need the same");
    all[0]
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn units_verify_cleanly() {
    let test = "units_verify_cleanly";
    if !is_root() {
        return skip(test, "needs root for the test's own tools (scripts/deps)");
    }
    let Some(_) = dep(test, "tools.sh") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        // The unit as installed, its program where this build has it, one instance.
        let text = unit_text(name).replace("/usr/local/bin/tether", env!("CARGO_BIN_EXE_tether"));
        let file = dir.path().join(name.replace("@.", "@test."));
        std::fs::write(&file, &text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{name}: {err}"
        );
    }
    // A misspelt value is caught: the check can fail.
    let bad = unit_text(UNITS[0])
        .replace("/usr/local/bin/tether", env!("CARGO_BIN_EXE_tether"))
        .replace("Restart=on-failure", "Restart=on-failures");
    let file = dir.path().join("tether-iobox@bad.service");
    std::fs::write(&file, bad).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Failed to parse"),
        "{out:?}"
    );
}

#[test]
fn bridges_run_unprivileged_with_the_units_capabilities() {
    let test = "bridges_run_unprivileged_with_the_units_capabilities";
    let Some(mut rig) = Rig::for_test(test, "tsv") else {
        return;
    };
    let caps = unit_caps();
    let bx = rig.host("box").unwrap();
    let h = rig.host("host").unwrap();
    rig.veth(bx, "svbox", h, "svhost", 1500).unwrap();

    // The program and configurations where the unprivileged user can read them, and a
    // runtime directory it owns (what RuntimeDirectory= makes).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = d.join("tether");
    std::fs::copy(env!("CARGO_BIN_EXE_tether"), &bin).unwrap();
    let run = d.join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"svbox\"\nkind = \"af-xdp\"\n[bridge]\nid = 0xb0c5\n\
             control = \"{}/box.sock\"\n[[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n",
            run.display()
        ),
    );
    let host_toml = write(
        d,
        "host.toml",
        &format!(
            "gid = 10\nself_test = 20\n[port]\ninterface = \"svhost\"\nkind = \"af-xdp\"\n\
             [bridge]\ncontrol = \"{}/host.sock\"\n",
            run.display()
        ),
    );
    let unprivileged = |caps: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ]
        .map(String::from)
        .to_vec();
        let sep = if caps.is_empty() { "" } else { "," };
        for set in ["inh-caps", "ambient-caps", "bounding-set"] {
            v.push(format!("--{set}=-all{sep}{caps}"));
        }
        v.push("--".into());
        v.push(path(&bin));
        v
    };
    let args = |caps: &str, rest: &[&str]| -> Vec<String> {
        let mut v = unprivileged(caps);
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };

    // Without the capabilities the box cannot open its port.
    let none = args("", &["iobox", "--config", &path(&box_toml)]);
    let out = rig
        .command(bx, "setpriv")
        .args(strs(&none))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a box without capabilities ran:\n{err}"
    );
    assert!(err.contains("svbox"), "{err}");

    let b = args(&caps, &["iobox", "--config", &path(&box_toml)]);
    let mut boxp = Proc::spawn_program(&rig, bx, "iobox", "setpriv", &strs(&b));
    let hst = args(&caps, &["host", "--config", &path(&host_toml)]);
    let mut host = Proc::spawn_program(&rig, h, "host", "setpriv", &strs(&hst));
    let long = Duration::from_secs(30);
    host.wait_for("self-test: 20 DMA copies verified", 1, long);
    boxp.wait_for("peer up", 1, long);
    for p in [&boxp, &host] {
        let t = p.text();
        assert!(t.contains(": AF_XDP"), "{t}");
        assert_eq!(p.count("not available"), 0, "{t}");
    }
    // The control socket works in the runtime directory, owned by the user.
    let sock = run.join("host.sock");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().uid(), 65534);
    let stats = run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["ctl", "stats", "--json", "-s"])
            .arg(&sock),
    );
    assert!(stats.contains("\"role\": \"host\""), "{stats}");
    eprintln!("{}", host.stop());
    boxp.stop();
}
