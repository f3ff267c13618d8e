//! Routing between a host's root complex and the devices behind its virtual switch,
//! as a PCIe switch routes, with the checks a switch whose ports lead to untrusted
//! boxes on an Ethernet segment needs.
//!
//! **Down** ([`Router::outbound`]), every TLP the root complex sends:
//! - configuration requests to the switch's own functions (buses 0, 1 and 2: the root
//!   port, the upstream port, the downstream ports) are answered here from their
//!   config images, as the switch's hardware answers them;
//! - configuration requests to a device go by bus number to the port whose secondary
//!   bus it is, memory requests by address to the port whose window holds them, and
//!   completions (answers to a device's DMA reads) by their requester's bus: each to
//!   the box and group of the device on that port;
//! - a request no live port claims, or for a device that is leaving (the ghost), is
//!   answered here with an Unsupported Request completion when it is non-posted and
//!   dropped when posted; nothing goes to the wire. Both are counted.
//!
//! The device behind port k answers at `(3+k):slot.0`, its slot number in its box as
//! its device number: that is how the box routes configuration requests to its
//! slots (an ExpEther box's downstream port converts the request for its slot the
//! same way), so nothing on the wire changes.
//!
//! **Up** ([`Router::inbound`]), every TLP a box sends: it is accepted only when it
//! comes from the box and group of the port it names:
//! - a request or message (DMA, MSI, INTx) by its requester ID: the bus must be a
//!   live port's, that port's device must be this box's, in this group, and the
//!   device number its slot;
//! - a completion by its tag: the host's request with that tag must have gone to a
//!   device of this box, in this group.
//!
//! So one box cannot complete another's reads, reach host memory with another
//! device's requester ID, or raise another device's interrupts. What is refused is
//! dropped and counted ([`RouteStats`]).
//!
//! When a device leaves, [`Router::fail_pending`] makes an Unsupported Request
//! completion for each request still waiting on it, so a waiting caller learns at
//! once that no answer will come, instead of after a completion timeout.
//!
//! This is pure state: no I/O, no clock.

use tlp::{Bdf, Completion, CompletionStatus, Header, Tag, Tlp};

use crate::hotplug::DeviceKey;
use crate::switch::{PortId, VirtualSwitch, WindowKind, ROOT_PORT};

/// Where a TLP from the root complex goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// To the device's box: `mac` in group `gid`.
    Fabric { gid: u16, mac: wire::MacAddr },
    /// Answered by the switch: this completion goes back to the root complex.
    Answer(Vec<u8>),
    /// Dropped: a posted request no port takes (counted).
    Dropped,
}

/// What the router counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RouteStats {
    /// TLPs routed to a box.
    pub to_fabric: u64,
    /// Configuration requests answered by the switch's own functions.
    pub switch_config: u64,
    /// Requests of the host that no live port claims: answered with an Unsupported
    /// Request completion when non-posted, dropped when posted.
    pub unrouted: u64,
    /// Requests of the host to a device that is leaving (the ghost): answered or
    /// dropped the same way, sending nothing.
    pub to_ghost: u64,
    /// TLPs of the host the switch cannot route (a kind it never sends, or one that
    /// does not parse): dropped.
    pub refused_outbound: u64,
    /// TLPs from boxes accepted.
    pub accepted: u64,
    /// TLPs from a box that name a port (by requester bus) not held by a device of that
    /// box and group, or another slot: dropped.
    pub misrouted: u64,
    /// Completions from a box whose tag no request to that box holds: dropped.
    pub foreign_completions: u64,
    /// TLPs from a device that is leaving: dropped.
    pub from_ghost: u64,
    /// TLPs from boxes that do not parse: dropped.
    pub unparsable: u64,
    /// Requests failed at once because their device left.
    pub failed_pending: u64,
}

/// Tags a request can carry (10 bits).
const TAGS: usize = Tag::MAX as usize + 1;

/// The device on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Occupant {
    key: DeviceKey,
    /// Leaving: accesses are answered here, nothing goes to or comes from the box.
    ghost: bool,
}

/// A request of the host on its way to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    port: PortId,
    /// The Byte Count of the completion that refuses it.
    byte_count: u16,
}

/// Why a device cannot be put on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("port {0} is not allocated in the switch")]
    NotAllocated(PortId),
    #[error("port {0} holds a device already")]
    Occupied(PortId),
    #[error("slot {0} cannot be a device number (0 to 31)")]
    Slot(u8),
}

