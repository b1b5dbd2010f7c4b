//! The `nats` output: every event is published to NATS JetStream on `<subject_prefix>.<tenant>`
//! with `Nats-Msg-Id` set to the event id, so the stream drops a replayed page within its
//! duplicate window; the batch is acknowledged only after JetStream acknowledged every message.
//! The stream is created at start, or checked when it exists.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use serde::{Deserialize, Serialize};

use super::{Batch, SinkChecks, SinkType};
use crate::config::DurationValue;
use crate::event::event_id_of;

pub struct NatsOutput {
    js: jetstream::Context,
    prefix: String,
}

/// How long a connection attempt at start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `type = "nats"`.
pub struct NatsSink;

/// `[sinks.<name>]` of type `nats`: each event published to NATS JetStream on
/// `<subject_prefix>.<tenant>`, with `Nats-Msg-Id` = the event id so the stream drops replays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject prefix (default `wiz.issues`).
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// Stream created (or checked) at start (default `WIZ_ISSUES`).
    #[serde(default)]
    pub stream: Option<String>,
    /// How long the stream remembers message ids to drop duplicates (default 2 minutes).
    #[serde(default)]
    pub duplicate_window: Option<DurationValue>,
}

/// Resolved `nats` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub url: String,
    /// Events go to `<subject_prefix>.<tenant>`. With placeholders, as written; an open output
    /// has it filled.
    pub subject_prefix: String,
    pub stream: String,
    pub duplicate_window: DurationValue,
    /// What the stream captures: `<subject_prefix>.>`, each placeholder token a `*`.
    #[serde(skip)]
    pub stream_subjects: String,
    /// The prefix holds placeholders (`{tenant}`, `{feed}`, `{label.<key>}`), each a whole token.
    #[serde(skip)]
    pub templated: bool,
}

/// The tokens of a prefix: split at dots outside placeholders (`{label.customer}` is one).
fn tokens(prefix: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in prefix.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                out.push(&prefix[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&prefix[start..]);
    out
}

/// A subject prefix: tokens between dots, none empty, no wildcards or spaces.
fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && !prefix.contains(['*', '>', ' '])
        && prefix.split('.').all(|t| !t.is_empty())
}

impl SinkType for NatsSink {
    type Section = Section;
    type Spec = Spec;
    type Output = NatsOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        let url = &s.url;
        if !url.starts_with("nats://") && !url.starts_with("tls://") {
            checks.error("url", format!("{url:?} is not a nats:// (or tls://) URL"));
        }
        let prefix = s
            .subject_prefix
            .clone()
            .unwrap_or_else(|| "wiz.issues".into());
        if !valid_prefix(&prefix) {
            checks.error(
                "subject_prefix",
                format!("{prefix:?} is not a subject prefix such as \"wiz.issues\""),
            );
        }
        // A placeholder must be a whole token: the stream then captures every filled prefix
        // with a `*` in its place.
        let templated = prefix.contains('{');
        let tokens: Vec<&str> = tokens(&prefix)
            .into_iter()
            .map(|t| {
                if !t.contains('{') {
                    t
                } else if t.starts_with('{') && t.ends_with('}') && t.matches('{').count() == 1 {
                    "*"
                } else {
                    checks.error(
                        "subject_prefix",
                        format!("{prefix:?}: a placeholder must be a whole token between dots, such as \"wiz.{{label.customer}}\""),
                    );
                    t
                }
            })
            .collect();
        let stream_subjects = format!("{}.>", tokens.join("."));
        let stream = s.stream.clone().unwrap_or_else(|| "WIZ_ISSUES".into());
        if stream.is_empty() || stream.contains(['.', '*', '>', ' ', '/', '\\']) {
            checks.error(
                "stream",
                format!("{stream:?} is not a stream name (no dots, wildcards or spaces)"),
            );
        }
        Some(Spec {
            url: url.clone(),
            subject_prefix: prefix,
            stream,
            duplicate_window: s.duplicate_window.unwrap_or(DurationValue::secs(120)),
            stream_subjects,
            templated,
        })
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        if spec.templated {
            vec![("subject_prefix", spec.subject_prefix.as_str())]
        } else {
            Vec::new()
        }
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        if !spec.templated {
            return Ok(spec.clone());
        }
        let filled = fill(&spec.subject_prefix);
        // A filled placeholder stays one token: a label value with a dot would make subjects of
        // two customers meet.
        let same_shape = filled.split('.').count() == tokens(&spec.subject_prefix).len();
        if !valid_prefix(&filled) || filled.contains(['{', '}']) || !same_shape {
            return Err(format!(
                "subject_prefix {:?} filled as {filled:?} is not a subject prefix (a label value holds a dot, a space or a wildcard?); check the tenant's labels",
                spec.subject_prefix
            ));
        }
        Ok(Spec {
            subject_prefix: filled,
            templated: false,
            ..spec.clone()
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<NatsOutput, String> {
        NatsOutput::open(name, spec).await
    }

    async fn check(out: &mut NatsOutput) -> Result<String, String> {
        Ok(format!(
            "connected; its JetStream stream captures {}.<tenant>",
            out.prefix
        ))
    }

    async fn write(out: &mut NatsOutput, batch: Arc<Batch>) -> Result<super::Written, String> {
        out.write(batch).await.map(Into::into)
    }
}

impl NatsOutput {
    pub async fn open(name: &str, spec: &Spec) -> Result<NatsOutput, String> {
        let Spec {
            url,
            subject_prefix,
            stream,
            duplicate_window,
            stream_subjects: _,
            templated: _,
        } = spec;
        let client = tokio::time::timeout(CONNECT_TIMEOUT, async_nats::connect(url.as_str()))
            .await
            .map_err(|_| {
                format!(
                    "sink `{name}`: cannot reach NATS at {url} within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("sink `{name}`: cannot connect to NATS at {url}: {e}"))?;
        let js = jetstream::new(client);
        let subjects = spec.stream_subjects.clone();
        let mut s = js
            .get_or_create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subjects.clone()],
                duplicate_window: duplicate_window.0,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("sink `{name}`: cannot create or open the JetStream stream {stream} (is JetStream enabled on the server, `-js`?): {e}"))?;
        let info = s
            .info()
            .await
            .map_err(|e| format!("sink `{name}`: cannot read stream {stream}: {e}"))?;
        if !info.config.subjects.iter().any(|x| x == &subjects) {
            return Err(format!(
                "sink `{name}`: stream {stream} exists but does not capture {subjects} (its subjects: {:?}); use another stream name or add the subject",
                info.config.subjects
            ));
        }
        Ok(NatsOutput {
            js,
            prefix: subject_prefix.clone(),
        })
    }

    /// Publishes every event of the batch and waits for every JetStream ack.
    pub async fn write(&mut self, batch: Arc<Batch>) -> Result<(), String> {
        let subject = async_nats::Subject::from(format!("{}.{}", self.prefix, batch.tenant));
        let mut acks = Vec::with_capacity(batch.events);
        for line in batch.lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let id = event_id_of(line).ok_or_else(|| {
                format!(
                    "an event that does not start with its id: {}",
                    crate::net::snippet(line)
                )
            })?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            let ack = self
                .js
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    bytes::Bytes::copy_from_slice(line),
                )
                .await
                .map_err(|e| format!("publish to {subject} failed: {e}"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| format!("JetStream did not acknowledge on {subject}: {e}"))?;
        }
        Ok(())
    }
}
