//! A Splunk HTTP Event Collector simulator (issue 22): what the `splunk_hec` sink talks to in the
//! tests and in `demo`. It follows Splunk's documentation of HEC ("Format events for HTTP Event
//! Collector", "About HTTP Event Collector Indexer Acknowledgment", "Troubleshoot HTTP Event
//! Collector": the status codes) on the points a sender meets:
//!
//! - `POST /services/collector/event` (and `/services/collector`): `Authorization: Splunk
//!   <token>`; a body of JSON envelopes back to back, each an object with a non-empty `event`
//!   and optional `time`, `host`, `source`, `sourcetype`, `index`, `fields`; `Content-Encoding:
//!   gzip` accepted. Answers `{"text": "Success", "code": 0}`, or the documented error: 401
//!   code 2 (token required) or 3 (invalid authorization), 403 code 4 (invalid token), 400
//!   code 5 (no data), 6 (invalid data format), 7 (incorrect index), 12 (event field required),
//!   13 (event field blank), with `invalid-event-number` for a bad envelope; 413 past the content
//!   limit; 503 code 9 (server busy) when told to be busy. As HEC does, the envelopes before a bad
//!   one are indexed.
//! - Indexer acknowledgement, when on: every request needs an `X-Splunk-Request-Channel` (a
//!   GUID; 400 code 10 missing, 11 invalid), the answer carries an `ackId` (counting from 0 per
//!   channel), the events are indexed only once acknowledged, and `POST /services/collector/ack`
//!   (`{"acks": [ids]}`, the same channel) answers `{"acks": {"<id>": true|false}}`; an id
//!   reported true is forgotten, as Splunk does. Faults: acknowledgements that come late, and
//!   acknowledgements lost (the events never indexed, the id never true). With acknowledgement
//!   off, the ack endpoint answers 400 code 14 (ACK is disabled).
//! - `GET /services/collector/health`: 200 code 17 (healthy), or 503 code 9 while busy.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// How the simulated HEC is set up.
#[derive(Debug, Clone)]
pub struct HecOptions {
    /// Tokens it accepts.
    pub tokens: Vec<String>,
    /// Indexes that exist (an envelope naming another is refused with code 7); empty: any.
    pub indexes: Vec<String>,
    /// Indexer acknowledgement on.
    pub ack: bool,
    /// The largest request body, in bytes, after decompression (HEC's `max_content_length`).
    pub max_content_length: usize,
}

impl Default for HecOptions {
    fn default() -> Self {
        HecOptions {
            tokens: vec!["00000000-0000-4000-8000-000000000001".into()],
            indexes: Vec::new(),
            ack: false,
            // Splunk's default `max_content_length` is 800 MB; a smaller bound keeps tests small.
            max_content_length: 8 << 20,
        }
    }
}

/// One event as the simulated Splunk indexed it.
#[derive(Debug, Clone, PartialEq)]
pub struct HecEvent {
    pub index: Option<String>,
    pub sourcetype: Option<String>,
    pub source: Option<String>,
    pub host: Option<String>,
    pub time: Option<Value>,
    pub event: Value,
    /// The channel of its request (with acknowledgement).
    pub channel: Option<String>,
}

/// Counters a test reads.
#[derive(Debug, Clone, Default)]
pub struct HecCounters {
    /// Event requests received (any answer).
    pub requests: u64,
    /// Ack queries received.
    pub ack_queries: u64,
    /// Event requests refused with code 9 (busy).
    pub busy: u64,
}

#[derive(Default)]
struct Channel {
    next: u64,
    /// Acknowledgement ids not yet reported true.
    pending: BTreeMap<u64, Pending>,
}

/// A request with acknowledgement, until its id is reported true.
struct Pending {
    /// Its events until they are indexed (`ack_delay` after the request); `None` once indexed.
    events: Option<Vec<HecEvent>>,
    since: Instant,
    /// Lost: never indexed, never acknowledged.
    lost: bool,
}

impl HecState {
    /// Indexes the events of every request whose `ack_delay` has passed.
    fn index_due(&mut self) {
        let delay = self.ack_delay;
        let mut due = Vec::new();
        for ch in self.channels.values_mut() {
            for p in ch.pending.values_mut() {
                if !p.lost && p.since.elapsed() >= delay {
                    if let Some(events) = p.events.take() {
                        due.extend(events);
                    }
                }
            }
        }
        self.events.extend(due);
    }
}

