//! The HTTP side of the link: a bouncer's pull of the decisions stream, and a machine's
//! login and push of alerts. Every answer is checked (status, then body) and every error
//! says what to do about it; nothing here touches the kernel's tables.
//!
//! Blocking calls (`ureq`, rustls): the link's task runs them on tokio's blocking pool.
//! ureq rather than reqwest for its size: 25 crates against 118 (both with rustls), which
//! keeps the build and CI minutes down, for the one request every few seconds the link
//! makes.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use ipnet::IpNet;
use serde::Deserialize;

use super::{Credentials, ORIGIN, SCENARIO, decisions::Stream};

/// A request that takes longer than this has failed (a 100,000-decision startup pull is
/// about 14 MB).
const TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read: a million decisions are about 140 MB.
const MAX_BODY: u64 = 256 << 20;
/// A machine's token lasts an hour; renewed before.
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);

pub struct Lapi {
    http: ureq::Agent,
    /// The base URL, without its trailing slash.
    base: String,
    key: Option<String>,
    creds: Option<Credentials>,
    token: Option<(String, Instant)>,
}

/// One of synguard's bans, to push.
#[derive(Clone, Debug)]
pub struct BanAlert {
    pub net: IpNet,
    pub syns: u64,
    pub rate: u64,
    pub duration: Duration,
    /// Why it may be shared (`crowdsec-share`): "proven: ..." or "all".
    pub why: String,
}

fn excerpt(body: &[u8]) -> String {
    let t = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    t.trim().to_string()
}

impl Lapi {
    pub fn new(url: &str, key: Option<String>, creds: Option<Credentials>) -> anyhow::Result<Self> {
        super::check_url(url).map_err(|why| anyhow!("crowdsec-url {url:?}: {why}"))?;
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("synguard/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            http: config.into(),
            base: url.trim_end_matches('/').to_string(),
            key,
            creds,
            token: None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Pull the decisions stream: all of them (`startup`), or the changes since the last
    /// pull with this key.
    pub fn pull(&self, startup: bool) -> anyhow::Result<Stream> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| anyhow!("no bouncer key"))?;
        let url = self.url(&format!("v1/decisions/stream?startup={startup}"));
        let (status, body) = read(
            self.http
                .get(&url)
                .header("X-Api-Key", key)
                .header("Accept", "application/json")
                .call(),
        )
        .map_err(|e| anyhow!("{}: {e}", self.base))?;
        if status == 403 || status == 401 {
            bail!(
                "{}: the bouncer key was refused ({status}): make one with `cscli bouncers add \
                 synguard` and put it in crowdsec-key-file",
                self.base
            );
        }
        if !(200..300).contains(&status) {
            bail!("{}: HTTP {status}: {}", self.base, excerpt(&body));
        }
        super::decisions::parse_stream(&body)
    }

    fn login(&mut self) -> anyhow::Result<String> {
        let creds = self
            .creds
            .as_ref()
            .ok_or_else(|| anyhow!("no machine credentials"))?;
        let body = serde_json::json!({
            "machine_id": creds.login,
            "password": creds.password,
            "scenarios": [SCENARIO],
        });
        let (status, bytes) = read(
            self.http
                .post(&self.url("v1/watchers/login"))
                .header("Content-Type", "application/json")
                .send(&serde_json::to_vec(&body)?[..]),
        )
        .map_err(|e| anyhow!("{}: login: {e}", self.base))?;
        if !(200..300).contains(&status) {
            bail!(
                "{}: login as {:?} refused ({status}): {}; check crowdsec-credentials (and \
                 that the machine is validated: `cscli machines list`)",
                self.base,
                creds.login,
                excerpt(&bytes)
            );
        }
        #[derive(Deserialize)]
        struct Login {
            token: String,
        }
        let l: Login = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "{}: login: not the LAPI's answer ({e}): {}",
                self.base,
                excerpt(&bytes)
            )
        })?;
        self.token = Some((l.token.clone(), Instant::now()));
        Ok(l.token)
    }

    fn token(&mut self) -> anyhow::Result<String> {
        match &self.token {
            Some((t, at)) if at.elapsed() < TOKEN_LIFE => Ok(t.clone()),
            _ => self.login(),
        }
    }

    /// Push bans as alerts, one decision each.
    pub fn push(&mut self, bans: &[BanAlert]) -> anyhow::Result<()> {
        let body: Vec<serde_json::Value> = bans.iter().map(alert).collect();
        let body = serde_json::to_vec(&body)?;
        for attempt in 0..2 {
            let token = self.token()?;
            let (status, bytes) = read(
                self.http
                    .post(&self.url("v1/alerts"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .header("Content-Type", "application/json")
                    .send(&body[..]),
            )
            .map_err(|e| anyhow!("{}: pushing alerts: {e}", self.base))?;
            if status == 401 && attempt == 0 {
                // The token expired early (the LAPI restarted): log in again, once.
                self.token = None;
                continue;
            }
            if !(200..300).contains(&status) {
                bail!(
                    "{}: pushing alerts: HTTP {status}: {}",
                    self.base,
                    excerpt(&bytes)
                );
            }
            return Ok(());
        }
        bail!("{}: pushing alerts: refused twice", self.base)
    }
}

/// A request's status and body (at most [`MAX_BODY`]), or what went wrong, in words.
fn read(
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Vec<u8>), String> {
    let mut resp = r.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok((status, body))
}

/// The alert for one ban (`models.Alert`; every field the LAPI requires).
fn alert(b: &BanAlert) -> serde_json::Value {
    let now = crate::clock::rfc3339(std::time::SystemTime::now());
    let host = b.net.prefix_len() == b.net.max_prefix_len();
    let (scope, value) = if host {
        ("Ip", b.net.addr().to_string())
    } else {
        ("Range", b.net.to_string())
    };
    let mut source = serde_json::json!({ "scope": scope, "value": value });
    if host {
        source["ip"] = serde_json::Value::String(value.clone());
    } else {
        source["range"] = serde_json::Value::String(value.clone());
    }
    serde_json::json!({
        "scenario": SCENARIO,
        "scenario_hash": "",
        "scenario_version": env!("CARGO_PKG_VERSION"),
        "message": format!(
            "synguard banned {}: {} SYNs at {}/s ({})",
            b.net, b.syns, b.rate, b.why
        ),
        "events_count": 1,
        "start_at": now,
        "stop_at": now,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "events": [],
        "source": source,
        "decisions": [{
            "duration": format!("{}s", b.duration.as_secs().max(1)),
            "origin": ORIGIN,
            "scenario": SCENARIO,
            "scope": scope,
            "type": "ban",
            "value": value,
        }],
    })
}
