//! Write a synthetic capture (see `synguard_tests::kit::synth`): employees fetching a page,
//! and optionally a SYN flood, forged (from 198.18.0.0/15 or 2001:db8::/32) or from one
//! source. For trying `synguard analyze` on captures of any size.
//!
//! Example: sg-synth --out /tmp/forged.pcap --forged 198.18.0.0/15 --rate 250000 --seconds 10
//!
//! Measuring `analyze` (speed, peak memory) on a large capture: 24 s at 250,000 SYN/s is
//! 10 million packets (each forged SYN gets a SYN-ACK); an IPv6 flood from 2001:db8::/32
//! makes every SYN another source, the worst case for the per-source tables.
//!
//! ```text
//! sg-synth --out /tmp/big.pcap --forged 2001:db8::/32 --v6 --rate 250000 --seconds 24
//! /usr/bin/time -v synguard analyze /tmp/big.pcap --format json --output /tmp/big.json
//! ```

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use synguard_tests::kit::synth::{self, Attack, Scenario};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    /// Forged sources from this prefix (inside 198.18.0.0/15 or 2001:db8::/32)...
    #[arg(long)]
    forged: Option<ipnet::IpNet>,
    /// ...or one source.
    #[arg(long, conflicts_with = "forged")]
    single: Option<IpAddr>,
    /// SYNs per second of the flood.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Length of the capture; the flood runs from 2 s until 2 s before its end.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 20)]
    employees: u8,
    /// Employees use IPv6.
    #[arg(long)]
    v6: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let attack = match (a.forged, a.single) {
        (Some(n), _) => Attack::Forged(n),
        (_, Some(s)) => Attack::Single(s),
        _ => Attack::None,
    };
    if let Attack::Forged(n) = &attack {
        let ok = ["198.18.0.0/15", "2001:db8::/32"]
            .iter()
            .filter_map(|p| p.parse::<ipnet::IpNet>().ok())
            .any(|p| p.contains(n));
        if !ok {
            eprintln!("error: forged sources must come from 198.18.0.0/15 or 2001:db8::/32");
            return ExitCode::from(2);
        }
    }
    let sc = Scenario {
        employees: a.employees,
        v6: a.v6,
        attack,
        attack_rate: a.rate,
        attack_from: Duration::from_secs(2.min(a.seconds)),
        attack_for: Duration::from_secs(a.seconds.saturating_sub(4)),
        duration: Duration::from_secs(a.seconds),
        loss: 0.05,
        errors: 0.02,
        ..Scenario::default()
    };
    match synth::write(&a.out, &sc) {
        Ok(n) => {
            println!("{n} packets written to {}", a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
