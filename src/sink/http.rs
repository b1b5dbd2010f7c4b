//! The `http` output: each batch is POSTed to a webhook (a SIEM's ingest endpoint, say) as
//! newline-delimited JSON or one JSON array, gzip-compressed by default, with an auth header from
//! a secret. 429, 5xx, timeouts and connection errors are retried with exponential backoff and
//! jitter, honouring `Retry-After`; any other answer fails the batch at once. A failed batch is
//! never dropped: the tenant holds it and sends it again later.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::retry::{with_retries, GaveUp, Try};
use super::{Batch, SinkChecks, SinkType};
use crate::config::DurationValue;
use crate::net::retry_after;
use crate::net::snippet;

pub struct HttpOutput {
    client: reqwest::Client,
    url: Url,
    json_array: bool,
    gzip: bool,
    auth: Option<(reqwest::header::HeaderName, Arc<SecretString>)>,
    max_retries: u32,
    /// Batches the webhook refused (for tests and health).
    pub refused: u64,
}

/// `type = "http"`.
pub struct HttpSink;

/// `[sinks.<name>]` of type `http`: batches of events POSTed to a webhook (a SIEM's ingest
/// endpoint, say).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Where to POST.
    pub url: String,
    /// The request body: `ndjson` (one event per line, the default) or `json_array`. (Older
    /// configurations call it `format`, which now names the events' schema; `format = "ndjson"`
    /// or `"json_array"` on an http sink is still read as `body`.)
    #[serde(default)]
    pub body: Option<String>,
    /// Compress request bodies with gzip (default true).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Header that carries the credential (default `Authorization`).
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Its value, a literal or `${ENV_VAR}` (e.g. `"Bearer ${SIEM_TOKEN}"` is not expanded:
    /// put the whole value in the variable).
    #[serde(default)]
    pub auth_value: Option<SecretString>,
    /// Alternative to `auth_value`: a file holding it.
    #[serde(default)]
    pub auth_value_file: Option<PathBuf>,
    /// Per-request timeout (default 30 s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Verify the server's TLS certificate (default true; turning it off is logged).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Retries of one batch after 429, 5xx or a timeout before the batch fails (it then waits in
    /// the sink's backlog, or in its tenant without one) (default 5).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// Resolved `http` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// Where to POST (with placeholders filled, for an instance of a templated sink).
    pub url: Url,
    /// The URL as written, when it holds placeholders (`{tenant}`, `{feed}`, `{label.<key>}`):
    /// each distinct filled URL is its own output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_template: Option<String>,
    /// One JSON array per batch instead of newline-delimited JSON.
    pub json_array: bool,
    pub gzip: bool,
    pub auth_header: String,
    #[serde(serialize_with = "crate::config::redact_opt")]
    pub auth_value: Option<SecretString>,
    pub timeout: DurationValue,
    pub tls_verify: bool,
    pub max_retries: u32,
}

