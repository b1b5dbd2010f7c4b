//! Durable per-sink backlogs (CONTRACT "Routes", issue 20): a destination that is down holds
//! back only its own share. The tenant keeps delivering to its live destinations; the dead
//! one's share waits on disk and arrives complete and in order when it returns, across kill -9
//! too; past the bound the tenant holds, and repeats nothing to the others. Real connector,
//! real simulator, a real http SIEM over loopback, real files.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use common::*;
use wiz_connector::app::{App, AppOptions};

/// A SIEM behind an http endpoint that refuses with 503 while `down`, and once it has accepted
/// `accept_limit` requests.
#[derive(Default)]
struct Siem {
    down: AtomicBool,
    accept_limit: AtomicU32,
    refused: AtomicU32,
    /// Every event accepted, in arrival order.
    received: Mutex<Vec<serde_json::Value>>,
    requests_ok: AtomicU32,
}

impl Siem {
    fn ids(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn siem() -> (Arc<Siem>, std::net::SocketAddr) {
    let siem = Arc::new(Siem {
        accept_limit: AtomicU32::new(u32::MAX),
        ..Default::default()
    });
    let state = siem.clone();
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |body: Bytes| {
            let siem = state.clone();
            async move {
                let full = siem.requests_ok.load(Ordering::SeqCst)
                    >= siem.accept_limit.load(Ordering::SeqCst);
                if siem.down.load(Ordering::SeqCst) || full {
                    siem.refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let text = String::from_utf8(body.to_vec()).unwrap();
                let mut got = siem.received.lock().unwrap();
                for line in text.lines() {
                    got.push(serde_json::from_str(line).unwrap());
                }
                siem.requests_ok.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (siem, addr)
}

/// Event ids of tenant `t` in a file sink's output, in order.
fn archived(path: &Path, t: &str) -> Vec<String> {
    complete_lines(path)
        .iter()
        .filter(|e| e["tenant"] == t)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// t0 → `archive`; t1 → `archive` and `siem` (an http sink to `addr`, with `siem_extra`).
fn config(
    sim: &wiz_connector::sim::Simulator,
    connector: &str,
    archive: &Path,
    addr: std::net::SocketAddr,
    siem_extra: &str,
) -> String {
    let tenants = sim.tenants();
    format!(
        "[connector]\nstate_dir = \"{}\"\n{connector}\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.siem]\ntype = \"http\"\nurl = \"http://{addr}/ingest\"\ngzip = false\ntimeout = \"2s\"\nmax_retries = 0\n{siem_extra}\n{}{}",
        state_dir().display(),
        archive.display(),
        tenant_toml(sim, "t0", &tenants[0], "sinks = [\"archive\"]"),
        tenant_toml(sim, "t1", &tenants[1], "sinks = [\"archive\", \"siem\"]"),
    )
}

/// A running connector for `sim` with the SIEM down (see [`config`]): the app, the SIEM, and the
/// archive's path in the returned directory.
async fn start_with_siem_down(
    sim: &wiz_connector::sim::Simulator,
    connector: &str,
    siem_extra: &str,
) -> (App, Arc<Siem>, std::path::PathBuf, tempfile::TempDir) {
    let (siem, addr) = siem().await;
    siem.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive.jsonl");
    let body = config(sim, connector, &archive, addr, siem_extra);
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    (app, siem, archive, dir)
}

fn no_repeats(ids: &[String]) -> bool {
    ids.iter().collect::<HashSet<_>>().len() == ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_holds_back_only_its_share_which_arrives_in_order_when_it_returns() {
    let sim = sim(2, 30).await;
    let (app, siem, archive, _dir) = start_with_siem_down(
        &sim,
        "poll_interval = \"1s\"\npage_size = 5\nstartup_jitter = \"0s\"\nwatch_interval = \"0s\"",
        "",
    )
    .await;
    let open = open_ids(&sim);
    wait_until(
        "both tenants' issues in the archive while the SIEM is down",
        Duration::from_secs(60),
        || {
            archived(&archive, "t0").len() == open["t0"].len()
                && archived(&archive, "t1").len() == open["t1"].len()
        },
    )
    .await;
    // t1's share for the SIEM waits in its backlog; t1 is not held back.
    let t1_sent = archived(&archive, "t1");
    wait_until("t1's share in the backlog", Duration::from_secs(10), || {
        app.sink_stats.statuses()["siem"].backlog_events == t1_sent.len() as u64
    })
    .await;
    assert!(app.health.get("t1").unwrap().held_by_sink.is_none());
    assert!(siem.received.lock().unwrap().is_empty());
    assert!(siem.refused.load(Ordering::SeqCst) >= 1);
    // New issues during the outage: both tenants keep delivering to the archive.
    let clients: Vec<String> = sim.tenants().iter().map(|t| t.client_id.clone()).collect();
    let added: Vec<String> = clients
        .iter()
        .flat_map(|c| {
            (0..3)
                .map(|_| sim.issues(c, |s| s.add()))
                .collect::<Vec<_>>()
        })
        .collect();
    wait_until(
        "the new issues in the archive during the outage",
        Duration::from_secs(30),
        || {
            let got: HashSet<String> = complete_lines(&archive)
                .iter()
                .filter_map(|e| e["issue_id"].as_str().map(str::to_string))
                .collect();
            added.iter().all(|id| got.contains(id))
        },
    )
    .await;
    let t1_sent = archived(&archive, "t1");
    assert!(siem.received.lock().unwrap().is_empty());
    // The archive is written alongside the backlog: the last append may still be syncing.
    wait_until(
        "t1's new share in the backlog",
        Duration::from_secs(10),
        || app.sink_stats.statuses()["siem"].backlog_events == t1_sent.len() as u64,
    )
    .await;
    assert!(app.sink_stats.statuses()["siem"].backlog_bytes > 0);
    // Back up: the SIEM gets t1's whole share, in order, once each; nothing of t0's.
    siem.down.store(false, Ordering::SeqCst);
    wait_until("the backlog drained", Duration::from_secs(60), || {
        siem.received.lock().unwrap().len() >= t1_sent.len()
            && app.sink_stats.statuses()["siem"].backlog_events == 0
    })
    .await;
    let got = siem.ids();
    assert_eq!(got, t1_sent, "complete, in order, nothing repeated");
    assert!(siem
        .received
        .lock()
        .unwrap()
        .iter()
        .all(|e| e["tenant"] == "t1"));
    let status = app.sink_stats.statuses()["siem"].clone();
    assert_eq!(status.backlog_bytes, 0);
    assert_eq!(status.delivered_events, t1_sent.len() as u64);
    let metrics = app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_sink_backlog_events{sink=\"siem\"} 0"),
        "{metrics}"
    );
    // Changes after the outage go straight through.
    let late = sim.issues(&clients[1], |s| s.add());
    wait_until("a change after the outage", Duration::from_secs(30), || {
        siem.received
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["issue_id"] == late.as_str())
    })
    .await;
    assert!(no_repeats(&siem.ids()));
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_the_tenant_holds_repeats_nothing_and_loses_nothing() {
    let sim = sim(2, 20).await;
    let (app, siem, archive, _dir) = start_with_siem_down(
        &sim,
        "poll_interval = \"1h\"\npage_size = 5\nstartup_jitter = \"0s\"",
        "backlog_max_bytes = 1000",
    )
    .await;
    let open = open_ids(&sim);
    wait_until(
        "t1 held by the full backlog",
        Duration::from_secs(60),
        || {
            app.health.get("t1").is_some_and(|h| {
                h.held_by_sink.as_deref() == Some("siem")
                    && h.last_error
                        .is_some_and(|e| e.message.contains("backlog is full"))
            })
        },
    )
    .await;
    // t0 is not held; t1 delivered its first page (5 events, past 1,000 bytes) and holds the
    // second, resending it without writing it anywhere again.
    wait_until("t0 complete", Duration::from_secs(30), || {
        archived(&archive, "t0").len() == open["t0"].len()
    })
    .await;
    wait_until("several resends", Duration::from_secs(30), || {
        app.observer_metrics_text()
            .contains("wiz_connector_errors_total{tenant=\"t1\",kind=\"sink\"} 3")
    })
    .await;
    assert_eq!(archived(&archive, "t1").len(), 5);
    let status = app.sink_stats.statuses()["siem"].clone();
    assert_eq!(status.backlog_events, 5);
    assert!(status.backlog_bytes >= 1000);
    // Back: the backlog drains, t1 resumes, and each destination has each event once.
    siem.down.store(false, Ordering::SeqCst);
    wait_until("t1 complete everywhere", Duration::from_secs(60), || {
        archived(&archive, "t1").len() >= open["t1"].len()
            && siem.received.lock().unwrap().len() >= open["t1"].len()
    })
    .await;
    let sent = archived(&archive, "t1");
    assert_eq!(sent.len(), open["t1"].len());
    assert!(no_repeats(&sent));
    assert_eq!(siem.ids(), sent);
    wait_until("t1 no longer held", Duration::from_secs(10), || {
        app.health.get("t1").unwrap().held_by_sink.is_none()
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_refusing_is_down_on_the_sink_not_on_its_tenants() {
    let sim = sim(2, 10).await;
    let (app, siem, archive, _dir) =
        start_with_siem_down(&sim, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"", "").await;
    wait_until("the sink down", Duration::from_secs(60), || {
        app.sink_stats.statuses()["siem"].state == wiz_connector::sink::SinkHealth::Down
    })
    .await;
    let status = app.sink_stats.statuses()["siem"].clone();
    assert!(status.failures_in_a_row >= 5);
    assert!(
        status.last_error.unwrap().message.contains("503"),
        "the sink names the answer"
    );
    // The tenant itself is fine: nothing about the SIEM in its health, and its events are in
    // the archive.
    let t1 = app.health.get("t1").unwrap();
    assert!(t1.last_error.is_none() && t1.held_by_sink.is_none());
    assert_eq!(archived(&archive, "t1").len(), open_ids(&sim)["t1"].len());
    siem.down.store(false, Ordering::SeqCst);
    let open = open_ids(&sim);
    wait_until("delivered once up", Duration::from_secs(60), || {
        siem.received.lock().unwrap().len() == open["t1"].len()
    })
    .await;
    wait_until("the sink up again", Duration::from_secs(10), || {
        app.sink_stats.statuses()["siem"].state == wiz_connector::sink::SinkHealth::Up
    })
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_survives_kill_9_during_the_outage_and_during_the_drain() {
    let sim = sim(2, 30).await;
    let (siem, addr) = siem().await;
    siem.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive.jsonl");
    let body = config(
        &sim,
        "poll_interval = \"1h\"\npage_size = 5\nstartup_jitter = \"0s\"",
        &archive,
        addr,
        "",
    );
    let state: std::path::PathBuf = body
        .lines()
        .find_map(|l| l.strip_prefix("state_dir = \""))
        .map(|s| s.trim_end_matches('"').into())
        .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let body = body.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""));
    let cfg = write_config(&body);
    let open = open_ids(&sim);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let backlog_events = || {
        let http = http.clone();
        let url = format!("http://{admin}/sinks");
        async move {
            let Ok(r) = http.get(url).send().await else {
                return 0;
            };
            let bytes = r.bytes().await.unwrap_or_default();
            let sinks: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            sinks
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == "siem"))
                .and_then(|s| s["backlog_events"].as_u64())
                .unwrap_or(0)
        }
    };
    // Run 1: the SIEM is down; t1's share goes to the backlog; kill -9.
    let mut child = spawn_run(&cfg.path);
    let want = open["t1"].len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while backlog_events().await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "t1's share in the backlog"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let segments = std::fs::read_dir(state.join("backlog/siem"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segments >= 1, "the backlog is on disk");
    assert!(siem.received.lock().unwrap().is_empty());
    // Run 2: the SIEM is back but takes two batches only, then refuses again: kill -9 in the
    // middle of the drain, once the third batch was refused.
    siem.accept_limit.store(2, Ordering::SeqCst);
    siem.down.store(false, Ordering::SeqCst);
    let refused = siem.refused.load(Ordering::SeqCst);
    let mut child = spawn_run(&cfg.path);
    wait_until(
        "two batches drained, the third refused",
        Duration::from_secs(60),
        || {
            siem.requests_ok.load(Ordering::SeqCst) == 2
                && siem.refused.load(Ordering::SeqCst) > refused
        },
    )
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let partial = siem.ids().len();
    assert!(partial < open["t1"].len(), "killed before the end");
    // Run 3: the rest arrives; at most the page in flight at the kill comes twice.
    siem.accept_limit.store(u32::MAX, Ordering::SeqCst);
    let mut child = spawn_run(&cfg.path);
    // Done when the archive holds t1's every event and the SIEM the same ones: both read at each
    // check (this run may still append t1's last page to both).
    let want = open["t1"].len();
    wait_for("the whole share delivered", Duration::from_secs(60), || {
        let archive: HashSet<String> = archived(&archive, "t1").into_iter().collect();
        let got: HashSet<String> = siem.ids().into_iter().collect();
        if archive.len() == want && got == archive {
            Ok(())
        } else {
            Err(format!(
                "(archive: {} of {want} events; SIEM: {}, {} not in the archive)",
                archive.len(),
                got.len(),
                got.difference(&archive).count()
            ))
        }
    })
    .await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(20)).await, 0);
    // Each kill -9 may repeat the page then in flight (5 events), in either destination: the
    // archive gets it again when the tenant resends it, the SIEM when its backlog resends a
    // record whose delivery the kill kept from being recorded. Nothing else repeats.
    let first_of = |ids: Vec<String>| -> Vec<String> {
        let mut seen = HashSet::new();
        ids.into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect()
    };
    let archive_all = archived(&archive, "t1");
    let sent = first_of(archive_all.clone());
    assert_eq!(sent.len(), want);
    assert!(
        archive_all.len() - sent.len() <= 10,
        "the archive repeats at most a page per kill: {} of {}",
        archive_all.len(),
        sent.len()
    );
    let got = siem.ids();
    assert!(
        got.len() - sent.len() <= 10,
        "the SIEM repeats at most a page per kill: {} of {}",
        got.len(),
        sent.len()
    );
    // In order: the first time each event arrives follows the tenant's order.
    let firsts = first_of(got.clone());
    let pos = |ids: &[String]| -> Vec<usize> {
        ids.iter()
            .map(|id| sent.iter().position(|s| s == id).unwrap_or(usize::MAX))
            .collect()
    };
    assert_eq!(
        firsts,
        sent,
        "the SIEM's first arrivals by their place in the archive: {:?}; all arrivals: {:?}",
        pos(&firsts),
        pos(&got)
    );
}
