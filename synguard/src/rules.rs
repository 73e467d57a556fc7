//! The allow, block and ban entries: the operator's allow and block entries in one
//! longest-prefix-match trie per address family, the automatic bans in another, each
//! with a hint bitmap in front (see `synguard_common::hint`) that this module keeps in
//! step with every change. The kernel looks at the operator's trie first, so an allow
//! entry always wins over a ban, and a ban's lookup does not grow with the blocklist.
//!
//! To callers this is one set of entries, at most one per prefix: storing an entry
//! replaces whatever the prefix held in either trie.
//!
//! The allowlist must always win ("checked first"), but a trie returns only the most
//! specific match. So userspace stores the *effective* action in each entry: a block or
//! ban entry that lies inside an allow entry gets `ACTION_PASS`. [`reconcile_actions`]
//! restores that invariant after every change to the allowlist (and `run` re-checks it
//! every second, in case the kernel banned a source while an allow entry was being added).

use std::net::IpAddr;

use anyhow::Context as _;
use aya::maps::MapError;
use ipnet::IpNet;
use serde::Serialize;
use synguard_common::{
    ACTION_DROP, ACTION_PASS, RULE_ALLOW, RULE_BAN, RULE_BLOCK, RULE_COMMENT_MAX, RULE_CROWDSEC,
    Rule, hint, rule_key_v4, rule_key_v6,
};

use crate::{
    bpf::{Maps, V4Key, V6Key},
    clock,
    net::{v4_net, v6_net},
};

/// One entry and the prefix it is stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    pub net: IpNet,
    pub rule: Rule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Allow,
    /// A manual block (`block add`).
    Manual,
    /// An automatic ban by the rate limiter.
    Auto,
    /// A ban decision pulled from CrowdSec's Local API.
    Crowdsec,
}

impl Kind {
    pub fn of(rule: &Rule) -> Self {
        match rule.kind {
            RULE_ALLOW => Self::Allow,
            RULE_BAN => Self::Auto,
            RULE_CROWDSEC => Self::Crowdsec,
            _ => Self::Manual,
        }
    }
}

impl RuleEntry {
    pub fn kind(&self) -> Kind {
        Kind::of(&self.rule)
    }

    pub fn comment(&self) -> String {
        let n = usize::from(self.rule.comment_len).min(RULE_COMMENT_MAX);
        String::from_utf8_lossy(&self.rule.comment[..n]).into_owned()
    }

    pub fn is_block(&self) -> bool {
        matches!(self.rule.kind, RULE_BLOCK | RULE_BAN | RULE_CROWDSEC)
    }

    /// A CrowdSec decision's origin and scenario (kept in its comment).
    pub fn crowdsec(&self) -> Option<(String, String)> {
        if self.rule.kind != RULE_CROWDSEC {
            return None;
        }
        let c = self.comment();
        let (origin, scenario) = c.split_once('\t').unwrap_or((c.as_str(), ""));
        Some((origin.to_string(), scenario.to_string()))
    }
}

impl Maps {
    /// Write the kernel's config. (Here rather than in `bpf`, which knows nothing of the
    /// rules: under a short `ipv4-prefix` the kernel made bans without hint bits, since it
    /// ignored the hint then; before it starts relying on the hint, every entry gets its
    /// bits.)
    pub fn write_config(&mut self, cfg: &synguard_common::Config) -> anyhow::Result<()> {
        let old = self.read_config()?;
        let starts = |new: u32, old: u32, min: u32| new >= min && old < min;
        if old.abi == 0
            || starts(cfg.ipv4_prefix, old.ipv4_prefix, hint::HINT_MIN_BAN_PREFIX)
            || starts(
                cfg.ipv6_prefix,
                old.ipv6_prefix,
                hint::HINT_MIN_BAN_PREFIX_V6,
            )
        {
            sync_hints(self)?;
        }
        self.store_config(cfg, &old)
    }
}

