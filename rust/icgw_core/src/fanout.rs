//! Fan-out: turn the reply of `ws_get_messages` into ready-to-send client frames.
//!
//! The reply (`CanisterWsGetMessagesResult`, PROTOCOL §2.1) carries a batch of messages for many clients
//! plus one certificate and one witness tree that certify all of them. Each client frame is the CBOR map
//! `{key: text, content: bytes, cert: bytes, tree: bytes}` (PROTOCOL §3.3) without the self-describe tag
//! (as the reference gateway writes it; the SDK accepts both). The SDK only accepts definite-length,
//! non-empty byte strings (§4.4), so a batch whose messages could not be relayed is rejected as a whole.
//!
//! Cost model: the cert/tree part of a frame (typically a few KiB, identical in every frame of a batch) is
//! CBOR-encoded once, and each frame is written directly into its Python `bytes` object by concatenating
//! a small per-message head, the content and that shared tail.
//!
//! Nonce rule (PROTOCOL §5.4): every key ends in `_<decimal nonce>`; nonces within a batch must be
//! strictly consecutive. The first one must equal the poller's `expected_nonce` unless that is `None` or
//! `0`: a poller that starts at 0 asks for "everything still queued", and the CDK may already have deleted
//! the oldest messages, so its first batch may start anywhere (the reference poller skips the check for
//! the same reason).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::candid_ws::{
    self, boolean, field, nat64, parse_arg_types, principal_bytes, record, take_blob, text, u64_param,
    CandidWsError,
};
use crate::certificate::{self, CertError, Scope};
use crate::errors::MessagesError;
use crate::hash::sha256;
use crate::hash_tree::{self, Lookup};
use crate::principal;

/// One message of a batch, with its routing information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub client_principal: Vec<u8>,
    pub client_nonce: u64,
    /// `<gateway principal text>_<nonce, 20 digits>`: the label the message is certified under.
    pub key: String,
    /// The gateway nonce parsed from `key`.
    pub nonce: u64,
    /// The CBOR `WebsocketMessage` bytes (certified, relayed verbatim).
    pub content: Vec<u8>,
}

/// A decoded `Ok` reply of `ws_get_messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedBatch {
    pub messages: Vec<OutgoingMessage>,
    pub cert: Vec<u8>,
    pub tree: Vec<u8>,
    pub is_end_of_queue: bool,
}

/// Why a reply cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutError {
    /// Not Candid of type `CanisterWsGetMessagesResult`.
    Candid(CandidWsError),
    /// The canister answered `Err(text)`.
    Canister(String),
    /// Well-typed, but breaks the protocol (nonces, empty byte strings, malformed key).
    Protocol(String),
}

