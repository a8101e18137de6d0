"""The gateway's conversations with the IC, over `icgw.ic.IcAgent`, as the hub expects them (IcBackend)."""

from __future__ import annotations

import time

from icgw.core import Ed25519Identity, MessagesBatch, candid_decode_values
from icgw.gateway.poller import FatalPollError, TransientPollError
from icgw.ic.agent import IcAgent
from icgw.ic.errors import IcError, IcRejectError, IcVerificationError

# Reject codes after which polling the same canister again may work (IC-INTERFACE.md §7): a transient
# system condition, or a canister error such as a stopped or upgrading canister.
_RETRYABLE_REJECT_CODES = frozenset({2, 5})
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
        outcome = await self.agent.submit_call(canister_id, envelope, wait=False)
        if outcome.status in ("rejected", "non_replicated_rejection"):
            outcome.reply_or_raise()
        if outcome.status == "replied" and outcome.reply is not None:
            _raise_if_err(outcome.reply)

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
