//! Accept loop: a bounded number of connections, each served by [`Connection::accept`], and a
//! graceful drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::{Connection, Handler, TransportConfig};

/// Serves `listener` until `shutdown` is cancelled, then waits for open connections to finish
/// the requests they are handling.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    server_id: String,
    config: Arc<TransportConfig>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let connections = TaskTracker::new();
    let local = listener.local_addr().ok();
    let mut backoff = Duration::from_millis(10);
    loop {
        // Waiting for a slot before accepting is the back-pressure on connection floods.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(err) => {
                // EMFILE and friends: wait instead of spinning.
                warn!(%err, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let config = config.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let server_id = server_id.clone();
        connections.spawn(async move {
            if let Err(err) =
                Connection::accept(stream, &server_id, config, handler, shutdown).await
            {
                debug!(%peer, %err, "connection ended");
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
    info!(addr = ?local, "server stopped");
}
