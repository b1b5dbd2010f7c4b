//! Output formats: the schema an event is written in, chosen per sink (`sinks.<name>.format`).
//!
//! - `native`: the connector's own event (CONTRACT.md, "Normalized event"), written by
//!   [`crate::event`] and [`crate::feeds::normalize`].
//! - `ocsf`: OCSF 1.8.0 ([`ocsf`]).
//! - `ecs`: the Elastic Common Schema, with the field choices of Elastic's Wiz integration
//!   ([`ecs`]).
//!
//! A format is a step between the normalizer and the sink. The normalizer decodes a Wiz node
//! once, into borrowed fields, and writes from those fields every format the tenant's
//! destinations take, each into its own buffer of [`Lines`]: no second parse of the node, and no
//! format a tenant's destinations do not take. The lines of all formats stay parallel (line `n`
//! of each is the same event), so a route's severity filter, decided on the native line, picks
//! the same events in every format. The sink actor gives each sink the lines of its format; a
//! sink knows its protocol, never a schema.
//!
//! Which events are delivered, and when, never depends on the format: the same events with the
//! same ids (`id`, OCSF `metadata.uid`, ECS `event.id`).

pub mod ecs;
pub mod ocsf;

use serde::{Deserialize, Serialize};

use crate::json::{write_escaped, write_str, JsonWriter};
use crate::wiz::page::Str;

/// The schema a sink's events are written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The connector's own event.
    #[default]
    Native,
    /// OCSF 1.8.0.
    Ocsf,
    /// Elastic Common Schema.
    Ecs,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Native, Format::Ocsf, Format::Ecs];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
        }
    }

    /// The format named `name`, as `sinks.<name>.format` spells it.
    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The formats a tenant's destinations take. `native` is always written: routes filter on it,
/// and it is what the state and the logs speak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FormatSet(u8);

impl Default for FormatSet {
    fn default() -> Self {
        FormatSet(Format::Native.bit())
    }
}

impl FormatSet {
    pub fn with(self, f: Format) -> FormatSet {
        FormatSet(self.0 | f.bit())
    }

    pub fn has(self, f: Format) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn of(formats: impl IntoIterator<Item = Format>) -> FormatSet {
        formats
            .into_iter()
            .fold(FormatSet::default(), FormatSet::with)
    }
}

/// A member the tenant adds to an event after the normalizer wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The event is part of a baseline (`"baseline": true`).
    Baseline,
    /// The connector made this change itself, by write-back (`"origin": "connector"`).
    Origin,
}

impl Mark {
    fn member(self) -> &'static [u8] {
        match self {
            Mark::Baseline => b"\"baseline\":true",
            Mark::Origin => b"\"origin\":\"connector\"",
        }
    }
}

/// The events of one page being built, in every format the tenant's destinations take: one JSON
/// object per line in each buffer, line `n` of each the same event.
#[derive(Debug, Default)]
pub struct Lines {
    pub native: Vec<u8>,
    pub ocsf: Vec<u8>,
    pub ecs: Vec<u8>,
    /// The formats written (set when the page starts).
    pub formats: FormatSet,
}

impl Lines {
    pub fn new(formats: FormatSet) -> Lines {
        Lines {
            formats,
            ..Default::default()
        }
    }

    /// Empties the buffers (keeping their memory) for a page in `formats`.
    pub fn reset(&mut self, formats: FormatSet) {
        self.native.clear();
        self.ocsf.clear();
        self.ecs.clear();
        self.formats = formats;
    }

    /// Ends the event just written, in every format.
    pub fn end_event(&mut self) {
        self.native.push(b'\n');
        if self.formats.has(Format::Ocsf) {
            self.ocsf.push(b'\n');
        }
        if self.formats.has(Format::Ecs) {
            self.ecs.push(b'\n');
        }
    }

