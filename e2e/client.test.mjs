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
  c.close(); // else its heartbeat keeps the test process alive for 40 s
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

// ---- the message lifecycle (v1.1): meta, edit, delete, react, rev recovery ---------------------

/** A client joined to room 'r' (head `seq`, revision `rev`), with the events it emitted. */
async function joinedClient({ seq = 5, rev = 0 } = {}) {
  const { c, seen } = client();
  seen.updates = [];
  seen.errors = [];
  c.on('update', (u) => seen.updates.push(u));
  c.on('error', (e) => seen.errors.push(e));
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  const joined = c.join('r');
  const [j] = ws.take('join');
  assert.equal(j.since_rev, undefined, 'a first join has nothing to recover');
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq, rev, read: 0, presence: [] });
  await joined;
  return { c, seen, ws };
}

const upd = (seq, rev, extra = {}) => ({
  type: 'update', room: 'r', seq, rev, change: 'edit', by: 'bob', body: `m${seq} v${rev}`, edited_ts: 100 + rev, reactions: [], ...extra,
});

/** Reconnect after a drop; returns the new socket and the rejoin frame. */
async function reconnect(ws, n) {
  ws.hangUp(1006);
  const next = await nextSocket(n);
  next.accept();
  const [j] = next.take('join');
  return { ws: next, j };
}

test('meta is passed through on send, and again when the send is resent after a reconnect', async () => {
  const { c, ws } = await joinedClient();
  const meta = { reply_to: 3, mentions: ['bob'] };
  const s = c.send('r', 'a reply', { meta });
  assert.deepEqual(s.meta, meta, 'the optimistic copy carries it');
  const [f] = ws.take('send');
  assert.deepEqual(f.meta, meta);
  c.send('r', 'plain');
  const [plain] = ws.take('send');
  assert.equal('meta' in plain, false, 'no meta field when none was given');
  assert.deepEqual(c.pendingSends('r')[0].meta, meta);

  const { ws: ws2, j } = await reconnect(ws, 2);
  ws2.push({ type: 'joined', ref: j.ref, room: 'r', seq: 5, rev: 0, read: 0, presence: [] });
  const resent = ws2.take('send');
  assert.equal(resent[0].cid, f.cid);
  assert.deepEqual(resent[0].meta, meta, 'resent with the same meta');
  c.close();
});

test('edit, react and delete resolve with the updated reply and reject with the error code', async () => {
  const { c, ws } = await joinedClient();

  const edited = c.edit('r', 4, 'fixed', { meta: { reply_to: 1 } });
  const [e] = ws.take('edit');
  assert.deepEqual([e.room, e.seq, e.body, e.meta], ['r', 4, 'fixed', { reply_to: 1 }]);
  ws.push({ type: 'updated', ref: e.ref, room: 'r', seq: 4, rev: 7 });
  assert.deepEqual(await edited, { seq: 4, rev: 7 });

  c.edit('r', 4, 'again');
  const [e2] = ws.take('edit');
  assert.equal('meta' in e2, false, 'an edit without meta keeps the old meta');

  const reacted = c.react('r', 4, '👍', true);
  const unreacted = c.react('r', 4, '👍', false);
  const [r1, r2] = ws.take('react');
  assert.deepEqual([r1.seq, r1.key, r1.on, r2.on], [4, '👍', true, false]);
  ws.push({ type: 'updated', ref: r1.ref, room: 'r', seq: 4, rev: 8 });
  ws.push({ type: 'error', ref: r2.ref, code: 'not_found', message: 'no such message' });
  assert.deepEqual(await reacted, { seq: 4, rev: 8 });
  await assert.rejects(unreacted, { code: 'not_found' });

  const refused = c.delete('r', 2);
  const deleted = c.delete('r', 4);
  const [d1, d2] = ws.take('delete');
  assert.deepEqual([d1.room, d1.seq, d2.seq], ['r', 2, 4]);
  ws.push({ type: 'error', ref: d1.ref, code: 'forbidden', message: 'not yours' });
  ws.push({ type: 'updated', ref: d2.ref, room: 'r', seq: 4, rev: 9 });
  await assert.rejects(refused, { code: 'forbidden' });
  assert.deepEqual(await deleted, { seq: 4, rev: 9 });
  c.close();
});

