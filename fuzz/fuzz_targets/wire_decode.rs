//! Everything a peer can make a FerroMQ server decode: frames from a byte stream, then every
//! header type, and message records in send and pull bodies. Nothing may panic, and a length
//! field may never make the decoder reserve more than the frame limit.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferromq_protocol::{codec, headers::*, message, FrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn headers(bytes: &[u8]) {
    let _ = codec::decode::<ErrorHeader>(bytes);
    let _ = codec::decode::<HandshakeRequest>(bytes);
    let _ = codec::decode::<HandshakeResponse>(bytes);
    let _ = codec::decode::<RegisterBrokerRequest>(bytes);
    let _ = codec::decode::<RegisterBrokerResponse>(bytes);
    let _ = codec::decode::<UnregisterBrokerRequest>(bytes);
    let _ = codec::decode::<GetRouteRequest>(bytes);
    let _ = codec::decode::<TopicRoute>(bytes);
    let _ = codec::decode::<GetClusterResponse>(bytes);
    let _ = codec::decode::<SendRequest>(bytes);
    let _ = codec::decode::<SendResponse>(bytes);
    let _ = codec::decode::<PullRequest>(bytes);
    let _ = codec::decode::<PullResponse>(bytes);
    let _ = codec::decode::<CommitOffsetsRequest>(bytes);
    let _ = codec::decode::<QueryOffsetRequest>(bytes);
    let _ = codec::decode::<QueryOffsetResponse>(bytes);
    let _ = codec::decode::<CreateTopicRequest>(bytes);
    let _ = codec::decode::<GetQueueOffsetsRequest>(bytes);
    let _ = codec::decode::<GetQueueOffsetsResponse>(bytes);
    let _ = codec::decode::<RaftMessagesHeader>(bytes);
}

fn bodies(body: Bytes) {
    let _ = codec::decode::<Vec<TopicConfig>>(&body);
    if let Ok(records) = message::split_length_prefixed(body.clone()) {
        for record in records {
            let _ = message::peek_record(&record);
            let _ = message::decode_record(record);
        }
    }
    let _ = message::decode_pulled(body);
}

fuzz_target!(|data: &[u8]| {
    headers(data);
    bodies(Bytes::copy_from_slice(data));
    let mut codec = FrameCodec::new(64 * 1024, 16 * 1024);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        assert!(buffer.capacity() <= 64 * 1024 + data.len() + 64);
        headers(&frame.header);
        bodies(frame.body);
    }
});
