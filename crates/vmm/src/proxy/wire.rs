//! The messages of QEMU's multi-process protocol (`x-pci-proxy-dev`, QEMU 7.2's
//! `hw/remote`), as views over bytes: a 16-byte header (command as a C int, 4 bytes of
//! padding, payload size as a size_t, all little-endian on x86-64), then the payload;
//! file descriptors travel beside the bytes (SCM_RIGHTS).
//!
//! | cmd | name | payload | fds |
//! |---|---|---|---|
//! | 0 | SYNC_SYSMEM | gpas[8] u64, sizes[8] u64, offsets[8] i64 | one memfd per region |
//! | 1 | RET | u64 (or nothing) | - |
//! | 2 | PCI_CFGWRITE | addr u32, val u32, len i32 | - |
//! | 3 | PCI_CFGREAD | addr u32, val u32, len i32 | - |
//! | 4 | BAR_WRITE | addr u64, val u64, size u32, memory u8, 3 pad | - |
//! | 5 | BAR_READ | as BAR_WRITE | - |
//! | 6 | SET_IRQFD | - | irqfd, resamplefd |
//! | 7 | DEVICE_RESET | - | - |
//!
//! QEMU waits for a RET after each message it sends; the remote never sends first.

use thiserror::Error;

pub const HEADER_LEN: usize = 16;
/// Regions (and fds) a SYNC_SYSMEM carries at most.
pub const MAX_FDS: usize = 8;
/// The largest payload: SYNC_SYSMEM's three arrays.
pub const MAX_PAYLOAD: usize = 3 * 8 * MAX_FDS;

pub mod cmd {
    pub const SYNC_SYSMEM: i32 = 0;
    pub const RET: i32 = 1;
    pub const PCI_CFGWRITE: i32 = 2;
    pub const PCI_CFGREAD: i32 = 3;
    pub const BAR_WRITE: i32 = 4;
    pub const BAR_READ: i32 = 5;
    pub const SET_IRQFD: i32 = 6;
    pub const DEVICE_RESET: i32 = 7;
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("unknown command {0}")]
    UnknownCommand(i32),
    #[error("payload of {0} bytes: at most {MAX_PAYLOAD}")]
    TooLong(u64),
    #[error("command {cmd}: payload of {len} bytes, {want} expected")]
    BadLength { cmd: i32, len: usize, want: usize },
    #[error("command {cmd}: {got} file descriptors, {want}")]
    BadFds {
        cmd: i32,
        got: usize,
        want: &'static str,
    },
    #[error("config access of {len} bytes at {addr:#x}")]
    BadConfigAccess { addr: u32, len: i32 },
    #[error("BAR access of {0} bytes")]
    BadBarAccess(u32),
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub cmd: i32,
    pub size: u64,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let cmd = i32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        let size = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        if !(cmd::SYNC_SYSMEM..=cmd::DEVICE_RESET).contains(&cmd) {
            return Err(ProtocolError::UnknownCommand(cmd));
        }
        if size > MAX_PAYLOAD as u64 {
            return Err(ProtocolError::TooLong(size));
        }
        Ok(Header { cmd, size })
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.cmd.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b
    }
}

/// One region of guest RAM in a SYNC_SYSMEM: `size` bytes at guest-physical `gpa`,
/// at `offset` in its fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysmemRegion {
    pub gpa: u64,
    pub size: u64,
    pub offset: i64,
}

/// A message from QEMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Guest RAM is now these regions (the fds come with the message, in order).
    SyncSysmem(Vec<SysmemRegion>),
    ConfigWrite {
        addr: u32,
        value: u32,
        len: u8,
    },
    ConfigRead {
        addr: u32,
        len: u8,
    },
    /// `memory`: a memory BAR (else an I/O BAR); `addr` is the guest's address.
    BarWrite {
        addr: u64,
        value: u64,
        size: u8,
        memory: bool,
    },
    BarRead {
        addr: u64,
        size: u8,
        memory: bool,
    },
    /// The interrupt eventfds come with the message: irqfd, then resamplefd.
    SetIrqfd,
    DeviceReset,
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"))
}

