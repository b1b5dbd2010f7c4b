//! The `stdout` output: JSON lines on standard output (logs go to standard error).

use std::io::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Batch, SinkChecks, SinkType};

/// `type = "stdout"`.
pub struct StdoutSink;

/// `[sinks.<name>]` of type `stdout`: no settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {}

/// Resolved: nothing to resolve.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {}

impl SinkType for StdoutSink {
    type Section = Section;
    type Spec = Spec;
    type Output = StdoutOutput;

    fn resolve(_: &str, _: &Section, _: &mut dyn SinkChecks) -> Option<Spec> {
        Some(Spec {})
    }

    async fn open(_: &str, _: &Spec) -> Result<StdoutOutput, String> {
        Ok(StdoutOutput)
    }

    async fn check(_: &mut StdoutOutput) -> Result<String, String> {
        Ok("writes to standard output".into())
    }

    async fn write(out: &mut StdoutOutput, batch: Arc<Batch>) -> Result<super::Written, String> {
        out.write(batch).await.map(Into::into)
    }
}

pub struct StdoutOutput;

impl StdoutOutput {
    pub async fn write(&mut self, batch: Arc<Batch>) -> Result<(), String> {
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&batch.lines)?;
            out.flush()
        })
        .await
        .map_err(|e| format!("stdout writer failed: {e}"))?
        .map_err(|e| format!("cannot write to standard output: {e}"))
    }
}
