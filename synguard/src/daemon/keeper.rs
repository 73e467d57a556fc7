//! The keeper: a thread of its own that owns the host's settings attack mode needs
//! (`net.ipv4.tcp_syncookies`, `tcp_timestamps`, see `sysctls`), so that nothing else
//! `run` does (reading NAT rules, walking big tables, a CrowdSec pull, the metrics
//! endpoint) can delay them when an attack starts. It has its own descriptors of the
//! pinned maps and writes only `SG_HOST`, which nothing else writes while it runs: no
//! lock to wait for. It reads the attack state the program keeps (`SG_IFSTATE`) and the
//! settings (`SG_CONFIG`) every [`POLL`].
//!
//! When: attack mode itself is the XDP program's (it starts within milliseconds of a
//! flood) and touches nothing outside it. The host-wide settings that let the program
//! answer every SYN with a cookie change how the kernel answers everyone, so they are set
//! only while the server is under pressure in attack mode: the SYNs reaching the kernel
//! are more than its SYN queues hold (its `TCPReqQFullDoCookies`/`ListenDrops` counters
//! moved since attack mode started, see `sysctls::queue_overflows`), or the flood is
//! sustained (the interface's SYN rate has stayed at `attack-syn-rate` or more for
//! [`SUSTAINED`]: the kernel would be answering all of it, even where its queues keep
//! up, as they do when the forged address answers its SYN-ACKs with resets). A burst
//! that a big NAT can produce (a few hundred real SYNs, each completing its handshake)
//! fits in the queues and is over within a window: it may start attack mode, but
//! changes nothing on the host, and purges nothing. Until the settings
//! are set, SYNs the program cannot answer go to the kernel, which handles them as it
//! would without synguard (its queue, then its own cookies once the queue is full, which
//! the program can then answer too). `syn-cookies always` sets them for as long as `run`
//! runs; `off` and `mode = monitor` never.
//!
//! Until when: the settings stay until attack mode ends (a flood that keeps coming would
//! fill the queues again at once); then `tcp_syncookies` is restored at once and
//! `tcp_timestamps` six calm periods after the last cookie (a minute by default). Both
//! moments are kept in `SG_HOST` (`cookies_since_ns`, `cookies_last_ns`): a `run`
//! restarted during an attack (`--keep`: the service's restarts and upgrades) owns the
//! settings again, and one that finds the attack over restores them on time.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use synguard_common::{COOKIES_ALWAYS, COOKIES_AUTO, HostState, MODE_MONITOR, capacity};

use crate::{bpf::Maps, clock, journal, sysctls};

/// How often the keeper looks at the attack state.
pub(super) const POLL: Duration = Duration::from_millis(100);
/// How often while attack mode waits for pressure: the SYN queues' counters (a file read
/// and three map reads). Every SYN the kernel takes before the settings are set is one a
/// forged flood got into its queue, so this is short.
pub(super) const POLL_PRESSURE: Duration = Duration::from_millis(10);
/// How often it reads the kernel's settings even when nothing changed (the cookie
/// SYN-ACK's options follow them).
const REFRESH: Duration = Duration::from_secs(1);
/// How long the SYN rate must stay at `attack-syn-rate` or more for a flood to count as
/// pressure by itself.
pub(super) const SUSTAINED: Duration = Duration::from_secs(1);

/// Whether a condition has held without a break for [`SUSTAINED`].
#[derive(Debug, Default)]
pub(super) struct Sustained {
    since: Option<Instant>,
}

