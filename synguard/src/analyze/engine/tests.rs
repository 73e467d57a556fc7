use super::{super::decode::v4, episodes::covering, *};

const T0: u64 = 1_700_000_000 * SEC;
const SERVER: [u8; 4] = [192, 0, 2, 1];

fn seg(
    src: u128,
    dst: u128,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Seg<'static> {
    Seg {
        v6: !is_v4(src),
        src,
        dst,
        sport,
        dport,
        flags,
        seq,
        ack,
        payload: &[],
    }
}

fn feed(e: &mut Engine, t: u64, s: &Seg<'_>) {
    let now = e.tick(t);
    e.segment(now, s);
}

/// A client's whole handshake to the server at `t`: SYN, SYN-ACK, ACK.
fn handshake(e: &mut Engine, t: u64, client: u128, port: u16) {
    let server = v4(SERVER);
    feed(e, t, &seg(client, server, port, 80, SYN, 1000, 0));
    feed(
        e,
        t + 100_000,
        &seg(server, client, 80, port, SYN | ACK, 5000, 1001),
    );
    feed(
        e,
        t + 200_000,
        &seg(client, server, port, 80, ACK, 1001, 5001),
    );
}

#[test]
fn a_flooder_is_banned_once_its_burst_is_spent() {
    let mut e = Engine::new(&Settings::default());
    let attacker = v4([203, 0, 113, 7]);
    // 1000 SYNs at 100,000 SYN/s.
    for i in 0..1000u64 {
        let s = seg(attacker, v4(SERVER), 1024 + i as u16, 80, SYN, i as u32, 0);
        feed(&mut e, T0 + i * 10_000, &s);
    }
    e.finish();
    let passed = e.agent[stat::R_SYN_PASSED];
    // syn-burst 100: the first SYN and the burst pass (the bucket refills one SYN per
    // 5 ms meanwhile), the next one is over the limit and starts the ban.
    assert!((100..=103).contains(&passed), "{passed}");
    assert_eq!(e.agent[stat::R_SYN_LIMITED], 1);
    assert_eq!(e.agent[stat::N_BANS], 1);
    assert_eq!(e.agent[stat::R_BANNED], 1000 - passed - 1);
    // Banned SYNs are dropped before attack mode counts them.
    assert_eq!(e.agent[stat::N_ATTACKS], 0);
    // All within one 100 ms window: the peaks are rates over it.
    assert_eq!(e.peak, (10_000, T0));
    assert_eq!(e.drop_peak, ((1000 - passed) * 10, T0));
    assert_eq!(e.floods.len(), 1);
    let f = &e.floods[0];
    assert_eq!(f.top, Some((attacker, 1000)));
    assert_eq!(f.target, Some((v4(SERVER), 80, 1000)));
    assert!(f.ongoing);
    let t = &e.talkers[&attacker];
    assert_eq!(t.dropped as u64, 1000 - passed);
    assert!(!t.legitimate());
}

