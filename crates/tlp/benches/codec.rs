//! TLP codec throughput: parse, build, and parse+build (the per-core goal: 50 M TLP
//! headers parsed and built per second), for 3DW/4DW headers and 0/64/256-byte payloads,
//! plus the zero-copy view's checked access.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tlp::{Bdf, Completion, CompletionStatus, Header, MemRead, MemWrite, Tag, Tlp, TlpPacket};

fn cases(payload: &[u8]) -> Vec<(&'static str, Tlp<'_>)> {
    let rd = |address| {
        Header::MemRead(MemRead {
            requester: Bdf::from_u16(0x0100),
            tag: Tag::wrapping(7),
            address,
            length_dw: 16,
            first_be: 0xf,
            last_be: 0xf,
            locked: false,
            hint: None,
        })
    };
    let wr = |address| {
        Header::MemWrite(MemWrite {
            requester: Bdf::from_u16(0x0100),
            tag: Tag::default(),
            address,
            first_be: 0xf,
            last_be: 0xf,
            hint: None,
        })
    };
    let cpl = Header::Completion(Completion {
        completer: Bdf::from_u16(0x0100),
        status: CompletionStatus::Success,
        bcm: false,
        byte_count: 256,
        requester: Bdf::default(),
        tag: Tag::wrapping(7),
        lower_address: 0,
        locked: false,
    });
    vec![
        ("MRd 3DW 0B", Tlp::new(rd(0xfebf_0000), &[])),
        ("MRd 4DW 0B", Tlp::new(rd(0x8_0000_0000), &[])),
        ("MWr 3DW 64B", Tlp::new(wr(0xfebf_0000), &payload[..64])),
        ("MWr 4DW 64B", Tlp::new(wr(0x8_0000_0000), &payload[..64])),
        ("MWr 3DW 256B", Tlp::new(wr(0xfebf_0000), &payload[..256])),
        ("MWr 4DW 256B", Tlp::new(wr(0x8_0000_0000), &payload[..256])),
        ("CplD 256B", Tlp::new(cpl, &payload[..256])),
    ]
}

fn bench(c: &mut Criterion) {
    let payload = vec![0xa5u8; 256];
    let cases = cases(&payload);
    let mut g = c.benchmark_group("tlp");
    g.throughput(Throughput::Elements(1));
    for (name, tlp) in &cases {
        let mut buf = vec![0u8; tlp.buffer_len()];
        tlp.emit(&mut buf).unwrap();
        g.bench_with_input(BenchmarkId::new("parse", name), &buf, |b, buf| {
            b.iter(|| Tlp::parse(black_box(buf)).unwrap())
        });
        let mut out = vec![0u8; tlp.buffer_len()];
        g.bench_with_input(BenchmarkId::new("build", name), tlp, |b, tlp| {
            b.iter(|| black_box(tlp).emit(black_box(&mut out)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("view", name), &buf, |b, buf| {
            b.iter(|| {
                // Zero-copy: size/type check, then the fields a dispatcher reads.
                let v = TlpPacket::new_checked(black_box(&buf[..])).unwrap();
                (
                    v.type_bits(),
                    v.id(),
                    v.request_tag(),
                    v.address(),
                    v.length_dw(),
                    v.payload().len(),
                )
            })
        });
        let mut out = vec![0u8; tlp.buffer_len()];
        g.bench_with_input(BenchmarkId::new("parse+build", name), &buf, |b, buf| {
            b.iter(|| {
                let t = Tlp::parse(black_box(buf)).unwrap();
                t.emit(black_box(&mut out)).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
