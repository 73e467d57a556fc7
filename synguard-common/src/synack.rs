//! The TCP options of a cookie SYN-ACK, the way the kernel's own SYN cookies carry them.
//!
//! A SYN cookie (the initial sequence number) only has room for the MSS. The kernel keeps
//! the rest of what the client asked for, window scaling, SACK and ECN, in the low six
//! bits of the timestamp it sends in the SYN-ACK, which the client echoes in the ACK:
//!
//! ```text
//! | 31 ... 6  |  5  |  4   | 3 2 1 0 |
//! | time (ms) | ECN | SACK | WScale  |   (WScale 0xf: the SYN had no window scale)
//! ```
//!
//! `cookie_v4_check`/`cookie_v6_check` decode it when the ACK comes, after taking off the
//! per-connection timestamp offset (`secure_tcp_ts_off`), which is 0 only while
//! `net.ipv4.tcp_timestamps` is 2. So the XDP program offers these options only while
//! userspace has put 2 there ([`TIMESTAMPS`] in [`CookieOpts`]); otherwise it answers
//! with the MSS alone, as before (the connection then lives without window scaling and
//! SACK, as it would with the kernel's own cookies and timestamps off).
//!
//! Without timestamps nothing else can be carried: a SYN without the timestamp option (a
//! Windows client's, by default) gets the MSS only, the kernel's own behaviour.

/// The option bits' meaning in the timestamp (the kernel's `TS_OPT_*`).
pub const TS_WSCALE_MASK: u32 = 0xf;
pub const TS_SACK: u32 = 1 << 4;
pub const TS_ECN: u32 = 1 << 5;
/// Bits of the timestamp given to the options.
pub const TS_BITS: u32 = 6;
/// The largest window scale TCP allows (RFC 7323; the kernel's `TCP_MAX_WSCALE`).
pub const MAX_WSCALE: u32 = 14;

/// `Config::cookie_opts` bits: what the kernel's settings let a cookie connection use.
/// `net.ipv4.tcp_timestamps` is 2 (timestamps without random offsets): the kernel decodes
/// options from the echoed timestamp as they were encoded.
pub const TIMESTAMPS: u32 = 1;
/// `net.ipv4.tcp_sack` is on.
pub const SACK: u32 = 1 << 1;
/// `net.ipv4.tcp_window_scaling` is on.
pub const WSCALE: u32 = 1 << 2;
/// `net.ipv4.tcp_ecn` is not 0 (the server accepts ECN a client asks for).
pub const ECN: u32 = 1 << 3;
/// The server's own window scale, in bits 8..12.
pub const SERVER_WSCALE_SHIFT: u32 = 8;

/// The `cookie_opts` word for the given kernel settings.
pub const fn cookie_opts(
    timestamps: bool,
    sack: bool,
    wscale: bool,
    ecn: bool,
    server_wscale: u32,
) -> u32 {
    let mut o = 0;
    if timestamps {
        o |= TIMESTAMPS;
    }
    if sack {
        o |= SACK;
    }
    if wscale {
        o |= WSCALE;
    }
    if ecn {
        o |= ECN;
    }
    let ws = if server_wscale > MAX_WSCALE {
        MAX_WSCALE
    } else {
        server_wscale
    };
    o | ws << SERVER_WSCALE_SHIFT
}

/// The window scale the kernel gives a connection it accepts (`tcp_select_initial_window`
/// with `wscale_ok`): from the largest receive space it may grow to, the larger of
/// `net.ipv4.tcp_rmem`'s maximum and `net.core.rmem_max`, so a 16-bit window can span it.
/// (A listener with its own `SO_RCVBUF` or `TCP_WINDOW_CLAMP` gets a smaller one from the
/// kernel; see the README.)
pub const fn server_wscale(tcp_rmem_max: u32, rmem_max: u32) -> u32 {
    let space = if tcp_rmem_max > rmem_max {
        tcp_rmem_max
    } else {
        rmem_max
    };
    if space == 0 {
        return 0;
    }
    let log = 31 - space.leading_zeros();
    if log <= 15 {
        0
    } else if log - 15 > MAX_WSCALE {
        MAX_WSCALE
    } else {
        log - 15
    }
}

/// [`SynOptions::wscale`] of a SYN without the window scale option.
pub const NO_WSCALE: u32 = 0x100;

/// What a SYN offered in its options (as far as the XDP program read them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynOptions {
    /// The MSS option's value, or 0 without one.
    pub mss: u32,
    /// The window scale option's shift (any byte), or [`NO_WSCALE`] without one.
    pub wscale: u32,
    pub sack_perm: bool,
    /// The timestamp option's TSval, if there was one.
    pub tsval: Option<u32>,
    /// The SYN asked for ECN (ECE and CWR set) and its IP header is not ECN-capable.
    pub ecn: bool,
}

