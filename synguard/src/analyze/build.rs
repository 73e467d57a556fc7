//! From what the engine found to the shared incident report (origin `capture`): the same
//! sections, classification and rendering as `synguard report`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, UNIX_EPOCH},
};

use synguard_common::{capacity, stat};

use super::{
    capture::Outcome,
    engine::{Engine, Flood, SEC, SLOT_NS, Talker, ban_text, is_v4, show_prefix},
};
use crate::{
    config::{Mode, Settings},
    incident::{
        Attack, AttackKind, DropRow, ForgedRow, Peaks, PrefixRow, Report, SourceRow, TimelineEntry,
        Traits, classify,
    },
};

/// Rows in the top sources and top prefixes tables, and hurt clients listed.
const TOP: usize = 10;

pub fn time(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

fn secs(ns: u64) -> f64 {
    ns as f64 / SEC as f64
}

fn endpoint(addr: u128, port: u16) -> String {
    if is_v4(addr) {
        SocketAddr::from((Ipv4Addr::from(addr as u32), port)).to_string()
    } else {
        SocketAddr::from((Ipv6Addr::from(addr), port)).to_string()
    }
}

fn approx(exact: bool) -> &'static str {
    if exact { "" } else { "about " }
}

/// The settings the replay used, as flags (empty for the defaults).
fn settings_text(s: &Settings) -> String {
    let d = Settings::default();
    let changed: Vec<String> = crate::config::KEYS
        .iter()
        .filter(|k| s.get(k.name) != d.get(k.name))
        .map(|k| format!("{}={}", k.name, s.get(k.name).unwrap_or_default()))
        .collect();
    if changed.is_empty() {
        "the default settings".into()
    } else {
        format!("these settings ({})", changed.join(" "))
    }
}

struct Described {
    attack: Attack,
    /// One line for the summary.
    line: String,
}

/// How a source proved it owns its address, if SYNs in its name then went over its limit
/// (so they were most likely forged): it completed handshakes, which only a host that
/// receives what is sent to the address can do. What `run` says live (its challenges).
fn proven_while_flooded(t: &Talker) -> Option<String> {
    (t.completed > 0 && t.challenged > 0).then(|| {
        format!(
            "completed {} handshake{} with the server",
            t.completed,
            if t.completed == 1 { "" } else { "s" }
        )
    })
}

/// The evidence that a source's SYNs were most likely forged (see
/// [`proven_while_flooded`]).
fn forged_why(t: &Talker) -> Option<String> {
    proven_while_flooded(t).map(|proof| {
        format!(
            "it {proof}, yet {} SYNs in its name went over its limit (challenged with cookies, \
             not banned)",
            t.challenged
        )
    })
}

