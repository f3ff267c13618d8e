//! virtio-net on the virtio PCI transport, driven by the small driver of
//! `common` the way Linux's virtio_net drives it: receive chains posted ahead and
//! filled as frames come (merged over several chains with MRG_RXBUF), transmit chains
//! of every shape (the header split across descriptors, indirect), the control
//! queue, the link in the configuration with its interrupt, on split and packed
//! rings, against an in-memory backend.

mod common;

use common::{avail, Driver, BUFS};
use endpoint::virtio::net::{
    self, ctrl, feature as nf, MemBackend, VirtioNet, MAX_FRAME, VNET_HDR_LEN,
};
use endpoint::virtio::pci::{layout, QueueLimits};
use endpoint::virtio::queue::Descriptor;
use endpoint::virtio::{feature, VirtioPci};
use endpoint::Device;
use proptest::prelude::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// What Linux takes when offered (checksum and segmentation offloads too; packed
/// rings are added by the driver that uses them).
const LINUX: u64 = feature::VERSION_1 | feature::INDIRECT_DESC | nf::BASE | nf::OFFLOADS;
/// Receive buffers at RXB + 0x1_0000 * k; transmit frames at TXB + 0x1_0000 * k.
const RXB: u64 = BUFS;
const TXB: u64 = BUFS + 0x40_0000;

type Net = Driver<VirtioNet<MemBackend>>;

fn net(packed: bool, offloads: bool, accept: u64) -> Net {
    let dev =
        VirtioPci::new(VirtioNet::new(MemBackend::new(), MAC, offloads)).with_packed_ring(true);
    let mut d = Driver::new(dev, 256, packed);
    d.init(accept).expect("features");
    d
}

fn backend(d: &mut Net) -> &mut MemBackend {
    d.dev.device_mut().backend_mut()
}

/// A frame with a zero header (num_buffers aside) and `len` bytes of payload.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)));
    f
}

fn num_buffers(f: &[u8]) -> u16 {
    u16::from_le_bytes([f[10], f[11]])
}

/// Posts receive chain `k`: one writable buffer of `len` bytes.
fn post_rx(d: &mut Net, k: u64, len: u32) -> u16 {
    d.submit(0, &[(RXB + 0x1_0000 * k, len, true)], false)
}

#[test]
fn config_space_is_a_virtio_network_controller() {
    let c = net::config_space().unwrap();
    assert_eq!(c.read16(0), 0x1af4);
    assert_eq!(c.read16(2), 0x1041);
    assert_eq!(c.read32(8) >> 8, 0x020000, "Ethernet controller");
    let m = c.msix_layout().unwrap();
    assert_eq!(m.vectors, 4, "one per queue and one for configuration");
}

#[test]
fn features_and_configuration() {
    let mut d = net(false, false, LINUX);
    let f = d.features();
    assert_eq!(f & nf::OFFLOADS, 0, "no offloads without the header passed");
    assert_eq!(f & nf::BASE, nf::BASE);
    assert_eq!(f & nf::MQ, 0, "one queue pair");
    let mut mac = Vec::new();
    for i in 0..6 {
        mac.push(d.rd(layout::DEVICE + i, 1) as u8);
    }
    assert_eq!(mac, MAC);
    assert_eq!(d.rd(layout::DEVICE + 6, 2), 1, "link up");
    assert_eq!(d.rd(layout::DEVICE + 8, 2), 1, "max_virtqueue_pairs");
    assert_eq!(backend(&mut d).offloads, Default::default());
    // With the header passed: offered, and what the driver took reaches the backend.
    let mut d = net(
        false,
        true,
        feature::VERSION_1 | nf::GUEST_CSUM | nf::GUEST_TSO4,
    );
    assert_eq!(d.features() & nf::OFFLOADS, nf::OFFLOADS);
    let o = backend(&mut d).offloads;
    assert!(o.csum && o.tso4 && !o.tso6 && !o.ufo && !o.ecn);
    // A reset takes them back.
    d.wr(0x14, 1, 0);
    assert_eq!(backend(&mut d).offloads, Default::default());
}

