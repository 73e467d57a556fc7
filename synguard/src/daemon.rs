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

/// A network interface by name and index.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub index: u32,
}

/// Resolve interface names, refusing unknown ones with the list of those that exist.
pub fn resolve_ifaces(names: &[String]) -> anyhow::Result<Vec<Iface>> {
    let mut out: Vec<Iface> = Vec::new();
    for name in names {
        let index = CString::new(name.as_str())
            .ok()
            // SAFETY: a valid NUL-terminated name.
            .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
            .unwrap_or(0);
        if index == 0 {
            let mut known: Vec<String> = fs::read_dir("/sys/class/net")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            known.sort();
            return Err(usage(format!(
                "unknown interface {name:?}; interfaces in this network namespace: {}",
                known.join(", ")
            )));
        }
        if out.iter().any(|i| i.index == index) {
            return Err(usage(format!("interface {name} given twice")));
        }
        out.push(Iface {
            name: name.clone(),
            index,
        });
    }
    Ok(out)
}

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

/// One protected interface.
struct Attachment {
    iface: Iface,
    mode: &'static str,
    /// Our descriptor of the pinned link; the pin keeps it attached without us.
    link: FdLink,
}

fn is_errno(e: &ProgramError, codes: &[i32]) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|c| codes.contains(&c))
        {
            return true;
        }
        src = err.source();
    }
    false
}

fn attach_fresh(
    prog: &mut Xdp,
    iface: &Iface,
    mode: XdpModeArg,
) -> anyhow::Result<(FdLink, &'static str)> {
    let busy = |e: &ProgramError| {
        if is_errno(e, &[libc::EBUSY, libc::EEXIST]) {
            Some(anyhow!(
                "{} already has another XDP program attached; detach it first (`ip link set \
                 dev {} xdp off`, or stop the tool that attached it)",
                iface.name,
                iface.name
            ))
        } else {
            None
        }
    };
    let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach_to_if_index(iface.index, m);
    let (id, used) = match mode {
        XdpModeArg::Skb => match try_mode(prog, XdpMode::Skb) {
            Ok(id) => (id, "generic (skb)"),
            Err(e) => return Err(busy(&e).unwrap_or_else(|| anyhow!(e))),
        },
        XdpModeArg::Native => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                if let Some(b) = busy(&e) {
                    return Err(b);
                }
                return Err(usage(format!(
                    "{} does not support native XDP ({e}); use --xdp-mode auto to fall back \
                     to generic mode, or --xdp-mode skb",
                    iface.name
                )));
            }
        },
        XdpModeArg::Auto if crate::net::driver(&iface.name).as_deref() == Some("veth") => {
            // A veth's frames are socket buffers already, which generic mode runs on as
            // they are. Native XDP on a veth moves them onto a ring of 256 frames, copied
            // into pages, that a flood the stack must handle itself (SYNs left to the
            // kernel, a DNAT'd container's) overflows, taking the employees' frames with
            // it; and its XDP_TX needs a program on the peer. Measured in the lab's
            // `container` profile at 150k forged SYN/s: native 71 %, generic 100 %.
            log::info!(
                "{}: a veth, so generic (skb) mode, which handles its socket buffers as they \
                 are (`--xdp-mode native` forces the driver's mode)",
                iface.name
            );
            match try_mode(prog, XdpMode::Skb) {
                Ok(id) => (id, "generic (skb)"),
                Err(e) => return Err(busy(&e).unwrap_or_else(|| anyhow!(e))),
            }
        }
        XdpModeArg::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                if let Some(b) = busy(&e) {
                    return Err(b);
                }
                log::warn!(
                    "{}: the driver has no native XDP ({e}); falling back to generic (skb) \
                     mode, which works everywhere but costs more per packet",
                    iface.name
                );
                match try_mode(prog, XdpMode::Skb) {
                    Ok(id) => (id, "generic (skb)"),
                    Err(e) => {
                        return Err(busy(&e).unwrap_or_else(|| {
                            usage(format!("{} cannot run XDP programs: {e}", iface.name))
                        }));
                    }
                }
            }
        },
    };
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link).map_err(|_| {
        anyhow!(
            "the kernel attached {} through netlink rather than a BPF link, so protection \
             could not outlive this process; this kernel is too old for synguard",
            iface.name
        )
    })?;
    Ok((fd, used))
}

/// Swap our program into an interface's pinned link (atomic: the pin stays in place the
/// whole time, so the interface is never without a program).
fn adopt(prog: &mut Xdp, pin_dir: &Path, iface: &Iface) -> anyhow::Result<Attachment> {
    let path = pins::link_path(pin_dir, iface.index, &iface.name);
    let pinned = PinnedLink::from_pin(&path)?;
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    let id = prog.attach_to_link(link)?;
    let link = FdLink::try_from(prog.take_link(id)?)?;
    Ok(Attachment {
        iface: iface.clone(),
        mode: "adopted",
        link,
    })
}

