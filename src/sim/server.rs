//! The simulator's state, its HTTP routes and the handle tests and commands use.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dashmap::DashMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::data::IssueSet;
pub use super::fault::Fault;
use super::graphql;

/// One simulated Wiz tenant.
#[derive(Debug, Clone)]
pub struct SimTenantSpec {
    pub client_id: String,
    pub client_secret: String,
    /// Issues generated at start.
    pub issues: usize,
    /// Seed of the issue generator.
    pub seed: u64,
    /// `expires_in` of the tokens this tenant gets, in seconds.
    pub token_expires_in: u64,
    /// When false, the tenant's tokens lack `read:issues`: every GraphQL request answers 401.
    pub read_issues_scope: bool,
    /// When false, the service account may not write: mutations answer Wiz's "Unauthorized".
    pub write_issues_scope: bool,
    /// A second service account of the same tenant, `(client_id, client_secret)`, that may
    /// write (write-back's `write_client_id`).
    pub writer: Option<(String, String)>,
    /// Feeds (by name: `vulnerabilities`, `detections`, `audit`, `cloud_configuration`) this
    /// service account may not read: their queries answer Wiz's GraphQL "Unauthorized".
    pub denied_feeds: Vec<String>,
    /// Vulnerability findings generated at start, instead of two per issue (the large-tenant
    /// benchmark asks for a million).
    pub vulnerabilities: Option<usize>,
}

impl SimTenantSpec {
    /// Tenant number `n` of a simulator seeded with `seed`: `sim-client-<n>` with a secret
    /// derived from the seed.
    pub fn numbered(n: usize, seed: u64, issues: usize) -> Self {
        let digest = Sha256::digest(format!("{seed}/{n}").as_bytes());
        SimTenantSpec {
            client_id: format!("sim-client-{n:04}"),
            client_secret: format!("simsecret-{}", hex::encode(&digest[..12])),
            issues,
            seed: seed.wrapping_mul(1_000_003).wrapping_add(n as u64),
            token_expires_in: 86400,
            read_issues_scope: true,
            write_issues_scope: true,
            writer: None,
            denied_feeds: Vec::new(),
            vulnerabilities: None,
        }
    }
}

/// How the simulator as a whole behaves.
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    pub tenants: Vec<SimTenantSpec>,
    /// The OAuth audience the token endpoint accepts (`wiz-api` like today's Wiz).
    pub audience: String,
    /// When set, more than this many GraphQL requests of one client within one second earn a 429,
    /// as Wiz does.
    pub enforce_rate_limit: Option<u32>,
    /// Added to every GraphQL answer.
    pub latency: Duration,
    /// When set, every tenant makes one random change (churn) this often.
    pub churn_every: Option<Duration>,
    /// When true, a query whose `filterBy.id` names an id the tenant does not have fails whole
    /// with a `NOT_FOUND` GraphQL error (Wiz has been seen to do so); when false, the unknown ids
    /// are simply absent from the answer. Whichever Wiz does, the connector copes.
    pub unknown_id_not_found: bool,
    /// Whether `issuesV2` takes `filterBy.updatedAt` (unconfirmed for Wiz). False: a query that
    /// uses it fails with a GraphQL validation error naming the field, as a schema without it
    /// would answer.
    pub accept_updated_at_filter: bool,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            tenants: Vec::new(),
            audience: "wiz-api".into(),
            enforce_rate_limit: None,
            latency: Duration::ZERO,
            churn_every: None,
            unknown_id_not_found: true,
            accept_updated_at_filter: false,
        }
    }
}

/// What a tenant's counters say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimCounters {
    /// GraphQL requests received (whatever their answer).
    pub graphql_requests: u64,
    /// Token requests received.
    pub token_requests: u64,
    /// Tokens handed out.
    pub tokens_issued: u64,
    /// 429s sent by rate-limit enforcement.
    pub rate_limited: u64,
    /// The most GraphQL requests seen within any one second.
    pub peak_requests_per_second: u64,
    /// Mutations received (`updateIssue`, `createIssueNote`), applied or refused.
    pub mutations: u64,
    /// Feed queries refused because the tenant's `denied_feeds` names the feed.
    pub denied_feed_queries: u64,
    /// Requests refused by GraphQL validation ([`super::validate`]): a query or variables a real
    /// GraphQL server would refuse. Tests of the connector expect 0.
    pub invalid_queries: u64,
    /// Feed queries answered, by feed (`vulnerabilities`, `detections`, ...).
    pub feed_queries: std::collections::BTreeMap<&'static str, u64>,
}

