//! The embedded XDP program and typed handles on its maps.
//!
//! Two ways in: [`Loaded::load`] loads the program from the object embedded in this
//! binary (optionally adopting or creating pins), and [`Maps::from_pins`] opens the maps
//! another process pinned, which is how every CLI command reaches a running `synguard run`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey},
    programs::{ProgramError, Xdp},
};
use synguard_common::{
    BanCache, Config, IfState, Proof, Rule, RuleKeyV4, RuleKeyV6, SourceKey, Stats, capacity,
    map_names,
    sources::{self, Slot},
    stat,
};

/// The compiled XDP program, embedded at build time (see `build.rs`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synguard"));

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "synguard";

pub use crate::version::BUILD_ID;

pub type RulesV4 = LpmTrie<MapData, RuleKeyV4, Rule>;
pub type RulesV6 = LpmTrie<MapData, RuleKeyV6, Rule>;
pub type V4Key = LpmKey<RuleKeyV4>;
pub type V6Key = LpmKey<RuleKeyV6>;

/// Typed handles on every map of the program.
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub stats: PerCpuArray<MapData, Stats>,
    /// The operator's allow and block entries.
    pub rules_v4: RulesV4,
    pub rules_v6: RulesV6,
    /// Automatic bans (same key and value types; see `rules`).
    pub bans_v4: RulesV4,
    pub bans_v6: RulesV6,
    /// Token buckets (see `crate::sources`).
    pub sources: Array<MapData, Slot>,
    /// The ring buffer; `None` once taken by the event reader.
    pub events: Option<RingBuf<MapData>>,
    pub ifstate: Array<MapData, IfState>,
    /// Verified sources and until when (`CLOCK_MONOTONIC` ns).
    pub verified: HashMap<MapData, SourceKey, Proof>,
    /// Which /24s may hold an IPv4 rule (see `synguard_common::hint`; kept by `rules`).
    pub rules_hint: Array<MapData, u64>,
    /// The same for IPv6 entries.
    pub rules_hint6: Array<MapData, u64>,
    /// The same for the bans tries.
    pub bans_hint: Array<MapData, u64>,
    pub bans_hint6: Array<MapData, u64>,
    /// Each CPU's memory of banned IPv4 sources (see `synguard_common::BanCache`).
    pub ban_cache: PerCpuArray<MapData, BanCache>,
    /// Changed after every change userspace makes to the bans tries (see
    /// [`Maps::new_bans_epoch`]).
    pub bans_epoch: Array<MapData, u64>,
    /// This machine's addresses, for attack mode (see `crate::locals`).
    pub local_v4: HashMap<MapData, u32, u8>,
    pub local_v6: HashMap<MapData, [u8; 16], u8>,
    /// The destination ports the machine's NAT rules rewrite (see `crate::nat`).
    pub nat_ports: Array<MapData, [u64; synguard_common::PORT_WORDS]>,
    /// Which source sets may hold a proof (see `synguard_common::sources::proof_filter_bit`;
    /// kept by `proofs`).
    pub proof_filter: Array<MapData, [u64; synguard_common::sources::PROOF_FILTER_WORDS]>,
    /// The host's settings as attack mode keeps them (see `crate::sysctls`).
    pub host: Array<MapData, synguard_common::HostState>,
}

/// Options for loading the program.
#[derive(Default, Clone)]
pub struct LoadOptions {
    /// Pin every map under `DIR/maps/NAME`, adopting maps already pinned there.
    pub pin_dir: Option<PathBuf>,
    /// Override map capacities (tests use this to fill a table quickly).
    pub max_entries: Vec<(&'static str, u32)>,
}

/// The loaded program and its maps.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

impl Loaded {
    /// Load and verify the embedded program. Does not attach it.
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Self> {
        raise_memlock();
        let pin_paths: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => map_names::ALL
                .iter()
                .map(|n| (*n, maps_dir(dir).join(n)))
                .collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, n) in &opts.max_entries {
            // The sources table's size is built into the program's hash (its sets).
            if *name == map_names::SOURCES {
                bail!("the size of {name} is fixed at {}", sources::SLOTS);
            }
            loader.map_max_entries(name, *n);
        }
        // The attack detector adds up the SYN rate of every possible CPU.
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))? as u32;
        loader.override_global("NR_CPUS", &cpus, true);
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the eBPF object into the kernel")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?
            .try_into()?;
        prog.load().map_err(refused)?;
        let mut maps = Maps::take(&mut ebpf)?;
        // Whatever a pinned cache remembers is checked against the tries again.
        maps.new_bans_epoch()?;
        Ok(Self { ebpf, maps })
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?)
    }

    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?)
    }
}

