//! Candid for the IC WebSocket interface, built on the official `candid` crate.
//!
//! * Generic paths: Candid text ⇄ binary (`candid_encode` / `candid_decode`), and type-directed
//!   Python values ⇄ binary (`candid_encode_values` / `candid_decode_values`), where argument types are
//!   written in Candid syntax and resolved against the embedded `ws_types.did` (plus any `type X = …;`
//!   declarations written in front of the argument list).
//! * Typed paths for the other modules: [`decode_ws_open_arguments`], [`decode_ws_message_arguments`],
//!   the `encode_*` helpers (the fan-out has its own reader: [`crate::fanout`]).
//! * The CBOR `WebsocketMessage` that the CDK certifies and the SDK decodes ([`encode_websocket_message`],
//!   [`decode_websocket_message`]).
//!
//! Every decoder runs with decoding and skipping quotas proportional to the input length, so the work
//! (and memory) a message can demand is bounded by a constant factor of its size: a few bytes that
//! declare a billion-element `vec null` are rejected instead of being expanded. Decoded values are also
//! checked for nesting depth before anything recursive (printing, conversion) walks them.
//!
//! Typed decoding goes through `IDLValue` with an expected type: the crate then applies the Candid
//! subtyping rules (any type-table order, extra fields and arguments skipped, an absent or mismatched
//! `opt` becomes none). Derived `Deserialize` structs would be faster but need `serde` as a direct
//! dependency of this crate.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use candid::types::value::{IDLArgs, IDLField, IDLValue, VariantValue};
use candid::types::{Label, Type, TypeEnv, TypeInner};
use candid::{CandidType, DecoderConfig, Int, Nat, Principal};
use candid_parser::syntax::{IDLInitArgs, IDLProg};
use candid_parser::typing::{check_init_args, check_prog};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PySequence, PyString, PyTuple,
};

use crate::cbor::{self, Value, Writer};
use crate::errors::CandidError;
use crate::principal::{self, MAX_PRINCIPAL_LEN};

/// The Candid interface of a CDK canister (types of PROTOCOL §2.1 plus the test canister's `AppMessage`).
pub const WS_TYPES_DID: &str = include_str!("ws_types.did");

/// The largest Candid message accepted. IC replies and ingress messages are at most a few MiB; anything
/// larger did not come from the IC.
pub const MAX_CANDID_LEN: usize = 8 << 20;
/// Work units (the crate's cost model: roughly one per value byte, a few more per field or element)
/// allowed per input byte, on top of [`QUOTA_BASE`]. Typical WebSocket replies cost about 1.2 per byte;
/// the densest honest one (thousands of minimal messages, each principal charged 30) about 9.
pub const QUOTA_PER_BYTE: usize = 16;
/// Fixed work allowance, so that small messages with a few fields are never refused.
pub const QUOTA_BASE: usize = 16_384;
/// The crate multiplies the cost of values decoded without a Rust type (`IDLValue`) by this factor in
/// the decoding quota (but not in the skipping quota); our decoders always decode to `IDLValue`.
const UNTYPED_COST_FACTOR: usize = 50;
/// Type-table entries accepted; the WebSocket types need about a dozen.
const MAX_TYPE_TABLE_LEN: usize = 1_024;
/// Bytes of type table accepted (the part of the message before the values).
pub(crate) const MAX_HEADER_LEN: usize = 64 * 1024;
/// Nesting depth of a decoded or parsed value. Printing and Python conversion are recursive, so the depth
/// must be bounded by us rather than by the stack; the WebSocket types nest at most 6 deep.
pub const MAX_VALUE_DEPTH: usize = 128;
/// Length of a Candid type-list string (`types` arguments); they come from code, not from the network.
const MAX_TYPES_TEXT_LEN: usize = 64 * 1024;
/// Parsed type lists kept per thread; cleared when full (the set used by a program is small).
const TYPES_CACHE_CAPACITY: usize = 256;

// ---------------------------------------------------------------------------------------------
// Errors.

crate::message_error!(
    /// Why bytes or values are not acceptable Candid of the expected type. Meant for humans and logs.
    CandidWsError => CandidError
);

fn invalid(context: &str, e: impl std::fmt::Display) -> CandidWsError {
    // `{:#}` keeps anyhow's context chain ("Fail to decode argument 0 …: <cause>") on one line.
    CandidWsError(format!("{context}: {e:#}"))
}

fn candid_error(e: candid::Error) -> CandidWsError {
    invalid("invalid Candid", e)
}

// ---------------------------------------------------------------------------------------------
// Field ids.

/// The Candid field id of a name: `h = h·223 + byte (mod 2³²)` over the UTF-8 bytes.
pub const fn idl_hash(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut h = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        h = h.wrapping_mul(223).wrapping_add(bytes[i] as u32);
        i += 1;
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Bounded decoding.

/// Quotas for decoding `len` bytes: the total work the decoder may do is proportional to the input.
pub fn decoder_config(len: usize) -> DecoderConfig {
    let budget = QUOTA_BASE.saturating_add(len.saturating_mul(QUOTA_PER_BYTE));
    let mut config = DecoderConfig::new();
    config
        .set_decoding_quota(budget.saturating_mul(UNTYPED_COST_FACTOR))
        .set_skipping_quota(budget)
        .set_max_type_len(MAX_TYPE_TABLE_LEN)
        .set_max_header_len(MAX_HEADER_LEN)
        // Short messages: never dump decoder state or huge types into an exception.
        .set_full_error_message(false);
    config
}

fn check_input_len(data: &[u8]) -> Result<(), CandidWsError> {
    if data.len() > MAX_CANDID_LEN {
        return Err(CandidWsError(format!(
            "invalid Candid: {} bytes is more than the {MAX_CANDID_LEN} accepted",
            data.len()
        )));
    }
    Ok(())
}

/// Whether a value nests deeper than `max` (an opt, vec, record or variant is one level). Iterative, so
/// that it is safe on any value the decoder or parser could produce.
fn nests_deeper_than(value: &IDLValue, max: usize) -> bool {
    let mut stack: Vec<(&IDLValue, usize)> = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        if depth > max {
            return true;
        }
        match v {
            IDLValue::Opt(inner) => stack.push((inner, depth + 1)),
            IDLValue::Vec(items) => stack.extend(items.iter().map(|item| (item, depth + 1))),
            IDLValue::Record(fields) => stack.extend(fields.iter().map(|f| (&f.val, depth + 1))),
            IDLValue::Variant(VariantValue(field, _)) => stack.push((&field.val, depth + 1)),
            _ => {}
        }
    }
    false
}

fn check_depth(args: &[IDLValue]) -> Result<(), CandidWsError> {
    if args.iter().any(|v| nests_deeper_than(v, MAX_VALUE_DEPTH)) {
        return Err(CandidWsError(format!(
            "invalid Candid: values nest more than {MAX_VALUE_DEPTH} levels deep"
        )));
    }
    Ok(())
}

/// Decode a whole message without expected types (wire types as they are, field names as ids).
pub fn decode_untyped(data: &[u8]) -> Result<IDLArgs, CandidWsError> {
    check_input_len(data)?;
    let args = IDLArgs::from_bytes_with_config(data, &decoder_config(data.len())).map_err(candid_error)?;
    check_depth(&args.args)?;
    Ok(args)
}

