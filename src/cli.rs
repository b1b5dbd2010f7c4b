//! The command line (CONTRACT.md): one binary, one subcommand per job.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DurationValue, DEFAULT_CONFIG_PATH};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "wiz-connector",
    version,
    about = "Pulls Wiz Issues for many Wiz tenants and delivers them normalized."
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Supervise every configured tenant until SIGINT or SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The embedded default: the built-in Wiz simulator, a few tenants, events on stdout.
    Demo(DemoArgs),
    /// The "Test connection" flow: token exchange, then a 1-row issues query, per tenant.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Check only this tenant.
        #[arg(long, conflicts_with = "sinks")]
        tenant: Option<String>,
        /// Check the sinks instead of the tenants: each opened as `run` opens it, then one
        /// harmless round trip (a token, the index or stream); nothing is delivered.
        #[arg(long)]
        sinks: bool,
    },
    /// Load and validate the configuration; print it resolved, secrets redacted.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the built-in Wiz simulator alone.
    Simulate(SimulateArgs),
    /// The fleet's health as a table, worst first, from a running connector's admin API.
    Status(StatusArgs),
    /// Write back to a Wiz issue through a running connector (the tenant needs write_back = true).
    Action(ActionArgs),
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The tenant id.
    #[arg(long)]
    pub tenant: String,
    /// The Wiz issue id.
    #[arg(long)]
    pub issue: String,
    /// reject, resolve, reopen, note or set_due_date.
    pub action: String,
    /// reject: FALSE_POSITIVE, EXCEPTION or WONT_FIX; resolve (a threat): MALICIOUS_THREAT,
    /// NOT_MALICIOUS_THREAT, SECURITY_TEST_THREAT, PLANNED_ACTION_THREAT or INCONCLUSIVE_THREAT.
    #[arg(long)]
    pub reason: Option<String>,
    /// note: the text (with reject, resolve or reopen: a note to add).
    #[arg(long)]
    pub note: Option<String>,
    /// set_due_date: YYYY-MM-DD.
    #[arg(long = "due-date")]
    pub due_date: Option<String>,
    /// The admin API; the token needs write permission.
    #[command(flatten)]
    pub api: AdminArgs,
}

/// Where a running connector's admin API is, and the token it takes.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API of the running connector.
    #[arg(
        long = "admin",
        env = "WIZ_CONNECTOR_ADMIN",
        default_value = "http://127.0.0.1:8686"
    )]
    pub admin: String,
    /// Its bearer token, when it requires one (or the environment variable).
    #[arg(long, env = "WIZ_CONNECTOR_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: AdminArgs,
    /// Only tenants in these states (comma-separated: failed,backoff,...).
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many rows (the summary line counts every tenant).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long = "config", env = "WIZ_CONNECTOR_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Number of simulated tenants (client ids sim-client-0000, sim-client-0001, ...).
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Issues generated per tenant at start.
    #[arg(long, default_value_t = 250)]
    pub issues: usize,
    /// Seed of the generator (same seed, same issues and secrets).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `expires_in` of issued tokens, in seconds.
    #[arg(long, default_value_t = 86400)]
    pub token_expires_in: u64,
    /// Every tenant makes one random change this often ("0s" turns churn off).
    #[arg(long, default_value = "30s")]
    pub churn_every: DurationValue,
    /// Answer 429 when one client sends more than this many requests within a second, like Wiz.
    #[arg(long)]
    pub enforce_rate_limit: Option<u32>,
    /// Added latency of every GraphQL answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Answer a lookup of unknown issue ids (`filterBy.id`) by leaving them out, instead of
    /// failing it with a NOT_FOUND GraphQL error.
    #[arg(long)]
    pub omit_unknown_ids: bool,
    /// Accept `filterBy.updatedAt` on issuesV2 (unconfirmed for Wiz; refused by default).
    #[arg(long)]
    pub accept_updated_at_filter: bool,
    /// Vulnerability findings per tenant (default: two per issue), e.g. 1000000 for a large
    /// tenant's first sweep.
    #[arg(long)]
    pub vulnerabilities: Option<usize>,
    /// Also serve a Splunk HTTP Event Collector simulator on this address (for a `splunk_hec`
    /// sink; its token and a sink snippet are printed).
    #[arg(long)]
    pub hec: Option<SocketAddr>,
    /// The HEC simulator acknowledges (indexer acknowledgement on; use `ack = true`).
    #[arg(long)]
    pub hec_ack: bool,
    /// Also serve an Elasticsearch bulk API simulator on this address (for an `elasticsearch`
    /// sink; its API key and a sink snippet are printed).
    #[arg(long)]
    pub elastic: Option<SocketAddr>,
    /// Also serve an Entra token endpoint and Logs Ingestion API simulator on this address (for
    /// a `sentinel` sink; its app, rule and a sink snippet are printed).
    #[arg(long)]
    pub sentinel: Option<SocketAddr>,
}

/// `demo`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Also deliver into a simulated SIEM on loopback (its simulator runs in the demo; how many
    /// events it took is printed every few seconds on standard error).
    #[arg(long, value_enum)]
    pub siem: Option<Siem>,
}

/// A SIEM `demo` can deliver into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Siem {
    /// Splunk's HTTP Event Collector, with indexer acknowledgement.
    Splunk,
    /// Elasticsearch's bulk API, into data streams, in ECS.
    Elasticsearch,
    /// Microsoft Sentinel's Logs Ingestion API, in OCSF.
    Sentinel,
}
