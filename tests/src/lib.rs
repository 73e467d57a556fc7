//! Test and lab support for synguard: crafted packets, the real program under `TestRun`,
//! network namespaces with RAII guards, real TCP traffic, and the `synguard` binary.
pub mod baseline;
pub mod delay;
pub mod flood;
pub mod lab;
pub mod lapi;
pub mod netns;
pub mod packet;
pub mod prog;
pub mod survival;
pub mod synth;
pub mod topo;
pub mod traffic;
pub mod xdpfilter;

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
