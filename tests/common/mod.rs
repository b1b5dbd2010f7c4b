//! Helpers shared by the integration tests: a simulator on 127.0.0.1:0 and configurations that
//! point at it, loaded through the real loader.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use wiz_connector::config::{load, EnvSource, Settings, TenantSpec};
use wiz_connector::sim::{SimTenantSpec, Simulator, SimulatorOptions};

/// Starts a simulator with `n` tenants of `issues` issues each.
pub async fn sim(n: usize, issues: usize) -> Simulator {
    sim_with(SimulatorOptions {
        tenants: (0..n)
            .map(|i| SimTenantSpec::numbered(i, 42, issues))
            .collect(),
        ..Default::default()
    })
    .await
}

pub async fn sim_with(opts: SimulatorOptions) -> Simulator {
    Simulator::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("simulator starts")
}

/// A `[tenants.<id>]` table for simulated tenant `t`, plus `extra` lines.
pub fn tenant_toml(sim: &Simulator, id: &str, t: &SimTenantSpec, extra: &str) -> String {
    format!("{}{extra}\n", sim.tenant_table(id, t))
}

/// `[tenants.t<i>]` tables for the simulator's tenants, tenant `t<i>` labelled
/// `customer = customers[i]`.
pub fn customer_tenants(sim: &Simulator, customers: &[&str]) -> String {
    sim.tenants()
        .iter()
        .zip(customers)
        .enumerate()
        .map(|(i, (t, c))| {
            tenant_toml(
                sim,
                &format!("t{i}"),
                t,
                &format!("labels = {{ customer = \"{c}\" }}"),
            )
        })
        .collect()
}

/// Fast retries so failure tests take milliseconds, not minutes.
pub const FAST_RETRIES: &str =
    "retry_initial_backoff = \"10ms\"\nretry_max_backoff = \"40ms\"\nmax_retries = 4\n";

/// A temporary directory holding a config file; kept alive by the returned guard.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn write_config(body: &str) -> ConfigDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wiz-connector.toml");
    std::fs::write(&path, body).unwrap();
    ConfigDir { dir, path }
}

/// Loads `body` with a fixed, empty environment.
pub fn settings(body: &str) -> Settings {
    let c = write_config(body);
    load(&c.path, &EnvSource::Fixed(HashMap::new())).unwrap_or_else(|e| panic!("{e}"))
}

/// The error that loading `body` gives (panics when it loads).
pub fn config_error(body: &str) -> String {
    let c = write_config(body);
    match load(&c.path, &EnvSource::Fixed(HashMap::new())) {
        Ok(_) => panic!("the configuration loaded:\n{body}"),
        Err(e) => e.to_string(),
    }
}

/// The spec of tenant `id` from a config `body`.
pub fn spec(body: &str, id: &str) -> Arc<TenantSpec> {
    let s = settings(body);
    s.tenants
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no tenant {id}"))
}

/// A fresh directory for a state store (kept: a test may restart a connector on it).
pub fn state_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("wiz-connector-state-")
        .tempdir()
        .unwrap()
        .keep()
}

/// Config for every tenant of `sim` with `connector` lines, tenant ids `t0`, `t1`, ...
pub fn sim_config(sim: &Simulator, connector: &str, tenant_extra: &str) -> String {
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\n{connector}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        state_dir().display()
    );
    for (i, t) in sim.tenants().iter().enumerate() {
        body.push_str(&tenant_toml(sim, &format!("t{i}"), t, tenant_extra));
    }
    body
}

