//! `wiz-connector demo`, the embedded default: the built-in Wiz simulator with a few churning
//! tenants on loopback, a configuration built in memory, and the very same supervisor with a
//! stdout sink. Needs no config and no Wiz account.

use std::time::Duration;

use crate::app::AppOptions;
use crate::commands::run::supervise;
use crate::config::{load_str, EnvSource};
use crate::sim::{SimTenantSpec, Simulator, SimulatorOptions};

/// Tenants, issues per tenant and churn of the demo.
const TENANTS: usize = 3;
const ISSUES: usize = 40;
const CHURN_EVERY: Duration = Duration::from_secs(2);

/// The demo's configuration for a running simulator.
pub fn demo_config(sim: &Simulator) -> String {
    // A fresh state store each run, so the demo always starts by streaming every open issue.
    let state = std::env::temp_dir().join(format!("wiz-connector-demo-{}", std::process::id()));
    let mut text = format!(
        "[connector]\npoll_interval = \"5s\"\nstartup_jitter = \"1s\"\nsummary_interval = \"30s\"\nfeeds = [\"issues\", \"detections\"]\nstate_dir = \"{}\"\n\n[sinks.console]\ntype = \"stdout\"\n\n",
        state.display()
    );
    let names = ["acme", "globex", "initech", "umbrella", "hooli"];
    for (i, t) in sim.tenants().iter().enumerate() {
        let id = names
            .get(i)
            .map(|s| s.to_string())
            .unwrap_or(format!("tenant-{i}"));
        text.push_str(&sim.tenant_table(&id, t));
        text.push('\n');
    }
    text
}

pub async fn run() -> anyhow::Result<u8> {
    let sim = Simulator::start(
        "127.0.0.1:0".parse().expect("loopback address"),
        SimulatorOptions {
            tenants: (0..TENANTS)
                .map(|n| SimTenantSpec::numbered(n, 7, ISSUES))
                .collect(),
            churn_every: Some(CHURN_EVERY),
            ..Default::default()
        },
    )
    .await?;
    let settings = load_str(
        "demo (built-in)",
        &demo_config(&sim),
        &EnvSource::Fixed(Default::default()),
    )?;
    eprintln!(
        "wiz-connector demo: simulated Wiz on {} with {TENANTS} churning tenants; normalized events follow on stdout. Ctrl-C to stop.",
        sim.base_url()
    );
    let opts = AppOptions {
        admin_fallback_port: true,
        ..Default::default()
    };
    let state_dir = settings.connector.state_dir.clone();
    let result = supervise(settings, opts, true).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}
