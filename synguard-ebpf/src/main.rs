//! synguard's XDP program: parse, consult the allow/block/ban rules, meter SYNs per
//! source, drop what is flagged.
//!
//! # Failure policy (fail-open, on purpose)
//! Anything this program cannot understand goes to the kernel unchanged: truncated or
//! malformed headers, protocols it does not inspect, IPv6 extension headers. The kernel's
//! own stack then discards or handles them as it always would, so a parser bug can cost
//! protection but never connectivity. Each such case has its own counter. The only drops
//! are the four decisions in [`stat::is_drop`], and `mode = monitor` turns those into
//! passes as well.
//!
//! # Cost
//! Per packet: inlined array lookups only (config, per-CPU counters, `jiffies` for the
//! clock, and once the IP header is parsed the two hint bits of the source; see
//! [`hint`]), plus a longest-prefix-match lookup in a trie whose hint bit is set (the
//! operator's allow/block entries, then bans), and for SYNs to protected ports one hash
//! lookup (the source's bucket). Every real call counts: on the machines we measure on
//! (AMD, SRSO "safe RET" mitigation) each function return is a mispredicted `ret`, which
//! `perf` showed as the largest cost of the program's own code; so the rule lookup is
//! inlined and the clock is derived from `jiffies` rather than a helper call (see
//! [`clock`]). Nothing allocates, nothing logs per packet; events and warnings are
//! rate-limited per CPU.
#![no_std]
#![no_main]
// `bpfel-unknown-none` has no compare-and-swap, so core's `AtomicU64::fetch_add` is not
// available; the intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic add on bpfel needs core_intrinsics"
)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::{self, MaybeUninit},
};

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_F_MMAPABLE, BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, tcphdr, xdp_action,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns,
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_tcp_gen_syncookie,
        bpf_xdp_adjust_tail,
    },
    macros::{map, sock_ops, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SockOpsContext, XdpContext},
};
use aya_log_ebpf::warn;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};
use synguard_common::{
    ACTION_DROP, ATTACK_BY_CHALLENGE, ATTACK_CALM_NS, ATTACK_EARLY_NS, ATTACK_STALE_NS,
    ATTACK_WINDOW_NS, BanCache, Bucket, COOKIES_ALWAYS, COOKIES_AUTO, Config, CpuRate, CpuRates,
    EVENT_ATTACK_OFF, EVENT_ATTACK_ON, EVENT_BAN, EVENT_CHALLENGE, EVENT_INTERVAL_NS,
    EVENT_TOLERANCE_NS, Event, FAMILY_V4, FAMILY_V6, IfState, MODE_MONITOR, PORT_WORDS,
    PROOF_COOKIE, PROOF_HANDSHAKE, Proof, RULE_BAN, Rule, RuleKeyV4, RuleKeyV6, SourceKey, Stats,
    V6_EXT_MAX, attack_challenge, attack_step, ban_cache, capacity, clock, gcra, hint, rate_span,
    rule_key_v4, rule_key_v6, source_key_v4, source_key_v6,
    sources::{self, Slot},
    stat::{self, *},
    synack::{self, SynOptions, SynackOptions},
};

#[map]
static SG_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static SG_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(capacity::STATS_SLOTS, 0);
#[map]
static SG_RULES_V4: LpmTrie<RuleKeyV4, Rule> = LpmTrie::with_max_entries(capacity::RULES, 0);
#[map]
static SG_RULES_V6: LpmTrie<RuleKeyV6, Rule> = LpmTrie::with_max_entries(capacity::RULES, 0);
#[map]
// Memory-mappable so userspace reads the million slots without a system call each.
static SG_SOURCES: Array<Slot> = Array::with_max_entries(sources::SLOTS, BPF_F_MMAPABLE);
#[map]
static SG_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);
#[map]
static SG_IFSTATE: Array<IfState> = Array::with_max_entries(capacity::STATS_SLOTS, 0);
#[map]
static SG_BANS_V4: LpmTrie<RuleKeyV4, Rule> = LpmTrie::with_max_entries(capacity::RULES, 0);
#[map]
static SG_BANS_V6: LpmTrie<RuleKeyV6, Rule> = LpmTrie::with_max_entries(capacity::RULES, 0);
#[map]
static SG_BAN_CACHE: PerCpuArray<BanCache> = PerCpuArray::with_max_entries(ban_cache::SLOTS, 0);
#[map]
static SG_BANS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static SG_RULES_HINT: Array<u64> = Array::with_max_entries(hint::WORDS, 0);
#[map]
static SG_RULES_HINT6: Array<u64> = Array::with_max_entries(hint::WORDS, 0);
#[map]
static SG_BANS_HINT: Array<u64> = Array::with_max_entries(hint::WORDS, 0);
#[map]
static SG_BANS_HINT6: Array<u64> = Array::with_max_entries(hint::WORDS, 0);
#[map]
static SG_VERIFIED: LruHashMap<SourceKey, Proof> =
    LruHashMap::with_max_entries(capacity::VERIFIED, 0);
#[map]
static SG_CPU_RATES: Array<CpuRates> = Array::with_max_entries(capacity::STATS_SLOTS, 0);
/// Attack mode's SYN counts per source set (see [`sources::sketch_count`]).
#[map]
static SG_SYN_SKETCH: Array<[u16; sources::SKETCH_COLS]> =
    Array::with_max_entries(sources::SKETCH_ROWS, 0);
/// Which source sets may hold a proof (see [`sources::proof_filter_bit`]).
#[map]
static SG_PROOF_FILTER: Array<[u64; sources::PROOF_FILTER_WORDS]> =
    Array::with_max_entries(sources::PROOF_FILTER_ROWS, 0);
/// This machine's IPv4 addresses (in the packet's byte order), kept by `run`.
#[map]
static SG_LOCAL_V4: HashMap<u32, u8> = HashMap::with_max_entries(capacity::LOCAL_ADDRS, 0);
/// This machine's IPv6 addresses, kept by `run`.
#[map]
static SG_LOCAL_V6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(capacity::LOCAL_ADDRS, 0);
/// The destination ports this machine's NAT rules rewrite (bit `p % 64` of word `p / 64`),
/// kept by `run`: attack mode leaves SYNs for them to the kernel.
#[map]
static SG_NAT_PORTS: Array<[u64; PORT_WORDS]> = Array::with_max_entries(1, 0);

/// Possible CPUs, set by the loader: the attack detector adds up every CPU's SYN rate.
#[unsafe(no_mangle)]
static NR_CPUS: Global<u32> = Global::new(1);

const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88A8u16.to_be();
const IPPROTO_TCP: u8 = 6;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const EEXIST: i32 = 17;

/// Why the program could not run at all; fits in a register. Every variant passes the
/// packet (see the failure policy above).
#[derive(Clone, Copy)]
enum Error {
    NoConfig,
    NoStats,
}
const _: () = assert!(mem::size_of::<Error>() <= 8);

#[xdp]
pub fn synguard(ctx: XdpContext) -> u32 {
    match try_synguard(&ctx) {
        Ok(action) => action,
        Err(Error::NoConfig | Error::NoStats) => xdp_action::XDP_PASS,
    }
}

/// Per-packet state the decisions need.
struct Packet<'a> {
    ctx: &'a XdpContext,
    cfg: &'a Config,
    stats: *mut Stats,
    ifindex: u32,
    slot: u32,
    /// `CLOCK_MONOTONIC` ns at tick resolution (see [`clock`]), read once per packet.
    now: u64,
}

impl Packet<'_> {
    /// Count a verdict and turn it into an XDP action (monitor mode passes drops).
    #[inline(always)]
    fn verdict(&self, reason: usize) -> u32 {
        self.note(reason);
        if stat::is_drop(reason) {
            if self.cfg.mode == MODE_MONITOR {
                self.note(N_MONITOR_PASSED);
                return xdp_action::XDP_PASS;
            }
            return xdp_action::XDP_DROP;
        }
        if reason == R_COOKIE_SENT {
            // The frame now holds our SYN-ACK (monitor mode never rewrites it).
            return xdp_action::XDP_TX;
        }
        xdp_action::XDP_PASS
    }

    /// Whether unverified SYNs are answered with cookies now.
    #[inline(always)]
    fn cookies_active(&self) -> bool {
        match self.cfg.syn_cookies {
            COOKIES_ALWAYS => true,
            COOKIES_AUTO => SG_IFSTATE.get(self.slot).is_some_and(|s| s.attack != 0),
            _ => false,
        }
    }

    #[inline(always)]
    fn note(&self, counter: usize) {
        if counter < stat::COUNT {
            // SAFETY: `stats` points at this CPU's slot of a per-CPU array; XDP runs with
            // softirqs disabled on this CPU, so nothing else writes it concurrently.
            unsafe { (*self.stats).counters[counter] += 1 };
        }
    }

    /// Per-CPU GCRA limiting events to userspace; `false` means suppress this one.
    #[inline(always)]
    fn event_allowed(&self, now: u64) -> bool {
        // SAFETY: as in `note`.
        let tat = unsafe { &mut (*self.stats).event_tat_ns };
        match gcra::conform(*tat, now, EVENT_INTERVAL_NS, EVENT_TOLERANCE_NS) {
            Some(next) => {
                *tat = next;
                true
            }
            None => {
                self.note(N_EVENTS_SUPPRESSED);
                false
            }
        }
    }

    /// At most one warning per CPU per second, for conditions that can repeat per packet.
    #[inline(always)]
    fn warn_allowed(&self, now: u64) -> bool {
        // SAFETY: as in `note`.
        let last = unsafe { &mut (*self.stats).warn_ns };
        if now.wrapping_sub(*last) >= 1_000_000_000 || *last == 0 {
            *last = now;
            true
        } else {
            false
        }
    }
}

