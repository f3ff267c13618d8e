//! vfio-user messages (QEMU's docs/interop/vfio-user.rst; QEMU >= 10.1 as the client)
//! as views over bytes. Every message starts with a 16-byte header: message ID (u16),
//! command (u16), size of the whole message (u32), flags (u32: type in bits 0-3,
//! 0 request, 1 reply; bit 4 no reply wanted; bit 5 error), error number (u32).
//! All little-endian. File descriptors travel beside the bytes (SCM_RIGHTS).
//!
//! The bodies are the VFIO ioctl structures they come from (argsz first). DMA_READ and
//! DMA_WRITE, which the server sends, follow QEMU's layout: address u64, count u32,
//! then the data at byte 28 of the message, the message padded to 32 + count bytes.

use thiserror::Error;

pub const HEADER_LEN: usize = 16;
/// Largest data transfer in one REGION_READ/WRITE or DMA_READ/WRITE we accept and
/// announce (`max_data_xfer_size`).
pub const MAX_DATA_XFER: usize = 1 << 20;
/// Largest message: a transfer plus its header and fields.
pub const MAX_MESSAGE: usize = MAX_DATA_XFER + 64;
/// Descriptors one message may carry (`max_msg_fds`).
pub const MAX_FDS: usize = 8;
/// DMA mappings one client may hold at once (`max_dma_maps`, announced and enforced).
/// QEMU maps each RAM section of the guest's address space once (guest RAM below and
/// above 4 GiB, the firmware's ROMs, the PAM pieces below 1 MiB: tens); its client
/// only takes the number for its check of virtio-mem (see docs/vmm.md).
pub const MAX_DMA_MAPS: usize = 1024;

pub mod cmd {
    pub const VERSION: u16 = 1;
    pub const DMA_MAP: u16 = 2;
    pub const DMA_UNMAP: u16 = 3;
    pub const DEVICE_GET_INFO: u16 = 4;
    pub const DEVICE_GET_REGION_INFO: u16 = 5;
    pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
    pub const DEVICE_GET_IRQ_INFO: u16 = 7;
    pub const DEVICE_SET_IRQS: u16 = 8;
    pub const REGION_READ: u16 = 9;
    pub const REGION_WRITE: u16 = 10;
    pub const DMA_READ: u16 = 11;
    pub const DMA_WRITE: u16 = 12;
    pub const DEVICE_RESET: u16 = 13;
}

pub mod flags {
    pub const TYPE_MASK: u32 = 0xf;
    pub const REQUEST: u32 = 0;
    pub const REPLY: u32 = 1;
    pub const NO_REPLY: u32 = 0x10;
    pub const ERROR: u32 = 0x20;
}

/// VFIO's constants that the messages carry.
pub mod vfio {
    pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
    pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
    /// BAR0..BAR5 are regions 0..5.
    pub const PCI_ROM_REGION: u32 = 6;
    pub const PCI_CONFIG_REGION: u32 = 7;
    pub const PCI_NUM_REGIONS: u32 = 9;
    pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
    pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
    pub const PCI_INTX_IRQ: u32 = 0;
    pub const PCI_MSI_IRQ: u32 = 1;
    pub const PCI_MSIX_IRQ: u32 = 2;
    pub const PCI_REQ_IRQ: u32 = 4;
    pub const PCI_NUM_IRQS: u32 = 5;
    pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
    pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
    pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
    pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;
    pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
    pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
    pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
    pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
    pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
    pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
    pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
    pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
    pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
}

