//! `wiz-connector run`: supervise every configured tenant until SIGINT or SIGTERM, then shut down
//! in order (timers stop, each sweep delivers its page in flight, the sinks flush) and exit 0.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use crate::app::{App, AppOptions};
use crate::config::{load, EnvSource, Settings};
use crate::health::HealthMap;
use crate::reload::Reloader;

/// SIGINT and SIGTERM, listened to from before the connector starts, so an early signal also
/// shuts down cleanly instead of killing the process.
pub struct Termination {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Termination {
    pub fn listen() -> anyhow::Result<Termination> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Termination {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Termination {})
    }

    /// Resolves with the signal's name when one arrives.
    pub async fn recv(&mut self) -> anyhow::Result<&'static str> {
        #[cfg(unix)]
        {
            Ok(tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            })
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await?;
            Ok("Ctrl-C")
        }
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

/// SIGHUP, listened to from before the connector starts (the default action of an unhandled
/// SIGHUP would end the process).
struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    fn listen() -> anyhow::Result<Hangups> {
        Ok(Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// Reloads the configuration on every SIGHUP.
    fn reload_with(self, reloader: Reloader) -> tokio::task::JoinHandle<()> {
        #[cfg(unix)]
        {
            let mut hup = self.signal;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let _ = reloader.reload("SIGHUP").await;
                }
            })
        }
        #[cfg(not(unix))]
        {
            let _ = reloader;
            tokio::spawn(async {})
        }
    }
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
    if let Some(endpoint) = &settings.telemetry.otlp_endpoint {
        crate::telemetry::enable_otlp(
            endpoint,
            &settings.telemetry.service_name,
            settings.telemetry.metrics_interval.0,
        )?;
    }
    let every = settings.connector.summary_interval.0;
    let mut termination = Termination::listen()?;
    let hangups = Hangups::listen()?;
    let app = App::start(settings, opts).await?;
    if announce {
        eprintln!(
            "admin API on http://{0} (try: curl http://{0}/tenants)",
            app.admin_addr()
        );
    }
    let summary = spawn_fleet_summary(app.health.clone(), every);
    let trimmer = crate::heap::spawn_trimmer();
    let hangups = hangups.reload_with(app.reloader().clone());
    let outcome = tokio::select! {
        sig = termination.recv() => Ok(sig?),
        _ = async {
            while app.is_running() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } => Err(anyhow::anyhow!("the supervisor stopped unexpectedly")),
    };
    summary.abort();
    trimmer.abort();
    hangups.abort();
    match outcome {
        Ok(sig) => {
            tracing::info!(signal = sig, "shutting down: finishing pages in flight");
            app.shutdown().await?;
            tracing::info!("shutdown complete");
            tokio::task::spawn_blocking(crate::telemetry::shutdown).await?;
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

pub async fn run(path: &Path) -> anyhow::Result<u8> {
    let settings = load(path, &EnvSource::Process)?;
    supervise(settings, AppOptions::default(), false).await
}
