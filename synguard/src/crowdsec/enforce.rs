//! `run`'s side of the link: the decisions held, put into and lifted from the kernel's
//! tables; which of `run`'s own bans are pushed; the link's state for `status`.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use synguard_common::{
    ACTION_DROP, ACTION_PASS, PROOF_COOKIE, PROOF_HANDSHAKE, PROOF_SOCKET, RULE_CROWDSEC, Rule,
};
use tokio::sync::mpsc;

use super::{
    Link, Settings, Share,
    decisions::{Ban, Held, Skip, ban_of},
    lapi::BanAlert,
    task::Msg,
};
use crate::{bpf::Maps, clock, rules};

pub struct Crowdsec {
    pub settings: Settings,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    held: Held,
    /// Prefixes held but left to an entry of synguard's own.
    shadowed: HashSet<IpNet>,
    /// synguard's own bans pushed, until they end: coming back from the LAPI, they are
    /// not enforced a second time.
    pushed: HashMap<IpNet, u64>,
    push: Option<mpsc::Sender<BanAlert>>,
    /// Prefixes held that found no room in the tables (see [`Crowdsec::apply`]): put
    /// in by a later sweep when room frees up.
    unenforced: HashSet<IpNet>,
    /// Whether the tables' being full was said (once per time they fill).
    full_logged: bool,
    pub link: Link,
    /// Whether the current failure was logged (once per outage).
    failure_logged: bool,
    push_failure_logged: bool,
}

/// What a pull did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub put: usize,
    pub lifted: usize,
    pub shadowed: usize,
    pub skipped: usize,
    /// Decisions held but not enforced: the table had no room left for them.
    pub full: usize,
}

fn skip_name(s: &Skip) -> &'static str {
    match s {
        Skip::NotBan => "not a ban",
        Skip::Scope => "scope",
        Skip::Expired => "expired",
        Skip::Invalid(_) => "invalid",
    }
}

impl Crowdsec {
    pub fn new(
        settings: Settings,
        pin_dir: PathBuf,
        state_dir: PathBuf,
        push: Option<mpsc::Sender<BanAlert>>,
    ) -> Self {
        let link = Link {
            url: settings.url.clone(),
            pull: settings.key_file.is_some(),
            push: push.is_some(),
            share: settings.share.name().into(),
            ..Link::default()
        };
        Self {
            settings,
            pin_dir,
            state_dir,
            held: Held::default(),
            shadowed: HashSet::new(),
            pushed: HashMap::new(),
            push,
            unenforced: HashSet::new(),
            full_logged: false,
            link,
            failure_logged: false,
            push_failure_logged: false,
        }
    }

    pub fn write_link(&self) {
        if let Err(e) = super::write_link(&self.state_dir, &self.link) {
            log::warn!("crowdsec: {e:#}");
        }
    }

