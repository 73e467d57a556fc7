//! `synguard block list|add|del` and `synguard allow list|add|del`.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::Serialize;
use synguard_common::{
    ACTION_PASS, RULE_ALLOW, RULE_BAN, RULE_BLOCK, RULE_COMMENT_MAX, RULE_CROWDSEC,
};

use super::{State, print_json, table, time_human, time_json};
use crate::{
    clock,
    config::{format_duration, parse_duration},
    error::usage,
    net::{covers, parse_addr, parse_cidr},
    rules::{self, Kind, RuleEntry},
};

#[derive(Serialize)]
struct BlockJson {
    prefix: String,
    reason: Kind,
    /// SYNs seen from the source in its last rate window when it was banned.
    syns: Option<u64>,
    /// Its SYN rate per second when it was banned.
    rate: Option<u64>,
    first_seen: Option<String>,
    expires: Option<String>,
    expires_in_s: Option<u64>,
    hits: u64,
    comment: String,
    /// `drop`, or `pass` when an allow entry covers it.
    effective: &'static str,
    allowed_by: Option<String>,
    /// For a ban: whether its source has proven it owns its address (`proven`, `unproven`;
    /// a ban is only ever made for an unproven source, and `run` lifts it once the source
    /// proves itself). What a ban drops: its SYNs to protected ports, nothing else.
    proof: Option<&'static str>,
    /// For a CrowdSec decision (`reason` `crowdsec`): who made it (`cscli`, `crowdsec`,
    /// `CAPI`, `synguard`, ...) and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scenario: Option<String>,
}

pub(super) fn sorted(mut entries: Vec<RuleEntry>) -> Vec<RuleEntry> {
    entries.sort_by(|a, b| {
        (a.net.addr(), a.net.prefix_len()).cmp(&(b.net.addr(), b.net.prefix_len()))
    });
    entries
}

pub fn block_list(state: &State, json: bool) -> anyhow::Result<()> {
    let all = rules::list(&state.maps)?;
    let now = clock::monotonic_ns();
    let settings = crate::config::Settings::from_kernel(&state.maps.read_config()?);
    let proven = |net: &IpNet| {
        let key = crate::net::source_key(net.network(), settings.ipv4_prefix, settings.ipv6_prefix);
        crate::proofs::get(&state.maps, &key, now)
            .ok()
            .flatten()
            .is_some()
    };
    let blocks: Vec<RuleEntry> = sorted(all.iter().filter(|e| e.is_block()).cloned().collect());
    let allows = rules::Allows::of(&all);
    let rows: Vec<BlockJson> = blocks
        .iter()
        .filter(|e| !e.rule.expired(now))
        .map(|e| {
            let auto = e.rule.kind == RULE_BAN;
            let allowed_by = allows.covering(&e.net).map(|a| a.net.to_string());
            let crowdsec = e.crowdsec();
            BlockJson {
                prefix: e.net.to_string(),
                reason: e.kind(),
                syns: auto.then_some(e.rule.syns),
                rate: auto.then_some(e.rule.rate),
                first_seen: time_json(e.rule.created_ns),
                expires: time_json(e.rule.expires_ns),
                expires_in_s: (e.rule.expires_ns != 0)
                    .then(|| e.rule.expires_ns.saturating_sub(now) / 1_000_000_000),
                hits: e.rule.hits,
                comment: if e.rule.kind == RULE_CROWDSEC {
                    String::new()
                } else {
                    e.comment()
                },
                effective: if allowed_by.is_some() { "pass" } else { "drop" },
                allowed_by,
                proof: auto.then(|| if proven(&e.net) { "proven" } else { "unproven" }),
                origin: crowdsec.as_ref().map(|c| c.0.clone()),
                scenario: crowdsec.map(|c| c.1),
            }
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("nothing is blocked");
        return Ok(());
    }
    let table_rows = blocks
        .iter()
        .filter(|e| !e.rule.expired(now))
        .zip(&rows)
        .map(|(e, j)| {
            let mut comment = j.comment.clone();
            if let (Some(o), Some(sc)) = (&j.origin, &j.scenario) {
                comment = format!("{o}: {sc}");
            }
            if let Some(a) = &j.allowed_by {
                comment = format!("[not applied: inside allowlisted {a}] {comment}");
            }
            vec![
                j.prefix.clone(),
                match j.reason {
                    Kind::Auto => "auto".into(),
                    Kind::Crowdsec => "crowdsec".into(),
                    _ => "manual".into(),
                },
                j.proof.unwrap_or("-").into(),
                j.syns.map_or("-".into(), |s| s.to_string()),
                j.rate.map_or("-".into(), |r| format!("{r}/s")),
                time_human(e.rule.created_ns, "-"),
                time_human(e.rule.expires_ns, "never"),
                j.hits.to_string(),
                comment.trim().to_string(),
            ]
        })
        .collect();
    if rows.iter().any(|r| r.proof.is_some()) {
        println!(
            "bans (reason auto) drop only their source's SYNs to protected ports: its \
             connections and other traffic pass; a source that proves it owns its address is \
             challenged, never banned"
        );
    }
    println!(
        "{}",
        table(
            &[
                "prefix",
                "reason",
                "source",
                "syns seen",
                "rate",
                "first seen",
                "expires",
                "hits",
                "comment"
            ],
            table_rows
        )
    );
    Ok(())
}

pub(super) fn check_comment(comment: &str) -> anyhow::Result<()> {
    if comment.len() > RULE_COMMENT_MAX {
        return Err(usage(format!(
            "the comment is {} bytes long; at most {RULE_COMMENT_MAX} fit",
            comment.len()
        )));
    }
    if comment.chars().any(char::is_control) {
        return Err(usage("the comment contains control characters"));
    }
    Ok(())
}

/// Client addresses of the SSH sessions this command runs under: `SSH_CONNECTION` (or
/// `SSH_CLIENT`) of this process or, since `sudo` usually drops it, of its ancestors.
pub fn ssh_clients() -> Vec<IpAddr> {
    fn from_environ(env: &[u8]) -> Option<IpAddr> {
        env.split(|b| *b == 0).find_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let v = kv
                .strip_prefix("SSH_CONNECTION=")
                .or_else(|| kv.strip_prefix("SSH_CLIENT="))?;
            parse_addr(v.split_whitespace().next()?).ok()
        })
    }
    let mut out = Vec::new();
    for var in ["SSH_CONNECTION", "SSH_CLIENT"] {
        if let Some(ip) = std::env::var(var)
            .ok()
            .and_then(|v| v.split_whitespace().next().and_then(|a| parse_addr(a).ok()))
        {
            out.push(ip);
        }
    }
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..32 {
        if pid <= 1 {
            break;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && let Some(ip) = from_environ(&env)
        {
            out.push(ip);
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        // The command name is in parentheses and may contain spaces: parse after it.
        pid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
    }
    out.sort();
    out.dedup();
    out
}

pub struct BlockAdd<'a> {
    pub cidr: &'a str,
    pub duration: Option<&'a str>,
    pub comment: &'a str,
    pub force: bool,
}

