//! The per-source token bucket, as the Generic Cell Rate Algorithm (virtual scheduling).
//!
//! GCRA is exactly a token bucket of rate `1 / interval` and depth `burst`, but its whole
//! state is one time stamp, the theoretical arrival time (TAT), and it needs no division:
//! the kernel gets `interval = 1e9 / rate` and `tolerance = (burst - 1) * interval`
//! precomputed from userspace.
//!
//! A SYN arriving at `now` conforms when `max(tat, now) - now <= tolerance`; a conforming
//! SYN moves the TAT on by one interval, a non-conforming one leaves it alone (so a flood
//! does not push a source's recovery into the future: once it stops, its bucket refills
//! at the configured rate).

/// Check one arrival. Returns the new TAT if the arrival conforms (takes a token), or
/// `None` if the bucket is empty.
#[inline(always)]
pub fn conform(tat_ns: u64, now_ns: u64, interval_ns: u64, tolerance_ns: u64) -> Option<u64> {
    let tat = if tat_ns < now_ns { now_ns } else { tat_ns };
    if tat - now_ns > tolerance_ns {
        None
    } else {
        Some(tat.saturating_add(interval_ns))
    }
}

/// The TAT of a bucket that has just been created by one conforming arrival.
#[inline(always)]
pub fn first(now_ns: u64, interval_ns: u64) -> u64 {
    now_ns.saturating_add(interval_ns)
}

/// Tokens left in a bucket at `now` (for `explain`): between 0 and `burst`.
pub fn tokens(tat_ns: u64, now_ns: u64, interval_ns: u64, tolerance_ns: u64) -> u64 {
    if interval_ns == 0 {
        return 0;
    }
    let tat = if tat_ns < now_ns { now_ns } else { tat_ns };
    let used = tat - now_ns;
    if used > tolerance_ns {
        0
    } else {
        (tolerance_ns - used) / interval_ns + 1
    }
}

/// Nanoseconds until a bucket is completely full again.
pub fn refill_ns(tat_ns: u64, now_ns: u64) -> u64 {
    tat_ns.saturating_sub(now_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    struct Bucket {
        tat: u64,
        interval: u64,
        tolerance: u64,
    }

    impl Bucket {
        fn new(rate: u64, burst: u64) -> Self {
            let interval = SEC / rate;
            Self {
                tat: 0,
                interval,
                tolerance: (burst - 1) * interval,
            }
        }
        fn take(&mut self, now: u64) -> bool {
            match conform(self.tat, now, self.interval, self.tolerance) {
                Some(t) => {
                    self.tat = t;
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn burst_then_limit() {
        let mut b = Bucket::new(10, 5);
        let now = 100 * SEC;
        let passed = (0..20).filter(|_| b.take(now)).count();
        assert_eq!(passed, 5, "a full bucket passes exactly `burst` at once");
        assert!(
            !b.take(now + SEC / 20),
            "half an interval later: still empty"
        );
        assert!(b.take(now + SEC / 10), "one interval later: one token");
        assert!(!b.take(now + SEC / 10));
    }

    #[test]
    fn sustained_rate_is_the_configured_rate() {
        let mut b = Bucket::new(100, 10);
        let start = 5 * SEC;
        // Offer 1000 SYN/s for 10 s: 10 burst + 100/s * 10 s pass.
        let passed = (0..10_000u64)
            .filter(|i| b.take(start + i * SEC / 1000))
            .count();
        assert!((1000..=1011).contains(&passed), "passed {passed}");
    }

    #[test]
    fn under_the_rate_never_limited() {
        let mut b = Bucket::new(50, 1);
        for i in 0..1000u64 {
            assert!(b.take(SEC + i * SEC / 50), "SYN {i} at exactly the rate");
        }
    }

    #[test]
    fn rejected_syns_do_not_delay_recovery() {
        let mut b = Bucket::new(10, 2);
        let now = SEC;
        assert!(b.take(now) && b.take(now));
        for _ in 0..1000 {
            assert!(!b.take(now));
        }
        assert!(b.take(now + SEC / 10));
    }

    #[test]
    fn tokens_and_refill() {
        let mut b = Bucket::new(10, 4);
        let now = SEC;
        assert_eq!(tokens(b.tat, now, b.interval, b.tolerance), 4);
        b.take(now);
        b.take(now);
        assert_eq!(tokens(b.tat, now, b.interval, b.tolerance), 2);
        b.take(now);
        b.take(now);
        assert_eq!(tokens(b.tat, now, b.interval, b.tolerance), 0);
        assert_eq!(refill_ns(b.tat, now), 4 * SEC / 10);
        assert_eq!(tokens(b.tat, now + SEC, b.interval, b.tolerance), 4);
    }

    #[test]
    fn first_arrival_matches_conform_on_empty_state() {
        let now = 7 * SEC;
        assert_eq!(conform(0, now, 1000, 5000), Some(first(now, 1000)));
    }
}
