//! The destination ports that this namespace's NAT rules send elsewhere, for attack mode.
//!
//! Attack mode answers a SYN with a cookie made for the listener its *pre-NAT* tuple finds
//! (the XDP program runs before netfilter). A SYN for a port that a `dnat`, `redirect` or
//! `tproxy` rule rewrites reaches another socket: a Docker published port (with
//! docker-proxy listening on the same port on the host), a `redirect` from 80 to 8080, a
//! Kubernetes NodePort. A cookie made for the host's listener would be wrong, and the
//! client's ACK, rewritten to the container, would be reset there: the client would lose
//! its connection. So attack mode leaves SYNs for these ports to the kernel
//! (`syn_nat`), whose own SYN cookies (made after NAT, by the socket the SYN really
//! reaches) protect them the way they would without synguard.
//!
//! The ports come from the namespace's nftables ruleset (`nft -j list ruleset`), which
//! shows iptables-nft rules too (Docker's and kube-proxy's on Debian 12: their targets as
//! `xt` statements, `DNAT`, `MASQUERADE`..., their port matches as nft's own), read at
//! start and every `proofs::REFRESH`. Every doubt is resolved towards the kernel (more ports left
//! to it, never fewer):
//! - A rewriting rule counts for the destination ports its own `dport` matches allow,
//!   intersected with the ports under which its chain can be reached (the `dport` matches
//!   of the rules that jump to it, up to a base chain). Any other match is ignored (it
//!   could only narrow the rule); a negated or unreadable `dport` match, a named set, a
//!   chain reached only through a map: every port.
//! - A rule that matches only UDP, SCTP or DCCP counts for no TCP port.
//! - `nft` failing, `nft` missing while connection tracking (which NAT needs) is loaded,
//!   or NAT tables of the legacy iptables (which `nft` cannot show): every port, with a
//!   warning in the log, and `status` says every port is left to the kernel. Without
//!   `nft` and without connection tracking there can be no NAT: no port.
//! - IPVS virtual services (`/proc/net/ip_vs`) take their clients' SYNs before any socket
//!   does: their ports count too (a firewall-mark service, or one on port 0, which takes
//!   every port: every port).
//! - An iptables target `nft` shows as `xt` that this reading does not know counts as
//!   rewriting the destination of every port it can apply to.
//!
//! The same reading says whether the host rewrites *source* addresses, per family (a
//! `masquerade` or `snat` statement, iptables' `MASQUERADE`, `SNAT` or `NETMAP`, in a
//! table of that family; `inet` tables and rules that cannot be read count for both):
//! then replies to its guests' connections (containers, VMs, pods calling out) arrive at
//! the host's own address with no socket behind them, and attack mode lets them through
//! (`Config::snat`, see `stat::R_ACK_NO_SOCKET`).
//!
//! Reading is bounded: `nft` gets [`NFT_TIMEOUT`] and [`NFT_MAX_OUTPUT`] bytes, a ruleset
//! with more than [`MAX_CHAINS`] chains or [`MAX_RULES`] rules is not analysed (every
//! port, with a warning), and `run` reads in a thread of its own, so a slow `nft` never
//! holds up its main loop (see `daemon::housekeeping`).

use std::{
    collections::HashMap,
    io::Read as _,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::Value;
use synguard_common::{PORT_WORDS, SNAT_V4, SNAT_V6};

use crate::bpf::Maps;

/// A set of destination ports, as the kernel's `SG_NAT_PORTS` holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct NatPorts(Box<[u64; PORT_WORDS]>);

impl std::fmt::Debug for NatPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatPorts({})", self.describe())
    }
}

impl NatPorts {
    pub fn none() -> Self {
        Self(Box::new([0; PORT_WORDS]))
    }

    pub fn all() -> Self {
        Self(Box::new([u64::MAX; PORT_WORDS]))
    }

    /// The ports `a..=b`.
    pub fn range(a: u16, b: u16) -> Self {
        let mut s = Self::none();
        for p in a..=b {
            s.0[usize::from(p / 64)] |= 1 << (p % 64);
        }
        s
    }

    pub fn from_words(words: &[u64; PORT_WORDS]) -> Self {
        Self(Box::new(*words))
    }

