// End-to-end tests of icgw with the unmodified ic-websocket-js 0.5.0 SDK. Driven from pytest
// (tests/e2e/test_sdk.py), which starts the replica emulator and the gateway and sets:
//   GATEWAY_URL, IC_URL, CANISTER_IDS (comma-separated), SCENARIO, and scenario knobs.
import './setup.mjs';
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Actor, AnonymousIdentity, HttpAgent } from '@dfinity/agent';
import icWebSocketJs from 'ic-websocket-js';

import { idlFactory } from './ws_idl.mjs';

// The package ships CommonJS to Node, so its names are properties of the default import.
const { IcWebSocket } = icWebSocketJs;
const { createWsConfig, generateRandomIdentity } = icWebSocketJs;

const gatewayUrl = process.env.GATEWAY_URL;
const icUrl = process.env.IC_URL;
const canisterIds = (process.env.CANISTER_IDS ?? '').split(',').filter(Boolean);
const scenario = process.env.SCENARIO ?? 'pingpong';
const clients = Number(process.env.CLIENTS ?? '1');
const rounds = Number(process.env.ROUNDS ?? '20');
const timeoutMs = Number(process.env.TIMEOUT_MS ?? '60000');

async function actorFor(canisterId, identity = new AnonymousIdentity()) {
  const agent = await HttpAgent.create({ host: icUrl, identity, shouldFetchRootKey: true });
  return Actor.createActor(idlFactory, { agent, canisterId });
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// One SDK client: opens, then answers every canister message with "pong" for `rounds` rounds.
// Resolves with what it saw; rejects on any SDK error or unexpected close.
async function pingPong(canisterId, rounds) {
  const identity = generateRandomIdentity();
  const canisterActor = await actorFor(canisterId);
  const config = createWsConfig({ canisterId, canisterActor, identity, networkUrl: icUrl });
  const ws = new IcWebSocket(gatewayUrl, undefined, config);
  const received = [];
  const latencies = [];
  return await new Promise((resolve, reject) => {
    let sentAt = 0;
    ws.onerror = (event) => reject(new Error(`SDK error: ${event.error ?? event.message}`));
    ws.onclose = (event) => {
      if (received.length < rounds) reject(new Error(`closed early (${event.code}) after ${received.length} messages`));
    };
    ws.onopen = () => {};
    ws.onmessage = (event) => {
      if (sentAt) latencies.push(Date.now() - sentAt);
      received.push(event.data.text);
      if (received.length >= rounds) {
        ws.close();
        resolve({ received, latencies, principal: identity.getPrincipal().toText() });
        return;
      }
      sentAt = Date.now();
      ws.send({ text: 'pong', timestamp: BigInt(Date.now()) * 1_000_000n });
    };
  });
}

if (scenario === 'pingpong') {
  test(`${clients} SDK client(s) x ${rounds} ping-pong rounds`, async () => {
    const runs = [];
    for (let i = 0; i < clients; i++) runs.push(pingPong(canisterIds[i % canisterIds.length], rounds));
    const results = await withTimeout(Promise.all(runs), 'ping-pong');
    for (const { received } of results) {
      assert.equal(received.length, rounds);
      assert.equal(received[0], 'ping');
      for (const text of received.slice(1)) assert.equal(text, 'pong ping');
    }
    const latencies = results.flatMap((r) => r.latencies).sort((a, b) => a - b);
    console.log(JSON.stringify({ scenario, clients, rounds, p50_ms: latencies[Math.floor(latencies.length / 2)] }));
  });
}

if (scenario === 'canister-close') {
  test('the canister closes a client: the SDK sees 4001', async () => {
    const canisterId = canisterIds[0];
    const identity = generateRandomIdentity();
    const canisterActor = await actorFor(canisterId);
    const ws = new IcWebSocket(gatewayUrl, undefined, createWsConfig({ canisterId, canisterActor, identity, networkUrl: icUrl }));
    const closed = new Promise((resolve) => { ws.onclose = (event) => resolve(event.code); });
    await withTimeout(new Promise((resolve) => { ws.onmessage = resolve; }), 'first message');
    const result = await canisterActor.close(identity.getPrincipal());
    assert.deepEqual(result, { Ok: null });
    assert.equal(await withTimeout(closed, 'close'), 4001);
  });
}

if (scenario === 'client-close') {
  test('the client closes: the gateway calls ws_close on the canister', async () => {
    const canisterId = canisterIds[0];
    const identity = generateRandomIdentity();
    const canisterActor = await actorFor(canisterId);
    const ws = new IcWebSocket(gatewayUrl, undefined, createWsConfig({ canisterId, canisterActor, identity, networkUrl: icUrl }));
    await withTimeout(new Promise((resolve) => { ws.onmessage = resolve; }), 'first message');
    ws.close();
    const principal = identity.getPrincipal();
    const deadline = Date.now() + timeoutMs;
    let result;
    do {
      await new Promise((r) => setTimeout(r, 100));
      result = await canisterActor.send(principal, [new Uint8Array([0x44, 0x49, 0x44, 0x4c, 0x00, 0x00])]);
    } while ('Ok' in result && Date.now() < deadline);
    assert.ok('Err' in result && result.Err.includes("doesn't have an open connection"), JSON.stringify(result));
  });
}