impl SynOptions {
    pub const NONE: Self = Self {
        mss: 0,
        wscale: NO_WSCALE,
        sack_perm: false,
        tsval: None,
        ecn: false,
    };
}

/// TCP option words (big-endian) that mark the layouts [`syn_options`] knows.
const SACK_TS: u32 = 0x0402_080a;
const NOP_NOP_TS: u32 = 0x0101_080a;
const NOP_WS: u32 = 0x0001_0303;
/// SACK permitted, then two end-of-options bytes (macOS's last word).
const SACK_EOL: u32 = 0x0402_0000;
/// Two NOPs and SACK permitted (Windows's last word).
const NOP_NOP_SACK: u32 = 0x0101_0402;

/// What a SYN offers, from its data offset (`doff`, in words) and the first six words of
/// its options (big-endian; zero past the header).
///
/// Not a general walk of the options: the layouts of the stacks that send timestamps,
/// the only ones whose other options a cookie can keep, are recognised word by word. A
/// walk of up to 40 bytes of options branches on every byte, and the verifier of older
/// kernels (5.15) gives up on the program long before it has followed every path. Known:
///
/// - Linux and Android: MSS, SACK permitted (or two NOPs), timestamps, then NOP and
///   window scale (20 bytes), or no window scale (16 bytes).
/// - FreeBSD: MSS, NOP, window scale, SACK permitted (or two NOPs), timestamps (20).
/// - macOS and iOS: MSS, NOP, window scale, NOP, NOP, timestamps, SACK permitted, two
///   end-of-options bytes (24).
/// - Windows: MSS, NOP, window scale, NOP, NOP, SACK permitted (12), no timestamps: read
///   only to count what its cookie connection loses (see [`SynackOptions::lost`]).
///
/// Anything else gives the MSS alone when it comes first (as it does for every stack
/// seen), or nothing: the cookie SYN-ACK then offers the MSS only, which is what the
/// kernel's own cookies give a client without timestamps.
pub fn syn_options(doff: u32, w: &[u32; 6]) -> SynOptions {
    let mut o = SynOptions::NONE;
    if doff < 6 || w[0] >> 16 != 0x0204 {
        return o;
    }
    o.mss = w[0] & 0xffff;
    if (doff == 9 || doff == 10) && (w[1] == SACK_TS || w[1] == NOP_NOP_TS) {
        // Linux: timestamps at byte 6; with window scale, it ends the 20 bytes.
        o.sack_perm = w[1] == SACK_TS;
        o.tsval = Some(w[2]);
        if doff == 10 {
            if w[4] >> 8 != NOP_WS {
                return SynOptions {
                    mss: o.mss,
                    ..SynOptions::NONE
                };
            }
            o.wscale = w[4] & 0xff;
        }
    } else if (doff == 10 || doff == 11) && w[1] >> 8 == NOP_WS {
        // BSD: window scale at byte 5, timestamps at 10.
        if doff == 10 && (w[2] == SACK_TS || w[2] == NOP_NOP_TS) {
            o.sack_perm = w[2] == SACK_TS;
        } else if doff == 11 && w[2] == NOP_NOP_TS && w[5] == SACK_EOL {
            o.sack_perm = true;
        } else {
            return o;
        }
        o.wscale = w[1] & 0xff;
        o.tsval = Some(w[3]);
    } else if doff == 8 && w[1] >> 8 == NOP_WS && w[2] == NOP_NOP_SACK {
        // Windows.
        o.wscale = w[1] & 0xff;
        o.sack_perm = true;
    }
    o
}

/// What the cookie SYN-ACK offers: each option only if the client asked for it, the
/// kernel allows it, and timestamps can carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynackOptions {
    /// The MSS to advertise: the client's, at most the interface's (`route_mss`).
    pub mss: u32,
    /// (TSval, TSecr) of the timestamp option, or `None`: then nothing but the MSS.
    pub ts: Option<(u32, u32)>,
    pub sack_perm: bool,
    /// The server's window scale, if window scaling is on.
    pub wscale: Option<u32>,
    /// Set ECE (the server agrees to ECN).
    pub ecn: bool,
    /// The client asked for window scaling or SACK, and this answer cannot carry them
    /// (no timestamps to hold them: the client sent none, as Windows does by default,
    /// or the server's settings allow none).
    pub lost: bool,
}

