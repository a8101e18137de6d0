"""Errors of the IC client (`icgw.ic`).

Every failure of a request to the IC is an `IcError`. The classes follow what a caller does about the
failure rather than where it happened: the gateway's pollers treat `retryable` errors as "no messages
this round" and everything else as a reason to stop, and its relay reports rejects to the operator.
"""

from __future__ import annotations

from typing import Literal

# IC reject codes (IC-INTERFACE.md §7).
SYS_FATAL = 1
SYS_TRANSIENT = 2
DESTINATION_INVALID = 3
CANISTER_REJECT = 4
CANISTER_ERROR = 5
SYS_UNKNOWN = 6


class IcError(Exception):
    """Base class of every failure of a request to the IC."""

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again later may succeed."""
        return False


class IcTransportError(IcError):
    """The HTTP exchange failed below HTTP: connection refused or reset, TLS, a truncated body."""

    @property
    def retryable(self) -> bool:
        return True


class IcTimeoutError(IcTransportError, TimeoutError):
    """A request got no complete answer within its timeout, or a call no terminal status by its deadline."""


class IcHttpError(IcError):
    """The IC answered with an HTTP status other than the ones the interface defines for success."""

    def __init__(self, status: int, body: str, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {body}" if body else f"HTTP {status} from {url}")
        self.status = status
        self.body = body
        self.url = url

    @property
    def retryable(self) -> bool:
        # 429 is the boundary nodes' rate limit; 5xx are server-side failures (IC-INTERFACE.md §1).
        return self.status == 429 or self.status >= 500


RejectKind = Literal["replicated", "non_replicated", "query"]


class IcRejectError(IcError):
    """The IC or the canister rejected the request.

    `kind` says where the reject comes from: "replicated" (certified in the state tree, the call ran or
    was refused by consensus), "non_replicated" (refused before consensus, e.g. by
    `canister_inspect_message`; the call did not run) or "query".
    """

    def __init__(self, code: int, message: str, error_code: str | None, kind: RejectKind) -> None:
        detail = f"{kind} reject {code}"
        if error_code:
            detail += f" ({error_code})"
        super().__init__(f"{detail}: {message}")
        self.code = code
        self.message = message
        self.error_code = error_code
        self.kind = kind

    @property
    def retryable(self) -> bool:
        return self.code == SYS_TRANSIENT


class IcVerificationError(IcError):
    """A response failed verification: a forged or stale certificate, a certificate for the wrong
    subnet or canister range, a bad or missing node signature, an unknown node."""


class IcProtocolError(IcError):
    """A response that does not follow the IC interface: undecodable CBOR, missing or mistyped fields,
    a certificate that does not reveal the status it should, a call whose reply was already pruned."""


class IdentityFileError(Exception):
    """The gateway's key file cannot be used: unreadable, wrong permissions or not an Ed25519 key."""