/// The one bounds-checked accessor for packet memory: a pointer to a `T` at `offset`, or
/// `None` if the packet is too short.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The time, from `jiffies` (inlined by the verifier) and this CPU's last reading of the
/// coarse clock (see [`clock`]).
#[inline(always)]
fn now_ns(stats: *mut Stats) -> u64 {
    // SAFETY: a helper without arguments, inlined as a load of `jiffies_64`.
    let jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: this CPU's own stats slot (see `Packet::note`).
    match clock::derived(unsafe { &*stats }, jiffies) {
        Some(now) => now,
        None => resync_clock(stats, jiffies),
    }
}

/// Read the coarse clock: about once a second per CPU. Out of line: rare.
#[inline(never)]
fn resync_clock(stats: *mut Stats, jiffies: u64) -> u64 {
    // SAFETY: a helper without arguments; `stats` as in `now_ns`.
    unsafe { clock::resync(&mut *stats, jiffies, bpf_ktime_get_coarse_ns()) }
}

fn try_synguard(ctx: &XdpContext) -> Result<u32, Error> {
    let cfg = SG_CONFIG.get(0).ok_or(Error::NoConfig)?;
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = if ifindex < capacity::STATS_SLOTS {
        ifindex
    } else {
        0
    };
    let stats = SG_STATS.get_ptr_mut(slot).ok_or(Error::NoStats)?;
    let pkt = Packet {
        ctx,
        cfg,
        stats,
        ifindex,
        slot,
        now: now_ns(stats),
    };

    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(pkt.verdict(R_TRUNCATED));
    };
    // SAFETY: `ptr_at` checked the bounds.
    let mut proto = unsafe { (*eth).ether_type };
    let mut off = EthHdr::LEN;
    // Up to two VLAN tags (802.1Q, or 802.1ad outer + 802.1Q inner).
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(vlan) = ptr_at::<VlanHdr>(ctx, off) else {
                return Ok(pkt.verdict(R_TRUNCATED));
            };
            // SAFETY: bounds checked.
            proto = unsafe { (*vlan).ether_type };
            off += VlanHdr::LEN;
        }
    }

    Ok(if proto == ETH_P_IP {
        ipv4(ctx, &pkt, off)
    } else if proto == ETH_P_IPV6 {
        ipv6(ctx, &pkt, off)
    } else {
        pkt.verdict(R_NON_IP)
    })
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, pkt: &Packet, off: usize) -> u32 {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, off) else {
        return pkt.verdict(R_TRUNCATED);
    };
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return pkt.verdict(R_MALFORMED);
    }
    let src = ip.src_addr;

    // The operator's entries (an allow entry wins over everything; a block drops every
    // packet). Bans act on SYNs only: see `tcp`.
    if hinted(&SG_RULES_HINT, src) {
        let reason = rule_reason_v4(false, &src, pkt.now);
        if reason != NO_RULE {
            return pkt.verdict(reason);
        }
    }

    if ip.proto != IPPROTO_TCP {
        return pkt.verdict(R_NON_TCP);
    }
    if u16::from_be_bytes(ip.frags) & 0x1fff != 0 {
        return pkt.verdict(R_FRAGMENT);
    }
    let key = || source_key_v4(src, pkt.cfg.v4_mask, pkt.cfg.ipv4_prefix);
    let at = Offsets {
        l3: off,
        l4: off + ihl,
        family: FAMILY_V4,
        // The cookie reply is built for a plain 20-byte IPv4 header.
        simple: ihl == Ipv4Hdr::LEN,
    };
    let banned = || {
        if pkt.cfg.ipv4_prefix < hint::HINT_MIN_BAN_PREFIX || hinted(&SG_BANS_HINT, src) {
            ban_reason_v4(src, pkt.now)
        } else {
            NO_RULE
        }
    };
    tcp(ctx, pkt, &at, key, banned)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, pkt: &Packet, off: usize) -> u32 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
        return pkt.verdict(R_TRUNCATED);
    };
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };

    // The address is read from the packet again after the rule lookup: a copy held
    // across the call would be spilled byte by byte onto the stack.
    let index = hint::v6_index(&ip.src_addr);
    if hinted(&SG_RULES_HINT6, index) {
        let reason = rule_reason_v6(false, &ip.src_addr, pkt.now);
        if reason != NO_RULE {
            return pkt.verdict(reason);
        }
    }

    // Hop-by-hop, routing and destination options headers are walked: a SYN behind them
    // is metered and banned like any other (otherwise a flooder would add one to escape
    // its limit). Each is (next header, length in 8-byte units after the first 8, ...).
    let mut next = ip.next_hdr;
    let mut l4 = off + Ipv6Hdr::LEN;
    for _ in 0..V6_EXT_MAX {
        if !matches!(next, 0 | 43 | 60) {
            break;
        }
        let Some(h) = ptr_at::<[u8; 2]>(ctx, l4) else {
            return pkt.verdict(R_TRUNCATED);
        };
        // SAFETY: bounds checked.
        let h = unsafe { *h };
        next = h[0];
        l4 += (usize::from(h[1]) + 1) * 8;
    }
    match next {
        IPPROTO_TCP => {}
        // Fragment, ESP, AH, mobility, HIP, shim6, or more walkable headers than
        // V6_EXT_MAX: the TCP header, if any, is out of reach. Passed unparsed (see the
        // failure policy): counted, never trusted.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => return pkt.verdict(R_IPV6_EXT),
        _ => return pkt.verdict(R_NON_TCP),
    }
    let simple = l4 == off + Ipv6Hdr::LEN;
    if !simple {
        pkt.note(N_V6_EXT_WALKED);
    }
    let key = || source_key_v6(ip.src_addr, pkt.cfg.v6_mask, pkt.cfg.ipv6_prefix);
    let at = Offsets {
        l3: off,
        l4,
        family: FAMILY_V6,
        // The cookie reply is built for a plain 40-byte IPv6 header: behind extension
        // headers, the kernel answers (with its own cookies in attack mode).
        simple,
    };
    let banned = || {
        if pkt.cfg.ipv6_prefix < hint::HINT_MIN_BAN_PREFIX_V6
            || hinted(&SG_BANS_HINT6, hint::v6_index(&ip.src_addr))
        {
            rule_reason_v6(true, &ip.src_addr, pkt.now)
        } else {
            NO_RULE
        }
    };
    tcp(ctx, pkt, &at, key, banned)
}

/// Longest expired entries a lookup steps past before giving up (then the packet is
/// treated as matching no entry, until userspace sweeps the expired ones, within a second).
const EXPIRED_SKIPS: usize = 4;

/// The longest live entry matching the source. An expired entry acts as absent: the
/// lookup continues with the next shorter prefix, so an expired ban or block never hides
/// a live allow or block entry around it.
#[inline(always)]
fn live_rule<'a>(
    lookup: impl Fn(u32) -> Option<&'a Rule>,
    max_len: u32,
    now: u64,
) -> Option<&'a Rule> {
    let mut len = max_len;
    for _ in 0..EXPIRED_SKIPS {
        let rule = lookup(len)?;
        if rule.expires_ns == 0 || now < rule.expires_ns {
            return Some(rule);
        }
        if rule.prefix_len == 0 {
            return None;
        }
        len = u32::from(rule.prefix_len) - 1;
    }
    None
}

/// No live rule matches the source.
const NO_RULE: usize = usize::MAX;

/// Whether an entry may match the source: its bit in a hint (see [`hint`]), by the
/// source's /24 (IPv4) or folded /40 (IPv6).
#[inline(always)]
fn hinted(map: &Array<u64>, index: [u8; 4]) -> bool {
    let (word, bit) = hint::bit(index);
    map.get(word).is_none_or(|w| *w & bit != 0)
}

/// Mark a new IPv4 ban in the hint. A plain read-modify-write: a racing update of the
/// same word can undo it, which the next SYN over the limit repeats (and until then the
/// source's SYNs are still limited by its bucket).
#[inline(always)]
fn hint_ban_v4(addr: [u8; 4], prefix_len: u32) {
    if prefix_len < hint::HINT_MIN_BAN_PREFIX {
        return;
    }
    let (word, mask) = hint::ban_word(addr, prefix_len);
    if let Some(w) = SG_BANS_HINT.get_ptr_mut(word) {
        // SAFETY: a live array element; see above for the race.
        unsafe { *w |= mask };
    }
}

/// The same for a new IPv6 ban.
#[inline(always)]
fn hint_ban_v6(addr: &[u8; 16], prefix_len: u32) {
    if prefix_len < hint::HINT_MIN_BAN_PREFIX_V6 {
        return;
    }
    let (word, mask) = hint::ban_word(hint::v6_index(addr), hint::v6_len(prefix_len));
    if let Some(w) = SG_BANS_HINT6.get_ptr_mut(word) {
        // SAFETY: as in `hint_ban_v4`.
        unsafe { *w |= mask };
    }
}