/// Decide the cookie SYN-ACK's options for a SYN that offered `syn`, under the kernel
/// settings in `opts` (a [`cookie_opts`] word), at `now_ms` (the kernel's TCP clock in
/// ms, `CLOCK_MONOTONIC`: the TSval the server sends later counts from it and must never
/// be below the one here, or the client's PAWS check drops the server's segments), for an
/// interface whose MSS is `route_mss`.
#[inline(always)]
pub fn synack_options(syn: &SynOptions, opts: u32, now_ms: u32, route_mss: u32) -> SynackOptions {
    let mss = if syn.mss != 0 && syn.mss < route_mss {
        syn.mss
    } else {
        route_mss
    };
    let tsecr = match syn.tsval {
        Some(v) if opts & TIMESTAMPS != 0 => v,
        _ => {
            return SynackOptions {
                mss,
                ts: None,
                sack_perm: false,
                wscale: None,
                ecn: false,
                lost: syn.wscale != NO_WSCALE || syn.sack_perm,
            };
        }
    };
    let ws_ok = opts & WSCALE != 0 && syn.wscale != NO_WSCALE;
    let sack = opts & SACK != 0 && syn.sack_perm;
    let ecn = opts & ECN != 0 && syn.ecn;
    let mut bits = if ws_ok {
        // The kernel takes a larger shift as 14 (and says so in its log).
        if syn.wscale > MAX_WSCALE {
            MAX_WSCALE
        } else {
            syn.wscale
        }
    } else {
        TS_WSCALE_MASK
    };
    if sack {
        bits |= TS_SACK;
    }
    if ecn {
        bits |= TS_ECN;
    }
    // The kernel's `cookie_init_timestamp`: the time with its low bits replaced, never
    // later than the time itself.
    let mut tsval = (now_ms >> TS_BITS << TS_BITS) | bits;
    if tsval > now_ms {
        tsval = tsval.wrapping_sub(1 << TS_BITS);
    }
    SynackOptions {
        mss,
        ts: Some((tsval, tsecr)),
        sack_perm: sack,
        wscale: if ws_ok {
            Some((opts >> SERVER_WSCALE_SHIFT) & 0xf)
        } else {
            None
        },
        ecn,
        lost: false,
    }
}

/// The options the kernel reads back from the echoed TSecr (`cookie_timestamp_decode`,
/// `cookie_ecn_ok`): (client window scale or `None`, SACK, ECN). For tests and `analyze`.
pub const fn decode_tsecr(tsecr: u32) -> (Option<u32>, bool, bool) {
    let ws = tsecr & TS_WSCALE_MASK;
    (
        if ws == TS_WSCALE_MASK { None } else { Some(ws) },
        tsecr & TS_SACK != 0,
        tsecr & TS_ECN != 0,
    )
}

/// Bytes of TCP options in a cookie SYN-ACK with timestamps: MSS (4), SACK permitted or
/// two NOPs (2), timestamps (10), NOP and window scale or four NOPs (4): the kernel's own
/// order, one length so the program has few frame sizes to check.
pub const OPTIONS_LEN: usize = 20;
/// Without timestamps nothing but the MSS can be kept: its 4 bytes alone (the first of
/// [`option_words`]).
pub const SHORT_OPTIONS_LEN: usize = 4;

