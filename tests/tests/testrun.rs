//! The real XDP program in the running kernel, on crafted packets (`BPF_PROG_TEST_RUN`).
//! Every test asserts the verdict and exactly which counters and map entries changed.

use std::{
    thread,
    time::{Duration, Instant},
};

use synguard::{bpf::LoadOptions, config::Settings, rules};
use synguard_common::{
    ACTION_DROP, ACTION_PASS, Bucket, EVENT_BAN, Event, FAMILY_V4, RULE_ALLOW, RULE_BAN,
    RULE_BLOCK, Rule, ban_cache, map_names, sources, stat::*,
};
use synguard_tests::{
    kit::{
        packet::{self, ACK, FIN, RST, SYN, Tcp},
        prog::{Prog, XDP_DROP, XDP_PASS, pin_to_cpu, source_key},
    },
    require_root,
};

const SERVER: &str = "192.0.2.1";
const SERVER6: &str = "2001:db8:ffff::1";

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let mut s = Settings::default();
    for (k, v) in pairs {
        s.set(k, v).expect("valid test setting");
    }
    s
}

fn limited(rate: &str, burst: &str) -> Prog {
    Prog::new(settings(&[("syn-rate", rate), ("syn-burst", burst)]))
}

fn manual(kind: u8) -> synguard_common::Rule {
    rules::manual(kind, 0, "test")
}

/// Keep this test's thread on one CPU, so every test run meets the same per-CPU ban
/// cache (each test has a thread of its own).
fn one_cpu() {
    pin_to_cpu(0);
}

fn drain_events(p: &mut Prog) -> Vec<Event> {
    let rb = p.loaded.maps.events.as_mut().expect("ring buffer");
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert_eq!(item.len(), size_of::<Event>());
        // SAFETY: the kernel wrote exactly one `Event` into this record.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    out
}

#[test]
fn syn_under_and_over_the_limit_bans_the_source_once() {
    require_root!();
    let mut p = limited("1", "3");
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    for i in 0..3 {
        let new = if i == 0 { vec![N_SOURCES_NEW] } else { vec![] };
        let mut moved = vec![N_SYNS, R_SYN_PASSED];
        moved.extend(new);
        p.expect(&syn, XDP_PASS, &moved);
    }
    let b = p.bucket("203.0.113.5", 32).expect("bucket exists");
    assert_eq!((b.syns, b.limited), (3, 0));

    // The fourth SYN empties the bucket: dropped, and the source is banned.
    p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    let ban = p.rule("203.0.113.5/32").expect("ban entry");
    assert_eq!((ban.kind, ban.action), (RULE_BAN, ACTION_DROP));
    assert_eq!(ban.syns, 4, "SYNs in the rate window at ban time");
    assert!(ban.rate >= 4, "rate at ban: {}", ban.rate);
    let ban_ns = ban.expires_ns - ban.created_ns;
    assert_eq!(ban_ns, 600_000_000_000, "default ban-for is 10m");

    // From now on its SYNs are dropped by the ban, and no bucket is touched. The ban
    // acts on new connections only: the source's other packets (its established
    // connections, whatever a forger sent in its name) pass, and so do its SYNs to
    // ports synguard does not protect.
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
    let ack = Tcp::syn("203.0.113.5", SERVER).flags(ACK).build();
    p.expect(&ack, XDP_PASS, &[R_TCP_OTHER]);
    let udp = packet::udp("203.0.113.5", SERVER);
    p.expect(&udp, XDP_PASS, &[R_NON_TCP]);
    p.set("ports", "80");
    let ssh = Tcp::syn("203.0.113.5", SERVER).dport(22).build();
    p.expect(&ssh, XDP_PASS, &[N_SYNS, R_SYN_UNPROTECTED]);
    assert_eq!(p.rule("203.0.113.5/32").unwrap().hits, 2);
    assert_eq!(p.bucket("203.0.113.5", 32).unwrap().syns, 4);

    // Exactly one event for the ban.
    let events = drain_events(&mut p);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!((e.kind, e.family, e.prefix_len), (EVENT_BAN, FAMILY_V4, 32));
    assert_eq!(&e.addr[..4], &[203, 0, 113, 5]);
    assert_eq!(e.expires_ns, ban.expires_ns);

    // Other sources are unaffected.
    p.expect(
        &Tcp::syn("203.0.113.6", SERVER).build(),
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
    );
}

#[test]
fn ban_for_zero_limits_without_banning() {
    require_root!();
    let mut p = limited("1", "1");
    p.set("ban-for", "0s");
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    p.expect(&syn, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED]);
    p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED]);
    assert!(p.rules().is_empty());
    let ack = Tcp::syn("203.0.113.5", SERVER).flags(ACK).build();
    p.expect(&ack, XDP_PASS, &[R_TCP_OTHER]);
}

#[test]
fn syn_ack_and_ack_are_never_counted_as_syns() {
    require_root!();
    let p = limited("1", "1");
    let src = "198.51.100.20";
    for _ in 0..5 {
        p.expect(
            &Tcp::syn(src, SERVER).flags(SYN | ACK).build(),
            XDP_PASS,
            &[R_SYN_ACK],
        );
        p.expect(
            &Tcp::syn(src, SERVER).flags(ACK).build(),
            XDP_PASS,
            &[R_TCP_OTHER],
        );
        p.expect(
            &Tcp::syn(src, SERVER).flags(ACK | packet::PSH).build(),
            XDP_PASS,
            &[R_TCP_OTHER],
        );
        p.expect(
            &Tcp::syn(src, SERVER).flags(FIN | ACK).build(),
            XDP_PASS,
            &[R_TCP_OTHER],
        );
        p.expect(
            &Tcp::syn(src, SERVER).flags(RST).build(),
            XDP_PASS,
            &[R_TCP_OTHER],
        );
    }
    assert!(
        p.buckets().is_empty(),
        "no bucket for a source that sent no SYN"
    );
}

