//! Reading the pinned maps once per interval into a [`Reading`] (the only part of
//! `top` that touches the kernel).

use super::*;

/// One read of the pinned state: raw values, no rates.
#[derive(Clone, Debug)]
pub struct Reading {
    /// `CLOCK_MONOTONIC` ns of the reading (the clock of every stamp in the maps).
    pub mono_ns: u64,
    /// Wall-clock time of the reading.
    pub wall: SystemTime,
    pub daemon: bool,
    pub monitor: bool,
    pub attack_syn_rate: u64,
    /// The `syn-cookies` setting (`COOKIES_*`).
    pub cookies: u32,
    /// Attached interfaces with their stats slot and attack state.
    pub ifaces: Vec<IfaceReading>,
    /// Counters by stats slot (each slot once, even if two interfaces share slot 0).
    pub counters: BTreeMap<u32, [u64; stat::COUNT]>,
    pub rules: Vec<RuleEntry>,
    /// The busiest sources by their bucket's SYN rate, busiest first, at most [`TOP`].
    pub top: Vec<SourceReading>,
    /// Sources with a bucket.
    pub sources: usize,
}

#[derive(Clone, Debug)]
pub struct IfaceReading {
    pub name: String,
    pub slot: u32,
    pub state: IfState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReading {
    pub net: IpNet,
    /// SYNs per second, from the bucket's rate windows (see [`smoothed_rate`]).
    pub rate: u64,
    /// Its bucket is empty: the next SYN is over the limit.
    pub empty: bool,
    /// It completed a cookie handshake within `verified-for`: no cookie challenge.
    pub verified: bool,
}

/// The `n` largest items pushed, in O(log n) time per push and O(n) memory.
pub struct TopN<T: Ord> {
    n: usize,
    heap: BinaryHeap<Reverse<T>>,
}

impl<T: Ord> TopN<T> {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.heap.len() < self.n {
            self.heap.push(Reverse(item));
        } else if self.heap.peek().is_some_and(|Reverse(min)| item > *min) {
            self.heap.pop();
            self.heap.push(Reverse(item));
        }
    }

    /// The items kept, largest first.
    pub fn into_sorted(self) -> Vec<T> {
        // Ascending order of `Reverse` is descending order of the items.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(t)| t)
            .collect()
    }
}

/// A source's SYN rate over the last one to two seconds, from the rate windows its bucket
/// keeps: this window and the one before if the source was busy then, else this window
/// over at least a whole window's length. 0 once it has been quiet for two windows.
///
/// Not [`crate::daemon::source_rate`], which a ban reports: that one divides by the age
/// of the current window alone (at least 1 ms), the right thing for a flooder caught
/// in its first milliseconds, but a source that sent a single SYN 5 ms ago would rank
/// at 200 SYN/s, and a forged flood is a million such sources.
pub fn smoothed_rate(b: &synguard_common::Bucket, now: u64) -> u64 {
    const WINDOW: u64 = synguard_common::RATE_WINDOW_NS;
    if now.saturating_sub(b.last_seen_ns) > 2 * WINDOW {
        return 0;
    }
    let age = now.saturating_sub(b.window_start_ns);
    let (syns, span) = if b.prev_window_syns != 0 {
        (b.prev_window_syns + b.window_syns, WINDOW + age)
    } else {
        (b.window_syns, age.max(WINDOW))
    };
    // 128-bit: a SYN count times 10^9 cannot overflow.
    (u128::from(syns) * 1_000_000_000 / u128::from(span.max(1))) as u64
}

/// Read the pinned maps once. `None` when the pinned state is gone.
pub fn sample(state: &State) -> anyhow::Result<Option<Reading>> {
    if !pins::has_state(&state.pin_dir) {
        return Ok(None);
    }
    let maps = &state.maps;
    let cfg = maps.read_config()?;
    let mono_ns = clock::monotonic_ns();
    let wall = SystemTime::now();
    let mut ifaces = Vec::new();
    let mut counters = BTreeMap::new();
    for (ifindex, name, _) in pins::pinned_links(&state.pin_dir) {
        let slot = capacity::stats_slot(ifindex);
        if let std::collections::btree_map::Entry::Vacant(v) = counters.entry(slot) {
            v.insert(maps.counters(slot)?);
        }
        ifaces.push(IfaceReading {
            name,
            slot,
            state: maps.ifstate(slot)?,
        });
    }
    let rules = rules::list(maps)?;
    // (rate, address, prefix length, bucket empty): ordered by rate, then address.
    let mut top = TopN::new(TOP);
    let sources = crate::sources::for_each(maps, mono_ns, |k, b| {
        let rate = smoothed_rate(b, mono_ns);
        if rate > 0 {
            let empty =
                gcra::tokens(b.tat_ns, mono_ns, cfg.syn_interval_ns, cfg.syn_tolerance_ns) == 0;
            top.push((rate, k.addr, k.prefix_len, empty));
        }
    })
    .context("walking the sources table")?;
    let top = top
        .into_sorted()
        .into_iter()
        .filter_map(|(rate, addr, prefix_len, empty)| {
            let key = synguard_common::SourceKey { addr, prefix_len };
            let verified = maps
                .verified
                .get(&key, 0)
                .is_ok_and(|p| p.until_ns > mono_ns);
            Some(SourceReading {
                net: source_net(&key)?,
                rate,
                empty,
                verified,
            })
        })
        .collect();
    Ok(Some(Reading {
        mono_ns,
        wall,
        daemon: pins::daemon_running(&state.pin_dir),
        monitor: cfg.mode == synguard_common::MODE_MONITOR,
        attack_syn_rate: u64::from(cfg.attack_syn_rate),
        cookies: cfg.syn_cookies,
        ifaces,
        counters,
        rules,
        top,
        sources,
    }))
}

// ---------------------------------------------------------------------------------------
// The model
