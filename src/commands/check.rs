//! `wiz-connector check`: the seed's "Test connection" for each tenant: a fresh token exchange,
//! then a 1-row issues query. One line per tenant, `<id>: ok` or `<id>: <error>`.
//!
//! `check --sinks`: each sink opened as `run` opens it, then one harmless round trip (see
//! `SinkType::check`). One line per sink, `sink <name> (<type>): ok (...)` or the error.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{load, EnvSource, Settings, TenantSpec};
use crate::feeds::{FeedName, Window};
use crate::wiz::{TenantClient, WizError, WizHttp};

/// `check` for every feed of the tenant: a fresh token exchange, then a 1-row query of each
/// feed (Issues as [`TenantClient::check`] asks). Each feed's outcome: the rows it saw, or why
/// it failed. A failed token exchange fails every feed with the same error.
pub async fn check_feeds(client: &TenantClient) -> Vec<(FeedName, Result<usize, WizError>)> {
    let mut out = Vec::new();
    for &feed in &client.spec().feeds {
        let result = match feed.feed() {
            None => client.check().await,
            Some(f) => {
                if out.is_empty() {
                    client.invalidate_token().await;
                }
                let window = Window {
                    after: None,
                    before: humantime::format_rfc3339_micros(std::time::SystemTime::now())
                        .to_string(),
                };
                let body = bytes::Bytes::from(f.request(&window, 1, None));
                client.fetch_feed_page(body, f.root).await.map(|p| p.len())
            }
        };
        let refused = matches!(&result, Err(e) if e.credentials_refused());
        out.push((feed, result));
        if refused {
            // The token exchange failed: every other feed would fail the same way.
            break;
        }
        if feed == FeedName::Issues && out.last().is_some_and(|(_, r)| r.is_err()) {
            break;
        }
    }
    out
}

/// The `updatedAt` probe that incremental polls make (README "How it talks to Wiz"), made once
/// here so an operator sees the answer: whether Wiz takes `filterBy.updatedAt` on issues.
pub async fn probe_updated_at(client: &TenantClient) -> String {
    let since = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let filter = crate::wiz::IssueFilter {
        updated_at: Some(crate::wiz::TimeRange {
            after: Some(humantime::format_rfc3339_micros(since).to_string()),
            before: None,
        }),
        ..Default::default()
    };
    match client
        .fetch_page(&filter, crate::wiz::IssueOrder::CREATED_ASC, 1, None)
        .await
    {
        Ok(_) => "filterBy.updatedAt taken: incremental polls see every edit".to_string(),
        Err(e) if e.rejects_field("updatedAt") => {
            "filterBy.updatedAt not taken: incremental polls use statusChangedAt (small tenants sweep fully)".to_string()
        }
        Err(e) => format!("filterBy.updatedAt not probed: {e}"),
    }
}

/// How many tenants are checked at once.
const CONCURRENCY: usize = 16;

/// The outcome of checking one tenant: its line of output, and whether it passed.
pub struct CheckLine {
    pub tenant: String,
    pub ok: bool,
    pub line: String,
}

