//! `synguard report`: the incident report an analyst hands in, from the journal `run`
//! keeps (see [`crate::journal`]).
//!
//! The journal holds what the agent saw, not every packet, so some figures are estimates
//! and say so: a source's SYNs are its kernel rate times the sample interval while it
//! was metered, plus what its ban or block dropped (exact, from the entry's hit counter).
//!
//! An *episode* is a stretch of samples in which the interface was in attack mode, a
//! ban was made, or packets were dropped at 10 per second or more; episodes less than
//! two samples apart are one. Each is named by [`crate::incident::classify`] from what
//! the samples show.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use crate::{
    clock::rfc3339,
    incident::{
        Attack, AttackKind, DropRow, ForgedRow, Peaks, Point, PrefixRow, Report, SourceRow,
        TimelineEntry, Traits, classify,
    },
    journal::{self, Event, Record},
};

/// Drops per second that make a sample part of an episode.
const HOT_DROPS_PER_SEC: f64 = 10.0;
/// Bans listed one by one in the timeline per episode; the rest are summarised.
const BANS_LISTED: usize = 5;

/// A rate sample, summed over interfaces.
struct Sample {
    t: SystemTime,
    secs: f64,
    counters: BTreeMap<String, u64>,
    attack: bool,
    /// The kernel's own peak total SYN rate among interfaces.
    kernel_rate: u64,
    ifaces: Vec<String>,
    sources: u64,
    sources_v6: u64,
    top: Vec<journal::TopSource>,
    top_rules: Vec<journal::TopRule>,
}

impl Sample {
    fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
    /// SYNs that arrived: the ones the limiter saw, plus what bans and blocks dropped
    /// before it (in a SYN flood, those are SYNs too).
    fn offered(&self) -> u64 {
        self.get("syns") + self.get("banned") + self.get("blocked")
    }
    fn dropped(&self) -> u64 {
        DROPS.iter().map(|(n, _)| self.get(n)).sum()
    }
    fn start(&self) -> SystemTime {
        self.t - Duration::from_secs_f64(self.secs)
    }
    /// The SYN rate over the interval, or the kernel's own peak rate if higher.
    fn syn_rate(&self) -> u64 {
        ((self.offered() as f64 / self.secs) as u64).max(self.kernel_rate)
    }
}

/// Drop reasons, and how each drop happens.
const DROPS: [(&str, &str); 6] = [
    (
        "banned",
        "dropped in XDP by an automatic ban (the source went over syn-rate and syn-burst)",
    ),
    ("blocked", "dropped in XDP by the manual blocklist"),
    (
        "syn_limited",
        "over the source's limit, dropped in XDP as its ban was being made",
    ),
    (
        "invalid_flags",
        "SYN+FIN or SYN+RST: never valid, dropped in XDP",
    ),
    (
        "ack_no_flow",
        "in attack mode, ACKs for no connection and with no valid cookie (an ACK flood), \
         dropped in XDP",
    ),
    (
        "rst_no_flow",
        "in attack mode, RSTs for no connection (an RST flood), dropped in XDP",
    ),
];

#[derive(Default)]
struct PerSource {
    /// SYNs its token bucket counted, plus what its ban or block dropped.
    syns: f64,
    /// The bucket's count at the last sample (it restarts when the source's slot is
    /// given to another source after its bucket refilled).
    bucket_syns: u64,
    peak_rate: u64,
    banned: bool,
    blocked: bool,
    /// Seen in a sample taken in attack mode.
    in_attack: bool,
}

impl PerSource {
    /// Add a sample's cumulative bucket count.
    fn metered(&mut self, count: u64) {
        let grew = if count >= self.bucket_syns {
            count - self.bucket_syns
        } else {
            count
        };
        self.syns += grew as f64;
        self.bucket_syns = count;
    }
}

fn samples(records: &[Record]) -> Vec<Sample> {
    records
        .iter()
        .filter_map(|r| {
            let Event::Sample {
                secs,
                interfaces,
                sources,
                top,
                sources_v6,
                top_rules,
                ..
            } = &r.event
            else {
                return None;
            };
            let mut counters = BTreeMap::new();
            for i in interfaces {
                for (k, v) in &i.counters {
                    *counters.entry(k.clone()).or_insert(0) += v;
                }
            }
            Some(Sample {
                t: r.time()?,
                secs: secs.max(0.001),
                counters,
                attack: interfaces.iter().any(|i| i.attack),
                kernel_rate: interfaces.iter().map(|i| i.syn_rate).max().unwrap_or(0),
                ifaces: interfaces
                    .iter()
                    .filter(|i| i.attack || i.counters.values().any(|v| *v > 0))
                    .map(|i| i.name.clone())
                    .collect(),
                sources: *sources,
                sources_v6: *sources_v6,
                top: top.clone(),
                top_rules: top_rules.clone(),
            })
        })
        .collect()
}

/// The covering prefix used to group sources: /24 for IPv4, /48 for IPv6.
fn group(prefix: &str) -> Option<IpNet> {
    let net: IpNet = prefix.parse().ok()?;
    let len = match net.addr() {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 48,
    };
    IpNet::new(net.addr(), len.min(net.prefix_len()))
        .ok()
        .map(|n| n.trunc())
}

/// A ban as the sections read it: when it was made, its prefix, the SYNs and the rate
/// that got it banned.
type Ban<'a> = (SystemTime, &'a str, u64, u64);

