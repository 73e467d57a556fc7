//! This machine's own addresses, for attack mode's locality check.
//!
//! Attack mode answers a SYN with a cookie made for the listener the SYN would reach.
//! The kernel's listener lookup matches a socket bound to a wildcard address (`0.0.0.0:80`)
//! for a SYN to *any* address, so without a check a server that also bridges or routes
//! traffic (VMs on a bridged NIC, containers with addresses of their own) would answer
//! SYNs meant for its guests with cookies of its own listener, and the guests would never
//! see their clients. So the XDP program answers only SYNs for the addresses in
//! `SG_LOCAL_V4` and `SG_LOCAL_V6`, which `run` keeps equal to the addresses of the
//! machine's interfaces (`getifaddrs`, at start and every `proofs::REFRESH`); any other
//! SYN goes to the kernel untouched (`syn_not_local`). The check fails safe: an address
//! added since the last refresh, or one that is local only through a `local` route
//! (`ip route add local 10.0.0.0/24 dev lo`), is left to the kernel and its own SYN
//! cookies, never dropped.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context;
use synguard_common::capacity;

use crate::bpf::Maps;

/// The addresses of this network namespace's interfaces.
pub fn addresses() -> anyhow::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing the interfaces' addresses")? {
        let Some(a) = ifa.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            out.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            out.insert(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

/// The key of an IPv4 address in `SG_LOCAL_V4`: its bytes as the packet holds them.
fn key_v4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// What [`sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Addresses now in the maps.
    pub kept: usize,
    /// Addresses left out because a map was full ([`capacity::LOCAL_ADDRS`] per family):
    /// SYNs for them are left to the kernel in attack mode.
    pub left_out: usize,
}

/// Make the maps hold exactly `addrs` (as many as fit).
pub fn sync(maps: &mut Maps, addrs: &BTreeSet<IpAddr>) -> anyhow::Result<Synced> {
    let (want4, want6): (BTreeSet<u32>, BTreeSet<[u8; 16]>) = {
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        for a in addrs {
            match a {
                IpAddr::V4(a) => {
                    v4.insert(key_v4(*a));
                }
                IpAddr::V6(a) => {
                    v6.insert(a.octets());
                }
            }
        }
        (v4, v6)
    };
    let have4: Vec<u32> = maps.local_v4.keys().collect::<Result<_, _>>()?;
    for k in have4.iter().filter(|k| !want4.contains(*k)) {
        maps.local_v4.remove(k).context("updating SG_LOCAL_V4")?;
    }
    let have6: Vec<[u8; 16]> = maps.local_v6.keys().collect::<Result<_, _>>()?;
    for k in have6.iter().filter(|k| !want6.contains(*k)) {
        maps.local_v6.remove(k).context("updating SG_LOCAL_V6")?;
    }
    let cap = capacity::LOCAL_ADDRS as usize;
    let mut out = Synced::default();
    for k in want4.iter().take(cap) {
        maps.local_v4
            .insert(k, 1, 0)
            .context("updating SG_LOCAL_V4")?;
    }
    for k in want6.iter().take(cap) {
        maps.local_v6
            .insert(k, 1, 0)
            .context("updating SG_LOCAL_V6")?;
    }
    out.kept = want4.len().min(cap) + want6.len().min(cap);
    out.left_out = want4.len().saturating_sub(cap) + want6.len().saturating_sub(cap);
    Ok(out)
}

/// The addresses attack mode answers SYNs for, as the maps hold them.
pub fn list(maps: &Maps) -> anyhow::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    for k in maps.local_v4.keys() {
        out.push(IpAddr::V4(Ipv4Addr::from(k?.to_ne_bytes())));
    }
    for k in maps.local_v6.keys() {
        out.push(IpAddr::V6(Ipv6Addr::from(k?)));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v4_key_is_the_address_in_packet_order() {
        let k = key_v4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(k.to_ne_bytes(), [192, 0, 2, 1]);
    }
}
