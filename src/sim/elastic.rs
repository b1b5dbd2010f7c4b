//! An Elasticsearch simulator (issue 22): what the `elasticsearch` sink talks to in the tests and
//! in `demo`. It follows Elastic's documentation of the bulk API ("Bulk API", "Data streams",
//! "Security privileges") on the points a sender meets:
//!
//! - `POST /_bulk` and `POST /<index>/_bulk`: `Authorization: ApiKey <key>` or Basic (else 401
//!   `security_exception`); `Content-Type` `application/json` or `application/x-ndjson` (else
//!   406); `Content-Encoding: gzip` accepted; a body of NDJSON action/document pairs that must
//!   end with a newline (else 400 `illegal_argument_exception`); past `max_content_length` 413.
//!   Busy (told to be): 429 `es_rejected_execution_exception` for the whole request.
//! - Items answer one by one, in order, in `items`, with `errors` true when any failed. A name
//!   matching an index template's pattern (default `logs-*-*`, as the built-in `logs` template)
//!   becomes a data stream on its first write: it takes only `create` (400 otherwise), and
//!   requires `@timestamp` (400 `document_parsing_exception`). A `create` of an `_id` already
//!   there is 409 `version_conflict_engine_exception`. A name matching no template is an index,
//!   created on first write unless `auto_create_index` is off (404 `index_not_found_exception`).
//!   A read-only API key gets 403 `security_exception` per item. Faults: the next items refused
//!   with a given status (429, 400, 503) with Elasticsearch's error for it.
//! - `GET /` (cluster info), `GET /_security/_authenticate`, `GET /_data_stream/<name>` (404 when
//!   absent): what `check --sinks` asks.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

/// How the simulated cluster is set up.
#[derive(Debug, Clone)]
pub struct ElasticOptions {
    /// API keys it accepts (the encoded form), with write privileges.
    pub api_keys: Vec<String>,
    /// API keys it accepts that may only read.
    pub read_only_api_keys: Vec<String>,
    /// Users and passwords it accepts.
    pub users: Vec<(String, String)>,
    /// Index template patterns (`*` wildcards) that make a data stream.
    pub data_stream_patterns: Vec<String>,
    /// Create a plain index on the first write to a name no template matches.
    pub auto_create_index: bool,
    /// The largest request body, after decompression (`http.max_content_length`).
    pub max_content_length: usize,
}

impl Default for ElasticOptions {
    fn default() -> Self {
        ElasticOptions {
            api_keys: vec!["c2ltLWtleS1pZDpzaW0ta2V5LXNlY3JldA==".into()],
            read_only_api_keys: Vec::new(),
            users: Vec::new(),
            data_stream_patterns: vec!["logs-*-*".into()],
            auto_create_index: true,
            // Elasticsearch's default is 100 MB; a smaller bound keeps tests small.
            max_content_length: 16 << 20,
        }
    }
}

/// One document as the simulated cluster stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticDoc {
    /// The data stream or index written to.
    pub index: String,
    pub id: String,
    pub source: Value,
}

/// Counters a test reads.
#[derive(Debug, Clone, Default)]
pub struct ElasticCounters {
    /// Bulk requests received (any answer).
    pub requests: u64,
    /// Items received in bulk requests.
    pub items: u64,
    /// Items answered 409 (already there).
    pub conflicts: u64,
    /// Requests refused as busy.
    pub busy: u64,
    /// Requests refused as too large.
    pub too_large: u64,
}

struct ElasticState {
    opts: ElasticOptions,
    docs: Vec<ElasticDoc>,
    ids: HashSet<(String, String)>,
    data_streams: BTreeMap<String, ()>,
    indices: BTreeMap<String, ()>,
    busy: u32,
    /// Each bulk request waits this long before it is answered.
    delay: std::time::Duration,
    /// The next items refused with this status, and how many.
    item_faults: Option<(u16, u32)>,
    counters: ElasticCounters,
}

/// A running Elasticsearch simulator (stopped when dropped).
pub struct ElasticSimulator {
    addr: SocketAddr,
    state: Arc<Mutex<ElasticState>>,
    _server: crate::serve::StopOnDrop,
}

