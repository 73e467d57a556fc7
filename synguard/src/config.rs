//! Runtime settings: the config keys of the spec, their defaults (with the reasoning),
//! validation, the TOML file, and the conversion to the kernel's [`Config`].
//!
//! The same parser serves all three ways to set a key (`run --KEY VALUE`, the TOML file,
//! `config set KEY VALUE`), so they accept and refuse exactly the same values.

use std::{fmt, time::Duration};

use serde::Serialize;
use synguard_common::{
    ABI_VERSION, COOKIES_ALWAYS, COOKIES_AUTO, COOKIES_OFF, Config, MODE_ENFORCE, MODE_MONITOR,
    PORT_WORDS, prefix_mask,
};

/// A key/value the user got wrong. Messages name the key, the value, and what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown config key `{key}`{}; the keys are: {}", suggest(.key), key_list())]
    UnknownKey { key: String },
    #[error("invalid value for `{key}`: {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("config file: {0}")]
    File(String),
}

fn key_list() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn suggest(key: &str) -> String {
    KEYS.iter()
        .map(|k| (strsim::levenshtein(key, k.name), k.name))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop what is flagged.
    Enforce,
    /// Decide and count everything, drop nothing.
    Monitor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cookies {
    /// Answer SYNs with cookies only in attack mode.
    Auto,
    /// Always answer unverified SYNs with cookies.
    Always,
    /// Never; attack mode only counts.
    Off,
}

/// Protected destination ports as sorted, merged, inclusive ranges; empty means all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports(Vec<(u16, u16)>);

impl Ports {
    pub fn all() -> Self {
        Self(Vec::new())
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.is_all() || self.0.iter().any(|&(a, b)| a <= port && port <= b)
    }

    fn from_ranges(mut ranges: Vec<(u16, u16)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Self(merged)
    }

    fn parse(value: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in value.split([',', ' ']).filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (parse_port(a)?, parse_port(b)?),
                None => {
                    let p = parse_port(part)?;
                    (p, p)
                }
            };
            if a > b {
                return Err(format!("range {part} runs backwards; write {b}-{a}"));
            }
            ranges.push((a, b));
        }
        Ok(Self::from_ranges(ranges))
    }

    fn bitmap(&self) -> [u64; PORT_WORDS] {
        let mut words = [0u64; PORT_WORDS];
        for &(a, b) in &self.0 {
            for p in a..=b {
                words[usize::from(p / 64)] |= 1 << (p % 64);
            }
        }
        words
    }

    fn from_bitmap(words: &[u64; PORT_WORDS]) -> Self {
        let mut ranges = Vec::new();
        let mut start: Option<u16> = None;
        for p in 0..=u16::MAX {
            let set = words[usize::from(p / 64)] & (1 << (p % 64)) != 0;
            match (set, start) {
                (true, None) => start = Some(p),
                (false, Some(s)) => {
                    ranges.push((s, p - 1));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            ranges.push((s, u16::MAX));
        }
        Self(ranges)
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!(
            "{s:?} is not a port (1-65535); write ports like \"80,443,8000-8080\""
        )),
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The settings in force, in human units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub syn_rate: u32,
    pub syn_burst: u32,
    pub ban_for: Duration,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub attack_syn_rate: u32,
    pub syn_cookies: Cookies,
    pub verified_for: Duration,
    pub mode: Mode,
    pub ports: Ports,
}

/// A config key: its name (the same everywhere), default, and why that default.
pub struct KeyInfo {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub why: &'static str,
}

/// Every key, in the order `config show` lists them.
pub const KEYS: [KeyInfo; 10] = [
    KeyInfo {
        name: "syn-rate",
        default: "200",
        help: "SYNs per second each source may open, sustained (1-10000000)",
        why: "A whole office behind one NAT address opening 6 connections per page view \
              for 500 people browsing averages well under 100 new connections a second; \
              a flooding tool sends tens of thousands. 200/s leaves the office twice its \
              busy-hour rate and still stops a flood within a fraction of a second.",
    },
    KeyInfo {
        name: "syn-burst",
        default: "100",
        help: "SYNs a source may open at once before the rate applies (1-1000000)",
        why: "Absorbs a dozen people behind one address loading a page at the same moment \
              (6 connections each), and is smaller than a typical listen backlog (128 or \
              more), so the SYNs a flooder gets in before its ban cannot fill the server's \
              SYN queue on its own.",
    },
    KeyInfo {
        name: "ban-for",
        default: "10m",
        help: "how long a source over the limit is banned (0s: drop its excess SYNs, never ban)",
        why: "Long enough that a flood restarting every few minutes costs one burst per ban, \
              short enough that a mistaken ban of a shared address heals by itself soon.",
    },
    KeyInfo {
        name: "ipv4-prefix",
        default: "32",
        help: "IPv4 sources are metered and banned per prefix of this length (8-32)",
        why: "One address is one host or one NAT; aggregating wider would punish neighbours. \
              Below 19, bans no longer fit the kernel's per-/24 hint, and every IPv4 packet \
              also walks the bans trie.",
    },
    KeyInfo {
        name: "ipv6-prefix",
        default: "64",
        help: "IPv6 sources are metered and banned per prefix of this length (16-128)",
        why: "A /64 is one subnet, usually one customer; an attacker rotating addresses \
              inside it is still one source. Below 35, every IPv6 packet also walks the \
              bans trie (see ipv4-prefix).",
    },
    KeyInfo {
        name: "attack-syn-rate",
        default: "2000",
        help: "SYNs per second on one interface that start attack mode (100-100000000)",
        why: "Above the new-connection rate of a busy company web site, and above what one \
              flooder's burst amounts to before its ban (syn-burst over a 100 ms window), \
              so attack mode means a flood from many sources. A server without SYN cookies \
              of its own and a small backlog should set it lower.",
    },
    KeyInfo {
        name: "syn-cookies",
        default: "auto",
        help: "answer unverified SYNs with SYN cookies from XDP: auto (in attack mode), always, off",
        why: "Cookies cost real clients their TCP options until they are verified, so they \
              are used only while an attack lasts.",
    },
    KeyInfo {
        name: "verified-for",
        default: "1h",
        help: "how long a source stays proven after its last completed handshake (1s-30d): \
               it skips the cookie challenge in attack mode, and over its limit it is \
               challenged, never banned",
        why: "An employee proven once keeps full TCP options for the rest of an attack, and \
              a flood forged in its name cannot get it banned for an hour after it last \
              connected.",
    },
    KeyInfo {
        name: "mode",
        default: "enforce",
        help: "enforce (drop what is flagged) or monitor (decide and count, drop nothing)",
        why: "A security tool should protect once installed; use monitor to tune safely.",
    },
    KeyInfo {
        name: "ports",
        default: "",
        help: "protected destination ports, e.g. \"80,443,8000-8080\"; empty means all",
        why: "Every listening port of a web server is a SYN-flood target.",
    },
];

const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The commented default config file the package installs as
/// `/etc/synguard/synguard.toml` (`synguard/dist/synguard.toml`, kept in step with
/// [`KEYS`] by a test): every key commented out at its default, with its reasoning.
pub fn example_file() -> String {
    let mut out = String::from(
        "# /etc/synguard/synguard.toml: synguard's settings (`synguard run --config`).\n\
         #\n\
         # Every key below is commented out at its default. Uncomment and change what you\n\
         # need, then `systemctl reload synguard` (SIGHUP): the running program picks it up\n\
         # within a second, and a bad file is refused with the old settings kept.\n\
         # The same keys work as `synguard run --KEY VALUE` and `synguard config set KEY\n\
         # VALUE` (live, until the next reload or restart). Durations: 30s, 10m, 1h, 2d.\n\
         # See `man synguard` and the README.\n",
    );
    for k in &KEYS {
        out.push_str("\n# ");
        out.push_str(k.help);
        out.push_str(".\n");
        let mut line = String::from("#");
        for word in k.why.split_whitespace() {
            if line.len() + word.len() + 1 > 88 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
        let value = if k.default.parse::<u64>().is_ok() {
            k.default.to_string()
        } else {
            format!("{:?}", k.default)
        };
        out.push_str(&format!("#{} = {value}\n", k.name));
    }
    out.push_str(
        "\n# A fleet: share bans through CrowdSec's Local API (see the README's fleet\n\
         # section). Keys of `run` itself (also `synguard run --KEY VALUE`), read at start:\n\
         # restart synguard to change them.\n\
         #crowdsec-url = \"http://10.0.0.5:8080\"\n\
         #crowdsec-key-file = \"/etc/synguard/crowdsec.key\"\n\
         #crowdsec-credentials = \"/etc/synguard/crowdsec-machine.yaml\"\n\
         #crowdsec-share = \"proven\"\n\
         #crowdsec-interval = \"10s\"\n",
    );
    out
}

/// A TOML value as the text a key's parser takes: a string or a number as it is, a list
/// of them joined by commas. (The same for `config`'s keys and `run`'s own.)
pub fn toml_text(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Array(items) => {
            let mut parts = Vec::new();
            for item in items {
                match item {
                    toml::Value::Integer(i) => parts.push(i.to_string()),
                    toml::Value::String(s) => parts.push(s.clone()),
                    other => {
                        return Err(ConfigError::File(format!(
                            "`{key}`: list items must be numbers or strings, not {}",
                            other.type_str()
                        )));
                    }
                }
            }
            parts.join(",")
        }
        other => {
            return Err(ConfigError::File(format!(
                "`{key}` must be a number or a string, not {}",
                other.type_str()
            )));
        }
    })
}

