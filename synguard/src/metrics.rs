//! `run --metrics ADDR:PORT`: Prometheus text exposition of the pinned state.
//!
//! Everything is read from the kernel's maps at scrape time (counters per verdict and
//! interface, attack mode, table fill levels), plus the per-second rates of the daemon's
//! latest sample. The format is written here directly: there are no in-process metrics
//! to keep, so a client library's registry would add nothing but dependencies; the
//! output is checked with `promtool check metrics` in the tests.
//!
//! The HTTP side is a minimal responder for `GET /metrics` (and `HEAD`): one short
//! request per connection, answered and closed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use synguard_common::{RULE_ALLOW, RULE_BAN, RULE_BLOCK, RULE_CROWDSEC, capacity, stat};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{bpf::Maps, pins};

/// Per-second rates of the daemon's latest sample, by interface and counter name.
pub type Rates = Arc<Mutex<BTreeMap<String, BTreeMap<String, f64>>>>;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.0, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.0, " {}", value as i64);
        } else {
            let _ = writeln!(self.0, " {value}");
        }
    }
}

/// The exposition text for the state pinned under `pin_dir`.
pub fn render(pin_dir: &Path, state_dir: &Path, rates: &Rates) -> anyhow::Result<String> {
    let maps = Maps::from_pins(pin_dir)?;
    let ifaces = pins::pinned_links(pin_dir);
    let mut o = Out(String::new());
    let slot = capacity::stats_slot;
    let per_iface: Vec<(String, [u64; stat::COUNT], synguard_common::IfState)> = ifaces
        .iter()
        .map(|(idx, name, _)| {
            Ok((
                name.clone(),
                maps.counters(slot(*idx))?,
                maps.ifstate(slot(*idx))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    o.family(
        "synguard_packets_total",
        "counter",
        "Packets the XDP program decided on, by interface, verdict and action taken.",
    );
    for (name, c, _) in &per_iface {
        for &r in &stat::REASON_LIST {
            let action = if r == stat::R_COOKIE_SENT {
                "answer"
            } else if stat::is_drop(r) {
                "drop"
            } else {
                "pass"
            };
            o.sample(
                "synguard_packets_total",
                &[
                    ("interface", name),
                    ("verdict", stat::NAMES[r]),
                    ("action", action),
                ],
                c[r] as f64,
            );
        }
    }
    o.family(
        "synguard_events_total",
        "counter",
        "Things the XDP program noted besides verdicts (bans, SYNs seen, table full, ...).",
    );
    for (name, c, _) in &per_iface {
        for i in (0..stat::COUNT).filter(|i| !stat::is_reason(*i)) {
            o.sample(
                "synguard_events_total",
                &[("interface", name), ("event", stat::NAMES[i])],
                c[i] as f64,
            );
        }
    }
    o.family(
        "synguard_attack_mode",
        "gauge",
        "1 while the interface is in attack mode (SYN cookies answered from XDP).",
    );
    for (name, _, st) in &per_iface {
        o.sample(
            "synguard_attack_mode",
            &[("interface", name)],
            f64::from(st.attack),
        );
    }
    o.family(
        "synguard_syn_rate",
        "gauge",
        "Total SYNs per second on the interface, as the attack detector last measured it.",
    );
    let now = crate::clock::monotonic_ns();
    for (name, _, st) in &per_iface {
        let fresh = now.saturating_sub(st.rate_ns) <= synguard_common::ATTACK_STALE_NS;
        o.sample(
            "synguard_syn_rate",
            &[("interface", name)],
            if fresh { st.rate as f64 } else { 0.0 },
        );
    }
    if let Ok(r) = rates.lock()
        && !r.is_empty()
    {
        o.family(
            "synguard_rate",
            "gauge",
            "Per-second rate of each counter over the daemon's latest sample interval.",
        );
        for (iface, counters) in r.iter() {
            for (counter, v) in counters {
                o.sample(
                    "synguard_rate",
                    &[("interface", iface), ("counter", counter)],
                    *v,
                );
            }
        }
    }

    let (mut allow, mut block, mut ban, mut crowdsec) = (0u64, 0u64, 0u64, 0u64);
    // Entries per trie: [rules_v4, rules_v6, bans_v4, bans_v6].
    let mut count = [0u64; 4];
    for (i, trie) in [&maps.rules_v4, &maps.bans_v4].into_iter().enumerate() {
        for k in trie.keys().flatten() {
            count[2 * i] += 1;
            match k.data()[synguard_common::RULE_KEY_KIND_V4] {
                RULE_ALLOW => allow += 1,
                RULE_BLOCK => block += 1,
                RULE_BAN => ban += 1,
                RULE_CROWDSEC => crowdsec += 1,
                _ => {}
            }
        }
    }
    for (i, trie) in [&maps.rules_v6, &maps.bans_v6].into_iter().enumerate() {
        for k in trie.keys().flatten() {
            count[2 * i + 1] += 1;
            match k.data()[synguard_common::RULE_KEY_KIND_V6] {
                RULE_ALLOW => allow += 1,
                RULE_BLOCK => block += 1,
                RULE_BAN => ban += 1,
                RULE_CROWDSEC => crowdsec += 1,
                _ => {}
            }
        }
    }
    o.family(
        "synguard_rules",
        "gauge",
        "Entries in the allow and block lists, by kind (ban: automatic, block: manual, \
         crowdsec: decisions pulled from CrowdSec's Local API).",
    );
    for (kind, n) in [
        ("allow", allow),
        ("block", block),
        ("ban", ban),
        ("crowdsec", crowdsec),
    ] {
        o.sample("synguard_rules", &[("kind", kind)], n as f64);
    }
    let sources = crate::sources::for_each(&maps, crate::clock::monotonic_ns(), |_, _| ())? as f64;
    let verified = crate::batch::for_each(&maps.verified, 512, |_, _| ())? as f64;
    o.family(
        "synguard_verified_sources",
        "gauge",
        "Sources that completed a cookie handshake and skip the challenge.",
    );
    o.sample("synguard_verified_sources", &[], verified);
    o.family("synguard_map_entries", "gauge", "Entries in each table.");
    o.family_only_samples(&[
        ("rules_v4", count[0] as f64),
        ("rules_v6", count[1] as f64),
        ("bans_v4", count[2] as f64),
        ("bans_v6", count[3] as f64),
        ("sources", sources),
        ("verified", verified),
    ]);
    o.family(
        "synguard_map_capacity",
        "gauge",
        "Capacity of each table, in entries.",
    );
    for (map, cap) in [
        ("rules_v4", capacity::RULES),
        ("rules_v6", capacity::RULES),
        ("bans_v4", capacity::RULES),
        ("bans_v6", capacity::RULES),
        ("sources", capacity::SOURCES),
        ("verified", capacity::VERIFIED),
    ] {
        o.sample("synguard_map_capacity", &[("map", map)], f64::from(cap));
    }
    if let Some(l) = crate::crowdsec::read_link(state_dir) {
        let gauges: [(&str, &str, f64); 7] = [
            (
                "synguard_crowdsec_reachable",
                "Whether the last pull from CrowdSec's Local API succeeded (1) or not (0).",
                if l.reachable { 1.0 } else { 0.0 },
            ),
            (
                "synguard_crowdsec_failures",
                "Failed attempts in a row to reach CrowdSec's Local API.",
                f64::from(l.failures),
            ),
            (
                "synguard_crowdsec_last_pull_timestamp_seconds",
                "When decisions were last pulled from CrowdSec's Local API (0: never).",
                l.last_pull_unix.unwrap_or(0) as f64,
            ),
            (
                "synguard_crowdsec_decisions",
                "CrowdSec decisions held (and enforced unless synguard has its own entry).",
                l.decisions as f64,
            ),
            (
                "synguard_crowdsec_not_enforced_full",
                "CrowdSec decisions held but not enforced: the blocklist has no room left.",
                l.not_enforced_full as f64,
            ),
            (
                "synguard_crowdsec_pushed",
                "synguard's bans pushed to CrowdSec's Local API since run started.",
                l.pushed as f64,
            ),
            (
                "synguard_crowdsec_kept_back",
                "synguard's bans crowdsec-share kept from CrowdSec since run started.",
                l.kept_back as f64,
            ),
        ];
        for (name, help, v) in gauges {
            o.family(name, "gauge", help);
            o.sample(name, &[], v);
        }
    }
    o.family(
        "synguard_info",
        "gauge",
        "Version and eBPF program build of this synguard.",
    );
    o.sample(
        "synguard_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("program", crate::bpf::BUILD_ID),
        ],
        1.0,
    );
    Ok(o.0)
}

impl Out {
    fn family_only_samples(&mut self, entries: &[(&str, f64)]) {
        for (map, v) in entries {
            self.sample("synguard_map_entries", &[("map", map)], *v);
        }
    }
}

/// Bind the metrics listener (before anything else starts, so a bad address fails
/// `run` at once).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        crate::error::usage(format!(
            "cannot serve metrics on {addr}: {e} (choose another --metrics ADDR:PORT)"
        ))
    })
}

