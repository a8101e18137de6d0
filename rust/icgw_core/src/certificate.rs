//! IC certificates: parsing, BLS verification with an optional subnet delegation, delegation scope
//! (canister ranges or subnet id) and freshness (IC-INTERFACE.md §5.4–§5.6).
//!
//! A delegation certificate is the same for every certificate a subnet issues until the subnet
//! renews it, so verified delegations are cached (keyed by the root key and the delegation
//! certificate's bytes): a second certificate from the same subnet costs one pairing check, not two.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bls;
use crate::cbor::{self, Value};
use crate::errors::CertificateError;
use crate::hash::{sha256_parts, Hash, DOMAIN_IC_STATE_ROOT};
use crate::hash_tree::{self, HashTree, Lookup, SubtreeLookup};
use crate::principal;

/// Default maximum age of a certificate's `/time` when a caller asks for a freshness check.
pub const DEFAULT_MAX_AGE_NS: u64 = 5 * 60 * 1_000_000_000;
/// How far a certificate's `/time` may lie ahead of the caller's clock.
pub const MAX_CLOCK_SKEW_NS: u64 = 5 * 60 * 1_000_000_000;
/// Maximum age of a delegation certificate's `/time` (as agent-js: subnets renew their delegation
/// far more often; an old one may carry a retired subnet key).
pub const MAX_DELEGATION_AGE_NS: u64 = 30 * 24 * 3600 * 1_000_000_000;
/// How many verified delegations the cache keeps (one per subnet in practice).
pub const DELEGATION_CACHE_CAPACITY: usize = 256;

/// Why a certificate is not acceptable. The `Display` text is the reason given to Python callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("invalid root key: {0}")]
    InvalidRootKey(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("invalid delegation: a delegation certificate must not itself contain a delegation (nested delegation)")]
    NestedDelegation,
    #[error("invalid delegation: {0}")]
    InvalidDelegation(String),
    #[error("certificate not authorized: {0}")]
    NotAuthorized(String),
    #[error("{0}")]
    MissingTime(String),
    #[error("{0}")]
    TooOld(String),
    #[error("{0}")]
    FromTheFuture(String),
    /// Data that claims to be certified by the certificate but is not (a witness or a message).
    #[error("not certified: {0}")]
    NotCertified(String),
}

impl From<CertError> for PyErr {
    fn from(e: CertError) -> PyErr {
        CertificateError::new_err(e.to_string())
    }
}

/// A parsed certificate; everything borrows from the certificate bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate<'a> {
    pub tree: HashTree<'a>,
    pub signature: &'a [u8],
    pub delegation: Option<Delegation<'a>>,
}

/// `{subnet_id, certificate}`: the root key's certificate for the subnet that signed the outer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delegation<'a> {
    pub subnet_id: &'a [u8],
    pub certificate: &'a [u8],
}

/// What a certificate must be valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'s> {
    /// A canister-scoped request: the delegation's canister ranges must contain this canister.
    Canister(&'s [u8]),
    /// A subnet-scoped request: the delegation must be for this subnet.
    Subnet(&'s [u8]),
    /// Only check the signature chain.
    Unscoped,
}

fn malformed(what: impl Into<String>) -> CertError {
    CertError::Malformed(what.into())
}

impl<'a> Certificate<'a> {
    /// Decode `{tree, signature, ? delegation}` (tag 55799 optional). A CBOR `null` delegation counts
    /// as absent; unknown keys are ignored. Does not verify anything.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CertError> {
        let value = cbor::parse(bytes).map_err(|e| malformed(e.0))?;
        if value.as_map().is_none() {
            return Err(malformed(format!("expected a map, got a {}", value.type_name())));
        }
        let tree = value.get("tree").ok_or_else(|| malformed("no \"tree\""))?;
        let tree = hash_tree::parse(tree).map_err(|e| malformed(e.to_string()))?;
        let signature = match value.get("signature") {
            Some(Value::Bytes(sig)) => *sig,
            Some(other) => {
                return Err(malformed(format!(
                    "\"signature\" is a {}, not bytes",
                    other.type_name()
                )))
            }
            None => return Err(malformed("no \"signature\"")),
        };
        let delegation = value
            .get_present("delegation")
            .map(parse_delegation)
            .transpose()?;
        Ok(Certificate {
            tree,
            signature,
            delegation,
        })
    }

    /// Look a path up in the certificate's tree.
    pub fn lookup(&self, path: &[&[u8]]) -> Lookup<'a> {
        self.tree.lookup_path(path)
    }

    /// The certificate's `/time` in nanoseconds since the epoch.
    pub fn time_ns(&self) -> Result<u64, CertError> {
        match self.lookup(&[b"time"]) {
            Lookup::Found(leb) => {
                decode_leb128_u64(leb).ok_or_else(|| malformed("/time is not a LEB128-encoded 64-bit number"))
            }
            Lookup::Absent | Lookup::Unknown => {
                Err(CertError::MissingTime("certificate has no /time".into()))
            }
            Lookup::Error => Err(malformed("/time is not a leaf")),
        }
    }

    /// The root hash the signature is over.
    pub fn root_hash(&self) -> Hash {
        self.tree.digest()
    }
}

