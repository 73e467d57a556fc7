//! The guard: a command's children (cargo's builds and tests, the bench, the lab) run with
//! PATH limited to a directory of links to exactly the programs that the command's Debian
//! packages (`packages.rs`) provide, and cargo's own bin directory.
//!
//! Why: a test that runs a program no list installs passes on a machine where someone
//! installed it by hand and fails on a fresh one (issue 18: `ethtool`, which only the
//! bench's list had). Under the guard it fails everywhere, with a "No such file or
//! directory" that names the program.
//!
//! Allowed are the programs (executables directly in /usr/sbin, /usr/bin, /sbin, /bin)
//! that dpkg's file lists give to
//! - the command's packages;
//! - the packages every Debian system has (`Essential: yes`, `Priority: required`);
//! - the installed dependencies (`Depends`, `Pre-Depends`) of both, transitively: of
//!   `a | b` the first one installed, a virtual package through its installed providers;
//!
//! and the names in those directories that are links through /etc/alternatives to an
//! allowed program (`awk` -> mawk, `cc` -> gcc). Recommends are not followed: the
//! packages are installed without them.
//!
//! A program run by absolute path, or by a child that sets its own PATH (the dist tests'
//! chroot), is not guarded.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsString,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::bootstrap::output;

/// Where Debian puts programs, in the order of its default PATH (the first wins).
const BIN_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The fields of dpkg's status that the closure needs, one stanza per package, as in
/// /var/lib/dpkg/status.
const STATUS_FORMAT: &str = "Package: ${Package}\nArchitecture: ${Architecture}\nStatus: \
                             ${Status}\nEssential: ${Essential}\nPriority: \
                             ${Priority}\nPre-Depends: ${Pre-Depends}\nDepends: \
                             ${Depends}\nProvides: ${Provides}\n\n";

/// One package of dpkg's status.
#[derive(Debug)]
struct Pkg {
    name: String,
    arch: String,
    installed: bool,
    /// `Essential: yes` or `Priority: required`: on every Debian system.
    base: bool,
    /// `Pre-Depends` and `Depends`: clauses of alternatives, as written.
    depends: Vec<String>,
    /// Names it provides (virtual packages), without versions.
    provides: Vec<String>,
}

/// Parse dpkg status text (/var/lib/dpkg/status, or `dpkg-query -W` with
/// [`STATUS_FORMAT`]): stanzas separated by blank lines, `Field: value` lines, and
/// continuation lines starting with a space.
fn parse_status(text: &str) -> Vec<Pkg> {
    let mut pkgs = Vec::new();
    for stanza in text.split("\n\n") {
        // Fields with their continuation lines joined.
        let mut fields: Vec<(&str, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim(), v.trim().to_string()));
            }
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or("", |(_, v)| v.as_str())
        };
        let name = get("Package");
        if name.is_empty() {
            continue;
        }
        let list = |field: &str| -> Vec<String> {
            get(field)
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        };
        let mut depends = list("Pre-Depends");
        depends.extend(list("Depends"));
        pkgs.push(Pkg {
            name: name.to_string(),
            arch: get("Architecture").to_string(),
            // "install ok installed", "hold ok installed": the files are there.
            installed: get("Status").split_whitespace().last() == Some("installed"),
            base: get("Essential").eq_ignore_ascii_case("yes")
                || get("Priority").eq_ignore_ascii_case("required"),
            depends,
            provides: list("Provides")
                .iter()
                .map(|p| bare(p).to_string())
                .collect(),
        });
    }
    pkgs
}

/// A package name from a relation: `libc6 (>= 2.34)`, `perl:any`, `foo:amd64` -> the name.
fn bare(relation: &str) -> &str {
    let name = relation
        .trim()
        .split(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<')
        .next()
        .unwrap_or("");
    name.split(':').next().unwrap_or(name)
}

/// The names of the installed packages that `roots` and the base system need: the roots,
/// every base package, and their dependencies, transitively (see the module comment).
fn closure<'a>(pkgs: &'a [Pkg], roots: &[&str]) -> BTreeSet<&'a str> {
    let installed: Vec<&Pkg> = pkgs.iter().filter(|p| p.installed).collect();
    let mut by_name: HashMap<&str, Vec<&Pkg>> = HashMap::new();
    let mut providers: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for p in &installed {
        by_name.entry(p.name.as_str()).or_default().push(p);
        for v in &p.provides {
            providers
                .entry(v.as_str())
                .or_default()
                .insert(p.name.as_str());
        }
    }
    // The installed packages that satisfy a clause `a | b | ...`: the first alternative
    // that is installed itself, or else provided by installed packages.
    let satisfy = |clause: &str| -> Vec<&'a str> {
        for alt in clause.split('|') {
            let name = bare(alt);
            if let Some(ps) = by_name.get(name) {
                return vec![ps[0].name.as_str()];
            }
            if let Some(ps) = providers.get(name) {
                return ps.iter().copied().collect();
            }
        }
        Vec::new()
    };
    let mut todo: Vec<&'a str> = roots.iter().flat_map(|r| satisfy(r)).collect();
    todo.extend(installed.iter().filter(|p| p.base).map(|p| p.name.as_str()));
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name) {
            continue;
        }
        for p in by_name.get(name).into_iter().flatten() {
            for clause in &p.depends {
                todo.extend(satisfy(clause));
            }
        }
    }
    seen
}

