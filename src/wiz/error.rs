//! Everything that can go wrong talking to Wiz, classified so callers know whether to retry and
//! what to count. Messages follow the seed's troubleshooting texts.

use std::time::Duration;

use thiserror::Error;

/// Hint shown when the token endpoint refused the credentials (the seed's troubleshooting text).
pub const AUTH_HINT: &str = "check client_id and client_secret; if auth_url is overridden, make sure it points at the tenant's cloud (commercial vs gov-cloud), or remove it to fall back to the default commercial endpoint";

/// Hint shown with a 401 from the GraphQL endpoint under a fresh token.
pub const SCOPE_HINT: &str = "the token was issued but lacks the read:issues scope: re-grant it on the service account in the Wiz console (tokens cache scopes at issue time, so it takes effect with the next token); a gov-cloud tenant queried through a commercial host also answers 401";

/// Why the token exchange failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthFailure {
    /// The token host answered and said no (wrong id/secret/audience).
    #[error("credentials refused by the token endpoint (HTTP {status}: {detail})")]
    Refused { status: u16, detail: String },
    /// The token host could not be reached or timed out.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The token host answered with something that is not a token.
    #[error("token endpoint answer not understood: {0}")]
    BadAnswer(String),
    /// The token host is overloaded or rate limiting (HTTP 429/5xx).
    #[error("token endpoint unavailable (HTTP {status}: {detail})")]
    Unavailable {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
}

/// Hint when the token endpoint could not be reached.
pub const UNREACHABLE_HINT: &str =
    "check auth_url and that this host can reach it (DNS, proxy, firewall); the connector retries";

/// Hint when the token endpoint answered, but not with a token or a refusal.
pub const BROKEN_ENDPOINT_HINT: &str = "the token endpoint is failing, not the credentials: check that auth_url is the tenant's token endpoint, or wait for Wiz to recover; the connector retries";

impl AuthFailure {
    /// What the user should do about this failure.
    pub fn hint(&self) -> &'static str {
        match self {
            AuthFailure::Refused { .. } => AUTH_HINT,
            AuthFailure::Unreachable(_) => UNREACHABLE_HINT,
            AuthFailure::BadAnswer(_) | AuthFailure::Unavailable { .. } => BROKEN_ENDPOINT_HINT,
        }
    }
}

/// A failure of one Wiz API operation.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum WizError {
    #[error("could not authenticate to wiz: {reason}. Hint: {}", reason.hint())]
    Auth { reason: AuthFailure },

    #[error("HTTP 401 on issues query: {SCOPE_HINT} (response: {snippet})")]
    Unauthorized { snippet: String },

    #[error("rate limited by wiz (HTTP 429{})", retry_after.map(|d| format!(", Retry-After {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },

    #[error("wiz server error (HTTP {status}): {snippet}")]
    Server {
        status: u16,
        snippet: String,
        retry_after: Option<Duration>,
    },

    #[error("request to wiz timed out after {}s", timeout.as_secs())]
    Timeout { timeout: Duration },

    #[error("could not reach wiz: {0}")]
    Transport(String),

    #[error("wiz GraphQL error {code}: {message}")]
    GraphQl { code: String, message: String },

    #[error("wiz rejected the request (HTTP {status}): {snippet}")]
    Client { status: u16, snippet: String },

    #[error("wiz answer not understood: {0}")]
    BadResponse(String),

    #[error("wiz returned the cursor of an earlier page again on page {page}; stopping the sweep instead of looping")]
    CursorRepeated { page: u32 },

    #[error("wiz said there is a next page but gave no cursor (page {page}); stopping the sweep")]
    CursorMissing { page: u32 },

    #[error("sweep stopped after {max} pages (connector.max_pages_per_sweep); raise it if the tenant really has that many issues")]
    TooManyPages { max: u32 },

    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: Box<WizError> },

    #[error("the tenant is stopping; the retry was abandoned")]
    Stopping,
}

