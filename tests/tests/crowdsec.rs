//! A fleet sharing bans through a real CrowdSec Local API (the Debian package's, run
//! offline in a namespace of its own: `synguard_tests::kit::lapi`): two synguard servers, each
//! with its employees' and its attacker's links, pull the LAPI's decisions and push their
//! own bans.

use std::{
    thread,
    time::{Duration, Instant},
};

use synguard_tests::{
    kit::{
        lapi::{self, Lapi},
        netns::ChildGuard,
        topo::{ATTACKER, CLIENT, Lab, fetch_in},
        traffic::Server,
    },
    require_root,
};

/// One test at a time: every `run` attaches its `sock_ops` program to the root cgroup,
/// so a handshake in one test's lab proves its address (the labs share addresses) to
/// every other `run` on the machine, as it would on a real host.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn need_lapi() -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = lapi::missing() {
        panic!("{why}");
    }
    guard
}

/// A server of the fleet: its lab, its web server and its `synguard run` linked to the
/// LAPI (pulling every second).
struct Member {
    lab: Lab,
    _web: Server,
    daemon: ChildGuard,
}

fn member(lapi: &mut Lapi, name: &str, extra: &[&str]) -> Member {
    let lab = Lab::new();
    let web = Server::start(
        &lab.server,
        synguard_tests::kit::topo::TARGET.parse().expect("addr"),
    );
    let url = lapi.link(&lab.server);
    let key = lapi.bouncer(name);
    let mut args = vec![
        "run".to_string(),
        "--iface".into(),
        "sgc".into(),
        "--iface".into(),
        "sga".into(),
        "--crowdsec-url".into(),
        url,
        "--crowdsec-key-file".into(),
        key.display().to_string(),
        "--crowdsec-interval".into(),
        "1s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = lab.daemon(&args);
    Member {
        lab,
        _web: web,
        daemon,
    }
}

/// The block list entry for a prefix, if any.
fn entry(m: &Member, prefix: &str) -> Option<serde_json::Value> {
    m.lab
        .json(&["block", "list"])
        .as_array()
        .expect("a list")
        .iter()
        .find(|e| e["prefix"] == prefix)
        .cloned()
}

/// Wait until `f` holds (up to `limit`); returns how long it took.
#[track_caller]
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

const FIFTEEN: Duration = Duration::from_secs(15);

/// `cscli decisions add` and `delete` reach both servers within 15 s: an address ban
/// drops the attacker there (every packet), a range ban of IPv6 is held too, a ban of the
/// server's own address is not enforced; the allowlist still wins; the LAPI gone, what was pulled stays and `status` says so; back, deletions
/// are lifted.
#[test]
fn decisions_made_in_crowdsec_are_enforced_and_lifted_on_every_server() {
    require_root!();
    let _one = need_lapi();
    let mut lapi = Lapi::start();
    let a = member(&mut lapi, "web-a", &[]);
    let b = member(&mut lapi, "web-b", &[]);
    for m in [&a, &b] {
        fetch_in(&m.lab.attacker, None, Duration::from_secs(5)).expect("the attacker before");
        let st = m.lab.json(&["status"]);
        assert_eq!(st["crowdsec"]["reachable"], true, "{}", st["crowdsec"]);
    }

    lapi.ok(&[
        "decisions",
        "add",
        "--ip",
        ATTACKER,
        "--duration",
        "1h",
        "--reason",
        "test-ban",
    ]);
    lapi.ok(&[
        "decisions",
        "add",
        "--range",
        "2001:db8:66::/48",
        "--duration",
        "2h",
    ]);
    // The servers' own address on the employees' link: never enforced (it would cut the
    // server off its network).
    lapi.ok(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.1",
        "--duration",
        "1h",
    ]);
    let prefix = format!("{ATTACKER}/32");
    for m in [&a, &b] {
        let took = within(FIFTEEN, "the decision enforced", || {
            entry(m, &prefix).is_some() && entry(m, "2001:db8:66::/48").is_some()
        });
        let e = entry(m, &prefix).expect("entry");
        assert_eq!(e["reason"], "crowdsec", "{e}");
        assert_eq!(e["origin"], "cscli", "{e}");
        assert_eq!(e["scenario"], "test-ban", "{e}");
        assert_eq!(e["effective"], "drop", "{e}");
        assert!(e["expires_in_s"].as_u64().unwrap_or(0) > 3500, "{e}");
        eprintln!("enforced within {took:?}");
        assert!(
            fetch_in(&m.lab.attacker, None, Duration::from_secs(1)).is_err(),
            "the banned attacker connected"
        );
        fetch_in(&m.lab.client, None, Duration::from_secs(5)).expect("the employee");
        let ex = m.lab.json(&["explain", ATTACKER]);
        assert!(
            ex["summary"].as_str().unwrap_or("").contains("CrowdSec"),
            "{}",
            ex["summary"]
        );
        let st = m.lab.json(&["status"]);
        assert_eq!(st["crowdsec"]["decisions"], 3, "{}", st["crowdsec"]);
        assert_eq!(
            st["crowdsec"]["skipped"]["protected"], 1,
            "{}",
            st["crowdsec"]
        );
        assert_eq!(st["entries"]["crowdsec"], 2, "{}", st["entries"]);
        assert!(entry(m, "198.51.100.1/32").is_none());
    }
    // The allowlist wins on one server.
    a.lab.ok(&["allow", "add", ATTACKER]);
    within(FIFTEEN, "the allowlist wins", || {
        fetch_in(&a.lab.attacker, None, Duration::from_secs(1)).is_ok()
    });
    a.lab.ok(&["allow", "del", ATTACKER]);

    // The LAPI goes away: nothing is lifted, status says so, run keeps running.
    lapi.stop();
    for m in [&a, &b] {
        within(FIFTEEN, "status shows the LAPI unreachable", || {
            m.lab.json(&["status"])["crowdsec"]["reachable"] == false
        });
        let st = m.lab.json(&["status"]);
        assert!(
            st["unhealthy"].to_string().contains("CrowdSec"),
            "{}",
            st["unhealthy"]
        );
        assert!(entry(m, &prefix).is_some(), "kept while the LAPI is away");
    }
    lapi.restart();
    lapi.ok(&["decisions", "delete", "--ip", ATTACKER]);
    for m in [&a, &b] {
        within(FIFTEEN, "the deleted decision lifted", || {
            entry(m, &prefix).is_none()
        });
        assert!(
            entry(m, "2001:db8:66::/48").is_some(),
            "the other decision stays"
        );
        assert_eq!(m.lab.json(&["status"])["crowdsec"]["reachable"], true);
        fetch_in(&m.lab.attacker, None, Duration::from_secs(5)).expect("the attacker after");
    }
    for mut m in [a, b] {
        m.daemon.signal(libc::SIGTERM);
        assert_eq!(
            m.daemon.wait(Duration::from_secs(20)),
            Some(0),
            "clean exit"
        );
    }
}

