//! End to end, in network namespaces: the real `synguard run` on a server's interfaces, a
//! real TCP server, a legitimate client on one link, and an `hping3 --flood` attacker on
//! another. The client must keep working, the attacker must be banned, and the flood must
//! be dropped in XDP with counters that add up to what hping3 sent.

use std::{net::SocketAddr, thread, time::Duration};

use synguard::{bpf::Maps, rules};
use synguard_common::{RULE_BAN, stat::*};
use synguard_tests::{
    netns::{Bpffs, ChildGuard, Netns, veth},
    prog::require_root,
    synguard_bin,
    traffic::{Server, client_loop},
};

/// The server (192.0.2.1 on its loopback) with one link to an employees' network and one
/// to the attacker's.
struct Lab {
    server: Netns,
    client: Netns,
    attacker: Netns,
}

const TARGET: &str = "192.0.2.1:80";
const ATTACKER: &str = "203.0.113.66";

impl Lab {
    fn new() -> Self {
        let server = Netns::new("srv");
        let client = Netns::new("cli");
        let attacker = Netns::new("att");
        veth(
            &server,
            "sgc",
            "198.51.100.1/24",
            &client,
            "eth0",
            "198.51.100.10/24",
        );
        veth(
            &server,
            "sga",
            "203.0.113.1/24",
            &attacker,
            "eth0",
            &format!("{ATTACKER}/24"),
        );
        server.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
        client.ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.1"]);
        attacker.ip(&["route", "add", "192.0.2.0/24", "via", "203.0.113.1"]);
        // Real flooders do not answer the server's SYN-ACKs; without this the attacker's
        // own kernel would reset every half-open connection for the server.
        attacker.exec(&["nft", "add table inet sg; add chain inet sg out { type filter hook output priority 0; }; add rule inet sg out tcp flags rst drop"]);
        Self {
            server,
            client,
            attacker,
        }
    }

    fn synguard(&self, pin_dir: &std::path::Path, args: &[&str]) -> ChildGuard {
        let mut cmd = self
            .server
            .command(synguard_bin().to_str().expect("utf-8 path"));
        cmd.arg("--pin-dir").arg(pin_dir).args(args);
        let log =
            std::env::temp_dir().join(format!("{}.log", synguard_tests::netns::unique("sgd")));
        let mut g = ChildGuard::spawn_logged(cmd, log);
        g.wait_for_log("running:", Duration::from_secs(20));
        g
    }
}

/// hping3's own count of what it sent.
fn transmitted(hping_output: &str) -> u64 {
    hping_output
        .lines()
        .find_map(|l| {
            l.split(" packets transmitted")
                .next()
                .filter(|_| l.contains("packets transmitted"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in hping3 output: {hping_output}"))
}

#[test]
fn single_source_flood_is_banned_and_dropped_while_clients_keep_working() {
    require_root();
    let lab = Lab::new();
    let bpffs = Bpffs::new();
    let pin_dir = bpffs.pin_dir();
    let mut daemon = lab.synguard(&pin_dir, &["run", "--iface", "sgc", "--iface", "sga"]);
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
    require_root();
    let lab = Lab::new();
    let bpffs = Bpffs::new();
    let pin_dir = bpffs.pin_dir();
    let mut daemon = lab.synguard(&pin_dir, &["run", "--iface", "sga", "--syn-burst", "10"]);
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
    drop(maps);

    // A new run adopts the state: the ban and counters are intact.
    let mut again = lab.synguard(&pin_dir, &["run", "--iface", "sga"]);
    let log = again.log_text();
    assert!(log.contains("adopted the state pinned"), "{log}");
    assert!(log.contains("replaced atomically"), "{log}");
    let maps = Maps::from_pins(&pin_dir).expect("pins");
    let bans: Vec<_> = rules::list(&maps)
        .expect("rules")
        .into_iter()
        .filter(|e| e.rule.kind == RULE_BAN)
        .collect();
    assert_eq!(bans.len(), 1);
    assert!(maps.counters(slot).expect("counters")[R_BANNED] >= after);

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