    pub fn words(&self) -> &[u64; PORT_WORDS] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn is_all(&self) -> bool {
        self.0.iter().all(|w| *w == u64::MAX)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    /// These ports and `other`'s.
    pub fn union(mut self, other: &Self) -> Self {
        self.add(other);
        self
    }

    /// Add `other`; whether anything was new.
    fn add(&mut self, other: &Self) -> bool {
        let mut grew = false;
        for (w, o) in self.0.iter_mut().zip(other.0.iter()) {
            grew |= *o & !*w != 0;
            *w |= *o;
        }
        grew
    }

    fn and(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (w, o) in out.0.iter_mut().zip(other.0.iter()) {
            *w &= *o;
        }
        out
    }

    /// The ports as ranges (`80,443,30000-32767`), "none" or "every port".
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        if self.is_all() {
            return "every port".into();
        }
        let mut parts = Vec::new();
        let mut start: Option<u16> = None;
        for p in 0..=u16::MAX {
            match (self.contains(p), start) {
                (true, None) => start = Some(p),
                (false, Some(s)) => {
                    parts.push(span(s, p - 1));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            parts.push(span(s, u16::MAX));
        }
        parts.join(",")
    }
}

fn span(a: u16, b: u16) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// How long `nft -j list ruleset` may take before its reading is given up (every port).
pub const NFT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most output of `nft -j list ruleset` read; a larger ruleset is not analysed.
pub const NFT_MAX_OUTPUT: usize = 64 << 20;
/// The largest ruleset analysed: chains, and rules.
pub const MAX_CHAINS: usize = 20_000;
pub const MAX_RULES: usize = 200_000;

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub ports: NatPorts,
    /// The families whose source addresses the host rewrites ([`SNAT_V4`], [`SNAT_V6`];
    /// both when the rules could not be read).
    pub snat: u32,
    /// Why every port is left to the kernel when the rules could not be read.
    pub warning: Option<String>,
}

/// What a ruleset says (see [`from_ruleset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub ports: NatPorts,
    /// As [`Reading::snat`].
    pub snat: u32,
}

/// Read this namespace's NAT rules (see the module's doc), within [`NFT_TIMEOUT`].
pub fn read() -> Reading {
    let mut r = read_rules();
    let ipvs = ipvs_ports();
    if !ipvs.is_empty() {
        r.ports = r.ports.union(&ipvs);
    }
    r
}

fn read_rules() -> Reading {
    let legacy = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|f| {
            std::fs::read_to_string(f)
                .map(|s| s.lines().any(|l| l.trim() == "nat"))
                .unwrap_or(false)
        });
    if legacy {
        return unreadable(
            "the legacy iptables have a nat table, whose rules synguard cannot read (switch to \
             iptables-nft)",
        );
    }
    let out = match run_nft(NFT_TIMEOUT, NFT_MAX_OUTPUT) {
        Ok(o) => o,
        Err(NftError::Missing) => return without_nft(conntrack_loaded()),
        Err(NftError::Failed(why)) => return unreadable(&why),
    };
    // An empty ruleset prints nothing at all with some versions of nft.
    if out.iter().all(u8::is_ascii_whitespace) {
        return Reading {
            ports: NatPorts::none(),
            snat: 0,
            warning: None,
        };
    }
    let parsed = serde_json::from_slice::<Value>(&out)
        .map_err(|e| e.to_string())
        .and_then(|v| from_ruleset(&v));
    match parsed {
        Ok(a) => Reading {
            ports: a.ports,
            snat: a.snat,
            warning: None,
        },
        Err(e) => unreadable(&format!("reading `nft -j list ruleset`: {e}")),
    }
}

enum NftError {
    Missing,
    Failed(String),
}

