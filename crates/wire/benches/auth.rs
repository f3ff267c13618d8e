//! The frame tags' cost, and the candidates they were chosen among, each giving a
//! 16-byte tag over a frame of 64 bytes (an ACK), 256, 1514 (a full frame at MTU 1500)
//! and 9018 bytes:
//! - tether's two (`wire::auth`): HMAC-SHA-256 under the group key (INFO, CTRL), and
//!   the session tag (AES-128-GCM's tag with the frame as the message, the ciphertext
//!   thrown away; DATA, ACK, NAK);
//! - GMAC (AES-128-GCM with the frame as associated data) and ChaCha20-Poly1305 the
//!   same way, from RustCrypto (`aes-gcm`, `chacha20poly1305`) and from `ring`;
//! - keyed BLAKE3.
//!
//! The nonce-based ones get a fresh nonce per frame from a counter, as they need on
//! the wire. docs/wire-format.md gives the numbers and the choice.

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
        let session = k.session_key(wire::MacAddr([2, 0, 0, 0, 0, 1]));
        let mut nonces = wire::NonceSeq::new(1, 1);
        let aad = [0u8; 14];
        g.bench_with_input(
            BenchmarkId::new("tether-session-aes128gcm", size),
            &frame,
            |b, f| b.iter(|| session.tag(&nonces.next(), &aad, black_box(f))),
        );
        let ring_gcm = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key[..16]).unwrap(),
        );
        let ring_chacha = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key).unwrap(),
        );
        for (name, aead) in [
            ("ring-gmac-aes128", &ring_gcm),
            ("ring-chacha20-poly1305", &ring_chacha),
        ] {
            g.bench_with_input(BenchmarkId::new(name, size), &frame, |b, f| {
                b.iter(|| {
                    let nonce = nonces.next();
                    aead.seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce.0),
                        ring::aead::Aad::from(black_box(f.as_slice())),
                        &mut [],
                    )
                    .unwrap()
                })
            });
        }
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