/// Attach to an interface and pin the link.
fn attach_new(
    prog: &mut Xdp,
    pin_dir: &Path,
    iface: &Iface,
    mode: XdpModeArg,
) -> anyhow::Result<Attachment> {
    let path = pins::link_path(pin_dir, iface.index, &iface.name);
    let (link, used) = attach_fresh(prog, iface, mode)?;
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning the link of {} at {}", iface.name, path.display()))?;
    Ok(Attachment {
        iface: iface.clone(),
        mode: used,
        link: pinned.into(),
    })
}

/// Links pinned by a previous run for interfaces this run does not protect (or that have
/// been recreated since, with a new index).
fn stale_links(pin_dir: &Path, ifaces: &[Iface]) -> Vec<PathBuf> {
    let keep: Vec<PathBuf> = ifaces
        .iter()
        .map(|i| pins::link_path(pin_dir, i.index, &i.name))
        .collect();
    fs::read_dir(pins::links_dir(pin_dir))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| !keep.contains(p))
                .collect()
        })
        .unwrap_or_default()
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
    /// When cookies were last answered from XDP (see `manage_syncookies`).
    cookies_wanted: Option<Instant>,
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

    fn on_event(&mut self, e: &Event) {
        match e.kind {
            EVENT_ATTACK_ON => {
                let challenged = e.syns == synguard_common::ATTACK_BY_CHALLENGE;
                return self.on_attack(e.ifindex, true, e.rate, 0, challenged);
            }
            EVENT_ATTACK_OFF => return self.on_attack(e.ifindex, false, e.rate, e.syns, false),
            EVENT_BAN | EVENT_CHALLENGE => {}
            _ => return,
        }
        let net = if e.family == FAMILY_V4 {
            v4_net(
                [e.addr[0], e.addr[1], e.addr[2], e.addr[3]],
                u32::from(e.prefix_len),
            )
        } else {
            v6_net(e.addr, u32::from(e.prefix_len))
        };
        let Some(net) = net else { return };
        if e.kind == EVENT_CHALLENGE {
            return self.on_challenge(e, net);
        }
        self.known_bans.insert(net);
        let until = clock::rfc3339(clock::to_wall(e.expires_ns));
        log::warn!(
            "banned {net} on {}: {}, for {} (until {until})",
            self.iface_name(e.ifindex),
            describe_rate(e.syns, e.rate),
            format_duration(Duration::from_nanos(e.expires_ns.saturating_sub(e.time_ns))),
        );
        self.journal(journal::Event::Ban {
            prefix: net.to_string(),
            interface: self.iface_name(e.ifindex),
            syns: e.syns,
            syn_rate: e.rate,
            until,
        });
        self.purge(&net);
        self.share_ban(net, e.syns, e.rate, e.expires_ns);
    }

    /// Hand a new ban to the CrowdSec link, with its source's proof (see
    /// `crowdsec::enforce::Crowdsec::share_ban`).
    fn share_ban(&mut self, net: IpNet, syns: u64, rate: u64, expires_ns: u64) {
        if self.crowdsec.is_none() {
            return;
        }
        let proof = self.proof_how(&net);
        if let Some(cs) = self.crowdsec.as_mut() {
            cs.share_ban(net, syns, rate, expires_ns, proof);
        }
    }

    /// How the source of `net` proved it owns its address (a `PROOF_*`), if its proof
    /// holds now.
    fn proof_how(&self, net: &IpNet) -> Option<u32> {
        let key = crate::net::source_key(
            net.network(),
            self.settings.ipv4_prefix,
            self.settings.ipv6_prefix,
        );
        crate::proofs::get(&self.maps, &key, clock::monotonic_ns())
            .ok()
            .flatten()
            .map(|p| p.how)
    }

    /// A proven source went over its limit: say so once, with how it had proven itself.
    fn on_challenge(&mut self, e: &Event, net: IpNet) {
        let proof = self.proof_how(&net).map_or("proven", crate::proofs::how);
        log::warn!(
            "{net} on {}: {}, but it {proof}: the SYNs carrying its address are most \
             likely forged; challenged with SYN cookies (attack mode), not banned",
            self.iface_name(e.ifindex),
            describe_rate(e.syns, e.rate),
        );
        self.journal(journal::Event::Challenge {
            prefix: net.to_string(),
            interface: self.iface_name(e.ifindex),
            syns: e.syns,
            syn_rate: e.rate,
            proof: proof.to_string(),
        });
    }

    /// The proofs `run` makes itself, and the bans of sources proven since (see
    /// `proofs::refresh`); and the machine's addresses, the only ones attack mode answers
    /// SYNs for (see `locals`). At start and every `proofs::REFRESH`.
    fn refresh_proofs(&mut self) -> anyhow::Result<()> {
        let addrs = crate::locals::addresses()?;
        if addrs != self.locals {
            let synced = crate::locals::sync(&mut self.maps, &addrs)?;
            log::info!(
                "attack mode answers SYNs for this machine's {} addresses; SYNs for any other \
                 (bridged or routed to guests) are left to the kernel",
                synced.kept
            );
            if synced.left_out > 0 {
                log::warn!(
                    "{} of the machine's addresses did not fit in attack mode's table of {} \
                     per family: SYNs for them are left to the kernel",
                    synced.left_out,
                    synguard_common::capacity::LOCAL_ADDRS
                );
            }
            self.locals = addrs;
        }
        let nat = crate::nat::read();
        if self.nat.as_ref() != Some(&nat) {
            crate::nat::sync(&mut self.maps, &nat.ports)?;
            match &nat.warning {
                Some(w) => log::warn!("{w}"),
                None if nat.ports.is_empty() => {
                    log::info!("no NAT rule rewrites a destination port here")
                }
                None => log::info!(
                    "attack mode leaves SYNs for ports {} to the kernel: NAT rules send them \
                     to other sockets (a container's published port, a redirect)",
                    nat.ports.describe()
                ),
            }
            self.nat = Some(nat);
        }
        let r = crate::proofs::refresh(
            &mut self.maps,
            &self.settings,
            clock::monotonic_ns(),
            &self.protected,
        )?;
        if r.filter.cleared > 0 {
            log::debug!(
                "proof filter: {} sets may hold a proof, {} cleared (their proofs ended)",
                r.filter.set,
                r.filter.cleared
            );
        }
        if r.protected != self.protected {
            let list: Vec<String> = r
                .protected
                .iter()
                .map(|(a, how)| format!("{a} ({})", crate::proofs::how(*how)))
                .collect();
            log::info!(
                "never banned, whatever SYNs carry their addresses: {}",
                if list.is_empty() {
                    "no gateway or resolver found".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
        for net in &r.lifted {
            self.known_bans.remove(net);
            log::warn!(
                "lifted the ban on {net}: it has connections to this machine, so it owns \
                 its address, and the SYNs that banned it were most likely forged"
            );
            self.journal(journal::Event::Unban {
                prefix: net.to_string(),
                why: "proven".into(),
                kind: "auto".into(),
                hits: 0,
            });
        }
        self.protected = r.protected;
        Ok(())
    }

    /// Attack mode started or ended on an interface (events from several CPUs can repeat
    /// a transition: only real changes are logged).
    fn on_attack(&mut self, ifindex: u32, on: bool, rate: u64, lasted_ms: u64, challenged: bool) {
        let was = self.attacks.contains(&ifindex);
        if on == was {
            return;
        }
        let name = self.iface_name(ifindex);
        if on {
            self.attacks.insert(ifindex);
            let what = match self.settings.syn_cookies {
                crate::config::Cookies::Off => {
                    "syn-cookies = off, so SYNs are only counted and metered".to_string()
                }
                _ => "SYNs from unverified sources are answered with SYN cookies from XDP".into(),
            };
            if challenged {
                log::warn!(
                    "attack mode ON on {name}: a proven source is over its limit (the SYNs in \
                     its name are most likely forged); {what}"
                );
            } else {
                log::warn!(
                    "attack mode ON on {name}: {rate} SYN/s (attack-syn-rate {}); {what}",
                    self.settings.attack_syn_rate
                );
            }
            self.journal(journal::Event::AttackOn {
                interface: name.clone(),
                syn_rate: rate,
                challenged,
            });
            self.manage_syncookies();
            // What reached the kernel before attack mode started is mostly the flood's
            // half-open connections, filling the SYN queues for a minute of retries on a
            // server without cookies. Clear them; a real client's retransmitted SYN is
            // answered with a cookie.
            if self.settings.mode != crate::config::Mode::Monitor
                && self.settings.syn_cookies != crate::config::Cookies::Off
            {
                match crate::sockdiag::purge_where(|_| true) {
                    Ok(0) => {}
                    Ok(n) => {
                        log::info!(
                            "removed {n} half-open connections the flood left in the SYN queues"
                        );
                        self.journal(journal::Event::Purge {
                            prefix: "all".into(),
                            connections: n as u64,
                        });
                    }
                    Err(e) => log::debug!("purging the SYN queues: {e}"),
                }
            }
        } else {
            self.attacks.remove(&ifindex);
            log::warn!(
                "attack mode OFF on {name} after {} (peak {rate} SYN/s)",
                format_duration(Duration::from_millis(lasted_ms))
            );
            self.journal(journal::Event::AttackOff {
                interface: name.clone(),
                peak_syn_rate: rate,
                lasted_secs: lasted_ms / 1000,
            });
        }
        self.manage_syncookies();
    }

    /// Keep the kernel settings cookies answered from XDP need while they are (see
    /// `sysctls`), and put the previous values back afterwards: `tcp_syncookies` at once,
    /// `tcp_timestamps` six calm periods later (a minute by default), so the ACKs of the
    /// last cookies are still read without timestamp offsets. Every second: this also
    /// keeps the cookie SYN-ACK's options in step with the kernel's settings.
    fn manage_syncookies(&mut self) {
        let want = match self.settings.syn_cookies {
            crate::config::Cookies::Always => true,
            crate::config::Cookies::Auto => !self.attacks.is_empty(),
            crate::config::Cookies::Off => false,
        };
        if want {
            self.cookies_wanted = Some(Instant::now());
        }
        let calm = self
            .maps
            .read_config()
            .map_or(synguard_common::ATTACK_CALM_NS, |c| c.attack_calm_ns);
        let linger = Duration::from_nanos(calm.saturating_mul(6));
        let want_ts = want || self.cookies_wanted.is_some_and(|t| t.elapsed() < linger);
        if let Err(e) = crate::sysctls::sync_syncookies(&self.pin_dir, &mut self.maps, want) {
            log::error!("managing net.ipv4.tcp_syncookies: {e:#}");
        }
        if let Err(e) = crate::sysctls::sync_timestamps(&self.pin_dir, &mut self.maps, want_ts) {
            log::error!("managing net.ipv4.tcp_timestamps: {e:#}");
        }
    }

    /// Attack state left on by a complete silence (no SYN closes a rate window, so the
    /// kernel never sees the calm): clear it once the calm period has passed.
    fn settle_attacks(&mut self) {
        let now = clock::monotonic_ns();
        let calm = self
            .maps
            .read_config()
            .map_or(synguard_common::ATTACK_CALM_NS, |c| c.attack_calm_ns);
        for ifindex in self.names.keys().copied().collect::<Vec<_>>() {
            let slot = if ifindex < capacity::STATS_SLOTS {
                ifindex
            } else {
                0
            };
            let Ok(mut st) = self.maps.ifstate(slot) else {
                continue;
            };
            if st.attack != 0 && now.saturating_sub(st.rate_ns) > calm + 1_000_000_000 {
                let lasted = now.saturating_sub(st.since_ns) / 1_000_000;
                st.attack = 0;
                st.calm_since_ns = 0;
                if self.maps.ifstate.set(slot, st, 0).is_ok() {
                    self.on_attack(ifindex, false, st.peak_rate, lasted, false);
                }
            } else if st.attack != 0 && !self.attacks.contains(&ifindex) {
                // Adopted, or its event was lost: pick it up.
                self.on_attack(ifindex, true, st.rate, 0, false);
            }
        }
    }

    /// Remove a newly banned source's half-open connections from the SYN queues (see
    /// `purge`). Not in monitor mode, which changes nothing.
    fn purge(&mut self, net: &IpNet) {
        if self.settings.mode == crate::config::Mode::Monitor {
            return;
        }
        match crate::sockdiag::purge(net) {
            Ok(0) => {}
            Ok(n) => {
                log::info!(
                    "removed {n} half-open connections from {net} from the server's SYN queues"
                );
                self.journal(journal::Event::Purge {
                    prefix: net.to_string(),
                    connections: n as u64,
                });
            }
            Err(e) if !self.purge_warned => {
                self.purge_warned = true;
                log::warn!(
                    "cannot remove half-open connections of banned sources ({e}); they will \
                     time out by themselves (the kernel needs CONFIG_INET_DIAG_DESTROY)"
                );
            }
            Err(_) => {}
        }
    }

    /// Once a second: expire entries, find bans whose events were suppressed, keep the
    /// allowlist winning, notice `config set`, and every 10 s forget refilled buckets.
    fn housekeeping(&mut self) -> anyhow::Result<()> {
        self.ticks += 1;
        if self
            .ticks
            .is_multiple_of(crate::proofs::REFRESH.as_secs().max(1))
        {
            let _lock = pins::lock_writers(&self.pin_dir)?;
            self.refresh_proofs()?;
        }
        // Expired entries are already ignored by the kernel; sweeping only reclaims room,
        // so big tables are swept less often.
        let sweep = self.rules_len < 10_000 || self.ticks.is_multiple_of(10);
        if sweep {
            let _lock = pins::lock_writers(&self.pin_dir)?;
            let expired = rules::expire(&mut self.maps)?;
            for gone in &expired {
                self.journal(journal::Event::Unban {
                    prefix: gone.net.to_string(),
                    why: "expired".into(),
                    kind: format!("{:?}", gone.kind()).to_lowercase(),
                    hits: gone.rule.hits,
                });
            }
            for gone in expired {
                self.known_bans.remove(&gone.net);
                self.manual.remove(&gone.net);
                let what = match gone.rule.kind {
                    RULE_BAN => "ban",
                    RULE_ALLOW => "allow entry",
                    _ => "block",
                };
                log::info!(
                    "{what} on {} expired ({} packets dropped while it lasted)",
                    gone.net,
                    gone.rule.hits
                );
            }
            let mut entries = rules::list(&self.maps)?;
            let keep = keep_reachable(&self.protected, &self.locals);
            if let Some(cs) = self.crowdsec.as_mut()
                && cs.restore(&mut self.maps, &entries, &keep)? > 0
            {
                entries = rules::list(&self.maps)?;
            }
            self.rules_len = entries.len();
            self.rule_hits = entries
                .iter()
                .filter(|e| e.rule.kind != RULE_ALLOW)
                .map(|e| (e.net, (e.rule.kind, e.rule.hits)))
                .collect();
            for e in entries.iter().filter(|e| e.rule.kind == RULE_BAN) {
                if self.known_bans.insert(e.net) {
                    self.purge(&e.net);
                    let until = clock::rfc3339(clock::to_wall(e.rule.expires_ns));
                    log::warn!(
                        "banned {}: {}, until {until} (found by the sweep; its event was \
                         rate-limited)",
                        e.net,
                        describe_rate(e.rule.syns, e.rule.rate),
                    );
                    self.journal(journal::Event::Ban {
                        prefix: e.net.to_string(),
                        interface: String::new(),
                        syns: e.rule.syns,
                        syn_rate: e.rule.rate,
                        until,
                    });
                    self.share_ban(e.net, e.rule.syns, e.rule.rate, e.rule.expires_ns);
                }
            }
            let lifted: Vec<IpNet> = self
                .known_bans
                .iter()
                .filter(|n| {
                    !entries
                        .iter()
                        .any(|e| e.net == **n && e.rule.kind == RULE_BAN)
                })
                .copied()
                .collect();
            for n in lifted {
                self.known_bans.remove(&n);
                log::info!("ban on {n} lifted by hand");
                self.journal(journal::Event::Unban {
                    prefix: n.to_string(),
                    why: "removed".into(),
                    kind: "auto".into(),
                    hits: 0,
                });
            }
            self.journal_list_changes(&entries);
            if entries.iter().any(|e| e.rule.kind == RULE_ALLOW) {
                let n = rules::reconcile_actions(&mut self.maps)?;
                if n > 0 {
                    log::info!(
                        "{n} block or ban entries are inside allowlisted ranges: passing them"
                    );
                }
            }
        }

        let cfg = self.maps.read_config()?;
        if cfg.generation != self.generation {
            let now = Settings::from_kernel(&cfg);
            for (k, v) in now.entries() {
                let old = self.settings.get(k).unwrap_or_default();
                if old != v {
                    log::info!("config changed: {k} {old:?} -> {v:?}");
                    if let Some(j) = self.journal.as_mut() {
                        j.write(journal::Event::Config {
                            key: k.to_string(),
                            old: old.clone(),
                            new: v.clone(),
                        });
                    }
                }
            }
            self.settings = now;
            self.generation = cfg.generation;
        }

        self.settle_attacks();
        self.manage_syncookies();
        if self.last_sample.elapsed() >= journal::sample_interval() {
            self.sample()?;
        }
        Ok(())
    }

    /// Journal what changed in the manual lists since the last sweep (the CLI changes them
    /// directly; the daemon notices).
    fn journal_list_changes(&mut self, entries: &[rules::RuleEntry]) {
        let now: HashMap<IpNet, (u8, String)> = entries
            .iter()
            .filter(|e| !matches!(e.rule.kind, RULE_BAN | synguard_common::RULE_CROWDSEC))
            .map(|e| (e.net, (e.rule.kind, e.comment())))
            .collect();
        let list = |kind: u8| if kind == RULE_ALLOW { "allow" } else { "block" };
        let mut events = Vec::new();
        for (net, (kind, comment)) in &now {
            match self.manual.get(net) {
                Some((k, _)) if k == kind => {}
                _ => events.push(journal::Event::ListChange {
                    list: list(*kind).into(),
                    prefix: net.to_string(),
                    change: "added".into(),
                    comment: comment.clone(),
                }),
            }
        }
        for (net, (kind, comment)) in &self.manual {
            if now.get(net).is_none_or(|(k, _)| k != kind) {
                events.push(journal::Event::ListChange {
                    list: list(*kind).into(),
                    prefix: net.to_string(),
                    change: "removed".into(),
                    comment: comment.clone(),
                });
            }
        }
        for e in events {
            self.journal(e);
        }
        self.manual = now;
    }

    /// Every few seconds: counter increases, attack state, table sizes and the busiest
    /// sources, into the journal (and the metrics' rates), from one walk of the sources
    /// table (mapped into memory; idle refilled buckets need no sweep: the kernel reuses
    /// their slots).
    fn sample(&mut self) -> anyhow::Result<()> {
        let secs = self.last_sample.elapsed().as_secs_f64().max(0.001);
        self.last_sample = Instant::now();
        let now = clock::monotonic_ns();
        let mut interfaces = Vec::new();
        let mut rates = std::collections::BTreeMap::new();
        for (&ifindex, name) in &self.names {
            let slot = if ifindex < capacity::STATS_SLOTS {
                ifindex
            } else {
                0
            };
            let c = self.maps.counters(slot)?;
            let last = self
                .last_counters
                .insert(ifindex, c)
                .unwrap_or([0; stat::COUNT]);
            let mut counters = std::collections::BTreeMap::new();
            let mut per_sec = std::collections::BTreeMap::new();
            for i in 0..stat::COUNT {
                let d = c[i].saturating_sub(last[i]);
                per_sec.insert(stat::NAMES[i].to_string(), d as f64 / secs);
                if d > 0 {
                    counters.insert(stat::NAMES[i].to_string(), d);
                }
            }
            rates.insert(name.clone(), per_sec);
            let st = self.maps.ifstate(slot)?;
            let fresh = now.saturating_sub(st.rate_ns) <= synguard_common::ATTACK_STALE_NS;
            interfaces.push(journal::IfaceSample {
                name: name.clone(),
                counters,
                attack: st.attack != 0,
                syn_rate: if fresh { st.rate } else { 0 },
            });
        }
        if let Ok(mut r) = self.rates.lock() {
            *r = rates;
        }

        let mut top_rules: Vec<journal::TopRule> = self
            .rule_hits
            .iter()
            .filter_map(|(net, (kind, hits))| {
                let d = hits.saturating_sub(self.sampled_hits.get(net).copied().unwrap_or(0));
                (d > 0).then(|| journal::TopRule {
                    prefix: net.to_string(),
                    kind: if *kind == RULE_BAN { "auto" } else { "manual" }.into(),
                    hits: d,
                })
            })
            .collect();
        top_rules.sort_unstable_by_key(|r| std::cmp::Reverse(r.hits));
        top_rules.truncate(10);
        self.sampled_hits = self.rule_hits.iter().map(|(n, (_, h))| (*n, *h)).collect();

        // Sources idle for long are not swept: the kernel reuses their slots (see
        // `synguard_common::sources`), and the walk reports only tracked ones.
        let mut sources_v6 = 0u64;
        let mut top: Vec<(u64, u64, SourceKey)> = Vec::new();
        let sources = crate::sources::for_each(&self.maps, now, |k, b| {
            if !is_v4_mapped(k) {
                sources_v6 += 1;
            }
            let rate = source_rate(b, now);
            if rate > 0 {
                top.push((rate, b.syns, *k));
                if top.len() > 64 {
                    top.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
                    top.truncate(10);
                }
            }
        })?;
        top.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        top.truncate(10);
        let verified = crate::batch::for_each(&self.maps.verified, 512, |_, _| ())?;
        let bans = self.known_bans.len() as u64;
        self.journal(journal::Event::Sample {
            secs: (secs * 1000.0).round() / 1000.0,
            interfaces,
            sources: sources as u64,
            verified: verified as u64,
            bans,
            top: top
                .into_iter()
                .map(|(rate, syns, k)| journal::TopSource {
                    source: source_net(&k).map_or_else(String::new, |n| n.to_string()),
                    syn_rate: rate,
                    syns,
                })
                .collect(),
            sources_v6,
            top_rules,
        });
        Ok(())
    }

    fn reload(&mut self) {
        let Some(path) = self.config_file.clone() else {
            log::info!("SIGHUP: no --config file to re-read");
            return;
        };
        match load_settings(Some(&path), &self.keys) {
            Ok(s) => {
                let written = pins::lock_writers(&self.pin_dir).and_then(|_lock| {
                    let next = s.next_kernel(&self.maps.read_config()?);
                    self.maps.write_config(&next)?;
                    Ok(next.generation)
                });
                match written {
                    Ok(generation) => {
                        self.generation = generation;
                        for (k, v) in s.entries() {
                            let old = self.settings.get(k).unwrap_or_default();
                            if old != v {
                                log::info!("reloaded {}: {k} {old:?} -> {v:?}", path.display());
                                if let Some(j) = self.journal.as_mut() {
                                    j.write(journal::Event::Config {
                                        key: k.to_string(),
                                        old: old.clone(),
                                        new: v.clone(),
                                    });
                                }
                            }
                        }
                        self.settings = s;
                        log::info!("reloaded {}", path.display());
                        match crate::crowdsec::load(Some(&path), &self.crowdsec_args) {
                            Ok(c) if c != self.crowdsec_settings => log::warn!(
                                "{}: the crowdsec-* keys changed; they are `run`'s own and take \
                                 effect when synguard restarts",
                                path.display()
                            ),
                            Ok(_) => {}
                            Err(e) => log::warn!(
                                "{}: crowdsec-* keys: {e:#} (the link keeps its settings; \
                                 the next start would refuse them)",
                                path.display()
                            ),
                        }
                    }
                    Err(e) => log::error!("reloading {}: {e:#}", path.display()),
                }
            }
            Err(e) => log::error!("not reloading, the config in force stays: {e:#}"),
        }
    }
}

/// Watch a descriptor for readability on the runtime.
fn readable<T: std::os::fd::AsRawFd>(inner: T) -> anyhow::Result<AsyncFd<T>> {
    // SAFETY: `T` (a ring buffer map or the log reader) owns its descriptor for its whole
    // life and always returns the same one.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("watching a BPF ring buffer: {}", std::io::Error::from(e)))
}

fn drain_ring(ring: &mut RingBuf<MapData>, daemon: &mut Daemon) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<Event>() {
            // SAFETY: the kernel writes whole `Event` records into this ring buffer.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            daemon.on_event(&e);
        }
    }
}

