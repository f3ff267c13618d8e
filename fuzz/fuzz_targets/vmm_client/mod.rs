//! What the vfio_user_server and proxy_server targets share besides the fuzz library:
//! the descriptors a VMM client may attach (eventfds, a file of guest RAM, a socket of
//! the wrong kind), a client end that is drained without blocking, and the framing of
//! what a client sends.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use tether_fuzz::Input;

/// 64 KiB of "guest RAM": a file every attached descriptor of that kind refers to.
fn ram_file() -> &'static File {
    static RAM: OnceLock<File> = OnceLock::new();
    RAM.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tether-fuzz-ram-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file");
        let _ = std::fs::remove_file(&path);
        f.set_len(64 << 10).expect("scratch file size");
        f
    })
}

/// Puts the guest RAM file back as it was (64 KiB, offset 0): a server that took it
/// for an eventfd wrote into it.
pub fn reset_ram() {
    use std::io::Seek;
    let mut f = ram_file();
    f.set_len(64 << 10).expect("scratch file size");
    f.rewind().expect("rewind");
}

/// Descriptors a client attaches to one message.
#[derive(Default)]
pub struct Attached {
    pub fds: Vec<OwnedFd>,
}

impl Attached {
    /// `n` descriptors (0..=3), each of a kind the input picks. The peers of sockets
    /// handed over where an eventfd belongs go to `keep`, to stay open while the
    /// server may write to them (a write to a socket without a peer raises SIGPIPE,
    /// which a tether binary ignores but the fuzzer's process does not).
    pub fn pick(input: &mut Input, keep: &mut Vec<UnixStream>) -> Attached {
        let mut a = Attached::default();
        let n = input.u8() % 4;
        for _ in 0..n {
            let fd = match input.u8() % 3 {
                0 => vmm::sys::eventfd().expect("eventfd"),
                1 => ram_file().try_clone().expect("dup").into(),
                _ => {
                    let (ours, peer) = UnixStream::pair().expect("socketpair");
                    keep.push(peer);
                    ours.into()
                }
            };
            a.fds.push(fd);
        }
        a
    }

    pub fn raw(&self) -> Vec<RawFd> {
        self.fds.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// Reads and drops whatever the server has sent (descriptors included) without
/// blocking: the client end is non-blocking.
pub fn drain(client: &mut UnixStream) {
    let mut buf = [0u8; 8192];
    while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
}

/// Tracks where the byte stream a client sends stands: whether it ends on a message
/// boundary (only then may the server be polled, or it would wait for the rest), and
/// whether a header that the server refuses to frame went by (the stream is then
/// dead: the server drops or stops reading it).
pub struct Framing {
    header_len: usize,
    /// Bytes of the current message still to come (its header first).
    header: Vec<u8>,
    body_left: u64,
    pub dead: bool,
    /// The size of the message whose header is `h`, when the server frames it.
    size_of: fn(&[u8]) -> Option<u64>,
}

impl Framing {
    pub fn new(header_len: usize, size_of: fn(&[u8]) -> Option<u64>) -> Framing {
        Framing {
            header_len,
            header: Vec::new(),
            body_left: 0,
            dead: false,
            size_of,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.body_left == 0
    }

    /// Sends `bytes` with `fds` on `sock` unless the stream is dead; a send the socket
    /// does not take whole leaves the stream in an unknown state, which counts as dead.
    pub fn send(&mut self, sock: &UnixStream, bytes: &[u8], fds: &Attached) {
        if self.dead {
            return;
        }
        match vmm::sys::send_with_fds(sock.as_raw_fd(), bytes, &fds.raw()) {
            Ok(()) => self.feed(bytes),
            Err(_) => self.dead = true,
        }
    }

    /// Follows `bytes` through the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.dead {
            if self.body_left > 0 {
                let n = (bytes.len() as u64).min(self.body_left);
                self.body_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let n = (self.header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == self.header_len {
                match (self.size_of)(&self.header) {
                    Some(body) => self.body_left = body,
                    None => self.dead = true,
                }
                self.header.clear();
            }
        }
    }
}

/// A write of `value` (bytes `be`) that reached a device's Device Control, whose value
/// on the fabric is `fabric`: its Max Payload Size is the fabric's and its Max Read
/// Request Size no smaller (vmm::payload), whatever the client wrote.
pub fn check_devctl(value: u32, be: u8, fabric: u16) {
    let (mps, mrrs) = ((value >> 5) & 7, (value >> 12) & 7);
    let fabric = u32::from(fabric >> 5) & 7;
    if be & 1 != 0 {
        assert_eq!(mps, fabric, "Max Payload Size written: {value:#x}");
    }
    if be & 2 != 0 {
        assert!(
            mrrs >= fabric,
            "Max Read Request Size below the MPS: {value:#x}"
        );
    }
}
