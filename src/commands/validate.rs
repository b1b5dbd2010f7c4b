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
    Ok(0)
}