impl Request {
    /// Parses the payload of a message with header `h` that came with `fds` file
    /// descriptors.
    pub fn parse(h: Header, payload: &[u8], fds: usize) -> Result<Request, ProtocolError> {
        let want_len = |want: usize| {
            if payload.len() < want {
                Err(ProtocolError::BadLength {
                    cmd: h.cmd,
                    len: payload.len(),
                    want,
                })
            } else {
                Ok(())
            }
        };
        let want_fds = |ok: bool, want: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ProtocolError::BadFds {
                    cmd: h.cmd,
                    got: fds,
                    want,
                })
            }
        };
        match h.cmd {
            cmd::SYNC_SYSMEM => {
                want_len(MAX_PAYLOAD)?;
                want_fds((1..=MAX_FDS).contains(&fds), "1 to 8")?;
                Ok(Request::SyncSysmem(
                    (0..fds)
                        .map(|i| SysmemRegion {
                            gpa: u64_at(payload, 8 * i),
                            size: u64_at(payload, 64 + 8 * i),
                            offset: u64_at(payload, 128 + 8 * i) as i64,
                        })
                        .collect(),
                ))
            }
            cmd::PCI_CFGWRITE | cmd::PCI_CFGREAD => {
                want_len(12)?;
                want_fds(fds == 0, "none")?;
                let addr = u32_at(payload, 0);
                let value = u32_at(payload, 4);
                let len = u32_at(payload, 8) as i32;
                let ok = matches!(len, 1 | 2 | 4) && addr < 4096 && addr as i32 % len == 0;
                if !ok {
                    return Err(ProtocolError::BadConfigAccess { addr, len });
                }
                let len = len as u8;
                Ok(if h.cmd == cmd::PCI_CFGWRITE {
                    Request::ConfigWrite { addr, value, len }
                } else {
                    Request::ConfigRead { addr, len }
                })
            }
            cmd::BAR_WRITE | cmd::BAR_READ => {
                want_len(21)?;
                want_fds(fds == 0, "none")?;
                let addr = u64_at(payload, 0);
                let value = u64_at(payload, 8);
                let size = u32_at(payload, 16);
                let memory = payload[20] != 0;
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(ProtocolError::BadBarAccess(size));
                }
                let size = size as u8;
                Ok(if h.cmd == cmd::BAR_WRITE {
                    Request::BarWrite {
                        addr,
                        value,
                        size,
                        memory,
                    }
                } else {
                    Request::BarRead { addr, size, memory }
                })
            }
            cmd::SET_IRQFD => {
                want_fds(fds == 2, "2 (irqfd, resamplefd)")?;
                Ok(Request::SetIrqfd)
            }
            cmd::DEVICE_RESET => {
                want_fds(fds == 0, "none")?;
                Ok(Request::DeviceReset)
            }
            other => Err(ProtocolError::UnknownCommand(other)),
        }
    }

    /// The message as QEMU sends it (header and payload; fds go beside).
    pub fn emit(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let cmd = match *self {
            Request::SyncSysmem(ref regions) => {
                p.resize(MAX_PAYLOAD, 0);
                for (i, r) in regions.iter().enumerate().take(MAX_FDS) {
                    p[8 * i..8 * i + 8].copy_from_slice(&r.gpa.to_le_bytes());
                    p[64 + 8 * i..72 + 8 * i].copy_from_slice(&r.size.to_le_bytes());
                    p[128 + 8 * i..136 + 8 * i].copy_from_slice(&r.offset.to_le_bytes());
                }
                cmd::SYNC_SYSMEM
            }
            Request::ConfigWrite { addr, value, len } => {
                config_payload(&mut p, addr, value, len);
                cmd::PCI_CFGWRITE
            }
            Request::ConfigRead { addr, len } => {
                config_payload(&mut p, addr, 0, len);
                cmd::PCI_CFGREAD
            }
            Request::BarWrite {
                addr,
                value,
                size,
                memory,
            } => {
                bar_payload(&mut p, addr, value, size, memory);
                cmd::BAR_WRITE
            }
            Request::BarRead { addr, size, memory } => {
                bar_payload(&mut p, addr, 0, size, memory);
                cmd::BAR_READ
            }
            Request::SetIrqfd => cmd::SET_IRQFD,
            Request::DeviceReset => cmd::DEVICE_RESET,
        };
        let mut out = Header {
            cmd,
            size: p.len() as u64,
        }
        .emit()
        .to_vec();
        out.extend_from_slice(&p);
        out
    }
}

fn config_payload(p: &mut Vec<u8>, addr: u32, value: u32, len: u8) {
    p.extend_from_slice(&addr.to_le_bytes());
    p.extend_from_slice(&value.to_le_bytes());
    p.extend_from_slice(&(len as i32).to_le_bytes());
}

fn bar_payload(p: &mut Vec<u8>, addr: u64, value: u64, size: u8, memory: bool) {
    p.extend_from_slice(&addr.to_le_bytes());
    p.extend_from_slice(&value.to_le_bytes());
    p.extend_from_slice(&(size as u32).to_le_bytes());
    p.extend_from_slice(&[memory as u8, 0, 0, 0]);
}