/// Put a comment into a rule, cut at a character boundary to fit.
pub fn set_comment(rule: &mut Rule, text: &str) {
    let mut end = text.len().min(RULE_COMMENT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    rule.comment = [0; RULE_COMMENT_MAX];
    rule.comment[..end].copy_from_slice(&text.as_bytes()[..end]);
    rule.comment_len = end as u8;
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// Which trie an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Table {
    /// The operator's allow and block entries.
    Rules,
    /// Automatic bans.
    Bans,
}

impl Table {
    fn of(kind: u8) -> Self {
        if kind == RULE_BAN {
            Self::Bans
        } else {
            Self::Rules
        }
    }

    fn v4(self, maps: &Maps) -> &crate::bpf::RulesV4 {
        match self {
            Self::Rules => &maps.rules_v4,
            Self::Bans => &maps.bans_v4,
        }
    }

    fn v6(self, maps: &Maps) -> &crate::bpf::RulesV6 {
        match self {
            Self::Rules => &maps.rules_v6,
            Self::Bans => &maps.bans_v6,
        }
    }

    fn v4_mut(self, maps: &mut Maps) -> &mut crate::bpf::RulesV4 {
        match self {
            Self::Rules => &mut maps.rules_v4,
            Self::Bans => &mut maps.bans_v4,
        }
    }

    fn v6_mut(self, maps: &mut Maps) -> &mut crate::bpf::RulesV6 {
        match self {
            Self::Rules => &mut maps.rules_v6,
            Self::Bans => &mut maps.bans_v6,
        }
    }
}

const TABLES: [Table; 2] = [Table::Rules, Table::Bans];

/// Every stored prefix with its trie, each once even if entries are deleted while we
/// walk (a trie walk restarts from the beginning when its current key disappears).
fn keys(maps: &Maps) -> anyhow::Result<Vec<(IpNet, Table)>> {
    keys_of(maps, &TABLES)
}

fn keys_of(maps: &Maps, tables: &[Table]) -> anyhow::Result<Vec<(IpNet, Table)>> {
    let mut out = std::collections::BTreeSet::new();
    for &table in tables {
        for k in table.v4(maps).keys() {
            match k {
                Ok(k) => {
                    let d = k.data();
                    if let Some(net) = v4_net([d[0], d[1], d[2], d[3]], k.prefix_len()) {
                        out.insert((net, table));
                    }
                }
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e).context("listing the IPv4 rules"),
            }
        }
        for k in table.v6(maps).keys() {
            match k {
                Ok(k) => {
                    let d = k.data();
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&d[..16]);
                    if let Some(net) = v6_net(a, k.prefix_len()) {
                        out.insert((net, table));
                    }
                }
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e).context("listing the IPv6 rules"),
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The entry stored under exactly this prefix (not merely one that matches it).
pub fn get(maps: &Maps, net: &IpNet) -> anyhow::Result<Option<Rule>> {
    for table in TABLES {
        if let Some(rule) = get_in(maps, table, net)? {
            return Ok(Some(rule));
        }
    }
    Ok(None)
}

/// The same in one trie.
///
/// A trie lookup with a key of length `p` returns the longest entry no longer than `p`
/// that matches; the value records its own prefix length, so a shorter match is told
/// apart from the exact entry.
fn get_in(maps: &Maps, table: Table, net: &IpNet) -> anyhow::Result<Option<Rule>> {
    let p = net.prefix_len();
    let r = match net {
        IpNet::V4(n) => table.v4(maps).get(
            &V4Key::new(u32::from(p), rule_key_v4(n.network().octets(), 0)),
            0,
        ),
        IpNet::V6(n) => table.v6(maps).get(
            &V6Key::new(u32::from(p), rule_key_v6(n.network().octets(), 0)),
            0,
        ),
    };
    match r {
        Ok(rule) if rule.prefix_len == p => Ok(Some(rule)),
        Ok(_) => Ok(None),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e).context("reading a rule"),
    }
}

/// Every entry of both families. A ban's hits include those the kernel's ban cache
/// still holds (see `synguard_common::BanCache`).
pub fn list(maps: &Maps) -> anyhow::Result<Vec<RuleEntry>> {
    let mut out = Vec::new();
    for (net, table) in keys(maps)? {
        // Gone since we listed it: skip.
        if let Some(rule) = get_in(maps, table, &net)? {
            out.push(RuleEntry { net, rule });
        }
    }
    add_cached_hits(maps, &mut out)?;
    Ok(out)
}

/// The automatic bans alone (their trie only: a walk that does not grow with the
/// operator's or CrowdSec's entries).
pub fn list_bans(maps: &Maps) -> anyhow::Result<Vec<RuleEntry>> {
    let mut out = Vec::new();
    for (net, table) in keys_of(maps, &[Table::Bans])? {
        if let Some(rule) = get_in(maps, table, &net)? {
            out.push(RuleEntry { net, rule });
        }
    }
    add_cached_hits(maps, &mut out)?;
    Ok(out)
}

/// Add the hits the CPUs' ban caches have not carried over yet to the bans they were
/// counted for (the exact entry: same prefix, same creation time). Read after the
/// entries, so a carry-over in between is missed (counted next time), never counted
/// twice.
fn add_cached_hits(maps: &Maps, entries: &mut [RuleEntry]) -> anyhow::Result<()> {
    let bans: std::collections::HashMap<IpNet, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.rule.kind == RULE_BAN && e.net.addr().is_ipv4())
        .map(|(i, e)| (e.net, i))
        .collect();
    if bans.is_empty() {
        return Ok(());
    }
    for slot in 0..synguard_common::ban_cache::SLOTS {
        let per_cpu = match maps.ban_cache.get(&slot, 0) {
            Ok(v) => v,
            Err(e) if not_found(&e) => continue,
            Err(e) => return Err(e).context("reading the ban cache"),
        };
        for c in per_cpu.iter().filter(|c| c.pending != 0) {
            // The ban's prefix: the source's address with its host bits cleared.
            let Some(net) = v4_net(c.addr.to_ne_bytes(), c.prefix_len).map(|n| n.trunc()) else {
                continue;
            };
            if let Some(&i) = bans.get(&net)
                && entries[i].rule.created_ns == c.created_ns
            {
                entries[i].rule.hits += u64::from(c.pending);
            }
        }
    }
    Ok(())
}

