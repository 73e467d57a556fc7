//! The lab: the founding incident replayed in network namespaces.
//!
//! ```text
//!  employees 198.51.100.10-29 ─┐                     ┌─ server 192.0.2.1 (nginx, synguard)
//!  2001:db8:5::10-29           ├── router ───────────┤  2001:db8:2::1
//!  attacker 203.0.113.0 (+ .2-.251 for many-sources) ┘  └─ sink: replies to forged
//!  2001:db8:6::1                                           sources (198.18.0.0/15,
//!                                                          2001:db8:8000::/33)
//! ```
//!
//! The `container` profiles put the web server in a container namespace behind the
//! server, `192.0.2.194` and `2001:db8:3::2`, reached through a DNAT of the server's port
//! 80 (nftables, as Docker publishes a port); `container` also keeps a listener on the
//! server's port 80, as docker-proxy does.
//!
//! Every run builds its own namespaces (nothing is linked to the host's) and removes them
//! when it ends, however it ends. Numbers are measured in the run; nothing is assumed.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use synguard_common::stat;

use crate::kit::{
    flood::{self, FloodSpec, Source},
    netns::{Bpffs, ChildGuard, Netns, unique, veth},
    synguard_bin,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No attack.
    Baseline,
    /// The founding incident: hping3 --flood from 203.0.113.0.
    SingleSource,
    /// SYNs from random sources in 198.18.0.0/15.
    Forged,
    /// SYNs from random sources in 2001:db8:8000::/33 (employees use IPv6).
    ForgedV6,
    /// Hundreds of real addresses completing handshakes and holding connections.
    ManySources,
    /// SYNs forged with one employee's address (198.51.100.10), far over its limit: the
    /// victim must keep working, during the flood and after it.
    SpoofedVictim,
}

impl Scenario {
    pub const ALL: [Self; 6] = [
        Self::Baseline,
        Self::SingleSource,
        Self::Forged,
        Self::ForgedV6,
        Self::ManySources,
        Self::SpoofedVictim,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::SingleSource => "single-source",
            Self::Forged => "forged",
            Self::ForgedV6 => "forged-v6",
            Self::ManySources => "many-sources",
            Self::SpoofedVictim => "spoofed-victim",
        }
    }
}

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
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Self::Defaults => "defaults",
            Self::Legacy => "legacy",
            Self::Container => "container",
            Self::ContainerNoProxy => "container-no-proxy",
        }
    }
}

/// One run: a scenario on a profile, with or without synguard.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub scenario: Scenario,
    pub profile: Profile,
    pub synguard: bool,
    /// How long the attack lasts (and the window the employees are measured in).
    pub duration: Duration,
    /// Extra `synguard run` arguments.
    pub synguard_args: Vec<String>,
    /// SYNs per second the generator sends in the forged scenarios; `None` is flat out.
    /// A fixed rate makes rows with and without synguard carry the same load.
    pub attack_rate: Option<u64>,
    /// Write synguard's incident report of the run (Markdown and its SVG chart) here.
    pub report_dir: Option<PathBuf>,
    /// Quiet time with only the employees before and after the attack (shows in the
    /// report's chart; not part of the measurements).
    pub calm: Duration,
}

/// The forged scenarios' default rate: well within what the generator reaches on two
/// cores while the server, router and employees share them.
pub const DEFAULT_ATTACK_RATE: u64 = 150_000;

/// The employee whose address `spoofed-victim` forges (the first employee).
pub const VICTIM: &str = "198.51.100.10";
/// `spoofed-victim`'s rate: 25 times the victim's own limit (syn-rate 200/s), and over
/// attack-syn-rate (2000/s), whatever `--attack-rate` says (which is for floods from
/// random sources).
pub const SPOOFED_VICTIM_RATE: u64 = 5_000;
/// How long the victim is watched after the flood ends.
pub const AFTER: Duration = Duration::from_secs(5);

/// What the victim of `spoofed-victim` saw: its requests during the flood and after it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VictimResult {
    pub address: String,
    pub during: u64,
    pub during_ok: u64,
    pub after: u64,
    pub after_ok: u64,
}

