//! Attack mode in the real kernel: SYNs answered with SYN cookies from XDP
//! (`BPF_PROG_TEST_RUN`), cookie ACKs verifying their sources, and the hysteresis.
//!
//! The cookie helpers look sockets up in the namespace of the receiving device, which
//! under `TestRun` is the calling thread's: each test runs on a thread inside a namespace
//! of its own with real listening sockets.

use std::{
    net::{IpAddr, TcpListener},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use synguard::{config::Settings, nat::NatPorts};
use synguard_common::{
    ATTACK_STALE_NS, EVENT_ATTACK_OFF, EVENT_ATTACK_ON, EVENT_CHALLENGE, Event, PROOF_HANDSHAKE,
    PROOF_SOCKET, Proof, RULE_ALLOW, SNAT_V4, SNAT_V6, stat::*,
};
use synguard_tests::{
    kit::{
        netns::Netns,
        packet::{ACK, FIN, RST, Tcp},
        prog::{Prog, XDP_DROP, XDP_PASS, XDP_TX, pin_to_cpu, source_key},
    },
    require_root,
};

const SERVER: &str = "192.0.2.1";
const SERVER6: &str = "2001:db8:2::1";

/// Tests of this file hold it shared; a test that measures rates over real time holds it
/// alone, so the others' work (on the two CPUs of the kernel matrix's emulated machines)
/// does not stretch its windows.
static TIMING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Run `test` on a thread inside a fresh namespace that has listeners on port 80 of
/// 192.0.2.1 and 2001:db8:2::1, with `net.ipv4.tcp_syncookies` set to `syncookies`.
fn in_server_ns(syncookies: &str, test: impl FnOnce() + Send + 'static) {
    let _shared = TIMING.read().unwrap_or_else(|e| e.into_inner());
    in_server_ns_now(syncookies, test);
}

/// [`in_server_ns`] with no other test of this file running meanwhile.
fn in_server_ns_alone(syncookies: &str, test: impl FnOnce() + Send + 'static) {
    let _alone = TIMING.write().unwrap_or_else(|e| e.into_inner());
    in_server_ns_now(syncookies, test);
}

fn in_server_ns_now(syncookies: &str, test: impl FnOnce() + Send + 'static) {
    require_root!();
    let ns = Netns::new("cookie");
    ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "2001:db8:2::1/128", "dev", "lo", "nodad"]);
    ns.sysctl("net.ipv4.tcp_syncookies", syncookies);
    let result = ns
        .spawn(move || {
            // One CPU: the attack detector measures per CPU.
            pin_to_cpu(0);
            let _l4 = TcpListener::bind("192.0.2.1:80").expect("listen v4");
            let _l6 = TcpListener::bind("[2001:db8:2::1]:80").expect("listen v6");
            test();
        })
        .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let mut s = Settings::default();
    for (k, v) in pairs {
        s.set(k, v).expect("valid test setting");
    }
    s
}

fn always() -> Prog {
    Prog::new(settings(&[("syn-cookies", "always")]))
}

/// What a cookie SYN-ACK offers.
#[derive(Debug)]
struct Synack {
    cookie: u32,
    mss: u16,
    /// (TSval, TSecr).
    ts: Option<(u32, u32)>,
    sack_perm: bool,
    wscale: Option<u8>,
    ece: bool,
}

/// Check that `out` is the SYN-ACK answering `syn`, with its options in the kernel's
/// layout and NOPs for the ones it leaves out, and return what it offers.
fn check_synack(syn: &[u8], out: &[u8]) -> Synack {
    let inp = SlicedPacket::from_ethernet(syn).expect("input parses");
    let rep = SlicedPacket::from_ethernet(out).expect("reply parses");
    let (Some(li), Some(lo)) = (inp.link.as_ref(), rep.link.as_ref()) else {
        panic!("no Ethernet");
    };
    let (li, lo) = match (li, lo) {
        (etherparse::LinkSlice::Ethernet2(a), etherparse::LinkSlice::Ethernet2(b)) => (a, b),
        _ => panic!("not Ethernet II"),
    };
    assert_eq!(lo.source(), li.destination(), "MACs swapped");
    assert_eq!(lo.destination(), li.source(), "MACs swapped");
    assert_eq!(inp.link_exts.len(), rep.link_exts.len(), "VLAN tags kept");
    let (TransportSlice::Tcp(ti), TransportSlice::Tcp(to)) = (
        inp.transport.expect("tcp in"),
        rep.transport.expect("tcp out"),
    ) else {
        panic!("not TCP");
    };
    assert!(
        to.syn() && to.ack() && !to.rst() && !to.fin() && !to.cwr(),
        "SYN-ACK flags"
    );
    assert_eq!(
        (to.source_port(), to.destination_port()),
        (ti.destination_port(), ti.source_port())
    );
    assert_eq!(
        to.acknowledgment_number(),
        ti.sequence_number().wrapping_add(1),
        "ACK = ISN + 1"
    );
    // 20 bytes of options with timestamps, the MSS's 4 without.
    let o = to.options();
    assert!(o.len() == 20 || o.len() == 4, "options {o:?}");
    assert_eq!(&o[..2], &[2, 4], "the MSS first");
    let mss = u16::from_be_bytes([o[2], o[3]]);
    assert!(mss >= 536, "MSS {mss}");
    let short = o.len() == 4;
    let (sack_perm, ts, wscale) = if short {
        (false, None, None)
    } else {
        long_options(o)
    };
    if ts.is_none() {
        assert!(
            short && !to.ece(),
            "without timestamps nothing but the MSS can be carried: {o:?}"
        );
    }
    let tcp_ok = match (inp.net.expect("ip in"), rep.net.expect("ip out")) {
        (NetSlice::Ipv4(a), NetSlice::Ipv4(b)) => {
            assert_eq!(b.header().source_addr(), a.header().destination_addr());
            assert_eq!(b.header().destination_addr(), a.header().source_addr());
            let h = b.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
            assert_eq!(usize::from(h.total_len), 40 + o.len());
            to.to_header()
                .calc_checksum_ipv4(&h, to.payload())
                .expect("sum")
                == to.checksum()
        }
        (NetSlice::Ipv6(a), NetSlice::Ipv6(b)) => {
            assert_eq!(b.header().source_addr(), a.header().destination_addr());
            assert_eq!(b.header().destination_addr(), a.header().source_addr());
            let h = b.header().to_header();
            assert_eq!(usize::from(h.payload_length), 20 + o.len());
            to.to_header()
                .calc_checksum_ipv6(&h, to.payload())
                .expect("sum")
                == to.checksum()
        }
        _ => panic!("address family changed"),
    };
    assert!(tcp_ok, "TCP checksum");
    assert!(to.payload().is_empty());
    Synack {
        cookie: to.sequence_number(),
        mss,
        ts,
        sack_perm,
        wscale,
        ece: to.ece(),
    }
}

/// The 20 bytes of options of a SYN-ACK with timestamps, in the kernel's layout: (SACK
/// permitted, (TSval, TSecr), window scale).
#[allow(clippy::type_complexity)]
fn long_options(o: &[u8]) -> (bool, Option<(u32, u32)>, Option<u8>) {
    let sack_perm = match &o[4..6] {
        [4, 2] => true,
        [1, 1] => false,
        other => panic!("SACK permitted or NOPs: {other:?}"),
    };
    assert_eq!(&o[6..8], &[8, 10], "timestamps: {o:?}");
    let word = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    let wscale = match &o[16..20] {
        [1, 3, 3, s] => Some(*s),
        [1, 1, 1, 1] => None,
        other => panic!("window scale or NOPs: {other:?}"),
    };
    (sack_perm, Some((word(8), word(12))), wscale)
}

