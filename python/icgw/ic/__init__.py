"""Asynchronous client for the Internet Computer's HTTP interface, and the gateway's identity file."""

from .agent import CallOutcome, CallStatus, IcAgent, PollingPolicy, Timeouts
from .errors import (
    IcError,
    IcHttpError,
    IcProtocolError,
    IcRejectError,
    IcTimeoutError,
    IcTransportError,
    IcVerificationError,
    IdentityFileError,
)
from .identity import DEFAULT_IDENTITY_PATH, load_or_create_identity
from .root_key import MAINNET_ROOT_KEY_DER, is_mainnet_url, pinned_root_key

__all__ = [
    "DEFAULT_IDENTITY_PATH",
    "MAINNET_ROOT_KEY_DER",
    "CallOutcome",
    "CallStatus",
    "IcAgent",
    "IcError",
    "IcHttpError",
    "IcProtocolError",
    "IcRejectError",
    "IcTimeoutError",
    "IcTransportError",
    "IcVerificationError",
    "IdentityFileError",
    "PollingPolicy",
    "Timeouts",
    "is_mainnet_url",
    "load_or_create_identity",
    "pinned_root_key",
]
