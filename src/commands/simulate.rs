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
    let _hec = match args.hec {
        None => None,
        Some(addr) => {
            let opts = crate::sim::hec::HecOptions {
                ack: args.hec_ack,
                ..Default::default()
            };
            let token = opts.tokens[0].clone();
            let hec = crate::sim::hec::HecSimulator::start(addr, opts)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot listen on {addr}: {e} (choose another with --hec)")
                })?;
            tracing::info!(addr = %addr, ack = args.hec_ack, "splunk hec simulator listening");
            println!(
                "# splunk hec simulator on {}: a sink for it (a simulated token, not a secret)\n[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"{}\"\ntoken = \"{token}\"\nack = {}\n",
                hec.base(),
                hec.base(),
                args.hec_ack
            );
            Some(hec)
        }
    };
    tokio::signal::ctrl_c().await?;
    tracing::info!("simulator stopped");
    Ok(0)
}