#[test]
fn syns_are_answered_with_valid_cookie_syn_acks() {
    in_server_ns("2", || {
        let p = always();
        let frames = [
            Tcp::syn("198.51.100.10", SERVER).seq(7).build(),
            Tcp::syn("198.51.100.10", SERVER)
                .with_syn_options()
                .sport(40001)
                .build(),
            Tcp::syn("198.51.100.10", SERVER)
                .vlan(10)
                .sport(40002)
                .build(),
            Tcp::syn("198.51.100.10", SERVER)
                .vlan(10)
                .vlan(20)
                .sport(40003)
                .build(),
            Tcp::syn("2001:db8:5::10", SERVER6).seq(u32::MAX).build(),
            Tcp::syn("2001:db8:5::10", SERVER6)
                .with_syn_options()
                .vlan(30)
                .sport(40004)
                .build(),
        ];
        for syn in &frames {
            let before = p.counter(R_COOKIE_SENT);
            let (action, out) = p.run_out(syn);
            assert_eq!(action, XDP_TX, "answered in XDP");
            assert_eq!(p.counter(R_COOKIE_SENT), before + 1);
            check_synack(syn, &out);
        }
        // The SYNs never reached the kernel: no request sockets were queued.
        assert_eq!(p.counter(R_SYN_PASSED), 0);
    });
}

#[test]
fn cookies_are_made_and_checked_on_the_tcp_header_in_place_at_every_length() {
    // The helpers are handed the header in the packet, one branch per length (20 to 60
    // bytes): each must give the kernel the right bytes and the right length, or there is
    // no cookie (the SYN would go to the kernel) or the ACK does not verify its source.
    // (The MSS the cookie encodes is checked end to end, on the server's socket, by
    // e2e_cookies.)
    in_server_ns("2", || {
        let p = always();
        for (i, words) in (0..=10usize).enumerate() {
            // MSS 1400, then NOPs; none at 20 bytes. The SYN-ACK advertises the client's,
            // or without one the receiving device's (loopback under TestRun: 65536 bytes
            // less the headers).
            let mut opts = vec![1u8; words * 4];
            if words > 0 {
                opts[..4].copy_from_slice(&[2, 4, 0x05, 0x78]);
            }
            let v4 = format!("198.51.100.{}", 20 + i);
            let v6 = format!("2001:db8:5:{i}::10");
            let (v4_mss, v6_mss): (u32, u32) = if words > 0 {
                (1400, 1400)
            } else {
                (65_536 - 40, 65_536 - 60)
            };
            for (client, server, want_mss) in [
                (v4.as_str(), SERVER, v4_mss),
                (v6.as_str(), SERVER6, v6_mss),
            ] {
                let syn = Tcp::syn(client, server)
                    .tcp_options(&opts)
                    .seq(5000)
                    .build();
                let (action, out) = p.run_out(&syn);
                assert_eq!(action, XDP_TX, "{} bytes of TCP header", 20 + opts.len());
                let a = check_synack(&syn, &out);
                assert_eq!(
                    u32::from(a.mss),
                    want_mss,
                    "{} bytes of TCP header",
                    20 + opts.len()
                );
                // And the kernel's check accepts it, from an ACK with a header as long.
                let ack = Tcp::syn(client, server)
                    .flags(ACK)
                    .tcp_options(&opts)
                    .seq(5001)
                    .ack_number(a.cookie.wrapping_add(1))
                    .build();
                p.expect(&ack, XDP_PASS, &[R_TCP_OTHER, N_VERIFIED]);
            }
        }
        assert_eq!(p.counter(R_SYN_PASSED), 0);
    });
}

#[test]
fn a_valid_cookie_ack_verifies_the_source_and_its_syns_then_pass() {
    in_server_ns("2", || {
        let p = always();
        for (client, server) in [("198.51.100.10", SERVER), ("2001:db8:5::10", SERVER6)] {
            let syn = Tcp::syn(client, server).seq(1000).build();
            let (action, out) = p.run_out(&syn);
            assert_eq!(action, XDP_TX);
            let cookie = check_synack(&syn, &out).cookie;

            // A forged ACK proves nothing. (A forger does not know the cookie; a value one
            // or two off would decode as another MSS index, which the kernel accepts.)
            let wrong = Tcp::syn(client, server)
                .flags(ACK)
                .seq(1001)
                .ack_number(cookie ^ 0x5a5a_5a5a)
                .build();
            // It belongs to no connection either: an ACK flood's, dropped.
            p.expect(&wrong, XDP_DROP, &[R_ACK_NO_FLOW, N_COOKIE_ACK_INVALID]);
            let key = source_key(
                client.parse::<IpAddr>().unwrap(),
                if client.contains(':') { 64 } else { 32 },
            );
            assert!(p.loaded.maps.verified.get(&key, 0).is_err(), "not verified");
            p.expect(&syn, XDP_TX, &[N_SYNS, R_COOKIE_SENT]);

            // The right ACK verifies the source; the ACK itself goes on to the kernel.
            let ack = Tcp::syn(client, server)
                .flags(ACK)
                .seq(1001)
                .ack_number(cookie.wrapping_add(1))
                .build();
            p.expect(&ack, XDP_PASS, &[R_TCP_OTHER, N_VERIFIED]);
            let proof = p.loaded.maps.verified.get(&key, 0).expect("verified");
            let now = synguard::clock::monotonic_ns();
            assert!(
                proof.until_ns > now + 3_500_000_000_000,
                "for verified-for (1h)"
            );
            assert_eq!(proof.how, synguard_common::PROOF_COOKIE);
            // From now on its SYNs go straight to the kernel, with all their options.
            let again = Tcp::syn(client, server)
                .with_syn_options()
                .sport(50000)
                .build();
            let (action, out) = p.run_out(&again);
            assert_eq!(action, XDP_PASS);
            assert_eq!(out, again, "untouched");
        }
        assert_eq!(p.counter(R_SYN_VERIFIED), 2);
    });
}

/// A source whose handshake ACK and the request behind it reach XDP on two CPUs at the
/// same moment is proven by both before either proof is visible to the other; the
/// verified counter must still count it once (only the proof's first write counts).
/// The two packets are raced here for hundreds of sources, each pair released on CPUs 0
/// and 1 by a spin barrier: with both writes counted, most pairs counted twice (1,418
/// and 1,489 of 750 in two runs).
#[test]
fn a_source_proven_on_two_cpus_at_once_is_counted_once() {
    if thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: one CPU, so no two packets are ever checked at the same moment");
        return;
    }
    in_server_ns("2", || {
        let p = always();
        let clients = (1..=250)
            .map(|i| format!("198.51.100.{i}"))
            .chain((1..=250).map(|i| format!("203.0.113.{i}")))
            .chain((1..=250).map(|i| format!("2001:db8:5:{i:x}::10")));
        let acks: Vec<Vec<u8>> = clients
            .map(|client| {
                let server = if client.contains(':') {
                    SERVER6
                } else {
                    SERVER
                };
                let syn = Tcp::syn(&client, server).seq(1000).build();
                let (action, out) = p.run_out(&syn);
                assert_eq!(action, XDP_TX, "{client}");
                let cookie = check_synack(&syn, &out).cookie;
                Tcp::syn(&client, server)
                    .flags(ACK)
                    .seq(1001)
                    .ack_number(cookie.wrapping_add(1))
                    .build()
            })
            .collect();
        let before = p.counters();
        let arrived = AtomicUsize::new(0);
        thread::scope(|s| {
            for cpu in [0, 1] {
                let (p, acks, arrived) = (&p, &acks, &arrived);
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    for (i, ack) in acks.iter().enumerate() {
                        // Both threads at the same ACK before either runs it.
                        arrived.fetch_add(1, Ordering::AcqRel);
                        while arrived.load(Ordering::Acquire) < 2 * (i + 1) {
                            std::hint::spin_loop();
                        }
                        assert_eq!(p.run(ack), XDP_PASS);
                    }
                });
            }
        });
        let after = p.counters();
        let n = acks.len() as u64;
        assert_eq!(after[R_TCP_OTHER] - before[R_TCP_OTHER], 2 * n);
        assert_eq!(
            after[N_VERIFIED] - before[N_VERIFIED],
            n,
            "{n} sources, each proven by two packets at once"
        );
        assert_eq!(
            p.loaded.maps.verified.iter().count() as u64,
            n,
            "a proof each"
        );
    });
}

