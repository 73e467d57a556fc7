//! Builds `synguard-ebpf` for `bpfel-unknown-none` with the nightly toolchain (through
//! aya-build) and leaves the object in `OUT_DIR`, from where `src/bpf.rs` embeds it: the
//! installed `synguard` binary is a single file.
//!
//! Needs the nightly's `rust-src` and `bpf-linker`; `cargo xtask` installs both.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "synguard-ebpf")
        .ok_or_else(|| anyhow!("synguard-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the eBPF program failed; `cargo xtask build` installs the nightly's \
         rust-src and bpf-linker it needs",
    )
}
