//! One file per command (`completions.rs` has `man` too; `run`'s own code is
//! `crate::daemon`). The state commands work on the state a `synguard run` pinned, from
//! any shell or network namespace, and change nothing when their input is bad.

pub mod allow;
pub mod analyze;
pub mod block;
pub mod completions;
pub mod config;
pub mod detach;
pub mod explain;
pub mod report;
pub mod run;
pub mod status;
pub mod top;

use std::path::{Path, PathBuf};

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::{
    bpf::Maps,
    clock,
    error::usage,
    pins::{self, DirLock},
    privs,
};

/// The pinned state, opened.
pub struct State {
    pub pin_dir: PathBuf,
    pub maps: Maps,
    /// Whether a `synguard run` holds the pin directory.
    pub daemon: bool,
}

impl State {
    /// Open the state pinned under `pin_dir`, or say how to get there.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        privs::require_for_state("this synguard command")?;
        if !pins::has_state(pin_dir) {
            let sys = Path::new("/sys/fs/bpf");
            let hint = if pin_dir.starts_with(sys) && !pins::is_bpffs(sys) {
                "; /sys/fs/bpf is not a BPF filesystem here (inside `ip netns exec`, /sys is \
                 remounted: give `run` and the other commands a --pin-dir on a BPF \
                 filesystem outside /sys)"
            } else {
                ""
            };
            return Err(usage(format!(
                "synguard is not running on this host: no state in {} (start it with \
                 `synguard run --iface IF`, or pass the --pin-dir it uses, also \
                 SYNGUARD_PIN_DIR){hint}",
                pin_dir.display()
            )));
        }
        let maps = Maps::from_pins(pin_dir)?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            maps,
            daemon: pins::daemon_running(pin_dir),
        })
    }

    /// Serialise writers (CLI and the daemon's sweep).
    pub fn write_lock(&self) -> anyhow::Result<DirLock> {
        pins::lock_writers(&self.pin_dir)
    }

    /// Say once, on stderr, that nobody is running the daemon, when it matters.
    pub fn note_no_daemon(&self) {
        if !self.daemon {
            eprintln!(
                "note: no `synguard run` is active on {}; the program left attached by the \
                 last one still enforces this state, but nothing logs or sweeps it until \
                 you start `synguard run` again",
                self.pin_dir.display()
            );
        }
    }

    /// Whether attack mode is on on any interface the program is attached to.
    pub fn attack_on(&self) -> anyhow::Result<bool> {
        for (ifindex, _, _) in crate::pins::pinned_links(&self.pin_dir) {
            let slot = synguard_common::capacity::stats_slot(ifindex);
            if self.maps.ifstate(slot)?.attack != 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A plain, aligned table (no borders), like `ip` and `ss` print.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    let text = t.to_string();
    // comfy-table pads every line; trailing blanks only get in the way of grep and diff.
    text.lines()
        .map(|l| l.trim_end().trim_start_matches(' ').to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A kernel time stamp for JSON: RFC 3339 UTC, or null for 0.
pub fn time_json(stamp_ns: u64) -> Option<String> {
    (stamp_ns != 0).then(|| clock::rfc3339(clock::to_wall(stamp_ns)))
}

/// A kernel time stamp for a table: `2026-11-24T19:07:27Z (in 9m59s)`, or `never`.
pub fn time_human(stamp_ns: u64, never: &str) -> String {
    if stamp_ns == 0 {
        never.to_string()
    } else {
        format!(
            "{} ({})",
            clock::rfc3339(clock::to_wall(stamp_ns)),
            clock::relative(stamp_ns)
        )
    }
}