/// In attack mode an unverified SYN's proof is looked up only where the proof filter says
/// its source's set may hold one (`SG_PROOF_FILTER`): a proof written behind the filter's
/// back is not seen (its SYNs get cookies, as before it was proven); `run`'s sync of the
/// filter gives it its bit, and takes the bit of a proof that ended; `run`'s own proofs
/// set their bits as they are made (the kernel's cookie check: see
/// `a_valid_cookie_ack_verifies_the_source_and_its_syns_then_pass`).
#[test]
fn attack_mode_looks_proofs_up_only_where_the_filter_says() {
    in_server_ns("2", || {
        let mut p = always();
        let clock = synguard::clock::monotonic_ns;
        for (i, client) in ["198.51.100.20", "2001:db8:5::20"].into_iter().enumerate() {
            let key = source_key(
                client.parse::<IpAddr>().unwrap(),
                if client.contains(':') { 64 } else { 32 },
            );
            let proof = |until_ns| Proof {
                until_ns,
                since_ns: clock(),
                how: PROOF_SOCKET,
                _pad: 0,
            };
            p.loaded
                .maps
                .verified
                .insert(key, proof(clock() + 3_600_000_000_000), 0)
                .expect("write a proof");
            let syn = |port: u16| {
                Tcp::syn(client, if i == 0 { SERVER } else { SERVER6 })
                    .sport(port)
                    .build()
            };
            p.expect(&syn(1), XDP_TX, &[N_SYNS, R_COOKIE_SENT]);
            let sync = synguard::proofs::sync_filter(&mut p.loaded.maps, clock()).expect("sync");
            assert_eq!((sync.set, sync.cleared), (1, 0), "{sync:?}");
            p.expect(&syn(2), XDP_PASS, &[N_SYNS, R_SYN_VERIFIED]);

            // The proof ends: its bit goes (and its SYNs get cookies again).
            p.loaded
                .maps
                .verified
                .insert(key, proof(clock() - 1), 0)
                .expect("end the proof");
            let sync = synguard::proofs::sync_filter(&mut p.loaded.maps, clock()).expect("sync");
            assert_eq!((sync.set, sync.cleared), (0, 1), "{sync:?}");
            p.expect(&syn(3), XDP_TX, &[N_SYNS, R_COOKIE_SENT]);
            p.loaded
                .maps
                .verified
                .remove(&key)
                .expect("forget the proof");

            // `run`'s proofs mark the filter themselves.
            p.prove(
                client,
                if i == 0 { 32 } else { 64 },
                PROOF_SOCKET,
                3_600_000_000_000,
            );
            p.expect(&syn(4), XDP_PASS, &[N_SYNS, R_SYN_VERIFIED]);
            p.loaded
                .maps
                .verified
                .remove(&key)
                .expect("forget the proof");
            synguard::proofs::sync_filter(&mut p.loaded.maps, clock()).expect("sync");
        }
    });
}

#[test]
fn no_listener_and_no_cookie_mean_the_kernel_decides() {
    in_server_ns("2", || {
        let p = always();
        // No host listener: the kernel resets it, or a NAT rule sends it on to the
        // container that does listen (a published port). Never dropped here.
        for syn in [
            Tcp::syn("198.51.100.10", SERVER).dport(81).build(),
            Tcp::syn("2001:db8:5::10", SERVER6).dport(81).build(),
        ] {
            assert_eq!(p.run_out(&syn), (XDP_PASS, syn.clone()), "untouched");
        }
        assert_eq!(p.counter(R_COOKIE_NO_LISTENER), 2);
        // Behind IPv6 extension headers: counted (a quiet source's first SYN in attack
        // mode needs no bucket: see the sketch test), then the kernel answers it (the
        // reply is built for a plain IPv6 header).
        p.expect(
            &synguard_tests::kit::packet::with_v6_ext(
                &Tcp::syn("2001:db8:6::11", SERVER6).build(),
                &[(0, 0), (60, 1)],
            ),
            XDP_PASS,
            &[N_V6_EXT_WALKED, N_SYNS, R_COOKIE_FALLBACK],
        );
        // IPv4 options: no cookie reply is built; the kernel gets the SYN.
        p.expect(
            &Tcp::syn("198.51.100.11", SERVER)
                .ipv4_options(&[1, 1, 1, 0])
                .build(),
            XDP_PASS,
            &[N_SYNS, R_COOKIE_FALLBACK],
        );
    });
    // With tcp_syncookies = 1 and an empty queue the kernel will not issue a cookie: the
    // SYN goes to the kernel, as without synguard.
    in_server_ns("1", || {
        let p = always();
        p.expect(
            &Tcp::syn("198.51.100.10", SERVER).build(),
            XDP_PASS,
            &[N_SYNS, R_COOKIE_FALLBACK],
        );
    });
}

