//! A fleet of servers sharing bans through CrowdSec's Local API (LAPI), the engine that
//! firewall, nginx and CDN bouncers already speak. synguard builds no sharing of its own:
//!
//! - **pull** (`crowdsec-url` and `crowdsec-key-file`, a bouncer key): `run` reads
//!   `/v1/decisions/stream`, everything at start (and after losing the LAPI), then the
//!   changes every `crowdsec-interval`, and enforces the `ban` decisions of scope `Ip` and
//!   `Range` (IPv4 and IPv6) in XDP until they expire or are deleted: entries of the
//!   operator's trie (`RULE_CROWDSEC`), which drop every packet of the source, as
//!   CrowdSec's other bouncers do. The allowlist still wins; a prefix that already has an
//!   entry of synguard's own (a manual block or allow, or synguard's ban) keeps it, so
//!   synguard's own bans coming back from the LAPI are not doubled.
//! - **push** (`crowdsec-credentials`, the machine credentials `cscli machines add NAME
//!   --password P -f FILE` writes): `run` sends its own bans as alerts with a decision
//!   (scenario `synguard/syn-flood`, origin `synguard`), as `crowdsec-share` allows:
//!   `proven` (the default) only bans of sources that hold a proof that they own their
//!   address (see `synguard::proofs`): what a forger could have caused is never published;
//!   `all` every ban; `off` none.
//!
//! The LAPI down or answering garbage changes nothing already enforced: what was pulled
//! stays until it expires (the kernel drops it at its expiry without `run`), `run` logs
//! once, retries with a growing delay (from `crowdsec-interval` to 5 minutes), and
//! `status` and the metrics show it (`<state-dir>/crowdsec.json`).

pub mod decisions;
pub mod enforce;
pub mod lapi;
pub mod task;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The `run` keys (flags and TOML; not `config set`: they configure `run` itself).
pub const KEYS: [&str; 5] = [
    "crowdsec-url",
    "crowdsec-key-file",
    "crowdsec-credentials",
    "crowdsec-share",
    "crowdsec-interval",
];

/// The scenario of the alerts synguard pushes.
pub const SCENARIO: &str = "synguard/syn-flood";
/// The origin of their decisions.
pub const ORIGIN: &str = "synguard";
/// The longest wait between two attempts while the LAPI fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Which of synguard's own bans are pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    /// Only bans of sources that proved they own their address.
    Proven,
    /// Every ban (a ban caused by SYNs forged with someone's address is published too).
    All,
    /// None.
    Off,
}

impl Share {
    pub fn name(self) -> &'static str {
        match self {
            Share::Proven => "proven",
            Share::All => "all",
            Share::Off => "off",
        }
    }
}

/// The `crowdsec-*` settings of `run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The LAPI's base URL; empty: off.
    pub url: String,
    pub key_file: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
    pub share: Share,
    pub interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_file: None,
            credentials: None,
            share: Share::Proven,
            interval: Duration::from_secs(10),
        }
    }
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn key_name(key: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| *k == key)
}

impl Settings {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Set one key from its text (flag or TOML value).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(key) = key_name(key) else {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
            });
        };
        let v = value.trim();
        let path = || (!v.is_empty()).then(|| PathBuf::from(v));
        match key {
            "crowdsec-url" => {
                if !v.is_empty() {
                    check_url(v).map_err(|why| invalid(key, value, why))?;
                }
                self.url = v.to_string();
            }
            "crowdsec-key-file" => self.key_file = path(),
            "crowdsec-credentials" => self.credentials = path(),
            "crowdsec-share" => {
                self.share = match v {
                    "proven" => Share::Proven,
                    "all" => Share::All,
                    "off" => Share::Off,
                    _ => return Err(invalid(key, value, "one of proven, all, off")),
                }
            }
            "crowdsec-interval" => {
                let d = humantime::parse_duration(v)
                    .map_err(|e| invalid(key, value, format!("a duration such as 10s ({e})")))?;
                if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                    return Err(invalid(key, value, "between 1s and 1h"));
                }
                self.interval = d;
            }
            _ => unreachable!("a key of KEYS"),
        }
        Ok(())
    }

    /// The `crowdsec-*` keys of a TOML document (the others are `config`'s).
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File(e.to_string()))?;
        let mut next = self.clone();
        for (key, value) in &table {
            if key_name(key).is_none() {
                continue;
            }
            let text = crate::config::toml_text(key, value)?;
            next.set(key, &text)?;
        }
        *self = next;
        Ok(())
    }

    /// What `run` refuses to start with: a link that could do nothing, or half of one.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            if let Some((key, _)) = [
                ("crowdsec-key-file", self.key_file.is_some()),
                ("crowdsec-credentials", self.credentials.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set)
            {
                return Err(ConfigError::File(format!(
                    "`{key}` is set but `crowdsec-url` is not: set the Local API's URL too \
                     (e.g. crowdsec-url = \"http://10.0.0.5:8080\")"
                )));
            }
            return Ok(());
        }
        if self.key_file.is_none() && self.credentials.is_none() {
            return Err(ConfigError::File(
                "`crowdsec-url` is set, but neither `crowdsec-key-file` (a bouncer key, to \
                 pull decisions: `cscli bouncers add synguard`) nor `crowdsec-credentials` \
                 (machine credentials, to push bans: `cscli machines add NAME --password P \
                 -f FILE`)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `key=value` for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} (pull: {}, push: {}, share {}, every {})",
            self.url,
            self.key_file
                .as_deref()
                .map_or("off".into(), |p| format!("key {}", p.display())),
            self.credentials
                .as_deref()
                .map_or("off".into(), |p| format!("as in {}", p.display())),
            self.share.name(),
            crate::config::format_duration(self.interval),
        )
    }
}

