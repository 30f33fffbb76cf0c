// The chat page in a real browser against the real server (target/release/chatty):
// 1. two users chat, see each other's presence and typing; the server restarts (SIGTERM, same
//    port and database) mid-conversation, and both pages end up showing every message exactly
//    once, in seq order;
// 2. a late joiner pages back through history, and unread counts follow read markers;
// 3. a page cut off (4000) while more than the replay cap happens recovers it all, the
//    truncated replay completed with history;
// 4. an admin whose tokens live 6 s stays connected by refreshing them, and bans a user from
//    the presence list: that page is told and loses the room, and cannot join it again;
// 5. the message lifecycle: a reply quotes its message; an edit, reactions (one made while the
//    other page was offline) and a delete show on both pages, and survive a reload (history);
// 6. after a reload, the rooms read before and not joined again are listed as conversations,
//    newest first with their unread counts; a click joins one;
// 7. a private room of the user's, not joined on the page, lights up in the conversation list as
//    its messages are committed (inbox frames), the user's own messages (from another page)
//    not counted; a click joins it and clears the badges.
// Run with e2e/run.sh; screenshots and logs land in test-output/e2e/.

import assert from 'node:assert/strict';
import { mkdirSync, createWriteStream } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { API_KEY, OUT, ROOT, Server } from './server.mjs';

const CHROMIUM = process.env.CHATTY_E2E_CHROMIUM ?? '/usr/bin/chromium';
const WAIT = 20000; // the bound on any single wait for the page
const ROOM = 'lobby';
const REPLAY_MAX = 10; // the server's replay cap in this test, so that a truncated replay is cheap to cause
const BURST = Number(process.env.CHATTY_E2E_BURST ?? 3); // messages per user sent during the drain

mkdirSync(OUT, { recursive: true });

let server;
let browser;
const pages = {}; // name -> page
const pageErrors = [];

const links = {}; // name -> { ws, blocked }: the routed socket of a page opened with `routed`

/** Sign `name` in on a new page (its own browser context). `key`: the page's name in `pages`,
 * `links` and the logs, for a second page of one user. */
