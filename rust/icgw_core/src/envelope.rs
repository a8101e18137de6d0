//! Authenticated request envelopes: verification exactly as the IC validates ingress (structure,
//! expiry, anonymous rules, sender, delegation chain, signature), and signing for the gateway's own
//! queries and calls.
//!
//! Envelope: `55799({content, ? sender_pubkey, ? sender_sig, ? sender_delegation})`. Unknown fields
//! are rejected, in the envelope, the content and delegations alike: the replica computes the request
//! id from the fields it knows, so an extra field would make our request id differ from the one the
//! IC signs off on.
//!
//! Not supported (rejected with a clear error): WebAuthn and canister-signature keys, and
//! `sender_info`, which only canister-signature senders may use.

use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMapping, PyMemoryView, PyString, PyTuple,
};

use crate::cbor::{self, Value, Writer};
use crate::errors::{EnvelopeError as PyEnvelopeError, RequestIdError};
use crate::hash::{Hash, DOMAIN_IC_DELEGATION, DOMAIN_IC_REQUEST};
use crate::identity::{Ed25519Identity, PublicKey};
use crate::principal::{self_authenticating, to_text, ANONYMOUS, MAX_PRINCIPAL_LEN};
use crate::request_id::{hash_of_map_value, MAX_DEPTH};

/// IC `MAXIMUM_NUMBER_OF_BYTES_IN_NONCE`.
pub const MAX_NONCE_LEN: usize = 32;
pub const MAX_PATHS: usize = 1000;
pub const MAX_PATH_LABELS: usize = 127;
pub const MAX_DELEGATIONS: usize = 20;
pub const MAX_DELEGATION_TARGETS: usize = 1000;
/// IC `MAX_INGRESS_TTL` (5 min) plus `PERMITTED_DRIFT_AT_VALIDATOR` (30 s).
pub const MAX_INGRESS_EXPIRY_AHEAD_NS: u64 = (300 + 30) * 1_000_000_000;

const TAG_POSITIVE_BIGNUM: u64 = 2;

crate::message_error!(
    /// Why the IC would reject an envelope. The message names the offending field and the rule.
    EnvelopeError => PyEnvelopeError
);

fn reject(what: impl std::fmt::Display) -> EnvelopeError {
    EnvelopeError(what.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    Call,
    Query,
    ReadState,
}

impl RequestType {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Call => "call",
            RequestType::Query => "query",
            RequestType::ReadState => "read_state",
        }
    }

    fn parse(s: &str) -> Result<Self, EnvelopeError> {
        match s {
            "call" => Ok(RequestType::Call),
            "query" => Ok(RequestType::Query),
            "read_state" => Ok(RequestType::ReadState),
            other => Err(reject(format!(
                "unknown request_type {other:?}: expected \"call\", \"query\" or \"read_state\""
            ))),
        }
    }
}

/// What an accepted envelope asks for. `canister_id`, `method_name` and `arg` are present for calls
/// and queries, `paths` for read_state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    pub request_id: Hash,
    pub request_type: RequestType,
    pub sender: Vec<u8>,
    pub canister_id: Option<Vec<u8>>,
    pub method_name: Option<String>,
    pub arg: Option<Vec<u8>>,
    pub ingress_expiry: u64,
    pub nonce: Option<Vec<u8>>,
    pub paths: Option<Vec<Vec<Vec<u8>>>>,
    /// The intersection of the delegations' `targets`, or `None` when no delegation restricts them.
    /// For read_state the caller must check the effective canister id against it.
    pub targets: Option<Vec<Vec<u8>>>,
}

impl VerifiedEnvelope {
    pub fn is_anonymous(&self) -> bool {
        self.sender == ANONYMOUS
    }
}

// ---------------------------------------------------------------------------------------------
// Typed views of the parsed CBOR.

fn expect_map<'v, 'a>(v: &'v Value<'a>, what: &str) -> Result<&'v [(Value<'a>, Value<'a>)], EnvelopeError> {
    v.as_map()
        .ok_or_else(|| reject(format!("{what} must be a map, not a {}", v.type_name())))
}

