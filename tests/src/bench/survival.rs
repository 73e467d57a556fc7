//! Survival under a SYN flood, for the benchmark: the lab's network (see [`crate::lab`])
//! with one defence on the server at a time, a flood at a fixed rate from the lab's
//! generator, and the employees fetching the page throughout. Measured per run: what the
//! employees saw (success rate, connect-time percentiles) and the CPU time the server
//! spent per attack frame it received, less its idle rates measured in the same bench.
//!
//! The server's CPU: its link's receive path runs in a kernel thread of its own
//! (threaded NAPI on its veth, GRO on so the kernel alone takes the same path as the XDP
//! defences), and so does the router's end of that link, so the server thread's run time
//! is everything the server's kernel does with what arrives: the XDP program, the stack,
//! netfilter, the SYN-ACKs it sends, up to handing them to the router's queue. Where
//! there are two CPUs the server's thread has the last one to itself and the generator
//! and the router share the first, as three machines would not share theirs. The router
//! forwards the flood in XDP (see [`fast_path`]), so it reaches the server as raw frames,
//! as from a NIC. The `no-op XDP_DROP` defence (drops everything on arrival, employees
//! included) measures what receiving a frame costs the server before any program runs.
//!
//! Both ends of the server's link coalesce their interrupts as a server's NIC does (see
//! [`Link::Coalesced`]); the bench also measures the largest floods with the veth's
//! defaults, which wake the receive thread for every few frames.

use std::{
    net::IpAddr,
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{
    bench::xdpfilter::XdpFilter,
    kit::{
        baseline::{self, Noop},
        flood::{self, FloodSpec, Source},
        netns::mac_of,
    },
    lab::{self, LabNet, Profile, SERVER4},
};

/// Where the forged flood's sources are drawn from.
const FORGED: &str = "198.18.0.0/15";

/// What protects the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Defence {
    /// The kernel's defaults (SYN cookies on when the queue overflows).
    Kernel,
    /// nftables: a per-source `meter` limiting new SYNs to port 80 (synguard's default
    /// rate and burst: 200/s, burst 100), the rest dropped.
    NftMeter,
    /// nftables SYNPROXY on port 80 (the documented recipe: SYNs untracked, answered
    /// with cookies by the firewall, only completed handshakes reach the server).
    NftSynproxy,
    /// xdp-filter (`xdpfilt_alw_all`, as `xdp-filter load` picks) with the attacker's
    /// address denied: the operator's best case, one known source.
    XdpFilter,
    /// `synguard run` with its defaults.
    Synguard,
    /// A no-op XDP program dropping everything: the cost of delivering the flood.
    NoopDrop,
    /// A program that reads each frame's EtherType and drops IPv4 frames: the cost of
    /// delivering the flood to any defence that looks at it (see
    /// [`baseline::reading_drop_object`]).
    ReadingDrop,
    /// A program that drops IPv4 frames from the attack's sources, which it is told (the
    /// attacker's address, or the forged range), and passes the rest: the cost of
    /// delivering the flood to a defence that keeps the employees served (see
    /// [`baseline::source_object`]).
    SourceDrop,
    /// The same, answering each attack frame (sent back, addresses swapped) instead of
    /// dropping it: the least a defence that answers every SYN pays.
    SourceAnswer,
    /// The kernel alone on a host with source NAT (a masquerade rule, as Docker's: the
    /// host tracks connections).
    KernelNat,
    /// `synguard run --syn-cookies always`: attack mode (which checks ACKs) all along.
    SynguardAttack,
    /// The same on a host with source NAT (a masquerade rule, as Docker's): ACKs with no
    /// socket go to the kernel, which may own them (its guests' replies).
    SynguardAttackNat,
}

impl Defence {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel alone",
            Self::NftMeter => "nftables meter",
            Self::NftSynproxy => "nftables synproxy",
            Self::XdpFilter => "xdp-filter (deny attacker)",
            Self::Synguard => "synguard",
            Self::NoopDrop => "floor: no-op XDP_DROP",
            Self::ReadingDrop => "floor: read the header, XDP_DROP",
            Self::SourceDrop => "floor: drop the known attack sources",
            Self::SourceAnswer => "floor: answer the known attack sources",
            Self::KernelNat => "kernel alone, host with source NAT",
            Self::SynguardAttack => "synguard, attack mode",
            Self::SynguardAttackNat => "synguard, attack mode, host with source NAT",
        }
    }
}