/// errno values for error replies.
pub mod errno {
    pub const EINVAL: u32 = 22;
    pub const EFAULT: u32 = 14;
    pub const E2BIG: u32 = 7;
    pub const ENOTSUP: u32 = 95;
    pub const EIO: u32 = 5;
    /// No room for another DMA mapping (as the kernel's vfio answers VFIO_IOMMU_MAP_DMA
    /// beyond its `dma_entry_limit`).
    pub const ENOSPC: u32 = 28;
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("message of {0} bytes: the header alone is 16")]
    TooShort(u32),
    #[error("message of {0} bytes: at most {MAX_MESSAGE}")]
    TooLong(u32),
    #[error("command {cmd}: body of {len} bytes, at least {want} expected")]
    BadLength { cmd: u16, len: usize, want: usize },
    #[error("command {cmd}: {got} file descriptors, {want}")]
    BadFds {
        cmd: u16,
        got: usize,
        want: &'static str,
    },
    #[error("VERSION: {0}")]
    BadVersion(&'static str),
    #[error("{0} bytes of data: at most {MAX_DATA_XFER}")]
    TooMuchData(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub command: u16,
    /// The whole message, header included.
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let h = Header {
            id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32_at(b, 4),
            flags: u32_at(b, 8),
            error: u32_at(b, 12),
        };
        if (h.size as usize) < HEADER_LEN {
            return Err(ProtocolError::TooShort(h.size));
        }
        if h.size as usize > MAX_MESSAGE {
            return Err(ProtocolError::TooLong(h.size));
        }
        Ok(h)
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    pub fn is_reply(&self) -> bool {
        self.flags & flags::TYPE_MASK == flags::REPLY
    }

    /// Bytes after the header.
    pub fn body_len(&self) -> usize {
        self.size as usize - HEADER_LEN
    }
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"))
}

/// A request from the client. Offsets below are within the body (after the header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Version {
        major: u16,
        minor: u16,
        /// The client's JSON capabilities (NUL removed).
        capabilities: String,
    },
    DmaMap {
        flags: u32,
        /// Offset in the descriptor that comes with the message (if one does).
        offset: u64,
        iova: u64,
        size: u64,
    },
    DmaUnmap {
        flags: u32,
        iova: u64,
        size: u64,
    },
    DeviceGetInfo,
    GetRegionInfo {
        argsz: u32,
        index: u32,
    },
    GetIrqInfo {
        index: u32,
    },
    SetIrqs {
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        /// DATA_BOOL: one byte per interrupt.
        data: Vec<u8>,
    },
    RegionRead {
        offset: u64,
        region: u32,
        count: u32,
    },
    RegionWrite {
        offset: u64,
        region: u32,
        data: Vec<u8>,
    },
    DeviceReset,
    /// A command this server does not implement (answered with an error).
    Unsupported(u16),
}

impl Request {
    /// Parses the body of a request with header `h` that came with `fds` descriptors.
    pub fn parse(h: &Header, body: &[u8], fds: usize) -> Result<Request, ProtocolError> {
        let need = |want: usize| {
            if body.len() < want {
                Err(ProtocolError::BadLength {
                    cmd: h.command,
                    len: body.len(),
                    want,
                })
            } else {
                Ok(())
            }
        };
        let no_fds = || {
            if fds == 0 {
                Ok(())
            } else {
                Err(ProtocolError::BadFds {
                    cmd: h.command,
                    got: fds,
                    want: "none",
                })
            }
        };
        match h.command {
            cmd::VERSION => {
                need(4)?;
                no_fds()?;
                let text = &body[4..];
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                let capabilities = std::str::from_utf8(&text[..end])
                    .map_err(|_| ProtocolError::BadVersion("capabilities are not UTF-8"))?
                    .to_string();
                Ok(Request::Version {
                    major: u16::from_le_bytes([body[0], body[1]]),
                    minor: u16::from_le_bytes([body[2], body[3]]),
                    capabilities,
                })
            }
            cmd::DMA_MAP => {
                need(32)?;
                if fds > 1 {
                    return Err(ProtocolError::BadFds {
                        cmd: h.command,
                        got: fds,
                        want: "0 or 1",
                    });
                }
                Ok(Request::DmaMap {
                    flags: u32_at(body, 4),
                    offset: u64_at(body, 8),
                    iova: u64_at(body, 16),
                    size: u64_at(body, 24),
                })
            }
            cmd::DMA_UNMAP => {
                need(24)?;
                no_fds()?;
                Ok(Request::DmaUnmap {
                    flags: u32_at(body, 4),
                    iova: u64_at(body, 8),
                    size: u64_at(body, 16),
                })
            }
            cmd::DEVICE_GET_INFO => {
                no_fds()?;
                Ok(Request::DeviceGetInfo)
            }
            cmd::DEVICE_GET_REGION_INFO => {
                need(12)?;
                no_fds()?;
                Ok(Request::GetRegionInfo {
                    argsz: u32_at(body, 0),
                    index: u32_at(body, 8),
                })
            }
            cmd::DEVICE_GET_IRQ_INFO => {
                need(12)?;
                no_fds()?;
                Ok(Request::GetIrqInfo {
                    index: u32_at(body, 8),
                })
            }
            cmd::DEVICE_SET_IRQS => {
                need(20)?;
                let flags = u32_at(body, 4);
                let count = u32_at(body, 16);
                let data = if flags & vfio::IRQ_SET_DATA_BOOL != 0 {
                    need(20 + count as usize)?;
                    body[20..20 + count as usize].to_vec()
                } else {
                    Vec::new()
                };
                let eventfds = flags & vfio::IRQ_SET_DATA_EVENTFD != 0;
                if (!eventfds && fds > 0) || fds > MAX_FDS || (eventfds && fds > count as usize) {
                    return Err(ProtocolError::BadFds {
                        cmd: h.command,
                        got: fds,
                        want: "one per interrupt with DATA_EVENTFD, else none",
                    });
                }
                Ok(Request::SetIrqs {
                    flags,
                    index: u32_at(body, 8),
                    start: u32_at(body, 12),
                    count,
                    data,
                })
            }
            cmd::REGION_READ | cmd::REGION_WRITE => {
                need(16)?;
                no_fds()?;
                let offset = u64_at(body, 0);
                let region = u32_at(body, 8);
                let count = u32_at(body, 12);
                if count as usize > MAX_DATA_XFER {
                    return Err(ProtocolError::TooMuchData(count));
                }
                if h.command == cmd::REGION_READ {
                    return Ok(Request::RegionRead {
                        offset,
                        region,
                        count,
                    });
                }
                need(16 + count as usize)?;
                Ok(Request::RegionWrite {
                    offset,
                    region,
                    data: body[16..16 + count as usize].to_vec(),
                })
            }
            cmd::DEVICE_RESET => {
                no_fds()?;
                Ok(Request::DeviceReset)
            }
            other => Ok(Request::Unsupported(other)),
        }
    }
}

