//! The kernel program stamps times with `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC`, at
//! tick resolution); this module reads the same clock and converts its stamps to
//! wall-clock time for display.

use std::time::{Duration, SystemTime};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of every `*_ns` field in the maps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a monotonic stamp.
pub fn to_wall(stamp_ns: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    let now_wall = SystemTime::now();
    if stamp_ns <= now_mono {
        now_wall - Duration::from_nanos(now_mono - stamp_ns)
    } else {
        now_wall + Duration::from_nanos(stamp_ns - now_mono)
    }
}

/// RFC 3339 in UTC, seconds precision (for tables and JSON).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "in 9m59s" / "3m ago" relative to now, for human tables.
pub fn relative(stamp_ns: u64) -> String {
    let now = monotonic_ns();
    let fmt = |ns: u64| format_duration(Duration::from_nanos(ns));
    if stamp_ns >= now {
        format!("in {}", fmt(stamp_ns - now))
    } else {
        format!("{} ago", fmt(now - stamp_ns))
    }
}

/// A duration as the config keys write it (`10m`, `1h30m`, `2d`): whole seconds, no
/// spaces; at least `1s` unless zero.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_secs(d.as_secs()).max(Duration::from_secs(1)))
        .to_string()
        .replace(' ', "")
}