/// The verifier's refusal, told briefly: the kernel, the error and the log's last lines
/// (where the verifier says what it refused), not its whole log (thousands of lines; at
/// debug level in the log).
fn refused(e: ProgramError) -> anyhow::Error {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    else {
        return anyhow::Error::new(e).context("the kernel refused the XDP program");
    };
    let log = verifier_log.to_string();
    log::debug!("the verifier's log:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(VERIFIER_TAIL)..].join("\n");
    anyhow!(
        "the kernel ({}) refused the XDP program ({io_error}); the verifier's last words:\n\
         {tail}\n(synguard is tested on the kernels the README lists, Linux {} and later; \
         RUST_LOG=debug shows the whole log)",
        crate::kernel::release(),
        crate::kernel::MIN_LINUX
    )
}

/// Lines of a refusing verifier's log that an error shows.
const VERIFIER_TAIL: usize = 20;

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn open<T>(dir: &Path, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = maps_dir(dir).join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data)?;
    T::try_from(map).with_context(|| {
        format!(
            "pinned map {} does not have the layout this synguard expects (another version?)",
            path.display()
        )
    })
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            config: take(ebpf, map_names::CONFIG)?,
            stats: take(ebpf, map_names::STATS)?,
            rules_v4: take(ebpf, map_names::RULES_V4)?,
            rules_v6: take(ebpf, map_names::RULES_V6)?,
            sources: take(ebpf, map_names::SOURCES)?,
            events: Some(take(ebpf, map_names::EVENTS)?),
            ifstate: take(ebpf, map_names::IFSTATE)?,
            verified: take(ebpf, map_names::VERIFIED)?,
            rules_hint: take(ebpf, map_names::RULES_HINT)?,
            rules_hint6: take(ebpf, map_names::RULES_HINT6)?,
            bans_v4: take(ebpf, map_names::BANS_V4)?,
            bans_v6: take(ebpf, map_names::BANS_V6)?,
            bans_hint: take(ebpf, map_names::BANS_HINT)?,
            bans_hint6: take(ebpf, map_names::BANS_HINT6)?,
            ban_cache: take(ebpf, map_names::BAN_CACHE)?,
            bans_epoch: take(ebpf, map_names::BANS_EPOCH)?,
            local_v4: take(ebpf, map_names::LOCAL_V4)?,
            local_v6: take(ebpf, map_names::LOCAL_V6)?,
            nat_ports: take(ebpf, map_names::NAT_PORTS)?,
            proof_filter: take(ebpf, map_names::PROOF_FILTER)?,
            host: take(ebpf, map_names::HOST)?,
        })
    }

    /// Open the maps pinned under `pin_dir` by `synguard run` (of this version's layout:
    /// another's is refused with what to do).
    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<Self> {
        check_pinned_abi(pin_dir)?;
        Ok(Self {
            config: open(pin_dir, map_names::CONFIG)?,
            stats: open(pin_dir, map_names::STATS)?,
            rules_v4: open(pin_dir, map_names::RULES_V4)?,
            rules_v6: open(pin_dir, map_names::RULES_V6)?,
            sources: open(pin_dir, map_names::SOURCES)?,
            events: None,
            ifstate: open(pin_dir, map_names::IFSTATE)?,
            verified: open(pin_dir, map_names::VERIFIED)?,
            rules_hint: open(pin_dir, map_names::RULES_HINT)?,
            rules_hint6: open(pin_dir, map_names::RULES_HINT6)?,
            bans_v4: open(pin_dir, map_names::BANS_V4)?,
            bans_v6: open(pin_dir, map_names::BANS_V6)?,
            bans_hint: open(pin_dir, map_names::BANS_HINT)?,
            bans_hint6: open(pin_dir, map_names::BANS_HINT6)?,
            ban_cache: open(pin_dir, map_names::BAN_CACHE)?,
            bans_epoch: open(pin_dir, map_names::BANS_EPOCH)?,
            local_v4: open(pin_dir, map_names::LOCAL_V4)?,
            local_v6: open(pin_dir, map_names::LOCAL_V6)?,
            nat_ports: open(pin_dir, map_names::NAT_PORTS)?,
            proof_filter: open(pin_dir, map_names::PROOF_FILTER)?,
            host: open(pin_dir, map_names::HOST)?,
        })
    }

    /// Give `SG_BANS_EPOCH` a value it never had, so no CPU believes what its ban cache
    /// learned before now. Called after every change to the bans tries (the change must
    /// be complete first). Only newness matters: the value is this moment in
    /// `CLOCK_MONOTONIC` ns, which no earlier write can have used (every writer runs in
    /// the daemon's or the operator's time namespace, the host's); never 0 (an empty
    /// cache entry's epoch).
    pub fn new_bans_epoch(&mut self) -> anyhow::Result<()> {
        let epoch = crate::clock::monotonic_ns().max(1);
        self.bans_epoch
            .set(0, epoch, 0)
            .context("writing the bans epoch")
    }

    /// The host's settings as attack mode keeps them; a new map's zeroed entry reads as
    /// [`synguard_common::HostState::NONE`].
    pub fn read_host(&self) -> anyhow::Result<synguard_common::HostState> {
        let h = self.host.get(&0, 0).context("reading the host state map")?;
        Ok(if h.valid == 0 {
            synguard_common::HostState::NONE
        } else {
            h
        })
    }

    pub fn write_host(&mut self, h: &synguard_common::HostState) -> anyhow::Result<()> {
        let mut h = *h;
        h.valid = 1;
        self.host.set(0, h, 0).context("writing the host state map")
    }

    pub fn read_config(&self) -> anyhow::Result<Config> {
        self.config.get(&0, 0).context("reading the config map")
    }

    /// Write the config over `old` (what the map held), keeping the sources table's seed.
    /// Callers use `write_config` (in `rules`, which first gives the rules' hints their
    /// bits when a new prefix length makes the kernel rely on them).
    pub(crate) fn store_config(&mut self, cfg: &Config, old: &Config) -> anyhow::Result<()> {
        // The sources table's hash key is drawn once, with the maps, and kept: a new key
        // would strand every bucket in a slot no source looks in.
        let mut cfg = *cfg;
        cfg.source_seed = if old.abi != 0 && old.source_seed != [0; sources::SEED_WORDS] {
            old.source_seed
        } else {
            new_seed()?
        };
        self.config.set(0, cfg, 0).context("writing the config map")
    }

    /// Counters of one stats slot (an ifindex, or 0), summed over CPUs.
    pub fn counters(&self, slot: u32) -> anyhow::Result<[u64; stat::COUNT]> {
        let per_cpu = self
            .stats
            .get(&slot, 0)
            .with_context(|| format!("reading counters of slot {slot}"))?;
        let mut sum = [0u64; stat::COUNT];
        for s in per_cpu.iter() {
            for (acc, v) in sum.iter_mut().zip(s.counters.iter()) {
                *acc = acc.wrapping_add(*v);
            }
        }
        Ok(sum)
    }

    /// Attack-mode state of a stats slot.
    pub fn ifstate(&self, slot: u32) -> anyhow::Result<IfState> {
        self.ifstate
            .get(&slot, 0)
            .with_context(|| format!("reading the attack state of slot {slot}"))
    }

    /// Counters summed over every slot and CPU.
    pub fn total_counters(&self) -> anyhow::Result<[u64; stat::COUNT]> {
        let mut sum = [0u64; stat::COUNT];
        for per_cpu in self.stats.iter() {
            for s in per_cpu?.iter() {
                for (acc, v) in sum.iter_mut().zip(s.counters.iter()) {
                    *acc = acc.wrapping_add(*v);
                }
            }
        }
        Ok(sum)
    }

    /// Every (slot, counters) pair with any non-zero counter.
    pub fn counters_by_slot(&self) -> anyhow::Result<Vec<(u32, [u64; stat::COUNT])>> {
        let mut out = Vec::new();
        for slot in 0..capacity::STATS_SLOTS {
            let c = self.counters(slot)?;
            if c.iter().any(|v| *v != 0) {
                out.push((slot, c));
            }
        }
        Ok(out)
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it. Raising
/// it is harmless either way.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to an initialised struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK (ret {ret})");
    }
}

