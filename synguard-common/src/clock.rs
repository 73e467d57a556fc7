//! The XDP program's clock: `CLOCK_MONOTONIC` nanoseconds at the resolution of a kernel
//! tick, what `bpf_ktime_get_coarse_ns` gives, but derived per packet from `jiffies`.
//!
//! The verifier inlines `bpf_jiffies64` as a single memory read, while the coarse-time
//! helper is a real call that normalises a timespec on every packet (measured with `perf`
//! at about 8 % of the program's own time, more on the banned-source path, which needs
//! the time only to check the ban's expiry). So each CPU reads the coarse time together
//! with `jiffies` once per [`RESYNC_JIFFIES`], measures how long a jiffy is from two such
//! readings, and in between adds whole jiffies to its last reading.
//!
//! Accuracy: within about two ticks of the coarse clock (the pair of readings can
//! straddle a tick, which makes the measured jiffy at most one tick in
//! [`RESYNC_JIFFIES`] off); each resync starts again from the true coarse time, so errors
//! never accumulate. The derived time can step back by that much at a resync; every user
//! of it (token buckets, rate windows, expiry) tolerates time running backwards.
//! A CPU uses the helper until it knows the length of a jiffy: after [`LEARN_JIFFIES`]
//! it takes the nearest standard `HZ` (100, 250, 300, 1000; the first measurement is
//! good to 1 in [`LEARN_JIFFIES`], enough to tell them apart), and from the next resync
//! on the length measured over [`RESYNC_JIFFIES`] (which includes NTP's adjustment).

use crate::Stats;

/// How often (in jiffies) a CPU reads the coarse time again: 1 s at `HZ=250`.
pub const RESYNC_JIFFIES: u64 = 256;
/// Jiffies over which a CPU first measures a jiffy (64 ms at `HZ=250`).
pub const LEARN_JIFFIES: u64 = 16;
/// Jiffy lengths of the standard `HZ` settings (1000, 300, 250, 100).
pub const STANDARD_TICKS_NS: [u64; 4] = [1_000_000, 3_333_333, 4_000_000, 10_000_000];

/// The standard jiffy within 8 % of a rough measurement, if any.
#[inline(always)]
pub const fn standard_tick(measured_ns: u64) -> Option<u64> {
    let mut i = 0;
    while i < STANDARD_TICKS_NS.len() {
        let t = STANDARD_TICKS_NS[i];
        if measured_ns.abs_diff(t) <= t / 12 {
            return Some(t);
        }
        i += 1;
    }
    None
}

/// Plausible lengths of a jiffy (`HZ` between 2000 and 50); a measurement outside them
/// is discarded.
pub const TICK_MIN_NS: u64 = 500_000;
pub const TICK_MAX_NS: u64 = 20_000_000;

/// The time from `jiffies` alone, or `None` when the CPU must resync (see [`resync`]).
#[inline(always)]
pub fn derived(s: &Stats, jiffies: u64) -> Option<u64> {
    let since = jiffies.wrapping_sub(s.clock_jiffies);
    if s.tick_ns != 0 && since < RESYNC_JIFFIES {
        Some(s.clock_ns + since * s.tick_ns)
    } else {
        None
    }
}

