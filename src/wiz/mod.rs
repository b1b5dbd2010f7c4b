//! Talking to Wiz: authentication (`auth`), per-credential rate limits (`limiter`), the HTTP client
//! with retries (`client`), and the Issues query (`issues`) and the single-pass parsing of its answer (`page`).

pub mod auth;
pub mod client;
pub mod error;
pub mod issues;
pub mod limiter;
pub mod page;

pub use client::{install_crypto_provider, ClientStats, Sweep, TenantClient, WizHttp};
pub use error::{AuthFailure, ErrorKind, WizError};
pub use issues::{IssueFilter, IssueOrder, TimeRange};
pub use page::{parse_page, Issue, NodeError, Page, Str};
