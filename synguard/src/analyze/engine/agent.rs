//! The agent, replayed: its SYN decision (the shared `synguard_common::decide`), the
//! bucket per source, and the attack detector.

use super::*;

impl Engine {
    /// The agent's decision on a SYN from a source that is not banned, in the kernel's
    /// order ([`decide::decide_syn`]), and whether it was a challenge (a proven source
    /// over its limit; see `on_limit` in the kernel).
    pub(super) fn decide(&mut self, now: u64, s: &Seg<'_>, key: Key) -> (Verdict, bool) {
        if !self.p.settings.ports.contains(s.dport) {
            self.agent[stat::R_SYN_UNPROTECTED] += 1;
            return (Verdict::Passed, false);
        }
        let mut r = Replay {
            e: self,
            now,
            key,
            ban: None,
            challenged: false,
        };
        let syn = decide::decide_syn(&mut r);
        let (ban, challenged) = (r.ban, r.challenged);
        match syn {
            Syn::Verdict(reason) => {
                self.agent[reason] += 1;
                if reason == stat::R_SYN_LIMITED {
                    self.dropped(now);
                    return (Verdict::Limited(ban), challenged);
                }
                (Verdict::Passed, false)
            }
            Syn::Answer => {
                self.agent[stat::R_COOKIE_SENT] += 1;
                if self.p.settings.mode == Mode::Monitor {
                    self.agent[stat::N_MONITOR_PASSED] += 1;
                }
                (Verdict::Cookie, challenged)
            }
        }
    }

    /// Whether `key` holds a proof at `now`.
    pub(super) fn verified(&self, now: u64, key: Key) -> bool {
        self.verified.get(&key).is_some_and(|&until| until > now)
    }

    /// The token bucket, as `meter_syn`, `on_limit` and `track_new` in the kernel (the
    /// shared [`decide::bucket_syn`] and [`decide::over_limit`]): the SYN conforms, or it
    /// is over the limit: a proven source is challenged (attack mode starts; no ban), any
    /// other is limited, with the (SYNs, span) of the ban it starts (`None` when
    /// `ban-for` is 0 and the excess is only dropped).
    pub(super) fn meter(&mut self, now: u64, key: Key) -> Metered {
        let proven = self.verified(now, key);
        let p = &self.p;
        if let Some(m) = self.meters.get_mut(&key) {
            let b = &mut m.b;
            if decide::bucket_syn(b, now, p.interval, p.tolerance) {
                return Metered::Passed;
            }
            return match decide::over_limit(|| proven, p.ban_ns) {
                OverLimit::Challenge => {
                    self.agent[stat::N_CHALLENGED] += 1;
                    Metered::Challenged(attack_challenge(&mut self.det, now))
                }
                OverLimit::Drop => Metered::Limited(None),
                OverLimit::Ban => {
                    m.banned_until = now.saturating_add(p.ban_ns);
                    self.agent[stat::N_BANS] += 1;
                    Metered::Limited(Some(rate_span(b, now)))
                }
            };
        }
        if self.meters.len() >= self.meter_room {
            // Forget refilled buckets of sources not banned: exactly what a new source
            // gets anyway. Grow the working size only when most entries are live.
            self.meters
                .retain(|_, m| m.banned_until > now || m.b.tat_ns > now);
            if self.meters.len() * 2 > self.meter_room {
                self.meter_room = (self.meter_room * 2).min(capacity::SOURCES as usize);
            }
        }
        // The kernel reuses any slot whose bucket has refilled; it runs out only when the
        // sources spending their bursts fill a new source's set. Modelled as one pool of
        // all slots, banned sources included: the kernel, with two slots per set, starts
        // turning a few new sources away earlier (about 1 in 60 with 100k sources spending
        // their bursts at once), and reuses a banned source's slot once it has refilled.
        // Which slots get reused depends on the agent's secret hash key, so
        // `sources_recycled` is not predicted.
        if self.meters.len() >= capacity::SOURCES as usize {
            if self.table_full.is_none() {
                self.table_full = Some((now, self.meters.len() as u64));
            }
            return Metered::Untracked;
        }
        self.meters.insert(
            key,
            Meter {
                b: Bucket::first(now, p.interval),
                banned_until: 0,
            },
        );
        self.agent[stat::N_SOURCES_NEW] += 1;
        Metered::Passed
    }