impl std::fmt::Display for FanoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FanoutError::Candid(e) => write!(f, "{e}"),
            FanoutError::Canister(text) | FanoutError::Protocol(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for FanoutError {}

impl From<CandidWsError> for FanoutError {
    fn from(e: CandidWsError) -> Self {
        FanoutError::Candid(e)
    }
}

impl From<FanoutError> for PyErr {
    fn from(e: FanoutError) -> PyErr {
        match e {
            FanoutError::Candid(e) => e.into(),
            FanoutError::Canister(text) | FanoutError::Protocol(text) => MessagesError::new_err(text),
        }
    }
}

fn protocol(what: impl Into<String>) -> FanoutError {
    FanoutError::Protocol(what.into())
}

// ---------------------------------------------------------------------------------------------
// Decoding the reply.

/// The reply type, except that `is_end_of_queue` is read as `opt bool`: CDKs before 0.3.1 do not send it,
/// and the reference gateway then assumes the end of the queue.
const REPLY_TYPES: &str =
    "(variant { Ok : record { messages : vec CanisterOutputMessage; cert : blob; tree : blob; \
                           is_end_of_queue : opt bool }; Err : text })";

/// Decode the Candid reply of `ws_get_messages` (no protocol checks; see [`check_batch`]).
///
/// Replies whose type is exactly `CanisterWsGetMessagesResult` (what every CDK ≥ 0.3.1 sends, in any
/// type-table order) take a specialised reader; everything else, including every malformed reply, goes
/// through the `candid` crate, which applies the full subtyping rules and reports the errors.
pub fn decode_get_messages_result(reply: &[u8]) -> Result<CertifiedBatch, FanoutError> {
    if let Some(decoded) = fast::decode(reply) {
        return decoded.map_err(FanoutError::Canister);
    }
    decode_get_messages_result_generic(reply)
}

/// The general path of [`decode_get_messages_result`], through the `candid` crate.
pub fn decode_get_messages_result_generic(reply: &[u8]) -> Result<CertifiedBatch, FanoutError> {
    let parsed = parse_arg_types(REPLY_TYPES)?;
    let mut args = candid_ws::decode_typed(reply, &parsed.env, &parsed.types)?;
    let result = std::mem::replace(&mut args[0], candid::IDLValue::Null);
    let candid::IDLValue::Variant(candid::types::value::VariantValue(case, _)) = result else {
        return Err(CandidWsError(format!(
            "invalid Candid: reply: expected a variant, got {}",
            result.value_ty()
        ))
        .into());
    };
    let case = *case;
    if case.id.get_id() == candid_ws::idl_hash("Err") {
        return Err(FanoutError::Canister(text(&case.val, "Err")?));
    }
    let mut ok = case.val;
    let candid::IDLValue::Record(fields) = &mut ok else {
        return Err(CandidWsError(format!(
            "invalid Candid: Ok: expected a record, got {}",
            ok.value_ty()
        ))
        .into());
    };
    let mut messages = Vec::new();
    let mut cert = Vec::new();
    let mut tree = Vec::new();
    let mut is_end_of_queue = true;
    let ids = [
        candid_ws::idl_hash("messages"),
        candid_ws::idl_hash("cert"),
        candid_ws::idl_hash("tree"),
    ];
    let end_id = candid_ws::idl_hash("is_end_of_queue");
    for f in fields.iter_mut() {
        let id = f.id.get_id();
        if id == ids[0] {
            messages = take_messages(&mut f.val)?;
        } else if id == ids[1] {
            cert = take_blob(&mut f.val, "cert")?;
        } else if id == ids[2] {
            tree = take_blob(&mut f.val, "tree")?;
        } else if id == end_id {
            if let candid::IDLValue::Opt(b) = &f.val {
                is_end_of_queue = boolean(b, "is_end_of_queue")?;
            }
        }
    }
    Ok(CertifiedBatch {
        messages,
        cert,
        tree,
        is_end_of_queue,
    })
}

fn take_messages(v: &mut candid::IDLValue) -> Result<Vec<OutgoingMessage>, FanoutError> {
    let candid::IDLValue::Vec(items) = v else {
        return Err(CandidWsError(format!(
            "invalid Candid: messages: expected a vec, got {}",
            v.value_ty()
        ))
        .into());
    };
    let content_id = candid_ws::idl_hash("content");
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter_mut().enumerate() {
        let path = format!("messages[{i}]");
        let candid::IDLValue::Record(fields) = item else {
            return Err(CandidWsError(format!("invalid Candid: {path}: expected a record")).into());
        };
        let mut content = None;
        for f in fields.iter_mut() {
            if f.id.get_id() == content_id {
                content = Some(take_blob(&mut f.val, "content")?);
            }
        }
        let fields: &[candid::types::value::IDLField] = fields;
        let client_key = record(field(fields, "client_key", &path)?, "client_key")?;
        let key = text(field(fields, "key", &path)?, "key")?;
        let nonce = key_nonce(&key)?;
        out.push(OutgoingMessage {
            client_principal: principal_bytes(
                field(client_key, "client_principal", &path)?,
                "client_principal",
            )?,
            client_nonce: nat64(field(client_key, "client_nonce", &path)?, "client_nonce")?,
            key,
            nonce,
            content: content
                .ok_or_else(|| CandidWsError(format!("invalid Candid: {path}: missing field content")))?,
        });
    }
    Ok(out)
}

/// The most digits a u64 nonce has (the CDK pads to exactly this many).
const MAX_NONCE_DIGITS: usize = 20;

/// The gateway nonce of a message key: the decimal number after the last `_`.
pub fn key_nonce(key: &str) -> Result<u64, FanoutError> {
    let bad = |why: &str| protocol(format!("message key {key:?} {why}"));
    let (_, digits) = key
        .rsplit_once('_')
        .ok_or_else(|| bad("has no '_<nonce>' suffix"))?;
    if digits.is_empty() || digits.len() > MAX_NONCE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("does not end in a decimal nonce of 1 to 20 digits"));
    }
    digits
        .parse::<u64>()
        .map_err(|_| bad("has a nonce larger than 2^64 - 1"))
}

