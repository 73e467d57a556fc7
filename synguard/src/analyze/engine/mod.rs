//! The analysis proper: one pass over the TCP segments of a capture, in bounded memory.
//!
//! Two things run side by side on every segment:
//!
//! - **The agent, replayed** with the capture's time stamps as its clock: the per-source
//!   token bucket on sources aggregated to `ipv4-prefix` / `ipv6-prefix`, bans for
//!   `ban-for`, the attack detector (SYNs counted over [`ATTACK_WINDOW_NS`] windows closed
//!   early as in the kernel, then the [`attack_step`] hysteresis), SYN cookies in attack
//!   mode and the verified set, decided by the code the XDP program runs
//!   ([`decide`]: the bucket step, the detector's window and the order a SYN is decided
//!   in; [`synguard_common::gcra`]). It
//!   yields what the agent would have counted (the same counter names as `status`). The
//!   replay is of one CPU: the kernel sums every CPU's window rates, which a single
//!   stream of packets gives directly.
//! - **What the capture shows**: SYNs, SYN-ACKs and resets, handshakes completed (the
//!   client's final ACK seen) or not, retransmitted SYNs (same connection and initial
//!   sequence number again: a client that waited at least a second), resets and HTTP
//!   error responses the server sent, per source and over time.
//!
//! **Episodes.** A flood is a stretch of time in which the agent's rules fire: attack
//! mode is on, or a source is over its bucket (its SYNs dropped, or dropped because it
//! is banned). It starts with the detector window (or the limited source's burst) that
//! fired, and ends once attack mode is off and no source has been limited for
//! [`ATTACK_CALM_NS`]; its end is the last moment the flood was seen (a limited SYN, or a
//! 100 ms window at half `attack-syn-rate` or more), not the end of the hysteresis. A
//! single flooder under `attack-syn-rate` is an episode too: the agent bans it, and the
//! report should say so. While no episode is open, a candidate accumulates the SYNs of
//! the current detector window, so an episode includes the burst that opened it.
//!
//! **Bounded memory.** Every table has a cap and a rule for what happens at it:
//! - the agent's buckets: refilled, unbanned buckets are forgotten whenever the table
//!   reaches its working size (exact: a new source starts with a full bucket, as the
//!   daemon's sweep relies on), so only sources active within one emission interval
//!   stay; the hard cap is the agent's own ([`capacity::SOURCES`]), past which new
//!   sources are unmetered, as in the kernel;
//! - per-source statistics ([`TALKERS`] sources): when full, the sources with the fewest
//!   SYNs that never did anything notable (a handshake, a retransmission, a ban, a reset
//!   or error received) are forgotten, so counts of the sources that matter stay exact;
//! - distinct counts: exact sets up to a cap, then a HyperLogLog estimate
//!   (cardinality-estimator, about 1.6 % error), which is what a forged flood needs;
//! - handshakes in progress: two generations of [`PENDING`] entries each, turned over
//!   every [`PENDING_AGE_NS`] or when full; a handshake still open when its generation
//!   is dropped never completed;
//! - destinations (address, port) counted: the first [`TARGETS`], later ones only
//!   counted as beyond it; floods described: [`MAX_EPISODES`]; timeline entries:
//!   [`MAX_EVENTS`];
//! - the per-second series halves its resolution past [`MAX_POINTS`] points.
//!
//! Whatever a cap left out is counted and said in the report's warnings.

mod agent;
mod episodes;
mod handshakes;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, Ipv6Addr};

use agent::Verdict;
use cardinality_estimator::CardinalityEstimator;
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use synguard_common::{
    ATTACK_CALM_NS, ATTACK_WINDOW_NS, Bucket, IfState, attack_challenge, attack_step, capacity,
    decide::{self, CHALLENGED, OverLimit, Syn, SynRules},
    rate_span, stat,
};

use super::decode::{ACK, FIN, RST, SYN, Seg, http_status};
use crate::{
    config::{Cookies, Mode, Settings},
    incident::Point,
};