/// What the sections share, computed once from the journal.
struct Inputs<'a> {
    records: &'a [Record],
    samples: &'a [Sample],
    /// The first and the last record's time.
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    /// Where the series starts: the first sample's start, else the first record.
    t0: Option<SystemTime>,
    config: BTreeMap<String, String>,
    monitor: bool,
    bans: Vec<Ban<'a>>,
    /// The episodes, as their first and last sample.
    spans: Vec<(usize, usize)>,
    /// Each counter summed over the samples.
    totals: BTreeMap<&'a str, u64>,
    /// Half-open connections removed from the SYN queues.
    purged: u64,
}

impl<'a> Inputs<'a> {
    /// The shared inputs of the records (oldest first) and their samples.
    fn new(records: &'a [Record], samples: &'a [Sample]) -> Self {
        let from = records.first().and_then(Record::time);
        let config = config(records);
        let bans = bans(records);
        Self {
            records,
            samples,
            from,
            to: records.last().and_then(Record::time),
            t0: samples.first().map(Sample::start).or(from),
            monitor: config.get("mode").is_some_and(|m| m == "monitor"),
            config,
            spans: episodes(samples, &bans),
            bans,
            totals: totals(samples),
            purged: purged(records),
        }
    }

    /// Seconds from the series' start to `t` (0 before it, or with no start).
    fn since(&self, t: SystemTime) -> f64 {
        self.t0
            .and_then(|z| t.duration_since(z).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// A counter's total over the samples.
    fn total(&self, name: &str) -> u64 {
        self.totals.get(name).copied().unwrap_or(0)
    }
}

/// Build the report from journal records (oldest first); `bad` lines did not parse.
pub fn build(records: &[Record], bad: usize, input: &str) -> Report {
    let samples = samples(records);
    let j = Inputs::new(records, &samples);
    let per = per_source(&j);
    let proven = proven_sources(records);
    let attacks: Vec<Attack> = j
        .spans
        .iter()
        .map(|&span| attack(&j, span, &proven))
        .collect();
    let timeline = timeline(&j, &attacks);
    let drops = drops(&j);
    let recommendations = recommend(&attacks, &j.totals, &j.config, j.monitor);
    Report {
        origin: "journal",
        input: input.to_string(),
        from: j.from.map(rfc3339),
        to: j.to.map(rfc3339),
        summary: summary(&j, &attacks, &drops),
        attacks,
        timeline,
        top_sources: top_sources(&per),
        forged: forged(records),
        top_prefixes: top_prefixes(&per),
        peaks: peaks(&j),
        drops,
        impact: impact(&j),
        actions: actions(&j),
        recommendations,
        warnings: warnings(bad),
        series: series(&j),
    }
}

/// The warnings: journal lines that could not be read.
fn warnings(bad: usize) -> Vec<String> {
    let mut warnings = Vec::new();
    if bad > 0 {
        warnings.push(format!(
            "{bad} journal lines could not be read (a line torn by a crash, or written by \
             another version) and were skipped"
        ));
    }
    warnings
}

/// The settings in force (the last start's config, then changes).
fn config(records: &[Record]) -> BTreeMap<String, String> {
    let mut config: BTreeMap<String, String> = BTreeMap::new();
    for r in records {
        match &r.event {
            Event::Start { config: c, .. } => config = c.clone(),
            Event::Config { key, new, .. } => {
                config.insert(key.clone(), new.clone());
            }
            _ => {}
        }
    }
    config
}

/// The series of rates, for the chart.
fn series(j: &Inputs) -> Vec<Point> {
    // Each sample is a rate over its interval: drawn as a step over that interval.
    j.samples
        .iter()
        .flat_map(|s| {
            let p = |t| Point {
                t,
                syn_rate: s.offered() as f64 / s.secs,
                drop_rate: s.dropped() as f64 / s.secs,
                answered_rate: s.get("cookie_sent") as f64 / s.secs,
                attack: s.attack,
            };
            [p(j.since(s.start())), p(j.since(s.t))]
        })
        .collect()
}

/// The peaks: of the samples, of attack modes and of bans.
fn peaks(j: &Inputs) -> Peaks {
    let mut peaks = Peaks::default();
    for s in j.samples {
        let rate = s.syn_rate();
        if rate > peaks.syn_rate {
            peaks.syn_rate = rate;
            peaks.syn_rate_at = Some(rfc3339(s.t));
            peaks.syn_rate_how = "the journal's rate sample ending then".into();
        }
        let d = (s.dropped() as f64 / s.secs) as u64;
        if d > peaks.drop_rate {
            peaks.drop_rate = d;
            peaks.drop_rate_at = Some(rfc3339(s.t));
        }
    }
    for r in j.records {
        if let Event::AttackOff { peak_syn_rate, .. } = &r.event
            && *peak_syn_rate > peaks.syn_rate
        {
            peaks.syn_rate = *peak_syn_rate;
            peaks.syn_rate_at = r.time().map(rfc3339);
            peaks.syn_rate_how =
                "the kernel's busiest 100 ms of the attack mode that ended then".into();
        }
    }
    // A ban records the source's rate when it was made: a peak the samples average away.
    for (t, _, _, rate) in &j.bans {
        if *rate > peaks.syn_rate {
            peaks.syn_rate = *rate;
            peaks.syn_rate_at = Some(rfc3339(*t));
            peaks.syn_rate_how = "one source's rate when it was banned".into();
        }
    }
    peaks
}

/// Bans by time, for episodes and verdicts.
fn bans(records: &[Record]) -> Vec<Ban<'_>> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Ban {
                prefix,
                syns,
                syn_rate,
                ..
            } => Some((r.time()?, prefix.as_str(), *syns, *syn_rate)),
            _ => None,
        })
        .collect()
}

