//! The control socket of a running bridge, in the manner of DPDK's telemetry socket:
//! a Unix stream socket where a client writes one command line and reads one JSON
//! document back. Commands: `stats` (every counter of the bridge), `tree` (a host
//! bridge's switch and devices, as `lspci -tv` would draw them), `ping`.
//!
//! The bridge polls it from its own loop and never waits on a client: accepting,
//! reading the command and writing the answer are all non-blocking, a client's
//! progress is kept between calls, and one that is slow is dropped after
//! [`CLIENT_DEADLINE`]. So answering never needs a lock on the bridge's state, and a
//! client that connects and says nothing costs the loop nothing. The socket is made
//! with mode 0600 (0660 with `[bridge] control_group`).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Longest command line accepted.
const MAX_LINE: usize = 256;
/// Clients served at once; more wait in the listen queue.
const MAX_CLIENTS: usize = 8;
/// A client has this long from its connection to send its command and take the
/// answer, or it is dropped.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(1);

/// One connected client: what it sent so far, or the answer still to be written.
struct Client {
    stream: UnixStream,
    since: Instant,
    line: Vec<u8>,
    /// The answer and how much of it is written.
    out: Option<(Vec<u8>, usize)>,
}

/// Counters of the control socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub answered: u64,
    /// Clients dropped: too slow, too long a line, or an I/O error.
    pub dropped: u64,
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    stats: ControlStats,
}

impl ControlServer {
    /// Listens at `path`, mode 0600, or owned by group `gid` with mode 0660. A socket
    /// left behind by a bridge that died is replaced; one that a running bridge
    /// answers on is not.
    pub fn bind_for(path: &Path, gid: Option<u32>) -> Result<ControlServer> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!("{}: another bridge is listening there", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        // Until this, the umask's mode applied; connecting needs write permission,
        // which the usual umask (022) gives nobody but the owner anyway.
        let mode = if let Some(g) = gid {
            std::os::unix::fs::chown(path, None, Some(g))
                .with_context(|| format!("giving {} to group {g}", path.display()))?;
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            path: path.into(),
            clients: Vec::new(),
            stats: ControlStats::default(),
        })
    }

    #[cfg(test)]
    pub fn stats(&self) -> ControlStats {
        self.stats
    }

    /// Moves every client on as far as it can go now, without waiting:
    /// `answer(command)` gives the JSON for a command that has arrived. Errors of one
    /// client never reach the bridge.
    pub fn serve(&mut self, mut answer: impl FnMut(&str) -> serde_json::Value) {
        let now = Instant::now();
        while self.clients.len() < MAX_CLIENTS {
            let Ok((stream, _)) = self.listener.accept() else {
                break;
            };
            if stream.set_nonblocking(true).is_err() {
                self.stats.dropped += 1;
                continue;
            }
            self.clients.push(Client {
                stream,
                since: now,
                line: Vec::new(),
                out: None,
            });
        }
        let mut i = 0;
        while i < self.clients.len() {
            match step(&mut self.clients[i], &mut answer) {
                Step::Waiting if now.duration_since(self.clients[i].since) < CLIENT_DEADLINE => {
                    i += 1;
                    continue;
                }
                Step::Done => self.stats.answered += 1,
                Step::Waiting | Step::Failed => self.stats.dropped += 1,
            }
            self.clients.swap_remove(i);
        }
    }
}

enum Step {
    /// It has more to send or to take.
    Waiting,
    /// Answered in full.
    Done,
    Failed,
}

