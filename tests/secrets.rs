//! A client secret or a bearer token never appears in logs at trace level (ours and our
//! dependencies'), in `validate` or `check` output, or in errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use wiz_connector::sim::{Fault, SimTenantSpec, SimulatorOptions};
use wiz_connector::wiz::{IssueFilter, IssueOrder, WizHttp};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} leaked {s:?}:\n{text}");
    }
    // Every token the simulator issues starts with this.
    assert!(
        !text.contains("simtok_"),
        "{what} leaked a bearer token:\n{text}"
    );
}

#[tokio::test]
async fn no_secret_or_token_in_trace_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut denied = SimTenantSpec::numbered(1, 42, 5);
    denied.read_issues_scope = false;
    let sim = sim_with(SimulatorOptions {
        tenants: vec![SimTenantSpec::numbered(0, 42, 30), denied],
        ..Default::default()
    })
    .await;
    let secrets: Vec<String> = sim
        .tenants()
        .iter()
        .map(|t| t.client_secret.clone())
        .collect();
    let body = sim_config(&sim, &format!("page_size = 7\n{FAST_RETRIES}"), "");
    let http = WizHttp::new().unwrap();
    let ok = http.tenant(spec(&body, "t0"));
    let no_scope = http.tenant(spec(&body, "t1"));
    let wrong = http.tenant(spec(&body.replace(&secrets[0], "wrong-secret-xyz"), "t0"));

    let filter = IssueFilter {
        status: vec!["OPEN".into()],
        ..Default::default()
    };
    let mut sweep = ok.sweep(filter.clone(), IssueOrder::CREATED_ASC);
    let mut errors = Vec::new();
    while let Some(_page) = sweep.next_page().await.unwrap() {}
    sim.revoke_tokens("sim-client-0000");
    sim.push_faults(
        "sim-client-0000",
        [Fault::RateLimited { retry_after: None }, Fault::Downstream],
    );
    ok.fetch_page(&filter, IssueOrder::CREATED_ASC, 3, None)
        .await
        .unwrap();
    errors.push(no_scope.check().await.unwrap_err().to_string());
    errors.push(wrong.check().await.unwrap_err().to_string());
    drop(sim);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    assert!(
        logs.contains("wiz answered 401; obtained a new token"),
        "the flow ran: {logs}"
    );
    let mut all = secrets.iter().map(String::as_str).collect::<Vec<_>>();
    all.push("wrong-secret-xyz");
    assert_clean("trace logs", &logs, &all);
    assert_clean("errors", &errors.join("\n"), &all);
}

/// A webhook token (tenant t1's in the run below).
const HOOK_TOKEN: &str = "hook-token-never-logged-5d2a9e";
/// A write-back credential's secret.
const WRITE_SECRET: &str = "write-secret-never-logged-77f3";

