//! Output formats end to end (issue 21): `wiz-connector run` with three file sinks, `native`,
//! `ocsf` and `ecs`, over all five feeds. A format changes only the bytes: a clean run gives each
//! sink the same events with the same ids in the same order, and after kill -9 at random moments
//! each sink has every detection and audit entry and, for every finding, the same last event
//! (its current state).

mod common;
#[path = "support/formats.rs"]
mod formats;
#[path = "support/ocsf.rs"]
mod ocsf;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use formats::{ecs_problems, id_of, item_of};
use serde_json::Value;
use wiz_connector::format::Format;
use wiz_connector::sim::{SimTenantSpec, Simulator, SimulatorOptions};

const PAGE: usize = 5;

struct Outputs {
    _dir: tempfile::TempDir,
    paths: Vec<(Format, PathBuf)>,
}

/// A configuration of every tenant of `sim` with all five feeds and one file sink per format.
fn config(sim: &Simulator) -> (ConfigDir, Outputs) {
    let dir = tempfile::tempdir().unwrap();
    let mut body = sim_config(
        sim,
        &format!("poll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = {PAGE}\nincremental_overlap = \"2s\"\nwatch_interval = \"0s\"\nfeeds = [\"issues\", \"vulnerabilities\", \"detections\", \"audit\", \"cloud_configuration\"]"),
        "rate_limit = 50",
    );
    let mut paths = Vec::new();
    for f in Format::ALL {
        let path = dir.path().join(format!("{}.jsonl", f.as_str()));
        body.push_str(&format!(
            "[sinks.{0}]\ntype = \"file\"\npath = \"{1}\"\nformat = \"{0}\"\n",
            f.as_str(),
            path.display()
        ));
        paths.push((f, path));
    }
    (write_config(&body), Outputs { _dir: dir, paths })
}

/// What the simulator holds now: detection and audit ids, and each finding's current node.
struct Truth {
    detections: Vec<String>,
    audit: Vec<String>,
    /// (feed, id) → (status, the field that tells its state apart: resolvedAt or result).
    findings: Vec<((String, String), Value, Value)>,
}

fn truth(sim: &Simulator, client: &str) -> Truth {
    sim.feeds(client, |f| Truth {
        detections: f.detections.iter().map(|d| d.id.clone()).collect(),
        audit: f.audit.iter().map(|a| a.id.clone()).collect(),
        findings: f
            .vulnerabilities
            .iter()
            .map(|v| {
                (
                    ("vulnerabilities".to_string(), v.id.clone()),
                    serde_json::json!(v.status),
                    serde_json::json!(v.resolved_at),
                )
            })
            .chain(f.configuration.iter().map(|c| {
                (
                    ("cloud_configuration".to_string(), c.id.clone()),
                    serde_json::json!(c.status),
                    serde_json::json!(c.result),
                )
            }))
            .collect(),
    })
}

/// One sink's output, read in its format: per (feed, item) the ids of its events in order, and
/// the node of its last event.
struct Seen {
    ids: Vec<String>,
    events: HashMap<(String, String), Vec<String>>,
    last: HashMap<(String, String), Option<Value>>,
}

fn seen(format: Format, path: &Path) -> Seen {
    let mut s = Seen {
        ids: Vec::new(),
        events: HashMap::new(),
        last: HashMap::new(),
    };
    for line in complete_lines(path) {
        let id = id_of(format, &line);
        let (feed, item, node) = item_of(format, &line);
        s.ids.push(id.clone());
        s.events
            .entry((feed.clone(), item.clone()))
            .or_default()
            .push(id);
        s.last.insert((feed, item), node);
    }
    s
}

