//! The feeds beyond Issues at scale (a bench binary: each scenario runs once). The simulator runs
//! as a separate process (`wiz-connector simulate`) so its CPU and memory are not the connector's.
//!
//! `cargo bench --bench feed_fleet [-- e2e|million|cache]` (all by default; `million` takes about
//! fourteen minutes, most of it at the default rate limit). Under `cargo test` it runs nothing.
//!
//! - `e2e`: 100 tenants with all five feeds, from nothing to every event in a file sink.
//! - `million`: one tenant with 1,000,000 vulnerability findings: the first sweep at the default
//!   rate limit (wall time, peak RSS of the connector process), then the same sweep killed with
//!   SIGKILL halfway at a faster rate and restarted: pages fetched again and events repeated.
//! - `cache`: the same first sweep as fast as the simulator answers, with the state store's page
//!   cache at 256 and 32 MiB: peak RSS of the connector process.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wiz_connector::config::{load_str, EnvSource};
use wiz_connector::sim::feed_data::FeedSets;
use wiz_connector::sim::{IssueSet, SimTenantSpec};

#[path = "support/mod.rs"]
mod support;
use support::*;

const ALL: &str =
    "feeds = [\"issues\", \"vulnerabilities\", \"detections\", \"audit\", \"cloud_configuration\"]";

fn tenant_tables(base: &str, tenants: usize, extra: &str) -> String {
    let mut text = String::new();
    for n in 0..tenants {
        let t = SimTenantSpec::numbered(n, SEED, 0);
        text.push_str(&format!(
            "[tenants.t{n}]\nclient_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{base}/graphql\"\nauth_url = \"{base}/oauth/token\"\nallow_insecure_endpoints = true\n{extra}\n",
            t.client_id, t.client_secret
        ));
    }
    text
}

async fn e2e() {
    const TENANTS: usize = 100;
    const ISSUES: usize = 100;
    let expected: u64 = (0..TENANTS)
        .map(|n| {
            let spec = SimTenantSpec::numbered(n, SEED, ISSUES);
            let f = FeedSets::generate(spec.seed, ISSUES);
            (IssueSet::generate(spec.seed, ISSUES)
                .ids_with_status("OPEN")
                .len()
                + f.vulnerabilities.len()
                + f.detections.len()
                + f.audit.len()
                + f.configuration.len()) as u64
        })
        .sum();
    let sim = start_sim(TENANTS, ISSUES);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64\n{ALL}\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n{}",
        dir.path().join("state").display(),
        dir.path().join("events.jsonl").display(),
        tenant_tables(&sim.base, TENANTS, "")
    );
    let settings = load_str("bench", &text, &EnvSource::Fixed(HashMap::new())).unwrap();
    let (app, wall, cpu) = run_until_delivered(settings, expected).await;
    let bytes = std::fs::metadata(dir.path().join("events.jsonl"))
        .unwrap()
        .len();
    println!(
        "| end to end, all five feeds | {TENANTS} tenants (each {ISSUES} issues, {} detections, {} vulnerability findings, {ISSUES} audit entries, {ISSUES} configuration findings), {expected} events ({:.0} MB) into a file sink, `rate_limit` 3 | {wall:.1} s | {:.0} events/s, {:.2} CPU s per 10,000 events |",
        ISSUES / 2,
        ISSUES * 2,
        bytes as f64 / 1e6,
        expected as f64 / wall,
        cpu / expected as f64 * 10_000.0
    );
    app.shutdown().await.unwrap();
}

