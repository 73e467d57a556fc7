//! Attack mode: the SYN rate per CPU and window, attack mode starting and ending, and
//! the ACK and RST floods dropped while it lasts.

use crate::*;

/// Count a SYN in this CPU's rate window; when a window closes (see
/// [`decide::window_syn`]), re-evaluate attack mode.
#[inline(always)]
pub(crate) fn track_rate(pkt: &Packet, now: u64) {
    // SAFETY: this CPU's own slot (see `Packet::note`).
    let st = unsafe { &mut *pkt.stats };
    let closed = decide::window_syn(
        &mut st.window_start_ns,
        &mut st.window_syns,
        now,
        u64::from(pkt.cfg.attack_syn_rate),
        || SG_IFSTATE.get(pkt.slot).is_some_and(|s| s.attack == 0),
    );
    if let Some(rate) = closed {
        evaluate_attack(pkt, rate, now);
    }
}

/// Publish this CPU's SYN rate on the interface, add up every CPU's current rate and apply
/// the hysteresis. Runs once per window per CPU, never per packet, and takes no lock: each
/// CPU writes only its own rate, and concurrent evaluations can only repeat the same
/// decision. The sum is a loop of loads from one map value (see [`CpuRates`]): no helper
/// call inside it, so every verifier since 5.3 accepts its bounded back edge.
#[inline(never)]
pub(crate) fn evaluate_attack(pkt: &Packet, rate: u64, now: u64) {
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
pub(crate) fn emit_attack(pkt: &Packet, kind: u32, rate: u64, syns: u64, now: u64) {
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

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckCheck {
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
/// `R_TCP_OTHER`, `R_ACK_NO_SOCKET`, `R_ACK_SNAT_PORT`, `R_ACK_NO_FLOW` or
/// `R_RST_NO_FLOW`. (One register for the answer: a BPF function takes at most five
/// arguments, an `Option` would be a sixth.)
///
/// Dropped only when nothing of this machine could want it: the destination is one of
/// the machine's addresses (`to_local`; a guest's own address is the guest's business),
/// no NAT rule rewrites its port (`nat_port`: a container's connections live in its own
/// namespace), no connection of this namespace has its tuple, it carries no valid cookie
/// (the kernel would answer an ACK with a reset and ignore an RST), and no connection
/// the host's source NAT made could be its own. That last one is the reply of a
/// masqueraded guest's connection (a container's, a VM's, a pod's): it arrives at one of
/// the machine's addresses on the port the NAT chose, and only connection tracking knows
/// it, which XDP cannot ask (the conntrack lookup kfuncs need a loader that resolves
/// kfuncs, and 5.18). So on a host with source NAT of the segment's family
/// (`Config::snat`, from its rules), an ACK to a port the NAT may hand out (from
/// [`SNAT_LOW_PORT`]) is passed when no socket has its tuple (`R_ACK_NO_SOCKET`), and
/// when it reached a listener without a valid cookie (`R_ACK_SNAT_PORT`: the NAT kept a
/// guest's port that a host listener has too); what a flood aims below that (80, 443,
/// 22..., or closed low ports) is still dropped. Verified sources, segments behind IP options or IPv6 extension
/// headers, and anything the check cannot read go on to the kernel.
#[inline(never)]
pub(crate) fn check_ack(
    pkt: &Packet,
    at: &Offsets,
    dport: u16,
    key: &SourceKey,
    rst: bool,
) -> usize {
    let now = pkt.now;
    if is_verified(key, now) || !at.simple {
        return R_TCP_OTHER;
    }
    let result = if at.family == FAMILY_V4 {
        ack::<V4>(pkt.ctx, at, rst)
    } else {
        ack::<V6>(pkt.ctx, at, rst)
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
            let invalid = result == AckCheck::Invalid;
            if !rst && invalid {
                pkt.note(N_COOKIE_ACK_INVALID);
            }
            // A port the host's source NAT of this family may have given a guest.
            let family_bit = if at.family == FAMILY_V4 {
                SNAT_V4
            } else {
                SNAT_V6
            };
            let snat_port = pkt.cfg.snat & family_bit != 0 && dport >= SNAT_LOW_PORT;
            if !to_local(pkt.ctx, at) || nat_port(dport) {
                R_TCP_OTHER
            } else if snat_port && !invalid {
                R_ACK_NO_SOCKET
            } else if snat_port {
                R_ACK_SNAT_PORT
            } else if rst {
                R_RST_NO_FLOW
            } else {
                R_ACK_NO_FLOW
            }
        }
    }
}

#[inline(always)]
pub(crate) fn ack_check(
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

/// Look the segment's connection up, and check its cookie if it only reached a
/// listener (see [`ack_check`]).
#[inline(never)]
pub(crate) fn ack<F: Ip>(ctx: &XdpContext, at: &Offsets, rst: bool) -> AckCheck {
    let (Some(ip), Some(th)) = (ptr_at::<F::Hdr>(ctx, at.l3), ptr_at::<[u8; 4]>(ctx, at.l4)) else {
        return AckCheck::Unknown;
    };
    // SAFETY: bounds checked.
    let mut tuple = unsafe { tuple_of::<F>(ip as *const u8, th as *const u8) };
    let sk = lookup_sock(ctx, &mut tuple, F::TUPLE);
    ack_check(ctx, sk, ip as *mut c_void, F::LEN as u32, at.l4, rst)
}
