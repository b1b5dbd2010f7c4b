//! One page of the Issues query as Wiz sent it, decoded in a single pass.
//!
//! The hot path of the connector starts here. The response is walked once: the envelope by a small
//! hand-written walker, each Issue node by serde into borrowed fields, whose positions are kept
//! (strings without escape sequences are stored as spans of the body, so they are never copied and
//! can be written out verbatim). The walker also records where each node starts and ends, so the
//! node can be forwarded byte for byte as `raw_event` without a second scan.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::{snippet, WizError};

/// A string field of an issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Where the string's content is in the body. It had no escape sequence, and strict JSON
    /// cannot hold a raw quote, backslash or control character, so it can be copied verbatim.
    Span { start: u32, len: u32 },
    /// The unescaped content of a string that had escape sequences.
    Owned(Box<str>),
}

/// The fields of an Issue node the connector models. Everything else stays only in the raw node.
#[derive(Debug, Clone)]
pub struct IssueRecord {
    pub id: Text,
    pub status: Text,
    pub severity: Option<Text>,
    pub issue_type: Option<Text>,
    pub created_at: Option<Text>,
    pub updated_at: Option<Text>,
    pub status_changed_at: Option<Text>,
    /// `sourceRule.name`.
    pub title: Option<Text>,
    /// `sourceRule.id`.
    pub rule_id: Option<Text>,
    /// The rule's description (each rule type's `description`, aliased in the query), as the
    /// response wrote it, escapes kept ([`RawText`]): for copying into events only.
    pub description: Option<Text>,
    /// How to fix it: a control's `resolutionRecommendation` or a configuration rule's
    /// `remediationInstructions`, escapes kept like `description`.
    pub remediation: Option<Text>,
    pub resolved_at: Option<Text>,
    pub due_at: Option<Text>,
    /// Where a control's `securitySubCategories` array is in the body (read by
    /// [`Issue::frameworks`] only when a format needs them).
    pub sub_categories: Option<Range<u32>>,
    /// From `entitySnapshot`.
    pub resource: Option<Box<ResourceRecord>>,
    /// `projects[].name`.
    pub projects: Vec<Text>,
}

/// The affected resource, from `entitySnapshot`.
#[derive(Debug, Clone)]
pub struct ResourceRecord {
    pub id: Option<Text>,
    pub name: Option<Text>,
    pub resource_type: Option<Text>,
    pub native_type: Option<Text>,
    pub cloud_platform: Option<Text>,
    pub region: Option<Text>,
    pub subscription_id: Option<Text>,
    pub subscription_name: Option<Text>,
    pub provider_id: Option<Text>,
    pub cloud_provider_url: Option<Text>,
}

/// A string of an issue, resolved against its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str<'p> {
    pub text: &'p str,
    /// True when `text` may be written between quotes as is (no character needs escaping).
    pub verbatim: bool,
}

/// A node the decoder refuses: valid JSON but not an item the connector can read (no `id`, a
/// number where a string belongs, not an object), or past the size or depth limit. The rest of
/// the page is unaffected, and the node becomes one quarantine event
/// ([`crate::event::unreadable`]), so it carries what that event says of it: never the whole
/// node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("issue node not understood ({reason}): {snippet}")]
pub struct NodeError {
    /// Why it cannot be read, without its position (the same node says the same wherever it is).
    pub reason: String,
    /// Its start for a log line: at most 200 characters, control characters blanked.
    pub snippet: String,
    /// What its quarantine event says of it (boxed: an error stays small).
    pub node: Box<NodeFacts>,
}

/// What is known of a node that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The item's `id`, when its top level has one that is a string.
    pub id: Option<String>,
    /// Its size in bytes.
    pub bytes: usize,
    /// SHA-256 of its bytes, in hex: the same node is quarantined once until its bytes change.
    pub sha256: String,
    /// Its first bytes (at most [`UNREADABLE_HEAD`], cut on a character boundary), verbatim.
    pub head: String,
}

impl NodeFacts {
    /// What names the node: the item's id, else `sha256:<digest>`.
    pub fn key(&self) -> std::borrow::Cow<'_, str> {
        match &self.id {
            Some(id) => std::borrow::Cow::Borrowed(id),
            None => std::borrow::Cow::Owned(format!("sha256:{}", self.sha256)),
        }
    }
}

/// Most bytes of an unreadable node that its quarantine event carries.
pub const UNREADABLE_HEAD: usize = 256;

impl NodeError {
    /// Describes the node `raw` (its exact bytes as received) refused for `reason`.
    pub fn new(reason: impl Into<String>, raw: &str) -> NodeError {
        use sha2::{Digest, Sha256};
        let mut cut = raw.len().min(UNREADABLE_HEAD);
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        NodeError {
            reason: reason.into(),
            snippet: snippet(raw.as_bytes()),
            node: Box::new(NodeFacts {
                id: node_id(raw),
                bytes: raw.len(),
                sha256: hex::encode(Sha256::digest(raw.as_bytes())),
                head: raw[..cut].to_string(),
            }),
        }
    }
}

/// Longest `id` [`node_id`] takes from a node that cannot be read (Wiz's are UUIDs, 36 bytes):
/// a longer one is as good as none, and the node is known by its digest instead.
pub const MAX_UNREADABLE_ID_BYTES: usize = 512;

