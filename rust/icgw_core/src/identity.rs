//! Public keys and signatures as the IC accepts them from users, and the gateway's own Ed25519
//! identity.
//!
//! Keys are DER SubjectPublicKeyInfo in exactly the canonical form the IC accepts: Ed25519 (RFC 8410),
//! and ECDSA on secp256k1 or P-256 with an uncompressed point (RFC 5480). Signatures are 64 bytes: the
//! Ed25519 signature, or `r ‖ s` big-endian for ECDSA over SHA-256 of the message.
//!
//! ECDSA malleability: the IC verifies secp256k1 signatures "with malleability" (its crypto library
//! normalizes a high `s` before verifying, because the replica once used OpenSSL, which never checked
//! it) and its P-256 verification never looked at `s`. So both `(r, s)` and `(r, n - s)` are valid
//! here too. We normalize `s` explicitly instead of relying on the curve crate, because `k256` rejects
//! high-S signatures while `p256` accepts them.
//!
//! Ed25519: the IC follows ZIP-215 (cofactored verification, non-canonical point encodings allowed,
//! no check of the key's order). We use ed25519-dalek's `verify_strict`, which is cofactorless and
//! also refuses small-order ("weak") public keys and small-order `R`. Honest signatures verify under
//! both rules; only crafted ones are refused here but accepted by the replica. The weak-key refusal
//! matters: for a small-order key, a zero signature "verifies" for many messages, so the key's
//! self-authenticating principal would belong to everybody.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::SubjectPublicKeyInfoRef;
use ed25519_dalek::pkcs8::ObjectIdentifier;
use ed25519_dalek::pkcs8::PrivateKeyInfo;
use ed25519_dalek::{Signer, SigningKey, Verifier};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::SignatureError;
use crate::principal::{self_authenticating, to_text};