/// Decode a whole message at the expected argument types: Candid subtyping applies, extra arguments are
/// skipped, missing trailing `opt`/`null`/`reserved` arguments decode as none.
pub fn decode_typed(data: &[u8], env: &TypeEnv, types: &[Type]) -> Result<Vec<IDLValue>, CandidWsError> {
    check_input_len(data)?;
    let args = IDLArgs::from_bytes_with_types_with_config(data, env, types, &decoder_config(data.len()))
        .map_err(candid_error)?;
    check_depth(&args.args)?;
    Ok(args.args)
}

// ---------------------------------------------------------------------------------------------
// The type environment of ws_types.did, and argument type lists.

/// Argument types resolved against an environment (ws_types.did plus the list's own declarations).
pub struct ArgTypes {
    pub env: TypeEnv,
    pub types: Vec<Type>,
}

fn load_ws_env() -> TypeEnv {
    let prog: IDLProg = WS_TYPES_DID
        .parse()
        .expect("ws_types.did is valid Candid (checked by a unit test)");
    let mut env = TypeEnv::new();
    check_prog(&mut env, &prog).expect("ws_types.did type-checks (checked by a unit test)");
    env
}

thread_local! {
    // `Type` is reference-counted with `Rc`, so each thread builds its own copy (once).
    static WS_ENV: TypeEnv = load_ws_env();
    static TYPES_CACHE: RefCell<HashMap<String, Rc<ArgTypes>>> = RefCell::new(HashMap::new());
}

/// Run `f` with the environment of ws_types.did.
pub fn with_ws_env<R>(f: impl FnOnce(&TypeEnv) -> R) -> R {
    WS_ENV.with(f)
}

/// Parse a Candid argument-type list such as `"(CanisterWsMessageArguments, opt AppMessage)"`, optionally
/// preceded by type declarations (`"type List = opt record { head : int; tail : List }; (List)"`).
pub fn parse_arg_types(text: &str) -> Result<Rc<ArgTypes>, CandidWsError> {
    if let Some(hit) = TYPES_CACHE.with(|c| c.borrow().get(text).cloned()) {
        return Ok(hit);
    }
    if text.len() > MAX_TYPES_TEXT_LEN {
        return Err(CandidWsError(format!(
            "Candid types: more than {MAX_TYPES_TEXT_LEN} characters"
        )));
    }
    let prog: IDLInitArgs = text
        .parse()
        .map_err(|e| invalid(&format!("Candid types {text:?}"), e))?;
    let parsed = with_ws_env(|ws_env| {
        let mut env = TypeEnv::new();
        let types = check_init_args(&mut env, ws_env, &prog)
            .map_err(|e| invalid(&format!("Candid types {text:?}"), e))?;
        Ok::<_, CandidWsError>(Rc::new(ArgTypes { env, types }))
    })?;
    TYPES_CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if cache.len() >= TYPES_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(text.to_owned(), parsed.clone());
    });
    Ok(parsed)
}

/// Replace every type name by its definition, so that decoding needs no environment (merging one into
/// the decoder's type table costs more than decoding a small message). Only for non-recursive types.
fn inline_type(env: &TypeEnv, ty: &Type, depth: usize) -> Result<Type, CandidWsError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(CandidWsError("cannot inline a recursive Candid type".into()));
    }
    let inline = |t: &Type| inline_type(env, t, depth + 1);
    let inline_fields =
        |fields: &[candid::types::Field]| -> Result<Vec<candid::types::Field>, CandidWsError> {
            fields
                .iter()
                .map(|f| {
                    Ok(candid::types::Field {
                        id: f.id.clone(),
                        ty: inline(&f.ty)?,
                    })
                })
                .collect()
        };
    Ok(match ty.as_ref() {
        TypeInner::Var(name) => inline(env.find_type(name).map_err(|e| invalid("Candid types", e))?)?,
        TypeInner::Opt(t) => TypeInner::Opt(inline(t)?).into(),
        TypeInner::Vec(t) => TypeInner::Vec(inline(t)?).into(),
        TypeInner::Record(fields) => TypeInner::Record(inline_fields(fields)?).into(),
        TypeInner::Variant(fields) => TypeInner::Variant(inline_fields(fields)?).into(),
        _ => ty.clone(),
    })
}

/// A WebSocket type by name, with every name inside it resolved.
pub fn ws_type(name: &str) -> Result<Type, CandidWsError> {
    with_ws_env(|env| inline_type(env, &TypeInner::Var(name.to_owned()).into(), 0))
}

// ---------------------------------------------------------------------------------------------
// Reading decoded values (typed paths).

fn type_error(path: &str, expected: &str, v: &IDLValue) -> CandidWsError {
    CandidWsError(format!(
        "invalid Candid: {path}: expected {expected}, got {}",
        v.value_ty()
    ))
}

pub(crate) fn record<'v>(v: &'v IDLValue, path: &str) -> Result<&'v [IDLField], CandidWsError> {
    match v {
        IDLValue::Record(fields) => Ok(fields),
        other => Err(type_error(path, "a record", other)),
    }
}

pub(crate) fn field<'v>(
    fields: &'v [IDLField],
    name: &str,
    path: &str,
) -> Result<&'v IDLValue, CandidWsError> {
    let id = idl_hash(name);
    fields
        .iter()
        .find(|f| f.id.get_id() == id)
        .map(|f| &f.val)
        .ok_or_else(|| CandidWsError(format!("invalid Candid: {path}: missing field {name}")))
}

pub(crate) fn nat64(v: &IDLValue, path: &str) -> Result<u64, CandidWsError> {
    match v {
        IDLValue::Nat64(n) => Ok(*n),
        other => Err(type_error(path, "nat64", other)),
    }
}

pub(crate) fn boolean(v: &IDLValue, path: &str) -> Result<bool, CandidWsError> {
    match v {
        IDLValue::Bool(b) => Ok(*b),
        other => Err(type_error(path, "bool", other)),
    }
}

pub(crate) fn text(v: &IDLValue, path: &str) -> Result<String, CandidWsError> {
    match v {
        IDLValue::Text(s) => Ok(s.clone()),
        other => Err(type_error(path, "text", other)),
    }
}

pub(crate) fn principal_bytes(v: &IDLValue, path: &str) -> Result<Vec<u8>, CandidWsError> {
    match v {
        IDLValue::Principal(p) => Ok(p.as_slice().to_vec()),
        other => Err(type_error(path, "principal", other)),
    }
}

/// Move a blob out of a decoded value (the decoder produces `Blob` for `vec nat8`).
pub(crate) fn take_blob(v: &mut IDLValue, path: &str) -> Result<Vec<u8>, CandidWsError> {
    match v {
        IDLValue::Blob(b) => Ok(std::mem::take(b)),
        IDLValue::Vec(items) => items
            .iter()
            .map(|item| match item {
                IDLValue::Nat8(b) => Ok(*b),
                other => Err(type_error(path, "blob", other)),
            })
            .collect(),
        other => Err(type_error(path, "blob", other)),
    }
}

// ---------------------------------------------------------------------------------------------
// The WebSocket types in Rust.

/// A client connection: the client's principal and the random nonce it chose for this connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, CandidType)]
pub struct ClientKey {
    pub client_principal: Principal,
    pub client_nonce: u64,
}

impl std::fmt::Display for ClientKey {
    /// `<principal text>_<nonce>`, as the CDK renders a key in its error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}",
            principal::to_text(self.client_principal.as_slice()),
            self.client_nonce
        )
    }
}