/// The string `id` at the top level of the JSON object `raw`, read without decoding the rest
/// (values are skipped without recursion, so a node nested 100,000 deep is read too). `None` when
/// `raw` is not an object or has no string `id` of at most [`MAX_UNREADABLE_ID_BYTES`].
pub fn node_id(raw: &str) -> Option<String> {
    let mut w = Walker { text: raw, pos: 0 };
    let mut id = None;
    let _ = w.object(|w, key| {
        if key == "id" && id.is_none() {
            if let Ok(JStr(s)) = w.value::<JStr<'_>>() {
                id = (s.len() <= MAX_UNREADABLE_ID_BYTES).then(|| s.into_owned());
                return Ok(());
            }
        }
        w.skip_any()
    });
    id
}

struct NodeEntry {
    raw: Range<usize>,
    decoded: Result<IssueRecord, NodeError>,
}

/// One page of Issues: the body, kept whole, and every node decoded.
pub struct Page {
    /// The whole response, validated as UTF-8 once.
    body: String,
    nodes: Vec<NodeEntry>,
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("nodes", &self.nodes.len())
            .field("bytes", &self.body.len())
            .field("has_next_page", &self.has_next_page)
            .field("end_cursor", &self.end_cursor)
            .finish()
    }
}

/// One issue of a page.
#[derive(Debug, Clone, Copy)]
pub struct Issue<'p> {
    body: &'p str,
    pub record: &'p IssueRecord,
    /// The node's JSON exactly as received.
    pub raw: &'p str,
}

impl<'p> Issue<'p> {
    /// Resolves one of the record's strings.
    pub fn text(&self, t: &'p Text) -> Str<'p> {
        match t {
            Text::Span { start, len } => Str {
                text: &self.body[*start as usize..(*start + *len) as usize],
                verbatim: true,
            },
            Text::Owned(s) => Str {
                text: s,
                verbatim: false,
            },
        }
    }

    pub fn opt(&self, t: &'p Option<Text>) -> Option<Str<'p>> {
        t.as_ref().map(|t| self.text(t))
    }

    pub fn id(&self) -> &'p str {
        self.text(&self.record.id).text
    }

    pub fn status(&self) -> &'p str {
        self.text(&self.record.status).text
    }

    /// Wiz's severity, verbatim (`CRITICAL`...), when the node has one.
    pub fn severity(&self) -> Option<&'p str> {
        self.opt(&self.record.severity).map(|s| s.text)
    }

    /// The compliance frameworks of a control's security sub-categories, each once, in order.
    /// Read from the array's span when a format asks (the native event does not carry them);
    /// an array that does not have the expected shape gives none.
    pub fn frameworks(&self) -> Vec<Cow<'p, str>> {
        let Some(span) = &self.record.sub_categories else {
            return Vec::new();
        };
        let text = &self.body[span.start as usize..span.end as usize];
        let subs: Vec<SubCategoryView<'p>> = serde_json::from_str(text).unwrap_or_default();
        let mut names: Vec<Cow<'p, str>> = Vec::new();
        for name in subs.into_iter().filter_map(|s| s.category?.framework?.name) {
            if !names.iter().any(|n| *n == *name) {
                names.push(name.0);
            }
        }
        names
    }
}

impl Page {
    /// Every node: the decoded issue, or why it could not be read.
    pub fn issues(&self) -> impl ExactSizeIterator<Item = Result<Issue<'_>, &NodeError>> + '_ {
        self.nodes.iter().map(move |n| match &n.decoded {
            Ok(record) => Ok(Issue {
                body: &self.body,
                record,
                raw: &self.body[n.raw.clone()],
            }),
            Err(e) => Err(e),
        })
    }

    /// Each node's JSON text, exactly as received.
    pub fn raw_nodes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.nodes.iter().map(move |n| &self.body[n.raw.clone()])
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Size of the response body in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// A one-node page from a single Issue node's JSON (tests, tools, replays).
    pub fn single(node: &str) -> Result<Page, WizError> {
        let body = format!(
            "{{\"data\":{{\"issues\":{{\"nodes\":[{node}],\"pageInfo\":{{\"hasNextPage\":false}}}}}}}}"
        );
        let page = parse_page(Bytes::from(body))?;
        if page.len() != 1 {
            return Err(WizError::BadResponse(
                "expected exactly one issue node".into(),
            ));
        }
        Ok(page)
    }
}

/// A JSON string borrowed from the response when it holds no escape sequence, owned otherwise.
/// serde only borrows a bare `Cow<str>` field; inside `Option` it always allocates, so this type
/// does the borrowing itself.
#[derive(Debug)]
pub struct JStr<'a>(pub Cow<'a, str>);

impl std::ops::Deref for JStr<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = JStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(JStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct IssueView<'a> {
    #[serde(borrow)]
    id: JStr<'a>,
    #[serde(borrow)]
    status: JStr<'a>,
    #[serde(borrow, default)]
    severity: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "type")]
    issue_type: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "createdAt")]
    created_at: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "updatedAt")]
    updated_at: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "statusChangedAt")]
    status_changed_at: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "resolvedAt")]
    resolved_at: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "dueAt")]
    due_at: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "sourceRule")]
    source_rule: Option<RuleView<'a>>,
    #[serde(borrow, default, rename = "entitySnapshot")]
    entity: Option<EntityView<'a>>,
    #[serde(borrow, default)]
    projects: Option<Vec<NamedView<'a>>>,
}

#[derive(Deserialize)]
struct NamedView<'a> {
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
}

