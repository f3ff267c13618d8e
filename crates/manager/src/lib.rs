//! The management station of a tether segment, in the style of ExpEther Manager: it
//! reads the INFO frames of every group to keep an inventory of boxes, devices and
//! hosts, and moves devices between groups with CTRL SET_GROUP requests (signed when
//! the boxes want it).
//!
//! - [`station`]: the station on its AF_PACKET socket and the requests it follows
//!   (`tether ctl list` and `set-group` use it for one command);
//! - [`inventory`]: the inventory as the API shows it;
//! - [`service`] and [`api`]: `tether manager`, the station in a thread of its own
//!   behind an HTTP JSON API (axum), with a bearer token. The HTTP server lives here
//!   only, never in a bridge's data loop.

pub mod api;
pub mod inventory;
pub mod service;
pub mod station;

pub use service::{serve, MoveOutcome, ServiceConfig};
pub use station::{parse_device, PendingMove, Station};

/// What can go wrong in the manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Port(String),
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    BadDevice(String),
    #[error("{0}")]
    Http(String),
}
