//! Routes, resolved: for each tenant, the destinations its events go to. `config::routes` builds
//! this once per configuration (a reload builds it again); the sink actor only looks a batch's
//! tenant up, so no event is matched against routes on the way out. A destination may narrow
//! what it takes to some feeds (decided per batch: a page holds one feed) and a minimum severity
//! (the one test made per event, on the normalized `severity` field).
//!
//! Sink settings may hold placeholders (`{tenant}`, `{feed}`, `{label.<key>}`), filled from the
//! tenant's configuration only, never from event content: a value Wiz controls never chooses
//! where data goes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

/// The normalized severity ladder, lowest first (CONTRACT: `info`, `low`, `medium`, `high`).
pub const SEVERITIES: [&str; 4] = ["info", "low", "medium", "high"];

/// Each tenant's destinations. Tenants not listed have none (`validate` refuses a routed
/// configuration where a tenant has none).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Routing {
    /// No routes: every sink takes every event (`tenants` then holds only the labels sink
    /// templates need).
    pub every_sink: bool,
    pub tenants: BTreeMap<String, Arc<TenantRoutes>>,
}

/// One tenant's destinations and the values its sink templates are filled with. Tenants with
/// the same destinations and labels share one (see [`Interner`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TenantRoutes {
    pub destinations: Vec<Destination>,
    /// The tenant's labels (`{label.<key>}`).
    pub labels: BTreeMap<String, String>,
}

/// A sink this tenant's events go to, and what of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Destination {
    /// The sink's name.
    pub sink: String,
    /// Why: `own` (a sink of the tenant's own file), `tenant` (its `sinks` list) or
    /// `route:<name>`; several when more than one route leads here.
    pub via: Vec<String>,
    /// The feeds it takes; `None`: all.
    pub feeds: Option<Vec<String>>,
    /// The lowest severity it takes (an index into [`SEVERITIES`], shown by name); `None`: all.
    #[serde(serialize_with = "severity_name")]
    pub min_severity: Option<usize>,
}

/// Hands out one shared copy of each distinct [`TenantRoutes`]: a fleet's tenants mostly share
/// their customer's routes, so 100,000 tenants hold a few hundred tables, not 100,000.
#[derive(Default)]
pub struct Interner(std::collections::HashSet<Arc<TenantRoutes>>);

impl Interner {
    pub fn share(&mut self, routes: TenantRoutes) -> Arc<TenantRoutes> {
        if let Some(shared) = self.0.get(&routes) {
            return shared.clone();
        }
        let shared = Arc::new(routes);
        self.0.insert(shared.clone());
        shared
    }
}

fn severity_name<S: serde::Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
    match v.and_then(|i| SEVERITIES.get(i)) {
        Some(name) => s.serialize_str(name),
        None => s.serialize_none(),
    }
}

impl Destination {
    /// Widens this destination by another route to the same sink: it takes what either takes.
    pub fn widen(&mut self, other: &Destination) {
        self.via.extend(other.via.iter().cloned());
        self.feeds = match (self.feeds.take(), &other.feeds) {
            (Some(mut a), Some(b)) => {
                for f in b {
                    if !a.contains(f) {
                        a.push(f.clone());
                    }
                }
                Some(a)
            }
            _ => None,
        };
        self.min_severity = match (self.min_severity, other.min_severity) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
    }

    /// Whether it takes a batch of `feed`.
    pub fn takes_feed(&self, feed: &str) -> bool {
        self.feeds
            .as_ref()
            .is_none_or(|f| f.iter().any(|x| x == feed))
    }

    /// The lines of `lines` it takes, decided on `native` (the same events, one per line, in
    /// the native format): `lines` is the batch in the sink's format, line `n` the same event
    /// as line `n` of `native`. `None`: all of them (no copy).
    pub fn select(&self, native: &[u8], lines: &[u8]) -> Option<(Vec<u8>, usize)> {
        let min = self.min_severity?;
        let mut out = Vec::with_capacity(lines.len());
        let mut n = 0;
        let events = lines.split_inclusive(|b| *b == b'\n');
        for (judged, line) in native.split_inclusive(|b| *b == b'\n').zip(events) {
            if severity_of(judged).is_some_and(|s| s >= min) {
                out.extend_from_slice(line);
                n += 1;
            }
        }
        Some((out, n))
    }
}

/// The formats the sinks named `destinations` take.
pub fn formats_of(sinks: &[super::SinkSpec], destinations: &[String]) -> crate::format::FormatSet {
    crate::format::FormatSet::of(
        sinks
            .iter()
            .filter(|s| destinations.contains(&s.name))
            .map(|s| s.format),
    )
}