/// Episodes: runs of hot samples, merged across one-sample gaps, as their first and last
/// sample.
fn episodes(samples: &[Sample], bans: &[Ban]) -> Vec<(usize, usize)> {
    let hot: Vec<bool> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let lo = if i == 0 { s.start() } else { samples[i - 1].t };
            s.attack
                || s.dropped() as f64 / s.secs >= HOT_DROPS_PER_SEC
                || bans.iter().any(|(t, ..)| *t > lo && *t <= s.t)
        })
        .collect();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, h) in hot.iter().enumerate() {
        if !h {
            continue;
        }
        match spans.last_mut() {
            Some((_, end)) if i <= *end + 2 => *end = i,
            _ => spans.push((i, i)),
        }
    }
    spans
}

/// Per-source estimates over the whole report.
fn per_source(j: &Inputs) -> HashMap<String, PerSource> {
    let mut per: HashMap<String, PerSource> = HashMap::new();
    for s in j.samples {
        for t in &s.top {
            let e = per.entry(t.source.clone()).or_default();
            e.metered(t.syns);
            e.peak_rate = e.peak_rate.max(t.syn_rate);
            e.in_attack |= s.attack;
        }
        for r in &s.top_rules {
            let e = per.entry(r.prefix.clone()).or_default();
            e.syns += r.hits as f64;
            e.peak_rate = e.peak_rate.max((r.hits as f64 / s.secs) as u64);
            if r.kind == "auto" {
                e.banned = true;
            } else {
                e.blocked = true;
            }
        }
    }
    for (_, prefix, syns, rate) in &j.bans {
        let e = per.entry((*prefix).to_string()).or_default();
        e.banned = true;
        e.peak_rate = e.peak_rate.max(*rate);
        e.syns = e.syns.max(*syns as f64);
    }
    per
}

/// Sources whose address proved itself while SYNs in its name flooded (see `run`'s
/// challenges and the bans it lifted): how each proved itself.
fn proven_sources(records: &[Record]) -> HashMap<&str, String> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Challenge { prefix, proof, .. } => Some((prefix.as_str(), proof.clone())),
            Event::Unban { prefix, why, .. } if why == "proven" => Some((
                prefix.as_str(),
                "has connections to this machine".to_string(),
            )),
            _ => None,
        })
        .collect()
}

/// The forged sources: each challenge, and each ban lifted because its source proved
/// itself, in journal order (records without a readable time are left out, as in the
/// timeline).
fn forged(records: &[Record]) -> Vec<ForgedRow> {
    records
        .iter()
        .filter(|r| r.time().is_some())
        .filter_map(|r| match &r.event {
            Event::Unban { prefix, why, .. } if why == "proven" => Some(ForgedRow {
                source: prefix.clone(),
                why: "banned, then it proved it owns its address (it has connections to \
                      the server): the ban was lifted"
                    .into(),
            }),
            Event::Challenge {
                prefix,
                syns,
                syn_rate,
                proof,
                ..
            } => Some(ForgedRow {
                source: prefix.clone(),
                why: format!(
                    "it {proof}, yet SYNs in its name went over its limit ({syns} SYNs at \
                     {syn_rate} SYN/s): challenged with cookies, not banned"
                ),
            }),
            _ => None,
        })
        .collect()
}

/// One attack: the episode of samples `a..=b`, classified, with its evidence.
fn attack(j: &Inputs, (a, b): (usize, usize), proven: &HashMap<&str, String>) -> Attack {
    let eps = &j.samples[a..=b];
    let start = eps[0].start();
    let end = eps[eps.len() - 1].t;
    let syns: u64 = eps.iter().map(Sample::offered).sum();
    // In attack mode quiet sources never reach the table: the sketch counts them
    // instead, about once per source per 134 ms (a source active across windows
    // counts again, which only lowers its SYNs per source).
    let sketch_new: u64 = eps.iter().map(|s| s.get("sketch_new")).sum();
    let sketch_new_v6: u64 = eps.iter().map(|s| s.get("sketch_new_v6")).sum();
    let new_sources: u64 = eps.iter().map(|s| s.get("sources_new")).sum::<u64>() + sketch_new;
    let peak_sources = eps.iter().map(|s| s.sources).max().unwrap_or(0);
    let ep_bans: Vec<_> = j
        .bans
        .iter()
        .filter(|(t, ..)| *t >= start - Duration::from_secs(1) && *t <= end)
        .collect();
    let mine = episode_sources(eps, &ep_bans);
    // Ties go to the lowest source, so the same journal always names the same one.
    let top = mine
        .iter()
        .max_by(|x, y| x.1.syns.total_cmp(&y.1.syns).then_with(|| y.0.cmp(x.0)))
        .map(|(k, v)| ((*k).to_string(), (v.syns as u64).min(syns)));
    let sources = new_sources
        .max(mine.len() as u64)
        .max(peak_sources.min(new_sources.max(1)));
    let v6_share = if sketch_new > 0 {
        sketch_new_v6 as f64 / sketch_new as f64
    } else {
        eps.iter()
            .max_by_key(|s| s.sources)
            .filter(|s| s.sources > 0)
            .map_or(0.0, |s| s.sources_v6 as f64 / s.sources as f64)
    };
    let attack_mode = eps.iter().any(|s| s.attack);
    let completed = attack_mode.then(|| {
        eps.iter()
            .map(|s| s.get("verified") + s.get("syn_verified"))
            .sum::<u64>()
    });
    let top_forged = top
        .as_ref()
        .and_then(|(src, _)| proven.get(src.as_str()))
        .cloned();
    let traits = Traits {
        syns,
        sources,
        top_source: top.clone(),
        ipv6_syns: (syns as f64 * v6_share) as u64,
        completed,
        top_forged,
    };
    let (kind, mut evidence) = classify(&traits);
    more_evidence(&mut evidence, eps, ep_bans.len(), peak_sources, v6_share);
    Attack {
        kind,
        kind_label: kind.label(),
        start: rfc3339(start),
        end: rfc3339(end),
        duration_secs: end.duration_since(start).map_or(0.0, |d| d.as_secs_f64()),
        target: target(eps),
        syns,
        peak_syn_rate: eps.iter().map(Sample::syn_rate).max().unwrap_or(0),
        sources,
        evidence,
    }
}

