//! A client of QEMU's machine protocol (QMP) on a Unix stream socket: the greeting
//! (with QEMU's version), `qmp_capabilities`, commands with ids whose replies are
//! matched by id while events arrive in between, and the events themselves
//! (`DEVICE_DELETED` above all, when a hot-plugged device has left the guest).
//!
//! QEMU is treated as hostile, like every peer: [`Session`] is the protocol without
//! I/O (bytes in, commands out), which a fuzz target drives with arbitrary bytes. One
//! message is at most [`MAX_MESSAGE`] bytes (a longer one is an error and ends the
//! connection, so the buffer never grows past it); events wait in a queue of at most
//! [`MAX_EVENTS`] events and [`MAX_EVENT_BYTES`] bytes (the oldest go first,
//! counted); at most [`MAX_PENDING`] commands wait for their replies; replies to
//! nothing we asked and messages of no known kind are counted and dropped. [`Qmp`] is
//! the blocking shell around it: every read and write has a deadline.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The JSON library of [`Value`]s that commands take and replies return.
pub use serde_json;
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::qemu::QemuVersion;

/// The longest message accepted, in bytes, without its line end. The longest reply
/// tether asks for is `query-pci`: about 530 bytes per root port, 123 482 bytes for
/// the 232 root ports of [`MAX_ROOT_PORTS`](crate::qemu::MAX_ROOT_PORTS) with nothing
/// behind them (measured on QEMU 11.1.3), so this leaves room for a device behind
/// each.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// The most events kept until they are taken.
pub const MAX_EVENTS: usize = 256;
/// The most bytes of events (as received) kept until they are taken.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// The most commands waiting for their replies at once, replies not taken yet
/// included.
pub const MAX_PENDING: usize = 32;

/// The id a command is sent with; its reply carries it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommandId(pub u64);

/// What went wrong.
#[derive(Debug, Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] io::Error),
    #[error("QMP: no answer in time (waiting for {0})")]
    Timeout(String),
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: a message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("QMP: malformed message: {0}")]
    Malformed(String),
    #[error("QMP: the first message is not QEMU's greeting: {0}")]
    NoGreeting(String),
    /// QEMU's error reply to a command.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// A reply of the right id whose contents are not what the command returns.
    #[error("QMP {command}: unexpected reply: {why}")]
    BadReply { command: String, why: String },
    #[error("QMP: {MAX_PENDING} commands are already waiting for replies")]
    TooManyPending,
    #[error("QMP: {0}")]
    Argument(String),
    /// The guest refused to release a device (`DEVICE_UNPLUG_GUEST_ERROR`).
    #[error("QMP: the guest refused to release {0}")]
    UnplugRefused(String),
    #[error("QMP: the connection is broken by an earlier error")]
    Broken,
}

/// QEMU's greeting, the first message on a QMP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub version: QemuVersion,
    /// The distribution's package version, e.g. "Debian 1:11.1.3+ds-2~bpo13+1".
    pub package: String,
    pub capabilities: Vec<String>,
}

/// An event, e.g. `DEVICE_DELETED` with `{"device": "tether-p3g1", "path": ...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    /// `data`, or null.
    pub data: Value,
    /// QEMU's timestamp (seconds, microseconds) when it is well formed.
    pub timestamp: Option<(u64, u64)>,
}

impl Event {
    /// The device id the event is about (`data.device`), if any.
    pub fn device(&self) -> Option<&str> {
        self.data.get("device").and_then(Value::as_str)
    }
}

/// A command's reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Return(Value),
    Error { class: String, desc: String },
}

impl Reply {
    fn into_result(self, command: &str) -> Result<Value, QmpError> {
        match self {
            Reply::Return(v) => Ok(v),
            Reply::Error { class, desc } => Err(QmpError::Command {
                command: command.into(),
                class,
                desc,
            }),
        }
    }
}

/// Counters of a QMP connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QmpStats {
    /// Messages received (the greeting, replies, events, the ignored).
    pub messages: u64,
    pub events: u64,
    /// Events dropped, oldest first, because the queue was full.
    pub events_dropped: u64,
    pub replies: u64,
    /// Replies that were QEMU's errors.
    pub error_replies: u64,
    /// Replies whose id is not that of a waiting command (dropped).
    pub unmatched_replies: u64,
    /// Well-formed messages of no known kind, or events without a name (dropped).
    pub ignored: u64,
}

/// The protocol without I/O: bytes from QEMU go in with [`receive`](Self::receive),
/// commands come out of [`command`](Self::command) as bytes to send, replies and
/// events wait to be taken. After an error from `receive`, the session is broken:
/// every later call fails with [`QmpError::Broken`].
#[derive(Debug, Default)]
pub struct Session {
    /// The start of a message whose line end has not arrived (≤ MAX_MESSAGE bytes).
    partial: Vec<u8>,
    greeting: Option<Greeting>,
    broken: bool,
    last_id: u64,
    /// Waiting commands: id → command name.
    pending: HashMap<CommandId, String>,
    replies: HashMap<CommandId, Reply>,
    /// Events with the size of their message.
    events: VecDeque<(Event, usize)>,
    event_bytes: usize,
    stats: QmpStats,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn stats(&self) -> QmpStats {
        self.stats
    }

