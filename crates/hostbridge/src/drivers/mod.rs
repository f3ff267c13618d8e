//! Host-side drivers on the root complex's driver API.

pub mod memdev;
