"""icgw: a fast, verifying WebSocket gateway for the Internet Computer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("icgw")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