/// `nft -j list ruleset`'s output, if it succeeds within `timeout` and `cap` bytes (it is
/// killed otherwise).
fn run_nft(timeout: Duration, cap: usize) -> Result<Vec<u8>, NftError> {
    let mut child = match std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NftError::Missing),
        Err(e) => {
            return Err(NftError::Failed(format!(
                "running `nft -j list ruleset`: {e}"
            )));
        }
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(NftError::Failed("`nft` without its pipes".into()));
    };
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout.take(cap as u64 + 1).read_to_end(&mut out);
        r.map(|_| out)
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = stderr.take(64 << 10).read_to_end(&mut err);
        err
    });
    let deadline = Instant::now() + timeout;
    // When the output has ended (or reached the cap, past which nothing is read and `nft`
    // blocks writing), its exit follows at once, or never.
    let mut output_ended: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {
                let over = reader.is_finished()
                    && output_ended.get_or_insert_with(Instant::now).elapsed()
                        > Duration::from_millis(200);
                if over || Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        // A reader still waiting (a child of nft holding the pipe open) is left to end by
        // itself: joining it could wait for as long as that child lives.
        let read = if reader.is_finished() {
            reader
                .join()
                .ok()
                .and_then(Result::ok)
                .map_or(0, |o| o.len())
        } else {
            0
        };
        return Err(NftError::Failed(if read > cap {
            format!("the ruleset is larger than {} MiB", cap >> 20)
        } else {
            format!(
                "`nft -j list ruleset` took more than {} s",
                timeout.as_secs()
            )
        }));
    };
    let out = reader
        .join()
        .map_err(|_| NftError::Failed("reading nft's output".into()))?
        .map_err(|e| NftError::Failed(format!("reading nft's output: {e}")))?;
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(NftError::Failed(format!(
            "`nft -j list ruleset` failed: {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    if out.len() > cap {
        return Err(NftError::Failed(format!(
            "the ruleset is larger than {} MiB",
            cap >> 20
        )));
    }
    Ok(out)
}

/// The ports of this namespace's IPVS virtual services (`/proc/net/ip_vs`; none without
/// IPVS). A firewall-mark service may take any port: every port.
pub fn ipvs_ports() -> NatPorts {
    std::fs::read_to_string("/proc/net/ip_vs")
        .map(|t| ipvs_ports_in(&t))
        .unwrap_or_else(|_| NatPorts::none())
}

fn ipvs_ports_in(text: &str) -> NatPorts {
    let mut out = NatPorts::none();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            // `TCP  C0000201:0050 rr` or `TCP  [2001:0db8:...]:0050 rr`
            Some("TCP") => {
                let port = f
                    .next()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                match port {
                    // A service on port 0 takes every port (persistent, all-ports).
                    Some(0) | None => return NatPorts::all(),
                    Some(p) => {
                        out.add(&NatPorts::range(p, p));
                    }
                }
            }
            Some("FWM") => return NatPorts::all(),
            _ => {}
        }
    }
    out
}

/// Whether connection tracking, which every NAT rule needs, is loaded: it registers its
/// `nf_conntrack_*` settings in every namespace.
fn conntrack_loaded() -> bool {
    std::fs::read_dir("/proc/sys/net/netfilter")
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("nf_conntrack"))
        })
        .unwrap_or(false)
}

/// Without `nft`: no NAT can exist without connection tracking; with it, the rules
/// cannot be read.
fn without_nft(conntrack: bool) -> Reading {
    if conntrack {
        unreadable(
            "`nft` is not installed, so synguard cannot read the NAT rules (apt install \
             nftables)",
        )
    } else {
        Reading {
            ports: NatPorts::none(),
            snat: 0,
            warning: None,
        }
    }
}

fn unreadable(why: &str) -> Reading {
    Reading {
        ports: NatPorts::all(),
        snat: SNAT_V4 | SNAT_V6,
        warning: Some(format!(
            "{why}; until it can, attack mode leaves every SYN to the kernel's own SYN cookies \
             and lets through every ACK that could belong to a NAT'd connection"
        )),
    }
}

/// A chain: family, table, name.
type ChainId = (String, String, String);

fn chain_id(o: &Value, name_key: &str) -> Option<ChainId> {
    Some((
        o.get("family")?.as_str()?.to_owned(),
        o.get("table")?.as_str()?.to_owned(),
        o.get(name_key)?.as_str()?.to_owned(),
    ))
}

