//! Version strings.

/// `synguard --version`: the package version and the embedded eBPF program's build id.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (eBPF program ",
    env!("SYNGUARD_EBPF_ID"),
    ")"
);

/// A short identifier of the embedded program (FNV-1a of the object, from `build.rs`),
/// shown by `status` and `--version`.
pub const BUILD_ID: &str = env!("SYNGUARD_EBPF_ID");
