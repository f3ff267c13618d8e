//! Helpers shared by the tether integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The tether binary built for this test run.
pub fn tether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a loud skip notice (the test then returns without asserting).
pub fn skip(test: &str, why: &str) {
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces created for one test and removed when dropped, even on panic.
pub struct Namespaces {
    pub names: Vec<String>,
}

impl Namespaces {
    /// Creates `count` namespaces named `tt<tag><i>-<pid>`; `None` (after a loud skip
    /// notice) when not root or namespaces cannot be made here.
    pub fn create(test: &str, tag: &str, count: usize) -> Option<Namespaces> {
        if !is_root() {
            skip(test, "needs root for network namespaces");
            return None;
        }
        let mut ns = Namespaces { names: Vec::new() };
        for i in 0..count {
            let name = format!("tt{tag}{i}-{}", std::process::id());
            let out = Command::new("ip").args(["netns", "add", &name]).output();
            match out {
                Ok(o) if o.status.success() => ns.names.push(name),
                Ok(o) => {
                    skip(
                        test,
                        &format!(
                            "ip netns add failed: {}",
                            String::from_utf8_lossy(&o.stderr)
                        ),
                    );
                    return None;
                }
                Err(e) => {
                    skip(test, &format!("cannot run ip (iproute2): {e}"));
                    return None;
                }
            }
        }
        Some(ns)
    }

    /// Joins namespace `a` and `b` with a veth pair named `ifa`/`ifb`, both up.
    pub fn veth(&self, a: usize, ifa: &str, b: usize, ifb: &str) {
        run_ok(Command::new("ip").args([
            "-n",
            &self.names[a],
            "link",
            "add",
            ifa,
            "type",
            "veth",
            "peer",
            "name",
            ifb,
            "netns",
            &self.names[b],
        ]));
        run_ok(Command::new("ip").args(["-n", &self.names[a], "link", "set", ifa, "up"]));
        run_ok(Command::new("ip").args(["-n", &self.names[b], "link", "set", ifb, "up"]));
    }

    /// A command that runs `program` inside namespace `i`.
    pub fn exec(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Writes sample frames (possibly altered) to a pcap file.
pub fn write_pcap(path: &Path, frames: &[wire::sample::SampleFrame]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(file).unwrap();
    for f in frames {
        w.write_packet(&pcap_file::pcap::PcapPacket::new(
            std::time::Duration::from_micros(f.time_us),
            f.bytes.len() as u32,
            &f.bytes,
        ))
        .unwrap();
    }
}
