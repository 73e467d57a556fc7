//! `synguard detach`: remove what `run --keep` left attached and pinned.

use std::{fs, path::Path};

use anyhow::Context as _;

use crate::{daemon::remove_pins, pins};

/// `synguard detach`: take a kept program away (left by `run --keep`, the service, or a
/// crash): put `net.ipv4.tcp_syncookies` back if attack mode changed it, detach from every
/// interface, remove the pins. Refuses while a `run` is active.
pub fn detach(pin_dir: &Path) -> anyhow::Result<()> {
    crate::privs::require_for_run()?;
    if !pins::has_state(pin_dir) {
        return Err(crate::error::usage(format!(
            "nothing to detach: no synguard state in {} (pass the --pin-dir `run` used)",
            pin_dir.display()
        )));
    }
    let _lock = pins::lock_daemon(pin_dir).map_err(|_| {
        crate::error::usage(format!(
            "`synguard run` is active on {}: stop it first (systemctl stop synguard); with \
             --keep it leaves the program attached for this command to remove",
            pin_dir.display()
        ))
    })?;
    // Whatever version wrote the state: the saved settings if its layout can be read.
    let saved = crate::upgrade::saved_host(pin_dir);
    for (_, name, path) in pins::pinned_links(pin_dir) {
        // The pin holds the link's last reference: removing it detaches the program.
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        log::info!("detached from {name}");
    }
    match saved {
        Some(host) => crate::sysctls::restore_saved(&host),
        None => log::warn!(
            "the state's layout is not one this synguard can read: if tcp_syncookies or \
             tcp_timestamps is 2 now, synguard set it; put back your own value by hand"
        ),
    }
    remove_pins(pin_dir)?;
    for d in [crate::bpf::maps_dir(pin_dir), pins::links_dir(pin_dir)] {
        let _ = fs::remove_dir(&d);
    }
    // A BPF filesystem `run` mounted on the pin directory itself goes too.
    let parent_is_bpffs = pin_dir.parent().is_some_and(pins::is_bpffs);
    if pins::is_bpffs(pin_dir)
        && !parent_is_bpffs
        && let Ok(c) = std::ffi::CString::new(pin_dir.as_os_str().as_encoded_bytes())
    {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_dir(pin_dir);
    log::info!("removed the pinned state in {}", pin_dir.display());
    Ok(())
}