impl Default for Settings {
    fn default() -> Self {
        let mut s = Self {
            syn_rate: 0,
            syn_burst: 0,
            ban_for: Duration::ZERO,
            ipv4_prefix: 0,
            ipv6_prefix: 0,
            attack_syn_rate: 0,
            syn_cookies: Cookies::Auto,
            verified_for: Duration::ZERO,
            mode: Mode::Enforce,
            ports: Ports::all(),
        };
        for k in &KEYS {
            // The defaults are constants checked by `defaults_are_valid`.
            #[expect(clippy::unwrap_used, reason = "compile-time constants, tested")]
            s.set(k.name, k.default).unwrap();
        }
        s
    }
}

/// Parse a human duration: `30s`, `10m`, `1h`, `1h30m`, `0s`.
pub fn parse_duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let invalid = |reason: String| ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason,
    };
    if v.starts_with('-') {
        return Err(invalid("durations cannot be negative".into()));
    }
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(format!(
            "add a unit: {v}s, {v}m or {v}h (durations look like 30s, 10m, 1h)"
        )));
    }
    humantime::parse_duration(v)
        .map_err(|e| invalid(format!("{e}; durations look like 30s, 10m, 1h or 1h30m")))
}

fn parse_int<T: TryFrom<u64> + Copy>(
    key: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<T, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason,
    };
    let v = value.trim().replace('_', "");
    let n: u64 = v.parse().map_err(|_| {
        invalid(if v.starts_with('-') {
            format!("must be between {min} and {max}")
        } else {
            format!("not a whole number; expected {min} to {max}")
        })
    })?;
    if n < min || n > max {
        return Err(invalid(format!(
            "out of range: must be between {min} and {max}"
        )));
    }
    T::try_from(n).map_err(|_| invalid(format!("must be between {min} and {max}")))
}