/// A secret key for the sources table's hash, from the kernel's random pool.
fn new_seed() -> anyhow::Result<[u64; sources::SEED_WORDS]> {
    let mut seed = [0u64; sources::SEED_WORDS];
    let len = size_of_val(&seed);
    // SAFETY: `seed` is writable for `len` bytes.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), len, 0) };
    if n != len as isize {
        bail!(
            "drawing the sources table's hash key: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(seed)
}

/// Check the pinned maps were made by a compatible synguard before adopting them.
pub fn check_pinned_abi(pin_dir: &Path) -> anyhow::Result<()> {
    match crate::upgrade::pinned(pin_dir)? {
        crate::upgrade::Pinned::None | crate::upgrade::Pinned::Current => Ok(()),
        crate::upgrade::Pinned::Newer(abi) => bail!(
            "the state pinned in {} was written by a newer synguard (map layout {abi}; this \
             one has {}): use that version's commands, or take its state down with `synguard \
             detach`",
            pin_dir.display(),
            synguard_common::ABI_VERSION
        ),
        crate::upgrade::Pinned::Known(crate::upgrade::Carry { abi, .. })
        | crate::upgrade::Pinned::Unknown(abi) => bail!(
            "the state pinned in {} was written by an older synguard (map layout {abi}; this \
             one has {}): restart `synguard run` (systemctl restart synguard) to upgrade it in \
             place, or use the old version's commands until then",
            pin_dir.display(),
            synguard_common::ABI_VERSION
        ),
    }
}
