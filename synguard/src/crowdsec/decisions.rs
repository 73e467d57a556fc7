//! What CrowdSec's Local API says, and what synguard makes of it: the decisions stream
//! (`GET /v1/decisions/stream`, answered to a bouncer key) parsed into the bans synguard
//! enforces, and the set of decisions held, by id, so that deletions lift exactly what
//! they name.
//!
//! Everything here is pure: the LAPI's text in, verdicts out. Anything the LAPI sends
//! that is not a ban of an address or a range (captcha, throttle, a username, a country,
//! a simulated decision) is counted and left alone; anything unreadable (a value that is
//! not an address, a duration Go would not print) is skipped with its reason, never
//! guessed at.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

/// One decision as the LAPI serves it (`models.Decision`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    #[serde(default)]
    pub origin: String,
    /// `ban`, `captcha`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `Ip`, `Range`, `Country`, ...
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub value: String,
    /// Time left, as Go prints a `time.Duration` (`3h59m58.123s`, `-1.2s`).
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
    #[serde(default)]
    pub simulated: Option<bool>,
}

/// The stream's answer: decisions new since the last pull, and decisions deleted or
/// expired since. Either may be `null`.
#[derive(Debug, Default, Deserialize)]
pub struct Stream {
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// Parse the stream's body. A body that is not the stream's JSON is an error (the caller
/// keeps what it holds and retries).
pub fn parse_stream(body: &[u8]) -> anyhow::Result<Stream> {
    serde_json::from_slice(body).map_err(|e| {
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        anyhow::anyhow!("the decisions stream is not the LAPI's JSON ({e}): {shown:?}")
    })
}

/// A ban synguard enforces for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub id: i64,
    pub net: IpNet,
    /// Time left when pulled.
    pub left: Duration,
    /// When it ends (`CLOCK_MONOTONIC` ns): pulled at + left.
    pub until_ns: u64,
    pub origin: String,
    pub scenario: String,
}

/// Why a decision is not enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not a ban (`captcha`, `throttle`, ...), or a simulated one.
    NotBan,
    /// A scope synguard cannot enforce on packets (`Country`, `AS`, `Username`, ...).
    Scope,
    /// Expired already (its duration is zero or negative).
    Expired,
    /// The value or the duration is not what its scope says.
    Invalid(String),
}

/// What to do with a decision of the stream's `new` list, pulled at `now_ns`.
pub fn ban_of(d: &Decision, now_ns: u64) -> Result<Ban, Skip> {
    if !d.kind.eq_ignore_ascii_case("ban") || d.simulated == Some(true) {
        return Err(Skip::NotBan);
    }
    let net = if d.scope.eq_ignore_ascii_case("ip") {
        let a: IpAddr = d
            .value
            .trim()
            .parse()
            .map_err(|_| Skip::Invalid(format!("{:?} is not an IP address", d.value)))?;
        IpNet::from(a)
    } else if d.scope.eq_ignore_ascii_case("range") {
        let n: IpNet = d
            .value
            .trim()
            .parse()
            .map_err(|_| Skip::Invalid(format!("{:?} is not a CIDR range", d.value)))?;
        // A range with host bits set (10.0.0.1/8) bans the network, as the LAPI does.
        n.trunc()
    } else {
        return Err(Skip::Scope);
    };
    let left = match go_duration(&d.duration) {
        Some(Some(left)) if !left.is_zero() => left,
        Some(_) => return Err(Skip::Expired),
        None => {
            return Err(Skip::Invalid(format!("{:?} is not a duration", d.duration)));
        }
    };
    Ok(Ban {
        id: d.id,
        net: unmap(net),
        left,
        until_ns: now_ns.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX)),
        origin: d.origin.clone(),
        scenario: d.scenario.clone(),
    })
}

