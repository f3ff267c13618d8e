//! The management station on the segment: a [`fabric::Manager`] on an AF_PACKET
//! socket of its own, and the SET_GROUP requests it follows to their answers.
//!
//! Calling order: [`Station::pump`] as often as the caller can (it sends what the
//! manager has queued and reads what arrived, waiting at most the time given); then
//! [`Station::poll_result`] for each [`PendingMove`] in flight, and
//! [`PendingMove::poll_resend`] to ask again the boxes that have not answered.

use std::time::{Duration, Instant};

use dataplane::ports::af_packet::{AfPacketPort, RingConfig};
use dataplane::{Mempool, Port};
use fabric::{Manager, ManagerEvent};
use wire::{CtrlStatus, MacAddr};

use crate::Error;

/// How often a SET_GROUP request is sent again until its box answers: CTRL frames
/// are not carried by a session, and a repeat changes nothing.
pub const RESEND: Duration = Duration::from_millis(200);

/// The manager on a socket of its own.
pub struct Station {
    port: AfPacketPort,
    /// The manager, for its inventory (`bridges`, `find_device`, `stats`).
    pub m: Manager,
    start: Instant,
    rx: Vec<dataplane::Mbuf>,
    events: Vec<ManagerEvent>,
}

impl Station {
    /// A station on `interface` (CAP_NET_RAW), reading keyed groups with `keys` and
    /// signing its requests with `signer`.
    pub fn open(
        interface: &str,
        keys: fabric::GroupKeys,
        signer: Option<fabric::keys::ManagerSigner>,
    ) -> Result<Station, Error> {
        let pool = Mempool::new(1024, 2048).map_err(|e| Error::Port(e.to_string()))?;
        let port = AfPacketPort::open(interface, &pool, RingConfig::low_latency())
            .map_err(|e| Error::Port(format!("opening {interface}: {e}")))?;
        // Its clock starts at 0 now (`start`).
        let mut m = Manager::new(MacAddr(port.info().mac), fabric::fresh_epoch())
            .with_keys(keys)
            .with_wall_offset(fabric::port::wall_clock_us());
        if let Some(s) = signer {
            m = m.with_signer(std::sync::Arc::new(s));
        }
        Ok(Station {
            port,
            m,
            start: Instant::now(),
            rx: Vec::new(),
            events: Vec::new(),
        })
    }

    /// The station's clock, µs since it opened.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Sends what the manager has, then reads what arrives, waiting at most `wait`
    /// for the first frame.
    pub fn pump(&mut self, wait: Duration) -> Result<(), Error> {
        let pool = self.port.pool().clone();
        let io = |e: dataplane::PortError| Error::Port(e.to_string());
        while let Some(f) = self.m.poll_transmit() {
            let Some(mut b) = pool.get() else { break };
            let n = f.len().min(pool.buf_mut(&mut b).len());
            pool.buf_mut(&mut b)[..n].copy_from_slice(&f[..n]);
            pool.set_len(&mut b, n);
            let mut v = vec![b];
            self.port.tx_burst(&mut v).map_err(io)?;
            for b in v {
                pool.put(b);
            }
        }
        if !wait.is_zero() {
            self.port.wait_rx(wait);
        }
        self.port.rx_burst(&mut self.rx, 64).map_err(io)?;
        let now = self.now();
        for b in self.rx.drain(..) {
            self.m.handle_frame(now, pool.data(&b), None);
            pool.put(b);
        }
        while let Some(e) = self.m.poll_event() {
            self.events.push(e);
        }
        Ok(())
    }

