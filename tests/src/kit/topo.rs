//! The test topology: a server (192.0.2.1 on its loopback) with one link to the
//! employees' network and one to the attacker's, a private BPF filesystem for the pins,
//! and helpers to run `synguard` as a daemon in the server's namespace and as a CLI from
//! the host's (so every CLI test also proves the commands work across namespaces).

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use crate::kit::{
    http::Get,
    netns::{Bpffs, ChildGuard, Netns, TempDir, unique, veth},
    synguard_bin,
};

pub const TARGET: &str = "192.0.2.1:80";

/// Fetch the page at [`TARGET`] from inside `ns`, from a chosen address of it or the
/// one routing picks.
pub fn fetch_in(ns: &Netns, local: Option<&str>, timeout: Duration) -> Result<Duration, String> {
    let local: Option<IpAddr> = local.map(|a| a.parse().expect("addr"));
    Get::new(TARGET.parse().expect("addr"))
        .bind(local)
        .timeout(timeout)
        .send_in(ns)
}
pub const CLIENT: &str = "198.51.100.10";
pub const ATTACKER: &str = "203.0.113.66";

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
        // Real flooders do not answer the server's SYN-ACKs; without this the attacker's
        // own kernel would reset every half-open connection for the server.
        lab.attacker.exec(&[
            "nft",
            "add table inet sg; add chain inet sg out { type filter hook output priority 0; }; \
             add rule inet sg out tcp flags rst drop",
        ]);
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
        let bin = synguard_bin();
        let bin = bin.to_str().expect("utf-8 path");
        let mut cmd = match wrapper.split_first() {
            None => self.server.command(bin),
            Some((first, rest)) => {
                let mut c = self.server.command(first);
                c.args(rest).arg(bin);
                c
            }
        };
        cmd.arg("--pin-dir")
            .arg(self.pin_dir())
            .arg("--state-dir")
            .arg(&self.state.path)
            .args(args);
        let log = std::env::temp_dir().join(format!("{}.log", unique("sgd")));
        let mut g = ChildGuard::spawn_logged(cmd, log);
        // Generous: the kernel matrix runs this in emulated machines.
        g.wait_for_log("running:", Duration::from_secs(60));
        g
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
