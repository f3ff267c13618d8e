//! Just enough of bpf(2) for AF_XDP: an XSKMAP, the small XDP program that redirects
//! frames into it, and a BPF link that attaches the program to an interface. The
//! program is assembled here from a dozen instructions, so no compiler, libbpf or
//! libxdp is needed at build or run time. The link detaches the program when its file
//! descriptor closes, so a crashed process leaves nothing attached.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `XDP_PASS`: hand the frame to the kernel stack.
const XDP_PASS: i32 = 2;
/// The `bpf_redirect_map` helper.
const HELPER_REDIRECT_MAP: i32 = 51;
/// `src_reg` of a 64-bit immediate load that names a map by file descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("bpf({op}): {source} (needs CAP_BPF and CAP_NET_ADMIN)")]
    Syscall { op: &'static str, source: io::Error },
    #[error("the kernel's verifier refused the XDP program: {log}")]
    Verifier { log: String },
    #[error("attaching XDP to interface {ifindex} in {mode} mode: {source}")]
    Attach {
        ifindex: u32,
        mode: &'static str,
        source: io::Error,
    },
}

/// `union bpf_attr` for BPF_MAP_CREATE (the leading fields).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_PROG_LOAD (the leading fields).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE (the leading fields).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is the repr(C) prefix of union bpf_attr this command reads, alive
    // for the call; the kernel requires bytes past the passed size to be absent, not
    // zero, so passing exactly its size is correct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the commands used here return a new descriptor nothing else owns
    // (BPF_MAP_UPDATE_ELEM returns 0 and is handled by its caller).
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The few instruction forms the redirect program needs.
mod asm {
    use super::Insn;

    const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: src << 4 | dst,
            off,
            imm,
        }
    }
    /// dst = src (64-bit).
    pub const fn mov(dst: u8, src: u8) -> Insn {
        insn(0xbf, dst, src, 0, 0)
    }
    /// dst = imm (64-bit).
    pub const fn mov_imm(dst: u8, imm: i32) -> Insn {
        insn(0xb7, dst, 0, 0, imm)
    }
    /// dst += imm (64-bit).
    pub const fn add_imm(dst: u8, imm: i32) -> Insn {
        insn(0x07, dst, 0, 0, imm)
    }
    /// dst = *(u32 *)(src + off).
    pub const fn load32(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x61, dst, src, off, 0)
    }
    /// dst = *(u16 *)(src + off).
    pub const fn load16(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x69, dst, src, off, 0)
    }
    /// if dst > src goto +off.
    pub const fn jgt(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x2d, dst, src, off, 0)
    }
    /// if dst == imm goto +off.
    pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        insn(0x15, dst, 0, off, imm)
    }
    /// if dst != imm goto +off.
    pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        insn(0x55, dst, 0, off, imm)
    }
    /// dst = the map with this file descriptor (a two-slot instruction).
    pub const fn load_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [
            insn(0x18, dst, super::BPF_PSEUDO_MAP_FD, 0, fd),
            insn(0, 0, 0, 0, 0),
        ]
    }
    pub const fn call(helper: i32) -> Insn {
        insn(0x85, 0, 0, 0, helper)
    }
    pub const fn exit() -> Insn {
        insn(0x95, 0, 0, 0, 0)
    }
}

/// A 16-bit EtherType as a native-endian load of its two wire bytes reads it.
fn wire_u16(ethertype: u16) -> i32 {
    u16::from_ne_bytes(ethertype.to_be_bytes()) as i32
}

/// The XDP program: frames of `ethertype` (directly or behind one 802.1Q tag; every
/// frame when `None`) go to the AF_XDP socket registered in `xskmap` for the receive
/// queue they arrived on; anything else, and frames of queues with no socket, go on to
/// the kernel stack.
pub fn redirect_program(xskmap_fd: i32, ethertype: Option<u16>) -> Vec<Insn> {
    use asm::*;
    // Registers: r1 = ctx (struct xdp_md) on entry, saved in r6; r2 = data,
    // r3 = data_end; xdp_md: data at 0, data_end at 4, rx_queue_index at 16.
    let mut p = vec![mov(6, 1)];
    if let Some(et) = ethertype {
        let (et, vlan) = (wire_u16(et), wire_u16(0x8100));
        p.extend([
            load32(2, 6, 0),
            load32(3, 6, 4),
            mov(4, 2),
            add_imm(4, 18),
            jgt(4, 3, 11),       // shorter than a tagged header: to the stack
            load16(5, 2, 12),    // EtherType (or TPID)
            jeq_imm(5, et, 3),   // ours, untagged: redirect
            jne_imm(5, vlan, 8), // neither ours nor tagged: to the stack
            load16(5, 2, 16),    // EtherType behind the tag
            jne_imm(5, et, 6),   // tagged, not ours: to the stack
        ]);
    }
    p.push(load32(2, 6, 16));
    p.extend(load_map_fd(1, xskmap_fd));
    p.extend([
        mov_imm(3, XDP_PASS), // no socket on this queue: to the stack
        call(HELPER_REDIRECT_MAP),
        exit(),
    ]);
    if ethertype.is_some() {
        p.extend([mov_imm(0, XDP_PASS), exit()]);
    }
    p
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    /// In the driver (native XDP), falling back to generic.
    Auto,
    /// In the driver; fails where the driver has no XDP support.
    Native,
    /// In the generic (skb) path, which every interface has.
    Generic,
}