/// `sourceRule`: a Control, a CloudEventRule or a CloudConfigurationRule, with each type's
/// `description` under its own alias (see `wiz::issues`). The long texts only the OCSF and ECS
/// formats copy are kept raw ([`RawText`]), and the sub-categories as a span, so the native
/// path neither unescapes nor allocates for them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleView<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    control_description: RawText<'a>,
    #[serde(borrow, default)]
    cloud_event_rule_description: RawText<'a>,
    #[serde(borrow, default)]
    cloud_configuration_rule_description: RawText<'a>,
    #[serde(borrow, default)]
    resolution_recommendation: RawText<'a>,
    #[serde(borrow, default)]
    remediation_instructions: RawText<'a>,
    #[serde(borrow, default)]
    security_sub_categories: Option<&'a serde_json::value::RawValue>,
}

/// A JSON string exactly as the response wrote it, escapes kept, for a field the connector only
/// copies into events (a JSON string's inside is valid inside another): reading it unescapes and
/// allocates nothing. Any other value (null, a number, an object) reads as absent.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawText<'a>(pub Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for RawText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'a serde_json::value::RawValue>::deserialize(d)?;
        let t = raw.get();
        Ok(RawText(
            t.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|_| t.len() >= 2),
        ))
    }
}

impl<'a> RawText<'a> {
    /// The string's inside, to be written verbatim (see [`Str::verbatim`]).
    pub fn str(&self) -> Option<Str<'a>> {
        self.0.map(|text| Str {
            text,
            verbatim: true,
        })
    }

    fn or(self, other: RawText<'a>) -> RawText<'a> {
        if self.0.is_some() {
            self
        } else {
            other
        }
    }

    fn jstr(self) -> Option<JStr<'a>> {
        self.0.map(|t| JStr(Cow::Borrowed(t)))
    }
}

#[derive(Deserialize)]
struct SubCategoryView<'a> {
    #[serde(borrow, default)]
    category: Option<CategoryView<'a>>,
}

#[derive(Deserialize)]
struct CategoryView<'a> {
    #[serde(borrow, default)]
    framework: Option<NamedView<'a>>,
}

#[derive(Deserialize)]
struct EntityView<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "type")]
    entity_type: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "nativeType")]
    native_type: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "cloudPlatform")]
    cloud_platform: Option<JStr<'a>>,
    #[serde(borrow, default)]
    region: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "subscriptionExternalId")]
    subscription_id: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "subscriptionName")]
    subscription_name: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "providerId")]
    provider_id: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "cloudProviderURL")]
    cloud_provider_url: Option<JStr<'a>>,
}

/// Turns borrowed strings into spans relative to `base`.
struct Spans {
    base: usize,
}

impl Spans {
    fn text(&self, j: JStr<'_>) -> Text {
        match j.0 {
            Cow::Borrowed(s) => Text::Span {
                start: (s.as_ptr() as usize - self.base) as u32,
                len: s.len() as u32,
            },
            Cow::Owned(s) => Text::Owned(s.into_boxed_str()),
        }
    }

    fn opt(&self, j: Option<JStr<'_>>) -> Option<Text> {
        j.map(|j| self.text(j))
    }

    fn record(&self, mut v: IssueView<'_>) -> IssueRecord {
        let rule = v.source_rule.take();
        let mut record = IssueRecord {
            id: self.text(v.id),
            status: self.text(v.status),
            severity: self.opt(v.severity),
            issue_type: self.opt(v.issue_type),
            created_at: self.opt(v.created_at),
            updated_at: self.opt(v.updated_at),
            status_changed_at: self.opt(v.status_changed_at),
            resolved_at: self.opt(v.resolved_at),
            due_at: self.opt(v.due_at),
            title: None,
            rule_id: None,
            description: None,
            remediation: None,
            sub_categories: None,
            resource: v.entity.map(|e| {
                Box::new(ResourceRecord {
                    id: self.opt(e.id),
                    name: self.opt(e.name),
                    resource_type: self.opt(e.entity_type),
                    native_type: self.opt(e.native_type),
                    cloud_platform: self.opt(e.cloud_platform),
                    region: self.opt(e.region),
                    subscription_id: self.opt(e.subscription_id),
                    subscription_name: self.opt(e.subscription_name),
                    provider_id: self.opt(e.provider_id),
                    cloud_provider_url: self.opt(e.cloud_provider_url),
                })
            }),
            projects: v
                .projects
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| self.opt(p.name))
                .collect(),
        };
        if let Some(r) = rule {
            record.title = self.opt(r.name);
            record.rule_id = self.opt(r.id);
            record.description = self.opt(
                r.control_description
                    .or(r.cloud_configuration_rule_description)
                    .or(r.cloud_event_rule_description)
                    .jstr(),
            );
            record.remediation = self.opt(
                r.resolution_recommendation
                    .or(r.remediation_instructions)
                    .jstr(),
            );
            record.sub_categories = r.security_sub_categories.map(|raw| {
                let start = (raw.get().as_ptr() as usize - self.base) as u32;
                start..start + raw.get().len() as u32
            });
        }
        record
    }
}

#[derive(Deserialize)]
struct PageInfo {
    #[serde(rename = "hasNextPage")]
    has_next_page: bool,
    #[serde(rename = "endCursor", default)]
    end_cursor: Option<String>,
}

#[derive(Deserialize)]
struct GraphQlError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    extensions: Option<Extensions>,
}

#[derive(Deserialize)]
struct Extensions {
    #[serde(default)]
    code: Option<String>,
}

/// A cursor over the body that reads one JSON value at a time with serde and knows where it ended.
struct Walker<'a> {
    text: &'a str,
    pos: usize,
}

type Step<T> = Result<T, String>;

