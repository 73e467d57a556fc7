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

use std::io::Read;

use crate::{config::Settings, incident::Report};

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
