//! Feeds: what a tenant collects from Wiz. `issues` is the first; `vulnerabilities`,
//! `detections`, `audit` and `cloud_configuration` are the others. A feed other than Issues is a
//! value ([`Feed`]): its GraphQL query, the time field its windows filter on (the cursor rule),
//! its change rule ([`ChangeRule`]) and its normalizer ([`normalize`]). The tenant actor runs
//! them one after another within one poll, through the tenant's one client, so under one token
//! and one rate limiter (see `tenant::feed_job` and `tenant::schedule`).
//!
//! Issues keeps its own engine (`tenant`), because it does more than the others: full sweeps with
//! reconciliation, the `updatedAt` probe, webhook hints and write-back. Its events are the same
//! as before feeds existed, with `"feed":"issues"` added.
//!
//! Each feed's state lives in the state store under its own key, [`FeedName::state_key`]
//! (`<tenant>:<feed>`; Issues keeps the bare tenant id): its checkpoint, and for the feeds whose
//! items change (vulnerabilities, configuration findings) the last state of every item.

pub mod normalize;
pub mod view;

use serde::{Deserialize, Serialize};

/// A feed's name, as the configuration and the events spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedName {
    Issues,
    Vulnerabilities,
    Detections,
    Audit,
    CloudConfiguration,
}

impl FeedName {
    pub const ALL: [FeedName; 5] = [
        FeedName::Issues,
        FeedName::Vulnerabilities,
        FeedName::Detections,
        FeedName::Audit,
        FeedName::CloudConfiguration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedName::Issues => "issues",
            FeedName::Vulnerabilities => "vulnerabilities",
            FeedName::Detections => "detections",
            FeedName::Audit => "audit",
            FeedName::CloudConfiguration => "cloud_configuration",
        }
    }

    pub fn parse(s: &str) -> Option<FeedName> {
        FeedName::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The feed's definition (`None` for Issues, which has its own engine).
    pub fn feed(self) -> Option<&'static Feed> {
        FEEDS.iter().find(|f| f.name == self)
    }

    /// The member of a native event that holds the Wiz item's id (what
    /// [`crate::format::item_id`] reads back).
    pub fn id_field(self) -> &'static str {
        match self {
            FeedName::Issues => "issue_id",
            FeedName::Vulnerabilities | FeedName::CloudConfiguration => "finding_id",
            FeedName::Detections => "detection_id",
            FeedName::Audit => "entry_id",
        }
    }

    /// The kind of the quarantine event of a node of this feed that cannot be read.
    pub fn unreadable_kind(self) -> crate::event::kind::EventKind {
        use crate::event::kind::EventKind;
        match self {
            FeedName::Issues => EventKind::IssueUnreadable,
            FeedName::Vulnerabilities => EventKind::VulnerabilityUnreadable,
            FeedName::Detections => EventKind::DetectionUnreadable,
            FeedName::Audit => EventKind::AuditUnreadable,
            FeedName::CloudConfiguration => EventKind::ConfigurationUnreadable,
        }
    }

    /// Where the feed's state lives in the state store: the tenant id for Issues (as before feeds
    /// existed), `<tenant>:<feed>` for the others. Tenant ids are `[a-z0-9_-]`, so no tenant id
    /// is ever another tenant's feed key, and `:` is a plain character in a NATS subject token.
    pub fn state_key(self, tenant: &str) -> String {
        match self {
            FeedName::Issues => tenant.to_string(),
            f => format!("{tenant}:{}", f.as_str()),
        }
    }
}

/// Every state key of a tenant with `feeds`: its own id (always: it carries the Issues state, and
/// in cluster mode the tenant's claim), then one per other feed. In cluster mode each is claimed
/// when the tenant is taken over and released when it is handed over.
pub fn state_keys(tenant: &str, feeds: &[FeedName]) -> Vec<String> {
    std::iter::once(tenant.to_string())
        .chain(
            feeds
                .iter()
                .filter(|f| **f != FeedName::Issues)
                .map(|f| f.state_key(tenant)),
        )
        .collect()
}

impl std::fmt::Display for FeedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a feed's items become events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRule {
    /// Items have a state that changes (open, resolved...): the last delivered state of each is
    /// kept, and an event is made when it changes (kinds opened, updated, resolved, reopened).
    States,
    /// Each item, or each version of it, is delivered once: an audit entry never changes; a
    /// detection's version is its `updatedAt`, and the window follows that. The keys
    /// ([`crate::feeds::view::Item::once_key`]) seen in the overlap of consecutive windows are
    /// kept to drop the repeats. No state per item is kept.
    Once,
}

