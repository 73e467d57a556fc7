//! Verdict reasons. Each packet increments exactly one of the `R_*` counters (its
//! verdict) and possibly some of the `N_*` notes.

/// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
pub const R_NON_IP: usize = 0;
/// A header was cut short (Ethernet, VLAN, IP or TCP): passed, the kernel discards it.
pub const R_TRUNCATED: usize = 1;
/// IPv4 with a header length below 20 bytes: passed, the kernel discards it.
pub const R_MALFORMED: usize = 2;
/// IPv6 with extension headers the program does not walk (fragment, ESP, AH,
/// mobility, HIP, shim6, or more than [`crate::V6_EXT_MAX`] in a row) before the
/// transport header: passed unparsed.
pub const R_IPV6_EXT: usize = 3;
/// Source matched an allowlist entry: passed unlimited.
pub const R_ALLOWED: usize = 4;
/// Source matched a manual block entry: dropped.
pub const R_BLOCKED: usize = 5;
/// Source matched an automatic ban: dropped.
pub const R_BANNED: usize = 6;
/// IP but not TCP (UDP, ICMP, ...): passed.
pub const R_NON_TCP: usize = 7;
/// A non-first IPv4 fragment (no TCP header to read): passed.
pub const R_FRAGMENT: usize = 8;
/// TCP without SYN (ACK, data, FIN, RST): passed.
pub const R_TCP_OTHER: usize = 9;
/// SYN together with FIN or RST: dropped as invalid.
pub const R_INVALID_FLAGS: usize = 10;
/// SYN+ACK (a reply to a connection this host opened): passed, not counted as a SYN.
pub const R_SYN_ACK: usize = 11;
/// SYN to a destination port outside `ports`: passed unlimited.
pub const R_SYN_UNPROTECTED: usize = 12;
/// SYN within its source's token bucket: passed.
pub const R_SYN_PASSED: usize = 13;
/// SYN over its source's token bucket: dropped (and the source banned).
pub const R_SYN_LIMITED: usize = 14;
/// SYN from a new source whose set in the sources table holds only sources spending
/// their bursts (see [`crate::sources`]): passed without a bucket.
pub const R_SYN_UNTRACKED: usize = 15;

