"""An HTTP proxy between the gateway and the replica that tampers with `ws_get_messages` answers.

Everything else passes through untouched. For the canisters it targets, the proxy either

- forges: re-signs each batch certificate with a BLS key that is not the IC's root key, then signs the
  query response again with the replica's node key (the test gave the replica that key), so the response
  passes the agent's node-signature check and only the gateway's certificate check can catch the forgery;
- or answers garbage: a 200 whose body is not CBOR.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from icgw.core import (
    Ed25519Identity,
    bls_sign,
    candid_decode_values,
    candid_encode_values,
    cbor_decode,
    cbor_encode,
    hash_tree_root,
    request_id,
)

QUERY_RESPONSE_DOMAIN = b"\x0bic-response"
STATE_ROOT_DOMAIN = b"\x0dic-state-root"
FORGER_SECRET = bytes(31) + b"\x2a"
_RESULT_TYPE = "(CanisterWsGetMessagesResult)"


class Tampering(enum.Enum):
    NONE = "none"
    FORGE = "forge"
    GARBAGE = "garbage"


class TamperingProxy:
    def __init__(self, upstream: str, node: Ed25519Identity, targets: set[bytes]) -> None:
        self.upstream = upstream
        self.node = node
        self.targets = targets
        self.mode = Tampering.FORGE
        self.tampered = 0  # answers changed so far
        self.url = ""
        self._http: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/cbor")}
        async with self._http.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers
        ) as upstream:
            status, data = upstream.status, await upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/cbor")
        if request.method == "POST" and request.path.endswith("/query") and status == 200:
            data = self._answer(body, data)
        return web.Response(status=status, body=data, headers={"Content-Type": content_type})

    def _answer(self, request_body: bytes, response_body: bytes) -> bytes:
        envelope = cbor_decode(request_body)
        assert isinstance(envelope, dict)
        content = envelope["content"]
        if (
            self.mode is Tampering.NONE
            or content["method_name"] != "ws_get_messages"
            or content["canister_id"] not in self.targets
        ):
            return response_body
        if self.mode is Tampering.GARBAGE:
            self.tampered += 1
            return b"this is not CBOR"
        response = cbor_decode(response_body)
        assert isinstance(response, dict)
        if response.get("status") != "replied":
            return response_body
        (result,) = candid_decode_values(_RESULT_TYPE, response["reply"]["arg"])
        assert isinstance(result, dict)
        batch = result.get("Ok")
        if not batch or not batch["messages"]:
            return response_body  # an empty answer carries no certificate to forge
        batch["cert"] = forge_certificate(batch["cert"])
        reply = {"arg": candid_encode_values(_RESULT_TYPE, [{"Ok": batch}])}
        signatures = []
        for signature in response["signatures"]:
            signed = {
                "status": "replied",
                "reply": reply,
                "timestamp": signature["timestamp"],
                "request_id": request_id(content),
            }
            resigned = self.node.sign(QUERY_RESPONSE_DOMAIN + request_id(signed))
            signatures.append({**signature, "signature": resigned})
        self.tampered += 1
        return cbor_encode({"status": "replied", "reply": reply, "signatures": signatures})


def forge_certificate(certificate: bytes) -> bytes:
    """The same certificate (same tree, same time), signed by a key the IC never used."""
    decoded = cbor_decode(certificate)
    assert isinstance(decoded, dict)
    root = hash_tree_root(cbor_encode(decoded["tree"], self_describe=False))
    decoded["signature"] = bls_sign(FORGER_SECRET, STATE_ROOT_DOMAIN + root)
    return cbor_encode(decoded)


@asynccontextmanager
async def tampering_proxy(
    upstream: str, node: Ed25519Identity, targets: set[bytes]
) -> AsyncIterator[TamperingProxy]:
    proxy = TamperingProxy(upstream, node, targets)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession() as http:
        proxy._http = http
        try:
            yield proxy
        finally:
            await runner.cleanup()
