//! pcap files (Ethernet link type, microsecond timestamps).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

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

/// Reads every frame of a pcap file as `(time in µs, frame)`.
pub fn read(path: &Path) -> Result<Vec<(u64, Vec<u8>)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = PcapReader::new(BufReader::new(file))
        .with_context(|| format!("{} is not a pcap file", path.display()))?;
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.with_context(|| format!("reading {}", path.display()))?;
        out.push((p.timestamp.as_micros() as u64, p.data.into_owned()));
    }
    Ok(out)
}