/// A flood from the attacker's own address, banned on one server, is pushed (with
/// `crowdsec-share all`) and blocked on the other; on the first it stays synguard's own
/// ban, not doubled by the decision coming back.
#[test]
fn a_flood_banned_on_one_server_is_blocked_on_the_other() {
    require_root!();
    let _one = need_lapi();
    let mut lapi = Lapi::start();
    let creds = lapi.machine("web-a");
    let creds = creds.display().to_string();
    let a = member(
        &mut lapi,
        "web-a",
        &["--crowdsec-credentials", &creds, "--crowdsec-share", "all"],
    );
    let b = member(&mut lapi, "web-b", &[]);
    let out = a
        .lab
        .hping(2, &["-S", "-p", "80", "-i", "u100", "192.0.2.1"]);
    let prefix = format!("{ATTACKER}/32");
    within(FIFTEEN, "the flooder banned on a", || {
        entry(&a, &prefix).is_some_and(|e| e["reason"] == "auto")
    });
    let took = within(FIFTEEN, "the ban shared with b", || {
        entry(&b, &prefix).is_some()
    });
    eprintln!(
        "shared within {took:?} ({})",
        out.lines().last().unwrap_or("")
    );
    let e = entry(&b, &prefix).expect("entry");
    assert_eq!(
        (&e["reason"], &e["origin"]),
        (&"crowdsec".into(), &"synguard".into()),
        "{e}"
    );
    assert_eq!(e["scenario"], "synguard/syn-flood", "{e}");
    assert!(
        fetch_in(&b.lab.attacker, None, Duration::from_secs(1)).is_err(),
        "the flooder reached the other server"
    );
    fetch_in(&b.lab.client, None, Duration::from_secs(5)).expect("b's employee");
    // On a: still its own ban, once; the LAPI holds one alert from it.
    thread::sleep(Duration::from_secs(3));
    let own = entry(&a, &prefix).expect("a's ban");
    assert_eq!(own["reason"], "auto", "{own}");
    assert_eq!(a.lab.json(&["status"])["entries"]["crowdsec"], 0);
    let alerts = lapi.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["scenario"], "synguard/syn-flood");
    assert_eq!(a.lab.json(&["status"])["crowdsec"]["pushed"], 1);
}

