//! `wiz-connector simulate`: the Wiz simulator alone (and, with `--hec`, a Splunk HEC simulator
//! beside it), for trying a pipeline without a Wiz tenant. Prints a configuration snippet for its
//! tenants (and the HEC sink), then serves until Ctrl-C.

use std::time::Duration;

use crate::cli::SimulateArgs;
use crate::sim::{SimTenantSpec, Simulator, SimulatorOptions};

/// Options of the simulator as the command line gives them.
pub fn options(args: &SimulateArgs) -> SimulatorOptions {
    let tenants = (0..args.tenants)
        .map(|n| SimTenantSpec {
            token_expires_in: args.token_expires_in,
            vulnerabilities: args.vulnerabilities,
            ..SimTenantSpec::numbered(n, args.seed, args.issues)
        })
        .collect();
    SimulatorOptions {
        tenants,
        enforce_rate_limit: args.enforce_rate_limit,
        latency: Duration::from_millis(args.latency_ms),
        churn_every: (!args.churn_every.0.is_zero()).then_some(args.churn_every.0),
        unknown_id_not_found: !args.omit_unknown_ids,
        accept_updated_at_filter: args.accept_updated_at_filter,
        ..Default::default()
    }
}

/// A `[tenants.*]` snippet pointing at `sim`.
pub fn config_snippet(sim: &Simulator) -> String {
    let mut out = String::new();
    for (n, t) in sim.tenants().iter().enumerate() {
        out.push_str(&sim.tenant_table(&format!("sim-{n:04}"), t));
        out.push('\n');
    }
    out
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<u8> {
    let sim = Simulator::start(args.listen, options(&args))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (choose another with --listen)",
                args.listen
            )
        })?;
    tracing::info!(
        addr = %sim.addr(),
        tenants = args.tenants,
        issues_per_tenant = args.issues,
        "wiz simulator listening"
    );
    println!("# wiz simulator on {}: paste these tenants into a config (simulated credentials, not secrets)\n", sim.base_url());
    print!("{}", config_snippet(&sim));
    let _siems = start_siems(&args).await?;
    tokio::signal::ctrl_c().await?;
    tracing::info!("simulator stopped");
    Ok(0)
}

/// The SIEM simulators asked for, started, each with a sink snippet printed; kept running
/// until the returned value is dropped.
async fn start_siems(args: &SimulateArgs) -> anyhow::Result<Vec<Box<dyn std::any::Any>>> {
    let listen_error = |addr: std::net::SocketAddr, flag: &str, e: std::io::Error| {
        anyhow::anyhow!("cannot listen on {addr}: {e} (choose another with {flag})")
    };
    let mut running: Vec<Box<dyn std::any::Any>> = Vec::new();
    if let Some(addr) = args.hec {
        let hec = crate::sim::hec::HecSimulator::start(
            addr,
            crate::sim::hec::HecOptions {
                ack: args.hec_ack,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| listen_error(addr, "--hec", e))?;
        tracing::info!(addr = %addr, ack = args.hec_ack, "splunk hec simulator listening");
        println!(
            "# splunk hec simulator on {}: a sink for it (a simulated token, not a secret)\n{}",
            hec.base(),
            crate::sim::hec::sink_snippet("splunk", &hec, args.hec_ack)
        );
        running.push(Box::new(hec));
    }
    if let Some(addr) = args.elastic {
        let es = crate::sim::elastic::ElasticSimulator::start(addr, Default::default())
            .await
            .map_err(|e| listen_error(addr, "--elastic", e))?;
        tracing::info!(addr = %addr, "elasticsearch simulator listening");
        println!(
            "# elasticsearch simulator on {}: a sink for it (a simulated API key, not a secret)\n{}",
            es.base(),
            crate::sim::elastic::sink_snippet("elastic", &es)
        );
        running.push(Box::new(es));
    }
    if let Some(addr) = args.sentinel {
        let az = crate::sim::sentinel::SentinelSimulator::start(addr, Default::default())
            .await
            .map_err(|e| listen_error(addr, "--sentinel", e))?;
        tracing::info!(addr = %addr, "sentinel simulator listening");
        println!(
            "# sentinel (entra + logs ingestion) simulator on {}: a sink for it (a simulated app secret, not a secret)\n{}",
            az.base(),
            crate::sim::sentinel::sink_snippet("sentinel", &az)
        );
        running.push(Box::new(az));
    }
    Ok(running)
}
