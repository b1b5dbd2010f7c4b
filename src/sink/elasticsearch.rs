//! The `elasticsearch` output: the `_bulk` API into a data stream (CONTRACT.md, "SIEM sinks").
//!
//! Each event is a `create` action with `_id` = the event id, so an event sent twice (a resend
//! after a crash, a backlog drained twice) is a 409 conflict, which counts as delivered: the
//! document is already there. Data streams take only `create`, and require `@timestamp`: an event
//! without one (the native and OCSF formats) gains it from [`crate::format::index_time`].
//!
//! A bulk request succeeds or fails item by item. Items refused with 429 or a 5xx are sent again,
//! alone, after a backoff (at most `max_retries` rounds, then the page fails and waits in the
//! sink's backlog). An item refused with 400 (a mapping or parsing error: the document itself is
//! wrong for the index) is reported with its event id and the reason and never sent again,
//! while the rest of the page is delivered. Any other item refusal (the data stream missing, no
//! privilege) fails the page with what to do. A request refused as too large (413) is split in
//! two until it fits; a lone event the cluster refuses as too large is reported like a mapping
//! error.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::pack::{events, pack, Oversized};
use super::retry::{with_retries, GaveUp, Try};
use super::web::base_url;
use super::{Batch, Rejected, SinkChecks, SinkType, Written};
use crate::config::DurationValue;
use crate::net::{retry_after, snippet};

/// `type = "elasticsearch"`.
pub struct ElasticSink;

/// `[sinks.<name>]` of type `elasticsearch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The cluster's base URL, e.g. `https://es.example:9200`.
    pub url: String,
    /// An API key, in the encoded form Elasticsearch returns (`encoded`): sent as
    /// `Authorization: ApiKey <key>`. A secret: literal or `${ENV_VAR}`.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Alternative to `api_key`: a file holding it.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Basic authentication instead of an API key.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The data stream (or index) written to; may hold `{tenant}`, `{feed}`, `{label.<key>}`.
    /// Default `logs-wiz.{feed}-default`.
    #[serde(default)]
    pub index: Option<String>,
    /// The most bytes of one bulk request, before gzip (default 5 MiB).
    #[serde(default)]
    pub max_batch_bytes: Option<u64>,
    /// Compress request bodies (default true).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Per request (default 30 s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// Verify the server's certificate (default true).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Retries of a request after 429, 5xx or a timeout, and rounds of resending the items
    /// refused with 429 or 5xx, before the page fails (default 5).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

/// How the sink authenticates.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    ApiKey(#[serde(serialize_with = "crate::config::redact")] SecretString),
    Basic {
        username: String,
        #[serde(serialize_with = "crate::config::redact")]
        password: SecretString,
    },
}

/// Resolved `elasticsearch` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub url: Url,
    pub auth: Auth,
    pub index: String,
    pub max_batch_bytes: u64,
    pub gzip: bool,
    pub timeout: DurationValue,
    pub tls_verify: bool,
    pub max_retries: u32,
}

/// The default `index`: Elastic's data stream naming (`<type>-<dataset>-<namespace>`), which the
/// built-in `logs-*-*` index template turns into a data stream on the first write.
pub const DEFAULT_INDEX: &str = "logs-wiz.{feed}-default";
/// Smallest `max_batch_bytes`.
const MIN_BATCH_BYTES: u64 = 4096;

