// web/chatty.js against a scripted fake socket: the recovery paths a browser run rarely hits
// (duplicates, resends with the same cid, a truncated replay paged in with history, fatal closes).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChattyClient } from '../web/chatty.js';

// A token whose payload says sub=alice (the signature is not checked by the client).
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const TOKEN = `${b64({ alg: 'HS256' })}.${b64({ sub: 'alice', exp: 9e9 })}.sig`;

class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  // The server side of the script.
  accept() {
    this.readyState = 1;
    this.onopen?.();
  }
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  hangUp(code) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
  take(type) {
    const out = this.sent.filter((f) => f.type === type);
    this.sent = this.sent.filter((f) => f.type !== type);
    return out;
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));
async function nextSocket(n) {
  for (let i = 0; i < 500 && FakeSocket.all.length < n; i++) await new Promise((r) => setTimeout(r, 2));
  assert.equal(FakeSocket.all.length, n, 'the client opened a new socket');
  return FakeSocket.all[n - 1];
}

function client() {
  FakeSocket.all = [];
  const c = new ChattyClient({ url: 'ws://chat.test/ws', token: TOKEN, WebSocket: FakeSocket, minBackoffMs: 1, maxBackoffMs: 5 });
  const seen = { messages: [], states: [], failed: [], presence: [] };
  c.on('message', (m) => seen.messages.push(m));
  c.on('state', (s) => seen.states.push(s.state));
  c.on('failed', (f) => seen.failed.push(f));
  c.on('presence', (p) => seen.presence.push(p));
  return { c, seen };
}

const msg = (seq, extra = {}) => ({ type: 'message', room: 'r', seq, from: 'bob', name: 'bob', cid: `b${seq}`, body: `m${seq}`, ts: seq, ...extra });

test('joins, dedupes by seq, reconciles its own sends, and recovers with since after a reconnect', async () => {
  const { c, seen } = client();
  c.connect();
  await tick();
  let ws = await nextSocket(1);
  assert.equal(ws.protocol, 'chatty.v1.json');
  assert.match(ws.url, /access_token=/);
  ws.accept();
  assert.deepEqual(ws.take('ping').length, 1);
  const joined = c.join('r');
  const [j] = ws.take('join');
  assert.equal(j.since, undefined);
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq: 5, read: 2, presence: [{ user: 'alice', name: 'alice' }] });
  assert.equal((await joined).seq, 5);

  ws.push(msg(6));
  ws.push(msg(6)); // a duplicate
  ws.push(msg(5)); // already before our start
  const s = c.send('r', 'hello');
  const [send] = ws.take('send');
  assert.equal(send.cid, s.cid);
  ws.push({ type: 'message', room: 'r', seq: 7, from: 'alice', name: 'alice', cid: s.cid, body: 'hello', ts: 7 });
  assert.deepEqual(await s.acked, { seq: 7, ts: 7 });
  ws.push({ type: 'ack', ref: send.ref, room: 'r', cid: s.cid, seq: 7, ts: 7 }); // after the message: ignored
  assert.deepEqual(seen.messages.map((m) => [m.seq, m.own]), [[6, false], [7, true]]);

  // An unacked send, then the server goes away.
  const lost = c.send('r', 'in flight');
  const [inflight] = ws.take('send');
  ws.hangUp(1001);
  assert.equal(c.state, 'reconnecting');
  ws = await nextSocket(2);
  ws.accept();
  const [rejoin] = ws.take('join');
  assert.equal(rejoin.since, 7, 'rejoins with the last seq seen');
  assert.equal(ws.take('send').length, 0, 'sends wait for the room to be joined');
  ws.push({ type: 'joined', ref: rejoin.ref, room: 'r', seq: 9, read: 7, presence: [] });
  const [resent] = ws.take('send');
  assert.equal(resent.cid, inflight.cid, 'resent with the same cid');
  assert.equal(resent.body, 'in flight');
  // The replay: 8 (ours, committed before the crash) and 9; then the ack for the resend.
  ws.push({ ...msg(8), from: 'alice', cid: inflight.cid, body: 'in flight' });
  ws.push(msg(9));
  ws.push({ type: 'ack', ref: resent.ref, room: 'r', cid: inflight.cid, seq: 8, ts: 8 });
  assert.deepEqual(await lost.acked, { seq: 8, ts: 8 });
  assert.deepEqual(seen.messages.map((m) => m.seq), [6, 7, 8, 9]);
  assert.ok(seen.states.includes('reconnecting') && seen.states.at(-1) === 'open');
  c.close();
  assert.equal(c.state, 'closed');
});

