//! OAuth 2 client credentials against the Wiz token endpoint, and the per-tenant token cache.

pub use crate::net::{describe_reqwest, retry_after};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::error::{snippet, AuthFailure, WizError};
use crate::config::TenantSpec;

/// Tokens are renewed this long before they expire: a tenth of their life, at least 1 s, at most
/// 5 minutes (a 24 h Wiz token is renewed 5 minutes early).
pub fn safety_margin(expires_in: Duration) -> Duration {
    (expires_in / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// A bearer token and when to stop using it.
pub struct Token {
    /// The bearer value; a secret like the client secret.
    pub value: SecretString,
    /// When the token must be renewed (expiry minus the safety margin).
    pub renew_at: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[REDACTED]")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

/// One tenant's cached token. Renewed only near expiry or after a 401.
#[derive(Debug, Default)]
pub struct TokenCache {
    token: Option<Token>,
}

impl TokenCache {
    /// The cached token when it is still good at `now`.
    pub fn fresh(&self, now: Instant) -> Option<&SecretString> {
        self.token
            .as_ref()
            .filter(|t| now < t.renew_at)
            .map(|t| &t.value)
    }

    pub fn store(&mut self, t: Token) {
        self.token = Some(t);
    }

    /// Forgets the token (after a 401), so the next request fetches a new one.
    pub fn invalidate(&mut self) {
        self.token = None;
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<f64>,
    message: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Exchanges the tenant's client credentials for a token.
pub async fn fetch_token(http: &reqwest::Client, spec: &TenantSpec) -> Result<Token, WizError> {
    let fail = |reason| WizError::Auth { reason };
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &spec.client_id)
        .append_pair("client_secret", spec.client_secret.expose_secret())
        .append_pair("audience", &spec.audience)
        .finish();
    let started = Instant::now();
    let resp = http
        .post(spec.auth_url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .timeout(spec.request_timeout.0)
        .send()
        .await
        .map_err(|e| fail(AuthFailure::Unreachable(describe_reqwest(&e))))?;
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .chars()
        .take(60)
        .collect::<String>();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| fail(AuthFailure::Unreachable(describe_reqwest(&e))))?;
    let answer: Option<TokenAnswer> = serde_json::from_slice(&bytes).ok();
    // The body of a token endpoint is never shown as it came: an endpoint that echoes the form
    // would show the secret, one that answers with a form would show a token. Only the known
    // error fields of a JSON answer are shown, with anything secret-looking removed.
    let secret = spec.client_secret.expose_secret();
    let detail = |answer: Option<&TokenAnswer>| {
        let fields = answer.and_then(|a| match (&a.error, &a.error_description, &a.message) {
            (Some(e), Some(d), _) => Some(format!("{e}: {d}")),
            (Some(e), None, _) => Some(e.clone()),
            (None, Some(d), _) | (None, None, Some(d)) => Some(d.clone()),
            _ => None,
        });
        match fields {
            Some(f) => redact_token_text(&snippet(f.as_bytes()), secret),
            None => format!("a {content_type} body of {} bytes, not shown", bytes.len()),
        }
    };
    if status == 429 || status >= 500 {
        return Err(fail(AuthFailure::Unavailable {
            status,
            detail: detail(answer.as_ref()),
            retry_after: ra,
        }));
    }
    if status != 200 {
        return Err(fail(AuthFailure::Refused {
            status,
            detail: detail(answer.as_ref()),
        }));
    }
    let Some(answer) = answer else {
        return Err(fail(AuthFailure::BadAnswer(format!(
            "HTTP 200 with {} bytes of {content_type}, not a JSON token answer (body not shown)",
            bytes.len()
        ))));
    };
    let Some(token) = answer.access_token.filter(|t| !t.is_empty()) else {
        let why = answer
            .message
            .or(answer.error_description)
            .or(answer.error)
            .map(|w| redact_token_text(&snippet(w.as_bytes()), secret))
            .unwrap_or_else(|| "no access_token in the answer".into());
        return Err(fail(AuthFailure::Refused {
            status,
            detail: why,
        }));
    };
    let expires_in = match answer.expires_in {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(365.0 * 86400.0)),
        Some(_) => {
            return Err(fail(AuthFailure::BadAnswer(
                "expires_in is not a positive number".into(),
            )))
        }
        // Not seen from Wiz; be conservative rather than fail.
        None => Duration::from_secs(300),
    };
    let renew_at = started + expires_in.saturating_sub(safety_margin(expires_in));
    Ok(Token {
        value: SecretString::from(token),
        renew_at,
    })
}

/// A reqwest error as a short message. reqwest's messages carry the URL, never a header or body,
/// so no secret can be in them.
/// Removes what must never be shown from a token endpoint's error text: the client secret itself,
/// and the value of any `access_token`, `refresh_token`, `client_secret` or `id_token` parameter
/// (in `name=value`, `"name":"value"` or `name: value` form).
pub fn redact_token_text(text: &str, secret: &str) -> String {
    let mut out = if secret.len() >= 4 {
        text.replace(secret, "[REDACTED]")
    } else {
        text.to_string()
    };
    for name in ["access_token", "refresh_token", "client_secret", "id_token"] {
        let mut from = 0;
        while let Some(i) = out[from..].find(name) {
            let start = from + i + name.len();
            // Skip the separator: `=`, `:`, quotes and spaces.
            let rest = &out[start..];
            let skip = rest
                .find(|c: char| !matches!(c, '=' | ':' | '"' | '\'' | ' '))
                .unwrap_or(rest.len());
            if skip == 0 {
                from = start;
                continue;
            }
            let value_start = start + skip;
            let value_len = out[value_start..]
                .find(['&', '"', '\'', ',', '}', ' ', ';'])
                .unwrap_or(out.len() - value_start);
            out.replace_range(value_start..value_start + value_len, "[REDACTED]");
            from = value_start + "[REDACTED]".len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_tenth_clamped() {
        assert_eq!(
            safety_margin(Duration::from_secs(86400)),
            Duration::from_secs(300)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn cache_serves_until_renewal_time() {
        let now = Instant::now();
        let mut c = TokenCache::default();
        assert!(c.fresh(now).is_none());
        c.store(Token {
            value: SecretString::from("t1".to_string()),
            renew_at: now + Duration::from_secs(10),
        });
        assert_eq!(c.fresh(now).map(|t| t.expose_secret()), Some("t1"));
        assert_eq!(
            c.fresh(now + Duration::from_secs(9))
                .map(|t| t.expose_secret()),
            Some("t1")
        );
        assert!(c.fresh(now + Duration::from_secs(10)).is_none());
        c.invalidate();
        assert!(c.fresh(now).is_none());
    }

    #[test]
    fn token_text_is_redacted() {
        let r = redact_token_text(
            "bad request: grant_type=client_credentials&client_id=c&client_secret=hunter22&audience=x {\"access_token\": \"eyJabc\"} s3cr3t-value",
            "s3cr3t-value",
        );
        assert!(
            !r.contains("hunter22") && !r.contains("eyJabc") && !r.contains("s3cr3t-value"),
            "{r}"
        );
        assert!(r.contains("client_id=c"), "{r}");
        assert_eq!(
            redact_token_text("invalid_client: Unauthorized", "zz"),
            "invalid_client: Unauthorized"
        );
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token {
            value: SecretString::from("very-secret-token".to_string()),
            renew_at: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
