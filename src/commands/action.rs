//! `wiz-connector action`: a thin client of `POST /tenants/{id}/issues/{issue_id}/actions`, for
//! runbooks and scripts. Prints the admin API's answer; exits 0 only when it answered 200.

use std::time::Duration;

use crate::cli::ActionArgs;

pub async fn run(args: ActionArgs) -> anyhow::Result<u8> {
    crate::net::install_crypto_provider();
    let path = format!("/tenants/{}/issues/{}/actions", args.tenant, args.issue);
    let body = serde_json::json!({
        "action": args.action,
        "reason": args.reason,
        "note": args.note,
        "due_date": args.due_date,
    });
    let req = reqwest::Client::new()
        .post(super::admin_url(&args.api, &path))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?)
        // The connector reads the issue, sends the mutation (within the rate limit) and waits for
        // the sinks to take the audit event.
        .timeout(Duration::from_secs(180));
    let (status, answer) = super::call_admin(&args.api, req).await?;
    let text = String::from_utf8_lossy(&answer);
    if status == 200 {
        println!("{text}");
        Ok(0)
    } else {
        eprintln!("HTTP {status}: {text}");
        Ok(1)
    }
}
