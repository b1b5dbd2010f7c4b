//! `GET /`: the status page. One self-contained HTML file (`status.html`, compiled in): inline
//! style and script, no external asset. It reads `/summary` and one page of
//! `/tenants?order=worst&limit=100&offset=N` (with `state` and `q` when filtered) and refreshes
//! itself, so its cost does not grow with the fleet: 100,000 tenants are 1,000 pages of 100.
//!
//! The page is behind the admin token like every route. A browser cannot send a bearer token
//! when it opens a page, so the admin API also takes HTTP Basic with the token as the password;
//! `/` answers 401 with a Basic challenge (the browser's login prompt), and the page's own
//! requests then carry the same credentials.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("status.html");

/// `Content-Security-Policy` of the page: nothing but its own inline style, its own inline
/// script (pinned by hash) and requests to this origin.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let start = PAGE.find("<script>").expect("the page has a script") + "<script>".len();
    let end = PAGE.find("</script>").expect("the page's script ends");
    let hash = base64(&Sha256::digest(&PAGE.as_bytes()[start..end]));
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

pub async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
        ],
        PAGE,
    )
        .into_response()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` when it is not base64.
fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The password of an HTTP Basic credential (`base64(user:password)`); the user name is not
/// checked.
pub fn basic_password(encoded: &str) -> Option<Vec<u8>> {
    let raw = unbase64(encoded)?;
    let colon = raw.iter().position(|&b| b == b':')?;
    Some(raw[colon + 1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        for s in ["", "a", "ab", "abc", "abcd", "admin:t0k3n/with+symbols"] {
            assert_eq!(unbase64(&base64(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(unbase64("not base64!"), None);
    }

    #[test]
    fn the_password_of_a_basic_credential_is_taken_whoever_the_user() {
        assert_eq!(
            basic_password(&base64(b"ops:s3cret:x")).unwrap(),
            b"s3cret:x"
        );
        assert_eq!(basic_password(&base64(b":s3cret")).unwrap(), b"s3cret");
        assert_eq!(basic_password(&base64(b"no-colon")), None);
    }

    #[test]
    fn the_page_is_self_contained() {
        for external in ["src=\"http", "href=\"http", "@import", "url(http", "//cdn"] {
            assert!(!PAGE.contains(external), "{external}");
        }
        assert!(CSP.contains("script-src 'sha256-"));
    }
}
