//! Types and pure logic shared by the XDP program (`synguard-ebpf`) and userspace
//! (`synguard`).
//!
//! Everything here is `#![no_std]`, `#[repr(C)]`, `Copy`, and free of enums with data, so
//! the same bytes mean the same thing on both sides of the kernel boundary. Multi-byte
//! values that come from packets (addresses, ports) are kept in **network byte order**
//! exactly as they sit in the packet; counters, times and settings are native `u64`/`u32`.
//!
//! The token bucket is implemented once, in [`gcra`], and used by the kernel and by the
//! host unit tests.
#![no_std]

pub mod clock;
pub mod decide;
pub use decide::{attack_challenge, attack_step};
pub mod gcra;
pub mod hint;
pub mod sources;
pub mod stat;
pub mod synack;

/// Bumped whenever a pinned map's key or value layout (or the set of maps) changes. A `run` that finds pinned
/// state with another ABI refuses to adopt it rather than misread it.
pub const ABI_VERSION: u32 = 16;

/// The lowest port the kernel's source NAT hands out for a connection whose own source
/// port is 512 or more (it keeps a guest's port when it can, and otherwise picks from
/// 600-1023 or 1024-65535 by the port's class): replies to a NAT'd guest's connection
/// can arrive at any port from here up. Below it only a guest that bound a port under
/// 512 itself could collide with a listener, which clients do not do.
pub const SNAT_LOW_PORT: u16 = 512;
/// [`Config::snat`]'s bits: the host source-NATs IPv4, IPv6.
pub const SNAT_V4: u32 = 1;
pub const SNAT_V6: u32 = 2;

/// Names of the maps, which are also their pin file names under `<pin-dir>/maps/`.
/// Kernel map names are limited to 15 characters.
pub mod map_names {
    pub const CONFIG: &str = "SG_CONFIG";
    pub const STATS: &str = "SG_STATS";
    pub const RULES_V4: &str = "SG_RULES_V4";
    pub const RULES_V6: &str = "SG_RULES_V6";
    pub const SOURCES: &str = "SG_SOURCES";
    pub const EVENTS: &str = "SG_EVENTS";
    pub const IFSTATE: &str = "SG_IFSTATE";
    pub const VERIFIED: &str = "SG_VERIFIED";
    pub const RULES_HINT: &str = "SG_RULES_HINT";
    pub const RULES_HINT6: &str = "SG_RULES_HINT6";
    pub const BANS_V4: &str = "SG_BANS_V4";
    pub const BANS_V6: &str = "SG_BANS_V6";
    pub const BANS_HINT: &str = "SG_BANS_HINT";
    pub const BANS_HINT6: &str = "SG_BANS_HINT6";
    pub const BAN_CACHE: &str = "SG_BAN_CACHE";
    pub const BANS_EPOCH: &str = "SG_BANS_EPOCH";
    pub const CPU_RATES: &str = "SG_CPU_RATES";
    pub const LOCAL_V4: &str = "SG_LOCAL_V4";
    pub const LOCAL_V6: &str = "SG_LOCAL_V6";
    pub const NAT_PORTS: &str = "SG_NAT_PORTS";
    pub const SYN_SKETCH: &str = "SG_SYN_SKETCH";
    pub const PROOF_FILTER: &str = "SG_PROOF_FILTER";
    pub const HOST: &str = "SG_HOST";
    /// Every map that `run` pins and adopts.
    pub const ALL: [&str; 23] = [
        CONFIG,
        STATS,
        RULES_V4,
        RULES_V6,
        SOURCES,
        EVENTS,
        IFSTATE,
        VERIFIED,
        RULES_HINT,
        RULES_HINT6,
        BANS_V4,
        BANS_V6,
        BANS_HINT,
        BANS_HINT6,
        BAN_CACHE,
        BANS_EPOCH,
        CPU_RATES,
        LOCAL_V4,
        LOCAL_V6,
        NAT_PORTS,
        SYN_SKETCH,
        PROOF_FILTER,
        HOST,
    ];
}

/// Capacities. Kernel memory at these sizes: `SOURCES` is an array of 88-byte slots
/// (88 MiB as the kernel accounts it, measured by the bench), `VERIFIED` is a
/// preallocated hash, the four rule hints take
/// 2 MiB each, and the tries grow with their entries (13.7 MiB for 100k prefixes).
pub mod capacity {
    /// Per-CPU stats slots, indexed by the receiving interface's ifindex. Interfaces whose
    /// ifindex is at or above this share slot 0; `run` warns when it attaches to one.
    pub const STATS_SLOTS: u32 = 1024;