test('an update at or below the rev already applied to its message is ignored, a newer one applied', async () => {
  const { c, seen, ws } = await joinedClient({ seq: 5, rev: 3 });
  ws.push(upd(2, 5));
  ws.push(upd(2, 5)); // the same again
  ws.push(upd(2, 4, { body: 'stale' })); // older than what was applied
  ws.push(upd(2, 7, { change: 'delete', body: undefined, deleted: true }));
  ws.push(upd(3, 6)); // another message: its own rev
  // A replayed message carries its state: an update of that same rev is nothing new.
  ws.push(msg(6, { rev: 8, body: 'm6 edited', edited_ts: 108 }));
  ws.push(upd(6, 8, { body: 'm6 edited' }));
  ws.push(upd(6, 9, { change: 'react', body: 'm6 edited', reactions: [{ key: '🎉', count: 1 }] }));
  assert.deepEqual(seen.updates.map((u) => [u.seq, u.rev, u.change]), [
    [2, 5, 'edit'],
    [2, 7, 'delete'],
    [3, 6, 'edit'],
    [6, 9, 'react'],
  ]);
  assert.equal(seen.updates[1].deleted, true);
  assert.deepEqual(seen.updates[3].reactions, [{ key: '🎉', count: 1 }]);
  assert.equal(seen.updates[0].type, undefined, 'the event is the frame without its type');
  c.close();
});

test('an update that overtakes a history page wins over the older entry in that page', async () => {
  const { c, ws } = await joinedClient({ seq: 5, rev: 3 });
  const page = c.history('r', { before: 6 });
  const [h] = ws.take('history');
  ws.push(upd(4, 6, { body: 'newer' })); // the server read the page before this change
  ws.push({ type: 'history', ref: h.ref, room: 'r', more: false, messages: [
    { seq: 4, from: 'bob', name: 'bob', cid: 'b4', body: 'older', ts: 4, rev: 5, edited_ts: 105, mine: ['👍'] },
    { seq: 5, from: 'bob', name: 'bob', cid: 'b5', body: 'm5', ts: 5 },
  ] });
  const { messages } = await page;
  assert.deepEqual([messages[0].body, messages[0].rev, messages[0].mine], ['newer', 6, ['👍']]);
  assert.equal(messages[1].body, 'm5');
  c.close();
});

test('a reconnect rejoins with since_rev = the highest rev seen in the update stream', async () => {
  const { c, ws } = await joinedClient({ seq: 5, rev: 3 });
  const s = c.send('r', 'in flight');
  ws.take('send');
  ws.push(upd(4, 4));
  ws.push(upd(2, 6));
  ws.push(upd(2, 5)); // late and stale: the watermark does not go back
  let { ws: ws2, j } = await reconnect(ws, 2);
  assert.deepEqual([j.since, j.since_rev], [5, 6], 'since and since_rev');

  // The rejoin: head 7, rev 12. Message 7 is replayed in its state of rev 12, then the updates
  // of older messages (rev 9 only) — and the socket drops before any more arrive. The
  // watermark is 9, not 12: changes 10 and 11 of older messages may still be unseen.
  ws2.push({ type: 'joined', ref: j.ref, room: 'r', seq: 7, rev: 12, read: 0, presence: [] });
  assert.equal(ws2.take('send').length, 1, 'the pending send goes out again');
  ws2.push(msg(6));
  ws2.push(msg(7, { rev: 12, edited_ts: 112 }));
  ws2.push(upd(3, 9));
  ({ ws: ws2, j } = await reconnect(ws2, 3));
  assert.deepEqual([j.since, j.since_rev], [7, 9]);
  ws2.push({ type: 'joined', ref: j.ref, room: 'r', seq: 7, rev: 12, read: 0, presence: [] });
  ws2.push(upd(5, 11));
  ({ ws: ws2, j } = await reconnect(ws2, 4));
  assert.deepEqual([j.since, j.since_rev], [7, 11]);
  s.acked.catch(() => {});
  c.close();
});

