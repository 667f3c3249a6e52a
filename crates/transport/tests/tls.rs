//! TLS on connections over real loopback sockets: requests both ways through the session,
//! refused when the client does not trust the server, when it speaks plain TCP, or when the
//! server requires a client certificate it does not get.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferromq_protocol::{RequestCode, Status};
use ferromq_transport::{
    serve, tls, Connection, Handler, RejectAll, Reply, Request, TransportConfig,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Echoes `Send` requests.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, _connection: &Connection, request: Request) -> Reply {
        match RequestCode::from_u16(request.code) {
            Some(RequestCode::Send) => Reply {
                status: Status::Ok,
                header: request.header,
                body: request.body,
            },
            _ => Reply::error(Status::RequestCodeNotSupported, "unknown"),
        }
    }
}

/// A CA and certificates it signed, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA named `name`, and for each of `leaves` a certificate for 127.0.0.1/localhost.
    fn new(dir: &Path, name: &str, leaves: &[&str]) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
        for leaf in leaves {
            let params =
                CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                    .unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.join(format!("{name}-{leaf}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-{leaf}.key")), key.serialize_pem()).unwrap();
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

async fn start_server(server_tls: Arc<rustls::ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = TransportConfig {
        tls_server: Some(server_tls),
        ..TransportConfig::default()
    };
    tokio::spawn(serve(
        listener,
        "tls-server".into(),
        Arc::new(config),
        Arc::new(Echo),
        CancellationToken::new(),
    ));
    addr
}

async fn connect(
    addr: &str,
    tls_client: Option<ferromq_transport::TlsClient>,
) -> Result<Connection, String> {
    let config = TransportConfig {
        tls_client,
        handshake_timeout: Duration::from_secs(5),
        ..TransportConfig::default()
    };
    Connection::connect(addr, "tls-client", Arc::new(config), Arc::new(RejectAll))
        .await
        .map_err(|err| err.to_string())
}

async fn echo(connection: &Connection, body: Bytes) -> Bytes {
    connection
        .request(RequestCode::Send, &"hello".to_string(), body)
        .await
        .unwrap()
        .body
}

#[tokio::test]
async fn requests_travel_through_tls_and_untrusted_or_plain_peers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good", &["server"]);
    let other = Pki::new(dir.path(), "other", &[]);
    let server = tls::server_from_pem(
        &pki.file("good-server.pem"),
        &pki.file("good-server.key"),
        None,
    )
    .unwrap();
    let addr = start_server(server).await;

    let trusted = tls::client_from_pem(&pki.file("good-ca.pem"), None).unwrap();
    let connection = connect(&addr, Some(trusted)).await.unwrap();
    // Large bodies too: the pump copies in chunks.
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    assert_eq!(echo(&connection, big.clone()).await, big);
    for i in 0..100u32 {
        let body = Bytes::from(i.to_be_bytes().to_vec());
        assert_eq!(echo(&connection, body.clone()).await, body);
    }

    let untrusting = tls::client_from_pem(&other.file("other-ca.pem"), None).unwrap();
    let err = connect(&addr, Some(untrusting)).await.unwrap_err();
    assert!(err.contains("TLS"), "{err}");
    assert!(
        connect(&addr, None).await.is_err(),
        "plain TCP to a TLS port"
    );
}

#[tokio::test]
async fn a_server_requiring_client_certificates_takes_only_those_its_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "peers", &["a", "b"]);
    let rogue = Pki::new(dir.path(), "rogue", &["x"]);
    let server = tls::server_from_pem(
        &pki.file("peers-a.pem"),
        &pki.file("peers-a.key"),
        Some(&pki.file("peers-ca.pem")),
    )
    .unwrap();
    let addr = start_server(server).await;

    let member = tls::client_from_pem(
        &pki.file("peers-ca.pem"),
        Some((&pki.file("peers-b.pem"), &pki.file("peers-b.key"))),
    )
    .unwrap();
    let connection = connect(&addr, Some(member)).await.unwrap();
    assert_eq!(echo(&connection, Bytes::from_static(b"hi")).await, "hi");

    let anonymous = tls::client_from_pem(&pki.file("peers-ca.pem"), None).unwrap();
    assert!(connect(&addr, Some(anonymous)).await.is_err());
    let stranger = tls::client_from_pem(
        &pki.file("peers-ca.pem"),
        Some((&rogue.file("rogue-x.pem"), &rogue.file("rogue-x.key"))),
    )
    .unwrap();
    assert!(connect(&addr, Some(stranger)).await.is_err());

    let missing =
        tls::server_from_pem(&dir.path().join("nope.pem"), &pki.file("peers-a.key"), None)
            .unwrap_err();
    assert!(missing.contains("nope.pem"), "{missing}");
}