/// Take `coarse_ns`, read at `jiffies`, as the CPU's new reference (and measure the
/// jiffy against the previous one, when they lie far enough apart); returns `coarse_ns`.
#[inline(always)]
pub fn resync(s: &mut Stats, jiffies: u64, coarse_ns: u64) -> u64 {
    let since = jiffies.wrapping_sub(s.clock_jiffies);
    if s.clock_jiffies == 0 || since >= 1 << 40 {
        // First reading, or jiffies went backwards (cannot happen; start over).
        s.clock_ns = coarse_ns;
        s.clock_jiffies = jiffies;
        s.tick_ns = 0;
        return coarse_ns;
    }
    if since < RESYNC_JIFFIES {
        // Too short a span to measure a jiffy exactly; long enough to recognise a
        // standard one. Either way the reference stays until the next resync.
        if s.tick_ns == 0
            && since >= LEARN_JIFFIES
            && coarse_ns > s.clock_ns
            && let Some(tick) = standard_tick((coarse_ns - s.clock_ns) / since)
        {
            s.tick_ns = tick;
            s.clock_ns = coarse_ns;
            s.clock_jiffies = jiffies;
        }
        return coarse_ns;
    }
    if coarse_ns > s.clock_ns {
        let tick = (coarse_ns - s.clock_ns) / since;
        if (TICK_MIN_NS..=TICK_MAX_NS).contains(&tick) {
            s.tick_ns = tick;
        }
    }
    s.clock_ns = coarse_ns;
    s.clock_jiffies = jiffies;
    coarse_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 4_000_000;

    /// A kernel at `HZ=250` whose coarse time is `base + j * TICK`, sampled every few
    /// jiffies; the derived clock stays within two ticks of it, and resyncs bound the
    /// helper calls to about one per `RESYNC_JIFFIES`.
    #[test]
    fn follows_the_coarse_clock() {
        let mut s = Stats::default();
        let base = 7_000_000_000;
        let mut helper_calls = 0;
        let mut j = 4_294_892_219_u64;
        for step in 0..5000u64 {
            j += step % 3;
            let coarse = base + (j - 4_294_892_219) * TICK;
            let now = derived(&s, j).unwrap_or_else(|| {
                helper_calls += 1;
                resync(&mut s, j, coarse)
            });
            assert!(now.abs_diff(coarse) <= 2 * TICK, "{now} vs {coarse}");
        }
        assert_eq!(s.tick_ns, TICK);
        // 5000 samples over ~5000 jiffies: the first LEARN_JIFFIES of them use the
        // helper, then about one in RESYNC_JIFFIES.
        assert!(helper_calls < 60, "{helper_calls}");
    }

    #[test]
    fn a_standard_jiffy_is_recognised_early_even_from_a_straddled_reading() {
        for tick in STANDARD_TICKS_NS {
            for late in [0, 1] {
                let mut s = Stats::default();
                resync(&mut s, 500, 500 * tick);
                let j = 500 + LEARN_JIFFIES - 1;
                resync(&mut s, j, j * tick);
                assert_eq!(s.tick_ns, 0, "not before LEARN_JIFFIES");
                let j = 500 + LEARN_JIFFIES;
                resync(&mut s, j, (j + late) * tick);
                assert_eq!(s.tick_ns, tick, "HZ tick {tick}, {late} tick(s) late");
                assert_eq!(derived(&s, j + 10), Some((j + late + 10) * tick));
            }
        }
        // Not a standard HZ: wait for the exact measurement.
        let mut s = Stats::default();
        resync(&mut s, 500, 0);
        resync(&mut s, 500 + LEARN_JIFFIES, 7_000_000 * LEARN_JIFFIES);
        assert_eq!(s.tick_ns, 0);
        resync(&mut s, 500 + RESYNC_JIFFIES, 7_000_000 * RESYNC_JIFFIES);
        assert_eq!(s.tick_ns, 7_000_000);
    }

    #[test]
    fn a_straddled_tick_costs_at_most_one_tick() {
        let mut s = Stats::default();
        resync(&mut s, 1000, 1_000 * TICK);
        // The coarse time was read a tick late relative to jiffies.
        resync(
            &mut s,
            1000 + RESYNC_JIFFIES,
            (1000 + RESYNC_JIFFIES + 1) * TICK,
        );
        let now = derived(&s, 1000 + 2 * RESYNC_JIFFIES - 1).unwrap();
        let truth = (1000 + 2 * RESYNC_JIFFIES - 1) * TICK;
        assert!(now.abs_diff(truth) <= 2 * TICK);
    }

    #[test]
    fn implausible_measurements_are_ignored() {
        let mut s = Stats::default();
        resync(&mut s, 1000, 5_000_000_000);
        // Coarse time stood still (or went back): no jiffy length learnt.
        resync(&mut s, 1000 + RESYNC_JIFFIES, 5_000_000_000);
        assert_eq!(s.tick_ns, 0);
        assert_eq!(derived(&s, 1000 + RESYNC_JIFFIES + 1), None);
        // Jiffies before the reference: start over.
        resync(&mut s, 10, 6_000_000_000);
        assert_eq!((s.clock_jiffies, s.tick_ns), (10, 0));
    }
}
