//! The root complex's link over the fabric.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fabric::FabricEvent;
use rootcomplex::Link;
use wire::MacAddr;

use crate::port::FabricPort;

/// Carries the host's TLPs to one I/O box in one group, and everything the box sends
/// back. Fabric events other than TLPs (devices added and removed, peers up and down)
/// are kept for the host program in `events`.
pub struct FabricLink {
    fp: FabricPort,
    target: Option<(u16, MacAddr)>,
    inbox: VecDeque<Vec<u8>>,
    outbox: VecDeque<Vec<u8>>,
    pub events: VecDeque<FabricEvent>,
    /// TLPs from bridges other than the target, dropped.
    pub stray: u64,
}

impl FabricLink {
    pub fn new(fp: FabricPort) -> FabricLink {
        FabricLink {
            fp,
            target: None,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stray: 0,
        }
    }

    pub fn fabric(&self) -> &FabricPort {
        &self.fp
    }

    pub fn fabric_mut(&mut self) -> &mut FabricPort {
        &mut self.fp
    }

    /// Sends TLPs to `box_mac` in group `gid` from now on.
    pub fn set_target(&mut self, gid: u16, box_mac: MacAddr) {
        self.target = Some((gid, box_mac));
        self.outbox.clear();
    }

    pub fn target(&self) -> Option<(u16, MacAddr)> {
        self.target
    }

    /// Waits up to `timeout` for a device to be announced in group `gid` (a hot-plug),
    /// running the fabric meanwhile; the event is taken out of `events`.
    pub fn wait_for_device(
        &mut self,
        gid: u16,
        timeout: Duration,
    ) -> Option<(MacAddr, wire::DeviceInfo)> {
        let end = Instant::now() + timeout;
        loop {
            let at = self
                .events
                .iter()
                .position(|e| matches!(e, FabricEvent::DeviceAdded { gid: g, .. } if *g == gid));
            if let Some(i) = at {
                if let Some(FabricEvent::DeviceAdded { peer, device, .. }) = self.events.remove(i) {
                    return Some((peer, device));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            self.poll(Duration::from_millis(1));
        }
    }

    /// Runs the fabric for a moment: frames, timers, events.
    pub fn poll(&mut self, wait: Duration) {
        let _ = self.fp.poll(wait);
        while let Some(e) = self.fp.poll_event() {
            match e {
                FabricEvent::Tlp { gid, peer, tlp } if Some((gid, peer)) == self.target => {
                    self.inbox.push_back(tlp)
                }
                FabricEvent::Tlp { .. } => self.stray += 1,
                other => self.events.push_back(other),
            }
        }
        self.queue_in_session();
    }

    /// Moves queued TLPs into the session (as many as it takes now).
    fn queue_in_session(&mut self) {
        let Some((gid, peer)) = self.target else {
            self.outbox.clear();
            return;
        };
        while let Some(t) = self.outbox.front() {
            if self.fp.node_mut().send_tlp(gid, peer, t).is_err() {
                return;
            }
            self.outbox.pop_front();
        }
    }
}

impl Link for FabricLink {
    fn send(&mut self, tlp: &[u8]) {
        self.outbox.push_back(tlp.to_vec());
        self.queue_in_session();
    }

    fn flush(&mut self) {
        self.queue_in_session();
        let _ = self.fp.poll(Duration::ZERO);
    }

    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(t) = self.inbox.pop_front() {
                return Some(t);
            }
            let left = end.saturating_duration_since(Instant::now());
            self.poll(left.min(Duration::from_micros(500)));
            if self.inbox.is_empty() && Instant::now() >= end {
                return None;
            }
        }
    }
}
