//! Consecutive readings turned into a [`View`]: rates, histories, verdicts and list
//! changes. Pure.

use super::*;

/// What `synguard top` shows: everything [`render`] and [`plain_line`] need, computed.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub wall: Option<SystemTime>,
    pub interval: Duration,
    /// The first reading: nothing to compare with yet, so no rates.
    pub measuring: bool,
    pub daemon: bool,
    pub monitor: bool,
    pub attack_syn_rate: u64,
    /// SYNs in per second (see the module documentation) and its history, oldest first.
    pub syn_rate: u64,
    pub syn_history: Vec<u64>,
    /// Packets dropped per second and its history.
    pub drop_rate: u64,
    pub drop_history: Vec<u64>,
    /// Every drop reason: (counter name, per second, total).
    pub drops: Vec<(&'static str, u64, u64)>,
    /// SYNs answered with a cookie per second (attack mode).
    pub answered_rate: u64,
    pub ifaces: Vec<IfaceView>,
    pub top: Vec<SourceView>,
    pub sources: usize,
    pub bans: usize,
    pub blocks: usize,
    pub allows: usize,
    /// Recent list changes, newest first (bounded).
    pub events: Vec<ListEvent>,
    /// The changes found by this refresh (for the plain output).
    pub new_events: Vec<ListEvent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceView {
    pub name: String,
    pub attack: bool,
    /// How long attack mode has lasted.
    pub attack_for: Option<Duration>,
    /// The attack detector's latest total SYN rate (SYNs that reach the rate limiter).
    pub detector_rate: u64,
    pub peak_rate: u64,
    pub syn_rate: u64,
    pub drop_rate: u64,
    pub answered_rate: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An automatic ban drops everything from it.
    Banned,
    /// A manual block drops everything from it.
    Blocked,
    /// The allowlist passes it, whatever else matches.
    Allowed,
    /// Its bucket is empty: its next SYN is over the limit.
    Limited,
    /// Its bucket is empty, but it is proven: challenged with cookies, never banned.
    Challenged,
    /// Metered and within its limit.
    Passing,
    /// Within its limit, in attack mode and not verified: its SYNs are answered with
    /// cookies from XDP.
    Cookie,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::Blocked => "blocked",
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::Challenged => "challenged",
            Self::Passing => "passing",
            Self::Cookie => "cookie",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceView {
    pub net: IpNet,
    pub rate: u64,
    pub verdict: Verdict,
    /// Why, in a few words (`expires in 9m58s`, the allow entry, ...).
    pub note: String,
}

/// A change of the allow, block and ban lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEvent {
    pub wall: Option<SystemTime>,
    /// `+ 203.0.113.66/32 banned (at 101000 SYN/s), expires in 10m`.
    pub text: String,
}

pub(super) struct Previous {
    mono_ns: u64,
    counters: BTreeMap<u32, [u64; stat::COUNT]>,
    /// Every entry by prefix.
    rules: BTreeMap<IpNet, RuleEntry>,
}

/// Turns readings into views; keeps the previous reading, the histories and the events.
pub struct Model {
    interval: Duration,
    pub(super) history_len: usize,
    syn_history: VecDeque<u64>,
    drop_history: VecDeque<u64>,
    events: VecDeque<ListEvent>,
    previous: Option<Previous>,
}

impl Model {
    pub fn new(interval: Duration) -> Self {
        let per = interval.as_secs_f64().max(0.001);
        let history_len = ((HISTORY.as_secs_f64() / per).ceil() as usize).clamp(60, 3000);
        Self {
            interval,
            history_len,
            syn_history: VecDeque::with_capacity(history_len),
            drop_history: VecDeque::with_capacity(history_len),
            events: VecDeque::with_capacity(EVENTS_KEPT),
            previous: None,
        }
    }

    /// The view after one more reading.
    pub fn update(&mut self, r: Reading) -> View {
        let prev = self.previous.take();
        let secs = prev
            .as_ref()
            .map(|p| r.mono_ns.saturating_sub(p.mono_ns))
            .filter(|ns| *ns > 0)
            .map(|ns| ns as f64 / 1e9);
        let per_sec = |d: u64| secs.map_or(0, |s| (d as f64 / s).round() as u64);
        // Counter increases by slot; a slot first seen now has no increase yet.
        let delta = |slot: u32| -> [u64; stat::COUNT] {
            let mut d = [0u64; stat::COUNT];
            if let (Some(p), Some(now)) = (
                prev.as_ref().and_then(|p| p.counters.get(&slot)),
                r.counters.get(&slot),
            ) {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = now[i].saturating_sub(p[i]);
                }
            }
            d
        };
        let mut total = [0u64; stat::COUNT];
        for slot in r.counters.keys() {
            for (t, v) in total.iter_mut().zip(delta(*slot)) {
                *t += v;
            }
        }
        let syn_rate = per_sec(syns_in(&total));
        let drop_rate = per_sec(dropped(&total));
        if secs.is_some() {
            push_bounded(&mut self.syn_history, syn_rate, self.history_len);
            push_bounded(&mut self.drop_history, drop_rate, self.history_len);
        }
        let drops = stat::REASON_LIST
            .iter()
            .copied()
            .filter(|i| stat::is_drop(*i))
            .map(|i| {
                let all: u64 = r.counters.values().map(|c| c[i]).sum();
                (stat::NAMES[i], per_sec(total[i]), all)
            })
            .collect();

        let ifaces = r
            .ifaces
            .iter()
            .map(|i| {
                let d = delta(i.slot);
                let st = &i.state;
                let fresh = r.mono_ns.saturating_sub(st.rate_ns) <= ATTACK_STALE_NS;
                IfaceView {
                    name: i.name.clone(),
                    attack: st.attack != 0,
                    attack_for: (st.attack != 0 && st.since_ns != 0)
                        .then(|| Duration::from_nanos(r.mono_ns.saturating_sub(st.since_ns))),
                    detector_rate: if fresh { st.rate } else { 0 },
                    peak_rate: st.peak_rate,
                    syn_rate: per_sec(syns_in(&d)),
                    drop_rate: per_sec(dropped(&d)),
                    answered_rate: per_sec(d[stat::R_COOKIE_SENT]),
                }
            })
            .collect();

        let now = r.mono_ns;
        let live: Vec<RuleEntry> = r
            .rules
            .iter()
            .filter(|e| !e.rule.expired(now))
            .cloned()
            .collect();
        // Candidates: the busiest buckets, and every dropping entry with hits since the
        // last reading (its packets never reach a bucket). Each prefix once, at its
        // larger rate.
        let mut rates: BTreeMap<IpNet, (u64, bool, bool)> = BTreeMap::new();
        for s in &r.top {
            rates.insert(s.net, (s.rate, s.empty, s.verified));
        }
        if let Some(p) = &prev {
            for e in live
                .iter()
                .filter(|e| e.is_block() && e.rule.action == ACTION_DROP)
            {
                let before = p
                    .rules
                    .get(&e.net)
                    .filter(|o| {
                        o.rule.created_ns == e.rule.created_ns && o.rule.kind == e.rule.kind
                    })
                    .map_or(0, |o| o.rule.hits);
                let rate = per_sec(e.rule.hits.saturating_sub(before));
                if rate > 0 {
                    let c = rates.entry(e.net).or_insert((0, false, false));
                    c.0 = c.0.max(rate);
                }
            }
        }
        let mut ranked: Vec<(IpNet, u64, bool, bool)> = rates
            .into_iter()
            .map(|(n, (r, e, v))| (n, r, e, v))
            .collect();
        ranked.sort_by_key(|(net, rate, _, _)| (Reverse(*rate), *net));
        ranked.truncate(TOP);
        // SYNs within their limit are answered with cookies while attack mode lasts
        // (as the program decides: enforce mode, `syn-cookies` auto or always).
        let cookies = verdict::cookies_active(r.monitor, r.cookies, || {
            r.ifaces.iter().any(|i| i.state.attack != 0)
        });
        let top = ranked
            .into_iter()
            .map(|(net, rate, empty, verified)| {
                let src = verdict::Source {
                    tracked: true,
                    empty,
                    proven: verified,
                };
                let (verdict, note) = verdict(&live, &net, src, cookies, now);
                SourceView {
                    net,
                    rate,
                    verdict,
                    note,
                }
            })
            .collect();

        let rules_now: BTreeMap<IpNet, RuleEntry> =
            r.rules.iter().map(|e| (e.net, e.clone())).collect();
        let mut new_events = Vec::new();
        if let Some(p) = &prev {
            let texts = list_changes(&p.rules, &rules_now, now);
            let extra = texts.len().saturating_sub(EVENTS_PER_REFRESH);
            for text in texts.into_iter().take(EVENTS_PER_REFRESH) {
                new_events.push(ListEvent {
                    wall: Some(r.wall),
                    text,
                });
            }
            if extra > 0 {
                new_events.push(ListEvent {
                    wall: Some(r.wall),
                    text: format!("... and {extra} more changes"),
                });
            }
        }
        for e in &new_events {
            push_bounded_front(&mut self.events, e.clone(), EVENTS_KEPT);
        }
        let count = |k: u8| live.iter().filter(|e| e.rule.kind == k).count();
        let view = View {
            wall: Some(r.wall),
            interval: self.interval,
            measuring: secs.is_none(),
            daemon: r.daemon,
            monitor: r.monitor,
            attack_syn_rate: r.attack_syn_rate,
            syn_rate,
            syn_history: self.syn_history.iter().copied().collect(),
            drop_rate,
            drop_history: self.drop_history.iter().copied().collect(),
            drops,
            answered_rate: per_sec(total[stat::R_COOKIE_SENT]),
            ifaces,
            top,
            sources: r.sources,
            bans: count(RULE_BAN),
            blocks: count(synguard_common::RULE_BLOCK),
            allows: count(RULE_ALLOW),
            events: self.events.iter().cloned().collect(),
            new_events,
        };
        self.previous = Some(Previous {
            mono_ns: r.mono_ns,
            counters: r.counters,
            rules: rules_now,
        });
        view
    }
}

