//! The kernel matrix: boot the kernels servers actually run, under qemu, and run synguard's
//! kernel tests inside each (`cargo xtask kmatrix`; part of `cargo xtask test`).
//!
//! For every kernel in [`KERNELS`]: its Debian package, downloaded with apt from the
//! distribution's own suites (a private apt configuration under `target/kmatrix/apt`, so
//! the host's sources are never touched), or, for the 5.15 floor, Ubuntu 22.04's release
//! kernel pinned by hash; cached under `target/kmatrix/debs`. The guest is the kernel and
//! a small initramfs: the project's own init (`tests/src/bin/sg-kinit.rs`), the `synguard`
//! binary, the kernel-test binaries (`testrun`, `cookies`, `e2e_veth`), `ip`, busybox for
//! the few shell tools the tests call, the kernel's `veth` module, and a plan. The guest
//! reports on its first serial port (`SGKM ...` lines); each program's whole output goes to
//! the second, kept as `target/kmatrix/NAME.log`.
//!
//! A kernel passes when every test binary passes every test the host lists for it; a
//! kernel expected to be too old passes when `synguard run` refuses it with the message
//! the README shows. The host's own kernel is covered by the rest of `cargo xtask test`.
//!
//! qemu uses KVM where it works and TCG (emulation, several times slower) otherwise, and
//! says which. On the machines this project is developed on, `/dev/kvm` is PVM (the
//! `kvm_pvm` module), which boots only kernels built as PVM guests, not Debian's: TCG.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    bootstrap::{self, output},
    cargo, root, step,
};

/// What a kernel of the matrix is expected to do with synguard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    /// Loads, attaches, and passes every kernel test.
    Supported,
    /// Refused at start with a clear message.
    TooOld,
}

/// Where a kernel package comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// The newest `linux-image-amd64` of a Debian release across its suites (the release,
    /// `-updates` and `-security`): what an up-to-date server of that release runs.
    Debian {
        codename: &'static str,
        security: &'static str,
    },
    /// Packages pinned by URL and SHA-256 (the image, and the modules when they are in a
    /// package of their own).
    Pinned {
        image: (&'static str, &'static str),
        modules: Option<(&'static str, &'static str)>,
    },
}

pub struct Kernel {
    /// Short name, for `--only` and the file names under `target/kmatrix`.
    pub name: &'static str,
    /// The distribution and release, for the tables.
    pub distro: &'static str,
    /// The kernel series it must boot (`uname -r` starts with it): the matrix tests the
    /// verifier it means to.
    pub series: &'static str,
    pub source: Source,
    pub expect: Expect,
}

const UBUNTU: &str = "http://archive.ubuntu.com/ubuntu/pool/main/l";

/// The kernels the matrix boots: the floor, the kernels Debian servers run, and one below
/// the floor that must be refused clearly.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "ubuntu22.04",
        series: "5.15.",
        distro: "Ubuntu 22.04 (release kernel)",
        // The kernel Ubuntu 22.04 shipped with (its release pocket never changes), as the
        // 5.15 floor. No Debian release has a 5.15.
        source: Source::Pinned {
            image: (
                "linux-signed/linux-image-5.15.0-25-generic_5.15.0-25.25_amd64.deb",
                "ad56f8c442a54d4f5ff2dff010d00321d53e32b543f3a92f3ba4e042d20a71da",
            ),
            modules: Some((
                "linux/linux-modules-5.15.0-25-generic_5.15.0-25.25_amd64.deb",
                "d0ba4087d9e1d497925b3481d3531fba6c2a852855f8019d73b0b1385aa4da1f",
            )),
        },
        expect: Expect::Supported,
    },
    Kernel {
        name: "debian12",
        series: "6.1.",
        distro: "Debian 12 (bookworm)",
        source: Source::Debian {
            codename: "bookworm",
            security: "bookworm-security",
        },
        expect: Expect::Supported,
    },
    Kernel {
        name: "debian13",
        series: "6.12.",
        distro: "Debian 13 (trixie)",
        source: Source::Debian {
            codename: "trixie",
            security: "trixie-security",
        },
        expect: Expect::Supported,
    },
    Kernel {
        name: "debian11",
        series: "5.10.",
        distro: "Debian 11 (bullseye)",
        source: Source::Debian {
            codename: "bullseye",
            security: "bullseye-security",
        },
        expect: Expect::TooOld,
    },
];

