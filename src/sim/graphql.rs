//! The simulator's GraphQL: enough of `issuesV2` to behave like Wiz for a connector: the alias,
//! `first`, opaque cursors, `filterBy`, `orderBy`, and Wiz's error shapes. It matches on the query
//! text rather than parsing GraphQL, and always returns the full field set.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::data::{IssueSet, SimIssue, SEVERITIES};
use super::fault::Fault;

/// Wiz's maximum page size.
const MAX_FIRST: i64 = 500;
/// Page size when `first` is not given.
const DEFAULT_FIRST: i64 = 100;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Vars {
    first: Option<i64>,
    after: Option<String>,
    filter_by: Option<Filter>,
    order_by: Option<Order>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    status: Option<Vec<String>>,
    severity: Option<Vec<String>>,
    #[serde(rename = "type")]
    issue_type: Option<Vec<String>>,
    created_at: Option<TimeFilter>,
    status_changed_at: Option<TimeFilter>,
    /// Unconfirmed on Wiz's `issuesV2`: taken only with
    /// [`super::SimulatorOptions::accept_updated_at_filter`].
    updated_at: Option<TimeFilter>,
    id: Option<OneOrMany>,
}

/// A list input, which GraphQL also accepts as a single value (input coercion).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeFilter {
    after: Option<String>,
    before: Option<String>,
}

#[derive(Deserialize)]
struct Order {
    field: String,
    direction: Option<String>,
}

/// A GraphQL error the way Wiz sends it: HTTP 200, `data: null`.
pub(super) fn error_response(code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{"message": message, "extensions": {"code": code, "exception": {"stacktrace": []}}}],
        "data": null,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Several GraphQL errors of one code, as a GraphQL server refuses a request: HTTP 200 (Wiz's
/// way), `data: null`.
pub(super) fn error_list_response(code: &str, messages: &[String]) -> Response {
    let errors: Vec<_> = messages
        .iter()
        .map(|m| serde_json::json!({"message": m, "extensions": {"code": code}}))
        .collect();
    let body = serde_json::json!({ "errors": errors, "data": null });
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub(super) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn severity_rank(s: &str) -> i64 {
    SEVERITIES
        .iter()
        .position(|x| *x == s)
        .map(|p| (SEVERITIES.len() - p) as i64)
        .unwrap_or(0)
}

pub(super) fn encode_cursor(key: i64, id: &str) -> String {
    hex::encode(format!("v1:{key}:{id}"))
}

pub(super) fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = String::from_utf8(hex::decode(c).ok()?).ok()?;
    let rest = raw.strip_prefix("v1:")?;
    let (k, id) = rest.split_once(':')?;
    Some((k.parse().ok()?, id.to_string()))
}

pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    humantime::parse_rfc3339_weak(s)
        .map(micros)
        .map_err(|_| format!("invalid DateTime {s:?}"))
}

/// `(after, before)` in microseconds since the epoch.
type Bounds = (Option<i64>, Option<i64>);

fn in_range(t: SystemTime, r: &Option<Bounds>) -> bool {
    let Some((after, before)) = r else {
        return true;
    };
    let m = micros(t);
    after.is_none_or(|a| m > a) && before.is_none_or(|b| m < b)
}

fn time_filter(f: &Option<TimeFilter>) -> Result<Option<Bounds>, String> {
    let Some(f) = f else { return Ok(None) };
    let after = f.after.as_deref().map(parse_time).transpose()?;
    let before = f.before.as_deref().map(parse_time).transpose()?;
    Ok(Some((after, before)))
}

#[derive(Serialize)]
struct PageInfo<'a> {
    #[serde(rename = "hasNextPage")]
    has_next_page: bool,
    #[serde(rename = "endCursor")]
    end_cursor: Option<&'a str>,
}