/// The sinks that take `tenant`'s events (before a route's feed and severity filters): its
/// destinations under routes, else every sink. Sorted, each once.
pub fn sinks_for(
    routing: Option<&Routing>,
    sinks: &[super::SinkSpec],
    tenant: &str,
) -> Arc<[String]> {
    let mut names: Vec<String> = match routing.filter(|r| !r.every_sink) {
        Some(r) => r
            .tenants
            .get(tenant)
            .map(|t| t.destinations.iter().map(|d| d.sink.clone()).collect())
            .unwrap_or_default(),
        None => sinks.iter().map(|s| s.name.clone()).collect(),
    };
    names.sort();
    names.dedup();
    names.into()
}

/// The normalized severity of an event line: its first `"severity":"..."` member, which the
/// normalizers write before `raw_event` (whose own `severity` is Wiz's). `None`: the event has
/// none (an `action.applied` audit event), and a severity filter does not take it.
pub fn severity_of(line: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"severity\":\"";
    let at = memchr::memmem::find(line, KEY)? + KEY.len();
    let rest = &line[at..];
    let end = memchr::memchr(b'"', rest)?;
    let value = &rest[..end];
    SEVERITIES.iter().position(|s| s.as_bytes() == value)
}

/// Fills the placeholders of `template` for one tenant and feed. Placeholders were checked when
/// the configuration was resolved ([`placeholders`]); an unknown one is left as it is.
pub fn render(
    template: &str,
    tenant: &str,
    feed: &str,
    labels: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        match name {
            "tenant" => out.push_str(tenant),
            "feed" => out.push_str(feed),
            _ => match name.strip_prefix("label.").and_then(|k| labels.get(k)) {
                Some(v) => out.push_str(v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The placeholders of `template`, or why one is not taken.
pub fn placeholders(template: &str) -> Result<Vec<Placeholder>, String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!(
                "{template:?} has a `{{` without its `}}`; placeholders are {{tenant}}, {{feed}} and {{label.<key>}}"
            ));
        };
        let name = &after[..close];
        found.push(match name {
            "tenant" => Placeholder::Tenant,
            "feed" => Placeholder::Feed,
            _ => match name.strip_prefix("label.") {
                Some(k) if !k.is_empty() => Placeholder::Label(k.to_string()),
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}} in {template:?}: use {{tenant}}, {{feed}} or {{label.<key>}}"
                    ))
                }
            },
        });
        rest = &after[close + 1..];
    }
    Ok(found)
}

/// A placeholder of a sink template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Tenant,
    Feed,
    Label(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_from_configuration_values_only() {
        let labels = BTreeMap::from([("customer".to_string(), "acme".to_string())]);
        assert_eq!(
            render(
                "out/{label.customer}/{tenant}-{feed}.jsonl",
                "t1",
                "issues",
                &labels
            ),
            "out/acme/t1-issues.jsonl"
        );
        assert_eq!(
            placeholders("a/{tenant}/{label.tier}").unwrap(),
            vec![Placeholder::Tenant, Placeholder::Label("tier".into())]
        );
        let e = placeholders("a/{customer}").unwrap_err();
        assert!(e.contains("unknown placeholder {customer}"), "{e}");
        assert!(placeholders("a/{tenant").is_err());
    }

    #[test]
    fn a_severity_filter_reads_the_normalized_severity_not_wizs() {
        let d = Destination {
            sink: "s".into(),
            via: vec![],
            feeds: None,
            min_severity: Some(3),
        };
        let lines = b"{\"id\":\"a\",\"severity\":\"high\",\"raw_event\":{\"severity\":\"LOW\"}}\n{\"id\":\"b\",\"severity\":\"low\",\"raw_event\":{\"severity\":\"CRITICAL\"}}\n{\"id\":\"c\",\"kind\":\"action.applied\"}\n";
        let (out, n) = d.select(lines, lines).unwrap();
        assert_eq!(n, 1);
        assert!(out.starts_with(b"{\"id\":\"a\"") && out.ends_with(b"\n"));
        let all = Destination {
            min_severity: None,
            ..d.clone()
        };
        assert!(all.select(lines, lines).is_none());
        let mut narrow = Destination {
            feeds: Some(vec!["issues".into()]),
            ..d
        };
        assert!(narrow.takes_feed("issues") && !narrow.takes_feed("audit"));
        narrow.widen(&Destination {
            sink: "s".into(),
            via: vec!["route:x".into()],
            feeds: None,
            min_severity: Some(1),
        });
        assert!(narrow.takes_feed("audit"));
        assert_eq!(narrow.min_severity, Some(1));
    }
}