/// The kernel-test binaries of `synguard-tests` run in every supported kernel.
const TESTS: &[&str] = &["testrun", "cookies", "e2e_veth"];

/// What `synguard run` must say on a kernel below the floor (see `synguard::kernel`).
const TOO_OLD_MESSAGE: &str = "synguard needs Linux 5.15 or later";

/// Busybox applets the tests call (`ip netns exec NS sysctl ...`, `mount -t bpf`, `cat`).
const APPLETS: &[&str] = &["sh", "cat", "mount", "umount", "sysctl", "sleep", "timeout"];

/// How long one guest may run before it is killed (TCG; KVM takes a fraction).
const GUEST_TIMEOUT: Duration = Duration::from_secs(1500);
/// With KVM, the guest must print its first line within this long, or TCG is used.
const KVM_FIRST_LINE: Duration = Duration::from_secs(60);

/// A command for `program` under the guard (see `guard`): the matrix runs only what the
/// `kmatrix` package list installs.
fn cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    crate::guarded(&mut c);
    c
}

fn dir() -> PathBuf {
    root().join("target").join("kmatrix")
}

fn say(msg: &str) {
    eprintln!("xtask: kmatrix: {msg}");
}

// ---------------------------------------------------------------------------------------
// Kernel packages

/// A private apt configuration for one Debian release: its own sources, lists, cache and
/// (empty) status, and none of the host's `apt.conf.d` (whose update hooks are for the
/// host's package database), so the host's apt state is neither used nor changed.
struct Apt {
    conf: PathBuf,
}

impl Apt {
    fn new(codename: &str, security: &str) -> anyhow::Result<Self> {
        let base = dir().join("apt").join(codename);
        for d in ["lists/partial", "cache/archives/partial", "etc/apt.conf.d"] {
            fs::create_dir_all(base.join(d))?;
        }
        let p = |s: &str| base.join(s).to_string_lossy().into_owned();
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        fs::write(
            p("etc/sources.list"),
            format!(
                "deb [signed-by={keyring}] http://deb.debian.org/debian {codename} main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian {codename}-updates main\n\
                 deb [signed-by={keyring}] http://deb.debian.org/debian-security {security} main\n"
            ),
        )?;
        if !base.join("etc/status").exists() {
            fs::write(p("etc/status"), "")?;
        }
        // Read through APT_CONFIG, before apt reads its parts directory: so that one is
        // ours (empty), not /etc/apt/apt.conf.d.
        let conf = base.join("etc/apt.conf");
        fs::write(
            &conf,
            format!(
                "Dir::Etc::Parts \"{}\";\n\
                 Dir::Etc::Main \"{}\";\n\
                 Dir::Etc::SourceList \"{}\";\n\
                 Dir::Etc::SourceParts \"{}\";\n\
                 Dir::State::Lists \"{}\";\n\
                 Dir::State::Status \"{}\";\n\
                 Dir::Cache \"{}\";\n\
                 APT::Sandbox::User \"root\";\n\
                 Acquire::Languages \"none\";\n",
                p("etc/apt.conf.d"),
                p("etc/apt.conf.main"),
                p("etc/sources.list"),
                p("etc/apt.conf.d"),
                p("lists"),
                p("etc/status"),
                p("cache"),
            ),
        )?;
        Ok(Self { conf })
    }

    fn apt(&self, tool: &str) -> Command {
        let mut c = cmd(tool);
        c.env("APT_CONFIG", &self.conf).arg("-qq");
        c
    }

