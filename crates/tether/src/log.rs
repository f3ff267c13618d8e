//! The log of every tether program: `tracing` events on standard error, with a level
//! and a UTC timestamp each, as plain lines or one JSON object per line
//! (`--log-format json`, for collectors).
//!
//! What a command is asked for (a listing, counters, a benchmark's table) goes to
//! standard output; everything a program says about what happened to it (peers,
//! hot-plug, group changes, warnings) is an event here. The level is `info` by
//! default, `-v` gives `debug` (`-vv` `trace`), `-q` `warn` (`-qq` `error`); `RUST_LOG`
//! (as `tracing_subscriber::EnvFilter` reads it, e.g. `RUST_LOG=tether::fabric=debug`),
//! when set, takes the place of both.
//!
//! Event targets name what an event is about: `tether::fabric` (peers, devices,
//! groups, what the fabric refused), `tether::iobox`, `tether::host`, `tether::vm`,
//! `tether::impair`, `tether::capture`, `tether::bench`.

use std::io::IsTerminal;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How events are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `2026-12-07T15:50:00.123456Z  INFO tether::fabric: peer up: ...`
    #[default]
    Text,
    /// One JSON object per event: timestamp, level, target, fields (the message
    /// among them).
    Json,
}

/// The level for `-v` and `-q` counts: info by default.
pub fn level(verbose: u8, quiet: u8) -> LevelFilter {
    match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-3 => LevelFilter::OFF,
        -2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Installs the process's log on standard error. `RUST_LOG`, if set and valid, is the
/// filter; otherwise `level`. A `RUST_LOG` that does not parse is said once, then
/// ignored for `level`.
pub fn init(level: LevelFilter, format: Format) {
    let (filter, bad_env) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(level.to_string()), Some((spec, e))),
        },
        _ => (EnvFilter::new(level.to_string()), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (a unit test's) keeps the first subscriber.
    let _ = match format {
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if let Some((spec, e)) = bad_env {
        tracing::warn!("RUST_LOG={spec:?} ignored: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_counts_give_levels() {
        assert_eq!(level(0, 0), LevelFilter::INFO);
        assert_eq!(level(1, 0), LevelFilter::DEBUG);
        assert_eq!(level(2, 0), LevelFilter::TRACE);
        assert_eq!(level(5, 0), LevelFilter::TRACE);
        assert_eq!(level(0, 1), LevelFilter::WARN);
        assert_eq!(level(0, 2), LevelFilter::ERROR);
        assert_eq!(level(0, 3), LevelFilter::OFF);
        assert_eq!(level(2, 1), LevelFilter::DEBUG);
        assert_eq!(level(255, 255), LevelFilter::INFO);
    }
}
