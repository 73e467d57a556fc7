//! Proofs that a source owns its address (`synguard_common::Proof`, the map
//! `SG_VERIFIED`), and what they change: a proven source over its SYN limit is challenged
//! with SYN cookies, never banned, since a flood carrying its address is most likely
//! forged (see the README's "Forged sources never choose who is cut off").
//!
//! Where proofs come from:
//! - the kernel: a handshake completed through a cookie answered in XDP, and every
//!   connection a socket of this machine accepts (the `sock_ops` program, attached to the
//!   root cgroup by [`attach`]);
//! - `run`, every [`REFRESH`]: the peers of this network namespace's connections (`sock_diag`:
//!   connections made before `run` started, or made by this machine), so a long-lived
//!   session (the operator's SSH) stays proven for as long as it lasts;
//! - `run`, the same way: the default gateways and the resolvers of `/etc/resolv.conf`,
//!   proven for ever (never banned), for as long as they are the machine's.

use std::{
    collections::HashSet,
    fs,
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, SockOps, links::FdLink},
};
use ipnet::IpNet;
use synguard_common::{
    PROOF_COOKIE, PROOF_FOREVER, PROOF_GATEWAY, PROOF_HANDSHAKE, PROOF_RESOLVER, PROOF_SOCKET,
    Proof, RULE_BAN, SourceKey,
    sources::{PROOF_FILTER_ROWS, PROOF_FILTER_WORDS, proof_filter_bit, set_of},
};

use crate::{bpf::Maps, config::Settings, net::source_key, rules};

/// The `sock_ops` program in the object.
pub const PROGRAM: &str = "synguard_proofs";
/// How often `run` refreshes the proofs it makes itself.
pub const REFRESH: Duration = Duration::from_secs(10);

/// What a `PROOF_*` means, in a few words.
pub fn how(how: u32) -> &'static str {
    match how {
        PROOF_COOKIE => "completed a handshake through a SYN cookie",
        PROOF_HANDSHAKE => "completed a handshake",
        PROOF_SOCKET => "has connections to this machine",
        PROOF_GATEWAY => "the default gateway",
        PROOF_RESOLVER => "a DNS resolver of this machine",
        _ => "proven",
    }
}

/// The proof of a source, if it holds at `now`.
pub fn get(maps: &Maps, key: &SourceKey, now: u64) -> anyhow::Result<Option<Proof>> {
    match maps.verified.get(key, 0) {
        Ok(p) if p.until_ns > now => Ok(Some(p)),
        Ok(_) => Ok(None),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).context("reading a proof"),
    }
}

/// Record a proof until `until_ns`, as the kernel does: a proof that still holds is
/// extended (keeping how and since when it was first made), never shortened; a protected
/// address ([`PROOF_FOREVER`]) says so.
pub fn record(
    maps: &mut Maps,
    key: &SourceKey,
    how: u32,
    until_ns: u64,
    now: u64,
) -> anyhow::Result<()> {
    mark(maps, key)?;
    record_marked(maps, key, how, until_ns, now)
}

/// [`record`], for a key whose filter bit is set already.
fn record_marked(
    maps: &mut Maps,
    key: &SourceKey,
    how: u32,
    until_ns: u64,
    now: u64,
) -> anyhow::Result<()> {
    let (since_ns, how) = match get(maps, key, now)? {
        Some(old) if old.until_ns >= until_ns => return Ok(()),
        Some(old) if until_ns != PROOF_FOREVER => (old.since_ns, old.how),
        Some(old) => (old.since_ns, how),
        None => (now, how),
    };
    let proof = Proof {
        until_ns,
        since_ns,
        how,
        _pad: 0,
    };
    maps.verified
        .insert(key, proof, 0)
        .context("recording a proof")
}

