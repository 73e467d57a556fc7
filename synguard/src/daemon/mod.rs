//! `synguard run`: load the program, write the config, attach to interfaces, and keep
//! the state in order (ban events, expiry, reloads) until told to stop.
//!
//! Restarts never open a gap: maps and links are pinned, a new `run` loads its program
//! against the pinned maps and swaps it into the pinned links atomically
//! (`BPF_LINK_UPDATE`), so packets always meet one program or the other.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    maps::{MapData, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use synguard_common::{
    EVENT_ATTACK_OFF, EVENT_ATTACK_ON, EVENT_BAN, EVENT_CHALLENGE, Event, FAMILY_V4, RULE_ALLOW,
    RULE_BAN, SourceKey, capacity, map_names, stat,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    bpf::{LoadOptions, Loaded, Maps},
    cli::{KeyArgs, RunArgs, XdpModeArg},
    clock,
    config::{Settings, format_duration},
    error::usage,
    journal::{self, Journal},
    net::{v4_net, v6_net},
    pins, privs, rules,
};

mod attach;
mod events;
mod housekeeping;
mod keeper;
mod syncookies;

pub(crate) use attach::remove_pins;
pub use attach::{Iface, resolve_ifaces};
use attach::{stale_links, start};
use events::{drain_ring, readable};

/// Defaults, then the file, then command-line keys. Every error is a usage error and
/// changes nothing.
pub fn load_settings(file: Option<&Path>, keys: &KeyArgs) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    if let Some(path) = file {
        let text = fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
        s.apply_toml(&text)
            .map_err(|e| usage(format!("{}: {e}", path.display())))?;
    }
    for (k, v) in &keys.0 {
        s.set(k, v).map_err(|e| usage(e.to_string()))?;
    }
    Ok(s)
}

/// "101 SYNs within 1 ms (at least 101000 SYN/s)" or "450 SYNs in 800 ms (562 SYN/s)".
/// The kernel measures the rate over the source's current window (at most a second) with
/// a coarse clock, so windows shorter than a millisecond only give a lower bound.
pub fn describe_rate(syns: u64, rate: u64) -> String {
    if rate == 0 {
        return format!("{syns} SYNs");
    }
    let ms = syns.saturating_mul(1000) / rate;
    if ms <= 1 {
        format!("{syns} SYNs within 1 ms (at least {rate} SYN/s)")
    } else {
        format!("{syns} SYNs in {ms} ms ({rate} SYN/s)")
    }
}

struct Daemon {
    pin_dir: PathBuf,
    maps: Maps,
    names: HashMap<u32, String>,
    known_bans: HashSet<IpNet>,
    settings: Settings,
    config_file: Option<PathBuf>,
    keys: KeyArgs,
    generation: u64,
    ticks: u64,
    rules_len: usize,
    purge_warned: bool,
    /// Interfaces in attack mode, as last reported.
    attacks: HashSet<u32>,
    journal: Option<Journal>,
    /// Counters at the last sample, by ifindex.
    last_counters: HashMap<u32, [u64; stat::COUNT]>,
    last_sample: Instant,
    /// Manual entries at the last sweep: (kind, comment), to journal list changes.
    manual: HashMap<IpNet, (u8, String)>,
    /// Per-second rates of the latest sample, for the metrics endpoint.
    rates: crate::metrics::Rates,
    /// Hits of every block and ban at the last sweep, and at the last sample: the
    /// difference says which entries dropped the most in between.
    rule_hits: HashMap<IpNet, (u8, u64)>,
    sampled_hits: HashMap<IpNet, u64>,
    /// The addresses the last proofs refresh protected (see `proofs::refresh`).
    protected: Vec<(std::net::IpAddr, u32)>,
    /// The machine's addresses at the last refresh (see `locals`).
    locals: std::collections::BTreeSet<std::net::IpAddr>,
    /// What the last reading of the NAT rules found (see `nat`); `None` before the first.
    nat: Option<crate::nat::Reading>,
    /// A reading of the NAT rules under way, in a thread of its own.
    nat_reading: Option<std::thread::JoinHandle<crate::nat::Reading>>,
    /// Peers of connections still to prove (see `proofs::prove_peers`).
    peers: Vec<std::net::IpAddr>,
    /// Per housekeeping step: when its last error was logged, and how many since.
    step_errors: HashMap<&'static str, (Option<Instant>, u64)>,
    /// The link to CrowdSec's Local API (`crowdsec-url`), if any.
    crowdsec: Option<crate::crowdsec::enforce::Crowdsec>,
    /// Its keys as `run` started with them, and their flags (a reload only says when the
    /// file changes them: they take effect at the next start).
    crowdsec_settings: crate::crowdsec::Settings,
    crowdsec_args: crate::crowdsec::Args,
}

