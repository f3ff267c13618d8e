//! A seeded model of an impaired one-way link, driven by a clock the caller passes in
//! (µs): the EFE simulator runs it on virtual time, `tether impair` on real time.
//! This kernel has no netem qdisc, so tether brings its own.

pub mod link;
pub mod rng;

pub use link::{Link, LinkConfig, LinkStats};
pub use rng::Rng;

/// Time in microseconds, from any origin the caller keeps.
pub type Micros = u64;
