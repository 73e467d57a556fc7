//! synguard's XDP program: parse, consult the allow/block/ban rules, meter SYNs per
//! source, drop what is flagged.
//!
//! # Stages
//! This file: the maps, the entry point and the parse (Ethernet, VLAN, IPv4, IPv6 with
//! its extension headers). Then, in the order a SYN meets them: [`rules`] (allow, block
//! and ban entries), [`verdicts`] (the TCP verdicts and the order a SYN is decided in),
//! [`meter`] (the source's token bucket, challenges and bans), [`attack`] (the rate per
//! CPU, attack mode, ACK and RST floods), [`proofs`] (who proved its address) and
//! [`cookie`] (the SYN cookie answered in XDP). The split changed no instruction that
//! matters: the verdict bench measured every verdict within noise of the single file.
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
        BPF_ANY, BPF_F_CURRENT_NETNS, BPF_F_MMAPABLE, BPF_NOEXIST,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        tcphdr, xdp_action,
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
    ACTION_DROP, ATTACK_BY_CHALLENGE, ATTACK_CALM_NS, ATTACK_STALE_NS, BanCache, Bucket, Config,
    CpuRate, CpuRates, EVENT_ATTACK_OFF, EVENT_ATTACK_ON, EVENT_BAN, EVENT_CHALLENGE,
    EVENT_INTERVAL_NS, EVENT_TOLERANCE_NS, Event, FAMILY_V4, FAMILY_V6, HostState, IfState,
    MODE_MONITOR, PORT_WORDS, PROOF_COOKIE, PROOF_HANDSHAKE, Proof, RULE_BAN, Rule, RuleKeyV4,
    RuleKeyV6, SNAT_LOW_PORT, SNAT_V4, SNAT_V6, SourceKey, Stats, V6_EXT_MAX, attack_challenge,
    attack_step, ban_cache, capacity, clock,
    decide::{self, CHALLENGED, OverLimit, Syn, SynRules},
    gcra, hint, rate_span, rule_key_v4, rule_key_v6, source_key_v4, source_key_v6,
    sources::{self, Slot},
    stat::{self, *},
    synack::{self, SynOptions, SynackOptions},
};

mod attack;
mod cookie;
mod meter;
mod proofs;
mod rules;
mod verdicts;

use attack::*;
use cookie::*;
use meter::*;
use proofs::*;
use rules::*;
use verdicts::*;

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
/// The host's settings as `run` keeps them; the program reads what a cookie SYN-ACK may
/// offer (see [`HostState`]).
#[map]
static SG_HOST: Array<HostState> = Array::with_max_entries(1, 0);

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
        decide::cookies_active(self.cfg.syn_cookies, || {
            SG_IFSTATE.get(self.slot).is_some_and(|s| s.attack != 0)
        })
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
    let slot = capacity::stats_slot(ifindex);
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

/// Where the headers are.
struct Offsets {
    l3: usize,
    l4: usize,
    family: u8,
    /// No IP options (IPv4) or extension headers (IPv6): the cookie reply can be built.
    simple: bool,
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
