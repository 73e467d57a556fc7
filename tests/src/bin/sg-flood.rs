//! The lab's SYN flood generator on its own: run it inside a network namespace of yours
//! (`ip netns exec NS sg-flood ...`). Forged sources come only from 198.18.0.0/15 or
//! 2001:db8::/32. Prints what it sent as JSON.

use std::{net::IpAddr, process::ExitCode, sync::atomic::AtomicBool, time::Duration};

use clap::Parser;
use synguard_tests::kit::flood::{self, FloodSpec, Source};

#[derive(Parser)]
struct Args {
    /// Interface to send on.
    #[arg(long)]
    iface: String,
    /// Destination MAC (the next hop's), e.g. 02:00:00:00:00:01.
    #[arg(long)]
    dst_mac: String,
    /// Destination address.
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// One source address...
    #[arg(long, conflicts_with = "forged")]
    src: Option<IpAddr>,
    /// ...or random sources from this prefix (inside 198.18.0.0/15 or 2001:db8::/32).
    #[arg(long)]
    forged: Option<ipnet::IpNet>,
    /// SYNs per second in all; 0 is flat out.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

fn mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let read = |what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{}/{what}", a.iface))
            .map(|s| s.trim().to_string())
    };
    let (Ok(index), Ok(own)) = (read("ifindex"), read("address")) else {
        eprintln!(
            "error: no interface {:?} in this network namespace",
            a.iface
        );
        return ExitCode::from(2);
    };
    let (Some(src_mac), Some(dst_mac)) = (mac(&own), mac(&a.dst_mac)) else {
        eprintln!("error: not a MAC address: {}", a.dst_mac);
        return ExitCode::from(2);
    };
    let source = match (a.src, a.forged) {
        (Some(s), None) => Source::Fixed(s),
        (None, Some(n)) => Source::Random(n),
        _ => {
            eprintln!("error: give --src ADDR or --forged PREFIX");
            return ExitCode::from(2);
        }
    };
    let spec = FloodSpec {
        ifindex: index.parse().unwrap_or(0),
        src_mac,
        dst_mac,
        source,
        dst: a.dst,
        dport: a.dport,
        rate: (a.rate > 0).then_some(a.rate),
        flags: synguard_tests::kit::packet::SYN,
        duration: Duration::from_secs_f64(a.seconds.clamp(0.01, 3600.0)),
        threads: a.threads.clamp(1, 64),
        batch: a.batch.clamp(1, 1024),
    };
    match flood::run(&spec, &AtomicBool::new(false)) {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
