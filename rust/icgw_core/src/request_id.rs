//! Representation-independent hashing (`hash_of_map`) and request ids.
//!
//! A request id is `hash_of_map(content)`: for every present field take `SHA-256(key) ‖ hash(value)`,
//! sort those 64-byte strings, concatenate them and hash the result. Values hash as follows: blobs and
//! text by SHA-256 of their bytes, nats by SHA-256 of their shortest unsigned LEB128, negative ints by
//! SHA-256 of their shortest signed LEB128, arrays by SHA-256 of the concatenated element hashes and
//! maps recursively.
//!
//! Two walkers share these rules: one over parsed CBOR (envelope verification, delegations) and one
//! over Python objects (the gateway's hot path, which must not round-trip through CBOR).

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMapping, PyMemoryView, PyString, PyTuple,
};
use sha2::{Digest, Sha256};

use crate::cbor::{self, Value};
use crate::errors::RequestIdError;
use crate::hash::{sha256, Hash};

/// Nesting limit for both walkers. Request contents are at most four levels deep; the limit only
/// exists so that a self-referencing Python list or a hostile document cannot exhaust the stack.
pub const MAX_DEPTH: usize = cbor::DEFAULT_MAX_DEPTH;

/// CBOR tag of a positive bignum (RFC 8949 §3.4.3): a nat too large for a 64-bit head.
const TAG_POSITIVE_BIGNUM: u64 = 2;
/// CBOR tag of a negative bignum: the value is `-1 - n` for the big-endian magnitude `n`.
const TAG_NEGATIVE_BIGNUM: u64 = 3;

crate::message_error!(
    /// A value that has no representation-independent hash (a bool, a float, a non-text map key, ...).
    UnhashableValue => RequestIdError
);

fn unhashable(what: impl std::fmt::Display) -> UnhashableValue {
    UnhashableValue(format!("cannot compute a request id: {what}"))
}

// ---------------------------------------------------------------------------------------------
// LEB128.