fn parse_delegation<'a>(value: &Value<'a>) -> Result<Delegation<'a>, CertError> {
    if value.as_map().is_none() {
        return Err(malformed(format!(
            "\"delegation\" is a {}, not a map",
            value.type_name()
        )));
    }
    let field = |key: &str| match value.get(key) {
        Some(Value::Bytes(b)) => Ok(*b),
        Some(other) => Err(malformed(format!(
            "delegation \"{key}\" is a {}, not bytes",
            other.type_name()
        ))),
        None => Err(malformed(format!("delegation has no \"{key}\""))),
    };
    let subnet_id = field("subnet_id")?;
    principal::check_len(subnet_id).map_err(|e| malformed(format!("delegation subnet_id: {}", e.0)))?;
    Ok(Delegation {
        subnet_id,
        certificate: field("certificate")?,
    })
}

/// Unsigned LEB128, at most 64 bits; `None` for an empty, unterminated, overlong or trailing input.
fn decode_leb128_u64(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate() {
        let shift = 7 * i as u32;
        let payload = u64::from(byte & 0x7f);
        if shift >= 64 || (shift > 0 && payload >> (64 - shift) != 0) {
            return None;
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            return (i + 1 == bytes.len()).then_some(value);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// Verify a certificate and return it parsed, for the caller's lookups.
///
/// Checks, cheapest first: structure; freshness of `/time` when `now_ns` is given (it must exist, be
/// at most `max_age_ns` old, default 5 minutes, and at most 5 minutes in the future); then the
/// delegation, if any (no nested delegation, not older than 30 days when `now_ns` is given, the subnet
/// key under `/subnet/<id>/public_key`, the scope, and, unless cached, its signature by the root key);
/// then the signature over `\x0Dic-state-root ‖ root_hash` with the root key or the subnet key.
///
/// Without a delegation (a root-subnet certificate) the scope is not checked: the root key speaks
/// for every canister and subnet.
pub fn verify<'a>(
    cert_bytes: &'a [u8],
    root_key_der: &[u8],
    scope: Scope<'_>,
    now_ns: Option<u64>,
    max_age_ns: Option<u64>,
) -> Result<Certificate<'a>, CertError> {
    check_scope_ids(scope)?;
    let root_key =
        bls::public_key_from_der(root_key_der).map_err(|e| CertError::InvalidRootKey(e.to_string()))?;
    let cert = Certificate::parse(cert_bytes)?;
    check_signature_length(cert.signature)?;
    if let Some(now) = now_ns {
        check_freshness(cert.time_ns()?, now, max_age_ns.unwrap_or(DEFAULT_MAX_AGE_NS))?;
    }
    let signing_key: [u8; bls::PUBLIC_KEY_LEN] = match &cert.delegation {
        None => *root_key,
        Some(delegation) => verify_delegation(delegation, root_key_der, root_key, scope, now_ns)?,
    };
    let signer = if cert.delegation.is_some() {
        "the subnet key"
    } else {
        "the root key"
    };
    check_signature(&cert, &signing_key, signer)?;
    Ok(cert)
}

/// A scope id that cannot be a principal is a caller error; say so instead of "not authorized".
fn check_scope_ids(scope: Scope<'_>) -> Result<(), CertError> {
    let (what, id) = match scope {
        Scope::Canister(id) => ("canister id", id),
        Scope::Subnet(id) => ("subnet id", id),
        Scope::Unscoped => return Ok(()),
    };
    principal::check_len(id).map_err(|e| CertError::NotAuthorized(format!("invalid {what}: {}", e.0)))
}

fn check_signature_length(signature: &[u8]) -> Result<(), CertError> {
    if signature.len() != bls::SIGNATURE_LEN {
        return Err(malformed(format!(
            "the signature must have {} bytes, got {}",
            bls::SIGNATURE_LEN,
            signature.len()
        )));
    }
    Ok(())
}

fn signed_message(root_hash: &Hash) -> Vec<u8> {
    [DOMAIN_IC_STATE_ROOT, root_hash].concat()
}

fn check_signature(cert: &Certificate<'_>, key: &[u8], signer: &str) -> Result<(), CertError> {
    let message = signed_message(&cert.root_hash());
    let cache_key = sha256_parts(&[key, cert.signature, &message]);
    if verified_contains(&cache_key) {
        return Ok(());
    }
    STATS.signature_checks.fetch_add(1, Ordering::Relaxed);
    if bls::verify(key, cert.signature, &message) {
        verified_insert(cache_key);
        Ok(())
    } else {
        Err(CertError::InvalidSignature(format!(
            "the certificate signature does not verify against {signer}"
        )))
    }
}

fn check_freshness(time_ns: u64, now_ns: u64, max_age_ns: u64) -> Result<(), CertError> {
    if time_ns < now_ns.saturating_sub(max_age_ns) {
        return Err(CertError::TooOld(format!(
            "certificate too old: its /time is {} s before now, more than the maximum age of {} s",
            seconds(now_ns - time_ns),
            seconds(max_age_ns)
        )));
    }
    if time_ns > now_ns.saturating_add(MAX_CLOCK_SKEW_NS) {
        return Err(CertError::FromTheFuture(format!(
            "certificate from the future: its /time is {} s after now, more than the allowed clock skew of {} s",
            seconds(time_ns - now_ns),
            seconds(MAX_CLOCK_SKEW_NS)
        )));
    }
    Ok(())
}

fn seconds(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// Verify a delegation and return the subnet public key it certifies.
fn verify_delegation(
    delegation: &Delegation<'_>,
    root_key_der: &[u8],
    root_key: &[u8; bls::PUBLIC_KEY_LEN],
    scope: Scope<'_>,
    now_ns: Option<u64>,
) -> Result<[u8; bls::PUBLIC_KEY_LEN], CertError> {
    let inner = Certificate::parse(delegation.certificate)
        .map_err(|e| CertError::InvalidDelegation(format!("its certificate is malformed ({e})")))?;
    if inner.delegation.is_some() {
        return Err(CertError::NestedDelegation);
    }
    if let Some(now) = now_ns {
        check_delegation_age(&inner, now)?;
    }
    let subnet_key = subnet_public_key(&inner, delegation.subnet_id)?;
    check_scope(&inner, delegation.subnet_id, scope)?;
    let cache_key = delegation_cache_key(root_key_der, delegation.certificate);
    if !cache_contains(&cache_key) {
        check_signature_length(inner.signature)
            .map_err(|e| CertError::InvalidDelegation(format!("its certificate is malformed ({e})")))?;
        check_signature(&inner, root_key, "the root key").map_err(|_| {
            CertError::InvalidDelegation(
                "its certificate signature does not verify against the root key".into(),
            )
        })?;
        cache_insert(cache_key);
    }
    Ok(subnet_key)
}

fn check_delegation_age(inner: &Certificate<'_>, now_ns: u64) -> Result<(), CertError> {
    let time = inner
        .time_ns()
        .map_err(|e| CertError::InvalidDelegation(format!("its certificate has no usable /time ({e})")))?;
    if time < now_ns.saturating_sub(MAX_DELEGATION_AGE_NS) {
        return Err(CertError::TooOld(format!(
            "delegation certificate too old: its /time is {} s before now, more than the maximum age of {} s",
            seconds(now_ns - time),
            seconds(MAX_DELEGATION_AGE_NS)
        )));
    }
    Ok(())
}

fn subnet_public_key(
    inner: &Certificate<'_>,
    subnet_id: &[u8],
) -> Result<[u8; bls::PUBLIC_KEY_LEN], CertError> {
    let subnet = principal::to_text(subnet_id);
    match inner.lookup(&[b"subnet", subnet_id, b"public_key"]) {
        Lookup::Found(der) => bls::public_key_from_der(der)
            .copied()
            .map_err(|e| CertError::InvalidDelegation(format!("the public key of subnet {subnet} is {e}"))),
        Lookup::Absent => Err(CertError::InvalidDelegation(format!(
            "its certificate has no public key for subnet {subnet}"
        ))),
        Lookup::Unknown => Err(CertError::InvalidDelegation(format!(
            "its certificate does not reveal the public key of subnet {subnet} (pruned)"
        ))),
        Lookup::Error => Err(CertError::InvalidDelegation(format!(
            "/subnet/{subnet}/public_key is not a leaf"
        ))),
    }
}

fn check_scope(inner: &Certificate<'_>, subnet_id: &[u8], scope: Scope<'_>) -> Result<(), CertError> {
    match scope {
        Scope::Unscoped => Ok(()),
        Scope::Subnet(expected) if expected == subnet_id => Ok(()),
        Scope::Subnet(expected) => Err(CertError::NotAuthorized(format!(
            "the delegation is for subnet {}, not {}",
            principal::to_text(subnet_id),
            principal::to_text(expected)
        ))),
        Scope::Canister(canister) => {
            let ranges = canister_ranges(&inner.tree, subnet_id, canister)?;
            if ranges_contain(&ranges, canister) {
                Ok(())
            } else {
                Err(CertError::NotAuthorized(format!(
                    "canister {} is not in the canister ranges of subnet {}",
                    principal::to_text(canister),
                    principal::to_text(subnet_id)
                )))
            }
        }
    }
}

/// An inclusive range of canister ids.
pub type CanisterRange<'a> = (&'a [u8], &'a [u8]);

/// The delegation's canister ranges that decide whether `canister` is covered: the shard of the
/// sharded layout `/canister_ranges/<subnet>/<first canister>` whose label is the last one
/// ≤ `canister`; when that subtree is absent or pruned, the legacy `/subnet/<subnet>/canister_ranges`.
pub fn canister_ranges<'a>(
    tree: &HashTree<'a>,
    subnet_id: &[u8],
    canister: &[u8],
) -> Result<Vec<CanisterRange<'a>>, CertError> {
    let subnet = principal::to_text(subnet_id);
    match tree.lookup_subtree(&[b"canister_ranges", subnet_id]) {
        // Absent, pruned or empty: the delegation may still carry the legacy layout.
        SubtreeLookup::Absent
        | SubtreeLookup::Unknown
        | SubtreeLookup::Found(HashTree::Pruned(_) | HashTree::Empty) => {}
        SubtreeLookup::Found(shards) => {
            let Some(shard) = select_shard(shards, canister) else {
                return Err(CertError::NotAuthorized(format!(
                    "canister {} lies before every revealed canister range shard of subnet {subnet}",
                    principal::to_text(canister)
                )));
            };
            return match shard {
                HashTree::Leaf(blob) => decode_ranges(blob),
                HashTree::Pruned(_) => Err(CertError::NotAuthorized(format!(
                    "the delegation does not reveal the canister range shard of subnet {subnet} \
                     for canister {} (pruned)",
                    principal::to_text(canister)
                ))),
                _ => Err(malformed(format!(
                    "a canister range shard of subnet {subnet} is not a leaf"
                ))),
            };
        }
    }
    match tree.lookup_path(&[b"subnet", subnet_id, b"canister_ranges"]) {
        Lookup::Found(blob) => decode_ranges(blob),
        Lookup::Absent => Err(CertError::NotAuthorized(format!(
            "the delegation does not contain the canister ranges of subnet {subnet}"
        ))),
        Lookup::Unknown => Err(CertError::NotAuthorized(format!(
            "the delegation does not reveal the canister ranges of subnet {subnet} (pruned)"
        ))),
        Lookup::Error => Err(malformed(format!(
            "/subnet/{subnet}/canister_ranges is not a leaf"
        ))),
    }
}

