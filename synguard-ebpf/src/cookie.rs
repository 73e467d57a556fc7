//! The SYN cookie answered in XDP: the listener, the kernel's cookie, the SYN-ACK
//! written in place with its options, IPv4 and IPv6.

use crate::*;

pub(crate) const TCP_LISTEN: u32 = 10;
/// The TCP header of a cookie SYN-ACK with timestamps: 20 bytes and the options (see
/// [`synack`]).
pub(crate) const SYNACK_TCP_LEN: usize = 20 + synack::OPTIONS_LEN;
/// Without: 20 bytes and the MSS. A SYN without timestamps (a flood's, often with no
/// options at all) gets this one: it needs 4 bytes more at most, where the 40 bytes
/// would need 20, more than some drivers leave after a small frame (veth among them).
pub(crate) const SHORT_SYNACK_TCP_LEN: usize = 20 + synack::SHORT_OPTIONS_LEN;
pub(crate) const TCP_ECE: u8 = 0x40;
pub(crate) const TCP_CWR: u8 = 0x80;

/// Call `f` on the TCP header at `l4` in the packet, with its length (`doff * 4`, which
/// the cookie helpers require), or -1 for a header that is not there or shorter than 20
/// bytes. The helpers read packet memory, but the verifier checks a length against the
/// bounds its largest value needs (60 bytes, more than most SYNs have), so each length
/// has its own branch and bounds check; LLVM may join the calls, the verifier still walks
/// each path with its constant. This spares copying the header to the stack
/// (`bpf_xdp_load_bytes`): about 50 ns a cookie.
#[inline(always)]
pub(crate) fn in_place(ctx: &XdpContext, l4: usize, f: impl Fn(*mut tcphdr, u32) -> i64) -> i64 {
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
pub(crate) fn lookup_sock(
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
pub(crate) unsafe fn sum16<const N: usize>(p: *const u8, acc: u32) -> u32 {
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
pub(crate) fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The cookie SYN-ACK's headers in the resized frame, each pointer bounds-checked for
/// its own header (see [`resize_for_synack`]).
pub(crate) struct SynackFrame {
    /// The two MAC addresses (12 bytes).
    eth: *mut u8,
    /// The IP header (`H`).
    ip: *mut u8,
    /// The TCP header (`TCP` bytes).
    tcp: *mut u8,
}

/// Resize the frame to end right after a `TCP`-byte TCP header at `l4`, with an IP
/// header `H` at `l3`, and return its headers. Each is bounds-checked through
/// [`ptr_at`] itself, for a constant size from its own offset: verifiers before 6.x (6.1
/// among them) only credit a bounds check to the pointer it was made on, so a check of
/// the TCP header's end on the frame's start would not cover the accesses at `l3`.
#[inline(always)]
pub(crate) fn resize_for_synack<H, const TCP: usize>(
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
        ip: ptr_at::<H>(ctx, l3)? as *mut u8,
        tcp: ptr_at::<[u8; TCP]>(ctx, l4)? as *mut u8,
    })
}

/// Swap `N` bytes at `a` with `N` bytes at `b`, through registers (4 bytes at a time, or
/// 2 when `N` is not a multiple of 4).
///
/// # Safety
/// Both ranges valid for `N` bytes, `N` even, and not overlapping.
#[inline(always)]
pub(crate) unsafe fn swap_bytes<const N: usize>(a: *mut u8, b: *mut u8) {
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
pub(crate) unsafe fn write_synack_tcp<const TCP: usize>(
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
pub(crate) fn syn_options(ctx: &XdpContext, l4: usize) -> SynOptions {
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
        8 => read!(32, 3),
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
pub(crate) fn synack_options_for(
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
pub(crate) fn gen_cookie(
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

/// What the cookie answer and the ACK check need to know of an IP version: [`V4`] and
/// [`V6`]. Each is written once, generic over it, and compiled once per version, each
/// instance a function of its own with constant sizes and offsets, as the verifier needs.
pub(crate) trait Ip {
    /// The header, bounds-checked whole.
    type Hdr;
    const LEN: usize;
    /// Where the source and destination addresses start in the header: the socket
    /// tuple's first part, the same bytes in the same order.
    const ADDRS: usize;
    /// Both addresses' length; the ports follow them in the tuple.
    const ADDRS_LEN: usize;
    /// The tuple's size for this version.
    const TUPLE: usize;
    /// The IP and TCP headers' bytes under the MTU (the MSS's overhead).
    const OVERHEAD: u32;

    /// Whether the header's ECN field is set (an ECN-capable packet).
    ///
    /// # Safety
    /// `ip` valid for the header.
    unsafe fn ecn_capable(ip: *const u8) -> bool;

    /// Rewrite the SYN's IP header into the SYN-ACK's, for a `tcp_len`-byte TCP header
    /// (addresses swapped, checksummed); the pseudo-header's sum.
    ///
    /// # Safety
    /// `ip` valid for the header.
    unsafe fn write_reply(ip: *mut u8, tcp_len: usize) -> u32;
}

pub(crate) struct V4;
pub(crate) struct V6;

impl Ip for V4 {
    type Hdr = Ipv4Hdr;
    const LEN: usize = Ipv4Hdr::LEN;
    const ADDRS: usize = 12;
    const ADDRS_LEN: usize = 8;
    const TUPLE: usize = mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>();
    const OVERHEAD: u32 = 40;

    /// The ECN field is the low two bits of the TOS byte.
    #[inline(always)]
    unsafe fn ecn_capable(ip: *const u8) -> bool {
        // SAFETY: the caller's.
        unsafe { *ip.add(1) & 3 != 0 }
    }

    #[inline(always)]
    unsafe fn write_reply(ip: *mut u8, tcp_len: usize) -> u32 {
        // SAFETY: the caller's.
        unsafe {
            *ip = 0x45;
            *ip.add(1) = 0;
            (ip.add(2) as *mut u16).write_unaligned(((Ipv4Hdr::LEN + tcp_len) as u16).to_be());
            (ip.add(4) as *mut u32).write_unaligned(0x4000u32.to_be()); // id 0, don't fragment
            *ip.add(8) = 64;
            *ip.add(9) = IPPROTO_TCP;
            (ip.add(10) as *mut u16).write_unaligned(0);
            swap_bytes::<4>(ip.add(12), ip.add(16));
            (ip.add(10) as *mut u16).write_unaligned(fold(sum16::<20>(ip, 0)).to_be());
            sum16::<8>(ip.add(12), 0)
        }
    }
}

impl Ip for V6 {
    type Hdr = Ipv6Hdr;
    const LEN: usize = Ipv6Hdr::LEN;
    const ADDRS: usize = 8;
    const ADDRS_LEN: usize = 32;
    const TUPLE: usize = mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>();
    const OVERHEAD: u32 = 60;

    /// The ECN field is the low two bits of the traffic class, bits 4-5 of the second
    /// byte.
    #[inline(always)]
    unsafe fn ecn_capable(ip: *const u8) -> bool {
        // SAFETY: the caller's.
        unsafe { (*ip.add(1) >> 4) & 3 != 0 }
    }

    #[inline(always)]
    unsafe fn write_reply(ip: *mut u8, tcp_len: usize) -> u32 {
        // SAFETY: the caller's.
        unsafe {
            (ip as *mut u32).write_unaligned(0x6000_0000u32.to_be());
            (ip.add(4) as *mut u16).write_unaligned((tcp_len as u16).to_be());
            *ip.add(6) = IPPROTO_TCP;
            *ip.add(7) = 64;
            swap_bytes::<16>(ip.add(8), ip.add(24));
            sum16::<32>(ip.add(8), 0)
        }
    }
}

/// The socket tuple of the segment whose IP header is at `ip` and TCP header at `th`:
/// its addresses and ports, copied as they sit in the packet.
///
/// # Safety
/// `ip` valid for the IP header, `th` for 4 bytes.
#[inline(always)]
pub(crate) unsafe fn tuple_of<F: Ip>(ip: *const u8, th: *const u8) -> MaybeUninit<bpf_sock_tuple> {
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: the caller's; the tuple holds at least `ADDRS_LEN + 4` bytes.
    unsafe {
        let t = tuple.as_mut_ptr() as *mut u8;
        core::ptr::copy_nonoverlapping(ip.add(F::ADDRS), t, F::ADDRS_LEN);
        core::ptr::copy_nonoverlapping(th, t.add(F::ADDRS_LEN), 4);
    }
    tuple
}

/// Or'ed into [`syn_cookie`]'s `R_COOKIE_SENT` when the answer could not carry the
/// window scaling or SACK the client asked for (see `SynackOptions::lost`).
pub(crate) const OPTIONS_LOST: usize = 1 << 16;

/// Answer a SYN with a cookie SYN-ACK made by the kernel for its listener, built in
/// place and sent back with XDP_TX. Returns the verdict, with [`OPTIONS_LOST`] or'ed in
/// when the answer is made with the MSS alone for a client that asked for more.
#[inline(never)]
pub(crate) fn syn_cookie<F: Ip>(ctx: &XdpContext, at: &Offsets, cookie_opts: u32) -> usize {
    let (l3, l4) = (at.l3, at.l4);
    let (Some(ip), Some(th)) = (ptr_at::<F::Hdr>(ctx, l3), ptr_at::<[u8; 4]>(ctx, l4)) else {
        return R_COOKIE_FALLBACK;
    };
    // SAFETY: bounds checked.
    let mut tuple = unsafe { tuple_of::<F>(ip as *const u8, th as *const u8) };
    let cookie = match gen_cookie(
        ctx,
        &mut tuple,
        F::TUPLE,
        ip as *mut c_void,
        F::LEN as u32,
        l4,
    ) {
        Ok(c) => c,
        Err(reason) => return reason,
    };
    // SAFETY: bounds checked.
    let ecn_capable = unsafe { F::ecn_capable(ip as *const u8) };
    let o = synack_options_for(ctx, l4, cookie_opts, ecn_capable, F::OVERHEAD);
    if o.ts.is_some() {
        synack::<F, SYNACK_TCP_LEN>(ctx, l3, l4, cookie, &o)
    } else {
        let reason = synack::<F, SHORT_SYNACK_TCP_LEN>(ctx, l3, l4, cookie, &o);
        if reason == R_COOKIE_SENT && o.lost {
            reason | OPTIONS_LOST
        } else {
            reason
        }
    }
}

/// Turn the SYN into the cookie SYN-ACK, with a `TCP`-byte TCP header.
#[inline(always)]
pub(crate) fn synack<F: Ip, const TCP: usize>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    cookie: u32,
    o: &SynackOptions,
) -> usize {
    let Some(f) = resize_for_synack::<F::Hdr, TCP>(ctx, l3, l4) else {
        return R_COOKIE_FALLBACK;
    };
    // SAFETY: `resize_for_synack` checked each header's bounds.
    unsafe {
        swap_bytes::<6>(f.eth, f.eth.add(6));
        let pseudo = F::write_reply(f.ip, TCP);
        write_synack_tcp::<TCP>(f.tcp, cookie, o, pseudo);
    }
    R_COOKIE_SENT
}
