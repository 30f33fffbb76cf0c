// The real `chatty` binary for the tests: free ports, the embedded SQLite store in a temp
// file, the repository's config (local: dev tokens on, well-known secrets), a restart on the
// same port and database, and no process left behind. Modelled on e2e/server.mjs.

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(PKG, '..', '..');
// CHATTY_BIN, else the release build of this repository (`cargo build --release -p chatty`).
export const BIN =
  process.env.CHATTY_BIN ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'release', 'chatty');
// From config/local.toml.
export const JWT_SECRET = 'local-development-secret-change-me';
export const API_KEY = 'local-api-key';

/** A port nobody listens on right now. */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

const live = new Set();
// Whatever happens to the test process, the servers die with it.
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** An HS256 JWT signed with the local secret. `ttlS` may be fractional; exp is whole seconds. */
export function mintToken(sub, { name = sub, ttlS = 3600, exp, roles } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const claims = { sub, name, exp: exp ?? Math.floor(Date.now() / 1000 + ttlS) };
  if (roles) claims.roles = roles;
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = createHmac('sha256', JWT_SECRET).update(head).digest('base64url');
  return `${head}.${sig}`;
}

export class Server {
  /** `extra`: more CHATTY__* settings; `name`: the log is test-output/<name>.server.log. */
  constructor(extra = {}, name = 'test') {
    this.extra = extra;
    this.bin = BIN;
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'chatty-sdk-'));
    this.sqlitePath = path.join(this.dir, `chatty-${randomBytes(4).toString('hex')}.db`);
    mkdirSync(path.join(PKG, 'test-output'), { recursive: true });
    this.logPath = path.join(PKG, 'test-output', `${name}.server.log`);
    this.child = null;
    this.runs = 0;
  }

  async init() {
    if (!existsSync(this.bin)) throw new Error(`${this.bin} is missing: set CHATTY_BIN to the chatty binary`);
    this.port = await freePort();
    this.metricsPort = await freePort();
    this.origin = `http://127.0.0.1:${this.port}`;
    this.wsUrl = `ws://127.0.0.1:${this.port}/ws`;
    this.log = createWriteStream(this.logPath, { flags: 'w' });
    return this;
  }

  env() {
    const env = {};
    // Only our settings: none inherited from the shell, so every run is the same.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CHATTY')) env[k] = v;
    return {
      ...env,
      CHATTY_CONFIG_DIR: path.join(REPO, 'config'),
      CHATTY__DATABASE__URL: '',
      CHATTY__DATABASE__SQLITE_PATH: this.sqlitePath,
      CHATTY__REDIS__URL: '',
      CHATTY__SERVER__HOST: '127.0.0.1',
      CHATTY__SERVER__PORT: String(this.port),
      CHATTY__SERVER__METRICS_PORT: String(this.metricsPort),
      CHATTY__PRESENCE__GRACE_MS: '300',
      CHATTY__SERVER__SHUTDOWN_TIMEOUT_MS: '5000',
      CHATTY__LOG__FORMAT: 'json',
      CHATTY__LOG__LEVEL: 'info',
      ...this.extra,
    };
  }

  /** Start the binary and wait until /readyz answers 200. */
  async start({ timeoutMs = 30000 } = {}) {
    this.runs += 1;
    this.log.write(`\n===== start #${this.runs} at ${new Date().toISOString()} =====\n`);
    const child = spawn(this.bin, ['serve'], { cwd: this.dir, env: this.env(), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    live.add(child);
    child.stdout.pipe(this.log, { end: false });
    child.stderr.pipe(this.log, { end: false });
    child.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.log.write(`===== exit code=${code} signal=${signal} =====\n`);
        resolve({ code, signal });
      }),
    );
    let died = false;
    child.exited.then(() => (died = true));
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (died) throw new Error(`chatty exited during startup: see ${this.logPath}`);
      try {
        const res = await fetch(`${this.origin}/readyz`, { signal: AbortSignal.timeout(1000) });
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`chatty not ready within ${timeoutMs} ms: see ${this.logPath}`);
  }

  /** SIGKILL (a crash) and wait for the process to be gone. */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await child.exited;
  }

  /** SIGTERM (a graceful drain) and wait for the exit. */
  async stop({ timeoutMs = 15000 } = {}) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await child.exited;
    clearTimeout(timer);
  }

  /** Stop, and remove the database (the log stays in test-output/). */
  async dispose() {
    await this.stop();
    await new Promise((r) => this.log.end(r));
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A call to the backend HTTP API with the API key. Resolves {status, body}. */
  async api(method, pathname, body) {
    const res = await fetch(`${this.origin}${pathname}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = text;
    }
    return { status: res.status, body: parsed };
  }

  /** A token from the server's own dev endpoint (POST /dev/token). */
  async devToken(name) {
    const res = await fetch(`${this.origin}/dev/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name }),
      signal: AbortSignal.timeout(10000),
    });
    if (res.status !== 200) throw new Error(`POST /dev/token: ${res.status} ${await res.text()}`);
    return res.json();
  }
}
