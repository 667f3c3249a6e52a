//! Request-reply: a producer's request reaches a consumer, whose reply comes straight back to
//! the requester through the broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferromq_client::{ConsumeStatus, Message};
use ferromq_integration_tests::{client, start_nameserver, wait_for_route, within, Broker};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_consumers_reply_and_times_out_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let _broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let requester = client(&nameserver.addr).await;
    requester.create_topic("prices", 2).await.unwrap();
    requester.create_topic("nobody-listens", 1).await.unwrap();
    wait_for_route(&requester, "prices", WAIT).await;

    // The responder runs in its own client, as another service would.
    let responder = client(&nameserver.addr).await;
    let consumer = responder
        .consumer("pricing")
        .subscribe("prices", "*")
        .build()
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let replier = responder.clone();
    let serving = tokio::spawn(consumer.run(
        move |message| {
            let replier = replier.clone();
            async move {
                let answer = format!("price of {}: 42", String::from_utf8_lossy(&message.body));
                replier.reply(&message, answer).await.unwrap();
                ConsumeStatus::Success
            }
        },
        stop.clone(),
    ));

    let producer = requester.producer();
    for item in ["apples", "pears"] {
        let reply = producer
            .request(Message::new("prices", item), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            format!("price of {item}: 42")
        );
    }
    // Nobody consumes this topic: the request times out.
    let unanswered = producer
        .request(
            Message::new("nobody-listens", "hello?"),
            Duration::from_millis(500),
        )
        .await;
    assert!(unanswered.is_err());
    // A message that is not a request cannot be replied to.
    let plain = ferromq_client::ReceivedMessage {
        id: ferromq_client::MessageId::default(),
        topic: "prices".into(),
        broker_group: String::new(),
        queue_id: 0,
        queue_offset: 0,
        tag: None,
        keys: Vec::new(),
        properties: Default::default(),
        body: Default::default(),
        born_ts_ms: 0,
        store_ts_ms: 0,
        reconsume_times: 0,
    };
    assert!(responder.reply(&plain, "x").await.is_err());
    stop.cancel();
    within(WAIT, serving).await.unwrap().unwrap();
}
