//! Enumeration (`rootcomplex::Host::enumerate`) of a hostile function, and the
//! capability walker (`pci::Capabilities`) under it. The input is a 256-byte config
//! space, then a script: each config read answers from the space (writes land in it),
//! with any dword, or with an Unsupported Request, as the script says. Never panics;
//! the config reads stay bounded (the capability walk reads at most 49 dwords); every
//! BAR assigned is a power of two, naturally aligned, inside its window, and apart
//! from the others; the walker on its own yields at most 48 distinct, aligned entries
//! in 0x40..0x100 whatever its reader answers.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pci::{Capabilities, MAX_CAPABILITIES};
use rootcomplex::{BarWindows, BridgeConfig, Host, Link, LinkFull, MemoryMap};
use tether_fuzz::Input;
use tlp::{Bdf, Completion, CompletionStatus, Header, Tlp};

/// Config reads one enumeration can make: identity, class, header type and command
/// (4), two per BAR slot (12: a 64-bit BAR reads three for two slots), the capability
/// walk (49), PCI Express (2), MSI-X (2; MSI and INTx take fewer).
const MAX_CONFIG_READS: usize = 4 + 12 + (MAX_CAPABILITIES + 1) + 2 + 2;

struct HostileFunction<'a> {
    config: [u8; 256],
    script: Input<'a>,
    config_reads: usize,
    out: VecDeque<Vec<u8>>,
}

impl HostileFunction<'_> {
    /// The answer to a config read of `register`: data, or None for a UR.
    fn answer(&mut self, register: u16) -> Option<[u8; 4]> {
        let at = usize::from(register);
        let own = self
            .config
            .get(at..at + 4)
            .map_or([0xff; 4], |d| d.try_into().unwrap());
        match self.script.u8() % 4 {
            2 => Some(self.script.u32().to_le_bytes()),
            3 => None,
            _ => Some(own),
        }
    }
}

impl Link for HostileFunction<'_> {
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull> {
        let Ok(t) = Tlp::parse(tlp) else {
            return Ok(());
        };
        let (r, data) = match t.header {
            Header::ConfigRead(r) => {
                self.config_reads += 1;
                (r, self.answer(r.register))
            }
            Header::ConfigWrite(r) => {
                let at = usize::from(r.register);
                for (k, &b) in t.payload.iter().enumerate().take(4) {
                    if r.first_be & 1 << k != 0 && at + k < self.config.len() {
                        self.config[at + k] = b;
                    }
                }
                (r, Some([0; 4]))
            }
            _ => return Ok(()),
        };
        let status = match data {
            Some(_) => CompletionStatus::Success,
            None => CompletionStatus::UnsupportedRequest,
        };
        let c = Completion {
            completer: r.target,
            status,
            bcm: false,
            byte_count: 4,
            requester: r.requester,
            tag: r.tag,
            lower_address: 0,
            locked: false,
        };
        let payload = match (t.header, data) {
            (Header::ConfigRead(_), Some(d)) => d.to_vec(),
            _ => Vec::new(),
        };
        if let Ok(b) = Tlp::new(Header::Completion(c), &payload).to_vec() {
            self.out.push_back(b);
        }
        Ok(())
    }

    fn recv(&mut self, _timeout: Duration) -> Option<Vec<u8>> {
        self.out.pop_front()
    }
}

fn check_walker(config: &[u8; 256], fail_at: u8) {
    let mut reads = 0usize;
    let mut walk = Capabilities::new(|off: u16| {
        reads += 1;
        let at = usize::from(off);
        assert!(at.is_multiple_of(4) && at < 256, "read at {at:#x}");
        if reads == usize::from(fail_at) {
            return Err(());
        }
        Ok(u32::from_le_bytes(config[at..at + 4].try_into().unwrap()))
    });
    let mut seen = 0u64;
    let mut n = 0;
    for cap in walk.by_ref() {
        let Ok(cap) = cap else { continue };
        assert!(cap.offset.is_multiple_of(4) && (0x40..0x100).contains(&cap.offset));
        let bit = 1u64 << (cap.offset / 4);
        assert_eq!(seen & bit, 0, "entry {:#x} walked twice", cap.offset);
        seen |= bit;
        n += 1;
    }
    assert!(n <= MAX_CAPABILITIES);
    assert!(walk.end().is_some());
    assert!(reads <= MAX_CAPABILITIES + 1);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut config = [0u8; 256];
    config.copy_from_slice(&{
        let mut c = input.bytes(256).to_vec();
        c.resize(256, 0);
        c
    });
    let fail_at = input.u8();
    check_walker(&config, fail_at);

    let windows = BarWindows::default();
    let mut mem = MemoryMap::new();
    mem.add(1 << 32, Box::new(vec![0u8; 4096])).unwrap();
    let link = HostileFunction {
        config,
        script: input,
        config_reads: 0,
        out: VecDeque::new(),
    };
    let mut host = Host::new(BridgeConfig::default(), mem, (1 << 32, 4096), windows, link);
    let bdf = Bdf::new(1, 0, 0).unwrap();
    let mut assigned: Vec<(u64, u64)> = Vec::new();
    for _ in 0..2 {
        host.link_mut().config_reads = 0;
        let Ok(info) = host.enumerate(bdf) else {
            continue;
        };
        assert!(
            host.link().config_reads <= MAX_CONFIG_READS,
            "{} config reads",
            host.link().config_reads
        );
        for b in &info.bars {
            let (lo, hi) = if b.is_64bit {
                windows.mem64
            } else {
                windows.mem32
            };
            assert!(b.size.is_power_of_two() && b.address.is_multiple_of(b.size));
            assert!(b.address >= lo && b.address.checked_add(b.size).is_some_and(|e| e <= hi));
            for &(a, s) in &assigned {
                assert!(
                    b.address + b.size <= a || a + s <= b.address,
                    "BARs overlap"
                );
            }
            assigned.push((b.address, b.size));
        }
    }
});