/// The routing state of one host's switch.
pub struct Router {
    gid: u16,
    switch: VirtualSwitch,
    ports: Vec<Option<Occupant>>,
    /// The host's outstanding non-posted requests to devices, by tag (up to 10-bit
    /// tags).
    pending: Box<[Option<Outstanding>; TAGS]>,
    stats: RouteStats,
}

impl Router {
    /// The router of a host in group `gid` with `switch`.
    pub fn new(gid: u16, switch: VirtualSwitch) -> Router {
        let ports = vec![None; switch.capacity()];
        Router {
            gid,
            switch,
            ports,
            pending: Box::new([None; TAGS]),
            stats: RouteStats::default(),
        }
    }

    pub fn gid(&self) -> u16 {
        self.gid
    }

    pub fn switch(&self) -> &VirtualSwitch {
        &self.switch
    }

    /// The switch, to allocate and free ports.
    pub fn switch_mut(&mut self) -> &mut VirtualSwitch {
        &mut self.switch
    }

    pub fn stats(&self) -> RouteStats {
        self.stats
    }

    /// The routing ID of device `slot` behind `port`.
    pub fn device_bdf(port: PortId, slot: u8) -> Option<Bdf> {
        Bdf::new(port.bus(), slot, 0)
    }

    /// The device on `port`, if any.
    pub fn occupant(&self, port: PortId) -> Option<DeviceKey> {
        self.occupant_of(port).map(|o| o.key)
    }

    fn occupant_of(&self, port: PortId) -> Option<&Occupant> {
        self.ports.get(port.index())?.as_ref()
    }

    /// Puts device `key` on the allocated `port` (Presence Detect set) and returns its
    /// routing ID.
    pub fn attach(&mut self, port: PortId, key: DeviceKey) -> Result<Bdf, RouteError> {
        let bdf = Router::device_bdf(port, key.slot).ok_or(RouteError::Slot(key.slot))?;
        if !self.switch.is_live(port) {
            return Err(RouteError::NotAllocated(port));
        }
        let entry = &mut self.ports[port.index()];
        if entry.is_some() {
            return Err(RouteError::Occupied(port));
        }
        *entry = Some(Occupant { key, ghost: false });
        let _ = self.switch.set_present(port, true);
        Ok(bdf)
    }

    /// The device on `port` is leaving: from now on the switch answers its accesses
    /// and drops what its box sends for it.
    pub fn ghost(&mut self, port: PortId) {
        if let Some(Some(o)) = self.ports.get_mut(port.index()) {
            o.ghost = true;
        }
    }

    /// Whether the device on `port` is leaving.
    pub fn is_ghost(&self, port: PortId) -> bool {
        self.occupant_of(port).is_some_and(|o| o.ghost)
    }

    /// The device has left `port` (Presence Detect cleared); its outstanding requests
    /// are forgotten (fail them first with [`Router::fail_pending`]).
    pub fn detach(&mut self, port: PortId) {
        if let Some(entry) = self.ports.get_mut(port.index()) {
            *entry = None;
        }
        for p in self.pending.iter_mut() {
            if p.is_some_and(|o| o.port == port) {
                *p = None;
            }
        }
        if self.switch.is_live(port) {
            let _ = self.switch.set_present(port, false);
        }
    }

