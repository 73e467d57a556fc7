//! Upgrades: a `run` of this version finds pins left by another version of synguard,
//! whose maps have another layout, with its program still attached and protecting. It
//! must take the program's place without a gap and keep what it can read, or refuse a
//! newer layout saying what to do; `detach` works whatever the layout.
//!
//! The old state is made the way an older `run --keep` leaves it: every map pinned, the
//! program attached through a pinned link, `tcp_syncookies` set by its attack mode. Maps
//! whose layout changed get that layout, written here from the old version's definition
//! (layout 15: `git show 4199912:synguard-common/src/lib.rs`), byte by byte, not through
//! the product's own reader.

use std::{path::Path, time::Duration};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use synguard::{
    bpf::{LoadOptions, Loaded},
    pins, rules,
};
use synguard_common::{
    PORT_WORDS, RULE_ALLOW, RULE_BAN, RULE_BLOCK, Rule, map_names, sources::SEED_WORDS,
};
use synguard_tests::{
    kit::topo::{Lab, synguard_in},
    require_root,
};

/// Layout 15's config: 168 bytes and the ports' words.
const CONFIG_V15: usize = 168 + 8 * PORT_WORDS;
/// Layout 15's per-CPU stats: 39 counters and 7 words.
const STATS_V15: usize = 8 * (39 + 7);
const SEED: [u64; SEED_WORDS] = [0x1111, 0x2222, 0x3333, 0x4444];