/// Reads what the client sent, answers a whole line, writes what fits.
fn step(c: &mut Client, answer: &mut impl FnMut(&str) -> serde_json::Value) -> Step {
    if c.out.is_none() {
        let mut buf = [0u8; 64];
        loop {
            match c.stream.read(&mut buf) {
                // Closed before a whole line: take what came as the line.
                Ok(0) if c.line.is_empty() => return Step::Failed,
                Ok(0) => break,
                Ok(n) => {
                    c.line.extend_from_slice(&buf[..n]);
                    if c.line.contains(&b'\n') {
                        break;
                    }
                    if c.line.len() > MAX_LINE {
                        return Step::Failed;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed,
            }
        }
        let end = c
            .line
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(c.line.len());
        let command = String::from_utf8_lossy(&c.line[..end]).trim().to_string();
        let reply = match command.as_str() {
            "ping" => serde_json::json!({ "pong": true }),
            cmd @ ("stats" | "tree") => answer(cmd),
            other => serde_json::json!({
                "error": format!("unknown command {other:?}; commands: stats, tree, ping")
            }),
        };
        let mut text = reply.to_string().into_bytes();
        text.push(b'\n');
        c.out = Some((text, 0));
    }
    let Some((text, done)) = &mut c.out else {
        return Step::Failed;
    };
    while *done < text.len() {
        match c.stream.write(&text[*done..]) {
            Ok(0) => return Step::Failed,
            Ok(n) => *done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Failed,
        }
    }
    Step::Done
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The id of the group named `name` (`[bridge] control_group`).
pub fn group_id(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).with_context(|| format!("group name {name:?}"))?;
    // SAFETY: `libc::group` is plain data (integers and pointers), for which all
    // zeroes is a valid value; getgrnam_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `c` is a NUL-terminated string; `grp`, `buf` (with its true length) and
    // `found` are valid for the call, and `grp`'s pointers into `buf` are not used
    // after it (only `gr_gid`, a plain number, is read).
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        bail!(
            "looking up group {name:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if found.is_null() {
        bail!("no group named {name:?}");
    }
    Ok(grp.gr_gid)
}

/// Sends `command` to the bridge at `path`; returns its JSON answer.
pub fn request(path: &Path, command: &str) -> Result<serde_json::Value> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("connecting to {} (is the bridge running?)", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON: {text:?}", path.display()))?;
    if let Some(e) = v.get("error") {
        bail!("{}: {}", path.display(), e);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn answers_commands_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bridge.sock");
        let mut server = ControlServer::bind_for(&path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A second bridge on the same path is refused.
        assert!(ControlServer::bind_for(&path, None).is_err());
        let client = {
            let path = path.clone();
            std::thread::spawn(move || {
                let stats = request(&path, "stats").unwrap();
                let pong = request(&path, "ping").unwrap();
                let bad = request(&path, "reboot").unwrap_err().to_string();
                (stats, pong, bad)
            })
        };
        while !client.is_finished() {
            server.serve(|cmd| serde_json::json!({ "command": cmd, "frames": 7 }));
            std::thread::sleep(Duration::from_millis(1));
        }
        let (stats, pong, bad) = client.join().unwrap();
        assert_eq!(stats["frames"], 7);
        assert_eq!(stats["command"], "stats");
        assert_eq!(pong["pong"], true);
        assert!(bad.contains("unknown command \\\"reboot\\\""), "{bad}");
        assert_eq!(server.stats().answered, 3);
        drop(server);
        assert!(!path.exists());
        // A stale socket file (its bridge died) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _again = ControlServer::bind_for(&path, None).unwrap();
        assert!(request(&dir.path().join("none.sock"), "stats").is_err());
    }

    #[test]
    fn a_control_group_gets_the_socket_with_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let root = group_id("root").unwrap();
        assert_eq!(root, 0);
        let _s = ControlServer::bind_for(&path, Some(root)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.gid(), root);
        assert!(group_id("no-such-group-here").is_err());
    }

    #[test]
    fn silent_slow_and_deaf_clients_never_hold_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sock");
        let mut server = ControlServer::bind_for(&path, None).unwrap();
        // Silent: connects and says nothing. Slow: the command a byte at a time, each
        // between two calls of serve() on this one thread (a serve() that waited
        // for the rest of the line would wait for ever, or drop it at a timeout).
        // Deaf: asks for an answer larger than the socket buffer and never reads
        // it (a blocking write would never return).
        let silent = UnixStream::connect(&path).unwrap();
        let mut slow = UnixStream::connect(&path).unwrap();
        let mut deaf = UnixStream::connect(&path).unwrap();
        deaf.write_all(b"stats\n").unwrap();
        let big = serde_json::json!({ "blob": "x".repeat(1 << 20) });
        let started = Instant::now();
        for b in b"ping\n" {
            slow.write_all(&[*b]).unwrap();
            server.serve(|_| big.clone());
        }
        // The slow client got its answer.
        slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answer = String::new();
        slow.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("\"pong\":true"), "{answer}");
        // Past the deadline the other two are dropped.
        while started.elapsed() < CLIENT_DEADLINE + Duration::from_millis(100) {
            server.serve(|_| big.clone());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.stats().answered, 1);
        assert_eq!(server.stats().dropped, 2);
        assert!(server.clients.is_empty());
        drop(silent);
        drop(deaf);
    }
}
