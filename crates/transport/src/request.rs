//! What a handler receives ([`Request`]) and returns ([`Reply`]), and what a caller gets back
//! ([`Response`]).

use bytes::Bytes;
use ferromq_protocol::{
    codec::{self, DecodeError},
    headers::ErrorHeader,
    Status,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::TransportError;

/// An incoming request or one-way frame.
#[derive(Debug, Clone)]
pub struct Request {
    /// The protocol version of the connection (negotiated in its handshake).
    pub version: u8,
    pub code: u16,
    pub request_id: u64,
    /// True for one-way frames: the reply is discarded.
    pub one_way: bool,
    pub header: Bytes,
    pub body: Bytes,
}

impl Request {
    pub fn decode_header<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        codec::decode(&self.header)
    }
}

/// A handler's answer; sent back as a response frame with the request's id.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: Status,
    pub header: Bytes,
    pub body: Bytes,
}

impl Reply {
    pub fn ok<T: Serialize>(header: &T) -> Reply {
        Reply::ok_with_body(header, Bytes::new())
    }

    pub fn ok_with_body<T: Serialize>(header: &T, body: Bytes) -> Reply {
        Reply {
            status: Status::Ok,
            header: Bytes::from(codec::encode(header)),
            body,
        }
    }

    pub fn error(status: Status, message: impl Into<String>) -> Reply {
        Reply::error_header(
            status,
            ErrorHeader {
                message: message.into(),
                leader: None,
            },
        )
    }

    pub fn error_header(status: Status, header: ErrorHeader) -> Reply {
        debug_assert_ne!(status, Status::Ok);
        Reply {
            status,
            header: Bytes::from(codec::encode(&header)),
            body: Bytes::new(),
        }
    }

    /// The answer to a header that does not decode: the connection stays usable.
    pub fn bad_header(err: &DecodeError) -> Reply {
        Reply::error(Status::ParameterError, err.to_string())
    }
}

/// A response as the requesting side receives it.
#[derive(Debug, Clone)]
pub struct Response {
    /// The protocol version of the connection (negotiated in its handshake).
    pub version: u8,
    pub status: Status,
    pub header: Bytes,
    pub body: Bytes,
}

impl Response {
    /// Turns a non-OK status into [`TransportError::Remote`].
    pub fn into_result(self) -> Result<Response, TransportError> {
        if self.status == Status::Ok {
            return Ok(self);
        }
        let error: ErrorHeader = codec::decode(&self.header).unwrap_or_default();
        Err(TransportError::Remote {
            status: self.status,
            message: error.message,
            leader: error.leader,
        })
    }

    /// The header of an OK response, or the error the peer answered with.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, TransportError> {
        let response = self.into_result()?;
        Ok(codec::decode(&response.header)?)
    }

    /// Header and body of an OK response, or the error the peer answered with.
    pub fn decode_with_body<T: DeserializeOwned>(self) -> Result<(T, Bytes), TransportError> {
        let response = self.into_result()?;
        let header = codec::decode(&response.header)?;
        Ok((header, response.body))
    }
}
