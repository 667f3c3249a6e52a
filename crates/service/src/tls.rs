//! `[tls]` of a server's client port, from PEM files.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// With `cert_file` and `key_file` the port speaks TLS only; with `client_ca_file` too it
/// requires client certificates signed by that CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: String,
}

impl TlsConfig {
    pub fn server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        server(&self.cert_file, &self.key_file, &self.client_ca_file)
    }
}

/// A path from a config value; empty is none.
pub fn path(file: &str) -> Option<&Path> {
    (!file.is_empty()).then(|| Path::new(file))
}

/// A server's TLS from its certificate and key files (both or neither) and an optional
/// client CA file.
pub fn server(
    cert_file: &str,
    key_file: &str,
    client_ca_file: &str,
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (path(cert_file), path(key_file)) {
        (Some(cert), Some(key)) => {
            ferromq_transport::tls::server_from_pem(cert, key, path(client_ca_file)).map(Some)
        }
        (None, None) if client_ca_file.is_empty() => Ok(None),
        _ => Err("tls: cert_file and key_file go together (and client_ca_file needs them)".into()),
    }
}

/// A TLS session over `stream` to `addr` (`host:port`), trusting the CA in `ca_file` (admin
/// clients).
pub async fn connect(
    stream: tokio::net::TcpStream,
    addr: &str,
    ca_file: &Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let host = ferromq_transport::host_of(addr);
    let tls = ferromq_transport::tls::client_from_pem(ca_file, None)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|err| format!("{host:?} is not a valid TLS server name: {err}"))?;
    tokio_rustls::TlsConnector::from(tls.config)
        .connect(name, stream)
        .await
        .map_err(|err| format!("TLS to {host}: {err}"))
}
