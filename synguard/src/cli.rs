//! The command line (names fixed by the spec; scripts rely on them).

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::{config::KEYS, pins::DEFAULT_PIN_DIR};

/// SYN-flood defence in XDP: per-source SYN limits, bans, allow and block lists.
///
/// `synguard run` protects interfaces and pins its state; every other command works on
/// that state from any shell, even in another network namespace.
#[derive(Debug, Parser)]
#[command(name = "synguard", version = crate::version::LONG, about, long_about = None)]
pub struct Cli {
    /// Where `run` pins its maps and links (a BPF filesystem, mounted if needed).
    #[arg(
        long,
        global = true,
        env = "SYNGUARD_PIN_DIR",
        default_value = DEFAULT_PIN_DIR,
        value_name = "DIR"
    )]
    pub pin_dir: PathBuf,

    /// Where `run` keeps its event journal (read by `report`).
    #[arg(
        long,
        global = true,
        env = "SYNGUARD_STATE_DIR",
        default_value = crate::journal::DEFAULT_STATE_DIR,
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it to interfaces and keep it running.
    ///
    /// Examples:
    ///   synguard run --iface eth0
    ///   synguard run --iface eth0 --iface eth1 --syn-rate 100 --mode monitor
    ///   synguard run --iface eth0 --config /etc/synguard/synguard.toml
    #[command(verbatim_doc_comment)]
    Run(RunArgs),

    /// Show whether `run` is active, the interfaces, the config and the counters.
    ///
    /// Example:
    ///   synguard status
    ///   synguard status --json | jq .counters
    #[command(verbatim_doc_comment)]
    Status(JsonArg),

    /// Inspect and change the blocklist (manual blocks and automatic bans).
    #[command(subcommand)]
    Block(BlockCmd),

    /// Inspect and change the allowlist (never limited, never blocked).
    #[command(subcommand)]
    Allow(AllowCmd),

    /// Show or change the settings in force, live.
    #[command(subcommand)]
    Config(ConfigCmd),

    /// Explain why an address is passed, limited or blocked.
    ///
    /// Examples:
    ///   synguard explain 203.0.113.66
    ///   synguard explain 2001:db8::1 --json
    #[command(verbatim_doc_comment)]
    Explain {
        /// The address to explain.
        addr: String,
        #[arg(long)]
        json: bool,
    },

    /// A live view: SYN and drop rates, top sources, drops by reason, attack mode, bans.
    ///
    /// Quits on `q`, Esc or Ctrl-C. When stdout is not a terminal it prints one plain line
    /// per interval instead, for logs and pipes, plus one line per change of the ban and
    /// block lists:
    ///   2026-11-24T20:50:01Z syn/s=152000 drop/s=151900 attack=eth0 bans=1 top=203.0.113.66/32:151000(banned)
    ///   2026-11-24T20:50:01Z + 203.0.113.66/32 banned (at 101000 SYN/s), expires in 10m
    /// It ends with exit code 0 on SIGINT or SIGTERM, and when the state it watches is
    /// removed (`synguard run` stopped).
    ///
    /// Example:
    ///   synguard top
    ///   synguard top --interval 5s | tee top.log
    #[command(verbatim_doc_comment)]
    Top {
        /// How often to refresh (100ms to 1h).
        #[arg(long, default_value = "1s", value_name = "DURATION")]
        interval: String,
    },

    /// The incident report, from the journal `run` keeps in --state-dir.
    ///
    /// Examples:
    ///   synguard report --since 2h
    ///   synguard report --since 1d --output incident.md      (also writes incident.svg)
    ///   synguard report --format json | jq .attacks
    #[command(verbatim_doc_comment)]
    Report {
        /// Only what happened in this last stretch of time (30m, 2h, 1d); default: all
        /// the journal holds.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        #[command(flatten)]
        out: ReportOut,
    },

    /// Analyse a packet capture (pcap or pcapng, e.g. from tcpdump) for SYN floods.
    ///
    /// Applies the agent's own detection rules (per-source SYN limits at the configured
    /// prefix lengths, attack mode at attack-syn-rate) to the capture and writes the same
    /// report as `report`. Config keys given as flags replay it with other thresholds.
    /// A capture cut short or corrupt gives the report of what could be read, then an
    /// error and exit code 2; a file that is no capture at all gives only the error.
    ///
    /// Examples:
    ///   synguard analyze flood.pcap
    ///   synguard analyze flood.pcapng --format json --output flood.json
    ///   synguard analyze flood.pcap --syn-rate 50 --attack-syn-rate 500
    #[command(verbatim_doc_comment)]
    Analyze {
        /// The capture file (pcap or pcapng; `-` for stdin).
        file: PathBuf,
        #[command(flatten)]
        out: ReportOut,
        #[command(flatten)]
        keys: KeyArgs,
    },

    /// Remove protection left in place: detach from every interface and remove the pins.
    ///
    /// For a program kept by `run --keep` (the systemd service runs that way, so restarts
    /// and upgrades leave no gap) or by a `run` that crashed. Refuses while a `run` is
    /// active.
    ///
    /// Example:
    ///   systemctl stop synguard && synguard detach
    #[command(verbatim_doc_comment)]
    Detach,

    /// Print a shell completion script.
    ///
    /// Examples:
    ///   synguard completions bash > /etc/bash_completion.d/synguard
    ///   synguard completions zsh > "${fpath[1]}/_synguard"
    ///   synguard completions fish > ~/.config/fish/completions/synguard.fish
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },

    /// Print the manual page (roff), generated from this command line.
    ///
    /// Example:
    ///   synguard man | man -l -
    #[command(verbatim_doc_comment)]
    Man {
        /// Write every page (synguard.8 and one per subcommand) into DIR instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown, for people (with an SVG chart when written to a file).
    Md,
    /// JSON, for scripts (stable field names).
    Json,
}

