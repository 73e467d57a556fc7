//! `synguard analyze FILE`: SYN floods in a packet capture, found with the agent's own
//! rules and written up as the same incident report as `synguard report`.
//!
//! The capture is read once, as a stream ([`capture`]), each frame decoded to its TCP
//! segment ([`decode`]), and every segment fed to the [`engine`], which replays the agent
//! (token buckets, bans, attack mode, SYN cookies, with the capture's time stamps as its
//! clock) next to what the capture itself shows (handshakes, retransmissions, resets,
//! HTTP errors). Memory is bounded whatever the capture's size (see [`engine`]); the
//! report is built at the end ([`build`]).
//!
//! The settings are the agent's defaults, or the config keys given as flags
//! (`--syn-rate 100`...), so a capture can be replayed against the thresholds a server
//! would run with.
//!
//! **Input that cannot be read.** Nothing in it is a capture (empty, another format, a
//! file header cut short): an error and exit code 2, no report. A capture cut short or
//! corrupt after its header (a record cut in the middle, a pcapng block with a bad
//! length, garbage): the report of the packets before that point (saying where the
//! reading stopped in its warnings), then the same error on stderr and exit code 2, so a
//! script never takes a partial analysis for a whole one. Single packets whose headers a
//! snap length or damage cut short are skipped and counted, not an error.

mod build;
mod capture;
mod decode;
mod engine;

use std::{io::Read, path::Path};

use crate::{cli::ReportFormat, config::Settings, error::usage, incident::Report};

/// Analyse `file` (`-` for stdin) and print or write the report.
pub fn analyze(
    file: &Path,
    keys: &[(&'static str, String)],
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let mut settings = Settings::default();
    for (k, v) in keys {
        settings.set(k, v).map_err(|e| usage(e.to_string()))?;
    }
    let (report, stopped) = if file.as_os_str() == "-" {
        use std::io::IsTerminal as _;
        if std::io::stdin().is_terminal() {
            return Err(usage(
                "`-` reads the capture from stdin, which is a terminal: pipe one in (`tcpdump \
                 -w - ... | synguard analyze -`) or give a file",
            ));
        }
        analyze_reader(std::io::stdin(), "stdin", &settings)?
    } else {
        let name = file.display().to_string();
        if file.is_dir() {
            return Err(usage(format!("{name} is a directory: give a capture file")));
        }
        let f = std::fs::File::open(file).map_err(|e| usage(format!("cannot open {name}: {e}")))?;
        analyze_reader(f, &name, &settings)?
    };
    report.emit(format, output)?;
    match stopped {
        // The report is out; the exit code still says the input was not all readable.
        Some(why) => Err(usage(format!(
            "{why}. Only part of the capture was analysed: check how it was recorded or copied"
        ))),
        None => Ok(()),
    }
}

/// Analyse a capture read from `input` (`name` is how the report refers to it).
///
/// Errors only when nothing in the input is a capture (a usage error); a capture that is
/// cut short or corrupt gives the report of what could be read, with a warning in it,
/// and why the reading stopped early.
pub fn analyze_reader<R: Read + Send>(
    input: R,
    name: &str,
    settings: &Settings,
) -> anyhow::Result<(Report, Option<String>)> {
    let mut engine = engine::Engine::new(settings);
    let outcome = capture::read(input, name, |frame| {
        let now = engine.tick(frame.ts_ns);
        match decode::decode(frame.linktype, frame.data) {
            decode::Decoded::Tcp(seg) => engine.segment(now, &seg),
            decode::Decoded::Other => engine.c.other += 1,
            decode::Decoded::Truncated => engine.c.truncated += 1,
            decode::Decoded::Unsupported => engine.c.unsupported += 1,
        }
    })?;
    engine.finish();
    Ok((build::report(&engine, &outcome, name), outcome.stopped))
}