/// Which hint an entry's bits live in: its trie's, for its address family (`true`:
/// IPv6).
type Hint = (Table, bool);

/// The hint and the index range `[first, end)` a prefix touches (see
/// `synguard_common::hint`): /24s for IPv4, /40s without their first 16 bits for IPv6.
type Span = (Hint, u32, u32);

fn hint_span(net: &IpNet, table: Table) -> Span {
    match net {
        IpNet::V4(n) => {
            let (a, b) = hint::span(n.network().octets(), u32::from(n.prefix_len()));
            ((table, false), a, b)
        }
        IpNet::V6(n) => {
            let idx = hint::v6_index(&n.network().octets());
            let (a, b) = hint::span(idx, hint::v6_len(u32::from(n.prefix_len())));
            ((table, true), a, b)
        }
    }
}

/// The words a span touches, as `(hint, word)`.
fn words(span: Span) -> impl Iterator<Item = (Hint, u32)> {
    let (h, a, b) = span;
    ((a >> 6)..=((b - 1) >> 6)).map(move |w| (h, w))
}

fn mask(span: Span, word: u32) -> u64 {
    hint::word_mask(word, span.1, span.2)
}

fn hint_map(maps: &mut Maps, h: Hint) -> &mut aya::maps::Array<aya::maps::MapData, u64> {
    match h {
        (Table::Rules, false) => &mut maps.rules_hint,
        (Table::Rules, true) => &mut maps.rules_hint6,
        (Table::Bans, false) => &mut maps.bans_hint,
        (Table::Bans, true) => &mut maps.bans_hint6,
    }
}

fn hint_word(maps: &mut Maps, (h, word): (Hint, u32)) -> anyhow::Result<u64> {
    hint_map(maps, h)
        .get(&word, 0)
        .context("reading the rules hint")
}

fn set_hint_word(maps: &mut Maps, (h, word): (Hint, u32), value: u64) -> anyhow::Result<()> {
    hint_map(maps, h)
        .set(word, value, 0)
        .context("writing the rules hint")
}

/// Set bits (those already set stay).
fn or_hint_word(maps: &mut Maps, at: (Hint, u32), bits: u64) -> anyhow::Result<()> {
    let have = hint_word(maps, at)?;
    if have & bits != bits {
        set_hint_word(maps, at, have | bits)?;
    }
    Ok(())
}

/// Set the hint bits of a prefix in a trie.
fn mark(maps: &mut Maps, net: &IpNet, table: Table) -> anyhow::Result<()> {
    let span = hint_span(net, table);
    for at in words(span) {
        or_hint_word(maps, at, mask(span, at.1))?;
    }
    Ok(())
}

/// The hint spans of every entry.
fn spans(maps: &Maps) -> anyhow::Result<Vec<Span>> {
    Ok(keys(maps)?
        .iter()
        .map(|&(net, table)| hint_span(&net, table))
        .collect())
}

