//! The one list of the Debian packages each `cargo xtask` command needs: the command
//! installs them first (`bootstrap::packages`), then runs its children with only their
//! programs on PATH (`guard`), so a program a list forgets fails here, not on a fresh
//! machine.
//!
//! Not listed: what every Debian system has (`Essential: yes` or `Priority: required`),
//! e.g. coreutils (`cat`, `timeout`, `md5sum`, `chroot`), dash (`sh`), dpkg (`dpkg-deb`),
//! gzip (`zcat`), findutils, util-linux (`setpriv`, `unshare`), mount, apt. The guard
//! allows those too.

/// An xtask command, as far as its packages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Build,
    Run,
    Dist,
    Lab,
    Test,
    Bench,
    Kmatrix,
}

impl Cmd {
    /// Every command.
    #[cfg(test)]
    pub const ALL: [Cmd; 7] = [Build, Run, Dist, Lab, Test, Bench, Kmatrix];

    /// The subcommand's name (`cargo xtask NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Build => "build",
            Run => "run",
            Dist => "dist",
            Lab => "lab",
            Test => "test",
            Bench => "bench",
            Kmatrix => "kmatrix",
        }
    }
}

use Cmd::{Bench, Build, Dist, Kmatrix, Lab, Run, Test};

/// Every command builds `synguard` first.
const EVERY: &[Cmd] = &[Build, Run, Dist, Lab, Test, Bench, Kmatrix];
/// The kernel matrix, which `cargo xtask test` runs too.
const KMATRIX: &[Cmd] = &[Test, Kmatrix];
/// The lab's network: `cargo xtask test` runs a short lab and the quick bench, whose
/// survival part floods the lab's network.
const NETWORK: &[Cmd] = &[Lab, Test, Bench];

/// Debian package and the commands that need it.
pub const PACKAGES: &[(&str, &[Cmd])] = &[
    // cargo links with `cc` (gcc, through the `cc` alternative), also bpf-linker's build.
    ("gcc", EVERY),
    // crt1.o, libc.so and the headers that `cc` links the binaries with.
    ("libc6-dev", EVERY),
    // `strip` and `objdump` (the glibc the binary needs): `cargo xtask dist`, which the
    // tests run; the kernel matrix strips the programs it packs into its guests.
    ("binutils", &[Dist, Test, Kmatrix]),
    // `ip` (namespaces, veths, routes, `ip netns exec`), `ss` and `nstat` (the server's
    // half-open connections and listen drops): tests/src/kit/netns.rs, lab/, e2e_flood; the
    // kernel matrix packs `ip` into its guests.
    ("iproute2", &[Lab, Test, Bench, Kmatrix]),
    // `ping`: the lab waits until every host reaches the server.
    ("iputils-ping", NETWORK),
    // `hping3`: the SYN floods of the lab, the e2e and the cli tests.
    ("hping3", NETWORK),
    // `nft`: `synguard run` reads the NAT rules with it (attack mode leaves SYNs for ports
    // they rewrite to the kernel); the lab's container DNAT; the attacker drops its own
    // RSTs; the survival floors' rules (bench).
    ("nftables", &[Run, Lab, Test, Bench]),
    // `iptables` (iptables-nft, Debian 12's): the lab's `nat-guests` profile masquerades
    // its guest as Docker does, through the compatibility layer `run` must read (`xt`
    // targets in `nft -j`).
    ("iptables", NETWORK),
    // `nginx`: the lab's web server.
    ("nginx", NETWORK),
    // `sysctl`: every namespace's settings (tests/src/kit/netns.rs).
    ("procps", NETWORK),
    // `ethtool`: GRO, offloads and NIC counters of the bench's links (tests/src/bench/survival.rs;
    // the quick bench runs in the tests).
    ("ethtool", &[Test, Bench]),
    // xdp-filter's BPF objects (xdpfilt_*.o), which the bench loads as its yardstick.
    ("libxdp1", &[Test, Bench]),
    // xdp-filter itself, the yardstick (the bench loads its objects from libxdp1; the
    // tool is there to compare by hand).
    ("xdp-tools", &[Test, Bench]),
    // `crowdsec` and `cscli`: the real Local API the fleet tests and the bench run, offline,
    // in a namespace of their own with their own config and database under target/
    // (tests/src/kit/lapi.rs). Installed with its registration to the Central API declined
    // first (`bootstrap::packages`, as its README.Debian says).
    ("crowdsec", &[Test, Bench]),
    // `promtool`: checks `synguard metrics` output (tests/tests/cli.rs).
    ("prometheus", &[Test]),
    // `lintian`: the package has no error and no warning (tests/tests/dist.rs).
    ("lintian", &[Test]),
    // `debootstrap`: the fresh Debian root the package is installed into (dist tests).
    ("debootstrap", &[Test]),
    // `systemd-analyze`: the unit's sandboxing and verification (dist tests).
    ("systemd", &[Test]),
    // `file`: the packaged binary is a stripped x86-64 ELF (dist tests); the kernel
    // matrix's busybox is the static one.
    ("file", &[Test, Kmatrix]),
    // `qemu-system-x86_64`: the kernel matrix boots each kernel in it (xtask/src/kmatrix.rs).
    ("qemu-system-x86", KMATRIX),
    // The static busybox: the shell tools the kernel tests call in the matrix's guests.
    ("busybox-static", KMATRIX),
    // `xz`: Debian's kernel modules are xz-compressed; the matrix's guests load them plain.
    ("xz-utils", KMATRIX),
];

/// The packages `cmd` needs, in the table's order.
pub fn of(cmd: Cmd) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(_, cmds)| cmds.contains(&cmd))
        .map(|&(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_builds() {
        for cmd in Cmd::ALL {
            let pkgs = of(cmd);
            assert!(
                pkgs.contains(&"gcc") && pkgs.contains(&"libc6-dev"),
                "{}: {pkgs:?}",
                cmd.name()
            );
        }
    }

    /// `cargo xtask test` makes a package (dist), runs a short lab, the quick bench and
    /// the kernel matrix: it needs what they need.
    #[test]
    fn test_needs_what_it_runs() {
        let test = of(Test);
        for cmd in [Dist, Lab, Bench, Kmatrix] {
            for pkg in of(cmd) {
                assert!(test.contains(&pkg), "{pkg} ({}) not in test", cmd.name());
            }
        }
        // Issue 18: the quick bench sets GRO with ethtool.
        assert!(test.contains(&"ethtool"));
    }

    #[test]
    fn each_package_once() {
        for (i, (name, cmds)) in PACKAGES.iter().enumerate() {
            assert!(!cmds.is_empty(), "{name} is needed by no command");
            assert!(
                PACKAGES[..i].iter().all(|(n, _)| n != name),
                "{name} is listed twice"
            );
        }
    }
}
