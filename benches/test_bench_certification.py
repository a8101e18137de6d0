"""BLS and certificates: blst through icgw's core; delegated certificates with and without the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from icgw.core import (
    bls_verify,
    certificate_cache_clear,
    certificate_cache_stats,
    hash_tree_root,
    lookup_path,
    verify_certificate,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
BLS = json.loads((VECTORS / "bls_signatures.json").read_text())
CERT = json.loads((VECTORS / "cert_mainnet_ivg37_request_status_rejected_2022.json").read_text())
ROOT_KEY = bytes.fromhex(CERT["root_key_der_hex"])
CERTIFICATE = bytes.fromhex(CERT["certificate_hex"])
CANISTER = bytes.fromhex(CERT["expected"]["delegation"]["canister_ranges"][0][2])


def valid_bls_vector() -> tuple[bytes, bytes, bytes]:
    for check in CERT["expected"]["bls_checks"]:
        if check["valid"]:
            return (
                bytes.fromhex(check["public_key_96_hex"]),
                bytes.fromhex(check["signature_48_hex"]),
                bytes.fromhex(check["message_hex"]),
            )
    raise AssertionError("the vector has no valid BLS check")


@pytest.mark.benchmark(group="bls-verify")
def test_bls_verify(benchmark: BenchmarkFixture) -> None:
    pk, sig, msg = valid_bls_vector()
    assert benchmark(bls_verify, pk, sig, msg)


@pytest.mark.benchmark(group="certificate-verify")
def test_delegated_certificate_uncached(benchmark: BenchmarkFixture) -> None:
    """Two pairing checks: the delegation and the certificate."""

    def run() -> None:
        certificate_cache_clear()
        verify_certificate(CERTIFICATE, ROOT_KEY, canister_id=CANISTER)

    benchmark(run)


@pytest.mark.benchmark(group="certificate-verify")
def test_delegated_certificate_cached(benchmark: BenchmarkFixture) -> None:
    """One pairing check: the delegation was verified before."""
    certificate_cache_clear()
    verify_certificate(CERTIFICATE, ROOT_KEY, canister_id=CANISTER)
    before = certificate_cache_stats()
    benchmark(verify_certificate, CERTIFICATE, ROOT_KEY, canister_id=CANISTER)
    after = certificate_cache_stats()
    assert after["misses"] == before["misses"]
    benchmark.extra_info["pairing_checks_per_call"] = (
        after["signature_checks"] - before["signature_checks"]
    ) / max(1, after["hits"] - before["hits"])


TREE = bytes.fromhex(
    json.loads((VECTORS / "hash_tree.json").read_text())["spec_example"]["full_tree_cbor_hex"]
)


@pytest.mark.benchmark(group="hash-tree")
def test_hash_tree_root(benchmark: BenchmarkFixture) -> None:
    benchmark(hash_tree_root, TREE)


@pytest.mark.benchmark(group="hash-tree")
def test_lookup_path(benchmark: BenchmarkFixture) -> None:
    benchmark(lookup_path, TREE, [b"a", b"y"])
