//! Enumeration of a function whose capability list is broken or hostile: the list is
//! the device's to write, so a loop, a pointer into the header or a repeated
//! capability must neither hang enumeration nor make it read without end.

use std::collections::VecDeque;
use std::time::Duration;

use rootcomplex::{BarWindows, BridgeConfig, Host, IrqMode, Link, LinkFull, MemoryMap};
use tlp::{Bdf, Completion, CompletionStatus, Header, Tlp};

const RAM: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 1 << 20;

/// A function that is nothing but 256 bytes of config space: reads answer them,
/// writes land in them (BARs stay unimplemented), and every read is logged.
struct RawConfig {
    config: [u8; 256],
    reads: Vec<u16>,
    out: VecDeque<Vec<u8>>,
}

impl Link for RawConfig {
    fn send(&mut self, tlp: &[u8]) -> Result<(), LinkFull> {
        let Ok(t) = Tlp::parse(tlp) else {
            return Ok(());
        };
        let (r, data) = match t.header {
            Header::ConfigRead(r) => {
                self.reads.push(r.register);
                let at = usize::from(r.register);
                let d = self.config.get(at..at + 4).unwrap_or(&[0xff; 4]).to_vec();
                (r, d)
            }
            Header::ConfigWrite(r) => {
                let at = usize::from(r.register);
                if !(0x10..0x28).contains(&at) && at + 4 <= 256 {
                    for k in 0..4 {
                        if r.first_be & 1 << k != 0 {
                            self.config[at + k] = t.payload[k];
                        }
                    }
                }
                (r, Vec::new())
            }
            _ => return Ok(()),
        };
        let c = Completion {
            completer: r.target,
            status: CompletionStatus::Success,
            bcm: false,
            byte_count: 4,
            requester: r.requester,
            tag: r.tag,
            lower_address: 0,
            locked: false,
        };
        self.out
            .push_back(Tlp::new(Header::Completion(c), &data).to_vec().unwrap());
        Ok(())
    }

    fn recv(&mut self, _timeout: Duration) -> Option<Vec<u8>> {
        self.out.pop_front()
    }
}

fn dev() -> Bdf {
    Bdf::new(1, 0, 0).unwrap()
}

/// A host in front of a function whose list is `links`: (offset, id, next); MSI
/// capabilities get a 64-bit Message Control.
fn host(cap_ptr: u8, links: &[(usize, u8, u8)]) -> Host<RawConfig> {
    let mut config = [0u8; 256];
    config[..4].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
    config[0x06] = 1 << 4;
    config[0x34] = cap_ptr;
    config[0x3d] = 1;
    for &(at, id, next) in links {
        config[at] = id;
        config[at + 1] = next;
        if id == 0x05 {
            config[at + 2] = 0x80;
        }
    }
    let mut mem = MemoryMap::new();
    mem.add(RAM, Box::new(vec![0u8; RAM_SIZE])).unwrap();
    Host::new(
        BridgeConfig::default(),
        mem,
        (RAM, RAM_SIZE as u64),
        BarWindows::default(),
        RawConfig {
            config,
            reads: Vec::new(),
            out: VecDeque::new(),
        },
    )
}

fn reads_of(h: &Host<RawConfig>, register: u16) -> usize {
    h.link().reads.iter().filter(|&&r| r == register).count()
}

#[test]
fn a_looped_list_is_walked_once() {
    // MSI at 0x40 -> vendor at 0x50 -> back to 0x40.
    let mut h = host(0x40, &[(0x40, 0x05, 0x50), (0x50, 0x09, 0x40)]);
    let info = h.enumerate(dev()).unwrap();
    assert_eq!(info.irq, IrqMode::Msi { vectors: 1 });
    // Once by the walk, once by the MSI set-up; the vendor capability once.
    assert_eq!(reads_of(&h, 0x40), 2);
    assert_eq!(reads_of(&h, 0x50), 1);
    let msi_control = u16::from_le_bytes([h.link().config[0x42], h.link().config[0x43]]);
    assert_eq!(msi_control & 1, 1, "MSI enabled");
}

#[test]
fn the_first_of_a_repeated_capability_is_used() {
    // Two MSI capabilities: a driver uses the first, as Linux's pci_find_capability.
    let mut h = host(0x40, &[(0x40, 0x05, 0x60), (0x60, 0x05, 0)]);
    assert_eq!(h.enumerate(dev()).unwrap().irq, IrqMode::Msi { vectors: 1 });
    let cfg = h.link().config;
    assert_eq!(cfg[0x42] & 1, 1, "the first MSI enabled");
    assert_eq!(cfg[0x62] & 1, 0, "the second untouched");
    let address = |at: usize| u32::from_le_bytes(cfg[at..at + 4].try_into().unwrap());
    assert_eq!(address(0x44), rootcomplex::driver_api::MSI_ADDRESS as u32);
    assert_eq!(address(0x64), 0);
}

#[test]
fn a_pointer_into_the_header_ends_the_list() {
    // MSI-less list whose second pointer leads into the header: INTx, and nothing
    // below 0x40 is read as a capability.
    let mut h = host(0x40, &[(0x40, 0x09, 0x08)]);
    assert_eq!(
        h.enumerate(dev()).unwrap().irq,
        IrqMode::Intx(tlp::IntxPin::A)
    );
    assert_eq!(reads_of(&h, 0x40), 1);
    assert_eq!(
        reads_of(&h, 0x08),
        1,
        "the class register, read once for itself"
    );
}

/// Device Control's Extended Tag Field Enable (byte 0x49 bit 0 with the capability
/// at 0x40) after enumerating a function whose PCI Express capability says `supported`
/// (Device Capabilities bit 5).
fn extended_tags_after_enumeration(supported: bool) -> bool {
    let mut h = host(0x40, &[(0x40, 0x10, 0)]);
    h.link_mut().config[0x44] = if supported { 1 << 5 } else { 0 };
    h.enumerate(dev()).unwrap();
    h.link().config[0x49] & 1 != 0
}

/// Enumeration sets Extended Tag Field Enable only where Extended Tag Field Supported
/// says the function has it (the bit is read-only 0 otherwise: a write of 1 would be
/// a write to a bit the function does not implement).
#[test]
fn extended_tags_are_enabled_only_where_supported() {
    assert!(extended_tags_after_enumeration(true));
    assert!(!extended_tags_after_enumeration(false));
}