/// The verdict of the longest live rule for an IPv4 source, or `NO_RULE`. Inlined: on
/// this machine (AMD, SRSO mitigation) every function return costs a mispredicted
/// `ret`, which `perf` showed as the single largest cost of the program's own code.
#[inline(always)]
fn rule_reason_v4(bans: bool, src: &[u8; 4], now: u64) -> usize {
    let src = *src;
    let trie = if bans { &SG_BANS_V4 } else { &SG_RULES_V4 };
    live_rule(|len| trie.get(Key::new(len, rule_key_v4(src, 0))), 32, now)
        .map_or(NO_RULE, apply_rule)
}

/// The verdict of the bans for an IPv4 source, or `NO_RULE`: from this CPU's
/// [`BanCache`] entry when it vouches for the source, else from the trie.
#[inline(always)]
fn ban_reason_v4(src: [u8; 4], now: u64) -> usize {
    let epoch = SG_BANS_EPOCH.get(0).map_or(0, |e| *e);
    if let Some(c) = SG_BAN_CACHE.get_ptr_mut(ban_cache::slot(src)) {
        // SAFETY: this CPU's entry of a per-CPU array; XDP runs with softirqs disabled on
        // this CPU and userspace only reads it, so nothing writes it concurrently.
        let c = unsafe { &mut *c };
        if epoch != 0
            && c.epoch == epoch
            && c.addr == u32::from_ne_bytes(src)
            && (c.expires_ns == 0 || now < c.expires_ns)
            && c.pending < ban_cache::FLUSH - 1
        {
            c.pending += 1;
            return R_BANNED;
        }
    }
    ban_lookup_v4(src, now)
}

/// The trie's answer for an IPv4 source; carries over the hits its cache entry holds
/// (for whichever source it held) and keeps the entry. Out of line: taken once per
/// [`ban_cache::FLUSH`] packets of a remembered ban.
#[inline(never)]
fn ban_lookup_v4(src: [u8; 4], now: u64) -> usize {
    // The epoch is read before the trie (see `BanCache`): a ban removed after this read
    // comes with a new epoch, so an entry made from a lookup that still saw it is never
    // believed. A fetch-and-add of 0 is a fully ordered read, so no weakly ordered CPU
    // can satisfy the trie's reads before it.
    let epoch = match SG_BANS_EPOCH.get_ptr_mut(0) {
        // SAFETY: a live array element, only ever read atomically here.
        Some(e) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(e, 0) },
        None => 0,
    };
    let Some(c) = SG_BAN_CACHE.get_ptr_mut(ban_cache::slot(src)) else {
        return rule_reason_v4(true, &src, now);
    };
    // SAFETY: as in `ban_reason_v4`.
    let c = unsafe { &mut *c };
    if c.pending != 0 {
        // To exactly the ban the hits were counted for, expired or not; gone, they go.
        let key = Key::new(c.prefix_len, rule_key_v4(c.addr.to_ne_bytes(), 0));
        if let Some(old) = SG_BANS_V4.get(key)
            && u32::from(old.prefix_len) == c.prefix_len
            && old.created_ns == c.created_ns
        {
            count_hits(old, u64::from(c.pending));
        }
        c.pending = 0;
    }
    let addr = u32::from_ne_bytes(src);
    let Some(rule) = live_rule(
        |len| SG_BANS_V4.get(Key::new(len, rule_key_v4(src, 0))),
        32,
        now,
    ) else {
        if c.addr == addr {
            c.epoch = 0;
        }
        return NO_RULE;
    };
    count_hits(rule, 1);
    let reason = rule_reason(rule);
    if reason == R_BANNED && epoch != 0 {
        c.addr = addr;
        c.epoch = epoch;
        c.expires_ns = rule.expires_ns;
        c.created_ns = rule.created_ns;
        c.prefix_len = u32::from(rule.prefix_len);
    } else if c.addr == addr {
        c.epoch = 0;
    }
    reason
}

/// The same for an IPv6 source (out of line: its 28-byte key would push the main stack
/// frame past what the verifier allows with the cookie path's frames below it).
#[inline(never)]
fn rule_reason_v6(bans: bool, src: &[u8; 16], now: u64) -> usize {
    let src = *src;
    let trie = if bans { &SG_BANS_V6 } else { &SG_RULES_V6 };
    live_rule(|len| trie.get(Key::new(len, rule_key_v6(src, 0))), 128, now)
        .map_or(NO_RULE, apply_rule)
}

/// What a matching live rule means for this packet; counts the hit.
#[inline(always)]
fn apply_rule(rule: &Rule) -> usize {
    count_hits(rule, 1);
    rule_reason(rule)
}

/// Add to a rule's hit count.
#[inline(always)]
fn count_hits(rule: &Rule, n: u64) {
    // SAFETY: map values are writable kernel memory that lives as long as the entry; the
    // counter is only ever updated atomically.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &rule.hits as *const u64 as *mut u64,
            n,
        )
    };
}

/// What a matching live rule means for this packet.
#[inline(always)]
fn rule_reason(rule: &Rule) -> usize {
    if rule.action != ACTION_DROP {
        R_ALLOWED
    } else if rule.kind == RULE_BAN {
        R_BANNED
    } else {
        R_BLOCKED
    }
}

/// Where the headers are.
struct Offsets {
    l3: usize,
    l4: usize,
    family: u8,
    /// No IP options (IPv4) or extension headers (IPv6): the cookie reply can be built.
    simple: bool,
}

/// The TCP verdicts. `banned` says whether a ban covers the source (`R_BANNED`, or
/// `NO_RULE`); it is asked only for SYNs to protected ports.
///
/// Bans act on new connection attempts only: a source's established connections, its
/// other traffic and its SYNs to unprotected ports are never dropped by a ban, so SYNs
/// forged with an address can at most keep that address from opening new connections to
/// the protected ports, and only while it has not proven it owns the address (a proven
/// source over its limit is challenged, never banned: see `on_limit`).
#[inline(always)]
fn tcp(
    ctx: &XdpContext,
    pkt: &Packet,
    at: &Offsets,
    key: impl Fn() -> SourceKey,
    banned: impl Fn() -> usize,
) -> u32 {
    let Some(th) = ptr_at::<TcpHdr>(ctx, at.l4) else {
        return pkt.verdict(R_TRUNCATED);
    };
    // SAFETY: bounds checked; the flags byte lies inside the 20-byte header.
    let flags = unsafe { *(th as *const u8).add(TCP_FLAGS_OFFSET) };
    // A plain SYN in one test (the flood's path); the rest sorted out after.
    if flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) != TCP_SYN {
        if flags & TCP_SYN == 0 {
            // In attack mode, an ACK from an unverified source may complete a cookie
            // handshake: if so, its source becomes verified, and the ACK goes on to the
            // kernel, which accepts the cookie. An ACK or RST that belongs to no
            // connection and carries no valid cookie is an ACK or RST flood's: dropped
            // (see `check_ack`).
            if flags & (TCP_ACK | TCP_RST) != 0 && pkt.cookies_active() {
                // SAFETY: bounds checked.
                let dport = u16::from_be_bytes(unsafe { (*th).dest });
                return pkt.verdict(check_ack(pkt, at, dport, &key(), flags & TCP_RST != 0));
            }
            return pkt.verdict(R_TCP_OTHER);
        }
        if flags & (TCP_FIN | TCP_RST) != 0 {
            return pkt.verdict(R_INVALID_FLAGS);
        }
        return pkt.verdict(R_SYN_ACK);
    }
    // SAFETY: bounds checked.
    let dport = u16::from_be_bytes(unsafe { (*th).dest });
    let protected = pkt.cfg.all_ports != 0
        || pkt.cfg.ports[(dport >> 6) as usize] & (1u64 << (dport & 63)) != 0;
    if protected && banned() == R_BANNED {
        return pkt.verdict(R_BANNED);
    }
    pkt.note(N_SYNS);
    let now = pkt.now;
    track_rate(pkt, now);
    if !protected {
        return pkt.verdict(R_SYN_UNPROTECTED);
    }
    // Made only here: a banned source's SYNs and other packets never need it.
    let key = &key();
    // In attack mode a quiet source's SYN skips its bucket (see `sources::sketch_count`).
    let active = pkt.cookies_active();
    // The source's set in the table, also its cell in the sketch.
    let set = sources::set_of(key, &pkt.cfg.source_seed);
    let metered = if active && quiet_source(pkt, set, at.family, now) {
        R_SYN_PASSED
    } else {
        meter_syn(pkt, key, set, at.family, now)
    };
    if metered == R_SYN_LIMITED {
        return pkt.verdict(R_SYN_LIMITED);
    }
    let challenged = metered == CHALLENGED;
    // A challenge may just have started attack mode: asked again then.
    if !(active || challenged && pkt.cookies_active()) {
        // Only `syn-cookies = off` gets here with a challenge (it starts attack mode
        // otherwise): without cookies, a proven source's SYNs over its limit are
        // dropped, but it is not banned.
        return pkt.verdict(if challenged { R_SYN_LIMITED } else { metered });
    }
    // Attack mode: verified sources within their limit go straight to the kernel; the
    // others (and proven sources over their limit) are answered here with a SYN cookie
    // and never reach the server's SYN queue.
    // (The filter first: a forged flood's sources are almost never in it.)
    if !challenged && maybe_proven(set) && is_verified(key, now) {
        return pkt.verdict(R_SYN_VERIFIED);
    }
    // Only SYNs for this machine's own addresses are answered: a listener bound to a
    // wildcard address would match a SYN for any address, a VM's or a container's
    // behind a bridge among them, and the cookie would be made for the wrong socket.
    if !to_local(ctx, at) {
        return pkt.verdict(R_SYN_NOT_LOCAL);
    }
    // Nor SYNs whose destination a NAT rule rewrites (a container's published port):
    // the listener found here is not the socket the SYN reaches after NAT.
    if nat_port(dport) {
        return pkt.verdict(R_SYN_NAT);
    }
    if pkt.cfg.mode == MODE_MONITOR {
        pkt.note(R_COOKIE_SENT);
        pkt.note(N_MONITOR_PASSED);
        return xdp_action::XDP_PASS;
    }
    let reason = if !at.simple {
        R_COOKIE_FALLBACK
    } else if at.family == FAMILY_V4 {
        syn_cookie_v4(ctx, at, pkt.cfg.cookie_opts)
    } else {
        syn_cookie_v6(ctx, at, pkt.cfg.cookie_opts)
    };
    pkt.verdict(reason)
}