/// Set the hint bits of every entry (bits already set stay).
pub fn sync_hints(maps: &mut Maps) -> anyhow::Result<()> {
    for span in spans(maps)? {
        for at in words(span) {
            or_hint_word(maps, at, mask(span, at.1))?;
        }
    }
    Ok(())
}

/// After entries were removed: clear the hint bits that no remaining entry needs.
///
/// The kernel may add a ban meanwhile and set its bit just before a word is rewritten;
/// the entries are listed again afterwards and the bits of any new one restored, so a
/// ban's bit is missing for a moment at most (and its SYNs are limited by its bucket
/// meanwhile).
///
/// `before`: the entries' spans, if the caller has just listed them (saves a walk).
fn unmark(maps: &mut Maps, removed: &[IpNet], before: Option<Vec<Span>>) -> anyhow::Result<()> {
    use std::collections::{BTreeMap, BTreeSet, HashSet};
    let touched: BTreeSet<(Hint, u32)> = removed
        .iter()
        .flat_map(|n| TABLES.map(|t| hint_span(n, t)))
        .flat_map(words)
        .collect();
    if touched.is_empty() {
        return Ok(());
    }
    let wanted = |spans: &[Span]| {
        let mut want = BTreeMap::<(Hint, u32), u64>::new();
        for &span in spans {
            let (h, a, b) = span;
            for &at in touched.range((h, a >> 6)..=(h, (b - 1) >> 6)) {
                *want.entry(at).or_default() |= mask(span, at.1);
            }
        }
        want
    };
    let before = match before {
        Some(b) => b,
        None => spans(maps)?,
    };
    let want = wanted(&before);
    for &at in &touched {
        let want = want.get(&at).copied().unwrap_or(0);
        if hint_word(maps, at)? != want {
            set_hint_word(maps, at, want)?;
        }
    }
    let known: HashSet<Span> = before.into_iter().collect();
    let new: Vec<Span> = spans(maps)?
        .into_iter()
        .filter(|s| !known.contains(s))
        .collect();
    for (at, bits) in wanted(&new) {
        or_hint_word(maps, at, bits)?;
    }
    Ok(())
}

/// Store an entry under a prefix, replacing what was there (in either trie).
pub fn put(maps: &mut Maps, net: &IpNet, rule: &Rule) -> anyhow::Result<()> {
    let table = Table::of(rule.kind);
    // The hint first: the entry must never exist without its bits.
    mark(maps, net, table)?;
    let mut rule = *rule;
    rule.prefix_len = net.prefix_len();
    let len = u32::from(net.prefix_len());
    let r = match net {
        IpNet::V4(n) => table.v4_mut(maps).insert(
            &V4Key::new(len, rule_key_v4(n.network().octets(), rule.kind)),
            rule,
            0,
        ),
        IpNet::V6(n) => table.v6_mut(maps).insert(
            &V6Key::new(len, rule_key_v6(n.network().octets(), rule.kind)),
            rule,
            0,
        ),
    };
    match r {
        Ok(()) => {}
        Err(MapError::SyscallError(s))
            if matches!(s.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) =>
        {
            return Err(anyhow::Error::new(TableFull {
                table: if table == Table::Bans {
                    "bans"
                } else {
                    "rules"
                },
            }));
        }
        Err(e) => return Err(e).with_context(|| format!("storing the rule for {net}")),
    }
    // One entry per prefix: a manual entry replaces a ban there, and the other way round.
    let other = if table == Table::Bans {
        Table::Rules
    } else {
        Table::Bans
    };
    if remove_in(maps, other, net)? {
        unmark(maps, std::slice::from_ref(net), None)?;
    }
    if table == Table::Bans {
        maps.new_bans_epoch()?;
    }
    Ok(())
}

/// A table had no room for an entry ([`put`]); nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {table} table is full ({} entries per address family); remove entries with \
     `synguard block del` or aggregate them into wider prefixes",
    synguard_common::capacity::RULES
)]
pub struct TableFull {
    pub table: &'static str,
}

/// How many more blocks (manual or CrowdSec's) the allow/block trie of `net`'s family
/// takes, given its `entries` (as [`list`] gives them): up to the capacity less
/// [`capacity::ALLOW_RESERVE`](synguard_common::capacity::ALLOW_RESERVE), which only the
/// allowlist may use.
pub fn block_room(entries: &[RuleEntry], v4: bool) -> usize {
    use synguard_common::capacity::{ALLOW_RESERVE, RULES};
    let used = entries
        .iter()
        .filter(|e| e.rule.kind != RULE_BAN && e.net.addr().is_ipv4() == v4)
        .count();
    ((RULES - ALLOW_RESERVE) as usize).saturating_sub(used)
}