pub fn block_add(state: &mut State, a: &BlockAdd<'_>) -> anyhow::Result<()> {
    let net = parse_cidr(a.cidr)?;
    check_comment(a.comment)?;
    let ttl = match a.duration {
        Some(d) => {
            let d = parse_duration("--for", d).map_err(|e| usage(e.to_string()))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(10 * 365 * 24 * 3600) {
                return Err(usage(
                    "--for must be between 1s and 3650d (leave it out to block until you \
                     remove it)",
                ));
            }
            Some(d)
        }
        None => None,
    };

    let _lock = state.write_lock()?;
    let all = rules::list(&state.maps)?;
    if let Some(same) = all
        .iter()
        .find(|e| e.net == net && e.rule.kind == RULE_ALLOW)
    {
        return Err(usage(format!(
            "{net} is on the allowlist{}; remove it first with `synguard allow del {net}`",
            comment_suffix(&same.comment())
        )));
    }
    if !a.force {
        for e in all.iter().filter(|e| e.rule.kind == RULE_ALLOW) {
            if covers(&net, &e.net) {
                return Err(usage(format!(
                    "refusing: {net} covers the allowlisted {}{}. Allowlisted addresses stay \
                     allowed whatever is blocked, so they would not be blocked anyway; pass \
                     --force to add the block for the rest of {net}",
                    e.net,
                    comment_suffix(&e.comment())
                )));
            }
            if covers(&e.net, &net) {
                return Err(usage(format!(
                    "refusing: {net} lies inside the allowlisted {}{}, so blocking it would \
                     have no effect; remove the allow entry first (`synguard allow del {}`), \
                     or pass --force to add the block anyway",
                    e.net,
                    comment_suffix(&e.comment()),
                    e.net
                )));
            }
        }
        for ip in ssh_clients() {
            if net.contains(&ip) {
                return Err(usage(format!(
                    "refusing: {net} contains {ip}, the address of your own SSH session \
                     (SSH_CONNECTION): you would lock yourself out. Allowlist it first \
                     (`synguard allow add {ip}`) or pass --force if you mean it"
                )));
            }
        }
    }

    // A new block must leave the allowlist its reserve (an existing entry is replaced in
    // place; a ban lives in the other trie and moves over).
    let replaces = all.iter().any(|e| e.net == net && e.rule.kind != RULE_BAN);
    if !replaces && rules::block_room(&all, net.addr().is_ipv4()) == 0 {
        return Err(anyhow::anyhow!(
            "the blocklist is full for {}: {} entries, the last {} of the table are kept for \
             allow entries; remove entries with `synguard block del` or aggregate them into \
             wider prefixes",
            if net.addr().is_ipv4() { "IPv4" } else { "IPv6" },
            synguard_common::capacity::RULES - synguard_common::capacity::ALLOW_RESERVE,
            synguard_common::capacity::ALLOW_RESERVE
        ));
    }
    let now = clock::monotonic_ns();
    let expires = ttl.map_or(0, |d| now + d.as_nanos() as u64);
    let mut rule = rules::manual(RULE_BLOCK, expires, a.comment);
    let previous = rules::get(&state.maps, &net)?;
    // The listed entry's count includes a ban's hits still in the kernel's ban cache.
    if let Some(prev) = all.iter().find(|e| e.net == net) {
        rule.hits = prev.rule.hits;
    }
    if rules::shadowing_allow(&all, &net).is_some() {
        rule.action = ACTION_PASS;
    }
    rules::put(&mut state.maps, &net, &rule)?;
    let verb = match previous.map(|p| p.kind) {
        Some(RULE_BLOCK) => "updated the block on",
        Some(RULE_BAN) => "turned the automatic ban into a manual block on",
        Some(RULE_CROWDSEC) => "turned the CrowdSec decision into a manual block on",
        _ => "blocked",
    };
    println!(
        "{verb} {net}{}{}",
        ttl.map_or(" until removed".to_string(), |d| format!(
            " for {} (until {})",
            format_duration(d),
            clock::rfc3339(clock::to_wall(expires))
        )),
        comment_suffix(a.comment)
    );
    state.note_no_daemon();
    Ok(())
}