impl SinkType for ElasticSink {
    type Section = Section;
    type Spec = Spec;
    type Output = ElasticOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        let url = base_url(checks, "url", &s.url, "https://es.example:9200");
        let key_given = s.api_key.is_some() || s.api_key_file.is_some();
        let basic_given = s.username.is_some() || s.password.is_some() || s.password_file.is_some();
        let auth = match (key_given, basic_given) {
            (true, true) => {
                checks.error(
                    "api_key",
                    "give either api_key or username/password, not both".into(),
                );
                None
            }
            (false, false) => {
                checks.error(
                    "api_key",
                    "required: an API key (api_key or api_key_file), or username and password"
                        .into(),
                );
                None
            }
            (true, false) => checks
                .secret(
                    s.api_key.as_ref(),
                    s.api_key_file.as_ref(),
                    ("api_key", "api_key_file"),
                )
                .map(Auth::ApiKey),
            (false, true) => {
                let password = checks.secret(
                    s.password.as_ref(),
                    s.password_file.as_ref(),
                    ("password", "password_file"),
                );
                if s.password.is_none() && s.password_file.is_none() {
                    checks.error("password", "required with username".into());
                }
                match (&s.username, password) {
                    (Some(u), Some(p)) if !u.is_empty() => Some(Auth::Basic {
                        username: u.clone(),
                        password: p,
                    }),
                    (u, _) => {
                        if u.as_deref().is_none_or(str::is_empty) {
                            checks.error("username", "required with password".into());
                        }
                        None
                    }
                }
            }
        };
        let index = s.index.clone().unwrap_or_else(|| DEFAULT_INDEX.into());
        if let Some(why) = index_problem(&index) {
            checks.error("index", why);
        }
        let max_batch_bytes = s.max_batch_bytes.unwrap_or(5 << 20);
        if max_batch_bytes < MIN_BATCH_BYTES {
            checks.error(
                "max_batch_bytes",
                format!("must be at least {MIN_BATCH_BYTES}"),
            );
        }
        let timeout = s.timeout.unwrap_or(DurationValue::secs(30));
        if timeout.0.is_zero() {
            checks.error("timeout", "must be greater than zero".into());
        }
        Some(Spec {
            url: url?,
            auth: auth?,
            index,
            max_batch_bytes,
            gzip: s.gzip.unwrap_or(true),
            timeout,
            tls_verify: s.tls_verify.unwrap_or(true),
            max_retries: s.max_retries.unwrap_or(5),
        })
    }

    fn secrets(spec: &Spec) -> Vec<&str> {
        match &spec.auth {
            Auth::ApiKey(k) => vec![k.expose_secret()],
            Auth::Basic { password, .. } => vec![password.expose_secret()],
        }
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        if spec.index.contains('{') {
            vec![("index", spec.index.as_str())]
        } else {
            Vec::new()
        }
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        if !spec.index.contains('{') {
            return Ok(spec.clone());
        }
        let index = fill(&spec.index).to_ascii_lowercase();
        if let Some(why) = index_problem(&index) {
            return Err(format!(
                "index {index:?} (filled from {:?}): {why}",
                spec.index
            ));
        }
        Ok(Spec {
            index,
            ..spec.clone()
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<ElasticOutput, String> {
        ElasticOutput::open(name, spec)
    }

    async fn check(out: &mut ElasticOutput) -> Result<String, String> {
        out.check().await
    }

    async fn write(out: &mut ElasticOutput, batch: Arc<Batch>) -> Result<Written, String> {
        out.write(&batch).await
    }
}

/// Why `index` cannot name an index or data stream (Elasticsearch's rules: lowercase, none of
/// `\ / * ? " < > | , #` or a space, not starting with `-`, `_` or `+`, at most 255 bytes); a
/// placeholder is checked once filled.
fn index_problem(index: &str) -> Option<String> {
    let fixed: String = if index.contains('{') {
        // Check only the text around placeholders.
        let mut out = String::new();
        let mut depth = 0;
        for c in index.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                c if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    } else {
        index.to_string()
    };
    if index.is_empty() {
        return Some("must not be empty".into());
    }
    if fixed.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!("{index:?} must be lowercase"));
    }
    if let Some(c) = fixed
        .chars()
        .find(|c| "\\/*?\"<>|, #:".contains(*c) || c.is_control())
    {
        return Some(format!("{index:?} must not contain {c:?}"));
    }
    if index.starts_with(['-', '_', '+']) {
        return Some(format!("{index:?} must not start with '-', '_' or '+'"));
    }
    if index.len() > 255 {
        return Some("must be at most 255 bytes".into());
    }
    None
}