/// Sources in an episode, with estimated SYNs.
fn episode_sources<'e>(eps: &'e [Sample], ep_bans: &[&Ban<'e>]) -> HashMap<&'e str, PerSource> {
    let mut mine: HashMap<&str, PerSource> = HashMap::new();
    for s in eps {
        for t in &s.top {
            mine.entry(&t.source).or_default().metered(t.syns);
        }
        for r in &s.top_rules {
            mine.entry(&r.prefix).or_default().syns += r.hits as f64;
        }
    }
    for (_, p, n, _) in ep_bans {
        let e = mine.entry(p).or_default();
        e.syns = e.syns.max(*n as f64);
    }
    mine
}

/// An attack's evidence beyond its classification: its bans, how many sources, cookies.
fn more_evidence(
    evidence: &mut Vec<String>,
    eps: &[Sample],
    bans: usize,
    peak_sources: u64,
    v6_share: f64,
) {
    if bans > 0 {
        evidence.push(format!(
            "{} source{} banned by the per-source limit",
            bans,
            if bans == 1 { "" } else { "s" }
        ));
    }
    if peak_sources > 1000 {
        evidence.push(format!(
            "up to {peak_sources} sources tracked at once ({:.0} % IPv6)",
            v6_share * 100.0
        ));
    }
    let cookies: u64 = eps.iter().map(|s| s.get("cookie_sent")).sum();
    if cookies > 0 {
        let verified: u64 = eps.iter().map(|s| s.get("verified")).sum();
        evidence.push(format!(
            "{cookies} SYNs answered with cookies, {verified} sources came back with a \
             valid ACK"
        ));
    }
}

/// An attack's target: the interfaces its samples saw it on.
fn target(eps: &[Sample]) -> String {
    let mut ifaces: Vec<String> = eps.iter().flat_map(|s| s.ifaces.clone()).collect();
    ifaces.sort();
    ifaces.dedup();
    if ifaces.is_empty() {
        "?".into()
    } else {
        ifaces.join(", ")
    }
}

/// The timeline: the journal's events, and where each flood begins and ends.
fn timeline(j: &Inputs, attacks: &[Attack]) -> Vec<TimelineEntry> {
    let (samples, spans) = (j.samples, &j.spans);
    let mut timeline = Vec::new();
    let mut listed_bans: HashMap<usize, usize> = HashMap::new();
    let mut skipped_bans: HashMap<usize, usize> = HashMap::new();
    let episode_of = |t: SystemTime| {
        spans.iter().position(|&(a, b)| {
            t >= samples[a].start() - Duration::from_secs(1) && t <= samples[b].t
        })
    };
    let mut flagged = vec![false; spans.len()];
    for r in j.records {
        let Some(t) = r.time() else { continue };
        // Mark an episode's start and end around the events.
        for (i, &(a, b)) in spans.iter().enumerate() {
            if !flagged[i] && t >= samples[a].start() {
                flagged[i] = true;
                timeline.push(TimelineEntry {
                    t: rfc3339(samples[a].start()),
                    what: format!(
                        "flood begins: {} ({} SYN/s at peak)",
                        attacks[i].kind_label, attacks[i].peak_syn_rate
                    ),
                });
                let _ = b;
            }
        }
        if let Event::Ban { .. } = &r.event {
            let ep = episode_of(t).unwrap_or(usize::MAX);
            let n = listed_bans.entry(ep).or_default();
            if *n >= BANS_LISTED {
                *skipped_bans.entry(ep).or_default() += 1;
                continue;
            }
            *n += 1;
        }
        let Some(what) = event_text(&r.event) else {
            continue;
        };
        timeline.push(TimelineEntry {
            t: rfc3339(t),
            what,
        });
    }
    for (i, &(_, b)) in spans.iter().enumerate() {
        let extra = skipped_bans.get(&i).copied().unwrap_or(0);
        let mut what = if b + 1 == samples.len() {
            "the journal ends during the flood".to_string()
        } else {
            "flood over: no bans, attack mode off, drops under 10/s".to_string()
        };
        if extra > 0 {
            what = format!("{what}; {extra} more bans in this flood, not listed");
        }
        timeline.push(TimelineEntry {
            t: rfc3339(samples[b].t),
            what,
        });
    }
    timeline.sort_by(|a, b| a.t.cmp(&b.t));
    timeline
}

/// A journal event as the timeline tells it (samples are not told).
fn event_text(event: &Event) -> Option<String> {
    let what = match event {
        Event::Start {
            interfaces,
            adopted,
            ..
        } => format!(
            "synguard started on {}{}",
            interfaces.join(", "),
            if *adopted {
                " (adopted the pinned program: no gap)"
            } else {
                ""
            }
        ),
        Event::Stop { reason, kept } => format!(
            "synguard stopped ({reason}){}",
            if *kept {
                "; protection left in place"
            } else {
                ""
            }
        ),
        Event::Interface { name, what } => format!("{name}: {what}"),
        Event::Ban {
            prefix,
            syns,
            syn_rate,
            until,
            ..
        } => format!("banned {prefix} after {syns} SYNs at {syn_rate} SYN/s, until {until}"),
        Event::Unban { prefix, why, .. } if why == "proven" => {
            format!(
                "ban on {prefix} lifted: it proved it owns its address, so the SYNs that \
                 banned it were most likely forged"
            )
        }
        Event::Unban {
            prefix,
            why,
            kind,
            hits,
        } => format!("{kind} entry {prefix} {why}; it dropped {hits} packets"),
        Event::Challenge {
            prefix,
            syn_rate,
            proof,
            ..
        } => {
            format!(
                "{prefix} {proof}, yet SYNs in its name went over its limit at {syn_rate} \
                 SYN/s: most likely forged; challenged with cookies, not banned"
            )
        }
        Event::ListChange {
            list,
            prefix,
            change,
            comment,
        } => format!(
            "{list}list: {prefix} {change} by hand{}",
            if comment.is_empty() {
                String::new()
            } else {
                format!(" ({comment})")
            }
        ),
        Event::AttackOn {
            interface,
            challenged: true,
            ..
        } => format!(
            "{interface}: attack mode on: a proven source over its limit (its SYNs most \
             likely forged): SYNs answered with cookies in XDP"
        ),
        Event::AttackOn {
            interface,
            syn_rate,
            ..
        } => format!(
            "{interface}: attack mode on at {syn_rate} SYN/s: SYNs answered with cookies \
             in XDP"
        ),
        Event::AttackOff {
            interface,
            peak_syn_rate,
            lasted_secs,
        } => format!(
            "{interface}: attack mode off after {lasted_secs} s (peak {peak_syn_rate} \
             SYN/s)"
        ),
        Event::Config { key, old, new } => format!("config {key}: {old} → {new}"),
        Event::Purge {
            prefix,
            connections,
        } if prefix == "all" => format!(
            "attack mode: removed the {connections} half-open connections queued so far \
             from the SYN queues"
        ),
        Event::Purge {
            prefix,
            connections,
        } if prefix == "stale" => format!(
            "removed {connections} half-open connections the flood left in the SYN queues \
             (tcp_syncookies back to 0)"
        ),
        Event::Pressure { on: true, why } => format!(
            "{why}: tcp_syncookies (and tcp_timestamps) set for SYN cookies answered in XDP"
        ),
        Event::Pressure { on: false, why } => {
            format!("{why}: tcp_syncookies put back (tcp_timestamps a minute later)")
        }
        Event::Purge {
            prefix,
            connections,
        } => format!("removed {connections} half-open connections of {prefix} from the SYN queues"),
        Event::Sample { .. } => return None,
    };
    Some(what)
}

/// Top sources, with what synguard did to each.
fn top_sources(per: &HashMap<String, PerSource>) -> Vec<SourceRow> {
    let mut ranked: Vec<(&String, &PerSource)> = per.iter().collect();
    ranked.sort_by(|a, b| b.1.syns.total_cmp(&a.1.syns).then(a.0.cmp(b.0)));
    ranked
        .iter()
        .take(10)
        .map(|(src, p)| SourceRow {
            source: (*src).clone(),
            syns: p.syns as u64,
            peak_syn_rate: p.peak_rate,
            verdict: if p.blocked {
                "blocked (manual)"
            } else if p.banned {
                "banned (auto)"
            } else if p.in_attack {
                "answered with cookies (attack mode)"
            } else {
                "passed (within its limit)"
            }
            .into(),
        })
        .collect()
}

/// Top prefixes: the sources grouped by their covering prefix (see [`group`]).
fn top_prefixes(per: &HashMap<String, PerSource>) -> Vec<PrefixRow> {
    let mut groups: BTreeMap<IpNet, (u64, f64)> = BTreeMap::new();
    for (src, p) in per {
        if let Some(g) = group(src) {
            let e = groups.entry(g).or_default();
            e.0 += 1;
            e.1 += p.syns;
        }
    }
    let mut top_prefixes: Vec<PrefixRow> = groups
        .into_iter()
        .map(|(g, (n, syns))| PrefixRow {
            prefix: g.to_string(),
            sources: n,
            syns: syns as u64,
        })
        .collect();
    top_prefixes.sort_by(|a, b| b.syns.cmp(&a.syns).then(a.prefix.cmp(&b.prefix)));
    top_prefixes.truncate(10);
    top_prefixes
}

/// Totals: each counter summed over the samples.
fn totals(samples: &[Sample]) -> BTreeMap<&str, u64> {
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for s in samples {
        for (k, v) in &s.counters {
            *totals.entry(k.as_str()).or_default() += v;
        }
    }
    totals
}

/// The drop rows: packets by drop reason, then those answered with cookies and those
/// monitor mode passed.
fn drops(j: &Inputs) -> Vec<DropRow> {
    let mut drops: Vec<DropRow> = DROPS
        .iter()
        .filter(|(n, _)| j.total(n) > 0)
        .map(|(n, how)| DropRow {
            reason: (*n).into(),
            packets: j.total(n),
            how: (*how).into(),
        })
        .collect();
    if j.total("cookie_sent") > 0 {
        drops.push(DropRow {
            reason: "cookie_sent".into(),
            packets: j.total("cookie_sent"),
            how: "answered in XDP with a SYN cookie: not dropped, but the SYN never reached \
                  the server's SYN queue"
                .into(),
        });
    }
    if j.total("monitor_passed") > 0 {
        drops.push(DropRow {
            reason: "monitor_passed".into(),
            packets: j.total("monitor_passed"),
            how: "would have been dropped, passed because mode = monitor".into(),
        });
    }
    drops
}

/// Half-open connections the purges removed from the SYN queues.
fn purged(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| match &r.event {
            Event::Purge { connections, .. } => *connections,
            _ => 0,
        })
        .sum()
}

