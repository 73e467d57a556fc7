//! The real synguard program, loaded into the running kernel and driven with
//! `BPF_PROG_TEST_RUN` on crafted packets.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use synguard::{
    bpf::{LoadOptions, Loaded},
    config::Settings,
    rules,
};
use synguard_common::{Bucket, Rule, SourceKey, stat};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The stats slot of `BPF_PROG_TEST_RUN`'s packets: the loopback device's ifindex.
pub const TESTRUN_SLOT: u32 = 1;

/// Pin the calling thread to one CPU (the program's rate windows and event budget are
/// per CPU).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning the test thread to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// One private instance of the program with its own maps.
pub struct Prog {
    pub loaded: Loaded,
    pub settings: Settings,
    generation: u64,
    /// `SG_HOST`'s `cookie_opts`, which `run` derives from the kernel's settings (0: a
    /// cookie SYN-ACK offers the MSS only).
    cookie_opts: u32,
}

impl Prog {
    pub fn new(settings: Settings) -> Self {
        Self::with_options(settings, &LoadOptions::default())
    }

    pub fn with_options(settings: Settings, opts: &LoadOptions) -> Self {
        super::root::assert_root();
        let loaded = Loaded::load(opts).expect("load the XDP program");
        let mut p = Self {
            loaded,
            settings,
            generation: 0,
            cookie_opts: 0,
        };
        p.apply();
        p.sync_locals();
        p
    }

    /// Tell the program this namespace's addresses, as `run` does (attack mode answers
    /// SYNs only for them): called on load, and again after addresses change.
    pub fn sync_locals(&mut self) {
        let addrs = synguard::locals::addresses().expect("list the namespace's addresses");
        synguard::locals::sync(&mut self.loaded.maps, &addrs).expect("write SG_LOCAL_*");
    }

    /// Tell the program which destination ports NAT rules rewrite, as `run` does after
    /// reading them (attack mode leaves SYNs for them to the kernel).
    pub fn set_nat(&mut self, ports: &synguard::nat::NatPorts) {
        synguard::nat::sync(&mut self.loaded.maps, ports).expect("write SG_NAT_PORTS");
    }

    /// Tell the program which families' source addresses the host rewrites
    /// (`SNAT_V4 | SNAT_V6` bits), as `run` does after reading its NAT rules (attack mode
    /// then passes ACKs a guest's connection may get).
    pub fn set_snat(&mut self, snat: u32) {
        let mut cfg = self.loaded.maps.read_config().expect("config");
        cfg.snat = snat;
        self.loaded.maps.write_config(&cfg).expect("write config");
    }

    /// Write the current settings into the config map.
    pub fn apply(&mut self) {
        self.generation += 1;
        let cfg = self.settings.to_kernel(self.generation);
        self.loaded.maps.write_config(&cfg).expect("write config");
        let host = synguard_common::HostState {
            cookie_opts: self.cookie_opts,
            ..synguard_common::HostState::NONE
        };
        self.loaded.maps.write_host(&host).expect("write SG_HOST");
    }

    /// What a cookie SYN-ACK may offer besides the MSS (a
    /// `synguard_common::synack::cookie_opts` word), as `run` sets it from the kernel's
    /// settings.
    pub fn set_cookie_opts(&mut self, opts: u32) {
        self.cookie_opts = opts;
        self.apply();
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.settings.set(key, value).expect("valid setting");
        self.apply();
    }

