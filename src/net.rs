//! HTTP helpers every outbound client shares (the Wiz client, the sinks, telemetry and the CLI's
//! admin calls): the TLS provider, `Retry-After`, readable transport errors and safe snippets of
//! answers. A leaf: it knows no part of the connector.

use std::time::Duration;

/// Installs rustls's ring provider as the process default (once; later calls find it there).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the servers we talk to), capped
/// at an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// A transport error with its causes, one after another ("connection failed: ...: ...").
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The start of an answer's body, for an error message: at most 200 characters, control
/// characters blanked, `…` when cut, `(empty body)` when there is nothing.
pub fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX * 4)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    let trimmed = out.trim().len();
    if trimmed == 0 {
        return "(empty body)".to_string();
    }
    if text.chars().count() > MAX || body.len() > MAX * 4 {
        out.push('…');
    }
    out.trim().to_string()
}