/// In attack mode a SYN is first counted in the sketch: a flood of forged sources, a SYN
/// or two each, never touches the sources table (its random slot was the program's
/// dearest access), while a source sending more than a quarter of its limit is metered in
/// full within the window and banned as before. Outside attack mode every SYN is metered.
#[test]
fn attack_mode_meters_only_sources_the_sketch_finds_loud() {
    in_server_ns("2", || {
        // syn-rate 200/s: the sketch lets 6 SYNs a window (134 ms) skip the bucket.
        let mut p = Prog::new(settings(&[
            ("syn-cookies", "always"),
            ("syn-rate", "200"),
            ("syn-burst", "3"),
        ]));
        assert_eq!(synguard_common::sources::sketch_quiet_limit(5_000_000), 6);
        // An IPv6 source first, while the sketch is empty (after the flood below its
        // counter could be one a forged source already counted in this window).
        let (action, _) = p.run_out(&Tcp::syn("2001:db8:9::1", SERVER6).build());
        assert_eq!(action, XDP_TX);
        assert_eq!(p.counter(N_SKETCH_NEW_V6), 1, "an IPv6 source");
        // 1,000 forged sources, one SYN each: every one answered, none in the table.
        for i in 0..1000u32 {
            let src = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            let (action, _) = p.run_out(&Tcp::syn(&src, SERVER).build());
            assert_eq!(action, XDP_TX, "{src}");
        }
        let c = p.counters();
        assert_eq!(c[R_COOKIE_SENT], 1001);
        assert_eq!(
            c[N_SOURCES_NEW] + c[N_SOURCES_RECYCLED],
            0,
            "no bucket made"
        );
        // Counted as new sources by the sketch instead (a few share a counter).
        assert!(
            (981..=1001).contains(&c[N_SKETCH_NEW]),
            "sketch_new {}",
            c[N_SKETCH_NEW]
        );
        assert_eq!(c[N_SKETCH_NEW_V6], 1, "the IPv6 source");

        // One flooder, in a fresh sketch window: the forged sources above filled 1,000
        // of the 65,536 counters, but only for the window they were sent in (the kernel's
        // clock trails the monotonic one by a tick or two: 40 ms into the next window).
        let window = 1u64 << synguard_common::sources::SKETCH_WINDOW_SHIFT;
        let now = synguard::clock::monotonic_ns();
        thread::sleep(Duration::from_nanos(
            (now / window + 1) * window - now + 40_000_000,
        ));
        // Its first 6 SYNs skip the bucket (the sketch's quiet limit), then it is metered:
        // answered for its burst of 3, limited and banned at the next (the first drop).
        let flooder = "203.0.113.66";
        let start = Instant::now();
        let mut sent = 0;
        loop {
            let (action, _) = p.run_out(&Tcp::syn(flooder, SERVER).sport(1000 + sent).build());
            assert_ne!(action, XDP_PASS);
            sent += 1;
            if action == XDP_DROP || sent == 40 {
                break;
            }
        }
        let c = p.counters();
        assert_eq!(c[N_BANS], 1, "banned after {sent} SYNs");
        assert_eq!(p.rules().len(), 1, "the flooder's ban");
        assert_eq!(c[N_SOURCES_NEW], 1, "one bucket, the flooder's");
        // On a slow machine (an emulated kernel) the loop may reach the next window (6
        // more quiet SYNs) and the bucket refill (one SYN per 5 ms); on any other, it
        // takes a millisecond or two and is banned at its 10th SYN.
        let took = start.elapsed().as_nanos() as u64;
        let windows = 1 + (52_000_000 + took) / window;
        let most = 6 * windows + 3 + took / 5_000_000 + 1 + 1;
        println!("the flooder was banned after {sent} SYNs in {took} ns (at most {most})");
        assert!(
            (6 + 3 + 1..=most).contains(&u64::from(sent)),
            "banned after {sent} SYNs (at most {most} in {took} ns)"
        );
        let (action, _) = p.run_out(&Tcp::syn(flooder, SERVER).build());
        assert_eq!(action, XDP_DROP);

        // Without cookies (here attack mode is on after that flood, so `off`) the first
        // SYN of a source makes its bucket.
        p.set("syn-cookies", "off");
        let before = p.counters();
        let (action, _) = p.run_out(&Tcp::syn("198.51.100.40", SERVER).build());
        let after = p.counters();
        assert_eq!(action, XDP_PASS);
        assert_eq!(after[N_SOURCES_NEW] - before[N_SOURCES_NEW], 1, "a bucket");
        assert_eq!(after[R_SYN_PASSED] - before[R_SYN_PASSED], 1);
    });
}

#[test]
fn limits_allowlist_and_monitor_mode_keep_working_in_attack_mode() {
    in_server_ns("2", || {
        let mut p = Prog::new(settings(&[
            ("syn-cookies", "always"),
            ("syn-rate", "1"),
            ("syn-burst", "2"),
        ]));
        // A single heavy source is still banned.
        let syn = Tcp::syn("203.0.113.66", SERVER).build();
        p.expect(&syn, XDP_TX, &[N_SYNS, N_SOURCES_NEW, R_COOKIE_SENT]);
        p.expect(&syn, XDP_TX, &[N_SYNS, R_COOKIE_SENT]);
        p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
        p.expect(&syn, XDP_DROP, &[R_BANNED]);
        // Allowlisted sources are never challenged.
        p.put_rule(
            "198.51.100.0/24",
            &synguard::rules::manual(RULE_ALLOW, 0, "office"),
        );
        let office = Tcp::syn("198.51.100.7", SERVER).build();
        let (action, out) = p.run_out(&office);
        assert_eq!((action, out), (XDP_PASS, office));
        // Monitor mode decides and counts, but neither answers nor drops.
        p.set("mode", "monitor");
        let fresh = Tcp::syn("192.0.2.77", SERVER).build();
        let (action, out) = p.run_out(&fresh);
        assert_eq!((action, &out), (XDP_PASS, &fresh));
        assert_eq!(p.counter(N_MONITOR_PASSED), 1);
    });
}

fn drain(p: &mut Prog) -> Vec<Event> {
    let rb = p.loaded.maps.events.as_mut().expect("ring buffer");
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        // SAFETY: the kernel writes whole `Event` records.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    out
}

#[test]
fn attack_mode_starts_at_the_threshold_and_ends_after_a_calm_period() {
    in_server_ns_alone("2", || {
        let mut p = Prog::new(settings(&[
            ("syn-cookies", "auto"),
            ("attack-syn-rate", "1000"),
            ("syn-rate", "10000000"),
            ("syn-burst", "1000000"),
        ]));
        // Shorten the calm period for the test (not a user setting); still long enough
        // that an emulated kernel's sleeps, which can overshoot by a hundred milliseconds,
        // do not end it before the test looks.
        let mut cfg = p.loaded.maps.read_config().unwrap();
        cfg.attack_calm_ns = 800_000_000;
        p.loaded.maps.write_config(&cfg).unwrap();
        let slot = 1; // loopback: TestRun's receiving device
        let state = |p: &Prog| p.loaded.maps.ifstate(slot).unwrap();
        let syn = |n: u16| Tcp::syn("198.18.0.1", SERVER).sport(20000 + n).build();

        // Below the threshold: normal SYNs.
        assert_eq!(p.run(&syn(0)), XDP_PASS);
        thread::sleep(Duration::from_millis(120));
        for i in 0..5 {
            assert_eq!(p.run(&syn(i)), XDP_PASS);
        }
        assert_eq!(state(&p).attack, 0);
        // 2000 SYNs in a burst far shorter than 10 ms, starting a fresh window (the
        // kernel's coarse clock ticks every few ms): judged when the window closes.
        thread::sleep(Duration::from_millis(120));
        p.run_repeat(&syn(9), 2000);
        assert_eq!(
            state(&p).attack,
            0,
            "a burst is judged over a real interval"
        );
        thread::sleep(Duration::from_millis(110));
        assert_eq!(
            p.run(&syn(20)),
            XDP_TX,
            "window closed at about 18000/s: cookies"
        );
        let st = state(&p);
        assert_eq!(st.attack, 1, "{st:?}");
        assert!(st.peak_rate >= 1000, "{st:?}");
        assert_eq!(p.counter(N_ATTACKS), 1);
        let ev = drain(&mut p);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, EVENT_ATTACK_ON);
        assert!(ev[0].rate >= 1000);

        // Calm, but not for long enough yet: still in attack mode.
        thread::sleep(Duration::from_millis(110));
        assert_eq!(p.run(&syn(10)), XDP_TX);
        thread::sleep(Duration::from_millis(110));
        assert_eq!(p.run(&syn(11)), XDP_TX);
        assert_ne!(state(&p).calm_since_ns, 0);
        // Calm for longer than the calm period: attack mode ends at the next window.
        thread::sleep(Duration::from_millis(850));
        assert_eq!(p.run(&syn(12)), XDP_PASS, "attack mode over");
        assert_eq!(state(&p).attack, 0);
        let ev = drain(&mut p);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, EVENT_ATTACK_OFF);
        assert!(ev[0].rate >= 1000, "peak rate");
        assert!(ev[0].syns >= 500, "lasted (ms): {}", ev[0].syns);
    });
}