    /// Sends and reads for `d`.
    pub fn run_for(&mut self, d: Duration) -> Result<(), Error> {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            self.pump(left.min(Duration::from_millis(5)))?;
            if left.is_zero() {
                return Ok(());
            }
        }
    }

    /// The answer to `mv`, if it came (taken from the events read so far; the
    /// events of no request in flight are dropped by [`Station::forget_events`]).
    pub fn poll_result(&mut self, mv: &PendingMove) -> Option<CtrlStatus> {
        let i = self.events.iter().position(|e| mv.answered_by(e))?;
        match self.events.swap_remove(i) {
            ManagerEvent::Result { status, .. } => Some(status),
            ManagerEvent::Seen { .. } => None,
        }
    }

    /// Drops the events no request took (other managers' answers, first sightings).
    pub fn forget_events(&mut self) {
        self.events.clear();
    }
}

/// A device and where it is now, as the inventory has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Its group now.
    pub gid: u16,
    pub box_mac: MacAddr,
    pub box_id: u64,
    pub slot: u8,
}

/// A SET_GROUP request followed to its box's answer.
#[derive(Debug)]
pub struct PendingMove {
    pub device: Located,
    pub to: u16,
    request: Option<u32>,
    sent: Option<Instant>,
    pub deadline: Instant,
}

impl PendingMove {
    pub fn new(device: Located, to: u16, deadline: Instant) -> PendingMove {
        PendingMove {
            device,
            to,
            request: None,
            sent: None,
            deadline,
        }
    }

    /// Sends the request, and again every [`RESEND`] while it has no answer.
    pub fn poll_resend(&mut self, st: &mut Station, now: Instant) -> Result<(), Error> {
        if self.sent.is_some_and(|t| now.duration_since(t) < RESEND) {
            return Ok(());
        }
        let d = self.device;
        let id =
            st.m.set_group(d.gid, d.box_mac, d.box_id, d.slot, self.to)
                .map_err(|e| Error::Request(e.to_string()))?;
        self.request = Some(id);
        self.sent = Some(now);
        Ok(())
    }

    fn answered_by(&self, e: &ManagerEvent) -> bool {
        matches!(e, ManagerEvent::Result { from, request_id, .. }
            if *from == self.device.box_mac && Some(*request_id) == self.request)
    }
}

/// BOX/SLOT: a bridge id (decimal or 0x-hex) or a MAC, and a slot number.
pub fn parse_device(s: &str) -> Result<(u64, u8), Error> {
    let bad = |why: &str| Error::BadDevice(format!("device {s:?}: {why}"));
    let (b, slot) = s
        .rsplit_once('/')
        .ok_or_else(|| bad("expected BOX/SLOT, e.g. 0xb0c5/0"))?;
    let slot: u8 = slot
        .parse()
        .ok()
        .filter(|n| *n < 32)
        .ok_or_else(|| bad("slot must be 0..=31"))?;
    Ok((parse_box(b).ok_or_else(|| bad(BOX_FORMS))?, slot))
}

const BOX_FORMS: &str = "box must be a bridge id (0xb0c5, 45253) or a MAC (02:00:00:00:00:01)";

/// A box named by its bridge id (`0xb0c5`, `45253`) or its MAC.
pub fn parse_box(b: &str) -> Option<u64> {
    if let Some(h) = b.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else if b.contains(':') {
        let bytes: Vec<u8> = b
            .split(':')
            .filter(|x| x.len() <= 2)
            .filter_map(|x| u8::from_str_radix(x, 16).ok())
            .collect();
        (bytes.len() == 6 && b.split(':').count() == 6)
            .then(|| fabric::manager::mac_value(MacAddr(bytes.try_into().expect("6 bytes"))))
    } else {
        b.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_device("0xb0c5/0").unwrap(), (0xb0c5, 0));
        assert_eq!(parse_device("45253/31").unwrap(), (0xb0c5, 31));
        assert_eq!(
            parse_device("02:00:00:00:00:01/2").unwrap(),
            (0x0200_0000_0001, 2)
        );
        for bad in [
            "0xb0c5",
            "0xb0c5/32",
            "0xzz/1",
            "02:00:00:00:01/0",
            "002:00:00:00:00:01/0",
            "box/1",
            "/1",
        ] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }
}
