"""The gateway's key file: created once with private permissions, reloaded unchanged, never replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from icgw import core
from icgw.ic import IdentityFileError, load_or_create_identity

ED25519_DER_PREFIX = bytes.fromhex("302a300506032b6570032100")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def principal_of(key: ed25519.Ed25519PrivateKey) -> bytes:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return core.self_authenticating_principal(ED25519_DER_PREFIX + raw)


def write_private(path: Path, contents: bytes, file_mode: int = 0o600) -> None:
    path.write_bytes(contents)
    path.chmod(file_mode)


def test_a_missing_key_file_is_created_private_in_a_new_folder(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "key_pair"
    identity = load_or_create_identity(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    # The file is standard PKCS#8 PEM: another tool reads the same key out of it.
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert principal_of(key) == identity.principal
    assert [p.name for p in path.parent.iterdir()] == ["key_pair"]  # no temporary file left behind


def test_the_principal_is_stable_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "key_pair"
    first = load_or_create_identity(path)
    contents = path.read_bytes()
    second = load_or_create_identity(path)
    assert second.principal == first.principal
    assert path.read_bytes() == contents


def test_the_default_path_is_data_key_pair_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    identity = load_or_create_identity()
    assert load_or_create_identity(tmp_path / "data" / "key_pair").principal == identity.principal


def test_an_existing_key_is_used_and_never_overwritten(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "key_pair"
    write_private(path, pem)
    assert load_or_create_identity(path).principal == principal_of(key)
    assert path.read_bytes() == pem


def test_the_reference_gateways_binary_key_file_is_accepted(tmp_path: Path) -> None:
    # The reference gateway writes ring's PKCS#8 v2 DER (seed and public key) without PEM armour;
    # reading it keeps the principal of a gateway that moves over from the reference.
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    der = bytes.fromhex("3053020101300506032b657004220420") + seed + bytes.fromhex("a123032100") + public
    path = tmp_path / "key_pair"
    write_private(path, der)
    assert load_or_create_identity(path).principal == principal_of(key)
    assert path.read_bytes() == der


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, file_mode: int) -> None:
    path = tmp_path / "key_pair"
    load_or_create_identity(path)
    contents = path.read_bytes()
    path.chmod(file_mode)
    with pytest.raises(IdentityFileError, match="chmod 600"):
        load_or_create_identity(path)
    assert path.read_bytes() == contents  # refused, not replaced


@pytest.mark.parametrize(
    ("contents", "reason"),
    [
        (b"", "Ed25519"),
        (b"not a key at all\n", "Ed25519"),
        (b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "Ed25519"),
    ],
)
def test_a_key_file_with_wrong_content_is_refused(tmp_path: Path, contents: bytes, reason: str) -> None:
    path = tmp_path / "key_pair"
    write_private(path, contents)
    with pytest.raises(IdentityFileError, match=reason):
        load_or_create_identity(path)
    assert path.read_bytes() == contents


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256K1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "key_pair"
    write_private(path, pem)
    with pytest.raises(IdentityFileError, match="secp256k1"):
        load_or_create_identity(path)


def test_a_folder_in_place_of_the_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key_pair").mkdir(mode=0o700)
    with pytest.raises(IdentityFileError, match="key_pair"):
        load_or_create_identity(tmp_path / "key_pair")


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key_pair"
    write_private(path, b"-" * (65 * 1024))
    with pytest.raises(IdentityFileError, match="not a key file"):
        load_or_create_identity(path)


def test_an_unwritable_folder_is_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(IdentityFileError, match="cannot write"):
        load_or_create_identity(folder / "key_pair")


def test_a_file_in_place_of_the_key_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"a file where the folder should be")
    with pytest.raises(IdentityFileError, match=r"data/key_pair: .*Not a directory"):
        load_or_create_identity(tmp_path / "data" / "key_pair")


def test_a_symlinked_key_file_is_followed(tmp_path: Path) -> None:
    # Mounted secrets (Kubernetes, Docker) are symbolic links to the real file.
    target = tmp_path / "secret" / "key_pair"
    identity = load_or_create_identity(target)
    link = tmp_path / "key_pair"
    link.symlink_to(target)
    assert load_or_create_identity(link).principal == identity.principal


def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "data" / "key_pair"
    start = threading.Barrier(8)
    principals: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            principals.append(load_or_create_identity(path).principal)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(principals) == 8
    assert len(set(principals)) == 1
    assert load_or_create_identity(path).principal == principals[0]