/// Transmit chains of every shape reach the backend whole and in order.
fn transmit_shapes(packed: bool) {
    let mut d = net(packed, true, LINUX);
    let mut want = Vec::new();
    for (k, len) in [60usize, 1514, 9000, 65_000, 1].into_iter().enumerate() {
        let f = frame(len, k as u8);
        let at = TXB + 0x2_0000 * k as u64;
        d.put(at, &f);
        let n = f.len() as u32;
        let shapes: [Vec<(u64, u32, bool)>; 4] = [
            // Header and frame in one buffer (Linux with any_header_sg).
            vec![(at, n, false)],
            // The header alone, then the frame.
            vec![(at, 12, false), (at + 12, n - 12, false)],
            // The header split across three descriptors, the frame in two.
            vec![
                (at, 5, false),
                (at + 5, 1, false),
                (at + 6, 7, false),
                (at + 13, (n - 13) / 2, false),
                (
                    at + 13 + ((n - 13) / 2) as u64,
                    n - 13 - (n - 13) / 2,
                    false,
                ),
            ],
            // Empty descriptors in between.
            vec![(at, 3, false), (at + 3, 0, false), (at + 3, n - 3, false)],
        ];
        for (s, bufs) in shapes.iter().enumerate() {
            for indirect in [false, true] {
                d.submit(1, bufs, indirect);
                d.notify(1);
                d.run();
                let used = d.take_used(1);
                assert_eq!(used.len(), 1, "frame {k} shape {s}");
                assert_eq!(used[0].1, 0, "transmit chains report 0 bytes");
                want.push(f.clone());
            }
        }
    }
    assert!(backend(&mut d).sent == want, "every frame whole, in order");
    let s = d.dev.device().stats();
    assert_eq!(s.tx_packets, want.len() as u64);
    assert_eq!(
        s.tx_bytes,
        want.iter().map(|f| (f.len() - 12) as u64).sum::<u64>()
    );
    assert_eq!(d.counter("virtio_q1_notifications"), want.len() as u64);
    assert_eq!(d.dev.stats().bad_chains, 0);
}

#[test]
fn transmit_chains_of_every_shape_split_ring() {
    transmit_shapes(false);
}

#[test]
fn transmit_chains_of_every_shape_packed_ring() {
    transmit_shapes(true);
}

#[test]
fn short_and_oversized_transmit_frames_are_dropped_and_counted() {
    let mut d = net(false, true, LINUX);
    d.submit(1, &[(TXB, 11, false)], false);
    // Longer than any frame: not kept beyond MAX_FRAME.
    d.submit(
        1,
        &[
            (TXB, 0x8000, false),
            (TXB, 0x8000, false),
            (TXB, 0x100, false),
        ],
        true,
    );
    d.notify(1);
    d.run();
    assert_eq!(d.take_used(1).len(), 2, "both chains come back");
    let s = d.dev.device().stats();
    assert_eq!((s.tx_malformed, s.tx_too_big, s.tx_packets), (1, 1, 0));
    assert!(backend(&mut d).sent.is_empty());
    const { assert!(0x10100 > MAX_FRAME) };
}

#[test]
fn transmit_backpressure_stalls_the_queue_in_order_and_resumes() {
    for packed in [false, true] {
        let mut d = net(packed, false, LINUX);
        backend(&mut d).room = Some(2);
        let mut want = Vec::new();
        for k in 0..10u64 {
            let f = frame(1500, k as u8);
            d.put(TXB + 0x1_0000 * k, &f);
            d.submit(1, &[(TXB + 0x1_0000 * k, f.len() as u32, false)], false);
            want.push(f);
        }
        d.notify(1);
        d.run();
        for _ in 0..5 {
            d.poll();
        }
        assert_eq!(d.take_used(1).len(), 2, "two taken, the rest wait");
        assert_eq!(backend(&mut d).sent.len(), 2);
        let s = d.dev.device().stats();
        assert_eq!(s.tx_backpressure, 1, "one stall, however many retries");
        assert!(d.dev.poll_soon(), "a stalled queue asks to be polled again");
        assert!(d.dev.stats().buffered <= d.dev.limits().buffer_bytes);
        // The backend drains: the queue goes on where it stopped.
        backend(&mut d).room = None;
        d.poll();
        assert_eq!(d.take_used(1).len(), 8);
        assert!(!d.dev.poll_soon());
        assert!(
            backend(&mut d).sent == want,
            "in order, none lost or doubled"
        );
        assert_eq!(d.dev.stats().buffered, 0);
    }
}