#[test]
fn vlan_tagged_syns_are_metered_by_their_real_source() {
    require_root!();
    let p = limited("1", "2");
    for frame in [
        Tcp::syn("203.0.113.9", SERVER).vlan(10).build(),
        Tcp::syn("203.0.113.9", SERVER).vlan(100).vlan(200).build(),
    ] {
        assert_ne!(packet::l3_offset(&frame), 14, "frame carries VLAN tags");
    }
    let one = Tcp::syn("203.0.113.9", SERVER).vlan(10).build();
    let two = Tcp::syn("203.0.113.9", SERVER).vlan(100).vlan(200).build();
    assert_eq!(&two[12..14], &[0x88, 0xa8], "outer tag is 802.1ad");
    p.expect(&one, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.expect(&two, XDP_PASS, &[N_SYNS, R_SYN_PASSED]);
    p.expect(&two, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    assert!(p.rule("203.0.113.9/32").is_some());
    p.expect(&one, XDP_DROP, &[R_BANNED]);
    assert_eq!(p.bucket("203.0.113.9", 32).unwrap().syns, 3);
}

#[test]
fn ipv4_options_are_skipped_to_find_tcp() {
    require_root!();
    let p = limited("1", "1");
    // 8 bytes of options (NOP padding and a 4-byte router-alert-like option). If the
    // program ignored IHL it would read the flags from the wrong place.
    let frame = Tcp::syn("203.0.113.10", SERVER)
        .ipv4_options(&[0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00])
        .build();
    assert_eq!(frame[packet::l3_offset(&frame)] & 0x0f, 7, "IHL 7");
    p.expect(&frame, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.expect(&frame, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    let ack = Tcp::syn("203.0.113.11", SERVER)
        .ipv4_options(&[0x01; 40])
        .flags(ACK)
        .build();
    p.expect(&ack, XDP_PASS, &[R_TCP_OTHER]);
}

#[test]
fn ipv6_syns_aggregate_to_the_slash_64() {
    require_root!();
    let p = limited("1", "2");
    let a = Tcp::syn("2001:db8:1:2::1", SERVER6).build();
    let b = Tcp::syn("2001:db8:1:2:ffff:ffff:ffff:ffff", SERVER6).build();
    let other = Tcp::syn("2001:db8:1:3::1", SERVER6).build();
    p.expect(&a, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.expect(&b, XDP_PASS, &[N_SYNS, R_SYN_PASSED]);
    // A third address in the same /64 is the same source: over the limit.
    let c = Tcp::syn("2001:db8:1:2::abcd", SERVER6).build();
    p.expect(&c, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    let ban = p.rule("2001:db8:1:2::/64").expect("ban of the /64");
    assert_eq!(ban.kind, RULE_BAN);
    p.expect(&a, XDP_DROP, &[R_BANNED]);
    // The neighbouring /64 is someone else.
    p.expect(&other, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    let bucket = p
        .bucket("2001:db8:1:2::", 64)
        .expect("one bucket for the /64");
    assert_eq!(bucket.syns, 3);
}

#[test]
fn ipv6_prefix_setting_changes_aggregation() {
    require_root!();
    let mut p = limited("1", "1");
    p.set("ipv6-prefix", "128");
    p.expect(
        &Tcp::syn("2001:db8:1:2::1", SERVER6).build(),
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
    );
    p.expect(
        &Tcp::syn("2001:db8:1:2::2", SERVER6).build(),
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
    );
    p.set("ipv4-prefix", "24");
    p.expect(
        &Tcp::syn("203.0.113.1", SERVER).build(),
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
    );
    p.expect(
        &Tcp::syn("203.0.113.2", SERVER).build(),
        XDP_DROP,
        &[N_SYNS, R_SYN_LIMITED, N_BANS],
    );
    assert!(p.rule("203.0.113.0/24").is_some());
}

/// A SYN behind hop-by-hop, routing or destination options headers is metered and
/// banned like any other: a flooder cannot escape its limit by adding one.
#[test]
fn ipv6_syns_behind_extension_headers_are_metered_like_any_other() {
    require_root!();
    let p = limited("1", "1");
    let syn = Tcp::syn("2001:db8:5::1", SERVER6).build();
    for chain in [
        &[(0u8, 0u8)][..],
        &[(60, 1)],
        &[(43, 0)],
        &[(0, 0), (60, 2), (43, 1), (60, 0)],
    ] {
        let src = format!(
            "2001:db8:5:{}::1",
            chain.len() * 100 + usize::from(chain[0].0)
        );
        let frame =
            |sport: u16| packet::with_v6_ext(&Tcp::syn(&src, SERVER6).sport(sport).build(), chain);
        p.expect(
            &frame(1),
            XDP_PASS,
            &[N_V6_EXT_WALKED, N_SYNS, N_SOURCES_NEW, R_SYN_PASSED],
        );
        p.expect(
            &frame(2),
            XDP_DROP,
            &[N_V6_EXT_WALKED, N_SYNS, R_SYN_LIMITED, N_BANS],
        );
        p.expect(&frame(3), XDP_DROP, &[N_V6_EXT_WALKED, R_BANNED]);
        // The same source without extension headers is the same source.
        p.expect(
            &Tcp::syn(&src, SERVER6).sport(4).build(),
            XDP_DROP,
            &[R_BANNED],
        );
    }
    assert_eq!(p.buckets().len(), 4);
    // Out of reach: a fragment header, ESP, or more headers than the program walks.
    for (what, frame) in [
        ("fragment", packet::with_v6_ext(&syn, &[(44, 0)])),
        (
            "hop-by-hop, then fragment",
            packet::with_v6_ext(&syn, &[(0, 0), (44, 0)]),
        ),
        (
            "one header too many",
            packet::with_v6_ext(&syn, &[(60, 0); synguard_common::V6_EXT_MAX + 1]),
        ),
    ] {
        eprintln!("{what}");
        p.expect(&frame, XDP_PASS, &[R_IPV6_EXT]);
    }
    // Cut short, in an extension header or after it: the kernel discards it.
    let cut = packet::with_v6_ext(&syn, &[(0, 3)]);
    p.expect(&cut[..14 + 40 + 1], XDP_PASS, &[R_TRUNCATED]);
    p.expect(
        &cut[..14 + 40 + 32 + 10],
        XDP_PASS,
        &[N_V6_EXT_WALKED, R_TRUNCATED],
    );
    // Blocks still apply to whatever is behind the headers.
    let mut p = limited("1", "1");
    let unreachable = packet::with_v6_ext(&syn, &[(44, 0)]);
    p.expect(&unreachable, XDP_PASS, &[R_IPV6_EXT]);
    p.put_rule("2001:db8:5::/48", &manual(RULE_BLOCK));
    p.expect(&unreachable, XDP_DROP, &[R_BLOCKED]);
}

#[test]
fn invalid_flag_combinations_are_dropped() {
    require_root!();
    let p = limited("1000", "1000");
    for flags in [
        SYN | FIN,
        SYN | RST,
        SYN | FIN | ACK,
        SYN | RST | ACK,
        SYN | FIN | RST,
    ] {
        p.expect(
            &Tcp::syn("198.51.100.30", SERVER).flags(flags).build(),
            XDP_DROP,
            &[R_INVALID_FLAGS],
        );
        p.expect(
            &Tcp::syn("2001:db8:7::1", SERVER6).flags(flags).build(),
            XDP_DROP,
            &[R_INVALID_FLAGS],
        );
    }
    assert!(p.buckets().is_empty());
}

#[test]
fn truncation_at_every_header_passes() {
    require_root!();
    let p = limited("1000", "1000");
    let frames = [
        Tcp::syn("203.0.113.40", SERVER).build(),
        Tcp::syn("203.0.113.40", SERVER).vlan(5).vlan(6).build(),
        Tcp::syn("203.0.113.40", SERVER)
            .ipv4_options(&[1; 12])
            .build(),
        Tcp::syn("2001:db8:9::1", SERVER6).vlan(7).build(),
    ];
    for full in &frames {
        // The kernel does not run XDP test runs on less than an Ethernet header.
        for len in 14..full.len() {
            let cut = &full[..len];
            let before = p.counters();
            assert_eq!(p.run(cut), XDP_PASS, "frame cut at {len} of {}", full.len());
            let after = p.counters();
            let moved: Vec<usize> = (0..COUNT).filter(|&i| after[i] != before[i]).collect();
            assert!(
                moved == [R_TRUNCATED] || (moved == [R_NON_IP] && len < packet::l3_offset(full)),
                "cut at {len}: counters moved {moved:?}"
            );
        }
        // And the whole frame is a SYN.
        assert_eq!(p.run(full), XDP_PASS);
    }
    assert!(p.counter(R_TRUNCATED) > 100);
}

#[test]
fn malformed_and_fragmented_ipv4() {
    require_root!();
    let p = limited("1", "1");
    let mut bad_ihl = Tcp::syn("203.0.113.50", SERVER).build();
    bad_ihl[14] = 0x44; // version 4, IHL 4 (16 bytes): impossible
    p.expect(&bad_ihl, XDP_PASS, &[R_MALFORMED]);

    let mut frag = Tcp::syn("203.0.113.50", SERVER).build();
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10; // fragment offset 16 (x8 bytes)
    p.expect(&frag, XDP_PASS, &[R_FRAGMENT]);
}

#[test]
fn non_tcp_and_non_ip_pass() {
    require_root!();
    let p = limited("1", "1");
    for _ in 0..3 {
        p.expect(&packet::udp("203.0.113.60", SERVER), XDP_PASS, &[R_NON_TCP]);
        p.expect(
            &packet::udp("2001:db8::60", SERVER6),
            XDP_PASS,
            &[R_NON_TCP],
        );
        p.expect(&packet::arp(), XDP_PASS, &[R_NON_IP]);
    }
}

#[test]
fn blocked_cidr_drops_everything_from_it_and_counts_hits() {
    require_root!();
    let mut p = limited("1000", "1000");
    p.put_rule("203.0.113.0/24", &manual(RULE_BLOCK));
    p.put_rule("2001:db8:bad::/48", &manual(RULE_BLOCK));
    p.expect(
        &Tcp::syn("203.0.113.77", SERVER).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    p.expect(
        &Tcp::syn("203.0.113.78", SERVER).flags(ACK).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    p.expect(&packet::udp("203.0.113.79", SERVER), XDP_DROP, &[R_BLOCKED]);
    p.expect(
        &Tcp::syn("2001:db8:bad:1::5", SERVER6).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    assert_eq!(p.rule("203.0.113.0/24").unwrap().hits, 3);
    assert_eq!(p.rule("2001:db8:bad::/48").unwrap().hits, 1);
    // Just outside the prefix.
    p.expect(
        &Tcp::syn("203.0.114.1", SERVER).build(),
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
    );
}

#[test]
fn allowlisted_source_is_never_limited_even_inside_a_blocked_cidr() {
    require_root!();
    let mut p = limited("1", "1");
    p.put_rule("198.51.100.0/24", &manual(RULE_BLOCK));
    p.put_rule("198.51.100.7/32", &manual(RULE_ALLOW));
    p.reconcile();
    let allowed = Tcp::syn("198.51.100.7", SERVER).build();
    for _ in 0..50 {
        p.expect(&allowed, XDP_PASS, &[R_ALLOWED]);
    }
    assert!(p.buckets().is_empty(), "allowlisted SYNs are not metered");
    assert!(p.rules().iter().all(|e| e.rule.kind != RULE_BAN));
    p.expect(
        &Tcp::syn("198.51.100.8", SERVER).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );

    // A wider allow entry beats a narrower block inside it: the block becomes a pass.
    p.put_rule("10.0.0.0/8", &manual(RULE_ALLOW));
    p.put_rule("10.1.0.0/16", &manual(RULE_BLOCK));
    let inside = Tcp::syn("10.1.2.3", SERVER).build();
    p.reconcile();
    assert_eq!(p.rule("10.1.0.0/16").unwrap().action, ACTION_PASS);
    for _ in 0..10 {
        p.expect(&inside, XDP_PASS, &[R_ALLOWED]);
    }
    // Removing the allow entry makes the block effective again.
    rules::delete(&mut p.loaded.maps, &"10.0.0.0/8".parse().unwrap()).unwrap();
    p.reconcile();
    assert_eq!(p.rule("10.1.0.0/16").unwrap().action, ACTION_DROP);
    p.expect(&inside, XDP_DROP, &[R_BLOCKED]);
}

/// The hint that lets IPv4 packets skip the trie (`synguard_common::hint`): set for
/// every entry userspace stores and every ban the kernel makes, cleared only when no
/// entry in the /24 remains, and ignored while bans can be wider than it tracks.
#[test]
fn the_rules_hint_follows_every_entry() {
    require_root!();
    let mut p = limited("1", "1");
    assert!(!p.hinted("203.0.113.5"));
    p.put_rule("203.0.113.0/24", &manual(RULE_BLOCK));
    p.put_rule("203.0.113.64/26", &manual(RULE_BLOCK));
    assert!(p.hinted("203.0.113.5"));
    // Removing one entry keeps the bit the other needs.
    rules::delete(&mut p.loaded.maps, &"203.0.113.0/24".parse().unwrap()).unwrap();
    assert!(p.hinted("203.0.113.5"));
    p.expect(
        &Tcp::syn("203.0.113.70", SERVER).flags(ACK).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    p.expect(
        &Tcp::syn("203.0.113.5", SERVER).flags(ACK).build(),
        XDP_PASS,
        &[R_TCP_OTHER],
    );
    rules::delete(&mut p.loaded.maps, &"203.0.113.64/26".parse().unwrap()).unwrap();
    assert!(!p.hinted("203.0.113.5"));

    // A wide entry marks every /24 inside it, across words, and its removal clears them
    // all except those another entry still needs.
    p.put_rule("10.20.0.0/16", &manual(RULE_ALLOW));
    p.put_rule("10.20.255.7/32", &manual(RULE_BLOCK));
    for a in ["10.20.0.1", "10.20.64.1", "10.20.200.1", "10.20.255.1"] {
        assert!(p.hinted(a), "{a}");
    }
    assert!(!p.hinted("10.21.0.1"));
    rules::delete(&mut p.loaded.maps, &"10.20.0.0/16".parse().unwrap()).unwrap();
    assert!(!p.hinted("10.20.0.1") && !p.hinted("10.20.254.1"));
    assert!(p.hinted("10.20.255.1"));

    // The kernel consults the hints: entries stored behind their back (no bit) are not
    // seen, which is exactly why every writer goes through `rules::put`.
    let key = synguard::bpf::V4Key::new(24, synguard_common::rule_key_v4([198, 51, 100, 0], 0));
    let mut rule = manual(RULE_BLOCK);
    rule.prefix_len = 24;
    p.loaded.maps.rules_v4.insert(&key, rule, 0).unwrap();
    let ack = Tcp::syn("198.51.100.9", SERVER).flags(ACK).build();
    p.expect(&ack, XDP_PASS, &[R_TCP_OTHER]);
    p.loaded.maps.rules_v4.remove(&key).unwrap();
    // The same for a ban (which acts on SYNs), as one made under an ipv4-prefix the
    // hint does not track looks: under such a prefix the kernel walks the bans trie for
    // every SYN, and going back to a longer one first marks every entry.
    let stray = "198.51.100.0/24".parse().unwrap();
    let ban = Rule {
        prefix_len: 24,
        ..Rule::new(RULE_BAN, ACTION_DROP, 0, 0)
    };
    p.loaded.maps.bans_v4.insert(&key, ban, 0).unwrap();
    let syn = Tcp::syn("198.51.100.9", SERVER).build();
    p.expect(&syn, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.set("ipv4-prefix", "16");
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
    p.set("ipv4-prefix", "32");
    assert!(p.ban_hinted("198.51.100.9"));
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
    assert!(rules::delete(&mut p.loaded.maps, &stray).unwrap().is_some());
    assert!(!p.ban_hinted("198.51.100.9"));

    // A manual entry replaces a ban on the same prefix, hint bits included.
    p.put_rule("198.51.100.0/24", &Rule::new(RULE_BAN, ACTION_DROP, 0, 0));
    p.put_rule("198.51.100.0/24", &manual(RULE_ALLOW));
    assert_eq!(p.rules().len(), 2, "the /32 block and the allow entry");
    assert!(p.hinted("198.51.100.9") && !p.ban_hinted("198.51.100.9"));
    p.expect(&ack, XDP_PASS, &[R_ALLOWED]);
}

/// Bans made by the kernel mark the hint themselves, at every aggregation it tracks;
/// shorter ones are found because the hint is then ignored.
#[test]
fn kernel_bans_are_seen_at_every_ipv4_prefix() {
    require_root!();
    for (prefix, inside) in [
        ("32", "198.18.5.7"),
        ("20", "198.18.15.200"),
        ("12", "198.19.200.1"),
    ] {
        let mut p = limited("1", "1");
        p.set("ipv4-prefix", prefix);
        let syn = Tcp::syn("198.18.5.7", SERVER).build();
        p.run(&syn);
        p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
        p.expect(&Tcp::syn(inside, SERVER).build(), XDP_DROP, &[R_BANNED]);
        // Outside the ban (and, for the short prefix, inside the ignored hint).
        let other = Tcp::syn("198.51.100.9", SERVER).build();
        p.expect(&other, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
        assert_eq!(p.ban_hinted(inside), prefix != "12", "/{prefix}");
        assert!(!p.hinted(inside), "bans mark the bans hint only");
    }
}

/// The IPv6 hint, the same way: entries and kernel bans mark it, removal clears it,
/// and an `ipv6-prefix` shorter than it tracks makes the kernel ignore it.
#[test]
fn the_ipv6_rules_hint_follows_entries_and_bans() {
    require_root!();
    let mut p = limited("1", "1");
    p.put_rule("2001:db8:bad::/48", &manual(RULE_BLOCK));
    assert!(p.hinted("2001:db8:bad:1::5"));
    assert!(!p.hinted("2001:db8:1::7"));
    p.expect(
        &Tcp::syn("2001:db8:bad:1::5", SERVER6).flags(ACK).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    rules::delete(&mut p.loaded.maps, &"2001:db8:bad::/48".parse().unwrap()).unwrap();
    assert!(!p.hinted("2001:db8:bad:1::5"));

    // A /12 entry is wider than the hint's folded bits: it marks every bit.
    p.put_rule("2000::/12", &manual(RULE_ALLOW));
    assert!(p.hinted("2001:db8:1::7") && p.hinted("2a00:1::1"));
    rules::delete(&mut p.loaded.maps, &"2000::/12".parse().unwrap()).unwrap();
    assert!(!p.hinted("2001:db8:1::7"));

    for (prefix, inside) in [("64", "2001:db8:5:7::99"), ("24", "2001:db8:ff00::1")] {
        let mut p = limited("1", "1");
        p.set("ipv6-prefix", prefix);
        let syn = Tcp::syn("2001:db8:5:7::1", SERVER6).build();
        p.run(&syn);
        p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
        p.expect(&Tcp::syn(inside, SERVER6).build(), XDP_DROP, &[R_BANNED]);
        let other = Tcp::syn("3fff:6::1", SERVER6).build();
        p.expect(&other, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
        assert_eq!(p.ban_hinted(inside), prefix == "64", "/{prefix}");
    }
}

/// The program's clock (`synguard_common::clock`: jiffies plus a coarse reading once a
/// second) stays within a few ticks of `CLOCK_MONOTONIC`, once each CPU has learnt the
/// length of a jiffy and stopped calling the clock helper per packet.
#[test]
fn the_programs_clock_follows_the_monotonic_clock() {
    require_root!();
    let p = limited("1000000", "1000000");
    let syn = Tcp::syn("203.0.113.44", SERVER).build();
    let start = Instant::now();
    let (mut behind, mut ahead) = (0u64, 0u64);
    // 400 ms: more than the 16 jiffies a CPU needs to learn a jiffy even at HZ=100.
    while start.elapsed() < Duration::from_millis(400) {
        let before = synguard::clock::monotonic_ns();
        p.run(&syn);
        let after = synguard::clock::monotonic_ns();
        let seen = p.bucket("203.0.113.44", 32).unwrap().last_seen_ns;
        behind = behind.max(before.saturating_sub(seen));
        ahead = ahead.max(seen.saturating_sub(after));
        thread::sleep(Duration::from_millis(3));
    }
    // The coarse clock trails by up to a tick; the derived one adds at most two (ticks
    // are 1 to 10 ms).
    assert!(behind < 35_000_000, "behind by {behind} ns");
    assert!(ahead < 12_000_000, "ahead by {ahead} ns");
    // The derived path was in use: the CPUs that ran the program know the jiffy.
    let learnt: Vec<u64> = p
        .loaded
        .maps
        .stats
        .iter()
        .filter_map(Result::ok)
        .flat_map(|per_cpu| per_cpu.iter().map(|s| s.tick_ns).collect::<Vec<_>>())
        .filter(|&t| t != 0)
        .collect();
    assert!(!learnt.is_empty(), "no CPU learnt the jiffy");
    let plausible = synguard_common::clock::TICK_MIN_NS..=synguard_common::clock::TICK_MAX_NS;
    assert!(learnt.iter().all(|t| plausible.contains(t)), "{learnt:?}");
}

#[test]
fn ban_expires_on_time() {
    require_root!();
    let mut p = limited("1", "1");
    p.set("ban-for", "1s");
    let syn = Tcp::syn("203.0.113.90", SERVER).build();
    let ack = Tcp::syn("203.0.113.90", SERVER).flags(ACK).build();
    p.run(&syn);
    p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
    p.expect(&ack, XDP_PASS, &[R_TCP_OTHER]);
    assert!(p.ban_hinted("203.0.113.90"));
    thread::sleep(Duration::from_millis(1100));
    // Expired: acts as absent even before userspace removes it. The bucket has refilled
    // after a second at 1/s: the source may connect again.
    p.expect(&syn, XDP_PASS, &[N_SYNS, R_SYN_PASSED]);
    let removed = rules::expire(&mut p.loaded.maps).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].net.to_string(), "203.0.113.90/32");
    assert!(p.rules().is_empty());
    assert!(!p.ban_hinted("203.0.113.90"), "expiry clears the hint bit");
}

#[test]
fn an_expired_ban_is_replaced_when_the_source_floods_again() {
    require_root!();
    let mut p = limited("1", "1");
    p.set("ban-for", "1s");
    let syn = Tcp::syn("203.0.113.91", SERVER).build();
    p.run(&syn);
    p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    thread::sleep(Duration::from_millis(1100));
    p.run(&syn);
    p.expect(&syn, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    let ban = p.rule("203.0.113.91/32").unwrap();
    assert!(!ban.expired(synguard::clock::monotonic_ns()));
    assert_eq!(drain_events(&mut p).len(), 2, "one event per ban");
}

#[test]
fn monitor_mode_decides_and_counts_but_drops_nothing() {
    require_root!();
    let mut p = limited("1", "1");
    p.set("mode", "monitor");
    p.put_rule("203.0.113.0/28", &manual(RULE_BLOCK));
    let syn = Tcp::syn("198.51.100.99", SERVER).build();
    p.expect(&syn, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.expect(
        &syn,
        XDP_PASS,
        &[N_SYNS, R_SYN_LIMITED, N_BANS, N_MONITOR_PASSED],
    );
    assert!(p.rule("198.51.100.99/32").is_some(), "the ban is recorded");
    p.expect(&syn, XDP_PASS, &[R_BANNED, N_MONITOR_PASSED]);
    p.expect(
        &Tcp::syn("203.0.113.1", SERVER).build(),
        XDP_PASS,
        &[R_BLOCKED, N_MONITOR_PASSED],
    );
    p.expect(
        &Tcp::syn("198.51.100.98", SERVER).flags(SYN | FIN).build(),
        XDP_PASS,
        &[R_INVALID_FLAGS, N_MONITOR_PASSED],
    );
    // Switching to enforce applies the same decisions.
    p.set("mode", "enforce");
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
}

#[test]
fn ports_setting_limits_only_protected_ports() {
    require_root!();
    let mut p = limited("1", "1");
    p.set("ports", "80,443");
    let ssh = Tcp::syn("203.0.113.100", SERVER).dport(22).build();
    for _ in 0..5 {
        p.expect(&ssh, XDP_PASS, &[N_SYNS, R_SYN_UNPROTECTED]);
    }
    let https = Tcp::syn("203.0.113.100", SERVER).dport(443).build();
    p.expect(&https, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    p.expect(&https, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
}

/// Put `key` with `bucket` into slot `way` of the set `owner` hashes to.
fn occupy(p: &mut Prog, owner: &str, way: u32, key: &str, bucket: Bucket) {
    let seed = synguard::sources::seed(&p.loaded.maps).expect("seed");
    let set = sources::first_slot(&source_key(owner.parse().expect("address"), 32), &seed);
    let slot = sources::Slot {
        key: source_key(key.parse().expect("address"), 32),
        proof_mark: 0,
        bucket,
    };
    p.loaded
        .maps
        .sources
        .set(set + way, slot, 0)
        .expect("write slot");
}

/// A source's set full of sources spending their bursts: the newcomer passes unmetered
/// and is counted, nobody is banned for it, bans stand; once one of them has refilled,
/// the newcomer takes its slot (counted as recycled) and the busy one keeps its bucket.
#[test]
fn a_set_of_busy_sources_passes_newcomers_then_recycles_refilled_slots() {
    require_root!();
    let mut p = limited("1", "1");
    let flooder = Tcp::syn("203.0.113.200", SERVER).build();
    p.run(&flooder);
    p.expect(&flooder, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);

    // The times below reach 9 s into the past of the monotonic clock, which in the kernel
    // matrix's guests started a few seconds ago: wait until it has run that long.
    let up = synguard::clock::monotonic_ns();
    std::thread::sleep(std::time::Duration::from_nanos(
        10_000_000_000u64.saturating_sub(up),
    ));
    let now = synguard::clock::monotonic_ns();
    // Spending its burst (tat ahead), but seen longer ago than the refilled source
    // below: the slot to recycle is chosen by refill, not by age.
    let busy = Bucket {
        tat_ns: now + 3_600_000_000_000,
        first_seen_ns: now - 9_000_000_000,
        last_seen_ns: now - 8_000_000_000,
        syns: 7,
        ..Default::default()
    };
    let newcomer = "198.51.100.50";
    occupy(&mut p, newcomer, 0, "198.51.100.1", busy);
    occupy(&mut p, newcomer, 1, "198.51.100.2", busy);
    let frame = Tcp::syn(newcomer, SERVER).build();
    for _ in 0..5 {
        p.expect(&frame, XDP_PASS, &[N_SYNS, R_SYN_UNTRACKED]);
    }
    assert!(p.rule("198.51.100.50/32").is_none());
    assert!(p.bucket(newcomer, 32).is_none());
    p.expect(&flooder, XDP_DROP, &[R_BANNED]);

    // Way 1's source has refilled (its last SYN long ago): the newcomer takes its slot.
    let refilled = Bucket {
        tat_ns: now - 1_000_000_000,
        first_seen_ns: now - 5_000_000_000,
        last_seen_ns: now - 2_000_000_000,
        syns: 3,
        ..Default::default()
    };
    occupy(&mut p, newcomer, 1, "198.51.100.2", refilled);
    p.expect(
        &frame,
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW, N_SOURCES_RECYCLED],
    );
    let b = p.bucket(newcomer, 32).expect("the newcomer has a bucket");
    assert_eq!(b.syns, 1);
    // ... and is metered from then on; the busy source's slot was not touched.
    p.expect(&frame, XDP_DROP, &[N_SYNS, R_SYN_LIMITED, N_BANS]);
    let seed = synguard::sources::seed(&p.loaded.maps).expect("seed");
    let set = sources::first_slot(&source_key(newcomer.parse().expect("address"), 32), &seed);
    let way0 = p.loaded.maps.sources.get(&set, 0).expect("read slot");
    assert_eq!(
        way0.key,
        source_key("198.51.100.1".parse().expect("address"), 32)
    );
    assert_eq!(way0.bucket, busy);
}

/// The sources table's hash key is drawn once, when the maps are made, and survives
/// every later config write (a new key would strand every bucket).
#[test]
fn the_sources_hash_key_is_secret_random_and_kept() {
    require_root!();
    let mut p = limited("1", "5");
    let a = limited("1", "5");
    let seed = synguard::sources::seed(&p.loaded.maps).expect("seed");
    assert_ne!(seed, [0; sources::SEED_WORDS]);
    assert_ne!(seed, synguard::sources::seed(&a.loaded.maps).expect("seed"));
    let src = Tcp::syn("203.0.113.9", SERVER).build();
    p.run(&src);
    p.set("syn-burst", "6");
    p.set("ipv4-prefix", "32");
    assert_eq!(synguard::sources::seed(&p.loaded.maps).expect("seed"), seed);
    p.run(&src);
    assert_eq!(p.bucket("203.0.113.9", 32).map(|b| b.syns), Some(2));
}

#[test]
fn full_rules_table_still_drops_the_excess_and_bans_nobody_wrongly() {
    require_root!();
    let mut p = Prog::with_options(
        settings(&[("syn-rate", "1"), ("syn-burst", "1")]),
        &LoadOptions {
            max_entries: vec![(map_names::BANS_V4, 1)],
            ..Default::default()
        },
    );
    // One ban (no expiry) fills the bans table.
    p.put_rule("192.0.2.128/25", &Rule::new(RULE_BAN, ACTION_DROP, 0, 0));
    let flooder = Tcp::syn("203.0.113.201", SERVER).build();
    p.expect(&flooder, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    // Over the limit, but no room for the ban: the SYN is still dropped.
    for _ in 0..5 {
        p.expect(
            &flooder,
            XDP_DROP,
            &[N_SYNS, R_SYN_LIMITED, N_BAN_TABLE_FULL],
        );
    }
    assert_eq!(p.rules().len(), 1, "only the entry that filled the table");
    // Innocent sources are neither banned nor limited.
    p.expect(
        &Tcp::syn("198.51.100.1", SERVER).build(),
        XDP_PASS,
        &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW],
    );
}

/// A banned source's packets are dropped from the CPU's ban cache, without the trie; its
/// hits reach the ban's own count every `FLUSH` packets, and `block list` adds those not
/// carried over yet, so the count it shows is exact.
#[test]
fn a_banned_sources_hits_stay_exact_through_the_ban_cache() {
    require_root!();
    one_cpu();
    let mut p = limited("1", "1");
    p.put_rule("203.0.113.5/32", &Rule::new(RULE_BAN, ACTION_DROP, 0, 0));
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    let n = 4 * ban_cache::FLUSH + 10;
    let banned = p.counter(R_BANNED);
    // One test run: every repeat on the same CPU.
    assert_eq!(p.run_repeat(&syn, n).0, XDP_DROP);
    assert_eq!(p.counter(R_BANNED) - banned, u64::from(n));
    let stored = p.stored_rule("203.0.113.5/32").unwrap().hits;
    assert_eq!(
        stored,
        u64::from(4 * ban_cache::FLUSH + 1),
        "the first lookup, then four carry-overs of FLUSH hits each"
    );
    assert_eq!(p.rule("203.0.113.5/32").unwrap().hits, u64::from(n));
}

/// Removing a ban takes effect at once although CPUs remember the source as banned
/// (another ban keeps the hint bit of its /24 set, so only the epoch can tell).
#[test]
fn an_unbanned_source_is_not_dropped_from_the_ban_cache() {
    require_root!();
    one_cpu();
    let mut p = limited("1000", "1000");
    for net in ["203.0.113.5/32", "203.0.113.6/32"] {
        p.put_rule(net, &Rule::new(RULE_BAN, ACTION_DROP, 0, 0));
    }
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    assert_eq!(p.run_repeat(&syn, 10).0, XDP_DROP);
    assert_eq!(
        p.stored_rule("203.0.113.5/32").unwrap().hits,
        1,
        "remembered"
    );
    let gone = rules::delete(&mut p.loaded.maps, &"203.0.113.5/32".parse().unwrap()).unwrap();
    assert_eq!(
        gone.expect("removed").hits,
        10,
        "removed with the hits the cache still held"
    );
    assert!(p.ban_hinted("203.0.113.5"), "the other ban keeps the bit");
    p.expect(&syn, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
    // The other ban still holds.
    p.expect(
        &Tcp::syn("203.0.113.6", SERVER).build(),
        XDP_DROP,
        &[R_BANNED],
    );
}

/// A remembered ban ends when the ban does.
#[test]
fn a_remembered_ban_expires_with_the_ban() {
    require_root!();
    one_cpu();
    let mut p = limited("1000", "1000");
    let expires = synguard::clock::monotonic_ns() + 300_000_000;
    p.put_rule(
        "203.0.113.5/32",
        &Rule::new(RULE_BAN, ACTION_DROP, 0, expires),
    );
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    assert_eq!(p.run_repeat(&syn, 10).0, XDP_DROP);
    assert_eq!(
        p.stored_rule("203.0.113.5/32").unwrap().hits,
        1,
        "remembered"
    );
    while synguard::clock::monotonic_ns() < expires + 100_000_000 {
        thread::sleep(Duration::from_millis(50));
    }
    // The sweep reports it with the hits the cache still held.
    let gone = rules::expire(&mut p.loaded.maps).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (gone[0].net.to_string().as_str(), gone[0].rule.hits),
        ("203.0.113.5/32", 10)
    );
    p.expect(&syn, XDP_PASS, &[N_SYNS, R_SYN_PASSED, N_SOURCES_NEW]);
}

/// Two banned sources that share a cache entry: the one pushed out has its hits carried
/// over to its own ban first.
#[test]
fn a_source_pushed_out_of_the_ban_cache_keeps_its_hits() {
    require_root!();
    one_cpu();
    let mut p = limited("1000", "1000");
    let a = [203, 0, 113, 5];
    let b = (0..=255u8)
        .map(|last| [203, 0, 113, last])
        .find(|x| *x != a && ban_cache::slot(*x) == ban_cache::slot(a))
        .or_else(|| {
            (0..=255u8)
                .map(|last| [198, 51, 100, last])
                .find(|x| ban_cache::slot(*x) == ban_cache::slot(a))
        })
        .expect("two lab addresses that share an entry");
    let (a, b) = (
        std::net::Ipv4Addr::from(a).to_string(),
        std::net::Ipv4Addr::from(b).to_string(),
    );
    for addr in [&a, &b] {
        p.put_rule(
            &format!("{addr}/32"),
            &Rule::new(RULE_BAN, ACTION_DROP, 0, 0),
        );
    }
    assert_eq!(p.run_repeat(&Tcp::syn(&a, SERVER).build(), 10).0, XDP_DROP);
    assert_eq!(p.stored_rule(&format!("{a}/32")).unwrap().hits, 1);
    assert_eq!(p.run_repeat(&Tcp::syn(&b, SERVER).build(), 1).0, XDP_DROP);
    assert_eq!(p.stored_rule(&format!("{a}/32")).unwrap().hits, 10);
    assert_eq!(p.rule(&format!("{a}/32")).unwrap().hits, 10);
    assert_eq!(p.rule(&format!("{b}/32")).unwrap().hits, 1);
}

/// An allow entry over a remembered ban wins at once, and the ban applies again when it
/// goes; hits of a ban of a whole /24 are carried to that entry.
#[test]
fn a_remembered_ban_yields_to_an_allow_entry_and_counts_for_its_prefix() {
    require_root!();
    one_cpu();
    let mut p = limited("1000", "1000");
    p.put_rule("203.0.113.0/24", &Rule::new(RULE_BAN, ACTION_DROP, 0, 0));
    let syn = Tcp::syn("203.0.113.5", SERVER).build();
    let other = Tcp::syn("203.0.113.77", SERVER).build();
    assert_eq!(p.run_repeat(&syn, 10).0, XDP_DROP);
    assert_eq!(p.run_repeat(&other, 5).0, XDP_DROP);
    assert_eq!(
        p.stored_rule("203.0.113.0/24").unwrap().hits,
        2,
        "both remembered"
    );
    assert_eq!(p.rule("203.0.113.0/24").unwrap().hits, 15);

    p.put_rule("203.0.113.5/32", &manual(RULE_ALLOW));
    p.reconcile();
    p.expect(&syn, XDP_PASS, &[R_ALLOWED]);
    assert!(
        rules::delete(&mut p.loaded.maps, &"203.0.113.5/32".parse().unwrap())
            .unwrap()
            .is_some()
    );
    p.reconcile();
    p.expect(&syn, XDP_DROP, &[R_BANNED]);
    assert_eq!(p.rule("203.0.113.0/24").unwrap().hits, 16);
}

#[test]
fn every_counter_name_is_distinct() {
    let mut names = NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), NAMES.len());
}

#[test]
fn baseline_noop_programs_load_and_return_their_action() {
    require_root!();
    let frame = Tcp::syn("203.0.113.1", SERVER).build();
    for action in [
        synguard_tests::kit::baseline::XDP_PASS,
        synguard_tests::kit::baseline::XDP_DROP,
    ] {
        let noop = synguard_tests::kit::baseline::Noop::load(action).expect("load no-op");
        let (got, ns) = noop.run_repeat(&frame, 1000).expect("run");
        assert_eq!(got, action);
        assert!(ns > 0.0);
    }
}

/// The survival bench's second floor reads each frame's EtherType before dropping it:
/// IPv4 frames are dropped; anything else passes. (A test run refuses frames shorter
/// than an Ethernet header, so the too-short branch is the verifier's to check.)
#[test]
fn the_header_reading_floor_drops_ipv4_frames_only() {
    require_root!();
    let f = synguard_tests::kit::baseline::Noop::load_reading_drop().expect("load the floor");
    let syn = Tcp::syn("198.18.0.9", SERVER).build();
    assert_eq!(f.run_repeat(&syn, 1).expect("run").0, XDP_DROP, "IPv4");
    assert_eq!(
        f.run_repeat(&syn[..14], 1).expect("run").0,
        XDP_DROP,
        "exactly an Ethernet header"
    );
    for (what, frame) in [
        ("IPv6", Tcp::syn("2001:db8:8000::9", SERVER6).build()),
        ("ARP", packet::arp()),
    ] {
        assert_eq!(f.run_repeat(&frame, 1).expect("run").0, XDP_PASS, "{what}");
    }
}

/// The floors told the attack's sources drop (or answer) IPv4 frames from them, and only
/// those; an answer is the frame sent back with addresses and ports swapped, checksums
/// intact.
#[test]
fn the_source_floors_act_on_the_attack_sources_only() {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    require_root!();
    const XDP_TX: u32 = 3;
    let forged: ipnet::Ipv4Net = "198.18.0.0/15".parse().unwrap();
    let drop = synguard_tests::kit::baseline::Noop::load_source(forged, false).expect("load");
    let answer = synguard_tests::kit::baseline::Noop::load_source(forged, true).expect("load");
    let inside = Tcp::syn("198.19.255.254", SERVER).sport(4242).build();
    let outside = [
        (
            "below the range",
            Tcp::syn("198.17.255.255", SERVER).build(),
        ),
        ("above the range", Tcp::syn("198.20.0.0", SERVER).build()),
        ("an employee", Tcp::syn("198.51.100.7", SERVER).build()),
        ("IPv6", Tcp::syn("2001:db8:8000::9", SERVER6).build()),
        ("ARP", packet::arp()),
        ("truncated", inside[..37].to_vec()),
    ];
    assert_eq!(drop.run(&inside).expect("run").0, XDP_DROP);
    for (what, frame) in &outside {
        assert_eq!(
            drop.run(frame).expect("run"),
            (XDP_PASS, frame.clone()),
            "{what}"
        );
        assert_eq!(
            answer.run(frame).expect("run"),
            (XDP_PASS, frame.clone()),
            "{what}"
        );
    }
    let (action, out) = answer.run(&inside).expect("run");
    assert_eq!(action, XDP_TX);
    let (i, o) = (
        SlicedPacket::from_ethernet(&inside).expect("in"),
        SlicedPacket::from_ethernet(&out).expect("out"),
    );
    let (Some(etherparse::LinkSlice::Ethernet2(ei)), Some(etherparse::LinkSlice::Ethernet2(eo))) =
        (i.link, o.link)
    else {
        panic!("not Ethernet");
    };
    assert_eq!(
        (eo.source(), eo.destination()),
        (ei.destination(), ei.source())
    );
    let (Some(NetSlice::Ipv4(ii)), Some(NetSlice::Ipv4(io))) = (i.net, o.net) else {
        panic!("not IPv4");
    };
    let h = io.header().to_header();
    assert_eq!(
        (h.source, h.destination),
        (ii.header().destination(), ii.header().source())
    );
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let (Some(TransportSlice::Tcp(ti)), Some(TransportSlice::Tcp(to))) = (i.transport, o.transport)
    else {
        panic!("not TCP");
    };
    assert_eq!(
        (to.source_port(), to.destination_port()),
        (ti.destination_port(), ti.source_port())
    );
    let sum = to
        .to_header()
        .calc_checksum_ipv4(&h, to.payload())
        .expect("sum");
    assert_eq!(sum, to.checksum(), "TCP checksum");
}

/// The bench lab's router fast path redirects IPv4 frames for the server, and only
/// those, with the next hop's Ethernet addresses; anything else goes to the router's
/// stack untouched.
#[test]
fn the_lab_router_fast_path_redirects_only_frames_for_the_server() {
    require_root!();
    const XDP_REDIRECT: u32 = 4;
    let to = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let from = [0x02, 0x66, 0x77, 0x88, 0x99, 0xaa];
    let f = synguard_tests::kit::baseline::Forwarder::load(SERVER.parse().unwrap(), to, from, 7)
        .expect("load the fast path");
    let syn = Tcp::syn("198.18.0.9", SERVER).build();
    let (action, out) = f.run(&syn).expect("run");
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[0..6], &to, "destination: the next hop");
    assert_eq!(&out[6..12], &from, "source: the egress device");
    assert_eq!(&out[12..], &syn[12..], "the rest untouched");
    // Exactly Ethernet and IPv4 headers is enough.
    let (action, _) = f.run(&syn[..34]).expect("run");
    assert_eq!(action, XDP_REDIRECT, "a 34-byte frame");
    let mut not_ipv4 = syn.clone();
    not_ipv4[12..14].copy_from_slice(&[0x86, 0xdd]);
    for (what, frame) in [
        ("the server's address behind another EtherType", not_ipv4),
        (
            "another destination",
            Tcp::syn("198.18.0.9", "192.0.2.2").build(),
        ),
        ("IPv6", Tcp::syn("2001:db8:8000::9", SERVER6).build()),
        ("ARP", packet::arp()),
        ("a frame too short for IPv4", syn[..33].to_vec()),
    ] {
        let (action, out) = f.run(&frame).expect("run");
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(out, frame, "{what}: untouched");
    }
    // An address whose last byte has the high bit set: compared as 32 bits, not as a
    // sign-extended 64-bit immediate.
    let high = "192.0.2.200";
    let f = synguard_tests::kit::baseline::Forwarder::load(high.parse().unwrap(), to, from, 7)
        .expect("load the fast path");
    assert_eq!(
        f.run(&Tcp::syn("198.18.0.9", high).build()).unwrap().0,
        XDP_REDIRECT
    );
    assert_eq!(f.run(&syn).unwrap().0, XDP_PASS);
}

/// The bench's lookup floor keys its table exactly as synguard keys `SG_SOURCES` and
/// touches the value it finds (so its cost at scale is a real lookup, not a miss).
#[test]
fn the_lookup_floor_finds_the_source_synguard_would() {
    require_root!();
    let mut floor = synguard_tests::kit::baseline::LookupFloor::load(1024).expect("load floor");
    let key = synguard_tests::kit::prog::source_key("203.0.113.1".parse().unwrap(), 32);
    floor.table.insert(key, Bucket::default(), 0).unwrap();
    let (got, _) = floor
        .run_repeat(&Tcp::syn("203.0.113.1", SERVER).build(), 5)
        .unwrap();
    assert_eq!(got, XDP_PASS);
    assert_eq!(
        floor.table.get(&key, 0).unwrap().tat_ns,
        5,
        "found and touched 5 times"
    );
    // Another source, and a frame too short for an IPv4 header: no entry touched.
    floor
        .run_repeat(&Tcp::syn("203.0.113.2", SERVER).build(), 1)
        .unwrap();
    floor.run_repeat(&[0u8; 20], 1).unwrap();
    assert_eq!(floor.table.get(&key, 0).unwrap().tat_ns, 5);
}

/// The bench's line floor bumps exactly one counter per frame, in the slot it documents
/// for the source (sources next to each other land in far-apart slots), and nothing for
/// a frame too short for an IPv4 header.
#[test]
fn the_line_floor_touches_one_slot_per_source() {
    require_root!();
    let floor = synguard_tests::kit::baseline::LineFloor::load(1 << 16).expect("load floor");
    let count =
        |slot: u32| u64::from_le_bytes(floor.table.get(&slot, 0).unwrap()[..8].try_into().unwrap());
    let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    );
    let (sa, sb) = (floor.slot_of(a), floor.slot_of(b));
    assert!(sa.abs_diff(sb) > 64, "slots {sa} and {sb} share a page");
    let (got, _) = floor
        .run_repeat(&Tcp::syn(&a.to_string(), SERVER).build(), 5)
        .unwrap();
    assert_eq!(got, XDP_PASS);
    floor
        .run_repeat(&Tcp::syn(&b.to_string(), SERVER).build(), 2)
        .unwrap();
    floor.run_repeat(&[0u8; 20], 1).unwrap();
    assert_eq!((count(sa), count(sb)), (5, 2));
    let total: u64 = (0..1u32 << 16).map(count).sum();
    assert_eq!(total, 7, "no other slot touched");
}

/// Reading entries back is exact when prefixes share an address, including a prefix
/// whose every address lies in narrower entries.
#[test]
fn overlapping_entries_are_read_back_exactly() {
    require_root!();
    let mut p = limited("1000", "1000");
    let entry = |kind, comment: &str| rules::manual(kind, 0, comment);
    p.put_rule("10.0.0.0/8", &entry(RULE_BLOCK, "eight"));
    p.put_rule("10.0.0.0/24", &entry(RULE_ALLOW, "twenty-four"));
    p.put_rule("10.0.0.0/32", &entry(RULE_BLOCK, "host"));
    p.put_rule("10.1.0.0/24", &entry(RULE_BLOCK, "tiled"));
    p.put_rule("10.1.0.0/25", &entry(RULE_BLOCK, "low half"));
    p.put_rule("10.1.0.128/25", &entry(RULE_BLOCK, "high half"));
    p.put_rule("2001:db8::/32", &entry(RULE_BLOCK, "v6 wide"));
    p.put_rule("2001:db8::/128", &entry(RULE_ALLOW, "v6 host"));

    fn get(p: &Prog, net: &str) -> Option<(u8, u8)> {
        rules::get(&p.loaded.maps, &net.parse().unwrap())
            .unwrap()
            .map(|r| (r.kind, r.prefix_len))
    }
    assert_eq!(get(&p, "10.0.0.0/8"), Some((RULE_BLOCK, 8)));
    assert_eq!(get(&p, "10.0.0.0/24"), Some((RULE_ALLOW, 24)));
    assert_eq!(get(&p, "10.0.0.0/32"), Some((RULE_BLOCK, 32)));
    assert_eq!(get(&p, "10.0.0.0/16"), None, "a prefix that is not stored");
    assert_eq!(get(&p, "10.0.0.1/32"), None);
    assert_eq!(get(&p, "2001:db8::/32"), Some((RULE_BLOCK, 32)));
    assert_eq!(get(&p, "2001:db8::/128"), Some((RULE_ALLOW, 128)));
    assert_eq!(
        get(&p, "10.1.0.0/24"),
        Some((RULE_BLOCK, 24)),
        "tiled by two /25s"
    );

    let listed = p.rules();
    let find = |net: &str| {
        listed
            .iter()
            .find(|e| e.net.to_string() == net)
            .unwrap_or_else(|| panic!("{net} listed"))
    };
    assert_eq!(listed.len(), 8);
    assert_eq!(find("10.0.0.0/8").comment(), "eight");
    assert_eq!(find("10.0.0.0/24").comment(), "twenty-four");
    assert_eq!(find("10.0.0.0/32").comment(), "host");
    assert_eq!(find("2001:db8::/32").comment(), "v6 wide");
    assert_eq!(find("10.1.0.0/24").comment(), "tiled");

    assert!(
        rules::delete(&mut p.loaded.maps, &"10.0.0.0/16".parse().unwrap())
            .unwrap()
            .is_none()
    );
    assert!(
        rules::delete(&mut p.loaded.maps, &"10.0.0.0/24".parse().unwrap())
            .unwrap()
            .is_some()
    );
    assert_eq!(get(&p, "10.0.0.0/8"), Some((RULE_BLOCK, 8)));
    assert_eq!(get(&p, "10.0.0.0/32"), Some((RULE_BLOCK, 32)));

    // And the kernel decides with the most specific live entry.
    p.reconcile();
    p.expect(
        &Tcp::syn("10.0.0.0", SERVER).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    assert_eq!(p.rule("10.0.0.0/32").unwrap().hits, 1);
    assert_eq!(p.rule("10.0.0.0/8").unwrap().hits, 0);
    p.expect(
        &Tcp::syn("2001:db8::", SERVER6).build(),
        XDP_PASS,
        &[R_ALLOWED],
    );
}

/// What the kernel's trie lookup returns for a key of length p: the longest entry no
/// longer than p (the key's prefix length limits the match).
#[test]
fn trie_lookup_respects_the_key_prefix_length() {
    require_root!();
    let mut p = limited("1000", "1000");
    p.put_rule("10.0.0.0/8", &rules::manual(RULE_BLOCK, 0, "eight"));
    p.put_rule("10.0.0.0/32", &rules::manual(RULE_BLOCK, 0, "host"));
    let at = |len: u32| {
        p.loaded
            .maps
            .rules_v4
            .get(
                &synguard::bpf::V4Key::new(len, synguard_common::rule_key_v4([10, 0, 0, 0], 0)),
                0,
            )
            .ok()
            .map(|r| r.prefix_len)
    };
    assert_eq!(at(32), Some(32));
    assert_eq!(at(24), Some(8));
    assert_eq!(at(8), Some(8));
    assert_eq!(at(7), None);
}

#[test]
fn an_expired_entry_never_hides_a_live_one_around_it() {
    require_root!();
    let mut p = limited("1", "1");
    let past = |kind| {
        let mut r = rules::manual(kind, 1, "expired");
        r.created_ns = 0;
        r
    };
    // An allowlisted host with an expired (forced) block inside the allow range: still
    // allowed, never metered, never banned.
    p.put_rule("198.51.100.0/24", &rules::manual(RULE_ALLOW, 0, "office"));
    p.put_rule("198.51.100.7/32", &past(RULE_BLOCK));
    let syn = Tcp::syn("198.51.100.7", SERVER).build();
    for _ in 0..5 {
        p.expect(&syn, XDP_PASS, &[R_ALLOWED]);
    }
    assert!(p.buckets().is_empty());
    assert_eq!(
        p.rule("198.51.100.7/32").unwrap().expires_ns,
        1,
        "no ban replaced it"
    );

    // An expired ban inside a permanent manual block: still blocked.
    p.put_rule("203.0.113.0/24", &rules::manual(RULE_BLOCK, 0, "net"));
    p.put_rule("203.0.113.9/32", &past(RULE_BAN));
    p.expect(
        &Tcp::syn("203.0.113.9", SERVER).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );

    // Nested expired entries are stepped past too.
    p.put_rule("10.0.0.0/8", &rules::manual(RULE_BLOCK, 0, "eight"));
    p.put_rule("10.0.0.0/16", &past(RULE_BLOCK));
    p.put_rule("10.0.0.0/24", &past(RULE_BAN));
    p.put_rule("10.0.0.5/32", &past(RULE_BAN));
    p.expect(
        &Tcp::syn("10.0.0.5", SERVER).build(),
        XDP_DROP,
        &[R_BLOCKED],
    );
    assert_eq!(p.rule("10.0.0.0/8").unwrap().hits, 1);
}

/// Events are rate-limited per CPU (bans still happen) and a full ring buffer is counted.
#[test]
fn ban_events_are_rate_limited_and_a_full_ring_is_counted() {
    require_root!();
    let mut p = Prog::with_options(
        // No attack mode here: only ban events.
        settings(&[
            ("syn-rate", "1"),
            ("syn-burst", "1"),
            ("attack-syn-rate", "100000000"),
        ]),
        &LoadOptions {
            // 4 KiB holds about 56 events.
            max_entries: vec![(map_names::EVENTS, 4096)],
            ..Default::default()
        },
    );
    // The limit is per CPU (1000 events a second, 100 at once): one CPU, and the time
    // the bans took, which on a slow machine (an emulated kernel) refills the budget.
    one_cpu();
    let syns: Vec<Vec<u8>> = (0..150u32)
        .map(|i| Tcp::syn(&format!("198.18.{}.{}", i / 200, i % 200 + 1), SERVER).build())
        .collect();
    let start = Instant::now();
    for syn in &syns {
        p.run(syn);
        p.run(syn);
    }
    let took_ms = start.elapsed().as_millis() as u64;
    let c = p.counters();
    assert_eq!(c[N_BANS], 150, "every source banned");
    assert_eq!(p.rules().len(), 150);
    let events = drain_events(&mut p);
    assert!(
        (50..=60).contains(&events.len()),
        "the ring held what fit: {}",
        events.len()
    );
    assert!(c[N_EVENTS_LOST] >= 40, "lost: {}", c[N_EVENTS_LOST]);
    // At most the burst (101 events: the first, and 100 more of tolerance) and one more
    // per millisecond went, by the program's clock, which moves in ticks of the kernel's
    // jiffies (4 ms at HZ=250, 10 ms at HZ=100): one tick of slack.
    let sent_at_most = 101 + took_ms + 10;
    let suppressed_at_least = 150u64.saturating_sub(sent_at_most);
    if suppressed_at_least == 0 {
        eprintln!("the 150 bans took {took_ms} ms: too slow here to exhaust the event budget");
    }
    assert!(
        c[N_EVENTS_SUPPRESSED] >= suppressed_at_least,
        "suppressed: {} (at least {suppressed_at_least} after {took_ms} ms)",
        c[N_EVENTS_SUPPRESSED]
    );
    assert_eq!(
        events.len() as u64 + c[N_EVENTS_LOST] + c[N_EVENTS_SUPPRESSED],
        150,
        "each ban was sent, lost or suppressed"
    );
}

/// The walk of the sources table (through its memory mapping) sees every tracked source
/// exactly once, with its bucket. A third source hashed into a set of two (about one run
/// in sixty with 3000 sources) takes a refilled slot or passes untracked: counted.
#[test]
fn walk_of_the_sources_table() {
    require_root!();
    // 3000 SYNs in a few milliseconds start attack mode, where quiet sources skip the
    // table (see `cookies::attack_mode_meters_only_sources_the_sketch_finds_loud`).
    let p = Prog::new(settings(&[
        ("syn-rate", "1000"),
        ("syn-burst", "1000"),
        ("attack-syn-rate", "100000000"),
    ]));
    for i in 0..3000u32 {
        let src = format!("198.18.{}.{}", i / 250, i % 250 + 1);
        p.run(&Tcp::syn(&src, SERVER).build());
    }
    let mut seen = std::collections::HashSet::new();
    let now = synguard::clock::monotonic_ns();
    let n = synguard::sources::for_each(&p.loaded.maps, now, |k, v| {
        assert_eq!(v.syns, 1);
        assert!(seen.insert(*k), "seen twice: {k:?}");
    })
    .unwrap();
    let c = p.counters();
    assert_eq!(n, seen.len());
    assert_eq!(
        n as u64 + c[N_SOURCES_RECYCLED] + c[R_SYN_UNTRACKED],
        3000,
        "every source tracked, or counted as not"
    );
    assert!(
        n >= 2990,
        "only a rare third source per set is missing: {n}"
    );
    // An empty table is fine too.
    let empty = limited("1", "1");
    assert_eq!(
        synguard::sources::for_each(&empty.loaded.maps, now, |_, _| ()).unwrap(),
        0
    );
}

/// The proofs `run` makes from a host's connections are made a share at a time (4,096 a
/// second), so a server with a hundred thousand connections never spends a second of
/// `run`'s loop on them; each share sets the proof filter's bits (the program looks a
/// source up only then), and a ban of a source proven so is lifted.
#[test]
fn proofs_of_connections_are_made_a_share_at_a_time() {
    require_root!();
    let mut p = Prog::new(Settings::default());
    let now = synguard::clock::monotonic_ns();
    // 10,000 peers (in 10.0.0.0/8, never sent anything), one of them banned.
    let mut queue: Vec<std::net::IpAddr> = (0..10_000u32)
        .map(|i| std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let banned: ipnet::IpNet = "10.0.0.1/32".parse().expect("cidr");
    let ban = Rule::new(RULE_BAN, ACTION_DROP, now, now + 60_000_000_000);
    rules::put(&mut p.loaded.maps, &banned, &ban).expect("ban");
    let count = |p: &Prog| {
        synguard::batch::for_each(&p.loaded.maps.verified, 512, |_, _| ()).expect("proofs")
    };
    let mut lifted = Vec::new();
    for (round, want) in [(1, 4096), (2, 8192), (3, 10_000), (4, 10_000)] {
        lifted.extend(
            synguard::proofs::prove_peers(&mut p.loaded.maps, &p.settings, now, &mut queue)
                .expect("prove"),
        );
        assert_eq!(count(&p), want, "after share {round}");
        assert_eq!(queue.len(), 10_000 - want, "left after share {round}");
    }
    assert_eq!(lifted, vec![banned], "the proven source's ban lifted");
    assert!(p.rule("10.0.0.1/32").is_none());
    // A proven peer's SYN over its limit is challenged, not banned: the filter bit is set.
    let key = source_key("10.0.0.77".parse().expect("addr"), 32);
    let (row, word, bit) = sources::proof_filter_bit(sources::set_of(
        &key,
        &synguard::sources::seed(&p.loaded.maps).expect("seed"),
    ));
    let words = p.loaded.maps.proof_filter.get(&row, 0).expect("filter row");
    assert_ne!(words[word] & bit, 0, "filter bit set");
}

/// A CrowdSec decision enforced before, whose prefix now covers one of the machine's own
/// addresses, gateways or resolvers (a new gateway, say), is lifted at the next pull: no
/// decision ever cuts the machine off its own network, whenever it became one.
#[test]
fn a_crowdsec_decision_covering_a_protected_address_is_lifted() {
    require_root!();
    use synguard::crowdsec::{Settings as CsSettings, decisions::Decision, enforce::Crowdsec};
    let mut p = Prog::new(Settings::default());
    let dir = std::env::temp_dir().join(format!("sg-cs-lift-{}", std::process::id()));
    // The writers' lock is taken on the pin directory's `maps/` (none pinned here).
    std::fs::create_dir_all(dir.join("maps")).expect("lock directory");
    let settings = CsSettings {
        url: "http://192.0.2.5:8080".into(),
        ..CsSettings::default()
    };
    let mut cs = Crowdsec::new(settings, dir.clone(), dir.clone(), None);
    let decision = Decision {
        id: 1,
        origin: "cscli".into(),
        kind: "ban".into(),
        scope: "Range".into(),
        value: "198.18.0.0/24".into(),
        duration: "1h".into(),
        scenario: "test".into(),
        simulated: None,
    };
    let now = synguard::clock::monotonic_ns();
    let a = cs
        .apply(
            true,
            vec![decision.clone()],
            &[],
            now,
            &mut p.loaded.maps,
            &[],
        )
        .expect("apply");
    assert_eq!(a.put, 1);
    assert_eq!(
        p.rule("198.18.0.0/24").map(|r| r.kind),
        Some(synguard_common::RULE_CROWDSEC)
    );
    // The machine's gateway is inside it now.
    let gateway: std::net::IpAddr = "198.18.0.1".parse().expect("addr");
    let a = cs
        .apply(
            true,
            vec![decision],
            &[],
            now,
            &mut p.loaded.maps,
            &[gateway],
        )
        .expect("apply");
    assert_eq!(a.lifted, 1, "{a:?}");
    assert!(p.rule("198.18.0.0/24").is_none(), "lifted");
    let _ = std::fs::remove_dir_all(dir);
}
