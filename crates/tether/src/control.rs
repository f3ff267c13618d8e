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
//!
//! The metrics endpoint (`[bridge] metrics = "ADDR:PORT"`) is served the same way on
//! TCP: `GET /metrics` gives the `stats` document's numbers in Prometheus's text
//! format (`crate::metrics`), one request per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Longest command line accepted.
const MAX_LINE: usize = 256;
/// Longest HTTP request (request line and headers) accepted.
const MAX_HTTP_REQUEST: usize = 8192;
/// Clients served at once, per listener; more wait in the listen queue.
const MAX_CLIENTS: usize = 8;
/// A client has this long from its connection to send its command and take the
/// answer, or it is dropped.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(1);

/// One connected client: what it sent so far, or the answer still to be written.
struct Client<S> {
    stream: S,
    since: Instant,
    request: Vec<u8>,
    /// The answer and how much of it is written.
    out: Option<(Vec<u8>, usize)>,
}

/// Counters of a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub answered: u64,
    /// Clients dropped: too slow, too long a request, or an I/O error.
    pub dropped: u64,
}

/// A listening socket whose clients are served without waiting.
trait Listen {
    type Stream: Read + Write;
    /// A new client, non-blocking; `None` when none waits.
    fn next_client(&self) -> Option<std::io::Result<Self::Stream>>;
}

impl Listen for UnixListener {
    type Stream = UnixStream;
    fn next_client(&self) -> Option<std::io::Result<UnixStream>> {
        let (s, _) = self.accept().ok()?;
        Some(s.set_nonblocking(true).map(|()| s))
    }
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    fn next_client(&self) -> Option<std::io::Result<TcpStream>> {
        let (s, _) = self.accept().ok()?;
        Some(s.set_nonblocking(true).map(|()| s))
    }
}

/// How a request ends and how long it may be.
struct Protocol {
    max_request: usize,
    /// Whether `request` holds a whole request.
    complete: fn(&[u8]) -> bool,
}

/// The clients of one listener, each moved on as far as it can go without waiting.
struct Clients<L: Listen> {
    listener: L,
    clients: Vec<Client<L::Stream>>,
    stats: ControlStats,
    protocol: Protocol,
}

impl<L: Listen> Clients<L> {
    fn new(listener: L, protocol: Protocol) -> Self {
        Clients {
            listener,
            clients: Vec::new(),
            stats: ControlStats::default(),
            protocol,
        }
    }

