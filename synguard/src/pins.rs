//! The pin directory: where `run` leaves its maps and links so that the protection
//! outlives the process and every other command can reach the state.
//!
//! Layout under `--pin-dir` (default `/sys/fs/bpf/synguard`):
//! - `maps/SG_*`: every map of the program;
//! - `links/IFNAME`: one XDP link per protected interface.
//!
//! Locks (`flock`, released by the kernel when a process dies, even by SIGKILL):
//! - the pin directory itself is held exclusively by the running `run`, which is how
//!   the other commands know whether it is alive and how a second `run` knows to refuse;
//! - `maps/` is held exclusively by whoever changes the lists (CLI writers and the
//!   daemon's expiry sweep), so concurrent read-modify-write never loses an entry.

use std::{
    ffi::CString,
    fs::{self, File},
    os::unix::{ffi::OsStrExt as _, fs::DirBuilderExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::error::usage;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/synguard";

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The pin of an interface's XDP link: `links/IFINDEX-IFNAME`, so that every command can
/// tell which interface (and which per-interface counters) it belongs to, even from
/// another network namespace.
pub fn link_path(pin_dir: &Path, ifindex: u32, ifname: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("{ifindex}-{ifname}"))
}

/// The interfaces with a pinned link: (ifindex, name, pin path).
pub fn pinned_links(pin_dir: &Path) -> Vec<(u32, String, PathBuf)> {
    let mut out: Vec<(u32, String, PathBuf)> = fs::read_dir(links_dir(pin_dir))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let (idx, ifname) = name.split_once('-')?;
                    Some((idx.parse().ok()?, ifname.to_string(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether `path` lies on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> anyhow::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    let src = c"bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mounting a BPF filesystem on {}: {e}", at.display());
    }
    Ok(())
}

/// What [`prepare`] did, so a clean shutdown (or a failed start) can undo exactly that.
#[derive(Debug, Default)]
pub struct Prepared {
    /// A bpffs we mounted on the pin directory itself.
    pub mounted_on_pin_dir: bool,
    /// Directories we created, outermost first.
    pub created: Vec<PathBuf>,
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Make sure the pin directory exists on a BPF filesystem, mounting one where needed
/// (as systemd does at `/sys/fs/bpf` on ordinary distributions), and say so. A BPF
/// filesystem is only ever mounted on an empty directory, never over anything.
pub fn prepare(pin_dir: &Path) -> anyhow::Result<Prepared> {
    let mut prepared = Prepared::default();
    if !pin_dir.is_absolute() {
        return Err(usage(format!(
            "--pin-dir must be an absolute path, not {}",
            pin_dir.display()
        )));
    }
    let sys_bpf = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(sys_bpf) && sys_bpf.is_dir() && !is_bpffs(sys_bpf) {
        if !is_empty_dir(sys_bpf) {
            return Err(usage(
                "/sys/fs/bpf is not a BPF filesystem and not empty; mount one there \
                 (mount -t bpf bpf /sys/fs/bpf) or pass a --pin-dir on a BPF filesystem",
            ));
        }
        mount_bpffs(sys_bpf)?;
        log::info!("mounted the BPF filesystem on /sys/fs/bpf (it was not mounted)");
    }
    if pin_dir.exists() {
        if !pin_dir.is_dir() {
            return Err(usage(format!(
                "--pin-dir {} is not a directory",
                pin_dir.display()
            )));
        }
        if !is_bpffs(pin_dir) {
            if !is_empty_dir(pin_dir) {
                return Err(usage(format!(
                    "{} is not on a BPF filesystem and not empty: synguard mounts one only on \
                     an empty directory; pick an empty or new directory, or one on a BPF \
                     filesystem",
                    pin_dir.display()
                )));
            }
            mount_bpffs(pin_dir)?;
            log::info!("mounted a BPF filesystem on {}", pin_dir.display());
            prepared.mounted_on_pin_dir = true;
        }
    } else {
        let mut missing = Vec::new();
        let mut p = Some(pin_dir);
        while let Some(d) = p {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        missing.reverse();
        for d in &missing {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
            prepared.created.push(d.clone());
        }
        if !is_bpffs(pin_dir) {
            mount_bpffs(pin_dir)?;
            log::info!("mounted a BPF filesystem on {}", pin_dir.display());
            prepared.mounted_on_pin_dir = true;
        }
    }
    for d in [crate::bpf::maps_dir(pin_dir), links_dir(pin_dir)] {
        if !d.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
    }
    Ok(prepared)
}

/// Undo [`prepare`] once the pins are gone: the subdirectories, a mount we made, and the
/// directories we created.
pub fn unprepare(pin_dir: &Path, prepared: &Prepared) {
    for d in [crate::bpf::maps_dir(pin_dir), links_dir(pin_dir)] {
        let _ = fs::remove_dir(&d);
    }
    if prepared.mounted_on_pin_dir
        && let Ok(c) = CString::new(pin_dir.as_os_str().as_bytes())
    {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    if prepared.created.is_empty() && !prepared.mounted_on_pin_dir {
        // The pin directory was made inside an existing BPF filesystem by an earlier
        // step of ours or by this run: remove it if it is empty now.
        let _ = fs::remove_dir(pin_dir);
    }
    for d in prepared.created.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// An exclusive `flock` on a directory, released on drop or process death.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

fn flock(path: &Path, op: libc::c_int) -> std::io::Result<Option<File>> {
    let f = File::open(path)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(Some(f))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// Take the daemon lock: held by the running `synguard run` for its whole life.
///
/// Other commands take this lock shared for an instant to see whether a daemon runs, so a
/// busy lock is retried for half a second before concluding another `run` holds it.
pub fn lock_daemon(pin_dir: &Path) -> anyhow::Result<DirLock> {
    for _ in 0..20 {
        if let Some(f) = flock(pin_dir, libc::LOCK_EX | libc::LOCK_NB)
            .with_context(|| format!("locking {}", pin_dir.display()))?
        {
            return Ok(DirLock { _file: f });
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    match flock(pin_dir, libc::LOCK_EX | libc::LOCK_NB)
        .with_context(|| format!("locking {}", pin_dir.display()))?
    {
        Some(f) => Ok(DirLock { _file: f }),
        None => bail!(
            "another `synguard run` is already active on {} (stop it first, or give this one \
             its own --pin-dir)",
            pin_dir.display()
        ),
    }
}

/// Whether a `synguard run` holds the pin directory right now.
pub fn daemon_running(pin_dir: &Path) -> bool {
    matches!(flock(pin_dir, libc::LOCK_SH | libc::LOCK_NB), Ok(None))
}

/// Take the writers' lock (blocking): serialises every change to the lists.
pub fn lock_writers(pin_dir: &Path) -> anyhow::Result<DirLock> {
    let dir = crate::bpf::maps_dir(pin_dir);
    let f = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", dir.display()));
    }
    Ok(DirLock { _file: f })
}

/// Whether there is synguard state pinned here at all.
pub fn has_state(pin_dir: &Path) -> bool {
    crate::bpf::maps_dir(pin_dir)
        .join(synguard_common::map_names::CONFIG)
        .exists()
}
