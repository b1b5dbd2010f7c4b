//! Parse + normalize + serialize one 500-item page of each feed beyond Issues (criterion,
//! `Throughput::Elements` = items), generated with the simulator's feed generator.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wiz_connector::event::EventKind;
use wiz_connector::feeds::normalize::{decode, once_kind, states_kind, FeedNormalizer};
use wiz_connector::feeds::{ChangeRule, FeedName};
use wiz_connector::format::{Format, FormatSet, Lines};
use wiz_connector::sim::feed_data::FeedSets;
use wiz_connector::wiz::page::parse_feed_page;

const ITEMS: usize = 500;

fn page(feed: FeedName, sets: &FeedSets) -> Vec<u8> {
    let f = feed.feed().unwrap();
    let nodes: Vec<serde_json::Value> = match feed {
        FeedName::Vulnerabilities => sets
            .vulnerabilities
            .iter()
            .take(ITEMS)
            .map(|v| serde_json::json!(v))
            .collect(),
        FeedName::Detections => sets
            .detections
            .iter()
            .take(ITEMS)
            .map(|v| serde_json::json!(v))
            .collect(),
        FeedName::Audit => sets
            .audit
            .iter()
            .take(ITEMS)
            .map(|v| serde_json::json!(v))
            .collect(),
        _ => sets
            .configuration
            .iter()
            .take(ITEMS)
            .map(|v| serde_json::json!(v))
            .collect(),
    };
    assert_eq!(nodes.len(), ITEMS);
    serde_json::to_vec(&serde_json::json!({"data": {f.root: {
        "nodes": nodes,
        "pageInfo": {"hasNextPage": true, "endCursor": "djE6MTczNTY4OTYwMDAwMDAwMDppZA=="}
    }}}))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let sets = FeedSets::generate(2026, 2 * ITEMS);
    let mut g = c.benchmark_group("feeds");
    g.throughput(Throughput::Elements(ITEMS as u64));
    for feed in [
        FeedName::Vulnerabilities,
        FeedName::Detections,
        FeedName::Audit,
        FeedName::CloudConfiguration,
    ] {
        let bytes = page(feed, &sets);
        let f = feed.feed().unwrap();
        let mut n = FeedNormalizer::new("bench-tenant", "https://app.wiz.io");
        // Native alone, then native with each other format: the difference is that format's cost.
        for format in Format::ALL {
            let mut out = Lines::new(FormatSet::default().with(format));
            g.bench_with_input(
                BenchmarkId::new(format!("normalize/{}", format.as_str()), feed.as_str()),
                &bytes,
                |b, bytes| {
                    b.iter(|| {
                        out.reset(out.formats);
                        let page = parse_feed_page(Bytes::copy_from_slice(bytes), f.root).unwrap();
                        for raw in page.nodes() {
                            let item = decode(feed, raw).unwrap();
                            let fp = item.fingerprint();
                            let kind = match f.rule {
                                ChangeRule::States => states_kind(feed, EventKind::Opened),
                                ChangeRule::Once => once_kind(feed, &item),
                            };
                            n.write(
                                feed,
                                &item,
                                raw,
                                kind,
                                &fp,
                                None,
                                "2026-11-30T10:00:00.000Z",
                                &mut out,
                            );
                            out.end_event();
                        }
                        out.native.len() + out.ocsf.len() + out.ecs.len()
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
