//! A small conversation between a host bridge and an I/O box that uses one frame of
//! every kind and every TLP type, with completions that answer earlier requests.
//! `tether wire sample` writes it as pcap; tests, the dissector test and the fuzz
//! corpus use it too.

use tlp::{
    Atomic, AtomicOp, Bdf, Completion, CompletionStatus, ConfigRequest, Header, HeaderFlags,
    IntxPin, IoRequest, MemRead, MemWrite, Message, MessageRouting, Tag, Tlp,
};

use crate::ctrl::{CtrlOp, CtrlRepr, CtrlStatus};
use crate::ethernet::{EthernetRepr, MacAddr, VlanTag};
use crate::frame::{emit_bare, emit_ctrl, emit_info, FrameWriter};
use crate::header::{flags, FrameKind, TetherHeader};
use crate::info::{BridgeRole, DeviceInfo, InfoRepr, DEVICE_READY};
use crate::ETHERTYPE;

/// The host bridge's MAC in the sample.
pub const HOST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
/// The I/O box's MAC in the sample.
pub const BOX_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
/// The manager's MAC in the sample.
pub const MANAGER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x03]);
/// The group the sample's host and device share.
pub const SAMPLE_GID: u16 = 10;

/// A ready memdev (tether's DMA test device: 1de5:0001, memory controller 058000) in
/// `slot` of group `gid`, as a box announces it in INFO: for tests that need one.
pub fn memdev(slot: u8, gid: u16) -> DeviceInfo {
    DeviceInfo {
        slot,
        flags: DEVICE_READY,
        gid,
        vendor_id: 0x1de5,
        device_id: 0x0001,
        class_code: 0x058000,
        revision: 1,
        subsystem_vendor_id: 0x1de5,
        subsystem_id: 0x0001,
    }
}

/// One frame of the sample with its capture time.
#[derive(Clone, Debug)]
pub struct SampleFrame {
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub bytes: Vec<u8>,
    /// What the frame is, in one line.
    pub summary: &'static str,
}

const ROOT: Bdf = Bdf::from_u16(0x0000);
const DEVICE: Bdf = Bdf::from_u16(0x0100);

fn tag(t: u16) -> Tag {
    Tag::wrapping(t)
}

fn eth(src: MacAddr, dst: MacAddr) -> EthernetRepr {
    EthernetRepr {
        dst,
        src,
        vlan: Some(VlanTag {
            pcp: 5,
            dei: false,
            vid: SAMPLE_GID,
        }),
        ethertype: ETHERTYPE,
    }
}

fn header(kind: FrameKind, epoch: u32, seq: u32, ack: u32, tsval: u32) -> TetherHeader {
    TetherHeader {
        kind,
        flags: if ack != 0 { flags::ACK } else { 0 },
        epoch,
        peer_epoch: if epoch == HOST_EPOCH {
            BOX_EPOCH
        } else {
            HOST_EPOCH
        },
        seq,
        ack,
        tsval,
        tsecr: tsval.wrapping_sub(17),
        window: 64,
        echo_wait: 0,
    }
}

const HOST_EPOCH: u32 = 0x1111_0001;
const BOX_EPOCH: u32 = 0x2222_0001;

fn data_frame(src: MacAddr, dst: MacAddr, hdr: TetherHeader, tlps: &[Tlp<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 9018];
    let mut w = FrameWriter::new(&mut buf, &eth(src, dst)).expect("sample frame fits");
    for t in tlps {
        w.push_tlp(t).expect("sample TLPs are valid and fit");
    }
    let n = w.finish(&hdr).expect("sample header fits");
    buf.truncate(n);
    buf
}

fn cfg(type1: bool, t: u16, register: u16) -> ConfigRequest {
    ConfigRequest {
        type1,
        requester: ROOT,
        tag: tag(t),
        target: DEVICE,
        register,
        first_be: 0xf,
    }
}

fn cpl(
    completer: Bdf,
    requester: Bdf,
    t: u16,
    status: CompletionStatus,
    bc: u16,
    la: u8,
) -> Header {
    Header::Completion(Completion {
        completer,
        status,
        bcm: false,
        byte_count: bc,
        requester,
        tag: tag(t),
        lower_address: la,
        locked: false,
    })
}

fn mrd(t: u16, address: u64, length_dw: u16, locked: bool) -> Header {
    Header::MemRead(MemRead {
        requester: ROOT,
        tag: tag(t),
        address,
        length_dw,
        first_be: 0xf,
        last_be: if length_dw > 1 { 0xf } else { 0 },
        locked,
        hint: None,
    })
}

