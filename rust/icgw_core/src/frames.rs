//! The WebSocket frames between the SDK and the gateway (PROTOCOL.md §3.4, §3.5, §4.2).
//!
//! A client frame is CBOR `{envelope: <IC envelope>}`. The gateway must forward the envelope unchanged
//! (it is signed by the client), so decoding keeps the byte range of the envelope inside the frame
//! instead of re-encoding it. Field values are kept as ranges into one owned copy of the frame and
//! only become Python objects when asked for.

use std::ops::Range;

use minicbor::Decoder;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cbor::{self, Value, Writer, DEFAULT_MAX_DEPTH};
use crate::errors::FrameError;
use crate::principal;

const SELF_DESCRIBE_PREFIX: [u8; 3] = [0xd9, 0xd9, 0xf7];

crate::message_error!(
    /// Why a WebSocket frame breaks the IC WebSocket protocol.
    FrameDecodeError => FrameError
);

fn bad(msg: impl Into<String>) -> FrameDecodeError {
    FrameDecodeError(msg.into())
}

/// A decoded client frame: the fields the gateway routes on, plus the envelope to forward.
#[derive(Debug, Clone)]
pub struct ClientFrame {
    data: Vec<u8>,
    pub request_type: &'static str,
    pub method_name: String,
    pub ingress_expiry: u64,
    canister_id: Range<usize>,
    sender: Range<usize>,
    arg: Range<usize>,
    nonce: Option<Range<usize>>,
    envelope: Range<usize>,
}

impl ClientFrame {
    pub fn canister_id(&self) -> &[u8] {
        &self.data[self.canister_id.clone()]
    }
    pub fn sender(&self) -> &[u8] {
        &self.data[self.sender.clone()]
    }
    pub fn arg(&self) -> &[u8] {
        &self.data[self.arg.clone()]
    }
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.clone().map(|r| &self.data[r])
    }
    /// The envelope exactly as the client sent it, without the self-describe tag.
    pub fn envelope_untagged(&self) -> &[u8] {
        &self.data[self.envelope.clone()]
    }
}

/// Offset range of a borrowed slice inside `base` (the slice must point into `base`).
fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

fn required<'v, 'a>(content: &'v Value<'a>, field: &str) -> Result<&'v Value<'a>, FrameDecodeError> {
    content
        .get(field)
        .ok_or_else(|| bad(format!("the envelope content has no {field:?} field")))
}

fn required_bytes<'a>(content: &Value<'a>, field: &str) -> Result<&'a [u8], FrameDecodeError> {
    let v = required(content, field)?;
    v.as_bytes().ok_or_else(|| {
        bad(format!(
            "the envelope content field {field:?} must be a byte string, not a {}",
            v.type_name()
        ))
    })
}

fn required_principal<'a>(content: &Value<'a>, field: &str) -> Result<&'a [u8], FrameDecodeError> {
    let b = required_bytes(content, field)?;
    principal::check_len(b).map_err(|e| bad(format!("the envelope content field {field:?}: {}", e.0)))?;
    Ok(b)
}

