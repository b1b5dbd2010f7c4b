//! The OCSF validator the `ocsf` output format's tests use (issue 21), checked against events
//! written by hand: a valid Detection Finding, and one mistake of each kind it must catch.

#[path = "support/ocsf.rs"]
mod ocsf;

use serde_json::{json, Value};

fn detection() -> Value {
    json!({
        "class_uid": 2004,
        "category_uid": 2,
        "activity_id": 1,
        "type_uid": 200401,
        "severity_id": 5,
        "severity": "Critical",
        "time": 1_767_225_600_000i64,
        "metadata": {
            "version": "1.8.0",
            "product": { "name": "Wiz", "vendor_name": "Wiz" },
            "uid": "0123456789abcdef0123456789abcdef",
            "tenant_uid": "acme"
        },
        "finding_info": { "uid": "issue-1", "title": "Exposed VM" },
        "resources": [{ "uid": "vm-1", "name": "web-1", "type": "VIRTUAL_MACHINE" }],
        "status_id": 1,
        "unmapped": { "wiz": { "project": "p1" } }
    })
}

/// A change that makes the valid event wrong.
type Mistake = Box<dyn Fn(&mut Value)>;

fn errors(event: &Value) -> Vec<String> {
    let schema = ocsf::Schema::bundled();
    schema.validate(event).errors
}

#[test]
fn a_valid_detection_finding_has_no_errors_and_nothing_undefined() {
    let schema = ocsf::Schema::bundled();
    assert_eq!(schema.version, "1.8.0");
    assert_eq!(schema.category("findings"), 2);
    let report = schema.validate(&detection());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.undefined.is_empty(), "{:?}", report.undefined);
}

#[test]
fn each_kind_of_mistake_is_an_error_naming_its_path() {
    let cases: Vec<(&str, Mistake)> = vec![
        (
            "class_uid: unknown class 2099",
            Box::new(|e| e["class_uid"] = json!(2099)),
        ),
        (
            "category_uid: 6 is not the class's category 2",
            Box::new(|e| e["category_uid"] = json!(6)),
        ),
        (
            "type_uid: 200402 is not class_uid * 100 + activity_id (200401)",
            Box::new(|e| e["type_uid"] = json!(200402)),
        ),
        (
            "finding_info.uid: required, missing",
            Box::new(|e| {
                e["finding_info"].as_object_mut().unwrap().remove("uid");
            }),
        ),
        (
            "metadata: required, missing",
            Box::new(|e| e["metadata"] = Value::Null),
        ),
        (
            "time: \"2026-01-01T00:00:00Z\" is not a timestamp_t (long_t)",
            Box::new(|e| e["time"] = json!("2026-01-01T00:00:00Z")),
        ),
        (
            "severity_id: 7 is not one of the enum's values",
            Box::new(|e| e["severity_id"] = json!(7)),
        ),
        (
            "resources[0]: constraint at_least_one of [\"name\", \"uid\"] fails (0 present)",
            Box::new(|e| e["resources"] = json!([{ "type": "VIRTUAL_MACHINE" }])),
        ),
        (
            "resources: not an array",
            Box::new(|e| e["resources"] = json!({ "uid": "vm-1" })),
        ),
        (
            "metadata.profiles: unknown profile `clouds`",
            Box::new(|e| e["metadata"]["profiles"] = json!(["clouds"])),
        ),
        (
            "cloud: required, missing",
            Box::new(|e| e["metadata"]["profiles"] = json!(["cloud"])),
        ),
    ];
    for (want, break_it) in cases {
        let mut e = detection();
        break_it(&mut e);
        let got = errors(&e);
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "expected `{want}` in {got:?}"
        );
    }
}

#[test]
fn undefined_attributes_are_told_apart_from_errors() {
    let schema = ocsf::Schema::bundled();
    let mut e = detection();
    e["wiz_severity"] = json!("CRITICAL");
    e["finding_info"]["wiz_rule"] = json!("r1");
    let report = schema.validate(&e);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.undefined, ["finding_info.wiz_rule", "wiz_severity"]);
}
