//! The command line as an operator uses it: a real `synguard run` in the server's network
//! namespace, every other command from the host's namespace on the pinned state.

use std::{
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use synguard::bpf::Maps;
use synguard_common::stat;
use synguard_tests::{
    kit::{
        http::{Expect, Get},
        netns::TempDir,
        synguard_bin,
        topo::{ATTACKER, CLIENT, Lab, TARGET, fetch_in},
        traffic::Server,
    },
    require_root,
};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Everything a command could change, for "bad input changes nothing".
fn snapshot(lab: &Lab) -> (Value, Value, Value) {
    (
        lab.json(&["block", "list"]),
        lab.json(&["allow", "list"]),
        lab.json(&["config", "show"]),
    )
}

#[test]
fn every_command_and_its_json() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&[
        "run",
        "--iface",
        "sgc",
        "--iface",
        "sga",
        "--syn-burst",
        "5",
    ]);

    // status
    let human = lab.ok(&["status"]);
    assert!(human.contains("daemon:     running (pid"), "{human}");
    assert!(human.contains("interface:  sgc"), "{human}");
    assert!(human.contains("interface:  sga"), "{human}");
    let st = lab.json(&["status"]);
    assert_eq!(st["daemon_running"], true);
    assert_eq!(st["interfaces"].as_array().unwrap().len(), 2);
    assert_eq!(st["config"]["syn-burst"], "5");
    assert_eq!(st["program_build_id"], st["this_binary_build_id"]);
    assert_eq!(st["unhealthy"], serde_json::json!([]), "{st}");
    assert!(human.contains("health:     ok"), "{human}");
    let tables = st["tables"].as_array().unwrap();
    let sources = tables.iter().find(|t| t["table"] == "sources").unwrap();
    assert!(sources["capacity"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["rates"]["banned"], 0.0, "{st}");

    // A flood gets the attacker banned; the ban shows everywhere. While it runs, status
    // shows it as a rate.
    let st = thread::scope(|s| {
        s.spawn(|| lab.hping(3, &["-S", "-p", "80", "--flood", "192.0.2.1"]));
        thread::sleep(Duration::from_millis(1200));
        lab.json(&["status"])
    });
    let banned_per_s = st["rates"]["banned"].as_f64().unwrap();
    assert!(banned_per_s > 1000.0, "{st}");
    let human = lab.ok(&["status"]);
    assert!(human.to_lowercase().contains("per second"), "{human}");
    thread::sleep(Duration::from_millis(300));
    let bans = lab.json(&["block", "list"]);
    let ban = bans
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["prefix"] == format!("{ATTACKER}/32"))
        .unwrap_or_else(|| panic!("attacker banned: {bans}"));
    assert_eq!(ban["reason"], "auto");
    assert!(ban["syns"].as_u64().unwrap() >= 6);
    assert!(ban["rate"].as_u64().unwrap() > 1000, "{ban}");
    assert!(ban["hits"].as_u64().unwrap() > 1000, "{ban}");
    assert!(ban["first_seen"].as_str().unwrap().ends_with('Z'));
    let left = ban["expires_in_s"].as_u64().unwrap();
    assert!((590..=600).contains(&left), "{left}");
    let human = lab.ok(&["block", "list"]);
    assert!(
        human.contains("PREFIX") && human.contains("auto"),
        "{human}"
    );
    assert!(human.contains(&format!("{ATTACKER}/32")), "{human}");

    // Manual block with expiry and comment.
    let out = lab.ok(&[
        "block",
        "add",
        "2001:db8:bad::/48",
        "--for",
        "10m",
        "--comment",
        "rotating v6",
    ]);
    assert!(out.contains("blocked 2001:db8:bad::/48 for 10m"), "{out}");
    let list = lab.json(&["block", "list"]);
    let m = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["prefix"] == "2001:db8:bad::/48")
        .expect("listed");
    assert_eq!(m["reason"], "manual");
    assert_eq!(m["comment"], "rotating v6");
    assert_eq!(m["syns"], Value::Null);
    assert!(m["expires_in_s"].as_u64().unwrap() >= 598);

    // Allowlist.
    lab.ok(&["allow", "add", "198.51.100.0/24", "--comment", "office"]);
    let allow = lab.json(&["allow", "list"]);
    assert_eq!(allow[0]["prefix"], "198.51.100.0/24");
    assert_eq!(allow[0]["comment"], "office");
    assert!(lab.ok(&["allow", "list"]).contains("office"));

    // config show / set.
    let cfg = lab.json(&["config", "show"]);
    assert_eq!(cfg["syn-rate"], "200");
    assert!(lab.ok(&["config", "show"]).contains("syn-burst        5 *"));
    let out = lab.ok(&["config", "set", "syn-rate", "50"]);
    assert!(out.contains("syn-rate: 200 -> 50"), "{out}");
    assert_eq!(lab.json(&["config", "show"])["syn-rate"], "50");

    // explain: banned, blocked, allowed, metered, new.
    let e = lab.json(&["explain", ATTACKER]);
    assert_eq!(e["verdict"], "banned");
    assert_eq!(e["entry"]["prefix"], format!("{ATTACKER}/32"));
    assert!(e["bucket"]["syns"].as_u64().unwrap() >= 6);
    assert!(
        lab.ok(&["explain", ATTACKER])
            .contains("BANNED automatically")
    );
    assert_eq!(
        lab.json(&["explain", "2001:db8:bad:1::1"])["verdict"],
        "blocked"
    );
    let e = lab.json(&["explain", CLIENT]);
    assert_eq!(e["verdict"], "allowed");
    assert_eq!(e["entry"]["comment"], "office");
    assert_eq!(lab.json(&["explain", "192.0.2.200"])["verdict"], "new");

    // block del lifts the ban and resets the bucket.
    let out = lab.ok(&["block", "del", ATTACKER]);
    assert!(out.contains("removed the ban"), "{out}");
    let e = lab.json(&["explain", ATTACKER]);
    assert_eq!(e["verdict"], "new", "{e}");
    lab.ok(&["allow", "del", "198.51.100.0/24"]);
    assert_eq!(lab.json(&["allow", "list"]), Value::Array(vec![]));
    assert_eq!(lab.json(&["explain", CLIENT])["verdict"], "new");

    // Help texts carry examples.
    let help = text(&lab.sg(&["block", "add", "--help"]));
    assert!(
        help.contains("Examples:") && help.contains("--for"),
        "{help}"
    );
}

