//! `cargo xtask bench`: the program's per-packet cost in the kernel for each verdict,
//! measured with `BPF_PROG_TEST_RUN` and a large `repeat`, next to no-op XDP programs
//! measured in the same run, in interleaved rounds so drift hits every case alike.
//! Reported as the median over rounds, the spread (min-max), and the ratio to the no-op
//! program with the same action.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde::Serialize;
use synguard::{clock, config::Settings, rules};
use synguard_common::{RULE_ALLOW, RULE_BAN, RULE_BLOCK, Rule, stat};
use synguard_tests::{
    baseline::{self, Noop},
    netns::Netns,
    packet::{ACK, SYN, Tcp, udp},
    prog::{Prog, XDP_DROP, XDP_PASS, XDP_TX, require_root},
};

#[derive(Parser)]
struct Args {
    /// JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Three short rounds (for `cargo xtask test`).
    #[arg(long)]
    quick: bool,
}

#[derive(Serialize)]
struct Row {
    case: String,
    verdict: &'static str,
    ns_median: f64,
    ns_min: f64,
    ns_max: f64,
    baseline: &'static str,
    ratio: f64,
}

#[derive(Serialize)]
struct Report {
    rounds: usize,
    repeat: u32,
    noop_pass_ns: f64,
    noop_drop_ns: f64,
    rows: Vec<Row>,
}

const SERVER: &str = "192.0.2.1";
const SERVER6: &str = "2001:db8:2::1";

enum Runner {
    Noop(Noop),
    Prog(Box<Prog>),
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    runner: Runner,
    /// Run once per call (the program rewrites the frame, so `repeat` would measure the
    /// rewritten frame after the first run), many calls per round.
    single: bool,
    /// A counter that must have moved for every run, proving the case measured the path
    /// it names.
    proof: Option<usize>,
    samples: Vec<f64>,
}

fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    for (k, v) in pairs {
        s.set(k, v)?;
    }
    Ok(s)
}

fn prog_with(pairs: &[(&str, &str)], rule: Option<(&str, Rule)>) -> anyhow::Result<Runner> {
    let mut p = Prog::new(settings(pairs)?);
    if let Some((net, r)) = rule {
        rules::put(&mut p.loaded.maps, &net.parse()?, &r)?;
    }
    Ok(Runner::Prog(Box::new(p)))
}

/// Generous limits, so "under the limit" stays under it for every repeat, and an attack
/// threshold no test run reaches (millions of SYNs a second are an attack by definition):
/// these cases measure the normal path, attack detection included.
const UNLIMITED: &[(&str, &str)] = &[
    ("syn-rate", "10000000"),
    ("syn-burst", "1000000"),
    ("attack-syn-rate", "100000000"),
];

