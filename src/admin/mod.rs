//! The admin API (CONTRACT.md): health of every tenant, one tenant, a poll on demand, metrics,
//! reload, and the status page (`GET /`, [`page`]). Reads come from the shared health map; nothing
//! here waits on a busy tenant actor.
//!
//! When a token is configured (mandatory off loopback), every route but `/healthz` and `/readyz`
//! (liveness and readiness probes) requires `Authorization: Bearer <token>`, or HTTP Basic with
//! the token as the password (what a browser can send: the status page asks for it).

mod page;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ractor::ActorRef;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::{AdminToken, Permission};
use crate::health::{HealthMap, TenantHealth, TenantState};
use crate::metrics::Observer;
use crate::reload::Reloader;
use crate::supervisor::{BaselineRefused, SupervisorMsg};

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub health: HealthMap,
    pub ready: Arc<AtomicBool>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// The tokens the API takes (none: open, loopback only).
    pub tokens: Arc<Vec<AdminToken>>,
    /// Write-back: the actions endpoint's clients and audit trail.
    pub actions: Arc<crate::writeback::Actions>,
    pub observer: Observer,
    pub reloader: Reloader,
    /// Cluster mode: the membership loop's view.
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
    /// The sinks' counters and states (`GET /sinks`).
    pub sink_stats: Arc<crate::sink::SinkStats>,
}

/// A running admin server; dropping it stops the server.
pub struct AdminServer {
    pub addr: SocketAddr,
    _stop: crate::serve::StopOnDrop,
}

/// Binds `addr`; when it is taken and `fallback` is set, binds a free port on the same IP.
pub async fn bind(addr: SocketAddr, fallback: bool) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if fallback && e.kind() == std::io::ErrorKind::AddrInUse => {
            TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await
        }
        Err(e) => Err(e),
    }
}

/// Serves the admin API on `listener` until the returned server is dropped.
pub fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<AdminServer> {
    let addr = listener.local_addr()?;
    let protected = Router::new()
        .route("/", get(page::status_page))
        .route("/tenants", get(list_tenants))
        .route("/tenants/{id}", get(one_tenant))
        .route("/tenants/{id}/poll", post(poll_tenant))
        .route("/tenants/{id}/baseline", post(baseline_tenant))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .route("/cluster", get(cluster))
        .route("/summary", get(summary))
        .route("/sinks", get(list_sinks))
        .route(
            "/tenants/{id}/issues/{issue_id}/actions",
            post(actions_route),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .layer(middleware::from_fn(limit_body))
        .with_state(state);
    Ok(AdminServer {
        addr,
        _stop: crate::serve::spawn(listener, app, "admin API"),
    })
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential a request carries: a bearer token, or the password of HTTP Basic (a browser
/// cannot send a bearer token when it opens a page). Schemes are case-insensitive (RFC 9110
/// §11.1): `bearer`, `BEARER` and `Bearer` alike.
fn presented(req: &Request) -> Vec<u8> {
    let Some((scheme, value)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return Vec::new();
    };
    let value = value.trim_start();
    if scheme.eq_ignore_ascii_case("bearer") {
        value.as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        page::basic_password(value).unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Who made a request: the admin token's name and what it may do (put in the request's
/// extensions by `require_token`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub permission: Permission,
}

/// `GET /sinks`: each configured sink's name, type, state, last error, backlog and the tenants
/// it serves (`"all"` without routes).
async fn list_sinks(State(st): State<AdminState>) -> Json<Value> {
    let config = st.reloader.live().current();
    let statuses = st.sink_stats.statuses();
    let routing = config.routing.as_ref().filter(|r| !r.every_sink);
    let sinks: Vec<Value> = config
        .sinks
        .iter()
        .map(|spec| {
            let status = statuses.get(&spec.name).cloned().unwrap_or_default();
            let tenants = match routing {
                Some(r) => json!(r
                    .tenants
                    .iter()
                    .filter(|(_, t)| t.destinations.iter().any(|d| d.sink == spec.name))
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()),
                None => json!("all"),
            };
            json!({
                "name": spec.name,
                "type": spec.kind.type_name(),
                "format": spec.format,
                "owner": spec.owner,
                "state": status.state,
                "last_error": status.last_error,
                "failures_in_a_row": status.failures_in_a_row,
                "delivered_events": status.delivered_events,
                "failed_batches": status.failed_batches,
                "rejected_events": status.rejected_events,
                "last_rejection": status.last_rejection,
                "backlog_events": status.backlog_events,
                "backlog_bytes": status.backlog_bytes,
                "backlog_max_bytes": spec.backlog_max_bytes,
                "tenants": tenants,
            })
        })
        .collect();
    Json(Value::Array(sinks))
}

/// `POST /tenants/{id}/issues/{issue_id}/actions`: write-back; `crate::writeback` does the work.
async fn actions_route(
    State(st): State<AdminState>,
    Path((tenant, issue_id)): Path<(String, String)>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    crate::writeback::act(st.actions.clone(), &tenant, &issue_id, &caller.name, body).await
}

async fn require_token(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    let caller = if st.tokens.is_empty() {
        // No token configured (loopback only): whoever can connect may do everything.
        Some(Caller {
            name: "local (no admin token configured)".into(),
            permission: Permission::Write,
        })
    } else {
        // Every token is compared (in constant time each), whichever matches.
        let given = presented(&req);
        let mut found = None;
        for t in st.tokens.iter() {
            if same(&given, t.token.expose_secret().as_bytes()) && found.is_none() {
                found = Some(Caller {
                    name: t.name.clone(),
                    permission: t.permission,
                });
            }
        }
        found
    };
    let Some(caller) = caller else {
        {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <admin.token>; in a browser, any user name and the token as the password)".into(),
            );
            // The page asks the browser for Basic credentials (its login prompt); the API
            // names the bearer scheme.
            let challenge = if req.uri().path() == "/" {
                "Basic realm=\"wiz-connector admin\", charset=\"UTF-8\""
            } else {
                "Bearer"
            };
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                challenge.parse().expect("static header"),
            );
            return r;
        }
    };
    // A read token reads: every route that changes something is a POST.
    if req.method() != axum::http::Method::GET && caller.permission != Permission::Write {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "the admin token `{}` is read-only; use a token with permission = \"write\"",
                caller.name
            ),
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Largest request body the admin API reads; no route needs more (`/reload` takes none).
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// Refuses a request whose declared body exceeds [`MAX_BODY_BYTES`] with 413, before any handler
/// runs. (No route reads a body, so an undeclared, chunked one is never read.)
async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body above {MAX_BODY_BYTES} bytes"),
        );
    }
    next.run(req).await
}