    /// Bytes of an unfinished message held.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Events queued, and their size in bytes.
    pub fn queued_events(&self) -> (usize, usize) {
        (self.events.len(), self.event_bytes)
    }

    /// Commands waiting for their replies, and replies not taken yet.
    pub fn waiting(&self) -> (usize, usize) {
        (self.pending.len(), self.replies.len())
    }

    /// Marks the session broken (the connection ended or failed).
    pub fn break_off(&mut self) {
        self.broken = true;
        self.partial = Vec::new();
        self.pending.clear();
    }

    /// Bytes received from QEMU. Complete messages are handled at once: the greeting
    /// is kept, replies are matched to their commands, events are queued.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), QmpError> {
        if self.broken {
            return Err(QmpError::Broken);
        }
        let r = self.receive_lines(bytes);
        if r.is_err() {
            self.break_off();
        }
        r
    }

    fn receive_lines(&mut self, mut bytes: &[u8]) -> Result<(), QmpError> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = (&bytes[..end], &bytes[end + 1..]);
            if self.partial.is_empty() {
                if head.len() > MAX_MESSAGE {
                    return Err(QmpError::TooLong);
                }
                self.message(head)?;
            } else {
                if self.partial.len().saturating_add(head.len()) > MAX_MESSAGE {
                    return Err(QmpError::TooLong);
                }
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.message(&line)?;
                line.clear();
                self.partial = line;
            }
            bytes = rest;
        }
        if self.partial.len().saturating_add(bytes.len()) > MAX_MESSAGE {
            return Err(QmpError::TooLong);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// One message (a line without its end).
    fn message(&mut self, line: &[u8]) -> Result<(), QmpError> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        self.stats.messages += 1;
        let v: Value =
            serde_json::from_slice(line).map_err(|e| QmpError::Malformed(e.to_string()))?;
        let Value::Object(o) = v else {
            return Err(QmpError::Malformed(format!(
                "not an object: {}",
                clip(line)
            )));
        };
        if self.greeting.is_none() {
            return self.greet(&o, line);
        }
        if let Some(name) = o.get("event") {
            let Some(name) = name.as_str() else {
                self.stats.ignored += 1;
                return Ok(());
            };
            let timestamp = o.get("timestamp").and_then(|t| {
                Some((
                    t.get("seconds")?.as_u64()?,
                    t.get("microseconds")?.as_u64()?,
                ))
            });
            let event = Event {
                name: name.into(),
                data: o.get("data").cloned().unwrap_or(Value::Null),
                timestamp,
            };
            self.queue(event, line.len());
            return Ok(());
        }
        let reply = if let Some(r) = o.get("return") {
            Reply::Return(r.clone())
        } else if let Some(e) = o.get("error") {
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Reply::Error {
                class: text("class"),
                desc: text("desc"),
            }
        } else {
            self.stats.ignored += 1;
            return Ok(());
        };
        let id = o.get("id").and_then(Value::as_u64).map(CommandId);
        match id.filter(|id| self.pending.remove(id).is_some()) {
            Some(id) => {
                self.stats.replies += 1;
                if matches!(reply, Reply::Error { .. }) {
                    self.stats.error_replies += 1;
                }
                self.replies.insert(id, reply);
            }
            None => self.stats.unmatched_replies += 1,
        }
        Ok(())
    }

    fn greet(&mut self, o: &Map<String, Value>, line: &[u8]) -> Result<(), QmpError> {
        let Some(q) = o.get("QMP") else {
            return Err(QmpError::NoGreeting(clip(line)));
        };
        let version = q
            .get("version")
            .ok_or_else(|| QmpError::Malformed("greeting without a version".into()))?;
        let package = version
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let version = QemuVersion::from_qmp(version)
            .map_err(|e| QmpError::Malformed(format!("greeting: {e}")))?;
        let capabilities = q
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.greeting = Some(Greeting {
            version,
            package,
            capabilities,
        });
        Ok(())
    }

    fn queue(&mut self, event: Event, size: usize) {
        self.stats.events += 1;
        while !self.events.is_empty()
            && (self.events.len() >= MAX_EVENTS || self.event_bytes + size > MAX_EVENT_BYTES)
        {
            if let Some((_, n)) = self.events.pop_front() {
                self.event_bytes -= n;
                self.stats.events_dropped += 1;
            }
        }
        self.event_bytes += size;
        self.events.push_back((event, size));
    }

    /// A command to send (its bytes, line end included) and the id its reply will
    /// carry.
    pub fn command(
        &mut self,
        name: &str,
        arguments: Option<Value>,
    ) -> Result<(CommandId, Vec<u8>), QmpError> {
        if self.broken {
            return Err(QmpError::Broken);
        }
        // Replies not taken yet count too: a caller that never takes them must not
        // grow the reply table.
        if self.pending.len() + self.replies.len() >= MAX_PENDING {
            return Err(QmpError::TooManyPending);
        }
        self.last_id += 1;
        let id = CommandId(self.last_id);
        let mut m = json!({ "execute": name, "id": id.0 });
        if let Some(a) = arguments {
            m["arguments"] = a;
        }
        let mut bytes = m.to_string().into_bytes();
        bytes.push(b'\n');
        self.pending.insert(id, name.into());
        Ok((id, bytes))
    }

    /// The reply to command `id`, once it has arrived.
    pub fn take_reply(&mut self, id: CommandId) -> Option<Reply> {
        self.replies.remove(&id)
    }

    /// Stops waiting for command `id` (e.g. after a timeout): a late reply counts as
    /// unmatched.
    pub fn forget(&mut self, id: CommandId) {
        self.pending.remove(&id);
        self.replies.remove(&id);
    }

    /// The oldest queued event.
    pub fn pop_event(&mut self) -> Option<Event> {
        let (e, n) = self.events.pop_front()?;
        self.event_bytes -= n;
        Some(e)
    }

    /// The oldest queued event that `pick` chooses; the others stay queued.
    pub fn take_event(&mut self, mut pick: impl FnMut(&Event) -> bool) -> Option<Event> {
        let at = self.events.iter().position(|(e, _)| pick(e))?;
        let (e, n) = self.events.remove(at)?;
        self.event_bytes -= n;
        Some(e)
    }
}