impl<'a> Walker<'a> {
    fn peek(&mut self) -> Option<u8> {
        let b = self.text.as_bytes();
        while self.pos < b.len() && matches!(b[self.pos], b' ' | b'\n' | b'\r' | b'\t') {
            self.pos += 1;
        }
        b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Step<()> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "expected '{}' at byte {}, found '{}'",
                c as char,
                self.pos,
                (x as char).escape_default()
            )),
            None => Err(format!(
                "expected '{}' at byte {}, found the end",
                c as char, self.pos
            )),
        }
    }

    /// Reads one value of type `T` at the current position.
    fn value<T: Deserialize<'a>>(&mut self) -> Step<T> {
        self.peek();
        let mut stream =
            serde_json::Deserializer::from_str(&self.text[self.pos..]).into_iter::<T>();
        match stream.next() {
            Some(Ok(v)) => {
                self.pos += stream.byte_offset();
                Ok(v)
            }
            Some(Err(e)) => Err(format!("at byte {}: {e}", self.pos)),
            None => Err(format!("expected a value at byte {}", self.pos)),
        }
    }

    /// True (and consumed) when the next value is `null`.
    fn null(&mut self) -> bool {
        if self.peek() == Some(b'n') && self.text[self.pos..].starts_with("null") {
            self.pos += 4;
            true
        } else {
            false
        }
    }

    /// Walks an object, calling `f` with each key; `f` must consume the value.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &str) -> Step<()>) -> Step<()> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key: JStr<'a> = self.value()?;
            self.expect(b':')?;
            f(self, &key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.pos)),
            }
        }
    }

    fn skip(&mut self) -> Step<()> {
        self.value::<IgnoredAny>().map(|_| ())
    }

    /// Moves past the value at the current position: an object or a list without recursion
    /// ([`Walker::skip_node`]), anything else with serde.
    fn skip_any(&mut self) -> Step<()> {
        match self.peek() {
            Some(b'{' | b'[') => self.skip_node(),
            _ => self.skip(),
        }
    }

    /// Moves past the object at the current position without parsing it: brackets are matched
    /// outside strings, a word at a time inside them. Its syntax is checked when the node is
    /// decoded (a feed's normalizer parses every node whole before it writes an event), so this
    /// is the only other pass over a feed's node.
    fn skip_node(&mut self) -> Step<()> {
        let b = self.text.as_bytes();
        let start = self.pos;
        let mut depth = 0usize;
        let mut i = start;
        while i < b.len() {
            match CLASS[b[i] as usize] {
                QUOTE => {
                    i = string_end(b, i + 1).ok_or_else(|| {
                        format!("unterminated string in the node at byte {start}")
                    })?;
                    continue;
                }
                OPEN => depth += 1,
                CLOSE => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| format!("unbalanced node at byte {start}"))?;
                    if depth == 0 {
                        self.pos = i + 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            i += 1;
        }
        Err(format!("unterminated node at byte {start}"))
    }
}

/// Where the envelope walk puts what it finds.
struct Found<N> {
    nodes: Option<Vec<N>>,
    page_info: Option<PageInfo>,
    errors: Vec<GraphQlError>,
}

/// Deepest nesting of objects and arrays accepted in one issue node. Wiz's nodes nest about 6
/// levels; an event adds one level around the node, and common parsers refuse deeper documents
/// (serde_json at 128 by default), so a deeper node is skipped as unreadable (reported, counted)
/// instead of being delivered as a line consumers cannot read. The rest of its page goes on.
pub const MAX_NODE_DEPTH: usize = 64;
/// Largest issue node accepted (Wiz's are a few KiB).
pub const MAX_NODE_BYTES: usize = 1024 * 1024;

/// True when the JSON value in `b` nests objects and arrays deeper than `max`. One pass; string
/// contents are skipped with memchr.
pub fn nests_deeper_than(b: &[u8], max: usize) -> bool {
    // The depth cannot exceed the number of openers: most nodes have far fewer than `max`, and
    // counting them (a loop the compiler vectorizes) costs a fraction of the walk below.
    let openers: usize = b
        .chunks(255)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0u8, |n, &c| n + u8::from((c == b'{') | (c == b'['))) as usize
        })
        .sum();
    if openers <= max {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match CLASS[b[i] as usize] {
            QUOTE => match string_end(b, i + 1) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => return false,
            },
            OPEN => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            CLOSE => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

const OPEN: u8 = 1;
const CLOSE: u8 = 2;
const QUOTE: u8 = 3;

/// What each byte is to the depth walk.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'{' as usize] = OPEN;
    t[b'[' as usize] = OPEN;
    t[b'}' as usize] = CLOSE;
    t[b']' as usize] = CLOSE;
    t[b'"' as usize] = QUOTE;
    t
};

