//! Addresses and prefixes as users type them, and as the kernel maps key them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::usage;

/// Parse a CIDR (`192.0.2.0/24`, `2001:db8::/32`) or a bare address (taken as `/32` or
/// `/128`). Host bits must be clear: `10.0.0.5/24` is refused with the network form shown,
/// because silently widening or narrowing what an operator blocks is how lockouts happen.
/// IPv4-mapped IPv6 prefixes (`::ffff:192.0.2.0/120`) are turned into IPv4, since that is
/// how those packets arrive.
pub fn parse_cidr(text: &str) -> anyhow::Result<IpNet> {
    let t = text.trim();
    let net = if t.contains('/') {
        t.parse::<IpNet>().map_err(|_| {
            usage(format!(
                "not a CIDR: {t} (expected an address like 192.0.2.1 or a prefix like \
                 192.0.2.0/24 or 2001:db8::/48)"
            ))
        })?
    } else {
        IpNet::from(parse_addr(t)?)
    };
    if net.addr() != net.network() {
        return Err(usage(format!(
            "{t} has host bits set; the network is {}/{} (use that, or the address alone \
             for a single host)",
            net.network(),
            net.prefix_len()
        )));
    }
    Ok(normalize(net))
}

/// Parse a single address.
pub fn parse_addr(text: &str) -> anyhow::Result<IpAddr> {
    let t = text.trim();
    t.parse::<IpAddr>().map(normalize_addr).map_err(|_| {
        usage(format!(
            "not an IP address: {t} (expected e.g. 192.0.2.1 or 2001:db8::1)"
        ))
    })
}

fn normalize_addr(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => a,
        },
        v4 => v4,
    }
}

fn normalize(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

/// The network an address belongs to when aggregated to a prefix length.
pub fn aggregate(addr: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(
            Ipv4Net::new(a, v4_prefix.min(32)).map_or_else(|_| Ipv4Net::from(a), |n| n.trunc()),
        ),
        IpAddr::V6(a) => IpNet::V6(
            Ipv6Net::new(a, v6_prefix.min(128)).map_or_else(|_| Ipv6Net::from(a), |n| n.trunc()),
        ),
    }
}

/// The key the kernel meters (and proves) an address under: the address aggregated to
/// `ipv4-prefix` / `ipv6-prefix`, as `synguard_common::source_key_v4` / `_v6` make it. An
/// IPv4-mapped IPv6 address is the IPv4 address (as dual-stack sockets report peers).
pub fn source_key(addr: IpAddr, v4_prefix: u8, v6_prefix: u8) -> synguard_common::SourceKey {
    let addr = match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match addr {
        IpAddr::V4(a) => {
            let len = u32::from(v4_prefix.min(32));
            synguard_common::source_key_v4(a.octets(), synguard_common::prefix_mask::<4>(len), len)
        }
        IpAddr::V6(a) => {
            let len = u32::from(v6_prefix.min(128));
            synguard_common::source_key_v6(a.octets(), synguard_common::prefix_mask::<16>(len), len)
        }
    }
}

/// Build an IPv4 network from key bytes.
///
/// rustc 1.95.0 in release mode compiled the plain version of this, inlined into
/// `daemon::source_net`, into code that returns `0.0.0.0/0` for every key (the address
/// and prefix loaded, checked, then zeros stored; debug builds were right). `black_box`
/// keeps the optimizer from fusing the loads that it got wrong. `cargo xtask test` runs
/// the release binary, and the lab checks every source a report names, so a
/// regression shows.
pub fn v4_net(addr: [u8; 4], prefix_len: u32) -> Option<IpNet> {
    let addr = std::hint::black_box(addr);
    let prefix_len = u8::try_from(prefix_len).ok()?;
    Ipv4Net::new(Ipv4Addr::from(addr), prefix_len)
        .ok()
        .map(IpNet::V4)
}

/// Build an IPv6 network from key bytes.
pub fn v6_net(addr: [u8; 16], prefix_len: u32) -> Option<IpNet> {
    Ipv6Net::new(Ipv6Addr::from(addr), u8::try_from(prefix_len).ok()?)
        .ok()
        .map(IpNet::V6)
}

/// Whether `outer` contains all of `inner` (same family, shorter or equal prefix).
pub fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// The driver behind a network interface of the current namespace (`ethtool -i`'s
/// "driver": `veth`, `mlx5_core`, ...), or `None` if the kernel does not say.
pub fn driver(ifname: &str) -> Option<String> {
    // `struct ethtool_drvinfo` (linux/ethtool.h): the command, then the driver's name
    // in 32 bytes, and more the ioctl fills that is not read here.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: an all-zero `ifreq` is valid; the name is NUL-terminated (checked length).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a plain socket call; the descriptor is closed by `OwnedFd`.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a socket we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `req` names the interface and points at `info`, which is large enough for
    // the kernel's `ethtool_drvinfo` and outlives the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL,
            &raw mut req,
        )
    };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    std::str::from_utf8(&info.driver[..end])
        .ok()
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_USAGE, exit_code};

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_cidr(" 2001:db8::/32 ").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_cidr("::ffff:192.0.2.0/120").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn bad_cidrs_are_usage_errors_that_explain() {
        for (bad, want) in [
            ("300.1.2.3/33", "not a CIDR: 300.1.2.3/33"),
            ("192.0.2.0/33", "not a CIDR"),
            ("banana", "not an IP address: banana"),
            ("", "not an IP address"),
            ("10.0.0.5/24", "host bits set; the network is 10.0.0.0/24"),
            ("2001:db8::1/32", "the network is 2001:db8::/32"),
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert_eq!(exit_code(&e), EXIT_USAGE);
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn aggregation_and_cover() {
        let a = parse_addr("203.0.113.77").unwrap();
        assert_eq!(aggregate(a, 24, 64).to_string(), "203.0.113.0/24");
        let b = parse_addr("2001:db8:1:2:3:4:5:6").unwrap();
        assert_eq!(aggregate(b, 32, 64).to_string(), "2001:db8:1:2::/64");
        let wide = parse_cidr("10.0.0.0/8").unwrap();
        let narrow = parse_cidr("10.1.0.0/16").unwrap();
        assert!(covers(&wide, &narrow));
        assert!(!covers(&narrow, &wide));
        assert!(covers(&wide, &wide));
        assert!(!covers(&wide, &parse_cidr("2001:db8::/32").unwrap()));
    }
}
