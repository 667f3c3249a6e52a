//! TLS on the wire ports, through real processes: a nameserver and a three-member group that
//! speak only TLS to clients, mutual TLS between the group's members (their peer port takes
//! only certificates of the group's CA), brokers registering over TLS; clients that trust the
//! CA work, plain ones are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use ferromq_client::Client;
use ferromq_integration_tests::{
    consume_distinct, ferromq, send_numbered, start_group, start_nameserver,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// Writes `ca.pem` and a certificate for 127.0.0.1/localhost (`node.pem`, `node.key`).
fn certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferromq test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_speaks_tls_to_clients_and_mutual_tls_between_members() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("node.pem"), file("node.key"));
    let nameserver = start_nameserver(
        dir.path(),
        &[
            ("FERROMQ_TLS__CERT_FILE", &cert),
            ("FERROMQ_TLS__KEY_FILE", &key),
        ],
    );
    let group = start_group(
        "secure",
        3,
        dir.path(),
        &nameserver.addr,
        &[
            ("FERROMQ_TLS__CERT_FILE", &cert),
            ("FERROMQ_TLS__KEY_FILE", &key),
            ("FERROMQ_TLS__PEER_CA_FILE", &ca),
            ("FERROMQ_TLS__NAMESERVER_CA_FILE", &ca),
        ],
    );

    let client = Client::builder()
        .name_servers([nameserver.addr.as_str()])
        .request_timeout(Duration::from_secs(5))
        .tls_ca_file(&ca)
        .connect()
        .await
        .unwrap();
    // Registration over TLS reached the nameserver; sends are replicated over mutual TLS.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.cluster().await.unwrap().brokers.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "members did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.create_topic("secrets", 2).await.unwrap();
    send_numbered(&client.producer(), "secrets", "s", 20).await;
    let consumer = consume_distinct(&client, "vault", "secrets", 20).await;
    consumer.shutdown().await.unwrap();

    // The peer port takes only members: not plain TCP, not TLS without a certificate of the
    // group's CA.
    let raft_addr = group[0]
        .spec
        .env
        .iter()
        .find(|(k, _)| k == "FERROMQ_RAFT__LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    let without_certificate = ferromq_transport::TransportConfig {
        tls_client: Some(ferromq_transport::tls::client_from_pem(Path::new(&ca), None).unwrap()),
        handshake_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    for config in [
        ferromq_transport::TransportConfig::default(),
        without_certificate,
    ] {
        let connected = ferromq_transport::Connection::connect(
            &raft_addr,
            "intruder",
            std::sync::Arc::new(config),
            std::sync::Arc::new(ferromq_transport::RejectAll),
        )
        .await;
        assert!(
            connected.is_err(),
            "the peer port took a connection without a member certificate"
        );
    }

    // A client that does not speak TLS cannot even reach the nameserver.
    let plain = Client::builder()
        .name_servers([nameserver.addr.as_str()])
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await;
    assert!(plain.is_err(), "a plain client reached a TLS nameserver");
    let sent = ferromq(&[
        "--nameserver",
        &nameserver.addr,
        "--tls-ca",
        &ca,
        "send",
        "--topic",
        "secrets",
        "--body",
        "from the cli",
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_speaks_https_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("node.pem"), file("node.key"));
    let nameserver = start_nameserver(dir.path(), &[]);
    let addresses = ferromq_integration_tests::addr_file(dir.path(), "https-broker");
    let mut command =
        std::process::Command::new(ferromq_integration_tests::binary("ferromq-broker"));
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--nameserver", &nameserver.addr])
        .arg("--data-dir")
        .arg(dir.path().join("b"))
        .arg("--addr-file")
        .arg(&addresses)
        .env("FERROMQ_ADMIN_TLS__CERT_FILE", &cert)
        .env("FERROMQ_ADMIN_TLS__KEY_FILE", &key);
    let mut process =
        ferromq_integration_tests::Process::spawn("https-broker", &mut command, dir.path());
    let admin = ferromq_integration_tests::read_addr_file(&addresses, &mut process)["admin_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let over_https = |args: &[&str]| {
        let mut all = vec![
            "admin",
            "--admin",
            admin.as_str(),
            "--admin-ca",
            ca.as_str(),
            "--json",
        ];
        all.extend_from_slice(args);
        ferromq(&all)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !over_https(&["raft", "status"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "{}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = over_https(&["topic", "create", "audited"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Plain HTTP gets no answer it can use.
    let plain = ferromq(&["admin", "--admin", &admin, "topic", "list"]);
    assert!(!plain.status.success());
}
