//! The `splunk_hec` output: Splunk's HTTP Event Collector (CONTRACT.md, "SIEM sinks").
//!
//! Each event becomes a HEC envelope (`time` in epoch seconds with milliseconds, `host`,
//! `source`, `sourcetype`, `index`, and the event itself, in the sink's format, as `event`);
//! envelopes go back to back to `/services/collector/event`, in requests of at most
//! `max_batch_bytes` (before gzip). A page counts as delivered when every request of it was
//! accepted, and with `ack = true` only when Splunk acknowledged every one: the sink keeps one
//! channel (`X-Splunk-Request-Channel`, a GUID per open output), polls `/services/collector/ack`
//! with the ids it got, and sends again what is not acknowledged within `ack_timeout`. Busy
//! (503, code 9), 429, other 5xx, timeouts and connection errors are retried with backoff
//! (`Retry-After` honoured); HEC's other codes fail the page at once with what they mean. A page
//! that fails waits in the sink's backlog (see `worker`), so nothing is lost while Splunk
//! refuses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::pack::{events, pack, Oversized};
use super::retry::{with_retries, GaveUp, Try};
use super::web::base_url;
use super::{Batch, SinkChecks, SinkType};
use crate::config::DurationValue;
use crate::net::{retry_after, snippet};

/// `type = "splunk_hec"`.
pub struct HecSink;

/// `[sinks.<name>]` of type `splunk_hec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The HEC base URL, e.g. `https://splunk.example:8088`.
    pub url: String,
    /// The HEC token (a secret: literal or `${ENV_VAR}`).
    #[serde(default)]
    pub token: Option<SecretString>,
    /// Alternative to `token`: a file holding it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The index (default: the token's default index).
    #[serde(default)]
    pub index: Option<String>,
    /// Default `wiz:{feed}`.
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// Default `wiz-connector`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// Compress request bodies (default true).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Indexer acknowledgement (default false).
    #[serde(default)]
    pub ack: Option<bool>,
    /// The most bytes of envelopes in one request, before gzip (default 1 MiB).
    #[serde(default)]
    pub max_batch_bytes: Option<u64>,
    /// How long a request may wait for its acknowledgement before it is sent again (default
    /// 60 s).
    #[serde(default)]
    pub ack_timeout: Option<DurationValue>,
    /// Per request (default 30 s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Verify the server's certificate (default true).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Retries of one request after busy, 429, 5xx or a timeout, and sends again of one
    /// request never acknowledged, before the page fails (default 5).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// Resolved `splunk_hec` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub url: Url,
    #[serde(serialize_with = "crate::config::redact_opt")]
    pub token: Option<SecretString>,
    pub index: Option<String>,
    pub sourcetype: String,
    pub source: String,
    pub host: Option<String>,
    pub gzip: bool,
    pub ack: bool,
    pub max_batch_bytes: u64,
    pub ack_timeout: DurationValue,
    pub timeout: DurationValue,
    pub tls_verify: bool,
    pub max_retries: u32,
}

/// Smallest `max_batch_bytes`: room for one envelope's metadata and a small event.
const MIN_BATCH_BYTES: u64 = 4096;

