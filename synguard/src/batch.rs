//! Reading a whole hash map in batches (`BPF_MAP_LOOKUP_BATCH`), a few hundred entries
//! per system call instead of two calls per entry: the verified sources (an LRU hash of
//! up to a million entries) are counted by the daemon's samples, `status` and the
//! metrics. (The sources table is an array, read through a memory mapping instead: see
//! `crate::sources`.)
//!
//! aya 0.14 has no batch API, so this is the one raw `bpf(2)` call in synguard: a fixed,
//! documented kernel interface (`union bpf_attr`, the `batch` member).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Call `f` for every entry of a hash map, `per_call` entries per system call. Entries
/// added or removed meanwhile may or may not be seen, each at most once.
pub fn for_each<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    per_call: usize,
    mut f: impl FnMut(&K, &V),
) -> std::io::Result<usize> {
    let fd = map_fd(map);
    let n = per_call.max(1);
    let mut keys: Vec<K> = Vec::with_capacity(n);
    let mut values: Vec<V> = Vec::with_capacity(n);
    // The batch cursor: the kernel writes it into `out_batch` and reads it back from
    // `in_batch`; for a hash map it is a bucket index (u32), kept in a u64 to be safe.
    let mut cursor = 0u64;
    let mut first = true;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut cursor) as u64 },
            out_batch: (&raw mut cursor) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: n as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` batch member; the key and value buffers
        // have room for `count` entries, and the kernel writes at most that many.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let got = attr.count as usize;
        // SAFETY: the kernel filled `got` keys and values (also when it returns ENOENT
        // for the last, partial batch).
        unsafe {
            keys.set_len(got);
            values.set_len(got);
        }
        for (k, v) in keys.iter().zip(&values) {
            f(k, v);
        }
        total += got;
        // SAFETY: plain data; forget the entries before the next call overwrites them.
        unsafe {
            keys.set_len(0);
            values.set_len(0);
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Some(e) => return Err(e),
        }
        first = false;
    }
}

fn map_fd<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    map.map().fd().as_fd().as_raw_fd() as u32
}
