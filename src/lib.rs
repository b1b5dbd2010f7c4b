//! # wiz-connector
//!
//! Pulls cloud-security Issues from the Wiz GraphQL API for many Wiz tenants at once and delivers
//! them, normalized, to the systems a security operations team already runs.
//!
//! ## Layout
//! - [`config`]: the configuration file as users write it (`types`), how it is layered and checked
//!   (`load`), the resolved runtime settings (`settings`), routes (`routes`), what a reload
//!   changes (`diff`) and the read-only running configuration (`live`).
//! - [`wiz`]: the Wiz API client: OAuth client credentials and the token cache (`auth`), one rate
//!   limiter per credential (`limiter`), the HTTP client with timeouts and retries (`client`), the
//!   Issues query (`issues`) and the single-pass decoding of its answer and of feed pages (`page`).
//! - [`event`]: the normalized event and the Issues normalizer (the hot path); its leaves `kind`
//!   (what happened, the severity ladder) and `id` (event ids and fingerprints).
//! - [`format`]: the output formats chosen per sink: `native`, `ocsf` (OCSF 1.8.0) and `ecs`,
//!   written by the normalizers from the one decoding of each node, line for line.
//! - [`json`]: writing JSON field by field (a leaf the normalizers and format writers share).
//! - [`change`]: what is remembered of an item (its fingerprint, kind, status) and the change rule
//!   that turns a new observation into an event kind, or none; the tenant applies it, the state
//!   store keeps what it remembers.
//! - [`feeds`]: the feeds beyond Issues as values (query, time field, change rule), their nodes'
//!   decoded views (`view`) and their native normalizer (`normalize`);
//!   the tenant actor runs them (`tenant::feed_job`).
//! - [`supervisor`]: the root actor: spawns tenants and the sink, applies the restart policy.
//! - [`tenant`]: the tenant actor (one poll at a time, page by page), one file per concern:
//!   the poll plan and timer (`schedule`), the Issues engine (`issues`), a feed window
//!   (`feed_job`), hint lookups (`hints`), one delivery flow for all (`delivery`), cluster
//!   takeover (`claim`), sweep slots (`slot`).
//! - [`sink`]: the sink actor and its outputs, one file per sink type (registered in
//!   `sink_types!`), and the resolved routes it applies (`routing`).
//! - [`state`]: the state store: checkpoints and known issues in the embedded redb, and in cluster
//!   mode in JetStream (`jetstream`, records in `codec`) with the redb as its cache.
//! - [`health`]: the per-tenant health records.
//! - [`heap`]: the allocator's settings (set first thing in `main`) and giving memory freed after
//!   a large load, or after takeovers, back to the operating system.
//! - [`metrics`]: typed observations that are both logged and counted (Prometheus); a leaf:
//!   modules with metrics of their own register them into its registry.
//! - [`cluster`]: cluster mode: membership in a JetStream KV bucket, renewed by a heartbeat on its
//!   own thread (`membership`), the lease that stops a cut-off replica's tenants (`lease`), and
//!   placement of tenants over the live replicas (`placement`), fed to the supervisor as reload
//!   diffs by the placement task of `reload`.
//! - [`hints`]: webhook hints: the receiver Wiz automation rules call, and the per-tenant queues
//!   of hinted issue ids the tenants look up.
//! - [`writeback`]: write-back actions on Wiz issues (opt-in per tenant), their checks and audit.
//! - [`admin`]: the admin HTTP API (health per tenant, polls on demand, write-back's route).
//! - [`app`]: wiring and ordered shutdown.
//! - [`reload`]: reconfiguration without restart (SIGHUP, `POST /reload`, file watcher).
//! - [`faults`]: connector-side fault injection for tests and drills.
//! - [`sim`]: the Wiz simulator, served by `wiz-connector simulate` and `demo`, used by every test.
//! - [`commands`]: one module per subcommand; [`cli`] holds the clap types.
//! - [`net`]: HTTP helpers every outbound client shares (TLS provider, `Retry-After`, error
//!   texts, snippets of answers).
//! - [`telemetry`]: logging setup.
//! - [`serve`]: serving an axum router in the background (admin API, simulator).
//!
//! `main.rs` only parses the command line, sets up logging and hands over to [`commands`].

pub mod admin;
pub mod app;
pub mod change;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod event;
pub mod faults;
pub mod feeds;
pub mod format;
pub mod health;
pub mod heap;
pub mod hints;
pub mod json;
pub mod metrics;
pub mod net;
pub mod reload;
pub mod serve;
pub mod sim;
pub mod sink;
pub mod state;
pub mod supervisor;
pub mod telemetry;
pub mod tenant;
pub mod wiz;
pub mod writeback;
