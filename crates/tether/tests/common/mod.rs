//! Helpers shared by the tether integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::netns::Rig;

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

/// Runs a command that must fail; returns what it said on standard error (the whole
/// output is in the panic message when it succeeds instead).
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded: {}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a loud skip notice (the test then returns without asserting).
pub fn skip(test: &str, why: &str) {
    // Straight to the process's stderr: the test harness captures eprintln!
    // of passing tests, and a skip must be seen (and counted by scripts/test.sh).
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED {test}: {why} ***\n\n").as_bytes(),
    );
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

/// A running bridge process and the lines it printed.
pub struct Proc {
    pub child: Child,
    name: &'static str,
    /// Each line with the moment it was read.
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Proc {
    pub fn spawn(rig: &Rig, ns: usize, name: &'static str, args: &[&str]) -> Proc {
        Proc::spawn_program(rig, ns, name, env!("CARGO_BIN_EXE_tether"), args)
    }

    /// `program` with `args` in host `ns` (a wrapper such as setpriv around tether).
    pub fn spawn_program(
        rig: &Rig,
        ns: usize,
        name: &'static str,
        program: &str,
        args: &[&str],
    ) -> Proc {
        let mut child = rig
            .command(ns, program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        Proc { child, name, log }
    }

    pub fn count(&self, pattern: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(pattern))
            .count()
    }

    pub fn text(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `pattern` has been printed `n` times.
    pub fn wait_for(&mut self, pattern: &str, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.count(pattern) < n {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers finish
                panic!(
                    "{} exited ({status}) before printing {pattern:?} x{n}:\n{}",
                    self.name,
                    self.text()
                );
            }
            assert!(
                Instant::now() < end,
                "{} did not print {pattern:?} x{n} within {timeout:?}:\n{}",
                self.name,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status must be success and the closing line printed.
    pub fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name,
            self.text()
        );
        self.wait_for("stopped", 1, Duration::from_secs(2));
        self.text()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// When the first line containing `pattern` was read.
    pub fn seen_at(&self, pattern: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(_, l)| l.contains(pattern))
            .map(|(t, _)| *t)
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The allow-list: the only hardware a test may find missing and skip for, as root or
/// not. Everything else a test needs is installed by scripts/deps (see [`dep`]), and
/// as root its absence is a failure.
#[derive(Clone, Copy, Debug)]
pub enum Hardware {
    /// A KVM that can run the guest the test boots: /dev/kvm missing or unusable, or
    /// (for a Linux guest) backed by PVM, which runs firmware but not a Linux kernel.
    Kvm,
}

/// Skips a test for a hardware absence on the allow-list, loudly.
pub fn skip_for_hardware(test: &str, absent: Hardware, why: &str) {
    skip(test, &format!("hardware absent ({absent:?}): {why}"));
}

/// A prerequisite the project installs is missing: as root that is a failure (the
/// project's own scripts could have installed it), without root a loud skip.
pub fn missing(test: &str, why: &str) {
    if is_root() {
        panic!("{test}: a prerequisite is missing (as root a failure, not a skip):\n{why}");
    }
    skip(test, why);
}

/// Runs scripts/deps/NAME for TEST: its standard output, or `None` when it failed
/// without root (the test is skipped, loudly). As root a failure panics with the
/// installer's message and the last lines of its log.
pub fn dep(test: &str, name: &str) -> Option<String> {
    match dep_script(name) {
        Ok(out) => Some(out),
        Err(why) => {
            missing(test, &format!("scripts/deps/{name} failed: {why}"));
            None
        }
    }
}

/// Runs scripts/deps/NAME (which installs what a test needs); its standard output, or
/// the reason it failed (its standard error, which ends with its log's last lines).
pub fn dep_script(name: &str) -> Result<String, String> {
    let script = repo_root().join("scripts/deps").join(name);
    let out = Command::new(&script)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The number before `what` in a "..., N what, ..." counter line.
pub fn counter(line: &str, what: &str) -> u64 {
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    line[..at]
        .trim_end()
        .rsplit([' ', ',', '('])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line:?}"))
}

/// Builds a static guest program from tests/vm/NAME.c into `dir`.
pub fn guest_tool(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/vm/{name}.c"));
    let out = dir.join(name);
    let r = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !r.status.success() {
        return Err(String::from_utf8_lossy(&r.stderr).into_owned());
    }
    Ok(out)
}

impl Proc {
    /// When the `n`-th line (1-based) containing `pattern` was read.
    pub fn nth_seen_at(&self, pattern: &str, n: usize) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, l)| l.contains(pattern))
            .nth(n.checked_sub(1)?)
            .map(|(t, _)| *t)
    }

    /// The `n`-th line (1-based) containing `pattern`.
    pub fn nth_line(&self, pattern: &str, n: usize) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, l)| l.contains(pattern))
            .nth(n.checked_sub(1)?)
            .map(|(_, l)| l.clone())
    }

    /// The process's resident set (VmRSS in /proc/PID/status), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kb * 1024
}

