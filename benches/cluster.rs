//! Cluster-mode benchmarks (a bench binary; each scenario runs once). Replicas run as separate
//! `wiz-connector run` processes against a local `nats-server -js` and the simulator.
//!
//! `cargo bench --bench cluster [-- placement|failover|state|commit|rollup|scale]` (all but
//! `scale` by default). Needs nats-server (Debian's package). Under `cargo test` it runs nothing.
//!
//! `scale` runs `WIZ_BENCH_SCALE_TENANTS` (default 100,000) idle tenants on
//! `WIZ_BENCH_SCALE_REPLICAS` (default 10) replicas: placement, kill -9, a join and a SIGTERM,
//! with the replicas' memory and the bytes in NATS. `WIZ_BENCH_LOGS=<dir>` keeps each replica's
//! log there; `WIZ_BENCH_HEAP=1` (needs gdb) trims each survivor's heap after the failover and
//! prints glibc's allocator statistics into its log. The kill -9 phase prints the cores each
//! process used (nats-server, the simulator, the survivors, this harness), over the whole
//! failover and per 2-second window; `WIZ_BENCH_PERF=<file>` also records the whole box's CPU
//! profile over its first 25 s (`perf record -a`; needs Debian's linux-perf).
//! `WIZ_BENCH_REPLICA_THREADS=<n>` gives each replica n runtime worker threads.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wiz_connector::change::Known;
use wiz_connector::config::{ClusterSettings, DurationValue};
use wiz_connector::sim::SimTenantSpec;
use wiz_connector::state::{Commit, StateStore, Write};

#[path = "support/mod.rs"]
mod support;
use support::*;

struct Replica {
    id: String,
    child: Child,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica process over `tenants` simulated tenants with a file sink.
fn replica(id: &str, sim: &Sim, nats: &str, tenants: usize, cluster: &str) -> Replica {
    prepare(id, sim, nats, tenants, cluster, "0s").launch()
}

/// A replica's directory and configuration file (with `jitter` as its `startup_jitter`), written,
/// not yet started: a fleet's replicas are
/// launched together once every file is written (writing 300,000 tenants' configuration takes
/// seconds, and replicas launched one by one as their files are written came up 7 to 20 s apart,
/// past `start_settle`, so the first ones placed the fleet on a few members).
struct Prepared {
    id: String,
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    admin: String,
}

fn prepare(
    id: &str,
    sim: &Sim,
    nats: &str,
    tenants: usize,
    cluster: &str,
    jitter: &str,
) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"{jitter}\"\nmax_concurrent_sweeps = 64\n\
         [admin]\nlisten = \"{admin}\"\n[cluster]\nnats_url = \"{nats}\"\nreplica_id = \"{id}\"\n{cluster}\n\
         [sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
        dir.path().join("state").display(),
        dir.path().join("events.jsonl").display()
    );
    for n in 0..tenants {
        let t = SimTenantSpec::numbered(n, SEED, 0);
        text.push_str(&format!(
            "[tenants.t{n}]\nclient_id = \"{}\"\nclient_secret = \"{}\"\napi_url = \"{}/graphql\"\nauth_url = \"{}/oauth/token\"\nallow_insecure_endpoints = true\n",
            t.client_id, t.client_secret, sim.base, sim.base
        ));
    }
    let path = dir.path().join("wiz-connector.toml");
    std::fs::write(&path, text).unwrap();
    Prepared {
        id: id.to_string(),
        dir,
        path,
        admin,
    }
}

impl Prepared {
    fn launch(self) -> Replica {
        let Prepared {
            id,
            dir,
            path,
            admin,
        } = self;
        // WIZ_BENCH_LOGS=<dir>: each replica's log (info) goes to <dir>/<id>.log.
        let log = std::env::var("WIZ_BENCH_LOGS").ok().map(|d| {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::path::Path::new(&d).join(format!("{id}.log")))
                .unwrap()
        });
        let mut command = Command::new(BIN);
        // WIZ_BENCH_REPLICA_THREADS=<n>: each replica's runtime gets n worker threads (tokio's
        // TOKIO_WORKER_THREADS), as a replica limited to a share of a core by its cgroup would.
        if let Ok(n) = std::env::var("WIZ_BENCH_REPLICA_THREADS") {
            command.env("TOKIO_WORKER_THREADS", n);
        }
        let child = command
            .args(["run", "--log-format", "text", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                match (&log, std::env::var("WIZ_BENCH_RUST_LOG")) {
                    (Some(_), Ok(filter)) => filter,
                    (Some(_), Err(_)) => "info".to_string(),
                    (None, _) => "warn".to_string(),
                },
            )
            .stdout(Stdio::null())
            .stderr(log.map_or(Stdio::null(), Stdio::from))
            .spawn()
            .unwrap();
        Replica {
            id,
            child,
            admin,
            _dir: dir,
        }
    }
}

