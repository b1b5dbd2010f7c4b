//! Write-back against the simulator: each action sends Wiz's mutation, is audited as
//! `action.applied` (with who asked), and the issue's resulting change follows at once, marked
//! `"origin": "connector"`; repeats, bad input, a read-only token, a tenant without write-back, a
//! read-only service account and a lost answer are all handled without a second mutation.

mod common;
#[path = "support/ocsf.rs"]
mod ocsf;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::{Fault, SimTenantSpec, Simulator, SimulatorOptions};

const SOC: &str = "soc-token-write-0123456789";
const DASH: &str = "dashboard-token-read-0123456789";
const WRITER_SECRET: &str = "writer-secret-0123456789";

struct Setup {
    sim: Simulator,
    app: App,
    out: std::path::PathBuf,
    http: reqwest::Client,
    base: String,
    _dir: tempfile::TempDir,
}

/// t0 has write-back (its request timeout is 1 s); t1 does not; t2's service account cannot
/// write; t3 is t2's Wiz tenant with a second service account for writes. Polls are 300 s apart: what follows an action comes from its own lookup.
async fn setup() -> Setup {
    let mut read_only = SimTenantSpec::numbered(2, 42, 40);
    read_only.write_issues_scope = false;
    read_only.writer = Some(("sim-writer-0002".into(), WRITER_SECRET.into()));
    let sim = sim_with(SimulatorOptions {
        tenants: vec![
            SimTenantSpec::numbered(0, 42, 80),
            SimTenantSpec::numbered(1, 42, 10),
            read_only,
        ],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let tenants = sim.tenants();
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"300s\"\nstartup_jitter = \"0s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [admin.tokens.soc]\ntoken = \"{SOC}\"\npermission = \"write\"\n\
         [admin.tokens.dashboard]\ntoken = \"{DASH}\"\n\
         [sinks.out]\ntype = \"file\"\npath = \"{}\"\n\
         [sinks.lake]\ntype = \"file\"\npath = \"{}\"\nformat = \"ocsf\"\n",
        dir.path().join("state").display(),
        out.display(),
        dir.path().join("lake.jsonl").display()
    );
    body.push_str(&tenant_toml(
        &sim,
        "t0",
        &tenants[0],
        "write_back = true\nrate_limit = 20\nrequest_timeout = \"1s\"",
    ));
    body.push_str(&tenant_toml(&sim, "t1", &tenants[1], ""));
    body.push_str(&tenant_toml(&sim, "t2", &tenants[2], "write_back = true"));
    body.push_str(&tenant_toml(
        &sim,
        "t3",
        &tenants[2],
        &format!("write_back = true\nwrite_client_id = \"sim-writer-0002\"\nwrite_client_secret = \"{WRITER_SECRET}\""),
    ));
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until(
        "every tenant's first sweep",
        Duration::from_secs(30),
        || {
            ["t0", "t1", "t2", "t3"]
                .iter()
                .all(|t| app.health.get(t).is_some_and(|h| h.polls >= 1))
        },
    )
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = format!("http://{}", app.admin_addr());
    Setup {
        sim,
        app,
        out,
        http: reqwest::Client::new(),
        base,
        _dir: dir,
    }
}

impl Setup {
    async fn act(&self, token: &str, tenant: &str, issue: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!(
                "{}/tenants/{tenant}/issues/{issue}/actions",
                self.base
            ))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `wiz-connector action --tenant t0 <args>` against this connector, with the write token.
    async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
            .args(["action", "--tenant", "t0"])
            .args(args)
            .args(["--admin", &self.base, "--token", SOC])
            .output()
            .await
            .unwrap()
    }

    fn client(&self, n: usize) -> String {
        self.sim.tenants()[n].client_id.clone()
    }

    fn mutations(&self, n: usize) -> u64 {
        self.sim.counters(&self.client(n)).mutations
    }

    /// An open issue of tenant `n`, of `kind` (or any other type than it, with `not`).
    fn open_issue(&self, n: usize, kind: &str, not: bool) -> String {
        self.sim.issues(&self.client(n), |s| {
            s.issues
                .iter()
                .find(|i| i.status == "OPEN" && ((i.issue_type == kind) != not))
                .map(|i| i.id.clone())
                .expect("such an issue")
        })
    }

    fn events(&self, issue: &str) -> Vec<Value> {
        read_lines(&self.out)
            .into_iter()
            .filter(|l| l["issue_id"] == issue)
            .collect()
    }

    /// Waits (CONTRACT: within 5 s) for the event of `kind` about `issue`.
    async fn followed_by(&self, issue: &str, kind: &str) -> Value {
        wait_until(
            &format!("{kind} for {issue} (within 5 s)"),
            Duration::from_secs(5),
            || self.events(issue).iter().any(|e| e["kind"] == kind),
        )
        .await;
        self.events(issue)
            .into_iter()
            .rfind(|e| e["kind"] == kind)
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_action_sends_its_mutation_is_audited_and_its_change_follows_marked() {
    let s = setup().await;
    let other = s.open_issue(0, "THREAT_DETECTION", true);
    let threat = s.open_issue(0, "THREAT_DETECTION", false);

    // reject, with who asked in the audit event and the change marked as the connector's own.
    let (status, answer) = s
        .act(
            SOC,
            "t0",
            &other,
            json!({"action": "reject", "reason": "FALSE_POSITIVE"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"issue_id": other, "status": "REJECTED", "applied": true, "action": "reject"})
    );
    let audit = s.followed_by(&other, "action.applied").await;
    // It starts with its id, as every event does (the nats sink reads it from there).
    let text = std::fs::read_to_string(&s.out).unwrap();
    let line = text.lines().find(|l| l.contains("action.applied")).unwrap();
    assert_eq!(
        wiz_connector::event::event_id_of(line.as_bytes()),
        audit["id"].as_str()
    );
    assert_eq!(audit["requested_by"], "soc");
    assert_eq!(audit["action"], "reject");
    assert_eq!(audit["arguments"]["reason"], "FALSE_POSITIVE");
    assert_eq!(audit["tenant"], "t0");
    assert_eq!(
        audit["wiz_answer"]["updateIssue"]["issue"]["resolutionReason"],
        "FALSE_POSITIVE"
    );
    let change = s.followed_by(&other, "issue.rejected").await;
    assert_eq!(change["origin"], "connector");
    assert_eq!(change["status"], "REJECTED");
    // The same two events in OCSF: the action as an API Activity by the connector, the change
    // with its origin among the unmapped fields.
    let lake_path = s.out.with_file_name("lake.jsonl");
    wait_until("the change in OCSF too", Duration::from_secs(5), || {
        read_lines(&lake_path)
            .iter()
            .any(|e| e["metadata"]["uid"] == change["id"])
    })
    .await;
    let lake = read_lines(&lake_path);
    let by_uid = |id: &Value| {
        lake.iter()
            .find(|e| e["metadata"]["uid"] == *id)
            .unwrap_or_else(|| panic!("{id} in OCSF"))
            .clone()
    };
    let action = by_uid(&audit["id"]);
    assert_eq!(action["class_uid"], 6003);
    assert_eq!(action["api"]["operation"], "reject");
    assert_eq!(action["actor"]["user"]["name"], "soc");
    assert_eq!(action["unmapped"]["issue_id"], other.as_str());
    assert_eq!(action["unmapped"]["kind"], "action.applied");
    let rejected = by_uid(&change["id"]);
    assert_eq!(rejected["status_id"], 3, "Suppressed");
    assert_eq!(rejected["activity_id"], 3, "Close");
    assert_eq!(rejected["unmapped"]["origin"], "connector");
    let schema = ocsf::Schema::bundled();
    for e in [&action, &rejected] {
        let r = schema.validate(e);
        assert!(r.errors.is_empty() && r.undefined.is_empty(), "{r:?}\n{e}");
    }
    assert_eq!(s.mutations(0), 1);
    // A repeat: already rejected, nothing sent.
    let (status, answer) = s
        .act(
            SOC,
            "t0",
            &other,
            json!({"action": "reject", "reason": "FALSE_POSITIVE"}),
        )
        .await;
    assert_eq!((status, answer["applied"].clone()), (200, json!(false)));
    assert_eq!(s.mutations(0), 1, "no mutation for a repeat");

    // reopen.
    let (status, _) = s.act(SOC, "t0", &other, json!({"action": "reopen"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.followed_by(&other, "issue.reopened").await["origin"],
        "connector"
    );

    // note: the marker is in Wiz's note; a repeat sends nothing.
    let (status, _) = s
        .act(
            SOC,
            "t0",
            &other,
            json!({"action": "note", "note": "triaged by the SOC"}),
        )
        .await;
    assert_eq!(status, 200);
    let notes: Vec<String> = s.sim.issues(&s.client(0), |st| {
        st.issues
            .iter()
            .find(|i| i.id == other)
            .unwrap()
            .notes
            .iter()
            .map(|n| n.text.clone())
            .collect()
    });
    let ours: Vec<&String> = notes
        .iter()
        .filter(|n| n.starts_with("triaged by the SOC"))
        .collect();
    assert_eq!(ours.len(), 1, "{notes:?}");
    assert!(ours[0].contains("[wiz-connector "), "{}", ours[0]);
    let before = s.mutations(0);
    let (_, answer) = s
        .act(
            SOC,
            "t0",
            &other,
            json!({"action": "note", "note": "triaged by the SOC"}),
        )
        .await;
    assert_eq!(answer["applied"], false);
    assert_eq!(s.mutations(0), before);

    // set_due_date.
    let (status, _) = s
        .act(
            SOC,
            "t0",
            &other,
            json!({"action": "set_due_date", "due_date": "2027-01-31"}),
        )
        .await;
    assert_eq!(status, 200);
    let due = s.sim.issues(&s.client(0), |st| {
        st.issues
            .iter()
            .find(|i| i.id == other)
            .unwrap()
            .due_at
            .clone()
    });
    assert_eq!(due.as_deref(), Some("2027-01-31T00:00:00Z"));

    // resolve: needs a threat reason, and only a threat detection; both refused before anything
    // is sent.
    let before = s.mutations(0);
    let (status, answer) = s
        .act(SOC, "t0", &threat, json!({"action": "resolve"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["error"],
        "resolve needs a reason: MALICIOUS_THREAT, NOT_MALICIOUS_THREAT, SECURITY_TEST_THREAT, PLANNED_ACTION_THREAT or INCONCLUSIVE_THREAT",
        "{answer}"
    );
    let (status, answer) = s
        .act(
            SOC,
            "t0",
            &threat,
            json!({"action": "resolve", "reason": "FALSE_POSITIVE"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("is for a reject"),
        "{answer}"
    );
    let (status, answer) = s
        .act(
            SOC,
            "t0",
            &other,
            json!({"action": "resolve", "reason": "MALICIOUS_THREAT"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("threat-detection"),
        "{answer}"
    );
    assert_eq!(s.mutations(0), before);
    let (status, answer) = s
        .act(
            SOC,
            "t0",
            &threat,
            json!({"action": "resolve", "reason": "SECURITY_TEST_THREAT"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "RESOLVED");
    // The reason and a note (the default one) reached Wiz.
    let (reason, notes) = s.sim.issues(&s.client(0), |st| {
        let i = st.issues.iter().find(|i| i.id == threat).unwrap();
        (
            i.resolution_reason.clone(),
            i.notes.iter().map(|n| n.text.clone()).collect::<Vec<_>>(),
        )
    });
    assert_eq!(reason.as_deref(), Some("SECURITY_TEST_THREAT"));
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Resolved through wiz-connector (reason SECURITY_TEST_THREAT)")),
        "{notes:?}"
    );
    assert_eq!(
        s.followed_by(&threat, "issue.resolved").await["origin"],
        "connector"
    );

    // The metrics count them; no secret or token anywhere in what the sinks got.
    let metrics = s.app.observer_metrics_text();
    assert!(
        metrics.contains(
            "wiz_connector_write_back_actions_total{action=\"reject\",result=\"applied\"} 1"
        ),
        "{metrics}"
    );
    let sink = std::fs::read_to_string(&s.out).unwrap();
    for secret in [SOC, DASH, s.sim.tenants()[0].client_secret.as_str()] {
        assert!(!sink.contains(secret));
        assert!(!metrics.contains(secret));
    }
    s.app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_send_nothing_and_say_why() {
    let s = setup().await;
    let issue = s.open_issue(0, "THREAT_DETECTION", true);
    let reject = json!({"action": "reject", "reason": "WONT_FIX"});
    // Write-back off; a read-only admin token; an unknown tenant.
    let (status, answer) = s
        .act(SOC, "t1", &s.open_issue(1, "x", true), reject.clone())
        .await;
    assert_eq!(status, 403);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("write_back = true"),
        "{answer}"
    );
    let (status, answer) = s.act(DASH, "t0", &issue, reject.clone()).await;
    assert_eq!(status, 403);
    assert!(
        answer["error"].as_str().unwrap().contains("read-only"),
        "{answer}"
    );
    assert_eq!(s.act(SOC, "t9", &issue, reject.clone()).await.0, 404);
    // The read-only token still reads.
    let listed = s
        .http
        .get(format!("{}/tenants", s.base))
        .bearer_auth(DASH)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status().as_u16(), 200);
    // Bad input: 400 with the reason, nothing sent.
    for body in [
        json!({"action": "reject", "reason": "BORED"}),
        json!({"action": "reject"}),
        json!({"action": "set_due_date", "due_date": "2027-13-01"}),
        json!({"action": "note", "note": "x".repeat(1400)}),
        json!({"action": "archive"}),
        json!({"action": "reopen", "colour": "red"}),
    ] {
        let (status, answer) = s.act(SOC, "t0", &issue, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(s.act(SOC, "t0", "not an id", reject.clone()).await.0, 400);
    assert_eq!(s.mutations(0), 0, "nothing was sent");
    // An issue Wiz does not return.
    let (status, answer) = s.act(SOC, "t0", "0000-no-such-issue", reject.clone()).await;
    assert_eq!(status, 404);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("does not return"),
        "{answer}"
    );
    // A service account without write access: Wiz's words in a 502, with what to do.
    let read_only = s.open_issue(2, "x", true);
    let (status, answer) = s.act(SOC, "t2", &read_only, reject.clone()).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("Unauthorized"),
        "{answer}"
    );
    assert!(answer["hint"]
        .as_str()
        .unwrap()
        .contains("grant write:issues to the service account"));
    // The same Wiz tenant with a write credential of its own (t3): it writes.
    let (status, answer) = s.act(SOC, "t3", &read_only, reject).await;
    assert_eq!(
        (status, answer["status"].clone()),
        (200, json!("REJECTED")),
        "{answer}"
    );
    let (status_now, reason) = s.sim.issues(&s.client(2), |st| {
        let i = st.issues.iter().find(|i| i.id == read_only).unwrap();
        (i.status.clone(), i.resolution_reason.clone())
    });
    assert_eq!(
        (status_now.as_str(), reason.as_deref()),
        ("REJECTED", Some("WONT_FIX"))
    );
    s.app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_whose_answer_is_lost_is_applied_once() {
    let s = setup().await;
    let issue = s.open_issue(0, "THREAT_DETECTION", true);
    // The read answers; the mutation applies but answers after 2.5 s, past t0's 1 s timeout.
    s.sim.push_faults(
        &s.client(0),
        [Fault::Latency { ms: 0 }, Fault::SlowAnswer { ms: 2500 }],
    );
    let note = json!({"action": "note", "note": "escalated to the customer"});
    let (status, answer) = s.act(SOC, "t0", &issue, note.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["applied"], true,
        "settled by reading the issue again"
    );
    // The CLI, as a runbook would retry it: already there, nothing sent.
    let before = s.mutations(0);
    let out = s
        .cli(&[
            "--issue",
            &issue,
            "note",
            "--note",
            "escalated to the customer",
        ])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["applied"], false);
    assert_eq!(s.mutations(0), before);
    let notes = s.sim.issues(&s.client(0), |st| {
        st.issues
            .iter()
            .find(|i| i.id == issue)
            .unwrap()
            .notes
            .iter()
            .filter(|n| n.text.starts_with("escalated to the customer"))
            .count()
    });
    assert_eq!(notes, 1, "the note is in Wiz once");
    // The CLI exits non-zero on a refusal and says why.
    let out = s
        .cli(&["--issue", &issue, "reject", "--reason", "BORED"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("FALSE_POSITIVE"),
        "{err}"
    );
    assert!(!err.contains(SOC));
    s.app.shutdown().await.unwrap();
}