    /// Takes new clients, reads what they sent, answers whole requests
    /// (`answer(request)` gives the bytes to send back) and writes what fits; drops
    /// the ones past [`CLIENT_DEADLINE`]. Errors of one client never reach the caller.
    fn serve(&mut self, mut answer: impl FnMut(&[u8]) -> Vec<u8>) {
        let now = Instant::now();
        while self.clients.len() < MAX_CLIENTS {
            match self.listener.next_client() {
                None => break,
                Some(Err(_)) => self.stats.dropped += 1,
                Some(Ok(stream)) => self.clients.push(Client {
                    stream,
                    since: now,
                    request: Vec::new(),
                    out: None,
                }),
            }
        }
        let mut i = 0;
        while i < self.clients.len() {
            match step(&mut self.clients[i], &self.protocol, &mut answer) {
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

/// What a bridge answers on besides the fabric, as its settings name them: the
/// control socket and the metrics endpoint, served from the bridge's own loop every
/// [`SERVE_EVERY`] at most.
pub struct Endpoints {
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
    served: Option<Instant>,
}

/// How often a bridge's loop looks at its control and metrics clients.
pub const SERVE_EVERY: Duration = Duration::from_millis(10);

impl Endpoints {
    pub fn new(control: Option<ControlServer>, metrics: Option<MetricsServer>) -> Self {
        Endpoints {
            control,
            metrics,
            served: None,
        }
    }

    /// Serves the clients if [`SERVE_EVERY`] has passed: `answer(command)` gives the
    /// JSON of a control command (`stats`, `tree`); a scrape takes `stats`'s.
    pub fn serve(&mut self, mut answer: impl FnMut(&str) -> serde_json::Value) {
        if self.control.is_none() && self.metrics.is_none() {
            return;
        }
        let now = Instant::now();
        if self
            .served
            .is_some_and(|t| now.duration_since(t) < SERVE_EVERY)
        {
            return;
        }
        self.served = Some(now);
        if let Some(c) = &mut self.control {
            c.serve(&mut answer);
        }
        if let Some(m) = &mut self.metrics {
            m.serve(|| crate::metrics::exposition(&answer("stats")));
        }
    }
}

/// A bridge's control socket: one command line in, one JSON document out.
pub struct ControlServer {
    clients: Clients<UnixListener>,
    path: PathBuf,
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
        let line = Protocol {
            max_request: MAX_LINE,
            complete: |r| r.contains(&b'\n'),
        };
        Ok(ControlServer {
            clients: Clients::new(listener, line),
            path: path.into(),
        })
    }

    #[cfg(test)]
    pub fn stats(&self) -> ControlStats {
        self.clients.stats
    }

    /// Moves every client on as far as it can go now, without waiting:
    /// `answer(command)` gives the JSON for a command that has arrived. Errors of one
    /// client never reach the bridge.
    pub fn serve(&mut self, mut answer: impl FnMut(&str) -> serde_json::Value) {
        self.clients.serve(|request| {
            let end = request
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(request.len());
            let command = String::from_utf8_lossy(&request[..end]).trim().to_string();
            let reply = match command.as_str() {
                "ping" => serde_json::json!({ "pong": true }),
                cmd @ ("stats" | "tree") => answer(cmd),
                other => serde_json::json!({
                    "error": format!("unknown command {other:?}; commands: stats, tree, ping")
                }),
            };
            let mut text = reply.to_string().into_bytes();
            text.push(b'\n');
            text
        });
    }
}

/// A bridge's metrics endpoint: HTTP on TCP, `GET /metrics` answered with the
/// counters in Prometheus's text format, one request per connection.
pub struct MetricsServer {
    clients: Clients<TcpListener>,
    addr: std::net::SocketAddr,
}

impl MetricsServer {
    pub fn bind(addr: std::net::SocketAddr) -> Result<MetricsServer> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("metrics: listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let http = Protocol {
            max_request: MAX_HTTP_REQUEST,
            complete: |r| {
                r.windows(4).any(|w| w == b"\r\n\r\n") || r.windows(2).any(|w| w == b"\n\n")
            },
        };
        Ok(MetricsServer {
            clients: Clients::new(listener, http),
            addr,
        })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    #[cfg(test)]
    pub fn stats(&self) -> ControlStats {
        self.clients.stats
    }

    /// Moves every client on as far as it can go now, without waiting; `metrics()`
    /// gives the exposition text, asked for only when a scrape has arrived.
    pub fn serve(&mut self, mut metrics: impl FnMut() -> String) {
        self.clients
            .serve(|request| http_answer(request, &mut metrics));
    }
}

/// The answer to an HTTP request: `GET /metrics` (or `HEAD`), a pointer to it at
/// `/`, 404 elsewhere, 405 for other methods, 400 for what is not HTTP.
fn http_answer(request: &[u8], metrics: &mut impl FnMut() -> String) -> Vec<u8> {
    let first = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let mut words = first.split_whitespace();
    let (method, target, version) = (words.next(), words.next(), words.next());
    let reply = |status: &str, kind: &str, body: String, head: bool, extra: &str| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
        out
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return reply(
            "400 Bad Request",
            TEXT,
            "not an HTTP request\n".into(),
            false,
            "",
        );
    };
    if !version.starts_with("HTTP/1.") {
        return reply("400 Bad Request", TEXT, "HTTP/1.x only\n".into(), false, "");
    }
    let head = method == "HEAD";
    if method != "GET" && !head {
        let body = "GET /metrics\n".to_string();
        return reply(
            "405 Method Not Allowed",
            TEXT,
            body,
            false,
            "Allow: GET, HEAD\r\n",
        );
    }
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => reply(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(),
            head,
            "",
        ),
        "/" => reply(
            "200 OK",
            TEXT,
            "tether bridge: the counters are at /metrics\n".into(),
            head,
            "",
        ),
        _ => reply("404 Not Found", TEXT, "GET /metrics\n".into(), head, ""),
    }
}

enum Step {
    /// It has more to send or to take.
    Waiting,
    /// Answered in full.
    Done,
    Failed,
}

/// Reads what the client sent, answers a whole request, writes what fits.
fn step<S: Read + Write>(
    c: &mut Client<S>,
    protocol: &Protocol,
    answer: &mut impl FnMut(&[u8]) -> Vec<u8>,
) -> Step {
    if c.out.is_none() {
        let mut buf = [0u8; 512];
        loop {
            match c.stream.read(&mut buf) {
                // Closed before a whole request: take what came as the request.
                Ok(0) if c.request.is_empty() => return Step::Failed,
                Ok(0) => break,
                Ok(n) => {
                    c.request.extend_from_slice(&buf[..n]);
                    if (protocol.complete)(&c.request) {
                        break;
                    }
                    if c.request.len() > protocol.max_request {
                        return Step::Failed;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed,
            }
        }
        c.out = Some((answer(&c.request), 0));
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
        assert!(server.clients.clients.is_empty());
        drop(silent);
        drop(deaf);
    }

    /// HTTP on the metrics endpoint: a scrape gets the text with Prometheus's content
    /// type (the text made only then), HEAD no body, other paths and methods their
    /// status; a request longer than 8 KiB without an end is dropped, and a client
    /// that sends its request in pieces between two calls is answered.
    #[test]
    fn metrics_endpoint_speaks_http() {
        use std::net::TcpStream;
        let mut server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let ask = |server: &mut MetricsServer, made: &mut u32, request: &[u8]| -> String {
            let mut c = TcpStream::connect(addr).unwrap();
            let (first, rest) = request.split_at(request.len() / 2);
            c.write_all(first).unwrap();
            server.serve(|| unreachable!("half a request"));
            c.write_all(rest).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let t = std::thread::spawn(move || {
                let mut answer = String::new();
                let _ = c.read_to_string(&mut answer);
                answer
            });
            while !t.is_finished() {
                server.serve(|| {
                    *made += 1;
                    "tether_x_total 3\n".into()
                });
                std::thread::sleep(Duration::from_millis(1));
            }
            t.join().unwrap()
        };
        let mut made = 0;
        let ok = ask(
            &mut server,
            &mut made,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 17\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ntether_x_total 3\n"), "{ok}");
        assert_eq!(made, 1);
        let head = ask(
            &mut server,
            &mut made,
            b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n",
        );
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let nf = ask(&mut server, &mut made, b"GET /stats HTTP/1.1\r\n\r\n");
        assert!(nf.starts_with("HTTP/1.1 404 Not Found"), "{nf}");
        let post = ask(&mut server, &mut made, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed")
                && post.contains("Allow: GET, HEAD"),
            "{post}"
        );
        let junk = ask(&mut server, &mut made, b"\x16\x03\x01 hello\n\n");
        assert!(junk.starts_with("HTTP/1.1 400 Bad Request"), "{junk}");
        assert_eq!(made, 2, "only the two scrapes made the text");
        assert_eq!(server.stats().answered, 5);
        // Endless headers: dropped once past the bound, answered nothing.
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let mut sent = 0;
        while server.stats().dropped == 0 && sent < 4 * MAX_HTTP_REQUEST {
            if c.write_all(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
                .is_err()
            {
                break;
            }
            sent += 52;
            server.serve(|| unreachable!("never complete"));
        }
        assert_eq!(server.stats().dropped, 1);
        assert!(sent <= MAX_HTTP_REQUEST + 1024, "{sent}");
    }
}
