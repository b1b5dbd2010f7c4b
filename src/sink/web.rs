//! What the HTTP sinks (`http`, `splunk_hec`, `elasticsearch`, `sentinel`) share besides the
//! retry: the client each output opens, the base-URL check of their configuration, and gzip.

use std::io::Write;
use std::time::Duration;

use url::Url;

use super::SinkChecks;

/// The HTTP client of sink `name`'s output: our user agent, `timeout` per request (connecting
/// within at most 10 s of it), and certificates verified unless `tls_verify` is off (which is
/// logged, once per output).
pub(super) fn client(
    name: &str,
    url: &Url,
    timeout: Duration,
    tls_verify: bool,
) -> Result<reqwest::Client, String> {
    crate::net::install_crypto_provider();
    if !tls_verify {
        tracing::warn!(sink = %name, url = %url, "TLS certificate verification is OFF for this sink (tls_verify = false)");
    }
    reqwest::Client::builder()
        .user_agent(concat!("wiz-connector/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .tls_danger_accept_invalid_certs(!tls_verify)
        .build()
        .map_err(|e| format!("sink `{name}`: cannot build the HTTP client: {e}"))
}

/// `value` as an http(s) URL with a host, or a problem recorded for `key` that shows `example`.
pub(super) fn base_url(
    checks: &mut dyn SinkChecks,
    key: &str,
    value: &str,
    example: &str,
) -> Option<Url> {
    match Url::parse(value.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
        _ => {
            checks.error(
                key,
                format!("{value:?} is not an http(s) URL (e.g. {example:?})"),
            );
            None
        }
    }
}

/// `body` gzip-compressed (the fast level: request bodies are compressed once and sent at once).
pub(super) fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body)
        .and_then(|_| enc.finish())
        .map_err(|e| format!("gzip failed: {e}"))
}