/// Walk a map's entries, handing each text key to `field`; a non-text key is an error.
fn for_each_field<'v, 'a>(
    v: &'v Value<'a>,
    what: &str,
    mut field: impl FnMut(&'a str, &'v Value<'a>) -> Result<(), EnvelopeError>,
) -> Result<(), EnvelopeError> {
    for (key, value) in expect_map(v, what)? {
        match key {
            Value::Text(k) => field(k, value)?,
            other => {
                return Err(reject(format!(
                    "{what} keys must be text strings, not a {}",
                    other.type_name()
                )))
            }
        }
    }
    Ok(())
}

fn blob<'a>(v: &Value<'a>, field: &str) -> Result<&'a [u8], EnvelopeError> {
    v.as_bytes()
        .ok_or_else(|| reject(format!("{field} must be a byte string, not a {}", v.type_name())))
}

fn text<'a>(v: &Value<'a>, field: &str) -> Result<&'a str, EnvelopeError> {
    v.as_text()
        .ok_or_else(|| reject(format!("{field} must be a text string, not a {}", v.type_name())))
}

fn principal<'a>(v: &Value<'a>, field: &str) -> Result<&'a [u8], EnvelopeError> {
    let bytes = blob(v, field)?;
    if bytes.len() > MAX_PRINCIPAL_LEN {
        return Err(reject(format!(
            "{field} is not a principal: {} bytes, at most {MAX_PRINCIPAL_LEN} allowed",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// A nat that must fit in 64 bits (times in nanoseconds): a CBOR unsigned integer, or a positive
/// bignum whose value fits.
fn nat64(v: &Value<'_>, field: &str) -> Result<u64, EnvelopeError> {
    match v {
        Value::Uint(n) => Ok(*n),
        Value::Tag(TAG_POSITIVE_BIGNUM, inner) => {
            let magnitude = blob(inner, field)?;
            let significant = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
            if significant.len() > 8 {
                return Err(reject(format!("{field} does not fit in 64 bits")));
            }
            Ok(significant.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        other => Err(reject(format!(
            "{field} must be a nat, not a {}",
            other.type_name()
        ))),
    }
}

fn array<'v, 'a>(v: &'v Value<'a>, field: &str) -> Result<&'v [Value<'a>], EnvelopeError> {
    v.as_array()
        .ok_or_else(|| reject(format!("{field} must be an array, not a {}", v.type_name())))
}

#[derive(Debug)]
struct Content<'a> {
    request_type: RequestType,
    sender: &'a [u8],
    nonce: Option<&'a [u8]>,
    ingress_expiry: u64,
    canister_id: Option<&'a [u8]>,
    method_name: Option<&'a str>,
    arg: Option<&'a [u8]>,
    paths: Option<Vec<Vec<&'a [u8]>>>,
}

fn parse_paths<'a>(v: &Value<'a>) -> Result<Vec<Vec<&'a [u8]>>, EnvelopeError> {
    let paths = array(v, "paths")?;
    if paths.len() > MAX_PATHS {
        return Err(reject(format!(
            "read_state has {} paths; at most {MAX_PATHS} are allowed",
            paths.len()
        )));
    }
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let labels = array(path, &format!("paths[{i}]"))?;
            if labels.len() > MAX_PATH_LABELS {
                return Err(reject(format!(
                    "paths[{i}] has {} labels; at most {MAX_PATH_LABELS} are allowed",
                    labels.len()
                )));
            }
            labels
                .iter()
                .enumerate()
                .map(|(j, label)| blob(label, &format!("paths[{i}][{j}]")))
                .collect()
        })
        .collect()
}

/// The fields a content of this request type may carry; which of them are required is checked once
/// all are read. (Duplicate keys never get this far: the CBOR parser rejects them.)
fn allowed_fields(request_type: RequestType) -> &'static [&'static str] {
    match request_type {
        RequestType::Call | RequestType::Query => &[
            "request_type",
            "sender",
            "nonce",
            "ingress_expiry",
            "canister_id",
            "method_name",
            "arg",
        ],
        RequestType::ReadState => &["request_type", "sender", "nonce", "ingress_expiry", "paths"],
    }
}

