//! The lab's network: its namespaces, addresses and routes, the web server (nginx) and
//! `synguard` on the server, and what is read from them (counters, listen drops, the
//! incident report).

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use synguard_common::stat;

use super::RunSpec;
use crate::kit::{
    http::{Deadline, Errors, Expect, Get},
    netns::{Bpffs, ChildGuard, Netns, unique, veth},
    synguard_bin,
    topo::{drop_own_rsts, start_daemon, synguard_in, xdp_peer},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The kernel's own settings (SYN cookies on, large backlogs).
    Defaults,
    /// As on the server in the founding incident: SYN cookies off, backlog 128, and no
    /// remembered "proven" peers (tcp_no_metrics_save=1).
    Legacy,
    /// The web server in a container as Docker runs it: nginx in its own namespace
    /// (192.0.2.194, 2001:db8:3::2) behind a DNAT of the server's port 80, and a host
    /// listener on port 80 too (docker-proxy's); the kernel's own settings.
    Container,
    /// The same without the host listener (Docker's `userland-proxy: false`).
    ContainerNoProxy,
    /// The kernel's own settings, and the server hosts a guest (a container or a VM on a
    /// private network, 192.0.2.202 and 2001:db8:4::2) that it masquerades: the guest
    /// calls an upstream API (198.51.100.200:8080, 2001:db8:5::200) throughout, and
    /// the API's answers reach the server's address with no socket of the server behind
    /// them.
    NatGuests,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Self::Defaults => "defaults",
            Self::Legacy => "legacy",
            Self::Container => "container",
            Self::ContainerNoProxy => "container-no-proxy",
            Self::NatGuests => "nat-guests",
        }
    }
}

pub const EMPLOYEES: u8 = 20;

pub use crate::kit::topo::{SERVER4, SERVER6};
/// The `container` profiles' web server.
pub const CONTAINER4: &str = "192.0.2.194";
pub const CONTAINER6: &str = "2001:db8:3::2";
/// The `nat-guests` profile's guest, and the upstream API it calls.
pub const GUEST4: &str = "192.0.2.202";
pub const GUEST6: &str = "2001:db8:4::2";
pub const API4: &str = "198.51.100.200:8080";
pub const API6: &str = "[2001:db8:5::200]:8080";
const PAGE: &str = "<!doctype html><title>Sunny Travel</title><h1>Sunny Travel</h1>\
<p>Book your summer trip today: flights, hotels, packages.</p>\n";

/// The namespaces of one run and what lives in them.
pub struct LabNet {
    pub router: Netns,
    pub server: Netns,
    pub employees: Netns,
    pub attacker: Netns,
    pub sink: Netns,
    pub bpffs: Bpffs,
    dir: PathBuf,
    nginx: Option<ChildGuard>,
    /// The `container` profiles' container and its nginx.
    pub container: Option<Netns>,
    /// The `nat-guests` profile's guest, and the upstream API (in the employees'
    /// namespace).
    pub guest: Option<Netns>,
    _api: Option<crate::kit::traffic::Server>,
    _api6: Option<crate::kit::traffic::Server>,
    container_nginx: Option<ChildGuard>,
    pub synguard: Option<ChildGuard>,
    /// A no-op XDP program on the router's end of the server's link: on veth, frames a
    /// native program sends back with XDP_TX (the survival bench's synguard and floors)
    /// are only delivered if the peer runs an XDP program too. (`run`'s `auto` attaches
    /// to a veth in generic mode, which needs none.) Attached in every run, so rows
    /// compare.
    _peer_xdp: crate::kit::baseline::Noop,
}