fn describe(e: &Engine, f: &Flood) -> Described {
    let traits = Traits {
        syns: f.syns,
        sources: f.sources,
        top_source: f.top.map(|(k, n)| (e.p.show(k), n)),
        ipv6_syns: f.ipv6_syns,
        completed: Some(f.completed),
        top_forged: f
            .top
            .and_then(|(k, _)| e.talkers.get(&k))
            .and_then(proven_while_flooded),
    };
    let (kind, mut evidence) = classify(&traits);
    let target = f
        .target
        .map_or_else(|| "?".to_string(), |(a, p, _)| endpoint(a, p));
    let secs_long = secs(f.end.saturating_sub(f.start));
    let peak = if f.peak > 0 {
        f.peak
    } else {
        (f.syns as f64 / secs_long.max(secs(SLOT_NS))) as u64
    };
    let forged = matches!(kind, AttackKind::ForgedSources | AttackKind::Ipv6Rotation);
    let spread: Vec<String> = f
        .spread
        .iter()
        .filter(|sp| sp.syns * 100 >= f.syns)
        .map(|sp| {
            format!(
                "{} ({} {})",
                sp.covering,
                sp.subnets,
                if sp.v6 { "/48s" } else { "/24s" }
            )
        })
        .collect();
    let who = match (kind, f.top) {
        (AttackKind::SingleSource, Some((k, n))) => {
            format!("sent by {} ({n} of {} SYNs)", e.p.show(k), f.syns)
        }
        (AttackKind::SpoofedSource, Some((k, n))) => format!(
            "forged in the name of {}, a real client ({n} of {} SYNs)",
            e.p.show(k),
            f.syns
        ),
        _ if forged => format!(
            "forged: {}{} distinct sources{}",
            approx(f.sources_exact),
            f.sources,
            if spread.is_empty() {
                String::new()
            } else {
                format!(" in {}", spread.join(" and "))
            }
        ),
        _ => {
            let named: Vec<String> = f
                .busiest
                .iter()
                .map(|&(k, n)| format!("{} ({n})", e.p.show(k)))
                .collect();
            let busiest = if named.is_empty() {
                String::new()
            } else {
                format!(", the busiest {}", named.join(", "))
            };
            format!("{}{} sources{busiest}", approx(f.sources_exact), f.sources)
        }
    };
    if let Some(a) = f
        .answered
        .filter(|&a| forged && f.sources >= 100 && a * 100 <= f.sources)
    {
        evidence.push(format!(
            "only {a} of the {} sources ever answered the server: real hosts reset a SYN-ACK \
             they did not ask for, forged addresses never answer",
            f.sources
        ));
    }
    if forged {
        evidence.push(format!(
            "forged: {}{} distinct sources, spread over {}",
            approx(f.sources_exact),
            f.sources,
            if spread.is_empty() {
                "no common prefix".into()
            } else {
                spread.join(" and ")
            }
        ));
    }
    if let Some((k, _)) = f.top
        && let Some(t) = e.talkers.get(&k)
        && t.banned_at >= f.start
        && t.banned_at != 0
    {
        evidence.push(format!(
            "the agent would ban {} at {} ({}, {:.0} ms after the flood began): {} of its \
             packets dropped in XDP",
            e.p.show(k),
            time(t.banned_at),
            ban_text(t.ban_syns, t.ban_span),
            secs(t.banned_at.saturating_sub(f.start)) * 1000.0,
            t.dropped
        ));
    }
    if f.bans > 1 || (f.bans == 1 && kind != AttackKind::SingleSource) {
        evidence.push(format!(
            "{} sources would be banned; {} of the SYNs dropped in XDP",
            f.bans, f.dropped
        ));
    }
    match (f.attack_on, f.attack_off) {
        (Some(on), off) => evidence.push(format!(
            "attack mode would start at {} ({} ms into the flood; the detector measured up to \
             {} SYN/s){}: {} SYNs answered with SYN cookies from XDP, never reaching the \
             server's SYN queue",
            time(on),
            on.saturating_sub(f.start) / 1_000_000,
            f.attack_peak,
            match off {
                Some(off) => format!(" and end at {}", time(off)),
                None if f.ongoing => ", still on at the end of the capture".into(),
                None => String::new(),
            },
            f.cookies
        )),
        (None, _) if f.peak < e.p.enter => evidence.push(format!(
            "attack mode would not start: the flood peaked at {} SYN/s over 100 ms, under \
             attack-syn-rate {}",
            f.peak, e.p.enter
        )),
        _ => {}
    }
    evidence.push(format!(
        "peak {peak} SYN/s at {} (SYNs over 100 ms windows, as the agent measures)",
        time(f.peak_at)
    ));
    if f.never_completed > 0 {
        evidence.push(format!(
            "{} handshakes started during it never completed",
            f.never_completed
        ));
    }
    let line = format!(
        "{} on {target} from {} for {}, peak {peak} SYN/s: {who}.",
        capitalize(&match kind {
            AttackKind::ConnectionFlood => kind.label().to_string(),
            _ => format!("{} SYN flood", kind.label()),
        }),
        time(f.start),
        span(f.end.saturating_sub(f.start)),
    );
    Described {
        attack: Attack {
            kind,
            kind_label: kind.label(),
            start: time(f.start),
            end: time(f.end),
            duration_secs: (secs_long * 1000.0).round() / 1000.0,
            target,
            syns: f.syns,
            peak_syn_rate: peak,
            sources: f.sources,
            evidence,
        },
        line,
    }
}