/// How the server's link wakes its receive thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// As a server's NIC under load: after a poll that found frames, the receive path is
    /// polled again [`COALESCE_NS`] later instead of being woken by the next frame (the
    /// kernel's software interrupt coalescing, `napi_defer_hard_irqs` 1 and
    /// `gro_flush_timeout`, on both ends of the link). The flood then arrives in batches
    /// as it would from a NIC, and every defence is measured on what it does per frame.
    Coalesced,
    /// The veth's defaults: each batch the sender flushes wakes the receive thread. Under
    /// a flood a cheap defence keeps up, so its thread sleeps and is woken again every
    /// few frames (one wakeup per six frames at 250k frames/s), a cost a loaded NIC does
    /// not impose and the kernel alone, which never catches up, does not pay.
    VethDefaults,
}

/// The coalescing delay: 50 µs, the 20,000 interrupts a second i40e starts from.
pub const COALESCE_NS: u64 = 50_000;

/// The attacker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// SYNs from the attacker's own address (203.0.113.0).
    SingleSource,
    /// SYNs from random sources in 198.18.0.0/15.
    Forged,
    /// ACKs from random sources in 198.18.0.0/15 to a port nothing listens on, one a
    /// source NAT may hand out (40000): the kernel answers each with a reset.
    AckClosed,
    /// The same to a closed port below 512 (81), which no source NAT hands out.
    AckClosedLow,
    /// ACKs from random sources to the web server's port (80): each reaches its listener
    /// with no valid cookie; the kernel answers each with a reset.
    AckListener,
}

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Self::SingleSource => "single-source",
            Self::Forged => "forged",
            Self::AckClosed => "ack-closed-port-40000",
            Self::AckClosedLow => "ack-closed-port-81",
            Self::AckListener => "ack-listener-port-80",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Survival {
    pub attack: Attack,
    /// How the server's link woke its receive thread.
    pub link: Link,
    pub defence: Defence,
    pub defence_name: &'static str,
    /// Asked rate; `None` is flat out.
    pub target_pps: Option<u64>,
    pub attack_pps: f64,
    pub attack_sent: u64,
    pub seconds: f64,
    pub employee_requests: u64,
    pub employee_ok: u64,
    pub success_rate: f64,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    /// CPU time of the server's receive thread, ms per second of attack; `None` if the
    /// kernel could not run it threaded.
    pub server_ms_per_s: Option<f64>,
    /// Frames the server's receive path took from its link during the attack, per
    /// second (the rest of what was sent was lost on the way: see `path_drops`).
    pub server_frames_per_s: Option<f64>,
    /// The server's CPU time per attack frame it received, above its idle rates, ns.
    pub server_ns_per_packet: Option<f64>,
    /// Frames the lab's own links lost during the attack (see [`path_drops`]): the flood
    /// a server could not keep up with, answers and employees' frames a full ring turned
    /// away. Losses of the lab, not verdicts of a defence; `None` without ethtool.
    pub path_drops: Option<u64>,
    /// synguard's verdict counters over the whole run (non-zero ones), for the synguard
    /// rows: where the flood went (answered, dropped, or left to the kernel).
    pub verdicts: Option<std::collections::BTreeMap<&'static str, u64>>,
}

