//! Survival under a SYN flood, for the benchmark: the lab's network (see [`crate::lab`])
//! with one defence on the server at a time, a flood at a fixed rate from the lab's
//! generator, and the employees fetching the page throughout. Measured per run: what the
//! employees saw (success rate, connect-time percentiles) and the softirq CPU time of the
//! whole machine per attack packet, less the idle rate measured in the same bench.
//!
//! softirq time is global (the generator, the router and the server share the CPUs), so
//! it is the cost of delivering the flood plus what the server spends on it; the
//! `no-op XDP_DROP` defence (drops everything on arrival, employees included) measures
//! the delivery floor in the same run, so the server's own share can be told apart.

use std::{
    net::IpAddr,
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    baseline::{self, Noop},
    flood::{self, FloodSpec, Source},
    lab::{self, LabNet, Profile, SERVER4},
    xdpfilter::XdpFilter,
};

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
        }
    }
}

/// The attacker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// SYNs from the attacker's own address (203.0.113.0).
    SingleSource,
    /// SYNs from random sources in 198.18.0.0/15.
    Forged,
}

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Self::SingleSource => "single-source",
            Self::Forged => "forged",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Survival {
    pub attack: Attack,
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
    /// softirq CPU time of the machine, ms per second of attack.
    pub softirq_ms_per_s: f64,
    /// softirq CPU time per attack packet above the idle rate, ns.
    pub softirq_ns_per_packet: Option<f64>,
    /// Frames the lab's own links lost during the attack: veth links that could not hand
    /// a frame to their peer (its XDP ring full) or whose rings overflowed, XDP_TX frames
    /// the peer could not take (on the server's and the employees' paths), and the
    /// kernel's per-CPU backlog overflowing (softnet_stat, whole machine). Losses of the
    /// lab, not verdicts of a defence; `None` without ethtool.
    pub path_drops: Option<u64>,
}

/// Overflow drops of the veth links on the server's and the employees' paths, and of the
/// kernel's per-CPU backlog queues.
fn path_drops(net: &LabNet) -> Option<u64> {
    let mut total = 0;
    for (ns, ifname) in [
        (&net.server, "eth0"),
        (&net.router, "r-srv"),
        (&net.router, "r-emp"),
        (&net.employees, "eth0"),
    ] {
        // A veth that cannot hand a frame to its peer (the peer's XDP ring full) counts
        // it as a transmit drop on the sending side.
        total += ns.if_stat(ifname, "tx_dropped") + ns.if_stat(ifname, "rx_dropped");
        let out = ns.try_exec(&["ethtool", "-S", ifname]);
        if !out.status.success() {
            return None;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let overflow = (name.starts_with("rx_queue_")
                && name.ends_with("_drops")
                && !name.ends_with("_xdp_drops"))
                || name.ends_with("_xdp_tx_errors")
                || name.ends_with("_xdp_xmit_errors");
            if overflow {
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

fn nft(net: &LabNet, ruleset: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("{}.nft", crate::netns::unique("sgb")));
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

fn install(net: &mut LabNet, defence: Defence, attacker: IpAddr) -> anyhow::Result<Guard> {
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
            net.start_synguard(&[])?;
            Guard::None
        }
        Defence::NoopDrop => {
            let n = net
                .server
                .spawn(|| -> anyhow::Result<Noop> {
                    let mut n = Noop::load(baseline::XDP_DROP)?;
                    n.attach("eth0")?;
                    Ok(n)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("attaching the no-op panicked"))??;
            Guard::Noop(n)
        }
    })
}

/// softirq ms per second with only the employees at work (no attack, no defence).
pub fn idle_softirq(duration: Duration, stop: &Arc<AtomicBool>) -> anyhow::Result<f64> {
    let r = run(
        Attack::SingleSource,
        Defence::Kernel,
        Some(0),
        duration,
        None,
        stop,
    )?;
    Ok(r.softirq_ms_per_s)
}

/// One run. `rate` `Some(0)` sends nothing (the idle measurement); `idle_ms_per_s` is
/// subtracted to give the softirq cost per attack packet.
pub fn run(
    attack: Attack,
    defence: Defence,
    rate: Option<u64>,
    duration: Duration,
    idle_ms_per_s: Option<f64>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Survival> {
    let mut net = LabNet::new(Profile::Defaults)?;
    let attacker: IpAddr = "203.0.113.0".parse()?;
    let _guard = install(&mut net, defence, attacker)?;
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let attack_start = start + warmup;
    let attack_end = attack_start + duration;
    let staff = lab::employees(&net, false, attack_end, stop);
    thread::sleep(warmup);
    let soft_before = lab::softirq_ticks();
    let drops_before = path_drops(&net);
    let t0 = Instant::now();
    let sent = if rate == Some(0) {
        thread::sleep(duration);
        0
    } else {
        let spec = FloodSpec {
            ifindex: net.attacker.ifindex("eth0"),
            src_mac: lab::mac_of(&net.attacker, "eth0")?,
            dst_mac: lab::mac_of(&net.router, "r-att")?,
            source: match attack {
                Attack::SingleSource => Source::Fixed(attacker),
                Attack::Forged => Source::Random("198.18.0.0/15".parse()?),
            },
            dst: SERVER4.parse()?,
            dport: 80,
            rate,
            duration,
            threads: if rate.is_some() { 2 } else { 1 },
            batch: 64,
        };
        let stop2 = stop.clone();
        net.attacker
            .spawn(move || flood::run(&spec, &stop2))
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
            .sent
    };
    let secs = t0.elapsed().as_secs_f64();
    let soft = lab::softirq_ticks().saturating_sub(soft_before);
    let path_drops = path_drops(&net)
        .zip(drops_before)
        .map(|(a, b)| a.saturating_sub(b));
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
    // USER_HZ is 100: a tick is 10 ms.
    let soft_ms = soft as f64 * 10.0;
    let softirq_ms_per_s = soft_ms / secs.max(1e-9);
    let softirq_ns_per_packet = idle_ms_per_s.filter(|_| sent > 0).map(|idle| {
        let extra_ms = (soft_ms - idle * secs).max(0.0);
        extra_ms * 1e6 / sent as f64
    });
    Ok(Survival {
        attack,
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
        softirq_ms_per_s,
        softirq_ns_per_packet,
        path_drops,
    })
}
