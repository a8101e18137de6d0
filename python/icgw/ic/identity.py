"""The gateway's identity file: loaded at start, created once, never replaced.

The gateway principal must stay the same across restarts: the CDK keys each gateway's message queue
and its `ws_close` permission on it. So the key file is created only when it is missing, with a
create-exclusive link that cannot replace a file another worker wrote at the same moment, and any
problem with an existing file stops the start with a clear message instead of quietly making a new key.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from pathlib import Path

from icgw import core

from .errors import IdentityFileError

DEFAULT_IDENTITY_PATH = "./data/key_pair"

# A PKCS#8 Ed25519 key is about 120 bytes of PEM; anything much larger is not a key file.
_MAX_KEY_FILE_BYTES = 64 * 1024


def load_or_create_identity(path: str | os.PathLike[str] = DEFAULT_IDENTITY_PATH) -> core.Ed25519Identity:
    """The Ed25519 identity stored at `path`; a new one is generated and saved there if the file is missing.

    A new file is PKCS#8 PEM with mode 0600, in a parent folder created with mode 0700 if needed. An
    existing file must be a regular file readable by its owner only, holding an Ed25519 PKCS#8 key as
    PEM or as the raw DER the reference gateway writes. Raises IdentityFileError otherwise.
    """
    key_path = Path(path)
    try:
        return _load(key_path)
    except FileNotFoundError:
        pass
    created = _create(key_path)
    if created is not None:
        return created
    # Another process created the file between our two looks; use its key, as it does.
    try:
        return _load(key_path)
    except FileNotFoundError as e:
        raise IdentityFileError(f"{key_path}: the key file vanished while it was being created") from e


def _load(path: Path) -> core.Ed25519Identity:
    try:
        # Symbolic links are followed on purpose: mounted secrets (Kubernetes, Docker) are links.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise IdentityFileError(f"{path}: cannot open the key file ({e.strerror or e})") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdentityFileError(f"{path}: the key file is not a regular file")
        if info.st_mode & 0o077:
            raise IdentityFileError(
                f"{path}: the key file has mode {stat.S_IMODE(info.st_mode):04o}, so other users may "
                "read the gateway's secret key; restrict it to its owner (chmod 600), or remove it to "
                "make a new one"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            contents = f.read(_MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(contents) > _MAX_KEY_FILE_BYTES:
        raise IdentityFileError(
            f"{path}: the file is larger than {_MAX_KEY_FILE_BYTES} bytes; not a key file"
        )
    try:
        return core.Ed25519Identity.from_pem(_as_pem(contents))
    except ValueError as e:
        raise IdentityFileError(f"{path}: not an Ed25519 PKCS#8 private key ({e})") from e


def _as_pem(contents: bytes) -> bytes:
    """PEM as is; binary DER (what the reference gateway's `ring` writes) wrapped as PKCS#8 PEM."""
    if contents.lstrip().startswith(b"-----BEGIN"):
        return contents
    body = base64.encodebytes(contents)
    return b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"


def _create(path: Path) -> core.Ed25519Identity | None:
    """Write a new key to `path` unless a file is already there (then None): write and flush a private
    temporary file next to it, then hard-link it into place, which fails instead of replacing."""
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise IdentityFileError(f"{parent}: cannot create the key folder ({e.strerror or e})") from e
    identity = core.Ed25519Identity.generate()
    temp = parent / f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            # The creation mode went through the umask; make it exactly 0600 either way.
            os.fchmod(f.fileno(), 0o600)
            f.write(identity.to_pem())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return None
        _fsync_dir(parent)
    except OSError as e:
        raise IdentityFileError(f"{path}: cannot write the key file ({e.strerror or e})") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return identity


def _fsync_dir(folder: Path) -> None:
    """Make the new directory entry durable, so a crash right after start cannot lose the key."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
