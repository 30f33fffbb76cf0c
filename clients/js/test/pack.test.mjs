// The package as a user gets it: `npm pack`, then `npm install <tarball>` (with
// @msgpack/msgpack and ws from the registry) in a fresh directory, and a script there that
// connects, joins, sends and receives in both encodings against the real binary, plus a type
// check of the installed declarations without the DOM library.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { PKG, Server } from './server.mjs';

const run = promisify(execFile);
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
let server;
let dir;

before(async () => {
  server = await new Server({}, 'pack').init();
  await server.start();
  dir = mkdtempSync(path.join(os.tmpdir(), 'chatty-pack-'));
});

after(async () => {
  await server?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const CHECK = `
import { ChattyClient, ChattyError } from '@chatty/client';
import WebSocket from 'ws';

const [origin] = process.argv.slice(2);
const url = origin.replace(/^http/, 'ws') + '/ws';
async function token(name) {
  const res = await fetch(origin + '/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  return (await res.json()).token;
}
const out = {};
for (const encoding of ['json', 'msgpack']) {
  const room = 'pack-' + encoding;
  // No codec passed: msgpack comes from the installed @msgpack/msgpack, imported by the client.
  const a = new ChattyClient({ url, token: await token('pa-' + encoding), WebSocket, encoding });
  const b = new ChattyClient({ url, token: await token('pb-' + encoding), WebSocket, encoding });
  const got = new Promise((resolve) => b.on('message', (m) => m.room === room && resolve(m)));
  a.connect();
  b.connect();
  await a.join(room);
  await b.join(room);
  const ack = await a.send(room, 'hello over ' + encoding, { meta: { n: 1 } }).acked;
  const m = await got;
  out[encoding] = { seq: ack.seq, body: m.body, meta: m.meta, from: m.from, typed: new ChattyError('forbidden', 'x') instanceof Error };
  a.close();
  b.close();
}
console.log(JSON.stringify(out));
`;

const NO_CODEC = `
import { ChattyClient, ChattyError } from '@chatty/client';
import WebSocket from 'ws';

const [origin] = process.argv.slice(2);
const url = origin.replace(/^http/, 'ws') + '/ws';
const token = async (name) =>
  (await (await fetch(origin + '/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) })).json()).token;
const c = new ChattyClient({ url, token: await token('nocodec'), WebSocket, encoding: 'msgpack' }).connect();
const e = await c.join('nocodec').then(() => null, (e) => e);
const j = new ChattyClient({ url, token: await token('nocodec-json'), WebSocket }).connect();
await j.join('nocodec');
const { seq } = await j.send('nocodec', 'json needs no codec').acked;
j.close();
console.log(JSON.stringify({ code: e && e.code, typed: e instanceof ChattyError, state: c.state, json: seq }));
`;

const TYPES = `
import { ChattyClient, type ServerFrame, type ChattyErrorCode } from '@chatty/client';
declare const WS: ConstructorParameters<typeof ChattyClient>[0]['WebSocket'];
const c = new ChattyClient({ url: 'ws://x/ws', token: 't', WebSocket: WS });
c.on('frame', (f: ServerFrame) => (f.type === 'error' ? (f.code satisfies ChattyErrorCode) : f.type));
`;

test('npm pack, npm install the tarball, chat in both encodings', { timeout: 240000 }, async () => {
  const packed = await run(npm, ['pack', '--json', '--pack-destination', dir], { cwd: PKG, maxBuffer: 16 << 20 });
  // npm pack --json prints the build's own output first when prepack runs: the JSON is last.
  const json = packed.stdout.slice(packed.stdout.lastIndexOf('\n[') + 1);
  const [info] = JSON.parse(json);
  const tarball = path.join(dir, info.filename);
  assert.ok(existsSync(tarball), tarball);
  const files = info.files.map((f) => f.path).sort();
  for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/protocol.d.ts', 'dist/chatty-client.js', 'package.json', 'README.md']) {
    assert.ok(files.includes(f), `${f} is packed: ${files.join(', ')}`);
  }
  assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('test/')), 'no sources or tests in the tarball');

  const app = path.join(dir, 'app');
  rmSync(app, { recursive: true, force: true });
  await run('mkdir', ['-p', app]);
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'chatty-pack-check', private: true, type: 'module' }));
  const install = (...pkgs) =>
    run(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline', ...pkgs], { cwd: app, maxBuffer: 16 << 20, timeout: 180000 });
  await install(tarball, 'ws');
  // Without the optional peer, MessagePack fails with a typed error and JSON still works.
  writeFileSync(path.join(app, 'nocodec.mjs'), NO_CODEC);
  const nc = await run(process.execPath, ['nocodec.mjs', server.origin], { cwd: app, timeout: 30000 });
  assert.deepEqual(JSON.parse(nc.stdout.trim().split('\n').at(-1)), { code: 'codec', typed: true, state: 'closed', json: 1 });
  await install('@msgpack/msgpack');
  assert.ok(existsSync(path.join(app, 'node_modules', '@chatty', 'client', 'dist', 'chatty-client.js')));
  assert.deepEqual(readdirSync(path.join(app, 'node_modules', '@chatty', 'client')).sort(), ['README.md', 'dist', 'package.json']);

  writeFileSync(path.join(app, 'check.mjs'), CHECK);
  const { stdout } = await run(process.execPath, ['check.mjs', server.origin], { cwd: app, timeout: 30000 });
  const out = JSON.parse(stdout.trim().split('\n').at(-1));
  for (const encoding of ['json', 'msgpack']) {
    assert.deepEqual(out[encoding], { seq: 1, body: `hello over ${encoding}`, meta: { n: 1 }, from: `pa-${encoding}`, typed: true });
  }

  // The installed declarations type-check for a user, without the DOM library.
  writeFileSync(path.join(app, 'check.ts'), TYPES);
  writeFileSync(
    path.join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', lib: ['ES2022'], types: [], strict: true, noEmit: true, skipLibCheck: false },
      files: ['check.ts'],
    }),
  );
  const tsc = path.join(PKG, 'node_modules', 'typescript', 'bin', 'tsc');
  await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: app, timeout: 60000 }).catch((e) => {
    assert.fail(`tsc on the installed package: ${e.stdout}${e.stderr}`);
  });
});
