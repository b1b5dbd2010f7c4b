//! Where configuration values come from: the environment the loader reads ([`EnvSource`]) and
//! the file or variable each key came from ([`Origins`]), so problems can name it. A leaf of
//! `config`: both loading and resolving read it.

use std::collections::HashMap;

use config::{Config, Environment, ValueKind};

/// Prefix of environment overrides, e.g. `WIZ_CONNECTOR__TENANTS__ACME__CLIENT_SECRET`.
pub(super) const ENV_PREFIX: &str = "WIZ_CONNECTOR";
pub(super) const ENV_SEPARATOR: &str = "__";

/// The environment the loader reads: the process's, or a fixed map (tests, embedded use).
#[derive(Debug, Clone, Default)]
pub enum EnvSource {
    #[default]
    Process,
    Fixed(HashMap<String, String>),
}

impl EnvSource {
    pub fn var(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Fixed(m) => m.get(name).cloned(),
        }
    }

    pub(super) fn overrides(&self) -> Environment {
        let e = Environment::with_prefix(ENV_PREFIX).separator(ENV_SEPARATOR);
        match self {
            EnvSource::Process => e,
            EnvSource::Fixed(m) => e.source(Some(m.clone())),
        }
    }
}

/// Knows which file or variable each key came from, so problems can name it.
pub(crate) struct Origins {
    /// The merged layers; `None` when the main file alone is the configuration.
    pub(super) merged: Option<Config>,
    pub(super) main: String,
    pub(super) tenant_files: HashMap<String, String>,
}

impl Origins {
    /// Where the value at dotted `key` came from: an environment variable, or the main file.
    pub(crate) fn of(&self, key: &str) -> String {
        self.env_var(key).unwrap_or_else(|| self.main.clone())
    }

    /// Where tenant `id`'s `key` came from: an environment variable, or the tenant's file.
    pub(crate) fn of_tenant(&self, id: &str, key: &str) -> String {
        self.env_var(&format!("tenants.{id}.{key}"))
            .unwrap_or_else(|| self.tenant_file(id))
    }

    /// The file that defines tenant `id`.
    pub(crate) fn tenant_file(&self, id: &str) -> String {
        self.tenant_files
            .get(id)
            .cloned()
            .unwrap_or_else(|| self.main.clone())
    }

    /// `environment variable WIZ_CONNECTOR__...` when the value at `key` came from one.
    fn env_var(&self, key: &str) -> Option<String> {
        // Walk the merged tree (deserializing a `Value` would drop its origin).
        let mut v = &self.merged.as_ref()?.cache;
        for seg in key.split('.') {
            match &v.kind {
                ValueKind::Table(t) => v = t.get(seg)?,
                _ => return None,
            }
        }
        (v.origin()? == "the environment").then(|| {
            format!(
                "environment variable {ENV_PREFIX}{ENV_SEPARATOR}{}",
                key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
            )
        })
    }
}