/// One open output (one per distinct filled `index`).
pub struct ElasticOutput {
    client: reqwest::Client,
    bulk_url: Url,
    auth: Auth,
    /// `{"create":{"_index":"<index>","_id":"` rendered once.
    action: Vec<u8>,
    index: String,
    gzip: bool,
    max_batch_bytes: usize,
    max_retries: u32,
}

/// Where an item of a bulk request ended.
enum ItemEnd {
    Done,
    /// Refused for now (429, 5xx): sent again.
    Again(String),
    /// Refused for good (400): reported, not sent again.
    Rejected(String),
    /// Refused for a reason of the cluster, not of the document: the page fails.
    Fail(String),
}

impl ElasticOutput {
    pub fn open(name: &str, spec: &Spec) -> Result<ElasticOutput, String> {
        let client = super::web::client(name, &spec.url, spec.timeout.0, spec.tls_verify)?;
        let bulk_url = spec
            .url
            .join("_bulk")
            .map_err(|e| format!("sink `{name}`: url: {e}"))?;
        let mut action = b"{\"create\":{\"_index\":".to_vec();
        crate::json::write_escaped(&mut action, &spec.index);
        action.extend_from_slice(b",\"_id\":\"");
        Ok(ElasticOutput {
            client,
            bulk_url,
            auth: spec.auth.clone(),
            action,
            index: spec.index.clone(),
            gzip: spec.gzip,
            max_batch_bytes: spec.max_batch_bytes as usize,
            max_retries: spec.max_retries,
        })
    }

    /// The bytes one event takes in a request: its action line and its document.
    fn cost(&self, event: &[u8]) -> usize {
        self.action.len() + 64 + event.len() + 2
    }

    /// Appends the action line and the document of `event`.
    fn append(&self, body: &mut Vec<u8>, event: &[u8]) {
        body.extend_from_slice(&self.action);
        if let Some(id) = crate::event::event_id_of(event) {
            body.extend_from_slice(id.as_bytes());
        }
        body.extend_from_slice(b"\"}}\n");
        match crate::format::index_time(event) {
            Some(time) if event.len() > 1 => {
                body.extend_from_slice(b"{\"@timestamp\":");
                body.extend_from_slice(time);
                if event[1..]
                    .iter()
                    .any(|b| !b.is_ascii_whitespace() && *b != b'}')
                {
                    body.push(b',');
                }
                body.extend_from_slice(&event[1..]);
            }
            _ => body.extend_from_slice(event),
        }
        body.push(b'\n');
    }

    /// Delivers one page: every event created (or already there), or refused for good and
    /// reported.
    pub async fn write(&mut self, batch: &Batch) -> Result<Written, String> {
        let mut written = Written::default();
        let mut queue: VecDeque<Vec<&[u8]>> = pack(
            events(&batch.lines),
            self.max_batch_bytes,
            0,
            |e| self.cost(e),
            Oversized::Alone,
        )
        .requests
        .into();
        let mut again: Vec<&[u8]> = Vec::new();
        let mut last_again = String::new();
        let mut round = 0u32;
        loop {
            while let Some(request) = queue.pop_front() {
                match self.send(&request).await? {
                    Sent::TooLarge if request.len() > 1 => {
                        let (a, b) = request.split_at(request.len() / 2);
                        queue.push_front(b.to_vec());
                        queue.push_front(a.to_vec());
                    }
                    Sent::TooLarge => written.rejected.push(Rejected {
                        id: id_of(request[0]),
                        reason: format!(
                            "Elasticsearch refused the event ({} bytes) as too large for one request: raise the cluster's http.max_content_length",
                            request[0].len()
                        ),
                    }),
                    Sent::Items(ends) => {
                        for (event, end) in request.iter().zip(ends) {
                            match end {
                                ItemEnd::Done => {}
                                ItemEnd::Again(why) => {
                                    again.push(event);
                                    last_again = why;
                                }
                                ItemEnd::Rejected(why) => written.rejected.push(Rejected {
                                    id: id_of(event),
                                    reason: why,
                                }),
                                ItemEnd::Fail(why) => return Err(why),
                            }
                        }
                    }
                }
            }
            if again.is_empty() {
                return Ok(written);
            }
            round += 1;
            if round > self.max_retries {
                return Err(format!(
                    "Elasticsearch at {} still refuses {} events of this page after {} rounds: {last_again}",
                    self.bulk_url,
                    again.len(),
                    round
                ));
            }
            let delay = Duration::from_millis(200 << round.min(7))
                .mul_f64(rand::rng().random_range(0.5..=1.0));
            tracing::warn!(url = %self.bulk_url, events = again.len(), error = %last_again, round, "Elasticsearch refused some events for now; sending them again");
            tokio::time::sleep(delay).await;
            queue = pack(
                std::mem::take(&mut again),
                self.max_batch_bytes,
                0,
                |e| self.cost(e),
                Oversized::Alone,
            )
            .requests
            .into();
        }
    }