/// The index just after the closing quote of the string whose contents start at `i`: eight
/// bytes at a time (a word holding no quote and no backslash is skipped whole), then byte by
/// byte.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = LO * b'"' as u64;
    const SLASHES: u64 = LO * b'\\' as u64;
    loop {
        while let Some(word) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            let (x, y) = (w ^ QUOTES, w ^ SLASHES);
            // The lowest flagged byte is exact (the zero-byte test errs only above a true zero).
            let hits = ((x.wrapping_sub(LO) & !x) | (y.wrapping_sub(LO) & !y)) & HI;
            if hits == 0 {
                i += 8;
            } else {
                i += (hits.trailing_zeros() / 8) as usize;
                break;
            }
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Walks an array of nodes: `node` reads one (it must consume the value, and gives `Err(reason)`
/// for valid JSON it cannot read), and each node's bytes are checked against the size and depth
/// limits. Returns each node's span with what `node` made of it or, for a node that breaks a
/// limit, that `node` refused, that is not an object, or that the parser could not read (nested
/// past its own limit), what `unreadable` makes of the reason and the node's bytes: called once
/// per such node. One bad node is set aside, never the page. Only bytes that are not JSON at all
/// (a node whose end cannot be found) refuse the page.
fn walk_array<'a, N>(
    w: &mut Walker<'a>,
    mut node: impl FnMut(&mut Walker<'a>) -> Step<Result<N, String>>,
    unreadable: impl Fn(String, &str) -> N,
) -> Step<Vec<(Range<usize>, N)>> {
    let mut nodes = Vec::new();
    w.expect(b'[')?;
    if w.peek() == Some(b']') {
        w.pos += 1;
        return Ok(nodes);
    }
    loop {
        let start = w.pos;
        let made = match w.peek() {
            Some(b'{') => match node(w) {
                Ok(made) => made,
                Err(e) => {
                    // Its end is found without recursion (a node may nest 100,000 deep); if it
                    // has none, the bytes are not JSON and the page is refused.
                    w.pos = start;
                    w.skip_node().map_err(|_| e.clone())?;
                    Err(format!("cannot be read: {e}"))
                }
            },
            // Valid JSON that is not an object (null, a number, a list): set aside like any
            // node that cannot be read. Bytes that are not JSON refuse the page.
            Some(c) => {
                w.skip_any()?;
                let what = match c {
                    b'[' => "a list",
                    b'"' => "a string",
                    b'n' => "null",
                    b't' | b'f' => "a boolean",
                    _ => "a number",
                };
                Err(format!("not an object but {what}"))
            }
            None => return Err(format!("expected a node at byte {}", w.pos)),
        };
        let raw = &w.text[start..w.pos];
        let made = if raw.len() > MAX_NODE_BYTES {
            Err(format!(
                "{} bytes, above the limit of {MAX_NODE_BYTES}",
                raw.len()
            ))
        } else if nests_deeper_than(raw.as_bytes(), MAX_NODE_DEPTH) {
            Err(format!("nests deeper than {MAX_NODE_DEPTH} levels"))
        } else {
            made
        };
        let made = match made {
            Ok(made) => made,
            // The walker's messages say where; the same node says the same wherever it is.
            Err(reason) => {
                let at = format!("at byte {start}: ");
                let reason = match reason.find(&at) {
                    Some(i) => format!("{}{}", &reason[..i], &reason[i + at.len()..]),
                    None => reason,
                };
                unreadable(reason, raw)
            }
        };
        nodes.push((start..w.pos, made));
        match w.peek() {
            Some(b',') => w.pos += 1,
            Some(b']') => {
                w.pos += 1;
                return Ok(nodes);
            }
            _ => return Err(format!("expected ',' or ']' at byte {}", w.pos)),
        }
    }
}

fn walk_nodes(w: &mut Walker<'_>, spans: &Spans) -> Step<Vec<NodeEntry>> {
    let nodes = walk_array(
        w,
        |w| {
            let start = w.pos;
            Ok(match w.value::<IssueView<'_>>() {
                Ok(v) => Ok(Ok(spans.record(v))),
                Err(reason) => {
                    // Valid JSON of the wrong shape: skip just this node. Invalid JSON: fail the page.
                    w.pos = start;
                    w.skip()?;
                    Err(reason)
                }
            })
        },
        |reason, raw| Err(NodeError::new(reason, raw)),
    )?;
    Ok(nodes
        .into_iter()
        .map(|(raw, decoded)| NodeEntry { raw, decoded })
        .collect())
}

/// Walks the envelope `{"errors": [...], "data": {"<root>": {"nodes": [...], "pageInfo": {...}}}}`
/// where `<root>` is one of `roots`; `nodes` reads the array of nodes.
fn walk<'a, N>(
    w: &mut Walker<'a>,
    roots: &[&str],
    mut nodes: impl FnMut(&mut Walker<'a>) -> Step<Vec<N>>,
) -> Step<Found<N>> {
    let mut found = Found {
        nodes: None,
        page_info: None,
        errors: Vec::new(),
    };
    w.object(|w, key| match key {
        "errors" => {
            if !w.null() {
                found.errors = w.value()?;
            }
            Ok(())
        }
        "data" => {
            if w.null() {
                return Ok(());
            }
            w.object(|w, key| {
                if !roots.contains(&key) {
                    return w.skip();
                }
                if w.null() {
                    return Ok(());
                }
                w.object(|w, key| match key {
                    "nodes" => {
                        found.nodes = Some(nodes(w)?);
                        Ok(())
                    }
                    "pageInfo" => {
                        found.page_info = Some(w.value()?);
                        Ok(())
                    }
                    _ => w.skip(),
                })
            })
        }
        _ => w.skip(),
    })?;
    if w.peek().is_some() {
        return Err(format!("trailing characters at byte {}", w.pos));
    }
    Ok(found)
}

/// The body as UTF-8 (zero-copy when the `Bytes` owns its buffer alone, as a response body does).
fn utf8_body(body: Bytes) -> Result<String, WizError> {
    if body.len() > u32::MAX as usize {
        return Err(WizError::BadResponse("response larger than 4 GiB".into()));
    }
    String::from_utf8(Vec::from(body))
        .map_err(|e| WizError::BadResponse(format!("body is not UTF-8: {}", snippet(e.as_bytes()))))
}

/// The envelope's outcome: Wiz's first error (HTTP 200 with `errors`), or the nodes and page info.
fn settle<N>(found: Found<N>, body: &str, root: &str) -> Result<(Vec<N>, PageInfo), WizError> {
    if let Some(first) = found.errors.first() {
        let code = first
            .extensions
            .as_ref()
            .and_then(|x| x.code.clone())
            .unwrap_or_else(|| "UNKNOWN".to_string());
        let mut message = first.message.clone().unwrap_or_default();
        if found.errors.len() > 1 {
            message.push_str(&format!(" (and {} more errors)", found.errors.len() - 1));
        }
        return Err(WizError::GraphQl { code, message });
    }
    match (found.nodes, found.page_info) {
        (Some(nodes), Some(info)) => Ok((nodes, info)),
        _ => Err(WizError::BadResponse(format!(
            "answer has no data.{root} with nodes and pageInfo: {}",
            snippet(body.as_bytes())
        ))),
    }
}

/// One page of a feed other than Issues: the body, kept whole, and where each node is. Its
/// normalizer ([`crate::feeds`]) decodes each node, borrowing from the body.
pub struct FeedPage {
    body: String,
    nodes: Vec<Range<usize>>,
    /// Nodes that break the size or depth limit, by index, with why.
    unreadable: Vec<(usize, String)>,
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

impl std::fmt::Debug for FeedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedPage")
            .field("nodes", &self.nodes.len())
            .field("bytes", &self.body.len())
            .field("has_next_page", &self.has_next_page)
            .finish()
    }
}

