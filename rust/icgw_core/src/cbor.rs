//! CBOR, IC flavour: a borrowed value tree for the core's own parsing (certificates, envelopes, hash
//! trees), plus `cbor_decode` / `cbor_encode` for Python.
//!
//! The IC wraps every body in the self-describe tag 55799; it carries no meaning, so the parser drops it
//! wherever it appears. Limits are strict because the input comes from the network: nesting depth is
//! bounded, declared lengths are checked against the bytes actually present before anything is
//! allocated, and trailing bytes are an error.

use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};

use crate::errors::CborError;

/// The self-describe tag (`d9 d9 f7`), present on every IC request and response body.
pub const SELF_DESCRIBE_TAG: u64 = 55799;
/// Deep enough for any IC hash tree (forks nest about twice the log of the label count).
pub const DEFAULT_MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Uint(u64),
    /// A negative integer, `-1 - n` for the CBOR argument `n`: always in `-2^64 ..= -1`.
    Nint(i128),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Bool(bool),
    Null,
    Undefined,
    Float(f64),
    /// Any tag other than 55799 (bignums 2 and 3 are resolved only at the Python boundary).
    Tag(u64, Box<Value<'a>>),
}

impl<'a> Value<'a> {
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&'a str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Uint(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Value<'a>, Value<'a>)]> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under a text key of a map; `None` for a missing key or a non-map.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.as_map()?
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if *t == key))
            .map(|(_, v)| v)
    }

    /// Like [`Value::get`], but a CBOR `null` counts as absent (one real certificate encodes an absent
    /// delegation that way).
    pub fn get_present(&self, key: &str) -> Option<&Value<'a>> {
        self.get(key).filter(|v| !matches!(v, Value::Null))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Uint(_) | Value::Nint(_) => "integer",
            Value::Bytes(_) => "byte string",
            Value::Text(_) => "text string",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Bool(_) => "bool",
            Value::Null => "null",
            Value::Undefined => "undefined",
            Value::Float(_) => "float",
            Value::Tag(..) => "tagged value",
        }
    }
}

crate::message_error!(
    /// Why a byte string is not acceptable CBOR. The message is meant for humans and logs.
    DecodeError => CborError
);

fn err_at(d: &Decoder<'_>, what: impl std::fmt::Display) -> DecodeError {
    DecodeError(format!("invalid CBOR at byte {}: {what}", d.position()))
}

/// Parse exactly one CBOR item that spans all of `data`.
pub fn parse(data: &[u8]) -> Result<Value<'_>, DecodeError> {
    parse_with_depth(data, DEFAULT_MAX_DEPTH)
}

pub fn parse_with_depth(data: &[u8], max_depth: usize) -> Result<Value<'_>, DecodeError> {
    if data.is_empty() {
        return Err(DecodeError("invalid CBOR: empty input".into()));
    }
    let mut d = Decoder::new(data);
    let value = parse_item(&mut d, max_depth)?;
    if d.position() != data.len() {
        return Err(DecodeError(format!(
            "invalid CBOR: {} trailing bytes after the first item",
            data.len() - d.position()
        )));
    }
    Ok(value)
}

/// Make sure a declared element count could possibly fit in what is left of the input, so that a
/// hostile length never turns into a large allocation.
fn checked_len(d: &Decoder<'_>, len: u64, min_item_size: usize) -> Result<usize, DecodeError> {
    let remaining = d.input().len() - d.position();
    match usize::try_from(len) {
        Ok(n) if n.checked_mul(min_item_size).is_some_and(|b| b <= remaining) => Ok(n),
        _ => Err(err_at(
            d,
            format!("declared length {len} exceeds the {remaining} bytes left"),
        )),
    }
}

