//! The frame tag's cost, and the candidates it was chosen among: HMAC-SHA-256 (the
//! one tether uses, `wire::auth`), GMAC (AES-128-GCM with the frame as associated
//! data), ChaCha20-Poly1305 the same way, and keyed BLAKE3; each giving a 16-byte tag over
//! a frame of 64 bytes (an ACK), 256, 1514 (a full frame at MTU 1500) and 9018 bytes.
//! The nonce-based two get a fresh nonce per frame from a counter, as they would
//! need on the wire. docs/wire-format.md gives the numbers and the choice.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 4] = [64, 256, 1514, 9018];

fn bench(c: &mut Criterion) {
    let key = [7u8; 32];
    let mut g = c.benchmark_group("tag");
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        let k = wire::auth::AuthKey::from_secret(&key);
        g.bench_with_input(
            BenchmarkId::new("tether-hmac-sha256", size),
            &frame,
            |b, f| b.iter(|| wire::auth::tag_bytes(&k, black_box(f))),
        );
        g.bench_with_input(BenchmarkId::new("blake3-keyed", size), &frame, |b, f| {
            b.iter(|| {
                let mut t = [0u8; 16];
                blake3::Hasher::new_keyed(&key)
                    .update(black_box(f))
                    .finalize_xof()
                    .fill(&mut t);
                t
            })
        });
        let gcm = aes_gcm::Aes128Gcm::new_from_slice(&key[..16]).unwrap();
        let mut n = 0u64;
        g.bench_with_input(BenchmarkId::new("gmac-aes128", size), &frame, |b, f| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                gcm.encrypt_in_place_detached(&nonce.into(), black_box(f), &mut [])
                    .unwrap()
            })
        });
        let cp = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key).unwrap();
        g.bench_with_input(
            BenchmarkId::new("chacha20-poly1305", size),
            &frame,
            |b, f| {
                b.iter(|| {
                    n += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&n.to_be_bytes());
                    cp.encrypt_in_place_detached(&nonce.into(), black_box(f), &mut [])
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