/// Count an attack-mode SYN in `SG_SYN_SKETCH`; whether its source is quiet enough to
/// skip its bucket.
#[inline(always)]
fn quiet_source(pkt: &Packet, set: u32, family: u8, now: u64) -> bool {
    let (row, col) = sources::sketch_cell(set);
    let Some(cells) = SG_SYN_SKETCH.get_ptr_mut(row) else {
        return false;
    };
    // SAFETY: a live map value shared by CPUs; a racing update loses one count at most.
    // `col` is masked below the row's length.
    let c = unsafe { &mut (*cells)[col & (sources::SKETCH_COLS - 1)] };
    let (next, quiet) = sources::sketch_count(*c, now, pkt.cfg.syn_quiet);
    *c = next;
    if next & 0xff == 1 {
        // The counter's first SYN in its window: a source not seen for a while.
        pkt.note(N_SKETCH_NEW);
        if family == FAMILY_V6 {
            pkt.note(N_SKETCH_NEW_V6);
        }
    }
    quiet
}

/// Whether a NAT rule of this machine rewrites SYNs for this destination port
/// (`SG_NAT_PORTS`, kept by `run`).
#[inline(always)]
fn nat_port(port: u16) -> bool {
    match SG_NAT_PORTS.get(0) {
        Some(words) => words[(port >> 6) as usize] & (1u64 << (port & 63)) != 0,
        // An array always has its entry; were it missing, the kernel decides.
        None => true,
    }
}

/// Whether the packet's destination is one of this machine's addresses (`SG_LOCAL_*`).
// The IPv6 key is handed to the lookup as a reference into the packet, not copied.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn to_local(ctx: &XdpContext, at: &Offsets) -> bool {
    if at.family == FAMILY_V4 {
        // The destination address: bytes 16..20 of the IPv4 header.
        match ptr_at::<u32>(ctx, at.l3 + 16) {
            // SAFETY: bounds checked; a copy is read.
            Some(d) => SG_LOCAL_V4.get_ptr(unsafe { d.read_unaligned() }).is_some(),
            None => false,
        }
    } else {
        // Bytes 24..40 of the IPv6 header.
        match ptr_at::<[u8; 16]>(ctx, at.l3 + 24) {
            // SAFETY: bounds checked; the key is read in place by the helper.
            Some(d) => SG_LOCAL_V6.get_ptr(unsafe { &*d }).is_some(),
            None => false,
        }
    }
}

/// Whether a source of this set may hold a proof (`SG_PROOF_FILTER`): if not, it holds
/// none.
#[inline(always)]
fn maybe_proven(set: u32) -> bool {
    let (row, word, bit) = sources::proof_filter_bit(set);
    match SG_PROOF_FILTER.get(row) {
        Some(words) => words[word & (sources::PROOF_FILTER_WORDS - 1)] & bit != 0,
        // An array always has its entries; were one missing, the proofs decide.
        None => true,
    }
}

/// Set a source set's bit in `SG_PROOF_FILTER` (before its proof is written).
#[inline(always)]
fn mark_proven(set: u32) {
    let (row, word, bit) = sources::proof_filter_bit(set);
    if let Some(words) = SG_PROOF_FILTER.get_ptr_mut(row) {
        // SAFETY: a live map value shared by CPUs, `word` masked below its length. Not
        // atomic: a bit set by another CPU in the same word at the same instant can be
        // lost, which costs its source only the shortcut (see `proof_filter_bit`).
        let w = unsafe { &mut (*words)[word & (sources::PROOF_FILTER_WORDS - 1)] };
        if *w & bit == 0 {
            *w |= bit;
        }
    }
}

/// Whether a source proved it owns its address (see [`Proof`]) and the proof holds.
#[inline(always)]
fn is_verified(key: &SourceKey, now: u64) -> bool {
    // SAFETY: a copy of the field is read at once; an entry evicted meanwhile leaves a
    // stale but valid value.
    SG_VERIFIED
        .get_ptr(key)
        .is_some_and(|p| unsafe { (*p).until_ns } > now)
}

/// Count a SYN in this CPU's rate window; when a window closes, re-evaluate attack mode.
#[inline(always)]
fn track_rate(pkt: &Packet, now: u64) {
    // SAFETY: this CPU's own slot (see `Packet::note`).
    let st = unsafe { &mut *pkt.stats };
    st.window_syns += 1;
    let age = now.wrapping_sub(st.window_start_ns);
    // Close the window at its end, or early once this CPU alone has seen more SYNs in it
    // than the threshold allows for a whole window (and it is at least 10 ms old): attack
    // mode then starts within 10 ms of a flood instead of up to a window later.
    let early = age >= ATTACK_EARLY_NS
        && st.window_syns * (1_000_000_000 / ATTACK_WINDOW_NS)
            >= u64::from(pkt.cfg.attack_syn_rate)
        && SG_IFSTATE.get(pkt.slot).is_some_and(|s| s.attack == 0);
    if age >= ATTACK_WINDOW_NS || early {
        let rate = if age > 10 * ATTACK_WINDOW_NS {
            0
        } else {
            // A window shorter than a coarse-clock tick counts as one millisecond.
            st.window_syns * 1_000_000_000 / age.max(1_000_000)
        };
        st.window_start_ns = now;
        st.window_syns = 0;
        evaluate_attack(pkt, rate, now);
    }
}

/// Publish this CPU's SYN rate on the interface, add up every CPU's current rate and apply
/// the hysteresis. Runs once per window per CPU, never per packet, and takes no lock: each
/// CPU writes only its own rate, and concurrent evaluations can only repeat the same
/// decision. The sum is a loop of loads from one map value (see [`CpuRates`]): no helper
/// call inside it, so every verifier since 5.3 accepts its bounded back edge.
#[inline(never)]
fn evaluate_attack(pkt: &Packet, rate: u64, now: u64) {
    let slot = pkt.slot;
    let Some(rates) = SG_CPU_RATES.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a live map value shared by CPUs; each CPU writes only its own element, and a
    // racing reader sees a rate at most one window old.
    let rates = unsafe { &mut *rates };
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as usize;
    if let Some(mine) = rates.cpus.get_mut(cpu) {
        *mine = CpuRate { rate, at_ns: now };
    }
    let nr = NR_CPUS.load().min(capacity::MAX_CPUS) as usize;
    let mut total = 0u64;
    for (i, c) in rates.cpus.iter().enumerate() {
        if i >= nr {
            break;
        }
        if now.wrapping_sub(c.at_ns) <= ATTACK_STALE_NS {
            total += c.rate;
        }
    }
    let Some(state) = SG_IFSTATE.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a live map value shared by CPUs; see above.
    let state = unsafe { &mut *state };
    let calm = if pkt.cfg.attack_calm_ns == 0 {
        ATTACK_CALM_NS
    } else {
        pkt.cfg.attack_calm_ns
    };
    let since = state.since_ns;
    match attack_step(state, total, now, u64::from(pkt.cfg.attack_syn_rate), calm) {
        Some(true) => {
            pkt.note(N_ATTACKS);
            emit_attack(pkt, EVENT_ATTACK_ON, total, 0, now);
        }
        Some(false) => {
            let lasted_ms = now.saturating_sub(since) / 1_000_000;
            emit_attack(pkt, EVENT_ATTACK_OFF, state.peak_rate, lasted_ms, now);
        }
        None => {}
    }
}

/// Tell userspace attack mode started or ended (a handful of events per attack); `syns`
/// as [`Event`] says for each.
#[inline(never)]
fn emit_attack(pkt: &Packet, kind: u32, rate: u64, syns: u64, now: u64) {
    let Some(mut entry) = SG_EVENTS.reserve::<Event>(0) else {
        pkt.note(N_EVENTS_LOST);
        return;
    };
    entry.write(Event {
        kind,
        ifindex: pkt.ifindex,
        family: 0,
        prefix_len: 0,
        _pad: [0; 6],
        addr: [0; 16],
        time_ns: now,
        expires_ns: 0,
        syns,
        rate,
    });
    entry.submit(0);
}

