//! The HTTP client: one shared `reqwest::Client` (it pools connections per host) and, per tenant,
//! a [`TenantClient`] that owns the tenant's token cache and its handle on the credential's rate
//! limiter. Every request has a timeout; transient failures are retried with exponential backoff
//! and jitter, honouring `Retry-After`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use super::auth::{describe_reqwest, fetch_token, retry_after, TokenCache};
use super::error::{snippet, WizError};
use super::issues::{query_text, request_body, IssueFilter, IssueOrder};
use super::limiter::{CredentialLimiter, LimiterRegistry};
use super::page::{parse_feed_page, parse_page, FeedPage, Page};
use crate::config::TenantSpec;
use crate::metrics::{Observation, Observer};

/// How a tenant waits between two attempts of a request. The tenant actor provides it so that a
/// wait gives its sweep slot back (a tenant in a long `Retry-After` must not hold one of the
/// fleet's few slots), shows in health, and ends at once when the tenant is stopping.
pub trait RetryWaits: Send + Sync + 'static {
    /// Attempt `attempt` (of at most `max`) failed with `error`; the next one is due in `delay`.
    fn waiting(&self, error: &WizError, attempt: u32, max: u32, delay: Duration);
    /// Waits `delay`; false when the tenant is stopping and the request must be abandoned.
    fn wait(
        &self,
        delay: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
    /// Waits `delay` for the credential's rate limiter: the slot goes back meanwhile, as in
    /// [`RetryWaits::wait`], but health is not touched (nothing failed, and the wait may come
    /// from a feed that runs after the poll's state was settled). False when stopping.
    fn pause(
        &self,
        delay: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

/// backon's sleeper for one request: waits through [`RetryWaits`] (or sleeps) and records when
/// a wait was cut short because the tenant is stopping.
struct WaitSleeper {
    waits: Option<Arc<dyn RetryWaits>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl backon::Sleeper for WaitSleeper {
    type Sleep = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    fn sleep(&self, d: Duration) -> Self::Sleep {
        let waits = self.waits.clone();
        let stopping = self.stopping.clone();
        Box::pin(async move {
            let go_on = match waits {
                Some(w) => w.wait(d).await,
                None => {
                    tokio::time::sleep(d).await;
                    true
                }
            };
            if !go_on {
                stopping.store(true, Ordering::Relaxed);
            }
        })
    }
}

/// A rate-limit wait at least this long gives the sweep slot back meanwhile (shorter ones are
/// not worth queueing for a slot again).
const SLOT_FREE_WAIT: Duration = Duration::from_millis(20);

/// Longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

pub use crate::net::install_crypto_provider;

/// What every tenant shares: the connection pool, the limiters, the query text.
#[derive(Clone)]
pub struct WizHttp {
    http: reqwest::Client,
    limiters: LimiterRegistry,
    query: Arc<str>,
    observer: Observer,
}

impl WizHttp {
    /// Builds the shared client (rustls with the ring provider; system trust roots).
    pub fn new() -> Result<Self, WizError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("wiz-connector/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| WizError::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(WizHttp {
            http,
            limiters: LimiterRegistry::default(),
            query: query_text().into(),
            observer: Observer::default(),
        })
    }

    /// Reports retries and token renewals of every tenant client to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// A client for one tenant, sharing this pool and the limiter of the tenant's credential.
    pub fn tenant(&self, spec: Arc<TenantSpec>) -> Arc<TenantClient> {
        let limiter = self.limiters.get(&spec.credential_key(), spec.rate_limit);
        self.client(spec, limiter)
    }

    fn client(&self, spec: Arc<TenantSpec>, limiter: Arc<CredentialLimiter>) -> Arc<TenantClient> {
        Arc::new(TenantClient {
            spec,
            http: self.http.clone(),
            limiter,
            token: tokio::sync::Mutex::new(TokenCache::default()),
            query: self.query.clone(),
            stats: ClientStats::default(),
            observer: self.observer.clone(),
            waits: std::sync::OnceLock::new(),
        })
    }

    /// The client write-back uses for `spec`'s tenant: its write credential (or the read one),
    /// inside the read credential's rate limiter, so writes and polls share one budget.
    pub fn writer(&self, spec: Arc<TenantSpec>) -> Arc<TenantClient> {
        let limiter = self.limiters.get(&spec.credential_key(), spec.rate_limit);
        let spec = match &spec.write_credential {
            Some(w) => Arc::new(TenantSpec {
                client_id: w.client_id.clone(),
                client_secret: w.client_secret.clone(),
                ..(*spec).clone()
            }),
            None => spec,
        };
        self.client(spec, limiter)
    }

    pub fn limiters(&self) -> &LimiterRegistry {
        &self.limiters
    }
}

/// Counters of one tenant client, read by health and metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// GraphQL requests sent (each attempt counts).
    pub requests: AtomicU64,
    /// Attempts that were retries after a transient failure.
    pub retries: AtomicU64,
    /// Tokens obtained.
    pub tokens: AtomicU64,
    /// Tokens renewed because the API answered 401.
    pub renewals_after_401: AtomicU64,
}