pub(super) struct TenantState {
    pub spec: SimTenantSpec,
    pub issues: IssueSet,
    /// The other feeds, generated when first asked for.
    pub feeds: Option<super::feed_data::FeedSets>,
    faults: VecDeque<Fault>,
    sticky: Option<Fault>,
    counters: SimCounters,
    /// Arrival times of GraphQL requests within the last second.
    window: VecDeque<Instant>,
}

struct TokenInfo {
    client_id: String,
    expires: Instant,
}

pub(super) struct SimState {
    opts: SimulatorOptions,
    tenants: DashMap<String, Arc<Mutex<TenantState>>>,
    tokens: DashMap<String, TokenInfo>,
}

impl TenantState {
    /// One random change to the issues, and to the other feeds once they exist.
    fn churn_step(&mut self) {
        self.issues.churn_step();
        if let Some(f) = self.feeds.as_mut() {
            f.churn_step();
        }
    }
}

impl SimState {
    fn tenant(&self, client_id: &str) -> Option<Arc<Mutex<TenantState>>> {
        self.tenants.get(client_id).map(|t| t.clone())
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    /// Stops the churn task.
    stop: watch::Sender<bool>,
    _server: crate::serve::StopOnDrop,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Simulator {
    /// Starts serving on `listen` (use `127.0.0.1:0` for a free port).
    pub async fn start(listen: SocketAddr, opts: SimulatorOptions) -> std::io::Result<Simulator> {
        let tenants = DashMap::new();
        for spec in &opts.tenants {
            let state = Arc::new(Mutex::new(TenantState {
                issues: IssueSet::generate(spec.seed, spec.issues),
                feeds: None,
                spec: spec.clone(),
                faults: VecDeque::new(),
                sticky: None,
                counters: SimCounters::default(),
                window: VecDeque::new(),
            }));
            if let Some((writer, _)) = &spec.writer {
                tenants.insert(writer.clone(), state.clone());
            }
            tenants.insert(spec.client_id.clone(), state);
        }
        let state = Arc::new(SimState {
            opts,
            tenants,
            tokens: DashMap::new(),
        });
        let app = Router::new()
            .route("/oauth/token", post(token))
            .route("/graphql", post(graphql_route))
            .route("/_sim/tenants", get(list_tenants))
            .route("/_sim/tenants/{client_id}/faults", post(push_faults_route))
            .route("/_sim/tenants/{client_id}/churn", post(churn_route))
            .route("/_sim/tenants/{client_id}/remove", post(remove_route))
            .route("/_sim/tenants/{client_id}/escalate", post(escalate_route))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = crate::serve::spawn(listener, app, "simulator");
        let (stop, _) = watch::channel(false);
        if let Some(every) = state.opts.churn_every {
            let st = Arc::downgrade(&state);
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    let Some(st) = st.upgrade() else { return };
                    for t in st.tenants.iter() {
                        t.lock().expect("sim lock").churn_step();
                    }
                }
            });
        }
        Ok(Simulator {
            addr,
            state,
            stop,
            _server: server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.base_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.base_url())
    }

    /// A `[tenants.<id>]` table that points a connector at simulated tenant `t`.
    pub fn tenant_table(&self, id: &str, t: &SimTenantSpec) -> String {
        format!(
            "[tenants.{id}]\nclient_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{}\"\nauth_url = \"{}\"\nallow_insecure_endpoints = true\n",
            t.client_id,
            t.client_secret,
            self.graphql_url(),
            self.token_url()
        )
    }

    /// The simulated tenants.
    pub fn tenants(&self) -> Vec<SimTenantSpec> {
        self.state.opts.tenants.clone()
    }

