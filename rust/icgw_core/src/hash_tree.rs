//! IC hash trees: parsing from CBOR, the root hash (`reconstruct`), and lookups exactly as the
//! interface spec defines them (IC-INTERFACE.md §5.2, §5.3).
//!
//! Parsed trees borrow labels, values and pruned hashes from the CBOR input, so a certificate can be
//! parsed and queried without copying its (possibly large) leaves.
//!
//! For the replica emulator there is also a builder over nested Python tuples
//! (`hash_tree_encode` / `hash_tree_digest`), which never materialises a Rust tree.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::cbor::{self, Value, Writer};
use crate::errors::HashTreeError;
use crate::hash::{sha256, sha256_parts, Hash};

/// `\x11ic-hashtree-empty`
pub const DOMAIN_EMPTY: &[u8] = b"\x11ic-hashtree-empty";
/// `\x10ic-hashtree-fork`
pub const DOMAIN_FORK: &[u8] = b"\x10ic-hashtree-fork";
/// `\x13ic-hashtree-labeled`
pub const DOMAIN_LABELED: &[u8] = b"\x13ic-hashtree-labeled";
/// `\x10ic-hashtree-leaf`
pub const DOMAIN_LEAF: &[u8] = b"\x10ic-hashtree-leaf";

const TAG_EMPTY: u64 = 0;
const TAG_FORK: u64 = 1;
const TAG_LABELED: u64 = 2;
const TAG_LEAF: u64 = 3;
const TAG_PRUNED: u64 = 4;

/// A hash tree node. Everything it holds is borrowed from the CBOR the tree was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashTree<'a> {
    Empty,
    Fork(Box<(HashTree<'a>, HashTree<'a>)>),
    Labeled(&'a [u8], Box<HashTree<'a>>),
    Leaf(&'a [u8]),
    Pruned(&'a [u8; 32]),
}

/// The result of looking a path up to a value (the spec's `lookup_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The path ends at a leaf with this value.
    Found(&'a [u8]),
    /// The tree proves that nothing is at this path.
    Absent,
    /// A pruned node could hide the path: the tree proves neither presence nor absence.
    Unknown,
    /// The path ends at an inner node (a fork or labeled node), not at a value.
    Error,
}

/// The result of looking a path up to a subtree (no requirement on what the path ends at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubtreeLookup<'t, 'a> {
    Found(&'t HashTree<'a>),
    Absent,
    Unknown,
}

/// Why a CBOR value is not a hash tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hash tree: {0}")]
pub struct TreeError(pub String);

impl From<TreeError> for PyErr {
    fn from(e: TreeError) -> PyErr {
        HashTreeError::new_err(e.to_string())
    }
}

fn tree_err(what: impl Into<String>) -> TreeError {
    TreeError(what.into())
}

/// Parse a hash tree from an already decoded CBOR value (tag 55799 has been dropped by the parser).
///
/// Recursion depth is bounded by the depth limit of [`cbor::parse`], since every tree level is one
/// CBOR nesting level.
pub fn parse<'a>(value: &Value<'a>) -> Result<HashTree<'a>, TreeError> {
    let items = value
        .as_array()
        .ok_or_else(|| tree_err(format!("a node must be an array, not a {}", value.type_name())))?;
    let (tag, fields) = match items.split_first() {
        Some((Value::Uint(tag), fields)) => (*tag, fields),
        Some((other, _)) => {
            return Err(tree_err(format!(
                "a node must start with an integer tag, not a {}",
                other.type_name()
            )))
        }
        None => return Err(tree_err("a node cannot be an empty array")),
    };
    match (tag, fields) {
        (TAG_EMPTY, []) => Ok(HashTree::Empty),
        (TAG_FORK, [left, right]) => Ok(HashTree::Fork(Box::new((parse(left)?, parse(right)?)))),
        (TAG_LABELED, [label, subtree]) => Ok(HashTree::Labeled(
            node_bytes(label, "a label")?,
            Box::new(parse(subtree)?),
        )),
        (TAG_LEAF, [value]) => Ok(HashTree::Leaf(node_bytes(value, "a leaf value")?)),
        (TAG_PRUNED, [hash]) => {
            let hash = node_bytes(hash, "a pruned hash")?;
            let hash: &[u8; 32] = hash
                .try_into()
                .map_err(|_| tree_err(format!("a pruned hash must have 32 bytes, not {}", hash.len())))?;
            Ok(HashTree::Pruned(hash))
        }
        (TAG_EMPTY..=TAG_PRUNED, _) => Err(tree_err(format!(
            "node tag {tag} needs {} fields, got {}",
            expected_fields(tag),
            fields.len()
        ))),
        _ => Err(tree_err(format!("unknown node tag {tag}"))),
    }
}