impl Daemon {
    fn journal(&mut self, event: journal::Event) {
        if let Some(j) = self.journal.as_mut() {
            j.write(event);
        }
    }

    fn iface_name(&self, ifindex: u32) -> String {
        self.names
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("ifindex {ifindex}"))
    }
}

/// `synguard run`.
pub async fn run(pin_dir: PathBuf, state_dir: PathBuf, args: RunArgs) -> anyhow::Result<()> {
    privs::require_for_run()?;
    let settings = load_settings(args.config.as_deref(), &args.keys)?;
    let crowdsec = crate::crowdsec::load(args.config.as_deref(), &args.crowdsec)?;
    // Read now, so a missing or empty file stops `run` before it attaches anything.
    let crowdsec_key = match &crowdsec.key_file {
        Some(p) if crowdsec.enabled() => Some(crate::crowdsec::read_key(p)?),
        _ => None,
    };
    let crowdsec_creds = match &crowdsec.credentials {
        Some(p) if crowdsec.enabled() && crowdsec.share != crate::crowdsec::Share::Off => {
            Some(crate::crowdsec::read_credentials(p)?)
        }
        _ => None,
    };
    let ifaces = resolve_ifaces(&args.ifaces)?;
    let kernel = crate::kernel::probe();
    if let Some(refusal) = kernel.refusal() {
        bail!(refusal);
    }
    if kernel.degraded.is_empty() {
        log::info!(
            "kernel {}: every feature synguard uses is present",
            kernel.release
        );
    }
    for what in &kernel.degraded {
        log::warn!("kernel {}: {what}", kernel.release);
    }
    let metrics = match args.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };

    let prepared = pins::prepare(&pin_dir)?;
    let _daemon_lock = pins::lock_daemon(&pin_dir)?;
    let adopting = pins::has_state(&pin_dir);
    let (mut loaded, attachments, generation, nat) =
        match start(&pin_dir, &settings, &ifaces, args.xdp_mode, adopting) {
            Ok(started) => started,
            Err(e) => {
                // Undo what this run did, and only that. Adopted state stays as it was,
                // protecting, with its config unchanged.
                if !adopting {
                    let _ = remove_pins(&pin_dir);
                    pins::unprepare(&pin_dir, &prepared);
                }
                return Err(e);
            }
        };
    if adopting {
        let n = rules::list(&loaded.maps)?.len();
        log::info!(
            "adopted the state pinned in {} by a previous run ({n} allow/block/ban entries)",
            pin_dir.display()
        );
    }
    for a in &attachments {
        if a.iface.index >= synguard_common::capacity::STATS_SLOTS {
            log::warn!(
                "{} has ifindex {} (>= {}): its counters are shared with other such interfaces",
                a.iface.name,
                a.iface.index,
                synguard_common::capacity::STATS_SLOTS
            );
        }
        log::info!(
            "protecting {} (ifindex {}), XDP {}",
            a.iface.name,
            a.iface.index,
            if a.mode == "adopted" {
                "program replaced atomically in the pinned link".to_string()
            } else {
                format!("{} mode", a.mode)
            }
        );
    }

    // Kernel-side warnings (tables full) are rare and rate-limited; forward them to our log.
    match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        Ok(logger) => {
            let mut logger = readable(logger)?;
            tokio::spawn(async move {
                while let Ok(mut guard) = logger.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => log::debug!("no kernel log channel: {e}"),
    }

    for path in stale_links(&pin_dir, &ifaces) {
        log::warn!(
            "{} was protected by a previous run but is not among --iface: detaching it",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let _ = fs::remove_file(&path);
    }
    match crate::proofs::attach(&mut loaded.ebpf, &pin_dir) {
        Ok(Some(root)) => log::info!(
            "proofs: every connection this machine accepts proves its peer owns its address \
             (a sock_ops program on the cgroup {root})"
        ),
        Ok(None) => log::warn!(
            "no cgroup v2 hierarchy could be opened: connections prove their peers only \
             through SYN cookies and run's look at the connections every {}s",
            crate::proofs::REFRESH.as_secs()
        ),
        Err(e) => log::warn!(
            "proofs from accepted connections are off ({e:#}): connections prove their \
             peers only through SYN cookies and run's look at the connections every {}s",
            crate::proofs::REFRESH.as_secs()
        ),
    }
    log::info!(
        "synguard {} running: {}; state pinned in {}",
        crate::version::LONG,
        settings
            .entries()
            .iter()
            // As `status` says it: an empty port list is every port.
            .map(|(k, v)| format!("{k}={}", if v.is_empty() { "all" } else { v }))
            .collect::<Vec<_>>()
            .join(" "),
        pin_dir.display()
    );

    let Loaded { ebpf, mut maps } = loaded;
    let mut ring = readable(
        maps.events
            .take()
            .ok_or_else(|| anyhow!("{} missing", map_names::EVENTS))?,
    )?;
    let known_bans = rules::list(&maps)?
        .into_iter()
        .filter(|e| e.rule.kind == RULE_BAN)
        .map(|e| e.net)
        .collect();
    let mut daemon = Daemon {
        pin_dir: pin_dir.clone(),
        maps,
        names: attachments
            .iter()
            .map(|a| (a.iface.index, a.iface.name.clone()))
            .collect(),
        known_bans,
        settings,
        config_file: args.config.clone(),
        keys: args.keys.clone(),
        generation,
        ticks: 0,
        rules_len: 0,
        purge_warned: false,
        attacks: HashSet::new(),
        journal: match Journal::open(&state_dir) {
            Ok(j) => Some(j),
            Err(e) => {
                log::warn!("no event journal (so no `synguard report`): {e:#}");
                None
            }
        },
        last_counters: HashMap::new(),
        last_sample: Instant::now(),
        manual: HashMap::new(),
        rates: Default::default(),
        rule_hits: HashMap::new(),
        sampled_hits: HashMap::new(),
        protected: Vec::new(),
        locals: Default::default(),
        nat: Some(nat),
        nat_reading: None,
        peers: Vec::new(),
        step_errors: HashMap::new(),
        crowdsec: None,
        crowdsec_settings: crowdsec.clone(),
        crowdsec_args: args.crowdsec.clone(),
    };
    daemon.journal(journal::Event::Start {
        version: crate::version::LONG.to_string(),
        interfaces: attachments.iter().map(|a| a.iface.name.clone()).collect(),
        config: daemon
            .settings
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        adopted: adopting,
    });
    for a in &attachments {
        daemon.journal(journal::Event::Interface {
            name: a.iface.name.clone(),
            what: if a.mode == "adopted" {
                "adopted".to_string()
            } else {
                format!("attached ({} mode)", a.mode)
            },
        });
    }
    // The current lists are the baseline for journalling later changes.
    daemon.manual = rules::list(&daemon.maps)?
        .into_iter()
        .filter(|e| e.rule.kind != RULE_BAN)
        .map(|e| (e.net, (e.rule.kind, e.comment())))
        .collect();
    // Counters so far are the baseline of the first sample.
    for (&ifindex, _) in daemon.names.clone().iter() {
        let slot = capacity::stats_slot(ifindex);
        daemon
            .last_counters
            .insert(ifindex, daemon.maps.counters(slot)?);
    }
    let _metrics_task = metrics.map(|listener| {
        let addr = listener.local_addr().ok();
        log::info!(
            "serving Prometheus metrics at http://{}/metrics",
            addr.map_or_else(|| "?".to_string(), |a| a.to_string())
        );
        tokio::spawn(crate::metrics::serve(
            listener,
            pin_dir.clone(),
            state_dir.clone(),
            daemon.rates.clone(),
        ))
    });
    // Pick up an attack in progress (adopted state). The keeper puts tcp_syncookies where
    // it belongs from now on: a run that crashed during an attack may have left it
    // changed, one restarted during an attack hands it over.
    daemon.settle_attacks();
    let (notes_tx, mut notes_rx) = tokio::sync::mpsc::unbounded_channel();
    let keeper = keeper::Keeper::spawn(
        pin_dir.clone(),
        daemon.names.keys().copied().collect(),
        notes_tx,
    )?;
    if let Err(e) = daemon
        .refresh_locals()
        .and_then(|()| daemon.refresh_proofs())
    {
        log::warn!("proofs: {e:#}");
    }

    // The CrowdSec link: its task talks HTTP; this loop alone writes the tables.
    let (cs_tx, mut cs_rx) = tokio::sync::mpsc::channel(16);
    let mut cs_open = crowdsec.enabled();
    let _crowdsec_task = if crowdsec.enabled() {
        log::info!("crowdsec: linked to {}", crowdsec.describe());
        let (push_tx, push_rx) = tokio::sync::mpsc::channel(4096);
        let push = crowdsec_creds.is_some().then_some(push_tx);
        let cs = crate::crowdsec::enforce::Crowdsec::new(
            crowdsec.clone(),
            pin_dir.clone(),
            state_dir.clone(),
            push,
        );
        cs.write_link();
        daemon.crowdsec = Some(cs);
        Some(tokio::spawn(crate::crowdsec::task::run(
            crowdsec,
            crowdsec_key,
            crowdsec_creds,
            cs_tx,
            push_rx,
        )))
    } else {
        drop(cs_tx);
        let _ = fs::remove_file(crate::crowdsec::link_path(&state_dir));
        // Decisions an earlier run pulled: with no link, nothing would ever lift them.
        match crate::crowdsec::enforce::lift_all(&mut daemon.maps, &pin_dir) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "lifted the {n} CrowdSec decisions an earlier run had pulled: this run has no \
                 crowdsec-url"
            ),
            Err(e) => log::warn!("crowdsec: lifting an earlier run's decisions: {e:#}"),
        }
        None
    };

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failure of the loop itself ends it like a crash: the program and its state stay
    // (as with --keep), and the host's settings are left right for the next `run`.
    let mut fatal: Option<anyhow::Error> = None;
    let why = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        fatal = Some(anyhow!(e).context("waiting for events"));
                        break "an error";
                    }
                };
                let attacks = daemon.attacks.len();
                drain_ring(guard.get_inner_mut(), &mut daemon);
                guard.clear_ready();
                if daemon.attacks.len() > attacks {
                    keeper.wake();
                }
            }
            _ = tick.tick() => daemon.housekeeping(),
            Some(note) = notes_rx.recv() => daemon.journal(note),
            msg = cs_rx.recv(), if cs_open => match (msg, daemon.crowdsec.as_mut()) {
                (Some(m), Some(cs)) => {
                    let keep = keep_reachable(&daemon.protected, &daemon.locals);
                    cs.on_msg(m, &mut daemon.maps, &keep)
                }
                _ => cs_open = false,
            },
            _ = sighup.recv() => daemon.reload(),
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
        }
    };
    drain_ring(ring.get_mut(), &mut daemon);
    // The last stretch since the previous sample, so a report sees it.
    if let Err(e) = daemon.sample() {
        log::warn!("the last rate sample: {e:#}");
    }

    keeper.stop();
    while let Ok(note) = notes_rx.try_recv() {
        daemon.journal(note);
    }
    let keep = args.keep || fatal.is_some();
    keeper::on_stop(&mut daemon.maps, keep, !daemon.attacks.is_empty());
    daemon.journal(journal::Event::Stop {
        reason: why.to_string(),
        kept: keep,
    });
    if let Some(e) = fatal {
        return Err(e.context(format!(
            "protection left in place; state stays pinned in {}",
            pin_dir.display()
        )));
    }
    if args.keep {
        log::info!(
            "{why}: leaving protection in place (--keep); state stays pinned in {}",
            pin_dir.display()
        );
        return Ok(());
    }
    for a in attachments {
        let path = pins::link_path(&pin_dir, a.iface.index, &a.iface.name);
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        drop(a.link);
        log::info!("{why}: detached from {}", a.iface.name);
    }
    drop(daemon);
    drop(ring);
    drop(ebpf);
    remove_pins(&pin_dir)?;
    pins::unprepare(&pin_dir, &prepared);
    log::info!("removed the pinned state in {}", pin_dir.display());
    Ok(())
}

