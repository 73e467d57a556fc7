//! `synguard status`: is it running, where, with which settings, and what has it done.

use std::collections::BTreeMap;

use aya::programs::links::{FdLink, PinnedLink};
use serde::Serialize;
use synguard_common::{
    PROOF_COOKIE, PROOF_FOREVER, PROOF_GATEWAY, PROOF_HANDSHAKE, PROOF_RESOLVER, PROOF_SOCKET,
    RULE_ALLOW, RULE_BAN, RULE_BLOCK, RULE_CROWDSEC, capacity, stat,
};

use super::{State, print_json, table};
use crate::{bpf::BUILD_ID, config::Settings, pins, rules};

#[derive(Serialize)]
struct AttackJson {
    active: bool,
    since: Option<String>,
    /// The latest total SYN rate on the interface, per second.
    syn_rate: u64,
    peak_syn_rate: u64,
}

#[derive(Serialize)]
struct IfaceJson {
    name: String,
    ifindex: u32,
    link_id: Option<u32>,
    program_id: Option<u32>,
    attack: AttackJson,
    counters: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct FillJson {
    table: &'static str,
    entries: usize,
    capacity: u32,
    percent: f64,
}

#[derive(Serialize)]
struct EntriesJson {
    allow: usize,
    block: usize,
    ban: usize,
    /// Decisions pulled from CrowdSec's Local API.
    crowdsec: usize,
    capacity_per_family: u32,
}

#[derive(Serialize)]
struct StatusJson {
    pin_dir: String,
    daemon_running: bool,
    daemon_pid: Option<u32>,
    program_build_id: String,
    this_binary_build_id: &'static str,
    interfaces: Vec<IfaceJson>,
    config: BTreeMap<&'static str, String>,
    counters: BTreeMap<&'static str, u64>,
    dropped: u64,
    passed: u64,
    entries: EntriesJson,
    sources_tracked: usize,
    sources_capacity: u32,
    verified_sources: usize,
    /// Sources proven to own their addresses (see `synguard_common::Proof`), by how:
    /// `cookie`, `handshake`, `connections`, and the protected `gateway` and `resolver`
    /// (never banned). Expired proofs not counted.
    proven: BTreeMap<&'static str, usize>,
    /// The protected addresses (the gateways and resolvers `run` found).
    protected: Vec<String>,
    /// Whether `run` attached its sock_ops program (proofs of accepted connections).
    handshake_proofs: bool,
    /// The machine's addresses: the only destinations attack mode answers SYNs for. SYNs
    /// for any other address (bridged or routed to guests) and SYNs for ports no host
    /// socket listens on (a container's port published by DNAT among them) are left to
    /// the kernel (see `synguard::locals`).
    answers_for: Vec<String>,
    /// The destination ports the machine's NAT rules rewrite, whose SYNs attack mode
    /// leaves to the kernel (see `synguard::nat`): ranges (`80,8000-8010`), "none" or
    /// "every port" (also when `run` could not read the rules: its log says why).
    nat_ports: String,
    /// Per-second rate of every counter, over `rate_window_s`.
    rates: BTreeMap<&'static str, f64>,
    rate_window_s: f64,
    /// Fill level of every table.
    tables: Vec<FillJson>,
    /// Anything that needs attention, in plain words; empty when all is well.
    unhealthy: Vec<String>,
    /// `net.ipv4.tcp_syncookies` as synguard found it before attack mode set it to 2.
    saved_tcp_syncookies: Option<i32>,
    /// `net.ipv4.tcp_timestamps` as synguard found it before attack mode set it to 2.
    saved_tcp_timestamps: Option<i32>,
    /// Since when the host's settings are set for SYN cookies answered from XDP (the SYN
    /// queues ran over in attack mode, or `syn-cookies always`); absent when they are not.
    host_settings_since: Option<String>,
    /// The families whose source addresses the host rewrites (masquerade, SNAT): in attack
    /// mode, ACKs its guests' connections may get are passed to the kernel
    /// (`ack_no_socket`, `ack_snat_port`).
    source_nat: Vec<String>,
    /// What a cookie SYN-ACK offers now besides the MSS, when the client asks for it
    /// (`timestamps`, `window scale N`, `sack`, `ecn`); empty: the MSS only.
    cookie_options: Vec<String>,
    /// The link to CrowdSec's Local API, as `run` last saw it (`run --crowdsec-url`);
    /// absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    crowdsec: Option<crate::crowdsec::Link>,
}

fn named(c: &[u64; stat::COUNT]) -> BTreeMap<&'static str, u64> {
    stat::NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, c[i]))
        .collect()
}

