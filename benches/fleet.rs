//! Fleet benchmarks of the supervision tree (a bench binary, not criterion: each scenario runs once
//! and takes tens of seconds). The simulator runs as a separate process (`wiz-connector simulate`)
//! so its CPU is not counted against the connector.
//!
//! `cargo bench --bench fleet [-- idle|e2e|formats|hec|siem|kafka|routed|quiet|lag|reconcile|startup]` (all by default). Under
//! `cargo test` it runs nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wiz_connector::app::{App, AppOptions};
use wiz_connector::config::{load_str, EnvSource, Settings};
use wiz_connector::sim::{IssueSet, SimTenantSpec};

#[path = "support/mod.rs"]
mod support;
use support::*;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU seconds (user + system) of this process, all threads.
fn cpu_seconds() -> f64 {
    cpu_of(std::process::id())
}

fn fleet_config(base: &str, tenants: usize, connector: &str, sink: &str) -> Settings {
    let state = tempfile::tempdir().unwrap().keep();
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\n{connector}\n[admin]\nlisten = \"127.0.0.1:0\"\n{sink}\n",
        state.display()
    );
    for n in 0..tenants {
        let t = SimTenantSpec::numbered(n, SEED, 0);
        text.push_str(&format!(
            "[tenants.t{n}]\nclient_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{base}/graphql\"\nauth_url = \"{base}/oauth/token\"\nallow_insecure_endpoints = true\n",
            t.client_id, t.client_secret
        ));
    }
    load_str("bench", &text, &EnvSource::Fixed(HashMap::new())).unwrap()
}

async fn idle() {
    // `WIZ_BENCH_IDLE_TENANTS=100000` for the 100,000-tenant row.
    let n = env_usize("WIZ_BENCH_IDLE_TENANTS", 10_000);
    let build = Instant::now();
    let settings = fleet_config(
        "http://127.0.0.1:9",
        n,
        "poll_interval = \"24h\"\nstartup_jitter = \"24h\"",
        "[sinks.null]\ntype = \"file\"\npath = \"/dev/null\"\n",
    );
    let loaded = build.elapsed();
    let before = rss_kib();
    let started = Instant::now();
    // Every actor started at once, as before tenants were started shortly before their first
    // polls: the memory of a fleet of running idle tenants (`startup` times the default start).
    let opts = AppOptions {
        start_ahead: Some(Duration::from_secs(48 * 3600)),
        ..Default::default()
    };
    let app = App::start(settings, opts).await.unwrap();
    while !app.is_ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let scheduled = started.elapsed();
    // Let allocator and tasks settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    // A few first polls fall inside the settling time; those tenants are scheduled too.
    let scheduled_all = app
        .health
        .all()
        .iter()
        .filter(|h| h.next_poll_at.is_some() || h.last_poll_at.is_some())
        .count();
    // The admin API at this size: the whole list, one worst-first page, the metrics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let timed = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{}{path}", app.admin_addr());
        async move {
            let t = Instant::now();
            let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
            (t.elapsed(), body)
        }
    };
    let (all_took, all) = timed("/tenants").await;
    let (page_took, page) = timed("/tenants?order=worst&limit=100").await;
    let (metrics_took, metrics) = timed("/metrics").await;
    let series = String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!(
        "| admin API | {n} idle tenants | `/tenants` {:.0} ms, {} bytes; `/tenants?order=worst&limit=100` {:.0} ms, {} bytes; `/metrics` {:.0} ms, {} bytes, {series} series ({:.1} per tenant) | |",
        all_took.as_secs_f64() * 1000.0,
        all.len(),
        page_took.as_secs_f64() * 1000.0,
        page.len(),
        metrics_took.as_secs_f64() * 1000.0,
        metrics.len(),
        series as f64 / n as f64
    );
    let stop = Instant::now();
    app.shutdown().await.unwrap();
    println!(
        "| idle | {n} tenants, 24 h interval | config loaded in {:.2} s; {scheduled_all} scheduled (ready) in {:.2} s; shut down in {:.2} s | RSS +{} KiB = {:.1} KiB per tenant |",
        loaded.as_secs_f64(),
        scheduled.as_secs_f64(),
        stop.elapsed().as_secs_f64(),
        after - before,
        (after - before) as f64 / n as f64
    );
}