/// One tenant's view of Wiz.
pub struct TenantClient {
    spec: Arc<TenantSpec>,
    http: reqwest::Client,
    limiter: Arc<CredentialLimiter>,
    /// Held across a token fetch so concurrent callers wait for one token instead of each fetching.
    token: tokio::sync::Mutex<TokenCache>,
    query: Arc<str>,
    pub stats: ClientStats,
    observer: Observer,
    /// Set by the tenant actor (see [`RetryWaits`]); without it, waits are plain sleeps.
    waits: std::sync::OnceLock<Arc<dyn RetryWaits>>,
}

enum Answer<T> {
    Page(T),
    Unauthorized(String),
}

impl TenantClient {
    pub fn spec(&self) -> &TenantSpec {
        &self.spec
    }

    /// How this client waits between retries (set once, by the tenant actor).
    pub fn set_waits(&self, waits: Arc<dyn RetryWaits>) {
        let _ = self.waits.set(waits);
    }

    /// The seed's "Test connection": a fresh token exchange, then a 1-row issues query. Returns
    /// how many issues that row query saw (0 or 1).
    pub async fn check(&self) -> Result<usize, WizError> {
        self.token.lock().await.invalidate();
        let filter = IssueFilter {
            status: self.spec.statuses.clone(),
            ..Default::default()
        };
        let page = self
            .fetch_page(&filter, IssueOrder::CREATED_ASC, 1, None)
            .await?;
        Ok(page.len())
    }

    /// Drops the cached token: the next request exchanges the credentials again (`check`
    /// tests the exchange itself).
    pub async fn invalidate_token(&self) {
        self.token.lock().await.invalidate();
    }

    /// Starts a sweep over every page matching `filter`.
    pub fn sweep(self: &Arc<Self>, filter: IssueFilter, order: IssueOrder) -> Sweep {
        Sweep {
            client: self.clone(),
            filter,
            order,
            after: None,
            seen: HashSet::new(),
            pages: 0,
            done: false,
        }
    }

    /// Continues a sweep from a committed position: `after` is the cursor of the next page, `pages`
    /// the pages already done; with `done`, every page was done already.
    pub fn resume_sweep(
        self: &Arc<Self>,
        filter: IssueFilter,
        order: IssueOrder,
        after: Option<String>,
        pages: u32,
    ) -> Sweep {
        Sweep {
            client: self.clone(),
            filter,
            order,
            done: after.is_none() && pages > 0,
            after,
            seen: HashSet::new(),
            pages,
        }
    }

