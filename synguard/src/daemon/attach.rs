//! Attaching: the interfaces by name, the program attached fresh or swapped into
//! pinned links, the state loaded or adopted (`start`), and `detach`.

use super::*;

/// A network interface by name and index.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub index: u32,
}

/// Resolve interface names, refusing unknown ones with the list of those that exist.
pub fn resolve_ifaces(names: &[String]) -> anyhow::Result<Vec<Iface>> {
    let mut out: Vec<Iface> = Vec::new();
    for name in names {
        let index = CString::new(name.as_str())
            .ok()
            // SAFETY: a valid NUL-terminated name.
            .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
            .unwrap_or(0);
        if index == 0 {
            let mut known: Vec<String> = fs::read_dir("/sys/class/net")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            known.sort();
            return Err(usage(format!(
                "unknown interface {name:?}; interfaces in this network namespace: {}",
                known.join(", ")
            )));
        }
        if out.iter().any(|i| i.index == index) {
            return Err(usage(format!("interface {name} given twice")));
        }
        out.push(Iface {
            name: name.clone(),
            index,
        });
    }
    Ok(out)
}

/// One protected interface.
pub(super) struct Attachment {
    pub(super) iface: Iface,
    pub(super) mode: &'static str,
    /// Our descriptor of the pinned link; the pin keeps it attached without us.
    pub(super) link: FdLink,
}

pub(super) fn is_errno(e: &ProgramError, codes: &[i32]) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|c| codes.contains(&c))
        {
            return true;
        }
        src = err.source();
    }
    false
}

pub(super) fn attach_fresh(
    prog: &mut Xdp,
    iface: &Iface,
    mode: XdpModeArg,
) -> anyhow::Result<(FdLink, &'static str)> {
    let busy = |e: &ProgramError| {
        if is_errno(e, &[libc::EBUSY, libc::EEXIST]) {
            Some(anyhow!(
                "{} already has another XDP program attached; detach it first (`ip link set \
                 dev {} xdp off`, or stop the tool that attached it)",
                iface.name,
                iface.name
            ))
        } else {
            None
        }
    };
    let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach_to_if_index(iface.index, m);
    let (id, used) = match mode {
        XdpModeArg::Skb => match try_mode(prog, XdpMode::Skb) {
            Ok(id) => (id, "generic (skb)"),
            Err(e) => return Err(busy(&e).unwrap_or_else(|| anyhow!(e))),
        },
        XdpModeArg::Native => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                if let Some(b) = busy(&e) {
                    return Err(b);
                }
                return Err(usage(format!(
                    "{} does not support native XDP ({e}); use --xdp-mode auto to fall back \
                     to generic mode, or --xdp-mode skb",
                    iface.name
                )));
            }
        },
        XdpModeArg::Auto if crate::net::driver(&iface.name).as_deref() == Some("veth") => {
            // A veth's frames are socket buffers already, which generic mode runs on as
            // they are. Native XDP on a veth moves them onto a ring of 256 frames, copied
            // into pages, that a flood the stack must handle itself (SYNs left to the
            // kernel, a DNAT'd container's) overflows, taking the employees' frames with
            // it; and its XDP_TX needs a program on the peer. Measured in the lab's
            // `container` profile at 150k forged SYN/s: native 71 %, generic 100 %.
            log::info!(
                "{}: a veth, so generic (skb) mode, which handles its socket buffers as they \
                 are (`--xdp-mode native` forces the driver's mode)",
                iface.name
            );
            match try_mode(prog, XdpMode::Skb) {
                Ok(id) => (id, "generic (skb)"),
                Err(e) => return Err(busy(&e).unwrap_or_else(|| anyhow!(e))),
            }
        }
        XdpModeArg::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                if let Some(b) = busy(&e) {
                    return Err(b);
                }
                log::warn!(
                    "{}: the driver has no native XDP ({e}); falling back to generic (skb) \
                     mode, which works everywhere but costs more per packet",
                    iface.name
                );
                match try_mode(prog, XdpMode::Skb) {
                    Ok(id) => (id, "generic (skb)"),
                    Err(e) => {
                        return Err(busy(&e).unwrap_or_else(|| {
                            usage(format!("{} cannot run XDP programs: {e}", iface.name))
                        }));
                    }
                }
            }
        },
    };
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link).map_err(|_| {
        anyhow!(
            "the kernel attached {} through netlink rather than a BPF link, so protection \
             could not outlive this process; this kernel is too old for synguard",
            iface.name
        )
    })?;
    Ok((fd, used))
}