impl<'a> Content<'a> {
    fn parse(v: &Value<'a>) -> Result<Self, EnvelopeError> {
        let request_type = match v.get("request_type") {
            Some(rt) => RequestType::parse(text(rt, "request_type")?)?,
            None if v.as_map().is_some() => return Err(reject("content is missing request_type")),
            None => return Err(reject(format!("content must be a map, not a {}", v.type_name()))),
        };
        let rt = request_type.as_str();
        let (mut sender, mut nonce, mut ingress_expiry) = (None, None, None);
        let (mut canister_id, mut method_name, mut arg, mut paths) = (None, None, None, None);
        for_each_field(v, "content", |key, value| {
            if key == "sender_info" {
                return Err(reject(
                    "sender_info is only allowed for canister-signature senders, which are not supported",
                ));
            }
            if !allowed_fields(request_type).contains(&key) {
                return Err(reject(format!("unexpected field {key:?} in {rt} content")));
            }
            match key {
                "sender" => sender = Some(principal(value, "sender")?),
                "nonce" => {
                    let n = blob(value, "nonce")?;
                    if n.len() > MAX_NONCE_LEN {
                        return Err(reject(format!(
                            "nonce is {} bytes; at most {MAX_NONCE_LEN} are allowed",
                            n.len()
                        )));
                    }
                    nonce = Some(n);
                }
                "ingress_expiry" => ingress_expiry = Some(nat64(value, "ingress_expiry")?),
                "canister_id" => canister_id = Some(principal(value, "canister_id")?),
                "method_name" => method_name = Some(text(value, "method_name")?),
                "arg" => arg = Some(blob(value, "arg")?),
                "paths" => paths = Some(parse_paths(value)?),
                _ => {} // request_type, already parsed
            }
            Ok(())
        })?;
        let missing = |field: &str| reject(format!("{rt} content is missing {field}"));
        let content = Content {
            request_type,
            sender: sender.ok_or_else(|| missing("sender"))?,
            nonce,
            ingress_expiry: ingress_expiry.ok_or_else(|| missing("ingress_expiry"))?,
            canister_id,
            method_name,
            arg,
            paths,
        };
        match request_type {
            RequestType::Call | RequestType::Query => {
                content.canister_id.ok_or_else(|| missing("canister_id"))?;
                content.method_name.ok_or_else(|| missing("method_name"))?;
                content.arg.ok_or_else(|| missing("arg"))?;
            }
            RequestType::ReadState => {
                content.paths.as_ref().ok_or_else(|| missing("paths"))?;
            }
        }
        Ok(content)
    }

    fn is_anonymous(&self) -> bool {
        self.sender == ANONYMOUS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permissions {
    All,
    QueriesOnly,
}

#[derive(Debug)]
struct SignedDelegation<'v, 'a> {
    /// The delegation map itself: its hash_of_map is what the previous key signed.
    delegation: &'v Value<'a>,
    pubkey: &'a [u8],
    expiration: u64,
    targets: Option<Vec<&'a [u8]>>,
    permissions: Permissions,
    signature: &'a [u8],
}

fn parse_targets<'a>(v: &Value<'a>, index: usize) -> Result<Vec<&'a [u8]>, EnvelopeError> {
    let targets = array(v, &format!("delegation {index} targets"))?;
    if targets.len() > MAX_DELEGATION_TARGETS {
        return Err(reject(format!(
            "delegation {index} has {} targets; at most {MAX_DELEGATION_TARGETS} are allowed",
            targets.len()
        )));
    }
    targets
        .iter()
        .map(|t| principal(t, &format!("delegation {index} target")))
        .collect()
}

fn parse_permissions(v: &Value<'_>, index: usize) -> Result<Permissions, EnvelopeError> {
    match text(v, &format!("delegation {index} permissions"))? {
        "all" => Ok(Permissions::All),
        "queries" => Ok(Permissions::QueriesOnly),
        other => Err(reject(format!(
            "delegation {index} has unknown permissions {other:?}: expected \"all\" or \"queries\""
        ))),
    }
}