    /// The stats slot (of `SG_STATS`, `SG_IFSTATE`, `SG_CPU_RATES`) of an interface.
    #[inline(always)]
    pub const fn stats_slot(ifindex: u32) -> u32 {
        if ifindex < STATS_SLOTS { ifindex } else { 0 }
    }
    /// Allow and block entries per address family, and (in their own tries) as many
    /// bans.
    pub const RULES: u32 = 262_144;
    /// Of each family's allow/block trie, the entries only the allowlist may take: blocks
    /// and CrowdSec's decisions stop short of them, so `allow add` always has room.
    pub const ALLOW_RESERVE: u32 = 4_096;
    /// Slots for sources with a token bucket (both families; see [`crate::sources`]).
    pub const SOURCES: u32 = 1_048_576;
    /// Ring buffer for events to userspace, bytes (power of two, multiple of page size).
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// Sources verified by a completed handshake (least recently used ones are forgotten
    /// when full: they are challenged again, nothing worse).
    pub const VERIFIED: u32 = 262_144;
    /// CPUs whose SYN rates the attack detector adds up (CPUs with higher ids still meter
    /// and ban; their SYNs are left out of the attack-mode rate).
    pub const MAX_CPUS: u32 = 128;
    /// The machine's own addresses per family, for attack mode's locality check (see
    /// [`crate::stat::R_SYN_NOT_LOCAL`]); `run` warns when it has more.
    pub const LOCAL_ADDRS: u32 = 4096;
}

/// IPv6 extension headers (hop-by-hop, routing, destination options) the program walks
/// past to find the TCP header; a packet with more is passed as [`stat::R_IPV6_EXT`].
pub const V6_EXT_MAX: usize = 4;

pub const MODE_ENFORCE: u32 = 0;
pub const MODE_MONITOR: u32 = 1;

pub const COOKIES_AUTO: u32 = 0;
pub const COOKIES_ALWAYS: u32 = 1;
pub const COOKIES_OFF: u32 = 2;

/// Words in the destination-port bitmap.
pub const PORT_WORDS: usize = 65536 / 64;

/// Runtime settings, the single entry of the `SG_CONFIG` array. Userspace writes the
/// human values (for `config show`) together with the values derived from them (which
/// the kernel uses, so it never divides on the hot path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// [`ABI_VERSION`] of the writer.
    pub abi: u32,
    /// [`MODE_ENFORCE`] or [`MODE_MONITOR`].
    pub mode: u32,
    /// SYNs per second per source (human value).
    pub syn_rate: u32,
    /// Bucket depth in SYNs (human value).
    pub syn_burst: u32,
    pub ipv4_prefix: u32,
    pub ipv6_prefix: u32,
    /// SYNs per second on one interface that start attack mode.
    pub attack_syn_rate: u32,
    /// `COOKIES_*`.
    pub syn_cookies: u32,
    /// Derived: nanoseconds between two SYNs at `syn_rate` (GCRA emission interval).
    pub syn_interval_ns: u64,
    /// Derived: `(syn_burst - 1) * syn_interval_ns` (GCRA tolerance).
    pub syn_tolerance_ns: u64,
    /// Ban length; 0 means sources over the limit have their excess SYNs dropped but are
    /// not banned.
    pub ban_ns: u64,
    pub verified_ns: u64,
    /// Derived: `ipv4_prefix` as a mask over the address bytes in network order.
    pub v4_mask: [u8; 4],
    /// 1 when `ports` is empty (every destination port is protected).
    pub all_ports: u32,
    /// Derived: `ipv6_prefix` as a mask over the address bytes.
    pub v6_mask: [u8; 16],
    /// Incremented by every write, so readers can tell a change happened.
    pub generation: u64,
    /// Build id of the program `run` loaded (FNV-1a of the object), for `status`.
    pub build_id: u64,
    /// Process id of the `run` that wrote this (0 if none yet).
    pub daemon_pid: u32,
    pub _pad0: u32,
    /// How long the SYN rate must stay below half of `attack_syn_rate` before attack mode
    /// ends ([`ATTACK_CALM_NS`]; tests shorten it).
    pub attack_calm_ns: u64,
    /// Derived: [`sources::sketch_quiet_limit`] of `syn_interval_ns`, the SYNs per window
    /// a source may send in attack mode before it is metered in its bucket.
    pub syn_quiet: u32,
    /// Whether this host rewrites source addresses, per family ([`SNAT_V4`], [`SNAT_V6`]:
    /// masquerade or SNAT rules of that family, or rules that cannot be read), kept by
    /// `run`: in attack mode an ACK from 512 up with no socket, or at a listener port
    /// from 512 up, may be a reply to a guest's connection and is passed to the kernel
    /// (see `stat::R_ACK_NO_SOCKET`).
    pub snat: u32,
    /// Protected destination ports, bit `p % 64` of word `p / 64` (host order port).
    pub ports: [u64; PORT_WORDS],
    /// Secret key of the sources table's hash ([`sources::set_of`]), drawn once when the
    /// maps are created and kept by every later write.
    pub source_seed: [u64; sources::SEED_WORDS],
}

