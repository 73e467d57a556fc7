//! The rules stage: the operator's allow and block entries and the bans, looked up
//! in their tries behind their hints, with each CPU's memory of banned sources.

use crate::*;

/// Longest expired entries a lookup steps past before giving up (then the packet is
/// treated as matching no entry, until userspace sweeps the expired ones, within a second).
pub(crate) const EXPIRED_SKIPS: usize = 4;

/// The longest live entry matching the source. An expired entry acts as absent: the
/// lookup continues with the next shorter prefix, so an expired ban or block never hides
/// a live allow or block entry around it.
#[inline(always)]
pub(crate) fn live_rule<'a>(
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
pub(crate) const NO_RULE: usize = usize::MAX;

/// Whether an entry may match the source: its bit in a hint (see [`hint`]), by the
/// source's /24 (IPv4) or folded /40 (IPv6).
#[inline(always)]
pub(crate) fn hinted(map: &Array<u64>, index: [u8; 4]) -> bool {
    let (word, bit) = hint::bit(index);
    map.get(word).is_none_or(|w| *w & bit != 0)
}

/// Mark a new IPv4 ban in the hint. A plain read-modify-write: a racing update of the
/// same word can undo it, which the next SYN over the limit repeats (and until then the
/// source's SYNs are still limited by its bucket).
#[inline(always)]
pub(crate) fn hint_ban_v4(addr: [u8; 4], prefix_len: u32) {
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
pub(crate) fn hint_ban_v6(addr: &[u8; 16], prefix_len: u32) {
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
pub(crate) fn rule_reason_v4(bans: bool, src: &[u8; 4], now: u64) -> usize {
    let src = *src;
    let trie = if bans { &SG_BANS_V4 } else { &SG_RULES_V4 };
    live_rule(|len| trie.get(Key::new(len, rule_key_v4(src, 0))), 32, now)
        .map_or(NO_RULE, apply_rule)
}

/// The verdict of the bans for an IPv4 source, or `NO_RULE`: from this CPU's
/// [`BanCache`] entry when it vouches for the source, else from the trie.
#[inline(always)]
pub(crate) fn ban_reason_v4(src: [u8; 4], now: u64) -> usize {
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
pub(crate) fn ban_lookup_v4(src: [u8; 4], now: u64) -> usize {
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
pub(crate) fn rule_reason_v6(bans: bool, src: &[u8; 16], now: u64) -> usize {
    let src = *src;
    let trie = if bans { &SG_BANS_V6 } else { &SG_RULES_V6 };
    live_rule(|len| trie.get(Key::new(len, rule_key_v6(src, 0))), 128, now)
        .map_or(NO_RULE, apply_rule)
}

/// What a matching live rule means for this packet; counts the hit.
#[inline(always)]
pub(crate) fn apply_rule(rule: &Rule) -> usize {
    count_hits(rule, 1);
    rule_reason(rule)
}

/// Add to a rule's hit count.
#[inline(always)]
pub(crate) fn count_hits(rule: &Rule, n: u64) {
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
pub(crate) fn rule_reason(rule: &Rule) -> usize {
    if rule.action != ACTION_DROP {
        R_ALLOWED
    } else if rule.kind == RULE_BAN {
        R_BANNED
    } else {
        R_BLOCKED
    }
}