/// (tenant, polled at least once) of the tenants a replica lists.
async fn listed(client: &reqwest::Client, r: &Replica) -> Vec<(String, bool)> {
    let v = get_json(client, &format!("http://{}/tenants", r.admin)).await;
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["id"].as_str().unwrap_or_default().to_string(),
                        !t["last_poll_at"].is_null(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How many tenants a replica lists (with `filter`, e.g. `&state=idle`), from the
/// `X-Total-Count` of an empty page.
async fn counted(client: &reqwest::Client, r: &Replica, filter: &str) -> usize {
    let url = format!("http://{}/tenants?limit=0{filter}", r.admin);
    match client.get(&url).send().await {
        Ok(resp) => resp
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Owner of every listed tenant, and whether each was polled; `None` while a tenant is listed
/// twice.
async fn owners(
    client: &reqwest::Client,
    rs: &[&Replica],
) -> Option<(BTreeMap<String, String>, usize)> {
    let mut owner = BTreeMap::new();
    let mut polled = 0;
    for r in rs {
        for (t, p) in listed(client, r).await {
            polled += usize::from(p);
            if owner.insert(t, r.id.clone()).is_some() {
                return None;
            }
        }
    }
    Some((owner, polled))
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// 3 replicas x 3,000 tenants: time until every tenant is placed (listed by exactly one
/// replica) and until every tenant has been polled once.
async fn placement() {
    const N: usize = 3_000;
    let Some(nats) = start_nats() else {
        println!("| placement | skipped: nats-server is not installed | | |");
        return;
    };
    let sim = start_sim(N, 0);
    let client = http();
    let started = Instant::now();
    let rs: Vec<Replica> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| replica(id, &sim, &nats.url, N, ""))
        .collect();
    let live: Vec<&Replica> = rs.iter().collect();
    let mut placed = None;
    loop {
        if let Some((o, polled)) = owners(&client, &live).await {
            if o.len() == N && placed.is_none() {
                placed = Some(started.elapsed());
            }
            if o.len() == N && polled == N {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (o, _) = owners(&client, &live).await.unwrap();
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for r in o.values() {
        *per.entry(r.as_str()).or_default() += 1;
    }
    println!(
        "| placement | 3 replicas x {N} tenants (default heartbeat 2 s), started together | placed in {:.1} s, all polled once in {:.1} s | tenants per replica {per:?} |",
        placed.unwrap().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// kill -9 of the replica owning the most tenants, 10 times: time until its tenants are polled
/// by the others; the killed replica is restarted and placement settles between rounds.
async fn failover() {
    const N: usize = 300;
    const ROUNDS: usize = 10;
    let Some(nats) = start_nats() else {
        println!("| failover | skipped: nats-server is not installed | | |");
        return;
    };
    let sim = start_sim(N, 0);
    let client = http();
    let settings = "heartbeat = \"1s\"\nfailover_after = \"5s\"";
    let mut rs: Vec<Replica> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| replica(id, &sim, &nats.url, N, settings))
        .collect();
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        // Settled: three owners, every tenant listed once and polled.
        loop {
            let live: Vec<&Replica> = rs.iter().collect();
            if let Some((o, polled)) = owners(&client, &live).await {
                let owners: BTreeSet<&String> = o.values().collect();
                if o.len() == N && polled == N && owners.len() == 3 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let live: Vec<&Replica> = rs.iter().collect();
        let (o, _) = owners(&client, &live).await.unwrap();
        let victim = ["r1", "r2", "r3"]
            .into_iter()
            .max_by_key(|r| o.values().filter(|x| x == r).count())
            .unwrap();
        let moved: BTreeSet<String> = o
            .iter()
            .filter(|(_, r)| *r == victim)
            .map(|(t, _)| t.clone())
            .collect();
        let i = rs.iter().position(|r| r.id == victim).unwrap();
        let dead = rs.remove(i);
        let killed = Instant::now();
        drop(dead); // SIGKILL
        loop {
            let mut polled = BTreeSet::new();
            for r in &rs {
                for (t, p) in listed(&client, r).await {
                    if p {
                        polled.insert(t);
                    }
                }
            }
            if moved.is_subset(&polled) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        times.push(killed.elapsed().as_millis() as u64);
        rs.push(replica(victim, &sim, &nats.url, N, settings));
    }
    times.sort();
    println!(
        "| failover after kill -9 | 3 replicas x {N} tenants, heartbeat 1 s, failover_after 5 s, {ROUNDS} kills | p50 {:.2} s, max {:.2} s | from the kill until every moved tenant was polled by another replica |",
        percentile(&times, 0.5) as f64 / 1000.0,
        *times.last().unwrap() as f64 / 1000.0
    );
}

/// Bytes the state stream holds per known issue, after a first sweep of 20 tenants x 2,000
/// issues by one replica.
async fn state() {
    const TENANTS: usize = 20;
    const ISSUES: usize = 2_000;
    let Some(nats) = start_nats() else {
        println!("| state bytes | skipped: nats-server is not installed | | |");
        return;
    };
    let sim = start_sim_with(TENANTS, ISSUES, &[]);
    let client = http();
    let r = replica("r1", &sim, &nats.url, TENANTS, "");
    loop {
        let l = listed(&client, &r).await;
        if l.len() == TENANTS && l.iter().all(|(_, p)| *p) {
            // Polled: wait for the first sweeps to end (idle everywhere).
            let v = get_json(&client, &format!("http://{}/tenants?state=idle", r.admin)).await;
            if v.as_array().map(Vec::len) == Some(TENANTS) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let info = js
        .get_stream("WIZ_CONNECTOR_STATE")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    let known = (TENANTS * ISSUES) as f64;
    // The alternative layout, measured on the same server: one KV key per issue, holding the
    // same 19 bytes a record needs besides its id.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KV_bench_per_issue".into(),
        subjects: vec!["$KV.bench_per_issue.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let kv = js.get_key_value("bench_per_issue").await.unwrap();
    const KEYS: usize = 2_000;
    for i in 0..KEYS {
        let key = format!("t0.{:08x}-0000-4000-8000-{:012x}", i, i);
        kv.put(key, bytes::Bytes::from(vec![7u8; 19]))
            .await
            .unwrap();
    }
    let kv_info = js
        .get_stream("KV_bench_per_issue")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    println!(
        "| state, one KV key per issue (not chosen) | {KEYS} keys `<tenant>.<uuid>` with 19-byte values | {:.1} bytes per known issue | {} bytes |",
        kv_info.state.bytes as f64 / KEYS as f64,
        kv_info.state.bytes
    );
    println!(
        "| state in JetStream | {TENANTS} tenants x {ISSUES} issues after their first sweep (page 500) | {:.1} bytes per known issue | {} bytes in {} messages (snapshots, deltas, claims; file store) |",
        info.state.bytes as f64 / known,
        info.state.bytes,
        info.state.messages
    );
}

/// Latency of one page's commit (500 remembered issues) into the local redb store and into the
/// JetStream backend (publish, ack, then the redb cache).
async fn commit() {
    const PAGES: usize = 200;
    let Some(nats) = start_nats() else {
        println!("| page commit | skipped: nats-server is not installed | | |");
        return;
    };
    let page = |p: usize| {
        Write::Commit(Commit {
            remember: (0..500)
                .map(|i| {
                    (
                        format!("{:08x}-0000-4000-8000-{:012x}", p, i),
                        Known {
                            fingerprint: [(i % 251) as u8; 16],
                            status: "OPEN".into(),
                            severity: Some("HIGH".into()),
                            silent: false,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut rows = Vec::new();
    for backend in ["redb", "jetstream"] {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open_or_recover(dir.path()).unwrap();
        let store = if backend == "jetstream" {
            let c = wiz_connector::cluster::connect(&ClusterSettings {
                nats_url: nats.url.clone(),
                replica_id: "bench".into(),
                heartbeat: DurationValue::secs(2),
                failover_after: DurationValue::secs(10),
                members_bucket: "bench_members".into(),
                state_stream: "BENCH_STATE".into(),
                replicas: 1,
                start_settle: DurationValue::secs(0),
            })
            .await
            .unwrap();
            let s = store.replicate_to(c.replicated.clone());
            s.claim("bench", false).await.unwrap();
            s
        } else {
            store
        };
        let mut took = Vec::new();
        for p in 0..PAGES {
            let w = page(p);
            let t = Instant::now();
            store.write("bench", w).await.unwrap();
            took.push(t.elapsed().as_micros() as u64);
        }
        took.sort();
        let mean = took.iter().sum::<u64>() as f64 / took.len() as f64;
        rows.push(format!(
            "| page commit ({backend}) | {PAGES} commits of 500 issues, one tenant, sequential | mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms | |",
            mean / 1000.0,
            percentile(&took, 0.5) as f64 / 1000.0,
            percentile(&took, 0.99) as f64 / 1000.0
        ));
    }
    for r in rows {
        println!("{r}");
    }
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The largest resident mappings of process `pid` (from `/proc/<pid>/smaps`): `[heap]` is
/// glibc's main arena, unnamed ones its thread arenas (64 MiB each) and thread stacks.
fn resident_by_mapping(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(String, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Rss:") => {
                if let (Some(last), Some(kb)) = (maps.last_mut(), words.next()) {
                    last.1 = kb.parse().unwrap_or(0);
                }
            }
            Some(first)
                if first.contains('-') && first.contains(|c: char| c.is_ascii_hexdigit()) =>
            {
                let name = line.split_whitespace().nth(5).unwrap_or("anon").to_string();
                maps.push((name, 0));
            }
            _ => {}
        }
    }
    let anon: u64 = maps.iter().filter(|m| m.0 == "anon").map(|m| m.1).sum();
    let heap: u64 = maps.iter().filter(|m| m.0 == "[heap]").map(|m| m.1).sum();
    let mut big: Vec<u64> = maps.iter().filter(|m| m.0 == "anon").map(|m| m.1).collect();
    big.sort_unstable_by(|a, b| b.cmp(a));
    big.truncate(6);
    format!(
        "[heap] {} MiB, unnamed {} MiB (largest {:?} MiB)",
        heap / 1024,
        anon / 1024,
        big.iter().map(|k| k / 1024).collect::<Vec<_>>()
    )
}

/// Bytes JetStream holds in `stream`.
async fn stream_bytes(nats: &str, stream: &str) -> u64 {
    let Ok(client) = async_nats::connect(nats).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.bytes).unwrap_or(0),
        Err(_) => 0,
    }
}

/// What the first `count` messages of `stream` are, by `Wiz-Op`: how many, and their average
/// payload and header bytes (headers as name + value + 4 per line).
async fn message_mix(nats: &str, stream: &str, count: u64) -> String {
    let Ok(client) = async_nats::connect(nats).await else {
        return String::new();
    };
    let js = async_nats::jetstream::new(client);
    let Ok(s) = js.get_stream(stream).await else {
        return String::new();
    };
    let mut by_op: BTreeMap<String, (u64, usize, usize)> = BTreeMap::new();
    for seq in 1..=count {
        let Ok(m) = s.get_raw_message(seq).await else {
            continue;
        };
        // The first format's `Wiz-Op`, or the first word of the compact format's `Wiz`.
        let op = match (m.headers.get("Wiz-Op"), m.headers.get("Wiz")) {
            (Some(v), _) => v.to_string(),
            (None, Some(v)) => v.as_str().split(' ').next().unwrap_or("?").to_string(),
            (None, None) => "?".to_string(),
        };
        let header_bytes: usize = m
            .headers
            .iter()
            .map(|(k, vs)| {
                vs.iter()
                    .map(|v| k.to_string().len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum();
        let e = by_op.entry(op).or_default();
        e.0 += 1;
        e.1 += m.payload.len();
        e.2 += header_bytes;
    }
    by_op
        .iter()
        .map(|(op, (n, p, h))| {
            format!(
                "{op}: {n} (payload {} B, headers {} B)",
                *p / (*n as usize).max(1),
                *h / (*n as usize).max(1)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until every one of `n` tenants is listed by exactly one of `rs` (and, with `polled`,
/// polled once); the moment of the round that saw it, or `None` after `limit`. Each round only
/// counts what each replica lists (and how many of those are idle, i.e. polled); once the counts
/// add up to `n`, one full listing checks that every tenant is listed by exactly one replica.
/// Listing 300,000 tenants every round took the replicas and this harness seconds per round
/// during the cold start it measures.
async fn settle(
    client: &reqwest::Client,
    rs: &[&Replica],
    n: usize,
    polled: bool,
    limit: Duration,
) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let at = Instant::now();
        let (mut listed_now, mut idle_now) = (0, 0);
        for r in rs {
            listed_now += counted(client, r, "").await;
            if polled {
                idle_now += counted(client, r, "&state=idle").await;
            }
        }
        if listed_now == n && (!polled || idle_now == n) {
            if let Some((o, _)) = owners(client, rs).await {
                if o.len() == n {
                    return Some(at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("did not settle".to_string(), |d| {
        format!("{:.1} s", d.as_secs_f64())
    })
}

/// CPU seconds each process had used at a moment of a failover (see [`cpu_report`]).
struct CpuSample {
    /// Since the kill.
    at: Duration,
    nats: f64,
    sim: f64,
    /// Each survivor's, in one order.
    replicas: Vec<f64>,
    /// This process: the counting requests to the survivors' admin APIs.
    harness: f64,
}

/// Where a failover's CPU went: each process's share of the box over the whole failover, then
/// per 2-second window (in cores: 2.0 is the whole box), so the phases (noticing, placing,
/// claiming, first polls) can be told apart.
fn cpu_report(samples: &[CpuSample]) -> String {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return String::new();
    };
    let use_of = |a: &CpuSample, b: &CpuSample| {
        let wall = (b.at - a.at).as_secs_f64().max(1e-3);
        let reps: Vec<f64> = a
            .replicas
            .iter()
            .zip(&b.replicas)
            .map(|(x, y)| (y - x) / wall)
            .collect();
        let sum: f64 = reps.iter().sum();
        let max = reps.iter().cloned().fold(0.0, f64::max);
        format!(
            "nats {:.2}, sim {:.2}, replicas {:.2} (max one {:.2}), harness {:.2}",
            (b.nats - a.nats) / wall,
            (b.sim - a.sim) / wall,
            sum,
            max,
            (b.harness - a.harness) / wall
        )
    };
    let mut windows = Vec::new();
    let mut start = first;
    for s in samples {
        if (s.at - start.at).as_secs_f64() >= 2.0 {
            windows.push(format!(
                "{:.0}-{:.0} s: {}",
                start.at.as_secs_f64(),
                s.at.as_secs_f64(),
                use_of(start, s)
            ));
            start = s;
        }
    }
    format!(
        "| scale: kill -9 CPU | cores used from the kill until all polled ({:.1} s) | {} | {} |",
        last.at.as_secs_f64(),
        use_of(first, last),
        windows.join("; ")
    )
}

/// Idle tenants on many replicas (see the module docs).
async fn scale() {
    let n = env_usize("WIZ_BENCH_SCALE_TENANTS", 100_000);
    let k = env_usize("WIZ_BENCH_SCALE_REPLICAS", 10);
    let Some(nats) = start_nats() else {
        println!("| scale | skipped: nats-server is not installed | | |");
        return;
    };
    let sim = start_sim(n, 0);
    let client = http();
    let settings = "heartbeat = \"1s\"\nfailover_after = \"5s\"";
    let limit = Duration::from_secs(900);
    let ids: Vec<String> = (1..=k).map(|i| format!("r{i}")).collect();
    let prepared: Vec<Prepared> = ids
        .iter()
        .map(|id| prepare(id, &sim, &nats.url, n, settings, "30s"))
        .collect();
    let started = Instant::now();
    let mut rs: Vec<Replica> = prepared.into_iter().map(Prepared::launch).collect();
    let live: Vec<&Replica> = rs.iter().collect();
    let placed = settle(&client, &live, n, false, limit)
        .await
        .map(|at| at - started);
    let polled = settle(&client, &live, n, true, limit)
        .await
        .map(|at| at - started);
    let rss: Vec<u64> = rs.iter().map(|r| rss_of(r.child.id())).collect();
    let rss_avg = rss.iter().sum::<u64>() / rss.len() as u64;
    let state = stream_bytes(&nats.url, "WIZ_CONNECTOR_STATE").await;
    let members = stream_bytes(&nats.url, "KV_wiz_connector_members").await;
    let mix = message_mix(&nats.url, "WIZ_CONNECTOR_STATE", 200).await;
    println!(
        "| scale: start | {k} replicas x {n} idle tenants, heartbeat 1 s, failover_after 5 s, startup_jitter 30 s | placed in {}, all polled in {} | RSS per replica {:.0} MiB avg ({:.0} to {:.0}), {:.1} KiB per configured tenant; NATS {:.0} bytes per tenant (state {state} B, members {members} B; the first 200 state messages: {mix}) |",
        secs(placed),
        secs(polled),
        rss_avg as f64 / 1048576.0,
        *rss.iter().min().unwrap() as f64 / 1048576.0,
        *rss.iter().max().unwrap() as f64 / 1048576.0,
        rss_avg as f64 / 1024.0 / n as f64,
        (state + members) as f64 / n as f64
    );
    // kill -9 of the replica owning the most.
    let live: Vec<&Replica> = rs.iter().collect();
    let (o, _) = owners(&client, &live).await.unwrap_or_default();
    let victim = ids
        .iter()
        .max_by_key(|r| o.values().filter(|x| x == r).count())
        .unwrap()
        .clone();
    let moved: BTreeSet<String> = o
        .iter()
        .filter(|(_, r)| **r == victim)
        .map(|(t, _)| t.clone())
        .collect();
    let i_victim = rs.iter().position(|r| r.id == victim).unwrap();
    // WIZ_BENCH_PERF=<file>: the whole box's CPU profile over the failover's first 25 s
    // (`perf record -a`, with call graphs), for `perf report -i <file> --sort comm,sym`.
    let perf = std::env::var("WIZ_BENCH_PERF").ok().map(|out| {
        Command::new("perf")
            .args([
                "record",
                "-a",
                "-F",
                "199",
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(out)
            .args(["--", "sleep", "25"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf (linux-perf) is installed")
    });
    drop(rs.remove(i_victim));
    let killed = Instant::now();
    let cpu = |rs: &[Replica]| CpuSample {
        at: killed.elapsed(),
        nats: cpu_of(nats.pid()),
        sim: cpu_of(sim.child.id()),
        replicas: rs.iter().map(|r| cpu_of(r.child.id())).collect(),
        harness: cpu_of(std::process::id()),
    };
    let mut cpu_samples = vec![cpu(&rs)];
    let (mut noticed, mut taken, mut all_polled) = (None, None, None);
    // Counted, not listed: every tenant was polled before the kill and the interval is an
    // hour, so the moved ones are polled when the survivors list all `n` and all `n` are idle.
    // (Listing 100,000 tenants twice a second cost the replicas and this harness a quarter of
    // the box's CPU in the middle of the failover it measures.)
    while killed.elapsed() < limit && all_polled.is_none() {
        if noticed.is_none() {
            // One survivor's view: the replicas notice the death within a heartbeat of each
            // other (their `members changed` log lines say exactly when).
            let url = format!("http://{}/cluster", rs[0].admin);
            let members = match client.get(&url).send().await {
                Ok(resp) => resp.text().await.ok().and_then(|t| {
                    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                    v["members"].as_array().map(Vec::len)
                }),
                Err(_) => None,
            };
            if members == Some(rs.len()) {
                noticed = Some(killed.elapsed());
            }
        }
        let (mut listed_now, mut polled_now) = (0, 0);
        for r in &rs {
            listed_now += counted(&client, r, "").await;
            polled_now += counted(&client, r, "&state=idle").await;
        }
        if taken.is_none() && listed_now == n {
            taken = Some(killed.elapsed());
        }
        if polled_now == n {
            all_polled = Some(killed.elapsed());
        }
        cpu_samples.push(cpu(&rs));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "| scale: kill -9 | the replica owning the most ({} tenants) | noticed in {}, taken over in {}, all polled elsewhere in {} | first polls of moved tenants are spread (at least 2 s, 1 s per 100, at most 5 s or startup_jitter) |",
        moved.len(),
        secs(noticed),
        secs(taken),
        secs(all_polled)
    );
    println!("{}", cpu_report(&cpu_samples));
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    // Memory: a replica of one tenant is the base; what the survivors hold beyond it, per tenant
    // they own now, bounds the cost of an owned tenant from above (their fleet entries, the
    // allocator's retained peaks and the takeover's transient load counted in).
    let base = {
        let lone = replica(
            "base",
            &sim,
            &nats.url,
            1,
            "heartbeat = \"1s\"\nfailover_after = \"5s\"\nmembers_bucket = \"wiz_bench_base\"\nstate_stream = \"WIZ_BENCH_BASE\"",
        );
        let _ = settle(&client, &[&lone], 1, true, Duration::from_secs(60)).await;
        rss_of(lone.child.id())
    };
    let (mut above, mut owned_now) = (0u64, 0u64);
    for r in &rs {
        above += rss_of(r.child.id()).saturating_sub(base);
        owned_now += get_json(&client, &format!("http://{}/cluster", r.admin)).await["owned"]
            .as_u64()
            .unwrap_or(0);
    }
    println!(
        "| scale: memory | {} survivors after the failover, {} tenants owned in all | base (a replica of one tenant) {:.0} MiB; above it {:.1} KiB per owned tenant, all else counted in | RSS per survivor {:.0} MiB avg |",
        rs.len(),
        owned_now,
        base as f64 / 1048576.0,
        above as f64 / owned_now.max(1) as f64 / 1024.0,
        (above as f64 / rs.len() as f64 + base as f64) / 1048576.0,
    );
    // At rest: the replicas' trimmer gives back a takeover's freed reads once takeovers have
    // been quiet for its period (`heap::TRIM_EVERY`), within two periods of the last one;
    // measured again once that has passed: the memory a replica keeps for its tenants rather
    // than the failover's peak.
    let rest = wiz_connector::heap::TRIM_EVERY * 2 + Duration::from_secs(2);
    tokio::time::sleep(rest).await;
    let rested: u64 = rs
        .iter()
        .map(|r| rss_of(r.child.id()).saturating_sub(base))
        .sum();
    println!(
        "| scale: memory at rest | the same, {} s later (two trimmer periods and 2 s) | above the base {:.1} KiB per owned tenant | RSS per survivor {:.0} MiB avg |",
        rest.as_secs(),
        rested as f64 / owned_now.max(1) as f64 / 1024.0,
        (rested as f64 / rs.len() as f64 + base as f64) / 1048576.0,
    );
    // WIZ_BENCH_HEAP=1 (needs gdb): each survivor's RSS after a forced `malloc_trim`, and
    // glibc's `malloc_stats` (bytes in use per arena) printed into its log: tells live heap
    // from memory the allocator holds.
    if std::env::var_os("WIZ_BENCH_HEAP").is_some() {
        for r in &rs {
            let pid = r.child.id();
            let before = rss_of(pid);
            let _ = Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "call (int)malloc_trim(0)",
                ])
                .args(["-ex", "call (void)malloc_stats()"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            println!(
                "| scale: heap | {} | RSS {:.0} MiB, after malloc_trim {:.0} MiB (malloc_stats in its log); resident by mapping: {} | |",
                r.id,
                before as f64 / 1048576.0,
                rss_of(pid) as f64 / 1048576.0,
                resident_by_mapping(pid)
            );
        }
    }
    // It comes back: a join.
    let back = prepare(&victim, &sim, &nats.url, n, settings, "30s");
    let joined = Instant::now();
    rs.push(back.launch());
    let live: Vec<&Replica> = rs.iter().collect();
    let mut settled_join = None;
    while joined.elapsed() < limit {
        if let Some((o, _)) = owners(&client, &live).await {
            let share = o.values().filter(|r| **r == victim).count();
            if o.len() == n && share * 2 >= moved.len() {
                settled_join = Some(joined.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "| scale: join | the killed replica started again | its share placed on it in {} | |",
        secs(settled_join)
    );
    // SIGTERM of another.
    let mut leaving = rs.remove(0);
    let term = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &leaving.child.id().to_string()])
        .status();
    let mut exited = None;
    while term.elapsed() < limit {
        if let Ok(Some(_)) = leaving.child.try_wait() {
            exited = Some(term.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: Vec<&Replica> = rs.iter().collect();
    let after = settle(&client, &live, n, false, limit)
        .await
        .map(|at| at - term);
    println!(
        "| scale: SIGTERM | {} leaves | exited in {}, every tenant placed on the others in {} | |",
        leaving.id,
        secs(exited),
        secs(after)
    );
}

/// What a roll-up costs NATS: `WIZ_BENCH_ROLLUP_SUBJECTS` (100,000) subjects of one 150-byte
/// message each, then `WIZ_BENCH_ROLLUP_OPS` (20,000) fenced publishes over them, 64 in flight
/// from one connection: replacing each subject's messages (`Nats-Rollup: sub`, as a tiny image's
/// write does), appending (as a delta does), replacing again (now over two messages a subject),
/// and direct gets of each subject's last message.
async fn rollup() {
    use async_nats::jetstream::{self, stream};
    use futures_util::StreamExt;
    let n = env_usize("WIZ_BENCH_ROLLUP_SUBJECTS", 100_000);
    let ops = env_usize("WIZ_BENCH_ROLLUP_OPS", 20_000);
    let Some(nats) = start_nats() else {
        println!("| rollup | skipped: nats-server is not installed | | |");
        return;
    };
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let st = js
        .get_or_create_stream(stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.>".into()],
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 150]);
    let last = std::sync::Mutex::new(vec![0u64; n]);
    // One pass of `count` fenced publishes to subjects picked by `pick`; publishes per second.
    let pass = |count: usize, pick: fn(usize, usize) -> usize, rollup: bool| {
        let (js, payload, last) = (&js, payload.clone(), &last);
        async move {
            let started = Instant::now();
            futures_util::stream::iter(0..count)
                .map(|k| {
                    let i = pick(k, n);
                    let payload = payload.clone();
                    async move {
                        let mut h = async_nats::HeaderMap::new();
                        let expected = last.lock().unwrap()[i];
                        h.insert(
                            "Nats-Expected-Last-Subject-Sequence",
                            expected.to_string().as_str(),
                        );
                        if rollup {
                            h.insert("Nats-Rollup", "sub");
                        }
                        let ack = js
                            .publish_with_headers(format!("probe.t{i}"), h, payload)
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                        last.lock().unwrap()[i] = ack.sequence;
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
            count as f64 / started.elapsed().as_secs_f64()
        }
    };
    let spread: fn(usize, usize) -> usize = |k, n| (k * 7919 + 13) % n;
    let seeded = pass(n, |k, _| k, true).await;
    let replaced = pass(ops, spread, true).await;
    let appended = pass(ops, spread, false).await;
    let replaced_two = pass(ops, spread, true).await;
    let started = Instant::now();
    futures_util::stream::iter(0..ops)
        .map(|k| {
            let st = &st;
            async move {
                st.direct_get_last_for_subject(format!("probe.t{}", spread(k, n)))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let gets = ops as f64 / started.elapsed().as_secs_f64();
    println!(
        "| rollup | {n} subjects of one message, then {ops} fenced publishes over them, 64 in flight | per second: first message of each subject {seeded:.0}; replacing one message (roll-up) {replaced:.0}; appending {appended:.0}; replacing two {replaced_two:.0}; direct gets {gets:.0} | |"
    );
}

fn main() {
    let Some(args) = bench_args() else {
        return;
    };
    let all = args.is_empty();
    let want = |s: &str| all || args.iter().any(|a| a == s);
    let rt = runtime();
    rt.block_on(async {
        println!("| scenario | setup | result | numbers |\n|---|---|---|---|");
        if want("commit") {
            commit().await;
        }
        if want("state") {
            state().await;
        }
        if want("placement") {
            placement().await;
        }
        if want("failover") {
            failover().await;
        }
        if want("rollup") {
            rollup().await;
        }
        if args.iter().any(|a| a == "scale") {
            scale().await;
        }
    });
}
