//! The hints in front of the tries. The operator's allow and block entries
//! (`SG_RULES_V4`/`V6`) and the automatic bans (`SG_BANS_V4`/`V6`) live in separate
//! tries, each with a bitmap: for IPv4 one bit per /24 of the address space
//! (`SG_RULES_HINT`, `SG_BANS_HINT`), set when an entry of that trie covers or lies
//! inside the /24. The kernel walks a trie only for sources whose bit is set, so the
//! common packet (no entry near its source) costs an inlined array read instead of a trie
//! walk, however many entries the tries hold, and a banned source's lookup does not grow
//! with the operator's blocklist (nor a blocked one's with the number of bans).
//!
//! A set bit without an entry only costs a walk; a missing bit would hide an entry, so
//! userspace sets bits before it stores entries and clears them only after removing
//! them, and the kernel sets the bit of each ban it makes. Bans made under an
//! `ipv4-prefix` shorter than [`HINT_MIN_BAN_PREFIX`] would need more than one word, so
//! with such a setting the kernel ignores the bans hint and always walks the bans trie.
//!
//! IPv6 has hints of the same shape (`SG_RULES_HINT6`, `SG_BANS_HINT6`) over bits 16 to
//! 39 of the address ([`v6_index`]): one bit per /40 with the first 16 bits folded away
//! (2001:db8:: and 2a00:db8:: share a bit; a shared bit only costs a walk). Entries
//! shorter than /16 set every bit; bans need `ipv6-prefix` of at least
//! [`HINT_MIN_BAN_PREFIX_V6`].

/// Words of 64 bits: 2^24 /24s.
pub const WORDS: u32 = 1 << 18;
/// The shortest ban prefix whose bits lie in one word (2^(24-19) = 32 bits).
pub const HINT_MIN_BAN_PREFIX: u32 = 19;
/// The same for IPv6 (16 bits folded away).
pub const HINT_MIN_BAN_PREFIX_V6: u32 = HINT_MIN_BAN_PREFIX + V6_SKIP;
/// Leading bits of an IPv6 address the IPv6 hint ignores.
pub const V6_SKIP: u32 = 16;

/// The 4 bytes of an IPv6 address the IPv6 hint indexes by, laid out like an IPv4
/// address (so [`bit`], [`span`] and [`ban_word`] serve both).
#[inline(always)]
pub const fn v6_index(addr: &[u8; 16]) -> [u8; 4] {
    [addr[2], addr[3], addr[4], addr[5]]
}

/// An IPv6 prefix length in the IPv6 hint's terms.
#[inline(always)]
pub const fn v6_len(prefix_len: u32) -> u32 {
    prefix_len.saturating_sub(V6_SKIP)
}

/// The /24 number of an address (network-order bytes).
#[inline(always)]
pub const fn slash24(addr: [u8; 4]) -> u32 {
    u32::from_be_bytes(addr) >> 8
}

/// The word and bit of the /24 an address lies in.
#[inline(always)]
pub const fn bit(addr: [u8; 4]) -> (u32, u64) {
    let n = slash24(addr);
    (n >> 6, 1u64 << (n & 63))
}

/// The /24s `[first, end)` a prefix touches (`addr` is its network address).
pub const fn span(addr: [u8; 4], prefix_len: u32) -> (u32, u32) {
    let first = slash24(addr);
    if prefix_len >= 24 {
        (first, first + 1)
    } else {
        let n = 1u32 << (24 - prefix_len);
        let first = first & !(n - 1);
        (first, first + n)
    }
}

/// The bits of word `word` that the /24s `[first, end)` cover.
pub const fn word_mask(word: u32, first: u32, end: u32) -> u64 {
    let lo = word << 6;
    let hi = lo + 64;
    let a = if first > lo { first } else { lo };
    let b = if end < hi { end } else { hi };
    if a >= b {
        return 0;
    }
    let n = b - a;
    let ones = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    ones << (a - lo)
}

/// For a ban of at least [`HINT_MIN_BAN_PREFIX`] bits: its one word and mask.
#[inline(always)]
pub const fn ban_word(addr: [u8; 4], prefix_len: u32) -> (u32, u64) {
    let (first, end) = span(addr, prefix_len);
    let n = end - first;
    let ones = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    (first >> 6, ones << (first & 63))
}
