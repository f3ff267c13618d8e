//! The remote end of QEMU's `x-pci-proxy-dev`: one connection, one device.
//!
//! QEMU forwards the guest's config and BAR accesses; they become requests to the
//! [`RemoteFunction`] (the host bridge, which turns them into TLPs to the device
//! across the fabric). Guest RAM arrives as memfds and is mapped for the device's DMA,
//! again on every change. INTx goes to QEMU's irqfd with level semantics: asserted
//! again after each end-of-interrupt (the resamplefd) while the device holds it.
//!
//! The host bridge enumerated the device on its side: the device's BARs hold the
//! bridge's addresses. The guest's BAR registers are kept here ([`BarShadow`]): the
//! guest sizes and places its BARs there, and QEMU's BAR accesses, which carry the
//! guest-physical address, are resolved through them to the same offset of the same
//! BAR at the bridge's address. An access outside every BAR the guest placed never
//! reaches the fabric, where another device may decode that address.
//!
//! The proxy cannot deliver MSI or MSI-X, so their capabilities are taken out of the
//! capability list the guest reads; the guest then uses INTx.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use pci::CapabilityId;
use thiserror::Error;

use super::wire::{self, Header, ProtocolError, Request, HEADER_LEN, MAX_PAYLOAD};
use crate::bar_shadow::BarShadow;
use crate::caps::CapPatch;
use crate::device::{byte_enables, RemoteFunction};
use crate::guest_ram::{GuestRam, RamFaults};
use crate::payload::PayloadShadow;
use crate::sys;

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("QEMU closed the connection")]
    Closed,
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
}

/// Counters of a proxy connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ProxyStats {
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    /// BAR reads and writes not wholly inside one of the device's memory BARs as the
    /// guest placed them (or ending past 2^64): reads all-ones, writes dropped,
    /// nothing sent to the device.
    pub outside_bar: u64,
    /// I/O-space BAR accesses (the device has none: reads are all-ones).
    pub io_accesses: u64,
    pub memory_syncs: u64,
    /// Regions of guest RAM that could not be mapped.
    pub map_errors: u64,
    /// Regions of guest RAM whose file was not sealed against shrinking: served by
    /// pread/pwrite rather than mapped (QEMU's memory-backend-memfd seals them).
    pub unsealed_regions: u64,
    /// DMA accesses of the device to such a region that failed (the client shrank
    /// the file under it): a read gets an error completion, a write is lost.
    pub dma_faults: u64,
    /// Device Control writes whose Max Payload Size or Max Read Request Size was
    /// changed on the way to the device ([`crate::payload`]).
    pub devctl_adjusted: u64,
    pub resets: u64,
    /// SET_IRQFD messages (QEMU sends one when the guest routes INTx, under KVM).
    pub irqfd_sets: u64,
    /// SET_IRQFD messages whose descriptors were not both eventfds (INTx is then off).
    pub irqfds_refused: u64,
    /// Rising edges of the device's INTx line.
    pub intx_asserts: u64,
    /// irqfd signals (assertions and re-assertions after an EOI).
    pub intx_signals: u64,
    pub resamples: u64,
}

/// The capabilities the proxy cannot deliver, hidden from the guest.
const HIDDEN: [CapabilityId; 2] = [CapabilityId::Msi, CapabilityId::MsiX];

/// One QEMU connection and the device it reaches.
pub struct ProxyServer {
    sock: OwnedFd,
    irqfd: Option<OwnedFd>,
    resamplefd: Option<OwnedFd>,
    /// The device's INTx level.
    level: bool,
    caps: Option<CapPatch>,
    /// The guest's BAR registers: where it placed the device's BARs, which BAR
    /// accesses must fall inside.
    bars: BarShadow,
    /// The Max Payload Size the guest sees ([`crate::payload`]).
    payload: PayloadShadow,
    /// Failed DMA into guest RAM regions, shared with every region mapped.
    faults: RamFaults,
    stats: ProxyStats,
}