const TCP_LISTEN: u32 = 10;
/// The TCP header of a cookie SYN-ACK with timestamps: 20 bytes and the options (see
/// [`synack`]).
const SYNACK_TCP_LEN: usize = 20 + synack::OPTIONS_LEN;
/// Without: 20 bytes and the MSS. A SYN without timestamps (a flood's, often with no
/// options at all) gets this one: it needs 4 bytes more at most, where the 40 bytes
/// would need 20, more than some drivers leave after a small frame (veth among them).
const SHORT_SYNACK_TCP_LEN: usize = 20 + synack::SHORT_OPTIONS_LEN;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// Call `f` on the TCP header at `l4` in the packet, with its length (`doff * 4`, which
/// the cookie helpers require), or -1 for a header that is not there or shorter than 20
/// bytes. The helpers read packet memory, but the verifier checks a length against the
/// bounds its largest value needs (60 bytes, more than most SYNs have), so each length
/// has its own branch and bounds check; LLVM may join the calls, the verifier still walks
/// each path with its constant. This spares copying the header to the stack
/// (`bpf_xdp_load_bytes`): about 50 ns a cookie.
#[inline(always)]
fn in_place(ctx: &XdpContext, l4: usize, f: impl Fn(*mut tcphdr, u32) -> i64) -> i64 {
    let Some(th) = ptr_at::<[u8; 20]>(ctx, l4) else {
        return -1;
    };
    // SAFETY: bounds checked; byte 12 holds the data offset.
    let doff = unsafe { *(th as *const u8).add(12) } >> 4;
    macro_rules! at {
        ($n:literal) => {
            match ptr_at::<[u8; $n]>(ctx, l4) {
                Some(p) => f(p as *mut tcphdr, $n),
                None => -1,
            }
        };
    }
    match doff {
        5 => at!(20),
        6 => at!(24),
        7 => at!(28),
        8 => at!(32),
        9 => at!(36),
        10 => at!(40),
        11 => at!(44),
        12 => at!(48),
        13 => at!(52),
        14 => at!(56),
        15 => at!(60),
        _ => -1,
    }
}

/// Find the listening socket a segment is for, in the receiving device's namespace.
#[inline(always)]
fn lookup_sock(
    ctx: &XdpContext,
    tuple: &mut MaybeUninit<bpf_sock_tuple>,
    size: usize,
) -> *mut bpf_sock {
    // SAFETY: the first `size` bytes of `tuple` are initialised, and the helper reads no
    // more than that. (Not zeroing the rest avoids a byte-loop memset.)
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut c_void,
            tuple.as_mut_ptr(),
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// Ones' complement sum of the big-endian 16-bit words of `N` bytes at `p`, read four
/// bytes at a time (few loads, few registers: the verifier's stack budget is tight).
///
/// # Safety
/// `p` must be valid for `N` bytes (`N` a multiple of 4).
#[inline(always)]
unsafe fn sum16<const N: usize>(p: *const u8, acc: u32) -> u32 {
    let mut acc = u64::from(acc);
    let mut i = 0;
    while i < N {
        // SAFETY: within the `N` bytes the caller vouches for.
        let w = u32::from_be(unsafe { (p.add(i) as *const u32).read_unaligned() });
        acc += u64::from(w >> 16) + u64::from(w & 0xffff);
        i += 4;
    }
    (acc & 0xffff_ffff) as u32 + (acc >> 32) as u32
}

#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The cookie SYN-ACK's headers in the resized frame, each pointer bounds-checked for
/// its own header (see [`resize_for_synack`]).
struct SynackFrame {
    /// The two MAC addresses (12 bytes).
    eth: *mut u8,
    /// The IP header (`IP` bytes).
    ip: *mut u8,
    /// The TCP header (`TCP` bytes).
    tcp: *mut u8,
}

/// Resize the frame to end right after a `TCP`-byte TCP header at `l4`, with an
/// `IP`-byte IP header at `l3`, and return its headers. Each is bounds-checked through
/// [`ptr_at`] itself, for a constant size from its own offset: verifiers before 6.x (6.1
/// among them) only credit a bounds check to the pointer it was made on, so a check of
/// the TCP header's end on the frame's start would not cover the accesses at `l3`.
#[inline(always)]
fn resize_for_synack<const IP: usize, const TCP: usize>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
) -> Option<SynackFrame> {
    let cur = ctx.data_end() - ctx.data();
    let want = l4 + TCP;
    if want != cur {
        // SAFETY: the helper checks the new size against the frame.
        let rc = unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - cur as i32) };
        if rc != 0 {
            return None;
        }
    }
    // The frame moved: bounds are checked again on the new pointers.
    Some(SynackFrame {
        eth: ptr_at::<[u8; 12]>(ctx, 0)? as *mut u8,
        ip: ptr_at::<[u8; IP]>(ctx, l3)? as *mut u8,
        tcp: ptr_at::<[u8; TCP]>(ctx, l4)? as *mut u8,
    })
}

/// Swap `N` bytes at `a` with `N` bytes at `b`, through registers (4 bytes at a time, or
/// 2 when `N` is not a multiple of 4).
///
/// # Safety
/// Both ranges valid for `N` bytes, `N` even, and not overlapping.
#[inline(always)]
unsafe fn swap_bytes<const N: usize>(a: *mut u8, b: *mut u8) {
    let mut i = 0;
    while i < N {
        // SAFETY: within the ranges the caller vouches for. Volatile keeps each pair of
        // loads next to its stores: hoisting all loads first would spill registers and
        // cost stack the verifier's 512-byte budget cannot spare. (Packet data has no
        // alignment requirement in XDP on the architectures that run this.)
        unsafe {
            if N.is_multiple_of(4) {
                let x = (a.add(i) as *const u32).read_volatile();
                let y = (b.add(i) as *const u32).read_volatile();
                (a.add(i) as *mut u32).write_volatile(y);
                (b.add(i) as *mut u32).write_volatile(x);
                i += 4;
            } else {
                let x = (a.add(i) as *const u16).read_volatile();
                let y = (b.add(i) as *const u16).read_volatile();
                (a.add(i) as *mut u16).write_volatile(y);
                (b.add(i) as *mut u16).write_volatile(x);
                i += 2;
            }
        }
    }
}

/// Turn the SYN's TCP header at `tcp` into the cookie SYN-ACK's (`TCP` bytes, in place:
/// [`SYNACK_TCP_LEN`], or [`SHORT_SYNACK_TCP_LEN`] for the MSS alone) with the options
/// `o`, and checksum it, given the pseudo-header sum.
///
/// # Safety
/// `tcp` valid for `TCP` bytes.
#[inline(always)]
unsafe fn write_synack_tcp<const TCP: usize>(
    tcp: *mut u8,
    cookie: u32,
    o: &SynackOptions,
    pseudo: u32,
) {
    // SAFETY: within the bytes the caller vouches for.
    unsafe {
        swap_bytes::<2>(tcp, tcp.add(2));
        let client_seq = (tcp.add(4) as *const u32).read_unaligned();
        let ack = u32::from_be(client_seq).wrapping_add(1);
        (tcp.add(4) as *mut u32).write_unaligned(cookie.to_be());
        (tcp.add(8) as *mut u32).write_unaligned(ack.to_be());
        *tcp.add(12) = ((TCP / 4) as u8) << 4;
        *tcp.add(13) = if o.ecn {
            TCP_SYN | TCP_ACK | TCP_ECE
        } else {
            TCP_SYN | TCP_ACK
        };
        (tcp.add(14) as *mut u16).write_unaligned(65535u16.to_be());
        (tcp.add(16) as *mut u32).write_unaligned(0); // checksum and urgent pointer
        let words = synack::option_words(o);
        let mut i = 0;
        while i < (TCP - 20) / 4 {
            (tcp.add(20 + 4 * i) as *mut u32).write_unaligned(words[i].to_be());
            i += 1;
        }
        let sum = sum16::<TCP>(tcp, pseudo + TCP as u32 + u32::from(IPPROTO_TCP));
        (tcp.add(16) as *mut u16).write_unaligned(fold(sum).to_be());
    }
}

/// What the SYN at `l4` offers in its options (see [`synack::syn_options`]): the first
/// six words of its options, read from a header bounds-checked for a constant length
/// (one branch per length that matters), zero past its end.
#[inline(always)]
fn syn_options(ctx: &XdpContext, l4: usize) -> SynOptions {
    let Some(th) = ptr_at::<[u8; 20]>(ctx, l4) else {
        return SynOptions::NONE;
    };
    // SAFETY: bounds checked; byte 12 holds the data offset.
    let doff = unsafe { *(th as *const u8).add(12) } >> 4;
    let mut w = [0u32; 6];
    macro_rules! read {
        ($len:literal, $words:literal) => {
            if let Some(p) = ptr_at::<[u8; $len]>(ctx, l4) {
                let mut i = 0;
                while i < $words {
                    // SAFETY: `20 + 4 * i + 4 <= $len`, within the checked header.
                    w[i] = u32::from_be(unsafe {
                        ((p as *const u8).add(20 + 4 * i) as *const u32).read_unaligned()
                    });
                    i += 1;
                }
            }
        };
    }
    match doff {
        9 => read!(36, 4),
        10 => read!(40, 5),
        11 => read!(44, 6),
        6..=15 => read!(24, 1),
        _ => {}
    }
    synack::syn_options(u32::from(doff), &w)
}

