"""Shared test helpers: where the reference vectors live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


def load_vector(name: str) -> Any:
    """A vector file from ../shared/vectors (never copied into the project)."""
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"the shared test vectors are missing: expected them at {VECTORS}")
    return VECTORS