impl Sustained {
    /// Record whether it holds at `now`; whether it has held for [`SUSTAINED`].
    pub(super) fn observe(&mut self, holds: bool, now: Instant) -> bool {
        if !holds {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= SUSTAINED
    }
}

pub(super) struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Start keeping the settings for the interfaces whose stats slots are `slots`;
    /// journal events go to `notes`.
    pub(super) fn spawn(
        pin_dir: PathBuf,
        slots: Vec<u32>,
        notes: tokio::sync::mpsc::UnboundedSender<journal::Event>,
    ) -> anyhow::Result<Self> {
        let maps = Maps::from_pins(&pin_dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("synguard-keeper".into())
            .spawn(move || {
                let mut k = State {
                    maps,
                    slots,
                    notes,
                    attack: false,
                    pressure_base: None,
                    high_rate: Sustained::default(),
                    last_refresh: None,
                };
                while !flag.load(Ordering::Relaxed) {
                    let waiting = k.step();
                    // Woken early by `wake` (attack mode started).
                    std::thread::park_timeout(if waiting { POLL_PRESSURE } else { POLL });
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Look now (the main loop saw attack mode start), rather than at the next poll.
    pub(super) fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Stop the thread (the settings stay as they are: the caller decides).
    pub(super) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct State {
    maps: Maps,
    slots: Vec<u32>,
    notes: tokio::sync::mpsc::UnboundedSender<journal::Event>,
    /// Whether any interface was in attack mode at the last look.
    attack: bool,
    /// The SYN queues' overflow counter when attack mode started.
    pressure_base: Option<u64>,
    /// Whether an interface's SYN rate has stayed at `attack-syn-rate` or more.
    high_rate: Sustained,
    last_refresh: Option<Instant>,
}

/// What the settings should be, from the config and the attack state (`pressure` is
/// asked only when it matters).
pub(super) fn wanted(
    syn_cookies: u32,
    mode: u32,
    attack: bool,
    held: bool,
    pressure: impl FnOnce() -> bool,
) -> bool {
    if mode == MODE_MONITOR {
        return false;
    }
    match syn_cookies {
        COOKIES_ALWAYS => true,
        COOKIES_AUTO => attack && (held || pressure()),
        _ => false,
    }
}

impl State {
    /// One look; whether attack mode is waiting for pressure (look again soon).
    fn step(&mut self) -> bool {
        let now = clock::monotonic_ns();
        let (cfg, mut host) = match (self.maps.read_config(), self.maps.read_host()) {
            (Ok(c), Ok(h)) => (c, h),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("keeping the host's settings for attack mode: {e:#}");
                return false;
            }
        };
        let calm = if cfg.attack_calm_ns == 0 {
            synguard_common::ATTACK_CALM_NS
        } else {
            cfg.attack_calm_ns
        };
        // Attack mode as the program holds it; one left on by a complete silence (no SYN
        // closes a window to end it) counts as over once the calm period has passed. And
        // whether a flood is at the threshold now (a fresh rate).
        let states: Vec<_> = self
            .slots
            .iter()
            .filter_map(|&slot| self.maps.ifstate(capacity::stats_slot(slot)).ok())
            .collect();
        let attack = states
            .iter()
            .any(|st| st.attack != 0 && now.saturating_sub(st.rate_ns) <= calm + 1_000_000_000);
        let high = states.iter().any(|st| {
            st.attack != 0
                && st.rate >= u64::from(cfg.attack_syn_rate)
                && now.saturating_sub(st.rate_ns) <= synguard_common::ATTACK_STALE_NS
        });
        let sustained = self.high_rate.observe(high, Instant::now());
        if attack && !self.attack {
            self.pressure_base = sysctls::queue_overflows();
        } else if !attack {
            self.pressure_base = None;
        }
        self.attack = attack;
        let held = host.cookies_since_ns != 0;
        let mut seen = 0;
        let base = self.pressure_base;
        let want = wanted(cfg.syn_cookies, cfg.mode, attack, held, || {
            if sustained {
                return true;
            }
            // Unreadable counters count as pressure: attack mode then works as it did
            // before this check.
            match (base, sysctls::queue_overflows()) {
                (Some(b), Some(n)) => {
                    seen = n.saturating_sub(b);
                    n > b
                }
                _ => true,
            }
        });
        let waiting =
            attack && !want && cfg.syn_cookies == COOKIES_AUTO && cfg.mode != MODE_MONITOR;
        let due = self.last_refresh.is_none_or(|t| t.elapsed() >= REFRESH);
        if want == held && !due {
            return waiting;
        }
        self.last_refresh = Some(Instant::now());
        if want && !held {
            let why = if cfg.syn_cookies == COOKIES_ALWAYS {
                "syn-cookies = always".to_string()
            } else if sustained && seen == 0 {
                format!(
                    "the SYN rate has stayed at attack-syn-rate ({}/s) or more for {} s in \
                     attack mode",
                    cfg.attack_syn_rate,
                    SUSTAINED.as_secs()
                )
            } else if base.is_none() {
                "attack mode, and the SYN queues' counters cannot be read".to_string()
            } else {
                format!(
                    "the server's SYN queues ran over in attack mode ({seen} SYNs the listeners \
                     could not queue)"
                )
            };
            log::warn!("{why}: setting the host for SYN cookies answered from XDP");
            let _ = self.notes.send(journal::Event::Pressure { on: true, why });
            host.cookies_since_ns = now;
        } else if !want && held {
            log::info!("SYN cookies from XDP no longer needed: putting the host's settings back");
            let _ = self.notes.send(journal::Event::Pressure {
                on: false,
                why: if attack {
                    "syn-cookies or mode changed".into()
                } else {
                    "attack mode ended".into()
                },
            });
            host.cookies_since_ns = 0;
        }
        if want {
            host.cookies_last_ns = now;
        }
        let linger = calm.saturating_mul(6);
        let want_ts = want
            || (host.cookies_last_ns != 0 && now.saturating_sub(host.cookies_last_ns) < linger);
        let restoring_zero = !want && held && host.saved_syncookies == 0;
        if let Err(e) = sysctls::sync_syncookies(&mut host, want) {
            log::error!("managing net.ipv4.tcp_syncookies: {e:#}");
        }
        if let Err(e) = sysctls::sync_timestamps(&mut self.maps, &mut host, want_ts) {
            log::error!("managing net.ipv4.tcp_timestamps: {e:#}");
        }
        if let Err(e) = self.maps.write_host(&host) {
            log::error!("{e:#}");
        }
        if restoring_zero && cfg.mode != MODE_MONITOR {
            self.purge_stale_requests();
        }
        waiting
    }

    /// `tcp_syncookies` goes back to 0: the requests a flood got into the SYN queues
    /// before the settings were set would keep them full, and every new client out, for
    /// the rest of their minute of SYN-ACK resends. Those resent twice or more (3 s and
    /// older: no client's handshake takes that long) are removed; a real client among
    /// them, if any, gets a reset for its late ACK from the kernel (attack mode is over,
    /// so nothing drops it).
    fn purge_stale_requests(&mut self) {
        match crate::sockdiag::purge_where(|h| h.retrans >= 2) {
            Ok(0) => {}
            Ok(n) => {
                log::info!(
                    "removed {n} half-open connections left in the SYN queues by the flood \
                     (net.ipv4.tcp_syncookies is 0 again, so they would keep new clients out)"
                );
                let _ = self.notes.send(journal::Event::Purge {
                    prefix: "stale".into(),
                    connections: n as u64,
                });
            }
            Err(e) => log::debug!("purging stale half-open connections: {e}"),
        }
    }
}

/// `SG_HOST` as a stopping `run` leaves it: the settings restored, unless `keep` and an
/// attack is on (the next `run`, which finds the attack in the pinned state, owns them).
pub(super) fn on_stop(maps: &mut Maps, keep: bool, attack: bool) {
    let host: HostState = match maps.read_host() {
        Ok(h) => h,
        Err(e) => {
            log::error!("{e:#}");
            return;
        }
    };
    if keep && attack && host.cookies_since_ns != 0 {
        log::info!(
            "attack mode is on: net.ipv4.tcp_syncookies and tcp_timestamps stay set for the \
             program left attached; the next `synguard run` takes them over (or `synguard \
             detach` restores them)"
        );
        return;
    }
    sysctls::restore_all(maps);
}

#[cfg(test)]
mod tests {
    use synguard_common::{COOKIES_OFF, MODE_ENFORCE};

    use super::*;

    #[test]
    fn a_rate_counts_once_it_has_held_without_a_break() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Sustained::default();
        assert!(!s.observe(true, at(0)));
        assert!(!s.observe(true, at(900)));
        assert!(s.observe(true, at(1000)));
        // A break starts it over: a burst, a pause, a burst is not a sustained flood.
        assert!(!s.observe(false, at(1100)));
        assert!(!s.observe(true, at(1200)));
        assert!(!s.observe(true, at(2100)));
        assert!(s.observe(true, at(2200)));
    }

    #[test]
    fn the_host_is_changed_only_under_pressure_in_attack_mode() {
        let never = || -> bool { panic!("pressure asked when it does not matter") };
        // auto: attack mode alone changes nothing...
        assert!(!wanted(COOKIES_AUTO, MODE_ENFORCE, true, false, || false));
        // ...pressure in attack mode does, and once set it stays for the attack.
        assert!(wanted(COOKIES_AUTO, MODE_ENFORCE, true, false, || true));
        assert!(wanted(COOKIES_AUTO, MODE_ENFORCE, true, true, never));
        // No attack: nothing, whatever the queues say.
        assert!(!wanted(COOKIES_AUTO, MODE_ENFORCE, false, true, never));
        // always: always; off and monitor: never.
        assert!(wanted(COOKIES_ALWAYS, MODE_ENFORCE, false, false, never));
        assert!(!wanted(COOKIES_OFF, MODE_ENFORCE, true, true, never));
        assert!(!wanted(COOKIES_ALWAYS, MODE_MONITOR, true, true, never));
    }
}
