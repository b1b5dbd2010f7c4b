//! The `stdout` output: JSON lines on standard output (logs go to standard error).

use std::io::Write;
use std::sync::Arc;

use super::Batch;

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
