//! The Wiz simulator: an axum server on loopback that behaves like the Wiz API of WIZ_API.md for
//! many simulated tenants (one per client id/secret). It is a product feature (`simulate`, `demo`)
//! and the test bed of every integration test.
//!
//! - `POST /oauth/token`: client credentials (form body, audience checked), configurable
//!   `expires_in`.
//! - Every GraphQL request is parsed and validated against the simulator's SDL of Wiz
//!   (`wiz.graphql`, `validate`) before it is answered, and refused as a GraphQL server would.
//! - `POST /graphql`: `issuesV2` (aliased or not), `first` (over 500 → Wiz's error), opaque
//!   cursors, `filterBy` on status, severity, type, createdAt and statusChangedAt, `orderBy`.
//! - Fault knobs per tenant (queued or sticky): latency, 429 with or without `Retry-After`, 5xx,
//!   `DOWNSTREAM_SERVICE_ERROR`, 401 with an HTML body, broken cursors, garbage bodies.
//! - Counters per tenant: requests, tokens issued, peak requests per second.
//! - `GET /_sim/tenants`, `POST /_sim/tenants/{client_id}/faults`, `POST
//!   /_sim/tenants/{client_id}/churn?steps=N`: the same knobs over HTTP.
//!
//! Beside it, the simulators of the destinations the SIEM sinks write to, as faithful to their
//! vendors' documentation: Splunk's HTTP Event Collector ([`hec`]), Elasticsearch's bulk API
//! ([`elastic`]) and Azure Monitor's Logs Ingestion API with its Entra token endpoint
//! ([`sentinel`]).

mod body;
pub mod data;
pub mod elastic;
mod fault;
pub mod feed_data;
mod graphql;
pub mod hec;
mod mutations;
pub mod sentinel;
mod server;
pub mod validate;

pub use data::{IssueSet, SimIssue, SEVERITIES};
pub use fault::Fault;
pub use server::{SimCounters, SimTenantSpec, Simulator, SimulatorOptions};
