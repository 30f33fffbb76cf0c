// @chatty/client against the real chatty binary (CHATTY_BIN, default target/release/chatty): both
// encodings, the v1.1 frames, a crash and restart with unacked sends, recovery order with
// since/since_rev, token refresh, the unacked cap and typed errors.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as msgpack from '@msgpack/msgpack';
import WebSocket from 'ws';

import { ChattyClient, ChattyError, CloseCode, tokenClaims } from '../dist/index.js';
import { freePort, mintToken, Server } from './server.mjs';
import { nextEvent, record, tap, until, within } from './helpers.mjs';

const T = { timeout: 30000 };
let server;
const clients = new Set();
let n = 0;
/** A name no other test uses. */
const uniq = (base) => `${base}-${process.pid}-${++n}`;

before(async () => {
  server = await new Server({ CHATTY__LIMITS__MESSAGES_PER_SECOND: '1000', CHATTY__LIMITS__MESSAGE_BURST: '1000' }, 'client').init();
  await server.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.dispose();
});

/** A client of the test server (closed after the tests); `user` gets a fresh long-lived token. */
function client(user, opts = {}) {
  const c = new ChattyClient({
    url: server.wsUrl,
    token: mintToken(user),
    WebSocket,
    minBackoffMs: 50,
    maxBackoffMs: 400,
    ...opts,
  });
  clients.add(c);
  return c;
}

/** Every message event of `c` in `room`. */
function messagesOf(c, room) {
  const list = [];
  c.on('message', (m) => m.room === room && list.push(m));
  return list;
}