impl ElasticSimulator {
    pub async fn start(
        listen: SocketAddr,
        opts: ElasticOptions,
    ) -> std::io::Result<ElasticSimulator> {
        let state = Arc::new(Mutex::new(ElasticState {
            opts,
            docs: Vec::new(),
            ids: HashSet::new(),
            data_streams: BTreeMap::new(),
            indices: BTreeMap::new(),
            busy: 0,
            delay: std::time::Duration::ZERO,
            item_faults: None,
            counters: ElasticCounters::default(),
        }));
        let app = Router::new()
            .route("/", get(info_route))
            .route("/_bulk", post(bulk_route))
            .route("/{index}/_bulk", post(bulk_index_route))
            .route("/_security/_authenticate", get(authenticate_route))
            .route("/_data_stream/{name}", get(data_stream_route))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = crate::serve::spawn(listener, app, "elasticsearch simulator");
        Ok(ElasticSimulator {
            addr,
            state,
            _server: server,
        })
    }

    /// `http://<addr>`: the sink's `url`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut ElasticState) -> T) -> T {
        f(&mut self.state.lock().expect("elastic lock"))
    }

    /// Every document stored, in the order they were created.
    pub fn docs(&self) -> Vec<ElasticDoc> {
        self.with(|s| s.docs.clone())
    }

    /// The data streams created so far.
    pub fn data_streams(&self) -> Vec<String> {
        self.with(|s| s.data_streams.keys().cloned().collect())
    }

    pub fn counters(&self) -> ElasticCounters {
        self.with(|s| s.counters.clone())
    }

    /// Refuses the next `n` bulk requests with 429.
    pub fn set_busy(&self, n: u32) {
        self.with(|s| s.busy = n);
    }

    /// Answers every bulk request only after `delay` (a slow cluster: pages stay in flight).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.with(|s| s.delay = delay);
    }

    /// Refuses the next `n` items (that would otherwise be created) with `status`: 429
    /// (`es_rejected_execution_exception`), 400 (`document_parsing_exception`, as a mapping
    /// conflict) or 503 (`unavailable_shards_exception`).
    pub fn fail_items(&self, status: u16, n: u32) {
        self.with(|s| s.item_faults = Some((status, n)));
    }
}

/// A `[sinks.<name>]` table for an `elasticsearch` sink writing to `es` (its default API key).
pub fn sink_snippet(name: &str, es: &ElasticSimulator) -> String {
    let key = ElasticOptions::default().api_keys[0].clone();
    format!(
        "[sinks.{name}]\ntype = \"elasticsearch\"\nurl = \"{}\"\napi_key = \"{key}\"\nformat = \"ecs\"\n",
        es.base()
    )
}

fn error(status: StatusCode, kind: &str, reason: &str) -> Response {
    let err = json!({"type": kind, "reason": reason});
    let mut resp = (
        status,
        Json(json!({"error": {"root_cause": [err.clone()], "type": kind, "reason": reason}, "status": status.as_u16()})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            "www-authenticate",
            "ApiKey, Basic realm=\"security\", charset=\"UTF-8\""
                .parse()
                .expect("header"),
        );
    }
    resp
}

fn unauthorized(why: &str) -> Response {
    error(StatusCode::UNAUTHORIZED, "security_exception", why)
}

/// Who is asking (`true`: may write), or why the credentials are refused.
fn who(s: &ElasticState, headers: &HeaderMap) -> Result<(String, bool), &'static str> {
    let refuse = |why: &'static str| why;
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(refuse(
            "missing authentication credentials for REST request [/_bulk]",
        ));
    };
    if let Some(key) = value.strip_prefix("ApiKey ") {
        let key = key.trim();
        if s.opts.api_keys.iter().any(|k| k == key) {
            return Ok(("api-key".into(), true));
        }
        if s.opts.read_only_api_keys.iter().any(|k| k == key) {
            return Ok(("read-only-key".into(), false));
        }
        return Err(refuse("unable to authenticate with provided credentials and anonymous access is not allowed for this request"));
    }
    if let Some(b) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            if s.opts.users.iter().any(|(uu, pp)| uu == u && pp == p) {
                return Ok((u.to_string(), true));
            }
        }
        return Err(refuse(
            "unable to authenticate user for REST request [/_bulk]",
        ));
    }
    Err(refuse(
        "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
    ))
}