#[test]
fn bad_input_exits_2_with_an_actionable_message_and_changes_nothing() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&["run", "--iface", "sga"]);
    lab.ok(&["block", "add", "203.0.113.128/25", "--comment", "keep"]);
    lab.ok(&["allow", "add", "198.51.100.0/24"]);
    let before = snapshot(&lab);

    let long = "x".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["block", "add", "300.1.2.3/33"],
            "not a CIDR: 300.1.2.3/33",
        ),
        (vec!["block", "add", "banana"], "not an IP address: banana"),
        (
            vec!["block", "add", "10.0.0.5/24"],
            "host bits set; the network is 10.0.0.0/24",
        ),
        (
            vec!["block", "add", "203.0.113.0/24", "--for", "-5s"],
            "cannot be negative",
        ),
        (
            vec!["block", "add", "203.0.113.0/24", "--for", "soon"],
            "durations look like 30s, 10m, 1h",
        ),
        (
            vec!["block", "add", "203.0.113.0/24", "--for", "10"],
            "add a unit",
        ),
        (
            vec!["block", "add", "203.0.113.0/24", "--comment", &long],
            "at most 64",
        ),
        (vec!["block", "del", "192.0.2.99"], "is not blocked"),
        (
            vec!["block", "del", "203.0.113.200"],
            "inside the blocked 203.0.113.128/25",
        ),
        (
            vec!["block", "del", "198.51.100.0/24"],
            "use `synguard allow del",
        ),
        (
            vec!["allow", "del", "192.0.2.0/24"],
            "is not on the allowlist",
        ),
        (vec!["allow", "add", "1.2.3.4/40"], "not a CIDR"),
        (vec!["explain", "999.1.1.1"], "not an IP address"),
        (
            vec!["config", "set", "nonsense", "1"],
            "unknown config key `nonsense`",
        ),
        (
            vec!["config", "set", "syn-rat", "1"],
            "did you mean `syn-rate`",
        ),
        (vec!["config", "set", "syn-rate", "0"], "out of range"),
        (
            vec!["config", "set", "syn-rate", "-3"],
            "between 1 and 10000000",
        ),
        (
            vec!["config", "set", "ban-for", "-1m"],
            "cannot be negative",
        ),
        (
            vec!["config", "set", "ipv4-prefix", "33"],
            "between 8 and 32",
        ),
        (vec!["config", "set", "mode", "drop"], "enforce or monitor"),
        (vec!["config", "set", "ports", "0"], "port 0"),
    ];
    for (args, want) in &cases {
        let out = lab.sg(args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: expected {want:?} in: {t}");
        assert!(t.starts_with("error: "), "{args:?}: {t}");
        assert_eq!(snapshot(&lab), before, "{args:?} changed the state");
    }

    // Interfaces and privileges, on `run` (with a pin dir of its own).
    let other = lab.bpffs.path.join("other");
    let other = other.to_str().unwrap();
    let bin = synguard_bin();
    let bin = bin.to_str().unwrap();
    let run_cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![bin, "--pin-dir", other, "run", "--iface", "nosuch0"],
            "unknown interface \"nosuch0\"",
        ),
        (
            vec![
                bin,
                "--pin-dir",
                other,
                "run",
                "--iface",
                "lo",
                "--xdp-mode",
                "native",
            ],
            "lo does not support native XDP",
        ),
        (
            vec![
                bin,
                "--pin-dir",
                other,
                "run",
                "--iface",
                "sga",
                "--syn-burst",
                "0",
            ],
            "invalid value for `syn-burst`",
        ),
        (
            vec![
                bin,
                "--pin-dir",
                other,
                "run",
                "--iface",
                "sga",
                "--config",
                "/nonexistent.toml",
            ],
            "cannot read config file /nonexistent.toml",
        ),
        (
            vec![
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin,
                "--pin-dir",
                other,
                "run",
                "--iface",
                "sga",
            ],
            "needs root or the capabilities CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN",
        ),
        (
            vec![
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin,
                "--pin-dir",
                other,
                "status",
            ],
            "needs root or the capabilities CAP_BPF",
        ),
        (
            vec![bin, "--pin-dir", other, "status"],
            "synguard is not running on this host",
        ),
        (
            vec![bin, "--pin-dir", other, "block", "add", "192.0.2.0/24"],
            "start it with `synguard run --iface IF`",
        ),
    ];
    for (args, want) in &run_cases {
        let out = lab.server.try_exec(args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: expected {want:?} in: {t}");
        assert_eq!(snapshot(&lab), before, "{args:?} changed the state");
    }
    let st = lab.server.ip(&["link", "show", "lo"]);
    assert!(!String::from_utf8_lossy(&st.stdout).contains("xdp"));

    // A bad config file is refused with the reason.
    let bad = lab.bpffs.path.with_extension("toml");
    let _bad_guard = TempFile(bad.clone());
    std::fs::write(&bad, "syn-rate = 0\n").unwrap();
    let out = lab.server.try_exec(&[
        bin,
        "--pin-dir",
        other,
        "run",
        "--iface",
        "sga",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("invalid value for `syn-rate`"),
        "{}",
        text(&out)
    );
}

#[test]
fn config_set_under_live_traffic_changes_drops_within_a_second() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&[
        "run",
        "--iface",
        "sga",
        "--syn-rate",
        "100000",
        "--syn-burst",
        "100000",
    ]);
    let slot = lab.server.ifindex("sga");
    let maps = Maps::from_pins(&lab.pin_dir()).unwrap();
    let dropped = |m: &Maps| {
        let c = m.counters(slot).unwrap();
        c[stat::R_SYN_LIMITED] + c[stat::R_BANNED]
    };
    // 1000 SYN/s from one source, for 6 s, in the background.
    let attacker = lab.attacker.path();
    let sender = thread::spawn(move || {
        synguard_tests::kit::netns::enter(&attacker);
        std::process::Command::new("timeout")
            .args([
                "-s",
                "INT",
                "6",
                "hping3",
                "-S",
                "-p",
                "80",
                "-i",
                "u1000",
                "192.0.2.1",
            ])
            .output()
    });
    thread::sleep(Duration::from_secs(2));
    assert_eq!(dropped(&maps), 0, "nothing dropped under a generous limit");
    let passed_before = maps.counters(slot).unwrap()[stat::R_SYN_PASSED];
    assert!(passed_before > 500, "the SYNs are flowing: {passed_before}");

    let t0 = Instant::now();
    lab.ok(&["config", "set", "syn-rate", "10"]);
    lab.ok(&["config", "set", "syn-burst", "5"]);
    let mut took = None;
    while t0.elapsed() < Duration::from_secs(1) {
        if dropped(&maps) > 0 {
            took = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let took = took.unwrap_or_else(|| panic!("no drops within 1 s of `config set`"));
    println!("drops started {took:?} after `config set`");
    sender.join().unwrap().unwrap();
    assert!(
        dropped(&maps) > 1000,
        "and the source stays cut off: {}",
        dropped(&maps)
    );
}

#[test]
fn manual_block_with_for_stops_traffic_and_expires_on_time() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&["run", "--iface", "sgc"]);
    let _web = Server::start(&lab.server, TARGET.parse().unwrap());
    let try_fetch = |lab: &Lab| fetch_in(&lab.client, None, Duration::from_millis(700)).is_ok();
    assert!(try_fetch(&lab), "the client works before the block");
    let t0 = Instant::now();
    lab.ok(&["block", "add", CLIENT, "--for", "3s", "--comment", "test"]);
    assert!(!try_fetch(&lab), "blocked");
    thread::sleep(Duration::from_millis(1500));
    assert!(!try_fetch(&lab), "still blocked at 2 s");
    assert_eq!(lab.json(&["explain", CLIENT])["verdict"], "blocked");
    while t0.elapsed() < Duration::from_millis(3100) {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(try_fetch(&lab), "free again after 3 s");
    // The daemon's sweep removes it within a second.
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(lab.json(&["block", "list"]), Value::Array(vec![]));
}

