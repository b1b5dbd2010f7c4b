//! Freshness benchmarks (a bench binary: each scenario runs once). The simulator runs as a child
//! process (`wiz-connector simulate`).
//!
//! - `requests`: GraphQL requests per poll for quiet tenants whose watched issues fill 1, 10, 20
//!   and 40 pages, with `full_sweep_max_pages` at its default (20), against a Wiz that refuses
//!   `filterBy.updatedAt` and one that takes it.
//! - `hints`: the connector as a child process (`wiz-connector run`) with `[hooks]`: the time from
//!   a hint's POST to its `issue.updated` event in the file sink, for a burst of 1,000 hints over 10
//!   tenants; and the connector's CPU per hint (receive, queue, look up, compare) for a hint of
//!   every open, unchanged issue.
//!
//! `cargo bench --bench freshness [-- requests|hints]` (both by default). Under `cargo test` it
//! runs nothing.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Seek};
use std::time::{Duration, Instant};

use wiz_connector::app::{App, AppOptions};
use wiz_connector::config::{load_str, EnvSource};
use wiz_connector::sim::{IssueSet, SimTenantSpec};

#[path = "support/mod.rs"]
mod support;
use support::*;

const TOKEN: &str = "bench-hook-token-0123456789";

fn open_ids(n: usize, issues: usize) -> Vec<String> {
    let spec = SimTenantSpec::numbered(n, SEED, issues);
    IssueSet::generate(spec.seed, issues).ids_with_status("OPEN")
}

fn tenant_table(base: &str, n: usize, extra: &str) -> String {
    let t = SimTenantSpec::numbered(n, SEED, 0);
    format!(
        "[tenants.t{n}]\nclient_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{base}/graphql\"\nauth_url = \"{base}/oauth/token\"\nallow_insecure_endpoints = true\n{extra}\n",
        t.client_id, t.client_secret
    )
}