/// `SG_HOST`: the host's settings as attack mode keeps them (see `synguard::sysctls`).
/// One thread of `run` writes it (or, when no `run` is active, `detach` and the next
/// `run`), so no lock guards it and nothing else holds it up; the program reads
/// `cookie_opts`. Kept pinned, so a `run` after a crash or a restart restores what an
/// earlier one changed, and owns it again during an attack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostState {
    /// The value of `net.ipv4.tcp_syncookies` before `run` set it to 2, or -1.
    pub saved_syncookies: i32,
    /// The value of `net.ipv4.tcp_timestamps` before `run` set it to 2, or -1 (see
    /// [`synack`]).
    pub saved_timestamps: i32,
    /// What a cookie SYN-ACK may offer besides the MSS: a [`synack::cookie_opts`] word
    /// `run` derives from the kernel's settings and keeps current (0: the MSS only).
    pub cookie_opts: u32,
    /// 1 once `run` wrote this (a zeroed entry is a new map's).
    pub valid: u32,
    /// Since when (`CLOCK_MONOTONIC` ns) the host's settings have been set for SYN cookies
    /// answered from XDP (the server is under pressure in attack mode), or 0.
    pub cookies_since_ns: u64,
    /// The last moment they were, or 0: `tcp_timestamps` is put back a while after it, so
    /// the last cookies' ACKs are still read without timestamp offsets.
    pub cookies_last_ns: u64,
}

impl HostState {
    /// Nothing changed, nothing saved.
    pub const NONE: Self = Self {
        saved_syncookies: -1,
        saved_timestamps: -1,
        cookie_opts: 0,
        valid: 1,
        cookies_since_ns: 0,
        cookies_last_ns: 0,
    };
}

const _: () = assert!(core::mem::size_of::<HostState>() == 32);

/// Each CPU's memory of IPv4 sources it found banned, so a banned source's packets are
/// dropped without a walk of the bans trie (a call into the kernel per packet, the
/// largest part of a banned packet's cost). The trie stays the one record of bans: an
/// entry here is only believed while it names the source, its ban has not expired, and
/// its `epoch` equals `SG_BANS_EPOCH`, which userspace changes to a fresh value after
/// every change it makes to the bans tables (a removal, a replacement); the kernel only
/// ever adds bans or replaces expired ones, which no live entry here can be about.
///
/// Hits are counted here and added to the ban's own count every [`ban_cache::FLUSH`]
/// packets, and when the entry is reused or found stale; `rules::list` adds the counts
/// not yet carried over, so `block list` stays exact. Counts still pending when their ban
/// is removed are dropped with it (at most `FLUSH - 1` per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanCache {
    /// The source, as the 4 bytes of the packet in memory order.
    pub addr: u32,
    /// Hits since the last carry-over into the ban's count.
    pub pending: u32,
    /// `SG_BANS_EPOCH` when the ban was looked up (0: empty).
    pub epoch: u64,
    /// The ban's `expires_ns` (0: never).
    pub expires_ns: u64,
    /// The ban's `created_ns` and prefix length: the pending hits are carried to exactly
    /// that entry (never to another ban of the source), or dropped with it.
    pub created_ns: u64,
    pub prefix_len: u32,
    pub _pad: u32,
}

/// Shape of `SG_BAN_CACHE` (see [`BanCache`]).
pub mod ban_cache {
    /// Entries per CPU (direct-mapped by address).
    pub const SLOTS: u32 = 1024;
    /// Hits counted per CPU before they are carried over into the ban's entry.
    pub const FLUSH: u32 = 64;

    /// The entry an IPv4 source (bytes in packet order) uses: the top bits of a
    /// multiplicative hash.
    #[inline(always)]
    pub const fn slot(addr: [u8; 4]) -> u32 {
        u32::from_be_bytes(addr).wrapping_mul(0x9e37_79b1) >> (32 - SLOTS.trailing_zeros())
    }
}

