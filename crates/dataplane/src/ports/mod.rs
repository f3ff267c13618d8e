//! Port implementations.

pub mod mem;
pub mod null;
pub mod socket;