    /// Unsupported Request completions, for the root complex, of every request still
    /// waiting on the device on `port`: no answer will come from it.
    pub fn fail_pending(&mut self, port: PortId) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (tag, p) in self.pending.iter_mut().enumerate() {
            let Some(o) = *p else { continue };
            if o.port != port {
                continue;
            }
            *p = None;
            self.stats.failed_pending += 1;
            let c = Completion {
                completer: port.bridge(),
                status: CompletionStatus::UnsupportedRequest,
                bcm: false,
                byte_count: o.byte_count,
                requester: ROOT_PORT,
                tag: Tag::wrapping(tag as u16),
                lower_address: 0,
                locked: false,
            };
            out.extend(Tlp::new(Header::Completion(c), &[]).to_vec().ok());
        }
        out
    }

    /// The port an address-routed request of `len` bytes at `addr` goes to.
    fn port_of_address(&self, addr: u64, len: u64) -> Option<PortId> {
        self.switch.route_address(addr, len).map(|r| r.port)
    }

    /// Where a TLP of the root complex goes (see the module docs).
    #[must_use]
    pub fn outbound(&mut self, bytes: &[u8]) -> Outbound {
        let Ok(t) = Tlp::parse(bytes) else {
            self.stats.refused_outbound += 1;
            return Outbound::Dropped;
        };
        let (port, slot_must_be) = match t.header {
            Header::ConfigRead(c) | Header::ConfigWrite(c) => {
                if c.target.bus() <= crate::switch::INTERNAL_BUS {
                    return self.switch_config(&t, c.target, c.register, c.first_be);
                }
                (
                    PortId::of_bus(c.target.bus()).filter(|&p| self.switch.is_live(p)),
                    Some(c.target.device()),
                )
            }
            Header::MemRead(r) => (
                self.port_of_address(r.address, u64::from(r.length_dw) * 4),
                None,
            ),
            Header::MemWrite(w) => (
                self.port_of_address(w.address, t.payload.len() as u64),
                None,
            ),
            Header::Completion(c) => (
                self.switch.route_id(c.requester.bus()),
                Some(c.requester.device()),
            ),
            _ => {
                self.stats.refused_outbound += 1;
                return self.refuse(&t, None);
            }
        };
        let occupant = port.and_then(|p| self.occupant_of(p).copied().map(|o| (p, o)));
        let Some((port, o)) =
            occupant.filter(|(_, o)| slot_must_be.is_none_or(|s| s == o.key.slot))
        else {
            self.stats.unrouted += 1;
            return self.refuse(&t, None);
        };
        if o.ghost {
            self.stats.to_ghost += 1;
            return self.refuse(&t, Some(port));
        }
        if let Some(a) = t.ur_answer() {
            self.pending[usize::from(a.tag.value())] = Some(Outstanding {
                port,
                byte_count: a.byte_count,
            });
        }
        self.stats.to_fabric += 1;
        Outbound::Fabric {
            gid: o.key.gid,
            mac: o.key.mac,
        }
    }

    /// A request of the host nobody takes: its Unsupported Request completion when it
    /// is non-posted (from the port that refuses it, or the root port).
    fn refuse(&mut self, t: &Tlp, port: Option<PortId>) -> Outbound {
        let completer = port.map_or(ROOT_PORT, PortId::bridge);
        match t.ur_answer() {
            Some(a) => match Tlp::new(Header::Completion(a.completion(completer)), &[]).to_vec() {
                Ok(b) => Outbound::Answer(b),
                Err(_) => Outbound::Dropped,
            },
            None => Outbound::Dropped,
        }
    }

    /// A configuration request to one of the switch's functions, answered from its
    /// image.
    fn switch_config(&mut self, t: &Tlp, target: Bdf, register: u16, be: u8) -> Outbound {
        let Some(a) = t.ur_answer() else {
            return Outbound::Dropped;
        };
        let (status, data) = match t.header {
            Header::ConfigRead(_) => match self.switch.config_read(target, register) {
                Some(v) => (CompletionStatus::Success, Some(v)),
                None => (CompletionStatus::UnsupportedRequest, None),
            },
            _ => {
                let value = t
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if self.switch.config_write(target, register, value, be) {
                    (CompletionStatus::Success, None)
                } else {
                    (CompletionStatus::UnsupportedRequest, None)
                }
            }
        };
        self.stats.switch_config += 1;
        let c = Completion {
            completer: target,
            status,
            bcm: false,
            byte_count: 4,
            requester: a.requester,
            tag: a.tag,
            lower_address: 0,
            locked: false,
        };
        let payload = data.map(u32::to_le_bytes);
        match Tlp::new(
            Header::Completion(c),
            payload.as_ref().map_or(&[], |d| &d[..]),
        )
        .to_vec()
        {
            Ok(b) => Outbound::Answer(b),
            Err(_) => Outbound::Dropped,
        }
    }

    /// Whether a TLP from box `mac` in group `gid` may reach the root complex (see the
    /// module docs); what is refused is counted.
    #[must_use]
    pub fn inbound(&mut self, gid: u16, mac: wire::MacAddr, bytes: &[u8]) -> bool {
        let Ok(t) = Tlp::parse(bytes) else {
            self.stats.unparsable += 1;
            return false;
        };
        let from_box = |o: &Occupant| o.key.gid == gid && o.key.mac == mac;
        if let Header::Completion(c) = t.header {
            let i = usize::from(c.tag.value());
            let Some(out) = self.pending.get(i).copied().flatten() else {
                self.stats.foreign_completions += 1;
                return false;
            };
            let Some(o) = self.occupant_of(out.port).copied() else {
                self.stats.foreign_completions += 1;
                return false;
            };
            if c.requester != ROOT_PORT || !from_box(&o) {
                self.stats.foreign_completions += 1;
                return false;
            }
            if o.ghost {
                self.stats.from_ghost += 1;
                return false;
            }
            // The last completion of the request frees its entry: an error status, one
            // without data (a configuration write's), or one that carries the rest of
            // the bytes.
            let carried = t
                .payload
                .len()
                .saturating_sub(usize::from(c.lower_address & 3));
            if c.status != CompletionStatus::Success
                || t.payload.is_empty()
                || usize::from(c.byte_count) <= carried
            {
                self.pending[i] = None;
            }
            self.stats.accepted += 1;
            return true;
        }
        let requester = match t.header {
            Header::MemRead(r) => r.requester,
            Header::MemWrite(w) => w.requester,
            Header::Message(m) => m.requester,
            Header::IoRead(r) | Header::IoWrite(r) => r.requester,
            Header::ConfigRead(r) | Header::ConfigWrite(r) => r.requester,
            Header::Atomic(r) => r.requester,
            Header::Completion(_) => unreachable!("handled above"),
        };
        let port = self.switch.route_id(requester.bus());
        let Some(o) = port.and_then(|p| self.occupant_of(p).copied()) else {
            self.stats.misrouted += 1;
            return false;
        };
        if !from_box(&o) || requester.device() != o.key.slot {
            self.stats.misrouted += 1;
            return false;
        }
        if o.ghost {
            self.stats.from_ghost += 1;
            return false;
        }
        self.stats.accepted += 1;
        true
    }

    /// The windows of `port` as the root complex's enumeration takes them: 32-bit BARs
    /// in its non-prefetchable window, 64-bit BARs in its prefetchable one.
    pub fn windows(&self, port: PortId) -> Option<rootcomplex::BarWindows> {
        let span = |kind| {
            self.switch
                .window(port, kind)
                .map(|w| (w.base, w.base.saturating_add(w.size)))
        };
        Some(rootcomplex::BarWindows {
            mem32: span(WindowKind::Mem32)?,
            mem64: span(WindowKind::Pref64)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlp::{MemRead, MemWrite, Message};
    use wire::MacAddr;

    const GID: u16 = 10;
    const BOX_A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const BOX_B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    fn key(mac: MacAddr, slot: u8) -> DeviceKey {
        DeviceKey {
            gid: GID,
            mac,
            slot,
        }
    }

    /// A router with box A's slot 0 on port 0 and box B's slot 0 on port 1.
    fn router() -> (Router, [(PortId, Bdf); 2]) {
        let mut r = Router::new(GID, VirtualSwitch::new(4).unwrap());
        let mut placed = [(PortId::new(0).unwrap(), Bdf::default()); 2];
        for (i, mac) in [BOX_A, BOX_B].into_iter().enumerate() {
            let p = r.switch_mut().alloc_port().unwrap();
            placed[i] = (p, r.attach(p, key(mac, 0)).unwrap());
        }
        (r, placed)
    }

    fn bytes(h: Header, payload: &[u8]) -> Vec<u8> {
        Tlp::new(h, payload).to_vec().unwrap()
    }

    fn cfg_read(target: Bdf, tag: u16) -> Vec<u8> {
        bytes(
            Header::ConfigRead(tlp::ConfigRequest {
                type1: false,
                requester: ROOT_PORT,
                tag: Tag::wrapping(tag),
                target,
                register: 0,
                first_be: 0xf,
            }),
            &[],
        )
    }

    fn mem_read(requester: Bdf, tag: u16, address: u64) -> Vec<u8> {
        bytes(
            Header::MemRead(MemRead {
                requester,
                tag: Tag::wrapping(tag),
                address,
                length_dw: 1,
                first_be: 0xf,
                last_be: 0,
                locked: false,
                hint: None,
            }),
            &[],
        )
    }

    fn mem_write(requester: Bdf, address: u64) -> Vec<u8> {
        bytes(
            Header::MemWrite(MemWrite {
                requester,
                tag: Tag::default(),
                address,
                first_be: 0xf,
                last_be: 0,
                hint: None,
            }),
            &[1, 2, 3, 4],
        )
    }

    fn cpl(completer: Bdf, tag: u16, data: &[u8]) -> Vec<u8> {
        bytes(
            Header::Completion(Completion {
                completer,
                status: CompletionStatus::Success,
                bcm: false,
                byte_count: data.len().max(4) as u16,
                requester: ROOT_PORT,
                tag: Tag::wrapping(tag),
                lower_address: 0,
                locked: false,
            }),
            data,
        )
    }

    fn status_of(answer: &[u8]) -> CompletionStatus {
        match Tlp::parse(answer).unwrap().header {
            Header::Completion(c) => c.status,
            h => panic!("not a completion: {h:?}"),
        }
    }

    #[test]
    fn each_device_is_on_its_ports_bus_with_its_slot_as_device_number() {
        let (r, [(pa, a), (pb, b)]) = router();
        assert_eq!((a.bus(), a.device()), (pa.bus(), 0));
        assert_eq!((b.bus(), b.device()), (pb.bus(), 0));
        assert_ne!(a.bus(), b.bus());
        assert_eq!(r.occupant(pa), Some(key(BOX_A, 0)));
        assert!(r.switch().present(pa) && r.switch().present(pb));
        // Slot 31 is the last device number.
        assert_eq!(Router::device_bdf(pa, 31).map(|b| b.device()), Some(31));
        assert_eq!(Router::device_bdf(pa, 32), None);
    }

    #[test]
    fn requests_go_to_the_box_of_the_device_they_address() {
        let (mut r, [(pa, a), (pb, b)]) = router();
        assert_eq!(
            r.outbound(&cfg_read(a, 1)),
            Outbound::Fabric {
                gid: GID,
                mac: BOX_A
            }
        );
        assert_eq!(
            r.outbound(&cfg_read(b, 2)),
            Outbound::Fabric {
                gid: GID,
                mac: BOX_B
            }
        );
        let wa = r.windows(pa).unwrap();
        let wb = r.windows(pb).unwrap();
        assert_eq!(
            r.outbound(&mem_read(ROOT_PORT, 3, wb.mem32.0 + 0x10)),
            Outbound::Fabric {
                gid: GID,
                mac: BOX_B
            }
        );
        assert_eq!(
            r.outbound(&mem_write(ROOT_PORT, wa.mem64.0 + 0x1000)),
            Outbound::Fabric {
                gid: GID,
                mac: BOX_A
            }
        );
        // A completion of a device's DMA read goes back by its requester ID.
        let to_b = bytes(
            Header::Completion(Completion {
                completer: ROOT_PORT,
                status: CompletionStatus::Success,
                bcm: false,
                byte_count: 4,
                requester: b,
                tag: Tag::wrapping(9),
                lower_address: 0,
                locked: false,
            }),
            &[0; 4],
        );
        assert_eq!(
            r.outbound(&to_b),
            Outbound::Fabric {
                gid: GID,
                mac: BOX_B
            }
        );
        assert_eq!(r.stats().to_fabric, 5);
    }

    #[test]
    fn what_no_port_claims_is_answered_here_and_never_sent() {
        let (mut r, [(pa, a), _]) = router();
        // A free port's bus, a device number that is not the slot, an address outside
        // every window.
        let free = PortId::new(3).unwrap();
        let nobody = [
            cfg_read(Bdf::new(free.bus(), 0, 0).unwrap(), 1),
            cfg_read(Bdf::new(pa.bus(), 5, 0).unwrap(), 2),
            mem_read(ROOT_PORT, 3, 0xdead_0000),
        ];
        for t in &nobody {
            match r.outbound(t) {
                Outbound::Answer(c) => {
                    assert_eq!(status_of(&c), CompletionStatus::UnsupportedRequest)
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(
            r.outbound(&mem_write(ROOT_PORT, 0xdead_0000)),
            Outbound::Dropped
        );
        let s = r.stats();
        // (A TLP cannot straddle a window's end: it stays within 4 KiB, and windows are
        // aligned megabytes.)
        assert_eq!((s.unrouted, s.to_fabric), (4, 0));
        // Device a still routes.
        assert!(matches!(
            r.outbound(&cfg_read(a, 5)),
            Outbound::Fabric { .. }
        ));
    }

    #[test]
    fn the_switch_answers_config_requests_to_its_own_functions() {
        let (mut r, [(pa, _), _]) = router();
        for bdf in [ROOT_PORT, crate::switch::UPSTREAM_PORT, pa.bridge()] {
            let Outbound::Answer(c) = r.outbound(&cfg_read(bdf, 7)) else {
                panic!("{bdf} was not answered by the switch");
            };
            let t = Tlp::parse(&c).unwrap();
            let Header::Completion(h) = t.header else {
                panic!()
            };
            assert_eq!(h.status, CompletionStatus::Success);
            assert_eq!(
                u32::from_le_bytes(t.payload.try_into().unwrap()),
                r.switch().config_read(bdf, 0).unwrap()
            );
        }
        assert_eq!(r.stats().switch_config, 3);
    }

    #[test]
    fn a_completion_is_taken_only_from_the_box_its_request_went_to() {
        let (mut r, [(_, a), (_, b)]) = router();
        assert!(matches!(
            r.outbound(&cfg_read(a, 20)),
            Outbound::Fabric { .. }
        ));
        // Box B answers box A's request: refused, and the request stays waiting.
        assert!(!r.inbound(GID, BOX_B, &cpl(b, 20, &[1, 2, 3, 4])));
        // So does a completion for a tag nobody asked, and one of another group.
        assert!(!r.inbound(GID, BOX_A, &cpl(a, 21, &[1, 2, 3, 4])));
        assert!(!r.inbound(GID + 1, BOX_A, &cpl(a, 20, &[1, 2, 3, 4])));
        assert_eq!(r.stats().foreign_completions, 3);
        // Box A's answer is taken once; a second one finds nothing waiting.
        assert!(r.inbound(GID, BOX_A, &cpl(a, 20, &[1, 2, 3, 4])));
        assert!(!r.inbound(GID, BOX_A, &cpl(a, 20, &[1, 2, 3, 4])));
        assert_eq!(r.stats().accepted, 1);
    }

    #[test]
    fn a_configuration_write_is_done_with_its_completion_without_data() {
        let (mut r, [(_, a), _]) = router();
        let write = bytes(
            Header::ConfigWrite(tlp::ConfigRequest {
                type1: false,
                requester: ROOT_PORT,
                tag: Tag::wrapping(50),
                target: a,
                register: 4,
                first_be: 0x3,
            }),
            &[6, 0, 0, 0],
        );
        assert!(matches!(r.outbound(&write), Outbound::Fabric { .. }));
        assert!(r.inbound(GID, BOX_A, &cpl(a, 50, &[])));
        assert!(!r.inbound(GID, BOX_A, &cpl(a, 50, &[])), "twice");
        assert!(r
            .fail_pending(r.switch().route_id(a.bus()).unwrap())
            .is_empty());
    }

    #[test]
    fn a_read_split_into_several_completions_stays_waiting_until_the_last() {
        let (mut r, [(pa, a), _]) = router();
        let w = r.windows(pa).unwrap();
        let read = bytes(
            Header::MemRead(MemRead {
                requester: ROOT_PORT,
                tag: Tag::wrapping(30),
                address: w.mem32.0,
                length_dw: 32,
                first_be: 0xf,
                last_be: 0xf,
                locked: false,
                hint: None,
            }),
            &[],
        );
        assert!(matches!(r.outbound(&read), Outbound::Fabric { .. }));
        let part = |byte_count: u16, la: u8| {
            bytes(
                Header::Completion(Completion {
                    completer: a,
                    status: CompletionStatus::Success,
                    bcm: false,
                    byte_count,
                    requester: ROOT_PORT,
                    tag: Tag::wrapping(30),
                    lower_address: la,
                    locked: false,
                }),
                &[0; 64],
            )
        };
        assert!(r.inbound(GID, BOX_A, &part(128, 0)));
        assert!(r.inbound(GID, BOX_A, &part(64, 64)));
        assert!(!r.inbound(GID, BOX_A, &part(64, 64)), "after the last part");
    }

    #[test]
    fn a_box_may_send_only_as_its_own_devices() {
        let (mut r, [(_, a), (_, b)]) = router();
        let msi = mem_write(a, 0xfee0_0000);
        assert!(r.inbound(GID, BOX_A, &msi));
        // Box B with box A's device's requester ID (DMA into host memory, an MSI),
        // another slot of its own port, a bus no device is on, or an INTx as A's device.
        let slot_9 = Bdf::new(b.bus(), 9, 0).unwrap();
        let nobody = Bdf::new(200, 0, 0).unwrap();
        let intx = bytes(
            Header::Message(Message::intx(a, tlp::IntxPin::A, true)),
            &[],
        );
        for (mac, t) in [
            (BOX_B, msi.clone()),
            (BOX_B, mem_read(a, 1, 0x1000)),
            (BOX_B, mem_write(slot_9, 0x1000)),
            (BOX_B, mem_write(nobody, 0x1000)),
            (BOX_B, intx.clone()),
        ] {
            assert!(!r.inbound(GID, mac, &t));
        }
        assert_eq!(r.stats().misrouted, 5);
        assert!(r.inbound(GID, BOX_A, &intx));
        assert!(!r.inbound(GID, BOX_A, &[0x00, 0x01]), "garbage");
        assert_eq!(r.stats().unparsable, 1);
    }

    #[test]
    fn a_leaving_device_is_answered_here_and_its_waiting_requests_fail_at_once() {
        let (mut r, [(pa, a), (pb, b)]) = router();
        assert!(matches!(
            r.outbound(&cfg_read(a, 40)),
            Outbound::Fabric { .. }
        ));
        assert!(matches!(
            r.outbound(&cfg_read(a, 41)),
            Outbound::Fabric { .. }
        ));
        assert!(matches!(
            r.outbound(&cfg_read(b, 42)),
            Outbound::Fabric { .. }
        ));
        r.ghost(pa);
        assert!(r.is_ghost(pa));
        // New requests get a UR here; what its box still sends is dropped.
        match r.outbound(&cfg_read(a, 43)) {
            Outbound::Answer(c) => assert_eq!(status_of(&c), CompletionStatus::UnsupportedRequest),
            o => panic!("{o:?}"),
        }
        assert!(!r.inbound(GID, BOX_A, &cpl(a, 40, &[0; 4])));
        assert!(!r.inbound(GID, BOX_A, &mem_write(a, 0x1000)));
        assert_eq!(r.stats().from_ghost, 2);
        // The two waiting on it fail now; box B's stays.
        let failed = r.fail_pending(pa);
        let tags: Vec<u16> = failed
            .iter()
            .map(|c| match Tlp::parse(c).unwrap().header {
                Header::Completion(c) => {
                    assert_eq!(c.status, CompletionStatus::UnsupportedRequest);
                    assert_eq!(c.requester, ROOT_PORT);
                    c.tag.value()
                }
                h => panic!("{h:?}"),
            })
            .collect();
        assert_eq!(tags, vec![40, 41]);
        assert!(r.fail_pending(pa).is_empty(), "failed twice");
        assert!(r.inbound(GID, BOX_B, &cpl(b, 42, &[0; 4])));
        // Gone: the port is empty and may be freed; its slot shows no device.
        r.detach(pa);
        assert!(!r.switch().present(pa));
        assert_eq!(r.occupant(pa), None);
        r.switch_mut().free_port(pa).unwrap();
        assert!(r.switch().present(pb));
    }

    #[test]
    fn a_device_is_put_only_on_an_allocated_empty_port_and_a_device_number() {
        let (mut r, [(pa, _), _]) = router();
        let free = PortId::new(3).unwrap();
        assert_eq!(
            r.attach(free, key(BOX_A, 1)),
            Err(RouteError::NotAllocated(free))
        );
        assert_eq!(r.attach(pa, key(BOX_A, 1)), Err(RouteError::Occupied(pa)));
        let p = r.switch_mut().alloc_port().unwrap();
        assert_eq!(r.attach(p, key(BOX_A, 32)), Err(RouteError::Slot(32)));
    }

    proptest::proptest! {
        /// Nothing a box sends panics the router, and nothing it sends is accepted
        /// unless it comes from a device of that box.
        #[test]
        fn whatever_a_box_sends_is_checked(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80), from_b in proptest::bool::ANY) {
            let (mut r, _) = router();
            let mac = if from_b { BOX_B } else { BOX_A };
            let before = r.stats();
            let ok = r.inbound(GID, mac, &bytes);
            let s = r.stats();
            if ok {
                proptest::prop_assert_eq!(s.accepted, before.accepted + 1);
            } else {
                proptest::prop_assert_eq!(s.accepted, before.accepted);
            }
            let _ = r.outbound(&bytes);
        }
    }
}
