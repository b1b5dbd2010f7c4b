//! The Wiz client against the simulator over real HTTP: pagination, tokens, retries, limits.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::*;
use wiz_connector::sim::{Fault, SimTenantSpec, SimulatorOptions};
use wiz_connector::wiz::{IssueFilter, IssueOrder, WizError, WizHttp};

fn open_filter() -> IssueFilter {
    IssueFilter {
        status: vec!["OPEN".into()],
        ..Default::default()
    }
}

/// Every id a full sweep returns, in order.
async fn sweep_ids(
    client: &std::sync::Arc<wiz_connector::wiz::TenantClient>,
) -> Result<Vec<String>, WizError> {
    let mut sweep = client.sweep(open_filter(), IssueOrder::CREATED_ASC);
    let mut ids = Vec::new();
    while let Some(page) = sweep.next_page().await? {
        for n in page.raw_nodes() {
            let v: serde_json::Value = serde_json::from_str(n).unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        }
    }
    Ok(ids)
}

#[tokio::test]
async fn a_sweep_over_many_pages_returns_every_open_issue_exactly_once() {
    let sim = sim(1, 120).await;
    let expected: HashSet<String> = sim
        .issues("sim-client-0000", |s| s.ids_with_status("OPEN"))
        .into_iter()
        .collect();
    assert!(
        expected.len() > 40,
        "the generator makes mostly open issues"
    );
    let spec = spec(&sim_config(&sim, "page_size = 10", ""), "t0");
    let http = WizHttp::new().unwrap();
    let client = http.tenant(spec);
    let ids = sweep_ids(&client).await.unwrap();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no issue twice");
    assert_eq!(unique, expected, "every open issue, nothing else");
    let c = sim.counters("sim-client-0000");
    let pages = expected.len().div_ceil(10) as u64;
    assert!(pages > 3);
    assert_eq!(c.graphql_requests, pages, "one request per page");
    assert_eq!(c.tokens_issued, 1, "one token for the whole sweep");
}

#[tokio::test]
async fn a_repeated_cursor_stops_the_sweep_with_an_error() {
    let sim = sim(1, 60).await;
    let spec = spec(&sim_config(&sim, "page_size = 5", ""), "t0");
    let http = WizHttp::new().unwrap();
    let client = http.tenant(spec);
    // Page 1 normal, page 2 answers with its own `after` as endCursor: a looping server.
    sim.push_faults(
        "sim-client-0000",
        [Fault::Latency { ms: 0 }, Fault::RepeatCursor],
    );
    let err = sweep_ids(&client).await.unwrap_err();
    assert_eq!(err, WizError::CursorRepeated { page: 2 });
    assert!(err.to_string().contains("instead of looping"));
    assert_eq!(sim.counters("sim-client-0000").graphql_requests, 2);

    sim.push_faults("sim-client-0000", [Fault::MissingCursor]);
    let err = sweep_ids(&client).await.unwrap_err();
    assert_eq!(err, WizError::CursorMissing { page: 1 });
}

#[tokio::test]
async fn the_page_bound_stops_a_sweep_that_would_not_end() {
    let sim = sim(1, 60).await;
    let spec = spec(
        &sim_config(&sim, "page_size = 2\nmax_pages_per_sweep = 3", ""),
        "t0",
    );
    let client = WizHttp::new().unwrap().tenant(spec);
    let err = sweep_ids(&client).await.unwrap_err();
    assert_eq!(err, WizError::TooManyPages { max: 3 });
    assert_eq!(sim.counters("sim-client-0000").graphql_requests, 3);
}

