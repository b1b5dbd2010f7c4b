//! A Microsoft Sentinel ingestion simulator (issue 22): the Entra token endpoint and Azure
//! Monitor's Logs Ingestion API on one port, what the `sentinel` sink talks to in the tests and
//! in `demo`. It follows Microsoft's documentation ("Logs Ingestion API in Azure Monitor", its
//! REST reference `Upload` at api-version 2023-01-01, "Azure Monitor service limits", and the
//! identity platform's client-credentials flow and AADSTS error codes) on the points a sender
//! meets:
//!
//! - `POST /<tenant>/oauth2/v2.0/token`: a form with `grant_type=client_credentials`,
//!   `client_id`, `client_secret`, `scope`. Answers `{"token_type":"Bearer","expires_in":..,
//!   "access_token":..}`, or Entra's errors: 400 `invalid_request` (AADSTS90002, no such tenant),
//!   400 `unauthorized_client` (AADSTS700016, no such application), 401 `invalid_client`
//!   (AADSTS7000215, a wrong secret), 400 `invalid_scope` (AADSTS70011), 400
//!   `unsupported_grant_type`.
//! - `POST /dataCollectionRules/<dcr>/streams/<stream>?api-version=2023-01-01`: `Authorization:
//!   Bearer <token>` (401 when missing, unknown or expired), `Content-Encoding: gzip` accepted, a
//!   JSON array of objects. The call may hold at most 1 MB, compressed or not (413). Answers 204,
//!   or an error `{"error":{"code":..,"message":..}}` with the code also in `x-ms-error-code`:
//!   404 for an unknown DCR, 400 `InvalidStream` for a stream the DCR does not declare, 400
//!   `InvalidPayload` for a body that is not an array of objects, 403 for an app without the
//!   role on the DCR, 429 and 503 with `Retry-After` when told to be busy or failing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

/// How the simulated Azure is set up.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// The Entra tenant (directory id) the app lives in.
    pub tenant_id: String,
    /// App registrations: client id and secret.
    pub apps: Vec<(String, String)>,
    /// Apps that may sign in but hold no role on any DCR (403 on upload).
    pub apps_without_role: Vec<String>,
    /// Data collection rules: immutable id and the streams each declares.
    pub dcrs: BTreeMap<String, Vec<String>>,
    /// How long a token lives.
    pub token_lifetime: Duration,
    /// The most bytes one call may hold (the API's 1 MB).
    pub max_request_bytes: usize,
}

/// The app the default options know.
pub const CLIENT_ID: &str = "11111111-2222-4333-8444-555555555555";
pub const CLIENT_SECRET: &str = "sim~client~secret~0001";
pub const TENANT_ID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
pub const DCR_ID: &str = "dcr-00000000000000000000000000000001";

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            tenant_id: TENANT_ID.into(),
            apps: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
            apps_without_role: Vec::new(),
            dcrs: BTreeMap::from([(
                DCR_ID.to_string(),
                vec![
                    "Custom-WizIssues_CL".to_string(),
                    "Custom-WizFindings_CL".to_string(),
                ],
            )]),
            token_lifetime: Duration::from_secs(3599),
            max_request_bytes: 1_000_000,
        }
    }
}

/// One record as ingested.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelRecord {
    pub dcr: String,
    pub stream: String,
    pub record: Value,
}

/// Counters a test reads.
#[derive(Debug, Clone, Default)]
pub struct SentinelCounters {
    /// Tokens issued.
    pub tokens: u64,
    /// Upload calls received (any answer).
    pub requests: u64,
    /// Upload calls refused with 401.
    pub unauthorized: u64,
    /// Upload calls refused as busy (429) or failing (503).
    pub throttled: u64,
    /// Upload calls refused as too large.
    pub too_large: u64,
    /// The largest body received, in bytes (before decompression).
    pub largest_body: usize,
}

struct SentinelState {
    opts: SentinelOptions,
    /// Token → (client id, expiry).
    tokens: HashMap<String, (String, Instant)>,
    records: Vec<SentinelRecord>,
    /// Every token issued.
    issued: Vec<String>,
    busy: u32,
    failing: u32,
    /// The next this many uploads find their token expired (and every token is dropped).
    expire: u32,
    /// Each upload waits this long before it is answered.
    delay: Duration,
    counters: SentinelCounters,
}

/// A running simulator (stopped when dropped).
pub struct SentinelSimulator {
    addr: SocketAddr,
    state: Arc<Mutex<SentinelState>>,
    _server: crate::serve::StopOnDrop,
}

impl SentinelSimulator {
    pub async fn start(
        listen: SocketAddr,
        opts: SentinelOptions,
    ) -> std::io::Result<SentinelSimulator> {
        let state = Arc::new(Mutex::new(SentinelState {
            opts,
            tokens: HashMap::new(),
            records: Vec::new(),
            issued: Vec::new(),
            busy: 0,
            failing: 0,
            expire: 0,
            delay: Duration::ZERO,
            counters: SentinelCounters::default(),
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_route))
            .route(
                "/dataCollectionRules/{dcr}/streams/{stream}",
                post(upload_route),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = crate::serve::spawn(listener, app, "sentinel simulator");
        Ok(SentinelSimulator {
            addr,
            state,
            _server: server,
        })
    }

    /// `http://<addr>`: both the sink's `authority` and its `endpoint`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut SentinelState) -> T) -> T {
        f(&mut self.state.lock().expect("sentinel lock"))
    }

    /// Every record ingested, in order.
    pub fn records(&self) -> Vec<SentinelRecord> {
        self.with(|s| s.records.clone())
    }

    /// The access tokens issued so far (secrets: the tests check they never show).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued.clone())
    }

