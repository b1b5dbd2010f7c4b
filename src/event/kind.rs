//! What happened to an item (`EventKind`) and the normalized severity ladder: the vocabulary every
//! event speaks, in a leaf module (the format writers need it, and the normalizer needs them).

use serde::{Deserialize, Serialize};

/// What happened to an issue (`issue.*`), or to an item of another feed (see [`crate::feeds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "issue.opened")]
    Opened,
    #[serde(rename = "issue.updated")]
    Updated,
    #[serde(rename = "issue.resolved")]
    Resolved,
    #[serde(rename = "issue.rejected")]
    Rejected,
    #[serde(rename = "issue.reopened")]
    Reopened,
    #[serde(rename = "vulnerability.opened")]
    VulnerabilityOpened,
    #[serde(rename = "vulnerability.updated")]
    VulnerabilityUpdated,
    #[serde(rename = "vulnerability.resolved")]
    VulnerabilityResolved,
    #[serde(rename = "vulnerability.reopened")]
    VulnerabilityReopened,
    #[serde(rename = "detection.created")]
    DetectionCreated,
    /// A detection Wiz updated (its `updatedAt` moved): the new version.
    #[serde(rename = "detection.updated")]
    DetectionUpdated,
    #[serde(rename = "audit.entry")]
    AuditEntry,
    #[serde(rename = "configuration_finding.opened")]
    ConfigurationOpened,
    #[serde(rename = "configuration_finding.updated")]
    ConfigurationUpdated,
    #[serde(rename = "configuration_finding.resolved")]
    ConfigurationResolved,
    /// A node of a feed's page that the connector cannot read, quarantined (see
    /// [`crate::event::unreadable`]): one kind per feed, named like the feed's other kinds.
    #[serde(rename = "issue.unreadable")]
    IssueUnreadable,
    #[serde(rename = "vulnerability.unreadable")]
    VulnerabilityUnreadable,
    #[serde(rename = "detection.unreadable")]
    DetectionUnreadable,
    #[serde(rename = "audit.unreadable")]
    AuditUnreadable,
    #[serde(rename = "configuration_finding.unreadable")]
    ConfigurationUnreadable,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "issue.opened",
            EventKind::Updated => "issue.updated",
            EventKind::Resolved => "issue.resolved",
            EventKind::Rejected => "issue.rejected",
            EventKind::Reopened => "issue.reopened",
            EventKind::VulnerabilityOpened => "vulnerability.opened",
            EventKind::VulnerabilityUpdated => "vulnerability.updated",
            EventKind::VulnerabilityResolved => "vulnerability.resolved",
            EventKind::VulnerabilityReopened => "vulnerability.reopened",
            EventKind::DetectionCreated => "detection.created",
            EventKind::DetectionUpdated => "detection.updated",
            EventKind::AuditEntry => "audit.entry",
            EventKind::ConfigurationOpened => "configuration_finding.opened",
            EventKind::ConfigurationUpdated => "configuration_finding.updated",
            EventKind::ConfigurationResolved => "configuration_finding.resolved",
            EventKind::IssueUnreadable => "issue.unreadable",
            EventKind::VulnerabilityUnreadable => "vulnerability.unreadable",
            EventKind::DetectionUnreadable => "detection.unreadable",
            EventKind::AuditUnreadable => "audit.unreadable",
            EventKind::ConfigurationUnreadable => "configuration_finding.unreadable",
        }
    }

    /// The kind for an issue seen for the first time in `status`.
    pub fn for_first_sight(status: &str) -> EventKind {
        match status {
            "RESOLVED" => EventKind::Resolved,
            "REJECTED" => EventKind::Rejected,
            _ => EventKind::Opened,
        }
    }
}

/// The canonical 4-tier ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

/// Wiz's 5-tier severity on the 4-tier ladder; `None` for a value Wiz is not known to send.
pub fn map_severity(wiz: &str) -> Option<Severity> {
    Some(match wiz {
        "CRITICAL" | "HIGH" => Severity::High,
        "MEDIUM" => Severity::Medium,
        "LOW" => Severity::Low,
        "INFORMATIONAL" => Severity::Info,
        _ => return None,
    })
}