/// Shortest unsigned LEB128 of `n` (`0` encodes as a single `00` byte).
pub fn leb128_unsigned(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Shortest signed LEB128 of `n`: stop once the remaining bits are all copies of the sign bit that
/// the last group already carries in its bit 6.
pub fn leb128_signed(mut n: i128, out: &mut Vec<u8>) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        let sign_bit_set = low & 0x40 != 0;
        if (n == 0 && !sign_bit_set) || (n == -1 && sign_bit_set) {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Number of significant bits in a little-endian magnitude.
fn bit_length_le(le: &[u8]) -> usize {
    match le.iter().rposition(|b| *b != 0) {
        Some(top) => top * 8 + (8 - le[top].leading_zeros() as usize),
        None => 0,
    }
}

/// Seven bits of a little-endian number starting at bit `offset`; bits past the end read as `fill`.
fn seven_bits_at(le: &[u8], offset: usize, fill: u8) -> u8 {
    let byte_at = |i: usize| le.get(i).copied().unwrap_or(fill);
    let (index, shift) = (offset / 8, offset % 8);
    let window = u16::from(byte_at(index)) | (u16::from(byte_at(index + 1)) << 8);
    ((window >> shift) & 0x7f) as u8
}

fn emit_groups(le: &[u8], groups: usize, fill: u8, out: &mut Vec<u8>) {
    for g in 0..groups {
        let bits = seven_bits_at(le, g * 7, fill);
        out.push(if g + 1 < groups { bits | 0x80 } else { bits });
    }
}

/// Shortest unsigned LEB128 of an arbitrarily large little-endian magnitude.
pub fn leb128_unsigned_le(le: &[u8], out: &mut Vec<u8>) {
    let groups = bit_length_le(le).div_ceil(7).max(1);
    emit_groups(le, groups, 0, out);
}

/// Shortest signed LEB128 of an arbitrarily large little-endian two's-complement number (its last
/// byte carries the sign).
pub fn leb128_signed_le(le: &[u8], out: &mut Vec<u8>) {
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    // The bits that differ from the sign: a negative number needs as many as its complement has.
    let magnitude_bits = if negative {
        let complement: Vec<u8> = le.iter().map(|b| !b).collect();
        bit_length_le(&complement)
    } else {
        bit_length_le(le)
    };
    // One more bit for the sign, which must land in bit 6 of the last group.
    let groups = (magnitude_bits + 1).div_ceil(7);
    emit_groups(le, groups, if negative { 0xff } else { 0 }, out);
}

// ---------------------------------------------------------------------------------------------
// Leaf hashes.

pub fn hash_bytes(b: &[u8]) -> Hash {
    sha256(b)
}

pub fn hash_text(s: &str) -> Hash {
    sha256(s.as_bytes())
}

pub fn hash_nat(n: u64) -> Hash {
    let mut buf = Vec::with_capacity(10);
    leb128_unsigned(n, &mut buf);
    sha256(&buf)
}

pub fn hash_int(n: i128) -> Hash {
    let mut buf = Vec::with_capacity(19);
    leb128_signed(n, &mut buf);
    sha256(&buf)
}

/// Hash of an array given its element hashes: SHA-256 of their concatenation.
pub fn hash_of_hashes<'h>(element_hashes: impl IntoIterator<Item = &'h Hash>) -> Hash {
    let mut hasher = Sha256::new();
    for h in element_hashes {
        hasher.update(h);
    }
    hasher.finalize().into()
}

/// Keys that appear in nearly every request, query response and delegation. Their SHA-256 is
/// computed once, which saves about a third of the hashing work of a typical request id.
const COMMON_KEYS: [&str; 23] = [
    "request_type",
    "sender",
    "nonce",
    "ingress_expiry",
    "canister_id",
    "method_name",
    "arg",
    "paths",
    "sender_info",
    "info",
    "signer",
    "sig",
    "pubkey",
    "expiration",
    "targets",
    "permissions",
    "status",
    "reply",
    "timestamp",
    "request_id",
    "reject_code",
    "reject_message",
    "error_code",
];

pub fn hash_key(key: &str) -> Hash {
    static TABLE: OnceLock<[Hash; COMMON_KEYS.len()]> = OnceLock::new();
    match COMMON_KEYS.iter().position(|k| *k == key) {
        Some(i) => TABLE.get_or_init(|| COMMON_KEYS.map(hash_text))[i],
        None => hash_text(key),
    }
}

// ---------------------------------------------------------------------------------------------
// Maps.

/// Builds a `hash_of_map` from fields given one at a time, for code that hashes a known structure
/// (query responses, delegations) without materialising it.
#[derive(Default)]
pub struct MapHasher {
    entries: Vec<[u8; 64]>,
}

impl MapHasher {
    pub fn with_capacity(fields: usize) -> Self {
        MapHasher {
            entries: Vec::with_capacity(fields),
        }
    }

    /// Add a field whose value hash is already known.
    pub fn hashed(&mut self, key: &str, value_hash: &Hash) -> &mut Self {
        let mut entry = [0u8; 64];
        entry[..32].copy_from_slice(&hash_key(key));
        entry[32..].copy_from_slice(value_hash);
        self.entries.push(entry);
        self
    }

    pub fn bytes(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.hashed(key, &hash_bytes(value))
    }

    pub fn text(&mut self, key: &str, value: &str) -> &mut Self {
        self.hashed(key, &hash_text(value))
    }

    pub fn nat(&mut self, key: &str, value: u64) -> &mut Self {
        self.hashed(key, &hash_nat(value))
    }

    pub fn finish(mut self) -> Hash {
        // The spec sorts the 64-byte concatenations, not the keys; with distinct keys the two agree,
        // but sorting the full entries is what the definition says.
        self.entries.sort_unstable();
        let mut hasher = Sha256::new();
        for entry in &self.entries {
            hasher.update(entry);
        }
        hasher.finalize().into()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsed CBOR.

/// The leading zeros of a bignum's magnitude carry no value, so they must not change the hash.
fn bignum_magnitude_le(big_endian: &[u8]) -> Vec<u8> {
    big_endian.iter().rev().copied().collect()
}

fn hash_cbor_bignum(tag: u64, inner: &Value<'_>) -> Result<Hash, UnhashableValue> {
    let Value::Bytes(magnitude) = inner else {
        return Err(unhashable(format!(
            "bignum tag {tag} must wrap a byte string, not a {}",
            inner.type_name()
        )));
    };
    let mut le = bignum_magnitude_le(magnitude);
    let mut buf = Vec::with_capacity(le.len() + le.len() / 7 + 2);
    if tag == TAG_POSITIVE_BIGNUM {
        leb128_unsigned_le(&le, &mut buf);
    } else {
        // -1 - n is the bitwise complement of n; one extra 0xff byte makes the sign explicit.
        le.iter_mut().for_each(|b| *b = !*b);
        le.push(0xff);
        leb128_signed_le(&le, &mut buf);
    }
    Ok(sha256(&buf))
}

fn hash_cbor_value(v: &Value<'_>, depth: usize) -> Result<Hash, UnhashableValue> {
    if depth == 0 {
        return Err(unhashable("value nested too deeply"));
    }
    match v {
        Value::Bytes(b) => Ok(hash_bytes(b)),
        Value::Text(s) => Ok(hash_text(s)),
        Value::Uint(n) => Ok(hash_nat(*n)),
        Value::Nint(n) => Ok(hash_int(*n)),
        Value::Array(items) => {
            let hashes = items
                .iter()
                .map(|item| hash_cbor_value(item, depth - 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(hash_of_hashes(&hashes))
        }
        Value::Map(entries) => hash_cbor_map(entries, depth),
        Value::Tag(tag @ (TAG_POSITIVE_BIGNUM | TAG_NEGATIVE_BIGNUM), inner) => hash_cbor_bignum(*tag, inner),
        Value::Tag(tag, _) => Err(unhashable(format!(
            "CBOR tag {tag} has no representation-independent hash"
        ))),
        other => Err(unhashable(format!(
            "a {} has no representation-independent hash",
            other.type_name()
        ))),
    }
}

fn hash_cbor_map(entries: &[(Value<'_>, Value<'_>)], depth: usize) -> Result<Hash, UnhashableValue> {
    let mut hasher = MapHasher::with_capacity(entries.len());
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(unhashable(format!(
                "map keys must be text strings, not a {}",
                key.type_name()
            )));
        };
        hasher.hashed(key, &hash_cbor_value(value, depth - 1)?);
    }
    Ok(hasher.finish())
}

/// `hash_of_map` of a parsed CBOR map (nats may be plain integers or bignums, tag 2).
pub fn hash_of_map_value(v: &Value<'_>) -> Result<Hash, UnhashableValue> {
    match v {
        Value::Map(entries) => hash_cbor_map(entries, MAX_DEPTH),
        other => Err(unhashable(format!("expected a map, got a {}", other.type_name()))),
    }
}

/// The representation-independent hash of any hashable CBOR value (for array and map fields).
pub fn hash_value(v: &Value<'_>) -> Result<Hash, UnhashableValue> {
    hash_cbor_value(v, MAX_DEPTH)
}

// ---------------------------------------------------------------------------------------------
// Python objects.

fn py_type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

/// Integers beyond 64 bits go through Python's own `to_bytes`, so any size is hashed exactly.
fn hash_py_big_int(obj: &Bound<'_, PyInt>) -> PyResult<Hash> {
    let py = obj.py();
    let bits: usize = obj.call_method0("bit_length")?.extract()?;
    let negative = obj.lt(0)?;
    // Two's complement needs one bit more than the magnitude for the sign.
    let len = if negative { bits / 8 + 1 } else { bits.div_ceil(8) };
    let kwargs = PyDict::new(py);
    kwargs.set_item("signed", negative)?;
    let le = obj.call_method("to_bytes", (len, "little"), Some(&kwargs))?;
    let le = le.downcast::<PyBytes>()?.as_bytes();
    let mut buf = Vec::with_capacity(bits / 7 + 2);
    if negative {
        leb128_signed_le(le, &mut buf);
    } else {
        leb128_unsigned_le(le, &mut buf);
    }
    Ok(sha256(&buf))
}

fn hash_py_int(obj: &Bound<'_, PyInt>) -> PyResult<Hash> {
    if let Ok(n) = obj.extract::<u64>() {
        return Ok(hash_nat(n));
    }
    if let Ok(n) = obj.extract::<i64>() {
        return Ok(hash_int(i128::from(n)));
    }
    hash_py_big_int(obj)
}

fn hash_py_sequence<'py>(items: impl Iterator<Item = Bound<'py, PyAny>>, depth: usize) -> PyResult<Hash> {
    let mut hasher = Sha256::new();
    for item in items {
        hasher.update(hash_py_value(&item, depth - 1)?);
    }
    Ok(hasher.finalize().into())
}

fn hash_py_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Hash> {
    if depth == 0 {
        return Err(unhashable("value nested too deeply (or it contains itself)").into());
    }
    // Most frequent types first: blobs, text, nats.
    if let Ok(b) = obj.downcast_exact::<PyBytes>() {
        return Ok(hash_bytes(b.as_bytes()));
    }
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(hash_text(s.to_str()?));
    }
    if obj.is_instance_of::<PyBool>() {
        return Err(unhashable("a bool has no representation-independent hash").into());
    }
    if let Ok(n) = obj.downcast::<PyInt>() {
        return hash_py_int(n);
    }
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(hash_bytes(b.as_bytes()));
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        let copy = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return Ok(hash_bytes(copy.downcast::<PyBytes>()?.as_bytes()));
    }
    if let Ok(list) = obj.downcast::<PyList>() {
        return hash_py_sequence(list.iter(), depth);
    }
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        return hash_py_sequence(tuple.iter(), depth);
    }
    if obj.is_instance_of::<PyDict>() || obj.downcast::<PyMapping>().is_ok() {
        return hash_py_map(obj, depth);
    }
    if obj.is_instance_of::<PyFloat>() || obj.is_none() {
        return Err(unhashable(format!(
            "a {} has no representation-independent hash",
            py_type_name(obj)
        ))
        .into());
    }
    Err(unhashable(format!("cannot hash a {}", py_type_name(obj))).into())
}

