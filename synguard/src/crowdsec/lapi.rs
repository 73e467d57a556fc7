//! The HTTP side of the link: a bouncer's pull of the decisions stream, and a machine's
//! login and push of alerts. Every answer is checked (status, then body) and every error
//! says what to do about it; nothing here touches the kernel's tables.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use ipnet::IpNet;
use serde::Deserialize;

use super::{Credentials, ORIGIN, SCENARIO, decisions::Stream};

/// A request that takes longer than this has failed (a 100,000-decision startup pull is
/// about 20 MB).
const TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A machine's token lasts an hour; renewed before.
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);

pub struct Lapi {
    http: reqwest::Client,
    base: reqwest::Url,
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
        let mut base = reqwest::Url::parse(url).context("crowdsec-url")?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("synguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("making the HTTP client")?;
        Ok(Self {
            http,
            base,
            key,
            creds,
            token: None,
        })
    }

    fn url(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        self.base
            .join(path)
            .with_context(|| format!("joining {path} to {}", self.base))
    }

    /// Pull the decisions stream: all of them (`startup`), or the changes since the last
    /// pull with this key.
    pub async fn pull(&self, startup: bool) -> anyhow::Result<Stream> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| anyhow!("no bouncer key"))?;
        let mut url = self.url("v1/decisions/stream")?;
        url.query_pairs_mut()
            .append_pair("startup", if startup { "true" } else { "false" });
        let resp = self
            .http
            .get(url)
            .header("X-Api-Key", key)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| anyhow!("{}: {}", self.base, describe(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("{}: reading the answer: {}", self.base, describe(&e)))?;
        if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "{}: the bouncer key was refused ({status}): make one with `cscli bouncers add \
                 synguard` and put it in crowdsec-key-file",
                self.base
            );
        }
        if !status.is_success() {
            bail!("{}: {status}: {}", self.base, excerpt(&body));
        }
        super::decisions::parse_stream(&body)
    }

    async fn login(&mut self) -> anyhow::Result<String> {
        let creds = self
            .creds
            .as_ref()
            .ok_or_else(|| anyhow!("no machine credentials"))?;
        let body = serde_json::json!({
            "machine_id": creds.login,
            "password": creds.password,
            "scenarios": [SCENARIO],
        });
        let resp = self
            .http
            .post(self.url("v1/watchers/login")?)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await
            .map_err(|e| anyhow!("{}: login: {}", self.base, describe(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
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

    async fn token(&mut self) -> anyhow::Result<String> {
        match &self.token {
            Some((t, at)) if at.elapsed() < TOKEN_LIFE => Ok(t.clone()),
            _ => self.login().await,
        }
    }

    /// Push bans as alerts, one decision each.
    pub async fn push(&mut self, bans: &[BanAlert]) -> anyhow::Result<()> {
        let body: Vec<serde_json::Value> = bans.iter().map(alert).collect();
        for attempt in 0..2 {
            let token = self.token().await?;
            let resp = self
                .http
                .post(self.url("v1/alerts")?)
                .bearer_auth(&token)
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&body)?)
                .send()
                .await
                .map_err(|e| anyhow!("{}: pushing alerts: {}", self.base, describe(&e)))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                // The token expired early (the LAPI restarted): log in again, once.
                self.token = None;
                continue;
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            if !status.is_success() {
                bail!(
                    "{}: pushing alerts: {status}: {}",
                    self.base,
                    excerpt(&bytes)
                );
            }
            return Ok(());
        }
        bail!("{}: pushing alerts: refused twice", self.base)
    }
}

/// A reqwest error in words (its chain: "connection refused", "timed out").
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s = format!("{s}: {x}");
        src = x.source();
    }
    s
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
