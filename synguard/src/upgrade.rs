//! Pinned state written by another version of synguard, whose maps may have another
//! layout (`synguard_common::ABI_VERSION`).
//!
//! An upgrade must keep the server protected: the new `run` takes the old program's place
//! in its pinned links (an atomic swap, as for any restart), carries over what it can and
//! says what it could not; `detach` works whatever the layout. So:
//!
//! - **An older layout this version knows** ([`LAYOUT_CHANGES`]): the maps whose layout
//!   changed since are replaced (their pins removed; the old program keeps its own copies
//!   until the swap), every other map is adopted as it is, with its entries: the
//!   operator's lists, bans, CrowdSec's decisions, proofs, token buckets. From the old
//!   config, read with that version's own layout: the sources table's hash key (the
//!   buckets stay where they are), the saved `tcp_syncookies`/`tcp_timestamps` (restored
//!   on time by the new keeper). Counters start again from zero.
//! - **An older layout it does not know**: every map is replaced (nothing can be read
//!   safely), the program still swapped in without a gap; the log says what was lost.
//! - **A newer layout** (a downgrade): refused, with what to do; `detach` still works.
//!
//! Every adopted map is also checked against the program's own definition (type, key and
//! value sizes, capacity, flags): a mismatch means its layout changed after all, and it
//! is replaced rather than misread.
//!
//! A replaced map's pin is only moved aside (`maps/OLD_NAME`: a BPF filesystem allows no
//! dot in a name, nor renames a pin) until the new program is in every link: if
//! anything fails before (the verifier refuses the new program, an interface cannot be
//! attached), [`Prepared::rollback`] puts the old pins back, and the old program, still
//! attached, keeps its state reachable and its settings restorable.
//! During an attack the old version's settings stay set: the new keeper owns them.

use std::{
    fs, io, mem,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd};
use synguard_common::{ABI_VERSION, HostState, PORT_WORDS, map_names, sources};

use crate::bpf::{Maps, maps_dir};

/// For each layout version (ABI), the maps whose layout changed (or that appeared) with
/// it, oldest first. A version bump adds its entry here, and its old config's layout to
/// [`read_old_config`].
pub const LAYOUT_CHANGES: &[(u32, &[&str])] =
    &[(16, &[map_names::CONFIG, map_names::STATS, map_names::HOST])];

/// The oldest layout whose state an upgrade carries over (the first of
/// [`LAYOUT_CHANGES`], less one).
pub const OLDEST_KNOWN: u32 = 15;

/// What the pinned state holds, by its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// Nothing pinned.
    None,
    /// This version's layout.
    Current,
    /// An older layout this version knows: what its config carried.
    Known(Carry),
    /// An older layout this version does not know.
    Unknown(u32),
    /// A newer layout.
    Newer(u32),
}

/// What an old config carries over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    pub abi: u32,
    pub generation: u64,
    pub attack_calm_ns: u64,
    pub source_seed: [u64; sources::SEED_WORDS],
    pub host: HostState,
}

/// Layout 15's config (synguard before 2026-12-08), as it was: read-only, to carry over.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConfigV15 {
    abi: u32,
    mode: u32,
    syn_rate: u32,
    syn_burst: u32,
    ipv4_prefix: u32,
    ipv6_prefix: u32,
    attack_syn_rate: u32,
    syn_cookies: u32,
    syn_interval_ns: u64,
    syn_tolerance_ns: u64,
    ban_ns: u64,
    verified_ns: u64,
    v4_mask: [u8; 4],
    all_ports: u32,
    v6_mask: [u8; 16],
    generation: u64,
    build_id: u64,
    daemon_pid: u32,
    saved_syncookies: i32,
    attack_calm_ns: u64,
    saved_timestamps: i32,
    cookie_opts: u32,
    syn_quiet: u32,
    _reserved: u32,
    ports: [u64; PORT_WORDS],
    source_seed: [u64; sources::SEED_WORDS],
}

const _: () = assert!(mem::size_of::<ConfigV15>() == 168 + 8 * PORT_WORDS);

/// The bytes of an old layout's config, if they are what that layout holds.
fn read_old_config(abi: u32, bytes: &[u8]) -> Option<Carry> {
    match abi {
        15 if bytes.len() == mem::size_of::<ConfigV15>() => {
            // SAFETY: the length matches, and every bit pattern is a valid `ConfigV15`.
            let c: ConfigV15 = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            Some(Carry {
                abi,
                generation: c.generation,
                attack_calm_ns: c.attack_calm_ns,
                source_seed: c.source_seed,
                host: HostState {
                    saved_syncookies: c.saved_syncookies,
                    saved_timestamps: c.saved_timestamps,
                    cookie_opts: c.cookie_opts,
                    valid: 1,
                    cookies_since_ns: 0,
                    cookies_last_ns: 0,
                },
            })
        }
        _ => None,
    }
}

