//! End to end, in network namespaces: the real `synguard run` on a server's interfaces, a
//! real TCP server, a legitimate client on one link, and an `hping3 --flood` attacker on
//! another. The client must keep working, the attacker must be banned, and the flood must
//! be dropped in XDP with counters that add up to what hping3 sent.

use std::{net::SocketAddr, thread, time::Duration};

use synguard::{bpf::Maps, rules};
use synguard_common::{RULE_BAN, stat::*};
use synguard_tests::{
    kit::{
        synguard_bin,
        topo::{ATTACKER, Lab, TARGET, transmitted},
        traffic::{Server, client_loop},
    },
    require_root,
};

#[test]
fn single_source_flood_is_banned_and_dropped_while_clients_keep_working() {
    require_root!();
    let lab = Lab::new();
    let pin_dir = lab.pin_dir();
    let mut daemon = lab.daemon(&["run", "--iface", "sgc", "--iface", "sga"]);
    let _web = Server::start(&lab.server, TARGET.parse().expect("addr"));
    let target: SocketAddr = TARGET.parse().expect("addr");

    let employees = client_loop(
        &lab.client,
        target,
        40,
        Duration::from_secs(9),
        Duration::from_secs(3),
    );
    thread::sleep(Duration::from_secs(1));
    let flood = lab.attacker.try_exec(&[
        "timeout",
        "-s",
        "INT",
        "6",
        "hping3",
        "-S",
        "-p",
        "80",
        "--flood",
        "192.0.2.1",
    ]);
    let hping = format!(
        "{}{}",
        String::from_utf8_lossy(&flood.stdout),
        String::from_utf8_lossy(&flood.stderr)
    );
    let sent = transmitted(&hping);
    let stats = employees.join().expect("client thread");

    let maps = Maps::from_pins(&pin_dir).expect("open pinned maps");
    let slot = lab.server.ifindex("sga");
    let c = maps.counters(slot).expect("counters");
    let seen_tcp =
        c[R_BANNED] + c[R_SYN_PASSED] + c[R_SYN_LIMITED] + c[R_TCP_OTHER] + c[R_INVALID_FLAGS];
    let veth_dropped = lab.attacker.if_stat("eth0", "tx_dropped");
    let bans: Vec<_> = rules::list(&maps)
        .expect("rules")
        .into_iter()
        .filter(|e| e.rule.kind == RULE_BAN)
        .collect();
    let log = daemon.log_text();
    println!(
        "hping3 sent {sent} SYNs in 6 s ({:.0}/s); XDP saw {seen_tcp} on the attacker's link \
         ({} banned, {} limited, {} passed); the veth dropped {veth_dropped}; employees: \
         {}/{} ok ({:.2} %), connect p50 {:.2} ms p99 {:.2} ms",
        sent as f64 / 6.0,
        c[R_BANNED],
        c[R_SYN_LIMITED],
        c[R_SYN_PASSED],
        stats.ok,
        stats.attempts,
        stats.success_rate() * 100.0,
        stats.percentile_ms(50.0),
        stats.percentile_ms(99.0),
    );

    assert!(sent > 50_000, "the flood was a flood: {sent}");
    assert!(
        stats.success_rate() >= 0.99,
        "employees kept working: {stats:?}"
    );
    assert!(
        stats.attempts >= 300,
        "the client really ran: {}",
        stats.attempts
    );
    assert_eq!(bans.len(), 1, "exactly the attacker is banned: {bans:?}");
    assert_eq!(bans[0].net.to_string(), format!("{ATTACKER}/32"));
    assert!(
        log.contains(&format!("banned {ATTACKER}/32 on sga")),
        "{log}"
    );
    // The counters add up: every SYN hping3 sent was either seen by XDP on that link or
    // dropped by the veth before it (when XDP could not keep up), and nearly all of what
    // XDP saw it dropped.
    // hping3 counts a packet after sending it, so SIGINT can land between the two: one
    // packet of slack.
    assert!(seen_tcp <= sent + 1, "XDP saw {seen_tcp} > sent {sent}");
    assert!(
        seen_tcp + veth_dropped >= sent,
        "sent {sent} but XDP saw {seen_tcp} and the veth dropped {veth_dropped}"
    );
    assert_eq!(
        bans[0].rule.hits, c[R_BANNED],
        "ban hits match the banned counter"
    );
    assert!(
        c[R_SYN_PASSED] <= 101,
        "only the first burst reached the server: {}",
        c[R_SYN_PASSED]
    );
    assert!(c[R_BANNED] as f64 >= 0.99 * seen_tcp as f64);
    // The employees' link saw no drops at all.
    let cc = maps.counters(lab.server.ifindex("sgc")).expect("counters");
    assert_eq!(
        cc[R_BANNED] + cc[R_BLOCKED] + cc[R_SYN_LIMITED] + cc[R_INVALID_FLAGS],
        0
    );
    assert!(cc[R_SYN_PASSED] >= stats.attempts);

    // SIGTERM detaches and removes every pin.
    drop(maps);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(10)), Some(0));
    for ifname in ["sgc", "sga"] {
        let out = lab.server.ip(&["link", "show", ifname]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("xdp"),
            "{ifname} still has XDP after SIGTERM"
        );
    }
    assert!(
        !pin_dir.exists(),
        "pins left behind in {}",
        pin_dir.display()
    );
}

