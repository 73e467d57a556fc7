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
    )?;

    // A build id for the embedded program (FNV-1a of the object): `--version` and `status`
    // show it, and `run` uses it to tell whether it is replacing a different build.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("synguard");
    let object = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    println!("cargo:rustc-env=SYNGUARD_EBPF_ID={h:016x}");
    Ok(())
}
