//! Helpers shared by the bench binaries: free ports, the simulator and nats-server as child
//! processes, percentiles.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wiz-connector");
pub const SEED: u64 = 1;

/// The number in environment variable `var`, else `default` (the benches' size knobs).
pub fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to two minutes) until something listens on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Sim {
    pub child: Child,
    pub base: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_sim(tenants: usize, issues: usize) -> Sim {
    start_sim_with(tenants, issues, &[])
}

pub fn start_sim_with(tenants: usize, issues: usize, extra: &[&str]) -> Sim {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .args([
            "--tenants",
            &tenants.to_string(),
            "--issues",
            &issues.to_string(),
        ])
        .args(["--seed", &SEED.to_string(), "--churn-every", "0s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "simulator");
    Sim {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `nats-server -js` on a free port with its store in a temporary directory, when installed.
pub struct Nats {
    child: Child,
    _store: tempfile::TempDir,
    pub url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nats {
    /// The nats-server's process id (its CPU is read from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub fn start_nats() -> Option<Nats> {
    let bin = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "nats-server");
    Some(Nats {
        child,
        _store: store,
        url: format!("nats://127.0.0.1:{port}"),
    })
}

/// The scenario names given after `--`, or `None` when the binary runs as a test
/// (`cargo test --all-targets` runs bench binaries in test mode: they do nothing there).
pub fn bench_args() -> Option<Vec<String>> {
    if std::env::args().any(|a| a == "--test" || a == "--list")
        || !std::env::args().any(|a| a == "--bench")
    {
        return None;
    }
    Some(
        std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect(),
    )
}

/// `GET url` as JSON (`null` when the server does not answer or answers something else).
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let Ok(resp) = client.get(url).send().await else {
        return serde_json::Value::Null;
    };
    let body = resp.bytes().await.unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or_default()
}

/// CPU seconds (user + system) of process `pid`, all threads.
/// NaN when the process is gone (a replica that died mid-run): the report shows NaN for it
/// instead of the bench stopping.
pub fn cpu_of(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some(after) = s.rfind(')').and_then(|i| s.get(i + 2..)) else {
        return f64::NAN;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name; ticks of 1/100 s.
    match (
        f.get(11).and_then(|v| v.parse::<u64>().ok()),
        f.get(12).and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(u), Some(s)) => (u + s) as f64 / 100.0,
        _ => f64::NAN,
    }
}

/// The tokio runtime a bench binary runs its scenarios on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the connector and waits until its sinks took `expected` events: the running app, the
/// wall time and the CPU seconds of this process meanwhile.
pub async fn run_until_delivered(
    settings: wiz_connector::config::Settings,
    expected: u64,
) -> (wiz_connector::app::App, f64, f64) {
    let cpu0 = cpu_of(std::process::id());
    let started = Instant::now();
    let app = wiz_connector::app::App::start(settings, Default::default())
        .await
        .unwrap();
    while app
        .sink_stats
        .events
        .load(std::sync::atomic::Ordering::Relaxed)
        < expected
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    (app, wall, cpu_of(std::process::id()) - cpu0)
}
