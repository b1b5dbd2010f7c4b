//! The fields of a feed's node the connector models, decoded once by serde into borrowed
//! strings (see [`crate::wiz::page::JStr`]), and what a feed's change rule reads of them (status,
//! severity, time, fingerprint). The native normalizer ([`super::normalize`]) and the OCSF and
//! ECS writers ([`crate::format`]) all write from these views.

use std::borrow::Cow;

use serde::Deserialize;

use super::FeedName;
use crate::event::id::digest_parts;
use crate::wiz::page::{JStr, NodeError, RawText, Str};

type S<'a> = Option<JStr<'a>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VulnerabilityView<'a> {
    #[serde(borrow)]
    pub(crate) id: JStr<'a>,
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
    #[serde(borrow, default, rename = "CVSSSeverity")]
    pub(crate) cvss_severity: S<'a>,
    #[serde(borrow, default)]
    pub(crate) vendor_severity: S<'a>,
    #[serde(borrow, default)]
    pub(crate) severity: S<'a>,
    #[serde(default)]
    pub(crate) score: Option<f64>,
    #[serde(borrow, default)]
    pub(crate) status: S<'a>,
    #[serde(borrow, default)]
    pub(crate) first_detected_at: S<'a>,
    #[serde(borrow, default)]
    pub(crate) last_detected_at: S<'a>,
    #[serde(borrow, default)]
    pub(crate) resolved_at: S<'a>,
    /// The finding in the Wiz console (Elastic's vulnerability stream asks for it).
    #[serde(borrow, default)]
    pub(crate) portal_url: S<'a>,
    #[serde(borrow, default)]
    pub(crate) detailed_name: S<'a>,
    /// Copied by the OCSF and ECS formats only: kept raw (see [`RawText`]).
    #[serde(borrow, default)]
    pub(crate) description: RawText<'a>,
    #[serde(borrow, default)]
    pub(crate) remediation: RawText<'a>,
    #[serde(borrow, default)]
    pub(crate) version: S<'a>,
    #[serde(borrow, default)]
    pub(crate) fixed_version: S<'a>,
    #[serde(borrow, default)]
    pub(crate) vulnerable_asset: Option<AssetView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetView<'a> {
    #[serde(borrow, default)]
    pub(crate) id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
    #[serde(borrow, default, rename = "type")]
    pub(crate) asset_type: S<'a>,
    #[serde(borrow, default)]
    pub(crate) native_type: S<'a>,
    #[serde(borrow, default)]
    pub(crate) region: S<'a>,
    #[serde(borrow, default)]
    pub(crate) cloud_platform: S<'a>,
    #[serde(borrow, default)]
    pub(crate) provider_id: S<'a>,
    /// A vulnerable asset's cloud identifier (its ARN, say).
    #[serde(borrow, default)]
    pub(crate) provider_unique_id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) subscription_external_id: S<'a>,
    /// A configuration finding's resource's account.
    #[serde(borrow, default)]
    pub(crate) subscription: Option<SubscriptionView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView<'a> {
    #[serde(borrow, default)]
    pub(crate) external_id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectionView<'a> {
    #[serde(borrow)]
    pub(crate) id: JStr<'a>,
    #[serde(borrow, default, rename = "type")]
    pub(crate) detection_type: S<'a>,
    #[serde(borrow, default)]
    pub(crate) severity: S<'a>,
    #[serde(borrow, default)]
    pub(crate) created_at: S<'a>,
    /// Moves when Wiz updates the detection (more events matched, a new severity): windows
    /// follow it, and each version is delivered once.
    #[serde(borrow, default)]
    pub(crate) updated_at: S<'a>,
    #[serde(borrow, default)]
    pub(crate) description: S<'a>,
    #[serde(borrow, default)]
    pub(crate) rule_match: Option<RuleMatchView<'a>>,
    #[serde(borrow, default)]
    pub(crate) primary_actor: Option<AssetView<'a>>,
    #[serde(borrow, default)]
    pub(crate) primary_resource: Option<AssetView<'a>>,
    /// The cloud accounts involved: the resource's cloud is the first one's `cloudProvider`
    /// (no public query asks `primaryResource` for its cloud).
    #[serde(borrow, default)]
    pub(crate) cloud_accounts: Option<Vec<CloudAccountView<'a>>>,
    #[serde(borrow, default)]
    pub(crate) issue: Option<IdView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudAccountView<'a> {
    #[serde(borrow, default)]
    pub(crate) cloud_provider: S<'a>,
    #[serde(borrow, default)]
    pub(crate) external_id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
}