impl FeedPage {
    /// Each node's JSON text, exactly as received.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.nodes.iter().map(move |r| &self.body[r.clone()])
    }

    /// Each node with why it cannot be read, if it breaks the size or depth limit (it is then
    /// not to be decoded: it is reported and skipped).
    pub fn checked_nodes(&self) -> impl Iterator<Item = (&str, Option<NodeError>)> + '_ {
        self.nodes().enumerate().map(move |(i, raw)| {
            let why = self
                .unreadable
                .iter()
                .find(|(at, _)| *at == i)
                .map(|(_, reason)| NodeError::new(reason.clone(), raw));
            (raw, why)
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Parses an HTTP 200 answer of a feed query whose connection is `data.<root>`. As for Issues, any
/// other shape is an error, never a panic; a node above the size or depth limits is kept aside as
/// unreadable (see [`FeedPage::checked_nodes`]), and the page goes on.
pub fn parse_feed_page(body: Bytes, root: &str) -> Result<FeedPage, WizError> {
    let body = utf8_body(body)?;
    let mut w = Walker {
        text: &body,
        pos: 0,
    };
    let found = walk(&mut w, &[root], |w| {
        walk_array(
            w,
            |w| w.skip_node().map(|()| Ok(None)),
            |reason, _| Some(reason),
        )
    })
    .map_err(|e| {
        WizError::BadResponse(format!(
            "not a GraphQL answer ({e}): {}",
            snippet(body.as_bytes())
        ))
    })?;
    let (nodes, info) = settle(found, &body, root)?;
    let unreadable = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, (_, reason))| Some((i, reason.clone()?)))
        .collect();
    Ok(FeedPage {
        nodes: nodes.into_iter().map(|(r, _)| r).collect(),
        unreadable,
        has_next_page: info.has_next_page,
        end_cursor: info.end_cursor,
        body,
    })
}

