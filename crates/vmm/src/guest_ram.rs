//! Guest RAM shared by the VMM: a file descriptor (QEMU's memfd) from which the
//! device's DMA is served straight into guest memory.
//!
//! A file sealed against shrinking (F_SEAL_SHRINK, as QEMU's `memory-backend-memfd`
//! seals it by default) is mapped and copied in and out of. Any other file could be
//! truncated by the client after we mapped it, and a copy through the mapping past
//! the new end would raise SIGBUS and kill the bridge. The proxy serves such a region
//! with pread/pwrite on the descriptor instead ([`GuestRam::map`]): an access past the
//! file's end is a failed DMA (an error completion for a read, a lost write), counted
//! in [`RamFaults`]. vfio-user takes only files sealed against shrinking, sealing a
//! memfd that allows it itself ([`seal_against_shrinking`], [`GuestRam::map_sealed`]).
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rootcomplex::{HostMemory, ReadFault};
use thiserror::Error;

/// DMA accesses to guest RAM that failed because the client shrank an unsealed file
/// under its region (or the file refused the access). Clones share one count: a
/// server hands a clone to each region it maps and reports the total.
#[derive(Clone, Debug, Default)]
pub struct RamFaults(Arc<AtomicU64>);

impl RamFaults {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the region reaches the file.
#[derive(Debug)]
enum Backing {
    /// The file cannot shrink: a shared mapping. `map` is page-aligned and may
    /// begin `lead` bytes before the region.
    Mapped {
        map: NonNull<u8>,
        map_len: usize,
        lead: usize,
    },
    /// The file may shrink: positioned reads and writes on our own duplicate of the
    /// descriptor, the region starting at `offset` in the file.
    File { fd: OwnedFd, offset: u64 },
}

/// `len` bytes of guest RAM in a file descriptor.
#[derive(Debug)]
pub struct GuestRam {
    backing: Backing,
    len: usize,
    /// False for a region mapped read-only ([`GuestRam::map_sealed`]): writes are
    /// dropped (and counted in `faults`), never made through the read-only mapping.
    writable: bool,
    faults: RamFaults,
}

// SAFETY: the mapping is plain shared memory, owned by this value; nothing in it is
// tied to the thread that made it (and a descriptor is Send anyway).
unsafe impl Send for GuestRam {}

/// Whether the file behind `fd` is sealed against shrinking. A file that cannot be
/// sealed (F_GET_SEALS fails) is not; seals, once set, cannot be removed.
fn sealed_against_shrinking(fd: &OwnedFd) -> bool {
    // SAFETY: fcntl with F_GET_SEALS only reads the file's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// How a file came to be sealed against shrinking ([`seal_against_shrinking`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// It already was (QEMU's `memory-backend-memfd` with `seal=on`, its default).
    Already,
    /// It was not but allowed sealing: F_SEAL_SHRINK was added here.
    Now,
}

/// Why a file cannot be sealed against shrinking.
#[derive(Debug, Error)]
pub enum SealError {
    /// F_GET_SEALS fails: the file takes no seals (a regular file; not a memfd).
    #[error("the file takes no seals, it is not a memfd (F_GET_SEALS: {0})")]
    NoSeals(io::Error),
    /// F_SEAL_SEAL without F_SEAL_SHRINK: no seal can be added (a memfd made
    /// without MFD_ALLOW_SEALING, as QEMU's `seal=off` makes it, or a tmpfs or
    /// hugetlbfs file opened by path).
    #[error(
        "the file cannot be sealed against shrinking (F_SEAL_SEAL is set, F_SEAL_SHRINK is not)"
    )]
    Locked,
    /// F_ADD_SEALS refused (a descriptor opened read-only, or a seal race).
    #[error("F_ADD_SEALS F_SEAL_SHRINK: {0}")]
    Add(io::Error),
}

