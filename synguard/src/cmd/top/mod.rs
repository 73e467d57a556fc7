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
    verdict,
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
mod model;
mod render;
mod sample;

pub use model::*;
pub use render::*;
pub use sample::*;

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
        // A tracked source (its bucket empty or not), unproven, attack mode off.
        let v = |live: &[RuleEntry], n: &str, empty| {
            let src = verdict::Source {
                tracked: true,
                empty,
                proven: false,
            };
            verdict(live, &net(n), src, false, now)
        };
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
        assert_eq!(v(&live, "198.51.100.9/32", true).0, Verdict::Allowed);
        // A ban inside an allow entry: the kernel consults the allow entries first.
        assert_eq!(
            v(&live, "198.51.100.7/32", false),
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
            v(&with_block, "198.51.100.200/32", false),
            (
                Verdict::Allowed,
                "block 198.51.100.128/25 inside allowlist 198.51.100.0/24".into()
            )
        );
        assert_eq!(
            v(&live, "203.0.113.5/32", false),
            (Verdict::Blocked, "as 203.0.113.0/24, no expiry".to_string())
        );
        assert_eq!(v(&live, "192.0.2.9/32", true).0, Verdict::Limited);
        assert_eq!(v(&live, "2001:db8::/64", false).0, Verdict::Passing);
        // The same verdict `explain` gives: a proven source over its limit is challenged,
        // one within it in attack mode passes as verified, any other gets cookies.
        let src = |empty, proven| verdict::Source {
            tracked: true,
            empty,
            proven,
        };
        let n = net("192.0.2.9/32");
        assert_eq!(
            verdict(&live, &n, src(true, true), false, now).0,
            Verdict::Challenged
        );
        assert_eq!(
            verdict(&live, &n, src(false, true), true, now),
            (Verdict::Passing, "verified".into())
        );
        assert_eq!(
            verdict(&live, &n, src(false, false), true, now),
            (Verdict::Cookie, "until verified".into())
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