/// Impact the agent can see.
fn impact(j: &Inputs) -> Vec<String> {
    let (samples, spans, purged) = (j.samples, &j.spans, j.purged);
    let mut impact = Vec::new();
    let attack_secs: f64 = spans
        .iter()
        .map(|&(a, b)| samples[a..=b].iter().map(|s| s.secs).sum::<f64>())
        .sum();
    let passed_in: u64 = spans
        .iter()
        .map(|&(a, b)| {
            samples[a..=b]
                .iter()
                .map(|s| s.get("syn_passed") + s.get("syn_verified"))
                .sum::<u64>()
        })
        .sum();
    if !spans.is_empty() {
        impact.push(format!(
            "during the flood{} {passed_in} SYNs from sources within their limit reached the \
             server ({:.0} per second)",
            if spans.len() > 1 { "s" } else { "" },
            passed_in as f64 / attack_secs.max(1.0)
        ));
    }
    if j.total("verified") > 0 {
        impact.push(format!(
            "{} clients proved they were real by completing a cookie handshake; their {} \
             later SYNs went straight to the server",
            j.total("verified"),
            j.total("syn_verified")
        ));
    }
    if j.total("cookie_fallback") > 0 {
        impact.push(format!(
            "{} SYNs in attack mode were passed to the kernel's own handling (no cookie could \
             be made)",
            j.total("cookie_fallback")
        ));
    }
    if j.total("syn_untracked") > 0 {
        impact.push(format!(
            "{} SYNs passed unmetered because the sources table had no free slot for their \
             source",
            j.total("syn_untracked")
        ));
    }
    if purged > 0 {
        impact.push(format!(
            "{purged} half-open connections (of banned sources, and those queued when attack \
             mode began) were removed from the SYN queues, making room for real clients"
        ));
    }
    if j.monitor && j.total("monitor_passed") > 0 {
        impact.push(format!(
            "mode was monitor: the {} packets synguard would have dropped reached the server",
            j.total("monitor_passed")
        ));
    }
    if !spans.is_empty() {
        impact.push(
            "not visible to synguard: whether the server answered those clients in time \
             (see the web server's logs, or record a capture and run `synguard analyze`)"
                .into(),
        );
    }
    impact
}

