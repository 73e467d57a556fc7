//! Proofs that a source owns its address: the filter in front of them, the lookup,
//! and their writers (the cookie check's, and the `sock_ops` program's).

use crate::*;

/// Whether a source of this set may hold a proof (`SG_PROOF_FILTER`): if not, it holds
/// none.
#[inline(always)]
pub(crate) fn maybe_proven(set: u32) -> bool {
    let (row, word, bit) = sources::proof_filter_bit(set);
    match SG_PROOF_FILTER.get(row) {
        Some(words) => words[word & (sources::PROOF_FILTER_WORDS - 1)] & bit != 0,
        // An array always has its entries; were one missing, the proofs decide.
        None => true,
    }
}

/// Set a source set's bit in `SG_PROOF_FILTER` (before its proof is written).
#[inline(always)]
pub(crate) fn mark_proven(set: u32) {
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
pub(crate) fn is_verified(key: &SourceKey, now: u64) -> bool {
    // SAFETY: a copy of the field is read at once; an entry evicted meanwhile leaves a
    // stale but valid value.
    SG_VERIFIED
        .get_ptr(key)
        .is_some_and(|p| unsafe { (*p).until_ns } > now)
}

/// Record that a source proved it owns its address (`how`, a `PROOF_*`), for
/// `verified_ns` from `now`. A proof that still holds is extended (keeping how and since
/// when it was first made), never shortened (a protected address stays protected).
/// The source's bit in `SG_PROOF_FILTER` is set first, whatever the outcome.
///
/// True only when this call made the source verified (it held no proof, or an expired
/// one): the caller counts a newly verified source. Two packets of one source handled
/// on two CPUs at once (a handshake's ACK and the request behind it) both find no proof;
/// the first write is made with `BPF_NOEXIST`, so only one of them creates it and counts.
/// (An expired proof is replaced in place, where two such racers would both count: a
/// source that was verified before, seen again after `verified_ns`.)
#[inline(never)]
pub(crate) fn prove(key: &SourceKey, cfg: &Config, now: u64, how: u32) -> bool {
    mark_proven(sources::set_of(key, &cfg.source_seed));
    let until_ns = now.saturating_add(cfg.verified_ns);
    let (since_ns, how, flags, new) = match SG_VERIFIED.get_ptr(key) {
        // SAFETY: a copy of the value is read at once (see `is_verified`).
        Some(p) => match unsafe { *p } {
            old if old.until_ns >= until_ns => return false,
            old if old.until_ns > now => (old.since_ns, old.how, BPF_ANY, false),
            _ => (now, how, BPF_ANY, true),
        },
        None => (now, how, BPF_NOEXIST, true),
    };
    let proof = Proof {
        until_ns,
        since_ns,
        how,
        _pad: 0,
    };
    SG_VERIFIED.insert(key, proof, flags as u64).is_ok() && new
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

pub(crate) const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;

#[inline(always)]
pub(crate) fn prove_peer(ctx: &SockOpsContext) {
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
