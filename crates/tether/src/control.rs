//! The control socket of a running bridge, in the manner of DPDK's telemetry socket:
//! a Unix stream socket where a client writes one command line and reads one JSON
//! document back. Commands: `stats` (every counter of the bridge), `tree` (a host
//! bridge's switch and devices, as `lspci -tv` would draw them), `ping`.
//!
//! The bridge polls it from its own loop (non-blocking accept), so answering never
//! needs a lock on the bridge's state.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Longest command line accepted.
const MAX_LINE: u64 = 256;

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Listens at `path`. A socket left behind by a bridge that died is replaced; one
    /// that a running bridge answers on is not.
    pub fn bind(path: &Path) -> Result<ControlServer> {
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
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            path: path.into(),
        })
    }

    /// Answers the clients waiting now: `answer(command)` gives the JSON to send.
    /// A client that sends nothing within 100 ms is dropped; errors of one client
    /// never reach the bridge.
    pub fn serve(&self, mut answer: impl FnMut(&str) -> serde_json::Value) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = Self::one(stream, &mut answer);
        }
    }

    fn one(
        stream: UnixStream,
        answer: &mut impl FnMut(&str) -> serde_json::Value,
    ) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        stream.set_write_timeout(Some(Duration::from_millis(500)))?;
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
        let reply = match line.trim() {
            "ping" => serde_json::json!({ "pong": true }),
            cmd @ ("stats" | "tree") => answer(cmd),
            other => {
                serde_json::json!({ "error": format!("unknown command {other:?}; commands: stats, tree, ping") })
            }
        };
        let mut s = &stream;
        s.write_all(reply.to_string().as_bytes())?;
        s.write_all(b"\n")
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

    #[test]
    fn answers_commands_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bridge.sock");
        let server = ControlServer::bind(&path).unwrap();
        // A second bridge on the same path is refused.
        assert!(ControlServer::bind(&path).is_err());
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
        drop(server);
        assert!(!path.exists());
        // A stale socket file (its bridge died) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _again = ControlServer::bind(&path).unwrap();
        assert!(request(&dir.path().join("none.sock"), "stats").is_err());
    }
}
