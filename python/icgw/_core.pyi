# Stubs for the compiled core, checked against the built module by `stubtest` in CI.
import typing
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Final, Literal, final

# --- errors ---------------------------------------------------------------------------------------

class CoreError(ValueError): ...
class CborError(CoreError): ...
class PrincipalError(CoreError): ...
class RequestIdError(CoreError): ...
class HashTreeError(CoreError): ...
class CertificateError(CoreError): ...
class SignatureError(CoreError): ...
class EnvelopeError(CoreError): ...
class CandidError(CoreError): ...
class FrameError(CoreError): ...
class MessagesError(CoreError): ...

# --- cbor -----------------------------------------------------------------------------------------

def cbor_decode(data: bytes, *, max_depth: int = 128) -> object: ...
def cbor_encode(value: object, *, self_describe: bool = True) -> bytes: ...

# --- principals -----------------------------------------------------------------------------------

ANONYMOUS: Final[bytes]

def principal_to_text(b: bytes) -> str: ...
def principal_from_text(s: str) -> bytes: ...
def self_authenticating_principal(der_public_key: bytes) -> bytes: ...

# Hash trees. A tree for the builders is nested tuples (lists are accepted too):
# ("empty",) | ("fork", left, right) | ("labeled", label: bytes, subtree) | ("leaf", value: bytes)
# | ("pruned", hash: 32 bytes). Malformed trees raise HashTreeError, malformed CBOR CborError.

def hash_tree_root(tree_cbor: bytes) -> bytes:
    """The 32-byte root hash (`reconstruct`) of a CBOR hash tree (tag 55799 optional)."""

def lookup_path(
    tree_cbor: bytes, path: Sequence[bytes]
) -> tuple[Literal["found", "absent", "unknown", "error"], bytes | None]:
    """The spec's lookup_path: ("found", value), ("absent", None), ("unknown", None) or ("error", None).

    Labels compare as byte strings; Empty nodes inside forks are dropped. A path that is a single
    bytes/str, or holds non-bytes labels, raises TypeError.
    """

def hash_tree_encode(tree: object, *, self_describe: bool = True) -> bytes:
    """CBOR of a tree given as nested tuples, prefixed by tag 55799 unless self_describe=False
    (a tree embedded in a certificate map carries no tag of its own). At most 128 levels deep."""

def hash_tree_digest(tree: object) -> bytes:
    """The root hash of a tree given as nested tuples (== hash_tree_root(hash_tree_encode(tree)))."""

# BLS12-381 min-sig (signature: 48-byte G1, public key: 96-byte G2), DST
# BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_. Secret keys are 32-byte big-endian scalars.

def bls_verify(public_key_96: bytes, signature_48: bytes, message: bytes) -> bool:
    """True iff the signature verifies. False for non-points, points outside the subgroup, the
    identity key and wrong signatures. Wrong lengths raise SignatureError (e.g. a DER key passed
    where the raw 96-byte key is expected)."""

def bls_sign(secret_key_32: bytes, message: bytes) -> bytes:
    """The 48-byte signature. SignatureError for a wrong length or a scalar of 0 or >= r."""

def bls_public_key(secret_key_32: bytes) -> bytes:
    """The 96-byte public key of a secret key."""

def bls_der_public_key(public_key_96: bytes) -> bytes:
    """The 133-byte DER form (37-byte prefix + key). Checks the length only, not the point."""

def bls_public_key_from_der(der: bytes) -> bytes:
    """The 96-byte key inside a 133-byte DER key; SignatureError for a wrong length or prefix.
    Checks the format only; bls_verify checks the point."""

# Certificates.

def verify_certificate(
    cert: bytes,
    root_key_der: bytes,
    *,
    canister_id: bytes | None = None,
    subnet_id: bytes | None = None,
    now_ns: int | None = None,
    max_age_ns: int | None = None,
) -> None:
    """Verify a certificate (CBOR) against a 133-byte DER root key; raise CertificateError with the
    reason. With canister_id, a delegation's canister ranges must contain it (sharded layout first,
    then legacy); with subnet_id, the delegation must be for that subnet; give at most one. A
    certificate without delegation is signed by the root key and valid for any scope. With now_ns,
    /time must exist and lie in [now - max_age_ns (default 5 min), now + 5 min], and a delegation's
    /time must be at most 30 days old. Releases the GIL."""

def certificate_cache_stats() -> dict[str, int]:
    """Counters of the verified-delegation cache: "hits", "misses" (lookups by verify_certificate on
    certificates with a delegation), "entries", "capacity", and "signature_checks" (BLS pairing checks
    done by verify_certificate, outer and delegation). Process-wide; for tests and metrics."""

