//! The link's own task on `run`'s runtime: pulls on a timer (with a growing delay while
//! the LAPI fails), pushes the bans `run` hands it, and reports to `run`'s main loop,
//! which alone writes the kernel's tables.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

use super::{
    Credentials, MAX_BACKOFF, Settings,
    decisions::Stream,
    lapi::{BanAlert, Lapi},
};

/// What the task tells `run`.
#[derive(Debug)]
pub enum Msg {
    /// A pull's answer, received at `at_ns` (`CLOCK_MONOTONIC`).
    Pulled {
        startup: bool,
        stream: Stream,
        at_ns: u64,
        /// How long the request and the parse took.
        took: Duration,
    },
    /// A pull failed; the next attempt comes after `retry_in`.
    PullFailed {
        error: String,
        failures: u32,
        retry_in: Duration,
    },
    Pushed {
        n: usize,
    },
    PushFailed {
        error: String,
        pending: usize,
    },
}

/// The wait after `failures` failed attempts in a row: the interval, doubled per
/// failure, at most [`MAX_BACKOFF`].
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// Run `f` on the link's client on tokio's blocking pool (its calls block); `None` if it
/// panicked (the link is over then).
async fn blocking<T: Send + 'static>(
    mut lapi: Lapi,
    f: impl FnOnce(&mut Lapi) -> T + Send + 'static,
) -> Option<(Lapi, T)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut lapi);
        (lapi, r)
    })
    .await
    .ok()
}

/// Bans waiting to be pushed while the LAPI fails, at most (the oldest go first).
const MAX_PENDING: usize = 10_000;

pub async fn run(
    settings: Settings,
    key: Option<String>,
    creds: Option<Credentials>,
    tx: mpsc::Sender<Msg>,
    mut bans: mpsc::Receiver<BanAlert>,
) {
    let pull = key.is_some();
    let mut lapi = match Lapi::new(&settings.url, key, creds) {
        Ok(l) => l,
        Err(e) => {
            let _ = tx
                .send(Msg::PullFailed {
                    error: format!("{e:#}"),
                    failures: 1,
                    retry_in: Duration::MAX,
                })
                .await;
            return;
        }
    };
    let mut startup = true;
    let mut failures = 0u32;
    let mut next_pull = Instant::now();
    let mut pending: Vec<BanAlert> = Vec::new();
    let mut push_failures = 0u32;
    let mut next_push = Instant::now();
    let mut bans_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_pull), if pull => {
                let started = std::time::Instant::now();
                let (back, pulled) = match blocking(lapi, move |l| l.pull(startup)).await {
                    Some(x) => x,
                    None => return,
                };
                lapi = back;
                let msg = match pulled {
                    Ok(stream) => {
                        let msg = Msg::Pulled {
                            startup,
                            stream,
                            at_ns: crate::clock::monotonic_ns(),
                            took: started.elapsed(),
                        };
                        failures = 0;
                        startup = false;
                        next_pull = Instant::now() + settings.interval;
                        msg
                    }
                    Err(e) => {
                        failures += 1;
                        // What changed meanwhile is unknown: the next success pulls
                        // everything again.
                        startup = true;
                        let retry_in = backoff(settings.interval, failures);
                        next_pull = Instant::now() + retry_in;
                        Msg::PullFailed { error: format!("{e:#}"), failures, retry_in }
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            b = bans.recv(), if bans_open => match b {
                Some(b) => {
                    pending.push(b);
                    while let Ok(b) = bans.try_recv() {
                        pending.push(b);
                    }
                    if pending.len() > MAX_PENDING {
                        let extra = pending.len() - MAX_PENDING;
                        pending.drain(..extra);
                    }
                }
                None => bans_open = false,
            },
            _ = tokio::time::sleep_until(next_push), if !pending.is_empty() => {
                let batch = pending.clone();
                let (back, pushed) = match blocking(lapi, move |l| l.push(&batch)).await {
                    Some(x) => x,
                    None => return,
                };
                lapi = back;
                let msg = match pushed {
                    Ok(()) => {
                        push_failures = 0;
                        let n = pending.len();
                        pending.clear();
                        Msg::Pushed { n }
                    }
                    Err(e) => {
                        push_failures += 1;
                        next_push = Instant::now() + backoff(settings.interval, push_failures);
                        Msg::PushFailed { error: format!("{e:#}"), pending: pending.len() }
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_five_minutes() {
        let i = Duration::from_secs(10);
        let got: Vec<u64> = (1..=7).map(|f| backoff(i, f).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(i, 1000), MAX_BACKOFF);
        // An interval longer than the cap is never shortened.
        assert_eq!(backoff(Duration::from_secs(600), 3).as_secs(), 600);
    }
}
