//! Writes the seed corpus for every fuzz target (fuzz/) from the sample conversation:
//! `cargo run -p wire --example fuzz_seeds -- DIR` creates DIR/<target>/<name>.
use std::fs;
use std::path::Path;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    let dir = Path::new(&dir);
    for t in ["tlp", "frame", "payload", "reassembly"] {
        fs::create_dir_all(dir.join(t)).unwrap();
    }
    for (i, f) in wire::sample::frames().iter().enumerate() {
        let mut framed = vec![1u8];
        framed.extend_from_slice(&f.bytes);
        fs::write(dir.join("frame").join(format!("sample-{i:02}")), &framed).unwrap();
        let frame = wire::Frame::parse(&f.bytes, None).unwrap();
        let which = match frame.header.kind {
            wire::FrameKind::Data => 0u8,
            wire::FrameKind::Info => 1,
            wire::FrameKind::Ctrl => 2,
            _ => continue,
        };
        let mut p = vec![which];
        p.extend_from_slice(frame.payload);
        fs::write(dir.join("payload").join(format!("sample-{i:02}")), &p).unwrap();
        if let Ok(wire::Body::Data(records)) = frame.body() {
            for (j, r) in records.enumerate() {
                let r = r.unwrap();
                fs::write(
                    dir.join("tlp").join(format!("sample-{i:02}-{j:02}")),
                    r.body,
                )
                .unwrap();
            }
        }
    }
    // A 128-byte read at 0x1010 whose completions arrive in order, unmutated.
    let mut r = vec![0x10, 0x10, 0, 0, 0, 0, 0, 0, 31, 0, 0xff, 0];
    r.extend_from_slice(&[7, 0, 7, 1, 7, 2]);
    fs::write(dir.join("reassembly").join("split-read"), &r).unwrap();
}