async fn reload(State(st): State<AdminState>) -> Response {
    match st.reloader.reload("POST /reload").await {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `/cluster`: the members and this replica's view of placement. Without cluster mode, this
/// process is the only member and owns every tenant.
async fn cluster(State(st): State<AdminState>) -> Response {
    match &st.cluster {
        Some(v) => Json(v.status()).into_response(),
        None => {
            let owner = st.health.owner();
            Json(json!({
                "replica": owner,
                "mode": "single",
                "members": [{"id": owner, "tenants": st.health.len()}],
            }))
            .into_response()
        }
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    let body = st.observer.metrics().render(&st.health);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(st): State<AdminState>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

/// A `state` filter of `/tenants`: a state, or `stale` (idle or starting, its poll overdue).
#[derive(PartialEq)]
enum Wanted {
    State(TenantState),
    Stale,
}

/// A tenant as `/tenants` lists it: its health record and whether it is stale.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    health: crate::health::TenantHealth,
    /// Idle or starting, but its scheduled poll is over a minute late.
    stale: bool,
}

#[derive(Deserialize)]
struct TenantQuery {
    /// Only these states (comma-separated).
    state: Option<String>,
    /// `id` (the default) or `worst` (failed, backoff, stale, then the healthy ones).
    order: Option<String>,
    /// Only tenants whose id contains this.
    q: Option<String>,
    /// Paging: at most `limit` records after skipping `offset`; the `X-Total-Count` header
    /// says how many matched.
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list_tenants(State(st): State<AdminState>, Query(q): Query<TenantQuery>) -> Response {
    let wanted: Option<Vec<Wanted>> = match q.state.as_deref() {
        None => None,
        Some(list) => {
            let mut states = Vec::new();
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match TenantState::ALL.iter().find(|s| s.as_str() == name) {
                    Some(s) => states.push(Wanted::State(*s)),
                    None if name == "stale" => states.push(Wanted::Stale),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "unknown state `{name}`; use one or more (comma-separated) of {}, stale",
                                TenantState::ALL.map(|s| s.as_str()).join(", ")
                            ),
                        )
                    }
                }
            }
            Some(states)
        }
    };
    let worst = match q.order.as_deref() {
        None | Some("id") => false,
        Some("worst") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown order `{other}`; use `id` or `worst`"),
            )
        }
    };
    let now = std::time::SystemTime::now();
    let keep = |h: &TenantHealth| {
        wanted.as_ref().is_none_or(|w| {
            w.contains(&Wanted::State(h.state)) || (w.contains(&Wanted::Stale) && h.is_stale(now))
        }) && q.q.as_deref().is_none_or(|needle| h.id.contains(needle))
    };
    if q.limit == Some(0) {
        // Only the count: no record copied or sorted (a cluster's dashboards and the scale
        // bench ask this of replicas owning tens of thousands of tenants, during failovers).
        // By state alone, from the map's kept counts; other filters look at each record.
        let states: Option<Vec<TenantState>> = match (&wanted, &q.q) {
            (None, None) => Some(TenantState::ALL.to_vec()),
            (Some(w), None) => w
                .iter()
                .map(|w| match w {
                    Wanted::State(s) => Some(*s),
                    Wanted::Stale => None,
                })
                .collect(),
            _ => None,
        };
        let total = match states {
            Some(states) => st.health.count_in(&states),
            None => st.health.count(keep),
        };
        return with_total(Json(Vec::<Listed>::new()).into_response(), total);
    }
    let mut list: Vec<_> = st.health.all().into_iter().filter(|h| keep(h)).collect();
    if worst {
        // Stable: within a rank, by id.
        list.sort_by_key(|h| h.rank(now));
    }
    let total = list.len();
    let page: Vec<_> = list
        .into_iter()
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|h| Listed {
            stale: h.is_stale(now),
            health: h,
        })
        .collect();
    with_total(Json(page).into_response(), total)
}

