//! The Issues query: the one place that names the fields requested from Wiz, and the variables.
//! Its answer is parsed in [`super::page`].
//!
//! Asking for a field Wiz has removed fails the whole query, so the field set is one constant,
//! easy to trim.

use serde::Serialize;

/// The fields requested for every Issue node (the set every peer connector requests). The three
/// rule types' `description`s are aliased, as every public client does: GraphQL refuses one
/// response name with two types (`String!` and `String`) in one selection set.
pub const ISSUE_FIELDS: &str = "
      id
      sourceRule {
        __typename
        ... on Control { id name controlDescription: description resolutionRecommendation
          securitySubCategories { title category { name framework { name } } } }
        ... on CloudEventRule { id name cloudEventRuleDescription: description sourceType type }
        ... on CloudConfigurationRule { id name cloudConfigurationRuleDescription: description
          remediationInstructions serviceType }
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

/// `filterBy` of the issues query. Empty parts are left out of the request. Also stored with a
/// sweep's position, so a resumed sweep asks exactly what it asked before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
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
    /// Not confirmed to exist on `issuesV2`: used only after a probe found Wiz accepts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<TimeRange>,
    /// Issue ids. One id is sent as a single value (the only shape public clients send), several
    /// as a list (WIZ_API.md: `filterBy.id` takes one id or a list).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "one_or_list",
        deserialize_with = "from_one_or_list"
    )]
    pub id: Vec<String>,
}

fn one_or_list<S: serde::Serializer>(ids: &[String], s: S) -> Result<S::Ok, S::Error> {
    match ids {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

fn from_one_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrList {
        One(String),
        List(Vec<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrList::One(s) => vec![s],
        OneOrList::List(v) => v,
    })
}

/// `{after, before}` of a time filter, RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
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
    fn one_id_is_sent_as_a_value_and_several_as_a_list() {
        let body = |ids: &[&str]| {
            let f = IssueFilter {
                id: ids.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let v: serde_json::Value =
                serde_json::from_slice(&request_body("q", &f, IssueOrder::CREATED_ASC, 1, None))
                    .unwrap();
            v["variables"]["filterBy"]["id"].clone()
        };
        assert_eq!(body(&["a"]), serde_json::json!("a"));
        assert_eq!(body(&["a", "b"]), serde_json::json!(["a", "b"]));
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
}