/// A feed other than Issues.
#[derive(Debug)]
pub struct Feed {
    pub name: FeedName,
    /// The query's connection: `data.<root>`.
    pub root: &'static str,
    /// The GraphQL query (variables `first`, `after`, `filterBy`, and `orderBy` when `order`).
    pub query: &'static str,
    /// The time field windows filter on (`filterBy.<time_filter>.after/before`): the feed's
    /// cursor rule.
    pub time_filter: &'static str,
    /// More of `filterBy`, as JSON members (may be empty).
    pub extra_filter: &'static str,
    /// `orderBy`, as JSON, when the feed asks for an order.
    pub order: Option<&'static str>,
    pub rule: ChangeRule,
    /// The permission the service account needs (named in errors).
    pub permission: &'static str,
}

/// The four feeds beyond Issues, with the query shapes public integrations use (see
/// docs/architecture.md, "Feeds beyond Issues: the evidence").
pub static FEEDS: [Feed; 4] = [
    Feed {
        name: FeedName::Vulnerabilities,
        root: "vulnerabilityFindings",
        query: "query VulnerabilityFindings($first: Int, $after: String, $filterBy: VulnerabilityFindingFilters) { vulnerabilityFindings(first: $first, after: $after, filterBy: $filterBy) { nodes { id name CVSSSeverity score status vendorSeverity firstDetectedAt lastDetectedAt resolvedAt portalUrl description detailedName version fixedVersion remediation vulnerableAsset { ... on VulnerableAssetBase { id type name region cloudPlatform subscriptionExternalId providerUniqueId } } } pageInfo { hasNextPage endCursor } } }",
        time_filter: "updatedAt",
        extra_filter: "",
        order: None,
        rule: ChangeRule::States,
        permission: "read:vulnerabilities",
    },
    Feed {
        name: FeedName::Detections,
        root: "detections",
        query: "query Detections($first: Int, $after: String, $filterBy: DetectionFilters, $orderBy: DetectionOrder) { detections(first: $first, after: $after, filterBy: $filterBy, orderBy: $orderBy) { nodes { id type severity createdAt updatedAt description ruleMatch { rule { id name securitySubCategories { title category { name } } } } primaryActor { id name type } primaryResource { id name type region externalId } cloudAccounts { id name externalId cloudProvider } issue { id } } pageInfo { hasNextPage endCursor } } }",
        // Followed on `updatedAt`, as Elastic's `defend_v2` does: an updated detection comes
        // again, and each version is delivered once (`ChangeRule::Once` keyed by id and
        // `updatedAt`).
        time_filter: "updatedAt",
        // Without a type filter, any filterBy makes Wiz return GENERATED_THREAT only.
        extra_filter: "\"type\":{\"equals\":[\"GENERATED_THREAT\",\"MATCH_ONLY\"]}",
        order: Some("{\"field\":\"CREATED_AT\",\"direction\":\"ASC\"}"),
        rule: ChangeRule::Once,
        // No public source names the scope; XSOAR creates the account as a Wiz Defend integration.
        permission: "read access to Wiz Defend detections (create the account as a Wiz Defend integration)",
    },
    Feed {
        name: FeedName::Audit,
        root: "auditLogEntries",
        query: "query AuditLogEntries($first: Int, $after: String, $filterBy: AuditLogEntryFilters) { auditLogEntries(first: $first, after: $after, filterBy: $filterBy) { nodes { id action requestId status timestamp actionParameters userAgent sourceIP serviceAccount { id name } user { id name } } pageInfo { hasNextPage endCursor } } }",
        time_filter: "timestamp",
        extra_filter: "",
        order: None,
        rule: ChangeRule::Once,
        permission: "admin:audit",
    },
    Feed {
        name: FeedName::CloudConfiguration,
        root: "configurationFindings",
        query: "query CloudConfigurationFindings($first: Int, $after: String, $filterBy: ConfigurationFindingFilters) { configurationFindings(first: $first, after: $after, filterBy: $filterBy) { nodes { id analyzedAt updatedAt severity result status remediation resource { id providerId name nativeType type region cloudPlatform subscription { externalId name } } rule { id shortId name description } } pageInfo { hasNextPage endCursor } } }",
        time_filter: "updatedAt",
        extra_filter: "",
        order: None,
        rule: ChangeRule::States,
        permission: "read:cloud_configuration",
    },
];