/// How the lag scenario's storm looks.
#[derive(Clone, Copy, PartialEq)]
enum Storm {
    Calm,
    /// Tenant t0 answers 429 and 503 alternately, 20,000 times.
    One,
    /// Tenants t0..t999 answer 429 with `Retry-After: 3600` (waited out, capped at 300 s).
    Thousand,
}

async fn lag_run(storm: Storm) -> (Vec<u64>, usize) {
    const N: usize = 10_000;
    let sim = start_sim(N, 3);
    let stormy = match storm {
        Storm::Calm => 0,
        Storm::One => 1,
        Storm::Thousand => 1_000,
    };
    if storm == Storm::Thousand {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let faults: Vec<serde_json::Value> = (0..5)
            .map(|_| serde_json::json!({"fault": "rate_limited", "retry_after": 3600}))
            .collect();
        let body = serde_json::to_vec(&faults).unwrap();
        for n in 0..stormy {
            let spec = SimTenantSpec::numbered(n, SEED, 0);
            let r = client
                .post(format!(
                    "{}/_sim/tenants/{}/faults",
                    sim.base, spec.client_id
                ))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    }
    if storm == Storm::One {
        let faults: Vec<serde_json::Value> = (0..20_000)
            .map(|i| {
                if i % 2 == 0 {
                    serde_json::json!({"fault": "rate_limited"})
                } else {
                    serde_json::json!({"fault": "server_error", "status": 503})
                }
            })
            .collect();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::Client::new()
            .post(format!("{}/_sim/tenants/sim-client-0000/faults", sim.base))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&faults).unwrap())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let settings = fleet_config(
        &sim.base,
        N,
        "poll_interval = \"300s\"\nstartup_jitter = \"30s\"\nrate_limit = 3\nretry_initial_backoff = \"1s\"",
        "[sinks.null]\ntype = \"file\"\npath = \"/dev/null\"\n",
    );
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(45)).await;
    let mut lags: Vec<u64> = app
        .health
        .all()
        .iter()
        .filter(|h| {
            h.id.strip_prefix('t')
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= stormy.max(1))
        })
        .filter_map(|h| h.last_poll_lag_ms)
        .collect();
    lags.sort_unstable();
    let polled = lags.len();
    app.shutdown().await.unwrap();
    (lags, polled)
}

async fn lag() {
    for storm in [Storm::Calm, Storm::One, Storm::Thousand] {
        let (lags, polled) = lag_run(storm).await;
        println!(
            "| poll-start lag{} | 10000 tenants, 300 s interval, 30 s start window | {polled} others polled | p50 {} ms, p99 {} ms, max {} ms |",
            match storm {
                Storm::Calm => "",
                Storm::One => ", tenant t0 in a 429/503 storm",
                Storm::Thousand => ", t0..t999 in 429 Retry-After 3600 waits",
            },
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or(0)
        );
    }
}

async fn e2e() {
    e2e_with(1_000, 100, None, false).await;
    e2e_with(100, 1_000, None, false).await;
    // The same into NATS JetStream (a local `nats-server -js`, when installed), as a single
    // node and as one replica in cluster mode (state replicated to the same server).
    // A fresh server each, so the second run's events are not dropped as duplicates.
    for cluster in [false, true] {
        match start_nats() {
            None => {
                println!("| end to end into NATS | skipped: nats-server is not installed | | |")
            }
            Some(nats) => e2e_with(100, 1_000, Some(nats.url.clone()), cluster).await,
        }
    }
}