/// Waits until `cond` holds, checking every 20 ms; panics with `what` after `deadline`.
pub async fn wait_until(what: &str, deadline: std::time::Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, deadline, || {
        if cond() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await
}

/// [`wait_until`] for a condition that can say what is still missing: on timeout, the last
/// `Err` is in the panic message.
pub async fn wait_for(
    what: &str,
    deadline: std::time::Duration,
    mut cond: impl FnMut() -> Result<(), String>,
) {
    let start = std::time::Instant::now();
    loop {
        match cond() {
            Ok(()) => return,
            Err(missing) if start.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what} {missing}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// A loopback port nothing listens on right now (for a server started by a child process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The JSON lines of a file (empty when it does not exist yet). A last line without its newline
/// is still being written by the sink and is left out; any complete line must parse.
pub fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The JSON lines of a file a killed process wrote: complete lines only (a kill -9 can tear the
/// last line of a write, which was never acknowledged).
pub fn complete_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One round of a kill -9 test: `wiz-connector run` on `config` until it delivered something to
/// `out` (every fourth round, `round % 4 == 3`, not even that: a kill at start), then SIGKILL
/// after a random delay below `max_delay`. The delay is the chaos, not a synchronization.
pub async fn run_and_kill(
    config: &std::path::Path,
    out: &std::path::Path,
    round: usize,
    max_delay: std::time::Duration,
) {
    use rand::Rng;
    let before = complete_lines(out).len();
    let mut child = spawn_run(config);
    wait_until(
        "the run delivers something",
        std::time::Duration::from_secs(30),
        || complete_lines(out).len() > before || round % 4 == 3,
    )
    .await;
    let delay = rand::rng().random_range(0..max_delay.as_millis() as u64);
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// A count from the environment variable `var` (kill rounds of the crash tests), else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Issue ids of `status` per simulated tenant, keyed by tenant id `t<i>`.
pub fn open_ids(sim: &Simulator) -> HashMap<String, std::collections::HashSet<String>> {
    sim.tenants()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                format!("t{i}"),
                sim.issues(&t.client_id, |s| s.ids_with_status("OPEN"))
                    .into_iter()
                    .collect(),
            )
        })
        .collect()
}

/// `wiz-connector run --config <config>` as a child process (killed when dropped).
///
/// With `WIZ_TEST_RUN_LOG=<file>`, its log is appended to that file (to debug a test).
pub fn spawn_run(config: &std::path::Path) -> tokio::process::Child {
    let log = || match std::env::var("WIZ_TEST_RUN_LOG") {
        Ok(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null()),
        Err(_) => std::process::Stdio::null(),
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(log())
        .stderr(log())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// [`spawn_run`], returned once the run has asked `sim` for a token for `client` (it is up, its
/// signal handlers installed): a test that signals it right away, because what it waits for was
/// already there, must not kill it before it listens.
pub async fn spawn_run_started(
    config: &std::path::Path,
    sim: &wiz_connector::sim::Simulator,
    client: &str,
) -> tokio::process::Child {
    let before = sim.counters(client).tokens_issued;
    let child = spawn_run(config);
    wait_until(
        "the run started",
        std::time::Duration::from_secs(30),
        || sim.counters(client).tokens_issued > before,
    )
    .await;
    child
}

/// Sends `sig` (e.g. `-TERM`) to a child process.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The child's exit code, which must come within `within`.
pub async fn exit_code(child: &mut tokio::process::Child, within: std::time::Duration) -> i32 {
    tokio::time::timeout(within, child.wait())
        .await
        .expect("the process exits in time")
        .unwrap()
        .code()
        .expect("exited, not killed")
}

/// A real `nats-server -js` on a free loopback port, with its store in a temporary directory
/// (Debian's package; `.ci/run` installs it). It can be stopped and started again on the same
/// port and store, to test what happens while NATS is away.
pub struct NatsServer {
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
    pub url: String,
}

fn nats_binary() -> String {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(str::to_string)
    .or_else(|| {
        let out = std::process::Command::new("sh")
            .args(["-c", "command -v nats-server"])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
    })
    .expect("nats-server is not installed: `apt-get install nats-server` (.ci/run does it)")
}

pub async fn nats_server() -> NatsServer {
    let port = free_port();
    let mut n = NatsServer {
        child: None,
        dir: tempfile::tempdir().unwrap(),
        port,
        url: format!("nats://127.0.0.1:{port}"),
    };
    n.start().await;
    n
}

impl NatsServer {
    pub async fn start(&mut self) {
        let child = tokio::process::Command::new(nats_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "nats-server listening",
            std::time::Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .await;
    }

    /// Deletes the server's store (call it stopped): the next start has no streams, no buckets.
    pub fn wipe(&self) {
        assert!(
            self.child.is_none(),
            "stop the server before wiping its store"
        );
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "-TERM");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), c.wait()).await;
        }
    }
}

/// What a SIEM holds of one issue: the status and the event id of its latest event, by issue id.
pub type LastEvents = std::collections::BTreeMap<String, (String, String)>;

/// The kill -9 test every SIEM sink runs: `kills` rounds of `run` on `config` killed during
/// delivery while the issues of `client` churn, then a clean run until `last_at_siem` has every
/// issue in its current state, a SIGTERM, and the latest event of every issue at the SIEM the
/// same as in the reference file sink at `archive`: what a crash cut short was sent again.
pub async fn kill_9_rounds_lose_nothing(
    sim: &Simulator,
    client: &str,
    config: &std::path::Path,
    archive: &std::path::Path,
    kills: usize,
    last_at_siem: impl Fn() -> LastEvents,
) {
    use std::time::Duration;
    for round in 0..kills {
        sim.churn(client, 3);
        run_and_kill(config, archive, round, Duration::from_millis(1500)).await;
    }
    let mut child = spawn_run_started(config, sim, client).await;
    let current = || -> std::collections::BTreeMap<String, String> {
        sim.issues(client, |s| {
            s.issues
                .iter()
                .map(|i| (i.id.clone(), i.status.to_string()))
                .collect()
        })
    };
    wait_for("the SIEM caught up", Duration::from_secs(90), || {
        let last = last_at_siem();
        let gaps: Vec<String> = current()
            .into_iter()
            .filter(|(id, status)| {
                // Issues never reported (first seen outside the watched statuses) are not news.
                last.get(id).is_some_and(|(s, _)| s != status)
                    || (!last.contains_key(id) && status == "OPEN")
            })
            .map(|(id, status)| format!("{id} {status}"))
            .collect();
        if gaps.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} gaps, first {:?}",
                gaps.len(),
                &gaps[..gaps.len().min(3)]
            ))
        }
    })
    .await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);
    // Both destinations end with the same event for every issue (its current state, the same
    // id). (An intermediate state that changed again before the next run may have reached only
    // one of them; the crash tests of the other sinks allow the same.)
    let mut in_archive = std::collections::BTreeMap::new();
    for e in complete_lines(archive) {
        if let (Some(i), Some(id)) = (e["issue_id"].as_str(), e["id"].as_str()) {
            in_archive.insert(i.to_string(), id.to_string());
        }
    }
    let at_siem: std::collections::BTreeMap<String, String> = last_at_siem()
        .into_iter()
        .map(|(i, (_, id))| (i, id))
        .collect();
    assert_eq!(at_siem, in_archive);
    assert!(!at_siem.is_empty());
}