/// How long `status` watches the counters to report rates.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

pub fn status(state: &State, json: bool, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let cfg = state.maps.read_config()?;
    let host = state.maps.read_host()?;
    let settings = Settings::from_kernel(&cfg);
    let before = state.maps.total_counters()?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(RATE_WINDOW);
    let totals = state.maps.total_counters()?;
    let secs = t0.elapsed().as_secs_f64();
    let rates: BTreeMap<&'static str, f64> = stat::NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, totals[i].saturating_sub(before[i]) as f64 / secs))
        .collect();
    let mut interfaces = Vec::new();
    for (ifindex, name, path) in pins::pinned_links(&state.pin_dir) {
        let info = PinnedLink::from_pin(&path)
            .ok()
            .map(FdLink::from)
            .and_then(|l| l.info().ok());
        let slot = capacity::stats_slot(ifindex);
        let st = state.maps.ifstate(slot)?;
        let fresh = crate::clock::monotonic_ns().saturating_sub(st.rate_ns)
            <= synguard_common::ATTACK_STALE_NS;
        interfaces.push(IfaceJson {
            name,
            ifindex,
            link_id: info.as_ref().map(|i| i.id()),
            program_id: info.as_ref().map(|i| i.program_id()),
            attack: AttackJson {
                active: st.attack != 0,
                since: (st.attack != 0)
                    .then(|| super::time_json(st.since_ns))
                    .flatten(),
                syn_rate: if fresh { st.rate } else { 0 },
                peak_syn_rate: st.peak_rate,
            },
            counters: named(&state.maps.counters(slot)?),
        });
    }
    let entries = rules::list(&state.maps)?;
    let count = |k| entries.iter().filter(|e| e.rule.kind == k).count();
    let sources = crate::sources::for_each(&state.maps, crate::clock::monotonic_ns(), |_, _| ())?;
    let now = crate::clock::monotonic_ns();
    let mut proven: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut protected = Vec::new();
    let verified = crate::batch::for_each(&state.maps.verified, 512, |k, p| {
        if p.until_ns <= now {
            return;
        }
        let how = match p.how {
            PROOF_COOKIE => "cookie",
            PROOF_HANDSHAKE => "handshake",
            PROOF_SOCKET => "connections",
            PROOF_GATEWAY => "gateway",
            PROOF_RESOLVER => "resolver",
            _ => "other",
        };
        *proven.entry(how).or_default() += 1;
        if p.until_ns == PROOF_FOREVER
            && let Some(net) = crate::daemon::source_net(k)
        {
            protected.push(format!("{} ({how})", net.addr()));
        }
    })?;
    protected.sort();
    let in_trie = |bans: bool, v4: bool| {
        entries
            .iter()
            .filter(|e| (e.rule.kind == RULE_BAN) == bans && e.net.addr().is_ipv4() == v4)
            .count()
    };
    let fill = |name: &'static str, used: usize, cap: u32| FillJson {
        table: name,
        entries: used,
        capacity: cap,
        percent: used as f64 * 100.0 / f64::from(cap),
    };
    let tables = vec![
        fill("rules_v4", in_trie(false, true), capacity::RULES),
        fill("rules_v6", in_trie(false, false), capacity::RULES),
        fill("bans_v4", in_trie(true, true), capacity::RULES),
        fill("bans_v6", in_trie(true, false), capacity::RULES),
        fill("sources", sources, capacity::SOURCES),
        fill("verified", verified, capacity::VERIFIED),
    ];
    let mut unhealthy = Vec::new();
    if !state.daemon {
        unhealthy.push(
            "no `synguard run` is active: bans are not logged and expired entries not swept"
                .to_string(),
        );
    }
    for t in &tables {
        // A sources table full of idle sources is fine: the kernel reuses their slots
        // (`syn_untracked` below is what says it could not).
        if t.percent >= 95.0 && t.table != "sources" {
            unhealthy.push(format!(
                "the {} table is {:.0} % full ({} of {})",
                t.table, t.percent, t.entries, t.capacity
            ));
        }
    }
    let per_sec = |n: &str| rates.get(n).copied().unwrap_or(0.0);
    if per_sec("syn_untracked") > 0.0 {
        unhealthy.push(format!(
            "the sources table has no slot for some new sources (both slots of their set hold \
             sources spending their bursts): {:.0} SYN/s pass unmetered",
            per_sec("syn_untracked")
        ));
    }
    if per_sec("ban_table_full") > 0.0 {
        unhealthy.push(format!(
            "the rules table is full: {:.0} bans/s cannot be recorded (their SYNs are still \
             dropped)",
            per_sec("ban_table_full")
        ));
    }
    for (name, what) in [
        (
            "events_lost",
            "events to the daemon were lost (ring buffer full)",
        ),
        (
            "ban_table_full",
            "bans could not be recorded since start (rules table full)",
        ),
        (
            "syn_untracked",
            "SYNs passed unmetered since start (no free slot in the sources table)",
        ),
    ] {
        let i = stat::NAMES.iter().position(|n| *n == name).unwrap_or(0);
        if totals[i] > 0 && per_sec(name) == 0.0 {
            unhealthy.push(format!("{} {what}", totals[i]));
        }
    }
    if cfg.build_id != 0 && format!("{:016x}", cfg.build_id) != BUILD_ID {
        unhealthy.push(format!(
            "the attached program (build {:016x}) is not this binary's ({BUILD_ID}): restart \
             `synguard run` to upgrade",
            cfg.build_id
        ));
    }
    let crowdsec = if state.daemon {
        crate::crowdsec::read_link(state_dir)
    } else {
        None
    };
    if let Some(l) = &crowdsec
        && let Some(e) = &l.error
    {
        unhealthy.push(format!(
            "CrowdSec's Local API ({}): {e}; the {} decisions pulled before stay until they \
             expire{}",
            l.url,
            l.decisions,
            l.retry_in_s
                .map_or(String::new(), |s| format!("; next attempt within {s} s"))
        ));
    }
    if let Some(l) = &crowdsec
        && l.not_enforced_full > 0
    {
        unhealthy.push(format!(
            "the blocklist is full: {} CrowdSec decisions are held but not enforced (the last \
             {} entries of each family are kept for allow entries); aggregate decisions into \
             ranges or remove manual blocks",
            l.not_enforced_full,
            capacity::ALLOW_RESERVE
        ));
    }
    let dropped: u64 = stat::REASON_LIST
        .iter()
        .copied()
        .filter(|r| stat::is_drop(*r))
        .map(|r| totals[r])
        .sum::<u64>()
        .saturating_sub(totals[stat::N_MONITOR_PASSED]);
    let answered = totals[stat::R_COOKIE_SENT];
    let passed: u64 =
        stat::REASON_LIST.iter().map(|&r| totals[r]).sum::<u64>() - dropped - answered;
    let out = StatusJson {
        pin_dir: state.pin_dir.display().to_string(),
        daemon_running: state.daemon,
        daemon_pid: (state.daemon && cfg.daemon_pid != 0).then_some(cfg.daemon_pid),
        program_build_id: format!("{:016x}", cfg.build_id),
        this_binary_build_id: BUILD_ID,
        interfaces,
        config: settings.entries().into_iter().collect(),
        counters: named(&totals),
        dropped,
        passed,
        entries: EntriesJson {
            allow: count(RULE_ALLOW),
            block: count(RULE_BLOCK),
            ban: count(RULE_BAN),
            crowdsec: count(RULE_CROWDSEC),
            capacity_per_family: capacity::RULES,
        },
        sources_tracked: sources,
        sources_capacity: capacity::SOURCES,
        verified_sources: verified,
        proven,
        protected,
        handshake_proofs: crate::proofs::link_path(&state.pin_dir).exists(),
        answers_for: crate::locals::list(&state.maps)?
            .iter()
            .map(|a| a.to_string())
            .collect(),
        nat_ports: crate::nat::current(&state.maps)?.describe(),
        rates,
        rate_window_s: secs,
        tables,
        unhealthy,
        saved_tcp_syncookies: (host.saved_syncookies >= 0).then_some(host.saved_syncookies),
        saved_tcp_timestamps: (host.saved_timestamps >= 0).then_some(host.saved_timestamps),
        host_settings_since: (host.cookies_since_ns != 0)
            .then(|| crate::clock::rfc3339(crate::clock::to_wall(host.cookies_since_ns))),
        source_nat: [
            (synguard_common::SNAT_V4, "IPv4"),
            (synguard_common::SNAT_V6, "IPv6"),
        ]
        .iter()
        .filter(|(bit, _)| cfg.snat & bit != 0)
        .map(|(_, f)| (*f).to_string())
        .collect(),
        cookie_options: crate::sysctls::describe(host.cookie_opts),
        crowdsec,
    };
    if json {
        return print_json(&out);
    }

    println!("synguard {}", crate::version::LONG);
    println!("state:      {}", out.pin_dir);
    println!(
        "daemon:     {}",
        if out.daemon_running {
            format!("running (pid {})", cfg.daemon_pid)
        } else {
            "NOT RUNNING: the program stays attached with the state below, but nothing logs \
             bans or sweeps expired entries; start `synguard run`"
                .to_string()
        }
    );
    if out.program_build_id != BUILD_ID {
        println!(
            "program:    build {} (this binary has {}: restart `synguard run` to upgrade)",
            out.program_build_id, BUILD_ID
        );
    }
    if out.interfaces.is_empty() {
        println!("interfaces: none attached");
    }
    for i in &out.interfaces {
        println!(
            "interface:  {} (ifindex {}, XDP program id {}){}",
            i.name,
            i.ifindex,
            i.program_id.map_or("?".into(), |p| p.to_string()),
            if i.attack.active {
                format!(
                    ": ATTACK MODE since {}, {} SYN/s now, peak {} SYN/s",
                    i.attack.since.as_deref().unwrap_or("?"),
                    i.attack.syn_rate,
                    i.attack.peak_syn_rate
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "mode:       {}{}",
        settings.get("mode").unwrap_or_default(),
        if settings.mode == crate::config::Mode::Monitor {
            " (decides and counts, drops nothing)"
        } else {
            ""
        }
    );
    println!(
        "config:     {}",
        settings
            .entries()
            .iter()
            .filter(|(k, _)| *k != "mode")
            .map(|(k, v)| format!("{k}={}", if v.is_empty() { "all" } else { v }))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "entries:    {} allowed, {} blocked, {} banned (room for {} entries and as many bans \
         per address family); \
         {} sources metered (room for {})",
        out.entries.allow,
        out.entries.block,
        out.entries.ban,
        capacity::RULES,
        sources,
        capacity::SOURCES
    );
    println!(
        "packets:    {passed} passed, {dropped} dropped, {answered} SYNs answered with cookies; \
         {} sources verified",
        out.verified_sources
    );
    let total: usize = out.proven.values().sum();
    println!(
        "proofs:     {total} sources proven to own their addresses ({}), challenged rather \
         than banned; never banned: {}{}",
        out.proven
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        if out.protected.is_empty() {
            "-".to_string()
        } else {
            out.protected.join(", ")
        },
        if out.handshake_proofs {
            ""
        } else {
            "; no sock_ops program: handshakes prove nothing until a cookie or run's look"
        }
    );
    println!(
        "cookies:    answered in attack mode for SYNs to this machine's {} addresses ({}) \
         with a listener on the port; others (for guests behind a bridge or a route, or a \
         port only a DNAT rule serves) go to the kernel",
        out.answers_for.len(),
        shorten(&out.answers_for, 6)
    );
    match out.nat_ports.as_str() {
        "none" => {}
        "every port" => println!(
            "            NAT rules: every port is left to the kernel (the rules may rewrite \
             any port, or `run` could not read them: see its log)"
        ),
        ports => println!(
            "            NAT rules rewrite ports {ports}: their SYNs are left to the kernel"
        ),
    }
    if out.cookie_options.is_empty() {
        println!(
            "            cookie SYN-ACKs carry the MSS only: window scaling and SACK travel in \
             the timestamp, which needs net.ipv4.tcp_timestamps = 2 (attack mode sets it \
             from 1; 0 is left alone)"
        );
    } else {
        println!(
            "            cookie SYN-ACKs keep what the client asks for: MSS, {}",
            out.cookie_options.join(", ")
        );
    }
    if !out.source_nat.is_empty() {
        println!(
            "            source NAT here ({}): ACKs to ports from {} up with no socket or no \
             valid cookie are left to the kernel (replies to the guests' connections)",
            out.source_nat.join(", "),
            synguard_common::SNAT_LOW_PORT
        );
    }
    match (&out.host_settings_since, out.saved_tcp_syncookies) {
        (Some(since), Some(v)) => println!(
            "sysctl:     net.ipv4.tcp_syncookies = 2 since {since}: the SYN queues ran over in \
             attack mode (was {v}; restored when attack mode ends)"
        ),
        (None, Some(v)) => {
            println!("sysctl:     net.ipv4.tcp_syncookies = 2 (was {v}; being restored)")
        }
        (Some(since), None) => {
            println!("sysctl:     the host is set for SYN cookies from XDP since {since}")
        }
        (None, None) => {}
    }
    if let Some(v) = out.saved_tcp_timestamps {
        println!(
            "sysctl:     net.ipv4.tcp_timestamps = 2 during attack mode (was {v}; restored a \
             minute after)"
        );
    }
    let rows: Vec<Vec<String>> = stat::NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| totals[*i] != 0)
        .map(|(i, n)| {
            let kind = if !stat::is_reason(i) {
                "note"
            } else if i == stat::R_COOKIE_SENT {
                "answer"
            } else if stat::is_drop(i) {
                "drop"
            } else {
                "pass"
            };
            let mut row = vec![
                n.to_string(),
                kind.to_string(),
                totals[i].to_string(),
                format!("{:.0}", out.rates.get(n).copied().unwrap_or(0.0)),
            ];
            for iface in &out.interfaces {
                row.push(iface.counters.get(n).copied().unwrap_or(0).to_string());
            }
            row
        })
        .collect();
    if !rows.is_empty() {
        let mut header = vec!["counter", "verdict", "total", "per second"];
        let names: Vec<String> = out.interfaces.iter().map(|i| i.name.clone()).collect();
        header.extend(names.iter().map(String::as_str));
        println!("\n{}", table(&header, rows));
    }
    println!(
        "\ntables:     {}",
        out.tables
            .iter()
            .map(|t| format!(
                "{} {}/{} ({:.1} %)",
                t.table, t.entries, t.capacity, t.percent
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(l) = &out.crowdsec {
        println!(
            "crowdsec:   {} {}; last pull {}; {} decisions held ({} prefixes, {} left to \
             synguard's own entries); pushed {} bans, {} kept back (share {})",
            l.url,
            if !l.pull {
                "(push only)"
            } else if l.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            l.last_pull.as_deref().unwrap_or("never"),
            l.decisions,
            l.prefixes,
            l.shadowed,
            l.pushed,
            l.kept_back,
            l.share
        );
    }
    if out.unhealthy.is_empty() {
        println!("health:     ok");
    } else {
        for u in &out.unhealthy {
            println!("UNHEALTHY:  {u}");
        }
    }
    Ok(())
}

/// The first `n` items, and how many more.
fn shorten(items: &[String], n: usize) -> String {
    match items.len() {
        0 => "none yet".to_string(),
        len if len <= n => items.join(", "),
        len => format!("{}, and {} more", items[..n].join(", "), len - n),
    }
}