/// `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(after) = name.strip_prefix(head) else {
                return false;
            };
            (0..=after.len()).any(|i| after.is_char_boundary(i) && glob(rest, &after[i..]))
        }
    }
}

async fn bulk_route(
    State(st): State<Arc<Mutex<ElasticState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    pause(&st).await;
    bulk(&st, None, &headers, &body)
}

async fn pause(st: &Mutex<ElasticState>) {
    let delay = st.lock().expect("elastic lock").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

async fn bulk_index_route(
    State(st): State<Arc<Mutex<ElasticState>>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    pause(&st).await;
    bulk(&st, Some(index), &headers, &body)
}

fn bulk(
    st: &Mutex<ElasticState>,
    default_index: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut s = st.lock().expect("elastic lock");
    s.counters.requests += 1;
    let may_write = match who(&s, headers) {
        Ok((_, w)) => w,
        Err(why) => return unauthorized(why),
    };
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/json") || ct.starts_with("application/x-ndjson")) {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_header_exception",
            &format!("Content-Type header [{ct}] is not supported"),
        );
    }
    if s.busy > 0 {
        s.busy -= 1;
        s.counters.busy += 1;
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1, max_coordinating_and_primary_bytes=0]",
        );
    }
    let max = s.opts.max_content_length;
    let data = match super::body::read(headers, body, max) {
        Ok(d) => d,
        Err(super::body::BodyError::Invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                "parse_exception",
                "request body is not valid gzip",
            )
        }
        Err(super::body::BodyError::TooLarge(_)) => {
            s.counters.too_large += 1;
            return (StatusCode::PAYLOAD_TOO_LARGE, "").into_response();
        }
    };
    if !data.ends_with(b"\n") {
        return error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let mut lines = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut items = Vec::new();
    let mut errors = false;
    let mut n = 0usize;
    while let Some(action_line) = lines.next() {
        n += 1;
        let Ok(Value::Object(action)) = serde_json::from_slice::<Value>(action_line) else {
            return error(
                StatusCode::BAD_REQUEST,
                "x_content_parse_exception",
                &format!("[{n}:1] Malformed action/metadata line [{n}]"),
            );
        };
        let Some((op, meta)) = action.into_iter().next() else {
            return error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                "Malformed action/metadata line, expected a field",
            );
        };
        if !matches!(op.as_str(), "create" | "index" | "update" | "delete") {
            return error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{n}], expected one of [create, delete, index, update] but found [{op}]"),
            );
        }
        let doc = if op == "delete" {
            None
        } else {
            n += 1;
            match lines.next() {
                Some(d) => Some(d),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "illegal_argument_exception",
                        "The bulk request must be terminated by a newline [\\n]",
                    )
                }
            }
        };
        s.counters.items += 1;
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| default_index.clone());
        let id = meta.get("_id").and_then(Value::as_str).map(str::to_string);
        let (status, result) = item(&mut s, &op, index.as_deref(), id, doc, may_write);
        if status >= 300 {
            errors = true;
        }
        let mut answer = json!({"_index": index, "status": status});
        match result {
            Ok((id, res)) => {
                answer["_id"] = json!(id);
                answer["result"] = json!(res);
                answer["_version"] = json!(1);
            }
            Err((kind, reason, id)) => {
                answer["_id"] = json!(id);
                answer["error"] = json!({"type": kind, "reason": reason});
            }
        }
        items.push(json!({ op: answer }));
    }
    (
        StatusCode::OK,
        Json(json!({"errors": errors, "took": 1, "items": items})),
    )
        .into_response()
}

type ItemResult = Result<(String, &'static str), (&'static str, String, Option<String>)>;

