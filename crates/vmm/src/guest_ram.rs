//! Guest RAM shared by the VMM: a file descriptor (QEMU's memfd) mapped into this
//! process, so that the device's DMA lands straight in guest memory.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

use rootcomplex::HostMemory;

/// `len` bytes of guest RAM mapped from a file descriptor.
#[derive(Debug)]
pub struct GuestRam {
    /// Start of the mapping (page-aligned, may begin before the region).
    map: NonNull<u8>,
    map_len: usize,
    /// Where the region starts inside the mapping.
    lead: usize,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, owned by this value; nothing in it is
// tied to the thread that made it.
unsafe impl Send for GuestRam {}

impl GuestRam {
    /// Maps `len` bytes at `offset` in `fd`, read-write and shared.
    pub fn map(fd: &OwnedFd, offset: i64, len: u64) -> io::Result<GuestRam> {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as i64;
        if offset < 0 || len == 0 || len > isize::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {len} bytes at offset {offset}"),
            ));
        }
        // Touching a mapping beyond the end of the file would raise SIGBUS.
        // SAFETY: fstat fills a plain struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is a live struct.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (offset as u64)
            .checked_add(len)
            .is_none_or(|end| end > st.st_size as u64)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} run past the end of the file ({} bytes)",
                    st.st_size
                ),
            ));
        }
        let lead = (offset % page) as usize;
        let map_len = len as usize + lead;
        // SAFETY: a new shared mapping of the fd chosen by the kernel; the arguments
        // are checked above and the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset - lead as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestRam {
            map: NonNull::new(p.cast()).expect("mmap does not return null on success"),
            map_len,
            lead,
            len: len as usize,
        })
    }

    /// Whether `len` bytes at `offset` lie inside the region. Checked arithmetic: the
    /// copies below trust it, and `read`/`write` are safe methods anyone may call.
    fn holds(&self, offset: u64, len: usize) -> bool {
        usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.len)
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: lead < map_len: the pointer stays inside the mapping.
        unsafe { self.map.as_ptr().add(self.lead) }
    }
}

impl HostMemory for GuestRam {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        assert!(self.holds(offset, buf.len()), "read outside guest RAM");
        // SAFETY: the range was checked against the mapping. The guest may change these
        // bytes meanwhile, as a device reading memory a CPU writes would see; the copy
        // is a plain byte copy into our buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base().add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(self.holds(offset, data.len()), "write outside guest RAM");
        // SAFETY: the range was checked against the mapping, which is writable and
        // shared with the guest: this is the device's DMA write.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.base().add(offset as usize),
                data.len(),
            )
        }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made; no references into it
        // outlive self.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: u64) -> OwnedFd {
        // SAFETY: plain system calls on a fresh descriptor we own.
        unsafe {
            let fd = libc::memfd_create(c"tether-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, len as i64), 0);
            OwnedFd::from_raw_fd(fd)
        }
    }

    /// An offset near 2^64 whose end wraps: refused (a panic, the caller's bug), never
    /// a copy from far outside the mapping, which is what a release build did when
    /// the bound was `offset as usize + len` unchecked.
    #[test]
    #[should_panic(expected = "read outside guest RAM")]
    fn a_read_whose_end_wraps_is_refused() {
        let fd = memfd(4096);
        let ram = GuestRam::map(&fd, 0, 4096).unwrap();
        let mut buf = [0u8; 16];
        ram.read(u64::MAX - 7, &mut buf);
    }

    #[test]
    #[should_panic(expected = "write outside guest RAM")]
    fn a_write_whose_end_wraps_is_refused() {
        let fd = memfd(4096);
        let mut ram = GuestRam::map(&fd, 0, 4096).unwrap();
        ram.write(u64::MAX - 7, &[0u8; 16]);
    }

    #[test]
    fn two_mappings_of_one_memfd_share_bytes() {
        let fd = memfd(64 << 10);
        let mut a = GuestRam::map(&fd, 0, 64 << 10).unwrap();
        // A region at an offset that is not page-aligned.
        let b = GuestRam::map(&fd, 4096 + 100, 1000).unwrap();
        a.write(4096 + 100, b"through the memfd");
        let mut got = [0u8; 17];
        b.read(0, &mut got);
        assert_eq!(&got, b"through the memfd");
        assert_eq!(b.len(), 1000);
        assert!(GuestRam::map(&fd, -1, 10).is_err());
        assert!(GuestRam::map(&fd, 0, 0).is_err());
        assert!(
            GuestRam::map(&fd, 4096, 64 << 10).is_err(),
            "past the end of the file"
        );
    }
}
