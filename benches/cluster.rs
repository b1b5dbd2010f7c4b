//! Cluster-mode benchmarks (a bench binary; each scenario runs once). Replicas run as separate
//! `wiz-connector run` processes against a local `nats-server -js` and the simulator.
//!
//! `cargo bench --bench cluster [-- placement|failover|state|commit]` (all by default). Needs
//! nats-server (Debian's package). Under `cargo test` it runs nothing.

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
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut text = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 64\n\
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
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        id: id.into(),
        child,
        admin,
        _dir: dir,
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
    });
}