for (const encoding of ['json', 'msgpack']) {
  describe(`${encoding}`, () => {
    // The first msgpack client imports @msgpack/msgpack by itself; the others are handed it.
    const codecOpt = (i) => (encoding === 'msgpack' && i > 0 ? { codec: msgpack } : {});

    test('connect, join, send and receive; own echoes once; history, read, rooms', T, async () => {
      const room = uniq(`r-${encoding}`);
      const alice = uniq('alice');
      const bob = uniq('bob');
      const a = client(alice, { encoding, ...codecOpt(0), WebSocket: tap().TapWS });
      const ta = tap();
      const b = client(bob, { encoding, ...codecOpt(1), WebSocket: ta.TapWS });
      const am = messagesOf(a, room);
      const bm = messagesOf(b, room);
      const acks = record(a, ['ack']);
      a.connect();
      b.connect();
      await within(Promise.all([a.opened(), b.opened()]), 10000, 'open');
      assert.equal(a.state, 'open');
      assert.equal(a.user, alice);

      const ja = await within(a.join(room), 5000, 'join a');
      assert.equal(ja.room, room);
      assert.equal(ja.seq, 0);
      assert.equal(ja.rejoin, false);
      assert.equal(ja.role, 'member');
      const seenBob = nextEvent(a, 'presence', (p) => p.room === room && p.users.some((u) => u.user === bob));
      const jb = await within(b.join(room), 5000, 'join b');
      assert.ok(jb.presence.some((u) => u.user === alice), 'bob sees alice present');
      assert.equal(jb.presenceCount, 2);
      await seenBob;

      const copy = a.send(room, 'hello 👋', { meta: { reply_to: 0, tags: ['x'] } });
      assert.equal(copy.pending, true);
      assert.equal(copy.from, alice);
      assert.match(copy.cid, /^[A-Za-z0-9._:-]{1,64}$/);
      const { seq, ts } = await within(copy.acked, 5000, 'ack');
      assert.equal(seq, 1);
      assert.ok(ts > 1.6e12);
      await until(() => bm.length === 1 && am.length === 1, 5000, 'both got the message');
      assert.deepEqual(
        { body: bm[0].body, from: bm[0].from, cid: bm[0].cid, seq: bm[0].seq, own: bm[0].own, meta: bm[0].meta },
        { body: 'hello 👋', from: alice, cid: copy.cid, seq: 1, own: false, meta: { reply_to: 0, tags: ['x'] } },
      );
      assert.equal(am[0].own, true);
      assert.equal(am[0].cid, copy.cid);

      // More sends, both ways; each message once, in order, for both.
      const sends = [];
      for (let i = 0; i < 5; i++) sends.push(a.send(room, `a${i}`), b.send(room, `b${i}`));
      await within(Promise.all(sends.map((s) => s.acked)), 5000, 'acks');
      await until(() => am.length === 11 && bm.length === 11, 5000, 'every message');
      assert.deepEqual(am.map((m) => m.seq), [...Array(11).keys()].map((i) => i + 1));
      assert.deepEqual(bm.map((m) => m.seq), am.map((m) => m.seq));
      assert.equal(am.filter((m) => m.own).length, 6);
      assert.deepEqual(a.pendingSends(), []);
      // The own echo and the ack settle one pending copy: an ack event only when it came first.
      assert.ok(acks.length <= 6);

      // The wire: the negotiated subprotocol and the frame kinds of the encoding.
      const ws = ta.last();
      assert.equal(ws.protocol, `chatty.v1.${encoding}`);
      if (encoding === 'msgpack') {
        assert.ok(ws.binaryOut > 0 && ws.textOut === 0, 'every frame sent is binary');
        assert.ok(ws.binaryIn > 0 && ws.textIn === 0, 'every frame received is binary');
      } else {
        assert.ok(ws.textOut > 0 && ws.binaryOut === 0);
        assert.ok(ws.textIn > 0 && ws.binaryIn === 0);
      }

      const h = await within(b.history(room, { limit: 3 }), 5000, 'history');
      assert.deepEqual(h.messages.map((m) => m.seq), [9, 10, 11]);
      assert.equal(h.more, true);
      assert.equal(await b.read(room, 11), 11);
      assert.equal(await b.read(room, 3), 11, 'the marker never moves back');
      const list = await b.rooms();
      const row = list.find((r) => r.room === room);
      assert.deepEqual({ seq: row.seq, read: row.read, unread: row.unread }, { seq: 11, read: 11, unread: 0 });
      assert.ok(typeof row.ts === 'number');
      assert.ok((await b.ping()) >= 0);

      // Typing reaches the other user only.
      const typing = nextEvent(b, 'typing', (t) => t.room === room);
      a.typing(room);
      assert.deepEqual(await typing, { room, user: alice });

      // Leave: bob's live messages of the room stop; alice sees bob go.
      const gone = nextEvent(a, 'presence', (p) => p.room === room && p.leaves.some((l) => l.user === bob));
      const lastRead = b.read(room, 11); // on its way when the room is left: still answered
      await b.leave(room);
      assert.equal(await lastRead, 11);
      assert.deepEqual(b.joinedRooms, []);
      await within(gone, 5000, 'presence leave');
      a.close();
      b.close();
    });

    test('edits, deletes and reactions: updated replies and update events with the whole state', T, async () => {
      const room = uniq(`life-${encoding}`);
      const alice = uniq('alice');
      const a = client(alice, { encoding, ...codecOpt(1) });
      const b = client(uniq('bob'), { encoding, ...codecOpt(1) });
      const ua = record(a, ['update']);
      const ub = record(b, ['update']);
      a.connect();
      b.connect();
      await a.join(room);
      await b.join(room);
      const { seq } = await a.send(room, 'first').acked;
      const e = await a.edit(room, seq, 'first, edited', { meta: { v: 2 } });
      assert.equal(e.seq, seq);
      assert.ok(e.rev >= 1);
      const r = await b.react(room, seq, '🎉');
      assert.equal(r.rev, e.rev + 1);
      const again = await b.react(room, seq, '🎉');
      assert.equal(again.rev, r.rev, 'a repeated reaction changes nothing');
      await until(() => ub.length === 2 && ua.length === 2, 5000, 'updates');
      const [, edit] = ub[0];
      assert.equal(edit.change, 'edit');
      assert.equal(edit.body, 'first, edited');
      assert.deepEqual(edit.meta, { v: 2 });
      assert.equal(edit.by, alice);
      assert.ok(edit.edited_ts > 0);
      const [, react] = ub[1];
      assert.equal(react.change, 'react');
      assert.deepEqual(react.reactions, [{ key: '🎉', count: 1 }]);
      assert.equal(react.body, 'first, edited', 'an update carries the whole state');
      const d = await a.delete(room, seq);
      assert.equal(d.rev, r.rev + 1);
      await until(() => ub.length === 3, 5000, 'delete update');
      const [, del] = ub[2];
      assert.equal(del.deleted, true);
      assert.equal(del.body, undefined);
      const h = await b.history(room);
      assert.equal(h.messages[0].deleted, true);
      assert.equal(h.messages[0].body, '');
      await assert.rejects(a.edit(room, seq, 'no'), (err) => err instanceof ChattyError && err.code === 'forbidden');
      await assert.rejects(a.edit(room, 999, 'no'), (err) => err instanceof ChattyError && err.code === 'not_found');
      a.close();
      b.close();
    });

    test('presence: counts-only joins, and paging the list', T, async () => {
      const room = uniq(`pres-${encoding}`);
      const users = [uniq('u'), uniq('u'), uniq('u')];
      const cs = users.map((u) => client(u, { encoding, ...codecOpt(1) }));
      for (const c of cs) c.connect();
      const counter = client(uniq('counter'), { encoding, ...codecOpt(1) }).connect();
      const j = await counter.join(room, { presence: 'count' });
      assert.equal(j.presenceCount, 1);
      const diffs = record(counter, ['presence']);
      const counted = nextEvent(counter, 'presenceCount', (p) => p.room === room && p.count === 4, 8000);
      for (const c of cs) await c.join(room);
      assert.equal((await counted).count, 4);
      assert.equal(diffs.length, 0, 'no presence diffs in count mode');
      assert.equal(counter.presence(room).count, 4);

      // Page through everyone present, two at a time.
      const seen = [];
      let after;
      for (let i = 0; i < 10; i++) {
        const page = await cs[0].presencePage(room, { after, limit: 2 });
        assert.ok(page.users.length <= 2);
        seen.push(...page.users.map((u) => u.user));
        if (page.next === null) break;
        after = page.next;
      }
      assert.equal(seen.length, 4);
      assert.deepEqual([...seen].sort(), seen, 'user id order');
      for (const c of [...cs, counter]) c.close();
    });

    test('inbox for a private room not joined, personal events, kick and disconnect', T, async () => {
      const room = uniq(`priv-${encoding}`);
      const alice = uniq('alice');
      const bob = uniq('bob');
      assert.equal((await server.api('PUT', `/api/v1/rooms/${room}`, { private: true })).status, 204);
      for (const u of [alice, bob]) assert.equal((await server.api('PUT', `/api/v1/rooms/${room}/members/${u}`)).status, 204);
      const a = client(alice, { encoding, ...codecOpt(1) }).connect();
      const b = client(bob, { encoding, ...codecOpt(1) }).connect();
      await within(Promise.all([a.opened(), b.opened()]), 5000, 'open');
      await b.join(room);
      const inbox = nextEvent(a, 'inbox', (i) => i.room === room);
      const { seq } = await b.send(room, 'psst').acked;
      assert.deepEqual(await inbox, { room, seq, from: bob, name: bob, ts: (await inbox).ts });
      const list = await a.rooms();
      assert.ok(list.some((r) => r.room === room && r.unread === 1), 'the conversation list counts it');

      const ev = nextEvent(a, 'event');
      const res = await server.api('POST', `/api/v1/users/${alice}/events`, { data: { kind: 'ping', n: 1 } });
      assert.equal(res.status, 202);
      assert.deepEqual((await ev).data, { kind: 'ping', n: 1 });

      // The backend kicks bob: his client forgets the room.
      const removed = nextEvent(b, 'removed');
      assert.equal((await server.api('POST', `/api/v1/rooms/${room}/kick`, { user: bob })).status, 204);
      assert.deepEqual(await removed, { room, reason: 'kicked' });
      assert.deepEqual(b.joinedRooms, []);

      // The backend disconnects alice: 4003, and the client stops.
      const closed = nextEvent(a, 'state', (s) => s.state === 'closed');
      assert.equal((await server.api('POST', `/api/v1/users/${alice}/disconnect`)).status, 204);
      const s = await closed;
      assert.equal(s.code, CloseCode.DISCONNECTED);
      assert.equal(s.reason, 'disconnected');
      b.close();
    });

    test('a crash and restart: unacked sends go again with the same cid, stored once; nothing lost or repeated', T, async () => {
      const room = uniq(`crash-${encoding}`);
      const alice = uniq('alice');
      const ta = tap();
      const a = client(alice, { encoding, ...codecOpt(1), WebSocket: ta.TapWS }).connect();
      const b = client(uniq('bob'), { encoding, ...codecOpt(1) }).connect();
      const am = messagesOf(a, room);
      const bm = messagesOf(b, room);
      await a.join(room);
      await b.join(room);
      const first = a.send(room, 'before the crash');
      assert.equal((await first.acked).seq, 1);
      await until(() => am.length === 1, 5000, 'the echo of the first'); // the ack may come first

      // The next send is committed, but its ack (and echo) never reach the client: the
      // server dies before the client hears of it.
      ta.last().hold = true;
      const lost = a.send(room, 'committed, ack lost');
      await until(async () => {
        const h = await server.api('GET', `/api/v1/rooms/${room}/messages`);
        return h.body.messages.some((m) => m.cid === lost.cid);
      }, 5000, 'the send committed');
      const down = nextEvent(a, 'disconnect');
      await server.kill();
      await down;
      assert.equal(a.state, 'reconnecting');
      // Sends while the server is down wait, unsent.
      const queued = a.send(room, 'sent while down');
      assert.deepEqual(a.pendingSends(room).map((p) => p.cid), [lost.cid, queued.cid]);

      await server.start();
      const [l, q] = await within(Promise.all([lost.acked, queued.acked]), 15000, 'acks after the restart');
      assert.equal(l.seq, 2);
      assert.equal(q.seq, 3);
      // The same cid went out on both sockets, and the server answered the second with the
      // original seq (it stored nothing new).
      const sent = ta.sockets.flatMap((s, i) => s.out.filter((f) => f.type === 'send' && f.cid === lost.cid).map(() => i));
      assert.equal(sent.length, 2, 'resent once');
      assert.notEqual(sent[0], sent[1], 'on the new socket');
      // What was acked before the crash is not sent again.
      assert.ok(
        !ta.last().out.some((f) => f.type === 'send' && f.cid === first.cid),
        'an acked send is never resent',
      );
      const acksOnNew = await until(
        () => ta.last().in.filter((f) => f.type === 'ack' && f.cid === lost.cid),
        5000,
        'the duplicate ack',
      );
      assert.equal(acksOnNew[0].seq, 2, 'the duplicate is acked with the original seq');

      await until(() => am.length === 3 && bm.length === 3, 10000, 'every message');
      assert.deepEqual(am.map((m) => m.seq), [1, 2, 3]);
      assert.deepEqual(bm.map((m) => m.body), ['before the crash', 'committed, ack lost', 'sent while down']);
      const h = await server.api('GET', `/api/v1/rooms/${room}/messages`);
      assert.deepEqual(h.body.messages.map((m) => m.cid), [first.cid, lost.cid, queued.cid], 'each stored once');
      // A rejoin with since: the first join frame of the new socket says what was seen.
      const rejoin = ta.last().out.find((f) => f.type === 'join');
      assert.equal(rejoin.since, 1);
      a.close();
      b.close();
    });

    test('recovery: missed messages in seq order, then missed changes (since_rev), then live', T, async () => {
      const room = uniq(`rec-${encoding}`);
      const ta = tap();
      let gate = Promise.resolve();
      let openGate = () => {};
      const alice = uniq('alice');
      const a = client(alice, {
        encoding,
        ...codecOpt(1),
        WebSocket: ta.TapWS,
        token: async () => {
          await gate;
          return mintToken(alice);
        },
      }).connect();
      const b = client(uniq('bob'), { encoding, ...codecOpt(1) }).connect();
      const log = record(a, ['joined', 'message', 'update']);
      await a.join(room);
      await b.join(room);
      const early = [];
      for (let i = 1; i <= 3; i++) early.push((await b.send(room, `b${i}`).acked).seq);
      // One change alice sees live, so that she rejoins with a since_rev.
      const seen = await b.react(room, early[0], '👀');
      await until(() => log.filter(([t]) => t === 'update').length === 1 && log.filter(([t]) => t === 'message').length === 3);

      // Alice goes away and cannot come back until the gate opens.
      gate = new Promise((r) => (openGate = r));
      const away = nextEvent(a, 'disconnect');
      ta.last().terminate();
      await away;
      const missed = [];
      for (let i = 4; i <= 8; i++) missed.push((await b.send(room, `b${i}`).acked).seq);
      await b.edit(room, early[0], 'b1 edited once');
      await b.edit(room, early[0], 'b1 edited twice');
      await b.react(room, early[1], '👍');
      await b.delete(room, early[2]);
      await b.edit(room, missed[1], 'b5 edited');

      // Back, with live messages racing the rejoin.
      openGate();
      const live = [];
      for (let i = 9; i <= 11; i++) live.push(b.send(room, `b${i}`));
      await Promise.all(live.map((s) => s.acked));
      await until(
        () => log.some(([t, m]) => t === 'message' && m.body === 'b11') && log.filter(([t]) => t === 'update').length === 4,
        10000,
        'alice caught up',
      );

      const join = ta.last().out.find((f) => f.type === 'join');
      assert.equal(join.since, 3);
      assert.equal(join.since_rev, seen.rev);
      const after = log.slice(log.findIndex(([t, d]) => t === 'joined' && d.rejoin));
      const head = after[0][1].seq;
      const seqs = log.filter(([t]) => t === 'message').map(([, m]) => m.seq);
      assert.deepEqual(seqs, [...Array(11).keys()].map((i) => i + 1), 'each message once, in seq order');
      // Order after the rejoin: replayed messages (seq <= head), then the missed changes, then live.
      const kinds = after.slice(1).map(([t, d]) => (t === 'update' ? 'update' : d.seq <= head ? 'replay' : 'live'));
      const firstUpdate = kinds.indexOf('update');
      assert.ok(kinds.slice(0, firstUpdate).every((k) => k === 'replay'), `replay first: ${kinds}`);
      assert.ok(kinds.slice(firstUpdate, firstUpdate + 3).every((k) => k === 'update'), `then updates: ${kinds}`);
      assert.ok(kinds.slice(firstUpdate + 3).every((k) => k === 'live'), `then live: ${kinds}`);
      // Each changed message once, in its latest state, revs rising.
      const ups = after.filter(([t]) => t === 'update').map(([, u]) => u);
      assert.deepEqual(ups.map((u) => u.seq), early);
      assert.equal(ups[0].body, 'b1 edited twice');
      assert.deepEqual(ups[0].reactions, [{ key: '👀', count: 1 }]);
      assert.deepEqual(ups[1].reactions, [{ key: '👍', count: 1 }]);
      assert.equal(ups[2].deleted, true);
      assert.ok(ups[0].rev < ups[1].rev && ups[1].rev < ups[2].rev);
      // The message changed after it was missed comes in its current state, with no update.
      const b5 = log.find(([t, m]) => t === 'message' && m.seq === missed[1])[1];
      assert.equal(b5.body, 'b5 edited');
      assert.ok(b5.rev > 0 && b5.edited_ts > 0);
      a.close();
      b.close();
    });
  });
}

