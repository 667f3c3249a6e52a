//! Client credentials on the wire: an access key and a secret key. The secret never travels;
//! the handshake carries an HMAC-SHA256 proof over the client id, the access key, a timestamp
//! and a random nonce. A server accepts a proof made within [`MAX_CLOCK_SKEW_MS`] of its own
//! clock and whose nonce it has not seen in that window, so a captured handshake cannot be
//! replayed. Later frames are not signed: use TLS where the network is not trusted.

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How far a proof's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// What the handshake carries to authenticate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthProof {
    pub access_key: String,
    pub timestamp_ms: u64,
    pub nonce: [u8; 16],
    pub signature: [u8; 32],
}

impl std::fmt::Debug for AuthProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthProof")
            .field("access_key", &self.access_key)
            .field("timestamp_ms", &self.timestamp_ms)
            .finish_non_exhaustive()
    }
}

/// A client's credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

fn signature(secret_key: &str, client_id: &str, proof: &AuthProof) -> [u8; 32] {
    // Only fails for key lengths HMAC cannot take; SHA-256 HMAC takes any.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret_key.as_bytes()) else {
        return [0; 32];
    };
    mac.update(b"ferromq-handshake-v1\0");
    for field in [client_id.as_bytes(), proof.access_key.as_bytes()] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field);
    }
    mac.update(&proof.timestamp_ms.to_be_bytes());
    mac.update(&proof.nonce);
    mac.finalize().into_bytes().into()
}

impl Credentials {
    /// A fresh proof for a handshake of `client_id` at `now_ms`.
    pub fn prove(&self, client_id: &str, now_ms: u64) -> AuthProof {
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut proof = AuthProof {
            access_key: self.access_key.clone(),
            timestamp_ms: now_ms,
            nonce,
            signature: [0; 32],
        };
        proof.signature = signature(&self.secret_key, client_id, &proof);
        proof
    }
}

/// Why a proof was refused (kept vague on the wire: the server says only that it failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the proof was made {0} ms away from the server's clock")]
    Stale(u64),
    #[error("the signature does not match")]
    BadSignature,
}

/// Checks `proof` for `client_id` against `secret_key` at `now_ms` (not the nonce: the
/// server remembers those).
pub fn verify(
    proof: &AuthProof,
    client_id: &str,
    secret_key: &str,
    now_ms: u64,
) -> Result<(), ProofError> {
    let skew = now_ms.abs_diff(proof.timestamp_ms);
    if skew > MAX_CLOCK_SKEW_MS {
        return Err(ProofError::Stale(skew));
    }
    let expected = signature(secret_key, client_id, proof);
    if same_secret(&proof.signature, &expected) {
        Ok(())
    } else {
        Err(ProofError::BadSignature)
    }
}

/// Compares secrets without stopping at the first difference (only the length can leak).
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            access_key: "orders".into(),
            secret_key: "s3cret".into(),
        }
    }

    #[test]
    fn a_proof_verifies_only_with_its_secret_client_and_time() {
        let proof = credentials().prove("app-1", 1_000_000);
        assert_eq!(verify(&proof, "app-1", "s3cret", 1_000_500), Ok(()));
        assert_eq!(
            verify(&proof, "app-1", "wrong", 1_000_500),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify(&proof, "app-2", "s3cret", 1_000_500),
            Err(ProofError::BadSignature)
        );
        let late = 1_000_000 + MAX_CLOCK_SKEW_MS + 1;
        assert!(matches!(
            verify(&proof, "app-1", "s3cret", late),
            Err(ProofError::Stale(_))
        ));
        let mut tampered = proof.clone();
        tampered.access_key = "admin".into();
        assert_eq!(
            verify(&tampered, "app-1", "s3cret", 1_000_500),
            Err(ProofError::BadSignature)
        );
        assert_ne!(credentials().prove("app-1", 1).nonce, proof.nonce);
        assert!(!format!("{:?}", credentials()).contains("s3cret"));
    }
}