#[test]
fn lockout_guard_protects_allowlisted_addresses_and_the_operators_ssh_session() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&["run", "--iface", "sga"]);
    lab.ok(&["allow", "add", "198.51.100.0/24", "--comment", "office"]);
    let out = lab.sg(&["block", "add", "198.51.0.0/16"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("covers the allowlisted 198.51.100.0/24 (office)"),
        "{}",
        text(&out)
    );
    let out = lab.sg(&["block", "add", "198.51.100.7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("inside the allowlisted"),
        "{}",
        text(&out)
    );
    assert_eq!(lab.json(&["block", "list"]), Value::Array(vec![]));
    // --force adds it; the allowlisted part stays allowed.
    lab.ok(&["block", "add", "198.51.0.0/16", "--force"]);
    assert_eq!(lab.json(&["explain", "198.51.100.9"])["verdict"], "allowed");
    assert_eq!(lab.json(&["explain", "198.51.7.9"])["verdict"], "blocked");

    let ssh = [("SSH_CONNECTION", "203.0.113.77 51000 192.0.2.1 22")];
    let out = lab.sg_env(&["block", "add", "203.0.113.0/24"], &ssh);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("contains 203.0.113.77, the address of your own SSH session"),
        "{}",
        text(&out)
    );
    assert_eq!(lab.json(&["explain", "203.0.113.77"])["verdict"], "new");
    let out = lab.sg_env(&["block", "add", "203.0.113.0/24", "--force"], &ssh);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.json(&["explain", "203.0.113.77"])["verdict"], "blocked");
    // Unrelated prefixes are not refused.
    let out = lab.sg_env(&["block", "add", "192.0.2.128/25"], &ssh);
    assert!(out.status.success(), "{}", text(&out));
}

/// Sets a flag when dropped, so helper threads stop even when a test panics.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn synguard_cmd(pin: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(synguard_bin())
        .arg("--pin-dir")
        .arg(pin)
        .args(args)
        .env_remove("SSH_CONNECTION")
        .output()
        .expect("run synguard")
}