/// At most 80 characters of a hostile message, for an error.
fn clip(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

/// One device of `query-pci`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    /// Its QEMU id (`-device ...,id=` or `device_add`'s), empty when it has none.
    pub qdev_id: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u16,
    /// What sits behind it when it is a bridge (a root port).
    pub bridge: Option<PciBridge>,
}

/// The bus behind a bridge. Its numbers are 0 until the guest's firmware has
/// assigned them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciBridge {
    pub secondary: u8,
    pub subordinate: u8,
    pub devices: Vec<PciDevice>,
}

/// A root bus of `query-pci` and its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciBus {
    pub number: u8,
    pub devices: Vec<PciDevice>,
}

/// The devices behind the bridge (e.g. the root port) with QEMU id `bridge_id`,
/// searched through all buses; None when there is no such bridge.
pub fn devices_behind<'a>(buses: &'a [PciBus], bridge_id: &str) -> Option<&'a [PciDevice]> {
    fn search<'a>(devices: &'a [PciDevice], id: &str) -> Option<&'a [PciDevice]> {
        devices.iter().find_map(|d| {
            let b = d.bridge.as_ref()?;
            if d.qdev_id == id {
                Some(b.devices.as_slice())
            } else {
                search(&b.devices, id)
            }
        })
    }
    buses.iter().find_map(|b| search(&b.devices, bridge_id))
}

/// `query-pci`'s return value. Nesting is bounded by the JSON parser's depth limit.
pub fn parse_query_pci(v: &Value) -> Result<Vec<PciBus>, String> {
    let buses = v.as_array().ok_or("not a list of buses")?;
    buses
        .iter()
        .map(|b| {
            Ok(PciBus {
                number: number(b, "bus")?,
                devices: parse_devices(b.get("devices"))?,
            })
        })
        .collect()
}

fn parse_devices(v: Option<&Value>) -> Result<Vec<PciDevice>, String> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or("devices: not a list")?;
    list.iter().map(parse_device).collect()
}

