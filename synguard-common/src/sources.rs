//! The sources table (`SG_SOURCES`): one token bucket per source, in an array the XDP
//! program indexes itself.
//!
//! A kernel hash map costs the packet path a call into the map code, which calls again
//! to hash the key, walk the bucket and compare keys; on hosts whose CPUs need return
//! thunks (AMD's SRSO mitigation) every one of those returns is expensive. An array
//! lookup is inlined by the verifier into a few instructions. So the table is an array
//! of [`SLOTS`] slots in sets of [`WAYS`]: a source lives in one of the slots of the set
//! that [`set_of`] (a hash keyed with a secret seed from userspace, so a remote sender
//! cannot aim sources at one set) names for it.
//!
//! What happens when a new source's set is taken is the point of the design: a slot is
//! reused when it is empty or its bucket has **refilled** (`tat <= now`: a source whose
//! bucket is full again). Forgetting a full bucket changes no verdict, because a source
//! without a bucket starts with a full one. So a flood of forged sources recycles the
//! slots of sources that are within their limit, never the state of a source that is
//! being limited, and never bans anyone. Only when every slot of the set holds a source
//! that is spending its burst right now does the new source pass unmetered
//! (`syn_untracked`, with a warning at most once a second per CPU), as a full hash map
//! did before, but per set: with two ways and a million slots that needs three sources
//! hashed to the same set within one refill interval (`1 / syn-rate`).
//!
//! Races (no locks on the packet path, as with the hash map before): two CPUs claiming
//! the same slot for different sources at once can leave one source's key with the
//! other's bucket, or a key that is neither, which the next SYNs of the sources involved
//! recreate (a burst of slack for them); a SYN of the slot's old source counted at the
//! instant a newcomer claims it can land in the newcomer's fresh bucket: one SYN counted
//! against the wrong source, the same slack as two CPUs updating one bucket at once.
//! Userspace clearing a slot (`unban`) as the kernel reuses it gives the newcomer a full
//! bucket.

use crate::{Bucket, SourceKey, capacity};

/// Slots per set.
pub const WAYS: u32 = 2;
/// Slots in the table.
pub const SLOTS: u32 = capacity::SOURCES;
/// Sets in the table (a power of two).
pub const SETS: u32 = SLOTS / WAYS;
const SET_BITS: u32 = SETS.trailing_zeros();

/// Words of secret key for [`set_of`].
pub const SEED_WORDS: usize = 4;

/// How long a refilled bucket that saw no SYN is still reported as a tracked source by
/// `status`, `top` and `explain` (the kernel may reuse its slot earlier).
pub const IDLE_NS: u64 = 10_000_000_000;

/// One slot of `SG_SOURCES`. Empty while `bucket.last_seen_ns` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub key: SourceKey,
    /// The kernel's memory of the source's proof (see [`crate::Proof`]), so a source over
    /// its limit is not looked up in `SG_VERIFIED` for every SYN: [`proof_mark`] of when
    /// it was last looked up and what it found; 0 until then. A new source starts at 0.
    pub proof_mark: u32,
    pub bucket: Bucket,
}

/// A [`Slot::proof_mark`] holds when (in units of 2^[`PROOF_MARK_SHIFT`] ns, ~16.8 ms) the
/// proof was looked up, and in its top bit whether the source was proven.
pub const PROOF_MARK_SHIFT: u32 = 24;
/// How long a mark is believed, in its units (~100 ms): a proof made or lost meanwhile
/// shows within that.
pub const PROOF_MARK_TTL: u32 = 6;
const PROVEN_BIT: u32 = 1 << 31;

/// The mark of a lookup at `now` that found the source `proven` or not.
#[inline(always)]
pub const fn proof_mark(now: u64, proven: bool) -> u32 {
    // Never 0 (the unset mark), whatever the time.
    let at = ((now >> PROOF_MARK_SHIFT) as u32 & !PROVEN_BIT) | 1;
    if proven { at | PROVEN_BIT } else { at }
}

/// What a mark says at `now`: `Some(proven)` while it holds, `None` when it must be looked
/// up again.
#[inline(always)]
pub const fn proof_from_mark(mark: u32, now: u64) -> Option<bool> {
    if mark == 0 {
        return None;
    }
    let now_units = ((now >> PROOF_MARK_SHIFT) as u32 & !PROVEN_BIT) | 1;
    let age = now_units.wrapping_sub(mark & !PROVEN_BIT) & !PROVEN_BIT;
    if age > PROOF_MARK_TTL {
        return None;
    }
    Some(mark & PROVEN_BIT != 0)
}

