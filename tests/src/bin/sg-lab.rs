//! `cargo xtask lab`: replay the founding incident in network namespaces, every scenario
//! with and without synguard on the server profiles (defaults, legacy, and container: the
//! web server behind a DNAT with docker-proxy's listener on the host), and print what was
//! measured.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use clap::{Parser, ValueEnum};
use synguard_tests::{
    kit::{netns::cleanup_stale, root::assert_root},
    lab::{self, Profile, RunSpec, Scenario},
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protection {
    Both,
    On,
    Off,
}

/// Replay SYN floods against a real web server in network namespaces, with and without
/// synguard, and report what the employees saw.
#[derive(Parser)]
struct Args {
    /// Scenarios to run (repeat); default: all.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Server profiles (repeat); default: defaults, legacy and container.
    #[arg(long = "profile", value_enum)]
    profiles: Vec<Profile>,
    /// Seconds each attack lasts (1-600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// SYNs per second in the forged scenarios (0: as fast as the generator can, on one
    /// thread). A fixed rate gives runs with and without synguard the same load.
    #[arg(long, default_value_t = lab::DEFAULT_ATTACK_RATE)]
    attack_rate: u64,
    /// Runs with synguard, without, or both.
    #[arg(long, value_enum, default_value_t = Protection::Both)]
    synguard: Protection,
    /// JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep synguard's incident report of every run with synguard in DIR
    /// (SCENARIO-PROFILE.md with its .svg chart).
    #[arg(long, value_name = "DIR")]
    reports: Option<std::path::PathBuf>,
    /// Seconds of normal traffic before and after each attack (0-600; shows in the
    /// reports' charts, not in the measurements).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600))]
    calm: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    assert_root();
    if let Err(e) = lab::check_tools() {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let stale = cleanup_stale();
    if stale > 0 {
        eprintln!(
            "lab: removed {stale} namespaces or mounts left by an earlier run that was killed"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        if !s.swap(true, Ordering::SeqCst) {
            eprintln!("lab: stopping; removing the lab's namespaces");
        }
    }) {
        eprintln!("error: cannot handle Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }

    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let profiles = if args.profiles.is_empty() {
        vec![
            Profile::Defaults,
            Profile::Legacy,
            Profile::Container,
            Profile::NatGuests,
        ]
    } else {
        args.profiles.clone()
    };
    let protections: &[bool] = match args.synguard {
        Protection::Both => &[false, true],
        Protection::On => &[true],
        Protection::Off => &[false],
    };
    let mut results = Vec::new();
    'all: for &scenario in &scenarios {
        for &profile in &profiles {
            for &synguard in protections {
                if stop.load(Ordering::SeqCst) {
                    break 'all;
                }
                eprintln!(
                    "lab: {} on {} {} synguard ({} s)",
                    scenario.name(),
                    profile.name(),
                    if synguard { "with" } else { "without" },
                    args.duration
                );
                let spec = RunSpec {
                    scenario,
                    profile,
                    synguard,
                    duration: Duration::from_secs(args.duration),
                    synguard_args: Vec::new(),
                    attack_rate: (args.attack_rate > 0).then_some(args.attack_rate),
                    report_dir: args.reports.clone(),
                    calm: Duration::from_secs(args.calm),
                };
                match lab::run(&spec, &stop) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&results) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("{}", lab::table(&results));
        println!(
            "\nattack/s: packets (many-sources: connections) the attacker sent per second; \
             employees ok: requests\ncompleted within {} s during the attack; p50/p99: \
             connect time of those; XDP dropped:\npackets synguard dropped; softirq ms/s: CPU \
             time the whole machine spent in softirq per second.",
            lab::REQUEST_TIMEOUT.as_secs()
        );
    }
    if stop.load(Ordering::SeqCst) {
        return ExitCode::from(130);
    }
    ExitCode::SUCCESS
}
