//! Resolving routes (CONTRACT "Routes") into each tenant's destinations, once per configuration:
//! a tenant's own sinks (from its file), the shared sinks its `sinks` list names, and every
//! `[routes.<name>]` it matches (tenant ids or globs, labels), each with the route's feeds and
//! minimum severity. The result ([`Routing`]) is what the sink actor applies; nothing is matched
//! per event. Every problem names the route, sink or tenant key, and says what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::types::{ConfigFile, RouteSection, TenantSinks};
use crate::feeds::FeedName;
use crate::sink::routing::{
    placeholders, Destination, Interner, Placeholder, Routing, TenantRoutes, SEVERITIES,
};
use crate::sink::SinkSpec;

/// Where a problem is: a global key, or a key of a tenant (reported with the tenant's file).
pub(super) enum At<'a> {
    Global(String),
    Tenant(&'a str, String),
}

/// True when a configuration routes: some tenant names sinks, or some route exists. Without
/// either, every sink receives every event (the behaviour before routes).
pub(super) fn routed(file: &ConfigFile) -> bool {
    !file.routes.is_empty() || file.tenants.values().any(|t| t.sinks.is_some())
}

/// Without routes: every sink takes every event; the tenants' labels are kept for sink
/// templates (`None` when no tenant has labels).
pub(super) fn labels_only(file: &ConfigFile, tenants: &[&str]) -> Option<Routing> {
    let mut shared = Interner::default();
    let tenants: BTreeMap<String, Arc<TenantRoutes>> = tenants
        .iter()
        .filter_map(|id| {
            let labels = file.tenants.get(*id)?.labels.clone()?;
            Some((
                id.to_string(),
                shared.share(TenantRoutes {
                    destinations: Vec::new(),
                    labels,
                }),
            ))
        })
        .collect();
    (!tenants.is_empty()).then_some(Routing {
        every_sink: true,
        tenants,
    })
}

/// `*` matches any run of characters, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// A route, checked.
struct Route<'a> {
    name: &'a str,
    section: &'a RouteSection,
    feeds: Option<Vec<String>>,
    min_severity: Option<usize>,
}

impl Route<'_> {
    fn matches(&self, id: &str, labels: &BTreeMap<String, String>) -> bool {
        let by_id = self
            .section
            .tenants
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|p| glob(p.trim(), id)));
        let by_label = self
            .section
            .labels
            .as_ref()
            .is_none_or(|want| want.iter().all(|(k, v)| labels.get(k) == Some(v)));
        by_id && by_label
    }
}