/// The protocol checks a batch must pass before its messages are relayed (see the module docs).
pub fn check_batch(batch: &CertifiedBatch, expected_nonce: Option<u64>) -> Result<(), FanoutError> {
    let Some(first) = batch.messages.first() else {
        return Ok(());
    };
    if let Some(expected) = expected_nonce.filter(|n| *n != 0) {
        if first.nonce != expected {
            return Err(protocol(format!(
                "non-consecutive nonce: expected {expected}, got {} (key {:?})",
                first.nonce, first.key
            )));
        }
    }
    for pair in batch.messages.windows(2) {
        let expected = pair[0].nonce.checked_add(1);
        if expected != Some(pair[1].nonce) {
            let expected = expected.map_or_else(|| "none (nonce overflow)".to_owned(), |n| n.to_string());
            return Err(protocol(format!(
                "non-consecutive nonce: expected {expected}, got {} (key {:?})",
                pair[1].nonce, pair[1].key
            )));
        }
    }
    if let Some(m) = batch.messages.iter().find(|m| m.content.is_empty()) {
        return Err(protocol(format!(
            "message {:?} has empty content, which the SDK cannot receive",
            m.key
        )));
    }
    if batch.cert.is_empty() || batch.tree.is_empty() {
        return Err(protocol(format!(
            "a batch of {} messages has an empty {}, which the SDK cannot receive",
            batch.messages.len(),
            if batch.cert.is_empty() { "cert" } else { "tree" }
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The specialised reader.

/// A reader for replies of exactly the type `CanisterWsGetMessagesResult`.
///
/// Decoding through `IDLValue` costs about 2 µs per message; this reader does the same work in well
/// under a tenth of that. It never reports an error: on anything it does not fully understand (another
/// type, extra arguments, unusual type-table entries, malformed values) it returns `None` and the caller
/// uses the `candid` crate, so it can only ever accept a subset of what the crate accepts, with the same
/// result (a unit test compares both on mutated replies). Its work is linear in the input: every length
/// and count is checked against the bytes left before anything is allocated.
mod fast {
    use super::{CertifiedBatch, OutgoingMessage};
    use crate::candid_ws::{idl_hash, MAX_HEADER_LEN};
    use crate::principal::MAX_PRINCIPAL_LEN;

    // Primitive type codes as they appear (SLEB128) in type references.
    const BOOL: i64 = -2;
    const NAT8: i64 = -5;
    const NAT64: i64 = -8;
    const TEXT: i64 = -15;
    const PRINCIPAL: i64 = -24;
    // Type-table constructors.
    const OPT: i64 = -18;
    const VEC: i64 = -19;
    const RECORD: i64 = -20;
    const VARIANT: i64 = -21;
    /// More entries than any CDK writes for this type; larger tables take the general path.
    const MAX_TABLE_LEN: u64 = 64;
    /// The smallest message on the wire: 1-byte key, 1-byte content, 2-byte principal, 8-byte nonce.
    const MIN_MESSAGE_LEN: usize = 12;

    /// The expected type, with fields in the order of their ids (as on the wire).
    pub(super) enum Shape {
        Prim(i64),
        Vec(&'static Shape),
        Record(&'static [(u32, Shape)]),
        Variant(&'static [(u32, Shape)]),
    }

    const BLOB: Shape = Shape::Vec(&Shape::Prim(NAT8));
    const CLIENT_KEY: Shape = Shape::Record(&[
        (idl_hash("client_principal"), Shape::Prim(PRINCIPAL)),
        (idl_hash("client_nonce"), Shape::Prim(NAT64)),
    ]);
    const OUTPUT_MESSAGE: Shape = Shape::Record(&[
        (idl_hash("key"), Shape::Prim(TEXT)),
        (idl_hash("content"), BLOB),
        (idl_hash("client_key"), CLIENT_KEY),
    ]);
    const CERTIFIED_MESSAGES: Shape = Shape::Record(&[
        (idl_hash("messages"), Shape::Vec(&OUTPUT_MESSAGE)),
        (idl_hash("cert"), BLOB),
        (idl_hash("tree"), BLOB),
        (idl_hash("is_end_of_queue"), Shape::Prim(BOOL)),
    ]);
    pub(super) const RESULT: Shape = Shape::Variant(&[
        (idl_hash("Ok"), CERTIFIED_MESSAGES),
        (idl_hash("Err"), Shape::Prim(TEXT)),
    ]);

    enum Entry {
        Opt,
        Vec(i64),
        Record(Vec<(u32, i64)>),
        Variant(Vec<(u32, i64)>),
    }

    struct Reader<'a> {
        data: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn remaining(&self) -> usize {
            self.data.len() - self.pos
        }

        fn byte(&mut self) -> Option<u8> {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            Some(b)
        }

        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if n > self.remaining() {
                return None;
            }
            let out = &self.data[self.pos..self.pos + n];
            self.pos += n;
            Some(out)
        }

        /// LEB128 (overlong forms allowed, as Candid allows them), at most 64 bits.
        fn uleb(&mut self) -> Option<u64> {
            let mut value = 0u64;
            for shift in (0..70).step_by(7) {
                let b = self.byte()?;
                let bits = u64::from(b & 0x7f);
                if shift == 63 && bits > 1 {
                    return None;
                }
                value |= bits.checked_shl(shift)?;
                if b & 0x80 == 0 {
                    return Some(value);
                }
            }
            None
        }

        /// Signed LEB128, small values only (type codes and table indices).
        fn sleb(&mut self) -> Option<i64> {
            let mut value = 0i64;
            let mut shift = 0;
            loop {
                let b = self.byte()?;
                value |= i64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    if b & 0x40 != 0 {
                        value |= -1i64 << shift;
                    }
                    return Some(value);
                }
                if shift > 28 {
                    return None;
                }
            }
        }

        /// A length that must fit in the rest of the input.
        fn len(&mut self) -> Option<usize> {
            let n = usize::try_from(self.uleb()?).ok()?;
            (n <= self.remaining()).then_some(n)
        }

        fn blob(&mut self) -> Option<Vec<u8>> {
            let n = self.len()?;
            Some(self.take(n)?.to_vec())
        }

        fn text(&mut self) -> Option<String> {
            let n = self.len()?;
            Some(std::str::from_utf8(self.take(n)?).ok()?.to_owned())
        }

        fn nat64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }

        fn boolean(&mut self) -> Option<bool> {
            match self.byte()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }
        }

        fn principal(&mut self) -> Option<Vec<u8>> {
            // 1 = a transparent reference (the only kind the IC uses), then the bytes.
            if self.byte()? != 1 {
                return None;
            }
            let n = self.len()?;
            if n > MAX_PRINCIPAL_LEN {
                return None;
            }
            Some(self.take(n)?.to_vec())
        }
    }

    fn type_ref(r: &mut Reader<'_>, table_len: u64) -> Option<i64> {
        let t = r.sleb()?;
        let valid = (t >= 0 && (t as u64) < table_len) || (-17..=-1).contains(&t) || t == PRINCIPAL;
        valid.then_some(t)
    }

    fn fields(r: &mut Reader<'_>, table_len: u64) -> Option<Vec<(u32, i64)>> {
        let n = r.len()?;
        let mut out: Vec<(u32, i64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let id = u32::try_from(r.uleb()?).ok()?;
            // Field ids must be strictly increasing; otherwise let the crate decide (and reject).
            if out.last().is_some_and(|(prev, _)| *prev >= id) {
                return None;
            }
            out.push((id, type_ref(r, table_len)?));
        }
        Some(out)
    }

    fn table(r: &mut Reader<'_>) -> Option<Vec<Entry>> {
        let len = r.uleb()?;
        if len > MAX_TABLE_LEN {
            return None;
        }
        let mut entries = Vec::with_capacity(len as usize);
        for _ in 0..len {
            entries.push(match r.sleb()? {
                OPT => {
                    type_ref(r, len)?;
                    Entry::Opt
                }
                VEC => Entry::Vec(type_ref(r, len)?),
                RECORD => Entry::Record(fields(r, len)?),
                VARIANT => Entry::Variant(fields(r, len)?),
                _ => return None,
            });
        }
        Some(entries)
    }

    /// Whether wire type `t` is exactly `shape`. Recursion is bounded by the (finite) shape.
    fn matches_shape(table: &[Entry], t: i64, shape: &Shape) -> bool {
        let entry = usize::try_from(t).ok().and_then(|i| table.get(i));
        let same_fields = |wire: &[(u32, i64)], want: &[(u32, Shape)]| {
            wire.len() == want.len()
                && wire
                    .iter()
                    .zip(want)
                    .all(|((id, t), (want_id, s))| id == want_id && matches_shape(table, *t, s))
        };
        match (shape, entry) {
            (Shape::Prim(code), None) => t == *code,
            (Shape::Vec(elem), Some(Entry::Vec(t))) => matches_shape(table, *t, elem),
            (Shape::Record(want), Some(Entry::Record(wire))) => same_fields(wire, want),
            (Shape::Variant(want), Some(Entry::Variant(wire))) => same_fields(wire, want),
            _ => false,
        }
    }

    fn message(r: &mut Reader<'_>) -> Option<OutgoingMessage> {
        // Field order on the wire: key, content, client_key { client_principal, client_nonce }.
        let key = r.text()?;
        let content = r.blob()?;
        let client_principal = r.principal()?;
        let client_nonce = r.nat64()?;
        let nonce = super::key_nonce(&key).ok()?;
        Some(OutgoingMessage {
            client_principal,
            client_nonce,
            key,
            nonce,
            content,
        })
    }

    /// `Some(Ok(batch))`, `Some(Err(text))` for the canister's `Err`, or `None` for "not handled here".
    pub(super) fn decode(data: &[u8]) -> Option<Result<CertifiedBatch, String>> {
        let mut r = Reader { data, pos: 0 };
        if r.take(4)? != b"DIDL" {
            return None;
        }
        let table = table(&mut r)?;
        if r.uleb()? != 1 {
            return None;
        }
        let arg = type_ref(&mut r, table.len() as u64)?;
        if r.pos > MAX_HEADER_LEN {
            return None;
        }
        if !matches_shape(&table, arg, &RESULT) {
            return None;
        }
        let result = match r.uleb()? {
            0 => {
                // Ok: messages, cert, tree, is_end_of_queue (ids ascending).
                let count = usize::try_from(r.uleb()?).ok()?;
                if count > r.remaining() / MIN_MESSAGE_LEN {
                    return None;
                }
                let mut messages = Vec::with_capacity(count);
                for _ in 0..count {
                    messages.push(message(&mut r)?);
                }
                let cert = r.blob()?;
                let tree = r.blob()?;
                let is_end_of_queue = r.boolean()?;
                Ok(CertifiedBatch {
                    messages,
                    cert,
                    tree,
                    is_end_of_queue,
                })
            }
            1 => Err(r.text()?),
            _ => return None,
        };
        (r.remaining() == 0).then_some(result)
    }
}

// ---------------------------------------------------------------------------------------------
// Frames.

const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_MAP: u8 = 5;

/// Append a definite-length CBOR head with the shortest argument encoding.
fn push_head(out: &mut Vec<u8>, major: u8, len: u64) {
    let m = major << 5;
    if len < 24 {
        out.push(m | len as u8);
    } else if len <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, len as u8]);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else if len <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn push_text(out: &mut Vec<u8>, s: &str) {
    push_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `"cert": <bytes> "tree": <bytes>`: the last two entries of every frame of a batch.
pub fn frame_tail(cert: &[u8], tree: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cert.len() + tree.len() + 20);
    push_text(&mut out, "cert");
    push_head(&mut out, MAJOR_BYTES, cert.len() as u64);
    out.extend_from_slice(cert);
    push_text(&mut out, "tree");
    push_head(&mut out, MAJOR_BYTES, tree.len() as u64);
    out.extend_from_slice(tree);
    out
}

/// `{"key": …, "content": <head>`: everything of a frame before the content bytes.
fn frame_head(key: &str, content_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 24);
    push_head(&mut out, MAJOR_MAP, 4);
    push_text(&mut out, "key");
    push_text(&mut out, key);
    push_text(&mut out, "content");
    push_head(&mut out, MAJOR_BYTES, content_len as u64);
    out
}

/// One client frame (see [`frame_tail`] for the shared part).
pub fn encode_frame(message: &OutgoingMessage, tail: &[u8]) -> Vec<u8> {
    let mut out = frame_head(&message.key, message.content.len());
    out.reserve(message.content.len() + tail.len());
    out.extend_from_slice(&message.content);
    out.extend_from_slice(tail);
    out
}

fn frame_to_py<'py>(
    py: Python<'py>,
    message: &OutgoingMessage,
    tail: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let head = frame_head(&message.key, message.content.len());
    let len = head.len() + message.content.len() + tail.len();
    PyBytes::new_with(py, len, |buf| {
        let (h, rest) = buf.split_at_mut(head.len());
        let (c, t) = rest.split_at_mut(message.content.len());
        h.copy_from_slice(&head);
        c.copy_from_slice(&message.content);
        t.copy_from_slice(tail);
        Ok(())
    })
}