impl SinkType for HecSink {
    type Section = Section;
    type Spec = Spec;
    type Output = HecOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        let url = base_url(checks, "url", &s.url, "https://splunk.example:8088");
        let token = checks.secret(
            s.token.as_ref(),
            s.token_file.as_ref(),
            ("token", "token_file"),
        );
        if token.is_none() && s.token.is_none() && s.token_file.is_none() {
            checks.error("token", "required: the HEC token (or token_file)".into());
        }
        let max_batch_bytes = s.max_batch_bytes.unwrap_or(1 << 20);
        if max_batch_bytes < MIN_BATCH_BYTES {
            checks.error(
                "max_batch_bytes",
                format!("must be at least {MIN_BATCH_BYTES}"),
            );
        }
        let timeout = s.timeout.unwrap_or(DurationValue::secs(30));
        let ack_timeout = s.ack_timeout.unwrap_or(DurationValue::secs(60));
        for (key, d) in [("timeout", timeout), ("ack_timeout", ack_timeout)] {
            if d.0.is_zero() {
                checks.error(key, "must be greater than zero".into());
            }
        }
        Some(Spec {
            url: url?,
            token: Some(token?),
            index: s.index.clone(),
            sourcetype: s.sourcetype.clone().unwrap_or_else(|| "wiz:{feed}".into()),
            source: s.source.clone().unwrap_or_else(|| "wiz-connector".into()),
            host: s.host.clone(),
            gzip: s.gzip.unwrap_or(true),
            ack: s.ack.unwrap_or(false),
            max_batch_bytes,
            ack_timeout,
            timeout,
            tls_verify: s.tls_verify.unwrap_or(true),
            max_retries: s.max_retries.unwrap_or(5),
        })
    }

    fn secrets(spec: &Spec) -> Vec<&str> {
        spec.token.iter().map(|t| t.expose_secret()).collect()
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        [
            ("index", spec.index.as_deref()),
            ("sourcetype", Some(spec.sourcetype.as_str())),
            ("source", Some(spec.source.as_str())),
            ("host", spec.host.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| v.contains('{')).map(|v| (k, v)))
        .collect()
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        let filled = |v: &str| {
            if v.contains('{') {
                fill(v)
            } else {
                v.to_string()
            }
        };
        Ok(Spec {
            index: spec.index.as_deref().map(filled),
            sourcetype: filled(&spec.sourcetype),
            source: filled(&spec.source),
            host: spec.host.as_deref().map(filled),
            ..spec.clone()
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<HecOutput, String> {
        HecOutput::open(name, spec)
    }

    async fn check(out: &mut HecOutput) -> Result<String, String> {
        out.check().await
    }

    async fn write(out: &mut HecOutput, batch: Arc<Batch>) -> Result<super::Written, String> {
        out.write(&batch).await.map(Into::into)
    }
}

/// One open HEC output (one per distinct filled settings).
pub struct HecOutput {
    client: reqwest::Client,
    event_url: Url,
    ack_url: Url,
    token: Arc<SecretString>,
    /// This output's channel (a GUID), sent on every request.
    channel: String,
    /// `"host":..,"source":..,"sourcetype":..,"index":..,` rendered once.
    meta: Vec<u8>,
    gzip: bool,
    ack: bool,
    max_batch_bytes: usize,
    ack_timeout: Duration,
    max_retries: u32,
}

impl HecOutput {
    pub fn open(name: &str, spec: &Spec) -> Result<HecOutput, String> {
        let client = super::web::client(name, &spec.url, spec.timeout.0, spec.tls_verify)?;
        let join = |path: &str| {
            spec.url
                .join(path)
                .map_err(|e| format!("sink `{name}`: url: {e}"))
        };
        let mut meta = Vec::new();
        for (key, value) in [
            ("host", spec.host.as_deref()),
            ("source", Some(spec.source.as_str())),
            ("sourcetype", Some(spec.sourcetype.as_str())),
            ("index", spec.index.as_deref()),
        ] {
            if let Some(v) = value {
                meta.push(b'"');
                meta.extend_from_slice(key.as_bytes());
                meta.extend_from_slice(b"\":");
                crate::json::write_escaped(&mut meta, v);
                meta.push(b',');
            }
        }
        let token = spec
            .token
            .clone()
            .ok_or_else(|| format!("sink `{name}`: no token"))?;
        Ok(HecOutput {
            client,
            event_url: join("/services/collector/event")?,
            ack_url: join("/services/collector/ack")?,
            token: Arc::new(token),
            channel: new_channel(),
            meta,
            gzip: spec.gzip,
            ack: spec.ack,
            max_batch_bytes: spec.max_batch_bytes as usize,
            ack_timeout: spec.ack_timeout.0,
            max_retries: spec.max_retries,
        })
    }

    /// The page's events as envelopes, in requests of at most `max_batch_bytes` (an envelope
    /// larger than that goes alone).
    fn requests(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let time = format!("{}.{:03}", now.as_secs(), now.subsec_millis());
        // `{"time":<time>,<meta>"event":<event>}`
        let frame = time.len() + self.meta.len() + 18;
        pack(
            events(&batch.lines),
            self.max_batch_bytes,
            0,
            |e| e.len() + frame,
            Oversized::Alone,
        )
        .requests
        .into_iter()
        .map(|events| {
            let mut body = Vec::with_capacity(events.iter().map(|e| e.len() + frame).sum());
            for event in events {
                body.extend_from_slice(b"{\"time\":");
                body.extend_from_slice(time.as_bytes());
                body.push(b',');
                body.extend_from_slice(&self.meta);
                body.extend_from_slice(b"\"event\":");
                body.extend_from_slice(event);
                body.push(b'}');
            }
            body
        })
        .collect()
    }

    /// Delivers one page: every request accepted, and acknowledged when `ack` is on.
    pub async fn write(&mut self, batch: &Batch) -> Result<(), String> {
        let requests = self.requests(batch);
        if !self.ack {
            for body in &requests {
                self.send(body).await?;
            }
            return Ok(());
        }
        // Each request is sent until Splunk acknowledges it: sent, its ack polled until
        // `ack_timeout`, then sent again (a lost acknowledgement), at most `max_retries` times.
        let mut waiting: Vec<(usize, u64, Instant)> = Vec::new();
        let mut sends = vec![0u32; requests.len()];
        for (i, body) in requests.iter().enumerate() {
            let id = self.send(body).await?;
            sends[i] = 1;
            waiting.push((i, id.unwrap_or_default(), Instant::now()));
        }
        let mut pause = Duration::from_millis(100);
        while !waiting.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            let ids: Vec<u64> = waiting.iter().map(|(_, id, _)| *id).collect();
            let acked = self.query_acks(&ids).await?;
            waiting.retain(|(_, id, _)| !acked.contains(id));
            let mut again = Vec::new();
            for w in waiting.iter_mut() {
                if w.2.elapsed() < self.ack_timeout {
                    continue;
                }
                let i = w.0;
                if sends[i] > self.max_retries {
                    return Err(format!(
                        "HEC never acknowledged a request of this page ({} sends, {:?} each): the events may not be indexed; the page is sent again later",
                        sends[i], self.ack_timeout
                    ));
                }
                tracing::warn!(url = %self.event_url, ack_id = w.1, "HEC did not acknowledge a request in time; sending it again");
                again.push(i);
            }
            for i in again {
                let id = self.send(&requests[i]).await?;
                sends[i] += 1;
                if let Some(w) = waiting.iter_mut().find(|w| w.0 == i) {
                    *w = (i, id.unwrap_or_default(), Instant::now());
                }
                pause = Duration::from_millis(100);
            }
        }
        Ok(())
    }

    /// `check --sinks`: an event request with no events. HEC checks the token (and the channel)
    /// before it finds the body empty, so "No data" (code 5) proves the token; nothing is
    /// indexed. The index is checked only by a real event.
    pub async fn check(&self) -> Result<String, String> {
        let resp = self
            .request(&self.event_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach HEC at {}: {}",
                    self.event_url,
                    crate::net::describe_reqwest(&e)
                )
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<HecAnswer>(&body) {
            Ok(a) if a.code == Some(5) || a.code == Some(0) => Ok(format!(
                "token accepted{} (the index is checked by the first event)",
                if self.ack {
                    ", with indexer acknowledgement"
                } else {
                    ""
                }
            )),
            Ok(a) => Err(format!(
                "HEC at {} refused: {}",
                self.event_url,
                meaning(&a)
            )),
            Err(_) => Err(format!(
                "HEC at {} answered HTTP {status}: {}: is this a HEC endpoint?",
                self.event_url,
                snippet(&body)
            )),
        }
    }

    /// Sends one request, retrying busy and transient failures; the ack id when `ack` is on.
    async fn send(&self, body: &[u8]) -> Result<Option<u64>, String> {
        let payload = if self.gzip {
            super::web::gzip(body)?
        } else {
            body.to_vec()
        };
        let target = self.event_url.to_string();
        with_retries(&target, self.max_retries, || {
            self.attempt(payload.clone(), body.len())
        })
        .await
        .map_err(|e| match e {
            GaveUp::Stopped(m) | GaveUp::Exhausted(m) => m,
        })
    }

    fn request(&self, url: &Url) -> reqwest::RequestBuilder {
        self.client
            .post(url.clone())
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Splunk {}", self.token.expose_secret()),
            )
            .header("X-Splunk-Request-Channel", &self.channel)
    }

    async fn attempt(&self, payload: Vec<u8>, size: usize) -> Try<Option<u64>> {
        let mut req = self
            .request(&self.event_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload);
        if self.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Try::Again("timed out".into(), None),
            Err(e) => return Try::Again(crate::net::describe_reqwest(&e), None),
        };
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        let answer: Option<HecAnswer> = serde_json::from_slice(&body).ok();
        if status == 200 && answer.as_ref().is_some_and(|a| a.code == Some(0)) {
            return Try::Done(answer.and_then(|a| a.ack_id));
        }
        let what = match &answer {
            Some(a) => meaning(a),
            None => format!("HTTP {status}: {}", snippet(&body)),
        };
        let msg = format!("HEC at {} refused a request: {what}", self.event_url);
        match (status, answer.as_ref().and_then(|a| a.code)) {
            (413, _) => Try::Stop(format!(
                "HEC at {} refused a request of {size} bytes as too large: lower max_batch_bytes (now {}) below Splunk's max_content_length",
                self.event_url, self.max_batch_bytes
            )),
            (429 | 500..=599, _) | (_, Some(8 | 9)) => Try::Again(msg, ra),
            _ => Try::Stop(msg),
        }
    }

    /// The ids among `ids` Splunk reports indexed.
    async fn query_acks(&self, ids: &[u64]) -> Result<Vec<u64>, String> {
        let body = serde_json::json!({ "acks": ids }).to_string();
        let resp = self
            .request(&self.ack_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            // A failed query is asked again at the next poll (the timeout still runs).
            Err(_) => return Ok(Vec::new()),
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        if status != 200 {
            let what = serde_json::from_slice::<HecAnswer>(&bytes)
                .map(|a| meaning(&a))
                .unwrap_or_else(|_| format!("HTTP {status}: {}", snippet(&bytes)));
            if status >= 500 || status == 429 {
                return Ok(Vec::new());
            }
            return Err(format!(
                "HEC at {} refused an acknowledgement query: {what}",
                self.ack_url
            ));
        }
        #[derive(Deserialize)]
        struct Acks {
            acks: std::collections::HashMap<String, bool>,
        }
        let acks: Acks = serde_json::from_slice(&bytes)
            .map_err(|e| format!("HEC's acknowledgement answer is not understood: {e}"))?;
        Ok(acks
            .acks
            .into_iter()
            .filter(|(_, done)| *done)
            .filter_map(|(id, _)| id.parse().ok())
            .collect())
    }
}

