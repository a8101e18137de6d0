//! Principals: the textual form (CRC32 + base32, dashes every five characters) and
//! self-authenticating ids (`SHA-224(DER public key) ‖ 0x02`).

use data_encoding::BASE32_NOPAD;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::PrincipalError;
use crate::hash::sha224;

pub const MAX_PRINCIPAL_LEN: usize = 29;
pub const ANONYMOUS: &[u8] = &[0x04];
const SELF_AUTHENTICATING_SUFFIX: u8 = 0x02;

crate::message_error!(
    /// An invalid principal (bytes or text).
    InvalidPrincipal => PrincipalError
);

pub fn check_len(bytes: &[u8]) -> Result<(), InvalidPrincipal> {
    if bytes.len() > MAX_PRINCIPAL_LEN {
        return Err(InvalidPrincipal(format!(
            "a principal has at most {MAX_PRINCIPAL_LEN} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(())
}

/// The textual form. Callers must pass at most 29 bytes (see [`check_len`]); longer input is still
/// encoded, since the result is only used for display and error messages.
pub fn to_text(bytes: &[u8]) -> String {
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&crc32fast::hash(bytes).to_be_bytes());
    buf.extend_from_slice(bytes);
    let encoded = BASE32_NOPAD.encode(&buf).to_ascii_lowercase();
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 5);
    for (i, c) in encoded.chars().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// Parse the textual form, case-insensitively, checking the CRC and the dash positions.
pub fn from_text(text: &str) -> Result<Vec<u8>, InvalidPrincipal> {
    let lowered = text.to_ascii_lowercase();
    let compact: String = lowered.chars().filter(|c| *c != '-').collect();
    let decoded = BASE32_NOPAD
        .decode(compact.to_ascii_uppercase().as_bytes())
        .map_err(|e| InvalidPrincipal(format!("invalid principal text {text:?}: not base32 ({e})")))?;
    if decoded.len() < 4 {
        return Err(InvalidPrincipal(format!(
            "invalid principal text {text:?}: too short"
        )));
    }
    let (crc, bytes) = decoded.split_at(4);
    check_len(bytes).map_err(|e| InvalidPrincipal(format!("invalid principal text {text:?}: {}", e.0)))?;
    if crc != crc32fast::hash(bytes).to_be_bytes() {
        return Err(InvalidPrincipal(format!(
            "invalid principal text {text:?}: wrong checksum"
        )));
    }
    // Re-encoding catches misplaced dashes and non-canonical base32 padding bits.
    if to_text(bytes) != lowered {
        return Err(InvalidPrincipal(format!(
            "invalid principal text {text:?}: not in canonical form"
        )));
    }
    Ok(bytes.to_vec())
}

pub fn self_authenticating(der_public_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_PRINCIPAL_LEN);
    out.extend_from_slice(&sha224(der_public_key));
    out.push(SELF_AUTHENTICATING_SUFFIX);
    out
}

#[pyfunction]
fn principal_to_text(b: &[u8]) -> PyResult<String> {
    check_len(b)?;
    Ok(to_text(b))
}

#[pyfunction]
fn principal_from_text<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &from_text(s)?))
}

#[pyfunction]
fn self_authenticating_principal<'py>(py: Python<'py>, der_public_key: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &self_authenticating(der_public_key))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(principal_to_text, m)?)?;
    m.add_function(wrap_pyfunction!(principal_from_text, m)?)?;
    m.add_function(wrap_pyfunction!(self_authenticating_principal, m)?)?;
    m.add("ANONYMOUS", PyBytes::new(m.py(), ANONYMOUS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(to_text(&[0xab, 0xcd, 0x01]), "em77e-bvlzu-aq");
        assert_eq!(to_text(&[0x04]), "2vxsx-fae");
        assert_eq!(to_text(&[]), "aaaaa-aa");
        assert_eq!(from_text("EM77E-BVLZU-AQ").unwrap(), vec![0xab, 0xcd, 0x01]);
        assert!(from_text("em77e-bvlzu-ar").is_err());
        assert!(from_text("em77ebvlzu-aq").is_err());
    }
}