    fn with<R>(&self, client_id: &str, f: impl FnOnce(&mut TenantState) -> R) -> R {
        let t = self
            .state
            .tenant(client_id)
            .unwrap_or_else(|| panic!("no simulated tenant with client id {client_id}"));
        let mut g = t.lock().expect("sim lock");
        f(&mut g)
    }

    /// Runs `f` on a tenant's issues (to resolve, reopen, add...). Panics on an unknown client id.
    pub fn issues<R>(&self, client_id: &str, f: impl FnOnce(&mut IssueSet) -> R) -> R {
        self.with(client_id, |t| f(&mut t.issues))
    }

    /// Runs `f` on a tenant's other feeds (generated on first use, as a query would).
    pub fn feeds<R>(
        &self,
        client_id: &str,
        f: impl FnOnce(&mut super::feed_data::FeedSets) -> R,
    ) -> R {
        self.with(client_id, |t| {
            let (seed, issues, vulns) = (t.spec.seed, t.spec.issues, t.spec.vulnerabilities);
            f(t.feeds.get_or_insert_with(|| {
                super::feed_data::FeedSets::generate_with(seed, issues, vulns)
            }))
        })
    }

    /// Queues faults for the next GraphQL requests of a tenant, in order.
    pub fn push_faults(&self, client_id: &str, faults: impl IntoIterator<Item = Fault>) {
        self.with(client_id, |t| t.faults.extend(faults));
    }

    /// Applies `fault` to every GraphQL request of a tenant until cleared with `None`.
    pub fn set_sticky_fault(&self, client_id: &str, fault: Option<Fault>) {
        self.with(client_id, |t| t.sticky = fault);
    }

    pub fn counters(&self, client_id: &str) -> SimCounters {
        self.with(client_id, |t| t.counters.clone())
    }

    /// Invalidates every token of a tenant: its next request answers 401.
    pub fn revoke_tokens(&self, client_id: &str) {
        self.state.tokens.retain(|_, v| v.client_id != client_id);
    }

    /// Applies `steps` random changes to a tenant.
    pub fn churn(&self, client_id: &str, steps: usize) {
        self.with(client_id, |t| (0..steps).for_each(|_| t.churn_step()));
    }
}

fn json_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    audience: Option<String>,
}