/// Requests per poll of quiet tenants of 1, 10, 20 and 40 pages.
async fn requests(accept_updated_at: bool) {
    const ISSUES: usize = 400;
    const PAGES: [usize; 4] = [1, 10, 20, 40];
    let sim = start_sim_with(
        PAGES.len(),
        ISSUES,
        if accept_updated_at {
            &["--accept-updated-at-filter"]
        } else {
            &[]
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        dir.path().join("state").display(),
        dir.path().join("events.jsonl").display()
    );
    for (n, pages) in PAGES.iter().enumerate() {
        let open = open_ids(n, ISSUES).len();
        let page_size = open.div_ceil(*pages);
        text.push_str(&tenant_table(
            &sim.base,
            n,
            &format!("page_size = {page_size}\nrate_limit = 50"),
        ));
    }
    let settings = load_str("bench", &text, &EnvSource::Fixed(HashMap::new())).unwrap();
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    let polled = |round: u64| app.health.all().iter().all(|h| h.polls >= round);
    while !polled(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    const ROUNDS: u64 = 5;
    let mut per_round: Vec<Vec<u64>> = vec![Vec::new(); PAGES.len()];
    for round in 2..=ROUNDS + 1 {
        for n in 0..PAGES.len() {
            app.poll_now(&format!("t{n}")).await;
        }
        while !polled(round) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (n, rounds) in per_round.iter_mut().enumerate() {
            let h = app.health.get(&format!("t{n}")).unwrap();
            rounds.push(h.last_poll_requests.unwrap_or(0));
        }
    }
    for (n, pages) in PAGES.iter().enumerate() {
        let h = app.health.get(&format!("t{n}")).unwrap();
        println!(
            "| requests per quiet poll, Wiz {} `updatedAt` | {pages} page(s) of watched issues | {} | polls 2-{}: {:?} requests |",
            if accept_updated_at { "takes" } else { "refuses" },
            h.last_poll_mode.unwrap_or("-"),
            ROUNDS + 1,
            per_round[n]
        );
    }
    app.shutdown().await.unwrap();
}

/// The tenants' health, summed: (polls of the slowest tenant, hints looked up).
async fn fleet(http: &reqwest::Client, admin: &str) -> (u64, u64) {
    let v = get_json(http, &format!("http://{admin}/tenants")).await;
    let Some(list) = v.as_array() else {
        return (0, 0);
    };
    let polls = list
        .iter()
        .map(|t| t["polls"].as_u64().unwrap_or(0))
        .min()
        .unwrap_or(0);
    let looked = list
        .iter()
        .map(|t| t["hints_looked_up"].as_u64().unwrap_or(0))
        .sum();
    (polls, looked)
}

async fn hint(http: &reqwest::Client, hooks: &str, tenant: &str, id: &str) {
    let r = http
        .post(format!("http://{hooks}/hooks/wiz/{tenant}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(format!(r#"{{"issue": {{"id": "{id}"}}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

async fn hints() {
    const TENANTS: usize = 10;
    const ISSUES: usize = 1000;
    const BURST: usize = 100;
    let sim = start_sim(TENANTS, ISSUES);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let (admin, hooks) = (free_port(), free_port());
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[hooks]\nlisten = \"127.0.0.1:{hooks}\"\nqueue_limit = 10000\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        dir.path().join("state").display(),
        out.display()
    );
    for n in 0..TENANTS {
        text.push_str(&tenant_table(
            &sim.base,
            n,
            &format!("webhook_token = \"{TOKEN}\""),
        ));
    }
    let cfg = dir.path().join("wiz-connector.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(hooks, "webhook receiver");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let admin = format!("127.0.0.1:{admin}");
    let hooks = format!("127.0.0.1:{hooks}");
    while fleet(&http, &admin).await.0 < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Latency: 100 escalated issues per tenant, all hinted at once.
    let mut file = std::fs::File::open(&out).unwrap();
    file.seek(std::io::SeekFrom::End(0)).unwrap();
    let mut reader = std::io::BufReader::new(file);
    let mut changed: Vec<(String, String)> = Vec::new();
    for n in 0..TENANTS {
        let client = SimTenantSpec::numbered(n, SEED, 0).client_id;
        let ids: Vec<String> = http
            .post(format!(
                "{}/_sim/tenants/{client}/escalate?count={BURST}",
                sim.base
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        changed.extend(ids.into_iter().map(|id| (format!("t{n}"), id)));
    }
    let sent = Instant::now();
    futures_util::future::join_all(changed.iter().map(|(t, id)| hint(&http, &hooks, t, id))).await;
    let posted = sent.elapsed();
    let mut pending: HashSet<(String, String)> = changed.iter().cloned().collect();
    let mut latencies = Vec::new();
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 || !line.ends_with('\n') {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let key = (
            v["tenant"].as_str().unwrap_or("").to_string(),
            v["issue_id"].as_str().unwrap_or("").to_string(),
        );
        if v["kind"] == "issue.updated" && pending.remove(&key) {
            latencies.push(sent.elapsed().as_millis() as u64);
        }
    }
    latencies.sort_unstable();
    println!(
        "| hint to event | {TENANTS} tenants × {BURST} changed issues, {} hints POSTed at once (all answered in {} ms), rate_limit 3 | {} of {} delivered | p50 {} ms, p99 {} ms, max {} ms |",
        changed.len(),
        posted.as_millis(),
        latencies.len(),
        changed.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    // CPU per hint: a hint for every open (unchanged) issue of every tenant, each once.
    let (_, looked0) = fleet(&http, &admin).await;
    let cpu0 = cpu_of(child.id());
    let mut unchanged = Vec::new();
    for n in 0..TENANTS {
        let open = open_ids(n, ISSUES);
        unchanged.extend(open.into_iter().map(|id| (format!("t{n}"), id)));
    }
    let distinct: HashSet<&(String, String)> = unchanged.iter().collect();
    let started = Instant::now();
    for chunk in unchanged.chunks(500) {
        futures_util::future::join_all(chunk.iter().map(|(t, id)| hint(&http, &hooks, t, id)))
            .await;
    }
    while fleet(&http, &admin).await.1 < looked0 + distinct.len() as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_of(child.id()) - cpu0;
    println!(
        "| CPU per hint | {} hints ({} distinct ids) of unchanged issues over {TENANTS} tenants, rate_limit 3 | looked up in {:.1} s | {:.0} µs CPU per hint (connector process: receive, queue, lookup, compare) |",
        unchanged.len(),
        distinct.len(),
        started.elapsed().as_secs_f64(),
        cpu / unchanged.len() as f64 * 1e6
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let Some(args) = bench_args() else {
        return;
    };
    let all = args.is_empty();
    let rt = runtime();
    rt.block_on(async {
        println!("| scenario | setup | result | numbers |\n|---|---|---|---|");
        if all || args.iter().any(|a| a == "requests") {
            requests(false).await;
            requests(true).await;
        }
        if all || args.iter().any(|a| a == "hints") {
            hints().await;
        }
    });
}