/// Peak RSS (VmHWM) of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Lines in `path` (events delivered so far).
fn lines(path: &std::path::Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

async fn feed_queries(base: &str) -> u64 {
    let v = get_json(&reqwest::Client::new(), &format!("{base}/_sim/tenants")).await;
    v[0]["counters"]["feed_queries"]["vulnerabilities"]
        .as_u64()
        .unwrap_or(0)
}

/// One run of `wiz-connector run` sweeping the million findings: returns (wall time, peak RSS
/// KiB, events) when it completes, or stops it with SIGKILL once `kill_after` events are in.
async fn million_run(
    base: &str,
    dir: &std::path::Path,
    rate: u32,
    cache_mib: u64,
    kill_after: Option<u64>,
    target: u64,
) -> (f64, u64, u64) {
    let out = dir.join("events.jsonl");
    let cfg = dir.join("wiz-connector.toml");
    std::fs::write(
        &cfg,
        format!(
            "[connector]\nstate_dir = \"{}\"\npoll_interval = \"24h\"\nstartup_jitter = \"0s\"\nfeeds = [\"vulnerabilities\"]\nrate_limit = {rate}\nstate_cache_mib = {cache_mib}\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.archive]\ntype = \"file\"\npath = \"{}\"\nmax_bytes = 100000000000\n{}",
            dir.join("state").display(),
            out.display(),
            tenant_tables(base, 1, "")
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let mut peak = 0;
    // (when the target was reached, lines then), then 2 s without a new line: the window is done.
    let mut reached: Option<(f64, u64, Instant)> = None;
    let (wall, n) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(peak_rss_kib(pid));
        let n = lines(&out);
        if kill_after.is_some_and(|k| n >= k) {
            break (started.elapsed().as_secs_f64(), n);
        }
        match reached {
            None if n >= target => {
                reached = Some((started.elapsed().as_secs_f64(), n, Instant::now()))
            }
            Some((_, m, _)) if m != n => {
                reached = reached.map(|(w, _, _)| (w, n, Instant::now()));
            }
            Some((w, m, since)) if since.elapsed() >= Duration::from_secs(2) => break (w, m),
            _ => {}
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    (wall, peak, n)
}

async fn million() {
    const N: usize = 1_000_000;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = start_sim_with(1, 10, &["--vulnerabilities", &N.to_string()]);
    // The default rate limit (3 requests per second): 2,000 pages of 500.
    let dir = tempfile::tempdir().unwrap();
    let (wall, peak, n) = million_run(&sim.base, dir.path(), 3, 256, None, N as u64).await;
    println!(
        "| first sweep, 1,000,000 vulnerability findings | one tenant, `page_size` 500, `rate_limit` 3 (default), file sink | {wall:.0} s ({n} events) | peak RSS {:.1} MiB (connector process) |",
        peak as f64 / 1024.0
    );
    drop(sim);
    // Killed halfway (at 20 requests per second, to keep the run short), then restarted.
    let sim = start_sim_with(1, 10, &["--vulnerabilities", &N.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let (_, _, at_kill) =
        million_run(&sim.base, dir.path(), 20, 256, Some(N as u64 / 2), N as u64).await;
    let queries_at_kill = feed_queries(&sim.base).await;
    let restarted = Instant::now();
    let (wall2, _, total) = million_run(&sim.base, dir.path(), 20, 256, None, N as u64).await;
    let queries = feed_queries(&sim.base).await;
    println!(
        "| resumption after kill -9 | the same sweep at `rate_limit` 20, SIGKILL after {at_kill} events, then `run` again | finished {wall2:.0} s after the restart ({:.0} s) | {} queries in all for 2,000 pages ({} after the restart), {} events for 1,000,000 findings ({} repeated) |",
        restarted.elapsed().as_secs_f64(),
        queries,
        queries - queries_at_kill,
        total,
        total.saturating_sub(N as u64)
    );
}

/// The same first sweep at the fastest rate, with the state store's cache at 256 MiB (the default)
/// and at 32 MiB: what bounds the connector's memory.
async fn cache() {
    const N: usize = 1_000_000;
    let _ = rustls::crypto::ring::default_provider().install_default();
    for mib in [256, 32] {
        let sim = start_sim_with(1, 10, &["--vulnerabilities", &N.to_string()]);
        let dir = tempfile::tempdir().unwrap();
        let (wall, peak, n) = million_run(&sim.base, dir.path(), 100, mib, None, N as u64).await;
        let db = std::fs::metadata(dir.path().join("state/state.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "| first sweep, 1,000,000 vulnerability findings, `state_cache_mib` {mib} | `rate_limit` 100 (the simulator is the limit) | {wall:.0} s ({n} events), store {:.0} MB | peak RSS {:.1} MiB (connector process) |",
            db as f64 / 1e6,
            peak as f64 / 1024.0
        );
    }
}

fn main() {
    let Some(args) = bench_args() else {
        return;
    };
    let all = args.is_empty();
    let rt = runtime();
    rt.block_on(async {
        println!("| scenario | setup | result | numbers |\n|---|---|---|---|");
        if all || args.iter().any(|a| a == "e2e") {
            e2e().await;
        }
        if all || args.iter().any(|a| a == "million") {
            million().await;
        }
        if all || args.iter().any(|a| a == "cache") {
            cache().await;
        }
    });
}