/// A rule in the `SG_RULES_V4` / `SG_RULES_V6` longest-prefix-match tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `RULE_ALLOW`, `RULE_BLOCK` or `RULE_BAN`.
    pub kind: u8,
    /// What the kernel does on a match: `ACTION_PASS` or `ACTION_DROP`. Userspace sets
    /// `ACTION_PASS` on a block entry that lies inside an allow entry, so the allowlist
    /// always wins with a single lookup.
    pub action: u8,
    /// Length of `comment` in bytes.
    pub comment_len: u8,
    /// The prefix length this entry is stored under. A trie lookup returns the longest
    /// matching entry no longer than the key's prefix length, which may be a shorter one
    /// than asked for; readers check this to know which entry they got.
    pub prefix_len: u8,
    pub _pad: [u8; 4],
    /// `CLOCK_MONOTONIC` ns when the entry was made.
    pub created_ns: u64,
    /// `CLOCK_MONOTONIC` ns when it stops applying; 0 means never.
    pub expires_ns: u64,
    /// Packets that matched (updated atomically by the kernel).
    pub hits: u64,
    /// Bans: SYNs the source sent over the span its rate was measured on (see
    /// [`rate_span`]).
    pub syns: u64,
    /// Bans: the source's SYN rate (per second) when it was banned.
    pub rate: u64,
    /// Free text (manual entries), UTF-8, not NUL-terminated.
    pub comment: [u8; RULE_COMMENT_MAX],
}

pub const RULE_COMMENT_MAX: usize = 64;

/// Key data of the IPv4 rules trie: the address, then the entry's kind, then zeros.
///
/// Prefix lengths never exceed 32, so the bytes after the address take no part in
/// matching, and they serve twice: enumerating the keys tells each entry's kind, and the
/// value, which the kernel stores right after the key data in its node, is 8-byte aligned
/// (with a 4-byte key its atomic hit counter was misaligned, and an unaligned locked add
/// measured about 1 µs here instead of a few ns).
pub type RuleKeyV4 = [u8; 8];

/// Key data of the IPv6 rules trie: the address, the kind, zeros (as for IPv4).
pub type RuleKeyV6 = [u8; 24];

/// Offset of the kind byte in the rule keys.
pub const RULE_KEY_KIND_V4: usize = 4;
pub const RULE_KEY_KIND_V6: usize = 16;

/// The IPv4 rules trie key data for an address (kind 0: what packet lookups use).
#[inline(always)]
pub const fn rule_key_v4(addr: [u8; 4], kind: u8) -> RuleKeyV4 {
    [addr[0], addr[1], addr[2], addr[3], kind, 0, 0, 0]
}

/// The IPv6 rules trie key data for an address.
#[inline(always)]
pub const fn rule_key_v6(addr: [u8; 16], kind: u8) -> RuleKeyV6 {
    let mut k = [0u8; 24];
    let mut i = 0;
    while i < 16 {
        k[i] = addr[i];
        i += 1;
    }
    k[16] = kind;
    k
}
pub const RULE_ALLOW: u8 = 1;
pub const RULE_BLOCK: u8 = 2;
pub const RULE_BAN: u8 = 3;
/// A ban decision pulled from CrowdSec's Local API (`run --crowdsec-url`): kept in the
/// operator's trie, where the kernel treats it as a block (every packet of the source is
/// dropped, as CrowdSec's other bouncers do), and the allowlist still wins. Its comment
/// holds the decision's origin and scenario, separated by a tab.
pub const RULE_CROWDSEC: u8 = 4;
pub const ACTION_PASS: u8 = 0;
pub const ACTION_DROP: u8 = 1;

impl Rule {
    pub const fn new(kind: u8, action: u8, created_ns: u64, expires_ns: u64) -> Self {
        Self {
            kind,
            action,
            comment_len: 0,
            prefix_len: 0,
            _pad: [0; 4],
            created_ns,
            expires_ns,
            hits: 0,
            syns: 0,
            rate: 0,
            comment: [0; RULE_COMMENT_MAX],
        }
    }

    /// Whether the rule has expired at `now_ns` (never, when `expires_ns` is 0).
    pub const fn expired(&self, now_ns: u64) -> bool {
        self.expires_ns != 0 && now_ns >= self.expires_ns
    }
}

/// A source's key in `SG_SOURCES` (see [`sources`]) and `SG_VERIFIED`: the source
/// address aggregated to the configured prefix. IPv4 sources are stored as IPv4-mapped
/// IPv6 addresses (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    /// Prefix length in the address family's own bits (so `/24` for IPv4), which keeps
    /// buckets made under another aggregation setting apart until they age out.
    pub prefix_len: u32,
}