#[tokio::test]
async fn one_token_serves_many_requests_and_a_401_renews_it_once() {
    let sim = sim(1, 30).await;
    let spec = spec(&sim_config(&sim, "page_size = 1", "rate_limit = 50"), "t0");
    let client = WizHttp::new().unwrap().tenant(spec);
    for _ in 0..12 {
        client
            .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 1, None)
            .await
            .unwrap();
    }
    let c = sim.counters("sim-client-0000");
    assert_eq!((c.graphql_requests, c.tokens_issued), (12, 1));

    // The server forgets the token: the next request gets 401, renews once, succeeds.
    sim.revoke_tokens("sim-client-0000");
    client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 1, None)
        .await
        .unwrap();
    let c = sim.counters("sim-client-0000");
    // The simulator cannot attribute the request with the revoked token to a client: it counts
    // 13; the client sent 14.
    assert_eq!((c.graphql_requests, c.tokens_issued), (13, 2));
    assert_eq!(
        client
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        14
    );
    assert_eq!(
        client
            .stats
            .renewals_after_401
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_token_near_expiry_is_renewed_before_use() {
    // A 1 s token is inside the 1 s safety margin from the start: every request renews it.
    let mut t = SimTenantSpec::numbered(0, 42, 10);
    t.token_expires_in = 1;
    let sim = sim_with(SimulatorOptions {
        tenants: vec![t],
        ..Default::default()
    })
    .await;
    let client = WizHttp::new()
        .unwrap()
        .tenant(spec(&sim_config(&sim, "", "rate_limit = 50"), "t0"));
    for _ in 0..3 {
        client
            .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 1, None)
            .await
            .unwrap();
    }
    let c = sim.counters("sim-client-0000");
    assert_eq!((c.graphql_requests, c.tokens_issued), (3, 3));
}

#[tokio::test]
async fn a_401_under_a_fresh_token_is_the_scope_error() {
    let mut t = SimTenantSpec::numbered(0, 42, 10);
    t.read_issues_scope = false;
    let sim = sim_with(SimulatorOptions {
        tenants: vec![t],
        ..Default::default()
    })
    .await;
    let client = WizHttp::new()
        .unwrap()
        .tenant(spec(&sim_config(&sim, FAST_RETRIES, ""), "t0"));
    let err = client.check().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("HTTP 401 on issues query"), "{msg}");
    assert!(msg.contains("read:issues"), "{msg}");
    assert!(
        msg.contains("<pre>Unauthorized</pre>"),
        "the HTML body is shown: {msg}"
    );
    // Fail fast: one request, no retry, no second token.
    let c = sim.counters("sim-client-0000");
    assert_eq!((c.graphql_requests, c.tokens_issued), (1, 1));
}

#[tokio::test]
async fn a_wrong_secret_cannot_authenticate() {
    let sim = sim(1, 5).await;
    let body = sim_config(&sim, FAST_RETRIES, "")
        .replace(&sim.tenants()[0].client_secret, "definitely-not-the-secret");
    let client = WizHttp::new().unwrap().tenant(spec(&body, "t0"));
    let err = client.check().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("could not authenticate to wiz: credentials refused"),
        "{msg}"
    );
    assert!(msg.contains("HTTP 401"), "{msg}");
    assert!(
        msg.contains("Auth URL") || msg.contains("auth_url"),
        "{msg}"
    );
    assert!(!err.is_transient(), "refused credentials are not retried");
    assert_eq!(sim.counters("sim-client-0000").token_requests, 1);
    assert_eq!(sim.counters("sim-client-0000").graphql_requests, 0);
}

