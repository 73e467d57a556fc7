//! Episodes: the offered rate over fixed windows, floods opened and closed, and the
//! per-source statistics kept within their cap.

use super::*;

impl Engine {
    /// The offered SYN rate over fixed windows: all SYNs, banned sources' included.
    pub(super) fn slot_tick(&mut self, now: u64) {
        let slot = now / SLOT_NS;
        if slot == self.slot {
            return;
        }
        let rate = self.slot_syns * (SEC / SLOT_NS);
        let at = self.slot * SLOT_NS;
        if rate > self.peak.0 {
            self.peak = (rate, at);
        }
        if rate > self.cur.peak {
            self.cur.peak = rate;
            self.cur.peak_at = at;
        }
        if rate * 2 >= self.p.enter && self.cur.open {
            self.cur.last_hot = self.cur.last_hot.max(at + SLOT_NS);
        }
        let drops = self.slot_drops * (SEC / SLOT_NS);
        if drops > self.drop_peak.0 {
            self.drop_peak = (drops, at);
        }
        self.slot = slot;
        self.slot_syns = 0;
        self.slot_drops = 0;
    }

    /// A packet the agent would drop (or count as dropped, in monitor mode).
    pub(super) fn dropped(&mut self, now: u64) {
        self.series.at(now).drops += 1;
        self.slot_drops += 1;
    }

    pub(super) fn open(&mut self, now: u64, why: &str) {
        let e = &mut self.cur;
        e.open = true;
        e.last_hot = now;
        let start = e.start;
        self.event((
            start,
            format!("SYN flood starts (the agent's rules fire: {why})"),
        ));
    }

    pub(super) fn maybe_close(&mut self, now: u64) {
        if self.cur.open
            && self.det.attack == 0
            && now.saturating_sub(self.cur.last_hot) >= ATTACK_CALM_NS
        {
            self.close(false);
        }
    }

    /// Close the open episode (at the end of the capture, `ongoing`).
    pub(super) fn close(&mut self, ongoing: bool) {
        let now = self.now;
        let e = &self.cur;
        let id = e.id;
        // Of the sources still tracked that sent SYNs in it, how many answered.
        // and its busiest sources.
        let (mut tagged, mut answered) = (0u64, 0u64);
        let mut busiest: Vec<(Key, u64)> = Vec::new();
        for (&k, t) in &self.talkers {
            if t.ep == id {
                tagged += 1;
                answered += u64::from(t.answered);
                busiest.push((k, u64::from(t.ep_syns)));
                if busiest.len() >= 64 {
                    busiest.sort_unstable_by_key(|&(k, n)| (std::cmp::Reverse(n), k));
                    busiest.truncate(BUSIEST);
                }
            }
        }
        busiest.sort_unstable_by_key(|&(k, n)| (std::cmp::Reverse(n), k));
        busiest.truncate(BUSIEST);
        let sources = e.sources.count();
        let answered = (tagged > 0).then(|| {
            if tagged >= sources {
                answered
            } else {
                (answered as f64 * sources as f64 / tagged as f64).round() as u64
            }
        });
        let mut spread = Vec::new();
        for (fam, v6) in [(0, false), (1, true)] {
            let n = e.suspect[fam];
            if n == 0 {
                continue;
            }
            let (value, len) = if v6 {
                covering(&e.bits_v6, n)
            } else {
                covering(&e.bits_v4, n)
            };
            let addr = if v6 {
                u128::from(value) << 64
            } else {
                (0xffff_u128 << 32) | u128::from(value as u32)
            };
            spread.push(Spread {
                v6,
                syns: n,
                covering: show_prefix(addr, v6, len),
                subnets: e.subnets[fam].count(),
            });
        }
        let flood = Flood {
            start: e.start,
            end: e.last_hot.max(e.start),
            syns: e.syns,
            ipv6_syns: e.ipv6_syns,
            sources,
            sources_exact: e.sources.exact(),
            top: e.top.map(|(k, n)| (k, u64::from(n))),
            busiest,
            completed: e.completed,
            peak: e.peak,
            peak_at: e.peak_at,
            dropped: e.dropped,
            cookies: e.cookies,
            bans: e.bans,
            attack_on: e.attack_on,
            attack_off: e.attack_off,
            attack_peak: e.attack_peak,
            target: e
                .targets
                .iter()
                .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
                .map(|(&(a, p), &n)| (a, p, n)),
            spread,
            answered,
            never_completed: e.never,
            ongoing,
        };
        if !ongoing {
            self.event((
                flood.end,
                format!(
                    "SYN flood ends ({} SYNs in {:.1} s)",
                    flood.syns,
                    flood.end.saturating_sub(flood.start) as f64 / SEC as f64
                ),
            ));
        }
        if self.floods.len() < MAX_EPISODES {
            self.floods.push(flood);
        } else {
            self.floods_dropped += 1;
        }
        self.cur.restart(self.next_id, now);
        self.next_id = self.next_id.wrapping_add(1);
    }

    /// Forget the least notable sources: those with the fewest SYNs that did nothing
    /// else worth reporting, about half of the table.
    pub(super) fn evict_talkers(&mut self) {
        let mut hist = [0usize; 65];
        for t in self.talkers.values().filter(|t| !t.notable()) {
            hist[(t.syns as usize).min(64)] += 1;
        }
        let want = self.talkers.len() / 2;
        let (mut sum, mut limit) = (0, 0u32);
        for (i, n) in hist.iter().enumerate() {
            sum += n;
            limit = i as u32;
            if sum >= want {
                break;
            }
        }
        let before = self.talkers.len();
        self.talkers.retain(|_, t| t.notable() || t.syns > limit);
        if self.talkers.len() == before {
            // Everything is notable: forget the quietest anyway.
            let mut all: Vec<u32> = self.talkers.values().map(|t| t.syns).collect();
            all.sort_unstable();
            limit = all.get(all.len() / 2).copied().unwrap_or(0);
            self.talkers.retain(|_, t| t.syns > limit);
        }
        self.talker_evictions += (before - self.talkers.len()) as u64;
        self.talker_evicted_max = self.talker_evicted_max.max(limit);
    }
}

/// The leading bits that 99 % of the counted addresses agree on: (value, length).
pub(super) fn covering<const N: usize>(bits: &[u64; N], total: u64) -> (u64, u8) {
    let mut value = 0u64;
    let mut len = 0u8;
    for (i, &c) in bits.iter().enumerate() {
        let one = c * 100 >= total * 99;
        let zero = c * 100 <= total;
        if !(one || zero) {
            break;
        }
        if one {
            value |= 1 << (N - 1 - i);
        }
        len += 1;
    }
    (value, len)
}