/// Sends `command` (`stats`, `ping`) to the bridges' control sockets at `paths` at
/// once, then reads their JSON answers in order: a bridge answers between two rounds
/// of its loop, so asking all first costs one wait, not one per bridge. `Err` names
/// the socket that did not answer with JSON.
pub fn control_requests(
    paths: &[PathBuf],
    command: &str,
) -> Result<Vec<serde_json::Value>, String> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let mut streams = Vec::with_capacity(paths.len());
    for p in paths {
        let mut s = UnixStream::connect(p).map_err(|e| format!("{}: {e}", p.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        streams.push(s);
    }
    paths
        .iter()
        .zip(streams)
        .map(|(p, mut s)| {
            let mut text = String::new();
            s.read_to_string(&mut text)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}: {text:?}", p.display()))
        })
        .collect()
}

/// Holds the machine's VM-test lock until dropped: tests that boot TCG guests take it
/// first, so that no two of them (from this or another test binary) share the two
/// cores at once. Guests under load stall for whole seconds, which then looks like a
/// slow link to the devices they use.
pub fn vm_lock() -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/tether-vm-tests.lock")
        .expect("the VM-test lock file");
    // SAFETY: flock on a descriptor this function owns; it blocks until granted.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
    f
}

/// The value after `key` on the first line of `text` (a guest's output) that has it,
/// trimmed.
pub fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {key:?} in the guest's output:\n{text}"))
}

/// The QEMU 11.1 root (the QEMU with `vfio-user-pci`, installed by its script) for a
/// vfio-user test, and the VM-test lock, held while the test runs (see `vm_lock`);
/// `None` when the test cannot run (not root, no such QEMU): skipped, loudly.
pub fn vfio_user_qemu(test: &str) -> Option<(PathBuf, std::fs::File)> {
    if !is_root() {
        skip(test, "needs root (network namespaces, chroot)");
        return None;
    }
    let root = dep(test, "qemu-vfio-user.sh")
        .map(|r| PathBuf::from(r.lines().last().unwrap_or_default()))?;
    Some((root, vm_lock()))
}

/// The guest's kernel and an initramfs of its own (in `d`) that runs `script` with
/// the guest `tools` built from tests/vm (failing to build one is never a skip) and
/// loads the kernel `modules` (and what they depend on) before it; none means
/// scripts/vm/initramfs.sh's default, virtio_pci and virtio_blk. `None` when the
/// guest image is missing (skipped, loudly, as `dep` says).
pub fn guest_image(
    test: &str,
    d: &Path,
    script: &str,
    tools: &[&str],
    modules: &[&str],
) -> Option<(String, String)> {
    let kver = dep(test, "guest-linux.sh")?
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let built: Vec<String> = tools
        .iter()
        .map(|t| match guest_tool(d, t) {
            Ok(p) => p.display().to_string(),
            Err(e) => panic!("{test}: cannot build guest tool {t}: {e}"),
        })
        .collect();
    let script = write(d, "guest.sh", script);
    let initrd = d.join("initrd.cpio.gz");
    run_ok(
        Command::new(repo_root().join("scripts/vm/initramfs.sh"))
            .env("TETHER_GUEST_TOOLS", built.join(" "))
            .arg(&initrd)
            .arg(&script)
            .args(modules),
    );
    let vm_dir = std::env::var("TETHER_VM_DIR").unwrap_or("/var/tmp/tether-vm".into());
    Some((
        format!("{vm_dir}/guest/boot/vmlinuz-{kver}"),
        initrd.display().to_string(),
    ))
}

/// Waits (up to `timeout`) for `pattern` from `p`; past it, prints the counters the
/// bridges' control sockets `socks` give, then fails with the process's output.
pub fn wait_or_dump(p: &mut Proc, pattern: &str, n: usize, timeout: Duration, socks: &[PathBuf]) {
    let end = std::time::Instant::now() + timeout;
    while p.count(pattern) < n && std::time::Instant::now() < end {
        if let Ok(Some(_)) = p.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if p.count(pattern) >= n {
        return;
    }
    for sock in socks {
        let out = tether()
            .args(["ctl", "stats", "-s"])
            .arg(sock)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let nonzero: Vec<&str> = text.lines().filter(|l| !l.ends_with(": 0")).collect();
        eprintln!("counters of {}:\n{}", sock.display(), nonzero.join("\n"));
    }
    panic!(
        "{pattern:?} x{n} not printed within {timeout:?}:\n{}",
        p.text()
    );
}

/// A segment: a namespace `sw` with a Linux bridge `br0`, and a namespace for each of
/// `names`, joined to it by a veth pair (`{tag}{name}` inside, `sw{name}` on the
/// bridge, MTU 1500). Returns the namespaces of `names`, in order.
pub fn star(rig: &mut Rig, tag: &str, names: &[&str]) -> Vec<usize> {
    let sw = rig.host("sw").unwrap();
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for n in names {
        let h = rig.host(n).unwrap();
        let outer = format!("sw{n}");
        rig.veth(h, &format!("{tag}{n}"), sw, &outer, 1500).unwrap();
        hosts.push(h);
        ports.push(outer);
    }
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    rig.bridge(sw, "br0", &ports).unwrap();
    hosts
}