/// Load, attach and configure, in the order that keeps a failure harmless:
/// - fresh state gets its config before the program is attached anywhere;
/// - interfaces without a pinned link are attached first, and detached again if any
///   attach fails, before any adopted link is touched;
/// - adopted links then get the new program (an atomic swap each), and only once every
///   interface is protected is the adopted config replaced.
fn start(
    pin_dir: &Path,
    settings: &Settings,
    ifaces: &[Iface],
    mode: XdpModeArg,
    adopting: bool,
) -> anyhow::Result<(Loaded, Vec<Attachment>, u64)> {
    crate::bpf::check_pinned_abi(pin_dir)?;
    let mut loaded = Loaded::load(&LoadOptions {
        pin_dir: Some(pin_dir.to_path_buf()),
        ..Default::default()
    })?;
    let previous = if adopting {
        loaded.maps.read_config().ok()
    } else {
        None
    };
    let generation = previous.map_or(0, |c| c.generation) + 1;
    let mut kernel_cfg = settings.to_kernel(generation);
    kernel_cfg.daemon_pid = std::process::id();
    if let Some(prev) = previous {
        // What a previous run changed and must be able to restore, and internal tuning.
        kernel_cfg.saved_syncookies = prev.saved_syncookies;
        kernel_cfg.saved_timestamps = prev.saved_timestamps;
        if prev.attack_calm_ns != 0 {
            kernel_cfg.attack_calm_ns = prev.attack_calm_ns;
        }
    }
    if !adopting {
        loaded.maps.write_config(&kernel_cfg)?;
    }
    // Before attaching: attack mode answers SYNs only for these (see `locals`); `run`
    // keeps them current with the proofs.
    let addrs = crate::locals::addresses()?;
    crate::locals::sync(&mut loaded.maps, &addrs)?;
    // Nor for ports a NAT rule rewrites (see `nat`).
    crate::nat::sync(&mut loaded.maps, &crate::nat::read().ports)?;

    let mut attachments: Vec<Attachment> = Vec::new();
    let undo = |attachments: &mut Vec<Attachment>| {
        for a in attachments.drain(..).filter(|a| a.mode != "adopted") {
            let _ = fs::remove_file(pins::link_path(pin_dir, a.iface.index, &a.iface.name));
        }
    };
    let (to_adopt, fresh): (Vec<&Iface>, Vec<&Iface>) = ifaces
        .iter()
        .partition(|i| pins::link_path(pin_dir, i.index, &i.name).exists());
    for iface in fresh {
        match loaded
            .program_mut()
            .and_then(|prog| attach_new(prog, pin_dir, iface, mode))
        {
            Ok(a) => attachments.push(a),
            Err(e) => {
                undo(&mut attachments);
                return Err(e);
            }
        }
    }
    for iface in to_adopt {
        let result = loaded.program_mut().and_then(|prog| {
            adopt(prog, pin_dir, iface).or_else(|e| {
                log::warn!(
                    "{}: the pinned link from a previous run is unusable ({e:#}); attaching anew",
                    iface.name
                );
                let _ = fs::remove_file(pins::link_path(pin_dir, iface.index, &iface.name));
                attach_new(prog, pin_dir, iface, mode)
            })
        });
        match result {
            Ok(a) => attachments.push(a),
            Err(e) => {
                undo(&mut attachments);
                return Err(e);
            }
        }
    }

    if let Some(prev) = previous
        && prev.build_id != 0
        && prev.build_id != kernel_cfg.build_id
    {
        log::info!(
            "upgraded the program from build {:016x} to {}",
            prev.build_id,
            crate::bpf::BUILD_ID
        );
    }
    if adopting {
        loaded.maps.write_config(&kernel_cfg)?;
    }
    let _lock = pins::lock_writers(pin_dir)?;
    rules::reconcile_actions(&mut loaded.maps)?;
    Ok((loaded, attachments, generation))
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
    let (mut loaded, attachments, generation) =
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
        nat: None,
        cookies_wanted: None,
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
        let slot = if ifindex < capacity::STATS_SLOTS {
            ifindex
        } else {
            0
        };
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
    // Pick up an attack in progress (adopted state), then put tcp_syncookies where it
    // belongs: a run that crashed during an attack may have left it changed.
    daemon.settle_attacks();
    daemon.manage_syncookies();
    if let Err(e) = pins::lock_writers(&pin_dir).and_then(|_lock| daemon.refresh_proofs()) {
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
        None
    };

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                drain_ring(guard.get_inner_mut(), &mut daemon);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if let Err(e) = daemon.housekeeping() {
                    log::error!("housekeeping: {e:#}");
                }
            }
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

    if !args.keep || daemon.attacks.is_empty() {
        crate::sysctls::sync_all(&pin_dir, &mut daemon.maps, false);
    }
    daemon.journal(journal::Event::Stop {
        reason: why.to_string(),
        kept: args.keep,
    });
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

