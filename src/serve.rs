//! Serving an axum router in the background until a handle is dropped (the admin API and the
//! simulator both need this).

use tokio::net::TcpListener;
use tokio::sync::watch;

/// Stops the server it came from when dropped (in-flight requests finish first).
pub struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Serves `app` on `listener` in a background task; `what` names it in an error log.
pub fn spawn(listener: TcpListener, app: axum::Router, what: &'static str) -> StopOnDrop {
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, server = what, "HTTP server failed");
        }
    });
    StopOnDrop(stop)
}
