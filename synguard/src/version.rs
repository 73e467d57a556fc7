//! Version strings.

/// `synguard --version`: the package version and the embedded eBPF program's build id.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (eBPF program ",
    env!("SYNGUARD_EBPF_ID"),
    ")"
);
