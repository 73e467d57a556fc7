//! Runtime settings: the config keys of the spec, their defaults (with the reasoning),
//! validation, the TOML file, and the conversion to the kernel's [`Config`].
//!
//! The same parser serves all three ways to set a key (`run --KEY VALUE`, the TOML file,
//! `config set KEY VALUE`), so they accept and refuse exactly the same values.

use std::{fmt, ops::RangeInclusive, time::Duration};

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

/// A key whose value is one of a few words, each with its number in the kernel's
/// [`Config`]. A number not in the list reads back as the first word.
trait Words: Copy + PartialEq + 'static {
    const WORDS: &'static [(&'static str, Self, u32)];
}

impl Words for Mode {
    const WORDS: &'static [(&'static str, Self, u32)] = &[
        ("enforce", Self::Enforce, MODE_ENFORCE),
        ("monitor", Self::Monitor, MODE_MONITOR),
    ];
}

impl Words for Cookies {
    const WORDS: &'static [(&'static str, Self, u32)] = &[
        ("auto", Self::Auto, COOKIES_AUTO),
        ("always", Self::Always, COOKIES_ALWAYS),
        ("off", Self::Off, COOKIES_OFF),
    ];
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

/// The settings in force, in human units. Each field is written by its key in [`KEYS`].
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

