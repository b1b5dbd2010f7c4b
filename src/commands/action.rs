//! `wiz-connector action`: a thin client of `POST /tenants/{id}/issues/{issue_id}/actions`, for
//! runbooks and scripts. Prints the admin API's answer; exits 0 only when it answered 200.

use std::time::Duration;

use anyhow::Context;

use crate::cli::ActionArgs;

pub async fn run(args: ActionArgs) -> anyhow::Result<u8> {
    crate::wiz::client::install_crypto_provider();
    let url = format!(
        "{}/tenants/{}/issues/{}/actions",
        args.admin.trim_end_matches('/'),
        args.tenant,
        args.issue
    );
    let body = serde_json::json!({
        "action": args.action,
        "reason": args.reason,
        "note": args.note,
        "due_date": args.due_date,
    });
    let mut req = reqwest::Client::new()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?)
        // The connector reads the issue, sends the mutation (within the rate limit) and waits for
        // the sinks to take the audit event.
        .timeout(Duration::from_secs(180));
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| {
        format!(
            "cannot reach the admin API at {} (is the connector running? --admin sets the address)",
            args.admin
        )
    })?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .context("reading the admin API's answer")?;
    if status == 200 {
        println!("{text}");
        Ok(0)
    } else {
        eprintln!("HTTP {status}: {text}");
        Ok(1)
    }
}