#[test]
fn forged_sources_start_attack_mode_and_it_ends_after_the_calm() {
    let mut e = Engine::new(&Settings::default());
    let client = v4([198, 51, 100, 10]);
    // 2 s of 5000 SYN/s, each from another address in 198.18.0.0/15...
    for i in 0..10_000u64 {
        let src = v4([198, 18, (i >> 8) as u8, i as u8]);
        feed(
            &mut e,
            T0 + i * 200_000,
            &seg(src, v4(SERVER), 40_000, 80, SYN, 7, 0),
        );
    }
    // ...then 15 s of one client at 20 handshakes per second.
    for i in 0..300u64 {
        handshake(
            &mut e,
            T0 + 2 * SEC + i * 50_000_000,
            client,
            1024 + i as u16,
        );
    }
    e.finish();
    assert_eq!(e.agent[stat::N_ATTACKS], 1);
    assert!(!e.attack_on_at_end());
    assert_eq!(e.floods.len(), 1, "one episode");
    let f = &e.floods[0];
    // The forged ones and the client, whose SYNs came while attack mode was on.
    assert_eq!((f.sources, f.sources_exact), (10_001, true));
    assert_eq!(f.bans, 0);
    let on = f.attack_on.expect("attack mode");
    // The first window closes early (10 ms at over attack-syn-rate).
    assert!(on - T0 <= ATTACK_WINDOW_NS, "{}", on - T0);
    assert!(f.cookies > 9_000, "{}", f.cookies);
    assert!(
        f.attack_off
            .is_some_and(|off| off >= T0 + 2 * SEC + ATTACK_CALM_NS)
    );
    // Its end is the last moment it was seen, not the end of the hysteresis.
    assert!(f.end <= T0 + 2 * SEC + SLOT_NS, "{}", f.end - T0);
    assert_eq!(f.spread.len(), 1);
    assert_eq!(f.spread[0].covering, "198.18.0.0/18");
    assert!(
        e.timeline
            .iter()
            .any(|(_, w)| w.starts_with("attack mode would end")),
        "{:?}",
        e.timeline
    );
    // The client, answered with a cookie during the calm's attack mode, completed.
    let t = &e.talkers[&client];
    assert_eq!(t.completed, 300);
    assert!(t.legitimate() && !t.hurt());
}

#[test]
fn retransmitted_syns_and_handshakes_that_never_complete() {
    let mut e = Engine::new(&Settings::default());
    let (client, server) = (v4([198, 51, 100, 11]), v4(SERVER));
    // A SYN sent again 1 s and 3 s later (same sequence), then answered and completed.
    for t in [0, SEC, 3 * SEC] {
        feed(&mut e, T0 + t, &seg(client, server, 5555, 80, SYN, 42, 0));
    }
    feed(
        &mut e,
        T0 + 3 * SEC + 1_000,
        &seg(server, client, 80, 5555, SYN | ACK, 9, 43),
    );
    feed(
        &mut e,
        T0 + 3 * SEC + 2_000,
        &seg(client, server, 5555, 80, ACK, 43, 10),
    );
    // Another connection answered by the server, never acknowledged; then a reset and a
    // 504 from the server.
    feed(
        &mut e,
        T0 + 4 * SEC,
        &seg(client, server, 5556, 80, SYN, 100, 0),
    );
    feed(
        &mut e,
        T0 + 4 * SEC + 1_000,
        &seg(server, client, 80, 5556, SYN | ACK, 9, 101),
    );
    feed(
        &mut e,
        T0 + 5 * SEC,
        &seg(server, client, 80, 5555, RST | ACK, 10, 43),
    );
    let mut reply = seg(server, client, 80, 5555, ACK, 10, 43);
    reply.payload = b"HTTP/1.1 504 Gateway Time-out\r\n";
    feed(&mut e, T0 + 5 * SEC, &reply);
    // Time passes (another client's SYNs), so the open handshake is old at the end.
    for i in 0..10u64 {
        let other = v4([198, 51, 100, 12]);
        feed(
            &mut e,
            T0 + 6 * SEC + i * SEC,
            &seg(other, server, 6000 + i as u16, 80, SYN, 1, 0),
        );
    }
    // The same SYN captured twice (within microseconds) is no retransmission.
    feed(
        &mut e,
        T0 + 16 * SEC,
        &seg(client, server, 7777, 80, SYN, 5, 0),
    );
    feed(
        &mut e,
        T0 + 16 * SEC + 3_000,
        &seg(client, server, 7777, 80, SYN, 5, 0),
    );
    e.finish();
    assert_eq!(e.c.retrans, 2);
    assert_eq!(e.c.completed, 1);
    assert_eq!(
        e.c.never_acked, 1,
        "half-open: answered, never acknowledged"
    );
    assert_eq!(e.c.http.get(&504), Some(&1));
    let t = &e.talkers[&client];
    assert_eq!(
        (t.retrans, t.completed, t.failed, t.resets, t.http_err),
        (2, 1, 1, 1, 1)
    );
    assert!(t.hurt());
    assert_eq!(t.last_http_err, 504);
    assert!(e.floods.is_empty(), "no flood in a few SYNs");
}