    /// A message of the link's task. `maps` is written only for pulls. `keep`: the
    /// machine's own addresses, its gateways and resolvers, which no decision may cut off
    /// (a decision covering one is not enforced).
    pub fn on_msg(&mut self, msg: Msg, maps: &mut Maps, keep: &[IpAddr]) {
        match msg {
            Msg::Pulled {
                startup,
                stream,
                at_ns,
                took,
            } => {
                let applying = std::time::Instant::now();
                let new = stream.new.unwrap_or_default();
                let deleted: Vec<i64> = stream
                    .deleted
                    .unwrap_or_default()
                    .iter()
                    .map(|d| d.id)
                    .collect();
                let count = new.len();
                match self.apply(startup, new, &deleted, at_ns, maps, keep) {
                    Ok(a) => {
                        let applied = applying.elapsed();
                        self.link.last_pull_s = Some(took.as_secs_f64());
                        self.link.last_apply_s = Some(applied.as_secs_f64());
                        if self.failure_logged || startup {
                            log::info!(
                                "crowdsec: {} decisions pulled from {}{} in {:.2} s, applied in \
                                 {:.2} s: {} prefixes enforced, {} lifted, {} left to \
                                 synguard's own entries, {} not enforceable (not an IP or \
                                 range ban); holding {} decisions",
                                if startup { "all" } else { "new" },
                                self.settings.url,
                                if self.failure_logged {
                                    " (reachable again)"
                                } else {
                                    ""
                                },
                                took.as_secs_f64(),
                                applied.as_secs_f64(),
                                a.put,
                                a.lifted,
                                a.shadowed,
                                a.skipped,
                                self.held.len()
                            );
                        } else if a.put + a.lifted > 0 {
                            log::info!(
                                "crowdsec: {} new decisions, {} deleted: {} prefixes enforced, \
                                 {} lifted",
                                count,
                                deleted.len(),
                                a.put,
                                a.lifted
                            );
                        }
                        self.failure_logged = false;
                        self.link.reachable = true;
                        self.link.error = None;
                        self.link.failures = 0;
                        self.link.retry_in_s = None;
                        let wall = std::time::SystemTime::now();
                        self.link.last_pull = Some(clock::rfc3339(wall));
                        self.link.last_pull_unix = wall
                            .duration_since(std::time::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs());
                    }
                    Err(e) => {
                        log::error!("crowdsec: enforcing the pulled decisions: {e:#}");
                        self.link.error = Some(format!("enforcing: {e:#}"));
                    }
                }
            }
            Msg::PullFailed {
                error,
                failures,
                retry_in,
            } => {
                if !self.failure_logged {
                    log::warn!(
                        "crowdsec: cannot pull decisions: {error}; keeping the {} decisions \
                         held until they expire, retrying (every {} at first, up to every \
                         {})",
                        self.held.len(),
                        crate::config::format_duration(self.settings.interval),
                        crate::config::format_duration(super::MAX_BACKOFF)
                    );
                    self.failure_logged = true;
                }
                self.link.reachable = false;
                self.link.error = Some(error);
                self.link.failures = failures;
                self.link.retry_in_s = (retry_in != Duration::MAX).then_some(retry_in.as_secs());
            }
            Msg::Pushed { n } => {
                if self.push_failure_logged {
                    log::info!("crowdsec: pushing bans works again");
                    self.push_failure_logged = false;
                }
                log::info!("crowdsec: pushed {n} bans to {}", self.settings.url);
                self.link.pushed += n as u64;
                self.link.push_error = None;
            }
            Msg::PushFailed { error, pending } => {
                if !self.push_failure_logged {
                    log::warn!("crowdsec: cannot push bans ({pending} waiting): {error}; retrying");
                    self.push_failure_logged = true;
                }
                self.link.push_error = Some(error);
            }
        }
        self.link.decisions = self.held.len();
        self.link.prefixes = self.held.nets();
        self.link.shadowed = self.shadowed.len();
        self.write_link();
    }

