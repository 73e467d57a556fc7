//! `synguard analyze` as an analyst runs it: the real binary on captures recorded with
//! tcpdump during lab floods (tests/fixtures, see its README), on the same captures as
//! pcapng, from stdin, and on captures that are cut short, corrupt or not captures at all.
//! No root and no network needed.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use synguard_tests::kit::{netns::TempDir, synguard_bin, synth};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn analyze(args: &[&str]) -> Output {
    Command::new(synguard_bin())
        .arg("analyze")
        .args(args)
        .output()
        .expect("run synguard analyze")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON report of a capture that reads cleanly (exit code 0).
fn report(path: &Path, extra: &[&str]) -> Value {
    let p = path.to_str().expect("utf-8 path");
    let mut args = vec![p, "--format", "json"];
    args.extend_from_slice(extra);
    let o = analyze(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "analyze {p}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("analyze {p}: not JSON ({e}): {}", stdout(&o)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn any_contains(v: &Value, needle: &str) -> bool {
    strings(v).iter().any(|s| s.contains(needle))
}

/// The one attack in a report, or a panic showing the report.
fn only_attack(r: &Value) -> &Value {
    let attacks = r["attacks"].as_array().expect("attacks");
    assert_eq!(attacks.len(), 1, "one flood expected: {r:#}");
    &attacks[0]
}

// --- the recorded captures ---------------------------------------------------------------

#[test]
fn single_source_flood_names_the_attacker_and_its_ban() {
    let r = report(&fixture("single-source.pcap"), &[]);
    assert_eq!(r["origin"], "capture");
    let a = only_attack(&r);
    assert_eq!(a["kind"], "single_source", "{r:#}");
    assert_eq!(a["target"], "192.0.2.1:80");
    assert!(a["syns"].as_u64().expect("syns") > 2000, "{a:#}");
    // The agent's rule: banned once its burst (syn-burst 100) is spent.
    assert!(
        any_contains(&a["evidence"], "the agent would ban 203.0.113.0"),
        "{a:#}"
    );
    assert_eq!(r["top_sources"][0]["source"], "203.0.113.0", "{r:#}");
    assert!(
        r["top_sources"][0]["verdict"]
            .as_str()
            .is_some_and(|v| v.contains("would be banned")),
        "{r:#}"
    );
    assert!(
        r["drops"]
            .as_array()
            .expect("drops")
            .iter()
            .any(|d| d["reason"] == "syn_limited" && d["packets"] == 1),
        "one SYN over the bucket starts the ban, the rest hit the ban: {r:#}"
    );
    assert!(any_contains(&r["summary"], "SYN 2"), "{r:#}");
}

#[test]
fn forged_flood_reports_the_spread_and_the_hurt_clients() {
    let r = report(&fixture("forged-v4.pcap"), &[]);
    let a = only_attack(&r);
    assert_eq!(a["kind"], "forged_sources", "{r:#}");
    assert_eq!(a["target"], "192.0.2.1:80");
    assert!(
        any_contains(&a["evidence"], "spread over 198.18.0.0/15"),
        "{a:#}"
    );
    assert!(a["sources"].as_u64().expect("sources") > 3000, "{a:#}");
    assert!(
        any_contains(&a["evidence"], "attack mode would start"),
        "{a:#}"
    );
    assert!(
        any_contains(&r["summary"], "forged: 3"),
        "the summary names no source but says forged, with the count: {r:#}"
    );
    // The legacy server (no SYN cookies, backlog 128) dropped the employees' SYNs once
    // the flood filled its queue: they retransmitted after 1 s.
    assert!(
        any_contains(&r["impact"], "SYNs retransmitted by legitimate clients"),
        "{r:#}"
    );
    assert!(any_contains(&r["impact"], "198.51.100.1"), "{r:#}");
    let syn = r["peaks"]["syn_rate"].as_u64().expect("peak");
    assert!((2000..4000).contains(&syn), "offered 2500 SYN/s: {syn}");
    // The chart's series: attack mode on during the flood, cookies answered.
    let series = r["series"].as_array().expect("series");
    assert!(series.iter().any(|p| p["attack"] == true), "{series:?}");
    assert!(
        series
            .iter()
            .any(|p| p["answered_rate"].as_f64() > Some(1000.0)),
        "{series:?}"
    );
}

#[test]
fn ipv6_forged_flood_is_one_rotation_attack_over_a_33() {
    let r = report(&fixture("forged-v6.pcap"), &[]);
    let a = only_attack(&r);
    assert_eq!(a["kind"], "ipv6_rotation", "{r:#}");
    assert_eq!(a["target"], "[2001:db8:2::1]:80");
    assert!(
        any_contains(&a["evidence"], "spread over 2001:db8:8000::/33"),
        "{a:#}"
    );
    // Sources are /64s (ipv6-prefix): the employees' /64 is one legitimate source.
    assert!(any_contains(&r["impact"], "1 legitimate client "), "{r:#}");
    // With /48 sources, the rotation collapses onto fewer keys, still forged.
    let r48 = report(&fixture("forged-v6.pcap"), &["--ipv6-prefix", "48"]);
    let a48 = only_attack(&r48);
    assert!(
        a48["sources"].as_u64() < a["sources"].as_u64(),
        "{a48:#} vs {a:#}"
    );
}

#[test]
fn connection_flood_from_real_sources_is_told_apart() {
    let r = report(&fixture("many-sources.pcap"), &[]);
    let a = only_attack(&r);
    assert_eq!(a["kind"], "connection_flood", "{r:#}");
    assert!(
        any_contains(&r["summary"], "Connection flood on 192.0.2.1:80"),
        "{r:#}"
    );
    assert!(
        any_contains(&r["summary"], "254 sources, the busiest "),
        "{r:#}"
    );
    assert_eq!(r["top_prefixes"][0]["prefix"], "203.0.113.0/24", "{r:#}");
    assert!(
        any_contains(&r["recommendations"], "limit_conn"),
        "SYN limits do not stop it: {r:#}"
    );
}

#[test]
fn clean_capture_is_not_an_attack() {
    let r = report(&fixture("clean.pcap"), &[]);
    assert_eq!(r["attacks"], Value::Array(vec![]), "{r:#}");
    assert!(any_contains(&r["summary"], "No SYN flood"), "{r:#}");
    assert!(r["drops"].as_array().is_none_or(Vec::is_empty), "{r:#}");
    assert!(any_contains(&r["impact"], "0 of them were hurt"), "{r:#}");
    assert!(r["warnings"].as_array().is_none_or(Vec::is_empty), "{r:#}");
}

#[test]
fn linux_cooked_capture_with_ipv4_ipv6_and_a_refused_connection() {
    let r = report(&fixture("any-sll2.pcap"), &[]);
    assert_eq!(r["attacks"], Value::Array(vec![]), "{r:#}");
    assert!(
        any_contains(
            &r["summary"],
            "SYN 7, SYN-ACK 6, RST 1 (1 from the server); 6 handshakes completed, 1 never \
             completed"
        ),
        "{r:#}"
    );
    assert!(any_contains(&r["impact"], "200: 3, 404: 3"), "{r:#}");
    assert!(
        any_contains(&r["impact"], "2 legitimate clients"),
        "192.0.2.1 and 2001:db8:2::/64: {r:#}"
    );
    assert!(
        any_contains(
            &r["impact"],
            "192.0.2.1: 1 handshake never completed, 1 reset"
        ),
        "{r:#}"
    );
}

#[test]
fn thresholds_given_as_flags_change_the_verdict() {
    // 2500 SYN/s forged: under an attack-syn-rate of 10000 nothing fires.
    let r = report(&fixture("forged-v4.pcap"), &["--attack-syn-rate", "10000"]);
    assert_eq!(r["attacks"], Value::Array(vec![]), "{r:#}");
    // The single source is under a syn-burst of 5000 and under attack-syn-rate: passed.
    let r = report(
        &fixture("single-source.pcap"),
        &["--syn-burst", "5000", "--attack-syn-rate", "1000000"],
    );
    assert_eq!(r["attacks"], Value::Array(vec![]), "{r:#}");
    // A bad value is a usage error.
    let o = analyze(&[
        fixture("clean.pcap").to_str().expect("utf-8"),
        "--syn-rate",
        "lots",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("syn-rate"), "{}", stderr(&o));
}

#[test]
fn markdown_report_with_chart_to_a_file() {
    let dir = TempDir::new("an");
    let out = dir.path.join("forged.md");
    let o = analyze(&[
        fixture("forged-v4.pcap").to_str().expect("utf-8"),
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let md = String::from_utf8(read(&out)).expect("utf-8");
    for needle in [
        "# SYN flood analysis",
        "## Attack type",
        "**forged sources**",
        "## Impact on legitimate traffic",
        "![",
    ] {
        assert!(md.contains(needle), "{needle:?} missing:\n{md}");
    }
    let svg = String::from_utf8(read(&out.with_extension("svg"))).expect("utf-8");
    assert!(svg.starts_with("<svg"), "{svg}");
}

#[test]
fn pcapng_and_stdin_give_the_same_analysis() {
    let dir = TempDir::new("an");
    let ng = dir.path.join("forged.pcapng");
    write(&ng, &to_pcapng(&read(&fixture("forged-v4.pcap"))));
    let a = report(&fixture("forged-v4.pcap"), &[]);
    let b = report(&ng, &[]);
    assert_eq!(a["attacks"], b["attacks"]);
    assert_eq!(a["top_sources"], b["top_sources"]);
    assert_eq!(a["impact"], b["impact"]);
    assert!(any_contains(&b["summary"], "(pcapng)"), "{b:#}");

    let mut child = Command::new(synguard_bin())
        .args(["analyze", "-", "--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn synguard analyze -");
    let bytes = read(&fixture("forged-v4.pcap"));
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || stdin.write_all(&bytes));
    let o = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder").expect("write stdin");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(a["attacks"], c["attacks"]);
    assert_eq!(c["input"], "stdin");
}

// --- input that is not all readable -----------------------------------------------------

/// Exit code 2, an error on stderr containing `needle`, and no report.
fn refused(bytes: &[u8], needle: &str) {
    let dir = TempDir::new("an");
    let f = dir.path.join("bad.pcap");
    write(&f, bytes);
    let o = analyze(&[f.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(o.stdout.is_empty(), "no report expected: {}", stdout(&o));
    assert!(stderr(&o).contains(needle), "{needle:?}: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// Exit code 2 with an error containing `needle`, after a JSON report of what could be
/// read, which says so in its warnings; returns the report.
fn partial(bytes: &[u8], name: &str, needle: &str) -> Value {
    let dir = TempDir::new("an");
    let f = dir.path.join(name);
    write(&f, bytes);
    let o = analyze(&[f.to_str().expect("utf-8"), "--format", "json"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(needle), "{needle:?}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("Only part of the capture was analysed"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("a partial report expected ({e}): {}", stdout(&o)));
    assert!(any_contains(&r["warnings"], needle), "{r:#}");
    r
}

/// The packet count in the summary's first line ("NAME: N packets ...").
fn packets(r: &Value) -> u64 {
    let first = strings(&r["summary"])
        .into_iter()
        .next()
        .unwrap_or_default();
    first
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {first:?}"))
}

#[test]
fn not_a_capture_is_refused() {
    refused(b"", "is empty");
    refused(b"\xd4\xc3", "only 2 bytes long");
    refused(
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        "is not a pcap or pcapng capture: it starts with 47 45 54",
    );
    refused(&[0x55; 4096], "not a pcap or pcapng capture");
    // A pcap file header cut short.
    refused(
        &read(&fixture("clean.pcap"))[..16],
        "ends inside its file header",
    );
    let dir = TempDir::new("an");
    let o = analyze(&[dir.path.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let o = analyze(&["/nonexistent/flood.pcap"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot open"), "{}", stderr(&o));
}

#[test]
fn capture_cut_mid_record_reports_what_was_read() {
    let full = read(&fixture("single-source.pcap"));
    let whole = report(&fixture("single-source.pcap"), &[]);
    // Cut in the middle of a record's data, two thirds in.
    let cut = record_offsets(&full)[2000] + 16 + 20;
    let r = partial(
        &full[..cut],
        "cut.pcap",
        "capture truncated after 2000 packets",
    );
    assert_eq!(packets(&r), 2000);
    assert!(packets(&whole) > 2000);
    // What was read is still analysed: the flood had begun by then.
    assert_eq!(only_attack(&r)["kind"], "single_source", "{r:#}");
    // Cut inside a record header.
    let cut = record_offsets(&full)[10] + 7;
    let r = partial(&full[..cut], "cut2.pcap", "truncated after 10 packets");
    assert_eq!(packets(&r), 10);
}

#[test]
fn pcap_record_with_an_absurd_length_stops_there() {
    let mut bytes = read(&fixture("clean.pcap"));
    let at = record_offsets(&bytes)[100];
    // incl_len: 3 GiB.
    bytes[at + 8..at + 12].copy_from_slice(&0xc000_0000u32.to_le_bytes());
    let r = partial(&bytes, "absurd.pcap", "after 100 packets");
    assert_eq!(packets(&r), 100);
}

#[test]
fn pcapng_block_with_a_bad_length_stops_there() {
    let ng = to_pcapng(&read(&fixture("forged-v4.pcap")));
    let blocks = block_offsets(&ng);
    // Blocks: section header, interface, then one per packet.
    let epb = blocks[2 + 500];
    // A length shorter than any enhanced packet block can be.
    let mut short = ng.clone();
    short[epb + 4..epb + 8].copy_from_slice(&12u32.to_le_bytes());
    let r = partial(&short, "short.pcapng", "after 500 packets");
    assert_eq!(packets(&r), 500);
    // A length that runs past the end of the file.
    let mut long = ng.clone();
    long[epb + 4..epb + 8].copy_from_slice(&0x0100_0000u32.to_le_bytes());
    let r = partial(&long, "long.pcapng", "after 500 packets");
    assert_eq!(packets(&r), 500);
    // A length that does not match its trailing copy.
    let mut odd = ng;
    let len = u32::from_le_bytes(odd[epb + 4..epb + 8].try_into().expect("4 bytes"));
    odd[epb + 4..epb + 8].copy_from_slice(&(len + 4).to_le_bytes());
    let r = partial(&odd, "odd.pcapng", "after 500 packets");
    assert_eq!(packets(&r), 500);
}

#[test]
fn random_damage_never_panics() {
    let full = read(&fixture("forged-v6.pcap"));
    let ng = to_pcapng(&full);
    let dir = TempDir::new("an");
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for (i, base) in [&full, &ng, &full, &ng, &full, &ng].into_iter().enumerate() {
        let mut bytes = base.clone();
        // A few bytes overwritten past the file header, some cut off the end.
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 40 + (x as usize % (bytes.len() - 40));
            bytes[at] = (x >> 32) as u8;
        }
        bytes.truncate(bytes.len() - (x as usize % 5000));
        let f = dir.path.join(format!("damaged{i}"));
        write(&f, &bytes);
        let o = analyze(&[f.to_str().expect("utf-8"), "--format", "json"]);
        assert!(
            matches!(o.status.code(), Some(0 | 2)),
            "damaged{i}: {:?} {}",
            o.status,
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        let r: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("damaged{i}: a report expected ({e}): {}", stderr(&o)));
        assert!(packets(&r) > 0, "{r:#}");
    }
}

// --- bounded memory ----------------------------------------------------------------------

#[test]
fn more_sources_than_the_tables_hold_are_counted_and_said() {
    // 300,000 forged IPv6 sources in 2001:db8::/32, each its own /64: more than the
    // per-source table holds (200,000).
    let dir = TempDir::new("an");
    let f = dir.path.join("many.pcap");
    let sc = synth::Scenario {
        employees: 5,
        v6: true,
        attack: synth::Attack::Forged("2001:db8::/32".parse().expect("prefix")),
        attack_rate: 100_000,
        attack_from: std::time::Duration::from_secs(1),
        attack_for: std::time::Duration::from_secs(3),
        duration: std::time::Duration::from_secs(5),
        ..synth::Scenario::default()
    };
    synth::write(&f, &sc).expect("write the synthetic capture");
    let r = report(&f, &[]);
    let a = only_attack(&r);
    assert_eq!(a["kind"], "ipv6_rotation", "{r:#}");
    let sources = a["sources"].as_u64().expect("sources");
    assert!(
        (285_000..315_000).contains(&sources),
        "about 300000 distinct sources (estimated): {sources}"
    );
    assert!(
        any_contains(&r["warnings"], "were forgotten to bound memory"),
        "{r:#}"
    );
    // The employees' /64 is notable (it completes handshakes): never forgotten.
    assert!(any_contains(&r["impact"], "1 legitimate client "), "{r:#}");
}

/// A flood carrying a real client's address (it completes handshakes before and during):
/// named a spoofed source, the client listed as most likely forged, challenged rather than
/// banned by the replayed agent, and the report does not advise blocking it.
#[test]
fn a_flood_in_a_real_clients_name_is_called_forged() {
    let dir = TempDir::new("an");
    let f = dir.path.join("spoofed.pcap");
    let victim = "198.51.100.10";
    let sc = synth::Scenario {
        employees: 5,
        attack: synth::Attack::Single(victim.parse().expect("address")),
        attack_rate: 3_000,
        ..synth::Scenario::default()
    };
    synth::write(&f, &sc).expect("write the synthetic capture");
    let r = report(&f, &[]);
    let a = only_attack(&r);
    assert_eq!(a["kind"], "spoofed_source", "{r:#}");
    assert!(
        any_contains(
            &a["evidence"],
            "the flood carries its address, not its packets"
        ),
        "{r:#}"
    );
    let forged = r["forged"].as_array().expect("forged");
    assert_eq!(forged.len(), 1, "{r:#}");
    assert_eq!(forged[0]["source"], victim);
    assert!(
        forged[0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("handshakes with the server")),
        "{r:#}"
    );
    assert!(
        !any_contains(&r["recommendations"], "block it for longer"),
        "{r:#}"
    );
    assert!(
        any_contains(&r["recommendations"], "not block the address"),
        "{r:#}"
    );
    let drops = r["drops"].as_array().expect("drops");
    assert!(
        drops.iter().all(|d| d["reason"] != "banned"),
        "the victim is never banned: {r:#}"
    );

    // The same flood from an address that never completes a handshake: a single source,
    // banned.
    let sc = synth::Scenario {
        attack: synth::Attack::Single("203.0.113.66".parse().expect("address")),
        ..sc
    };
    synth::write(&f, &sc).expect("write the synthetic capture");
    let r = report(&f, &[]);
    assert_eq!(only_attack(&r)["kind"], "single_source", "{r:#}");
    assert!(r["forged"].as_array().expect("forged").is_empty(), "{r:#}");
}

// --- capture file helpers ----------------------------------------------------------------

/// Byte offsets of the records of a little-endian pcap file.
fn record_offsets(pcap: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        out.push(at);
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4 bytes"));
        at += 16 + len as usize;
    }
    out
}

/// Byte offsets of the blocks of a little-endian pcapng file.
fn block_offsets(ng: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= ng.len() {
        out.push(at);
        let len = u32::from_le_bytes(ng[at + 4..at + 8].try_into().expect("4 bytes"));
        at += len as usize;
    }
    out
}

/// The same packets as pcapng, as Wireshark writes it: a section header, one interface
/// (the pcap's link type and snap length, microsecond time stamps), one enhanced packet
/// block per record.
fn to_pcapng(pcap: &[u8]) -> Vec<u8> {
    assert_eq!(
        &pcap[..4],
        &0xa1b2_c3d4u32.to_le_bytes(),
        "a little-endian µs pcap"
    );
    let snaplen = &pcap[16..20];
    let linktype = &pcap[20..22];
    let mut ng = Vec::with_capacity(pcap.len() * 2);
    let block = |ng: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let pad = (4 - body.len() % 4) % 4;
        let len = (12 + body.len() + pad) as u32;
        ng.extend_from_slice(&kind.to_le_bytes());
        ng.extend_from_slice(&len.to_le_bytes());
        ng.extend_from_slice(body);
        ng.extend(std::iter::repeat_n(0, pad));
        ng.extend_from_slice(&len.to_le_bytes());
    };
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut ng, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(linktype);
    idb.extend_from_slice(&[0, 0]);
    idb.extend_from_slice(snaplen);
    block(&mut ng, 1, &idb);
    for at in record_offsets(pcap) {
        let h = &pcap[at..at + 16];
        let sec = u64::from(u32::from_le_bytes(h[0..4].try_into().expect("4")));
        let usec = u64::from(u32::from_le_bytes(h[4..8].try_into().expect("4")));
        let caplen = u32::from_le_bytes(h[8..12].try_into().expect("4"));
        let Some(data) = pcap.get(at + 16..at + 16 + caplen as usize) else {
            break;
        };
        let ts = sec * 1_000_000 + usec;
        let mut epb = Vec::with_capacity(20 + data.len());
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ts as u32).to_le_bytes());
        epb.extend_from_slice(&caplen.to_le_bytes());
        epb.extend_from_slice(&h[12..16]);
        epb.extend_from_slice(data);
        block(&mut ng, 6, &epb);
    }
    ng
}
