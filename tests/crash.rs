//! kill -9 at random moments during sweeps, 20 times (`WIZ_CRASH_KILLS`), restarting each time: the union of the file
//! sink's output holds the latest state of every issue (no gap), every delivered issue that
//! vanished from Wiz is reported vanished, and replays stay within one page per tenant per crash.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use wiz_connector::event::{event_id, fingerprint};
use wiz_connector::sim::{SimTenantSpec, SimulatorOptions};

const TENANTS: usize = 3;
const PAGE: usize = 5;
/// Kills per run; `WIZ_CRASH_KILLS=100` for a soak run.
fn kills() -> usize {
    env_count("WIZ_CRASH_KILLS", 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_sweeps_leaves_no_gap_and_bounded_replays() {
    let sim = sim_with(SimulatorOptions {
        tenants: (0..TENANTS)
            .map(|n| SimTenantSpec::numbered(n, 42, 60))
            .collect(),
        latency: Duration::from_millis(15),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            &format!("poll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = {PAGE}\nfull_sweep_interval = \"2s\"\nincremental_overlap = \"1s\"\nwatch_interval = \"0s\""),
            "rate_limit = 50",
        ),
        out.display()
    );
    let cfg = write_config(&body);
    // (tenant, issue) of every issue removed from the simulator.
    let mut removed: Vec<(String, String)> = Vec::new();
    let kills = kills();
    for round in 0..kills {
        // New states for the next run: new issues, resolutions, reopenings, severity changes,
        // and the newest open issue of each tenant that a consumer has heard of gone from Wiz
        // (the likeliest to have been on the page in flight at the last kill).
        let lines = complete_lines(&out);
        for (i, t) in sim.tenants().iter().enumerate() {
            let tenant = format!("t{i}");
            let heard: std::collections::HashSet<&str> = lines
                .iter()
                .filter(|l| l["tenant"] == tenant.as_str())
                .filter_map(|l| l["issue_id"].as_str())
                .collect();
            let gone = sim.issues(&t.client_id, |s| {
                let newest = s
                    .ids_with_status("OPEN")
                    .into_iter()
                    .rev()
                    .find(|id| heard.contains(id.as_str()));
                if let Some(id) = &newest {
                    s.remove(id);
                }
                newest
            });
            removed.extend(gone.map(|id| (tenant, id)));
            sim.churn(&t.client_id, 4);
        }
        // Let it get into a sweep, then kill at a random moment.
        run_and_kill(&cfg.path, &out, round, Duration::from_millis(120)).await;
    }

    // A last, clean run: a full sweep of every tenant, then SIGTERM.
    let mut child = spawn_run(&cfg.path);
    let settle = |n: u64| {
        let sim = &sim;
        move || {
            (0..TENANTS).all(|i| sim.counters(&format!("sim-client-{i:04}")).graphql_requests >= n)
        }
    };
    let seen: Vec<u64> = (0..TENANTS)
        .map(|i| sim.counters(&format!("sim-client-{i:04}")).graphql_requests)
        .collect();
    let target = seen.iter().max().unwrap() + 3 * (60 / PAGE as u64 + 4);
    wait_until(
        "a complete full sweep after the crashes",
        Duration::from_secs(60),
        settle(target),
    )
    .await;
    // Every removed issue whose last event told a consumer it is open is reported vanished
    // (by a full sweep; they run every 2 s). The events of one issue are in delivery order.
    let unreported = || {
        let lines = complete_lines(&out);
        removed
            .iter()
            .filter(|(t, id)| {
                lines
                    .iter()
                    .rev()
                    .find(|l| l["tenant"] == t.as_str() && l["issue_id"] == id.as_str())
                    .is_some_and(|last| {
                        !matches!(last["status"].as_str(), Some("RESOLVED" | "REJECTED"))
                    })
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    wait_for(
        "every removed issue reported vanished",
        Duration::from_secs(60),
        || match unreported() {
            u if u.is_empty() => Ok(()),
            u => Err(format!(
                "(delivered, then gone from Wiz, never reported: {u:?})"
            )),
        },
    )
    .await;
    // Not vacuous: most removed issues were open for their consumer, so they were reported.
    let vanished = complete_lines(&out)
        .iter()
        .filter(|l| l["vanished"] == true)
        .count();
    assert!(
        removed.len() >= kills && vanished * 2 >= removed.len(),
        "{} removed, {vanished} vanished events",
        removed.len()
    );
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);

    let lines = complete_lines(&out);
    let mut count: HashMap<String, usize> = HashMap::new();
    for l in &lines {
        *count
            .entry(l["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // No gap: the current state of every open issue was delivered, and every issue that was
    // delivered open and is closed now has its closing event.
    let mut delivered_open: HashMap<(String, String), bool> = HashMap::new();
    for l in &lines {
        delivered_open.insert(
            (
                l["tenant"].as_str().unwrap().into(),
                l["issue_id"].as_str().unwrap().into(),
            ),
            true,
        );
    }
    let mut checked = 0;
    for (i, t) in sim.tenants().iter().enumerate() {
        let tenant = format!("t{i}");
        for issue in sim.issues(&t.client_id, |s| s.issues.clone()) {
            let id = event_id(
                &tenant,
                &issue.id,
                &fingerprint(
                    &issue.status,
                    Some(&issue.severity),
                    Some(&issue.updated_at),
                    Some(&issue.status_changed_at),
                ),
            );
            let relevant = issue.status == "OPEN"
                || delivered_open.contains_key(&(tenant.clone(), issue.id.clone()));
            if relevant {
                checked += 1;
                assert!(
                    count.contains_key(&id),
                    "{tenant}: the state {} (changed {}) of {} was never delivered; its events: {:?}",
                    issue.status,
                    issue.status_changed_at,
                    issue.id,
                    lines
                        .iter()
                        .filter(|l| l["issue_id"] == issue.id.as_str())
                        .map(|l| format!("{} {} {}", l["kind"], l["status"], l["status_changed_at"]))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
    assert!(checked > 100, "{checked}");
    // Replays: a crash repeats at most the page in flight of each tenant.
    let duplicates: usize = count.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= kills * TENANTS * PAGE,
        "{duplicates} duplicated events for {kills} crashes"
    );
}