/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (33 bytes, 0 unused bits) }`, then 32 key bytes.
pub const ED25519_DER_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// id-ecPublicKey with curve secp256k1, then the 65-byte uncompressed point.
pub const SECP256K1_DER_PREFIX: [u8; 23] = [
    0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81,
    0x04, 0x00, 0x0a, 0x03, 0x42, 0x00,
];
/// id-ecPublicKey with curve prime256v1, then the 65-byte uncompressed point.
pub const P256_DER_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
pub const ED25519_DER_LEN: usize = ED25519_DER_PREFIX.len() + 32;
pub const SIGNATURE_LEN: usize = 64;

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_WEBAUTHN_COSE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.56387.1.1");
const OID_CANISTER_SIG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.56387.1.2");
const OID_BLS12_381_ALGORITHM: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.44668.5.3.1.2.1");

/// Key files are tiny; anything larger is not a key and is not read into memory.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

crate::message_error!(
    /// A malformed or unsupported key, PEM or signature.
    KeyError => SignatureError
);

fn key_error(what: impl std::fmt::Display) -> KeyError {
    KeyError(what.to_string())
}

/// Overwrite secret bytes before their buffer is freed. Volatile writes keep the compiler from
/// dropping the stores as dead.
fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference to a byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------------
// Public keys and signature verification.

/// A user public key of one of the three plain signature schemes the IC accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Secp256k1(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

fn describe_unsupported_algorithm(oid: ObjectIdentifier) -> String {
    let name = if oid == OID_WEBAUTHN_COSE {
        "WebAuthn (DER-wrapped COSE) keys"
    } else if oid == OID_CANISTER_SIG {
        "canister signature keys"
    } else if oid == OID_BLS12_381_ALGORITHM {
        "BLS12-381 keys"
    } else {
        "keys with this algorithm"
    };
    format!("unsupported public key: {name} (OID {oid}) are not supported; expected Ed25519, ECDSA secp256k1 or ECDSA P-256")
}

/// The IC accepts only the canonical encoding: the fixed prefix followed by the key bytes.
fn require_canonical(der: &[u8], prefix: &[u8], key: &[u8], scheme: &str) -> Result<(), KeyError> {
    if der.len() != prefix.len() + key.len() || !der.starts_with(prefix) {
        return Err(key_error(format!(
            "malformed {scheme} public key: DER encoding is not canonical"
        )));
    }
    Ok(())
}

fn uncompressed_point<'a>(key: &'a [u8], scheme: &str) -> Result<&'a [u8], KeyError> {
    match key.first() {
        Some(0x04) if key.len() == 65 => Ok(key),
        Some(0x02 | 0x03) => Err(key_error(format!(
            "malformed {scheme} public key: compressed points are not accepted, the IC requires the uncompressed form"
        ))),
        _ => Err(key_error(format!(
            "malformed {scheme} public key: expected a 65-byte uncompressed point, got {} bytes",
            key.len()
        ))),
    }
}

impl PublicKey {
    /// Parse a DER SubjectPublicKeyInfo, accepting exactly what the IC accepts.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| key_error(format!("malformed DER public key (SubjectPublicKeyInfo): {e}")))?;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| key_error("malformed DER public key: the key bit string has unused bits"))?;
        let algorithm = spki.algorithm.oid;
        if algorithm == OID_ED25519 {
            Self::ed25519_from_spki(der, key)
        } else if algorithm == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters_oid()
                .map_err(|_| key_error("malformed ECDSA public key: the curve parameter is not an OID"))?;
            Self::ecdsa_from_spki(der, key, curve)
        } else {
            Err(key_error(describe_unsupported_algorithm(algorithm)))
        }
    }

    fn ed25519_from_spki(der: &[u8], key: &[u8]) -> Result<Self, KeyError> {
        let raw: &[u8; 32] = key.try_into().map_err(|_| {
            key_error(format!(
                "malformed Ed25519 public key: expected 32 bytes, got {}",
                key.len()
            ))
        })?;
        require_canonical(der, &ED25519_DER_PREFIX, key, "Ed25519")?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(raw)
            .map_err(|_| key_error("malformed Ed25519 public key: not a point on the curve"))?;
        Ok(PublicKey::Ed25519(vk))
    }

    fn ecdsa_from_spki(der: &[u8], key: &[u8], curve: ObjectIdentifier) -> Result<Self, KeyError> {
        if curve == OID_SECP256K1 {
            let point = uncompressed_point(key, "secp256k1")?;
            require_canonical(der, &SECP256K1_DER_PREFIX, point, "secp256k1")?;
            let vk = k256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|_| key_error("malformed secp256k1 public key: not a point on the curve"))?;
            Ok(PublicKey::Secp256k1(vk))
        } else if curve == OID_P256 {
            let point = uncompressed_point(key, "P-256")?;
            require_canonical(der, &P256_DER_PREFIX, point, "P-256")?;
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|_| key_error("malformed P-256 public key: not a point on the curve"))?;
            Ok(PublicKey::P256(vk))
        } else {
            Err(key_error(format!(
                "unsupported public key: ECDSA on curve {curve} is not supported; expected secp256k1 or P-256"
            )))
        }
    }

    pub fn scheme_name(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Secp256k1(_) => "ECDSA secp256k1",
            PublicKey::P256(_) => "ECDSA P-256",
        }
    }

    /// `Ok(false)` for a signature that does not verify (including `r` or `s` out of range); an
    /// error only for a signature of the wrong length, which cannot belong to any of the schemes.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<bool, KeyError> {
        let signature: &[u8; SIGNATURE_LEN] = signature.try_into().map_err(|_| {
            key_error(format!(
                "malformed {} signature: expected {SIGNATURE_LEN} bytes, got {}",
                self.scheme_name(),
                signature.len()
            ))
        })?;
        Ok(match self {
            PublicKey::Ed25519(vk) => vk
                .verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
                .is_ok(),
            PublicKey::Secp256k1(vk) => match k256::ecdsa::Signature::from_slice(signature) {
                Ok(sig) => vk.verify(message, &sig.normalize_s().unwrap_or(sig)).is_ok(),
                Err(_) => false,
            },
            PublicKey::P256(vk) => match p256::ecdsa::Signature::from_slice(signature) {
                Ok(sig) => vk.verify(message, &sig.normalize_s().unwrap_or(sig)).is_ok(),
                Err(_) => false,
            },
        })
    }
}

/// Verify `signature` over `message` with a DER public key of any supported scheme.
pub fn verify_signature(der_public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<bool, KeyError> {
    PublicKey::from_der(der_public_key)?.verify(message, signature)
}

// ---------------------------------------------------------------------------------------------
// PEM / PKCS#8 for Ed25519 private keys.

const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The version-2 layout written by the IC's own tools and dfx: like v1 with version 1, followed by the
/// public key as `[1] EXPLICIT BIT STRING` (`a1 23 03 21 00 ‖ key`). RFC 5958 says IMPLICIT, so
/// general-purpose PKCS#8 parsers reject it; it is matched here byte for byte.
const PKCS8_V2_EXPLICIT_PREFIX: [u8; 16] = [
    0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PKCS8_V2_EXPLICIT_PUBLIC_KEY_HEADER: [u8; 5] = [0xa1, 0x23, 0x03, 0x21, 0x00];
const PEM_PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";

struct PemBlock {
    label: String,
    der: Vec<u8>,
}

impl Drop for PemBlock {
    fn drop(&mut self) {
        wipe(&mut self.der);
    }
}

/// The first PEM block of `pem`. Only the framing and base64 are checked here.
fn parse_pem(pem: &[u8]) -> Result<PemBlock, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| key_error("invalid PEM: not ASCII text"))?;
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| key_error("invalid PEM: no -----BEGIN line"))?;
    let after_begin = &text[begin + "-----BEGIN ".len()..];
    let label_end = after_begin
        .find("-----")
        .ok_or_else(|| key_error("invalid PEM: unterminated BEGIN line"))?;
    let label = &after_begin[..label_end];
    let body_and_rest = &after_begin[label_end + "-----".len()..];
    let end_line = format!("-----END {label}-----");
    let body_end = body_and_rest
        .find(&end_line)
        .ok_or_else(|| key_error(format!("invalid PEM: no {end_line} line")))?;
    let mut body: Vec<u8> = body_and_rest[..body_end]
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let decoded = data_encoding::BASE64
        .decode(&body)
        .map_err(|e| key_error(format!("invalid PEM: bad base64 ({e})")));
    wipe(&mut body);
    Ok(PemBlock {
        label: label.to_owned(),
        der: decoded?,
    })
}

fn explain_non_pkcs8_label(label: &str) -> KeyError {
    match label {
        "EC PARAMETERS" | "EC PRIVATE KEY" => key_error(
            "unsupported private key: this is an EC (SEC1) key such as a dfx secp256k1 identity; only Ed25519 keys are supported",
        ),
        "ENCRYPTED PRIVATE KEY" => key_error("unsupported private key: encrypted PKCS#8 keys are not supported"),
        "RSA PRIVATE KEY" => key_error("unsupported private key: RSA keys are not supported; only Ed25519"),
        other => key_error(format!("invalid PEM: expected a \"{PEM_PRIVATE_KEY_LABEL}\" block, got \"{other}\"")),
    }
}

/// The 32-byte seed and, when present, the public key a PKCS#8 document carries.
fn ed25519_from_pkcs8(der: &[u8]) -> Result<([u8; 32], Option<[u8; 32]>), KeyError> {
    let explicit_len = PKCS8_V2_EXPLICIT_PREFIX.len() + 32 + PKCS8_V2_EXPLICIT_PUBLIC_KEY_HEADER.len() + 32;
    if der.len() == explicit_len
        && der.starts_with(&PKCS8_V2_EXPLICIT_PREFIX)
        && der[48..53] == PKCS8_V2_EXPLICIT_PUBLIC_KEY_HEADER
    {
        let seed: [u8; 32] = der[16..48].try_into().expect("length checked");
        let public: [u8; 32] = der[53..85].try_into().expect("length checked");
        return Ok((seed, Some(public)));
    }
    if der.len() == PKCS8_V1_PREFIX.len() + 32 && der.starts_with(&PKCS8_V1_PREFIX) {
        return Ok((der[16..48].try_into().expect("length checked"), None));
    }
    // Anything else (RFC 5958 v2 with an implicit public key, attributes, other algorithms) goes
    // through a general PKCS#8 parser.
    let info =
        PrivateKeyInfo::try_from(der).map_err(|e| key_error(format!("malformed PKCS#8 private key: {e}")))?;
    if info.algorithm.oid != OID_ED25519 {
        return Err(unsupported_private_key(&info));
    }
    // The private key of RFC 8410 is an OCTET STRING holding the 32-byte seed.
    let seed = match info.private_key {
        [0x04, 0x20, seed @ ..] if seed.len() == 32 => <[u8; 32]>::try_from(seed).expect("length checked"),
        _ => {
            return Err(key_error(
                "malformed Ed25519 private key: expected a 32-byte seed",
            ))
        }
    };
    let public = match info.public_key {
        None => None,
        Some(pk) => Some(
            <[u8; 32]>::try_from(pk)
                .map_err(|_| key_error("malformed Ed25519 private key: the public key is not 32 bytes"))?,
        ),
    };
    Ok((seed, public))
}

fn unsupported_private_key(info: &PrivateKeyInfo<'_>) -> KeyError {
    let algorithm = info.algorithm.oid;
    if algorithm == OID_EC_PUBLIC_KEY {
        let curve = match info.algorithm.parameters_oid() {
            Ok(c) if c == OID_SECP256K1 => "secp256k1".to_owned(),
            Ok(c) if c == OID_P256 => "P-256".to_owned(),
            Ok(c) => c.to_string(),
            Err(_) => "an unknown curve".to_owned(),
        };
        return key_error(format!(
            "unsupported private key: an ECDSA key on {curve}; only Ed25519 keys are supported"
        ));
    }
    key_error(format!(
        "unsupported private key: algorithm OID {algorithm}; only Ed25519 keys are supported"
    ))
}

fn encode_pem(label: &str, der: &[u8]) -> Vec<u8> {
    let mut b64 = data_encoding::BASE64.encode(der).into_bytes();
    let mut out = Vec::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.extend_from_slice(format!("-----BEGIN {label}-----\n").as_bytes());
    for line in b64.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    wipe(&mut b64);
    out
}

// ---------------------------------------------------------------------------------------------
// Files.

/// Create or replace `path` with `contents`, readable only by the owner, so that readers see either
/// the old file or the complete new one: write a temporary file next to it, flush it to disk, rename
/// it over the target and flush the directory.
fn write_private_file_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)?;

    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}", data_encoding::HEXLOWER.encode(&nonce)));
    let temp_path = parent.join(temp_name);

    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)?;
        // The creation mode is filtered by the umask; make it exactly 0600 either way.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp_path, path)?;
        std::fs::File::open(&parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

fn read_small_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut contents = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut contents)?;
    if contents.len() as u64 > MAX_KEY_FILE_LEN {
        wipe(&mut contents);
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {MAX_KEY_FILE_LEN} bytes; not a key file",
                path.display()
            ),
        ));
    }
    Ok(contents)
}

// ---------------------------------------------------------------------------------------------
// The gateway's identity.

/// An Ed25519 key pair with its IC principal. Immutable; the secret never leaves except through
/// `to_pem` / `save`, and is zeroed when the identity is dropped (ed25519-dalek does that).
#[pyclass(frozen, module = "icgw._core")]
pub struct Ed25519Identity {
    signing_key: SigningKey,
    der_public_key: [u8; ED25519_DER_LEN],
    principal: Vec<u8>,
}

impl Ed25519Identity {
    pub fn from_signing_key(signing_key: SigningKey) -> Self {
        let mut der_public_key = [0u8; ED25519_DER_LEN];
        der_public_key[..ED25519_DER_PREFIX.len()].copy_from_slice(&ED25519_DER_PREFIX);
        der_public_key[ED25519_DER_PREFIX.len()..].copy_from_slice(signing_key.verifying_key().as_bytes());
        let principal = self_authenticating(&der_public_key);
        Ed25519Identity {
            signing_key,
            der_public_key,
            principal,
        }
    }

    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn from_secret_key(secret_key: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(secret_key))
    }

    /// Parse a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`, dfx, `cryptography`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let block = parse_pem(pem)?;
        if block.label != PEM_PRIVATE_KEY_LABEL {
            return Err(explain_non_pkcs8_label(&block.label));
        }
        let (mut seed, public) = ed25519_from_pkcs8(&block.der)?;
        let identity = Self::from_secret_key(&seed);
        wipe(&mut seed);
        if let Some(public) = public {
            if public != *identity.signing_key.verifying_key().as_bytes() {
                return Err(key_error(
                    "inconsistent Ed25519 private key: the embedded public key does not match the secret",
                ));
            }
        }
        Ok(identity)
    }

    /// PKCS#8 v1 PEM (RFC 8410), the form `openssl genpkey` writes and every PKCS#8 reader accepts.
    pub fn to_pem(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(PKCS8_V1_PREFIX.len() + 32);
        der.extend_from_slice(&PKCS8_V1_PREFIX);
        der.extend_from_slice(self.signing_key.as_bytes());
        let pem = encode_pem(PEM_PRIVATE_KEY_LABEL, &der);
        wipe(&mut der);
        pem
    }

    pub fn load(path: &Path) -> PyResult<Self> {
        let mut contents = read_small_file(path)?;
        let identity = Self::from_pem(&contents)
            .map_err(|e| key_error(format!("cannot load identity from {}: {e}", path.display())));
        wipe(&mut contents);
        Ok(identity?)
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut pem = self.to_pem();
        let result = write_private_file_atomically(path, &pem);
        wipe(&mut pem);
        result
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing_key.sign(message).to_bytes()
    }

    pub fn principal(&self) -> &[u8] {
        &self.principal
    }

    pub fn der_public_key(&self) -> &[u8; ED25519_DER_LEN] {
        &self.der_public_key
    }
}