#[test]
fn the_attack_detector_adds_up_every_cpus_rate() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs two CPUs, this machine has {cpus}");
        return;
    }
    in_server_ns_alone("2", || {
        let p = Prog::new(settings(&[
            ("syn-cookies", "auto"),
            ("attack-syn-rate", "1000"),
            ("syn-rate", "10000000"),
            ("syn-burst", "1000000"),
        ]));
        let state = |p: &Prog| p.loaded.maps.ifstate(1).unwrap();
        let syn = |n: u16| Tcp::syn("198.18.0.1", SERVER).sport(20000 + n).build();
        // Deadlines rather than sleeps, so a slow machine (an emulated kernel in the
        // kernel matrix) stretches the windows no more than one system call does; the
        // last 5 ms spin, as an emulated kernel's sleeps can overshoot by tens.
        let until = |t: Instant| {
            thread::sleep(t.saturating_duration_since(Instant::now() + Duration::from_millis(5)));
            while Instant::now() < t {
                std::hint::spin_loop();
            }
        };
        // A window on one CPU: its first SYN closes the CPU's previous window and opens
        // this one, which counts 85 more over 125 ms and at most 10 more while the
        // program's clock, which trails the wall clock by up to two ticks, has yet to see
        // the window end: under the 100 that close a window early, so its rate can never
        // reach the threshold of 1000 alone (a window closes at 100 ms at the earliest: at
        // most 950 SYN/s), however the machine's timing goes; two CPUs' windows run one
        // after the other add up to about 1400 SYN/s. A window must end where the test
        // says: one left open would add its SYNs to the next pair's.
        let window = |p: &Prog| {
            let start = Instant::now();
            assert_eq!(p.run(&syn(1)), XDP_PASS, "{:?}", state(p));
            p.run_repeat(&syn(2), 84);
            until(start + Duration::from_millis(125));
            let open = state(p).rate_ns;
            for _ in 0..10 {
                let verdict = p.run(&syn(3));
                if state(p).rate_ns != open {
                    return verdict;
                }
                thread::sleep(Duration::from_millis(5));
            }
            panic!("the window never closed: {:?}", state(p));
        };
        pin_to_cpu(1);
        let t0 = Instant::now();
        assert_eq!(p.run(&syn(0)), XDP_PASS);
        pin_to_cpu(0);
        assert_eq!(p.run(&syn(0)), XDP_PASS);
        until(t0 + Duration::from_millis(150));
        // On CPU 0 a window runs to its end (its first SYN closes the one opened above);
        // then CPU 1 closes its old window and runs one the same way. Attack mode can only
        // start if the detector adds CPU 0's rate to CPU 1's. An emulated kernel under
        // load can stretch a window past 170 ms, so that even the sum stays under the
        // threshold: then both rates are let go stale (twice ATTACK_STALE_NS) and the
        // pair is run again, up to five times.
        let mut tries = Vec::new();
        for _ in 0..5 {
            pin_to_cpu(0);
            assert_eq!(window(&p), XDP_PASS, "one CPU's rate alone");
            let alone = state(&p);
            assert_eq!(alone.attack, 0, "one CPU's rate alone: {alone:?}");
            assert!((1..1000).contains(&alone.rate), "{alone:?}");
            pin_to_cpu(1);
            let verdict = window(&p);
            let both = state(&p);
            if verdict == XDP_TX {
                assert_eq!(both.attack, 1, "{both:?}");
                assert!(both.rate >= 1000, "{both:?}");
                assert!(both.rate > alone.rate, "{alone:?} {both:?}");
                return;
            }
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(both.attack, 0, "{both:?}");
            tries.push((alone.rate, both.rate));
            thread::sleep(Duration::from_nanos(2 * ATTACK_STALE_NS));
        }
        panic!("both CPUs' rates together never started attack mode: (alone, together) {tries:?}");
    });
}

/// A flood carrying a proven address is most likely forged: over its limit that source is
/// challenged (attack mode at once, its SYNs answered with cookies), never banned; an
/// unproven source over its limit is banned as before, attack mode or not.
#[test]
fn a_proven_source_over_its_limit_is_challenged_never_banned() {
    in_server_ns("0", || {
        let mut p = Prog::new(settings(&[
            ("syn-rate", "1"),
            ("syn-burst", "2"),
            // Far above what the test sends: only the challenge starts attack mode.
            ("attack-syn-rate", "1000000"),
        ]));
        let victim = "198.51.100.10";
        p.prove(victim, 32, PROOF_HANDSHAKE, 3_600_000_000_000);
        let syn = |src: &str, port: u16| Tcp::syn(src, SERVER).sport(port).build();
        p.expect(
            &syn(victim, 1),
            XDP_PASS,
            &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
        );
        p.expect(&syn(victim, 2), XDP_PASS, &[N_SYNS, R_SYN_PASSED]);
        assert_eq!(p.loaded.maps.ifstate(1).unwrap().attack, 0);
        // Over its limit: challenged. Attack mode starts (cookies), but the kernel's
        // helper makes no cookie while tcp_syncookies is 0 (`run` sets it to 2 when attack
        // mode starts): passed to the kernel meanwhile, and never dropped.
        p.expect(
            &syn(victim, 3),
            XDP_PASS,
            &[N_SYNS, N_CHALLENGED, N_ATTACKS, R_COOKIE_FALLBACK],
        );
        let st = p.loaded.maps.ifstate(1).unwrap();
        assert_eq!(st.attack, 1, "{st:?}");
        assert_ne!(st.challenged_ns, 0, "{st:?}");
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2").expect("tcp_syncookies");
        let (action, out) = p.run_out(&syn(victim, 4));
        assert_eq!(action, XDP_TX, "answered with a cookie");
        check_synack(&syn(victim, 4), &out);
        assert!(p.rules().is_empty(), "no ban: {:?}", p.rules());
        let c = p.counters();
        assert_eq!((c[N_CHALLENGED], c[N_BANS], c[N_ATTACKS]), (2, 0, 1));
        // One event for the challenge (the first), one for attack mode.
        let kinds: Vec<u32> = drain(&mut p).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EVENT_ATTACK_ON, EVENT_CHALLENGE]);

        // An unproven source over its limit is banned, in attack mode too: its SYNs
        // within the limit get cookies (attack mode), the next is dropped and banned.
        let flooder = "203.0.113.66";
        p.expect(
            &syn(flooder, 1),
            XDP_TX,
            &[N_SYNS, N_SOURCES_NEW, R_COOKIE_SENT],
        );
        p.expect(&syn(flooder, 2), XDP_TX, &[N_SYNS, R_COOKIE_SENT]);
        p.expect(&syn(flooder, 3), XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
        p.expect(&syn(flooder, 4), XDP_DROP, &[R_BANNED]);
        assert_eq!(p.rules().len(), 1);

        // With cookies off, a proven source over its limit has its excess dropped, but it
        // is still not banned.
        p.set("syn-cookies", "off");
        p.expect(
            &syn(victim, 5),
            XDP_DROP,
            &[N_SYNS, N_CHALLENGED, R_SYN_LIMITED],
        );
        assert_eq!(p.rules().len(), 1, "only the flooder is banned");
    });
}