test('a truncated replay is completed with history pages, each message once', async () => {
  const { c, seen } = client();
  c.connect();
  await tick();
  let ws = await nextSocket(1);
  ws.accept();
  c.join('r');
  let [j] = ws.take('join');
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq: 10, read: 0, presence: [] });
  ws.hangUp(1006);
  ws = await nextSocket(2);
  ws.accept();
  [j] = ws.take('join');
  assert.equal(j.since, 10);
  // 500 missed, the server replays only the newest 100 (401..500).
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq: 500, read: 0, presence: [], replay_truncated: true });
  for (let s = 401; s <= 500; s++) ws.push(msg(s));
  // The client pages (10, 401) with history, newest page first.
  for (let page = 0; page < 5; page++) {
    await tick();
    const [h] = ws.take('history');
    if (!h) break;
    const before = h.before;
    const from = Math.max(1, before - h.limit);
    const messages = [];
    for (let s = from; s < before; s++) messages.push({ room: 'r', seq: s, from: 'bob', name: 'bob', cid: `b${s}`, body: `m${s}`, ts: s });
    ws.push({ type: 'history', ref: h.ref, room: 'r', messages, more: from > 1 });
  }
  await tick();
  const seqs = seen.messages.map((m) => m.seq).sort((a, b) => a - b);
  assert.deepEqual(seqs, Array.from({ length: 490 }, (_, i) => i + 11), 'every missed message once');
  assert.ok(seen.messages.filter((m) => m.recovered).length === 390);
  c.close();
});

test('presence diffs are set operations; errors fail or retry sends; fatal closes stop', async () => {
  const { c, seen } = client();
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  c.join('r');
  const [j] = ws.take('join');
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq: 0, read: 0, presence: [{ user: 'alice', name: 'alice' }] });
  ws.push({ type: 'presence', room: 'r', joins: [{ user: 'bob', name: 'Bob' }, { user: 'alice', name: 'alice' }], leaves: [] });
  ws.push({ type: 'presence', room: 'r', joins: [], leaves: [{ user: 'carol' }] });
  assert.deepEqual(seen.presence.at(-1).users.map((u) => u.user).sort(), ['alice', 'bob']);

  const big = c.send('r', 'x');
  const [s1] = ws.take('send');
  ws.push({ type: 'error', ref: s1.ref, code: 'too_large', message: 'too big' });
  await assert.rejects(big.acked, { code: 'too_large' });
  assert.equal(seen.failed.length, 1);

  ws.hangUp(1008); // a fixed token that the server refused: stop
  assert.equal(c.state, 'closed');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(FakeSocket.all.length, 1, 'no reconnect after 1008 with a fixed token');
});

test('big rooms: a truncated joined keeps the count through diffs, pages are requested, counts-only joins ask for counts', async () => {
  const { c, seen } = client();
  const counts = [];
  c.on('presenceCount', (p) => counts.push(p));
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  const joined = c.join('big');
  const [j] = ws.take('join');
  assert.equal(j.presence, undefined, 'the default join asks for diffs');
  ws.push({
    type: 'joined', ref: j.ref, room: 'big', seq: 0, read: 0,
    presence: [{ user: 'alice', name: 'alice' }], presence_count: 1500, presence_truncated: true,
  });
  const info = await joined;
  assert.equal(info.presenceCount, 1500);
  assert.equal(info.presenceTruncated, true);
  ws.push({ type: 'presence', room: 'big', joins: [{ user: 'zed', name: 'Zed' }], leaves: [{ user: 'bob' }, { user: 'cy' }] });
  assert.equal(seen.presence.at(-1).count, 1499, 'one in, two out');
  assert.equal(seen.presence.at(-1).truncated, true);

  const page = c.presencePage('big', { after: 'alice', limit: 2 });
  const [q] = ws.take('presence');
  assert.deepEqual({ room: q.room, after: q.after, limit: q.limit }, { room: 'big', after: 'alice', limit: 2 });
  ws.push({ type: 'presence_page', ref: q.ref, room: 'big', users: [{ user: 'b', name: 'B' }, { user: 'c', name: 'C' }], next: 'c' });
  assert.deepEqual(await page, { users: [{ user: 'b', name: 'B' }, { user: 'c', name: 'C' }], next: 'c' });

  c.join('huge', { presence: 'count' });
  const [h] = ws.take('join');
  assert.equal(h.presence, 'count');
  ws.push({ type: 'joined', ref: h.ref, room: 'huge', seq: 0, read: 0, presence: [{ user: 'alice', name: 'alice' }], presence_count: 9000, presence_truncated: true });
  ws.push({ type: 'presence_count', room: 'huge', count: 9001 });
  assert.deepEqual(counts, [{ room: 'huge', count: 9001 }]);
});