/// A fleet of `n` tenants on `sim` with a file sink (in the returned directory), started with
/// `connector` settings and waited on until every tenant finished its first sweep.
async fn swept_fleet(sim: &Sim, n: usize, connector: &str) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = fleet_config(
        &sim.base,
        n,
        connector,
        &format!(
            "[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
            dir.path().join("events.jsonl").display()
        ),
    );
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    while !app.health.all().iter().all(|h| h.polls >= 1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (app, dir)
}

/// Polls of quiet tenants after their first sweep: requests and CPU per incremental poll.
async fn quiet() {
    const N: usize = 100;
    let sim = start_sim(N, 200);
    let (app, _dir) = swept_fleet(&sim, N, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"").await;
    let polled = |n: u64| app.health.all().iter().all(|h| h.polls >= n);
    let requests_before = sim_requests(&sim.base, N).await;
    let cpu0 = cpu_seconds();
    const ROUNDS: u64 = 10;
    for round in 2..=ROUNDS + 1 {
        for t in 0..N {
            app.poll_now(&format!("t{t}")).await;
        }
        while !polled(round) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let cpu = cpu_seconds() - cpu0;
    let requests = sim_requests(&sim.base, N).await - requests_before;
    let polls = N as u64 * ROUNDS;
    println!(
        "| quiet incremental poll | {N} tenants × 200 issues, nothing changed, {polls} polls | {:.2} requests per poll | {:.0} µs CPU per poll (connector) |",
        requests as f64 / polls as f64,
        cpu / polls as f64 * 1e6
    );
    app.shutdown().await.unwrap();
}

/// Full sweeps (resyncs) of 100 tenants × 1,000 issues: one round with nothing vanished, one
/// after 1% of each tenant's open issues were removed in Wiz. With `not_found`, the simulator
/// answers a lookup of a missing id with NOT_FOUND (the expensive case: the connector halves the
/// batch); otherwise it leaves the id out.
async fn reconcile(not_found: bool) {
    const N: usize = 100;
    const ISSUES: usize = 1000;
    let sim = start_sim_with(
        N,
        ISSUES,
        if not_found {
            &[]
        } else {
            &["--omit-unknown-ids"]
        },
    );
    let answer = if not_found {
        "NOT_FOUND"
    } else {
        "ids left out"
    };
    let (app, _dir) = swept_fleet(
        &sim,
        N,
        "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64",
    )
    .await;
    let polled = |n: u64| app.health.all().iter().all(|h| h.polls >= n);
    let http = reqwest::Client::new();
    for (round, vanish) in [(2u64, 0usize), (3, 7)] {
        let mut removed = 0;
        for t in 0..N {
            if vanish > 0 {
                let ids: Vec<String> = http
                    .post(format!(
                        "{}/_sim/tenants/sim-client-{t:04}/remove?count={vanish}",
                        sim.base
                    ))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .map(|b| serde_json::from_slice(&b).unwrap())
                    .unwrap();
                removed += ids.len();
            }
        }
        let events0 = app
            .sink_stats
            .events
            .load(std::sync::atomic::Ordering::Relaxed);
        let requests0 = sim_requests(&sim.base, N).await;
        let cpu0 = cpu_seconds();
        let started = Instant::now();
        for t in 0..N {
            app.resync(&format!("t{t}")).await;
        }
        while !polled(round) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let requests = sim_requests(&sim.base, N).await - requests0;
        let events = app
            .sink_stats
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
            - events0;
        println!(
            "| full sweep | {N} tenants × {ISSUES} issues, {removed} vanished, unknown id: {answer} | {:.1} s, {events} events | {:.2} requests and {:.1} ms CPU per tenant |",
            wall,
            requests as f64 / N as f64,
            cpu / N as f64 * 1e3
        );
    }
    app.shutdown().await.unwrap();
}

/// GraphQL requests the simulator has seen from clients 0..n.
async fn sim_requests(base: &str, n: usize) -> u64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let v = get_json(&reqwest::Client::new(), &format!("{base}/_sim/tenants")).await;
    v.as_array()
        .unwrap()
        .iter()
        .take(n)
        .map(|t| t["counters"]["graphql_requests"].as_u64().unwrap())
        .sum()
}