/// A source's token bucket in its `SG_SOURCES` slot, kept as GCRA state (see [`gcra`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// GCRA theoretical arrival time, `CLOCK_MONOTONIC` ns.
    pub tat_ns: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// SYNs seen from this source, all verdicts.
    pub syns: u64,
    /// SYNs dropped for being over the limit.
    pub limited: u64,
    /// Start of the current rate window (at most one second long).
    pub window_start_ns: u64,
    /// SYNs in the current rate window.
    pub window_syns: u64,
    /// SYNs in the window before it, if it ended less than a window ago (else 0).
    pub prev_window_syns: u64,
}

impl Bucket {
    /// The bucket of a source first seen at `now`, its first SYN counted (and its token
    /// taken): the XDP program and `synguard analyze` start every source alike.
    #[inline(always)]
    pub fn first(now: u64, interval_ns: u64) -> Self {
        Self {
            tat_ns: gcra::first(now, interval_ns),
            first_seen_ns: now,
            last_seen_ns: now,
            syns: 1,
            limited: 0,
            window_start_ns: now,
            window_syns: 1,
            prev_window_syns: 0,
        }
    }

    /// Count one SYN at `now` in the source's totals and rate windows: the XDP program
    /// and `synguard analyze` share it, so both measure a source alike. Time that seems
    /// to run backwards (another CPU's earlier clock read, a capture's reordered
    /// packets) counts in the current window rather than restarting it.
    #[inline(always)]
    pub fn count_syn(&mut self, now: u64) {
        self.syns += 1;
        self.last_seen_ns = now;
        let age = now.saturating_sub(self.window_start_ns);
        if age >= RATE_WINDOW_NS {
            self.prev_window_syns = if age < 2 * RATE_WINDOW_NS {
                self.window_syns
            } else {
                0
            };
            self.window_start_ns = now;
            self.window_syns = 0;
        }
        self.window_syns += 1;
    }
}

/// Rate windows restart after this long. The rate reported at a ban is the SYNs of the
/// current window divided by its age or, when the window is younger than
/// [`YOUNG_WINDOW_NS`], the SYNs of this window and the one before over their span.
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;
pub const YOUNG_WINDOW_NS: u64 = 100_000_000;

/// The (SYNs, nanoseconds) a ban reports: see [`RATE_WINDOW_NS`]. Spans under a
/// millisecond count as one (the kernel's coarse clock cannot tell them apart).
#[inline(always)]
pub const fn rate_span(b: &Bucket, now: u64) -> (u64, u64) {
    let age = now.saturating_sub(b.window_start_ns);
    if age < YOUNG_WINDOW_NS && b.prev_window_syns != 0 {
        (b.prev_window_syns + b.window_syns, RATE_WINDOW_NS + age)
    } else if age < 1_000_000 {
        (b.window_syns, 1_000_000)
    } else {
        (b.window_syns, age)
    }
}

pub const EVENT_BAN: u32 = 1;
/// An interface entered attack mode; `rate` is the total SYN rate that triggered it, and
/// `syns` is [`ATTACK_BY_CHALLENGE`] when a proven source over its limit started it.
pub const EVENT_ATTACK_ON: u32 = 2;
/// See [`EVENT_ATTACK_ON`].
pub const ATTACK_BY_CHALLENGE: u64 = 1;
/// An interface left attack mode; `rate` is the peak SYN rate of the attack, `syns`
/// how long it lasted in milliseconds.
pub const EVENT_ATTACK_OFF: u32 = 3;
/// A proven source went over its limit for the first time since it was tracked: it is
/// challenged, not banned (its address is most likely forged); `syns` and `rate` as for
/// a ban.
pub const EVENT_CHALLENGE: u32 = 4;

/// The attack detector measures each CPU's SYN rate over windows this long.
pub const ATTACK_WINDOW_NS: u64 = 100_000_000;
/// A window may close early, once it holds more SYNs than the threshold allows for a
/// whole window, but not before it is this old: a burst is judged over a real interval,
/// so one flooder's `syn-burst` (banned a millisecond later) does not start attack mode.
pub const ATTACK_EARLY_NS: u64 = 10_000_000;
/// A CPU's rate older than this no longer counts (that CPU stopped seeing SYNs).
pub const ATTACK_STALE_NS: u64 = 3 * ATTACK_WINDOW_NS;
/// Attack mode ends once the total rate has stayed below half of `attack-syn-rate` for
/// this long (hysteresis: it starts at the full rate, ends well below it, and does not
/// flap while an attack pauses for a moment).
pub const ATTACK_CALM_NS: u64 = 10_000_000_000;

