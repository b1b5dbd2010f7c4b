//! `wiz-connector validate`: load, validate, and print the resolved configuration with every
//! secret redacted.

use std::path::Path;

use crate::config::{load, EnvSource};

/// Prints the resolved configuration as JSON; the error names file, tenant and key.
pub fn run(path: &Path) -> anyhow::Result<u8> {
    let settings = load(path, &EnvSource::Process)?;
    println!("{}", serde_json::to_string_pretty(&settings)?);
    eprintln!(
        "configuration is valid: {} tenant(s), {} sink(s)",
        settings.tenants.len(),
        settings.sinks.len()
    );
    if let Some(c) = settings.cluster.as_ref().filter(|c| c.replicas > 1) {
        eprintln!(
            "warning: cluster.replicas = {}: the state stream's expected-sequence checks, which fence each tenant's state to its owner, are not reliably enforced by clustered streams of nats-server 2.9.x (nats-server issues 4320 and 5644): use a current 2.10 or later; the server's version is checked, and warned about, at start",
            c.replicas
        );
    }
    Ok(0)
}
