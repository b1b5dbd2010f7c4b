//! The `nats` sink against a real `nats-server -js` (Debian's package; `.ci/run` installs it):
//! every event is in the stream exactly once by `Nats-Msg-Id`, also when the connector replays.

mod common;

use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};

async fn stream_messages(url: &str) -> u64 {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream("WIZ_ISSUES").await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_in_the_stream_once_also_after_a_replay() {
    let nats = nats_server().await;
    let sim = sim(2, 20).await;
    let expected: u64 = open_ids(&sim).values().map(|s| s.len() as u64).sum();
    // Each call gives the connector a fresh state directory.
    let config = || {
        format!(
            "{}[sinks.bus]\ntype = \"nats\"\nurl = \"{}\"\n",
            sim_config(
                &sim,
                "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 5",
                "rate_limit = 50"
            ),
            nats.url
        )
    };
    let app = App::start(settings(&config()), AppOptions::default())
        .await
        .unwrap();
    wait_until("every tenant polled", Duration::from_secs(30), || {
        app.health.all().iter().all(|h| h.polls >= 1)
    })
    .await;
    assert_eq!(app.health.get("t0").unwrap().last_error, None);
    assert_eq!(stream_messages(&nats.url).await, expected);
    app.shutdown().await.unwrap();

    // A connector that lost its state replays every page with the same event ids: the stream
    // drops them all as duplicates.
    let app = App::start(settings(&config()), AppOptions::default())
        .await
        .unwrap();
    wait_until("every tenant polled again", Duration::from_secs(30), || {
        app.health.all().iter().all(|h| h.polls >= 1)
    })
    .await;
    assert_eq!(
        app.sink_stats
            .events
            .load(std::sync::atomic::Ordering::Relaxed),
        expected,
        "everything was sent again"
    );
    assert_eq!(
        stream_messages(&nats.url).await,
        expected,
        "and dropped by Nats-Msg-Id"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_start_error() {
    let port = free_port();
    let sim = sim(1, 3).await;
    let body = format!(
        "{}[sinks.bus]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\n",
        sim_config(&sim, "startup_jitter = \"1h\"", "")
    );
    let err = match App::start(settings(&body), AppOptions::default()).await {
        Ok(_) => panic!("started without NATS"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("sink `bus`") && err.contains("cannot connect to NATS"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_subject_prefix_gives_each_customer_its_own_subjects() {
    use futures_util::TryStreamExt;
    let nats = nats_server().await;
    let sim = sim(2, 6).await;
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1h\"\nstartup_jitter = \"0s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.bus]\ntype = \"nats\"\nurl = \"{}\"\nsubject_prefix = \"wiz.{{label.customer}}\"\nstream = \"WIZ_BY_CUSTOMER\"\n",
        state_dir().display(),
        nats.url
    );
    body.push_str(&customer_tenants(&sim, &["acme", "initech"]));
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("every tenant polled", Duration::from_secs(30), || {
        app.health.all().iter().all(|h| h.polls >= 1)
    })
    .await;
    let open = open_ids(&sim);
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("WIZ_BY_CUSTOMER").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, vec!["wiz.*.>".to_string()]);
    for (customer, tenant) in [("acme", "t0"), ("initech", "t1")] {
        let subject = format!("wiz.{customer}.{tenant}");
        let n = stream
            .info_with_subjects(subject.clone())
            .await
            .unwrap()
            .try_next()
            .await
            .unwrap()
            .map_or(0, |(_, n)| n);
        assert_eq!(n as usize, open[tenant].len(), "{subject}");
    }
    app.shutdown().await.unwrap();
}

#[test]
fn a_placeholder_inside_a_subject_token_is_refused() {
    let e = config_error(
        "[sinks.bus]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject_prefix = \"wiz-{tenant}\"\n",
    );
    assert!(
        e.contains("sinks.bus.subject_prefix") && e.contains("a placeholder must be a whole token"),
        "{e}"
    );
}