/// An XDP program attached to an interface with an XSKMAP for its sockets. Dropping
/// it detaches the program.
pub struct XdpRedirect {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    native: bool,
}

impl XdpRedirect {
    /// Creates the map (one slot per receive queue, `queues` of them), loads the
    /// program and attaches it to `ifindex`.
    pub fn attach(
        ifindex: u32,
        queues: u32,
        ethertype: Option<u16>,
        how: XdpAttach,
    ) -> Result<XdpRedirect, BpfError> {
        let mut attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: queues.max(1),
            map_name: name16("tether_xsks"),
            ..MapCreateAttr::default()
        };
        let map = bpf(BPF_MAP_CREATE, &mut attr).map_err(|source| BpfError::Syscall {
            op: "BPF_MAP_CREATE",
            source,
        })?;
        let prog = load(&redirect_program(map.as_raw_fd(), ethertype))?;
        let modes: &[(u32, &'static str)] = match how {
            XdpAttach::Auto => &[
                (XDP_FLAGS_DRV_MODE, "native"),
                (XDP_FLAGS_SKB_MODE, "generic"),
            ],
            XdpAttach::Native => &[(XDP_FLAGS_DRV_MODE, "native")],
            XdpAttach::Generic => &[(XDP_FLAGS_SKB_MODE, "generic")],
        };
        let mut last = None;
        for &(flags, mode) in modes {
            let mut attr = LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_XDP,
                flags,
            };
            match bpf(BPF_LINK_CREATE, &mut attr) {
                Ok(link) => {
                    return Ok(XdpRedirect {
                        map,
                        _prog: prog,
                        _link: link,
                        native: flags == XDP_FLAGS_DRV_MODE,
                    })
                }
                Err(source) => {
                    last = Some(BpfError::Attach {
                        ifindex,
                        mode,
                        source,
                    })
                }
            }
        }
        Err(last.expect("at least one mode is tried"))
    }

    /// Whether the program runs in the driver (native XDP) rather than the generic path.
    pub fn is_native(&self) -> bool {
        self.native
    }

    /// Sends frames of receive queue `queue` to the AF_XDP socket `xsk_fd`.
    pub fn register(&self, queue: u32, xsk_fd: i32) -> Result<(), BpfError> {
        let (key, value) = (queue, xsk_fd as u32);
        let mut attr = MapElemAttr {
            map_fd: self.map.as_raw_fd() as u32,
            pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        // SAFETY: `attr` is the BPF_MAP_UPDATE_ELEM prefix of bpf_attr; key and value
        // point at live u32s, the map's key and value sizes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &mut attr as *mut MapElemAttr as *mut libc::c_void,
                std::mem::size_of::<MapElemAttr>() as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(BpfError::Syscall {
                op: "BPF_MAP_UPDATE_ELEM",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Loads an XDP program, returning the verifier's log when it is refused.
fn load(insns: &[Insn]) -> Result<OwnedFd, BpfError> {
    // The program calls no GPL-only helper; the string only has to be one the kernel
    // knows.
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name16("tether_xsk"),
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|source| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        if end > 0 {
            BpfError::Verifier {
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
            }
        } else {
            BpfError::Syscall {
                op: "BPF_PROG_LOAD",
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        // r1 = *(u32 *)(r6 + 16): opcode 0x61, dst 1 in the low nibble, src 6 high.
        assert_eq!(
            asm::load32(1, 6, 16),
            Insn {
                code: 0x61,
                regs: 0x61,
                off: 16,
                imm: 0
            }
        );
        let [a, b] = asm::load_map_fd(1, 7);
        assert_eq!((a.code, a.regs, a.imm), (0x18, 0x11, 7));
        assert_eq!(
            b,
            Insn {
                code: 0,
                regs: 0,
                off: 0,
                imm: 0
            }
        );
    }

    #[test]
    fn every_jump_lands_on_the_pass_exit() {
        // The filtering program ends "r0 = XDP_PASS; exit", and every conditional jump
        // must land on it, or (a frame of ours) on the redirect. The verifier refuses
        // unreachable instructions, so the program without a filter has no such tail.
        let all = redirect_program(3, None);
        assert_eq!(all.len(), 7);
        assert!(all.iter().all(|i| !matches!(i.code, 0x2d | 0x15 | 0x55)));
        for et in [Some(0x88b5), Some(0x0800)] {
            let p = redirect_program(3, et);
            let pass = p.len() - 2;
            assert_eq!(p[pass], asm::mov_imm(0, XDP_PASS));
            let redirect = p.iter().position(|x| *x == asm::load32(2, 6, 16)).unwrap();
            for (i, insn) in p.iter().enumerate() {
                let target = (i as isize + 1 + insn.off as isize) as usize;
                match insn.code {
                    0x15 => assert_eq!(target, redirect, "jump at {i}"),
                    0x2d | 0x55 => assert_eq!(target, pass, "jump at {i}"),
                    _ => {}
                }
            }
        }
        assert_eq!(wire_u16(0x88b5).to_ne_bytes()[..2], [0x88, 0xb5]);
    }
}
