//! The tether fabric: what turns an Ethernet segment into one PCIe switch. Each
//! bridge (host, I/O box, manager) is a sans-IO [`Node`]: INFO frames for discovery and
//! keepalive, one efe session per (group, peer) for TLPs, hot-plug and hot-remove
//! events from the INFO lists, and group (GID) changes by CTRL frames. [`port`] puts a
//! node on a dataplane port ([`FabricPort`]) and makes a bridge's node from its settings.

pub mod epoch;
pub mod keys;
pub mod manager;
pub mod node;
pub mod port;

pub use epoch::{fresh_epoch, EpochSource};
pub use manager::{Manager, ManagerEvent, ManagerStats, SeenBridge};
pub use node::{
    DownReason, FabricError, FabricEvent, FabricStats, GroupKeys, Node, NodeConfig, BROADCAST,
};
pub use port::FabricPort;
