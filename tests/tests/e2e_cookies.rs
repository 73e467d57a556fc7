//! Attack mode end to end, in the lab's namespaces: real clients completing connections
//! through SYN cookies answered in XDP, forged floods on a server without cookies of its
//! own, `net.ipv4.tcp_syncookies` put back afterwards, even after a SIGKILL, and a
//! container's port published by DNAT left to the kernel.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use synguard_common::stat::*;
use synguard_tests::{
    kit::{
        flood::{self, FloodSpec, Source},
        netns::mac_of,
        packet::{ACK, RST, SYN},
        synguard_bin,
    },
    lab::{self, LabNet, Profile, RunSpec, Scenario},
    require_root,
};

fn sysctl(net: &LabNet, name: &str) -> String {
    let out = net
        .server
        .exec(&["cat", &format!("/proc/sys/net/ipv4/{name}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn syncookies(net: &LabNet) -> String {
    sysctl(net, "tcp_syncookies")
}

fn timestamps(net: &LabNet) -> String {
    sysctl(net, "tcp_timestamps")
}

/// `synguard status --json` on the server.
fn status_json(net: &LabNet) -> serde_json::Value {
    let out = net.server.exec(&[
        synguard_bin().to_str().expect("utf-8"),
        "--pin-dir",
        net.bpffs.pin_dir().to_str().expect("utf-8"),
        "status",
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).expect("status json")
}

fn fetch(net: &LabNet, from: &str, to: &str) -> Result<Duration, String> {
    let local: std::net::IpAddr = from.parse().expect("addr");
    let target: SocketAddr = to.parse().expect("addr");
    lab::page_request(target)
        .bind(local)
        .timeout(Duration::from_secs(3))
        .send_in(&net.employees)
}

#[test]
fn clients_complete_connections_through_xdp_cookies_v4_and_v6() {
    require_root!();
    let mut net = LabNet::new(Profile::Legacy).expect("lab");
    assert_eq!(
        syncookies(&net),
        "0",
        "the legacy server has no cookies of its own"
    );
    net.start_synguard(&["--syn-cookies".into(), "always".into()])
        .expect("synguard");
    assert_eq!(
        syncookies(&net),
        "2",
        "set for the helper while cookies are answered"
    );

    // Addresses that have not connected yet: .10 made the lab's readiness check, and has
    // proven it owns its address since (its SYNs go straight to the kernel).
    for (from, to) in [
        ("198.51.100.21", "192.0.2.1:80"),
        ("2001:db8:5::21", "[2001:db8:2::1]:80"),
    ] {
        let before = net.counters().expect("counters");
        let took =
            fetch(&net, from, to).unwrap_or_else(|e| panic!("{from} through the cookie path: {e}"));
        assert!(
            took < Duration::from_millis(500),
            "no retransmission needed: {took:?}"
        );
        let after = net.counters().expect("counters");
        assert_eq!(
            after[R_COOKIE_SENT] - before[R_COOKIE_SENT],
            1,
            "answered in XDP"
        );
        assert_eq!(
            after[N_VERIFIED] - before[N_VERIFIED],
            1,
            "the cookie ACK verified it"
        );
        // Its next connection goes straight to the kernel.
        fetch(&net, from, to).expect("second fetch");
        let later = net.counters().expect("counters");
        assert_eq!(later[R_SYN_VERIFIED] - after[R_SYN_VERIFIED], 1);
        assert_eq!(later[R_COOKIE_SENT], after[R_COOKIE_SENT]);
    }

    // Stopping synguard puts tcp_syncookies back.
    let mut d = net.synguard.take().expect("daemon");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    assert!(
        d.log_text()
            .contains("restored net.ipv4.tcp_syncookies = 0"),
        "{}",
        d.log_text()
    );
    assert_eq!(syncookies(&net), "0");
    // And timestamps, at once on the way out.
    assert!(
        d.log_text()
            .contains("restored net.ipv4.tcp_timestamps = 1"),
        "{}",
        d.log_text()
    );
    assert_eq!(timestamps(&net), "1");
}

fn forged(scenario: Scenario, named: &str) {
    require_root!();
    let r = lab::run(
        &RunSpec {
            scenario,
            profile: Profile::Legacy,
            synguard: true,
            duration: Duration::from_secs(6),
            synguard_args: Vec::new(),
            // The highest rate the generator reaches (flat out).
            attack_rate: None,
            report_dir: None,
            calm: Duration::ZERO,
        },
        &Arc::new(AtomicBool::new(false)),
    )
    .expect("lab run");
    println!("{}", lab::table(std::slice::from_ref(&r)));
    println!("{r:?}");
    // A real flood: 20,000 forged SYN/s fill the legacy server's 128-entry SYN queue in
    // milliseconds. (The generator reaches 100k and more on an idle machine; the bar is
    // lower so that a busy one still tests the product rather than the generator.)
    assert!(r.attack_pps > 20_000.0, "a real flood: {r:?}");
    assert!(r.success_rate >= 0.99, "employees kept working: {r:?}");
    let to_kernel = r.syns_to_kernel.expect("synguard ran");
    assert!(
        (to_kernel as f64) < 0.01 * r.attack_sent as f64,
        "the server's stack saw almost none of the forged SYNs: {to_kernel} of {}",
        r.attack_sent
    );
    assert!(
        r.xdp_answered.expect("synguard ran") > r.attack_sent / 2,
        "{r:?}"
    );
    assert_eq!(
        r.reported.as_deref(),
        Some(named),
        "synguard report names the attack from its journal"
    );
}

#[test]
fn forged_ipv4_flood_on_a_server_without_cookies() {
    forged(Scenario::Forged, "forged sources");
}

#[test]
fn forged_ipv6_flood_on_a_server_without_cookies() {
    forged(Scenario::ForgedV6, "IPv6 rotation");
}

fn flood(net: &LabNet, seconds: f64) -> u64 {
    flood_of(net, SYN, seconds)
}

/// Segments with these TCP flags from random sources in 198.18.0.0/15 to the server's
/// port 80, 20,000 a second: how many were sent.
fn flood_of(net: &LabNet, flags: u8, seconds: f64) -> u64 {
    let spec = flood_spec(net, flags, seconds);
    net.attacker
        .spawn(move || flood::run(&spec, &AtomicBool::new(false)))
        .join()
        .expect("flood thread")
        .expect("flood")
        .sent
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `tcp_syncookies` and `tcp_timestamps`, set to 2 while cookies are answered from XDP,
/// are put back after attack mode (timestamps six calm periods later, so the last
/// cookies' ACKs are still read right), and by the next run after a SIGKILL.
#[test]
fn tcp_syncookies_is_restored_after_attack_mode_and_after_a_sigkill() {
    require_root!();
    let mut net = LabNet::new(Profile::Defaults).expect("lab");
    assert_eq!(syncookies(&net), "1");
    assert_eq!(timestamps(&net), "1");
    net.start_synguard(&[]).expect("synguard");
    // A short calm period for the test (an internal setting, not a config key).
    let pin = net.bpffs.pin_dir();
    let mut maps = synguard::bpf::Maps::from_pins(&pin).expect("maps");
    let mut cfg = maps.read_config().expect("config");
    cfg.attack_calm_ns = 1_000_000_000;
    maps.write_config(&cfg).expect("config");

    assert!(flood(&net, 1.0) > 10_000);
    wait_for("cookies on", Duration::from_secs(2), || {
        syncookies(&net) == "2"
    });
    let log = net.synguard_log();
    assert!(log.contains("attack mode ON on eth0"), "{log}");
    assert!(
        log.contains("set net.ipv4.tcp_syncookies = 2 (was 1)"),
        "{log}"
    );
    assert!(
        log.contains("set net.ipv4.tcp_timestamps = 2 (was 1)"),
        "{log}"
    );
    assert_eq!(timestamps(&net), "2");
    let st = status_json(&net);
    assert_eq!(st["saved_tcp_timestamps"], 1, "{st}");
    let offered = st["cookie_options"].to_string();
    for o in ["timestamps", "window scale", "sack"] {
        assert!(offered.contains(o), "cookie SYN-ACKs offer {o}: {offered}");
    }
    wait_for("attack mode over", Duration::from_secs(5), || {
        syncookies(&net) == "1"
    });
    // The keeper (which restored it) and the main loop (which logs the end) each see the
    // attack end within a second of the other.
    wait_for("attack mode OFF logged", Duration::from_secs(3), || {
        net.synguard_log().contains("attack mode OFF on eth0")
    });
    let log = net.synguard_log();
    assert!(
        log.contains("restored net.ipv4.tcp_syncookies = 1"),
        "{log}"
    );
    assert_eq!(timestamps(&net), "2", "kept for the last cookies' ACKs");
    wait_for("timestamps restored", Duration::from_secs(10), || {
        timestamps(&net) == "1"
    });
    assert!(
        net.synguard_log()
            .contains("restored net.ipv4.tcp_timestamps = 1"),
        "{}",
        net.synguard_log()
    );
    assert_eq!(status_json(&net)["cookie_options"], serde_json::json!([]));

    // Again, and this time the daemon dies during the attack.
    flood(&net, 1.0);
    wait_for("cookies on", Duration::from_secs(2), || {
        syncookies(&net) == "2"
    });
    let mut d = net.synguard.take().expect("daemon");
    d.signal(libc::SIGKILL);
    d.wait(Duration::from_secs(5));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(syncookies(&net), "2", "nobody restored it");
    assert_eq!(timestamps(&net), "2", "nobody restored it");
    let host = maps.read_host().expect("host state");
    assert_eq!(
        (host.saved_syncookies, host.saved_timestamps),
        (1, 1),
        "but they are remembered"
    );
    // The next run finds the attack over and puts the values back (timestamps six calm
    // periods after the attack state it adopted ends).
    net.start_synguard(&[]).expect("synguard again");
    wait_for("restored by the next run", Duration::from_secs(12), || {
        syncookies(&net) == "1" && timestamps(&net) == "1"
    });
    let host = maps.read_host().expect("host state");
    assert_eq!((host.saved_syncookies, host.saved_timestamps), (-1, -1));
}

/// A web server in a container behind a DNAT of the server's port 80, with docker-proxy's
/// listener on the same port of the host: attack mode must leave SYNs for that port to
/// the kernel, since a cookie made for the host's listener would have the client's ACK
/// reset in the container. `run` finds the port in the real nftables rules.
#[test]
fn a_port_published_by_dnat_keeps_working_in_attack_mode() {
    require_root!();
    let mut net = LabNet::new(Profile::Container).expect("lab");
    net.start_synguard(&["--syn-cookies".into(), "always".into()])
        .expect("synguard");
    let status = status_json(&net);
    assert_eq!(status["nat_ports"], "80", "{status}");

    // Addresses that have not connected yet, so their SYNs meet attack mode.
    for (from, to) in [
        ("198.51.100.22", "192.0.2.1:80"),
        ("2001:db8:5::22", "[2001:db8:2::1]:80"),
    ] {
        let before = net.counters().expect("counters");
        fetch(&net, from, to).unwrap_or_else(|e| panic!("{from} through the DNAT: {e}"));
        let after = net.counters().expect("counters");
        assert_eq!(
            after[R_SYN_NAT] - before[R_SYN_NAT],
            1,
            "left to the kernel"
        );
        assert_eq!(after[R_COOKIE_SENT], before[R_COOKIE_SENT], "no cookie");
    }

    // Why: with the port taken out of the map, XDP answers with a cookie for the host's
    // listener, and the client's ACK, sent on to the container, is reset there.
    let mut maps = synguard::bpf::Maps::from_pins(&net.bpffs.pin_dir()).expect("pinned maps");
    let held = synguard::nat::current(&maps).expect("read SG_NAT_PORTS");
    synguard::nat::sync(&mut maps, &synguard::nat::NatPorts::none()).expect("clear");
    let before = net.counters().expect("counters");
    let broken = fetch(&net, "198.51.100.23", "192.0.2.1:80");
    let after = net.counters().expect("counters");
    synguard::nat::sync(&mut maps, &held).expect("restore");
    assert_eq!(after[R_COOKIE_SENT] - before[R_COOKIE_SENT], 1);
    assert!(broken.is_err(), "the container reset the cookie's ACK");
    fetch(&net, "198.51.100.24", "192.0.2.1:80").expect("fine again");
}

/// ACK and RST floods from forged sources while attack mode is on die in XDP, counted
/// under their own names (which `status` shows); employees keep working.
#[test]
fn ack_and_rst_floods_die_in_xdp_in_attack_mode() {
    require_root!();
    let mut net = LabNet::new(Profile::Defaults).expect("lab");
    net.start_synguard(&["--syn-cookies".into(), "always".into()])
        .expect("synguard");
    for (flags, reason, employee) in [
        (ACK, R_ACK_NO_FLOW, "198.51.100.25"),
        (RST, R_RST_NO_FLOW, "198.51.100.26"),
    ] {
        let before = net.counters().expect("counters");
        let sent = flood_of(&net, flags, 1.0);
        let after = net.counters().expect("counters");
        assert!(sent > 10_000, "a flood: {sent}");
        let dropped = after[reason] - before[reason];
        assert!(
            dropped as f64 >= 0.99 * sent as f64 && dropped <= sent,
            "{} dropped {dropped} of {sent}",
            NAMES[reason]
        );
        fetch(&net, employee, "192.0.2.1:80")
            .unwrap_or_else(|e| panic!("an employee during attack mode: {e}"));
    }
    let status = status_json(&net);
    for name in ["ack_no_flow", "rst_no_flow"] {
        assert!(
            status["counters"][name].as_u64().unwrap_or(0) > 10_000,
            "{name} in {}",
            status["counters"]
        );
    }
}

/// Connect from `local` (in the employees' namespace) to the server's port 80.
fn connect_from(local: &str) -> std::io::Result<std::net::TcpStream> {
    let local: std::net::IpAddr = local.parse().expect("addr");
    let target: SocketAddr = "192.0.2.1:80".parse().expect("addr");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(local, 0).into())?;
    sock.connect_timeout(&target.into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

/// Send a request on `s` and read the answer: `Ok(true)` for the page, `Ok(false)` for
/// a reset (the connection refused at once), `Err` for anything else (a connection left
/// waiting for nothing).
fn request(mut s: std::net::TcpStream, within: Duration) -> Result<bool, String> {
    use std::io::{Read as _, Write as _};
    s.set_read_timeout(Some(within))
        .map_err(|e| e.to_string())?;
    if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nHost: sales.example\r\n\r\n") {
        return if e.kind() == std::io::ErrorKind::ConnectionReset {
            Ok(false)
        } else {
            Err(e.to_string())
        };
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(format!("{e} after {} bytes", got.len())),
        }
    }
    let text = String::from_utf8_lossy(&got);
    if text.starts_with("HTTP/1.1 200") && text.contains("Sunny Travel") {
        Ok(true)
    } else {
        Err(format!("not the page: {text:?}"))
    }
}

/// Clients in the middle of their handshakes when attack mode starts complete them:
/// nothing is purged, and an ACK that belongs to a request the kernel has queued goes
/// through, whatever attack mode does to ACK floods. (Before, attack mode's start purged
/// every half-open connection, and their clients' ACKs, reaching a listener with no
/// request and no valid cookie, were dropped: those connections hung.) Here the clients'
/// own handshake ACKs are held back, so each connection waits in the server's SYN queue
/// until its request arrives, after attack mode started.
#[test]
fn handshakes_in_flight_when_attack_mode_starts_complete() {
    require_root!();
    let mut net = LabNet::new(Profile::Defaults).expect("lab");
    net.start_synguard(&[]).expect("synguard");
    let clients: Vec<String> = (40..60).map(|i| format!("198.51.100.{i}")).collect();
    net.employees.ip_batch(
        &clients
            .iter()
            .map(|a| format!("addr add {a}/24 dev eth0"))
            .collect::<Vec<_>>(),
    );
    // The handshake's last ACK (a pure ACK) never leaves: the request (PSH, ACK)
    // completes the handshake instead.
    net.employees.exec(&[
        "nft",
        "add table inet hold; add chain inet hold out { type filter hook output priority 0; \
         }; add rule inet hold out tcp dport 80 tcp flags & (fin|syn|rst|psh|ack) == ack drop",
    ]);
    let addrs = clients.clone();
    let streams = net
        .employees
        .spawn(move || {
            addrs
                .iter()
                .map(|a| connect_from(a).unwrap_or_else(|e| panic!("connect from {a}: {e}")))
                .collect::<Vec<_>>()
        })
        .join()
        .expect("clients");
    let out = net
        .server
        .exec(&["ss", "-Htn", "state", "syn-recv", "sport", "= :80"]);
    let half_open = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(
        half_open,
        clients.len(),
        "every client waits in the SYN queue"
    );

    // A forged flood: attack mode, and the host's settings (the queue runs over).
    let flooding = flood_in_background(&net, 2.0);
    wait_for(
        "attack mode and the host's settings",
        Duration::from_secs(2),
        || net.synguard_log().contains("attack mode ON on eth0") && syncookies(&net) == "2",
    );
    let results = net
        .employees
        .spawn(move || {
            streams
                .into_iter()
                .map(|s| request(s, Duration::from_millis(1500)))
                .collect::<Vec<_>>()
        })
        .join()
        .expect("requests");
    flooding.join().expect("flood ran").expect("flood ran");
    let waited: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(waited.is_empty(), "connections left waiting: {waited:?}");
    let pages = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(pages, clients.len(), "every one got its page: {results:?}");
    assert!(
        !net.synguard_log().contains("half-open"),
        "nothing purged: {}",
        net.synguard_log()
    );
}

/// A burst of real clients (a big NAT's office arriving at once) may start attack mode,
/// but changes nothing for the host: `tcp_syncookies` and `tcp_timestamps` stay, nothing
/// is purged, every connection completes. A forged flood, which the server's SYN queues
/// cannot hold, sets them within a second.
#[test]
fn a_burst_of_real_clients_changes_nothing_on_the_host() {
    require_root!();
    let mut net = LabNet::new(Profile::Defaults).expect("lab");
    net.start_synguard(&["--attack-syn-rate".into(), "500".into()])
        .expect("synguard");
    // 300 connections from the 20 employees (15 each, within syn-burst), all at once.
    let connected = net
        .employees
        .spawn(|| {
            // One CPU, so the burst and the stragglers meet the same rate window (each
            // CPU has its own).
            synguard_tests::kit::prog::pin_to_cpu(0);
            let target: SocketAddr = "192.0.2.1:80".parse().expect("addr");
            let mut socks = Vec::new();
            for i in 0..300u32 {
                let local: std::net::IpAddr =
                    format!("198.51.100.{}", 10 + i % 20).parse().expect("addr");
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("socket");
                s.bind(&SocketAddr::new(local, 0).into()).expect("bind");
                s.set_nonblocking(true).expect("nonblocking");
                let _ = s.connect(&target.into());
                socks.push(s);
            }
            let start = Instant::now();
            let mut done = 0;
            while start.elapsed() < Duration::from_secs(3) {
                done = socks
                    .iter()
                    .filter(|s| s.peer_addr().is_ok() && s.take_error().ok().flatten().is_none())
                    .count();
                if done == socks.len() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            // A few more a moment later, as an office's stragglers: a SYN after the
            // burst (10 ms or more into the window) is what closes the program's rate
            // window over it.
            thread::sleep(Duration::from_millis(30));
            for i in 0..10 {
                let local = format!("198.51.100.{}", 10 + i);
                let _ = connect_from(&local).expect("a straggler connects");
            }
            done
        })
        .join()
        .expect("burst");
    assert_eq!(connected, 300, "every connection of the burst completed");
    wait_for("attack mode", Duration::from_secs(2), || {
        net.synguard_log().contains("attack mode ON on eth0")
    });
    let calm_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < calm_until {
        assert_eq!(syncookies(&net), "1", "{}", net.synguard_log());
        assert_eq!(timestamps(&net), "1", "{}", net.synguard_log());
        thread::sleep(Duration::from_millis(100));
    }
    let log = net.synguard_log();
    assert!(!log.contains("setting the host"), "{log}");
    assert!(!log.contains("half-open"), "nothing purged: {log}");
    assert!(status_json(&net)["host_settings_since"].is_null());

    // A flood the queues cannot hold: within a second.
    let start = Instant::now();
    let flooding = flood_in_background(&net, 1.5);
    host_settings_within_a_second(&net, start);
    flooding.join().expect("flood ran").expect("flood ran");
    let log = net.synguard_log();
    assert!(log.contains("SYN queues ran over in attack mode"), "{log}");
    assert!(!status_json(&net)["host_settings_since"].is_null());
}

/// Stopped and started again during an attack with `--keep` (the service's restarts and
/// upgrades): the settings stay for the program left attached, the next `run`, finding
/// the attack in the pinned state, owns them (no restore while the flood lasts), and puts
/// them back once the attack ends (`tcp_timestamps` a linger later, counted across the
/// restart). Without `--keep`, a stop during an attack restores both at once.
#[test]
fn a_restart_during_an_attack_hands_the_host_settings_over() {
    require_root!();
    let mut net = LabNet::new(Profile::Defaults).expect("lab");
    net.start_synguard(&["--keep".into()]).expect("synguard");
    let pin = net.bpffs.pin_dir();
    let mut maps = synguard::bpf::Maps::from_pins(&pin).expect("maps");
    let mut cfg = maps.read_config().expect("config");
    cfg.attack_calm_ns = 1_000_000_000;
    maps.write_config(&cfg).expect("config");

    let flooding = flood_in_background(&net, 6.0);
    wait_for("cookies on", Duration::from_secs(2), || {
        syncookies(&net) == "2"
    });
    let mut d = net.synguard.take().expect("daemon");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    assert!(
        d.log_text()
            .contains("the next `synguard run` takes them over"),
        "{}",
        d.log_text()
    );
    assert_eq!(
        (syncookies(&net), timestamps(&net)),
        ("2".into(), "2".into())
    );
    net.start_synguard(&["--keep".into()])
        .expect("synguard again");
    let hold_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < hold_until {
        assert_eq!(
            syncookies(&net),
            "2",
            "owned, not restored: {}",
            net.synguard_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    flooding.join().expect("flood ran").expect("flood ran");
    wait_for("tcp_syncookies restored", Duration::from_secs(5), || {
        syncookies(&net) == "1"
    });
    assert_eq!(timestamps(&net), "2", "kept for the last cookies' ACKs");
    wait_for("tcp_timestamps restored", Duration::from_secs(10), || {
        timestamps(&net) == "1"
    });

    // A stop without --keep during an attack: both at once.
    let mut d = net.synguard.take().expect("daemon");
    d.signal(libc::SIGTERM);
    d.wait(Duration::from_secs(10));
    net.start_synguard(&[]).expect("synguard, no --keep");
    let flooding = flood_in_background(&net, 3.0);
    wait_for("cookies on", Duration::from_secs(2), || {
        syncookies(&net) == "2"
    });
    let mut d = net.synguard.take().expect("daemon");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), Some(0));
    assert_eq!(
        (syncookies(&net), timestamps(&net)),
        ("1".into(), "1".into())
    );
    flooding.join().expect("flood ran").expect("flood ran");
}

/// What could hold `run` up never delays attack mode's settings: an `nft` that hangs
/// (the NAT rules are read on a thread of their own, within 5 s at start), the metrics
/// endpoint flooded with idle connections under a low limit of descriptors (32 served at
/// once, each given 5 s). `tcp_syncookies` still flips within a second of a flood, and the
/// metrics endpoint answers again once the idle connections are gone.
#[test]
fn nothing_slow_delays_the_host_settings_in_an_attack() {
    require_root!();
    let mut net = LabNet::new(Profile::Defaults).expect("lab");
    let fake = tempfile_dir("slow-nft");
    std::fs::write(fake.join("nft"), "#!/bin/sh\nsleep 60\n").expect("fake nft");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(fake.join("nft"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    net.start_synguard_with(
        &["--metrics".into(), "192.0.2.1:9100".into()],
        &["prlimit", "--nofile=128"],
        &[("PATH", path)],
    )
    .expect("synguard");
    println!("run started in {:?} (nft hangs)", started.elapsed());
    assert!(
        net.synguard_log()
            .contains("`nft -j list ruleset` took more than 5 s"),
        "{}",
        net.synguard_log()
    );
    // 400 idle connections to the metrics endpoint, more than the daemon has descriptors.
    let idle = net
        .employees
        .spawn(|| {
            let target: SocketAddr = "192.0.2.1:9100".parse().expect("addr");
            (0..400)
                .filter_map(|_| {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)).ok()
                })
                .collect::<Vec<_>>()
        })
        .join()
        .expect("idle connections");
    println!("{} idle metrics connections", idle.len());
    // Past the next reading of the rules (every 10 s), which hangs in its thread now.
    thread::sleep(Duration::from_secs(11));
    let start = Instant::now();
    let flooding = flood_in_background(&net, 2.0);
    host_settings_within_a_second(&net, start);
    flooding.join().expect("flood ran").expect("flood ran");
    // And `run`'s own loop is not held up either: a config change is noticed at once.
    net.server.exec(&[
        synguard_bin().to_str().expect("utf-8"),
        "--pin-dir",
        net.bpffs.pin_dir().to_str().expect("utf-8"),
        "config",
        "set",
        "syn-rate",
        "250",
    ]);
    wait_for("the change noticed", Duration::from_secs(2), || {
        net.synguard_log()
            .contains("config changed: syn-rate \"200\" -> \"250\"")
    });
    drop(idle);
    let scraped = net
        .employees
        .spawn(|| {
            let start = Instant::now();
            loop {
                let got =
                    synguard_tests::kit::http::Get::new("192.0.2.1:9100".parse().expect("addr"))
                        .path("/metrics")
                        .timeout(Duration::from_secs(2))
                        .answer();
                match got {
                    Ok(a) if a.text().contains("synguard_packets_total") => return Ok(()),
                    other if start.elapsed() > Duration::from_secs(15) => {
                        return Err(format!("{other:?}"));
                    }
                    _ => thread::sleep(Duration::from_millis(500)),
                }
            }
        })
        .join()
        .expect("scrape");
    assert!(scraped.is_ok(), "metrics answer again: {scraped:?}");
    let log = net.synguard_log();
    assert!(!log.contains("Too many open files"), "{log}");
    let _ = std::fs::remove_dir_all(&fake);
}

/// A forged SYN flood of `seconds` at 20,000 a second, in the background.
fn flood_in_background(
    net: &LabNet,
    seconds: f64,
) -> thread::JoinHandle<anyhow::Result<flood::FloodReport>> {
    let spec = flood_spec(net, SYN, seconds);
    net.attacker
        .spawn(move || flood::run(&spec, &AtomicBool::new(false)))
}

/// `tcp_syncookies` is set within a second of `start` (a flood's beginning).
fn host_settings_within_a_second(net: &LabNet, start: Instant) {
    wait_for("the host's settings", Duration::from_secs(1), || {
        syncookies(net) == "2"
    });
    println!(
        "tcp_syncookies set {:?} after the flood began",
        start.elapsed()
    );
}

/// A directory of the test's own under the system's temporary directory.
fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(synguard_tests::kit::netns::unique(tag));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A forged SYN flood (`flags`) at 20,000 a second for `seconds`, from 198.18.0.0/15.
fn flood_spec(net: &LabNet, flags: u8, seconds: f64) -> FloodSpec {
    FloodSpec {
        ifindex: net.attacker.ifindex("eth0"),
        src_mac: mac_of(&net.attacker, "eth0").expect("mac"),
        dst_mac: mac_of(&net.router, "r-att").expect("mac"),
        source: Source::Random("198.18.0.0/15".parse().expect("net")),
        dst: "192.0.2.1".parse().expect("addr"),
        dport: 80,
        rate: Some(20_000),
        flags,
        duration: Duration::from_secs_f64(seconds),
        threads: 1,
        batch: 32,
    }
}
