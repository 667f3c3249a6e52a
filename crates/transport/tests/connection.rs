//! Connection behaviour over real loopback sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferromq_protocol::{codec, RequestCode, Status};
use ferromq_transport::{
    serve, Connection, Handler, RejectAll, Reply, Request, TransportConfig, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Echoes `Send` requests (header and body), asks the caller back on `Pull`, sleeps on
/// `QueryOffset` to fill in-flight slots, and answers `GetTrace` with the request's protocol
/// version.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, connection: &Connection, request: Request) -> Reply {
        match RequestCode::from_u16(request.code) {
            Some(RequestCode::Send) => Reply {
                status: Status::Ok,
                header: request.header,
                body: request.body,
            },
            Some(RequestCode::Pull) => {
                // A server-initiated request back to the client on the same connection.
                let answer = connection
                    .request(
                        RequestCode::GetRoute,
                        &"who are you?".to_string(),
                        Bytes::new(),
                    )
                    .await;
                match answer.and_then(|r| r.decode::<String>()) {
                    Ok(text) => Reply::ok(&text),
                    Err(err) => Reply::error(Status::SystemError, err.to_string()),
                }
            }
            Some(RequestCode::QueryOffset) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Reply::ok(&())
            }
            Some(RequestCode::GetTrace) => Reply::ok(&request.version),
            _ => Reply::error(Status::RequestCodeNotSupported, "unknown"),
        }
    }
}

/// The client's handler: answers the server's question.
struct ClientSide;

impl Handler for ClientSide {
    async fn handle(&self, _connection: &Connection, request: Request) -> Reply {
        assert_eq!(request.code, RequestCode::GetRoute as u16);
        Reply::ok(&"a client".to_string())
    }
}

async fn start_server(config: TransportConfig) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        "test-server".into(),
        Arc::new(config),
        Arc::new(Echo),
        shutdown.clone(),
    ));
    (addr, shutdown)
}

async fn connect(addr: &str) -> Connection {
    Connection::connect(
        addr,
        "test-client",
        Arc::new(TransportConfig::default()),
        Arc::new(ClientSide),
    )
    .await
    .unwrap()
}

/// A side that offers an older protocol version gets it: both its requests and the answers
/// carry it, so handlers and callers can encode as that version did.
#[tokio::test]
async fn a_connection_speaks_the_older_version_its_opener_offers() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    for offered in [ferromq_protocol::PROTOCOL_VERSION, 3] {
        let config = TransportConfig {
            max_version: offered,
            ..TransportConfig::default()
        };
        let connection =
            Connection::connect(&addr, "old-client", Arc::new(config), Arc::new(ClientSide))
                .await
                .unwrap();
        let response = connection
            .request(RequestCode::GetTrace, &(), Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.version, offered);
        assert_eq!(
            response.decode::<u8>().unwrap(),
            offered,
            "the server saw it"
        );
    }
}

#[tokio::test]
async fn many_requests_in_flight_are_matched_to_their_responses() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    let connection = connect(&addr).await;
    assert_eq!(connection.peer_id(), "test-server");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(vec![i as u8; (i as usize) * 300]);
            let response = connection
                .request(RequestCode::Send, &i, body.clone())
                .await
                .unwrap();
            let (echoed, echoed_body): (u32, Bytes) = response.decode_with_body().unwrap();
            assert_eq!(echoed, i);
            assert_eq!(echoed_body, body);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn server_can_send_requests_to_the_client_on_the_same_connection() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    let connection = connect(&addr).await;
    let answer: String = connection
        .request(RequestCode::Pull, &(), Bytes::new())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(answer, "a client");
}

#[tokio::test]
async fn unknown_request_code_gets_an_error_and_the_connection_stays_usable() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    let connection = connect(&addr).await;
    let response = connection
        .request_raw(65535, Bytes::new(), Bytes::new(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(response.status, Status::RequestCodeNotSupported);
    let echoed: u32 = connection
        .request(RequestCode::Send, &7u32, Bytes::new())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(echoed, 7);
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_are_answered_busy() {
    let config = TransportConfig {
        max_in_flight: 2,
        ..TransportConfig::default()
    };
    let (addr, _shutdown) = start_server(config).await;
    let connection = connect(&addr).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            connection
                .request(RequestCode::QueryOffset, &(), Bytes::new())
                .await
                .unwrap()
                .status
        }));
    }
    let mut busy = 0;
    for task in tasks {
        if task.await.unwrap() == Status::SystemBusy {
            busy += 1;
        }
    }
    assert_eq!(busy, 4);
}

async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 1024];
    let result = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // an error response may come first
            }
        }
    })
    .await;
    assert!(result.is_ok(), "server did not close the connection");
}

#[tokio::test]
async fn oversized_length_prefix_closes_the_connection_and_others_are_served() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    raw.write_all(&0x7fff_ffffu32.to_be_bytes()).await.unwrap();
    expect_closed(&mut raw).await;
    let connection = connect(&addr).await;
    let echoed: u32 = connection
        .request(RequestCode::Send, &1u32, Bytes::new())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(echoed, 1);
}