/// Swap our program into an interface's pinned link (atomic: the pin stays in place the
/// whole time, so the interface is never without a program).
pub(super) fn adopt(prog: &mut Xdp, pin_dir: &Path, iface: &Iface) -> anyhow::Result<Attachment> {
    let path = pins::link_path(pin_dir, iface.index, &iface.name);
    let pinned = PinnedLink::from_pin(&path)?;
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    let id = prog.attach_to_link(link)?;
    let link = FdLink::try_from(prog.take_link(id)?)?;
    Ok(Attachment {
        iface: iface.clone(),
        mode: "adopted",
        link,
    })
}

/// Attach to an interface and pin the link.
pub(super) fn attach_new(
    prog: &mut Xdp,
    pin_dir: &Path,
    iface: &Iface,
    mode: XdpModeArg,
) -> anyhow::Result<Attachment> {
    let path = pins::link_path(pin_dir, iface.index, &iface.name);
    let (link, used) = attach_fresh(prog, iface, mode)?;
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning the link of {} at {}", iface.name, path.display()))?;
    Ok(Attachment {
        iface: iface.clone(),
        mode: used,
        link: pinned.into(),
    })
}

/// Links pinned by a previous run for interfaces this run does not protect (or that have
/// been recreated since, with a new index).
pub(super) fn stale_links(pin_dir: &Path, ifaces: &[Iface]) -> Vec<PathBuf> {
    let keep: Vec<PathBuf> = ifaces
        .iter()
        .map(|i| pins::link_path(pin_dir, i.index, &i.name))
        .collect();
    fs::read_dir(pins::links_dir(pin_dir))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| !keep.contains(p))
                .collect()
        })
        .unwrap_or_default()
}

/// Load, attach and configure, in the order that keeps a failure harmless:
/// - fresh state gets its config before the program is attached anywhere;
/// - interfaces without a pinned link are attached first, and detached again if any
///   attach fails, before any adopted link is touched;
/// - adopted links then get the new program (an atomic swap each), and only once every
///   interface is protected is the adopted config replaced.
pub(super) fn start(
    pin_dir: &Path,
    settings: &Settings,
    ifaces: &[Iface],
    mode: XdpModeArg,
    adopting: bool,
) -> anyhow::Result<(Loaded, Vec<Attachment>, u64, crate::nat::Reading)> {
    // Pins of another version: made loadable (or refused) first (see `upgrade`); the
    // old pins come back if anything fails before the new program is in every link.
    let upgrade = crate::upgrade::prepare(pin_dir)?;
    match start_with(pin_dir, settings, ifaces, mode, adopting, &upgrade) {
        Ok(started) => {
            upgrade.commit(pin_dir);
            Ok(started)
        }
        Err(e) => {
            upgrade.rollback(pin_dir);
            Err(e)
        }
    }
}