/// Under `crowdsec-share proven` (the default) nothing a forger could have caused is
/// published: SYNs forged with a proven employee's address only get it challenged, and
/// a ban of a source that never proved its address is kept back.
#[test]
fn forged_sources_never_reach_crowdsec_under_proven() {
    require_root!();
    let _one = need_lapi();
    let mut lapi = Lapi::start();
    let creds = lapi.machine("web-a");
    let creds = creds.display().to_string();
    let a = member(&mut lapi, "web-a", &["--crowdsec-credentials", &creds]);
    fetch_in(&a.lab.client, None, Duration::from_secs(5)).expect("the employee proves itself");
    // Forged with the employee's address, then with an address from the forged range,
    // each far over the limit, from the attacker's link.
    for src in [CLIENT, "198.18.0.7"] {
        a.lab
            .hping(2, &["-S", "-p", "80", "-i", "u100", "-a", src, "192.0.2.1"]);
    }
    within(FIFTEEN, "the forged range's address banned", || {
        entry(&a, "198.18.0.7/32").is_some()
    });
    thread::sleep(Duration::from_secs(3));
    assert!(
        entry(&a, &format!("{CLIENT}/32")).is_none(),
        "the employee is never banned"
    );
    let link = &a.lab.json(&["status"])["crowdsec"];
    assert_eq!(link["pushed"], 0, "{link}");
    assert!(link["kept_back"].as_u64().unwrap_or(0) >= 1, "{link}");
    assert!(lapi.alerts().is_empty(), "{:?}", lapi.alerts());
    fetch_in(&a.lab.client, None, Duration::from_secs(5)).expect("the employee after");
}

/// A Local API that answers garbage (here a proxy's error page): `run` keeps running and
/// protecting, logs the failure once however often it retries, and `status` shows it.
#[test]
fn a_lapi_answering_garbage_is_survived_and_shown() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    require_root!();
    let lab = Lab::new();
    let _web = Server::start(
        &lab.server,
        synguard_tests::kit::topo::TARGET.parse().expect("addr"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let garbage = lab.server.spawn(move || {
        use std::io::{Read as _, Write as _};
        let l = std::net::TcpListener::bind("127.0.0.1:18081").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let mut answered = 0u32;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf);
                    let body = "<html><body>502 Bad Gateway</body></html>\n";
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    answered += 1;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        answered
    });
    ready_rx.recv().expect("the garbage server");
    let key = lab.state.path.join("crowdsec.key");
    std::fs::write(&key, "not-checked-by-a-proxy\n").expect("key");
    let mut daemon = lab.daemon(&[
        "run",
        "--iface",
        "sgc",
        "--iface",
        "sga",
        "--crowdsec-url",
        "http://127.0.0.1:18081",
        "--crowdsec-key-file",
        key.to_str().expect("utf-8"),
        "--crowdsec-interval",
        "1s",
        "--metrics",
        "127.0.0.1:19478",
    ]);
    within(FIFTEEN, "status shows two failed pulls", || {
        lab.json(&["status"])["crowdsec"]["failures"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let st = lab.json(&["status"]);
    let link = &st["crowdsec"];
    assert_eq!(link["reachable"], false, "{link}");
    assert!(
        link["error"]
            .as_str()
            .unwrap_or("")
            .contains("not the LAPI's JSON"),
        "{link}"
    );
    assert!(
        st["unhealthy"].to_string().contains("CrowdSec"),
        "{}",
        st["unhealthy"]
    );
    assert_eq!(
        daemon.log_text().matches("cannot pull decisions").count(),
        1,
        "logged once: {}",
        daemon.log_text()
    );
    // The metrics say so too, in a form promtool accepts.
    let metrics = synguard_tests::kit::traffic::scrape(&lab.server, "127.0.0.1:19478");
    let body = metrics.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    let value = |series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    assert_eq!(value("synguard_crowdsec_reachable"), 0.0);
    assert!(value("synguard_crowdsec_failures") >= 2.0);
    assert_eq!(value("synguard_crowdsec_last_pull_timestamp_seconds"), 0.0);
    synguard_tests::kit::traffic::promtool_check(&body);
    // Still protecting: a flooder is banned, the employee served.
    lab.hping(1, &["-S", "-p", "80", "-i", "u100", "192.0.2.1"]);
    within(FIFTEEN, "the flooder banned", || {
        lab.json(&["block", "list"])
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["reason"] == "auto"))
    });
    fetch_in(&lab.client, None, Duration::from_secs(5)).expect("the employee");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(20)), Some(0), "clean exit");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(garbage.join().expect("garbage server") >= 2);
}

