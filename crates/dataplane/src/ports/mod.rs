//! Port implementations.

pub mod af_packet;
pub mod mem;
pub mod null;
pub mod socket;