/// Parse the item at the decoder's position (used by callers that need item offsets).
pub fn parse_item<'a>(d: &mut Decoder<'a>, depth: usize) -> Result<Value<'a>, DecodeError> {
    if depth == 0 {
        return Err(err_at(d, "nesting too deep"));
    }
    let ty = d.datatype().map_err(|e| err_at(d, e))?;
    let value = match ty {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::Uint(d.u64().map_err(|e| err_at(d, e))?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let n = i128::from(d.int().map_err(|e| err_at(d, e))?);
            if n >= 0 {
                Value::Uint(n as u64)
            } else {
                Value::Nint(n)
            }
        }
        Type::Bytes => Value::Bytes(d.bytes().map_err(|e| err_at(d, e))?),
        Type::String => Value::Text(d.str().map_err(|e| err_at(d, e))?),
        Type::Array => {
            let len = d.array().map_err(|e| err_at(d, e))?.unwrap_or_default();
            let n = checked_len(d, len, 1)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(parse_item(d, depth - 1)?);
            }
            Value::Array(items)
        }
        Type::Map => {
            let len = d.map().map_err(|e| err_at(d, e))?.unwrap_or_default();
            let n = checked_len(d, len, 2)?;
            let mut entries: Vec<(Value<'a>, Value<'a>)> = Vec::with_capacity(n);
            for _ in 0..n {
                let key = parse_item(d, depth - 1)?;
                if entries.iter().any(|(k, _)| *k == key) {
                    return Err(err_at(d, "duplicate map key"));
                }
                let value = parse_item(d, depth - 1)?;
                entries.push((key, value));
            }
            Value::Map(entries)
        }
        Type::Tag => {
            let tag = d.tag().map_err(|e| err_at(d, e))?.as_u64();
            let inner = parse_item(d, depth - 1)?;
            if tag == SELF_DESCRIBE_TAG {
                inner
            } else {
                Value::Tag(tag, Box::new(inner))
            }
        }
        Type::Bool => Value::Bool(d.bool().map_err(|e| err_at(d, e))?),
        Type::Null => {
            d.null().map_err(|e| err_at(d, e))?;
            Value::Null
        }
        Type::Undefined => {
            d.undefined().map_err(|e| err_at(d, e))?;
            Value::Undefined
        }
        Type::F16 => Value::Float(d.f16().map_err(|e| err_at(d, e))? as f64),
        Type::F32 => Value::Float(d.f32().map_err(|e| err_at(d, e))? as f64),
        Type::F64 => Value::Float(d.f64().map_err(|e| err_at(d, e))?),
        Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => {
            return Err(err_at(
                d,
                "indefinite-length items are not used by the IC and not accepted",
            ))
        }
        Type::Simple => return Err(err_at(d, "unassigned simple value")),
        Type::Break => return Err(err_at(d, "unexpected break")),
        Type::Unknown(b) => return Err(err_at(d, format!("unknown initial byte 0x{b:02x}"))),
    };
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers shared by the modules that build CBOR (envelopes, frames, trees).

/// An encoder over a growable buffer. Writing to a `Vec` cannot fail, so the helpers below hide
/// minicbor's `Result`s.
pub struct Writer {
    enc: Encoder<Vec<u8>>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::with_capacity(64)
    }
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            enc: Encoder::new(Vec::with_capacity(capacity)),
        }
    }

    pub fn self_describe(&mut self) -> &mut Self {
        self.enc
            .tag(Tag::new(SELF_DESCRIBE_TAG))
            .expect("writing to a Vec cannot fail");
        self
    }

    pub fn tag(&mut self, tag: u64) -> &mut Self {
        self.enc.tag(Tag::new(tag)).expect("writing to a Vec cannot fail");
        self
    }

    pub fn map(&mut self, len: u64) -> &mut Self {
        self.enc.map(len).expect("writing to a Vec cannot fail");
        self
    }

    pub fn array(&mut self, len: u64) -> &mut Self {
        self.enc.array(len).expect("writing to a Vec cannot fail");
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.enc.str(s).expect("writing to a Vec cannot fail");
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.enc.bytes(b).expect("writing to a Vec cannot fail");
        self
    }

    pub fn uint(&mut self, n: u64) -> &mut Self {
        self.enc.u64(n).expect("writing to a Vec cannot fail");
        self
    }

    /// A negative integer given as `-1 - n`'s argument `n` (so `-2^64` is representable).
    pub fn nint_arg(&mut self, n: u64) -> &mut Self {
        // Major type 1 with argument n; minicbor's Int carries exactly that.
        let int = minicbor::data::Int::try_from(-1i128 - n as i128).expect("in range by construction");
        self.enc.int(int).expect("writing to a Vec cannot fail");
        self
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.enc.bool(b).expect("writing to a Vec cannot fail");
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.enc.null().expect("writing to a Vec cannot fail");
        self
    }

    pub fn float(&mut self, f: f64) -> &mut Self {
        self.enc.f64(f).expect("writing to a Vec cannot fail");
        self
    }

    /// Append bytes that are already valid CBOR (e.g. a pre-encoded sub-item).
    pub fn raw(&mut self, cbor: &[u8]) -> &mut Self {
        self.enc.writer_mut().extend_from_slice(cbor);
        self
    }

    pub fn value(&mut self, v: &Value<'_>) -> &mut Self {
        match v {
            Value::Uint(n) => self.uint(*n),
            Value::Nint(n) => self.nint_arg((-1 - *n) as u64),
            Value::Bytes(b) => self.bytes(b),
            Value::Text(s) => self.text(s),
            Value::Array(items) => {
                self.array(items.len() as u64);
                for item in items {
                    self.value(item);
                }
                self
            }
            Value::Map(entries) => {
                self.map(entries.len() as u64);
                for (k, v) in entries {
                    self.value(k).value(v);
                }
                self
            }
            Value::Bool(b) => self.bool(*b),
            Value::Null => self.null(),
            Value::Undefined => {
                self.enc.undefined().expect("writing to a Vec cannot fail");
                self
            }
            Value::Float(f) => self.float(*f),
            Value::Tag(t, inner) => self.tag(*t).value(inner),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.enc.into_writer()
    }
}

