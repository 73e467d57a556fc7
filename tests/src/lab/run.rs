//! The lab's scenarios: the attacks, the employees fetching the page throughout, what
//! one run measures, and the table that shows it.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use synguard_common::stat;

use super::{EMPLOYEES, LabNet, Profile, SERVER4, SERVER6, page_request};
use crate::kit::{
    flood::{self, FloodSpec, Source},
    netns::mac_of,
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
    /// `nat-guests` only: the guest's calls to its upstream API during the attack.
    pub guest: Option<GuestResult>,
}

/// What the `nat-guests` profile's guest saw of its calls out (through the server's
/// masquerade), during the attack.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuestResult {
    pub calls: u64,
    pub ok: u64,
    /// The most frequent failures.
    pub errors: Vec<String>,
}

/// The guest's calls: one caller per family, each calling the API in a loop until
/// `until`.
fn guest_calls(
    net: &LabNet,
    until: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<Attempt>>> {
    let Some(guest) = &net.guest else {
        return Vec::new();
    };
    [super::API4, super::API6]
        .into_iter()
        .map(|api| {
            let target: SocketAddr = api.parse().expect("addr");
            let stop = stop.clone();
            guest.spawn(move || {
                calls(until, &stop, || {
                    crate::kit::http::Get::new(target)
                        .timeout(REQUEST_TIMEOUT)
                        .send()
                })
            })
        })
        .collect()
}

/// A request that does not complete within this counts as failed: users give up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between an employee's requests.
pub const THINK: Duration = Duration::from_millis(100);

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
                // Spread the employees over the first think time.
                thread::sleep(THINK * u32::from(i) / u32::from(EMPLOYEES));
                calls(until, &stop, || {
                    page_request(target)
                        .bind(local)
                        .timeout(REQUEST_TIMEOUT)
                        .send()
                })
            })
        })
        .collect()
}

/// Make `request` every [`THINK`] until `until` (or `stop`), recording each attempt.
fn calls(
    until: Instant,
    stop: &AtomicBool,
    request: impl Fn() -> Result<Duration, String>,
) -> Vec<Attempt> {
    let mut out = Vec::new();
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = request();
        out.push(Attempt { started, result });
        thread::sleep(THINK);
    }
    out
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
    let guests = guest_calls(&net, attack_end, stop);
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
    let guest = if guests.is_empty() {
        None
    } else {
        let mut calls = Vec::new();
        for h in guests {
            calls.extend(h.join().map_err(|_| anyhow::anyhow!("guest panicked"))?);
        }
        let during: Vec<&Attempt> = calls
            .iter()
            .filter(|a| a.started >= attack_start && a.started < attack_end)
            .collect();
        let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
        for a in &during {
            if let Err(e) = &a.result {
                *errors.entry(e.clone()).or_default() += 1;
            }
        }
        Some(GuestResult {
            calls: during.len() as u64,
            ok: during.iter().filter(|a| a.result.is_ok()).count() as u64,
            errors: errors
                .into_iter()
                .take(3)
                .map(|(e, n)| format!("{n}x {e}"))
                .collect(),
        })
    };
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
        guest,
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
        "guest calls ok",
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
                r.guest.as_ref().map_or("-".into(), |g| {
                    format!(
                        "{:.1} % ({}/{})",
                        if g.calls == 0 {
                            0.0
                        } else {
                            100.0 * g.ok as f64 / g.calls as f64
                        },
                        g.ok,
                        g.calls
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
    for tool in ["ip", "nginx", "hping3", "nft", "iptables", "nstat", "ss"] {
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
