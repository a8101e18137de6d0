"""The gateway's conversations with the IC, over `icgw.ic.IcAgent`, as the hub expects them (IcBackend)."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from icgw.core import Ed25519Identity, MessagesBatch, candid_decode_values
from icgw.gateway.poller import FatalPollError, TransientPollError
from icgw.ic.agent import CallOutcome, IcAgent
from icgw.ic.errors import IcError, IcRejectError, IcVerificationError

# Reject codes after which polling the same canister again may work (IC-INTERFACE.md §7): a transient
# system condition, or a canister error such as a stopped or upgrading canister.
_RETRYABLE_REJECT_CODES = frozenset({2, 5})
log = logging.getLogger(__name__)

# A relayed envelope that meets a transient failure (HTTP 5xx or 429 after the agent's own pauses, a refused
# or dropped connection, a timeout) is sent again, byte for byte, with growing pauses, for this long. The IC
# knows a call by its request id, so a copy of one it already received is not executed twice. The client's
# later envelopes wait behind it in its relay, so one lost envelope never becomes a sequence-number gap
# that makes the CDK close the client.
RELAY_RETRY_WINDOW_S = 30.0
RELAY_RETRY_FIRST_PAUSE_S = 0.05
RELAY_RETRY_MAX_PAUSE_S = 2.0
# `variant { Ok : null; Err : text }` = Ok, as the candid crate encodes it (the CDK's and the emulator's
# encoder); anything else is decoded properly.
_OK_NULL = bytes.fromhex("4449444c016b02bc8a017fc5fed201710100" + "00")


class CanisterRefused(Exception):
    """The canister answered a relayed call with `Err(text)` (e.g. a duplicate client key)."""


def _raise_if_err(reply: bytes) -> None:
    if reply == _OK_NULL:
        return
    (result,) = candid_decode_values("(variant { Ok : null; Err : text })", reply)
    if isinstance(result, dict) and "Err" in result:
        raise CanisterRefused(str(result["Err"]))


class AgentBackend:
    """`agent` relays calls; `query_agent` (default: `agent`) polls. Give the pollers an agent of their own:
    a synchronous call holds its HTTP connection until the canister has run it, so with as many calls in
    flight as the pool has connections, a poll sharing that pool would wait behind them (the relay
    benchmark's upstream run timed polls out this way at 1,000 clients)."""

    def __init__(
        self,
        agent: IcAgent,
        identity: Ed25519Identity,
        root_key: bytes,
        *,
        certificate_max_age_ns: int,
        query_agent: IcAgent | None = None,
    ) -> None:
        self.agent = agent
        self.query_agent = query_agent if query_agent is not None else agent
        self.identity = identity
        self.root_key = root_key
        self.certificate_max_age_ns = certificate_max_age_ns

    async def submit_call(self, canister_id: bytes, envelope: bytes) -> None:
        outcome = await self._submit_with_retries(canister_id, envelope)
        if outcome.status in ("rejected", "non_replicated_rejection"):
            outcome.reply_or_raise()
        if outcome.status == "replied" and outcome.reply is not None:
            _raise_if_err(outcome.reply)

    async def _submit_with_retries(self, canister_id: bytes, envelope: bytes) -> CallOutcome:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + RELAY_RETRY_WINDOW_S
        pause = RELAY_RETRY_FIRST_PAUSE_S
        while True:
            try:
                return await self.agent.submit_call(canister_id, envelope, wait=False)
            except IcError as error:
                if not error.retryable or loop.time() + pause > give_up_at:
                    raise
                log.info("relaying a call failed (%s); sending it again in %.2fs", error, pause)
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(RELAY_RETRY_MAX_PAUSE_S, pause * 2)

    async def query_messages(self, canister_id: bytes, arg: bytes) -> bytes:
        try:
            return await self.query_agent.query(self.identity, canister_id, "ws_get_messages", arg)
        except IcRejectError as error:
            if error.code in _RETRYABLE_REJECT_CODES:
                raise TransientPollError(str(error)) from error
            raise FatalPollError(str(error)) from error
        except IcVerificationError as error:
            # A bad node signature or certificate: never use the reply, but the next one may be fine.
            raise TransientPollError(str(error)) from error
        except IcError as error:
            if error.retryable:
                raise TransientPollError(str(error)) from error
            raise FatalPollError(str(error)) from error

    async def call_ws_close(self, canister_id: bytes, arg: bytes) -> bytes:
        reply = await self.agent.call(self.identity, canister_id, "ws_close", arg)
        _raise_if_err(reply)
        return reply

    def verify_batch(self, canister_id: bytes, batch: MessagesBatch) -> None:
        now = time.time_ns()
        batch.verify(self.root_key, canister_id, now_ns=now, max_age_ns=self.certificate_max_age_ns)