    /// `check --sinks`: who the credentials are (`_security/_authenticate`), then whether the
    /// data stream is there (`_data_stream/<index>`). Nothing is written.
    pub async fn check(&self) -> Result<String, String> {
        let get = |path: &str| {
            let url = self.bulk_url.join(path).expect("a relative path");
            self.authorize(self.client.get(url))
        };
        let describe = |status: u16, body: &[u8]| {
            serde_json::from_slice::<ErrorAnswer>(body)
                .map(|a| a.error.describe())
                .unwrap_or_else(|_| format!("HTTP {status}: {}", snippet(body)))
        };
        let reach = |e: reqwest::Error| {
            format!(
                "cannot reach Elasticsearch at {}: {}",
                self.bulk_url,
                crate::net::describe_reqwest(&e)
            )
        };
        let resp = get("_security/_authenticate").send().await.map_err(reach)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let user = match status {
            200 => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["username"].as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into()),
            401 => {
                return Err(format!(
                    "Elasticsearch refused the credentials: {}: check the sink's api_key (or username and password)",
                    describe(status, &body)
                ))
            }
            _ => {
                return Err(format!(
                    "Elasticsearch could not say who the credentials are: {}",
                    describe(status, &body)
                ))
            }
        };
        let resp = get(&format!("_data_stream/{}", self.index))
            .send()
            .await
            .map_err(reach)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let stream = match status {
            200 => format!("data stream `{}` exists", self.index),
            404 => format!(
                "`{}` is no data stream yet: the first write creates it when an index template matches it (Elasticsearch's built-in `logs` template matches logs-*-*)",
                self.index
            ),
            403 => format!(
                "the credentials may not look at `{}` (fine for a write-only key)",
                self.index
            ),
            _ => {
                return Err(format!(
                    "Elasticsearch cannot say whether `{}` exists: {}",
                    self.index,
                    describe(status, &body)
                ))
            }
        };
        Ok(format!("credentials accepted (user {user}); {stream}"))
    }

    /// Sends one bulk request (retrying whole-request busy and transient failures).
    async fn send(&self, request: &[&[u8]]) -> Result<Sent, String> {
        let mut body = Vec::with_capacity(request.iter().map(|e| self.cost(e)).sum());
        for event in request {
            self.append(&mut body, event);
        }
        let payload = if self.gzip {
            super::web::gzip(&body)?
        } else {
            body
        };
        let target = self.bulk_url.to_string();
        let n = request.len();
        with_retries(&target, self.max_retries, || {
            self.attempt(payload.clone(), n)
        })
        .await
        .map_err(|e| match e {
            GaveUp::Stopped(m) | GaveUp::Exhausted(m) => m,
        })
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::ApiKey(k) => req.header(
                reqwest::header::AUTHORIZATION,
                format!("ApiKey {}", k.expose_secret()),
            ),
            Auth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose_secret()))
            }
        }
    }

    async fn attempt(&self, payload: Vec<u8>, items: usize) -> Try<Sent> {
        let mut req = self
            .authorize(self.client.post(self.bulk_url.clone()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
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
        if status == 200 {
            return match serde_json::from_slice::<BulkAnswer>(&body) {
                Ok(a) if a.items.len() == items => {
                    Try::Done(Sent::Items(a.items.iter().map(|i| self.end(i)).collect()))
                }
                Ok(a) => Try::Stop(format!(
                    "Elasticsearch at {} answered {} items for a request of {items}: is it Elasticsearch?",
                    self.bulk_url,
                    a.items.len()
                )),
                Err(e) => Try::Stop(format!(
                    "Elasticsearch at {} gave a bulk answer that is not understood ({e}): {}",
                    self.bulk_url,
                    snippet(&body)
                )),
            };
        }
        let what = serde_json::from_slice::<ErrorAnswer>(&body)
            .map(|a| a.error.describe())
            .unwrap_or_else(|_| snippet(&body));
        let msg = format!(
            "Elasticsearch at {} refused a bulk request: HTTP {status}: {what}",
            self.bulk_url
        );
        match status {
            413 => Try::Done(Sent::TooLarge),
            429 | 500..=599 => Try::Again(msg, ra),
            401 => Try::Stop(format!(
                "{msg}: the credentials are not valid: check the sink's api_key (or username and password)"
            )),
            403 => Try::Stop(format!(
                "{msg}: the credentials may not write to `{}`: grant them the create_doc (and auto_configure) privilege on it",
                self.index
            )),
            _ => Try::Stop(msg),
        }
    }

    /// What the answer for one item means.
    fn end(&self, item: &HashMap<String, ItemAnswer>) -> ItemEnd {
        let Some(a) = item.values().next() else {
            return ItemEnd::Fail(format!(
                "Elasticsearch at {} answered an empty bulk item",
                self.bulk_url
            ));
        };
        let why = || {
            a.error
                .as_ref()
                .map_or_else(|| format!("HTTP {}", a.status), |e| e.describe())
        };
        match a.status {
            200..=299 | 409 => ItemEnd::Done,
            429 | 500..=599 => ItemEnd::Again(format!("HTTP {}: {}", a.status, why())),
            400 => ItemEnd::Rejected(format!(
                "Elasticsearch cannot index the document into `{}`: {} (fix the index template's mapping, or route this feed elsewhere)",
                self.index,
                why()
            )),
            404 => ItemEnd::Fail(format!(
                "Elasticsearch has no data stream or index `{}`, and no index template creates it: {} (add an index template for it, or set the sink's index)",
                self.index,
                why()
            )),
            401 | 403 => ItemEnd::Fail(format!(
                "Elasticsearch refused to write to `{}`: {}: grant the credentials the create_doc (and auto_configure) privilege on it",
                self.index,
                why()
            )),
            s => ItemEnd::Fail(format!(
                "Elasticsearch refused an event for `{}`: HTTP {s}: {}",
                self.index,
                why()
            )),
        }
    }
}

/// How a bulk request ended.
enum Sent {
    /// Each item's end, in request order.
    Items(Vec<ItemEnd>),
    /// 413: the request is larger than the cluster takes.
    TooLarge,
}

fn id_of(event: &[u8]) -> String {
    crate::event::event_id_of(event)
        .unwrap_or("(no id)")
        .to_string()
}

/// `_bulk`'s answer (only what the sink reads).
#[derive(Debug, Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    items: Vec<HashMap<String, ItemAnswer>>,
}

#[derive(Debug, Deserialize)]
struct ItemAnswer {
    status: u16,
    #[serde(default)]
    error: Option<EsError>,
}

/// An Elasticsearch error object.
#[derive(Debug, Deserialize)]
struct EsError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl EsError {
    fn describe(&self) -> String {
        match (&self.kind, &self.reason) {
            (Some(k), Some(r)) => format!("{k}: {r}"),
            (Some(k), None) => k.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => "no reason given".into(),
        }
    }
}

/// A whole-request error answer.
#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: EsError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_elasticsearchs_rules() {
        assert_eq!(index_problem("logs-wiz.{feed}-default"), None);
        assert_eq!(index_problem("logs-wiz.issues-{label.customer}"), None);
        assert!(index_problem("Logs").unwrap().contains("lowercase"));
        assert!(index_problem("logs wiz").unwrap().contains("' '"));
        assert!(index_problem("_logs").unwrap().contains("must not start"));
        assert!(index_problem("").is_some());
    }
}
