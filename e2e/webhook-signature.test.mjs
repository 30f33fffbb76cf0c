// Keeps docs/webhooks.md honest: the Node and Python `verify` snippets it shows (the fenced
// blocks right after <!-- verify:node --> and <!-- verify:python -->) and its worked example
// (<!-- verify:example -->) are run against signatures computed here with node:crypto.
// Needs node and python3 only: no server, no browser. A missing python3 fails the test.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const DOC_PATH = fileURLToPath(new URL('../docs/webhooks.md', import.meta.url));
const doc = readFileSync(DOC_PATH, 'utf8');

// The fenced block that follows `<!-- name -->`; the marker must appear exactly once.
function block(name) {
  const marker = `<!-- ${name} -->`;
  assert.equal(doc.split(marker).length - 1, 1, `${DOC_PATH} must hold ${marker} exactly once`);
  const fence = /^\s*```[\w-]*\n([\s\S]*?)\n```[ \t]*(?:\n|$)/.exec(doc.slice(doc.indexOf(marker) + marker.length));
  assert.ok(fence, `${DOC_PATH}: ${marker} must be followed directly by a fenced code block`);
  return `${fence[1]}\n`;
}

const dir = mkdtempSync(join(tmpdir(), 'chatty-webhook-doc-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const SECRET = 'whsec-test-0123456789';
const BODY = '{"id":"1","type":"user.offline","user":"ann","ts":1}';
const NOW = Math.floor(Date.now() / 1000);
const hmacHex = (secret, text) => createHmac('sha256', secret).update(text).digest('hex');
const sign = (t, body = BODY, secret = SECRET) => `t=${t},v1=${hmacHex(secret, `${t}.${body}`)}`;
const GOOD = sign(NOW);
const V1 = GOOD.split(',v1=')[1];

// The worked example, as `key: value` lines.
const example = Object.fromEntries(
  block('verify:example')
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => {
      const at = line.indexOf(': ');
      assert.ok(at > 0, `verify:example: "${line}" is not "key: value"`);
      return [line.slice(0, at), line.slice(at + 2)];
    }),
);
const EXAMPLE_T = Number(/^t=([0-9]+),/.exec(example.header ?? '')?.[1]);

// Every case runs through both snippets. `now` absent: the snippet's default (the clock).
const cases = [
  { name: 'the right signature', header: GOOD, want: true },
  { name: 'the right signature, now given', header: GOOD, now: NOW, want: true },
  { name: 'the right signature, 300 s later (edge of the window)', header: GOOD, now: NOW + 300, want: true },
  { name: 'the right signature, 301 s later', header: GOOD, now: NOW + 301, want: false },
  { name: 'a wrong secret', header: GOOD, secret: 'whsec-test-0123456780', want: false },
  { name: 'a modified body', header: GOOD, body: BODY.replace('"ann"', '"bob"'), want: false },
  { name: 'the body parsed and serialized again', header: GOOD, body: JSON.stringify(JSON.parse(BODY), null, 1), want: false },
  { name: 'a stale t (now - 1000)', header: sign(NOW - 1000), want: false },
  { name: 'a t in the future (now + 1000)', header: sign(NOW + 1000), want: false },
  { name: 'malformed: empty', header: '', want: false },
  { name: 'malformed: missing (null)', header: null, want: false },
  { name: 'malformed: garbage', header: 'not a signature', want: false },
  { name: 'malformed: no t', header: `v1=${V1}`, want: false },
  { name: 'malformed: no v1', header: `t=${NOW}`, want: false },
  { name: 'malformed: fields swapped', header: `v1=${V1},t=${NOW}`, want: false },
  { name: 'malformed: t not a number', header: `t=abc,v1=${V1}`, want: false },
  { name: 'malformed: v1 too short', header: `t=${NOW},v1=${V1.slice(2)}`, want: false },
  { name: 'malformed: v1 not hex', header: `t=${NOW},v1=${'z'.repeat(64)}`, want: false },
  { name: 'malformed: v1 empty', header: `t=${NOW},v1=`, want: false },
  {
    name: 'the worked example, at its t',
    header: example.header,
    body: example.body,
    secret: example.secret,
    now: EXAMPLE_T,
    want: true,
  },
  {
    name: 'the worked example, today',
    header: example.header,
    body: example.body,
    secret: example.secret,
    want: false,
  },
].map((c) => ({ body: BODY, secret: SECRET, ...c }));

test('the worked example in the doc is a correct signature', () => {
  for (const key of ['secret', 'body', 'signed', 'header']) {
    assert.ok(example[key], `verify:example has no "${key}:" line`);
  }
  assert.ok(Number.isInteger(EXAMPLE_T), `verify:example: header "${example.header}" has no t`);
  assert.equal(example.signed, `${EXAMPLE_T}.${example.body}`, 'the signed string is "<t>.<raw body>"');
  assert.equal(example.header, `t=${EXAMPLE_T},v1=${hmacHex(example.secret, example.signed)}`);
  assert.ok(Math.abs(NOW - EXAMPLE_T) > 300, 'the example must be outside the replay window today');
});

test('the Node verify snippet', async (t) => {
  const file = join(dir, 'verify.mjs');
  writeFileSync(file, block('verify:node'));
  const { verify } = await import(pathToFileURL(file).href);
  assert.equal(typeof verify, 'function', 'the Node snippet must export a function verify');

  for (const c of cases) {
    await t.test(c.name, () => {
      const args = [Buffer.from(c.body, 'utf8'), c.header, c.secret];
      if (c.now !== undefined) args.push(c.now);
      assert.equal(verify(...args), c.want);
      // The same with the body as a string, as some frameworks hand it over.
      args[0] = c.body;
      assert.equal(verify(...args), c.want, 'with the body as a string');
    });
  }
});

// Reads the cases on stdin, prints one result per case (a bool, or the repr of anything else).
const PYTHON_DRIVER = `
import json, sys
sys.path.insert(0, sys.argv[1])
from verify import verify
out = []
for c in json.load(sys.stdin):
    args = [bytes.fromhex(c["body"]), c["header"], c["secret"]]
    if c["now"] is not None:
        args.append(c["now"])
    r = verify(*args)
    out.append(r if isinstance(r, bool) else "not a bool: " + repr(r))
print(json.dumps(out))
`;

test('the Python verify snippet', async (t) => {
  writeFileSync(join(dir, 'verify.py'), block('verify:python'));
  const input = cases.map((c) => ({
    body: Buffer.from(c.body, 'utf8').toString('hex'),
    header: c.header,
    secret: c.secret,
    now: c.now ?? null,
  }));
  const run = spawnSync('python3', ['-c', PYTHON_DRIVER, dir], {
    input: JSON.stringify(input),
    encoding: 'utf8',
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    timeout: 30_000,
  });
  if (run.error?.code === 'ENOENT') {
    assert.fail(
      'python3 is not on PATH, so the Python snippet of docs/webhooks.md cannot be checked. ' +
        'Install Python 3 (e.g. apt-get install python3); this test never skips.',
    );
  }
  assert.ifError(run.error);
  assert.equal(run.status, 0, `python3 failed:\n${run.stderr}`);
  const results = JSON.parse(run.stdout);
  assert.equal(results.length, cases.length);

  for (const [i, c] of cases.entries()) {
    await t.test(c.name, () => assert.equal(results[i], c.want));
  }
});