/// An IPv4 address written as IPv6 (`::ffff:192.0.2.1`) is the IPv4 address: that is how
/// synguard keys IPv4 sources.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// A Go `time.Duration` as `String()` prints it: `1h2m3.5s`, `150ms`, `-3s`, `0s`.
/// `Some(None)` for a negative duration (expired), `None` when it is not one.
pub fn go_duration(s: &str) -> Option<Option<Duration>> {
    let s = s.trim();
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Some(Duration::ZERO));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    if !total.is_finite() {
        return None;
    }
    if neg && total > 0.0 {
        return Some(None);
    }
    // Longer than any ban anyone means (Go's own limit is 290 years): capped.
    Some(Some(Duration::from_secs_f64(total.min(1e10))))
}

/// The decisions held: every enforced decision by id, and per prefix the ids that hold
/// it (several scenarios may ban one address; the ban lasts while any of them does).
#[derive(Debug, Default)]
pub struct Held {
    by_id: HashMap<i64, Ban>,
    by_net: BTreeMap<IpNet, Vec<i64>>,
}

/// What applying a pull changes in the kernel's tables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Prefixes to (re)install, with the decision that now lasts longest on each.
    pub put: Vec<Ban>,
    /// Prefixes no decision holds any more.
    pub lift: Vec<IpNet>,
}