impl Drop for LabNet {
    fn drop(&mut self) {
        // Stop the daemon first (SIGTERM: it detaches), then everything else goes with
        // the namespaces.
        if let Some(mut d) = self.synguard.take() {
            d.signal(libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Some(c) = d.child.as_mut()
                    && matches!(c.try_wait(), Ok(Some(_)))
                {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.nginx.take();
        self.container_nginx.take();
        self._api.take();
        self._api6.take();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Start nginx in `ns`, serving `www` (the page) on port 80 of `v4` and `v6`, with its
/// configuration, pid file and logs in `dir`.
fn start_nginx(
    ns: &Netns,
    dir: &std::path::Path,
    www: &std::path::Path,
    v4: &str,
    v6: &str,
) -> anyhow::Result<ChildGuard> {
    let d = dir.display();
    let w = www.display();
    fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n \
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n \
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n \
             server {{\n  listen {v4}:80 backlog=511;\n  listen [{v6}]:80 backlog=511;\n  \
             root {w}/www;\n  index index.html;\n }}\n}}\n"
        ),
    )?;
    let mut cmd = ns.command("nginx");
    cmd.args([
        "-e",
        &format!("{d}/error.log"),
        "-c",
        &format!("{d}/nginx.conf"),
    ])
    .args(["-g", "daemon off;"]);
    Ok(ChildGuard::spawn_logged(cmd, dir.join("nginx.out")))
}

impl LabNet {
    pub fn new(profile: Profile) -> anyhow::Result<Self> {
        let router = Netns::new("lab-router");
        let server = Netns::new("lab-server");
        let employees = Netns::new("lab-employees");
        let attacker = Netns::new("lab-attacker");
        let sink = Netns::new("lab-sink");
        veth(
            &router,
            "r-srv",
            "192.0.2.126/25",
            &server,
            "eth0",
            "192.0.2.1/25",
        );
        veth(
            &router,
            "r-emp",
            "198.51.100.254/24",
            &employees,
            "eth0",
            "198.51.100.10/24",
        );
        veth(
            &router,
            "r-att",
            "203.0.113.1/31",
            &attacker,
            "eth0",
            "203.0.113.0/31",
        );
        veth(
            &router,
            "r-sink",
            "192.0.2.249/30",
            &sink,
            "eth0",
            "192.0.2.250/30",
        );
        router.ip_batch(&[
            "addr add 2001:db8:2::fe/64 dev r-srv nodad".into(),
            "addr add 2001:db8:5::fe/64 dev r-emp nodad".into(),
            "addr add 2001:db8:6::fe/64 dev r-att nodad".into(),
            "addr add 2001:db8:f::1/64 dev r-sink nodad".into(),
            "route add 203.0.113.0/24 via 203.0.113.0".into(),
            "route add 198.18.0.0/15 via 192.0.2.250".into(),
            "route add 2001:db8:8000::/33 via 2001:db8:f::2".into(),
        ]);
        for k in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            let (key, v) = k.split_once('=').expect("k=v");
            router.sysctl(key, v);
        }
        server.ip_batch(&[
            "addr add 2001:db8:2::1/64 dev eth0 nodad".into(),
            "route add default via 192.0.2.126".into(),
            "route add default via 2001:db8:2::fe".into(),
        ]);
        let mut emp = Vec::new();
        for i in 0..EMPLOYEES {
            if i > 0 {
                emp.push(format!("addr add 198.51.100.{}/24 dev eth0", 10 + i));
            }
            emp.push(format!(
                "addr add 2001:db8:5::{:x}/64 dev eth0 nodad",
                0x10 + i
            ));
        }
        emp.push("route add default via 198.51.100.254".into());
        emp.push("route add default via 2001:db8:5::fe".into());
        employees.ip_batch(&emp);
        let mut att = vec![
            "addr add 2001:db8:6::1/64 dev eth0 nodad".to_string(),
            "route add default via 203.0.113.1".into(),
            "route add default via 2001:db8:6::fe".into(),
        ];
        for i in 2..=251 {
            att.push(format!("addr add 203.0.113.{i}/32 dev eth0"));
        }
        attacker.ip_batch(&att);
        drop_own_rsts(&attacker);
        sink.ip_batch(&["addr add 2001:db8:f::2/64 dev eth0 nodad".into()]);

        match profile {
            Profile::Defaults
            | Profile::Container
            | Profile::ContainerNoProxy
            | Profile::NatGuests => {}
            Profile::Legacy => {
                for (k, v) in [
                    ("net.ipv4.tcp_syncookies", "0"),
                    ("net.ipv4.tcp_max_syn_backlog", "128"),
                    ("net.core.somaxconn", "128"),
                    ("net.ipv4.tcp_no_metrics_save", "1"),
                ] {
                    server.sysctl(k, v);
                }
            }
        }