impl Settings {
    /// Set one key from its textual value. On error nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut next = self.clone();
        match key {
            "syn-rate" => next.syn_rate = parse_int("syn-rate", value, 1, 10_000_000)?,
            "syn-burst" => next.syn_burst = parse_int("syn-burst", value, 1, 1_000_000)?,
            "ban-for" => {
                next.ban_for = parse_duration("ban-for", value)?;
                if next.ban_for > MAX_DURATION {
                    return Err(ConfigError::Invalid {
                        key: "ban-for",
                        value: value.into(),
                        reason: "at most 30d; block a source for longer with `synguard block add`"
                            .into(),
                    });
                }
            }
            "ipv4-prefix" => next.ipv4_prefix = parse_int("ipv4-prefix", value, 8, 32)?,
            "ipv6-prefix" => next.ipv6_prefix = parse_int("ipv6-prefix", value, 16, 128)?,
            "attack-syn-rate" => {
                next.attack_syn_rate = parse_int("attack-syn-rate", value, 100, 100_000_000)?
            }
            "syn-cookies" => {
                next.syn_cookies = match value.trim() {
                    "auto" => Cookies::Auto,
                    "always" => Cookies::Always,
                    "off" => Cookies::Off,
                    _ => {
                        return Err(ConfigError::Invalid {
                            key: "syn-cookies",
                            value: value.into(),
                            reason: "expected auto, always or off".into(),
                        });
                    }
                }
            }
            "verified-for" => {
                let d = parse_duration("verified-for", value)?;
                if d < Duration::from_secs(1) || d > MAX_DURATION {
                    return Err(ConfigError::Invalid {
                        key: "verified-for",
                        value: value.into(),
                        reason: "must be between 1s and 30d".into(),
                    });
                }
                next.verified_for = d;
            }
            "mode" => {
                next.mode = match value.trim() {
                    "enforce" => Mode::Enforce,
                    "monitor" => Mode::Monitor,
                    _ => {
                        return Err(ConfigError::Invalid {
                            key: "mode",
                            value: value.into(),
                            reason: "expected enforce or monitor".into(),
                        });
                    }
                }
            }
            "ports" => {
                next.ports = Ports::parse(value).map_err(|reason| ConfigError::Invalid {
                    key: "ports",
                    value: value.into(),
                    reason,
                })?
            }
            _ => {
                if let Some(k) = crate::crowdsec::KEYS.iter().find(|k| **k == key) {
                    return Err(ConfigError::Invalid {
                        key: k,
                        value: value.into(),
                        reason: "a key of `run` itself, not a live one: set it as `synguard \
                                 run --KEY VALUE` or in its --config file, then restart it"
                            .into(),
                    });
                }
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                });
            }
        }
        *self = next;
        Ok(())
    }

    /// The value of a key as `config show` prints it (and `set` accepts it back).
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "syn-rate" => self.syn_rate.to_string(),
            "syn-burst" => self.syn_burst.to_string(),
            "ban-for" => format_duration(self.ban_for),
            "ipv4-prefix" => self.ipv4_prefix.to_string(),
            "ipv6-prefix" => self.ipv6_prefix.to_string(),
            "attack-syn-rate" => self.attack_syn_rate.to_string(),
            "syn-cookies" => match self.syn_cookies {
                Cookies::Auto => "auto",
                Cookies::Always => "always",
                Cookies::Off => "off",
            }
            .to_string(),
            "verified-for" => format_duration(self.verified_for),
            "mode" => match self.mode {
                Mode::Enforce => "enforce",
                Mode::Monitor => "monitor",
            }
            .to_string(),
            "ports" => self.ports.to_string(),
            _ => return None,
        })
    }

    /// Every key with its value, in `KEYS` order.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        KEYS.iter()
            .map(|k| (k.name, self.get(k.name).unwrap_or_default()))
            .collect()
    }

    /// Apply a TOML document on top of these settings. All of it or nothing.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File(e.to_string()))?;
        let mut next = self.clone();
        for (key, value) in &table {
            if crate::crowdsec::KEYS.contains(&key.as_str()) {
                // `run`'s own keys (see `crowdsec::Settings::apply_toml`).
                continue;
            }
            let text = toml_text(key, value)?;
            next.set(key, &text)?;
        }
        *self = next;
        Ok(())
    }

    /// The kernel's view: human values plus what is derived from them.
    pub fn to_kernel(&self, generation: u64) -> Config {
        let interval = 1_000_000_000 / u64::from(self.syn_rate.max(1));
        Config {
            abi: ABI_VERSION,
            mode: match self.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Monitor => MODE_MONITOR,
            },
            syn_rate: self.syn_rate,
            syn_burst: self.syn_burst,
            ipv4_prefix: u32::from(self.ipv4_prefix),
            ipv6_prefix: u32::from(self.ipv6_prefix),
            attack_syn_rate: self.attack_syn_rate,
            syn_cookies: match self.syn_cookies {
                Cookies::Auto => COOKIES_AUTO,
                Cookies::Always => COOKIES_ALWAYS,
                Cookies::Off => COOKIES_OFF,
            },
            syn_interval_ns: interval,
            syn_tolerance_ns: u64::from(self.syn_burst.max(1) - 1) * interval,
            ban_ns: duration_ns(self.ban_for),
            verified_ns: duration_ns(self.verified_for),
            v4_mask: prefix_mask::<4>(u32::from(self.ipv4_prefix)),
            all_ports: u32::from(self.ports.is_all()),
            v6_mask: prefix_mask::<16>(u32::from(self.ipv6_prefix)),
            generation,
            build_id: u64::from_str_radix(crate::version::BUILD_ID, 16).unwrap_or(0),
            daemon_pid: 0,
            saved_syncookies: -1,
            attack_calm_ns: synguard_common::ATTACK_CALM_NS,
            saved_timestamps: -1,
            cookie_opts: 0,
            syn_quiet: synguard_common::sources::sketch_quiet_limit(interval),
            _reserved: 0,
            ports: self.ports.bitmap(),
            // Drawn by `Maps::write_config` when the maps are new, kept after that.
            source_seed: [0; synguard_common::sources::SEED_WORDS],
        }
    }

    /// The next kernel config after `current`: these settings, a bumped generation, and
    /// the identity of the `run` that owns the program kept as it is.
    pub fn next_kernel(&self, current: &Config) -> Config {
        let mut c = self.to_kernel(current.generation.wrapping_add(1));
        c.build_id = current.build_id;
        c.daemon_pid = current.daemon_pid;
        c.saved_syncookies = current.saved_syncookies;
        c.saved_timestamps = current.saved_timestamps;
        c.cookie_opts = current.cookie_opts;
        c.attack_calm_ns = current.attack_calm_ns;
        c.source_seed = current.source_seed;
        c
    }

    /// Read back what the kernel holds.
    pub fn from_kernel(c: &Config) -> Self {
        Self {
            syn_rate: c.syn_rate,
            syn_burst: c.syn_burst,
            ban_for: Duration::from_nanos(c.ban_ns),
            ipv4_prefix: c.ipv4_prefix as u8,
            ipv6_prefix: c.ipv6_prefix as u8,
            attack_syn_rate: c.attack_syn_rate,
            syn_cookies: match c.syn_cookies {
                COOKIES_ALWAYS => Cookies::Always,
                COOKIES_OFF => Cookies::Off,
                _ => Cookies::Auto,
            },
            verified_for: Duration::from_nanos(c.verified_ns),
            mode: if c.mode == MODE_MONITOR {
                Mode::Monitor
            } else {
                Mode::Enforce
            },
            ports: if c.all_ports != 0 {
                Ports::all()
            } else {
                Ports::from_bitmap(&c.ports)
            },
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub use crate::clock::format_duration;

#[cfg(test)]
mod tests {
    use synguard_common::gcra;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default();
        assert_eq!(s.syn_rate, 200);
        assert_eq!(s.syn_burst, 100);
        assert_eq!(s.ban_for, Duration::from_secs(600));
        assert_eq!((s.ipv4_prefix, s.ipv6_prefix), (32, 64));
        assert_eq!(s.mode, Mode::Enforce);
        assert!(s.ports.is_all());
        for k in &KEYS {
            assert_eq!(s.get(k.name).as_deref(), Some(k.default), "{}", k.name);
        }
    }

    #[test]
    fn set_and_get_round_trip() {
        let mut s = Settings::default();
        for (k, v) in [
            ("syn-rate", "50"),
            ("syn-burst", "7"),
            ("ban-for", "1h30m"),
            ("ipv4-prefix", "24"),
            ("ipv6-prefix", "48"),
            ("attack-syn-rate", "5000"),
            ("syn-cookies", "always"),
            ("verified-for", "10m"),
            ("mode", "monitor"),
            ("ports", "443,80,8000-8080,8081"),
        ] {
            s.set(k, v).unwrap();
        }
        assert_eq!(s.get("ports").unwrap(), "80,443,8000-8081");
        assert_eq!(s.get("ban-for").unwrap(), "1h30m");
        let back = Settings::from_kernel(&s.to_kernel(3));
        assert_eq!(back, s);
    }

    #[test]
    fn bad_values_change_nothing_and_say_why() {
        let mut s = Settings::default();
        let before = s.clone();
        let cases = [
            ("syn-rate", "0", "between 1 and 10000000"),
            ("syn-rate", "-5", "between 1 and 10000000"),
            ("syn-rate", "fast", "not a whole number"),
            ("syn-burst", "99999999", "out of range"),
            ("ban-for", "-5s", "negative"),
            ("ban-for", "10", "add a unit"),
            ("ban-for", "soon", "durations look like"),
            ("ban-for", "400d", "at most 30d"),
            ("ipv4-prefix", "33", "between 8 and 32"),
            ("ipv6-prefix", "4", "between 16 and 128"),
            ("syn-cookies", "yes", "auto, always or off"),
            ("mode", "block", "enforce or monitor"),
            ("verified-for", "0s", "between 1s and 30d"),
            ("ports", "80,0", "port 0"),
            ("ports", "70000", "not a port"),
            ("ports", "90-80", "backwards"),
        ];
        for (k, v, want) in cases {
            let e = s.set(k, v).unwrap_err().to_string();
            assert!(e.contains(want), "{k}={v}: {e}");
            assert!(e.contains(k), "{k}={v}: message names the key: {e}");
            assert_eq!(s, before, "{k}={v} changed the settings");
        }
        let e = s.set("syn-rat", "5").unwrap_err().to_string();
        assert!(e.contains("did you mean `syn-rate`"), "{e}");
    }

    #[test]
    fn toml_file() {
        let mut s = Settings::default();
        s.apply_toml(
            "syn-rate = 50\nban-for = \"5m\"\nports = [80, 443, \"8000-8001\"]\nmode = \"monitor\"\n",
        )
        .unwrap();
        assert_eq!(s.syn_rate, 50);
        assert_eq!(s.ban_for, Duration::from_secs(300));
        assert_eq!(s.ports.to_string(), "80,443,8000-8001");
        assert_eq!(s.mode, Mode::Monitor);

        let before = s.clone();
        for bad in [
            "syn-rate = 50\nnonsense = 1\n",
            "syn-rate = 0\n",
            "syn-rate = [\n",
            "mode = true\n",
        ] {
            assert!(s.apply_toml(bad).is_err(), "{bad}");
            assert_eq!(s, before, "a bad file changed the settings: {bad}");
        }
    }

    #[test]
    fn kernel_derivation() {
        let mut s = Settings::default();
        s.set("syn-rate", "100").unwrap();
        s.set("syn-burst", "10").unwrap();
        s.set("ipv4-prefix", "24").unwrap();
        s.set("ports", "80,443").unwrap();
        let c = s.to_kernel(1);
        assert_eq!(c.syn_interval_ns, 10_000_000);
        // 100/s: 13 SYNs per 134 ms sketch window, a quarter of it.
        assert_eq!(c.syn_quiet, 3);
        assert_eq!(c.syn_tolerance_ns, 90_000_000);
        assert_eq!(c.v4_mask, [255, 255, 255, 0]);
        assert_eq!(c.all_ports, 0);
        assert_ne!(c.ports[80 / 64] & (1 << (80 % 64)), 0);
        assert_eq!(c.ports[81 / 64] & (1 << (81 % 64)), 0);
        assert_eq!(c.ban_ns, 600_000_000_000);
    }

    /// The promise behind the defaults: an office behind one NAT address, browsing
    /// normally, is never limited. 500 employees each load a page at random about every
    /// 30 seconds during an hour; every page view opens 6 connections within 60 ms. That is
    /// 100 SYN/s on average from one address, with random peaks.
    #[test]
    fn office_behind_nat_is_not_limited_by_defaults() {
        let cfg = Settings::default().to_kernel(0);
        let mut rng = Lcg(42);
        let mut arrivals = Vec::new();
        const SEC: u64 = 1_000_000_000;
        for _employee in 0..500 {
            let mut t = rng.below(30 * SEC);
            while t < 3600 * SEC {
                for c in 0..6 {
                    arrivals.push(t + c * 10_000_000 + rng.below(10_000_000));
                }
                // Exponential think time with a 20 s mean.
                let u = (rng.below(1_000_000) + 1) as f64 / 1_000_001.0;
                t += (-u.ln() * 30.0 * SEC as f64) as u64 + 100_000_000;
            }
        }
        arrivals.sort_unstable();
        let rate = arrivals.len() as f64 / 3600.0;
        assert!(rate > 90.0, "the model should be a busy office: {rate}/s");
        let mut tat = 0;
        let mut limited = 0;
        for &t in &arrivals {
            match gcra::conform(tat, t, cfg.syn_interval_ns, cfg.syn_tolerance_ns) {
                Some(next) => tat = next,
                None => limited += 1,
            }
        }
        assert_eq!(limited, 0, "{limited} of {} SYNs limited", arrivals.len());
    }

    /// And the other half: a flood from one address is cut off after about one burst.
    #[test]
    fn flood_is_limited_within_one_burst() {
        let cfg = Settings::default().to_kernel(0);
        let mut tat = 0;
        let passed = (0..100_000u64)
            .filter(|i| {
                match gcra::conform(
                    tat,
                    1_000_000_000 + i * 10_000,
                    cfg.syn_interval_ns,
                    cfg.syn_tolerance_ns,
                ) {
                    Some(n) => {
                        tat = n;
                        true
                    }
                    None => false,
                }
            })
            .count();
        // 100 000 SYN/s for one second: the burst plus the sustained rate.
        assert!(passed <= 100 + 200 + 1, "{passed}");
    }

    /// A small deterministic generator, so the simulation is repeatable.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((u128::from(self.0 >> 11) * u128::from(n)) >> 53) as u64
        }
    }

    /// The packaged config file is `example_file()` (regenerate it with
    /// `UPDATE_DIST=1 cargo test -p synguard --lib config`), and uncommented it parses to
    /// the defaults.
    #[test]
    fn packaged_config_file_matches_the_keys() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/synguard.toml");
        let want = example_file();
        if std::env::var_os("UPDATE_DIST").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            have, want,
            "dist/synguard.toml is stale: UPDATE_DIST=1 cargo test"
        );
        let mut s = Settings::default();
        s.apply_toml(&have).unwrap();
        assert_eq!(s, Settings::default());
        let uncommented: String = have
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = ") && !l.starts_with(' '))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            uncommented.lines().count(),
            KEYS.len() + crate::crowdsec::KEYS.len(),
            "{uncommented}"
        );
        let mut s = Settings::default();
        s.apply_toml(&uncommented).unwrap();
        assert_eq!(s, Settings::default());
        // The CrowdSec example is a whole link, at its defaults but for the URL and files.
        let mut c = crate::crowdsec::Settings::default();
        c.apply_toml(&uncommented).unwrap();
        c.check().unwrap();
        assert_eq!(c.share, crate::crowdsec::Share::Proven);
        assert_eq!(c.interval, Duration::from_secs(10));
    }
}