/// Decisions outlive a restart of `run` with `--keep` (they are entries of the pinned
/// tables), and the next start's full pull lifts those deleted in CrowdSec meanwhile; a
/// start without a link lifts them all.
#[test]
fn a_restart_keeps_decisions_and_lifts_those_deleted_meanwhile() {
    require_root!();
    let _one = need_lapi();
    let mut lapi = Lapi::start();
    let mut a = member(&mut lapi, "web-a", &["--keep"]);
    lapi.ok(&["decisions", "add", "--ip", ATTACKER, "--duration", "1h"]);
    lapi.ok(&["decisions", "add", "--ip", "198.18.0.9", "--duration", "1h"]);
    let prefix = format!("{ATTACKER}/32");
    within(FIFTEEN, "both enforced", || {
        entry(&a, &prefix).is_some() && entry(&a, "198.18.0.9/32").is_some()
    });
    a.daemon.signal(libc::SIGTERM);
    assert_eq!(
        a.daemon.wait(Duration::from_secs(20)),
        Some(0),
        "clean exit"
    );
    // Still enforced with no `run` at all.
    assert!(entry(&a, &prefix).is_some());
    assert!(
        fetch_in(&a.lab.attacker, None, Duration::from_secs(1)).is_err(),
        "dropped while run is down"
    );
    lapi.ok(&["decisions", "delete", "--ip", ATTACKER]);
    let key = lapi.dir.path.join("web-a.key");
    let url = format!("http://192.0.2.66:{}", lapi::PORT);
    let mut again = a.lab.daemon(&[
        "run",
        "--keep",
        "--iface",
        "sgc",
        "--iface",
        "sga",
        "--crowdsec-url",
        &url,
        "--crowdsec-key-file",
        key.to_str().expect("utf-8"),
        "--crowdsec-interval",
        "1s",
    ]);
    within(FIFTEEN, "the deleted decision lifted at start", || {
        entry(&a, &prefix).is_none()
    });
    assert!(entry(&a, "198.18.0.9/32").is_some(), "the other one kept");
    fetch_in(&a.lab.attacker, None, Duration::from_secs(5)).expect("the attacker again");
    // A run without a link lifts what an earlier one pulled: nothing else ever would.
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait(Duration::from_secs(20)), Some(0), "clean exit");
    assert!(entry(&a, "198.18.0.9/32").is_some(), "kept by --keep");
    let _unlinked = a.lab.daemon(&["run", "--iface", "sgc", "--iface", "sga"]);
    within(FIFTEEN, "lifted at start", || {
        entry(&a, "198.18.0.9/32").is_none()
    });
    assert_eq!(a.lab.json(&["status"])["entries"]["crowdsec"], 0);
}

