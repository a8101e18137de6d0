//! BLS12-381 signatures as the IC uses them: the "minimal signature size" scheme (signatures are
//! compressed G1 points of 48 bytes, public keys compressed G2 points of 96 bytes), hashing to G1
//! with the ciphersuite `BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_` (IC-INTERFACE.md §5.4).
//!
//! Verification rejects non-points, points outside the prime-order subgroup and the identity public
//! key. Signing exists for the replica emulator.

use blst::min_sig::{PublicKey, SecretKey, Signature};
use blst::{blst_p1_affine, blst_p2_affine, Pairing, BLST_ERROR};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::SignatureError;

/// The hash-to-curve domain separation tag of the IC's ciphersuite.
pub const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_";

pub const PUBLIC_KEY_LEN: usize = 96;
pub const SIGNATURE_LEN: usize = 48;
pub const SECRET_KEY_LEN: usize = 32;

/// The DER `SubjectPublicKeyInfo` prefix of an IC BLS public key (algorithm OID 1.3.6.1.4.1.44668.5.3.1.2.1,
/// curve OID 1.3.6.1.4.1.44668.5.3.2.1, then a 97-byte BIT STRING holding the 96-byte key).
pub const DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03, 0x02, 0x01,
    0x03, 0x61, 0x00,
];
pub const DER_LEN: usize = DER_PREFIX.len() + PUBLIC_KEY_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlsError {
    #[error("{what} must have {expected} bytes, got {got}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("invalid BLS secret key: zero or not below the group order")]
    InvalidSecretKey,
    #[error("not a DER-encoded IC BLS public key: the 37-byte prefix does not match")]
    BadDerPrefix,
}

impl From<BlsError> for PyErr {
    fn from(e: BlsError) -> PyErr {
        SignatureError::new_err(e.to_string())
    }
}

fn check_len(what: &'static str, bytes: &[u8], expected: usize) -> Result<(), BlsError> {
    if bytes.len() != expected {
        return Err(BlsError::WrongLength {
            what,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// Whether `signature` (48 bytes) is a valid signature of `message` under `public_key` (96 bytes).
/// Anything malformed (wrong lengths, non-points, non-subgroup points, the identity key) is `false`.
pub fn verify(public_key: &[u8], signature: &[u8], message: &[u8]) -> bool {
    if public_key.len() != PUBLIC_KEY_LEN || signature.len() != SIGNATURE_LEN {
        return false;
    }
    // `uncompress` accepts only the compressed forms, which are the only ones the IC uses.
    let (Ok(pk), Ok(sig)) = (
        PublicKey::uncompress(public_key),
        Signature::uncompress(signature),
    ) else {
        return false;
    };
    verify_points(&pk, &sig, message)
}

/// One pairing check, on this thread. (blst's `Signature::verify` hands even a single check to a
/// thread pool; that is pure overhead here.) `aggregate` with validation on does the subgroup checks
/// and rejects the identity public key.
fn verify_points(pk: &PublicKey, sig: &Signature, message: &[u8]) -> bool {
    let pk: &blst_p2_affine = pk.into();
    let sig: &blst_p1_affine = sig.into();
    let mut pairing = Pairing::new(true, DST);
    if pairing.aggregate(pk, true, sig, true, message, &[]) != BLST_ERROR::BLST_SUCCESS {
        return false;
    }
    pairing.commit();
    pairing.finalverify(None)
}

fn secret_key(secret: &[u8]) -> Result<SecretKey, BlsError> {
    check_len("a BLS secret key", secret, SECRET_KEY_LEN)?;
    // A big-endian scalar in 1 ..= r-1, as in the IC's own test vectors.
    SecretKey::from_bytes(secret).map_err(|_| BlsError::InvalidSecretKey)
}

/// Sign `message` with a 32-byte big-endian secret scalar. Deterministic.
pub fn sign(secret: &[u8], message: &[u8]) -> Result<[u8; SIGNATURE_LEN], BlsError> {
    Ok(secret_key(secret)?.sign(message, DST, &[]).compress())
}

/// The 96-byte compressed public key of a 32-byte secret scalar.
pub fn public_key(secret: &[u8]) -> Result<[u8; PUBLIC_KEY_LEN], BlsError> {
    Ok(secret_key(secret)?.sk_to_pk().compress())
}

/// Wrap a 96-byte public key in its 133-byte DER form. Format only: the point is not checked.
pub fn public_key_to_der(public_key: &[u8]) -> Result<[u8; DER_LEN], BlsError> {
    check_len("a BLS public key", public_key, PUBLIC_KEY_LEN)?;
    let mut der = [0u8; DER_LEN];
    der[..DER_PREFIX.len()].copy_from_slice(&DER_PREFIX);
    der[DER_PREFIX.len()..].copy_from_slice(public_key);
    Ok(der)
}

/// The 96-byte key inside a 133-byte DER public key. Format only: [`verify`] checks the point.
pub fn public_key_from_der(der: &[u8]) -> Result<&[u8; PUBLIC_KEY_LEN], BlsError> {
    check_len("a DER BLS public key", der, DER_LEN)?;
    let (prefix, key) = der.split_at(DER_PREFIX.len());
    if prefix != DER_PREFIX {
        return Err(BlsError::BadDerPrefix);
    }
    Ok(key.try_into().expect("length checked above"))
}

// ---------------------------------------------------------------------------------------------
// Python boundary.

/// `True` iff the signature verifies. Wrong lengths raise `SignatureError` (most likely a caller
/// passing a DER key or a hex string); every other defect of the key or signature gives `False`.
#[pyfunction]
fn bls_verify(py: Python<'_>, public_key_96: &[u8], signature_48: &[u8], message: &[u8]) -> PyResult<bool> {
    check_len("a BLS public key", public_key_96, PUBLIC_KEY_LEN)?;
    check_len("a BLS signature", signature_48, SIGNATURE_LEN)?;
    Ok(py.allow_threads(|| verify(public_key_96, signature_48, message)))
}

#[pyfunction]
fn bls_sign<'py>(py: Python<'py>, secret_key_32: &[u8], message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &sign(secret_key_32, message)?))
}

#[pyfunction]
fn bls_public_key<'py>(py: Python<'py>, secret_key_32: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &public_key(secret_key_32)?))
}