impl<'v, 'a> SignedDelegation<'v, 'a> {
    fn parse(v: &'v Value<'a>, index: usize) -> Result<Self, EnvelopeError> {
        let what = format!("sender_delegation[{index}]");
        let (mut delegation, mut signature) = (None, None);
        for_each_field(v, &what, |key, value| {
            match key {
                "delegation" => delegation = Some(value),
                "signature" => signature = Some(blob(value, &format!("delegation {index} signature"))?),
                other => return Err(reject(format!("unexpected field {other:?} in {what}"))),
            }
            Ok(())
        })?;
        let delegation = delegation.ok_or_else(|| reject(format!("{what} is missing delegation")))?;
        let signature = signature.ok_or_else(|| reject(format!("{what} is missing signature")))?;

        let (mut pubkey, mut expiration, mut targets, mut permissions) = (None, None, None, Permissions::All);
        for_each_field(delegation, &format!("delegation {index}"), |key, value| {
            match key {
                "pubkey" => pubkey = Some(blob(value, &format!("delegation {index} pubkey"))?),
                "expiration" => expiration = Some(nat64(value, &format!("delegation {index} expiration"))?),
                "targets" => targets = Some(parse_targets(value, index)?),
                "permissions" => permissions = parse_permissions(value, index)?,
                other => {
                    return Err(reject(format!(
                        "unexpected field {other:?} in delegation {index}"
                    )))
                }
            }
            Ok(())
        })?;
        Ok(SignedDelegation {
            delegation,
            pubkey: pubkey.ok_or_else(|| reject(format!("delegation {index} is missing pubkey")))?,
            expiration: expiration
                .ok_or_else(|| reject(format!("delegation {index} is missing expiration")))?,
            targets,
            permissions,
            signature,
        })
    }
}

#[derive(Debug)]
struct Envelope<'v, 'a> {
    content: &'v Value<'a>,
    sender_pubkey: Option<&'a [u8]>,
    sender_sig: Option<&'a [u8]>,
    /// `None` when the field is absent; an empty chain is the same as no delegation.
    delegations: Option<Vec<SignedDelegation<'v, 'a>>>,
}