test('removed forgets the room and fails its sends; moderation requests carry the reply; 4003 stops', async () => {
  const { c, seen } = client();
  const removed = [];
  c.on('removed', (r) => removed.push(r));
  c.connect();
  await tick();
  let ws = await nextSocket(1);
  ws.accept();
  c.join('r');
  let [j] = ws.take('join');
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq: 0, read: 0, presence: [], role: 'moderator' });
  await tick();
  assert.equal(c.canModerate('r'), true, 'a moderator may moderate');
  assert.equal(c.canModerate('other'), false);

  // Kick: the request, then the reply resolves it; a forbidden one rejects with its code.
  const kicked = c.kick('r', 'bob', { ban: true });
  const [k] = ws.take('kick');
  assert.deepEqual([k.room, k.user, k.ban], ['r', 'bob', true]);
  ws.push({ type: 'kicked', ref: k.ref, room: 'r', user: 'bob' });
  await kicked;
  const refused = c.unban('r', 'owner');
  const [u] = ws.take('unban');
  ws.push({ type: 'error', ref: u.ref, code: 'forbidden', message: 'no' });
  await assert.rejects(refused, { code: 'forbidden' });

  // Removed: the unacked send fails, the room is gone, a reconnect does not rejoin it.
  const s = c.send('r', 'too late');
  ws.take('send');
  ws.push({ type: 'removed', room: 'r', reason: 'kicked' });
  await assert.rejects(s.acked, { code: 'removed' });
  assert.deepEqual(removed, [{ room: 'r', reason: 'kicked' }]);
  assert.deepEqual(c.joinedRooms, []);
  assert.equal(seen.failed.at(-1).code, 'removed');
  ws.hangUp(1001);
  ws = await nextSocket(2);
  ws.accept();
  assert.equal(ws.take('join').length, 0, 'no rejoin of a room the client was removed from');

  // Disconnected by the backend: closed, no reconnect.
  ws.hangUp(4003);
  assert.equal(c.state, 'closed');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(FakeSocket.all.length, 2, 'no reconnect after 4003');
});

test('a token function is refreshed on the open socket before it expires', async () => {
  FakeSocket.all = [];
  const now = () => Math.floor(Date.now() / 1000);
  let issued = 0;
  // Tokens that expire 2 s after issue; with a 1.5 s lead the refresh comes halfway (~1 s).
  const token = async () => {
    issued += 1;
    return `${b64({ alg: 'HS256' })}.${b64({ sub: 'alice', exp: now() + 2, roles: issued > 1 ? ['admin'] : [] })}.sig`;
  };
  const c = new ChattyClient({ url: 'ws://chat.test/ws', token, WebSocket: FakeSocket, refreshLeadMs: 1500 });
  const refreshed = [];
  c.on('refreshed', (r) => refreshed.push(r));
  c.connect();
  const ws = await nextSocket(1);
  ws.accept();
  assert.deepEqual(c.roles, []);
  let f;
  for (let i = 0; i < 300 && !f; i++) {
    await new Promise((r) => setTimeout(r, 10));
    [f] = ws.take('refresh');
  }
  assert.ok(f, 'a refresh was sent before the token expired');
  assert.equal(issued, 2, 'with a newly issued token');
  ws.push({ type: 'refreshed', ref: f.ref, exp: now() + 2 });
  await tick();
  assert.equal(refreshed.length, 1);
  // The new token is refreshed in its turn, halfway through its life: not at once, in a loop.
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(ws.take('refresh').length, 0, 'no refresh storm');
  assert.equal(issued, 2);
  assert.deepEqual(c.roles, ['admin'], 'the new token\'s roles apply');
  c.close();
});