/// Layout 15's config bytes: its ABI, generation, saved `tcp_syncookies` and
/// `tcp_timestamps`, calm period and the sources table's key, at that layout's offsets.
fn config_v15(abi: u32) -> [u8; CONFIG_V15] {
    let mut b = [0u8; CONFIG_V15];
    b[0..4].copy_from_slice(&abi.to_ne_bytes());
    b[88..96].copy_from_slice(&41u64.to_ne_bytes()); // generation
    b[108..112].copy_from_slice(&1i32.to_ne_bytes()); // saved_syncookies
    b[112..120].copy_from_slice(&10_000_000_000u64.to_ne_bytes()); // attack_calm_ns
    b[120..124].copy_from_slice(&(-1i32).to_ne_bytes()); // saved_timestamps
    let seed = 136 + 8 * PORT_WORDS;
    for (i, w) in SEED.iter().enumerate() {
        b[seed + 8 * i..seed + 8 * i + 8].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// What an older `run --keep` left: its maps pinned in `pin_dir` (the config with
/// `config`'s bytes and layout, the stats in layout 15's size, no `SG_HOST`), its
/// lists, a ban and a proof, and the program attached to the server's `sgc` through a
/// pinned link. Returns the attached program's id.
fn old_state(lab: &Lab, config: Vec<u8>) -> u32 {
    old_state_in_attack(lab, config, false)
}

/// [`old_state`], with `sgc` in attack mode (as the old program's state holds it) if
/// `attack`.
fn old_state_in_attack(lab: &Lab, config: Vec<u8>, attack: bool) -> u32 {
    let pin_dir = lab.pin_dir();
    let ifindex = lab.server.ifindex("sgc");
    lab.server.sysctl("net.ipv4.tcp_syncookies", "2");
    lab.server
        .spawn(move || {
            pins::prepare(&pin_dir).expect("pin dir");
            let mut loaded = Loaded::load(&LoadOptions {
                pin_dir: Some(pin_dir.clone()),
                ..Default::default()
            })
            .expect("load");
            let s = synguard::config::Settings::default();
            loaded.maps.write_config(&s.to_kernel(1)).expect("config");
            let now = synguard::clock::monotonic_ns();
            for (net, kind, expires) in [
                ("203.0.113.7/32", RULE_ALLOW, 0),
                ("198.51.100.66/32", RULE_BLOCK, 0),
                ("198.18.5.5/32", RULE_BAN, now + 3_600_000_000_000),
            ] {
                let mut r = rules::manual(kind, expires, "kept");
                if kind == RULE_BAN {
                    r = Rule::new(RULE_BAN, synguard_common::ACTION_DROP, now, expires);
                }
                rules::put(&mut loaded.maps, &net.parse().expect("cidr"), &r).expect("rule");
            }
            let key = synguard::net::source_key("198.51.100.9".parse().expect("addr"), 32, 64);
            synguard::proofs::record(
                &mut loaded.maps,
                &key,
                synguard_common::PROOF_HANDSHAKE,
                now + 3_600_000_000_000,
                now,
            )
            .expect("proof");
            // The program attached, its link pinned where `run` pins it.
            let prog = loaded.program_mut().expect("program");
            let id = prog
                .attach_to_if_index(ifindex, XdpMode::Skb)
                .expect("attach");
            let link = FdLink::try_from(prog.take_link(id).expect("link")).expect("fd link");
            let prog_id = link.info().expect("link info").program_id();
            if attack {
                let slot = synguard_common::capacity::stats_slot(ifindex);
                let mut st = loaded.maps.ifstate(slot).expect("ifstate");
                st.attack = 1;
                st.since_ns = now;
                st.rate = 50_000;
                st.rate_ns = now;
                st.peak_rate = 50_000;
                loaded.maps.ifstate.set(slot, st, 0).expect("ifstate");
            }
            link.pin(pins::link_path(&pin_dir, ifindex, "sgc"))
                .expect("pin link");
            // The maps of the old layout in place of this version's.
            let maps = synguard::bpf::maps_dir(&pin_dir);
            for name in [map_names::CONFIG, map_names::STATS, map_names::HOST] {
                std::fs::remove_file(maps.join(name)).expect("unpin");
            }
            if config.len() == CONFIG_V15 {
                let mut cfg =
                    Array::<MapData, [u8; CONFIG_V15]>::create(1, 0).expect("old config map");
                let mut bytes = [0u8; CONFIG_V15];
                bytes.copy_from_slice(&config);
                cfg.set(0, bytes, 0).expect("old config");
                cfg.pin(maps.join(map_names::CONFIG))
                    .expect("pin old config");
            } else {
                // Some other layout's: 64 bytes.
                let mut cfg = Array::<MapData, [u8; 64]>::create(1, 0).expect("old config map");
                let mut bytes = [0u8; 64];
                bytes.copy_from_slice(&config[..64]);
                cfg.set(0, bytes, 0).expect("old config");
                cfg.pin(maps.join(map_names::CONFIG))
                    .expect("pin old config");
            }
            PerCpuArray::<MapData, [u8; STATS_V15]>::create(1024, 0)
                .expect("old stats map")
                .pin(maps.join(map_names::STATS))
                .expect("pin old stats");
            prog_id
        })
        .join()
        .expect("old state")
}

fn attached_program(lab: &Lab) -> u32 {
    let (_, _, path) = pins::pinned_links(&lab.pin_dir())
        .into_iter()
        .next()
        .expect("a pinned link");
    let link = FdLink::from(PinnedLink::from_pin(&path).expect("pinned link"));
    link.info().expect("link info").program_id()
}

fn syncookies(lab: &Lab) -> String {
    let out = lab
        .server
        .exec(&["cat", "/proc/sys/net/ipv4/tcp_syncookies"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `synguard ARGS` in the server's namespace (where the settings it restores live).
fn sg_server(lab: &Lab, args: &[&str]) -> std::process::Output {
    synguard_in(&lab.server, &[], &lab.pin_dir(), &lab.state.path)
        .args(args)
        .output()
        .expect("synguard")
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_gone(pin_dir: &Path) {
    assert!(pins::pinned_links(pin_dir).is_empty(), "links unpinned");
    assert!(
        !synguard::bpf::maps_dir(pin_dir).exists()
            || std::fs::read_dir(synguard::bpf::maps_dir(pin_dir))
                .expect("maps dir")
                .next()
                .is_none(),
        "maps unpinned"
    );
}

/// Layout 15's state, its program attached and `tcp_syncookies` set by its attack mode:
/// the new `run` swaps its program into the same link, keeps the lists, the ban, the
/// proof and the sources table's key, takes the saved `tcp_syncookies` over (and, no
/// attack being on, restores it), and every command works on the upgraded state.
#[test]
fn run_upgrades_an_older_layout_in_place_keeping_what_it_can_read() {
    require_root!();
    let lab = Lab::minimal();
    let old_prog = old_state(&lab, config_v15(15).to_vec());
    assert_eq!(attached_program(&lab), old_prog);
    // The CLI of this version says what to do with the old state.
    let out = lab.sg(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("older synguard (map layout 15") && err.contains("restart `synguard run`"),
        "{err}"
    );

    let d = lab.daemon(&["run", "--iface", "sgc"]);
    let log = d.log_text();
    assert!(
        log.contains("upgraded the pinned state from map layout 15 to"),
        "{log}"
    );
    assert_ne!(
        attached_program(&lab),
        old_prog,
        "the new program swapped in"
    );
    let blocks = lab.json(&["block", "list"]).to_string();
    assert!(
        blocks.contains("198.51.100.66/32") && blocks.contains("198.18.5.5/32"),
        "{blocks}"
    );
    let allows = lab.json(&["allow", "list"]).to_string();
    assert!(allows.contains("203.0.113.7/32"), "{allows}");
    let proven = lab.json(&["explain", "198.51.100.9"]).to_string();
    assert!(proven.contains("completed a handshake"), "{proven}");
    let maps = synguard::bpf::Maps::from_pins(&lab.pin_dir()).expect("maps");
    let cfg = maps.read_config().expect("config");
    assert_eq!(
        cfg.source_seed, SEED,
        "the sources table's key carried over"
    );
    assert!(cfg.generation > 41);
    // No attack now: the saved value is put back.
    wait_for("tcp_syncookies restored", Duration::from_secs(3), || {
        syncookies(&lab) == "1"
    });
    drop(d);
}

/// An upgrade that fails before the new program is in every link (here: the second
/// interface has another XDP program) leaves the old state as it was: its pins back in
/// place, its program attached; `detach` then restores the settings its config saved.
#[test]
fn a_failed_upgrade_puts_the_old_state_back() {
    require_root!();
    let lab = Lab::minimal();
    let old_prog = old_state(&lab, config_v15(15).to_vec());
    let _busy = synguard_tests::kit::topo::xdp_peer(&lab.server, "sga").expect("busy sga");
    let out = sg_server(&lab, &["run", "--iface", "sgc", "--iface", "sga"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has another XDP program"),
        "{out:?}"
    );
    assert_eq!(attached_program(&lab), old_prog, "the old program stays");
    let err = String::from_utf8_lossy(&lab.sg(&["status"]).stderr).into_owned();
    assert!(
        err.contains("map layout 15"),
        "the old config is back: {err}"
    );
    let maps = synguard::bpf::maps_dir(&lab.pin_dir());
    let aside: Vec<_> = std::fs::read_dir(&maps)
        .expect("maps dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("OLD_"))
        .collect();
    assert!(aside.is_empty(), "nothing left aside");
    let out = sg_server(&lab, &["detach"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(syncookies(&lab), "1", "restored from the old config");
}

/// An upgrade during an attack: the settings the old version set stay set (the new
/// keeper owns them), rather than being put back and set again.
#[test]
fn an_upgrade_during_an_attack_keeps_the_host_settings() {
    require_root!();
    let lab = Lab::minimal();
    old_state_in_attack(&lab, config_v15(15).to_vec(), true);
    let d = lab.daemon(&["run", "--iface", "sgc"]);
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert_eq!(syncookies(&lab), "2", "kept: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!d.log_text().contains("restored"), "{}", d.log_text());
    let maps = synguard::bpf::Maps::from_pins(&lab.pin_dir()).expect("maps");
    let host = maps.read_host().expect("host state");
    assert_eq!(host.saved_syncookies, 1, "the saved value carried over");
    assert_ne!(host.cookies_since_ns, 0, "owned by the keeper");
}

/// `detach` on layout 15's state: the program off the interface, every pin removed, and
/// the saved `tcp_syncookies` put back, read with that layout.
#[test]
fn detach_takes_down_an_older_layouts_state() {
    require_root!();
    let lab = Lab::minimal();
    old_state(&lab, config_v15(15).to_vec());
    let out = sg_server(&lab, &["detach"]);
    assert!(out.status.success(), "{out:?}");
    assert_gone(&lab.pin_dir());
    assert_eq!(syncookies(&lab), "1", "restored from the old config");
}

/// A layout older than any this version reads: `run` starts afresh (saying what was lost)
/// and still swaps its program in; `detach` works and says it cannot restore the
/// settings.
#[test]
fn an_unknown_older_layout_is_replaced_without_a_gap() {
    require_root!();
    let lab = Lab::minimal();
    let old_prog = old_state(&lab, config_v15(9).to_vec()[..64].to_vec());
    let d = lab.daemon(&["run", "--iface", "sgc"]);
    let log = d.log_text();
    assert!(
        log.contains("has map layout 9, older than any this synguard can read"),
        "{log}"
    );
    assert_ne!(attached_program(&lab), old_prog, "swapped in");
    assert_eq!(lab.json(&["block", "list"]), serde_json::json!([]));
    drop(d);
    let lab = Lab::minimal();
    old_state(&lab, config_v15(9).to_vec()[..64].to_vec());
    let out = sg_server(&lab, &["detach"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("put back your own value by hand"),
        "{out:?}"
    );
    assert_gone(&lab.pin_dir());
}

/// A newer layout (a downgrade): `run` refuses, saying what to do, and leaves the newer
/// program attached; `detach` takes it down.
#[test]
fn a_newer_layout_is_refused_and_detach_still_works() {
    require_root!();
    let lab = Lab::minimal();
    let prog = old_state(&lab, config_v15(99).to_vec());
    let out = sg_server(&lab, &["run", "--iface", "sgc"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("newer synguard (map layout 99") && err.contains("synguard detach"),
        "{err}"
    );
    assert_eq!(attached_program(&lab), prog, "left as it was");
    let out = sg_server(&lab, &["detach"]);
    assert!(out.status.success(), "{out:?}");
    assert_gone(&lab.pin_dir());
}
