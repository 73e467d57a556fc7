//! `synguard explain ADDR`: why an address is passed, limited or blocked, from the same
//! state the kernel decides with.

use std::net::IpAddr;

use serde::Serialize;
use synguard_common::{RULE_BAN, RULE_CROWDSEC, gcra};

use super::{State, print_json, time_human, time_json};
use crate::{
    clock,
    config::{Mode, Settings},
    net::{aggregate, parse_addr, source_key},
    rules::{self, Kind, RuleEntry},
    verdict::{self, Verdict},
};

#[derive(Serialize)]
struct EntryJson {
    prefix: String,
    kind: Kind,
    created: Option<String>,
    expires: Option<String>,
    expired: bool,
    hits: u64,
    comment: String,
    rate_at_ban: Option<u64>,
}

#[derive(Serialize)]
struct BucketJson {
    /// The source as metered: the address aggregated to ipv4-prefix / ipv6-prefix.
    source: String,
    tracked: bool,
    tokens: u64,
    burst: u32,
    rate: u32,
    syns: u64,
    limited: u64,
    first_seen: Option<String>,
    last_seen: Option<String>,
    full_in_ms: u64,
}

#[derive(Serialize)]
struct ProofJson {
    /// Whether its source has proven it owns its address (see `synguard_common::Proof`).
    proven: bool,
    /// How, in words.
    how: Option<&'static str>,
    since: Option<String>,
    /// `None` while proven for ever (the gateway, the resolvers).
    until: Option<String>,
}

#[derive(Serialize)]
struct ExplainJson {
    address: String,
    /// `allowed`, `blocked`, `banned`, `limited` (bucket empty), `challenged` (bucket
    /// empty, but proven), `metered` (tracked, within its limit) or `new` (never seen).
    verdict: &'static str,
    summary: String,
    entry: Option<EntryJson>,
    matches: Vec<EntryJson>,
    bucket: BucketJson,
    proof: ProofJson,
    mode: Mode,
    port_note: Option<String>,
    /// What attack mode does with this source's SYNs, by destination (see
    /// `synguard::locals`).
    attack_note: String,
}

fn entry_json(e: &RuleEntry, now: u64) -> EntryJson {
    EntryJson {
        prefix: e.net.to_string(),
        kind: e.kind(),
        created: time_json(e.rule.created_ns),
        expires: time_json(e.rule.expires_ns),
        expired: e.rule.expired(now),
        hits: e.rule.hits,
        comment: e.comment(),
        rate_at_ban: (e.rule.kind == RULE_BAN).then_some(e.rule.rate),
    }
}

fn bucket(state: &State, addr: IpAddr, s: &Settings, now: u64) -> anyhow::Result<BucketJson> {
    let cfg = s.to_kernel(0);
    let source = aggregate(addr, s.ipv4_prefix, s.ipv6_prefix);
    let key = source_key(addr, s.ipv4_prefix, s.ipv6_prefix);
    Ok(match crate::sources::get(&state.maps, &key, now)? {
        Some(b) => BucketJson {
            source: source.to_string(),
            tracked: true,
            tokens: gcra::tokens(b.tat_ns, now, cfg.syn_interval_ns, cfg.syn_tolerance_ns)
                .min(u64::from(s.syn_burst)),
            burst: s.syn_burst,
            rate: s.syn_rate,
            syns: b.syns,
            limited: b.limited,
            first_seen: time_json(b.first_seen_ns),
            last_seen: time_json(b.last_seen_ns),
            full_in_ms: gcra::refill_ns(b.tat_ns, now) / 1_000_000,
        },
        None => BucketJson {
            source: source.to_string(),
            tracked: false,
            tokens: u64::from(s.syn_burst),
            burst: s.syn_burst,
            rate: s.syn_rate,
            syns: 0,
            limited: 0,
            first_seen: None,
            last_seen: None,
            full_in_ms: 0,
        },
    })
}