/// The destination ports that the rewriting rules of an `nft -j list ruleset` document can
/// apply to, and whether any rule rewrites source addresses.
pub fn from_ruleset(doc: &Value) -> Result<Analysis, String> {
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" list")?;
    let count = |k: &str| items.iter().filter(|i| i.get(k).is_some()).count();
    if count("chain") > MAX_CHAINS || count("rule") > MAX_RULES {
        return Err(format!(
            "the ruleset has more than {MAX_CHAINS} chains or {MAX_RULES} rules, too many to \
             analyse in time"
        ));
    }
    // Each chain and whether it is a base chain (one the kernel enters by a hook).
    let mut chains: HashMap<ChainId, bool> = HashMap::new();
    let mut rules: Vec<(ChainId, &[Value])> = Vec::new();
    // Chains a named map may send packets to, under any port.
    let mut by_map: Vec<ChainId> = Vec::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            let id = chain_id(c, "name").ok_or("a chain without family, table or name")?;
            chains.insert(id, c.get("hook").is_some());
        } else if let Some(r) = item.get("rule") {
            let id = chain_id(r, "chain").ok_or("a rule without family, table or chain")?;
            let expr = r
                .get("expr")
                .and_then(Value::as_array)
                .ok_or("a rule without expressions")?;
            rules.push((id, expr));
        } else if let Some(m) = item.get("map") {
            let (Some(f), Some(t)) = (
                m.get("family").and_then(Value::as_str),
                m.get("table").and_then(Value::as_str),
            ) else {
                return Err("a map without family or table".into());
            };
            let mut targets = Vec::new();
            jump_targets(m, &mut targets);
            by_map.extend(targets.into_iter().map(|c| (f.to_owned(), t.to_owned(), c)));
        }
    }
    // The edges: from a rule's chain to the chain it jumps to, under the rule's ports.
    let mut edges: Vec<(ChainId, ChainId, NatPorts)> = Vec::new();
    for (from, expr) in &rules {
        let under = rule_ports(expr);
        for e in expr.iter() {
            let mut targets = Vec::new();
            jump_targets(e, &mut targets);
            for t in targets {
                edges.push((
                    from.clone(),
                    (from.0.clone(), from.1.clone(), t),
                    under.clone(),
                ));
            }
        }
    }
    // The ports under which each chain can be entered: every port for base chains, for
    // chains a map may jump to, and for chains no rule jumps to (unknown ways in).
    let mut reach: HashMap<ChainId, NatPorts> = HashMap::new();
    for (id, base) in &chains {
        let entered = edges.iter().any(|(_, to, _)| to == id);
        let open = *base || !entered || by_map.contains(id);
        reach.insert(
            id.clone(),
            if open {
                NatPorts::all()
            } else {
                NatPorts::none()
            },
        );
    }
    // Spread along the edges until nothing grows: a port reaches a chain along a path of
    // at most one edge per chain, so `chains + 1` rounds suffice.
    for _ in 0..=chains.len() {
        let mut grew = false;
        for (from, to, under) in &edges {
            let via = match reach.get(from) {
                Some(p) => p.and(under),
                None => under.clone(),
            };
            grew |= reach
                .entry(to.clone())
                .or_insert_with(NatPorts::none)
                .add(&via);
        }
        if !grew {
            break;
        }
    }
    let snat = rules
        .iter()
        .filter(|(_, expr)| expr.iter().any(rewrites_source))
        .fold(0, |acc, ((family, _, _), _)| {
            acc | match family.as_str() {
                "ip" => SNAT_V4,
                "ip6" => SNAT_V6,
                _ => SNAT_V4 | SNAT_V6,
            }
        });
    let mut out = NatPorts::none();
    for (chain, expr) in &rules {
        if !expr.iter().any(rewrites_destination) {
            continue;
        }
        let under = rule_ports(expr);
        let ports = match reach.get(chain) {
            Some(p) => p.and(&under),
            None => under,
        };
        out.add(&ports);
    }
    Ok(Analysis { ports: out, snat })
}

/// The name of an iptables target (`{"xt": {"type": "target", "name": ...}}`: how `nft`
/// shows what iptables-nft put in through the compatibility layer).
fn xt_target(e: &Value) -> Option<&str> {
    let xt = e.get("xt")?;
    (xt.get("type")?.as_str()? == "target")
        .then(|| xt.get("name")?.as_str())
        .flatten()
}

