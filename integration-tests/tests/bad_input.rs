//! Garbage bytes, an oversized length prefix, malformed headers and unknown request codes on the
//! broker and nameserver ports get an error or a closed connection, and the servers go on
//! serving everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq_client::Message;
use ferromq_integration_tests::{client, http_get, start_nameserver, wait_for_route, Broker};
use ferromq_protocol::{RequestCode, Status};

/// Writes `bytes` and expects the server to close the connection within 2 s (an error frame
/// before the close is allowed).
fn expect_closed_after(addr: &str, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // The server may close as soon as it has seen enough of the input.
    let _ = stream.write_all(bytes);
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(err) => panic!("{addr} kept the connection open after {bytes:02x?}: {err}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{addr} kept talking"
        );
    }
}

fn hostile_inputs() -> Vec<Vec<u8>> {
    vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
        0x7fff_ffffu32.to_be_bytes().to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
        vec![0, 0, 0, 3, 1, 2, 3],
    ]
}

async fn expect_unknown_code_then_usable(addr: &str, follow_up: RequestCode) {
    let connection = ferromq_integration_tests::raw_connection(addr, "prober")
        .await
        .unwrap();
    let response = connection
        .request_raw(65535, Bytes::new(), Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.status, Status::RequestCodeNotSupported);
    // A known code with a header that does not decode: a parameter error, not a close.
    let response = connection
        .request_raw(
            follow_up as u16,
            Bytes::from_static(&[0xff; 7]),
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(response.status, Status::ParameterError);
    let pong = connection
        .request(RequestCode::Ping, &(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(pong.status, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_are_refused_and_the_servers_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(&dir.path().join("data"), &nameserver.addr, dir.path(), &[]);
    let client = client(&nameserver.addr).await;
    wait_for_route(&client, "still-ok", Duration::from_secs(10)).await;
    let producer = client.producer();
    producer
        .send(Message::new("still-ok", "before"))
        .await
        .unwrap();

    for addr in [&broker.spec.addr, &nameserver.addr] {
        for input in hostile_inputs() {
            expect_closed_after(addr, &input);
        }
    }
    expect_unknown_code_then_usable(&broker.spec.addr, RequestCode::Send).await;
    expect_unknown_code_then_usable(&nameserver.addr, RequestCode::GetRoute).await;

    // An oversized message is refused with a clear error; nothing is stored for it.
    let too_big = Message::new("still-ok", vec![0u8; 4 * 1024 * 1024 + 1]);
    let raw = client.producer_with(ferromq_client::ProducerConfig {
        max_message_bytes: 8 * 1024 * 1024,
        ..Default::default()
    });
    let err = raw.send(too_big).await.unwrap_err();
    assert_eq!(
        err.error.status(),
        Some(Status::MessageTooLarge),
        "{}",
        err.error
    );

    producer
        .send(Message::new("still-ok", "after"))
        .await
        .unwrap();
    let (_, metrics) = http_get(&broker.spec.admin, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"mq_messages_in_total{topic="still-ok"} 2"#),
        "exactly the two good messages are stored:\n{metrics}"
    );
    assert!(nameserver.process.log().contains("nameserver started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_creation_stops_at_the_configured_limit() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(
        &dir.path().join("data"),
        &nameserver.addr,
        dir.path(),
        &[("FERROMQ_TOPICS__MAX_TOPICS", "3")],
    );
    let client = client(&nameserver.addr).await;
    wait_for_route(&client, "t0", Duration::from_secs(10)).await;
    let producer = client.producer();
    for i in 0..3 {
        producer
            .send(Message::new(format!("t{i}"), "x"))
            .await
            .unwrap();
    }
    let err = producer.send(Message::new("t3", "x")).await.unwrap_err();
    assert_eq!(
        err.error.status(),
        Some(Status::NoPermission),
        "{}",
        err.error
    );
    assert!(
        err.error.to_string().contains("limit of 3 topics"),
        "{}",
        err.error
    );
    // Existing topics keep working.
    producer.send(Message::new("t1", "y")).await.unwrap();
}