test('clients of both encodings share a room', T, async () => {
  const room = uniq('mixed');
  const j = client(uniq('json')).connect();
  const m = client(uniq('mp'), { encoding: 'msgpack', codec: msgpack }).connect();
  const jm = messagesOf(j, room);
  const mm = messagesOf(m, room);
  await j.join(room);
  await m.join(room);
  await j.send(room, 'from json', { meta: { n: 1 } }).acked;
  await m.send(room, 'from msgpack', { meta: { n: 2, deep: { a: [1, 'x', null, true] } } }).acked;
  await until(() => jm.length === 2 && mm.length === 2, 5000, 'both messages on both');
  assert.deepEqual(jm.map((x) => [x.body, x.meta]), mm.map((x) => [x.body, x.meta]));
  assert.deepEqual(mm[1].meta, { n: 2, deep: { a: [1, 'x', null, true] } });
  j.close();
  m.close();
});

test('token refresh: with a token function the socket outlives the first token', T, async () => {
  const user = uniq('fresh');
  const calls = [];
  const tokens = [];
  const c = client(user, {
    token: () => {
      calls.push(Date.now());
      const t = mintToken(user, { ttlS: 3 });
      tokens.push(t);
      return t;
    },
  });
  const disconnects = record(c, ['disconnect']);
  const refreshed = nextEvent(c, 'refreshed', () => true, 8000);
  c.connect();
  await c.opened(5000);
  const exp0 = tokenClaims(tokens[0]).exp;
  assert.ok(exp0 * 1000 - Date.now() < 3500, 'a short-lived token');
  const room = uniq('fresh-room');
  await c.join(room);
  const r = await refreshed;
  assert.ok(calls.length >= 2, 'the callback was asked for a new token');
  assert.ok(calls[1] < exp0 * 1000, 'before the first token expired');
  assert.ok(r.exp >= exp0, 'the socket now expires later');
  // Past the first token's expiry (the server closes within 250 ms of it), the same socket works.
  await until(() => Date.now() > exp0 * 1000 + 1000, 6000, 'past the first expiry');
  assert.ok((await c.ping()) >= 0);
  assert.deepEqual(disconnects, [], 'never disconnected');
  assert.equal(c.state, 'open');
  await c.send(room, 'still here').acked;
  c.close();
});

