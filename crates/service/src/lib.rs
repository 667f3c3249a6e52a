//! Plumbing shared by FerroMQ's server processes (nameserver and broker): layered
//! configuration, logging, the admin HTTP endpoint with probes and metrics, and RPC metrics.

pub mod admin;
pub mod auth;
pub mod config;
pub mod connections;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod tls;

/// Writes the addresses a process actually bound (useful with port 0) as one JSON object, via
/// a temporary file and a rename, so a reader never sees half a file.
pub fn write_addr_file(
    path: &std::path::Path,
    addresses: &serde_json::Value,
) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, addresses.to_string())?;
    std::fs::rename(&temporary, path)
}

/// Raises this process's open-file limit to the hard limit: a broker keeps a file open per
/// commit-log segment and per consume-queue file.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
}

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