/// The options of the cookie SYN-ACK answering the SYN at `l4` (read before the frame is
/// rewritten): what the SYN offered, what the kernel's settings allow (`cookie_opts`,
/// from the config), the time, and the interface's MSS (`ip_overhead`: the IP and TCP
/// headers' 40 or 60 bytes under the MTU). `ecn_capable` says the SYN's IP header is
/// ECN-capable, which the kernel takes as a middlebox's doing: no ECN then.
#[inline(always)]
fn synack_options_for(
    ctx: &XdpContext,
    l4: usize,
    cookie_opts: u32,
    ecn_capable: bool,
    ip_overhead: u32,
) -> SynackOptions {
    let mut syn = syn_options(ctx, l4);
    if let Some(th) = ptr_at::<[u8; 20]>(ctx, l4) {
        // SAFETY: bounds checked.
        let flags = unsafe { (*th)[TCP_FLAGS_OFFSET] };
        syn.ecn = flags & (TCP_ECE | TCP_CWR) == TCP_ECE | TCP_CWR && !ecn_capable;
    }
    let mut mtu: u32 = 0;
    // SAFETY: `mtu` is a valid u32; ifindex 0 is the receiving device (the SYN-ACK leaves
    // through it). The helper stores the MTU whatever it returns.
    unsafe { bpf_check_mtu(ctx.ctx as *mut c_void, 0, &mut mtu, 0, 0) };
    let route_mss = if mtu > ip_overhead + 536 {
        mtu - ip_overhead
    } else {
        536
    };
    // Read only for an answer with timestamps (a flood's bare SYNs have none), whose
    // TSval it gives.
    let now_ms = if syn.tsval.is_some() && cookie_opts & synack::TIMESTAMPS != 0 {
        // SAFETY: a helper without arguments. The coarse clock lags the one the server's
        // later timestamps come from, never leads it (see `synack_options`).
        (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000) as u32
    } else {
        0
    };
    synack::synack_options(&syn, cookie_opts, now_ms, route_mss)
}

/// Ask the kernel for a cookie for this SYN from its listener, or why not (a verdict
/// reason). The MSS the cookie encodes (the client's, rounded down to the kernel's table)
/// is what the server sends with; the SYN-ACK advertises its own (`synack_options_for`).
#[inline(always)]
fn gen_cookie(
    ctx: &XdpContext,
    tuple: &mut MaybeUninit<bpf_sock_tuple>,
    tuple_size: usize,
    ip: *mut c_void,
    ip_len: u32,
    l4: usize,
) -> Result<u32, usize> {
    let sk = lookup_sock(ctx, tuple, tuple_size);
    if sk.is_null() {
        return Err(R_COOKIE_NO_LISTENER);
    }
    // SAFETY: `sk` is a referenced socket from the lookup; released on every path.
    let value = unsafe {
        let value = if (*sk).state != TCP_LISTEN {
            -1
        } else {
            // `th` is bounds-checked for `len` bytes, the header's length.
            in_place(ctx, l4, |th, len| {
                bpf_tcp_gen_syncookie(sk as *mut c_void, ip, ip_len, th, len)
            })
        };
        bpf_sk_release(sk as *mut c_void);
        value
    };
    if value < 0 {
        return Err(R_COOKIE_FALLBACK);
    }
    Ok(value as u32)
}

/// Answer an IPv4 SYN with a cookie SYN-ACK made by the kernel for its listener, built
/// in place and sent back with XDP_TX.
#[inline(never)]
fn syn_cookie_v4(ctx: &XdpContext, at: &Offsets, cookie_opts: u32) -> usize {
    let (l3, l4) = (at.l3, at.l4);
    let (Some(ip), Some(th)) = (ptr_at::<Ipv4Hdr>(ctx, l3), ptr_at::<[u8; 4]>(ctx, l4)) else {
        return R_COOKIE_FALLBACK;
    };
    // SAFETY: bounds checked.
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: bounds checked; the tuple's IPv4 part is saddr, daddr, sport, dport, the
    // same bytes in the same order as in the packet.
    unsafe {
        let t = tuple.as_mut_ptr() as *mut u8;
        core::ptr::copy_nonoverlapping((ip as *const u8).add(12), t, 8);
        core::ptr::copy_nonoverlapping(th as *const u8, t.add(8), 4);
    }
    let cookie = match gen_cookie(
        ctx,
        &mut tuple,
        mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
        ip as *mut c_void,
        Ipv4Hdr::LEN as u32,
        l4,
    ) {
        Ok(c) => c,
        Err(reason) => return reason,
    };
    // SAFETY: bounds checked; the ECN field is the low two bits of the TOS byte.
    let ecn_capable = unsafe { *(ip as *const u8).add(1) } & 3 != 0;
    let o = synack_options_for(ctx, l4, cookie_opts, ecn_capable, 40);
    if o.ts.is_some() {
        synack_v4::<SYNACK_TCP_LEN>(ctx, l3, l4, cookie, &o)
    } else {
        synack_v4::<SHORT_SYNACK_TCP_LEN>(ctx, l3, l4, cookie, &o)
    }
}

/// Turn the IPv4 SYN into the cookie SYN-ACK, with a `TCP`-byte TCP header.
#[inline(always)]
fn synack_v4<const TCP: usize>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    cookie: u32,
    o: &SynackOptions,
) -> usize {
    let Some(f) = resize_for_synack::<{ Ipv4Hdr::LEN }, TCP>(ctx, l3, l4) else {
        return R_COOKIE_FALLBACK;
    };
    // SAFETY: `resize_for_synack` checked each header's bounds.
    unsafe {
        swap_bytes::<6>(f.eth, f.eth.add(6));
        let ip = f.ip;
        *ip = 0x45;
        *ip.add(1) = 0;
        (ip.add(2) as *mut u16).write_unaligned(((Ipv4Hdr::LEN + TCP) as u16).to_be());
        (ip.add(4) as *mut u32).write_unaligned(0x4000u32.to_be()); // id 0, don't fragment
        *ip.add(8) = 64;
        *ip.add(9) = IPPROTO_TCP;
        (ip.add(10) as *mut u16).write_unaligned(0);
        swap_bytes::<4>(ip.add(12), ip.add(16));
        (ip.add(10) as *mut u16).write_unaligned(fold(sum16::<20>(ip, 0)).to_be());
        let pseudo = sum16::<8>(ip.add(12), 0);
        write_synack_tcp::<TCP>(f.tcp, cookie, o, pseudo);
    }
    R_COOKIE_SENT
}

/// Answer an IPv6 SYN the same way.
#[inline(never)]
fn syn_cookie_v6(ctx: &XdpContext, at: &Offsets, cookie_opts: u32) -> usize {
    let (l3, l4) = (at.l3, at.l4);
    let (Some(ip), Some(th)) = (ptr_at::<Ipv6Hdr>(ctx, l3), ptr_at::<[u8; 4]>(ctx, l4)) else {
        return R_COOKIE_FALLBACK;
    };
    // SAFETY: bounds checked.
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: bounds checked; the tuple's IPv6 part is saddr, daddr, sport, dport, the
    // same bytes in the same order as in the packet.
    unsafe {
        let t = tuple.as_mut_ptr() as *mut u8;
        core::ptr::copy_nonoverlapping((ip as *const u8).add(8), t, 32);
        core::ptr::copy_nonoverlapping(th as *const u8, t.add(32), 4);
    }
    let cookie = match gen_cookie(
        ctx,
        &mut tuple,
        mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
        ip as *mut c_void,
        Ipv6Hdr::LEN as u32,
        l4,
    ) {
        Ok(c) => c,
        Err(reason) => return reason,
    };
    // SAFETY: bounds checked; the ECN field is the low two bits of the traffic class,
    // bits 4-5 of the second byte.
    let ecn_capable = (unsafe { *(ip as *const u8).add(1) } >> 4) & 3 != 0;
    let o = synack_options_for(ctx, l4, cookie_opts, ecn_capable, 60);
    if o.ts.is_some() {
        synack_v6::<SYNACK_TCP_LEN>(ctx, l3, l4, cookie, &o)
    } else {
        synack_v6::<SHORT_SYNACK_TCP_LEN>(ctx, l3, l4, cookie, &o)
    }
}

/// Turn the IPv6 SYN into the cookie SYN-ACK, with a `TCP`-byte TCP header.
#[inline(always)]
fn synack_v6<const TCP: usize>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    cookie: u32,
    o: &SynackOptions,
) -> usize {
    let Some(f) = resize_for_synack::<{ Ipv6Hdr::LEN }, TCP>(ctx, l3, l4) else {
        return R_COOKIE_FALLBACK;
    };
    // SAFETY: `resize_for_synack` checked each header's bounds.
    unsafe {
        swap_bytes::<6>(f.eth, f.eth.add(6));
        let ip = f.ip;
        (ip as *mut u32).write_unaligned(0x6000_0000u32.to_be());
        (ip.add(4) as *mut u16).write_unaligned((TCP as u16).to_be());
        *ip.add(6) = IPPROTO_TCP;
        *ip.add(7) = 64;
        swap_bytes::<16>(ip.add(8), ip.add(24));
        let pseudo = sum16::<32>(ip.add(8), 0);
        write_synack_tcp::<TCP>(f.tcp, cookie, o, pseudo);
    }
    R_COOKIE_SENT
}