impl SinkType for HttpSink {
    type Section = Section;
    type Spec = Spec;
    type Output = HttpOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        let url = &s.url;
        // A templated URL is checked with every placeholder filled with a plain word.
        let template = url.contains('{').then(|| url.trim().to_string());
        let probe = match &template {
            Some(t) => crate::sink::routing::render(t, "tenant", "feed", &Default::default())
                .replace("{label.", "{")
                .replace(['{', '}'], ""),
            None => url.trim().to_string(),
        };
        let parsed = match Url::parse(&probe) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            _ => {
                checks.error("url", format!("{url:?} is not an http(s) URL"));
                None
            }
        };
        let json_array = match s.body.as_deref().unwrap_or("ndjson") {
            "ndjson" => false,
            "json_array" => true,
            other => {
                checks.error(
                    "body",
                    format!("unknown body {other:?}; use \"ndjson\" or \"json_array\""),
                );
                false
            }
        };
        let auth = checks.secret(
            s.auth_value.as_ref(),
            s.auth_value_file.as_ref(),
            ("auth_value", "auth_value_file"),
        );
        let header = s
            .auth_header
            .clone()
            .unwrap_or_else(|| "Authorization".into());
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            checks.error(
                "auth_header",
                format!("{header:?} is not a valid header name"),
            );
        }
        let timeout = s.timeout.unwrap_or(DurationValue::secs(30));
        if timeout.0.is_zero() {
            checks.error("timeout", "must be greater than zero".into());
        }
        Some(Spec {
            url: parsed?,
            url_template: template,
            json_array,
            gzip: s.gzip.unwrap_or(true),
            auth_header: header,
            auth_value: auth,
            timeout,
            tls_verify: s.tls_verify.unwrap_or(true),
            max_retries: s.max_retries.unwrap_or(5),
        })
    }

    fn secrets(spec: &Spec) -> Vec<&str> {
        spec.auth_value.iter().map(|v| v.expose_secret()).collect()
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        spec.url_template
            .as_deref()
            .map(|t| vec![("url", t)])
            .unwrap_or_default()
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        let Some(t) = &spec.url_template else {
            return Ok(spec.clone());
        };
        let filled = fill(t);
        let url = Url::parse(&filled).map_err(|e| {
            format!("url {t:?} filled as {filled:?} is not a URL ({e}); check the tenant's labels")
        })?;
        Ok(Spec {
            url,
            url_template: None,
            ..spec.clone()
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<HttpOutput, String> {
        HttpOutput::open(name, spec)
    }

    async fn check(out: &mut HttpOutput) -> Result<String, String> {
        out.check().await
    }

    async fn write(out: &mut HttpOutput, batch: Arc<Batch>) -> Result<super::Written, String> {
        out.write(batch).await.map(Into::into)
    }
}

impl HttpOutput {
    pub fn open(name: &str, spec: &Spec) -> Result<HttpOutput, String> {
        let Spec {
            url,
            // Filled by `instantiate` before an output opens.
            url_template: _,
            json_array,
            gzip,
            auth_header,
            auth_value,
            timeout,
            tls_verify,
            max_retries,
        } = spec;
        let client = super::web::client(name, url, timeout.0, *tls_verify)?;
        let auth = match auth_value {
            Some(v) => Some((
                reqwest::header::HeaderName::from_bytes(auth_header.as_bytes())
                    .map_err(|e| format!("sink `{}`: auth_header: {e}", name))?,
                Arc::new(v.clone()),
            )),
            None => None,
        };
        Ok(HttpOutput {
            client,
            url: url.clone(),
            json_array: *json_array,
            gzip: *gzip,
            auth,
            max_retries: *max_retries,
            refused: 0,
        })
    }

    /// The request body for a batch (its lines end in `\n`).
    fn body(&self, batch: &Batch) -> Result<Vec<u8>, String> {
        let raw = if self.json_array {
            let mut out = Vec::with_capacity(batch.lines.len() + 2);
            out.push(b'[');
            for (i, line) in batch
                .lines
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(line);
            }
            out.push(b']');
            out
        } else {
            batch.lines.clone()
        };
        if !self.gzip {
            return Ok(raw);
        }
        super::web::gzip(&raw)
    }

    async fn attempt(&self, body: Vec<u8>) -> Try<()> {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                if self.json_array {
                    "application/json"
                } else {
                    "application/x-ndjson"
                },
            )
            .body(body);
        if self.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let Some((name, value)) = &self.auth {
            req = req.header(name.clone(), value.expose_secret());
        }
        match req.send().await {
            Err(e) => Try::Again(
                if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    crate::net::describe_reqwest(&e)
                },
                None,
            ),
            Ok(resp) => {
                let status = resp.status();
                let ra = retry_after(resp.headers());
                if status.is_success() {
                    return Try::Done(());
                }
                let text = resp.bytes().await.map(|b| snippet(&b)).unwrap_or_default();
                let msg = format!("HTTP {} from {}: {text}", status.as_u16(), self.url);
                if status.as_u16() == 429 || status.is_server_error() {
                    Try::Again(msg, ra)
                } else {
                    Try::Stop(msg)
                }
            }
        }
    }

    /// `check --sinks`: a `HEAD` of the URL with the credential (a webhook has no harmless
    /// method of its own; nothing is delivered). Any answer but 401, 403 or a 5xx counts as
    /// reachable.
    pub async fn check(&self) -> Result<String, String> {
        let mut req = self.client.head(self.url.clone());
        if let Some((name, value)) = &self.auth {
            req = req.header(name.clone(), value.expose_secret());
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "cannot reach {}: {}",
                self.url,
                crate::net::describe_reqwest(&e)
            )
        })?;
        let status = resp.status().as_u16();
        match status {
            401 | 403 => Err(format!(
                "HTTP {status} from {}: the credential was refused: check auth_value",
                self.url
            )),
            500..=599 => Err(format!("HTTP {status} from {}: the server fails", self.url)),
            _ => Ok(format!("reachable (HEAD answered {status}; no event sent)")),
        }
    }

    /// Delivers one batch, retrying transient failures.
    pub async fn write(&mut self, batch: Arc<Batch>) -> Result<(), String> {
        let body = self.body(&batch)?;
        let target = self.url.to_string();
        let result = with_retries(&target, self.max_retries, || self.attempt(body.clone())).await;
        match result {
            Ok(()) => Ok(()),
            Err(GaveUp::Stopped(m)) => {
                self.refused += 1;
                Err(format!(
                    "{m} (not retried now; the batch is sent again later)"
                ))
            }
            Err(GaveUp::Exhausted(m)) => Err(m),
        }
    }
}
