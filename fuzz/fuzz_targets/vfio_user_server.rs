//! The vfio-user server's request handling, not only its codec: a client connected
//! to a real server (over its Unix socket) sends what the input chooses, framed
//! messages with any command, flags and body, raw bytes that may break the framing,
//! and descriptors of any kind (DMA_MAP without one, eventfds, a file, a socket where
//! an eventfd belongs); between messages the device raises vectors and INTx, goes
//! away and comes back, and clients come and go. The device is the test double
//! `vmm::fake_function`.
//!
//! DMA_MAP also comes well-formed, with flags the input picks (READ, WRITE, both,
//! neither, other bits) and guest RAM of each kind: none (DMA by message), a memfd
//! sealed as QEMU seals it, one that allows sealing, one that does not (`seal=off`),
//! a regular file.
//!
//! Checked after every step: no panic, no config write reaches the registers the
//! server must keep from the device (BARs, ROM BAR, the MSI capability, MSI-X
//! Message Control, anything past 256 bytes), MSI and MSI-X are never on together,
//! the counters never go down, a client never holds more than `MAX_DMA_MAPS`
//! mappings, and a client that leaves takes its mappings with it. After a DMA_MAP:
//! only a memfd that cannot shrink was taken, with valid flags, and the device's DMA
//! there writes the memfd only with WRITE and reads it only with READ.
#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether_fuzz::{assert_counters_grew, Input};
use vmm::fake_function::FakeFunction;
use vmm::vfio_user::client::{guest_memfd_with, Seals};
use vmm::vfio_user::wire::{cmd, flags, vfio, Body, Header, HEADER_LEN, MAX_DMA_MAPS};
use vmm::vfio_user::{VfioUserServer, VfioUserStats};

#[path = "vmm_client/mod.rs"]
mod vmm_client;
use vmm_client::{drain, Attached, Framing};

/// BAR0 (4 KiB), MSI at 0x40 (64-bit, 16 bytes), MSI-X at 0x50 (4 vectors) and PCI
/// Express at 0x60, its Device Control as a root complex left it (MPS 512, MRRS 512).
fn device() -> FakeFunction {
    let mut dev = FakeFunction::with_msi_and_msix(0xe000_0000, 0x80);
    dev.config[0x51] = 0x60;
    dev.config[0x60] = 0x10;
    dev.config[DEVCTL as usize..DEVCTL as usize + 2].copy_from_slice(&FABRIC_DEVCTL.to_le_bytes());
    dev
}

/// Device Control, and its value on the fabric: no guest write changes its Max Payload
/// Size, nor sets a Max Read Request Size below it (vmm::payload).
const DEVCTL: u16 = 0x68;
const FABRIC_DEVCTL: u16 = 2 << 5 | 2 << 12;

const MSI: std::ops::Range<u16> = 0x40..0x50;
const MSIX_CONTROL: u16 = 0x50;

/// The message size a header announces, when the server frames it.
fn size_of(h: &[u8]) -> Option<u64> {
    let h = Header::parse(h.try_into().ok()?).ok()?;
    Some(h.body_len() as u64)
}

fn counters(s: &VfioUserStats) -> [u64; 27] {
    [
        s.dma_maps_without_fd,
        s.dma_maps_sealed_here,
        s.dma_maps_by_file,
        s.dma_file_faults,
        s.dma_maps_unsealable,
        s.dma_maps_invalid,
        s.dma_maps_over_limit,
        s.dma_write_to_readonly,
        s.dma_read_from_writeonly,
        s.queue_overflows,
        s.unread_overflows,
        s.stalled_clients,
        s.dma_read_failures,
        s.connections,
        s.disconnects,
        s.requests,
        s.config_reads,
        s.config_writes,
        s.bar_reads,
        s.bar_writes,
        s.dma_maps,
        s.dma_unmaps,
        s.set_irqs,
        s.vectors_pended,
        s.resets,
        s.errors,
        s.dma_messages,
    ]
}

