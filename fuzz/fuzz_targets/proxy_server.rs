//! The QEMU multi-process proxy server's request handling, not only its codec: QEMU's
//! end of the socketpair sends what the input chooses, framed messages with any
//! command and payload, raw bytes that may break the framing, and descriptors of any
//! kind (files of guest RAM, eventfds, a socket where an eventfd belongs); between
//! messages the device raises and lowers INTx, goes away and comes back, and the
//! guest's end-of-interrupt is polled. The device is the test double
//! `vmm::fake_function`.
//!
//! Checked after every step: no panic, config writes reach only dword registers of
//! the 4 KiB config space, the counters never go down; a protocol error ends the
//! connection (the next input bytes go to a new one), as does QEMU leaving.
#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use tether_fuzz::{assert_counters_grew, Input};
use vmm::fake_function::FakeFunction;
use vmm::proxy::wire::{Header, HEADER_LEN};
use vmm::proxy::{ProxyServer, ProxyStats};

#[path = "vmm_client/mod.rs"]
mod vmm_client;
use vmm_client::{drain, Attached, Framing};

/// BAR0 (4 KiB at 0xfe00_0000), MSI-X and MSI in the capability list (the proxy
/// hides both).
fn device() -> FakeFunction {
    let mut dev = FakeFunction::new(0xfe00_0000);
    dev.config[6] = 0x10;
    dev.config[0x34] = 0x40;
    for (at, id, next) in [(0x40, 0x10, 0x50), (0x50, 0x11, 0x70), (0x70, 0x05, 0)] {
        dev.config[at] = id;
        dev.config[at + 1] = next;
    }
    dev.config[DEVCTL as usize..DEVCTL as usize + 2].copy_from_slice(&FABRIC_DEVCTL.to_le_bytes());
    dev
}

/// Device Control of the PCI Express capability at 0x40, and its value on the fabric
/// (MPS 512, MRRS 512): no guest write changes its Max Payload Size, nor sets a Max
/// Read Request Size below it (vmm::payload).
const DEVCTL: u16 = 0x48;
const FABRIC_DEVCTL: u16 = 2 << 5 | 2 << 12;

/// The payload size a header announces, when the server frames it.
fn size_of(h: &[u8]) -> Option<u64> {
    Some(Header::parse(h.try_into().ok()?).ok()?.size)
}

fn counters(s: &ProxyStats) -> [u64; 12] {
    [
        s.config_reads,
        s.config_writes,
        s.bar_reads,
        s.bar_writes,
        s.io_accesses,
        s.memory_syncs,
        s.map_errors,
        s.resets,
        s.irqfd_sets,
        s.intx_asserts,
        s.intx_signals,
        s.resamples,
    ]
}

/// A server and QEMU's end of its socketpair.
struct Connection {
    server: ProxyServer,
    qemu: UnixStream,
    framing: Framing,
    before: [u64; 12],
}

impl Connection {
    fn new() -> Connection {
        let (qemu, ours) = UnixStream::pair().expect("socketpair");
        qemu.set_nonblocking(true).expect("non-blocking");
        let server = ProxyServer::new(OwnedFd::from(ours));
        Connection {
            before: counters(&server.stats()),
            server,
            qemu,
            framing: Framing::new(HEADER_LEN, size_of),
        }
    }

    fn send(&mut self, bytes: &[u8], fds: &Attached) {
        self.framing.send(&self.qemu, bytes, fds);
    }
}

fuzz_target!(|data: &[u8]| {
    vmm_client::reset_ram();
    let mut input = Input(data);
    let mut dev = device();
    let mut peers = Vec::new();
    let mut c = Connection::new();
    let mut steps = 0;
    while !input.done() && steps < 512 {
        steps += 1;
        match input.u8() % 8 {
            0..=2 => {
                let cmd = match input.u8() {
                    b @ 0..=199 => (b % 10) as i32,
                    _ => input.u32() as i32,
                };
                let len = input.u16() as usize;
                let payload = input.bytes(len);
                let fds = Attached::pick(&mut input, &mut peers);
                let mut m = Header {
                    cmd,
                    size: payload.len() as u64,
                }
                .emit()
                .to_vec();
                m.extend_from_slice(payload);
                c.send(&m, &fds);
            }
            3 => {
                let n = input.u8() as usize;
                let bytes = input.bytes(n);
                let fds = Attached::pick(&mut input, &mut peers);
                c.send(bytes, &fds);
            }
            4 => c.server.set_intx(input.u8() & 1 != 0),
            5 => c.server.device_changed(),
            6 => dev.present = !dev.present,
            _ => {
                let _ = c.server.poll_resample();
            }
        }
        let mut over = c.framing.dead;
        if c.framing.at_boundary() || c.framing.dead {
            // A protocol error (or QEMU gone) ends the connection.
            over |= c.server.serve(&mut dev, 64).is_err();
            drain(&mut c.qemu);
        }
        check(&dev);
        assert_counters_grew(&mut c.before, counters(&c.server.stats()));
        if over {
            c = Connection::new();
        }
    }
    // QEMU leaves, in the middle of a message or not: serve says so.
    let Connection {
        mut server, qemu, ..
    } = c;
    drop(qemu);
    let mut ended = false;
    for _ in 0..64 {
        if server.serve(&mut dev, 64).is_err() {
            ended = true;
            break;
        }
    }
    assert!(ended, "QEMU left unnoticed");
    check(&dev);
    drop(server);
    drop(peers);
});

fn check(dev: &FakeFunction) {
    for &(reg, value, be) in &dev.config_writes {
        assert!(reg < 0x1000 && reg % 4 == 0, "config write at {reg:#x}");
        assert!(be != 0 && be <= 0xf, "byte enables {be:#x}");
        if reg == DEVCTL {
            vmm_client::check_devctl(value, be, FABRIC_DEVCTL);
        }
    }
}