/// Frames lost on the lab's links on the attacker's, the server's and the employees'
/// paths, and in the kernel's per-CPU backlog queues. Each loss once: a veth counts a
/// frame its peer could not take (ring full, for a socket buffer, a redirected frame or
/// an XDP_TX answer) in the sender's `tx_dropped` (and again in the receiver's
/// `rx_dropped`, which is therefore not read); frames the receiving side itself failed
/// to handle are its per-queue `drops`.
fn path_drops(net: &LabNet) -> Option<u64> {
    let mut total = 0;
    for (ns, ifname) in [
        (&net.attacker, "eth0"),
        (&net.router, "r-att"),
        (&net.server, "eth0"),
        (&net.router, "r-srv"),
        (&net.router, "r-emp"),
        (&net.employees, "eth0"),
    ] {
        total += ns.if_stat(ifname, "tx_dropped");
        let out = ns.try_exec(&["ethtool", "-S", ifname]);
        if !out.status.success() {
            return None;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            if name.starts_with("rx_queue_")
                && name.ends_with("_drops")
                && !name.ends_with("_xdp_drops")
            {
                total += value.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").ok()?;
    for line in softnet.lines() {
        if let Some(v) = line.split_whitespace().nth(1) {
            total += u64::from_str_radix(v, 16).unwrap_or(0);
        }
    }
    Some(total)
}

/// Keeps a defence in place while the run lasts.
enum Guard {
    None,
    Xdp(#[expect(dead_code, reason = "held for its Drop")] Box<XdpFilter>),
    Noop(#[expect(dead_code, reason = "held for its Drop")] Noop),
}

const NFT_METER: &str = "table inet sgbench {
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport 80 tcp flags & (fin|syn|rst|ack) == syn meter sgb4 { ip saddr limit rate over 200/second burst 100 packets } drop
    tcp dport 80 tcp flags & (fin|syn|rst|ack) == syn meter sgb6 { ip6 saddr limit rate over 200/second burst 100 packets } drop
  }
}
";

const NFT_SYNPROXY: &str = "table inet sgbench {
  chain pre {
    type filter hook prerouting priority raw; policy accept;
    tcp dport 80 tcp flags syn notrack
  }
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport 80 ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
    ct state invalid drop
  }
}
";

/// A masquerade rule, as a container host's (it matches an interface that does not
/// exist: nothing is rewritten, but the host tracks connections, as such a host does).
const NFT_MASQUERADE: &str = "table inet sgbenchnat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"sgb-none0\" masquerade
  }
}
";

fn nft(net: &LabNet, ruleset: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("{}.nft", crate::kit::netns::unique("sgb")));
    std::fs::write(&path, ruleset)?;
    let out = net
        .server
        .try_exec(&["nft", "-f", path.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        anyhow::bail!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Put `defence` in place on the server; `sources` are the attack's (for the floor that is
/// told them).
fn install(
    net: &mut LabNet,
    defence: Defence,
    attacker: IpAddr,
    sources: Ipv4Net,
) -> anyhow::Result<Guard> {
    Ok(match defence {
        Defence::Kernel => Guard::None,
        Defence::NftMeter => {
            nft(net, NFT_METER)?;
            Guard::None
        }
        Defence::NftSynproxy => {
            net.server
                .sysctl("net.netfilter.nf_conntrack_tcp_loose", "0");
            nft(net, NFT_SYNPROXY)?;
            Guard::None
        }
        Defence::XdpFilter => {
            let pins = net.bpffs.path.join("xdp-filter");
            let f = net
                .server
                .spawn(move || -> anyhow::Result<XdpFilter> {
                    let mut f = XdpFilter::load("alw_all", &pins)?;
                    f.add_source(attacker)?;
                    f.attach("eth0")?;
                    Ok(f)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("loading xdp-filter panicked"))??;
            Guard::Xdp(Box::new(f))
        }
        Defence::Synguard => {
            // Native, as the floors: the router's fast path hands the server raw frames,
            // as a NIC does (on a veth, `auto` would pick generic mode).
            net.start_synguard(&["--xdp-mode".into(), "native".into()])?;
            Guard::None
        }
        Defence::KernelNat => {
            nft(net, NFT_MASQUERADE)?;
            Guard::None
        }
        Defence::SynguardAttack | Defence::SynguardAttackNat => {
            if defence == Defence::SynguardAttackNat {
                // `run` reads source NAT from the rule.
                nft(net, NFT_MASQUERADE)?;
            }
            net.start_synguard(&[
                "--xdp-mode".into(),
                "native".into(),
                "--syn-cookies".into(),
                "always".into(),
            ])?;
            Guard::None
        }
        Defence::NoopDrop | Defence::ReadingDrop | Defence::SourceDrop | Defence::SourceAnswer => {
            let n = net
                .server
                .spawn(move || -> anyhow::Result<Noop> {
                    let mut n = match defence {
                        Defence::NoopDrop => Noop::load(baseline::XDP_DROP)?,
                        Defence::ReadingDrop => Noop::load_reading_drop()?,
                        _ => Noop::load_source(sources, defence == Defence::SourceAnswer)?,
                    };
                    n.attach("eth0")?;
                    Ok(n)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("attaching the no-op panicked"))??;
            Guard::Noop(n)
        }
    })
}

/// The server's rates with only the employees at work (no attack, no defence).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Idle {
    pub link: Link,
    /// CPU ms per second of the server's receive thread.
    pub server_ms_per_s: Option<f64>,
    /// Frames the server received per second.
    pub server_frames_per_s: Option<f64>,
}

/// The idle rates, with only the employees at work (no attack, no defence).
pub fn idle(link: Link, duration: Duration, stop: &Arc<AtomicBool>) -> anyhow::Result<Idle> {
    let r = run(
        Attack::SingleSource,
        Defence::Kernel,
        link,
        Some(0),
        duration,
        None,
        stop,
    )?;
    Ok(Idle {
        link,
        server_ms_per_s: r.server_ms_per_s,
        server_frames_per_s: r.server_frames_per_s,
    })
}

/// The kernel threads that run a device's receive path (threaded NAPI): `napi/<dev>-<id>`.
fn napi_threads() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        comm.starts_with("napi/")
            .then(|| (pid, comm.trim().to_string()))
    })
    .collect()
}

