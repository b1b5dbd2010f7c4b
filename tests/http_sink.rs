//! The `http` sink against a local webhook that flaps: 5xx, 429 with Retry-After, a slow answer
//! past the timeout, connections reset mid-request; every event arrives. A refused batch waits
//! in the sink's backlog and is reported on the sink; without a backlog a 400 holds the tenant
//! back and is reported on it. Batches as JSON arrays without gzip; TLS verified unless turned off.

mod common;

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::*;
use wiz_connector::app::{App, AppOptions};

#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    RetryAfter1,
    Slow,
}

#[derive(Default)]
struct Hook {
    script: Mutex<VecDeque<Answer>>,
    /// Connections still to be reset (RST) once the request has started arriving.
    resets: AtomicU32,
    /// Connections that were reset.
    reset_done: AtomicU32,
    received: Mutex<Vec<serde_json::Value>>,
    requests: Mutex<u64>,
    auth: Mutex<HashSet<String>>,
}

async fn webhook(hook: Arc<Hook>) -> std::net::SocketAddr {
    let hook_for_listener = hook.clone();
    let app = axum::Router::new().route(
        "/ingest",
        post(move |headers: HeaderMap, body: Bytes| {
            let hook = hook.clone();
            async move {
                *hook.requests.lock().unwrap() += 1;
                if let Some(a) = headers.get("x-api-key") {
                    hook.auth
                        .lock()
                        .unwrap()
                        .insert(a.to_str().unwrap().to_string());
                }
                let next = hook.script.lock().unwrap().pop_front();
                match next {
                    Some(Answer::Status(s)) => {
                        return StatusCode::from_u16(s).unwrap().into_response()
                    }
                    Some(Answer::RetryAfter1) => {
                        return (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        )
                            .into_response()
                    }
                    Some(Answer::Slow) => tokio::time::sleep(Duration::from_millis(1500)).await,
                    None => {}
                }
                let mut text = String::new();
                if headers.get("content-encoding").is_some() {
                    assert_eq!(headers["content-encoding"], "gzip");
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_string(&mut text)
                        .unwrap();
                } else {
                    text = String::from_utf8(body.to_vec()).unwrap();
                }
                let mut got = hook.received.lock().unwrap();
                match headers["content-type"].to_str().unwrap() {
                    "application/x-ndjson" => {
                        for line in text.lines() {
                            got.push(serde_json::from_str(line).unwrap());
                        }
                    }
                    "application/json" => {
                        let batch: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
                        got.extend(batch);
                    }
                    other => panic!("unexpected content type {other}"),
                }
                // Every answer closes its connection, so every request comes on a new one and
                // the listener's reset budget applies per request.
                (StatusCode::OK, [("connection", "close")]).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = Resetting {
        inner: listener,
        hook: hook_for_listener,
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A listener that resets the first `Hook::resets` connections once the request has started
/// arriving (linger 0, then close: the peer gets an RST), and hands the others to axum.
struct Resetting {
    inner: tokio::net::TcpListener,
    hook: Arc<Hook>,
}

impl axum::serve::Listener for Resetting {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            let reset = self
                .hook
                .resets
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !reset {
                return (stream, addr);
            }
            let hook = self.hook.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut stream = stream;
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.set_zero_linger();
                drop(stream);
                hook.reset_done.fetch_add(1, Ordering::SeqCst);
            });
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn config(sim: &wiz_connector::sim::Simulator, addr: std::net::SocketAddr) -> String {
    format!(
        "{}[sinks.siem]\ntype = \"http\"\nurl = \"http://{addr}/ingest\"\nauth_header = \"X-Api-Key\"\nauth_value = \"siem-key-3f9a\"\ntimeout = \"1s\"\nmax_retries = 6\n",
        sim_config(sim, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 5", "rate_limit = 50")
    )
}

fn keys(v: &[serde_json::Value]) -> HashSet<(String, String)> {
    v.iter()
        .map(|l| {
            (
                l["tenant"].as_str().unwrap().to_string(),
                l["issue_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn expected(sim: &wiz_connector::sim::Simulator) -> HashSet<(String, String)> {
    open_ids(sim)
        .into_iter()
        .flat_map(|(t, ids)| ids.into_iter().map(move |i| (t.clone(), i)))
        .collect()
}

/// Runs the connector from `sim` into `hook` until every open issue arrived there.
async fn deliver_everything(sim: &wiz_connector::sim::Simulator, hook: &Arc<Hook>) -> App {
    deliver_everything_with(sim, hook, "").await
}

/// [`deliver_everything`], with more keys for the sink.
async fn deliver_everything_with(
    sim: &wiz_connector::sim::Simulator,
    hook: &Arc<Hook>,
    sink_keys: &str,
) -> App {
    let addr = webhook(hook.clone()).await;
    let body = format!("{}{sink_keys}", config(sim, addr));
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let want = expected(sim);
    wait_until(
        "every event at the webhook",
        Duration::from_secs(60),
        || keys(&hook.received.lock().unwrap()).is_superset(&want),
    )
    .await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_webhook_still_gets_every_event() {
    let sim = sim(2, 20).await;
    let hook = Arc::new(Hook::default());
    hook.script.lock().unwrap().extend([
        Answer::Status(500),
        Answer::RetryAfter1,
        Answer::Slow,
        Answer::Status(503),
        Answer::Status(502),
    ]);
    let app = deliver_everything(&sim, &hook).await;
    assert!(*hook.requests.lock().unwrap() > 5, "the faults were served");
    assert_eq!(
        *hook.auth.lock().unwrap(),
        HashSet::from(["siem-key-3f9a".to_string()])
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backlog_a_400_holds_the_tenant_back_and_is_reported() {
    let sim = sim(1, 20).await;
    let hook = Arc::new(Hook::default());
    hook.script.lock().unwrap().extend([Answer::Status(400); 3]);
    let addr = webhook(hook.clone()).await;
    let s = settings(&format!("{}backlog_max_bytes = 0\n", config(&sim, addr)));
    let shown = format!("{s:?} {}", serde_json::to_string(&s).unwrap());
    assert!(!shown.contains("siem-key-3f9a") && shown.contains("[REDACTED]"));
    let app = App::start(s, AppOptions::default()).await.unwrap();
    wait_until("the refusal reported", Duration::from_secs(20), || {
        app.health
            .get("t0")
            .and_then(|h| h.last_error)
            .is_some_and(|e| {
                e.message.contains("sink unavailable") && e.message.contains("HTTP 400")
            })
    })
    .await;
    // Held, not dropped: once the webhook accepts, everything arrives.
    let want = expected(&sim);
    wait_until(
        "every event after the refusals",
        Duration::from_secs(60),
        || keys(&hook.received.lock().unwrap()).is_superset(&want),
    )
    .await;
    assert!(app
        .observer_metrics_text()
        .contains("wiz_connector_errors_total{tenant=\"t0\",kind=\"sink\"} 3"));
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_resets_connections_still_gets_every_event() {
    let sim = sim(2, 20).await;
    let hook = Arc::new(Hook::default());
    hook.resets.store(4, Ordering::SeqCst);
    let app = deliver_everything(&sim, &hook).await;
    assert_eq!(
        hook.reset_done.load(Ordering::SeqCst),
        4,
        "four connections were reset"
    );
    // A reset request never reached the handler, so nothing arrived twice.
    let got = hook.received.lock().unwrap().clone();
    let ids: HashSet<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), got.len(), "no event delivered twice");
    assert_eq!(keys(&got), expected(&sim));
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_can_be_json_arrays_without_gzip() {
    let sim = sim(2, 20).await;
    let hook = Arc::new(Hook::default());
    let app = deliver_everything_with(&sim, &hook, "format = \"json_array\"\ngzip = false\n").await;
    let got = hook.received.lock().unwrap().clone();
    assert_eq!(keys(&got), expected(&sim));
    assert_eq!(got.len(), expected(&sim).len(), "each event once");
    app.shutdown().await.unwrap();
}

/// A listener that speaks TLS with the self-signed certificate in `tests/fixtures` (valid for
/// 127.0.0.1 and localhost); a handshake the client abandons is counted and skipped.
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused_handshakes: Arc<AtomicU32>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.refused_handshakes.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A webhook over TLS that accepts every batch; returns its address, what it received, and the
/// count of handshakes the client broke off.
async fn tls_webhook() -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<serde_json::Value>>>,
    Arc<AtomicU32>,
) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = CertificateDer::from_pem_file(fixtures.join("webhook-cert.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(fixtures.join("webhook-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/ingest",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut text)
                    .unwrap();
                let mut got = sink.lock().unwrap();
                for line in text.lines() {
                    got.push(serde_json::from_str(line).unwrap());
                }
                StatusCode::OK
            }
        }),
    );
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let refused = Arc::new(AtomicU32::new(0));
    let listener = TlsListener {
        inner,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        refused_handshakes: refused.clone(),
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_unless_turned_off_explicitly() {
    let sim = sim(1, 20).await;
    let (addr, received, refused) = tls_webhook().await;
    let https = |extra: &str| {
        format!(
            "{}[sinks.siem]\ntype = \"http\"\nurl = \"https://localhost:{}/ingest\"\ntimeout = \"2s\"\nmax_retries = 0\n{extra}",
            sim_config(&sim, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"", "rate_limit = 50"),
            addr.port()
        )
    };
    // Verification on (the default): the self-signed certificate is refused, loudly, on the
    // sink, and the pages wait in its backlog.
    let app = App::start(settings(&https("")), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len() as u64;
    wait_until(
        "the refused pages in the backlog",
        Duration::from_secs(30),
        || {
            let s = &app.sink_stats.statuses()["siem"];
            s.backlog_events == open && s.last_error.is_some()
        },
    )
    .await;
    let message = app.sink_stats.statuses()["siem"]
        .last_error
        .clone()
        .unwrap()
        .message;
    assert!(
        message.to_lowercase().contains("certificate"),
        "the error names the certificate: {message}"
    );
    assert!(refused.load(Ordering::SeqCst) >= 1);
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing sent unverified"
    );
    app.shutdown().await.unwrap();

    // Turned off explicitly: delivered.
    let app = App::start(
        settings(&https("tls_verify = false\n")),
        AppOptions::default(),
    )
    .await
    .unwrap();
    let want = expected(&sim);
    wait_until("every event over TLS", Duration::from_secs(30), || {
        keys(&received.lock().unwrap()).is_superset(&want)
    })
    .await;
    app.shutdown().await.unwrap();
}
