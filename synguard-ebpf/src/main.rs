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
//! Per packet: one inlined array lookup (config), one inlined per-CPU array lookup
//! (counters), one longest-prefix-match lookup (rules) once the IP header is parsed, and
//! for SYNs to protected ports one hash lookup (the source's bucket). Nothing allocates,
//! nothing logs per packet; events and warnings are rate-limited per CPU.
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
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem,
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};
use synguard_common::{
    ACTION_DROP, Bucket, Config, EVENT_BAN, EVENT_INTERVAL_NS, EVENT_TOLERANCE_NS, Event,
    FAMILY_V4, FAMILY_V6, MODE_MONITOR, RATE_WINDOW_NS, RULE_BAN, Rule, RuleKeyV4, RuleKeyV6,
    SourceKey, Stats, capacity, gcra, rate_span, rule_key_v4, rule_key_v6, source_key_v4,
    source_key_v6,
    stat::{self, *},
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
static SG_SOURCES: HashMap<SourceKey, Bucket> = HashMap::with_max_entries(capacity::SOURCES, 0);
#[map]
static SG_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

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
const E2BIG: i32 = 7;
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
        xdp_action::XDP_PASS
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

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
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

    if let Some(rule) = live_rule(
        |len| SG_RULES_V4.get(Key::new(len, rule_key_v4(src, 0))),
        32,
    ) {
        return pkt.verdict(apply_rule(rule));
    }

    if ip.proto != IPPROTO_TCP {
        return pkt.verdict(R_NON_TCP);
    }
    if u16::from_be_bytes(ip.frags) & 0x1fff != 0 {
        return pkt.verdict(R_FRAGMENT);
    }
    let prefix = pkt.cfg.ipv4_prefix;
    let key = source_key_v4(src, pkt.cfg.v4_mask, prefix);
    tcp(ctx, pkt, off + ihl, &key, FAMILY_V4)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, pkt: &Packet, off: usize) -> u32 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
        return pkt.verdict(R_TRUNCATED);
    };
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    let src = ip.src_addr;

    if let Some(rule) = live_rule(
        |len| SG_RULES_V6.get(Key::new(len, rule_key_v6(src, 0))),
        128,
    ) {
        return pkt.verdict(apply_rule(rule));
    }

    match ip.next_hdr {
        IPPROTO_TCP => {}
        // Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP,
        // shim6: the TCP header, if any, is further on. Passed unparsed (see the failure
        // policy): counted, never trusted.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => return pkt.verdict(R_IPV6_EXT),
        _ => return pkt.verdict(R_NON_TCP),
    }
    let key = source_key_v6(src, pkt.cfg.v6_mask, pkt.cfg.ipv6_prefix);
    tcp(ctx, pkt, off + Ipv6Hdr::LEN, &key, FAMILY_V6)
}

/// Longest expired entries a lookup steps past before giving up (then the packet is
/// treated as matching no entry, until userspace sweeps the expired ones, within a second).
const EXPIRED_SKIPS: usize = 4;

/// The longest live entry matching the source. An expired entry acts as absent: the
/// lookup continues with the next shorter prefix, so an expired ban or block never hides
/// a live allow or block entry around it.
#[inline(always)]
fn live_rule<'a>(lookup: impl Fn(u32) -> Option<&'a Rule>, max_len: u32) -> Option<&'a Rule> {
    let mut len = max_len;
    for _ in 0..EXPIRED_SKIPS {
        let rule = lookup(len)?;
        if rule.expires_ns == 0 || now_ns() < rule.expires_ns {
            return Some(rule);
        }
        if rule.prefix_len == 0 {
            return None;
        }
        len = u32::from(rule.prefix_len) - 1;
    }
    None
}

/// What a matching live rule means for this packet; counts the hit.
#[inline(always)]
fn apply_rule(rule: &Rule) -> usize {
    // SAFETY: map values are writable kernel memory that lives as long as the entry; the
    // counter is only ever updated atomically.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &rule.hits as *const u64 as *mut u64,
            1,
        )
    };
    if rule.action != ACTION_DROP {
        R_ALLOWED
    } else if rule.kind == RULE_BAN {
        R_BANNED
    } else {
        R_BLOCKED
    }
}

#[inline(always)]
fn tcp(ctx: &XdpContext, pkt: &Packet, off: usize, key: &SourceKey, family: u8) -> u32 {
    let Some(th) = ptr_at::<TcpHdr>(ctx, off) else {
        return pkt.verdict(R_TRUNCATED);
    };
    // SAFETY: bounds checked; the flags byte lies inside the 20-byte header.
    let flags = unsafe { *(th as *const u8).add(TCP_FLAGS_OFFSET) };
    if flags & TCP_SYN == 0 {
        return pkt.verdict(R_TCP_OTHER);
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        return pkt.verdict(R_INVALID_FLAGS);
    }
    if flags & TCP_ACK != 0 {
        return pkt.verdict(R_SYN_ACK);
    }
    pkt.note(N_SYNS);

    // SAFETY: bounds checked.
    let dport = u16::from_be_bytes(unsafe { (*th).dest });
    if pkt.cfg.all_ports == 0 && pkt.cfg.ports[(dport >> 6) as usize] & (1u64 << (dport & 63)) == 0
    {
        return pkt.verdict(R_SYN_UNPROTECTED);
    }
    meter_syn(pkt, key, family)
}

