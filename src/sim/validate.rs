//! The simulator checks every GraphQL request as a GraphQL server would, before it answers:
//! the query is parsed and validated against the simulator's SDL of Wiz ([`SDL`],
//! `src/sim/wiz.graphql`) with apollo-compiler (unknown fields and arguments, argument and
//! variable types, fragments on the right types, field merging), then the request's variables
//! are coerced to the operation's variable types (enum values, lists, required inputs).
//!
//! Refusals use the error texts graphql-js gives (apollo-compiler's graphql-js compatible
//! messages), in Wiz's error shape: HTTP 200, `data: null`, code `GRAPHQL_VALIDATION_FAILED`
//! (the document) or `BAD_USER_INPUT` (the variables).
//!
//! A connector sends a handful of distinct query texts, so each text is validated once and the
//! outcome kept ([`CACHE_MAX`] texts at most; past that, texts are validated every time).

use std::sync::{Arc, OnceLock};

use apollo_compiler::executable::ExecutableDocument;
use apollo_compiler::validation::Valid;
use apollo_compiler::Schema;
use dashmap::DashMap;

/// The simulator's schema of Wiz: see the file's header for what is evidence and what is assumed.
pub const SDL: &str = include_str!("wiz.graphql");

/// How many distinct query texts keep their validation outcome.
const CACHE_MAX: usize = 1024;

/// Why a request was refused: the GraphQL error code and the messages, one per error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub messages: Vec<String>,
}

type Checked = Result<Arc<Valid<ExecutableDocument>>, Refusal>;

/// The schema, parsed and validated once, and the outcomes of the query texts seen.
pub struct Validator {
    schema: Valid<Schema>,
    seen: DashMap<String, Checked>,
}

/// The process's validator (the schema is parsed on first use).
pub fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator {
        schema: Schema::parse_and_validate(SDL, "wiz.graphql")
            .expect("src/sim/wiz.graphql is a valid schema (tested)"),
        seen: DashMap::new(),
    })
}

impl Validator {
    /// Checks one request: its query text, its variables (a JSON object or null) and the
    /// operation it names, if any.
    pub fn check(
        &self,
        query: &str,
        variables: &serde_json::Value,
        operation: Option<&str>,
    ) -> Result<(), Refusal> {
        let doc = match self.seen.get(query) {
            Some(c) => c.clone()?,
            None => {
                let checked = self.document(query);
                if self.seen.len() < CACHE_MAX {
                    self.seen.insert(query.to_string(), checked.clone());
                }
                checked?
            }
        };
        let op = doc.operations.get(operation).map_err(|e| Refusal {
            code: "GRAPHQL_VALIDATION_FAILED",
            messages: vec![e.message().to_string()],
        })?;
        let values = match variables {
            serde_json::Value::Null => Default::default(),
            serde_json::Value::Object(_) => {
                match serde_json::from_value::<apollo_compiler::response::JsonMap>(
                    variables.clone(),
                ) {
                    Ok(m) => m,
                    Err(e) => return Err(bad_input(format!("Variables are invalid JSON: {e}"))),
                }
            }
            _ => return Err(bad_input("Variables must be an object.".to_string())),
        };
        apollo_compiler::request::coerce_variable_values(&self.schema, op, &values)
            .map(|_| ())
            .map_err(|e| bad_input(e.message().to_string()))
    }

    fn document(&self, query: &str) -> Checked {
        ExecutableDocument::parse_and_validate(&self.schema, query, "query.graphql")
            .map(Arc::new)
            .map_err(|with| Refusal {
                code: "GRAPHQL_VALIDATION_FAILED",
                messages: with
                    .errors
                    .iter()
                    .map(|d| d.unstable_to_json_compat().message)
                    .collect(),
            })
    }
}

fn bad_input(message: String) -> Refusal {
    Refusal {
        code: "BAD_USER_INPUT",
        messages: vec![message],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(query: &str, vars: serde_json::Value) -> Result<(), Refusal> {
        validator().check(query, &vars, None)
    }

    #[test]
    fn the_connectors_own_queries_and_mutations_pass() {
        let issues = crate::wiz::issues::query_text();
        check(
            &issues,
            json!({"first": 500, "after": "c1", "filterBy": {"status": ["OPEN"], "id": "i-1",
                "statusChangedAt": {"after": "2026-01-01T00:00:00Z"}},
                "orderBy": {"field": "CREATED_AT", "direction": "ASC"}}),
        )
        .unwrap();
        for feed in crate::feeds::FEEDS.iter() {
            let window = crate::feeds::Window {
                after: Some("2026-01-01T00:00:00Z".into()),
                before: "2026-01-02T00:00:00Z".into(),
            };
            let body: serde_json::Value =
                serde_json::from_str(&feed.request(&window, 10, Some("c"))).unwrap();
            check(body["query"].as_str().unwrap(), body["variables"].clone())
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", feed.name));
        }
        use crate::writeback::{mutation, Action};
        let note = Some("n".to_string());
        let actions = [
            Action::Reject {
                reason: "WONT_FIX".into(),
                note: note.clone(),
            },
            Action::Resolve {
                reason: "MALICIOUS_THREAT".into(),
                note: note.clone(),
            },
            Action::Reopen { note },
            Action::Note { text: "t".into() },
            Action::SetDueDate {
                date: "2026-12-31".into(),
            },
        ];
        for body in actions.iter().map(|a| mutation(a, "i-1")) {
            check(body["query"].as_str().unwrap(), body["variables"].clone())
                .unwrap_or_else(|e| panic!("{body}: {e:?}"));
        }
    }

    #[test]
    fn an_unaliased_description_across_the_rule_types_is_refused() {
        let q = "query { issuesV2 { nodes { sourceRule { ... on Control { description } ... on CloudConfigurationRule { description } } } } }";
        let e = check(q, json!(null)).unwrap_err();
        assert_eq!(e.code, "GRAPHQL_VALIDATION_FAILED");
        assert!(
            e.messages[0].starts_with(
                r#"Fields "description" conflict because they return conflicting types"#
            ),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_argument_types_are_refused_with_graphql_js_texts() {
        let e = check(
            "query { vulnerabilityFindings { nodes { id updatedAt } } }",
            json!(null),
        )
        .unwrap_err();
        assert_eq!(
            e.messages,
            vec![r#"Cannot query field "updatedAt" on type "VulnerabilityFinding"."#]
        );
        let e = check(
            r#"query { issuesV2(first: "ten") { nodes { id } } }"#,
            json!(null),
        )
        .unwrap_err();
        assert_eq!(e.code, "GRAPHQL_VALIDATION_FAILED");
        assert!(e.messages[0].contains("Int cannot represent"), "{e:?}");
        let e = check(
            "query Q($f: IssueFilters) { issuesV2(filterBy: $f) { nodes { id } } }",
            json!({"f": {"status": ["OPENED"]}}),
        )
        .unwrap_err();
        assert_eq!(e.code, "BAD_USER_INPUT");
        assert!(e.messages[0].contains("OPENED"), "{e:?}");
    }
}
