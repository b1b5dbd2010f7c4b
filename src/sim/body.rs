//! Reading a request body as the simulated servers do: gzip when `Content-Encoding` says so,
//! bounded by the server's content limit.

use std::io::Read;

use axum::http::HeaderMap;

/// Why a body could not be read.
pub(crate) enum BodyError {
    /// Larger than the limit (its size, or the limit plus one once inflating passed it).
    TooLarge(usize),
    /// Not valid gzip.
    Invalid,
}

/// The body, inflated when gzip, at most `max` bytes.
pub(crate) fn read(headers: &HeaderMap, body: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let data = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| BodyError::Invalid)?;
        out
    } else {
        body.to_vec()
    };
    if data.len() > max {
        return Err(BodyError::TooLarge(data.len()));
    }
    Ok(data)
}