/// The subtree of the last revealed shard whose label is ≤ `canister`. Shards are only trusted for
/// what they contain, so a pruned neighbour can only lead to a rejection, never to a wrong accept.
pub fn select_shard<'t, 'a>(shards: &'t HashTree<'a>, canister: &[u8]) -> Option<&'t HashTree<'a>> {
    shards
        .flatten_forks()
        .into_iter()
        .filter_map(|node| match node {
            HashTree::Labeled(label, subtree) if *label <= canister => Some((*label, &**subtree)),
            _ => None,
        })
        .max_by_key(|(label, _)| *label)
        .map(|(_, subtree)| subtree)
}

/// Decode `[[lo, hi], …]` (tag 55799 optional).
pub fn decode_ranges(blob: &[u8]) -> Result<Vec<CanisterRange<'_>>, CertError> {
    let value = cbor::parse(blob).map_err(|e| malformed(format!("canister ranges: {e}")))?;
    let items = value.as_array().ok_or_else(|| {
        malformed(format!(
            "canister ranges: expected an array, got a {}",
            value.type_name()
        ))
    })?;
    items
        .iter()
        .map(|item| match item.as_array() {
            Some([Value::Bytes(lo), Value::Bytes(hi)]) if lo <= hi => Ok((*lo, *hi)),
            Some([Value::Bytes(_), Value::Bytes(_)]) => {
                Err(malformed("canister ranges: a range ends before it starts"))
            }
            _ => Err(malformed(
                "canister ranges: each range must be [lo: bytes, hi: bytes]",
            )),
        })
        .collect()
}

