//! TLS configurations from PEM files: a server's certificate and key (and the CA its clients'
//! certificates must chain to, for mutual TLS), a client's trusted CA (and its own certificate,
//! for servers that require one).

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsClient;

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("{}: {err}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| format!("{}: {err}", path.display()))
}

fn roots(ca_file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca_file)? {
        roots
            .add(certificate)
            .map_err(|err| format!("{}: {err}", ca_file.display()))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS: its certificate chain and key, and, if `client_ca` is given, client
/// certificates required and checked against it.
pub fn server_from_pem(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|err| format!("{}: {err}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certificates(cert_file)?, private_key(key_file)?)
        .map_err(|err| format!("{} and {}: {err}", cert_file.display(), key_file.display()))?;
    Ok(Arc::new(config))
}

/// A connecting side's TLS: servers must present a certificate that chains to `ca_file`; with
/// `identity` (certificate chain and key files) it shows its own to servers that ask.
pub fn client_from_pem(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<TlsClient, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots(ca_file)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => builder
            .with_client_auth_cert(certificates(cert_file)?, private_key(key_file)?)
            .map_err(|err| format!("{}: {err}", cert_file.display()))?,
    };
    Ok(TlsClient {
        config: Arc::new(config),
        server_name: None,
    })
}
