//! The smallest end-to-end check of the real program on a real link, and the one the kernel
//! matrix runs inside every kernel it boots (`cargo xtask test`, `xtask/src/kmatrix.rs`):
//! `synguard run` attached to veth pairs in network namespaces, a flooder banned and its
//! next connection dropped while an employee's connections keep working, then a handshake
//! completed through a SYN cookie answered in XDP. It needs nothing but `ip`, `cat` and
//! `sysctl` besides synguard itself, so it runs in the matrix's minimal guests.

use std::{
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use synguard::{bpf::Maps, rules};
use synguard_common::{RULE_BAN, stat::*};
use synguard_tests::{
    kit::{
        flood::{self, FloodSpec, Source},
        netns::mac_of,
        topo::{ATTACKER, CLIENT, Lab, TARGET, fetch_in},
        traffic::Server,
    },
    require_root,
};

/// A second address of the employee's host, which connects only once cookies are on.
const NEWCOMER: &str = "198.51.100.11";

#[test]
fn a_flooder_is_banned_and_a_cookie_handshake_completes_on_veth() {
    require_root!();
    let lab = Lab::minimal();
    let (server, employee, flooder) = (&lab.server, &lab.client, &lab.attacker);
    // No XDP program on the employee's side: `run` attaches to a veth in generic mode
    // (`--xdp-mode auto`), where the cookie SYN-ACK sent back with XDP_TX reaches the peer
    // as it is. (In native mode it would be dropped unless the peer ran XDP too.)
    let _web = Server::start(server, TARGET.parse().expect("addr"));
    employee.ip(&["addr", "add", &format!("{NEWCOMER}/24"), "dev", "eth0"]);
    let mut daemon = lab.daemon(&["run", "--iface", "sgc", "--iface", "sga"]);
    let maps = Maps::from_pins(&lab.pin_dir()).expect("open the pinned maps");

    fetch_in(employee, None, Duration::from_secs(5)).expect("the employee before any flood");
    // The handshake it completed proves it owns its address (the sock_ops program).
    let proof = &lab.json(&["explain", CLIENT])["proof"];
    assert_eq!(proof["proven"], true, "{proof}");
    assert_eq!(proof["how"], "completed a handshake", "{proof}");
    let proof = &lab.json(&["explain", ATTACKER])["proof"];
    assert_eq!(proof["proven"], false, "{proof}");

    // SYNs at up to 20,000 a second for 300 ms from the flooder's own address: its first
    // 100 (the burst) pass, the next is over its limit and bans it. (An emulated machine
    // sends far fewer, but enough.)
    let spec = FloodSpec {
        ifindex: flooder.ifindex("eth0"),
        src_mac: mac_of(flooder, "eth0").expect("MAC"),
        dst_mac: mac_of(server, "sga").expect("MAC"),
        source: Source::Fixed(ATTACKER.parse().expect("addr")),
        dst: "192.0.2.1".parse().expect("addr"),
        dport: 80,
        rate: Some(20_000),
        flags: synguard_tests::kit::packet::SYN,
        duration: Duration::from_millis(300),
        threads: 1,
        batch: 16,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let report = flooder
        .spawn(move || flood::run(&spec, &stop))
        .join()
        .expect("flood thread")
        .expect("flood");
    assert!(report.sent >= 300, "the flood was sent: {report:?}");
    let start = Instant::now();
    let bans = loop {
        let bans: Vec<_> = rules::list(&maps)
            .expect("rules")
            .into_iter()
            .filter(|e| e.rule.kind == RULE_BAN)
            .collect();
        if !bans.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break bans;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(bans.len(), 1, "the flooder alone is banned: {bans:?}");
    assert_eq!(bans[0].net.to_string(), format!("{ATTACKER}/32"));
    let listed = lab.ok(&["block", "list"]);
    assert!(listed.contains(&format!("{ATTACKER}/32")), "{listed}");
    let c = maps
        .counters(server.ifindex("sga"))
        .expect("counters of the flooder's link");
    // The burst, and what the default 200 SYN/s refilled while the flood emptied it.
    let refilled = (200.0 * report.seconds).ceil() as u64;
    assert!(
        c[R_SYN_PASSED] <= 101 + refilled,
        "only the burst passed: {c:?} {report:?}"
    );
    assert!(c[R_SYN_LIMITED] >= 1, "{c:?}");
    // Its own next connection is dropped; the employee's are not.
    assert!(
        fetch_in(flooder, None, Duration::from_secs(1)).is_err(),
        "the banned flooder connected"
    );
    fetch_in(employee, None, Duration::from_secs(5)).expect("the employee during the ban");

    // Cookies for every unverified SYN: the handshake of a client that has not proven
    // itself yet (another address of the employee's host) is answered in XDP and
    // completes with the kernel's own cookie check; its source is verified.
    // The daemon sets `net.ipv4.tcp_syncookies` to 2 for the kernel's cookie helper.
    lab.ok(&["config", "set", "syn-cookies", "always"]);
    let start = Instant::now();
    while String::from_utf8_lossy(
        &server
            .exec(&["cat", "/proc/sys/net/ipv4/tcp_syncookies"])
            .stdout,
    )
    .trim()
        != "2"
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon took over tcp_syncookies"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let slot = server.ifindex("sgc");
    let before = maps.counters(slot).expect("counters");
    fetch_in(employee, Some(NEWCOMER), Duration::from_secs(5))
        .expect("a newcomer through a cookie");
    let after = maps.counters(slot).expect("counters");
    assert_eq!(
        after[R_COOKIE_SENT] - before[R_COOKIE_SENT],
        1,
        "answered in XDP: {after:?}"
    );
    // Its handshake's ACK verified it, counted once: the request that follows can be
    // checked on another CPU at the same moment, before the proof is visible there, and
    // prove the source again, but only the proof's first write counts (seen counted
    // twice in the emulated 5.15 guest before it did).
    assert_eq!(
        after[N_VERIFIED] - before[N_VERIFIED],
        1,
        "the cookie ACK verified the employee: {after:?}"
    );
    // Verified: its next SYN goes straight to the kernel.
    fetch_in(employee, Some(NEWCOMER), Duration::from_secs(5)).expect("the verified newcomer");
    let last = maps.counters(slot).expect("counters");
    assert_eq!(last[R_SYN_VERIFIED] - after[R_SYN_VERIFIED], 1);
    assert_eq!(last[R_COOKIE_SENT], after[R_COOKIE_SENT]);
    // So do the SYNs of the employee proven before by its handshake (the `sock_ops`
    // program's proof, found through the proof filter).
    fetch_in(employee, None, Duration::from_secs(5)).expect("the proven employee");
    let proven = maps.counters(slot).expect("counters");
    assert_eq!(
        proven[R_SYN_VERIFIED] - last[R_SYN_VERIFIED],
        1,
        "{proven:?}"
    );
    assert_eq!(proven[R_COOKIE_SENT], after[R_COOKIE_SENT]);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(20)), Some(0), "clean exit");
}