/// A source's SYN rate now (per second), from the rate windows its bucket keeps; 0 once
/// it has been quiet for two windows.
pub fn source_rate(b: &synguard_common::Bucket, now: u64) -> u64 {
    if now.saturating_sub(b.last_seen_ns) > 2 * synguard_common::RATE_WINDOW_NS {
        return 0;
    }
    // At least a young window's span: three SYNs in a millisecond are not 3000 SYN/s.
    let (syns, span) = synguard_common::rate_span(b, now);
    syns * 1_000_000_000 / span.max(synguard_common::YOUNG_WINDOW_NS)
}

/// The prefix a sources-table key stands for.
fn is_v4_mapped(k: &SourceKey) -> bool {
    k.addr[..10] == [0; 10] && k.addr[10..12] == [0xff, 0xff]
}

pub fn source_net(k: &SourceKey) -> Option<IpNet> {
    if is_v4_mapped(k) {
        v4_net(
            [k.addr[12], k.addr[13], k.addr[14], k.addr[15]],
            k.prefix_len,
        )
    } else {
        v6_net(k.addr, k.prefix_len)
    }
}

/// The addresses no CrowdSec decision may cut off: the machine's own, its gateways and
/// resolvers.
fn keep_reachable(
    protected: &[(std::net::IpAddr, u32)],
    locals: &std::collections::BTreeSet<std::net::IpAddr>,
) -> Vec<std::net::IpAddr> {
    protected
        .iter()
        .map(|(a, _)| *a)
        .chain(locals.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_described_honestly() {
        assert_eq!(
            describe_rate(101, 101_000),
            "101 SYNs within 1 ms (at least 101000 SYN/s)"
        );
        assert_eq!(describe_rate(450, 562), "450 SYNs in 800 ms (562 SYN/s)");
        assert_eq!(describe_rate(3, 0), "3 SYNs");
    }
}
