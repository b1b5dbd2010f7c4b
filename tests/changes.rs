//! Change events and the durable state: the right kind once per change, nothing for unchanged
//! issues, also after a restart; a damaged state file is detected and the tenant resyncs.

mod common;

use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::Simulator;

const CLIENT: &str = "sim-client-0000";

fn body(
    sim: &Simulator,
    state: &std::path::Path,
    out: &std::path::Path,
    full_every: &str,
) -> String {
    // These tests tell incremental polls from full sweeps, so a small tenant must not sweep fully
    // on every poll (full_sweep_max_pages = 0; tests/freshness.rs covers that).
    let generated = sim_config(
        sim,
        &format!("poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nfull_sweep_interval = \"{full_every}\"\nfull_sweep_max_pages = 0\nincremental_overlap = \"1s\"\nwatch_interval = \"0s\""),
        "rate_limit = 50",
    );
    // Our own state directory instead of the fresh one sim_config makes.
    let config: Vec<String> = generated
        .lines()
        .map(|l| {
            if l.starts_with("state_dir = ") {
                format!("state_dir = \"{}\"", state.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    format!(
        "{}\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        config.join("\n"),
        out.display()
    )
}

/// A temporary directory (kept alive by the first value) with the paths of a state directory
/// and an events file in it.
fn scratch() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("events.jsonl"));
    (dir, state, out)
}

async fn start(body: &str) -> App {
    let app = App::start(settings(body), AppOptions::default())
        .await
        .unwrap();
    wait_until("ready", Duration::from_secs(10), || app.is_ready()).await;
    app
}

async fn poll(app: &App, polls: u64) {
    if polls > 1 {
        assert!(app.poll_now("t0").await);
    }
    wait_until("the poll", Duration::from_secs(20), || {
        app.health.get("t0").unwrap().polls >= polls
    })
    .await;
}

/// `(kind, issue_id)` of the events from line `from` on.
fn events_since(out: &std::path::Path, from: usize) -> Vec<(String, String)> {
    read_lines(out)[from..]
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["issue_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_give_the_right_kinds_once_and_nothing_else_also_after_a_restart() {
    let sim = sim(1, 30).await;
    let (_dir, state, out) = scratch();
    let open = sim.issues(CLIENT, |s| s.ids_with_status("OPEN"));
    let app = start(&body(&sim, &state, &out, "1h")).await;
    poll(&app, 1).await;
    let first = events_since(&out, 0);
    assert_eq!(first.len(), open.len());
    assert!(first.iter().all(|(k, _)| k == "issue.opened"));

    // Resolve one, reject one, add one, change a severity (not visible to an incremental poll).
    let (a, b, d) = (open[0].clone(), open[1].clone(), open[2].clone());
    let c = sim.issues(CLIENT, |s| {
        s.set_status(&a, "RESOLVED");
        s.set_status(&b, "REJECTED");
        s.set_severity(
            &d,
            if s.issues.iter().any(|i| i.id == d && i.severity == "LOW") {
                "HIGH"
            } else {
                "LOW"
            },
        );
        s.add()
    });
    poll(&app, 2).await;
    let mut second = events_since(&out, first.len());
    second.sort();
    assert_eq!(
        second,
        vec![
            ("issue.opened".to_string(), c.clone()),
            ("issue.rejected".to_string(), b.clone()),
            ("issue.resolved".to_string(), a.clone()),
        ]
    );
    sim.issues(CLIENT, |s| s.set_status(&a, "OPEN"));
    poll(&app, 3).await;
    assert_eq!(
        events_since(&out, first.len() + 3),
        vec![("issue.reopened".to_string(), a.clone())]
    );
    poll(&app, 4).await;
    let so_far = first.len() + 4;
    assert_eq!(read_lines(&out).len(), so_far, "a quiet poll emits nothing");
    app.shutdown().await.unwrap();

    // A new process on the same state: its first (incremental) poll emits nothing; a resync (a
    // full sweep) sees only the severity change.
    let app = start(&body(&sim, &state, &out, "1h")).await;
    poll(&app, 1).await;
    assert_eq!(
        read_lines(&out).len(),
        so_far,
        "nothing repeated after the restart"
    );
    assert!(app.resync("t0").await);
    wait_until("the full sweep", Duration::from_secs(20), || {
        app.health.get("t0").unwrap().polls >= 2
    })
    .await;
    assert_eq!(
        events_since(&out, so_far),
        vec![("issue.updated".to_string(), d.clone())]
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_is_detected_and_the_tenant_resyncs() {
    let sim = sim(1, 20).await;
    for damage in ["garbage", "truncated"] {
        let (_dir, state, out) = scratch();
        let cfg = body(&sim, &state, &out, "1h");
        let app = start(&cfg).await;
        poll(&app, 1).await;
        app.shutdown().await.unwrap();
        let before = read_lines(&out);
        let file = state.join("state.redb");
        match damage {
            "garbage" => std::fs::write(&file, vec![0xA5u8; 8192]).unwrap(),
            _ => {
                let len = std::fs::metadata(&file).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .unwrap()
                    .set_len(len / 3)
                    .unwrap();
            }
        }
        let app = start(&cfg).await;
        poll(&app, 1).await;
        let h = app.health.get("t0").unwrap();
        assert!(app.is_running());
        let after = read_lines(&out)[before.len()..].to_vec();
        let note = h
            .last_error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        assert!(note.contains("was unreadable"), "{damage}: {h:?}");
        // The resync re-delivers the open issues with the very same event ids (a consumer dedups).
        let ids = |v: &[serde_json::Value]| {
            let mut x: Vec<String> = v
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_string())
                .collect();
            x.sort();
            x
        };
        assert_eq!(ids(&after), ids(&before), "{damage}");
        app.shutdown().await.unwrap();
    }
}

/// Runs the full sweep an operator asks for (`POST /tenants/t0/poll?full=true`), as poll number
/// `polls`.
async fn resync(app: &App, polls: u64) {
    assert!(app.resync("t0").await);
    wait_until("the full sweep", Duration::from_secs(30), || {
        app.health.get("t0").unwrap().polls >= polls
    })
    .await;
}

/// Issues that vanish from Wiz (removed, or out of the service account's reach) are reported once
/// as resolved by the next full sweep, marked `vanished`; a status change an incremental poll
/// missed is reported from Wiz's own record; an issue that comes back is reopened under a new
/// event id. `unknown_id_not_found` picks how the simulated Wiz answers a lookup of a missing id.
async fn vanished_issues(unknown_id_not_found: bool) {
    let sim = sim_with(wiz_connector::sim::SimulatorOptions {
        tenants: vec![wiz_connector::sim::SimTenantSpec::numbered(0, 42, 40)],
        unknown_id_not_found,
        ..Default::default()
    })
    .await;
    let (_dir, state, out) = scratch();
    let cfg = body(&sim, &state, &out, "1h");
    let app = start(&cfg).await;
    poll(&app, 1).await;
    let first = read_lines(&out);
    let open = sim.issues(CLIENT, |s| s.ids_with_status("OPEN"));
    assert_eq!(first.len(), open.len());
    assert!(open.len() >= 6, "enough open issues to work with");

    // Three open issues disappear; a fourth is resolved without statusChangedAt moving (a change
    // that polling by statusChangedAt cannot see).
    let gone: Vec<_> = open[..3].to_vec();
    let silent = open[3].clone();
    let removed = sim.issues(CLIENT, |s| {
        let kept: Vec<_> = s
            .issues
            .iter()
            .filter(|i| gone.contains(&i.id))
            .cloned()
            .collect();
        for id in &gone {
            assert!(s.remove(id));
        }
        let i = s.issues.iter_mut().find(|i| i.id == silent).unwrap();
        i.status = "RESOLVED".into();
        kept
    });
    poll(&app, 2).await;
    assert_eq!(
        read_lines(&out).len(),
        first.len(),
        "an incremental poll cannot see either"
    );

    resync(&app, 3).await;
    let lines = read_lines(&out)[first.len()..].to_vec();
    let mut got: Vec<(String, String, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["issue_id"].as_str().unwrap().to_string(),
                l["kind"].as_str().unwrap().to_string(),
                l["vanished"] == true,
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, bool)> = gone
        .iter()
        .map(|id| (id.clone(), "issue.resolved".to_string(), true))
        .chain([(silent.clone(), "issue.resolved".to_string(), false)])
        .collect();
    want.sort();
    assert_eq!(got, want);
    for l in &lines {
        let id = l["issue_id"].as_str().unwrap();
        assert_eq!(l["status"], "RESOLVED", "{l}");
        if let Some(r) = removed.iter().find(|r| r.id == id) {
            // What was known before it vanished: the severity, and the console link.
            let opened = first.iter().find(|f| f["issue_id"] == id).unwrap();
            assert_eq!(l["severity"], opened["severity"], "{l}");
            assert_eq!(l["url"], opened["url"]);
            assert!(l["raw_event"].is_null() && l["title"].is_null() && l["resource"].is_null());
            assert_eq!(l["projects"], serde_json::json!([]));
            assert_ne!(l["id"], opened["id"]);
            assert_eq!(r.status, "OPEN");
        } else {
            assert_eq!(l["raw_event"]["status"], "RESOLVED");
            assert!(l.get("vanished").is_none(), "{l}");
        }
    }
    assert!(app
        .observer_metrics_text()
        .contains("wiz_connector_issues_vanished_total{tenant=\"t0\"} 3"));

    // Reported once: the next full sweep finds nothing new.
    let so_far = read_lines(&out).len();
    resync(&app, 4).await;
    assert_eq!(
        read_lines(&out).len(),
        so_far,
        "a vanished issue is reported once"
    );

    // One comes back exactly as it was: reopened, under an id neither of its earlier events had.
    let back = removed[0].clone();
    sim.issues(CLIENT, |s| s.issues.push(back.clone()));
    resync(&app, 5).await;
    let lines = read_lines(&out)[so_far..].to_vec();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "issue.reopened");
    assert_eq!(lines[0]["issue_id"].as_str().unwrap(), back.id);
    let earlier: Vec<serde_json::Value> = read_lines(&out)[..so_far]
        .iter()
        .filter(|l| l["issue_id"].as_str() == Some(back.id.as_str()))
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(earlier.len(), 2, "opened, then vanished");
    assert!(earlier.iter().all(|id| *id != lines[0]["id"]));
    app.shutdown().await.unwrap();

    // A new process on the same state: nothing is reported again.
    let so_far = read_lines(&out).len();
    let app = start(&cfg).await;
    poll(&app, 1).await;
    resync(&app, 2).await;
    assert_eq!(
        read_lines(&out).len(),
        so_far,
        "nothing repeated after a restart"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_issues_when_wiz_answers_not_found_for_an_unknown_id() {
    vanished_issues(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_issues_when_wiz_leaves_an_unknown_id_out() {
    vanished_issues(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lookup_answer_declares_nothing_vanished() {
    use wiz_connector::sim::Fault;
    let sim = sim(1, 30).await;
    let (_dir, state, out) = scratch();
    let app = start(&body(&sim, &state, &out, "1h")).await;
    poll(&app, 1).await;
    let before = read_lines(&out).len();
    let gone = sim.issues(CLIENT, |s| {
        let id = s.ids_with_status("OPEN")[0].clone();
        assert!(s.remove(&id));
        id
    });
    // The sweep's one page is answered normally (a zero delay); the lookup gets a node that
    // cannot be read, which might have been the issue asked for.
    sim.push_faults(
        CLIENT,
        [
            Fault::Latency { ms: 0 },
            Fault::Garbage {
                body:
                    r#"{"data":{"issues":{"nodes":[{"id":5}],"pageInfo":{"hasNextPage":false}}}}"#
                        .into(),
            },
        ],
    );
    resync(&app, 2).await;
    // The node is quarantined (one event, without an id: it has none that is a string), and
    // nothing is declared vanished.
    let quarantine = read_lines(&out)[before..].to_vec();
    assert_eq!(
        quarantine.len(),
        1,
        "nothing declared vanished: {quarantine:?}"
    );
    assert_eq!(quarantine[0]["kind"], "issue.unreadable");
    assert!(quarantine[0]["issue_id"].is_null());
    assert_eq!(quarantine[0]["unreadable"]["head"], r#"{"id":5}"#);
    let before = before + 1;
    assert!(app
        .observer_metrics_text()
        .contains("wiz_connector_errors_total{tenant=\"t0\",kind=\"bad_response\"} 1"));
    // The next full sweep, with a readable answer, reports it.
    resync(&app, 3).await;
    let lines = read_lines(&out)[before..].to_vec();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["issue_id"].as_str(), Some(gone.as_str()));
    assert_eq!(lines[0]["vanished"], true);
    app.shutdown().await.unwrap();
}

/// An issue seen only in an unwatched status (IN_PROGRESS, with only OPEN watched) is recorded
/// silently: reaching OPEN opens it, and disappearing reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_first_seen_unwatched_is_opened_when_it_reaches_a_watched_status() {
    let sim = sim(1, 60).await;
    let (_dir, state, out) = scratch();
    let app = start(&body(&sim, &state, &out, "1h")).await;
    let in_progress = sim.issues(CLIENT, |s| s.ids_with_status("IN_PROGRESS"));
    assert!(in_progress.len() >= 2, "{in_progress:?}");
    // Give every IN_PROGRESS issue a statusChangedAt after the first poll starts, so the first
    // (full) sweep does not see them but the incremental poll that follows does, and records them.
    poll(&app, 1).await;
    let first = read_lines(&out).len();
    sim.issues(CLIENT, |s| {
        for id in &in_progress {
            s.set_status(id, "OPEN");
            s.set_status(id, "IN_PROGRESS");
        }
    });
    poll(&app, 2).await;
    assert_eq!(read_lines(&out).len(), first, "recorded silently");
    let (p, r) = (in_progress[0].clone(), in_progress[1].clone());
    sim.issues(CLIENT, |s| {
        s.set_status(&p, "OPEN");
        assert!(s.remove(&r));
    });
    poll(&app, 3).await;
    assert_eq!(
        events_since(&out, first),
        vec![("issue.opened".to_string(), p.clone())]
    );
    resync(&app, 4).await;
    assert_eq!(
        read_lines(&out).len(),
        first + 1,
        "a silent issue that disappears is not reported"
    );
    app.shutdown().await.unwrap();
}

/// A crash after an opening was delivered but before it was recorded leaves only its in-flight
/// mark; if the issue then vanishes from Wiz, the next full sweep still reports it (and clears
/// the mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_a_crash_kept_from_the_store_is_still_reported_when_it_vanishes() {
    use wiz_connector::change::Known;
    use wiz_connector::event::issue_fingerprint;
    use wiz_connector::state::{StateStore, Write};
    let sim = sim(1, 30).await;
    let (_dir, state, out) = scratch();
    let cfg = body(&sim, &state, &out, "1h");
    let app = start(&cfg).await;
    poll(&app, 1).await;
    app.shutdown().await.unwrap();
    let before = read_lines(&out).len();

    // What a crash between delivering a new issue's opening and recording it leaves: the mark,
    // and no record. Then the issue vanishes from Wiz.
    let (id, node) = sim.issues(CLIENT, |s| {
        let id = s.add();
        let node = serde_json::to_string(s.issues.iter().find(|i| i.id == id).unwrap()).unwrap();
        assert!(s.remove(&id));
        (id, node)
    });
    let page = wiz_connector::wiz::Page::single(&node).unwrap();
    let issue = page.issues().next().unwrap().unwrap();
    {
        let (store, _) = StateStore::open_or_recover(&state).unwrap();
        let mark = Known {
            fingerprint: issue_fingerprint(&issue),
            status: "OPEN".into(),
            severity: issue.severity().map(str::to_string),
            silent: false,
        };
        store
            .write_now("t0", Write::Mark(vec![(id.clone(), mark)]))
            .unwrap();
        assert_eq!(store.known("t0", &[id.as_str()]).unwrap(), vec![None]);
    }

    let app = start(&cfg).await;
    poll(&app, 1).await;
    assert_eq!(
        read_lines(&out).len(),
        before,
        "an incremental poll cannot tell"
    );
    resync(&app, 2).await;
    let lines = read_lines(&out)[before..].to_vec();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["issue_id"].as_str(), Some(id.as_str()));
    assert_eq!(lines[0]["kind"], "issue.resolved");
    assert_eq!(lines[0]["vanished"], true);
    resync(&app, 3).await;
    assert_eq!(read_lines(&out).len(), before + 1, "reported once");
    app.shutdown().await.unwrap();
    let (store, _) = StateStore::open_or_recover(&state).unwrap();
    assert_eq!(
        store.in_flight("t0").unwrap(),
        vec![],
        "the mark is settled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_asked_while_one_runs_is_followed_by_another_at_once() {
    use wiz_connector::sim::Fault;
    let sim = sim(1, 20).await;
    let (_dir, state, out) = scratch();
    let app = start(&body(&sim, &state, &out, "1h")).await;
    poll(&app, 1).await;
    let first = read_lines(&out).len();
    // The next poll's first page is computed at once and answered 3 s later: a poll asked
    // meanwhile finds this one running.
    let before = sim.counters(CLIENT).graphql_requests;
    sim.push_faults(CLIENT, [Fault::SlowAnswer { ms: 3000 }]);
    assert!(app.poll_now("t0").await);
    wait_until("the slow page asked for", Duration::from_secs(20), || {
        sim.counters(CLIENT).graphql_requests > before
    })
    .await;
    let resolved = sim.issues(CLIENT, |s| {
        let id = s.ids_with_status("OPEN")[0].clone();
        s.set_status(&id, "RESOLVED");
        id
    });
    assert!(app.poll_now("t0").await);
    assert!(app.poll_now("t0").await, "asked twice: one follow-up");
    // Two polls in all (the interval is an hour): the running one, then the one asked for.
    wait_until("the poll that follows", Duration::from_secs(20), || {
        app.health.get("t0").unwrap().polls >= 3
    })
    .await;
    assert_eq!(app.health.get("t0").unwrap().polls, 3);
    let after = events_since(&out, first);
    assert_eq!(after, vec![("issue.resolved".to_string(), resolved)]);
    app.shutdown().await.unwrap();
}

/// The checkpoint the store holds for t0 (the app must be stopped).
fn stored_checkpoint(state: &std::path::Path) -> wiz_connector::state::Checkpoint {
    let (store, _) = wiz_connector::state::StateStore::open_or_recover(state).unwrap();
    store.checkpoint("t0").unwrap().unwrap()
}

/// Sets t0's stored high-water mark `ago` back (the app must be stopped); the checkpoint then
/// held.
fn set_high_water_back(state: &std::path::Path, ago: Duration) -> wiz_connector::state::Checkpoint {
    use wiz_connector::state::{Commit, StateStore, Write};
    let (store, _) = StateStore::open_or_recover(state).unwrap();
    let mut cp = store.checkpoint("t0").unwrap().unwrap();
    let at = std::time::SystemTime::now() - ago;
    cp.high_water = Some(humantime::format_rfc3339_micros(at).to_string());
    store
        .write_now(
            "t0",
            Write::Commit(Commit {
                checkpoint: Some(cp.clone()),
                ..Default::default()
            }),
        )
        .unwrap();
    cp
}

/// Starts the app on `cfg`, waits for t0's first poll, stops it.
async fn one_run(cfg: &str) {
    let app = start(cfg).await;
    poll(&app, 1).await;
    app.shutdown().await.unwrap();
}

/// A poll that finds nothing new and moves only the checkpoint's time marks, by less than an
/// hour, leaves the stored checkpoint as it was (an idle fleet writes its state about once an
/// hour, not at every poll); a mark older than that is written, and so is the checkpoint of a
/// poll that delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_leaves_time_marks_under_an_hour_old_unwritten() {
    let sim = sim(1, 5).await;
    let (_dir, state, out) = scratch();
    let cfg = body(&sim, &state, &out, "1h");
    one_run(&cfg).await;
    // The first incremental poll learns whether Wiz takes `filterBy.updatedAt` (the simulator
    // refuses it), and writes the answer although it delivered nothing.
    one_run(&cfg).await;
    let delivered = read_lines(&out).len();
    assert_eq!(delivered, 5, "the first poll's openings");
    let probe = stored_checkpoint(&state).updated_at_filter;
    assert!(probe.is_some_and(|p| !p.accepted), "{probe:?}");
    let high_water = |cp: &wiz_connector::state::Checkpoint| {
        humantime::parse_rfc3339_weak(cp.high_water.as_deref().unwrap()).unwrap()
    };
    let recent = |cp: &wiz_connector::state::Checkpoint| {
        std::time::SystemTime::now()
            .duration_since(high_water(cp))
            .is_ok_and(|d| d < Duration::from_secs(120))
    };

    // Ten minutes back: the idle incremental poll moves the mark by ten minutes, and writes
    // nothing.
    let before = set_high_water_back(&state, Duration::from_secs(600));
    one_run(&cfg).await;
    assert_eq!(read_lines(&out).len(), delivered, "nothing new");
    assert_eq!(
        stored_checkpoint(&state),
        before,
        "an idle poll writes nothing"
    );

    // Two hours back: the mark moves by more than an hour, and is written.
    set_high_water_back(&state, Duration::from_secs(7200));
    one_run(&cfg).await;
    assert_eq!(read_lines(&out).len(), delivered, "nothing new");
    let cp = stored_checkpoint(&state);
    assert!(recent(&cp), "written: {cp:?}");

    // Ten minutes back and a new issue: the poll delivers it and writes its checkpoint.
    set_high_water_back(&state, Duration::from_secs(600));
    let added = sim.issues(CLIENT, |s| s.add());
    one_run(&cfg).await;
    let events = events_since(&out, delivered);
    assert_eq!(events, vec![("issue.opened".to_string(), added)]);
    let cp = stored_checkpoint(&state);
    assert!(recent(&cp), "written: {cp:?}");
}
