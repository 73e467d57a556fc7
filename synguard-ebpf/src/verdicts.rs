//! The TCP verdicts: which segments are SYNs for a protected port, and the order a
//! SYN is decided in (bans, metering, attack mode, the locality checks, the cookie).

use crate::*;

/// The TCP verdicts. `banned` says whether a ban covers the source (`R_BANNED`, or
/// `NO_RULE`); it is asked only for SYNs to protected ports.
///
/// Bans act on new connection attempts only: a source's established connections, its
/// other traffic and its SYNs to unprotected ports are never dropped by a ban, so SYNs
/// forged with an address can at most keep that address from opening new connections to
/// the protected ports, and only while it has not proven it owns the address (a proven
/// source over its limit is challenged, never banned: see `on_limit`).
#[inline(always)]
pub(crate) fn tcp(
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
    // The source's set in the table, also its cell in the sketch and its proof filter bit.
    let set = sources::set_of(key, &pkt.cfg.source_seed);
    let mut rules = Maps {
        pkt,
        key,
        set,
        family: at.family,
        now,
    };
    if let Syn::Verdict(reason) = decide::decide_syn(&mut rules) {
        return pkt.verdict(reason);
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
    // What the cookie may offer besides the MSS, as `run` keeps it (none without it).
    let opts = SG_HOST.get(0).map_or(0, |h| h.cookie_opts);
    let reason = if !at.simple {
        R_COOKIE_FALLBACK
    } else if at.family == FAMILY_V4 {
        syn_cookie::<V4>(ctx, at, opts)
    } else {
        syn_cookie::<V6>(ctx, at, opts)
    };
    if reason & OPTIONS_LOST != 0 {
        pkt.note(N_COOKIE_OPTIONS_LOST);
    }
    pkt.verdict(reason & !OPTIONS_LOST)
}

/// Count an attack-mode SYN in `SG_SYN_SKETCH`; whether its source is quiet enough to
/// skip its bucket.
#[inline(always)]
pub(crate) fn quiet_source(pkt: &Packet, set: u32, family: u8, now: u64) -> bool {
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
pub(crate) fn nat_port(port: u16) -> bool {
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
pub(crate) fn to_local(ctx: &XdpContext, at: &Offsets) -> bool {
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

/// The maps [`decide::decide_syn`] asks, for one SYN.
struct Maps<'a> {
    pkt: &'a Packet<'a>,
    key: &'a SourceKey,
    set: u32,
    family: u8,
    now: u64,
}

impl SynRules for Maps<'_> {
    #[inline(always)]
    fn cookies_active(&self) -> bool {
        self.pkt.cookies_active()
    }

    /// In attack mode a quiet source's SYN skips its bucket (see `sources::sketch_count`).
    #[inline(always)]
    fn quiet_source(&mut self) -> bool {
        quiet_source(self.pkt, self.set, self.family, self.now)
    }

    #[inline(always)]
    fn meter(&mut self) -> usize {
        meter_syn(self.pkt, self.key, self.set, self.family, self.now)
    }

    /// The filter first: a forged flood's sources are almost never in it.
    #[inline(always)]
    fn verified(&mut self) -> bool {
        maybe_proven(self.set) && is_verified(self.key, self.now)
    }
}