/// A window of a feed's time field: after `after` (none: from the beginning) and before `before`
/// (frozen when the sweep starts), both RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    pub before: String,
}

impl Feed {
    /// The request body of one page.
    pub fn request(&self, window: &Window, first: u32, after: Option<&str>) -> String {
        let mut filter = format!("\"{}\":{{", self.time_filter);
        if let Some(a) = &window.after {
            filter.push_str(&format!("\"after\":{},", json_str(a)));
        }
        filter.push_str(&format!("\"before\":{}}}", json_str(&window.before)));
        if !self.extra_filter.is_empty() {
            filter.push(',');
            filter.push_str(self.extra_filter);
        }
        let mut vars = format!("{{\"first\":{first},\"filterBy\":{{{filter}}}");
        if let Some(c) = after {
            vars.push_str(&format!(",\"after\":{}", json_str(c)));
        }
        if let Some(o) = self.order {
            vars.push_str(&format!(",\"orderBy\":{o}"));
        }
        vars.push('}');
        format!(
            "{{\"query\":{},\"variables\":{vars}}}",
            json_str(self.query)
        )
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A feed's part of the checkpoint (kept under the feed's state key, in
/// [`crate::state::Checkpoint::feed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedCheckpoint {
    /// The upper bound of the last completed window: the next window starts `overlap` before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_until: Option<String>,
    /// `Once` feeds: the items delivered whose time is within the overlap of the last window
    /// (and of the running one), so the next window drops them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Recent>,
    /// The running window, committed with each delivered page: a restarted tenant continues it
    /// from `cursor` with the same frozen bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunningWindow>,
}

/// An item of a `Once` feed delivered near a window's upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub id: String,
    /// The item's time, microseconds since the epoch (0 when it could not be read: kept until
    /// the list is trimmed by size).
    pub at: i64,
}

/// Where a running window stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningWindow {
    pub window: Window,
    /// The cursor of the next page (`None`: the first page is next).
    pub cursor: Option<String>,
    pub pages: u32,
    /// When the window started (Unix seconds); a window older than a day starts over.
    pub started: u64,
}

/// Most ids a `Once` feed keeps to drop repeats in the overlap of consecutive windows. A tenant
/// that produces more items than this within `incremental_overlap` may see repeats (with the same
/// event ids).
pub const MAX_RECENT: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_window_the_extra_filter_and_the_order() {
        let d = FeedName::Detections.feed().unwrap();
        let w = Window {
            after: Some("2026-01-01T00:00:00Z".into()),
            before: "2026-01-02T00:00:00Z".into(),
        };
        let body: serde_json::Value =
            serde_json::from_str(&d.request(&w, 500, Some("c1"))).unwrap();
        let v = &body["variables"];
        assert_eq!(v["first"], 500);
        assert_eq!(v["after"], "c1");
        assert_eq!(v["filterBy"]["updatedAt"]["after"], "2026-01-01T00:00:00Z");
        assert_eq!(v["filterBy"]["updatedAt"]["before"], "2026-01-02T00:00:00Z");
        assert_eq!(
            v["filterBy"]["type"]["equals"],
            serde_json::json!(["GENERATED_THREAT", "MATCH_ONLY"])
        );
        assert_eq!(v["orderBy"]["field"], "CREATED_AT");
        assert!(body["query"].as_str().unwrap().contains("detections("));
        let a = FeedName::Audit.feed().unwrap();
        let first = Window {
            after: None,
            before: "2026-01-02T00:00:00Z".into(),
        };
        let body: serde_json::Value = serde_json::from_str(&a.request(&first, 10, None)).unwrap();
        assert_eq!(
            body["variables"],
            serde_json::json!({"first": 10, "filterBy": {"timestamp": {"before": "2026-01-02T00:00:00Z"}}})
        );
    }

    #[test]
    fn names_round_trip_and_state_keys_never_collide_with_tenant_ids() {
        for f in FeedName::ALL {
            assert_eq!(FeedName::parse(f.as_str()), Some(f));
        }
        assert_eq!(FeedName::Issues.state_key("acme"), "acme");
        assert_eq!(FeedName::Audit.state_key("acme"), "acme:audit");
        assert!(FeedName::parse("issue").is_none());
    }
}