fn parse_device(d: &Value) -> Result<PciDevice, String> {
    let id = d.get("id").ok_or("a device without its id")?;
    let bridge = match d.get("pci_bridge") {
        None => None,
        Some(b) => {
            let bus = b.get("bus").ok_or("pci_bridge without its bus")?;
            Some(PciBridge {
                secondary: number(bus, "secondary")?,
                subordinate: number(bus, "subordinate")?,
                devices: parse_devices(b.get("devices"))?,
            })
        }
    };
    Ok(PciDevice {
        bus: number(d, "bus")?,
        slot: number(d, "slot")?,
        function: number(d, "function")?,
        qdev_id: d
            .get("qdev_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        vendor: number(id, "vendor")?,
        device: number(id, "device")?,
        class: number(
            d.get("class_info").ok_or("a device without class_info")?,
            "class",
        )?,
        bridge,
    })
}

/// Field `name` of `v` as a number of type T.
fn number<T: TryFrom<u64>>(v: &Value, name: &str) -> Result<T, String> {
    let f = v.get(name).ok_or_else(|| format!("{name}: missing"))?;
    f.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{name}: out of range: {}", clip(f.to_string().as_bytes())))
}

/// `device_add`'s arguments for a vfio-user-pci device on `bus` (a root port),
/// reaching its server at `socket`. Only this JSON form takes a socket address.
pub fn vfio_user_pci(id: &str, bus: &str, socket: &Path) -> Result<Value, QmpError> {
    let path = socket
        .to_str()
        .ok_or_else(|| QmpError::Argument(format!("{}: not UTF-8", socket.display())))?;
    Ok(json!({
        "driver": "vfio-user-pci",
        "id": id,
        "bus": bus,
        "socket": { "path": path, "type": "unix" },
    }))
}

/// A QMP connection to QEMU: blocking, every read and write bounded by the timeout.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    session: Session,
    timeout: Duration,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path`, retrying while QEMU has not created
    /// it yet or does not listen yet, then reads the greeting and negotiates
    /// (`qmp_capabilities`); all within `timeout`, which also bounds every later
    /// command.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Qmp::handshake(stream, timeout)
    }

    /// Greeting and `qmp_capabilities` on a connected stream.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut q = Qmp {
            stream,
            session: Session::new(),
            timeout,
        };
        let deadline = Instant::now() + timeout;
        while q.session.greeting().is_none() {
            q.fill(deadline, "the greeting")?;
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// QEMU's version, from its greeting.
    pub fn version(&self) -> QemuVersion {
        self.greeting().version
    }

    pub fn greeting(&self) -> &Greeting {
        self.session
            .greeting()
            .expect("a Qmp exists only after the greeting")
    }

    pub fn stats(&self) -> QmpStats {
        self.session.stats()
    }

    /// Runs `name` and returns its reply's value (QEMU's error reply is
    /// [`QmpError::Command`]). Events that arrive meanwhile are queued.
    pub fn execute(&mut self, name: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let (id, bytes) = self.session.command(name, arguments)?;
        let deadline = Instant::now() + self.timeout;
        if let Err(e) = self.send(&bytes) {
            self.session.break_off();
            return Err(e);
        }
        loop {
            if let Some(r) = self.session.take_reply(id) {
                return r.into_result(name);
            }
            if let Err(e) = self.fill(deadline, name) {
                self.session.forget(id);
                return Err(e);
            }
        }
    }

    /// Sends `name` without waiting for its reply, for a command QEMU can finish only
    /// while this program goes on serving (a `device_add` of a vfio-user device whose
    /// server is this program's: QEMU connects to it before it answers). Take the
    /// reply with [`Qmp::take_result`] after [`Qmp::pump`].
    pub fn send_command(
        &mut self,
        name: &str,
        arguments: Option<Value>,
    ) -> Result<CommandId, QmpError> {
        let (id, bytes) = self.session.command(name, arguments)?;
        if let Err(e) = self.send(&bytes) {
            self.session.break_off();
            return Err(e);
        }
        Ok(id)
    }

    /// The result of command `id` (named `name`, for the error) sent with
    /// [`Qmp::send_command`], once its reply has arrived.
    pub fn take_result(&mut self, id: CommandId, name: &str) -> Option<Result<Value, QmpError>> {
        self.session.take_reply(id).map(|r| r.into_result(name))
    }

    /// `query-version`.
    pub fn query_version(&mut self) -> Result<QemuVersion, QmpError> {
        let v = self.execute("query-version", None)?;
        QemuVersion::from_qmp(&v).map_err(|e| QmpError::BadReply {
            command: "query-version".into(),
            why: e.to_string(),
        })
    }

    /// `device_add` with `arguments` (e.g. [`vfio_user_pci`]).
    pub fn device_add(&mut self, arguments: Value) -> Result<(), QmpError> {
        self.execute("device_add", Some(arguments)).map(drop)
    }

    /// `device_del`: asks the guest to release device `id`. It is gone when
    /// [`wait_device_deleted`](Self::wait_device_deleted) says so.
    pub fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", Some(json!({ "id": id })))
            .map(drop)
    }

    /// `query-pci`.
    pub fn query_pci(&mut self) -> Result<Vec<PciBus>, QmpError> {
        let v = self.execute("query-pci", None)?;
        parse_query_pci(&v).map_err(|why| QmpError::BadReply {
            command: "query-pci".into(),
            why,
        })
    }

    /// Waits up to `timeout` for `DEVICE_DELETED` of device `id` (taken from the
    /// queue if it came already); `DEVICE_UNPLUG_GUEST_ERROR` for it is
    /// [`QmpError::UnplugRefused`]. Other events stay queued.
    pub fn wait_device_deleted(&mut self, id: &str, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.session.take_event(|e| {
                e.device() == Some(id)
                    && matches!(
                        e.name.as_str(),
                        "DEVICE_DELETED" | "DEVICE_UNPLUG_GUEST_ERROR"
                    )
            });
            match ev {
                Some(e) if e.name == "DEVICE_DELETED" => return Ok(()),
                Some(_) => return Err(QmpError::UnplugRefused(id.into())),
                None => self.fill(deadline, "DEVICE_DELETED")?,
            }
        }
    }

    /// The next event, waiting up to `timeout` for one; None when none came.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.session.pop_event() {
                return Ok(Some(e));
            }
            match self.fill(deadline, "an event") {
                Err(QmpError::Timeout(_)) => return Ok(None),
                r => r?,
            }
        }
    }

    /// Reads whatever QEMU has sent, without waiting (for a poll loop woken by
    /// [`AsRawFd::as_raw_fd`]); returns the bytes read.
    pub fn pump(&mut self) -> Result<usize, QmpError> {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes; recv writes
            // at most that many.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    self.session.break_off();
                    return Err(QmpError::Closed);
                }
                n if n > 0 => {
                    // n > 0 and n ≤ buf.len(), so the cast is exact.
                    let n = n as usize;
                    total += n;
                    self.session.receive(&buf[..n])?;
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(total),
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            self.session.break_off();
                            return Err(e.into());
                        }
                    }
                }
            }
        }
    }

    /// The oldest queued event, without reading.
    pub fn pop_event(&mut self) -> Option<Event> {
        self.session.pop_event()
    }

    /// `quit`: QEMU stops. Its closing the connection before the reply counts as
    /// done.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), QmpError> {
        self.stream.set_write_timeout(Some(self.timeout))?;
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) if is_timeout(&e) => Err(QmpError::Timeout("QEMU to read a command".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// One read from QEMU, by `deadline`, into the session.
    fn fill(&mut self, deadline: Instant, waiting_for: &str) -> Result<(), QmpError> {
        if self.session.is_broken() {
            return Err(QmpError::Broken);
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| QmpError::Timeout(waiting_for.into()))?;
        self.stream.set_read_timeout(Some(left))?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.session.break_off();
                Err(QmpError::Closed)
            }
            Ok(n) => self.session.receive(&buf[..n]),
            Err(e) if is_timeout(&e) => Err(QmpError::Timeout(waiting_for.into())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => {
                self.session.break_off();
                Err(e.into())
            }
        }
    }
}

impl AsRawFd for Qmp {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 3, "minor": 1, "major": 11}, "package": "Debian 1:11.1.3+ds-2~bpo13+1"}, "capabilities": ["oob"]}}"#;

    /// Feeds `text` to the session a few bytes at a time, as a socket may cut it.
    fn feed(s: &mut Session, text: &str, chunk: usize) -> Result<(), QmpError> {
        for c in text.as_bytes().chunks(chunk) {
            s.receive(c)?;
        }
        Ok(())
    }

    #[test]
    fn a_transcript_with_interleaved_events_and_an_error_reply() {
        for chunk in [1, 3, 7, 4096] {
            let mut s = Session::new();
            feed(&mut s, &format!("{GREETING}\r\n"), chunk).unwrap();
            let g = s.greeting().unwrap();
            assert_eq!(g.version, QemuVersion::new(11, 1, 3));
            assert_eq!(g.package, "Debian 1:11.1.3+ds-2~bpo13+1");
            assert_eq!(g.capabilities, vec!["oob".to_string()]);

            let (caps, bytes) = s.command("qmp_capabilities", None).unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&bytes).unwrap(),
                json!({"execute": "qmp_capabilities", "id": caps.0})
            );
            assert_eq!(bytes.last(), Some(&b'\n'));
            let (add, bytes) = s
                .command(
                    "device_add",
                    Some(
                        vfio_user_pci("tether-p3g1", "tether-rp3", Path::new("/t/p3.sock"))
                            .unwrap(),
                    ),
                )
                .unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&bytes).unwrap(),
                json!({"execute": "device_add", "id": add.0, "arguments": {
                    "driver": "vfio-user-pci", "id": "tether-p3g1", "bus": "tether-rp3",
                    "socket": {"path": "/t/p3.sock", "type": "unix"}}})
            );
            let (del, _) = s
                .command("device_del", Some(json!({"id": "nope"})))
                .unwrap();
            assert_ne!(caps, add);
            // Replies out of order, events between and before them, one reply to a
            // command never sent, one message of no known kind.
            let transcript = format!(
                concat!(
                    r#"{{"timestamp": {{"seconds": 1796567834, "microseconds": 319043}}, "event": "RESUME"}}"#,
                    "\n",
                    r#"{{"return": {{}}, "id": {caps}}}"#,
                    "\n",
                    r#"{{"id": {del}, "error": {{"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}}}"#,
                    "\n",
                    "\n",
                    r#"{{"event": "DEVICE_DELETED", "data": {{"device": "tether-p1g0", "path": "/machine/peripheral/tether-p1g0"}}, "timestamp": {{"seconds": 1, "microseconds": 2}}}}"#,
                    "\n",
                    r#"{{"return": {{}}, "id": 999}}"#,
                    "\n",
                    r#"{{"hello": 1}}"#,
                    "\n",
                    r#"{{"return": {{}}, "id": {add}}}"#,
                    "\n",
                ),
                caps = caps.0,
                del = del.0,
                add = add.0
            );
            feed(&mut s, &transcript, chunk).unwrap();
            assert_eq!(s.take_reply(caps), Some(Reply::Return(json!({}))));
            assert_eq!(s.take_reply(add), Some(Reply::Return(json!({}))));
            let err = s
                .take_reply(del)
                .unwrap()
                .into_result("device_del")
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "QMP device_del: DeviceNotFound: Device 'nope' not found"
            );
            assert_eq!(s.take_reply(del), None, "a reply is taken once");
            let deleted = s.take_event(|e| e.name == "DEVICE_DELETED").unwrap();
            assert_eq!(deleted.device(), Some("tether-p1g0"));
            assert_eq!(deleted.timestamp, Some((1, 2)));
            let resume = s.pop_event().unwrap();
            assert_eq!(
                (resume.name.as_str(), resume.data.clone()),
                ("RESUME", Value::Null)
            );
            assert_eq!(s.pop_event(), None);
            assert_eq!(
                s.stats(),
                QmpStats {
                    messages: 8,
                    events: 2,
                    events_dropped: 0,
                    replies: 3,
                    error_replies: 1,
                    unmatched_replies: 1,
                    ignored: 1,
                }
            );
            assert_eq!(
                (s.waiting(), s.queued_events(), s.buffered()),
                ((0, 0), (0, 0), 0)
            );
        }
    }

    #[test]
    fn an_oversized_message_breaks_the_connection() {
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        // Exactly the limit passes (it is then malformed JSON-wise only if it is not
        // JSON: a string padded with spaces is fine).
        let mut ok = format!(r#"{{"event": "X", "data": "{}"}}"#, "a".repeat(100));
        ok.push_str(&" ".repeat(MAX_MESSAGE - ok.len()));
        assert_eq!(ok.len(), MAX_MESSAGE);
        s.receive(ok.as_bytes()).unwrap();
        s.receive(b"\n").unwrap();
        assert_eq!(s.pop_event().unwrap().name, "X");
        // One byte more, in pieces and without a line end: refused before it is all
        // buffered.
        let long = vec![b' '; MAX_MESSAGE + 1];
        s.receive(&long[..MAX_MESSAGE]).unwrap();
        assert_eq!(s.buffered(), MAX_MESSAGE);
        assert!(matches!(s.receive(b" "), Err(QmpError::TooLong)));
        assert!(s.is_broken());
        assert_eq!(s.buffered(), 0);
        assert!(matches!(s.receive(b"{}\n"), Err(QmpError::Broken)));
        assert!(matches!(s.command("quit", None), Err(QmpError::Broken)));
        // In one piece with its line end.
        let mut s = Session::new();
        let mut long = vec![b' '; MAX_MESSAGE + 1];
        long.push(b'\n');
        assert!(matches!(s.receive(&long), Err(QmpError::TooLong)));
    }

    #[test]
    fn a_query_pci_of_the_most_root_ports_fits() {
        // QEMU 11.1.3's query-pci answer for a machine with MAX_ROOT_PORTS root
        // ports measured 123 482 bytes (docs/vmm.md): it must fit in one message.
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        let (id, _) = s.command("query-pci", None).unwrap();
        let head = format!(r#"{{"id": {}, "return": ["#, id.0);
        let mut m = head.clone();
        m.push_str(&" ".repeat(123_482 - head.len() - 2));
        m.push_str("]}");
        assert_eq!(m.len(), 123_482);
        m.push('\n');
        s.receive(m.as_bytes()).unwrap();
        assert_eq!(s.take_reply(id), Some(Reply::Return(json!([]))));
    }

    #[test]
    fn hostile_messages_are_typed_errors() {
        for (bytes, want) in [
            (&b"\xff\xfe\n"[..], "malformed"),
            (b"[1, 2]\n", "malformed"),
            (b"{\"return\": {}}\n", "greeting"),
            (b"{\"QMP\": {}}\n", "malformed"),
            (b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": -1, \"minor\": 0, \"micro\": 0}}}}\n", "malformed"),
            (b"{\"QMP\": 1\n", "malformed"),
        ] {
            let mut s = Session::new();
            let e = s.receive(bytes).unwrap_err();
            let got = match e {
                QmpError::Malformed(_) => "malformed",
                QmpError::NoGreeting(_) => "greeting",
                _ => "other",
            };
            assert_eq!(got, want, "{:?}: {e}", String::from_utf8_lossy(bytes));
            assert!(s.is_broken());
        }
        // After the greeting: nesting deeper than the parser allows is malformed, not
        // a stack overflow.
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        let deep = format!(
            "{{\"event\": \"E\", \"data\": {}{}}}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(matches!(
            s.receive(deep.as_bytes()),
            Err(QmpError::Malformed(_))
        ));
        // Odd but well-formed messages are counted and dropped.
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        s.receive(
            b"{\"event\": 5}\n{\"return\": 1, \"id\": \"x\"}\n{\"error\": 7}\n{\"QMP\": {}}\n",
        )
        .unwrap();
        let st = s.stats();
        assert_eq!((st.ignored, st.unmatched_replies, st.events), (2, 2, 0));
        assert!(!s.is_broken());
    }

    #[test]
    fn the_event_queue_is_bounded_oldest_first() {
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        for i in 0..MAX_EVENTS + 10 {
            s.receive(format!("{{\"event\": \"E{i}\"}}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(s.queued_events().0, MAX_EVENTS);
        assert_eq!(s.stats().events_dropped, 10);
        assert_eq!(s.pop_event().unwrap().name, "E10");
        // By bytes: 60 KiB events, 1 MiB at most.
        let big = format!(
            "{{\"event\": \"B\", \"data\": \"{}\"}}\n",
            "b".repeat(60 * 1024)
        );
        for _ in 0..40 {
            s.receive(big.as_bytes()).unwrap();
        }
        let (n, bytes) = s.queued_events();
        assert!(bytes <= MAX_EVENT_BYTES, "{bytes}");
        assert_eq!(n, MAX_EVENT_BYTES / (big.len() - 1));
        while s.pop_event().is_some() {}
        assert_eq!(s.queued_events(), (0, 0));
    }

    #[test]
    fn pending_commands_are_bounded_and_forgotten_replies_unmatched() {
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        let ids: Vec<CommandId> = (0..MAX_PENDING)
            .map(|_| s.command("query-status", None).unwrap().0)
            .collect();
        assert!(matches!(
            s.command("query-status", None),
            Err(QmpError::TooManyPending)
        ));
        s.forget(ids[0]);
        s.receive(format!("{{\"return\": {{}}, \"id\": {}}}\n", ids[0].0).as_bytes())
            .unwrap();
        assert_eq!(s.take_reply(ids[0]), None);
        assert_eq!(s.stats().unmatched_replies, 1);
        s.command("query-status", None).unwrap();
    }

    #[test]
    fn replies_not_taken_count_against_the_commands_waiting() {
        let mut s = Session::new();
        s.receive(format!("{GREETING}\n").as_bytes()).unwrap();
        for _ in 0..MAX_PENDING {
            let (id, _) = s.command("query-status", None).unwrap();
            s.receive(format!("{{\"return\": {{}}, \"id\": {}}}\n", id.0).as_bytes())
                .unwrap();
        }
        assert_eq!(s.waiting(), (0, MAX_PENDING));
        assert!(matches!(
            s.command("query-status", None),
            Err(QmpError::TooManyPending)
        ));
    }

    #[test]
    fn query_pci_lists_devices_behind_each_root_port() {
        // As QEMU 11.1.3 answers (shortened): two root ports, a device behind one.
        let v: Value = serde_json::from_str(r#"[{"bus": 0, "devices": [
            {"irq_pin": 0, "bus": 0, "qdev_id": "", "slot": 0, "class_info": {"class": 1536, "desc": "Host bridge"},
             "id": {"device": 10688, "subsystem-vendor": 6900, "vendor": 32902, "subsystem": 4352}, "function": 0, "regions": []},
            {"bus": 0, "slot": 2, "function": 0, "qdev_id": "tether-rp0", "class_info": {"class": 1540, "desc": "PCI bridge"},
             "id": {"device": 12, "vendor": 6966}, "regions": [],
             "pci_bridge": {"bus": {"number": 0, "secondary": 1, "subordinate": 1,
                "io_range": {"limit": 4095, "base": 61440}},
                "devices": [{"bus": 1, "slot": 0, "function": 0, "qdev_id": "tether-p0g1",
                   "class_info": {"class": 256}, "id": {"vendor": 6900, "device": 4162}, "regions": []}]}},
            {"bus": 0, "slot": 2, "function": 1, "qdev_id": "tether-rp1", "class_info": {"class": 1540},
             "id": {"device": 12, "vendor": 6966}, "regions": [],
             "pci_bridge": {"bus": {"number": 0, "secondary": 0, "subordinate": 0}}}]}]"#).unwrap();
        let buses = parse_query_pci(&v).unwrap();
        assert_eq!(buses.len(), 1);
        assert_eq!(buses[0].devices.len(), 3);
        let behind = devices_behind(&buses, "tether-rp0").unwrap();
        assert_eq!(behind.len(), 1);
        assert_eq!(
            (
                behind[0].qdev_id.as_str(),
                behind[0].vendor,
                behind[0].device,
                behind[0].class,
                behind[0].bus
            ),
            ("tether-p0g1", 0x1af4, 0x1042, 0x100, 1)
        );
        assert_eq!(devices_behind(&buses, "tether-rp1"), Some(&[][..]));
        assert_eq!(devices_behind(&buses, "tether-rp2"), None);
        for bad in [
            json!({}),
            json!([{"bus": 256, "devices": []}]),
            json!([{"bus": 0, "devices": [{"bus": 0}]}]),
            json!([{"bus": 0, "devices": [{"bus": 0, "slot": 1, "function": 0,
                "class_info": {"class": 1}, "id": {"vendor": 65536, "device": 0}}]}]),
        ] {
            assert!(parse_query_pci(&bad).is_err(), "{bad}");
        }
    }

    /// A fake QEMU on the other end of a socket pair: sends the greeting, then for
    /// each command line it reads, what `answer` gives (lines, raw).
    fn fake_qemu(
        answer: impl Fn(&Value) -> String + Send + 'static,
    ) -> (UnixStream, std::thread::JoinHandle<Vec<Value>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            w.write_all(format!("{GREETING}\n").as_bytes()).unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(theirs).lines() {
                let Ok(line) = line else { break };
                let cmd: Value = serde_json::from_str(&line).unwrap();
                let out = answer(&cmd);
                seen.push(cmd);
                if w.write_all(out.as_bytes()).is_err() {
                    break;
                }
            }
            seen
        });
        (ours, t)
    }

    /// A command sent without waiting: the loop goes on (QEMU is connecting to a
    /// socket this program serves), and the reply is taken once it has arrived;
    /// events that came meanwhile stay queued, in order.
    #[test]
    fn a_command_sent_without_waiting_is_answered_later() {
        let (sock, qemu) = fake_qemu(|cmd| {
            let id = &cmd["id"];
            match cmd["execute"].as_str().unwrap() {
                "device_add" => format!(
                    "{{\"event\": \"X\", \"data\": {{}}}}\n{{\"return\": {{}}, \"id\": {id}}}\n"
                ),
                _ => format!("{{\"return\": {{}}, \"id\": {id}}}\n"),
            }
        });
        let mut q = Qmp::handshake(sock, Duration::from_secs(5)).unwrap();
        let id = q
            .send_command("device_add", Some(json!({"id": "d"})))
            .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        let got = loop {
            q.pump().unwrap();
            if let Some(r) = q.take_result(id, "device_add") {
                break r;
            }
            assert!(Instant::now() < end, "no reply");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(got.unwrap(), json!({}));
        assert!(q.take_result(id, "device_add").is_none(), "taken twice");
        assert_eq!(q.pop_event().map(|e| e.name), Some("X".to_string()));
        drop(q);
        assert_eq!(qemu.join().unwrap().len(), 2);
    }

    #[test]
    fn the_blocking_client_against_a_fake_qemu() {
        let (sock, qemu) = fake_qemu(|cmd| {
            let id = &cmd["id"];
            match cmd["execute"].as_str().unwrap() {
                "query-version" => format!(
                    "{{\"event\": \"RTC_CHANGE\", \"data\": {{\"offset\": 1}}}}\n{{\"return\": {{\"qemu\": {{\"major\": 11, \"minor\": 1, \"micro\": 3}}, \"package\": \"\"}}, \"id\": {id}}}\n"
                ),
                // The reply first, the guest's release later.
                "device_del" => {
                    let dev = cmd["arguments"]["id"].as_str().unwrap();
                    format!(
                        "{{\"return\": {{}}, \"id\": {id}}}\n{{\"event\": \"DEVICE_DELETED\", \"data\": {{\"path\": \"/machine/peripheral/{dev}/backend\"}}}}\n{{\"event\": \"DEVICE_DELETED\", \"data\": {{\"device\": \"{dev}\", \"path\": \"/machine/peripheral/{dev}\"}}}}\n"
                    )
                }
                "device_add" => format!(
                    "{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"Bus 'tether-rp9' not found\"}}}}\n"
                ),
                "query-pci" => format!("{{\"return\": {{\"not\": \"a list\"}}, \"id\": {id}}}\n"),
                "stall" => String::new(),
                "huge" => format!("{{\"return\": \"{}\"}}\n", "x".repeat(MAX_MESSAGE)),
                _ => format!("{{\"return\": {{}}, \"id\": {id}}}\n"),
            }
        });
        let mut q = Qmp::handshake(sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.version(), QemuVersion::new(11, 1, 3));
        assert_eq!(q.query_version().unwrap(), QemuVersion::new(11, 1, 3));
        q.device_del("tether-p0g1").unwrap();
        q.wait_device_deleted("tether-p0g1", Duration::from_secs(5))
            .unwrap();
        // Left queued: the RTC change and the backend's DEVICE_DELETED (no device).
        assert_eq!(q.pop_event().unwrap().name, "RTC_CHANGE");
        assert_eq!(q.pop_event().unwrap().device(), None);
        let e = q
            .device_add(vfio_user_pci("d", "tether-rp9", Path::new("/s")).unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, QmpError::Command { class, .. } if class == "GenericError"),
            "{e}"
        );
        assert!(matches!(q.query_pci(), Err(QmpError::BadReply { .. })));
        q.timeout = Duration::from_millis(100);
        let t0 = Instant::now();
        assert!(matches!(
            q.execute("stall", None),
            Err(QmpError::Timeout(_))
        ));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            q.wait_device_deleted("never", Duration::from_millis(50)),
            Err(QmpError::Timeout(_))
        ));
        assert_eq!(q.next_event(Duration::from_millis(20)).unwrap(), None);
        assert_eq!(q.pump().unwrap(), 0);
        q.timeout = Duration::from_secs(5);
        assert!(matches!(q.execute("huge", None), Err(QmpError::TooLong)));
        assert!(matches!(
            q.execute("query-status", None),
            Err(QmpError::Broken)
        ));
        assert_eq!(q.stats().error_replies, 1);
        drop(q);
        let seen = qemu.join().unwrap();
        let names: Vec<&str> = seen
            .iter()
            .map(|c| c["execute"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "qmp_capabilities",
                "query-version",
                "device_del",
                "device_add",
                "query-pci",
                "stall",
                "huge"
            ]
        );
    }

    #[test]
    fn qemu_leaving_is_closed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs)
            .write_all(format!("{GREETING}\n").as_bytes())
            .unwrap();
        drop(theirs);
        assert!(matches!(
            Qmp::handshake(ours, Duration::from_secs(5)),
            Err(QmpError::Closed) | Err(QmpError::Io(_))
        ));
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            Qmp::handshake(ours, Duration::from_millis(100)),
            Err(QmpError::Timeout(_))
        ));
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(theirs);
    }
}
