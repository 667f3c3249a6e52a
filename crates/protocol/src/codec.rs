//! The one place that knows how headers and internal records are serialized.
//!
//! bincode 1.3 is pinned and flagged unmaintained (RUSTSEC-2025-0141); keeping every call behind
//! [`encode`] and [`decode`] means a replacement (postcard, wincode) touches only this file. The
//! decoder has a size limit, so a hostile length inside a header cannot make it allocate more
//! than the header itself holds, and it rejects trailing bytes.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// A header or record that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_big_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Serializes `value`. Only fails for types serde cannot describe, which our headers never are.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    options(u64::MAX)
        .serialize(value)
        .expect("protocol headers are plain serde structs and always serialize")
}

/// Deserializes `T` from exactly `bytes`, reading no further than `bytes.len()`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    options(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|err| DecodeError {
            what: std::any::type_name::<T>(),
            reason: err.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        items: Vec<u32>,
    }

    #[test]
    fn round_trips() {
        let value = Sample {
            name: "orders".into(),
            items: vec![1, 2, 3],
        };
        assert_eq!(decode::<Sample>(&encode(&value)).unwrap(), value);
    }

    #[test]
    fn huge_length_inside_header_is_an_error_not_an_allocation() {
        // varint 0xfd marker followed by a u64 length of ~2^62 for `name`.
        let bytes = [0xfc, 0x40, 0, 0, 0, 0, 0, 0, 0];
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Sample {
            name: "a".into(),
            items: vec![],
        });
        bytes.push(0);
        assert!(decode::<Sample>(&bytes).is_err());
    }
}
