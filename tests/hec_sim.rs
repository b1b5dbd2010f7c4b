//! The Splunk HEC simulator (issue 22) answers as Splunk's documentation says: tokens, envelopes
//! back to back, gzip, the status codes, the content limit, and indexer acknowledgement with its
//! channels, late and lost acknowledgements.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use wiz_connector::sim::hec::{HecOptions, HecSimulator};

const TOKEN: &str = "00000000-0000-4000-8000-000000000001";
const CHANNEL: &str = "0aa5c5a1-1b2c-4d3e-8f90-a1b2c3d4e5f6";

async fn hec(opts: HecOptions) -> (HecSimulator, reqwest::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = HecSimulator::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    (sim, reqwest::Client::new())
}

async fn post(
    http: &reqwest::Client,
    url: String,
    auth: Option<&str>,
    channel: Option<&str>,
    body: Vec<u8>,
    gzip: bool,
) -> (u16, Value) {
    let mut req = http.post(url).body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(c) = channel {
        req = req.header("x-splunk-request-channel", c);
    }
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn envelopes(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn events_are_indexed_and_every_documented_refusal_has_its_code() {
    let (sim, http) = hec(HecOptions {
        indexes: vec!["wiz".into()],
        max_content_length: 2000,
        ..Default::default()
    })
    .await;
    let url = format!("{}/services/collector/event", sim.base());
    let auth = format!("Splunk {TOKEN}");
    let ok = |n: u32| json!({"time": 1767225600.123, "index": "wiz", "sourcetype": "wiz:issues", "source": "wiz-connector", "host": "h", "event": {"n": n}});

    // Two envelopes back to back, then the same gzip-compressed.
    let (status, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        None,
        envelopes(&[ok(1), ok(2)]),
        false,
    )
    .await;
    assert_eq!((status, body), (200, json!({"text": "Success", "code": 0})));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&envelopes(&[ok(3)])).unwrap();
    let (status, _) = post(
        &http,
        url.clone(),
        Some(&auth),
        None,
        gz.finish().unwrap(),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let events = sim.events();
    assert_eq!(
        events
            .iter()
            .map(|e| e.event["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[0].index.as_deref(), Some("wiz"));
    assert_eq!(events[0].sourcetype.as_deref(), Some("wiz:issues"));
    assert_eq!(events[0].time, Some(json!(1767225600.123)));

    let cases: Vec<(Option<String>, Vec<u8>, u16, Value)> = vec![
        (
            None,
            envelopes(&[ok(9)]),
            401,
            json!({"text": "Token is required", "code": 2}),
        ),
        (
            Some(format!("Bearer {TOKEN}")),
            envelopes(&[ok(9)]),
            401,
            json!({"text": "Invalid authorization", "code": 3}),
        ),
        (
            Some("Splunk wrong".into()),
            envelopes(&[ok(9)]),
            403,
            json!({"text": "Invalid token", "code": 4}),
        ),
        (
            Some(auth.clone()),
            b"  ".to_vec(),
            400,
            json!({"text": "No data", "code": 5}),
        ),
        (
            Some(auth.clone()),
            b"{\"event\": ".to_vec(),
            400,
            json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
        ),
        (
            Some(auth.clone()),
            envelopes(&[ok(4), json!({"index": "nope", "event": 1})]),
            400,
            json!({"text": "Incorrect index", "code": 7, "invalid-event-number": 1}),
        ),
        (
            Some(auth.clone()),
            envelopes(&[json!({"time": 1})]),
            400,
            json!({"text": "Event field is required", "code": 12, "invalid-event-number": 0}),
        ),
        (
            Some(auth.clone()),
            envelopes(&[json!({"event": ""})]),
            400,
            json!({"text": "Event field cannot be blank", "code": 13, "invalid-event-number": 0}),
        ),
    ];
    for (auth, body, want_status, want) in cases {
        let (status, got) = post(&http, url.clone(), auth.as_deref(), None, body, false).await;
        assert_eq!((status, got), (want_status, want));
    }
    // The envelope before the bad one was indexed, as HEC does.
    assert_eq!(sim.events().last().unwrap().event, json!({"n": 4}));

    // Past the content limit: 413.
    let big = envelopes(&[json!({"event": "x".repeat(3000)})]);
    let (status, text) = post(&http, url.clone(), Some(&auth), None, big, false).await;
    assert_eq!(status, 413);
    assert!(text.as_str().unwrap().contains("maximum is 2000"), "{text}");

    // Busy: 503 code 9 (and the health endpoint says so), then it takes events again.
    sim.set_busy(1);
    let health = http
        .get(format!("{}/services/collector/health", sim.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let (status, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        None,
        envelopes(&[ok(5)]),
        false,
    )
    .await;
    assert_eq!(
        (status, body),
        (503, json!({"text": "Server is busy", "code": 9}))
    );
    let (status, _) = post(
        &http,
        url.clone(),
        Some(&auth),
        None,
        envelopes(&[ok(5)]),
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.counters().busy, 1);
    // Without acknowledgement on, the ack endpoint says so.
    let (status, body) = post(
        &http,
        format!("{}/services/collector/ack", sim.base()),
        Some(&auth),
        Some(CHANNEL),
        br#"{"acks":[0]}"#.to_vec(),
        false,
    )
    .await;
    assert_eq!(
        (status, body),
        (400, json!({"text": "ACK is disabled", "code": 14}))
    );
}

#[tokio::test]
async fn with_acknowledgement_events_count_only_once_acknowledged_and_lost_ones_never() {
    let (sim, http) = hec(HecOptions {
        ack: true,
        ..Default::default()
    })
    .await;
    let url = format!("{}/services/collector/event", sim.base());
    let ack_url = format!("{}/services/collector/ack", sim.base());
    let auth = format!("Splunk {TOKEN}");
    let one = |n: u32| envelopes(&[json!({"event": {"n": n}})]);

    let (status, body) = post(&http, url.clone(), Some(&auth), None, one(1), false).await;
    assert_eq!(
        (status, body),
        (400, json!({"text": "Data channel is missing", "code": 10}))
    );
    let (status, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        Some("not-a-guid"),
        one(1),
        false,
    )
    .await;
    assert_eq!(
        (status, body),
        (400, json!({"text": "Invalid data channel", "code": 11}))
    );

    // Late acknowledgements: false until the delay has passed, then true once, then forgotten.
    // (Held back until released below, so the "not yet" answers do not race the clock.)
    sim.set_ack_delay(Duration::from_secs(3600));
    let (status, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        Some(CHANNEL),
        one(1),
        false,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"text": "Success", "code": 0, "ackId": 0}))
    );
    let (_, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        Some(CHANNEL),
        one(2),
        false,
    )
    .await;
    assert_eq!(body["ackId"], 1);
    let query = |ids: &str| {
        post(
            &http,
            ack_url.clone(),
            Some(&auth),
            Some(CHANNEL),
            format!("{{\"acks\":{ids}}}").into_bytes(),
            false,
        )
    };
    let (status, body) = query("[0,1]").await;
    assert_eq!(
        (status, body),
        (200, json!({"acks": {"0": false, "1": false}}))
    );
    assert!(sim.events().is_empty(), "not indexed before acknowledged");
    sim.set_ack_delay(Duration::ZERO);
    let start = std::time::Instant::now();
    loop {
        let (_, body) = query("[0,1]").await;
        if body == json!({"acks": {"0": true, "1": true}}) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never acknowledged: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.events().len(), 2);
    let (_, body) = query("[0]").await;
    assert_eq!(
        body,
        json!({"acks": {"0": false}}),
        "an id reported true is forgotten"
    );

    // A lost acknowledgement: never true, its event never indexed.
    sim.set_ack_delay(Duration::ZERO);
    sim.lose_acks(1);
    let (_, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        Some(CHANNEL),
        one(3),
        false,
    )
    .await;
    assert_eq!(body["ackId"], 2);
    let (_, body) = post(
        &http,
        url.clone(),
        Some(&auth),
        Some(CHANNEL),
        one(4),
        false,
    )
    .await;
    assert_eq!(body["ackId"], 3);
    let (_, body) = query("[2,3]").await;
    assert_eq!(body, json!({"acks": {"2": false, "3": true}}));
    let ns: Vec<u64> = sim
        .events()
        .iter()
        .map(|e| e.event["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2, 4]);
    // Channels count their ids apart.
    let other = "11111111-2222-4333-8444-555555555555";
    let (_, body) = post(&http, url.clone(), Some(&auth), Some(other), one(5), false).await;
    assert_eq!(body["ackId"], 0);
    assert_eq!(sim.events().last().unwrap().channel.as_deref(), Some(other));
}