#[derive(Deserialize)]
pub struct RuleMatchView<'a> {
    #[serde(borrow, default)]
    pub(crate) rule: Option<RuleView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView<'a> {
    #[serde(borrow, default)]
    pub(crate) id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) short_id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
    #[serde(borrow, default)]
    pub(crate) description: RawText<'a>,
    #[serde(borrow, default)]
    pub(crate) security_sub_categories: Option<Vec<SubCategoryView<'a>>>,
}

#[derive(Deserialize)]
pub struct SubCategoryView<'a> {
    #[serde(borrow, default)]
    pub(crate) title: S<'a>,
    #[serde(borrow, default)]
    pub(crate) category: Option<NameView<'a>>,
}

#[derive(Deserialize)]
pub struct NameView<'a> {
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
}

#[derive(Deserialize)]
pub struct IdView<'a> {
    #[serde(borrow, default)]
    pub(crate) id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) name: S<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditView<'a> {
    #[serde(borrow)]
    pub(crate) id: JStr<'a>,
    #[serde(borrow, default)]
    pub(crate) action: S<'a>,
    #[serde(borrow, default)]
    pub(crate) request_id: S<'a>,
    #[serde(borrow, default)]
    pub(crate) status: S<'a>,
    #[serde(borrow, default)]
    pub(crate) timestamp: S<'a>,
    #[serde(borrow, default)]
    pub(crate) user_agent: S<'a>,
    #[serde(borrow, default, rename = "sourceIP")]
    pub(crate) source_ip: S<'a>,
    #[serde(borrow, default)]
    pub(crate) user: Option<IdView<'a>>,
    #[serde(borrow, default)]
    pub(crate) service_account: Option<IdView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationView<'a> {
    #[serde(borrow)]
    pub(crate) id: JStr<'a>,
    #[serde(borrow, default)]
    pub(crate) analyzed_at: S<'a>,
    #[serde(borrow, default)]
    pub(crate) updated_at: S<'a>,
    #[serde(borrow, default)]
    pub(crate) severity: S<'a>,
    #[serde(borrow, default)]
    pub(crate) result: S<'a>,
    #[serde(borrow, default)]
    pub(crate) status: S<'a>,
    #[serde(borrow, default)]
    pub(crate) remediation: S<'a>,
    #[serde(borrow, default)]
    pub(crate) resource: Option<AssetView<'a>>,
    #[serde(borrow, default)]
    pub(crate) rule: Option<RuleView<'a>>,
}

/// The fields of a node a feed models.
pub enum View<'a> {
    Vulnerability(Box<VulnerabilityView<'a>>),
    Detection(Box<DetectionView<'a>>),
    Audit(Box<AuditView<'a>>),
    Configuration(Box<ConfigurationView<'a>>),
}

/// A node of a feed, decoded.
pub struct Item<'a> {
    pub id: JStr<'a>,
    pub view: View<'a>,
}

fn not_understood(node: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::new(e.to_string(), node)
}

/// Decodes one node of `feed` (not Issues). A node without an `id`, or with a field of the wrong
/// type, is an error for that node alone.
pub fn decode(feed: FeedName, node: &str) -> Result<Item<'_>, NodeError> {
    fn parse<'a, T: Deserialize<'a>>(node: &'a str) -> Result<Box<T>, NodeError> {
        serde_json::from_str(node).map_err(|e| not_understood(node, e))
    }
    Ok(match feed {
        FeedName::Vulnerabilities => {
            let mut v: Box<VulnerabilityView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Vulnerability(v),
            }
        }
        FeedName::Detections => {
            let mut v: Box<DetectionView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Detection(v),
            }
        }
        FeedName::Audit => {
            let mut v: Box<AuditView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Audit(v),
            }
        }
        FeedName::CloudConfiguration => {
            let mut v: Box<ConfigurationView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Configuration(v),
            }
        }
        FeedName::Issues => return Err(not_understood(node, "issues have their own normalizer")),
    })
}

fn take<'a>(id: &mut JStr<'a>) -> JStr<'a> {
    JStr(std::mem::replace(&mut id.0, Cow::Borrowed("")))
}

pub(crate) fn st<'a>(j: &'a S<'_>) -> Option<Str<'a>> {
    j.as_ref().map(|j| Str {
        text: &j.0,
        verbatim: matches!(j.0, Cow::Borrowed(_)),
    })
}

pub(crate) fn txt<'a>(j: &'a S<'_>) -> Option<&'a str> {
    j.as_ref().map(|j| &*j.0)
}