fn mwr(requester: Bdf, address: u64, last_be: u8) -> Header {
    Header::MemWrite(MemWrite {
        requester,
        tag: Tag::default(),
        address,
        first_be: 0xf,
        last_be,
        hint: None,
    })
}

fn atomic(op: AtomicOp, t: u16, address: u64) -> Header {
    Header::Atomic(Atomic {
        op,
        requester: DEVICE,
        tag: tag(t),
        address,
        hint: None,
    })
}

/// The same conversation in a group with `key`: every frame carries the AUTH flag and
/// its trailer (for the dissector's and the decoder's tag checks): the group key's tag
/// on INFO and CTRL, its sender's seal (nonce and tag) on a session frame.
pub fn frames_keyed(key: &crate::AuthKey) -> Vec<SampleFrame> {
    // Each sender's nonces, as its run would draw them (fixed here: the same sample
    // every time).
    let mut nonces = std::collections::BTreeMap::new();
    frames()
        .into_iter()
        .map(|f| {
            let frame = crate::Frame::parse(&f.bytes, None).expect("sample frames parse");
            let src = frame.ethernet.src;
            let mut buf = vec![0u8; f.bytes.len() + crate::SEAL_LEN];
            let session_key = key.session_key(src);
            let mut w = if frame.header.kind.is_session() {
                let seq = nonces.entry(src).or_insert_with(|| {
                    crate::NonceSeq::new(
                        u32::from_be_bytes([src.0[2], src.0[3], src.0[4], src.0[5]]),
                        f.time_us * 1000,
                    )
                });
                let seal = crate::Seal {
                    key: &session_key,
                    nonce: seq.next(),
                };
                FrameWriter::sealed(&mut buf, &frame.ethernet, Some(seal))
            } else {
                FrameWriter::keyed(&mut buf, &frame.ethernet, Some(key))
            }
            .expect("room for the headers");
            w.append_with(|b| {
                b[..frame.payload.len()].copy_from_slice(frame.payload);
                Ok(frame.payload.len())
            })
            .expect("room for the payload");
            let n = w.finish(&frame.header).expect("room for the tag");
            buf.truncate(n);
            SampleFrame { bytes: buf, ..f }
        })
        .collect()
}