/// Check that the IC certified every message of the batch for `canister_id`: the certificate verifies
/// for the canister (one pairing check once its delegation is cached), the witness `tree` hashes to the
/// canister's certified data, and each message's content hashes to the leaf at `websocket/<key>`.
/// This is what every client checks on its own messages; the gateway checks once per batch so that it
/// never relays something a client would reject.
pub fn verify_batch(
    batch: &CertifiedBatch,
    root_key_der: &[u8],
    canister_id: &[u8],
    now_ns: Option<u64>,
    max_age_ns: Option<u64>,
) -> Result<(), CertError> {
    if batch.messages.is_empty() {
        return Ok(());
    }
    // A certificate seen before costs no pairing check: the core remembers verified signatures.
    let cert = certificate::verify(
        &batch.cert,
        root_key_der,
        Scope::Canister(canister_id),
        now_ns,
        max_age_ns,
    )?;
    let certified_data = match cert.lookup(&[b"canister", canister_id, b"certified_data"]) {
        Lookup::Found(data) => data,
        _ => {
            return Err(CertError::NotCertified(format!(
                "the certificate holds no certified data for canister {}",
                principal::to_text(canister_id)
            )))
        }
    };
    let witness = hash_tree::parse_cbor(&batch.tree)
        .map_err(|e| CertError::NotCertified(format!("the message witness is malformed: {e}")))?;
    if witness.digest().as_slice() != certified_data {
        return Err(CertError::NotCertified(
            "the message witness does not match the certified data".into(),
        ));
    }
    for message in &batch.messages {
        match witness.lookup_path(&[b"websocket", message.key.as_bytes()]) {
            Lookup::Found(leaf) if leaf == sha256(&message.content).as_slice() => {}
            Lookup::Found(_) => {
                return Err(CertError::NotCertified(format!(
                    "message {} does not match its certified hash",
                    message.key
                )))
            }
            _ => {
                return Err(CertError::NotCertified(format!(
                    "message {} is not in the witness",
                    message.key
                )))
            }
        }
    }
    Ok(())
}

