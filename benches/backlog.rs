//! The durable backlog's own costs: how fast pages are appended (each synced to disk before it
//! returns, as a tenant's ack requires) and drained, and the bytes on disk per event.
//!
//! `cargo bench --bench backlog` (results in docs/benchmarks.md). `WIZ_BENCH_PAGES` sets the
//! number of pages (default 2,000), `WIZ_BENCH_EVENTS` the events per page (default 100).

use std::sync::Arc;
use std::time::Instant;

use wiz_connector::sink::backlog::Backlog;

#[path = "support/mod.rs"]
mod support;
use support::env_usize;

/// One normalized event's line, about the size of a simulated Issue's (~1.3 KB with its raw
/// node).
fn line(n: usize) -> String {
    format!(
        "{{\"id\":\"{n:032x}\",\"source\":\"wiz\",\"tenant\":\"acme\",\"kind\":\"issue.opened\",\"issue_id\":\"{n:08}-0000-4000-8000-000000000000\",\"severity\":\"high\",\"status\":\"OPEN\",\"title\":\"Publicly exposed VM with a critical vulnerability\",\"resource\":{{\"id\":\"vm-{n}\",\"name\":\"web-{n}\",\"type\":\"VIRTUAL_MACHINE\",\"cloud_platform\":\"AWS\",\"region\":\"us-east-1\"}},\"raw_event\":{}}}\n",
        serde_json::json!({"id": n, "padding": "x".repeat(800)})
    )
}

fn main() {
    let pages = env_usize("WIZ_BENCH_PAGES", 2000);
    let per_page = env_usize("WIZ_BENCH_EVENTS", 100);
    let page: Vec<u8> = (0..per_page).flat_map(|n| line(n).into_bytes()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = Backlog::open(dir.path()).expect("open");
    let tenant: Arc<str> = "acme".into();

    let start = Instant::now();
    for _ in 0..pages {
        b.append(&tenant, "issues", "", per_page as u32, &page)
            .expect("append");
    }
    let write = start.elapsed();
    let depth = b.depth();
    let events = (pages * per_page) as f64;
    let payload = (pages * page.len()) as f64;

    let start = Instant::now();
    let mut drained = 0u64;
    while let Some(r) = b.peek().expect("peek") {
        drained += r.events as u64;
        b.pop(r.receipt()).expect("pop");
    }
    let drain = start.elapsed();
    assert_eq!(drained as f64, events);

    let reopen_dir = tempfile::tempdir().expect("temp dir");
    let mut c = Backlog::open(reopen_dir.path()).expect("open");
    for _ in 0..pages {
        c.append(&tenant, "issues", "", per_page as u32, &page)
            .expect("append");
    }
    drop(c);
    let start = Instant::now();
    let c = Backlog::open(reopen_dir.path()).expect("reopen");
    let reopen = start.elapsed();
    assert_eq!(c.depth().events as f64, events);

    println!(
        "pages {pages} x {per_page} events, {:.0} bytes per event line",
        page.len() as f64 / per_page as f64
    );
    println!(
        "append (synced per page): {:.0} events/s, {:.1} MB/s, {:.2} ms per page",
        events / write.as_secs_f64(),
        payload / write.as_secs_f64() / 1e6,
        write.as_secs_f64() * 1e3 / pages as f64
    );
    println!(
        "drain (read, check, advance head): {:.0} events/s, {:.1} MB/s",
        events / drain.as_secs_f64(),
        payload / drain.as_secs_f64() / 1e6
    );
    println!(
        "disk per event: {:.1} bytes ({:.2} bytes over the line itself)",
        depth.bytes as f64 / events,
        (depth.bytes as f64 - payload) / events
    );
    println!(
        "reopen and check {:.0} MB: {:.0} ms",
        payload / 1e6,
        reopen.as_secs_f64() * 1e3
    );
}
