//! The system calls the front-ends need: Unix stream sockets with file descriptors
//! (SCM_RIGHTS), readiness waits, eventfds and shared mappings of guest RAM.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn check(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Receives into `buf` (one recvmsg), appending any file descriptors that came along.
/// Returns the bytes received (0 at end of stream).
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const MAX: usize = 16;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE((MAX * 4) as u32) } as usize;
    let n = loop {
        // SAFETY: msg points at iov (into buf) and control, both live and large enough
        // for the lengths given.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / 4 {
                    // Each received descriptor is new and ours to own.
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n)
}

/// Fills `buf`, collecting descriptors on the way. Returns false when the stream ended
/// before the first byte; an end in the middle is an error.
pub fn recv_exact(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_with_fds(fd, &mut buf[got..], fds)?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the socket in the middle of a message",
            ));
        }
        got += n;
    }
    Ok(true)
}

/// Writes all of `data`.
pub fn send_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is a live slice of the given length.
        let r = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        match check(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(n) => data = &data[n..],
        }
    }
    Ok(())
}

/// Sends what the socket takes of `data` now, without waiting: `Ok(None)` when it
/// takes nothing (its buffer is full), else how many bytes went.
pub fn send_now(fd: RawFd, data: &[u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: data is a live slice of the given length.
        let r = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        match check(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            other => return other.map(Some),
        }
    }
}

/// Waits up to `timeout` until `fd` is readable (or hung up), or writable too when
/// `write`; returns whether it is. A wait a signal interrupts reports false.
pub fn wait_ready(fd: RawFd, write: bool, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: p is one live pollfd; ts and the null sigmask are valid.
    let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(p.revents != 0)
}

/// Sends `bytes` in one message with `fds` attached (SCM_RIGHTS), as a VMM sends a
/// message that carries descriptors.
pub fn send_with_fds(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    const MAX: usize = 16;
    if fds.len() > MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: the CMSG_* macros compute sizes and walk `control`, which is large
        // enough for MAX descriptors; the copy writes fds.len() ints into its data.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
        }
    }
    // SAFETY: msg points at live buffers of the lengths it gives.
    let n = check(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })?;
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// How long one send or receive on a VMM connection may block: a client that stops in
/// the middle of a message, or stops reading the replies, fails the call after this
/// instead of holding the thread that serves it (and every other device it serves).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Bounds each blocking send and receive on socket `fd` to `timeout` (SO_SNDTIMEO,
/// SO_RCVTIMEO): a call that waits longer fails with `WouldBlock`.
pub fn set_io_timeouts(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `tv` is a live timeval whose size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits up to `timeout` until one of `fds` is readable (or hung up); returns which.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: p is a live array of p.len() pollfds; ts and the null sigmask are valid.
    let r = unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            p.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Adds 1 to an eventfd (signals it).
pub fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array.
    let r = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    check(r).map(|_| ())
}

/// Takes a descriptor a client handed over as an eventfd (to be signalled, or read
/// for an unmask): it must be one, and it is made non-blocking. A pipe or a socket in
/// its place would hold the thread that signals it as soon as its reader stopped
/// reading; a non-blocking eventfd whose counter is full fails the signal instead.
/// (The client shares the open file and could make it blocking again: it would then
/// only stall its own interrupts once it also filled the counter to 2^64 - 2.)
pub fn adopt_eventfd(fd: OwnedFd) -> io::Result<OwnedFd> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not an eventfd", link.display()),
        ));
    }
    // SAFETY: fcntl on a descriptor we own; the flags are read, then written back
    // with O_NONBLOCK added.
    let r = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads (and so clears) an eventfd's counter if it is set; false if it was not.
pub fn eventfd_take(fd: &OwnedFd) -> io::Result<bool> {
    if !wait_readable(&[fd.as_raw_fd()], Duration::ZERO)?[0] {
        return Ok(false);
    }
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a live array.
    let r = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    match check(r) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A new eventfd (for tests: QEMU makes the real ones).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a valid result is a new descriptor we own.
    let r = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}