/// The message a client sends in `ws_message` and the CDK serializes (as CBOR) into every outgoing
/// message.
#[derive(Debug, Clone, PartialEq, Eq, CandidType)]
pub struct WebsocketMessage {
    pub client_key: ClientKey,
    pub sequence_num: u64,
    pub timestamp: u64,
    pub is_service_message: bool,
    pub content: Vec<u8>,
}

#[derive(CandidType)]
struct CanisterWsOpenArguments<'a> {
    client_nonce: u64,
    gateway_principal: &'a Principal,
}

#[derive(CandidType)]
struct CanisterWsMessageArguments<'a> {
    msg: &'a WebsocketMessage,
}

#[derive(CandidType)]
struct CanisterWsGetMessagesArguments {
    nonce: u64,
}

fn to_principal(bytes: &[u8], path: &str) -> Result<Principal, CandidWsError> {
    Principal::try_from_slice(bytes).map_err(|e| invalid(&format!("{path}: invalid principal"), e))
}

fn encode_error(e: candid::Error) -> CandidWsError {
    invalid("cannot encode Candid", e)
}

/// `(record { client_nonce; gateway_principal })`, the argument of `ws_open`.
pub fn encode_ws_open_arguments(
    client_nonce: u64,
    gateway_principal: &[u8],
) -> Result<Vec<u8>, CandidWsError> {
    let gateway_principal = to_principal(gateway_principal, "gateway_principal")?;
    candid::encode_one(CanisterWsOpenArguments {
        client_nonce,
        gateway_principal: &gateway_principal,
    })
    .map_err(encode_error)
}

/// `(record { msg }, opt null = null)`: the argument of `ws_message` exactly as the SDK sends it.
pub fn encode_ws_message_arguments(msg: &WebsocketMessage) -> Result<Vec<u8>, CandidWsError> {
    candid::encode_args((CanisterWsMessageArguments { msg }, None::<()>)).map_err(encode_error)
}

/// `(record { nonce })`, the argument of the gateway's `ws_get_messages` query.
pub fn encode_ws_get_messages_arguments(nonce: u64) -> Vec<u8> {
    candid::encode_one(CanisterWsGetMessagesArguments { nonce }).expect("a nat64 record always encodes")
}

thread_local! {
    static OPEN_ARGS_TYPE: Type = ws_type("CanisterWsOpenArguments").expect("defined in ws_types.did");
    static MESSAGE_ARGS_TYPE: Type = ws_type("CanisterWsMessageArguments").expect("defined in ws_types.did");
}

/// Decode the argument of `ws_open` (`CanisterWsOpenArguments`; any further arguments are ignored) into
/// `(client_nonce, gateway principal bytes)`.
pub fn decode_ws_open_arguments(arg: &[u8]) -> Result<(u64, Vec<u8>), CandidWsError> {
    let ty = OPEN_ARGS_TYPE.with(Type::clone);
    let args = decode_typed(arg, &TypeEnv::new(), std::slice::from_ref(&ty))?;
    let fields = record(&args[0], "ws_open argument")?;
    let nonce = nat64(field(fields, "client_nonce", "ws_open argument")?, "client_nonce")?;
    let gateway = principal_bytes(
        field(fields, "gateway_principal", "ws_open argument")?,
        "gateway_principal",
    )?;
    Ok((nonce, gateway))
}

/// Decode the first argument of `ws_message` (`CanisterWsMessageArguments`) into its message. The second
/// argument (`opt AppMessage`; the SDK sends `opt null`) is ignored whatever its type, as the CDK does.
pub fn decode_ws_message_arguments(arg: &[u8]) -> Result<WebsocketMessage, CandidWsError> {
    let ty = MESSAGE_ARGS_TYPE.with(Type::clone);
    let mut args = decode_typed(arg, &TypeEnv::new(), std::slice::from_ref(&ty))?;
    let outer = std::mem::replace(&mut args[0], IDLValue::Null);
    let IDLValue::Record(mut outer) = outer else {
        return Err(type_error("ws_message argument", "a record", &outer));
    };
    let msg_id = idl_hash("msg");
    let msg = outer
        .iter_mut()
        .find(|f| f.id.get_id() == msg_id)
        .ok_or_else(|| CandidWsError("invalid Candid: ws_message argument: missing field msg".into()))?;
    websocket_message_from_value(&mut msg.val, "msg")
}

fn client_key_from_value(v: &IDLValue, path: &str) -> Result<ClientKey, CandidWsError> {
    let fields = record(v, path)?;
    let principal = principal_bytes(field(fields, "client_principal", path)?, "client_principal")?;
    Ok(ClientKey {
        client_principal: to_principal(&principal, path)?,
        client_nonce: nat64(field(fields, "client_nonce", path)?, "client_nonce")?,
    })
}

fn websocket_message_from_value(v: &mut IDLValue, path: &str) -> Result<WebsocketMessage, CandidWsError> {
    let content_id = idl_hash("content");
    let IDLValue::Record(fields) = v else {
        return Err(type_error(path, "a record", v));
    };
    let mut content = None;
    for f in fields.iter_mut() {
        if f.id.get_id() == content_id {
            content = Some(take_blob(&mut f.val, "content")?);
        }
    }
    let fields: &[IDLField] = fields;
    Ok(WebsocketMessage {
        client_key: client_key_from_value(field(fields, "client_key", path)?, "client_key")?,
        sequence_num: nat64(field(fields, "sequence_num", path)?, "sequence_num")?,
        timestamp: nat64(field(fields, "timestamp", path)?, "timestamp")?,
        is_service_message: boolean(field(fields, "is_service_message", path)?, "is_service_message")?,
        content: content
            .ok_or_else(|| CandidWsError(format!("invalid Candid: {path}: missing field content")))?,
    })
}

// ---------------------------------------------------------------------------------------------
// WebsocketMessage as CBOR (PROTOCOL §3.1).

const WM_CLIENT_KEY: &str = "client_key";
const WM_CLIENT_PRINCIPAL: &str = "client_principal";
const WM_CLIENT_NONCE: &str = "client_nonce";
const WM_SEQUENCE_NUM: &str = "sequence_num";
const WM_TIMESTAMP: &str = "timestamp";
const WM_IS_SERVICE_MESSAGE: &str = "is_service_message";
const WM_CONTENT: &str = "content";

/// The CBOR bytes the CDK certifies: a 5-entry map in the CDK's field order, minimal integer heads,
/// the principal as a byte string. The Rust CDK prefixes the self-describe tag, the Motoko CDK does not.
pub fn encode_websocket_message(msg: &WebsocketMessage, self_describe: bool) -> Vec<u8> {
    let principal = msg.client_key.client_principal.as_slice();
    let mut w = Writer::with_capacity(160 + principal.len() + msg.content.len());
    if self_describe {
        w.self_describe();
    }
    w.map(5)
        .text(WM_CLIENT_KEY)
        .map(2)
        .text(WM_CLIENT_PRINCIPAL)
        .bytes(principal)
        .text(WM_CLIENT_NONCE)
        .uint(msg.client_key.client_nonce)
        .text(WM_SEQUENCE_NUM)
        .uint(msg.sequence_num)
        .text(WM_TIMESTAMP)
        .uint(msg.timestamp)
        .text(WM_IS_SERVICE_MESSAGE)
        .bool(msg.is_service_message)
        .text(WM_CONTENT)
        .bytes(&msg.content);
    w.into_bytes()
}