test('token expiry: without a token function the server closes with 1008 and the client stops', T, async () => {
  const user = uniq('stale');
  const exp = Math.floor(Date.now() / 1000) + 3;
  const c = client(user, { token: mintToken(user, { exp }) });
  const gone = nextEvent(c, 'disconnect', () => true, 8000);
  const closed = nextEvent(c, 'state', (s) => s.state === 'closed', 8000);
  c.connect();
  await c.opened(5000);
  const d = await gone;
  assert.equal(d.code, CloseCode.POLICY);
  assert.ok(Date.now() >= exp * 1000 - 50, 'not before exp');
  assert.equal((await closed).reason, 'policy');
  await assert.rejects(c.refresh(), (e) => e instanceof ChattyError && e.code === 'bad_request');
});

test('the unacked cap: sends past maxPendingSends fail with queue_full; the rest go once joined', T, async () => {
  const room = uniq('cap');
  const c = client(uniq('capped'), { maxPendingSends: 3, maxPendingRequests: 2 });
  const failed = record(c, ['failed']);
  const joined = c.join(room); // before connect: everything waits
  const ok = [c.send(room, 'one'), c.send(room, 'two'), c.send(room, 'three')];
  const over = c.send(room, 'four');
  await assert.rejects(over.acked, (e) => e instanceof ChattyError && e.code === 'queue_full');
  assert.equal(failed.length, 1);
  assert.equal(failed[0][1].code, 'queue_full');
  assert.equal(c.pendingSends().length, 3);
  // Requests are capped too.
  const h1 = c.history(room);
  const h2 = c.history(room);
  await assert.rejects(c.history(room), (e) => e instanceof ChattyError && e.code === 'queue_full');
  c.connect();
  await joined;
  assert.deepEqual((await Promise.all(ok.map((s) => s.acked))).map((a) => a.seq), [1, 2, 3]);
  await Promise.all([h1, h2]);
  assert.equal((await c.send(room, 'room again').acked).seq, 4);
  c.close();
});