/// Record that a source proved it owns its address (`how`, a `PROOF_*`), for
/// `verified_ns` from `now`. A proof that still holds is extended (keeping how and since
/// when it was first made), never shortened (a protected address stays protected).
/// The source's bit in `SG_PROOF_FILTER` is set first, whatever the outcome.
#[inline(never)]
fn prove(key: &SourceKey, cfg: &Config, now: u64, how: u32) -> bool {
    mark_proven(sources::set_of(key, &cfg.source_seed));
    let until_ns = now.saturating_add(cfg.verified_ns);
    let (since_ns, how) = match SG_VERIFIED.get_ptr(key) {
        // SAFETY: a copy of the value is read at once (see `is_verified`).
        Some(p) => match unsafe { *p } {
            old if old.until_ns >= until_ns => return true,
            old if old.until_ns > now => (old.since_ns, old.how),
            _ => (now, how),
        },
        None => (now, how),
    };
    let proof = Proof {
        until_ns,
        since_ns,
        how,
        _pad: 0,
    };
    SG_VERIFIED.insert(key, proof, 0).is_ok()
}

/// The `sock_ops` program, attached to the root cgroup by `run`: every connection a
/// socket of this machine accepts completes a handshake, which proves its peer owns its
/// address (see [`Proof`]). Called once per accepted connection, never per packet.
#[sock_ops]
pub fn synguard_proofs(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        prove_peer(&ctx);
    }
    1
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
fn prove_peer(ctx: &SockOpsContext) {
    let Some(cfg) = SG_CONFIG.get(0) else {
        return;
    };
    let key = match ctx.family() {
        // The fields hold the address in network order, as the packet does.
        AF_INET => source_key_v4(ctx.remote_ip4().to_ne_bytes(), cfg.v4_mask, cfg.ipv4_prefix),
        AF_INET6 => {
            let w = ctx.remote_ip6();
            // An IPv4 peer of a dual-stack socket (::ffff:a.b.c.d) is metered as IPv4.
            if w[0] == 0 && w[1] == 0 && w[2] == 0xffff_u32.to_be() {
                source_key_v4(w[3].to_ne_bytes(), cfg.v4_mask, cfg.ipv4_prefix)
            } else {
                let mut addr = [0u8; 16];
                for (i, word) in w.iter().enumerate() {
                    addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
                }
                source_key_v6(addr, cfg.v6_mask, cfg.ipv6_prefix)
            }
        }
        _ => return,
    };
    // SAFETY: a helper without arguments; the same clock as the XDP program's (see
    // [`clock`]), at tick resolution.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    prove(&key, cfg, now, PROOF_HANDSHAKE);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AckCheck {
    /// The ACK carried a valid cookie, or the segment belongs to a connection the kernel
    /// knows (established, queued, or in TIME_WAIT).
    Proven,
    /// A listener, but no connection, and (for an ACK) no valid cookie.
    Invalid,
    /// No socket at all for the segment's tuple.
    NoSocket,
    /// The check could not run (headers not readable).
    Unknown,
}

/// An ACK or RST from an unverified source while cookies are on: does it prove the
/// source (an ACK with a valid cookie), and is it to be dropped? Its verdict:
/// `R_TCP_OTHER`, `R_ACK_NO_FLOW` or `R_RST_NO_FLOW`. (One register for the answer: a
/// BPF function takes at most five arguments, an `Option` would be a sixth.)
///
/// Dropped only when nothing could want it: no connection of this namespace has its
/// tuple, it carries no valid cookie (the kernel would answer an ACK with a reset and
/// ignore an RST), and the lookup speaks for the socket it would reach: the destination
/// is one of the machine's addresses (`to_local`) and no NAT rule rewrites its port
/// (`nat_port`; a container's connections live in its own namespace). Verified sources,
/// segments behind IP options or IPv6 extension headers, and anything the check cannot
/// read go on to the kernel.
#[inline(never)]
fn check_ack(pkt: &Packet, at: &Offsets, dport: u16, key: &SourceKey, rst: bool) -> usize {
    let now = pkt.now;
    if is_verified(key, now) || !at.simple {
        return R_TCP_OTHER;
    }
    let result = if at.family == FAMILY_V4 {
        ack_v4(pkt.ctx, at, rst)
    } else {
        ack_v6(pkt.ctx, at, rst)
    };
    match result {
        AckCheck::Proven => {
            // Only a correct cookie (or a real connection) gets here: forged sources never
            // see their SYN-ACK, so they can never insert themselves. An RST proves
            // nothing (it only had to name a connection).
            if !rst && prove(key, pkt.cfg, now, PROOF_COOKIE) {
                pkt.note(N_VERIFIED);
            }
            R_TCP_OTHER
        }
        AckCheck::Unknown => R_TCP_OTHER,
        AckCheck::Invalid | AckCheck::NoSocket => {
            if !rst && result == AckCheck::Invalid {
                pkt.note(N_COOKIE_ACK_INVALID);
            }
            if !to_local(pkt.ctx, at) || nat_port(dport) {
                R_TCP_OTHER
            } else if rst {
                R_RST_NO_FLOW
            } else {
                R_ACK_NO_FLOW
            }
        }
    }
}

#[inline(always)]
fn ack_check(
    ctx: &XdpContext,
    sk: *mut bpf_sock,
    ip: *mut c_void,
    ip_len: u32,
    l4: usize,
    rst: bool,
) -> AckCheck {
    if sk.is_null() {
        return AckCheck::NoSocket;
    }
    // SAFETY: `sk` is a referenced socket from the lookup, released on every path.
    unsafe {
        if (*sk).state != TCP_LISTEN {
            // An established connection or a request the kernel queued itself: the source
            // completed a real handshake.
            bpf_sk_release(sk as *mut c_void);
            return AckCheck::Proven;
        }
        if rst {
            // An RST for no connection: a cookie means nothing to it.
            bpf_sk_release(sk as *mut c_void);
            return AckCheck::Invalid;
        }
        // `th` is bounds-checked for `len` bytes, the header's length.
        let r = in_place(ctx, l4, |th, len| {
            bpf_tcp_check_syncookie(sk as *mut c_void, ip, ip_len, th, len)
        });
        bpf_sk_release(sk as *mut c_void);
        if r == 0 {
            AckCheck::Proven
        } else {
            AckCheck::Invalid
        }
    }
}

#[inline(never)]
fn ack_v4(ctx: &XdpContext, at: &Offsets, rst: bool) -> AckCheck {
    let (Some(ip), Some(th)) = (ptr_at::<Ipv4Hdr>(ctx, at.l3), ptr_at::<[u8; 4]>(ctx, at.l4))
    else {
        return AckCheck::Unknown;
    };
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: bounds checked; see `syn_cookie_v4`.
    unsafe {
        let t = tuple.as_mut_ptr() as *mut u8;
        core::ptr::copy_nonoverlapping((ip as *const u8).add(12), t, 8);
        core::ptr::copy_nonoverlapping(th as *const u8, t.add(8), 4);
    }
    let sk = lookup_sock(
        ctx,
        &mut tuple,
        mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
    );
    ack_check(ctx, sk, ip as *mut c_void, Ipv4Hdr::LEN as u32, at.l4, rst)
}

#[inline(never)]
fn ack_v6(ctx: &XdpContext, at: &Offsets, rst: bool) -> AckCheck {
    let (Some(ip), Some(th)) = (ptr_at::<Ipv6Hdr>(ctx, at.l3), ptr_at::<[u8; 4]>(ctx, at.l4))
    else {
        return AckCheck::Unknown;
    };
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: bounds checked; see `syn_cookie_v6`.
    unsafe {
        let t = tuple.as_mut_ptr() as *mut u8;
        core::ptr::copy_nonoverlapping((ip as *const u8).add(8), t, 32);
        core::ptr::copy_nonoverlapping(th as *const u8, t.add(32), 4);
    }
    let sk = lookup_sock(
        ctx,
        &mut tuple,
        mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
    );
    ack_check(ctx, sk, ip as *mut c_void, Ipv6Hdr::LEN as u32, at.l4, rst)
}