/// Set a source's bit in the proof filter (`SG_PROOF_FILTER`, see
/// `synguard_common::sources::proof_filter_bit`): without it attack mode never looks its
/// proof up.
fn mark(maps: &mut Maps, key: &SourceKey) -> anyhow::Result<()> {
    let (row, word, bit) = proof_filter_bit(set_of(key, &crate::sources::seed(maps)?));
    let mut words = maps
        .proof_filter
        .get(&row, 0)
        .context("reading the proof filter")?;
    if words[word] & bit == 0 {
        words[word] |= bit;
        maps.proof_filter
            .set(row, words, 0)
            .context("writing the proof filter")?;
    }
    Ok(())
}

/// What [`sync_filter`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FilterSync {
    /// Bits set now, of the filter's.
    pub set: u64,
    /// Bits cleared: their sets hold no proof any more.
    pub cleared: u64,
}

/// Make the proof filter say what `SG_VERIFIED` holds at `now`: the bits of the sets with
/// a proof that holds, and none of the others (proofs that ended, or were forgotten by
/// the LRU). A bit the kernel sets while this runs is kept: the filter is read before the
/// proofs, and a bit found set in a row's second read but not its first stays. Only a bit
/// set between the second read of its row and the write is lost (microseconds; see
/// `proof_filter_bit` for what that costs). At start and every [`REFRESH`].
pub fn sync_filter(maps: &mut Maps, now: u64) -> anyhow::Result<FilterSync> {
    let seed = crate::sources::seed(maps)?;
    let before = (0..PROOF_FILTER_ROWS)
        .map(|r| maps.proof_filter.get(&r, 0))
        .collect::<Result<Vec<_>, _>>()
        .context("reading the proof filter")?;
    let mut want = vec![[0u64; PROOF_FILTER_WORDS]; PROOF_FILTER_ROWS as usize];
    crate::batch::for_each(&maps.verified, 512, |key, proof| {
        if proof.until_ns > now {
            let (row, word, bit) = proof_filter_bit(set_of(key, &seed));
            want[row as usize][word] |= bit;
        }
    })?;
    let mut out = FilterSync::default();
    for (row, (want, before)) in (0..PROOF_FILTER_ROWS).zip(want.iter_mut().zip(&before)) {
        let now_words = maps
            .proof_filter
            .get(&row, 0)
            .context("reading the proof filter")?;
        for ((w, had), got) in want.iter_mut().zip(before).zip(&now_words) {
            // Set since the first read: a proof being written now.
            *w |= got & !had;
        }
        out.set += want.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        out.cleared += now_words
            .iter()
            .zip(want.iter())
            .map(|(got, w)| u64::from((got & !w).count_ones()))
            .sum::<u64>();
        if now_words != *want {
            maps.proof_filter
                .set(row, *want, 0)
                .context("writing the proof filter")?;
        }
    }
    Ok(out)
}

/// The machine's default gateways, IPv4 and IPv6 (`/proc/net/route`, `ipv6_route`).
pub fn gateways() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        out.extend(gateways_v4(&text));
    }
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(gateways_v6(&text));
    }
    out
}

/// `/proc/net/route`: interface, destination, gateway (hex, the address's bytes in
/// memory order), flags...; the default route has destination 0 and a gateway.
fn gateways_v4(text: &str) -> Vec<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, gw) = (f.get(1)?, f.get(2)?);
            let mask = f.get(7)?;
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            let gw = u32::from_str_radix(gw, 16).ok().filter(|g| *g != 0)?;
            Some(IpAddr::from(gw.to_ne_bytes()))
        })
        .collect()
}

/// `/proc/net/ipv6_route`: destination, its prefix length, source, its length, next hop
/// (each 32 hex digits); the default route is ::/0 with a next hop.
fn gateways_v6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if *f.first()? != "0".repeat(32) || *f.get(1)? != "00" {
                return None;
            }
            let hop = u128::from_str_radix(f.get(4)?, 16)
                .ok()
                .filter(|h| *h != 0)?;
            Some(IpAddr::from(hop.to_be_bytes()))
        })
        .collect()
}

/// The resolvers `/etc/resolv.conf` names.
pub fn resolvers() -> Vec<IpAddr> {
    fs::read_to_string("/etc/resolv.conf")
        .map(|t| resolvers_in(&t))
        .unwrap_or_default()
}

fn resolvers_in(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) is the address for us.
            w.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

