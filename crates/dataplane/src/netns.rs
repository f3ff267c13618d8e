//! A multi-host test rig: network namespaces joined by veth pairs (and Linux bridges
//! for three or more hosts), created by the test that needs them and always removed,
//! even when the test fails (the rig's `Drop`). Needs root.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use thiserror::Error;

use crate::sys::set_vlan_offload;

#[derive(Debug, Error)]
pub enum RigError {
    #[error("network namespaces need root")]
    NotRoot,
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
}

/// The namespaces of one test; all are deleted on drop.
pub struct Rig {
    prefix: String,
    hosts: Vec<String>,
}

fn run(args: &[&str]) -> Result<(), RigError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| RigError::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RigError::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl Rig {
    /// A rig whose namespaces are named `<tag><host>-<pid>`.
    pub fn new(tag: &str) -> Result<Rig, RigError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(RigError::NotRoot);
        }
        Ok(Rig {
            prefix: tag.to_string(),
            hosts: Vec::new(),
        })
    }

    /// The rig of TEST, or `None` without root, after a loud skip notice on stderr
    /// (straight to the process's stderr: the test harness captures the output of
    /// passing tests, and scripts/test.sh counts and names every skip). As root this
    /// never skips.
    pub fn for_test(test: &str, tag: &str) -> Option<Rig> {
        match Rig::new(tag) {
            Ok(r) => Some(r),
            Err(e) => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("\n*** SKIPPED {test}: {e} ***\n\n").as_bytes(),
                );
                None
            }
        }
    }

    /// Adds a host (a namespace with its loopback up); returns its index.
    pub fn host(&mut self, name: &str) -> Result<usize, RigError> {
        let ns = format!("{}{}-{}", self.prefix, name, std::process::id());
        run(&["netns", "add", &ns])?;
        self.hosts.push(ns);
        run(&[
            "-n",
            self.ns(self.hosts.len() - 1),
            "link",
            "set",
            "lo",
            "up",
        ])?;
        Ok(self.hosts.len() - 1)
    }

    /// The namespace name of host `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Joins host `a` (interface `ifa`) and host `b` (interface `ifb`) with a veth pair,
    /// both ends up, with an MTU.
    pub fn veth(
        &self,
        a: usize,
        ifa: &str,
        b: usize,
        ifb: &str,
        mtu: usize,
    ) -> Result<(), RigError> {
        let mtu = mtu.to_string();
        run(&[
            "-n",
            self.ns(a),
            "link",
            "add",
            ifa,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            ifb,
            "mtu",
            &mtu,
            "netns",
            self.ns(b),
        ])?;
        run(&["-n", self.ns(a), "link", "set", ifa, "up"])?;
        run(&["-n", self.ns(b), "link", "set", ifb, "up"])
    }

    /// A Linux bridge `name` in host `i` with `ports` (interfaces of that host)
    /// enslaved. The bridge would hand 802.1Q tags to its ports as metadata, which an
    /// AF_XDP port beyond them never sees; the ports' VLAN offloads are switched off
    /// so that the tag stays in the frame, as on a physical wire.
    pub fn bridge(&self, i: usize, name: &str, ports: &[&str]) -> Result<(), RigError> {
        run(&["-n", self.ns(i), "link", "add", name, "type", "bridge"])?;
        for p in ports {
            run(&["-n", self.ns(i), "link", "set", p, "master", name])?;
            let port = p.to_string();
            self.within(i, move || set_vlan_offload(&port, Some(false), Some(false)))
                .map_err(|e| RigError::Command {
                    cmd: format!("switching VLAN offloads off on {p}"),
                    stderr: e.to_string(),
                })?;
        }
        run(&["-n", self.ns(i), "link", "set", name, "up"])
    }

    /// A command that runs `program` inside host `i`.
    pub fn command(&self, i: usize, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(i)]).arg(program.as_ref());
        c
    }

    /// Runs `f` on a thread that has entered host `i`'s namespace: sockets it opens
    /// belong to that namespace and keep working from any thread afterwards.
    pub fn within<T: Send + 'static>(&self, i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.ns(i));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace handle");
            // SAFETY: setns on a namespace fd changes only this thread's namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns into {path} failed");
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = run(&["netns", "del", ns]);
        }
    }
}