    /// Adds `mark` to the event just written: a top-level member of the native event, a member
    /// of OCSF's `unmapped` and of ECS's `wiz.<feed>` (each writer ends the event with that
    /// object, so the member goes in before the closing braces).
    pub fn mark(&mut self, mark: Mark) {
        insert_at_tail(&mut self.native, 1, mark.member());
        if self.formats.has(Format::Ocsf) {
            insert_at_tail(&mut self.ocsf, ocsf::TAIL_DEPTH, mark.member());
        }
        if self.formats.has(Format::Ecs) {
            insert_at_tail(&mut self.ecs, ecs::TAIL_DEPTH, mark.member());
        }
    }

    /// The native lines, and the others as a [`Formatted`].
    pub fn split(self) -> (Vec<u8>, Formatted) {
        let f = self.formats;
        (
            self.native,
            Formatted {
                ocsf: f.has(Format::Ocsf).then_some(self.ocsf),
                ecs: f.has(Format::Ecs).then_some(self.ecs),
            },
        )
    }
}

/// The lines of a page in the formats other than `native` (see [`Lines`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Formatted {
    pub ocsf: Option<Vec<u8>>,
    pub ecs: Option<Vec<u8>>,
}

impl Formatted {
    pub fn get(&self, f: Format) -> Option<&[u8]> {
        match f {
            Format::Native => None,
            Format::Ocsf => self.ocsf.as_deref(),
            Format::Ecs => self.ecs.as_deref(),
        }
    }
}

/// Inserts `member` into the object `depth - 1` levels down at the end of the event that ends
/// `out` (`depth` closing braces end it): `{...,"o":{"a":1}}` with depth 2 becomes
/// `{...,"o":{"a":1,<member>}}`.
fn insert_at_tail(out: &mut Vec<u8>, depth: usize, member: &[u8]) {
    if out.len() < depth + 1 || out[out.len() - depth..].iter().any(|b| *b != b'}') {
        debug_assert!(false, "an event ends with {depth} closing braces");
        return;
    }
    let at = out.len() - depth;
    let empty = out[at - 1] == b'{';
    let mut insert = Vec::with_capacity(member.len() + 1);
    if !empty {
        insert.push(b',');
    }
    insert.extend_from_slice(member);
    out.splice(at..at, insert);
}

/// The time to index an event at where a destination requires one (an Elasticsearch data
/// stream's `@timestamp`) and the event has none: a native event's `observed_at` (an RFC 3339
/// string), an OCSF event's `time` (epoch milliseconds, which Elasticsearch's date fields take).
/// `None` for an ECS event (it has `@timestamp`) or a line without either. Read from the line's
/// top level without parsing it.
pub fn index_time(line: &[u8]) -> Option<&[u8]> {
    if line.starts_with(b"{\"event\":") || line.starts_with(b"{\"@timestamp\":") {
        return None;
    }
    if line.starts_with(b"{\"metadata\":") {
        return crate::json::top_level(line, "time");
    }
    crate::json::top_level(line, "observed_at")
}

/// The id of the Wiz item an event is about (an issue, a finding, a detection, an audit entry),
/// read from the event in whatever format it is: what keeps one item's events together (the
/// `kafka` sink's record key). Native: `detection_id`, `finding_id`, `entry_id` or `issue_id`;
/// OCSF: `finding_info.uid`, else `unmapped.entry_id` or `unmapped.issue_id`; ECS:
/// `wiz.<feed>.id`, else `wiz.<feed>.issue_id`. Read from the line without parsing it.
pub fn item_id(line: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    use crate::json::{string_value, top_level, top_level_first};
    const FEEDS: [&str; 5] = [
        "issues",
        "vulnerabilities",
        "detections",
        "audit",
        "cloud_configuration",
    ];
    let raw = if line.starts_with(b"{\"metadata\":") {
        top_level(line, "finding_info")
            .and_then(|f| top_level(f, "uid"))
            .or_else(|| {
                top_level(line, "unmapped")
                    .and_then(|u| top_level_first(u, &["entry_id", "issue_id"]))
            })
    } else if line.starts_with(b"{\"event\":") || line.starts_with(b"{\"@timestamp\":") {
        top_level(line, "wiz")
            .and_then(|w| top_level_first(w, &FEEDS))
            .and_then(|f| top_level_first(f, &["id", "issue_id"]))
    } else {
        top_level_first(
            line,
            &["detection_id", "finding_id", "entry_id", "issue_id"],
        )
    };
    string_value(raw?)
}

