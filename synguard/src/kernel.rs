//! What the running kernel offers synguard, probed before the program is loaded, so a
//! kernel that lacks something gets a sentence naming it rather than a verifier log.
//!
//! Required: every helper, map type and instruction the XDP program uses ([`REQUIRED`];
//! a host test reads the embedded program and fails if it uses one not listed here). The
//! newest of them is the atomic fetch-and-add of Linux 5.12, and the oldest kernel the
//! kernel matrix boots and passes is 5.15, so that is the floor synguard states.
//!
//! Optional: what only some kernels are built with. Without it synguard still protects,
//! with a defined, smaller behaviour, and says so at start and in `status`.

use std::{ffi::CStr, mem, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};
use aya_obj::generated::{BPF_ATOMIC, BPF_DW, BPF_FETCH, BPF_STX, bpf_attr, bpf_cmd, bpf_insn};

/// The oldest Linux synguard supports (the kernel matrix's floor).
pub const MIN_LINUX: &str = "5.15";

/// Something the XDP program cannot load without.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    Helper(BpfHelper),
    Map(MapType),
    /// Atomic fetch-and-add (`BPF_ATOMIC | BPF_FETCH`), for the ban cache's ordered read.
    AtomicFetch,
}

pub struct Feature {
    pub need: Need,
    /// How `synguard` names it to a user.
    pub name: &'static str,
    /// The Linux release that brought it.
    pub since: &'static str,
}

const fn helper(h: BpfHelper, name: &'static str, since: &'static str) -> Feature {
    Feature {
        need: Need::Helper(h),
        name,
        since,
    }
}

const fn map(m: MapType, name: &'static str, since: &'static str) -> Feature {
    Feature {
        need: Need::Map(m),
        name,
        since,
    }
}

/// Every helper, map type and instruction the XDP program uses, newest last.
pub const REQUIRED: &[Feature] = &[
    helper(
        BpfHelper::BPF_FUNC_map_lookup_elem,
        "the helper bpf_map_lookup_elem",
        "3.19",
    ),
    helper(
        BpfHelper::BPF_FUNC_map_update_elem,
        "the helper bpf_map_update_elem",
        "3.19",
    ),
    helper(
        BpfHelper::BPF_FUNC_get_smp_processor_id,
        "the helper bpf_get_smp_processor_id",
        "4.1",
    ),
    map(MapType::Array, "array maps", "3.19"),
    map(MapType::Hash, "hash maps", "3.19"),
    map(MapType::PerCpuArray, "per-CPU array maps", "4.6"),
    map(MapType::LruHash, "LRU hash maps", "4.10"),
    map(MapType::LpmTrie, "longest-prefix-match trie maps", "4.11"),
    helper(
        BpfHelper::BPF_FUNC_xdp_adjust_tail,
        "the helper bpf_xdp_adjust_tail",
        "4.18",
    ),
    helper(
        BpfHelper::BPF_FUNC_sk_release,
        "the helper bpf_sk_release",
        "4.20",
    ),
    helper(
        BpfHelper::BPF_FUNC_skc_lookup_tcp,
        "the helper bpf_skc_lookup_tcp",
        "5.2",
    ),
    helper(
        BpfHelper::BPF_FUNC_tcp_check_syncookie,
        "the helper bpf_tcp_check_syncookie",
        "5.2",
    ),
    helper(
        BpfHelper::BPF_FUNC_tcp_gen_syncookie,
        "the helper bpf_tcp_gen_syncookie",
        "5.3",
    ),
    helper(
        BpfHelper::BPF_FUNC_jiffies64,
        "the helper bpf_jiffies64",
        "5.5",
    ),
    map(MapType::RingBuf, "ring buffer maps", "5.8"),
    helper(
        BpfHelper::BPF_FUNC_ringbuf_output,
        "the helper bpf_ringbuf_output",
        "5.8",
    ),
    helper(
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "the helper bpf_ringbuf_reserve",
        "5.8",
    ),
    helper(
        BpfHelper::BPF_FUNC_ringbuf_submit,
        "the helper bpf_ringbuf_submit",
        "5.8",
    ),
    helper(
        BpfHelper::BPF_FUNC_ringbuf_discard,
        "the helper bpf_ringbuf_discard",
        "5.8",
    ),
    helper(
        BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
        "the helper bpf_ktime_get_coarse_ns",
        "5.11",
    ),
    helper(
        BpfHelper::BPF_FUNC_check_mtu,
        "the helper bpf_check_mtu",
        "5.12",
    ),
    Feature {
        need: Need::AtomicFetch,
        name: "atomic fetch-and-add instructions",
        since: "5.12",
    },
];