def certificate_cache_clear() -> None:
    """Empty the delegation cache and reset its counters."""

@final
class ClientFrame:
    """A decoded client frame; byte fields are materialised on access."""

    @property
    def request_type(self) -> str: ...
    @property
    def canister_id(self) -> bytes: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def method_name(self) -> str: ...
    @property
    def arg(self) -> bytes: ...
    @property
    def ingress_expiry(self) -> int: ...
    @property
    def nonce(self) -> bytes | None: ...
    @property
    def envelope(self) -> bytes: ...

def decode_client_frame(data: bytes) -> ClientFrame: ...
def encode_handshake(gateway_principal: bytes) -> bytes: ...

# --- authentication: request ids, identities, envelopes ---------------------------------------

def request_id(content: Mapping[str, object]) -> bytes: ...

@final
class Ed25519Identity:
    @staticmethod
    def generate() -> Ed25519Identity: ...
    @staticmethod
    def from_pem(pem: bytes) -> Ed25519Identity: ...
    @staticmethod
    def from_secret_key(secret_key_32: bytes) -> Ed25519Identity: ...
    @staticmethod
    def load(path: str | PathLike[str]) -> Ed25519Identity: ...
    def save(self, path: str | PathLike[str]) -> None: ...
    def to_pem(self) -> bytes: ...
    @property
    def principal(self) -> bytes: ...
    @property
    def der_public_key(self) -> bytes: ...
    def sign(self, message: bytes) -> bytes: ...

def verify_signature(der_public_key: bytes, message: bytes, signature: bytes) -> bool: ...
def verify_envelope(envelope_cbor: bytes, now_ns: int) -> None: ...
def envelope_request_id(envelope_cbor: bytes) -> bytes: ...
def sign_envelope(identity: Ed25519Identity, content: Mapping[str, object]) -> bytes: ...

# --- candid and fan-out ---------------------------------------------------------------------------

# Candid values in Python: record -> dict by field name (int keys for numbered fields; a tuple record may
# also be given as a tuple), variant -> one-key dict, null/reserved -> None, opt -> None or the value,
# vec -> list, blob / vec nat8 -> bytes, principal / service -> bytes, func -> (bytes, str),
# nat/int/natN/intN -> int, floatN -> float, bool, text -> str. `types` is a Candid argument-type list,
# e.g. "(CanisterWsMessageArguments, opt AppMessage)", resolved against ws_types.did; it may start with
# its own declarations: "type List = opt record { head : int; tail : List }; (List)".

def candid_encode(idl_args_text: str, *, types: str | None = None) -> bytes: ...
def candid_decode(data: bytes, *, types: str | None = None) -> str: ...
def candid_encode_values(types: str, values: Sequence[object]) -> bytes: ...
def candid_decode_values(types: str, data: bytes) -> list[object]: ...
def candid_idl_hash(name: str) -> int: ...
def encode_websocket_message(
    client_principal: bytes,
    client_nonce: int,
    sequence_num: int,
    timestamp: int,
    is_service_message: bool,
    content: bytes,
    *,
    self_describe: bool = True,
) -> bytes: ...
def decode_websocket_message(data: bytes) -> dict[str, typing.Any]: ...

@typing.final
class MessagesBatch:
    """A checked ws_get_messages batch; Python objects are built on access."""

    @property
    def messages(self) -> list[tuple[bytes, int, str, bytes]]: ...
    @property
    def cert(self) -> bytes: ...
    @property
    def tree(self) -> bytes: ...
    @property
    def is_end_of_queue(self) -> bool: ...
    @property
    def first_nonce(self) -> int | None: ...
    @property
    def last_nonce(self) -> int | None: ...
    def frames(self) -> list[bytes]: ...
    def routed_frames(self) -> list[tuple[bytes, int, bytes]]: ...
    def __len__(self) -> int: ...
    def verify(
        self,
        root_key_der: bytes,
        canister_id: bytes,
        *,
        now_ns: int | None = None,
        max_age_ns: int | None = None,
    ) -> None:
        """Raise CertificateError unless the IC certified every message for `canister_id`.

        Checks the certificate (scope, signature chain, freshness when `now_ns` is given), that the witness
        tree hashes to the canister's certified data, and that each content hashes to `websocket/<key>`.
        """

def encode_messages_reply(
    messages: Sequence[tuple[bytes, int, str, bytes]], cert: bytes, tree: bytes, is_end_of_queue: bool
) -> bytes:
    """The Candid `Ok` reply of ws_get_messages from (client_principal, client_nonce, key, content) tuples."""

def decode_messages_reply(reply_arg: bytes, expected_nonce: int | None = None) -> MessagesBatch: ...
