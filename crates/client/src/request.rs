//! Request-reply: a producer sends a request message and waits for one reply; a consumer answers
//! with [`Client::reply`], and the broker that stored the request forwards the answer straight
//! to the requester's connection (no reply topic, no polling).

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferromq_protocol::{
    headers::{ReplyDelivery, ReplyRequest},
    message::{decode_record, encode_record},
    system::{PROPERTY_CORRELATION_ID, PROPERTY_REPLY_TO},
    Message, RequestCode,
};
use ferromq_transport::{Reply, Request};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::client::Client;
use crate::consumer::ReceivedMessage;
use crate::error::{ClientError, SendError};
use crate::producer::Producer;

/// Requests of this client waiting for their reply, by correlation id.
#[derive(Default)]
pub(crate) struct ReplyWaiters {
    by_correlation: Mutex<HashMap<String, oneshot::Sender<ReceivedMessage>>>,
}

impl ReplyWaiters {
    /// Hands a broker's REPLY_DELIVERY to the request waiting for it (late ones are dropped).
    pub(crate) fn deliver(&self, request: Request) -> Reply {
        let delivery: ReplyDelivery = match request.decode_header() {
            Ok(delivery) => delivery,
            Err(err) => return Reply::bad_header(&err),
        };
        let Ok(record) = decode_record(request.body.clone()) else {
            return Reply::ok(&());
        };
        let waiter = self.by_correlation.lock().remove(&delivery.correlation_id);
        if let Some(waiter) = waiter {
            let reply = ReceivedMessage::from_record(record, delivery.topic, (String::new(), 0, 0));
            let _ = waiter.send(reply);
        }
        Reply::ok(&())
    }
}

impl Producer {
    /// Sends `message` as a request and waits up to `timeout` for a consumer's
    /// [`Client::reply`].
    pub async fn request(
        &self,
        message: Message,
        timeout: Duration,
    ) -> Result<ReceivedMessage, SendError> {
        let client = self.client().clone();
        let correlation = format!("{}", client.inner.ids.next_id());
        let request = message
            .clone()
            .with_property(PROPERTY_REPLY_TO, client.inner.reply_id.clone())
            .with_property(PROPERTY_CORRELATION_ID, correlation.clone());
        let (sender, receiver) = oneshot::channel();
        client
            .inner
            .reply_waiters
            .by_correlation
            .lock()
            .insert(correlation.clone(), sender);
        let forget = || {
            client
                .inner
                .reply_waiters
                .by_correlation
                .lock()
                .remove(&correlation);
        };
        if let Err(err) = self
            .send_request(request, client.inner.reply_id.clone())
            .await
        {
            forget();
            return Err(SendError {
                message,
                error: err.error,
            });
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(SendError {
                    message,
                    error: ClientError::Transport(ferromq_transport::TransportError::Timeout(
                        timeout,
                    )),
                })
            }
        }
    }
}

impl Client {
    /// Answers a request message (one sent with [`Producer::request`]) with `body`.
    pub async fn reply(
        &self,
        request: &ReceivedMessage,
        body: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let (Some(reply_to), Some(correlation)) = (
            request.properties.get(PROPERTY_REPLY_TO),
            request.properties.get(PROPERTY_CORRELATION_ID),
        ) else {
            return Err(ClientError::InvalidMessage(format!(
                "message {} is not a request (no reply address)",
                request.id
            )));
        };
        let reply = Message::new(request.topic.clone(), body.into());
        let mut record = BytesMut::new();
        encode_record(
            self.inner.ids.next_id(),
            ferromq_protocol::message::now_millis(),
            &reply,
            &mut record,
        );
        let header = ReplyRequest {
            reply_to: reply_to.clone(),
            correlation_id: correlation.clone(),
            topic: request.topic.clone(),
        };
        self.request_group_leader_with_body(
            &request.topic,
            &request.broker_group,
            RequestCode::Reply,
            &header,
            record.freeze(),
        )
        .await?;
        Ok(())
    }
}
