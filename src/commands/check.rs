//! `wiz-connector check`: the seed's "Test connection" for each tenant: a fresh token exchange,
//! then a 1-row issues query. One line per tenant, `<id>: ok` or `<id>: <error>`.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{load, EnvSource, Settings, TenantSpec};
use crate::wiz::WizHttp;

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
        .map(Arc::new)
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
            let result = client.check().await;
            let (ok, line) = match result {
                Ok(n) => (
                    true,
                    format!(
                        "{}: ok (token exchange and 1-row issues query succeeded; {} issue(s) returned)",
                        spec.id, n
                    ),
                ),
                Err(e) => (false, format!("{}: {e}", spec.id)),
            };
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