    /// The newest `linux-image-amd64` of the release names the real image package.
    fn image_package(&self) -> anyhow::Result<String> {
        bootstrap::run(self.apt("apt-get").arg("update"))
            .context("updating the package lists of a Debian release (deb.debian.org)")?;
        let text = output(self.apt("apt-cache").args(["show", "linux-image-amd64"]))?;
        // `apt-cache show` lists every version; the candidate is the newest.
        let mut best: Option<(String, String)> = None;
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
                continue;
            };
            let Some(image) = depends
                .split(',')
                .map(|d| d.split_whitespace().next().unwrap_or_default())
                .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
            else {
                continue;
            };
            let newer = match &best {
                None => true,
                Some((v, _)) => cmd("dpkg")
                    .args(["--compare-versions", &version, "gt", v])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false),
            };
            if newer {
                best = Some((version, image.to_string()));
            }
        }
        best.map(|(_, image)| image)
            .ok_or_else(|| anyhow!("no linux-image-amd64 with an image dependency in {text}"))
    }

    /// Download a package into `dest` (cached: an existing file is kept).
    fn download(&self, package: &str, dest: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dest)?;
        let prefix = format!("{package}_");
        let find = || -> anyhow::Result<Option<PathBuf>> {
            for e in fs::read_dir(dest)? {
                let p = e?.path();
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")) {
                    return Ok(Some(p));
                }
            }
            Ok(None)
        };
        if let Some(p) = find()? {
            return Ok(p);
        }
        say(&format!("downloading {package}"));
        bootstrap::run(
            self.apt("apt-get")
                .args(["download", package])
                .current_dir(dest),
        )?;
        find()?.ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))
    }
}

/// Download a pinned file into `dest` (cached), checking its SHA-256.
fn download_pinned(path: &str, sha256: &str, dest: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dest)?;
    let name = path.rsplit('/').next().unwrap_or(path);
    let file = dest.join(name);
    if !file.exists() {
        say(&format!("downloading {name}"));
        let tmp = dest.join(format!("{name}.part"));
        bootstrap::run(
            cmd("/usr/lib/apt/apt-helper")
                .args(["download-file", &format!("{UBUNTU}/{path}")])
                .arg(&tmp)
                .arg(format!("SHA256:{sha256}")),
        )
        .with_context(|| format!("downloading {UBUNTU}/{path}"))?;
        fs::rename(&tmp, &file)?;
    }
    let sum = output(cmd("sha256sum").arg(&file))?;
    if sum.split_whitespace().next() != Some(sha256) {
        let _ = fs::remove_file(&file);
        bail!(
            "{} does not have the pinned SHA-256 {sha256}",
            file.display()
        );
    }
    Ok(file)
}

/// A kernel ready to boot: its image and its (uncompressed) veth module.
struct Prepared {
    vmlinuz: PathBuf,
    veth: PathBuf,
    /// The package version, e.g. `linux-image-6.1.0-57-amd64 (6.1.192-3)`.
    package: String,
}

/// Extract the members matching `patterns` of a package's data into `into`.
fn extract(deb: &Path, into: &Path, patterns: &[&str]) -> anyhow::Result<()> {
    fs::create_dir_all(into)?;
    let mut dpkg = cmd("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("dpkg-deb --fsys-tarfile")?;
    let stdout = dpkg.stdout.take().context("dpkg-deb's output")?;
    let tar = cmd("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(into)
        .args(patterns)
        .stdin(stdout)
        .status()
        .context("tar")?;
    let dpkg = dpkg.wait()?;
    if !tar.success() || !dpkg.success() {
        bail!("extracting {patterns:?} from {} failed", deb.display());
    }
    Ok(())
}

fn find_file(dir: &Path, pred: &dyn Fn(&str) -> bool) -> anyhow::Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, pred)? {
                return Ok(Some(f));
            }
        } else if p.file_name().is_some_and(|n| pred(&n.to_string_lossy())) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn prepare(k: &Kernel) -> anyhow::Result<Prepared> {
    let debs = dir().join("debs");
    let (image, modules) = match k.source {
        Source::Debian { codename, security } => {
            let apt = Apt::new(codename, security)?;
            let package = apt.image_package()?;
            let deb = apt.download(&package, &debs)?;
            (deb.clone(), deb)
        }
        Source::Pinned { image, modules } => {
            let img = download_pinned(image.0, image.1, &debs)?;
            let m = match modules {
                Some((p, s)) => download_pinned(p, s, &debs)?,
                None => img.clone(),
            };
            (img, m)
        }
    };
    let package = output(
        cmd("dpkg-deb")
            .args(["--show", "--showformat=${Package} (${Version})"])
            .arg(&image),
    )?;
    let into = dir().join("kernels").join(k.name);
    let stamp = into.join(".from");
    let from = format!("{}\n{}\n", image.display(), modules.display());
    if fs::read_to_string(&stamp).ok().as_deref() != Some(from.as_str()) {
        let _ = fs::remove_dir_all(&into);
        extract(&image, &into, &["./boot/vmlinuz-*"])?;
        extract(&modules, &into, &["*/kernel/drivers/net/veth.ko*"])?;
        fs::write(&stamp, &from)?;
    }
    let vmlinuz = find_file(&into.join("boot"), &|n| n.starts_with("vmlinuz-"))?
        .with_context(|| format!("no vmlinuz in {}", image.display()))?;
    let ko = find_file(&into, &|n| n.starts_with("veth.ko"))?
        .with_context(|| format!("no veth module in {}", modules.display()))?;
    let veth = into.join("veth.ko");
    if !veth.exists() {
        // Debian compresses modules with xz since 6.x; the guest loads them uncompressed
        // (finit_module decompresses only on kernels built to).
        let name = ko.to_string_lossy();
        if name.ends_with(".xz") {
            let out = cmd("xz")
                .arg("-dc")
                .arg(&ko)
                .output()
                .with_context(|| format!("xz -dc {name} (package xz-utils)"))?;
            if !out.status.success() {
                bail!("xz -dc {name} failed");
            }
            fs::write(&veth, out.stdout)?;
        } else if name.ends_with(".ko") {
            fs::copy(&ko, &veth)?;
        } else {
            bail!("{name}: a module compression the kernel matrix does not know");
        }
    }
    Ok(Prepared {
        vmlinuz,
        veth,
        package,
    })
}