/// Whether `url` is a LAPI base URL: `http://` or `https://`, a host, no query.
pub fn check_url(url: &str) -> Result<(), String> {
    let hint = "the LAPI's base URL, http:// or https:// with a host, e.g. http://10.0.0.5:8080";
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); {hint}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.host().is_none_or(str::is_empty)
        || uri.query().is_some()
    {
        return Err(hint.into());
    }
    Ok(())
}

/// The `run` flags of the `crowdsec-*` keys.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "CrowdSec (also in --config FILE; see the README's fleet section)")]
pub struct Args {
    /// The Local API's base URL (e.g. http://10.0.0.5:8080); empty: off [default: ""].
    #[arg(long = "crowdsec-url", value_name = "URL")]
    pub url: Option<String>,
    /// File with a bouncer API key (`cscli bouncers add synguard`): pull and enforce the
    /// LAPI's ban decisions.
    #[arg(long = "crowdsec-key-file", value_name = "FILE")]
    pub key_file: Option<String>,
    /// Machine credentials YAML (`cscli machines add NAME --password P -f FILE`): push
    /// synguard's bans as alerts.
    #[arg(long = "crowdsec-credentials", value_name = "FILE")]
    pub credentials: Option<String>,
    /// Which bans to push: proven (only sources that proved they own their address),
    /// all, off [default: "proven"].
    #[arg(long = "crowdsec-share", value_name = "proven|all|off")]
    pub share: Option<String>,
    /// How often to pull [default: "10s"].
    #[arg(long = "crowdsec-interval", value_name = "DURATION")]
    pub interval: Option<String>,
}

impl Args {
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("crowdsec-url", &self.url),
            ("crowdsec-key-file", &self.key_file),
            ("crowdsec-credentials", &self.credentials),
            ("crowdsec-share", &self.share),
            ("crowdsec-interval", &self.interval),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// `run`'s settings: the TOML file's, then the flags'.
pub fn load(file: Option<&Path>, args: &Args) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        s.apply_toml(&text)
            .with_context(|| format!("in {}", path.display()))?;
    }
    for (k, v) in args.pairs() {
        s.set(k, v)?;
    }
    s.check()?;
    Ok(s)
}

/// Machine credentials, as `cscli machines add ... -f FILE` writes them (`url`, `login`,
/// `password`, one `key: value` per line). Read as that flat mapping only, not as YAML at
/// large: a document of three scalar keys does not justify a YAML parser, and anything
/// else is refused with the line it could not read.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub url: Option<String>,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

pub fn parse_credentials(text: &str) -> anyhow::Result<Credentials> {
    let (mut url, mut login, mut password) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t == "---" {
            continue;
        }
        let Some((k, v)) = t.split_once(':') else {
            anyhow::bail!("line {}: expected `key: value`, found {t:?}", i + 1);
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v)
            .to_string();
        match k.trim() {
            "url" => url = Some(v),
            "login" => login = Some(v),
            "password" => password = Some(v),
            _ => {}
        }
    }
    match (login, password) {
        (Some(login), Some(password)) if !login.is_empty() && !password.is_empty() => {
            Ok(Credentials {
                url,
                login,
                password,
            })
        }
        _ => anyhow::bail!(
            "no `login` and `password` (the file `cscli machines add NAME --password P -f \
             FILE` writes)"
        ),
    }
}

/// Read the bouncer key file: its first non-empty line.
pub fn read_key(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the CrowdSec bouncer key {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{} is empty: put the key `cscli bouncers add synguard` printed in it",
                path.display()
            )
        })
}

/// Read the machine credentials file.
pub fn read_credentials(path: &Path) -> anyhow::Result<Credentials> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the CrowdSec credentials {}", path.display()))?;
    parse_credentials(&text).with_context(|| format!("in {}", path.display()))
}