async fn token(State(st): State<Arc<SimState>>, headers: HeaderMap, body: String) -> Response {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let form = parse_form(&body);
    if form.grant_type.as_deref() != Some("client_credentials") {
        return json_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let client_id = form.client_id.unwrap_or_default();
    let tenant = st.tenant(&client_id);
    if let Some(t) = &tenant {
        t.lock().expect("sim lock").counters.token_requests += 1;
    }
    if form.audience.as_deref() != Some(st.opts.audience.as_str()) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            &format!(
                "Service not found: {}",
                form.audience.as_deref().unwrap_or("(none)")
            ),
        );
    }
    let Some(t) = tenant else {
        return json_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    };
    let expires_in = {
        let mut g = t.lock().expect("sim lock");
        let secret = match &g.spec.writer {
            Some((id, secret)) if *id == client_id => secret.as_str(),
            _ => g.spec.client_secret.as_str(),
        };
        if form.client_secret.as_deref() != Some(secret) {
            return json_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
        }
        g.counters.tokens_issued += 1;
        g.spec.token_expires_in
    };
    let bytes: [u8; 24] = rand::rng().random();
    let value = format!("simtok_{}", hex::encode(bytes));
    st.tokens.insert(
        value.clone(),
        TokenInfo {
            client_id,
            expires: Instant::now() + Duration::from_secs(expires_in),
        },
    );
    Json(serde_json::json!({
        "access_token": value,
        "refresh_token": format!("simrefresh_{}", hex::encode(&bytes[..8])),
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
    .into_response()
}

/// Parses `application/x-www-form-urlencoded` with the url crate (no extra dependency).
fn parse_form(body: &str) -> TokenForm {
    let mut m: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
        m.insert(k.into_owned(), v.into_owned());
    }
    TokenForm {
        grant_type: m.remove("grant_type"),
        client_id: m.remove("client_id"),
        client_secret: m.remove("client_secret"),
        audience: m.remove("audience"),
    }
}

fn html(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
}

async fn graphql_route(
    State(st): State<Arc<SimState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let client_id = match st.tokens.get(bearer) {
        Some(t) if t.expires > Instant::now() => t.client_id.clone(),
        _ => return html(StatusCode::UNAUTHORIZED, "<pre>Unauthorized</pre>"),
    };
    let Some(tenant) = st.tenant(&client_id) else {
        return html(StatusCode::UNAUTHORIZED, "<pre>Unauthorized</pre>");
    };
    // Count, enforce the rate limit and take the fault under the lock; answer after it.
    let fault = {
        let mut g = tenant.lock().expect("sim lock");
        let now = Instant::now();
        g.counters.graphql_requests += 1;
        while g
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            g.window.pop_front();
        }
        g.window.push_back(now);
        let in_window = g.window.len() as u64;
        g.counters.peak_requests_per_second = g.counters.peak_requests_per_second.max(in_window);
        if st
            .opts
            .enforce_rate_limit
            .is_some_and(|lim| in_window > lim as u64)
        {
            g.counters.rate_limited += 1;
            Some(Fault::RateLimited { retry_after: None })
        } else if !g.spec.read_issues_scope {
            Some(Fault::UnauthorizedHtml)
        } else {
            g.faults.pop_front().or_else(|| g.sticky.clone())
        }
    };
    if !st.opts.latency.is_zero() {
        tokio::time::sleep(st.opts.latency).await;
    }
    let mut mangle = None;
    let mut delay_answer = None;
    match fault {
        None => {}
        Some(Fault::RateLimited { retry_after }) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response();
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().expect("digits"));
            }
            return r;
        }
        Some(Fault::ServerError { status }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return html(code, "<html><body><h1>502 Bad Gateway</h1></body></html>");
        }
        Some(Fault::Downstream) => {
            let rid: u128 = rand::rng().random();
            return graphql::error_response(
                "DOWNSTREAM_SERVICE_ERROR",
                &format!("oops! an internal error has occurred. for reference purposes, this is your request id: {rid:032x}"),
            );
        }
        Some(Fault::UnauthorizedHtml) => {
            return html(StatusCode::UNAUTHORIZED, "<pre>Unauthorized</pre>")
        }
        Some(Fault::Latency { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(Fault::SlowAnswer { ms }) => delay_answer = Some(Duration::from_millis(ms)),
        Some(Fault::Garbage { body }) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Some(Fault::GraphQlError { code, message }) => {
            return graphql::error_response(&code, &message)
        }
        Some(f @ (Fault::RepeatCursor | Fault::MissingCursor)) => mangle = Some(f),
    }
    let content_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !content_json {
        return (
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        )
            .into_response();
    }
    // Validated like a GraphQL server: the document against the schema, then the variables.
    // The body is read once; the answers below take the request as read.
    let req = match validate_request(&body) {
        Ok(req) => req,
        Err(refusal) => {
            let mut g = tenant.lock().expect("sim lock");
            g.counters.invalid_queries += 1;
            return graphql::error_list_response(refusal.code, &refusal.messages);
        }
    };
    // The query without whitespace: which root field it calls is read from it.
    let compact = super::feed_data::compact(&req.query);
    let variables = &req.variables;
    let answer = {
        let mut g = tenant.lock().expect("sim lock");
        if let Some(root) = super::feed_data::root(&compact) {
            let (seed, issues, vulns) = (g.spec.seed, g.spec.issues, g.spec.vulnerabilities);
            if g.spec.denied_feeds.iter().any(|f| f == root.feed_name()) {
                g.counters.denied_feed_queries += 1;
                graphql::error_response(
                    "UNAUTHORIZED",
                    &format!(
                        "Unauthorized: the service account lacks the scope to read {}",
                        root.feed_name()
                    ),
                )
            } else {
                *g.counters.feed_queries.entry(root.feed_name()).or_default() += 1;
                let sets = g.feeds.get_or_insert_with(|| {
                    super::feed_data::FeedSets::generate_with(seed, issues, vulns)
                });
                match super::feed_data::answer(root, variables, sets) {
                    Ok(data) => Json(serde_json::json!({ "data": data })).into_response(),
                    Err((code, message)) => graphql::error_response(&code, &message),
                }
            }
        } else if super::mutations::is_mutation(&compact) {
            g.counters.mutations += 1;
            let can_write = if client_id == g.spec.client_id {
                g.spec.write_issues_scope
            } else {
                true
            };
            let author = client_id.clone();
            super::mutations::answer(&compact, variables, &mut g.issues, &author, can_write)
        } else {
            graphql::answer(
                &compact,
                variables,
                &g.issues,
                mangle.as_ref(),
                st.opts.unknown_id_not_found,
                st.opts.accept_updated_at_filter,
            )
        }
    };
    if let Some(d) = delay_answer {
        tokio::time::sleep(d).await;
    }
    answer
}