/// The type table and argument list of `(CanisterWsGetMessagesResult)`, in the order this encoder writes
/// its values: variant { Ok; Err }, the certified-messages record, vec of output messages, the output
/// message record, blob, and the client key record. Field ids are the Candid hashes of the field names.
const GET_MESSAGES_RESULT_HEADER: &[u8] = &[
    b'D', b'I', b'D', b'L', 0x06, //
    0x6b, 0x02, 0xbc, 0x8a, 0x01, 0x01, 0xc5, 0xfe, 0xd2, 0x01, 0x71, // variant { Ok : 1; Err : text }
    0x6c, 0x04, 0xcc, 0xb1, 0xf7, 0xa7, 0x03, 0x02, 0xe4, 0xcd, 0xf4, 0x8d, 0x04,
    0x04, // record { messages : 2;
    0xde, 0xb2, 0x8e, 0xe8, 0x04, 0x04, 0x82, 0x9c, 0x8d, 0xf4, 0x0d,
    0x7e, //  cert, tree : 4; is_end_of_queue : bool }
    0x6d, 0x03, // vec 3
    0x6c, 0x03, 0x9f, 0x93, 0xc6, 0x02, 0x71, 0xb9, 0x9a, 0xde, 0xcb, 0x01,
    0x04, // record { key : text; content : 4;
    0xeb, 0xb4, 0x9c, 0xe9, 0x03, 0x05, //  client_key : 5 }
    0x6d, 0x7b, // blob
    0x6c, 0x02, 0xfa, 0x80, 0xa2, 0x94, 0x05, 0x68, 0xbb, 0xd1, 0xea, 0xcd, 0x0e,
    0x78, // record { principal; nat64 }
    0x01, 0x00, // one argument, of type 0
];

