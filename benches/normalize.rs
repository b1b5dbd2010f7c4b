//! Parse + normalize + serialize one page of Issues, next to a baseline that only deserializes the
//! same bytes into borrowed structs.
//!
//! `WIZ_BENCH_PAGE=/path/to/response.json cargo bench --bench normalize` measures that page;
//! without it a realistic 500-issue page is generated with the simulator's issue generator.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Deserialize;
use wiz_connector::event::{issue_fingerprint, Normalizer};
use wiz_connector::format::{Format, FormatSet, Lines};
use wiz_connector::sim::IssueSet;
use wiz_connector::wiz::page::JStr;
use wiz_connector::wiz::parse_page;

fn page_bytes() -> Vec<u8> {
    if let Ok(path) = std::env::var("WIZ_BENCH_PAGE") {
        return std::fs::read(&path).unwrap_or_else(|e| panic!("WIZ_BENCH_PAGE={path}: {e}"));
    }
    let set = IssueSet::generate(2026, 500);
    let body = serde_json::json!({"data": {"issues": {
        "nodes": set.issues,
        "pageInfo": {"hasNextPage": true, "endCursor": "djE6MTczNTY4OTYwMDAwMDAwMDppZA=="}
    }}});
    serde_json::to_vec(&body).unwrap()
}

// The baseline: the same modelled fields, borrowed (`JStr` borrows every string without an
// escape sequence), no normalization, no output.
#[allow(dead_code)]
#[derive(Deserialize)]
struct BEnvelope<'a> {
    #[serde(borrow)]
    data: BData<'a>,
}
#[allow(dead_code)]
#[derive(Deserialize)]
struct BData<'a> {
    #[serde(borrow)]
    issues: BConn<'a>,
}
#[allow(dead_code)]
#[derive(Deserialize)]
struct BConn<'a> {
    #[serde(borrow)]
    nodes: Vec<BIssue<'a>>,
    #[serde(rename = "pageInfo")]
    page_info: BPageInfo,
}
#[allow(dead_code)]
#[derive(Deserialize)]
struct BPageInfo {
    #[serde(rename = "hasNextPage")]
    has_next_page: bool,
    #[serde(rename = "endCursor")]
    end_cursor: Option<String>,
}
#[allow(dead_code)]
#[derive(Deserialize)]
struct BIssue<'a> {
    #[serde(borrow)]
    id: JStr<'a>,
    #[serde(borrow)]
    status: JStr<'a>,
    #[serde(borrow)]
    severity: Option<JStr<'a>>,
    #[serde(borrow, rename = "type")]
    issue_type: Option<JStr<'a>>,
    #[serde(borrow, rename = "createdAt")]
    created_at: Option<JStr<'a>>,
    #[serde(borrow, rename = "updatedAt")]
    updated_at: Option<JStr<'a>>,
    #[serde(borrow, rename = "statusChangedAt")]
    status_changed_at: Option<JStr<'a>>,
    #[serde(borrow, rename = "sourceRule")]
    source_rule: Option<BNamed<'a>>,
    #[serde(borrow, rename = "entitySnapshot")]
    entity: Option<BEntity<'a>>,
    #[serde(borrow)]
    projects: Option<Vec<BNamed<'a>>>,
}
#[allow(dead_code)]
#[derive(Deserialize)]
struct BNamed<'a> {
    #[serde(borrow)]
    name: Option<JStr<'a>>,
}
#[allow(dead_code)]
#[derive(Deserialize)]
struct BEntity<'a> {
    #[serde(borrow)]
    id: Option<JStr<'a>>,
    #[serde(borrow)]
    name: Option<JStr<'a>>,
    #[serde(borrow, rename = "type")]
    entity_type: Option<JStr<'a>>,
    #[serde(borrow, rename = "nativeType")]
    native_type: Option<JStr<'a>>,
    #[serde(borrow, rename = "cloudPlatform")]
    cloud_platform: Option<JStr<'a>>,
    #[serde(borrow)]
    region: Option<JStr<'a>>,
    #[serde(borrow, rename = "subscriptionExternalId")]
    subscription_id: Option<JStr<'a>>,
    #[serde(borrow, rename = "subscriptionName")]
    subscription_name: Option<JStr<'a>>,
    #[serde(borrow, rename = "providerId")]
    provider_id: Option<JStr<'a>>,
    #[serde(borrow, rename = "cloudProviderURL")]
    cloud_provider_url: Option<JStr<'a>>,
}

fn bench(c: &mut Criterion) {
    let raw = page_bytes();
    let body = Bytes::from(raw.clone());
    let issues = parse_page(body.clone())
        .expect("the bench page parses")
        .len() as u64;
    eprintln!("bench page: {} issues, {} bytes", issues, raw.len());

    let mut group = c.benchmark_group("page");
    group.throughput(Throughput::Elements(issues));
    group.bench_with_input(BenchmarkId::new("normalize", issues), &body, |b, body| {
        let mut n = Normalizer::with_console("bench", "https://app.wiz.io");
        let mut out = Vec::with_capacity(body.len() * 2);
        b.iter(|| {
            out.clear();
            let page = parse_page(body.clone()).unwrap();
            let observed = "2026-11-24T00:00:00.000Z";
            for issue in page.issues() {
                n.normalize(&issue.unwrap(), None, observed, &mut out);
                out.push(b'\n');
            }
            std::hint::black_box(out.len())
        })
    });
    // Native with each other format: the difference from `normalize` is that format's cost.
    for format in [Format::Ocsf, Format::Ecs] {
        group.bench_with_input(
            BenchmarkId::new(format!("normalize+{}", format.as_str()), issues),
            &body,
            |b, body| {
                let mut n = Normalizer::with_console("bench", "https://app.wiz.io");
                let mut out = Lines::new(FormatSet::default().with(format));
                b.iter(|| {
                    out.reset(out.formats);
                    let page = parse_page(body.clone()).unwrap();
                    let observed = "2026-11-24T00:00:00.000Z";
                    for issue in page.issues() {
                        let issue = issue.unwrap();
                        let fp = issue_fingerprint(&issue);
                        n.normalize_with(&issue, None, &fp, None, observed, &mut out);
                        out.end_event();
                    }
                    std::hint::black_box(out.native.len() + out.ocsf.len() + out.ecs.len())
                })
            },
        );
    }
    group.bench_with_input(
        BenchmarkId::new("baseline_deserialize", issues),
        &raw,
        |b, raw| {
            b.iter(|| {
                let env: BEnvelope<'_> = serde_json::from_slice(raw).unwrap();
                std::hint::black_box(env.data.issues.nodes.len())
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches, parts_benches);
fn parts(c: &mut Criterion) {
    let raw = page_bytes();
    let body = Bytes::from(raw.clone());
    let page = parse_page(body.clone()).unwrap();
    let mut g = c.benchmark_group("parts");
    g.bench_function("parse_page", |b| {
        b.iter(|| parse_page(body.clone()).unwrap().len())
    });
    g.bench_function("normalize_only", |b| {
        let mut n = Normalizer::with_console("bench", "https://app.wiz.io");
        let mut out = Vec::with_capacity(body.len() * 2);
        b.iter(|| {
            out.clear();
            for issue in page.issues() {
                n.normalize(&issue.unwrap(), None, "x", &mut out);
            }
            out.len()
        })
    });
    g.bench_function("fields_only", |b| {
        b.iter(|| {
            let mut k = 0;
            for node in page.raw_nodes() {
                let v: BIssue<'_> = serde_json::from_str(node).unwrap();
                k += v.id.len();
            }
            k
        })
    });
    g.finish();
}
criterion_group!(parts_benches, parts);