/// Makes sure the file behind `fd` can no longer shrink: it is sealed against
/// shrinking already, or F_SEAL_SHRINK is added now if the file allows it. A seal
/// cannot be removed, so once this returns the file's size only grows (if even that).
pub fn seal_against_shrinking(fd: &OwnedFd) -> Result<Sealed, SealError> {
    // SAFETY: fcntl with F_GET_SEALS only reads the file's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(SealError::NoSeals(io::Error::last_os_error()));
    }
    if seals & libc::F_SEAL_SHRINK != 0 {
        return Ok(Sealed::Already);
    }
    if seals & libc::F_SEAL_SEAL != 0 {
        return Err(SealError::Locked);
    }
    // SAFETY: fcntl with F_ADD_SEALS adds a seal to the client's file; it touches no
    // memory of ours. The client can no longer shrink the file, which it shared with
    // us as guest RAM.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
        return Err(SealError::Add(io::Error::last_os_error()));
    }
    Ok(Sealed::Now)
}

fn file_size(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: fstat fills a plain struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a live struct.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size.max(0) as u64)
}

/// Whether `fd` was opened for writing (O_WRONLY or O_RDWR).
pub fn opened_for_writing(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: fcntl with F_GETFL only reads the descriptor's status flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_ACCMODE != libc::O_RDONLY)
}

impl GuestRam {
    /// Takes `len` bytes at `offset` in `fd` as guest RAM, read-write and shared with
    /// the VMM: mapped when the file is sealed against shrinking, else served by
    /// pread/pwrite. Failed accesses of the second kind are counted in `faults`.
    pub fn map(fd: &OwnedFd, offset: i64, len: u64, faults: &RamFaults) -> io::Result<GuestRam> {
        Self::check(offset, len)?;
        // The seals first: once the file cannot shrink, the size read next holds.
        let sealed = sealed_against_shrinking(fd);
        Self::check_size(fd, offset, len)?;
        let backing = if sealed {
            Self::mmap(fd, offset, len as usize, true)?
        } else {
            Backing::File {
                fd: fd.try_clone()?,
                offset: offset as u64,
            }
        };
        Ok(GuestRam {
            backing,
            len: len as usize,
            writable: true,
            faults: faults.clone(),
        })
    }

    /// Takes `len` bytes at `offset` in `fd` as guest RAM, always mapped: the file
    /// must be sealed against shrinking already ([`seal_against_shrinking`]; an
    /// unsealed one is refused), so the mapping can never lose its pages. Mapped
    /// read-only (PROT_READ) unless `writable`; a write to a read-only region is
    /// dropped and counted in `faults`.
    pub fn map_sealed(
        fd: &OwnedFd,
        offset: u64,
        len: u64,
        writable: bool,
        faults: &RamFaults,
    ) -> io::Result<GuestRam> {
        let offset = i64::try_from(offset).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset:#x} out of range"),
            )
        })?;
        Self::check(offset, len)?;
        if !sealed_against_shrinking(fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the file is not sealed against shrinking",
            ));
        }
        Self::check_size(fd, offset, len)?;
        Ok(GuestRam {
            backing: Self::mmap(fd, offset, len as usize, writable)?,
            len: len as usize,
            writable,
            faults: faults.clone(),
        })
    }

    fn check(offset: i64, len: u64) -> io::Result<()> {
        if offset < 0 || len == 0 || len > isize::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {len} bytes at offset {offset}"),
            ));
        }
        Ok(())
    }

    /// The region must lie inside the file (read after the seals, so that it holds).
    fn check_size(fd: &OwnedFd, offset: i64, len: u64) -> io::Result<()> {
        let size = file_size(fd)?;
        if (offset as u64)
            .checked_add(len)
            .is_none_or(|end| end > size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} run past the end of the file ({size} bytes)"
                ),
            ));
        }
        Ok(())
    }

    fn mmap(fd: &OwnedFd, offset: i64, len: usize, writable: bool) -> io::Result<Backing> {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as i64;
        let lead = (offset % page) as usize;
        let map_len = len
            .checked_add(lead)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of the fd chosen by the kernel; the arguments
        // were checked by the caller and the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset - lead as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Backing::Mapped {
            map: NonNull::new(p.cast()).expect("mmap does not return null on success"),
            map_len,
            lead,
        })
    }

    /// Whether the region is mapped (its file is sealed against shrinking), rather
    /// than served by pread/pwrite.
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped { .. })
    }

    /// Whether `len` bytes at `offset` lie inside the region. Checked arithmetic: the
    /// copies below trust it, and `read`/`write` are safe methods anyone may call.
    fn holds(&self, offset: u64, len: usize) -> bool {
        usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.len)
    }
}