test('typed errors: a private room, a body too large, a room not joined', T, async () => {
  const room = uniq('secret');
  assert.equal((await server.api('PUT', `/api/v1/rooms/${room}`, { private: true })).status, 204);
  const { token, user } = await server.devToken(uniq('outsider'));
  const c = new ChattyClient({ url: server.wsUrl, token, WebSocket });
  clients.add(c);
  assert.equal(c.user, user);
  const errs = record(c, ['error']);
  c.connect();
  const err = await c.join(room).then(
    () => assert.fail('joined a private room'),
    (e) => e,
  );
  assert.ok(err instanceof ChattyError);
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'ChattyError');
  assert.equal(err.code, 'forbidden');
  assert.match(err.ref, /^r\d+$/);
  assert.deepEqual(c.joinedRooms, [], 'a refused join is forgotten');
  assert.equal(errs[0][1].code, 'forbidden');
  assert.equal(errs[0][1].room, room);

  assert.throws(() => c.send(room, 'x'), (e) => e instanceof ChattyError && e.code === 'not_joined');
  await assert.rejects(c.edit(room, 1, 'x'), (e) => e instanceof ChattyError && e.code === 'not_joined');
  const open = uniq('open');
  await c.join(open);
  const big = c.send(open, 'x'.repeat(5000));
  await assert.rejects(big.acked, (e) => e instanceof ChattyError && e.code === 'too_large' && typeof e.ref === 'string');
  assert.throws(() => c.send(open, 'x', { cid: 'not a cid!' }), (e) => e.code === 'bad_request');
  c.close();
});