/// The programs among dpkg's file lists (`dpkg-query -L` output): paths directly in one
/// of [`BIN_DIRS`], as (rank of the directory, name, path). Other lines (directories
/// elsewhere, "diverted by" notes) are left out.
fn bin_entries(files: &str) -> Vec<(usize, &str, &str)> {
    files
        .lines()
        .filter_map(|path| {
            let (dir, name) = path.rsplit_once('/')?;
            let rank = BIN_DIRS.iter().position(|d| *d == dir)?;
            (!name.is_empty()).then_some((rank, name, path))
        })
        .collect()
}

/// A symbolic link in a bin directory.
#[derive(Debug)]
struct Link {
    path: PathBuf,
    /// What it points to.
    target: PathBuf,
    /// Where it ends, every link followed.
    end: PathBuf,
}

/// The links that go through /etc/alternatives to an allowed program (`allowed` holds the
/// programs' real paths, every link followed).
fn alternatives<'a>(links: &'a [Link], allowed: &BTreeSet<PathBuf>) -> Vec<&'a Link> {
    links
        .iter()
        .filter(|l| l.target.starts_with("/etc/alternatives") && allowed.contains(&l.end))
        .collect()
}

fn is_program(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A directory of links to the allowed programs, and the PATH made of it.
pub struct Guard {
    pub dir: PathBuf,
    /// The programs: name -> where the link points.
    pub programs: BTreeMap<String, PathBuf>,
    /// How many packages provide them.
    pub packages: usize,
    path: OsString,
}

impl Guard {
    /// Make `dir` afresh (it reflects the lists as they are now) with links to the
    /// programs `packages` allow; `cargo_bin` (cargo, rustc, bpf-linker) goes on PATH
    /// after it.
    pub fn build(packages: &[&str], dir: &Path, cargo_bin: &Path) -> anyhow::Result<Self> {
        let status = output(Command::new("dpkg-query").args(["-W", "-f", STATUS_FORMAT]))?;
        let pkgs = parse_status(&status);
        let names = closure(&pkgs, packages);
        // Arch-qualified: the same name may be installed for several architectures.
        let qualified: Vec<String> = pkgs
            .iter()
            .filter(|p| p.installed && names.contains(p.name.as_str()))
            .map(|p| match p.arch.as_str() {
                "" => p.name.clone(),
                arch => format!("{}:{arch}", p.name),
            })
            .collect();
        // A package without a file list only makes dpkg-query complain (and exit 1);
        // the others' lists are still printed.
        let mut list = Command::new("dpkg-query");
        list.arg("-L").args(&qualified);
        let out = list.output().with_context(|| format!("running {list:?}"))?;
        let files = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() && files.trim().is_empty() {
            bail!(
                "dpkg-query -L (of {} packages) failed: {}",
                qualified.len(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }

        let mut entries = bin_entries(&files);
        entries.sort_unstable();
        let mut programs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (_, name, path) in entries {
            if !programs.contains_key(name) && is_program(Path::new(path)) {
                programs.insert(name.to_string(), PathBuf::from(path));
            }
        }
        let allowed: BTreeSet<PathBuf> = programs
            .values()
            .filter_map(|p| fs::canonicalize(p).ok())
            .collect();
        let mut links = Vec::new();
        for d in BIN_DIRS {
            let Ok(read) = fs::read_dir(d) else { continue };
            for e in read.flatten() {
                let path = e.path();
                if let (Ok(target), Ok(end)) = (fs::read_link(&path), fs::canonicalize(&path)) {
                    links.push(Link { path, target, end });
                }
            }
        }
        for link in alternatives(&links, &allowed) {
            if let Some(name) = link.path.file_name().and_then(|n| n.to_str()) {
                programs
                    .entry(name.to_string())
                    .or_insert_with(|| link.path.clone());
            }
        }

        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, target) in &programs {
            let link = dir.join(name);
            std::os::unix::fs::symlink(target, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        let path = std::env::join_paths([dir, cargo_bin])
            .context("the guard's directory cannot be on PATH")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            programs,
            packages: qualified.len(),
            path,
        })
    }

    /// Whether a program of this name is on the guard's PATH (cargo's aside).
    #[cfg(test)]
    pub fn allows(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    /// Run `cmd` under the guard.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("PATH", &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file as dpkg writes it: multi-line fields, a package not installed, one
    /// with only its configuration left, versions, `:any`, alternatives, Provides.
    const STATUS: &str = "\
Package: tool
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 1.0
Pre-Depends: prelib (>= 2)
Depends: libfoo1 (>= 1.2), perl:any, absent | chosen (>= 3) | other, mail-transport-agent
Recommends: recommended
Description: a tool
 with a long description
 .
 over lines

Package: prelib
Status: install ok installed
Priority: optional
Architecture: amd64

Package: libfoo1
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Depends: libdeep

Package: libfoo1
Status: install ok installed
Priority: optional
Architecture: i386
Multi-Arch: same

Package: libdeep
Status: install ok installed
Priority: optional
Architecture: amd64
Depends: tool

Package: perl
Status: install ok installed
Priority: standard
Architecture: amd64

Package: chosen
Status: install ok installed
Priority: optional
Architecture: all

Package: other
Status: install ok installed
Priority: optional
Architecture: all

Package: absent
Status: deinstall ok config-files
Priority: optional
Architecture: amd64

Package: postfix
Status: install ok installed
Priority: optional
Architecture: amd64
Provides: mail-transport-agent, default-mta (= 3.7)

Package: recommended
Status: install ok installed
Priority: optional
Architecture: amd64

Package: coreutils
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Pre-Depends: libacl1

Package: libacl1
Status: install ok installed
Priority: optional
Architecture: amd64

Package: mawk
Status: install ok installed
Priority: required
Architecture: amd64

Package: bystander
Status: install ok installed
Priority: optional
Architecture: amd64
Depends: coreutils
";

    fn names(pkgs: &[Pkg], roots: &[&str]) -> Vec<String> {
        closure(pkgs, roots)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn parses_stanzas_and_fields() {
        let pkgs = parse_status(STATUS);
        assert_eq!(pkgs.len(), 15);
        let tool = &pkgs[0];
        assert_eq!((tool.name.as_str(), tool.arch.as_str()), ("tool", "amd64"));
        assert!(tool.installed && !tool.base);
        assert_eq!(
            tool.depends,
            [
                "prelib (>= 2)",
                "libfoo1 (>= 1.2)",
                "perl:any",
                "absent | chosen (>= 3) | other",
                "mail-transport-agent"
            ]
        );
        let absent = pkgs.iter().find(|p| p.name == "absent").expect("absent");
        assert!(!absent.installed);
        let postfix = pkgs.iter().find(|p| p.name == "postfix").expect("postfix");
        assert_eq!(postfix.provides, ["mail-transport-agent", "default-mta"]);
        assert!(pkgs.iter().any(|p| p.name == "mawk" && p.base));
        assert!(pkgs.iter().any(|p| p.name == "coreutils" && p.base));
    }

    #[test]
    fn bare_names() {
        assert_eq!(bare(" libc6 (>= 2.34)"), "libc6");
        assert_eq!(bare("perl:any"), "perl");
        assert_eq!(bare("python3:any (>= 3.9)"), "python3");
        assert_eq!(bare("foo"), "foo");
    }

    #[test]
    fn closure_follows_depends_alternatives_and_providers() {
        let pkgs = parse_status(STATUS);
        assert_eq!(
            names(&pkgs, &["tool"]),
            [
                // `chosen`: the first installed of `absent | chosen | other`; postfix
                // provides the virtual mail-transport-agent; libdeep through libfoo1,
                // and back to tool (a cycle); coreutils and mawk are base, libacl1 is
                // coreutils' Pre-Depends.
                "chosen",
                "coreutils",
                "libacl1",
                "libdeep",
                "libfoo1",
                "mawk",
                "perl",
                "postfix",
                "prelib",
                "tool",
            ]
        );
    }

    #[test]
    fn closure_leaves_out_what_nothing_needs() {
        let pkgs = parse_status(STATUS);
        let base = names(&pkgs, &[]);
        assert_eq!(base, ["coreutils", "libacl1", "mawk"]);
        let with_tool = names(&pkgs, &["tool"]);
        for left_out in ["other", "absent", "recommended", "bystander"] {
            assert!(!with_tool.iter().any(|n| n == left_out), "{left_out}");
        }
        // A root that is not installed, or is only a virtual name, resolves the same way.
        assert_eq!(names(&pkgs, &["absent"]), base);
        assert!(names(&pkgs, &["mail-transport-agent"]).contains(&"postfix".to_string()));
    }

    #[test]
    fn programs_are_files_directly_in_bin_dirs() {
        let list = "/.\n/bin\n/bin/cat\n/usr/bin/mawk\n/usr/sbin/ip\n/usr/bin/sub/x\n\
                    /usr/share/doc/mawk/copyright\n/usr/local/bin/y\n\
                    package diverts others to: /bin/sh.distrib\n/usr/bin/\n";
        assert_eq!(
            bin_entries(list),
            [
                (3, "cat", "/bin/cat"),
                (1, "mawk", "/usr/bin/mawk"),
                (0, "ip", "/usr/sbin/ip"),
            ]
        );
    }

    #[test]
    fn alternatives_to_allowed_programs_only() {
        let l = |path: &str, target: &str, end: &str| Link {
            path: path.into(),
            target: target.into(),
            end: end.into(),
        };
        let links = [
            l("/usr/bin/awk", "/etc/alternatives/awk", "/usr/bin/mawk"),
            l("/usr/bin/cc", "/etc/alternatives/cc", "/usr/bin/gcc-12"),
            l(
                "/usr/bin/x-www-browser",
                "/etc/alternatives/x-www-browser",
                "/usr/bin/firefox",
            ),
            // A package's own link, not an alternative: its package decides.
            l("/usr/bin/gcc", "gcc-12", "/usr/bin/gcc-12"),
        ];
        let allowed: BTreeSet<PathBuf> = ["/usr/bin/mawk", "/usr/bin/gcc-12"]
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let found: Vec<&Path> = alternatives(&links, &allowed)
            .into_iter()
            .map(|l| l.path.as_path())
            .collect();
        assert_eq!(found, [Path::new("/usr/bin/awk"), Path::new("/usr/bin/cc")]);
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// On this machine: the guard for `iproute2` runs `ip` and `cat` and not a program of
    /// an installed package that no list names.
    #[test]
    fn real_guard_allows_the_lists_programs_only() {
        if output(Command::new("dpkg-query").arg("--version")).is_err() {
            eprintln!("skipped: no dpkg-query (not a Debian system)");
            return;
        }
        let iproute2 = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "iproute2"]));
        assert!(
            iproute2.is_ok_and(|s| s.ends_with(" installed")),
            "iproute2 is not installed (every `cargo xtask` that tests installs it)"
        );
        // A program present here whose package neither iproute2 nor the base system
        // needs: qemu-img (qemu-utils), or else one that `cargo xtask test` installs.
        let Some(outsider) = [
            "/usr/bin/qemu-img",
            "/usr/bin/qemu-system-x86_64",
            "/usr/sbin/hping3",
            "/usr/sbin/nginx",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| is_program(p)) else {
            eprintln!("skipped: none of qemu-img, qemu-system-x86_64, hping3, nginx is installed");
            return;
        };
        let outsider_name = outsider
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a name");

        let scratch =
            Scratch(std::env::temp_dir().join(format!("xtask-guard-test-{}", std::process::id())));
        let bin = scratch.0.join("bin");
        let cargo = scratch.0.join("cargo-bin");
        let guard = Guard::build(&["iproute2"], &bin, &cargo).expect("the guard");
        eprintln!(
            "the guard for iproute2: {} programs of {} packages; must not run {}",
            guard.programs.len(),
            guard.packages,
            outsider.display()
        );
        for name in ["ip", "ss", "cat", "sh", "awk", "dpkg-query"] {
            assert!(guard.allows(name), "{name} is not allowed");
        }
        assert!(!guard.allows(outsider_name), "{outsider_name} is allowed");
        // Nothing else lands there: only links to programs in the bin directories.
        for entry in fs::read_dir(&bin).expect("the guard's directory") {
            let link = entry.expect("an entry").path();
            let target = fs::read_link(&link).expect("a link");
            assert!(
                BIN_DIRS
                    .iter()
                    .any(|d| target.parent() == Some(Path::new(d))),
                "{} -> {}",
                link.display(),
                target.display()
            );
        }

        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            guard.apply(&mut c);
            c.output().expect("sh under the guard")
        };
        let ip = sh("ip -V");
        assert!(ip.status.success(), "ip -V: {ip:?}");
        let cat = sh("echo guarded | cat");
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "guarded\n");
        // The outsider runs by its full path, and is not found by name.
        let direct = sh(&format!("{} --version", outsider.display()));
        let by_name = sh(&format!("{outsider_name} --version"));
        assert_ne!(
            direct.status.code(),
            Some(127),
            "{} does not run at all: {direct:?}",
            outsider.display()
        );
        assert_eq!(by_name.status.code(), Some(127), "{by_name:?}");
        assert!(
            String::from_utf8_lossy(&by_name.stderr).contains("not found"),
            "{by_name:?}"
        );
    }
}
