//! Userspace's side of the sources table (`SG_SOURCES`, see
//! [`synguard_common::sources`]): find and forget a source's bucket, and walk the tracked
//! sources.
//!
//! The walk reads the table through a read-only memory mapping of the array: a million
//! slots are 88 MiB, which `read(2)`-style lookups would copy a slot per system call.
//! Slots the kernel writes meanwhile may be seen half-written; the walk reports what it
//! reads (the counters of one source at worst mixed with another's), and never writes.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::maps::IterableMap as _;
use synguard_common::{
    Bucket, SourceKey,
    sources::{SEED_WORDS, SLOTS, Slot, WAYS, first_slot},
};

use crate::bpf::Maps;

/// The hash key the kernel places sources with (drawn when the maps were created).
pub fn seed(maps: &Maps) -> anyhow::Result<[u64; SEED_WORDS]> {
    Ok(maps.read_config()?.source_seed)
}

/// The slots of `key`'s set.
fn set(maps: &Maps, key: &SourceKey) -> anyhow::Result<std::ops::Range<u32>> {
    let first = first_slot(key, &seed(maps)?);
    Ok(first..first + WAYS)
}

fn read(maps: &Maps, i: u32) -> anyhow::Result<Slot> {
    maps.sources
        .get(&i, 0)
        .with_context(|| format!("reading slot {i} of the sources table"))
}

/// The slot holding `key`'s bucket, if any.
fn find(maps: &Maps, key: &SourceKey) -> anyhow::Result<Option<(u32, Slot)>> {
    for i in set(maps, key)? {
        let s = read(maps, i)?;
        if s.holds(key) {
            return Ok(Some((i, s)));
        }
    }
    Ok(None)
}

/// `key`'s bucket, if it is tracked at `now` (as [`for_each`] reports it).
pub fn get(maps: &Maps, key: &SourceKey, now: u64) -> anyhow::Result<Option<Bucket>> {
    Ok(find(maps, key)?
        .filter(|(_, s)| s.is_tracked(now))
        .map(|(_, s)| s.bucket))
}

/// Forget `key`'s bucket (its next SYN starts a full one). Whether there was one.
pub fn forget(maps: &mut Maps, key: &SourceKey) -> anyhow::Result<bool> {
    let Some((i, _)) = find(maps, key)? else {
        return Ok(false);
    };
    maps.sources
        .set(i, Slot::default(), 0)
        .with_context(|| format!("clearing slot {i} of the sources table"))?;
    Ok(true)
}

/// Call `f` for every source tracked at `now` (see `Slot::is_tracked`); their number.
pub fn for_each(
    maps: &Maps,
    now: u64,
    mut f: impl FnMut(&SourceKey, &Bucket),
) -> anyhow::Result<usize> {
    let view = View::new(maps)?;
    let mut n = 0;
    for i in 0..SLOTS as usize {
        if let Some(s) = view.slot(i)
            && s.is_tracked(now)
        {
            f(&s.key, &s.bucket);
            n += 1;
        }
    }
    Ok(n)
}

/// The table mapped read-only.
struct View {
    base: *const Slot,
    len: usize,
}

impl View {
    fn new(maps: &Maps) -> anyhow::Result<Self> {
        let fd = maps.sources.map().fd().as_fd().as_raw_fd();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (SLOTS as usize * size_of::<Slot>()).div_ceil(page) * page;
        // SAFETY: a shared read-only mapping of a map created with BPF_F_MMAPABLE; the
        // kernel checks the length against the array's size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping the sources table (SG_SOURCES) into memory");
        }
        Ok(Self {
            base: base.cast(),
            len,
        })
    }

    /// Slot `i`, skipping empty ones without copying them.
    fn slot(&self, i: usize) -> Option<Slot> {
        debug_assert!(i < SLOTS as usize);
        // SAFETY: `i` is below SLOTS, so the slot lies inside the mapping; the kernel
        // writes it concurrently, hence volatile reads of plain data (any bytes are a
        // valid `Slot`).
        unsafe {
            let p = self.base.add(i);
            if std::ptr::read_volatile(&raw const (*p).bucket.last_seen_ns) == 0 {
                return None;
            }
            Some(std::ptr::read_volatile(p))
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast_mut().cast(), self.len) };
    }
}