#[tokio::test]
async fn validate_and_check_output_never_show_the_secret() {
    let sim = sim(1, 5).await;
    let secret = sim.tenants()[0].client_secret.clone();
    let mut body = sim_config(&sim, "", "");
    body.push_str(
        &tenant_toml(
            &sim,
            "env-one",
            &sim.tenants()[0],
            "webhook_token = \"${T_HOOK}\"\nwrite_back = true\nwrite_client_id = \"w-1\"\nwrite_client_secret = \"${T_WRITE}\"\nfeeds = [\"issues\", \"vulnerabilities\", \"detections\", \"audit\", \"cloud_configuration\"]",
        )
        .replace(&secret, "${T_SECRET}"),
    );
    body.push_str("[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"https://splunk.example:8088\"\ntoken = \"${T_HEC}\"\n");
    body.push_str("[sinks.elastic]\ntype = \"elasticsearch\"\nurl = \"https://es.example:9200\"\napi_key = \"${T_ES}\"\n");
    body.push_str("[sinks.elastic_basic]\ntype = \"elasticsearch\"\nurl = \"https://es.example:9200\"\nusername = \"wiz\"\npassword = \"${T_ESPW}\"\n");
    body.push_str("[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"kafka.example:9093\"\ntls = true\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"wiz\"\nsasl_password = \"${T_SASL}\"\n");
    body.push_str("[sinks.sentinel]\ntype = \"sentinel\"\ntenant_id = \"t-1\"\nclient_id = \"c-1\"\nclient_secret = \"${T_AZ}\"\nendpoint = \"https://dce.example\"\ndcr_id = \"dcr-1\"\nstream = \"Custom-Wiz_CL\"\n");
    let cfg = write_config(&body);
    // `wiz-connector <command> --config <cfg>` at trace level, with the secret in the environment.
    let run = |command: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
            .args([command, "--config"])
            .arg(&cfg.path)
            .env("T_SECRET", &secret)
            .env("T_HOOK", HOOK_TOKEN)
            .env("T_WRITE", WRITE_SECRET)
            .env("T_HEC", "hec-token-in-validate-0077")
            .env("T_ES", "es-api-key-in-validate-0078")
            .env("T_ESPW", "es-password-in-validate-0079")
            .env("T_AZ", "entra-secret-in-validate-0080")
            .env("T_SASL", "sasl-password-in-validate-0081")
            .env("RUST_LOG", "trace")
            .output()
    };

    let out = run("validate").await.unwrap();
    assert!(out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("[REDACTED] (from ${T_SECRET})"), "{text}");
    assert_clean(
        "validate",
        &text,
        &[
            &secret,
            HOOK_TOKEN,
            WRITE_SECRET,
            "hec-token-in-validate-0077",
            "es-api-key-in-validate-0078",
            "es-password-in-validate-0079",
            "entra-secret-in-validate-0080",
            "sasl-password-in-validate-0081",
        ],
    );
    assert!(text.contains("splunk_hec"), "the HEC sink is shown: {text}");
    assert!(
        text.contains("elasticsearch") && text.contains("sentinel") && text.contains("kafka"),
        "the SIEM sinks are shown: {text}"
    );

    let out = run("check").await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("t0: ok"), "{stdout}");
    assert!(
        stdout.contains("env-one: ok (token exchange and a 1-row query of every feed"),
        "{stdout}"
    );
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_clean("check", &text, &[&secret, HOOK_TOKEN, WRITE_SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_trace_level_through_a_secret_rotation_leaks_nothing() {
    use std::process::Stdio;
    use std::time::Duration;
    let sim = sim(2, 10).await;
    let old_secret = sim.tenants()[0].client_secret.clone();
    let other_secret = sim.tenants()[1].client_secret.clone();
    const ADMIN_TOKEN: &str = "admin-token-never-logged-7c1e";
    // A HEC sink too, with acknowledgement: its token goes in a header of every request.
    const HEC_TOKEN: &str = "5e1f0c2a-hec-token-never-logged-0042";
    let hec = wiz_connector::sim::hec::HecSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        wiz_connector::sim::hec::HecOptions {
            tokens: vec![HEC_TOKEN.into()],
            ack: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Elasticsearch with an API key, and Sentinel with an Entra secret (whose tokens are
    // secrets too).
    const ES_KEY: &str = "ZXMta2V5LW5ldmVyLWxvZ2dlZDowMDQz";
    let es = wiz_connector::sim::elastic::ElasticSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        wiz_connector::sim::elastic::ElasticOptions {
            api_keys: vec![ES_KEY.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    const AZ_SECRET: &str = "entra~secret~never~logged~0044";
    let az = wiz_connector::sim::sentinel::SentinelSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        wiz_connector::sim::sentinel::SentinelOptions {
            apps: vec![(
                wiz_connector::sim::sentinel::CLIENT_ID.into(),
                AZ_SECRET.into(),
            )],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let secret_file = dir.path().join("t0.secret");
    std::fs::write(&secret_file, &old_secret).unwrap();
    let hooks_port = free_port();
    let body = sim_config(
        &sim,
        "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\nwatch_interval = \"0s\"",
        "",
    )
    .replace(
        &format!("client_secret = \"{old_secret}\""),
        &format!("client_secret_file = \"{}\"", secret_file.display()),
    )
    .replace(
        "[admin]\n",
        &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"),
    ) + &format!(
        "webhook_token = \"{HOOK_TOKEN}\"\n[hooks]\nlisten = \"127.0.0.1:{hooks_port}\"\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"{}\"\ntoken = \"{HEC_TOKEN}\"\nack = true\n[sinks.elastic]\ntype = \"elasticsearch\"\nurl = \"{}\"\napi_key = \"{ES_KEY}\"\n[sinks.sentinel]\ntype = \"sentinel\"\ntenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{AZ_SECRET}\"\nauthority = \"{}\"\nendpoint = \"{}\"\ndcr_id = \"{}\"\nstream = \"Custom-WizIssues_CL\"\n",
        events.display(),
        hec.base(),
        es.base(),
        wiz_connector::sim::sentinel::TENANT_ID,
        wiz_connector::sim::sentinel::CLIENT_ID,
        az.base(),
        az.base(),
        wiz_connector::sim::sentinel::DCR_ID,
    );
    let cfg = write_config(&body);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&cfg.path)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let mut r = stderr;
        let _ = r.read_to_string(&mut s).await;
        s
    });
    wait_until("events from both tenants", Duration::from_secs(30), || {
        let lines = std::fs::read_to_string(&events).unwrap_or_default();
        lines.contains("\"tenant\":\"t0\"") && lines.contains("\"tenant\":\"t1\"")
    })
    .await;
    wait_until("events at Splunk", Duration::from_secs(30), || {
        hec.counters().ack_queries >= 1 && !hec.events().is_empty()
    })
    .await;
    wait_until(
        "events at Elasticsearch and Sentinel",
        Duration::from_secs(30),
        || !es.docs().is_empty() && !az.records().is_empty(),
    )
    .await;
    // Hints for t1 (the last tenant table, so the token above is its): a right and a wrong token.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for (token, status) in [(HOOK_TOKEN, 202), ("hook-token-wrong-guess-0000", 401)] {
        let answer = http
            .post(format!("http://127.0.0.1:{hooks_port}/hooks/wiz/t1"))
            .header("authorization", format!("Bearer {token}"))
            .body(r#"{"issue": {"id": "no-such-issue"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status);
    }
    // Rotate t0's secret by file (to one Wiz refuses, so the error path is logged too) and reload.
    std::fs::write(&secret_file, "rotated-secret-not-valid-9f2").unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(
        "the rotated (wrong) secret used",
        Duration::from_secs(30),
        || sim.counters("sim-client-0000").token_requests >= 2,
    )
    .await;
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let logs = logs.await.unwrap();
    assert!(logs.contains("\"level\":\"TRACE\""), "trace logging was on");
    assert!(
        logs.contains("configuration reloaded"),
        "the rotation was applied"
    );
    assert!(
        logs.contains("could not authenticate to wiz"),
        "the rotated secret was tried"
    );
    assert_clean(
        "run logs",
        &logs,
        &[
            &old_secret,
            &other_secret,
            "rotated-secret-not-valid-9f2",
            ADMIN_TOKEN,
            HOOK_TOKEN,
            "hook-token-wrong-guess-0000",
            HEC_TOKEN,
            ES_KEY,
            AZ_SECRET,
        ],
    );
    let tokens = az.issued_tokens();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_clean("run logs", &logs, &[t]);
    }
}
