"""A `TestCanisterDriver` that reaches the test canister through a replica's HTTP interface.

Callers are Ed25519 identities (or anonymous) and every request is a signed envelope, sent the way the
parts of an IC WebSocket deployment send them: a client's `ws_open` and `ws_message` envelopes are
signed by the client and relayed unchanged (`IcAgent.submit_call`, as a gateway relays them), the
gateway's own calls and everyone else's go through `IcAgent.call`, and `ws_get_messages` through
`IcAgent.query`, which checks the node signature. Every batch of messages a poll returns is verified
with `MessagesBatch.verify` against the replica's root key before the test sees it. Canister time
moves through the replica's admin endpoint, so the CDK's timers fire inside the replica, between
requests, as they would on PocketIC.

The driver is synchronous, like `InProcessDriver`, so that one suite runs over both: it owns an event
loop on which the replica and the agent run, and each call runs that loop until its answer is in.
Between calls the loop stands still and canister time is frozen (a `ManualClock`), so nothing happens
that the test did not ask for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import aiohttp

from icgw.core import ANONYMOUS, Ed25519Identity, cbor_encode, decode_messages_reply, sign_envelope
from icgw.ic import IcAgent, IcRejectError
from icgw.ic.agent import CallOutcome
from icgw.replica import CanisterFactory, Replica, ReplicaConfig
from icgw.replica.clock import ManualClock
from icgw.replica.interfaces import Outcome, Reject, Reply
from icgw.replica.test_canister import CanisterCall, TestCanisterDriver

T = TypeVar("T")

# The methods a client calls itself: the SDK signs these envelopes and the gateway relays them.
CLIENT_SIGNED_METHODS = frozenset({"ws_open", "ws_message"})

# Requests expire 4 minutes after they are made, as the agent's own calls do.
INGRESS_EXPIRY_NS = 4 * 60 * 1_000_000_000


class Signers:
    """Ed25519 identities by principal: the callers an `HttpDriver` can sign for.

    A test names its principals with `principal(seed)`; the identity behind each is derived from the
    seed, so the same seed always gives the same principal.
    """

    def __init__(self) -> None:
        self._identities: dict[bytes, Ed25519Identity] = {}

    def principal(self, seed: bytes) -> bytes:
        identity = Ed25519Identity.from_secret_key(hashlib.sha256(seed).digest())
        self._identities[identity.principal] = identity
        return identity.principal

    def identity(self, principal: bytes) -> Ed25519Identity | None:
        """The identity to sign as `principal`; None for the anonymous principal."""
        if principal == ANONYMOUS:
            return None
        try:
            return self._identities[principal]
        except KeyError:
            raise KeyError(
                f"no key for principal {principal.hex()}; name it with Signers.principal"
            ) from None


class HttpDriver(TestCanisterDriver):
    """Calls the first canister of an in-process `Replica` over loopback HTTP; see the module docs."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        replica: Replica,
        agent: IcAgent,
        admin: aiohttp.ClientSession,
        signers: Signers,
    ) -> None:
        self._loop = loop
        self.replica = replica
        self._agent = agent
        self._admin = admin
        self._signers = signers
        self.canister_id = replica.canister_ids[0]
        # The key batches are verified against: the replica's own (a test may swap in another).
        self.trusted_root_key = replica.root_key_der
        self.batches_verified = 0

    @classmethod
    def start(
        cls,
        canister_factory: CanisterFactory,
        clock: ManualClock,
        signers: Signers,
        config: ReplicaConfig | None = None,
    ) -> HttpDriver:
        """Start a replica on 127.0.0.1 (any free port) hosting one canister, with admin time control."""
        config = replace(config or ReplicaConfig(), host="127.0.0.1", port=0, canisters=1, allow_admin=True)
        loop = asyncio.new_event_loop()
        replica = Replica(config, canister_factory=canister_factory, clock=clock)
        try:
            loop.run_until_complete(replica.start())
            # The agent trusts exactly the replica's root key and tells time by canister time, so that
            # expiries and certificate freshness agree with the replica however far the test moves it.
            agent = IcAgent(replica.url, root_key=replica.root_key_der, clock=clock.now_ns)
            admin = loop.run_until_complete(_client_session())
        except BaseException:
            loop.run_until_complete(replica.stop())
            loop.close()
            raise
        return cls(loop, replica, agent, admin, signers)

    def stop(self) -> None:
        """Stop the replica and close the loop (named so as not to shadow the canister's `close`)."""
        try:
            self._run(self._agent.close())
            self._run(self._admin.close())
            self._run(self.replica.stop())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    # --- TestCanisterDriver -----------------------------------------------------------------------

    def outcome(self, call: CanisterCall, caller: bytes) -> Outcome:
        return self._run(self._outcome(call, caller))

    def advance_ns(self, nanoseconds: int) -> None:
        self._run(self._advance(nanoseconds))

    # --- internals --------------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    async def _outcome(self, call: CanisterCall, caller: bytes) -> Outcome:
        identity = self._signers.identity(caller)
        try:
            if call.kind == "query":
                reply = await self._agent.query(identity, self.canister_id, call.method, call.arg)
                if call.method == "ws_get_messages":
                    self._verify_batch(reply)
                return Reply(reply)
            if identity is None or call.method in CLIENT_SIGNED_METHODS:
                envelope = self._envelope(call, identity, caller)
                outcome = await self._agent.submit_call(
                    self.canister_id, envelope, read_state_identity=identity
                )
                return _as_outcome(outcome)
            return Reply(await self._agent.call(identity, self.canister_id, call.method, call.arg))
        except IcRejectError as e:
            return Reject(e.code, e.message, e.error_code)

    def _envelope(self, call: CanisterCall, identity: Ed25519Identity | None, caller: bytes) -> bytes:
        """The call envelope as the caller's own agent (the SDK, for a client) would sign it."""
        content = {
            "request_type": "call",
            "sender": caller,
            "nonce": os.urandom(16),
            "ingress_expiry": self.replica.clock.now_ns() + INGRESS_EXPIRY_NS,
            "canister_id": self.canister_id,
            "method_name": call.method,
            "arg": call.arg,
        }
        if identity is None:
            return cbor_encode({"content": content})
        return sign_envelope(identity, content)

    def _verify_batch(self, reply: bytes) -> None:
        """What a gateway checks before relaying a batch: the certificate, the witness, every message."""
        batch = decode_messages_reply(reply)
        if len(batch):
            batch.verify(self.trusted_root_key, self.canister_id, now_ns=self.replica.clock.now_ns())
            self.batches_verified += 1

    async def _advance(self, nanoseconds: int) -> None:
        url = f"{self.replica.url}/_admin/advance_time"
        async with self._admin.post(url, json={"ns": nanoseconds}) as response:
            if response.status != 200:
                raise RuntimeError(f"advance_time failed: HTTP {response.status}: {await response.text()}")


async def _client_session() -> aiohttp.ClientSession:
    # Made on the running loop, which aiohttp binds the session to.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))


def _as_outcome(outcome: CallOutcome) -> Outcome:
    if outcome.status == "replied" and outcome.reply is not None:
        return Reply(outcome.reply)
    if outcome.status in ("rejected", "non_replicated_rejection"):
        return Reject(outcome.reject_code or 0, outcome.reject_message or "", outcome.error_code)
    raise AssertionError(f"the call reached no final outcome: {outcome.status}")