pub fn decode_client_frame(data: &[u8]) -> Result<ClientFrame, FrameDecodeError> {
    if data.is_empty() {
        return Err(bad("empty frame"));
    }
    // Find the `envelope` entry of the top-level map while remembering where its value starts and ends.
    let mut d = Decoder::new(data);
    let mut depth = DEFAULT_MAX_DEPTH;
    while d.datatype().ok() == Some(minicbor::data::Type::Tag) {
        let tag = d.tag().map_err(|e| bad(format!("invalid CBOR frame: {e}")))?;
        if tag.as_u64() != cbor::SELF_DESCRIBE_TAG {
            return Err(bad(format!(
                "the frame must be a CBOR map, not a value with tag {}",
                tag.as_u64()
            )));
        }
        depth = depth
            .checked_sub(1)
            .filter(|d| *d > 0)
            .ok_or_else(|| bad("too many tags"))?;
    }
    let entries = match d.map() {
        Ok(Some(n)) => n,
        Ok(None) => return Err(bad("the frame must be a definite-length CBOR map")),
        Err(_) => return Err(bad("the frame must be a CBOR map {envelope: ...}")),
    };
    let mut envelope: Option<(Value<'_>, Range<usize>)> = None;
    for _ in 0..entries {
        let key = cbor::parse_item(&mut d, depth).map_err(|e| bad(e.0))?;
        let start = d.position();
        let value = cbor::parse_item(&mut d, depth).map_err(|e| bad(e.0))?;
        if key == Value::Text("envelope") {
            if envelope.is_some() {
                return Err(bad("the frame has two envelope fields"));
            }
            envelope = Some((value, start..d.position()));
        }
    }
    if d.position() != data.len() {
        return Err(bad(format!(
            "{} trailing bytes after the frame",
            data.len() - d.position()
        )));
    }
    let (envelope, mut envelope_range) = envelope.ok_or_else(|| bad("the frame has no envelope field"))?;
    // Forward the envelope without any self-describe tag of its own; the relay adds exactly one.
    while data[envelope_range.clone()].starts_with(&SELF_DESCRIBE_PREFIX) {
        envelope_range.start += SELF_DESCRIBE_PREFIX.len();
    }
    if envelope.as_map().is_none() {
        return Err(bad(format!(
            "the envelope must be a map, not a {}",
            envelope.type_name()
        )));
    }
    let content = envelope
        .get("content")
        .ok_or_else(|| bad("the envelope has no content"))?;
    if content.as_map().is_none() {
        return Err(bad("the envelope content must be a map"));
    }
    let request_type = match required(content, "request_type")?.as_text() {
        Some("call") => "call",
        Some("query") => "query",
        Some(other) => return Err(bad(format!("request type {other:?} cannot be relayed"))),
        None => {
            return Err(bad(
                "the envelope content field \"request_type\" must be a text string",
            ))
        }
    };
    let method_name = required(content, "method_name")?
        .as_text()
        .ok_or_else(|| bad("the envelope content field \"method_name\" must be a text string"))?
        .to_owned();
    let ingress_expiry = required(content, "ingress_expiry")?
        .as_u64()
        .ok_or_else(|| bad("the envelope content field \"ingress_expiry\" must be an unsigned integer"))?;
    let nonce = match content.get("nonce") {
        None => None,
        Some(v) => Some(range_in(
            data,
            v.as_bytes()
                .ok_or_else(|| bad("the envelope content field \"nonce\" must be a byte string"))?,
        )),
    };
    Ok(ClientFrame {
        request_type,
        method_name,
        ingress_expiry,
        canister_id: range_in(data, required_principal(content, "canister_id")?),
        sender: range_in(data, required_principal(content, "sender")?),
        arg: range_in(data, required_bytes(content, "arg")?),
        nonce,
        envelope: envelope_range,
        data: data.to_vec(),
    })
}

/// `{gateway_principal: <bytes>}` with the self-describe tag, as the reference gateway sends it.
pub fn encode_handshake(gateway_principal: &[u8]) -> Result<Vec<u8>, FrameDecodeError> {
    if gateway_principal.is_empty() {
        // The SDK decodes an empty byte string as an ArrayBuffer and rejects the handshake.
        return Err(bad("the gateway principal must not be empty"));
    }
    principal::check_len(gateway_principal).map_err(|e| bad(e.0))?;
    let mut w = Writer::with_capacity(24 + gateway_principal.len());
    w.self_describe()
        .map(1)
        .text("gateway_principal")
        .bytes(gateway_principal);
    Ok(w.into_bytes())
}

/// A client frame as Python sees it. Byte fields are materialised on access.
#[pyclass(name = "ClientFrame", module = "icgw._core", frozen)]
pub struct PyClientFrame {
    inner: ClientFrame,
}

#[pymethods]
impl PyClientFrame {
    #[getter]
    fn request_type(&self) -> &'static str {
        self.inner.request_type
    }
    #[getter]
    fn method_name(&self) -> &str {
        &self.inner.method_name
    }
    #[getter]
    fn ingress_expiry(&self) -> u64 {
        self.inner.ingress_expiry
    }
    #[getter]
    fn canister_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.canister_id())
    }
    #[getter]
    fn sender<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.sender())
    }
    #[getter]
    fn arg<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.arg())
    }
    #[getter]
    fn nonce<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.nonce().map(|n| PyBytes::new(py, n))
    }
    /// The envelope to POST to the IC: the client's bytes, unchanged, behind one self-describe tag.
    #[getter]
    fn envelope<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let body = self.inner.envelope_untagged();
        PyBytes::new_with(py, SELF_DESCRIBE_PREFIX.len() + body.len(), |buf| {
            buf[..SELF_DESCRIBE_PREFIX.len()].copy_from_slice(&SELF_DESCRIBE_PREFIX);
            buf[SELF_DESCRIBE_PREFIX.len()..].copy_from_slice(body);
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "ClientFrame(request_type={:?}, canister_id={:?}, sender={:?}, method_name={:?}, {} arg bytes)",
            self.inner.request_type,
            principal::to_text(self.inner.canister_id()),
            principal::to_text(self.inner.sender()),
            self.inner.method_name,
            self.inner.arg().len()
        )
    }
}

