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

use std::net::{Ipv4Addr, Ipv6Addr};

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

    /// The agent's decision on a SYN from a source that is not banned, in the kernel's
    /// order ([`decide::decide_syn`]), and whether it was a challenge (a proven source
    /// over its limit; see `on_limit` in the kernel).
    fn decide(&mut self, now: u64, s: &Seg<'_>, key: Key) -> (Verdict, bool) {
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
    fn verified(&self, now: u64, key: Key) -> bool {
        self.verified.get(&key).is_some_and(|&until| until > now)
    }

    /// The token bucket, as `meter_syn`, `on_limit` and `track_new` in the kernel (the
    /// shared [`decide::bucket_syn`] and [`decide::over_limit`]): the SYN conforms, or it
    /// is over the limit: a proven source is challenged (attack mode starts; no ban), any
    /// other is limited, with the (SYNs, span) of the ban it starts (`None` when
    /// `ban-for` is 0 and the excess is only dropped).
    fn meter(&mut self, now: u64, key: Key) -> Metered {
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
    fn challenge_starts_attack_mode(&mut self, now: u64, key: Key) {
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
    fn detect(&mut self, now: u64) {
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

    /// The offered SYN rate over fixed windows: all SYNs, banned sources' included.
    fn slot_tick(&mut self, now: u64) {
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
    fn dropped(&mut self, now: u64) {
        self.series.at(now).drops += 1;
        self.slot_drops += 1;
    }

    fn open(&mut self, now: u64, why: &str) {
        let e = &mut self.cur;
        e.open = true;
        e.last_hot = now;
        let start = e.start;
        self.event((
            start,
            format!("SYN flood starts (the agent's rules fire: {why})"),
        ));
    }

    fn maybe_close(&mut self, now: u64) {
        if self.cur.open
            && self.det.attack == 0
            && now.saturating_sub(self.cur.last_hot) >= ATTACK_CALM_NS
        {
            self.close(false);
        }
    }

    /// Close the open episode (at the end of the capture, `ongoing`).
    fn close(&mut self, ongoing: bool) {
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

    /// A SYN's handshake: returns whether it is a retransmission.
    fn pending_syn(&mut self, now: u64, s: &Seg<'_>, key: Key) -> bool {
        if now.saturating_sub(self.pend_since) >= PENDING_AGE_NS || self.pend.len() >= PENDING {
            if self.pend.len() >= PENDING {
                self.c.pending_rotations_early += 1;
            }
            self.rotate(now);
        }
        let h = self.flow(s.src, s.dst, s.sport, s.dport);
        let found = match self.pend.get_mut(&h) {
            Some(p) => Some(*p),
            None => self.pend_old.remove(&h),
        };
        if let Some(mut p) = found {
            if p.isn == s.seq {
                // The same SYN again. A TCP stack sends it again only after its
                // retransmission timeout (1 s, then doubling; at least 200 ms anywhere);
                // sooner it is the same packet captured twice (`-i any` on a bridge) or a
                // flood tool repeating itself, neither a client kept waiting.
                let retrans = now.saturating_sub(p.last) >= MIN_RTO_NS;
                p.last = now;
                self.c.retrans += u64::from(retrans);
                self.pend.insert(h, p);
                return retrans;
            }
            // The same ports again with a new sequence: a new connection; the old one
            // never completed.
            self.expire(p);
        }
        self.pend.insert(
            h,
            Pend {
                client: key,
                t: now,
                last: now,
                isn: s.seq,
                srv_isn: 0,
                synack: false,
            },
        );
        false
    }

    fn rotate(&mut self, now: u64) {
        let mut old = std::mem::take(&mut self.pend_old);
        for (_, p) in old.drain() {
            self.expire(p);
        }
        self.pend_old = std::mem::replace(&mut self.pend, old);
        self.pend_since = now;
    }

    /// A handshake that never completed.
    fn expire(&mut self, p: Pend) {
        self.c.never_completed += 1;
        self.c.never_acked += u64::from(p.synack);
        if let Some(t) = self.talkers.get_mut(&p.client) {
            t.failed = t.failed.saturating_add(1);
        }
        if self.cur.open && p.t >= self.cur.start {
            // Counted into the flood when it closes.
            self.cur.never += 1;
        } else {
            let i = self.floods.partition_point(|f| f.start <= p.t);
            if let Some(f) = i.checked_sub(1).and_then(|i| self.floods.get_mut(i))
                && p.t <= f.end + ATTACK_CALM_NS
            {
                f.never_completed += 1;
            }
        }
    }

    /// A reset ended the handshake in progress `h`, if any: it never completed.
    fn reset_pending(&mut self, h: u64) {
        if let Some(p) = self.pend.remove(&h).or_else(|| self.pend_old.remove(&h)) {
            self.expire(p);
        }
    }

    fn synack(&mut self, s: &Seg<'_>) {
        self.c.synacks += 1;
        let h = self.flow(s.dst, s.src, s.dport, s.sport);
        let p = match self.pend.get_mut(&h) {
            Some(p) => Some(p),
            None => self.pend_old.get_mut(&h),
        };
        if let Some(p) = p {
            if p.synack && p.srv_isn == s.seq {
                self.c.synack_retrans += 1;
            }
            p.synack = true;
            p.srv_isn = s.seq;
        }
    }

    fn other(&mut self, now: u64, s: &Seg<'_>, key: Key) {
        let rst = s.flags & RST != 0;
        self.c.rsts += u64::from(rst);
        if self.targets.contains_key(&(s.src, s.sport)) {
            // From a server to its client.
            let client = self.p.key(s.v6, s.dst);
            let status = http_status(s.payload);
            if let Some(code) = status {
                *self.c.http.entry(code).or_default() += 1;
            }
            self.c.rsts_from_server += u64::from(rst);
            if rst {
                // A refused connection (a closed port, a full backlog): never completed.
                self.reset_pending(self.flow(s.dst, s.src, s.dport, s.sport));
            }
            if let Some(t) = self.talkers.get_mut(&client) {
                if rst {
                    t.resets = t.resets.saturating_add(1);
                }
                if let Some(code) = status.filter(|&c| c >= 500) {
                    t.http_err = t.http_err.saturating_add(1);
                    t.last_http_err = code;
                }
            }
            return;
        }
        if !self.targets.contains_key(&(s.dst, s.dport)) {
            return;
        }
        // From a client to a server.
        self.c.rsts_to_server += u64::from(rst);
        if rst {
            // The client gave up, or a real host reset a SYN-ACK it never asked for.
            self.reset_pending(self.flow(s.src, s.dst, s.sport, s.dport));
        }
        let mut established = false;
        if s.flags & ACK != 0 && !rst {
            let h = self.flow(s.src, s.dst, s.sport, s.dport);
            let p = match self.pend.get(&h) {
                Some(p) => Some(*p),
                None => self.pend_old.get(&h).copied(),
            };
            if let Some(p) = p {
                let done = if p.synack {
                    s.ack == p.srv_isn.wrapping_add(1)
                } else {
                    // Only one direction captured: the client's ACK after its SYN.
                    s.seq == p.isn.wrapping_add(1)
                };
                if done {
                    self.pend.remove(&h);
                    self.pend_old.remove(&h);
                    self.c.completed += 1;
                    self.cur.completed += 1;
                    established = true;
                }
            }
        }
        let cookies = self.cookies_active();
        // A completed handshake proves the source owns its address: the agent's sock_ops
        // program records it, attack mode or not.
        if established {
            self.prove(now, key);
        }
        if let Some(t) = self.talkers.get_mut(&key) {
            t.answered = true;
            if established {
                t.completed = t.completed.saturating_add(1);
            }
            // In attack mode the agent verifies a source by its ACK: a valid cookie, or
            // a connection the kernel has.
            established |= t.completed > 0;
        }
        if cookies && established && s.flags & ACK != 0 && !rst {
            if self.verified.len() >= capacity::VERIFIED as usize {
                self.verified.retain(|_, until| *until > now);
            }
            if self.verified.len() < capacity::VERIFIED as usize {
                self.verified
                    .insert(key, now.saturating_add(self.p.verified_ns));
                self.agent[stat::N_VERIFIED] += 1;
            }
        }
    }

    /// Record a proof (the verified set), as the kernel does for a completed handshake.
    fn prove(&mut self, now: u64, key: Key) {
        if self.verified.len() >= capacity::VERIFIED as usize {
            self.verified.retain(|_, until| *until > now);
        }
        if self.verified.len() < capacity::VERIFIED as usize {
            let until = now.saturating_add(self.p.verified_ns);
            let e = self.verified.entry(key).or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// Forget the least notable sources: those with the fewest SYNs that did nothing
    /// else worth reporting, about half of the table.
    fn evict_talkers(&mut self) {
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

#[derive(Clone, Copy, Debug)]
/// What the token bucket says of a SYN (see `Engine::meter`).
enum Metered {
    Passed,
    /// No room in the sources table: passed unmetered.
    Untracked,
    /// A proven source over its limit; `true` when that started attack mode.
    Challenged(bool),
    /// Over the bucket; with the (SYNs, span) of the ban it starts, if any.
    Limited(Option<(u64, u64)>),
}

enum Verdict {
    Passed,
    Cookie,
    /// Over the bucket; with the (SYNs, span) of the ban it starts, if any.
    Limited(Option<(u64, u64)>),
    Banned,
}

/// The engine as [`decide::decide_syn`] asks it, for one SYN; what the meter said
/// beyond its reason is kept for the caller.
struct Replay<'a> {
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

/// The leading bits that 99 % of the counted addresses agree on: (value, length).
fn covering<const N: usize>(bits: &[u64; N], total: u64) -> (u64, u8) {
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

#[cfg(test)]
mod tests {
    use super::{super::decode::v4, *};

    const T0: u64 = 1_700_000_000 * SEC;
    const SERVER: [u8; 4] = [192, 0, 2, 1];

    fn seg(
        src: u128,
        dst: u128,
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    ) -> Seg<'static> {
        Seg {
            v6: !is_v4(src),
            src,
            dst,
            sport,
            dport,
            flags,
            seq,
            ack,
            payload: &[],
        }
    }

    fn feed(e: &mut Engine, t: u64, s: &Seg<'_>) {
        let now = e.tick(t);
        e.segment(now, s);
    }

    /// A client's whole handshake to the server at `t`: SYN, SYN-ACK, ACK.
    fn handshake(e: &mut Engine, t: u64, client: u128, port: u16) {
        let server = v4(SERVER);
        feed(e, t, &seg(client, server, port, 80, SYN, 1000, 0));
        feed(
            e,
            t + 100_000,
            &seg(server, client, 80, port, SYN | ACK, 5000, 1001),
        );
        feed(
            e,
            t + 200_000,
            &seg(client, server, port, 80, ACK, 1001, 5001),
        );
    }

    #[test]
    fn a_flooder_is_banned_once_its_burst_is_spent() {
        let mut e = Engine::new(&Settings::default());
        let attacker = v4([203, 0, 113, 7]);
        // 1000 SYNs at 100,000 SYN/s.
        for i in 0..1000u64 {
            let s = seg(attacker, v4(SERVER), 1024 + i as u16, 80, SYN, i as u32, 0);
            feed(&mut e, T0 + i * 10_000, &s);
        }
        e.finish();
        let passed = e.agent[stat::R_SYN_PASSED];
        // syn-burst 100: the first SYN and the burst pass (the bucket refills one SYN per
        // 5 ms meanwhile), the next one is over the limit and starts the ban.
        assert!((100..=103).contains(&passed), "{passed}");
        assert_eq!(e.agent[stat::R_SYN_LIMITED], 1);
        assert_eq!(e.agent[stat::N_BANS], 1);
        assert_eq!(e.agent[stat::R_BANNED], 1000 - passed - 1);
        // Banned SYNs are dropped before attack mode counts them.
        assert_eq!(e.agent[stat::N_ATTACKS], 0);
        // All within one 100 ms window: the peaks are rates over it.
        assert_eq!(e.peak, (10_000, T0));
        assert_eq!(e.drop_peak, ((1000 - passed) * 10, T0));
        assert_eq!(e.floods.len(), 1);
        let f = &e.floods[0];
        assert_eq!(f.top, Some((attacker, 1000)));
        assert_eq!(f.target, Some((v4(SERVER), 80, 1000)));
        assert!(f.ongoing);
        let t = &e.talkers[&attacker];
        assert_eq!(t.dropped as u64, 1000 - passed);
        assert!(!t.legitimate());
    }

    #[test]
    fn forged_sources_start_attack_mode_and_it_ends_after_the_calm() {
        let mut e = Engine::new(&Settings::default());
        let client = v4([198, 51, 100, 10]);
        // 2 s of 5000 SYN/s, each from another address in 198.18.0.0/15...
        for i in 0..10_000u64 {
            let src = v4([198, 18, (i >> 8) as u8, i as u8]);
            feed(
                &mut e,
                T0 + i * 200_000,
                &seg(src, v4(SERVER), 40_000, 80, SYN, 7, 0),
            );
        }
        // ...then 15 s of one client at 20 handshakes per second.
        for i in 0..300u64 {
            handshake(
                &mut e,
                T0 + 2 * SEC + i * 50_000_000,
                client,
                1024 + i as u16,
            );
        }
        e.finish();
        assert_eq!(e.agent[stat::N_ATTACKS], 1);
        assert!(!e.attack_on_at_end());
        assert_eq!(e.floods.len(), 1, "one episode");
        let f = &e.floods[0];
        // The forged ones and the client, whose SYNs came while attack mode was on.
        assert_eq!((f.sources, f.sources_exact), (10_001, true));
        assert_eq!(f.bans, 0);
        let on = f.attack_on.expect("attack mode");
        // The first window closes early (10 ms at over attack-syn-rate).
        assert!(on - T0 <= ATTACK_WINDOW_NS, "{}", on - T0);
        assert!(f.cookies > 9_000, "{}", f.cookies);
        assert!(
            f.attack_off
                .is_some_and(|off| off >= T0 + 2 * SEC + ATTACK_CALM_NS)
        );
        // Its end is the last moment it was seen, not the end of the hysteresis.
        assert!(f.end <= T0 + 2 * SEC + SLOT_NS, "{}", f.end - T0);
        assert_eq!(f.spread.len(), 1);
        assert_eq!(f.spread[0].covering, "198.18.0.0/18");
        assert!(
            e.timeline
                .iter()
                .any(|(_, w)| w.starts_with("attack mode would end")),
            "{:?}",
            e.timeline
        );
        // The client, answered with a cookie during the calm's attack mode, completed.
        let t = &e.talkers[&client];
        assert_eq!(t.completed, 300);
        assert!(t.legitimate() && !t.hurt());
    }

    #[test]
    fn retransmitted_syns_and_handshakes_that_never_complete() {
        let mut e = Engine::new(&Settings::default());
        let (client, server) = (v4([198, 51, 100, 11]), v4(SERVER));
        // A SYN sent again 1 s and 3 s later (same sequence), then answered and completed.
        for t in [0, SEC, 3 * SEC] {
            feed(&mut e, T0 + t, &seg(client, server, 5555, 80, SYN, 42, 0));
        }
        feed(
            &mut e,
            T0 + 3 * SEC + 1_000,
            &seg(server, client, 80, 5555, SYN | ACK, 9, 43),
        );
        feed(
            &mut e,
            T0 + 3 * SEC + 2_000,
            &seg(client, server, 5555, 80, ACK, 43, 10),
        );
        // Another connection answered by the server, never acknowledged; then a reset and a
        // 504 from the server.
        feed(
            &mut e,
            T0 + 4 * SEC,
            &seg(client, server, 5556, 80, SYN, 100, 0),
        );
        feed(
            &mut e,
            T0 + 4 * SEC + 1_000,
            &seg(server, client, 80, 5556, SYN | ACK, 9, 101),
        );
        feed(
            &mut e,
            T0 + 5 * SEC,
            &seg(server, client, 80, 5555, RST | ACK, 10, 43),
        );
        let mut reply = seg(server, client, 80, 5555, ACK, 10, 43);
        reply.payload = b"HTTP/1.1 504 Gateway Time-out\r\n";
        feed(&mut e, T0 + 5 * SEC, &reply);
        // Time passes (another client's SYNs), so the open handshake is old at the end.
        for i in 0..10u64 {
            let other = v4([198, 51, 100, 12]);
            feed(
                &mut e,
                T0 + 6 * SEC + i * SEC,
                &seg(other, server, 6000 + i as u16, 80, SYN, 1, 0),
            );
        }
        // The same SYN captured twice (within microseconds) is no retransmission.
        feed(
            &mut e,
            T0 + 16 * SEC,
            &seg(client, server, 7777, 80, SYN, 5, 0),
        );
        feed(
            &mut e,
            T0 + 16 * SEC + 3_000,
            &seg(client, server, 7777, 80, SYN, 5, 0),
        );
        e.finish();
        assert_eq!(e.c.retrans, 2);
        assert_eq!(e.c.completed, 1);
        assert_eq!(
            e.c.never_acked, 1,
            "half-open: answered, never acknowledged"
        );
        assert_eq!(e.c.http.get(&504), Some(&1));
        let t = &e.talkers[&client];
        assert_eq!(
            (t.retrans, t.completed, t.failed, t.resets, t.http_err),
            (2, 1, 1, 1, 1)
        );
        assert!(t.hurt());
        assert_eq!(t.last_http_err, 504);
        assert!(e.floods.is_empty(), "no flood in a few SYNs");
    }

    #[test]
    fn normal_traffic_is_no_flood() {
        let mut e = Engine::new(&Settings::default());
        // 20 clients, 10 handshakes per second each, for 20 s: 200 SYN/s.
        for i in 0..4000u64 {
            let client = v4([198, 51, 100, 10 + (i % 20) as u8]);
            handshake(&mut e, T0 + i * 5_000_000, client, 1024 + (i / 20) as u16);
        }
        e.finish();
        assert!(e.floods.is_empty());
        assert_eq!(e.agent[stat::N_BANS] + e.agent[stat::N_ATTACKS], 0);
        assert_eq!(e.c.completed, 4000);
        assert_eq!(e.c.never_completed, 0);
        assert_eq!(e.peak.0, 200);
    }

    #[test]
    fn destinations_past_the_cap_are_counted() {
        let mut e = Engine::new(&Settings::default());
        let scanner = v4([203, 0, 113, 9]);
        for i in 0..5000u64 {
            let s = seg(scanner, v4(SERVER), 40_000, i as u16 + 1, SYN, 1, 0);
            feed(&mut e, T0 + i * SEC / 100, &s);
        }
        assert_eq!(e.targets.len(), TARGETS);
        assert_eq!(e.targets_full, 5000 - TARGETS as u64);
    }

    #[test]
    fn the_series_halves_its_resolution_instead_of_growing() {
        let mut e = Engine::new(&Settings::default());
        let client = v4([198, 51, 100, 10]);
        // One SYN a minute for 10 days: 14,400 one-second points otherwise.
        for i in 0..14_400u64 {
            feed(
                &mut e,
                T0 + i * 60 * SEC,
                &seg(client, v4(SERVER), 1, 80, SYN, i as u32, 0),
            );
        }
        assert!(e.series.points().len() <= MAX_POINTS);
        assert!(e.series.width >= 240 * SEC, "{}", e.series.width);
    }

    #[test]
    fn covering_prefix_ignores_a_few_strays() {
        // 198.18.0.0/15: random low 17 bits, plus 1 % noise elsewhere.
        let mut bits = [0u64; 32];
        let mut total = 0;
        let mut x = 7u32;
        for i in 0..10_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let a = if i % 200 == 0 {
                u32::from_be_bytes([198, 51, 100, 10])
            } else {
                u32::from_be_bytes([198, 18, 0, 0]) | (x & 0x1_ffff)
            };
            for (j, b) in bits.iter_mut().enumerate() {
                *b += u64::from((a >> (31 - j)) & 1);
            }
            total += 1;
        }
        let (v, len) = covering(&bits, total);
        assert_eq!(len, 15);
        assert_eq!(
            show_prefix((0xffff << 32) | u128::from(v as u32), false, len),
            "198.18.0.0/15"
        );
    }

    #[test]
    fn keys_and_names() {
        let p = Params::new(&Settings::default());
        let a = super::super::decode::v4([203, 0, 113, 7]);
        assert_eq!(p.show(p.key(false, a)), "203.0.113.7");
        let b = u128::from("2001:db8:5::10".parse::<Ipv6Addr>().expect("address"));
        assert_eq!(p.show(p.key(true, b)), "2001:db8:5::/64");
        assert_eq!(show_prefix(subnet(false, a), false, 24), "203.0.113.0/24");
    }

    #[test]
    fn distinct_is_exact_then_estimates() {
        let mut d = Distinct::new();
        for i in 0..1000u128 {
            d.insert(i % 500);
        }
        assert_eq!(d.count(), 500);
        assert!(d.exact());
        for i in 0..200_000u128 {
            d.insert(i);
        }
        assert!(!d.exact());
        let n = d.count() as f64;
        assert!((n - 200_000.0).abs() < 200_000.0 * 0.05, "{n}");
    }
}
