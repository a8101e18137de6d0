"""Which IC root key to trust, and reading the one a replica publishes.

Every certificate chains up to the root key, so trusting the wrong key trusts everything. On mainnet
the key is fixed and must never be taken from the network (a man in the middle would serve his own);
a local replica or emulator makes a fresh key at start and publishes it in `/api/v2/status`.

The reference gateway decides "mainnet" by comparing the URL string exactly, so any other spelling
(a trailing slash, a boundary-node domain) silently fetches the key from the network
(REFERENCE-GATEWAY.md §10.10). Here the host name decides.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from icgw import core

from .errors import IcProtocolError

# IC-INTERFACE.md §5.4 (the IC_ROOT_KEY of the reference agents).
MAINNET_ROOT_KEY_DER = bytes.fromhex(
    "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100814c0e6ec71fab583b08bd81"
    "373c255c3c371b2e84863c98a4f1e08b74235d14fb5d9c0cd546d9685f913a0c0b2cc5341583bf4b4392e467db96d65b9b"
    "b4cb717112f8472e0d5a4d14505ffd7484b01291091c5f87b98883463f98091a0baaae"
)

# Domains that only ever front mainnet: the API boundary nodes and the canister HTTP gateways.
MAINNET_DOMAINS = ("icp-api.io", "ic0.app", "icp0.io")


def is_mainnet_url(url: str) -> bool:
    """Whether `url` points at mainnet: its host is one of `MAINNET_DOMAINS` or a subdomain of one.

    Scheme, port, path, letter case and a trailing dot on the host do not matter.
    """
    host = (urlsplit(url.strip()).hostname or "").rstrip(".").lower()
    return any(host == domain or host.endswith("." + domain) for domain in MAINNET_DOMAINS)


def pinned_root_key(url: str) -> bytes | None:
    """The root key that is fixed for `url` (the mainnet key), or None when it must be fetched."""
    return MAINNET_ROOT_KEY_DER if is_mainnet_url(url) else None


def root_key_from_status(status_cbor: bytes) -> bytes:
    """The DER root key in a `GET /api/v2/status` body; IcProtocolError if absent or malformed."""
    try:
        status = core.cbor_decode(status_cbor)
    except core.CborError as e:
        raise IcProtocolError(f"/api/v2/status: undecodable CBOR ({e})") from e
    if not isinstance(status, dict):
        raise IcProtocolError("/api/v2/status: the body is not a CBOR map")
    root_key = status.get("root_key")
    if root_key is None:
        raise IcProtocolError("/api/v2/status carries no root_key (a mainnet node does not publish it)")
    if not isinstance(root_key, bytes):
        raise IcProtocolError("/api/v2/status: root_key is not a byte string")
    check_root_key_der(root_key)
    return root_key


def check_root_key_der(der: bytes) -> None:
    """Raise IcProtocolError unless `der` is a 133-byte DER BLS12-381 G2 public key."""
    try:
        core.bls_public_key_from_der(der)
    except core.SignatureError as e:
        raise IcProtocolError(f"the root key is not a DER BLS12-381 public key ({e})") from e