#[test]
fn attack_mode_lasts_a_calm_period_after_the_last_challenge() {
    in_server_ns_alone("2", || {
        let mut p = Prog::new(settings(&[
            ("syn-rate", "1"),
            ("syn-burst", "1"),
            ("attack-syn-rate", "1000000"),
        ]));
        let mut cfg = p.loaded.maps.read_config().unwrap();
        // A calm period four times the gap between challenges: an emulated kernel's
        // sleeps can overshoot by a hundred milliseconds.
        cfg.attack_calm_ns = 600_000_000;
        p.loaded.maps.write_config(&cfg).unwrap();
        p.prove("198.51.100.10", 32, PROOF_SOCKET, 3_600_000_000_000);
        let syn = |port: u16| Tcp::syn("198.51.100.10", SERVER).sport(port).build();
        p.run(&syn(1));
        assert_eq!(p.run(&syn(2)), XDP_TX, "challenged");
        // Challenged again before the calm period ends: attack mode holds, though the
        // total rate is far below attack-syn-rate.
        for port in 3..8 {
            thread::sleep(Duration::from_millis(150));
            assert_eq!(p.run(&syn(port)), XDP_TX, "challenge {port}");
            assert_eq!(p.loaded.maps.ifstate(1).unwrap().attack, 1);
        }
        assert_eq!(p.counter(N_ATTACKS), 1, "it never ended and started again");
        // A calm period without challenges (and windows closing): attack mode ends.
        thread::sleep(Duration::from_millis(900));
        let other = Tcp::syn("203.0.113.9", SERVER).build();
        p.run(&other);
        thread::sleep(Duration::from_millis(120));
        p.run(&other);
        assert_eq!(p.loaded.maps.ifstate(1).unwrap().attack, 0, "calm again");
    });
}