    /// Looks issues up by id, over every status: the pages Wiz answered with. An id Wiz does not
    /// have is simply absent from them. Wiz may instead fail the whole query with `NOT_FOUND`;
    /// then the ids are split in halves until each unknown id stands alone (about
    /// 2·k·log2(n/k) requests for k unknown ids among n; n requests at worst).
    pub async fn lookup(self: &Arc<Self>, ids: &[String]) -> Result<Vec<Page>, WizError> {
        let mut pages = Vec::new();
        let mut todo: Vec<&[String]> = vec![ids];
        while let Some(chunk) = todo.pop() {
            if chunk.is_empty() {
                continue;
            }
            let filter = IssueFilter {
                id: chunk.to_vec(),
                ..Default::default()
            };
            match self.sweep(filter, IssueOrder::CREATED_ASC).all().await {
                Ok(mut got) => pages.append(&mut got),
                Err(e) if e.is_not_found() => {
                    if chunk.len() > 1 {
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        todo.push(b);
                        todo.push(a);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pages)
    }

    /// Fetches one page, retrying transient failures within the tenant's retry policy.
    pub async fn fetch_page(
        &self,
        filter: &IssueFilter,
        order: IssueOrder,
        first: u32,
        after: Option<&str>,
    ) -> Result<Page, WizError> {
        let body = Bytes::from(request_body(&self.query, filter, order, first, after));
        self.fetch_with(body, &parse_page).await
    }

    /// Fetches one page of another feed: `body` is the whole GraphQL request, and the answer's
    /// connection is `data.<root>`. Same token, rate limiter and retries as the Issues pages.
    pub async fn fetch_feed_page(&self, body: Bytes, root: &str) -> Result<FeedPage, WizError> {
        self.fetch_with(body, &|b| parse_feed_page(b, root)).await
    }

    /// Sends `body` and parses a 200 answer with `parse`, retrying transient failures within the
    /// tenant's retry policy.
    async fn fetch_with<T>(
        &self,
        body: Bytes,
        parse: &(dyn Fn(Bytes) -> Result<T, WizError> + Sync),
    ) -> Result<T, WizError> {
        let policy = self.spec.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.initial_backoff.0)
            .with_max_delay(policy.max_backoff.0)
            .with_max_times(policy.max_retries as usize)
            .with_jitter();
        let attempts = AtomicU32::new(0);
        let waits = self.waits.get().cloned();
        // Set when a wait was cut short because the tenant is stopping.
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sleeper = WaitSleeper {
            waits: waits.clone(),
            stopping: stopping.clone(),
        };
        let max = policy.max_retries + 1;
        let result = (|| async {
            if stopping.load(Ordering::Relaxed) {
                return Err(WizError::Stopping);
            }
            if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            self.attempt(&body, parse).await
        })
        .retry(backoff)
        .sleep(sleeper)
        .when(WizError::is_transient)
        .adjust(|e: &WizError, delay| {
            delay.map(|d| match e.retry_after() {
                Some(ra) => ra.min(MAX_RETRY_AFTER).max(d),
                None => d,
            })
        })
        .notify(|e: &WizError, delay| {
            if let Some(w) = &waits {
                w.waiting(e, attempts.load(Ordering::Relaxed), max, delay);
            }
            self.observer.emit(
                &self.spec.id,
                Observation::RequestRetried {
                    kind: e.kind().as_str(),
                    error: &e.to_string(),
                    retry_in: delay,
                },
            );
        })
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        result.map_err(|e| {
            if e.is_transient() && attempts > 1 {
                WizError::RetriesExhausted {
                    attempts,
                    last: Box::new(e),
                }
            } else {
                e
            }
        })
    }

    /// One attempt: a token (cached, or fetched), the request, and on a 401 with a cached token,
    /// one renewal and one resend.
    async fn attempt<T>(
        &self,
        body: &Bytes,
        parse: &(dyn Fn(Bytes) -> Result<T, WizError> + Sync),
    ) -> Result<T, WizError> {
        let (token, fresh) = self.token(false).await?;
        match self.send(body, &token, parse).await? {
            Answer::Page(p) => Ok(p),
            Answer::Unauthorized(snippet) if fresh => Err(WizError::Unauthorized { snippet }),
            Answer::Unauthorized(_) => {
                self.token.lock().await.invalidate();
                self.stats
                    .renewals_after_401
                    .fetch_add(1, Ordering::Relaxed);
                let (token, _) = self.token(true).await?;
                match self.send(body, &token, parse).await? {
                    Answer::Page(p) => Ok(p),
                    Answer::Unauthorized(snippet) => Err(WizError::Unauthorized { snippet }),
                }
            }
        }
    }

    /// The cached token, or a new one; `true` when it was fetched just now. `after_401` says why a
    /// new one is fetched, for the record.
    async fn token(&self, after_401: bool) -> Result<(SecretString, bool), WizError> {
        let mut cache = self.token.lock().await;
        if let Some(t) = cache.fresh(Instant::now()) {
            return Ok((t.clone(), false));
        }
        let t = fetch_token(&self.http, &self.spec).await?;
        let before = self.stats.tokens.fetch_add(1, Ordering::Relaxed);
        self.observer.emit(
            &self.spec.id,
            Observation::TokenObtained {
                renewal: before > 0,
                after_401,
            },
        );
        let value = t.value.clone();
        cache.store(t);
        Ok((value, true))
    }

    async fn send<T>(
        &self,
        body: &Bytes,
        token: &SecretString,
        parse: &(dyn Fn(Bytes) -> Result<T, WizError> + Sync),
    ) -> Result<Answer<T>, WizError> {
        let (status, bytes) = self.post(body, token).await?;
        match status {
            200 => parse(bytes).map(Answer::Page),
            _ => Ok(Answer::Unauthorized(snippet(&bytes))),
        }
    }

    /// Sends a GraphQL mutation once (no retry: a mutation sent twice may apply twice; the
    /// caller reads the issue again before it decides to resend). Inside the credential's rate
    /// limiter, with the tenant's token (renewed once after a 401). Answers `data`, or the
    /// GraphQL error Wiz gave.
    pub async fn mutate(&self, body: Bytes) -> Result<serde_json::Value, WizError> {
        let (mut token, fresh) = self.token(false).await?;
        let mut renewed = fresh;
        loop {
            let (status, bytes) = self.post(&body, &token).await?;
            if status == 401 {
                if renewed {
                    return Err(WizError::Unauthorized {
                        snippet: snippet(&bytes),
                    });
                }
                self.token.lock().await.invalidate();
                token = self.token(true).await?.0;
                renewed = true;
                continue;
            }
            return graphql_data(&bytes);
        }
    }

    /// Waits for the credential's rate limiter. A tenant polling through [`RetryWaits`] gives
    /// its sweep slot back while it waits: a sweep's second request waits about 1/`rate_limit`
    /// (333 ms at 3 requests a second), and thousands of tenants polling at once (a failover)
    /// would otherwise hold every slot idle behind their limiters.
    async fn ready(&self) -> Result<(), WizError> {
        while let Some(wait) = self.limiter.check() {
            match self.waits.get() {
                Some(w) if wait >= SLOT_FREE_WAIT => {
                    if !w.pause(wait).await {
                        return Err(WizError::Stopping);
                    }
                }
                _ => tokio::time::sleep(wait).await,
            }
        }
        Ok(())
    }

    /// One POST of `body` to the GraphQL endpoint: the status (200 or 401; the others are
    /// errors) and the body.
    async fn post(&self, body: &Bytes, token: &SecretString) -> Result<(u16, Bytes), WizError> {
        self.ready().await?;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let timeout = self.spec.request_timeout.0;
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                WizError::Timeout { timeout }
            } else {
                WizError::Transport(describe_reqwest(&e))
            }
        };
        let resp = self
            .http
            .post(self.spec.api_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token.expose_secret()),
            )
            .body(body.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(map_err)?;
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(map_err)?;
        match status {
            200 | 401 => Ok((status, bytes)),
            429 => Err(WizError::RateLimited { retry_after: ra }),
            500..=599 => Err(WizError::Server {
                status,
                snippet: snippet(&bytes),
                retry_after: ra,
            }),
            _ => Err(WizError::Client {
                status,
                snippet: snippet(&bytes),
            }),
        }
    }
}

