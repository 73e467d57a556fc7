//! `cargo xtask`: the project's operations. Each command first installs what it needs
//! (idempotently, saying so; its Debian packages are listed in `packages.rs`), then does
//! its job with only those packages' programs on its children's PATH (`guard.rs`).
//!
//! - `build`: the `synguard` binary with its eBPF program embedded;
//! - `run -- ARGS`: build and run `synguard run ARGS` (as root);
//! - `test`: format, lints (host and eBPF), and every test, in the real kernel and, through
//!   the kernel matrix, in the kernels servers run;
//! - `kmatrix`: the kernel matrix alone (`kmatrix.rs`): Debian's and Ubuntu's kernels
//!   booted in qemu, the kernel tests run inside each;
//! - `bench`: the program's per-packet cost next to no-op XDP programs and xdp-filter, as
//!   ratios; the cost as its tables grow; survival under floods in the lab. Writes
//!   `target/bench/summary.md`, `summary.json` and `per-verdict.svg`.
//! - `dist`: the Debian package (`target/dist/synguard_VERSION_amd64.deb`).

mod bootstrap;
mod dist;
mod guard;
mod kmatrix;
mod packages;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "synguard's build, test and lab tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain if needed and build `synguard` (one binary).
    Build {
        /// Release build.
        #[arg(long)]
        release: bool,
    },
    /// Build and run `synguard run` with these arguments (needs root).
    ///
    /// Example: cargo xtask run -- --iface eth0
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what the tests need, then run formatting, lints and every test (needs root).
    Test,
    /// Replay SYN floods against a real web server in network namespaces, with and
    /// without synguard, and print what the employees saw (needs root).
    ///
    /// Example: cargo xtask lab --scenario single-source --duration 5
    Lab {
        /// Arguments for the lab (see `cargo xtask lab -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package: target/dist/synguard_VERSION_amd64.deb.
    Dist,
    /// Boot the kernels servers run (Debian's and Ubuntu's packages) in qemu and run the
    /// kernel tests in each; part of `test` (needs root).
    ///
    /// Example: cargo xtask kmatrix --only debian12
    Kmatrix {
        /// Only these kernels (by name: ubuntu22.04, debian12, debian13, debian11).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Measure the program's per-packet cost in the kernel (ratios to no-op programs and
    /// xdp-filter), its cost as the tables grow, and survival under floods in the lab;
    /// writes target/bench/summary.md, summary.json and per-verdict.svg (needs root).
    Bench {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Fewer, shorter rounds (used by `cargo xtask test` so the bench cannot rot).
        #[arg(long)]
        quick: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn work_dir() -> PathBuf {
    root().join("target").join("xtask")
}

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args).current_dir(root());
    c
}

/// The command's guard, once its packages are installed (see `guard`).
static GUARD: OnceLock<(packages::Cmd, guard::Guard)> = OnceLock::new();

/// Install what `cmd` needs (its Debian packages, then the eBPF toolchain, whose
/// bpf-linker is built with `cc`), then put its children under the guard.
fn prepare(cmd: packages::Cmd) -> anyhow::Result<()> {
    let pkgs = packages::of(cmd);
    bootstrap::packages(&pkgs).with_context(|| {
        format!(
            "installing the `{}` list of xtask/src/packages.rs",
            cmd.name()
        )
    })?;
    bootstrap::toolchain(&work_dir())?;
    let dir = work_dir().join("guard").join(cmd.name()).join("bin");
    let guard = guard::Guard::build(&pkgs, &dir, &bootstrap::cargo_bin(""))
        .context("making the guard's PATH")?;
    bootstrap::say(&format!(
        "guard: children's PATH: {} ({} programs of {} packages), then cargo's bin",
        dir.display(),
        guard.programs.len(),
        guard.packages
    ));
    let _ = GUARD.set((cmd, guard));
    Ok(())
}

/// `cmd` with PATH limited by the guard, if one is in force.
fn guarded(cmd: &mut Command) -> &mut Command {
    match GUARD.get() {
        Some((_, guard)) => guard.apply(cmd),
        None => cmd,
    }
}

/// Where the program `name` is, as a guarded child would find it.
fn program_path(name: &str) -> Option<PathBuf> {
    let path = guarded(&mut Command::new(name))
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .and_then(|(_, v)| v.map(|v| v.to_os_string()))
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run `cmd` under the guard; if it fails, say that the guard was in force and how a
/// missing program is added.
fn run_guarded(cmd: &mut Command) -> anyhow::Result<()> {
    let result = bootstrap::run(guarded(cmd));
    if result.is_err()
        && let Some((task, guard)) = GUARD.get()
    {
        bootstrap::say(&format!(
            "hint: PATH was {} and cargo's bin: a \"No such file or directory\" for a \
             program means its Debian package must be added to the `{}` list in \
             xtask/src/packages.rs",
            guard.dir.display(),
            task.name()
        ));
    }
    result
}

fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: == {name}");
    let start = Instant::now();
    run_guarded(cmd).with_context(|| format!("step failed: {name}"))?;
    eprintln!(
        "xtask: == {name}: ok ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !bootstrap::is_root() {
        bail!(
            "{what} loads XDP programs into the kernel and must run as root (sudo -E cargo xtask ...)"
        );
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "-p", "synguard"];
    if release {
        args.push("--release");
    }
    step(
        "build synguard (with the eBPF program embedded)",
        &mut cargo(&args),
    )?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("synguard"))
}

