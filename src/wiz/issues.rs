//! The Issues query: the one place that names the fields requested from Wiz, the variables, and the
//! parsing of an answer into a [`Page`].
//!
//! Asking for a field Wiz has removed fails the whole query, so the field set is one constant,
//! easy to trim.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{snippet, WizError};

/// The fields requested for every Issue node (the set every peer connector requests).
pub const ISSUE_FIELDS: &str = "
      id
      sourceRule {
        __typename
        ... on Control { id name description resolutionRecommendation
          securitySubCategories { title category { name framework { name } } } }
        ... on CloudEventRule { id name description sourceType type }
        ... on CloudConfigurationRule { id name description remediationInstructions serviceType }
      }
      createdAt
      updatedAt
      dueAt
      resolvedAt
      statusChangedAt
      type
      projects { id name slug businessUnit riskProfile { businessImpact } }
      status
      severity
      entitySnapshot { id type nativeType name status cloudPlatform cloudProviderURL providerId
        region resourceGroupExternalId subscriptionExternalId subscriptionName subscriptionTags
        tags externalId createdAt }
      serviceTickets { externalId name url }
      notes { createdAt updatedAt text user { name email } serviceAccount { name } }";

/// The query text: `issuesV2` under the alias `issues`, as every current connector sends it.
pub fn query_text() -> String {
    format!(
        "query IssuesTable($filterBy: IssueFilters, $first: Int, $after: String, $orderBy: IssueOrder) {{
  issues: issuesV2(filterBy: $filterBy, first: $first, after: $after, orderBy: $orderBy) {{
    nodes {{{ISSUE_FIELDS}
    }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}"
    )
}

/// `filterBy` of the issues query. Empty parts are left out of the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueFilter {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<String>,
    #[serde(rename = "type", skip_serializing_if = "Vec::is_empty")]
    pub issue_type: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_changed_at: Option<TimeRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<TimeRange>,
}

/// `{after, before}` of a time filter, RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TimeRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// `orderBy` of the issues query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IssueOrder {
    pub field: &'static str,
    pub direction: &'static str,
}

impl IssueOrder {
    /// Oldest first by creation: stable under new issues arriving during a sweep.
    pub const CREATED_ASC: IssueOrder = IssueOrder {
        field: "CREATED_AT",
        direction: "ASC",
    };
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Variables<'a> {
    first: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<&'a str>,
    filter_by: &'a IssueFilter,
    order_by: IssueOrder,
}

/// The JSON body of one issues request.
pub fn request_body(
    query: &str,
    filter: &IssueFilter,
    order: IssueOrder,
    first: u32,
    after: Option<&str>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        query: &'a str,
        variables: Variables<'a>,
    }
    serde_json::to_vec(&Body {
        query,
        variables: Variables {
            first,
            after,
            filter_by: filter,
            order_by: order,
        },
    })
    .expect("serializing plain structs cannot fail")
}

