#![no_std]
// This file exists so that `synguard` can name this crate as a build-dependency (the
// eBPF binary itself is built by aya-build in `synguard/build.rs`).
