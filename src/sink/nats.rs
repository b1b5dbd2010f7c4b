//! The `nats` output: every event is published to NATS JetStream on `<subject_prefix>.<tenant>`
//! with `Nats-Msg-Id` set to the event id, so the stream drops a replayed page within its
//! duplicate window; the batch is acknowledged only after JetStream acknowledged every message.
//! The stream is created at start, or checked when it exists.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use super::Batch;
use crate::config::{SinkKind, SinkSpec};
use crate::event::event_id_of;

pub struct NatsOutput {
    js: jetstream::Context,
    prefix: String,
}

/// How long a connection attempt at start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl NatsOutput {
    pub async fn open(spec: &SinkSpec) -> Result<NatsOutput, String> {
        let SinkKind::Nats {
            url,
            subject_prefix,
            stream,
            duplicate_window,
        } = &spec.kind
        else {
            return Err("not a nats sink".into());
        };
        let name = &spec.name;
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
        let subjects = format!("{subject_prefix}.>");
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
                    crate::wiz::error::snippet(line)
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