/// HEC's answer to a request.
#[derive(Debug, Deserialize)]
struct HecAnswer {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default, rename = "ackId")]
    ack_id: Option<u64>,
    #[serde(default, rename = "invalid-event-number")]
    invalid_event: Option<u64>,
}

/// What a HEC status code means for the operator.
fn meaning(a: &HecAnswer) -> String {
    let text = a.text.as_deref().unwrap_or("no text");
    let hint = match a.code {
        Some(1) => "the token is disabled in Splunk: enable it",
        Some(2 | 3) => "no usable `Authorization: Splunk <token>`: check the sink's token",
        Some(4) => "the token is not valid: check the sink's token (or token_file)",
        Some(5 | 6 | 12 | 13) => "the request was malformed: this is a bug, please report it",
        Some(7) => "the index does not exist, or the token may not write to it: check the sink's index and the token's allowed indexes",
        Some(9) => "the server is busy (its queues are full): retried",
        Some(10 | 11) => "the request channel was refused: indexer acknowledgement needs a channel",
        Some(14) => "indexer acknowledgement is off for this token: set ack = false, or turn it on for the token in Splunk",
        _ => "",
    };
    let mut s = format!(
        "{text} (code {})",
        a.code.map_or("?".into(), |c| c.to_string())
    );
    if let Some(n) = a.invalid_event {
        s.push_str(&format!(", event #{n} of the request"));
    }
    if !hint.is_empty() {
        s.push_str(": ");
        s.push_str(hint);
    }
    s
}

/// A random GUID for a channel.
fn new_channel() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