/// Runs a positioned transfer of `len` bytes at file offset `pos` to the end: `op`
/// moves what is left from byte `done` of the buffer at file offset `at` and returns
/// what pread/pwrite return. False when the file ends first or the call fails.
fn transfer_all(
    len: usize,
    pos: u64,
    mut op: impl FnMut(usize, libc::off_t) -> libc::ssize_t,
) -> bool {
    let mut done = 0;
    while done < len {
        let Some(at) = pos
            .checked_add(done as u64)
            .and_then(|at| libc::off_t::try_from(at).ok())
        else {
            return false;
        };
        match op(done, at) {
            0 => return false,
            r if r < 0 => {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return false;
                }
            }
            r => done += r as usize,
        }
    }
    true
}

/// Reads all of `buf` from `fd` at `pos`.
fn pread_all(fd: &OwnedFd, pos: u64, buf: &mut [u8]) -> bool {
    let len = buf.len();
    transfer_all(len, pos, |done, at| {
        // SAFETY: reads at most the len - done bytes left of the live buffer.
        unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                len - done,
                at,
            )
        }
    })
}

/// Writes all of `data` to `fd` at `pos`.
fn pwrite_all(fd: &OwnedFd, pos: u64, data: &[u8]) -> bool {
    transfer_all(data.len(), pos, |done, at| {
        // SAFETY: writes at most the bytes left of the live slice.
        unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                at,
            )
        }
    })
}

impl HostMemory for GuestRam {
    fn len(&self) -> u64 {
        self.len as u64
    }

    /// For callers that cannot take an error: a failed read reads all-ones. The root
    /// complex uses `try_read`.
    fn read(&self, offset: u64, buf: &mut [u8]) {
        if self.try_read(offset, buf).is_err() {
            buf.fill(0xff);
        }
    }

    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadFault> {
        assert!(self.holds(offset, buf.len()), "read outside guest RAM");
        match &self.backing {
            Backing::Mapped { map, lead, .. } => {
                // SAFETY: the range was checked against the region, which lies inside
                // the mapping at `lead`, and the file cannot shrink under it (sealed).
                // The guest may change these bytes meanwhile, as a device reading
                // memory a CPU writes would see; the copy is a plain byte copy.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        map.as_ptr().add(lead + offset as usize),
                        buf.as_mut_ptr(),
                        buf.len(),
                    )
                }
                Ok(())
            }
            Backing::File { fd, offset: base } => {
                // `holds` bounds offset by len, and base + len was checked at map time.
                if pread_all(fd, base + offset, buf) {
                    Ok(())
                } else {
                    self.faults.add();
                    Err(ReadFault)
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(self.holds(offset, data.len()), "write outside guest RAM");
        if !self.writable {
            // The mapping is read-only: a copy into it would fault.
            self.faults.add();
            return;
        }
        match &self.backing {
            Backing::Mapped { map, lead, .. } => {
                // SAFETY: the range was checked against the region inside the mapping,
                // which is writable (checked above: a read-only region is mapped
                // PROT_READ), shared with the guest and cannot lose its file pages
                // (sealed): this is the device's DMA write.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        map.as_ptr().add(lead + offset as usize),
                        data.len(),
                    )
                }
            }
            Backing::File { fd, offset: base } => {
                let at = base + offset;
                // A write past the file's end would grow the file: a failed DMA
                // instead. (A truncation racing this check can still let the write
                // grow the client's own file, by at most the region's size.)
                let inside = file_size(fd).is_ok_and(|size| at + data.len() as u64 <= size);
                if !inside || !pwrite_all(fd, at, data) {
                    self.faults.add();
                }
            }
        }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if let Backing::Mapped { map, map_len, .. } = self.backing {
            // SAFETY: unmaps exactly the mapping this value made; no references into
            // it outlive self.
            unsafe {
                libc::munmap(map.as_ptr().cast(), map_len);
            }
        }
    }
}

