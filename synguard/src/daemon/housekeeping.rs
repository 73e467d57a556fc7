//! Every second: expiry and sweeps of the tables, proofs and the machine's addresses,
//! the journal's samples; and reloads on SIGHUP.

use super::*;

impl Daemon {
    /// One step of the housekeeping: its error is logged (at most once a minute per step,
    /// with how often it failed meanwhile) and never keeps the other steps from running.
    fn step(&mut self, what: &'static str, f: impl FnOnce(&mut Self) -> anyhow::Result<()>) {
        let started = Instant::now();
        let result = f(self);
        let took = started.elapsed();
        if took >= Duration::from_millis(250) {
            log::debug!("housekeeping: {what} took {} ms", took.as_millis());
        }
        let Err(e) = result else { return };
        let now = Instant::now();
        let (last, missed) = self.step_errors.entry(what).or_insert((None, 0));
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
            let also = if *missed > 0 {
                format!(" (and {missed} times since the last report)")
            } else {
                String::new()
            };
            log::error!("{what}: {e:#}{also}");
            *last = Some(now);
            *missed = 0;
        } else {
            *missed += 1;
        }
    }

    /// The machine's addresses, the only ones attack mode answers SYNs for (see
    /// `locals`). At start and every `proofs::REFRESH`.
    pub(super) fn refresh_locals(&mut self) -> anyhow::Result<()> {
        let addrs = crate::locals::addresses()?;
        if addrs != self.locals {
            let _lock = pins::lock_writers(&self.pin_dir)?;
            let synced = crate::locals::sync(&mut self.maps, &addrs)?;
            log::info!(
                "attack mode answers SYNs for this machine's {} addresses; SYNs for any other \
                 (bridged or routed to guests) are left to the kernel",
                synced.kept
            );
            if synced.left_out > 0 {
                log::warn!(
                    "{} of the machine's addresses did not fit in attack mode's table of {} \
                     per family: SYNs for them are left to the kernel",
                    synced.left_out,
                    synguard_common::capacity::LOCAL_ADDRS
                );
            }
            self.locals = addrs;
        }
        Ok(())
    }

    /// Start reading the NAT rules in a thread of its own (`nft` may be slow, its ruleset
    /// huge: see `nat`), unless a reading is under way.
    fn start_nat_read(&mut self) {
        if self.nat_reading.is_some() {
            return;
        }
        match std::thread::Builder::new()
            .name("synguard-nat".into())
            .spawn(crate::nat::read)
        {
            Ok(h) => self.nat_reading = Some(h),
            Err(e) => log::warn!("reading the NAT rules: {e}"),
        }
    }

    /// Apply a NAT reading that finished.
    fn collect_nat_read(&mut self) -> anyhow::Result<()> {
        if !self.nat_reading.as_ref().is_some_and(|h| h.is_finished()) {
            return Ok(());
        }
        let Some(handle) = self.nat_reading.take() else {
            return Ok(());
        };
        let nat = handle
            .join()
            .map_err(|_| anyhow!("the NAT reading thread panicked"))?;
        if self.nat.as_ref() == Some(&nat) {
            return Ok(());
        }
        {
            let _lock = pins::lock_writers(&self.pin_dir)?;
            crate::nat::apply(&mut self.maps, &nat)?;
        }
        match &nat.warning {
            Some(w) => log::warn!("{w}"),
            None if nat.ports.is_empty() => {
                log::info!("no NAT rule rewrites a destination port here")
            }
            None => log::info!(
                "attack mode leaves SYNs for ports {} to the kernel: NAT rules send them to \
                 other sockets (a container's published port, a redirect)",
                nat.ports.describe()
            ),
        }
        if nat.snat != 0 && self.nat.as_ref().is_none_or(|n| n.snat == 0) && nat.warning.is_none() {
            log::info!(
                "this host rewrites source addresses (masquerade or SNAT): in attack mode, ACKs \
                 that may be replies to its guests' connections go to the kernel"
            );
        }
        self.nat = Some(nat);
        Ok(())
    }

    /// The proofs `run` makes itself, and the bans of sources proven since (see
    /// `proofs::refresh`). At start and every `proofs::REFRESH`; the peers found are
    /// proven a share at a time by [`Self::prove_peers`].
    pub(super) fn refresh_proofs(&mut self) -> anyhow::Result<()> {
        let _lock = pins::lock_writers(&self.pin_dir)?;
        let r = crate::proofs::refresh(
            &mut self.maps,
            &self.settings,
            clock::monotonic_ns(),
            &self.protected,
        )?;
        if r.filter.cleared > 0 {
            log::debug!(
                "proof filter: {} sets may hold a proof, {} cleared (their proofs ended)",
                r.filter.set,
                r.filter.cleared
            );
        }
        if r.protected != self.protected {
            let list: Vec<String> = r
                .protected
                .iter()
                .map(|(a, how)| format!("{a} ({})", crate::proofs::how(*how)))
                .collect();
            log::info!(
                "never banned, whatever SYNs carry their addresses: {}",
                if list.is_empty() {
                    "no gateway or resolver found".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
        self.lifted(&r.lifted);
        self.protected = r.protected;
        // The newest list replaces what is left of the last one.
        self.peers = r.peers;
        Ok(())
    }

    /// Prove the next share of the peers found by the last refresh.
    fn prove_peers(&mut self) -> anyhow::Result<()> {
        if self.peers.is_empty() {
            return Ok(());
        }
        let _lock = pins::lock_writers(&self.pin_dir)?;
        let lifted = crate::proofs::prove_peers(
            &mut self.maps,
            &self.settings,
            clock::monotonic_ns(),
            &mut self.peers,
        )?;
        self.lifted(&lifted);
        Ok(())
    }

    fn lifted(&mut self, lifted: &[IpNet]) {
        for net in lifted {
            self.known_bans.remove(net);
            log::warn!(
                "lifted the ban on {net}: it has connections to this machine, so it owns \
                 its address, and the SYNs that banned it were most likely forged"
            );
            self.journal(journal::Event::Unban {
                prefix: net.to_string(),
                why: "proven".into(),
                kind: "auto".into(),
                hits: 0,
            });
        }
    }

    /// Remove a newly banned source's half-open connections from the SYN queues (see
    /// `purge`). Not in monitor mode, which changes nothing.
    pub(super) fn purge(&mut self, net: &IpNet) {
        if self.settings.mode == crate::config::Mode::Monitor {
            return;
        }
        match crate::sockdiag::purge(net) {
            Ok(0) => {}
            Ok(n) => {
                log::info!(
                    "removed {n} half-open connections from {net} from the server's SYN queues"
                );
                self.journal(journal::Event::Purge {
                    prefix: net.to_string(),
                    connections: n as u64,
                });
            }
            Err(e) if !self.purge_warned => {
                self.purge_warned = true;
                log::warn!(
                    "cannot remove half-open connections of banned sources ({e}); they will \
                     time out by themselves (the kernel needs CONFIG_INET_DIAG_DESTROY)"
                );
            }
            Err(_) => {}
        }
    }

    /// Once a second, in steps that never hold each other up (see [`Self::step`]):
    /// attack state first; every `proofs::REFRESH` the machine's addresses, the NAT rules
    /// (read in a thread of their own) and the proofs; then a share of the peers to prove,
    /// the sweep of the tables, `config set`, and the journal's sample. (The host's
    /// settings for attack mode are the keeper's, on a thread of its own.)
    pub(super) fn housekeeping(&mut self) {
        self.ticks += 1;
        self.step("attack state", |d| {
            d.settle_attacks();
            Ok(())
        });
        if self
            .ticks
            .is_multiple_of(crate::proofs::REFRESH.as_secs().max(1))
        {
            self.step("the machine's addresses", Self::refresh_locals);
            self.start_nat_read();
            self.step("proofs", Self::refresh_proofs);
        }
        self.step("NAT rules", Self::collect_nat_read);
        self.step("proofs of connections", Self::prove_peers);
        // Expired entries are already ignored by the kernel; sweeping only reclaims room,
        // so big tables are swept less often.
        if self.rules_len < 10_000 || self.ticks.is_multiple_of(10) {
            self.step("sweeping the tables", Self::sweep);
        }
        self.step("config", Self::notice_config);
        if self.last_sample.elapsed() >= journal::sample_interval() {
            self.step("journal sample", Self::sample);
        }
    }

    /// Expire entries, find bans whose events were suppressed, put back CrowdSec's
    /// decisions, keep the allowlist winning.
    fn sweep(&mut self) -> anyhow::Result<()> {
        let _lock = pins::lock_writers(&self.pin_dir)?;
        let expired = rules::expire(&mut self.maps)?;
        for gone in &expired {
            self.journal(journal::Event::Unban {
                prefix: gone.net.to_string(),
                why: "expired".into(),
                kind: format!("{:?}", gone.kind()).to_lowercase(),
                hits: gone.rule.hits,
            });
        }
        for gone in expired {
            self.known_bans.remove(&gone.net);
            self.manual.remove(&gone.net);
            let what = match gone.rule.kind {
                RULE_BAN => "ban",
                RULE_ALLOW => "allow entry",
                _ => "block",
            };
            log::info!(
                "{what} on {} expired ({} packets dropped while it lasted)",
                gone.net,
                gone.rule.hits
            );
        }
        let mut entries = rules::list(&self.maps)?;
        let keep = keep_reachable(&self.protected, &self.locals);
        if let Some(cs) = self.crowdsec.as_mut()
            && cs.restore(&mut self.maps, &entries, &keep) > 0
        {
            entries = rules::list(&self.maps)?;
        }
        self.rules_len = entries.len();
        self.rule_hits = entries
            .iter()
            .filter(|e| e.rule.kind != RULE_ALLOW)
            .map(|e| (e.net, (e.rule.kind, e.rule.hits)))
            .collect();
        for e in entries.iter().filter(|e| e.rule.kind == RULE_BAN) {
            if self.known_bans.insert(e.net) {
                self.purge(&e.net);
                let until = clock::rfc3339(clock::to_wall(e.rule.expires_ns));
                log::warn!(
                    "banned {}: {}, until {until} (found by the sweep; its event was \
                     rate-limited)",
                    e.net,
                    describe_rate(e.rule.syns, e.rule.rate),
                );
                self.journal(journal::Event::Ban {
                    prefix: e.net.to_string(),
                    interface: String::new(),
                    syns: e.rule.syns,
                    syn_rate: e.rule.rate,
                    until,
                });
                self.share_ban(e.net, e.rule.syns, e.rule.rate, e.rule.expires_ns);
            }
        }
        let lifted: Vec<IpNet> = self
            .known_bans
            .iter()
            .filter(|n| {
                !entries
                    .iter()
                    .any(|e| e.net == **n && e.rule.kind == RULE_BAN)
            })
            .copied()
            .collect();
        for n in lifted {
            self.known_bans.remove(&n);
            log::info!("ban on {n} lifted by hand");
            self.journal(journal::Event::Unban {
                prefix: n.to_string(),
                why: "removed".into(),
                kind: "auto".into(),
                hits: 0,
            });
        }
        self.journal_list_changes(&entries);
        if entries.iter().any(|e| e.rule.kind == RULE_ALLOW) {
            let n = rules::reconcile_actions(&mut self.maps)?;
            if n > 0 {
                log::info!("{n} block or ban entries are inside allowlisted ranges: passing them");
            }
        }
        Ok(())
    }

    /// Notice `config set` (the generation moved) and say what changed.
    fn notice_config(&mut self) -> anyhow::Result<()> {
        let cfg = self.maps.read_config()?;
        if cfg.generation != self.generation {
            let now = Settings::from_kernel(&cfg);
            for (k, v) in now.entries() {
                let old = self.settings.get(k).unwrap_or_default();
                if old != v {
                    log::info!("config changed: {k} {old:?} -> {v:?}");
                    if let Some(j) = self.journal.as_mut() {
                        j.write(journal::Event::Config {
                            key: k.to_string(),
                            old: old.clone(),
                            new: v.clone(),
                        });
                    }
                }
            }
            self.settings = now;
            self.generation = cfg.generation;
        }
        Ok(())
    }

    /// Journal what changed in the manual lists since the last sweep (the CLI changes them
    /// directly; the daemon notices).
    pub(super) fn journal_list_changes(&mut self, entries: &[rules::RuleEntry]) {
        let now: HashMap<IpNet, (u8, String)> = entries
            .iter()
            .filter(|e| !matches!(e.rule.kind, RULE_BAN | synguard_common::RULE_CROWDSEC))
            .map(|e| (e.net, (e.rule.kind, e.comment())))
            .collect();
        let list = |kind: u8| if kind == RULE_ALLOW { "allow" } else { "block" };
        let mut events = Vec::new();
        for (net, (kind, comment)) in &now {
            match self.manual.get(net) {
                Some((k, _)) if k == kind => {}
                _ => events.push(journal::Event::ListChange {
                    list: list(*kind).into(),
                    prefix: net.to_string(),
                    change: "added".into(),
                    comment: comment.clone(),
                }),
            }
        }
        for (net, (kind, comment)) in &self.manual {
            if now.get(net).is_none_or(|(k, _)| k != kind) {
                events.push(journal::Event::ListChange {
                    list: list(*kind).into(),
                    prefix: net.to_string(),
                    change: "removed".into(),
                    comment: comment.clone(),
                });
            }
        }
        for e in events {
            self.journal(e);
        }
        self.manual = now;
    }

    /// Every few seconds: counter increases, attack state, table sizes and the busiest
    /// sources, into the journal (and the metrics' rates), from one walk of the sources
    /// table (mapped into memory; idle refilled buckets need no sweep: the kernel reuses
    /// their slots).
    pub(super) fn sample(&mut self) -> anyhow::Result<()> {
        let secs = self.last_sample.elapsed().as_secs_f64().max(0.001);
        self.last_sample = Instant::now();
        let now = clock::monotonic_ns();
        let mut interfaces = Vec::new();
        let mut rates = std::collections::BTreeMap::new();
        for (&ifindex, name) in &self.names {
            let slot = capacity::stats_slot(ifindex);
            let c = self.maps.counters(slot)?;
            let last = self
                .last_counters
                .insert(ifindex, c)
                .unwrap_or([0; stat::COUNT]);
            let mut counters = std::collections::BTreeMap::new();
            let mut per_sec = std::collections::BTreeMap::new();
            for i in 0..stat::COUNT {
                let d = c[i].saturating_sub(last[i]);
                per_sec.insert(stat::NAMES[i].to_string(), d as f64 / secs);
                if d > 0 {
                    counters.insert(stat::NAMES[i].to_string(), d);
                }
            }
            rates.insert(name.clone(), per_sec);
            let st = self.maps.ifstate(slot)?;
            let fresh = now.saturating_sub(st.rate_ns) <= synguard_common::ATTACK_STALE_NS;
            interfaces.push(journal::IfaceSample {
                name: name.clone(),
                counters,
                attack: st.attack != 0,
                syn_rate: if fresh { st.rate } else { 0 },
            });
        }
        if let Ok(mut r) = self.rates.lock() {
            *r = rates;
        }

        let mut top_rules: Vec<journal::TopRule> = self
            .rule_hits
            .iter()
            .filter_map(|(net, (kind, hits))| {
                let d = hits.saturating_sub(self.sampled_hits.get(net).copied().unwrap_or(0));
                (d > 0).then(|| journal::TopRule {
                    prefix: net.to_string(),
                    kind: if *kind == RULE_BAN { "auto" } else { "manual" }.into(),
                    hits: d,
                })
            })
            .collect();
        top_rules.sort_unstable_by_key(|r| std::cmp::Reverse(r.hits));
        top_rules.truncate(10);
        self.sampled_hits = self.rule_hits.iter().map(|(n, (_, h))| (*n, *h)).collect();

        // Sources idle for long are not swept: the kernel reuses their slots (see
        // `synguard_common::sources`), and the walk reports only tracked ones.
        let mut sources_v6 = 0u64;
        let mut top: Vec<(u64, u64, SourceKey)> = Vec::new();
        let sources = crate::sources::for_each(&self.maps, now, |k, b| {
            if !is_v4_mapped(k) {
                sources_v6 += 1;
            }
            let rate = source_rate(b, now);
            if rate > 0 {
                top.push((rate, b.syns, *k));
                if top.len() > 64 {
                    top.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
                    top.truncate(10);
                }
            }
        })?;
        top.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        top.truncate(10);
        let verified = crate::batch::for_each(&self.maps.verified, 512, |_, _| ())?;
        let bans = self.known_bans.len() as u64;
        self.journal(journal::Event::Sample {
            secs: (secs * 1000.0).round() / 1000.0,
            interfaces,
            sources: sources as u64,
            verified: verified as u64,
            bans,
            top: top
                .into_iter()
                .map(|(rate, syns, k)| journal::TopSource {
                    source: source_net(&k).map_or_else(String::new, |n| n.to_string()),
                    syn_rate: rate,
                    syns,
                })
                .collect(),
            sources_v6,
            top_rules,
        });
        Ok(())
    }

    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_file.clone() else {
            log::info!("SIGHUP: no --config file to re-read");
            return;
        };
        match load_settings(Some(&path), &self.keys) {
            Ok(s) => {
                let written = pins::lock_writers(&self.pin_dir).and_then(|_lock| {
                    let next = s.next_kernel(&self.maps.read_config()?);
                    self.maps.write_config(&next)?;
                    Ok(next.generation)
                });
                match written {
                    Ok(generation) => {
                        self.generation = generation;
                        for (k, v) in s.entries() {
                            let old = self.settings.get(k).unwrap_or_default();
                            if old != v {
                                log::info!("reloaded {}: {k} {old:?} -> {v:?}", path.display());
                                if let Some(j) = self.journal.as_mut() {
                                    j.write(journal::Event::Config {
                                        key: k.to_string(),
                                        old: old.clone(),
                                        new: v.clone(),
                                    });
                                }
                            }
                        }
                        self.settings = s;
                        log::info!("reloaded {}", path.display());
                        match crate::crowdsec::load(Some(&path), &self.crowdsec_args) {
                            Ok(c) if c != self.crowdsec_settings => log::warn!(
                                "{}: the crowdsec-* keys changed; they are `run`'s own and take \
                                 effect when synguard restarts",
                                path.display()
                            ),
                            Ok(_) => {}
                            Err(e) => log::warn!(
                                "{}: crowdsec-* keys: {e:#} (the link keeps its settings; \
                                 the next start would refuse them)",
                                path.display()
                            ),
                        }
                    }
                    Err(e) => log::error!("reloading {}: {e:#}", path.display()),
                }
            }
            Err(e) => log::error!("not reloading, the config in force stays: {e:#}"),
        }
    }
}