pub fn ranges_contain(ranges: &[CanisterRange<'_>], canister: &[u8]) -> bool {
    ranges.iter().any(|(lo, hi)| *lo <= canister && canister <= *hi)
}

// ---------------------------------------------------------------------------------------------
// The delegation cache.

struct DelegationCache {
    entries: HashSet<Hash>,
    /// Insertion order, for evicting the oldest entry when full.
    order: VecDeque<Hash>,
}

struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    signature_checks: AtomicU64,
}

static STATS: Stats = Stats {
    hits: AtomicU64::new(0),
    misses: AtomicU64::new(0),
    signature_checks: AtomicU64::new(0),
};

static CACHE: OnceLock<Mutex<DelegationCache>> = OnceLock::new();

/// The cache, locked. A panic while holding the lock cannot leave it inconsistent in a way that
/// matters (at worst an entry is missing), so a poisoned lock is simply taken over.
fn cache_lock() -> MutexGuard<'static, DelegationCache> {
    CACHE
        .get_or_init(|| {
            Mutex::new(DelegationCache {
                entries: HashSet::new(),
                order: VecDeque::new(),
            })
        })
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether this delegation was verified before. The lock is held only for the lookup, never during
/// a pairing check.
fn cache_contains(key: &Hash) -> bool {
    let hit = cache_lock().entries.contains(key);
    let counter = if hit { &STATS.hits } else { &STATS.misses };
    counter.fetch_add(1, Ordering::Relaxed);
    hit
}