/// A memfd of `len` bytes that may be sealed, with `seals` added (for the tests).
#[cfg(test)]
pub(crate) fn test_memfd(len: i64, seals: libc::c_int) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system calls on a fresh descriptor we own.
    unsafe {
        let fd = libc::memfd_create(
            c"tether-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, len), 0);
        assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, seals), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

/// A memfd of `len` bytes made without MFD_ALLOW_SEALING, as QEMU's
/// memory-backend-memfd makes it with `seal=off` (for the tests).
#[cfg(test)]
pub(crate) fn test_memfd_without_sealing(len: i64) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system calls on a fresh descriptor we own.
    unsafe {
        let fd = libc::memfd_create(c"tether-test".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, len), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

/// A regular file of `len` bytes, already unlinked (for the tests).
#[cfg(test)]
pub(crate) fn test_regular_file(len: u64) -> OwnedFd {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "tether-test-ram-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(len).unwrap();
    f.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vfio-user's rule: a memfd sealed against shrinking is taken as it is; one
    /// that allows sealing is sealed here, after which the client's shrink fails
    /// (EPERM) and a mapping of it can never raise SIGBUS; a memfd made without
    /// MFD_ALLOW_SEALING (QEMU's `seal=off`), one whose seals are locked, a regular
    /// file and a read-only descriptor cannot be, and are not mapped.
    #[test]
    fn only_files_that_cannot_shrink_are_mapped_sealed() {
        let f = RamFaults::default();
        let all = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        let sealed = test_memfd(64 << 10, all);
        assert_eq!(seal_against_shrinking(&sealed).unwrap(), Sealed::Already);
        let open = test_memfd(64 << 10, 0);
        assert!(
            GuestRam::map_sealed(&open, 0, 4096, true, &f).is_err(),
            "not yet"
        );
        assert_eq!(seal_against_shrinking(&open).unwrap(), Sealed::Now);
        assert_eq!(seal_against_shrinking(&open).unwrap(), Sealed::Already);
        // SAFETY: ftruncate on a descriptor we own; the seal refuses the shrink.
        let r = unsafe { libc::ftruncate(open.as_raw_fd(), 0) };
        assert_eq!(
            (r, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EPERM))
        );
        // Growing is still allowed (the mapping does not mind).
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ftruncate(open.as_raw_fd(), 128 << 10) }, 0);
        let mut ram = GuestRam::map_sealed(&open, 4096, 8192, true, &f).unwrap();
        assert!(ram.is_mapped());
        ram.write(0, b"sealed here");
        let mut got = [0u8; 11];
        assert!(ram.try_read(0, &mut got).is_ok());
        assert_eq!(&got, b"sealed here");
        assert!(matches!(
            seal_against_shrinking(&test_memfd_without_sealing(4096)),
            Err(SealError::Locked)
        ));
        assert!(matches!(
            seal_against_shrinking(&test_memfd(4096, libc::F_SEAL_SEAL)),
            Err(SealError::Locked)
        ));
        assert!(matches!(
            seal_against_shrinking(&test_regular_file(4096)),
            Err(SealError::NoSeals(_))
        ));
        // A read-only descriptor of a memfd that allows sealing: F_ADD_SEALS needs
        // write access.
        let rw = test_memfd(4096, 0);
        let ro: OwnedFd = std::fs::File::open(format!("/proc/self/fd/{}", rw.as_raw_fd()))
            .unwrap()
            .into();
        assert!(matches!(
            seal_against_shrinking(&ro),
            Err(SealError::Add(_))
        ));
        assert_eq!(f.count(), 0);
    }

    /// A read-only region is mapped PROT_READ: a write to it is dropped and
    /// counted, never made (it would fault); reads work.
    #[test]
    fn a_read_only_region_is_never_written() {
        let f = RamFaults::default();
        let fd = test_memfd(8192, libc::F_SEAL_SHRINK);
        let mut rw = GuestRam::map_sealed(&fd, 0, 8192, true, &f).unwrap();
        rw.write(16, b"rom");
        let mut ro = GuestRam::map_sealed(&fd, 0, 8192, false, &f).unwrap();
        ro.write(16, b"RAM");
        assert_eq!(f.count(), 1);
        let mut got = [0u8; 3];
        assert!(ro.try_read(16, &mut got).is_ok());
        assert_eq!(&got, b"rom");
        assert!(GuestRam::map_sealed(&fd, u64::MAX, 1, false, &f).is_err());
        assert!(GuestRam::map_sealed(&fd, 4096, 8192, false, &f).is_err());
    }

    #[test]
    #[should_panic(expected = "read outside guest RAM")]
    fn a_read_whose_end_wraps_is_refused() {
        let fd = test_memfd(4096, 0);
        let ram = GuestRam::map(&fd, 0, 4096, &RamFaults::default()).unwrap();
        let mut buf = [0u8; 16];
        ram.read(u64::MAX - 7, &mut buf);
    }

    #[test]
    #[should_panic(expected = "write outside guest RAM")]
    fn a_write_whose_end_wraps_is_refused() {
        let fd = test_memfd(4096, 0);
        let mut ram = GuestRam::map(&fd, 0, 4096, &RamFaults::default()).unwrap();
        ram.write(u64::MAX - 7, &[0u8; 16]);
    }

    /// QEMU's memory-backend-memfd seals (grow, shrink, seal): such a file keeps the
    /// fast path, a mapping; one that may shrink does not.
    #[test]
    fn only_a_file_sealed_against_shrinking_is_mapped() {
        let f = RamFaults::default();
        let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        let fd = test_memfd(64 << 10, seals);
        let mut ram = GuestRam::map(&fd, 4096, 8192, &f).unwrap();
        assert!(ram.is_mapped());
        ram.write(100, b"mapped");
        let mut got = [0u8; 6];
        assert!(ram.try_read(100, &mut got).is_ok());
        assert_eq!(&got, b"mapped");
        // SAFETY: ftruncate on a descriptor we own; the seal refuses it.
        assert_ne!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, 0);
        for seals in [0, libc::F_SEAL_GROW, libc::F_SEAL_SEAL] {
            let fd = test_memfd(64 << 10, seals);
            let mut ram = GuestRam::map(&fd, 4096, 8192, &f).unwrap();
            assert!(!ram.is_mapped(), "seals {seals:#x}");
            ram.write(100, b"by file");
            let mut got = [0u8; 7];
            assert!(ram.try_read(100, &mut got).is_ok());
            assert_eq!(&got, b"by file");
        }
        assert_eq!(f.count(), 0);
    }

    /// An unsealed file shrunk under a region: reads past the new end fail, writes
    /// there are dropped without growing the file, both counted; the rest works.
    #[test]
    fn dma_past_the_end_of_a_shrunk_file_is_a_counted_fault() {
        let f = RamFaults::default();
        let fd = test_memfd(64 << 10, 0);
        let mut ram = GuestRam::map(&fd, 4096, 32 << 10, &f).unwrap();
        // SAFETY: ftruncate on a descriptor we own.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 8192) }, 0);
        let mut buf = [0u8; 16];
        // Straddling the end: fails as a whole.
        assert_eq!(ram.try_read(4096 - 8, &mut buf), Err(ReadFault));
        ram.read(8192, &mut buf);
        assert_eq!(buf, [0xff; 16], "the infallible read reads all-ones");
        ram.write(4096 - 8, &[7; 16]);
        assert_eq!(f.count(), 3);
        assert_eq!(file_size(&fd).unwrap(), 8192);
        ram.write(0, b"ok");
        let mut got = [0u8; 2];
        assert!(ram.try_read(0, &mut got).is_ok());
        assert_eq!((&got, f.count()), (b"ok", 3));
    }

    #[test]
    fn two_mappings_of_one_memfd_share_bytes() {
        let fd = test_memfd(64 << 10, 0);
        let f = RamFaults::default();
        let mut a = GuestRam::map(&fd, 0, 64 << 10, &f).unwrap();
        // A region at an offset that is not page-aligned.
        let b = GuestRam::map(&fd, 4096 + 100, 1000, &f).unwrap();
        a.write(4096 + 100, b"through the memfd");
        let mut got = [0u8; 17];
        b.read(0, &mut got);
        assert_eq!(&got, b"through the memfd");
        assert_eq!(b.len(), 1000);
        assert!(GuestRam::map(&fd, -1, 10, &f).is_err());
        assert!(GuestRam::map(&fd, 0, 0, &f).is_err());
        assert!(
            GuestRam::map(&fd, 4096, 64 << 10, &f).is_err(),
            "past the end of the file"
        );
    }
}
