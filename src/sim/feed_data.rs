//! The simulator's other Wiz feeds (issue 12; the connector does not read them yet): Wiz Defend
//! `detections`, `vulnerabilityFindings`, `auditLogEntries` and `configurationFindings`, with the
//! query shapes, filters and cursors public integrations use (docs/architecture.md, "Feeds beyond
//! Issues: the evidence"). Each tenant's sets are generated from its seed the first time a feed
//! is asked for (so the issue-only tests and benchmarks pay nothing), and churn adds to them.
//!
//! Wiz's trap is kept: a `detections` query with any `filterBy` but no `type` filter returns only
//! `GENERATED_THREAT` detections (public integrations ask for both types explicitly).

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use super::data::{epoch, next_tick, ts, uuid, SEVERITIES};
use super::graphql::{decode_cursor, encode_cursor, micros, parse_time};

/// Wiz's maximum page size.
const MAX_FIRST: u64 = 500;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimDetection {
    pub id: String,
    #[serde(rename = "type")]
    pub detection_type: &'static str,
    pub severity: &'static str,
    pub created_at: String,
    pub updated_at: String,
    pub description: String,
    pub rule_match: Value,
    pub primary_actor: Value,
    pub primary_resource: Value,
    pub cloud_accounts: Value,
    pub issue: Option<Value>,
    #[serde(skip)]
    pub created: SystemTime,
    #[serde(skip)]
    pub updated: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimVulnerability {
    pub id: String,
    pub name: String,
    #[serde(rename = "CVSSSeverity")]
    pub cvss_severity: &'static str,
    pub score: f64,
    pub status: &'static str,
    pub vendor_severity: &'static str,
    pub first_detected_at: String,
    pub last_detected_at: String,
    pub resolved_at: Option<String>,
    /// The finding in the (simulated) console.
    pub portal_url: String,
    pub detailed_name: String,
    pub version: String,
    pub fixed_version: Option<String>,
    pub vulnerable_asset: Value,
    #[serde(skip)]
    pub updated: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimAuditEntry {
    pub id: String,
    pub action: &'static str,
    pub request_id: String,
    pub status: &'static str,
    pub timestamp: String,
    pub action_parameters: Value,
    pub user_agent: &'static str,
    #[serde(rename = "sourceIP")]
    pub source_ip: String,
    pub user: Option<Value>,
    pub service_account: Option<Value>,
    #[serde(skip)]
    pub at: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimConfigFinding {
    pub id: String,
    pub analyzed_at: String,
    pub updated_at: String,
    pub severity: &'static str,
    pub result: &'static str,
    pub status: &'static str,
    pub remediation: String,
    pub resource: Value,
    pub rule: Value,
    #[serde(skip)]
    pub updated: SystemTime,
}

/// One tenant's other feeds.
pub struct FeedSets {
    pub detections: Vec<SimDetection>,
    pub vulnerabilities: Vec<SimVulnerability>,
    pub audit: Vec<SimAuditEntry>,
    pub configuration: Vec<SimConfigFinding>,
    rng: StdRng,
    last: SystemTime,
}

const RULES: [&str; 4] = [
    "Suspicious process executed in a container",
    "Cloud credentials used from an unusual location",
    "Crypto-mining pool contacted",
    "Reverse shell opened from a workload",
];
const TACTICS: [&str; 4] = [
    "Execution",
    "Credential Access",
    "Impact",
    "Command and Control",
];
const ACTIONS: [&str; 4] = [
    "Login",
    "UpdateIssue",
    "CreateServiceAccount",
    "DeleteProject",
];

impl FeedSets {
    /// Deterministic sets for a tenant seeded with `seed` that has `issues` issues: half as many
    /// detections, twice as many vulnerability findings, as many audit entries and
    /// configuration findings.
    pub fn generate(seed: u64, issues: usize) -> Self {
        Self::generate_with(seed, issues, None)
    }

    /// [`FeedSets::generate`], with `vulnerabilities` findings instead of two per issue when
    /// given (the other feeds keep their sizes).
    pub fn generate_with(seed: u64, issues: usize, vulnerabilities: Option<usize>) -> Self {
        let mut s = FeedSets {
            detections: Vec::new(),
            vulnerabilities: Vec::new(),
            audit: Vec::new(),
            configuration: Vec::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_f00d),
            last: epoch(),
        };
        let mut t = epoch();
        for n in 0..issues.max(1) {
            t += Duration::from_secs(60);
            if n % 2 == 0 {
                s.push_detection(t);
            }
            if vulnerabilities.is_none() {
                s.push_vulnerability(t);
                s.push_vulnerability(t + Duration::from_secs(1));
            }
            s.push_audit(t);
            s.push_configuration(t);
        }
        if let Some(n) = vulnerabilities {
            let mut v = epoch();
            for _ in 0..n {
                v += Duration::from_millis(10);
                s.push_vulnerability(v);
            }
            t = t.max(v);
        }
        s.last = t;
        s
    }

    fn push_detection(&mut self, t: SystemTime) {
        let r = &mut self.rng;
        let rule = RULES[r.random_range(0..RULES.len())];
        let generated = r.random_bool(0.7);
        self.detections.push(SimDetection {
            id: uuid(r),
            detection_type: if generated { "GENERATED_THREAT" } else { "MATCH_ONLY" },
            severity: SEVERITIES[r.random_range(0..4)],
            created_at: ts(t),
            updated_at: ts(t),
            description: format!("{rule} on a workload"),
            rule_match: json!({"rule": {"id": uuid(r), "name": rule, "securitySubCategories": [
                {"title": TACTICS[r.random_range(0..TACTICS.len())], "category": {"name": "MITRE ATT&CK Tactics"}}
            ]}}),
            primary_actor: json!({"id": uuid(r), "name": format!("svc-{}", r.random_range(1..50)), "type": "SERVICE_ACCOUNT"}),
            primary_resource: json!({"id": uuid(r), "name": format!("vm-{}", r.random_range(1..500)), "type": "VIRTUAL_MACHINE", "region": "eu-west-1"}),
            cloud_accounts: json!([{"id": "sim-account-1", "name": "production", "externalId": "123456789012", "cloudProvider": "AWS"}]),
            issue: generated.then(|| json!({"id": uuid(r)})),
            created: t,
            updated: t,
        });
    }

    fn push_vulnerability(&mut self, t: SystemTime) {
        let r = &mut self.rng;
        let score = f64::from(r.random_range(10..100u32)) / 10.0;
        let severity = match score {
            s if s >= 9.0 => "CRITICAL",
            s if s >= 7.0 => "HIGH",
            s if s >= 4.0 => "MEDIUM",
            _ => "LOW",
        };
        let fixed = r.random_bool(0.8);
        let id = uuid(r);
        self.vulnerabilities.push(SimVulnerability {
            portal_url: format!(
                "https://app.wiz.io/explorer/vulnerability-findings#~(entity~(~'{id}))"
            ),
            id,
            name: format!("CVE-20{}-{}", r.random_range(18..26), r.random_range(1000..49999)),
            cvss_severity: severity,
            score,
            status: "OPEN",
            vendor_severity: severity,
            first_detected_at: ts(t),
            last_detected_at: ts(t),
            resolved_at: None,
            detailed_name: format!("libexample{}", r.random_range(1..40)),
            version: format!("1.{}.{}", r.random_range(0..9), r.random_range(0..20)),
            fixed_version: fixed.then(|| format!("2.{}.0", r.random_range(0..9))),
            vulnerable_asset: json!({"id": uuid(r), "type": "VIRTUAL_MACHINE", "name": format!("vm-{}", r.random_range(1..500)), "region": "us-east-1", "cloudPlatform": "AWS"}),
            updated: t,
        });
    }

    fn push_audit(&mut self, t: SystemTime) {
        let r = &mut self.rng;
        let human = r.random_bool(0.6);
        self.audit.push(SimAuditEntry {
            id: uuid(r),
            action: ACTIONS[r.random_range(0..ACTIONS.len())],
            request_id: uuid(r),
            status: if r.random_bool(0.95) {
                "SUCCESS"
            } else {
                "FAILED"
            },
            timestamp: ts(t),
            action_parameters: json!({"projectId": uuid(r)}),
            user_agent: "Mozilla/5.0",
            source_ip: format!("203.0.113.{}", r.random_range(1..255)),
            user: human.then(|| json!({"id": uuid(r), "name": "analyst@example.com"})),
            service_account: (!human).then(|| json!({"id": uuid(r), "name": "ci-pipeline"})),
            at: t,
        });
    }

    fn push_configuration(&mut self, t: SystemTime) {
        let r = &mut self.rng;
        let fail = r.random_bool(0.6);
        self.configuration.push(SimConfigFinding {
            id: uuid(r),
            analyzed_at: ts(t),
            updated_at: ts(t),
            severity: SEVERITIES[r.random_range(0..4)],
            result: if fail { "FAIL" } else { "PASS" },
            status: if fail { "OPEN" } else { "RESOLVED" },
            remediation: "Restrict the bucket policy".into(),
            resource: json!({"id": uuid(r), "providerId": format!("arn:aws:s3:::bucket-{}", r.random_range(1..900)), "name": "bucket", "nativeType": "s3", "type": "BUCKET", "region": "us-east-1", "cloudPlatform": "AWS"}),
            rule: json!({"id": uuid(r), "shortId": format!("S3-{:03}", r.random_range(1..200)), "name": "S3 bucket should block public access"}),
            updated: t,
        });
    }

    /// A time after every earlier one (changes are strictly ordered).
    fn tick(&mut self) -> SystemTime {
        next_tick(&mut self.last)
    }

    /// One random change in every feed: a new detection and audit entry, a vulnerability found
    /// again or fixed, a configuration finding re-analyzed.
    /// Updates detection `i` now, as Wiz does when more events match it: its `updatedAt`
    /// moves (the severity goes up a step while it can). Returns its id.
    pub fn update_detection(&mut self, i: usize) -> String {
        let t = self.tick();
        let d = &mut self.detections[i];
        d.severity = match d.severity {
            "INFORMATIONAL" => "LOW",
            "LOW" => "MEDIUM",
            "MEDIUM" => "HIGH",
            _ => "CRITICAL",
        };
        d.updated_at = ts(t);
        d.updated = t;
        d.id.clone()
    }

    pub fn churn_step(&mut self) {
        let t = self.tick();
        self.push_detection(t);
        self.push_audit(t);
        if !self.vulnerabilities.is_empty() {
            let i = self.rng.random_range(0..self.vulnerabilities.len());
            let v = &mut self.vulnerabilities[i];
            if v.status == "OPEN" && v.fixed_version.is_some() {
                v.status = "RESOLVED";
                v.resolved_at = Some(ts(t));
            } else {
                v.status = "OPEN";
                v.resolved_at = None;
                v.last_detected_at = ts(t);
            }
            v.updated = t;
        }
        if !self.configuration.is_empty() {
            let i = self.rng.random_range(0..self.configuration.len());
            let c = &mut self.configuration[i];
            let fail = c.result != "FAIL";
            c.result = if fail { "FAIL" } else { "PASS" };
            c.status = if fail { "OPEN" } else { "RESOLVED" };
            c.analyzed_at = ts(t);
            c.updated_at = ts(t);
            c.updated = t;
        }
    }
}

/// The root query of a feed, as the request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Detections,
    Vulnerabilities,
    Audit,
    Configuration,
}

impl Root {
    /// The connector's name of the feed (`denied_feeds` uses it).
    pub fn feed_name(self) -> &'static str {
        match self {
            Root::Detections => "detections",
            Root::Vulnerabilities => "vulnerabilities",
            Root::Audit => "audit",
            Root::Configuration => "cloud_configuration",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Root::Detections => "detections",
            Root::Vulnerabilities => "vulnerabilityFindings",
            Root::Audit => "auditLogEntries",
            Root::Configuration => "configurationFindings",
        }
    }
}