/// iptables targets that change no address or port (those a NAT table's rules are seen
/// with besides the NAT ones). Any other target counts as rewriting the destination.
const XT_HARMLESS: &[&str] = &[
    "MASQUERADE",
    "SNAT",
    "RETURN",
    "ACCEPT",
    "DROP",
    "REJECT",
    "LOG",
    "NFLOG",
    "MARK",
    "CONNMARK",
    "CT",
    "NOTRACK",
    "TRACE",
    "CHECKSUM",
    "TCPMSS",
    "DSCP",
    "TOS",
    "TTL",
    "HL",
];

/// Whether a statement gives the packet another source (address or port).
fn rewrites_source(e: &Value) -> bool {
    ["masquerade", "snat"].iter().any(|k| e.get(k).is_some())
        || xt_target(e).is_some_and(|t| matches!(t, "MASQUERADE" | "SNAT" | "NETMAP"))
}

/// Whether a statement sends the packet to another destination (address or port).
fn rewrites_destination(e: &Value) -> bool {
    ["dnat", "redirect", "tproxy"]
        .iter()
        .any(|k| e.get(k).is_some())
        || xt_target(e).is_some_and(|t| !XT_HARMLESS.contains(&t))
}

/// Every chain named by a `jump` or `goto` inside `v`.
fn jump_targets(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, inner) in o {
                if (k == "jump" || k == "goto")
                    && let Some(t) = inner.get("target").and_then(Value::as_str)
                {
                    out.push(t.to_owned());
                    continue;
                }
                jump_targets(inner, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| jump_targets(x, out)),
        _ => {}
    }
}

/// The destination ports a rule's matches allow a TCP segment to have.
fn rule_ports(expr: &[Value]) -> NatPorts {
    let mut ports = NatPorts::all();
    for e in expr {
        let Some(m) = e.get("match") else { continue };
        let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
            continue;
        };
        if let Some(p) = left.get("payload") {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("");
            let field = p.get("field").and_then(Value::as_str).unwrap_or("");
            if field == "dport" {
                if matches!(proto, "udp" | "udplite" | "sctp" | "dccp") {
                    return NatPorts::none();
                }
                if op == "==" || op == "in" {
                    // An unreadable set counts as every port.
                    ports = ports.and(&port_set(right).unwrap_or_else(NatPorts::all));
                }
            } else if matches!((proto, field), ("ip", "protocol") | ("ip6", "nexthdr"))
                && op == "=="
                && !is_tcp(right)
            {
                return NatPorts::none();
            }
        } else if left.pointer("/meta/key").and_then(Value::as_str) == Some("l4proto")
            && op == "=="
            && !is_tcp(right)
        {
            return NatPorts::none();
        }
    }
    ports
}

/// Whether a protocol value may be TCP (a name, a number, or anything unreadable).
fn is_tcp(v: &Value) -> bool {
    match v {
        Value::String(s) => s == "tcp" || s.starts_with('@') || s.parse::<u8>() == Ok(6),
        Value::Number(n) => n.as_u64() == Some(6),
        _ => true,
    }
}

/// A port value of a match: a number, a range, or an anonymous set of them.
fn port_set(v: &Value) -> Option<NatPorts> {
    match v {
        Value::Number(n) => {
            let p = u16::try_from(n.as_u64()?).ok()?;
            Some(NatPorts::range(p, p))
        }
        Value::String(s) => {
            let p = s.parse::<u16>().ok()?;
            Some(NatPorts::range(p, p))
        }
        Value::Object(o) => {
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                let a = u16::try_from(r.first()?.as_u64()?).ok()?;
                let b = u16::try_from(r.get(1)?.as_u64()?).ok()?;
                return (a <= b).then(|| NatPorts::range(a, b));
            }
            let elems = o.get("set")?;
            match elems {
                Value::Array(a) => {
                    let mut out = NatPorts::none();
                    for e in a {
                        out.add(&port_set(e)?);
                    }
                    Some(out)
                }
                single => port_set(single),
            }
        }
        _ => None,
    }
}

/// Make `SG_NAT_PORTS` hold `ports`.
pub fn sync(maps: &mut Maps, ports: &NatPorts) -> anyhow::Result<()> {
    maps.nat_ports
        .set(0, ports.words(), 0)
        .context("updating SG_NAT_PORTS")
}