fn cases() -> anyhow::Result<Vec<Case>> {
    let far = clock::monotonic_ns() + 3_600_000_000_000;
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    let case = |name, frame, action, runner, proof| Case {
        name,
        frame,
        action,
        runner,
        single: false,
        proof,
        samples: Vec::new(),
    };
    Ok(vec![
        case(
            "no-op XDP_PASS",
            syn.clone(),
            XDP_PASS,
            Runner::Noop(Noop::load(baseline::XDP_PASS)?),
            None,
        ),
        case(
            "no-op XDP_DROP",
            syn.clone(),
            XDP_DROP,
            Runner::Noop(Noop::load(baseline::XDP_DROP)?),
            None,
        ),
        case(
            "banned source, SYN",
            syn.clone(),
            XDP_DROP,
            prog_with(
                UNLIMITED,
                Some(("203.0.113.5/32", Rule::new(RULE_BAN, 1, 0, far))),
            )?,
            Some(stat::R_BANNED),
        ),
        case(
            "blocked CIDR, SYN",
            syn.clone(),
            XDP_DROP,
            prog_with(
                UNLIMITED,
                Some(("203.0.113.0/24", rules::manual(RULE_BLOCK, 0, ""))),
            )?,
            Some(stat::R_BLOCKED),
        ),
        case(
            "allowlisted source, SYN",
            syn.clone(),
            XDP_PASS,
            prog_with(
                UNLIMITED,
                Some(("203.0.113.0/24", rules::manual(RULE_ALLOW, 0, ""))),
            )?,
            Some(stat::R_ALLOWED),
        ),
        case(
            "SYN under the limit",
            syn.clone(),
            XDP_PASS,
            prog_with(UNLIMITED, None)?,
            Some(stat::R_SYN_PASSED),
        ),
        case(
            "SYN over the limit",
            syn.clone(),
            XDP_DROP,
            prog_with(
                &[("syn-rate", "1"), ("syn-burst", "1"), ("ban-for", "0s")],
                None,
            )?,
            Some(stat::R_SYN_LIMITED),
        ),
        case(
            "established-flow ACK",
            Tcp::syn("198.51.100.7", SERVER).flags(ACK).build(),
            XDP_PASS,
            prog_with(UNLIMITED, None)?,
            Some(stat::R_TCP_OTHER),
        ),
        case(
            "non-TCP (UDP)",
            udp("198.51.100.7", SERVER),
            XDP_PASS,
            prog_with(UNLIMITED, None)?,
            Some(stat::R_NON_TCP),
        ),
        case(
            "IPv6 SYN under the limit",
            Tcp::syn("2001:db8:1::7", "2001:db8:ffff::1")
                .flags(SYN)
                .build(),
            XDP_PASS,
            prog_with(UNLIMITED, None)?,
            Some(stat::R_SYN_PASSED),
        ),
        case(
            "VLAN (2 tags) SYN under the limit",
            Tcp::syn("203.0.113.9", SERVER).vlan(10).vlan(20).build(),
            XDP_PASS,
            prog_with(UNLIMITED, None)?,
            Some(stat::R_SYN_PASSED),
        ),
    ])
}

/// The attack-mode cases: they need a listening socket in the namespace of the caller,
/// so they run on a thread inside a namespace of their own.
fn cookie_cases() -> anyhow::Result<Vec<Case>> {
    let tx = |name, frame, runner, proof| Case {
        name,
        frame,
        action: XDP_TX,
        runner,
        single: true,
        proof,
        samples: Vec::new(),
    };
    let syn = Tcp::syn("198.18.1.2", SERVER).with_syn_options().build();
    let syn6 = Tcp::syn("2001:db8:8000::2", SERVER6)
        .with_syn_options()
        .build();
    let always = &[
        ("syn-cookies", "always"),
        ("syn-rate", "10000000"),
        ("syn-burst", "1000000"),
    ][..];
    Ok(vec![
        tx(
            "no-op XDP_TX (one run per call)",
            syn.clone(),
            Runner::Noop(Noop::load(baseline::XDP_TX)?),
            None,
        ),
        tx(
            "attack mode: SYN answered with a cookie",
            syn,
            prog_with(always, None)?,
            Some(stat::R_COOKIE_SENT),
        ),
        tx(
            "attack mode: IPv6 SYN answered with a cookie",
            syn6,
            prog_with(always, None)?,
            Some(stat::R_COOKIE_SENT),
        ),
    ])
}