fn expected_fields(tag: u64) -> usize {
    match tag {
        TAG_EMPTY => 0,
        TAG_FORK | TAG_LABELED => 2,
        _ => 1,
    }
}

fn node_bytes<'a>(value: &Value<'a>, what: &str) -> Result<&'a [u8], TreeError> {
    value.as_bytes().ok_or_else(|| {
        tree_err(format!(
            "{what} must be a byte string, not a {}",
            value.type_name()
        ))
    })
}

/// Decode CBOR bytes (with or without tag 55799) into a tree. The error says which layer failed.
pub fn parse_cbor(data: &[u8]) -> Result<HashTree<'_>, ParseCborError> {
    let value = cbor::parse(data).map_err(ParseCborError::Cbor)?;
    parse(&value).map_err(ParseCborError::Tree)
}

/// A failure of [`parse_cbor`]: either the bytes are not CBOR or the CBOR is not a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseCborError {
    #[error("{0}")]
    Cbor(cbor::DecodeError),
    #[error("{0}")]
    Tree(TreeError),
}

impl From<ParseCborError> for PyErr {
    fn from(e: ParseCborError) -> PyErr {
        match e {
            ParseCborError::Cbor(e) => e.into(),
            ParseCborError::Tree(e) => e.into(),
        }
    }
}

pub fn empty_digest() -> Hash {
    sha256(DOMAIN_EMPTY)
}

pub fn fork_digest(left: &Hash, right: &Hash) -> Hash {
    sha256_parts(&[DOMAIN_FORK, left, right])
}

pub fn labeled_digest(label: &[u8], subtree: &Hash) -> Hash {
    sha256_parts(&[DOMAIN_LABELED, label, subtree])
}

pub fn leaf_digest(value: &[u8]) -> Hash {
    sha256_parts(&[DOMAIN_LEAF, value])
}

impl<'a> HashTree<'a> {
    /// The root hash (the spec's `reconstruct`): what a certificate signs and what a canister
    /// certifies.
    pub fn digest(&self) -> Hash {
        match self {
            HashTree::Empty => empty_digest(),
            HashTree::Fork(children) => fork_digest(&children.0.digest(), &children.1.digest()),
            HashTree::Labeled(label, subtree) => labeled_digest(label, &subtree.digest()),
            HashTree::Leaf(value) => leaf_digest(value),
            HashTree::Pruned(hash) => **hash,
        }
    }