/// Resolves every tenant's destinations. `sinks` are all resolved sinks, shared and the
/// tenants' own (`owner`); `tenants` the ids of the tenants that resolved. Problems go to
/// `problem`; the routing is returned even when there are some (the caller fails the load).
pub(super) fn resolve(
    file: &ConfigFile,
    sinks: &[SinkSpec],
    tenants: &[&str],
    problem: &mut dyn FnMut(At<'_>, String),
) -> Routing {
    let owner_of: BTreeMap<&str, Option<&str>> = sinks
        .iter()
        .map(|s| (s.name.as_str(), s.owner.as_deref()))
        .collect();
    let shared = |name: &str| -> Result<(), String> {
        match owner_of.get(name) {
            None => Err(format!(
                "unknown sink `{name}`; configured sinks: {}",
                owner_of
                    .iter()
                    .filter(|(_, o)| o.is_none())
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(Some(owner)) => Err(format!(
                "sink `{name}` belongs to tenant `{owner}` (it is defined in that tenant's file); no other tenant or route may use it"
            )),
            Some(None) => Ok(()),
        }
    };
    let routes = check_routes(file, &shared, problem);

    let mut routing = Routing::default();
    let mut interner = Interner::default();
    for &id in tenants {
        let Some(t) = file.tenants.get(id) else {
            continue;
        };
        let labels = t.labels.clone().unwrap_or_default();
        let mut dest: Vec<Destination> = Vec::new();
        let mut add = |d: Destination| match dest.iter_mut().find(|x| x.sink == d.sink) {
            Some(x) => x.widen(&d),
            None => dest.push(d),
        };
        let whole = |sink: &str, via: &str| Destination {
            sink: sink.to_string(),
            via: vec![via.to_string()],
            feeds: None,
            min_severity: None,
        };
        match &t.sinks {
            Some(TenantSinks::Own(own)) => {
                for name in own.keys() {
                    add(whole(name, "own"));
                }
            }
            Some(TenantSinks::Names(names)) => {
                if names.is_empty() {
                    problem(
                        At::Tenant(id, "sinks".into()),
                        "is empty: name the tenant's sinks, or leave it out and route it with [routes]".into(),
                    );
                }
                for name in names {
                    match shared(name) {
                        Ok(()) => add(whole(name, "tenant")),
                        Err(m) => problem(At::Tenant(id, "sinks".into()), m),
                    }
                }
            }
            None => {}
        }
        for r in routes.iter().filter(|r| r.matches(id, &labels)) {
            for sink in &r.section.sinks {
                if owner_of.get(sink.as_str()) == Some(&None) {
                    add(Destination {
                        sink: sink.clone(),
                        via: vec![format!("route:{}", r.name)],
                        feeds: r.feeds.clone(),
                        min_severity: r.min_severity,
                    });
                }
            }
        }
        if dest.is_empty() {
            problem(
                At::Tenant(id, "sinks".into()),
                "routes nowhere: no own sink, no `sinks` list and no route matches it; its events would reach no sink. Give it sinks, or a route that matches it".into(),
            );
        }
        routing.tenants.insert(
            id.to_string(),
            interner.share(TenantRoutes {
                destinations: dest,
                labels,
            }),
        );
    }
    routing
}

/// Checks every route once: its sinks (shared ones), feeds, severity and tenant list.
fn check_routes<'a>(
    file: &'a ConfigFile,
    shared: &dyn Fn(&str) -> Result<(), String>,
    problem: &mut dyn FnMut(At<'_>, String),
) -> Vec<Route<'a>> {
    let mut routes = Vec::new();
    for (name, section) in &file.routes {
        let key = |k: &str| format!("routes.{name}.{k}");
        if section.sinks.is_empty() {
            problem(
                At::Global(key("sinks")),
                "must name at least one sink".into(),
            );
        }
        for s in &section.sinks {
            if let Err(m) = shared(s) {
                problem(At::Global(key("sinks")), m);
            }
        }
        let feeds = section.feeds.as_ref().map(|list| {
            let mut out = Vec::new();
            for f in list {
                match FeedName::parse(f.trim()) {
                    Some(f) => out.push(f.as_str().to_string()),
                    None => problem(
                        At::Global(key("feeds")),
                        format!(
                            "unknown feed {f:?}; use any of {}",
                            FeedName::ALL.map(FeedName::as_str).join(", ")
                        ),
                    ),
                }
            }
            out
        });
        let min_severity = section.min_severity.as_deref().and_then(|s| {
            let found = SEVERITIES.iter().position(|x| x.eq_ignore_ascii_case(s.trim()));
            if found.is_none() {
                problem(
                    At::Global(key("min_severity")),
                    format!("unknown severity {s:?}; use info, low, medium or high (the normalized ladder: Wiz's CRITICAL is high)"),
                );
            }
            found
        });
        if section.tenants.as_ref().is_some_and(|t| t.is_empty()) {
            problem(
                At::Global(key("tenants")),
                "is empty: leave it out to match every tenant, or name ids or globs".into(),
            );
        }
        routes.push(Route {
            name,
            section,
            feeds,
            min_severity,
        });
    }
    routes
}

/// Checks the placeholders of every sink's templated settings, and that each tenant whose
/// events reach a sink has the labels it names. `routing`: `None` when every sink takes every
/// tenant.
pub(super) fn check_templates(
    file: &ConfigFile,
    sinks: &[SinkSpec],
    routing: Option<&Routing>,
    tenants: &[&str],
    problem: &mut dyn FnMut(At<'_>, String),
) {
    for spec in sinks {
        let sink_key = |k: &str| match &spec.owner {
            Some(owner) => At::Tenant(owner, format!("sinks.{}.{k}", spec.name)),
            None => At::Global(format!("sinks.{}.{k}", spec.name)),
        };
        for (key, template) in spec.kind.templates() {
            let found = match placeholders(template) {
                Ok(p) => p,
                Err(m) => {
                    problem(sink_key(key), m);
                    continue;
                }
            };
            let needed: BTreeSet<&str> = found
                .iter()
                .filter_map(|p| match p {
                    Placeholder::Label(k) => Some(k.as_str()),
                    _ => None,
                })
                .collect();
            if needed.is_empty() {
                continue;
            }
            let reaching: Vec<&str> = match routing.filter(|r| !r.every_sink) {
                Some(r) => r
                    .tenants
                    .iter()
                    .filter(|(_, t)| t.destinations.iter().any(|d| d.sink == spec.name))
                    .map(|(id, _)| id.as_str())
                    .collect(),
                None => tenants.to_vec(),
            };
            for id in reaching {
                let labels = file.tenants.get(id).and_then(|t| t.labels.as_ref());
                for k in &needed {
                    if !labels.is_some_and(|l| l.contains_key(*k)) {
                        problem(
                            sink_key(key),
                            format!(
                                "uses {{label.{k}}}, which tenant `{id}` (whose events reach this sink) lacks: add `labels = {{ {k} = \"...\" }}` to the tenant, or route it elsewhere"
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_ids() {
        assert!(glob("ini*", "initech"));
        assert!(glob("*", "anything"));
        assert!(glob("t?-*", "t1-prod"));
        assert!(!glob("ini*", "acme"));
        assert!(!glob("t?", "t10"));
        assert!(glob("acme", "acme"));
    }
}