/// Answers one GraphQL request (its query without whitespace, `q`, and its `variables`) against
/// a tenant's issues. `unknown_id_not_found` and `accept_updated_at`: see
/// [`super::SimulatorOptions`].
pub(super) fn answer(
    q: &str,
    variables: &serde_json::Value,
    issues: &IssueSet,
    mangle: Option<&Fault>,
    unknown_id_not_found: bool,
    accept_updated_at: bool,
) -> Response {
    let vars = match variables {
        serde_json::Value::Null => Vars::default(),
        v => match Vars::deserialize(v) {
            Ok(vars) => vars,
            Err(e) => {
                let body = serde_json::json!({"errors": [{"message": format!("invalid request body: {e}"),
                    "extensions": {"code": "BAD_REQUEST"}}]});
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
        },
    };
    let alias = if q.contains("issues:issuesV2(") {
        "issues"
    } else if q.contains("issuesV2(") {
        "issuesV2"
    } else {
        return error_response(
            "GRAPHQL_VALIDATION_FAILED",
            "the simulator implements the issuesV2 query only",
        );
    };
    let first = vars.first.unwrap_or(DEFAULT_FIRST);
    if first > MAX_FIRST {
        return error_response(
            "BAD_USER_INPUT",
            "'first' must be less than or equal to 500",
        );
    }
    if first < 0 {
        return error_response("BAD_USER_INPUT", "'first' must be a non-negative integer");
    }
    let mut filter = vars.filter_by.unwrap_or_default();
    if filter.updated_at.is_some() && !accept_updated_at {
        // How a GraphQL server refuses an input field its schema does not have.
        return error_response(
            "GRAPHQL_VALIDATION_FAILED",
            "Variable \"$filterBy\" got invalid value; Field \"updatedAt\" is not defined by type \"IssueFilters\".",
        );
    }
    let ids = filter.id.take().map(OneOrMany::into_vec);
    if unknown_id_not_found {
        if let Some(unknown) = ids
            .iter()
            .flatten()
            .find(|id| !issues.issues.iter().any(|i| &i.id == *id))
        {
            return error_response("NOT_FOUND", &format!("Issue {unknown} not found"));
        }
    }
    let (created, changed, updated) = match (
        time_filter(&filter.created_at),
        time_filter(&filter.status_changed_at),
        time_filter(&filter.updated_at),
    ) {
        (Ok(c), Ok(s), Ok(u)) => (c, s, u),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error_response("BAD_USER_INPUT", &e)
        }
    };
    let (field, desc) = match &vars.order_by {
        None => ("CREATED_AT", false),
        Some(o) => {
            let f = match o.field.as_str() {
                f @ ("CREATED_AT" | "STATUS_CHANGED_AT" | "SEVERITY") => f,
                other => {
                    return error_response(
                        "BAD_USER_INPUT",
                        &format!("unknown IssueOrderField {other:?}"),
                    )
                }
            };
            (f, o.direction.as_deref() == Some("DESC"))
        }
    };
    let key = |i: &SimIssue| -> i64 {
        match field {
            "STATUS_CHANGED_AT" => micros(i.status_changed),
            "SEVERITY" => severity_rank(&i.severity),
            _ => micros(i.created),
        }
    };
    let has = |list: &Option<Vec<String>>, v: &str| {
        list.as_ref().is_none_or(|l| l.iter().any(|x| x == v))
    };
    let mut rows: Vec<(i64, &SimIssue)> = issues
        .issues
        .iter()
        .filter(|i| {
            has(&filter.status, &i.status)
                && has(&filter.severity, &i.severity)
                && has(&filter.issue_type, i.issue_type)
                && has(&ids, &i.id)
                && in_range(i.created, &created)
                && in_range(i.status_changed, &changed)
                && (updated.is_none()
                    || humantime::parse_rfc3339_weak(&i.updated_at)
                        .is_ok_and(|t| in_range(t, &updated)))
        })
        .map(|i| (key(i), i))
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    if desc {
        rows.reverse();
    }
    let start = match vars.after.as_deref() {
        None | Some("") => 0,
        Some(c) => match decode_cursor(c) {
            None => return error_response("BAD_USER_INPUT", "invalid cursor"),
            Some((k, id)) => rows
                .iter()
                .position(|(rk, i)| {
                    let ord = (*rk, i.id.as_str()).cmp(&(k, id.as_str()));
                    if desc {
                        ord.is_lt()
                    } else {
                        ord.is_gt()
                    }
                })
                .unwrap_or(rows.len()),
        },
    };
    let end = (start + first as usize).min(rows.len());
    let page: Vec<&SimIssue> = rows[start..end].iter().map(|(_, i)| *i).collect();
    let mut has_next = end < rows.len();
    let mut cursor = rows[start..end]
        .last()
        .map(|(k, i)| encode_cursor(*k, &i.id));
    match mangle {
        Some(Fault::RepeatCursor) => {
            has_next = true;
            cursor = vars
                .after
                .clone()
                .or(cursor)
                .or(Some(encode_cursor(0, "loop")));
        }
        Some(Fault::MissingCursor) => {
            has_next = true;
            cursor = None;
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(64 + page.len() * 2048);
    out.extend_from_slice(b"{\"data\":{\"");
    out.extend_from_slice(alias.as_bytes());
    out.extend_from_slice(b"\":{\"nodes\":");
    out.push(b'[');
    for (n, issue) in page.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, issue).expect("serialize an issue");
        if let Some(payload) = &issue.hostile {
            // Into the node's object, verbatim: `...}` becomes `...,"hostilePayload":<payload>}`.
            out.pop();
            out.extend_from_slice(b",\"hostilePayload\":");
            out.extend_from_slice(payload.as_bytes());
            out.push(b'}');
        }
    }
    out.push(b']');
    out.extend_from_slice(b",\"pageInfo\":");
    serde_json::to_writer(
        &mut out,
        &PageInfo {
            has_next_page: has_next,
            end_cursor: cursor.as_deref(),
        },
    )
    .expect("serialize pageInfo");
    out.extend_from_slice(b"}}}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response()
}