/// Note: a ban was recorded.
pub const N_BANS: usize = 16;
/// Note: a ban could not be recorded because the rules table is full. The SYNs over the
/// limit are still dropped; only the ban of the source's other traffic is missing.
pub const N_BAN_TABLE_FULL: usize = 17;
/// Note: an event could not be queued because the ring buffer was full.
pub const N_EVENTS_LOST: usize = 18;
/// Note: an event was not sent because of the per-CPU event rate limit.
pub const N_EVENTS_SUPPRESSED: usize = 19;
/// Note: `mode = monitor` passed a packet that `enforce` would have dropped.
pub const N_MONITOR_PASSED: usize = 20;
/// Note: every TCP SYN (SYN set, ACK clear, valid flags) from a source that is not on
/// the allowlist, blocked or banned: the SYNs the rate limiter looks at.
pub const N_SYNS: usize = 21;
/// Note: a new source got a token bucket.
pub const N_SOURCES_NEW: usize = 22;
/// Answered in XDP with a SYN cookie SYN-ACK (attack mode): the SYN never reaches the
/// kernel's stack.
pub const R_COOKIE_SENT: usize = 23;
/// Attack mode, and no socket of this namespace listens on the SYN's destination:
/// passed to the kernel, which resets it, or forwards it when a NAT rule sends it on
/// (a container's published port): never dropped for lack of a host listener.
pub const R_COOKIE_NO_LISTENER: usize = 24;
/// Attack mode, from a verified source: passed to the kernel with all its options.
pub const R_SYN_VERIFIED: usize = 25;
/// Attack mode, but no cookie could be made (the kernel's `tcp_syncookies` not set
/// yet, a request for the same connection already queued, IP options): passed to the
/// kernel, which handles it as it would without synguard.
pub const R_COOKIE_FALLBACK: usize = 26;
/// Note: an ACK carried a valid cookie (or belonged to an established connection):
/// its source is now verified. Once per source becoming verified, however many of its
/// packets prove it at once on different CPUs.
pub const N_VERIFIED: usize = 27;
/// Note: an ACK from an unverified source carried no valid cookie, and a listener but no
/// connection has its tuple (dropped as [`R_ACK_NO_FLOW`] when it is for one of the
/// machine's addresses, else passed: the kernel answers it with a reset).
pub const N_COOKIE_ACK_INVALID: usize = 28;
/// Note: an interface entered attack mode.
pub const N_ATTACKS: usize = 29;
/// Note: a new source took the slot of a source whose bucket had refilled (see
/// [`crate::sources`]; no verdict changes).
pub const N_SOURCES_RECYCLED: usize = 30;
/// Note: a SYN over its source's limit from a source that proved it owns its address
/// (see [`crate::Proof`]): challenged with a SYN cookie, never banned, since a flood
/// carrying a proven address is most likely forged.
pub const N_CHALLENGED: usize = 31;
/// Attack mode, and the SYN is not for one of this machine's addresses (bridged or
/// routed traffic, a VM's or a container's own address): passed to the kernel
/// untouched. A cookie made here would be for a host listener the SYN is not for.
pub const R_SYN_NOT_LOCAL: usize = 32;
/// Note: an IPv6 TCP segment behind extension headers (hop-by-hop, routing,
/// destination options; up to [`crate::V6_EXT_MAX`]) that were walked to its TCP
/// header: its verdict is the same as without them (a SYN is metered, banned or
/// answered by the kernel's own cookies in attack mode).
pub const N_V6_EXT_WALKED: usize = 33;
/// Attack mode, and a NAT rule of this machine rewrites the SYN's destination port
/// (`SG_NAT_PORTS`: a Docker published port, a `redirect`, a NodePort): passed to the
/// kernel untouched. The listener the XDP program can look up is not the socket the
/// SYN reaches after NAT, so a cookie made here would be reset there; the kernel's own
/// cookies, made after NAT, protect it.
pub const R_SYN_NAT: usize = 34;
/// Attack mode: an ACK from an unverified source for one of the machine's addresses
/// (on a port no NAT rule rewrites) that belongs to no connection and carries no valid
/// cookie: an ACK flood's, which the kernel would answer with a reset. Dropped. Only
/// what nothing of the machine can own: on a host with source NAT an ACK without any
/// socket, or at a listener's port that NAT may hand out, is passed instead
/// ([`R_ACK_NO_SOCKET`], [`R_ACK_SNAT_PORT`]).
pub const R_ACK_NO_FLOW: usize = 35;
/// Attack mode: the same for an RST (which the kernel would ignore). Dropped.
pub const R_RST_NO_FLOW: usize = 36;
/// Note: attack mode, a SYN that was the first of its sketch counter in the counter's
/// window (see [`crate::sources::sketch_count`]): about one per distinct source per
/// 134 ms, where the sources table no longer sees the quiet ones. `report` counts a
/// forged flood's sources with it.
pub const N_SKETCH_NEW: usize = 37;
/// Note: the same, for IPv6 sources.
pub const N_SKETCH_NEW_V6: usize = 38;
/// Attack mode: an ACK or RST from an unverified source for one of the machine's
/// addresses, to a port from 512 up ([`crate::SNAT_LOW_PORT`]), with no socket at all for
/// its tuple, on a host that rewrites source addresses of its family (masquerade, SNAT:
/// `Config::snat`). Passed to the kernel: it may be a
/// reply to a connection the host's NAT made for a guest (a container, a VM, a pod),
/// which connection tracking owns and no socket of the host holds; if it is not, the
/// kernel resets it, as it would without synguard. (On a host without source NAT such
/// an ACK belongs to nothing: [`R_ACK_NO_FLOW`].)
pub const R_ACK_NO_SOCKET: usize = 39;
/// Attack mode: an ACK or RST that reached a listener of the machine without a valid
/// cookie or a connection, on a host with source NAT, to a port its NAT may hand out
/// (512 and up, see [`crate::SNAT_LOW_PORT`]): passed to the kernel, since a guest's
/// connection may have been given that port by the NAT and its replies look exactly so.
pub const R_ACK_SNAT_PORT: usize = 40;
/// Note: a SYN answered with a cookie that could not carry the window scaling or SACK
/// the client asked for, because it offered no TCP timestamps (Windows by default) or
/// the server's `tcp_timestamps` is off: the connection is made with the MSS alone.
pub const N_COOKIE_OPTIONS_LOST: usize = 41;

/// Number of counter slots.
pub const COUNT: usize = 42;

/// Whether a counter is a verdict reason (each packet increments exactly one).
pub const fn is_reason(i: usize) -> bool {
    i < 16
        || (i >= R_COOKIE_SENT && i <= R_COOKIE_FALLBACK)
        || i == R_SYN_NOT_LOCAL
        || (i >= R_SYN_NAT && i <= R_RST_NO_FLOW)
        || i == R_ACK_NO_SOCKET
        || i == R_ACK_SNAT_PORT
}

/// Every verdict reason.
pub const REASON_LIST: [usize; 26] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 23, 24, 25, 26, 32, 34, 35, 36, 39, 40,
];

/// Stable names, used by `status`, `--json` and metrics.
pub const NAMES: [&str; COUNT] = [
    "non_ip",
    "truncated",
    "malformed",
    "ipv6_ext",
    "allowed",
    "blocked",
    "banned",
    "non_tcp",
    "fragment",
    "tcp_other",
    "invalid_flags",
    "syn_ack",
    "syn_unprotected_port",
    "syn_passed",
    "syn_limited",
    "syn_untracked",
    "bans",
    "ban_table_full",
    "events_lost",
    "events_suppressed",
    "monitor_passed",
    "syns",
    "sources_new",
    "cookie_sent",
    "cookie_no_listener",
    "syn_verified",
    "cookie_fallback",
    "verified",
    "cookie_ack_invalid",
    "attacks",
    "sources_recycled",
    "challenged",
    "syn_not_local",
    "v6_ext_walked",
    "syn_nat",
    "ack_no_flow",
    "rst_no_flow",
    "sketch_new",
    "sketch_new_v6",
    "ack_no_socket",
    "ack_snat_port",
    "cookie_options_lost",
];

/// Whether a verdict reason is a drop (in `enforce` mode).
pub const fn is_drop(reason: usize) -> bool {
    matches!(
        reason,
        R_BLOCKED | R_BANNED | R_INVALID_FLAGS | R_SYN_LIMITED | R_ACK_NO_FLOW | R_RST_NO_FLOW
    )
}