/// Actions synguard took, and those taken by hand.
fn actions(j: &Inputs) -> Vec<String> {
    let (records, bans, purged) = (j.records, &j.bans, j.purged);
    let mut actions = Vec::new();
    if !bans.is_empty() {
        actions.push(format!(
            "{} automatic ban{} (ban-for {})",
            bans.len(),
            if bans.len() == 1 { "" } else { "s" },
            j.config.get("ban-for").map_or("?", String::as_str)
        ));
    }
    let attack_ons = records
        .iter()
        .filter(|r| matches!(r.event, Event::AttackOn { .. }))
        .count();
    if attack_ons > 0 {
        actions.push(format!(
            "attack mode {attack_ons} time{}: SYNs answered with SYN cookies in XDP, \
             net.ipv4.tcp_syncookies managed",
            if attack_ons == 1 { "" } else { "s" }
        ));
    }
    let manual = |change: &str| {
        records
            .iter()
            .filter(|r| matches!(&r.event, Event::ListChange { change: c, .. } if c == change))
            .count()
    };
    if manual("added") + manual("removed") > 0 {
        actions.push(format!(
            "{} list entries added and {} removed by hand",
            manual("added"),
            manual("removed")
        ));
    }
    let changes = records
        .iter()
        .filter(|r| matches!(r.event, Event::Config { .. }))
        .count();
    if changes > 0 {
        actions.push(format!("{changes} config changes (see the timeline)"));
    }
    if purged > 0 {
        actions.push(format!("{purged} half-open connections purged"));
    }
    actions
}

