//! A loopback TCP relay in front of a server, which can stop forwarding (a network partition:
//! connections stay open, bytes stop moving both ways, new connections hang) and resume (the
//! held bytes then flow, in order, as after a partition heals).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    /// The relay's address, `127.0.0.1:<port>`.
    pub addr: String,
    open: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays to `upstream` (`host:port`), forwarding from the start.
    pub async fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let upstream = upstream.to_string();
        let gate = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    wait_open(&gate).await;
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, gate.clone()));
                    tokio::spawn(pump(sr, cw, gate));
                });
            }
        });
        Relay { addr, open, task }
    }

    /// Stops forwarding: bytes read from now on are held until [`Relay::heal`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again, the held bytes first.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_open(gate: &watch::Sender<bool>) {
    let mut rx = gate.subscribe();
    let _ = rx.wait_for(|open| *open).await;
}

/// Copies `from` to `to`, holding each chunk while the relay is cut. Reading stops too, so the
/// sender's socket buffers fill as on a dead link.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    gate: Arc<watch::Sender<bool>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_open(&gate).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_open(&gate).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