/// The per-source token bucket: `R_SYN_PASSED`, `R_SYN_LIMITED` (banning the source),
/// [`CHALLENGED`] (a proven source over its limit) or `R_SYN_UNTRACKED`, not yet counted. The bucket lives in one of the two slots of the
/// source's set (see [`sources`]); both lookups are inlined array reads.
#[inline(always)]
fn meter_syn(pkt: &Packet, key: &SourceKey, set: u32, family: u8, now: u64) -> usize {
    let cfg = pkt.cfg;
    let first = set * sources::WAYS;
    let (Some(a), Some(b)) = (
        SG_SOURCES.get_ptr_mut(first),
        SG_SOURCES.get_ptr_mut(first + 1),
    ) else {
        return R_SYN_UNTRACKED;
    };
    // SAFETY: live array elements. Other CPUs may update the same bucket at the same
    // time; the races lose at most one SYN's accounting per racing CPU, which is within
    // the slack of a token bucket and cheaper than a lock on the hot path.
    let slot = unsafe {
        if (*a).holds(key) {
            &mut *a
        } else if (*b).holds(key) {
            &mut *b
        } else {
            return track_new(pkt, key, a, b, now);
        }
    };
    let b = &mut slot.bucket;
    b.count_syn(now);
    match gcra::conform(b.tat_ns, now, cfg.syn_interval_ns, cfg.syn_tolerance_ns) {
        Some(tat) => {
            b.tat_ns = tat;
            R_SYN_PASSED
        }
        None => {
            b.limited += 1;
            // Whether it is proven: from the slot's mark while it holds (a source over its
            // limit is not looked up for every SYN), else from `SG_VERIFIED`.
            let proven = match sources::proof_from_mark(slot.proof_mark, now) {
                Some(p) => p,
                None => {
                    let p = is_verified(key, now);
                    slot.proof_mark = sources::proof_mark(now, p);
                    p
                }
            };
            let b = &slot.bucket;
            // Decided here, and the two outcomes in frames of their own: the verifier of
            // Linux 5.15 sums the stack of nested calls (rounded up to 32 bytes each)
            // against 512, and a ban's frames are deep.
            if proven {
                return challenge(pkt, key, family, b, now);
            }
            if cfg.ban_ns != 0 {
                on_limit(pkt, key, family, b, now);
            }
            R_SYN_LIMITED
        }
    }
}

/// Not a counter: a SYN over the limit of a proven source, to be challenged.
const CHALLENGED: usize = usize::MAX - 1;

/// A proven source went over its limit: a flood carrying its address is most likely
/// forged, so it is challenged rather than banned: attack mode (cookies) at once if it was
/// off, and its SYNs are answered with cookies, which only its owner can complete. Tells
/// userspace the first time. Returns [`CHALLENGED`]. Out of line: rare.
#[inline(never)]
fn challenge(pkt: &Packet, key: &SourceKey, family: u8, b: &Bucket, now: u64) -> usize {
    pkt.note(N_CHALLENGED);
    if let Some(st) = SG_IFSTATE.get_ptr_mut(pkt.slot) {
        // SAFETY: a live map value shared by CPUs (see `evaluate_attack`).
        let st = unsafe { &mut *st };
        if attack_challenge(st, now) {
            pkt.note(N_ATTACKS);
            emit_attack(pkt, EVENT_ATTACK_ON, st.rate, ATTACK_BY_CHALLENGE, now);
        }
    }
    if b.limited == 1 && pkt.event_allowed(now) {
        let (syns, span) = rate_span(b, now);
        let info = BanInfo {
            syns,
            rate: syns * 1_000_000_000 / span,
            now,
            expires: 0,
        };
        emit_ban(pkt, key, family, &info, EVENT_CHALLENGE);
    }
    CHALLENGED
}

/// An unproven source went over its limit: ban it (its SYNs, for `ban-for`) and tell
/// userspace. Out of line: rare, and its frame must not add to the hot path's.
#[inline(never)]
fn on_limit(pkt: &Packet, key: &SourceKey, family: u8, b: &Bucket, now: u64) {
    let cfg = pkt.cfg;
    let (syns, span) = rate_span(b, now);
    let rate = syns * 1_000_000_000 / span;
    let info = BanInfo {
        syns,
        rate,
        now,
        expires: now + cfg.ban_ns,
    };
    // The ban and its event are separate calls so their stack frames are never nested
    // (the verifier sums nested frames against 512 bytes).
    let result = if family == FAMILY_V4 {
        record_ban_v4(key, &info)
    } else {
        record_ban_v6(key, &info)
    };
    match result {
        BanResult::Added => {
            pkt.note(N_BANS);
            if pkt.event_allowed(now) {
                emit_ban(pkt, key, family, &info, EVENT_BAN);
            }
        }
        BanResult::AlreadyBanned => {}
        BanResult::TableFull => {
            pkt.note(N_BAN_TABLE_FULL);
            if pkt.warn_allowed(now) {
                warn_full(pkt, FULL_BANS);
            }
        }
    }
}

/// A SYN from a source without a bucket: give it a slot of its set (its first SYN takes
/// one token), or pass it unmetered when both hold sources spending their bursts.
#[inline(never)]
fn track_new(pkt: &Packet, key: &SourceKey, a: *mut Slot, b: *mut Slot, now: u64) -> usize {
    // SAFETY: live array elements (see `meter_syn` for concurrent writers).
    let (a, b) = unsafe { (&mut *a, &mut *b) };
    let slot = match sources::pick(a, b, now) {
        Some(false) => a,
        Some(true) => b,
        None => {
            if pkt.warn_allowed(now) {
                warn_full(pkt, FULL_SOURCES);
            }
            return R_SYN_UNTRACKED;
        }
    };
    if !slot.is_empty() {
        pkt.note(N_SOURCES_RECYCLED);
    }
    slot.key = *key;
    slot.proof_mark = 0;
    slot.bucket = Bucket::first(now, pkt.cfg.syn_interval_ns);
    pkt.note(N_SOURCES_NEW);
    R_SYN_PASSED
}

const FULL_SOURCES: u8 = 0;
const FULL_BANS: u8 = 1;

/// Tell userspace a table is full (callers limit this to once a second per CPU).
#[inline(never)]
fn warn_full(pkt: &Packet, which: u8) {
    if which == FULL_SOURCES {
        warn!(
            pkt.ctx,
            "sources table: both slots of a new source's set hold sources spending their \
             bursts ({} slots): it passes unmetered",
            sources::SLOTS
        );
    } else {
        warn!(
            pkt.ctx,
            "bans table full ({} entries): bans not recorded, excess SYNs still dropped",
            capacity::RULES
        );
    }
}

/// What a ban records and reports.
struct BanInfo {
    /// SYNs over the span the rate was measured on.
    syns: u64,
    /// Its SYN rate per second.
    rate: u64,
    now: u64,
    expires: u64,
}

#[inline(always)]
fn ban_rule(key: &SourceKey, info: &BanInfo) -> Rule {
    let mut rule = Rule::new(RULE_BAN, ACTION_DROP, info.now, info.expires);
    rule.prefix_len = key.prefix_len as u8;
    rule.syns = info.syns;
    rule.rate = info.rate;
    rule
}

/// Record a ban of an IPv4 source's aggregated prefix.
#[inline(never)]
fn record_ban_v4(key: &SourceKey, info: &BanInfo) -> BanResult {
    let rule = ban_rule(key, info);
    let addr = [key.addr[12], key.addr[13], key.addr[14], key.addr[15]];
    let k = Key::new(key.prefix_len, rule_key_v4(addr, RULE_BAN));
    let result = insert_ban(&SG_BANS_V4, &k, &rule, info.now);
    // After the insert, and whatever its result: a ban whose bit was lost gets it back
    // with the next SYN over the limit.
    hint_ban_v4(addr, key.prefix_len);
    result
}

/// Record a ban of an IPv6 source's aggregated prefix.
#[inline(never)]
fn record_ban_v6(key: &SourceKey, info: &BanInfo) -> BanResult {
    let rule = ban_rule(key, info);
    let k = Key::new(key.prefix_len, rule_key_v6(key.addr, RULE_BAN));
    let result = insert_ban(&SG_BANS_V6, &k, &rule, info.now);
    hint_ban_v6(&key.addr, key.prefix_len);
    result
}

/// Tell userspace about a new ban, or a first challenge (`kind`; once per ban or
/// source; rate-limited by the caller).
#[inline(never)]
fn emit_ban(pkt: &Packet, key: &SourceKey, family: u8, info: &BanInfo, kind: u32) {
    let Some(mut entry) = SG_EVENTS.reserve::<Event>(0) else {
        pkt.note(N_EVENTS_LOST);
        return;
    };
    let mut addr = [0u8; 16];
    if family == FAMILY_V4 {
        addr[..4].copy_from_slice(&key.addr[12..]);
    } else {
        addr = key.addr;
    }
    entry.write(Event {
        kind,
        ifindex: pkt.ifindex,
        family,
        prefix_len: key.prefix_len as u8,
        _pad: [0; 6],
        addr,
        time_ns: info.now,
        expires_ns: info.expires,
        syns: info.syns,
        rate: info.rate,
    });
    entry.submit(0);
}

enum BanResult {
    Added,
    AlreadyBanned,
    TableFull,
}

#[inline(always)]
fn insert_ban<K>(map: &LpmTrie<K, Rule>, key: &Key<K>, rule: &Rule, now: u64) -> BanResult {
    match map.insert(key, rule, BPF_NOEXIST as u64) {
        Ok(()) => BanResult::Added,
        Err(e) if e == -EEXIST => {
            // An entry for exactly this prefix exists (a lookup at the key's length returns
            // it). A live one means another CPU banned it first, so its event is theirs;
            // an expired one is replaced.
            match map.get(key) {
                Some(old) if old.prefix_len == rule.prefix_len && old.expired(now) => {
                    match map.insert(key, rule, 0) {
                        Ok(()) => BanResult::Added,
                        Err(_) => BanResult::TableFull,
                    }
                }
                _ => BanResult::AlreadyBanned,
            }
        }
        Err(_) => BanResult::TableFull,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The socket-lookup and SYN-cookie helpers used by attack mode are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