/// End to end into a file sink, or into NATS JetStream when `nats` is a server URL; with
/// `cluster`, as the only replica of a cluster on that server (state in JetStream).
async fn e2e_with(tenants: usize, issues: usize, nats: Option<String>, cluster: bool) {
    e2e_in(tenants, issues, nats, cluster, "native").await
}

/// Issue 22's row: end to end into the Splunk HEC simulator (run by `simulate --hec` in the
/// simulator's process, so its parsing is not counted), with and without indexer
/// acknowledgement, next to a file sink.
async fn hec() {
    const TENANTS: usize = 100;
    const ISSUES: usize = 1_000;
    for ack in [false, true] {
        let expected = open_issues(TENANTS, ISSUES);
        let hec_port = free_port();
        let hec_addr = format!("127.0.0.1:{hec_port}");
        let mut extra = vec!["--hec", hec_addr.as_str()];
        if ack {
            extra.push("--hec-ack");
        }
        let sim = start_sim_with(TENANTS, ISSUES, &extra);
        wait_for_port(hec_port, "hec simulator");
        let settings = fleet_config(
            &sim.base,
            TENANTS,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64",
            &format!(
                "[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"http://{hec_addr}\"\ntoken = \"00000000-0000-4000-8000-000000000001\"\nack = {ack}\n"
            ),
        );
        let (app, wall, cpu) = run_until_delivered(settings, expected).await;
        println!(
            "| end to end into Splunk HEC{} | {TENANTS} tenants, {expected} events, gzip, 1 MiB requests | {:.1} s | {:.0} events/s, {:.2} CPU s per 10,000 events |",
            if ack { ", indexer acknowledgement" } else { "" },
            wall,
            expected as f64 / wall,
            cpu / expected as f64 * 10_000.0
        );
        app.shutdown().await.unwrap();
    }
}

/// Issue 22's rows for Elasticsearch and Sentinel: end to end into their simulators (run by
/// `simulate --elastic` / `--sentinel` in the simulator's process), as `hec` does.
async fn siems() {
    const TENANTS: usize = 100;
    const ISSUES: usize = 1_000;
    use wiz_connector::sim::sentinel::{CLIENT_ID, CLIENT_SECRET, DCR_ID, TENANT_ID};
    let es_key = wiz_connector::sim::elastic::ElasticOptions::default().api_keys[0].clone();
    for (flag, label, format) in [
        ("--elastic", "Elasticsearch bulk, native", "native"),
        ("--elastic", "Elasticsearch bulk, ECS", "ecs"),
        ("--sentinel", "Sentinel Logs Ingestion, OCSF", "ocsf"),
    ] {
        let expected = open_issues(TENANTS, ISSUES);
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let sim = start_sim_with(TENANTS, ISSUES, &[flag, addr.as_str()]);
        wait_for_port(port, "siem simulator");
        let sink = if flag == "--elastic" {
            format!("[sinks.siem]\ntype = \"elasticsearch\"\nurl = \"http://{addr}\"\napi_key = \"{es_key}\"\nformat = \"{format}\"\n")
        } else {
            format!("[sinks.siem]\ntype = \"sentinel\"\ntenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nauthority = \"http://{addr}\"\nendpoint = \"http://{addr}\"\ndcr_id = \"{DCR_ID}\"\nstream = \"Custom-WizIssues_CL\"\nformat = \"{format}\"\n")
        };
        let settings = fleet_config(
            &sim.base,
            TENANTS,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64",
            &sink,
        );
        let (app, wall, cpu) = run_until_delivered(settings, expected).await;
        println!(
            "| end to end into {label} | {TENANTS} tenants, {expected} events, gzip, default request size | {:.1} s | {:.0} events/s, {:.2} CPU s per 10,000 events |",
            wall,
            expected as f64 / wall,
            cpu / expected as f64 * 10_000.0
        );
        app.shutdown().await.unwrap();
    }
}