    /// The spec's `lookup_path`: follow the labels, then classify the node the path ends at.
    pub fn lookup_path(&self, path: &[&[u8]]) -> Lookup<'a> {
        match self.lookup_subtree(path) {
            SubtreeLookup::Found(node) => match node {
                HashTree::Leaf(value) => Lookup::Found(value),
                HashTree::Empty => Lookup::Absent,
                HashTree::Pruned(_) => Lookup::Unknown,
                HashTree::Fork(_) | HashTree::Labeled(..) => Lookup::Error,
            },
            SubtreeLookup::Absent => Lookup::Absent,
            SubtreeLookup::Unknown => Lookup::Unknown,
        }
    }

    /// Follow the labels of `path` and return whatever node is there (the tree itself for an
    /// empty path).
    pub fn lookup_subtree<'t>(&'t self, path: &[&[u8]]) -> SubtreeLookup<'t, 'a> {
        let mut node = self;
        for label in path {
            match find_label(label, &node.flatten_forks()) {
                SubtreeLookup::Found(child) => node = child,
                other => return other,
            }
        }
        SubtreeLookup::Found(node)
    }

    /// The spec's `flatten_forks`: the non-empty nodes below nested forks, in order.
    pub fn flatten_forks<'t>(&'t self) -> Vec<&'t HashTree<'a>> {
        let mut out = Vec::new();
        self.collect_fork_children(&mut out);
        out
    }

    fn collect_fork_children<'t>(&'t self, out: &mut Vec<&'t HashTree<'a>>) {
        match self {
            HashTree::Empty => {}
            HashTree::Fork(children) => {
                children.0.collect_fork_children(out);
                children.1.collect_fork_children(out);
            }
            other => out.push(other),
        }
    }

    /// The label of a labeled node.
    pub fn label(&self) -> Option<&'a [u8]> {
        match self {
            HashTree::Labeled(label, _) => Some(label),
            _ => None,
        }
    }
}

/// The spec's `find_label` over a flattened fork list. Labels compare as byte strings
/// (lexicographically, a prefix first), which is what `<` on slices does.
fn find_label<'t, 'a>(label: &[u8], nodes: &[&'t HashTree<'a>]) -> SubtreeLookup<'t, 'a> {
    let found = nodes.iter().find_map(|node| match node {
        HashTree::Labeled(l, subtree) if *l == label => Some(&**subtree),
        _ => None,
    });
    if let Some(subtree) = found {
        return SubtreeLookup::Found(subtree);
    }
    let between_neighbours = nodes
        .windows(2)
        .any(|pair| match (pair[0].label(), pair[1].label()) {
            (Some(lower), Some(upper)) => lower < label && label < upper,
            _ => false,
        });
    let before_first = nodes
        .first()
        .and_then(|n| n.label())
        .is_some_and(|first| label < first);
    let after_last = nodes
        .last()
        .and_then(|n| n.label())
        .is_some_and(|last| last < label);
    let leaf_or_nothing = matches!(nodes, [] | [HashTree::Leaf(_)]);
    if between_neighbours || before_first || after_last || leaf_or_nothing {
        SubtreeLookup::Absent
    } else {
        SubtreeLookup::Unknown
    }
}

// ---------------------------------------------------------------------------------------------
// Python boundary.

/// Nesting limit of the Python builder, equal to the parser's so that anything built can be parsed.
const MAX_BUILD_DEPTH: usize = cbor::DEFAULT_MAX_DEPTH;

/// One node of a tree given as nested Python tuples, e.g. `("labeled", b"time", ("leaf", b"..."))`.
enum PyNode<'py> {
    Empty,
    Fork(Bound<'py, PyAny>, Bound<'py, PyAny>),
    Labeled(Bound<'py, PyBytes>, Bound<'py, PyAny>),
    Leaf(Bound<'py, PyBytes>),
    Pruned(Bound<'py, PyBytes>),
}

fn py_tree_err(what: impl std::fmt::Display) -> PyErr {
    HashTreeError::new_err(format!("invalid hash tree: {what}"))
}

fn py_node_fields<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        Ok(tuple.iter().collect())
    } else if let Ok(list) = obj.downcast::<PyList>() {
        Ok(list.iter().collect())
    } else {
        Err(py_tree_err(format!(
            "a node must be a tuple, not {}",
            obj.get_type().name()?
        )))
    }
}

fn py_bytes<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyBytes>> {
    obj.downcast::<PyBytes>()
        .cloned()
        .map_err(|_| py_tree_err(format!("{what} must be bytes")))
}

