// Runs the real `chatty` binary for the browser test: free ports, a fresh database, logs to
// test-output/e2e/, restart on the same port and database, and no process left behind.

import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const OUT = path.join(ROOT, 'test-output', 'e2e');
export const API_KEY = 'e2e-api-key';

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
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const c of live) c.kill('SIGKILL');
    process.exit(130);
  });
}

export class Server {
  /** `extra`: more CHATTY__* settings for this server. */
  constructor(extra = {}) {
    this.extra = extra;
    this.bin =
      process.env.CHATTY_BIN ??
      path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target'), 'release', 'chatty');
    // A PostgreSQL server URL without a database name (a fresh database is created per run),
    // or `sqlite` for the embedded store in a fresh file.
    const base = (process.env.CHATTY_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432').replace(/\/+$/, '');
    this.dbName = `chatty_e2e_${randomBytes(6).toString('hex')}`;
    if (base === 'sqlite') {
      this.sqlitePath = path.join(OUT, `${this.dbName}.db`);
    } else {
      this.dbBase = base;
      this.dbUrl = `${base}/${this.dbName}`;
    }
    this.child = null;
    this.runs = 0;
  }

  async init() {
    if (!existsSync(this.bin)) throw new Error(`${this.bin} is missing: cargo build --release -p chatty`);
    this.port = await freePort();
    this.metricsPort = await freePort();
    this.origin = `http://127.0.0.1:${this.port}`;
    this.log = createWriteStream(path.join(OUT, 'server.log'), { flags: 'w' });
  }

  env() {
    const env = {};
    // Only our settings: none inherited from the shell, so every run is the same.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CHATTY')) env[k] = v;
    return {
      ...env,
      ...(this.dbUrl ? { CHATTY__DATABASE__URL: this.dbUrl } : { CHATTY__DATABASE__SQLITE_PATH: this.sqlitePath }),
      CHATTY__SERVER__HOST: '127.0.0.1',
      CHATTY__SERVER__PORT: String(this.port),
      CHATTY__SERVER__METRICS_PORT: String(this.metricsPort),
      CHATTY__AUTH__ALLOWED_ORIGINS: this.origin,
      CHATTY__AUTH__API_KEY: API_KEY,
      CHATTY__AUTH__DEV_TOKENS: 'true',
      CHATTY__PRESENCE__GRACE_MS: '500',
      CHATTY__SERVER__SHUTDOWN_TIMEOUT_MS: '10000',
      CHATTY__LOG__FORMAT: 'json',
      CHATTY__LOG__LEVEL: 'info',
      ...this.extra,
    };
  }

  /** Start the binary and wait until /readyz answers 200. */
  async start({ timeoutMs = 60000 } = {}) {
    this.runs += 1;
    this.log.write(`\n===== start #${this.runs} at ${new Date().toISOString()} =====\n`);
    const child = spawn(this.bin, ['serve'], { cwd: ROOT, env: this.env(), stdio: ['ignore', 'pipe', 'pipe'] });
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
    const deadline = Date.now() + timeoutMs;
    let died = false;
    child.exited.then(() => (died = true));
    while (Date.now() < deadline) {
      if (died) throw new Error(`chatty exited during startup: see ${path.join(OUT, 'server.log')}`);
      try {
        const res = await fetch(`${this.origin}/readyz`, { signal: AbortSignal.timeout(1000) });
        if (res.status === 200) return;
      } catch {}
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`chatty not ready within ${timeoutMs} ms: see ${path.join(OUT, 'server.log')}`);
  }

  /** SIGTERM (a graceful drain) and wait for the process to exit. */
  async stop({ timeoutMs = 30000 } = {}) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return null;
    child.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
    const r = await Promise.race([child.exited, timeout]);
    clearTimeout(timer);
    if (r === 'timeout') {
      child.kill('SIGKILL');
      await child.exited;
      throw new Error(`chatty did not exit within ${timeoutMs} ms of SIGTERM`);
    }
    return r;
  }

  kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }

  /** Drop the test database (best effort: PostgreSQL needs psql for it). */
  async dropDatabase() {
    if (this.sqlitePath) {
      for (const ext of ['', '-wal', '-shm']) rmSync(this.sqlitePath + ext, { force: true });
      return;
    }
    await new Promise((resolve) =>
      execFile(
        'psql',
        [`${this.dbBase}/postgres`, '-qc', `DROP DATABASE IF EXISTS "${this.dbName}" WITH (FORCE)`],
        { timeout: 10000 },
        () => resolve(),
      ),
    );
  }

  /** The sum of a Prometheus counter's series whose labels include `labels`. */
  async metric(name, labels = {}) {
    const res = await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) });
    const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
    let sum = 0;
    for (const line of (await res.text()).split('\n')) {
      const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/);
      if (m && m[1] === name && want.every((w) => (m[2] ?? '').includes(w))) sum += Number(m[3]);
    }
    return sum;
  }

  /** Post a message through the backend HTTP API (to seed history fast). */
  async post(room, { from, cid, body }) {
    const res = await fetch(`${this.origin}/api/v1/rooms/${room}/messages`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ from, cid, body }),
      signal: AbortSignal.timeout(10000),
    });
    if (res.status !== 201) throw new Error(`POST messages: ${res.status} ${await res.text()}`);
    return res.json();
  }
}
