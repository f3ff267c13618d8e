//! The subcommands: each loads its configuration, builds its bridge from the
//! libraries and prints what happens.

pub mod bench;
pub mod capture;
pub mod check;
pub mod ctl;
pub mod demo;
pub mod host;
pub mod impair;
pub mod iobox;
pub mod key;
pub mod manager;
pub mod vm;
pub mod vm_host;
