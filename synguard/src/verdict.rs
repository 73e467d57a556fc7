//! What synguard does with an address's SYNs now, decided in one place from the state the
//! kernel decides with: the allow, block and ban entries, the source's bucket and proof,
//! and whether attack mode answers SYNs with cookies. `explain` renders it in full, `top`
//! as a word and a note per source; both therefore say the same thing of a source.
//!
//! The order is the kernel's (see `synguard_common::decide`): the most specific live
//! entry first (an allow wins over any block it covers, a block whose prefix lies inside
//! an allowlisted one passes), then the bucket (an empty one means the next SYN is over
//! the limit: a proven source is challenged, any other limited), then attack mode (a
//! proven source within its limit passes, any other is answered with a cookie).

use std::net::IpAddr;

use synguard_common::{ACTION_DROP, RULE_ALLOW, RULE_BAN, decide};

use crate::rules::{self, RuleEntry};

/// A source's metering state, as read from the sources table and the proofs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// It has a bucket in the sources table.
    pub tracked: bool,
    /// Its bucket is empty: its next SYN is over the limit.
    pub empty: bool,
    /// It holds a proof (a completed handshake, a cookie) now.
    pub proven: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The allowlist entry covering it: never limited or blocked.
    Allowed(RuleEntry),
    /// A block or ban covers it, but that entry lies inside an allowlisted prefix (the
    /// allow entry, if still listed): the allowlist wins.
    AllowedInside {
        block: RuleEntry,
        allow: Option<RuleEntry>,
    },
    /// An automatic ban: its SYNs to protected ports are dropped.
    Banned(RuleEntry),
    /// A manual block or a CrowdSec decision (the entry's kind says which): every packet
    /// is dropped.
    Blocked(RuleEntry),
    /// Its bucket is empty, but it is proven: its SYNs are answered with cookies, and it
    /// is never banned.
    Challenged,
    /// Its bucket is empty: its next SYN is dropped (and the source banned, unless
    /// `ban-for` is 0).
    Limited,
    /// Within its limit in attack mode, and proven: its SYNs go straight to the kernel.
    Verified,
    /// Within its limit in attack mode, unproven: its SYNs are answered with cookies.
    Cookie,
    /// Within its limit, attack mode off (new when not [`Source::tracked`]).
    Passing,
}

/// The verdict on `addr` at `now`. `entries`: the allow, block and ban entries (expired
/// ones are skipped); `cookies`: whether SYN cookies are being answered now
/// ([`cookies_active`]).
pub fn of(entries: &[RuleEntry], addr: IpAddr, now: u64, src: Source, cookies: bool) -> Verdict {
    let live = rules::matching(entries, addr)
        .into_iter()
        .find(|e| !e.rule.expired(now));
    match live {
        Some(e) if e.rule.kind == RULE_ALLOW => Verdict::Allowed(e),
        Some(e) if e.rule.action != ACTION_DROP => Verdict::AllowedInside {
            allow: rules::shadowing_allow(entries, &e.net).cloned(),
            block: e,
        },
        Some(e) if e.rule.kind == RULE_BAN => Verdict::Banned(e),
        Some(e) => Verdict::Blocked(e),
        None if src.tracked && src.empty && src.proven => Verdict::Challenged,
        None if src.tracked && src.empty => Verdict::Limited,
        None if cookies && src.proven => Verdict::Verified,
        None if cookies => Verdict::Cookie,
        None => Verdict::Passing,
    }
}

/// Whether unverified SYNs are answered with cookies now, as the program decides it
/// (`decide::cookies_active`): not in monitor mode (it answers none), `syn-cookies`
/// (`COOKIES_*`), and attack mode on any interface.
pub fn cookies_active(monitor: bool, syn_cookies: u32, attack_on: impl FnOnce() -> bool) -> bool {
    !monitor && decide::cookies_active(syn_cookies, attack_on)
}

#[cfg(test)]
mod tests {
    use synguard_common::{ACTION_PASS, RULE_BLOCK, Rule};

    use super::*;

    fn entry(net: &str, kind: u8, action: u8, expires: u64) -> RuleEntry {
        RuleEntry {
            net: net.parse().unwrap(),
            rule: Rule::new(kind, action, 1, expires),
        }
    }

    #[test]
    fn entries_then_bucket_then_attack_mode() {
        let now = 1_000;
        let entries = vec![
            entry("198.51.100.0/24", RULE_ALLOW, ACTION_PASS, 0),
            entry("198.51.100.128/25", RULE_BLOCK, ACTION_PASS, 0),
            entry("203.0.113.0/24", RULE_BLOCK, ACTION_DROP, 0),
            entry("203.0.113.7/32", RULE_BAN, ACTION_DROP, 0),
            entry("192.0.2.9/32", RULE_BAN, ACTION_DROP, 10),
        ];
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let busy = Source {
            tracked: true,
            empty: true,
            proven: false,
        };
        let of = |addr: &str, src, cookies| of(&entries, a(addr), now, src, cookies);
        assert!(matches!(
            of("198.51.100.9", busy, true),
            Verdict::Allowed(_)
        ));
        match of("198.51.100.200", busy, false) {
            Verdict::AllowedInside { block, allow } => {
                assert_eq!(block.net.to_string(), "198.51.100.128/25");
                assert_eq!(allow.unwrap().net.to_string(), "198.51.100.0/24");
            }
            v => panic!("{v:?}"),
        }
        // The most specific entry (the manual block), bans last.
        match of("203.0.113.7", busy, false) {
            Verdict::Blocked(e) => assert_eq!(e.net.to_string(), "203.0.113.0/24"),
            v => panic!("{v:?}"),
        }
        // An expired ban is no ban.
        assert_eq!(of("192.0.2.9", busy, false), Verdict::Limited);
        let proven = Source {
            proven: true,
            ..busy
        };
        assert_eq!(of("192.0.2.9", proven, false), Verdict::Challenged);
        let within = Source::default();
        assert_eq!(of("192.0.2.9", within, false), Verdict::Passing);
        assert_eq!(of("192.0.2.9", within, true), Verdict::Cookie);
        let verified = Source {
            proven: true,
            ..within
        };
        assert_eq!(of("192.0.2.9", verified, true), Verdict::Verified);
    }
}