/// A config key: its name (the same everywhere: `run --KEY`, the TOML file, `config
/// set`), default, what it means and why that default, and how its value goes in and out
/// of [`Settings`] and the kernel's [`Config`].
pub struct KeyInfo {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub why: &'static str,
    /// Parse and validate a value (as the user wrote it) into the key's field; errors
    /// name the key (passed in) and change nothing.
    parse: fn(&mut Settings, &'static str, &str) -> Result<(), ConfigError>,
    /// The field as `config show` prints it and `parse` takes it back.
    format: fn(&Settings) -> String,
    /// Write the field's values into the kernel's config (what only this key decides;
    /// what several keys decide together is [`Settings::to_kernel`]'s).
    to_kernel: fn(&Settings, &mut Config),
    /// Read the field back from the kernel's config.
    from_kernel: fn(&Config, &mut Settings),
}

/// Every key, in the order `config show` lists them. Each entry is all there is of a key:
/// the `run --KEY` flag, the TOML file, `config set`/`show`, its defaults and its values
/// in the kernel are generated from it. To add a key: add its field to [`Settings`] (and
/// to the placeholder in `Settings::unset`, which the compiler asks for) and one entry
/// here (plus its field in the kernel's [`Config`], if the XDP program reads it).
pub const KEYS: [KeyInfo; 10] = [
    KeyInfo {
        name: "syn-rate",
        default: "200",
        help: "SYNs per second each source may open, sustained (1-10000000)",
        why: "A whole office behind one NAT address opening 6 connections per page view \
              for 500 people browsing averages well under 100 new connections a second; \
              a flooding tool sends tens of thousands. 200/s leaves the office twice its \
              busy-hour rate and still stops a flood within a fraction of a second.",
        parse: |s, key, v| parse_int(key, v, 1, 10_000_000).map(|n| s.syn_rate = n),
        format: |s| s.syn_rate.to_string(),
        to_kernel: |s, c| c.syn_rate = s.syn_rate,
        from_kernel: |c, s| s.syn_rate = c.syn_rate,
    },
    KeyInfo {
        name: "syn-burst",
        default: "100",
        help: "SYNs a source may open at once before the rate applies (1-1000000)",
        why: "Absorbs a dozen people behind one address loading a page at the same moment \
              (6 connections each), and is smaller than a typical listen backlog (128 or \
              more), so the SYNs a flooder gets in before its ban cannot fill the server's \
              SYN queue on its own.",
        parse: |s, key, v| parse_int(key, v, 1, 1_000_000).map(|n| s.syn_burst = n),
        format: |s| s.syn_burst.to_string(),
        to_kernel: |s, c| c.syn_burst = s.syn_burst,
        from_kernel: |c, s| s.syn_burst = c.syn_burst,
    },
    KeyInfo {
        name: "ban-for",
        default: "10m",
        help: "how long a source over the limit is banned (0s: drop its excess SYNs, never ban)",
        why: "Long enough that a flood restarting every few minutes costs one burst per ban, \
              short enough that a mistaken ban of a shared address heals by itself soon.",
        parse: |s, key, v| {
            let reason = "at most 30d; block a source for longer with `synguard block add`";
            parse_duration_in(key, v, Duration::ZERO..=MAX_DURATION, reason).map(|d| s.ban_for = d)
        },
        format: |s| format_duration(s.ban_for),
        to_kernel: |s, c| c.ban_ns = duration_ns(s.ban_for),
        from_kernel: |c, s| s.ban_for = Duration::from_nanos(c.ban_ns),
    },
    KeyInfo {
        name: "ipv4-prefix",
        default: "32",
        help: "IPv4 sources are metered and banned per prefix of this length (8-32)",
        why: "One address is one host or one NAT; aggregating wider would punish neighbours. \
              Below 19, bans no longer fit the kernel's per-/24 hint, and every IPv4 packet \
              also walks the bans trie.",
        parse: |s, key, v| parse_int(key, v, 8, 32).map(|n| s.ipv4_prefix = n),
        format: |s| s.ipv4_prefix.to_string(),
        to_kernel: |s, c| {
            c.ipv4_prefix = u32::from(s.ipv4_prefix);
            c.v4_mask = prefix_mask::<4>(c.ipv4_prefix);
        },
        from_kernel: |c, s| s.ipv4_prefix = c.ipv4_prefix as u8,
    },
    KeyInfo {
        name: "ipv6-prefix",
        default: "64",
        help: "IPv6 sources are metered and banned per prefix of this length (16-128)",
        why: "A /64 is one subnet, usually one customer; an attacker rotating addresses \
              inside it is still one source. Below 35, every IPv6 packet also walks the \
              bans trie (see ipv4-prefix).",
        parse: |s, key, v| parse_int(key, v, 16, 128).map(|n| s.ipv6_prefix = n),
        format: |s| s.ipv6_prefix.to_string(),
        to_kernel: |s, c| {
            c.ipv6_prefix = u32::from(s.ipv6_prefix);
            c.v6_mask = prefix_mask::<16>(c.ipv6_prefix);
        },
        from_kernel: |c, s| s.ipv6_prefix = c.ipv6_prefix as u8,
    },
    KeyInfo {
        name: "attack-syn-rate",
        default: "2000",
        help: "SYNs per second on one interface that start attack mode (100-100000000)",
        why: "Above the new-connection rate of a busy company web site, and above what one \
              flooder's burst amounts to before its ban (syn-burst over a 100 ms window), \
              so attack mode means a flood from many sources. A server without SYN cookies \
              of its own and a small backlog should set it lower.",
        parse: |s, key, v| parse_int(key, v, 100, 100_000_000).map(|n| s.attack_syn_rate = n),
        format: |s| s.attack_syn_rate.to_string(),
        to_kernel: |s, c| c.attack_syn_rate = s.attack_syn_rate,
        from_kernel: |c, s| s.attack_syn_rate = c.attack_syn_rate,
    },
    KeyInfo {
        name: "syn-cookies",
        default: "auto",
        help: "answer unverified SYNs with SYN cookies from XDP: auto (in attack mode), always, off",
        why: "Cookies cost real clients their TCP options until they are verified, so they \
              are used only while an attack lasts.",
        parse: |s, key, v| parse_word(key, v).map(|w| s.syn_cookies = w),
        format: |s| word(s.syn_cookies).to_string(),
        to_kernel: |s, c| c.syn_cookies = word_to_kernel(s.syn_cookies),
        from_kernel: |c, s| s.syn_cookies = word_from_kernel(c.syn_cookies),
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
        parse: |s, key, v| {
            let reason = "must be between 1s and 30d";
            parse_duration_in(key, v, Duration::from_secs(1)..=MAX_DURATION, reason)
                .map(|d| s.verified_for = d)
        },
        format: |s| format_duration(s.verified_for),
        to_kernel: |s, c| c.verified_ns = duration_ns(s.verified_for),
        from_kernel: |c, s| s.verified_for = Duration::from_nanos(c.verified_ns),
    },
    KeyInfo {
        name: "mode",
        default: "enforce",
        help: "enforce (drop what is flagged) or monitor (decide and count, drop nothing)",
        why: "A security tool should protect once installed; use monitor to tune safely.",
        parse: |s, key, v| parse_word(key, v).map(|w| s.mode = w),
        format: |s| word(s.mode).to_string(),
        to_kernel: |s, c| c.mode = word_to_kernel(s.mode),
        from_kernel: |c, s| s.mode = word_from_kernel(c.mode),
    },
    KeyInfo {
        name: "ports",
        default: "",
        help: "protected destination ports, e.g. \"80,443,8000-8080\"; empty means all",
        why: "Every listening port of a web server is a SYN-flood target.",
        parse: |s, key, v| {
            Ports::parse(v)
                .map(|p| s.ports = p)
                .map_err(|reason| invalid(key, v, reason))
        },
        format: |s| s.ports.to_string(),
        to_kernel: |s, c| {
            c.all_ports = u32::from(s.ports.is_all());
            c.ports = s.ports.bitmap();
        },
        from_kernel: |c, s| {
            s.ports = if c.all_ports != 0 {
                Ports::all()
            } else {
                Ports::from_bitmap(&c.ports)
            }
        },
    },
];

/// The key named `name`.
fn key_info(name: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.name == name)
}

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
    /// Every key at its [`KeyInfo::default`], through the key's own parser.
    fn default() -> Self {
        let mut s = Self::unset();
        for k in &KEYS {
            // The defaults are constants, checked by `every_default_parses`.
            if let Err(e) = (k.parse)(&mut s, k.name, k.default) {
                panic!("the default of `{}` is refused: {e}", k.name);
            }
        }
        s
    }
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parse a human duration: `30s`, `10m`, `1h`, `1h30m`, `0s`.
pub fn parse_duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    if v.starts_with('-') {
        return Err(invalid(key, value, "durations cannot be negative"));
    }
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(
            key,
            value,
            format!("add a unit: {v}s, {v}m or {v}h (durations look like 30s, 10m, 1h)"),
        ));
    }
    humantime::parse_duration(v).map_err(|e| {
        invalid(
            key,
            value,
            format!("{e}; durations look like 30s, 10m, 1h or 1h30m"),
        )
    })
}

