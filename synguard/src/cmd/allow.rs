//! `synguard allow list|add CIDR [--comment TEXT]|del CIDR`: the allowlist, which always
//! wins over blocks, bans and CrowdSec decisions.

use serde::Serialize;
use synguard_common::{RULE_ALLOW, RULE_BAN, RULE_CROWDSEC};

use super::{
    State,
    block::{check_comment, comment_suffix, sorted},
    print_json, table, time_human, time_json,
};
use crate::{
    error::usage,
    net::parse_cidr,
    rules::{self},
};

#[derive(Serialize)]
struct AllowJson {
    prefix: String,
    added: Option<String>,
    hits: u64,
    comment: String,
}

pub fn allow_list(state: &State, json: bool) -> anyhow::Result<()> {
    let allows = sorted(
        rules::list(&state.maps)?
            .into_iter()
            .filter(|e| e.rule.kind == RULE_ALLOW)
            .collect(),
    );
    let rows: Vec<AllowJson> = allows
        .iter()
        .map(|e| AllowJson {
            prefix: e.net.to_string(),
            added: time_json(e.rule.created_ns),
            hits: e.rule.hits,
            comment: e.comment(),
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("the allowlist is empty");
        return Ok(());
    }
    println!(
        "{}",
        table(
            &["prefix", "added", "hits", "comment"],
            allows
                .iter()
                .zip(&rows)
                .map(|(e, j)| {
                    vec![
                        j.prefix.clone(),
                        time_human(e.rule.created_ns, "-"),
                        j.hits.to_string(),
                        j.comment.clone(),
                    ]
                })
                .collect()
        )
    );
    Ok(())
}

pub fn allow_add(state: &mut State, cidr: &str, comment: &str) -> anyhow::Result<()> {
    let net = parse_cidr(cidr)?;
    check_comment(comment)?;
    let _lock = state.write_lock()?;
    let previous = rules::get(&state.maps, &net)?;
    let mut rule = rules::manual(RULE_ALLOW, 0, comment);
    if let Some(p) = previous {
        rule.hits = if p.kind == RULE_ALLOW { p.hits } else { 0 };
    }
    rules::put(&mut state.maps, &net, &rule)?;
    let changed = rules::reconcile_actions(&mut state.maps)?;
    match previous.map(|p| p.kind) {
        Some(RULE_ALLOW) => println!("updated the allow entry {net}{}", comment_suffix(comment)),
        Some(RULE_BAN) => println!("allowed {net}, replacing its automatic ban"),
        Some(RULE_CROWDSEC) => println!(
            "allowed {net}, over its CrowdSec decision (which applies here again if the allow \
             entry is removed while CrowdSec still holds it)"
        ),
        Some(_) => println!("allowed {net}, replacing the block on it"),
        None => println!("allowed {net}{}", comment_suffix(comment)),
    }
    if changed > 0 {
        println!("{changed} block or ban entries inside {net} no longer apply");
    }
    state.note_no_daemon();
    Ok(())
}

pub fn allow_del(state: &mut State, cidr: &str) -> anyhow::Result<()> {
    let net = parse_cidr(cidr)?;
    let _lock = state.write_lock()?;
    match rules::get(&state.maps, &net)? {
        Some(r) if r.kind == RULE_ALLOW => {
            rules::delete(&mut state.maps, &net)?;
            let changed = rules::reconcile_actions(&mut state.maps)?;
            println!("removed {net} from the allowlist");
            if changed > 0 {
                println!("{changed} block or ban entries inside {net} apply again");
            }
            state.note_no_daemon();
            Ok(())
        }
        Some(_) => Err(usage(format!(
            "{net} is a block, not an allow entry; use `synguard block del {net}`"
        ))),
        None => Err(usage(format!(
            "{net} is not on the allowlist (`synguard allow list` shows it); entries are \
             removed by their exact prefix"
        ))),
    }
}