fn cache_insert(key: Hash) {
    let mut cache = cache_lock();
    if !cache.entries.insert(key) {
        return;
    }
    cache.order.push_back(key);
    while cache.order.len() > DELEGATION_CACHE_CAPACITY {
        if let Some(oldest) = cache.order.pop_front() {
            cache.entries.remove(&oldest);
        }
    }
}

/// Signatures that verified, by sha256(key, signature, message): a pairing check is a pure function of
/// the three, and every certificate of one certified state (each batch and call witness of a round)
/// carries the same signature over the same root hash.
static VERIFIED: OnceLock<Mutex<DelegationCache>> = OnceLock::new();
const VERIFIED_CAPACITY: usize = 256;

fn verified_lock() -> MutexGuard<'static, DelegationCache> {
    VERIFIED
        .get_or_init(|| {
            Mutex::new(DelegationCache {
                entries: HashSet::new(),
                order: VecDeque::new(),
            })
        })
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn verified_contains(key: &Hash) -> bool {
    verified_lock().entries.contains(key)
}

fn verified_insert(key: Hash) {
    let mut cache = verified_lock();
    if !cache.entries.insert(key) {
        return;
    }
    cache.order.push_back(key);
    while cache.order.len() > VERIFIED_CAPACITY {
        if let Some(oldest) = cache.order.pop_front() {
            cache.entries.remove(&oldest);
        }
    }
}