impl Slot {
    /// Never used, or cleared by userspace.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.bucket.last_seen_ns == 0
    }

    /// Whether this slot holds `key`'s bucket.
    #[inline(always)]
    pub fn holds(&self, key: &SourceKey) -> bool {
        same_key(&self.key, key) && !self.is_empty()
    }

    /// Whether the slot may be given to another source at `now`: empty, or its bucket
    /// has refilled (forgetting it changes no verdict).
    #[inline(always)]
    pub fn is_free(&self, now: u64) -> bool {
        self.is_empty() || self.bucket.tat_ns <= now
    }

    /// Whether userspace reports the slot as a tracked source at `now`: not empty, and
    /// either still spending its burst or seen within [`IDLE_NS`].
    pub fn is_tracked(&self, now: u64) -> bool {
        !self.is_empty()
            && (self.bucket.tat_ns > now || now.saturating_sub(self.bucket.last_seen_ns) <= IDLE_NS)
    }
}

/// The slot a new source takes in its set at `now`: an empty one first, else the
/// refilled one seen least recently; `None` when every slot is spending its burst.
#[inline(always)]
pub fn pick(a: &Slot, b: &Slot, now: u64) -> Option<bool> {
    if a.is_empty() {
        return Some(false);
    }
    if b.is_empty() {
        return Some(true);
    }
    match (a.is_free(now), b.is_free(now)) {
        (true, true) => Some(b.bucket.last_seen_ns < a.bucket.last_seen_ns),
        (true, false) => Some(false),
        (false, true) => Some(true),
        (false, false) => None,
    }
}

/// Bytes `i..i + 4` of the key's address as a native-endian word (`i` a multiple of 4),
/// read as one aligned 4-byte load: the BPF backend cannot tell the alignment of a
/// byte array in a map value, and assembled from bytes the read cost four loads and six
/// shifts and ors per word, on every SYN.
#[inline(always)]
fn word(k: &SourceKey, i: usize) -> u32 {
    debug_assert!(i.is_multiple_of(4) && i < 16);
    // SAFETY: `SourceKey` is `repr(C)` with a `u32` field, so 4-byte aligned, and its
    // address fills bytes 0..16; every bit pattern is a valid `u32`.
    unsafe { core::ptr::read((k as *const SourceKey).cast::<u32>().add(i / 4)) }
}

/// Compare two keys a word at a time (no `memcmp` in BPF).
#[inline(always)]
pub fn same_key(a: &SourceKey, b: &SourceKey) -> bool {
    a.prefix_len == b.prefix_len
        && word(a, 12) == word(b, 12)
        && word(a, 8) == word(b, 8)
        && word(a, 4) == word(b, 4)
        && word(a, 0) == word(b, 0)
}

/// The set of a source: NH (a sum of products of key words plus secret words, universal
/// over the 64-bit sum), an xor-shift so that the result is not linear in any one word
/// (an IPv4 source varies in one word only), then multiply-shift with a secret odd
/// multiplier. A few multiplications, no loops, the same in the kernel and userspace.
#[inline(always)]
pub fn set_of(key: &SourceKey, seed: &[u64; SEED_WORDS]) -> u32 {
    let k = |i: usize| (seed[i / 2] >> (32 * (i % 2))) as u32;
    let m = |x: u32, y: u32| u64::from(x) * u64::from(y);
    let a = key;
    let h = m(word(a, 0).wrapping_add(k(0)), word(a, 4).wrapping_add(k(1)))
        .wrapping_add(m(
            word(a, 8).wrapping_add(k(2)),
            word(a, 12).wrapping_add(k(3)),
        ))
        .wrapping_add(m(key.prefix_len.wrapping_add(k(4)), k(5) | 1));
    ((h ^ (h >> 29)).wrapping_mul(seed[3] | 1) >> (64 - SET_BITS)) as u32
}

/// The first slot of a source's set.
#[inline(always)]
pub fn first_slot(key: &SourceKey, seed: &[u64; SEED_WORDS]) -> u32 {
    set_of(key, seed) * WAYS
}

