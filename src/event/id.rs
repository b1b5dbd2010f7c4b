//! Event ids and fingerprints: deterministic digests of an item's observed state, and reading an
//! event's id back from the start of its line. A leaf module: the feeds' decoded views and the
//! format writers use it without the normalizer.

use sha2::{Digest, Sha256};

use crate::wiz::page::Issue;

/// The fingerprint of an issue as a page holds it (see [`fingerprint`]).
pub fn issue_fingerprint(issue: &Issue<'_>) -> [u8; 16] {
    let r = issue.record;
    fingerprint(
        issue.status(),
        issue.opt(&r.severity).map(|s| s.text),
        issue.opt(&r.updated_at).map(|s| s.text),
        issue.opt(&r.status_changed_at).map(|s| s.text),
    )
}

/// Digest of the state of an issue that makes a new event: status, severity, updatedAt and
/// statusChangedAt. Fields are length-prefixed so no two states share an encoding.
pub fn fingerprint(
    status: &str,
    severity: Option<&str>,
    updated_at: Option<&str>,
    status_changed_at: Option<&str>,
) -> [u8; 16] {
    digest_parts(&[Some(status), severity, updated_at, status_changed_at])
}

/// A 16-byte digest of `parts`, each length-prefixed (an absent part as length 0, a present one
/// as its length + 1), so no two lists of parts share an encoding. The fingerprints of issues and
/// of the other feeds' items.
pub fn digest_parts(parts: &[Option<&str>]) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in parts {
        match part {
            Some(s) => {
                h.update((s.len() as u64 + 1).to_le_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(0u64.to_le_bytes()),
        }
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The id of an event line, in any format: every writer puts it first (`{"id":"<32 hex>",...`
/// native, `{"metadata":{"uid":"...` OCSF, `{"event":{"id":"...` ECS), so it is read from the
/// start of the line instead of parsing the whole event, raw node included: the `nats` sink
/// needs it per event.
pub fn event_id_of(line: &[u8]) -> Option<&str> {
    let rest = [
        &b"{\"id\":\""[..],
        b"{\"metadata\":{\"uid\":\"",
        b"{\"event\":{\"id\":\"",
    ]
    .iter()
    .find_map(|p| line.strip_prefix(*p))?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The fingerprint recorded for an issue that vanished, derived from its last known one: distinct
/// from any digest of an observed state, and the same on every replay of the same vanishing.
pub fn vanished_fingerprint(last: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"wiz-connector/vanished");
    h.update(last);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// The id of an event whose state alone does not make it new (an issue back after it vanished):
/// [`event_id`] over the state and `salt` (the recorded vanished fingerprint), so it differs from
/// the id the same state had before, and is the same on a replay.
pub fn salted_event_id(
    tenant: &str,
    issue_id: &str,
    fingerprint: &[u8; 16],
    salt: &[u8; 16],
) -> String {
    let mut h = Sha256::new();
    h.update(fingerprint);
    h.update(salt);
    let mut mixed = [0u8; 16];
    mixed.copy_from_slice(&h.finalize()[..16]);
    event_id(tenant, issue_id, &mixed)
}

/// The event id: the same tenant, issue and observed state always give the same id (so consumers
/// and brokers can drop replays); a change of state gives a new one. 32 hex characters.
pub fn event_id(tenant: &str, issue_id: &str, fingerprint: &[u8; 16]) -> String {
    let mut h = Sha256::new();
    h.update((tenant.len() as u64).to_le_bytes());
    h.update(tenant.as_bytes());
    h.update((issue_id.len() as u64).to_le_bytes());
    h.update(issue_id.as_bytes());
    h.update(fingerprint);
    hex::encode(&h.finalize()[..16])
}