/// Remove the entry stored under exactly this prefix, and return it with its hit count
/// complete (see [`add_cached_hits`]). `Ok(None)` if there was none.
pub fn delete(maps: &mut Maps, net: &IpNet) -> anyhow::Result<Option<Rule>> {
    let Some(rule) = get(maps, net)? else {
        return Ok(None);
    };
    if !remove(maps, net)? {
        return Ok(None);
    }
    unmark(maps, std::slice::from_ref(net), None)?;
    // Read after the removal (and its new epoch): no CPU carries hits into it any more.
    let mut gone = [RuleEntry { net: *net, rule }];
    add_cached_hits(maps, &mut gone)?;
    Ok(Some(gone[0].rule))
}

/// [`delete`] without updating the hints (callers do it once for many removals).
fn remove(maps: &mut Maps, net: &IpNet) -> anyhow::Result<bool> {
    let rules = remove_in(maps, Table::Rules, net)?;
    let bans = remove_in(maps, Table::Bans, net)?;
    Ok(rules || bans)
}

fn remove_in(maps: &mut Maps, table: Table, net: &IpNet) -> anyhow::Result<bool> {
    // Deletion matches the prefix exactly (the kind byte of the key is not compared).
    let len = u32::from(net.prefix_len());
    let r = match net {
        IpNet::V4(n) => table
            .v4_mut(maps)
            .remove(&V4Key::new(len, rule_key_v4(n.network().octets(), 0))),
        IpNet::V6(n) => table
            .v6_mut(maps)
            .remove(&V6Key::new(len, rule_key_v6(n.network().octets(), 0))),
    };
    match r {
        Ok(()) => {
            if table == Table::Bans {
                maps.new_bans_epoch()?;
            }
            Ok(true)
        }
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing the rule for {net}")),
    }
}

/// The entries that match an address in the order the kernel consults them: the
/// operator's entries most specific first, then bans most specific first (the first one
/// is what the kernel applies, unless it has expired).
pub fn matching(entries: &[RuleEntry], addr: IpAddr) -> Vec<RuleEntry> {
    let mut m: Vec<RuleEntry> = entries
        .iter()
        .filter(|e| e.net.contains(&addr))
        .cloned()
        .collect();
    m.sort_by_key(|e| {
        (
            e.rule.kind == RULE_BAN,
            std::cmp::Reverse(e.net.prefix_len()),
        )
    });
    m
}

/// The allow entry, if any, that makes a block or ban entry ineffective. (For many
/// prefixes, build an [`Allows`] once.)
pub fn shadowing_allow<'a>(entries: &'a [RuleEntry], net: &IpNet) -> Option<&'a RuleEntry> {
    Allows::of(entries).covering(net)
}

/// The allow entries of a list, by family and prefix length: the one that covers a
/// prefix (the narrowest, as the kernel's longest-prefix match picks) is found with a
/// lookup per prefix length in use, not a walk of every entry. A blocklist of a quarter
/// of a million prefixes is reconciled in a fraction of a second this way; compared with
/// every entry, it took minutes.
pub struct Allows<'a> {
    by_len: std::collections::BTreeMap<(bool, u8), std::collections::HashMap<IpNet, &'a RuleEntry>>,
}

impl<'a> Allows<'a> {
    pub fn of(entries: &'a [RuleEntry]) -> Self {
        let mut by_len: std::collections::BTreeMap<(bool, u8), std::collections::HashMap<_, _>> =
            Default::default();
        for e in entries.iter().filter(|e| e.kind() == Kind::Allow) {
            by_len
                .entry((e.net.addr().is_ipv4(), e.net.prefix_len()))
                .or_default()
                .insert(e.net.trunc(), e);
        }
        Self { by_len }
    }

    /// The narrowest allow entry covering `net`, if any.
    pub fn covering(&self, net: &IpNet) -> Option<&'a RuleEntry> {
        let v4 = net.addr().is_ipv4();
        self.by_len
            .range((v4, 0)..=(v4, net.prefix_len()))
            .rev()
            .find_map(|(&(_, len), nets)| {
                let outer = IpNet::new(net.addr(), len).ok()?.trunc();
                nets.get(&outer).copied()
            })
    }
}