/// `synguard detach`: take a kept program away (left by `run --keep`, the service, or a
/// crash): put `net.ipv4.tcp_syncookies` back if attack mode changed it, detach from every
/// interface, remove the pins. Refuses while a `run` is active.
pub fn detach(pin_dir: &Path) -> anyhow::Result<()> {
    crate::privs::require_for_run()?;
    if !pins::has_state(pin_dir) {
        return Err(crate::error::usage(format!(
            "nothing to detach: no synguard state in {} (pass the --pin-dir `run` used)",
            pin_dir.display()
        )));
    }
    let _lock = pins::lock_daemon(pin_dir).map_err(|_| {
        crate::error::usage(format!(
            "`synguard run` is active on {}: stop it first (systemctl stop synguard); with \
             --keep it leaves the program attached for this command to remove",
            pin_dir.display()
        ))
    })?;
    let mut maps = Maps::from_pins(pin_dir)?;
    crate::sysctls::sync_all(pin_dir, &mut maps, false);
    drop(maps);
    for (_, name, path) in pins::pinned_links(pin_dir) {
        // The pin holds the link's last reference: removing it detaches the program.
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        log::info!("detached from {name}");
    }
    remove_pins(pin_dir)?;
    for d in [crate::bpf::maps_dir(pin_dir), pins::links_dir(pin_dir)] {
        let _ = fs::remove_dir(&d);
    }
    // A BPF filesystem `run` mounted on the pin directory itself goes too.
    let parent_is_bpffs = pin_dir.parent().is_some_and(pins::is_bpffs);
    if pins::is_bpffs(pin_dir)
        && !parent_is_bpffs
        && let Ok(c) = std::ffi::CString::new(pin_dir.as_os_str().as_encoded_bytes())
    {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_dir(pin_dir);
    log::info!("removed the pinned state in {}", pin_dir.display());
    Ok(())
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

fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    // The sock_ops program's link: its pin holds the last reference.
    let proofs = crate::proofs::link_path(pin_dir);
    if proofs.exists() {
        fs::remove_file(&proofs).with_context(|| format!("unpinning {}", proofs.display()))?;
    }
    let dir = crate::bpf::maps_dir(pin_dir);
    for name in map_names::ALL {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    if pins::links_dir(pin_dir).exists() && fs::read_dir(pins::links_dir(pin_dir))?.next().is_some()
    {
        bail!(
            "links remain pinned in {}",
            pins::links_dir(pin_dir).display()
        );
    }
    Ok(())
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
