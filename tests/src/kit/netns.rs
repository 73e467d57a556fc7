//! Network namespaces, veth pairs, a private BPF filesystem, and processes, each owned by
//! a guard that removes it when dropped, even when the test fails. Names are unique per
//! process and call, so tests run in parallel.
//!
//! Safety of the host: every namespace here is new and linked only to other namespaces
//! made here; nothing touches the host's own network namespace.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::Read as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{prefix}{pid}x{n}` (at most 15 bytes
/// for interface names with prefixes of up to 3 bytes).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Run a command to completion; panic with its output if it fails.
#[track_caller]
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        super::root::assert_root();
        // sgt-TAG-PID-N: `cleanup_stale` finds the ones whose process is gone.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("sgt-{tag}-{}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection in a private namespace: it only delays the first
        // IPv6 packets (link-local addresses are unusable for about a second otherwise).
        for key in [
            "net.ipv6.conf.default.accept_dad",
            "net.ipv6.conf.all.accept_dad",
        ] {
            ns.sysctl(key, "0");
        }
        ns
    }

    /// `ip -n NS ARGS...`
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// Run a command inside the namespace to completion (panics on failure).
    #[track_caller]
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["ip", "netns", "exec", &self.name];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// Run a command inside the namespace, returning its output whatever the status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
    }

    /// A `Command` that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip -n NS -batch FILE` with these commands, one a line (many addresses and routes
    /// in one `ip` call).
    #[track_caller]
    pub fn ip_batch(&self, cmds: &[String]) {
        let path = std::env::temp_dir().join(format!("{}.ipbatch", unique("sgl")));
        std::fs::write(&path, cmds.join("\n") + "\n").expect("write ip batch");
        self.ip(&["-batch", path.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&path);
    }

    /// Set a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Run a closure on a new thread that has entered this namespace (sockets it makes
    /// live here).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Interface statistics counter (`/sys/class/net/IF/statistics/NAME`) read inside.
    pub fn if_stat(&self, ifname: &str, stat: &str) -> u64 {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{stat}")]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/ifindex")]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("ifindex")
    }
}

/// The MAC address of an interface in a namespace.
pub fn mac_of(ns: &Netns, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (i, p) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(p, 16).context("MAC address")?;
    }
    Ok(mac)
}

/// Move the calling thread into a network namespace.
pub fn enter(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid namespace descriptor; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: sending a signal has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connect two namespaces with a veth pair and give each end an address (CIDR form).
/// Deleting either namespace removes the pair.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    // Created directly inside the two namespaces: nothing ever exists in the host's.
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"]);
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// A BPF filesystem of our own under /run, unmounted and removed on drop.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn new() -> Self {
        super::root::assert_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/run/sgt-bpffs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("mkdir bpffs");
        sh(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            path.to_str().expect("utf-8 path"),
        ]);
        Self { path }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.path.join("synguard")
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid path; lazy unmount so open descriptors do not block it.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A temporary directory, removed with its contents on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sgt-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (SIGKILL) on drop if still running.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub log: Option<PathBuf>,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self {
            child: Some(child),
            log: None,
        }
    }

    /// Spawn with stdout and stderr going to a log file.
    pub fn spawn_logged(mut cmd: Command, log: PathBuf) -> Self {
        let f = File::create(&log).expect("create log");
        let f2 = f.try_clone().expect("dup log");
        cmd.stdout(f).stderr(f2);
        let mut g = Self::spawn(cmd);
        g.log = Some(log);
        g
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for exit (up to `timeout`); returns the exit code, or panics.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st.code();
            }
            if start.elapsed() > timeout {
                panic!("process {} did not exit within {timeout:?}", self.pid());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Some(p) = &self.log
            && let Ok(mut f) = File::open(p)
        {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Wait until the log contains `needle`; panics with the log after `timeout`.
    #[track_caller]
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "process exited ({st}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "no {needle:?} in the log within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = &self.log {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The owner pid in a name made here (`...-PID-N`).
fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplit('-');
    let _n = parts.next()?;
    parts.next()?.parse().ok()
}

/// Remove namespaces and BPF filesystems left behind by test or lab processes that were
/// killed before their guards could run (SIGKILL). Only names made here (`sgt-...`)
/// whose owner process is gone are touched.
pub fn cleanup_stale() -> usize {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let mut removed = 0;
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with("sgt-")
                && let Some(pid) = owner_pid(name)
                && !alive(pid)
            {
                drop(Netns {
                    name: name.to_string(),
                });
                removed += 1;
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/run") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("sgt-bpffs-")
                && let Some(pid) = owner_pid(&name)
                && !alive(pid)
            {
                drop(Bpffs { path: e.path() });
                removed += 1;
            }
        }
    }
    removed
}
