//! Boot epochs: each run of a bridge draws one, and its sessions count up from it
//! (`efe::EPOCH_RUN_SPAN`). A restart must never reuse the last run's epoch, or its
//! peers see no restart and take its first frames for the old session's (a start time
//! in seconds did exactly that within one second).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::sync::Mutex;

use efe::EPOCH_RUN_SPAN;

/// Draws boot epochs: random, non-zero, and far from the previous one drawn (so that
/// no session epoch of one run is taken for one of the other).
pub struct EpochSource {
    source: Box<dyn FnMut() -> u32 + Send>,
    last: u32,
}

/// Whether session epochs counted up from `a` and from `b` stay clear of each other.
fn far_apart(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    let margin = 2 * EPOCH_RUN_SPAN;
    d >= margin && d <= 0u32.wrapping_sub(margin)
}

impl EpochSource {
    /// Epochs from `draw` (a random source; tests drive it by hand).
    pub fn new(draw: impl FnMut() -> u32 + Send + 'static) -> EpochSource {
        EpochSource {
            source: Box::new(draw),
            last: 0,
        }
    }

    /// Epochs from the operating system's random numbers.
    pub fn os() -> EpochSource {
        EpochSource::new(os_random)
    }

    /// The next epoch: the source's value, unless that is 0 or too close to the last
    /// one, in which case the opposite half of the number circle from the last one.
    pub fn draw(&mut self) -> u32 {
        let e = (self.source)();
        let e = if e != 0 && (self.last == 0 || far_apart(e, self.last)) {
            e
        } else {
            (self.last ^ 0x8000_0000).max(1)
        };
        self.last = e;
        e
    }
}

/// 32 random bits from /dev/urandom; where it cannot be read, from the standard
/// library's per-process random hash keys (themselves from the OS), mixed with the
/// time and the process id.
pub(crate) fn os_random() -> u32 {
    let mut b = [0u8; 4];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_ok() {
        return u32::from_ne_bytes(b);
    }
    let mut h = RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// A boot epoch for a new bridge of this process, from one process-wide source:
/// never 0, never the previous one.
pub fn fresh_epoch() -> u32 {
    static SOURCE: Mutex<Option<EpochSource>> = Mutex::new(None);
    // A poisoned lock only means another thread panicked while drawing.
    let mut s = SOURCE.lock().unwrap_or_else(|e| e.into_inner());
    s.get_or_insert_with(EpochSource::os).draw()
}
