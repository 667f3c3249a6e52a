//! Length-prefixed frames: the unit every FerroMQ connection carries.
//!
//! Layout (big-endian), see `docs/protocol.md`:
//! `len u32 | magic u16 | version u8 | kind u8 | code u16 | flags u16 | request_id u64 |
//! header_len u32 | header | body`. `len` counts every byte after itself. The decoder checks the
//! length against the limit before it reserves a single byte for the frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// First two bytes after the length of every frame.
pub const MAGIC: u16 = 0xF36D;
/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 4;
/// The oldest protocol version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u8 = 3;
/// Size of the length field.
pub const LENGTH_FIELD_BYTES: usize = 4;
/// Fixed part of a frame after the length field, before the header.
pub const FIXED_PART_BYTES: usize = 20;
/// Default cap on `len` (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on the encoded header (64 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The receive buffer grows by at most this much per step while a frame arrives.
const RESERVE_STEP_BYTES: usize = 64 * 1024;

/// What a frame is for; decides how the receiver routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Expects exactly one response with the same request id.
    Request = 0,
    /// Answers the request with the same request id; `code` carries the status.
    Response = 1,
    /// Expects no answer.
    OneWay = 2,
}

impl FrameKind {
    fn from_u8(value: u8) -> Option<FrameKind> {
        match value {
            0 => Some(FrameKind::Request),
            1 => Some(FrameKind::Response),
            2 => Some(FrameKind::OneWay),
            _ => None,
        }
    }
}

/// One decoded frame. `header` and `body` are slices of the receive buffer, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub kind: FrameKind,
    /// Request code for requests and one-way frames, status code for responses.
    pub code: u16,
    pub flags: u16,
    pub request_id: u64,
    /// bincode-encoded header, see [`crate::codec`].
    pub header: Bytes,
    /// Opaque payload (message records, for example).
    pub body: Bytes,
}

impl Frame {
    /// Bytes this frame occupies on the wire, length field included.
    pub fn wire_len(&self) -> usize {
        LENGTH_FIELD_BYTES + FIXED_PART_BYTES + self.header.len() + self.body.len()
    }

    /// Writes everything but the body, so a writer can send a large body without copying it.
    pub fn encode_prefix(&self, dst: &mut BytesMut) {
        let len = FIXED_PART_BYTES + self.header.len() + self.body.len();
        dst.reserve(LENGTH_FIELD_BYTES + FIXED_PART_BYTES + self.header.len());
        dst.put_u32(len as u32);
        dst.put_u16(MAGIC);
        dst.put_u8(self.version);
        dst.put_u8(self.kind as u8);
        dst.put_u16(self.code);
        dst.put_u16(self.flags);
        dst.put_u64(self.request_id);
        dst.put_u32(self.header.len() as u32);
        dst.put_slice(&self.header);
    }
}

/// Why bytes on a connection are not a frame. Every variant means the stream can no longer be
/// trusted and the connection must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than the fixed part")]
    TooShort { len: usize },
    #[error("bad magic {found:#06x}: not a FerroMQ peer")]
    BadMagic { found: u16 },
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("header of {header_len} bytes does not fit a frame of {len} bytes (limit {max})")]
    BadHeaderLength {
        header_len: usize,
        len: usize,
        max: usize,
    },
    #[error("i/o error: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(err: std::io::Error) -> Self {
        FrameError::Io(err.to_string())
    }
}

/// `tokio-util` codec for [`Frame`]s with size limits.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_bytes: usize,
    max_header_bytes: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_HEADER_BYTES)
    }
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize, max_header_bytes: usize) -> FrameCodec {
        FrameCodec {
            max_frame_bytes,
            max_header_bytes,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < LENGTH_FIELD_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        if len < FIXED_PART_BYTES {
            return Err(FrameError::TooShort { len });
        }
        // Reject a stranger as soon as its magic is visible, before waiting for a whole frame.
        if src.len() >= LENGTH_FIELD_BYTES + 2 {
            let found = u16::from_be_bytes([src[4], src[5]]);
            if found != MAGIC {
                return Err(FrameError::BadMagic { found });
            }
        }
        let total = LENGTH_FIELD_BYTES + len;
        if src.len() < total {
            // Grow with the bytes that actually arrive, not with what the prefix announces.
            src.reserve((total - src.len()).min(RESERVE_STEP_BYTES));
            return Ok(None);
        }

        let mut frame = src.split_to(total).freeze();
        frame.advance(LENGTH_FIELD_BYTES + 2);
        let version = frame.get_u8();
        let kind_byte = frame.get_u8();
        let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::BadKind(kind_byte))?;
        let code = frame.get_u16();
        let flags = frame.get_u16();
        let request_id = frame.get_u64();
        let header_len = frame.get_u32() as usize;
        if header_len > frame.len() || header_len > self.max_header_bytes {
            return Err(FrameError::BadHeaderLength {
                header_len,
                len,
                max: self.max_header_bytes,
            });
        }
        let header = frame.split_to(header_len);
        Ok(Some(Frame {
            version,
            kind,
            code,
            flags,
            request_id,
            header,
            body: frame,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.wire_len() - LENGTH_FIELD_BYTES;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        frame.encode_prefix(dst);
        dst.put_slice(&frame.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(header: &[u8], body: &[u8]) -> Frame {
        Frame {
            version: PROTOCOL_VERSION,
            kind: FrameKind::Request,
            code: 200,
            flags: 0,
            request_id: 7,
            header: Bytes::copy_from_slice(header),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(
            buf.capacity() < 1024,
            "must not reserve the announced length"
        );
    }

    #[test]
    fn an_announced_length_does_not_reserve_the_whole_frame() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(15u32 * 1024 * 1024).to_be_bytes());
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() <= 128 * 1024, "reserved {}", buf.capacity());
    }

    #[test]
    fn wrong_magic_is_rejected_with_only_six_bytes() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0, 0, 0, 40, 0x12, 0x34][..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap_err(),
            FrameError::BadMagic { found: 0x1234 }
        );
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut codec = FrameCodec::default();
        let mut encoded = BytesMut::new();
        codec.encode(sample(b"hdr", b"body"), &mut encoded).unwrap();
        let mut partial = BytesMut::from(&encoded[..encoded.len() - 1]);
        assert_eq!(codec.decode(&mut partial).unwrap(), None);
        partial.extend_from_slice(&encoded[encoded.len() - 1..]);
        assert_eq!(
            codec.decode(&mut partial).unwrap(),
            Some(sample(b"hdr", b"body"))
        );
    }

    #[test]
    fn header_longer_than_frame_is_rejected() {
        let mut codec = FrameCodec::default();
        let mut encoded = BytesMut::new();
        codec.encode(sample(b"hdr", b""), &mut encoded).unwrap();
        // header_len sits at offset 20..24
        encoded[20..24].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            codec.decode(&mut encoded).unwrap_err(),
            FrameError::BadHeaderLength { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn frames_round_trip(
            kind in 0u8..3, code: u16, flags: u16, request_id: u64, version: u8,
            header in proptest::collection::vec(any::<u8>(), 0..512),
            body in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let frame = Frame {
                version,
                kind: FrameKind::from_u8(kind).unwrap(),
                code, flags, request_id,
                header: Bytes::from(header),
                body: Bytes::from(body),
            };
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            codec.encode(frame.clone(), &mut buf).unwrap();
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = FrameCodec::new(1024, 256);
            let mut buf = BytesMut::from(&bytes[..]);
            // Either frames, a request for more bytes, or an error; never a panic.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
