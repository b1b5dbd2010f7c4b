//! Talking to Wiz: authentication (`auth`), per-credential rate limits (`limiter`), the HTTP client
//! with retries (`client`), and the Issues query (`issues`).

pub mod auth;
pub mod client;
pub mod error;
pub mod issues;
pub mod limiter;

pub use client::{ClientStats, Sweep, TenantClient, WizHttp};
pub use error::{AuthFailure, ErrorKind, WizError};
pub use issues::{IssueFilter, IssueOrder, Page, TimeRange};