fn wm_error(what: impl std::fmt::Display) -> CandidWsError {
    CandidWsError(format!("invalid WebsocketMessage: {what}"))
}

/// Look up the entries of a CBOR map whose keys must be exactly `names` (in any order).
fn exact_entries<'v, 'a, const N: usize>(
    v: &'v Value<'a>,
    names: [&str; N],
    what: &str,
) -> Result<[&'v Value<'a>; N], CandidWsError> {
    let entries = v
        .as_map()
        .ok_or_else(|| wm_error(format!("{what} must be a map, not a {}", v.type_name())))?;
    for (k, _) in entries {
        match k.as_text() {
            Some(name) if names.contains(&name) => {}
            Some(name) => return Err(wm_error(format!("unexpected field {name:?} in {what}"))),
            None => return Err(wm_error(format!("a {} cannot be a key of {what}", k.type_name()))),
        }
    }
    let mut found = [&Value::Null; N];
    for (slot, name) in found.iter_mut().zip(names) {
        // The CBOR parser rejects duplicate keys, so each name occurs at most once.
        *slot = v
            .get(name)
            .ok_or_else(|| wm_error(format!("{what} has no field {name:?}")))?;
    }
    Ok(found)
}

fn cbor_uint(v: &Value<'_>, name: &str) -> Result<u64, CandidWsError> {
    v.as_u64().ok_or_else(|| {
        wm_error(format!(
            "{name} must be an unsigned integer, not a {}",
            v.type_name()
        ))
    })
}

fn cbor_bytes<'a>(v: &Value<'a>, name: &str) -> Result<&'a [u8], CandidWsError> {
    v.as_bytes()
        .ok_or_else(|| wm_error(format!("{name} must be a byte string, not a {}", v.type_name())))
}

/// Parse the CBOR of a `WebsocketMessage` (either CDK flavour): exactly the five fields, strict types.
pub fn decode_websocket_message(data: &[u8]) -> Result<WebsocketMessage, CandidWsError> {
    let root = cbor::parse(data).map_err(wm_error)?;
    let [client_key, sequence_num, timestamp, is_service_message, content] = exact_entries(
        &root,
        [
            WM_CLIENT_KEY,
            WM_SEQUENCE_NUM,
            WM_TIMESTAMP,
            WM_IS_SERVICE_MESSAGE,
            WM_CONTENT,
        ],
        "WebsocketMessage",
    )?;
    let [client_principal, client_nonce] =
        exact_entries(client_key, [WM_CLIENT_PRINCIPAL, WM_CLIENT_NONCE], WM_CLIENT_KEY)?;
    let client_principal = cbor_bytes(client_principal, WM_CLIENT_PRINCIPAL)?;
    let client_principal = Principal::try_from_slice(client_principal)
        .map_err(|e| wm_error(format!("{WM_CLIENT_PRINCIPAL}: {e}")))?;
    let is_service_message = match is_service_message {
        Value::Bool(b) => *b,
        other => {
            return Err(wm_error(format!(
                "{WM_IS_SERVICE_MESSAGE} must be a bool, not a {}",
                other.type_name()
            )))
        }
    };
    Ok(WebsocketMessage {
        client_key: ClientKey {
            client_principal,
            client_nonce: cbor_uint(client_nonce, WM_CLIENT_NONCE)?,
        },
        sequence_num: cbor_uint(sequence_num, WM_SEQUENCE_NUM)?,
        timestamp: cbor_uint(timestamp, WM_TIMESTAMP)?,
        is_service_message,
        content: cbor_bytes(content, WM_CONTENT)?.to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------
// Python values ⇄ IDLValue, directed by the type.

fn label_key<'py>(py: Python<'py>, label: &Label) -> PyResult<Bound<'py, PyAny>> {
    Ok(match label {
        Label::Named(name) => PyString::new(py, name).into_any(),
        Label::Id(n) | Label::Unnamed(n) => n.into_pyobject(py)?.into_any(),
    })
}

fn big_int_to_py<'py>(py: Python<'py>, decimal: &str) -> PyResult<Bound<'py, PyAny>> {
    py.get_type::<PyInt>().call1((decimal.replace('_', ""),))
}

fn mismatch(path: &str, ty: &Type, v: &IDLValue) -> PyErr {
    CandidError::new_err(format!(
        "internal error: {path}: decoded {} where {ty} was expected",
        v.value_ty()
    ))
}

fn trace<'e>(env: &'e TypeEnv, ty: &'e Type, path: &str) -> PyResult<Type> {
    env.trace_type(ty)
        .map_err(|e| CandidError::new_err(format!("{path}: {e}")))
}

