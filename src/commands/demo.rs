//! `wiz-connector demo`, the embedded default: the built-in Wiz simulator with a few churning
//! tenants on loopback, a configuration built in memory, and the very same supervisor with a
//! stdout sink. Needs no config and no Wiz account. With `--siem`, a simulated SIEM runs
//! beside it and takes the events too, through its real sink.

use std::time::Duration;

use crate::app::AppOptions;
use crate::cli::{DemoArgs, Siem};
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

/// A simulated SIEM the demo delivers into, and how to count what it took.
enum DemoSiem {
    Splunk(crate::sim::hec::HecSimulator),
    Elastic(crate::sim::elastic::ElasticSimulator),
    Sentinel(crate::sim::sentinel::SentinelSimulator),
}

impl DemoSiem {
    async fn start(which: Siem) -> anyhow::Result<DemoSiem> {
        let lo: std::net::SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        Ok(match which {
            Siem::Splunk => DemoSiem::Splunk(
                crate::sim::hec::HecSimulator::start(
                    lo,
                    crate::sim::hec::HecOptions {
                        ack: true,
                        ..Default::default()
                    },
                )
                .await?,
            ),
            Siem::Elasticsearch => DemoSiem::Elastic(
                crate::sim::elastic::ElasticSimulator::start(lo, Default::default()).await?,
            ),
            Siem::Sentinel => DemoSiem::Sentinel(
                crate::sim::sentinel::SentinelSimulator::start(lo, Default::default()).await?,
            ),
        })
    }

    /// Its sink's table.
    fn sink(&self) -> String {
        match self {
            DemoSiem::Splunk(s) => crate::sim::hec::sink_snippet("siem", s, true),
            DemoSiem::Elastic(s) => crate::sim::elastic::sink_snippet("siem", s),
            DemoSiem::Sentinel(s) => crate::sim::sentinel::sink_snippet("siem", s),
        }
    }

    /// What it took so far, in a sentence.
    fn report(&self) -> String {
        match self {
            DemoSiem::Splunk(s) => format!(
                "splunk simulator at {}: {} events indexed and acknowledged",
                s.base(),
                s.events().len()
            ),
            DemoSiem::Elastic(s) => {
                let docs = s.docs();
                format!(
                    "elasticsearch simulator at {}: {} documents (ECS) in {}",
                    s.base(),
                    docs.len(),
                    s.data_streams().join(", ")
                )
            }
            DemoSiem::Sentinel(s) => format!(
                "sentinel simulator at {}: {} records (OCSF) ingested",
                s.base(),
                s.records().len()
            ),
        }
    }
}

/// How often the demo says what its SIEM took.
const SIEM_REPORT_EVERY: Duration = Duration::from_secs(5);

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
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
    let siem = match args.siem {
        Some(which) => Some(std::sync::Arc::new(DemoSiem::start(which).await?)),
        None => None,
    };
    let mut config = demo_config(&sim);
    if let Some(s) = &siem {
        config.push_str(&s.sink());
    }
    let settings = load_str(
        "demo (built-in)",
        &config,
        &EnvSource::Fixed(Default::default()),
    )?;
    let reporter = siem.clone().map(|s| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SIEM_REPORT_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", s.report());
            }
        })
    });
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
    if let Some(r) = reporter {
        r.abort();
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}