test('rev_truncated reloads what was delivered with history; the watermark waits for the reload', async () => {
  const { c, seen, ws } = await joinedClient({ seq: 5, rev: 2 });
  // The page loads the first screen (what the client has handed out: seqs 1..5).
  const first = c.history('r');
  const [h0] = ws.take('history');
  const entry = (seq, extra = {}) => ({ seq, from: 'bob', name: 'bob', cid: `b${seq}`, body: `m${seq}`, ts: seq, ...extra });
  ws.push({ type: 'history', ref: h0.ref, room: 'r', more: false, messages: [1, 2, 3, 4, 5].map((s) => entry(s)) });
  await first;
  ws.push(upd(3, 3));
  assert.equal(seen.updates.length, 1);

  // Gone long enough that the server cannot replay every change.
  let { ws: ws2, j } = await reconnect(ws, 2);
  assert.equal(j.since_rev, 3);
  ws2.push({ type: 'joined', ref: j.ref, room: 'r', seq: 6, rev: 20, rev_truncated: true, read: 0, presence: [] });
  ws2.push(msg(6)); // replayed as usual
  await tick();
  let [h] = ws2.take('history');
  assert.ok(h, 'a history reload was asked for');
  assert.deepEqual([h.before, h.limit], [6, 200], 'from the last seq known before the rejoin');
  ws2.push(upd(5, 21)); // live meanwhile
  // Dropped before the reload finishes: the watermark has not moved.
  ({ ws: ws2, j } = await reconnect(ws2, 3));
  assert.equal(j.since_rev, 3, 'no since_rev past an unfinished reload');
  ws2.push({ type: 'joined', ref: j.ref, room: 'r', seq: 6, rev: 21, rev_truncated: true, read: 0, presence: [] });
  await tick();
  const asked = ws2.take('history'); // the first reload's request, resent, and the second's
  assert.equal(asked.length, 2);
  const page = [
    entry(1),
    entry(2, { body: '', deleted: true, rev: 15, reactions: [] }),
    entry(3, { rev: 3, body: 'm3 v3', edited_ts: 103 }), // as already delivered
    entry(4, { body: 'm4 v18', edited_ts: 118, rev: 18, reactions: [{ key: '👍', count: 2 }], mine: ['👍'] }),
    entry(5, { body: 'm5 v21', rev: 21 }),
  ];
  for (const a of asked) ws2.push({ type: 'history', ref: a.ref, room: 'r', more: false, messages: page });
  await tick();
  const reloads = seen.updates.filter((u) => u.change === 'reload');
  assert.deepEqual(reloads.map((u) => [u.seq, u.rev]), [[2, 15], [4, 18]], 'the changed messages, once');
  assert.equal(reloads[0].deleted, true);
  assert.deepEqual(reloads[1].mine, ['👍']);
  ({ ws: ws2, j } = await reconnect(ws2, 4));
  assert.equal(j.since_rev, 21, 'the reload done, the watermark is the rejoin\'s rev');
  assert.deepEqual(seen.errors, []);
  c.close();
});

test('a personal event reaches the page without any room joined', async () => {
  const { c } = client();
  const events = [];
  c.on('event', (e) => events.push(e));
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  ws.push({ type: 'event', data: { kind: 'dm', from: 'bob' } });
  assert.deepEqual(events, [{ data: { kind: 'dm', from: 'bob' } }]);
  c.close();
});

test('rooms() asks for the conversation list and resolves with its rows', async () => {
  const { c } = client();
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  const list = c.rooms();
  const [ask] = ws.take('rooms');
  assert.ok(ask.ref);
  const rows = [{ room: 'dm', seq: 4, read: 1, unread: 3, ts: 9 }];
  ws.push({ type: 'rooms', ref: ask.ref, rooms: rows });
  assert.deepEqual(await list, rows);
  c.close();
});

test('an inbox frame of a room not joined is emitted as inbox (on and onInbox); a joined room\'s is ignored', async () => {
  const { c } = client();
  const viaOn = [];
  const viaOnInbox = [];
  c.on('inbox', (i) => viaOn.push(i));
  const unsubscribe = c.onInbox((i) => viaOnInbox.push(i));
  assert.equal(typeof unsubscribe, 'function');
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  const frame = { type: 'inbox', room: 'dm-alice-bob', seq: 3, from: 'bob', name: 'Bob', ts: 1700000000000 };
  ws.push(frame);
  const detail = { room: 'dm-alice-bob', seq: 3, from: 'bob', name: 'Bob', ts: 1700000000000 };
  assert.deepEqual(viaOn, [detail]);
  assert.deepEqual(viaOnInbox, [detail]);

  // Joined here (or being joined): its messages come as `message`, so an inbox frame is dropped.
  c.join('r');
  ws.push({ ...frame, room: 'r' });
  const [j] = ws.take('join');
  ws.push({ type: 'joined', ref: j.ref, room: 'r', seq: 0, read: 0, presence: [] });
  ws.push({ ...frame, room: 'r', seq: 4 });
  assert.equal(viaOn.length, 1, 'no inbox event for a joined room');
  // Malformed: ignored.
  ws.push({ type: 'inbox', seq: 5 });
  ws.push({ type: 'inbox', room: 'x', seq: 'five' });
  assert.equal(viaOn.length, 1, 'no inbox event for a malformed frame');

  // Unsubscribed: onInbox's listener hears no more; the other one still does.
  unsubscribe();
  ws.push({ ...frame, seq: 4 });
  assert.deepEqual(viaOn.map((i) => i.seq), [3, 4]);
  assert.deepEqual(viaOnInbox.map((i) => i.seq), [3]);
  unsubscribe(); // twice is harmless
  c.close();
});

test('onEvent subscribes to personal events and returns the unsubscribe', async () => {
  const { c } = client();
  const events = [];
  const off = c.onEvent((e) => events.push(e));
  c.connect();
  await tick();
  const ws = await nextSocket(1);
  ws.accept();
  ws.push({ type: 'event', data: { kind: 'dm', n: 1 } });
  off();
  ws.push({ type: 'event', data: { kind: 'dm', n: 2 } });
  assert.deepEqual(events, [{ data: { kind: 'dm', n: 1 } }]);
  c.close();
});