/// What the running kernel lacks of [`REQUIRED`] and of the optional features.
pub struct Probe {
    /// `uname -r`.
    pub release: String,
    pub missing: Vec<&'static Feature>,
    /// Optional features it lacks: what synguard does without each.
    pub degraded: Vec<&'static str>,
}

/// The optional features, and what synguard does without them.
const SYNCOOKIES_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";
const NO_SYNCOOKIES: &str = "no net.ipv4.tcp_syncookies (a kernel built without \
     CONFIG_SYN_COOKIES): attack mode cannot answer SYNs with cookies; unverified SYNs go to \
     the kernel, per-source limits and bans still apply";

impl Probe {
    /// The error `run` gives on a kernel that lacks a required feature, or `None`.
    pub fn refusal(&self) -> Option<String> {
        if self.missing.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .missing
            .iter()
            .map(|f| format!("{} (Linux {})", f.name, f.since))
            .collect();
        Some(format!(
            "this kernel ({}) lacks what synguard's XDP program needs: {}. synguard needs \
             Linux {MIN_LINUX} or later (Debian 12's 6.1 and later, Ubuntu 22.04's 5.15; the \
             README lists the kernels it is tested on)",
            self.release,
            list.join(", ")
        ))
    }
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Probe every feature. A probe that cannot tell (an unexpected error) counts the feature
/// as present: the program's load then says what is wrong.
pub fn probe() -> Probe {
    let missing = REQUIRED
        .iter()
        .filter(|f| {
            let present = match f.need {
                Need::Helper(h) => is_helper_supported(ProgramType::Xdp, h).unwrap_or(true),
                Need::Map(m) => is_map_supported(m).unwrap_or(true),
                Need::AtomicFetch => atomic_fetch_supported(),
            };
            !present
        })
        .collect();
    let mut degraded = Vec::new();
    if !Path::new(SYNCOOKIES_SYSCTL).exists() {
        degraded.push(NO_SYNCOOKIES);
    }
    Probe {
        release: release(),
        missing,
        degraded,
    }
}

fn insn(code: u32, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    // SAFETY: a plain-data bindgen struct; all zeroes is a valid value.
    let mut i: bpf_insn = unsafe { mem::zeroed() };
    i.code = code as u8;
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i.off = off;
    i.imm = imm;
    i
}

/// Whether the verifier accepts `BPF_ATOMIC | BPF_FETCH` (Linux 5.12), by loading a tiny
/// XDP program that uses it on the stack.
fn atomic_fetch_supported() -> bool {
    const MOV64_IMM: u32 = 0xb7;
    const STX_DW: u32 = 0x7b;
    const EXIT: u32 = 0x95;
    let insns = [
        insn(MOV64_IMM, 1, 0, 0, 0),
        insn(STX_DW, 10, 1, -8, 0),
        insn(MOV64_IMM, 1, 0, 0, 1),
        // r1 = atomic_fetch_add((u64 *)(r10 - 8), r1)
        insn(BPF_STX | BPF_DW | BPF_ATOMIC, 10, 1, -8, BPF_FETCH as i32),
        insn(MOV64_IMM, 0, 0, 0, 2),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let license: &CStr = c"GPL";
    // SAFETY: a plain-data bindgen union; all zeroes is a valid value.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: the program-load member of the union, filled as the kernel reads it.
    unsafe {
        let u = &mut attr.__bindgen_anon_3;
        u.prog_type = aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
        u.insn_cnt = insns.len() as u32;
        u.insns = insns.as_ptr() as u64;
        u.license = license.as_ptr() as u64;
    }
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` that outlives the call;
    // `insns` and `license` outlive it too.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            &attr as *const bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        // EPERM would mean no privilege, not an old kernel: say present and let the
        // program's own load report it.
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    // SAFETY: a descriptor the kernel just returned to us.
    unsafe { libc::close(fd as i32) };
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every helper call, map type and atomic fetch in the embedded XDP program is in
    /// [`REQUIRED`], so adding one without its kernel version fails here.
    #[test]
    fn required_covers_everything_the_program_uses() {
        let obj = aya_obj::Object::parse(crate::bpf::OBJECT).expect("parse the embedded object");
        let mut helpers = BTreeSet::new();
        let mut fetch = false;
        for f in obj.functions.values() {
            for i in &f.instructions {
                // BPF_JMP | BPF_CALL with src_reg 0: a helper (1 is a call within the
                // program, 2 a kfunc).
                if i.code == 0x85 && i.src_reg() == 0 {
                    helpers.insert(i.imm as u32);
                }
                if u32::from(i.code) & 0xe7 == BPF_STX | BPF_ATOMIC && i.imm as u32 & BPF_FETCH != 0
                {
                    fetch = true;
                }
            }
        }
        assert!(helpers.len() >= 10, "helpers found: {helpers:?}");
        for id in &helpers {
            assert!(
                REQUIRED
                    .iter()
                    .any(|f| matches!(f.need, Need::Helper(h) if h as u32 == *id)),
                "the program calls helper #{id}, which kernel::REQUIRED does not list"
            );
        }
        for (name, m) in &obj.maps {
            assert!(
                REQUIRED
                    .iter()
                    .any(|f| matches!(f.need, Need::Map(t) if t as u32 == m.map_type())),
                "map {name} has type {}, which kernel::REQUIRED does not list",
                m.map_type()
            );
        }
        assert!(
            !fetch || REQUIRED.iter().any(|f| matches!(f.need, Need::AtomicFetch)),
            "the program uses atomic fetch"
        );
    }

    fn version(v: &str) -> (u32, u32) {
        let (major, minor) = v.split_once('.').expect("MAJOR.MINOR");
        (major.parse().expect("major"), minor.parse().expect("minor"))
    }

    /// A feature newer than the floor would make the floor a lie (and the refusal say
    /// "this 5.15 kernel lacks ...; synguard needs 5.15"): raise [`MIN_LINUX`], and the
    /// kernel matrix's floor with it, or do without the feature.
    #[test]
    fn no_required_feature_is_newer_than_the_floor() {
        for f in REQUIRED {
            assert!(
                version(f.since) <= version(MIN_LINUX),
                "{} needs Linux {}, newer than the floor {MIN_LINUX}",
                f.name,
                f.since
            );
        }
    }

    #[test]
    fn the_refusal_names_what_is_missing_and_the_floor() {
        let p = Probe {
            release: "5.10.0-32-amd64".into(),
            missing: REQUIRED
                .iter()
                .filter(|f| matches!(f.since, "5.11" | "5.12"))
                .collect(),
            degraded: Vec::new(),
        };
        let msg = p.refusal().expect("refused");
        assert!(
            msg.starts_with("this kernel (5.10.0-32-amd64) lacks"),
            "{msg}"
        );
        assert!(
            msg.contains("the helper bpf_ktime_get_coarse_ns (Linux 5.11)"),
            "{msg}"
        );
        assert!(
            msg.contains("atomic fetch-and-add instructions (Linux 5.12)"),
            "{msg}"
        );
        assert!(msg.contains("synguard needs Linux 5.15 or later"), "{msg}");
        let ok = Probe {
            missing: Vec::new(),
            ..p
        };
        assert!(ok.refusal().is_none());
    }

    /// On the kernel the tests run on (the CI machine's, and every kernel of the matrix
    /// that is expected to run synguard) nothing required is missing.
    #[test]
    fn this_kernel_has_everything_required() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: probing BPF features needs root");
            return;
        }
        let p = probe();
        assert!(p.refusal().is_none(), "{:?}", p.refusal());
    }
}