/// Build `synguard` and the tool `bin` of the tests crate in release mode; the command
/// that runs the tool, with `SYNGUARD_BIN` naming that `synguard`.
fn release_tool(what: &str, bin: &str) -> anyhow::Result<Command> {
    step(
        &format!("build synguard and the {what} (release)"),
        &mut cargo(&[
            "build",
            "--release",
            "-p",
            "synguard",
            "-p",
            "synguard-tests",
            "--bin",
            "synguard",
            "--bin",
            bin,
        ]),
    )?;
    let release = root().join("target/release");
    let mut c = Command::new(release.join(bin));
    c.env("SYNGUARD_BIN", release.join("synguard"));
    Ok(c)
}

fn test() -> anyhow::Result<()> {
    let start = Instant::now();
    need_root("cargo xtask test")?;
    prepare(packages::Cmd::Test)?;
    step(
        "format (cargo +nightly fmt --check)",
        &mut cargo(&["+nightly", "fmt", "--all", "--", "--check"]),
    )?;
    step(
        "clippy, userspace",
        &mut cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "synguard-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "clippy, eBPF program",
        &mut cargo(&[
            "+nightly",
            "clippy",
            "-p",
            "synguard-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The tests run the release binary: what ships, and what the lab runs. (A release-only
    // miscompilation once printed every source as 0.0.0.0/0; see `net::v4_net`.)
    let release_bin = build(true)?;
    let bin = release_bin.to_string_lossy().into_owned();
    let with_bin = |mut c: Command| {
        c.env("SYNGUARD_BIN", &bin);
        c
    };
    step(
        "unit tests (host)",
        &mut cargo(&[
            "test",
            "--workspace",
            "--exclude",
            "synguard-ebpf",
            "--lib",
            "--bins",
        ]),
    )?;
    step(
        "synguard analyze on recorded and damaged captures",
        &mut with_bin(cargo(&[
            "test",
            "-p",
            "synguard-tests",
            "--test",
            "analyze",
        ])),
    )?;
    // The Debian package: built from the release binary, then checked and installed.
    let deb = dist::dist(&release_bin)?;
    step(
        "the Debian package: contents, lintian, the unit, install and purge in a Debian root",
        cargo(&["test", "-p", "synguard-tests", "--test", "dist"]).env("SYNGUARD_DEB", &deb),
    )?;
    step(
        "kernel tests: the program under BPF_PROG_TEST_RUN",
        &mut with_bin(cargo(&[
            "test",
            "-p",
            "synguard-tests",
            "--test",
            "testrun",
        ])),
    )?;
    step(
        "kernel tests: attack mode and SYN cookies",
        &mut with_bin(cargo(&[
            "test",
            "-p",
            "synguard-tests",
            "--test",
            "cookies",
        ])),
    )?;
    // Floods use all cores: one test at a time so each measures what it claims.
    for (name, test) in [
        (
            "end to end on veth: a ban and a cookie handshake (the kernel matrix's check)",
            "e2e_veth",
        ),
        ("end-to-end flood tests in network namespaces", "e2e_flood"),
        (
            "forged SYNs never cut off their victim; a real flooder is still banned",
            "e2e_forged",
        ),
        ("the command line against a running daemon", "cli"),
        (
            "upgrades: pins of older and newer layouts, run and detach",
            "upgrade",
        ),
        (
            "attack mode end to end: cookies, forged floods, tcp_syncookies",
            "e2e_cookies",
        ),
        (
            "a cookie connection's TCP options and speed over a 50 ms round trip",
            "e2e_options",
        ),
        (
            "a fleet through CrowdSec's Local API: decisions pulled, bans pushed",
            "crowdsec",
        ),
        ("a short lab run: the founding incident, replayed", "lab"),
    ] {
        step(
            name,
            &mut with_bin(cargo(&[
                "test",
                "-p",
                "synguard-tests",
                "--test",
                test,
                "--",
                "--test-threads=1",
            ])),
        )?;
    }
    step(
        "benchmark, quick mode",
        &mut with_bin(cargo(&[
            "run",
            "--release",
            "-q",
            "-p",
            "synguard-tests",
            "--bin",
            "sg-bench",
            "--",
            "--quick",
        ])),
    )?;
    kmatrix(&release_bin, &[])?;
    eprintln!(
        "xtask: all tests passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The kernel matrix (see `kmatrix`), as one step.
fn kmatrix(bin: &Path, only: &[String]) -> anyhow::Result<()> {
    eprintln!("xtask: == the kernel matrix: the kernel tests in the kernels servers run (qemu)");
    let start = Instant::now();
    let outcomes = kmatrix::run(bin, only)?;
    eprintln!(
        "xtask: == the kernel matrix: ok, {} kernels ({:.1} s)",
        outcomes.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Build { release } => {
            prepare(packages::Cmd::Build)?;
            let bin = build(release)?;
            eprintln!("xtask: built {}", bin.display());
            Ok(())
        }
        Task::Run { args } => {
            need_root("cargo xtask run")?;
            prepare(packages::Cmd::Run)?;
            let bin = build(true)?;
            let mut c = Command::new(bin);
            c.arg("run").args(args);
            // The daemon runs in the caller's environment: it is in use, not under test.
            bootstrap::run(&mut c)
        }
        Task::Test => test(),
        Task::Dist => {
            prepare(packages::Cmd::Dist)?;
            let bin = build(true)?;
            let deb = dist::dist(&bin)?;
            eprintln!("xtask: built {}", deb.display());
            Ok(())
        }
        Task::Kmatrix { only } => {
            need_root("cargo xtask kmatrix")?;
            prepare(packages::Cmd::Kmatrix)?;
            let bin = build(true)?;
            kmatrix(&bin, &only)
        }
        Task::Lab { args } => {
            need_root("cargo xtask lab")?;
            prepare(packages::Cmd::Lab)?;
            let mut c = release_tool("lab", "sg-lab")?;
            c.args(args);
            eprintln!("xtask: == lab");
            run_guarded(&mut c)
        }
        Task::Bench { json, quick } => {
            need_root("cargo xtask bench")?;
            prepare(packages::Cmd::Bench)?;
            let mut c = release_tool("bench", "sg-bench")?;
            if json {
                c.arg("--json");
            }
            if quick {
                c.arg("--quick");
            }
            eprintln!("xtask: == benchmark");
            run_guarded(&mut c)
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every integration test file of the tests crate is run by `cargo xtask test` (a file
    /// left out of its list would pass CI without ever running).
    #[test]
    fn the_test_command_runs_every_test_file() {
        let source = include_str!("main.rs");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("tests/tests") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let stem = path
                    .file_stem()
                    .expect("stem")
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    source.contains(&format!("\"{stem}\"")),
                    "tests/tests/{stem}.rs is not run by `cargo xtask test`"
                );
                seen += 1;
            }
        }
        assert!(seen >= 10, "{seen} test files");
    }
}
