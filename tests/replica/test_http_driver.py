"""The HTTP driver of the CDK suite: it signs as the caller, goes through the replica's HTTP interface,
moves time through the admin endpoint and refuses batches that do not verify."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from icgw.core import ANONYMOUS, CertificateError, bls_der_public_key, bls_public_key
from icgw.replica.canister import Canister, canister_id_for_index
from icgw.replica.cdk import ClientKey
from icgw.replica.clock import ManualClock
from icgw.replica.interfaces import CanisterHost
from icgw.replica.test_canister import SilentTestCanister

from .http_driver import HttpDriver, Signers

SIGNERS = Signers()
CLIENT = SIGNERS.principal(b"driver client")
GATEWAY = SIGNERS.principal(b"driver gateway")


def create_canister(index: int, host: CanisterHost) -> Canister:
    return Canister(canister_id_for_index(index), host, SilentTestCanister())


@pytest.fixture
def driver() -> Iterator[HttpDriver]:
    driver = HttpDriver.start(create_canister, ManualClock(), SIGNERS)
    yield driver
    driver.stop()


def test_signers_derive_the_same_principal_from_the_same_seed() -> None:
    other = Signers()
    assert other.principal(b"driver client") == CLIENT
    assert other.identity(CLIENT) is not None
    assert other.identity(ANONYMOUS) is None
    with pytest.raises(KeyError, match="no key for principal"):
        other.identity(GATEWAY)


def test_calls_are_made_as_the_caller_and_polls_are_verified(driver: HttpDriver) -> None:
    assert driver.replica.url.startswith("http://127.0.0.1:")
    assert driver.ws_open(CLIENT, 7, GATEWAY) == {"Ok": None}
    canister = driver.replica.canisters[driver.canister_id]
    assert isinstance(canister, Canister)
    assert canister.cdk.client_key(CLIENT) == ClientKey(CLIENT, 7)
    # Only the gateway the client named sees its OpenMessage.
    assert len(driver.ws_get_messages(GATEWAY, 0)["Ok"]["messages"]) == 1
    assert driver.ws_get_messages(CLIENT, 0)["Ok"]["messages"] == []
    assert driver.batches_verified == 1


def test_a_batch_that_does_not_verify_is_refused(driver: HttpDriver) -> None:
    driver.trusted_root_key = bls_der_public_key(bls_public_key((7).to_bytes(32, "big")))
    assert driver.ws_get_messages(GATEWAY, 0)["Ok"]["messages"] == []  # nothing to verify
    assert driver.ws_open(CLIENT, 1, GATEWAY) == {"Ok": None}
    with pytest.raises(CertificateError):
        driver.ws_get_messages(GATEWAY, 0)
    assert driver.batches_verified == 0


def test_time_moves_through_the_admin_endpoint(driver: HttpDriver) -> None:
    before = driver.replica.clock.now_ns()
    driver.advance_ms(1_500)
    assert driver.replica.clock.now_ns() == before + 1_500_000_000