// ---------------------------------------------------------------------------------------------
// Python boundary.

const TAG_POSITIVE_BIGNUM: u64 = 2;
const TAG_NEGATIVE_BIGNUM: u64 = 3;

fn bignum_to_py<'py>(py: Python<'py>, magnitude: &[u8], negative: bool) -> PyResult<Bound<'py, PyAny>> {
    let int_type = py.get_type::<PyInt>();
    let n = int_type.call_method1("from_bytes", (PyBytes::new(py, magnitude), "big"))?;
    if negative {
        // Tag 3 encodes -1 - n.
        n.neg()?.call_method1("__sub__", (1,))
    } else {
        Ok(n)
    }
}

pub fn value_to_py<'py>(py: Python<'py>, v: &Value<'_>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Uint(n) => n.into_pyobject(py)?.into_any(),
        Value::Nint(n) => n.into_pyobject(py)?.into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Text(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(entries) => {
            let dict = PyDict::new(py);
            for (k, v) in entries {
                let key = value_to_py(py, k)?;
                if key.hash().is_err() {
                    return Err(CborError::new_err(format!(
                        "invalid CBOR: a {} cannot be a map key here",
                        k.type_name()
                    )));
                }
                dict.set_item(key, value_to_py(py, v)?)?;
            }
            if dict.len() != entries.len() {
                return Err(CborError::new_err("invalid CBOR: duplicate map key"));
            }
            dict.into_any()
        }
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Null | Value::Undefined => py.None().into_bound(py),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Tag(TAG_POSITIVE_BIGNUM, inner) | Value::Tag(TAG_NEGATIVE_BIGNUM, inner) => {
            let negative = matches!(v, Value::Tag(TAG_NEGATIVE_BIGNUM, _));
            match inner.as_ref() {
                Value::Bytes(b) => bignum_to_py(py, b, negative)?,
                other => {
                    return Err(CborError::new_err(format!(
                        "invalid CBOR: a bignum must wrap a byte string, not a {}",
                        other.type_name()
                    )))
                }
            }
        }
        Value::Tag(t, _) => return Err(CborError::new_err(format!("unsupported CBOR tag {t}"))),
    })
}

fn int_to_cbor(w: &mut Writer, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(n) = obj.extract::<u64>() {
        w.uint(n);
        return Ok(());
    }
    if let Ok(n) = obj.extract::<i128>() {
        if (-(1i128 << 64)..0).contains(&n) {
            w.nint_arg((-1 - n) as u64);
            return Ok(());
        }
    }
    // Outside the 64-bit argument range: a bignum (tag 2 for n >= 0, tag 3 for -1 - n).
    let negative = obj.lt(0)?;
    let magnitude = if negative {
        obj.neg()?.call_method1("__sub__", (1,))?
    } else {
        obj.clone()
    };
    let nbytes = magnitude
        .call_method0("bit_length")?
        .extract::<usize>()?
        .div_ceil(8);
    let be: Vec<u8> = magnitude.call_method1("to_bytes", (nbytes, "big"))?.extract()?;
    w.tag(if negative {
        TAG_NEGATIVE_BIGNUM
    } else {
        TAG_POSITIVE_BIGNUM
    })
    .bytes(&be);
    Ok(())
}

