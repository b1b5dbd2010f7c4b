//! The webhook receiver: `POST /hooks/wiz/{tenant}` (and `GET /healthz` for a load balancer).
//! It authorizes before it reads a body, reads at most [`MAX_BODY_BYTES`], takes only the issue id,
//! and answers at once: the lookup happens in the tenant, later.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::Hints;

/// Largest body read (CONTRACT: 413 above 1 MiB). A Wiz template body is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How much of an oversized body is read and dropped before the 413 is sent. A client that is
/// still writing when the server answers and closes gets a broken pipe instead of the 413; reading
/// the rest first lets it read the answer. Past this, the connection is closed without reading.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Longest issue id accepted (Wiz's are UUIDs, 36 characters).
const MAX_ID_LEN: usize = 128;

/// A running receiver; stops when dropped.
pub struct HooksServer {
    pub addr: SocketAddr,
    _stop: crate::serve::StopOnDrop,
}

/// Binds the receiver's address (before anything polls, so a taken port fails the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the receiver on `listener` in the background.
pub fn serve(listener: TcpListener, hints: Hints) -> std::io::Result<HooksServer> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/hooks/wiz/{tenant}", post(hint))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(hints);
    Ok(HooksServer {
        addr,
        _stop: crate::serve::spawn(listener, app, "webhook receiver"),
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The bearer token of the request; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("")
}

/// A Wiz issue id as the connector accepts one from outside: 1 to 128 letters, digits, `-`,
/// `_`, `:` or `.` (Wiz's are UUIDs).
pub fn valid_issue_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

/// The issue id from a hint's body: `issue.id`, `issueId` or `id` (the customer writes the
/// template, so any of the three), a string of letters, digits, `-`, `_`, `:` or `.`.
pub fn issue_id(body: &[u8]) -> Result<String, &'static str> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| "the body is not JSON; send {\"issue\": {\"id\": \"{{issue.id}}\"}}")?;
    let raw = v
        .pointer("/issue/id")
        .or_else(|| v.get("issueId"))
        .or_else(|| v.get("id"))
        .ok_or("no issue id: the body must carry issue.id, issueId or id")?;
    let id = raw
        .as_str()
        .ok_or("the issue id must be a JSON string")?
        .trim();
    if id.is_empty() {
        return Err("the issue id is empty (does the template use {{issue.id}}?)");
    }
    if !valid_issue_id(id) {
        return Err(
            "the issue id is not a Wiz issue id (letters, digits, '-', '_', ':', '.'; at most 128)",
        );
    }
    Ok(id.to_string())
}

async fn hint(
    State(hints): State<Hints>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let m = hints.metrics();
    // Authorized first: nothing of an unauthorized caller's body is read.
    if hints.authorize(&tenant, bearer(&headers)).is_err() {
        m.received("unauthorized");
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <the tenant's webhook_token>)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        return r;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        m.received("too_large");
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body above 1 MiB; a hint needs only the issue id",
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        drain(body, declared.unwrap_or(0)).await;
        return too_large();
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return too_large();
        };
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            // Undeclared length (chunked): read the rest before answering, as above.
            let mut read = (bytes.len() + chunk.len()) as u64;
            while let Some(Ok(c)) = stream.next().await {
                read += c.len() as u64;
                if read > DRAIN_MAX_BYTES {
                    break;
                }
            }
            return too_large();
        }
        bytes.extend_from_slice(&chunk);
    }
    let id = match issue_id(&bytes) {
        Ok(id) => id,
        Err(message) => {
            m.received("bad_request");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let result = hints.deliver(&tenant, &id).await;
    m.received(result);
    tracing::debug!(tenant = %tenant, issue_id = %id, result, "webhook hint");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "issue_id": id, "result": result })),
    )
        .into_response()
}

/// Reads and drops an oversized body of `declared` bytes, unless it is too large to bother.
async fn drain(body: Body, declared: u64) {
    if declared > DRAIN_MAX_BYTES {
        return;
    }
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

#[cfg(test)]
mod tests {
    use super::issue_id;

    #[test]
    fn the_id_is_read_from_any_of_the_three_places() {
        assert_eq!(issue_id(br#"{"issue": {"id": "a-1"}}"#).unwrap(), "a-1");
        assert_eq!(issue_id(br#"{"issueId": "b-2", "x": 1}"#).unwrap(), "b-2");
        assert_eq!(issue_id(br#"{"id": " c-3 "}"#).unwrap(), "c-3");
        // issue.id wins over the others.
        assert_eq!(
            issue_id(br#"{"id": "z", "issue": {"id": "a"}}"#).unwrap(),
            "a"
        );
    }

    #[test]
    fn bodies_without_a_usable_id_are_refused_with_the_reason() {
        assert!(issue_id(b"not json").unwrap_err().contains("not JSON"));
        assert!(issue_id(br#"{"issue": {}}"#)
            .unwrap_err()
            .contains("no issue id"));
        assert!(issue_id(br#"{"id": 5}"#).unwrap_err().contains("string"));
        assert!(issue_id(br#"{"id": ""}"#).unwrap_err().contains("empty"));
        assert!(issue_id(br#"{"id": "a b"}"#)
            .unwrap_err()
            .contains("not a Wiz issue id"));
        let long = format!(r#"{{"id": "{}"}}"#, "a".repeat(129));
        assert!(issue_id(long.as_bytes()).is_err());
    }
}
