//! `check --sinks` (issue 22): one line per sink from a real round trip with its destination,
//! the same clear errors as a failed write, nothing delivered, and the exit code.

mod common;

use common::*;
use wiz_connector::sim::elastic::{ElasticOptions, ElasticSimulator};
use wiz_connector::sim::hec::{HecOptions, HecSimulator};
use wiz_connector::sim::sentinel::{
    SentinelOptions, SentinelSimulator, CLIENT_ID, CLIENT_SECRET, DCR_ID, TENANT_ID,
};

const HEC_TOKEN: &str = "00000000-0000-4000-8000-000000000001";
const ES_KEY: &str = "c2ltLWtleS1pZDpzaW0ta2V5LXNlY3JldA==";

async fn check_sinks(config: &str) -> (i32, String, String) {
    let cfg = write_config(config);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args(["check", "--sinks", "--config"])
        .arg(&cfg.path)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sink_gets_one_line_from_a_round_trip_and_nothing_is_delivered() {
    let sim = sim(1, 5).await;
    let hec = HecSimulator::start("127.0.0.1:0".parse().unwrap(), HecOptions::default())
        .await
        .unwrap();
    let es = ElasticSimulator::start("127.0.0.1:0".parse().unwrap(), ElasticOptions::default())
        .await
        .unwrap();
    let az = SentinelSimulator::start("127.0.0.1:0".parse().unwrap(), SentinelOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sentinel = |name: &str, secret: &str, stream: &str| {
        format!(
            "[sinks.{name}]\ntype = \"sentinel\"\ntenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\nauthority = \"{b}\"\nendpoint = \"{b}\"\ndcr_id = \"{DCR_ID}\"\nstream = \"{stream}\"\n",
            b = az.base()
        )
    };
    let good = format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"{h}\"\ntoken = \"{HEC_TOKEN}\"\n[sinks.elastic]\ntype = \"elasticsearch\"\nurl = \"{e}\"\napi_key = \"{ES_KEY}\"\nindex = \"logs-wiz.{{feed}}-{{tenant}}\"\n{}",
        sim_config(&sim, "", ""),
        dir.path().join("archive.jsonl").display(),
        sentinel("azure", CLIENT_SECRET, "Custom-WizIssues_CL"),
        h = hec.base(),
        e = es.base(),
    );
    let (code, out, err) = check_sinks(&good).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let line = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("sink {name} (")))
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
    };
    assert!(line("archive").starts_with("sink archive (file): ok ("));
    assert!(
        line("splunk").contains("(splunk_hec): ok (token accepted"),
        "{out}"
    );
    assert!(
        line("elastic").contains("(elasticsearch): ok (credentials accepted (user api-key); `logs-wiz.issues-t0` is no data stream yet")
            && line("elastic").contains("settings filled for tenant t0, feed issues"),
        "{out}"
    );
    assert!(
        line("azure").contains("(sentinel): ok (token issued; /dataCollectionRules/")
            && line("azure").contains("accepts uploads"),
        "{out}"
    );
    // A real round trip each, and nothing delivered.
    assert!(hec.counters().requests >= 1);
    assert!(hec.events().is_empty());
    assert_eq!(az.counters().tokens, 1);
    assert!(az.records().is_empty());
    assert!(es.docs().is_empty());

    // Each broken the way an operator breaks it: its own error, exit code 1.
    let broken =
        good.replace(
            &format!("token = \"{HEC_TOKEN}\""),
            "token = \"not-the-token\"",
        )
        .replace(
            &format!("api_key = \"{ES_KEY}\""),
            "api_key = \"d3Jvbmc6a2V5\"",
        ) + &sentinel("azure_typo", CLIENT_SECRET, "Custom-Typo_CL")
            + &sentinel("azure_secret", "wrong-secret", "Custom-WizIssues_CL");
    let (code, out, err) = check_sinks(&broken).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("4 of 6 sink(s) failed the check"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let line = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("sink {name} (")))
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
    };
    assert!(
        line("splunk").contains("Invalid token (code 4): the token is not valid"),
        "{out}"
    );
    assert!(
        line("elastic").contains("refused the credentials")
            && line("elastic").contains("check the sink's api_key"),
        "{out}"
    );
    assert!(
        line("azure_typo").contains("InvalidStream")
            && line("azure_typo").contains("declared in the DCR"),
        "{out}"
    );
    assert!(
        line("azure_secret").contains("invalid_client")
            && line("azure_secret").contains("the client secret is not valid"),
        "{out}"
    );
    assert!(line("azure").contains(": ok ("), "{out}");
    assert!(!out.contains("wrong-secret") && !out.contains("not-the-token"));
    assert!(az.records().is_empty() && es.docs().is_empty() && hec.events().is_empty());
}
