//! pcap files (Ethernet link type, microsecond timestamps).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::TsResolution;

/// Writes `(time in µs since the epoch, frame)` pairs to a new pcap file.
pub fn write(path: &Path, frames: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
    let mut w = Writer::create(path)?;
    for (t, bytes) in frames {
        w.write(t, &bytes)?;
    }
    w.finish()
}

/// An open pcap file being written.
pub struct Writer {
    inner: PcapWriter<BufWriter<File>>,
    path: std::path::PathBuf,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let inner = PcapWriter::new(BufWriter::new(file))
            .with_context(|| format!("writing pcap header to {}", path.display()))?;
        Ok(Writer {
            inner,
            path: path.to_owned(),
        })
    }

    pub fn write(&mut self, time_us: u64, frame: &[u8]) -> Result<()> {
        let packet = PcapPacket::new(Duration::from_micros(time_us), frame.len() as u32, frame);
        self.inner
            .write_packet(&packet)
            .with_context(|| format!("writing to {}", self.path.display()))?;
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        use std::io::Write;
        let path = self.path;
        self.inner
            .into_writer()
            .flush()
            .with_context(|| format!("flushing {}", path.display()))
    }
}

/// Reads every frame of a pcap file as `(time in µs, frame)`: what was captured of
/// each (a capture with a snap length keeps the start of longer frames). Read as raw
/// records, since pcap-file 2.0 refuses a frame longer than the snap length, which is
/// just what `dumpcap -s` and `tcpdump -s` write.
pub fn read(path: &Path) -> Result<Vec<(u64, Vec<u8>)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = PcapReader::new(BufReader::new(file))
        .with_context(|| format!("{} is not a pcap file", path.display()))?;
    let per_second = match r.header().ts_resolution {
        TsResolution::MicroSecond => 1_000_000,
        TsResolution::NanoSecond => 1_000_000_000,
    };
    let mut out = Vec::new();
    while let Some(p) = r.next_raw_packet() {
        let p = p.with_context(|| format!("reading {}", path.display()))?;
        if p.ts_frac >= per_second {
            bail!(
                "reading {}: a timestamp's fraction is {}",
                path.display(),
                p.ts_frac
            );
        }
        let frac_us = u64::from(p.ts_frac) * 1_000_000 / u64::from(per_second);
        out.push((
            u64::from(p.ts_sec) * 1_000_000 + frac_us,
            p.data.into_owned(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap file as dumpcap writes it with `-s 64`: frames longer than 64 bytes keep
    /// their first 64 and their original length; microsecond or nanosecond stamps.
    fn capture(magic: u32, frac: u32) -> Vec<u8> {
        let mut f = Vec::new();
        for v in [magic, 0x0004_0002, 0, 0, 64, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        // One frame of 100 bytes cut at 64, one of 20 whole.
        for (sec, incl, orig) in [(7u32, 64u32, 100u32), (8, 20, 20)] {
            for v in [sec, frac, incl, orig] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend((0..incl).map(|i| i as u8));
        }
        f
    }

    #[test]
    fn frames_cut_at_the_snap_length_are_read_with_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcap");
        for (magic, frac, us) in [(0xa1b2_c3d4, 250, 250), (0xa1b2_3c4d, 250_000, 250)] {
            std::fs::write(&path, capture(magic, frac)).unwrap();
            let frames = read(&path).unwrap();
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[0].0, 7_000_000 + us);
            assert_eq!(frames[0].1.len(), 64, "what was captured");
            assert_eq!(frames[1], (8_000_000 + us, (0..20).collect::<Vec<u8>>()));
        }
        // A fraction of a second that is a second or more is refused.
        std::fs::write(&path, capture(0xa1b2_c3d4, 1_000_000)).unwrap();
        assert!(read(&path).is_err());
    }
}