/// Attack mode's count of SYNs per source set (`SG_SYN_SKETCH`), in front of the table.
///
/// Under a flood of forged sources, the table's slot is the program's dearest access: a
/// random line in 88 MiB, a cache and TLB miss per SYN (`perf` put three quarters of the
/// program's own time on that one load, a quarter of the server's CPU per frame). While
/// cookies are answered, a SYN is therefore first counted here, in [`SKETCH_ROWS`] x
/// [`SKETCH_COLS`] 16-bit counters (128 KiB, shared by the CPUs, small enough to stay in
/// a core's cache) indexed by the low bits of its source's set, per window of
/// 2^[`SKETCH_WINDOW_SHIFT`] ns (134 ms); a source whose counter is still within
/// [`sketch_quiet_limit`] gets its cookie without a bucket. Sources sharing a counter
/// only add up (never hide each other), so a source sending more than a quarter of
/// `syn-rate` is metered in full within a window: limited, challenged or banned as
/// before; what escapes its bucket is at most that quarter, answered with cookies (or
/// passed, for a proven source). Concurrent updates can lose a count, as the table's
/// buckets can. Outside attack mode every SYN is metered in full.
pub const SKETCH_ROWS: u32 = 8;
/// Counters per row (one map entry).
pub const SKETCH_COLS: usize = 8192;
/// The window: 2^27 ns, about 134 ms.
pub const SKETCH_WINDOW_SHIFT: u32 = 27;
/// The most a counter holds.
const SKETCH_MAX: u16 = 0xff;

/// The row and column of a source's counter, from its set ([`set_of`]).
#[inline(always)]
pub const fn sketch_cell(set: u32) -> (u32, usize) {
    (
        (set >> 13) & (SKETCH_ROWS - 1),
        (set as usize) & (SKETCH_COLS - 1),
    )
}

/// SYNs a counter may see in a window before its sources are metered in full: a quarter
/// of what `syn-rate` (one SYN per `interval_ns`) allows in a window, at most 254. Below
/// 30 SYN/s that is 0: every SYN is metered.
#[inline(always)]
pub const fn sketch_quiet_limit(interval_ns: u64) -> u32 {
    let per_window = (1u64 << SKETCH_WINDOW_SHIFT) / if interval_ns == 0 { 1 } else { interval_ns };
    let q = per_window / 4;
    if q >= SKETCH_MAX as u64 {
        SKETCH_MAX as u32 - 1
    } else {
        q as u32
    }
}

/// Count a SYN in `counter` (the low 8 bits of its window's number in the high byte, the
/// count in the low byte; a window 256 windows old only adds to the count) at `now`;
/// returns the new counter and whether the source may skip its bucket, given the
/// [`sketch_quiet_limit`] (`Config::syn_quiet`: no division per packet).
#[inline(always)]
pub const fn sketch_count(counter: u16, now: u64, quiet: u32) -> (u16, bool) {
    let window = ((now >> SKETCH_WINDOW_SHIFT) & 0xff) as u16;
    let count = if counter >> 8 == window {
        let c = counter & SKETCH_MAX;
        if c < SKETCH_MAX { c + 1 } else { c }
    } else {
        1
    };
    (window << 8 | count, count as u32 <= quiet)
}

/// Attack mode's filter in front of `SG_VERIFIED` (`SG_PROOF_FILTER`): one bit per source
/// set ([`set_of`]), set by every writer of a proof (the kernel's cookie check and
/// `sock_ops` program, and `run`'s own proofs) before or as it writes the proof. An
/// unverified SYN in attack mode looks its source up in `SG_VERIFIED` only when its bit
/// is set: a forged flood's random sources almost never are, and the hash lookup they
/// spare is a miss in a 4 MiB bucket array (about 5 % of the server's CPU per forged
/// frame). 64 KiB, small enough to stay in cache.
///
/// A bit says "maybe": sources sharing a set share it, and a proof that ends leaves it set
/// until `run` clears the bits no proof holds (every `proofs::REFRESH`). A missing bit
/// would cost a proven source only its shortcut: its SYNs are answered with cookies, as an
/// unproven source's are, and its next accepted connection sets the bit again. That can
/// happen only when two writers set bits of one word at the same instant (the kernel's
/// writes are not atomic: a lost bit is harmless) or `run` clears a word as the kernel
/// sets a bit in it (see `proofs::sync_filter`).
pub const PROOF_FILTER_ROWS: u32 = 8;
/// Words of 64 bits per row (one map entry).
pub const PROOF_FILTER_WORDS: usize = 1024;
const _: () = assert!(PROOF_FILTER_ROWS as u64 * PROOF_FILTER_WORDS as u64 * 64 == SETS as u64);