fn measure(cases: &mut [Case], rounds: usize, repeat: u32) -> anyhow::Result<()> {
    // Warm up: creates buckets, takes the first-SYN path out of the measurement.
    for c in cases.iter() {
        match &c.runner {
            Runner::Noop(n) => {
                n.run_repeat(&c.frame, 1)?;
            }
            Runner::Prog(p) => {
                p.run_repeat(&c.frame, 1);
            }
        }
    }
    for _ in 0..rounds {
        for c in cases.iter_mut() {
            let before = match &c.runner {
                Runner::Prog(p) => c.proof.map(|i| p.counter(i)),
                Runner::Noop(_) => None,
            };
            let (calls, per_call) = if c.single {
                (repeat / 50, 1)
            } else {
                (1, repeat)
            };
            let (mut action, mut total) = (0, 0.0);
            for _ in 0..calls.max(1) {
                let (a, ns) = match &c.runner {
                    Runner::Noop(n) => n.run_repeat(&c.frame, per_call)?,
                    Runner::Prog(p) => p.run_repeat(&c.frame, per_call),
                };
                action = a;
                total += ns;
            }
            let ns = total / f64::from(calls.max(1));
            if action != c.action {
                bail!("{}: action {action}, expected {}", c.name, c.action);
            }
            let runs = u64::from(calls.max(1)) * u64::from(per_call);
            if let (Runner::Prog(p), Some(i), Some(b)) = (&c.runner, c.proof, before) {
                let moved = p.counter(i) - b;
                // Slack of two runs: at 1 SYN/s the "over the limit" bucket earns a token
                // back during a round.
                if moved + 2 < runs {
                    bail!(
                        "{}: counter {} moved {moved} times in {runs} runs: the case did not \
                         take the path it names",
                        c.name,
                        stat::NAMES[i]
                    );
                }
            }
            c.samples.push(ns);
        }
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    require_root();
    let (rounds, repeat) = if args.quick {
        (3, 20_000)
    } else {
        (9, 1_000_000)
    };
    let mut cases = cases()?;
    measure(&mut cases, rounds, repeat)?;
    // The cookie path, inside a namespace with a listener and tcp_syncookies = 2.
    let ns = Netns::new("bench");
    ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "2001:db8:2::1/128", "dev", "lo", "nodad"]);
    ns.sysctl("net.ipv4.tcp_syncookies", "2");
    let cookie = ns
        .spawn(move || -> anyhow::Result<Vec<Case>> {
            let _l4 = std::net::TcpListener::bind("192.0.2.1:80")?;
            let _l6 = std::net::TcpListener::bind("[2001:db8:2::1]:80")?;
            let mut c = cookie_cases()?;
            measure(&mut c, rounds, repeat)?;
            Ok(c)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("cookie cases panicked"))??;
    let noop_tx = median(&cookie[0].samples);
    cases.extend(cookie);
    let noop_pass = median(&cases[0].samples);
    let noop_drop = median(&cases[1].samples);
    let rows: Vec<Row> = cases
        .iter()
        .map(|c| {
            let (baseline, base) = if c.action == XDP_DROP {
                ("no-op XDP_DROP", noop_drop)
            } else if c.action == XDP_TX {
                ("no-op XDP_TX (one run per call)", noop_tx)
            } else {
                ("no-op XDP_PASS", noop_pass)
            };
            let m = median(&c.samples);
            Row {
                case: c.name.to_string(),
                verdict: match c.action {
                    XDP_DROP => "drop",
                    XDP_TX => "answer",
                    _ => "pass",
                },
                ns_median: m,
                ns_min: c.samples.iter().copied().fold(f64::INFINITY, f64::min),
                ns_max: c.samples.iter().copied().fold(0.0, f64::max),
                baseline,
                ratio: m / base,
            }
        })
        .collect();
    let report = Report {
        rounds,
        repeat,
        noop_pass_ns: noop_pass,
        noop_drop_ns: noop_drop,
        rows,
    };
    let md = markdown(&report);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("summary.md"), &md).context("writing target/bench/summary.md")?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{md}");
    }
    Ok(())
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Per-packet cost in the kernel (BPF_PROG_TEST_RUN, {} rounds x {} runs, median and \
         min-max over rounds):\n",
        r.rounds, r.repeat
    );
    let _ = writeln!(s, "| case | verdict | ns/packet | min-max | ratio |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1}-{:.1} | {:.2}x {} |",
            row.case, row.verdict, row.ns_median, row.ns_min, row.ns_max, row.ratio, row.baseline
        );
    }
    s
}