pub fn py_to_cbor(w: &mut Writer, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
    if depth == 0 {
        return Err(CborError::new_err("cannot encode: value nested too deeply"));
    }
    if obj.is_none() {
        w.null();
    } else if let Ok(b) = obj.downcast::<PyBool>() {
        w.bool(b.is_true());
    } else if obj.is_instance_of::<PyInt>() {
        int_to_cbor(w, obj)?;
    } else if let Ok(b) = obj.downcast::<PyBytes>() {
        w.bytes(b.as_bytes());
    } else if let Ok(s) = obj.downcast::<PyString>() {
        w.text(&s.to_cow()?);
    } else if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        let copy = obj.py().get_type::<PyBytes>().call1((obj,))?;
        w.bytes(copy.downcast::<PyBytes>()?.as_bytes());
    } else if let Ok(list) = obj.downcast::<PyList>() {
        w.array(list.len() as u64);
        for item in list.iter() {
            py_to_cbor(w, &item, depth - 1)?;
        }
    } else if let Ok(tuple) = obj.downcast::<PyTuple>() {
        w.array(tuple.len() as u64);
        for item in tuple.iter() {
            py_to_cbor(w, &item, depth - 1)?;
        }
    } else if let Ok(dict) = obj.downcast::<PyDict>() {
        w.map(dict.len() as u64);
        for (k, v) in dict.iter() {
            py_to_cbor(w, &k, depth - 1)?;
            py_to_cbor(w, &v, depth - 1)?;
        }
    } else if let Ok(f) = obj.downcast::<PyFloat>() {
        w.float(f.value());
    } else {
        return Err(CborError::new_err(format!(
            "cannot encode a {} as CBOR",
            obj.get_type().name()?
        )));
    }
    Ok(())
}

/// Decode one CBOR item (tag 55799 dropped anywhere; tags 2/3 become ints).
#[pyfunction]
#[pyo3(signature = (data, *, max_depth = 128))]
fn cbor_decode<'py>(py: Python<'py>, data: &[u8], max_depth: usize) -> PyResult<Bound<'py, PyAny>> {
    let value = parse_with_depth(data, max_depth)?;
    value_to_py(py, &value)
}

/// Encode a value as CBOR with definite lengths, prefixed by tag 55799 unless `self_describe=False`.
#[pyfunction]
#[pyo3(signature = (value, *, self_describe = true))]
fn cbor_encode<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    self_describe: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut w = Writer::with_capacity(256);
    if self_describe {
        w.self_describe();
    }
    py_to_cbor(&mut w, value, DEFAULT_MAX_DEPTH)?;
    Ok(PyBytes::new(py, &w.into_bytes()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cbor_decode, m)?)?;
    m.add_function(wrap_pyfunction!(cbor_encode, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_self_describe_tag_anywhere() {
        // 55799([55799(1)])
        let v = parse(&[0xd9, 0xd9, 0xf7, 0x81, 0xd9, 0xd9, 0xf7, 0x01]).unwrap();
        assert_eq!(v, Value::Array(vec![Value::Uint(1)]));
    }

    #[test]
    fn rejects_trailing_bytes_and_huge_lengths() {
        assert!(parse(&[0x01, 0x02]).is_err());
        // array of 2^32 items with nothing behind it
        assert!(parse(&[0x9a, 0xff, 0xff, 0xff, 0xff]).is_err());
        // byte string longer than the input
        assert!(parse(&[0x58, 0x20, 0x00]).is_err());
    }

    #[test]
    fn rejects_deep_nesting() {
        let data = vec![0x81u8; 1000];
        assert!(parse(&data).is_err());
    }

    #[test]
    fn negative_integers_round_trip_at_the_edge() {
        let mut w = Writer::default();
        w.nint_arg(u64::MAX);
        let bytes = w.into_bytes();
        assert_eq!(parse(&bytes).unwrap(), Value::Nint(-1 - u64::MAX as i128));
    }
}
