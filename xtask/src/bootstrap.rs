//! Install what building and testing need, idempotently, saying what is done:
//! the nightly's `rust-src`, `bpf-linker` built against the nightly's own LLVM (the recipe
//! in shared/docs/toolchain.md), and Debian packages. A second run installs nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Run `cmd` to completion; its standard output, or an error with its status and
/// standard error.
pub fn output_bytes(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// [`output_bytes`] as text.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&output_bytes(cmd)?).into_owned())
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let s = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is needed to build the eBPF program (`rustup toolchain list` \
         should show it)",
    )?;
    Ok(PathBuf::from(s.trim()))
}

/// The nightly's `rust-src` (for `-Z build-std=core`).
fn rust_src(sysroot: &Path) -> anyhow::Result<()> {
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if core.exists() {
        say("rust-src for nightly: present");
        return Ok(());
    }
    say("installing rust-src for the nightly toolchain (rustup component add)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's LLVM shared library, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<(String, String)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest.split('.').next().unwrap_or_default().to_string();
            if !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()) {
                return Ok((name, major));
            }
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this nightly does not ship its LLVM library",
        lib.display()
    )
}

/// `name` in cargo's bin directory (rustup's proxies, bpf-linker); "" for the directory.
pub fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

/// `bpf-linker` at the pinned version, linked against the nightly's LLVM.
fn bpf_linker(sysroot: &Path, work: &Path) -> anyhow::Result<()> {
    let (llvm_lib, major) = nightly_llvm(sysroot)?;
    let bin = cargo_bin("bpf-linker");
    if bin.exists() {
        let version = Command::new(&bin)
            .arg("--version")
            .env("LD_LIBRARY_PATH", sysroot.join("lib"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if version.contains(BPF_LINKER_VERSION) {
            say(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
            return Ok(());
        }
        say(&format!(
            "bpf-linker is there but not {BPF_LINKER_VERSION} ({}): rebuilding it",
            version.trim()
        ));
    }
    // LLVM_PREFIX/lib must hold libLLVM.so and the versioned name, both pointing at the
    // nightly's own library.
    let prefix = work.join("llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let target = sysroot.join("lib").join(&llvm_lib);
    for name in ["libLLVM.so", llvm_lib.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} \
         ({llvm_lib}); about a minute"
    ));
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Debian packages, installed only if missing.
pub fn packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say(&format!("Debian packages present: {}", pkgs.join(" ")));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: {} (run \
             `sudo apt-get install {}` or run this command as root)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    if missing.contains(&"crowdsec") {
        decline_central_api()?;
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The `crowdsec` package registers the machine with CrowdSec's Central API when it is
/// installed, unless `/etc/crowdsec/online_api_credentials.yaml` exists beforehand (its
/// README.Debian): the tests run the Local API offline, so the file is made first, with a
/// comment saying why. An existing file is left as it is.
fn decline_central_api() -> anyhow::Result<()> {
    let path = std::path::Path::new("/etc/crowdsec/online_api_credentials.yaml");
    if path.exists() {
        return Ok(());
    }
    say(&format!(
        "declining crowdsec's registration to its Central API ({})",
        path.display()
    ));
    std::fs::create_dir_all("/etc/crowdsec")?;
    std::fs::write(
        path,
        "# No Central API: synguard's tests run CrowdSec's Local API offline \
         (see README.Debian).\n",
    )?;
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The toolchain for building the eBPF program.
pub fn toolchain(work: &Path) -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot, work)?;
    // Build scripts find bpf-linker on PATH.
    let bin_dir = cargo_bin("");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|p| p == bin_dir) {
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        paths.insert(0, bin_dir);
        // SAFETY: single-threaded at this point; only this process's environment changes.
        unsafe { std::env::set_var("PATH", std::env::join_paths(paths)?) };
    }
    Ok(())
}