/// [`LastEvents`] from native events in the order a SIEM stored them.
pub fn last_events(events: impl IntoIterator<Item = serde_json::Value>) -> LastEvents {
    let mut last = LastEvents::new();
    for e in events {
        if let (Some(i), Some(status), Some(id)) = (
            e["issue_id"].as_str(),
            e["status"].as_str(),
            e["id"].as_str(),
        ) {
            last.insert(i.to_string(), (status.to_string(), id.to_string()));
        }
    }
    last
}

/// Starts the connector on `config` (written to a file, so a test can fix it and reload), whose
/// sink `sink` refuses every page, and waits until `events` events wait in that sink's backlog
/// with an error. Returns the running app, its configuration file and the sink's error.
pub async fn start_refused(
    config: &str,
    sink: &str,
    events: u64,
) -> (wiz_connector::app::App, ConfigDir, String) {
    let cfg = write_config(config);
    let app = wiz_connector::app::App::start(
        load(&cfg.path, &EnvSource::Fixed(Default::default())).unwrap(),
        wiz_connector::app::AppOptions::default(),
    )
    .await
    .unwrap();
    wait_until(
        &format!("the refused pages kept by sink {sink}"),
        std::time::Duration::from_secs(30),
        || {
            app.sink_stats
                .statuses()
                .get(sink)
                .is_some_and(|s| s.backlog_events == events && s.last_error.is_some())
        },
    )
    .await;
    let message = app.sink_stats.statuses()[sink]
        .last_error
        .clone()
        .unwrap()
        .message;
    (app, cfg, message)
}