/// Frames from the backend over merged receive buffers: each takes the chains it
/// needs, num_buffers says how many, the used lengths add up to it.
fn receive_merged(packed: bool) {
    let mut d = net(packed, true, LINUX);
    let heads: Vec<u16> = (0..32).map(|k| post_rx(&mut d, k, 1000)).collect();
    d.notify(0);
    d.run();
    let frames = [frame(60, 1), frame(2500, 2), frame(988, 3), frame(989, 4)];
    for f in &frames {
        backend(&mut d).inbox.push_back(f.clone());
    }
    d.poll();
    let used = d.take_used(0);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, vec![72, 1000, 1000, 512, 1000, 1000, 1]);
    let ids: Vec<u16> = used.iter().map(|u| u.0).collect();
    assert_eq!(ids, heads[..7]);
    // Reassemble as Linux does: num_buffers chains per frame.
    let mut k = 0;
    for f in &frames {
        let first = d.get(RXB + 0x1_0000 * k, lens[k as usize] as usize);
        let n = num_buffers(&first) as u64;
        let mut got = first;
        for j in 1..n {
            got.extend(d.get(RXB + 0x1_0000 * (k + j), lens[(k + j) as usize] as usize));
        }
        let mut want = f.clone();
        want[10..12].copy_from_slice(&(n as u16).to_le_bytes());
        assert!(got == want, "frame of {} bytes", f.len());
        k += n;
    }
    let s = d.dev.device().stats();
    assert_eq!(s.rx_packets, 4);
    assert_eq!(s.rx_bytes, 60 + 2500 + 988 + 989);
    assert_eq!(d.counter("virtio_q0_interrupts"), 4, "one per frame");
}

#[test]
fn receive_merges_buffers_split_ring() {
    receive_merged(false);
}

#[test]
fn receive_merges_buffers_packed_ring() {
    receive_merged(true);
}

#[test]
fn without_mergeable_buffers_a_frame_takes_one_chain_or_is_dropped() {
    let mut d = net(false, false, LINUX & !nf::MRG_RXBUF);
    // A chain of the header and the frame in two buffers (Linux's small buffers).
    d.submit(0, &[(RXB, 12, true), (RXB + 0x100, 1518, true)], false);
    d.notify(0);
    d.run();
    backend(&mut d).inbox.push_back(frame(4000, 9));
    backend(&mut d).inbox.push_back(frame(1500, 7));
    d.poll();
    let used = d.take_used(0);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 1512);
    let mut got = d.get(RXB, 12);
    got.extend(d.get(RXB + 0x100, 1500));
    let mut want = frame(1500, 7);
    want[10] = 1;
    assert_eq!(got, want, "num_buffers 1");
    let s = d.dev.device().stats();
    assert_eq!((s.rx_too_big, s.rx_packets), (1, 1));
}

#[test]
fn a_guest_that_posts_no_receive_buffers_loses_frames_counted_and_nothing_blocks() {
    let mut d = net(false, false, LINUX);
    for k in 0..1000 {
        backend(&mut d).inbox.push_back(frame(100, k as u8));
    }
    for _ in 0..10 {
        d.poll();
    }
    assert!(backend(&mut d).inbox.is_empty(), "the backend is drained");
    assert_eq!(d.dev.device().stats().rx_no_buffer, 1000);
    // Transmit still works meanwhile.
    d.put(TXB, &frame(60, 0));
    d.submit(1, &[(TXB, 72, false)], false);
    d.notify(1);
    d.run();
    assert_eq!(d.take_used(1).len(), 1);
    // Before the driver is ready, frames are drained too.
    let dev = VirtioPci::new(VirtioNet::new(MemBackend::new(), MAC, false));
    let mut d = Driver::new(dev, 64, false);
    backend(&mut d).inbox.push_back(frame(100, 0));
    d.poll();
    assert!(backend(&mut d).inbox.is_empty());
    assert_eq!(d.dev.device().stats().rx_no_buffer, 1);
}