fn start_with(
    pin_dir: &Path,
    settings: &Settings,
    ifaces: &[Iface],
    mode: XdpModeArg,
    adopting: bool,
    upgrade: &crate::upgrade::Prepared,
) -> anyhow::Result<(Loaded, Vec<Attachment>, u64, crate::nat::Reading)> {
    let mut loaded = Loaded::load(&LoadOptions {
        pin_dir: Some(pin_dir.to_path_buf()),
        ..Default::default()
    })?;
    crate::upgrade::finish(upgrade, &mut loaded.maps)?;
    if let Some(from) = upgrade.from {
        log::warn!(
            "upgraded the pinned state from map layout {from} to {}: {} replaced{}",
            synguard_common::ABI_VERSION,
            upgrade.replaced.join(", "),
            if upgrade.carry.is_some() {
                " (counters start again); the lists, bans, CrowdSec's decisions, proofs and \
                 buckets are kept"
            } else {
                ""
            }
        );
    }
    let previous = if adopting {
        loaded.maps.read_config().ok()
    } else {
        None
    };
    let generation = previous.map_or(0, |c| c.generation) + 1;
    // Read before anything is attached (within `nat::NFT_TIMEOUT`): attack mode leaves
    // SYNs for ports a NAT rule rewrites to the kernel, and on a host with source NAT lets
    // through the ACKs its guests' connections may get (see `nat`).
    let nat = crate::nat::read();
    if let Some(w) = &nat.warning {
        log::warn!("{w}");
    }
    let mut kernel_cfg = settings.to_kernel(generation);
    kernel_cfg.daemon_pid = std::process::id();
    kernel_cfg.snat = nat.snat;
    if let Some(prev) = previous {
        // Internal tuning. (What a previous run changed and must be able to restore is in
        // `SG_HOST`, which the keeper takes over.)
        if prev.attack_calm_ns != 0 {
            kernel_cfg.attack_calm_ns = prev.attack_calm_ns;
        }
    }
    // A config map the old program does not use (fresh, or replaced by an upgrade) gets
    // its config before anything is attached.
    let fresh_config = !adopting || upgrade.replaces(map_names::CONFIG);
    if fresh_config {
        loaded.maps.write_config(&kernel_cfg)?;
    }
    // Before attaching: attack mode answers SYNs only for these (see `locals`); `run`
    // keeps them current with the proofs.
    let addrs = crate::locals::addresses()?;
    crate::locals::sync(&mut loaded.maps, &addrs)?;
    crate::nat::sync(&mut loaded.maps, &nat.ports)?;

    let mut attachments: Vec<Attachment> = Vec::new();
    let undo = |attachments: &mut Vec<Attachment>| {
        for a in attachments.drain(..).filter(|a| a.mode != "adopted") {
            let _ = fs::remove_file(pins::link_path(pin_dir, a.iface.index, &a.iface.name));
        }
    };
    let (to_adopt, fresh): (Vec<&Iface>, Vec<&Iface>) = ifaces
        .iter()
        .partition(|i| pins::link_path(pin_dir, i.index, &i.name).exists());
    for iface in fresh {
        match loaded
            .program_mut()
            .and_then(|prog| attach_new(prog, pin_dir, iface, mode))
        {
            Ok(a) => attachments.push(a),
            Err(e) => {
                undo(&mut attachments);
                return Err(e);
            }
        }
    }
    for iface in to_adopt {
        let result = loaded.program_mut().and_then(|prog| {
            adopt(prog, pin_dir, iface).or_else(|e| {
                log::warn!(
                    "{}: the pinned link from a previous run is unusable ({e:#}); attaching anew",
                    iface.name
                );
                let _ = fs::remove_file(pins::link_path(pin_dir, iface.index, &iface.name));
                attach_new(prog, pin_dir, iface, mode)
            })
        });
        match result {
            Ok(a) => attachments.push(a),
            Err(e) => {
                undo(&mut attachments);
                return Err(e);
            }
        }
    }

    if let Some(prev) = previous
        && prev.build_id != 0
        && prev.build_id != kernel_cfg.build_id
    {
        log::info!(
            "upgraded the program from build {:016x} to {}",
            prev.build_id,
            crate::bpf::BUILD_ID
        );
    }
    if !fresh_config {
        loaded.maps.write_config(&kernel_cfg)?;
    }
    let _lock = pins::lock_writers(pin_dir)?;
    rules::reconcile_actions(&mut loaded.maps)?;
    Ok((loaded, attachments, generation, nat))
}

pub(crate) fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    // The sock_ops program's link: its pin holds the last reference.
    let proofs = crate::proofs::link_path(pin_dir);
    if proofs.exists() {
        fs::remove_file(&proofs).with_context(|| format!("unpinning {}", proofs.display()))?;
    }
    // Every map pinned, including those of another version's layout.
    let dir = crate::bpf::maps_dir(pin_dir);
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            // Also pins an upgrade moved aside and never finished (see `upgrade`).
            if p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("SG_") || n.starts_with("OLD_SG_")
            }) {
                fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    if pins::links_dir(pin_dir).exists() && fs::read_dir(pins::links_dir(pin_dir))?.next().is_some()
    {
        bail!(
            "links remain pinned in {}",
            pins::links_dir(pin_dir).display()
        );
    }
    Ok(())
}
