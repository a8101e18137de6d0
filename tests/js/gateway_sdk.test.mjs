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

// The ack / keep-alive cycle (PROTOCOL.md §7.2), in canister time that the Python driver moves. The replica
// runs with `--allow-admin --ack-interval-ms 60001`, the SDK with the same ackMessageIntervalMs. This file
// prints `@@step <name>` when it waits for the driver and reads the driver's answer from stdin, and
// `@@result <json>` with what the driver checks on the gateway's side:
//   opened      -> the driver advances time past the ack interval: the ack tick fires
//   kept-alive  -> the driver advances time past the keep-alive check
// A second client never answers acks (its keep-alive is swallowed), so the check must close it: that
// shows the check really ran, and that the client which did answer survived it.
if (scenario === 'ack') {
  const ackIntervalMs = Number(process.env.ACK_INTERVAL_MS ?? '60001');
  const { createInterface } = await import('node:readline');
  const driver = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

  async function step(name) {
    console.log(`@@step ${name}`);
    const { value, done } = await withTimeout(driver.next(), `the driver's answer to ${name}`);
    assert.ok(!done, `the driver went away during ${name}`);
    assert.equal(value.trim(), 'ok', `the driver failed during ${name}: ${value}`);
  }

  async function until(condition, what) {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
      if (Date.now() > deadline) throw new Error(`${what}: timed out after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  // An SDK client that records its messages, errors, close, and the keep-alives it sends. With
  // `answerAcks: false` its keep-alives are swallowed: a client that is gone but has not closed.
  async function ackClient(canisterId, { answerAcks }) {
    const identity = generateRandomIdentity();
    const canisterActor = await actorFor(canisterId);
    const config = createWsConfig({
      canisterId, canisterActor, identity, networkUrl: icUrl, ackMessageIntervalMs: ackIntervalMs,
    });
    const ws = new IcWebSocket(gatewayUrl, undefined, config);
    const client = { ws, texts: [], errors: [], closed: null, acks: 0, keepAlives: 0 };
    const sendKeepAlive = ws._sendKeepAliveMessage.bind(ws);
    // Observe the SDK's own keep-alive path (called when its AckMessage arrives); only the silent client
    // skips the real send.
    ws._sendKeepAliveMessage = async () => {
      client.acks++;
      if (!answerAcks) return;
      await sendKeepAlive();
      client.keepAlives++;
    };
    ws.onmessage = (event) => client.texts.push(event.data.text);
    ws.onerror = (event) => client.errors.push(String(event.error ?? event.message));
    ws.onclose = (event) => { client.closed = { code: event.code, reason: event.reason }; };
    await until(() => client.texts.length === 1 || client.closed, 'the first message');
    assert.deepEqual(client.texts, ['ping']);
    return client;
  }

  async function roundTrip(client, text) {
    const before = client.texts.length;
    client.ws.send({ text, timestamp: BigInt(Date.now()) * 1_000_000n });
    await until(() => client.texts.length > before || client.closed, `the answer to "${text}"`);
    assert.equal(client.texts.at(-1), `${text} ping`);
  }

  test('acks are answered with keep-alives and the connection outlives the keep-alive check', async () => {
    const canisterId = canisterIds[0];
    const clients = [];
    try {
      const alive = await ackClient(canisterId, { answerAcks: true });
      clients.push(alive);
      const silent = await ackClient(canisterId, { answerAcks: false });
      clients.push(silent);
      await roundTrip(alive, 'before the ack'); // the canister now owes an ack for sequence number 1

      await step('opened'); // -> the ack tick
      await until(() => (alive.keepAlives === 1 && silent.acks === 1) || alive.closed, 'the acks');
      assert.equal(alive.closed, null);
      // The keep-alive went to the gateway before this message; once this is answered the canister has it.
      await roundTrip(alive, 'after the ack');

      await step('kept-alive'); // -> the keep-alive check
      await until(() => silent.closed, 'the silent client closed by the canister');
      assert.equal(silent.closed.code, 4000);
      // The SDK prints the reason variant as an object, so its error names only the CloseMessage.
      assert.ok(silent.errors.some((e) => e.includes('Received close message from canister')), silent.errors.join('; '));

      assert.equal(alive.closed, null);
      assert.ok(alive.ws.isConnectionEstablished());
      await roundTrip(alive, 'still here');
      assert.deepEqual(alive.errors, []);
      assert.deepEqual(alive.texts, ['ping', 'before the ack ping', 'after the ack ping', 'still here ping']);
      // The next ack tick is due one millisecond after the check, in canister time that runs on with the
      // wall clock: it may have come and been answered too.
      console.log(`@@result ${JSON.stringify({ keepAlives: alive.keepAlives })}`);
      alive.ws.close();
      await until(() => alive.closed, 'the close');
      assert.equal(alive.closed.code, 1000);
    } finally {
      // Leave nothing open, so that the process ends (and reports) even when an assertion failed.
      for (const client of clients) if (!client.closed) client.ws.close();
      process.stdin.destroy();
    }
  });
}