/// Run `ip ARGS` in the calling thread's network namespace (a child process starts in
/// the namespace of the thread that forks it).
fn ip_here(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

/// In attack mode an ACK or RST flood from forged sources dies in XDP: a segment for one
/// of the machine's addresses that belongs to no connection and carries no valid cookie
/// (the kernel would answer the ACKs with resets). Whatever a socket may want goes on: a
/// real connection's segments, segments for another address or for a port a NAT rule
/// rewrites; monitor mode only counts; outside attack mode nothing is looked at.
#[test]
fn ack_and_rst_floods_are_dropped_in_attack_mode() {
    in_server_ns("2", || {
        let mut p = always();
        for (client, server) in [("198.18.0.7", SERVER), ("2001:db8:8000::7", SERVER6)] {
            let ack = Tcp::syn(client, server)
                .flags(ACK)
                .seq(7)
                .ack_number(0x1234_5678)
                .build();
            p.expect(&ack, XDP_DROP, &[R_ACK_NO_FLOW, N_COOKIE_ACK_INVALID]);
            // To a port nothing listens on.
            let ack = Tcp::syn(client, server).flags(ACK).dport(81).build();
            p.expect(&ack, XDP_DROP, &[R_ACK_NO_FLOW]);
            for f in [RST, RST | ACK] {
                let rst = Tcp::syn(client, server).flags(f).build();
                p.expect(&rst, XDP_DROP, &[R_RST_NO_FLOW]);
            }
        }
        // A real connection (from this namespace to its own listener): its RST and ACK go
        // on, and the ACK proves its source, the RST does not.
        let conn = std::net::TcpStream::connect((SERVER, 80)).expect("connect");
        let port = conn.local_addr().expect("local address").port();
        let rst = Tcp::syn(SERVER, SERVER).sport(port).flags(RST).build();
        p.expect(&rst, XDP_PASS, &[R_TCP_OTHER]);
        let ack = Tcp::syn(SERVER, SERVER).sport(port).flags(ACK).build();
        p.expect(&ack, XDP_PASS, &[R_TCP_OTHER, N_VERIFIED]);
        drop(conn);
        // Another address (a guest's), or a port a NAT rule sends to a container: the
        // connection may live elsewhere.
        let guest = Tcp::syn("198.18.0.8", "192.0.2.99").flags(ACK).build();
        p.expect(&guest, XDP_PASS, &[R_TCP_OTHER]);
        p.set_nat(&NatPorts::range(80, 80));
        let ack = Tcp::syn("198.18.0.8", SERVER).flags(ACK).build();
        p.expect(&ack, XDP_PASS, &[R_TCP_OTHER, N_COOKIE_ACK_INVALID]);
        p.set_nat(&NatPorts::none());
        // Monitor mode counts the drop and passes.
        p.set("mode", "monitor");
        p.expect(
            &ack,
            XDP_PASS,
            &[R_ACK_NO_FLOW, N_COOKIE_ACK_INVALID, N_MONITOR_PASSED],
        );
        // Outside attack mode, no lookup: every ACK goes on.
        let calm = Prog::new(settings(&[("syn-cookies", "off")]));
        calm.expect(&ack, XDP_PASS, &[R_TCP_OTHER]);
        calm.expect(
            &Tcp::syn("198.18.0.8", SERVER).flags(RST).build(),
            XDP_PASS,
            &[R_TCP_OTHER],
        );
    });
}

/// On a host that rewrites source addresses (Docker's, libvirt's or a Kubernetes node's
/// masquerade), the replies to its guests' connections arrive at the host's own address
/// on the port the NAT chose (512 and up), with no socket of the host behind them:
/// connection tracking owns them, which XDP cannot ask. Attack mode lets them through;
/// when the NAT kept a guest's port that a listener of the host also has, the reply
/// reaches that listener without a cookie, and goes through too. What an ACK or RST flood
/// aims below 512 (the web server's port, a closed low port) is still dropped, and so is
/// everything of a family the host does not source-NAT; a host without source NAT drops
/// every segment that belongs to nothing, as before.
#[test]
fn replies_to_a_nat_hosts_guests_pass_in_attack_mode() {
    in_server_ns("2", || {
        // A service of the host bound in the range the NAT hands out.
        let _l4 = TcpListener::bind("192.0.2.1:40000").expect("listen v4");
        let _l6 = TcpListener::bind("[2001:db8:2::1]:40000").expect("listen v6");
        let mut p = always();
        p.set_snat(SNAT_V4 | SNAT_V6);
        for (upstream, server) in [("198.51.100.200", SERVER), ("2001:db8:5::200", SERVER6)] {
            // An upstream API answering a guest's call: ACKs, data, FIN, RST.
            for f in [ACK, ACK | FIN, RST, RST | ACK] {
                let reply = Tcp::syn(upstream, server)
                    .sport(443)
                    .dport(51234)
                    .flags(f)
                    .build();
                p.expect(&reply, XDP_PASS, &[R_ACK_NO_SOCKET]);
            }
            // The NAT kept the guest's port 40000, which a host listener has too.
            let collide = Tcp::syn(upstream, server)
                .sport(443)
                .dport(40000)
                .flags(ACK)
                .build();
            p.expect(&collide, XDP_PASS, &[R_ACK_SNAT_PORT, N_COOKIE_ACK_INVALID]);
            let rst = Tcp::syn(upstream, server)
                .sport(443)
                .dport(40000)
                .flags(RST)
                .build();
            p.expect(&rst, XDP_PASS, &[R_ACK_SNAT_PORT]);
            // A flood at the web server's port: still dropped.
            let flood = Tcp::syn(upstream, server).flags(ACK).build();
            p.expect(&flood, XDP_DROP, &[R_ACK_NO_FLOW, N_COOKIE_ACK_INVALID]);
            let flood = Tcp::syn(upstream, server).flags(RST).build();
            p.expect(&flood, XDP_DROP, &[R_RST_NO_FLOW]);
            // Nor does a flood at a closed low port get through: no NAT hands those out.
            let low = Tcp::syn(upstream, server).dport(81).flags(ACK).build();
            p.expect(&low, XDP_DROP, &[R_ACK_NO_FLOW]);
        }
        // Source NAT of IPv4 only: IPv6's replies belong to nothing.
        p.set_snat(SNAT_V4);
        let reply4 = Tcp::syn("198.51.100.200", SERVER)
            .sport(443)
            .dport(51234)
            .flags(ACK)
            .build();
        p.expect(&reply4, XDP_PASS, &[R_ACK_NO_SOCKET]);
        let reply6 = Tcp::syn("2001:db8:5::200", SERVER6)
            .sport(443)
            .dport(51234)
            .flags(ACK)
            .build();
        p.expect(&reply6, XDP_DROP, &[R_ACK_NO_FLOW]);
        // Without source NAT nothing of the host can own them: dropped.
        p.set_snat(0);
        for (upstream, server) in [("198.51.100.200", SERVER), ("2001:db8:5::200", SERVER6)] {
            let reply = Tcp::syn(upstream, server)
                .sport(443)
                .dport(51234)
                .flags(ACK)
                .build();
            p.expect(&reply, XDP_DROP, &[R_ACK_NO_FLOW]);
            let collide = Tcp::syn(upstream, server)
                .sport(443)
                .dport(40000)
                .flags(ACK)
                .build();
            p.expect(&collide, XDP_DROP, &[R_ACK_NO_FLOW, N_COOKIE_ACK_INVALID]);
        }
    });
}

/// A client without TCP timestamps (Windows by default) answered with a cookie loses the
/// window scaling and SACK it asked for (nothing can carry them): the answer is counted,
/// so `status` and the metrics can say how many. A flood's bare SYN asked for nothing and
/// loses nothing; a client with timestamps keeps both.
#[test]
fn cookie_answers_that_lose_a_clients_options_are_counted() {
    use synguard_common::synack::cookie_opts;
    in_server_ns("2", || {
        let mut p = always();
        p.set_cookie_opts(cookie_opts(true, true, true, true, 9));
        let windows = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        for (client, server) in [("198.51.100.31", SERVER), ("2001:db8:5::31", SERVER6)] {
            let syn = Tcp::syn(client, server)
                .sport(42001)
                .tcp_options(&windows)
                .build();
            p.expect(
                &syn,
                XDP_TX,
                &[N_SYNS, R_COOKIE_SENT, N_COOKIE_OPTIONS_LOST],
            );
            let (_, out) = p.run_out(&syn);
            let a = check_synack(&syn, &out);
            assert_eq!(
                (a.ts, a.wscale, a.sack_perm, a.mss),
                (None, None, false, 1460)
            );
            let bare = Tcp::syn(client, server).sport(42002).build();
            p.expect(&bare, XDP_TX, &[N_SYNS, R_COOKIE_SENT]);
            let full = Tcp::syn(client, server)
                .sport(42003)
                .tcp_options(&linux)
                .build();
            p.expect(&full, XDP_TX, &[N_SYNS, R_COOKIE_SENT]);
        }
    });
}

/// The program looks the listener up with the SYN's tuple before NAT: for a port a NAT
/// rule rewrites (a container's published port, with docker-proxy listening on the same
/// port of the host) it would find the host's listener, not the socket the SYN reaches,
/// and the client's ACK would be reset in the container. So attack mode leaves SYNs for
/// those ports to the kernel untouched, and answers them again once the rule is gone.
#[test]
fn syns_for_ports_a_nat_rule_rewrites_are_left_to_the_kernel() {
    in_server_ns("2", || {
        let mut p = always();
        let syns = [
            Tcp::syn("198.51.100.10", SERVER).build(),
            Tcp::syn("2001:db8:5::10", SERVER6).build(),
        ];
        p.set_nat(&NatPorts::range(80, 80));
        for syn in &syns {
            p.expect(syn, XDP_PASS, &[N_SYNS, R_SYN_NAT]);
            assert_eq!(p.run_out(syn), (XDP_PASS, syn.clone()), "untouched");
        }
        // Every other port rewritten: port 80's SYNs are answered.
        p.set_nat(&NatPorts::range(0, 79).union(&NatPorts::range(81, u16::MAX)));
        for syn in &syns {
            let (action, out) = p.run_out(syn);
            assert_eq!(action, XDP_TX);
            check_synack(syn, &out);
        }
        assert_eq!(p.counter(R_COOKIE_SENT), 2);
        // Rules that could not be read count as every port.
        p.set_nat(&NatPorts::all());
        for syn in &syns {
            p.expect(syn, XDP_PASS, &[N_SYNS, R_SYN_NAT]);
        }
    });
}

/// A listener bound to a wildcard address matches a SYN for any address: attack mode
/// must not answer SYNs for addresses that are not the machine's (a VM's or a
/// container's behind a bridge), or their clients would get cookies of the host's
/// listener and never reach the guest.
#[test]
fn syns_for_addresses_not_the_machines_are_left_to_the_kernel() {
    require_root!();
    let ns = Netns::new("cklocal");
    ns.sysctl("net.ipv4.tcp_syncookies", "2");
    ns.ip(&["link", "set", "lo", "up"]);
    let result = ns
        .spawn(move || {
            pin_to_cpu(0);
            // Both families, as a web server's `listen [::]:80` is.
            let _l = TcpListener::bind("[::]:80").expect("listen");
            let mut p = always();
            let guest = [
                Tcp::syn("198.51.100.10", "192.0.2.99").build(),
                Tcp::syn("2001:db8:5::10", "2001:db8:2::99").build(),
            ];
            for syn in &guest {
                p.expect(syn, XDP_PASS, &[N_SYNS, R_SYN_NOT_LOCAL]);
                assert_eq!(p.run_out(syn), (XDP_PASS, syn.clone()), "untouched");
            }
            // Once the addresses are the machine's (and `run` has looked), they are
            // answered.
            ip_here(&["addr", "add", "192.0.2.99/32", "dev", "lo"]);
            ip_here(&["addr", "add", "2001:db8:2::99/128", "dev", "lo", "nodad"]);
            p.sync_locals();
            for syn in &guest {
                let (action, out) = p.run_out(syn);
                assert_eq!(action, XDP_TX);
                check_synack(syn, &out);
            }
            assert_eq!(p.counter(R_COOKIE_SENT), 2);
            // And no longer once they are gone.
            ip_here(&["addr", "del", "192.0.2.99/32", "dev", "lo"]);
            ip_here(&["addr", "del", "2001:db8:2::99/128", "dev", "lo"]);
            p.sync_locals();
            for syn in &guest {
                p.expect(syn, XDP_PASS, &[N_SYNS, R_SYN_NOT_LOCAL]);
            }
        })
        .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The clock the kernel's TCP timestamps count (`CLOCK_MONOTONIC`), in ms.
fn tcp_clock_ms() -> u32 {
    (synguard::clock::monotonic_ns() / 1_000_000) as u32
}

/// A cookie SYN-ACK keeps what the client asked for, as the kernel's own cookies do:
/// window scaling, SACK and ECN travel in the low bits of its timestamp (the kernel reads
/// them back from the client's echo), the server's own window scale is advertised, and
/// the MSS is the smaller of the client's and the interface's. Nothing is offered that
/// the client did not ask for, that the kernel's settings refuse, or that cannot be
/// carried (no timestamps: the MSS only).
#[test]
fn cookie_syn_acks_keep_window_scaling_sack_and_ecn_in_the_timestamp() {
    use synguard_common::synack::{self, cookie_opts, decode_tsecr};
    use synguard_tests::kit::packet::{CWR, ECE, SYN};
    in_server_ns("2", || {
        let mut p = always();
        let all = cookie_opts(true, true, true, true, 9);
        p.set_cookie_opts(all);
        let mut port = 41000;
        let mut answer = |syn: Tcp| {
            port += 1;
            let syn = syn.sport(port).seq(77).build();
            let (action, out) = p.run_out(&syn);
            assert_eq!(action, XDP_TX);
            check_synack(&syn, &out)
        };
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        for (client, server) in [("198.51.100.30", SERVER), ("2001:db8:5::30", SERVER6)] {
            let before = tcp_clock_ms();
            let a = answer(Tcp::syn(client, server).tcp_options(&linux));
            let after = tcp_clock_ms();
            let (tsval, tsecr) = a.ts.expect("timestamps");
            assert_eq!(tsecr, 12345, "the client's TSval echoed");
            assert_eq!(decode_tsecr(tsval), (Some(7), true, false), "{client}");
            // Never ahead of the clock the server's later timestamps come from (the
            // client would drop the server's segments), and close behind it.
            assert!(tsval <= after, "{tsval} <= {after}");
            assert!(before.saturating_sub(tsval) < 64 + 20, "{tsval} ~ {before}");
            assert!(a.sack_perm);
            assert_eq!(a.wscale, Some(9), "the server's own window scale");
            assert_eq!(a.mss, 1460);
            assert!(!a.ece);
        }

        // macOS's layout: MSS, NOP, WS 6, NOP, NOP, timestamps, SACK permitted, EOL.
        let macos = [
            2, 4, 0x05, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 4, 2, 0, 0,
        ];
        let a = answer(Tcp::syn("198.51.100.31", SERVER).tcp_options(&macos));
        assert_eq!(
            a.ts.map(|t| (decode_tsecr(t.0), t.1)),
            Some(((Some(6), true, false), 9))
        );
        // Windows's: MSS, NOP, WS 8, NOP, NOP, SACK permitted; no timestamps, so nothing
        // else can be carried: the MSS only (what the kernel's own cookies do).
        let windows = [2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
        let a = answer(Tcp::syn("198.51.100.32", SERVER).tcp_options(&windows));
        assert_eq!(
            (a.ts, a.sack_perm, a.wscale, a.mss),
            (None, false, None, 1460)
        );
        // Linux without window scale: timestamps and SACK.
        let a = answer(Tcp::syn("198.51.100.33", SERVER).tcp_options(&linux[..16]));
        let (tsval, tsecr) = a.ts.expect("timestamps");
        assert_eq!((decode_tsecr(tsval), tsecr), ((None, true, false), 12345));
        assert_eq!((a.sack_perm, a.wscale), (true, None));
        // A layout none of the stacks that send timestamps use: the MSS only.
        let odd = [1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 0, 2, 4, 5, 180];
        let a = answer(Tcp::syn("198.51.100.40", SERVER).tcp_options(&odd));
        assert_eq!((a.ts, a.sack_perm, a.wscale), (None, false, None));
        // A shift over 14 is taken as 14, as the kernel does.
        let mut big = linux;
        big[19] = 15;
        let a = answer(Tcp::syn("198.51.100.34", SERVER).tcp_options(&big));
        assert_eq!(decode_tsecr(a.ts.unwrap().0).0, Some(14));
        // A malformed option (length 0) after the MSS: the MSS only.
        let bad = [2, 4, 0x05, 0x78, 3, 0, 8, 10, 0, 0, 0, 5, 0, 0, 0, 0];
        let a = answer(Tcp::syn("198.51.100.35", SERVER).tcp_options(&bad));
        assert_eq!((a.mss, a.ts), (1400, None));
        // An option running past the header's end: the MSS only.
        let past = [2, 4, 0x05, 0x78, 1, 1, 8, 12];
        let a = answer(Tcp::syn("198.51.100.36", SERVER).tcp_options(&past));
        assert_eq!((a.mss, a.ts), (1400, None));

        // ECN: a SYN asking for it (ECE and CWR) gets ECE and the ECN bit, unless its IP
        // header is ECN-capable (a middlebox's doing, to the kernel: no ECN then).
        for (client, server) in [("198.51.100.37", SERVER), ("2001:db8:5::37", SERVER6)] {
            let a = answer(
                Tcp::syn(client, server)
                    .flags(SYN | ECE | CWR)
                    .tcp_options(&linux),
            );
            assert!(a.ece, "{client}");
            assert_eq!(decode_tsecr(a.ts.unwrap().0), (Some(7), true, true));
            let a = answer(
                Tcp::syn(client, server)
                    .flags(SYN | ECE | CWR)
                    .ip_ecn(2)
                    .tcp_options(&linux),
            );
            assert!(!a.ece, "{client}: ECT(0) on the SYN");
            assert!(!decode_tsecr(a.ts.unwrap().0).2);
        }

        // What the kernel's settings refuse is not offered.
        for (off, what) in [
            (synack::SACK, "SACK"),
            (synack::WSCALE, "window scaling"),
            (synack::ECN, "ECN"),
            (synack::TIMESTAMPS, "timestamps not 2"),
        ] {
            p.set_cookie_opts(all & !off);
            let syn = Tcp::syn("198.51.100.38", SERVER)
                .flags(SYN | ECE | CWR)
                .tcp_options(&linux)
                .sport(port + 1)
                .build();
            port += 1;
            let (action, out) = p.run_out(&syn);
            assert_eq!(action, XDP_TX);
            let a = check_synack(&syn, &out);
            let got = a.ts.map(|t| decode_tsecr(t.0));
            match off {
                synack::SACK => {
                    assert!(!a.sack_perm, "{what}");
                    assert_eq!(got, Some((Some(7), false, true)));
                }
                synack::WSCALE => {
                    assert_eq!(a.wscale, None, "{what}");
                    assert_eq!(got, Some((None, true, true)));
                }
                synack::ECN => {
                    assert!(!a.ece, "{what}");
                    assert_eq!(got, Some((Some(7), true, false)));
                }
                _ => assert_eq!(got, None, "{what}: the MSS only"),
            }
        }

        // The MSS: at most the receiving interface's (its MTU less the headers).
        p.set_cookie_opts(all);
        let ns_ip = |args: &[&str]| ip_here(args);
        ns_ip(&[
            "link", "add", "sgmtu0", "mtu", "1400", "type", "veth", "peer", "name", "sgmtu1",
        ]);
        ns_ip(&["link", "set", "sgmtu0", "up"]);
        let ifindex = nix_ifindex("sgmtu0");
        for (client, server, want) in [
            ("198.51.100.39", SERVER, 1360),
            ("2001:db8:5::39", SERVER6, 1340),
        ] {
            let syn = Tcp::syn(client, server).tcp_options(&linux).build();
            let (action, out) = p.run_out_on(&syn, Some(ifindex));
            assert_eq!(action, XDP_TX);
            assert_eq!(check_synack(&syn, &out).mss, want, "{client}");
        }
    });
}

/// The index of a device in the calling thread's namespace.
fn nix_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "{name} exists");
    i
}