async function openPage(name, { routed = false, admin = false, ttl = null, key = name } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  if (routed) {
    // The page's sockets go through Playwright, so the test can cut them (as a server or a
    // network would) and refuse reconnects for a while. Frames are forwarded untouched.
    const link = (links[key] = { ws: null, blocked: false });
    await context.routeWebSocket(/\/ws(\?|$)/, (ws) => {
      if (link.blocked) return ws.close({ code: 1013, reason: 'test: try again later' });
      ws.connectToServer();
      link.ws = ws;
    });
  }
  if (process.env.CHATTY_E2E_LIVE_ASSETS) {
    // Development aid: serve web/ from disk instead of the assets embedded in the binary,
    // so page edits need no rebuild. The real run (run.sh) never sets it.
    const types = { '.js': 'text/javascript', '.css': 'text/css', '.html': 'text/html' };
    // The page's address may carry a query (`/?ttl=6`): it is the same page.
    await context.route(/^[a-z]+:\/\/[^/]+\/(static\/[a-z]+\.(js|css))?(\?[^/]*)?$/, (route) => {
      const p = new URL(route.request().url()).pathname;
      const file = p === '/' ? 'index.html' : p.slice('/static/'.length);
      route.fulfill({ path: path.join(ROOT, 'web', file), contentType: types[path.extname(file)] });
    });
  }
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const log = createWriteStream(path.join(OUT, `console-${key}.log`));
  page.on('console', (m) => log.write(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (e) => {
    log.write(`[pageerror] ${e.stack ?? e}\n`);
    pageErrors.push(`${key}: ${e.message}`);
  });
  // `?ttl=` makes the page ask for short-lived tokens (it refreshes them on the socket).
  await page.goto(ttl ? `${server.origin}/?ttl=${ttl}` : server.origin);
  await page.getByTestId('signin-name').fill(name);
  if (admin) await page.getByTestId('signin-admin').check();
  if (name === 'alice') await shot(page, 'signin');
  await page.getByTestId('signin-submit').click();
  await page.getByTestId('chat-screen').waitFor();
  await waitState(page, 'open');
  pages[key] = page;
  return page;
}

const shot = (page, name) => page.screenshot({ path: path.join(OUT, `${name}.png`) });

const waitState = (page, state) =>
  page.waitForFunction(
    (s) => document.querySelector('[data-testid=connection-status]')?.dataset.state === s,
    state,
    { timeout: WAIT, polling: 50 },
  );

async function join(page, room) {
  await page.getByTestId('join-room').fill(room);
  await page.getByTestId('join-submit').click();
  await page.locator(`[data-testid=room-item][data-room="${room}"]`).waitFor();
}

async function say(page, body) {
  const input = page.getByTestId('composer-input');
  await input.fill(body);
  await input.press('Enter');
}

/** The messages of a room as the page shows them, top to bottom. */
const shown = (page, room) =>
  page.$$eval(`[data-testid=message-list][data-room="${room}"] [data-testid=message]`, (els) =>
    els.map((e) => ({
      seq: e.dataset.seq === undefined ? null : Number(e.dataset.seq),
      cid: e.dataset.cid,
      from: e.dataset.from,
      pending: 'pending' in e.dataset,
      body: e.querySelector('[data-testid=message-body]').textContent,
    })),
  );

/** Wait until every body is shown, stored (has a seq) and not pending. */
const waitBodies = (page, room, bodies, timeout = WAIT) =>
  page.waitForFunction(
    ({ room, bodies }) => {
      const els = [...document.querySelectorAll(`[data-testid=message-list][data-room="${room}"] [data-testid=message]`)];
      const stored = new Set(
        els.filter((e) => e.dataset.seq && !('pending' in e.dataset)).map((e) => e.querySelector('[data-testid=message-body]').textContent),
      );
      return bodies.every((b) => stored.has(b));
    },
    { room, bodies },
    { timeout, polling: 50 },
  );

const presenceOf = (page) =>
  page.$$eval('[data-testid=presence-user]', (els) => els.map((e) => e.dataset.user).sort());

const waitPresence = (page, users) =>
  page.waitForFunction(
    (users) =>
      JSON.stringify([...document.querySelectorAll('[data-testid=presence-user]')].map((e) => e.dataset.user).sort()) ===
      JSON.stringify(users),
    [...users].sort(),
    { timeout: WAIT, polling: 50 },
  );

/** Exactly once, in order, gap-free from seq 1: the page shows `bodies` and nothing else. */
function assertExactlyOnce(list, bodies, who) {
  const pending = list.filter((m) => m.pending || m.seq === null);
  assert.deepEqual(pending, [], `${who}: messages still pending`);
  const seqs = list.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${who}: not in seq order`);
  assert.equal(new Set(seqs).size, seqs.length, `${who}: duplicate seq on screen: ${seqs}`);
  assert.equal(new Set(list.map((m) => `${m.from}/${m.cid}`)).size, list.length, `${who}: duplicate cid on screen`);
  assert.deepEqual(seqs, list.map((_, i) => i + 1), `${who}: seqs are not 1..${list.length}`);
  const counts = new Map();
  for (const m of list) counts.set(m.body, (counts.get(m.body) ?? 0) + 1);
  for (const b of bodies) assert.equal(counts.get(b), 1, `${who}: "${b}" shown ${counts.get(b) ?? 0} times`);
  assert.equal(list.length, bodies.length, `${who}: ${list.length} messages shown, ${bodies.length} sent`);
}

/** The `<li>` of message `seq` in `room`. */
const messageSel = (room, seq) => `[data-testid=message-list][data-room="${room}"] [data-testid=message][data-seq="${seq}"]`;

/** What the page shows of one stored message (only what is visible), or null if it is not there. */
function readMessage({ room, seq }) {
  const li = document.querySelector(`[data-testid=message-list][data-room="${room}"] [data-testid=message][data-seq="${seq}"]`);
  if (!li) return null;
  const seen = (testid) => {
    const e = li.querySelector(`[data-testid=${testid}]`);
    return e && e.checkVisibility() ? e.textContent : null;
  };
  return {
    from: li.dataset.from,
    body: li.querySelector('[data-testid=message-body]').textContent,
    edited: seen('message-edited'),
    tombstone: seen('message-deleted'),
    quote: seen('message-quote'),
    reactions: [...li.querySelectorAll('[data-testid=reaction]')]
      .filter((c) => c.checkVisibility())
      .map((c) => ({ chip: c.textContent, mine: c.classList.contains('mine') && c.getAttribute('aria-pressed') === 'true' })),
  };
}

/** Wait until message `seq` shows exactly `want` (see readMessage); fail with the difference. */
async function waitMessage(page, room, seq, want, who, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let got = await page.evaluate(readMessage, { room, seq });
  while (!isDeepStrictEqual(got, want) && Date.now() < deadline) {
    await sleep(50);
    got = await page.evaluate(readMessage, { room, seq });
  }
  assert.deepEqual(got, want, `${who}: message #${seq} in #${room}`);
}

/** The conversation list as the page shows it, top to bottom: [room, badge text or null if hidden]. */
const conversationsShown = (page) =>
  page.$$eval('[data-testid=conversation-item]', (els) =>
    els
      .filter((e) => e.checkVisibility())
      .map((e) => {
        const badge = e.querySelector('[data-testid=conversation-unread]');
        return [e.dataset.room, badge.checkVisibility() ? badge.textContent : null];
      }),
  );

/** Wait until the conversation list shows exactly `want` (see conversationsShown). */
async function waitConversations(page, want, who, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let got = await conversationsShown(page);
  while (!isDeepStrictEqual(got, want) && Date.now() < deadline) {
    await sleep(50);
    got = await conversationsShown(page);
  }
  assert.deepEqual(got, want, `${who}: the conversation list`);
}

/** The unread total next to the Conversations heading: its text, or null if it is not shown. */
const conversationTotal = (page) =>
  page.getByTestId('conversations-unread').evaluate((e) => (e.checkVisibility() ? e.textContent : null));

/** Wait until the unread total shows `want` (null: not shown). */
async function waitConversationTotal(page, want, who, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let got = await conversationTotal(page);
  while (got !== want && Date.now() < deadline) {
    await sleep(50);
    got = await conversationTotal(page);
  }
  assert.equal(got, want, `${who}: the conversations' unread total`);
}

/** A backend call with the API key that must answer 204 (`body`: sent as JSON). */
async function api(method, route, body) {
  const res = await fetch(`${server.origin}/api/v1${route}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, ...(body && { 'content-type': 'application/json' }) },
    ...(body && { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10000),
  });
  assert.equal(res.status, 204, `${method} ${route}: ${res.status} ${await res.text()}`);
}

/** A user's conversation list on the server (the HTTP twin of `rooms`): room -> [seq, read]. */
async function serverRooms(user) {
  const res = await fetch(`${server.origin}/api/v1/users/${user}/rooms`, {
    headers: { authorization: `Bearer ${API_KEY}` },
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(res.status, 200, `GET rooms: ${res.status}`);
  const body = await res.json();
  assert.ok(Array.isArray(body.rooms), `GET rooms: ${JSON.stringify(body)}`);
  return Object.fromEntries(body.rooms.map((r) => [r.room, [r.seq, r.read]]));
}

/** Hover a message (its actions show on hover) and click one of its action buttons. */
async function clickAction(page, room, seq, selector) {
  const li = page.locator(messageSel(room, seq));
  await li.hover();
  const button = li.locator(`[data-testid=message-actions] ${selector}`);
  await button.click();
  return button;
}

describe('chat page', () => {
  before(async () => {
    server = new Server({ CHATTY__LIMITS__REPLAY_MAX: String(REPLAY_MAX) });
    await server.init();
    await server.start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // Playwright gives every launch a fresh temporary user-data-dir of its own.
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-quic',
        '--no-first-run',
        '--disable-component-update',
        '--disable-sync',
        // Pages served by route interception count as public: let them reach 127.0.0.1.
        ...(process.env.CHATTY_E2E_LIVE_ASSETS ? ['--disable-features=LocalNetworkAccessChecks'] : []),
      ],
      timeout: 30000,
    });
  });

  after(async () => {
    for (const [name, page] of Object.entries(pages)) {
      await page.screenshot({ path: path.join(OUT, `${name}.png`) }).catch(() => {});
    }
    await browser?.close().catch(() => {});
    await server?.stop({ timeoutMs: 15000 }).catch(() => server.kill());
    await server?.dropDatabase();
  });

  test('two users chat, see presence and typing, and lose nothing across a server restart', { timeout: 180000 }, async (t) => {
    const t0 = Date.now();
    const alice = await openPage('alice');
    const bob = await openPage('bob');
    await join(alice, ROOM);
    await join(bob, ROOM);
    await waitPresence(alice, ['alice', 'bob']);
    await waitPresence(bob, ['alice', 'bob']);

    const sent = [];
    const chat = async (page, body) => {
      sent.push(body);
      await say(page, body);
    };

    // Both ways.
    await chat(alice, 'Hi Bob! Ça va ? ✓');
    await waitBodies(bob, ROOM, sent);
    await chat(bob, 'Hey Alice, how are you?');
    await waitBodies(alice, ROOM, sent);

    // Typing: Bob types without sending; Alice sees it, and it clears when his message lands.
    await bob.getByTestId('composer-input').pressSequentially('Great, thanks', { delay: 20 });
    await alice.getByTestId('typing-indicator').filter({ hasText: 'bob is typing…' }).waitFor();
    await shot(alice, 'alice-typing');
    await bob.getByTestId('composer-input').press('Enter');
    sent.push('Great, thanks');
    await waitBodies(alice, ROOM, sent);
    await alice.waitForFunction(() => document.querySelector('[data-testid=typing-indicator]').textContent === '', null, {
      timeout: WAIT,
    });
    await chat(alice, 'Let me restart the server, hold on');
    await waitBodies(bob, ROOM, sent);
    t.diagnostic(`chat and presence: ${Date.now() - t0} ms`);

    // Restart mid-conversation: messages go out while the server drains, while it is down,
    // and after it is back. Both pages must reconnect and recover by themselves.
    const t1 = Date.now();
    const stopping = server.stop();
    const burst = async (page, who) => {
      for (let i = 1; i <= BURST; i++) await chat(page, `sent while the server drains (${who} ${i})`);
    };
    await Promise.all([burst(alice, 'alice'), burst(bob, 'bob')]);
    const exit = await stopping;
    t.diagnostic(`server exited after SIGTERM: ${JSON.stringify(exit)} in ${Date.now() - t1} ms`);
    await waitState(alice, 'reconnecting');
    await waitState(bob, 'reconnecting');
    for (const page of [alice, bob]) {
      const code = await page.getByTestId('connection-status').getAttribute('data-close-code');
      assert.equal(code, '1001', 'a draining server closes its sockets with 1001 (going away)');
    }
    await chat(alice, 'sent while the server is down (alice)');
    await chat(bob, 'sent while the server is down (bob)');
    await shot(bob, 'bob-offline');
    await server.start();
    await waitState(alice, 'open');
    await waitState(bob, 'open');
    t.diagnostic(`both pages reconnected ${Date.now() - t1} ms after SIGTERM`);
    await chat(bob, 'back online (bob)');
    await chat(alice, 'back online (alice)');
    await waitBodies(alice, ROOM, sent, 40000);
    await waitBodies(bob, ROOM, sent, 40000);
    await waitPresence(alice, ['alice', 'bob']);
    await waitPresence(bob, ['alice', 'bob']);

    // A last message as a barrier: anything a late replay could still bring arrives before it.
    await chat(bob, 'that went well');
    await waitBodies(alice, ROOM, sent);
    await waitBodies(bob, ROOM, sent);

    const a = await shown(alice, ROOM);
    const b = await shown(bob, ROOM);
    assertExactlyOnce(a, sent, 'alice');
    assertExactlyOnce(b, sent, 'bob');
    assert.deepEqual(
      a.map((m) => [m.seq, m.body]),
      b.map((m) => [m.seq, m.body]),
      'both pages show the same conversation',
    );
    assert.deepEqual(await presenceOf(alice), ['alice', 'bob']);
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`restart scenario: ${Date.now() - t1} ms; total ${Date.now() - t0} ms`);
  });

  test('a late joiner pages back through history; unread counts follow read markers', { timeout: 120000 }, async (t) => {
    const t0 = Date.now();
    // Seed a room with more than one page (50) of history through the HTTP API.
    const N = 120;
    for (let i = 1; i <= N; i++) await server.post('archive', { from: 'dave', cid: `seed-${i}`, body: `archived message ${i}` });

    t.diagnostic(`seeded ${N} messages: ${Date.now() - t0} ms`);
    const carol = await openPage('carol', { routed: true });
    await join(carol, ROOM);
    // Carol has seen #lobby (it was on screen) before she moves on.
    await waitBodies(carol, ROOM, ['that went well']);
    await join(carol, 'archive');
    const older = carol.locator('[data-testid=messages][data-room="archive"] [data-testid=load-older]');

    // The newest page first, then older pages on demand, each message once.
    await waitBodies(carol, 'archive', [`archived message ${N}`]);
    let list = await shown(carol, 'archive');
    assert.equal(list.length, 50);
    assert.equal(list[0].seq, N - 49);
    while (await older.isVisible()) {
      const before = (await shown(carol, 'archive')).length;
      await older.click();
      await carol.waitForFunction(
        (n) => document.querySelectorAll('[data-testid=message-list][data-room="archive"] [data-testid=message]').length > n,
        before,
        { timeout: WAIT, polling: 50 },
      );
      await carol.waitForFunction(() => !document.querySelector('[data-room="archive"] [data-testid=load-older]').disabled, null, {
        timeout: WAIT,
      });
    }
    list = await shown(carol, 'archive');
    assertExactlyOnce(
      list,
      Array.from({ length: N }, (_, i) => `archived message ${i + 1}`),
      'carol #archive',
    );

    // Unread: Alice talks in #lobby while Carol looks at #archive.
    const badge = carol.locator('[data-testid=room-item][data-room="lobby"] [data-testid=room-unread]');
    assert.equal(await badge.isVisible(), false);
    await say(pages.alice, 'Carol, are you there?');
    await say(pages.alice, 'Ping me when you are back');
    await waitBodies(carol, ROOM, ['Carol, are you there?', 'Ping me when you are back']);
    await carol.waitForFunction(
      () => document.querySelector('[data-room="lobby"] [data-testid=room-unread]')?.textContent === '2',
      null,
      { timeout: WAIT, polling: 50 },
    );
    await shot(carol, 'carol-unread');
    // Looking at the room reads it.
    await carol.locator('[data-testid=room-item][data-room="lobby"] .room-link').click();
    await badge.waitFor({ state: 'hidden' });
    await say(carol, 'Here now!');
    await waitBodies(pages.alice, ROOM, ['Here now!']);
    await waitPresence(pages.alice, ['alice', 'bob', 'carol']);
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`history and unread: ${Date.now() - t0} ms`);
  });

  test('a page offline for long recovers a truncated replay with history, each message once', { timeout: 120000 }, async (t) => {
    const t0 = Date.now();
    const { alice, carol } = pages;
    // Carol's socket is closed as a slow consumer (4000), and she cannot get back for a while.
    links.carol.blocked = true;
    await links.carol.ws.close({ code: 4000, reason: 'slow consumer' });
    await carol.waitForFunction(
      () => document.querySelector('[data-testid=connection-status]').dataset.state !== 'open',
      null,
      { timeout: WAIT, polling: 50 },
    );
    // More than the server replays (limits.replay_max = REPLAY_MAX) happens while Carol is away.
    const missed = Array.from({ length: REPLAY_MAX * 2 + 5 }, (_, i) => `while carol was away ${i + 1}`);
    for (const [i, body] of missed.entries()) await server.post(ROOM, { from: 'dave', cid: `away-${i}`, body });
    await waitBodies(alice, ROOM, missed);
    const historyBefore = await server.metric('chatty_frames_in_total', { type: 'history' });
    links.carol.blocked = false;
    await waitBodies(carol, ROOM, missed, 30000);
    // The replay was truncated, and the page paged the hole in with history.
    assert.ok((await server.metric('chatty_frames_in_total', { type: 'history' })) > historyBefore, 'history was asked for');
    await say(carol, 'I am back');
    await waitBodies(alice, ROOM, ['I am back']);
    await waitBodies(carol, ROOM, ['I am back']);
    const a = await shown(alice, ROOM);
    const c = await shown(carol, ROOM);
    assertExactlyOnce(c, a.map((m) => m.body), 'carol');
    assert.deepEqual(c.map((m) => [m.seq, m.body]), a.map((m) => [m.seq, m.body]), 'carol and alice show the same conversation');
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`truncated replay recovered: ${Date.now() - t0} ms`);
  });

  test('an admin refreshes short tokens and bans from the presence list; the banned page loses the room', { timeout: 120000 }, async (t) => {
    const t0 = Date.now();
    const room = 'moderated';
    const mona = await openPage('mona', { admin: true, ttl: 6 });
    const vic = await openPage('vic');
    await join(mona, room);
    await join(vic, room);
    await waitPresence(mona, ['mona', 'vic']);
    await waitPresence(vic, ['mona', 'vic']);
    // Only the admin is offered the controls.
    const ban = mona.locator('[data-testid=presence-user][data-user="vic"] [data-testid=presence-ban]');
    await ban.waitFor();
    assert.equal(await vic.locator('[data-testid=presence-ban]').count(), 0);

    // Past the first token's expiry the socket is still the same, open one: it was refreshed.
    await mona.waitForFunction(() => document.querySelector('[data-testid=connection-status]').dataset.exp, null, {
      timeout: WAIT,
      polling: 100,
    });
    await mona.waitForTimeout(7000);
    const status = await mona.getByTestId('connection-status').evaluate((e) => ({ ...e.dataset }));
    assert.equal(status.state, 'open');
    assert.equal(status.closeCode, undefined, `the admin's socket closed (${status.closeCode})`);
    t.diagnostic(`token refreshed and socket kept: ${Date.now() - t0} ms`);

    await ban.click();
    await vic.locator(`[data-testid=room-item][data-room="${room}"]`).waitFor({ state: 'detached' });
    await vic.getByTestId('toast').filter({ hasText: `banned from #${room}` }).waitFor();
    await waitPresence(mona, ['mona']);
    // Joining again is refused, and says why.
    await vic.getByTestId('join-room').fill(room);
    await vic.getByTestId('join-submit').click();
    await vic.getByTestId('toast').filter({ hasText: 'banned' }).nth(1).waitFor();
    await shot(vic, 'vic-banned');
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`ban: ${Date.now() - t0} ms`);
  });

  test('a reply, an edit, reactions and a delete show on both pages, live and after a reload', { timeout: 120000 }, async (t) => {
    const t0 = Date.now();
    const room = 'lifecycle';
    const erin = await openPage('erin');
    const finn = await openPage('finn', { routed: true });
    await join(erin, room);
    await join(finn, room);
    await waitPresence(erin, ['erin', 'finn']);
    await waitPresence(finn, ['erin', 'finn']);
    const both = async (want) => {
      for (const [who, page] of [['erin', erin], ['finn', finn]]) {
        for (const [seq, w] of Object.entries(want)) await waitMessage(page, room, Number(seq), w(who), who);
      }
    };
    const plain = (from, body) => ({ from, body, edited: null, tombstone: null, quote: null, reactions: [] });

    // Erin asks; Finn replies to her message from its actions.
    const original = 'Lunch at 12:30 in the atrium?';
    await say(erin, original);
    await waitBodies(erin, room, [original]);
    await waitBodies(finn, room, [original]);
    const a = (await shown(finn, room)).find((m) => m.body === original).seq;
    assert.equal(a, 1, 'the first message of a new room');
    await clickAction(finn, room, a, '[data-testid=message-reply]');
    await finn.getByTestId('compose-bar').filter({ hasText: `Replying to erin: ${original}` }).waitFor();
    // Edit is only offered on one's own messages.
    assert.equal(await finn.locator(`${messageSel(room, a)} [data-testid=message-edit]`).isVisible(), false, 'finn may not edit erin’s message');
    const reply = 'Sounds good, see you there';
    await say(finn, reply);
    await finn.getByTestId('compose-bar').waitFor({ state: 'hidden' });
    await waitBodies(finn, room, [reply]);
    await waitBodies(erin, room, [reply]);
    const b = (await shown(erin, room)).find((m) => m.body === reply).seq;
    assert.equal(b, a + 1);
    await both({
      [a]: () => plain('erin', original),
      [b]: () => ({ ...plain('finn', reply), quote: `↪ erin: ${original}` }),
    });
    await shot(erin, 'lifecycle-reply');

    // Erin edits hers: the new text and the mark on both pages, and the quote follows.
    await clickAction(erin, room, a, '[data-testid=message-edit]');
    await erin.getByTestId('compose-bar').filter({ hasText: 'Editing your message' }).waitFor();
    assert.equal(await erin.getByTestId('composer-input').inputValue(), original, 'the composer holds the text to edit');
    const edited = 'Lunch at 13:00 in the atrium?';
    await say(erin, edited);
    await erin.getByTestId('compose-bar').waitFor({ state: 'hidden' });
    await both({
      [a]: () => ({ ...plain('erin', edited), edited: '(edited)' }),
      [b]: () => ({ ...plain('finn', reply), quote: `↪ erin: ${edited}` }),
    });
    // An edit changes the message in place: still two messages, nothing pending.
    for (const page of [erin, finn]) {
      assert.deepEqual((await shown(page, room)).map((m) => [m.seq, m.body, m.pending]), [[a, edited, false], [b, reply, false]]);
    }

    // Finn reacts to Erin's message: a chip with count 1 on both pages, marked as his on his.
    await clickAction(finn, room, a, 'button[data-key="👍"]');
    const thumbs = (who) => [{ chip: '👍 1', mine: who === 'finn' }];
    await both({ [a]: (who) => ({ ...plain('erin', edited), edited: '(edited)', reactions: thumbs(who) }) });
    await shot(finn, 'lifecycle-reaction');

    // Finn's page drops off; Erin reacts to his reply meanwhile. Back online, his page catches
    // up (join since_rev) and his click on her chip adds his own reaction to it.
    links.finn.blocked = true;
    await links.finn.ws.close({ code: 1012, reason: 'test: network drop' });
    await finn.waitForFunction(() => document.querySelector('[data-testid=connection-status]').dataset.state !== 'open', null, {
      timeout: WAIT,
      polling: 50,
    });
    await clickAction(erin, room, b, 'button[data-key="❤️"]');
    await waitMessage(erin, room, b, { ...plain('finn', reply), quote: `↪ erin: ${edited}`, reactions: [{ chip: '❤️ 1', mine: true }] }, 'erin');
    links.finn.blocked = false;
    await waitState(finn, 'open');
    await waitMessage(finn, room, b, { ...plain('finn', reply), quote: `↪ erin: ${edited}`, reactions: [{ chip: '❤️ 1', mine: false }] }, 'finn');
    await finn.locator(`${messageSel(room, b)} [data-testid=reaction][data-key="❤️"]`).click();
    await both({
      [b]: () => ({ ...plain('finn', reply), quote: `↪ erin: ${edited}`, reactions: [{ chip: '❤️ 2', mine: true }] }),
    });

    // Erin deletes hers (the first click only arms the button): a tombstone on both pages,
    // without its reactions, and the reply's quote says so.
    const del = await clickAction(erin, room, a, '[data-testid=message-delete]');
    assert.equal(await del.textContent(), 'Delete?');
    await erin.waitForTimeout(300);
    assert.equal((await erin.evaluate(readMessage, { room, seq: a })).tombstone, null, 'one click does not delete');
    await del.click();
    const afterDelete = {
      [a]: () => ({ ...plain('erin', ''), tombstone: 'message deleted' }),
      [b]: () => ({ ...plain('finn', reply), quote: '↪ erin: message deleted', reactions: [{ chip: '❤️ 2', mine: true }] }),
    };
    await both(afterDelete);
    await erin.locator(messageSel(room, a)).hover();
    assert.equal(await erin.locator(`${messageSel(room, a)} [data-testid=message-actions]`).isVisible(), false, 'a tombstone has no actions');
    await shot(finn, 'lifecycle-deleted');
    t.diagnostic(`live lifecycle: ${Date.now() - t0} ms`);

    // Finn reloads: history brings each message's current state, his reactions included.
    const t1 = Date.now();
    await finn.reload();
    await finn.getByTestId('signin-name').fill('finn');
    await finn.getByTestId('signin-submit').click();
    await finn.getByTestId('chat-screen').waitFor();
    await waitState(finn, 'open');
    await join(finn, room);
    await waitBodies(finn, room, [reply]);
    for (const [seq, w] of Object.entries(afterDelete)) await waitMessage(finn, room, Number(seq), w(), 'finn after reload');
    assert.deepEqual((await shown(finn, room)).map((m) => [m.seq, m.from, m.body]), [[a, 'erin', ''], [b, 'finn', reply]]);
    await shot(finn, 'lifecycle-reloaded');
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`reload: ${Date.now() - t1} ms; total ${Date.now() - t0} ms`);
  });

  test('after a reload, rooms read before show as conversations with unread counts; a click joins', { timeout: 120000 }, async (t) => {
    const t0 = Date.now();
    const [x, y] = ['conv-x', 'conv-y'];
    const gus = await openPage('gus');
    // Gus reads a message in each room (each is on screen when its message comes).
    await join(gus, x);
    await server.post(x, { from: 'hal', cid: 'conv-1', body: 'hello x' });
    await waitBodies(gus, x, ['hello x']);
    await join(gus, y);
    await server.post(y, { from: 'hal', cid: 'conv-2', body: 'hello y' });
    await waitBodies(gus, y, ['hello y']);
    // Joined rooms are not conversations: the section stays empty and hidden.
    await gus.waitForTimeout(300);
    assert.deepEqual(await conversationsShown(gus), [], 'joined rooms are not listed as conversations');
    assert.equal(await gus.getByTestId('conversations').isVisible(), false);
    let deadline = Date.now() + WAIT;
    let got = await serverRooms('gus');
    while (!isDeepStrictEqual(got, { [x]: [1, 1], [y]: [1, 1] }) && Date.now() < deadline) {
      await sleep(100);
      got = await serverRooms('gus');
    }
    assert.deepEqual(got, { [x]: [1, 1], [y]: [1, 1] }, 'both rooms read on the server');

    // Hal writes twice more in #conv-x (the newest activity of the two rooms) while Gus looks
    // at #conv-y.
    await server.post(x, { from: 'hal', cid: 'conv-3', body: 'hal in x 1' });
    await server.post(x, { from: 'hal', cid: 'conv-4', body: 'hal in x 2' });

    // Gus reloads: a new page session, no room joined. Both rooms are conversations, #conv-x
    // first with 2 unread, #conv-y with none (no badge).
    await gus.reload();
    await gus.getByTestId('signin-name').fill('gus');
    await gus.getByTestId('signin-submit').click();
    await gus.getByTestId('chat-screen').waitFor();
    await waitState(gus, 'open');
    await waitConversations(gus, [[x, '2'], [y, null]], 'gus after reload');
    assert.equal(await gus.locator('[data-testid=room-item]').count(), 0, 'no room joined after the reload');
    await shot(gus, 'conversations');

    // Focus brings the list up to date: a message in #conv-y moves it first, with its count.
    await server.post(y, { from: 'hal', cid: 'conv-5', body: 'hal in y 1' });
    await gus.evaluate(() => window.dispatchEvent(new Event('focus')));
    await waitConversations(gus, [[y, '1'], [x, '2']], 'gus after focus');

    // A click on #conv-x joins it: the row moves to the joined rooms, with every message.
    await gus.locator(`[data-testid=conversation-item][data-room="${x}"] [data-testid=conversation-open]`).click();
    await gus.locator(`[data-testid=room-item][data-room="${x}"]`).waitFor();
    await waitBodies(gus, x, ['hello x', 'hal in x 1', 'hal in x 2']);
    assert.deepEqual((await shown(gus, x)).map((m) => [m.seq, m.from, m.body]), [
      [1, 'hal', 'hello x'],
      [2, 'hal', 'hal in x 1'],
      [3, 'hal', 'hal in x 2'],
    ]);
    assert.equal(await gus.getByTestId('room-title').textContent(), `#${x}`);
    await waitConversations(gus, [[y, '1']], 'gus after joining #conv-x');
    // On screen, so read: no badge on the joined room, and the server's marker follows.
    await gus.locator(`[data-testid=room-item][data-room="${x}"] [data-testid=room-unread]`).waitFor({ state: 'hidden' });
    deadline = Date.now() + WAIT;
    while ((await serverRooms('gus'))[x]?.[1] !== 3 && Date.now() < deadline) await sleep(100);
    assert.deepEqual((await serverRooms('gus'))[x], [3, 3], '#conv-x read on the server');
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`conversations: ${Date.now() - t0} ms`);
  });

  test('a private room not joined on the page gets live unread badges in Conversations; a click joins and clears them', { timeout: 120000 }, async (t) => {
    const t0 = Date.now();
    const room = 'dm-ann-bob';
    const LIVE = 5000; // inbox frames are pushed: the badges follow within a few seconds
    const ann = await openPage('ann');
    // A direct conversation: a private room of Ann and Bob, made after Ann's page opened (its
    // first conversation list does not have it) and never joined on that page.
    await api('PUT', `/rooms/${room}`, { private: true });
    await api('PUT', `/rooms/${room}/members/ann`);
    await api('PUT', `/rooms/${room}/members/bob`);
    assert.deepEqual(await conversationsShown(ann), [], 'no conversation yet');

    // Bob writes: the room appears in Ann's conversations with 1 unread, then 2.
    const bodies = ['Hi Ann, got a minute?', 'It is about Friday'];
    await server.post(room, { from: 'bob', cid: 'dm-1', body: bodies[0] });
    await waitConversations(ann, [[room, '1']], 'ann after one message', LIVE);
    await waitConversationTotal(ann, '1', 'ann after one message', LIVE);
    await server.post(room, { from: 'bob', cid: 'dm-2', body: bodies[1] });
    await waitConversations(ann, [[room, '2']], 'ann after two messages', LIVE);
    await waitConversationTotal(ann, '2', 'ann after two messages', LIVE);
    assert.equal(await ann.locator('[data-testid=room-item]').count(), 0, 'nothing joined on the page');
    await shot(ann, 'inbox-unread');
    t.diagnostic(`live badges: ${Date.now() - t0} ms`);

    // Ann answers from her other device (a second page, in the room): her own message is not
    // unread on the first page, and the other page's marker moved past it on the server (its
    // own acked message is read).
    const ann2 = await openPage('ann', { key: 'ann-2' });
    await join(ann2, room);
    await waitBodies(ann2, room, bodies);
    bodies.push('Sure, go ahead');
    await say(ann2, bodies[2]);
    await waitBodies(ann2, room, bodies);
    await waitConversations(ann, [[room, null]], 'ann after her own reply elsewhere', LIVE);
    await waitConversationTotal(ann, null, 'ann after her own reply elsewhere', LIVE);
    let deadline = Date.now() + WAIT;
    while ((await serverRooms('ann'))[room]?.[1] !== 3 && Date.now() < deadline) await sleep(100);
    assert.deepEqual((await serverRooms('ann'))[room], [3, 3], 'read up to her own message on the server');
    // That device goes away (else it would read what comes next).
    await ann2.context().close();
    delete pages['ann-2'];

    // Bob again: 1 unread. A click joins the room: the row leaves the conversations (and the
    // section, now empty, hides), every message shows, and the room is read.
    bodies.push('Can we move it to Monday?');
    await server.post(room, { from: 'bob', cid: 'dm-4', body: bodies[3] });
    await waitConversations(ann, [[room, '1']], 'ann after bob wrote again', LIVE);
    await waitConversationTotal(ann, '1', 'ann after bob wrote again', LIVE);
    await ann.locator(`[data-testid=conversation-item][data-room="${room}"] [data-testid=conversation-open]`).click();
    await ann.locator(`[data-testid=room-item][data-room="${room}"]`).waitFor();
    await waitBodies(ann, room, bodies);
    assert.equal(await ann.getByTestId('room-title').textContent(), `#${room}`);
    await waitConversations(ann, [], 'ann after joining');
    await ann.getByTestId('conversations').waitFor({ state: 'hidden' });
    await ann.locator(`[data-testid=room-item][data-room="${room}"] [data-testid=room-unread]`).waitFor({ state: 'hidden' });
    deadline = Date.now() + WAIT;
    while ((await serverRooms('ann'))[room]?.[1] !== 4 && Date.now() < deadline) await sleep(100);
    assert.deepEqual((await serverRooms('ann'))[room], [4, 4], 'read on the server');

    // Joined, the room's messages come as messages, not as conversation badges.
    bodies.push('Monday works');
    await server.post(room, { from: 'bob', cid: 'dm-5', body: bodies[4] });
    await waitBodies(ann, room, bodies);
    assert.deepEqual((await shown(ann, room)).map((m) => [m.seq, m.from]), [[1, 'bob'], [2, 'bob'], [3, 'ann'], [4, 'bob'], [5, 'bob']]);
    assert.deepEqual(await conversationsShown(ann), [], 'no conversation row for a joined room');
    await shot(ann, 'inbox-joined');
    assert.deepEqual(pageErrors, [], 'no script errors on the pages');
    t.diagnostic(`inbox: ${Date.now() - t0} ms`);
  });
});
