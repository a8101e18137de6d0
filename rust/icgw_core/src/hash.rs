//! SHA-256 / SHA-224 helpers and the IC's domain separators.

use sha2::{Digest, Sha224, Sha256};

pub type Hash = [u8; 32];

/// `\x0Aic-request`: prefix of the bytes a sender signs (followed by the request id).
pub const DOMAIN_IC_REQUEST: &[u8] = b"\x0Aic-request";
/// `\x1Aic-request-auth-delegation`: prefix of a signed delegation (followed by its hash_of_map).
pub const DOMAIN_IC_DELEGATION: &[u8] = b"\x1Aic-request-auth-delegation";
/// `\x0Bic-response`: prefix of a node-signed query response.
pub const DOMAIN_IC_RESPONSE: &[u8] = b"\x0Bic-response";
/// `\x0Dic-state-root`: prefix of the BLS-signed certificate message (followed by the root hash).
pub const DOMAIN_IC_STATE_ROOT: &[u8] = b"\x0Dic-state-root";

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// SHA-256 over several pieces without concatenating them first.
pub fn sha256_parts(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

pub fn sha224(data: &[u8]) -> [u8; 28] {
    Sha224::digest(data).into()
}
