//! `wiz-connector run`: supervise every configured tenant until SIGINT or SIGTERM, then shut down
//! in order (timers stop, each sweep delivers its page in flight, the sinks flush) and exit 0.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use crate::app::{App, AppOptions};
use crate::config::{load, EnvSource, Settings};
use crate::health::HealthMap;

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn termination() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

/// Logs one line with the number of tenants in each state, every `every`.
pub fn spawn_fleet_summary(health: HealthMap, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let counts = health.counts();
            let line = counts
                .iter()
                .map(|(s, n)| format!("{}={n}", s.as_str()))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::info!(tenants = health.len(), states = %line, "fleet summary");
        }
    })
}

/// Runs the connector with `settings` until a termination signal. `announce` prints where the
/// admin API listens on standard error (for `demo`, whose port may differ from the default).
pub async fn supervise(settings: Settings, opts: AppOptions, announce: bool) -> anyhow::Result<u8> {
    if settings.sinks.is_empty() {
        bail!(
            "{}: no [sinks] configured, so events would go nowhere; add e.g. [sinks.console] type = \"stdout\"",
            settings.config_path.display()
        );
    }
    let every = settings.connector.summary_interval.0;
    let app = App::start(settings, opts).await?;
    if announce {
        eprintln!(
            "admin API on http://{0} (try: curl http://{0}/tenants)",
            app.admin_addr()
        );
    }
    let summary = spawn_fleet_summary(app.health.clone(), every);
    let outcome = tokio::select! {
        sig = termination() => Ok(sig?),
        _ = async {
            while app.is_running() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } => Err(anyhow::anyhow!("the supervisor stopped unexpectedly")),
    };
    summary.abort();
    match outcome {
        Ok(sig) => {
            tracing::info!(signal = sig, "shutting down: finishing pages in flight");
            app.shutdown().await?;
            tracing::info!("shutdown complete");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

pub async fn run(path: &Path) -> anyhow::Result<u8> {
    let settings = load(path, &EnvSource::Process)?;
    supervise(settings, AppOptions::default(), false).await
}
