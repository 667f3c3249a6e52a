//! Plumbing shared by FerroMQ's server processes (nameserver and broker): layered
//! configuration, logging, the admin HTTP endpoint with probes and metrics, and RPC metrics.

pub mod admin;
pub mod config;
pub mod limits;
pub mod logging;
pub mod metrics;

/// Completes on SIGINT or SIGTERM: what binaries wait for before shutting down gracefully.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