/// The option bytes of a cookie SYN-ACK, as five big-endian words.
#[inline(always)]
pub fn option_words(o: &SynackOptions) -> [u32; 5] {
    const NOPS: u32 = 0x0101_0101;
    let mss = 0x0204_0000 | (o.mss & 0xffff);
    let (w1, tsval, tsecr) = match o.ts {
        Some((v, e)) => (
            if o.sack_perm {
                0x0402_080a
            } else {
                0x0101_080a
            },
            v,
            e,
        ),
        None => (NOPS, NOPS, NOPS),
    };
    let ws = match o.wscale {
        Some(s) => 0x0103_0300 | s,
        None => NOPS,
    };
    [mss, w1, tsval, tsecr, ws]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_SYN: SynOptions = SynOptions {
        mss: 1460,
        wscale: 7,
        sack_perm: true,
        tsval: Some(0x1234_5678),
        ecn: false,
    };
    const ALL: u32 = cookie_opts(true, true, true, true, 7);

    #[test]
    fn the_server_window_scale_is_the_kernels() {
        // Debian 12's defaults: tcp_rmem max 6 MiB, rmem_max 208 KiB: 7.
        assert_eq!(server_wscale(6 * 1024 * 1024, 212_992), 7);
        assert_eq!(server_wscale(4 * 1024 * 1024, 212_992), 7);
        assert_eq!(server_wscale(4 * 1024 * 1024 - 1, 212_992), 6);
        assert_eq!(server_wscale(65_535, 65_535), 0);
        assert_eq!(server_wscale(131_072, 0), 2);
        assert_eq!(server_wscale(0, 0), 0);
        assert_eq!(server_wscale(u32::MAX, 0), 14);
        assert_eq!(server_wscale(6 << 20, 1 << 28), 13);
    }

    #[test]
    fn options_travel_in_the_low_bits_of_a_timestamp_never_ahead_of_the_clock() {
        for now in [64_000u32, 64_063, 64_100, 1, 0x7fff_ffff, u32::MAX] {
            let a = synack_options(&LINUX_SYN, ALL, now, 1460);
            let (tsval, tsecr) = a.ts.expect("timestamps");
            assert_eq!(tsecr, 0x1234_5678, "the client's TSval echoed");
            assert!(tsval <= now || now < 64, "{tsval} <= {now}");
            assert!(now.wrapping_sub(tsval) < 128, "close to the clock");
            assert_eq!(decode_tsecr(tsval), (Some(7), true, false));
            assert_eq!(a.wscale, Some(7));
            assert!(a.sack_perm);
        }
    }

    #[test]
    fn each_option_only_if_asked_allowed_and_carried() {
        // No timestamp in the SYN: MSS only.
        let win = SynOptions {
            tsval: None,
            ..LINUX_SYN
        };
        let a = synack_options(&win, ALL, 100_000, 1460);
        assert_eq!(
            (a.ts, a.sack_perm, a.wscale, a.ecn),
            (None, false, None, false)
        );
        // Timestamps not 2 here: MSS only.
        let a = synack_options(&LINUX_SYN, ALL & !TIMESTAMPS, 100_000, 1460);
        assert_eq!((a.ts, a.sack_perm, a.wscale), (None, false, None));
        // SACK off in the kernel.
        let a = synack_options(&LINUX_SYN, ALL & !SACK, 100_000, 1460);
        assert!(!a.sack_perm);
        assert_eq!(decode_tsecr(a.ts.unwrap().0), (Some(7), false, false));
        // No window scale asked.
        let s = SynOptions {
            wscale: NO_WSCALE,
            ..LINUX_SYN
        };
        let a = synack_options(&s, ALL, 100_000, 1460);
        assert_eq!(a.wscale, None);
        assert_eq!(decode_tsecr(a.ts.unwrap().0), (None, true, false));
        // A shift beyond 14 counts as 14.
        let s = SynOptions {
            wscale: 15,
            ..LINUX_SYN
        };
        let a = synack_options(&s, ALL, 100_000, 1460);
        assert_eq!(decode_tsecr(a.ts.unwrap().0).0, Some(14));
        // ECN asked and allowed.
        let s = SynOptions {
            ecn: true,
            ..LINUX_SYN
        };
        let a = synack_options(&s, ALL, 100_000, 1460);
        assert!(a.ecn);
        assert_eq!(decode_tsecr(a.ts.unwrap().0), (Some(7), true, true));
        let a = synack_options(&s, ALL & !ECN, 100_000, 1460);
        assert!(!a.ecn);
    }

    #[test]
    fn a_cookie_without_timestamps_says_what_the_client_lost() {
        // Windows by default: MSS, window scale, SACK permitted, no timestamps.
        let windows = SynOptions {
            tsval: None,
            ..LINUX_SYN
        };
        assert!(synack_options(&windows, ALL, 100_000, 1460).lost);
        // The same SYN while the server's timestamps are not 2: lost as well.
        assert!(synack_options(&LINUX_SYN, ALL & !TIMESTAMPS, 100_000, 1460).lost);
        // Carried in the timestamp: nothing lost.
        assert!(!synack_options(&LINUX_SYN, ALL, 100_000, 1460).lost);
        // A flood's bare SYN asked for nothing, so it loses nothing.
        assert!(!synack_options(&SynOptions::NONE, ALL, 100_000, 1460).lost);
        // SACK alone is worth counting too.
        let sack_only = SynOptions {
            wscale: NO_WSCALE,
            ..windows
        };
        assert!(synack_options(&sack_only, ALL, 100_000, 1460).lost);
    }

    #[test]
    fn the_mss_is_the_smaller_of_the_clients_and_the_interfaces() {
        let s = |mss| SynOptions { mss, ..LINUX_SYN };
        assert_eq!(synack_options(&s(1460), ALL, 1, 1460).mss, 1460);
        assert_eq!(synack_options(&s(1400), ALL, 1, 1460).mss, 1400);
        assert_eq!(synack_options(&s(8960), ALL, 1, 1460).mss, 1460);
        assert_eq!(synack_options(&s(0), ALL, 1, 1440).mss, 1440);
    }

    /// `doff` and the option words of a SYN with these option bytes.
    fn words(opts: &[u8]) -> (u32, [u32; 6]) {
        assert!(opts.len().is_multiple_of(4) && opts.len() <= 40);
        let mut w = [0u32; 6];
        for (i, c) in opts.chunks(4).take(6).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        (5 + opts.len() as u32 / 4, w)
    }

    fn parse(opts: &[u8]) -> SynOptions {
        let (doff, w) = words(opts);
        syn_options(doff, &w)
    }

    #[test]
    fn the_layouts_of_the_stacks_that_send_timestamps_are_read() {
        let t = [0x12, 0x34, 0x56, 0x78];
        let linux = [
            2, 4, 5, 180, 4, 2, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let want = SynOptions {
            mss: 1460,
            wscale: 7,
            sack_perm: true,
            tsval: Some(0x1234_5678),
            ecn: false,
        };
        assert_eq!(parse(&linux), want);
        // Linux without SACK; without window scale.
        let mut no_sack = linux;
        no_sack[4..6].copy_from_slice(&[1, 1]);
        assert_eq!(
            parse(&no_sack),
            SynOptions {
                sack_perm: false,
                ..want
            }
        );
        assert_eq!(
            parse(&linux[..16]),
            SynOptions {
                wscale: NO_WSCALE,
                ..want
            }
        );
        // FreeBSD.
        let freebsd = [
            2, 4, 5, 180, 1, 3, 3, 6, 4, 2, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0,
        ];
        assert_eq!(parse(&freebsd), SynOptions { wscale: 6, ..want });
        // macOS and iOS.
        let macos = [
            2, 4, 5, 180, 1, 3, 3, 6, 1, 1, 8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, 4, 2, 0, 0,
        ];
        assert_eq!(parse(&macos), SynOptions { wscale: 6, ..want });
        // Windows: no timestamps, so no cookie keeps its window scale and SACK.
        let windows = [2, 4, 5, 180, 1, 3, 3, 8, 1, 1, 4, 2];
        assert_eq!(
            parse(&windows),
            SynOptions {
                mss: 1460,
                wscale: 8,
                sack_perm: true,
                ..SynOptions::NONE
            }
        );
        let o = synack_options(&parse(&windows), ALL, 100_000, 1460);
        assert_eq!(
            (o.ts, o.wscale, o.sack_perm, o.lost),
            (None, None, false, true)
        );
        // Just the MSS; nothing.
        assert_eq!(parse(&[2, 4, 5, 120]).mss, 1400);
        assert_eq!(parse(&[]), SynOptions::NONE);
    }

    #[test]
    fn other_layouts_offer_the_mss_at_most() {
        let mss_only = |opts: &[u8]| {
            let o = parse(opts);
            assert_eq!(
                (o.wscale, o.sack_perm, o.tsval),
                (NO_WSCALE, false, None),
                "{opts:?}"
            );
            o.mss
        };
        // Linux's layout with something else where the window scale should be.
        assert_eq!(
            mss_only(&[
                2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1
            ]),
            1460
        );
        // Timestamps first: not a known layout.
        assert_eq!(
            mss_only(&[8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 2, 4, 5, 180]),
            0
        );
        // A BSD layout cut short, or with the wrong words.
        assert_eq!(
            mss_only(&[
                2, 4, 5, 180, 1, 3, 3, 6, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1
            ]),
            1460
        );
        assert_eq!(
            mss_only(&[
                2, 4, 5, 180, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1
            ]),
            1460
        );
        // Linux's 20 bytes behind a longer header (another option added): the MSS only.
        let (_, w) = words(&[
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        let o = syn_options(12, &w);
        assert_eq!((o.mss, o.tsval), (1460, None));
    }

    #[test]
    fn the_option_bytes_are_the_kernels_layout() {
        let a = synack_options(&LINUX_SYN, ALL, 6400, 1460);
        let bytes: [u8; OPTIONS_LEN] = {
            let mut b = [0; OPTIONS_LEN];
            for (i, w) in option_words(&a).iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            b
        };
        let tsval = (6400u32 | 7 | TS_SACK).wrapping_sub(64).to_be_bytes();
        let mut want = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 1, 3, 3, 7,
        ];
        want[8..12].copy_from_slice(&tsval);
        assert_eq!(bytes, want);
        let none = option_words(&synack_options(&SynOptions::NONE, ALL, 6400, 1460));
        assert_eq!(
            none,
            [
                0x0204_05b4,
                0x0101_0101,
                0x0101_0101,
                0x0101_0101,
                0x0101_0101
            ]
        );
    }
}