/// A whole message: the header for `body`, then `body`.
pub(crate) fn message(id: u16, command: u16, flags: u32, error: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Header {
        id,
        command,
        size: (HEADER_LEN + body.len()) as u32,
        flags,
        error,
    }
    .emit()
    .to_vec();
    out.extend_from_slice(body);
    out
}

/// A reply to request `h` carrying `body`.
pub fn reply(h: &Header, body: &[u8]) -> Vec<u8> {
    message(h.id, h.command, flags::REPLY, 0, body)
}

/// An error reply to request `h`.
pub fn error_reply(h: &Header, errno: u32) -> Vec<u8> {
    message(h.id, h.command, flags::REPLY | flags::ERROR, errno, &[])
}

/// Builds a body from little-endian fields.
#[derive(Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn u16(mut self, v: u16) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Body {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Body {
        self.0.extend_from_slice(v);
        self
    }
}

/// A DMA_READ request (server to client) for `count` bytes at `addr`.
pub fn dma_read(id: u16, addr: u64, count: u32) -> Vec<u8> {
    let body = Body::default().u64(addr).u32(count).u32(0).0;
    message(id, cmd::DMA_READ, flags::REQUEST, 0, &body)
}

/// A DMA_WRITE request (server to client) of `data` at `addr`.
pub fn dma_write(id: u16, addr: u64, data: &[u8]) -> Vec<u8> {
    let body = Body::default()
        .u64(addr)
        .u32(data.len() as u32)
        .bytes(data)
        .u32(0)
        .0;
    message(id, cmd::DMA_WRITE, flags::REQUEST, 0, &body)
}

