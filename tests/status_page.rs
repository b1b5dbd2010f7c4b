//! The status page (`GET /`) rendered in headless Chromium (Debian's `chromium`; `scripts/test`
//! installs it): the DOM lists the tenants worst first, with their state, and the page filters by
//! state and searches by id from its URL. Also: the page and the API take the admin token as HTTP
//! Basic (what a browser sends).

mod common;

use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium is not installed: run scripts/test (it installs Debian's chromium) or `apt-get install chromium`")
}

/// The DOM of `url` after its scripts ran (virtual time lets the page's requests finish).
async fn dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=8000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium answered within 90 s")
    .unwrap();
    let html = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        html.contains("<tbody id=\"tenants\">"),
        "no page rendered: {}\n{}",
        html,
        String::from_utf8_lossy(&out.stderr)
    );
    html
}

/// `(tenant, state)` of every row, in order.
fn rows(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[start..start + tag[start..].find('"')?].to_string())
    };
    html.split("<tr ")
        .skip(1)
        .filter_map(|tr| {
            let tag = &tr[..tr.find('>')?];
            Some((attr(tag, "data-tenant")?, attr(tag, "data-state")?))
        })
        .collect()
}

/// The number shown for `state` in the header.
fn count(html: &str, state: &str) -> u64 {
    let at = html
        .find(&format!("id=\"count-{state}\""))
        .unwrap_or_else(|| panic!("no count for {state}"));
    let b = at + html[at..].find("<b>").unwrap() + 3;
    html[b..b + html[b..].find('<').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_tenants_worst_first_and_filters_by_state_and_id() {
    // t2 also collects audit entries, which Wiz refuses its service account.
    let mut t2 = wiz_connector::sim::SimTenantSpec::numbered(2, 42, 5);
    t2.denied_feeds = vec!["audit".into()];
    let sim = sim_with(wiz_connector::sim::SimulatorOptions {
        tenants: vec![
            wiz_connector::sim::SimTenantSpec::numbered(0, 42, 5),
            wiz_connector::sim::SimTenantSpec::numbered(1, 42, 5),
            t2,
        ],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // t1's secret is wrong: it waits in backoff with the reason.
    let secret = sim.tenants()[1].client_secret.clone();
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(&sim, "poll_interval = \"60s\"\nstartup_jitter = \"0s\"", "")
            .replace(&secret, "not-the-secret-at-all")
            .replace(
                "[tenants.t2]\n",
                "[tenants.t2]\nfeeds = [\"issues\", \"audit\"]\n"
            ),
        dir.path().join("events.jsonl").display()
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until(
        "t0, t2 idle and t1 in backoff",
        Duration::from_secs(30),
        || {
            let s = |id: &str| app.health.get(id).map(|h| h.state.as_str());
            let audit_denied = app.health.get("t2").is_some_and(|h| {
                h.feeds.iter().any(|f| {
                    f.feed == "audit" && f.state == wiz_connector::health::FeedState::Denied
                })
            });
            s("t0") == Some("idle")
                && s("t2") == Some("idle")
                && s("t1") == Some("backoff")
                && audit_denied
        },
    )
    .await;
    let base = format!("http://{}/", app.admin_addr());

    let html = dom(&base).await;
    let listed = rows(&html);
    // t1 waits in backoff; after its third refusal it is parked as failed (a busy machine may
    // get there before the page is read): worst first either way.
    let t1_state = listed[0].1.clone();
    assert!(
        ["backoff", "failed"].contains(&t1_state.as_str()),
        "{listed:?}"
    );
    assert_eq!(
        listed,
        [("t1", t1_state.as_str()), ("t0", "idle"), ("t2", "idle")]
            .map(|(t, s)| (t.to_string(), s.to_string())),
        "worst first"
    );
    assert_eq!(count(&html, "backoff") + count(&html, "failed"), 1);
    assert_eq!(count(&html, "idle"), 2);
    assert!(html.contains("1–3 of 3"), "the range shown");
    // t1's row carries its error, and the healthy rows their last success as an age.
    let t1 = &html[html.find("data-tenant=\"t1\"").unwrap()..];
    let t1 = &t1[..t1.find("</tr>").unwrap()];
    assert!(t1.contains("credentials"), "{t1}");
    let t0 = &html[html.find("data-tenant=\"t0\"").unwrap()..];
    assert!(t0[..t0.find("</tr>").unwrap()].contains(" ago"));
    // t2 is idle (its issues are fine) and names its refused feed next to its state.
    let t2 = &html[html.find("data-tenant=\"t2\"").unwrap()..];
    let t2 = &t2[..t2.find("</tr>").unwrap()];
    assert!(
        t2.contains("data-feed=\"audit\"") && t2.contains("audit denied"),
        "{t2}"
    );
    assert!(!t0[..t0.find("</tr>").unwrap()].contains("data-feed"));

    let idle = rows(&dom(&format!("{base}?state=idle")).await);
    assert_eq!(
        idle.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["t0", "t2"]
    );
    let searched = rows(&dom(&format!("{base}?q=t2")).await);
    assert_eq!(
        searched.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["t2"]
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_a_login_prompt_and_may_send_the_token_as_basic() {
    const TOKEN: &str = "admin-token-for-the-page-0123";
    let sim = sim(1, 5).await;
    let body = sim_config(&sim, "startup_jitter = \"0s\"", "")
        .replace("[admin]\n", &format!("[admin]\ntoken = \"{TOKEN}\"\n"))
        + "[sinks.out]\ntype = \"stdout\"\n";
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{}", app.admin_addr());
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 401);
    let challenge = page.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    assert!(!page.text().await.unwrap().contains(TOKEN));

    // base64("ops:<token>") and a wrong password.
    let basic = |password: &str| {
        let raw = format!("ops:{password}");
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in raw.as_bytes().chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() {
                    table[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        format!("Basic {out}")
    };
    for (path, auth, status) in [
        ("/", basic(TOKEN), 200),
        ("/tenants?order=worst&limit=10", basic(TOKEN), 200),
        ("/summary", basic(TOKEN), 200),
        ("/", basic("wrong"), 401),
        ("/", format!("Bearer {TOKEN}"), 200),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        if path == "/" && status == 200 {
            assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
            let csp = r.headers()["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("default-src 'none'"), "{csp}");
            assert!(r.text().await.unwrap().contains("<title>wiz-connector"));
        }
    }
    // The API still names the bearer scheme.
    let api = http.get(format!("{base}/tenants")).send().await.unwrap();
    assert_eq!(api.headers()["www-authenticate"], "Bearer");
    app.shutdown().await.unwrap();
}