/// Set every block and ban entry's effective action: pass if an allow entry covers it,
/// drop otherwise. Returns how many entries changed.
pub fn reconcile_actions(maps: &mut Maps) -> anyhow::Result<usize> {
    let entries = list(maps)?;
    let allows = Allows::of(&entries);
    let mut changed = 0;
    for e in entries.iter().filter(|e| e.is_block()) {
        let want = if allows.covering(&e.net).is_some() {
            ACTION_PASS
        } else {
            ACTION_DROP
        };
        if e.rule.action != want {
            // Re-read so a concurrent hit count or replacement is not undone.
            if let Some(mut current) = get(maps, &e.net)?
                && current.kind == e.rule.kind
            {
                current.action = want;
                put(maps, &e.net, &current)?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Remove block and ban entries that have expired. Returns the removed entries.
pub fn expire(maps: &mut Maps) -> anyhow::Result<Vec<RuleEntry>> {
    let now = clock::monotonic_ns();
    let mut removed = Vec::new();
    let entries = list(maps)?;
    for e in entries.iter().cloned() {
        if e.rule.expired(now) {
            // Re-check just before deleting: the kernel replaces an expired ban in place
            // when the source is banned again.
            if let Some(current) = get(maps, &e.net)?
                && current.expired(now)
                && remove(maps, &e.net)?
            {
                removed.push(RuleEntry {
                    net: e.net,
                    rule: current,
                });
            }
        }
    }
    let nets: Vec<IpNet> = removed.iter().map(|e| e.net).collect();
    if !removed.is_empty() {
        // The hits still pending in the CPUs' ban caches, read after the removals.
        add_cached_hits(maps, &mut removed)?;
        let gone: std::collections::HashSet<IpNet> = nets.iter().copied().collect();
        let remaining = entries
            .iter()
            .filter(|e| !gone.contains(&e.net))
            .map(|e| hint_span(&e.net, Table::of(e.rule.kind)))
            .collect();
        unmark(maps, &nets, Some(remaining))?;
    }
    Ok(removed)
}

/// A fresh manual entry.
pub fn manual(kind: u8, expires_ns: u64, comment: &str) -> Rule {
    let action = if kind == RULE_ALLOW {
        ACTION_PASS
    } else {
        ACTION_DROP
    };
    let mut r = Rule::new(kind, action, clock::monotonic_ns(), expires_ns);
    set_comment(&mut r, comment);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, kind: u8) -> RuleEntry {
        RuleEntry {
            net: net.parse().expect("test CIDR"),
            rule: manual(kind, 0, ""),
        }
    }

    /// The index finds what a walk of every entry finds: the narrowest allow entry that
    /// covers the prefix, of its own family.
    #[test]
    fn the_allow_index_agrees_with_a_walk() {
        let entries = vec![
            entry("10.0.0.0/8", RULE_ALLOW),
            entry("10.1.0.0/16", RULE_ALLOW),
            entry("10.1.2.3/32", RULE_BLOCK),
            entry("192.0.2.0/24", RULE_BLOCK),
            entry("2001:db8::/32", RULE_ALLOW),
            entry("::/0", RULE_ALLOW),
            entry("0.0.0.0/1", RULE_BLOCK),
        ];
        let walk = |net: &IpNet| {
            entries
                .iter()
                .filter(|e| e.kind() == Kind::Allow && crate::net::covers(&e.net, net))
                .max_by_key(|e| e.net.prefix_len())
                .map(|e| e.net)
        };
        let allows = Allows::of(&entries);
        for net in [
            "10.1.2.3/32",
            "10.1.0.0/16",
            "10.2.0.0/16",
            "10.0.0.0/7",
            "192.0.2.7/32",
            "2001:db8:1::/48",
            "2001:db9::/32",
            "::ffff:10.1.2.3/128",
        ] {
            let net: IpNet = net.parse().expect("test CIDR");
            assert_eq!(allows.covering(&net).map(|e| e.net), walk(&net), "{net}");
        }
        assert_eq!(
            allows
                .covering(&"10.1.2.3/32".parse().expect("cidr"))
                .map(|e| e.net.to_string()),
            Some("10.1.0.0/16".into())
        );
        assert!(
            allows
                .covering(&"192.0.2.7/32".parse().expect("cidr"))
                .is_none()
        );
    }
}