/// The row, word and bit of a source set in the proof filter.
#[inline(always)]
pub const fn proof_filter_bit(set: u32) -> (u32, usize, u64) {
    (
        (set >> 16) & (PROOF_FILTER_ROWS - 1),
        (set >> 6) as usize & (PROOF_FILTER_WORDS - 1),
        1u64 << (set & 63),
    )
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;
    use crate::{prefix_mask, source_key_v4, source_key_v6};

    const SEED: [u64; SEED_WORDS] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];

    fn v4(i: u32) -> SourceKey {
        source_key_v4(i.to_be_bytes(), prefix_mask::<4>(32), 32)
    }

    #[test]
    fn every_set_has_its_own_bit_in_the_proof_filter() {
        for set in 0..SETS {
            let (row, word, bit) = proof_filter_bit(set);
            assert!(row < PROOF_FILTER_ROWS && word < PROOF_FILTER_WORDS);
            assert_eq!(bit.count_ones(), 1);
            let at =
                (row as usize * PROOF_FILTER_WORDS + word) * 64 + bit.trailing_zeros() as usize;
            assert_eq!(at, set as usize);
        }
    }

    #[test]
    fn the_sketch_lets_quiet_sources_skip_their_bucket_and_never_a_loud_one() {
        // syn-rate 200/s: 26 SYNs per 134 ms window, a quarter of it is 6.
        let interval = 5_000_000;
        assert_eq!(sketch_quiet_limit(interval), 6);
        assert_eq!(
            sketch_quiet_limit(1_000_000_000),
            0,
            "1/s: every SYN metered"
        );
        assert!(!sketch_count(0, 5 << 40, sketch_quiet_limit(1_000_000_000)).1);
        assert_eq!(
            sketch_quiet_limit(100),
            254,
            "10M/s: capped below the saturation"
        );
        let t = 5u64 << 40;
        let mut c = 0;
        let mut quiet = 0;
        for i in 0..10 {
            let (next, q) = sketch_count(c, t + i, sketch_quiet_limit(interval));
            c = next;
            quiet += u32::from(q);
        }
        assert_eq!(
            quiet, 6,
            "the first six of the window skip, the rest are metered"
        );
        assert_eq!(c & 0xff, 10);
        // The next window starts again.
        let (next, q) = sketch_count(c, t + (1 << SKETCH_WINDOW_SHIFT), 6);
        assert!(q);
        assert_eq!(next & 0xff, 1);
        // A counter saturates rather than spilling into the window's bits, and a full
        // one is never quiet, whatever the rate.
        let full = (((t >> SKETCH_WINDOW_SHIFT) & 0xff) as u16) << 8 | 0xff;
        assert_eq!(
            sketch_count(full, t, sketch_quiet_limit(100)),
            (full, false)
        );
        // Cells cover the low 16 bits of a set.
        assert_eq!(sketch_cell(0x7_ffff), (7, 8191));
        assert_eq!(sketch_cell(0x2000), (1, 0));
    }

    #[test]
    fn geometry() {
        assert!(SETS.is_power_of_two());
        assert_eq!(SETS * WAYS, SLOTS);
        assert_eq!(core::mem::size_of::<Slot>(), 88);
    }

    #[test]
    fn sets_stay_in_range_and_depend_on_the_seed() {
        // Every seed word matters, for IPv4 and IPv6 keys, and no two flipped seeds
        // merely shift the sets (which a hash linear in the address would).
        for word in 0..SEED_WORDS {
            for bit in [3, 40] {
                let mut other = SEED;
                other[word] ^= 1 << bit;
                let (mut moved, mut shifts) = (0, std::collections::BTreeSet::new());
                for i in 0..10_000u32 {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                    a[4..8].copy_from_slice(&i.to_be_bytes());
                    for k in [
                        v4(0xc612_0000 + i),
                        source_key_v6(a, prefix_mask::<16>(64), 64),
                    ] {
                        let s = set_of(&k, &SEED);
                        assert!(s < SETS);
                        assert_eq!(first_slot(&k, &SEED), s * WAYS);
                        let t = set_of(&k, &other);
                        if t != s {
                            moved += 1;
                        }
                        shifts.insert(t.wrapping_sub(s) % SETS);
                    }
                }
                assert!(
                    moved > 19_800,
                    "word {word} bit {bit}: {moved} of 20000 moved"
                );
                assert!(shifts.len() > 1000, "word {word} bit {bit}: a mere shift");
            }
        }
    }

    /// Sequential addresses (a forged flood walking a range) spread at least as well as
    /// random ones would: with 2^17 sources in 2^19 sets, the fullest set holds a
    /// handful and at least the 22 % of the sets random keys would use (Poisson(1/4):
    /// 1 - e^-0.25) are used. (A range walked in one word is spread evenly: the hash is
    /// linear in each word before the secret multiplier.)
    #[test]
    fn a_range_of_sources_spreads_over_the_sets() {
        let n = 1u32 << 17;
        let mut per_set = vec![0u8; SETS as usize];
        for i in 0..n {
            let s = set_of(&v4(0xc612_0000 + i), &SEED) as usize;
            per_set[s] = per_set[s].saturating_add(1);
        }
        let max = *per_set.iter().max().unwrap();
        let used = per_set.iter().filter(|&&c| c > 0).count();
        assert!(max <= 8, "fullest set {max}");
        assert!(used >= 100_000, "sets used {used}");
        // The same for IPv6 /64s in 2001:db8::/32.
        let mut per_set = vec![0u8; SETS as usize];
        for i in 0..n {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[4..8].copy_from_slice(&i.to_be_bytes());
            let s = set_of(&source_key_v6(a, prefix_mask::<16>(64), 64), &SEED) as usize;
            per_set[s] = per_set[s].saturating_add(1);
        }
        assert!(*per_set.iter().max().unwrap() <= 8);
    }

    #[test]
    fn keys_compare_by_every_word() {
        let a = v4(0xc633_6407);
        assert!(same_key(&a, &a));
        for byte in 0..16 {
            let mut b = a;
            b.addr[byte] ^= 1;
            assert!(!same_key(&a, &b), "byte {byte}");
        }
        let mut b = a;
        b.prefix_len = 24;
        assert!(!same_key(&a, &b));
    }

    #[test]
    fn proof_marks_hold_about_100_ms() {
        let t = 7_000_000_000_000u64;
        for proven in [false, true] {
            let m = proof_mark(t, proven);
            assert_ne!(m, 0);
            assert_eq!(proof_from_mark(m, t), Some(proven));
            assert_eq!(proof_from_mark(m, t + 90_000_000), Some(proven));
            assert_eq!(proof_from_mark(m, t + 130_000_000), None);
        }
        assert_eq!(proof_from_mark(0, t), None, "never looked up");
        // Across the wrap of the 31-bit time.
        let wrap = (1u64 << (31 + PROOF_MARK_SHIFT)) - 10_000_000;
        assert_eq!(
            proof_from_mark(proof_mark(wrap, true), wrap + 50_000_000),
            Some(true)
        );
    }

    fn slot(key: SourceKey, tat: u64, last: u64) -> Slot {
        Slot {
            key,
            proof_mark: 0,
            bucket: Bucket {
                tat_ns: tat,
                last_seen_ns: last,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_new_source_takes_an_empty_slot_then_the_stalest_refilled_one() {
        let now = 1_000;
        let empty = Slot::default();
        let busy = slot(v4(1), now + 10, now);
        let full_old = slot(v4(2), now - 500, 100);
        let full_new = slot(v4(3), now - 1, 900);
        assert_eq!(pick(&empty, &busy, now), Some(false));
        assert_eq!(pick(&busy, &empty, now), Some(true));
        assert_eq!(pick(&busy, &full_new, now), Some(true));
        assert_eq!(pick(&full_new, &busy, now), Some(false));
        assert_eq!(pick(&full_new, &full_old, now), Some(true));
        assert_eq!(pick(&full_old, &full_new, now), Some(false));
        // A source spending its burst keeps its slot even when it was seen longer ago
        // than the refilled one (it paused mid-burst).
        let busy_old = slot(v4(5), now + 10, 50);
        assert_eq!(pick(&busy_old, &full_new, now), Some(true));
        assert_eq!(pick(&full_new, &busy_old, now), Some(false));
        // Two sources spending their bursts: the newcomer gets no bucket.
        assert_eq!(pick(&busy, &slot(v4(4), now + 1, now), now), None);
        // An empty slot never matches a key, not even the all-zero one.
        assert!(!empty.holds(&SourceKey {
            addr: [0; 16],
            prefix_len: 0
        }));
        assert!(busy.holds(&v4(1)));
    }

    #[test]
    fn tracked_means_busy_or_recently_seen() {
        let now = 100 * IDLE_NS;
        assert!(!Slot::default().is_tracked(now));
        assert!(slot(v4(1), now + 1, 1).is_tracked(now));
        assert!(slot(v4(1), 0, now - IDLE_NS).is_tracked(now));
        assert!(!slot(v4(1), 0, now - IDLE_NS - 1).is_tracked(now));
    }
}
