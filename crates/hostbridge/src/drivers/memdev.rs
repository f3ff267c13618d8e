//! A host-side driver for `memdev`, on the root complex's driver API: what a
//! user-space driver for a real DMA engine looks like with tether.

use std::time::{Duration, Instant};

use endpoint::memdev::{self, error, regs, status};
use rootcomplex::{Host, HostError, Link};
use thiserror::Error;
use tlp::Bdf;

#[derive(Debug, Error)]
pub enum DriverError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{0} is not a memdev (magic {1:#010x})")]
    NotMemdev(Bdf, u32),
    #[error("no interrupt within {0:?}")]
    NoInterrupt(Duration),
    #[error("{0} was enumerated without a way to signal vector 0")]
    NoIrq(Bdf),
    #[error("the device reports error {0} ({1})")]
    Device(u32, &'static str),
    #[error("{len} bytes copied from {src:#x} to {dst:#x} differ from what was written")]
    Mismatch { src: u64, dst: u64, len: usize },
}

fn error_name(e: u32) -> &'static str {
    match e {
        error::BAD_ARGS => "bad arguments",
        error::BUS_MASTER => "bus mastering off",
        error::DMA_STATUS => "DMA failed",
        error::TIMEOUT => "completion timeout",
        error::BUSY => "doorbell while busy",
        _ => "unknown",
    }
}

/// An enumerated memdev at `bdf`.
#[derive(Clone, Copy, Debug)]
pub struct MemDevDriver {
    pub bdf: Bdf,
    pub buffer_size: u32,
}

impl MemDevDriver {
    /// Checks that the enumerated function at `bdf` is a memdev.
    pub fn probe<L: Link>(host: &mut Host<L>, bdf: Bdf) -> Result<MemDevDriver, DriverError> {
        let magic = host.bar_read32(bdf, 0, regs::MAGIC)?;
        if magic != memdev::MAGIC {
            return Err(DriverError::NotMemdev(bdf, magic));
        }
        let buffer_size = host.bar_read32(bdf, 0, regs::BUF_SIZE)?;
        Ok(MemDevDriver { bdf, buffer_size })
    }

    /// Runs one operation (`memdev::op::READ`, `WRITE` or `COPY`) and waits for its
    /// interrupt; `Ok` when the device reports it done: [`MemDevDriver::start`], then
    /// [`MemDevDriver::wait`].
    pub fn run<L: Link>(
        &self,
        host: &mut Host<L>,
        op: u32,
        src: u64,
        dst: u64,
        len: u32,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        self.start(host, op, src, dst, len)?;
        self.wait(host, timeout)
    }

    /// Programs one operation and rings the doorbell, without waiting: several
    /// devices may work at once, each waited for with [`MemDevDriver::wait`].
    pub fn start<L: Link>(
        &self,
        host: &mut Host<L>,
        op: u32,
        src: u64,
        dst: u64,
        len: u32,
    ) -> Result<(), DriverError> {
        let b = self.bdf;
        self.armed(host)?;
        for (r, v) in memdev::start_writes(op, src, dst, len, true) {
            host.bar_write32(b, 0, r, v)?;
        }
        Ok(())
    }

    /// How vector 0 of the device reaches the host, as enumeration set it up.
    fn armed<L: Link>(&self, host: &Host<L>) -> Result<rootcomplex::Armed, DriverError> {
        let b = self.bdf;
        host.devices()
            .iter()
            .find(|d| d.bdf == b)
            .ok_or(HostError::Unknown(b))?
            .armed(0)
            .ok_or(DriverError::NoIrq(b))
    }

    /// Waits for the operation [`MemDevDriver::start`] began; `Ok` when the device
    /// reports it done.
    ///
    /// The driver arms vector 0 and waits for that only, as enumeration set it up
    /// (the MSI-X or MSI vector, else the INTx pin asserted); anything else its device
    /// sends is passed over (`Host::wait_armed`). An armed interrupt while the device
    /// still reports the operation busy is spurious (forged by its box, or left over
    /// from an earlier one): counted, and the wait goes on, within `timeout` in all.
    pub fn wait<L: Link>(&self, host: &mut Host<L>, timeout: Duration) -> Result<(), DriverError> {
        let b = self.bdf;
        let armed = self.armed(host)?;
        let end = Instant::now() + timeout;
        let st = loop {
            let left = end.saturating_duration_since(Instant::now());
            if host.wait_armed(b, armed, left).is_none() {
                return Err(DriverError::NoInterrupt(timeout));
            }
            let st = host.bar_read32(b, 0, regs::STATUS)?;
            if st == status::DONE || st == status::ERROR {
                break st;
            }
            host.note_spurious_interrupt();
        };
        let err = host.bar_read32(b, 0, regs::ERROR)?;
        // Acknowledge (releases INTx when that is how it signalled).
        host.bar_write32(b, 0, regs::STATUS, 0)?;
        if st == status::DONE {
            Ok(())
        } else {
            Err(DriverError::Device(err, error_name(err)))
        }
    }

    /// Writes `data` into host memory at `src`, has the device COPY it to `dst` (a
    /// DMA read and a DMA write over the link), and checks what arrived, byte for byte.
    pub fn copy_checked<L: Link>(
        &self,
        host: &mut Host<L>,
        src: u64,
        dst: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), DriverError> {
        host.write_memory(src, data)?;
        self.run(host, memdev::op::COPY, src, dst, data.len() as u32, timeout)?;
        let mut got = vec![0u8; data.len()];
        host.read_memory(dst, &mut got)?;
        if got != data {
            return Err(DriverError::Mismatch {
                src,
                dst,
                len: data.len(),
            });
        }
        Ok(())
    }
}
