//! The `kafka` output: each event a record, through librdkafka (the `rdkafka` crate) with an
//! idempotent producer (CONTRACT.md, "SIEM sinks").
//!
//! `enable.idempotence = true` with `acks = all`: the broker keeps each partition's records in
//! the order sent and drops the retries librdkafka makes itself, so a transient broker failure
//! neither loses nor repeats a record within a page. The record key is `<tenant>:<item id>`
//! (the Wiz item the event is about, read by [`crate::format::item_id`] in any format), so one
//! item's events go to one partition, in order. A page counts as delivered only when every
//! record's delivery report is a success; the first failure fails the page, which waits in the
//! sink's backlog and is sent again whole later (a record of it that did arrive then arrives
//! twice: Kafka's idempotence holds within one producer session, not across a resend or a
//! restart; consumers deduplicate by the event id, the record's `id` header).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::pack::events;
use super::{Batch, SinkChecks, SinkType, Written};
use crate::config::DurationValue;

/// `type = "kafka"`.
pub struct KafkaSink;

/// `brokers`: a list, or one comma-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Brokers {
    List(Vec<String>),
    One(String),
}

/// `[sinks.<name>]` of type `kafka`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The bootstrap brokers, `host:port` each.
    pub brokers: Brokers,
    /// The topic; may hold `{tenant}`, `{feed}`, `{label.<key>}`. Default `wiz.{feed}`. It must
    /// exist: the sink does not create topics (their partitions and retention are the
    /// operator's choice).
    #[serde(default)]
    pub topic: Option<String>,
    /// `none`, `gzip`, `snappy` or `lz4` (default `lz4`).
    #[serde(default)]
    pub compression: Option<String>,
    /// Connect with TLS (default false).
    #[serde(default)]
    pub tls: Option<bool>,
    /// A PEM file of the certificate authorities to trust (default: the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Verify the brokers' certificates (default true).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (default: no SASL).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// A secret: literal or `${ENV_VAR}`.
    #[serde(default)]
    pub sasl_password: Option<SecretString>,
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// How long a record may take to be acknowledged, retries included, before the page fails
    /// (default 30 s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
}

/// SASL settings.
#[derive(Debug, Clone, Serialize)]
pub struct Sasl {
    pub mechanism: String,
    pub username: String,
    #[serde(serialize_with = "crate::config::redact")]
    pub password: SecretString,
}

/// Resolved `kafka` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// Comma-separated, as librdkafka takes them.
    pub brokers: String,
    pub topic: String,
    pub compression: String,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub tls_verify: bool,
    pub sasl: Option<Sasl>,
    pub timeout: DurationValue,
}

/// The default `topic`.
pub const DEFAULT_TOPIC: &str = "wiz.{feed}";

/// Why `topic` cannot name a Kafka topic (ASCII letters, digits, `.`, `_`, `-`; at most 249;
/// not `.` or `..`); a placeholder is checked once filled.
fn topic_problem(topic: &str) -> Option<String> {
    let mut fixed = String::new();
    let mut depth = 0;
    for c in topic.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            c if depth == 0 => fixed.push(c),
            _ => {}
        }
    }
    if topic.is_empty() || topic == "." || topic == ".." {
        return Some(format!("{topic:?} is not a topic name"));
    }
    if let Some(c) = fixed
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "{topic:?} holds {c:?}: a Kafka topic takes ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    if topic.len() > 249 {
        return Some("must be at most 249 characters".into());
    }
    None
}