    /// Hold a pull's decisions and make the kernel's tables say the same.
    pub fn apply(
        &mut self,
        startup: bool,
        new: Vec<super::decisions::Decision>,
        deleted: &[i64],
        at_ns: u64,
        maps: &mut Maps,
        keep: &[IpAddr],
    ) -> anyhow::Result<Applied> {
        let mut out = Applied::default();
        let mut bans: Vec<Ban> = Vec::with_capacity(new.len());
        for d in &new {
            match ban_of(d, at_ns) {
                Ok(b) => bans.push(b),
                Err(s) => {
                    if let Skip::Invalid(why) = &s {
                        log::debug!("crowdsec: decision {} skipped: {why}", d.id);
                    }
                    *self.link.skipped.entry(skip_name(&s).into()).or_default() += 1;
                    out.skipped += 1;
                }
            }
        }
        // Most pulls bring nothing: no lock and no walk of the tables then (with 100,000
        // decisions held, a walk is a few hundred thousand system calls).
        if !startup && bans.is_empty() && !deleted.iter().any(|id| self.held.holds(*id)) {
            return Ok(out);
        }
        let _lock = crate::pins::lock_writers(&self.pin_dir)?;
        let entries = rules::list(maps)?;
        let mut changes = if startup {
            // Everything again: what is no longer in the LAPI goes, whoever put it there
            // (an earlier run included).
            let before = self.held.clear();
            self.shadowed.clear();
            let mut c = self.held.apply(bans, &[]);
            c.lift.extend(
                before
                    .into_iter()
                    .filter(|n| self.held.longest(n).is_none()),
            );
            c.lift.extend(
                entries
                    .iter()
                    .filter(|e| e.rule.kind == RULE_CROWDSEC && self.held.longest(&e.net).is_none())
                    .map(|e| e.net),
            );
            c.lift.sort();
            c.lift.dedup();
            c
        } else {
            self.held.apply(bans, deleted)
        };
        let by_net: HashMap<IpNet, &rules::RuleEntry> =
            entries.iter().map(|e| (e.net, e)).collect();
        let now = clock::monotonic_ns();
        self.pushed.retain(|_, until| *until > now);
        let allows = rules::Allows::of(&entries);
        // Lifts first: they make room.
        let mut room = Room::of(&entries);
        for net in &changes.lift {
            self.shadowed.remove(net);
            self.unenforced.remove(net);
            if by_net
                .get(net)
                .is_some_and(|e| e.rule.kind == RULE_CROWDSEC)
                && rules::delete(maps, net)?.is_some()
            {
                out.lifted += 1;
                room.free(net.addr().is_ipv4());
            }
        }
        for b in changes.put.drain(..) {
            if let Some(a) = keep.iter().find(|a| b.net.contains(*a)) {
                // Enforcing it would cut this machine off its own network: a decision
                // made elsewhere (by a flood forged with this address, say) never does.
                log::warn!(
                    "crowdsec: not enforcing decision {} on {} ({}, {}): it covers {a}, this \
                     machine's own address, gateway or resolver",
                    b.id,
                    b.net,
                    b.origin,
                    b.scenario
                );
                *self.link.skipped.entry("protected".into()).or_default() += 1;
                self.shadowed.insert(b.net);
                out.skipped += 1;
                // Enforced before (an earlier pull, before the address was the machine's):
                // lifted now.
                if by_net
                    .get(&b.net)
                    .is_some_and(|e| e.rule.kind == RULE_CROWDSEC)
                    && rules::delete(maps, &b.net)?.is_some()
                {
                    out.lifted += 1;
                    room.free(b.net.addr().is_ipv4());
                }
                continue;
            }
            let ours = self.pushed.contains_key(&b.net);
            let existing = by_net.get(&b.net);
            if ours || existing.is_some_and(|e| e.rule.kind != RULE_CROWDSEC) {
                self.shadowed.insert(b.net);
                out.shadowed += 1;
                continue;
            }
            let action = if allows.covering(&b.net).is_some() {
                ACTION_PASS
            } else {
                ACTION_DROP
            };
            let mut rule = Rule::new(RULE_CROWDSEC, action, now, b.until_ns.max(now + 1));
            if let Some(e) = existing {
                rule.hits = e.rule.hits;
                rule.created_ns = e.rule.created_ns;
            }
            rules::set_comment(&mut rule, &format!("{}\t{}", b.origin, b.scenario));
            let v4 = b.net.addr().is_ipv4();
            if existing.is_none() && !room.take(v4) {
                self.unenforced.insert(b.net);
                out.full += 1;
                continue;
            }
            match rules::put(maps, &b.net, &rule) {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<rules::TableFull>().is_some() => {
                    room.exhaust(v4);
                    self.unenforced.insert(b.net);
                    out.full += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.shadowed.remove(&b.net);
            self.unenforced.remove(&b.net);
            out.put += 1;
        }
        self.note_full(out.full);
        Ok(out)
    }

    /// Say once that the tables are full (and again once they had room in between), and
    /// keep the count `status` and the metrics show.
    fn note_full(&mut self, newly: usize) {
        self.link.not_enforced_full = self.unenforced.len();
        if self.unenforced.is_empty() {
            if self.full_logged {
                log::info!("crowdsec: every decision held is enforced again");
            }
            self.full_logged = false;
        } else if newly > 0 && !self.full_logged {
            self.full_logged = true;
            log::warn!(
                "crowdsec: the blocklist is full ({} entries per address family, the last {} \
                 kept for allow entries): {} decisions are held but not enforced; they are put \
                 in as entries end (aggregate CrowdSec's decisions into ranges, or remove \
                 manual blocks, to make room)",
                synguard_common::capacity::RULES,
                synguard_common::capacity::ALLOW_RESERVE,
                self.unenforced.len()
            );
        }
    }

    /// Put back the decisions held whose prefix has no entry now: an allow or block entry
    /// of the operator's replaced one and has been removed since, or the table had no
    /// room for it (while an entry of synguard's own is there, it wins). As many as the
    /// table has room for; never an error for a full table. Returns how many were put
    /// back.
    pub fn restore(
        &mut self,
        maps: &mut Maps,
        entries: &[rules::RuleEntry],
        keep: &[IpAddr],
    ) -> usize {
        let taken: HashSet<IpNet> = entries.iter().map(|e| e.net).collect();
        let now = clock::monotonic_ns();
        let missing: Vec<Ban> = self
            .held
            .all()
            .filter(|b| {
                !taken.contains(&b.net)
                    && !self.pushed.contains_key(&b.net)
                    && b.until_ns > now
                    && !keep.iter().any(|a| b.net.contains(a))
            })
            .cloned()
            .collect();
        let mut room = Room::of(entries);
        let allows = rules::Allows::of(entries);
        let mut n = 0;
        for b in &missing {
            let v4 = b.net.addr().is_ipv4();
            if !room.take(v4) {
                self.unenforced.insert(b.net);
                continue;
            }
            let action = if allows.covering(&b.net).is_some() {
                ACTION_PASS
            } else {
                ACTION_DROP
            };
            let mut rule = Rule::new(RULE_CROWDSEC, action, now, b.until_ns);
            rules::set_comment(&mut rule, &format!("{}\t{}", b.origin, b.scenario));
            match rules::put(maps, &b.net, &rule) {
                Ok(()) => {
                    self.shadowed.remove(&b.net);
                    self.unenforced.remove(&b.net);
                    n += 1;
                }
                Err(e) if e.downcast_ref::<rules::TableFull>().is_some() => {
                    room.exhaust(v4);
                    self.unenforced.insert(b.net);
                }
                Err(e) => {
                    log::error!("crowdsec: putting back the decision on {}: {e:#}", b.net);
                    break;
                }
            }
        }
        // Decisions that ended or were deleted meanwhile are no longer waiting.
        let waiting: HashSet<IpNet> = missing.iter().map(|b| b.net).collect();
        self.unenforced.retain(|net| waiting.contains(net));
        let newly = self.unenforced.len();
        self.note_full(newly);
        if n > 0 || self.link.not_enforced_full != newly {
            self.write_link();
        }
        n
    }

    /// One of `run`'s own bans: pushed if `crowdsec-share` allows (`proof`: the source's
    /// live proof, if any).
    pub fn share_ban(
        &mut self,
        net: IpNet,
        syns: u64,
        rate: u64,
        expires_ns: u64,
        proof: Option<u32>,
    ) {
        let Some(tx) = &self.push else { return };
        let now = clock::monotonic_ns();
        let why = match self.settings.share {
            Share::Off => return,
            Share::All => "crowdsec-share all".to_string(),
            Share::Proven => match proof {
                Some(how @ (PROOF_COOKIE | PROOF_HANDSHAKE | PROOF_SOCKET)) => {
                    format!("its source {}", crate::proofs::how(how))
                }
                // A source that never proved its address may be a forger's choice.
                _ => {
                    self.link.kept_back += 1;
                    self.write_link();
                    return;
                }
            },
        };
        let duration = Duration::from_nanos(expires_ns.saturating_sub(now));
        if duration.is_zero() {
            return;
        }
        self.pushed.insert(net, expires_ns);
        if tx
            .try_send(BanAlert {
                net,
                syns,
                rate,
                duration,
                why,
            })
            .is_err()
        {
            log::warn!("crowdsec: too many bans waiting to be pushed; {net} is not shared");
        }
    }
}

/// Room left for blocks in each family's allow/block trie (see `rules::block_room`).
struct Room {
    v4: usize,
    v6: usize,
}

impl Room {
    fn of(entries: &[rules::RuleEntry]) -> Self {
        Self {
            v4: rules::block_room(entries, true),
            v6: rules::block_room(entries, false),
        }
    }

    fn free(&mut self, v4: bool) {
        if v4 {
            self.v4 += 1;
        } else {
            self.v6 += 1;
        }
    }

    fn take(&mut self, v4: bool) -> bool {
        let r = if v4 { &mut self.v4 } else { &mut self.v6 };
        if *r == 0 {
            return false;
        }
        *r -= 1;
        true
    }

    fn exhaust(&mut self, v4: bool) {
        if v4 {
            self.v4 = 0;
        } else {
            self.v6 = 0;
        }
    }
}

/// Remove every CrowdSec entry (`run` without a link, after one that had one). Returns
/// how many went.
pub fn lift_all(maps: &mut Maps, pin_dir: &std::path::Path) -> anyhow::Result<usize> {
    let _lock = crate::pins::lock_writers(pin_dir)?;
    let mut n = 0;
    for e in rules::list(maps)?
        .iter()
        .filter(|e| e.rule.kind == RULE_CROWDSEC)
    {
        if rules::delete(maps, &e.net)?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use synguard_common::{PROOF_GATEWAY, PROOF_HANDSHAKE};

    use super::*;

    fn link(share: Share) -> (Crowdsec, mpsc::Receiver<BanAlert>, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "sg-crowdsec-test-{}-{}",
            std::process::id(),
            share.name()
        ));
        let (tx, rx) = mpsc::channel(16);
        let settings = Settings {
            url: "http://192.0.2.5:8080".into(),
            share,
            ..Settings::default()
        };
        (
            Crowdsec::new(settings, dir.clone(), dir.clone(), Some(tx)),
            rx,
            dir,
        )
    }

    #[test]
    fn only_what_crowdsec_share_allows_is_pushed() {
        let net: IpNet = "198.18.0.7/32".parse().unwrap();
        let later = clock::monotonic_ns() + 600_000_000_000;
        for (share, proof, pushed) in [
            (Share::Off, Some(PROOF_HANDSHAKE), false),
            (Share::All, None, true),
            (Share::Proven, None, false),
            // A gateway's or resolver's proof says nothing about who sent the SYNs.
            (Share::Proven, Some(PROOF_GATEWAY), false),
            (Share::Proven, Some(PROOF_HANDSHAKE), true),
        ] {
            let (mut cs, mut rx, dir) = link(share);
            cs.share_ban(net, 300, 3000, later, proof);
            let got = rx.try_recv().ok();
            assert_eq!(got.is_some(), pushed, "{share:?} {proof:?}");
            if let Some(b) = got {
                assert_eq!(b.net, net);
                assert!(b.duration > Duration::from_secs(590));
                assert!(cs.pushed.contains_key(&net), "not enforced again on return");
            }
            let kept = u64::from(share == Share::Proven && !pushed);
            assert_eq!(cs.link.kept_back, kept, "{share:?} {proof:?}");
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