pub fn explain(state: &State, text: &str, json: bool) -> anyhow::Result<()> {
    let addr = parse_addr(text)?;
    let cfg = state.maps.read_config()?;
    let settings = Settings::from_kernel(&cfg);
    let attack_on = state.attack_on()?;
    let now = clock::monotonic_ns();
    let all = rules::list(&state.maps)?;
    let matches = rules::matching(&all, addr);
    let b = bucket(state, addr, &settings, now)?;
    let key = source_key(addr, settings.ipv4_prefix, settings.ipv6_prefix);
    let proof = crate::proofs::get(&state.maps, &key, now)?;
    let proof = ProofJson {
        proven: proof.is_some(),
        how: proof.map(|p| crate::proofs::how(p.how)),
        since: proof.and_then(|p| time_json(p.since_ns)),
        until: proof
            .filter(|p| p.until_ns != synguard_common::PROOF_FOREVER)
            .and_then(|p| time_json(p.until_ns)),
    };

    let src = verdict::Source {
        tracked: b.tracked,
        empty: b.tracked && b.tokens == 0,
        proven: proof.proven,
    };
    let cookies = verdict::cookies_active(
        cfg.mode == synguard_common::MODE_MONITOR,
        cfg.syn_cookies,
        || attack_on,
    );
    let decided = verdict::of(&all, addr, now, src, cookies);
    let entry = match &decided {
        Verdict::Allowed(e)
        | Verdict::AllowedInside { block: e, .. }
        | Verdict::Banned(e)
        | Verdict::Blocked(e) => Some(e),
        _ => None,
    };
    let (word, summary) = render(&decided, &b, &proof, &settings);
    let port_note = (!settings.ports.is_all()).then(|| {
        format!(
            "only SYNs to ports {} are metered; other ports pass unmetered",
            settings.ports
        )
    });
    let locals = crate::locals::list(&state.maps)?;
    let nat = crate::nat::current(&state.maps)?;
    let attack_note = format!(
        "in attack mode its SYNs to this machine's {} addresses are answered with SYN cookies \
         when a host socket listens on the port; its SYNs to any other address (guests \
         behind a bridge or a route) or to a port only a DNAT rule serves go to the kernel{}",
        locals.len(),
        if nat.is_empty() {
            String::new()
        } else {
            format!(
                ", and so do its SYNs to ports NAT rules rewrite ({})",
                nat.describe()
            )
        }
    );
    let out = ExplainJson {
        address: addr.to_string(),
        verdict: word,
        summary: summary.clone(),
        entry: entry.map(|e| entry_json(e, now)),
        matches: matches.iter().map(|e| entry_json(e, now)).collect(),
        bucket: b,
        proof,
        mode: settings.mode,
        port_note,
        attack_note,
    };
    if json {
        return print_json(&out);
    }
    println!("{addr}: {summary}");
    if out.bucket.tracked {
        println!(
            "  source {}: {} of {} SYNs left, {} SYNs seen, {} over the limit, first seen {}, \
             last seen {}",
            out.bucket.source,
            out.bucket.tokens,
            out.bucket.burst,
            out.bucket.syns,
            out.bucket.limited,
            out.bucket.first_seen.as_deref().unwrap_or("-"),
            out.bucket.last_seen.as_deref().unwrap_or("-"),
        );
    }
    if out.proof.proven {
        println!(
            "  proven: it {} (since {}, {}): over its limit it is challenged with SYN cookies, \
             never banned",
            out.proof.how.unwrap_or("proved it owns its address"),
            out.proof.since.as_deref().unwrap_or("-"),
            out.proof
                .until
                .as_ref()
                .map_or("kept while it is one".to_string(), |u| format!("until {u}")),
        );
    } else {
        println!(
            "  unproven: it has completed no handshake with this machine within verified-for \
             ({}): over its limit it is banned, which drops its new connections to protected \
             ports and nothing else",
            crate::config::format_duration(settings.verified_for)
        );
    }
    for e in matches.iter().skip(usize::from(entry.is_some())) {
        println!(
            "  also matches {} ({:?}{}){}",
            e.net,
            e.kind(),
            if e.rule.expired(now) { ", expired" } else { "" },
            paren(&e.comment())
        );
    }
    println!("  {}", out.attack_note);
    if let Some(n) = &out.port_note {
        println!("  {n}");
    }
    if settings.mode == Mode::Monitor {
        println!("  mode is monitor: drops are decided and counted but not applied");
    }
    Ok(())
}

fn paren(c: &str) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" ({c})")
    }
}

