//! The `http` output: each batch is POSTed to a webhook (a SIEM's ingest endpoint, say) as
//! newline-delimited JSON or one JSON array, gzip-compressed by default, with an auth header from
//! a secret. 429, 5xx, timeouts and connection errors are retried with exponential backoff and
//! jitter, honouring `Retry-After`; any other answer fails the batch at once. A failed batch is
//! never dropped: the tenant holds it and sends it again later.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::Batch;
use crate::config::SinkSpec;
use crate::wiz::auth::retry_after;
use crate::wiz::error::snippet;

/// Longest `Retry-After` honoured from a webhook.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

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

/// How an attempt ended: delivered, or why not and whether another may succeed.
enum Attempt {
    Delivered,
    Retry(String, Option<Duration>),
    Fail(String),
}

impl HttpOutput {
    pub fn open(spec: &SinkSpec) -> Result<HttpOutput, String> {
        let crate::config::SinkKind::Http {
            url,
            json_array,
            gzip,
            auth_header,
            auth_value,
            timeout,
            tls_verify,
            max_retries,
        } = &spec.kind
        else {
            return Err("not an http sink".into());
        };
        crate::wiz::install_crypto_provider();
        if !tls_verify {
            tracing::warn!(sink = %spec.name, url = %url, "TLS certificate verification is OFF for this sink (tls_verify = false)");
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("wiz-connector/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout.0)
            .connect_timeout(timeout.0.min(Duration::from_secs(10)))
            .tls_danger_accept_invalid_certs(!tls_verify)
            .build()
            .map_err(|e| format!("sink `{}`: cannot build the HTTP client: {e}", spec.name))?;
        let auth = match auth_value {
            Some(v) => Some((
                reqwest::header::HeaderName::from_bytes(auth_header.as_bytes())
                    .map_err(|e| format!("sink `{}`: auth_header: {e}", spec.name))?,
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
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw)
            .and_then(|_| enc.finish())
            .map_err(|e| format!("gzip failed: {e}"))
    }

    async fn attempt(&self, body: Vec<u8>) -> Attempt {
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
            Err(e) => Attempt::Retry(
                if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    crate::wiz::auth::describe_reqwest(&e)
                },
                None,
            ),
            Ok(resp) => {
                let status = resp.status();
                let ra = retry_after(resp.headers());
                if status.is_success() {
                    return Attempt::Delivered;
                }
                let text = resp.bytes().await.map(|b| snippet(&b)).unwrap_or_default();
                let msg = format!("HTTP {} from {}: {text}", status.as_u16(), self.url);
                if status.as_u16() == 429 || status.is_server_error() {
                    Attempt::Retry(msg, ra)
                } else {
                    Attempt::Fail(msg)
                }
            }
        }
    }

    /// Delivers one batch, retrying transient failures.
    pub async fn write(&mut self, batch: Arc<Batch>) -> Result<(), String> {
        let body = self.body(&batch)?;
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 0..=self.max_retries {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
            }
            match self.attempt(body.clone()).await {
                Attempt::Delivered => return Ok(()),
                Attempt::Fail(m) => {
                    self.refused += 1;
                    return Err(format!(
                        "{m} (not retried; the tenant holds the page and sends it again later)"
                    ));
                }
                Attempt::Retry(m, ra) => {
                    let backoff = delay
                        .saturating_mul(2)
                        .min(Duration::from_secs(30))
                        .mul_f64(rand::rng().random_range(0.5..=1.0));
                    delay = match ra {
                        Some(ra) => ra.min(MAX_RETRY_AFTER).max(backoff),
                        None => backoff,
                    };
                    tracing::warn!(url = %self.url, error = %m, attempt, "webhook delivery failed; retrying");
                    last = m;
                }
            }
        }
        Err(format!(
            "gave up after {} attempts: {last}",
            self.max_retries + 1
        ))
    }
}
