//! # wiz-connector
//!
//! Pulls cloud-security Issues from the Wiz GraphQL API for many Wiz tenants at once and delivers
//! them, normalized, to the systems a security operations team already runs.
//!
//! ## Layout
//! - [`config`]: the configuration file as users write it (`types`), how it is layered and checked
//!   (`load`), and the resolved runtime settings (`settings`).
//! - [`wiz`]: the Wiz API client: OAuth client credentials and the token cache (`auth`), one rate
//!   limiter per credential (`limiter`), the HTTP client with timeouts and retries (`client`), and
//!   the Issues query with its field set and pagination (`issues`).
//! - [`event`]: the normalized event and the normalizer (the hot path).
//! - [`sim`]: the Wiz simulator, served by `wiz-connector simulate` and used by every test.
//! - [`commands`]: one module per subcommand; [`cli`] holds the clap types.
//! - [`telemetry`]: logging setup.
//!
//! `main.rs` only parses the command line, sets up logging and hands over to [`commands`].

pub mod cli;
pub mod commands;
pub mod config;
pub mod event;
pub mod sim;
pub mod telemetry;
pub mod wiz;