/// `r` with the `x-total-count` header: how many tenants matched, whatever the page holds.
fn with_total(mut r: Response, total: usize) -> Response {
    r.headers_mut().insert(
        "x-total-count",
        total
            .to_string()
            .parse()
            .expect("a number is a header value"),
    );
    r
}

/// `/summary`: how many tenants are in each state, and how many are stale.
async fn summary(State(st): State<AdminState>) -> Response {
    let now = std::time::SystemTime::now();
    let mut states = serde_json::Map::new();
    let mut tenants = 0;
    for (s, n) in st.health.counts() {
        tenants += n;
        states.insert(s.as_str().into(), n.into());
    }
    let stale = st.health.count(|h| h.is_stale(now));
    Json(json!({"tenants": tenants, "states": states, "stale": stale})).into_response()
}

async fn one_tenant(State(st): State<AdminState>, Path(id): Path<String>) -> Response {
    match st.health.get(&id) {
        Some(h) => Json(h).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no tenant `{id}`")),
    }
}

#[derive(Deserialize)]
struct PollQuery {
    /// `true`: a full sweep of the watched statuses instead of an incremental poll.
    full: Option<bool>,
}

#[derive(Deserialize)]
struct BaselineQuery {
    /// The destination to send the baseline to.
    sink: Option<String>,
}

/// `POST /tenants/{id}/baseline?sink=NAME`: sends the tenant's current items to one of its
/// destinations again (at a poll started now).
async fn baseline_tenant(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<BaselineQuery>,
) -> Response {
    let Some(sink) = q.sink.filter(|s| !s.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the destination: POST /tenants/{id}/baseline?sink=NAME".to_string(),
        );
    };
    let (asked, named) = (id.clone(), sink.clone());
    let reply = st
        .supervisor
        .call(
            |r| SupervisorMsg::Baseline(asked, named, r),
            Some(Duration::from_secs(5)),
        )
        .await;
    match reply {
        Ok(ractor::rpc::CallResult::Success(Ok(()))) => (
            StatusCode::ACCEPTED,
            Json(json!({"tenant": id, "sink": sink, "baseline": "requested"})),
        )
            .into_response(),
        Ok(ractor::rpc::CallResult::Success(Err(refused))) => {
            match refused {
                BaselineRefused::UnknownTenant => {
                    error(StatusCode::NOT_FOUND, format!("no tenant `{id}`"))
                }
                BaselineRefused::NotRouted(d) => error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "sink `{sink}` does not take tenant `{id}`'s events; its destinations are: {}",
                    if d.is_empty() { "none".to_string() } else { d.join(", ") }
                ),
                ),
                BaselineRefused::NotRunning => error(
                    StatusCode::CONFLICT,
                    format!("tenant `{id}` is not running; it cannot send a baseline now"),
                ),
            }
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the connector is not answering; try again".to_string(),
        ),
    }
}

async fn poll_tenant(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Response {
    let full = q.full.unwrap_or(false);
    let Some(h) = st.health.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no tenant `{id}`"));
    };
    let asked = id.clone();
    let reply = st
        .supervisor
        .call(
            |r| SupervisorMsg::PollNow(asked, full, r),
            Some(Duration::from_secs(5)),
        )
        .await;
    if matches!(reply, Ok(ractor::rpc::CallResult::Success(true))) {
        let poll = if full {
            "full sweep requested"
        } else {
            "requested"
        };
        (
            StatusCode::ACCEPTED,
            Json(json!({"tenant": id, "poll": poll})),
        )
            .into_response()
    } else {
        error(
            StatusCode::CONFLICT,
            format!(
                "tenant `{id}` is not running (state {}); it cannot poll now",
                h.state.as_str()
            ),
        )
    }
}