/// `data` of a GraphQL answer, or its first error (Wiz answers errors with HTTP 200).
fn graphql_data(bytes: &[u8]) -> Result<serde_json::Value, WizError> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        WizError::BadResponse(format!("the answer is not JSON ({e}): {}", snippet(bytes)))
    })?;
    if let Some(first) = v
        .get("errors")
        .and_then(|e| e.as_array())
        .and_then(|a| a.first())
    {
        let message = first
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("(no message)")
            .chars()
            .take(500)
            .collect();
        let code = first
            .pointer("/extensions/code")
            .and_then(|c| c.as_str())
            .unwrap_or("UNKNOWN")
            .to_string();
        return Err(WizError::GraphQl { code, message });
    }
    Ok(v.get("data").cloned().unwrap_or(serde_json::Value::Null))
}

/// A paginated walk over every page of one query. The filter is frozen for the whole sweep;
/// cursors are followed while `hasNextPage`, with guards against a repeated or missing cursor and
/// a bound on the number of pages.
pub struct Sweep {
    client: Arc<TenantClient>,
    filter: IssueFilter,
    order: IssueOrder,
    after: Option<String>,
    seen: HashSet<String>,
    pages: u32,
    done: bool,
}

impl Sweep {
    /// The next page, or `None` when the sweep is complete. After an error the sweep is over.
    pub async fn next_page(&mut self) -> Result<Option<Page>, WizError> {
        if self.done {
            return Ok(None);
        }
        let spec = &self.client.spec;
        if self.pages >= spec.max_pages_per_sweep {
            self.done = true;
            return Err(WizError::TooManyPages {
                max: spec.max_pages_per_sweep,
            });
        }
        let page = self
            .client
            .fetch_page(
                &self.filter,
                self.order,
                spec.page_size,
                self.after.as_deref(),
            )
            .await
            .inspect_err(|_| self.done = true)?;
        self.pages += 1;
        if page.has_next_page {
            match page.end_cursor.as_deref() {
                None | Some("") => {
                    self.done = true;
                    return Err(WizError::CursorMissing { page: self.pages });
                }
                Some(c) => {
                    if !self.seen.insert(c.to_string()) || self.after.as_deref() == Some(c) {
                        self.done = true;
                        return Err(WizError::CursorRepeated { page: self.pages });
                    }
                    self.after = Some(c.to_string());
                }
            }
        } else {
            self.done = true;
        }
        Ok(Some(page))
    }

    /// Pages fetched so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// The cursor of the next page (`None` when none is left).
    pub fn next_cursor(&self) -> Option<&str> {
        if self.done {
            None
        } else {
            self.after.as_deref()
        }
    }

    /// What the sweep asks for.
    pub fn filter(&self) -> &IssueFilter {
        &self.filter
    }

    /// Every remaining page.
    pub async fn all(mut self) -> Result<Vec<Page>, WizError> {
        let mut pages = Vec::new();
        while let Some(p) = self.next_page().await? {
            pages.push(p);
        }
        Ok(pages)
    }
}
