//! The binary as a user runs it: `simulate`, `check`, `validate`, exit codes and messages.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_wiz-connector");

async fn run(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn simulate_serves_tenants_that_check_accepts() {
    let mut child = Command::new(BIN)
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
            "2",
            "--issues",
            "20",
            "--churn-every",
            "0s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The snippet ends after the second tenant's last line.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut snippet = String::new();
    let read = async {
        let mut tables = 0;
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("[tenants.") {
                tables += 1;
            }
            snippet.push_str(&l);
            snippet.push('\n');
            if tables == 2 && l.starts_with("allow_insecure_endpoints") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("simulator printed its tenants");
    assert!(snippet.contains("http://127.0.0.1:"), "{snippet}");
    let cfg = common::write_config(&snippet);
    let (code, stdout, _) = run(&["check"], &cfg.path).await;
    assert_eq!(code, 0, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("sim-0000: ok"), "{stdout}");
    assert!(lines[1].starts_with("sim-0001: ok"), "{stdout}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn simulate_with_hec_prints_a_sink_that_validates_and_a_hec_that_takes_events() {
    let hec_port = common::free_port();
    let mut child = Command::new(BIN)
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
            "1",
            "--issues",
            "5",
        ])
        .args([
            "--churn-every",
            "0s",
            "--hec",
            &format!("127.0.0.1:{hec_port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut snippet = String::new();
    let read = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            snippet.push_str(&l);
            snippet.push('\n');
            if l.starts_with("ack = ") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("simulator printed its tenants and the sink");
    assert!(snippet.contains("type = \"splunk_hec\""), "{snippet}");
    let cfg = common::write_config(&snippet);
    let (code, stdout, stderr) = run(&["validate"], &cfg.path).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The printed token is the one the HEC simulator takes.
    let token = snippet
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .and_then(|t| t.strip_suffix('"'))
        .unwrap()
        .to_string();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{hec_port}/services/collector/event"
        ))
        .header("authorization", format!("Splunk {token}"))
        .body(r#"{"event": {"hello": "splunk"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn check_prints_one_line_per_tenant_and_fails_when_one_fails() {
    let sim = common::sim(2, 5).await;
    let mut body = common::sim_config(&sim, common::FAST_RETRIES, "");
    body = body.replace(&sim.tenants()[1].client_secret, "wrong");
    let cfg = common::write_config(&body);
    let (code, stdout, stderr) = run(&["check"], &cfg.path).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("t0: ok"), "{stdout}");
    // The updatedAt probe's answer (the simulator does not take it by default).
    assert!(
        lines[0].ends_with("; filterBy.updatedAt not taken: incremental polls use statusChangedAt (small tenants sweep fully)"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("t1: could not authenticate to wiz"),
        "{stdout}"
    );
    assert!(stderr.contains("1 of 2 tenant(s) failed"), "{stderr}");

    let (code, stdout, _) = run(&["check", "--tenant", "t0"], &cfg.path).await;
    assert_eq!((code, stdout.lines().count()), (0, 1), "{stdout}");
    let (code, _, stderr) = run(&["check", "--tenant", "nobody"], &cfg.path).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no tenant `nobody`") && stderr.contains("t0, t1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_invalid_config_exits_non_zero_and_names_file_tenant_and_key() {
    let cfg = common::write_config(
        "[tenants.acme]\nclient_id = \"c\"\nclient_secret = \"s\"\napi_url = \"https://api.us20.app.wiz.io/graphql\"\npage_size = 900\n",
    );
    for cmd in ["validate", "check"] {
        let (code, stdout, stderr) = run(&[cmd], &cfg.path).await;
        assert_ne!(code, 0, "{cmd}");
        assert!(stdout.is_empty(), "{cmd}: {stdout}");
        let want = format!(
            "{}: tenant `acme`: key `page_size`: must be between 1 and 500",
            cfg.path.display()
        );
        assert!(stderr.contains(&want), "{cmd}: {stderr}");
    }
    // WIZ_CONNECTOR_CONFIG sets the path when --config is absent.
    let out = Command::new(BIN)
        .arg("validate")
        .env("WIZ_CONNECTOR_CONFIG", &cfg.path)
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `page_size`"));
}

#[tokio::test]
async fn a_bad_worker_thread_count_is_refused_with_the_reason_and_a_good_one_runs() {
    let cfg = common::write_config(
        "[tenants.acme]\nclient_id = \"c\"\nclient_secret = \"s\"\napi_url = \"https://api.us20.app.wiz.io/graphql\"\n",
    );
    for (threads, ok) in [("0", false), ("two", false), ("1", true)] {
        let out = Command::new(BIN)
            .args(["validate", "--config"])
            .arg(&cfg.path)
            .env("TOKIO_WORKER_THREADS", threads)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{threads}: {stderr}");
        assert!(!stderr.contains("panicked"), "{threads}: {stderr}");
        if !ok {
            assert!(
                stderr.contains(&format!(
                    "TOKIO_WORKER_THREADS={threads}: must be a whole number of threads, at least 1"
                )),
                "{threads}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn check_reports_when_wiz_takes_the_updated_at_filter() {
    let sim = common::sim_with(wiz_connector::sim::SimulatorOptions {
        tenants: vec![wiz_connector::sim::SimTenantSpec::numbered(0, 42, 5)],
        accept_updated_at_filter: true,
        ..Default::default()
    })
    .await;
    let settings = common::settings(&common::sim_config(&sim, "", ""));
    let lines = wiz_connector::commands::check::check_all(&settings, None)
        .await
        .unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ok, "{}", lines[0].line);
    assert!(
        lines[0]
            .line
            .ends_with("; filterBy.updatedAt taken: incremental polls see every edit"),
        "{}",
        lines[0].line
    );
}

#[tokio::test]
async fn simulate_with_every_siem_prints_sinks_that_check_sinks_passes() {
    let ports = [
        common::free_port(),
        common::free_port(),
        common::free_port(),
    ];
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut child = Command::new(BIN)
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--tenants",
            "1",
            "--issues",
            "5",
            "--churn-every",
            "0s",
        ])
        .args(["--hec", &addr(ports[0]), "--hec-ack"])
        .args(["--elastic", &addr(ports[1])])
        .args(["--sentinel", &addr(ports[2])])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut snippet = String::new();
    let read = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            snippet.push_str(&l);
            snippet.push('\n');
            // The Sentinel table is printed last and ends with its format.
            if snippet.contains("[sinks.sentinel]") && l.starts_with("format = ") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("simulator printed its tenants and the sinks");
    let cfg = common::write_config(&snippet);
    let (code, stdout, stderr) = run(&["check", "--sinks"], &cfg.path).await;
    assert_eq!(code, 0, "{snippet}{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("sink elastic (elasticsearch): ok ("),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("sink sentinel (sentinel): ok ("),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(
            "sink splunk (splunk_hec): ok (token accepted, with indexer acknowledgement"
        ),
        "{stdout}"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn validate_warns_about_clustered_streams_on_old_nats() {
    let sim = common::sim(1, 3).await;
    let body = common::sim_config(&sim, "", "")
        + "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nreplica_id = \"r1\"\nreplicas = 3\n";
    let cfg = common::write_config(&body);
    let (code, _, stderr) = run(&["validate"], &cfg.path).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: cluster.replicas = 3")
            && stderr.contains("nats-server 2.9.x (nats-server issues 4320 and 5644)"),
        "{stderr}"
    );
    // One replica: no warning.
    let cfg = common::write_config(&body.replace("replicas = 3", "replicas = 1"));
    let (code, _, stderr) = run(&["validate"], &cfg.path).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning: cluster.replicas"), "{stderr}");
}
