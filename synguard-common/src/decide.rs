//! The SYN decision rules, written once: the attack detector's rate window and its
//! hysteresis (attack mode on and off), a source's bucket step and what a source over
//! its limit gets, and the order in which a SYN to a protected port is decided. The XDP program runs them on live packets; `synguard
//! analyze` replays a capture through the same functions, so its "what the agent would
//! have done" can only differ from the kernel where a table or a clock does (the
//! differences are listed in `analyze`'s engine: one pool of buckets instead of two slots
//! per set, one CPU, no sketch).
//!
//! Each function takes what it looks up as a closure or a [`SynRules`] method, called
//! only where the order needs it: the kernel reads a map only when the answer matters.

use crate::{
    ATTACK_EARLY_NS, ATTACK_WINDOW_NS, Bucket, COOKIES_ALWAYS, COOKIES_AUTO, IfState, gcra, stat,
};

/// Count a SYN in a rate window (`start_ns`, `syns`: each CPU's in the kernel); when the
/// window closes, its SYN rate per second, for [`attack_step`].
///
/// A window closes at its end ([`ATTACK_WINDOW_NS`]), or early once it alone has seen
/// more SYNs than `enter` (attack-syn-rate) allows for a whole window and it is at least
/// [`ATTACK_EARLY_NS`] old, while attack mode is off (`attack_off`, asked only then):
/// attack mode starts within 10 ms of a flood instead of up to a window later. A window
/// ten times too old (an idle CPU) reports 0; one shorter than a coarse-clock tick counts
/// as a millisecond. Time that seems to run backwards does not close it.
#[inline(always)]
pub fn window_syn(
    start_ns: &mut u64,
    syns: &mut u64,
    now: u64,
    enter: u64,
    attack_off: impl FnOnce() -> bool,
) -> Option<u64> {
    *syns += 1;
    let age = now.saturating_sub(*start_ns);
    let early = age >= ATTACK_EARLY_NS
        && *syns * (1_000_000_000 / ATTACK_WINDOW_NS) >= enter
        && attack_off();
    if age < ATTACK_WINDOW_NS && !early {
        return None;
    }
    let rate = if age > 10 * ATTACK_WINDOW_NS {
        0
    } else {
        *syns * 1_000_000_000 / age.max(1_000_000)
    };
    *start_ns = now;
    *syns = 0;
    Some(rate)
}

/// One SYN of a source with a bucket: counted (see [`Bucket::count_syn`]), and whether it
/// conforms to the bucket (takes a token); a SYN over the limit is counted in `limited`.
#[inline(always)]
pub fn bucket_syn(b: &mut Bucket, now: u64, interval_ns: u64, tolerance_ns: u64) -> bool {
    b.count_syn(now);
    match gcra::conform(b.tat_ns, now, interval_ns, tolerance_ns) {
        Some(tat) => {
            b.tat_ns = tat;
            true
        }
        None => {
            b.limited += 1;
            false
        }
    }
}

/// What a source over its limit gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverLimit {
    /// A proven source (it completed a handshake): a flood in its name is most likely
    /// forged, so it is challenged with SYN cookies (attack mode starts), never banned.
    Challenge,
    /// Banned for `ban-for`; the SYN is dropped.
    Ban,
    /// `ban-for` is 0: the SYN is dropped, no ban.
    Drop,
}

/// See [`OverLimit`]. `proven` is asked only here: the kernel looks a source's proof up
/// only once it is over its limit.
#[inline(always)]
pub fn over_limit(proven: impl FnOnce() -> bool, ban_ns: u64) -> OverLimit {
    if proven() {
        OverLimit::Challenge
    } else if ban_ns != 0 {
        OverLimit::Ban
    } else {
        OverLimit::Drop
    }
}

/// Whether unverified SYNs are answered with cookies: `syn-cookies` (`COOKIES_*`) and
/// whether attack mode is on (asked only for `auto`).
#[inline(always)]
pub fn cookies_active(syn_cookies: u32, attack_on: impl FnOnce() -> bool) -> bool {
    match syn_cookies {
        COOKIES_ALWAYS => true,
        COOKIES_AUTO => attack_on(),
        _ => false,
    }
}