/// The feed a request asks for (`None`: an issues query or a mutation). `compact` is the
/// request's query without whitespace ([`compact`]).
pub fn root(compact: &str) -> Option<Root> {
    [
        Root::Detections,
        Root::Vulnerabilities,
        Root::Audit,
        Root::Configuration,
    ]
    .into_iter()
    .find(|r| {
        // The root field called: its name, then its arguments.
        let field = r.field();
        compact
            .match_indices(field)
            .any(|(i, _)| compact[i + field.len()..].starts_with('('))
    })
}

/// A request's query without whitespace, which the request's kind is told from: made once per
/// request, from the body read once (the validation's reading).
pub fn compact(query: &str) -> String {
    query.chars().filter(|c| !c.is_whitespace()).collect()
}

/// `{after, before}` of a time filter, in microseconds.
fn range(v: &Value) -> Result<(Option<i64>, Option<i64>), String> {
    let bound = |k: &str| v.get(k).and_then(Value::as_str).map(parse_time).transpose();
    Ok((bound("after")?, bound("before")?))
}

/// The order of a feed's rows: time, then id.
fn key<'a>(r: &(i64, &'a str, usize)) -> (i64, &'a str) {
    (r.0, r.1)
}

fn within(t: SystemTime, r: (Option<i64>, Option<i64>)) -> bool {
    let m = micros(t);
    r.0.is_none_or(|a| m > a) && r.1.is_none_or(|b| m < b)
}