impl ProxyServer {
    /// Serves QEMU on `sock` (one end of the socketpair QEMU got as `fd=`). A QEMU
    /// that stops in the middle of a message, or stops reading the replies, fails
    /// `serve` after [`sys::STALL_TIMEOUT`] (a descriptor that is not a socket takes no
    /// timeout, and is no connection QEMU could use either).
    pub fn new(sock: OwnedFd) -> ProxyServer {
        let _ = sys::set_io_timeouts(sock.as_raw_fd(), sys::STALL_TIMEOUT);
        ProxyServer {
            sock,
            irqfd: None,
            resamplefd: None,
            level: false,
            caps: None,
            bars: BarShadow::default(),
            payload: PayloadShadow::default(),
            faults: RamFaults::default(),
            stats: ProxyStats::default(),
        }
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            dma_faults: self.faults.count(),
            devctl_adjusted: self.payload.adjusted(),
            ..self.stats
        }
    }

    /// Descriptors to wait on: the socket and, once QEMU sent it, the resamplefd.
    pub fn wait_fds(&self) -> Vec<RawFd> {
        let mut v = vec![self.sock.as_raw_fd()];
        v.extend(self.resamplefd.as_ref().map(|f| f.as_raw_fd()));
        v
    }

    /// The device behind the connection changed (a box restart): its capability list
    /// is read again. The guest's BAR registers stay (the guest did not see the
    /// restart; the bridge placed the device's BARs again on its side).
    pub fn device_changed(&mut self) {
        self.caps = None;
        self.payload.device_changed();
    }

    /// Handles the messages that are waiting (up to `max`), answering each. Returns
    /// how many were handled.
    pub fn serve(&mut self, dev: &mut dyn RemoteFunction, max: usize) -> Result<usize, ProxyError> {
        let mut n = 0;
        while n < max && sys::wait_readable(&[self.sock.as_raw_fd()], Duration::ZERO)?[0] {
            self.serve_one(dev)?;
            n += 1;
        }
        self.poll_resample()?;
        Ok(n)
    }

    fn serve_one(&mut self, dev: &mut dyn RemoteFunction) -> Result<(), ProxyError> {
        let fd = self.sock.as_raw_fd();
        let mut fds = Vec::new();
        let mut h = [0u8; HEADER_LEN];
        if !sys::recv_exact(fd, &mut h, &mut fds)? {
            return Err(ProxyError::Closed);
        }
        let header = Header::parse(&h)?;
        let mut payload = vec![0u8; header.size as usize];
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        if !sys::recv_exact(fd, &mut payload, &mut fds)? && !payload.is_empty() {
            return Err(ProxyError::Closed);
        }
        let request = Request::parse(header, &payload, fds.len())?;
        if let Some(reply) = self.handle(request, fds, dev) {
            sys::send_all(fd, &reply)?;
        }
        Ok(())
    }

    /// Acts on one request; returns the reply, for the requests QEMU waits on.
    fn handle(
        &mut self,
        request: Request,
        mut fds: Vec<OwnedFd>,
        dev: &mut dyn RemoteFunction,
    ) -> Option<Vec<u8>> {
        match request {
            Request::SyncSysmem(regions) => {
                self.stats.memory_syncs += 1;
                dev.clear_guest_ram();
                for (r, fd) in regions.iter().zip(&fds) {
                    let mapped = GuestRam::map(fd, r.offset, r.size, &self.faults)
                        .map_err(|e| e.to_string());
                    let unsealed = mapped.as_ref().is_ok_and(|m| !m.is_mapped());
                    match mapped.and_then(|m| dev.map_guest_ram(r.gpa, Box::new(m))) {
                        Ok(()) if unsealed => self.stats.unsealed_regions += 1,
                        Ok(()) => {}
                        Err(_) => self.stats.map_errors += 1,
                    }
                }
                // QEMU does not wait for an answer to this one.
                None
            }
            Request::ConfigRead { addr, len } => {
                self.stats.config_reads += 1;
                if self.caps.is_none() {
                    // Kept once the device answered for its whole list.
                    self.caps = CapPatch::compute(dev, &HIDDEN).ok();
                }
                let register = addr as u16 & !3;
                let dword = match (self.bars.read(dev, register), &self.caps) {
                    (Some(shadowed), _) => shadowed,
                    (None, Some(caps)) => match dev.config_read(register) {
                        Some(d) => self.payload.read(dev, register, caps.apply(register, d)),
                        None => u32::MAX,
                    },
                    // The list could not be read: nothing of it is shown.
                    (None, None) => u32::MAX,
                };
                let shift = 8 * (addr & 3);
                let mask = if len == 4 {
                    u32::MAX
                } else {
                    (1u32 << (8 * len as u32)) - 1
                };
                Some(wire::ret(((dword >> shift) & mask) as u64).to_vec())
            }
            Request::ConfigWrite { addr, value, len } => {
                self.stats.config_writes += 1;
                let shift = addr & 3;
                let be = byte_enables(shift as usize, len as usize);
                let register = addr as u16 & !3;
                // BAR and ROM registers stay here; the rest reaches the device.
                // Device Control's Max Payload Size stays the fabric's.
                if !self.bars.write(register, value << (8 * shift), be) {
                    if let Some((v, be)) =
                        self.payload.write(dev, register, value << (8 * shift), be)
                    {
                        dev.config_write(register, v, be);
                    }
                }
                Some(wire::ret(0).to_vec())
            }
            Request::BarRead { addr, size, memory } => {
                self.stats.bar_reads += 1;
                let v = if !memory {
                    self.stats.io_accesses += 1;
                    u64::MAX
                } else if let Some(at) = self.bars.resolve(dev, addr, size as u64) {
                    let d = dev.mem_read(at, size as usize);
                    let mut b = [0u8; 8];
                    b[..d.len().min(8)].copy_from_slice(&d[..d.len().min(8)]);
                    u64::from_le_bytes(b)
                } else {
                    self.stats.outside_bar += 1;
                    u64::MAX
                };
                let mask = if size == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * size as u32)) - 1
                };
                Some(wire::ret(v & mask).to_vec())
            }
            Request::BarWrite {
                addr,
                value,
                size,
                memory,
            } => {
                self.stats.bar_writes += 1;
                if !memory {
                    self.stats.io_accesses += 1;
                } else if let Some(at) = self.bars.resolve(dev, addr, size as u64) {
                    dev.mem_write(at, &value.to_le_bytes()[..size as usize]);
                } else {
                    self.stats.outside_bar += 1;
                }
                Some(wire::ret(0).to_vec())
            }
            Request::SetIrqfd => {
                self.stats.irqfd_sets += 1;
                // Both are eventfds, or INTx is off (no answer to tell QEMU).
                let adopted = fds
                    .drain(..)
                    .map(sys::adopt_eventfd)
                    .collect::<Result<Vec<_>, _>>();
                let mut fds = adopted.unwrap_or_else(|_| {
                    self.stats.irqfds_refused += 1;
                    Vec::new()
                });
                self.resamplefd = fds.pop();
                self.irqfd = fds.pop();
                // A device already asserting is seen at once.
                if self.level {
                    self.signal();
                }
                None
            }
            Request::DeviceReset => {
                self.stats.resets += 1;
                dev.reset();
                // The guest's BARs read unassigned again, as a real device's after a
                // reset (QEMU resets its own copy of them too).
                self.bars.reset();
                self.payload.reset();
                self.level = false;
                Some(wire::ret_empty().to_vec())
            }
        }
    }

    fn signal(&mut self) {
        if let Some(fd) = &self.irqfd {
            if sys::eventfd_signal(fd).is_ok() {
                self.stats.intx_signals += 1;
            }
        }
    }

    /// The device's INTx line changed.
    pub fn set_intx(&mut self, asserted: bool) {
        let rising = asserted && !self.level;
        self.level = asserted;
        if rising {
            self.stats.intx_asserts += 1;
            self.signal();
        }
    }

    /// After the guest's end-of-interrupt, KVM lowers the line and signals the
    /// resamplefd: a device that still holds INTx asserts it again.
    pub fn poll_resample(&mut self) -> io::Result<()> {
        let Some(fd) = &self.resamplefd else {
            return Ok(());
        };
        if sys::eventfd_take(fd)? {
            self.stats.resamples += 1;
            if self.level {
                self.signal();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::STATUS_CAP_LIST;
    use crate::fake_function::FakeFunction;
    use crate::guest_ram::test_memfd;
    use rootcomplex::HostMemory;
    use std::os::fd::FromRawFd;

    /// A device with a config space and a 4 KiB memory BAR at 0xfe00_0000.
    fn fake() -> FakeFunction {
        let mut dev = FakeFunction::new(0xfe00_0000);
        dev.config[6] = STATUS_CAP_LIST;
        dev.config[0x34] = 0x40;
        // PCIe at 0x40 -> MSI-X at 0x50 -> vendor at 0x60 -> MSI at 0x70 -> end.
        for (at, id, next) in [
            (0x40, 0x10, 0x50),
            (0x50, 0x11, 0x60),
            (0x60, 0x09, 0x70),
            (0x70, 0x05, 0),
        ] {
            dev.config[at] = id;
            dev.config[at + 1] = next;
        }
        dev
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two fresh descriptors we own.
        unsafe {
            assert_eq!(
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr()
                ),
                0
            );
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        }
    }

    /// Sends `bytes` with `fds` attached, as QEMU does.
    fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
        sys::send_with_fds(sock.as_raw_fd(), bytes, fds).unwrap();
    }

    fn read_ret(sock: &OwnedFd) -> (u64, Option<u64>) {
        let mut fds = Vec::new();
        let mut h = [0u8; 16];
        assert!(sys::recv_exact(sock.as_raw_fd(), &mut h, &mut fds).unwrap());
        let h = Header::parse(&h).unwrap();
        assert_eq!(h.cmd, wire::cmd::RET);
        if h.size == 0 {
            return (0, None);
        }
        let mut v = [0u8; 8];
        assert!(sys::recv_exact(sock.as_raw_fd(), &mut v, &mut fds).unwrap());
        (h.size, Some(u64::from_le_bytes(v)))
    }

    fn ask(q: &OwnedFd, s: &mut ProxyServer, dev: &mut FakeFunction, r: Request) -> Option<u64> {
        send_with_fds(q, &r.emit(), &[]);
        assert_eq!(s.serve(dev, 8).unwrap(), 1);
        read_ret(q).1
    }

    /// As the vfio-user server: the guest's Max Payload Size stays its own
    /// (crate::payload); the device keeps the fabric's and an MRRS at least as large.
    #[test]
    fn the_guest_sets_its_own_max_payload_size_not_the_devices() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        // Device Control of the PCIe capability at 0x40: MPS 512, MRRS 128.
        dev.config[0x48] = 2 << 5;
        let w = Request::ConfigWrite {
            addr: 0x48,
            value: 0x0010,
            len: 2,
        };
        ask(&q, &mut s, &mut dev, w);
        assert_eq!(dev.config_writes, vec![(0x48, 0x2050, 0b0011)]);
        dev.config[0x48..0x4a].copy_from_slice(&0x2050u16.to_le_bytes());
        let r = Request::ConfigRead { addr: 0x48, len: 2 };
        assert_eq!(ask(&q, &mut s, &mut dev, r), Some(0x2010));
        assert_eq!(s.stats().devctl_adjusted, 1);
    }

    #[test]
    fn config_reads_hide_msi_and_msix_and_writes_carry_byte_enables() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let cfg = |addr, len| Request::ConfigRead { addr, len };
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(0, 4)), Some(0x1042_1af4));
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(2, 2)), Some(0x1042));
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(0x34, 1)), Some(0x40));
        assert_eq!(
            ask(&q, &mut s, &mut dev, cfg(0x41, 1)),
            Some(0x60),
            "PCIe links past MSI-X"
        );
        assert_eq!(
            ask(&q, &mut s, &mut dev, cfg(0x60, 4)),
            Some(0x09),
            "vendor cap ends the list"
        );
        assert_eq!(
            ask(&q, &mut s, &mut dev, cfg(0x50, 2)),
            Some(0x6011),
            "the MSI-X body is still there, unlinked"
        );
        let w = Request::ConfigWrite {
            addr: 0x3d,
            value: 0xab,
            len: 1,
        };
        assert_eq!(ask(&q, &mut s, &mut dev, w), Some(0));
        let w = Request::ConfigWrite {
            addr: 0x06,
            value: 0xf900,
            len: 2,
        };
        ask(&q, &mut s, &mut dev, w);
        assert_eq!(
            dev.config_writes,
            vec![(0x3c, 0xab00, 0b0010), (0x04, 0xf900_0000, 0b1100)]
        );
        // A device that stopped answering reads as all-ones.
        dev.present = false;
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(0, 2)), Some(0xffff));
        assert_eq!(s.stats().config_reads, 7);
    }

    /// The guest's first config read comes while the device does not answer: it
    /// reads all-ones, and the list is walked again once the device answers, MSI
    /// and MSI-X hidden. Before, the empty walk was kept as "nothing to hide" and
    /// the device's own links reached the guest until the device changed.
    #[test]
    fn a_list_unread_while_the_device_is_away_is_read_again() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let cfg = |addr, len| Request::ConfigRead { addr, len };
        dev.present = false;
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(0x34, 1)), Some(0xff));
        dev.present = true;
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(0x41, 1)), Some(0x60));
        assert_eq!(
            ask(&q, &mut s, &mut dev, cfg(0x61, 1)),
            Some(0),
            "MSI unlinked"
        );
    }

    /// The guest places BAR0 at `bar0` and BAR2 (64-bit) at `bar2` through config
    /// writes, as firmware does.
    fn place_bars(q: &OwnedFd, s: &mut ProxyServer, dev: &mut FakeFunction, bar0: u32, bar2: u64) {
        for (addr, value) in [
            (0x10, bar0 as u64),
            (0x18, bar2 & 0xffff_ffff),
            (0x1c, bar2 >> 32),
        ] {
            let w = Request::ConfigWrite {
                addr,
                value: value as u32,
                len: 4,
            };
            assert_eq!(ask(q, s, dev, w), Some(0));
        }
    }

    /// QEMU sizes each BAR register as firmware does (all-ones written, read back):
    /// the size mask and the type bits come back, for the 32-bit BAR0 and both
    /// halves of the 64-bit BAR2, and nothing reaches the device's own BAR registers
    /// (they hold the bridge's addresses). Before, the write went to the device.
    #[test]
    fn bar_sizing_reads_back_the_mask_and_never_reaches_the_device() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake().with_bar2_64(0x8_0000_0000, 1 << 16);
        let cfg = |addr, len| Request::ConfigRead { addr, len };
        let mut sized = Vec::new();
        for reg in [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
            let orig = ask(&q, &mut s, &mut dev, cfg(reg, 4)).unwrap();
            let ones = Request::ConfigWrite {
                addr: reg,
                value: u32::MAX,
                len: 4,
            };
            ask(&q, &mut s, &mut dev, ones);
            sized.push(ask(&q, &mut s, &mut dev, cfg(reg, 4)).unwrap());
            let back = Request::ConfigWrite {
                addr: reg,
                value: orig as u32,
                len: 4,
            };
            ask(&q, &mut s, &mut dev, back);
            assert_eq!(ask(&q, &mut s, &mut dev, cfg(reg, 4)), Some(orig));
        }
        assert_eq!(
            sized,
            [0xffff_f000, 0, 0xffff_000c, 0xffff_ffff, 0, 0, 0],
            "BAR0 4 KiB, no BAR1, BAR2 64 KiB 64-bit prefetchable, no ROM"
        );
        // A byte of the 64-bit BAR's type: read as a byte, as Linux reads it.
        assert_eq!(ask(&q, &mut s, &mut dev, cfg(0x18, 1)), Some(0x0c));
        assert!(dev.config_writes.is_empty(), "{:x?}", dev.config_writes);
        assert_eq!(dev.bar_base, 0xfe00_0000);
    }

    /// Guest-physical addresses inside a BAR the guest placed reach the device at
    /// the same offset of that BAR where the bridge placed it; I/O accesses do not.
    #[test]
    fn bar_accesses_reach_the_device_at_the_bridges_address() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake().with_bar2_64(0x8_0000_0000, 1 << 16);
        place_bars(&q, &mut s, &mut dev, 0xc000_0000, 0x1_0000_0000);
        let w = Request::BarWrite {
            addr: 0xc000_0010,
            value: 0x1122_3344_5566_7788,
            size: 8,
            memory: true,
        };
        assert_eq!(ask(&q, &mut s, &mut dev, w), Some(0));
        let rd = |addr, size| Request::BarRead {
            addr,
            size,
            memory: true,
        };
        assert_eq!(
            ask(&q, &mut s, &mut dev, rd(0xc000_0010, 8)),
            Some(0x1122_3344_5566_7788)
        );
        assert_eq!(ask(&q, &mut s, &mut dev, rd(0xc000_0012, 2)), Some(0x5566));
        assert_eq!(&dev.bar[0x10..0x12], &[0x88, 0x77]);
        let w = Request::BarWrite {
            addr: 0x1_0000_fffc,
            value: 0xa1b2_c3d4,
            size: 4,
            memory: true,
        };
        ask(&q, &mut s, &mut dev, w);
        assert_eq!(&dev.bar2[0xfffc..], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(
            dev.mem_accesses,
            vec![
                (0xfe00_0010, 8),
                (0xfe00_0010, 8),
                (0xfe00_0012, 2),
                (0x8_0000_fffc, 4)
            ]
        );
        let io = Request::BarRead {
            addr: 0xc000,
            size: 2,
            memory: false,
        };
        assert_eq!(ask(&q, &mut s, &mut dev, io), Some(0xffff));
        assert_eq!((s.stats().io_accesses, s.stats().outside_bar), (1, 0));
    }

    /// BAR accesses at addresses outside every BAR the guest placed never reach the
    /// device (on the fabric another device could decode them): reads are all-ones,
    /// writes dropped, both counted. Before the bridge's own addresses were kept from
    /// the guest, any address QEMU gave became a memory request at that address.
    #[test]
    fn bar_accesses_outside_the_guests_bars_are_not_sent() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let rd = |addr, size| Request::BarRead {
            addr,
            size,
            memory: true,
        };
        let wr = |addr, size| Request::BarWrite {
            addr,
            value: 0x5a5a_5a5a_5a5a_5a5a,
            size,
            memory: true,
        };
        // Nothing placed yet: even the bridge's own address of BAR0 is outside.
        assert_eq!(
            ask(&q, &mut s, &mut dev, rd(0xfe00_0000, 4)),
            Some(0xffff_ffff)
        );
        place_bars(&q, &mut s, &mut dev, 0xc000_0000, 0);
        assert_eq!(ask(&q, &mut s, &mut dev, rd(0xc000_0ff8, 8)), Some(0));
        for (addr, size) in [
            (0xfe00_0000, 4),
            // Straddling the end of BAR0, and its start.
            (0xc000_0ffc, 8),
            (0xbfff_fffc, 8),
            (0xc000_1000, 1),
            // An end that wraps.
            (u64::MAX - 3, 8),
        ] {
            assert_eq!(
                ask(&q, &mut s, &mut dev, rd(addr, size)),
                Some(u64::MAX >> (64 - 8 * size as u32)),
                "read at {addr:#x}"
            );
            assert_eq!(ask(&q, &mut s, &mut dev, wr(addr, size)), Some(0));
        }
        assert_eq!(dev.mem_accesses, vec![(0xfe00_0ff8, 8)]);
        assert_eq!(s.stats().outside_bar, 11);
        // The guest moves BAR0: the old address is outside, the new one reaches the
        // device's BAR0, which stays where the bridge put it.
        place_bars(&q, &mut s, &mut dev, 0xd000_0000, 0);
        assert_eq!(ask(&q, &mut s, &mut dev, wr(0xd000_0010, 4)), Some(0));
        assert_eq!(
            ask(&q, &mut s, &mut dev, rd(0xc000_0010, 4)),
            Some(0xffff_ffff)
        );
        assert_eq!(ask(&q, &mut s, &mut dev, rd(0xd000_0010, 2)), Some(0x5a5a));
        assert_eq!(dev.mem_accesses[1..], [(0xfe00_0010, 4), (0xfe00_0010, 2)]);
        // A reset leaves the guest's BARs unassigned, as a real device's.
        send_with_fds(&q, &Request::DeviceReset.emit(), &[]);
        s.serve(&mut dev, 8).unwrap();
        assert_eq!(read_ret(&q), (0, None));
        let cfg = Request::ConfigRead { addr: 0x10, len: 4 };
        assert_eq!(ask(&q, &mut s, &mut dev, cfg), Some(0));
        assert_eq!(
            ask(&q, &mut s, &mut dev, rd(0xd000_0010, 4)),
            Some(0xffff_ffff)
        );
        assert_eq!(dev.mem_accesses.len(), 3);
        assert_eq!(s.stats().outside_bar, 13);
    }

    #[test]
    fn guest_ram_is_mapped_from_the_memfds() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        // SAFETY: plain system calls on fresh descriptors.
        let mfd = unsafe {
            let fd = libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC);
            assert_eq!(libc::ftruncate(fd, 1 << 20), 0);
            OwnedFd::from_raw_fd(fd)
        };
        let regions = vec![
            wire::SysmemRegion {
                gpa: 0,
                size: 0xa0000,
                offset: 0,
            },
            wire::SysmemRegion {
                gpa: 0x10_0000,
                size: 0x8_0000,
                offset: 0x8_0000,
            },
        ];
        let raw = mfd.as_raw_fd();
        send_with_fds(&q, &Request::SyncSysmem(regions).emit(), &[raw, raw]);
        assert_eq!(s.serve(&mut dev, 8).unwrap(), 1);
        assert_eq!(dev.ram.len(), 2);
        dev.ram[1].1.write(0x10, b"dma");
        let mut back = GuestRam::map(&mfd, 0, 1 << 20, &RamFaults::default()).unwrap();
        let mut got = [0u8; 3];
        back.read(0x8_0010, &mut got);
        assert_eq!(
            &got, b"dma",
            "the write landed at offset 0x80000 + 0x10 of the memfd"
        );
        back.write(0, b"x");
        // A region past the end of the memfd is refused, the others mapped.
        let bad = vec![wire::SysmemRegion {
            gpa: 0,
            size: 2 << 20,
            offset: 0,
        }];
        send_with_fds(&q, &Request::SyncSysmem(bad).emit(), &[raw]);
        s.serve(&mut dev, 8).unwrap();
        assert_eq!((dev.ram.len(), s.stats().map_errors), (0, 1));
    }

    /// QEMU shrinks an unsealed memfd after SYNC_SYSMEM, then the device DMAs into
    /// it: a failed read (error completion) and a lost write, both counted. Before,
    /// the copy through the mapping raised SIGBUS and took the bridge down.
    #[test]
    fn dma_into_a_truncated_unsealed_memfd_fails_without_sigbus() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let mfd = test_memfd(1 << 20, 0);
        let region = wire::SysmemRegion {
            gpa: 0x10_0000,
            size: 1 << 20,
            offset: 0,
        };
        send_with_fds(
            &q,
            &Request::SyncSysmem(vec![region]).emit(),
            &[mfd.as_raw_fd()],
        );
        assert_eq!(s.serve(&mut dev, 8).unwrap(), 1);
        assert_eq!(dev.ram.len(), 1);
        // Still whole: DMA works.
        dev.ram[0].1.write(0x10, b"dma");
        let mut got = [0u8; 3];
        assert!(dev.ram[0].1.try_read(0x10, &mut got).is_ok());
        assert_eq!(&got, b"dma");
        // SAFETY: ftruncate on a descriptor we own.
        assert_eq!(unsafe { libc::ftruncate(mfd.as_raw_fd(), 4096) }, 0);
        let mut buf = [0u8; 64];
        assert!(dev.ram[0].1.try_read(0x8000, &mut buf).is_err());
        dev.ram[0].1.write(0x8000, &[1; 64]);
        // What is left of the file still answers.
        assert!(dev.ram[0].1.try_read(0x10, &mut got).is_ok());
        assert_eq!(&got, b"dma");
        let size = std::fs::metadata(format!("/proc/self/fd/{}", mfd.as_raw_fd()))
            .unwrap()
            .len();
        assert_eq!(size, 4096, "the failed write did not grow the file");
        assert_eq!((s.stats().dma_faults, s.stats().unsealed_regions), (2, 1));
        // QEMU's memory-backend-memfd seals: mapped, not counted.
        let sealed = test_memfd(1 << 20, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
        send_with_fds(
            &q,
            &Request::SyncSysmem(vec![region]).emit(),
            &[sealed.as_raw_fd()],
        );
        assert_eq!(s.serve(&mut dev, 8).unwrap(), 1);
        dev.ram[0].1.write(0x8000, b"fast");
        assert!(dev.ram[0].1.try_read(0x8000, &mut got).is_ok());
        assert_eq!(&got, b"fas");
        assert_eq!((s.stats().dma_faults, s.stats().unsealed_regions), (2, 1));
    }

    #[test]
    fn intx_is_level_triggered_through_irqfd_and_resamplefd() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let irq = sys::eventfd().unwrap();
        let resample = sys::eventfd().unwrap();
        send_with_fds(
            &q,
            &Request::SetIrqfd.emit(),
            &[irq.as_raw_fd(), resample.as_raw_fd()],
        );
        s.serve(&mut dev, 8).unwrap();
        s.set_intx(true);
        assert!(sys::eventfd_take(&irq).unwrap(), "assert -> irqfd");
        // EOI while the device still holds the line: asserted again.
        sys::eventfd_signal(&resample).unwrap();
        s.poll_resample().unwrap();
        assert!(sys::eventfd_take(&irq).unwrap());
        // The driver cleared the cause; the next EOI does not re-assert.
        s.set_intx(false);
        sys::eventfd_signal(&resample).unwrap();
        s.poll_resample().unwrap();
        assert!(!sys::eventfd_take(&irq).unwrap());
        assert_eq!((s.stats().intx_signals, s.stats().resamples), (2, 2));
    }

    /// A pipe given as the irqfd: refused (counted), INTx stays off. Before, the
    /// server wrote its signals into the pipe, and once the pipe was full the next
    /// signal held the serving thread for good.
    #[test]
    fn an_irqfd_that_is_not_an_eventfd_is_refused() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let mut p = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors we own.
        let (rd, wr) = unsafe {
            assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
        };
        let resample = sys::eventfd().unwrap();
        send_with_fds(
            &q,
            &Request::SetIrqfd.emit(),
            &[wr.as_raw_fd(), resample.as_raw_fd()],
        );
        s.serve(&mut dev, 8).unwrap();
        s.set_intx(true);
        assert_eq!((s.stats().irqfds_refused, s.stats().intx_signals), (1, 0));
        assert!(!sys::wait_readable(&[rd.as_raw_fd()], Duration::ZERO).unwrap()[0]);
    }

    #[test]
    fn reset_answers_an_empty_ret_and_bad_input_closes() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        send_with_fds(&q, &Request::DeviceReset.emit(), &[]);
        s.serve(&mut dev, 8).unwrap();
        assert_eq!(read_ret(&q), (0, None));
        assert_eq!(dev.resets, 1);
        let h = Header { cmd: 42, size: 0 }.emit();
        send_with_fds(&q, &h, &[]);
        assert!(matches!(
            s.serve(&mut dev, 8),
            Err(ProxyError::Protocol(ProtocolError::UnknownCommand(42)))
        ));
        drop(q);
        assert!(matches!(s.serve(&mut dev, 8), Err(ProxyError::Closed)));
    }

    /// A QEMU that stops in the middle of a message fails `serve` after
    /// sys::STALL_TIMEOUT (it held the thread in recv forever before).
    #[test]
    fn a_stall_mid_message_fails_serve() {
        let (q, r) = pair();
        let mut s = ProxyServer::new(r);
        let mut dev = fake();
        let h = Header {
            cmd: wire::cmd::DEVICE_RESET,
            size: 8,
        }
        .emit();
        send_with_fds(&q, &h[..6], &[]);
        let started = std::time::Instant::now();
        assert!(matches!(s.serve(&mut dev, 8), Err(ProxyError::Io(_))));
        assert!(started.elapsed() < 10 * sys::STALL_TIMEOUT);
        assert_eq!(dev.resets, 0);
    }
}