#[derive(Debug, Args)]
pub struct ReportOut {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// Write the report to FILE instead of stdout; with `--format md` the chart goes
    /// beside it as FILE with an .svg extension.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Machine-readable output (stable field names).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BlockCmd {
    /// List blocked prefixes: reason (auto or manual), SYNs seen, first seen, expiry, hits.
    List(JsonArg),
    /// Block a prefix (all its traffic is dropped).
    ///
    /// Examples:
    ///   synguard block add 203.0.113.0/24 --for 10m --comment "flood 2026-11-24"
    ///   synguard block add 2001:db8:bad::/48
    ///
    /// Refuses, unless --force, to block an allowlisted address or the address of your
    /// own SSH session.
    #[command(verbatim_doc_comment)]
    Add {
        /// The prefix, e.g. 203.0.113.0/24, or a single address.
        cidr: String,
        /// Remove the block after this long (30s, 10m, 1h, 2d); default: until removed.
        #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
        duration: Option<String>,
        /// Why (at most 64 bytes); shown by `block list` and `explain`.
        #[arg(long, default_value = "")]
        comment: String,
        /// Add it even if it covers an allowlisted address or your own SSH session.
        #[arg(long)]
        force: bool,
    },
    /// Remove a block or a ban, by its exact prefix.
    Del { cidr: String },
}

#[derive(Debug, Subcommand)]
pub enum AllowCmd {
    /// List allowlisted prefixes.
    List(JsonArg),
    /// Allowlist a prefix: never limited, never blocked, whatever else matches.
    ///
    /// Example:
    ///   synguard allow add 198.51.100.0/24 --comment "office"
    #[command(verbatim_doc_comment)]
    Add {
        cidr: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Remove a prefix from the allowlist, by its exact prefix.
    Del { cidr: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Show the settings in force.
    Show(JsonArg),
    /// Change one setting on the running program (applies to the next packet).
    ///
    /// Examples:
    ///   synguard config set syn-rate 50
    ///   synguard config set mode monitor
    ///   synguard config set ports 80,443
    #[command(verbatim_doc_comment)]
    Set {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode if the driver supports it, else generic mode (said in the log);
    /// generic on a veth, whose frames are socket buffers already.
    Auto,
    /// Driver mode only; fail if the driver lacks it.
    Native,
    /// Generic mode, in the kernel's stack after the driver: works everywhere, slower.
    Skb,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to protect (repeat for several).
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub ifaces: Vec<String>,

    /// How to attach the XDP program.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,

    /// TOML file with config keys (re-read on SIGHUP). Command-line keys override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// On SIGINT/SIGTERM leave the program attached and the state pinned (protection
    /// continues; the next `run` adopts it).
    #[arg(long)]
    pub keep: bool,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub crowdsec: crate::crowdsec::Args,
}

/// Every config key as `--KEY VALUE`, generated from [`KEYS`] so the names can never
/// drift from the TOML file and `config set`.
#[derive(Debug, Clone, Default)]
pub struct KeyArgs(pub Vec<(&'static str, String)>);

impl FromArgMatches for KeyArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out = Vec::new();
        for k in &KEYS {
            if let Some(v) = m.get_one::<String>(k.name) {
                out.push((k.name, v.clone()));
            }
        }
        Ok(Self(out))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for KeyArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for k in &KEYS {
            cmd = cmd.arg(
                Arg::new(k.name)
                    .long(k.name)
                    .value_name("VALUE")
                    .help(format!("{} [default: {:?}]", k.help, k.default))
                    .help_heading("Config keys (also in --config FILE and `config set`)")
                    .allow_hyphen_values(true),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_every_key() {
        let cli = Cli::try_parse_from([
            "synguard",
            "run",
            "--iface",
            "eth0",
            "--iface",
            "eth1",
            "--syn-rate",
            "5",
            "--mode",
            "monitor",
            "--pin-dir",
            "/run/x",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("parsed as run");
        };
        assert_eq!(r.ifaces, ["eth0", "eth1"]);
        assert_eq!(
            r.keys.0,
            [("syn-rate", "5".to_string()), ("mode", "monitor".into())]
        );
        assert_eq!(cli.pin_dir, PathBuf::from("/run/x"));
    }
}