/// Run time of a thread so far, ns (the scheduler's own account, not sampled).
fn run_time_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Switch a device's receive path to threaded NAPI (GRO on, so a veth without an XDP
/// program has one too), coalesced or not, and return the threads that appeared for it.
fn thread_rx(ns: &crate::kit::netns::Netns, ifname: &str, link: Link) -> anyhow::Result<Vec<u32>> {
    let before: Vec<u32> = napi_threads().into_iter().map(|(p, _)| p).collect();
    let gro = ns.try_exec(&["ethtool", "-K", ifname, "gro", "on"]);
    if !gro.status.success() {
        anyhow::bail!(
            "ethtool -K {ifname} gro on: {}",
            String::from_utf8_lossy(&gro.stderr).trim()
        );
    }
    let set = ns.try_exec(&[
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{ifname}/threaded"),
    ]);
    if !set.status.success() {
        anyhow::bail!(
            "threaded NAPI on {ifname}: {}",
            String::from_utf8_lossy(&set.stderr).trim()
        );
    }
    if link == Link::Coalesced {
        coalesce(ns, ifname)?;
    }
    let prefix = format!("napi/{ifname}-");
    let new: Vec<u32> = napi_threads()
        .into_iter()
        .filter(|(p, comm)| !before.contains(p) && comm.starts_with(&prefix))
        .map(|(p, _)| p)
        .collect();
    // One thread per receive queue, or another device's threads were taken for ours.
    let queues = ns.try_exec(&[
        "sh",
        "-c",
        &format!("ls -d /sys/class/net/{ifname}/queues/rx-* | wc -l"),
    ]);
    let queues: usize = String::from_utf8_lossy(&queues.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if new.is_empty() || new.len() != queues {
        anyhow::bail!(
            "{} NAPI threads appeared for {ifname}, which has {queues} receive queues",
            new.len()
        );
    }
    Ok(new)
}

/// Coalesce a device's interrupts (see [`Link::Coalesced`]), and read the settings back:
/// a kernel that ignored them would give the figures of the other link.
fn coalesce(ns: &crate::kit::netns::Netns, ifname: &str) -> anyhow::Result<()> {
    let dir = format!("/sys/class/net/{ifname}");
    let set = ns.try_exec(&[
        "sh",
        "-c",
        &format!(
            "echo {COALESCE_NS} > {dir}/gro_flush_timeout && echo 1 > {dir}/napi_defer_hard_irqs \
             && cat {dir}/gro_flush_timeout {dir}/napi_defer_hard_irqs"
        ),
    ]);
    let read = String::from_utf8_lossy(&set.stdout);
    let read: Vec<&str> = read.split_whitespace().collect();
    let want = COALESCE_NS.to_string();
    if !set.status.success() || read != [want.as_str(), "1"] {
        anyhow::bail!(
            "coalescing {ifname} (gro_flush_timeout {COALESCE_NS}, napi_defer_hard_irqs 1): \
             read back {read:?}: {}",
            String::from_utf8_lossy(&set.stderr).trim()
        );
    }
    Ok(())
}

/// Keep a thread (or the calling one, `pid` 0) on one CPU.
fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call reads it only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        anyhow::bail!(
            "pinning {pid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The lab's machines on CPUs of their own where there are two: the generator and the
/// router on the first, the server's receive thread on the last (a server's CPUs are its
/// own; the attacker's are not). `None` on one CPU.
fn cpus() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for the kernel to fill.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    // SAFETY: reads the set filled above.
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    match allowed[..] {
        [first, .., last] => Some((first, last)),
        _ => None,
    }
}

/// Frames the server's receive path took from its link so far: every frame the veth's
/// NAPI poll consumed, passed to an XDP program or not.
fn server_frames(net: &LabNet) -> Option<u64> {
    let out = net.server.try_exec(&["ethtool", "-S", "eth0"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = None;
    for line in text.lines() {
        if let Some((name, value)) = line.trim().split_once(':')
            && name.starts_with("rx_queue_")
            && name.ends_with("_xdp_packets")
        {
            *total.get_or_insert(0) += value.trim().parse::<u64>().ok()?;
        }
    }
    total
}

/// The server's receive threads (see the module's documentation).
struct ServerCpu {
    threads: Vec<u32>,
}

impl ServerCpu {
    fn enable(net: &LabNet, link: Link) -> anyhow::Result<Self> {
        // The router's end first: the server's SYN-ACKs then only wake its thread, and
        // none of the router's work runs on the server's.
        let router = thread_rx(&net.router, "r-srv", link)?;
        // A veth hands frames to its peer's receive thread only if they are eligible for
        // GRO: not from a TSO-capable sender. Attaching an XDP program to the server's end
        // turns the router's TSO off anyway; turning it off here puts the defences without
        // one (the kernel alone, nftables) on the same path.
        let tso = net
            .router
            .try_exec(&["ethtool", "-K", "r-srv", "tso", "off"]);
        if !tso.status.success() {
            anyhow::bail!(
                "ethtool -K r-srv tso off: {}",
                String::from_utf8_lossy(&tso.stderr).trim()
            );
        }
        let threads = thread_rx(&net.server, "eth0", link)?;
        if let Some((first, last)) = cpus() {
            for &p in &router {
                pin(p, first)?;
            }
            for &p in &threads {
                pin(p, last)?;
            }
        }
        Ok(Self { threads })
    }

    /// `None` if a thread is gone (its device was reset): no figure rather than a wrong one.
    fn ns(&self) -> Option<u64> {
        self.threads.iter().map(|&p| run_time_ns(p)).sum()
    }
}

/// The router forwards the flood in XDP (see [`baseline::forward_object`]): the attack
/// reaches the server's link as raw frames, as from a NIC, so a defence in XDP there runs
/// on them natively and the kernel alone builds its own socket buffers, as on real
/// hardware. Without it every attack frame would arrive as a socket buffer built by the
/// generator's kernel, which a veth must copy back into a raw frame for an XDP program: a
/// cost of the lab, not of the defence. The employees' traffic and the replies take the
/// router's stack as before.
fn fast_path(net: &LabNet) -> anyhow::Result<baseline::Forwarder> {
    let to_mac = mac_of(&net.server, "eth0")?;
    let from_mac = mac_of(&net.router, "r-srv")?;
    let ifindex = net.router.ifindex("r-srv");
    let dst: std::net::Ipv4Addr = SERVER4.parse()?;
    net.router
        .spawn(move || -> anyhow::Result<baseline::Forwarder> {
            let mut f = baseline::Forwarder::load(dst, to_mac, from_mac, ifindex)?;
            f.attach("r-att")?;
            Ok(f)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("attaching the router's fast path panicked"))?
}

/// One run. `rate` `Some(0)` sends nothing (the idle measurement); the `idle` rates are
/// subtracted to give the costs per attack packet.
pub fn run(
    attack: Attack,
    defence: Defence,
    link: Link,
    rate: Option<u64>,
    duration: Duration,
    idle: Option<Idle>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Survival> {
    let mut net = LabNet::new(Profile::Defaults)?;
    // Without it there is no figure, and the router's fast path has no way to the server.
    let server_cpu = ServerCpu::enable(&net, link)
        .context("the server's receive thread (threaded NAPI, Linux 5.13 or later, and ethtool)")?;
    let _fast_path = fast_path(&net)?;
    let attacker: IpAddr = "203.0.113.0".parse()?;
    let sources: Ipv4Net = match attack {
        Attack::SingleSource => "203.0.113.0/32",
        Attack::Forged | Attack::AckClosed | Attack::AckClosedLow | Attack::AckListener => FORGED,
    }
    .parse()?;
    let _guard = install(&mut net, defence, attacker, sources)?;
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let attack_start = start + warmup;
    let attack_end = attack_start + duration;
    let staff = lab::employees(&net, false, attack_end, stop);
    let spec = if rate == Some(0) {
        None
    } else {
        Some(FloodSpec {
            ifindex: net.attacker.ifindex("eth0"),
            src_mac: mac_of(&net.attacker, "eth0")?,
            dst_mac: mac_of(&net.router, "r-att")?,
            source: match attack {
                Attack::SingleSource => Source::Fixed(attacker),
                Attack::Forged | Attack::AckClosed | Attack::AckClosedLow | Attack::AckListener => {
                    Source::Random(FORGED.parse()?)
                }
            },
            dst: SERVER4.parse()?,
            dport: match attack {
                Attack::AckClosed => 40_000,
                Attack::AckClosedLow => 81,
                _ => 80,
            },
            rate,
            flags: match attack {
                Attack::AckClosed | Attack::AckClosedLow | Attack::AckListener => {
                    crate::kit::packet::ACK
                }
                _ => crate::kit::packet::SYN,
            },
            duration,
            threads: if rate.is_some() { 2 } else { 1 },
            batch: 64,
        })
    };
    thread::sleep(warmup);
    let drops_before = path_drops(&net);
    // The server's counters are read right around the attack; the window between the
    // two reads (`span`) is what the idle rates are scaled by.
    let w0 = Instant::now();
    let server_before = server_cpu.ns();
    let frames_before = server_frames(&net);
    let t0 = Instant::now();
    let sent = if let Some(spec) = spec {
        let stop2 = stop.clone();
        net.attacker
            .spawn(move || {
                // The generator's threads inherit this.
                if let Some((first, _)) = cpus() {
                    pin(0, first)?;
                }
                flood::run(&spec, &stop2)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
            .sent
    } else {
        thread::sleep(duration);
        0
    };
    let secs = t0.elapsed().as_secs_f64();
    let server_after = server_cpu.ns();
    let span = w0.elapsed().as_secs_f64();
    let frames_after = server_frames(&net);
    let server_ns = server_after
        .zip(server_before)
        .map(|(a, b)| a.saturating_sub(b));
    let frames = frames_after
        .zip(frames_before)
        .map(|(a, b)| a.saturating_sub(b) as f64);
    let path_drops = path_drops(&net)
        .zip(drops_before)
        .map(|(a, b)| a.saturating_sub(b));
    let verdicts = matches!(
        defence,
        Defence::Synguard | Defence::SynguardAttack | Defence::SynguardAttackNat
    )
    .then(|| net.counters().ok())
    .flatten()
    .map(|c| {
        synguard_common::stat::NAMES
            .iter()
            .zip(c)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (*name, n))
            .collect()
    });
    let mut attempts = Vec::new();
    for h in staff {
        attempts.extend(h.join().map_err(|_| anyhow::anyhow!("employee panicked"))?);
    }
    let window: Vec<_> = attempts
        .iter()
        .filter(|a| a.started >= attack_start && a.started < attack_end)
        .collect();
    let mut ok: Vec<f64> = window
        .iter()
        .filter_map(|a| a.result.as_ref().ok())
        .map(|c| c.as_secs_f64() * 1000.0)
        .collect();
    ok.sort_by(|a, b| a.total_cmp(b));
    let idle = idle.filter(|_| sent > 0);
    let server_ms = server_ns.map(|ns| ns as f64 / 1e6);
    // Per frame the server received: a flood the server cannot keep up with is lost in
    // its link's ring, and costs it nothing.
    let server_ns_per_packet = match (
        server_ms,
        frames,
        idle.and_then(|i| i.server_ms_per_s.zip(i.server_frames_per_s)),
    ) {
        (Some(ms), Some(n), Some((idle_ms, idle_n))) => {
            let attack_ms = ms - idle_ms * span;
            let attack_frames = n - idle_n * span;
            // Noise, not a figure: less than the idle rate, or next to nothing received.
            (attack_ms > 0.0 && attack_frames >= 0.1 * sent as f64)
                .then(|| attack_ms * 1e6 / attack_frames)
        }
        _ => None,
    };
    Ok(Survival {
        attack,
        link,
        defence,
        defence_name: defence.name(),
        target_pps: rate,
        attack_pps: sent as f64 / secs.max(1e-9),
        attack_sent: sent,
        seconds: secs,
        employee_requests: window.len() as u64,
        employee_ok: ok.len() as u64,
        success_rate: if window.is_empty() {
            0.0
        } else {
            ok.len() as f64 / window.len() as f64
        },
        connect_p50_ms: lab::percentile(&ok, 50.0),
        connect_p99_ms: lab::percentile(&ok, 99.0),
        server_ms_per_s: server_ms.map(|ms| ms / span.max(1e-9)),
        server_frames_per_s: frames.map(|n| n / span.max(1e-9)),
        server_ns_per_packet,
        path_drops,
        verdicts,
    })
}