/// `net.ipv4.tcp_syncookies` in the server's namespace.
fn syncookies(m: &Member) -> String {
    let out = m
        .lab
        .server
        .exec(&["cat", "/proc/sys/net/ipv4/tcp_syncookies"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// 300,000 decisions in one family, more than the blocklist holds: what fits is enforced,
/// the rest is refused with one clear warning and counted (status, metrics), and nothing
/// else stops: `allow add` has room, a new manual block is refused with what to do, the
/// daemon's every-second work goes on (config changes noticed, the host's settings for
/// attack mode kept), and room freed by deleted decisions is taken by those waiting.
#[test]
fn a_full_blocklist_is_refused_clearly_and_wedges_nothing() {
    require_root!();
    let _one = need_lapi();
    let mut lapi = Lapi::start();
    const N: u32 = 300_000;
    let csv = lapi.dir.path.join("decisions.csv");
    let mut text = String::from("duration,scope,value,reason\n");
    for i in 0..N {
        let a = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i);
        text += &format!("4h,ip,{a},full-table\n");
    }
    std::fs::write(&csv, text).expect("decisions file");
    lapi.ok(&["decisions", "import", "-i", csv.to_str().expect("utf-8")]);
    let m = member(&mut lapi, "web-full", &[]);
    let room = synguard_common::capacity::RULES - synguard_common::capacity::ALLOW_RESERVE;
    let took = within(Duration::from_secs(90), "the blocklist filled", || {
        m.lab.json(&["status"])["entries"]["crowdsec"] == u64::from(room)
    });
    println!("{room} decisions enforced {took:?} after start");
    let t = Instant::now();
    let st = m.lab.json(&["status"]);
    println!("status took {:?}", t.elapsed());
    assert_eq!(
        st["crowdsec"]["not_enforced_full"],
        u64::from(N - room),
        "{}",
        st["crowdsec"]
    );
    let unhealthy = st["unhealthy"].to_string();
    assert!(unhealthy.contains("the blocklist is full"), "{unhealthy}");
    let log = m.daemon.log_text();
    assert_eq!(
        log.matches("crowdsec: the blocklist is full").count(),
        1,
        "one warning: {log}"
    );
    assert!(!log.contains("ERROR"), "no step failed: {log}");

    // The allowlist always has room; a new block is refused, saying why.
    let t = Instant::now();
    m.lab
        .ok(&["allow", "add", "203.0.113.77", "--comment", "ops"]);
    println!("allow add took {:?}", t.elapsed());
    let t = Instant::now();
    let out = m.lab.sg(&["block", "add", "203.0.113.78"]);
    println!("block add took {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the blocklist is full") && err.contains("block del"),
        "{err}"
    );
    // The daemon's work goes on: a config change noticed, the host's settings kept.
    let t = Instant::now();
    m.lab.ok(&["config", "set", "syn-cookies", "always"]);
    println!("config set took {:?}", t.elapsed());
    within(Duration::from_secs(2), "tcp_syncookies set", || {
        syncookies(&m) == "2"
    });
    within(Duration::from_secs(5), "the change noticed", || {
        m.daemon
            .log_text()
            .contains("config changed: syn-cookies \"auto\" -> \"always\"")
    });
    m.lab.ok(&["config", "set", "syn-cookies", "auto"]);
    within(Duration::from_secs(2), "tcp_syncookies restored", || {
        syncookies(&m) == "1"
    });

    // Room freed by deleted decisions goes to those waiting.
    let t = Instant::now();
    lapi.ok(&[
        "decisions",
        "delete",
        "--range",
        "198.18.0.0/28",
        "--contained",
    ]);
    println!("16 decisions deleted in {:?}", t.elapsed());
    let t = Instant::now();
    loop {
        let st = m.lab.json(&["status"]);
        // The allow entry took one of the blocklist's places (its reserve is for allow
        // entries beyond it).
        if st["entries"]["crowdsec"] == u64::from(room - 1)
            && st["crowdsec"]["not_enforced_full"] == u64::from(N - 16 - (room - 1))
        {
            break;
        }
        let log = m.daemon.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the freed room taken: {} {}\n{}",
            st["entries"],
            st["crowdsec"],
            tail.join("\n")
        );
        thread::sleep(Duration::from_millis(500));
    }
    let took = t.elapsed();
    println!("the freed room taken within {took:?}");
    assert!(
        !m.daemon.log_text().contains("ERROR"),
        "{}",
        m.daemon.log_text()
    );
}
