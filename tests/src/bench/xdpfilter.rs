//! xdp-filter (Debian `xdp-tools`, its BPF objects shipped in `libxdp1`) as a yardstick:
//! its own compiled programs, loaded into the running kernel with aya, their maps filled
//! the way `xdp-filter ip ADDR --mode src` fills them, and run under `BPF_PROG_TEST_RUN`
//! exactly like synguard.
//!
//! The object files are `xdpfilt_{alw,dny}_{all,eth,ip,tcp,udp}.o`: `alw` is the default
//! policy `allow` (listed addresses and ports are dropped, everything else passes), `dny`
//! the policy `deny` (listed ones pass, everything else is dropped); `all` holds every
//! feature (what `xdp-filter load IFACE` loads by default), the others one feature each
//! (what `xdp-filter load --features ipv4` picks).
//!
//! Map layout (xdp-tools `xdp-filter/common_kern_user.h` and `xdpfilt_prog.h`, checked
//! against the objects' BTF with `bpftool btf dump file`): `filter_ipv4` is a per-CPU
//! hash from the address as it lies in the packet (a big-endian `u32`) to a `u64` whose
//! low bits are flags (`MAP_FLAG_SRC` 1, `MAP_FLAG_DST` 2, ...) and whose bits from
//! `COUNTER_SHIFT` (6) up count hits; `filter_ipv6` the same keyed by the 16-byte
//! address; `xdp_stats_map` a per-CPU array of `{packets, bytes}` per XDP action. Each
//! map is pinned by name, so every instance gets its own pin directory.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};

/// `MAP_FLAG_SRC` in xdp-filter's maps: the entry matches source addresses.
pub const MAP_FLAG_SRC: u64 = 1;
/// Bits below this in a map value are flags; the hit counter starts here.
pub const COUNTER_SHIFT: u32 = 6;

/// The directory holding xdp-filter's BPF objects (the multiarch directory on Debian).
pub fn object_dir() -> anyhow::Result<PathBuf> {
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/usr/lib/{arch}-linux-gnu/bpf"),
        "/usr/lib/bpf".to_string(),
        "/usr/lib64/bpf".to_string(),
        "/usr/local/lib/bpf".to_string(),
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("xdpfilt_alw_all.o").exists())
        .ok_or_else(|| {
            anyhow!(
                "xdp-filter's BPF objects (xdpfilt_alw_all.o) are not installed in any of \
                 {candidates:?}: install the Debian package libxdp1 (`cargo xtask bench` does)"
            )
        })
}

/// One of xdp-filter's programs, loaded, with its own maps.
pub struct XdpFilter {
    ebpf: Ebpf,
    /// `xdpfilt_alw_all` and so on: the object's file stem and its program's name.
    pub name: String,
    _pins: PathBuf,
}

