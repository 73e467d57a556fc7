//! Privilege checks that turn the kernel's bare `EPERM` into an actionable message.

use crate::error::usage;

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "?",
    }
}

/// The effective capability set of this process.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has(cap: u32) -> bool {
    effective() & (1 << cap) != 0
}

/// `run` loads and attaches the program: CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) to load
/// it, CAP_NET_ADMIN to attach it to an interface.
pub fn require_for_run() -> anyhow::Result<()> {
    require(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN], "synguard run")
}

/// State commands open pinned maps: CAP_BPF (or CAP_SYS_ADMIN).
pub fn require_for_state(what: &str) -> anyhow::Result<()> {
    require(&[CAP_BPF], what)
}

fn require(caps: &[u32], what: &str) -> anyhow::Result<()> {
    let eff = effective();
    let sys_admin = eff & (1 << CAP_SYS_ADMIN) != 0;
    let missing: Vec<&str> = caps
        .iter()
        .filter(|&&c| eff & (1 << c) == 0)
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
        .filter(|&&c| !(sys_admin && (c == CAP_BPF || c == CAP_PERFMON)))
        .map(|&c| cap_name(c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "{what} needs root or the capabilities {} (missing: {}); run it with sudo",
        caps.iter()
            .map(|&c| cap_name(c))
            .collect::<Vec<_>>()
            .join(", "),
        missing.join(", ")
    )))
}