/// One bulk item: its status, and the created id or the error.
fn item(
    s: &mut ElasticState,
    op: &str,
    index: Option<&str>,
    id: Option<String>,
    doc: Option<&[u8]>,
    may_write: bool,
) -> (u16, ItemResult) {
    let Some(index) = index else {
        return (
            400,
            Err((
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;".into(),
                id,
            )),
        );
    };
    if !may_write {
        return (
            403,
            Err((
                "security_exception",
                format!("action [indices:data/write/bulk[s]] is unauthorized for API key id [read-only-key] of user [read-only-key] on indices [{index}], this action is granted by the index privileges [create_doc,create,index,write,all]"),
                id,
            )),
        );
    }
    let stream = s.data_streams.contains_key(index)
        || (!s.indices.contains_key(index)
            && s.opts.data_stream_patterns.iter().any(|p| glob(p, index)));
    if !stream && !s.indices.contains_key(index) && !s.opts.auto_create_index {
        return (
            404,
            Err((
                "index_not_found_exception",
                format!("no such index [{index}]"),
                id,
            )),
        );
    }
    if stream && op != "create" {
        return (
            400,
            Err((
                "illegal_argument_exception",
                format!("only write ops with an op_type of create are allowed in data streams (index [{index}])"),
                id,
            )),
        );
    }
    let id = id.unwrap_or_else(|| format!("auto-{}", s.counters.items));
    let source: Value = match doc.map(serde_json::from_slice::<Value>) {
        Some(Ok(v @ Value::Object(_))) => v,
        _ => {
            return (
                400,
                Err((
                    "document_parsing_exception",
                    "[1:1] failed to parse: the document is not a JSON object".into(),
                    Some(id),
                )),
            )
        }
    };
    if stream && source.get("@timestamp").is_none() {
        return (
            400,
            Err((
                "document_parsing_exception",
                "[1:1] failed to parse: data stream timestamp field [@timestamp] is missing".into(),
                Some(id),
            )),
        );
    }
    if let Some((status, left)) = s.item_faults {
        if left > 0 {
            s.item_faults = (left > 1).then_some((status, left - 1));
            let (kind, reason) = match status {
                429 => ("es_rejected_execution_exception", "rejected execution of primary operation".to_string()),
                400 => ("document_parsing_exception", format!("[1:2] failed to parse field [resource] of type [keyword] in document with id '{id}'. Preview of field's value: '{{...}}'")),
                _ => ("unavailable_shards_exception", format!("[{index}][0] primary shard is not active Timeout: [1m]")),
            };
            return (status, Err((kind, reason, Some(id))));
        }
    }
    if op == "create" && s.ids.contains(&(index.to_string(), id.clone())) {
        s.counters.conflicts += 1;
        return (
            409,
            Err((
                "version_conflict_engine_exception",
                format!("[{id}]: version conflict, document already exists (current version [1])"),
                Some(id),
            )),
        );
    }
    if stream {
        s.data_streams.insert(index.to_string(), ());
    } else {
        s.indices.insert(index.to_string(), ());
    }
    s.ids.insert((index.to_string(), id.clone()));
    s.docs.push(ElasticDoc {
        index: index.to_string(),
        id: id.clone(),
        source,
    });
    (201, Ok((id, "created")))
}

async fn info_route(State(st): State<Arc<Mutex<ElasticState>>>, headers: HeaderMap) -> Response {
    let s = st.lock().expect("elastic lock");
    if let Err(why) = who(&s, &headers) {
        return unauthorized(why);
    }
    Json(json!({"name": "sim-node", "cluster_name": "wiz-connector-sim", "version": {"number": "8.15.0"}, "tagline": "You Know, for Search"})).into_response()
}

async fn authenticate_route(
    State(st): State<Arc<Mutex<ElasticState>>>,
    headers: HeaderMap,
) -> Response {
    let s = st.lock().expect("elastic lock");
    match who(&s, &headers) {
        Ok((user, _)) => Json(json!({"username": user, "enabled": true})).into_response(),
        Err(why) => unauthorized(why),
    }
}

async fn data_stream_route(
    State(st): State<Arc<Mutex<ElasticState>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = st.lock().expect("elastic lock");
    if let Err(why) = who(&s, &headers) {
        return unauthorized(why);
    }
    if s.data_streams.contains_key(&name) {
        return Json(json!({"data_streams": [{"name": name, "status": "GREEN"}]})).into_response();
    }
    error(
        StatusCode::NOT_FOUND,
        "index_not_found_exception",
        &format!("no such index [{name}]"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_matches_index_patterns() {
        assert!(super::glob("logs-*-*", "logs-wiz.issues-default"));
        assert!(!super::glob("logs-*-*", "logs-wiz"));
        assert!(super::glob("wiz", "wiz"));
    }
}