/// Convert a decoded value (already checked against `ty` by the decoder) into plain Python objects.
fn value_to_py<'py>(
    py: Python<'py>,
    env: &TypeEnv,
    ty: &Type,
    v: &IDLValue,
    path: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let ty = trace(env, ty, path)?;
    Ok(match (ty.as_ref(), v) {
        (_, IDLValue::Null | IDLValue::None | IDLValue::Reserved) => py.None().into_bound(py),
        (TypeInner::Opt(inner), IDLValue::Opt(value)) => value_to_py(py, env, inner, value, path)?,
        (_, IDLValue::Bool(b)) => PyBool::new(py, *b).to_owned().into_any(),
        (_, IDLValue::Text(s)) => PyString::new(py, s).into_any(),
        (_, IDLValue::Nat8(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Nat16(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Nat32(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Nat64(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Int8(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Int16(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Int32(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Int64(n)) => n.into_pyobject(py)?.into_any(),
        (_, IDLValue::Nat(n)) => match u64::try_from(&n.0) {
            Ok(small) => small.into_pyobject(py)?.into_any(),
            Err(_) => big_int_to_py(py, &n.0.to_string())?,
        },
        (_, IDLValue::Int(n)) => match i64::try_from(&n.0) {
            Ok(small) => small.into_pyobject(py)?.into_any(),
            Err(_) => big_int_to_py(py, &n.0.to_string())?,
        },
        (_, IDLValue::Number(s)) => big_int_to_py(py, s)?,
        (_, IDLValue::Float32(f)) => PyFloat::new(py, f64::from(*f)).into_any(),
        (_, IDLValue::Float64(f)) => PyFloat::new(py, *f).into_any(),
        (_, IDLValue::Principal(p) | IDLValue::Service(p)) => PyBytes::new(py, p.as_slice()).into_any(),
        (_, IDLValue::Func(p, method)) => PyTuple::new(
            py,
            [
                PyBytes::new(py, p.as_slice()).into_any(),
                PyString::new(py, method).into_any(),
            ],
        )?
        .into_any(),
        (_, IDLValue::Blob(b)) => PyBytes::new(py, b).into_any(),
        (TypeInner::Vec(elem), IDLValue::Vec(items)) => {
            if ty.is_blob(env) {
                let bytes: Vec<u8> = items
                    .iter()
                    .map(|item| match item {
                        IDLValue::Nat8(b) => Ok(*b),
                        other => Err(mismatch(path, elem, other)),
                    })
                    .collect::<PyResult<_>>()?;
                PyBytes::new(py, &bytes).into_any()
            } else {
                let list = PyList::empty(py);
                for (i, item) in items.iter().enumerate() {
                    list.append(value_to_py(py, env, elem, item, &format!("{path}[{i}]"))?)?;
                }
                list.into_any()
            }
        }
        (TypeInner::Record(fields), IDLValue::Record(values)) => {
            let dict = PyDict::new(py);
            for f in fields {
                let id = f.id.get_id();
                let Some(value) = values.iter().find(|v| v.id.get_id() == id) else {
                    return Err(CandidError::new_err(format!(
                        "internal error: {path}: no value for field {}",
                        f.id
                    )));
                };
                dict.set_item(
                    label_key(py, &f.id)?,
                    value_to_py(py, env, &f.ty, &value.val, &format!("{path}.{}", f.id))?,
                )?;
            }
            dict.into_any()
        }
        (TypeInner::Variant(fields), IDLValue::Variant(VariantValue(value, _))) => {
            let id = value.id.get_id();
            let Some(f) = fields.iter().find(|f| f.id.get_id() == id) else {
                return Err(CandidError::new_err(format!(
                    "internal error: {path}: unknown variant case {}",
                    value.id
                )));
            };
            let dict = PyDict::new(py);
            dict.set_item(
                label_key(py, &f.id)?,
                value_to_py(py, env, &f.ty, &value.val, &format!("{path}.{}", f.id))?,
            )?;
            dict.into_any()
        }
        _ => return Err(mismatch(path, &ty, v)),
    })
}

/// Builds `IDLValue`s from Python objects, checking shapes and ranges against the type; errors name the
/// path of the offending value (`arg0.msg.client_key.client_nonce`).
struct ValueBuilder<'e> {
    env: &'e TypeEnv,
}

fn shape_error(path: &str, what: impl std::fmt::Display) -> PyErr {
    CandidError::new_err(format!("{path}: {what}"))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn as_bytes(obj: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Some(b.as_bytes().to_vec());
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        return obj
            .py()
            .get_type::<PyBytes>()
            .call1((obj,))
            .ok()?
            .extract::<Vec<u8>>()
            .ok();
    }
    None
}

/// The Python int inside `obj`, rejecting bools (an `int` subclass) and everything else.
fn as_int<'a, 'py>(obj: &'a Bound<'py, PyAny>, path: &str, ty: &str) -> PyResult<&'a Bound<'py, PyInt>> {
    if obj.is_instance_of::<PyBool>() {
        return Err(shape_error(path, format!("expected an int for {ty}, got a bool")));
    }
    obj.downcast::<PyInt>()
        .map_err(|_| shape_error(path, format!("expected an int for {ty}, got {}", type_name(obj))))
}

fn fixed_int<T: for<'py> FromPyObject<'py>>(obj: &Bound<'_, PyAny>, path: &str, ty: &str) -> PyResult<T> {
    as_int(obj, path, ty)?
        .extract::<T>()
        .map_err(|_| shape_error(path, format!("{} is out of range for {ty}", obj)))
}

impl ValueBuilder<'_> {
    fn build(&self, ty: &Type, obj: &Bound<'_, PyAny>, path: &str, depth: usize) -> PyResult<IDLValue> {
        if depth > MAX_VALUE_DEPTH {
            return Err(shape_error(
                path,
                format!("values nest more than {MAX_VALUE_DEPTH} levels deep"),
            ));
        }
        let ty = trace(self.env, ty, path)?;
        Ok(match ty.as_ref() {
            TypeInner::Null => {
                if !obj.is_none() {
                    return Err(shape_error(
                        path,
                        format!("expected None for null, got {}", type_name(obj)),
                    ));
                }
                IDLValue::Null
            }
            TypeInner::Reserved => IDLValue::Reserved,
            TypeInner::Empty => return Err(shape_error(path, "no value has type empty")),
            TypeInner::Bool => match obj.downcast::<PyBool>() {
                Ok(b) => IDLValue::Bool(b.is_true()),
                Err(_) => {
                    return Err(shape_error(
                        path,
                        format!("expected a bool, got {}", type_name(obj)),
                    ))
                }
            },
            TypeInner::Nat => {
                let n = as_int(obj, path, "nat")?;
                if n.lt(0)? {
                    return Err(shape_error(path, format!("{n} is out of range for nat")));
                }
                match n.extract::<u64>() {
                    Ok(small) => IDLValue::Nat(Nat::from(small)),
                    Err(_) => IDLValue::Nat(
                        n.str()?
                            .to_str()?
                            .parse::<Nat>()
                            .map_err(|e| shape_error(path, e))?,
                    ),
                }
            }
            TypeInner::Int => {
                let n = as_int(obj, path, "int")?;
                match n.extract::<i64>() {
                    Ok(small) => IDLValue::Int(Int::from(small)),
                    Err(_) => IDLValue::Int(
                        n.str()?
                            .to_str()?
                            .parse::<Int>()
                            .map_err(|e| shape_error(path, e))?,
                    ),
                }
            }
            TypeInner::Nat8 => IDLValue::Nat8(fixed_int(obj, path, "nat8")?),
            TypeInner::Nat16 => IDLValue::Nat16(fixed_int(obj, path, "nat16")?),
            TypeInner::Nat32 => IDLValue::Nat32(fixed_int(obj, path, "nat32")?),
            TypeInner::Nat64 => IDLValue::Nat64(fixed_int(obj, path, "nat64")?),
            TypeInner::Int8 => IDLValue::Int8(fixed_int(obj, path, "int8")?),
            TypeInner::Int16 => IDLValue::Int16(fixed_int(obj, path, "int16")?),
            TypeInner::Int32 => IDLValue::Int32(fixed_int(obj, path, "int32")?),
            TypeInner::Int64 => IDLValue::Int64(fixed_int(obj, path, "int64")?),
            TypeInner::Float32 | TypeInner::Float64 => {
                if obj.is_instance_of::<PyBool>()
                    || !(obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>())
                {
                    return Err(shape_error(
                        path,
                        format!("expected a float, got {}", type_name(obj)),
                    ));
                }
                let f: f64 = obj.extract()?;
                if matches!(ty.as_ref(), TypeInner::Float32) {
                    IDLValue::Float32(f as f32)
                } else {
                    IDLValue::Float64(f)
                }
            }
            TypeInner::Text => match obj.downcast::<PyString>() {
                Ok(s) => IDLValue::Text(s.to_str()?.to_owned()),
                Err(_) => {
                    return Err(shape_error(
                        path,
                        format!("expected a str for text, got {}", type_name(obj)),
                    ))
                }
            },
            TypeInner::Principal => IDLValue::Principal(self.principal(obj, path)?),
            TypeInner::Service(_) => IDLValue::Service(self.principal(obj, path)?),
            TypeInner::Func(_) => {
                let pair = obj
                    .downcast::<PyTuple>()
                    .ok()
                    .filter(|t| t.len() == 2)
                    .ok_or_else(|| {
                        shape_error(path, "expected a (principal bytes, method name) tuple for func")
                    })?;
                let method = pair.get_item(1)?;
                let method = method
                    .downcast::<PyString>()
                    .map_err(|_| shape_error(path, "the method name of a func must be a str"))?;
                IDLValue::Func(
                    self.principal(&pair.get_item(0)?, path)?,
                    method.to_str()?.to_owned(),
                )
            }
            TypeInner::Opt(inner) => {
                if obj.is_none() {
                    IDLValue::None
                } else {
                    IDLValue::Opt(Box::new(self.build(inner, obj, path, depth + 1)?))
                }
            }
            TypeInner::Vec(elem) => {
                if ty.is_blob(self.env) {
                    match as_bytes(obj) {
                        Some(b) => IDLValue::Blob(b),
                        None => {
                            return Err(shape_error(
                                path,
                                format!("expected bytes for blob, got {}", type_name(obj)),
                            ))
                        }
                    }
                } else {
                    let items = sequence_items(obj).ok_or_else(|| {
                        shape_error(path, format!("expected a list for vec, got {}", type_name(obj)))
                    })?;
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        out.push(self.build(elem, item, &format!("{path}[{i}]"), depth + 1)?);
                    }
                    IDLValue::Vec(out)
                }
            }
            TypeInner::Record(fields) => self.record(&ty, fields, obj, path, depth)?,
            TypeInner::Variant(fields) => self.variant(fields, obj, path, depth)?,
            other => return Err(shape_error(path, format!("cannot build a value of type {other}"))),
        })
    }

    fn principal(&self, obj: &Bound<'_, PyAny>, path: &str) -> PyResult<Principal> {
        let bytes = as_bytes(obj)
            .ok_or_else(|| shape_error(path, format!("expected principal bytes, got {}", type_name(obj))))?;
        if bytes.len() > MAX_PRINCIPAL_LEN {
            return Err(shape_error(
                path,
                format!(
                    "a principal has at most {MAX_PRINCIPAL_LEN} bytes, got {}",
                    bytes.len()
                ),
            ));
        }
        Principal::try_from_slice(&bytes).map_err(|e| shape_error(path, e))
    }

    fn record(
        &self,
        ty: &Type,
        fields: &[candid::types::Field],
        obj: &Bound<'_, PyAny>,
        path: &str,
        depth: usize,
    ) -> PyResult<IDLValue> {
        // A tuple record (`record { int; bool }`) may also be given positionally.
        if ty.is_tuple() {
            if let Some(items) = sequence_items(obj) {
                if items.len() != fields.len() {
                    return Err(shape_error(
                        path,
                        format!("expected {} values, got {}", fields.len(), items.len()),
                    ));
                }
                let mut out = Vec::with_capacity(fields.len());
                for (f, item) in fields.iter().zip(items.iter()) {
                    let val = self.build(&f.ty, item, &format!("{path}.{}", f.id), depth + 1)?;
                    out.push(IDLField {
                        id: (*f.id).clone(),
                        val,
                    });
                }
                return Ok(IDLValue::Record(out));
            }
        }
        let dict = obj.downcast::<PyDict>().map_err(|_| {
            shape_error(
                path,
                format!("expected a dict for a record, got {}", type_name(obj)),
            )
        })?;
        let mut slots: Vec<Option<Bound<'_, PyAny>>> = vec![None; fields.len()];
        for (key, item) in dict.iter() {
            let Some(index) = fields.iter().position(|f| key_names_field(&key, f)) else {
                return Err(shape_error(path, format!("unknown field {}", key.repr()?)));
            };
            slots[index] = Some(item);
        }
        let mut out = Vec::with_capacity(fields.len());
        for (f, slot) in fields.iter().zip(slots) {
            let field_path = format!("{path}.{}", f.id);
            let val = match slot {
                Some(item) => self.build(&f.ty, &item, &field_path, depth + 1)?,
                // Absent optional fields are allowed, as in Candid text.
                None => match trace(self.env, &f.ty, &field_path)?.as_ref() {
                    TypeInner::Opt(_) => IDLValue::None,
                    TypeInner::Null => IDLValue::Null,
                    TypeInner::Reserved => IDLValue::Reserved,
                    _ => return Err(shape_error(path, format!("missing field {}", f.id))),
                },
            };
            out.push(IDLField {
                id: (*f.id).clone(),
                val,
            });
        }
        Ok(IDLValue::Record(out))
    }

    fn variant(
        &self,
        fields: &[candid::types::Field],
        obj: &Bound<'_, PyAny>,
        path: &str,
        depth: usize,
    ) -> PyResult<IDLValue> {
        let dict = obj
            .downcast::<PyDict>()
            .ok()
            .filter(|d| d.len() == 1)
            .ok_or_else(|| {
                shape_error(
                    path,
                    format!("expected a one-key dict for a variant, got {}", type_name(obj)),
                )
            })?;
        let (key, item) = dict.iter().next().expect("the dict has one entry");
        let position = fields.iter().position(|f| key_names_field(&key, f));
        let Some(index) = position else {
            let cases: Vec<String> = fields.iter().map(|f| f.id.to_string()).collect();
            return Err(shape_error(
                path,
                format!(
                    "unknown variant case {} (expected one of {})",
                    key.repr()?,
                    cases.join(", ")
                ),
            ));
        };
        let f = &fields[index];
        let val = self.build(&f.ty, &item, &format!("{path}.{}", f.id), depth + 1)?;
        Ok(IDLValue::Variant(VariantValue(
            Box::new(IDLField {
                id: (*f.id).clone(),
                val,
            }),
            index as u64,
        )))
    }
}

/// Whether a dict key names a field: a str for a named field, an int for a numbered one.
fn key_names_field(key: &Bound<'_, PyAny>, f: &candid::types::Field) -> bool {
    match (f.id.as_ref(), key.downcast::<PyString>()) {
        (Label::Named(name), Ok(s)) => s.to_str().is_ok_and(|s| s == name),
        (Label::Id(n) | Label::Unnamed(n), Err(_)) => {
            !key.is_instance_of::<PyBool>() && key.extract::<u32>().is_ok_and(|k| k == *n)
        }
        _ => false,
    }
}

/// The items of a list or tuple (not of str, bytes or dict, which are sequences too).
fn sequence_items<'py>(obj: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = obj.downcast::<PyList>() {
        return Some(list.iter().collect());
    }
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        return Some(tuple.iter().collect());
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Candid text output.

/// The Candid text of decoded arguments, as the crate prints them, but always parseable back to the same
/// value. The crate escapes text with Rust's `escape_debug`, whose only escape that Candid does not have
/// is `\0` for NUL; Candid reads `\0a` as the byte 0x0a, so "NUL, a" would silently become a newline.
pub fn args_to_text(args: &IDLArgs) -> String {
    let printed = args.to_string();
    if printed.contains("\\0") {
        escape_nuls_in_text_literals(&printed)
    } else {
        printed
    }
}

/// Rewrite `\0` as `\u{0}` inside text literals (string literals not preceded by `blob `, whose `\HH`
/// escapes are bytes and are left alone).
fn escape_nuls_in_text_literals(printed: &str) -> String {
    let mut out = String::with_capacity(printed.len() + 16);
    let mut chars = printed.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let is_blob = out[..out.len() - 1].ends_with("blob ");
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    out.push(c);
                    break;
                }
                '\\' => match chars.next() {
                    Some('0') if !is_blob => out.push_str("\\u{0}"),
                    Some(escaped) => {
                        out.push('\\');
                        out.push(escaped);
                    }
                    None => out.push('\\'),
                },
                _ => out.push(c),
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Python boundary.

fn text_args(text: &str) -> Result<IDLArgs, CandidWsError> {
    if text.len() > MAX_CANDID_LEN {
        return Err(CandidWsError(format!(
            "Candid text: more than {MAX_CANDID_LEN} characters"
        )));
    }
    let args = candid_parser::parse_idl_args(text).map_err(|e| invalid("invalid Candid text", e))?;
    check_depth(&args.args)?;
    Ok(args)
}

/// Encode Candid text arguments, e.g. `(record { nonce = 1 : nat64 }, "hello")`. Without `types`, each
/// value gets the type its text implies (unannotated numbers are `int`); with `types`, the values are
/// checked against and encoded at those argument types.
#[pyfunction]
#[pyo3(signature = (idl_args_text, *, types = None))]
fn candid_encode<'py>(
    py: Python<'py>,
    idl_args_text: &str,
    types: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    let args = text_args(idl_args_text)?;
    let bytes = match types {
        None => args.to_bytes().map_err(encode_error)?,
        Some(types) => {
            let parsed = parse_arg_types(types)?;
            let args = args
                .annotate_types(true, &parsed.env, &parsed.types)
                .map_err(encode_error)?;
            args.to_bytes_with_types(&parsed.env, &parsed.types)
                .map_err(encode_error)?
        }
    };
    Ok(PyBytes::new(py, &bytes))
}

/// Decode a Candid message to its text form. Without `types`, record fields and variant cases appear as
/// numeric ids; with `types`, the message is decoded at those types (with Candid subtyping) and shown
/// with their field names.
#[pyfunction]
#[pyo3(signature = (data, *, types = None))]
fn candid_decode(data: &[u8], types: Option<&str>) -> PyResult<String> {
    let args = match types {
        None => decode_untyped(data)?,
        Some(types) => {
            let parsed = parse_arg_types(types)?;
            IDLArgs {
                args: decode_typed(data, &parsed.env, &parsed.types)?,
            }
        }
    };
    Ok(args_to_text(&args))
}

/// Encode Python values at Candid argument types (see the module docs for the value mapping).
#[pyfunction]
fn candid_encode_values<'py>(
    py: Python<'py>,
    types: &str,
    values: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let parsed = parse_arg_types(types)?;
    let values = top_level_values(values)?;
    if values.len() != parsed.types.len() {
        return Err(CandidError::new_err(format!(
            "{} types but {} values",
            parsed.types.len(),
            values.len()
        )));
    }
    let builder = ValueBuilder { env: &parsed.env };
    let args = parsed
        .types
        .iter()
        .zip(values.iter())
        .enumerate()
        .map(|(i, (ty, v))| builder.build(ty, v, &format!("arg{i}"), 0))
        .collect::<PyResult<Vec<_>>>()?;
    let bytes = IDLArgs { args }
        .to_bytes_with_types(&parsed.env, &parsed.types)
        .map_err(encode_error)?;
    Ok(PyBytes::new(py, &bytes))
}

