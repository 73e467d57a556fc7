//! `synguard top`: the live view.
//!
//! Three layers, so that everything but the map reads and the terminal can be tested
//! without a kernel or a terminal:
//!
//! - [`sample`] reads the pinned maps once per interval into a [`Reading`]: raw counters,
//!   attack state, the rules, and the busiest sources. It is the only function here that
//!   touches the kernel, and it stays cheap however large the tables are: one counters
//!   read and one attack-state read per attached interface, one listing of the rules,
//!   and one walk of the sources table (a million slots, read through a memory mapping:
//!   about 15 ms) that keeps only the [`TOP`] busiest in a bounded heap.
//! - [`Model::update`] turns consecutive readings into a [`View`]: counter deltas per
//!   second, bounded histories for the sparklines, each top source's verdict, and the
//!   changes of the ban and block lists since the last reading. Pure.
//! - [`render`] draws a `View` into a ratatui frame, and [`plain_line`] prints it as one
//!   line when stdout is not a terminal. Pure.
//!
//! What the numbers mean:
//! - **SYN/s in** counts the SYNs the rate limiter saw (`syns`) plus every packet from a
//!   blocked or banned source (`blocked`, `banned`). The program drops a blocked source's
//!   packets at the address lookup, before it reads the TCP flags, so it cannot tell
//!   their SYNs apart; in a flood they are SYNs, and leaving them out would show a banned
//!   flood as silence. Allowlisted traffic is not counted.
//! - **Dropped/s** adds up the counters of the drop reasons. In `mode = monitor` they
//!   count what would have been dropped (the header and titles say so): the counters
//!   decide the same way in both modes, so the rate means the same thing in both.
//! - A top source's rate is the larger of its bucket's own SYN rate (the rate window the
//!   kernel keeps per source) and, for a block or ban entry, its hits per second: a
//!   banned source's packets stop at the ban and never reach its bucket again.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, VecDeque},
    io::{self, IsTerminal as _, Write as _},
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use ipnet::IpNet;
use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor::{Hide, Show},
        event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, RenderDirection, Row, Sparkline, Table},
};
use synguard_common::{
    ACTION_DROP, ATTACK_STALE_NS, IfState, RULE_ALLOW, RULE_BAN, capacity, gcra, stat,
};

use super::State;
use crate::{
    clock,
    config::format_duration,
    daemon::source_net,
    error::usage,
    pins,
    rules::{self, RuleEntry},
};

/// How many sources the view lists.
pub const TOP: usize = 10;
/// How far back the sparklines reach.
pub const HISTORY: Duration = Duration::from_secs(300);
/// The shortest refresh: the kernel measures rates over 100 ms windows, so anything
/// faster only shows the same numbers again, at the cost of walking the sources table.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest refresh (beyond it a "live" view is not live, and the arithmetic on
/// deadlines stays far from overflowing).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// List changes kept for the events pane.
const EVENTS_KEPT: usize = 200;
/// List changes reported per refresh; more are summed up in one line (a wave of bans
/// must not flood a terminal or a log with one line each).
const EVENTS_PER_REFRESH: usize = 20;
/// Sources shown on the plain line.
const PLAIN_TOP: usize = 3;

/// Check `--interval` before anything else is touched.
pub fn check_interval(every: Duration) -> anyhow::Result<()> {
    if every < MIN_INTERVAL || every > MAX_INTERVAL {
        return Err(usage(format!(
            "--interval {} is out of range: use 100ms to 1h (e.g. 1s, 500ms, 5s)",
            humantime::format_duration(every)
        )));
    }
    Ok(())
}

/// `synguard top`: the live view on a terminal, or one line per interval otherwise.
///
/// Ends with exit code 0 on `q`, Esc or Ctrl-C (terminal), on SIGINT or SIGTERM, when
/// stdout is closed (`| head`), and when the pinned state disappears (a `synguard run`
/// that stopped without `--keep` removes it: there is nothing left to watch, which is
/// said on stderr). A failure to read the maps is exit code 1.
pub fn top(state: &State, every: Duration) -> anyhow::Result<()> {
    check_interval(every)?;
    catch_stop_signals();
    let mut model = Model::new(every);
    let ended = if io::stdout().is_terminal() {
        run_terminal(state, every, &mut model)?
    } else {
        run_plain(state, every, &mut model)?
    };
    if ended == End::StateGone {
        eprintln!(
            "synguard top: the state in {} is gone (synguard run stopped and removed it); \
             nothing left to watch",
            state.pin_dir.display()
        );
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Asked to stop (key, signal) or stdout closed.
    Stopped,
    StateGone,
}

fn run_plain(state: &State, every: Duration, model: &mut Model) -> anyhow::Result<End> {
    let mut out = io::stdout().lock();
    loop {
        let Some(reading) = sample(state)? else {
            return Ok(End::StateGone);
        };
        let view = model.update(reading);
        // The first reading has nothing to compare with: no rates yet, no line.
        if !view.measuring {
            let mut text = String::new();
            for e in &view.new_events {
                text.push_str(&event_line(view.wall, e));
                text.push('\n');
            }
            text.push_str(&plain_line(&view));
            text.push('\n');
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(End::Stopped),
                Err(e) => return Err(e).context("writing to stdout"),
            }
        }
        if !sleep_unless_stopped(every) {
            return Ok(End::Stopped);
        }
    }
}

fn run_terminal(state: &State, every: Duration, model: &mut Model) -> anyhow::Result<End> {
    let _guard = TerminalGuard::enter().context("setting up the terminal")?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(io::stdout())).context("setting up the terminal")?;
    terminal.clear()?;
    loop {
        let Some(reading) = sample(state)? else {
            return Ok(End::StateGone);
        };
        let view = model.update(reading);
        terminal.draw(|f| render(f, &view))?;
        let deadline = Instant::now() + every;
        loop {
            if STOP.load(Ordering::Relaxed) {
                return Ok(End::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Short polls, so a SIGTERM is noticed promptly too.
            if !event::poll(left.min(Duration::from_millis(100)))? {
                continue;
            }
            match event::read()? {
                TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        return Ok(End::Stopped);
                    }
                }
                TermEvent::Resize(..) => {
                    terminal.autoresize()?;
                    terminal.draw(|f| render(f, &view))?;
                }
                _ => {}
            }
        }
    }
}

/// Raw mode, the alternate screen and a hidden cursor for as long as it lives; the
/// terminal is restored when it is dropped, whether `top` ends normally, with an error,
/// or by a panic (a panic hook restores it first, so the message is readable on the
/// normal screen).
struct TerminalGuard;

/// Whether the terminal is in `top`'s mode, so it is restored exactly once.
static TERMINAL_SET_UP: AtomicBool = AtomicBool::new(false);

