//! EFE: the end-to-end transport between two tether bridges. It keeps PCIe's promise
//! (every TLP delivered once, in order, intact) across a lossy Ethernet with Go-Back-N
//! retransmission, and shares the path fairly with delay-based rate control.
//!
//! [`Session`] is a sans-IO state machine: the caller feeds it frames and the time, and
//! asks it for frames to send and when to wake it. [`sim`] runs sessions over simulated
//! links with seeded faults; docs/transport.md has the design and the measurements.

pub mod rate;
pub mod rtt;
pub mod seq;
pub mod session;
pub mod settings;
pub mod sim;
pub mod stats;

pub use session::{
    epoch_of_run, Event, Micros, Refused, SendError, Session, State, Transmit, EPOCH_RUN_SPAN,
};
pub use settings::{Config, ConfigError, RateConfig, MAX_REORDER_FRAMES};
pub use stats::Stats;
