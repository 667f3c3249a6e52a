//! Nameserver configuration (`nameserver.toml`, `FERROMQ_*`, flags); see docs/configuration.md.

use ferromq_service::limits::LimitsConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NameserverConfig {
    /// Wire address brokers and clients connect to.
    pub listen: String,
    /// Admin HTTP address (`/livez`, `/readyz`, `/metrics`, `/v1/cluster`).
    pub admin_listen: String,
    /// Bearer token for admin requests that change something; empty: those are accepted
    /// only from loopback addresses. Never printed.
    #[serde(serialize_with = "ferromq_service::config::redact")]
    pub admin_token: String,
    /// HTTPS on the admin port (`cert_file`, `key_file`; `client_ca_file` requires client
    /// certificates); empty: plain HTTP.
    pub admin_tls: ferromq_service::tls::TlsConfig,
    /// A broker that has not heartbeated for this long leaves the routes.
    pub broker_expiry_ms: u64,
    /// How often expired brokers are looked for.
    pub scan_interval_ms: u64,
    pub limits: LimitsConfig,
    /// Authentication of brokers and clients (off by default). Registering or unregistering a
    /// broker needs `admin`; routes and the cluster view need any valid key.
    pub auth: ferromq_service::auth::AuthConfig,
    /// TLS on the wire port (off by default).
    pub tls: ferromq_service::tls::TlsConfig,
}

impl Default for NameserverConfig {
    fn default() -> Self {
        NameserverConfig {
            listen: "0.0.0.0:9876".into(),
            admin_listen: "127.0.0.1:9877".into(),
            admin_token: String::new(),
            admin_tls: ferromq_service::tls::TlsConfig::default(),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 5_000,
            limits: LimitsConfig::default(),
            auth: ferromq_service::auth::AuthConfig::default(),
            tls: ferromq_service::tls::TlsConfig::default(),
        }
    }
}

impl NameserverConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.broker_expiry_ms == 0 || self.scan_interval_ms == 0 {
            return Err("broker_expiry_ms and scan_interval_ms must be positive".into());
        }
        self.auth.validate()?;
        self.tls.server()?;
        self.admin_tls.server()?;
        self.limits.validate()
    }
}