/// One page of Issues as Wiz sent it: the body, kept whole, and where each node is in it, so each
/// node can be forwarded byte for byte as `raw_event`.
#[derive(Debug, Clone)]
pub struct Page {
    body: Bytes,
    nodes: Vec<Range<usize>>,
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

impl Page {
    /// Each Issue node's JSON text, exactly as received.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        // The body was checked to be UTF-8 and the ranges come from the parser, so this holds.
        let text = std::str::from_utf8(&self.body).unwrap_or_default();
        self.nodes.iter().map(move |r| &text[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Size of the response body in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
    #[serde(default)]
    errors: Option<Vec<GraphQlError>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    issues: Option<Connection<'a>>,
}

#[derive(Deserialize)]
struct Connection<'a> {
    #[serde(borrow)]
    nodes: Vec<&'a RawValue>,
    #[serde(rename = "pageInfo")]
    page_info: PageInfo,
}

#[derive(Deserialize)]
struct PageInfo {
    #[serde(rename = "hasNextPage")]
    has_next_page: bool,
    #[serde(rename = "endCursor", default)]
    end_cursor: Option<String>,
}

#[derive(Deserialize)]
struct GraphQlError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    extensions: Option<Extensions>,
}

#[derive(Deserialize)]
struct Extensions {
    #[serde(default)]
    code: Option<String>,
}

/// Parses an HTTP 200 answer of the issues query. Any shape other than the expected one is an
/// error, never a panic: the body may be anything.
pub fn parse_page(body: Bytes) -> Result<Page, WizError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| WizError::BadResponse(format!("body is not UTF-8: {}", snippet(&body))))?;
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        WizError::BadResponse(format!("not a GraphQL answer ({e}): {}", snippet(&body)))
    })?;
    if let Some(errors) = env.errors.filter(|e| !e.is_empty()) {
        let first = &errors[0];
        let code = first
            .extensions
            .as_ref()
            .and_then(|x| x.code.clone())
            .unwrap_or_else(|| "UNKNOWN".to_string());
        let mut message = first.message.clone().unwrap_or_default();
        if errors.len() > 1 {
            message.push_str(&format!(" (and {} more errors)", errors.len() - 1));
        }
        return Err(WizError::GraphQl { code, message });
    }
    let conn = env
        .data
        .and_then(|d| d.issues)
        .ok_or_else(|| WizError::BadResponse("answer has no data.issues".into()))?;
    let base = text.as_ptr() as usize;
    let mut nodes = Vec::with_capacity(conn.nodes.len());
    for n in &conn.nodes {
        let s = n.get();
        if !s.starts_with('{') {
            return Err(WizError::BadResponse(format!(
                "an issue node is not an object: {}",
                snippet(s.as_bytes())
            )));
        }
        let start = s.as_ptr() as usize - base;
        nodes.push(start..start + s.len());
    }
    Ok(Page {
        nodes,
        has_next_page: conn.page_info.has_next_page,
        end_cursor: conn.page_info.end_cursor,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_uses_the_alias_and_pagination() {
        let q = query_text();
        assert!(q.contains("issues: issuesV2(filterBy: $filterBy, first: $first, after: $after"));
        assert!(q.contains("pageInfo { hasNextPage endCursor }"));
        assert!(q.contains("... on CloudConfigurationRule"));
    }

    #[test]
    fn variables_leave_out_empty_filters() {
        let f = IssueFilter {
            status: vec!["OPEN".into()],
            ..Default::default()
        };
        let body = request_body("q", &f, IssueOrder::CREATED_ASC, 500, Some("c1"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["variables"],
            serde_json::json!({"first": 500, "after": "c1", "filterBy": {"status": ["OPEN"]},
                "orderBy": {"field": "CREATED_AT", "direction": "ASC"}})
        );
    }

    #[test]
    fn nodes_are_kept_byte_for_byte() {
        let body = br#"{"data":{"issues":{"nodes":[ {"id":"a", "x" : [1, 2]},{"id":"\u00e9"} ],"pageInfo":{"hasNextPage":true,"endCursor":"c"}}}}"#;
        let p = parse_page(Bytes::from_static(body)).unwrap();
        let nodes: Vec<&str> = p.nodes().collect();
        assert_eq!(
            nodes,
            vec![r#"{"id":"a", "x" : [1, 2]}"#, r#"{"id":"\u00e9"}"#]
        );
        assert!(p.has_next_page);
        assert_eq!(p.end_cursor.as_deref(), Some("c"));
    }

    #[test]
    fn graphql_errors_fail_the_page_with_code_and_message() {
        let body = br#"{"errors":[{"message":"'first' must be less than or equal to 500","extensions":{"code":"BAD_USER_INPUT"}}],"data":null}"#;
        let e = parse_page(Bytes::from_static(body)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wiz GraphQL error BAD_USER_INPUT: 'first' must be less than or equal to 500"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn non_object_nodes_and_missing_data_are_errors() {
        for body in [
            &br#"{"data":{"issues":{"nodes":[null],"pageInfo":{"hasNextPage":false}}}}"#[..],
            br#"{"data":{}}"#,
            br#"{"data":null}"#,
            b"<html>oops</html>",
            b"\xff\xfe",
        ] {
            assert!(matches!(
                parse_page(Bytes::copy_from_slice(body)),
                Err(WizError::BadResponse(_))
            ));
        }
    }
}