pub(super) fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

pub(super) fn push_bounded_front<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_back();
    }
    q.push_front(v);
}

/// SYNs in: see the module documentation.
pub(super) fn syns_in(c: &[u64; stat::COUNT]) -> u64 {
    c[stat::N_SYNS] + c[stat::R_BLOCKED] + c[stat::R_BANNED]
}

/// Packets with a drop verdict (dropped, or in monitor mode, would have been).
pub(super) fn dropped(c: &[u64; stat::COUNT]) -> u64 {
    stat::REASON_LIST
        .iter()
        .filter(|r| stat::is_drop(**r))
        .map(|r| c[*r])
        .sum()
}

/// What happens to a source now, decided as `explain` does: the most specific live
/// entry that matches its address, else the state of its bucket.
pub(super) fn verdict(
    live: &[RuleEntry],
    net: &IpNet,
    src: verdict::Source,
    cookies: bool,
    now: u64,
) -> (Verdict, String) {
    use verdict::Verdict as V;
    match verdict::of(live, net.network(), now, src, cookies) {
        V::Allowed(e) => (Verdict::Allowed, format!("allowlist {}", e.net)),
        V::AllowedInside { block, allow } => (
            Verdict::Allowed,
            format!(
                "block {} inside allowlist {}",
                block.net,
                allow.map_or("?".into(), |a| a.net.to_string())
            ),
        ),
        V::Banned(e) | V::Blocked(e) => {
            let v = if e.rule.kind == RULE_BAN {
                Verdict::Banned
            } else {
                Verdict::Blocked
            };
            let inside = if e.net == *net {
                String::new()
            } else {
                format!("as {}, ", e.net)
            };
            let left = if e.rule.expires_ns == 0 {
                "no expiry".to_string()
            } else {
                format!("{} left", left_secs(e.rule.expires_ns, now))
            };
            (v, format!("{inside}{left}"))
        }
        V::Challenged => (Verdict::Challenged, "proven: cookies, no ban".into()),
        V::Limited => (Verdict::Limited, "bucket empty".into()),
        V::Verified => (Verdict::Passing, "verified".into()),
        V::Cookie => (Verdict::Cookie, "until verified".into()),
        V::Passing => (Verdict::Passing, String::new()),
    }
}