#[test]
fn receive_stays_within_the_queue_buffer() {
    let dev =
        VirtioPci::new(VirtioNet::new(MemBackend::new(), MAC, false)).with_limits(QueueLimits {
            buffer_bytes: 4096,
            chunk_bytes: 4096,
        });
    let mut d = Driver::new(dev, 64, false);
    d.init(LINUX).unwrap();
    for k in 0..40 {
        post_rx(&mut d, k, 1500);
    }
    d.notify(0);
    d.run();
    for k in 0..40 {
        backend(&mut d).inbox.push_back(frame(1400, k as u8));
    }
    // One poll, the device's writes not yet known done: it stops at the buffer.
    d.dev.poll(&mut d.io);
    assert!(d.dev.stats().buffered <= 4096);
    assert!(d.take_used(0).len() < 40);
    assert!(
        !backend(&mut d).inbox.is_empty(),
        "the rest waits in the backend"
    );
    for _ in 0..40 {
        d.poll();
    }
    d.take_used(0);
    assert_eq!(d.dev.device().stats().rx_packets, 40);
    assert!(d.dev.stats().buffered_peak <= 4096);
}

#[test]
fn link_down_and_up_raise_the_config_interrupt() {
    let mut d = net(false, false, LINUX);
    d.io.msix = true;
    for q in 0..3 {
        d.set_vector(Some(q), q);
    }
    d.set_vector(None, 3);
    backend(&mut d).carrier = false;
    d.poll();
    assert_eq!(d.rd(layout::DEVICE + 6, 2), 0, "link down");
    assert_eq!(d.io.vectors, vec![3]);
    d.poll();
    assert_eq!(d.io.vectors, vec![3], "once per change");
    backend(&mut d).carrier = true;
    d.poll();
    assert_eq!(d.rd(layout::DEVICE + 6, 2), 1);
    assert_eq!(d.io.vectors, vec![3, 3]);
    // The box says the device is leaving: down although the backend has carrier.
    d.dev.set_leaving(true, &mut d.io);
    assert_eq!(d.rd(layout::DEVICE + 6, 2), 0);
    assert_eq!(d.io.vectors, vec![3, 3, 3]);
    assert_eq!(d.dev.device().stats().link_changes, 3);
    // Queues signal their own vectors.
    post_rx(&mut d, 0, 2000);
    d.notify(0);
    d.run();
    backend(&mut d).inbox.push_back(frame(10, 0));
    d.poll();
    d.put(TXB, &frame(60, 0));
    d.submit(1, &[(TXB, 72, false)], false);
    d.notify(1);
    d.run();
    assert_eq!(d.io.vectors, vec![3, 3, 3, 0, 1]);
}

/// Sends a control command (class, command, data) and returns the answer and the
/// used length.
fn command(d: &mut Net, class: u8, cmd: u8, data: &[u8]) -> (u8, u32) {
    let at = BUFS + 0x70_0000;
    d.put(at, &[class, cmd]);
    d.put(at + 0x10, data);
    d.put(at + 0x1000, &[0xee]);
    let mut bufs = vec![(at, 2, false)];
    if !data.is_empty() {
        bufs.push((at + 0x10, data.len() as u32, false));
    }
    bufs.push((at + 0x1000, 1, true));
    d.submit(2, &bufs, false);
    d.notify(2);
    d.run();
    let used = d.take_used(2);
    assert_eq!(used.len(), 1);
    (d.get(at + 0x1000, 1)[0], used[0].1)
}

#[test]
fn control_queue_commands() {
    for packed in [false, true] {
        let mut d = net(packed, false, LINUX);
        assert_eq!(
            command(&mut d, ctrl::CLASS_RX, ctrl::RX_PROMISC, &[1]),
            (ctrl::OK, 1)
        );
        assert_eq!(
            command(&mut d, ctrl::CLASS_RX, ctrl::RX_ALLMULTI, &[1]),
            (ctrl::OK, 1)
        );
        assert_eq!(d.dev.device().rx_modes(), (true, true));
        assert_eq!(
            command(&mut d, ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0]).0,
            ctrl::OK
        );
        assert_eq!(d.dev.device().rx_modes(), (false, true));
        // A MAC table: one unicast, two multicast addresses.
        let mut table = 1u32.to_le_bytes().to_vec();
        table.extend([2; 6]);
        table.extend(2u32.to_le_bytes());
        table.extend([1; 12]);
        assert_eq!(
            command(&mut d, ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &table).0,
            ctrl::OK
        );
        // Counts that do not match the bytes.
        table[0] = 5;
        assert_eq!(
            command(&mut d, ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &table).0,
            ctrl::ERR
        );
        let new = [0x02, 0, 0, 0, 0, 7];
        assert_eq!(
            command(&mut d, ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &new).0,
            ctrl::OK
        );
        assert_eq!(d.dev.device().mac(), new);
        assert_eq!(d.rd(layout::DEVICE + 5, 1), 7, "the configuration shows it");
        // Unknown or not negotiated: ERR.
        assert_eq!(command(&mut d, 4, 0, &[1, 0]).0, ctrl::ERR);
        assert_eq!(command(&mut d, 99, 99, &[]).0, ctrl::ERR);
        assert_eq!(
            command(&mut d, ctrl::CLASS_RX, ctrl::RX_PROMISC, &[]).0,
            ctrl::ERR
        );
        let s = d.dev.device().stats();
        assert_eq!((s.ctrl_commands, s.ctrl_errors), (9, 4));
        // A reset restores the box's MAC.
        d.wr(0x14, 1, 0);
        assert_eq!(d.dev.device().mac(), MAC);
    }
}

