//! `tether manager` as a user runs it, driven with curl: an I/O box, two hosts and the
//! manager, each a process in a network namespace of its own, on a Linux bridge the
//! test makes and removes.
//!
//! - no request without the bearer token (401, `WWW-Authenticate: Bearer`);
//! - `GET /devices` lists the box's two devices with their groups and the host that
//!   has each; `GET /bridges` the box and both hosts with their groups;
//! - `PUT /devices/0xb0c5/0/group {"gid": 20}` moves the device from host A to host B
//!   (hot-remove at A, hot-plug and verified DMA at B); `DELETE` frees it (4093); the
//!   box obeys only signed moves (`[bridge] managers`), and the manager signs them;
//! - bad input gets 400, an unknown device 404, other paths 404, other methods 405;
//! - every path and method of docs/manager-openapi.json is served, and every status
//!   the test met is documented for its operation.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use dataplane::netns::Rig;

const BRIDGE: &str = "info_interval_ms = 50\nmissed_infos = 10\n";

/// A curl call's status code and body.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

#[test]
fn manager_api_lists_and_moves_devices() {
    let test = "manager_api_lists_and_moves_devices";
    let Some(mut rig) = Rig::for_test(test, "tmg") else {
        return;
    };
    let Some(_) = dep(test, "tools.sh") else {
        return;
    };
    let [bx, ha, hb, mgr] = star(&mut rig, "mg", &["box", "ha", "hb", "mgr"])[..] else {
        unreachable!()
    };

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    // The box obeys only moves signed by the manager's key.
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["key", "generate-manager"])
            .arg(d.join("mgr.key")),
    );
    let box_toml = write(
        d,
        "box.toml",
        &format!(
            "[port]\ninterface = \"mgbox\"\n[bridge]\nid = 0xb0c5\nmanagers = [\"mgr.key.pub\"]\n{BRIDGE}\
             [[device]]\nslot = 0\nmodel = \"memdev\"\ngid = 10\n\
             [[device]]\nslot = 1\nmodel = \"memdev\"\nbuffer_size = 65536\n"
        ),
    );
    let host_toml = |name: &str, iface: &str, gid: u16| {
        write(
            d,
            &format!("{name}.toml"),
            &format!(
                "gid = {gid}\nself_test = 20\n[port]\ninterface = \"{iface}\"\n[bridge]\n{BRIDGE}"
            ),
        )
    };
    let (ha_toml, hb_toml) = (host_toml("ha", "mgha", 10), host_toml("hb", "mghb", 20));
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["key", "generate"])
            .arg(d.join("api.token")),
    );
    let token = std::fs::read_to_string(d.join("api.token"))
        .unwrap()
        .trim()
        .to_string();
    let mgr_toml = write(
        d,
        "manager.toml",
        "listen = \"127.0.0.1:9380\"\ninterface = \"mgmgr\"\ntoken_file = \"api.token\"\n\
         sign = \"mgr.key\"\nstale_ms = 1000\n",
    );

    let boxp = Proc::spawn(&rig, bx, "iobox", &["iobox", "--config", &path(&box_toml)]);
    let mut a = Proc::spawn(&rig, ha, "host A", &["host", "--config", &path(&ha_toml)]);
    let mut b = Proc::spawn(&rig, hb, "host B", &["host", "--config", &path(&hb_toml)]);
    // --listen overrides the file's address: any free port, which the log names.
    let mut m = Proc::spawn(
        &rig,
        mgr,
        "manager",
        &[
            "manager",
            "--config",
            &path(&mgr_toml),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let long = Duration::from_secs(30);
    a.wait_for("self-test: 20 DMA copies verified", 1, long);
    m.wait_for("listening on http://127.0.0.1:", 1, long);
    let text = m.text();
    let port: u16 = text
        .split("listening on http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no port in {text}"));
    assert_ne!(port, 9380, "--listen was not taken");
    let host_mac = |p: &Proc| -> String {
        let t = p.text();
        t.split("tether host: ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("no MAC in {t}"))
            .to_string()
    };
    let (mac_a, mac_b) = (host_mac(&a), host_mac(&b));

    let curl = |method: &str, url_path: &str, auth: Option<&str>, body: Option<&str>| {
        let mut c = rig.command(mgr, "curl");
        c.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .args(["-X", method]);
        if let Some(t) = auth {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data", b]);
        }
        c.arg(format!("http://127.0.0.1:{port}{url_path}"));
        let out = run_ok(&mut c);
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        Answer {
            status: status.parse().unwrap_or_else(|_| panic!("{out}")),
            body: body.to_string(),
        }
    };
    let api = |method: &str, p: &str, body: Option<&str>| curl(method, p, Some(&token), body);
    let mut met: Vec<(String, String, u16)> = Vec::new();
    let mut note = |method: &str, template: &str, a: &Answer| {
        met.push((method.to_lowercase(), template.to_string(), a.status));
    };

    // No token, a wrong one: 401 with the scheme to use.
    for t in [None, Some("0000")] {
        let r = curl("GET", "/devices", t, None);
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("Bearer"),
            "{}",
            r.body
        );
    }
    let headers = run_ok(rig.command(mgr, "curl").args([
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/bridges"),
    ]));
    assert!(
        headers.to_lowercase().contains("www-authenticate: bearer"),
        "{headers}"
    );
    note("get", "/devices", &curl("GET", "/devices", None, None));

    // The inventory, once the box's INFO of both groups has been heard.
    let end = Instant::now() + long;
    let devices = loop {
        let r = api("GET", "/devices", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        if v.as_array().unwrap().len() == 2 && v[0]["host"].is_object() {
            note("get", "/devices", &r);
            break v;
        }
        assert!(Instant::now() < end, "devices: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("GET /devices: {devices:#}");
    assert_eq!(devices[0]["box"], "0xb0c5", "{devices}");
    assert_eq!(devices[0]["slot"], 0, "{devices}");
    assert_eq!(devices[0]["gid"], 10, "{devices}");
    assert_eq!(devices[0]["vendor"], "1de5", "{devices}");
    assert_eq!(devices[0]["class"], "058000", "{devices}");
    assert_eq!(devices[0]["ready"], true, "{devices}");
    assert_eq!(devices[0]["host"]["mac"], mac_a.as_str(), "{devices}");
    assert_eq!(devices[1]["slot"], 1, "{devices}");
    assert_eq!(devices[1]["gid"], 4093, "{devices}");
    assert!(devices[1]["host"].is_null(), "{devices}");

    let r = api("GET", "/bridges", None);
    assert_eq!(r.status, 200, "{}", r.body);
    note("get", "/bridges", &r);
    let bridges = r.json();
    let find = |mac: &str| -> serde_json::Value {
        bridges
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["mac"] == mac)
            .cloned()
            .unwrap_or_else(|| panic!("no {mac} in {bridges}"))
    };
    assert_eq!(find(&mac_a)["groups"], serde_json::json!([10]));
    assert_eq!(find(&mac_b)["role"], "host");
    let boxb = bridges
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["bridge_id"] == "0xb0c5")
        .unwrap_or_else(|| panic!("no box in {bridges}"));
    assert_eq!(boxb["role"], "iobox");
    assert_eq!(boxb["groups"], serde_json::json!([10, 4093]));
    assert_eq!(boxb["devices"], 2);

    // Bad input and unknown things, each with its status.
    for (method, p, body, want) in [
        ("PUT", "/devices/0xb0c5/0/group", Some(r#"{"gid": 0}"#), 400),
        (
            "PUT",
            "/devices/0xb0c5/0/group",
            Some(r#"{"gid": 20, "x": 1}"#),
            400,
        ),
        ("PUT", "/devices/0xb0c5/0/group", Some("gid=20"), 400),
        ("PUT", "/devices/0xb0c5/0/group", None, 400),
        (
            "PUT",
            "/devices/0xb0c5/40/group",
            Some(r#"{"gid": 20}"#),
            400,
        ),
        ("PUT", "/devices/nobox/0/group", Some(r#"{"gid": 20}"#), 400),
        (
            "PUT",
            "/devices/0xdead/0/group",
            Some(r#"{"gid": 20}"#),
            404,
        ),
        ("DELETE", "/devices/0xdead/3/group", None, 404),
        ("GET", "/nothing", None, 404),
        ("POST", "/devices", Some("{}"), 405),
    ] {
        let r = api(method, p, body);
        assert_eq!(r.status, want, "{method} {p} {body:?}: {}", r.body);
        if want != 405 && p != "/nothing" {
            assert!(r.json()["error"].is_string(), "{}", r.body);
        }
        let template = if p.starts_with("/devices/") {
            "/devices/{box}/{slot}/group"
        } else {
            p
        };
        note(method, template, &r);
    }

    // A move: host A loses the device, host B gets and uses it.
    let r = api("PUT", "/devices/0xb0c5/0/group", Some(r#"{"gid": 20}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    note("put", "/devices/{box}/{slot}/group", &r);
    let v = r.json();
    assert_eq!(
        (v["from"].as_u64(), v["gid"].as_u64()),
        (Some(10), Some(20)),
        "{v}"
    );
    assert_eq!(v["box"], "0xb0c5");
    a.wait_for("hot-remove: group 10: slot 0", 1, long);
    b.wait_for("self-test: 20 DMA copies verified", 1, long);
    m.wait_for("moved 0xb0c5/0", 1, long);
    // Asked again: it is there already, nothing is sent.
    let r = api("PUT", "/devices/0xb0c5/0/group", Some(r#"{"gid": 20}"#));
    let end = Instant::now() + long;
    let mut r = r;
    while r.json()["from"] != 20 {
        // The inventory may still hold group 10's last INFO for a moment.
        assert!(Instant::now() < end, "{}", r.body);
        std::thread::sleep(Duration::from_millis(100));
        r = api("PUT", "/devices/0xb0c5/0/group", Some(r#"{"gid": 20}"#));
    }
    assert_eq!(r.status, 200, "{}", r.body);
    // Freed: back to 4093, host B sees it go.
    let r = api("DELETE", "/devices/0xb0c5/0/group", None);
    assert_eq!(r.status, 200, "{}", r.body);
    note("delete", "/devices/{box}/{slot}/group", &r);
    assert_eq!(r.json()["gid"], 4093, "{}", r.body);
    b.wait_for("hot-remove: group 20: slot 0", 1, long);
    let end = Instant::now() + long;
    loop {
        let v = api("GET", "/devices", None).json();
        if v[0]["gid"] == 4093 && v[0]["host"].is_null() {
            break;
        }
        assert!(Instant::now() < end, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The OpenAPI document: every path and method it has is served (not 404/405 with
    // the token), and every status met above is documented for its operation.
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manager-openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (template, ops) in paths {
        let concrete = template.replace("{box}", "0xb0c5").replace("{slot}", "1");
        for method in ["get", "put", "delete"] {
            if ops.get(method).is_none() {
                continue;
            }
            let body = (method == "put").then_some(r#"{"gid": 4093}"#);
            let r = api(&method.to_uppercase(), &concrete, body);
            assert!(
                ![404, 405].contains(&r.status),
                "{method} {template} is documented but answers {}: {}",
                r.status,
                r.body
            );
        }
    }
    for (method, template, status) in &met {
        if template == "/nothing" || *status == 405 {
            continue;
        }
        let op = &paths[template.as_str()][method.as_str()];
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{method} {template}: {status} is not documented"
        );
    }
    assert!(paths.len() >= 3);
    eprintln!("manager:\n{}", m.stop());
    a.stop();
    b.stop();
    boxp.stop();
}
