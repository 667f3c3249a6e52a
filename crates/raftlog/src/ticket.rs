//! Large snapshots travel out of band: the Raft snapshot message carries only a ticket naming
//! the base (its index and size), and the receiver fetches the base from the sender in chunks
//! over the peer port before handing the message to Raft. A base is `crc32c | body`, so the
//! installed bytes are checked whole either way.

/// Starts every ticket; a base starts with its checksum, so this can only collide with one by
/// a 1-in-2^64 chance, and such a base would fail its own checksum rather than be misread.
const MAGIC: &[u8; 8] = b"FMQTICKT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTicket {
    /// The base's index (the snapshot's index).
    pub index: u64,
    /// Its size in bytes.
    pub len: u64,
}

impl SnapshotTicket {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.index.to_be_bytes());
        bytes.extend_from_slice(&self.len.to_be_bytes());
        bytes
    }

    /// The ticket in a snapshot message's data, if that is what it holds.
    pub fn decode(data: &[u8]) -> Option<SnapshotTicket> {
        if data.len() != 24 || &data[..8] != MAGIC {
            return None;
        }
        Some(SnapshotTicket {
            index: u64::from_be_bytes(data[8..16].try_into().ok()?),
            len: u64::from_be_bytes(data[16..24].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_bases_are_not_tickets() {
        let ticket = SnapshotTicket {
            index: 42,
            len: 1 << 30,
        };
        assert_eq!(SnapshotTicket::decode(&ticket.encode()), Some(ticket));
        assert_eq!(SnapshotTicket::decode(b"FMQTICKT"), None);
        assert_eq!(SnapshotTicket::decode(&[0u8; 24]), None);
    }
}