/// The summary: what the journal covers, the floods, and what synguard did about them.
fn summary(j: &Inputs, attacks: &[Attack], drops: &[DropRow]) -> Vec<String> {
    let mut summary = Vec::new();
    match (j.from, j.to) {
        (Some(f), Some(t)) => summary.push(format!(
            "The journal covers {} to {} ({} samples).",
            rfc3339(f),
            rfc3339(t),
            j.samples.len()
        )),
        _ => summary.push("The journal holds no records for this period.".into()),
    }
    if attacks.is_empty() {
        summary.push("No SYN flood was seen.".into());
    } else {
        summary.push(format!(
            "{} SYN flood{} seen: {}.",
            attacks.len(),
            if attacks.len() == 1 { " was" } else { "s were" },
            attacks
                .iter()
                .map(|a| {
                    let who = match a.kind {
                        AttackKind::SingleSource | AttackKind::SpoofedSource => a
                            .evidence
                            .first()
                            .and_then(|e| e.split_whitespace().next())
                            .map_or(String::new(), |s| format!(" from {s}")),
                        _ => format!(" from {} sources", a.sources),
                    };
                    format!(
                        "{}{who} on {} at {}, peak {} SYN/s, {:.0} s",
                        a.kind_label, a.target, a.start, a.peak_syn_rate, a.duration_secs
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        ));
        let dropped: u64 = drops
            .iter()
            .filter(|d| d.reason != "cookie_sent" && d.reason != "monitor_passed")
            .map(|d| d.packets)
            .sum();
        summary.push(format!(
            "synguard dropped {dropped} packets in XDP and answered {} SYNs with cookies; {} \
             SYNs from sources within their limits reached the server.",
            j.total("cookie_sent"),
            j.total("syn_passed") + j.total("syn_verified")
        ));
    }
    summary
}

fn recommend(
    attacks: &[Attack],
    totals: &BTreeMap<&str, u64>,
    config: &BTreeMap<String, String>,
    monitor: bool,
) -> Vec<String> {
    let total = |n: &str| totals.get(n).copied().unwrap_or(0);
    let cfg = |k: &str| config.get(k).map_or("?", String::as_str);
    let mut out = Vec::new();
    let kinds = |k: AttackKind| attacks.iter().any(|a| a.kind == k);
    if monitor && !attacks.is_empty() {
        out.push(
            "mode is monitor, so nothing was dropped: `synguard config set mode enforce`".into(),
        );
    }
    if kinds(AttackKind::SpoofedSource) {
        out.push(
            "do not block the address a spoofed flood carries: it belongs to a real host \
             (it proved it), and a block would cut it off, which is what the flood is after; \
             synguard answers the SYNs in its name with cookies, which only that host \
             completes. The packets came from elsewhere: the network that delivers them to \
             you can trace where they enter"
                .into(),
        );
    }
    if kinds(AttackKind::SingleSource) {
        out.push(
            "a single source was banned automatically; if it comes back, block it for longer \
             (`synguard block add ADDR --for 1d --comment ...`) and report it to its network's \
             abuse contact"
                .into(),
        );
    }
    if kinds(AttackKind::ForgedSources) || kinds(AttackKind::Ipv6Rotation) {
        if cfg("syn-cookies") == "off" {
            out.push(
                "forged sources cannot be stopped by address: set `syn-cookies auto` so \
                 attack mode answers SYNs with cookies"
                    .into(),
            );
        } else {
            out.push(format!(
                "forged sources cannot be stopped by address; SYN cookies in attack mode \
                 (syn-cookies {}) are the defence: keep them on",
                cfg("syn-cookies")
            ));
        }
    }
    if kinds(AttackKind::Ipv6Rotation) && cfg("ipv6-prefix") != "48" {
        out.push(format!(
            "the IPv6 sources rotate inside their prefixes: `synguard config set ipv6-prefix \
             48` meters a whole /48 as one source (now /{})",
            cfg("ipv6-prefix")
        ));
    }
    if kinds(AttackKind::Distributed) {
        out.push(
            "many real sources: consider a lower syn-rate, and blocking the top prefixes \
             above for a while"
                .into(),
        );
    }
    if kinds(AttackKind::ConnectionFlood) {
        out.push(
            "the handshakes completed, so this was a connection flood, which SYN limits do not \
             stop: limit connections per client in the web server (nginx `limit_conn`) and \
             shorten idle timeouts"
                .into(),
        );
    }
    if attacks.iter().any(|a| a.kind != AttackKind::SingleSource) && total("cookie_sent") == 0 {
        out.push(format!(
            "attack mode never engaged: if floods like this hurt, lower attack-syn-rate (now \
             {}) towards a few times the normal peak SYN rate",
            cfg("attack-syn-rate")
        ));
    }
    if total("syn_untracked") > 0 {
        out.push(
            "new sources found no free slot in the sources table (both slots of their set held \
             sources spending their bursts): aggregate more (`ipv4-prefix 24`, `ipv6-prefix \
             48`) so that fewer, larger sources share it"
                .into(),
        );
    }
    if total("ban_table_full") > 0 {
        out.push(
            "the rules table filled up: shorten ban-for or block whole prefixes by hand".into(),
        );
    }
    if total("events_lost") > 0 {
        out.push(
            "events were lost: the journal misses some bans (the sweep found them later)".into(),
        );
    }
    if attacks.is_empty() {
        out.push("nothing to do".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{IfaceSample, TopRule, TopSource};

    fn at(s: u64) -> String {
        humantime::format_rfc3339_millis(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000 + s),
        )
        .to_string()
    }

    fn sample(s: u64, counters: &[(&str, u64)], attack: bool) -> Record {
        Record {
            t: at(s),
            event: Event::Sample {
                secs: 5.0,
                interfaces: vec![IfaceSample {
                    name: "eth0".into(),
                    counters: counters.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
                    attack,
                    syn_rate: 0,
                }],
                sources: 3,
                verified: 0,
                bans: 0,
                top: vec![],
                sources_v6: 0,
                top_rules: vec![],
            },
        }
    }

    #[test]
    fn a_single_source_flood_is_named_with_its_source() {
        let mut recs = vec![Record {
            t: at(0),
            event: Event::Start {
                version: "t".into(),
                interfaces: vec!["eth0".into()],
                config: [("syn-rate".to_string(), "200".to_string())].into(),
                adopted: false,
            },
        }];
        recs.push(sample(5, &[("syn_passed", 50), ("syns", 50)], false));
        recs.push(Record {
            t: at(7),
            event: Event::Ban {
                prefix: "203.0.113.66/32".into(),
                interface: "eth0".into(),
                syns: 101,
                syn_rate: 150_000,
                until: at(607),
            },
        });
        let mut s = sample(
            10,
            &[("syns", 150), ("banned", 700_000), ("syn_passed", 149)],
            false,
        );
        if let Event::Sample { top_rules, top, .. } = &mut s.event {
            top_rules.push(TopRule {
                prefix: "203.0.113.66/32".into(),
                kind: "auto".into(),
                hits: 700_000,
            });
            top.push(TopSource {
                source: "198.51.100.10/32".into(),
                syn_rate: 10,
                syns: 40,
            });
        }
        recs.push(s);
        recs.push(sample(15, &[("syns", 50), ("syn_passed", 50)], false));
        recs.push(sample(20, &[("syns", 50), ("syn_passed", 50)], false));
        recs.push(sample(25, &[("syns", 50), ("syn_passed", 50)], false));
        let r = build(&recs, 1, "/var/lib/synguard");
        assert_eq!(r.attacks.len(), 1, "{:#?}", r.attacks);
        let a = &r.attacks[0];
        assert_eq!(a.kind, AttackKind::SingleSource);
        assert!(a.evidence[0].starts_with("203.0.113.66/32 sent"), "{a:?}");
        assert_eq!(r.top_sources[0].source, "203.0.113.66/32");
        assert_eq!(r.top_sources[0].verdict, "banned (auto)");
        assert!(
            r.summary[1].contains("from 203.0.113.66/32"),
            "{:?}",
            r.summary
        );
        assert_eq!(r.drops[0].reason, "banned");
        assert_eq!(r.peaks.syn_rate, 150_000);
        assert!(
            r.timeline
                .iter()
                .any(|e| e.what.starts_with("banned 203.0.113.66"))
        );
        assert!(
            r.timeline.iter().any(|e| e.what.starts_with("flood over")),
            "{:?}",
            r.timeline
        );
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(r.series.len(), 10);
        let md = r.to_markdown(Some("x.svg"));
        assert!(md.contains("**single source**"), "{md}");
        assert!(md.contains("![SYN rate"), "{md}");
    }

    /// Two sources banned with the same SYNs: the report names the same one every time
    /// (the lower), not whichever a hash map lists first.
    #[test]
    fn a_tie_names_the_same_source_every_run() {
        let mut recs = vec![sample(5, &[("syns", 50), ("syn_passed", 50)], false)];
        for (t, prefix) in [(7, "203.0.113.67/32"), (8, "203.0.113.66/32")] {
            recs.push(Record {
                t: at(t),
                event: Event::Ban {
                    prefix: prefix.into(),
                    interface: "eth0".into(),
                    syns: 101,
                    syn_rate: 150_000,
                    until: at(607),
                },
            });
        }
        recs.push(sample(10, &[("syns", 250), ("syn_passed", 48)], false));
        recs.push(sample(15, &[("syns", 50), ("syn_passed", 50)], false));
        let first = format!("{:?}", build(&recs, 0, "x").attacks);
        assert!(first.contains("203.0.113.66/32"), "{first}");
        for _ in 0..30 {
            assert_eq!(format!("{:?}", build(&recs, 0, "x").attacks), first);
        }
    }

    /// In attack mode a forged flood's sources skip the sources table (the sketch, see
    /// `sources::sketch_count`): the report counts them from `sketch_new`, and tells IPv6
    /// rotation from `sketch_new_v6`.
    #[test]
    fn forged_sources_counted_by_the_sketch() {
        for (v6, kind) in [
            (0, AttackKind::ForgedSources),
            (350_000, AttackKind::Ipv6Rotation),
        ] {
            let mut recs = Vec::new();
            recs.push(sample(5, &[("syns", 100), ("syn_passed", 100)], false));
            for i in 0..4 {
                recs.push(sample(
                    10 + 5 * i,
                    &[
                        ("syns", 500_000),
                        ("sources_new", 12),
                        ("sketch_new", 400_000),
                        ("sketch_new_v6", v6),
                        ("cookie_sent", 499_000),
                        ("syn_verified", 300),
                    ],
                    true,
                ));
            }
            recs.push(sample(30, &[("syns", 100), ("syn_passed", 100)], false));
            let r = build(&recs, 0, "x");
            assert_eq!(r.attacks.len(), 1);
            assert_eq!(r.attacks[0].kind, kind, "{:?}", r.attacks);
        }
    }

    #[test]
    fn forged_sources_in_attack_mode() {
        let mut recs = Vec::new();
        recs.push(sample(5, &[("syns", 100), ("syn_passed", 100)], false));
        for i in 0..4 {
            let mut s = sample(
                10 + 5 * i,
                &[
                    ("syns", 500_000),
                    ("sources_new", 480_000),
                    ("cookie_sent", 499_000),
                    ("verified", 20),
                    ("syn_verified", 300),
                ],
                true,
            );
            if let Event::Sample { sources, .. } = &mut s.event {
                *sources = 900_000;
            }
            recs.push(s);
        }
        recs.push(sample(30, &[("syns", 100), ("syn_passed", 100)], false));
        let r = build(&recs, 0, "x");
        assert_eq!(r.attacks.len(), 1);
        assert_eq!(
            r.attacks[0].kind,
            AttackKind::ForgedSources,
            "{:?}",
            r.attacks
        );
        assert!(r.recommendations.iter().any(|x| x.contains("SYN cookies")));
        assert_eq!(r.series.iter().filter(|p| p.attack).count(), 8);
    }

    #[test]
    fn a_quiet_journal_reports_no_attack() {
        let recs: Vec<Record> = (1..20)
            .map(|i| sample(5 * i, &[("syns", 500), ("syn_passed", 500)], false))
            .collect();
        let r = build(&recs, 0, "x");
        assert!(r.attacks.is_empty());
        assert_eq!(r.recommendations, ["nothing to do"]);
        assert!(r.to_markdown(None).contains("No SYN flood was detected"));
    }
}