#[test]
fn normal_traffic_is_no_flood() {
    let mut e = Engine::new(&Settings::default());
    // 20 clients, 10 handshakes per second each, for 20 s: 200 SYN/s.
    for i in 0..4000u64 {
        let client = v4([198, 51, 100, 10 + (i % 20) as u8]);
        handshake(&mut e, T0 + i * 5_000_000, client, 1024 + (i / 20) as u16);
    }
    e.finish();
    assert!(e.floods.is_empty());
    assert_eq!(e.agent[stat::N_BANS] + e.agent[stat::N_ATTACKS], 0);
    assert_eq!(e.c.completed, 4000);
    assert_eq!(e.c.never_completed, 0);
    assert_eq!(e.peak.0, 200);
}

#[test]
fn destinations_past_the_cap_are_counted() {
    let mut e = Engine::new(&Settings::default());
    let scanner = v4([203, 0, 113, 9]);
    for i in 0..5000u64 {
        let s = seg(scanner, v4(SERVER), 40_000, i as u16 + 1, SYN, 1, 0);
        feed(&mut e, T0 + i * SEC / 100, &s);
    }
    assert_eq!(e.targets.len(), TARGETS);
    assert_eq!(e.targets_full, 5000 - TARGETS as u64);
}

#[test]
fn the_series_halves_its_resolution_instead_of_growing() {
    let mut e = Engine::new(&Settings::default());
    let client = v4([198, 51, 100, 10]);
    // One SYN a minute for 10 days: 14,400 one-second points otherwise.
    for i in 0..14_400u64 {
        feed(
            &mut e,
            T0 + i * 60 * SEC,
            &seg(client, v4(SERVER), 1, 80, SYN, i as u32, 0),
        );
    }
    assert!(e.series.points().len() <= MAX_POINTS);
    assert!(e.series.width >= 240 * SEC, "{}", e.series.width);
}

#[test]
fn covering_prefix_ignores_a_few_strays() {
    // 198.18.0.0/15: random low 17 bits, plus 1 % noise elsewhere.
    let mut bits = [0u64; 32];
    let mut total = 0;
    let mut x = 7u32;
    for i in 0..10_000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let a = if i % 200 == 0 {
            u32::from_be_bytes([198, 51, 100, 10])
        } else {
            u32::from_be_bytes([198, 18, 0, 0]) | (x & 0x1_ffff)
        };
        for (j, b) in bits.iter_mut().enumerate() {
            *b += u64::from((a >> (31 - j)) & 1);
        }
        total += 1;
    }
    let (v, len) = covering(&bits, total);
    assert_eq!(len, 15);
    assert_eq!(
        show_prefix((0xffff << 32) | u128::from(v as u32), false, len),
        "198.18.0.0/15"
    );
}

#[test]
fn keys_and_names() {
    let p = Params::new(&Settings::default());
    let a = super::super::decode::v4([203, 0, 113, 7]);
    assert_eq!(p.show(p.key(false, a)), "203.0.113.7");
    let b = u128::from("2001:db8:5::10".parse::<Ipv6Addr>().expect("address"));
    assert_eq!(p.show(p.key(true, b)), "2001:db8:5::/64");
    assert_eq!(show_prefix(subnet(false, a), false, 24), "203.0.113.0/24");
}

#[test]
fn distinct_is_exact_then_estimates() {
    let mut d = Distinct::new();
    for i in 0..1000u128 {
        d.insert(i % 500);
    }
    assert_eq!(d.count(), 500);
    assert!(d.exact());
    for i in 0..200_000u128 {
        d.insert(i);
    }
    assert!(!d.exact());
    let n = d.count() as f64;
    assert!((n - 200_000.0).abs() < 200_000.0 * 0.05, "{n}");
}