#[tokio::test]
async fn an_unreachable_token_host_says_so() {
    let sim = sim(1, 5).await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/oauth/token", dead.local_addr().unwrap());
    drop(dead);
    let body = sim_config(
        &sim,
        "max_retries = 1\nretry_initial_backoff = \"10ms\"\nretry_max_backoff = \"10ms\"",
        "",
    )
    .replace(&sim.token_url(), &dead_url);
    let client = WizHttp::new().unwrap().tenant(spec(&body, "t0"));
    let msg = client.check().await.unwrap_err().to_string();
    assert!(
        msg.contains("could not authenticate to wiz: token endpoint unreachable"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_gov_cloud_token_url_is_used_when_configured() {
    // Two simulators: the "commercial" one must see no token request.
    let commercial = sim(1, 5).await;
    let gov = sim(1, 5).await;
    let body = sim_config(&gov, "", "");
    let s = spec(&body, "t0");
    assert_eq!(s.auth_url.as_str(), gov.token_url());
    let client = WizHttp::new().unwrap().tenant(s);
    client.check().await.unwrap();
    assert_eq!(gov.counters("sim-client-0000").tokens_issued, 1);
    assert_eq!(commercial.counters("sim-client-0000").token_requests, 0);
}

#[tokio::test]
async fn transient_failures_are_retried_and_the_sweep_completes() {
    let sim = sim(1, 40).await;
    let spec = spec(
        &sim_config(&sim, &format!("page_size = 10\n{FAST_RETRIES}"), ""),
        "t0",
    );
    let client = WizHttp::new().unwrap().tenant(spec);
    let expected = sim
        .issues("sim-client-0000", |s| s.ids_with_status("OPEN"))
        .len();
    sim.push_faults(
        "sim-client-0000",
        [
            Fault::RateLimited { retry_after: None },
            Fault::ServerError { status: 500 },
            Fault::Latency { ms: 0 },
            Fault::Downstream,
            Fault::ServerError { status: 503 },
            Fault::Latency { ms: 0 },
            Fault::RateLimited {
                retry_after: Some(1),
            },
        ],
    );
    let started = Instant::now();
    let ids = sweep_ids(&client).await.unwrap();
    assert_eq!(ids.len(), expected);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), expected);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    let retries = client
        .stats
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(retries, 5, "each transient fault cost one retry");
}

#[tokio::test]
async fn a_persistent_failure_gives_up_after_the_retry_budget() {
    let sim = sim(1, 10).await;
    let spec = spec(&sim_config(&sim, FAST_RETRIES, ""), "t0");
    let client = WizHttp::new().unwrap().tenant(spec);
    sim.set_sticky_fault("sim-client-0000", Some(Fault::ServerError { status: 502 }));
    let err = client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 10, None)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("gave up after 5 attempts: wiz server error (HTTP 502)"),
        "{msg}"
    );
    assert!(
        msg.contains("Bad Gateway"),
        "the HTML body is summarized: {msg}"
    );
    assert_eq!(sim.counters("sim-client-0000").graphql_requests, 5);

    sim.set_sticky_fault("sim-client-0000", Some(Fault::Downstream));
    let msg = client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 10, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("DOWNSTREAM_SERVICE_ERROR"), "{msg}");
    assert!(msg.contains("gave up after 5 attempts"), "{msg}");
}

#[tokio::test]
async fn other_graphql_and_4xx_errors_fail_fast() {
    let sim = sim(1, 10).await;
    let spec = spec(&sim_config(&sim, FAST_RETRIES, ""), "t0");
    let client = WizHttp::new().unwrap().tenant(spec);
    // first > 500 is Wiz's validation error, not retried.
    let err = client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 501, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "wiz GraphQL error BAD_USER_INPUT: 'first' must be less than or equal to 500"
    );
    sim.push_faults(
        "sim-client-0000",
        [Fault::Garbage {
            body: "<html>maintenance</html>".into(),
        }],
    );
    let err = client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 5, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("<html>maintenance</html>"),
        "{err}"
    );
    assert_eq!(sim.counters("sim-client-0000").graphql_requests, 2);
}

