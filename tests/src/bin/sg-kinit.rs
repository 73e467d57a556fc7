//! The init (PID 1) of the kernel matrix's guests (`xtask/src/kmatrix.rs`): mounts what
//! the tests need, loads the kernel modules it was given, runs the plan `/km/plan`, and
//! powers the machine off. What the host reads comes on the console (the first serial
//! port) as lines starting with `SGKM `; every program's whole output goes to the second
//! serial port, which the host keeps as a log.
//!
//! The plan, one step per line:
//! - `module FILE`: load `/km/FILE` (an uncompressed `.ko`);
//! - `run NAME ARGS...`: run `/km/bin/NAME ARGS...` (a test binary), report its exit code,
//!   time, the test harness's counts and every failed test;
//! - `refuse`: run `synguard run --iface lo`, which must refuse a kernel that is too old,
//!   and report its exit code and first line of error.
//!
//! It never panics (a panicking PID 1 takes the kernel down with it, and the report with
//! it): every failure becomes an `SGKM error` line, and the machine powers off anyway.

use std::{
    ffi::CString,
    fs::{self, File},
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long one program may run before it is killed.
const STEP_TIMEOUT: Duration = Duration::from_secs(1200);

fn say(line: &str) {
    println!("SGKM {line}");
}

/// Append a program's output to the full log (the second serial port).
fn log_full(title: &str, text: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/ttyS1") {
        let _ = writeln!(f, "===== {title} =====\n{text}\n===== end of {title} =====");
    }
}

fn mount(fstype: &str, target: &str) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    let src = CString::new(fstype).map_err(|e| e.to_string())?;
    let dst = CString::new(target).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn load_module(name: &str) -> Result<(), String> {
    let file = File::open(format!("/km/{name}")).map_err(|e| format!("{name}: {e}"))?;
    let params = CString::default();
    // SAFETY: a valid descriptor and an empty parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        return Err(format!("{name}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Run a program to completion (or the timeout), its output in a file; returns the exit
/// code (-1 if killed or not started), the time it took and its output.
fn run(program: &str, args: &[&str]) -> (i32, f64, String) {
    let start = Instant::now();
    let out_path = format!("/tmp/{}.out", program.rsplit('/').next().unwrap_or("step"));
    let spawned = File::create(&out_path).and_then(|f| {
        let err = f.try_clone()?;
        Command::new(program)
            .args(args)
            .current_dir("/tmp")
            .env("PATH", "/km/bin")
            .env("SYNGUARD_BIN", "/km/bin/synguard")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(err)
            .spawn()
    });
    let code = match spawned {
        Err(e) => {
            say(&format!("error starting {program}: {e}"));
            -1
        }
        Ok(mut child) => loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.code().unwrap_or(-1),
                Ok(None) if start.elapsed() > STEP_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    say(&format!("error {program} killed after {STEP_TIMEOUT:?}"));
                    break -1;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => {
                    say(&format!("error waiting for {program}: {e}"));
                    break -1;
                }
            }
        },
    };
    let mut text = String::new();
    if let Ok(mut f) = File::open(&out_path) {
        let _ = f.read_to_string(&mut text);
    }
    (code, start.elapsed().as_secs_f64(), text)
}

/// The counts of a Rust test harness's `test result:` lines, summed.
fn counts(output: &str) -> (u64, u64) {
    let mut passed = 0;
    let mut failed = 0;
    for line in output.lines().filter(|l| l.starts_with("test result:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let n = pair[0].parse::<u64>().unwrap_or(0);
            match pair[1].trim_end_matches(';') {
                "passed" => passed += n,
                "failed" => failed += n,
                _ => {}
            }
        }
    }
    (passed, failed)
}

fn step(line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["module", name] => match load_module(name) {
            Ok(()) => say(&format!("module {name} ok")),
            Err(e) => say(&format!("error module {e}")),
        },
        ["run", name, args @ ..] => {
            let (code, secs, text) = run(&format!("/km/bin/{name}"), args);
            let (passed, failed) = counts(&text);
            say(&format!(
                "run name={name} rc={code} secs={secs:.0} passed={passed} failed={failed}"
            ));
            for l in text.lines() {
                if let Some(t) = l.strip_prefix("test ")
                    && let Some(t) = t.strip_suffix(" ... FAILED")
                {
                    say(&format!("fail name={name} test={t}"));
                }
            }
            log_full(name, &text);
        }
        ["refuse"] => {
            let (code, secs, text) = run("/km/bin/synguard", &["run", "--iface", "lo"]);
            let first = text
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or("")
                .to_string();
            say(&format!("refusal rc={code} secs={secs:.0} message={first}"));
            log_full("synguard run --iface lo", &text);
        }
        [] => {}
        _ => say(&format!("error unknown plan step: {line}")),
    }
}

fn main() {
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/tmp"),
        ("tmpfs", "/run"),
        ("bpf", "/sys/fs/bpf"),
        // `run` attaches its sock_ops program (proofs of accepted connections) here.
        ("cgroup2", "/sys/fs/cgroup"),
    ] {
        if let Err(e) = mount(fstype, target) {
            say(&format!("error {e}"));
        }
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    say(&format!("kernel release={} cpus={cpus}", release.trim()));
    let (code, _, text) = run("/km/bin/ip", &["link", "set", "lo", "up"]);
    if code != 0 {
        say(&format!("error ip link set lo up: {}", text.trim()));
    }
    match fs::read_to_string("/km/plan") {
        Ok(plan) => plan.lines().for_each(step),
        Err(e) => say(&format!("error /km/plan: {e}")),
    }
    say("done");
    // SAFETY: sync and power off; nothing is left to run.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}