fn py_node<'py>(obj: &Bound<'py, PyAny>) -> PyResult<PyNode<'py>> {
    let fields = py_node_fields(obj)?;
    let Some((kind, rest)) = fields.split_first() else {
        return Err(py_tree_err("a node cannot be an empty tuple"));
    };
    let kind = kind
        .downcast::<PyString>()
        .map_err(|_| py_tree_err("a node must start with its kind (a str)"))?;
    let kind = kind.to_cow()?;
    match (kind.as_ref(), rest) {
        ("empty", []) => Ok(PyNode::Empty),
        ("fork", [left, right]) => Ok(PyNode::Fork(left.clone(), right.clone())),
        ("labeled", [label, subtree]) => Ok(PyNode::Labeled(py_bytes(label, "a label")?, subtree.clone())),
        ("leaf", [value]) => Ok(PyNode::Leaf(py_bytes(value, "a leaf value")?)),
        ("pruned", [hash]) => {
            let hash = py_bytes(hash, "a pruned hash")?;
            if hash.as_bytes().len() != 32 {
                return Err(py_tree_err(format!(
                    "a pruned hash must have 32 bytes, not {}",
                    hash.as_bytes().len()
                )));
            }
            Ok(PyNode::Pruned(hash))
        }
        ("empty" | "fork" | "labeled" | "leaf" | "pruned", _) => Err(py_tree_err(format!(
            "a {kind:?} node cannot have {} fields",
            rest.len()
        ))),
        _ => Err(py_tree_err(format!("unknown node kind {kind:?}"))),
    }
}

fn check_build_depth(depth: usize) -> PyResult<()> {
    if depth == 0 {
        return Err(py_tree_err(format!(
            "nested deeper than {MAX_BUILD_DEPTH} levels"
        )));
    }
    Ok(())
}

fn encode_py_tree(w: &mut Writer, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
    check_build_depth(depth)?;
    match py_node(obj)? {
        PyNode::Empty => {
            w.array(1).uint(TAG_EMPTY);
        }
        PyNode::Fork(left, right) => {
            w.array(3).uint(TAG_FORK);
            encode_py_tree(w, &left, depth - 1)?;
            encode_py_tree(w, &right, depth - 1)?;
        }
        PyNode::Labeled(label, subtree) => {
            w.array(3).uint(TAG_LABELED).bytes(label.as_bytes());
            encode_py_tree(w, &subtree, depth - 1)?;
        }
        PyNode::Leaf(value) => {
            w.array(2).uint(TAG_LEAF).bytes(value.as_bytes());
        }
        PyNode::Pruned(hash) => {
            w.array(2).uint(TAG_PRUNED).bytes(hash.as_bytes());
        }
    }
    Ok(())
}

fn digest_py_tree(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Hash> {
    check_build_depth(depth)?;
    Ok(match py_node(obj)? {
        PyNode::Empty => empty_digest(),
        PyNode::Fork(left, right) => fork_digest(
            &digest_py_tree(&left, depth - 1)?,
            &digest_py_tree(&right, depth - 1)?,
        ),
        PyNode::Labeled(label, subtree) => {
            labeled_digest(label.as_bytes(), &digest_py_tree(&subtree, depth - 1)?)
        }
        PyNode::Leaf(value) => leaf_digest(value.as_bytes()),
        PyNode::Pruned(hash) => hash.as_bytes().try_into().expect("length checked in py_node"),
    })
}

/// The 32-byte root hash of a CBOR-encoded hash tree.
#[pyfunction]
fn hash_tree_root<'py>(py: Python<'py>, tree_cbor: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let tree = parse_cbor(tree_cbor)?;
    Ok(PyBytes::new(py, &tree.digest()))
}