struct Client {
    sock: UnixStream,
    framing: Framing,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let sock = UnixStream::connect(path).expect("connect");
        sock.set_nonblocking(true).expect("non-blocking");
        Client {
            sock,
            framing: Framing::new(HEADER_LEN, size_of),
        }
    }

    fn send(&mut self, bytes: &[u8], fds: &Attached) {
        self.framing.send(&self.sock, bytes, fds);
    }
}

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("tether-fuzz-vfu-{}.sock", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    vmm_client::reset_ram();
    let mut input = Input(data);
    let path = socket_path();
    let mut server = VfioUserServer::bind(&path).expect("bind");
    let mut dev = device();
    let mut peers = Vec::new();
    let mut client = Client::connect(&path);
    let mut before = counters(&server.stats());
    let mut steps = 0;
    while !input.done() && steps < 512 {
        steps += 1;
        match input.u8() % 8 {
            0..=2 => {
                // A framed message: any command (the known ones often), flags and
                // body; the size is the true one.
                let command = match input.u8() {
                    b @ 0..=199 => (b % 16) as u16,
                    _ => input.u16(),
                };
                let id = input.u16();
                let flags = match input.u8() % 4 {
                    0 => flags::NO_REPLY,
                    1 => flags::REPLY,
                    2 => input.u32(),
                    _ => 0,
                };
                let len = input.u16() as usize;
                let body = input.bytes(len);
                let fds = Attached::pick(&mut input, &mut peers);
                let mut m = Header {
                    id,
                    command,
                    size: (HEADER_LEN + body.len()) as u32,
                    flags,
                    error: 0,
                }
                .emit()
                .to_vec();
                m.extend_from_slice(body);
                client.send(&m, &fds);
            }
            3 => {
                // Raw bytes: a header may announce any size, a message may be cut.
                let n = input.u8() as usize;
                let bytes = input.bytes(n);
                let fds = Attached::pick(&mut input, &mut peers);
                client.send(bytes, &fds);
            }
            4 => server.vector(input.u16() % 8),
            // A well-formed DMA_MAP, where a message may start.
            7 if client.framing.at_boundary() && !client.framing.dead => {
                dma_map(&mut input, &mut client, &mut server, &mut dev)
            }
            5 => server.set_intx(input.u8() & 1 != 0),
            6 => match input.u8() % 4 {
                0 => server.device_changed(),
                1 => {
                    server.request_release();
                }
                2 => dev.present = !dev.present,
                _ => client = reconnect(client, &mut server, &mut dev, &path),
            },
            _ => {}
        }
        // Poll the server only when what it reads ends on a message boundary (or a
        // header it drops the client for): otherwise it would wait for the rest.
        if client.framing.at_boundary() || client.framing.dead {
            server.serve(&mut dev, 64).expect("serve");
            drain(&mut client.sock);
        }
        if client.framing.dead {
            client = reconnect(client, &mut server, &mut dev, &path);
        }
        check(&dev);
        assert_counters_grew(&mut before, counters(&server.stats()));
    }
    // The client leaves (in the middle of a message or not): the server drops it,
    // and its mappings and interrupts with it.
    drop(client);
    for _ in 0..64 {
        if !server.connected() {
            break;
        }
        server.serve(&mut dev, 64).expect("serve");
    }
    assert!(!server.connected(), "the client is gone");
    assert!(dev.ram.is_empty(), "mappings outlived the client");
    check(&dev);
    drop(server);
    drop(peers);
});

/// The client leaves and another comes once the server has let the first go (so
/// that no connect waits on a full listen backlog).
fn reconnect(
    old: Client,
    server: &mut VfioUserServer,
    dev: &mut FakeFunction,
    path: &Path,
) -> Client {
    drop(old);
    for _ in 0..64 {
        if !server.connected() {
            break;
        }
        server.serve(dev, 64).expect("serve");
    }
    assert!(!server.connected(), "a client that left is still served");
    Client::connect(path)
}

/// Guest RAM of a kind a VMM may hand over.
enum Ram {
    /// None: DMA by DMA_READ/DMA_WRITE messages.
    Messages,
    /// A memfd (64 KiB) sealed as `Seals` says.
    Memfd(Seals),
    /// A regular file (this program, opened read-only): it takes no seals.
    File,
}

fn regular_file() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| File::open(std::env::current_exe().expect("exe")).expect("open exe"))
}