#[tokio::test]
async fn garbage_and_foreign_protocols_are_refused() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..], // a TLS ClientHello
        &[0, 0, 0, 30, 0xAB, 0xCD, 0, 0, 0, 0, 0, 0][..],
    ] {
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        expect_closed(&mut raw).await;
    }
}

#[tokio::test]
async fn a_request_before_the_handshake_is_refused() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let frame = ferromq_protocol::Frame {
        version: 1,
        kind: ferromq_protocol::FrameKind::Request,
        code: RequestCode::Send as u16,
        flags: 0,
        request_id: 1,
        header: Bytes::from(codec::encode(&1u32)),
        body: Bytes::new(),
    };
    let mut out = bytes::BytesMut::new();
    frame.encode_prefix(&mut out);
    raw.write_all(&out).await.unwrap();
    expect_closed(&mut raw).await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let config = TransportConfig {
        idle_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let (addr, _shutdown) = start_server(config).await;
    let client_config = TransportConfig {
        keepalive_interval: None,
        ..TransportConfig::default()
    };
    let connection =
        Connection::connect(&addr, "idle", Arc::new(client_config), Arc::new(RejectAll))
            .await
            .unwrap();
    tokio::time::timeout(Duration::from_secs(2), connection.closed())
        .await
        .expect("idle connection was not closed");
    let err = connection
        .request(RequestCode::Send, &1u32, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed));
}

#[tokio::test]
async fn pending_requests_fail_when_the_connection_closes() {
    let (addr, slow) = start_slow_server().await;
    let connection = connect(&addr).await;
    let pending = {
        let connection = connection.clone();
        tokio::spawn(async move {
            connection
                .request_with_timeout(
                    RequestCode::QueryOffset,
                    &(),
                    Bytes::new(),
                    Duration::from_secs(5),
                )
                .await
        })
    };
    // The request is at the server, waiting for its answer, when the connection closes.
    tokio::time::timeout(Duration::from_secs(5), until_started(&slow, 1))
        .await
        .unwrap();
    connection.close();
    assert!(matches!(
        pending.await.unwrap(),
        Err(TransportError::Closed)
    ));
}

/// Counts requests it started, and finishes each only after a long pause, counting those too.
#[derive(Default)]
struct Counts {
    started: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
}

struct Slow(Arc<Counts>);

impl Handler for Slow {
    async fn handle(&self, _connection: &Connection, _request: Request) -> Reply {
        self.0
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.0
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reply::ok(&())
    }
}

async fn start_slow_server() -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counts = Arc::new(Counts::default());
    tokio::spawn(serve(
        listener,
        "slow".into(),
        Arc::new(TransportConfig::default()),
        Arc::new(Slow(counts.clone())),
        CancellationToken::new(),
    ));
    (addr, counts)
}

async fn until_started(slow: &Counts, count: usize) {
    while slow.started.load(std::sync::atomic::Ordering::SeqCst) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn requests_of_a_closed_connection_are_cancelled() {
    let (addr, slow) = start_slow_server().await;
    let connection = connect(&addr).await;
    for _ in 0..5 {
        let connection = connection.clone();
        tokio::spawn(async move {
            connection
                .request(RequestCode::Send, &(), Bytes::new())
                .await
        });
    }
    tokio::time::timeout(Duration::from_secs(5), until_started(&slow, 5))
        .await
        .unwrap();
    connection.close();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        slow.finished.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "work kept running after the close"
    );
}

#[tokio::test]
async fn a_frame_trickled_byte_by_byte_is_cut_off_at_the_frame_timeout() {
    let config = TransportConfig {
        frame_read_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let (addr, _shutdown) = start_server(config).await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let handshake = ferromq_protocol::Frame {
        version: 1,
        kind: ferromq_protocol::FrameKind::Request,
        code: RequestCode::Handshake as u16,
        flags: 0,
        request_id: 1,
        header: Bytes::from(codec::encode(
            &ferromq_protocol::headers::HandshakeRequest {
                min_version: 1,
                max_version: 1,
                client_id: "slowloris".into(),
                auth: None,
            },
        )),
        body: Bytes::new(),
    };
    let mut out = bytes::BytesMut::new();
    handshake.encode_prefix(&mut out);
    raw.write_all(&out).await.unwrap();
    let mut reply = [0u8; 256];
    let _ = raw.read(&mut reply).await.unwrap();
    // A frame announcing 100 bytes, sent one byte every 50 ms (each byte resets no timer).
    let started = std::time::Instant::now();
    let mut frame = 100u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&ferromq_protocol::MAGIC.to_be_bytes());
    frame.resize(104, 0);
    for byte in frame {
        if raw.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    expect_closed(&mut raw).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connection survived {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_large_first_frame_before_the_handshake_closes_the_connection() {
    let (addr, _shutdown) = start_server(TransportConfig::default()).await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let mut prefix = (1024u32 * 1024).to_be_bytes().to_vec();
    prefix.extend_from_slice(&ferromq_protocol::MAGIC.to_be_bytes());
    raw.write_all(&prefix).await.unwrap();
    expect_closed(&mut raw).await;
}