/// `1 source`, `3 sources`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration as people read it: `40 ms`, `1.5 s`.
fn span(ns: u64) -> String {
    if ns < SEC {
        format!("{} ms", ns / 1_000_000)
    } else {
        format!("{:.1} s", secs(ns))
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn verdict(e: &Engine, t: &Talker) -> String {
    let monitor = e.p.settings.mode == Mode::Monitor;
    let mut v = if t.banned_at != 0 {
        format!(
            "would be banned at {} ({}); {} packets {}",
            time(t.banned_at),
            ban_text(t.ban_syns, t.ban_span),
            t.dropped,
            if monitor {
                "counted (monitor mode drops nothing)"
            } else {
                "dropped"
            }
        )
    } else if t.dropped > 0 {
        format!("{} SYNs over its limit dropped", t.dropped)
    } else if t.cookies > 0 {
        format!("{} SYNs answered with SYN cookies (attack mode)", t.cookies)
    } else {
        "passed (within its limit)".to_string()
    };
    if t.completed > 0 {
        let _ = write!(v, "; {} handshakes completed", t.completed);
    } else if !t.answered {
        v.push_str("; never answered the server");
    }
    v
}

pub fn report(e: &Engine, cap: &Outcome, input: &str) -> Report {
    let s = &e.p.settings;
    let first = e.first.unwrap_or(0);
    let last = e.now;
    let c = &e.c;
    let mut summary = Vec::new();
    let mut warnings = cap.warnings.clone();

    if e.first.is_none() {
        summary.push(format!(
            "{input}: a {} capture with no packets{}.",
            cap.format,
            if warnings.is_empty() {
                ""
            } else {
                " that could be read"
            }
        ));
    } else {
        summary.push(format!(
            "{input}: {} packets ({} TCP) over {:.1} s, {} to {} ({}).",
            c.frames,
            c.tcp,
            secs(last - first),
            time(first),
            time(last),
            cap.format
        ));
    }

    let described: Vec<Described> = e.floods.iter().map(|f| describe(e, f)).collect();
    let drops: u64 = stat::REASON_LIST
        .iter()
        .filter(|&&r| stat::is_drop(r))
        .map(|&r| e.agent[r])
        .sum();
    let cookies = e.agent[stat::R_COOKIE_SENT];
    if described.is_empty() {
        if e.first.is_some() {
            summary.push(format!(
                "No SYN flood: the SYN rate peaked at {} SYN/s over 100 ms (attack mode starts at \
                 attack-syn-rate {}), and no source went over syn-rate {}/s with syn-burst {}.",
                e.peak.0, e.p.enter, s.syn_rate, s.syn_burst
            ));
        }
    } else {
        summary.push(format!(
            "{} SYN flood{} found with the agent's own rules ({}):",
            described.len() as u64 + e.floods_dropped,
            if described.len() == 1 { "" } else { "s" },
            settings_text(s)
        ));
        summary.extend(described.iter().take(5).map(|d| d.line.clone()));
        let monitor = s.mode == Mode::Monitor;
        summary.push(format!(
            "The agent would have banned {}, {} {drops} packets in XDP and answered \
             {cookies} SYNs with SYN cookies{}.",
            plural(e.bans, "source", "sources"),
            if monitor {
                "counted (monitor mode) as drops"
            } else {
                "dropped"
            },
            if e.attack_on_at_end() {
                " (attack mode still on at the end of the capture)"
            } else {
                ""
            }
        ));
    }
    if e.first.is_some() {
        summary.push(format!(
            "SYN {}, SYN-ACK {}, RST {} ({} from the server); {} handshakes completed, {} never \
             completed ({} half-open: the server answered, the client never did){}.",
            c.syns,
            c.synacks,
            c.rsts,
            c.rsts_from_server,
            c.completed,
            c.never_completed,
            c.never_acked,
            if c.pending_at_end > 0 {
                format!(
                    ", {} begun in the last second of the capture and still open at its end",
                    c.pending_at_end
                )
            } else {
                String::new()
            }
        ));
    }

    // Impact on the clients that are real.
    let legit: Vec<(&u128, &Talker)> = e.talkers.iter().filter(|(_, t)| t.legitimate()).collect();
    let mut hurt: Vec<(&u128, &Talker)> = legit.iter().copied().filter(|(_, t)| t.hurt()).collect();
    hurt.sort_by_key(|(k, t)| {
        (
            std::cmp::Reverse(t.retrans + t.failed + t.resets + t.http_err),
            **k,
        )
    });
    let mut impact = Vec::new();
    if e.first.is_some() {
        if legit.is_empty() {
            impact.push(
                "No legitimate client was seen (no completed handshake, no retransmitted SYN)."
                    .into(),
            );
        } else {
            let sum =
                |f: fn(&Talker) -> u32| -> u64 { legit.iter().map(|(_, t)| u64::from(f(t))).sum() };
            impact.push(format!(
                "{} (seen completing a handshake or retransmitting a SYN); {} of them {} hurt.",
                plural(
                    legit.len() as u64,
                    "legitimate client",
                    "legitimate clients"
                ),
                hurt.len(),
                if hurt.len() == 1 { "was" } else { "were" }
            ));
            let retrans = sum(|t| t.retrans);
            if retrans > 0 {
                impact.push(format!(
                    "{} retransmitted by legitimate clients: each one a connection attempt that \
                     waited at least 1 s for an answer (3 s, 7 s for the next).",
                    plural(retrans, "SYN", "SYNs")
                ));
            }
            let failed = sum(|t| t.failed);
            if failed > 0 {
                impact.push(format!(
                    "{} by legitimate clients never completed the handshake.",
                    plural(failed, "connection attempt", "connection attempts")
                ));
            }
            let resets = sum(|t| t.resets);
            if resets > 0 {
                impact.push(format!(
                    "{} from the server to legitimate clients.",
                    plural(resets, "reset", "resets")
                ));
            }
            let errors = sum(|t| t.http_err);
            if errors > 0 {
                impact.push(format!(
                    "{} (5xx) to legitimate clients.",
                    plural(errors, "HTTP error response", "HTTP error responses")
                ));
            }
        }
        if !c.http.is_empty() {
            let mut codes: Vec<(&u16, &u64)> = c.http.iter().collect();
            codes.sort();
            let list: Vec<String> = codes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            impact.push(format!(
                "HTTP responses seen (status lines at the start of server segments): {}.",
                list.join(", ")
            ));
        }
        for (k, t) in hurt.iter().take(TOP) {
            let mut parts = Vec::new();
            if t.retrans > 0 {
                parts.push(plural(
                    t.retrans.into(),
                    "retransmitted SYN",
                    "retransmitted SYNs",
                ));
            }
            if t.failed > 0 {
                parts.push(format!(
                    "{} never completed",
                    plural(t.failed.into(), "handshake", "handshakes")
                ));
            }
            if t.resets > 0 {
                parts.push(format!(
                    "{} from the server",
                    plural(t.resets.into(), "reset", "resets")
                ));
            }
            if t.http_err > 0 {
                parts.push(format!(
                    "{} (last {})",
                    plural(t.http_err.into(), "HTTP error", "HTTP errors"),
                    t.last_http_err
                ));
            }
            impact.push(format!(
                "{}: {} ({} completed)",
                e.p.show(**k),
                parts.join(", "),
                plural(t.completed.into(), "handshake", "handshakes")
            ));
        }
        if hurt.len() > TOP {
            impact.push(format!("... and {} more hurt clients.", hurt.len() - TOP));
        }
    }

    // What the agent would have dropped, and how.
    let monitor = s.mode == Mode::Monitor;
    let how = |text: String| {
        if monitor {
            format!("monitor mode: counted, not dropped; enforce would have: {text}")
        } else {
            text
        }
    };
    let mut drop_rows = Vec::new();
    for (reason, text) in [
        (
            stat::R_SYN_LIMITED,
            how(format!(
                "dropped in XDP: over its source's bucket (syn-rate {}/s, syn-burst {}, \
                 sources per /{} and /{}); the source banned for {}",
                s.syn_rate,
                s.syn_burst,
                s.ipv4_prefix,
                s.ipv6_prefix,
                humantime::format_duration(s.ban_for)
            )),
        ),
        (
            stat::R_BANNED,
            how("dropped in XDP: every packet from a banned source while the ban lasts".into()),
        ),
        (
            stat::R_INVALID_FLAGS,
            how("dropped in XDP: SYN together with FIN or RST".into()),
        ),
        (
            stat::R_COOKIE_SENT,
            if monitor {
                "monitor mode: counted, not answered".to_string()
            } else {
                "answered from XDP with a SYN cookie (attack mode): never reached the server's \
                 SYN queue; real clients complete the handshake"
                    .into()
            },
        ),
        (
            stat::R_SYN_VERIFIED,
            "passed in attack mode: the source had completed a handshake (verified)".into(),
        ),
        (
            stat::R_SYN_UNTRACKED,
            "passed unmetered: the agent's sources table had no free slot for the source".into(),
        ),
    ] {
        if e.agent[reason] > 0 {
            drop_rows.push(DropRow {
                reason: stat::NAMES[reason].into(),
                packets: e.agent[reason],
                how: text,
            });
        }
    }

    // Top sources and prefixes.
    let mut top: Vec<(&u128, &Talker)> = e.talkers.iter().collect();
    top.sort_by_key(|(k, t)| (std::cmp::Reverse(t.syns), **k));
    let top_sources = top
        .iter()
        .take(TOP)
        .map(|(k, t)| {
            let ban_rate = t.ban_syns * SEC / t.ban_span.max(1);
            SourceRow {
                source: e.p.show(**k),
                syns: u64::from(t.syns),
                peak_syn_rate: u64::from(t.peak).max(ban_rate),
                verdict: verdict(e, t),
            }
        })
        .collect();
    let mut forged: Vec<(&u128, &Talker)> = e
        .talkers
        .iter()
        .filter(|(_, t)| forged_why(t).is_some())
        .collect();
    forged.sort_by_key(|(k, t)| (std::cmp::Reverse(t.challenged), **k));
    let forged = forged
        .iter()
        .take(TOP)
        .filter_map(|(k, t)| {
            Some(ForgedRow {
                source: e.p.show(**k),
                why: forged_why(t)?,
            })
        })
        .collect();
    let mut nets: Vec<(&u128, &(u64, u64))> = e.subnets.iter().collect();
    nets.sort_by_key(|(k, v)| (std::cmp::Reverse(v.0), **k));
    let top_prefixes = nets
        .iter()
        .take(TOP)
        .map(|(k, (syns, sources))| {
            let v6 = !is_v4(**k);
            PrefixRow {
                prefix: show_prefix(**k, v6, if v6 { 48 } else { 24 }),
                sources: *sources,
                syns: *syns,
            }
        })
        .collect();

    // The chart, and the peaks.
    // Peaks over the detector's 100 ms windows, as the agent measures its rates.
    let series = e.series.points();
    let peaks = Peaks {
        syn_rate: e.peak.0,
        syn_rate_at: (e.peak.0 > 0).then(|| time(e.peak.1)),
        syn_rate_how: if e.peak.0 > 0 {
            "the capture's busiest 100 ms".into()
        } else {
            String::new()
        },
        drop_rate: e.drop_peak.0,
        drop_rate_at: (e.drop_peak.0 > 0).then(|| time(e.drop_peak.1)),
    };

    // Timeline.
    let mut events: Vec<(u64, String)> = e.timeline.clone();
    if e.bans > 10 {
        events.push((
            last,
            format!(
                "{} more sources would have been banned by then",
                e.bans - 10
            ),
        ));
    }
    if let Some((at, n)) = e.table_full {
        events.push((
            at,
            format!(
                "{n} sources spending their bursts or banned at once: the agent's sources \
                 table ({} slots) would have no room, new sources pass unmetered until buckets \
                 refill",
                capacity::SOURCES
            ),
        ));
    }
    if e.first.is_some() {
        events.push((first, "capture starts".into()));
        events.push((last, "capture ends".into()));
    }
    events.sort_by_key(|(t, _)| *t);
    let timeline = events
        .into_iter()
        .map(|(t, what)| TimelineEntry { t: time(t), what })
        .collect();

    // Recommendations.
    let mut rec = Vec::new();
    for (f, d) in e.floods.iter().zip(&described) {
        match d.attack.kind {
            AttackKind::SingleSource if f.bans > 0 => rec.push(format!(
                "synguard with {} stops the {} flood: it bans the flooding source within \
                 milliseconds and drops the rest in XDP (`synguard run --iface IF`).",
                settings_text(s),
                d.attack.start
            )),
            AttackKind::SpoofedSource => rec.push(format!(
                "Do not block the address the {} flood carries: it belongs to a real client \
                 (it completed handshakes), and a block would cut it off, which is what the \
                 flood is after. synguard answers the SYNs in its name with SYN cookies, which \
                 only that client completes; the packets came from elsewhere, and the network \
                 that delivers them can trace where they enter.",
                d.attack.start
            )),
            AttackKind::ConnectionFlood => rec.push(
                "A connection flood completes its handshakes, so SYN limits and cookies do not \
                 stop it: use the web server's own limits (nginx `limit_conn`, \
                 `client_header_timeout`)."
                    .into(),
            ),
            _ if f.attack_on.is_some() => rec.push(format!(
                "Per-source limits cannot stop forged or widely spread sources; attack mode \
                 would have answered {} of the {} flood's SYNs with SYN cookies from XDP. Keep \
                 `syn-cookies auto`.",
                f.cookies, d.attack.start
            )),
            _ => rec.push(format!(
                "The {} flood peaked at {} SYN/s, under attack-syn-rate {}: attack mode would \
                 not start. If the server was hurt by it, lower the threshold \
                 (`synguard config set attack-syn-rate {}`).",
                d.attack.start,
                f.peak,
                e.p.enter,
                (f.peak / 2).max(100)
            )),
        }
    }
    let banned_legit: Vec<String> = legit
        .iter()
        .filter(|(_, t)| t.banned_at != 0)
        .take(5)
        .map(|(k, _)| e.p.show(**k))
        .collect();
    if !banned_legit.is_empty() {
        rec.push(format!(
            "Legitimate clients would be banned too ({}): allowlist them (`synguard allow add \
             PREFIX`) or raise syn-rate / syn-burst above their rate.",
            banned_legit.join(", ")
        ));
    }
    if e.table_full.is_some() {
        rec.push(
            "The agent's sources table would fill under this flood: new sources then pass \
             unmetered (attack mode still answers them with cookies)."
                .into(),
        );
    }
    if rec.is_empty() && e.first.is_some() {
        rec.push("No action needed: nothing in this capture calls for other thresholds.".into());
    }

    // What could not be read, or is approximate.
    if c.truncated > 0 {
        warnings.push(format!(
            "{} packets had their IP or TCP header cut short (snap length or a damaged \
             packet); skipped",
            c.truncated
        ));
    }
    if c.unsupported > 0 {
        warnings.push(format!(
            "{} packets of a link type this reader does not know (Ethernet, Linux cooked, raw \
             IP and loopback are read); skipped",
            c.unsupported
        ));
    }
    if e.talker_evictions > 0 {
        warnings.push(format!(
            "more than {} sources: {} quiet ones (at most {} SYNs each, nothing else notable) \
             were forgotten to bound memory; per-source counts may be short by that much, \
             distinct counts are estimates",
            super::engine::TALKERS,
            e.talker_evictions,
            e.talker_evicted_max
        ));
    }
    if c.pending_rotations_early > 0 {
        warnings.push(format!(
            "handshakes in progress were forgotten early {} times under the flood (more than \
             {} within 10 s): late SYN retransmissions may count as new attempts",
            c.pending_rotations_early,
            super::engine::PENDING
        ));
    }
    if e.subnets_full > 0 {
        warnings.push(format!(
            "{} SYNs came from subnets beyond the {} tracked for the top prefixes",
            e.subnets_full,
            super::engine::SUBNETS
        ));
    }
    if e.floods_dropped > 0 {
        warnings.push(format!(
            "{} more floods were found than the {} described",
            e.floods_dropped,
            super::engine::MAX_EPISODES
        ));
    }
    if e.events_dropped > 0 {
        warnings.push(format!(
            "{} timeline entries past the first {} are left out",
            e.events_dropped,
            super::engine::MAX_EVENTS
        ));
    }
    if e.targets_full > 0 {
        warnings.push(format!(
            "{} SYNs went to destinations beyond the first {} (address, port) tracked (a scan, \
             or a flood to random ports): their replies are not told apart from clients' \
             packets",
            e.targets_full,
            super::engine::TARGETS
        ));
    }

    Report {
        origin: "capture",
        input: input.to_string(),
        from: e.first.map(time),
        to: e.first.map(|_| time(last)),
        summary: summary.into_iter().chain(impact.first().cloned()).collect(),
        attacks: described.into_iter().map(|d| d.attack).collect(),
        timeline,
        top_sources,
        forged,
        top_prefixes,
        peaks,
        drops: drop_rows,
        impact,
        actions: vec!["none: this is an analysis of a capture; nothing was changed".into()],
        recommendations: rec,
        warnings,
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::decode::{SYN, Seg, v4};

    #[test]
    fn a_flood_from_many_real_sources_names_the_busiest() {
        let mut e = Engine::new(&Settings::default());
        let t0 = 1_700_000_000 * SEC;
        // 500 sources in 203.0.113.0/24 and 198.51.100.0/24, 2 s at 10 SYN/s each (one
        // more for the first ten): 5000 SYN/s, none completing, each under its bucket.
        for i in 0..20u64 {
            for j in 0..500u64 {
                let src = if j < 250 {
                    v4([203, 0, 113, j as u8])
                } else {
                    v4([198, 51, 100, (j - 250) as u8])
                };
                let extra = u64::from(j < 10 && i == 0);
                for k in 0..=extra {
                    let s = Seg {
                        v6: false,
                        src,
                        dst: v4([192, 0, 2, 1]),
                        sport: 1024 + (i * 2 + k) as u16,
                        dport: 80,
                        flags: SYN,
                        seq: (i * 2 + k) as u32,
                        ack: 0,
                        payload: &[],
                    };
                    let now = e.tick(t0 + i * SEC / 10 + j * 100_000 + k * 1000);
                    e.segment(now, &s);
                }
            }
        }
        e.finish();
        let r = report(&e, &Outcome::default(), "test");
        assert_eq!(r.attacks.len(), 1, "{:?}", r.summary);
        assert_eq!(
            r.attacks[0].kind,
            AttackKind::Distributed,
            "{:?}",
            r.attacks
        );
        let line = &r.summary[2];
        assert!(
            line.contains("500 sources, the busiest 203.0.113.0 (21), 203.0.113.1 (21)"),
            "{line}"
        );
    }
}