#[tokio::test]
async fn the_limiter_holds_a_credential_to_its_budget_and_shared_credentials_share_it() {
    let sim = sim(2, 5).await;
    let http = WizHttp::new().unwrap();
    // Tenants a and b use the same service account (sim-client-0000); c has its own.
    let t0 = &sim.tenants()[0];
    let t1 = &sim.tenants()[1];
    let body = format!(
        "{}{}{}",
        tenant_toml(&sim, "a", t0, "rate_limit = 4"),
        tenant_toml(&sim, "b", t0, "rate_limit = 4"),
        tenant_toml(&sim, "c", t1, "rate_limit = 4"),
    );
    let a = http.tenant(spec(&body, "a"));
    let b = http.tenant(spec(&body, "b"));
    let c = http.tenant(spec(&body, "c"));
    // Get tokens first so only GraphQL requests are timed.
    for cl in [&a, &b, &c] {
        cl.check().await.unwrap();
    }
    let shared_before = sim.counters("sim-client-0000").graphql_requests;
    const N: usize = 6;
    async fn run(cl: &wiz_connector::wiz::TenantClient, n: usize) -> Instant {
        let f = open_filter();
        for _ in 0..n {
            cl.fetch_page(&f, IssueOrder::CREATED_ASC, 1, None)
                .await
                .unwrap();
        }
        Instant::now()
    }
    let started = Instant::now();
    let (ea, eb, ec) = tokio::join!(run(&a, N), run(&b, N), run(&c, N));
    let shared_took = ea.max(eb) - started;
    let own_took = ec - started;
    // 12 requests on one credential at 4/s need at least 11/4 s after the first;
    // 6 on the other need at least 5/4 s, and are not slowed by the shared pair.
    assert!(
        shared_took.as_secs_f64() >= 11.0 / 4.0 - 0.3,
        "{shared_took:?}"
    );
    assert!(own_took.as_secs_f64() >= 5.0 / 4.0 - 0.3, "{own_took:?}");
    assert!(own_took < shared_took, "{own_took:?} vs {shared_took:?}");
    let shared = sim.counters("sim-client-0000");
    assert_eq!(shared.graphql_requests - shared_before, 2 * N as u64);
    // The simulator's view: never a burst above the budget (one extra for arrival jitter at
    // the window's edge).
    assert!(shared.peak_requests_per_second <= 5, "{shared:?}");
    assert!(sim.counters("sim-client-0001").peak_requests_per_second <= 5);
}

#[tokio::test]
async fn a_request_that_times_out_is_retried() {
    let sim = sim(1, 10).await;
    let spec = spec(
        &sim_config(
            &sim,
            &format!("request_timeout = \"1s\"\n{FAST_RETRIES}"),
            "",
        ),
        "t0",
    );
    let client = WizHttp::new().unwrap().tenant(spec);
    client.check().await.unwrap();
    sim.push_faults("sim-client-0000", [Fault::Latency { ms: 1500 }]);
    let page = client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 5, None)
        .await
        .unwrap();
    assert!(!page.is_empty());
    assert_eq!(
        client
            .stats
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    sim.set_sticky_fault("sim-client-0000", Some(Fault::Latency { ms: 1500 }));
    let err = client
        .fetch_page(&open_filter(), IssueOrder::CREATED_ASC, 5, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "gave up after 5 attempts: request to wiz timed out after 1s"
    );
}