/// Attack-mode state of one interface: the value of `SG_IFSTATE` (one entry per stats
/// slot, shared by all CPUs; races between CPUs only repeat the same decision).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfState {
    /// 1 while in attack mode.
    pub attack: u32,
    pub _pad: u32,
    /// When attack mode started (0 if not in attack mode).
    pub since_ns: u64,
    /// Since when the rate has been below the exit threshold (0 if not).
    pub calm_since_ns: u64,
    /// The latest total SYN rate (per second) and when it was measured.
    pub rate: u64,
    pub rate_ns: u64,
    /// The highest total rate of the current (or last) attack.
    pub peak_rate: u64,
    /// The last SYN over its limit from a proven source (challenged): attack mode lasts
    /// at least a calm period after it (0 if none).
    pub challenged_ns: u64,
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// How a source proved it owns its address: the value of `SG_VERIFIED`.
///
/// A proof is something a forger cannot produce: it needs packets the server sent to the
/// address (a SYN-ACK's sequence number, or a cookie), so only whoever receives at the
/// address can complete it. Proven sources over their SYN limit are challenged with
/// cookies, never banned (see [`stat::N_CHALLENGED`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Proof {
    /// Proven until then (`CLOCK_MONOTONIC` ns); [`PROOF_FOREVER`] for protected
    /// addresses.
    pub until_ns: u64,
    /// When it was first proven (as far as this entry knows).
    pub since_ns: u64,
    /// `PROOF_*`.
    pub how: u32,
    pub _pad: u32,
}

/// Proven until this time: protected (the gateway, the resolvers), re-asserted by `run`.
pub const PROOF_FOREVER: u64 = u64::MAX;
/// It completed a handshake through a SYN cookie answered in XDP.
pub const PROOF_COOKIE: u32 = 1;
/// It completed a handshake with a socket of this machine (the `sock_ops` program).
pub const PROOF_HANDSHAKE: u32 = 2;
/// It had connections (established, or closing) when `run` looked (`sock_diag`).
pub const PROOF_SOCKET: u32 = 3;
/// The machine's default gateway: never banned.
pub const PROOF_GATEWAY: u32 = 4;
/// One of the machine's DNS resolvers: never banned.
pub const PROOF_RESOLVER: u32 = 5;

/// A record in the `SG_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `EVENT_*`.
    pub kind: u32,
    pub ifindex: u32,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: [u8; 6],
    /// For IPv4, the first four bytes.
    pub addr: [u8; 16],
    pub time_ns: u64,
    pub expires_ns: u64,
    pub syns: u64,
    pub rate: u64,
}

/// One CPU's SYN rate (per second) on one interface over its last closed window, and when
/// that window closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuRate {
    pub rate: u64,
    pub at_ns: u64,
}

/// Every CPU's latest SYN rate on one interface: the value of `SG_CPU_RATES` (one entry per
/// stats slot), indexed by CPU id. Each CPU writes only its own element when it closes a
/// rate window; the CPU that then re-evaluates attack mode reads them all. A plain array
/// shared by the CPUs rather than a field of the per-CPU `SG_STATS`: reading another CPU's
/// per-CPU value takes `bpf_map_lookup_percpu_elem` (Linux 5.19) and a loop of helper
/// calls, which Linux 6.1's verifier refuses; this is one lookup and a loop of loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuRates {
    pub cpus: [CpuRate; capacity::MAX_CPUS as usize],
}

/// Per-CPU, per-interface counters: the value of `SG_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub counters: [u64; stat::COUNT],
    /// GCRA state of this CPU's event rate limit.
    pub event_tat_ns: u64,
    /// Last time this CPU logged a warning (warnings are limited to one a second).
    pub warn_ns: u64,
    /// This CPU's SYN rate window: start and SYNs so far.
    pub window_start_ns: u64,
    pub window_syns: u64,
    /// This CPU's clock (see [`clock`]): the coarse monotonic time and jiffies read
    /// together at the last resync, and the measured length of a jiffy (0 until known).
    pub clock_ns: u64,
    pub clock_jiffies: u64,
    pub tick_ns: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counters: [0; stat::COUNT],
            event_tat_ns: 0,
            warn_ns: 0,
            window_start_ns: 0,
            window_syns: 0,
            clock_ns: 0,
            clock_jiffies: 0,
            tick_ns: 0,
        }
    }
}

/// Events per second per CPU per interface, and burst, before further events are
/// suppressed (and counted). Bans still happen; userspace finds suppressed ones by
/// scanning the rules.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000 / 1000;
pub const EVENT_TOLERANCE_NS: u64 = 100 * EVENT_INTERVAL_NS;

/// Mask an address to a prefix (bytes in network order). Used by userspace to build the
/// masks the kernel applies, and by tests.
pub const fn prefix_mask<const N: usize>(prefix_len: u32) -> [u8; N] {
    let mut mask = [0u8; N];
    let mut i = 0;
    while i < N {
        let bits_before = (i as u32) * 8;
        mask[i] = if prefix_len >= bits_before + 8 {
            0xff
        } else if prefix_len <= bits_before {
            0
        } else {
            0xffu8 << (8 - (prefix_len - bits_before))
        };
        i += 1;
    }
    mask
}