/// The link as `run` last saw it, in `<state-dir>/crowdsec.json` for `status` and the
/// metrics (the pin directory is a BPF filesystem: no plain files there).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Link {
    pub url: String,
    pub pull: bool,
    pub push: bool,
    pub share: String,
    /// The last attempt to pull succeeded.
    pub reachable: bool,
    /// Wall-clock time (RFC 3339) of the last successful pull.
    pub last_pull: Option<String>,
    /// Seconds since the epoch of the same, for the metrics.
    pub last_pull_unix: Option<u64>,
    /// How long that pull took (request and parse), and applying it to the tables.
    pub last_pull_s: Option<f64>,
    pub last_apply_s: Option<f64>,
    /// What went wrong last, while it still does.
    pub error: Option<String>,
    /// Failed attempts in a row, and the wait before the next.
    pub failures: u32,
    pub retry_in_s: Option<u64>,
    /// Decisions held and enforced, and the prefixes they cover.
    pub decisions: usize,
    pub prefixes: usize,
    /// Prefixes held but not enforced by a CrowdSec entry: synguard has its own entry there
    /// (manual block or allow, or its own ban).
    pub shadowed: usize,
    /// Prefixes held but not enforced because the blocklist is full (see
    /// `capacity::ALLOW_RESERVE`); put in as room frees up.
    #[serde(default)]
    pub not_enforced_full: usize,
    /// Decisions of the stream not enforced: not a ban or simulated, a scope other than
    /// Ip and Range, already expired, unreadable.
    pub skipped: std::collections::BTreeMap<String, u64>,
    /// Bans pushed, and those `crowdsec-share` kept back.
    pub pushed: u64,
    pub kept_back: u64,
    pub push_error: Option<String>,
}

/// Where `run` keeps the link's state.
pub fn link_path(state_dir: &Path) -> PathBuf {
    state_dir.join("crowdsec.json")
}

/// The link's state, if `run` has one.
pub fn read_link(state_dir: &Path) -> Option<Link> {
    let text = std::fs::read_to_string(link_path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Write it (atomically: a reader never sees half).
pub fn write_link(state_dir: &Path, link: &Link) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = link_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(link)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_refuse_with_reasons() {
        let mut s = Settings::default();
        s.set("crowdsec-url", "http://10.0.0.5:8080/").unwrap();
        s.set("crowdsec-share", "all").unwrap();
        s.set("crowdsec-interval", "30s").unwrap();
        assert_eq!((s.share, s.interval), (Share::All, Duration::from_secs(30)));
        for (k, v) in [
            ("crowdsec-url", "10.0.0.5:8080"),
            ("crowdsec-url", "ftp://x"),
            ("crowdsec-share", "some"),
            ("crowdsec-interval", "0s"),
            ("crowdsec-interval", "2h"),
            ("crowdsec-interval", "often"),
        ] {
            let before = s.clone();
            let e = s.set(k, v).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
            assert_eq!(s, before, "a refused value changes nothing");
        }
        assert!(matches!(
            s.set("crowdsec-urls", "x"),
            Err(ConfigError::UnknownKey { .. })
        ));
        // A URL with nothing to do, and a key without a URL.
        assert!(s.check().is_err());
        s.set("crowdsec-key-file", "/etc/synguard/crowdsec.key")
            .unwrap();
        s.check().unwrap();
        let mut t = Settings::default();
        t.set("crowdsec-credentials", "/x").unwrap();
        assert!(t.check().unwrap_err().to_string().contains("crowdsec-url"));
    }

    #[test]
    fn toml_takes_only_its_keys() {
        let mut s = Settings::default();
        s.apply_toml(
            "syn-rate = 100\ncrowdsec-url = \"https://lapi.example:8080\"\n\
             crowdsec-key-file = \"/k\"\ncrowdsec-interval = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(s.url, "https://lapi.example:8080");
        assert_eq!(s.interval, Duration::from_secs(5));
        assert!(s.apply_toml("crowdsec-share = \"maybe\"\n").is_err());
        assert!(s.apply_toml("crowdsec-share = true\n").is_err());
        assert_eq!(s.share, Share::Proven, "all or nothing");
    }

    #[test]
    fn credentials_as_cscli_writes_them() {
        let c =
            parse_credentials("url: http://127.0.0.1:8080\nlogin: web-2\npassword: 's3cr:et'\n")
                .unwrap();
        assert_eq!(c.url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            (c.login.as_str(), c.password.as_str()),
            ("web-2", "s3cr:et")
        );
        assert!(
            !format!("{c:?}").contains("s3cr"),
            "the password is never logged"
        );
        assert!(parse_credentials("login: x\n").is_err());
        assert!(parse_credentials("- a list\n").is_err());
        assert!(parse_credentials("").is_err());
    }
}