// ---------------------------------------------------------------------------------------
// The guest's initramfs

/// A cpio (newc) archive, the format of an initramfs, written as files are added.
struct Initramfs {
    out: fs::File,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Initramfs {
    fn create(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            out: fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
            ino: 1,
            dirs: BTreeSet::new(),
        })
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.ino += 1;
        let len = u32::try_from(data.len()).context("file too large for cpio")?;
        let mut w = cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(1)
            .write(&mut self.out, len);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    /// A directory and its parents (once each).
    fn dir(&mut self, name: &str) -> anyhow::Result<()> {
        let mut path = String::new();
        for part in name.trim_matches('/').split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            if self.dirs.insert(path.clone()) {
                let p = path.clone();
                self.entry(&p, S_IFDIR | 0o755, &[])?;
            }
        }
        Ok(())
    }

    fn parent(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn file(&mut self, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        self.parent(name)?;
        self.entry(name, S_IFREG | mode, data)
    }

    fn host_file(&mut self, name: &str, from: &Path) -> anyhow::Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let mode = fs::metadata(from)?.permissions().mode() & 0o7777;
        self.file(name, &data, mode)
    }

    fn symlink(&mut self, name: &str, target: &str) -> anyhow::Result<()> {
        self.parent(name)?;
        self.entry(name, S_IFLNK | 0o777, target.as_bytes())
    }

    fn finish(self) -> anyhow::Result<()> {
        cpio::newc::trailer(self.out)?;
        Ok(())
    }
}