/// Issue 22's Kafka row: end to end into a real Kafka-protocol broker (tansu with its SQLite
/// store, in its own process; `scripts/deps` installs it), 6 partitions. Skipped with a note
/// when tansu is not on the PATH or in cargo's bin directory.
async fn kafka() {
    const TENANTS: usize = 100;
    const ISSUES: usize = 1_000;
    let tansu = std::env::var("WIZ_TANSU").ok().or_else(|| {
        let home = std::env::var("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|_| std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
            .ok()?;
        let installed = home.join("bin/tansu");
        let on_path = std::process::Command::new("sh")
            .args(["-c", "command -v tansu"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        on_path.or_else(|| installed.exists().then(|| installed.display().to_string()))
    });
    let Some(tansu) = tansu else {
        println!("| end to end into Kafka | skipped: tansu is not installed (scripts/deps) | | |");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut broker = std::process::Command::new(&tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "tansu");
    let created = std::process::Command::new(&tansu)
        .args([
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            "6",
            "wiz.issues",
        ])
        .output()
        .unwrap();
    assert!(created.status.success());
    let expected = open_issues(TENANTS, ISSUES);
    let sim = start_sim(TENANTS, ISSUES);
    let settings = fleet_config(
        &sim.base,
        TENANTS,
        "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64",
        &format!("[sinks.siem]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\n"),
    );
    let (app, wall, cpu) = run_until_delivered(settings, expected).await;
    println!(
        "| end to end into Kafka (tansu, SQLite store) | {TENANTS} tenants, {expected} events, idempotent producer, lz4, 6 partitions | {:.1} s | {:.0} events/s, {:.2} CPU s per 10,000 events |",
        wall,
        expected as f64 / wall,
        cpu / expected as f64 * 10_000.0
    );
    app.shutdown().await.unwrap();
    let _ = broker.kill();
    let _ = broker.wait();
}

/// Issue 21's row: end to end into a file sink in each output format.
async fn formats() {
    for format in ["native", "ocsf", "ecs"] {
        e2e_in(100, 1_000, None, false, format).await;
    }
}

/// [`e2e_with`], the file sink writing `format`.
async fn e2e_in(tenants: usize, issues: usize, nats: Option<String>, cluster: bool, format: &str) {
    let expected = open_issues(tenants, issues);
    let sim = start_sim(tenants, issues);
    let dir = tempfile::tempdir().unwrap();
    let settings = fleet_config(
        &sim.base,
        tenants,
        "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64",
        &match &nats {
            None => format!(
                "[sinks.archive]\ntype = \"file\"\npath = \"{}\"\nformat = \"{format}\"\n",
                dir.path().join("events.jsonl").display()
            ),
            Some(url) if cluster => format!(
                "[sinks.bus]\ntype = \"nats\"\nurl = \"{url}\"\n[cluster]\nnats_url = \"{url}\"\nreplica_id = \"bench\"\nheartbeat = \"200ms\"\nfailover_after = \"1s\"\nstart_settle = \"0s\"\n"
            ),
            Some(url) => format!("[sinks.bus]\ntype = \"nats\"\nurl = \"{url}\"\n"),
        },
    );
    let (app, wall, cpu) = run_until_delivered(settings, expected).await;
    let target = match &nats {
        None => {
            // Every file of the sink: it rotates past `max_bytes` (100 MiB by default).
            let bytes: u64 = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            format!(
                "({:.0} MB) into a file sink, format `{format}`",
                bytes as f64 / 1e6
            )
        }
        Some(_) if cluster => {
            "into NATS JetStream, cluster mode (state in JetStream too)".to_string()
        }
        Some(_) => "into NATS JetStream (one message each, acked)".to_string(),
    };
    println!(
        "| end to end | {tenants} tenants, {expected} events {target} | {:.1} s | {:.0} events/s, {:.2} CPU s per 10,000 events |",
        wall,
        expected as f64 / wall,
        cpu / expected as f64 * 10_000.0
    );
    app.shutdown().await.unwrap();
}

/// The open issues of `tenants` simulated tenants of `issues` each: the events of their first
/// sweeps.
fn open_issues(tenants: usize, issues: usize) -> u64 {
    (0..tenants)
        .map(|n| {
            let spec = SimTenantSpec::numbered(n, SEED, issues);
            IssueSet::generate(spec.seed, issues)
                .ids_with_status("OPEN")
                .len() as u64
        })
        .sum()
}

/// Issue 20's routed fleet: 1,000 tenants × 100 issues, each routed to one of 100 private file
/// sinks (`tenants.<id>.sinks`), next to the same fleet into one file; and the resolved routes'
/// memory at 100,000 tenants.
async fn routed() {
    const TENANTS: usize = 1_000;
    const ISSUES: usize = 100;
    const SINKS: usize = 100;
    e2e_with(TENANTS, ISSUES, None, false).await;
    let expected = open_issues(TENANTS, ISSUES);
    let sim = start_sim(TENANTS, ISSUES);
    let dir = tempfile::tempdir().unwrap();
    let text = routed_config(&sim.base, TENANTS, SINKS, dir.path());
    let settings = load_str("bench", &text, &EnvSource::Fixed(HashMap::new())).unwrap();
    let (app, wall, cpu) = run_until_delivered(settings, expected).await;
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    println!(
        "| end to end, routed | {TENANTS} tenants, {expected} events, each tenant routed to one of {SINKS} private file sinks ({files} files) | {:.1} s | {:.0} events/s, {:.2} CPU s per 10,000 events |",
        wall,
        expected as f64 / wall,
        cpu / expected as f64 * 10_000.0
    );
    app.shutdown().await.unwrap();

    // The resolved routes at 100,000 tenants: the live heap of the settings with routes (each
    // tenant's `sinks`, a label, 100 sinks) less that of the same tenants and labels without.
    const FLEET: usize = 100_000;
    let plain = routed_config("http://127.0.0.1:9", FLEET, 0, dir.path());
    let with_routes = routed_config("http://127.0.0.1:9", FLEET, SINKS, dir.path());
    let a = held_bytes(|| load_str("bench", &plain, &EnvSource::Fixed(HashMap::new())).unwrap());
    let b =
        held_bytes(|| load_str("bench", &with_routes, &EnvSource::Fixed(HashMap::new())).unwrap());
    let routing = held_bytes(|| {
        let s = load_str("bench", &with_routes, &EnvSource::Fixed(HashMap::new())).unwrap();
        s.routing.clone()
    });
    println!(
        "| resolved routes | {FLEET} tenants, each routed to one of {SINKS} sinks, one label each | settings {:.1} MB without routes, {:.1} MB with | the routing table alone {:.1} MB, {:.0} bytes per tenant |",
        a as f64 / 1e6,
        b as f64 / 1e6,
        routing as f64 / 1e6,
        routing as f64 / FLEET as f64
    );
}

/// Counts the bytes allocated and not yet freed, for [`held_bytes`].
struct Counting;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The heap bytes that what `make` returns holds. Loading a configuration frees its parsed
/// tree on another thread, so the count is read once it has settled.
fn held_bytes<T>(make: impl FnOnce() -> T) -> i64 {
    let settled = || loop {
        let a = LIVE.load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        if LIVE.load(std::sync::atomic::Ordering::Relaxed) == a {
            return a;
        }
    };
    let before = settled();
    let value = make();
    let held = settled() - before;
    drop(value);
    held
}

/// `tenants` tenants labelled with their customer (`c<n % 100>`); with `sinks` > 0, that many
/// file sinks in `dir` and each tenant's `sinks` naming its customer's.
fn routed_config(base: &str, tenants: usize, sinks: usize, dir: &std::path::Path) -> String {
    let state = tempfile::tempdir().unwrap().keep();
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        state.display()
    );
    if sinks == 0 {
        text.push_str(&format!(
            "[sinks.all]\ntype = \"file\"\npath = \"{}/all.jsonl\"\n",
            dir.display()
        ));
    }
    for k in 0..sinks {
        text.push_str(&format!(
            "[sinks.cust{k}]\ntype = \"file\"\npath = \"{}/cust{k}.jsonl\"\n",
            dir.display()
        ));
    }
    for n in 0..tenants {
        let t = SimTenantSpec::numbered(n, SEED, 0);
        let k = n % 100;
        let route = if sinks > 0 {
            format!("sinks = [\"cust{}\"]\n", n % sinks)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[tenants.t{n}]\nclient_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{base}/graphql\"\nauth_url = \"{base}/oauth/token\"\nallow_insecure_endpoints = true\nlabels = {{ customer = \"c{k}\" }}\n{route}",
            t.client_id, t.client_secret
        ));
    }
    text
}

/// From `exec` of `wiz-connector run` to `/readyz` answering 200, for a configuration of
/// `WIZ_BENCH_STARTUP_TENANTS` (100,000) tenants pointing at a closed port with the default
/// `startup_jitter`, `WIZ_BENCH_RUNS` (5) times; `WIZ_BENCH_BUSY=N` keeps N threads spinning
/// meanwhile (a busy machine). Then SIGTERM, and the time to exit.
fn startup() {
    let n = env_usize("WIZ_BENCH_STARTUP_TENANTS", 100_000);
    let runs = env_usize("WIZ_BENCH_RUNS", 5);
    let busy = env_usize("WIZ_BENCH_BUSY", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n[sinks.null]\ntype = \"file\"\npath = \"/dev/null\"\n",
        dir.path().join("state").display()
    );
    for i in 0..n {
        text.push_str(&format!(
            "[tenants.t{i:06}]\nclient_id = \"client-{i:06}-abcdefghijklmnop\"\nclient_secret = \"secret-{i:06}-0123456789abcdef0123456789abcdef\"\napi_url = \"http://127.0.0.1:9/graphql\"\nauth_url = \"http://127.0.0.1:9/oauth/token\"\nallow_insecure_endpoints = true\n"
        ));
    }
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, &text).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..busy)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let mut ready = Vec::new();
    let mut exits = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        let start = Instant::now();
        let mut child = std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if readyz(port) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        ready.push(start.elapsed().as_secs_f64());
        let t = Instant::now();
        // SAFETY: a plain signal to the child this loop started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap();
        exits.push(t.elapsed().as_secs_f64());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let max = ready.iter().cloned().fold(0.0, f64::max);
    println!(
        "| startup | {n} tenants, {} MB config, {busy} busy threads | ready max {max:.2} s | ready (s): {}; SIGTERM to exit (s): {} |",
        text.len() / 1_000_000,
        list(&ready),
        list(&exits)
    );
}

/// `GET /readyz` answered 200.
fn readyz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

fn main() {
    let Some(args) = bench_args() else {
        return;
    };
    let all = args.is_empty();
    let rt = runtime();
    rt.block_on(async {
        println!("| scenario | setup | result | numbers |\n|---|---|---|---|");
        if all || args.iter().any(|a| a == "idle") {
            idle().await;
        }
        if all || args.iter().any(|a| a == "e2e") {
            e2e().await;
        }
        if all || args.iter().any(|a| a == "hec") {
            hec().await;
        }
        if all || args.iter().any(|a| a == "siem") {
            siems().await;
        }
        if all || args.iter().any(|a| a == "kafka") {
            kafka().await;
        }
        if all || args.iter().any(|a| a == "formats") {
            formats().await;
        }
        if all || args.iter().any(|a| a == "routed") {
            routed().await;
        }
        if all || args.iter().any(|a| a == "quiet") {
            quiet().await;
        }
        if all || args.iter().any(|a| a == "lag") {
            lag().await;
        }
        if all || args.iter().any(|a| a == "reconcile") {
            reconcile(false).await;
            reconcile(true).await;
        }
    });
    if all || args.iter().any(|a| a == "startup") {
        startup();
    }
}