/// The root key DER has a fixed length (checked before), so the concatenation is unambiguous.
fn delegation_cache_key(root_key_der: &[u8], delegation_certificate: &[u8]) -> Hash {
    sha256_parts(&[root_key_der, delegation_certificate])
}

/// Counters of the delegation cache (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub capacity: usize,
    /// BLS verifications done by certificate verification (outer and delegation signatures).
    pub signature_checks: u64,
}

pub fn cache_stats() -> CacheStats {
    CacheStats {
        hits: STATS.hits.load(Ordering::Relaxed),
        misses: STATS.misses.load(Ordering::Relaxed),
        entries: cache_lock().entries.len(),
        capacity: DELEGATION_CACHE_CAPACITY,
        signature_checks: STATS.signature_checks.load(Ordering::Relaxed),
    }
}

/// Forget every cached delegation and verified signature, and reset the counters.
pub fn cache_clear() {
    {
        let mut verified = verified_lock();
        verified.entries.clear();
        verified.order.clear();
    }
    let mut cache = cache_lock();
    cache.entries.clear();
    cache.order.clear();
    STATS.hits.store(0, Ordering::Relaxed);
    STATS.misses.store(0, Ordering::Relaxed);
    STATS.signature_checks.store(0, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Python boundary.

/// Verify a certificate; returns `None` or raises `CertificateError` with the reason.
#[pyfunction]
#[pyo3(signature = (cert, root_key_der, *, canister_id = None, subnet_id = None, now_ns = None, max_age_ns = None))]
fn verify_certificate(
    py: Python<'_>,
    cert: &[u8],
    root_key_der: &[u8],
    canister_id: Option<&[u8]>,
    subnet_id: Option<&[u8]>,
    now_ns: Option<u64>,
    max_age_ns: Option<u64>,
) -> PyResult<()> {
    let scope = match (canister_id, subnet_id) {
        (Some(_), Some(_)) => {
            return Err(CertificateError::new_err(
                "give canister_id or subnet_id, not both",
            ));
        }
        (Some(canister), None) => Scope::Canister(canister),
        (None, Some(subnet)) => Scope::Subnet(subnet),
        (None, None) => Scope::Unscoped,
    };
    // The bytes objects are immutable and stay referenced by the caller for the whole call.
    py.allow_threads(|| verify(cert, root_key_der, scope, now_ns, max_age_ns).map(|_| ()))?;
    Ok(())
}

/// `{"hits", "misses", "entries", "capacity", "signature_checks"}` of the delegation cache.
#[pyfunction]
fn certificate_cache_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let stats = cache_stats();
    let dict = PyDict::new(py);
    dict.set_item("hits", stats.hits)?;
    dict.set_item("misses", stats.misses)?;
    dict.set_item("entries", stats.entries)?;
    dict.set_item("capacity", stats.capacity)?;
    dict.set_item("signature_checks", stats.signature_checks)?;
    Ok(dict)
}

#[pyfunction]
fn certificate_cache_clear() {
    cache_clear();
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify_certificate, m)?)?;
    m.add_function(wrap_pyfunction!(certificate_cache_stats, m)?)?;
    m.add_function(wrap_pyfunction!(certificate_cache_clear, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(v: &[u8]) -> HashTree<'_> {
        HashTree::Leaf(v)
    }

    fn labeled<'a>(l: &'a [u8], t: HashTree<'a>) -> HashTree<'a> {
        HashTree::Labeled(l, Box::new(t))
    }

    fn fork<'a>(l: HashTree<'a>, r: HashTree<'a>) -> HashTree<'a> {
        HashTree::Fork(Box::new((l, r)))
    }

    #[test]
    fn leb128() {
        assert_eq!(decode_leb128_u64(&[0x00]), Some(0));
        assert_eq!(decode_leb128_u64(&[0xe5, 0x8e, 0x26]), Some(624_485));
        assert_eq!(
            decode_leb128_u64(&hex::decode("d4d6d2d8ebfd90bd18").unwrap()),
            Some(1_763_796_896_688_941_908)
        );
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode_leb128_u64(&max), Some(u64::MAX));
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(decode_leb128_u64(&overflow), None);
        assert_eq!(decode_leb128_u64(&[]), None);
        assert_eq!(decode_leb128_u64(&[0x80]), None);
        assert_eq!(decode_leb128_u64(&[0x01, 0x02]), None);
        assert_eq!(decode_leb128_u64(&[0x80; 11]), None);
    }

    #[test]
    fn selects_the_last_shard_at_or_below_the_canister() {
        let shards = fork(
            fork(labeled(b"\x00\x10", leaf(b"A")), HashTree::Pruned(&[0u8; 32])),
            fork(labeled(b"\x00\x20", leaf(b"B")), labeled(b"\x00\x30", leaf(b"C"))),
        );
        let pick = |id: &[u8]| select_shard(&shards, id).cloned();
        assert_eq!(pick(b"\x00\x05"), None);
        assert_eq!(pick(b"\x00\x10"), Some(leaf(b"A")));
        assert_eq!(pick(b"\x00\x1f\xff"), Some(leaf(b"A")));
        assert_eq!(pick(b"\x00\x20"), Some(leaf(b"B")));
        assert_eq!(pick(b"\x00\x2f"), Some(leaf(b"B")));
        assert_eq!(pick(b"\x01"), Some(leaf(b"C")));
    }

    #[test]
    fn range_membership_is_inclusive_and_lexicographic() {
        let blob = hex::decode("d9d9f781824a000000000020000001014a00000000002fffff0101").unwrap();
        let ranges = decode_ranges(&blob).unwrap();
        assert!(ranges_contain(
            &ranges,
            &hex::decode("00000000002000000101").unwrap()
        ));
        assert!(ranges_contain(
            &ranges,
            &hex::decode("000000000020000c0101").unwrap()
        ));
        assert!(ranges_contain(
            &ranges,
            &hex::decode("00000000002fffff0101").unwrap()
        ));
        assert!(!ranges_contain(
            &ranges,
            &hex::decode("00000000000000020101").unwrap()
        ));
        assert!(!ranges_contain(
            &ranges,
            &hex::decode("00000000003000020101").unwrap()
        ));
        // A prefix of the lower bound sorts before it.
        assert!(!ranges_contain(
            &ranges,
            &hex::decode("0000000000200000").unwrap()
        ));
    }

    #[test]
    fn malformed_ranges_are_rejected() {
        for bad in ["a0", "81824100", "8182420002410001", "818141 00"] {
            let blob = hex::decode(bad.replace(' ', "")).unwrap();
            assert!(decode_ranges(&blob).is_err(), "{bad}");
        }
    }

    #[test]
    fn sharded_layout_wins_and_legacy_is_the_fallback() {
        let sid: &[u8] = b"\x01";
        let sharded = hex::decode("d9d9f781824a000000000020000001014a00000000002fffff0101").unwrap();
        let legacy = hex::decode("d9d9f781824a000000000030000001014a00000000003fffff0101").unwrap();
        let canister = hex::decode("000000000020000c0101").unwrap();
        let both = fork(
            labeled(b"canister_ranges", labeled(sid, labeled(b"\x00", leaf(&sharded)))),
            labeled(
                b"subnet",
                labeled(sid, labeled(b"canister_ranges", leaf(&legacy))),
            ),
        );
        assert_eq!(
            canister_ranges(&both, sid, &canister).unwrap()[0].0,
            &sharded[6..16]
        );
        let pruned_shards = fork(
            labeled(b"canister_ranges", HashTree::Pruned(&[0u8; 32])),
            labeled(
                b"subnet",
                labeled(sid, labeled(b"canister_ranges", leaf(&legacy))),
            ),
        );
        assert_eq!(
            canister_ranges(&pruned_shards, sid, &canister).unwrap()[0].0,
            &legacy[6..16]
        );
        let neither = fork(
            labeled(b"canister_ranges", HashTree::Pruned(&[0u8; 32])),
            HashTree::Pruned(&[1u8; 32]),
        );
        assert!(matches!(
            canister_ranges(&neither, sid, &canister),
            Err(CertError::NotAuthorized(_))
        ));
    }

    /// `vectors/synthetic_emulator_vectors.json`: a root-signed call certificate.
    const SYNTHETIC_CALL_CERT: &str = "d9d9f7a26474726565830183024e726571756573745f7374617475738302582039756f1e38c949d599d32786849d80e3a3f594e01b8649a6dabf4d393ad3b5c083018302457265706c798203544449444c0001710b48656c6c6f2c2068656c6c6f8302467374617475738203477265706c69656483024474696d658203498098ba8fa99ee7cb17697369676e617475726558308c3e48c8253e38bda5c6777a6522a72d538e48d7907b2f3dba20ed54a860967bc154bb959feb1a8f02c4421ccc64a6c2";
    const EMULATOR_ROOT_KEY: &str = "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c0503020103610086461f9aa95ff96cfb0fde9b960d0fa0e7df018daa5b78f1e1d541dbb16761d176ebffd3851c651bb3ba704246d66ebd19ad0b51a0b2fa4d892ca7fc11f937c42d065d526a67b2695d883e5300ba24c6b4c7cf45c6ccac6cc423a8ed8dcac0f6";
    const SYNTHETIC_TIME_NS: u64 = 1_699_999_950_000_000_000;

    #[test]
    fn verify_returns_the_certificate_for_lookups() {
        let cert = hex::decode(SYNTHETIC_CALL_CERT).unwrap();
        let root = hex::decode(EMULATOR_ROOT_KEY).unwrap();
        let request_id =
            hex::decode("39756f1e38c949d599d32786849d80e3a3f594e01b8649a6dabf4d393ad3b5c0").unwrap();
        let canister = hex::decode("000000000020000c0101").unwrap();
        let scope = Scope::Canister(&canister);
        let verified = verify(&cert, &root, scope, Some(SYNTHETIC_TIME_NS), None).unwrap();
        assert_eq!(verified.time_ns(), Ok(SYNTHETIC_TIME_NS));
        assert!(verified.delegation.is_none());
        assert_eq!(
            verified.lookup(&[b"request_status", &request_id, b"status"]),
            Lookup::Found(b"replied")
        );
        assert_eq!(verified.lookup(&[b"canister"]), Lookup::Absent);
        let late = SYNTHETIC_TIME_NS + DEFAULT_MAX_AGE_NS + 1;
        assert!(matches!(
            verify(&cert, &root, scope, Some(late), None),
            Err(CertError::TooOld(_))
        ));
        let mut tampered = cert.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            verify(&tampered, &root, scope, None, None),
            Err(CertError::InvalidSignature(_))
        ));
        let too_long = [0u8; 30];
        assert!(matches!(
            verify(&cert, &root, Scope::Canister(&too_long), None, None),
            Err(CertError::NotAuthorized(_))
        ));
    }

    #[test]
    fn freshness_window() {
        let now = 1_000 * 1_000_000_000;
        assert!(check_freshness(now, now, DEFAULT_MAX_AGE_NS).is_ok());
        assert!(check_freshness(now - DEFAULT_MAX_AGE_NS, now, DEFAULT_MAX_AGE_NS).is_ok());
        assert!(matches!(
            check_freshness(now - DEFAULT_MAX_AGE_NS - 1, now, DEFAULT_MAX_AGE_NS),
            Err(CertError::TooOld(_))
        ));
        assert!(check_freshness(now + MAX_CLOCK_SKEW_NS, now, DEFAULT_MAX_AGE_NS).is_ok());
        assert!(matches!(
            check_freshness(now + MAX_CLOCK_SKEW_NS + 1, now, DEFAULT_MAX_AGE_NS),
            Err(CertError::FromTheFuture(_))
        ));
        // No overflow at the edges of u64.
        assert!(check_freshness(0, 0, u64::MAX).is_ok());
        assert!(check_freshness(u64::MAX, u64::MAX, 0).is_ok());
    }
}