#[test]
fn counters_name_queues_drops_and_commands() {
    let d = net(false, false, LINUX);
    let names: Vec<&str> = d.dev.counters().into_iter().map(|c| c.0).collect();
    for n in [
        "net_rx_packets",
        "net_rx_bytes",
        "net_tx_packets",
        "net_tx_bytes",
        "net_rx_no_buffer",
        "net_rx_too_big",
        "net_tx_backpressure",
        "net_ctrl_commands",
        "virtio_q0_notifications",
        "virtio_q2_interrupts",
    ] {
        assert!(names.contains(&n), "{n}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Frames of any size over receive chains of any sizes and shapes (the header
    /// split across descriptors, indirect tables) arrive whole:
    /// every frame that found room is reassembled from num_buffers chains; the others
    /// are counted drops.
    #[test]
    fn any_frames_over_any_receive_chains(
        sizes in proptest::collection::vec(0usize..9000, 1..12),
        // Each chain holds at least the header, as the driver must make it; its
        // descriptors may cut the header anywhere (up to five of them).
        chains in proptest::collection::vec((12u32..3000, 1u32..6, any::<bool>()), 1..48),
        packed in any::<bool>(),
        mergeable in any::<bool>(),
    ) {
        let accept = if mergeable { LINUX } else { LINUX & !nf::MRG_RXBUF };
        let mut d = net(packed, true, accept);
        let mut layouts = std::collections::HashMap::new();
        for (k, &(len, parts, indirect)) in chains.iter().enumerate() {
            let base = RXB + 0x1_0000 * k as u64;
            let part = len.div_ceil(parts);
            let bufs: Vec<_> = (0..parts)
                .map(|i| (base + 0x3000 * i as u64, part.min(len - (part * i).min(len)), true))
                .filter(|b| b.1 > 0)
                .collect();
            let id = d.submit(0, &bufs, indirect);
            layouts.insert(id, bufs);
        }
        d.notify(0);
        d.run();
        for (k, &s) in sizes.iter().enumerate() {
            backend(&mut d).inbox.push_back(frame(s, k as u8));
        }
        for _ in 0..4 {
            d.poll();
        }
        prop_assert!(backend(&mut d).inbox.is_empty());
        let used = d.take_used(0);
        let read = |d: &Net, id: u16, len: u32| {
            let mut out = Vec::new();
            let mut left = len as usize;
            for &(addr, l, _) in &layouts[&id] {
                let n = left.min(l as usize);
                out.extend(d.get(addr, n));
                left -= n;
            }
            out
        };
        let mut got = Vec::new();
        let mut i = 0;
        while i < used.len() {
            let first = read(&d, used[i].0, used[i].1);
            prop_assert!(first.len() >= 12);
            let n = num_buffers(&first) as usize;
            prop_assert!(n >= 1 && i + n <= used.len());
            prop_assert!(mergeable || n == 1);
            let mut f = first;
            for j in 1..n {
                f.extend(read(&d, used[i + j].0, used[i + j].1));
            }
            f[10] = 0;
            f[11] = 0;
            got.push(f);
            i += n;
        }
        let s = d.dev.device().stats();
        prop_assert_eq!(got.len() as u64, s.rx_packets);
        prop_assert_eq!(s.rx_packets + s.rx_no_buffer + s.rx_too_big, sizes.len() as u64);
        // Room for every frame (a frame wastes less than a chain): all delivered.
        let room: u64 = chains.iter().map(|c| c.0 as u64).sum();
        let need: u64 = sizes.iter().map(|&s| s as u64 + 12 + 3000).sum();
        if mergeable && room >= need {
            prop_assert_eq!(s.rx_packets, sizes.len() as u64);
        }
        // What arrived is a subsequence of what was sent, each frame whole.
        let sent: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(k, &s)| frame(s, k as u8)).collect();
        let mut it = sent.iter();
        for g in &got {
            prop_assert!(it.any(|s| s == g), "a frame arrived changed or out of order");
        }
        prop_assert_eq!(d.dev.stats().bad_chains, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the driver puts in the receive and transmit rings, the device does
    /// not panic, frames it sends are within MAX_FRAME, its buffers stay within the
    /// queue's, and the backend is drained.
    #[test]
    fn garbage_rings_never_panic(
        descs in proptest::collection::vec(any::<(u16, u32, u16, u16)>(), 16),
        idx in any::<(u16, u16)>(),
        table in proptest::collection::vec(any::<u8>(), 0..512),
        packed in any::<bool>(),
        frames in proptest::collection::vec(0usize..3000, 0..8),
    ) {
        let mut d = net(packed, true, LINUX);
        for q in 0..3u16 {
            for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
                let desc = Descriptor {
                    addr: BUFS + addr as u64 * 16,
                    len: len % 0x2_0000,
                    flags: if packed { flags } else { flags & 7 },
                    next: next % 70,
                };
                let mut b = desc.emit();
                if packed {
                    b[12..14].copy_from_slice(&next.to_le_bytes());
                    b[14..16].copy_from_slice(&flags.to_le_bytes());
                }
                d.put(common::desc(q) + 16 * i as u64, &b);
            }
            d.put(avail(q), &0u16.to_le_bytes());
            d.put(avail(q) + 2, &if q == 0 { idx.0 } else { idx.1 }.to_le_bytes());
            for i in 0..16u16 {
                d.put(avail(q) + 4 + 2 * i as u64, &(i * 3 % 70).to_le_bytes());
            }
            d.put(common::desc(q) + 0x1_0000, &table);
        }
        for (k, &s) in frames.iter().enumerate() {
            backend(&mut d).inbox.push_back(frame(s, k as u8));
        }
        for q in 0..3 {
            d.notify(q);
        }
        d.run();
        for _ in 0..3 {
            d.poll();
        }
        prop_assert!(backend(&mut d).inbox.is_empty());
        for f in &backend(&mut d).sent {
            prop_assert!(f.len() <= MAX_FRAME);
        }
        prop_assert!(d.dev.stats().buffered_peak <= d.dev.limits().buffer_bytes);
    }
}

/// Linux turns a queue's interrupts off while it polls, refills the receive ring
/// (notifying with interrupts off), and turns them back on without notifying. A
/// frame that comes after must still interrupt: the device reads the flags again
/// behind the used elements it wrote on its own.
#[test]
fn interrupts_turned_back_on_without_a_notification_are_seen() {
    for packed in [false, true] {
        let mut d = net(packed, false, LINUX);
        // Split: avail flags NO_INTERRUPT; packed: the driver event flags DISABLE.
        let (flags_at, off, on) = if packed {
            (avail(0) + 2, 1u16, 0u16)
        } else {
            (avail(0), 1u16, 0u16)
        };
        d.put(flags_at, &off.to_le_bytes());
        for k in 0..4 {
            post_rx(&mut d, k, 2000);
        }
        d.notify(0);
        d.run();
        // Still off: the frame is used, no interrupt.
        backend(&mut d).inbox.push_back(frame(100, 1));
        d.poll();
        assert_eq!(d.take_used(0).len(), 1);
        assert!(!d.io.intx, "packed {packed}: interrupts off");
        // Back on, no notification: the next frame interrupts.
        d.put(flags_at, &on.to_le_bytes());
        backend(&mut d).inbox.push_back(frame(100, 2));
        d.poll();
        assert_eq!(d.take_used(0).len(), 1);
        assert!(d.io.intx, "packed {packed}: interrupts back on");
        assert_eq!(d.counter("virtio_q0_interrupts"), 1);
    }
}
