//! Tests that need root (they make network namespaces or load BPF programs) start with
//! [`require_root!`](crate::require_root): run as root, they run; otherwise they say why
//! and return, so that `cargo test` as a user passes what it can check, unless `CI` is
//! set: CI runs them as root (`cargo xtask test` refuses to run otherwise), and a skip
//! there would hide breakage, so there they fail.
//!
//! A test that forgets the macro still cannot pass silently: the kit's constructors of
//! namespaces, BPF filesystems and programs ([`Netns::new`](super::netns::Netns::new),
//! [`Bpffs::new`](super::netns::Bpffs::new), [`Prog::new`](super::prog::Prog::new))
//! check for root themselves ([`assert_root`]) and fail it with a message that names the
//! macro.

use std::{ffi::OsStr, io::Write as _};

/// The reason given when a test is skipped, unless it names its own.
pub const NEEDS_ROOT: &str = "network namespaces, BPF";

/// What a test that needs root does here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Root: it runs.
    Run,
    /// Not root, not CI: it says why and passes.
    Skip,
    /// Not root in CI: it fails.
    Fail,
}

/// Whether `CI` (its value, if set) says this is CI: set to anything but empty, `0` or
/// `false` (CI services set `CI=true`).
pub fn is_ci(ci: Option<&OsStr>) -> bool {
    ci.is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The decision for a process that is root or not, with `CI` set to `ci` or unset.
pub fn decide(root: bool, ci: Option<&OsStr>) -> Decision {
    if root {
        Decision::Run
    } else if is_ci(ci) {
        Decision::Fail
    } else {
        Decision::Skip
    }
}

/// Whether this process runs as root (effective user id 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The decision for this process and its environment; on [`Decision::Skip`], says so on
/// the test's own stderr (past the test harness's capture, so that the skip shows in
/// `cargo test`'s output), naming the test and `reason`. Panics on [`Decision::Fail`].
/// Returns whether the test may run. Used through [`require_root!`](crate::require_root).
#[track_caller]
pub fn may_run(reason: &str) -> bool {
    match decide(is_root(), std::env::var_os("CI").as_deref()) {
        Decision::Run => true,
        Decision::Skip => {
            let test = std::thread::current()
                .name()
                .filter(|n| *n != "main")
                .map(|n| format!("{n}: "))
                .unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "{test}skipped: needs root ({reason})");
            false
        }
        Decision::Fail => panic!(
            "needs root ({reason}), and CI is set: CI runs these tests as root (`cargo xtask \
             test`); a skip there would hide breakage"
        ),
    }
}

/// Panic with a clear message unless running as root: for the tools (`sg-lab`,
/// `sg-bench`) and the kit's constructors of kernel state, so that a test that reaches
/// them without [`require_root!`](crate::require_root) fails rather than passing.
#[track_caller]
pub fn assert_root() {
    if !is_root() {
        panic!(
            "this needs root ({NEEDS_ROOT}): run it as root (`cargo xtask test` does); a test \
             that needs root starts with `synguard_tests::require_root!()`, which skips it \
             with the reason when not root (and fails it in CI)"
        );
    }
}

/// At the top of a test (or of a helper that is the whole test) that needs root: returns
/// from it, saying why, when not root; fails it when not root and `CI` is set. See
/// [`kit::root`](crate::kit::root).
///
/// ```ignore
/// #[test]
/// fn a_kernel_test() {
///     require_root!();
///     // ... namespaces, programs ...
/// }
/// #[test]
/// fn a_test_of_a_debian_root() {
///     require_root!("debootstrap, chroot");
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!($crate::kit::root::NEEDS_ROOT)
    };
    ($reason:expr) => {
        if !$crate::kit::root::may_run($reason) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_runs_a_user_skips_and_a_user_in_ci_fails() {
        let ci = |v: &'static str| Some(OsStr::new(v));
        for env in [None, ci("true"), ci("1"), ci(""), ci("false")] {
            assert_eq!(decide(true, env), Decision::Run, "{env:?}");
        }
        for env in [None, ci(""), ci("0"), ci("false"), ci("FALSE")] {
            assert_eq!(decide(false, env), Decision::Skip, "{env:?}");
        }
        for env in [ci("true"), ci("1"), ci("yes"), ci("True")] {
            assert_eq!(decide(false, env), Decision::Fail, "{env:?}");
        }
    }
}