impl WizError {
    /// The token endpoint refused the credentials (wrong id or secret, disabled account).
    pub fn credentials_refused(&self) -> bool {
        matches!(
            self,
            WizError::Auth {
                reason: AuthFailure::Refused { .. }
            }
        )
    }

    /// Wiz refused the query itself to this service account (a scope it lacks): a GraphQL
    /// `UNAUTHORIZED`/`FORBIDDEN` error (HTTP 200), a 401 that a fresh token did not cure, or an
    /// HTTP 403 (what a gateway answers for a missing scope).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            WizError::Client { status: 403, .. } => true,
            WizError::GraphQl { code, message } => {
                matches!(
                    code.as_str(),
                    "UNAUTHORIZED" | "FORBIDDEN" | "UNAUTHENTICATED"
                ) || message.to_ascii_lowercase().contains("unauthorized")
            }
            WizError::Unauthorized { .. } => true,
            _ => false,
        }
    }

    /// A GraphQL `NOT_FOUND` error: what Wiz may answer when asked for an id it does not have.
    pub fn is_not_found(&self) -> bool {
        matches!(self, WizError::GraphQl { code, .. } if code == "NOT_FOUND")
    }
}

/// A coarse kind, for metrics and health (`errors by kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Auth,
    RateLimited,
    Server,
    GraphQl,
    Timeout,
    Transport,
    Client,
    BadResponse,
    Pagination,
    Stopping,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::GraphQl => "graphql",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::Client => "client",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Pagination => "pagination",
            ErrorKind::Stopping => "stopping",
        }
    }
}

/// The GraphQL code Wiz uses for transient backend failures on heavy queries.
pub const DOWNSTREAM_SERVICE_ERROR: &str = "DOWNSTREAM_SERVICE_ERROR";

impl WizError {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            WizError::RateLimited { .. }
            | WizError::Server { .. }
            | WizError::Timeout { .. }
            | WizError::Transport(_) => true,
            WizError::GraphQl { code, .. } => code == DOWNSTREAM_SERVICE_ERROR,
            WizError::Auth { reason } => matches!(
                reason,
                AuthFailure::Unreachable(_) | AuthFailure::Unavailable { .. }
            ),
            _ => false,
        }
    }

    /// Wiz refused the query because it does not know filter field `field` (a validation error
    /// that names it; not a transient failure).
    pub fn rejects_field(&self, field: &str) -> bool {
        match self {
            WizError::GraphQl { message, .. } => message.contains(field),
            WizError::Client { .. } => self.to_string().contains(field),
            _ => false,
        }
    }

    /// The server's requested delay, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            WizError::RateLimited { retry_after }
            | WizError::Server { retry_after, .. }
            | WizError::Auth {
                reason: AuthFailure::Unavailable { retry_after, .. },
            } => *retry_after,
            _ => None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            WizError::Auth { .. } | WizError::Unauthorized { .. } => ErrorKind::Auth,
            WizError::RateLimited { .. } => ErrorKind::RateLimited,
            WizError::Server { .. } => ErrorKind::Server,
            WizError::Timeout { .. } => ErrorKind::Timeout,
            WizError::Transport(_) => ErrorKind::Transport,
            WizError::GraphQl { .. } => ErrorKind::GraphQl,
            WizError::Client { .. } => ErrorKind::Client,
            WizError::BadResponse(_) => ErrorKind::BadResponse,
            WizError::CursorRepeated { .. }
            | WizError::CursorMissing { .. }
            | WizError::TooManyPages { .. } => ErrorKind::Pagination,
            WizError::RetriesExhausted { last, .. } => last.kind(),
            WizError::Stopping => ErrorKind::Stopping,
        }
    }
}

pub use crate::net::snippet;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_is_a_permission_denied_and_other_client_errors_are_not() {
        let e = |status| WizError::Client {
            status,
            snippet: "Forbidden".into(),
        };
        assert!(e(403).is_permission_denied());
        assert!(!e(400).is_permission_denied());
        assert!(!e(403).is_transient());
    }
}
