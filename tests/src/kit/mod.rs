//! The test kit: what the integration tests use, and what the lab and the bench build
//! on. A module belongs here when a test in `tests/tests/` uses it (directly, or through
//! another kit module).
//!
//! - [`netns`]: network namespaces, veth pairs, a private BPF filesystem, temporary
//!   directories and child processes, each removed by a guard on drop;
//! - [`packet`]: crafted frames for `TestRun`;
//! - [`prog`]: the real program loaded into the kernel and driven with `TestRun`;
//! - [`root`]: tests that need root skip without it, except in CI
//!   ([`require_root!`](crate::require_root));
//! - [`baseline`]: tiny XDP programs written here (no-ops, the bench's floors, the lab
//!   router's fast path), which tests attach to veth peers and check;
//! - [`topo`]: the test topology (server, employee, attacker) and `synguard` run in it,
//!   and what every topology here is made with besides [`netns`] (the lab's too);
//! - [`http`]: the one HTTP client ([`http::Get`]);
//! - [`traffic`]: real TCP traffic: a small web server, client loops, metrics scrapes;
//! - [`delay`]: a link with a long round trip;
//! - [`flood`]: the SYN flood generator (raw frames at a rate);
//! - [`synth`]: synthetic captures for `synguard analyze`;
//! - [`lapi`]: a real CrowdSec Local API;
//! - [`synguard_bin`]: the `synguard` binary under test.
pub mod baseline;
pub mod delay;
pub mod flood;
pub mod http;
pub mod lapi;
pub mod netns;
pub mod packet;
pub mod prog;
pub mod root;
pub mod synth;
pub mod topo;
pub mod traffic;

use std::path::PathBuf;

/// The `synguard` binary under test: `$SYNGUARD_BIN`, or the one cargo built next to
/// this test executable (`cargo xtask test` builds it first).
pub fn synguard_bin() -> PathBuf {
    let bin = synguard_bin_path();
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p synguard`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Where [`synguard_bin`] looks, whether or not the binary is there.
pub fn synguard_bin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SYNGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    dir.join("synguard")
}