/// The verdict's word (the JSON `verdict`) and its sentence.
fn render(
    v: &Verdict,
    b: &BucketJson,
    proof: &ProofJson,
    settings: &Settings,
) -> (&'static str, String) {
    match v {
        Verdict::Allowed(e) => (
            "allowed",
            format!(
                "ALLOWED by the allowlist entry {}{}: never limited or blocked",
                e.net,
                paren(&e.comment())
            ),
        ),
        Verdict::AllowedInside { block, allow } => (
            "allowed",
            format!(
                "ALLOWED: it is inside the blocked {}, but that block lies inside the \
                 allowlisted {}, and the allowlist always wins",
                block.net,
                allow
                    .as_ref()
                    .map_or_else(|| "an allow entry".into(), |a| a.net.to_string())
            ),
        ),
        Verdict::Banned(e) => (
            "banned",
            format!(
                "BANNED automatically as {}: it sent {}, over syn-rate {}/s with \
                 syn-burst {}; since {}, until {}; {} SYNs dropped since (its connections \
                 and other traffic pass)",
                e.net,
                crate::daemon::describe_rate(e.rule.syns, e.rule.rate),
                settings.syn_rate,
                settings.syn_burst,
                time_human(e.rule.created_ns, "-"),
                time_human(e.rule.expires_ns, "removed"),
                e.rule.hits
            ),
        ),
        Verdict::Blocked(e) if e.rule.kind == RULE_CROWDSEC => {
            let (origin, scenario) = e.crowdsec().unwrap_or_default();
            (
                "blocked",
                format!(
                    "BLOCKED by a CrowdSec decision on {} (origin {origin}, scenario \
                     {scenario:?}), pulled from its Local API; since {}, until {}; {} \
                     packets dropped (every packet of the source, as CrowdSec's bouncers \
                     do)",
                    e.net,
                    time_human(e.rule.created_ns, "-"),
                    time_human(e.rule.expires_ns, "removed"),
                    e.rule.hits
                ),
            )
        }
        Verdict::Blocked(e) => (
            "blocked",
            format!(
                "BLOCKED by the manual entry {}{}; since {}, until {}; {} packets dropped",
                e.net,
                paren(&e.comment()),
                time_human(e.rule.created_ns, "-"),
                time_human(e.rule.expires_ns, "removed"),
                e.rule.hits
            ),
        ),
        Verdict::Challenged => (
            "challenged",
            format!(
                "CHALLENGED: its source {} has used up its bucket ({} SYN/s, burst {}), but it \
                 {}: a flood carrying its address is most likely forged, so its SYNs are \
                 answered with SYN cookies (only its owner completes them) and it is never \
                 banned",
                b.source,
                settings.syn_rate,
                settings.syn_burst,
                proof.how.unwrap_or("proved it owns its address"),
            ),
        ),
        Verdict::Limited => (
            "limited",
            format!(
                "LIMITED: its source {} has used up its bucket ({} SYN/s, burst {}); its next \
                 SYN is dropped{} (the bucket is full again in {} ms if it stops)",
                b.source,
                settings.syn_rate,
                settings.syn_burst,
                if settings.ban_for.is_zero() {
                    ""
                } else {
                    " and the source banned"
                },
                b.full_in_ms
            ),
        ),
        Verdict::Verified | Verdict::Cookie | Verdict::Passing => {
            let attack = match v {
                Verdict::Verified => {
                    "; attack mode is on, and it is verified: its SYNs go straight to the \
                     server"
                }
                Verdict::Cookie => {
                    "; attack mode is on: its SYNs are answered with SYN cookies from XDP \
                     until it completes a handshake"
                }
                _ => "",
            };
            if b.tracked {
                (
                    "metered",
                    format!(
                        "PASSED, metered: its source {} may open {} more SYNs at once ({} of \
                         {}), then {} a second{attack}",
                        b.source, b.tokens, b.tokens, b.burst, b.rate
                    ),
                )
            } else {
                (
                    "new",
                    format!(
                        "PASSED: no state for its source {} yet; its first {} SYNs pass at \
                         once, then {} a second{attack}",
                        b.source, settings.syn_burst, settings.syn_rate
                    ),
                )
            }
        }
    }
}