/// The data of a DMA_READ reply `body` for `count` bytes (at body offset 12).
pub fn dma_read_data(body: &[u8], count: usize) -> Option<&[u8]> {
    body.get(12..12 + count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(command: u16, body: &[u8]) -> (Header, Vec<u8>) {
        let h = Header {
            id: 7,
            command,
            size: (HEADER_LEN + body.len()) as u32,
            flags: 0,
            error: 0,
        };
        (h, body.to_vec())
    }

    #[test]
    fn requests_parse_from_qemus_layouts() {
        let (h, b) = msg(
            cmd::VERSION,
            &Body::default()
                .u16(0)
                .u16(1)
                .bytes(b"{\"capabilities\":{}}\0")
                .0,
        );
        assert_eq!(
            Request::parse(&h, &b, 0).unwrap(),
            Request::Version {
                major: 0,
                minor: 1,
                capabilities: "{\"capabilities\":{}}".into()
            }
        );
        let map = Body::default()
            .u32(32)
            .u32(3)
            .u64(0x1000)
            .u64(0x10_0000)
            .u64(0x8000);
        let (h, b) = msg(cmd::DMA_MAP, &map.0);
        assert_eq!(
            Request::parse(&h, &b, 1).unwrap(),
            Request::DmaMap {
                flags: 3,
                offset: 0x1000,
                iova: 0x10_0000,
                size: 0x8000
            }
        );
        let (h, b) = msg(
            cmd::REGION_WRITE,
            &Body::default().u64(0x14).u32(7).u32(2).u16(0xbeef).0,
        );
        assert_eq!(
            Request::parse(&h, &b, 0).unwrap(),
            Request::RegionWrite {
                offset: 0x14,
                region: 7,
                data: vec![0xef, 0xbe]
            }
        );
        let irqs = Body::default()
            .u32(20)
            .u32(vfio::IRQ_SET_DATA_EVENTFD | vfio::IRQ_SET_ACTION_TRIGGER)
            .u32(vfio::PCI_MSIX_IRQ)
            .u32(0)
            .u32(2);
        let (h, b) = msg(cmd::DEVICE_SET_IRQS, &irqs.0);
        assert!(matches!(
            Request::parse(&h, &b, 2).unwrap(),
            Request::SetIrqs { count: 2, .. }
        ));
        assert!(
            Request::parse(&h, &b, 3).is_err(),
            "more fds than interrupts"
        );
        let (h, b) = msg(42, &[1, 2, 3]);
        assert_eq!(Request::parse(&h, &b, 0).unwrap(), Request::Unsupported(42));
    }

    #[test]
    fn bad_messages_are_errors() {
        let mut raw = Header {
            id: 1,
            command: cmd::REGION_READ,
            size: 8,
            flags: 0,
            error: 0,
        }
        .emit();
        assert_eq!(Header::parse(&raw), Err(ProtocolError::TooShort(8)));
        raw[4..8].copy_from_slice(&(MAX_MESSAGE as u32 + 1).to_le_bytes());
        assert!(matches!(
            Header::parse(&raw),
            Err(ProtocolError::TooLong(_))
        ));
        let (h, b) = msg(cmd::REGION_READ, &[0; 8]);
        assert!(matches!(
            Request::parse(&h, &b, 0),
            Err(ProtocolError::BadLength { .. })
        ));
        let (h, b) = msg(
            cmd::REGION_READ,
            &Body::default().u64(0).u32(0).u32(u32::MAX).0,
        );
        assert!(matches!(
            Request::parse(&h, &b, 0),
            Err(ProtocolError::TooMuchData(_))
        ));
        let (h, b) = msg(cmd::DEVICE_RESET, &[]);
        assert!(matches!(
            Request::parse(&h, &b, 1),
            Err(ProtocolError::BadFds { .. })
        ));
    }

    #[test]
    fn server_requests_and_replies_have_qemus_layout() {
        let r = dma_read(3, 0x1234, 64);
        assert_eq!(r.len(), 32);
        assert_eq!(u16::from_le_bytes([r[2], r[3]]), cmd::DMA_READ);
        assert_eq!(u32_at(&r, 4), 32);
        assert_eq!(u64_at(&r, 16), 0x1234);
        assert_eq!(u32_at(&r, 24), 64);
        let w = dma_write(4, 0x10, b"abc");
        assert_eq!(w.len(), 32 + 3);
        assert_eq!(&w[28..31], b"abc", "data at byte 28 as QEMU reads it");
        let h = Header::parse(&w[..16].try_into().unwrap()).unwrap();
        let e = error_reply(&h, errno::ENOTSUP);
        let eh = Header::parse(&e[..16].try_into().unwrap()).unwrap();
        assert!(eh.is_reply());
        assert_eq!(
            (eh.id, eh.flags & flags::ERROR, eh.error),
            (4, flags::ERROR, 95)
        );
        let mut reply_body = vec![0u8; 12];
        reply_body.extend_from_slice(&[9; 64]);
        assert_eq!(dma_read_data(&reply_body, 64), Some(&[9u8; 64][..]));
        assert_eq!(dma_read_data(&reply_body, 65), None);
    }

    proptest! {
        #[test]
        fn parsing_anything_never_panics(
            raw in any::<[u8; 16]>(),
            body in proptest::collection::vec(any::<u8>(), 0..128),
            fds in 0usize..10,
        ) {
            if let Ok(h) = Header::parse(&raw) {
                let _ = Request::parse(&h, &body, fds);
            }
        }
    }
}