    /// Attack mode started because a proven source went over its limit (as `on_limit` in
    /// the kernel starts it).
    pub(super) fn challenge_starts_attack_mode(&mut self, now: u64, key: Key) {
        self.agent[stat::N_ATTACKS] += 1;
        if !self.cur.open {
            self.open(now, "a proven source over its limit");
        }
        self.cur.attack_on.get_or_insert(now);
        self.cur.last_hot = now;
        self.series.at(now).attack = true;
        let who = self.p.show(key);
        self.event((
            now,
            format!(
                "attack mode would start: {who} completed a handshake, so it owns its address, \
                 yet SYNs in its name went over its limit: most likely forged, challenged with \
                 SYN cookies rather than banned"
            ),
        ));
    }

    /// The attack detector's window, as `track_rate` in the kernel (one CPU; the shared
    /// [`decide::window_syn`]).
    pub(super) fn detect(&mut self, now: u64) {
        let attack_off = self.det.attack == 0;
        let Some(rate) = decide::window_syn(
            &mut self.det_start,
            &mut self.det_syns,
            now,
            self.p.enter,
            || attack_off,
        ) else {
            return;
        };
        match attack_step(&mut self.det, rate, now, self.p.enter, ATTACK_CALM_NS) {
            Some(true) => {
                self.agent[stat::N_ATTACKS] += 1;
                if !self.cur.open {
                    self.open(now, "attack mode");
                }
                self.cur.attack_on.get_or_insert(now);
                self.cur.last_hot = now;
                self.series.at(now).attack = true;
                let cookies = match self.p.settings.syn_cookies {
                    Cookies::Off => "syn-cookies is off: detected and reported only",
                    _ => "SYNs from unverified sources would be answered with SYN cookies from XDP",
                };
                self.event((
                    now,
                    format!(
                        "attack mode would start: {rate} SYN/s reached attack-syn-rate {}; \
                         {cookies}",
                        self.p.enter
                    ),
                ));
            }
            Some(false) => {
                self.cur.attack_off = Some(now);
                self.event((
                    now,
                    format!(
                        "attack mode would end: the SYN rate stayed below {}/s for {} s \
                         (peak {} SYN/s)",
                        self.p.enter / 2,
                        ATTACK_CALM_NS / SEC,
                        self.det.peak_rate
                    ),
                ));
            }
            None => {}
        }
        if self.det.attack != 0 {
            self.cur.attack_peak = self.cur.attack_peak.max(rate);
        }
        if !self.cur.open {
            self.cur.restart(self.next_id, now);
            self.next_id = self.next_id.wrapping_add(1);
        }
    }
}

#[derive(Clone, Copy, Debug)]
/// What the token bucket says of a SYN (see `Engine::meter`).
pub(super) enum Metered {
    Passed,
    /// No room in the sources table: passed unmetered.
    Untracked,
    /// A proven source over its limit; `true` when that started attack mode.
    Challenged(bool),
    /// Over the bucket; with the (SYNs, span) of the ban it starts, if any.
    Limited(Option<(u64, u64)>),
}

pub(super) enum Verdict {
    Passed,
    Cookie,
    /// Over the bucket; with the (SYNs, span) of the ban it starts, if any.
    Limited(Option<(u64, u64)>),
    Banned,
}

/// The engine as [`decide::decide_syn`] asks it, for one SYN; what the meter said
/// beyond its reason is kept for the caller.
pub(super) struct Replay<'a> {
    e: &'a mut Engine,
    now: u64,
    key: Key,
    /// The (SYNs, span) of the ban the SYN started.
    ban: Option<(u64, u64)>,
    challenged: bool,
}

impl SynRules for Replay<'_> {
    fn cookies_active(&self) -> bool {
        self.e.cookies_active()
    }

    /// Not modelled: the kernel's sketch is keyed by a secret hash, so which sources
    /// share its counters cannot be replayed; every SYN is metered here. (In attack mode
    /// a source's first SYNs each window skip its bucket in the kernel, which bans a
    /// flooder a few SYNs later than predicted.)
    fn quiet_source(&mut self) -> bool {
        false
    }

    fn meter(&mut self) -> usize {
        match self.e.meter(self.now, self.key) {
            Metered::Passed => stat::R_SYN_PASSED,
            Metered::Untracked => stat::R_SYN_UNTRACKED,
            Metered::Limited(ban) => {
                self.ban = ban;
                stat::R_SYN_LIMITED
            }
            Metered::Challenged(started) => {
                if started {
                    self.e.challenge_starts_attack_mode(self.now, self.key);
                }
                self.challenged = true;
                CHALLENGED
            }
        }
    }

    fn verified(&mut self) -> bool {
        self.e.verified(self.now, self.key)
    }
}
