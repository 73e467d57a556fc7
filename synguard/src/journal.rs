//! The event journal: what `run` saw and did, as JSON lines in the state directory
//! (default `/var/lib/synguard`), for `report` to turn into an incident report.
//!
//! Only the daemon writes it, never the packet path: bans and unbans, attack mode on and
//! off, config and list changes, interface events, and a rate sample every
//! [`SAMPLE_SECS`] seconds. It is bounded: when `journal.jsonl` passes [`ROTATE_BYTES`] it
//! becomes `journal.1.jsonl` (replacing the previous one), so at most twice that is kept.
//! It survives restarts: a new `run` appends.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/synguard";
pub const SAMPLE_SECS: u64 = 5;
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
const CURRENT: &str = "journal.jsonl";
const PREVIOUS: &str = "journal.1.jsonl";

/// A source's SYN rate in a sample.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopSource {
    pub source: String,
    /// SYNs per second (the rate window the kernel keeps for the source).
    pub syn_rate: u64,
    pub syns: u64,
}

/// A list entry that dropped packets in a sample.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopRule {
    pub prefix: String,
    /// `auto` (a ban) or `manual` (`block add`).
    pub kind: String,
    /// Packets it dropped over the sample interval.
    pub hits: u64,
}

/// One interface in a rate sample.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct IfaceSample {
    pub name: String,
    /// Counter increases over the sample interval, by counter name (zeros left out).
    pub counters: BTreeMap<String, u64>,
    pub attack: bool,
    /// The kernel's latest total SYN rate on the interface.
    pub syn_rate: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        version: String,
        interfaces: Vec<String>,
        config: BTreeMap<String, String>,
        adopted: bool,
    },
    Stop {
        reason: String,
        kept: bool,
    },
    Interface {
        name: String,
        what: String,
    },
    Ban {
        prefix: String,
        interface: String,
        syns: u64,
        syn_rate: u64,
        until: String,
    },
    Unban {
        prefix: String,
        /// `expired` or `removed`.
        why: String,
        kind: String,
        hits: u64,
    },
    /// A manual change to the lists seen by the daemon (added or removed entries).
    ListChange {
        list: String,
        prefix: String,
        change: String,
        comment: String,
    },
    /// A proven source's address was carried by SYNs over its limit: most likely forged;
    /// challenged with SYN cookies, not banned.
    Challenge {
        prefix: String,
        interface: String,
        syns: u64,
        syn_rate: u64,
        /// How it had proven it owns its address.
        proof: String,
    },
    AttackOn {
        interface: String,
        syn_rate: u64,
        /// Started by a proven source over its limit, not by the total rate.
        #[serde(default)]
        challenged: bool,
    },
    AttackOff {
        interface: String,
        peak_syn_rate: u64,
        lasted_secs: u64,
    },
    Config {
        key: String,
        old: String,
        new: String,
    },
    Purge {
        prefix: String,
        connections: u64,
    },
    /// The host's settings for SYN cookies answered from XDP (`tcp_syncookies`,
    /// `tcp_timestamps`) set (`on`: the SYN queues ran over in attack mode) or put back.
    Pressure {
        on: bool,
        why: String,
    },
    Sample {
        /// The interval the counters cover (the last one, at a stop, is shorter).
        secs: f64,
        interfaces: Vec<IfaceSample>,
        sources: u64,
        verified: u64,
        bans: u64,
        top: Vec<TopSource>,
        /// Sources in the table that are IPv6 prefixes.
        #[serde(default)]
        sources_v6: u64,
        /// The bans and blocks that dropped the most over the interval.
        #[serde(default)]
        top_rules: Vec<TopRule>,
    },
}

/// A journal line: a time stamp and an event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub t: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    pub fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.t).ok()
    }
}

/// The journal of one state directory, open for appending.
pub struct Journal {
    dir: PathBuf,
    file: File,
    size: u64,
}

fn open_current(dir: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(CURRENT))
        .with_context(|| format!("opening {}", dir.join(CURRENT).display()))
}