        let dir = std::env::temp_dir().join(unique("sglab-"));
        fs::create_dir_all(dir.join("www"))?;
        fs::write(dir.join("www/index.html"), PAGE)?;
        use std::os::unix::fs::PermissionsExt as _;
        for d in [&dir, &dir.join("www")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        }
        let container = matches!(profile, Profile::Container | Profile::ContainerNoProxy)
            .then(|| Netns::new("lab-ctr"));
        let mut container_nginx = None;
        if let Some(ctr) = &container {
            veth(
                &server,
                "ctr0",
                "192.0.2.193/30",
                ctr,
                "eth0",
                &format!("{CONTAINER4}/30"),
            );
            server.ip_batch(&["addr add 2001:db8:3::1/64 dev ctr0 nodad".into()]);
            ctr.ip_batch(&[
                format!("addr add {CONTAINER6}/64 dev eth0 nodad"),
                "route add default via 192.0.2.193".into(),
                "route add default via 2001:db8:3::1".into(),
            ]);
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ] {
                server.sysctl(k, v);
            }
            // As Docker publishes a port: the server's port 80 rewritten to the
            // container's, before routing.
            server.exec(&[
                "nft",
                &format!(
                    "add table inet sgnat; add chain inet sgnat pre {{ type nat hook prerouting \
                     priority -100; }}; add rule inet sgnat pre ip daddr {SERVER4} tcp dport 80 \
                     dnat ip to {CONTAINER4}; add rule inet sgnat pre ip6 daddr {SERVER6} tcp \
                     dport 80 dnat ip6 to {CONTAINER6}"
                ),
            ]);
            let cdir = dir.join("container");
            fs::create_dir_all(&cdir)?;
            container_nginx = Some(start_nginx(ctr, &cdir, &dir, CONTAINER4, CONTAINER6)?);
        }
        let guest = (profile == Profile::NatGuests).then(|| Netns::new("lab-guest"));
        let (mut api, mut api6) = (None, None);
        if let Some(g) = &guest {
            veth(
                &server,
                "gst0",
                "192.0.2.201/30",
                g,
                "eth0",
                &format!("{GUEST4}/30"),
            );
            server.ip_batch(&["addr add 2001:db8:4::1/64 dev gst0 nodad".into()]);
            g.ip_batch(&[
                format!("addr add {GUEST6}/64 dev eth0 nodad"),
                "route add default via 192.0.2.201".into(),
                "route add default via 2001:db8:4::1".into(),
            ]);
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ] {
                server.sysctl(k, v);
            }
            // As Docker does on Debian 12 (iptables-nft, whose targets `nft` shows as `xt`
            // statements): the guest's connections leave with the server's address.
            server.exec(&[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "192.0.2.200/30",
                "!",
                "-o",
                "gst0",
                "-j",
                "MASQUERADE",
            ]);
            server.exec(&[
                "ip6tables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "2001:db8:4::/64",
                "!",
                "-o",
                "gst0",
                "-j",
                "MASQUERADE",
            ]);
            employees.ip_batch(&[
                "addr add 198.51.100.200/24 dev eth0".into(),
                "addr add 2001:db8:5::200/64 dev eth0 nodad".into(),
            ]);
            api = Some(crate::kit::traffic::Server::start(
                &employees,
                API4.parse()?,
            ));
            api6 = Some(crate::kit::traffic::Server::start(
                &employees,
                API6.parse()?,
            ));
        }
        // The server's own nginx; with a container, the listener docker-proxy keeps on the
        // published port (it serves the same page, so a client it answered still counts).
        let nginx = (profile != Profile::ContainerNoProxy)
            .then(|| start_nginx(&server, &dir, &dir, SERVER4, SERVER6))
            .transpose()?;
        let peer_xdp = xdp_peer(&router, "r-srv")?;
        let mut net = Self {
            router,
            server,
            employees,
            attacker,
            sink,
            bpffs: Bpffs::new(),
            dir,
            nginx,
            container,
            container_nginx,
            guest,
            _api: api,
            _api6: api6,
            synguard: None,
            _peer_xdp: peer_xdp,
        };
        net.wait_for_web()?;
        // Resolve neighbours on every hop once, so that no measurement includes the one
        // packet a fresh IPv6 neighbour lookup loses (a first connection would otherwise
        // wait a second for its SYN to be retransmitted, with or without synguard).
        for target in [SERVER4, SERVER6] {
            let _ = net
                .employees
                .try_exec(&["ping", "-c", "1", "-W", "1", target]);
        }
        Ok(net)
    }

    fn wait_for_web(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let target: SocketAddr = format!("{SERVER4}:80").parse()?;
            let ok = self
                .employees
                .spawn(move || {
                    page_request(target)
                        .timeout(Duration::from_millis(500))
                        .send()
                        .is_ok()
                })
                .join()
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                let log = fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                bail!("nginx did not start serving: {log}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start `synguard run` on the server's interface.
    pub fn start_synguard(&mut self, extra: &[String]) -> anyhow::Result<()> {
        self.start_synguard_with(extra, &[], &[])
    }

    /// [`Self::start_synguard`] through `wrapper` (e.g. `prlimit` with options), with
    /// `env` set.
    pub fn start_synguard_with(
        &mut self,
        extra: &[String],
        wrapper: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let mut cmd = synguard_in(&self.server, wrapper, &self.bpffs.pin_dir(), &self.dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["run", "--iface", "eth0"]).args(extra);
        self.synguard = Some(start_daemon(
            cmd,
            self.dir.join("synguard.log"),
            Duration::from_secs(20),
        ));
        Ok(())
    }

    /// Stop synguard (its journal gets the last rate sample) and ask `synguard report`
    /// what it saw: the attack types it named, and, with `spec.report_dir`, the report
    /// itself as NAME.md and NAME.svg.
    pub fn report(&mut self, spec: &RunSpec, name: &str) -> anyhow::Result<String> {
        if let Some(mut d) = self.synguard.take() {
            d.signal(libc::SIGTERM);
            d.wait(Duration::from_secs(10));
        }
        let run = |extra: &[&str]| -> anyhow::Result<String> {
            let out = std::process::Command::new(synguard_bin())
                .arg("--state-dir")
                .arg(&self.dir)
                .arg("report")
                .args(extra)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "synguard report: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let json: serde_json::Value = serde_json::from_str(&run(&["--format", "json"])?)?;
        if let Some(dir) = &spec.report_dir {
            fs::create_dir_all(dir)?;
            let md = dir.join(format!("{name}.md"));
            run(&["--output", md.to_str().context("path")?])?;
        }
        // Every source the report names is a real prefix (the journal's sources are /8
        // to /32 and /16 to /128): a `0.0.0.0/0` here once meant a miscompiled release.
        for row in json["top_sources"].as_array().into_iter().flatten() {
            let source = row["source"].as_str().unwrap_or_default();
            let net: ipnet::IpNet = source
                .parse()
                .with_context(|| format!("report names source {source:?}"))?;
            anyhow::ensure!(
                net.prefix_len() >= 8,
                "report names source {source}: not a source prefix"
            );
        }
        let kinds: Vec<&str> = json["attacks"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["kind_label"].as_str()).collect())
            .unwrap_or_default();
        Ok(if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        })
    }

    pub fn synguard_log(&self) -> String {
        self.synguard
            .as_ref()
            .map(ChildGuard::log_text)
            .unwrap_or_default()
    }

    /// The XDP program's counters on the server's interface.
    pub fn counters(&self) -> anyhow::Result<[u64; stat::COUNT]> {
        let maps = synguard::bpf::Maps::from_pins(&self.bpffs.pin_dir())?;
        maps.counters(self.server.ifindex("eth0"))
    }

    /// Packets the XDP program dropped, and SYNs it answered itself, on the server's
    /// interface.
    pub fn xdp_dropped_answered(&self) -> anyhow::Result<(u64, u64)> {
        let c = self.counters()?;
        let drops: u64 = stat::REASON_LIST
            .iter()
            .filter(|r| stat::is_drop(**r))
            .map(|&r| c[r])
            .sum();
        Ok((
            drops.saturating_sub(c[stat::N_MONITOR_PASSED]),
            c[stat::R_COOKIE_SENT],
        ))
    }

    pub(crate) fn listen_drops(&self) -> u64 {
        let out = self.server.try_exec(&["nstat", "-az", "TcpExtListenDrops"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("TcpExtListenDrops"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The request an employee's browser makes for the lab's page (to set `bind` and
/// `timeout` on): `GET / HTTP/1.0` with `Host: sales.example`; a success is nginx's
/// `HTTP/1.1 200` with the page, all within the timeout (users give up); failures are
/// named by kind, so the lab counts them together.
pub fn page_request(target: SocketAddr) -> Get {
    Get::new(target)
        .host("sales.example")
        .expecting(Expect::Page(PAGE))
        .deadline(Deadline::Whole)
        .errors(Errors::Kind)
}
