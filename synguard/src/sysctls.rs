//! The kernel settings attack mode owns while SYN cookies are answered from XDP, and the
//! ones it reads to make a cookie SYN-ACK offer what the kernel's own would.
//!
//! - `net.ipv4.tcp_syncookies` = 2: the kernel's helper issues a cookie only then.
//! - `net.ipv4.tcp_timestamps` = 2 (when it was 1): the cookie SYN-ACK carries window
//!   scaling, SACK and ECN in the low bits of its timestamp (see
//!   [`synguard_common::synack`]), which the kernel reads back from the client's echo
//!   after subtracting a per-connection random offset, unless the setting is 2
//!   (timestamps without random offsets, the kernel's behaviour before 4.10). 0 is the
//!   administrator's choice and is left alone: cookie connections then get the MSS only.
//!
//! Both are put back when cookies are no longer answered; the timestamps setting a minute
//! later (six calm periods), since a client's ACK may still be on its way with a
//! timestamp the kernel must read without an offset. The previous values are kept in
//! the pinned config, so a `run` after a crash, or `detach`, restores them.
//!
//! The rest is read every second into the config's `cookie_opts`: `tcp_sack`,
//! `tcp_window_scaling`, `tcp_ecn`, and the window scale the kernel gives connections
//! (from `tcp_rmem` and `rmem_max`).

use std::{fs, path::Path};

use anyhow::Context as _;
use synguard_common::synack;

use crate::{bpf::Maps, pins};

const SYNCOOKIES: &str = "/proc/sys/net/ipv4/tcp_syncookies";
const TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";
const SACK: &str = "/proc/sys/net/ipv4/tcp_sack";
const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";
const ECN: &str = "/proc/sys/net/ipv4/tcp_ecn";
const TCP_RMEM: &str = "/proc/sys/net/ipv4/tcp_rmem";
const RMEM_MAX: &str = "/proc/sys/net/core/rmem_max";

/// The first integer in a sysctl file (`tcp_rmem` holds three: see [`read_nth`]).
fn read_int(path: &str) -> anyhow::Result<i64> {
    read_nth(path, 0)
}

fn read_nth(path: &str, n: usize) -> anyhow::Result<i64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .nth(n)
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("{path} holds {text:?}"))
}

fn write_int(path: &str, v: i32) -> anyhow::Result<()> {
    fs::write(path, format!("{v}\n")).with_context(|| format!("writing {v} to {path}"))
}

/// `net.ipv4.tcp_syncookies` now.
pub fn syncookies() -> anyhow::Result<i64> {
    read_int(SYNCOOKIES)
}

/// Set `net.ipv4.tcp_syncookies` to 2 (`want`) or back to the value saved in the pinned
/// config, saying what it does.
pub fn sync_syncookies(pin_dir: &Path, maps: &mut Maps, want: bool) -> anyhow::Result<()> {
    let current = read_int(SYNCOOKIES)? as i32;
    let _lock = pins::lock_writers(pin_dir)?;
    let mut cfg = maps.read_config()?;
    if want {
        if current != 2 {
            if cfg.saved_syncookies < 0 {
                cfg.saved_syncookies = current;
                maps.write_config(&cfg)?;
            }
            write_int(SYNCOOKIES, 2)?;
            log::info!(
                "set net.ipv4.tcp_syncookies = 2 (was {current}) while SYN cookies are answered \
                 from XDP"
            );
        }
    } else if cfg.saved_syncookies >= 0 {
        let saved = cfg.saved_syncookies;
        if current == 2 && saved != 2 {
            write_int(SYNCOOKIES, saved)?;
            log::info!("restored net.ipv4.tcp_syncookies = {saved}");
        }
        cfg.saved_syncookies = -1;
        maps.write_config(&cfg)?;
    }
    Ok(())
}

/// What the kernel's settings let a cookie connection use now (a
/// [`synack::cookie_opts`] word). Unreadable settings count as off.
pub fn cookie_opts() -> u32 {
    let on = |p: &str| read_int(p).is_ok_and(|v| v != 0);
    let rmem = read_nth(TCP_RMEM, 2)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32;
    let rmem_max = read_int(RMEM_MAX)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32;
    synack::cookie_opts(
        read_int(TIMESTAMPS).is_ok_and(|v| v == 2),
        on(SACK),
        on(WINDOW_SCALING),
        on(ECN),
        synack::server_wscale(rmem, rmem_max),
    )
}

/// Set `net.ipv4.tcp_timestamps` to 2 (`want`, and only from 1) or back to the value
/// saved in the pinned config, then refresh `cookie_opts` from the kernel's settings.
/// Before a restore, the program stops offering timestamps first.
pub fn sync_timestamps(pin_dir: &Path, maps: &mut Maps, want: bool) -> anyhow::Result<()> {
    let current = read_int(TIMESTAMPS)? as i32;
    let _lock = pins::lock_writers(pin_dir)?;
    let mut cfg = maps.read_config()?;
    if want {
        if current == 1 {
            if cfg.saved_timestamps < 0 {
                cfg.saved_timestamps = current;
                maps.write_config(&cfg)?;
            }
            write_int(TIMESTAMPS, 2)?;
            log::info!(
                "set net.ipv4.tcp_timestamps = 2 (was 1) while SYN cookies are answered from \
                 XDP: the kernel reads a cookie's window scaling and SACK back from its \
                 timestamp only without per-connection offsets"
            );
        }
    } else if cfg.saved_timestamps >= 0 {
        let saved = cfg.saved_timestamps;
        cfg.cookie_opts &= !synack::TIMESTAMPS;
        cfg.saved_timestamps = -1;
        maps.write_config(&cfg)?;
        if current == 2 && saved != 2 {
            write_int(TIMESTAMPS, saved)?;
            log::info!("restored net.ipv4.tcp_timestamps = {saved}");
        }
    }
    let opts = cookie_opts();
    if cfg.cookie_opts != opts {
        cfg.cookie_opts = opts;
        maps.write_config(&cfg)?;
    }
    Ok(())
}

/// Both, as `want` says (stopping, `detach`, a crashed run's leftovers: `false`).
pub fn sync_all(pin_dir: &Path, maps: &mut Maps, want: bool) {
    if let Err(e) = sync_syncookies(pin_dir, maps, want) {
        log::error!("managing net.ipv4.tcp_syncookies: {e:#}");
    }
    if let Err(e) = sync_timestamps(pin_dir, maps, want) {
        log::error!("managing net.ipv4.tcp_timestamps: {e:#}");
    }
}

/// A `cookie_opts` word in words: what a cookie SYN-ACK offers besides the MSS (nothing
/// without timestamps, which carry the rest).
pub fn describe(opts: u32) -> Vec<String> {
    if opts & synack::TIMESTAMPS == 0 {
        return Vec::new();
    }
    let mut v = vec!["timestamps".to_string()];
    if opts & synack::WSCALE != 0 {
        v.push(format!(
            "window scale {}",
            (opts >> synack::SERVER_WSCALE_SHIFT) & 0xf
        ));
    }
    if opts & synack::SACK != 0 {
        v.push("sack".into());
    }
    if opts & synack::ECN != 0 {
        v.push("ecn".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_described() {
        assert!(describe(0).is_empty());
        assert!(describe(synack::cookie_opts(false, true, true, true, 7)).is_empty());
        assert_eq!(
            describe(synack::cookie_opts(true, true, true, false, 7)),
            ["timestamps", "window scale 7", "sack"]
        );
        assert_eq!(
            describe(synack::cookie_opts(true, false, false, true, 0)),
            ["timestamps", "ecn"]
        );
    }
}