fn parse_delegations<'v, 'a>(v: &'v Value<'a>) -> Result<Vec<SignedDelegation<'v, 'a>>, EnvelopeError> {
    let items = array(v, "sender_delegation")?;
    if items.len() > MAX_DELEGATIONS {
        return Err(reject(format!(
            "sender_delegation has {} delegations; at most {MAX_DELEGATIONS} are allowed",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, d)| SignedDelegation::parse(d, i))
        .collect()
}

impl<'v, 'a> Envelope<'v, 'a> {
    fn parse(root: &'v Value<'a>) -> Result<Self, EnvelopeError> {
        let (mut content, mut sender_pubkey, mut sender_sig, mut delegations) = (None, None, None, None);
        for_each_field(root, "envelope", |key, value| {
            match key {
                "content" => content = Some(value),
                "sender_pubkey" => sender_pubkey = Some(blob(value, "sender_pubkey")?),
                "sender_sig" => sender_sig = Some(blob(value, "sender_sig")?),
                "sender_delegation" => delegations = Some(parse_delegations(value)?),
                other => return Err(reject(format!("unexpected field {other:?} in the envelope"))),
            }
            Ok(())
        })?;
        Ok(Envelope {
            content: content.ok_or_else(|| reject("envelope is missing content"))?,
            sender_pubkey,
            sender_sig,
            delegations,
        })
    }

    fn carries_authentication(&self) -> bool {
        self.sender_pubkey.is_some() || self.sender_sig.is_some() || self.delegations.is_some()
    }
}

fn parse_envelope_bytes(envelope_bytes: &[u8]) -> Result<Value<'_>, EnvelopeError> {
    cbor::parse(envelope_bytes).map_err(|e| reject(format!("malformed envelope: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The checks.

fn check_ingress_expiry(expiry: u64, now_ns: u64) -> Result<(), EnvelopeError> {
    let latest = now_ns.saturating_add(MAX_INGRESS_EXPIRY_AHEAD_NS);
    if expiry < now_ns {
        return Err(reject(format!(
            "ingress_expiry {expiry} has passed (now {now_ns}); it must lie in [now, now + 5 min 30 s]"
        )));
    }
    if expiry > latest {
        return Err(reject(format!(
            "ingress_expiry {expiry} is too far in the future: at most {latest} (now + 5 min 30 s) is allowed"
        )));
    }
    Ok(())
}

fn parse_key(der: &[u8], what: &str) -> Result<PublicKey, EnvelopeError> {
    PublicKey::from_der(der).map_err(|e| reject(format!("{what}: {e}")))
}

fn check_signature(
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
    what: &str,
) -> Result<(), EnvelopeError> {
    match key.verify(message, signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(reject(format!(
            "{what} does not verify ({} key)",
            key.scheme_name()
        ))),
        Err(e) => Err(reject(format!("{what}: {e}"))),
    }
}

fn check_sender(content: &Content<'_>, sender_pubkey: &[u8]) -> Result<(), EnvelopeError> {
    let expected = self_authenticating(sender_pubkey);
    if content.sender != expected.as_slice() {
        return Err(reject(format!(
            "sender {} does not match sender_pubkey, whose self-authenticating principal is {}",
            to_text(content.sender),
            to_text(&expected)
        )));
    }
    Ok(())
}

fn check_delegation_rules(
    delegations: &[SignedDelegation<'_, '_>],
    sender_pubkey: &[u8],
    request_type: RequestType,
    now_ns: u64,
) -> Result<(), EnvelopeError> {
    for (i, d) in delegations.iter().enumerate() {
        if d.expiration < now_ns {
            return Err(reject(format!(
                "delegation {i} expired at {} (now {now_ns})",
                d.expiration
            )));
        }
        if d.permissions == Permissions::QueriesOnly && request_type == RequestType::Call {
            return Err(reject(format!(
                "delegation {i} has permissions \"queries\", which do not allow a call request"
            )));
        }
    }
    // No key may appear twice: a repeated key would make the chain a cycle or a self-delegation.
    let keys: Vec<&[u8]> = std::iter::once(sender_pubkey)
        .chain(delegations.iter().map(|d| d.pubkey))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].contains(key) {
            return Err(reject(format!(
                "public key {} appears twice in the delegation chain",
                data_encoding::HEXLOWER.encode(key)
            )));
        }
    }
    Ok(())
}

/// Verify each delegation with the key before it and return the key that must sign the request.
fn verify_delegation_chain(
    delegations: &[SignedDelegation<'_, '_>],
    sender_pubkey: &[u8],
) -> Result<PublicKey, EnvelopeError> {
    let mut signer = parse_key(sender_pubkey, "sender_pubkey")?;
    for (i, d) in delegations.iter().enumerate() {
        let hash = hash_of_map_value(d.delegation).map_err(|e| reject(format!("delegation {i}: {e}")))?;
        let message = [DOMAIN_IC_DELEGATION, hash.as_slice()].concat();
        let by = if i == 0 {
            "sender_pubkey".to_owned()
        } else {
            format!("the key of delegation {}", i - 1)
        };
        check_signature(
            &signer,
            &message,
            d.signature,
            &format!("signature of delegation {i} by {by}"),
        )?;
        signer = parse_key(d.pubkey, &format!("delegation {i} pubkey"))?;
    }
    Ok(signer)
}

/// The canisters every delegation allows, or `None` when none restricts them.
fn target_intersection(delegations: &[SignedDelegation<'_, '_>]) -> Option<Vec<Vec<u8>>> {
    let mut allowed: Option<Vec<&[u8]>> = None;
    for targets in delegations.iter().filter_map(|d| d.targets.as_ref()) {
        allowed = Some(match allowed {
            None => targets.clone(),
            Some(previous) => previous.into_iter().filter(|t| targets.contains(t)).collect(),
        });
    }
    allowed.map(|set| set.into_iter().map(<[u8]>::to_vec).collect())
}

/// Returns the target restriction of the chain (see [`VerifiedEnvelope::targets`]).
fn authenticate(
    envelope: &Envelope<'_, '_>,
    content: &Content<'_>,
    request_id: &Hash,
    now_ns: u64,
) -> Result<Option<Vec<Vec<u8>>>, EnvelopeError> {
    if content.is_anonymous() {
        if envelope.carries_authentication() {
            return Err(reject("Signature is not allowed for the anonymous user"));
        }
        return Ok(None);
    }
    let sender_pubkey = envelope.sender_pubkey.ok_or_else(|| {
        reject(format!(
            "missing sender_pubkey: sender {} is not anonymous",
            to_text(content.sender)
        ))
    })?;
    let sender_sig = envelope.sender_sig.ok_or_else(|| {
        reject(format!(
            "missing sender_sig: sender {} is not anonymous",
            to_text(content.sender)
        ))
    })?;
    check_sender(content, sender_pubkey)?;
    let delegations = envelope.delegations.as_deref().unwrap_or_default();
    check_delegation_rules(delegations, sender_pubkey, content.request_type, now_ns)?;
    let signer = verify_delegation_chain(delegations, sender_pubkey)?;
    let message = [DOMAIN_IC_REQUEST, request_id.as_slice()].concat();
    let what = if delegations.is_empty() {
        "sender_sig"
    } else {
        "sender_sig (by the last delegation's key)"
    };
    check_signature(&signer, &message, sender_sig, what)?;
    Ok(target_intersection(delegations))
}

fn check_targets(content: &Content<'_>, targets: &Option<Vec<Vec<u8>>>) -> Result<(), EnvelopeError> {
    if let (Some(canister_id), Some(targets)) = (content.canister_id, targets) {
        if !targets.iter().any(|t| t.as_slice() == canister_id) {
            return Err(reject(format!(
                "canister {} is not one of the delegation targets",
                to_text(canister_id)
            )));
        }
    }
    Ok(())
}

/// Verify an envelope as the replica would at time `now_ns` (nanoseconds since the epoch).
pub fn verify(envelope_bytes: &[u8], now_ns: u64) -> Result<VerifiedEnvelope, EnvelopeError> {
    let root = parse_envelope_bytes(envelope_bytes)?;
    let envelope = Envelope::parse(&root)?;
    let content = Content::parse(envelope.content)?;
    let request_id = hash_of_map_value(envelope.content).map_err(|e| reject(format!("content: {e}")))?;
    // Anonymous queries and read_states are not bound to a time window (spec since 0.29).
    let expiry_exempt = content.is_anonymous() && content.request_type != RequestType::Call;
    if !expiry_exempt {
        check_ingress_expiry(content.ingress_expiry, now_ns)?;
    }
    let targets = authenticate(&envelope, &content, &request_id, now_ns)?;
    check_targets(&content, &targets)?;
    Ok(VerifiedEnvelope {
        request_id,
        request_type: content.request_type,
        sender: content.sender.to_vec(),
        canister_id: content.canister_id.map(<[u8]>::to_vec),
        method_name: content.method_name.map(str::to_owned),
        arg: content.arg.map(<[u8]>::to_vec),
        ingress_expiry: content.ingress_expiry,
        nonce: content.nonce.map(<[u8]>::to_vec),
        paths: content.paths.map(|p| {
            p.into_iter()
                .map(|path| path.into_iter().map(<[u8]>::to_vec).collect())
                .collect()
        }),
        targets,
    })
}

/// The request id of an envelope's content, with no checks beyond parsing.
pub fn request_id(envelope_bytes: &[u8]) -> Result<Hash, EnvelopeError> {
    let root = parse_envelope_bytes(envelope_bytes)?;
    let content = root
        .get("content")
        .ok_or_else(|| reject("envelope is missing content"))?;
    hash_of_map_value(content).map_err(|e| reject(format!("content: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Signing.

/// Build and sign `55799({content, sender_pubkey, sender_sig})` from CBOR-encoded content. The content
/// is checked the same way `verify` checks it (except for time), and the request id is computed
/// from the very bytes that are sent, so the envelope cannot disagree with its signature.
pub fn sign_content_cbor(identity: &Ed25519Identity, content_cbor: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let content_value = cbor::parse(content_cbor).map_err(|e| reject(format!("content: {e}")))?;
    let content = Content::parse(&content_value)?;
    if content.sender != identity.principal() {
        return Err(reject(format!(
            "content sender {} is not the signing identity's principal {}",
            to_text(content.sender),
            to_text(identity.principal())
        )));
    }
    let request_id = hash_of_map_value(&content_value).map_err(|e| reject(format!("content: {e}")))?;
    let signature = identity.sign(&[DOMAIN_IC_REQUEST, request_id.as_slice()].concat());

    let mut w = Writer::with_capacity(content_cbor.len() + 160);
    w.self_describe().map(3);
    w.text("content").raw(content_cbor);
    w.text("sender_pubkey").bytes(identity.der_public_key());
    w.text("sender_sig").bytes(&signature);
    Ok(w.into_bytes())
}

fn py_type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

fn encode_py_items<'py>(
    w: &mut Writer,
    items: impl ExactSizeIterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> PyResult<()> {
    w.array(items.len() as u64);
    for item in items {
        encode_content_value(w, &item, depth - 1)?;
    }
    Ok(())
}

fn encode_py_mapping(w: &mut Writer, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
    let pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = match obj.downcast::<PyDict>() {
        Ok(dict) => dict.iter().collect(),
        Err(_) => obj
            .call_method0("items")?
            .try_iter()?
            .map(|item| item?.extract())
            .collect::<PyResult<_>>()?,
    };
    w.map(pairs.len() as u64);
    for (key, value) in &pairs {
        let Ok(key) = key.downcast::<PyString>() else {
            return Err(RequestIdError::new_err(format!(
                "content keys must be str, not {}",
                py_type_name(key)
            )));
        };
        w.text(key.to_str()?);
        encode_content_value(w, value, depth - 1)?;
    }
    Ok(())
}

/// Content values as the request-id rules allow them: bytes, str, int, lists and mappings.
fn encode_content_value(w: &mut Writer, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
    if depth == 0 {
        return Err(RequestIdError::new_err(
            "content nested too deeply (or it contains itself)",
        ));
    }
    if obj.is_instance_of::<PyBool>() || obj.is_instance_of::<PyFloat>() || obj.is_none() {
        return Err(RequestIdError::new_err(format!(
            "a {} has no representation-independent hash and cannot be part of a request",
            py_type_name(obj)
        )));
    }
    if obj.is_instance_of::<PyBytes>()
        || obj.is_instance_of::<PyString>()
        || obj.is_instance_of::<PyInt>()
        || obj.is_instance_of::<PyByteArray>()
        || obj.is_instance_of::<PyMemoryView>()
    {
        return cbor::py_to_cbor(w, obj, 1);
    }
    if let Ok(list) = obj.downcast::<PyList>() {
        return encode_py_items(w, list.iter(), depth);
    }
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        return encode_py_items(w, tuple.iter(), depth);
    }
    if obj.is_instance_of::<PyDict>() || obj.downcast::<PyMapping>().is_ok() {
        return encode_py_mapping(w, obj, depth);
    }
    Err(RequestIdError::new_err(format!(
        "cannot put a {} into a request",
        py_type_name(obj)
    )))
}

/// Verify an envelope as the IC would at `now_ns`; raises `EnvelopeError` saying why it is rejected.
#[pyfunction]
fn verify_envelope(envelope_cbor: &[u8], now_ns: u64) -> PyResult<()> {
    verify(envelope_cbor, now_ns)?;
    Ok(())
}

/// The request id of an envelope's content (no checks beyond parsing).
#[pyfunction]
fn envelope_request_id<'py>(py: Python<'py>, envelope_cbor: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &request_id(envelope_cbor)?))
}

/// Sign a call, query or read_state content with `identity`; returns the CBOR envelope.
#[pyfunction]
fn sign_envelope<'py>(
    py: Python<'py>,
    identity: &Bound<'py, Ed25519Identity>,
    content: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    if !(content.is_instance_of::<PyDict>() || content.downcast::<PyMapping>().is_ok()) {
        return Err(PyEnvelopeError::new_err(format!(
            "content must be a mapping, not {}",
            py_type_name(content)
        )));
    }
    let mut w = Writer::with_capacity(256);
    encode_py_mapping(&mut w, content, MAX_DEPTH)?;
    let envelope = sign_content_cbor(identity.get(), &w.into_bytes())?;
    Ok(PyBytes::new(py, &envelope))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify_envelope, m)?)?;
    m.add_function(wrap_pyfunction!(envelope_request_id, m)?)?;
    m.add_function(wrap_pyfunction!(sign_envelope, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn call_content(w: &mut Writer, sender: &[u8], expiry: u64) {
        w.map(6);
        w.text("request_type").text("call");
        w.text("sender").bytes(sender);
        w.text("ingress_expiry").uint(expiry);
        w.text("canister_id").bytes(&[0, 0, 0, 0, 0, 0x20, 0, 0x0c, 1, 1]);
        w.text("method_name").text("greet");
        w.text("arg").bytes(b"DIDL\x00\x00");
    }

    fn signed_call(identity: &Ed25519Identity, expiry: u64) -> Vec<u8> {
        let mut w = Writer::default();
        call_content(&mut w, identity.principal(), expiry);
        sign_content_cbor(identity, &w.into_bytes()).unwrap()
    }

    #[test]
    fn signed_envelope_verifies_and_reports_its_fields() {
        let id = Ed25519Identity::from_secret_key(&[7u8; 32]);
        let env = signed_call(&id, NOW + 60_000_000_000);
        let verified = verify(&env, NOW).unwrap();
        assert_eq!(verified.request_type, RequestType::Call);
        assert_eq!(verified.sender, id.principal());
        assert_eq!(verified.method_name.as_deref(), Some("greet"));
        assert_eq!(verified.request_id, request_id(&env).unwrap());
        assert_eq!(verified.targets, None);
    }

    #[test]
    fn expiry_window_edges() {
        let id = Ed25519Identity::from_secret_key(&[7u8; 32]);
        assert!(verify(&signed_call(&id, NOW), NOW).is_ok());
        assert!(verify(&signed_call(&id, NOW + MAX_INGRESS_EXPIRY_AHEAD_NS), NOW).is_ok());
        assert!(verify(&signed_call(&id, NOW - 1), NOW)
            .unwrap_err()
            .0
            .contains("has passed"));
        let far = verify(&signed_call(&id, NOW + MAX_INGRESS_EXPIRY_AHEAD_NS + 1), NOW).unwrap_err();
        assert!(far.0.contains("too far in the future"), "{far}");
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let id = Ed25519Identity::from_secret_key(&[7u8; 32]);
        let mut env = signed_call(&id, NOW + 1);
        *env.last_mut().unwrap() ^= 1;
        assert!(verify(&env, NOW)
            .unwrap_err()
            .0
            .contains("sender_sig does not verify"));
    }

    #[test]
    fn bignum_expiry_counts_as_a_nat() {
        let v = Value::Tag(2, Box::new(Value::Bytes(&[0, 0, 1, 0])));
        assert_eq!(nat64(&v, "x").unwrap(), 256);
        let too_big = Value::Tag(2, Box::new(Value::Bytes(&[1, 0, 0, 0, 0, 0, 0, 0, 0])));
        assert!(nat64(&too_big, "x").is_err());
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for bytes in [
            &b""[..],
            b"\xd9\xd9\xf7",
            b"\xa0",
            b"\x80",
            b"\xa1\x01\x02",
            b"\xff",
        ] {
            assert!(verify(bytes, NOW).is_err());
            assert!(request_id(bytes).is_err());
        }
    }
}