/// Look up `key` in a map of any layout: its value's bytes (`value_size` of them).
fn lookup_raw(map: &MapData, key: &[u8], value_size: usize) -> io::Result<Vec<u8>> {
    let mut value = vec![0u8; value_size];
    // SAFETY: a plain-data bindgen union; all zeroes is a valid value.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: the map-element member of the union, filled as the kernel reads it; the key
    // and value buffers outlive the call and have the map's sizes.
    unsafe {
        let u = &mut attr.__bindgen_anon_2;
        u.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        u.key = key.as_ptr() as u64;
        u.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    }
    // SAFETY: a valid, fully initialised `bpf_attr` that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_LOOKUP_ELEM as libc::c_long,
            &attr as *const bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The layout of the state pinned in `pin_dir`, read from its config's first field
/// (every layout's config starts with its ABI version).
pub fn pinned(pin_dir: &Path) -> anyhow::Result<Pinned> {
    let path = maps_dir(pin_dir).join(map_names::CONFIG);
    if !path.exists() {
        return Ok(Pinned::None);
    }
    let map = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = map.info()?;
    let bytes = lookup_raw(&map, &0u32.to_ne_bytes(), info.value_size() as usize)
        .with_context(|| format!("reading {}", path.display()))?;
    let abi = bytes
        .get(..4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    Ok(if abi == ABI_VERSION || abi == 0 {
        // 0: a config never written (a `run` that failed before it did): nothing to read.
        Pinned::Current
    } else if abi > ABI_VERSION {
        Pinned::Newer(abi)
    } else {
        match read_old_config(abi, &bytes) {
            Some(c) => Pinned::Known(c),
            None => Pinned::Unknown(abi),
        }
    })
}

/// The maps to replace when upgrading from layout `abi` (every map for an unknown one).
pub fn changed_since(abi: u32) -> Vec<&'static str> {
    if abi < OLDEST_KNOWN {
        return map_names::ALL.to_vec();
    }
    let mut out: Vec<&'static str> = LAYOUT_CHANGES
        .iter()
        .filter(|(v, _)| *v > abi)
        .flat_map(|(_, maps)| maps.iter().copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The pinned maps whose kind or sizes are not what the program defines (they would be
/// misread if adopted).
fn mismatched(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let obj = aya_obj::Object::parse(crate::bpf::OBJECT).context("parsing the embedded object")?;
    let mut out = Vec::new();
    for name in map_names::ALL {
        let path = maps_dir(pin_dir).join(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = obj.maps.get(name) else {
            continue;
        };
        let same = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .is_ok_and(|i| {
                i.map_type().is_ok_and(|t| t as u32 == def.map_type())
                    && i.key_size() == def.key_size()
                    && i.value_size() == def.value_size()
                    && i.max_entries() == def.max_entries()
                    && i.map_flags() == def.map_flags()
            });
        if !same {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// What [`prepare`] did, for [`finish`], [`Prepared::commit`] and
/// [`Prepared::rollback`].
#[derive(Debug, Default)]
pub struct Prepared {
    pub carry: Option<Carry>,
    /// The maps replaced (their pins moved aside before loading).
    pub replaced: Vec<String>,
    /// The layout upgraded from, if any.
    pub from: Option<u32>,
}

/// Where a replaced map's pin waits until the upgrade is done.
fn aside(pin_dir: &Path, name: &str) -> std::path::PathBuf {
    maps_dir(pin_dir).join(format!("OLD_{name}"))
}

/// Move a pin: pinned again at `to`, then unpinned at `from` (a BPF filesystem does not
/// rename pins).
fn move_pin(from: &Path, to: &Path) -> anyhow::Result<()> {
    let map = MapData::from_pin(from).with_context(|| format!("opening {}", from.display()))?;
    map.pin(to)
        .map_err(|e| anyhow::anyhow!("pinning {} at {}: {e}", from.display(), to.display()))?;
    fs::remove_file(from).with_context(|| format!("unpinning {}", from.display()))
}

/// Before `run` loads its program: make the pins loadable by this version (see the
/// module's doc). Refuses a newer layout. Pins moved aside by an earlier upgrade that
/// did not finish (`run` killed in the middle) are put back first.
pub fn prepare(pin_dir: &Path) -> anyhow::Result<Prepared> {
    for name in map_names::ALL {
        let old = aside(pin_dir, name);
        if old.exists() {
            let path = maps_dir(pin_dir).join(name);
            if path.exists() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            move_pin(&old, &path)?;
        }
    }
    let mut out = Prepared::default();
    let mut replace: Vec<String> = match pinned(pin_dir)? {
        Pinned::None | Pinned::Current => Vec::new(),
        Pinned::Newer(abi) => bail!(
            "the state pinned in {} was written by a newer synguard (map layout {abi}; this \
             one has {ABI_VERSION}): run that version, or take its state down first with \
             `synguard detach` (which works with any version)",
            pin_dir.display()
        ),
        Pinned::Known(c) => {
            out.from = Some(c.abi);
            out.carry = Some(c);
            changed_since(c.abi).iter().map(|s| s.to_string()).collect()
        }
        Pinned::Unknown(abi) => {
            out.from = Some(abi);
            log::warn!(
                "the state pinned in {} has map layout {abi}, older than any this synguard can \
                 read ({OLDEST_KNOWN} and later): it starts afresh (the bans, lists and proofs \
                 of the old version are dropped; the program is still swapped in without a \
                 gap). If tcp_syncookies or tcp_timestamps is 2 now, the old version set it: \
                 put back your own value by hand",
                pin_dir.display()
            );
            map_names::ALL.iter().map(|s| s.to_string()).collect()
        }
    };
    for name in mismatched(pin_dir)? {
        if !replace.contains(&name) {
            log::warn!(
                "pinned map {name} does not have the layout this synguard defines: replacing it"
            );
            replace.push(name);
        }
    }
    for name in &replace {
        let path = maps_dir(pin_dir).join(name);
        if path.exists() {
            move_pin(&path, &aside(pin_dir, name))?;
        }
    }
    out.replaced = replace;
    Ok(out)
}

impl Prepared {
    /// Whether `name` was replaced.
    pub fn replaces(&self, name: &str) -> bool {
        self.replaced.iter().any(|n| n == name)
    }

    /// The new program is in every link: the old maps' pins go (the old program, gone
    /// from the links, held the last references).
    pub fn commit(&self, pin_dir: &Path) {
        for name in &self.replaced {
            let old = aside(pin_dir, name);
            if old.exists()
                && let Err(e) = fs::remove_file(&old)
            {
                log::warn!("removing {}: {e}", old.display());
            }
        }
    }

    /// Something failed before the new program was in every link: the old pins back
    /// (the new maps the load pinned in their place are dropped).
    pub fn rollback(&self, pin_dir: &Path) {
        for name in &self.replaced {
            let old = aside(pin_dir, name);
            if !old.exists() {
                continue;
            }
            let path = maps_dir(pin_dir).join(name);
            let _ = fs::remove_file(&path);
            if let Err(e) = move_pin(&old, &path) {
                log::error!("putting {} back: {e:#}", path.display());
            }
        }
    }
}

/// After loading, before anything is attached: give the new maps what the old config
/// carried (the sources table's hash key, the saved settings and, when the old version
/// had set them, that they are set: the keeper owns them from here, during an attack as
/// after it).
pub fn finish(prepared: &Prepared, maps: &mut Maps) -> anyhow::Result<()> {
    let Some(c) = &prepared.carry else {
        return Ok(());
    };
    let mut cfg = maps.read_config()?;
    if prepared.replaces(map_names::CONFIG) {
        // A config holding only the identity and the key, so `write_config` keeps the key.
        cfg.abi = ABI_VERSION;
        cfg.source_seed = c.source_seed;
        cfg.generation = c.generation;
        cfg.attack_calm_ns = c.attack_calm_ns;
        maps.config
            .set(0, cfg, 0)
            .context("writing the config map")?;
    }
    if prepared.replaces(map_names::HOST) {
        let mut host = c.host;
        if host.saved_syncookies >= 0 || host.saved_timestamps >= 0 {
            let now = crate::clock::monotonic_ns();
            host.cookies_since_ns = now;
            host.cookies_last_ns = now;
        }
        maps.write_host(&host)?;
    }
    Ok(())
}

/// `detach` on state of any layout: the saved settings, if they can be read.
pub fn saved_host(pin_dir: &Path) -> Option<HostState> {
    match pinned(pin_dir).ok()? {
        Pinned::Known(c) => Some(c.host),
        Pinned::Current => Maps::from_pins(pin_dir).ok()?.read_host().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maps_to_replace_follow_the_changes() {
        assert_eq!(
            changed_since(15),
            [map_names::HOST, map_names::CONFIG, map_names::STATS]
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(changed_since(ABI_VERSION).is_empty());
        assert_eq!(changed_since(9).len(), map_names::ALL.len());
        // Every version since the oldest known one is accounted for.
        let mut v = OLDEST_KNOWN + 1;
        for (abi, _) in LAYOUT_CHANGES {
            assert_eq!(*abi, v);
            v += 1;
        }
        assert_eq!(
            v - 1,
            ABI_VERSION,
            "a layout bump needs its LAYOUT_CHANGES entry"
        );
    }

    #[test]
    fn layout_15s_config_is_read_at_its_offsets() {
        let mut c: ConfigV15 = unsafe { mem::zeroed() };
        c.abi = 15;
        c.generation = 7;
        c.saved_syncookies = 1;
        c.saved_timestamps = -1;
        c.attack_calm_ns = 10;
        c.source_seed = [1, 2, 3, 4];
        // SAFETY: plain data, read as bytes.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts((&c as *const ConfigV15).cast(), mem::size_of_val(&c))
        };
        let carry = read_old_config(15, bytes).expect("layout 15");
        assert_eq!(carry.generation, 7);
        assert_eq!(carry.source_seed, [1, 2, 3, 4]);
        assert_eq!(carry.host.saved_syncookies, 1);
        assert_eq!(carry.host.saved_timestamps, -1);
        assert!(read_old_config(15, &bytes[1..]).is_none());
        assert!(read_old_config(14, bytes).is_none());
    }
}
