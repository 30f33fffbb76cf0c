// The browser build in a real browser (headless Chromium: CHATTY_E2E_CHROMIUM, CHROMIUM or
// /usr/bin/chromium; a missing browser fails the test, it is never skipped): a page loads dist/chatty-client.js as a module and
// chats with the real server in both encodings, the MessagePack codec coming from the
// client's own dynamic import('@msgpack/msgpack') through an import map. The page posts its
// results back to the little HTTP server that served it.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { freePort, mintToken, PKG, Server } from './server.mjs';
import { within } from './helpers.mjs';

const CHROMIUM = process.env.CHATTY_E2E_CHROMIUM || process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium (e2e/run.sh does) or set CHATTY_E2E_CHROMIUM`);
}

let server;
let web;
let webPort;
let result;
let browser;
let profile;

// Whatever happens to the test process, the browser (its own process group) dies with it.
process.on('exit', () => {
  if (browser && browser.exitCode === null && browser.signalCode === null) {
    try {
      process.kill(-browser.pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
});

const PAGE = (wsUrl, tokens) => `<!doctype html>
<meta charset="utf-8">
<script type="importmap">{"imports": {"@msgpack/msgpack": "/msgpack/index.mjs"}}</script>
<script type="module">
import { ChattyClient, ChattyError } from '/chatty-client.js';
const tokens = ${JSON.stringify(tokens)};
const out = {};
try {
  for (const encoding of ['json', 'msgpack']) {
    const room = 'browser-' + encoding;
    const a = new ChattyClient({ url: ${JSON.stringify(wsUrl)}, token: tokens[encoding][0], encoding });
    const b = new ChattyClient({ url: ${JSON.stringify(wsUrl)}, token: tokens[encoding][1], encoding });
    const got = new Promise((resolve) => b.on('message', (m) => m.room === room && resolve(m)));
    a.connect();
    b.connect();
    await a.join(room);
    await b.join(room);
    const ack = await a.send(room, 'from the browser over ' + encoding, { meta: { enc: encoding } }).acked;
    const m = await got;
    const up = new Promise((resolve) => b.on('update', resolve));
    await a.react(room, ack.seq, '🌐');
    const u = await up;
    out[encoding] = { seq: ack.seq, body: m.body, meta: m.meta, reactions: u.reactions, typed: new ChattyError('forbidden', 'x') instanceof Error };
    a.close();
    b.close();
  }
} catch (e) {
  out.error = String(e && e.stack || e);
}
await fetch('/result', { method: 'POST', body: JSON.stringify(out) });
</script>`;

before(async () => {
  webPort = await freePort();
  server = await new Server({ CHATTY__AUTH__ALLOWED_ORIGINS: `http://127.0.0.1:${webPort}` }, 'browser').init();
  await server.start();
  let report;
  result = new Promise((r) => (report = r));
  const tokens = {
    json: [mintToken('bj-a'), mintToken('bj-b')],
    msgpack: [mintToken('bm-a'), mintToken('bm-b')],
  };
  const msgpackDir = path.join(PKG, 'node_modules', '@msgpack', 'msgpack', 'dist.esm');
  web = http.createServer((req, res) => {
    if (process.env.CHROMIUM_LOG) console.error('web:', req.method, req.url);
    const js = (file) => {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(readFileSync(file));
    };
    if (req.method === 'POST' && req.url === '/result') {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        res.end('ok');
        report(JSON.parse(body));
      });
    } else if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(PAGE(server.wsUrl, tokens));
    } else if (req.url === '/chatty-client.js') {
      js(path.join(PKG, 'dist', 'chatty-client.js'));
    } else if (req.url.startsWith('/msgpack/') && /^(\w+\/)?\w+\.mjs$/.test(req.url.slice(9))) {
      js(path.join(msgpackDir, req.url.slice(9)));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => web.listen(webPort, '127.0.0.1', r));
});

after(async () => {
  try {
    if (browser && browser.exitCode === null && browser.signalCode === null) {
      const exited = new Promise((r) => browser.once('exit', r));
      // Chromium's helpers (zygote, GPU, renderers) are in the process group it leads.
      try {
        process.kill(-browser.pid, 'SIGKILL');
      } catch {
        browser.kill('SIGKILL');
      }
      await exited;
    }
    if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  } finally {
    web?.close();
    web?.closeAllConnections();
    await server?.dispose();
  }
});

test('a page chats in both encodings with dist/chatty-client.js', { timeout: 60000 }, async () => {
  profile = mkdtempSync(path.join(os.tmpdir(), 'chatty-chromium-'));
  browser = spawn(
    CHROMIUM,
    ['--headless=new', '--no-sandbox', '--enable-logging=stderr', '--disable-gpu', '--no-first-run', `--user-data-dir=${profile}`, `http://127.0.0.1:${webPort}/`],
    { stdio: ['ignore', 'ignore', process.env.CHROMIUM_LOG ? 'inherit' : 'ignore'], detached: true },
  );
  const out = await within(result, 45000, 'the page');
  assert.equal(out.error, undefined, out.error);
  for (const encoding of ['json', 'msgpack']) {
    assert.deepEqual(out[encoding], {
      seq: 1,
      body: `from the browser over ${encoding}`,
      meta: { enc: encoding },
      reactions: [{ key: '🌐', count: 1 }],
      typed: true,
    });
  }
});