    pub fn counters(&self) -> SentinelCounters {
        self.with(|s| s.counters.clone())
    }

    /// Answers the next `n` uploads with 429 and `Retry-After: 1`.
    pub fn set_busy(&self, n: u32) {
        self.with(|s| s.busy = n);
    }

    /// Answers the next `n` uploads with 503 and `Retry-After: 1`.
    pub fn set_failing(&self, n: u32) {
        self.with(|s| s.failing = n);
    }

    /// The next `n` uploads find their token expired: answered 401, and every token issued so
    /// far stops working (as if revoked early).
    pub fn expire_tokens(&self, n: u32) {
        self.with(|s| s.expire = n);
    }

    /// Answers every upload only after `delay` (pages stay in flight).
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }
}

/// A `[sinks.<name>]` table for a `sentinel` sink writing to `az` (its default app and rule).
pub fn sink_snippet(name: &str, az: &SentinelSimulator) -> String {
    format!(
        "[sinks.{name}]\ntype = \"sentinel\"\ntenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nauthority = \"{b}\"\nendpoint = \"{b}\"\ndcr_id = \"{DCR_ID}\"\nstream = \"Custom-WizIssues_CL\"\nformat = \"ocsf\"\n",
        b = az.base()
    )
}

fn token_error(status: StatusCode, error: &str, code: u32, text: &str) -> Response {
    let trace = format!("{:032x}", rand::rng().random::<u128>());
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nTimestamp: {}", humantime::format_rfc3339_seconds(std::time::SystemTime::now())),
            "error_codes": [code],
            "trace_id": trace,
        })),
    )
        .into_response()
}

async fn token_route(
    State(st): State<Arc<Mutex<SentinelState>>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let mut s = st.lock().expect("sentinel lock");
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if tenant != s.opts.tenant_id {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let client = form.get("client_id").cloned().unwrap_or_default();
    let Some(secret) = s
        .opts
        .apps
        .iter()
        .find(|(c, _)| *c == client)
        .map(|(_, sec)| sec.clone())
    else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client}' was not found in the directory '{tenant}'."
            ),
        );
    };
    if form.get("client_secret") != Some(&secret) {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client}'."),
        );
    }
    if form.get("scope").map(String::as_str) != Some(crate::sink::SENTINEL_SCOPE) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let token = format!("eyJsim.{:032x}", rand::rng().random::<u128>());
    let life = s.opts.token_lifetime;
    s.tokens
        .insert(token.clone(), (client, Instant::now() + life));
    s.counters.tokens += 1;
    s.issued.push(token.clone());
    Json(json!({"token_type": "Bearer", "expires_in": life.as_secs(), "ext_expires_in": life.as_secs(), "access_token": token}))
        .into_response()
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    resp.headers_mut()
        .insert("x-ms-error-code", code.parse().expect("header"));
    resp
}

async fn upload_route(
    State(st): State<Arc<Mutex<SentinelState>>>,
    Path((dcr, stream)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = st.lock().expect("sentinel lock").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = st.lock().expect("sentinel lock");
    s.counters.requests += 1;
    if s.expire > 0 {
        s.expire -= 1;
        s.tokens.clear();
    }
    s.counters.largest_body = s.counters.largest_body.max(body.len());
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let client = match token.and_then(|t| s.tokens.get(t)) {
        Some((client, until)) if Instant::now() < *until => client.clone(),
        _ => {
            s.counters.unauthorized += 1;
            return api_error(
                StatusCode::UNAUTHORIZED,
                "InvalidToken",
                "The provided authentication token is missing, invalid or expired.",
            );
        }
    };
    if !query.contains_key("api-version") {
        return api_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let Some(streams) = s.opts.dcrs.get(&dcr).cloned() else {
        return api_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Data collection rule with immutable Id '{dcr}' not found."),
        );
    };
    if s.opts.apps_without_role.contains(&client) {
        return api_error(
            StatusCode::FORBIDDEN,
            "OperationFailed",
            &format!("The authentication token provided does not have access to ingest data for the data collection rule with immutable Id '{dcr}'."),
        );
    }
    if !streams.contains(&stream) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidStream",
            &format!("Stream '{stream}' is not declared in data collection rule '{dcr}'."),
        );
    }
    if s.busy > 0 || s.failing > 0 {
        s.counters.throttled += 1;
        let busy = s.busy > 0;
        let mut resp = if busy {
            s.busy -= 1;
            api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests were sent for this data collection rule; retry after the time given in Retry-After.",
            )
        } else {
            s.failing -= 1;
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
            )
        };
        resp.headers_mut()
            .insert("retry-after", "1".parse().expect("header"));
        return resp;
    }
    let max = s.opts.max_request_bytes;
    let too_large = || {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ContentLengthLimitExceeded",
            &format!("The request body exceeds the maximum of {max} bytes."),
        )
    };
    if body.len() > max {
        s.counters.too_large += 1;
        return too_large();
    }
    let data = match super::body::read(&headers, &body, max) {
        Ok(d) => d,
        Err(super::body::BodyError::TooLarge(_)) => {
            s.counters.too_large += 1;
            return too_large();
        }
        Err(super::body::BodyError::Invalid) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidContentEncoding",
                "The request body could not be decompressed as gzip.",
            )
        }
    };
    let records = match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Array(items)) if items.iter().all(Value::is_object) => items,
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "InvalidPayload",
                "The request body must be a JSON array of objects.",
            )
        }
    };
    for record in records {
        s.records.push(SentinelRecord {
            dcr: dcr.clone(),
            stream: stream.clone(),
            record,
        });
    }
    StatusCode::NO_CONTENT.into_response()
}