/// What `s` still lacks of `t`: a detection or audit entry never delivered, a finding whose
/// last event is not its current state.
fn gaps(s: &Seen, t: &Truth) -> Vec<String> {
    let mut gaps = Vec::new();
    for (feed, ids) in [("detections", &t.detections), ("audit", &t.audit)] {
        for id in ids {
            if !s.events.contains_key(&(feed.to_string(), id.clone())) {
                gaps.push(format!("{feed} {id}"));
            }
        }
    }
    for (key, status, state) in &t.findings {
        let field = if key.0 == "vulnerabilities" {
            "resolvedAt"
        } else {
            "result"
        };
        match s.last.get(key) {
            Some(Some(node)) if node["status"] == *status && node[field] == *state => {}
            other => gaps.push(format!("{key:?} ({status}): last node {other:?}")),
        }
    }
    gaps
}

/// Waits until every sink has caught up with what the simulator holds now.
async fn caught_up(sim: &Simulator, client: &str, out: &Outputs) {
    let t = truth(sim, client);
    wait_for("every format caught up", Duration::from_secs(120), || {
        for (f, path) in &out.paths {
            let g = gaps(&seen(*f, path), &t);
            if !g.is_empty() {
                return Err(format!(
                    "{}: {} gaps, first {:?}",
                    f.as_str(),
                    g.len(),
                    &g[..g.len().min(3)]
                ));
            }
        }
        Ok(())
    })
    .await;
}

/// Every OCSF line validates and every ECS line has what ECS needs.
fn check_schemas(out: &Outputs) {
    let schema = ocsf::Schema::bundled();
    for (f, path) in &out.paths {
        for line in complete_lines(path) {
            match f {
                Format::Ocsf => {
                    let r = schema.validate(&line);
                    assert!(
                        r.errors.is_empty() && r.undefined.is_empty(),
                        "{r:?}\n{line}"
                    );
                }
                Format::Ecs => {
                    let p = ecs_problems(&line);
                    assert!(p.is_empty(), "{p:?}\n{line}");
                }
                Format::Native => {}
            }
        }
    }
}

