//! `wiz-connector status`: the fleet's health as a terminal table, worst first (failed, backoff,
//! stale, then the healthy ones), with a summary line of counts per state. It reads a running
//! connector's admin API (`/summary` and `/tenants?order=worst&limit=N`).

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

use crate::cli::StatusArgs;

/// What one row shows.
struct Row {
    id: String,
    state: String,
    owner: String,
    last_success: String,
    events: String,
    restarts: String,
    last_error: String,
}

/// "3m ago" for an RFC 3339 time, "never" for none.
fn age(v: &serde_json::Value, now: SystemTime) -> String {
    let Some(t) = v
        .as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
    else {
        return "never".into();
    };
    let d = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

fn cut(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// Renders the summary line and the table.
pub fn render(
    summary: &serde_json::Value,
    tenants: &[serde_json::Value],
    now: SystemTime,
) -> String {
    let mut out = String::new();
    let states = &summary["states"];
    let count = |s: &str| states[s].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "{} tenants: failed={} backoff={} stale={} polling={} idle={} starting={} stopped={}\n",
        summary["tenants"].as_u64().unwrap_or(0),
        count("failed"),
        count("backoff"),
        summary["stale"].as_u64().unwrap_or(0),
        count("polling"),
        count("idle"),
        count("starting"),
        count("stopped"),
    ));
    let rows: Vec<Row> = tenants
        .iter()
        .map(|t| Row {
            id: t["id"].as_str().unwrap_or("?").to_string(),
            state: match t["held_by_sink"].as_str() {
                // The sink that refuses the tenant's page in flight.
                Some(sink) => format!(
                    "{} (held by sink {sink})",
                    t["state"].as_str().unwrap_or("?")
                ),
                None => t["state"].as_str().unwrap_or("?").to_string(),
            },
            owner: t["owner"].as_str().unwrap_or("").to_string(),
            last_success: age(&t["last_success_at"], now),
            events: t["events_total"].to_string(),
            restarts: t["restarts"].to_string(),
            last_error: cut(t["last_error"]["message"].as_str().unwrap_or(""), 80),
        })
        .collect();
    let headers = [
        "TENANT",
        "STATE",
        "OWNER",
        "LAST SUCCESS",
        "EVENTS",
        "RESTARTS",
        "LAST ERROR",
    ];
    let cells = |r: &Row| {
        [
            r.id.clone(),
            r.state.clone(),
            r.owner.clone(),
            r.last_success.clone(),
            r.events.clone(),
            r.restarts.clone(),
            r.last_error.clone(),
        ]
    };
    let mut width = headers.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(cells(r)) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [String; 7]| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(headers.map(String::from)));
    for r in &rows {
        out.push_str(&line(cells(r)));
    }
    out
}

async fn get(
    client: &reqwest::Client,
    args: &StatusArgs,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let req = client
        .get(super::admin_url(&args.api, path))
        .timeout(Duration::from_secs(30));
    let (status, body) = super::call_admin(&args.api, req).await?;
    if status == 401 {
        bail!("the admin API at {} wants a bearer token: pass --token or set WIZ_CONNECTOR_ADMIN_TOKEN", args.api.admin);
    }
    if !(200..300).contains(&status) {
        bail!(
            "the admin API answered HTTP {status} for {path}: {}",
            crate::net::snippet(&body)
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("the admin API's answer for {path} is not JSON"))
}

pub async fn run(args: StatusArgs) -> anyhow::Result<u8> {
    crate::net::install_crypto_provider();
    let client = reqwest::Client::new();
    let summary = get(&client, &args, "/summary").await?;
    let mut path = format!("/tenants?order=worst&limit={}", args.limit);
    if let Some(s) = &args.state {
        path.push_str(&format!("&state={s}"));
    }
    let tenants = get(&client, &args, &path).await?;
    let rows = tenants.as_array().cloned().unwrap_or_default();
    print!("{}", render(&summary, &rows, SystemTime::now()));
    Ok(0)
}