impl SinkType for KafkaSink {
    type Section = Section;
    type Spec = Spec;
    type Output = KafkaOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        let list: Vec<String> = match &s.brokers {
            Brokers::List(l) => l.iter().map(|b| b.trim().to_string()).collect(),
            Brokers::One(one) => one.split(',').map(|b| b.trim().to_string()).collect(),
        };
        let bad = list.iter().find(|b| {
            b.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        });
        let brokers = if list.is_empty() || list.iter().all(String::is_empty) {
            checks.error("brokers", "required: at least one `host:port`".into());
            None
        } else if let Some(b) = bad {
            checks.error(
                "brokers",
                format!("{b:?} is not `host:port` (e.g. \"kafka-1.example:9092\")"),
            );
            None
        } else {
            Some(list.join(","))
        };
        let topic = s.topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.into());
        if let Some(why) = topic_problem(&topic) {
            checks.error("topic", why);
        }
        let compression = s.compression.clone().unwrap_or_else(|| "lz4".into());
        if !matches!(compression.as_str(), "none" | "gzip" | "snappy" | "lz4") {
            checks.error(
                "compression",
                format!("unknown compression {compression:?}; use \"none\", \"gzip\", \"snappy\" or \"lz4\""),
            );
        }
        let sasl = match &s.sasl_mechanism {
            None => {
                if s.sasl_username.is_some() || s.sasl_password.is_some() {
                    checks.error(
                        "sasl_mechanism",
                        "required with sasl_username / sasl_password: \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"".into(),
                    );
                }
                Some(None)
            }
            Some(m) => {
                let m = m.to_ascii_uppercase();
                if !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                    checks.error(
                        "sasl_mechanism",
                        format!("unknown mechanism {m:?}; use \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\""),
                    );
                }
                let password = checks.secret(
                    s.sasl_password.as_ref(),
                    s.sasl_password_file.as_ref(),
                    ("sasl_password", "sasl_password_file"),
                );
                if s.sasl_password.is_none() && s.sasl_password_file.is_none() {
                    checks.error("sasl_password", "required with sasl_mechanism".into());
                }
                let username = s.sasl_username.clone().filter(|u| !u.is_empty());
                if username.is_none() {
                    checks.error("sasl_username", "required with sasl_mechanism".into());
                }
                match (username, password) {
                    (Some(username), Some(password)) => Some(Some(Sasl {
                        mechanism: m,
                        username,
                        password,
                    })),
                    _ => None,
                }
            }
        };
        let timeout = s.timeout.unwrap_or(DurationValue::secs(30));
        if timeout.0 < Duration::from_secs(1) {
            checks.error("timeout", "must be at least 1s".into());
        }
        Some(Spec {
            brokers: brokers?,
            topic,
            compression,
            tls: s.tls.unwrap_or(false),
            ca_file: s.ca_file.clone(),
            tls_verify: s.tls_verify.unwrap_or(true),
            sasl: sasl?,
            timeout,
        })
    }

    fn secrets(spec: &Spec) -> Vec<&str> {
        spec.sasl
            .iter()
            .map(|s| s.password.expose_secret())
            .collect()
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        if spec.topic.contains('{') {
            vec![("topic", spec.topic.as_str())]
        } else {
            Vec::new()
        }
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        if !spec.topic.contains('{') {
            return Ok(spec.clone());
        }
        let topic = fill(&spec.topic);
        if let Some(why) = topic_problem(&topic) {
            return Err(format!(
                "topic {topic:?} (filled from {:?}): {why}",
                spec.topic
            ));
        }
        Ok(Spec {
            topic,
            ..spec.clone()
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<KafkaOutput, String> {
        KafkaOutput::open(name, spec).await
    }

    async fn check(out: &mut KafkaOutput) -> Result<String, String> {
        let partitions = out.partitions().await?;
        Ok(format!(
            "brokers reachable; topic `{}` has {partitions} partition(s)",
            out.topic
        ))
    }

    async fn write(out: &mut KafkaOutput, batch: Arc<Batch>) -> Result<Written, String> {
        out.write(&batch).await.map(|()| Written::default())
    }
}

/// One open output (one per distinct filled topic).
pub struct KafkaOutput {
    /// The producer's settings, to make it again.
    config: ClientConfig,
    /// `None` after a failed page: the next write makes a new producer (see [`KafkaOutput::write`]).
    producer: Option<FutureProducer>,
    topic: String,
    brokers: String,
    timeout: Duration,
    /// SASL is on: a broker that closes the connection may have refused the credentials.
    sasl: bool,
}

impl KafkaOutput {
    /// Makes the producer and checks that the topic exists (a metadata request).
    pub async fn open(name: &str, spec: &Spec) -> Result<KafkaOutput, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &spec.brokers)
            .set("client.id", "wiz-connector")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &spec.compression)
            .set("message.timeout.ms", spec.timeout.0.as_millis().to_string())
            .set("socket.timeout.ms", "10000")
            // A page's records go in a few batches; waiting longer for more gains nothing.
            .set("linger.ms", "5");
        let protocol = match (spec.tls, spec.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if spec.tls {
            if let Some(ca) = &spec.ca_file {
                c.set("ssl.ca.location", ca.display().to_string());
            }
            c.set(
                "enable.ssl.certificate.verification",
                if spec.tls_verify { "true" } else { "false" },
            );
            if !spec.tls_verify {
                tracing::warn!(sink = %name, brokers = %spec.brokers, "TLS certificate verification is OFF for this sink (tls_verify = false)");
            }
        }
        if let Some(s) = &spec.sasl {
            c.set("sasl.mechanisms", &s.mechanism)
                .set("sasl.username", &s.username)
                .set("sasl.password", s.password.expose_secret());
        }
        let producer: FutureProducer = c
            .create()
            .map_err(|e| format!("sink `{name}`: cannot make a Kafka producer: {e}"))?;
        let mut out = KafkaOutput {
            config: c,
            producer: Some(producer),
            topic: spec.topic.clone(),
            brokers: spec.brokers.clone(),
            timeout: spec.timeout.0,
            sasl: spec.sasl.is_some(),
        };
        out.partitions()
            .await
            .map_err(|e| format!("sink `{name}`: {e}"))?;
        Ok(out)
    }

    /// The producer, made again if the last page failed.
    fn producer(&mut self) -> Result<FutureProducer, String> {
        if self.producer.is_none() {
            let p: FutureProducer = self
                .config
                .create()
                .map_err(|e| format!("cannot make a Kafka producer: {e}"))?;
            self.producer = Some(p);
        }
        Ok(self.producer.clone().expect("made above"))
    }

    /// The topic's partition count, from the brokers (an error when it does not exist).
    async fn partitions(&mut self) -> Result<usize, String> {
        let producer = self.producer()?;
        let topic = self.topic.clone();
        let timeout = self.timeout.min(Duration::from_secs(10));
        let meta = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map(|t| (t.error(), t.partitions().len()))
                })
        })
        .await
        .map_err(|e| format!("the metadata request failed: {e}"))?;
        match meta {
            Err(e) => Err(format!(
                "cannot reach the Kafka brokers {}: {}{}",
                self.brokers,
                describe(&e),
                if self.sasl {
                    " (with SASL on, a broker that refuses the credentials closes the connection: check sasl_username and sasl_password, and sasl_mechanism)"
                } else {
                    ""
                }
            )),
            Ok(Some((None, n))) if n > 0 => Ok(n),
            Ok(_) => Err(format!(
                "Kafka has no topic `{}` (or it has no partitions): create it, or set the sink's topic; the sink does not create topics",
                self.topic
            )),
        }
    }

    /// Sends every event of the page as a record and waits for every delivery report. After a
    /// failure the producer is dropped and the next page makes a new one: a producer whose
    /// idempotence state the brokers no longer know (a broker restarted without it, a fenced
    /// epoch) would otherwise fail every page from then on.
    pub async fn write(&mut self, batch: &Batch) -> Result<(), String> {
        let producer = self.producer()?;
        let result = self.send_page(&producer, batch).await;
        if result.is_err() {
            self.producer = None;
        }
        result
    }

    async fn send_page(&self, producer: &FutureProducer, batch: &Batch) -> Result<(), String> {
        let mut reports = Vec::with_capacity(batch.events);
        for event in events(&batch.lines) {
            let item = crate::format::item_id(event);
            let id = crate::event::event_id_of(event);
            let key = format!(
                "{}:{}",
                batch.tenant,
                item.as_deref().or(id).unwrap_or_default()
            );
            let mut headers = OwnedHeaders::new();
            if let Some(id) = id {
                headers = headers.insert(Header {
                    key: "id",
                    value: Some(id),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(event)
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(report) => {
                        reports.push(report);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's local queue is full: let it drain, then go on.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => {
                        return Err(format!(
                            "cannot hand a record to the Kafka producer for `{}`: {}",
                            self.topic,
                            describe(&e)
                        ))
                    }
                }
            }
        }
        for report in reports {
            match report.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(format!(
                        "Kafka did not acknowledge a record on `{}` (brokers {}): {}",
                        self.topic,
                        self.brokers,
                        describe(&e)
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "the Kafka producer for `{}` dropped a record's delivery report",
                        self.topic
                    ))
                }
            }
        }
        Ok(())
    }
}

/// A Kafka error with what to do, where the code says it.
fn describe(e: &KafkaError) -> String {
    let hint = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            ": not acknowledged within the sink's timeout (the brokers are down, unreachable, or without the topic's leader)"
        }
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            ": the topic does not exist: create it, or set the sink's topic"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
            ": the credentials may not write to the topic: grant WRITE (and IDEMPOTENT_WRITE) on it"
        }
        Some(RDKafkaErrorCode::SaslAuthenticationFailed) => {
            ": the SASL credentials were refused: check sasl_username and sasl_password"
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            ": a record is larger than the broker's message.max.bytes"
        }
        _ => "",
    };
    format!("{e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::topic_problem;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        assert_eq!(topic_problem("wiz.{feed}"), None);
        assert_eq!(topic_problem("wiz-{label.customer}_{feed}"), None);
        assert!(topic_problem("wiz issues").unwrap().contains("' '"));
        assert!(topic_problem("..").is_some());
        assert!(topic_problem("").is_some());
    }
}