impl VictimResult {
    pub fn rates(&self) -> (f64, f64) {
        let r = |ok: u64, n: u64| if n == 0 { 0.0 } else { ok as f64 / n as f64 };
        (r(self.during_ok, self.during), r(self.after_ok, self.after))
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub profile: String,
    pub synguard: bool,
    pub seconds: f64,
    /// What the attack sent (SYNs; connection attempts for many-sources).
    pub attack_sent: u64,
    pub attack_pps: f64,
    pub employee_requests: u64,
    pub employee_ok: u64,
    pub success_rate: f64,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    /// Packets the XDP program dropped on the server's interface (synguard runs only).
    pub xdp_dropped: Option<u64>,
    /// SYNs the XDP program answered itself with a SYN cookie (attack mode).
    pub xdp_answered: Option<u64>,
    /// SYNs the XDP program passed on to the server's TCP stack.
    pub syns_to_kernel: Option<u64>,
    /// CPU time the whole machine spent in softirq per second of attack (the lab's
    /// server, router and attacker share it), in milliseconds.
    pub softirq_ms_per_s: f64,
    /// SYNs the server's listen queues dropped (TcpExtListenDrops) during the run.
    pub listen_drops: u64,
    /// What employees' failures looked like (the most frequent errors).
    pub errors: Vec<String>,
    /// The attack types `synguard report` named from its journal ("none" if it saw no
    /// flood), synguard runs only.
    pub reported: Option<String>,
    /// `spoofed-victim` only: the victim's requests.
    pub victim: Option<VictimResult>,
}

pub const EMPLOYEES: u8 = 20;
/// A request that does not complete within this counts as failed: users give up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between an employee's requests.
pub const THINK: Duration = Duration::from_millis(100);

pub const SERVER4: &str = "192.0.2.1";
pub const SERVER6: &str = "2001:db8:2::1";
/// The `container` profiles' web server.
pub const CONTAINER4: &str = "192.0.2.194";
pub const CONTAINER6: &str = "2001:db8:3::2";
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

/// The MAC address of an interface in a namespace.
pub fn mac_of(ns: &Netns, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (i, p) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(p, 16).context("MAC address")?;
    }
    Ok(mac)
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
        let batch = |ns: &Netns, cmds: &[String]| {
            let path = std::env::temp_dir().join(format!("{}.ipbatch", unique("sgl")));
            fs::write(&path, cmds.join("\n") + "\n").expect("write ip batch");
            ns.ip(&["-batch", path.to_str().expect("utf-8")]);
            let _ = fs::remove_file(&path);
        };
        batch(
            &router,
            &[
                "addr add 2001:db8:2::fe/64 dev r-srv nodad".into(),
                "addr add 2001:db8:5::fe/64 dev r-emp nodad".into(),
                "addr add 2001:db8:6::fe/64 dev r-att nodad".into(),
                "addr add 2001:db8:f::1/64 dev r-sink nodad".into(),
                "route add 203.0.113.0/24 via 203.0.113.0".into(),
                "route add 198.18.0.0/15 via 192.0.2.250".into(),
                "route add 2001:db8:8000::/33 via 2001:db8:f::2".into(),
            ],
        );
        for k in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            let (key, v) = k.split_once('=').expect("k=v");
            router.sysctl(key, v);
        }
        batch(
            &server,
            &[
                "addr add 2001:db8:2::1/64 dev eth0 nodad".into(),
                "route add default via 192.0.2.126".into(),
                "route add default via 2001:db8:2::fe".into(),
            ],
        );
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
        batch(&employees, &emp);
        let mut att = vec![
            "addr add 2001:db8:6::1/64 dev eth0 nodad".to_string(),
            "route add default via 203.0.113.1".into(),
            "route add default via 2001:db8:6::fe".into(),
        ];
        for i in 2..=251 {
            att.push(format!("addr add 203.0.113.{i}/32 dev eth0"));
        }
        batch(&attacker, &att);
        // Real attackers do not answer the server's SYN-ACKs; without this the attacker's
        // own kernel would reset every half-open connection for the server.
        attacker.exec(&[
            "nft",
            "add table inet sg; add chain inet sg out { type filter hook output priority 0; }; \
             add rule inet sg out tcp flags rst drop",
        ]);
        batch(&sink, &["addr add 2001:db8:f::2/64 dev eth0 nodad".into()]);

        match profile {
            Profile::Defaults | Profile::Container | Profile::ContainerNoProxy => {}
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
            batch(
                &server,
                &["addr add 2001:db8:3::1/64 dev ctr0 nodad".into()],
            );
            batch(
                ctr,
                &[
                    format!("addr add {CONTAINER6}/64 dev eth0 nodad"),
                    "route add default via 192.0.2.193".into(),
                    "route add default via 2001:db8:3::1".into(),
                ],
            );
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
        // The server's own nginx; with a container, the listener docker-proxy keeps on the
        // published port (it serves the same page, so a client it answered still counts).
        let nginx = (profile != Profile::ContainerNoProxy)
            .then(|| start_nginx(&server, &dir, &dir, SERVER4, SERVER6))
            .transpose()?;
        let peer_xdp = router
            .spawn(|| {
                let mut noop = crate::kit::baseline::Noop::load(crate::kit::baseline::XDP_PASS)?;
                noop.attach("r-srv")?;
                anyhow::Ok(noop)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("attaching the router's XDP program panicked"))??;
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
                .spawn(move || request(target, None, Duration::from_millis(500)).is_ok())
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
        let mut cmd = self
            .server
            .command(synguard_bin().to_str().context("path")?);
        cmd.arg("--pin-dir")
            .arg(self.bpffs.pin_dir())
            .arg("--state-dir")
            .arg(&self.dir)
            .args(["run", "--iface", "eth0"])
            .args(extra);
        let mut g = ChildGuard::spawn_logged(cmd, self.dir.join("synguard.log"));
        g.wait_for_log("running:", Duration::from_secs(20));
        self.synguard = Some(g);
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

    fn listen_drops(&self) -> u64 {
        let out = self.server.try_exec(&["nstat", "-az", "TcpExtListenDrops"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("TcpExtListenDrops"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// One HTTP request from `local` (if given): connect, send, read the page. Returns the
/// connect time.
pub fn request(
    target: SocketAddr,
    local: Option<IpAddr>,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let domain = if target.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    if let Some(l) = local {
        s.bind(&SockAddr::from(SocketAddr::new(l, 0)))
            .map_err(|e| format!("bind: {e}"))?;
    }
    s.connect_timeout(&SockAddr::from(target), timeout)
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let connected = start.elapsed();
    let mut stream: std::net::TcpStream = s.into();
    let left = timeout
        .saturating_sub(connected)
        .max(Duration::from_millis(50));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: sales.example\r\n\r\n")
        .map_err(|e| format!("send: {}", e.kind()))?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .map_err(|e| format!("read: {}", e.kind()))?;
    if start.elapsed() > timeout {
        return Err("too slow".into());
    }
    if body.starts_with(b"HTTP/1.1 200") && body.ends_with(PAGE.as_bytes()) {
        Ok(connected)
    } else {
        Err("bad answer".into())
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    pub(crate) started: Instant,
    pub(crate) result: Result<Duration, String>,
}

/// The employees: each fetches the page in a loop from its own address until `until`.
pub(crate) fn employees(
    net: &LabNet,
    v6: bool,
    until: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<Attempt>>> {
    (0..EMPLOYEES)
        .map(|i| {
            let (local, target): (IpAddr, SocketAddr) = if v6 {
                (
                    format!("2001:db8:5::{:x}", 0x10 + i).parse().expect("addr"),
                    format!("[{SERVER6}]:80").parse().expect("addr"),
                )
            } else {
                (
                    format!("198.51.100.{}", 10 + i).parse().expect("addr"),
                    format!("{SERVER4}:80").parse().expect("addr"),
                )
            };
            let stop = stop.clone();
            net.employees.spawn(move || {
                let mut out = Vec::new();
                // Spread the employees over the first think time.
                thread::sleep(THINK * u32::from(i) / u32::from(EMPLOYEES));
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = request(target, Some(local), REQUEST_TIMEOUT);
                    out.push(Attempt { started, result });
                    thread::sleep(THINK);
                }
                out
            })
        })
        .collect()
}

pub(crate) fn softirq_ticks() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(7))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

/// The connection flood: hundreds of real addresses completing handshakes and holding
/// the connections open, as fast as `per_second` allows. Each sends the start of a
/// request and never finishes it: nginx reclaims idle connections that have sent nothing
/// when it runs short, but not ones in the middle of a request.
fn connection_flood(
    net: &LabNet,
    per_second: u32,
    duration: Duration,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    let stop = stop.clone();
    net.attacker.spawn(move || {
        let held = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let attempts = std::sync::atomic::AtomicU64::new(0);
        thread::scope(|s| {
            for t in 0..4u32 {
                let held = held.clone();
                let attempts = &attempts;
                let stop = &stop;
                s.spawn(move || {
                    let target: SocketAddr = format!("{SERVER4}:80").parse().expect("addr");
                    let mut i = t;
                    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                        let due = (start.elapsed().as_secs_f64() * f64::from(per_second)) as u64;
                        if attempts.load(Ordering::Relaxed) >= due {
                            thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let src: IpAddr =
                            format!("203.0.113.{}", 2 + i % 250).parse().expect("addr");
                        i += 4;
                        let Ok(sock) = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                        else {
                            continue;
                        };
                        if sock.bind(&SockAddr::from(SocketAddr::new(src, 0))).is_err() {
                            continue;
                        }
                        if sock
                            .connect_timeout(&SockAddr::from(target), Duration::from_millis(500))
                            .is_ok()
                        {
                            let _ = sock.send(b"GET / HTTP/1.1\r\nHost: sales.example\r\n");
                            if let Ok(mut h) = held.lock() {
                                h.push(sock);
                            }
                        }
                    }
                });
            }
        });
        attempts.load(Ordering::Relaxed)
    })
}

/// Run one scenario on one profile, with or without synguard.
pub fn run(spec: &RunSpec, stop: &Arc<AtomicBool>) -> anyhow::Result<RunResult> {
    let mut net = LabNet::new(spec.profile)?;
    if spec.synguard {
        net.start_synguard(&spec.synguard_args)?;
    }
    let v6 = spec.scenario == Scenario::ForgedV6;
    let warmup = Duration::from_secs(1) + spec.calm;
    let start = Instant::now();
    let attack_start = start + warmup;
    let attack_end = attack_start + spec.duration;
    let after = if spec.scenario == Scenario::SpoofedVictim {
        spec.calm.max(AFTER)
    } else {
        spec.calm
    };
    let staff = employees(&net, v6, attack_end + after, stop);
    thread::sleep(warmup);
    let listen_before = net.listen_drops();
    let soft_before = softirq_ticks();
    let t0 = Instant::now();

    let d = spec.duration;
    let attack_sent = match spec.scenario {
        Scenario::Baseline => {
            while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
            }
            0
        }
        Scenario::SingleSource => {
            let secs = d.as_secs_f64().to_string();
            let out = net.attacker.try_exec(&[
                "timeout", "-s", "INT", &secs, "hping3", "-S", "-p", "80", "--flood", SERVER4,
            ]);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            crate::kit::topo::transmitted(&text)
        }
        Scenario::Forged | Scenario::ForgedV6 => {
            let (source, dst) = if v6 {
                (
                    Source::Random("2001:db8:8000::/33".parse()?),
                    SERVER6.parse()?,
                )
            } else {
                (Source::Random("198.18.0.0/15".parse()?), SERVER4.parse()?)
            };
            let spec = FloodSpec {
                ifindex: net.attacker.ifindex("eth0"),
                src_mac: mac_of(&net.attacker, "eth0")?,
                dst_mac: mac_of(&net.router, "r-att")?,
                source,
                dst,
                dport: 80,
                rate: spec.attack_rate,
                flags: crate::kit::packet::SYN,
                duration: d,
                threads: if spec.attack_rate.is_some() { 2 } else { 1 },
                batch: 64,
            };
            let stop2 = stop.clone();
            let report = net
                .attacker
                .spawn(move || flood::run(&spec, &stop2))
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
            report.sent
        }
        Scenario::ManySources => connection_flood(&net, 2000, d, stop)
            .join()
            .map_err(|_| anyhow::anyhow!("connection flood panicked"))?,
        Scenario::SpoofedVictim => {
            let spec = FloodSpec {
                ifindex: net.attacker.ifindex("eth0"),
                src_mac: mac_of(&net.attacker, "eth0")?,
                dst_mac: mac_of(&net.router, "r-att")?,
                source: Source::Fixed(VICTIM.parse()?),
                dst: SERVER4.parse()?,
                dport: 80,
                rate: Some(SPOOFED_VICTIM_RATE),
                flags: crate::kit::packet::SYN,
                duration: d,
                threads: 1,
                batch: 16,
            };
            let stop2 = stop.clone();
            net.attacker
                .spawn(move || flood::run(&spec, &stop2))
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
                .sent
        }
    };
    let attack_secs = t0.elapsed().as_secs_f64();
    let soft = softirq_ticks().saturating_sub(soft_before);

    let mut attempts = Vec::new();
    let mut victim = None;
    for (i, h) in staff.into_iter().enumerate() {
        let mine = h.join().map_err(|_| anyhow::anyhow!("employee panicked"))?;
        // The first employee is the one whose address spoofed-victim forges.
        if i == 0 && spec.scenario == Scenario::SpoofedVictim {
            let count = |from: Instant, to: Instant| {
                let w: Vec<&Attempt> = mine
                    .iter()
                    .filter(|a| a.started >= from && a.started < to)
                    .collect();
                (
                    w.len() as u64,
                    w.iter().filter(|a| a.result.is_ok()).count() as u64,
                )
            };
            let (during, during_ok) = count(attack_start, attack_end);
            let (after_n, after_ok) = count(attack_end, attack_end + after);
            victim = Some(VictimResult {
                address: VICTIM.into(),
                during,
                during_ok,
                after: after_n,
                after_ok,
            });
        }
        attempts.extend(mine);
    }
    let window: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started >= attack_start && a.started < attack_end)
        .collect();
    let ok: Vec<f64> = window
        .iter()
        .filter_map(|a| a.result.as_ref().ok())
        .map(|c| c.as_secs_f64() * 1000.0)
        .collect();
    let mut sorted = ok.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for a in &window {
        if let Err(e) = &a.result {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let mut errors: Vec<(String, u64)> = errors.into_iter().collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));

    let (xdp_dropped, xdp_answered, syns_to_kernel) = if spec.synguard {
        let (d, a) = net.xdp_dropped_answered()?;
        let c = net.counters()?;
        let passed = [
            stat::R_SYN_PASSED,
            stat::R_SYN_VERIFIED,
            stat::R_COOKIE_FALLBACK,
            stat::R_SYN_UNTRACKED,
            stat::R_SYN_UNPROTECTED,
            stat::R_COOKIE_NO_LISTENER,
            stat::R_SYN_NOT_LOCAL,
            stat::R_SYN_NAT,
        ]
        .iter()
        .map(|&r| c[r])
        .sum();
        (Some(d), Some(a), Some(passed))
    } else {
        (None, None, None)
    };
    let reported = if spec.synguard {
        Some(net.report(
            spec,
            &format!("{}-{}", spec.scenario.name(), spec.profile.name()),
        )?)
    } else {
        None
    };
    let clk = 100.0; // USER_HZ
    Ok(RunResult {
        scenario: spec.scenario.name().into(),
        profile: spec.profile.name().into(),
        synguard: spec.synguard,
        seconds: attack_secs,
        attack_sent,
        attack_pps: attack_sent as f64 / attack_secs.max(1e-9),
        employee_requests: window.len() as u64,
        employee_ok: ok.len() as u64,
        success_rate: if window.is_empty() {
            0.0
        } else {
            ok.len() as f64 / window.len() as f64
        },
        connect_p50_ms: percentile(&sorted, 50.0),
        connect_p99_ms: percentile(&sorted, 99.0),
        xdp_dropped,
        xdp_answered,
        syns_to_kernel,
        softirq_ms_per_s: soft as f64 * 1000.0 / clk / attack_secs.max(1e-9),
        listen_drops: net.listen_drops().saturating_sub(listen_before),
        errors: errors
            .into_iter()
            .take(3)
            .map(|(e, n)| format!("{n}x {e}"))
            .collect(),
        reported,
        victim,
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    })
}

fn fmt_count(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// The table printed at the end of a lab run.
pub fn table(results: &[RunResult]) -> String {
    let header = [
        "scenario",
        "profile",
        "synguard",
        "attack/s",
        "employees ok",
        "p50 ms",
        "p99 ms",
        "XDP dropped",
        "XDP answered",
        "softirq ms/s",
        "report says",
        "victim ok (during, after)",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.profile.clone(),
                if r.synguard { "on" } else { "off" }.into(),
                fmt_count(r.attack_pps),
                format!(
                    "{:.1} % ({}/{})",
                    r.success_rate * 100.0,
                    r.employee_ok,
                    r.employee_requests
                ),
                fmt_ms(r.connect_p50_ms),
                fmt_ms(r.connect_p99_ms),
                r.xdp_dropped.map_or("-".into(), |d| d.to_string()),
                r.xdp_answered.map_or("-".into(), |d| d.to_string()),
                format!("{:.0}", r.softirq_ms_per_s),
                r.reported.clone().unwrap_or_else(|| "-".into()),
                r.victim.as_ref().map_or("-".into(), |v| {
                    let (d, a) = v.rates();
                    format!(
                        "{:.1} % ({}/{}), {:.1} % ({}/{})",
                        d * 100.0,
                        v.during_ok,
                        v.during,
                        a * 100.0,
                        v.after_ok,
                        v.after
                    )
                }),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// Check the tools the lab drives are installed.
pub fn check_tools() -> anyhow::Result<()> {
    for tool in ["ip", "nginx", "hping3", "nft", "nstat", "ss"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed (`cargo xtask lab` installs what it needs)");
        }
    }
    Ok(())
}