test('backoff: exponential with equal jitter while nothing listens, reconnectNow skips the wait', T, async () => {
  const port = await freePort(); // nobody listens there
  const c = new ChattyClient({ url: `ws://127.0.0.1:${port}/ws`, token: mintToken('nobody'), WebSocket, minBackoffMs: 40, maxBackoffMs: 200 });
  clients.add(c);
  const delays = [];
  const disconnects = record(c, ['disconnect']);
  c.on('state', (s) => s.state === 'reconnecting' && s.delay !== undefined && delays.push(s.delay));
  c.connect();
  await until(() => delays.length >= 6, 10000, 'six retries');
  c.close();
  const caps = [40, 80, 160, 200, 200, 200];
  delays.slice(0, 6).forEach((d, i) => assert.ok(d >= caps[i] / 2 && d <= caps[i], `delay ${i}: ${d} within [${caps[i] / 2}, ${caps[i]}]`));
  assert.ok(disconnects.every(([, d]) => d.opened === false), 'no attempt connected');

  // reconnectNow: a long backoff is cut short.
  const slow = new ChattyClient({ url: `ws://127.0.0.1:${port}/ws`, token: mintToken('nobody'), WebSocket, minBackoffMs: 60000, maxBackoffMs: 60000 });
  clients.add(slow);
  const waiting = nextEvent(slow, 'state', (s) => s.state === 'reconnecting' && s.delay !== undefined);
  slow.connect();
  await waiting;
  const again = nextEvent(slow, 'disconnect', () => true, 5000);
  slow.reconnectNow();
  await again; // a second attempt long before the 30 s minimum delay
  slow.close();
  await assert.rejects(slow.opened(), (e) => e instanceof ChattyError && e.code === 'disconnected');
});