#[pymethods]
impl Ed25519Identity {
    /// A fresh identity from the operating system's random number generator.
    #[staticmethod]
    #[pyo3(name = "generate")]
    fn py_generate() -> Self {
        Self::generate()
    }

    #[staticmethod]
    #[pyo3(name = "from_pem")]
    fn py_from_pem(pem: &[u8]) -> PyResult<Self> {
        Ok(Self::from_pem(pem)?)
    }

    #[staticmethod]
    #[pyo3(name = "from_secret_key")]
    fn py_from_secret_key(secret_key_32: &[u8]) -> PyResult<Self> {
        let secret: &[u8; 32] = secret_key_32.try_into().map_err(|_| {
            key_error(format!(
                "an Ed25519 secret key is 32 bytes, got {}",
                secret_key_32.len()
            ))
        })?;
        Ok(Self::from_secret_key(secret))
    }

    #[staticmethod]
    #[pyo3(name = "load")]
    fn py_load(path: PathBuf) -> PyResult<Self> {
        Self::load(&path)
    }

    #[pyo3(name = "save")]
    fn py_save(&self, path: PathBuf) -> PyResult<()> {
        Ok(self.save(&path)?)
    }

    #[pyo3(name = "to_pem")]
    fn py_to_pem<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut pem = self.to_pem();
        let out = PyBytes::new(py, &pem);
        wipe(&mut pem);
        out
    }

    #[getter(principal)]
    fn py_principal<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.principal)
    }

    #[getter(der_public_key)]
    fn py_der_public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.der_public_key)
    }

    #[pyo3(name = "sign")]
    fn py_sign<'py>(&self, py: Python<'py>, message: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.sign(message))
    }

    fn __repr__(&self) -> String {
        format!("Ed25519Identity(principal={:?})", to_text(&self.principal))
    }
}

