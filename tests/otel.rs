//! OTLP export: `run` sends a span per poll, per page and per sink write, each carrying the
//! tenant id, and the same counters and state gauges as `/metrics`, to an OTLP/HTTP receiver (decoded with the
//! OpenTelemetry protobuf types).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value as Number};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_spans_and_counters_over_otlp_with_the_tenant() {
    // The receiver.
    let got: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
    let got_metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>> = Arc::default();
    let sink = got.clone();
    let metric_sink = got_metrics.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    sink.lock().unwrap().push(req);
                    ""
                }
            }),
        )
        .route(
            "/v1/metrics",
            post(move |body: Bytes| {
                let sink = metric_sink.clone();
                async move {
                    let req = ExportMetricsServiceRequest::decode(body).expect("OTLP protobuf");
                    sink.lock().unwrap().push(req);
                    ""
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sim = sim(1, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let body = format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[telemetry]\notlp_endpoint = \"http://{collector}\"\n",
        sim_config(&sim, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 5", ""),
        path.display()
    );
    let cfg = write_config(&body);
    let mut child = spawn_run(&cfg.path);
    let open = open_ids(&sim)["t0"].len();
    wait_until("every event delivered", Duration::from_secs(30), || {
        read_lines(&path).len() >= open
    })
    .await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);

    // Spans are flushed at shutdown.
    let requests = got.lock().unwrap().clone();
    let mut spans = Vec::new();
    for r in &requests {
        for rs in &r.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|a| a.key == "service.name");
            assert_eq!(
                service
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| v.value.clone()),
                Some(AnyValue::StringValue("wiz-connector".into()))
            );
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let tenant_of = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        s.attributes
            .iter()
            .find(|a| a.key == "tenant")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    let named = |n: &str| spans.iter().filter(|s| s.name == n).collect::<Vec<_>>();
    let polls = named("poll");
    let pages = named("page");
    let writes = named("sink_write");
    assert_eq!(
        polls.len(),
        1,
        "one poll: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let expected_pages = open.div_ceil(5);
    assert!(
        pages.len() >= expected_pages,
        "{} pages for {open} issues",
        pages.len()
    );
    assert_eq!(
        writes.len(),
        expected_pages,
        "one sink write per page with events"
    );
    for s in polls.iter().chain(&pages).chain(&writes) {
        assert_eq!(
            tenant_of(s),
            Some(AnyValue::StringValue("t0".into())),
            "{}",
            s.name
        );
    }
    for p in &pages {
        assert_eq!(
            p.parent_span_id, polls[0].span_id,
            "pages are children of their poll"
        );
        assert_eq!(p.trace_id, polls[0].trace_id);
    }

    // The same counters reach the collector over OTLP (pushed at shutdown at the latest).
    let metrics = got_metrics.lock().unwrap().clone();
    let named_metrics = |name: &str| {
        metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .filter(|m| m.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut events_for_t0 = None;
    for m in &named_metrics("wiz_connector.events") {
        let Some(Data::Sum(sum)) = &m.data else {
            panic!("events is a sum")
        };
        for p in &sum.data_points {
            let has = |k: &str, v: &str| {
                p.attributes.iter().any(|a| {
                    a.key == k
                        && a.value.as_ref().and_then(|x| x.value.clone())
                            == Some(AnyValue::StringValue(v.into()))
                })
            };
            if has("tenant", "t0") && has("kind", "issue.opened") {
                events_for_t0 = match p.value {
                    Some(Number::AsInt(n)) => Some(n),
                    _ => None,
                };
            }
        }
    }
    assert_eq!(
        events_for_t0,
        Some(open as i64),
        "wiz_connector.events over OTLP"
    );

    // The tenant's state as a gauge: in every export, exactly one of the six states is 1.
    let mut exports_with_state = 0;
    for m in &named_metrics("wiz_connector.tenant_state") {
        let Some(Data::Gauge(g)) = &m.data else {
            panic!("tenant_state is a gauge")
        };
        let values: Vec<i64> = g
            .data_points
            .iter()
            .filter(|p| {
                p.attributes.iter().any(|a| {
                    a.key == "tenant"
                        && a.value.as_ref().and_then(|x| x.value.clone())
                            == Some(AnyValue::StringValue("t0".into()))
                })
            })
            .map(|p| match p.value {
                Some(Number::AsInt(n)) => n,
                _ => panic!("an integer gauge"),
            })
            .collect();
        assert_eq!(values.len(), 6, "one point per state");
        assert_eq!(values.iter().sum::<i64>(), 1, "{values:?}");
        exports_with_state += 1;
    }
    assert!(
        exports_with_state >= 1,
        "wiz_connector.tenant_state over OTLP"
    );
}
