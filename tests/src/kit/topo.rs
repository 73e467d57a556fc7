//! The test topology: a server (192.0.2.1 on its loopback) with one link to the
//! employees' network and one to the attacker's, a private BPF filesystem for the pins,
//! and helpers to run `synguard` as a daemon in the server's namespace and as a CLI from
//! the host's (so every CLI test also proves the commands work across namespaces).
//!
//! Also what every topology of namespaces here is made with besides [`netns`]'s
//! namespaces and veths (the lab's [`LabNet`](crate::lab::LabNet) too): an attacker's
//! host that does not reset the server's answers ([`drop_own_rsts`]), a no-op XDP
//! program on a veth peer ([`xdp_peer`]), and `synguard run` started in a namespace
//! ([`synguard_in`], [`start_daemon`]).
//!
//! [`netns`]: crate::kit::netns

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::kit::{
    baseline::{self, Noop},
    http::Get,
    netns::{Bpffs, ChildGuard, Netns, TempDir, unique, veth},
    synguard_bin,
};

/// The server's addresses, in every topology here (the lab's too).
pub const SERVER4: &str = "192.0.2.1";
pub const SERVER6: &str = "2001:db8:2::1";
/// The web server: port 80 of [`SERVER4`].
pub const TARGET: &str = "192.0.2.1:80";
/// The test topology's employee and attacker.
pub const CLIENT: &str = "198.51.100.10";
pub const ATTACKER: &str = "203.0.113.66";

/// Fetch the page at [`TARGET`] from inside `ns`, from a chosen address of it or the
/// one routing picks.
pub fn fetch_in(ns: &Netns, local: Option<&str>, timeout: Duration) -> Result<Duration, String> {
    let local: Option<IpAddr> = local.map(|a| a.parse().expect("addr"));
    Get::new(TARGET.parse().expect("addr"))
        .bind(local)
        .timeout(timeout)
        .send_in(ns)
}

/// Make `ns` a real flooder's host: its kernel sends no RSTs (nftables). Real flooders do
/// not answer the server's SYN-ACKs; without this the attacker's own kernel would reset
/// every half-open connection for the server.
pub fn drop_own_rsts(ns: &Netns) {
    ns.exec(&[
        "nft",
        "add table inet sg; add chain inet sg out { type filter hook output priority 0; }; \
         add rule inet sg out tcp flags rst drop",
    ]);
}

/// A no-op XDP program (`XDP_PASS`) on `ifname` in `ns`, attached for as long as it is
/// held: on veth, frames that a native XDP program sends back with `XDP_TX` (a cookie
/// SYN-ACK) are only delivered if the peer runs an XDP program too.
pub fn xdp_peer(ns: &Netns, ifname: &str) -> anyhow::Result<Noop> {
    let ifname = ifname.to_string();
    ns.spawn(move || {
        let mut noop = Noop::load(baseline::XDP_PASS)?;
        noop.attach(&ifname)?;
        anyhow::Ok(noop)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attaching a no-op XDP program panicked"))?
}

/// `[WRAPPER...] synguard --pin-dir PIN_DIR --state-dir STATE_DIR` in `ns`, for the
/// caller to add the command and its arguments to.
pub fn synguard_in(ns: &Netns, wrapper: &[&str], pin_dir: &Path, state_dir: &Path) -> Command {
    let bin = synguard_bin();
    let mut cmd = match wrapper.split_first() {
        None => ns.command(bin),
        Some((first, rest)) => {
            let mut c = ns.command(first);
            c.args(rest).arg(bin);
            c
        }
    };
    cmd.arg("--pin-dir")
        .arg(pin_dir)
        .arg("--state-dir")
        .arg(state_dir);
    cmd
}

/// Spawn `cmd` (a `synguard run`) with its output in `log`; returns once it says it is
/// running (panics, with the log, if it does not within `within`).
pub fn start_daemon(cmd: Command, log: PathBuf, within: Duration) -> ChildGuard {
    let mut g = ChildGuard::spawn_logged(cmd, log);
    g.wait_for_log("running:", within);
    g
}

/// The test topology's namespaces (see the module's documentation).
pub struct Lab {
    pub server: Netns,
    pub client: Netns,
    pub attacker: Netns,
    pub bpffs: Bpffs,
    /// The daemon's state directory (its journal).
    pub state: TempDir,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    /// The topology, with the attacker's own RSTs dropped (nftables), as on a real
    /// flooder's host.
    pub fn new() -> Self {
        let lab = Self::minimal();
        drop_own_rsts(&lab.attacker);
        lab
    }

    /// The topology with nothing but `ip` (the kernel matrix's guests have no nftables):
    /// the attacker's kernel resets the server's answers to SYNs it did not send.
    pub fn minimal() -> Self {
        let server = Netns::new("srv");
        let client = Netns::new("cli");
        let attacker = Netns::new("att");
        veth(
            &server,
            "sgc",
            "198.51.100.1/24",
            &client,
            "eth0",
            &format!("{CLIENT}/24"),
        );
        veth(
            &server,
            "sga",
            "203.0.113.1/24",
            &attacker,
            "eth0",
            &format!("{ATTACKER}/24"),
        );
        server.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
        client.ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.1"]);
        attacker.ip(&["route", "add", "192.0.2.0/24", "via", "203.0.113.1"]);
        Self {
            server,
            client,
            attacker,
            bpffs: Bpffs::new(),
            state: TempDir::new("state"),
        }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_dir()
    }

    /// `synguard --pin-dir P ARGS` as a daemon in the server's namespace; returns once it
    /// says it is running.
    pub fn daemon(&self, args: &[&str]) -> ChildGuard {
        self.daemon_via(&[], args)
    }

    /// Like [`Lab::daemon`], started through `wrapper` (e.g. `setpriv` with options).
    pub fn daemon_via(&self, wrapper: &[&str], args: &[&str]) -> ChildGuard {
        let mut cmd = synguard_in(&self.server, wrapper, &self.pin_dir(), &self.state.path);
        cmd.args(args);
        let log = std::env::temp_dir().join(format!("{}.log", unique("sgd")));
        // Generous: the kernel matrix runs this in emulated machines.
        start_daemon(cmd, log, Duration::from_secs(60))
    }

    /// The CLI, from the host's namespace, on this lab's pin dir.
    pub fn sg(&self, args: &[&str]) -> Output {
        self.sg_env(args, &[])
    }

    pub fn sg_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(synguard_bin());
        c.arg("--pin-dir")
            .arg(self.pin_dir())
            .arg("--state-dir")
            .arg(&self.state.path)
            .args(args);
        c.env_remove("SSH_CONNECTION").env_remove("SSH_CLIENT");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run synguard")
    }

    /// The CLI, expecting success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sg(args);
        assert!(
            out.status.success(),
            "synguard {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The CLI with `--json`, parsed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// Run hping3 in the attacker's namespace; returns its combined output.
    pub fn hping(&self, seconds: u32, args: &[&str]) -> String {
        let secs = seconds.to_string();
        let mut a = vec!["timeout", "-s", "INT", secs.as_str(), "hping3"];
        a.extend_from_slice(args);
        let out = self.attacker.try_exec(&a);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// hping3's own count of what it sent.
pub fn transmitted(hping_output: &str) -> u64 {
    hping_output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in hping3 output: {hping_output}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_target_is_the_servers_port_80() {
        assert_eq!(super::TARGET, format!("{}:80", super::SERVER4));
    }
}
