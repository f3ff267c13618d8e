//! A fixed loop of parse+build for instruction counting, which is repeatable where
//! timings are not: `valgrind --tool=callgrind target/release/examples/codec_loop 100000`
//! and divide the total by the iteration count.

use tlp::{Bdf, Header, MemRead, Tag, Tlp};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let t = Tlp::new(
        Header::MemRead(MemRead {
            requester: Bdf::from_u16(0x100),
            tag: Tag::wrapping(7),
            address: 0xfebf_0000,
            length_dw: 16,
            first_be: 0xf,
            last_be: 0xf,
            locked: false,
            hint: None,
        }),
        &[],
    );
    let mut buf = [0u8; 16];
    let len = t.emit(&mut buf).expect("valid TLP");
    let mut out = [0u8; 16];
    let mut total = 0usize;
    for _ in 0..n {
        let p = Tlp::parse(std::hint::black_box(&buf[..len])).expect("parses");
        total += p.emit(std::hint::black_box(&mut out)).expect("emits");
    }
    println!("{n} parse+build of a 3DW MRd, {total} bytes written");
}