#[test]
fn concurrent_writers_and_expiring_bans_never_lose_an_entry() {
    require_root!();
    let lab = Lab::new();
    let daemon = lab.daemon(&[
        "run",
        "--iface",
        "sga",
        "--syn-rate",
        "1",
        "--syn-burst",
        "1",
        "--ban-for",
        "1s",
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    // Bans appear and expire all along: forged sources from 198.18.0.0/15 send a few
    // SYNs each, get banned for a second, and the daemon sweeps them.
    let attacker = lab.attacker.path();
    let churn_stop = stop.clone();
    let churn = thread::spawn(move || {
        synguard_tests::kit::netns::enter(&attacker);
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(8)
            && !churn_stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            // hping3 lingers about a second after its last packet: ten at a time.
            let batch: Vec<_> = (0..10)
                .map(|_| {
                    n += 1;
                    let src = format!("198.18.{}.{}", (n / 250) % 256, n % 250 + 1);
                    std::process::Command::new("hping3")
                        .args(["-q", "-S", "-p", "80", "-c", "3", "-i", "u1000", "-a", &src])
                        .arg("192.0.2.1")
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .expect("hping3")
                })
                .collect();
            for mut child in batch {
                let _ = child.wait();
            }
        }
    });

    let pin = lab.pin_dir();
    // Two writers adding blocks, one of them deleting some again, and a third toggling an
    // allow entry that covers the first writer's range (each toggle rewrites the
    // effective action of every block inside it).
    let writer = |base: u8, count: u8, delete_every: u8| {
        let pin = pin.clone();
        thread::spawn(move || {
            for i in 0..count {
                let net = format!("10.{base}.{i}.0/24");
                let out = synguard_cmd(
                    &pin,
                    &[
                        "block",
                        "add",
                        &net,
                        "--comment",
                        &format!("w{base}-{i}"),
                        "--force",
                    ],
                );
                assert!(out.status.success(), "{}", text(&out));
                if delete_every > 0 && i % delete_every == 0 {
                    let out = synguard_cmd(&pin, &["block", "del", &net]);
                    assert!(out.status.success(), "{}", text(&out));
                }
            }
        })
    };
    let toggler = {
        let pin = pin.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut toggles = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && toggles < 400 {
                let out = synguard_cmd(&pin, &["allow", "add", "10.1.0.0/16"]);
                assert!(out.status.success(), "{}", text(&out));
                let out = synguard_cmd(&pin, &["allow", "del", "10.1.0.0/16"]);
                assert!(out.status.success(), "{}", text(&out));
                toggles += 1;
            }
            toggles
        })
    };
    let a = writer(1, 120, 0);
    let b = writer(2, 120, 3);
    a.join().unwrap();
    b.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let toggles = toggler.join().unwrap();
    churn.join().unwrap();
    assert!(toggles > 5, "the allow entry was toggled: {toggles}");

    let list = lab.json(&["block", "list"]);
    let manual: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "manual")
        .map(|e| {
            (
                e["prefix"].as_str().unwrap().to_string(),
                e["comment"].as_str().unwrap().to_string(),
                e["effective"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for base in 1..=2u8 {
        for i in 0..120u8 {
            if base == 2 && i % 3 == 0 {
                continue;
            }
            want.push((
                format!("10.{base}.{i}.0/24"),
                format!("w{base}-{i}"),
                "drop".to_string(),
            ));
        }
    }
    let mut got = manual;
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "every entry, its comment, and (with the allow entry gone) drop"
    );

    let bans = daemon.log_text().matches("banned 198.18.").count();
    assert!(bans >= 10, "bans churned: {bans}");
    // Every automatic ban expires and is swept.
    thread::sleep(Duration::from_millis(2500));
    let left: Vec<Value> = lab
        .json(&["block", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "auto")
        .cloned()
        .collect();
    assert!(left.is_empty(), "bans outlived ban-for: {left:?}");
}

#[test]
fn suppressed_ban_events_are_found_by_the_sweep() {
    require_root!();
    let lab = Lab::new();
    let daemon = lab.daemon(&[
        "run",
        "--iface",
        "sga",
        "--syn-rate",
        "1",
        "--syn-burst",
        "1",
    ]);
    // 256 sources banned within milliseconds: more than the per-CPU event burst (100).
    let spec = synguard_tests::kit::flood::FloodSpec {
        ifindex: lab.attacker.ifindex("eth0"),
        src_mac: synguard_tests::kit::netns::mac_of(&lab.attacker, "eth0").expect("mac"),
        dst_mac: synguard_tests::kit::netns::mac_of(&lab.server, "sga").expect("mac"),
        source: synguard_tests::kit::flood::Source::Random("198.18.7.0/24".parse().unwrap()),
        dst: "192.0.2.1".parse().unwrap(),
        dport: 80,
        rate: None,
        flags: synguard_tests::kit::packet::SYN,
        duration: Duration::from_millis(300),
        threads: 1,
        batch: 64,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = lab
        .attacker
        .spawn(move || {
            synguard_tests::kit::flood::run(&spec, &std::sync::atomic::AtomicBool::new(false))
        })
        .join()
        .unwrap()
        .unwrap();
    let _ = stop;
    assert!(sent.sent > 10_000, "{sent:?}");
    let maps = Maps::from_pins(&lab.pin_dir()).unwrap();
    let c = maps.total_counters().unwrap();
    assert_eq!(c[stat::N_BANS], 256, "every source banned");
    assert!(c[stat::N_EVENTS_SUPPRESSED] > 0, "events suppressed");
    let mut d = daemon;
    d.wait_for_log(
        "found by the sweep; its event was rate-limited",
        Duration::from_secs(3),
    );
    let start = Instant::now();
    while d.log_text().matches("banned 198.18.7.").count() < 256 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "every ban logged once"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.log_text().matches("banned 198.18.7.").count(), 256);
}

#[test]
fn explain_shows_limited_and_metered_sources() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&[
        "run",
        "--iface",
        "sga",
        "--iface",
        "sgc",
        "--ban-for",
        "0s",
        "--syn-rate",
        "1",
        "--syn-burst",
        "3",
    ]);
    let _web = Server::start(&lab.server, TARGET.parse().unwrap());
    let ok = fetch_in(&lab.client, None, Duration::from_secs(2)).is_ok();
    assert!(ok);
    let e = lab.json(&["explain", CLIENT]);
    assert_eq!(e["verdict"], "metered", "{e}");
    assert_eq!(e["bucket"]["tokens"], 2);
    assert!(
        lab.ok(&["explain", CLIENT])
            .contains("may open 2 more SYNs at once")
    );
    // hping3 lingers after its last packet; stop it at once so the bucket (1 SYN/s) has
    // no time to earn a token back before `explain` looks.
    let out = lab.attacker.try_exec(&[
        "timeout",
        "-s",
        "KILL",
        "0.2",
        "hping3",
        "-S",
        "-p",
        "80",
        "-i",
        "u2000",
        "192.0.2.1",
    ]);
    let _ = out;
    let e = lab.json(&["explain", ATTACKER]);
    assert_eq!(e["verdict"], "limited", "{e}");
    assert_eq!(e["bucket"]["tokens"], 0);
    assert!(e["bucket"]["limited"].as_u64().unwrap() >= 6, "{e}");
    assert!(lab.ok(&["explain", ATTACKER]).contains("LIMITED"));
}

#[test]
fn auto_mode_falls_back_to_generic_xdp_and_says_so() {
    require_root!();
    let lab = Lab::new();
    // Loopback has no native XDP.
    let d = lab.daemon(&["run", "--iface", "lo"]);
    let log = d.log_text();
    assert!(
        log.contains("lo: the driver has no native XDP")
            && log.contains("falling back to generic (skb) mode"),
        "{log}"
    );
    assert!(
        log.contains("protecting lo (ifindex 1), XDP generic (skb) mode"),
        "{log}"
    );
    let link = lab.server.ip(&["link", "show", "lo"]);
    assert!(String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"));
}

#[test]
fn a_failed_run_leaves_adopted_state_exactly_as_it_was() {
    require_root!();
    let lab = Lab::new();
    let mut first = lab.daemon(&["run", "--iface", "sga", "--keep", "--syn-rate", "77"]);
    lab.ok(&["block", "add", "203.0.113.128/25"]);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait(Duration::from_secs(10)), Some(0));
    let before = lab.json(&["status"]);
    let snap = snapshot(&lab);
    // This run would change the mode and the rate, but cannot attach to lo natively.
    let bin = synguard_bin();
    let pin = lab.pin_dir();
    let out = lab.server.try_exec(&[
        bin.to_str().unwrap(),
        "--pin-dir",
        pin.to_str().unwrap(),
        "run",
        "--iface",
        "sga",
        "--iface",
        "lo",
        "--xdp-mode",
        "native",
        "--mode",
        "monitor",
        "--syn-rate",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(snapshot(&lab), snap, "lists and config unchanged");
    let after = lab.json(&["status"]);
    assert_eq!(after["config"]["mode"], "enforce");
    assert_eq!(after["config"]["syn-rate"], "77");
    assert_eq!(
        after["interfaces"][0]["program_id"], before["interfaces"][0]["program_id"],
        "the attached program is the one from before"
    );
    let lo = lab.server.ip(&["link", "show", "lo"]);
    assert!(!String::from_utf8_lossy(&lo.stdout).contains("xdp"));
}

#[test]
fn pin_dir_is_never_mounted_over_a_directory_with_contents() {
    require_root!();
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(synguard_tests::kit::netns::unique("sgpin"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDirGuard(dir.clone());
    std::fs::write(dir.join("precious"), "data").unwrap();
    let bin = synguard_bin();
    let out = lab.server.try_exec(&[
        bin.to_str().unwrap(),
        "--pin-dir",
        dir.to_str().unwrap(),
        "run",
        "--iface",
        "sga",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not on a BPF filesystem and not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("precious")).unwrap(),
        "data"
    );
}

struct TempDirGuard(std::path::PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn config_file_is_reread_on_sighup_and_a_bad_one_is_refused() {
    require_root!();
    let lab = Lab::new();
    let file = lab.bpffs.path.with_extension("sighup.toml");
    let _file_guard = TempFile(file.clone());
    std::fs::write(&file, "syn-rate = 100\nports = [80, 443]\n").unwrap();
    let daemon = lab.daemon(&[
        "run",
        "--iface",
        "sga",
        "--config",
        file.to_str().unwrap(),
        "--syn-burst",
        "7",
    ]);
    let cfg = lab.json(&["config", "show"]);
    assert_eq!(
        (cfg["syn-rate"].as_str(), cfg["ports"].as_str()),
        (Some("100"), Some("80,443"))
    );
    assert_eq!(cfg["syn-burst"], "7", "command-line keys override the file");

    std::fs::write(&file, "syn-rate = 50\nban-for = \"5m\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let start = Instant::now();
    while lab.json(&["config", "show"])["syn-rate"] != "50" {
        assert!(start.elapsed() < Duration::from_secs(3), "not reloaded");
        thread::sleep(Duration::from_millis(50));
    }
    let cfg = lab.json(&["config", "show"]);
    assert_eq!(cfg["ban-for"], "5m");
    assert_eq!(
        cfg["ports"], "",
        "keys gone from the file go back to their defaults"
    );
    assert_eq!(cfg["syn-burst"], "7");

    std::fs::write(&file, "syn-rate = 0\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let mut d = daemon;
    d.wait_for_log(
        "not reloading, the config in force stays",
        Duration::from_secs(3),
    );
    assert!(d.log_text().contains("invalid value for `syn-rate`"));
    assert_eq!(lab.json(&["config", "show"])["syn-rate"], "50");
}

#[test]
fn keep_leaves_protection_in_place_and_sigint_without_it_cleans_up() {
    require_root!();
    let lab = Lab::new();
    let mut daemon = lab.daemon(&["run", "--iface", "sga", "--keep"]);
    lab.ok(&["block", "add", ATTACKER, "--comment", "kept"]);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(10)), Some(0));
    assert!(
        daemon
            .log_text()
            .contains("leaving protection in place (--keep)")
    );
    let link = lab.server.ip(&["link", "show", "sga"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "still attached"
    );
    let st = lab.json(&["status"]);
    assert_eq!(st["daemon_running"], false);
    assert!(
        st["unhealthy"][0]
            .as_str()
            .unwrap()
            .contains("no `synguard run` is active"),
        "{st}"
    );
    assert_eq!(lab.json(&["explain", ATTACKER])["verdict"], "blocked");
    // Still enforced with no daemon at all.
    let out = lab.hping(
        1,
        &["-S", "-p", "80", "-c", "3", "-i", "u100000", "192.0.2.1"],
    );
    assert!(out.contains("100% packet loss"), "{out}");
    let maps = Maps::from_pins(&lab.pin_dir()).unwrap();
    let blocked = maps.counters(lab.server.ifindex("sga")).unwrap()[stat::R_BLOCKED];
    assert!(blocked >= 3, "{blocked}");
    drop(maps);

    let mut again = lab.daemon(&["run", "--iface", "sga"]);
    assert_eq!(lab.json(&["explain", ATTACKER])["entry"]["comment"], "kept");
    again.signal(libc::SIGINT);
    assert_eq!(again.wait(Duration::from_secs(10)), Some(0));
    assert!(again.log_text().contains("SIGINT: detached from sga"));
    let link = lab.server.ip(&["link", "show", "sga"]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "detached"
    );
    assert!(!lab.pin_dir().exists());
}

/// `run --metrics`: Prometheus text that `promtool` accepts, and whose values move with
/// real traffic.
#[test]
fn metrics_are_valid_prometheus_and_move_with_traffic() {
    require_root!();
    let lab = Lab::new();
    let _daemon = lab.daemon(&["run", "--iface", "sga", "--metrics", "127.0.0.1:9477"]);
    let scrape = |lab: &Lab| synguard_tests::kit::traffic::scrape(&lab.server, "127.0.0.1:9477");
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let first = scrape(&lab);
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    let body = first.split("\r\n\r\n").nth(1).unwrap().to_string();
    synguard_tests::kit::traffic::promtool_check(&body);
    let banned = "synguard_packets_total{interface=\"sga\",verdict=\"banned\",action=\"drop\"}";
    assert_eq!(value(&body, banned), 0.0);
    assert_eq!(value(&body, "synguard_rules{kind=\"ban\"}"), 0.0);
    assert_eq!(value(&body, "synguard_attack_mode{interface=\"sga\"}"), 0.0);
    assert_eq!(
        value(&body, "synguard_map_capacity{map=\"sources\"}"),
        1_048_576.0
    );

    lab.hping(2, &["-S", "-p", "80", "--flood", "192.0.2.1"]);
    thread::sleep(Duration::from_millis(300));
    let body = scrape(&lab);
    assert!(value(&body, banned) > 10_000.0, "{body}");
    assert_eq!(value(&body, "synguard_rules{kind=\"ban\"}"), 1.0);
    assert_eq!(
        value(
            &body,
            "synguard_events_total{interface=\"sga\",event=\"bans\"}"
        ),
        1.0
    );
    assert!(value(&body, "synguard_map_entries{map=\"sources\"}") >= 1.0);
    let not_found = Get::new("127.0.0.1:9477".parse().unwrap())
        .http11()
        .host(None)
        .expecting(Expect::Anything)
        .answer_in(&lab.server)
        .unwrap()
        .text();
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
}

/// The journal records what `run` saw and did, survives a restart, and never comes
/// from the packet path (only the daemon writes it).
#[test]
fn the_journal_records_bans_changes_and_samples_across_restarts() {
    require_root!();
    let lab = Lab::new();
    let mut d = lab.daemon(&["run", "--iface", "sga"]);
    lab.hping(1, &["-S", "-p", "80", "--flood", "192.0.2.1"]);
    lab.ok(&["block", "add", "2001:db8:bad::/48", "--comment", "scanner"]);
    lab.ok(&["config", "set", "syn-rate", "150"]);
    thread::sleep(Duration::from_millis(5600));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    let _again = lab.daemon(&["run", "--iface", "sga"]);
    let (records, bad) = synguard::journal::read(&lab.state.path, None).unwrap();
    assert_eq!(bad, 0);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| match &r.event {
            synguard::journal::Event::Start { .. } => "start",
            synguard::journal::Event::Stop { .. } => "stop",
            synguard::journal::Event::Interface { .. } => "interface",
            synguard::journal::Event::Ban { .. } => "ban",
            synguard::journal::Event::ListChange { .. } => "list",
            synguard::journal::Event::Config { .. } => "config",
            synguard::journal::Event::Sample { .. } => "sample",
            _ => "other",
        })
        .collect();
    for k in [
        "start",
        "interface",
        "ban",
        "list",
        "config",
        "sample",
        "stop",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "start").count(),
        2,
        "{kinds:?}"
    );
    assert!(records.iter().any(|r| matches!(&r.event,
        synguard::journal::Event::Ban { prefix, syn_rate, .. } if prefix == &format!("{ATTACKER}/32") && *syn_rate > 1000)));
    assert!(records.iter().any(|r| matches!(&r.event,
        synguard::journal::Event::ListChange { prefix, change, comment, .. }
            if prefix == "2001:db8:bad::/48" && change == "added" && comment == "scanner")));
    assert!(records.iter().any(|r| matches!(&r.event,
        synguard::journal::Event::Config { key, old, new } if key == "syn-rate" && old == "200" && new == "150")));
    let sample = records
        .iter()
        .find_map(|r| match &r.event {
            synguard::journal::Event::Sample { interfaces, .. } => Some(interfaces.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        sample[0].counters.get("banned").copied().unwrap_or(0) > 1000,
        "{sample:?}"
    );
    // Readable by root only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(lab.state.path.join("journal.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // `report` turns the journal into the incident report: the attacker and the type.
    let rep: Value = serde_json::from_str(&lab.ok(&["report", "--format", "json"])).unwrap();
    let attack = &rep["attacks"][0];
    assert_eq!(attack["kind"], "single_source", "{rep:#}");
    let evidence = attack["evidence"][0].as_str().unwrap();
    assert!(
        evidence.starts_with(&format!("{ATTACKER}/32 sent")),
        "{rep:#}"
    );
    assert_eq!(rep["top_sources"][0]["source"], format!("{ATTACKER}/32"));
    assert_eq!(rep["top_sources"][0]["verdict"], "banned (auto)");
    assert!(rep["peaks"]["syn_rate"].as_u64().unwrap() > 1000, "{rep:#}");
    assert!(
        rep["drops"][0]["packets"].as_u64().unwrap() > 1000,
        "{rep:#}"
    );
    let timeline = rep["timeline"].to_string();
    for what in [
        "banned 203.0.113.66/32",
        "blocklist: 2001:db8:bad::/48 added",
        "syn-rate: 200 → 150",
    ] {
        assert!(timeline.contains(what), "{what} in {timeline}");
    }
    // As Markdown, to a file, with its chart beside it.
    let out = TempDir::new("report");
    let md = out.path.join("incident.md");
    lab.ok(&["report", "--output", md.to_str().unwrap()]);
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("**single source**"), "{text}");
    assert!(text.contains("![SYN rate, drops and attack mode](incident.svg)"));
    let svg = std::fs::read_to_string(out.path.join("incident.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    // Later than everything in it: nothing to report.
    thread::sleep(Duration::from_millis(1100));
    let quiet: Value =
        serde_json::from_str(&lab.ok(&["report", "--since", "1s", "--format", "json"])).unwrap();
    assert_eq!(quiet["attacks"], serde_json::json!([]), "{quiet:#}");
}

/// `report` refuses bad input with exit 2 and changes nothing.
#[test]
fn report_rejects_bad_input() {
    let dir = TempDir::new("noj");
    for (args, says) in [
        (vec!["report", "--since", "yesterday"], "not a duration"),
        (vec!["report", "--since", "0s"], "is zero"),
        (vec!["report", "--format", "pdf"], "invalid value"),
        (vec!["report"], "no journal"),
    ] {
        let out = Command::new(synguard_bin())
            .arg("--state-dir")
            .arg(&dir.path)
            .args(&args)
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(says), "{args:?}: {t}");
    }
    assert_eq!(std::fs::read_dir(&dir.path).unwrap().count(), 0);
}

/// A `synguard top` whose stdout is a pipe, its lines collected as they come.
struct PipedTop {
    guard: synguard_tests::kit::netns::ChildGuard,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::process::ChildStderr>,
}

impl PipedTop {
    fn start(lab: &Lab, interval: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(synguard_bin())
            .arg("--pin-dir")
            .arg(lab.pin_dir())
            .arg("--state-dir")
            .arg(&lab.state.path)
            .args(["top", "--interval", interval])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn synguard top");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take();
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            guard: synguard_tests::kit::netns::ChildGuard {
                child: Some(child),
                log: None,
            },
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Collect lines until `done` holds for the lines so far, or `timeout` passes.
    fn until(&mut self, timeout: Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return false,
            }
        }
        true
    }

    /// Everything it wrote to stderr (call once it has exited).
    fn stderr(&mut self) -> String {
        use std::io::Read as _;
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// A `key=value` field of a plain `top` line.
fn top_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `synguard top` with stdout not a terminal: one plain line per interval that shows a
/// live flood, the attacker as the busiest source with its verdict, its ban as it
/// happens; SIGINT ends it with 0, and so does the state going away. Without state, or
/// with a bad interval, it exits 2 like every other command.
#[test]
fn top_prints_plain_lines_with_the_flood_its_source_and_the_ban() {
    require_root!();
    let lab = Lab::new();
    for (args, want) in [
        (
            vec!["top", "--interval", "500ms"],
            "synguard is not running on this host",
        ),
        (vec!["top", "--interval", "0"], "the duration \"0\" is zero"),
        (
            vec!["top", "--interval", "soon"],
            "not a duration: \"soon\"",
        ),
        (vec!["top", "--interval", "10ms"], "use 100ms to 1h"),
    ] {
        let out = lab.sg(&args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: expected {want:?} in: {t}");
    }

    let mut daemon = lab.daemon(&["run", "--iface", "sga"]);
    let mut top = PipedTop::start(&lab, "500ms");
    // The first line comes one interval after the first reading, before the flood.
    if !top.until(Duration::from_secs(5), |l| !l.is_empty()) {
        top.guard.signal(libc::SIGKILL);
        panic!("no line from top: {}", top.stderr());
    }
    let first = top.seen[0].clone();
    assert!(
        first.contains(" syn/s=") && first.ends_with("bans=0 top=-"),
        "{first}"
    );
    assert!(first.split(' ').next().unwrap().ends_with('Z'), "{first}");

    let banned_top = format!("top={ATTACKER}/32:");
    let flooding = |l: &[String]| {
        l.iter().any(|l| {
            top_field(l, "syn/s").and_then(|v| v.parse::<u64>().ok()) > Some(1000)
                && top_field(l, "drop/s").and_then(|v| v.parse::<u64>().ok()) > Some(1000)
                && l.contains(&banned_top)
                && top_field(l, "top")
                    .is_some_and(|t| t.split(',').next().is_some_and(|s| s.ends_with("(banned)")))
                && l.contains(" bans=1 ")
        })
    };
    let shown = thread::scope(|s| {
        s.spawn(|| lab.hping(4, &["-S", "-p", "80", "--flood", "192.0.2.1"]));
        top.until(Duration::from_secs(4), flooding)
    });
    let all = top.seen.join("\n");
    assert!(
        shown,
        "no line with the flood and the banned attacker:\n{all}"
    );
    let event = format!("Z + {ATTACKER}/32 banned (at ");
    let ev = top
        .seen
        .iter()
        .find(|l| l.contains(&event))
        .unwrap_or_else(|| panic!("no ban event:\n{all}"));
    assert!(ev.contains("SYN/s), expires in 10m"), "{ev}");
    // Nothing but sample lines and list changes.
    for l in &top.seen {
        assert!(
            l.contains(" syn/s=") || l.contains("Z + ") || l.contains("Z - "),
            "{l}"
        );
    }

    top.guard.signal(libc::SIGINT);
    let code = top.guard.wait(Duration::from_secs(5));
    let err = top.stderr();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err, "", "SIGINT ends top quietly");

    // A `top` watching when `run` stops (and removes the state) ends with 0 and says why.
    let mut watcher = PipedTop::start(&lab, "200ms");
    assert!(watcher.until(Duration::from_secs(5), |l| !l.is_empty()));
    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.wait(Duration::from_secs(10)), Some(0));
    assert_eq!(watcher.guard.wait(Duration::from_secs(5)), Some(0));
    let err = watcher.stderr();
    assert!(err.contains("is gone"), "{err}");
}

/// The capabilities the systemd unit grants (its `CapabilityBoundingSet`).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../synguard/dist/synguard.service"
    ))
    .expect("the unit file");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

fn setpriv_caps(caps: &[String]) -> Vec<String> {
    let set = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{set}"),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

/// `run` works with exactly the unit's capabilities (attach, bans, half-open purge, the
/// tcp_syncookies sysctl for cookies from XDP), says what is missing with fewer, and a user
/// without them can neither read nor change the state.
#[test]
fn least_capabilities_suffice_and_others_are_refused() {
    require_root!();
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "perfmon", "net_admin"]);
    let lab = Lab::new();
    lab.server.sysctl("net.ipv4.tcp_syncookies", "1");
    let wrapper = setpriv_caps(&caps);
    let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut d = lab.daemon_via(&w, &["run", "--iface", "sga", "--keep"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap_or_default();
    // The wrapper (`ip netns exec`) has exec'd into synguard by now.
    if let Some(eff) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) {
        let eff = u64::from_str_radix(eff.trim(), 16).unwrap();
        assert_eq!(eff, (1 << 39) | (1 << 38) | (1 << 12), "CapEff {eff:x}");
    }
    // A ban, with its half-open connections purged.
    lab.hping(1, &["-S", "-p", "80", "--flood", "192.0.2.1"]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.json(&["explain", ATTACKER])["verdict"], "banned");
    // SYN cookies from XDP: the sysctl is set (by the keeper: `always` needs no
    // pressure) and put back.
    lab.ok(&["config", "set", "syn-cookies", "always"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log_text().contains("set net.ipv4.tcp_syncookies = 2") {
        assert!(Instant::now() < deadline, "attack mode: {}", d.log_text());
        thread::sleep(Duration::from_millis(100));
    }
    let log = d.log_text();
    assert!(!log.contains("cannot remove half-open"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0), "{}", d.log_text());

    // The state is root's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let maps = lab.pin_dir().join("maps");
    let mode = std::fs::metadata(&maps).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", maps.display());
    for e in std::fs::read_dir(&maps).unwrap() {
        let mode = e.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "pinned maps are {mode:o}");
    }
    let nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(synguard_bin())
            .arg("--pin-dir")
            .arg(lab.pin_dir())
            .arg("--state-dir")
            .arg(&lab.state.path)
            .args(args);
        c.output().unwrap()
    };
    for args in [
        &["block", "list"][..],
        &["block", "add", "192.0.2.77"],
        &["allow", "add", "192.0.2.77"],
        &["config", "set", "syn-rate", "1"],
        &["status"],
        &["report"],
    ] {
        let out = nobody(args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains("needs root") || t.contains("readable by root only"),
            "{args:?}: {t}"
        );
    }
    let list = lab.json(&["block", "list"]).to_string();
    assert!(
        !list.contains("192.0.2.77"),
        "nobody changed nothing: {list}"
    );
    assert_eq!(lab.json(&["allow", "list"]), serde_json::json!([]));
    assert_eq!(lab.json(&["config", "show"])["syn-rate"], "200");

    // Without CAP_NET_ADMIN (or CAP_PERFMON) `run` says what is missing, and starts
    // nothing.
    for missing in ["net_admin", "perfmon"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut c = lab.server.command("setpriv");
        c.args(&setpriv_caps(&fewer)[1..])
            .arg(synguard_bin())
            .arg("--pin-dir")
            .arg(lab.pin_dir())
            .args(["run", "--iface", "sga"]);
        let out = c.output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains(&format!("missing: CAP_{}", missing.to_uppercase())),
            "{t}"
        );
    }

    // `detach` takes the kept program away.
    let out = nobody(&["detach"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    lab.ok(&["detach"]);
    let link = lab.server.ip(&["link", "show", "sga"]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"));
    assert!(!lab.pin_dir().join("maps").exists());
    let out = lab.sg(&["detach"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("nothing to detach"), "{}", text(&out));
}

/// `detach` refuses while `run` is active.
#[test]
fn detach_refuses_while_run_is_active() {
    require_root!();
    let lab = Lab::new();
    let _d = lab.daemon(&["run", "--iface", "sga"]);
    let out = lab.sg(&["detach"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is active"), "{}", text(&out));
    let link = lab.server.ip(&["link", "show", "sga"]);
    assert!(String::from_utf8_lossy(&link.stdout).contains("xdp"));
}
