//! Simulated Issues: deterministic, realistic shapes (the three issue types with their three
//! `sourceRule` kinds, many entity types and clouds, nulls and empty strings where Wiz has them,
//! unicode), plus churn (new issues, status and severity changes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One simulated Issue, serialized with Wiz's field names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimIssue {
    pub id: String,
    pub source_rule: SourceRule,
    pub created_at: String,
    pub updated_at: String,
    pub due_at: Option<String>,
    pub resolved_at: Option<String>,
    pub status_changed_at: String,
    #[serde(rename = "type")]
    pub issue_type: &'static str,
    pub projects: Vec<Project>,
    pub status: String,
    pub severity: String,
    pub entity_snapshot: Entity,
    pub service_tickets: Vec<Ticket>,
    pub notes: Vec<Note>,
    /// Set when the issue was rejected or resolved by hand (write-back); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_reason: Option<String>,
    /// `createdAt` as a time, for filters and ordering.
    #[serde(skip)]
    pub created: SystemTime,
    /// `statusChangedAt` as a time.
    #[serde(skip)]
    pub status_changed: SystemTime,
    /// A fault test's payload (issue 18): JSON text of any size or depth (a 10 MB string, a
    /// list nested 100,000 deep) served verbatim in the node as `hostilePayload`, a member Wiz
    /// does not send, for as long as it is set. Written by the page writer (`sim::graphql`),
    /// since serde could not serialize a value that deep.
    #[serde(skip)]
    pub hostile: Option<std::sync::Arc<str>>,
}

