//! The `sentinel` output: Azure Monitor's Logs Ingestion API, the way into a Microsoft Sentinel
//! workspace (CONTRACT.md, "SIEM sinks").
//!
//! The sink signs in as an Entra app registration with the client-credentials grant (scope
//! `https://monitor.azure.com//.default`) at `authority`, keeps the token until shortly before it
//! expires, and takes a new one when the API answers 401. Events go as JSON arrays to
//! `<endpoint>/dataCollectionRules/<dcr_id>/streams/<stream>?api-version=2023-01-01`, in requests
//! of at most `max_batch_bytes` (the API's limit is 1 MB per call, before and after compression).
//! An event larger than that alone can never be ingested: it is reported with its id and left
//! out, and the rest of the page is delivered. 429 and 5xx are retried, after `Retry-After` when
//! the API gives one; 401 once with a new token; the other refusals (the stream, the DCR, the
//! role) fail the page with what to do, and it waits in the sink's backlog.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::pack::{events, pack, Oversized};
use super::retry::{with_retries, GaveUp, Try};
use super::web::base_url;
use super::{Batch, Rejected, SinkChecks, SinkType, Written};
use crate::config::DurationValue;
use crate::net::{retry_after, snippet};

/// `type = "sentinel"`.
pub struct SentinelSink;

/// `[sinks.<name>]` of type `sentinel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The Entra (Azure AD) tenant of the app registration: its directory id.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The app registration's client secret (literal or `${ENV_VAR}`).
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// Alternative to `client_secret`: a file holding it.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The data collection endpoint (or the DCR's logs ingestion endpoint), e.g.
    /// `https://my-dce.eastus-1.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// The data collection rule's immutable id (`dcr-...`).
    pub dcr_id: String,
    /// The DCR's input stream, e.g. `Custom-WizIssues_CL`; may hold `{feed}`, `{tenant}`,
    /// `{label.<key>}`.
    pub stream: String,
    /// Where tokens come from (default `https://login.microsoftonline.com`; set it for a
    /// sovereign cloud).
    #[serde(default)]
    pub authority: Option<String>,
    /// The most bytes of one request, before compression (default and most 1,000,000: the API's
    /// 1 MB).
    #[serde(default)]
    pub max_batch_bytes: Option<u64>,
    /// Compress request bodies (default true).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Per request (default 30 s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Verify the servers' certificates (default true).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Retries of a request after 429, 5xx or a timeout before the page fails (default 5).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// Resolved `sentinel` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub tenant_id: String,
    pub client_id: String,
    #[serde(serialize_with = "crate::config::redact")]
    pub client_secret: SecretString,
    pub endpoint: Url,
    pub dcr_id: String,
    pub stream: String,
    pub authority: Url,
    pub max_batch_bytes: u64,
    pub gzip: bool,
    pub timeout: DurationValue,
    pub tls_verify: bool,
    pub max_retries: u32,
}

/// The Logs Ingestion API's limit on one call.
pub const MAX_REQUEST_BYTES: u64 = 1_000_000;
/// The scope of the token (the API's audience with `/.default`; the double slash is what the
/// documentation gives).
pub const SCOPE: &str = "https://monitor.azure.com//.default";
const API_VERSION: &str = "2023-01-01";
/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