pub(super) fn comment_suffix(c: &str) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" ({c})")
    }
}

pub fn block_del(state: &mut State, cidr: &str) -> anyhow::Result<()> {
    let net = parse_cidr(cidr)?;
    let _lock = state.write_lock()?;
    match rules::get(&state.maps, &net)? {
        Some(r) if r.kind == RULE_ALLOW => Err(usage(format!(
            "{net} is an allow entry, not a block; use `synguard allow del {net}`"
        ))),
        Some(r) if r.kind == RULE_CROWDSEC => Err(usage(format!(
            "{net} is a CrowdSec decision, which `run` enforces for as long as CrowdSec holds \
             it: delete it there to lift it on every server (`cscli decisions delete {} {}`), \
             or `synguard allow add {net}` to let it through here",
            if net.prefix_len() == net.max_prefix_len() {
                "--ip"
            } else {
                "--range"
            },
            if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            }
        ))),
        Some(r) => {
            // The count as removed: with the hits the CPUs' ban caches still held.
            let r = rules::delete(&mut state.maps, &net)?.unwrap_or(r);
            if r.kind == RULE_BAN {
                // An unbanned source starts again with a full bucket; otherwise its next
                // SYN would find the bucket still empty and ban it again at once.
                forget_bucket(state, &net);
            }
            println!(
                "removed the {} on {net} ({} packets dropped while it lasted)",
                match r.kind {
                    RULE_BAN => "ban",
                    RULE_CROWDSEC => "CrowdSec decision",
                    _ => "block",
                },
                r.hits
            );
            state.note_no_daemon();
            Ok(())
        }
        None => {
            let all = rules::list(&state.maps)?;
            let covering: Vec<String> = rules::matching(&all, net.network())
                .into_iter()
                .filter(|e| e.is_block() && covers(&e.net, &net))
                .map(|e| e.net.to_string())
                .collect();
            Err(usage(if covering.is_empty() {
                format!(
                    "{net} is not blocked (`synguard block list` shows what is); entries are \
                     removed by their exact prefix"
                )
            } else {
                format!(
                    "there is no entry for {net} itself, but it is inside the blocked {}; \
                     remove that prefix, or allowlist {net}",
                    covering.join(", ")
                )
            }))
        }
    }
}

fn forget_bucket(state: &mut State, net: &IpNet) {
    let key = match net {
        IpNet::V4(n) => synguard_common::source_key_v4(
            n.network().octets(),
            [0xff; 4],
            u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => synguard_common::source_key_v6(
            n.network().octets(),
            [0xff; 16],
            u32::from(n.prefix_len()),
        ),
    };
    let _ = crate::sources::forget(&mut state.maps, &key);
}
