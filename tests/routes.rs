//! Routes (CONTRACT "Routes", issue 20): each customer's events reach only that customer's
//! destinations. Real connector, real simulator over loopback, real files.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::config::{load, EnvSource};

/// Event ids by tenant in a file sink's output.
fn ids_by_tenant(path: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if !path.exists() {
        return out;
    }
    for e in read_lines(path) {
        out.entry(e["tenant"].as_str().unwrap().to_string())
            .or_default()
            .insert(e["id"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_tenants_of_twelve_customers_reach_exactly_their_destinations() {
    const TENANTS: usize = 60;
    const CUSTOMERS: usize = 12;
    let sim = sim(TENANTS, 8).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let tenants_dir = dir.path().join("tenants.d");
    std::fs::create_dir_all(&tenants_dir).unwrap();
    let customer = |i: usize| i % CUSTOMERS;
    let gold = |c: usize| c.is_multiple_of(3);
    // Shared sinks: one per customer, and the SOC's file, reached by a route on a label.
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\ntenants_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        state_dir().display(),
        tenants_dir.display()
    );
    for c in 0..CUSTOMERS {
        body.push_str(&format!(
            "[sinks.cust{c}]\ntype = \"file\"\npath = \"{}/cust{c}.jsonl\"\n",
            out.display()
        ));
    }
    body.push_str(&format!(
        "[sinks.soc]\ntype = \"file\"\npath = \"{}/soc.jsonl\"\n[routes.gold]\nsinks = [\"soc\"]\nlabels = {{ tier = \"gold\" }}\n",
        out.display()
    ));
    // Each tenant in its own file: credentials, labels and its customer's shared sink; the first
    // tenant of each customer also has a private sink of its own (12 private sinks).
    for (i, t) in sim.tenants().iter().enumerate() {
        let c = customer(i);
        let table = sim.tenant_table(&format!("t{i}"), t);
        let creds = table.split_once('\n').unwrap().1;
        let tier = if gold(c) { "gold" } else { "silver" };
        let mut file = format!("{creds}labels = {{ customer = \"c{c}\", tier = \"{tier}\" }}\n");
        if i < CUSTOMERS {
            file.push_str(&format!(
                "[sinks.own_t{i}]\ntype = \"file\"\npath = \"{}/own-t{i}.jsonl\"\n",
                out.display()
            ));
        } else {
            file.push_str(&format!("sinks = [\"cust{c}\"]\n"));
        }
        std::fs::write(tenants_dir.join(format!("t{i}.toml")), file).unwrap();
    }
    // The first tenant of each customer sends to its customer's sink through a route.
    for c in 0..CUSTOMERS {
        body.push_str(&format!(
            "[routes.first_of_c{c}]\nsinks = [\"cust{c}\"]\ntenants = [\"t{c}\"]\n"
        ));
    }
    let cfg = write_config(&body);
    let settings = load(&cfg.path, &EnvSource::Fixed(HashMap::new())).unwrap();
    let routing = settings.routing.clone().expect("routed");
    assert_eq!(routing.tenants.len(), TENANTS);
    let app = App::start(settings, AppOptions::default()).await.unwrap();

    let open = open_ids(&sim);
    wait_for(
        "every tenant's first sweep in its customer's file",
        Duration::from_secs(90),
        || {
            let mut missing = 0;
            for c in 0..CUSTOMERS {
                let got = ids_by_tenant(&out.join(format!("cust{c}.jsonl")));
                for i in (0..TENANTS).filter(|i| customer(*i) == c) {
                    let n = got.get(&format!("t{i}")).map_or(0, |s| s.len());
                    missing += open[&format!("t{i}")].len().saturating_sub(n);
                }
            }
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} events missing"))
            }
        },
    )
    .await;
    wait_until("every poll ended", Duration::from_secs(30), || {
        (0..TENANTS).all(|i| {
            app.health
                .get(&format!("t{i}"))
                .is_some_and(|h| h.polls >= 1)
        })
    })
    .await;

    // Each customer's file: that customer's tenants only, every event of each.
    let mut truth: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in 0..CUSTOMERS {
        let got = ids_by_tenant(&out.join(format!("cust{c}.jsonl")));
        let want: BTreeSet<String> = (0..TENANTS)
            .filter(|i| customer(*i) == c)
            .map(|i| format!("t{i}"))
            .collect();
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "cust{c}"
        );
        for (t, ids) in got {
            assert_eq!(ids.len(), open[&t].len(), "{t}'s events in cust{c}");
            truth.insert(t, ids);
        }
    }
    // Each private sink: its tenant alone, every event.
    for i in 0..CUSTOMERS {
        let got = ids_by_tenant(&out.join(format!("own-t{i}.jsonl")));
        let t = format!("t{i}");
        assert_eq!(got.len(), 1, "own-t{i} holds one tenant");
        assert_eq!(got[&t], truth[&t], "own-t{i}");
    }
    // The SOC's file: every gold tenant's events, nobody else's.
    let soc = ids_by_tenant(&out.join("soc.jsonl"));
    let gold_tenants: BTreeMap<String, BTreeSet<String>> = truth
        .iter()
        .filter(|(t, _)| gold(customer(t[1..].parse().unwrap())))
        .map(|(t, ids)| (t.clone(), ids.clone()))
        .collect();
    assert_eq!(soc, gold_tenants);
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_path_gives_each_customer_and_feed_its_own_file() {
    let sim = sim(2, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\nfeeds = [\"issues\", \"audit\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.per_customer]\ntype = \"file\"\npath = \"{}/{{label.customer}}/{{feed}}.jsonl\"\n",
        state_dir().display(),
        out.display()
    );
    body.push_str(&customer_tenants(&sim, &["acme", "initech"]));
    let settings = settings(&body);
    assert!(settings.routing.as_ref().is_some_and(|r| r.every_sink));
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    let open = open_ids(&sim);
    let audit = |i: usize| {
        let client = sim.tenants()[i].client_id.clone();
        sim.feeds(&client, |f| f.audit.len())
    };
    let files = |c: &str, f: &str| out.join(c).join(format!("{f}.jsonl"));
    wait_for(
        "both customers' issues and audit files",
        Duration::from_secs(60),
        || {
            let counts = [
                ids_by_tenant(&files("acme", "issues"))
                    .get("t0")
                    .map_or(0, |s| s.len()),
                ids_by_tenant(&files("initech", "issues"))
                    .get("t1")
                    .map_or(0, |s| s.len()),
                ids_by_tenant(&files("acme", "audit"))
                    .get("t0")
                    .map_or(0, |s| s.len()),
                ids_by_tenant(&files("initech", "audit"))
                    .get("t1")
                    .map_or(0, |s| s.len()),
            ];
            let want = [open["t0"].len(), open["t1"].len(), audit(0), audit(1)];
            if counts == want {
                Ok(())
            } else {
                Err(format!("{counts:?} of {want:?}"))
            }
        },
    )
    .await;
    for (c, t) in [("acme", "t0"), ("initech", "t1")] {
        for f in ["issues", "audit"] {
            for e in read_lines(&files(c, f)) {
                assert_eq!(e["tenant"], t, "{c}/{f}.jsonl");
                assert_eq!(e["feed"], f, "{c}/{f}.jsonl");
            }
        }
    }
    let entries: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, BTreeSet::from(["acme".into(), "initech".into()]));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_route_takes_only_its_feeds_and_severities() {
    let sim = sim(1, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[sinks.all]\ntype = \"file\"\npath = \"{}\"\n[sinks.high]\ntype = \"file\"\npath = \"{}\"\n[routes.everything]\nsinks = [\"all\"]\n[routes.urgent]\nsinks = [\"high\", \"high_ocsf\"]\nfeeds = [\"issues\"]\nmin_severity = \"high\"\n[sinks.high_ocsf]\ntype = \"file\"\npath = \"{}\"\nformat = \"ocsf\"\n",
        sim_config(&sim, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nfeeds = [\"issues\", \"audit\"]", ""),
        dir.path().join("all.jsonl").display(),
        dir.path().join("high.jsonl").display(),
        dir.path().join("high_ocsf.jsonl").display()
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    let client = sim.tenants()[0].client_id.clone();
    let audit = sim.feeds(&client, |f| f.audit.len());
    wait_until("the first sweep", Duration::from_secs(60), || {
        read_lines(&dir.path().join("all.jsonl")).len() == open + audit
    })
    .await;
    wait_until("every poll ended", Duration::from_secs(30), || {
        app.health.get("t0").is_some_and(|h| h.polls >= 1)
    })
    .await;
    let all = read_lines(&dir.path().join("all.jsonl"));
    let want: BTreeSet<String> = all
        .iter()
        .filter(|e| e["feed"] == "issues" && e["severity"] == "high")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!want.is_empty(), "the simulator makes high issues");
    let high: BTreeSet<String> = read_lines(&dir.path().join("high.jsonl"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(high, want);
    // The same filter on an OCSF sink keeps the same events (decided on the native line, the
    // OCSF line of each kept).
    let ocsf: Vec<serde_json::Value> = read_lines(&dir.path().join("high_ocsf.jsonl"));
    let ocsf_ids: BTreeSet<String> = ocsf
        .iter()
        .map(|e| e["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ocsf_ids, want);
    assert!(ocsf.iter().all(|e| e["severity_id"].as_i64() >= Some(4)));
    app.shutdown().await.unwrap();
}

/// The problems `validate` reports for a configuration, as `key: message` lines.
fn problems(body: &str, tenant_files: &[(&str, &str)]) -> String {
    let c = write_config(body);
    let dir = c.dir.path().join("tenants.d");
    std::fs::create_dir_all(&dir).unwrap();
    for (id, text) in tenant_files {
        std::fs::write(dir.join(format!("{id}.toml")), text).unwrap();
    }
    let text = std::fs::read_to_string(&c.path)
        .unwrap()
        .replace("TENANTS_DIR", &dir.display().to_string());
    std::fs::write(&c.path, text).unwrap();
    match load(&c.path, &EnvSource::Fixed(HashMap::new())) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

const TENANT: &str =
    "client_id = \"c\"\nclient_secret = \"s\"\napi_url = \"https://api.us1.app.wiz.io/graphql\"\n";

#[test]
fn validate_names_every_routing_mistake() {
    let head = "[connector]\ntenants_dir = \"TENANTS_DIR\"\n[sinks.soc]\ntype = \"stdout\"\n";
    // A tenant routed nowhere.
    let e = problems(
        &format!("{head}[routes.r]\nsinks = [\"soc\"]\ntenants = [\"a*\"]\n[tenants.acme]\n{TENANT}[tenants.beta]\n{TENANT}"),
        &[],
    );
    assert!(
        e.contains("tenant `beta`: key `sinks`: routes nowhere"),
        "{e}"
    );
    assert!(!e.contains("tenant `acme`"), "{e}");
    // An unknown sink, in a route and in a tenant's list.
    let e = problems(
        &format!(
            "{head}[routes.r]\nsinks = [\"sock\"]\n[tenants.acme]\n{TENANT}sinks = [\"splunk\"]\n"
        ),
        &[],
    );
    assert!(
        e.contains("key `routes.r.sinks`: unknown sink `sock`"),
        "{e}"
    );
    assert!(
        e.contains("tenant `acme`: key `sinks`: unknown sink `splunk`"),
        "{e}"
    );
    // An unknown placeholder, and a label a routed tenant lacks.
    let e = problems(
        &format!("{head}[sinks.f]\ntype = \"file\"\npath = \"/tmp/{{customer}}.jsonl\"\n[sinks.g]\ntype = \"file\"\npath = \"/tmp/{{label.customer}}.jsonl\"\n[tenants.acme]\n{TENANT}sinks = [\"f\", \"g\"]\n"),
        &[],
    );
    assert!(
        e.contains("key `sinks.f.path`: unknown placeholder {customer}"),
        "{e}"
    );
    assert!(
        e.contains("key `sinks.g.path`: uses {label.customer}, which tenant `acme`"),
        "{e}"
    );
    // A private sink (in acme's file) named by another tenant and by a route.
    let e = problems(
        &format!("{head}[routes.r]\nsinks = [\"acme_out\"]\ntenants = [\"beta\"]\n[tenants.beta]\n{TENANT}sinks = [\"acme_out\"]\n"),
        &[("acme", &format!("{TENANT}[sinks.acme_out]\ntype = \"stdout\"\n"))],
    );
    assert!(
        e.contains("tenant `beta`: key `sinks`: sink `acme_out` belongs to tenant `acme`"),
        "{e}"
    );
    assert!(
        e.contains("key `routes.r.sinks`: sink `acme_out` belongs"),
        "{e}"
    );
    // A bad severity and feed in a route.
    let e = problems(
        &format!("{head}[routes.r]\nsinks = [\"soc\"]\nmin_severity = \"critical\"\nfeeds = [\"isues\"]\n[tenants.acme]\n{TENANT}"),
        &[],
    );
    assert!(
        e.contains("key `routes.r.min_severity`") && e.contains("use info, low, medium or high"),
        "{e}"
    );
    assert!(
        e.contains("key `routes.r.feeds`: unknown feed \"isues\""),
        "{e}"
    );
    // A valid routed configuration resolves, and says where each tenant goes.
    let c = write_config(&format!(
        "[sinks.soc]\ntype = \"stdout\"\n[sinks.acme_out]\ntype = \"stdout\"\n[routes.r]\nsinks = [\"soc\"]\nlabels = {{ tier = \"gold\" }}\nmin_severity = \"medium\"\n[tenants.acme]\n{TENANT}labels = {{ tier = \"gold\" }}\nsinks = [\"acme_out\"]\n"
    ));
    let s = load(&c.path, &EnvSource::Fixed(HashMap::new())).unwrap();
    let shown = serde_json::to_value(&s).unwrap();
    let dest = &shown["routing"]["tenants"]["acme"]["destinations"];
    assert_eq!(dest[0]["sink"], "acme_out");
    assert_eq!(dest[1]["sink"], "soc");
    assert_eq!(dest[1]["via"][0], "route:r");
    assert_eq!(dest[1]["min_severity"], "medium");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_url_posts_each_customers_events_to_its_own_path() {
    use axum::extract::Path as UrlPath;
    use std::sync::{Arc, Mutex};
    // Events received, by the path's customer.
    let got: Arc<Mutex<BTreeMap<String, Vec<serde_json::Value>>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/ingest/{customer}",
        axum::routing::post(
            move |UrlPath(customer): UrlPath<String>, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let text = String::from_utf8(body.to_vec()).unwrap();
                    let mut got = sink.lock().unwrap();
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        got.entry(customer.clone())
                            .or_default()
                            .push(serde_json::from_str(line).unwrap());
                    }
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sim = sim(2, 5).await;
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.siem]\ntype = \"http\"\nurl = \"http://{addr}/ingest/{{label.customer}}\"\ngzip = false\n",
        state_dir().display()
    );
    body.push_str(&customer_tenants(&sim, &["acme", "initech"]));
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim);
    let want = open["t0"].len() + open["t1"].len();
    wait_until(
        "both tenants' events at their paths",
        Duration::from_secs(60),
        || got.lock().unwrap().values().map(Vec::len).sum::<usize>() == want,
    )
    .await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), ["acme", "initech"]);
    for (customer, tenant) in [("acme", "t0"), ("initech", "t1")] {
        assert_eq!(got[customer].len(), open[tenant].len(), "{customer}");
        assert!(
            got[customer].iter().all(|e| e["tenant"] == tenant),
            "{customer}"
        );
    }
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sinks_shows_each_sinks_state_and_the_sink_holding_a_tenant_back() {
    // A SIEM that refuses everything with 503.
    let app503 = axum::Router::new().route(
        "/ingest",
        axum::routing::post(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app503).await.unwrap() });

    let sim = sim(2, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive.jsonl");
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\npage_size = 1\nstartup_jitter = \"0s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.siem]\ntype = \"http\"\nurl = \"http://{addr}/ingest\"\nmax_retries = 0\nbacklog_max_bytes = 1\n",
        state_dir().display(),
        archive.display()
    );
    let tenants = sim.tenants();
    body.push_str(&tenant_toml(
        &sim,
        "t0",
        &tenants[0],
        "sinks = [\"archive\"]",
    ));
    body.push_str(&tenant_toml(&sim, "t1", &tenants[1], "sinks = [\"siem\"]"));
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let base = format!("http://{}", app.admin_addr());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let open = open_ids(&sim);
    wait_until(
        "t0's events in the archive",
        Duration::from_secs(60),
        || read_lines(&archive).len() == open["t0"].len(),
    )
    .await;
    // The poll ends after the sink acknowledged its last page, which is after the sink counted it.
    wait_until("t0's poll ended", Duration::from_secs(30), || {
        app.health.get("t0").is_some_and(|h| h.polls >= 1)
    })
    .await;
    wait_until("t1 held back by the SIEM", Duration::from_secs(60), || {
        app.health
            .get("t1")
            .is_some_and(|h| h.held_by_sink.as_deref() == Some("siem"))
    })
    .await;
    let get = |path: String| {
        let http = http.clone();
        async move {
            let bytes = http.get(path).send().await.unwrap().bytes().await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        }
    };
    let sinks = get(format!("{base}/sinks")).await;
    let by_name: BTreeMap<String, serde_json::Value> = sinks
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    let archive_s = &by_name["archive"];
    assert_eq!(archive_s["type"], "file");
    assert_eq!(archive_s["state"], "up");
    assert_eq!(archive_s["tenants"], serde_json::json!(["t0"]));
    assert_eq!(archive_s["delivered_events"], open["t0"].len());
    let siem = &by_name["siem"];
    assert_eq!(siem["type"], "http");
    assert!(
        siem["state"] == "retrying" || siem["state"] == "down",
        "{siem}"
    );
    assert!(siem["failed_batches"].as_u64().unwrap() >= 1, "{siem}");
    assert!(
        siem["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{siem}"
    );
    assert_eq!(siem["tenants"], serde_json::json!(["t1"]));
    // Its first page waits in its backlog, which is then past its bound: t1 holds.
    assert!(siem["backlog_events"].as_u64().unwrap() >= 1, "{siem}");
    assert!(siem["backlog_bytes"].as_u64().unwrap() >= 1, "{siem}");
    assert_eq!(siem["backlog_max_bytes"], 1);
    assert_eq!(siem["format"], "native");
    // The tenant's health names the sink; t0 is not held back.
    let t1 = get(format!("{base}/tenants/t1")).await;
    assert_eq!(t1["held_by_sink"], "siem");
    assert!(app.health.get("t0").unwrap().held_by_sink.is_none());
    // `wiz-connector status` names it next to the tenant's state.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args(["status", "--admin", &base])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let t1_line = table
        .lines()
        .find(|l| l.starts_with("t1 "))
        .unwrap_or_default();
    assert!(t1_line.contains("(held by sink siem)"), "{table}");
    let metrics = app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_sink_up{sink=\"siem\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "wiz_connector_sink_delivered_events_total{{sink=\"archive\"}} {}",
        open["t0"].len()
    )));
    app.shutdown().await.unwrap();
}

/// The issues a consumer of `events` holds as current for `tenant`: those whose latest
/// (non-baseline) event says open or in progress.
fn current_ids(events: &[serde_json::Value], tenant: &str) -> BTreeSet<String> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["tenant"] == tenant && e["baseline"] != true)
    {
        last.insert(
            e["issue_id"].as_str().unwrap().to_string(),
            e["status"].as_str().unwrap_or_default().to_string(),
        );
    }
    last.into_iter()
        .filter(|(_, s)| s == "OPEN" || s == "IN_PROGRESS")
        .map(|(id, _)| id)
        .collect()
}

/// The issue ids of the baseline events in `events`.
fn baseline_ids(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["baseline"] == true)
        .map(|e| e["issue_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_a_route_sends_a_baseline_then_changes_without_restarting_tenants() {
    let sim = sim(3, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.jsonl");
    let soc = dir.path().join("soc.jsonl");
    let base = format!(
        "{}[sinks.all]\ntype = \"file\"\npath = \"{}\"\n[sinks.soc]\ntype = \"file\"\npath = \"{}\"\n[routes.everything]\nsinks = [\"all\"]\n",
        sim_config(&sim, "poll_interval = \"1s\"\nstartup_jitter = \"0s\"", ""),
        all.display(),
        soc.display()
    );
    let cfg = write_config(&base);
    let settings = load(&cfg.path, &EnvSource::Fixed(HashMap::new())).unwrap();
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    let open = open_ids(&sim);
    let first: usize = open.values().map(|s| s.len()).sum();
    wait_until("the first sweeps", Duration::from_secs(60), || {
        read_lines(&all).len() == first
    })
    .await;
    assert!(
        baseline_ids(&read_lines(&all)).is_empty(),
        "a destination there from the start gets the first sweep, not a baseline"
    );
    // The SOC now takes t1's events: it first gets t1's current issues, as a baseline.
    std::fs::write(
        &cfg.path,
        format!("{base}[routes.t1_to_soc]\nsinks = [\"soc\"]\ntenants = [\"t1\"]\n"),
    )
    .unwrap();
    let summary = app.reloader().reload("test").await.unwrap();
    assert!(summary.sinks_changed);
    assert!(summary.restarted.is_empty() && summary.added.is_empty());
    let clients: Vec<String> = sim.tenants().iter().map(|t| t.client_id.clone()).collect();
    let current = current_ids(&read_lines(&all), "t1");
    wait_until("t1's baseline at the SOC", Duration::from_secs(60), || {
        read_lines(&soc).len() >= current.len()
    })
    .await;
    let baseline = read_lines(&soc);
    assert_eq!(baseline.len(), current.len());
    assert_eq!(
        baseline_ids(&baseline).into_iter().collect::<BTreeSet<_>>(),
        current
    );
    assert!(baseline
        .iter()
        .all(|e| e["tenant"] == "t1" && e["kind"] == "issue.opened"));
    // A baseline goes to the new destination only.
    assert!(baseline_ids(&read_lines(&all)).is_empty());
    // Then changes: only t1's reach the SOC, every one reaches the archive.
    let before = read_lines(&all).len();
    for c in &clients {
        sim.churn(c, 3);
    }
    wait_until("t1's changes at the SOC", Duration::from_secs(60), || {
        read_lines(&soc).len() > baseline.len() && read_lines(&all).len() > before
    })
    .await;
    wait_until(
        "every tenant polled after the churn",
        Duration::from_secs(30),
        || {
            (0..3).all(|i| {
                app.health
                    .get(&format!("t{i}"))
                    .is_some_and(|h| h.polls >= 4)
            })
        },
    )
    .await;
    let soc_events = read_lines(&soc);
    assert!(
        soc_events.iter().all(|e| e["tenant"] == "t1"),
        "{soc_events:?}"
    );
    let archived: BTreeSet<String> = read_lines(&all)
        .iter()
        .filter(|e| e["tenant"] == "t1")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let changes = &soc_events[baseline.len()..];
    assert!(baseline_ids(changes).is_empty(), "the baseline came first");
    for e in changes {
        assert!(
            archived.contains(e["id"].as_str().unwrap()),
            "the archive has {e}"
        );
    }
    for (i, c) in clients.iter().enumerate() {
        let h = app.health.get(&format!("t{i}")).unwrap();
        assert_eq!(h.restarts, 0, "t{i}");
        assert_eq!(sim.counters(c).tokens_issued, 1, "t{i} kept its token");
    }
    // On demand, again: POST /tenants/t1/baseline?sink=soc.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let admin = format!("http://{}", app.admin_addr());
    let post = |path: &str| {
        let (http, url) = (http.clone(), format!("{admin}{path}"));
        async move {
            let r = http.post(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (status, body) = post("/tenants/t1/baseline?sink=all").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post("/tenants/t1/baseline?sink=nope").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "sink `nope` does not take tenant `t1`'s events; its destinations are: all, soc"
    );
    let (status, _) = post("/tenants/t9/baseline?sink=all").await;
    assert_eq!(status, 404);
    let (status, body) = post("/tenants/t1/baseline").await;
    assert_eq!(status, 400, "{body}");
    let current = current_ids(&read_lines(&all), "t1");
    wait_until(
        "the baseline again, at the archive",
        Duration::from_secs(60),
        || baseline_ids(&read_lines(&all)).len() >= current.len(),
    )
    .await;
    let again = baseline_ids(&read_lines(&all));
    assert_eq!(again.into_iter().collect::<BTreeSet<_>>(), current);
    assert_eq!(
        baseline_ids(&read_lines(&soc)).len(),
        baseline.len(),
        "only the sink asked for"
    );
    app.shutdown().await.unwrap();
    // Restarted with the same state: every destination has been served; no baseline again.
    let settings = load(&cfg.path, &EnvSource::Fixed(HashMap::new())).unwrap();
    let (soc_before, all_before) = (read_lines(&soc).len(), read_lines(&all).len());
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    wait_until("a poll after the restart", Duration::from_secs(30), || {
        app.health.get("t1").is_some_and(|h| h.polls >= 1)
    })
    .await;
    assert_eq!(read_lines(&soc).len(), soc_before);
    assert_eq!(read_lines(&all).len(), all_before);
    app.shutdown().await.unwrap();
}