fn push_uleb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn push_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    push_uleb(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The Candid reply `Ok(record { messages; cert; tree; is_end_of_queue })` of `ws_get_messages`, written
/// directly (the replica emulator's hot path; the generic encoder costs several µs per message).
pub fn encode_get_messages_ok(
    messages: &[OutgoingMessage],
    cert: &[u8],
    tree: &[u8],
    is_end_of_queue: bool,
) -> Vec<u8> {
    let body: usize = messages
        .iter()
        .map(|m| m.key.len() + m.content.len() + m.client_principal.len() + 32)
        .sum();
    let mut out = Vec::with_capacity(GET_MESSAGES_RESULT_HEADER.len() + body + cert.len() + tree.len() + 16);
    out.extend_from_slice(GET_MESSAGES_RESULT_HEADER);
    out.push(0x00); // variant index of Ok (Ok sorts before Err)
    push_uleb(&mut out, messages.len() as u64);
    for m in messages {
        push_blob(&mut out, m.key.as_bytes());
        push_blob(&mut out, &m.content);
        out.push(0x01); // a principal reference, not opaque
        push_blob(&mut out, &m.client_principal);
        out.extend_from_slice(&m.client_nonce.to_le_bytes());
    }
    push_blob(&mut out, cert);
    push_blob(&mut out, tree);
    out.push(u8::from(is_end_of_queue));
    out
}

// ---------------------------------------------------------------------------------------------
// Python boundary.

/// A checked batch of certified messages from one `ws_get_messages` reply.
#[pyclass(frozen, module = "icgw._core")]
pub struct MessagesBatch {
    batch: CertifiedBatch,
    /// The cert and tree entries, CBOR-encoded once and shared by every frame.
    tail: Vec<u8>,
}

#[pymethods]
impl MessagesBatch {
    /// `(client_principal, client_nonce, key, content)` per message, in queue order (built on access).
    #[getter]
    fn messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self.batch.messages.iter().map(|m| {
            PyTuple::new(
                py,
                [
                    PyBytes::new(py, &m.client_principal).into_any(),
                    m.client_nonce.into_pyobject(py)?.into_any(),
                    PyString::new(py, &m.key).into_any(),
                    PyBytes::new(py, &m.content).into_any(),
                ],
            )
        });
        PyList::new(py, items.collect::<PyResult<Vec<_>>>()?)
    }

    #[getter]
    fn cert<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.batch.cert)
    }

    #[getter]
    fn tree<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.batch.tree)
    }

    #[getter]
    fn is_end_of_queue(&self) -> bool {
        self.batch.is_end_of_queue
    }

    #[getter]
    fn first_nonce(&self) -> Option<u64> {
        self.batch.messages.first().map(|m| m.nonce)
    }

    #[getter]
    fn last_nonce(&self) -> Option<u64> {
        self.batch.messages.last().map(|m| m.nonce)
    }

    /// The client frames, one per message, in queue order.
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let frames = self.batch.messages.iter().map(|m| frame_to_py(py, m, &self.tail));
        PyList::new(py, frames.collect::<PyResult<Vec<_>>>()?)
    }

    /// `(client_principal, client_nonce, frame)` per message: the frames with what routes them.
    fn routed_frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self.batch.messages.iter().map(|m| {
            PyTuple::new(
                py,
                [
                    PyBytes::new(py, &m.client_principal).into_any(),
                    m.client_nonce.into_pyobject(py)?.into_any(),
                    frame_to_py(py, m, &self.tail)?.into_any(),
                ],
            )
        });
        PyList::new(py, items.collect::<PyResult<Vec<_>>>()?)
    }

    fn __len__(&self) -> usize {
        self.batch.messages.len()
    }

    /// Raise `CertificateError` unless the IC certified every message for `canister_id` (see
    /// `verify_batch`). With `now_ns`, the certificate must also be fresh (`max_age_ns`, default 5 min).
    #[pyo3(signature = (root_key_der, canister_id, *, now_ns = None, max_age_ns = None))]
    fn verify(
        &self,
        root_key_der: &[u8],
        canister_id: &[u8],
        now_ns: Option<u64>,
        max_age_ns: Option<u64>,
    ) -> PyResult<()> {
        Ok(verify_batch(
            &self.batch,
            root_key_der,
            canister_id,
            now_ns,
            max_age_ns,
        )?)
    }

    fn __repr__(&self) -> String {
        format!(
            "MessagesBatch(len={}, first_nonce={:?}, last_nonce={:?}, is_end_of_queue={})",
            self.batch.messages.len(),
            self.first_nonce(),
            self.last_nonce(),
            self.batch.is_end_of_queue
        )
    }
}

/// Decode and check a `ws_get_messages` reply (see the module docs for the rules).
pub fn decode_messages_batch(
    reply: &[u8],
    expected_nonce: Option<u64>,
) -> Result<CertifiedBatch, FanoutError> {
    let batch = decode_get_messages_result(reply)?;
    check_batch(&batch, expected_nonce)?;
    Ok(batch)
}

/// Decode and check the Candid reply of `ws_get_messages`. `Err(text)` raises `MessagesError(text)`;
/// Candid of another type raises `CandidError`; protocol violations raise `MessagesError`.
#[pyfunction]
#[pyo3(signature = (reply_arg, expected_nonce = None))]
fn decode_messages_reply(
    reply_arg: &[u8],
    expected_nonce: Option<&Bound<'_, PyAny>>,
) -> PyResult<MessagesBatch> {
    let expected_nonce = expected_nonce
        .map(|n| u64_param(n, "expected_nonce").map_err(|e| MessagesError::new_err(e.to_string())))
        .transpose()?;
    let batch = decode_messages_batch(reply_arg, expected_nonce)?;
    let tail = if batch.messages.is_empty() {
        Vec::new()
    } else {
        frame_tail(&batch.cert, &batch.tree)
    };
    Ok(MessagesBatch { batch, tail })
}

/// Encode the `Ok` reply of `ws_get_messages` from `(client_principal, client_nonce, key, content)`
/// tuples. Keys are not parsed or checked here: this is the canister's side of the protocol.
#[pyfunction]
fn encode_messages_reply(
    messages: Vec<(Vec<u8>, u64, String, Vec<u8>)>,
    cert: &[u8],
    tree: &[u8],
    is_end_of_queue: bool,
) -> PyResult<Py<PyBytes>> {
    let messages: Vec<OutgoingMessage> = messages
        .into_iter()
        .map(|(client_principal, client_nonce, key, content)| OutgoingMessage {
            client_principal,
            client_nonce,
            key,
            nonce: 0,
            content,
        })
        .collect();
    if let Some(m) = messages
        .iter()
        .find(|m| m.client_principal.len() > crate::principal::MAX_PRINCIPAL_LEN)
    {
        return Err(MessagesError::new_err(format!(
            "client principal of {} is too long",
            m.key
        )));
    }
    let encoded = encode_get_messages_ok(&messages, cert, tree, is_end_of_queue);
    Python::with_gil(|py| Ok(PyBytes::new(py, &encoded).unbind()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_messages_reply, m)?)?;
    m.add_class::<MessagesBatch>()?;
    m.add_function(wrap_pyfunction!(decode_messages_reply, m)?)?;
    Ok(())
}