/// `("found", value)`, `("absent", None)`, `("unknown", None)` or `("error", None)`.
#[pyfunction]
fn lookup_path<'py>(
    py: Python<'py>,
    tree_cbor: &[u8],
    path: &Bound<'py, PyAny>,
) -> PyResult<(&'static str, Option<Bound<'py, PyBytes>>)> {
    let labels = path_labels(path)?;
    let labels: Vec<&[u8]> = labels.iter().map(|label| label.as_bytes()).collect();
    let tree = parse_cbor(tree_cbor)?;
    Ok(match tree.lookup_path(&labels) {
        Lookup::Found(value) => ("found", Some(PyBytes::new(py, value))),
        Lookup::Absent => ("absent", None),
        Lookup::Unknown => ("unknown", None),
        Lookup::Error => ("error", None),
    })
}

/// The labels of a Python path: any iterable of `bytes`, but not a single `bytes`/`str` (which would
/// silently iterate over its characters).
fn path_labels<'py>(path: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    if path.is_instance_of::<PyBytes>() || path.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "path must be a sequence of bytes labels, not a single bytes or str",
        ));
    }
    path.try_iter()?
        .map(|label| {
            let label = label?;
            label.downcast_into::<PyBytes>().map_err(|e| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "path labels must be bytes, not {}",
                    e.into_inner()
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })
        })
        .collect()
}

/// Encode a tree given as nested tuples to CBOR (prefixed by tag 55799 unless `self_describe=False`).
#[pyfunction]
#[pyo3(signature = (tree, *, self_describe = true))]
fn hash_tree_encode<'py>(
    py: Python<'py>,
    tree: &Bound<'py, PyAny>,
    self_describe: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut w = Writer::with_capacity(256);
    if self_describe {
        w.self_describe();
    }
    encode_py_tree(&mut w, tree, MAX_BUILD_DEPTH)?;
    Ok(PyBytes::new(py, &w.into_bytes()))
}

