//! REPLY: a consumer's answer to a request message, forwarded one-way to the requester's own
//! connection (see `replies`).

use ferromq_protocol::{
    headers::{ReplyDelivery, ReplyRequest},
    message::decode_record,
    RequestCode, Status,
};
use ferromq_transport::{Reply, Request};

use crate::core::BrokerCore;

pub async fn handle(core: &BrokerCore, request: &Request) -> Reply {
    let reply: ReplyRequest = match request.decode_header() {
        Ok(reply) => reply,
        Err(err) => return Reply::bad_header(&err),
    };
    let max = core.config.limits.max_message_bytes;
    match decode_record(request.body.clone()) {
        Ok(record) if record.body.len() <= max => {}
        Ok(_) => {
            return Reply::error(
                Status::MessageTooLarge,
                format!("reply body exceeds the limit of {max} bytes"),
            )
        }
        Err(err) => return Reply::error(Status::ParameterError, format!("malformed reply: {err}")),
    }
    let Some(connection) = core.replies.connection(&reply.reply_to) else {
        return Reply::error(
            Status::ParameterError,
            format!(
                "requester {:?} is not connected to this broker (gone, or the request went through another)",
                reply.reply_to
            ),
        );
    };
    let delivery = ReplyDelivery {
        correlation_id: reply.correlation_id,
        topic: reply.topic,
    };
    match connection
        .one_way(RequestCode::ReplyDelivery, &delivery, request.body.clone())
        .await
    {
        Ok(()) => Reply::ok(&()),
        Err(err) => Reply::error(
            Status::ServiceNotAvailable,
            format!("cannot reach the requester: {err}"),
        ),
    }
}