#[tokio::test]
async fn the_simulator_filters_orders_and_pages_like_wiz() {
    use wiz_connector::wiz::TimeRange;
    let sim = sim(1, 200).await;
    let client = WizHttp::new()
        .unwrap()
        .tenant(spec(&sim_config(&sim, "", "rate_limit = 50"), "t0"));
    let all = sim.issues("sim-client-0000", |s| s.issues.clone());
    let ids_of = |page: &wiz_connector::wiz::Page| -> Vec<String> {
        page.issues().map(|i| i.unwrap().id().to_string()).collect()
    };
    // severity and type filters
    let f = IssueFilter {
        severity: vec!["CRITICAL".into()],
        issue_type: vec!["THREAT_DETECTION".into()],
        ..Default::default()
    };
    let page = client
        .fetch_page(&f, IssueOrder::CREATED_ASC, 500, None)
        .await
        .unwrap();
    let want: Vec<String> = all
        .iter()
        .filter(|i| i.severity == "CRITICAL" && i.issue_type == "THREAT_DETECTION")
        .map(|i| i.id.clone())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ids_of(&page), want, "filtered, in creation order");
    // statusChangedAt.after and createdAt.before
    let cut = all[100].status_changed_at.clone();
    let f = IssueFilter {
        status_changed_at: Some(TimeRange {
            after: Some(cut.clone()),
            before: None,
        }),
        created_at: Some(TimeRange {
            after: None,
            before: Some(all[150].created_at.clone()),
        }),
        ..Default::default()
    };
    let page = client
        .fetch_page(&f, IssueOrder::CREATED_ASC, 500, None)
        .await
        .unwrap();
    let cut_t = humantime::parse_rfc3339_weak(&cut).unwrap();
    let want: Vec<String> = all[..150]
        .iter()
        .filter(|i| i.status_changed > cut_t)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(ids_of(&page), want);
    // STATUS_CHANGED_AT descending, paged through cursors
    let order = IssueOrder {
        field: "STATUS_CHANGED_AT",
        direction: "DESC",
    };
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = client
            .fetch_page(&IssueFilter::default(), order, 64, after.as_deref())
            .await
            .unwrap();
        got.extend(ids_of(&p));
        if !p.has_next_page {
            break;
        }
        after = p.end_cursor.clone();
    }
    let mut want = all.clone();
    want.sort_by(|a, b| (b.status_changed, &b.id).cmp(&(a.status_changed, &a.id)));
    assert_eq!(got, want.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
    // A bad cursor is Wiz's validation error.
    let err = client
        .fetch_page(
            &IssueFilter::default(),
            IssueOrder::CREATED_ASC,
            5,
            Some("zz"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "wiz GraphQL error BAD_USER_INPUT: invalid cursor"
    );
}

/// A token endpoint of our own on 127.0.0.1:0 that answers every request with `status`,
/// `content_type` and a body made from the posted form by `body`.
async fn token_endpoint(
    status: u16,
    content_type: &'static str,
    body: fn(&str) -> String,
) -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/oauth/token",
        post(move |form: String| async move {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [(axum::http::header::CONTENT_TYPE, content_type)],
                body(&form),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

/// Status, content type, body from the posted form, what the error says, the hint it gives.
type TokenCase = (
    u16,
    &'static str,
    fn(&str) -> String,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn a_token_endpoint_answer_is_never_echoed_and_hints_fit_the_failure() {
    let sim = sim(1, 5).await;
    let secret = sim.tenants()[0].client_secret.clone();
    let cases: [TokenCase; 4] = [
        // Echoes the posted form (with the secret) as plain text, with HTTP 200.
        (
            200,
            "text/plain",
            |f| f.to_string(),
            "not a JSON token answer",
            "the token endpoint is failing",
        ),
        // Answers with a form-encoded token instead of JSON.
        (
            200,
            "application/x-www-form-urlencoded",
            |_| "access_token=eyJleaked-token&expires_in=3600".into(),
            "not a JSON token answer",
            "the token endpoint is failing",
        ),
        // A JSON refusal that quotes the form.
        (
            401,
            "application/json",
            |f| format!("{{\"error\":\"invalid_client\",\"error_description\":\"bad form {f}\"}}"),
            "credentials refused",
            "check client_id and client_secret",
        ),
        // A broken endpoint: not the credentials' fault.
        (
            500,
            "text/html",
            |f| format!("<html>{f}</html>"),
            "token endpoint unavailable (HTTP 500",
            "the token endpoint is failing",
        ),
    ];
    for (status, ctype, body, what, hint) in cases {
        let (url, task) = token_endpoint(status, ctype, body).await;
        let cfg = sim_config(&sim, "max_retries = 0", "").replace(&sim.token_url(), &url);
        let client = WizHttp::new().unwrap().tenant(spec(&cfg, "t0"));
        let msg = client.check().await.unwrap_err().to_string();
        assert!(msg.contains(what), "{status}: {msg}");
        assert!(msg.contains(hint), "{status}: {msg}");
        assert!(
            !msg.contains(&secret),
            "{status}: the secret is echoed: {msg}"
        );
        assert!(
            !msg.contains("eyJleaked"),
            "{status}: a token is echoed: {msg}"
        );
        if ctype != "application/json" {
            assert!(
                !msg.contains("grant_type"),
                "{status}: the body is echoed: {msg}"
            );
            assert!(
                msg.contains(ctype) && msg.contains("bytes"),
                "{status}: {msg}"
            );
        } else {
            // The JSON error fields are shown, with the secret parameter removed.
            assert!(msg.contains("client_secret=[REDACTED]"), "{status}: {msg}");
        }
        task.abort();
    }
}