/// The root hash of a tree given as nested tuples (same result as `hash_tree_root(hash_tree_encode(t))`).
#[pyfunction]
fn hash_tree_digest<'py>(py: Python<'py>, tree: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &digest_py_tree(tree, MAX_BUILD_DEPTH)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hash_tree_root, m)?)?;
    m.add_function(wrap_pyfunction!(lookup_path, m)?)?;
    m.add_function(wrap_pyfunction!(hash_tree_encode, m)?)?;
    m.add_function(wrap_pyfunction!(hash_tree_digest, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's example tree (IC-INTERFACE.md §5.2; `vectors/hash_tree.json`).
    const SPEC_FULL: &str = "8301830183024161830183018302417882034568656c6c6f810083024179820345776f726c6483024162820344676f6f648301830241638100830241648203476d6f726e696e67";
    const SPEC_PRUNED: &str = "83018301830241618301820458201b4feff9bef8131788b0c9dc6dbad6e81e524249c879e9f10f71ce3749f5a63883024179820345776f726c6483024162820458207b32ac0c6ba8ce35ac82c255fc7906f7fc130dab2a090f80fe12f9c2cae83ba6830182045820ec8324b8a1f1ac16bd2e806edba78006479c9877fed4eb464a25485465af601d830241648203476d6f726e696e67";
    const SPEC_ROOT: &str = "eb5c5b2195e62d996b84c9bcc8259d19a83786a2f59e0878cec84c811f669aa0";

    fn lookup(tree_hex: &str, path: &[&str]) -> String {
        let bytes = hex::decode(tree_hex).unwrap();
        let tree = parse_cbor(&bytes).unwrap();
        let path: Vec<&[u8]> = path.iter().map(|l| l.as_bytes()).collect();
        match tree.lookup_path(&path) {
            Lookup::Found(v) => format!("found {}", String::from_utf8_lossy(v)),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn empty_hash_matches_the_spec() {
        assert_eq!(
            hex::encode(empty_digest()),
            "4e3ed35c4e2d1ee89996483fb6260a64cffb6c47dbab216e7930e82f8190d120"
        );
    }

    #[test]
    fn spec_example_root_hash_full_and_pruned() {
        for tree_hex in [SPEC_FULL, SPEC_PRUNED] {
            let bytes = hex::decode(tree_hex).unwrap();
            assert_eq!(hex::encode(parse_cbor(&bytes).unwrap().digest()), SPEC_ROOT);
        }
    }

    #[test]
    fn spec_example_lookups_on_the_full_tree() {
        assert_eq!(lookup(SPEC_FULL, &["a", "x"]), "found hello");
        // The spec answer: the Empty inside the fork is dropped by flatten_forks.
        assert_eq!(lookup(SPEC_FULL, &["a", "y"]), "found world");
        assert_eq!(lookup(SPEC_FULL, &["a"]), "Error");
        assert_eq!(lookup(SPEC_FULL, &["c"]), "Absent");
        assert_eq!(lookup(SPEC_FULL, &["c", "x"]), "Absent");
        assert_eq!(lookup(SPEC_FULL, &["0"]), "Absent");
        assert_eq!(lookup(SPEC_FULL, &["a", "x", "z"]), "Absent");
    }

    #[test]
    fn spec_example_lookups_on_the_pruned_tree() {
        assert_eq!(lookup(SPEC_PRUNED, &["a", "a"]), "Unknown");
        assert_eq!(lookup(SPEC_PRUNED, &["aa"]), "Absent");
        assert_eq!(lookup(SPEC_PRUNED, &["ax"]), "Absent");
        assert_eq!(lookup(SPEC_PRUNED, &["b"]), "Unknown");
        // agent-js says Absent here; lexicographic comparison says a pruned node could hide "bb".
        assert_eq!(lookup(SPEC_PRUNED, &["bb"]), "Unknown");
        assert_eq!(lookup(SPEC_PRUNED, &["e"]), "Absent");
    }

    #[test]
    fn labels_compare_lexicographically_with_prefixes_first() {
        let leaf = || Box::new(HashTree::Leaf(b"v"));
        let pruned = HashTree::Pruned(&[0u8; 32]);
        // [Labeled "b", Pruned, Labeled "bb"]: "ba" sorts between "b" and "bb" only via the pruned
        // node, so it is Unknown; "a" is before the first label, "c" after the last.
        let tree = HashTree::Fork(Box::new((
            HashTree::Labeled(b"b", leaf()),
            HashTree::Fork(Box::new((pruned, HashTree::Labeled(b"bb", leaf())))),
        )));
        assert_eq!(tree.lookup_path(&[b"ba"]), Lookup::Unknown);
        assert_eq!(tree.lookup_path(&[b"a"]), Lookup::Absent);
        assert_eq!(tree.lookup_path(&[b"c"]), Lookup::Absent);
        assert_eq!(tree.lookup_path(&[b"bb"]), Lookup::Found(b"v"));
    }

    #[test]
    fn lookup_subtree_returns_inner_nodes() {
        let bytes = hex::decode(SPEC_FULL).unwrap();
        let tree = parse_cbor(&bytes).unwrap();
        let SubtreeLookup::Found(a) = tree.lookup_subtree(&[b"a"]) else {
            panic!("a must be found")
        };
        let labels: Vec<_> = a.flatten_forks().iter().filter_map(|n| n.label()).collect();
        assert_eq!(labels, vec![b"x".as_slice(), b"y".as_slice()]);
        assert_eq!(tree.lookup_subtree(&[b"zz"]), SubtreeLookup::Absent);
    }

    #[test]
    fn rejects_malformed_nodes() {
        for bad in [
            "80",            // []
            "8105",          // [5]
            "820100",        // [1, 0]: fork with one child
            "83024161",      // truncated
            "8302616181 00", // text label
            "82045801 00",   // pruned hash of 1 byte
            "8203 01",       // leaf value is an integer
            "a0",            // a map
        ] {
            let bytes = hex::decode(bad.replace(' ', "")).unwrap();
            assert!(parse_cbor(&bytes).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut bytes = Vec::new();
        for _ in 0..10_000 {
            bytes.extend_from_slice(&[0x83, 0x01]);
        }
        assert!(parse_cbor(&bytes).is_err());
    }
}