/// `expires in 9m58s`, or `no expiry`.
pub(super) fn expiry(expires_ns: u64, now: u64) -> String {
    if expires_ns == 0 {
        return "no expiry".into();
    }
    format!("expires in {}", left_secs(expires_ns, now))
}

/// The time until a stamp, rounded to the nearest second: `9m58s`.
pub(super) fn left_secs(stamp_ns: u64, now: u64) -> String {
    let left = stamp_ns.saturating_sub(now);
    format_duration(Duration::from_secs((left + 500_000_000) / 1_000_000_000))
}

pub(super) fn kind_word(kind: u8) -> (&'static str, &'static str) {
    match kind {
        RULE_ALLOW => ("allowed", "allow"),
        RULE_BAN => ("banned", "ban"),
        _ => ("blocked", "block"),
    }
}

/// The changes between two listings, removals first, each in prefix order.
pub(super) fn list_changes(
    before: &BTreeMap<IpNet, RuleEntry>,
    after: &BTreeMap<IpNet, RuleEntry>,
    now: u64,
) -> Vec<String> {
    let same = |a: &RuleEntry, b: &RuleEntry| {
        a.rule.kind == b.rule.kind && a.rule.created_ns == b.rule.created_ns
    };
    let mut out = Vec::new();
    for (net, old) in before {
        if after.get(net).is_some_and(|e| same(e, old)) {
            continue;
        }
        let (_, noun) = kind_word(old.rule.kind);
        // The daemon removes an entry only once it has expired; one removed before its
        // time was removed by hand (or replaced).
        let how = if old.rule.expired(now) {
            "expired"
        } else {
            "removed"
        };
        out.push(format!("- {net} {noun} {how}"));
    }
    for (net, e) in after {
        if before.get(net).is_some_and(|old| same(e, old)) {
            continue;
        }
        let (verb, _) = kind_word(e.rule.kind);
        let comment = e.comment();
        let mut text = format!("+ {net} {verb}");
        if e.rule.kind == RULE_BAN && e.rule.rate > 0 {
            text.push_str(&format!(" (at {} SYN/s)", e.rule.rate));
        } else if !comment.is_empty() {
            text.push_str(&format!(" ({comment})"));
        }
        if e.rule.kind != RULE_ALLOW {
            text.push_str(&format!(", {}", expiry(e.rule.expires_ns, now)));
        }
        out.push(text);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Output