/// RFC 3339 text to milliseconds since the epoch (OCSF's `timestamp_t`).
pub fn millis(t: &str) -> Option<i64> {
    crate::feeds::view::micros(t).map(|m| m.div_euclid(1000))
}

/// RFC 3339 text to ECS's date form (`2026-01-02T03:04:05.678Z`: UTC, milliseconds).
pub fn ecs_date(t: &str) -> Option<String> {
    let ms = millis(t)?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).ok()?);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// `"unreadable":{"reason":..,"bytes":..,"sha256":..,"head":..}`: what a quarantine event (see
/// [`crate::event::unreadable`]) says of its node, the same in every format.
pub(crate) fn unreadable_member(w: &mut JsonWriter<'_>, node: &crate::wiz::page::NodeError) {
    w.key("unreadable");
    let mut q = JsonWriter::new(w.out);
    q.text("reason", &node.reason);
    q.int("bytes", node.node.bytes as i64);
    q.text("sha256", &node.node.sha256);
    q.text("head", &node.node.head);
    q.close();
}

/// A quarantine event's message, in a sentence.
pub(crate) fn unreadable_message(
    feed: crate::feeds::FeedName,
    node: &crate::wiz::page::NodeError,
) -> String {
    format!(
        "A Wiz {} record could not be read and was set aside: {}",
        feed.as_str(),
        node.reason
    )
}

/// Helpers over [`JsonWriter`] the format writers share: members left out when there is no
/// value (OCSF and ECS documents carry no `null`s).
pub(crate) trait Members {
    /// `"key":"value"` when there is a value (an empty string is none).
    fn some(&mut self, key: &str, v: Option<Str<'_>>);
    /// `"key":"text"`, escaped.
    fn text(&mut self, key: &str, v: &str);
    /// `"key":<n>`.
    fn int(&mut self, key: &str, n: i64);
    /// `"key":<epoch ms>` when `t` is an RFC 3339 time.
    fn ms(&mut self, key: &str, t: Option<Str<'_>>) {
        if let Some(ms) = t.and_then(|t| millis(t.text)) {
            self.int(key, ms);
        }
    }
    /// `"key":"<ECS date>"` when `t` is an RFC 3339 time.
    fn date(&mut self, key: &str, t: Option<Str<'_>>) {
        if let Some(d) = t.and_then(|t| ecs_date(t.text)) {
            self.text(key, &d);
        }
    }
    /// `"key":<number>` for a finite number.
    fn num(&mut self, key: &str, n: Option<f64>);
    /// `"key":["a","b"]` of the values given; nothing when there are none.
    fn list<'s>(&mut self, key: &str, items: impl IntoIterator<Item = Str<'s>>);
}

impl Members for JsonWriter<'_> {
    fn some(&mut self, key: &str, v: Option<Str<'_>>) {
        if let Some(v) = v.filter(|v| !v.text.is_empty()) {
            self.key(key);
            write_str(self.out, v);
        }
    }

    fn text(&mut self, key: &str, v: &str) {
        self.key(key);
        write_escaped(self.out, v);
    }

    fn int(&mut self, key: &str, n: i64) {
        self.key(key);
        self.out.extend_from_slice(n.to_string().as_bytes());
    }

    fn num(&mut self, key: &str, n: Option<f64>) {
        if let Some(n) = n.filter(|n| n.is_finite()) {
            self.key(key);
            serde_json::to_writer(&mut *self.out, &n).expect("a number serializes");
        }
    }

    fn list<'s>(&mut self, key: &str, items: impl IntoIterator<Item = Str<'s>>) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return;
        }
        self.key(key);
        self.out.push(b'[');
        for (i, v) in items.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_str(self.out, v);
        }
        self.out.push(b']');
    }
}