impl SinkType for SentinelSink {
    type Section = Section;
    type Spec = Spec;
    type Output = SentinelOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        let endpoint = base_url(
            checks,
            "endpoint",
            &s.endpoint,
            "https://my-dce.eastus-1.ingest.monitor.azure.com",
        );
        let authority = base_url(
            checks,
            "authority",
            s.authority
                .as_deref()
                .unwrap_or("https://login.microsoftonline.com"),
            "https://login.microsoftonline.us",
        );
        let secret = checks.secret(
            s.client_secret.as_ref(),
            s.client_secret_file.as_ref(),
            ("client_secret", "client_secret_file"),
        );
        if s.client_secret.is_none() && s.client_secret_file.is_none() {
            checks.error(
                "client_secret",
                "required: the app registration's client secret (or client_secret_file)".into(),
            );
        }
        let mut ok = true;
        for (key, value, what) in [
            ("tenant_id", &s.tenant_id, "the Entra directory (tenant) id"),
            (
                "client_id",
                &s.client_id,
                "the app registration's client id",
            ),
            (
                "dcr_id",
                &s.dcr_id,
                "the data collection rule's immutable id",
            ),
            (
                "stream",
                &s.stream,
                "the DCR's stream, e.g. \"Custom-WizIssues_CL\"",
            ),
        ] {
            if value.trim().is_empty() {
                checks.error(key, format!("must not be empty: {what}"));
                ok = false;
            } else if key != "stream" && value.contains(['/', '?', '#', ' ']) {
                checks.error(key, format!("{value:?} is not an id ({what})"));
                ok = false;
            }
        }
        let max_batch_bytes = s.max_batch_bytes.unwrap_or(MAX_REQUEST_BYTES);
        if !(4096..=MAX_REQUEST_BYTES).contains(&max_batch_bytes) {
            checks.error(
                "max_batch_bytes",
                format!("must be between 4096 and {MAX_REQUEST_BYTES} (the Logs Ingestion API takes at most 1 MB per call)"),
            );
        }
        let timeout = s.timeout.unwrap_or(DurationValue::secs(30));
        if timeout.0.is_zero() {
            checks.error("timeout", "must be greater than zero".into());
        }
        if !ok {
            return None;
        }
        Some(Spec {
            tenant_id: s.tenant_id.trim().to_string(),
            client_id: s.client_id.trim().to_string(),
            client_secret: secret?,
            endpoint: endpoint?,
            dcr_id: s.dcr_id.trim().to_string(),
            stream: s.stream.trim().to_string(),
            authority: authority?,
            max_batch_bytes,
            gzip: s.gzip.unwrap_or(true),
            timeout,
            tls_verify: s.tls_verify.unwrap_or(true),
            max_retries: s.max_retries.unwrap_or(5),
        })
    }

    fn secrets(spec: &Spec) -> Vec<&str> {
        vec![spec.client_secret.expose_secret()]
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        if spec.stream.contains('{') {
            vec![("stream", spec.stream.as_str())]
        } else {
            Vec::new()
        }
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        if !spec.stream.contains('{') {
            return Ok(spec.clone());
        }
        Ok(Spec {
            stream: fill(&spec.stream),
            ..spec.clone()
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<SentinelOutput, String> {
        SentinelOutput::open(name, spec)
    }

    async fn check(out: &mut SentinelOutput) -> Result<String, String> {
        out.check().await
    }

    async fn write(out: &mut SentinelOutput, batch: Arc<Batch>) -> Result<Written, String> {
        out.write(&batch).await
    }
}

/// A token and when it must be renewed.
struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// One open output (one per distinct filled `stream`).
pub struct SentinelOutput {
    client: reqwest::Client,
    token_url: Url,
    upload_url: Url,
    client_id: String,
    client_secret: SecretString,
    token: Mutex<Option<Token>>,
    gzip: bool,
    max_batch_bytes: usize,
    max_retries: u32,
}

/// How a request ended.
enum Sent {
    Done,
    /// 413: larger than the API takes.
    TooLarge,
}

impl SentinelOutput {
    pub fn open(name: &str, spec: &Spec) -> Result<SentinelOutput, String> {
        let client = super::web::client(name, &spec.endpoint, spec.timeout.0, spec.tls_verify)?;
        let mut token_url = spec.authority.clone();
        token_url
            .path_segments_mut()
            .map_err(|_| format!("sink `{name}`: authority cannot take a path"))?
            .pop_if_empty()
            .extend([spec.tenant_id.as_str(), "oauth2", "v2.0", "token"]);
        let mut upload_url = spec.endpoint.clone();
        upload_url
            .path_segments_mut()
            .map_err(|_| format!("sink `{name}`: endpoint cannot take a path"))?
            .pop_if_empty()
            .extend([
                "dataCollectionRules",
                spec.dcr_id.as_str(),
                "streams",
                spec.stream.as_str(),
            ]);
        upload_url.set_query(Some(&format!("api-version={API_VERSION}")));
        Ok(SentinelOutput {
            client,
            token_url,
            upload_url,
            client_id: spec.client_id.clone(),
            client_secret: spec.client_secret.clone(),
            token: Mutex::new(None),
            gzip: spec.gzip,
            max_batch_bytes: spec.max_batch_bytes as usize,
            max_retries: spec.max_retries,
        })
    }

    /// Delivers one page: every event ingested, or too large ever to be and reported.
    pub async fn write(&mut self, batch: &Batch) -> Result<Written, String> {
        // `[` + events joined by `,` + `]`.
        let packed = pack(
            events(&batch.lines),
            self.max_batch_bytes,
            2,
            |e| e.len() + 1,
            Oversized::Refuse,
        );
        let mut written = Written::default();
        for event in &packed.oversized {
            written
                .rejected
                .push(too_large(event, self.max_batch_bytes));
        }
        let mut queue: std::collections::VecDeque<Vec<&[u8]>> = packed.requests.into();
        while let Some(request) = queue.pop_front() {
            match self.send(&request).await? {
                Sent::Done => {}
                Sent::TooLarge if request.len() > 1 => {
                    let (a, b) = request.split_at(request.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Sent::TooLarge => written.rejected.push(too_large(request[0], 0)),
            }
        }
        Ok(written)
    }

    /// `check --sinks`: a token, then an upload of an empty array, which the API checks (the
    /// rule, the stream, the app's role on it) and ingests nothing from.
    pub async fn check(&self) -> Result<String, String> {
        match self.send(&[]).await? {
            Sent::Done => Ok(format!(
                "token issued; {} accepts uploads",
                self.upload_url.path()
            )),
            Sent::TooLarge => Err("an empty upload was refused as too large".into()),
        }
    }

    async fn send(&self, request: &[&[u8]]) -> Result<Sent, String> {
        let mut body = Vec::with_capacity(request.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, event) in request.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.push(b']');
        let payload = if self.gzip {
            super::web::gzip(&body)?
        } else {
            body
        };
        let renewed = AtomicBool::new(false);
        let target = self.upload_url.to_string();
        with_retries(&target, self.max_retries, || {
            self.attempt(payload.clone(), &renewed)
        })
        .await
        .map_err(|e| match e {
            GaveUp::Stopped(m) | GaveUp::Exhausted(m) => m,
        })
    }

    async fn attempt(&self, payload: Vec<u8>, renewed: &AtomicBool) -> Try<Sent> {
        let token = match self.token().await {
            Ok(t) => t,
            Err(t) => return t,
        };
        let mut req = self
            .client
            .post(self.upload_url.clone())
            .bearer_auth(token.expose_secret())
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
        let code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Try::Done(Sent::Done);
        }
        let what = serde_json::from_slice::<ErrorAnswer>(&body)
            .map(|a| format!("{}: {}", a.error.code, a.error.message))
            .unwrap_or_else(|_| match &code {
                Some(c) => format!("{c}: {}", snippet(&body)),
                None => snippet(&body),
            });
        let msg = format!(
            "the Logs Ingestion API at {} refused a request: HTTP {status}: {what}",
            self.upload_url
        );
        match status {
            413 => Try::Done(Sent::TooLarge),
            429 | 500..=599 => Try::Again(msg, ra),
            401 if !renewed.swap(true, Ordering::Relaxed) => {
                // Expired or revoked early: a new token, at once.
                *self.token.lock().expect("token lock") = None;
                Try::Again(msg, Some(Duration::ZERO))
            }
            401 => Try::Stop(format!(
                "{msg}: a new token was refused too: check the sink's tenant_id and client_id"
            )),
            403 => Try::Stop(format!(
                "{msg}: the app registration may not ingest through this data collection rule: give it the \"Monitoring Metrics Publisher\" role on the DCR"
            )),
            404 => Try::Stop(format!(
                "{msg}: no such data collection rule at this endpoint: check dcr_id (the DCR's immutable id) and endpoint"
            )),
            400 => Try::Stop(format!(
                "{msg}: check the sink's stream (it must be declared in the DCR) and that the DCR's stream columns match the sink's format"
            )),
            _ => Try::Stop(msg),
        }
    }

    /// A valid token: the kept one, or a new one.
    async fn token(&self) -> Result<SecretString, Try<Sent>> {
        if let Some(t) = self.token.lock().expect("token lock").as_ref() {
            if Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.client_secret.expose_secret())
            .append_pair("scope", SCOPE)
            .finish();
        let resp = self
            .client
            .post(self.token_url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Err(Try::Again(
                    format!(
                        "cannot reach the token endpoint {}: {}",
                        self.token_url,
                        crate::net::describe_reqwest(&e)
                    ),
                    None,
                ))
            }
        };
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        if status == 200 {
            let t: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                Try::Stop(format!(
                    "the token endpoint {} answered something that is not a token ({e})",
                    self.token_url
                ))
            })?;
            let life = Duration::from_secs(t.expires_in.unwrap_or(3599));
            let value = SecretString::from(t.access_token);
            *self.token.lock().expect("token lock") = Some(Token {
                value: value.clone(),
                renew_at: Instant::now() + life.saturating_sub(RENEW_BEFORE).max(life / 2),
            });
            return Ok(value);
        }
        let answer: Option<TokenError> = serde_json::from_slice(&body).ok();
        let what = answer.as_ref().map_or_else(
            || format!("HTTP {status}: {}", snippet(&body)),
            |a| {
                let first = a
                    .error_description
                    .as_deref()
                    .and_then(|d| d.lines().next())
                    .unwrap_or("");
                format!("HTTP {status}: {}: {first}", a.error)
            },
        );
        let msg = format!("Entra refused a token at {}: {what}", self.token_url);
        let hint = match answer.as_ref().map(|a| a.error.as_str()) {
            Some("invalid_client") => ": the client secret is not valid (or expired): check the sink's client_secret",
            Some("unauthorized_client") => ": no such app registration in this tenant: check client_id and tenant_id",
            Some("invalid_request") if what.contains("AADSTS90002") => ": no such tenant: check tenant_id (and authority, for a sovereign cloud)",
            Some("invalid_scope") => ": the scope was refused: check authority (a sovereign cloud's Monitor scope differs)",
            _ => "",
        };
        Err(if status == 429 || status >= 500 {
            Try::Again(msg, ra)
        } else {
            Try::Stop(format!("{msg}{hint}"))
        })
    }
}

fn too_large(event: &[u8], limit: usize) -> Rejected {
    Rejected {
        id: crate::event::event_id_of(event)
            .unwrap_or("(no id)")
            .to_string(),
        reason: if limit > 0 {
            format!(
                "the event is {} bytes, over the {limit} bytes one Logs Ingestion request may hold: it cannot be sent to Sentinel (its other destinations have it)",
                event.len()
            )
        } else {
            format!(
                "the Logs Ingestion API refused the event ({} bytes) alone as too large",
                event.len()
            )
        },
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}