struct HecState {
    opts: HecOptions,
    events: Vec<HecEvent>,
    channels: HashMap<String, Channel>,
    /// The next this many event requests are answered 503 code 9.
    busy: u32,
    /// The next this many acknowledged requests are lost (never indexed, never acknowledged).
    lose: u32,
    /// How long after a request its acknowledgement turns true.
    ack_delay: Duration,
    counters: HecCounters,
}

/// A running HEC simulator (stopped when dropped).
pub struct HecSimulator {
    addr: SocketAddr,
    state: Arc<Mutex<HecState>>,
    _server: crate::serve::StopOnDrop,
}

impl HecSimulator {
    pub async fn start(listen: SocketAddr, opts: HecOptions) -> std::io::Result<HecSimulator> {
        let state = Arc::new(Mutex::new(HecState {
            opts,
            events: Vec::new(),
            channels: HashMap::new(),
            busy: 0,
            lose: 0,
            ack_delay: Duration::ZERO,
            counters: HecCounters::default(),
        }));
        let app = Router::new()
            .route("/services/collector/event", post(event_route))
            .route("/services/collector", post(event_route))
            .route("/services/collector/event/1.0", post(event_route))
            .route("/services/collector/ack", post(ack_route))
            .route("/services/collector/health", get(health_route))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = crate::serve::spawn(listener, app, "hec simulator");
        Ok(HecSimulator {
            addr,
            state,
            _server: server,
        })
    }

    /// `http://<addr>`: the sink's `url`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut HecState) -> T) -> T {
        f(&mut self.state.lock().expect("hec lock"))
    }

    /// The events indexed so far, in order.
    pub fn events(&self) -> Vec<HecEvent> {
        self.with(|s| {
            s.index_due();
            s.events.clone()
        })
    }

    pub fn counters(&self) -> HecCounters {
        self.with(|s| s.counters.clone())
    }

    /// Answers the next `n` event requests with 503 code 9.
    pub fn set_busy(&self, n: u32) {
        self.with(|s| s.busy = n);
    }

    /// Loses the next `n` acknowledged requests: their events are never indexed and their ids
    /// never turn true.
    pub fn lose_acks(&self, n: u32) {
        self.with(|s| s.lose = n);
    }

    /// Acknowledgements turn true only `delay` after their request.
    pub fn set_ack_delay(&self, delay: Duration) {
        self.with(|s| s.ack_delay = delay);
    }
}

/// A `[sinks.<name>]` table for a `splunk_hec` sink writing to `hec` (its default token).
pub fn sink_snippet(name: &str, hec: &HecSimulator, ack: bool) -> String {
    let token = HecOptions::default().tokens[0].clone();
    format!(
        "[sinks.{name}]\ntype = \"splunk_hec\"\nurl = \"{}\"\ntoken = \"{token}\"\nack = {ack}\n",
        hec.base()
    )
}

fn answer(status: StatusCode, code: u32, text: &str) -> Response {
    (status, Json(json!({"text": text, "code": code}))).into_response()
}

fn bad_event(code: u32, text: &str, n: usize) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"text": text, "code": code, "invalid-event-number": n})),
    )
        .into_response()
}

/// A refusal before the body is read: the status, HEC's code and text.
type Refusal = (StatusCode, u32, &'static str);

fn refuse((status, code, text): Refusal) -> Response {
    answer(status, code, text)
}

/// The token check every endpoint makes.
fn authorize(s: &HecState, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::UNAUTHORIZED, 2, "Token is required"));
    };
    let Some(token) = value.strip_prefix("Splunk ") else {
        return Err((StatusCode::UNAUTHORIZED, 3, "Invalid authorization"));
    };
    if !s.opts.tokens.iter().any(|t| t == token.trim()) {
        return Err((StatusCode::FORBIDDEN, 4, "Invalid token"));
    }
    Ok(())
}

/// The request's channel, required (and a GUID) with acknowledgement on.
fn channel(s: &HecState, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let given = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !s.opts.ack {
        return Ok(given);
    }
    let Some(c) = given else {
        return Err((StatusCode::BAD_REQUEST, 10, "Data channel is missing"));
    };
    let guid = c.len() == 36
        && c.chars().enumerate().all(|(i, ch)| {
            matches!(i, 8 | 13 | 18 | 23) == (ch == '-') && (ch == '-' || ch.is_ascii_hexdigit())
        });
    if !guid {
        return Err((StatusCode::BAD_REQUEST, 11, "Invalid data channel"));
    }
    Ok(Some(c))
}