/// A RET carrying `value` (what QEMU's remote sends for config and BAR accesses).
pub fn ret(value: u64) -> [u8; HEADER_LEN + 8] {
    let mut b = [0u8; HEADER_LEN + 8];
    b[..HEADER_LEN].copy_from_slice(
        &Header {
            cmd: cmd::RET,
            size: 8,
        }
        .emit(),
    );
    b[HEADER_LEN..].copy_from_slice(&value.to_le_bytes());
    b
}

/// A RET without payload (QEMU's remote answers DEVICE_RESET so).
pub fn ret_empty() -> [u8; HEADER_LEN] {
    Header {
        cmd: cmd::RET,
        size: 0,
    }
    .emit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(r: Request, fds: usize) {
        let b = r.emit();
        let h = Header::parse(b[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.size as usize, b.len() - HEADER_LEN);
        assert_eq!(Request::parse(h, &b[HEADER_LEN..], fds).unwrap(), r);
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(
            Request::SyncSysmem(vec![
                SysmemRegion {
                    gpa: 0,
                    size: 0xa0000,
                    offset: 0,
                },
                SysmemRegion {
                    gpa: 0x100000,
                    size: 0x1ff00000,
                    offset: 0x100000,
                },
            ]),
            2,
        );
        round_trip(
            Request::ConfigWrite {
                addr: 0x10,
                value: 0xffff_ffff,
                len: 4,
            },
            0,
        );
        round_trip(Request::ConfigRead { addr: 0x3d, len: 1 }, 0);
        round_trip(
            Request::BarWrite {
                addr: 0xfebf_1000,
                value: 0x1234,
                size: 2,
                memory: true,
            },
            0,
        );
        round_trip(
            Request::BarRead {
                addr: 0xc000,
                size: 4,
                memory: false,
            },
            0,
        );
        round_trip(Request::SetIrqfd, 2);
        round_trip(Request::DeviceReset, 0);
    }

    #[test]
    fn the_byte_layout_is_qemus() {
        let b = Request::BarRead {
            addr: 0x1122_3344_5566_7788,
            size: 4,
            memory: true,
        }
        .emit();
        assert_eq!(&b[..4], &5i32.to_le_bytes());
        assert_eq!(&b[4..8], &[0; 4], "padding after the int");
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 24);
        assert_eq!(b[16], 0x88);
        assert_eq!(b[16 + 16], 4);
        assert_eq!(b[16 + 20], 1);
        let r = ret(0xdead_beef);
        assert_eq!(&r[..4], &1i32.to_le_bytes());
        assert_eq!(u64::from_le_bytes(r[8..16].try_into().unwrap()), 8);
        assert_eq!(u64::from_le_bytes(r[16..].try_into().unwrap()), 0xdead_beef);
        assert_eq!(&ret_empty()[8..], &[0; 8]);
    }

    #[test]
    fn bad_messages_are_errors() {
        let mut h = Header::parse(&Request::DeviceReset.emit()[..16].try_into().unwrap()).unwrap();
        assert_eq!(
            Request::parse(h, &[], 1),
            Err(ProtocolError::BadFds {
                cmd: 7,
                got: 1,
                want: "none"
            })
        );
        h.cmd = cmd::PCI_CFGREAD;
        assert!(matches!(
            Request::parse(h, &[0; 4], 0),
            Err(ProtocolError::BadLength { .. })
        ));
        let cfg = |addr: u32, len: i32| {
            let mut p = addr.to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            p.extend_from_slice(&len.to_le_bytes());
            Request::parse(h, &p, 0)
        };
        assert!(cfg(0x10, 3).is_err());
        assert!(cfg(0x11, 2).is_err());
        assert!(cfg(4096, 4).is_err());
        assert!(cfg(0x3c, 4).is_ok());
        let mut raw = [0u8; 16];
        raw[0] = 9;
        assert_eq!(Header::parse(&raw), Err(ProtocolError::UnknownCommand(9)));
        raw[0] = 1;
        raw[8..].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(Header::parse(&raw), Err(ProtocolError::TooLong(1000)));
    }

    proptest! {
        #[test]
        fn parsing_anything_never_panics(
            raw in any::<[u8; 16]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            fds in 0usize..10,
        ) {
            if let Ok(h) = Header::parse(&raw) {
                let _ = Request::parse(h, &payload, fds);
            }
        }
    }
}