/// Not a counter: [`SynRules::meter`]'s answer for a SYN over the limit of a proven
/// source, to be challenged.
pub const CHALLENGED: usize = usize::MAX - 1;

/// What [`decide_syn`] asks of the one deciding (the kernel's maps, or `analyze`'s
/// model of them), each at most once and only when the order needs it.
pub trait SynRules {
    /// Whether unverified SYNs are answered with cookies now ([`cookies_active`]).
    fn cookies_active(&self) -> bool;
    /// In attack mode: count the SYN in the sketch, and whether its source is quiet
    /// enough to skip its bucket.
    fn quiet_source(&mut self) -> bool;
    /// The source's bucket: `R_SYN_PASSED`, `R_SYN_UNTRACKED` (no room to track it),
    /// `R_SYN_LIMITED` (over the limit, unproven: banned, see [`over_limit`]) or
    /// [`CHALLENGED`].
    fn meter(&mut self) -> usize;
    /// Whether the source holds a proof (a completed handshake) now.
    fn verified(&mut self) -> bool;
}

/// The decision on a SYN to a protected port from a source no ban covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syn {
    /// Decided, with this reason (`stat::R_*`).
    Verdict(usize),
    /// To be answered with a SYN cookie, if the SYN is for one of the machine's own
    /// addresses and a port no NAT rule rewrites (the kernel checks; the reason then is
    /// `R_COOKIE_SENT`, or why not).
    Answer,
}

/// The order a SYN to a protected port is decided in, once the ban check and the rate
/// window are done:
///
/// 1. In attack mode a quiet source (the sketch) skips its bucket; any other is metered.
///    Over its limit an unproven source is limited (banned); a proven one is challenged.
/// 2. Without cookies (attack mode off, or `syn-cookies = off`) a SYN within its limit
///    passes and a challenged one is dropped (no ban). A challenge may just have started
///    attack mode: asked again then.
/// 3. With cookies, a verified source within its limit passes; every other SYN is
///    answered with a cookie.
#[inline(always)]
pub fn decide_syn<R: SynRules>(r: &mut R) -> Syn {
    let active = r.cookies_active();
    let metered = if active && r.quiet_source() {
        stat::R_SYN_PASSED
    } else {
        r.meter()
    };
    if metered == stat::R_SYN_LIMITED {
        return Syn::Verdict(stat::R_SYN_LIMITED);
    }
    let challenged = metered == CHALLENGED;
    if !(active || challenged && r.cookies_active()) {
        return Syn::Verdict(if challenged {
            stat::R_SYN_LIMITED
        } else {
            metered
        });
    }
    if !challenged && r.verified() {
        return Syn::Verdict(stat::R_SYN_VERIFIED);
    }
    Syn::Answer
}

/// The hysteresis decision, shared by the kernel and the tests: given the state, the
/// total SYN rate now and the thresholds, the next state. Returns `Some(true)` when
/// attack mode starts, `Some(false)` when it ends.
#[inline(always)]
pub fn attack_step(
    st: &mut IfState,
    rate: u64,
    now: u64,
    enter: u64,
    calm_ns: u64,
) -> Option<bool> {
    st.rate = rate;
    st.rate_ns = now;
    if st.attack == 0 {
        if rate >= enter {
            st.attack = 1;
            st.since_ns = now;
            st.calm_since_ns = 0;
            st.peak_rate = rate;
            return Some(true);
        }
        return None;
    }
    if rate > st.peak_rate {
        st.peak_rate = rate;
    }
    if rate * 2 >= enter {
        st.calm_since_ns = 0;
        return None;
    }
    if st.calm_since_ns == 0 {
        st.calm_since_ns = now;
        return None;
    }
    if now.saturating_sub(st.calm_since_ns) >= calm_ns
        && now.saturating_sub(st.challenged_ns) >= calm_ns
    {
        st.attack = 0;
        st.calm_since_ns = 0;
        return Some(false);
    }
    None
}