impl Held {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether the decision `id` is held.
    pub fn holds(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Prefixes held.
    pub fn nets(&self) -> usize {
        self.by_net.len()
    }

    /// The decision that lasts longest on `net`, if any holds it.
    pub fn longest(&self, net: &IpNet) -> Option<&Ban> {
        self.by_net
            .get(net)?
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .max_by_key(|b| b.until_ns)
    }

    /// Every prefix held, with its longest decision.
    pub fn all(&self) -> impl Iterator<Item = &Ban> {
        self.by_net.keys().filter_map(|n| self.longest(n))
    }

    /// Forget everything (a startup pull replaces what was held).
    pub fn clear(&mut self) -> Vec<IpNet> {
        self.by_id.clear();
        std::mem::take(&mut self.by_net).into_keys().collect()
    }

    /// Add decisions (`new`) and remove others (`deleted`, by id): what the kernel's
    /// tables must change. A decision id seen again replaces the one held.
    pub fn apply(&mut self, new: Vec<Ban>, deleted: &[i64]) -> Changes {
        let mut touched = std::collections::BTreeSet::new();
        for id in deleted {
            if let Some(old) = self.by_id.remove(id) {
                if let Some(ids) = self.by_net.get_mut(&old.net) {
                    ids.retain(|i| i != id);
                    if ids.is_empty() {
                        self.by_net.remove(&old.net);
                    }
                }
                touched.insert(old.net);
            }
        }
        for b in new {
            if let Some(old) = self.by_id.remove(&b.id)
                && let Some(ids) = self.by_net.get_mut(&old.net)
            {
                ids.retain(|i| *i != b.id);
                if ids.is_empty() {
                    self.by_net.remove(&old.net);
                }
                touched.insert(old.net);
            }
            touched.insert(b.net);
            self.by_net.entry(b.net).or_default().push(b.id);
            self.by_id.insert(b.id, b);
        }
        let mut out = Changes::default();
        for net in touched {
            match self.longest(&net) {
                Some(b) => out.put.push(b.clone()),
                None => out.lift.push(net),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: i64, kind: &str, scope: &str, value: &str, duration: &str) -> Decision {
        Decision {
            id,
            origin: "cscli".into(),
            kind: kind.into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "manual 'ban' from 'test'".into(),
            simulated: Some(false),
        }
    }

    #[test]
    fn go_durations() {
        let s = |x: f64| Some(Some(Duration::from_secs_f64(x)));
        assert_eq!(
            go_duration("3h59m58.5s"),
            s(3.0 * 3600.0 + 59.0 * 60.0 + 58.5)
        );
        assert_eq!(go_duration("150ms"), s(0.15));
        assert_eq!(go_duration("1m0.000000001s"), s(60.000000001));
        assert_eq!(go_duration("2µs"), s(2e-6));
        assert_eq!(go_duration("0s"), Some(Some(Duration::ZERO)));
        assert_eq!(go_duration("0"), Some(Some(Duration::ZERO)));
        assert_eq!(go_duration("-1.5s"), Some(None));
        for bad in [
            "", "-", "4", "4d", "1h2", "h", ".s", "1..2s", "abc", "1h 2m",
        ] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_bans_of_addresses_and_ranges_are_enforced() {
        let ok = ban_of(&d(1, "ban", "Ip", "198.51.100.7", "4h"), 0).unwrap();
        assert_eq!(ok.net.to_string(), "198.51.100.7/32");
        assert_eq!(ok.left, Duration::from_secs(4 * 3600));
        let r = ban_of(&d(2, "ban", "range", "2001:db8:7::1/48", "1m"), 0).unwrap();
        assert_eq!(r.net.to_string(), "2001:db8:7::/48");
        let m = ban_of(&d(3, "ban", "Ip", "::ffff:203.0.113.9", "1m"), 0).unwrap();
        assert_eq!(m.net.to_string(), "203.0.113.9/32");
        assert_eq!(
            ban_of(&d(4, "captcha", "Ip", "198.51.100.7", "4h"), 0),
            Err(Skip::NotBan)
        );
        assert_eq!(
            ban_of(&d(5, "ban", "Country", "FR", "4h"), 0),
            Err(Skip::Scope)
        );
        assert_eq!(
            ban_of(&d(6, "ban", "Ip", "198.51.100.7", "-2s"), 0),
            Err(Skip::Expired)
        );
        assert!(matches!(
            ban_of(&d(7, "ban", "Ip", "not-an-ip", "4h"), 0),
            Err(Skip::Invalid(_))
        ));
        assert!(matches!(
            ban_of(&d(8, "ban", "Range", "10.0.0.0/33", "4h"), 0),
            Err(Skip::Invalid(_))
        ));
        assert!(matches!(
            ban_of(&d(9, "ban", "Ip", "198.51.100.7", "soon"), 0),
            Err(Skip::Invalid(_))
        ));
        let mut sim = d(10, "ban", "Ip", "198.51.100.7", "4h");
        sim.simulated = Some(true);
        assert_eq!(ban_of(&sim, 0), Err(Skip::NotBan));
    }

    #[test]
    fn garbage_is_an_error_and_nulls_are_empty() {
        assert!(parse_stream(b"<html>502 Bad Gateway</html>").is_err());
        assert!(parse_stream(b"{\"new\": [{\"id\": \"x\"}]}").is_err());
        let s = parse_stream(b"{\"new\": null, \"deleted\": null}").unwrap();
        assert!(s.new.is_none() && s.deleted.is_none());
        let s = parse_stream(
            br#"{"new":[{"duration":"3h59m59s","id":1,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.9"}],"deleted":[]}"#,
        )
        .unwrap();
        assert_eq!(s.new.unwrap()[0].value, "192.0.2.9");
    }

    #[test]
    fn a_prefix_lasts_while_any_decision_holds_it() {
        let ban = |id, net: &str, secs| Ban {
            id,
            net: net.parse().unwrap(),
            left: Duration::from_secs(secs),
            until_ns: secs * 1_000_000_000,
            origin: "crowdsec".into(),
            scenario: format!("s{id}"),
        };
        let mut h = Held::default();
        let c = h.apply(
            vec![
                ban(1, "198.51.100.7/32", 60),
                ban(2, "198.51.100.7/32", 600),
            ],
            &[],
        );
        assert_eq!(c.put.len(), 1);
        assert_eq!(c.put[0].id, 2, "the longest decision names the entry");
        assert_eq!((h.len(), h.nets()), (2, 1));
        // One of two deleted: still banned, by the other.
        let c = h.apply(vec![], &[2]);
        assert_eq!((c.put.len(), c.put[0].id, c.lift.len()), (1, 1, 0));
        // The last: lifted. Deleting an id not held changes nothing.
        let c = h.apply(vec![], &[1, 99]);
        assert_eq!(c.lift, vec!["198.51.100.7/32".parse::<IpNet>().unwrap()]);
        assert!(h.is_empty());
        // An id seen again with another value moves.
        h.apply(vec![ban(5, "203.0.113.0/24", 60)], &[]);
        let c = h.apply(vec![ban(5, "203.0.113.9/32", 60)], &[]);
        assert_eq!(c.lift, vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(c.put[0].net.to_string(), "203.0.113.9/32");
    }
}