    /// Run the program once on a frame; returns the XDP action.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.run_out(frame).0
    }

    /// Run once and return the action and the frame as the program left it.
    pub fn run_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_out_on(frame, None)
    }

    /// [`Self::run_out`] as if the frame came in on device `ifindex` (of the calling
    /// thread's namespace; its first receive queue) rather than the loopback device.
    pub fn run_out_on(&self, frame: &[u8], ifindex: Option<u32>) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: Vec<u8> = [0, frame.len() as u32, 0, ifindex.unwrap_or(0), 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let res = self
            .loaded
            .program()
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ifindex.map(|_| md.as_slice()),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Run `repeat` times in the kernel; returns the action and the mean ns per run.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> (u32, f64) {
        let res = self
            .loaded
            .program()
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        // The kernel reports the mean duration of one run.
        (res.return_value, res.duration.as_nanos() as f64)
    }

    /// All counters, summed over CPUs. `BPF_PROG_TEST_RUN` runs the program on the
    /// calling thread's namespace's loopback device, whose ifindex is always 1, so every
    /// packet here is counted in that stats slot; reading it alone spares a lookup of each
    /// of the 1,024 slots per call (a second per call in an emulated kernel, enough for a
    /// token to refill between two packets of a test).
    pub fn counters(&self) -> [u64; stat::COUNT] {
        self.loaded
            .maps
            .counters(TESTRUN_SLOT)
            .expect("read counters")
    }

    /// The value of one counter.
    pub fn counter(&self, idx: usize) -> u64 {
        self.counters()[idx]
    }

    /// Run a frame and check that exactly the expected counters moved, by the expected
    /// amounts. Returns the action.
    #[track_caller]
    pub fn expect(&self, frame: &[u8], action: u32, moved: &[usize]) -> u32 {
        let before = self.counters();
        let got = self.run(frame);
        let after = self.counters();
        assert_eq!(got, action, "action (1 drop, 2 pass, 3 tx)");
        for i in 0..stat::COUNT {
            // Whether a SYN is its sketch counter's first depends on the 134 ms window it
            // falls in, not on the verdict: checked on their own where they matter
            // (`cookies::attack_mode_meters_only_sources_the_sketch_finds_loud`).
            if i == stat::N_SKETCH_NEW || i == stat::N_SKETCH_NEW_V6 {
                continue;
            }
            let want = moved.iter().filter(|m| **m == i).count() as u64;
            assert_eq!(
                after[i] - before[i],
                want,
                "counter {} moved by {} (expected {want})",
                stat::NAMES.get(i).unwrap_or(&"?"),
                after[i] - before[i]
            );
        }
        got
    }

    pub fn rules(&self) -> Vec<rules::RuleEntry> {
        rules::list(&self.loaded.maps).expect("list rules")
    }

    /// The entry stored under exactly this prefix, as `block list` shows it (a ban's hits
    /// include those the kernel's ban cache has not carried over yet).
    pub fn rule(&self, net: &str) -> Option<Rule> {
        let net: IpNet = net.parse().expect("test CIDR");
        self.rules()
            .into_iter()
            .find(|e| e.net == net)
            .map(|e| e.rule)
    }

    /// The same as stored in the trie alone.
    pub fn stored_rule(&self, net: &str) -> Option<Rule> {
        let net: IpNet = net.parse().expect("test CIDR");
        rules::get(&self.loaded.maps, &net).expect("read rule")
    }

    pub fn put_rule(&mut self, net: &str, rule: &Rule) {
        let net: IpNet = net.parse().expect("test CIDR");
        rules::put(&mut self.loaded.maps, &net, rule).expect("store rule");
    }

    /// Whether the rules hint has the bit of this address set (its /24 for IPv4, its
    /// folded /40 for IPv6).
    pub fn hinted(&self, addr: &str) -> bool {
        self.hint_bit(addr, false)
    }

    /// The same in the bans hint.
    pub fn ban_hinted(&self, addr: &str) -> bool {
        self.hint_bit(addr, true)
    }

    fn hint_bit(&self, addr: &str, bans: bool) -> bool {
        use synguard_common::hint;
        let m = &self.loaded.maps;
        let (map, index) = match addr.parse().expect("test address") {
            IpAddr::V4(a) if bans => (&m.bans_hint, a.octets()),
            IpAddr::V4(a) => (&m.rules_hint, a.octets()),
            IpAddr::V6(a) if bans => (&m.bans_hint6, hint::v6_index(&a.octets())),
            IpAddr::V6(a) => (&m.rules_hint6, hint::v6_index(&a.octets())),
        };
        let (word, bit) = hint::bit(index);
        map.get(&word, 0).expect("read hint") & bit != 0
    }

    /// Record that an address proved it owns itself (`how`, a `PROOF_*`) for `for_ns`, as
    /// the kernel or `run` would.
    pub fn prove(&mut self, addr: &str, prefix_len: u32, how: u32, for_ns: u64) {
        let now = synguard::clock::monotonic_ns();
        let key = source_key(addr.parse().expect("test address"), prefix_len);
        synguard::proofs::record(&mut self.loaded.maps, &key, how, now + for_ns, now)
            .expect("record a proof");
    }

    pub fn reconcile(&mut self) {
        rules::reconcile_actions(&mut self.loaded.maps).expect("reconcile");
    }

    /// Every tracked source and its bucket.
    pub fn buckets(&self) -> Vec<(SourceKey, Bucket)> {
        let mut all = Vec::new();
        synguard::sources::for_each(
            &self.loaded.maps,
            synguard::clock::monotonic_ns(),
            |k, b| {
                all.push((*k, *b));
            },
        )
        .expect("walk the sources table");
        all
    }

    /// The bucket for a source address as the kernel keys it (aggregated).
    pub fn bucket(&self, addr: &str, prefix_len: u32) -> Option<Bucket> {
        let key = source_key(addr.parse().expect("test address"), prefix_len);
        synguard::sources::get(&self.loaded.maps, &key, synguard::clock::monotonic_ns())
            .expect("read the sources table")
    }
}

/// The `SG_SOURCES` key of an address aggregated to a prefix length.
pub fn source_key(addr: IpAddr, prefix_len: u32) -> SourceKey {
    let len = u8::try_from(prefix_len).expect("prefix length");
    synguard::net::source_key(addr, len, len)
}