/// A proven source went over its limit: challenge it (attack mode, SYN cookies) rather
/// than ban it. Starts attack mode if it was off (returns `true` then), whatever the total
/// rate: a flood carrying an address that completes handshakes is most likely forged, and
/// only a cookie tells its owner's SYNs from the forger's. Attack mode then lasts at least
/// a calm period after the last such SYN.
#[inline(always)]
pub fn attack_challenge(st: &mut IfState, now: u64) -> bool {
    st.challenged_ns = now;
    if st.attack != 0 {
        return false;
    }
    st.attack = 1;
    st.since_ns = now;
    st.calm_since_ns = 0;
    st.peak_rate = st.rate;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted decider that records what it was asked.
    struct Script {
        active: bool,
        /// Attack mode after the meter ran (a challenge starts it).
        active_after_meter: bool,
        quiet: bool,
        meter: usize,
        verified: bool,
        asked: [u32; 4],
        metered: bool,
    }

    impl Script {
        fn new(active: bool, meter: usize) -> Self {
            Self {
                active,
                active_after_meter: active,
                quiet: false,
                meter,
                verified: false,
                asked: [0; 4],
                metered: false,
            }
        }
    }

    impl SynRules for Script {
        fn cookies_active(&self) -> bool {
            if self.metered {
                self.active_after_meter
            } else {
                self.active
            }
        }
        fn quiet_source(&mut self) -> bool {
            self.asked[1] += 1;
            self.quiet
        }
        fn meter(&mut self) -> usize {
            self.asked[2] += 1;
            self.metered = true;
            self.meter
        }
        fn verified(&mut self) -> bool {
            self.asked[3] += 1;
            self.verified
        }
    }

    #[test]
    fn without_cookies_the_meter_decides() {
        for m in [
            stat::R_SYN_PASSED,
            stat::R_SYN_UNTRACKED,
            stat::R_SYN_LIMITED,
        ] {
            let mut s = Script::new(false, m);
            assert_eq!(decide_syn(&mut s), Syn::Verdict(m));
            assert_eq!(s.asked, [0, 0, 1, 0], "no sketch, no proof looked up");
        }
        // A challenge without cookies (syn-cookies = off): dropped, not banned.
        let mut s = Script::new(false, CHALLENGED);
        assert_eq!(decide_syn(&mut s), Syn::Verdict(stat::R_SYN_LIMITED));
        // A challenge that started attack mode: answered.
        let mut s = Script::new(false, CHALLENGED);
        s.active_after_meter = true;
        s.verified = true;
        assert_eq!(decide_syn(&mut s), Syn::Answer);
        assert_eq!(
            s.asked[3], 0,
            "a challenged source's proof does not let it pass"
        );
    }

    #[test]
    fn with_cookies_quiet_and_verified_sources() {
        // Quiet: no bucket; unverified: answered.
        let mut s = Script::new(true, stat::R_SYN_LIMITED);
        s.quiet = true;
        assert_eq!(decide_syn(&mut s), Syn::Answer);
        assert_eq!(s.asked, [0, 1, 0, 1]);
        // Verified within its limit: passes.
        let mut s = Script::new(true, stat::R_SYN_PASSED);
        s.verified = true;
        assert_eq!(decide_syn(&mut s), Syn::Verdict(stat::R_SYN_VERIFIED));
        // Over its limit and unproven: limited even in attack mode.
        let mut s = Script::new(true, stat::R_SYN_LIMITED);
        s.verified = true;
        assert_eq!(decide_syn(&mut s), Syn::Verdict(stat::R_SYN_LIMITED));
        assert_eq!(s.asked[3], 0);
        // Challenged: answered, proof or not.
        let mut s = Script::new(true, CHALLENGED);
        s.verified = true;
        assert_eq!(decide_syn(&mut s), Syn::Answer);
    }

    #[test]
    fn windows_close_at_their_end_or_early_in_a_flood() {
        let (mut start, mut syns) = (0u64, 0u64);
        // 5 SYNs over a window: rate 50/s.
        for t in 0..4 {
            assert_eq!(
                window_syn(&mut start, &mut syns, t * 1_000_000, 1000, || true),
                None
            );
        }
        assert_eq!(
            window_syn(&mut start, &mut syns, ATTACK_WINDOW_NS, 1000, || true),
            Some(50)
        );
        assert_eq!((start, syns), (ATTACK_WINDOW_NS, 0));
        // Early: 100 SYNs in 10 ms with attack-syn-rate 1000 (a window's worth is 100).
        let t0 = start;
        for i in 1..100 {
            assert_eq!(
                window_syn(&mut start, &mut syns, t0 + i * 100_000, 1000, || true),
                None
            );
        }
        let early = window_syn(&mut start, &mut syns, t0 + ATTACK_EARLY_NS, 1000, || true);
        assert_eq!(early, Some(10_000));
        // Not early while attack mode is on.
        let t0 = start;
        for i in 1..=200 {
            assert_eq!(
                window_syn(&mut start, &mut syns, t0 + i * 100_000, 1000, || false),
                None
            );
        }
        // Idle for ten windows: rate 0. Backwards time: no close.
        assert_eq!(
            window_syn(
                &mut start,
                &mut syns,
                t0 + 11 * ATTACK_WINDOW_NS,
                1000,
                || true
            ),
            Some(0)
        );
        assert_eq!(window_syn(&mut start, &mut syns, t0, 1000, || true), None);
    }

    #[test]
    fn over_the_limit() {
        assert_eq!(over_limit(|| true, 0), OverLimit::Challenge);
        assert_eq!(over_limit(|| false, 1), OverLimit::Ban);
        assert_eq!(over_limit(|| false, 0), OverLimit::Drop);
        let mut b = Bucket::first(0, 100);
        // burst 2: tolerance 100.
        assert!(bucket_syn(&mut b, 0, 100, 100));
        assert!(!bucket_syn(&mut b, 0, 100, 100));
        assert_eq!((b.syns, b.limited), (3, 1));
        assert!(bucket_syn(&mut b, 200, 100, 100), "refilled");
        assert!(cookies_active(COOKIES_ALWAYS, || false));
        assert!(!cookies_active(crate::COOKIES_OFF, || true));
        assert!(cookies_active(COOKIES_AUTO, || true));
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn enters_at_the_threshold_and_leaves_after_a_calm_period() {
        let mut st = IfState::default();
        assert_eq!(attack_step(&mut st, 999, SEC, 1000, 10 * SEC), None);
        assert_eq!(
            attack_step(&mut st, 1000, 2 * SEC, 1000, 10 * SEC),
            Some(true)
        );
        assert_eq!(st.since_ns, 2 * SEC);
        // Below the entry threshold but above half of it: still an attack.
        assert_eq!(attack_step(&mut st, 600, 3 * SEC, 1000, 10 * SEC), None);
        assert_eq!(st.calm_since_ns, 0);
        // Calm starts; a short burst resets it (no flapping).
        assert_eq!(attack_step(&mut st, 100, 4 * SEC, 1000, 10 * SEC), None);
        assert_eq!(attack_step(&mut st, 5000, 8 * SEC, 1000, 10 * SEC), None);
        assert_eq!(st.peak_rate, 5000);
        assert_eq!(attack_step(&mut st, 100, 9 * SEC, 1000, 10 * SEC), None);
        assert_eq!(attack_step(&mut st, 100, 18 * SEC, 1000, 10 * SEC), None);
        assert_eq!(
            attack_step(&mut st, 100, 19 * SEC, 1000, 10 * SEC),
            Some(false)
        );
        assert_eq!(st.attack, 0);
        assert_eq!(attack_step(&mut st, 100, 20 * SEC, 1000, 10 * SEC), None);
    }
}