#[test]
fn sigkill_keeps_the_flood_dropped_and_a_new_run_adopts_the_bans() {
    require_root!();
    let lab = Lab::new();
    let pin_dir = lab.pin_dir();
    let mut daemon = lab.daemon(&["run", "--iface", "sga", "--syn-burst", "10"]);
    let first = lab.attacker.try_exec(&[
        "timeout",
        "-s",
        "INT",
        "2",
        "hping3",
        "-S",
        "-p",
        "80",
        "--flood",
        "192.0.2.1",
    ]);
    assert!(first.status.code().is_some());
    daemon.signal(libc::SIGKILL);
    daemon.wait(Duration::from_secs(5));

    // Still attached, still dropping, with nobody running.
    let slot = lab.server.ifindex("sga");
    let maps = Maps::from_pins(&pin_dir).expect("pins survive SIGKILL");
    let before = maps.counters(slot).expect("counters")[R_BANNED];
    lab.attacker.try_exec(&[
        "timeout",
        "-s",
        "INT",
        "2",
        "hping3",
        "-S",
        "-p",
        "80",
        "--flood",
        "192.0.2.1",
    ]);
    let after = maps.counters(slot).expect("counters")[R_BANNED];
    assert!(
        after > before + 10_000,
        "banned drops went on after SIGKILL: {before} -> {after}"
    );
    // The attacker's bucket, found with the sources table's hash key.
    let key = synguard_tests::kit::prog::source_key(ATTACKER.parse().expect("addr"), 32);
    let bucket = |maps: &Maps| {
        // Straight from its slots (not `sources::get`, which hides buckets idle for 10 s).
        let seed = synguard::sources::seed(maps).expect("seed");
        let first = synguard_common::sources::first_slot(&key, &seed);
        (first..first + synguard_common::sources::WAYS)
            .map(|i| maps.sources.get(&i, 0).expect("read a slot"))
            .find(|s| s.holds(&key))
            .expect("the attacker's bucket")
            .bucket
    };
    let syns = bucket(&maps).syns;
    // Pretend the program left attached came from another version.
    let mut maps = maps;
    let mut cfg = maps.read_config().expect("config");
    let seed = cfg.source_seed;
    cfg.build_id = 0xdead;
    maps.write_config(&cfg).expect("write config");
    drop(maps);
    let link_before = link_and_prog(&pin_dir);

    // A new run adopts the state: the ban and counters are intact, and the program is
    // swapped inside the same link (never detached: no gap in protection).
    let mut again = lab.daemon(&["run", "--iface", "sga"]);
    let log = again.log_text();
    assert!(log.contains("adopted the state pinned"), "{log}");
    assert!(log.contains("replaced atomically"), "{log}");
    assert!(
        log.contains("upgraded the program from build 000000000000dead"),
        "{log}"
    );
    let link_after = link_and_prog(&pin_dir);
    assert_eq!(link_before.0, link_after.0, "the same link throughout");
    assert_ne!(link_before.1, link_after.1, "holding the new program");
    let maps = Maps::from_pins(&pin_dir).expect("pins");
    let bans: Vec<_> = rules::list(&maps)
        .expect("rules")
        .into_iter()
        .filter(|e| e.rule.kind == RULE_BAN)
        .collect();
    assert_eq!(bans.len(), 1);
    assert!(maps.counters(slot).expect("counters")[R_BANNED] >= after);
    // The buckets stay where the kernel looks for them: the hash key was kept.
    assert_eq!(maps.read_config().expect("config").source_seed, seed);
    assert!(bucket(&maps).syns >= syns);

    // A second run on the same pin dir refuses.
    let second = lab.server.try_exec(&[
        synguard_bin().to_str().expect("path"),
        "--pin-dir",
        pin_dir.to_str().expect("path"),
        "run",
        "--iface",
        "sga",
    ]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already active"));

    drop(maps);
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait(Duration::from_secs(10)), Some(0));
}

/// (link id, program id) of the single pinned link.
fn link_and_prog(pin_dir: &std::path::Path) -> (u32, u32) {
    let links = synguard::pins::pinned_links(pin_dir);
    assert_eq!(links.len(), 1, "{links:?}");
    let link = aya::programs::links::PinnedLink::from_pin(&links[0].2).expect("pinned link");
    let info = aya::programs::links::FdLink::from(link)
        .info()
        .expect("link info");
    (info.id(), info.program_id())
}

/// Half-open connections from a source in the server's SYN queue.
fn half_open_from(lab: &Lab, addr: &str) -> usize {
    let out = lab.server.exec(&["ss", "-Htn", "state", "syn-recv"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("{addr}:")))
        .count()
}

#[test]
fn banning_a_flooder_purges_its_half_open_connections() {
    require_root!();
    for mode in ["enforce", "monitor"] {
        let lab = Lab::new();
        // No SYN cookies: the burst before the ban becomes real request sockets.
        lab.server.sysctl("net.ipv4.tcp_syncookies", "0");
        let _web = Server::start(&lab.server, TARGET.parse().expect("addr"));
        let mut daemon = lab.daemon(&["run", "--iface", "sga", "--mode", mode]);
        lab.hping(1, &["-S", "-p", "80", "--flood", "192.0.2.1"]);
        thread::sleep(Duration::from_millis(300));
        let left = half_open_from(&lab, ATTACKER);
        if mode == "enforce" {
            assert_eq!(
                left, 0,
                "the banned flooder's half-open connections are gone"
            );
            daemon.wait_for_log(
                &format!("half-open connections from {ATTACKER}/32 from the server's SYN queues"),
                Duration::from_secs(2),
            );
        } else {
            // Monitor mode changes nothing: the burst (and, since nothing is dropped, the
            // rest of the flood) fills the queue.
            assert!(left >= 100, "monitor mode left them alone: {left}");
        }
    }
}