pub const SEC: u64 = 1_000_000_000;
/// Sources with statistics (at most; see the module doc). Holds all of 198.18.0.0/15.
pub const TALKERS: usize = 200_000;
/// Handshakes in progress per generation.
pub const PENDING: usize = 100_000;
/// A generation of handshakes is turned over after this long (a client's SYN
/// retransmissions come 1, 3 and 7 s after its first SYN; two generations see them).
pub const PENDING_AGE_NS: u64 = 10 * SEC;
/// A SYN sent again sooner than this is no retransmission (see `pending_syn`).
const MIN_RTO_NS: u64 = 200_000_000;
/// Handshakes begun this close to the end of the capture and still open are not counted
/// as failed. Older ones are: a real client acknowledges a SYN-ACK within one round trip,
/// and one that got no answer sends its SYN again after 1 s (a retransmission, seen).
pub const PENDING_GRACE_NS: u64 = SEC;
/// Exact distinct sets hold this many keys before they become estimates.
pub const EXACT: usize = 65_536;
/// Subnets (/24, /48) with statistics.
pub const SUBNETS: usize = 65_536;
/// Destination address and port pairs with statistics.
pub const TARGETS: usize = 4_096;
/// Points of the per-second series before it halves its resolution.
pub const MAX_POINTS: usize = 3_600;
/// Episodes kept (later ones are counted, not described).
pub const MAX_EPISODES: usize = 100;
/// Offered SYN rates and drop rates are measured over windows this long (the detector's).
pub const SLOT_NS: u64 = ATTACK_WINDOW_NS;
/// Sources named for a flood from many real ones.
pub const BUSIEST: usize = 5;
/// Timeline entries kept (attack mode starting and ending, floods); later ones are
/// counted.
pub const MAX_EVENTS: usize = 1_000;
/// Timeline entries for individual bans before they are only counted.
const BANS_SHOWN: u64 = 10;

/// A source as the agent keys it: the address aggregated to the configured prefix, IPv4
/// mapped into IPv6 (as in `SG_SOURCES`).
pub type Key = u128;
/// HyperLogLog with 2^14 registers: about 0.8 % error, 12 KiB once past its exact
/// small-set forms.
type Est = CardinalityEstimator<u128, Mix, 14, 6>;

/// The hash the estimators use for keys: murmur3's 64-bit finalizer over both halves of
/// the `u128` (well spread, which is all HyperLogLog needs, and fixed, so counts are
/// reproducible from run to run).
#[derive(Default)]
pub struct Mix(u64);

fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl std::hash::Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = fmix(self.0 ^ u64::from(*b) ^ 0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = fmix(fmix(self.0 ^ v as u64) ^ (v >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The settings, and what the kernel derives from them.
pub struct Params {
    pub settings: Settings,
    interval: u64,
    tolerance: u64,
    ban_ns: u64,
    verified_ns: u64,
    v4_mask: u128,
    v6_mask: u128,
    pub enter: u64,
    /// `syn-cookies` as the kernel reads it (`COOKIES_*`).
    cookies: u32,
}

impl Params {
    pub fn new(settings: &Settings) -> Self {
        let k = settings.to_kernel(0);
        Self {
            settings: settings.clone(),
            interval: k.syn_interval_ns,
            tolerance: k.syn_tolerance_ns,
            ban_ns: k.ban_ns,
            verified_ns: k.verified_ns,
            v4_mask: (0xffff_ffff_ffff_ffff_ffff_ffff_u128 << 32)
                | u128::from(u32::from_be_bytes(k.v4_mask)),
            v6_mask: u128::from_be_bytes(k.v6_mask),
            enter: u64::from(k.attack_syn_rate),
            cookies: k.syn_cookies,
        }
    }

    pub fn key(&self, v6: bool, addr: u128) -> Key {
        addr & if v6 { self.v6_mask } else { self.v4_mask }
    }

    /// A source key as people write it: `203.0.113.7`, `2001:db8:5::/64`.
    pub fn show(&self, k: Key) -> String {
        if is_v4(k) {
            show_prefix(k, false, self.settings.ipv4_prefix)
        } else {
            show_prefix(k, true, self.settings.ipv6_prefix)
        }
    }
}

pub fn is_v4(a: u128) -> bool {
    a >> 32 == 0xffff
}

/// An address (mapped IPv4 or IPv6) and a prefix length in its family's bits.
pub fn show_prefix(addr: u128, v6: bool, len: u8) -> String {
    if v6 {
        let a = Ipv6Addr::from(addr);
        if len >= 128 {
            a.to_string()
        } else {
            format!("{a}/{len}")
        }
    } else {
        let a = Ipv4Addr::from(addr as u32);
        if len >= 32 {
            a.to_string()
        } else {
            format!("{a}/{len}")
        }
    }
}

/// The /24 (IPv4) or /48 (IPv6) an address lies in: the spread of a forged flood.
pub fn subnet(v6: bool, addr: u128) -> u128 {
    if v6 {
        addr & !((1u128 << 80) - 1)
    } else {
        addr & !0xff
    }
}

/// Distinct keys: exact up to [`EXACT`], then estimated.
pub struct Distinct {
    set: HashSet<u128>,
    est: Est,
    over: bool,
}

impl Distinct {
    pub fn new() -> Self {
        Self {
            set: HashSet::new(),
            est: Est::new(),
            over: false,
        }
    }

    pub fn insert(&mut self, k: u128) {
        self.est.insert(&k);
        if !self.over && self.set.insert(k) && self.set.len() > EXACT {
            self.over = true;
            self.set = HashSet::new();
        }
    }

    pub fn count(&self) -> u64 {
        if self.over {
            self.est.estimate() as u64
        } else {
            self.set.len() as u64
        }
    }

    pub fn exact(&self) -> bool {
        !self.over
    }

    fn clear(&mut self) {
        if self.over {
            *self = Self::new();
        } else {
            self.set.clear();
            self.est = Est::new();
        }
    }
}

impl Default for Distinct {
    fn default() -> Self {
        Self::new()
    }
}

/// One source's bucket in the replayed agent, and its ban.
struct Meter {
    b: Bucket,
    banned_until: u64,
}

/// What the capture shows of one source.
#[derive(Clone, Debug, Default)]
pub struct Talker {
    pub last_ns: u64,
    pub syns: u32,
    /// The most SYNs in one second (a window starting at its first SYN).
    pub peak: u32,
    win_start: u64,
    win_syns: u32,
    /// SYNs (and other packets) the agent would drop: over the bucket, or banned.
    pub dropped: u32,
    /// SYNs the agent would answer with a cookie.
    pub cookies: u32,
    /// When the agent would ban it, the SYNs and span its rate was measured on.
    pub banned_at: u64,
    pub ban_syns: u64,
    pub ban_span: u64,
    /// Handshakes completed (final ACK seen), retransmitted SYNs, handshakes that never
    /// completed, resets and HTTP errors (>= 500) from the server.
    pub completed: u32,
    pub retrans: u32,
    pub failed: u32,
    pub resets: u32,
    pub http_err: u32,
    pub last_http_err: u16,
    /// Sent anything but SYNs to a server (a real host behind the address).
    pub answered: bool,
    /// SYNs over its limit after it had proven it owns its address (completed a
    /// handshake): challenged, not banned; the flood in its name was most likely forged.
    pub challenged: u32,
    /// The episode (or candidate) its latest SYNs belong to, and how many.
    ep: u32,
    ep_syns: u32,
}

impl Talker {
    /// A source that was seen doing what only a real client does.
    pub fn legitimate(&self) -> bool {
        self.completed > 0 || self.retrans > 0
    }

    pub fn hurt(&self) -> bool {
        self.legitimate()
            && (self.retrans > 0 || self.resets > 0 || self.http_err > 0 || self.failed > 0)
    }

    fn notable(&self) -> bool {
        self.legitimate()
            || self.banned_at != 0
            || self.resets > 0
            || self.http_err > 0
            || self.answered
    }
}

/// A handshake in progress.
#[derive(Clone, Copy)]
struct Pend {
    client: Key,
    /// The first SYN, and the latest one.
    t: u64,
    last: u64,
    isn: u32,
    srv_isn: u32,
    synack: bool,
}

#[derive(Clone, Copy, Default)]
struct SeriesBucket {
    syns: u64,
    drops: u64,
    cookies: u64,
    attack: bool,
}

/// Per-interval counts for the chart.
pub struct Series {
    pub t0: u64,
    pub width: u64,
    b: Vec<SeriesBucket>,
}

impl Series {
    fn at(&mut self, now: u64) -> &mut SeriesBucket {
        loop {
            let i = (now.saturating_sub(self.t0) / self.width) as usize;
            if i < MAX_POINTS {
                if self.b.len() <= i {
                    self.b.resize(i + 1, SeriesBucket::default());
                }
                return &mut self.b[i];
            }
            self.b = self
                .b
                .chunks(2)
                .map(|c| SeriesBucket {
                    syns: c.iter().map(|x| x.syns).sum(),
                    drops: c.iter().map(|x| x.drops).sum(),
                    cookies: c.iter().map(|x| x.cookies).sum(),
                    attack: c.iter().any(|x| x.attack),
                })
                .collect();
            self.width *= 2;
        }
    }

    /// The chart's points: rates per second over each interval.
    pub fn points(&self) -> Vec<Point> {
        let w = self.width as f64 / SEC as f64;
        self.b
            .iter()
            .enumerate()
            .map(|(i, x)| Point {
                t: i as f64 * w,
                syn_rate: x.syns as f64 / w,
                drop_rate: x.drops as f64 / w,
                answered_rate: x.cookies as f64 / w,
                attack: x.attack,
            })
            .collect()
    }
}

/// An episode being watched (or the candidate for one).
struct Episode {
    id: u32,
    open: bool,
    start: u64,
    last_hot: u64,
    syns: u64,
    ipv6_syns: u64,
    sources: Distinct,
    top: Option<(Key, u32)>,
    completed: u64,
    peak: u64,
    peak_at: u64,
    dropped: u64,
    cookies: u64,
    bans: u64,
    attack_on: Option<u64>,
    attack_off: Option<u64>,
    attack_peak: u64,
    targets: HashMap<(u128, u16), u64>,
    /// SYNs from sources not (yet) seen completing a handshake, per family: their count,
    /// how often each leading address bit is set (for the prefix they share), and their
    /// distinct subnets.
    suspect: [u64; 2],
    bits_v4: [u64; 32],
    bits_v6: [u64; 64],
    subnets: [Distinct; 2],
    /// Handshakes started in it that never completed (known once they expire).
    never: u64,
}

impl Episode {
    fn new(id: u32, now: u64) -> Self {
        Self {
            id,
            open: false,
            start: now,
            last_hot: now,
            syns: 0,
            ipv6_syns: 0,
            sources: Distinct::new(),
            top: None,
            completed: 0,
            peak: 0,
            peak_at: now,
            dropped: 0,
            cookies: 0,
            bans: 0,
            attack_on: None,
            attack_off: None,
            attack_peak: 0,
            targets: HashMap::new(),
            suspect: [0; 2],
            bits_v4: [0; 32],
            bits_v6: [0; 64],
            subnets: [Distinct::new(), Distinct::new()],
            never: 0,
        }
    }

    /// Start over as the candidate `id` from `now`, keeping the allocations.
    fn restart(&mut self, id: u32, now: u64) {
        let mut sources = std::mem::take(&mut self.sources);
        let mut subnets = std::mem::take(&mut self.subnets);
        let mut targets = std::mem::take(&mut self.targets);
        sources.clear();
        subnets.iter_mut().for_each(Distinct::clear);
        targets.clear();
        *self = Self {
            sources,
            subnets,
            targets,
            ..Self::new(id, now)
        };
    }
}

/// A prefix shared by (nearly) all of a flood's sources.
#[derive(Clone, Debug)]
pub struct Spread {
    pub v6: bool,
    /// SYNs from sources not seen completing a handshake.
    pub syns: u64,
    /// The prefix 99 % of them share, e.g. `198.18.0.0/15`.
    pub covering: String,
    /// Distinct /24s (IPv4) or /48s (IPv6) among them.
    pub subnets: u64,
}

/// A flood, as found.
#[derive(Clone, Debug)]
pub struct Flood {
    pub start: u64,
    pub end: u64,
    pub syns: u64,
    pub ipv6_syns: u64,
    pub sources: u64,
    pub sources_exact: bool,
    pub top: Option<(Key, u64)>,
    /// Its busiest sources still tracked, with their SYNs in it (most first).
    pub busiest: Vec<(Key, u64)>,
    pub completed: u64,
    pub peak: u64,
    pub peak_at: u64,
    pub dropped: u64,
    pub cookies: u64,
    pub bans: u64,
    pub attack_on: Option<u64>,
    pub attack_off: Option<u64>,
    pub attack_peak: u64,
    /// (address, port, SYNs) of the most flooded destination.
    pub target: Option<(u128, u16, u64)>,
    pub spread: Vec<Spread>,
    /// Of its sources, how many answered the server (scaled from those still tracked).
    pub answered: Option<u64>,
    /// Handshakes started in it that never completed.
    pub never_completed: u64,
    /// Still going (open) at the end of the capture.
    pub ongoing: bool,
}

/// Counts of what the capture shows.
#[derive(Debug, Default)]
pub struct Counts {
    pub frames: u64,
    pub tcp: u64,
    pub truncated: u64,
    pub other: u64,
    pub unsupported: u64,
    pub syns: u64,
    pub synacks: u64,
    pub synack_retrans: u64,
    pub rsts: u64,
    pub rsts_from_server: u64,
    pub rsts_to_server: u64,
    pub completed: u64,
    pub retrans: u64,
    pub never_completed: u64,
    /// Of those: the server answered, the client never acknowledged (half-open).
    pub never_acked: u64,
    pub pending_at_end: u64,
    pub http: HashMap<u16, u64>,
    pub pending_rotations_early: u64,
}

pub struct Engine {
    pub p: Params,
    pub first: Option<u64>,
    pub now: u64,
    pub c: Counts,
    /// What the agent would have counted, by `stat` index.
    pub agent: [u64; stat::COUNT],
    meters: HashMap<Key, Meter>,
    meter_room: usize,
    verified: HashMap<Key, u64>,
    pub talkers: HashMap<Key, Talker>,
    pub talker_evictions: u64,
    /// The most SYNs a forgotten source had: the error bound of the counts kept.
    pub talker_evicted_max: u32,
    pub sources: Distinct,
    pub subnets: HashMap<u128, (u64, u64)>,
    pub subnets_full: u64,
    pub targets: HashMap<(u128, u16), u64>,
    pend: HashMap<u64, Pend>,
    pend_old: HashMap<u64, Pend>,
    pend_since: u64,
    flow_hasher: foldhash::fast::FixedState,
    det: IfState,
    det_start: u64,
    det_syns: u64,
    slot: u64,
    slot_syns: u64,
    slot_drops: u64,
    /// The highest drop rate over a detector window, and the window's start.
    pub drop_peak: (u64, u64),
    pub series: Series,
    pub peak: (u64, u64),
    cur: Episode,
    next_id: u32,
    pub floods: Vec<Flood>,
    pub floods_dropped: u64,
    pub timeline: Vec<(u64, String)>,
    /// Timeline entries past [`MAX_EVENTS`], counted only.
    pub events_dropped: u64,
    /// SYNs to destinations (address, port) beyond the [`TARGETS`] tracked.
    pub targets_full: u64,
    pub bans: u64,
    /// When the agent's own sources table would have had no slot for a new source (and
    /// how many sources were spending their bursts then).
    pub table_full: Option<(u64, u64)>,
}

impl Engine {
    pub fn new(settings: &Settings) -> Self {
        Self {
            p: Params::new(settings),
            first: None,
            now: 0,
            c: Counts::default(),
            agent: [0; stat::COUNT],
            meters: HashMap::new(),
            meter_room: 65_536,
            verified: HashMap::new(),
            talkers: HashMap::new(),
            talker_evictions: 0,
            talker_evicted_max: 0,
            sources: Distinct::new(),
            subnets: HashMap::new(),
            subnets_full: 0,
            targets: HashMap::new(),
            pend: HashMap::new(),
            pend_old: HashMap::new(),
            pend_since: 0,
            flow_hasher: foldhash::fast::FixedState::with_seed(0x5359_4e47_5541_5244),
            det: IfState::default(),
            det_start: 0,
            det_syns: 0,
            slot: 0,
            slot_syns: 0,
            slot_drops: 0,
            drop_peak: (0, 0),
            series: Series {
                t0: 0,
                width: SEC,
                b: Vec::new(),
            },
            peak: (0, 0),
            cur: Episode::new(0, 0),
            next_id: 1,
            floods: Vec::new(),
            floods_dropped: 0,
            timeline: Vec::new(),
            events_dropped: 0,
            targets_full: 0,
            bans: 0,
            table_full: None,
        }
    }

    /// Advance the clock to a frame's time stamp (never backwards: captures merged from
    /// several interfaces may be slightly out of order).
    pub fn tick(&mut self, ts: u64) -> u64 {
        if self.first.is_none() {
            self.first = Some(ts);
            self.now = ts;
            self.series.t0 = ts;
            self.cur = Episode::new(0, ts);
            self.pend_since = ts;
            self.slot = ts / SLOT_NS;
        }
        self.now = self.now.max(ts);
        self.c.frames += 1;
        self.now
    }

    /// A timeline entry, while there is room for it.
    fn event(&mut self, entry: (u64, String)) {
        if self.timeline.len() < MAX_EVENTS {
            self.timeline.push(entry);
        } else {
            self.events_dropped += 1;
        }
    }

    fn cookies_active(&self) -> bool {
        decide::cookies_active(self.p.cookies, || self.det.attack != 0)
    }

    fn flow(&self, client: u128, server: u128, cport: u16, sport: u16) -> u64 {
        use std::hash::BuildHasher as _;
        self.flow_hasher.hash_one((client, server, cport, sport))
    }

    /// One TCP segment at `now` (from [`Engine::tick`]).
    pub fn segment(&mut self, now: u64, s: &Seg<'_>) {
        self.c.tcp += 1;
        self.slot_tick(now);
        let key = self.p.key(s.v6, s.src);
        let (syn, ack) = (s.flags & SYN != 0, s.flags & ACK != 0);
        // A ban acts on SYNs to protected ports only, as in the kernel.
        let banned = syn
            && !ack
            && s.flags & (FIN | RST) == 0
            && self.p.settings.ports.contains(s.dport)
            && self.meters.get(&key).is_some_and(|m| m.banned_until > now);
        if banned {
            self.agent[stat::R_BANNED] += 1;
            self.dropped(now);
            if let Some(t) = self.talkers.get_mut(&key) {
                t.dropped = t.dropped.saturating_add(1);
            }
        }
        if syn && !ack {
            self.syn(now, s, key, banned);
        } else if syn {
            self.synack(s);
        } else {
            self.other(now, s, key);
        }
    }

    fn syn(&mut self, now: u64, s: &Seg<'_>, key: Key, banned: bool) {
        if s.flags & (FIN | RST) != 0 {
            if !banned {
                self.agent[stat::R_INVALID_FLAGS] += 1;
                self.dropped(now);
            }
            return;
        }
        self.c.syns += 1;
        self.slot_syns += 1;
        self.series.at(now).syns += 1;
        if self.det.attack != 0 {
            self.series.at(now).attack = true;
        }

        // The agent first (it may open an episode), as the kernel orders it: a banned
        // source's SYNs are dropped before they are counted for attack mode.
        let mut verdict = Verdict::Banned;
        let mut challenged = false;
        if !banned {
            self.agent[stat::N_SYNS] += 1;
            self.detect(now);
            (verdict, challenged) = self.decide(now, s, key);
        }
        let retrans = self.pending_syn(now, s, key);

        // The source's statistics.
        let is_new = !self.talkers.contains_key(&key);
        if is_new && self.talkers.len() >= TALKERS {
            self.evict_talkers();
        }
        let ep = self.cur.id;
        let t = self.talkers.entry(key).or_insert_with(|| Talker {
            win_start: now,
            ep: u32::MAX,
            ..Talker::default()
        });
        let suspect = t.completed == 0 && t.retrans == 0;
        t.syns = t.syns.saturating_add(1);
        t.last_ns = now;
        if now.saturating_sub(t.win_start) >= SEC {
            t.win_start = now;
            t.win_syns = 0;
        }
        t.win_syns = t.win_syns.saturating_add(1);
        t.peak = t.peak.max(t.win_syns);
        if t.ep != ep {
            t.ep = ep;
            t.ep_syns = 0;
        }
        t.ep_syns = t.ep_syns.saturating_add(1);
        let ep_syns = t.ep_syns;
        if retrans {
            t.retrans = t.retrans.saturating_add(1);
        }
        match verdict {
            Verdict::Limited(ban) => {
                t.dropped = t.dropped.saturating_add(1);
                if let Some((syns, span)) = ban {
                    t.banned_at = now;
                    t.ban_syns = syns;
                    t.ban_span = span;
                }
            }
            Verdict::Cookie => t.cookies = t.cookies.saturating_add(1),
            Verdict::Banned | Verdict::Passed => {}
        }
        if challenged {
            t.challenged = t.challenged.saturating_add(1);
        }
        self.sources.insert(key);
        let net = subnet(s.v6, s.src);
        if let Some(e) = self.subnets.get_mut(&net) {
            e.0 += 1;
            e.1 += u64::from(is_new);
        } else if self.subnets.len() < SUBNETS {
            self.subnets.insert(net, (1, 1));
        } else {
            self.subnets_full += 1;
        }
        let target = (s.dst, s.dport);
        if !bump(&mut self.targets, target, TARGETS) {
            self.targets_full += 1;
        }

        // The episode (or the candidate for one).
        let e = &mut self.cur;
        e.syns += 1;
        e.ipv6_syns += u64::from(s.v6);
        e.sources.insert(key);
        if e.top.is_none_or(|(_, n)| ep_syns > n) {
            e.top = Some((key, ep_syns));
        }
        bump(&mut e.targets, target, 64);
        if suspect {
            let fam = usize::from(s.v6);
            e.suspect[fam] += 1;
            if s.v6 {
                let hi = (s.src >> 64) as u64;
                for (i, b) in e.bits_v6.iter_mut().enumerate() {
                    *b += (hi >> (63 - i)) & 1;
                }
            } else {
                let a = s.src as u32;
                for (i, b) in e.bits_v4.iter_mut().enumerate() {
                    *b += u64::from((a >> (31 - i)) & 1);
                }
            }
            e.subnets[fam].insert(net);
        }
        match verdict {
            Verdict::Banned | Verdict::Limited(_) => {
                e.dropped += 1;
                if !e.open {
                    self.open(now, "a source over its limit");
                }
                self.cur.last_hot = now;
            }
            Verdict::Cookie => {
                e.cookies += 1;
                self.series.at(now).cookies += 1;
            }
            Verdict::Passed => {}
        }
        if challenged {
            // A proven source over its limit: the agent's rules fired as for a ban.
            if !self.cur.open {
                self.open(now, "a proven source over its limit");
            }
            self.cur.last_hot = now;
        }
        if let Verdict::Limited(Some((syns, span))) = verdict {
            self.cur.bans += 1;
            self.bans += 1;
            if self.bans <= BANS_SHOWN {
                let who = self.p.show(key);
                let what = ban_text(syns, span);
                self.event((
                    now,
                    format!(
                        "{who} would be banned for {}: {what}, over syn-rate {}/s with \
                         syn-burst {}",
                        humantime::format_duration(self.p.settings.ban_for),
                        self.p.settings.syn_rate,
                        self.p.settings.syn_burst
                    ),
                ));
            }
        }
        self.maybe_close(now);
    }

    /// The end of the capture: close what is open, count the handshakes still open.
    pub fn finish(&mut self) {
        if self.first.is_none() {
            return;
        }
        let now = self.now;
        self.slot_tick(now.saturating_add(SLOT_NS));
        if self.cur.open {
            self.close(true);
        }
        let grace = now.saturating_sub(PENDING_GRACE_NS);
        let old = std::mem::take(&mut self.pend_old);
        let cur = std::mem::take(&mut self.pend);
        for (_, p) in old.into_iter().chain(cur) {
            if p.t >= grace {
                self.c.pending_at_end += 1;
            } else {
                self.expire(p);
            }
        }
    }

    pub fn attack_on_at_end(&self) -> bool {
        self.det.attack != 0
    }
}

/// Count one more for `k`, if it is there or there is room for it (`false`: no room).
fn bump(m: &mut HashMap<(u128, u16), u64>, k: (u128, u16), cap: usize) -> bool {
    if let Some(n) = m.get_mut(&k) {
        *n += 1;
    } else if m.len() < cap {
        m.insert(k, 1);
    } else {
        return false;
    }
    true
}

/// How the daemon words a ban's rate.
pub fn ban_text(syns: u64, span: u64) -> String {
    let rate = syns * SEC / span.max(1);
    if span <= 1_000_000 {
        format!("{syns} SYNs within 1 ms (at least {rate} SYN/s)")
    } else {
        format!("{syns} SYNs in {} ms ({rate} SYN/s)", span / 1_000_000)
    }
}