/// [`parse_duration`], refused with `reason` outside `range`.
fn parse_duration_in(
    key: &'static str,
    value: &str,
    range: RangeInclusive<Duration>,
    reason: &str,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, value)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(invalid(key, value, reason))
    }
}

fn parse_int<T: TryFrom<u64> + Copy>(
    key: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<T, ConfigError> {
    let v = value.trim().replace('_', "");
    let n: u64 = v.parse().map_err(|_| {
        invalid(
            key,
            value,
            if v.starts_with('-') {
                format!("must be between {min} and {max}")
            } else {
                format!("not a whole number; expected {min} to {max}")
            },
        )
    })?;
    if n < min || n > max {
        return Err(invalid(
            key,
            value,
            format!("out of range: must be between {min} and {max}"),
        ));
    }
    T::try_from(n).map_err(|_| invalid(key, value, format!("must be between {min} and {max}")))
}

/// One of `T`'s words, e.g. `expected auto, always or off` when it is none of them.
fn parse_word<T: Words>(key: &'static str, value: &str) -> Result<T, ConfigError> {
    let v = value.trim();
    if let Some(&(_, w, _)) = T::WORDS.iter().find(|(name, ..)| *name == v) {
        return Ok(w);
    }
    let names: Vec<&str> = T::WORDS.iter().map(|(name, ..)| *name).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    Err(invalid(key, value, format!("expected {list}")))
}

/// The word for `value`.
fn word<T: Words>(value: T) -> &'static str {
    T::WORDS
        .iter()
        .find(|(_, w, _)| *w == value)
        .map_or("", |(name, ..)| name)
}

/// The kernel's number for `value`.
fn word_to_kernel<T: Words>(value: T) -> u32 {
    T::WORDS
        .iter()
        .find(|(_, w, _)| *w == value)
        .map_or(0, |&(.., n)| n)
}

/// The value for the kernel's number `n` (the first word's if it is none of them).
fn word_from_kernel<T: Words>(n: u32) -> T {
    let first = T::WORDS[0].1;
    T::WORDS
        .iter()
        .find(|(.., k)| *k == n)
        .map_or(first, |&(_, w, _)| w)
}

impl Settings {
    /// Every field at a placeholder, for its key (in [`KEYS`]) to overwrite.
    fn unset() -> Self {
        Self {
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
        }
    }

