"""Metric labels of relay failures stay within a small fixed set."""

from __future__ import annotations

import pytest

from icgw.gateway.backend import CanisterRefused
from icgw.gateway.hub import relay_error_kind
from icgw.ic.errors import IcHttpError, IcRejectError, IcTimeoutError, IcTransportError


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (IcTimeoutError("slow"), "timeout"),
        (TimeoutError(), "timeout"),
        (IcTransportError("refused"), "ic_unavailable"),
        (IcHttpError(503, "busy", "http://ic"), "ic_unavailable"),
        (IcHttpError(400, "bad envelope", "http://ic"), "rejected"),
        (IcRejectError(5, "trapped", "IC0503", "replicated"), "rejected"),
        (CanisterRefused("duplicate key"), "rejected"),
    ],
)
def test_relay_errors_map_to_the_documented_labels(error: BaseException, kind: str) -> None:
    assert relay_error_kind(error) == kind