/// What a refresh found.
#[derive(Debug, Default)]
pub struct Refresh {
    /// Protected addresses (never banned), with how (`PROOF_GATEWAY`, `PROOF_RESOLVER`).
    pub protected: Vec<(IpAddr, u32)>,
    /// Peers of this namespace's connections, to prove (by [`prove_peers`], a share each
    /// second).
    pub peers: Vec<IpAddr>,
    /// Bans lifted because their source is proven now.
    pub lifted: Vec<IpNet>,
    /// The proof filter brought up to date.
    pub filter: FilterSync,
}

/// Peers proven per call of [`prove_peers`] at most (one a second): a host with a
/// hundred thousand connections is covered within a minute, and no second of `run`'s
/// loop is spent on more than a few thousand map updates.
pub const PEERS_PER_TICK: usize = 4096;

/// Make the protected addresses' proofs and find the peers to prove (see the module's
/// documentation), and lift the bans of sources proven now: a ban is only ever made for
/// an unproven source, so a ban on a proven one means its address was forged before it
/// proved itself. `was_protected` is the previous refresh's protected addresses: those the
/// machine no longer uses lose their proof. Bounded: a few addresses, one dump of the
/// sockets, a walk of the bans (not of the operator's lists), the filter's rows.
pub fn refresh(
    maps: &mut Maps,
    settings: &Settings,
    now: u64,
    was_protected: &[(IpAddr, u32)],
) -> anyhow::Result<Refresh> {
    let key = |a: IpAddr| source_key(a, settings.ipv4_prefix, settings.ipv6_prefix);
    let mut out = Refresh::default();
    for a in gateways() {
        out.protected.push((a, PROOF_GATEWAY));
    }
    for a in resolvers() {
        out.protected.push((a, PROOF_RESOLVER));
    }
    let now_protected: HashSet<IpAddr> = out.protected.iter().map(|(a, _)| *a).collect();
    for (a, _) in was_protected {
        if !now_protected.contains(a) {
            let _ = maps.verified.remove(&key(*a));
        }
    }
    for (a, how) in &out.protected {
        record(maps, &key(*a), *how, PROOF_FOREVER, now)?;
    }
    match crate::sockdiag::connected_peers() {
        Ok(peers) => out.peers = peers,
        Err(e) => log::debug!("listing connections: {e}"),
    }
    for e in rules::list_bans(maps)? {
        let proven = get(maps, &key(e.net.network()), now)?.is_some()
            && u32::from(e.net.prefix_len()) == key(e.net.network()).prefix_len;
        if proven && rules::delete(maps, &e.net)?.is_some() {
            out.lifted.push(e.net);
        }
    }
    out.filter = sync_filter(maps, now)?;
    Ok(out)
}

/// Prove up to [`PEERS_PER_TICK`] peers of `queue` (taken from its end) for
/// `verified-for`, setting their filter bits row by row. Returns the ban of each that had
/// one (lifted: its source owns its address).
pub fn prove_peers(
    maps: &mut Maps,
    settings: &Settings,
    now: u64,
    queue: &mut Vec<IpAddr>,
) -> anyhow::Result<Vec<IpNet>> {
    let n = queue.len().min(PEERS_PER_TICK);
    let batch: Vec<IpAddr> = queue.split_off(queue.len() - n);
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let until = now.saturating_add(settings.verified_for.as_nanos() as u64);
    let keys: Vec<SourceKey> = batch
        .iter()
        .map(|a| source_key(*a, settings.ipv4_prefix, settings.ipv6_prefix))
        .collect();
    mark_all(maps, &keys)?;
    let mut lifted = Vec::new();
    for k in &keys {
        record_marked(maps, k, PROOF_SOCKET, until, now)?;
        if let Some(net) = crate::daemon::source_net(k)
            && rules::get(maps, &net)?.is_some_and(|r| r.kind == RULE_BAN)
            && rules::delete(maps, &net)?.is_some()
        {
            lifted.push(net);
        }
    }
    Ok(lifted)
}

