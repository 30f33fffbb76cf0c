// The browser files: dist/chatty-client.js stands alone (no static import), exports what
// dist/index.js does, and dist/chatty-client.global.js sets globalThis.Chatty; the global build
// talks to the real server like the module does.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import vm from 'node:vm';

import WebSocket from 'ws';

import { mintToken, PKG, Server } from './server.mjs';
import { until } from './helpers.mjs';

const dist = path.join(PKG, 'dist');
let server;

before(async () => {
  server = await new Server({}, 'bundle').init();
  await server.start();
});

after(async () => {
  await server?.dispose();
});

test('dist/chatty-client.js has no static imports and exports the API', { timeout: 10000 }, async () => {
  const src = readFileSync(path.join(dist, 'chatty-client.js'), 'utf8');
  assert.doesNotMatch(src, /^\s*import\s+[^(]/m, 'no static import');
  assert.doesNotMatch(src, /^\s*export\s.*\sfrom\s/m, 'no re-export');
  const dynamic = [...src.matchAll(/\bimport\s*\(/g)];
  assert.equal(dynamic.length, 1, 'one dynamic import: the optional MessagePack codec');
  const bundle = await import(pathToFileURL(path.join(dist, 'chatty-client.js')).href);
  const main = await import(pathToFileURL(path.join(dist, 'index.js')).href);
  assert.deepEqual(Object.keys(bundle).sort(), Object.keys(main).sort());
  for (const name of ['ChattyClient', 'ChattyError', 'connect', 'tokenClaims', 'CloseCode', 'SUBPROTOCOLS']) {
    assert.ok(name in bundle, name);
  }
});

test('dist/chatty-client.global.js: globalThis.Chatty chats with the server', { timeout: 15000 }, async () => {
  const code = readFileSync(path.join(dist, 'chatty-client.global.js'), 'utf8');
  vm.runInThisContext(code, { filename: 'chatty-client.global.js' });
  const { Chatty } = globalThis;
  assert.equal(typeof Chatty.ChattyClient, 'function');
  const e = new Chatty.ChattyError('forbidden', 'no', 'r1');
  assert.ok(e instanceof Error);
  assert.equal(e.code, 'forbidden');
  const c = Chatty.connect({ url: server.wsUrl, token: mintToken('global-user'), WebSocket });
  try {
    const got = [];
    c.on('message', (m) => got.push(m.body));
    await c.join('global-room');
    await c.send('global-room', 'from the global build').acked;
    await until(() => got.length === 1, 5000, 'the echo');
    assert.deepEqual(got, ['from the global build']);
  } finally {
    c.close();
    delete globalThis.Chatty;
  }
});
