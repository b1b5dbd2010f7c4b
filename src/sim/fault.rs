//! The faults the simulator can inject per tenant (queued or sticky). A leaf: the server takes
//! them, the GraphQL answer applies the cursor ones.

use serde::{Deserialize, Serialize};

/// Something to go wrong with the next request of a tenant (or every request, when sticky).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 429, with `Retry-After: <secs>` when given.
    RateLimited { retry_after: Option<u64> },
    /// An HTTP 5xx with an HTML body.
    ServerError { status: u16 },
    /// HTTP 200 with a `DOWNSTREAM_SERVICE_ERROR` GraphQL error.
    Downstream,
    /// HTTP 401 with `<pre>Unauthorized</pre>` (as a gov tenant queried through a commercial host).
    UnauthorizedHtml,
    /// Answer normally, after this many milliseconds.
    Latency { ms: u64 },
    /// Do the work at once (a mutation applies), then answer after this many milliseconds: a
    /// caller that gives up first does not learn that it applied.
    SlowAnswer { ms: u64 },
    /// Answer normally but with the request's own `after` as `endCursor` (a looping server).
    RepeatCursor,
    /// Answer normally but with `hasNextPage: true` and no `endCursor`.
    MissingCursor,
    /// HTTP 200 with this body.
    Garbage { body: String },
    /// HTTP 200 with a GraphQL error of this code and message.
    GraphQlError { code: String, message: String },
}