/// `sourceRule`, one of three GraphQL types told apart by `__typename`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "__typename")]
pub enum SourceRule {
    #[serde(rename_all = "camelCase")]
    Control {
        id: String,
        name: String,
        // The connector's query aliases the three descriptions, as every public client does.
        #[serde(rename = "controlDescription")]
        description: String,
        resolution_recommendation: Option<String>,
        security_sub_categories: Vec<SubCategory>,
    },
    #[serde(rename_all = "camelCase")]
    CloudEventRule {
        id: String,
        name: String,
        #[serde(rename = "cloudEventRuleDescription")]
        description: String,
        source_type: String,
        #[serde(rename = "type")]
        rule_type: String,
    },
    #[serde(rename_all = "camelCase")]
    CloudConfigurationRule {
        id: String,
        name: String,
        #[serde(rename = "cloudConfigurationRuleDescription")]
        description: Option<String>,
        remediation_instructions: Option<String>,
        service_type: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SubCategory {
    pub title: String,
    pub category: Category,
}

#[derive(Debug, Clone, Serialize)]
pub struct Category {
    pub name: String,
    pub framework: Named,
}

#[derive(Debug, Clone, Serialize)]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub business_unit: String,
    pub risk_profile: RiskProfile,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RiskProfile {
    pub business_impact: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entity {
    pub id: String,
    #[serde(rename = "type")]
    pub entity_type: String,
    pub native_type: String,
    pub name: String,
    pub status: Option<String>,
    pub cloud_platform: Option<String>,
    #[serde(rename = "cloudProviderURL")]
    pub cloud_provider_url: String,
    pub provider_id: String,
    pub region: String,
    pub resource_group_external_id: String,
    pub subscription_external_id: String,
    pub subscription_name: String,
    pub subscription_tags: Option<serde_json::Value>,
    pub tags: serde_json::Value,
    pub external_id: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub external_id: String,
    pub name: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub created_at: String,
    pub updated_at: String,
    pub text: String,
    pub user: Option<User>,
    pub service_account: Option<Named>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub email: String,
}

/// Wiz's severities, most severe first.
pub const SEVERITIES: [&str; 5] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL"];

const CONTROLS: [&str; 6] = [
    "Publicly exposed VM with a critical vulnerability and high privileges",
    "Admin identity with access keys older than 90 days and no MFA",
    "Internet-facing container running as root with a known exploited CVE",
    "Sensitive data in a publicly readable bucket",
    "Lateral movement path to a production database",
    "Kubernetes cluster with an exposed API server and cluster-admin binding",
];
const EVENT_RULES: [&str; 5] = [
    "Suspicious process execution in container",
    "Crypto-mining activity detected",
    "Console login from an unusual country",
    "Access key used from a Tor exit node",
    "Reverse shell spawned by a web server",
];
const CONFIG_RULES: [&str; 6] = [
    "S3 bucket should block public access",
    "Storage account should use customer-managed keys",
    "Security group allows SSH from 0.0.0.0/0",
    "Cloud SQL instance should require SSL",
    "IAM role trust policy allows any principal",
    "Key Vault soft delete should be enabled",
];
/// (entity type, native type, cloud platform, provider URL prefix)
const ENTITIES: [(&str, &str, Option<&str>, &str); 12] = [
    (
        "VIRTUAL_MACHINE",
        "virtualMachine",
        Some("AWS"),
        "https://console.aws.amazon.com/ec2/home#InstanceDetails:instanceId=",
    ),
    (
        "BUCKET",
        "s3#Bucket",
        Some("AWS"),
        "https://s3.console.aws.amazon.com/s3/buckets/",
    ),
    ("CONTAINER_IMAGE", "", Some("Kubernetes"), ""),
    (
        "SERVICE_ACCOUNT",
        "serviceAccount",
        Some("GCP"),
        "https://console.cloud.google.com/iam-admin/serviceaccounts/details/",
    ),
    (
        "DATABASE",
        "Microsoft.Sql/servers/databases",
        Some("Azure"),
        "https://portal.azure.com/#resource/",
    ),
    (
        "KUBERNETES_CLUSTER",
        "eks",
        Some("EKS"),
        "https://console.aws.amazon.com/eks/home#/clusters/",
    ),
    (
        "ACCESS_ROLE",
        "iamRole",
        Some("AWS"),
        "https://console.aws.amazon.com/iam/home#/roles/",
    ),
    ("REPOSITORY", "", None, "https://github.com/"),
    (
        "SERVERLESS",
        "lambda",
        Some("AWS"),
        "https://console.aws.amazon.com/lambda/home#/functions/",
    ),
    (
        "STORAGE_ACCOUNT",
        "Microsoft.Storage/storageAccounts",
        Some("Azure"),
        "https://portal.azure.com/#resource/",
    ),
    (
        "VIRTUAL_MACHINE",
        "compute#instance",
        Some("GCP"),
        "https://console.cloud.google.com/compute/instancesDetail/",
    ),
    (
        "DATABASE",
        "oci_database",
        Some("OCI"),
        "https://cloud.oracle.com/db/",
    ),
];
const REGIONS: [&str; 7] = [
    "us-east-1",
    "eu-west-1",
    "westeurope",
    "us-central1",
    "ap-northeast-1",
    "",
    "eu-frankfurt-1",
];
const NAMES: [&str; 8] = [
    "prod-web-01",
    "billing-db",
    "データベース-東京",
    "café-payments 🚀",
    "ci-runner",
    "legacy \"quoted\" name",
    "k8s-node-pool-a",
    "tab\tand\nnewline",
];
const PROJECTS: [(&str, &str); 4] = [
    ("Production", "Finance"),
    ("Staging", "Engineering"),
    ("Données clients", "Legal"),
    ("Shared Services", ""),
];

const FRAMEWORKS: [&str; 9] = [
    "CIS Amazon Web Services Foundations Benchmark v3.0.0",
    "NIST SP 800-53 Revision 5",
    "PCI DSS v4.0",
    "ISO/IEC 27001:2022",
    "SOC 2",
    "MITRE ATT&CK Matrix",
    "HIPAA Security Rule",
    "Wiz for Risk Assessment",
    "Règlement général sur la protection des données (RGPD)",
];
const SUBCATEGORIES: [(&str, &str); 8] = [
    (
        "3.1 Ensure CloudTrail is enabled in all regions",
        "3 Logging",
    ),
    ("AC-6 Least Privilege", "AC Access Control"),
    (
        "1.2.1 Restrict inbound and outbound traffic",
        "1 Network Security Controls",
    ),
    ("A.8.20 Networks security", "A.8 Technological controls"),
    (
        "CC6.1 Logical access security",
        "CC6 Logical and Physical Access Controls",
    ),
    (
        "T1190 Exploit Public-Facing Application",
        "TA0001 Initial Access",
    ),
    ("§164.312(a)(1) Access control", "Technical Safeguards"),
    ("High-profile vulnerability", "Vulnerability Assessment"),
];
const CONTROL_TEXT: &str = "This issue is a toxic combination: the resource is reachable from the internet, runs software with a vulnerability that has a public exploit, and holds permissions that let an attacker move to sensitive data. Any one of these findings alone would be a routine fix; together they form an attack path that is easy to follow.";
const EVENT_TEXT: &str = "The Wiz runtime sensor observed behaviour that matches a known attack technique. The process tree, the command line and the network connections are attached to the detection so that a responder can decide quickly whether it is expected.";
const CONFIG_TEXT: &str = "The resource does not follow the configuration that the benchmark requires. Misconfigurations like this one are the most common root cause of cloud breaches, and they are usually cheap to fix once found.";
const FIX_TEXT: &str = "To remediate, run:\n```\naws s3api put-public-access-block --bucket <name> --public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true\n```\nThen confirm in the console that the \"Block all public access\" setting is on.";
const TAGS: [(&str, &str); 8] = [
    ("env", "prod"),
    ("owner", "secops@example.com"),
    ("cost-center", "42"),
    ("team", "payments"),
    ("app", "checkout-api"),
    ("data-classification", "confidential"),
    ("managed-by", "terraform"),
    ("project", "Données clients"),
];

/// `n` paragraphs of `text` joined by blank lines, `n` drawn from `range`.
fn paragraphs(rng: &mut StdRng, text: &str, range: std::ops::Range<usize>) -> String {
    let n = rng.random_range(range);
    vec![text; n].join("\n\n")
}

/// 4 to 23 compliance mappings, as Wiz lists for its controls.
fn sub_categories(rng: &mut StdRng) -> Vec<SubCategory> {
    (0..rng.random_range(4..24))
        .map(|_| {
            let (title, cat) = *pick(rng, &SUBCATEGORIES);
            SubCategory {
                title: title.into(),
                category: Category {
                    name: cat.into(),
                    framework: Named {
                        name: pick(rng, &FRAMEWORKS).to_string(),
                    },
                },
            }
        })
        .collect()
}

/// RFC 3339 UTC with microseconds, as Wiz writes timestamps.
pub fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// 2025-01-01T00:00:00Z: seeded issues are created after it.
/// The current time, or 1 µs after `last` when the clock has not moved past it: changes are
/// strictly ordered even within one clock tick. Updates `last`.
pub(super) fn next_tick(last: &mut SystemTime) -> SystemTime {
    let now = SystemTime::now();
    *last = if now > *last {
        now
    } else {
        *last + Duration::from_micros(1)
    };
    *last
}

pub(super) fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

pub(super) fn uuid(rng: &mut StdRng) -> String {
    let a: u128 = rng.random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Builds issue number `n` of a tenant, created at `created`.
pub fn generate_issue(rng: &mut StdRng, created: SystemTime) -> SimIssue {
    let id = uuid(rng);
    let kind = rng.random_range(0..10);
    let (issue_type, source_rule) = match kind {
        0..=2 => (
            "TOXIC_COMBINATION",
            SourceRule::Control {
                id: format!("wc-id-{}", rng.random_range(1000..9999)),
                name: pick(rng, &CONTROLS).to_string(),
                description: paragraphs(rng, CONTROL_TEXT, 2..5),
                resolution_recommendation: rng
                    .random_bool(0.7)
                    .then(|| paragraphs(rng, FIX_TEXT, 1..4)),
                security_sub_categories: sub_categories(rng),
            },
        ),
        3..=4 => (
            "THREAT_DETECTION",
            SourceRule::CloudEventRule {
                id: uuid(rng),
                name: pick(rng, &EVENT_RULES).to_string(),
                description: paragraphs(rng, EVENT_TEXT, 1..4),
                source_type: if rng.random_bool(0.5) {
                    "WIZ_SENSOR"
                } else {
                    "CLOUD_TRAIL"
                }
                .into(),
                rule_type: "THREAT_DETECTION".into(),
            },
        ),
        _ => (
            "CLOUD_CONFIGURATION",
            SourceRule::CloudConfigurationRule {
                id: uuid(rng),
                name: pick(rng, &CONFIG_RULES).to_string(),
                description: rng
                    .random_bool(0.9)
                    .then(|| paragraphs(rng, CONFIG_TEXT, 1..4)),
                remediation_instructions: rng
                    .random_bool(0.6)
                    .then(|| paragraphs(rng, FIX_TEXT, 2..5)),
                service_type: pick(rng, &["AWS", "Azure", "GCP", "OCI"]).to_string(),
            },
        ),
    };
    let (etype, native, cloud, console) = *pick(rng, &ENTITIES);
    let name = pick(rng, &NAMES).to_string();
    let entity_id = uuid(rng);
    let provider_id = format!(
        "arn:aws:service::{}:{}",
        rng.random_range(100_000_000_000u64..999_999_999_999),
        entity_id
    );
    let tags = if rng.random_bool(0.8) {
        let mut m = serde_json::Map::new();
        for _ in 0..rng.random_range(1..8) {
            let (k, v) = *pick(rng, &TAGS);
            m.insert(k.to_string(), serde_json::Value::from(v));
        }
        serde_json::Value::Object(m)
    } else {
        serde_json::json!({})
    };
    let created_s = ts(created);
    let severity = SEVERITIES[rng.random_range(0..5)].to_string();
    let roll = rng.random_range(0..100);
    let status = match roll {
        0..=69 => "OPEN",
        70..=79 => "IN_PROGRESS",
        80..=94 => "RESOLVED",
        _ => "REJECTED",
    }
    .to_string();
    let changed = created + Duration::from_micros(rng.random_range(0..3_600_000_000));
    let nprojects = rng.random_range(0..=2);
    let projects = (0..nprojects)
        .map(|i| {
            let (pname, bu) = PROJECTS[(i + rng.random_range(0..PROJECTS.len())) % PROJECTS.len()];
            Project {
                id: uuid(rng),
                name: pname.into(),
                slug: pname.to_lowercase().replace(' ', "-"),
                business_unit: bu.into(),
                risk_profile: RiskProfile {
                    business_impact: pick(rng, &["HBI", "MBI", "LBI"]).to_string(),
                },
            }
        })
        .collect();
    let notes = (0..rng.random_range(0..4))
        .map(|_| {
            let human = rng.random_bool(0.6);
            Note {
                created_at: ts(changed),
                updated_at: ts(changed),
                text: "Investigating with the owner — ticket pending. ✅ The exception request was declined by the CISO; fix planned for the next sprint.".into(),
                user: human.then(|| User {
                    name: "Ana Analyst".into(),
                    email: "ana@example.com".into(),
                }),
                service_account: (!human).then(|| Named {
                    name: "jira-sync".into(),
                }),
            }
        })
        .collect();
    SimIssue {
        id,
        source_rule,
        created_at: created_s.clone(),
        updated_at: ts(changed),
        due_at: rng
            .random_bool(0.3)
            .then(|| ts(created + Duration::from_secs(30 * 86400))),
        resolved_at: (status == "RESOLVED").then(|| ts(changed)),
        status_changed_at: ts(changed),
        issue_type,
        projects,
        status,
        severity,
        entity_snapshot: Entity {
            id: entity_id.clone(),
            entity_type: etype.into(),
            native_type: native.into(),
            name: name.clone(),
            status: rng.random_bool(0.7).then(|| "Active".to_string()),
            cloud_platform: cloud.map(str::to_string),
            cloud_provider_url: if console.is_empty() {
                String::new()
            } else {
                format!("{console}{entity_id}")
            },
            provider_id,
            region: pick(rng, &REGIONS).to_string(),
            resource_group_external_id: String::new(),
            subscription_external_id: format!(
                "{}",
                rng.random_range(100_000_000_000u64..999_999_999_999)
            ),
            subscription_name: pick(rng, &["prod-account", "sandbox", "Compte de test"])
                .to_string(),
            subscription_tags: rng
                .random_bool(0.5)
                .then(|| serde_json::json!({"cost-center": "42"})),
            tags,
            external_id: entity_id,
            created_at: created_s,
        },
        service_tickets: if rng.random_bool(0.1) {
            vec![Ticket {
                external_id: format!("SEC-{}", rng.random_range(100..9999)),
                name: "Jira".into(),
                url: "https://jira.example.com/browse/SEC-1".into(),
            }]
        } else {
            Vec::new()
        },
        notes,
        resolution_reason: None,
        created,
        status_changed: changed,
        hostile: None,
    }
}

/// One simulated tenant's issues, in creation order, and the generator for more.
pub struct IssueSet {
    pub issues: Vec<SimIssue>,
    rng: StdRng,
    /// Last timestamp handed out, so changes are strictly ordered even within one clock tick.
    last: SystemTime,
}

impl IssueSet {
    /// `count` deterministic issues from `seed`, created from 2025-01-01 on, minutes apart.
    pub fn generate(seed: u64, count: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut t = epoch();
        let mut issues = Vec::with_capacity(count);
        for _ in 0..count {
            t += Duration::from_micros(rng.random_range(1_000_000..600_000_000));
            issues.push(generate_issue(&mut rng, t));
        }
        IssueSet {
            issues,
            rng,
            last: t,
        }
    }

    /// Now, but strictly after every timestamp this set has handed out.
    fn tick(&mut self) -> SystemTime {
        next_tick(&mut self.last)
    }

    /// Adds one new OPEN issue created now; returns its id.
    pub fn add(&mut self) -> String {
        let t = self.tick();
        let mut issue = generate_issue(&mut self.rng, t);
        issue.status = "OPEN".into();
        issue.resolved_at = None;
        issue.status_changed = t;
        issue.status_changed_at = ts(t);
        issue.updated_at = ts(t);
        let id = issue.id.clone();
        self.issues.push(issue);
        id
    }

    fn find(&mut self, id: &str) -> Option<&mut SimIssue> {
        self.issues.iter_mut().find(|i| i.id == id)
    }

    /// Serves `payload` (JSON text) in the issue's node from now on, or stops (`None`): see
    /// [`SimIssue::hostile`]. Nothing else of the issue changes. False if unknown.
    pub fn set_hostile(&mut self, id: &str, payload: Option<String>) -> bool {
        match self.find(id) {
            Some(i) => {
                i.hostile = payload.map(std::sync::Arc::from);
                true
            }
            None => false,
        }
    }

    /// Moves an issue to `status` now (statusChangedAt and updatedAt move). False if unknown.
    pub fn set_status(&mut self, id: &str, status: &str) -> bool {
        let t = self.tick();
        let Some(i) = self.find(id) else { return false };
        if i.status != status {
            i.status = status.to_string();
            i.status_changed = t;
            i.status_changed_at = ts(t);
            i.resolved_at = (status == "RESOLVED").then(|| ts(t));
        }
        i.updated_at = ts(t);
        true
    }

    /// Changes an issue's severity now (updatedAt moves, statusChangedAt does not).
    pub fn set_severity(&mut self, id: &str, severity: &str) -> bool {
        let t = self.tick();
        let Some(i) = self.find(id) else { return false };
        i.severity = severity.to_string();
        i.updated_at = ts(t);
        true
    }

    /// Removes an issue entirely (as when a resource is deleted and Wiz drops the issue).
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.issues.len();
        self.issues.retain(|i| i.id != id);
        self.issues.len() != before
    }

    /// Removes `count` issues in `status`, spread evenly over the set (so they sit on different
    /// pages); returns their ids.
    pub fn remove_spread(&mut self, status: &str, count: usize) -> Vec<String> {
        let ids = self.ids_with_status(status);
        let count = count.min(ids.len());
        if count == 0 {
            return Vec::new();
        }
        let step = ids.len() / count;
        let gone: Vec<String> = ids.into_iter().step_by(step).take(count).collect();
        let set: std::collections::HashSet<&str> = gone.iter().map(String::as_str).collect();
        self.issues.retain(|i| !set.contains(i.id.as_str()));
        gone
    }

    /// Changes the severity of `count` open issues spread evenly over the set (a change
    /// `statusChangedAt` does not show); returns their ids.
    pub fn escalate_spread(&mut self, count: usize) -> Vec<String> {
        let ids = self.ids_with_status("OPEN");
        let count = count.min(ids.len());
        if count == 0 {
            return Vec::new();
        }
        let step = ids.len() / count;
        let chosen: Vec<String> = ids.into_iter().step_by(step).take(count).collect();
        for id in &chosen {
            self.escalate(id);
        }
        chosen
    }

    /// Changes issue `id`'s severity (to CRITICAL, or to LOW when it is CRITICAL already): a
    /// change `statusChangedAt` does not show. Returns the new severity (`None`: no such issue).
    pub fn escalate(&mut self, id: &str) -> Option<&'static str> {
        let to = match self.find(id)?.severity.as_str() {
            "CRITICAL" => "LOW",
            _ => "CRITICAL",
        };
        self.set_severity(id, to);
        Some(to)
    }

    /// Applies a manual change (write-back) to issue `id`: a status (with its reason), a due
    /// date, a note. `updatedAt` moves; `statusChangedAt` moves with the status.
    pub fn edit(
        &mut self,
        id: &str,
        status: Option<&str>,
        reason: Option<&str>,
        due_at: Option<&str>,
        note: Option<(&str, &str)>,
    ) -> bool {
        let t = self.tick();
        let Some(i) = self.find(id) else { return false };
        if let Some(s) = status {
            if i.status != s {
                i.status = s.to_string();
                i.status_changed = t;
                i.status_changed_at = ts(t);
                i.resolved_at = (s == "RESOLVED").then(|| ts(t));
            }
            i.resolution_reason = reason.map(str::to_string);
        }
        if let Some(d) = due_at {
            i.due_at = Some(d.to_string());
        }
        if let Some((text, author)) = note {
            i.notes.push(Note {
                created_at: ts(t),
                updated_at: ts(t),
                text: text.to_string(),
                user: None,
                service_account: Some(Named {
                    name: author.to_string(),
                }),
            });
        }
        i.updated_at = ts(t);
        true
    }

    /// Ids of issues in `status`.
    pub fn ids_with_status(&self, status: &str) -> Vec<String> {
        self.issues
            .iter()
            .filter(|i| i.status == status)
            .map(|i| i.id.clone())
            .collect()
    }

    /// One random change: a new issue, a resolution, a rejection, a reopening or a severity change.
    pub fn churn_step(&mut self) {
        let roll = self.rng.random_range(0..100);
        let pick_with = |set: &mut IssueSet, status: &str| -> Option<String> {
            let ids = set.ids_with_status(status);
            (!ids.is_empty()).then(|| ids[set.rng.random_range(0..ids.len())].clone())
        };
        match roll {
            0..=39 => {
                self.add();
            }
            40..=64 => {
                if let Some(id) = pick_with(self, "OPEN") {
                    self.set_status(&id, "RESOLVED");
                }
            }
            65..=74 => {
                if let Some(id) = pick_with(self, "OPEN") {
                    self.set_status(&id, "REJECTED");
                }
            }
            75..=84 => {
                if let Some(id) = pick_with(self, "RESOLVED") {
                    self.set_status(&id, "OPEN");
                }
            }
            _ => {
                if let Some(id) = pick_with(self, "OPEN") {
                    let sev = SEVERITIES[self.rng.random_range(0..5)];
                    self.set_severity(&id, sev);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_varied() {
        let a = IssueSet::generate(7, 200);
        let b = IssueSet::generate(7, 200);
        let ja = serde_json::to_string(&a.issues).unwrap();
        assert_eq!(ja, serde_json::to_string(&b.issues).unwrap());
        let types: std::collections::HashSet<_> = a.issues.iter().map(|i| i.issue_type).collect();
        assert_eq!(types.len(), 3);
        for tn in [
            "\"__typename\":\"Control\"",
            "\"__typename\":\"CloudEventRule\"",
            "\"__typename\":\"CloudConfigurationRule\"",
        ] {
            assert!(ja.contains(tn), "{tn} missing");
        }
        assert!(ja.contains("\"dueAt\":null"));
        assert!(ja.contains("\"nativeType\":\"\""));
        assert!(ja.contains("データベース"));
        // Created in order, so CREATED_AT order is the vector order.
        assert!(a.issues.windows(2).all(|w| w[0].created < w[1].created));
    }

    #[test]
    fn removal_is_spread_and_exact() {
        let mut s = IssueSet::generate(3, 100);
        let open = s.ids_with_status("OPEN");
        let gone = s.remove_spread("OPEN", 5);
        assert_eq!(gone.len(), 5);
        assert_eq!(s.ids_with_status("OPEN").len(), open.len() - 5);
        assert!(gone.iter().all(|g| !s.issues.iter().any(|i| &i.id == g)));
        assert_eq!(gone[0], open[0]);
        assert_eq!(gone[1], open[open.len() / 5], "every fifth one");
        assert_eq!(s.remove_spread("NO_SUCH_STATUS", 3), Vec::<String>::new());
    }

    #[test]
    fn churn_changes_state() {
        let mut s = IssueSet::generate(1, 50);
        let before = serde_json::to_string(&s.issues).unwrap();
        for _ in 0..20 {
            s.churn_step();
        }
        assert_ne!(before, serde_json::to_string(&s.issues).unwrap());
    }
}