/// The `SG_SOURCES` key for an IPv4 source (network-order bytes) under a mask.
#[inline(always)]
pub fn source_key_v4(addr: [u8; 4], mask: [u8; 4], prefix_len: u32) -> SourceKey {
    // The IPv4-mapped address (::ffff:a.b.c.d) built as one integer: the BPF backend
    // then writes it with a few wide stores. Spelled out byte by byte, it zeroed the first
    // ten bytes with an out-of-line, byte-at-a-time `memset` call on every TCP packet.
    let a = u32::from_le_bytes(addr) & u32::from_le_bytes(mask);
    let mapped = (u128::from(a) << 96) | (0xffff_u128 << 80);
    SourceKey {
        addr: mapped.to_le_bytes(),
        prefix_len,
    }
}

/// The `SG_SOURCES` key for an IPv6 source under a mask.
#[inline(always)]
pub fn source_key_v6(addr: [u8; 16], mask: [u8; 16], prefix_len: u32) -> SourceKey {
    // As one integer (see `source_key_v4`): masked byte by byte, the key was built with
    // sixteen loads, ands and stores and read back a byte at a time for the hash.
    let a = u128::from_ne_bytes(addr) & u128::from_ne_bytes(mask);
    SourceKey {
        addr: a.to_ne_bytes(),
        prefix_len,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and arrays of
    // integers, with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::sources::Slot {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Stats {}
    unsafe impl aya::Pod for super::IfState {}
    unsafe impl aya::Pod for super::BanCache {}
    unsafe impl aya::Pod for super::CpuRates {}
    unsafe impl aya::Pod for super::Proof {}
    unsafe impl aya::Pod for super::HostState {}
}

// Layouts are part of the pinned ABI: changing one must bump ABI_VERSION.
const _: () = assert!(core::mem::size_of::<Rule>() == 112);
const _: () = assert!(core::mem::size_of::<BanCache>() == 40);
const _: () = assert!(ban_cache::SLOTS.is_power_of_two());
const _: () = assert!(hint::WORDS * 64 == 1 << 24);
const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);
const _: () = assert!(core::mem::size_of::<Bucket>() == 64);
const _: () = assert!(core::mem::size_of::<Event>() == 64);
const _: () = assert!(core::mem::size_of::<Stats>() == 8 * (stat::COUNT + 7));
const _: () = assert!(core::mem::size_of::<CpuRates>() == 16 * capacity::MAX_CPUS as usize);
const _: () = assert!(core::mem::size_of::<Proof>() == 24);
const _: () = assert!(core::mem::size_of::<IfState>() == 56);
const _: () = assert!(core::mem::size_of::<Config>() == 160 + 8 * PORT_WORDS);
const _: () = assert!(stat::NAMES.len() == stat::COUNT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_mask::<4>(0), [0, 0, 0, 0]);
        assert_eq!(prefix_mask::<4>(24), [255, 255, 255, 0]);
        assert_eq!(prefix_mask::<4>(20), [255, 255, 0xf0, 0]);
        assert_eq!(prefix_mask::<4>(32), [255; 4]);
        let m = prefix_mask::<16>(64);
        assert_eq!(&m[..8], &[255; 8]);
        assert_eq!(&m[8..], &[0; 8]);
        assert_eq!(prefix_mask::<16>(1)[0], 0x80);
    }

    #[test]
    fn ban_cache_slots_stay_in_the_map_and_spread_a_24() {
        let mut used = [false; ban_cache::SLOTS as usize];
        for last in 0..=255u8 {
            let s = ban_cache::slot([203, 0, 113, last]);
            assert!(s < ban_cache::SLOTS);
            used[s as usize] = true;
        }
        let n = used.iter().filter(|u| **u).count();
        assert!(n > 200, "a /24 spreads over {n} entries");
        assert!(ban_cache::slot([255; 4]) < ban_cache::SLOTS);
    }

    #[test]
    fn source_keys_aggregate() {
        let m = prefix_mask::<4>(24);
        let a = source_key_v4([203, 0, 113, 7], m, 24);
        let b = source_key_v4([203, 0, 113, 200], m, 24);
        let c = source_key_v4([203, 0, 114, 7], m, 24);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(&a.addr[10..], &[0xff, 0xff, 203, 0, 113, 0]);
        assert_eq!(&a.addr[..10], &[0; 10]);
        let full = source_key_v4([198, 51, 100, 7], prefix_mask::<4>(32), 32);
        assert_eq!(
            full.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7]
        );
        assert_eq!(full.prefix_len, 32);

        let m6 = prefix_mask::<16>(64);
        let mut x = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let k1 = source_key_v6(x, m6, 64);
        x[15] = 99;
        x[9] = 7;
        assert_eq!(k1, source_key_v6(x, m6, 64));
        x[7] = 2;
        assert_ne!(k1, source_key_v6(x, m6, 64));
        // Every byte masked in place, a prefix that ends inside a byte included.
        let y = [
            0x20, 0x01, 0x0d, 0xb8, 0xab, 0xcd, 0xef, 0xff, 9, 9, 9, 9, 9, 9, 9, 9,
        ];
        let k = source_key_v6(y, prefix_mask::<16>(52), 52);
        assert_eq!(
            k.addr,
            [
                0x20, 0x01, 0x0d, 0xb8, 0xab, 0xcd, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(k.prefix_len, 52);
    }

    #[test]
    fn hint_geometry() {
        use hint::*;
        assert_eq!(bit([0, 0, 0, 9]), (0, 1));
        assert_eq!(bit([0, 0, 64, 1]), (1, 1));
        assert_eq!(bit([203, 0, 113, 5]), (0xcb0071 >> 6, 1 << (0xcb0071 & 63)));
        assert_eq!(span([203, 0, 113, 5], 32), (0xcb0071, 0xcb0072));
        assert_eq!(span([203, 0, 112, 0], 20), (0xcb0070, 0xcb0080));
        assert_eq!(span([0, 0, 0, 0], 0), (0, 1 << 24));
        assert_eq!(word_mask(0, 0, 1 << 24), u64::MAX);
        assert_eq!(word_mask(1, 0, 64), 0);
        assert_eq!(word_mask(1, 70, 72), 0b1100_0000);
        // A ban's single word agrees with the general computation, and covers the bit
        // of every address inside the prefix.
        for (addr, len) in [
            ([203, 0, 113, 5], 32),
            ([198, 18, 32, 0], 19),
            ([10, 1, 2, 0], 23),
        ] {
            let (first, end) = span(addr, len);
            let (w, m) = ban_word(addr, len);
            assert_eq!(m, word_mask(w, first, end), "{addr:?}/{len}");
            let last = (end - 1) << 8;
            let (lw, lb) = bit(last.to_be_bytes());
            assert_eq!(lw, w);
            assert_ne!(m & lb, 0);
        }
    }

    #[test]
    fn ipv6_hint_geometry() {
        use hint::*;
        let a: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0x42, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        assert_eq!(v6_index(&a), [0x0d, 0xb8, 0, 0x42]);
        // A /64 ban: one /40, one bit; a /32: 256 /40s; /8: every bit.
        assert_eq!(span(v6_index(&a), v6_len(64)), (0x0db800, 0x0db801));
        assert_eq!(span(v6_index(&a), v6_len(32)), (0x0db800, 0x0db900));
        assert_eq!(span(v6_index(&a), v6_len(8)), (0, 1 << 24));
        assert_eq!(
            ban_word(v6_index(&a), v6_len(HINT_MIN_BAN_PREFIX_V6)).0,
            0x0db800 >> 6
        );
    }

    #[test]
    fn rule_expiry() {
        let r = Rule::new(RULE_BAN, ACTION_DROP, 10, 100);
        assert!(!r.expired(99));
        assert!(r.expired(100));
        assert!(!Rule::new(RULE_BLOCK, ACTION_DROP, 10, 0).expired(u64::MAX));
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    fn bucket(start: u64, cur: u64, prev: u64) -> Bucket {
        Bucket {
            window_start_ns: start,
            window_syns: cur,
            prev_window_syns: prev,
            ..Default::default()
        }
    }

    #[test]
    fn a_burst_is_measured_over_its_own_span() {
        // 101 SYNs within half a millisecond of a fresh window: the 1 ms floor.
        assert_eq!(rate_span(&bucket(0, 101, 0), 500_000), (101, 1_000_000));
        // 450 SYNs over 800 ms.
        assert_eq!(
            rate_span(&bucket(0, 450, 0), 800_000_000),
            (450, 800_000_000)
        );
    }

    #[test]
    fn a_young_window_is_measured_with_the_one_before() {
        // A steady 250/s source whose window restarted 2 ms ago: about 250/s, not 1000/s.
        let (syns, span) = rate_span(&bucket(0, 1, 250), 2_000_000);
        let rate = syns * 1_000_000_000 / span;
        assert!((245..=255).contains(&rate), "{rate}");
    }
}