/// Parses an HTTP 200 answer of the issues query. Any shape other than the expected one is an
/// error, never a panic: the body may be anything.
pub fn parse_page(body: Bytes) -> Result<Page, WizError> {
    let body = utf8_body(body)?;
    let spans = Spans {
        base: body.as_ptr() as usize,
    };
    let mut w = Walker {
        text: &body,
        pos: 0,
    };
    let found = walk(&mut w, &["issues", "issuesV2"], |w| walk_nodes(w, &spans)).map_err(|e| {
        WizError::BadResponse(format!(
            "not a GraphQL answer ({e}): {}",
            snippet(body.as_bytes())
        ))
    })?;
    let (nodes, info) = settle(found, &body, "issues")?;
    Ok(Page {
        body,
        nodes,
        has_next_page: info.has_next_page,
        end_cursor: info.end_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(s: &str) -> Result<Page, WizError> {
        parse_page(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn nodes_are_kept_byte_for_byte_and_decoded() {
        let p = page(r#" { "data" : {"issues":{"pageInfo":{"hasNextPage":true,"endCursor":"c"}, "nodes":[ {"id":"a", "x" : [1, {"y":"]"}],"status":"OPEN"},{"id":"\u00e9","status":"OPEN","projects":[{"name":"P"},{"name":null}]} ]}},"extensions":{}} "#).unwrap();
        let raws: Vec<&str> = p.raw_nodes().collect();
        assert_eq!(
            raws,
            vec![
                r#"{"id":"a", "x" : [1, {"y":"]"}],"status":"OPEN"}"#,
                r#"{"id":"\u00e9","status":"OPEN","projects":[{"name":"P"},{"name":null}]}"#
            ]
        );
        let issues: Vec<Issue<'_>> = p.issues().map(Result::unwrap).collect();
        assert_eq!(issues[0].id(), "a");
        assert!(issues[0].text(&issues[0].record.id).verbatim);
        assert_eq!(issues[1].id(), "é");
        assert!(
            !issues[1].text(&issues[1].record.id).verbatim,
            "unescaped text is escaped again on output"
        );
        assert_eq!(issues[1].record.projects.len(), 1);
        assert!(p.has_next_page);
        assert_eq!(p.end_cursor.as_deref(), Some("c"));
    }

    #[test]
    fn nesting_depth_is_measured_outside_strings() {
        assert!(!nests_deeper_than(br#"{"a":[{"b":1}]}"#, 3));
        assert!(nests_deeper_than(br#"{"a":[{"b":[1]}]}"#, 3));
        // Brackets inside strings, escaped quotes included, do not count.
        assert!(!nests_deeper_than(br#"{"a":"[[[[{{{{\"[[[["}"#, 1));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(nests_deeper_than(deep.as_bytes(), MAX_NODE_DEPTH));
        // Escapes anywhere in long strings (the word-at-a-time skip), brackets inside them.
        for pad in 0..20 {
            let filler = "x".repeat(pad);
            let brackets = "[{".repeat(40);
            let inside = format!(r#"{{"a":"{filler}\"{brackets}\\","b":"{brackets}"}}"#);
            assert!(!nests_deeper_than(inside.as_bytes(), 1), "{inside}");
            let real = format!(
                r#"{{"a":"{filler}\"x",{}1{}}}"#,
                "\"b\":[".repeat(3),
                "]".repeat(3)
            );
            assert!(nests_deeper_than(real.as_bytes(), 3), "{real}");
            assert!(!nests_deeper_than(real.as_bytes(), 4), "{real}");
        }
    }

    #[test]
    fn a_node_of_the_wrong_shape_fails_alone() {
        let p = page(r#"{"data":{"issues":{"nodes":[{"id":1,"status":"OPEN"},{"id":"b","status":"OPEN"}],"pageInfo":{"hasNextPage":false}}}}"#).unwrap();
        let r: Vec<_> = p.issues().collect();
        assert!(r[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with("issue node not understood"));
        assert_eq!(r[1].as_ref().unwrap().id(), "b");
        assert_eq!(p.raw_nodes().next(), Some(r#"{"id":1,"status":"OPEN"}"#));
    }

    #[test]
    fn graphql_errors_fail_the_page_with_code_and_message() {
        let e = page(r#"{"errors":[{"message":"'first' must be less than or equal to 500","extensions":{"code":"BAD_USER_INPUT"}}],"data":null}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wiz GraphQL error BAD_USER_INPUT: 'first' must be less than or equal to 500"
        );
        // Errors with partial data still fail the page.
        let e = page(r#"{"data":{"issues":{"nodes":[],"pageInfo":{"hasNextPage":false}}},"errors":[{"message":"m","extensions":{"code":"DOWNSTREAM_SERVICE_ERROR"}},{"message":"n"}]}"#).unwrap_err();
        assert_eq!(
            e,
            WizError::GraphQl {
                code: "DOWNSTREAM_SERVICE_ERROR".into(),
                message: "m (and 1 more errors)".into()
            }
        );
        assert!(e.is_transient());
    }

    #[test]
    fn malformed_answers_are_errors() {
        for body in [
            r#"{"data":{"issues":{"nodes":[{"id":"a","status":"OPEN"}]}}}"#,
            r#"{"data":{"issues":{"nodes":[{"id":"a","status":"OPEN"],"pageInfo":{"hasNextPage":false}}}}"#,
            r#"{"data":{"issues":{"nodes":[],"pageInfo":{"hasNextPage":false}}}} trailing"#,
            r#"{"data":{}}"#,
            r#"{"data":null}"#,
            "<html>oops</html>",
            "",
        ] {
            assert!(
                matches!(page(body), Err(WizError::BadResponse(_))),
                "{body}"
            );
        }
        assert!(matches!(
            parse_page(Bytes::from_static(b"\xff\xfe")),
            Err(WizError::BadResponse(_))
        ));
    }

    #[test]
    fn feed_pages_keep_nodes_verbatim_across_strings_with_brackets_and_escapes() {
        let body = r#"{"data":{"detections":{"nodes":[{"id":"a","d":"} ] { [ \" \\"},{"id":"b","n":[{"x":[1,2]}]}],"pageInfo":{"hasNextPage":true,"endCursor":"c2"}}}}"#;
        let page = parse_feed_page(Bytes::from(body), "detections").unwrap();
        let nodes: Vec<&str> = page.nodes().collect();
        assert_eq!(
            nodes,
            [
                r#"{"id":"a","d":"} ] { [ \" \\"}"#,
                r#"{"id":"b","n":[{"x":[1,2]}]}"#
            ]
        );
        assert!(page.has_next_page);
        assert_eq!(page.end_cursor.as_deref(), Some("c2"));
        // Another root is not this feed's answer.
        let e = parse_feed_page(Bytes::from(body), "auditLogEntries").unwrap_err();
        assert!(e.to_string().contains("no data.auditLogEntries"), "{e}");
    }

    #[test]
    fn a_node_past_a_limit_is_set_aside_and_the_rest_of_its_page_read() {
        let big = format!(r#"{{"id":"big","blob":"{}"}}"#, "x".repeat(MAX_NODE_BYTES));
        let deep = format!(
            r#"{{"id":"deep","n":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let body = format!(
            r#"{{"data":{{"detections":{{"nodes":[{{"id":"a"}},{big},{deep},{{"id":"b"}}],"pageInfo":{{"hasNextPage":false}}}}}}}}"#
        );
        let page = parse_feed_page(Bytes::from(body), "detections").unwrap();
        let checked: Vec<(usize, Option<String>)> = page
            .checked_nodes()
            .map(|(raw, e)| (raw.len(), e.map(|e| e.reason)))
            .collect();
        assert_eq!(checked.len(), 4);
        assert_eq!(checked[0], (10, None));
        assert_eq!(checked[3], (10, None));
        let reason = |i: usize| checked[i].1.clone().unwrap_or_default();
        assert_eq!(
            reason(1),
            format!("{} bytes, above the limit of 1048576", MAX_NODE_BYTES + 22)
        );
        assert_eq!(reason(2), "nests deeper than 64 levels");
        // What the quarantine event says of each: the id, the size, the digest, the start.
        let facts: Vec<_> = page
            .checked_nodes()
            .filter_map(|(_, e)| e.map(|e| e.node))
            .collect();
        assert_eq!(facts[0].id.as_deref(), Some("big"));
        assert_eq!(facts[0].bytes, MAX_NODE_BYTES + 22);
        assert_eq!(facts[0].head.len(), UNREADABLE_HEAD);
        assert_eq!(facts[1].id.as_deref(), Some("deep"));
        assert!(facts[1].head.starts_with(r#"{"id":"deep","n":[[["#));
        assert_ne!(facts[0].sha256, facts[1].sha256);
        // The same in an Issues page: the node reads as unreadable, its neighbours as issues.
        let issue = |id: &str| {
            format!(
                r#"{{"id":"{id}","status":"OPEN","severity":"HIGH","type":"THREAT_DETECTION","createdAt":"2026-01-01T00:00:00Z"}}"#
            )
        };
        let body = format!(
            r#"{{"data":{{"issues":{{"nodes":[{},{deep},{}],"pageInfo":{{"hasNextPage":false,"endCursor":null}}}}}}}}"#,
            issue("i1"),
            issue("i2")
        );
        let page = parse_page(Bytes::from(body)).unwrap();
        let read: Vec<Result<String, String>> = page
            .issues()
            .map(|i| i.map(|i| i.id().to_string()).map_err(|e| e.reason.clone()))
            .collect();
        assert_eq!(read[0], Ok("i1".to_string()));
        assert_eq!(read[2], Ok("i2".to_string()));
        let skipped = read[1].clone().unwrap_err();
        assert!(
            skipped.contains("cannot be read") || skipped.contains("nests deeper"),
            "{skipped}"
        );
        assert!(
            skipped.len() < 500,
            "the node is not copied into the reason"
        );
    }

    #[test]
    fn a_node_that_is_not_an_object_is_set_aside_but_bytes_that_are_not_json_refuse_the_page() {
        let p = page(r#"{"data":{"issues":{"nodes":[null,{"id":"a","status":"OPEN"},[1,[2]],"s",7,true],"pageInfo":{"hasNextPage":false}}}}"#).unwrap();
        let reasons: Vec<String> = p
            .issues()
            .map(|i| match i {
                Ok(i) => i.id().to_string(),
                Err(e) => e.reason.clone(),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "not an object but null",
                "a",
                "not an object but a list",
                "not an object but a string",
                "not an object but a number",
                "not an object but a boolean"
            ]
        );
        let feed = parse_feed_page(
            Bytes::from(r#"{"data":{"detections":{"nodes":[1,{"id":"b"}],"pageInfo":{"hasNextPage":false}}}}"#),
            "detections",
        )
        .unwrap();
        let checked: Vec<Option<String>> = feed
            .checked_nodes()
            .map(|(_, e)| e.map(|e| e.reason))
            .collect();
        assert_eq!(
            checked,
            [Some("not an object but a number".to_string()), None]
        );
        for body in [
            r#"{"data":{"issues":{"nodes":[nul],"pageInfo":{"hasNextPage":false}}}}"#,
            r#"{"data":{"issues":{"nodes":[{"id":"a"},],"pageInfo":{"hasNextPage":false}}}}"#,
            r#"{"data":{"issues":{"nodes":[[1,2],"pageInfo":{"hasNextPage":false}}}}"#,
        ] {
            assert!(
                matches!(page(body), Err(WizError::BadResponse(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn node_ids_are_read_from_the_top_level_only_and_without_recursion() {
        assert_eq!(
            node_id(r#"{"a":{"id":"inner"},"id":"outer"}"#).as_deref(),
            Some("outer")
        );
        assert_eq!(node_id(r#"{"id":5}"#), None);
        let long = "i".repeat(MAX_UNREADABLE_ID_BYTES + 1);
        assert_eq!(node_id(&format!(r#"{{"id":"{long}"}}"#)), None);
        assert_eq!(node_id("null"), None);
        let deep = format!(
            r#"{{"n":{}1{},"id":"x\"y"}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(node_id(&deep).as_deref(), Some("x\"y"));
    }

    #[test]
    fn malformed_feed_pages_are_errors_not_panics() {
        for body in [
            r#"{"data":{"detections":{"nodes":[{"id":"a"],"pageInfo":{"hasNextPage":false}}}}"#,
            r#"{"data":{"detections":{"nodes":[{"id":"a}]}}}"#,
            r#"{"data":{"detections":{"nodes":[{"id":"a"}"#,
            r#"{"errors":[{"message":"Unauthorized","extensions":{"code":"UNAUTHORIZED"}}],"data":null}"#,
        ] {
            assert!(
                parse_feed_page(Bytes::from(body), "detections").is_err(),
                "{body}"
            );
        }
        let e = parse_feed_page(
            Bytes::from(r#"{"errors":[{"message":"Unauthorized","extensions":{"code":"UNAUTHORIZED"}}],"data":null}"#),
            "detections",
        )
        .unwrap_err();
        assert!(e.is_permission_denied(), "{e}");
    }
}
