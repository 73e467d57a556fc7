//! The metering stage: each source's token bucket in the sources table, what happens
//! over the limit (a challenge or a ban), and bans recorded and announced.

use crate::*;

/// The per-source token bucket ([`decide::bucket_syn`], [`decide::over_limit`]):
/// `R_SYN_PASSED`, `R_SYN_LIMITED` (banning the source), [`CHALLENGED`] (a proven source
/// over its limit) or `R_SYN_UNTRACKED`, not yet counted. The bucket lives in one of the
/// two slots of the source's set (see [`sources`]); both lookups are inlined array reads.
#[inline(always)]
pub(crate) fn meter_syn(pkt: &Packet, key: &SourceKey, set: u32, family: u8, now: u64) -> usize {
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
    if decide::bucket_syn(
        &mut slot.bucket,
        now,
        cfg.syn_interval_ns,
        cfg.syn_tolerance_ns,
    ) {
        return R_SYN_PASSED;
    }
    // Whether it is proven: from the slot's mark while it holds (a source over its limit
    // is not looked up for every SYN), else from `SG_VERIFIED`.
    let over = decide::over_limit(
        || match sources::proof_from_mark(slot.proof_mark, now) {
            Some(p) => p,
            None => {
                let p = is_verified(key, now);
                slot.proof_mark = sources::proof_mark(now, p);
                p
            }
        },
        cfg.ban_ns,
    );
    let b = &slot.bucket;
    // Decided here, and the two outcomes in frames of their own: the verifier of Linux
    // 5.15 sums the stack of nested calls (rounded up to 32 bytes each) against 512, and
    // a ban's frames are deep.
    match over {
        OverLimit::Challenge => challenge(pkt, key, family, b, now),
        OverLimit::Ban => {
            on_limit(pkt, key, family, b, now);
            R_SYN_LIMITED
        }
        OverLimit::Drop => R_SYN_LIMITED,
    }
}

/// A proven source went over its limit: a flood carrying its address is most likely
/// forged, so it is challenged rather than banned: attack mode (cookies) at once if it was
/// off, and its SYNs are answered with cookies, which only its owner can complete. Tells
/// userspace the first time. Returns [`CHALLENGED`]. Out of line: rare.
#[inline(never)]
pub(crate) fn challenge(pkt: &Packet, key: &SourceKey, family: u8, b: &Bucket, now: u64) -> usize {
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
pub(crate) fn on_limit(pkt: &Packet, key: &SourceKey, family: u8, b: &Bucket, now: u64) {
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
pub(crate) fn track_new(
    pkt: &Packet,
    key: &SourceKey,
    a: *mut Slot,
    b: *mut Slot,
    now: u64,
) -> usize {
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

pub(crate) const FULL_SOURCES: u8 = 0;
pub(crate) const FULL_BANS: u8 = 1;

/// Tell userspace a table is full (callers limit this to once a second per CPU).
#[inline(never)]
pub(crate) fn warn_full(pkt: &Packet, which: u8) {
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
pub(crate) struct BanInfo {
    /// SYNs over the span the rate was measured on.
    syns: u64,
    /// Its SYN rate per second.
    rate: u64,
    now: u64,
    expires: u64,
}

#[inline(always)]
pub(crate) fn ban_rule(key: &SourceKey, info: &BanInfo) -> Rule {
    let mut rule = Rule::new(RULE_BAN, ACTION_DROP, info.now, info.expires);
    rule.prefix_len = key.prefix_len as u8;
    rule.syns = info.syns;
    rule.rate = info.rate;
    rule
}

/// Record a ban of an IPv4 source's aggregated prefix.
#[inline(never)]
pub(crate) fn record_ban_v4(key: &SourceKey, info: &BanInfo) -> BanResult {
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
pub(crate) fn record_ban_v6(key: &SourceKey, info: &BanInfo) -> BanResult {
    let rule = ban_rule(key, info);
    let k = Key::new(key.prefix_len, rule_key_v6(key.addr, RULE_BAN));
    let result = insert_ban(&SG_BANS_V6, &k, &rule, info.now);
    hint_ban_v6(&key.addr, key.prefix_len);
    result
}

/// Tell userspace about a new ban, or a first challenge (`kind`; once per ban or
/// source; rate-limited by the caller).
#[inline(never)]
pub(crate) fn emit_ban(pkt: &Packet, key: &SourceKey, family: u8, info: &BanInfo, kind: u32) {
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

pub(crate) enum BanResult {
    Added,
    AlreadyBanned,
    TableFull,
}

#[inline(always)]
pub(crate) fn insert_ban<K>(
    map: &LpmTrie<K, Rule>,
    key: &Key<K>,
    rule: &Rule,
    now: u64,
) -> BanResult {
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
