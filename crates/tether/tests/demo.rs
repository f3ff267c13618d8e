//! `tether demo`, the main job, run as a user would: over in-memory ports, and (as
//! root) across network namespaces that it creates and must remove.

mod common;

use common::{is_root, run_ok, skip, tether};

fn check(out: &str) {
    for want in [
        "host A: enumerated",
        "01:00.0 Memory controller [0580]: Device 1de5:0001 (rev 01)",
        "copies verified",
        "MMIO read round trip over 200 reads: median",
        "host A: efe session:",
        "host A: hot-remove",
        "host B: hot-plug, enumerated",
        "host B: 100 copies verified",
        "box: 1 device resets",
        "0 TLPs unrouted",
        "done:",
    ] {
        assert!(out.contains(want), "demo output lacks {want:?}:\n{out}");
    }
}

#[test]
fn demo_over_memory() {
    let out = run_ok(tether().args([
        "demo",
        "--port",
        "memory",
        "--transfers",
        "50",
        "--mmio-reads",
        "200",
    ]));
    assert!(out.contains("an in-memory segment"), "{out}");
    check(&out);
}

#[test]
fn demo_over_namespaces_cleans_up() {
    if !is_root() {
        return skip(
            "demo_over_namespaces_cleans_up",
            "needs root for network namespaces",
        );
    }
    let out = run_ok(tether().args(["demo", "--transfers", "50", "--mmio-reads", "200"]));
    assert!(out.contains("3 network namespaces"), "{out}");
    check(&out);
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&ns.stdout);
    assert!(!left.contains("tdemo"), "namespaces left behind:\n{left}");
}

#[test]
fn demo_refuses_bad_arguments() {
    let out = tether()
        .args(["demo", "--transfers", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}