fn add_py_field(
    hasher: &mut MapHasher,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    depth: usize,
) -> PyResult<()> {
    let Ok(key) = key.downcast::<PyString>() else {
        return Err(unhashable(format!("map keys must be str, not {}", py_type_name(key))).into());
    };
    let value_hash = hash_py_value(value, depth - 1)?;
    hasher.hashed(key.to_str()?, &value_hash);
    Ok(())
}

fn hash_py_map(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Hash> {
    if let Ok(dict) = obj.downcast::<PyDict>() {
        let mut hasher = MapHasher::with_capacity(dict.len());
        for (key, value) in dict.iter() {
            add_py_field(&mut hasher, &key, &value, depth)?;
        }
        return Ok(hasher.finish());
    }
    let mut hasher = MapHasher::default();
    for item in obj.call_method0("items")?.try_iter()? {
        let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
        add_py_field(&mut hasher, &key, &value, depth)?;
    }
    Ok(hasher.finish())
}

/// `hash_of_map` of a Python mapping, walking the objects directly.
pub fn hash_of_py_map(content: &Bound<'_, PyAny>) -> PyResult<Hash> {
    if !(content.is_instance_of::<PyDict>() || content.downcast::<PyMapping>().is_ok()) {
        return Err(unhashable(format!("expected a mapping, got {}", py_type_name(content))).into());
    }
    hash_py_map(content, MAX_DEPTH)
}

/// The request id (`hash_of_map`) of a request content given as a Python mapping.
#[pyfunction]
fn request_id<'py>(py: Python<'py>, content: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &hash_of_py_map(content)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(request_id, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsigned(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        leb128_unsigned(n, &mut out);
        out
    }

    fn signed(n: i128) -> Vec<u8> {
        let mut out = Vec::new();
        leb128_signed(n, &mut out);
        out
    }

    fn signed_le(n: i128) -> Vec<u8> {
        let mut out = Vec::new();
        leb128_signed_le(&n.to_le_bytes(), &mut out);
        out
    }

    fn unsigned_le(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        leb128_unsigned_le(&n.to_le_bytes(), &mut out);
        out
    }

    #[test]
    fn leb128_spec_examples() {
        assert_eq!(unsigned(624485), hex::decode("e58e26").unwrap());
        assert_eq!(unsigned(0), vec![0]);
        assert_eq!(
            unsigned(1685570400000000000),
            hex::decode("8080a7bf92ab96b217").unwrap()
        );
        assert_eq!(signed(-123456), hex::decode("c0bb78").unwrap());
        assert_eq!(signed(73), vec![0xc9, 0x00]);
        assert_eq!(signed(-1), vec![0x7f]);
        assert_eq!(signed(63), vec![0x3f]);
        assert_eq!(signed(64), vec![0xc0, 0x00]);
        assert_eq!(signed(-64), vec![0x40]);
        assert_eq!(signed(-65), vec![0xbf, 0x7f]);
    }

    #[test]
    fn arbitrary_width_leb128_agrees_with_the_fixed_width_one() {
        let samples: [i128; 14] = [
            0,
            1,
            63,
            64,
            127,
            128,
            -1,
            -64,
            -65,
            -128,
            -123456,
            i64::MIN as i128,
            i64::MAX as i128,
            -(1i128 << 64),
        ];
        for n in samples {
            assert_eq!(signed_le(n), signed(n), "signed {n}");
        }
        for n in [0u64, 1, 127, 128, 624485, u64::MAX] {
            assert_eq!(unsigned_le(n), unsigned(n), "unsigned {n}");
        }
        // Leading zero bytes of a magnitude do not change the encoding.
        let mut out = Vec::new();
        leb128_unsigned_le(&[0x80, 0, 0, 0], &mut out);
        assert_eq!(out, vec![0x80, 0x01]);
    }

    #[test]
    fn spec_example_request_id() {
        let mut h = MapHasher::default();
        h.text("request_type", "call")
            .bytes("sender", &[0x04])
            .nat("ingress_expiry", 1685570400000000000)
            .bytes("canister_id", &hex::decode("00000000000004D2").unwrap())
            .text("method_name", "hello")
            .bytes("arg", b"DIDL\x00\xFD*");
        assert_eq!(
            hex::encode(h.finish()),
            "1d1091364d6bb8a6c16b203ee75467d59ead468f523eb058880ae8ec80e2b101"
        );
    }

    #[test]
    fn bignum_and_uint_hash_alike() {
        let plain = Value::Uint(300);
        let big = Value::Tag(2, Box::new(Value::Bytes(&[0, 0, 1, 0x2c])));
        assert_eq!(hash_value(&plain).unwrap(), hash_value(&big).unwrap());
        let nint = Value::Nint(-5);
        let neg_big = Value::Tag(3, Box::new(Value::Bytes(&[4])));
        assert_eq!(hash_value(&nint).unwrap(), hash_value(&neg_big).unwrap());
    }

    #[test]
    fn rejects_unhashable_cbor() {
        assert!(hash_value(&Value::Bool(true)).is_err());
        assert!(hash_value(&Value::Float(1.0)).is_err());
        assert!(hash_value(&Value::Null).is_err());
        assert!(hash_value(&Value::Tag(42, Box::new(Value::Uint(1)))).is_err());
        assert!(hash_of_map_value(&Value::Map(vec![(Value::Uint(1), Value::Uint(1))])).is_err());
        assert!(hash_of_map_value(&Value::Array(vec![])).is_err());
    }
}