/// Connections served at once; more wait in the kernel's backlog, where a scraper's
/// connect times out rather than the daemon running out of descriptors.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection may take to send its request, and to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve `/metrics` until the task is dropped. Bounded: at most [`MAX_CONNECTIONS`]
/// connections at once, each given [`IO_TIMEOUT`] to ask and to read, one rendering at a
/// time (it walks the maps; scrapers asking together share the work's cost, not multiply
/// it), and a failing `accept` (out of descriptors, say) is retried after a pause rather
/// than at once in a loop.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf, state_dir: PathBuf, rates: Rates) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let render_lock = Arc::new(tokio::sync::Mutex::new(()));
    let mut accept_errors = 0u32;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => {
                accept_errors = 0;
                sock
            }
            Err(e) => {
                accept_errors += 1;
                if accept_errors == 1 {
                    log::warn!("metrics: accepting a connection: {e}; pausing");
                }
                let pause = 10u64 << accept_errors.min(7);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        let pin_dir = pin_dir.clone();
        let state_dir = state_dir.clone();
        let rates = rates.clone();
        let render_lock = render_lock.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(IO_TIMEOUT, async {
                while n < buf.len() {
                    let m = sock.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                std::io::Result::Ok(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body, ctype) = if !matches!(method, "GET" | "HEAD") {
                (
                    "405 Method Not Allowed",
                    "only GET\n".to_string(),
                    "text/plain",
                )
            } else if path == "/metrics" || path.starts_with("/metrics?") {
                let _rendering = render_lock.lock().await;
                let p = pin_dir.clone();
                let s = state_dir.clone();
                let r = rates.clone();
                match tokio::task::spawn_blocking(move || render(&p, &s, &r)).await {
                    Ok(Ok(text)) => ("200 OK", text, "text/plain; version=0.0.4; charset=utf-8"),
                    Ok(Err(e)) => (
                        "500 Internal Server Error",
                        format!("{e:#}\n"),
                        "text/plain",
                    ),
                    Err(e) => ("500 Internal Server Error", format!("{e}\n"), "text/plain"),
                }
            } else {
                (
                    "404 Not Found",
                    "metrics are at /metrics\n".to_string(),
                    "text/plain",
                )
            };
            let mut resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method != "HEAD" {
                resp.push_str(&body);
            }
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            })
            .await;
        });
    }
}
