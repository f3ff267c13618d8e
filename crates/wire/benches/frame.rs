//! Frame codec throughput: build and parse whole tether frames (Ethernet + 802.1Q +
//! header + CRC-32C + records), one TLP per frame and aggregated.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tlp::{Bdf, Header, MemRead, MemWrite, Tag, Tlp};
use wire::{
    Body, EthernetRepr, Frame, FrameKind, FrameWriter, MacAddr, TetherHeader, VlanTag, ETHERTYPE,
};

fn eth() -> EthernetRepr {
    EthernetRepr {
        dst: MacAddr([2, 0, 0, 0, 0, 2]),
        src: MacAddr([2, 0, 0, 0, 0, 1]),
        vlan: Some(VlanTag {
            pcp: 0,
            dei: false,
            vid: 10,
        }),
        ethertype: ETHERTYPE,
    }
}

fn build(buf: &mut [u8], tlps: &[Tlp<'_>]) -> usize {
    let mut w = FrameWriter::new(buf, &eth()).unwrap();
    for t in tlps {
        w.push_tlp(t).unwrap();
    }
    let mut h = TetherHeader::new(FrameKind::Data);
    h.seq = 42;
    w.finish(&h).unwrap()
}

fn parse(frame: &[u8]) -> usize {
    let f = Frame::parse(frame, None).unwrap();
    let Body::Data(records) = f.body().unwrap() else {
        unreachable!()
    };
    let mut n = 0;
    for r in records {
        let t = r.unwrap().tlp().unwrap();
        n += t.payload.len() + 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let payload = vec![0x5au8; 256];
    let rd = Tlp::new(
        Header::MemRead(MemRead {
            requester: Bdf::default(),
            tag: Tag::wrapping(3),
            address: 0xfebf_0000,
            length_dw: 1,
            first_be: 0xf,
            last_be: 0,
            locked: false,
            hint: None,
        }),
        &[],
    );
    let wr = |len: usize, i: u64| {
        Tlp::new(
            Header::MemWrite(MemWrite {
                requester: Bdf::default(),
                tag: Tag::default(),
                address: 0x1000_0000 + i * 256,
                first_be: 0xf,
                last_be: 0xf,
                hint: None,
            }),
            &payload[..len],
        )
    };
    let cases: Vec<(&str, Vec<Tlp<'_>>)> = vec![
        ("1x MRd", vec![rd]),
        ("1x MWr 64B", vec![wr(64, 0)]),
        ("1x MWr 256B", vec![wr(256, 0)]),
        ("16x MWr 64B", (0..16).map(|i| wr(64, i)).collect()),
        ("5x MWr 256B", (0..5).map(|i| wr(256, i)).collect()),
    ];
    let mut g = c.benchmark_group("frame");
    for (name, tlps) in &cases {
        g.throughput(Throughput::Elements(tlps.len() as u64));
        let mut buf = vec![0u8; 9018];
        g.bench_with_input(BenchmarkId::new("build", name), tlps, |b, tlps| {
            b.iter(|| build(black_box(&mut buf), black_box(tlps)))
        });
        let mut frame = vec![0u8; 9018];
        let n = build(&mut frame, tlps);
        frame.truncate(n);
        g.bench_with_input(BenchmarkId::new("parse", name), &frame, |b, frame| {
            b.iter(|| parse(black_box(frame)))
        });
        let mut buf = vec![0u8; 9018];
        g.bench_with_input(BenchmarkId::new("parse+build", name), &frame, |b, frame| {
            b.iter(|| {
                let n = parse(black_box(frame));
                build(black_box(&mut buf), black_box(tlps)) + n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