    /// Set one key from its textual value. On error nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(k) = key_info(key) else {
            if let Some(k) = crate::crowdsec::KEYS.iter().find(|k| **k == key) {
                return Err(invalid(
                    k,
                    value,
                    "a key of `run` itself, not a live one: set it as `synguard run --KEY \
                     VALUE` or in its --config file, then restart it",
                ));
            }
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
            });
        };
        let mut next = self.clone();
        (k.parse)(&mut next, k.name, value)?;
        *self = next;
        Ok(())
    }

    /// The value of a key as `config show` prints it (and `set` accepts it back).
    pub fn get(&self, key: &str) -> Option<String> {
        key_info(key).map(|k| (k.format)(self))
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

    /// The kernel's view: each key's values, what is derived from several keys, and the
    /// identity of the writer.
    pub fn to_kernel(&self, generation: u64) -> Config {
        let mut c = Config {
            abi: ABI_VERSION,
            generation,
            build_id: u64::from_str_radix(crate::version::BUILD_ID, 16).unwrap_or(0),
            daemon_pid: 0,
            _pad0: 0,
            attack_calm_ns: synguard_common::ATTACK_CALM_NS,
            snat: 0,
            // Drawn by `Maps::write_config` when the maps are new, kept after that.
            source_seed: [0; synguard_common::sources::SEED_WORDS],
            // Written below, by the keys and from several of them.
            mode: 0,
            syn_rate: 0,
            syn_burst: 0,
            ipv4_prefix: 0,
            ipv6_prefix: 0,
            attack_syn_rate: 0,
            syn_cookies: 0,
            syn_interval_ns: 0,
            syn_tolerance_ns: 0,
            ban_ns: 0,
            verified_ns: 0,
            v4_mask: [0; 4],
            all_ports: 0,
            v6_mask: [0; 16],
            syn_quiet: 0,
            ports: [0; PORT_WORDS],
        };
        for k in &KEYS {
            (k.to_kernel)(self, &mut c);
        }
        // From syn-rate and syn-burst together.
        let interval = 1_000_000_000 / u64::from(self.syn_rate.max(1));
        c.syn_interval_ns = interval;
        c.syn_tolerance_ns = u64::from(self.syn_burst.max(1) - 1) * interval;
        c.syn_quiet = synguard_common::sources::sketch_quiet_limit(interval);
        c
    }

    /// The next kernel config after `current`: these settings, a bumped generation, and
    /// the identity of the `run` that owns the program kept as it is.
    pub fn next_kernel(&self, current: &Config) -> Config {
        let mut c = self.to_kernel(current.generation.wrapping_add(1));
        c.build_id = current.build_id;
        c.daemon_pid = current.daemon_pid;
        c.snat = current.snat;
        c.attack_calm_ns = current.attack_calm_ns;
        c.source_seed = current.source_seed;
        c
    }

    /// Read back what the kernel holds.
    pub fn from_kernel(c: &Config) -> Self {
        let mut s = Self::unset();
        for k in &KEYS {
            (k.from_kernel)(c, &mut s);
        }
        s
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

    /// Every key's default goes through its own parser (that is what `Default` does),
    /// prints back as itself, and survives the trip through the kernel's config.
    #[test]
    fn every_default_parses() {
        for k in &KEYS {
            let mut s = Settings::unset();
            (k.parse)(&mut s, k.name, k.default)
                .unwrap_or_else(|e| panic!("default of `{}`: {e}", k.name));
            assert_eq!((k.format)(&s), k.default, "{}", k.name);
        }
        let d = Settings::default();
        assert_eq!(Settings::from_kernel(&d.to_kernel(0)), d);
    }

    /// Each word of a word key parses, prints and goes through the kernel as itself.
    #[test]
    fn words_round_trip() {
        fn check<T: Words + fmt::Debug>(all: &[T]) {
            assert_eq!(T::WORDS.len(), all.len());
            for &v in all {
                assert_eq!(parse_word::<T>("k", word(v)), Ok(v));
                assert_eq!(word_from_kernel::<T>(word_to_kernel(v)), v);
            }
        }
        check(&[Mode::Enforce, Mode::Monitor]);
        check(&[Cookies::Auto, Cookies::Always, Cookies::Off]);
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
