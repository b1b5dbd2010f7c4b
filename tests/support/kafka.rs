//! A real Kafka-protocol broker for the tests: tansu (crates.io, Apache-2.0; `.ci/run` installs
//! it with `cargo install tansu --locked --features libsql`), on a free loopback port, with its
//! store in a SQLite file in a temporary directory, so it can be stopped and started again
//! without losing what it took. A consumer reads every record of a topic back.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub struct Broker {
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub addr: String,
    /// SASL SCRAM-SHA-512 required, with this user and password (see [`Broker::start_with_user`]).
    pub user: Option<(String, String)>,
}

/// The `tansu` binary: `$WIZ_TANSU`, else on the PATH, else in cargo's bin directory.
fn binary() -> String {
    if let Ok(p) = std::env::var("WIZ_TANSU") {
        return p;
    }
    let on_path = std::process::Command::new("sh")
        .args(["-c", "command -v tansu"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    on_path
        .or_else(|| {
            let home = std::env::var("CARGO_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|_| std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
                .ok()?;
            let p = home.join("bin/tansu");
            p.exists().then(|| p.display().to_string())
        })
        .expect("tansu (a Kafka-protocol broker) is not installed: `cargo install tansu --locked --features libsql` (.ci/run does it)")
}

impl Broker {
    pub async fn start() -> Broker {
        let port = crate::common::free_port();
        let mut b = Broker {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port,
            addr: format!("127.0.0.1:{port}"),
            user: None,
        };
        b.resume().await;
        b
    }

    /// A broker that requires SASL (SCRAM) from `user`, with `topics` (3 partitions each). The
    /// user and the topics are made first, without authentication (tansu's own tools do not
    /// authenticate), then the broker starts again on the same store with `--authentication`.
    pub async fn start_with_user(user: &str, password: &str, topics: &[&str]) -> Broker {
        let mut b = Broker::start().await;
        let out = tokio::process::Command::new(binary())
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://{}", b.addr))
            .args([user, password])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for t in topics {
            b.create_topic(t, 3).await;
        }
        b.stop().await;
        b.user = Some((user.to_string(), password.to_string()));
        b.resume().await;
        b
    }

    /// Starts the broker (again) on the same port and store.
    pub async fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = tokio::process::Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.user.as_ref().map(|_| "--authentication"))
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        crate::common::wait_until("the broker listening", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        })
        .await;
    }

    /// Kills the broker (its store stays).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Creates `topic` with `partitions`.
    pub async fn create_topic(&self, topic: &str, partitions: u32) {
        let out = tokio::process::Command::new(binary())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.addr))
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every record of `topic`, per partition in offset order: (key, the `id` header, value).
    pub fn records(&self, topic: &str) -> BTreeMap<i32, Vec<Record>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "wiz-connector-tests")
            .set("enable.auto.commit", "false")
            .set("socket.timeout.ms", "5000");
        if let Some((user, password)) = &self.user {
            config
                .set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        let consumer: BaseConsumer = config.create().unwrap();
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let partitions: Vec<i32> = meta
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut out = BTreeMap::new();
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap();
            let mut records = Vec::new();
            if high > 0 {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
                consumer.assign(&tpl).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while (records.len() as i64) < high && std::time::Instant::now() < deadline {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                        if m.partition() != p {
                            continue;
                        }
                        let id = m
                            .headers()
                            .and_then(|h| h.iter().find(|h| h.key == "id"))
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).to_string());
                        records.push(Record {
                            key: m
                                .key()
                                .map(|k| String::from_utf8_lossy(k).to_string())
                                .unwrap_or_default(),
                            id,
                            value: serde_json::from_slice(m.payload().unwrap_or_default())
                                .unwrap_or(serde_json::Value::Null),
                        });
                    }
                }
            }
            out.insert(p, records);
        }
        out
    }
}

/// One record as consumed.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub id: Option<String>,
    pub value: serde_json::Value,
}