/// The resource an event is about and its cloud, gathered once from a node's view: both
/// writers map it (OCSF's `resources` and `cloud`, ECS's `resource` and `cloud`).
#[derive(Default, Clone, Copy)]
pub(crate) struct Asset<'a> {
    /// Wiz's id of the resource.
    pub id: Option<Str<'a>>,
    pub name: Option<Str<'a>>,
    /// Wiz's type (`VIRTUAL_MACHINE`, ...).
    pub kind: Option<Str<'a>>,
    /// The cloud's own type (`ec2`, ...).
    pub native_type: Option<Str<'a>>,
    pub region: Option<Str<'a>>,
    /// The cloud's own id of the resource (an ARN, a provider id).
    pub cloud_id: Option<Str<'a>>,
    /// The cloud platform (`AWS`, ...).
    pub provider: Option<Str<'a>>,
    pub account_id: Option<Str<'a>>,
    pub account_name: Option<Str<'a>>,
}

impl<'a> Asset<'a> {
    /// A feed item's asset (a vulnerable asset, a finding's resource, a detection's resource).
    pub fn of(a: &'a crate::feeds::view::AssetView<'_>) -> Asset<'a> {
        use crate::feeds::view::st;
        let sub = a.subscription.as_ref();
        Asset {
            id: st(&a.id),
            name: st(&a.name),
            kind: st(&a.asset_type),
            native_type: st(&a.native_type),
            region: st(&a.region),
            cloud_id: st(&a.provider_unique_id).or(st(&a.provider_id)),
            provider: st(&a.cloud_platform),
            account_id: st(&a.subscription_external_id).or(sub.and_then(|s| st(&s.external_id))),
            account_name: sub.and_then(|s| st(&s.name)),
        }
    }

    /// An Issue's `entitySnapshot`.
    pub fn of_issue(issue: &crate::wiz::page::Issue<'a>) -> Asset<'a> {
        let Some(e) = issue.record.resource.as_deref() else {
            return Asset::default();
        };
        Asset {
            id: issue.opt(&e.id),
            name: issue.opt(&e.name),
            kind: issue.opt(&e.resource_type),
            native_type: issue.opt(&e.native_type),
            region: issue.opt(&e.region),
            cloud_id: issue.opt(&e.provider_id),
            provider: issue.opt(&e.cloud_platform),
            account_id: issue.opt(&e.subscription_id),
            account_name: issue.opt(&e.subscription_name),
        }
    }
}

/// A string the connector made (escaped on output).
pub(crate) fn own(s: &str) -> Str<'_> {
    Str {
        text: s,
        verbatim: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_goes_into_the_object_at_the_tail() {
        let mut l = Lines::new(FormatSet::of([Format::Ocsf, Format::Ecs]));
        l.native.extend_from_slice(b"{\"id\":\"a\"}");
        l.ocsf.extend_from_slice(b"{\"x\":1,\"unmapped\":{}}");
        l.ecs.extend_from_slice(
            b"{\"event\":{\"id\":\"a\"},\"wiz\":{\"issues\":{\"status\":\"OPEN\"}}}",
        );
        l.mark(Mark::Baseline);
        l.end_event();
        assert_eq!(l.native, b"{\"id\":\"a\",\"baseline\":true}\n");
        assert_eq!(l.ocsf, b"{\"x\":1,\"unmapped\":{\"baseline\":true}}\n");
        assert_eq!(
            String::from_utf8(l.ecs).unwrap(),
            "{\"event\":{\"id\":\"a\"},\"wiz\":{\"issues\":{\"status\":\"OPEN\",\"baseline\":true}}}\n"
        );
    }

    #[test]
    fn formats_not_taken_are_not_written() {
        let mut l = Lines::new(FormatSet::default());
        l.native.extend_from_slice(b"{}");
        l.mark(Mark::Origin);
        l.end_event();
        let (native, other) = l.split();
        assert_eq!(native, b"{\"origin\":\"connector\"}\n");
        assert_eq!(other, Formatted::default());
    }

    #[test]
    fn times_convert_to_epoch_milliseconds_and_ecs_dates() {
        assert_eq!(
            millis("2026-01-02T03:04:05.678901Z"),
            Some(1_767_323_045_678)
        );
        assert_eq!(millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(millis("yesterday"), None);
        assert_eq!(
            ecs_date("2026-01-02T03:04:05.678901Z").as_deref(),
            Some("2026-01-02T03:04:05.678Z")
        );
    }
}