/// The sample conversation, in time order.
pub fn frames() -> Vec<SampleFrame> {
    let mut out = Vec::new();
    let clock = core::cell::Cell::new(1_700_000_000_000_000u64);
    let mut push = |dt: u64, bytes: Vec<u8>, summary: &'static str| {
        clock.set(clock.get() + dt);
        out.push(SampleFrame {
            time_us: clock.get(),
            bytes,
            summary,
        });
    };
    let d4 = [0x11u8, 0x22, 0x33, 0x44];
    let d8 = [1u8, 2, 3, 4, 5, 6, 7, 8];
    let d16 = [0xa5u8; 16];
    let d64: Vec<u8> = (0..64).collect();
    // tsval: the sender's microsecond clock, here the capture clock's low 32 bits.
    let ts = |_: ()| clock.get() as u32;

    // INFO from the box (two devices) and from the host, broadcast in the group.
    let mut buf = vec![0u8; 1518];
    let devices = [
        DeviceInfo {
            slot: 0,
            flags: DEVICE_READY,
            gid: SAMPLE_GID,
            vendor_id: 0x1de5,
            device_id: 0x0001,
            class_code: 0xff0000,
            revision: 1,
            subsystem_vendor_id: 0x1de5,
            subsystem_id: 0x0001,
        },
        DeviceInfo {
            slot: 1,
            flags: DEVICE_READY,
            gid: SAMPLE_GID,
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class_code: 0x018000,
            revision: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0002,
        },
    ];
    let info = |role, id| InfoRepr {
        role,
        flags: 0,
        bridge_id: id,
        mtu: 1500,
        max_tlps_per_frame: 32,
        interval_ms: 100,
        max_payload: 256,
        max_read_request: 512,
    };
    let n = emit_info(
        &mut buf,
        &eth(BOX_MAC, MacAddr::BROADCAST),
        &TetherHeader {
            epoch: BOX_EPOCH,
            ..TetherHeader::new(FrameKind::Info)
        },
        &info(BridgeRole::IoBox, 0x0200_0000_0002),
        &devices,
        None,
    )
    .expect("INFO fits");
    push(0, buf[..n].to_vec(), "INFO from the I/O box, two devices");
    let n = emit_info(
        &mut buf,
        &eth(HOST_MAC, MacAddr::BROADCAST),
        &TetherHeader {
            epoch: HOST_EPOCH,
            ..TetherHeader::new(FrameKind::Info)
        },
        &info(BridgeRole::Host, 0x0200_0000_0001),
        &[],
        None,
    )
    .expect("INFO fits");
    push(1_000, buf[..n].to_vec(), "INFO from the host bridge");

    // Configuration requests and their completions.
    push(
        500,
        data_frame(
            HOST_MAC,
            BOX_MAC,
            header(FrameKind::Data, HOST_EPOCH, 1, 0, ts(())),
            &[
                Tlp::new(Header::ConfigRead(cfg(false, 1, 0x000)), &[]),
                Tlp::new(Header::ConfigWrite(cfg(false, 2, 0x010)), &[0xff; 4]),
                Tlp::new(Header::ConfigRead(cfg(true, 3, 0x100)), &[]),
                Tlp::new(Header::ConfigWrite(cfg(true, 4, 0x004)), &d4),
            ],
        ),
        "DATA: CfgRd0, CfgWr0, CfgRd1, CfgWr1",
    );
    push(
        23,
        data_frame(
            BOX_MAC,
            HOST_MAC,
            header(FrameKind::Data, BOX_EPOCH, 1, 2, ts(())),
            &[
                Tlp::new(
                    cpl(DEVICE, ROOT, 1, CompletionStatus::Success, 4, 0),
                    &[0xe5, 0x1d, 0x01, 0x00],
                ),
                Tlp::new(cpl(DEVICE, ROOT, 2, CompletionStatus::Success, 4, 0), &[]),
                Tlp::new(
                    cpl(DEVICE, ROOT, 3, CompletionStatus::UnsupportedRequest, 4, 0),
                    &[],
                ),
                Tlp::new(
                    cpl(DEVICE, ROOT, 4, CompletionStatus::RequestRetry, 4, 0),
                    &[],
                ),
            ],
        ),
        "DATA: CplD and Cpl (SC, UR, CRS) for the config requests",
    );

    // Memory and I/O requests from the host.
    let mut poisoned_write = Tlp::new(mwr(ROOT, 0xfebf_0010, 0), &d4);
    poisoned_write.flags = HeaderFlags {
        poisoned: true,
        ..HeaderFlags::default()
    };
    poisoned_write.digest = Some(0x0bad_c0de);
    push(
        300,
        data_frame(
            HOST_MAC,
            BOX_MAC,
            header(FrameKind::Data, HOST_EPOCH, 2, 2, ts(())),
            &[
                Tlp::new(mrd(5, 0xfebf_0000, 32, false), &[]),
                Tlp::new(mrd(6, 0x8_0000_1000, 2, false), &[]),
                Tlp::new(mrd(7, 0xfebf_0100, 1, true), &[]),
                Tlp::new(mwr(ROOT, 0xfebf_0008, 0xf), &d8),
                Tlp::new(mwr(ROOT, 0x8_0000_2000, 0xf), &d8),
                poisoned_write,
                Tlp::new(
                    Header::IoRead(IoRequest {
                        requester: ROOT,
                        tag: tag(8),
                        address: 0xc000,
                        first_be: 0x3,
                    }),
                    &[],
                ),
                Tlp::new(
                    Header::IoWrite(IoRequest {
                        requester: ROOT,
                        tag: tag(9),
                        address: 0xc004,
                        first_be: 0xf,
                    }),
                    &d4,
                ),
            ],
        ),
        "DATA: MRd32, MRd64, MRdLk, MWr32, MWr64, poisoned MWr with digest, IORd, IOWr",
    );
    push(
        19,
        data_frame(
            BOX_MAC,
            HOST_MAC,
            header(FrameKind::Data, BOX_EPOCH, 2, 3, ts(())),
            &[
                // 128 bytes from 0xfebf0000 split at the RCB into two completions.
                Tlp::new(
                    cpl(DEVICE, ROOT, 5, CompletionStatus::Success, 128, 0x00),
                    &d64,
                ),
                Tlp::new(
                    cpl(DEVICE, ROOT, 5, CompletionStatus::Success, 64, 0x40),
                    &d64,
                ),
                Tlp::new(
                    cpl(DEVICE, ROOT, 6, CompletionStatus::Success, 8, 0x00),
                    &d8,
                ),
                Tlp::new(
                    Header::Completion(Completion {
                        completer: DEVICE,
                        status: CompletionStatus::Success,
                        bcm: false,
                        byte_count: 4,
                        requester: ROOT,
                        tag: tag(7),
                        lower_address: 0,
                        locked: true,
                    }),
                    &d4,
                ),
                // I/O and configuration completions: Byte Count 4, Lower Address 0.
                Tlp::new(cpl(DEVICE, ROOT, 8, CompletionStatus::Success, 4, 0), &d4),
                Tlp::new(cpl(DEVICE, ROOT, 9, CompletionStatus::Success, 4, 0), &[]),
            ],
        ),
        "DATA: CplD (split at RCB), CplDLk, IO completions",
    );

    // Interrupts and messages from the device.
    push(
        40,
        data_frame(
            BOX_MAC,
            HOST_MAC,
            header(FrameKind::Data, BOX_EPOCH, 3, 3, ts(())),
            &[
                Tlp::new(mwr(DEVICE, 0xfee0_0000, 0), &[0x21, 0x40, 0, 0]),
                Tlp::new(
                    Header::Message(Message::intx(DEVICE, IntxPin::A, true)),
                    &[],
                ),
                Tlp::new(
                    Header::Message(Message::intx(DEVICE, IntxPin::A, false)),
                    &[],
                ),
                Tlp::new(
                    Header::Message(Message::vendor_defined(DEVICE, true, ROOT, 0x1de5, 0x7e7e)),
                    &d8,
                ),
                Tlp::new(
                    Header::Message(Message {
                        requester: DEVICE,
                        tag: Tag::default(),
                        code: tlp::message_code::ERR_COR,
                        routing: MessageRouting::ToRootComplex,
                        body: [0; 8],
                    }),
                    &[],
                ),
            ],
        ),
        "DATA: MSI (MWr), Assert_INTA, Deassert_INTA, Vendor_Defined MsgD, ERR_COR",
    );

    // AtomicOps from the device into host memory, and their completions.
    push(
        60,
        data_frame(
            BOX_MAC,
            HOST_MAC,
            header(FrameKind::Data, BOX_EPOCH, 4, 3, ts(())),
            &[
                Tlp::new(atomic(AtomicOp::FetchAdd, 10, 0x1000), &d4),
                Tlp::new(atomic(AtomicOp::Swap, 11, 0x2_0000_0008), &d8),
                Tlp::new(atomic(AtomicOp::CompareAndSwap, 12, 0x3010), &d16),
            ],
        ),
        "DATA: FetchAdd, Swap, CAS",
    );
    push(
        31,
        data_frame(
            HOST_MAC,
            BOX_MAC,
            header(FrameKind::Data, HOST_EPOCH, 3, 5, ts(())),
            // Byte Count is the operand size (CAS: one of its two operands); Lower
            // Address is reserved in AtomicOp completions, so 0.
            &[
                Tlp::new(cpl(ROOT, DEVICE, 10, CompletionStatus::Success, 4, 0), &d4),
                Tlp::new(cpl(ROOT, DEVICE, 11, CompletionStatus::Success, 8, 0), &d8),
                Tlp::new(
                    cpl(ROOT, DEVICE, 12, CompletionStatus::CompleterAbort, 8, 0),
                    &[],
                ),
            ],
        ),
        "DATA: completions for the AtomicOps (SC, SC, CA)",
    );

    // Acknowledgements.
    let n = emit_bare(
        &mut buf,
        &eth(BOX_MAC, HOST_MAC),
        &header(FrameKind::Ack, BOX_EPOCH, 0, 4, ts(())),
        None,
    )
    .expect("ACK fits");
    push(10, buf[..n].to_vec(), "ACK");
    // Frame 5 is missing and the box holds 8 on: resend 5..8.
    let mut nak = header(FrameKind::Nak, HOST_EPOCH, 8, 5, ts(()));
    nak.flags |= flags::GAP_END;
    let n = emit_bare(&mut buf, &eth(HOST_MAC, BOX_MAC), &nak, None).expect("NAK fits");
    push(10, buf[..n].to_vec(), "NAK expecting seq 5, gap end 8");

    // Management: move slot 1 to group 20, and the box's answer.
    let set = CtrlRepr {
        op: CtrlOp::SetGroup,
        status: CtrlStatus::Ok,
        gid: 20,
        request_id: 77,
        target: 0x0200_0000_0002,
        slot: 1,
    };
    let n = emit_ctrl(
        &mut buf,
        &eth(MANAGER_MAC, BOX_MAC),
        &TetherHeader {
            epoch: 0x3333_0001,
            ..TetherHeader::new(FrameKind::Ctrl)
        },
        &set,
        None,
    )
    .expect("CTRL fits");
    push(1_000, buf[..n].to_vec(), "CTRL set-group slot 1 -> GID 20");
    let n = emit_ctrl(
        &mut buf,
        &eth(BOX_MAC, MANAGER_MAC),
        &TetherHeader {
            epoch: BOX_EPOCH,
            ..TetherHeader::new(FrameKind::Ctrl)
        },
        &CtrlRepr {
            op: CtrlOp::Result,
            ..set
        },
        None,
    )
    .expect("CTRL fits");
    push(150, buf[..n].to_vec(), "CTRL result OK");
    out
}
