//! The virtio queue engine as the box runs it: a virtio-blk function on the endpoint
//! framework, driven by TLPs only. The input sets the device up (features, split or
//! packed ring, queue size, ring addresses, MSI-X, the queue's buffer and chunk
//! sizes: all free), fills a guest memory that every address of the 64-bit space
//! mirrors (so any descriptor address or length reaches real bytes), and then runs
//! steps: notifications, the device's DMA reads answered in any order (whole, with
//! an error status, mangled or short, or never, then a completion timeout), guest
//! memory changed under the device (duplicate heads, new avail/used indices, rewritten
//! descriptors), any BAR0 register written or read, and function resets.
//! The device must never panic, must only send TLPs that parse, and must never hold
//! more than its queue buffer for requests in flight.
#![no_main]

use endpoint::virtio::blk::{MemBackend, VirtioBlk};
use endpoint::virtio::pci::{layout, QueueLimits};
use endpoint::virtio::{self, VirtioPci};
use endpoint::{Function, FunctionConfig};
use libfuzzer_sys::fuzz_target;
use tether_fuzz::virtio_host::{Host, Step, MEM};
use tether_fuzz::Input;

const DISK: usize = 64 << 10;

type Dev = VirtioPci<VirtioBlk<MemBackend>>;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let limits = QueueLimits {
        buffer_bytes: 1 + input.u16() as u64 * 64,
        chunk_bytes: 1 + input.u16() as usize * 16,
    };
    let device = VirtioPci::new(VirtioBlk::new(MemBackend(vec![0; DISK]), "fuzz"))
        .with_packed_ring(true)
        .with_limits(limits);
    let cap = device.limits().buffer_bytes;
    let mut h: Host<Dev> = Host::new(Function::new(
        virtio::blk::config_space().expect("virtio-blk config space"),
        device,
        FunctionConfig::default(),
    ));
    let image = input.u16() as usize;
    let image = input.bytes(image).to_vec();
    h.mem[..image.len().min(MEM)].copy_from_slice(&image[..image.len().min(MEM)]);

    // Enumeration (maybe MSI-X: one vector for config, one for the queue), then the
    // driver's set-up of the queue.
    let setup = input.u8();
    h.enumerate(setup & 1 != 0, 2);
    h.virtio_setup(&mut input, setup, 1, |_| 1);

    while !input.0.is_empty() {
        match input.u8() % 10 {
            0 | 1 => h.reg(layout::NOTIFY, 2, 0),
            2..=4 => h.step(Step::Answer, &mut input),
            5 => h.step(Step::Timeout, &mut input),
            6 => h.step(Step::RegWrite, &mut input),
            7 => h.step(Step::MmioRead, &mut input),
            8 => h.step(Step::MemChange, &mut input),
            _ => h.step(Step::Reset, &mut input),
        }
        let s = h.f.device().stats();
        assert!(
            s.buffered_peak <= cap,
            "a queue held {} bytes (cap {cap})",
            s.buffered_peak
        );
    }
});
