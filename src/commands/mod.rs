//! One file per subcommand. Each returns the process exit code; errors that stop a command are
//! `anyhow` errors, printed by `main`.

pub mod action;
pub mod check;
pub mod demo;
pub mod run;
pub mod simulate;
pub mod status;
pub mod validate;

use anyhow::Context;

use crate::cli::AdminArgs;

/// `path` on the admin API `api` points at.
pub(crate) fn admin_url(api: &AdminArgs, path: &str) -> String {
    format!("{}{path}", api.admin.trim_end_matches('/'))
}

/// Sends `req` (to the admin API) with the token when one is given: the status and the body.
/// An unreachable address is an error that says how to point at the right one.
pub(crate) async fn call_admin(
    api: &AdminArgs,
    mut req: reqwest::RequestBuilder,
) -> anyhow::Result<(u16, bytes::Bytes)> {
    if let Some(t) = &api.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| {
        format!(
            "cannot reach the admin API at {} (is the connector running? --admin sets the address)",
            api.admin
        )
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .context("reading the admin API's answer")?;
    Ok((status, body))
}