/// Verify an Ed25519 / ECDSA secp256k1 / ECDSA P-256 signature against a DER public key.
#[pyfunction]
#[pyo3(name = "verify_signature")]
fn py_verify_signature(der_public_key: &[u8], message: &[u8], signature: &[u8]) -> PyResult<bool> {
    Ok(verify_signature(der_public_key, message, signature)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Ed25519Identity>()?;
    m.add_function(wrap_pyfunction!(py_verify_signature, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 test 1.
    const SECRET_1: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC_1: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const SIGNATURE_1: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn identity_1() -> Ed25519Identity {
        Ed25519Identity::from_secret_key(&hex::decode(SECRET_1).unwrap().try_into().unwrap())
    }

    #[test]
    fn rfc8032_test_1() {
        let id = identity_1();
        assert_eq!(hex::encode(&id.der_public_key()[12..]), PUBLIC_1);
        assert_eq!(hex::encode(id.sign(b"")), SIGNATURE_1);
        assert!(verify_signature(id.der_public_key(), b"", &hex::decode(SIGNATURE_1).unwrap()).unwrap());
        assert!(!verify_signature(id.der_public_key(), b"x", &hex::decode(SIGNATURE_1).unwrap()).unwrap());
    }

    #[test]
    fn pem_round_trip_and_dfx_layout() {
        let id = identity_1();
        let again = Ed25519Identity::from_pem(&id.to_pem()).unwrap();
        assert_eq!(again.principal(), id.principal());

        let mut der = PKCS8_V2_EXPLICIT_PREFIX.to_vec();
        der.extend_from_slice(&hex::decode(SECRET_1).unwrap());
        der.extend_from_slice(&PKCS8_V2_EXPLICIT_PUBLIC_KEY_HEADER);
        der.extend_from_slice(&hex::decode(PUBLIC_1).unwrap());
        let dfx = Ed25519Identity::from_pem(&encode_pem("PRIVATE KEY", &der)).unwrap();
        assert_eq!(dfx.principal(), id.principal());

        *der.last_mut().unwrap() ^= 1;
        assert!(Ed25519Identity::from_pem(&encode_pem("PRIVATE KEY", &der)).is_err());
    }

    #[test]
    fn rejects_non_canonical_and_unsupported_keys() {
        let id = identity_1();
        let mut long = id.der_public_key().to_vec();
        long.push(0);
        assert!(PublicKey::from_der(&long).is_err());
        assert!(PublicKey::from_der(&id.der_public_key()[..43]).is_err());
        assert!(PublicKey::from_der(&[]).is_err());
        let err = PublicKey::from_der(&hex::decode(
            "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100814c0e6ec71fab583b08bd81373c255c3c371b2e84863c98a4f1e08b74235d14fb5d9c0cd546d9685f913a0c0b2cc5341583bf4b4392e467db96d65b9bb4cb717112f8472e0d5a4d14505ffd7484b01291091c5f87b98883463f98091a0baaae",
        ).unwrap())
        .unwrap_err();
        assert!(err.0.contains("BLS12-381"), "{err}");
    }

    #[test]
    fn wrong_signature_length_is_an_error_not_false() {
        let id = identity_1();
        assert!(verify_signature(id.der_public_key(), b"", &[0u8; 63]).is_err());
        assert!(!verify_signature(id.der_public_key(), b"", &[0u8; 64]).unwrap());
    }
}