/// The argument values: any sequence except text and bytes (which would be read as characters).
fn top_level_values<'py>(values: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Some(items) = sequence_items(values) {
        return Ok(items);
    }
    let is_text_or_bytes = values.is_instance_of::<PyString>() || as_bytes(values).is_some();
    match values.downcast::<PySequence>() {
        Ok(seq) if !is_text_or_bytes => seq.try_iter()?.collect(),
        _ => Err(CandidError::new_err(format!(
            "values must be a sequence, not {}",
            type_name(values)
        ))),
    }
}

/// Decode a Candid message at argument types into plain Python values.
#[pyfunction]
fn candid_decode_values<'py>(py: Python<'py>, types: &str, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let parsed = parse_arg_types(types)?;
    let args = decode_typed(data, &parsed.env, &parsed.types)?;
    let out = PyList::empty(py);
    for (i, (ty, v)) in parsed.types.iter().zip(args.iter()).enumerate() {
        out.append(value_to_py(py, &parsed.env, ty, v, &format!("arg{i}"))?)?;
    }
    Ok(out)
}

/// The Candid field id of a record field or variant case name.
#[pyfunction]
fn candid_idl_hash(name: &str) -> u32 {
    idl_hash(name)
}

/// A `nat64` parameter: an int (not a bool) in 0..2^64, else `CandidError` (rather than the
/// `OverflowError` or `TypeError` a plain `u64` parameter would raise).
pub(crate) fn u64_param(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    fixed_int(obj, name, "nat64")
}

