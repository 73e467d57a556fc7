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
//! the pinned `SG_HOST` ([`HostState`]), so a `run` after a crash, or `detach`, restores
//! them. When they are set at all is `run`'s choice (`daemon::keeper`): only while the
//! server is under pressure in attack mode.
//!
//! The rest is read every second into the config's `cookie_opts`: `tcp_sack`,
//! `tcp_window_scaling`, `tcp_ecn`, and the window scale the kernel gives connections
//! (from `tcp_rmem` and `rmem_max`).

use std::fs;

use anyhow::Context as _;
use synguard_common::{HostState, synack};

use crate::bpf::Maps;

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

/// Set `net.ipv4.tcp_syncookies` to 2 (`want`) or back to the value saved in `host`,
/// saying what it does. `host` is the caller's copy of `SG_HOST`, written back by it.
pub fn sync_syncookies(host: &mut HostState, want: bool) -> anyhow::Result<()> {
    let current = read_int(SYNCOOKIES)? as i32;
    if want {
        if current != 2 {
            if host.saved_syncookies < 0 {
                host.saved_syncookies = current;
            }
            write_int(SYNCOOKIES, 2)?;
            log::info!(
                "set net.ipv4.tcp_syncookies = 2 (was {current}) while SYN cookies are answered \
                 from XDP"
            );
        }
    } else if host.saved_syncookies >= 0 {
        let saved = host.saved_syncookies;
        if current == 2 && saved != 2 {
            write_int(SYNCOOKIES, saved)?;
            log::info!("restored net.ipv4.tcp_syncookies = {saved}");
        }
        host.saved_syncookies = -1;
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
/// saved in `host`, then bring `host.cookie_opts` in step with the kernel's settings.
/// Before a restore, the program is told to stop offering timestamps (`maps`), so no
/// cookie is made with options the kernel would then misread.
pub fn sync_timestamps(maps: &mut Maps, host: &mut HostState, want: bool) -> anyhow::Result<()> {
    let current = read_int(TIMESTAMPS)? as i32;
    if want {
        if current == 1 {
            if host.saved_timestamps < 0 {
                host.saved_timestamps = current;
            }
            write_int(TIMESTAMPS, 2)?;
            log::info!(
                "set net.ipv4.tcp_timestamps = 2 (was 1) while SYN cookies are answered from \
                 XDP: the kernel reads a cookie's window scaling and SACK back from its \
                 timestamp only without per-connection offsets"
            );
        }
    } else if host.saved_timestamps >= 0 {
        let saved = host.saved_timestamps;
        host.cookie_opts &= !synack::TIMESTAMPS;
        host.saved_timestamps = -1;
        maps.write_host(host)?;
        if current == 2 && saved != 2 {
            write_int(TIMESTAMPS, saved)?;
            log::info!("restored net.ipv4.tcp_timestamps = {saved}");
        }
    }
    host.cookie_opts = cookie_opts();
    Ok(())
}

/// Put back both settings now (stopping, `detach`, a crashed run's leftovers), and say
/// so in `SG_HOST`.
pub fn restore_all(maps: &mut Maps) {
    let mut host = match maps.read_host() {
        Ok(h) => h,
        Err(e) => {
            log::error!("restoring net.ipv4.tcp_syncookies: {e:#}");
            return;
        }
    };
    if let Err(e) = sync_syncookies(&mut host, false) {
        log::error!("managing net.ipv4.tcp_syncookies: {e:#}");
    }
    if let Err(e) = sync_timestamps(maps, &mut host, false) {
        log::error!("managing net.ipv4.tcp_timestamps: {e:#}");
    }
    host.cookies_since_ns = 0;
    if let Err(e) = maps.write_host(&host) {
        log::error!("{e:#}");
    }
}

/// Put back the values `host` saved, with no program left to tell (`detach`, after the
/// links are gone; any layout's saved values, see `upgrade::saved_host`).
pub fn restore_saved(host: &HostState) {
    for (path, saved) in [
        (SYNCOOKIES, host.saved_syncookies),
        (TIMESTAMPS, host.saved_timestamps),
    ] {
        if saved < 0 {
            continue;
        }
        match read_int(path) {
            Ok(2) if saved != 2 => match write_int(path, saved) {
                Ok(()) => log::info!("restored {} = {saved}", sysctl_name(path)),
                Err(e) => log::error!("{e:#}"),
            },
            Ok(_) => {}
            Err(e) => log::error!("{e:#}"),
        }
    }
}

/// `net.ipv4.tcp_syncookies` for `/proc/sys/net/ipv4/tcp_syncookies`.
fn sysctl_name(path: &str) -> String {
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

/// How many SYNs the listeners could not queue so far in this network namespace, from the
/// kernel's `TcpExt` counters (`/proc/net/netstat`): `TCPReqQFullDoCookies` (a SYN queue
/// was full: answered with the kernel's own cookie) and the listener drops other than
/// full accept queues, `ListenDrops` less `ListenOverflows` (a full SYN queue without
/// cookies, one three quarters full of `tcp_max_syn_backlog` without cookies). When they
/// move, the SYNs reaching the kernel are more than its queues hold: the pressure that
/// justifies attack mode's host-wide settings. (A full accept queue is an application
/// that does not keep up, which cookies do not help, and which any local user can cause
/// with a listener of their own: not counted.) `None` if the file cannot be read.
pub fn queue_overflows() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/netstat").ok()?;
    queue_overflows_in(&text)
}

fn queue_overflows_in(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        let mut get = std::collections::HashMap::new();
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            get.insert(n, v.parse::<u64>().ok()?);
        }
        let cookies = *get.get("TCPReqQFullDoCookies")?;
        let drops = get
            .get("ListenDrops")?
            .saturating_sub(*get.get("ListenOverflows")?);
        return Some(cookies + drops);
    }
    None
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
    fn queue_overflows_are_read_from_tcpext() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDoCookies\n\
                    TcpExt: 5 4 11 7\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        // 7 cookies, and 11 drops of which 4 full accept queues.
        assert_eq!(queue_overflows_in(text), Some(14));
        // Another section first, and a kernel without the counters.
        let text = "IpExt: InNoRoutes\nIpExt: 0\nTcpExt: SyncookiesSent\nTcpExt: 5\n";
        assert_eq!(queue_overflows_in(text), None);
        assert_eq!(queue_overflows_in("garbage"), None);
        // This machine's own file has them.
        assert!(queue_overflows().is_some());
    }

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
