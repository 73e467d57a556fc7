//! Test and lab support for synguard, in three parts:
//!
//! - [`kit`]: what the integration tests (`tests/tests/*.rs`) use: network namespaces
//!   with RAII guards, crafted packets, the real program under `TestRun`, the test
//!   topology, real TCP traffic and the HTTP client, the `synguard` binary;
//! - [`lab`]: the founding incident replayed in network namespaces, what `cargo xtask lab`
//!   runs (`src/bin/sg-lab.rs`);
//! - [`bench`](mod@bench): what only `cargo xtask bench` runs (`src/bin/sg-bench.rs`) besides the
//!   kit and the lab.
//!
//! Each builds on the ones before it: the lab on the kit, the bench on both.
pub mod bench;
pub mod kit;
pub mod lab;