/// Make the kernel hold what a reading found: the ports (`SG_NAT_PORTS`) and whether the
/// host rewrites source addresses (`Config::snat`). The caller holds the writers' lock.
pub fn apply(maps: &mut Maps, reading: &Reading) -> anyhow::Result<()> {
    sync(maps, &reading.ports)?;
    let mut cfg = maps.read_config()?;
    let snat = reading.snat;
    if cfg.snat != snat {
        cfg.snat = snat;
        maps.write_config(&cfg)?;
    }
    Ok(())
}

/// The ports attack mode leaves to the kernel, as the map holds them.
pub fn current(maps: &Maps) -> anyhow::Result<NatPorts> {
    let words = maps.nat_ports.get(&0, 0).context("reading SG_NAT_PORTS")?;
    Ok(NatPorts::from_words(&words))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table(family: &str) -> Value {
        json!({"table": {"family": family, "name": "nat", "handle": 1}})
    }

    fn chain(name: &str, hook: Option<&str>) -> Value {
        match hook {
            Some(h) => json!({"chain": {"family": "ip", "table": "nat", "name": name,
                "handle": 1, "type": "nat", "hook": h, "prio": -100, "policy": "accept"}}),
            None => json!({"chain": {"family": "ip", "table": "nat", "name": name, "handle": 2}}),
        }
    }

    fn rule(chain: &str, expr: Value) -> Value {
        json!({"rule": {"family": "ip", "table": "nat", "chain": chain, "handle": 3,
            "expr": expr}})
    }

    fn dport(proto: &str, right: Value) -> Value {
        json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}},
            "right": right}})
    }

    fn doc(items: Vec<Value>) -> Value {
        let mut all = vec![json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}})];
        all.extend(items);
        json!({ "nftables": all })
    }

    fn ports(items: Vec<Value>) -> String {
        from_ruleset(&doc(items))
            .expect("a readable ruleset")
            .ports
            .describe()
    }

    /// Docker's rules as iptables-nft writes them and `nft -j` shows them: PREROUTING
    /// jumps to DOCKER for local destinations; DOCKER has one DNAT per published port,
    /// TCP and UDP.
    #[test]
    fn dockers_published_ports_are_found_through_its_chain() {
        let local = json!({"match": {"op": "==", "left": {"fib": {"result": "type",
            "flags": ["daddr"]}}, "right": "local"}});
        let not_bridge = json!({"match": {"op": "!=", "left": {"meta": {"key": "iifname"}},
            "right": "docker0"}});
        let found = ports(vec![
            table("ip"),
            chain("PREROUTING", Some("prerouting")),
            chain("OUTPUT", Some("output")),
            chain("POSTROUTING", Some("postrouting")),
            chain("DOCKER", None),
            rule(
                "PREROUTING",
                json!([local, {"counter": {"packets": 0, "bytes": 0}},
                    {"jump": {"target": "DOCKER"}}]),
            ),
            rule(
                "POSTROUTING",
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                    "field": "saddr"}}, "right": {"prefix": {"addr": "172.17.0.0",
                    "len": 16}}}}, {"masquerade": null}]),
            ),
            rule("DOCKER", json!([not_bridge.clone(), {"return": null}])),
            rule(
                "DOCKER",
                json!([not_bridge.clone(), dport("tcp", json!(8080)),
                    {"counter": null}, {"dnat": {"addr": "172.17.0.2", "port": 80}}]),
            ),
            rule(
                "DOCKER",
                json!([not_bridge, dport("udp", json!(5353)),
                    {"dnat": {"addr": "172.17.0.3", "port": 53}}]),
            ),
        ]);
        assert_eq!(found, "8080");
    }

    /// kube-proxy's shape: the DNAT sits in a per-endpoint chain without a port match;
    /// the ports come from the rules that lead there (a service port and a NodePort).
    #[test]
    fn a_dnat_without_a_port_match_takes_the_ports_of_the_jumps_into_its_chain() {
        let found = ports(vec![
            chain("PREROUTING", Some("prerouting")),
            chain("KUBE-SERVICES", None),
            chain("KUBE-NODEPORTS", None),
            chain("KUBE-SVC-A", None),
            chain("KUBE-SEP-A", None),
            rule("PREROUTING", json!([{"jump": {"target": "KUBE-SERVICES"}}])),
            rule(
                "KUBE-SERVICES",
                json!([dport("tcp", json!(80)), {"jump": {"target": "KUBE-SVC-A"}}]),
            ),
            rule(
                "KUBE-SERVICES",
                json!([{"jump": {"target": "KUBE-NODEPORTS"}}]),
            ),
            rule(
                "KUBE-NODEPORTS",
                json!([dport("tcp", json!(30080)), {"jump": {"target": "KUBE-SVC-A"}}]),
            ),
            rule("KUBE-SVC-A", json!([{"jump": {"target": "KUBE-SEP-A"}}])),
            rule(
                "KUBE-SEP-A",
                json!([{"dnat": {"addr": "10.244.1.5", "port": 8080}}]),
            ),
        ]);
        assert_eq!(found, "80,30080");
    }

    #[test]
    fn sets_ranges_and_redirects_count() {
        let found = ports(vec![
            chain("PREROUTING", Some("prerouting")),
            rule(
                "PREROUTING",
                json!([dport("tcp", json!({"set": [443, {"range": [8000, 8010]}]})),
                    {"dnat": {"addr": "10.0.0.2"}}]),
            ),
            rule(
                "PREROUTING",
                json!([dport("th", json!(80)), {"redirect": {"port": 8080}}]),
            ),
        ]);
        assert_eq!(found, "80,443,8000-8010");
    }

    /// What cannot be read precisely counts as every port: the kernel decides.
    #[test]
    fn doubt_means_every_port() {
        let negated = json!({"match": {"op": "!=", "left": {"payload": {"protocol": "tcp",
            "field": "dport"}}, "right": 22}});
        for expr in [
            json!([negated, {"dnat": {"addr": "10.0.0.2"}}]),
            json!([dport("tcp", json!("@published")), {"dnat": {"addr": "10.0.0.2"}}]),
            json!([{"dnat": {"addr": "10.0.0.2"}}]),
        ] {
            let found = ports(vec![
                chain("PREROUTING", Some("prerouting")),
                rule("PREROUTING", expr.clone()),
            ]);
            assert_eq!(found, "every port", "{expr}");
        }
        // A chain only a named verdict map leads to: reached under any port.
        let found = ports(vec![
            chain("PREROUTING", Some("prerouting")),
            chain("svc", None),
            json!({"map": {"family": "ip", "table": "nat", "name": "svcs", "type": "inet_service",
                "map": "verdict", "elem": [[80, {"jump": {"target": "svc"}}]]}}),
            rule(
                "PREROUTING",
                json!([{"vmap": {"key": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "data": "@svcs"}}]),
            ),
            rule("svc", json!([{"dnat": {"addr": "10.0.0.2"}}])),
        ]);
        assert_eq!(found, "every port");
    }

    #[test]
    fn rules_that_cannot_match_tcp_or_do_not_rewrite_count_for_nothing() {
        let udp = json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
            "right": "udp"}});
        let found = ports(vec![
            chain("PREROUTING", Some("prerouting")),
            chain("POSTROUTING", Some("postrouting")),
            rule("PREROUTING", json!([udp, {"dnat": {"addr": "10.0.0.2"}}])),
            rule("POSTROUTING", json!([{"masquerade": null}])),
            rule("POSTROUTING", json!([{"snat": {"addr": "192.0.2.1"}}])),
        ]);
        assert_eq!(found, "none");
        assert_eq!(ports(vec![]), "none");
    }

    /// Docker's and libvirt's masquerade, an SNAT: the host rewrites sources; a DNAT alone
    /// does not.
    #[test]
    fn source_nat_is_noticed() {
        let snat = |items: Vec<Value>| from_ruleset(&doc(items)).expect("readable").snat;
        let masq = json!({"masquerade": null});
        // The helpers' tables are of family `ip`: IPv4 only.
        assert_eq!(
            snat(vec![
                chain("POSTROUTING", Some("postrouting")),
                rule("POSTROUTING", json!([masq])),
            ]),
            SNAT_V4
        );
        assert_eq!(
            snat(vec![
                chain("POSTROUTING", Some("postrouting")),
                rule("POSTROUTING", json!([{"snat": {"addr": "192.0.2.1"}}])),
            ]),
            SNAT_V4
        );
        assert_eq!(
            snat(vec![
                chain("PREROUTING", Some("prerouting")),
                rule(
                    "PREROUTING",
                    json!([dport("tcp", json!(80)), {"dnat": {"addr": "10.0.0.2"}}])
                ),
            ]),
            0
        );
        assert_eq!(snat(vec![]), 0);
        // An `inet` table's rule may rewrite both families, an `ip6` table's IPv6.
        let in_family = |family: &str| {
            json!({"rule": {"family": family, "table": "m", "chain": "post", "handle": 3,
                "expr": [{"masquerade": null}]}})
        };
        assert_eq!(snat(vec![in_family("inet")]), SNAT_V4 | SNAT_V6);
        assert_eq!(snat(vec![in_family("ip6")]), SNAT_V6);
        // What cannot be read counts as source NAT of both.
        assert_eq!(unreadable("x").snat, SNAT_V4 | SNAT_V6);
        assert_eq!(without_nft(false).snat, 0);
    }

    /// Docker's rules as iptables-nft (Debian 12's iptables) really leaves them, read by
    /// `nft -j list ruleset` (`testdata/`, made with `iptables -t nat ...` in a namespace):
    /// its targets are `xt` statements, its port matches nft's own. The published ports
    /// and the masquerade are found.
    #[test]
    fn iptables_nft_rules_are_read() {
        let doc: Value = serde_json::from_str(include_str!("../testdata/iptables-nft-docker.json"))
            .expect("the fixture is JSON");
        let a = from_ruleset(&doc).expect("readable");
        assert_eq!(a.ports.describe(), "8080,8443");
        assert_eq!(a.snat, SNAT_V4);
        // A target this reading does not know rewrites every port it can apply to.
        let odd = json!([dport("tcp", json!(25)), {"xt": {"type": "target", "name": "ODD"}}]);
        let found = ports(vec![
            chain("PREROUTING", Some("prerouting")),
            rule("PREROUTING", odd),
        ]);
        assert_eq!(found, "25");
        // A match it does not know only narrows: ignored; a logging target changes nothing.
        let m = json!([{"xt": {"type": "match", "name": "addrtype"}}, {"xt": {"type": "target",
            "name": "LOG"}}]);
        assert_eq!(
            ports(vec![
                chain("PREROUTING", Some("prerouting")),
                rule("PREROUTING", m)
            ]),
            "none"
        );
    }

    #[test]
    fn ipvs_services_ports_count() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\n\
                    Prot LocalAddress:Port Scheduler Flags\n\
                      -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
                    TCP  C0000201:0050 rr\n\
                      -> C0A80002:1F90      Masq    1      0          0\n\
                    UDP  C0000201:0035 rr\n\
                    TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:01BB wlc\n";
        assert_eq!(ipvs_ports_in(text).describe(), "80,443");
        assert!(ipvs_ports_in("FWM  00000001 rr\n").is_all());
        // Port 0: a persistent service on every port.
        assert!(ipvs_ports_in("TCP  C0000201:0000 rr persistent 360\n").is_all());
        assert!(ipvs_ports_in("").is_empty());
    }

    /// A ruleset too large to analyse in time is refused (every port, by the caller).
    #[test]
    fn huge_rulesets_are_not_analysed() {
        let mut items = vec![chain("PREROUTING", Some("prerouting"))];
        for i in 0..=MAX_CHAINS {
            items.push(chain(&format!("c{i}"), None));
        }
        assert!(from_ruleset(&doc(items)).is_err());
    }

    #[test]
    fn without_nft_only_a_machine_without_conntrack_has_no_nat() {
        assert_eq!(without_nft(false).ports.describe(), "none");
        assert_eq!(without_nft(false).warning, None);
        let r = without_nft(true);
        assert!(r.ports.is_all());
        assert!(
            r.warning
                .expect("a warning")
                .contains("apt install nftables")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(from_ruleset(&json!({"tables": []})).is_err());
        assert!(from_ruleset(&json!({"nftables": [{"rule": {"family": "ip"}}]})).is_err());
    }

    #[test]
    fn describe_and_range() {
        assert_eq!(NatPorts::range(0, u16::MAX).describe(), "every port");
        assert_eq!(NatPorts::range(65535, 65535).describe(), "65535");
        assert_eq!(NatPorts::range(1, 3).describe(), "1-3");
    }
}
