//! What changed between two configurations, so a reload touches only that.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::ExposeSecret;

use super::settings::{Settings, SinkSpec, TenantSpec};

/// Everything the sink actor is built from: the outputs and, with routes, each tenant's
/// destinations.
#[derive(Debug, Clone)]
pub struct SinkSet {
    pub specs: Vec<SinkSpec>,
    pub routing: Option<Arc<crate::sink::routing::Routing>>,
}

/// The difference between the running configuration and a new one.
#[derive(Debug, Default, Clone)]
pub struct ConfigDiff {
    /// New tenants.
    pub added: Vec<Arc<TenantSpec>>,
    /// Tenants no longer configured.
    pub removed: Vec<String>,
    /// Tenants whose credentials, endpoints or query changed: restarted with the new spec.
    pub restarted: Vec<Arc<TenantSpec>>,
    /// Tenants where only the poll interval or rate limit changed: updated in place.
    pub updated: Vec<Arc<TenantSpec>>,
    /// The new sinks and routes, when either changed.
    pub sinks: Option<SinkSet>,
    /// Changes that need a process restart to take effect (reported, not applied).
    pub needs_restart: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.restarted.is_empty()
            && self.updated.is_empty()
            && self.sinks.is_none()
    }
}

/// What a change of a tenant's settings takes to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TenantChange {
    /// Nothing the tenant actor holds changed (or what changed is read live elsewhere).
    None,
    /// The actor takes the new spec in place (its schedule and rate limit).
    InPlace,
    /// The actor talks to Wiz differently: it is restarted with the new spec.
    Restart,
}

/// Classes every field of [`TenantSpec`]. The destructuring names every field without `..`, so a
/// new field fails to compile here until it is classed: restart, in place, or ignored (with why).
pub fn classify(a: &TenantSpec, b: &TenantSpec) -> TenantChange {
    let TenantSpec {
        // The key the two specs were matched by.
        id: _,
        // Where it was defined: shown, not used.
        origin: _,
        client_id,
        // Compared explicitly below (`same_secret`): secrets have no `PartialEq`.
        client_secret: _,
        // Where the secret came from: shown, follows the secret.
        secret_source: _,
        api_url,
        auth_url,
        audience,
        // Derived from `api_url`, which restarts.
        cloud: _,
        console_url,
        poll_interval,
        page_size,
        statuses,
        rate_limit,
        request_timeout,
        max_pages_per_sweep,
        retry,
        allow_insecure_endpoints,
        full_sweep_interval,
        full_sweep_max_pages,
        incremental_overlap,
        // Read when a feed's first window starts: the new value applies from then on.
        initial_lookback: _,
        // Read live by the webhook receiver.
        webhook_token: _,
        // Read live by write-back, which keeps its own clients.
        write_back: _,
        feeds,
        // Read live by write-back (its client cache compares it).
        write_credential: _,
    } = a;
    let restart = *client_id != b.client_id
        || !a.same_secret(b)
        || *api_url != b.api_url
        || *auth_url != b.auth_url
        || *audience != b.audience
        || *console_url != b.console_url
        || *page_size != b.page_size
        || *statuses != b.statuses
        || *feeds != b.feeds
        || *request_timeout != b.request_timeout
        || *max_pages_per_sweep != b.max_pages_per_sweep
        || *retry != b.retry
        || *allow_insecure_endpoints != b.allow_insecure_endpoints;
    let in_place = *poll_interval != b.poll_interval
        || *rate_limit != b.rate_limit
        || *full_sweep_interval != b.full_sweep_interval
        || *full_sweep_max_pages != b.full_sweep_max_pages
        || *incremental_overlap != b.incremental_overlap;
    if restart {
        TenantChange::Restart
    } else if in_place {
        TenantChange::InPlace
    } else {
        TenantChange::None
    }
}

/// True when `a` and `b` talk to Wiz differently: another credential (secret compared
/// explicitly), endpoint, audience, or query. Poll interval and rate limit are not in it: they
/// change in place.
pub fn needs_restart(a: &TenantSpec, b: &TenantSpec) -> bool {
    classify(a, b) == TenantChange::Restart
}