/// The CBOR `WebsocketMessage` (Rust CDK flavour with the self-describe tag by default; Motoko without).
#[pyfunction(name = "encode_websocket_message")]
#[pyo3(signature = (client_principal, client_nonce, sequence_num, timestamp, is_service_message, content, *, self_describe = true))]
#[allow(clippy::too_many_arguments)]
fn py_encode_websocket_message<'py>(
    py: Python<'py>,
    client_principal: &[u8],
    client_nonce: &Bound<'py, PyAny>,
    sequence_num: &Bound<'py, PyAny>,
    timestamp: &Bound<'py, PyAny>,
    is_service_message: bool,
    content: &[u8],
    self_describe: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    principal::check_len(client_principal)?;
    let msg = WebsocketMessage {
        client_key: ClientKey {
            client_principal: to_principal(client_principal, "client_principal")?,
            client_nonce: u64_param(client_nonce, "client_nonce")?,
        },
        sequence_num: u64_param(sequence_num, "sequence_num")?,
        timestamp: u64_param(timestamp, "timestamp")?,
        is_service_message,
        content: content.to_vec(),
    };
    Ok(PyBytes::new(py, &encode_websocket_message(&msg, self_describe)))
}

/// Parse a CBOR `WebsocketMessage` into `{client_key: {client_principal, client_nonce}, sequence_num,
/// timestamp, is_service_message, content}`; exactly these fields, strictly typed.
#[pyfunction(name = "decode_websocket_message")]
fn py_decode_websocket_message<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let msg = decode_websocket_message(data)?;
    let client_key = PyDict::new(py);
    client_key.set_item(
        WM_CLIENT_PRINCIPAL,
        PyBytes::new(py, msg.client_key.client_principal.as_slice()),
    )?;
    client_key.set_item(WM_CLIENT_NONCE, msg.client_key.client_nonce)?;
    let out = PyDict::new(py);
    out.set_item(WM_CLIENT_KEY, client_key)?;
    out.set_item(WM_SEQUENCE_NUM, msg.sequence_num)?;
    out.set_item(WM_TIMESTAMP, msg.timestamp)?;
    out.set_item(WM_IS_SERVICE_MESSAGE, msg.is_service_message)?;
    out.set_item(WM_CONTENT, PyBytes::new(py, &msg.content))?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(candid_encode, m)?)?;
    m.add_function(wrap_pyfunction!(candid_decode, m)?)?;
    m.add_function(wrap_pyfunction!(candid_encode_values, m)?)?;
    m.add_function(wrap_pyfunction!(candid_decode_values, m)?)?;
    m.add_function(wrap_pyfunction!(candid_idl_hash, m)?)?;
    m.add_function(wrap_pyfunction!(py_encode_websocket_message, m)?)?;
    m.add_function(wrap_pyfunction!(py_decode_websocket_message, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> WebsocketMessage {
        WebsocketMessage {
            client_key: ClientKey {
                client_principal: Principal::from_slice(&[7; 29]),
                client_nonce: u64::MAX,
            },
            sequence_num: 1,
            timestamp: 1_702_143_738_049_473_644,
            is_service_message: true,
            content: b"DIDL\x00\x00".to_vec(),
        }
    }

    #[test]
    fn ws_types_did_defines_every_protocol_type() {
        for name in [
            "ClientPrincipal",
            "GatewayPrincipal",
            "ClientKey",
            "WebsocketMessage",
            "CanisterOutputMessage",
            "CanisterOutputCertifiedMessages",
            "CanisterWsOpenArguments",
            "CanisterWsOpenResult",
            "CanisterWsCloseArguments",
            "CanisterWsCloseResult",
            "CanisterWsMessageArguments",
            "CanisterWsMessageResult",
            "CanisterWsGetMessagesArguments",
            "CanisterWsGetMessagesResult",
            "CanisterOpenMessageContent",
            "CanisterAckMessageContent",
            "ClientKeepAliveMessageContent",
            "CloseMessageReason",
            "CanisterCloseMessageContent",
            "WebsocketServiceMessageContent",
            "AppMessage",
        ] {
            assert!(ws_type(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn field_ids_match_the_protocol_table() {
        // PROTOCOL §2.1.
        for (name, id) in [
            ("client_principal", 1_384_677_498u32),
            ("client_nonce", 3_921_324_219),
            ("client_key", 1_025_972_843),
            ("sequence_num", 352_253_448),
            ("timestamp", 2_781_795_542),
            ("is_service_message", 2_815_490_792),
            ("content", 427_265_337),
            ("msg", 5_446_209),
            ("gateway_principal", 647_083_891),
            ("nonce", 2_680_573_167),
            ("key", 5_343_647),
            ("messages", 889_051_340),
            ("cert", 1_102_915_300),
            ("tree", 1_292_081_502),
            ("is_end_of_queue", 3_733_147_138),
            ("OpenMessage", 428_171_005),
            ("KeepAliveMessage", 2_525_358_527),
            ("CloseMessage", 2_918_480_143),
            ("AckMessage", 3_049_003_934),
            ("ClosedByApplication", 1_198_956_877),
            ("InvalidServiceMessage", 1_409_524_553),
            ("WrongSequenceNumber", 2_743_637_463),
            ("KeepAliveTimeout", 3_580_612_249),
            ("last_incoming_sequence_num", 2_804_597_848),
            ("reason", 4_238_151_620),
            ("Ok", 17_724),
            ("Err", 3_456_837),
            ("text", 1_291_439_277),
        ] {
            assert_eq!(idl_hash(name), id, "{name}");
        }
    }

    #[test]
    fn open_arguments_round_trip_and_tolerate_extra_arguments() {
        let gateway = [1u8, 2, 3];
        let arg = encode_ws_open_arguments(42, &gateway).unwrap();
        assert_eq!(decode_ws_open_arguments(&arg).unwrap(), (42, gateway.to_vec()));
        // The same record followed by an extra `text` argument.
        let extra = candid::encode_args((
            CanisterWsOpenArguments {
                client_nonce: 42,
                gateway_principal: &Principal::from_slice(&gateway),
            },
            "extra",
        ))
        .unwrap();
        assert_eq!(decode_ws_open_arguments(&extra).unwrap(), (42, gateway.to_vec()));
    }

    #[test]
    fn open_arguments_reject_wrong_types() {
        // (record { client_nonce = 42 : nat; gateway_principal = ... }) — nat where nat64 is expected.
        let arg = parse_arg_types("(record { client_nonce : nat; gateway_principal : principal })")
            .and_then(|t| {
                let v = candid_parser::parse_idl_args(
                    "(record { client_nonce = 42; gateway_principal = principal \"aaaaa-aa\" })",
                )
                .unwrap();
                v.to_bytes_with_types(&t.env, &t.types).map_err(encode_error)
            })
            .unwrap();
        let err = decode_ws_open_arguments(&arg).unwrap_err();
        assert!(err.0.starts_with("invalid Candid"), "{err}");
        assert!(decode_ws_open_arguments(b"DIDL\x00\x00").is_err());
        assert!(decode_ws_open_arguments(b"").is_err());
    }

    #[test]
    fn message_arguments_accept_the_sdk_form_and_an_absent_second_argument() {
        let m = msg();
        let sdk = encode_ws_message_arguments(&m).unwrap();
        assert_eq!(decode_ws_message_arguments(&sdk).unwrap(), m);
        let alone = candid::encode_one(CanisterWsMessageArguments { msg: &m }).unwrap();
        assert_eq!(decode_ws_message_arguments(&alone).unwrap(), m);
    }

    #[test]
    fn quotas_stop_decoding_bombs() {
        // (vec null) declaring 2^32 - 1 elements in 13 bytes.
        let bomb = b"DIDL\x01\x6d\x7f\x01\x00\xff\xff\xff\xff\x0f";
        let start = std::time::Instant::now();
        let err = decode_untyped(bomb).unwrap_err();
        assert!(err.0.contains("exceeds the limit"), "{err}");
        let types = parse_arg_types("(vec null)").unwrap();
        assert!(decode_typed(bomb, &types.env, &types.types).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn deep_values_are_rejected_before_anything_recursive_walks_them() {
        // type L = opt L; a value nested 200 levels deep (within what the crate itself accepts).
        let mut data = b"DIDL\x01\x6e\x00\x01\x00".to_vec();
        data.extend(std::iter::repeat_n(1u8, 200));
        data.push(0);
        let err = decode_untyped(&data).unwrap_err();
        assert!(err.0.contains("nest"), "{err}");
        let types = parse_arg_types("type L = opt L; (L)").unwrap();
        assert!(decode_typed(&data, &types.env, &types.types).is_err());
    }

    #[test]
    fn websocket_message_cbor_both_flavours() {
        let m = msg();
        let rust = encode_websocket_message(&m, true);
        let motoko = encode_websocket_message(&m, false);
        assert_eq!(&rust[..4], &[0xd9, 0xd9, 0xf7, 0xa5]);
        assert_eq!(&rust[3..], &motoko[..]);
        assert_eq!(decode_websocket_message(&rust).unwrap(), m);
        assert_eq!(decode_websocket_message(&motoko).unwrap(), m);
    }

    #[test]
    fn websocket_message_cbor_is_strict() {
        let mut w = Writer::default();
        w.map(1).text("content").bytes(b"x");
        assert!(decode_websocket_message(&w.into_bytes())
            .unwrap_err()
            .0
            .contains("no field"));
        let mut good = encode_websocket_message(&msg(), false);
        // is_service_message true (f5) -> the integer 21 (0x15).
        let pos = good.iter().position(|b| *b == 0xf5).unwrap();
        good[pos] = 0x15;
        assert!(decode_websocket_message(&good)
            .unwrap_err()
            .0
            .contains("must be a bool"));
        assert!(decode_websocket_message(&[0xa5]).is_err());
    }

    #[test]
    fn text_output_escapes_nul_so_that_it_reads_back() {
        let args = IDLArgs {
            args: vec![
                IDLValue::Text("\0a\\0\"\0".into()),
                IDLValue::Blob(vec![0, 0x0a, b'"']),
            ],
        };
        let text = args_to_text(&args);
        assert_eq!(text, "(\"\\u{0}a\\\\0\\\"\\u{0}\", blob \"\\00\\0a\\22\")");
        let back = candid_parser::parse_idl_args(&text).unwrap();
        assert_eq!(back.args[0], args.args[0]);
        assert_eq!(back.args[1], args.args[1]);
    }

    #[test]
    fn types_text_may_declare_its_own_types() {
        let t = parse_arg_types(
            "type List = opt record { head : int; tail : List }; (List, CanisterWsOpenArguments)",
        )
        .unwrap();
        assert_eq!(t.types.len(), 2);
        assert!(parse_arg_types("(NoSuchType)").is_err());
        assert!(parse_arg_types("(record {").is_err());
    }
}