test('moderation over the socket: kick with ban, unban, set a role', T, async () => {
  const room = uniq('mod');
  const owner = uniq('owner');
  const bob = uniq('bob');
  assert.equal((await server.api('PUT', `/api/v1/rooms/${room}/members/${owner}`, { role: 'owner' })).status, 204);
  const o = client(owner).connect();
  const b = client(bob).connect();
  const info = await o.join(room);
  assert.equal(info.role, 'owner');
  assert.equal(o.canModerate(room), true);
  assert.equal((await b.join(room)).role, 'member');
  assert.equal(b.canModerate(room), false);
  await assert.rejects(b.kick(room, owner), (e) => e instanceof ChattyError && e.code === 'forbidden');

  const removed = nextEvent(b, 'removed');
  await o.kick(room, bob, { ban: true });
  assert.deepEqual(await removed, { room, reason: 'banned' });
  await assert.rejects(b.join(room), (e) => e instanceof ChattyError && e.code === 'forbidden');
  await o.unban(room, bob);
  await b.join(room);
  await o.setRole(room, bob, 'moderator');
  // The role is read at every moderation request: bob may now kick a member.
  const carol = client(uniq('carol')).connect();
  await carol.join(room);
  const out = nextEvent(carol, 'removed');
  await b.kick(room, carol.user);
  assert.equal((await out).reason, 'kicked');
  for (const c of [o, b, carol]) c.close();
});