/// Checks `tenants` (all when `only` is `None`) and returns one line per tenant in config order.
pub async fn check_all(settings: &Settings, only: Option<&str>) -> anyhow::Result<Vec<CheckLine>> {
    let tenants: Vec<Arc<TenantSpec>> = settings
        .tenants
        .iter()
        .filter(|t| only.is_none_or(|o| o == t.id))
        .cloned()
        .collect();
    if let Some(o) = only {
        if tenants.is_empty() {
            bail!(
                "no tenant `{o}` in {}; configured tenants: {}",
                settings.config_path.display(),
                settings
                    .tenants
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let http = WizHttp::new()?;
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut set = JoinSet::new();
    for (i, spec) in tenants.into_iter().enumerate() {
        let http = http.clone();
        let gate = gate.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore never closed");
            let client = http.tenant(spec.clone());
            let (ok, mut line) = if spec.feeds == [FeedName::Issues] {
                match client.check().await {
                    Ok(n) => (
                        true,
                        format!(
                            "{}: ok (token exchange and 1-row issues query succeeded; {} issue(s) returned)",
                            spec.id, n
                        ),
                    ),
                    Err(e) => (false, format!("{}: {e}", spec.id)),
                }
            } else {
                feed_lines(&spec, check_feeds(&client).await)
            };
            if ok && spec.feeds.contains(&FeedName::Issues) {
                line.push_str(&format!("; {}", probe_updated_at(&client).await));
            }
            (i, CheckLine { tenant: spec.id.clone(), ok, line })
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// The lines of a tenant with several feeds: one `ok` line when every feed passed, else one line
/// per feed that failed, naming the tenant and the feed.
fn feed_lines(
    spec: &TenantSpec,
    results: Vec<(FeedName, Result<usize, crate::wiz::WizError>)>,
) -> (bool, String) {
    let mut failed = Vec::new();
    let mut passed = Vec::new();
    for (feed, r) in &results {
        match r {
            Ok(n) => passed.push(format!("{feed} {n}")),
            Err(e) if e.credentials_refused() && results.len() == 1 => {
                failed.push(format!("{}: {e}", spec.id))
            }
            Err(e) => {
                let hint = match feed.feed() {
                    Some(f) if e.is_permission_denied() => format!(
                        "; the service account needs this permission: {} (the tenant's other feeds are not affected)",
                        f.permission
                    ),
                    _ => String::new(),
                };
                failed.push(format!("{}: feed {feed}: {e}{hint}", spec.id));
            }
        }
    }
    if failed.is_empty() && passed.len() == spec.feeds.len() {
        (
            true,
            format!(
                "{}: ok (token exchange and a 1-row query of every feed succeeded; rows: {})",
                spec.id,
                passed.join(", ")
            ),
        )
    } else {
        if failed.is_empty() {
            failed.push(format!("{}: not every feed could be checked", spec.id));
        }
        (false, failed.join("\n"))
    }
}

/// Runs `check` as the command line does; exit code 0 only when every checked tenant passed.
pub async fn run(path: &Path, only: Option<&str>) -> anyhow::Result<u8> {
    let settings = load(path, &EnvSource::Process)?;
    if settings.tenants.is_empty() {
        bail!(
            "{} defines no tenants; add a [tenants.<id>] table",
            path.display()
        );
    }
    let lines = check_all(&settings, only).await?;
    let failed = lines.iter().filter(|l| !l.ok).count();
    for l in &lines {
        println!("{}", l.line);
    }
    if failed > 0 {
        eprintln!("{failed} of {} tenant(s) failed the check", lines.len());
        Ok(1)
    } else {
        Ok(0)
    }
}

/// Checks every configured sink: opened as `run` opens it (templated settings filled for a
/// tenant that reaches it, feed `issues`), then one round trip that delivers nothing. One line
/// per sink, in name order.
pub async fn check_sinks(settings: &Settings) -> Vec<CheckLine> {
    let mut set = JoinSet::new();
    for (i, spec) in settings.sinks.iter().cloned().enumerate() {
        let tenant = sample_tenant(settings, &spec);
        set.spawn(async move {
            let labels = tenant.1;
            let tenant = tenant.0;
            let templated = !spec.kind.templates().is_empty();
            let fill = |t: &str| crate::sink::routing::render(t, &tenant, "issues", &labels);
            let result = async {
                let kind = spec.kind.instantiate(&fill)?;
                let filled = crate::sink::SinkSpec {
                    kind,
                    ..spec.clone()
                };
                let mut out = crate::sink::Output::open(&filled).await?;
                out.check().await
            }
            .await;
            let name = format!("sink {} ({})", spec.name, spec.kind.type_name());
            let filled = if templated {
                format!(", settings filled for tenant {tenant}, feed issues")
            } else {
                String::new()
            };
            let (ok, line) = match result {
                Ok(what) => (true, format!("{name}: ok ({what}{filled})")),
                Err(e) => (false, format!("{name}: {e}")),
            };
            (
                i,
                CheckLine {
                    tenant: spec.name.clone(),
                    ok,
                    line,
                },
            )
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(x) => out.push(x),
            Err(e) => out.push((
                usize::MAX,
                CheckLine {
                    tenant: String::new(),
                    ok: false,
                    line: format!("a sink check failed: {e}"),
                },
            )),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, l)| l).collect()
}

/// A tenant whose events reach `sink` (its owner, else the first routed there, else the first
/// tenant), and its labels: what a templated sink's settings are filled with.
fn sample_tenant(
    settings: &Settings,
    sink: &crate::sink::SinkSpec,
) -> (String, std::collections::BTreeMap<String, String>) {
    let routed = settings.routing.as_ref().and_then(|r| {
        let by = |id: &str| {
            r.tenants
                .get(id)
                .map(|t| (id.to_string(), t.labels.clone()))
        };
        sink.owner.as_deref().and_then(by).or_else(|| {
            r.tenants
                .iter()
                .find(|(_, t)| r.every_sink || t.destinations.iter().any(|d| d.sink == sink.name))
                .map(|(id, t)| (id.clone(), t.labels.clone()))
        })
    });
    routed.unwrap_or_else(|| {
        (
            sink.owner
                .clone()
                .or_else(|| settings.tenants.first().map(|t| t.id.clone()))
                .unwrap_or_else(|| "check".into()),
            Default::default(),
        )
    })
}

/// Runs `check --sinks` as the command line does; exit code 0 only when every sink passed.
pub async fn run_sinks(path: &Path) -> anyhow::Result<u8> {
    let settings = load(path, &EnvSource::Process)?;
    if settings.sinks.is_empty() {
        bail!(
            "{} defines no sinks; add a [sinks.<name>] table",
            path.display()
        );
    }
    let lines = check_sinks(&settings).await;
    let failed = lines.iter().filter(|l| !l.ok).count();
    for l in &lines {
        println!("{}", l.line);
    }
    if failed > 0 {
        eprintln!("{failed} of {} sink(s) failed the check", lines.len());
        Ok(1)
    } else {
        Ok(0)
    }
}