impl TerminalGuard {
    fn enter() -> io::Result<Self> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        TERMINAL_SET_UP.store(true, Ordering::SeqCst);
        // From here on, dropping the guard undoes whatever was set up.
        let guard = Self;
        enable_raw_mode()?;
        execute!(io::stdout(), EnterAlternateScreen, Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if TERMINAL_SET_UP.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// Set by SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM end `top` cleanly (exit 0, terminal restored) instead of killing it.
fn catch_stop_signals() {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Sleep for `d`, in short steps; `false` if a stop signal came meanwhile.
fn sleep_unless_stopped(d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if STOP.load(Ordering::Relaxed) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------------------
// Reading the maps

/// One read of the pinned state: raw values, no rates.
#[derive(Clone, Debug)]
pub struct Reading {
    /// `CLOCK_MONOTONIC` ns of the reading (the clock of every stamp in the maps).
    pub mono_ns: u64,
    /// Wall-clock time of the reading.
    pub wall: SystemTime,
    pub daemon: bool,
    pub monitor: bool,
    pub attack_syn_rate: u64,
    /// The `syn-cookies` setting (`COOKIES_*`).
    pub cookies: u32,
    /// Attached interfaces with their stats slot and attack state.
    pub ifaces: Vec<IfaceReading>,
    /// Counters by stats slot (each slot once, even if two interfaces share slot 0).
    pub counters: BTreeMap<u32, [u64; stat::COUNT]>,
    pub rules: Vec<RuleEntry>,
    /// The busiest sources by their bucket's SYN rate, busiest first, at most [`TOP`].
    pub top: Vec<SourceReading>,
    /// Sources with a bucket.
    pub sources: usize,
}

#[derive(Clone, Debug)]
pub struct IfaceReading {
    pub name: String,
    pub slot: u32,
    pub state: IfState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReading {
    pub net: IpNet,
    /// SYNs per second, from the bucket's rate windows (see [`smoothed_rate`]).
    pub rate: u64,
    /// Its bucket is empty: the next SYN is over the limit.
    pub empty: bool,
    /// It completed a cookie handshake within `verified-for`: no cookie challenge.
    pub verified: bool,
}

/// The `n` largest items pushed, in O(log n) time per push and O(n) memory.
pub struct TopN<T: Ord> {
    n: usize,
    heap: BinaryHeap<Reverse<T>>,
}

impl<T: Ord> TopN<T> {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.heap.len() < self.n {
            self.heap.push(Reverse(item));
        } else if self.heap.peek().is_some_and(|Reverse(min)| item > *min) {
            self.heap.pop();
            self.heap.push(Reverse(item));
        }
    }

    /// The items kept, largest first.
    pub fn into_sorted(self) -> Vec<T> {
        // Ascending order of `Reverse` is descending order of the items.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(t)| t)
            .collect()
    }
}

/// A source's SYN rate over the last one to two seconds, from the rate windows its bucket
/// keeps: this window and the one before if the source was busy then, else this window
/// over at least a whole window's length. 0 once it has been quiet for two windows.
///
/// Not [`crate::daemon::source_rate`], which a ban reports: that one divides by the age
/// of the current window alone (at least 1 ms), the right thing for a flooder caught
/// in its first milliseconds, but a source that sent a single SYN 5 ms ago would rank
/// at 200 SYN/s, and a forged flood is a million such sources.
pub fn smoothed_rate(b: &synguard_common::Bucket, now: u64) -> u64 {
    const WINDOW: u64 = synguard_common::RATE_WINDOW_NS;
    if now.saturating_sub(b.last_seen_ns) > 2 * WINDOW {
        return 0;
    }
    let age = now.saturating_sub(b.window_start_ns);
    let (syns, span) = if b.prev_window_syns != 0 {
        (b.prev_window_syns + b.window_syns, WINDOW + age)
    } else {
        (b.window_syns, age.max(WINDOW))
    };
    // 128-bit: a SYN count times 10^9 cannot overflow.
    (u128::from(syns) * 1_000_000_000 / u128::from(span.max(1))) as u64
}

/// Read the pinned maps once. `None` when the pinned state is gone.
pub fn sample(state: &State) -> anyhow::Result<Option<Reading>> {
    if !pins::has_state(&state.pin_dir) {
        return Ok(None);
    }
    let maps = &state.maps;
    let cfg = maps.read_config()?;
    let mono_ns = clock::monotonic_ns();
    let wall = SystemTime::now();
    let mut ifaces = Vec::new();
    let mut counters = BTreeMap::new();
    for (ifindex, name, _) in pins::pinned_links(&state.pin_dir) {
        let slot = if ifindex < capacity::STATS_SLOTS {
            ifindex
        } else {
            0
        };
        if let std::collections::btree_map::Entry::Vacant(v) = counters.entry(slot) {
            v.insert(maps.counters(slot)?);
        }
        ifaces.push(IfaceReading {
            name,
            slot,
            state: maps.ifstate(slot)?,
        });
    }
    let rules = rules::list(maps)?;
    // (rate, address, prefix length, bucket empty): ordered by rate, then address.
    let mut top = TopN::new(TOP);
    let sources = crate::sources::for_each(maps, mono_ns, |k, b| {
        let rate = smoothed_rate(b, mono_ns);
        if rate > 0 {
            let empty =
                gcra::tokens(b.tat_ns, mono_ns, cfg.syn_interval_ns, cfg.syn_tolerance_ns) == 0;
            top.push((rate, k.addr, k.prefix_len, empty));
        }
    })
    .context("walking the sources table")?;
    let top = top
        .into_sorted()
        .into_iter()
        .filter_map(|(rate, addr, prefix_len, empty)| {
            let key = synguard_common::SourceKey { addr, prefix_len };
            let verified = maps
                .verified
                .get(&key, 0)
                .is_ok_and(|p| p.until_ns > mono_ns);
            Some(SourceReading {
                net: source_net(&key)?,
                rate,
                empty,
                verified,
            })
        })
        .collect();
    Ok(Some(Reading {
        mono_ns,
        wall,
        daemon: pins::daemon_running(&state.pin_dir),
        monitor: cfg.mode == synguard_common::MODE_MONITOR,
        attack_syn_rate: u64::from(cfg.attack_syn_rate),
        cookies: cfg.syn_cookies,
        ifaces,
        counters,
        rules,
        top,
        sources,
    }))
}

// ---------------------------------------------------------------------------------------
// The model

/// What `synguard top` shows: everything [`render`] and [`plain_line`] need, computed.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub wall: Option<SystemTime>,
    pub interval: Duration,
    /// The first reading: nothing to compare with yet, so no rates.
    pub measuring: bool,
    pub daemon: bool,
    pub monitor: bool,
    pub attack_syn_rate: u64,
    /// SYNs in per second (see the module documentation) and its history, oldest first.
    pub syn_rate: u64,
    pub syn_history: Vec<u64>,
    /// Packets dropped per second and its history.
    pub drop_rate: u64,
    pub drop_history: Vec<u64>,
    /// Every drop reason: (counter name, per second, total).
    pub drops: Vec<(&'static str, u64, u64)>,
    /// SYNs answered with a cookie per second (attack mode).
    pub answered_rate: u64,
    pub ifaces: Vec<IfaceView>,
    pub top: Vec<SourceView>,
    pub sources: usize,
    pub bans: usize,
    pub blocks: usize,
    pub allows: usize,
    /// Recent list changes, newest first (bounded).
    pub events: Vec<ListEvent>,
    /// The changes found by this refresh (for the plain output).
    pub new_events: Vec<ListEvent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceView {
    pub name: String,
    pub attack: bool,
    /// How long attack mode has lasted.
    pub attack_for: Option<Duration>,
    /// The attack detector's latest total SYN rate (SYNs that reach the rate limiter).
    pub detector_rate: u64,
    pub peak_rate: u64,
    pub syn_rate: u64,
    pub drop_rate: u64,
    pub answered_rate: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An automatic ban drops everything from it.
    Banned,
    /// A manual block drops everything from it.
    Blocked,
    /// The allowlist passes it, whatever else matches.
    Allowed,
    /// Its bucket is empty: its next SYN is over the limit.
    Limited,
    /// Metered and within its limit.
    Passing,
    /// Within its limit, in attack mode and not verified: its SYNs are answered with
    /// cookies from XDP.
    Cookie,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::Blocked => "blocked",
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::Passing => "passing",
            Self::Cookie => "cookie",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceView {
    pub net: IpNet,
    pub rate: u64,
    pub verdict: Verdict,
    /// Why, in a few words (`expires in 9m58s`, the allow entry, ...).
    pub note: String,
}

/// A change of the allow, block and ban lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEvent {
    pub wall: Option<SystemTime>,
    /// `+ 203.0.113.66/32 banned (at 101000 SYN/s), expires in 10m`.
    pub text: String,
}

struct Previous {
    mono_ns: u64,
    counters: BTreeMap<u32, [u64; stat::COUNT]>,
    /// Every entry by prefix.
    rules: BTreeMap<IpNet, RuleEntry>,
}

/// Turns readings into views; keeps the previous reading, the histories and the events.
pub struct Model {
    interval: Duration,
    history_len: usize,
    syn_history: VecDeque<u64>,
    drop_history: VecDeque<u64>,
    events: VecDeque<ListEvent>,
    previous: Option<Previous>,
}

impl Model {
    pub fn new(interval: Duration) -> Self {
        let per = interval.as_secs_f64().max(0.001);
        let history_len = ((HISTORY.as_secs_f64() / per).ceil() as usize).clamp(60, 3000);
        Self {
            interval,
            history_len,
            syn_history: VecDeque::with_capacity(history_len),
            drop_history: VecDeque::with_capacity(history_len),
            events: VecDeque::with_capacity(EVENTS_KEPT),
            previous: None,
        }
    }

    /// The view after one more reading.
    pub fn update(&mut self, r: Reading) -> View {
        let prev = self.previous.take();
        let secs = prev
            .as_ref()
            .map(|p| r.mono_ns.saturating_sub(p.mono_ns))
            .filter(|ns| *ns > 0)
            .map(|ns| ns as f64 / 1e9);
        let per_sec = |d: u64| secs.map_or(0, |s| (d as f64 / s).round() as u64);
        // Counter increases by slot; a slot first seen now has no increase yet.
        let delta = |slot: u32| -> [u64; stat::COUNT] {
            let mut d = [0u64; stat::COUNT];
            if let (Some(p), Some(now)) = (
                prev.as_ref().and_then(|p| p.counters.get(&slot)),
                r.counters.get(&slot),
            ) {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = now[i].saturating_sub(p[i]);
                }
            }
            d
        };
        let mut total = [0u64; stat::COUNT];
        for slot in r.counters.keys() {
            for (t, v) in total.iter_mut().zip(delta(*slot)) {
                *t += v;
            }
        }
        let syn_rate = per_sec(syns_in(&total));
        let drop_rate = per_sec(dropped(&total));
        if secs.is_some() {
            push_bounded(&mut self.syn_history, syn_rate, self.history_len);
            push_bounded(&mut self.drop_history, drop_rate, self.history_len);
        }
        let drops = stat::REASON_LIST
            .iter()
            .copied()
            .filter(|i| stat::is_drop(*i))
            .map(|i| {
                let all: u64 = r.counters.values().map(|c| c[i]).sum();
                (stat::NAMES[i], per_sec(total[i]), all)
            })
            .collect();

        let ifaces = r
            .ifaces
            .iter()
            .map(|i| {
                let d = delta(i.slot);
                let st = &i.state;
                let fresh = r.mono_ns.saturating_sub(st.rate_ns) <= ATTACK_STALE_NS;
                IfaceView {
                    name: i.name.clone(),
                    attack: st.attack != 0,
                    attack_for: (st.attack != 0 && st.since_ns != 0)
                        .then(|| Duration::from_nanos(r.mono_ns.saturating_sub(st.since_ns))),
                    detector_rate: if fresh { st.rate } else { 0 },
                    peak_rate: st.peak_rate,
                    syn_rate: per_sec(syns_in(&d)),
                    drop_rate: per_sec(dropped(&d)),
                    answered_rate: per_sec(d[stat::R_COOKIE_SENT]),
                }
            })
            .collect();

        let now = r.mono_ns;
        let live: Vec<RuleEntry> = r
            .rules
            .iter()
            .filter(|e| !e.rule.expired(now))
            .cloned()
            .collect();
        // Candidates: the busiest buckets, and every dropping entry with hits since the
        // last reading (its packets never reach a bucket). Each prefix once, at its
        // larger rate.
        let mut rates: BTreeMap<IpNet, (u64, bool, bool)> = BTreeMap::new();
        for s in &r.top {
            rates.insert(s.net, (s.rate, s.empty, s.verified));
        }
        if let Some(p) = &prev {
            for e in live
                .iter()
                .filter(|e| e.is_block() && e.rule.action == ACTION_DROP)
            {
                let before = p
                    .rules
                    .get(&e.net)
                    .filter(|o| {
                        o.rule.created_ns == e.rule.created_ns && o.rule.kind == e.rule.kind
                    })
                    .map_or(0, |o| o.rule.hits);
                let rate = per_sec(e.rule.hits.saturating_sub(before));
                if rate > 0 {
                    let c = rates.entry(e.net).or_insert((0, false, false));
                    c.0 = c.0.max(rate);
                }
            }
        }
        let mut ranked: Vec<(IpNet, u64, bool, bool)> = rates
            .into_iter()
            .map(|(n, (r, e, v))| (n, r, e, v))
            .collect();
        ranked.sort_by_key(|(net, rate, _, _)| (Reverse(*rate), *net));
        ranked.truncate(TOP);
        // SYNs within their limit are answered with cookies while attack mode lasts
        // (as the program decides: enforce mode, `syn-cookies` auto or always).
        let cookies_active = !r.monitor
            && match r.cookies {
                synguard_common::COOKIES_ALWAYS => true,
                synguard_common::COOKIES_AUTO => r.ifaces.iter().any(|i| i.state.attack != 0),
                _ => false,
            };
        let top = ranked
            .into_iter()
            .map(|(net, rate, empty, verified)| {
                let (verdict, note) = match verdict(&live, &net, empty, now) {
                    (Verdict::Passing, _) if cookies_active && verified => {
                        (Verdict::Passing, "verified".to_string())
                    }
                    (Verdict::Passing, _) if cookies_active => {
                        (Verdict::Cookie, "until verified".to_string())
                    }
                    other => other,
                };
                SourceView {
                    net,
                    rate,
                    verdict,
                    note,
                }
            })
            .collect();

        let rules_now: BTreeMap<IpNet, RuleEntry> =
            r.rules.iter().map(|e| (e.net, e.clone())).collect();
        let mut new_events = Vec::new();
        if let Some(p) = &prev {
            let texts = list_changes(&p.rules, &rules_now, now);
            let extra = texts.len().saturating_sub(EVENTS_PER_REFRESH);
            for text in texts.into_iter().take(EVENTS_PER_REFRESH) {
                new_events.push(ListEvent {
                    wall: Some(r.wall),
                    text,
                });
            }
            if extra > 0 {
                new_events.push(ListEvent {
                    wall: Some(r.wall),
                    text: format!("... and {extra} more changes"),
                });
            }
        }
        for e in &new_events {
            push_bounded_front(&mut self.events, e.clone(), EVENTS_KEPT);
        }
        let count = |k: u8| live.iter().filter(|e| e.rule.kind == k).count();
        let view = View {
            wall: Some(r.wall),
            interval: self.interval,
            measuring: secs.is_none(),
            daemon: r.daemon,
            monitor: r.monitor,
            attack_syn_rate: r.attack_syn_rate,
            syn_rate,
            syn_history: self.syn_history.iter().copied().collect(),
            drop_rate,
            drop_history: self.drop_history.iter().copied().collect(),
            drops,
            answered_rate: per_sec(total[stat::R_COOKIE_SENT]),
            ifaces,
            top,
            sources: r.sources,
            bans: count(RULE_BAN),
            blocks: count(synguard_common::RULE_BLOCK),
            allows: count(RULE_ALLOW),
            events: self.events.iter().cloned().collect(),
            new_events,
        };
        self.previous = Some(Previous {
            mono_ns: r.mono_ns,
            counters: r.counters,
            rules: rules_now,
        });
        view
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

fn push_bounded_front<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_back();
    }
    q.push_front(v);
}

/// SYNs in: see the module documentation.
fn syns_in(c: &[u64; stat::COUNT]) -> u64 {
    c[stat::N_SYNS] + c[stat::R_BLOCKED] + c[stat::R_BANNED]
}

/// Packets with a drop verdict (dropped, or in monitor mode, would have been).
fn dropped(c: &[u64; stat::COUNT]) -> u64 {
    stat::REASON_LIST
        .iter()
        .filter(|r| stat::is_drop(**r))
        .map(|r| c[*r])
        .sum()
}

/// What happens to a source now, decided as `explain` does: the most specific live
/// entry that matches its address, else the state of its bucket.
fn verdict(live: &[RuleEntry], net: &IpNet, empty: bool, now: u64) -> (Verdict, String) {
    let addr: IpAddr = net.network();
    match rules::matching(live, addr).first() {
        Some(e) if e.rule.kind == RULE_ALLOW => (Verdict::Allowed, format!("allowlist {}", e.net)),
        Some(e) if e.rule.action != ACTION_DROP => (
            Verdict::Allowed,
            format!(
                "block {} inside allowlist {}",
                e.net,
                rules::shadowing_allow(live, &e.net).map_or("?".into(), |a| a.net.to_string())
            ),
        ),
        Some(e) => {
            let v = if e.rule.kind == RULE_BAN {
                Verdict::Banned
            } else {
                Verdict::Blocked
            };
            let inside = if e.net == *net {
                String::new()
            } else {
                format!("as {}, ", e.net)
            };
            let left = if e.rule.expires_ns == 0 {
                "no expiry".to_string()
            } else {
                format!("{} left", left_secs(e.rule.expires_ns, now))
            };
            (v, format!("{inside}{left}"))
        }
        None if empty => (Verdict::Limited, "bucket empty".into()),
        None => (Verdict::Passing, String::new()),
    }
}

/// `expires in 9m58s`, or `no expiry`.
fn expiry(expires_ns: u64, now: u64) -> String {
    if expires_ns == 0 {
        return "no expiry".into();
    }
    format!("expires in {}", left_secs(expires_ns, now))
}

/// The time until a stamp, rounded to the nearest second: `9m58s`.
fn left_secs(stamp_ns: u64, now: u64) -> String {
    let left = stamp_ns.saturating_sub(now);
    format_duration(Duration::from_secs((left + 500_000_000) / 1_000_000_000))
}

fn kind_word(kind: u8) -> (&'static str, &'static str) {
    match kind {
        RULE_ALLOW => ("allowed", "allow"),
        RULE_BAN => ("banned", "ban"),
        _ => ("blocked", "block"),
    }
}

/// The changes between two listings, removals first, each in prefix order.
fn list_changes(
    before: &BTreeMap<IpNet, RuleEntry>,
    after: &BTreeMap<IpNet, RuleEntry>,
    now: u64,
) -> Vec<String> {
    let same = |a: &RuleEntry, b: &RuleEntry| {
        a.rule.kind == b.rule.kind && a.rule.created_ns == b.rule.created_ns
    };
    let mut out = Vec::new();
    for (net, old) in before {
        if after.get(net).is_some_and(|e| same(e, old)) {
            continue;
        }
        let (_, noun) = kind_word(old.rule.kind);
        // The daemon removes an entry only once it has expired; one removed before its
        // time was removed by hand (or replaced).
        let how = if old.rule.expired(now) {
            "expired"
        } else {
            "removed"
        };
        out.push(format!("- {net} {noun} {how}"));
    }
    for (net, e) in after {
        if before.get(net).is_some_and(|old| same(e, old)) {
            continue;
        }
        let (verb, _) = kind_word(e.rule.kind);
        let comment = e.comment();
        let mut text = format!("+ {net} {verb}");
        if e.rule.kind == RULE_BAN && e.rule.rate > 0 {
            text.push_str(&format!(" (at {} SYN/s)", e.rule.rate));
        } else if !comment.is_empty() {
            text.push_str(&format!(" ({comment})"));
        }
        if e.rule.kind != RULE_ALLOW {
            text.push_str(&format!(", {}", expiry(e.rule.expires_ns, now)));
        }
        out.push(text);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Output

fn stamp(wall: Option<SystemTime>) -> String {
    wall.map_or_else(|| "-".into(), clock::rfc3339)
}

/// The line printed per interval when stdout is not a terminal:
/// `2026-11-24T20:50:01Z syn/s=152000 drop/s=151900 attack=sga bans=1
/// top=203.0.113.66/32:151000(banned)`. Fields are always present and in this order;
/// `syn/s` and `drop/s` are as in the module documentation (in `mode = monitor`,
/// `drop/s` is what would have been dropped);
/// `attack` lists the interfaces in attack mode (comma-separated) or is `-`, `top` the
/// three busiest sources as `PREFIX:RATE(VERDICT)` (comma-separated) or `-`.
pub fn plain_line(v: &View) -> String {
    let attack: Vec<&str> = v
        .ifaces
        .iter()
        .filter(|i| i.attack)
        .map(|i| i.name.as_str())
        .collect();
    let top: Vec<String> = v
        .top
        .iter()
        .take(PLAIN_TOP)
        .map(|s| format!("{}:{}({})", s.net, s.rate, s.verdict.as_str()))
        .collect();
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    format!(
        "{} syn/s={} drop/s={} attack={} bans={} top={}",
        stamp(v.wall),
        v.syn_rate,
        v.drop_rate,
        or_dash(attack.join(",")),
        v.bans,
        or_dash(top.join(","))
    )
}

/// A list change as a line of the plain output: `2026-11-24T20:50:01Z + 203.0.113.66/32
/// banned (at 101000 SYN/s), expires in 10m`.
pub fn event_line(wall: Option<SystemTime>, e: &ListEvent) -> String {
    format!("{} {}", stamp(e.wall.or(wall)), e.text)
}

/// The time of day of a stamp, `20:50:01`, for the events pane.
fn time_of_day(wall: Option<SystemTime>) -> String {
    let s = stamp(wall);
    s.get(11..19).map_or(s.clone(), str::to_string)
}

/// The last `width` columns of a history, each the peak of the samples it stands for
/// when there are more samples than columns (a short spike stays visible).
fn fit(history: &[u64], width: usize) -> Vec<u64> {
    if width == 0 || history.len() <= width {
        return history.to_vec();
    }
    let group = history.len().div_ceil(width);
    history
        .chunks(group)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect()
}

fn span(v: &View, samples: usize) -> String {
    let secs = v.interval.as_secs_f64() * samples as f64;
    format_duration(Duration::from_secs_f64(secs.min(1e9)))
}

fn verdict_style(v: Verdict) -> Style {
    match v {
        Verdict::Banned => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Blocked => Style::new().fg(Color::Magenta),
        Verdict::Allowed => Style::new().fg(Color::Green),
        Verdict::Limited => Style::new().fg(Color::Yellow),
        Verdict::Passing => Style::new(),
        Verdict::Cookie => Style::new().fg(Color::Cyan),
    }
}

fn titled(title: String) -> Block<'static> {
    Block::bordered().title(Span::styled(
        title,
        Style::new().add_modifier(Modifier::BOLD),
    ))
}

/// Draw the view. Pure: everything comes from `v`.
pub fn render(frame: &mut Frame, v: &View) {
    // Borders, a header row, one row per interface.
    let ifaces_height = if v.ifaces.is_empty() {
        3
    } else {
        v.ifaces.len() as u16 + 3
    };
    let [header, sparks, middle, attack, events] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(6),
        Constraint::Length(TOP as u16 + 3),
        Constraint::Length(ifaces_height),
        Constraint::Min(3),
    ])
    .areas(frame.area());

    // Header.
    let mut head = vec![
        Span::styled("synguard top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {}  every {}  ",
            stamp(v.wall),
            humantime::format_duration(v.interval),
        )),
    ];
    head.push(if v.monitor {
        Span::styled("MONITOR mode", Style::new().fg(Color::Yellow))
    } else {
        Span::raw("enforce")
    });
    head.push(Span::raw("  "));
    head.push(if v.daemon {
        Span::raw("daemon running")
    } else {
        Span::styled(
            "daemon NOT RUNNING",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    });
    frame.render_widget(Paragraph::new(Line::from(head)), header);

    // Sparklines.
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(sparks);
    for (area, name, now, history, color) in [
        (left, "SYN/s in", v.syn_rate, &v.syn_history, Color::Cyan),
        (
            right,
            if v.monitor {
                "Would drop/s"
            } else {
                "Dropped/s"
            },
            v.drop_rate,
            &v.drop_history,
            Color::Red,
        ),
    ] {
        let width = area.width.saturating_sub(2) as usize;
        // Newest at the right edge, older to the left, as the history fills up.
        let mut data = fit(history, width);
        data.reverse();
        let peak = history.iter().copied().max().unwrap_or(0);
        let title = if v.measuring {
            format!(" {name}: measuring... ")
        } else {
            format!(" {name}: {now} (peak {peak}, {}) ", span(v, history.len()))
        };
        frame.render_widget(
            Sparkline::default()
                .block(titled(title))
                .style(Style::new().fg(color))
                .direction(RenderDirection::RightToLeft)
                .data(&data),
            area,
        );
    }

    // Top sources and drops by reason.
    let [sources_area, drops_area] =
        Layout::horizontal([Constraint::Min(40), Constraint::Length(37)]).areas(middle);
    let rows: Vec<Row> = v
        .top
        .iter()
        .map(|s| {
            Row::new(vec![
                Cell::from(s.net.to_string()),
                Cell::from(s.rate.to_string()),
                Cell::from(s.verdict.as_str()).style(verdict_style(s.verdict)),
                Cell::from(s.note.clone()),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Min(18),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec!["SOURCE", "SYN/s", "VERDICT", "NOTE"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled(format!(
        " Top sources by SYN/s (of {} tracked) ",
        v.sources
    )));
    frame.render_widget(table, sources_area);
    if empty {
        let inner = Rect {
            x: sources_area.x + 2,
            y: sources_area.y + 2,
            width: sources_area.width.saturating_sub(4),
            height: 1.min(sources_area.height.saturating_sub(3)),
        };
        frame.render_widget(Paragraph::new("no source sending SYNs"), inner);
    }

    let mut drop_rows: Vec<Row> = v
        .drops
        .iter()
        .map(|(name, rate, total)| {
            let style = if *rate > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(*name),
                Cell::from(rate.to_string()),
                Cell::from(total.to_string()),
            ])
            .style(style)
        })
        .collect();
    drop_rows.push(Row::new(vec![
        Cell::from("answered (cookie)"),
        Cell::from(v.answered_rate.to_string()),
        Cell::from(""),
    ]));
    let drops = Table::new(
        drop_rows,
        [
            Constraint::Length(18),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec!["REASON", "/s", "TOTAL"]).style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled(if v.monitor {
        " Would drop, by reason (monitor) ".into()
    } else {
        " Drops by reason ".into()
    }));
    frame.render_widget(drops, drops_area);

    // Attack mode per interface.
    let attack_block = titled(format!(
        " Attack mode (starts at {} SYN/s) ",
        v.attack_syn_rate
    ));
    if v.ifaces.is_empty() {
        frame.render_widget(
            Paragraph::new("no interface attached").block(attack_block),
            attack,
        );
    } else {
        let rows: Vec<Row> = v
            .ifaces
            .iter()
            .map(|i| {
                let state = if i.attack {
                    Cell::from(format!(
                        "ATTACK MODE for {}",
                        i.attack_for.map_or("?".into(), format_duration)
                    ))
                    .style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
                } else {
                    Cell::from("normal").style(Style::new().fg(Color::Green))
                };
                Row::new(vec![
                    Cell::from(i.name.clone()),
                    state,
                    Cell::from(i.detector_rate.to_string()),
                    Cell::from(i.peak_rate.to_string()),
                    Cell::from(i.syn_rate.to_string()),
                    Cell::from(i.drop_rate.to_string()),
                    Cell::from(i.answered_rate.to_string()),
                ])
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Min(10),
                Constraint::Length(24),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(
            Row::new(vec![
                "INTERFACE",
                "STATE",
                "DETECTOR/s",
                "PEAK/s",
                "SYN/s",
                "DROPPED/s",
                "ANSWERED/s",
            ])
            .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(attack_block);
        frame.render_widget(table, attack);
    }

    // Ban and block events.
    let lines: Vec<Line> = if v.events.is_empty() {
        vec![Line::raw("no changes since top started")]
    } else {
        v.events
            .iter()
            .map(|e| {
                let style = if e.text.starts_with('+') {
                    Style::new().fg(Color::Red)
                } else if e.text.starts_with('-') {
                    Style::new().fg(Color::Green)
                } else {
                    Style::new()
                };
                Line::from(vec![
                    Span::raw(format!("{}  ", time_of_day(e.wall))),
                    Span::styled(e.text.clone(), style),
                ])
            })
            .collect()
    };
    let block = titled(format!(
        " Bans and blocks: {} banned, {} blocked, {} allowed now ",
        v.bans, v.blocks, v.allows
    ))
    .title_bottom(Line::from(" q quits ").right_aligned());
    frame.render_widget(Paragraph::new(lines).block(block), events);
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use synguard_common::{RULE_BLOCK, Rule};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ban(n: &str, created: u64, expires: u64, hits: u64, rate: u64) -> RuleEntry {
        let mut rule = Rule::new(RULE_BAN, ACTION_DROP, created, expires);
        rule.hits = hits;
        rule.rate = rate;
        RuleEntry { net: net(n), rule }
    }

    fn counters(syns: u64, banned: u64) -> [u64; stat::COUNT] {
        let mut c = [0; stat::COUNT];
        c[stat::N_SYNS] = syns;
        c[stat::R_SYN_PASSED] = syns;
        c[stat::R_BANNED] = banned;
        c
    }

    fn reading(at_s: u64, c: [u64; stat::COUNT], rules: Vec<RuleEntry>) -> Reading {
        Reading {
            mono_ns: at_s * S,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_553_400 + at_s),
            daemon: true,
            monitor: false,
            attack_syn_rate: 2000,
            cookies: synguard_common::COOKIES_OFF,
            ifaces: vec![IfaceReading {
                name: "sga".into(),
                slot: 3,
                state: IfState {
                    attack: 1,
                    since_ns: 95 * S,
                    rate: 2500,
                    rate_ns: at_s * S,
                    peak_rate: 3000,
                    ..Default::default()
                },
            }],
            counters: BTreeMap::from([(3, c)]),
            rules,
            top: vec![SourceReading {
                net: net("198.51.100.10/32"),
                rate: 4,
                empty: false,
                verified: false,
            }],
            sources: 2,
        }
    }

    #[test]
    fn top_n_keeps_the_largest_in_order() {
        let mut t = TopN::new(3);
        for v in [5, 1, 9, 3, 7, 9, 2] {
            t.push(v);
        }
        assert_eq!(t.into_sorted(), vec![9, 9, 7]);
        let mut t = TopN::new(0);
        t.push(1);
        assert!(t.into_sorted().is_empty());
    }

    #[test]
    fn in_attack_mode_unverified_sources_get_cookies_and_verified_ones_pass() {
        let with = |cookies: u32, monitor: bool, attack: u32| {
            let mut m = Model::new(Duration::from_secs(1));
            let mut first = reading(100, counters(10, 0), vec![]);
            let mut r = reading(101, counters(20, 0), vec![]);
            for x in [&mut first, &mut r] {
                x.cookies = cookies;
                x.monitor = monitor;
                x.ifaces[0].state.attack = attack;
                x.top.push(SourceReading {
                    net: net("198.51.100.11/32"),
                    rate: 3,
                    empty: false,
                    verified: true,
                });
            }
            m.update(first);
            m.update(r)
                .top
                .iter()
                .map(|s| (s.net.to_string(), s.verdict, s.note.clone()))
                .collect::<Vec<_>>()
        };
        let cookie = (
            "198.51.100.10/32".to_string(),
            Verdict::Cookie,
            "until verified".to_string(),
        );
        let verified = (
            "198.51.100.11/32".to_string(),
            Verdict::Passing,
            "verified".to_string(),
        );
        let passing = |n: &str| (n.to_string(), Verdict::Passing, String::new());
        use synguard_common::{COOKIES_ALWAYS, COOKIES_AUTO, COOKIES_OFF};
        assert_eq!(
            with(COOKIES_AUTO, false, 1),
            vec![cookie.clone(), verified.clone()]
        );
        assert_eq!(with(COOKIES_ALWAYS, false, 0), vec![cookie, verified]);
        // No attack mode, cookies off, or monitor mode: nothing is answered.
        for (c, mon, att) in [
            (COOKIES_AUTO, false, 0),
            (COOKIES_OFF, false, 1),
            (COOKIES_AUTO, true, 1),
        ] {
            assert_eq!(
                with(c, mon, att),
                vec![passing("198.51.100.10/32"), passing("198.51.100.11/32")]
            );
        }
    }

    #[test]
    fn rates_verdicts_and_ban_events_come_from_consecutive_readings() {
        let mut m = Model::new(Duration::from_secs(1));
        let v = m.update(reading(100, counters(10, 0), vec![]));
        assert!(v.measuring);
        assert_eq!(v.syn_rate, 0);
        assert!(v.new_events.is_empty());

        // Two seconds later the attacker is banned; its hits count as its rate.
        let b = ban("203.0.113.66/32", 101 * S, 701 * S, 300_000, 101_000);
        let v = m.update(reading(102, counters(110, 300_000), vec![b.clone()]));
        assert!(!v.measuring);
        assert_eq!(v.syn_rate, (100 + 300_000) / 2);
        assert_eq!(v.drop_rate, 150_000);
        assert_eq!(v.syn_history, vec![150_050]);
        assert_eq!(v.top[0].net, net("203.0.113.66/32"));
        assert_eq!(v.top[0].rate, 150_000);
        assert_eq!(v.top[0].verdict, Verdict::Banned);
        assert_eq!(v.top[0].note, "9m59s left");
        assert_eq!(v.top[1].verdict, Verdict::Passing);
        assert_eq!(v.bans, 1);
        assert_eq!(
            v.new_events[0].text,
            "+ 203.0.113.66/32 banned (at 101000 SYN/s), expires in 9m59s"
        );
        assert!(v.ifaces[0].attack);
        assert_eq!(v.ifaces[0].attack_for, Some(Duration::from_secs(7)));
        assert_eq!(v.ifaces[0].drop_rate, 150_000);

        // The same ban a second later: its hit rate, no new event.
        let mut b2 = b.clone();
        b2.rule.hits = 450_000;
        let v = m.update(reading(103, counters(110, 450_000), vec![b2.clone()]));
        assert_eq!(v.top[0].rate, 150_000);
        assert!(v.new_events.is_empty());
        assert_eq!(v.events.len(), 1);

        // It expires and the daemon sweeps it; a block is added by hand.
        let mut blk = RuleEntry {
            net: net("10.0.0.0/8"),
            rule: Rule::new(RULE_BLOCK, ACTION_DROP, 800 * S, 0),
        };
        rules::set_comment(&mut blk.rule, "lab");
        let mut late = reading(702, counters(110, 450_000), vec![blk]);
        late.mono_ns = 702 * S;
        let v = m.update(late);
        let texts: Vec<&str> = v.new_events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "- 203.0.113.66/32 ban expired",
                "+ 10.0.0.0/8 blocked (lab), no expiry"
            ]
        );
        // Newest first in the pane.
        assert_eq!(v.events[0].text, "+ 10.0.0.0/8 blocked (lab), no expiry");
        assert_eq!(v.events.len(), 3);
        assert_eq!((v.bans, v.blocks), (0, 1));
    }

    #[test]
    fn verdicts_follow_the_most_specific_live_entry() {
        let now = 10 * S;
        let allow = RuleEntry {
            net: net("198.51.100.0/24"),
            rule: Rule::new(RULE_ALLOW, synguard_common::ACTION_PASS, S, 0),
        };
        let mut shadowed = ban("198.51.100.7/32", S, 0, 0, 0);
        shadowed.rule.action = synguard_common::ACTION_PASS;
        let block = RuleEntry {
            net: net("203.0.113.0/24"),
            rule: Rule::new(RULE_BLOCK, ACTION_DROP, S, 0),
        };
        let live = vec![allow, shadowed, block];
        assert_eq!(
            verdict(&live, &net("198.51.100.9/32"), true, now).0,
            Verdict::Allowed
        );
        // A ban inside an allow entry: the kernel consults the allow entries first.
        assert_eq!(
            verdict(&live, &net("198.51.100.7/32"), false, now),
            (Verdict::Allowed, "allowlist 198.51.100.0/24".into())
        );
        // A manual block inside one is passed by its effective action.
        let mut inner = RuleEntry {
            net: net("198.51.100.128/25"),
            rule: Rule::new(RULE_BLOCK, synguard_common::ACTION_PASS, S, 0),
        };
        inner.rule.prefix_len = 25;
        let with_block = vec![live[0].clone(), inner];
        assert_eq!(
            verdict(&with_block, &net("198.51.100.200/32"), false, now),
            (
                Verdict::Allowed,
                "block 198.51.100.128/25 inside allowlist 198.51.100.0/24".into()
            )
        );
        assert_eq!(
            verdict(&live, &net("203.0.113.5/32"), false, now),
            (Verdict::Blocked, "as 203.0.113.0/24, no expiry".to_string())
        );
        assert_eq!(
            verdict(&live, &net("192.0.2.9/32"), true, now).0,
            Verdict::Limited
        );
        assert_eq!(
            verdict(&live, &net("2001:db8::/64"), false, now).0,
            Verdict::Passing
        );
    }

    #[test]
    fn monitor_mode_shows_what_would_be_dropped() {
        let mut m = Model::new(Duration::from_secs(1));
        let mut c = counters(0, 0);
        let mut r = reading(1, c, vec![]);
        r.monitor = true;
        m.update(r);
        c[stat::R_BANNED] = 5000;
        c[stat::N_MONITOR_PASSED] = 5000;
        let mut r = reading(2, c, vec![]);
        r.monitor = true;
        let v = m.update(r);
        assert_eq!(v.drop_rate, 5000);
        let s = screen(&v, 100, 30);
        for want in [
            "MONITOR mode",
            " Would drop/s: 5000 ",
            " Would drop, by reason (monitor) ",
        ] {
            assert!(s.contains(want), "{want:?} missing from:\n{s}");
        }
    }

    #[test]
    fn a_wave_of_bans_is_summed_up() {
        let mut m = Model::new(Duration::from_secs(1));
        m.update(reading(1, counters(0, 0), vec![]));
        let bans: Vec<RuleEntry> = (0..30)
            .map(|i| ban(&format!("198.18.0.{i}/32"), S, 601 * S, 0, 300))
            .collect();
        let v = m.update(reading(2, counters(0, 0), bans));
        assert_eq!(v.new_events.len(), EVENTS_PER_REFRESH + 1);
        assert_eq!(
            v.new_events.last().map(|e| e.text.as_str()),
            Some("... and 10 more changes")
        );
    }

    #[test]
    fn histories_are_bounded() {
        let mut m = Model::new(Duration::from_secs(1));
        for t in 0..400 {
            m.update(reading(t, counters(t * 10, 0), vec![]));
        }
        let v = m.update(reading(400, counters(4000, 0), vec![]));
        assert_eq!(v.syn_history.len(), 300);
        assert_eq!(Model::new(Duration::from_millis(100)).history_len, 3000);
        assert_eq!(Model::new(Duration::from_secs(60)).history_len, 60);
    }

    #[test]
    fn source_rates_are_smoothed_over_a_window_or_two() {
        let b = |start, cur, prev, last| synguard_common::Bucket {
            window_start_ns: start,
            window_syns: cur,
            prev_window_syns: prev,
            last_seen_ns: last,
            ..Default::default()
        };
        let now = 100 * S;
        // One SYN 5 ms ago: 1/s, not 200/s.
        assert_eq!(
            smoothed_rate(&b(now - 5_000_000, 1, 0, now - 5_000_000), now),
            1
        );
        // A steady 150000/s flood, 200 ms into its window.
        assert_eq!(
            smoothed_rate(&b(now - S / 5, 30_000, 150_000, now), now),
            150_000
        );
        // Quiet for over two windows.
        assert_eq!(smoothed_rate(&b(now - 3 * S, 9, 9, now - 3 * S), now), 0);
    }

    #[test]
    fn fit_keeps_peaks() {
        assert_eq!(fit(&[1, 2, 3], 10), vec![1, 2, 3]);
        assert_eq!(fit(&[1, 9, 3, 4, 5, 6], 3), vec![9, 4, 6]);
        assert_eq!(fit(&[1, 9, 3, 4, 5], 2), vec![9, 5]);
    }

    #[test]
    fn interval_bounds() {
        assert!(check_interval(Duration::from_millis(500)).is_ok());
        for bad in [
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_secs(7200),
        ] {
            let e = check_interval(bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_USAGE);
            assert!(e.to_string().contains("use 100ms to 1h"), "{e}");
        }
    }

    /// A view as during the founding incident plus a forged flood: the hping3 source
    /// banned, forged sources answered with cookies in attack mode.
    fn flood_view() -> View {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_553_401);
        let ramp: Vec<u64> = (0..600)
            .map(|i: u64| match i {
                0..380 => 20 + i % 7,
                380..400 => (i - 379) * 15_000,
                _ => 300_000 + (i * 7919) % 9000,
            })
            .collect();
        let drop: Vec<u64> = ramp
            .iter()
            .enumerate()
            .map(|(i, r)| if i < 381 { 0 } else { r / 2 })
            .collect();
        let ev = |secs: u64, text: &str| ListEvent {
            wall: Some(wall - Duration::from_secs(secs)),
            text: text.into(),
        };
        let src = |n: &str, rate, verdict, note: &str| SourceView {
            net: net(n),
            rate,
            verdict,
            note: note.into(),
        };
        View {
            wall: Some(wall),
            interval: Duration::from_millis(500),
            measuring: false,
            daemon: true,
            monitor: false,
            attack_syn_rate: 2000,
            syn_rate: 303_412,
            syn_history: ramp,
            drop_rate: 151_906,
            drop_history: drop,
            drops: vec![
                ("blocked", 0, 0),
                ("banned", 151_906, 15_092_311),
                ("invalid_flags", 0, 0),
                ("syn_limited", 0, 2),
                ("cookie_no_listener", 0, 0),
            ],
            answered_rate: 149_870,
            ifaces: vec![IfaceView {
                name: "eth0".into(),
                attack: true,
                attack_for: Some(Duration::from_secs(101)),
                detector_rate: 151_203,
                peak_rate: 158_870,
                syn_rate: 303_412,
                drop_rate: 151_906,
                answered_rate: 149_870,
            }],
            top: vec![
                src("203.0.113.66/32", 151_906, Verdict::Banned, "8m19s left"),
                src("198.51.100.14/32", 11, Verdict::Passing, ""),
                src("198.51.100.10/32", 10, Verdict::Passing, ""),
                src("198.51.100.23/32", 10, Verdict::Passing, ""),
                src("198.51.100.17/32", 9, Verdict::Passing, ""),
                src("198.51.100.21/32", 9, Verdict::Passing, ""),
                src("198.51.100.29/32", 9, Verdict::Passing, ""),
                src("198.18.7.201/32", 2, Verdict::Passing, ""),
                src("198.18.88.14/32", 2, Verdict::Passing, ""),
                src("198.19.3.77/32", 2, Verdict::Passing, ""),
            ],
            sources: 131_093,
            bans: 1,
            blocks: 1,
            allows: 0,
            events: vec![
                ev(
                    31,
                    "+ 2001:db8:bad::/48 blocked (IPv6 scanner), expires in 1h",
                ),
                ev(
                    101,
                    "+ 203.0.113.66/32 banned (at 101000 SYN/s), expires in 10m",
                ),
                ev(101, "- 203.0.113.66/32 ban expired"),
                ev(
                    701,
                    "+ 203.0.113.66/32 banned (at 98000 SYN/s), expires in 10m",
                ),
            ],
            new_events: vec![],
        }
    }

    fn screen(v: &View, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(f, v)).unwrap();
        let buf = t.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            let mut line = String::new();
            for x in 0..buf.area.width {
                line.push_str(buf[(x, y)].symbol());
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    #[test]
    fn render_shows_every_pane() {
        let v = flood_view();
        let s = screen(&v, 100, 30);
        for want in [
            "synguard top  2026-11-24T20:50:01Z  every 500ms  enforce  daemon running\n",
            " SYN/s in: 303412 (peak 308952, 5m) ",
            " Dropped/s: 151906 (peak 154476, 5m) ",
            " Top sources by SYN/s (of 131093 tracked) ",
            "q quits",
            "Drops by reason",
            "Attack mode (starts at 2000 SYN/s)",
            "DETECTOR/s",
            "+ 203.0.113.66/32 banned (at 101000 SYN/s), expires in 10m",
            "- 203.0.113.66/32 ban expired",
            " 1 banned, 1 blocked, 0 allowed now ",
        ] {
            assert!(s.contains(want), "{want:?} missing from:\n{s}");
        }
        let row = s
            .lines()
            .find(|l| l.contains("203.0.113.66/32 ") && l.contains("banned "))
            .unwrap_or_else(|| panic!("no top row:\n{s}"));
        assert!(
            row.contains("151906") && row.contains("8m19s left"),
            "{row}"
        );
        assert!(s.contains("198.51.100.10/32"), "{s}");
        assert!(s.contains("198.19.3.77/32"), "all ten sources shown:\n{s}");
        let row = |start: &str| {
            s.lines()
                .find(|l| l.contains(start))
                .unwrap_or_else(|| panic!("no {start:?} row:\n{s}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(row("│banned ").contains("banned 151906 15092311"), "{s}");
        assert!(
            row("│eth0 ").contains("eth0 ATTACK MODE for 1m41s 151203 158870 303412 151906 149870"),
            "{s}"
        );
        // The newest event comes first.
        let first = s.find("IPv6 scanner").unwrap();
        assert!(first < s.find("banned (at").unwrap());

        // Quiet and small: still draws, says so.
        let quiet = View {
            interval: Duration::from_secs(1),
            measuring: true,
            ..Default::default()
        };
        let s = screen(&quiet, 60, 20);
        assert!(s.contains("measuring..."), "{s}");
        assert!(s.contains("daemon NOT RUNNING"), "{s}");
        assert!(s.contains("no interface attached"), "{s}");
        assert!(s.contains("no changes since top started"), "{s}");
    }

    /// The capture for the README: `SYNGUARD_TOP_CAPTURE=FILE cargo test -p synguard
    /// --lib top::tests::capture` writes the screen of [`flood_view`] at 100x30.
    #[test]
    fn capture() {
        let s = screen(&flood_view(), 100, 30);
        assert_eq!(s.lines().count(), 30);
        if let Some(path) = std::env::var_os("SYNGUARD_TOP_CAPTURE") {
            std::fs::write(path, s).unwrap();
        }
    }

    #[test]
    fn plain_lines_are_stable() {
        let v = flood_view();
        assert_eq!(
            plain_line(&v),
            "2026-11-24T20:50:01Z syn/s=303412 drop/s=151906 attack=eth0 bans=1 \
             top=203.0.113.66/32:151906(banned),198.51.100.14/32:11(passing),\
             198.51.100.10/32:10(passing)"
        );
        assert_eq!(
            plain_line(&View::default()),
            "- syn/s=0 drop/s=0 attack=- bans=0 top=-"
        );
        assert_eq!(
            event_line(v.wall, &v.events[1]),
            "2026-11-24T20:48:20Z + 203.0.113.66/32 banned (at 101000 SYN/s), expires in 10m"
        );
    }
}
