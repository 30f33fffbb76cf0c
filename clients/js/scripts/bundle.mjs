// The browser files, from dist/index.js (run after tsc):
// - dist/chatty-client.js: the ES module as it is (it imports nothing at load time), for
//   <script type="module"> and `import { ChattyClient } from '/static/chatty-client.js'`.
// - dist/chatty-client.global.js: the same code as a classic script that sets
//   `globalThis.Chatty` ({ChattyClient, ChattyError, connect, …}).
// Either copy is one file; `out=<dir>` writes them to another directory too.
// The chat page's copy: `web=<file>` writes the module there with a header saying where it
// comes from (`npm run web`); `check-web=<file>` exits 1 when that copy is not what this build
// would write (CI runs it, so the committed page never drifts from the package).

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = readFileSync(path.join(root, 'dist', 'index.js'), 'utf8');

// A static import or re-export would make the file depend on another one.
const lines = src.split('\n');
const bad = lines.filter((l) => /^\s*import\s[^(]/.test(l) || /^\s*export\s.*\sfrom\s/.test(l));
if (bad.length > 0) {
  console.error(`dist/index.js has static imports, the browser file would not stand alone:\n${bad.join('\n')}`);
  process.exit(1);
}

// The classic script: `export` dropped from each top-level declaration, the names collected.
const names = [];
const body = lines
  .map((l) => {
    const m = l.match(/^export (?:async )?(?:class|function\*?|const|let|var) ([A-Za-z_$][\w$]*)/);
    if (m) {
      names.push(m[1]);
      return l.replace(/^export /, '');
    }
    if (/^export\s*\{\s*\};?\s*$/.test(l)) return '';
    if (/^export\s/.test(l)) {
      console.error(`cannot turn this export into a global: ${l}`);
      process.exit(1);
    }
    return l;
  })
  .join('\n');
const global = `(function () {\n'use strict';\n${body}\nglobalThis.Chatty = { ${names.join(', ')} };\n})();\n`;

const header = '// Generated from clients/js (@chatty/client) by `npm run web`: do not edit here.\n';
const arg = (name) => process.argv.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);
const check = arg('check-web');
if (check) {
  let committed = '';
  try {
    committed = readFileSync(path.resolve(check), 'utf8');
  } catch {
    // missing: differs
  }
  if (committed !== header + src) {
    console.error(`${check} is not the build of clients/js: run \`npm run web\` in clients/js and commit it`);
    process.exit(1);
  }
  console.log(`${check} matches the build of clients/js`);
  process.exit(0);
}
const web = arg('web');
if (web) {
  writeFileSync(path.resolve(web), header + src);
  console.log(`wrote ${path.resolve(web)}`);
}

const outs = [path.join(root, 'dist')];
const extra = process.argv.find((a) => a.startsWith('out='));
if (extra) outs.push(path.resolve(extra.slice(4)));
for (const dir of outs) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'chatty-client.js'), src);
  writeFileSync(path.join(dir, 'chatty-client.global.js'), global);
  console.log(`wrote ${path.join(dir, 'chatty-client.js')} and chatty-client.global.js (exports: ${names.join(', ')})`);
}