#[pyfunction(name = "decode_client_frame")]
fn py_decode_client_frame(data: &[u8]) -> PyResult<PyClientFrame> {
    Ok(PyClientFrame {
        inner: decode_client_frame(data)?,
    })
}

#[pyfunction(name = "encode_handshake")]
fn py_encode_handshake<'py>(py: Python<'py>, gateway_principal: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &encode_handshake(gateway_principal)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClientFrame>()?;
    m.add_function(wrap_pyfunction!(py_decode_client_frame, m)?)?;
    m.add_function(wrap_pyfunction!(py_encode_handshake, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(content: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::default();
        w.self_describe().map(1).text("envelope").map(3).text("content");
        content(&mut w);
        w.text("sender_pubkey")
            .bytes(&[1, 2, 3])
            .text("sender_sig")
            .bytes(&[4, 5]);
        w.into_bytes()
    }

    fn call_content(w: &mut Writer) {
        w.map(6)
            .text("request_type")
            .text("call")
            .text("canister_id")
            .bytes(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
            .text("method_name")
            .text("ws_open")
            .text("arg")
            .bytes(b"DIDL\x00\x00")
            .text("sender")
            .bytes(&[7; 29])
            .text("ingress_expiry")
            .uint(1_700_000_000_000_000_000);
    }

    #[test]
    fn keeps_the_envelope_bytes() {
        let data = frame(call_content);
        let f = decode_client_frame(&data).unwrap();
        assert_eq!(f.method_name, "ws_open");
        assert_eq!(f.arg(), b"DIDL\x00\x00");
        let envelope = cbor::parse(f.envelope_untagged()).unwrap();
        assert!(envelope.get("sender_sig").is_some());
        // The envelope is the tail of the frame: everything after `a1 68 "envelope"` and the tag.
        assert!(data.ends_with(f.envelope_untagged()));
    }

    #[test]
    fn rejects_read_state_and_missing_fields() {
        let read_state = frame(|w| {
            w.map(1).text("request_type").text("read_state");
        });
        assert!(decode_client_frame(&read_state)
            .unwrap_err()
            .0
            .contains("read_state"));
        let no_method = frame(|w| {
            w.map(1).text("request_type").text("call");
        });
        assert!(decode_client_frame(&no_method).is_err());
    }

    #[test]
    fn handshake_matches_the_reference_layout() {
        let hs = encode_handshake(&[9; 29]).unwrap();
        assert_eq!(&hs[..4], &[0xd9, 0xd9, 0xf7, 0xa1]);
        assert_eq!(hs[4], 0x71);
        assert_eq!(&hs[5..22], b"gateway_principal");
        assert_eq!(&hs[22..24], &[0x58, 0x1d]);
        assert!(encode_handshake(&[]).is_err());
    }
}