async fn event_route(
    State(st): State<Arc<Mutex<HecState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = st.lock().expect("hec lock");
    s.counters.requests += 1;
    if let Err(r) = authorize(&s, &headers) {
        return refuse(r);
    }
    if s.busy > 0 {
        s.busy -= 1;
        s.counters.busy += 1;
        return answer(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
    }
    let channel = match channel(&s, &headers) {
        Ok(c) => c,
        Err(r) => return refuse(r),
    };
    let max = s.opts.max_content_length;
    let data = match super::body::read(&headers, &body, max) {
        Ok(d) => d,
        Err(super::body::BodyError::Invalid) => {
            return answer(StatusCode::BAD_REQUEST, 6, "Invalid data format")
        }
        Err(super::body::BodyError::TooLarge(n)) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Content-Length of {n} too large (maximum is {max})"),
            )
                .into_response()
        }
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return answer(StatusCode::BAD_REQUEST, 5, "No data");
    }
    // Envelopes back to back; those before a bad one are indexed, as HEC does.
    let mut good = Vec::new();
    let mut refusal = None;
    for (n, item) in serde_json::Deserializer::from_slice(&data)
        .into_iter::<Value>()
        .enumerate()
    {
        let env = match item {
            Ok(Value::Object(env)) => env,
            _ => {
                refusal = Some(bad_event(6, "Invalid data format", n));
                break;
            }
        };
        let event = match env.get("event") {
            None => {
                refusal = Some(bad_event(12, "Event field is required", n));
                break;
            }
            Some(Value::String(e)) if e.is_empty() => {
                refusal = Some(bad_event(13, "Event field cannot be blank", n));
                break;
            }
            Some(e) => e.clone(),
        };
        let text = |k: &str| env.get(k).and_then(Value::as_str).map(str::to_string);
        let index = text("index");
        if let Some(i) = &index {
            if !s.opts.indexes.is_empty() && !s.opts.indexes.contains(i) {
                refusal = Some(bad_event(7, "Incorrect index", n));
                break;
            }
        }
        good.push(HecEvent {
            index,
            sourcetype: text("sourcetype"),
            source: text("source"),
            host: text("host"),
            time: env.get("time").cloned(),
            event,
            channel: channel.clone(),
        });
    }
    if !s.opts.ack {
        s.events.extend(good);
        return refusal.unwrap_or_else(|| answer(StatusCode::OK, 0, "Success"));
    }
    if let Some(r) = refusal {
        s.events.extend(good);
        return r;
    }
    let lost = s.lose > 0;
    if lost {
        s.lose -= 1;
    }
    let ch = s
        .channels
        .entry(channel.expect("checked with ack on"))
        .or_default();
    let id = ch.next;
    ch.next += 1;
    ch.pending.insert(
        id,
        Pending {
            events: Some(good),
            since: Instant::now(),
            lost,
        },
    );
    s.index_due();
    (
        StatusCode::OK,
        Json(json!({"text": "Success", "code": 0, "ackId": id})),
    )
        .into_response()
}

async fn ack_route(
    State(st): State<Arc<Mutex<HecState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = st.lock().expect("hec lock");
    s.counters.ack_queries += 1;
    if let Err(r) = authorize(&s, &headers) {
        return refuse(r);
    }
    if !s.opts.ack {
        return answer(StatusCode::BAD_REQUEST, 14, "ACK is disabled");
    }
    let channel = match channel(&s, &headers) {
        Ok(c) => c.expect("checked with ack on"),
        Err(r) => return refuse(r),
    };
    let ids: Vec<u64> = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("acks").and_then(Value::as_array) {
            Some(a) => a.iter().filter_map(Value::as_u64).collect(),
            None => return answer(StatusCode::BAD_REQUEST, 6, "Invalid data format"),
        },
        Err(_) => return answer(StatusCode::BAD_REQUEST, 6, "Invalid data format"),
    };
    s.index_due();
    let mut acks = serde_json::Map::new();
    let ch = s.channels.entry(channel).or_default();
    for id in ids {
        // Indexed: true, and forgotten (a second query of the same id answers false).
        let done = ch
            .pending
            .get(&id)
            .is_some_and(|p| !p.lost && p.events.is_none());
        if done {
            ch.pending.remove(&id);
        }
        acks.insert(id.to_string(), Value::Bool(done));
    }
    (StatusCode::OK, Json(json!({ "acks": acks }))).into_response()
}

async fn health_route(State(st): State<Arc<Mutex<HecState>>>) -> Response {
    let s = st.lock().expect("hec lock");
    if s.busy > 0 {
        return answer(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
    }
    answer(StatusCode::OK, 17, "HEC is healthy")
}