impl Item<'_> {
    /// The status a `States` feed keeps: Wiz's `status`, or for a configuration finding without
    /// one, its `result` (`FAIL` is open, `PASS` resolved).
    pub fn status(&self) -> &str {
        match &self.view {
            View::Vulnerability(v) => txt(&v.status).unwrap_or("OPEN"),
            View::Configuration(c) => match (txt(&c.status), txt(&c.result)) {
                (Some(s), _) => s,
                (None, Some("PASS")) => "RESOLVED",
                (None, Some("FAIL")) | (None, None) => "OPEN",
                (None, Some(r)) => r,
            },
            View::Detection(_) | View::Audit(_) => "OPEN",
        }
    }

    /// Wiz's severity, verbatim, when the node has one.
    pub fn severity_raw(&self) -> Option<&str> {
        match &self.view {
            View::Vulnerability(v) => txt(&v.cvss_severity)
                .or(txt(&v.vendor_severity))
                .or(txt(&v.severity)),
            View::Detection(d) => txt(&d.severity),
            View::Audit(_) => None,
            View::Configuration(c) => txt(&c.severity),
        }
    }

    /// A detection Wiz updated after it created it: `updatedAt` is later than `createdAt`.
    /// Its version is then an update (`detection.updated`), with its own event id.
    pub fn is_update(&self) -> bool {
        match &self.view {
            View::Detection(d) => match (txt(&d.updated_at), txt(&d.created_at)) {
                (Some(u), Some(c)) => micros(u).zip(micros(c)).is_some_and(|(u, c)| u > c),
                (Some(_), None) => true,
                _ => false,
            },
            _ => false,
        }
    }

    /// What a `Once` feed delivers once: the item's id, or for an updated detection its id and
    /// `updatedAt` (each version once). A detection never updated keeps its bare id, as before
    /// detections were followed on `updatedAt`.
    pub fn once_key(&self) -> Cow<'_, str> {
        match &self.view {
            View::Detection(d) if self.is_update() => Cow::Owned(format!(
                "{}@{}",
                &*self.id.0,
                txt(&d.updated_at).unwrap_or_default()
            )),
            _ => Cow::Borrowed(&self.id.0),
        }
    }

    /// The time a `Once` feed's windows are on (a detection's `updatedAt`, else its
    /// `createdAt`; an audit entry's `timestamp`), in microseconds.
    pub fn time_micros(&self) -> Option<i64> {
        let t = match &self.view {
            View::Detection(d) => txt(&d.updated_at).or(txt(&d.created_at)),
            View::Audit(a) => txt(&a.timestamp),
            View::Vulnerability(v) => txt(&v.last_detected_at),
            View::Configuration(c) => txt(&c.updated_at).or(txt(&c.analyzed_at)),
        }?;
        micros(t)
    }

    /// Digest of the state that makes a new event. Vulnerabilities: status, severity, score,
    /// fixed version, resolution time. Configuration findings: status, result,
    /// severity, update time. `lastDetectedAt` and `analyzedAt` are left out: Wiz moves them on
    /// every scan, and a rescan that finds the same thing is not news. Detections and audit
    /// entries: the feed's alone, and a detection's `updatedAt` once Wiz updated it.
    pub fn fingerprint(&self) -> [u8; 16] {
        let score;
        let parts: Vec<Option<&str>> = match &self.view {
            View::Vulnerability(v) => {
                score = v.score.map(|s| s.to_string());
                vec![
                    Some(self.status()),
                    self.severity_raw(),
                    score.as_deref(),
                    txt(&v.fixed_version),
                    txt(&v.resolved_at),
                    // Was `updatedAt`, which no public query asks a finding for and which is
                    // no longer asked; kept as a gap so that stored digests stay comparable.
                    None,
                ]
            }
            View::Configuration(c) => vec![
                Some(self.status()),
                txt(&c.result),
                txt(&c.severity),
                txt(&c.updated_at),
            ],
            // An updated version's digest has its `updatedAt`; one never updated keeps the
            // feed's alone (its event id is the one it had before updates were followed).
            View::Detection(d) if self.is_update() => {
                vec![Some("detection"), txt(&d.updated_at)]
            }
            View::Detection(_) => vec![Some("detection")],
            View::Audit(_) => vec![Some("audit")],
        };
        digest_parts(&parts)
    }
}

/// RFC 3339 text to microseconds since the epoch.
pub fn micros(t: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(t))
        .ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_micros() as i64)
}