/// The per-source token bucket.
#[inline(always)]
fn meter_syn(pkt: &Packet, key: &SourceKey, family: u8) -> u32 {
    let cfg = pkt.cfg;
    let now = now_ns();
    let Some(bucket) = SG_SOURCES.get_ptr_mut(key) else {
        return track_new(pkt, key, now);
    };
    // SAFETY: a live map value. Other CPUs may update the same bucket at the same time;
    // the races lose at most one SYN's accounting per racing CPU, which is within the
    // slack of a token bucket and cheaper than a lock on the hot path.
    let b = unsafe { &mut *bucket };
    b.syns += 1;
    b.last_seen_ns = now;
    let age = now.wrapping_sub(b.window_start_ns);
    if age >= RATE_WINDOW_NS {
        b.prev_window_syns = if age < 2 * RATE_WINDOW_NS {
            b.window_syns
        } else {
            0
        };
        b.window_start_ns = now;
        b.window_syns = 0;
    }
    b.window_syns += 1;
    match gcra::conform(b.tat_ns, now, cfg.syn_interval_ns, cfg.syn_tolerance_ns) {
        Some(tat) => {
            b.tat_ns = tat;
            pkt.verdict(R_SYN_PASSED)
        }
        None => {
            b.limited += 1;
            if cfg.ban_ns != 0 {
                let (syns, span) = rate_span(b, now);
                let rate = syns * 1_000_000_000 / span;
                let info = BanInfo {
                    syns,
                    rate,
                    now,
                    expires: now + cfg.ban_ns,
                };
                // The ban and its event are separate calls so their stack frames are
                // never nested (the verifier sums nested frames against 512 bytes).
                let result = if family == FAMILY_V4 {
                    record_ban_v4(key, &info)
                } else {
                    record_ban_v6(key, &info)
                };
                match result {
                    BanResult::Added => {
                        pkt.note(N_BANS);
                        if pkt.event_allowed(now) {
                            emit_ban(pkt, key, family, &info);
                        }
                    }
                    BanResult::AlreadyBanned => {}
                    BanResult::TableFull => {
                        pkt.note(N_BAN_TABLE_FULL);
                        if pkt.warn_allowed(now) {
                            warn_full(pkt, FULL_RULES);
                        }
                    }
                }
            }
            pkt.verdict(R_SYN_LIMITED)
        }
    }
}

/// A SYN from a source without a bucket: make one (its first SYN takes one token).
#[inline(never)]
fn track_new(pkt: &Packet, key: &SourceKey, now: u64) -> u32 {
    let fresh = Bucket {
        tat_ns: gcra::first(now, pkt.cfg.syn_interval_ns),
        first_seen_ns: now,
        last_seen_ns: now,
        syns: 1,
        limited: 0,
        window_start_ns: now,
        window_syns: 1,
        prev_window_syns: 0,
    };
    match SG_SOURCES.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => {
            pkt.note(N_SOURCES_NEW);
            pkt.verdict(R_SYN_PASSED)
        }
        // Another CPU created it between our lookup and insert: its first SYN passed, and
        // so does this one (one SYN of slack per racing CPU).
        Err(e) if e == -EEXIST => pkt.verdict(R_SYN_PASSED),
        Err(e) => {
            if e == -E2BIG && pkt.warn_allowed(now) {
                warn_full(pkt, FULL_SOURCES);
            }
            pkt.verdict(R_SYN_UNTRACKED)
        }
    }
}

const FULL_SOURCES: u8 = 0;
const FULL_RULES: u8 = 1;

/// Tell userspace a table is full (callers limit this to once a second per CPU).
#[inline(never)]
fn warn_full(pkt: &Packet, which: u8) {
    if which == FULL_SOURCES {
        warn!(
            pkt.ctx,
            "sources table full ({} entries): new sources pass unmetered",
            capacity::SOURCES
        );
    } else {
        warn!(
            pkt.ctx,
            "rules table full ({} entries): bans not recorded, excess SYNs still dropped",
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
    insert_ban(&SG_RULES_V4, &k, &rule, info.now)
}

/// Record a ban of an IPv6 source's aggregated prefix.
#[inline(never)]
fn record_ban_v6(key: &SourceKey, info: &BanInfo) -> BanResult {
    let rule = ban_rule(key, info);
    let k = Key::new(key.prefix_len, rule_key_v6(key.addr, RULE_BAN));
    insert_ban(&SG_RULES_V6, &k, &rule, info.now)
}

/// Tell userspace about a new ban (once per ban; rate-limited by the caller).
#[inline(never)]
fn emit_ban(pkt: &Packet, key: &SourceKey, family: u8, info: &BanInfo) {
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
        kind: EVENT_BAN,
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