/// A GraphQL request body as read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphQlRequest {
    query: String,
    #[serde(default)]
    variables: serde_json::Value,
    #[serde(default)]
    operation_name: Option<String>,
}

/// Parses a GraphQL request body and validates it ([`super::validate`]). A body that is not a
/// GraphQL request at all is refused the same way, with the reason.
fn validate_request(body: &str) -> Result<GraphQlRequest, super::validate::Refusal> {
    let req: GraphQlRequest = serde_json::from_str(body).map_err(|e| super::validate::Refusal {
        code: "BAD_REQUEST",
        messages: vec![format!("POST body is not a GraphQL request: {e}")],
    })?;
    super::validate::validator().check(
        &req.query,
        &req.variables,
        req.operation_name.as_deref(),
    )?;
    Ok(req)
}

#[derive(Serialize)]
struct TenantView {
    client_id: String,
    counters: SimCounters,
    issues_by_status: HashMap<String, usize>,
}

async fn list_tenants(State(st): State<Arc<SimState>>) -> Json<Vec<TenantView>> {
    let mut out: Vec<TenantView> = st
        .tenants
        .iter()
        .map(|t| {
            let g = t.lock().expect("sim lock");
            let mut by = HashMap::new();
            for i in &g.issues.issues {
                *by.entry(i.status.clone()).or_insert(0) += 1;
            }
            TenantView {
                client_id: g.spec.client_id.clone(),
                counters: g.counters.clone(),
                issues_by_status: by,
            }
        })
        .collect();
    out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Json(out)
}

async fn push_faults_route(
    State(st): State<Arc<SimState>>,
    Path(client_id): Path<String>,
    Json(faults): Json<Vec<Fault>>,
) -> StatusCode {
    match st.tenant(&client_id) {
        Some(t) => {
            t.lock().expect("sim lock").faults.extend(faults);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
struct ChurnQuery {
    steps: Option<usize>,
}

async fn churn_route(
    State(st): State<Arc<SimState>>,
    Path(client_id): Path<String>,
    Query(q): Query<ChurnQuery>,
) -> StatusCode {
    match st.tenant(&client_id) {
        Some(t) => {
            let mut g = t.lock().expect("sim lock");
            for _ in 0..q.steps.unwrap_or(1).min(10_000) {
                g.churn_step();
            }
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<usize>,
}

/// Changes the severity of `count` (default 1) open issues spread over the set; answers their ids.
async fn escalate_route(
    State(st): State<Arc<SimState>>,
    Path(client_id): Path<String>,
    Query(q): Query<CountQuery>,
) -> Response {
    match st.tenant(&client_id) {
        Some(t) => {
            let mut g = t.lock().expect("sim lock");
            Json(g.issues.escalate_spread(q.count.unwrap_or(1))).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct RemoveQuery {
    count: Option<usize>,
    status: Option<String>,
}

/// Removes issues entirely (as Wiz does when they leave the service account's reach):
/// `count` (default 1) issues in `status` (default OPEN), spread over the set; answers their ids.
async fn remove_route(
    State(st): State<Arc<SimState>>,
    Path(client_id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Response {
    match st.tenant(&client_id) {
        Some(t) => {
            let mut g = t.lock().expect("sim lock");
            let status = q.status.as_deref().unwrap_or("OPEN");
            Json(g.issues.remove_spread(status, q.count.unwrap_or(1))).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
