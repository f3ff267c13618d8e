//! Port implementations.

pub mod af_packet;
pub mod af_xdp;
pub mod mem;
pub mod null;
pub mod socket;
