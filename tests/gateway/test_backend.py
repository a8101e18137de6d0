"""AgentBackend.submit_call: transient IC failures are retried with the same envelope; others are not."""

from __future__ import annotations

from collections import deque
from typing import cast

import pytest

from icgw.core import Ed25519Identity
from icgw.gateway import backend as backend_module
from icgw.gateway.backend import AgentBackend, CanisterRefused
from icgw.ic.agent import CallOutcome, IcAgent
from icgw.ic.errors import IcError, IcHttpError, IcRejectError, IcTimeoutError, IcTransportError

CANISTER = bytes(8) + b"\x01\x01"
ENVELOPE = b"\xd9\xd9\xf7\xa1gcontent\xa0"
OK_NULL = bytes.fromhex("4449444c016b02bc8a017fc5fed201710100" + "00")


class ScriptedAgent:
    """Answers submit_call from a script of outcomes and errors; records every envelope it is given."""

    def __init__(self, *steps: CallOutcome | IcError) -> None:
        self.steps = deque(steps)
        self.envelopes: list[bytes] = []

    async def submit_call(self, canister_id: bytes, envelope: bytes, *, wait: bool = True) -> CallOutcome:
        assert canister_id == CANISTER
        assert not wait
        self.envelopes.append(envelope)
        step = self.steps.popleft()
        if isinstance(step, IcError):
            raise step
        return step


def backend_for(agent: ScriptedAgent) -> AgentBackend:
    return AgentBackend(
        cast(IcAgent, agent), Ed25519Identity.generate(), b"root key", certificate_max_age_ns=10**9
    )


def replied(reply: bytes = OK_NULL) -> CallOutcome:
    return CallOutcome(b"\x01" * 32, "replied", reply=reply)


@pytest.fixture(autouse=True)
def _short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "RELAY_RETRY_FIRST_PAUSE_S", 0.001)
    monkeypatch.setattr(backend_module, "RELAY_RETRY_MAX_PAUSE_S", 0.004)


async def test_transient_failures_resend_the_same_envelope_until_it_is_accepted() -> None:
    agent = ScriptedAgent(
        IcHttpError(503, "overloaded", "http://ic"),
        IcTransportError("connection reset"),
        IcTimeoutError("no answer"),
        CallOutcome(b"\x01" * 32, "accepted"),
    )
    await backend_for(agent).submit_call(CANISTER, ENVELOPE)
    assert agent.envelopes == [ENVELOPE] * 4


async def test_a_failure_that_will_not_go_away_is_not_retried() -> None:
    agent = ScriptedAgent(IcHttpError(400, "bad envelope", "http://ic"), replied())
    with pytest.raises(IcHttpError):
        await backend_for(agent).submit_call(CANISTER, ENVELOPE)
    assert len(agent.envelopes) == 1


async def test_rejects_and_refusals_are_not_retried() -> None:
    rejected = CallOutcome(b"\x01" * 32, "rejected", reject_code=4, reject_message="no")
    agent = ScriptedAgent(rejected)
    with pytest.raises(IcRejectError):
        await backend_for(agent).submit_call(CANISTER, ENVELOPE)
    err = bytes.fromhex("4449444c016b02bc8a017fc5fed2017101000103") + b"bad"
    agent = ScriptedAgent(replied(err))
    with pytest.raises(CanisterRefused, match="bad"):
        await backend_for(agent).submit_call(CANISTER, ENVELOPE)
    assert len(agent.envelopes) == 1


async def test_retries_stop_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "RELAY_RETRY_WINDOW_S", 0.05)
    agent = ScriptedAgent(*[IcTransportError("connection refused")] * 1000)
    with pytest.raises(IcTransportError):
        await backend_for(agent).submit_call(CANISTER, ENVELOPE)
    assert 2 <= len(agent.envelopes) < 1000
