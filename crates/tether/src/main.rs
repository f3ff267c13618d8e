//! `tether`: PCI Express over plain Ethernet, in software.

mod bridge;
mod cmd;

/// Every thread's heap allocations are counted (a thread-local add each), so that
/// `tether bench` can show what the data path allocates per TLP.
#[global_allocator]
static ALLOCATOR: dataplane::allocs::Counting = dataplane::allocs::Counting;
mod config_file;
mod control;
mod decode;
mod log;
mod metrics;
mod pcap;
mod plot;
mod print;
mod rundir;
mod signals;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "PCI Express over plain Ethernet, in software"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log lines: -v adds debug events, -vv trace events. The log goes to
    /// standard error; RUST_LOG, when set, takes the place of -v and -q.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Fewer log lines: -q warnings and errors only, -qq errors only, -qqq none.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    /// How log lines are written: text, or one JSON object per line for collectors.
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        value_name = "FORMAT"
    )]
    log_format: log::Format,
}

#[derive(Subcommand)]
enum Command {
    /// Capture frames on an interface into a pcap file (needs CAP_NET_RAW).
    Capture(CaptureArgs),
    /// Work with tether frames offline.
    #[command(subcommand)]
    Wire(WireCommand),
    /// Run the whole system on this machine: an I/O box with a memdev and two hosts in
    /// network namespaces (in memory without root); enumerate, verified DMA, latency,
    /// then move the device from one host to the other.
    Demo(cmd::demo::DemoArgs),
    /// Relay frames between two interfaces with seeded loss, duplication, reordering,
    /// delay, corruption, rate limits and outages (needs CAP_NET_RAW).
    Impair(ImpairArgs),
    /// Run an I/O box: the devices of a TOML file on an interface, until SIGINT/SIGTERM.
    Iobox {
        /// The box's configuration (docs/cli.md).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run a host bridge until SIGINT/SIGTERM: enumerate the devices of its group as
    /// they arrive and serve their DMA, or serve the group's device to a VMM
    /// (--proxy-fd, --vfio-user).
    Host {
        /// The host's configuration (docs/cli.md).
        #[arg(short, long)]
        config: PathBuf,
        /// Serve QEMU's x-pci-proxy-dev on this inherited socket descriptor (one end of
        /// a socketpair; QEMU has the other as fd=) instead of enumerating: the guest
        /// uses the group's device.
        #[arg(long, value_name = "FD", conflicts_with = "vfio_user")]
        proxy_fd: Option<i32>,
        /// Serve a vfio-user client (QEMU >= 10.1 vfio-user-pci) on this Unix socket
        /// instead of enumerating: the guest uses the group's device.
        #[arg(long, value_name = "SOCKET")]
        vfio_user: Option<PathBuf>,
    },
    /// Start an unmodified QEMU and a host bridge for it: the guest uses the group's
    /// device through QEMU's proxy, or, with vfio-user, every device of the group,
    /// hot-plugged as they come and go; the guest's console on standard output (or
    /// --console FILE), the log on standard error.
    Vm(cmd::vm::VmArgs),
    /// The management station: list the segment, move devices between groups, read a
    /// running bridge's counters and switch tree.
    #[command(subcommand)]
    Ctl(cmd::ctl::CtlCommand),
    /// The management service: watch the segment and serve an HTTP JSON API to list
    /// its devices and bridges and move devices between groups (a bearer token
    /// guards it), until SIGINT/SIGTERM.
    Manager(cmd::manager::ManagerArgs),
    /// Make or inspect group key files (docs/wire-format.md, "Authentication").
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Check box and host configuration files as `iobox` and `host` load them (every
    /// value, the key files they name, a virtio-blk device's disk) without opening a
    /// port; print a summary of each valid file, and fail if any is not valid.
    CheckConfig {
        /// The files (a box's has [[device]] tables, a host's a gid).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Measure MMIO round trips and DMA throughput vs transfer size, per port kind,
    /// TLP size and aggregation (box and host in two namespaces over veth; root).
    Bench(cmd::bench::BenchArgs),
    /// Print the shell completion script for SHELL (e.g. `tether completions bash >
    /// /usr/share/bash-completion/completions/tether`).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Write the manual pages (tether.1, tether-iobox.1, tether-ctl-stats.1, ...) into
    /// DIR, from the same descriptions as --help.
    Man {
        /// Where to write them (made if missing), e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
}

/// The shells `tether completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Shell {
    /// bash: /usr/share/bash-completion/completions/tether
    Bash,
    /// zsh: a file `_tether` in a directory of $fpath
    Zsh,
    /// fish: ~/.config/fish/completions/tether.fish
    Fish,
    /// Elvish
    Elvish,
    /// PowerShell
    Powershell,
}

impl Shell {
    fn into_generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
            Shell::Elvish => clap_complete::Shell::Elvish,
            Shell::Powershell => clap_complete::Shell::PowerShell,
        }
    }
}

#[derive(clap::Args)]
struct ImpairArgs {
    /// First interface.
    #[arg(long)]
    a: String,
    /// Second interface.
    #[arg(long)]
    b: String,
    /// Impairments from A to B: key=value,... (loss, dup, reorder, reorder_us,
    /// delay_us, jitter_us, corrupt, rate_mbit, queue_kb, outage=START_MS-END_MS).
    #[arg(long, default_value = "")]
    ab: String,
    /// Impairments from B to A, same keys.
    #[arg(long, default_value = "")]
    ba: String,
    /// Seed of the random faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(short, long)]
    duration: Option<f64>,
}

#[derive(clap::Args)]
struct CaptureArgs {
    /// Interface to capture on.
    #[arg(short, long)]
    interface: String,
    /// Output pcap file.
    #[arg(short = 'w', long)]
    output: PathBuf,
    /// Stop after this many frames.
    #[arg(short = 'c', long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(short, long)]
    duration: Option<f64>,
    /// Capture every frame, not only tether's EtherType.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum WireCommand {
    /// Write a pcap with one frame of every kind carrying every TLP type.
    Sample {
        /// Output pcap file.
        #[arg(long)]
        pcap: PathBuf,
        /// Tag every frame under this group key file (docs/wire-format.md,
        /// "Authentication").
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Print the frames and TLPs of a pcap file, or their completion latencies.
    Decode {
        /// Input pcap file.
        #[arg(long)]
        pcap: PathBuf,
        /// Check the tags of a keyed group's frames: GID=FILE (repeatable).
        #[arg(long = "key", value_name = "GID=FILE")]
        keys: Vec<String>,
        /// Print, instead of the frames, the completion latency per request type
        /// (requests, answered, min, p50, p90, p99, max in µs), each request matched
        /// to the completion that finished it.
        #[arg(long)]
        stats: bool,
    },
    /// Send the frames of a pcap file out of an interface (needs CAP_NET_RAW).
    Replay {
        /// Input pcap file.
        #[arg(long)]
        pcap: PathBuf,
        /// Interface to send on.
        #[arg(short, long)]
        interface: String,
        /// Pause between frames, in microseconds.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        /// Send the file's frames this many times over.
        #[arg(long, default_value_t = 1)]
        repeat: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    log::init(log::level(cli.verbose, cli.quiet), cli.log_format);
    if let Err(e) = run(cli) {
        eprintln!("tether: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Capture(a) => {
            let stats = cmd::capture::run(&cmd::capture::Options {
                interface: a.interface,
                output: a.output,
                count: a.count,
                duration: a.duration.map(Duration::from_secs_f64),
                all: a.all,
            })?;
            tracing::info!(
                target: "tether::capture",
                "tether capture: {} frames written, {} seen, {} not tether",
                stats.written, stats.seen, stats.filtered
            );
            Ok(())
        }
        Command::Demo(a) => cmd::demo::run(a),
        Command::Iobox { config } => cmd::iobox::run(&config),
        Command::CheckConfig { files } => cmd::check::run(&files),
        Command::Host {
            config,
            proxy_fd: None,
            vfio_user: None,
        } => cmd::host::run(&config),
        Command::Host {
            config,
            proxy_fd,
            vfio_user,
        } => cmd::vm_host::run(&config, proxy_fd, vfio_user.as_deref()),
        Command::Ctl(c) => cmd::ctl::run(c),
        Command::Key(c) => cmd::key::run(c),
        Command::Manager(a) => cmd::manager::run(a),
        Command::Vm(a) => {
            let status = cmd::vm::run(a)?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Command::Bench(a) => cmd::bench::run(a),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                shell.into_generator(),
                &mut cmd,
                "tether",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => {
            let n = man_pages(&dir)?;
            println!("wrote {n} manual pages to {}", dir.display());
            Ok(())
        }
        Command::Impair(a) => {
            let stats = cmd::impair::run(cmd::impair::Options {
                a_to_b: cmd::impair::parse_spec(&a.ab)?,
                b_to_a: cmd::impair::parse_spec(&a.ba)?,
                a: a.a.clone(),
                b: a.b.clone(),
                seed: a.seed,
                duration: a.duration.map(Duration::from_secs_f64),
            })?;
            tracing::info!(
                target: "tether::impair",
                "{}",
                cmd::impair::describe(&format!("{} -> {}", a.a, a.b), &stats[0].0, stats[0].1)
            );
            tracing::info!(
                target: "tether::impair",
                "{}",
                cmd::impair::describe(&format!("{} -> {}", a.b, a.a), &stats[1].0, stats[1].1)
            );
            Ok(())
        }
        Command::Wire(WireCommand::Sample { pcap: path, key }) => {
            let frames = match key {
                Some(k) => wire::sample::frames_keyed(&fabric::keys::read_key_file(&k)?),
                None => wire::sample::frames(),
            };
            let n = frames.len();
            pcap::write(&path, frames.into_iter().map(|f| (f.time_us, f.bytes)))?;
            tracing::info!("wrote {n} sample frames to {}", path.display());
            Ok(())
        }
        Command::Wire(WireCommand::Decode {
            pcap: path,
            keys,
            stats,
        }) => {
            let stdout = std::io::stdout();
            let keys = cmd::ctl::read_keys(&keys)?;
            if stats {
                decode::print_stats(&path, &keys, &mut stdout.lock())
            } else {
                decode::print_pcap(&path, &keys, &mut stdout.lock())
            }
        }
        Command::Wire(WireCommand::Replay {
            pcap: path,
            interface,
            gap_us,
            repeat,
        }) => {
            let sent =
                cmd::capture::replay(&path, &interface, Duration::from_micros(gap_us), repeat)?;
            tracing::info!("sent {sent} frames on {interface}");
            Ok(())
        }
    }
}

/// Writes a page for the command and one for each subcommand, at every depth
/// (`tether-ctl-stats.1`); returns how many.
fn man_pages(dir: &std::path::Path) -> Result<usize> {
    use anyhow::Context;
    fn write(cmd: clap::Command, name: String, dir: &std::path::Path) -> Result<usize> {
        let cmd = cmd.name(name.clone()).bin_name(name.replace('-', " "));
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(n)
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    write(cmd, "tether".into(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command has a summary and every option a description: `--help` leaves
    /// nothing to guess (the names of all that lack one, at once).
    #[test]
    fn every_command_and_option_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name()).trim().to_string();
            if cmd.get_about().is_none() && path != "tether" {
                missing.push(format!("{path}: no summary"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
                for v in a.get_possible_values() {
                    if v.get_help().is_none()
                        && a.get_value_parser().type_id()
                            != clap::builder::ValueParser::bool().type_id()
                    {
                        missing.push(format!("{path}: {id}={}", v.get_name()));
                    }
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, &path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "undescribed:\n{}", missing.join("\n"));
    }
}