#[cfg(test)]
use fast as fast_shapes;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::{self, Value};
    use candid::{CandidType, Principal};

    #[derive(CandidType)]
    struct ClientKey {
        client_principal: Principal,
        client_nonce: u64,
    }

    #[derive(CandidType)]
    struct Message {
        client_key: ClientKey,
        key: String,
        content: Vec<u8>,
    }

    #[derive(CandidType)]
    struct Certified {
        messages: Vec<Message>,
        cert: Vec<u8>,
        tree: Vec<u8>,
        is_end_of_queue: bool,
    }

    /// The reply of a CDK before 0.3.1 (no `is_end_of_queue`).
    #[derive(CandidType)]
    struct CertifiedOld {
        messages: Vec<Message>,
        cert: Vec<u8>,
        tree: Vec<u8>,
    }

    const GATEWAY: &str = "sqdfl-mr4km-2hfjy-gajqo-xqvh7-hf4mf-nra4i-3it6l-neaw4-soolw-tae";

    fn message(nonce: u64, content: &[u8]) -> Message {
        Message {
            client_key: ClientKey {
                client_principal: Principal::from_slice(&[nonce as u8; 10]),
                client_nonce: nonce * 3,
            },
            key: format!("{GATEWAY}_{nonce:020}"),
            content: content.to_vec(),
        }
    }

    fn reply(nonces: std::ops::Range<u64>) -> Vec<u8> {
        let messages = nonces.map(|n| message(n, &[0xa5, n as u8])).collect();
        let ok: Result<Certified, String> = Ok(Certified {
            messages,
            cert: vec![1; 300],
            tree: vec![2; 40],
            is_end_of_queue: false,
        });
        candid::encode_one(ok).unwrap()
    }

    /// Deterministic pseudo-random numbers (xorshift64*), for mutation tests without a `rand` dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn shape_field_lists_are_sorted_by_id() {
        fn check(shape: &fast_shapes::Shape) {
            use fast_shapes::Shape;
            match shape {
                Shape::Prim(_) => {}
                Shape::Vec(elem) => check(elem),
                Shape::Record(fields) | Shape::Variant(fields) => {
                    assert!(fields.windows(2).all(|w| w[0].0 < w[1].0));
                    fields.iter().for_each(|(_, s)| check(s));
                }
            }
        }
        check(&fast_shapes::RESULT);
    }

    #[test]
    fn fast_path_handles_the_cdk_encoding_and_agrees_with_the_crate() {
        let data = reply(7..57);
        let fast = fast::decode(&data).expect("fast path taken").unwrap();
        let generic = decode_get_messages_result_generic(&data).unwrap();
        assert_eq!(fast, generic);
        assert_eq!(fast.messages.len(), 50);
        assert_eq!(fast.messages[0].nonce, 7);
        assert_eq!(fast.messages[0].client_nonce, 21);
        assert!(!fast.is_end_of_queue);
        let err: Result<Certified, String> = Err("no".into());
        let err = candid::encode_one(err).unwrap();
        assert_eq!(fast::decode(&err), Some(Err("no".into())));
        assert_eq!(
            decode_get_messages_result(&err),
            Err(FanoutError::Canister("no".into()))
        );
    }

    #[test]
    fn old_cdk_replies_without_is_end_of_queue_take_the_general_path() {
        let ok: Result<CertifiedOld, String> = Ok(CertifiedOld {
            messages: vec![message(1, b"x")],
            cert: vec![1],
            tree: vec![2],
        });
        let data = candid::encode_one(ok).unwrap();
        assert!(fast::decode(&data).is_none());
        let batch = decode_get_messages_result(&data).unwrap();
        assert!(batch.is_end_of_queue);
        assert_eq!(batch.messages[0].content, b"x");
    }

    #[test]
    fn fast_path_never_accepts_what_the_crate_rejects() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let bases = [
            reply(0..3),
            reply(5..6),
            candid::encode_one(Err::<Certified, String>("e".into())).unwrap(),
        ];
        let mut fast_taken = 0;
        for round in 0..20_000 {
            let mut data = bases[round % bases.len()].clone();
            match rng.below(4) {
                0 => {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
                1 => data.truncate(rng.below(data.len())),
                2 => {
                    let i = rng.below(data.len());
                    data.insert(i, rng.next() as u8);
                }
                _ => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
            }
            if let Some(fast) = fast::decode(&data) {
                fast_taken += 1;
                let generic = decode_get_messages_result_generic(&data);
                match fast {
                    Ok(batch) => assert_eq!(generic, Ok(batch), "{}", hex::encode(&data)),
                    Err(text) => assert_eq!(
                        generic,
                        Err(FanoutError::Canister(text)),
                        "{}",
                        hex::encode(&data)
                    ),
                }
            }
        }
        // Mutations inside contents, keys and blobs keep the shape: the fast path must see some of them.
        assert!(fast_taken > 1_000, "{fast_taken}");
    }

    #[test]
    fn fast_path_accepts_a_reordered_type_table() {
        // variant { Ok : record {...}; Err : text } with the table written leaves-first.
        let mut data = b"DIDL\x06".to_vec();
        data.extend_from_slice(b"\x6d\x7b"); // 0: blob
        data.extend_from_slice(b"\x6c\x02\xfa\x80\xa2\x94\x05\x68\xbb\xd1\xea\xcd\x0e\x78"); // 1: ClientKey
        data.extend_from_slice(
            b"\x6c\x03\x9f\x93\xc6\x02\x71\xb9\x9a\xde\xcb\x01\x00\xeb\xb4\x9c\xe9\x03\x01",
        ); // 2
        data.extend_from_slice(b"\x6d\x02"); // 3: vec CanisterOutputMessage
        data.extend_from_slice(
            b"\x6c\x04\xcc\xb1\xf7\xa7\x03\x03\xe4\xcd\xf4\x8d\x04\x00\xde\xb2\x8e\xe8\x04\x00\x82\x9c\x8d\xf4\x0d\x7e",
        ); // 4
        data.extend_from_slice(b"\x6b\x02\xbc\x8a\x01\x04\xc5\xfe\xd2\x01\x71"); // 5: result
        data.extend_from_slice(b"\x01\x05"); // one argument of type 5
        data.extend_from_slice(b"\x00\x01"); // Ok, one message
        data.extend_from_slice(b"\x03k_9\x01\xa5\x01\x01\x07\x09\x00\x00\x00\x00\x00\x00\x00"); // key, content, client_key
        data.extend_from_slice(b"\x01\xcc\x01\xdd\x01"); // cert, tree, is_end_of_queue
        let fast = fast::decode(&data).expect("fast path taken").unwrap();
        assert_eq!(decode_get_messages_result_generic(&data).unwrap(), fast);
        assert_eq!(fast.messages[0].nonce, 9);
        assert_eq!(fast.messages[0].client_principal, [7]);
        assert_eq!(fast.messages[0].client_nonce, 9);
        assert!(fast.is_end_of_queue);
    }

    #[test]
    fn the_general_path_quota_admits_dense_honest_replies() {
        // 2000 messages of the smallest possible size (empty principal, key "_7", 1-byte content) cost the
        // decoder about 9 units per byte, the densest honest reply there is; typical replies cost ~1.2.
        let messages = (0..2000u64)
            .map(|n| Message {
                client_key: ClientKey {
                    client_principal: Principal::from_slice(&[]),
                    client_nonce: n,
                },
                key: "_7".into(),
                content: vec![1],
            })
            .collect();
        let ok: Result<Certified, String> = Ok(Certified {
            messages,
            cert: vec![1; 2000],
            tree: vec![2; 500],
            is_end_of_queue: true,
        });
        let data = candid::encode_one(ok).unwrap();
        assert_eq!(
            decode_get_messages_result_generic(&data).unwrap().messages.len(),
            2000
        );
    }

    #[test]
    fn key_nonces() {
        assert_eq!(key_nonce(&format!("{GATEWAY}_00000000000000000002")), Ok(2));
        assert_eq!(key_nonce("a_b_18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "nounderscore",
            "x_",
            "x_18446744073709551616",
            "x_-1",
            "x_+1",
            "x_1 ",
            "x_000000000000000000001",
        ] {
            assert!(matches!(key_nonce(bad), Err(FanoutError::Protocol(_))), "{bad}");
        }
    }

    #[test]
    fn batch_checks() {
        let batch = decode_get_messages_result(&reply(4..7)).unwrap();
        assert!(check_batch(&batch, None).is_ok());
        assert!(check_batch(&batch, Some(0)).is_ok());
        assert!(check_batch(&batch, Some(4)).is_ok());
        let err = check_batch(&batch, Some(5)).unwrap_err().to_string();
        assert!(err.contains("expected 5, got 4"), "{err}");
        let mut gap = batch.clone();
        gap.messages.remove(1);
        let err = check_batch(&gap, None).unwrap_err().to_string();
        assert!(err.contains("expected 5, got 6"), "{err}");
        let mut empty_content = batch.clone();
        empty_content.messages[2].content.clear();
        assert!(check_batch(&empty_content, None)
            .unwrap_err()
            .to_string()
            .contains("empty content"));
        let mut empty_cert = batch.clone();
        empty_cert.cert.clear();
        assert!(check_batch(&empty_cert, None)
            .unwrap_err()
            .to_string()
            .contains("empty cert"));
        let empty = CertifiedBatch {
            messages: vec![],
            cert: vec![],
            tree: vec![],
            is_end_of_queue: true,
        };
        assert!(check_batch(&empty, Some(9)).is_ok());
    }

    #[test]
    fn cbor_heads_are_minimal() {
        for len in [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
        ] {
            let mut ours = Vec::new();
            push_head(&mut ours, MAJOR_BYTES, len);
            // minicbor's minimal unsigned-integer head, moved to major type 2.
            let mut theirs = crate::cbor::Writer::default();
            theirs.uint(len);
            let mut theirs = theirs.into_bytes();
            theirs[0] |= MAJOR_BYTES << 5;
            assert_eq!(ours, theirs, "{len}");
        }
    }

    #[test]
    fn frames_are_the_four_entry_map() {
        let batch = decode_get_messages_result(&reply(1..3)).unwrap();
        let tail = frame_tail(&batch.cert, &batch.tree);
        for m in &batch.messages {
            let frame = encode_frame(m, &tail);
            let v = cbor::parse(&frame).unwrap();
            assert_eq!(v.as_map().unwrap().len(), 4);
            assert_eq!(v.get("key"), Some(&Value::Text(&m.key)));
            assert_eq!(v.get("content"), Some(&Value::Bytes(&m.content)));
            assert_eq!(v.get("cert"), Some(&Value::Bytes(&batch.cert)));
            assert_eq!(v.get("tree"), Some(&Value::Bytes(&batch.tree)));
        }
    }
}