fn sim_options() -> SimulatorOptions {
    SimulatorOptions {
        tenants: vec![SimTenantSpec::numbered(0, 42, 40)],
        latency: Duration::from_millis(10),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_gives_every_format_the_same_events_in_the_same_order() {
    let sim = sim_with(sim_options()).await;
    let client = sim.tenants()[0].client_id.clone();
    let (cfg, out) = config(&sim);
    let mut child = spawn_run(&cfg.path);
    caught_up(&sim, &client, &out).await;
    // Changes in every feed, picked up by the next polls.
    sim.churn(&client, 4);
    caught_up(&sim, &client, &out).await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);

    let all: Vec<(Format, Seen)> = out.paths.iter().map(|(f, p)| (*f, seen(*f, p))).collect();
    let native = &all[0].1;
    assert!(native.ids.len() > 100, "{} events", native.ids.len());
    let feeds: std::collections::BTreeSet<&str> =
        native.events.keys().map(|(f, _)| f.as_str()).collect();
    assert_eq!(feeds.len(), 5, "{feeds:?}");
    for (f, s) in &all[1..] {
        assert_eq!(
            s.ids,
            native.ids,
            "{} has other events than native",
            f.as_str()
        );
        assert_eq!(s.events, native.events, "{}", f.as_str());
    }
    check_schemas(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_format_has_every_event_and_the_same_last_state() {
    let sim = sim_with(sim_options()).await;
    let client = sim.tenants()[0].client_id.clone();
    let (cfg, out) = config(&sim);
    let native_path = out.paths[0].1.clone();
    for round in 0..env_count("WIZ_FORMAT_CRASH_KILLS", 6) {
        sim.churn(&client, 3);
        run_and_kill(&cfg.path, &native_path, round, Duration::from_millis(1500)).await;
    }
    let mut child = spawn_run_started(&cfg.path, &sim, &client).await;
    caught_up(&sim, &client, &out).await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);

    let all: Vec<(Format, Seen)> = out.paths.iter().map(|(f, p)| (*f, seen(*f, p))).collect();
    let native = &all[0].1;
    for (f, s) in &all[1..] {
        // The same items, each ending with the same event (its current state, same id).
        assert_eq!(
            s.events.keys().collect::<std::collections::BTreeSet<_>>(),
            native.events.keys().collect(),
            "{}",
            f.as_str()
        );
        for (key, ids) in &native.events {
            assert_eq!(s.events[key].last(), ids.last(), "{} {key:?}", f.as_str());
        }
        // Detections and audit entries never change: one id each, whatever the format.
        for (key, ids) in &s.events {
            if key.0 == "detections" || key.0 == "audit" {
                let want = &native.events[key][0];
                assert!(
                    ids.iter().all(|i| i == want),
                    "{} {key:?}: {ids:?}",
                    f.as_str()
                );
            }
        }
    }
    check_schemas(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switching_a_sink_to_ocsf_sends_a_baseline_in_ocsf_then_changes() {
    use wiz_connector::app::{App, AppOptions};
    use wiz_connector::config::{load, EnvSource};
    let sim = sim(2, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.jsonl");
    let lake = dir.path().join("lake.jsonl");
    let base = format!(
        "{}[sinks.all]\ntype = \"file\"\npath = \"{}\"\n[sinks.lake]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(&sim, "poll_interval = \"1s\"\nstartup_jitter = \"0s\"", ""),
        all.display(),
        lake.display()
    );
    let cfg = write_config(&base);
    let settings = load(&cfg.path, &EnvSource::Fixed(HashMap::new())).unwrap();
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    let first: usize = open_ids(&sim).values().map(|s| s.len()).sum();
    wait_until("the first sweeps", Duration::from_secs(60), || {
        read_lines(&lake).len() == first
    })
    .await;
    let native_lines = read_lines(&lake).len();
    std::fs::write(
        &cfg.path,
        base.replace(
            &format!("path = \"{}\"\n", lake.display()),
            &format!("path = \"{}\"\nformat = \"ocsf\"\n", lake.display()),
        ),
    )
    .unwrap();
    let summary = app.reloader().reload("test").await.unwrap();
    assert!(summary.sinks_changed);
    // The lake now gets every tenant's current issues again, in OCSF, as a baseline.
    let open = open_ids(&sim);
    let want: BTreeSet<(String, String)> = open
        .iter()
        .flat_map(|(t, ids)| ids.iter().map(move |i| (t.clone(), i.clone())))
        .collect();
    let baseline = |lines: &[Value]| -> BTreeSet<(String, String)> {
        lines
            .iter()
            .filter(|e| e["unmapped"]["baseline"] == true)
            .map(|e| {
                (
                    e["metadata"]["tenant_uid"].as_str().unwrap().to_string(),
                    e["finding_info"]["uid"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    wait_until("the baseline in OCSF", Duration::from_secs(60), || {
        baseline(&read_lines(&lake)[native_lines..]) == want
    })
    .await;
    // Then changes, in OCSF, the same events as the native sink's.
    for t in sim.tenants() {
        sim.churn(&t.client_id, 3);
    }
    let before = read_lines(&lake).len();
    wait_until("changes in OCSF", Duration::from_secs(60), || {
        read_lines(&lake)[before..]
            .iter()
            .any(|e| e["unmapped"]["baseline"].is_null())
    })
    .await;
    let schema = ocsf::Schema::bundled();
    let native_ids: BTreeSet<String> = read_lines(&all)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for e in &read_lines(&lake)[native_lines..] {
        let r = schema.validate(e);
        assert!(r.errors.is_empty() && r.undefined.is_empty(), "{r:?}\n{e}");
        if e["unmapped"]["baseline"].is_null() {
            assert!(
                native_ids.contains(e["metadata"]["uid"].as_str().unwrap()),
                "{e}"
            );
        }
    }
    for i in 0..2 {
        assert_eq!(app.health.get(&format!("t{i}")).unwrap().restarts, 0);
    }
    app.shutdown().await.unwrap();
}