/// True when both sink lists are the same, secrets included.
fn same_sinks(a: &[SinkSpec], b: &[SinkSpec]) -> bool {
    let shown = |s: &[SinkSpec]| serde_json::to_string(s).unwrap_or_default();
    shown(a) == shown(b)
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.kind.secrets() == y.kind.secrets())
}

/// Compares the running settings with new ones.
pub fn diff(old: &Settings, new: &Settings) -> ConfigDiff {
    let before: BTreeMap<&str, &Arc<TenantSpec>> =
        old.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    let after: BTreeMap<&str, &Arc<TenantSpec>> =
        new.tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut d = ConfigDiff::default();
    // The new settings' own specs are shared, not copied: the supervisor and the settings it
    // runs under hold one spec per tenant between them.
    for (id, t) in &after {
        match before.get(id) {
            None => d.added.push(Arc::clone(t)),
            Some(o) => match classify(o, t) {
                TenantChange::Restart => d.restarted.push(Arc::clone(t)),
                TenantChange::InPlace => d.updated.push(Arc::clone(t)),
                TenantChange::None => {}
            },
        }
    }
    d.removed = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .map(|s| s.to_string())
        .collect();
    if !same_sinks(&old.sinks, &new.sinks) || old.routing != new.routing {
        d.sinks = Some(SinkSet {
            specs: new.sinks.clone(),
            routing: new.routing.clone(),
        });
    }
    let (a, b) = (&old.connector, &new.connector);
    let mut restart_only = |what: &str, changed: bool| {
        if changed {
            d.needs_restart.push(what.to_string());
        }
    };
    restart_only("admin.listen", old.admin.listen != new.admin.listen);
    let tokens = |s: &Settings| -> Vec<(String, super::Permission, String)> {
        s.admin
            .tokens
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.permission,
                    t.token.expose_secret().to_string(),
                )
            })
            .collect()
    };
    restart_only("admin.token / admin.tokens", tokens(old) != tokens(new));
    restart_only("connector.state_dir", a.state_dir != b.state_dir);
    restart_only(
        "connector.max_concurrent_sweeps",
        a.max_concurrent_sweeps != b.max_concurrent_sweeps,
    );
    restart_only("connector.restart_*", a.restart != b.restart);
    restart_only(
        "connector.shutdown_timeout",
        a.shutdown_timeout != b.shutdown_timeout,
    );
    restart_only(
        "connector.summary_interval",
        a.summary_interval != b.summary_interval,
    );
    restart_only("cluster.*", old.cluster != new.cluster);
    restart_only("hooks.*", old.hooks != new.hooks);
    restart_only(
        "telemetry.*",
        old.telemetry.otlp_endpoint != new.telemetry.otlp_endpoint
            || old.telemetry.service_name != new.telemetry.service_name
            || old.telemetry.metrics_interval != new.telemetry.metrics_interval,
    );
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, EnvSource};

    fn settings(sink_secret: &str, interval: &str) -> Settings {
        let text = format!(
            "[sinks.siem]\ntype = \"http\"\nurl = \"https://siem.example/ingest\"\nauth_value = \"{sink_secret}\"\n[tenants.a]\nclient_id = \"c\"\nclient_secret = \"s\"\napi_url = \"https://api.us1.app.wiz.io/graphql\"\npoll_interval = \"{interval}\"\n"
        );
        load_str("test", &text, &EnvSource::Fixed(Default::default())).unwrap()
    }

    #[test]
    fn a_rotated_sink_secret_is_a_sink_change_and_an_interval_an_update() {
        let d = diff(&settings("k1", "60s"), &settings("k2", "60s"));
        assert!(d.sinks.is_some(), "the sink secret changed");
        assert!(d.updated.is_empty() && d.restarted.is_empty());
        let d = diff(&settings("k1", "60s"), &settings("k1", "90s"));
        assert!(d.sinks.is_none());
        assert_eq!(d.updated.len(), 1);
        assert!(diff(&settings("k1", "60s"), &settings("k1", "60s")).is_empty());
    }
}
