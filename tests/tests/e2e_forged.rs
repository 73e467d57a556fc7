//! Forged packets never choose who is cut off (end to end, in network namespaces): SYNs
//! forged with a real user's address, sent far over its limit from the attacker's link,
//! neither break the user's established connection nor keep it from opening new ones
//! (they are answered with SYN cookies, which only the real user completes); and a real
//! flooder, sending from its own address and never completing a handshake, is still
//! banned within the first 100 ms.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::Duration,
};

use synguard::{bpf::Maps, rules};
use synguard_common::{RULE_BAN, stat::*};
use synguard_tests::{
    kit::{
        flood::{self, FloodSpec, Source},
        netns::mac_of,
        topo::{ATTACKER, CLIENT, Lab, TARGET, fetch_in, xdp_peer},
        traffic::Server,
    },
    require_root,
};

/// SYNs at `rate` a second for `duration` from the attacker's link, with source `from`.
fn flood(lab: &Lab, from: &str, rate: u64, duration: Duration) -> thread::JoinHandle<u64> {
    let spec = FloodSpec {
        ifindex: lab.attacker.ifindex("eth0"),
        src_mac: mac_of(&lab.attacker, "eth0").expect("MAC"),
        dst_mac: mac_of(&lab.server, "sga").expect("MAC"),
        source: Source::Fixed(from.parse().expect("addr")),
        dst: "192.0.2.1".parse().expect("addr"),
        dport: 80,
        rate: Some(rate),
        flags: synguard_tests::kit::packet::SYN,
        duration,
        threads: 1,
        batch: 16,
    };
    let stop = Arc::new(AtomicBool::new(false));
    lab.attacker
        .spawn(move || flood::run(&spec, &stop).expect("flood").sent)
}

/// Every counter of the server's two links.
fn counters(maps: &Maps, lab: &Lab) -> [u64; COUNT] {
    let mut sum = [0u64; COUNT];
    for link in ["sgc", "sga"] {
        let c = maps.counters(lab.server.ifindex(link)).expect("counters");
        for (s, v) in sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    sum
}

#[test]
fn forged_syns_never_cut_off_their_victim_and_a_real_flooder_is_still_banned() {
    require_root!();
    let lab = Lab::new();
    // On veth, a frame sent back with XDP_TX (a cookie SYN-ACK) reaches the peer only if
    // the peer runs an XDP program too.
    let _peer_xdp = xdp_peer(&lab.client, "eth0").expect("attaching the employee's XDP program");
    let _web = Server::start(&lab.server, TARGET.parse().expect("addr"));
    // An echo service: the victim's long-lived connection.
    let echo = lab.server.spawn(|| {
        let l = TcpListener::bind("192.0.2.1:7").expect("bind echo");
        let (conn, _) = l.accept().expect("accept");
        let mut out = conn.try_clone().expect("clone");
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            if out.write_all(format!("{line}\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut daemon = lab.daemon(&["run", "--iface", "sgc", "--iface", "sga"]);
    let maps = Maps::from_pins(&lab.pin_dir()).expect("open the pinned maps");

    // The employee works, which proves it owns its address.
    fetch_in(&lab.client, None, Duration::from_secs(5)).expect("the employee before the flood");
    assert_eq!(lab.json(&["explain", CLIENT])["proof"]["proven"], true);
    let conn = lab
        .client
        .spawn(|| {
            let c = TcpStream::connect("192.0.2.1:7").expect("connect to echo");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            c
        })
        .join()
        .expect("echo client");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut echo_once = |n: u32| {
        let mut w = &conn;
        w.write_all(format!("ping {n}\n").as_bytes())
            .expect("send on the established connection");
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("the established connection broke: {e}"));
        assert_eq!(line, format!("ping {n}\n"));
    };
    echo_once(0);

    // SYNs forged with its address, 5,000 a second for 3 s: 25 times its limit.
    let before = counters(&maps, &lab);
    let forged = flood(&lab, CLIENT, 5_000, Duration::from_secs(3));
    thread::sleep(Duration::from_millis(500));
    let mut fetched = 0;
    for n in 1..=10u32 {
        echo_once(n);
        fetch_in(&lab.client, None, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("the employee's new connection {n} during the flood: {e}"));
        fetched += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let sent = forged.join().expect("forged flood");
    assert!(sent >= 5_000, "the forged flood was sent: {sent}");
    let c = counters(&maps, &lab);
    let moved = |i: usize| c[i] - before[i];
    println!(
        "forged flood: {sent} SYNs with {CLIENT}'s address; {} challenged, {} answered with \
         cookies, {} passed to the kernel; the employee: {fetched}/10 new connections and its \
         established one worked",
        moved(N_CHALLENGED),
        moved(R_COOKIE_SENT),
        moved(R_COOKIE_FALLBACK) + moved(R_SYN_PASSED) + moved(R_SYN_VERIFIED),
    );
    assert!(
        moved(N_CHALLENGED) >= 1000,
        "over its limit, it was challenged: {}",
        moved(N_CHALLENGED)
    );
    assert_eq!(moved(N_BANS), 0, "no ban");
    assert!(
        rules::list(&maps).expect("rules").is_empty(),
        "nothing is blocked"
    );
    let explain = lab.json(&["explain", CLIENT]);
    assert_eq!(explain["proof"]["proven"], true, "{explain}");
    assert!(
        daemon.log_text().contains("most likely forged"),
        "{}",
        daemon.log_text()
    );
    // After the flood: its connections, old and new, as before.
    echo_once(99);
    fetch_in(&lab.client, None, Duration::from_secs(3)).expect("the employee after the flood");
    drop(reader);
    drop(conn);
    let _ = echo.join();

    // A real flooder, from its own address, never completing a handshake: banned within
    // its burst, 100 SYNs at 20,000 a second (5 ms).
    let start = synguard::clock::monotonic_ns();
    let sent = flood(&lab, ATTACKER, 20_000, Duration::from_millis(300))
        .join()
        .expect("flood");
    assert!(sent >= 1000, "the flood was sent: {sent}");
    let bans: Vec<_> = rules::list(&maps)
        .expect("rules")
        .into_iter()
        .filter(|e| e.rule.kind == RULE_BAN)
        .collect();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].net.to_string(), format!("{ATTACKER}/32"));
    let after_ms = bans[0].rule.created_ns.saturating_sub(start) / 1_000_000;
    assert!(after_ms < 100, "banned {after_ms} ms into the flood");
    let b = lab.json(&["block", "list"]);
    assert_eq!(b[0]["proof"], "unproven", "{b}");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(20)), Some(0), "clean exit");
}