/// Set the filter bits of `keys`, reading and writing each row once.
fn mark_all(maps: &mut Maps, keys: &[SourceKey]) -> anyhow::Result<()> {
    let seed = crate::sources::seed(maps)?;
    let mut rows: std::collections::BTreeMap<u32, Vec<(usize, u64)>> = Default::default();
    for k in keys {
        let (row, word, bit) = proof_filter_bit(set_of(k, &seed));
        rows.entry(row).or_default().push((word, bit));
    }
    for (row, bits) in rows {
        let mut words = maps
            .proof_filter
            .get(&row, 0)
            .context("reading the proof filter")?;
        let before = words;
        for (word, bit) in bits {
            words[word] |= bit;
        }
        if words != before {
            maps.proof_filter
                .set(row, words, 0)
                .context("writing the proof filter")?;
        }
    }
    Ok(())
}

/// Where `run` pins the `sock_ops` program's link.
pub fn link_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join("proofs")
}

/// The cgroup v2 hierarchy's root, from this process's mount table.
fn cgroup2_root() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        // ... MOUNT-POINT ... - FSTYPE SOURCE OPTIONS
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The root of the cgroup v2 hierarchy, opened, and how it was found. When this mount
/// namespace shows none (`ip netns exec` remounts `/sys`; hosts with cgroup v1 mounted
/// only), a private mount is made, opened and detached at once: the open directory holds
/// the cgroup. `None` when that fails too (no CAP_SYS_ADMIN to mount, or no cgroup v2).
fn open_cgroup2_root() -> Option<(fs::File, String)> {
    if let Some(root) = cgroup2_root() {
        let f = fs::File::open(&root).ok()?;
        return Some((f, root.display().to_string()));
    }
    let dir = PathBuf::from(format!("/run/synguard-cgroup2-{}", std::process::id()));
    fs::create_dir_all(&dir).ok()?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let fstype = c"cgroup2";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let opened = (rc == 0).then(|| fs::File::open(&dir).ok()).flatten();
    if rc == 0 {
        // SAFETY: the path we just mounted on.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_dir(&dir);
    opened.map(|f| (f, "root (mounted privately)".to_string()))
}

/// Load the `sock_ops` program and attach it to the root cgroup, pinning its link (a
/// previous run's pin is replaced). `Ok(None)` when no cgroup v2 hierarchy can be opened:
/// proofs then come from cookies and from `run`'s own look at connections only (said by
/// the caller). Returns where it attached.
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path) -> anyhow::Result<Option<String>> {
    let Some((cgroup, root)) = open_cgroup2_root() else {
        return Ok(None);
    };
    let prog: &mut SockOps = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
        .try_into()?;
    prog.load()
        .context("the kernel refused the sock_ops program")?;
    // Through a BPF link (Linux 5.7+), which always sits beside other programs on the
    // cgroup; the kernel refuses any flag there, so the mode that sends none.
    let id = prog
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .with_context(|| format!("attaching the sock_ops program to the cgroup {root}"))?;
    let link = FdLink::try_from(prog.take_link(id)?).map_err(|_| {
        anyhow!("the kernel attached the sock_ops program without a BPF link (Linux 5.7+)")
    })?;
    let path = link_path(pin_dir);
    // The previous run's link (if any) goes once ours is in place: no gap.
    let _ = fs::remove_file(&path);
    link.pin(&path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(Some(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateways_from_the_route_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t7E0200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t80FFFFFF\t0\t0\t0\n";
        assert_eq!(
            gateways_v4(v4),
            vec!["192.0.2.126".parse::<IpAddr>().unwrap()]
        );
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  20010db80002000000000000000000fe 00000400 00000001 00000000 00000003 eth0\n\
                  20010db8000200000000000000000000 40 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            gateways_v6(v6),
            vec!["2001:db8:2::fe".parse::<IpAddr>().unwrap()]
        );
        assert!(gateways_v4("Iface\tDestination\n").is_empty());
    }

    #[test]
    fn resolvers_from_resolv_conf() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\n\
                    nameserver fe80::1%eth0\nnameserver not-an-address\noptions edns0\n";
        assert_eq!(
            resolvers_in(text),
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