#[pyfunction]
fn bls_der_public_key<'py>(py: Python<'py>, public_key_96: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &public_key_to_der(public_key_96)?))
}

#[pyfunction]
fn bls_public_key_from_der<'py>(py: Python<'py>, der: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, public_key_from_der(der)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bls_verify, m)?)?;
    m.add_function(wrap_pyfunction!(bls_sign, m)?)?;
    m.add_function(wrap_pyfunction!(bls_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(bls_der_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(bls_public_key_from_der, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // `vectors/bls_signatures.json`, sign_vectors[0].
    const SECRET: &str = "6f3977f6051e184b2c412daa1b5c0115ef7ab347cac8d808ffa2c26bd0658243";
    const MESSAGE: &str = "50484522ad8aede64ec7f86b9273b7ed3940481acf93cdd40a2b77f2be2734a14012b2492b6363b12adaeaf055c573e4611b085d2e0fe2153d72453a95eaebf350ac3ba6a26ba0bc79f4c0bf5664dfdf5865f69f7fc6b58ba7d068e8";
    const SIGNATURE: &str =
        "8f7ad830632657f7b3eae17fd4c3d9ff5c13365eea8d33fd0a1a6d8fbebc5152e066bb0ad61ab64e8a8541c8e3f96de9";

    #[test]
    fn signing_vector_and_round_trip() {
        let secret = hex::decode(SECRET).unwrap();
        let message = hex::decode(MESSAGE).unwrap();
        let sig = sign(&secret, &message).unwrap();
        assert_eq!(hex::encode(sig), SIGNATURE);
        let pk = public_key(&secret).unwrap();
        assert!(verify(&pk, &sig, &message));
        assert!(!verify(&pk, &sig, b"another message"));
    }

    #[test]
    fn rejects_the_identity_key_and_bad_lengths() {
        let secret = hex::decode(SECRET).unwrap();
        let sig = sign(&secret, b"m").unwrap();
        // Compressed point at infinity: the compression and infinity flags, all else zero.
        let mut identity = [0u8; PUBLIC_KEY_LEN];
        identity[0] = 0xc0;
        assert!(!verify(&identity, &sig, b"m"));
        let pk = public_key(&secret).unwrap();
        assert!(!verify(&pk[..95], &sig, b"m"));
        assert!(!verify(&pk, &sig[..47], b"m"));
    }

    #[test]
    fn secret_keys_must_be_in_range() {
        assert_eq!(sign(&[0u8; 32], b"m"), Err(BlsError::InvalidSecretKey));
        assert_eq!(sign(&[0xffu8; 32], b"m"), Err(BlsError::InvalidSecretKey));
        assert!(matches!(
            sign(&[1u8; 31], b"m"),
            Err(BlsError::WrongLength { .. })
        ));
    }

    #[test]
    fn der_round_trip_and_prefix_check() {
        let pk = public_key(&hex::decode(SECRET).unwrap()).unwrap();
        let der = public_key_to_der(&pk).unwrap();
        assert_eq!(public_key_from_der(&der).unwrap(), &pk);
        let mut bad = der;
        bad[10] ^= 1;
        assert_eq!(public_key_from_der(&bad), Err(BlsError::BadDerPrefix));
        assert!(public_key_from_der(&der[..132]).is_err());
    }
}