impl XdpFilter {
    /// Load `xdpfilt_{variant}.o` (e.g. `alw_all`), pinning its maps under `pin_dir`, a
    /// directory on a BPF filesystem that no other instance uses.
    pub fn load(variant: &str, pin_dir: &Path) -> anyhow::Result<Self> {
        let name = format!("xdpfilt_{variant}");
        let path = object_dir()?.join(format!("{name}.o"));
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load_file(&path)
            .with_context(|| format!("loading {}", path.display()))?;
        let prog: &mut Xdp = ebpf
            .program_mut(&name)
            .ok_or_else(|| anyhow!("program {name} missing from {}", path.display()))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("the kernel refused {name}"))?;
        Ok(Self {
            ebpf,
            name,
            _pins: pin_dir.to_path_buf(),
        })
    }

    fn prog(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program(&self.name)
            .ok_or_else(|| anyhow!("program {} missing", self.name))?
            .try_into()?)
    }

    /// Attach to an interface of the calling thread's network namespace (until dropped).
    pub fn attach(&mut self, ifname: &str) -> anyhow::Result<()> {
        let name = self.name.clone();
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(&name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        prog.attach(ifname, XdpMode::default())?;
        Ok(())
    }

    /// What `xdp-filter ip ADDR --mode src` stores: the address with `MAP_FLAG_SRC`, on
    /// every CPU.
    pub fn add_source(&mut self, addr: IpAddr) -> anyhow::Result<()> {
        let cpus = nr_cpus()?;
        let values = PerCpuValues::try_from(vec![MAP_FLAG_SRC; cpus])?;
        match addr {
            IpAddr::V4(a) => {
                let mut m: PerCpuHashMap<&mut MapData, [u8; 4], u64> = PerCpuHashMap::try_from(
                    self.ebpf
                        .map_mut("filter_ipv4")
                        .ok_or_else(|| anyhow!("{} has no IPv4 filter", self.name))?,
                )?;
                m.insert(a.octets(), values, 0)?;
            }
            IpAddr::V6(a) => {
                let mut m: PerCpuHashMap<&mut MapData, [u8; 16], u64> = PerCpuHashMap::try_from(
                    self.ebpf
                        .map_mut("filter_ipv6")
                        .ok_or_else(|| anyhow!("{} has no IPv6 filter", self.name))?,
                )?;
                m.insert(a.octets(), values, 0)?;
            }
        }
        Ok(())
    }

    /// Packets that matched the entry for `addr`, summed over CPUs (the counter
    /// `xdp-filter status` shows).
    pub fn hits(&self, addr: IpAddr) -> anyhow::Result<u64> {
        let values = match addr {
            IpAddr::V4(a) => {
                let m: PerCpuHashMap<&MapData, [u8; 4], u64> = PerCpuHashMap::try_from(
                    self.ebpf
                        .map("filter_ipv4")
                        .ok_or_else(|| anyhow!("{} has no IPv4 filter", self.name))?,
                )?;
                m.get(&a.octets(), 0)?
            }
            IpAddr::V6(a) => {
                let m: PerCpuHashMap<&MapData, [u8; 16], u64> = PerCpuHashMap::try_from(
                    self.ebpf
                        .map("filter_ipv6")
                        .ok_or_else(|| anyhow!("{} has no IPv6 filter", self.name))?,
                )?;
                m.get(&a.octets(), 0)?
            }
        };
        Ok(values.iter().map(|v| v >> COUNTER_SHIFT).sum())
    }

    /// Packets the program returned `action` for, summed over CPUs (`xdp_stats_map`).
    pub fn action_count(&self, action: u32) -> anyhow::Result<u64> {
        let m: PerCpuArray<&MapData, [u64; 2]> = PerCpuArray::try_from(
            self.ebpf
                .map("xdp_stats_map")
                .ok_or_else(|| anyhow!("{} has no stats map", self.name))?,
        )?;
        Ok(m.get(&action, 0)?.iter().map(|v| v[0]).sum())
    }

    /// Mean ns per run over `repeat` runs, and the action returned.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        let r = self.prog()?.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        if r.return_value > 4 {
            bail!("{}: unexpected action {}", self.name, r.return_value);
        }
        // The kernel reports the mean duration of one run.
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }
}

fn nr_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))
}

/// `MAP_FLAG_DST` in xdp-filter's maps: the entry matches destination addresses or ports.
pub const MAP_FLAG_DST: u64 = 2;
/// `MAP_FLAG_TCP`: a port entry applies to TCP.
pub const MAP_FLAG_TCP: u64 = 4;

impl XdpFilter {
    /// What `xdp-filter port PORT --mode dst --proto tcp` stores: `filter_ports` is a
    /// per-CPU array indexed by the port as it lies in the TCP header (big-endian),
    /// widened to a `u32`.
    pub fn add_tcp_dst_port(&mut self, port: u16) -> anyhow::Result<()> {
        let cpus = nr_cpus()?;
        let values = PerCpuValues::try_from(vec![MAP_FLAG_DST | MAP_FLAG_TCP; cpus])?;
        let mut m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map_mut("filter_ports")
                .ok_or_else(|| anyhow!("{} has no port filter", self.name))?,
        )?;
        m.set(u32::from(port.to_be()), values, 0)?;
        Ok(())
    }
}