impl Journal {
    /// Open (creating the directory, readable by root only) for appending.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
        }
        let mut file = open_current(dir)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A crash mid-write leaves a torn last line: end it, so the next record stands on
        // a line of its own (`read` skips the torn one).
        if size > 0 && !ends_with_newline(&dir.join(CURRENT))? {
            file.write_all(b"\n")?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            size,
        })
    }

    /// Append an event now. Errors are reported, not fatal: protection does not depend on
    /// the journal.
    pub fn write(&mut self, event: Event) {
        if let Err(e) = self.try_write(SystemTime::now(), event) {
            log::warn!("writing the journal in {}: {e:#}", self.dir.display());
        }
    }

    pub fn try_write(&mut self, at: SystemTime, event: Event) -> anyhow::Result<()> {
        let rec = Record {
            t: humantime::format_rfc3339_millis(at).to_string(),
            event,
        };
        let mut line = serde_json::to_string(&rec)?;
        line.push('\n');
        if self.size + line.len() as u64 > ROTATE_BYTES {
            fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))
                .context("rotating the journal")?;
            self.file = open_current(&self.dir)?;
            self.size = 0;
        }
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }
}

fn ends_with_newline(path: &Path) -> anyhow::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// Every record of a state directory since `since` (older file first), skipping lines
/// that do not parse (a torn last line after a crash), and counting them.
pub fn read(dir: &Path, since: Option<SystemTime>) -> anyhow::Result<(Vec<Record>, usize)> {
    let mut out = Vec::new();
    let mut bad = 0;
    let mut found = false;
    for name in [PREVIOUS, CURRENT] {
        let path = dir.join(name);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(crate::error::usage(format!(
                    "the journal in {} is readable by root only: run `synguard report` with \
                     sudo",
                    dir.display()
                )));
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        found = true;
        for line in BufReader::new(f).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => {
                    if since.is_none_or(|s| r.time().is_some_and(|t| t >= s)) {
                        out.push(r);
                    }
                }
                Err(_) => bad += 1,
            }
        }
    }
    if !found {
        return Err(crate::error::usage(format!(
            "no journal in {} (it is written by `synguard run`; pass the --state-dir it uses)",
            dir.display()
        )));
    }
    Ok((out, bad))
}

/// Seconds to sleep before the next sample.
pub fn sample_interval() -> Duration {
    Duration::from_secs(SAMPLE_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "sgj-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn round_trip_and_since() {
        let dir = tmp();
        let mut j = Journal::open(&dir).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        j.try_write(
            t0,
            Event::AttackOn {
                interface: "eth0".into(),
                syn_rate: 5000,
                challenged: false,
            },
        )
        .unwrap();
        j.try_write(
            t0 + Duration::from_secs(60),
            Event::Ban {
                prefix: "203.0.113.66/32".into(),
                interface: "eth0".into(),
                syns: 101,
                syn_rate: 101_000,
                until: "2023-11-14T22:23:20Z".into(),
            },
        )
        .unwrap();
        drop(j);
        // A torn line at the end (a crash mid-write) is skipped and counted.
        fs::OpenOptions::new()
            .append(true)
            .open(dir.join(CURRENT))
            .unwrap()
            .write_all(b"{\"t\":\"2023-")
            .unwrap();
        let (all, bad) = read(&dir, None).unwrap();
        assert_eq!((all.len(), bad), (2, 1));
        assert!(matches!(all[1].event, Event::Ban { syns: 101, .. }));
        let (late, _) = read(&dir, Some(t0 + Duration::from_secs(30))).unwrap();
        assert_eq!(late.len(), 1);
        // Reopening appends.
        let mut j = Journal::open(&dir).unwrap();
        j.write(Event::Stop {
            reason: "SIGTERM".into(),
            kept: false,
        });
        assert_eq!(read(&dir, None).unwrap().0.len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_bounds_the_size() {
        let dir = tmp();
        let mut j = Journal::open(&dir).unwrap();
        j.size = ROTATE_BYTES - 10;
        j.write(Event::Stop {
            reason: "x".into(),
            kept: false,
        });
        assert!(dir.join(PREVIOUS).exists());
        assert!(fs::metadata(dir.join(CURRENT)).unwrap().len() < 200);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_journal_is_a_usage_error() {
        let e = read(Path::new("/nonexistent/synguard"), None).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_USAGE);
        assert!(e.to_string().contains("--state-dir"));
    }
}
