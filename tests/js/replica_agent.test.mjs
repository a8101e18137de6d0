// The replica emulator as real agents see it: @dfinity/agent 2.x (the line ic-websocket-js 0.5.0 uses)
// fetches the root key, makes a v3 call as a client (certificate verified by the agent), queries
// ws_get_messages as a gateway (node signature verified by the agent), checks every returned message the
// way the SDK does (Certificate.create + lookup of websocket/<key> = sha256(content)), then ws_message and
// ws_close. Driven from pytest (tests/replica/test_js_agent.py) with REPLICA_URL and CANISTER_ID set.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';

import { Actor, Cbor, Certificate, HttpAgent, lookup_path, reconstruct } from '@dfinity/agent';
import { IDL } from '@dfinity/candid';
import { Ed25519KeyIdentity } from '@dfinity/identity';
import { Principal } from '@dfinity/principal';

import { appMessageType, idlFactory, serviceMessageType } from './ws_idl.mjs';

const host = process.env.REPLICA_URL;
const canisterId = Principal.fromText(process.env.CANISTER_ID);

async function actorFor(identity) {
  const agent = await HttpAgent.create({ host, identity, shouldFetchRootKey: true });
  return { agent, actor: Actor.createActor(idlFactory, { agent, canisterId }) };
}

function foundValue(result) {
  // @dfinity/agent 2.x returns {status, value}; older versions returned the value itself.
  if (result && typeof result === 'object' && 'status' in result) {
    return result.status === 'found' ? result.value : undefined;
  }
  return result;
}

function equalBytes(a, b) {
  return Buffer.from(a).equals(Buffer.from(b));
}

async function verifiedMessages(agent, reply) {
  const { messages, cert, tree } = reply;
  if (messages.length === 0) return [];
  const certificate = await Certificate.create({
    certificate: new Uint8Array(cert),
    rootKey: agent.rootKey,
    canisterId,
  });
  const certifiedData = foundValue(certificate.lookup(['canister', canisterId.toUint8Array(), 'certified_data']));
  assert.ok(certifiedData, 'the certificate holds the canister certified data');
  const decodedTree = Cbor.decode(new Uint8Array(tree));
  assert.ok(equalBytes(await reconstruct(decodedTree), certifiedData), 'tree root = certified data');
  return messages.map((message) => {
    const leaf = foundValue(lookup_path(['websocket', message.key], decodedTree));
    assert.ok(leaf, `the tree reveals websocket/${message.key}`);
    const digest = createHash('sha256').update(Buffer.from(message.content)).digest();
    assert.ok(equalBytes(leaf, digest), `websocket/${message.key} = sha256(content)`);
    return Cbor.decode(new Uint8Array(message.content));
  });
}

async function poll(gateway, nonce) {
  const result = await gateway.actor.ws_get_messages({ nonce });
  assert.ok('Ok' in result, `ws_get_messages: ${JSON.stringify(result.Err)}`);
  return result.Ok;
}

test('a client and a gateway talk to the emulator through @dfinity/agent', async () => {
  const clientIdentity = Ed25519KeyIdentity.generate();
  const gatewayIdentity = Ed25519KeyIdentity.generate();
  const client = await actorFor(clientIdentity);
  const gateway = await actorFor(gatewayIdentity);
  const clientNonce = BigInt('0x' + randomBytes(8).toString('hex'));
  const clientKey = { client_principal: clientIdentity.getPrincipal(), client_nonce: clientNonce };

  // ws_open as the client: an update call whose certificate the agent verifies.
  const opened = await client.actor.ws_open({
    client_nonce: clientNonce,
    gateway_principal: gatewayIdentity.getPrincipal(),
  });
  assert.deepEqual(opened, { Ok: null });

  // ws_get_messages as the gateway: a query whose node signature the agent verifies.
  const first = await poll(gateway, 0n);
  const decoded = await verifiedMessages(gateway.agent, first);
  assert.equal(decoded.length, 2, 'the OpenMessage and the test canister\'s "ping"');
  const [open, ping] = decoded;
  assert.equal(BigInt(open.sequence_num), 1n);
  assert.equal(open.is_service_message, true);
  const [service] = IDL.decode([serviceMessageType(IDL)], open.content);
  assert.ok(service.OpenMessage, 'the first message is an OpenMessage');
  assert.equal(service.OpenMessage.client_key.client_principal.toText(), clientKey.client_principal.toText());
  assert.equal(service.OpenMessage.client_key.client_nonce, clientNonce);
  assert.equal(BigInt(ping.sequence_num), 2n);
  const [pingApp] = IDL.decode([appMessageType(IDL)], ping.content);
  assert.equal(pingApp.text, 'ping');

  // ws_message as the client, with the SDK's `opt` second argument left empty.
  const content = IDL.encode([appMessageType(IDL)], [{ text: 'hello', timestamp: 1n }]);
  const sent = await client.actor.ws_message(
    {
      msg: {
        client_key: clientKey,
        sequence_num: 1n,
        timestamp: BigInt(Date.now()) * 1_000_000n,
        is_service_message: false,
        content: new Uint8Array(content),
      },
    },
    [],
  );
  assert.deepEqual(sent, { Ok: null });
  const lastKey = first.messages[first.messages.length - 1].key;
  const nextNonce = BigInt(lastKey.slice(lastKey.lastIndexOf('_') + 1)) + 1n;
  const second = await poll(gateway, nextNonce);
  const [reply] = await verifiedMessages(gateway.agent, second);
  const [replyApp] = IDL.decode([appMessageType(IDL)], reply.content);
  assert.equal(replyApp.text, 'hello ping');
  assert.equal(BigInt(reply.sequence_num), 3n);

  // ws_close as the gateway the client is registered to.
  const closed = await gateway.actor.ws_close({ client_key: clientKey });
  assert.deepEqual(closed, { Ok: null });
  const again = await gateway.actor.ws_close({ client_key: clientKey });
  assert.ok('Err' in again && again.Err.includes("doesn't have an open connection"));
});