/// Answers one feed query: `data` of the GraphQL answer, or `(code, message)` of an error.
pub fn answer(root: Root, variables: &Value, sets: &FeedSets) -> Result<Value, (String, String)> {
    let bad = |m: String| ("BAD_USER_INPUT".to_string(), m);
    let first = variables
        .get("first")
        .and_then(Value::as_u64)
        .unwrap_or(100);
    if first > MAX_FIRST {
        return Err(bad("'first' must be less than or equal to 500".into()));
    }
    let filter = variables.get("filterBy").cloned().unwrap_or(Value::Null);
    let time = |key: &str| -> Result<(Option<i64>, Option<i64>), (String, String)> {
        filter
            .get(key)
            .map(range)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(bad)
    };
    let desc = variables
        .pointer("/orderBy/direction")
        .and_then(Value::as_str)
        == Some("DESC");
    // (sort key, id, position) of every matching item; only the page's items become JSON.
    let mut rows: Vec<(i64, &str, usize)> = match root {
        Root::Detections => {
            let (created, updated) = (time("createdAt")?, time("updatedAt")?);
            // Wiz's default: with a filter but no type, only generated threats.
            let types: Vec<String> = match filter.pointer("/type/equals").and_then(Value::as_array)
            {
                Some(list) => list
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect(),
                None if filter.is_object() => vec!["GENERATED_THREAT".into()],
                None => vec!["GENERATED_THREAT".into(), "MATCH_ONLY".into()],
            };
            sets.detections
                .iter()
                .enumerate()
                .filter(|(_, d)| within(d.created, created) && within(d.updated, updated))
                .filter(|(_, d)| types.iter().any(|t| t == d.detection_type))
                .map(|(i, d)| (micros(d.created), d.id.as_str(), i))
                .collect()
        }
        Root::Vulnerabilities => {
            let updated = time("updatedAt")?;
            sets.vulnerabilities
                .iter()
                .enumerate()
                .filter(|(_, v)| within(v.updated, updated))
                .map(|(i, v)| (micros(v.updated), v.id.as_str(), i))
                .collect()
        }
        Root::Audit => {
            let at = time("timestamp")?;
            sets.audit
                .iter()
                .enumerate()
                .filter(|(_, a)| within(a.at, at))
                .map(|(i, a)| (micros(a.at), a.id.as_str(), i))
                .collect()
        }
        Root::Configuration => {
            let updated = time("updatedAt")?;
            sets.configuration
                .iter()
                .enumerate()
                .filter(|(_, c)| within(c.updated, updated))
                .map(|(i, c)| (micros(c.updated), c.id.as_str(), i))
                .collect()
        }
    };
    // Generated sets are in time order until churn moves items: sort only then.
    if !rows.is_sorted_by_key(key) {
        rows.sort_unstable_by_key(key);
    }
    if desc {
        rows.reverse();
    }
    let start = match variables.get("after").and_then(Value::as_str) {
        None | Some("") => 0,
        Some(c) => {
            let (k, id) = decode_cursor(c).ok_or_else(|| bad("invalid cursor".into()))?;
            let at = (k, id.as_str());
            if desc {
                rows.partition_point(|r| key(r) >= at)
            } else {
                rows.partition_point(|r| key(r) <= at)
            }
        }
    };
    let end = (start + first as usize).min(rows.len());
    let more = end < rows.len();
    let cursor = rows[start..end]
        .last()
        .map(|(k, id, _)| encode_cursor(*k, id));
    let nodes: Vec<Value> = rows[start..end]
        .iter()
        .map(|&(_, _, i)| match root {
            Root::Detections => json!(sets.detections[i]),
            Root::Vulnerabilities => json!(sets.vulnerabilities[i]),
            Root::Audit => json!(sets.audit[i]),
            Root::Configuration => json!(sets.configuration[i]),
        })
        .collect();
    Ok(json!({ root.field(): {
        "nodes": nodes,
        "pageInfo": {"hasNextPage": more, "endCursor": cursor},
    }}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(root: Root, sets: &FeedSets, mut vars: Value) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let data = answer(root, &vars, sets).unwrap();
            let conn = &data[root.field()];
            out.extend(conn["nodes"].as_array().unwrap().iter().cloned());
            if conn["pageInfo"]["hasNextPage"] != true {
                return out;
            }
            vars["after"] = conn["pageInfo"]["endCursor"].clone();
        }
    }

    #[test]
    fn every_feed_pages_through_everything_once() {
        let sets = FeedSets::generate(7, 40);
        for (root, expected) in [
            (Root::Detections, sets.detections.len()),
            (Root::Vulnerabilities, sets.vulnerabilities.len()),
            (Root::Audit, sets.audit.len()),
            (Root::Configuration, sets.configuration.len()),
        ] {
            let vars = if root == Root::Detections {
                json!({"first": 7, "filterBy": {"type": {"equals": ["GENERATED_THREAT", "MATCH_ONLY"]}}})
            } else {
                json!({"first": 7})
            };
            let got = all(root, &sets, vars);
            let ids: std::collections::HashSet<&str> =
                got.iter().map(|n| n["id"].as_str().unwrap()).collect();
            assert_eq!((got.len(), ids.len()), (expected, expected), "{root:?}");
        }
    }

    #[test]
    fn a_filter_without_a_type_drops_match_only_detections() {
        let sets = FeedSets::generate(7, 200);
        let after = json!({"createdAt": {"after": "2024-01-01T00:00:00Z"}});
        let some = all(
            Root::Detections,
            &sets,
            json!({"first": 500, "filterBy": after}),
        );
        let both = all(
            Root::Detections,
            &sets,
            json!({"first": 500, "filterBy": {"createdAt": {"after": "2024-01-01T00:00:00Z"}, "type": {"equals": ["GENERATED_THREAT", "MATCH_ONLY"]}}}),
        );
        assert!(some.iter().all(|d| d["type"] == "GENERATED_THREAT"));
        assert_eq!(both.len(), sets.detections.len());
        assert!(some.len() < both.len());
    }

    #[test]
    fn time_filters_and_churn_give_only_what_changed() {
        let mut sets = FeedSets::generate(3, 20);
        let mark = ts(SystemTime::now() - Duration::from_millis(1));
        sets.churn_step();
        sets.churn_step();
        let since = |key: &str| json!({"first": 500, "filterBy": {key: {"after": mark}, "type": {"equals": ["GENERATED_THREAT", "MATCH_ONLY"]}}});
        assert_eq!(all(Root::Detections, &sets, since("createdAt")).len(), 2);
        assert_eq!(all(Root::Audit, &sets, since("timestamp")).len(), 2);
        assert!(!all(Root::Vulnerabilities, &sets, since("updatedAt")).is_empty());
        assert!(!all(Root::Configuration, &sets, since("updatedAt")).is_empty());
        assert_eq!(
            answer(Root::Audit, &json!({"first": 501}), &sets)
                .unwrap_err()
                .1,
            "'first' must be less than or equal to 500"
        );
    }
}
