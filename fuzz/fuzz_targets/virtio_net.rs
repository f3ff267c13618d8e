//! virtio-net as the box runs it: a virtio-net function on the endpoint framework,
//! driven by TLPs only, against a hostile driver and a backend that does what the
//! input says. The input sets the device up (features, split or packed ring, each
//! queue's size and ring addresses, MSI-X, the queues' buffer and chunk sizes, the
//! backend passing the header or not), fills a guest memory that every address of the
//! 64-bit space mirrors, and runs steps: notifications of any queue, the device's DMA
//! reads answered in any order (whole, with an error status, mangled, or never, then a
//! completion timeout), guest memory changed under the device, any BAR0 register
//! written or read, frames of any length (up to beyond MAX_FRAME) from the backend,
//! the backend full or draining, carrier lost and back, the box saying the device
//! leaves, polls of the box's round, and function resets.
//! The device must never panic, must only send TLPs that parse, must never hold more
//! than its queue buffer for requests in flight, must never hand the backend a frame
//! beyond MAX_FRAME, and must drain the backend (it reads every frame it is given
//! within a bounded number of polls).
#![no_main]

use endpoint::virtio::net::{MemBackend, VirtioNet, MAX_FRAME, VNET_HDR_LEN};
use endpoint::virtio::pci::{layout, QueueLimits};
use endpoint::virtio::{self, VirtioPci};
use endpoint::{Function, FunctionConfig};
use libfuzzer_sys::fuzz_target;
use tether_fuzz::virtio_host::{Host, Step, MEM};
use tether_fuzz::Input;

type Dev = VirtioPci<VirtioNet<MemBackend>>;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let limits = QueueLimits {
        buffer_bytes: 1 + input.u16() as u64 * 64,
        chunk_bytes: 1 + input.u16() as usize * 16,
    };
    let setup = input.u8();
    let mut backend = MemBackend::new();
    backend.room = Some(input.u8() as usize % 8);
    let mac = [0x52, 0x54, 0, 0, 0, input.u8()];
    let device = VirtioPci::new(VirtioNet::new(backend, mac, setup & 8 != 0))
        .with_packed_ring(true)
        .with_limits(limits);
    let cap = device.limits().buffer_bytes;
    let mut h: Host<Dev> = Host::new(Function::new(
        virtio::net::config_space().expect("virtio-net config space"),
        device,
        FunctionConfig::default(),
    ));
    let image = input.u16() as usize;
    let image = input.bytes(image).to_vec();
    h.mem[..image.len().min(MEM)].copy_from_slice(&image[..image.len().min(MEM)]);

    // Enumeration (maybe MSI-X: a vector per queue and one for config), then the
    // driver's set-up of the three queues.
    h.enumerate(setup & 1 != 0, 4);
    h.virtio_setup(&mut input, setup, 3, |q| q as u64);

    // Polls in a row with no DMA outstanding and no frame given since, after which
    // the backend must be empty.
    let mut idle_polls = 0u32;
    while !input.0.is_empty() {
        match input.u8() % 14 {
            0 | 1 => {
                let q = input.u8() as u64 % 4;
                h.reg(layout::NOTIFY + 4 * q, 2, q);
            }
            2..=4 => h.step(Step::Answer, &mut input),
            5 => h.step(Step::Timeout, &mut input),
            6 => h.step(Step::RegWrite, &mut input),
            7 => h.step(Step::MmioRead, &mut input),
            8 => h.step(Step::MemChange, &mut input),
            9 => {
                // Frames from the network: any length, short and oversized too.
                let n = match input.u8() % 4 {
                    0 => input.u8() as usize,
                    1 => VNET_HDR_LEN + input.u16() as usize % 2048,
                    2 => input.u16() as usize,
                    _ => MAX_FRAME + input.u8() as usize,
                };
                let fill = input.u8();
                let b = h.f.device_mut().device_mut().backend_mut();
                b.inbox.push_back(vec![fill; n]);
                idle_polls = 0;
            }
            10 => {
                // The backend: room for more frames, or none; carrier lost or back.
                let v = input.u8();
                let b = h.f.device_mut().device_mut().backend_mut();
                match v % 4 {
                    0 => b.room = None,
                    1 => b.room = Some(b.sent.len() + v as usize / 4 % 4),
                    2 => b.carrier = !b.carrier,
                    _ => b.sent.clear(),
                }
            }
            11 => {
                let leaving = input.u8() & 1 != 0;
                h.f.set_leaving(h.now, leaving);
                h.pump();
            }
            12 => {
                // Polls in a row with no DMA read outstanding as they start.
                if h.pending.is_empty() && h.f.poll_timeout().is_none() {
                    idle_polls += 1;
                } else {
                    idle_polls = 0;
                }
                h.f.poll_device(h.now);
                h.pump();
            }
            _ => h.step(Step::Reset, &mut input),
        }
        let s = h.f.device().stats();
        assert!(
            s.buffered_peak <= cap,
            "a queue held {} bytes (cap {cap})",
            s.buffered_peak
        );
        let b = h.f.device().device().backend();
        assert!(b.sent.iter().all(|f| f.len() <= MAX_FRAME));
        // A frame waits at most while receive chains are being fetched or the queue's
        // writes drain; with no DMA read outstanding (none asked of the host, none
        // waiting for completions in the framework), a few polls drain the backend.
        if idle_polls >= 4 && h.pending.is_empty() && h.f.poll_timeout().is_none() {
            assert!(
                b.inbox.is_empty(),
                "{} frames left in the backend",
                b.inbox.len()
            );
        }
    }
});