/// The shared libraries a dynamic executable loads (absolute paths, from `ldd`).
fn libraries(bin: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let text = output(cmd("ldd").arg(bin))?;
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The programs of the guest: (name in `/km/bin`, host path, strip debug info).
struct Programs {
    list: Vec<(String, PathBuf)>,
}

/// Build the test binaries and the guest's init; the programs to pack.
fn programs(synguard: &Path) -> anyhow::Result<Programs> {
    step(
        "kernel matrix: build the guest's init (release)",
        &mut cargo(&[
            "build",
            "--release",
            "-p",
            "synguard-tests",
            "--bin",
            "sg-kinit",
        ]),
    )?;
    let mut args = vec!["test", "-p", "synguard-tests", "--no-run"];
    for t in TESTS {
        args.extend(["--test", t]);
    }
    args.push("--message-format=json");
    let out = cargo(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("building the kernel tests")?;
    if !out.status.success() {
        bail!("building the kernel tests failed");
    }
    let mut list = vec![
        (
            "sg-kinit".to_string(),
            root().join("target/release/sg-kinit"),
        ),
        ("synguard".to_string(), synguard.to_path_buf()),
    ];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && TESTS.contains(&name)
            && let Some(exe) = msg["executable"].as_str()
        {
            list.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    for t in TESTS {
        if !list.iter().any(|(n, _)| n == t) {
            bail!("cargo did not report the test binary {t}");
        }
    }
    let ip = crate::program_path("ip").context("iproute2's ip (package iproute2)")?;
    // The guard's entry is a link: pack the program itself.
    list.push(("ip".to_string(), fs::canonicalize(ip)?));
    Ok(Programs { list })
}

/// How many tests each test binary has, as its harness lists them on the host.
fn test_counts(programs: &Programs) -> anyhow::Result<Vec<(String, u64)>> {
    let mut counts = Vec::new();
    for (name, path) in programs.list.iter().filter(|(n, _)| TESTS.contains(&&**n)) {
        let text = output(cmd(path).args(["--list", "--format", "terse"]))?;
        let n = text.lines().filter(|l| l.ends_with(": test")).count() as u64;
        counts.push((name.clone(), n));
    }
    Ok(counts)
}

/// The parts of every guest's initramfs that do not depend on the kernel; written once.
fn base_initramfs(programs: &Programs, path: &Path) -> anyhow::Result<()> {
    let stripped = dir().join("stripped");
    fs::create_dir_all(&stripped)?;
    let mut ramfs = Initramfs::create(path)?;
    for d in ["proc", "sys", "dev", "tmp", "run", "etc", "km/bin"] {
        ramfs.dir(d)?;
    }
    ramfs.symlink("var/run", "/run")?;
    ramfs.file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644)?;
    let mut libs = BTreeSet::new();
    for (name, host) in &programs.list {
        // Debug info would make the guest's memory the bottleneck: strip it.
        let small = stripped.join(name);
        bootstrap::run(
            cmd("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&small)
                .arg(host),
        )?;
        let dest = if name == "sg-kinit" {
            "init".to_string()
        } else {
            format!("km/bin/{name}")
        };
        ramfs.host_file(&dest, &small)?;
        libs.extend(libraries(host)?);
    }
    for lib in &libs {
        let name = lib.to_string_lossy();
        let real = fs::canonicalize(lib)?;
        ramfs.host_file(name.trim_start_matches('/'), &real)?;
    }
    let busybox = Path::new("/bin/busybox");
    let kind = output(cmd("file").arg("-L").arg(busybox)).unwrap_or_default();
    if !kind.contains("statically linked") {
        bail!("/bin/busybox is not the static one (package busybox-static)");
    }
    ramfs.host_file("km/bin/busybox", busybox)?;
    for a in APPLETS {
        ramfs.symlink(&format!("km/bin/{a}"), "busybox")?;
    }
    ramfs.finish()
}

/// The part of a guest's initramfs for one kernel: its module and the plan.
fn kernel_initramfs(k: &Kernel, prepared: &Prepared, path: &Path) -> anyhow::Result<()> {
    let mut ramfs = Initramfs::create(path)?;
    ramfs.host_file("km/veth.ko", &prepared.veth)?;
    let mut plan = String::from("module veth.ko\n");
    match k.expect {
        Expect::Supported => {
            for t in TESTS {
                // Two test threads: the guest has two CPUs.
                writeln!(plan, "run {t} --test-threads=2")?;
            }
        }
        Expect::TooOld => plan.push_str("refuse\n"),
    }
    ramfs.file("km/plan", plan.as_bytes(), 0o644)?;
    ramfs.finish()
}

// ---------------------------------------------------------------------------------------
// qemu

#[derive(Clone, Debug, PartialEq, Eq)]
enum Accel {
    Kvm,
    Tcg,
}

/// KVM if it looks usable, else TCG; says why.
fn choose_accel() -> Accel {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        say("no usable /dev/kvm: qemu emulates the guests (TCG), several times slower");
        return Accel::Tcg;
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        say(
            "/dev/kvm here is PVM (module kvm_pvm), which boots only kernels built as PVM \
             guests, not Debian's: qemu emulates the guests (TCG), several times slower",
        );
        return Accel::Tcg;
    }
    Accel::Kvm
}

/// What a guest reported.
#[derive(Default, Debug)]
struct Report {
    release: String,
    lines: Vec<String>,
    done: bool,
    seconds: f64,
}

enum Boot {
    Finished(Report),
    /// KVM did not get the guest to its first line in time.
    KvmStuck,
}

fn boot(vmlinuz: &Path, initrd: &Path, full_log: &Path, accel: &Accel) -> anyhow::Result<Boot> {
    let accel_args: &[&str] = match accel {
        Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => &["-accel", "tcg,thread=multi", "-cpu", "max"],
    };
    let start = Instant::now();
    let mut child = cmd("qemu-system-x86_64")
        .args(accel_args)
        .args([
            "-smp",
            "2",
            "-m",
            "2048",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-serial")
        .arg(format!("file:{}", full_log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu's output")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut report = Report::default();
    let result = loop {
        let limit = if *accel == Accel::Kvm && report.release.is_empty() {
            KVM_FIRST_LINE
        } else {
            GUEST_TIMEOUT
        };
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let Some(pos) = line.find("SGKM ") else {
                    continue;
                };
                let msg = line[pos + 5..].trim_end().to_string();
                if let Some(rest) = msg.strip_prefix("kernel release=") {
                    report.release = rest.split_whitespace().next().unwrap_or("").into();
                }
                if msg == "done" {
                    report.done = true;
                }
                if !msg.starts_with("kernel ") {
                    eprintln!("  {msg}");
                }
                report.lines.push(msg);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break if *accel == Accel::Kvm && report.release.is_empty() {
                    Err(None)
                } else {
                    Err(Some(limit))
                };
            }
        }
    };
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let _ = reader.join();
    report.seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(()) if !status.success() => bail!("qemu failed ({status})"),
        Ok(()) => Ok(Boot::Finished(report)),
        Err(None) => Ok(Boot::KvmStuck),
        Err(Some(limit)) => bail!("the guest did not finish within {limit:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Judging a report

/// One kernel's outcome, for the summary.
pub struct Outcome {
    pub kernel: &'static str,
    pub distro: &'static str,
    pub package: String,
    pub release: String,
    pub result: String,
    pub seconds: f64,
    pub ok: bool,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Check a guest's report against what the kernel is expected to do.
fn judge(k: &Kernel, report: &Report, counts: &[(String, u64)]) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    if report.release.is_empty() {
        problems.push("the guest never reported (did the kernel boot?)".to_string());
    } else if !report.release.starts_with(k.series) {
        problems.push(format!(
            "booted {}, not a {}x kernel: the package changed series",
            report.release, k.series
        ));
    }
    if !report.done {
        problems.push("the guest did not finish its plan".to_string());
    }
    for l in &report.lines {
        if let Some(e) = l.strip_prefix("error ") {
            problems.push(format!("guest: {e}"));
        }
        if l.starts_with("fail ") {
            problems.push(format!("failed: {l}"));
        }
    }
    if !report.lines.iter().any(|l| l == "module veth.ko ok") {
        problems.push("the veth module did not load".to_string());
    }
    let mut result = Vec::new();
    match k.expect {
        Expect::Supported => {
            for (name, expected) in counts {
                let Some(line) = report
                    .lines
                    .iter()
                    .find(|l| field(l, "name") == Some(name.as_str()) && l.starts_with("run "))
                else {
                    problems.push(format!("{name}: did not run"));
                    continue;
                };
                let num = |key| field(line, key).and_then(|v| v.parse::<u64>().ok());
                let (rc, passed, failed) = (field(line, "rc"), num("passed"), num("failed"));
                result.push(format!(
                    "{name} {}/{expected}",
                    passed.map_or("?".into(), |p| p.to_string())
                ));
                if rc != Some("0") || failed != Some(0) || passed != Some(*expected) {
                    problems.push(format!(
                        "{name}: exit {}, {} passed of {expected}, {} failed",
                        rc.unwrap_or("?"),
                        passed.map_or("?".into(), |p| p.to_string()),
                        failed.map_or("?".into(), |p| p.to_string()),
                    ));
                }
            }
        }
        Expect::TooOld => match report.lines.iter().find(|l| l.starts_with("refusal ")) {
            None => problems.push("synguard run was not tried".to_string()),
            Some(line) => {
                let message = line.split_once("message=").map_or("", |(_, m)| m);
                let lacks = message
                    .split_once("needs: ")
                    .and_then(|(_, rest)| rest.split_once(". synguard needs"))
                    .map_or(message, |(list, _)| list);
                result.push(format!(
                    "refused at start (exit {}), lacking {lacks}",
                    field(line, "rc").unwrap_or("?")
                ));
                if field(line, "rc") != Some("1") || !message.contains(TOO_OLD_MESSAGE) {
                    problems.push(format!(
                        "expected `synguard run` to exit 1 saying \"{TOO_OLD_MESSAGE}\": {line}"
                    ));
                }
            }
        },
    }
    (result.join(", "), problems)
}

// ---------------------------------------------------------------------------------------
// The matrix

/// Boot every kernel (or those named in `only`) and run the kernel tests in each; fails if
/// any kernel does not do what it is expected to. `synguard` is the release binary.
pub fn run(synguard: &Path, only: &[String]) -> anyhow::Result<Vec<Outcome>> {
    for name in only {
        if !KERNELS.iter().any(|k| k.name == name) {
            bail!(
                "no kernel {name} in the matrix (known: {})",
                KERNELS
                    .iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| only.is_empty() || only.iter().any(|o| o == k.name))
        .collect();
    fs::create_dir_all(dir())?;
    let programs = programs(synguard)?;
    let counts = test_counts(&programs)?;
    let base = dir().join("base.cpio");
    base_initramfs(&programs, &base)?;
    let mut accel = choose_accel();
    let mut outcomes = Vec::new();
    for k in kernels {
        let prepared = prepare(k).with_context(|| format!("getting the kernel of {}", k.name))?;
        let part = dir().join(format!("{}.cpio", k.name));
        kernel_initramfs(k, &prepared, &part)?;
        // The kernel unpacks concatenated archives in order.
        let initrd = dir().join(format!("{}.initrd", k.name));
        let mut bytes = fs::read(&base)?;
        bytes.extend(fs::read(&part)?);
        fs::write(&initrd, bytes)?;
        let full_log = dir().join(format!("{}.log", k.name));
        say(&format!(
            "booting {} ({}, {}) with {}",
            k.name,
            k.distro,
            prepared.package,
            if accel == Accel::Kvm { "KVM" } else { "TCG" }
        ));
        let report = match boot(&prepared.vmlinuz, &initrd, &full_log, &accel)? {
            Boot::Finished(r) => r,
            Boot::KvmStuck => {
                say(&format!(
                    "with KVM the guest printed nothing in {KVM_FIRST_LINE:?}: emulating (TCG) \
                     from now on, several times slower"
                ));
                accel = Accel::Tcg;
                match boot(&prepared.vmlinuz, &initrd, &full_log, &accel)? {
                    Boot::Finished(r) => r,
                    Boot::KvmStuck => bail!("TCG cannot get stuck the KVM way"),
                }
            }
        };
        let (result, problems) = judge(k, &report, &counts);
        let ok = problems.is_empty();
        say(&format!(
            "{}: {} in {:.0} s: {}{}",
            k.name,
            if report.release.is_empty() {
                "-"
            } else {
                &report.release
            },
            report.seconds,
            if ok { "ok" } else { "FAILED" },
            if result.is_empty() {
                String::new()
            } else {
                format!(" ({result})")
            }
        ));
        for p in &problems {
            say(&format!("  {p}"));
        }
        if !ok {
            say(&format!(
                "  the guest's whole output: {}",
                full_log.display()
            ));
        }
        outcomes.push(Outcome {
            kernel: k.name,
            distro: k.distro,
            package: prepared.package,
            release: report.release.clone(),
            result,
            seconds: report.seconds,
            ok,
        });
    }
    let summary = summary(&outcomes, &accel);
    fs::write(dir().join("summary.md"), &summary)?;
    eprint!("{summary}");
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.kernel)
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join(", "));
    }
    Ok(outcomes)
}

/// The matrix as a Markdown table (also `target/kmatrix/summary.md`).
fn summary(outcomes: &[Outcome], accel: &Accel) -> String {
    let mut s = format!(
        "\n| kernel | distribution | package | result | time ({}) |\n|---|---|---|---|---:|\n",
        if *accel == Accel::Kvm { "KVM" } else { "TCG" }
    );
    for o in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}{} | {:.0} s |",
            if o.release.is_empty() {
                "-"
            } else {
                &o.release
            },
            o.distro,
            o.package,
            if o.ok { "" } else { "FAILED: " },
            o.result,
            o.seconds
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lines: &[&str]) -> Report {
        Report {
            release: "6.1.0-57-amd64".into(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
            done: true,
            seconds: 1.0,
        }
    }

    fn counts() -> Vec<(String, u64)> {
        vec![("testrun".into(), 42), ("cookies".into(), 8)]
    }

    #[test]
    fn a_supported_kernel_must_pass_every_listed_test() {
        let k = &KERNELS[1];
        let good = report(&[
            "module veth.ko ok",
            "run name=testrun rc=0 secs=90 passed=42 failed=0",
            "run name=cookies rc=0 secs=20 passed=8 failed=0",
            "done",
        ]);
        let (result, problems) = judge(k, &good, &counts());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(result, "testrun 42/42, cookies 8/8");

        // Fewer tests than the host lists (a filter, a harness that ran nothing).
        let short = report(&[
            "module veth.ko ok",
            "run name=testrun rc=0 secs=90 passed=41 failed=0",
            "run name=cookies rc=0 secs=20 passed=8 failed=0",
        ]);
        let (_, problems) = judge(k, &short, &counts());
        assert_eq!(problems.len(), 1, "{problems:?}");
        // A failure, a missing binary, a module that did not load.
        let bad = report(&[
            "run name=testrun rc=101 secs=90 passed=41 failed=1",
            "fail name=testrun test=ban_expires_on_time",
        ]);
        let (_, problems) = judge(k, &bad, &counts());
        assert_eq!(problems.len(), 4, "{problems:?}");
        // Another kernel series than the one the entry is for.
        let other = Report {
            release: "6.12.57+deb13-amd64".into(),
            ..report(&[
                "module veth.ko ok",
                "run name=testrun rc=0 secs=90 passed=42 failed=0",
                "run name=cookies rc=0 secs=20 passed=8 failed=0",
                "done",
            ])
        };
        assert_eq!(judge(k, &other, &counts()).1.len(), 1);
    }

    #[test]
    fn a_too_old_kernel_must_be_refused_with_the_message() {
        let k = KERNELS
            .iter()
            .find(|k| k.expect == Expect::TooOld)
            .expect("a too-old kernel in the matrix");
        let refused = Report {
            release: "5.10.0-46-amd64".into(),
            ..report(&[
                "module veth.ko ok",
                "refusal rc=1 secs=1 message=error: this kernel (5.10.0-46-amd64) lacks what \
                 synguard's XDP program needs: the helper bpf_ktime_get_coarse_ns (Linux \
                 5.11). synguard needs Linux 5.15 or later (Debian 12's 6.1 and later)",
            ])
        };
        let (result, problems) = judge(k, &refused, &counts());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            result,
            "refused at start (exit 1), lacking the helper bpf_ktime_get_coarse_ns (Linux 5.11)",
            "the table names what it lacks"
        );
        let loaded = Report {
            release: "5.10.0-46-amd64".into(),
            ..report(&["module veth.ko ok", "refusal rc=0 secs=1 message="])
        };
        assert_eq!(judge(k, &loaded, &counts()).1.len(), 1);
    }

    #[test]
    fn the_initramfs_is_a_valid_newc_archive() {
        let path = std::env::temp_dir().join(format!("sg-kmatrix-{}.cpio", std::process::id()));
        let mut r = Initramfs::create(&path).expect("create");
        r.file("km/bin/hello", b"hi\n", 0o755).expect("file");
        r.symlink("var/run", "/run").expect("symlink");
        r.finish().expect("finish");
        let mut names = Vec::new();
        let mut reader = fs::File::open(&path).expect("open");
        loop {
            let entry = cpio::newc::Reader::new(reader).expect("entry");
            if entry.entry().is_trailer() {
                break;
            }
            names.push((entry.entry().name().to_string(), entry.entry().mode()));
            reader = entry.finish().expect("next");
        }
        let _ = fs::remove_file(&path);
        assert_eq!(
            names,
            vec![
                ("km".to_string(), S_IFDIR | 0o755),
                ("km/bin".to_string(), S_IFDIR | 0o755),
                ("km/bin/hello".to_string(), S_IFREG | 0o755),
                ("var".to_string(), S_IFDIR | 0o755),
                ("var/run".to_string(), S_IFLNK | 0o777),
            ]
        );
    }
}