/// A well-formed DMA_MAP with flags, range and guest RAM the input picks, served;
/// then what the server took is checked, and the device's DMA into it.
fn dma_map(
    input: &mut Input,
    client: &mut Client,
    server: &mut VfioUserServer,
    dev: &mut FakeFunction,
) {
    let (r, w) = (vfio::DMA_MAP_FLAG_READ, vfio::DMA_MAP_FLAG_WRITE);
    let map_flags = match input.u8() % 8 {
        0 => r,
        1 => w,
        2 => 0,
        3 => input.u32(),
        _ => r | w,
    };
    let ram = match input.u8() % 6 {
        0 => Ram::Messages,
        1 => Ram::Memfd(Seals::Sealable),
        2 => Ram::Memfd(Seals::Unsealable),
        3 => Ram::File,
        _ => Ram::Memfd(Seals::Qemu),
    };
    let offset = [0, 4096, 60 << 10, u64::MAX - 4095][input.u8() as usize % 4];
    let size = [4096, 64 << 10, 0, 8192][input.u8() as usize % 4];
    let iova = (input.u16() as u64) << 16 | if input.u8() == 0 { u64::MAX << 48 } else { 0 };
    let memfd: Option<OwnedFd> = match &ram {
        Ram::Memfd(seals) => Some(guest_memfd_with(64 << 10, *seals).expect("memfd")),
        Ram::File => Some(regular_file().try_clone().expect("dup").into()),
        Ram::Messages => None,
    };
    let body = Body::default()
        .u32(32)
        .u32(map_flags)
        .u64(offset)
        .u64(iova)
        .u64(size)
        .0;
    let mut m = Header {
        id: input.u16(),
        command: cmd::DMA_MAP,
        size: (HEADER_LEN + body.len()) as u32,
        flags: 0,
        error: 0,
    }
    .emit()
    .to_vec();
    m.extend_from_slice(&body);
    let fds = vmm_client::Attached {
        fds: memfd.iter().map(|f| f.try_clone().expect("dup")).collect(),
    };
    let before = dev.ram.len();
    let messages = server.stats().dma_messages;
    let by_file_before = server.stats().dma_maps_by_file;
    client.send(&m, &fds);
    if client.framing.dead {
        return;
    }
    server.serve(dev, 64).expect("serve");
    drain(&mut client.sock);
    if dev.ram.len() == before {
        return;
    }
    // Taken: it must be one mapping, of valid flags; RAM that may shrink is served
    // by pread/pwrite on its file, never mapped (a shrink would raise SIGBUS).
    assert_eq!(dev.ram.len(), before + 1, "one DMA_MAP, one mapping");
    assert!(
        map_flags & !(r | w) == 0 && map_flags & (r | w) != 0,
        "flags {map_flags:#x} taken"
    );
    let by_file = server.stats().dma_maps_by_file > by_file_before;
    assert_eq!(
        by_file,
        matches!(ram, Ram::Memfd(Seals::Unsealable) | Ram::File),
        "guest RAM that may shrink mapped, or RAM that cannot served by file"
    );
    let (read, write) = (map_flags & r != 0, map_flags & w != 0);
    let (_, mem) = dev.ram.last_mut().expect("the new mapping");
    let marker = *b"tether";
    let mut got = [0u8; 6];
    match memfd {
        Some(fd) => {
            let file = File::from(fd);
            mem.write(16, &marker);
            file.read_at(&mut got, offset + 16).expect("read the memfd");
            assert_eq!(got == marker, write, "DMA write with WRITE {write}");
            let mut seen = [0u8; 6];
            assert_eq!(
                mem.try_read(16, &mut seen).is_ok(),
                read,
                "DMA read with READ {read}"
            );
            if read {
                assert_eq!(seen, got);
            }
        }
        None => {
            // Only what is refused at once: what is allowed waits for the client.
            if !write {
                mem.write(16, &marker);
            }
            if !read {
                assert!(mem.try_read(16, &mut got).is_err());
            }
            assert_eq!(server.stats().dma_messages, messages, "no DMA message sent");
        }
    }
}

fn check(dev: &FakeFunction) {
    assert!(dev.ram.len() <= MAX_DMA_MAPS, "{} mappings", dev.ram.len());
    for &(reg, value, be) in &dev.config_writes {
        assert!(reg < 0x100 && reg % 4 == 0, "config write at {reg:#x}");
        assert!(
            !(0x10..0x28).contains(&reg) && reg != 0x30,
            "BAR or ROM written at {reg:#x}"
        );
        assert!(!MSI.contains(&reg), "MSI capability written at {reg:#x}");
        if reg == MSIX_CONTROL {
            assert_eq!(be & 0b1100, 0, "MSI-X Message Control written");
        }
        if reg == DEVCTL {
            vmm_client::check_devctl(value, be, FABRIC_DEVCTL);
        }
    }
    let on = |v: &[bool]| v.last().copied().unwrap_or(false);
    assert!(
        !(on(&dev.msi_on) && on(&dev.msix_on)),
        "MSI and MSI-X on together"
    );
}
